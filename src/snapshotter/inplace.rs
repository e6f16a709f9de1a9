//! The in-place snapshotter (`kiln build --isolation=none`), kaniko's way of building where no
//! namespace can be made (a CI job's or a Kubernetes pod's unprivileged container): RUN steps
//! run in the container's own root filesystem.
//!
//! Before a RUN whose parent chain is not what `/` holds, everything under `/` is removed except
//! the ignore list (the kernel's /proc, /sys, /dev; the container's /etc/hosts, /etc/resolv.conf,
//! /etc/hostname and /var/run/secrets; every mount point; kiln's binary, its store, the build
//! context), and the chain's merged tree is copied into `/`. A tree of hard links to the chain's
//! files, in the store, is what the walk differ compares `/` with afterwards, skipping the
//! ignore list (nothing writes to it, and links cost nothing where a copy costs seconds). So
//! keys, layers and images are those of the isolated modes. After a commit `/` holds the new
//! chain, so consecutive RUNs of a stage copy nothing. Stages run one at a time.
//!
//! This replaces the container's files: it is only for a throwaway container, and refuses to
//! start where it cannot tell it is in one ([`in_container`]).

use super::view::{Found, View};
use super::{Active, Dirs, Kind, SnapshotError, Snapshotter};
use crate::diff::walk::Ignored;
use crate::diff::{self, TarEntry};
use crate::runtime::Rootfs;
use kiln_store::{Digest, LayerRecord, SnapshotRecord, Store};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct InPlace;

#[derive(Default)]
struct State {
    /// The build's ignore list (relative paths, no leading slash).
    ignored: Ignored,
    /// Paths of the running step's emulated mounts, ignored until its commit.
    transient: Ignored,
    /// The chain (snapshot fs dirs, bottom to top) `/` holds now, when known.
    current: Option<Vec<PathBuf>>,
    /// The chain the active step was prepared on.
    prepared: Vec<PathBuf>,
    /// Mount points the step's image lacks that a runtime leaves in the layer (/proc, /sys,
    /// /dev, as runc does under BuildKit), reported as new directories.
    stubs: Vec<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    ignored: Ignored::new(),
    transient: Ignored::new(),
    current: None,
    prepared: Vec::new(),
    stubs: Vec::new(),
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why this looks like a container kiln may empty: a marker Docker, podman, Kubernetes or a
/// container runtime leaves; `None` on what may be a real machine.
pub fn in_container() -> Option<String> {
    for f in ["/.dockerenv", "/run/.containerenv"] {
        if Path::new(f).exists() {
            return Some(format!("{f} exists"));
        }
    }
    if let Some(v) = std::env::var_os("container").filter(|v| !v.is_empty()) {
        return Some(format!("$container is {:?}", v.to_string_lossy()));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Some("$KUBERNETES_SERVICE_HOST is set".into());
    }
    None
}

/// Whether this process can make a namespace (a throwaway thread tries a UTS namespace, which
/// needs what every other one needs: CAP_SYS_ADMIN and a seccomp profile that allows unshare).
fn namespaces_work() -> Result<(), String> {
    std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS))
        .join()
        .map_err(|_| "the probe thread panicked".to_string())?
        .map_err(|e| format!("unshare: {e}"))
}

/// Decides whether a build runs in place: when `asked` (`--isolation=none`), or by itself when
/// no namespace can be made and this is a container. Returns whether, and a note to show; when
/// in place, the ignore list is set, with `keep` (the store, the context, the Dockerfile)
/// added to it.
pub fn select(asked: bool, keep: &[PathBuf]) -> Result<(bool, Option<String>), String> {
    let note = if asked {
        if in_container().is_none() {
            return Err("--isolation=none replaces everything under / with the image being built: it is meant for a throwaway container, and this does not look like one (no /.dockerenv or /run/.containerenv, $container and $KUBERNETES_SERVICE_HOST unset); set container=NAME in the environment to use it anyway".into());
        }
        None
    } else {
        // The cheap look first: outside a container no build probes for namespaces.
        let Some(container) = in_container() else {
            return Ok((false, None));
        };
        let Err(why) = namespaces_work() else {
            return Ok((false, None));
        };
        Some(format!(
            "no namespace can be made here ({why}) and this is a container ({container}): RUN steps run in this container's own filesystem (--isolation=none)"
        ))
    };
    configure(keep).map_err(|e| format!("--isolation=none: read this container's mounts: {e}"))?;
    Ok((true, note))
}

fn rel(p: &Path) -> Option<Vec<u8>> {
    let c = crate::rootfs::clean(p)?;
    let s = c.as_path().as_os_str().as_bytes();
    let s = s.strip_prefix(b"/").unwrap_or(s);
    (!s.is_empty()).then(|| s.to_vec())
}

/// Sets the build's ignore list: the fixed paths, every mount point, kiln's binary, and
/// `extra` (the store, the context, the Dockerfile, `--ignore-path`s). Forgets what `/` held.
pub fn configure(extra: &[PathBuf]) -> io::Result<()> {
    let mut ignored = Ignored::new();
    let fixed = [
        "/proc",
        "/sys",
        "/dev",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/var/run/secrets",
        "/run/secrets",
        "/run/.containerenv",
        "/.dockerenv",
    ];
    let mut paths: Vec<PathBuf> = fixed.iter().map(PathBuf::from).collect();
    for line in fs::read_to_string("/proc/self/mountinfo")?.lines() {
        if let Some(mp) = line.split(' ').nth(4) {
            paths.push(PathBuf::from(unescape_mount(mp)));
        }
    }
    paths.push(std::env::current_exe()?);
    paths.extend(extra.iter().cloned());
    for p in paths {
        let p = fs::canonicalize(&p).unwrap_or(p);
        if let Some(r) = rel(&p) {
            ignored.insert(r);
        }
    }
    let mut st = state();
    st.ignored = ignored;
    st.transient.clear();
    st.current = None;
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Adds the running step's emulated mount targets to what the differ skips, and marks `/` as
/// no longer holding a known chain once the step ends (the targets' contents are removed).
pub fn ignore_for_step(targets: &[String], stubs: &[String]) {
    let mut st = state();
    st.stubs = stubs.to_vec();
    for t in targets {
        if let Some(r) = rel(Path::new(t)) {
            st.transient.insert(r);
        }
    }
}

use crate::diff::walk::holds_ignored;

/// Removes everything below `dir` (`rel` in the root) but the ignored paths and their parents.
fn wipe(dir: &Path, rel: &[u8], ignored: &Ignored) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let r = diff::join_rel(rel, name.as_bytes());
        if ignored.contains(&r) {
            continue;
        }
        let p = e.path();
        let meta = fs::symlink_metadata(&p)?;
        if meta.is_dir() && holds_ignored(ignored, &r) {
            wipe(&p, &r, ignored)?;
        } else if meta.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Owner, mode, mtime and xattrs of `found` onto `path` (already created, not a symlink).
fn set_meta(path: &Path, found: &Found) -> io::Result<()> {
    let m = &found.meta;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
    crate::sys::fchmod(f.as_fd(), m.mode() & 0o7777)?;
    for n in crate::sys::llistxattr(&found.host)? {
        if crate::rootless::is_overlay_xattr(n.as_bytes()) {
            continue;
        }
        let v = crate::sys::lgetxattr(&found.host, &n)?;
        crate::sys::fsetxattr(f.as_fd(), &n, &v)?;
    }
    crate::sys::lutimesat(f.as_fd(), OsStr::new(""), m.mtime(), m.mtime_nsec())
}

use std::os::unix::fs::OpenOptionsExt;

/// Makes `name` in directory `dir` the symlink `found` is, with its owner and mtime.
fn copy_symlink(found: &Found, dir: &Path, name: &OsStr) -> io::Result<()> {
    let to = dir.join(name);
    std::os::unix::fs::symlink(fs::read_link(&found.host)?, &to)?;
    std::os::unix::fs::lchown(&to, Some(found.meta.uid()), Some(found.meta.gid()))?;
    let parent = fs::File::open(dir)?;
    let m = &found.meta;
    crate::sys::lutimesat(parent.as_fd(), name, m.mtime(), m.mtime_nsec())
}

/// Copies the merged directory `dir` of `view` into `/` (`rel` in the root), skipping ignored
/// paths; what is there already (an ignored path's parent) is kept and given the view's metadata.
fn place(view: &View, dir: &Found, rel: &[u8], ignored: &Ignored) -> io::Result<()> {
    for (name, f) in view.read_dir(dir)? {
        let r = diff::join_rel(rel, name.as_bytes());
        if ignored.contains(&r) {
            continue;
        }
        let abs = Path::new("/").join(OsStr::from_bytes(&r));
        let existing = fs::symlink_metadata(&abs).ok();
        let ft = f.meta.file_type();
        if ft.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&abs)?;
                    fs::create_dir(&abs)?;
                }
                None => fs::create_dir(&abs)?,
            }
            place(view, &f, &r, ignored)?;
            set_meta(&abs, &f)?;
            continue;
        }
        if let Some(m) = existing {
            if m.is_dir() {
                fs::remove_dir_all(&abs)?;
            } else {
                fs::remove_file(&abs)?;
            }
        }
        if ft.is_symlink() {
            copy_symlink(&f, abs.parent().unwrap_or(Path::new("/")), &name)?;
        } else if ft.is_file() {
            fs::copy(&f.host, &abs)?;
            set_meta(&abs, &f)?;
        } else {
            let kind = if ft.is_fifo() {
                libc::S_IFIFO
            } else if ft.is_block_device() {
                libc::S_IFBLK
            } else if ft.is_char_device() {
                libc::S_IFCHR
            } else {
                continue; // a socket: not layer content
            };
            let parent = fs::File::open(abs.parent().unwrap_or(Path::new("/")))?;
            let made = crate::sys::mknodat(
                parent.as_fd(),
                &name,
                kind | (f.meta.mode() & 0o7777),
                f.meta.rdev(),
            );
            if made.is_ok() {
                set_meta(&abs, &f)?;
            }
        }
    }
    Ok(())
}

/// The merged directory `dir` of `view` as a tree at `dest` that the differ compares `/` with:
/// directories and symlinks made, files hard-linked to the snapshots' own (nothing writes to
/// this tree, and a link costs nothing where a copy of a big base would cost seconds).
fn link_tree(view: &View, dir: &Found, dest: &Path) -> io::Result<()> {
    for (name, f) in view.read_dir(dir)? {
        let to = dest.join(&name);
        let ft = f.meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to)?;
            link_tree(view, &f, &to)?;
            set_meta(&to, &f)?;
        } else if ft.is_symlink() {
            copy_symlink(&f, dest, &name)?;
        } else {
            fs::hard_link(&f.host, &to)?;
        }
    }
    Ok(())
}

/// Makes `/` hold the merged `view` (see the module docs).
fn sync(view: &View, ignored: &Ignored) -> io::Result<()> {
    wipe(Path::new("/"), b"", ignored)?;
    if let Some(root) = view.resolve("/", false)? {
        place(view, &root, b"", ignored)?;
    }
    Ok(())
}

impl Snapshotter for InPlace {
    fn kind(&self) -> Kind {
        Kind::InPlace
    }

    fn prepare(
        &self,
        store: &Store,
        lowers: &[PathBuf],
        _dirs: &Dirs,
        _diffable: bool,
    ) -> io::Result<Active> {
        let view = super::view(lowers);
        let mut st = state();
        if st.current.as_deref() != Some(lowers) {
            st.current = None;
            sync(&view, &st.ignored)?;
            st.current = Some(lowers.to_vec());
        }
        st.prepared = lowers.to_vec();
        let old = tempfile::Builder::new()
            .prefix("inplace-old-")
            .tempdir_in(store.ingest_dir())?;
        if let Some(root) = view.resolve("/", false)? {
            link_tree(&view, &root, old.path())?;
        }
        Ok(Active {
            rootfs: Rootfs::Dir(PathBuf::from("/")),
            tree: PathBuf::from("/"),
            pristine: Some(old),
        })
    }

    fn changes(&self, active: &Active) -> io::Result<Vec<TarEntry>> {
        let old = active
            .pristine
            .as_ref()
            .ok_or_else(|| io::Error::other("no copy of the chain to compare / with"))?;
        let st = state();
        let mut ignored = st.ignored.clone();
        ignored.extend(st.transient.iter().cloned());
        let stubs = st.stubs.clone();
        drop(st);
        let mut out = diff::walk::changes_ignoring(old.path(), Path::new("/"), &ignored)?;
        if !stubs.is_empty() {
            // An empty directory made now, as a runtime's mount point is.
            let stub = old.path().join(".kiln-stub");
            fs::create_dir(&stub)?;
            for s in stubs {
                if let Some(name) = rel(Path::new(&s)) {
                    out.push(TarEntry {
                        name,
                        source: diff::EntrySource::Host(stub.clone()),
                    });
                }
            }
            diff::tar::sort_entries(&mut out);
        }
        Ok(out)
    }

    fn commit(
        &self,
        store: &Store,
        active: Active,
        dir: tempfile::TempDir,
        layer: &LayerRecord,
        chain: Digest,
        parent: Option<Digest>,
    ) -> Result<SnapshotRecord, SnapshotError> {
        // As native: the layer the changes became is unpacked as the snapshot.
        let snap = super::native::Native.commit(store, active, dir, layer, chain, parent)?;
        let mut st = state();
        // `/` now holds the new chain, unless emulated mounts were removed from it.
        st.current = if st.transient.is_empty() {
            let mut now = std::mem::take(&mut st.prepared);
            now.push(store.snapshot_fs(&snap));
            Some(now)
        } else {
            None
        };
        st.transient.clear();
        Ok(snap)
    }

    fn remove(&self, active: Active) -> io::Result<()> {
        drop(active);
        let mut st = state();
        st.current = None;
        st.transient.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_parents_are_found_and_mount_points_unescaped() {
        let mut ig = Ignored::new();
        ig.insert(b"etc/hosts".to_vec());
        ig.insert(b"var/run/secrets".to_vec());
        assert!(holds_ignored(&ig, b"etc"));
        assert!(holds_ignored(&ig, b"var/run"));
        assert!(!holds_ignored(&ig, b"et"));
        assert!(!holds_ignored(&ig, b"etc/hosts"));
        assert!(!holds_ignored(&ig, b"usr"));
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(rel(Path::new("/a/../b/")), Some(b"b".to_vec()));
        assert_eq!(rel(Path::new("/")), None);
    }
}
