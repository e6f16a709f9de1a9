//! History entries and command lines as BuildKit writes them (`RUN |1 A=b /bin/sh -c ...`, Go's durations and quoting).

#[allow(unused_imports)]
use super::*;

pub(super) fn command_argv(c: &Command, config: &Config) -> Vec<String> {
    match c {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let mut v = config.shell();
            v.push(s.clone());
            v
        }
    }
}

/// A RUN's history entry as BuildKit writes it (dockerfile2llb `runCommandString`): the stage's
/// ARGs (an ENV of the same name wins) as `|N K=V...`, then the argv, then ` # buildkit`.
pub(super) fn run_history(
    argv: &[String],
    stage_args: &[(String, Option<String>)],
    env: &[(String, String)],
) -> String {
    let mut parts = Vec::new();
    // Every declaration is listed (a name declared twice, twice), each with the name's value
    // now: the latest declaration's (BuildKit 0.13: `ARG A=1 B=2`, `ARG A=3` give
    // `|3 A=3 B=2 A=3`).
    for (k, _) in stage_args {
        let v = env
            .iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, ev)| ev.clone())
            .or_else(|| {
                stage_args
                    .iter()
                    .rev()
                    .find(|(ak, _)| ak == k)
                    .and_then(|(_, v)| v.clone())
            })
            .unwrap_or_default();
        parts.push(format!("{k}={v}"));
    }
    if !parts.is_empty() {
        parts.insert(0, format!("|{}", parts.len()));
    }
    parts.extend(argv.iter().cloned());
    format!("RUN {} # buildkit", parts.join(" "))
}

/// HEALTHCHECK's history entry: Go's `%q` of the config struct, as BuildKit formats it.
pub(super) fn healthcheck_history(h: &Healthcheck) -> String {
    format!(
        "HEALTHCHECK &{{{} \"{}\" \"{}\" \"{}\" \"{}\" {}}}",
        go_quote_list(&h.test),
        go_duration(h.interval),
        go_duration(h.timeout),
        go_duration(h.start_period),
        go_duration(h.start_interval),
        go_quote_rune(h.retries)
    )
}

/// Go's `time.Duration.String` for a count of nanoseconds.
pub fn go_duration(ns: u64) -> String {
    fn frac(v: u64, unit: u64) -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", frac(n, 1_000)),
        n if n < 1_000_000_000 => format!("{}ms", frac(n, 1_000_000)),
        n => {
            let secs = n / 1_000_000_000;
            let sub = n % 1_000_000_000;
            let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
            let sec = frac(s * 1_000_000_000 + sub, 1_000_000_000);
            if h > 0 {
                format!("{h}h{m}m{sec}s")
            } else if m > 0 {
                format!("{m}m{sec}s")
            } else {
                format!("{sec}s")
            }
        }
    }
}

/// Go's `%q` of an integer: a quoted character literal (`strconv.QuoteRune`).
pub(super) fn go_quote_rune(n: u64) -> String {
    let Some(c) = u32::try_from(n).ok().and_then(char::from_u32) else {
        return "'\\ufffd'".into();
    };
    let body = match c {
        '\x07' => "\\a".to_string(),
        '\x08' => "\\b".to_string(),
        '\x0c' => "\\f".to_string(),
        '\n' => "\\n".to_string(),
        '\r' => "\\r".to_string(),
        '\t' => "\\t".to_string(),
        '\x0b' => "\\v".to_string(),
        '\\' => "\\\\".to_string(),
        '\'' => "\\'".to_string(),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("\\x{:02x}", c as u32),
        c if (c as u32) < 0x80 => c.to_string(),
        c if !c.is_control() => c.to_string(),
        c if (c as u32) < 0x10000 => format!("\\u{:04x}", c as u32),
        c => format!("\\U{:08x}", c as u32),
    };
    format!("'{body}'")
}
