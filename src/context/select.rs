//! Which context entries a COPY/ADD source selects: the one rule the build and `--check` share.
//! Wildcards may match nothing (BuildKit copies with AllowEmptyWildcard); a named source must be
//! sent by the context (after .dockerignore); a source that is a symlink is followed inside the
//! context.

use super::dockerignore::Pattern;
use super::{Entry, EntryKind};
use crate::rootfs::clean;
use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// True for the sources ADD fetches over HTTP.
pub fn is_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// True for git sources (`git@host:repo`, `https://host/repo.git#ref`, `git://`).
pub fn is_git(src: &str) -> bool {
    src.starts_with("git@")
        || src.starts_with("git://")
        || (is_url(src) && {
            let path = src.split(['#', '?']).next().unwrap_or(src);
            path.ends_with(".git")
        })
}

/// One source's selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The name it is copied under (its base name; empty for the context root).
    pub name: String,
    pub is_dir: bool,
    /// The entry (a symlink's target when the source named a symlink), or None for the whole
    /// context.
    pub at: Option<usize>,
    /// The path the source named, before a symlink was followed ("" for the root).
    pub named: String,
}

pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Cleans a source path into a context-relative one ("" is the root); `None` if it climbs out.
pub fn clean_source(src: &str) -> Option<String> {
    clean(Path::new(src)).map(|p| p.as_path().to_string_lossy().into_owned())
}

pub fn base_name(p: &str) -> String {
    p.rsplit('/').next().unwrap_or(p).to_string()
}

/// What `srcs` select among `entries` (the context walk under `root`: depth first, ignore-aware),
/// or why one of them selects nothing it should.
pub fn pick(srcs: &[String], entries: &[Entry], root: &Path) -> Result<Vec<Pick>, String> {
    // Built only for a named source or a symlink: `COPY . /app` of a big context needs no map.
    let by_path_cell = std::cell::OnceCell::new();
    let by_path = || -> &HashMap<&str, usize> {
        by_path_cell.get_or_init(|| {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.as_str(), i))
                .collect()
        })
    };
    // (root name, is_dir, matched entry index or None for the context root)
    let mut picked: Vec<(String, bool, Option<usize>)> = Vec::new();
    for src in srcs {
        let Some(c) = clean_source(src) else {
            return Err(format!("source {src:?} is outside the build context"));
        };
        if c.is_empty() {
            picked.push((String::new(), true, None));
        } else if has_wildcard(&c) {
            let pat = Pattern::new(&c)
                .map_err(|e| format!("bad source pattern {src:?}: {}", e.why))?
                .ok_or_else(|| format!("empty source {src:?}"))?;
            for (i, e) in entries.iter().enumerate() {
                if !e.implied && pat.matches(&e.path) {
                    picked.push((base_name(&e.path), e.kind == EntryKind::Dir, Some(i)));
                }
            }
        } else {
            match by_path().get(c.as_str()) {
                Some(&i) if !entries[i].implied || entries[i].kind == EntryKind::Dir => {
                    picked.push((base_name(&c), entries[i].kind == EntryKind::Dir, Some(i)))
                }
                _ => {
                    return Err(format!(
                        "{src:?} not found in the build context (or excluded by .dockerignore)"
                    ))
                }
            }
        }
    }
    let named: Vec<String> = picked
        .iter()
        .map(|(_, _, at)| at.map(|i| entries[i].path.clone()).unwrap_or_default())
        .collect();
    // A source that is itself a symlink is followed (BuildKit copies with FollowSymlinks; links
    // below a copied directory stay links). The target resolves inside the context.
    for (_, is_dir, at) in picked.iter_mut() {
        let Some(i) = *at else { continue };
        if entries[i].kind != EntryKind::Symlink {
            continue;
        }
        let j = follow(entries, by_path(), root, i)?;
        *is_dir = entries[j].kind == EntryKind::Dir;
        *at = Some(j);
    }
    Ok(picked
        .into_iter()
        .zip(named)
        .map(|((name, is_dir, at), named)| Pick {
            name,
            is_dir,
            at,
            named,
        })
        .collect())
}

/// Follows the symlink `entries[i]` within the context root (absolute targets start at the
/// root, `..` stops there), through further links; returns the index of what it names.
fn follow(
    entries: &[Entry],
    by_path: &HashMap<&str, usize>,
    root: &Path,
    mut i: usize,
) -> Result<usize, String> {
    for _ in 0..40 {
        let e = &entries[i];
        if e.kind != EntryKind::Symlink {
            return Ok(i);
        }
        let target =
            fs::read_link(root.join(&e.path)).map_err(|err| format!("{}: {err}", e.path))?;
        let t = target.to_string_lossy();
        let mut parts: Vec<&str> = if t.starts_with('/') {
            Vec::new()
        } else {
            e.path.split('/').collect::<Vec<_>>()[..e.path.matches('/').count()].to_vec()
        };
        for c in t.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        let joined = parts.join("/");
        i = match by_path.get(joined.as_str()) {
            Some(&j) if !entries[j].implied || entries[j].kind == EntryKind::Dir => j,
            _ => {
                return Err(format!(
                    "{:?} is a symlink to {joined:?}, which is not in the build context (or is excluded by .dockerignore)",
                    e.path
                ))
            }
        };
    }
    Err(format!(
        "{:?}: too many levels of symlinks",
        entries[i].path
    ))
}
