//! Every unsafe syscall wrapper kiln uses, each small and safe to call.
//!
//! The `*at` family is used throughout so that paths inside a container filesystem are always
//! resolved relative to a directory fd that `rootfs` opened in-root, never by a host path.

pub mod proc;

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// openat2(2) with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: `path` is resolved as if `root`
/// were `/` (absolute symlinks and `..` cannot leave it). Always O_CLOEXEC.
pub fn openat2_in_root(
    root: BorrowedFd<'_>,
    path: &OsStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let p = cstr(if path.is_empty() {
        OsStr::new(".")
    } else {
        path
    })?;
    // SAFETY: open_how is three plain integers (libc marks it non_exhaustive for growth; the
    // kernel treats zeroed trailing fields as "not set").
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `p` is a valid NUL-terminated string and `how` a properly initialized open_how that
    // outlive the call; the size passed is the size of that struct. The returned fd is new and
    // owned by nobody else.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

/// openat(2) of a single name in `dir`; always O_CLOEXEC.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let n = cstr(name)?;
    // SAFETY: `n` is a valid C string for the duration of the call; the fd returned is fresh.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid C string and fd for the duration of the call.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, dev: u64) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid C string and fd for the duration of the call.
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            n.as_ptr(),
            mode as libc::mode_t,
            dev as libc::dev_t,
        )
    })
    .map(drop)
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let n = cstr(name)?;
    // SAFETY: valid C strings and fd for the duration of the call.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) }).map(drop)
}

/// linkat(2) without AT_SYMLINK_FOLLOW: links the entry itself, never what a symlink points at.
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> io::Result<()> {
    let o = cstr(old)?;
    let n = cstr(new)?;
    // SAFETY: valid C strings and fds for the duration of the call.
    cvt(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            o.as_ptr(),
            new_dir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// unlinkat(2); `dir_entry` selects AT_REMOVEDIR.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, dir_entry: bool) -> io::Result<()> {
    let n = cstr(name)?;
    let flags = if dir_entry { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string and fd for the duration of the call.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), flags) }).map(drop)
}

/// fchownat(2) with AT_SYMLINK_NOFOLLOW (an empty name means `dir` itself, via AT_EMPTY_PATH).
pub fn lchownat(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let n = cstr(name)?;
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: valid C string and fd for the duration of the call.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), n.as_ptr(), uid, gid, flags) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// Sets atime and mtime (seconds, nanoseconds) of `name` in `dir` without following a symlink;
/// an empty name means `dir` itself.
pub fn lutimesat(dir: BorrowedFd<'_>, name: &OsStr, secs: i64, nsecs: i64) -> io::Result<()> {
    let n = cstr(name)?;
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsecs as libc::c_long,
    };
    let times = [ts, ts];
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: `times` is a valid two-element array and `n` a valid C string during the call.
    let ret = unsafe { libc::utimensat(dir.as_raw_fd(), n.as_ptr(), times.as_ptr(), flags) };
    if ret < 0 && name.is_empty() && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
    {
        // Older kernels lack AT_EMPTY_PATH for utimensat: a NULL path means the fd itself.
        // SAFETY: as above; a NULL path is documented to act on `dir`.
        return cvt(unsafe {
            libc::utimensat(dir.as_raw_fd(), std::ptr::null(), times.as_ptr(), 0)
        })
        .map(drop);
    }
    cvt(ret).map(drop)
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: `n` and `value` are valid for the given lengths during the call.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// The extended attribute names of a path (not following a symlink).
pub fn llistxattr(path: &std::path::Path) -> io::Result<Vec<std::ffi::OsString>> {
    let p = cstr(path.as_os_str())?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; `p` is a valid C string.
        let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsStr::from_bytes(s).to_os_string())
        .collect())
}

/// One extended attribute's value (not following a symlink).
pub fn lgetxattr(path: &std::path::Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let p = cstr(path.as_os_str())?;
    let n = cstr(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; `p` and `n` are valid C strings.
        let r =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) {
            buf.resize(buf.len() * 4, 0);
        } else {
            return Err(e);
        }
    }
}

/// makedev(3).
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// fstatat(2) without following a symlink; `None` when the name does not exist.
pub fn lstatat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
    let n = cstr(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid writable memory for one stat struct; `n` is a valid C string.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            n.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: fstatat succeeded, so it initialized `st`.
    Ok(Some(unsafe { st.assume_init() }))
}

/// Whether this process has an effective uid of 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// pipe2(2) with O_CLOEXEC: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is valid writable memory for two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel returned two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A socket bound to `[::]:port` for IPv6 only (IPV6_V6ONLY), so it can sit beside an IPv4
/// socket on the same port; a TCP one listens. What std's bind cannot do: set the option
/// before binding.
pub fn bind_ipv6_only(port: u16, udp: bool) -> io::Result<OwnedFd> {
    let kind = if udp {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: plain syscall; the result is checked.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET6, kind | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for (level, opt) in [
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    ] {
        // SAFETY: `one` is a c_int alive for the call, its size given.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    // SAFETY: sockaddr_in6 is plain data; zeroed is the unspecified address.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_port = port.to_be();
    // SAFETY: `addr` is a valid sockaddr_in6, its size given.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_in6 as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    })?;
    if !udp {
        // SAFETY: plain syscall on our descriptor.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    }
    Ok(fd)
}

/// Whether descriptor `fd` is open in this process.
pub fn is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Sets close-on-exec on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD on a descriptor this process owns changes only its flags.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// The filesystem type (statfs(2) `f_type`) of the filesystem holding `path`.
pub fn fs_type(path: &std::path::Path) -> io::Result<i64> {
    let p = cstr(path.as_os_str())?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is valid writable memory for one statfs struct; `p` is a valid C string.
    cvt(unsafe { libc::statfs(p.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statfs succeeded, so it initialized `st`.
    let f_type = unsafe { st.assume_init() }.f_type;
    // f_type is i64 on x86_64 but narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    Ok(f_type as i64)
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (statfs(2)).
pub fn free_space(path: &std::path::Path) -> io::Result<u64> {
    let p = cstr(path.as_os_str())?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: as in fs_type.
    cvt(unsafe { libc::statfs(p.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statfs succeeded, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_bavail as u64 * st.f_bsize as u64)
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
