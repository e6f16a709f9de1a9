//! Instruction flags (`--from`, `--chown`, `--mount`...): which each instruction takes, their parsing, and the suggestion for a mistyped keyword.

#[allow(unused_imports)]
use super::*;

/// Parsed `--flags` of one instruction.
pub(super) struct Flags {
    instr: String,
    pub(super) values: BTreeMap<String, Vec<String>>,
    bools: BTreeMap<String, bool>,
}

pub(super) enum FlagKind {
    Value,
    Multi,
    Bool,
}

pub(super) fn flag_spec(instr: &str) -> &'static [(&'static str, FlagKind)] {
    use FlagKind::*;
    match instr {
        "from" => &[("platform", Value)],
        "run" => &[("mount", Multi), ("network", Value), ("security", Value)],
        "copy" => &[
            ("from", Value),
            ("chown", Value),
            ("chmod", Value),
            ("link", Bool),
            ("parents", Bool),
            ("exclude", Multi),
        ],
        "add" => &[
            ("chown", Value),
            ("chmod", Value),
            ("link", Bool),
            ("exclude", Multi),
            ("checksum", Value),
            ("keep-git-dir", Bool),
            ("unpack", Bool),
        ],
        "healthcheck" => &[
            ("interval", Value),
            ("timeout", Value),
            ("start-period", Value),
            ("start-interval", Value),
            ("retries", Value),
        ],
        _ => &[],
    }
}

impl Flags {
    pub(super) fn parse(instr: &str, raw: &[String]) -> Result<Flags, String> {
        let spec = flag_spec(instr);
        let mut f = Flags {
            instr: instr.to_uppercase(),
            values: BTreeMap::new(),
            bools: BTreeMap::new(),
        };
        for arg in raw {
            let body = arg.strip_prefix("--").unwrap_or(arg);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some((_, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "unknown flag: --{name} (not allowed on {})",
                    f.instr
                ));
            };
            match kind {
                FlagKind::Bool => {
                    let v = match value.map(|v| v.to_ascii_lowercase()) {
                        None => true,
                        Some(v) if v == "true" => true,
                        Some(v) if v == "false" => false,
                        Some(v) => {
                            return Err(format!(
                                "expecting boolean value for flag --{name}, not: {v}"
                            ))
                        }
                    };
                    if f.bools.insert(name.to_string(), v).is_some() {
                        return Err(format!("duplicate flag specified: --{name}"));
                    }
                }
                FlagKind::Value | FlagKind::Multi => {
                    let Some(v) = value else {
                        return Err(format!("missing a value on flag: --{name}"));
                    };
                    let entry = f.values.entry(name.to_string()).or_default();
                    if matches!(kind, FlagKind::Value) && !entry.is_empty() {
                        return Err(format!("duplicate flag specified: --{name}"));
                    }
                    entry.push(v.to_string());
                }
            }
        }
        Ok(f)
    }

    pub(super) fn value(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.first().cloned())
    }
    pub(super) fn multi(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
    pub(super) fn bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }
}

/// The closest known keyword, for "did you mean".
pub fn suggest_keyword(word: &str) -> Option<&'static str> {
    let w = word.to_ascii_uppercase();
    KEYWORDS
        .iter()
        .map(|k| (edit_distance(&w, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}
