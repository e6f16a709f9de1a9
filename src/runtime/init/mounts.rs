//! The container's root, mounted before pivot_root: every mount goes through [`Syscall`], so the
//! whole layout (which filesystems, where, with which flags; which device nodes) is unit-tested
//! without root against a recording implementation.

use super::fail;
use crate::rootfs::{clean, Root};
use crate::runtime::{Rootfs, Spec};
use crate::sys;
use nix::mount::MsFlags;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The privileged calls of the root's setup (youki's Syscall seam).
pub trait Syscall {
    /// mount(2); empty strings are NULL.
    fn mount(
        &self,
        source: &str,
        target: &OsStr,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> io::Result<()>;
    /// mknodat(2) of a device node (`mode`: type bits and permissions).
    fn mknodat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: u32, dev: u64) -> io::Result<()>;
}

/// The longest option string mount(2) takes (a page, with its terminating NUL).
const MOUNT_DATA_MAX: usize = 4095;

/// The kernel.
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: &str,
        target: &OsStr,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> io::Result<()> {
        // mount(2) takes one page of options: a deep stack of lower dirs goes one by one.
        if fstype == "overlay" && data.len() >= MOUNT_DATA_MAX {
            let layers = data
                .split(',')
                .find_map(|o| o.strip_prefix("lowerdir="))
                .map(|l| l.split(':').count())
                .unwrap_or(0);
            return sys::mount_overlay_lowerdir_plus(target, data).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{layers} lower layers: their overlay options ({} bytes) do not fit mount(2)'s page, and the new mount API's lowerdir+ (Linux 6.8) failed: {e}",
                        data.len()
                    ),
                )
            });
        }
        sys::proc::mount(source, target, fstype, flags, data)
    }
    fn mknodat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: u32, dev: u64) -> io::Result<()> {
        sys::mknodat(dir, name, mode, dev)
    }
}

/// Paths Docker masks (moby oci/defaults.go MaskedPaths) and makes read-only (ReadonlyPaths).
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Device nodes bind-mounted from the host into the container's /dev tmpfs.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// An in-root target opened O_PATH, named by its /proc/self/fd path for mount(2).
struct Target {
    _fd: OwnedFd,
    proc_path: OsString,
}

fn target(root: &Root, path: &str) -> io::Result<Target> {
    let inp = clean(Path::new(path))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path climbs out of root"))?;
    let fd = root.open_at(&inp, libc::O_PATH)?;
    let proc_path = OsString::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    Ok(Target { _fd: fd, proc_path })
}

fn mount_at(
    sc: &dyn Syscall,
    root: &Root,
    path: &str,
    src: &str,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) {
    let t = target(root, path).unwrap_or_else(|e| fail(&format!("open mount point {path}"), e));
    sc.mount(src, &t.proc_path, fstype, flags, data)
        .unwrap_or_else(|e| fail(&format!("mount {fstype} on {path}"), e));
}

fn bind_at(sc: &dyn Syscall, root: &Root, path: &str, src: &Path, flags: MsFlags) {
    let t = target(root, path).unwrap_or_else(|e| fail(&format!("open mount point {path}"), e));
    sc.mount(
        &src.to_string_lossy(),
        &t.proc_path,
        "",
        MsFlags::MS_BIND | flags,
        "",
    )
    .unwrap_or_else(|e| fail(&format!("bind {} on {path}", src.display()), e));
}

/// Creates a stub mount point in-root unless something is there already.
fn stub(root: &Root, path: &str, dir: bool) {
    let Some(inp) = clean(Path::new(path)) else {
        return;
    };
    let Some((parent, name)) = inp.split() else {
        return;
    };
    let pfd = root
        .mkdir_all(&parent)
        .unwrap_or_else(|e| fail(&format!("create {path}"), e));
    match sys::lstatat(pfd.as_fd(), name) {
        Ok(Some(_)) => {}
        Ok(None) => {
            let r = if dir {
                sys::mkdirat(pfd.as_fd(), name, 0o755)
            } else {
                sys::openat(
                    pfd.as_fd(),
                    name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                    0o644,
                )
                .map(drop)
            };
            r.unwrap_or_else(|e| fail(&format!("create {path}"), e));
        }
        Err(e) => fail(&format!("stat {path}"), e),
    }
}

fn mount_rootfs(sc: &dyn Syscall, spec: &Spec, rootless: bool) -> PathBuf {
    match &spec.rootfs {
        Rootfs::Overlay {
            base,
            lower,
            upper,
            work,
            target,
        } => {
            std::env::set_current_dir(base)
                .unwrap_or_else(|e| fail(&format!("enter {}", base.display()), e));
            // redirect_dir, metacopy and index off: the upper dir must hold every change as a
            // whole file or directory, which is what the overlay differ reads (overlayfs.rst).
            // In a user namespace overlay keeps its markers in user.overlay.* xattrs, and
            // refuses to follow redirects ("off" means "follow" on most kernels).
            let opts = format!(
                "lowerdir={},upperdir={},workdir={},index=off,metacopy=off,{}",
                lower.join(":"),
                upper.display(),
                work.display(),
                if rootless {
                    "redirect_dir=nofollow,userxattr"
                } else {
                    "redirect_dir=off"
                }
            );
            sc.mount(
                "overlay",
                target.as_os_str(),
                "overlay",
                MsFlags::empty(),
                &opts,
            )
            .unwrap_or_else(|e| fail("mount the overlay root filesystem", e));
            target.clone()
        }
        Rootfs::Dir(dir) => {
            sc.mount(
                &dir.to_string_lossy(),
                dir.as_os_str(),
                "",
                MsFlags::MS_BIND | MsFlags::MS_REC,
                "",
            )
            .unwrap_or_else(|e| fail("bind the root filesystem", e));
            dir.clone()
        }
    }
}

fn setup_dev(sc: &dyn Syscall, root: &Root, sec: &crate::runtime::Security) {
    mount_at(
        sc,
        root,
        "/dev",
        "tmpfs",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        "mode=755,size=65536k",
    );
    let dev = root
        .open_dir(&clean(Path::new("/dev")).expect("clean"))
        .unwrap_or_else(|e| fail("open /dev", e));
    let dfd = dev.as_fd();
    for d in DEVICES {
        if let Err(e) = sys::openat(
            dfd,
            OsStr::new(d),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o666,
        ) {
            fail(&format!("create /dev/{d}"), e);
        }
        bind_at(
            sc,
            root,
            &format!("/dev/{d}"),
            &Path::new("/dev").join(d),
            MsFlags::empty(),
        );
    }
    for (d, mode) in [
        ("pts", 0o755),
        ("shm", 0o1777),
        ("mqueue", 0o755),
        ("pipes", 0o755),
    ] {
        sys::mkdirat(dfd, OsStr::new(d), mode)
            .unwrap_or_else(|e| fail(&format!("mkdir /dev/{d}"), e));
    }
    mount_at(
        sc,
        root,
        "/dev/pts",
        "devpts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    );
    mount_at(
        sc,
        root,
        "/dev/shm",
        "shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "mode=1777,size=65536k",
    );
    mount_at(
        sc,
        root,
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "",
    );
    for (name, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        sys::symlinkat(OsStr::new(to), dfd, OsStr::new(name))
            .unwrap_or_else(|e| fail(&format!("symlink /dev/{name}"), e));
    }
    if sec.privileged {
        host_devices(sc, root, Path::new("/dev"), "/dev");
    }
    for d in &sec.devices {
        make_node(sc, root, &d.container, d.kind, d.major, d.minor, 0o666);
    }
}

/// Creates device node `path` in-root (its parents too) unless something is there.
fn make_node(
    sc: &dyn Syscall,
    root: &Root,
    path: &str,
    kind: char,
    major: u32,
    minor: u32,
    perm: u32,
) {
    let Some(inp) = clean(Path::new(path)) else {
        fail(&format!("device {path}"), "path climbs out of root");
    };
    let Some((parent, name)) = inp.split() else {
        fail(&format!("device {path}"), "not a file path");
    };
    let pfd = root
        .mkdir_all(&parent)
        .unwrap_or_else(|e| fail(&format!("create the parent of {path}"), e));
    if let Ok(Some(_)) = sys::lstatat(pfd.as_fd(), name) {
        return;
    }
    let fmt = if kind == 'b' {
        libc::S_IFBLK
    } else {
        libc::S_IFCHR
    };
    sc.mknodat(
        pfd.as_fd(),
        name,
        fmt | (perm & 0o7777),
        sys::makedev(major, minor),
    )
    .unwrap_or_else(|e| fail(&format!("create device {path}"), e));
}

/// `--privileged`: every host device under `host` (as Docker: not pts, shm, mqueue or fd),
/// made at the same path in the container.
fn host_devices(sc: &dyn Syscall, root: &Root, host: &Path, inside: &str) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(rd) = std::fs::read_dir(host) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = e.metadata() else { continue };
        let path = format!("{inside}/{name}");
        let ft = meta.file_type();
        if ft.is_dir() {
            if !matches!(
                name.as_str(),
                "pts" | "shm" | "mqueue" | "fd" | ".lxc" | ".udev"
            ) {
                host_devices(sc, root, &e.path(), &path);
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_block_device() { 'b' } else { 'c' };
            let rdev = meta.rdev();
            make_node(
                sc,
                root,
                &path,
                kind,
                libc::major(rdev),
                libc::minor(rdev),
                meta.mode(),
            );
        }
    }
}

pub(super) fn mask_proc(sc: &dyn Syscall) {
    for m in MASKED {
        let path = Path::new(m);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let _ = sc.mount(
                    "tmpfs",
                    path.as_os_str(),
                    "tmpfs",
                    MsFlags::MS_RDONLY,
                    "size=0k",
                );
            }
            Ok(_) => {
                let _ = sc.mount("/dev/null", path.as_os_str(), "", MsFlags::MS_BIND, "");
            }
            Err(_) => {}
        }
    }
    for r in READONLY {
        let path = OsStr::new(r);
        if Path::new(r).exists()
            && sc
                .mount(r, path, "", MsFlags::MS_BIND | MsFlags::MS_REC, "")
                .is_ok()
        {
            let _ = sc.mount(
                r,
                path,
                "",
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                "",
            );
        }
    }
}

/// Mounts the container's root filesystem and everything in it, before pivot_root: the rootfs,
/// the stubs for missing mount points, /proc, /sys, /dev, the /etc files, the RUN mounts and
/// /dev/pipes files. Returns the root's path and the argv to exec (a `-c` script too long for
/// one argument is moved into /dev/pipes).
pub(super) fn prepare_root(
    sc: &dyn Syscall,
    spec: &Spec,
    rootless: bool,
) -> (PathBuf, Vec<String>) {
    let rootfs = mount_rootfs(sc, spec, rootless);
    let root = Root::open(&rootfs).unwrap_or_else(|e| fail("open the root filesystem", e));
    for (path, dir) in &spec.stubs {
        stub(&root, path, *dir);
    }
    mount_at(
        sc,
        &root,
        "/proc",
        "proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "",
    );
    let mut sys_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !spec.security.privileged {
        sys_flags |= MsFlags::MS_RDONLY;
    }
    if rootless && spec.net == crate::runtime::Net::Host {
        // sysfs can only be mounted by the owner of the network namespace; on the host's
        // network (RUN steps) a rootless container binds the host's /sys, read-only.
        bind_at(sc, &root, "/sys", Path::new("/sys"), MsFlags::MS_REC);
        let t = target(&root, "/sys").unwrap_or_else(|e| fail("open mount point /sys", e));
        let _ = sc.mount(
            "",
            &t.proc_path,
            "",
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            "",
        );
    } else {
        mount_at(sc, &root, "/sys", "sysfs", "sysfs", sys_flags, "");
    }
    setup_dev(sc, &root, &spec.security);
    for (path, host) in &spec.files {
        bind_at(sc, &root, path, host, MsFlags::empty());
    }
    for m in &spec.mounts {
        match m {
            crate::runtime::ExtraMount::Tmpfs { target, options } => mount_at(
                sc,
                &root,
                target,
                "tmpfs",
                "tmpfs",
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                options,
            ),
            crate::runtime::ExtraMount::Bind { target, source } => {
                bind_at(sc, &root, target, source, MsFlags::empty())
            }
            crate::runtime::ExtraMount::ReadOnly { target, source } => {
                bind_at(sc, &root, target, source, MsFlags::empty());
                let t = self::target(&root, target)
                    .unwrap_or_else(|e| fail(&format!("open mount point {target}"), e));
                sc.mount(
                    "",
                    &t.proc_path,
                    "",
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    "",
                )
                .unwrap_or_else(|e| fail(&format!("make {target} read-only"), e));
            }
        }
    }
    // A `#!` heredoc is a file the shell runs; so is a `SHELL -c SCRIPT` whose script is longer than
    // the kernel takes as one argument (MAX_ARG_STRLEN, 128 KiB): the shell reads it from
    // /dev/pipes instead of failing with "Argument list too long".
    if let Some((name, body)) = &spec.script {
        write_pipe_file(&root, name, body);
    }
    let argv: Vec<String> = match spec.argv.iter().position(|a| a.len() >= MAX_ARG_STRLEN) {
        Some(i) if i >= 1 && spec.argv[i - 1] == "-c" => {
            write_pipe_file(&root, "command", &spec.argv[i]);
            let mut v: Vec<String> = spec.argv[..i - 1].to_vec();
            v.push("/dev/pipes/command".into());
            v.extend(spec.argv[i + 1..].iter().cloned());
            v
        }
        _ => spec.argv.clone(),
    };
    drop(root);
    (rootfs, argv)
}

/// The kernel's limit on one argument or environment string (linux/binfmts.h).
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// Writes an executable file `name` into the container's /dev/pipes tmpfs.
fn write_pipe_file(root: &Root, name: &str, content: &str) {
    let dev = root
        .open_dir(&clean(Path::new("/dev/pipes")).expect("clean"))
        .unwrap_or_else(|e| fail("open /dev/pipes", e));
    let fd = sys::openat(
        dev.as_fd(),
        OsStr::new(name),
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o755,
    )
    .unwrap_or_else(|e| fail(&format!("write /dev/pipes/{name}"), e));
    std::fs::File::from(fd)
        .write_all(content.as_bytes())
        .unwrap_or_else(|e| fail(&format!("write /dev/pipes/{name}"), e));
}

#[cfg(test)]
mod tests;
