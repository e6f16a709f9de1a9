//! Writing selected sources into a change set: Docker's directory rules, `--chown`/`--chmod`, archives unpacked by ADD, and hard links to unchanged files of the previous build.

#[allow(unused_imports)]
use super::*;

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

pub(super) struct DirFix {
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

pub(super) fn io_s(e: io::Error) -> String {
    e.to_string()
}

/// A chown's error; rootless without the id mapped, what to do about it.
fn owner_err(e: io::Error, uid: u32, gid: u32) -> String {
    crate::rootless::unmapped(&e, uid, gid).unwrap_or_else(|| e.to_string())
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
                sys::lchownat(out.as_fd(), OsStr::new(""), uid, gid)
                    .map_err(|e| owner_err(e, uid, gid))?;
                sys::fchmod(out.as_fd(), mode).map_err(io_s)?;
                sys::lutimesat(out.as_fd(), OsStr::new(""), it.mtime.0, it.mtime.1)
                    .map_err(io_s)?;
            }
            Kind::Symlink(t) => {
                sys::symlinkat(t.as_os_str(), pfd, &name).map_err(io_s)?;
                sys::lchownat(pfd, &name, uid, gid).map_err(|e| owner_err(e, uid, gid))?;
                sys::lutimesat(pfd, &name, it.mtime.0, it.mtime.1).map_err(io_s)?;
            }
            Kind::Special(t, dev) => {
                sys::mknodat(pfd, &name, t | mode, *dev).map_err(io_s)?;
                sys::lchownat(pfd, &name, uid, gid).map_err(|e| owner_err(e, uid, gid))?;
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
            sys::lchownat(fd.as_fd(), OsStr::new(""), d.uid, d.gid)
                .map_err(|e| owner_err(e, d.uid, d.gid))?;
            sys::fchmod(fd.as_fd(), d.mode).map_err(io_s)?;
            sys::lutimesat(fd.as_fd(), OsStr::new(""), d.mtime.0, d.mtime.1).map_err(io_s)?;
        }
        Ok(())
    }
}

/// `path` (relative to the root) with its longest prefix that exists in `view` resolved through
/// symlinks; the rest appended as written. `None` if a symlink leads out of the root.
pub(super) fn resolve_existing(view: &View, path: &Path) -> Option<InPath> {
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
pub(super) fn archive_kind(p: &Path) -> io::Result<Option<Archive>> {
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
