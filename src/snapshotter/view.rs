//! A read-only merged view of a stack of snapshot directories, without mounting anything.
//!
//! Lookups follow overlayfs semantics (kernel overlayfs.rst): a name is taken from the topmost
//! layer that has it; a whiteout (character device 0/0) hides it and everything below; a directory
//! merges with the directories of the same name below it until one marked opaque
//! (`trusted.overlay.opaque=y`) or a non-directory. Symlinks resolve in-root (an absolute target
//! starts at the view's root, `..` stops at it), so a path an image controls never leaves it.
//!
//! COPY/ADD read their `--from` sources and check their destination through this, and the build
//! reads /etc/passwd and /etc/group of an image with it.
//!
//! A snapshot whose filesystem refused overlay whiteouts (a store on overlayfs, where kiln uses
//! the native snapshotter) keeps them in their OCI form, `.wh.NAME` and `.wh..wh..opq` files, and
//! says so with an `oci-whiteouts` file beside its `fs/`; the view reads both forms.

use crate::rootfs::{clean, InPath};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// The marker file, beside a snapshot's `fs/`, of a snapshot that keeps OCI-form whiteouts.
pub const OCI_WHITEOUTS: &str = "oci-whiteouts";

/// The layers, top first.
#[derive(Clone, Debug, Default)]
pub struct View {
    layers: Vec<PathBuf>,
    /// Per layer: whiteouts are `.wh.` files.
    oci: Vec<bool>,
}

/// A path found in the view.
#[derive(Debug)]
pub struct Found {
    /// The resolved in-root path (symlinks in parents followed).
    pub path: InPath,
    /// The host path of the topmost copy.
    pub host: PathBuf,
    pub meta: Metadata,
    /// For a directory: the layers (indices) it merges, top first.
    dir_layers: Vec<usize>,
}

impl Found {
    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
}

/// Whether a stat is an overlay whiteout.
pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    crate::sys::lgetxattr(p, OsStr::new(crate::rootless::opaque_xattr())).is_ok_and(|v| v == b"y")
}

fn lstat(p: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl View {
    /// A view of `layers`, given top first.
    pub fn new(layers: Vec<PathBuf>) -> View {
        let oci = layers
            .iter()
            .map(|l| l.parent().is_some_and(|p| p.join(OCI_WHITEOUTS).exists()))
            .collect();
        View { layers, oci }
    }

    /// Whether `name` in directory `dir` of layer `i` is hidden by a whiteout there, or `dir`
    /// is opaque there (OCI form only; the overlay form is the entries' own metadata).
    fn oci_whiteout(&self, i: usize, dir: &Path, name: &OsStr) -> bool {
        if !self.oci[i] {
            return false;
        }
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        fs::symlink_metadata(self.layers[i].join(dir).join(wh)).is_ok()
    }

    fn oci_opaque(&self, i: usize, dir: &Path) -> bool {
        self.oci[i] && fs::symlink_metadata(self.layers[i].join(dir).join(".wh..wh..opq")).is_ok()
    }

    /// The layers, top first.
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    fn root(&self) -> Found {
        let all: Vec<usize> = (0..self.layers.len()).collect();
        Found {
            path: clean(Path::new("")).expect("root"),
            host: self.layers.first().cloned().unwrap_or_default(),
            meta: fs::metadata(self.layers.first().map_or(Path::new("/"), |p| p.as_path()))
                .or_else(|_| fs::metadata("/"))
                .expect("/ exists"),
            dir_layers: all,
        }
    }

    /// Looks `name` up in the merged directory `dir`.
    fn child(&self, dir: &Found, name: &OsStr) -> io::Result<Option<Found>> {
        let path = dir.path.as_path().join(name);
        let mut found: Option<(usize, Metadata)> = None;
        let mut below = Vec::new();
        if name.as_bytes().starts_with(b".wh.") && self.oci.iter().any(|o| *o) {
            return Ok(None);
        }
        for &i in &dir.dir_layers {
            let host = self.layers[i].join(&path);
            let Some(meta) = lstat(&host)? else {
                if self.oci_whiteout(i, dir.path.as_path(), name) {
                    if found.is_none() {
                        return Ok(None);
                    }
                    break;
                }
                continue;
            };
            match &found {
                None => {
                    if is_whiteout(&meta) {
                        return Ok(None);
                    }
                    let stop = !meta.is_dir()
                        || is_opaque(&host)
                        || self.oci_opaque(i, &path)
                        || self.oci_whiteout(i, dir.path.as_path(), name);
                    found = Some((i, meta));
                    if stop {
                        break;
                    }
                }
                Some(_) => {
                    if !meta.is_dir() {
                        break;
                    }
                    below.push(i);
                    if is_opaque(&host) || self.oci_opaque(i, &path) {
                        break;
                    }
                }
            }
        }
        let Some((i, meta)) = found else {
            return Ok(None);
        };
        let mut dir_layers = vec![i];
        if meta.is_dir() {
            dir_layers.extend(below);
        }
        Ok(Some(Found {
            path: clean(&path).expect("clean"),
            host: self.layers[i].join(&path),
            meta,
            dir_layers,
        }))
    }

    /// Resolves `path` (absolute or relative to the root), following symlinks in every
    /// component, and in the last one when `follow` is set. `None` when it does not exist.
    pub fn resolve(&self, path: &str, follow: bool) -> io::Result<Option<Found>> {
        let mut stack: Vec<Found> = vec![self.root()];
        let mut todo: Vec<OsString> = components(path);
        todo.reverse();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let cur = stack.last().expect("root stays");
            if !cur.is_dir() {
                return Ok(None);
            }
            let Some(f) = self.child(cur, &c)? else {
                return Ok(None);
            };
            let last = todo.is_empty();
            if f.meta.file_type().is_symlink() && (!last || follow) {
                if follow_link(&f, &mut todo, &mut links)? {
                    stack.truncate(1);
                }
                continue;
            }
            stack.push(f);
        }
        Ok(stack.pop())
    }

    /// Resolves directory `path` for writing below it, as BuildKit's copy does: every symlink
    /// is followed inside the root (absolute targets start at the root, `..` never climbs above
    /// it, any depth), and what does not exist, the target of a dangling link included, is kept
    /// to be created; a link is never replaced. Returns each component of the resolved path,
    /// shallowest first, with what the view has there (`None`: to be created). A component
    /// that exists but is not a directory is an error naming it.
    pub fn resolve_for_write(&self, path: &str) -> io::Result<Vec<(InPath, Option<Found>)>> {
        let mut stack: Vec<(OsString, Option<Found>)> = Vec::new();
        let mut todo = components(path);
        todo.reverse();
        let mut links = 0;
        let root = self.root();
        while let Some(c) = todo.pop() {
            if c == ".." {
                stack.pop();
                continue;
            }
            let found = match stack.last() {
                None => self.child(&root, &c)?,
                Some((_, Some(parent))) => self.child(parent, &c)?,
                Some((_, None)) => None,
            };
            match found {
                Some(f) if f.meta.file_type().is_symlink() => {
                    if follow_link(&f, &mut todo, &mut links)? {
                        stack.clear();
                    }
                }
                Some(f) if !f.is_dir() => {
                    return Err(io::Error::other(format!(
                        "/{} exists and is not a directory",
                        f.path.as_path().display()
                    )));
                }
                f => stack.push((c, f)),
            }
        }
        let mut out = Vec::with_capacity(stack.len());
        let mut p = PathBuf::new();
        for (c, f) in stack {
            p.push(&c);
            out.push((clean(&p).expect("components stay in the root"), f));
        }
        Ok(out)
    }

    /// The merged entries of a directory found by `resolve`, sorted by name: (name, entry).
    pub fn read_dir(&self, dir: &Found) -> io::Result<BTreeMap<OsString, Found>> {
        let mut names = std::collections::BTreeSet::new();
        for &i in &dir.dir_layers {
            let host = self.layers[i].join(dir.path.as_path());
            for e in fs::read_dir(&host)? {
                names.insert(e?.file_name());
            }
        }
        let mut out = BTreeMap::new();
        for n in names {
            if let Some(f) = self.child(dir, &n)? {
                out.insert(n, f);
            }
        }
        Ok(out)
    }

    /// Reads a small file (following symlinks); `None` when absent or not a regular file.
    pub fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.resolve(path, true)? {
            Some(f) if f.meta.is_file() => Ok(Some(fs::read(&f.host)?)),
            _ => Ok(None),
        }
    }

    /// Reads a small text file, lossily; `None` when absent.
    pub fn read_string(&self, path: &str) -> Option<String> {
        self.read(path)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

/// Puts the target of symlink `f` on the `todo` stack of components still to walk (at most
/// [`MAX_SYMLINKS`] links per lookup); true when the target is absolute, so the walk restarts
/// at the root.
fn follow_link(f: &Found, todo: &mut Vec<OsString>, links: &mut usize) -> io::Result<bool> {
    *links += 1;
    if *links > MAX_SYMLINKS {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let target = fs::read_link(&f.host)?;
    let t = target.as_os_str().as_bytes();
    let mut more = components(&String::from_utf8_lossy(t));
    more.reverse();
    todo.extend(more);
    Ok(t.starts_with(b"/"))
}

fn components(path: &str) -> Vec<OsString> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(OsString::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn merges_layers_with_whiteouts_opaque_dirs_and_symlinks() {
        if !crate::sys::test_has_root("whiteouts need mknod (root)") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let low = t.path().join("low");
        let top = t.path().join("top");
        for d in ["etc", "a/b", "opq", "usr/lib"] {
            fs::create_dir_all(low.join(d)).unwrap();
        }
        fs::write(low.join("etc/passwd"), "low").unwrap();
        fs::write(low.join("a/b/gone"), "x").unwrap();
        fs::write(low.join("a/b/kept"), "k").unwrap();
        fs::write(low.join("opq/old"), "o").unwrap();
        fs::write(low.join("usr/lib/libc"), "c").unwrap();
        symlink("usr/lib", low.join("lib")).unwrap();
        for d in ["a/b", "opq", "etc"] {
            fs::create_dir_all(top.join(d)).unwrap();
        }
        fs::write(top.join("etc/passwd"), "top").unwrap();
        nix::sys::stat::mknod(
            &top.join("a/b/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        fs::write(top.join("opq/new"), "n").unwrap();
        rustix::fs::setxattr(
            top.join("opq"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let v = View::new(vec![top, low]);
        assert_eq!(v.read_string("/etc/passwd").as_deref(), Some("top"));
        assert!(v.resolve("/a/b/gone", false).unwrap().is_none());
        let b = v.resolve("a/b", true).unwrap().unwrap();
        let names: Vec<_> = v.read_dir(&b).unwrap().into_keys().collect();
        assert_eq!(names, vec![OsString::from("kept")]);
        let o = v.resolve("/opq", true).unwrap().unwrap();
        let names: Vec<_> = v.read_dir(&o).unwrap().into_keys().collect();
        assert_eq!(names, vec![OsString::from("new")]);
        let l = v.resolve("/lib/libc", true).unwrap().unwrap();
        assert_eq!(l.path.as_path(), Path::new("usr/lib/libc"));
        assert_eq!(
            v.read_string("/lib/../../../../usr/lib/libc").as_deref(),
            Some("c")
        );
    }
}
