//! Compose files, the front end of `kiln compose` (and of `kiln stack`): the Compose
//! Specification read into one model, as the Dockerfile frontend reads Dockerfiles.
//!
//! Loading a project: find the files (`-f`, else `compose.yaml`, `compose.yml`,
//! `docker-compose.yml` or `docker-compose.yaml` with its `.override` file), parse each
//! (`yaml.rs`: lines kept, anchors and merge keys applied), interpolate every value
//! (`interp.rs`: the environment, then `.env`), merge the files in order (mappings key by key;
//! `ports`, `expose`, `volumes`, `dns`, `secrets`, `configs` appended; other values replaced),
//! apply `extends` (`extends.rs`), drop services whose profiles are not enabled, then read the model
//! (`model.rs`, read by `read.rs` and `service.rs`) and check what refers to what. Errors name the file, the line and the key.

pub mod emit;
mod extends;
pub mod interp;
pub mod model;
mod read;
mod service;
pub mod yaml;

pub use model::Project;
use std::path::{Path, PathBuf};
use yaml::{Entry, Node, Value};

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("{0}")]
    Invalid(String),
}

/// What `load` needs besides the files.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `-f`, in order; empty: look in `dir`.
    pub files: Vec<PathBuf>,
    /// `-p`.
    pub project: Option<String>,
    /// `--profile` (and COMPOSE_PROFILES).
    pub profiles: Vec<String>,
    /// Where to look for the files and `.env` when no `-f` is given (the working directory).
    pub dir: PathBuf,
}

/// A loaded project and the warnings its files earned.
pub struct Loaded {
    pub project: Project,
    pub warnings: Vec<String>,
    /// The project's directory (the first file's).
    pub dir: PathBuf,
}

/// The largest compose file read (a file is untrusted input; real ones are a few KiB).
const MAX_FILE: u64 = 16 << 20;

/// The default file names, in docker compose's order of preference.
const NAMES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// The files to read: `-f`, else the first default name in `dir` and its override file.
fn files(o: &Options) -> Result<Vec<PathBuf>, ComposeError> {
    if !o.files.is_empty() {
        return Ok(o.files.clone());
    }
    let Some(main) = NAMES.iter().map(|n| o.dir.join(n)).find(|p| p.exists()) else {
        return Err(ComposeError::Invalid(format!(
            "no configuration file provided: not found (looked for {} in {})",
            NAMES.join(", "),
            o.dir.display()
        )));
    };
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = main
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = vec![main.clone()];
    let over = o.dir.join(format!("{stem}.override.{ext}"));
    if over.exists() {
        out.push(over);
    }
    Ok(out)
}

/// Loads a project (see the module's note), with `env` as the process environment.
pub fn load(
    o: &Options,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ComposeError> {
    let files = files(o)?;
    let dir = files[0]
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let env: Vec<(String, String)> = env.into_iter().collect();
    let dotenv = std::fs::read_to_string(dir.join(".env")).unwrap_or_default();
    let vars = interp::Vars::new(env.iter().cloned(), &dotenv);
    let mut warnings = Vec::new();
    let mut merged: Option<Node> = None;
    let mut names = Vec::new();
    for f in &files {
        let shown = f.display().to_string();
        let tree = read_tree(f, &vars)?;
        if !matches!(tree.value, Value::Map(_)) {
            return Err(ComposeError::Invalid(format!(
                "{shown}: the top level must be a mapping"
            )));
        }
        if tree.get("version").is_some() {
            warnings.push(format!(
                "{shown}: the attribute `version` is obsolete, it will be ignored"
            ));
        }
        names.push(shown);
        merged = Some(match merged {
            None => tree,
            Some(base) => merge(base, tree, ""),
        });
    }
    let root = merged.expect("at least one file");
    let file = names.join(", ");
    let name = project_name(o, &root, &env, &dir)?;
    let mut r = read::Reader {
        file: &file,
        dir: &dir,
        warnings: &mut warnings,
    };
    for e in top(&root) {
        if ![
            "version", "name", "services", "networks", "volumes", "secrets", "configs",
        ]
        .contains(&e.key.as_str())
            && !e.key.starts_with("x-")
        {
            r.warnings.push(format!(
                "{file}:{}: {}: unknown key, ignored",
                e.line, e.key
            ));
        }
    }
    let mut project = Project {
        name: name.clone(),
        ..Default::default()
    };
    read::resources(&mut r, &root, &name, &mut project)?;
    let mut profiles = o.profiles.clone();
    if let Some((_, p)) = env.iter().find(|(k, _)| k == "COMPOSE_PROFILES") {
        profiles.extend(p.split(',').filter(|s| !s.is_empty()).map(str::to_string));
    }
    let services = match root.get("services") {
        Some(s) => s.clone(),
        None => {
            return Err(ComposeError::Invalid(format!(
                "{file}: no services: a project needs at least one"
            )))
        }
    };
    let Value::Map(entries) = &services.value else {
        return Err(r.err(&services, "services", "must be a mapping"));
    };
    for e in entries {
        let node = extends::extended(&r, &vars, &dir, entries, e, &mut Vec::new())?;
        let s = service::service(&mut r, &e.key, &node)?;
        if !s.profiles.is_empty() && !s.profiles.iter().any(|p| profiles.contains(p)) {
            continue;
        }
        project.services.insert(e.key.clone(), s);
    }
    check_references(&r, &root, &project)?;
    Ok(Loaded {
        project,
        warnings,
        dir,
    })
}

fn top(root: &Node) -> &[Entry] {
    match &root.value {
        Value::Map(es) => es,
        _ => &[],
    }
}

/// One file, parsed and interpolated (a file is untrusted input: at most `MAX_FILE` read).
pub(crate) fn read_tree(f: &Path, vars: &interp::Vars) -> Result<Node, ComposeError> {
    let shown = f.display().to_string();
    let mut text = String::new();
    std::fs::File::open(f)
        .and_then(|file| {
            use std::io::Read;
            file.take(MAX_FILE + 1).read_to_string(&mut text)
        })
        .map_err(|e| ComposeError::Invalid(format!("read {shown}: {e}")))?;
    if text.len() as u64 > MAX_FILE {
        return Err(ComposeError::Invalid(format!(
            "{shown}: larger than {} MiB: not a compose file kiln reads",
            MAX_FILE >> 20
        )));
    }
    let mut tree =
        yaml::parse(&text).map_err(|e| ComposeError::Invalid(format!("{shown}: {e}")))?;
    interpolate(&mut tree, vars, &shown, "")?;
    Ok(tree)
}

/// `-p`, else `name:`, else COMPOSE_PROJECT_NAME, else the directory's name; lowercased, and only
/// `[a-z0-9_-]` kept, as docker compose normalizes it.
fn project_name(
    o: &Options,
    root: &Node,
    env: &[(String, String)],
    dir: &Path,
) -> Result<String, ComposeError> {
    let raw = o
        .project
        .clone()
        .or_else(|| match root.get("name").map(|n| &n.value) {
            Some(Value::Scalar(s, _)) => Some(s.clone()),
            _ => None,
        })
        .or_else(|| {
            env.iter()
                .find(|(k, _)| k == "COMPOSE_PROJECT_NAME")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let name: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(ComposeError::Invalid(format!(
            "invalid project name {raw:?}: it must contain only lowercase letters, digits, dashes and underscores, and start with a letter or digit (give one with -p)"
        )));
    }
    Ok(name)
}

/// Interpolates every scalar value (keys stay as written).
fn interpolate(
    n: &mut Node,
    vars: &interp::Vars,
    file: &str,
    path: &str,
) -> Result<(), ComposeError> {
    match &mut n.value {
        Value::Scalar(s, _) => {
            *s = interp::interpolate(s, vars)
                .map_err(|e| ComposeError::Invalid(format!("{file}:{}: {path}: {e}", n.line)))?;
        }
        Value::Seq(items) => {
            for (i, x) in items.iter_mut().enumerate() {
                interpolate(x, vars, file, &format!("{path}[{i}]"))?;
            }
        }
        Value::Map(es) => {
            for e in es {
                let p = if path.is_empty() {
                    e.key.clone()
                } else {
                    format!("{path}.{}", e.key)
                };
                interpolate(&mut e.value, vars, file, &p)?;
            }
        }
    }
    Ok(())
}

/// The keys whose lists a later file appends to, rather than replaces.
const APPENDED: &[&str] = &[
    "ports",
    "expose",
    "volumes",
    "dns",
    "dns_search",
    "secrets",
    "configs",
    "tmpfs",
    "env_file",
];

/// `over` on top of `base`: mappings merge key by key; `environment`, `labels` and `args` as
/// mappings whatever their form; some lists append (`APPENDED`); anything else is replaced.
pub(crate) fn merge(base: Node, over: Node, key: &str) -> Node {
    let as_map = ["environment", "labels", "args"].contains(&key);
    let (base, over) = if as_map {
        (pairs_as_map(base), pairs_as_map(over))
    } else {
        (base, over)
    };
    match (base.value, over.value) {
        (Value::Map(mut b), Value::Map(o)) => {
            for e in o {
                match b.iter().position(|x| x.key == e.key) {
                    Some(i) => {
                        let old = b.remove(i);
                        let value = merge(old.value, e.value, &e.key);
                        b.insert(
                            i,
                            Entry {
                                key: e.key,
                                line: e.line,
                                value,
                            },
                        );
                    }
                    None => b.push(e),
                }
            }
            Node {
                line: over.line,
                value: Value::Map(b),
            }
        }
        (Value::Seq(mut b), Value::Seq(o)) if APPENDED.contains(&key) => {
            for x in o {
                if !b.contains(&x) {
                    b.push(x);
                }
            }
            Node {
                line: over.line,
                value: Value::Seq(b),
            }
        }
        (_, v) => Node {
            line: over.line,
            value: v,
        },
    }
}

/// A `K=V` list as a mapping (a bare `K`: null), so two files' forms merge.
fn pairs_as_map(n: Node) -> Node {
    let Value::Seq(items) = n.value else { return n };
    let es = items
        .into_iter()
        .map(|x| {
            let (k, v) = match &x.value {
                Value::Scalar(s, _) => match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Value::Scalar(v.to_string(), false)),
                    None => (s.clone(), Value::Scalar(String::new(), true)),
                },
                other => (String::new(), other.clone()),
            };
            Entry {
                key: k,
                line: x.line,
                value: Node {
                    line: x.line,
                    value: v,
                },
            }
        })
        .collect();
    Node {
        line: n.line,
        value: Value::Map(es),
    }
}

/// Every network, volume, secret, config and dependency a service names exists.
fn check_references(r: &read::Reader, root: &Node, p: &Project) -> Result<(), ComposeError> {
    let services = root.get("services").expect("checked before");
    for (name, s) in &p.services {
        let node = services.get(name).expect("read from it");
        let at = |k: &str| node.get(k).unwrap_or(node);
        for net in s.networks.keys() {
            if net != "default" && !p.networks.contains_key(net) {
                return Err(r.err(
                    at("networks"),
                    &format!("services.{name}.networks"),
                    format!("service {name:?} refers to undefined network {net:?}"),
                ));
            }
        }
        for m in &s.volumes {
            if let (true, Some(v)) = (m.kind == "volume", &m.source) {
                if !p.volumes.contains_key(v) {
                    return Err(r.err(
                        at("volumes"),
                        &format!("services.{name}.volumes"),
                        format!("service {name:?} refers to undefined volume {v:?}"),
                    ));
                }
            }
        }
        for (k, names, defined) in [
            ("secrets", &s.secrets, &p.secrets),
            ("configs", &s.configs, &p.configs),
        ] {
            for x in names {
                if !defined.contains_key(x) {
                    return Err(r.err(
                        at(k),
                        &format!("services.{name}.{k}"),
                        format!(
                            "service {name:?} refers to undefined {} {x:?}",
                            &k[..k.len() - 1]
                        ),
                    ));
                }
            }
        }
        for d in s.depends_on.keys() {
            if !p.services.contains_key(d) {
                return Err(r.err(
                    at("depends_on"),
                    &format!("services.{name}.depends_on"),
                    format!("service {name:?} depends on undefined service {d:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// Services in an order that starts each after what it depends on; a cycle is an error.
pub fn start_order(p: &Project) -> Result<Vec<String>, ComposeError> {
    let mut out: Vec<String> = Vec::new();
    let mut visiting: Vec<String> = Vec::new();
    fn visit(
        p: &Project,
        n: &str,
        out: &mut Vec<String>,
        visiting: &mut Vec<String>,
    ) -> Result<(), ComposeError> {
        if out.iter().any(|x| x == n) {
            return Ok(());
        }
        if visiting.iter().any(|x| x == n) {
            return Err(ComposeError::Invalid(format!(
                "dependency cycle: {} -> {n}",
                visiting.join(" -> ")
            )));
        }
        visiting.push(n.to_string());
        for d in p.services[n].depends_on.keys() {
            visit(p, d, out, visiting)?;
        }
        visiting.pop();
        out.push(n.to_string());
        Ok(())
    }
    for n in p.services.keys() {
        visit(p, n, &mut out, &mut visiting)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
