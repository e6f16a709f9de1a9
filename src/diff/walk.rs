//! The walk differ: compares a parent tree and a child tree (two plain directories) where overlay
//! cannot be used, in parallel over directories.
//!
//! An entry changed when its type, mode, owner, size, mtime (ns), xattrs or link target differ;
//! when all of those match but the mtime has no sub-second part (a filesystem or tool that
//! truncates timestamps makes equal mtimes ambiguous), the content is compared. Deleted entries
//! become whiteouts; a deleted directory is one whiteout. As the overlay differ does, every changed
//! entry brings its parent directories (with their current metadata) into the layer, so both
//! differs give the same layer for the same change, except that overlay records a directory that
//! was removed and recreated as opaque where this differ lists the deleted names.

use super::tar::{join, sort_entries, EntrySource, TarEntry};
use rayon::prelude::*;
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Relative paths (no leading slash) the walk never enters or reports, in either tree.
pub type Ignored = std::collections::BTreeSet<Vec<u8>>;

/// Whether `r` is an ignored path's ancestor.
pub fn holds_ignored(ignored: &Ignored, r: &[u8]) -> bool {
    if ignored.is_empty() {
        return false;
    }
    let mut prefix = r.to_vec();
    prefix.push(b'/');
    ignored
        .range(prefix.clone()..)
        .next()
        .is_some_and(|p| p.starts_with(&prefix))
}

/// The layer entries that turn `old` into `new`, sorted.
pub fn changes(old: &Path, new: &Path) -> io::Result<Vec<TarEntry>> {
    changes_ignoring(old, new, &Ignored::new())
}

/// [`changes`], skipping the `ignored` paths (the in-place snapshotter's mounts and files of
/// the container kiln runs in).
pub fn changes_ignoring(old: &Path, new: &Path, ignored: &Ignored) -> io::Result<Vec<TarEntry>> {
    let mut out = diff_dir(old, new, Vec::new(), ignored)?;
    sort_entries(&mut out);
    Ok(out)
}

fn names(dir: &Path) -> io::Result<Vec<OsString>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.map(|e| e.file_name())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn xattrs(p: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut v = Vec::new();
    for n in crate::sys::llistxattr(p)? {
        if crate::rootless::is_overlay_xattr(n.as_bytes()) {
            continue;
        }
        let val = crate::sys::lgetxattr(p, &n)?;
        v.push((n, val));
    }
    v.sort();
    Ok(v)
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Whether the entry at `a` (old) and `b` (new), of the same type, differ.
fn entry_changed(a: &Path, ma: &Metadata, b: &Path, mb: &Metadata) -> io::Result<bool> {
    if ma.mode() != mb.mode()
        || ma.uid() != mb.uid()
        || ma.gid() != mb.gid()
        || ma.rdev() != mb.rdev()
        || xattrs(a)? != xattrs(b)?
    {
        return Ok(true);
    }
    let ft = mb.file_type();
    if ft.is_symlink() {
        return Ok(fs::read_link(a)? != fs::read_link(b)?);
    }
    if ft.is_dir() {
        return Ok(ma.mtime() != mb.mtime() || ma.mtime_nsec() != mb.mtime_nsec());
    }
    if ma.size() != mb.size() || ma.mtime() != mb.mtime() || ma.mtime_nsec() != mb.mtime_nsec() {
        return Ok(true);
    }
    if ft.is_file() && mb.mtime_nsec() == 0 {
        return Ok(!same_content(a, b)?);
    }
    Ok(false)
}

/// Every entry below `dir` (the contents of an added directory).
fn everything(root: &Path, rel: &[u8], ignored: &Ignored) -> io::Result<Vec<TarEntry>> {
    let dir = root.join(OsStr::from_bytes(rel));
    let mut out = Vec::new();
    for n in names(&dir)? {
        let r = join(rel, n.as_bytes());
        if ignored.contains(&r) {
            continue;
        }
        let p = dir.join(&n);
        if fs::symlink_metadata(&p)?.is_dir() {
            let below = everything(root, &r, ignored)?;
            // A directory there only for an ignored path below it is not reported.
            if below.is_empty() && holds_ignored(ignored, &r) {
                continue;
            }
            out.extend(below);
        }
        out.push(TarEntry {
            name: r,
            source: EntrySource::Host(p),
        });
    }
    Ok(out)
}

/// The changes below directory `rel` (present in both trees).
fn diff_dir(old: &Path, new: &Path, rel: Vec<u8>, ignored: &Ignored) -> io::Result<Vec<TarEntry>> {
    let od = old.join(OsStr::from_bytes(&rel));
    let nd = new.join(OsStr::from_bytes(&rel));
    let mut all: Vec<OsString> = names(&od)?;
    all.extend(names(&nd)?);
    all.sort();
    all.dedup();
    let results: Vec<io::Result<Vec<TarEntry>>> = all
        .into_par_iter()
        .map(|n| {
            let r = join(&rel, n.as_bytes());
            if ignored.contains(&r) {
                return Ok(Vec::new());
            }
            let (a, b) = (od.join(&n), nd.join(&n));
            let ma = fs::symlink_metadata(&a).ok();
            let mb = match fs::symlink_metadata(&b) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            match (ma, mb) {
                (Some(_), None) => {
                    let mut wh = b".wh.".to_vec();
                    wh.extend_from_slice(n.as_bytes());
                    out.push(TarEntry {
                        name: join(&rel, &wh),
                        source: EntrySource::Whiteout,
                    });
                }
                (None, Some(mb)) => {
                    if mb.is_dir() {
                        let below = everything(new, &r, ignored)?;
                        // A directory only there for an ignored path (a mount point's parent)
                        // is reported only when something else changed below it.
                        if below.is_empty() && holds_ignored(ignored, &r) {
                            return Ok(out);
                        }
                        out.extend(below);
                    }
                    out.push(TarEntry {
                        name: r,
                        source: EntrySource::Host(b),
                    });
                }
                (Some(ma), Some(mb)) => {
                    let same_type = ma.file_type() == mb.file_type();
                    if same_type && mb.is_dir() {
                        let below = diff_dir(old, new, r.clone(), ignored)?;
                        if !below.is_empty() || entry_changed(&a, &ma, &b, &mb)? {
                            out.extend(below);
                            out.push(TarEntry {
                                name: r,
                                source: EntrySource::Host(b),
                            });
                        }
                    } else if !same_type || entry_changed(&a, &ma, &b, &mb)? {
                        if mb.is_dir() {
                            out.extend(everything(new, &r, ignored)?);
                        }
                        out.push(TarEntry {
                            name: r,
                            source: EntrySource::Host(b),
                        });
                    }
                }
                (None, None) => {}
            }
            Ok(out)
        })
        .collect();
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}
