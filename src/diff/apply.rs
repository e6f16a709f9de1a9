//! Applying a layer: unpacking an (uncompressed) layer tar into a snapshot directory.
//!
//! OCI whiteouts become overlay whiteouts so the directory can serve as an overlay lower dir
//! (image-spec layer.md "Whiteouts"; kernel overlayfs.rst "whiteouts and opaque directories"):
//! `.wh.NAME` becomes a character device 0/0 named NAME, `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory.
//!
//! Safety: every entry name is cleaned in-root (`..` above the root is an error naming the
//! entry); parents are opened with in-root resolution; the last component is always removed and
//! recreated with O_EXCL|O_NOFOLLOW or an `*at` call that does not follow symlinks, so nothing
//! is ever written through a symlink; hard links resolve their target in-root and link the entry
//! itself. Directory metadata is applied after all entries, so a read-only directory in the
//! layer does not stop later entries from being written into it.

use crate::rootfs::{self, clean, InPath, Root};
use crate::sys;
use kiln_store::digest::HashReader;
use kiln_store::Digest;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar::EntryType;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("layer entry {entry:?}: {reason}")]
    Entry { entry: String, reason: String },
    #[error("layer entry {entry:?}")]
    EntryIo {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("read layer tar")]
    Read(#[source] io::Error),
}

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyStats {
    /// sha256 of the whole tar stream read (the layer's DiffID).
    pub diff_id: Digest,
    pub tar_size: u64,
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// The filesystem refused overlay whiteouts (a store on overlayfs), so whiteouts and opaque
    /// markers were kept in their OCI form (`.wh.NAME` files); see `snapshot::view`.
    pub oci_whiteouts: bool,
    /// Rootless without a subordinate range: entries whose owner could not be given (their ids
    /// are not mapped), kept owned by root; (count, the first few paths with their ids).
    pub unkept_owners: (u64, Vec<String>),
    /// Rootless: device nodes the kernel refuses to make in a user namespace, skipped.
    pub skipped_devices: (u64, Vec<String>),
}

impl ApplyStats {
    fn note(list: &mut (u64, Vec<String>), what: String) {
        list.0 += 1;
        if list.1.len() < 5 {
            list.1.push(what);
        }
    }
}

struct DirMeta {
    path: InPath,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

fn entry_err(entry: &Path, reason: impl Into<String>) -> ApplyError {
    ApplyError::Entry {
        entry: entry.display().to_string(),
        reason: reason.into(),
    }
}

fn entry_io(entry: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::EntryIo {
        entry: entry.display().to_string(),
        source: escaped(source),
    }
}

/// Text from a hostile archive (names, the tar crate's messages quoting header bytes) with
/// control characters and undecodable bytes escaped, so an error never prints raw bytes.
pub fn escape_text(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() || c == char::REPLACEMENT_CHARACTER {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The same error with its text escaped ([`escape_text`]).
pub fn escaped(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), escape_text(&e.to_string()))
}

/// An error and its causes on one line, `a: b: c` (for callers that keep errors as text).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Unpacks the layer tar read from `tar` into `root`. The whole stream is consumed and hashed,
/// so the caller can check the returned DiffID against the one the image declares.
pub fn apply_layer<R: Read>(root: &Root, tar: R) -> Result<ApplyStats, ApplyError> {
    apply_layer_mapped(root, tar, &mut |p: &InPath| p.clone())
}

/// [`apply_layer`] with every entry's parent directory passed through `map` first: ADD uses it
/// to follow the image's symlinked directories (`lib -> usr/lib`) as Docker's untar does,
/// where a layer is applied literally.
pub fn apply_layer_mapped<R: Read>(
    root: &Root,
    tar: R,
    map: &mut dyn FnMut(&InPath) -> InPath,
) -> Result<ApplyStats, ApplyError> {
    let chown = sys::is_root();
    let mut archive = tar::Archive::new(HashReader::new(tar));
    let mut dirs: Vec<DirMeta> = Vec::new();
    let mut stats = ApplyStats {
        diff_id: Digest::of(b""),
        tar_size: 0,
        entries: 0,
        bytes: 0,
        oci_whiteouts: false,
        unkept_owners: (0, Vec::new()),
        skipped_devices: (0, Vec::new()),
    };
    // Raw iteration: kiln reads PAX records itself, by their length prefixes (POSIX pax
    // "extended header"), because xattr values are binary and may contain newlines, which the
    // tar crate's own PAX reader splits on. GNU long names are handled here too.
    let mut pax: Option<Vec<u8>> = None;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    for entry in archive
        .entries()
        .map_err(|e| ApplyError::Read(escaped(e)))?
        .raw(true)
    {
        let mut entry = entry.map_err(|e| ApplyError::Read(escaped(e)))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_local_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink() {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| ApplyError::Read(escaped(e)))?;
            if kind.is_pax_local_extensions() {
                pax = Some(data);
            } else {
                while data.last() == Some(&0) {
                    data.pop();
                }
                if kind.is_gnu_longname() {
                    long_name = Some(data);
                } else {
                    long_link = Some(data);
                }
            }
            continue;
        }
        if kind.is_pax_global_extensions() {
            continue;
        }
        let records = match pax.take() {
            Some(d) => parse_pax(&d)
                .map_err(|why| entry_err(Path::new(OsStr::from_bytes(&entry.path_bytes())), why))?,
            None => Vec::new(),
        };
        let find = |k: &[u8]| {
            records
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let path_bytes = find(b"path")
            .or_else(|| long_name.take())
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let link_bytes = find(b"linkpath")
            .or_else(|| long_link.take())
            .or_else(|| entry.link_name_bytes().map(|b| b.into_owned()));
        long_name = None;
        long_link = None;
        let raw_path = PathBuf::from(OsStr::from_bytes(&path_bytes));
        stats.entries += 1;
        let path = clean(&raw_path)
            .ok_or_else(|| entry_err(&raw_path, "path climbs out of the root with \"..\""))?;
        if kind == EntryType::GNUSparse {
            return Err(entry_err(&raw_path, "GNU sparse entries are not supported"));
        }
        if let Some(size) = find(b"size") {
            let declared = std::str::from_utf8(&size)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if declared != Some(entry.size()) {
                return Err(entry_err(&raw_path, "PAX size differs from the header's"));
            }
        }

        // PAX records: xattrs, and uid/gid beyond the octal header range.
        let mut xattrs = Vec::new();
        let (mut uid, mut gid) = (
            entry.header().uid().map_err(entry_io(&raw_path))? as u32,
            entry.header().gid().map_err(entry_io(&raw_path))? as u32,
        );
        for (key, value) in &records {
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((OsStr::from_bytes(name).to_os_string(), value.clone()));
            } else if key == b"uid" {
                uid = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(uid);
            } else if key == b"gid" {
                gid = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(gid);
            }
        }
        let header = entry.header();
        let mode = header.mode().map_err(entry_io(&raw_path))? & 0o7777;
        let mtime = header.mtime().map_err(entry_io(&raw_path))? as i64;
        let kind = header.entry_type();

        // A directory entry maps as a whole, so one that names a symlinked directory of the
        // image (`lib/` with `lib -> usr/lib`) updates that directory and keeps the link.
        let path = if kind.is_dir() { map(&path) } else { path };
        let Some((parent, name)) = path.split() else {
            // The root itself ("./"): only a directory makes sense; keep its metadata for the end.
            if kind.is_dir() {
                dirs.push(DirMeta {
                    path,
                    mode,
                    uid,
                    gid,
                    mtime,
                    xattrs,
                });
                continue;
            }
            return Err(entry_err(&raw_path, "the layer root must be a directory"));
        };
        let name = name.to_os_string();
        let parent = if kind.is_dir() { parent } else { map(&parent) };
        let pfd = root.mkdir_all(&parent).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
                entry_err(&raw_path, "a parent directory is a symlink that points nowhere inside the layer, or not a directory")
            }
            _ => entry_io(&raw_path)(e),
        })?;
        let pfd = pfd.as_fd();

        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            match sys::fsetxattr(pfd, OsStr::new(crate::rootless::opaque_xattr()), b"y") {
                Ok(()) => {}
                Err(e) if refused(&e) => {
                    oci_marker(pfd, &name).map_err(entry_io(&raw_path))?;
                    stats.oci_whiteouts = true;
                }
                Err(e) => return Err(entry_io(&raw_path)(e)),
            }
            continue;
        }
        if let Some(target) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                continue; // aufs bookkeeping (.wh..wh.plnk, ...): not content
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(entry_err(&raw_path, "whiteout of an invalid name"));
            }
            let target = OsStr::from_bytes(target);
            rootfs::remove_all_at(pfd, target).map_err(entry_io(&raw_path))?;
            match sys::mknodat(pfd, target, libc::S_IFCHR, 0) {
                Ok(()) => {}
                Err(e) if refused(&e) => {
                    oci_marker(pfd, &name).map_err(entry_io(&raw_path))?;
                    stats.oci_whiteouts = true;
                }
                Err(e) => return Err(entry_io(&raw_path)(e)),
            }
            continue;
        }

        if kind.is_dir() {
            match sys::lstatat(pfd, &name).map_err(entry_io(&raw_path))? {
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                Some(_) => {
                    rootfs::remove_all_at(pfd, &name).map_err(entry_io(&raw_path))?;
                    sys::mkdirat(pfd, &name, 0o700).map_err(entry_io(&raw_path))?;
                }
                None => sys::mkdirat(pfd, &name, 0o700).map_err(entry_io(&raw_path))?,
            }
            dirs.push(DirMeta {
                path,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
            });
            continue;
        }

        if kind == EntryType::Link {
            let link = link_bytes
                .as_deref()
                .map(|b| PathBuf::from(OsStr::from_bytes(b)))
                .ok_or_else(|| entry_err(&raw_path, "hard link without a target"))?;
            let target = clean(&link).ok_or_else(|| {
                entry_err(
                    &raw_path,
                    format!("hard link target {} climbs out of the root", link.display()),
                )
            })?;
            let Some((tparent, tname)) = target.split() else {
                return Err(entry_err(&raw_path, "hard link to the root directory"));
            };
            if target == path {
                continue;
            }
            let not_here = || {
                entry_err(
                    &raw_path,
                    format!("hard link target {} is not in this layer", link.display()),
                )
            };
            let tfd = match root.open_dir(&tparent) {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                    return Err(not_here())
                }
                Err(e) => return Err(entry_io(&raw_path)(e)),
            };
            match sys::lstatat(tfd.as_fd(), tname).map_err(entry_io(&raw_path))? {
                None => {
                    return Err(entry_err(
                        &raw_path,
                        format!("hard link target {} is not in this layer", link.display()),
                    ))
                }
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                    return Err(entry_err(
                        &raw_path,
                        format!("hard link target {} is a directory", link.display()),
                    ))
                }
                Some(_) => {}
            }
            rootfs::remove_all_at(pfd, &name).map_err(entry_io(&raw_path))?;
            sys::linkat(tfd.as_fd(), tname, pfd, &name).map_err(entry_io(&raw_path))?;
            continue;
        }

        rootfs::remove_all_at(pfd, &name).map_err(entry_io(&raw_path))?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let fd = sys::openat(
                    pfd,
                    &name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(entry_io(&raw_path))?;
                let mut f = std::fs::File::from(fd);
                stats.bytes += io::copy(&mut entry, &mut f).map_err(entry_io(&raw_path))?;
                if !finish_fd(f.as_fd(), chown, uid, gid, mode, mtime, &xattrs)
                    .map_err(entry_io(&raw_path))?
                {
                    let what = format!("{} ({uid}:{gid})", raw_path.display());
                    ApplyStats::note(&mut stats.unkept_owners, what);
                }
            }
            EntryType::Symlink => {
                let target = link_bytes
                    .as_deref()
                    .map(|b| PathBuf::from(OsStr::from_bytes(b)))
                    .ok_or_else(|| entry_err(&raw_path, "symlink without a target"))?;
                sys::symlinkat(target.as_os_str(), pfd, &name).map_err(entry_io(&raw_path))?;
                if !finish_name(pfd, &name, chown, uid, gid, mtime).map_err(entry_io(&raw_path))? {
                    let what = format!("{} ({uid}:{gid})", raw_path.display());
                    ApplyStats::note(&mut stats.unkept_owners, what);
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let ft = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                match sys::mknodat(pfd, &name, ft | mode, sys::makedev(major, minor)) {
                    // The kernel makes no device node in a user namespace (podman's rootless
                    // storage skips them too): the container's /dev has the host's devices.
                    Err(e)
                        if ft != libc::S_IFIFO
                            && e.raw_os_error() == Some(libc::EPERM)
                            && crate::rootless::active() =>
                    {
                        let what = raw_path.display().to_string();
                        ApplyStats::note(&mut stats.skipped_devices, what);
                        continue;
                    }
                    r => r.map_err(entry_io(&raw_path))?,
                }
                if !finish_name(pfd, &name, chown, uid, gid, mtime).map_err(entry_io(&raw_path))? {
                    let what = format!("{} ({uid}:{gid})", raw_path.display());
                    ApplyStats::note(&mut stats.unkept_owners, what);
                }
            }
            other => {
                return Err(entry_err(
                    &raw_path,
                    format!("unsupported tar entry type {other:?}"),
                ))
            }
        }
    }

    // Directory metadata last (see module docs). Chmod after chown: chown clears set-id bits.
    for d in dirs.iter().rev() {
        let fd = match root.open_at(
            &d.path,
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_NOFOLLOW,
        ) {
            Ok(fd) => fd,
            // Replaced by a non-directory later in the same layer.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::ENOENT)
                ) =>
            {
                continue
            }
            Err(e) => return Err(entry_io(d.path.as_path())(e)),
        };
        if !finish_fd(fd.as_fd(), chown, d.uid, d.gid, d.mode, d.mtime, &d.xattrs)
            .map_err(entry_io(d.path.as_path()))?
        {
            let what = format!("{} ({}:{})", d.path.as_path().display(), d.uid, d.gid);
            ApplyStats::note(&mut stats.unkept_owners, what);
        }
    }

    let mut inner = archive.into_inner();
    io::copy(&mut inner, &mut io::sink()).map_err(|e| ApplyError::Read(escaped(e)))?;
    let (diff_id, size) = inner.finish();
    stats.diff_id = diff_id;
    stats.tar_size = size;
    Ok(stats)
}

/// Whether the filesystem refuses overlay whiteouts or trusted.overlay xattrs (overlayfs itself
/// does, for a store inside a container).
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::EXDEV)
    )
}

/// Keeps a whiteout or opaque marker in its OCI form: an empty file of that name, mode 0.
fn oci_marker(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rootfs::remove_all_at(dir, name)?;
    sys::openat(
        dir,
        name,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
        0,
    )
    .map(drop)
}

/// Gives `name` in `dir` its owner; false when rootless without that id mapped (EINVAL), when
/// the entry stays root's.
fn own(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<bool> {
    match sys::lchownat(dir, name, uid, gid) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && crate::rootless::active() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Owner, mode, xattrs and mtime of an open entry; false when its owner could not be kept.
fn finish_fd(
    fd: BorrowedFd<'_>,
    chown: bool,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: &[(OsString, Vec<u8>)],
) -> io::Result<bool> {
    let kept = !chown || own(fd, OsStr::new(""), uid, gid)?;
    sys::fchmod(fd, mode)?;
    for (k, v) in xattrs {
        sys::fsetxattr(fd, k, v).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("set xattr {}: {e}", escape_text(&k.to_string_lossy())),
            )
        })?;
    }
    sys::lutimesat(fd, OsStr::new(""), mtime, 0)?;
    Ok(kept)
}

fn finish_name(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    chown: bool,
    uid: u32,
    gid: u32,
    mtime: i64,
) -> io::Result<bool> {
    let kept = !chown || own(dir, name, uid, gid)?;
    sys::lutimesat(dir, name, mtime, 0)?;
    Ok(kept)
}

/// PAX records: (key, value) in order.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// Parses a PAX extended header: records `LEN KEY=VALUE\n`, where LEN counts the whole record,
/// so a value may hold any byte, newlines included.
fn parse_pax(mut data: &[u8]) -> Result<PaxRecords, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("malformed PAX record: no length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("malformed PAX record: bad length")?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("malformed PAX record: length does not fit".into());
        }
        let kv = &data[sp + 1..len - 1];
        let eq = kv
            .iter()
            .position(|b| *b == b'=')
            .ok_or("malformed PAX record: no '='")?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}
