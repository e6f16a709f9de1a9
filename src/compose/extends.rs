//! `extends`: a service built on another, of the same files or of another file (whose
//! relative paths are rebased onto the project's directory, as docker compose does).

use super::yaml::{Entry, Node, Value};
use super::{interp, merge, read, read_tree, ComposeError};
use std::path::Path;

/// A service's node with `extends` applied (the base's own `extends` first; a cycle refused).
/// The base is a service of `all` (the files' services), or of `extends.file` (relative to
/// `dir`), whose relative paths are then made relative to this project's directory.
pub(super) fn extended(
    r: &read::Reader,
    vars: &interp::Vars,
    dir: &Path,
    all: &[Entry],
    e: &Entry,
    seen: &mut Vec<String>,
) -> Result<Node, ComposeError> {
    let Some(ext) = e.value.get("extends") else {
        return Ok(e.value.clone());
    };
    let p = format!("services.{}.extends", e.key);
    // Services are named with their file: a cycle may run through several files.
    let me = format!("{}:{}", r.file, e.key);
    if seen.contains(&me) {
        return Err(r.err(
            ext,
            &p,
            format!("extends makes a cycle: {} -> {me}", seen.join(" -> ")),
        ));
    }
    let (base_name, other) = match &ext.value {
        Value::Scalar(s, _) => (s.clone(), None),
        _ => {
            let s = ext
                .get("service")
                .ok_or_else(|| r.err(ext, &p, "needs service:"))?;
            let file = match ext.get("file") {
                Some(f) => Some(read::normalize(
                    &dir.join(r.string(f, &format!("{p}.file"))?),
                )),
                None => None,
            };
            (r.string(s, &format!("{p}.service"))?, file)
        }
    };
    seen.push(me);
    let base_node = match other {
        None => {
            let base = all
                .iter()
                .find(|b| b.key == base_name)
                .ok_or_else(|| r.err(ext, &p, format!("service {base_name:?} not found")))?;
            extended(r, vars, dir, all, base, seen)?
        }
        Some(file) => {
            let tree = read_tree(&file, vars)?;
            let shown = file.display().to_string();
            let entries = match tree.get("services").map(|s| &s.value) {
                Some(Value::Map(es)) => es.clone(),
                _ => Vec::new(),
            };
            let base = entries.iter().find(|b| b.key == base_name).ok_or_else(|| {
                r.err(
                    ext,
                    &p,
                    format!("service {base_name:?} not found in {shown}"),
                )
            })?;
            let other_dir = file.parent().unwrap_or(dir).to_path_buf();
            let mut warnings = Vec::new();
            let other_r = read::Reader {
                file: &shown,
                dir: &other_dir,
                warnings: &mut warnings,
            };
            let node = extended(&other_r, vars, &other_dir, &entries, base, seen)?;
            rebase(node, &other_dir, dir)
        }
    };
    seen.pop();
    let mut own = e.value.clone();
    if let Value::Map(es) = &mut own.value {
        es.retain(|x| x.key != "extends");
    }
    let mut out = merge(base_node, own, "");
    // A base's dependencies are its own business (docker compose drops them too).
    if let Value::Map(es) = &mut out.value {
        if e.value.get("depends_on").is_none() {
            es.retain(|x| x.key != "depends_on");
        }
    }
    Ok(out)
}

/// A service from a file in `from` with its relative paths (build context, env files, bind
/// sources) made to point at the same places from `to`, as docker compose rebases them.
fn rebase(mut n: Node, from: &Path, to: &Path) -> Node {
    if from == to {
        return n;
    }
    let fix = |s: &str| -> String {
        if Path::new(s).is_absolute() || s.starts_with('~') {
            s.to_string()
        } else {
            read::normalize(&from.join(s)).display().to_string()
        }
    };
    let scalar = |n: &mut Node, relative_only: bool| {
        if let Value::Scalar(s, _) = &mut n.value {
            if !relative_only || s.starts_with('.') {
                *s = fix(s);
            }
        }
    };
    let Value::Map(es) = &mut n.value else {
        return n;
    };
    for e in es.iter_mut() {
        match (e.key.as_str(), &mut e.value.value) {
            ("build", Value::Scalar(..)) => scalar(&mut e.value, false),
            ("build", Value::Map(b)) => {
                for x in b.iter_mut().filter(|x| x.key == "context") {
                    scalar(&mut x.value, false);
                }
            }
            ("env_file", Value::Scalar(..)) => scalar(&mut e.value, false),
            ("env_file", Value::Seq(items)) => {
                for it in items.iter_mut() {
                    match &mut it.value {
                        Value::Map(m) => {
                            for x in m.iter_mut().filter(|x| x.key == "path") {
                                scalar(&mut x.value, false);
                            }
                        }
                        _ => scalar(it, false),
                    }
                }
            }
            ("volumes", Value::Seq(items)) => {
                for it in items.iter_mut() {
                    match &mut it.value {
                        Value::Scalar(s, _) if s.starts_with('.') => {
                            let (src, rest) = s.split_once(':').unwrap_or((s.as_str(), ""));
                            let fixed = fix(src);
                            *s = if rest.is_empty() {
                                fixed
                            } else {
                                format!("{fixed}:{rest}")
                            };
                        }
                        Value::Map(m) => {
                            for x in m.iter_mut().filter(|x| x.key == "source") {
                                scalar(&mut x.value, true);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    n
}
