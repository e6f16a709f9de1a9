//! In-root path resolution: the only code that opens paths inside a container filesystem.
//!
//! Every lookup goes through openat2(2) with `RESOLVE_IN_ROOT`, so a symlink or `..` inside an
//! image resolves as if the rootfs were `/` and can never reach the host. Entries are then created
//! or removed by name relative to the opened parent directory with the `*at` syscalls, which
//! never follow a symlink in the last component. This is the approach of runc's and youki's
//! `securejoin`, done by the kernel instead of in user space.

use crate::sys;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// A container filesystem root, held open.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// A relative, lexically clean path inside a root ("" is the root itself).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InPath(PathBuf);

impl InPath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }
    /// The parent directory and the last component (None for the root).
    pub fn split(&self) -> Option<(InPath, &OsStr)> {
        let name = self.0.file_name()?;
        let parent = self.0.parent().map(Path::to_path_buf).unwrap_or_default();
        Some((InPath(parent), name))
    }
}

/// Cleans a path found in an archive or a Dockerfile into an in-root path: a leading `/` is
/// dropped, `.` components vanish, `..` pops a component. Returns `None` when `..` would climb
/// above the root (Docker rejects such tar entries as a "breakout", pkg/archive).
pub fn clean(path: &Path) -> Option<InPath> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(InPath(out))
}

fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

impl Root {
    /// Opens a directory as a root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = std::fs::File::open(path)?;
        if !fd.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(Root {
            fd: fd.into(),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `p` resolved in-root with the given open flags.
    pub fn open_at(&self, p: &InPath, flags: libc::c_int) -> io::Result<OwnedFd> {
        sys::openat2_in_root(self.fd(), p.0.as_os_str(), flags, 0)
    }

    /// Opens the directory `p` (in-root), for use as the parent of `*at` calls.
    pub fn open_dir(&self, p: &InPath) -> io::Result<OwnedFd> {
        self.open_at(p, libc::O_DIRECTORY | libc::O_RDONLY)
    }

    /// Opens the directory `p`, creating it and any missing parents (mode 0755) in-root.
    pub fn mkdir_all(&self, p: &InPath) -> io::Result<OwnedFd> {
        match self.open_dir(p) {
            Ok(fd) => Ok(fd),
            Err(e) if is_enoent(&e) => {
                let Some((parent, name)) = p.split() else {
                    return Err(e);
                };
                let pfd = self.mkdir_all(&parent)?;
                match sys::mkdirat(pfd.as_fd(), name, 0o755) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                self.open_dir(p)
            }
            Err(e) => Err(e),
        }
    }
}

/// Removes `name` in `dir`, whatever it is (a directory recursively); absent is success.
/// Never follows a symlink.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match sys::unlinkat(dir, name, false) {
        Ok(()) => Ok(()),
        Err(e) if is_enoent(&e) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EISDIR) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            let sub = sys::openat(
                dir,
                name,
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_NOFOLLOW,
                0,
            )?;
            let names: Vec<std::ffi::OsString> = {
                let dup = sub.try_clone()?;
                let rd = std::fs::read_dir(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&dup)
                ))?;
                rd.map(|e| e.map(|e| e.file_name()))
                    .collect::<io::Result<_>>()?
            };
            for n in names {
                remove_all_at(sub.as_fd(), &n)?;
            }
            drop(sub);
            sys::unlinkat(dir, name, true)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_contains_or_rejects() {
        let c = |s: &str| clean(Path::new(s)).map(|p| p.0.to_string_lossy().into_owned());
        assert_eq!(c("/etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(c("./a/./b/").as_deref(), Some("a/b"));
        assert_eq!(c("a/../b").as_deref(), Some("b"));
        assert_eq!(c("./").as_deref(), Some(""));
        assert_eq!(c("../etc"), None);
        assert_eq!(c("a/../../etc"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("dots")).unwrap();
        let r = Root::open(&root).unwrap();
        // Both links resolve to the root itself, never to the host's /.
        for link in ["up/etc", "dots/etc"] {
            let fd = r.mkdir_all(&clean(Path::new(link)).unwrap()).unwrap();
            let real = std::fs::read_link(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ))
            .unwrap();
            assert_eq!(real, root.join("etc"), "{link}");
        }
        let fd = r
            .mkdir_all(&clean(Path::new("up/new/dir")).unwrap())
            .unwrap();
        drop(fd);
        assert!(root.join("new/dir").is_dir());
    }
}
