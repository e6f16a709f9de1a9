//! Words resolved against the stage: RUN's argv, `--from` targets, paths against WORKDIR, EXPOSE ports.

#[allow(unused_imports)]
use super::*;

/// RUN's argv. A shell-form command that is exactly one heredoc runs the heredoc body as the
/// script (through the shell, or executed directly when it starts with `#!`); any other
/// shell form with heredocs hands the command line and the bodies to the shell, which reads
/// the heredocs itself (so quoting of the terminator keeps its shell meaning).
pub(super) fn run_argv(
    run: &instructions::Run,
    config: &Config,
) -> (Vec<String>, Option<(String, String)>) {
    let Command::Shell(line) = &run.command else {
        return (command_argv(&run.command, config), None);
    };
    if run.heredocs.is_empty() {
        return (command_argv(&run.command, config), None);
    }
    let only = run.heredocs.len() == 1
        && parser::parse_heredoc(line.trim())
            .ok()
            .flatten()
            .is_some_and(|h| h.name == run.heredocs[0].name);
    if only {
        let h = &run.heredocs[0];
        let body = if h.chomp {
            parser::chomp_heredoc(&h.content)
        } else {
            h.content.clone()
        };
        if body.starts_with("#!") {
            // Written to /dev/pipes/NAME and run as the shell's command (so $0 is that path).
            let name = if h.name.is_empty() || h.name.contains('/') || h.name.starts_with('.') {
                "script".to_string()
            } else {
                h.name.clone()
            };
            let mut argv = config.shell();
            argv.push(format!("/dev/pipes/{name}"));
            return (argv, Some((name, body)));
        }
        let mut argv = config.shell();
        argv.push(body);
        return (argv, None);
    }
    let mut script = line.clone();
    script.push('\n');
    for h in &run.heredocs {
        script.push_str(&h.content);
        if !h.content.is_empty() && !h.content.ends_with('\n') {
            script.push('\n');
        }
        script.push_str(&h.name);
        script.push('\n');
    }
    let mut argv = config.shell();
    argv.push(script);
    (argv, None)
}

/// `--from=` value: a stage name, a stage index, or an image reference.
pub(super) fn resolve_from(from: &str, current: usize, raw: &[RawStage]) -> Result<Source, String> {
    if from.is_empty() {
        return Err("--from requires a stage name, index or image".into());
    }
    if from.bytes().all(|b| b.is_ascii_digit()) {
        let n: usize = from
            .parse()
            .map_err(|_| format!("invalid stage index {from:?}"))?;
        if n >= current {
            return Err(format!(
                "undefined stage in --from={from}: stage {n} {}",
                if n < raw.len() {
                    "is this stage or a later one"
                } else {
                    "does not exist"
                }
            ));
        }
        return Ok(Source::Stage(n));
    }
    let lower = from.to_ascii_lowercase();
    if let Some(p) = raw
        .iter()
        .position(|r| r.name.as_deref() == Some(lower.as_str()))
    {
        if p >= current {
            return Err(format!(
                "undefined stage in --from={from}: stage {lower:?} is this stage or a later one"
            ));
        }
        return Ok(Source::Stage(p));
    }
    if crate::image::reference::Reference::parse(from).is_err() {
        return Err(format!("undefined stage in --from={from}: no stage has that name and it is not an image reference"));
    }
    Ok(Source::Image(from.to_string()))
}

/// Joins `p` onto `workdir` when relative, and cleans the result.
pub fn resolve_path(workdir: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{workdir}/{p}")
    };
    crate::context::dockerignore::clean(&joined)
}

/// `80`, `80/tcp`, `53/udp`, `8000-8002/tcp` -> `80/tcp` form, as Docker stores EXPOSE.
pub(super) fn normalize_port(p: &str) -> Result<String, String> {
    let (port, proto) = match p.split_once('/') {
        Some((port, proto)) => (port, proto.to_ascii_lowercase()),
        None => (p, "tcp".into()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid protocol {proto:?} in EXPOSE {p}"));
    }
    let ok = |s: &str| s.parse::<u16>().is_ok();
    let valid = match port.split_once('-') {
        Some((a, b)) => ok(a) && ok(b),
        None => ok(port),
    };
    if !valid {
        return Err(format!("invalid port {p:?} in EXPOSE"));
    }
    Ok(format!("{port}/{proto}"))
}
