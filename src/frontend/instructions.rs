//! AST nodes -> typed instructions, with BuildKit's per-instruction checks
//! (`frontend/dockerfile/instructions/parse.go`): allowed flags, argument counts, exec vs shell
//! form, heredoc placement, HEALTHCHECK options. Values are kept as written; variables are
//! expanded later, by the planner, with the environment in force at each instruction.

use std::collections::BTreeMap;

use super::parser::{chomp_heredoc, Heredoc, Node};

mod flags;
pub use flags::*;

/// A command in exec form (`["a", "b"]`) or shell form (`a b`, run with the stage's SHELL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Exec form.
    Exec(Vec<String>),
    /// Shell form, the text as written.
    Shell(String),
}

/// `RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The command; in shell form with heredocs it keeps the `<<EOF` words.
    pub command: Command,
    /// `--mount` values as written.
    pub mounts: Vec<String>,
    /// `--network`.
    pub network: Option<String>,
    /// `--security`.
    pub security: Option<String>,
    /// Heredoc bodies, raw (chomping and expansion left to the executor, as BuildKit).
    pub heredocs: Vec<Heredoc>,
}

/// An inline source of COPY/ADD from a heredoc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSource {
    /// The file name (the heredoc's terminator word).
    pub path: String,
    /// The content, already chomped for `<<-`.
    pub data: String,
    /// Expand variables in `data`.
    pub expand: bool,
}

/// `COPY` and `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copy {
    /// True for ADD.
    pub add: bool,
    /// Source paths (or URLs for ADD), as written.
    pub sources: Vec<String>,
    /// Heredoc sources.
    pub inline: Vec<InlineSource>,
    /// Destination, as written.
    pub dest: String,
    /// `--from`.
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// ADD `--checksum`.
    pub checksum: Option<String>,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// ADD `--unpack`.
    pub unpack: Option<bool>,
    /// Exec (JSON) form.
    pub json: bool,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", line]`, as the image config stores it.
    pub test: Vec<String>,
    /// Nanoseconds; 0 = inherit.
    pub interval: u64,
    /// Nanoseconds; 0 = inherit.
    pub timeout: u64,
    /// Nanoseconds; 0 = inherit.
    pub start_period: u64,
    /// Nanoseconds; 0 = inherit.
    pub start_interval: u64,
    /// 0 = inherit.
    pub retries: u64,
}

/// One Dockerfile instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `FROM [--platform=P] IMAGE [AS NAME]`.
    From {
        /// The image reference (or `scratch`, or an earlier stage), unexpanded.
        image: String,
        /// The stage name, lower-cased.
        name: Option<String>,
        /// `--platform`.
        platform: Option<String>,
    },
    /// `RUN`.
    Run(Run),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `SHELL ["exe", "arg"]`.
    Shell(Vec<String>),
    /// `COPY` / `ADD`.
    Copy(Copy),
    /// `ENV k=v ...` (values unexpanded, quotes kept).
    Env(Vec<(String, String)>),
    /// `LABEL k=v ...` (values unexpanded, quotes kept).
    Label(Vec<(String, String)>),
    /// `ARG name[=default] ...` (unexpanded).
    Arg(Vec<(String, Option<String>)>),
    /// `EXPOSE port[/proto] ...`.
    Expose(Vec<String>),
    /// `VOLUME path ...`.
    Volume(Vec<String>),
    /// `USER user[:group]`.
    User(String),
    /// `WORKDIR path`.
    Workdir(String),
    /// `STOPSIGNAL signal`.
    StopSignal(String),
    /// `MAINTAINER name` (deprecated; becomes the `author` field).
    Maintainer(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `ONBUILD INSTRUCTION`: the trigger text, stored in the image config.
    Onbuild(String),
}

impl Instruction {
    /// The keyword, upper-case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From { .. } => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Shell(_) => "SHELL",
            Instruction::Copy(c) if c.add => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Env(_) => "ENV",
            Instruction::Label(_) => "LABEL",
            Instruction::Arg(_) => "ARG",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Onbuild(_) => "ONBUILD",
        }
    }
}

/// Every instruction BuildKit knows.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Converts one AST node. Errors are messages; the caller adds file and line.
pub fn from_node(node: &Node) -> Result<Instruction, String> {
    let kw = node.keyword();
    if !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(&kw)) {
        let mut m = format!("unknown instruction {:?}", node.value);
        if let Some(s) = suggest_keyword(&node.value) {
            m.push_str(&format!(" (did you mean {s}?)"));
        }
        return Err(m);
    }
    let flags = Flags::parse(&kw, &node.flags)?;
    let upper = kw.to_uppercase();
    let args = &node.args;
    let command = |what: &str| -> Result<Command, String> {
        if node.json {
            Ok(Command::Exec(args.clone()))
        } else if args.is_empty() {
            Err(format!("{what} requires at least one argument"))
        } else {
            Ok(Command::Shell(args.join(" ")))
        }
    };
    let one = |what: &str| -> Result<String, String> {
        match args.as_slice() {
            [a] => Ok(a.clone()),
            _ => Err(format!("{what} requires exactly one argument")),
        }
    };
    Ok(match kw.as_str() {
        "from" => {
            let (image, name) = match args.as_slice() {
                [image] => (image.clone(), None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    let lower = name.to_ascii_lowercase();
                    if !valid_stage_name(&lower) {
                        return Err(format!(
                            "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                        ));
                    }
                    (image.clone(), Some(lower))
                }
                _ => return Err("FROM requires either one or three arguments".into()),
            };
            Instruction::From {
                image,
                name,
                platform: flags.value("platform"),
            }
        }
        "run" => {
            if !node.json && args.is_empty() {
                return Err("RUN requires at least one argument".into());
            }
            for m in flags.multi("mount") {
                parse_mount(&m)?;
            }
            if let Some(n) = flags.value("network") {
                if !matches!(n.as_str(), "default" | "none" | "host") {
                    return Err(format!(
                        "unsupported network mode {n:?} (want default, none or host)"
                    ));
                }
            }
            if let Some(s) = flags.value("security") {
                if !matches!(s.as_str(), "sandbox" | "insecure") {
                    return Err(format!(
                        "unsupported security mode {s:?} (want sandbox or insecure)"
                    ));
                }
            }
            Instruction::Run(Run {
                command: command("RUN")?,
                mounts: flags.multi("mount"),
                network: flags.value("network"),
                security: flags.value("security"),
                heredocs: node.heredocs.clone(),
            })
        }
        "cmd" => Instruction::Cmd(if node.json || !args.is_empty() {
            command("CMD")?
        } else {
            Command::Exec(vec![])
        }),
        "entrypoint" => Instruction::Entrypoint(if node.json || !args.is_empty() {
            command("ENTRYPOINT")?
        } else {
            Command::Exec(vec![])
        }),
        "shell" => {
            if !node.json {
                return Err("SHELL requires the arguments to be in JSON form".into());
            }
            if args.is_empty() {
                return Err("SHELL requires at least one argument".into());
            }
            Instruction::Shell(args.clone())
        }
        "copy" | "add" => copy_from(node, &flags, kw == "add")?,
        "env" | "label" => {
            if args.is_empty() {
                return Err(format!("{upper} requires at least one argument"));
            }
            let pairs: Vec<(String, String)> = args
                .chunks(3)
                .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
                .collect();
            if kw == "env" {
                if let Some((k, _)) = pairs.iter().find(|(k, _)| k.is_empty()) {
                    return Err(format!("ENV names can not be blank (near {k:?})"));
                }
                Instruction::Env(pairs)
            } else {
                Instruction::Label(pairs)
            }
        }
        "arg" => {
            if args.is_empty() {
                return Err("ARG requires at least one argument".into());
            }
            let mut out = Vec::new();
            for a in args {
                let (k, v) = match a.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (a.clone(), None),
                };
                if k.is_empty() {
                    return Err(format!("ARG names can not be blank (in {a:?})"));
                }
                out.push((k, v));
            }
            Instruction::Arg(out)
        }
        "expose" => {
            if args.is_empty() {
                return Err("EXPOSE requires at least one argument".into());
            }
            Instruction::Expose(args.clone())
        }
        "volume" => {
            if args.is_empty() {
                return Err("VOLUME requires at least one argument".into());
            }
            if args.iter().any(|a| a.trim().is_empty()) {
                return Err("VOLUME specified can not be an empty string".into());
            }
            Instruction::Volume(args.clone())
        }
        "user" => Instruction::User(one("USER")?),
        "workdir" => Instruction::Workdir(one("WORKDIR")?),
        "stopsignal" => Instruction::StopSignal(one("STOPSIGNAL")?),
        "maintainer" => Instruction::Maintainer(one("MAINTAINER")?),
        "healthcheck" => healthcheck(node, &flags)?,
        "onbuild" => {
            let Some(sub) = &node.sub else {
                return Err("ONBUILD requires at least one argument".into());
            };
            match sub.keyword().as_str() {
                "onbuild" => {
                    return Err("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into())
                }
                "from" | "maintainer" => {
                    return Err(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        sub.value.to_uppercase()
                    ))
                }
                _ => {}
            }
            from_node(sub)?;
            let text = node.original.trim_start();
            let rest = text[node.value.len()..].trim_start();
            Instruction::Onbuild(rest.to_string())
        }
        _ => unreachable!("keyword list checked above"),
    })
}

/// `^[a-z][a-z0-9-_\.]*$`, BuildKit's stage-name rule.
pub fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn copy_from(node: &Node, flags: &Flags, add: bool) -> Result<Instruction, String> {
    let what = if add { "ADD" } else { "COPY" };
    let mut words = node.args.clone();
    let mut inline = Vec::new();
    if !node.heredocs.is_empty() {
        if let Some(last) = words.last() {
            if let Ok(Some(_)) = super::parser::parse_heredoc(last) {
                return Err(format!("{what} cannot accept a heredoc as a destination"));
            }
        }
        let mut docs = node.heredocs.iter();
        let mut kept = Vec::new();
        for w in words.drain(..) {
            if let Ok(Some(_)) = super::parser::parse_heredoc(&w) {
                if let Some(doc) = docs.next() {
                    let data = if doc.chomp {
                        chomp_heredoc(&doc.content)
                    } else {
                        doc.content.clone()
                    };
                    inline.push(InlineSource {
                        path: doc.name.clone(),
                        data,
                        expand: doc.expand,
                    });
                    continue;
                }
            }
            kept.push(w);
        }
        words = kept;
    }
    if words.is_empty() || (words.len() < 2 && inline.is_empty()) {
        return Err(format!(
            "{what} requires at least two arguments, but only {} provided. Destination could not be determined",
            if words.is_empty() { "none was".to_string() } else { "one was".to_string() }
        ));
    }
    let dest = words.pop().unwrap_or_default();
    Ok(Instruction::Copy(Copy {
        add,
        sources: words,
        inline,
        dest,
        from: flags.value("from"),
        chown: flags.value("chown"),
        chmod: flags.value("chmod"),
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        exclude: flags.multi("exclude"),
        checksum: flags.value("checksum"),
        keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
        unpack: flags.bool("unpack"),
        json: node.json,
    }))
}

fn healthcheck(node: &Node, flags: &Flags) -> Result<Instruction, String> {
    let Some(typ) = node.args.first() else {
        return Err("HEALTHCHECK requires an argument".into());
    };
    let rest = &node.args[1..];
    let mut h = Healthcheck::default();
    match typ.to_uppercase().as_str() {
        "NONE" => {
            if !rest.is_empty() {
                return Err("HEALTHCHECK NONE takes no arguments".into());
            }
            if !flags.values.is_empty() {
                return Err("HEALTHCHECK NONE takes no options".into());
            }
            h.test = vec!["NONE".into()];
            return Ok(Instruction::Healthcheck(h));
        }
        "CMD" => {
            if rest.is_empty() {
                return Err("Missing command after HEALTHCHECK CMD".into());
            }
            h.test = if node.json {
                std::iter::once("CMD".to_string())
                    .chain(rest.iter().cloned())
                    .collect()
            } else {
                vec!["CMD-SHELL".into(), rest.join(" ")]
            };
        }
        other => return Err(format!("Unknown type {other:?} in HEALTHCHECK (try CMD)")),
    }
    let duration = |name: &str| -> Result<u64, String> {
        match flags.value(name) {
            None => Ok(0),
            Some(v) => {
                let d = parse_go_duration(&v)
                    .ok_or_else(|| format!("invalid duration for --{name}: {v:?}"))?;
                if d != 0 && d < 1_000_000 {
                    return Err(format!("--{name} cannot be less than 1ms"));
                }
                Ok(d)
            }
        }
    };
    h.interval = duration("interval")?;
    h.timeout = duration("timeout")?;
    h.start_period = duration("start-period")?;
    h.start_interval = duration("start-interval")?;
    if let Some(r) = flags.value("retries") {
        let n: i64 = r
            .parse()
            .map_err(|_| format!("invalid --retries value {r:?}: not a number"))?;
        if n < 0 {
            return Err("--retries cannot be negative".into());
        }
        h.retries = n as u64;
    }
    Ok(Instruction::Healthcheck(h))
}

/// Go's `time.ParseDuration`, non-negative results only, in nanoseconds: the whole part in
/// integers (so `1.001s` is exactly 1001000000), the fraction as Go computes it, and a value
/// past `i64::MAX` nanoseconds an error rather than saturated.
pub fn parse_go_duration(s: &str) -> Option<u64> {
    const MAX: u64 = i64::MAX as u64;
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let b = s.as_bytes();
    let (mut i, mut total) = (0usize, 0u64);
    while i < b.len() {
        let start = i;
        let mut v: u64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add(u64::from(b[i] - b'0'))?;
            if v > MAX {
                return None;
            }
            i += 1;
        }
        let whole = i > start;
        let (mut f, mut scale, mut frac) = (0u64, 1f64, false);
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let fs = i;
            let mut overflow = false;
            while i < b.len() && b[i].is_ascii_digit() {
                // Go keeps the digits that fit and drops the rest.
                if !overflow && f > MAX / 10 {
                    overflow = true;
                }
                if !overflow {
                    f = f * 10 + u64::from(b[i] - b'0');
                    scale *= 10.0;
                }
                i += 1;
            }
            frac = i > fs;
        }
        if !whole && !frac {
            return None;
        }
        let us = i;
        while i < b.len() && b[i] != b'.' && !b[i].is_ascii_digit() {
            i += 1;
        }
        let unit: u64 = match &s[us..i] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        if v > MAX / unit {
            return None;
        }
        v *= unit;
        if f > 0 {
            // As Go: float64 is exact enough for fractions of the largest unit.
            v = v.checked_add((f as f64 * (unit as f64 / scale)) as u64)?;
            if v > MAX {
                return None;
            }
        }
        total = total.checked_add(v).filter(|t| *t <= MAX)?;
    }
    Some(total)
}

pub use super::mount::{parse_mount, Mount, MountKind, Sharing};

#[cfg(test)]
mod tests;
