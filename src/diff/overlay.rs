//! The overlay differ: an overlay upper directory *is* the change set of a step.
//!
//! Every entry in the upper dir is a change (overlayfs copies a file up whole, with its parent
//! directories, before it changes; kiln mounts with `redirect_dir=off,metacopy=off`, so nothing is
//! recorded only in xattrs). Whiteouts (character devices 0/0) become `.wh.NAME`, directories
//! marked `trusted.overlay.opaque=y` get a `.wh..wh..opq` entry (image-spec layer.md
//! "Whiteouts"). Directories are listed in parallel.

use super::tar::{join, sort_entries, EntrySource, TarEntry};
use crate::snapshotter::view::is_whiteout;
use rayon::prelude::*;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The layer entries for the upper directory `upper`, sorted.
pub fn changes(upper: &Path) -> io::Result<Vec<TarEntry>> {
    let mut out = list(upper, Vec::new())?;
    sort_entries(&mut out);
    Ok(out)
}

fn list(upper: &Path, rel: Vec<u8>) -> io::Result<Vec<TarEntry>> {
    let dir = upper.join(OsStr::from_bytes(&rel));
    let mut out = Vec::new();
    let mut subdirs = Vec::new();
    for e in fs::read_dir(&dir)? {
        let e = e?;
        let name = e.file_name();
        let path = e.path();
        let meta = fs::symlink_metadata(&path)?;
        if is_whiteout(&meta) {
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(name.as_bytes());
            out.push(TarEntry {
                name: join(&rel, &wh),
                source: EntrySource::Whiteout,
            });
            continue;
        }
        let r = join(&rel, name.as_bytes());
        if meta.is_dir() {
            if crate::sys::lgetxattr(&path, OsStr::new(crate::rootless::opaque_xattr()))
                .is_ok_and(|v| v == b"y")
            {
                out.push(TarEntry {
                    name: join(&r, b".wh..wh..opq"),
                    source: EntrySource::Opaque,
                });
            }
            subdirs.push(r.clone());
        }
        out.push(TarEntry {
            name: r,
            source: EntrySource::Host(path),
        });
    }
    let below: Vec<io::Result<Vec<TarEntry>>> =
        subdirs.into_par_iter().map(|r| list(upper, r)).collect();
    for b in below {
        out.extend(b?);
    }
    Ok(out)
}
