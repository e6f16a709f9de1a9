//! Selecting COPY/ADD sources: from the context (after .dockerignore, through the stat cache), from a stage or image view, with wildcards, `--parents` and `--exclude`.

#[allow(unused_imports)]
use super::*;
use crate::context::select::{base_name, clean_source, has_wildcard};

/// Selects context sources from the walk (`entries`: depth first, a directory's subtree right
/// after it, ignore-aware), hashing what they select with `hasher`.
pub fn select_context(
    srcs: &[String],
    entries: &[Entry],
    hasher: &Hasher<'_>,
) -> Result<Vec<Root_>, String> {
    let picks = crate::context::select::pick(srcs, entries, hasher.root())?;
    let paths: Vec<String> = picks.iter().map(|p| p.named.clone()).collect();
    let picked: Vec<(String, bool, Option<usize>)> = picks
        .into_iter()
        .map(|p| (p.name, p.is_dir, p.at))
        .collect();
    // Each pick's entries: the entry itself, then (a directory) its contiguous subtree.
    let span = |at: Option<usize>, is_dir: bool| -> std::ops::Range<usize> {
        match at {
            None => 0..entries.len(),
            Some(i) if !is_dir => i..i + 1,
            Some(i) => {
                let prefix = format!("{}/", entries[i].path);
                let end = entries[i + 1..]
                    .iter()
                    .position(|e| !e.path.starts_with(&prefix))
                    .map_or(entries.len(), |p| i + 1 + p);
                i..end
            }
        }
    };
    // Hash every selected file once, in parallel, with the stat the walk took.
    let mut wanted: Vec<usize> = picked
        .iter()
        .flat_map(|(_, d, at)| span(*at, *d))
        .filter(|&i| matches!(entries[i].kind, EntryKind::File | EntryKind::Symlink))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let list: Vec<(&str, kiln_store::StatTuple)> = wanted
        .iter()
        .map(|&i| (entries[i].path.as_str(), entries[i].stat))
        .collect();
    let hashes = hasher.hash_stat(&list).map_err(|e| e.to_string())?;
    // `wanted` is sorted: an entry's hash is found by search, with no map to build.
    let hash_of = |i: usize| wanted.binary_search(&i).ok().map(|k| hashes[k].hash);
    let root = hasher.root();
    let mut out = Vec::new();
    for ((name, is_dir, at), path) in picked.into_iter().zip(paths) {
        let base_len = match at {
            Some(i) if is_dir => entries[i].path.len() + 1,
            _ => 0,
        };
        let mut items = Vec::with_capacity(span(at, is_dir).len() + 1);
        if at.is_none() {
            // The context root itself: its own directory entry carries no metadata worth copying.
            items.push(Item {
                rel: String::new(),
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: (0, 0),
                data: Data::Host(root.to_path_buf()),
                hash: [0; 32],
                size: 0,
                unchanged: false,
            });
        }
        for i in span(at, is_dir) {
            let e = &entries[i];
            let rel = if Some(i) == at {
                String::new()
            } else {
                e.path[base_len..].to_string()
            };
            let mut host = PathBuf::with_capacity(root.as_os_str().len() + 1 + e.path.len());
            host.push(root);
            host.push(&e.path);
            let kind = match e.kind {
                EntryKind::Dir => Kind::Dir,
                EntryKind::Symlink => Kind::Symlink(
                    fs::read_link(&host).map_err(|err| format!("{}: {err}", host.display()))?,
                ),
                EntryKind::File => Kind::File,
                // Sockets, fifos and devices in a context are not copied (BuildKit skips them).
                EntryKind::Other => continue,
            };
            items.push(Item {
                rel,
                kind,
                mode: e.stat.mode & 0o7777,
                uid: 0,
                gid: 0,
                mtime: (
                    e.stat.mtime_ns.div_euclid(1_000_000_000),
                    e.stat.mtime_ns.rem_euclid(1_000_000_000),
                ),
                data: Data::Host(host),
                hash: hash_of(i).unwrap_or([0; 32]),
                size: e.stat.size,
                unchanged: false,
            });
        }
        out.push(Root_ {
            name,
            path,
            no_unpack: false,
            is_dir,
            items,
        });
    }
    Ok(out)
}

pub(super) fn view_item(rel: String, f: &Found) -> Result<Item, String> {
    let m = &f.meta;
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink(fs::read_link(&f.host).map_err(|e| e.to_string())?)
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        Kind::Special(m.mode() & libc::S_IFMT, m.rdev())
    } else {
        return Err(format!("cannot copy {}", f.path.as_path().display()));
    };
    Ok(Item {
        rel,
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: (m.mtime(), m.mtime_nsec()),
        data: Data::Host(f.host.clone()),
        hash: [0; 32],
        size: m.size(),
        unchanged: false,
    })
}

pub(super) fn view_tree(
    view: &View,
    dir: &Found,
    rel: &str,
    out: &mut Vec<Item>,
) -> Result<(), String> {
    for (name, f) in view.read_dir(dir).map_err(|e| e.to_string())? {
        let r = if rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        out.push(view_item(r.clone(), &f)?);
        if f.is_dir() {
            view_tree(view, &f, &r, out)?;
        }
    }
    Ok(())
}

/// Selects sources from a stage's or image's merged view.
pub fn select_view(srcs: &[String], view: &View, what: &str) -> Result<Vec<Root_>, String> {
    let mut out = Vec::new();
    for src in srcs {
        let Some(c) = clean_source(src) else {
            return Err(format!("source {src:?} climbs out of {what}"));
        };
        let matched: Vec<String> = if has_wildcard(&c) {
            // Expand component by component against the merged directory listings.
            let mut cands = vec![String::new()];
            for comp in c.split('/') {
                let pat = Pattern::new(comp)
                    .map_err(|e| format!("bad source pattern {src:?}: {}", e.why))?
                    .ok_or_else(|| format!("empty source {src:?}"))?;
                let mut next = Vec::new();
                for cand in cands {
                    let Some(d) = view.resolve(&cand, true).map_err(|e| e.to_string())? else {
                        continue;
                    };
                    if !d.is_dir() {
                        continue;
                    }
                    for name in view.read_dir(&d).map_err(|e| e.to_string())?.into_keys() {
                        let n = name.to_string_lossy();
                        if pat.matches(&n) {
                            next.push(if cand.is_empty() {
                                n.into_owned()
                            } else {
                                format!("{cand}/{n}")
                            });
                        }
                    }
                }
                cands = next;
            }
            cands
        } else {
            vec![c]
        };
        for m in matched {
            let Some(f) = view.resolve(&m, true).map_err(|e| e.to_string())? else {
                return Err(format!("{src:?} not found in {what}"));
            };
            let mut items = vec![view_item(String::new(), &f)?];
            if f.is_dir() {
                view_tree(view, &f, "", &mut items)?;
            }
            out.push(Root_ {
                name: base_name(&m),
                path: m.clone(),
                no_unpack: false,
                is_dir: f.is_dir(),
                items,
            });
        }
    }
    Ok(out)
}

/// `COPY --exclude` and `--parents`, applied to selected roots before they are keyed.
///
/// Exclusions use `.dockerignore` syntax (with `!` exceptions) and match a directory source's
/// paths relative to it, and a file source by its name; an excluded directory takes its
/// contents with it. `--parents` places each source at its full selected path below the
/// destination (`COPY --parents a/b/c.txt /d/` writes `/d/a/b/c.txt`) instead of its base name.
pub fn apply_parents_exclude(
    roots: Vec<Root_>,
    parents: bool,
    exclude: &[String],
) -> Result<Vec<Root_>, String> {
    let matcher = crate::context::dockerignore::Matcher::new(exclude)
        .map_err(|e| format!("bad --exclude pattern: {}", e.why))?;
    let mut out = Vec::new();
    for mut r in roots {
        if !matcher.is_empty() {
            if !r.is_dir && matcher.excludes(&r.name) {
                continue;
            }
            let mut dropped: Vec<String> = Vec::new();
            r.items.retain(|it| {
                if it.rel.is_empty() || !r.is_dir {
                    return true;
                }
                if dropped.iter().any(|d| {
                    it.rel.starts_with(d.as_str()) && it.rel.as_bytes().get(d.len()) == Some(&b'/')
                }) {
                    return false;
                }
                if matcher.excludes(&it.rel) {
                    if it.kind == Kind::Dir {
                        dropped.push(it.rel.clone());
                    }
                    return false;
                }
                true
            });
        }
        if parents && !r.path.is_empty() {
            let prefix = r.path.clone();
            for it in r.items.iter_mut() {
                it.rel = if it.rel.is_empty() {
                    prefix.clone()
                } else {
                    format!("{prefix}/{}", it.rel)
                };
            }
            if !r.is_dir {
                r.is_dir = true;
                r.items.insert(
                    0,
                    Item {
                        rel: String::new(),
                        kind: Kind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: (0, 0),
                        data: Data::Inline(Vec::new()),
                        hash: [0; 32],
                        size: 0,
                        unchanged: false,
                    },
                );
            }
            r.name = String::new();
            r.path = String::new();
        }
        out.push(r);
    }
    Ok(out)
}

/// The key input for context sources: every selected path with its type, mode, link target and
/// content hash. Ownership is fixed (root, or `--chown`, which the definition keys); mtimes,
/// inode numbers and ctimes never are.
pub fn inputs_digest(roots: &[Root_]) -> Canon {
    use crate::key::schema::{FileType, SelectedFiles};
    let mut files = SelectedFiles::new();
    for r in roots {
        files.root(&r.name, r.is_dir);
        for it in &r.items {
            let target;
            let kind = match &it.kind {
                Kind::File => FileType::File,
                Kind::Dir => FileType::Dir,
                Kind::Symlink(t) => {
                    target = t.display().to_string();
                    FileType::Symlink(&target)
                }
                Kind::Special(t, d) => {
                    target = format!("{t}:{d}");
                    FileType::Special(&target)
                }
            };
            files.file(&it.rel, kind, it.mode, &it.hash);
        }
    }
    files.finish()
}
