//! COPY and ADD: selecting sources, the content digest that keys them, and writing them straight
//! into the step's upper directory.
//!
//! Selection follows Docker: a source is a path relative to the context (or the `--from` root),
//! wildcards (`*`, `?`, `[...]`, as Go's filepath.Match, never crossing `/`) may match nothing;
//! a directory source copies its *contents*; a file goes to `DEST/NAME` when DEST ends in `/`,
//! names an existing directory, or there are several sources, else to DEST itself. Context
//! files become root-owned (BuildKit resets ownership), `--from` files keep theirs; `--chown`
//! and `--chmod` override. Missing parents of the destination are created 0755; existing ones
//! are resolved through the parent's merged view (symlinks followed in-root) and copied up with
//! their metadata, as overlayfs would. ADD unpacks local tar archives (plain, gzip, zstd,
//! bzip2, xz) into the destination directory.

use crate::context::dockerignore::Pattern;
use crate::context::hash::Hasher;
use crate::context::{Entry, EntryKind};
use crate::plan::Canon;
use crate::rootfs::{clean, InPath, Root};
use crate::snapshotter::view::{Found, View};
use crate::sys;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a copied item is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(PathBuf),
    /// Device or fifo (from a stage or image).
    Special(u32, u64),
}

/// Where an item's data comes from.
#[derive(Clone, Debug)]
pub enum Data {
    Host(PathBuf),
    Inline(Vec<u8>),
}

/// One item to copy, relative to its source root.
#[derive(Clone, Debug)]
pub struct Item {
    /// Path below the root ("" for a file root itself).
    pub rel: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub data: Data,
    /// blake3 of the content (context files only; the key uses it).
    pub hash: [u8; 32],
    /// Size in bytes (regular files).
    pub size: u64,
    /// Same type, mode and content as in the previous build of this step (see
    /// [`WriteOptions::link_from`]).
    pub unchanged: bool,
}

/// A matched source: a file (copied under its name) or a directory (its contents).
#[derive(Clone, Debug)]
pub struct Root_ {
    pub name: String,
    /// The source's path as selected, relative to its root ("" for the whole context or an
    /// inline heredoc): what `--parents` keeps.
    pub path: String,
    pub is_dir: bool,
    /// Never unpacked, even by ADD (a download without `--unpack=true`, as BuildKit).
    pub no_unpack: bool,
    pub items: Vec<Item>,
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Cleans a source path into a context-relative one ("" is the root); `None` if it climbs out.
fn clean_source(src: &str) -> Option<String> {
    clean(Path::new(src)).map(|p| p.as_path().to_string_lossy().into_owned())
}

fn base_name(p: &str) -> String {
    p.rsplit('/').next().unwrap_or(p).to_string()
}

/// Selects context sources from the walk (`entries`: depth first, a directory's subtree right
/// after it, ignore-aware), hashing what they select with `hasher`.
pub fn select_context(
    srcs: &[String],
    entries: &[Entry],
    hasher: &Hasher<'_>,
) -> Result<Vec<Root_>, String> {
    let by_path: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_str(), i))
        .collect();
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
            match by_path.get(c.as_str()) {
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
    // A source that is itself a symlink is followed (BuildKit copies with FollowSymlinks; links
    // below a copied directory stay links). The target resolves inside the context.
    let paths: Vec<String> = picked
        .iter()
        .map(|(_, _, at)| at.map(|i| entries[i].path.clone()).unwrap_or_default())
        .collect();
    for (_, is_dir, at) in picked.iter_mut() {
        let Some(i) = *at else { continue };
        if entries[i].kind != EntryKind::Symlink {
            continue;
        }
        let j = follow_in_context(entries, &by_path, hasher.root(), i)?;
        *is_dir = entries[j].kind == EntryKind::Dir;
        *at = Some(j);
    }
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
    let hash_of: HashMap<usize, [u8; 32]> = wanted
        .iter()
        .zip(&hashes)
        .map(|(i, h)| (*i, h.hash))
        .collect();
    let root = hasher.root();
    let mut out = Vec::new();
    for ((name, is_dir, at), path) in picked.into_iter().zip(paths) {
        let base_len = match at {
            Some(i) if is_dir => entries[i].path.len() + 1,
            _ => 0,
        };
        let mut items = Vec::new();
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
            let host = root.join(&e.path);
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
                hash: hash_of.get(&i).copied().unwrap_or([0; 32]),
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

/// Follows the symlink `entries[i]` within the context root (absolute targets start at the
/// root, `..` stops there), through further links; returns the index of what it names.
fn follow_in_context(
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

fn view_item(rel: String, f: &Found) -> Result<Item, String> {
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

fn view_tree(view: &View, dir: &Found, rel: &str, out: &mut Vec<Item>) -> Result<(), String> {
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

/// Resolved COPY options.
pub struct WriteOptions {
    pub chown: Option<(u32, u32)>,
    pub chmod: Option<u32>,
    /// ADD: unpack local archives.
    pub unpack: bool,
    /// mtime for files made from nothing (heredocs, created parents).
    pub now: i64,
    /// The upper dir of the previous build of this step on the same parent. An unchanged file
    /// whose copy there has exactly the metadata this one would get is hard-linked from it:
    /// snapshots are immutable (overlay lower dirs, never written), so sharing the inode is safe.
    pub link_from: Option<PathBuf>,
}

struct DirFix {
    path: InPath,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
}

/// Writes into a fresh upper directory, consulting the parent's merged view.
pub struct Writer<'a> {
    upper: Root,
    view: &'a View,
    opts: WriteOptions,
    dirs: HashMap<String, InPath>,
    fixes: Vec<DirFix>,
    /// Source files with several links, by (dev, inode): where the first was written.
    links: HashMap<(u64, u64), (InPath, OsString)>,
}

fn io_s(e: io::Error) -> String {
    e.to_string()
}

impl<'a> Writer<'a> {
    pub fn new(upper: &Path, view: &'a View, opts: WriteOptions) -> Result<Writer<'a>, String> {
        Ok(Writer {
            upper: Root::open(upper).map_err(io_s)?,
            view,
            opts,
            dirs: HashMap::new(),
            fixes: Vec::new(),
            links: HashMap::new(),
        })
    }

    /// Makes sure directory `path` (absolute, in the image) exists in the upper dir, following
    /// symlinks of the merged view; returns its resolved in-root path.
    pub fn ensure_dir(&mut self, path: &str) -> Result<InPath, String> {
        let key = path.trim_end_matches('/').to_string();
        if let Some(p) = self.dirs.get(&key) {
            return Ok(p.clone());
        }
        // Symlinks resolve inside the root, whatever their depth; a dangling one gets its
        // target created (the link stays, as in BuildKit); every directory of the resolved
        // path is made in the upper dir with the metadata the image gives it.
        let chain = self.view.resolve_for_write(&key).map_err(io_s)?;
        let mut resolved = clean(Path::new("")).expect("root");
        for (p, found) in chain {
            match found {
                Some(f) => self.mkdir(
                    &p,
                    f.meta.mode() & 0o7777,
                    f.meta.uid(),
                    f.meta.gid(),
                    (f.meta.mtime(), f.meta.mtime_nsec()),
                )?,
                None => {
                    let (uid, gid) = self.opts.chown.unwrap_or((0, 0));
                    self.mkdir(&p, 0o755, uid, gid, (self.opts.now, 0))?;
                }
            }
            resolved = p;
        }
        self.dirs.insert(key, resolved.clone());
        Ok(resolved)
    }

    fn mkdir(
        &mut self,
        p: &InPath,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: (i64, i64),
    ) -> Result<(), String> {
        let Some((parent, name)) = p.split() else {
            return Ok(());
        };
        let pfd = self.upper.open_dir(&parent).map_err(io_s)?;
        match sys::lstatat(pfd.as_fd(), name).map_err(io_s)? {
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => return Ok(()),
            Some(_) => crate::rootfs::remove_all_at(pfd.as_fd(), name).map_err(io_s)?,
            None => {}
        }
        sys::mkdirat(pfd.as_fd(), name, 0o700).map_err(io_s)?;
        self.fixes.push(DirFix {
            path: p.clone(),
            mode,
            uid,
            gid,
            mtime,
        });
        Ok(())
    }

    /// Copies the matched roots to `dest` (absolute; a trailing `/` means a directory).
    pub fn copy(&mut self, roots: &[Root_], dest: &str) -> Result<(), String> {
        let files = roots.iter().filter(|r| !r.is_dir).count();
        let dest_dir = dest.ends_with('/')
            || roots.len() > 1
            || files == 0
            || self
                .view
                .resolve(dest, true)
                .map_err(io_s)?
                .is_some_and(|f| f.is_dir());
        for r in roots {
            if r.is_dir {
                let base = self.ensure_dir(dest)?;
                for it in &r.items {
                    if it.rel.is_empty() {
                        continue;
                    }
                    self.put(&base, it)?;
                }
            } else {
                let Some(it) = r.items.first() else { continue };
                let (dir, name) = if dest_dir {
                    (dest.trim_end_matches('/').to_string(), r.name.clone())
                } else {
                    let d = dest.trim_end_matches('/');
                    match d.rsplit_once('/') {
                        Some((p, n)) => (p.to_string(), n.to_string()),
                        None => (String::new(), d.to_string()),
                    }
                };
                let base = self.ensure_dir(if dir.is_empty() { "/" } else { &dir })?;
                if self.opts.unpack && !r.no_unpack && it.kind == Kind::File {
                    if let Data::Host(p) = &it.data {
                        if let Some(kind) = archive_kind(p).map_err(io_s)? {
                            let target = self.ensure_dir(dest)?;
                            self.unpack(p, kind, &target)?;
                            continue;
                        }
                    }
                }
                let mut one = it.clone();
                one.rel = name;
                self.put(&base, &one)?;
            }
        }
        Ok(())
    }

    /// Writes one item at `base/item.rel` in the upper dir.
    fn put(&mut self, base: &InPath, it: &Item) -> Result<(), String> {
        let path = clean(&base.as_path().join(&it.rel)).ok_or("path climbs out of the root")?;
        let Some((parent, name)) = path.split() else {
            return Ok(());
        };
        let parent_str = format!("/{}", parent.as_path().display());
        let parent = self.ensure_dir(&parent_str)?;
        let pfd = self.upper.open_dir(&parent).map_err(io_s)?;
        let pfd = pfd.as_fd();
        let (uid, gid) = self.opts.chown.unwrap_or((it.uid, it.gid));
        let mode = self.opts.chmod.unwrap_or(it.mode);
        let name = name.to_os_string();
        if it.kind == Kind::Dir {
            match sys::lstatat(pfd, &name).map_err(io_s)? {
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                Some(_) => {
                    crate::rootfs::remove_all_at(pfd, &name).map_err(io_s)?;
                    sys::mkdirat(pfd, &name, 0o700).map_err(io_s)?;
                }
                None => sys::mkdirat(pfd, &name, 0o700).map_err(io_s)?,
            }
            let full = clean(&parent.as_path().join(&name)).expect("clean");
            self.dirs
                .insert(format!("/{}", full.as_path().display()), full.clone());
            self.fixes.push(DirFix {
                path: full,
                mode,
                uid,
                gid,
                mtime: it.mtime,
            });
            return Ok(());
        }
        crate::rootfs::remove_all_at(pfd, &name).map_err(io_s)?;
        match &it.kind {
            Kind::File if it.unchanged && self.try_link(&parent, &name, it, uid, gid, mode)? => {}
            Kind::File => {
                let mut src = match &it.data {
                    Data::Host(p) => {
                        Some(fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?)
                    }
                    Data::Inline(_) => None,
                };
                // Files hard-linked to each other in the source stay linked in the copy (as
                // BuildKit's copier does): the first one is written, the others linked to it.
                let link_key = match &src {
                    Some(f) => {
                        let m = f.metadata().map_err(io_s)?;
                        (m.nlink() > 1).then(|| (m.dev(), m.ino()))
                    }
                    None => None,
                };
                if let Some((first_dir, first_name)) = link_key.and_then(|k| self.links.get(&k)) {
                    let fdir = self.upper.open_dir(first_dir).map_err(io_s)?;
                    sys::linkat(fdir.as_fd(), first_name, pfd, &name).map_err(io_s)?;
                    return Ok(());
                }
                let fd = sys::openat(
                    pfd,
                    &name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(io_s)?;
                let mut out = fs::File::from(fd);
                if let Some(k) = link_key {
                    self.links.insert(k, (parent.clone(), name.clone()));
                }
                match &it.data {
                    Data::Host(_) => {
                        let src = src.as_mut().expect("opened above");
                        io::copy(src, &mut out).map_err(io_s)?;
                    }
                    Data::Inline(b) => {
                        io::Write::write_all(&mut out, b).map_err(io_s)?;
                    }
                }
                sys::lchownat(out.as_fd(), OsStr::new(""), uid, gid).map_err(io_s)?;
                sys::fchmod(out.as_fd(), mode).map_err(io_s)?;
                sys::lutimesat(out.as_fd(), OsStr::new(""), it.mtime.0, it.mtime.1)
                    .map_err(io_s)?;
            }
            Kind::Symlink(t) => {
                sys::symlinkat(t.as_os_str(), pfd, &name).map_err(io_s)?;
                sys::lchownat(pfd, &name, uid, gid).map_err(io_s)?;
                sys::lutimesat(pfd, &name, it.mtime.0, it.mtime.1).map_err(io_s)?;
            }
            Kind::Special(t, dev) => {
                sys::mknodat(pfd, &name, t | mode, *dev).map_err(io_s)?;
                sys::lchownat(pfd, &name, uid, gid).map_err(io_s)?;
                sys::lutimesat(pfd, &name, it.mtime.0, it.mtime.1).map_err(io_s)?;
            }
            Kind::Dir => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Hard-links `name` from the previous build's upper dir when that copy has exactly the
    /// size, mode, owner and mtime this one would get; returns whether it did.
    fn try_link(
        &self,
        parent: &InPath,
        name: &OsStr,
        it: &Item,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<bool, String> {
        let Some(prev) = &self.opts.link_from else {
            return Ok(false);
        };
        let Ok(prev) = Root::open(prev) else {
            return Ok(false);
        };
        let Ok(pdir) = prev.open_dir(parent) else {
            return Ok(false);
        };
        let Some(st) = sys::lstatat(pdir.as_fd(), name).map_err(io_s)? else {
            return Ok(false);
        };
        let same = st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_size as u64 == it.size
            && st.st_mode & 0o7777 == mode
            && st.st_uid == uid
            && st.st_gid == gid
            && st.st_mtime == it.mtime.0
            && st.st_mtime_nsec == it.mtime.1;
        if !same {
            return Ok(false);
        }
        let dir = self.upper.open_dir(parent).map_err(io_s)?;
        sys::linkat(pdir.as_fd(), name, dir.as_fd(), name).map_err(io_s)?;
        Ok(true)
    }

    fn unpack(&mut self, archive: &Path, kind: Archive, target: &InPath) -> Result<(), String> {
        let f = fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
        let reader: Box<dyn Read> = match kind {
            Archive::Bzip2 => Box::new(bzip2_rs::DecoderReader::new(f)),
            Archive::Xz => {
                let mut out = Vec::new();
                let mut r = io::BufReader::new(f);
                lzma_rs::xz_decompress(&mut r, &mut out)
                    .map_err(|e| format!("{}: xz: {e}", archive.display()))?;
                Box::new(io::Cursor::new(out))
            }
            Archive::Other => kiln_store::codec::decompress(f).map_err(io_s)?,
        };
        // Entries go below `target` in the upper dir, their parents resolved through the
        // image's symlinks (`lib/x.so` lands in `usr/lib/` when `lib -> usr/lib`), as Docker's
        // untar into the mounted rootfs does.
        let root = Root::open(self.upper.path()).map_err(io_s)?;
        let view = self.view;
        let mut resolve = |parent: &InPath| -> InPath {
            let full = target.as_path().join(parent.as_path());
            resolve_existing(view, &full)
                .unwrap_or_else(|| clean(&full).unwrap_or_else(|| target.clone()))
        };
        crate::diff::apply_layer_mapped(&root, reader, &mut resolve)
            .map_err(|e| format!("unpack {}: {}", archive.display(), crate::diff::chain(&e)))?;
        Ok(())
    }

    /// Sets directory metadata last (writing entries changed their mtimes).
    pub fn finish(self) -> Result<(), String> {
        for d in self.fixes.iter().rev() {
            let fd = self
                .upper
                .open_at(
                    &d.path,
                    libc::O_DIRECTORY | libc::O_RDONLY | libc::O_NOFOLLOW,
                )
                .map_err(io_s)?;
            sys::lchownat(fd.as_fd(), OsStr::new(""), d.uid, d.gid).map_err(io_s)?;
            sys::fchmod(fd.as_fd(), d.mode).map_err(io_s)?;
            sys::lutimesat(fd.as_fd(), OsStr::new(""), d.mtime.0, d.mtime.1).map_err(io_s)?;
        }
        Ok(())
    }
}

/// `path` (relative to the root) with its longest prefix that exists in `view` resolved through
/// symlinks; the rest appended as written. `None` if a symlink leads out of the root.
fn resolve_existing(view: &View, path: &Path) -> Option<InPath> {
    let mut resolved = clean(Path::new(""))?;
    let mut comps = path.components().peekable();
    while let Some(c) = comps.next() {
        let cand = resolved.as_path().join(c);
        match view.resolve(&format!("/{}", cand.display()), true).ok()? {
            Some(f) if f.is_dir() => resolved = f.path.clone(),
            _ => {
                let mut rest = cand;
                for c in comps {
                    rest.push(c);
                }
                return clean(&rest);
            }
        }
    }
    Some(resolved)
}

/// How a local ADD source is compressed, if it is a tar archive at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archive {
    Bzip2,
    Xz,
    /// Plain, gzip or zstd (the layer codec reads these).
    Other,
}

/// Whether `p` is a tar archive (Docker's `archive.IsArchivePath`: decompress the head and look
/// for a tar header).
fn archive_kind(p: &Path) -> io::Result<Option<Archive>> {
    let mut head = vec![0u8; 512];
    let n = {
        let mut f = fs::File::open(p)?;
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    };
    head.truncate(n);
    let kind = if head.starts_with(b"BZh") {
        Archive::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Archive::Xz
    } else {
        Archive::Other
    };
    let f = fs::File::open(p)?;
    let mut r: Box<dyn Read> = match kind {
        Archive::Bzip2 => Box::new(bzip2_rs::DecoderReader::new(f)),
        Archive::Xz => {
            let mut out = Vec::new();
            if lzma_rs::xz_decompress(&mut io::BufReader::new(f), &mut out).is_err() {
                return Ok(None);
            }
            out.truncate(512);
            Box::new(io::Cursor::new(out))
        }
        Archive::Other => kiln_store::codec::decompress(f)?,
    };
    let mut block = vec![0u8; 512];
    let mut got = 0;
    while got < 512 {
        match r.read(&mut block[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(_) => return Ok(None),
        }
    }
    if got < 512 {
        return Ok(None);
    }
    // A tar header: "ustar" magic, or a valid old-style checksum.
    let magic = &block[257..262] == b"ustar";
    let h = tar::Header::from_byte_slice(&block[..512]);
    let sum_ok = h.cksum().ok().is_some_and(|c| {
        let mut s: u32 = 0;
        for (i, b) in block.iter().enumerate() {
            s += if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            };
        }
        s == c
    });
    Ok((magic || sum_ok).then_some(kind))
}

/// Resolves `--chown` (and WORKDIR's owner) with the destination image's passwd/group:
/// `user[:group]`. As BuildKit's file ops (`readUser`), a name the files do not have, or a
/// missing passwd or group file, is id 0 without an error; only RUN, through the runtime,
/// refuses an unknown name.
pub fn resolve_chown(spec: &str, view: &View) -> (u32, u32) {
    let passwd = view.read_string("/etc/passwd");
    let group = view.read_string("/etc/group");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let ids =
        crate::runtime::user::resolve(u, passwd.as_deref(), group.as_deref()).unwrap_or_default();
    let gid = match g {
        Some(g) if !g.is_empty() => {
            crate::runtime::user::resolve(&format!("0:{g}"), passwd.as_deref(), group.as_deref())
                .map(|i| i.gid)
                .unwrap_or(0)
        }
        // BuildKit (file/user_linux.go readUser): a name takes its passwd gid, a number is
        // used for both.
        _ if u.parse::<u32>().is_ok() => ids.uid,
        _ => ids.gid,
    };
    (ids.uid, gid)
}
