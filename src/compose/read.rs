//! Reading the YAML tree into the model: the `Reader` (where errors and warnings point, and
//! the conversions every key uses) and the top level's networks, volumes, secrets and configs.
//! Every error names the file, the line and the key (`compose.yaml:9: services.web.ports[0]:
//! "4000:eighty" is not a port`); a key kiln does not know is a warning, never silence.

use super::model::{FileDef, NetworkDef, Project, VolumeDef};
use super::yaml::{Entry, Node, Value};
use super::ComposeError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reading one tree: where errors and warnings point.
pub(super) struct Reader<'a> {
    pub file: &'a str,
    pub dir: &'a Path,
    pub warnings: &'a mut Vec<String>,
}

impl Reader<'_> {
    pub fn err(&self, n: &Node, path: &str, msg: impl std::fmt::Display) -> ComposeError {
        ComposeError::Invalid(format!("{}:{}: {path}: {msg}", self.file, n.line))
    }

    pub fn warn(&mut self, line: usize, path: &str, msg: &str) {
        self.warnings
            .push(format!("{}:{line}: {path}: {msg}", self.file));
    }

    pub fn map<'n>(&self, n: &'n Node, path: &str) -> Result<&'n [Entry], ComposeError> {
        match &n.value {
            Value::Map(es) => Ok(es),
            _ if n.is_null() => Ok(&[]),
            _ => Err(self.err(n, path, "must be a mapping")),
        }
    }

    pub fn seq<'n>(&self, n: &'n Node, path: &str) -> Result<&'n [Node], ComposeError> {
        match &n.value {
            Value::Seq(items) => Ok(items),
            _ if n.is_null() => Ok(&[]),
            _ => Err(self.err(n, path, "must be a list")),
        }
    }

    pub fn string(&self, n: &Node, path: &str) -> Result<String, ComposeError> {
        match &n.value {
            Value::Scalar(s, _) => Ok(s.clone()),
            _ => Err(self.err(n, path, "must be a string")),
        }
    }

    pub fn number<T: std::str::FromStr>(&self, n: &Node, path: &str) -> Result<T, ComposeError> {
        let s = self.string(n, path)?;
        s.trim()
            .parse()
            .map_err(|_| self.err(n, path, format!("{s:?} is not a number")))
    }

    pub fn boolean(&self, n: &Node, path: &str) -> Result<bool, ComposeError> {
        match self.string(n, path)?.as_str() {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            s => Err(self.err(n, path, format!("{s:?} is not true or false"))),
        }
    }

    pub fn duration(&self, n: &Node, path: &str) -> Result<String, ComposeError> {
        let s = self.string(n, path)?;
        crate::frontend::instructions::parse_go_duration(&s)
            .map(|_| s.clone())
            .ok_or_else(|| {
                self.err(
                    n,
                    path,
                    format!("{s:?} is not a duration (such as 10s, 1m30s)"),
                )
            })
    }

    /// A list of strings, or one string split as a shell splits words (`command:`).
    pub fn words(&self, n: &Node, path: &str) -> Result<Vec<String>, ComposeError> {
        match &n.value {
            Value::Scalar(s, _) => {
                split_words(s).ok_or_else(|| self.err(n, path, "unbalanced quotes"))
            }
            _ => self.strings(n, path),
        }
    }

    pub fn strings(&self, n: &Node, path: &str) -> Result<Vec<String>, ComposeError> {
        self.seq(n, path)?
            .iter()
            .enumerate()
            .map(|(i, x)| self.string(x, &format!("{path}[{i}]")))
            .collect()
    }

    /// `environment`, `labels`, `args`: a mapping (a null value: none), or a list of `K=V`/`K`.
    pub fn pairs(
        &self,
        n: &Node,
        path: &str,
    ) -> Result<BTreeMap<String, Option<String>>, ComposeError> {
        let mut out = BTreeMap::new();
        match &n.value {
            Value::Seq(items) => {
                for (i, x) in items.iter().enumerate() {
                    let s = self.string(x, &format!("{path}[{i}]"))?;
                    match s.split_once('=') {
                        Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                        None => out.insert(s, None),
                    };
                }
            }
            _ => {
                for e in self.map(n, path)? {
                    let v = if e.value.is_null() {
                        None
                    } else {
                        Some(self.string(&e.value, &format!("{path}.{}", e.key))?)
                    };
                    out.insert(e.key.clone(), v);
                }
            }
        }
        Ok(out)
    }

    /// Warns of every key of `n` not in `known` (extensions, `x-*`, are allowed anywhere).
    pub fn check_keys(&mut self, n: &Node, path: &str, known: &[&str]) {
        if let Value::Map(es) = &n.value {
            for e in es {
                if !known.contains(&e.key.as_str()) && !e.key.starts_with("x-") {
                    self.warn(e.line, &format!("{path}.{}", e.key), "unknown key, ignored");
                }
            }
        }
    }
}

/// Splits a command line as a POSIX shell splits words (quotes and backslashes; no expansion).
pub fn split_words(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => out.extend(cur.take()),
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => w.push(c),
                            c => {
                                w.push('\\');
                                w.push(c);
                            }
                        },
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).push(chars.next()?),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(cur);
    Some(out)
}

/// `a/./b/../c` -> `a/c`, without touching the file system.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Reads the top level's `networks`, `volumes`, `secrets` and `configs`.
pub(super) fn resources(
    r: &mut Reader,
    root: &Node,
    project: &str,
    out: &mut Project,
) -> Result<(), ComposeError> {
    if let Some(ns) = root.get("networks") {
        for e in r.map(ns, "networks")? {
            let p = format!("networks.{}", e.key);
            r.check_keys(
                &e.value,
                &p,
                &[
                    "driver",
                    "external",
                    "internal",
                    "name",
                    "ipam",
                    "labels",
                    "attachable",
                ],
            );
            let (name, external) = machine_name(r, e, &p, project)?;
            let mut d = NetworkDef {
                name,
                external,
                ..Default::default()
            };
            if let Some(v) = e.value.get("internal") {
                d.internal = r.boolean(v, &format!("{p}.internal"))?;
            }
            if let Some(v) = e.value.get("driver") {
                let drv = r.string(v, &format!("{p}.driver"))?;
                if drv != "bridge" && drv != "overlay" {
                    return Err(r.err(
                        v,
                        &format!("{p}.driver"),
                        format!("kiln has bridge networks only, not {drv:?}"),
                    ));
                }
            }
            if let Some(cfgs) = e.value.get("ipam").and_then(|i| i.get("config")) {
                if let Some(first) = r.seq(cfgs, &format!("{p}.ipam.config"))?.first() {
                    if let Some(s) = first.get("subnet") {
                        d.subnet = Some(r.string(s, &format!("{p}.ipam.config[0].subnet"))?);
                    }
                }
            }
            if let Some(v) = e.value.get("labels") {
                d.labels = r
                    .pairs(v, &format!("{p}.labels"))?
                    .into_iter()
                    .map(|(k, v)| (k, v.unwrap_or_default()))
                    .collect();
            }
            out.networks.insert(e.key.clone(), d);
        }
    }
    if let Some(vs) = root.get("volumes") {
        for e in r.map(vs, "volumes")? {
            let p = format!("volumes.{}", e.key);
            r.check_keys(
                &e.value,
                &p,
                &["driver", "external", "name", "labels", "driver_opts"],
            );
            let (name, external) = machine_name(r, e, &p, project)?;
            out.volumes
                .insert(e.key.clone(), VolumeDef { name, external });
        }
    }
    for (k, slot) in [("secrets", &mut out.secrets), ("configs", &mut out.configs)] {
        if let Some(m) = root.get(k) {
            for e in r.map(m, k)? {
                let p = format!("{k}.{}", e.key);
                r.check_keys(
                    &e.value,
                    &p,
                    &["file", "external", "name", "environment", "content"],
                );
                let f = e.value.get("file").ok_or_else(|| {
                    r.err(
                        &e.value,
                        &p,
                        "kiln takes secrets and configs from files: give file:",
                    )
                })?;
                slot.insert(
                    e.key.clone(),
                    FileDef {
                        file: normalize(&r.dir.join(r.string(f, &format!("{p}.file"))?)),
                    },
                );
            }
        }
    }
    Ok(())
}

/// A network's or volume's name on the machine, and whether it is external: `name:`, else the
/// key itself when external (made outside the project), else `<project>_<key>`.
fn machine_name(
    r: &Reader,
    e: &Entry,
    p: &str,
    project: &str,
) -> Result<(String, bool), ComposeError> {
    let external = match e.value.get("external") {
        Some(v) => r.boolean(v, &format!("{p}.external"))?,
        None => false,
    };
    let name = match e.value.get("name") {
        Some(v) => r.string(v, &format!("{p}.name"))?,
        None if external => e.key.clone(),
        None => format!("{project}_{}", e.key),
    };
    Ok((name, external))
}
