//! The system calls kiln makes that std does not: through nix where it has them, rustix for
//! extended attributes, and raw `libc` only for what neither offers (in `proc.rs`: capset,
//! seccomp, bpf, close_range, the pre-exec descriptor shuffle). Each function is safe to call
//! with any argument.
//!
//! The `*at` family is used throughout so that paths inside a container filesystem are always
//! resolved relative to a directory fd that `rootfs` opened in-root, never by a host path.

pub mod proc;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

fn mode(m: u32) -> Mode {
    Mode::from_bits_truncate(m as libc::mode_t)
}

/// openat2(2) with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: `path` is resolved as if `root`
/// were `/` (absolute symlinks and `..` cannot leave it). Always O_CLOEXEC.
pub fn openat2_in_root(
    root: BorrowedFd<'_>,
    path: &OsStr,
    flags: libc::c_int,
    mode_bits: u32,
) -> io::Result<OwnedFd> {
    use nix::fcntl::{OpenHow, ResolveFlag};
    let path = if path.is_empty() {
        OsStr::new(".")
    } else {
        path
    };
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_CLOEXEC;
    let mut how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    if flags.intersects(OFlag::O_CREAT | OFlag::O_TMPFILE) {
        how = how.mode(mode(mode_bits));
    }
    Ok(nix::fcntl::openat2(root, path, how)?)
}

/// openat(2) of a single name in `dir`; always O_CLOEXEC.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode_bits: u32,
) -> io::Result<OwnedFd> {
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_CLOEXEC;
    Ok(nix::fcntl::openat(dir, name, flags, mode(mode_bits))?)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode_bits: u32) -> io::Result<()> {
    Ok(nix::sys::stat::mkdirat(dir, name, mode(mode_bits))?)
}

/// mknodat(2); `mode` holds the file type bits (S_IFCHR, S_IFBLK...) and the permissions.
pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode_bits: u32, dev: u64) -> io::Result<()> {
    let kind = SFlag::from_bits_truncate(mode_bits & libc::S_IFMT);
    Ok(nix::sys::stat::mknodat(
        dir,
        name,
        kind,
        mode(mode_bits & 0o7777),
        dev,
    )?)
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(nix::unistd::symlinkat(target, dir, name)?)
}

/// linkat(2) without AT_SYMLINK_FOLLOW: links the entry itself, never what a symlink points at.
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> io::Result<()> {
    Ok(nix::unistd::linkat(
        old_dir,
        old,
        new_dir,
        new,
        AtFlags::empty(),
    )?)
}

/// unlinkat(2); `dir_entry` selects AT_REMOVEDIR.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, dir_entry: bool) -> io::Result<()> {
    use nix::unistd::UnlinkatFlags;
    let flags = if dir_entry {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    Ok(nix::unistd::unlinkat(dir, name, flags)?)
}

/// The `*at` flags for "this name, not what a symlink points at; an empty name is `dir`".
fn nofollow(name: &OsStr) -> AtFlags {
    if name.is_empty() {
        AtFlags::AT_SYMLINK_NOFOLLOW | AtFlags::AT_EMPTY_PATH
    } else {
        AtFlags::AT_SYMLINK_NOFOLLOW
    }
}

/// fchownat(2) with AT_SYMLINK_NOFOLLOW (an empty name means `dir` itself, via AT_EMPTY_PATH).
pub fn lchownat(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    use nix::unistd::{Gid, Uid};
    Ok(nix::unistd::fchownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nofollow(name),
    )?)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode_bits: u32) -> io::Result<()> {
    Ok(nix::sys::stat::fchmod(fd, mode(mode_bits))?)
}

/// Sets atime and mtime (seconds, nanoseconds) of `name` in `dir` without following a symlink;
/// an empty name means `dir` itself.
pub fn lutimesat(dir: BorrowedFd<'_>, name: &OsStr, secs: i64, nsecs: i64) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let ts = TimeSpec::new(secs as libc::time_t, nsecs as libc::c_long);
    if name.is_empty() {
        // The fd itself: futimens(2), which is utimensat with a NULL path.
        return Ok(nix::sys::stat::futimens(dir, &ts, &ts)?);
    }
    Ok(utimensat(
        dir,
        name,
        &ts,
        &ts,
        UtimensatFlags::NoFollowSymlink,
    )?)
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(
        fd,
        name,
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// The extended attribute names of a path (not following a symlink).
pub fn llistxattr(path: &std::path::Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    buf.truncate(n);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsStr::from_bytes(s).to_os_string())
        .collect())
}

/// One extended attribute's value (not following a symlink).
pub fn lgetxattr(path: &std::path::Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// makedev(3).
pub fn makedev(major: u32, minor: u32) -> u64 {
    nix::sys::stat::makedev(major as u64, minor as u64)
}

/// fstatat(2) without following a symlink; `None` when the name does not exist.
pub fn lstatat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether this process has an effective uid of 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// pipe2(2) with O_CLOEXEC: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// A socket bound to `[::]:port` for IPv6 only (IPV6_V6ONLY), so it can sit beside an IPv4
/// socket on the same port; a TCP one listens. What std's bind cannot do: set the option
/// before binding.
pub fn bind_ipv6_only(port: u16, udp: bool) -> io::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn6,
    };
    let kind = if udp {
        SockType::Datagram
    } else {
        SockType::Stream
    };
    let fd = socket(AddressFamily::Inet6, kind, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let addr = SockaddrIn6::from(std::net::SocketAddrV6::new(
        std::net::Ipv6Addr::UNSPECIFIED,
        port,
        0,
        0,
    ));
    bind(fd.as_raw_fd(), &addr)?;
    if !udp {
        listen(&fd, Backlog::new(128)?)?;
    }
    Ok(fd)
}

/// Whether descriptor `fd` is open in this process.
pub fn is_open(fd: libc::c_int) -> bool {
    // SAFETY: the borrow lives only for the F_GETFD call, which reads the descriptor's flags
    // and fails cleanly (EBADF) when nothing is open at `fd`.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

/// Sets close-on-exec on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// The filesystem type (statfs(2) `f_type`) of the filesystem holding `path`.
pub fn fs_type(path: &std::path::Path) -> io::Result<i64> {
    // f_type is i64 on x86_64 but narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    Ok(nix::sys::statfs::statfs(path)?.filesystem_type().0 as i64)
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (statvfs(3)).
pub fn free_space(path: &std::path::Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// `f_type` of overlayfs (linux/magic.h OVERLAYFS_SUPER_MAGIC).
pub const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

/// `statfs` type of tmpfs (linux/magic.h).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// For unit tests that need root: false (skip, saying why) when not root, unless
/// `KILN_REQUIRE_PRIVILEGED` is set, when a missing privilege fails the test as the integration
/// tests do.
#[cfg(test)]
pub fn test_has_root(why: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("KILN_REQUIRE_PRIVILEGED").is_none(),
        "KILN_REQUIRE_PRIVILEGED is set but this test is not root: {why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// Mounts overlayfs at `target` through the new mount API (fsopen, fsconfig, fsmount,
/// move_mount), each lower dir as its own `lowerdir+` (Linux 6.8), for a stack whose option
/// string does not fit mount(2)'s one page. `data` is the option string mount(2) would take;
/// relative lower dirs are resolved from the current directory, as mount(2) resolves them.
pub fn mount_overlay_lowerdir_plus(target: &OsStr, data: &str) -> io::Result<()> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for opt in data.split(',') {
        match opt.split_once('=') {
            Some(("lowerdir", dirs)) => {
                for d in dirs.split(':') {
                    fsconfig_set_string(&fs, "lowerdir+", d)?;
                }
            }
            Some((k, v)) => fsconfig_set_string(&fs, k, v)?,
            None => fsconfig_set_flag(&fs, opt)?,
        }
    }
    fsconfig_create(&fs)?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}
