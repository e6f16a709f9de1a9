//! The deterministic layer tar writer: the same tree always gives the same bytes.
//!
//! Entries are sorted by path bytes (a parent sorts before its children), names carry no `./`
//! prefix (directories end in `/`), uname/gname are empty, ownership is numeric, names and link
//! targets over 100 bytes and all xattrs go in PAX records (never GNU long-name entries), hard
//! links are preserved (the first path in sort order holds the data), sockets are skipped, and
//! and each mtime goes through the options' [`Times`] (kept, clamped to SOURCE_DATE_EPOCH as
//! reproducible-builds.org defines it, or set).
//!
//! The differs hand [`write_entries`] a sorted change list; whiteouts (`.wh.NAME`) and opaque
//! markers (`.wh..wh..opq`) are empty regular files with mode 0, owner 0:0 and mtime 0 (as
//! containerd writes them; `--timestamp` sets it too), so they never carry a build's timestamp. `trusted.overlay.*` xattrs
//! are overlayfs bookkeeping and never reach a layer.

use super::times::Times;
use crate::sys;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct TarOptions {
    /// What becomes of each entry's mtime.
    pub times: Times,
}

/// One entry of a layer tar, by relative path (no trailing slash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    pub name: Vec<u8>,
    pub source: EntrySource,
}

/// Where an entry's header and data come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntrySource {
    /// A file, directory, symlink or device on the host, described as it is.
    Host(PathBuf),
    /// `.wh.NAME`: NAME is deleted (the entry's name is the marker's own path).
    Whiteout,
    /// `.wh..wh..opq`: the directory hides everything below it.
    Opaque,
}

/// `rel/name` as layer path bytes (`name` alone at the root).
pub(crate) fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = rel.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

pub(crate) fn sort_entries(v: &mut [TarEntry]) {
    v.sort_by(|a, b| a.name.cmp(&b.name));
}

/// Every path below `dir` (relative, sorted by bytes), not following symlinks.
fn walk_sorted(dir: &Path) -> io::Result<Vec<TarEntry>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let p = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(p.clone());
            }
            out.push(TarEntry {
                name: p.as_os_str().as_bytes().to_vec(),
                source: EntrySource::Host(dir.join(&p)),
            });
        }
    }
    sort_entries(&mut out);
    Ok(out)
}

fn set_name(h: &mut tar::Header, name: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    let field = &mut h.as_old_mut().name;
    if name.len() > field.len() {
        pax.push(("path".into(), name.to_vec()));
    }
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

fn set_link(h: &mut tar::Header, link: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    let field = &mut h.as_old_mut().linkname;
    if link.len() > field.len() {
        pax.push(("linkpath".into(), link.to_vec()));
    }
    let n = link.len().min(field.len());
    field[..n].copy_from_slice(&link[..n]);
}

/// Writes the tree under `dir` as a layer tar into `out`; returns `out`.
pub fn write_tree<W: Write>(dir: &Path, out: W, opts: &TarOptions) -> io::Result<W> {
    write_entries(&walk_sorted(dir)?, out, opts)
}

/// Writes `entries` (sorted by name) as a layer tar into `out`; returns `out`.
pub fn write_entries<W: Write>(entries: &[TarEntry], out: W, opts: &TarOptions) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for entry in entries {
        let full = match &entry.source {
            EntrySource::Host(p) => p,
            EntrySource::Whiteout | EntrySource::Opaque => {
                let mut h = tar::Header::new_ustar();
                let mut pax = Vec::new();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(opts.times.apply(0).max(0) as u64);
                h.set_size(0);
                set_name(&mut h, &entry.name, &mut pax);
                if !pax.is_empty() {
                    b.append_pax_extensions(
                        pax.iter()
                            .map(|(k, v): &(String, Vec<u8>)| (k.as_str(), v.as_slice())),
                    )?;
                }
                h.set_cksum();
                b.append(&h, io::empty())?;
                continue;
            }
        };
        let full = full.as_path();
        let meta = fs::symlink_metadata(full)?;
        let ft = meta.file_type();
        if ft.is_socket() {
            continue;
        }
        let mut name = entry.name.clone();
        let mut h = tar::Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid() as u64);
        h.set_gid(meta.gid() as u64);
        h.set_mtime(opts.times.apply(meta.mtime()).max(0) as u64);
        h.set_size(0);
        let mut data: Option<fs::File> = None;
        if ft.is_dir() {
            name.push(b'/');
            h.set_entry_type(tar::EntryType::Directory);
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            set_link(
                &mut h,
                fs::read_link(full)?.as_os_str().as_bytes(),
                &mut pax,
            );
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    let first = first.clone();
                    set_link(&mut h, &first, &mut pax);
                } else {
                    links.insert(key, name.clone());
                }
            }
            if h.entry_type() != tar::EntryType::Link {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                data = Some(
                    fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(full)?,
                );
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let rdev = meta.rdev();
            h.set_device_major(libc::major(rdev))?;
            h.set_device_minor(libc::minor(rdev))?;
        } else if ft.is_fifo() {
            h.set_entry_type(tar::EntryType::Fifo);
        }
        set_name(&mut h, &name, &mut pax);
        if h.entry_type() != tar::EntryType::Link {
            let mut names: Vec<OsString> = sys::llistxattr(full)?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for n in names {
                if crate::rootless::is_overlay_xattr(n.as_bytes()) {
                    continue;
                }
                let v = sys::lgetxattr(full, &n)?;
                pax.push((format!("SCHILY.xattr.{}", n.to_string_lossy()), v));
            }
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        h.set_cksum();
        match data {
            Some(f) => {
                let len = meta.len();
                // The file must not change length under us: a short read would corrupt the tar.
                b.append(
                    &h,
                    ExactReader {
                        inner: f,
                        left: len,
                        path: full,
                    },
                )?
            }
            None => b.append(&h, io::empty())?,
        }
    }
    b.into_inner()
}

/// Reads exactly `left` bytes or fails naming the file (it changed while being archived).
struct ExactReader<'a> {
    inner: fs::File,
    left: u64,
    path: &'a Path,
}

impl io::Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being archived", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
