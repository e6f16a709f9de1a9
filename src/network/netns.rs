//! Network namespace handles: a namespace made for a container before it starts, kept alive by a
//! bind mount of its nsfs file at `<root>/netns/<container id>` until teardown. netavark
//! configures it by that path, the container's init joins it, and teardown finds it again after
//! the container's processes are gone (a killed supervisor included).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `f_type` of the namespace filesystem (linux/magic.h NSFS_MAGIC).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The handle's path for a container.
pub fn path(root: &Path, id: &str) -> PathBuf {
    root.join("netns").join(id)
}

/// Whether `p` is a live namespace handle (an nsfs bind mount), not a file a reboot left behind.
pub fn is_live(p: &Path) -> bool {
    crate::sys::fs_type(p).is_ok_and(|t| t == NSFS_MAGIC)
}

/// Makes a new network namespace and binds it at `p` (an existing live handle is kept).
pub fn create(p: &Path) -> io::Result<()> {
    if is_live(p) {
        return Ok(());
    }
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::File::create(p)?;
    let target = p.to_path_buf();
    // unshare(CLONE_NEWNET) moves only the calling thread: a thread of its own makes the
    // namespace, binds it, and ends; the bind mount keeps the namespace.
    let made = std::thread::spawn(move || -> io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if let Err(e) = made {
        let _ = fs::remove_file(p);
        return Err(e);
    }
    Ok(())
}

/// Unmounts and removes a handle (the namespace goes with its last user).
pub fn remove(p: &Path) -> io::Result<()> {
    if is_live(p) {
        nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH)?;
    }
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs `f` on a thread of its own that first enters the network namespace bound at `p`
/// (setns moves only the calling thread, and this one ends after), returning what `f` returns.
/// Sockets made there keep the namespace after the thread is gone.
pub fn within<T: Send>(p: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let handle = fs::File::open(p)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_a_live_namespace_until_removed() {
        if !crate::sys::test_has_root("network namespaces need root") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path(), "c1");
        create(&p).unwrap();
        assert!(is_live(&p));
        let own = fs::read_link("/proc/self/ns/net").unwrap();
        let theirs = fs::metadata(&p).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(format!("net:[{}]", theirs.ino()), own.to_string_lossy());
        create(&p).unwrap(); // idempotent
        remove(&p).unwrap();
        assert!(!p.exists());
        remove(&p).unwrap();
        // A leftover plain file (after a reboot) is not live and is removed.
        fs::write(&p, "").unwrap();
        assert!(!is_live(&p));
        remove(&p).unwrap();
    }
}
