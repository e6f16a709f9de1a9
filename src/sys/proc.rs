//! Process, namespace and mount syscalls for the container init helper (`runtime::init`).
//!
//! These run in the freshly spawned, single-threaded helper and in its forked child, never in the
//! multithreaded kiln process (never fork there: see docs/ARCHITECTURE.md "System calls"). Each wrapper is one syscall.

use super::{cstr, cvt};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// mount(2). `source`, `fstype` and `data` may be empty (passed as NULL).
pub fn mount(
    source: &str,
    target: &OsStr,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let opt = |s: &str| -> io::Result<Option<CString>> {
        if s.is_empty() {
            Ok(None)
        } else {
            cstr(OsStr::new(s)).map(Some)
        }
    };
    let (src, ty, dat) = (opt(source)?, opt(fstype)?, opt(data)?);
    let tgt = cstr(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a valid NUL-terminated string that outlives the call.
    cvt(unsafe { libc::mount(ptr(&src), tgt.as_ptr(), ptr(&ty), flags, ptr(&dat).cast()) })
        .map(drop)
}

/// umount2(2).
pub fn umount2(target: &OsStr, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C string for the duration of the call.
    cvt(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
}

/// unshare(2).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with integer flags.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

/// pivot_root(2) (no libc wrapper).
pub fn pivot_root(new_root: &OsStr, put_old: &OsStr) -> io::Result<()> {
    let n = cstr(new_root)?;
    let o = cstr(put_old)?;
    // SAFETY: valid C strings for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) };
    cvt(r as libc::c_int).map(drop)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// The result of fork(2).
pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// fork(2).
///
/// # Safety
/// The caller must be single-threaded (the init helper is), so the child inherits no lock held by
/// another thread.
pub unsafe fn fork() -> io::Result<Fork> {
    // SAFETY: the caller guarantees a single-threaded process.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// waitpid(2) for one child, retried on EINTR; returns the raw status.
pub fn waitpid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is valid writable memory.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// kill(2).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// prctl(2) with integer arguments.
pub fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options kiln uses take integer arguments only.
    cvt(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

pub fn setgroups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`.
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) }).map(drop)
}

pub fn setresgid(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

pub fn setresuid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// Sets the effective, permitted and inheritable capability sets to `caps` (a bit mask over
/// capability numbers) with capset(2), version 3 (two 32-bit words).
pub fn capset(caps: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let word = |w: u64| Data {
        effective: w as u32,
        permitted: w as u32,
        inheritable: w as u32,
    };
    let d = [word(caps & 0xffff_ffff), word(caps >> 32)];
    // SAFETY: `h` and `d` are the header and the two data words capset(2) v3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    cvt(r as libc::c_int).map(drop)
}

/// Brings the loopback interface up (SIOCSIFFLAGS on "lo") in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the fd is closed below.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: `req` is a valid ifreq for the duration of the ioctl.
    let r = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    let res = cvt(r).map(drop);
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    res
}

/// execve(2); returns only on failure.
pub fn execve(path: &OsStr, argv: &[CString], env: &[CString]) -> io::Error {
    let p = match cstr(path) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: `p`, and the NULL-terminated arrays of valid C strings, outlive the call.
    unsafe { libc::execve(p.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// Resets a signal to its default disposition.
pub fn default_signal(sig: libc::c_int) {
    // SAFETY: installing SIG_DFL has no memory-safety preconditions.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// Ignores a signal.
pub fn ignore_signal(sig: libc::c_int) {
    // SAFETY: installing SIG_IGN has no memory-safety preconditions.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// dup2(2).
pub fn dup2(fd: BorrowedFd<'_>, to: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), to) }).map(drop)
}

/// The highest capability number the kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// setns(2): moves the calling *thread* into the namespace `fd` refers to.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// setsid(2): a new session with this process as its leader (detaches from the terminal).
pub fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall without arguments.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// A signal number from a name (`SIGTERM`, `TERM`) or a number, as Docker's STOPSIGNAL accepts.
pub fn signal_number(s: &str) -> Option<libc::c_int> {
    if let Ok(n) = s.parse::<libc::c_int>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    Some(match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return None,
    })
}

/// Blocks `sigs` in the calling thread (and the threads it creates afterwards), so a dedicated
/// thread can take them with [`wait_signal`].
pub fn block_signals(sigs: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it; pthread_sigmask reads
    // it and may write the (NULL) old set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

/// sigwait(3) for one of `sigs` (which must be blocked); returns the signal taken.
pub fn wait_signal(sigs: &[libc::c_int]) -> io::Result<libc::c_int> {
    // SAFETY: as in block_signals; `sig` is valid writable memory.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
        let mut sig: libc::c_int = 0;
        let r = libc::sigwait(&set, &mut sig);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(sig)
    }
}

/// Unblocks every signal in the calling thread (a child inherits its parent's mask across exec;
/// the runner blocks SIGINT/SIGTERM to forward them, the container must not inherit that).
pub fn unblock_all_signals() {
    // SAFETY: sigset_t is plain data initialized by sigemptyset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// A new pseudo-terminal: (master, slave).
pub fn openpty() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    // SAFETY: `m` and `s` are valid out-pointers; name, termios and winsize may be NULL.
    cvt(unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    // SAFETY: openpty returned two fresh fds nothing else owns.
    let fds = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(m),
            std::os::fd::OwnedFd::from_raw_fd(s),
        )
    };
    for fd in [&fds.0, &fds.1] {
        // SAFETY: plain fcntl on a valid fd.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(fds)
}

/// Makes the terminal on fd 0 the calling session leader's controlling terminal (TIOCSCTTY).
pub fn set_controlling_tty() -> io::Result<()> {
    // SAFETY: ioctl TIOCSCTTY takes an integer argument.
    cvt(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }).map(drop)
}

/// The window size of terminal `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0).then_some(ws)
    }
}

/// Sets the window size of terminal `fd`.
pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) {
    // SAFETY: `ws` is a valid winsize for the duration of the ioctl.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) };
}

/// Puts terminal `fd` in raw mode; returns the previous settings to restore.
pub fn make_raw(fd: BorrowedFd<'_>) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data filled by tcgetattr; cfmakeraw and tcsetattr read it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        cvt(libc::tcgetattr(fd.as_raw_fd(), &mut t))?;
        let old = t;
        libc::cfmakeraw(&mut t);
        cvt(libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t))?;
        Ok(old)
    }
}

/// Turns the echo of terminal `fd` off (a line is still read whole, and the newline typed is
/// still shown); returns the previous settings to restore. For password prompts.
pub fn echo_off(fd: BorrowedFd<'_>) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data filled by tcgetattr; tcsetattr reads it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        cvt(libc::tcgetattr(fd.as_raw_fd(), &mut t))?;
        let old = t;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        cvt(libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t))?;
        Ok(old)
    }
}

/// Restores terminal settings saved by [`make_raw`] or [`echo_off`].
pub fn restore_terminal(fd: BorrowedFd<'_>, t: &libc::termios) {
    // SAFETY: `t` is a valid termios.
    unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, t) };
}

/// A connected pair of Unix stream sockets, close-on-exec.
pub fn socketpair() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is valid writable memory for two ints.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: the kernel returned two fresh fds nothing else owns.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Sends `fd` over the Unix socket `sock` (SCM_RIGHTS), with one byte of data.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer in it refers to the live buffers above, and
    // the control message is written within `cbuf` as CMSG_FIRSTHDR/CMSG_DATA lay it out.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
        let r = libc::sendmsg(sock.as_raw_fd(), &msg, 0);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one fd sent with [`send_fd`].
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: as in send_fd; the kernel fills the buffers, and the fd read from the control
    // message is a fresh one the kernel installed for this process.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let r = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if r == 0 || cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no file descriptor was sent",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

/// Opens a new pseudo-terminal from `ptmx` (the container's /dev/ptmx): (master, slave).
pub fn open_pty_at(
    ptmx: &std::path::Path,
) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let p = cstr(ptmx.as_os_str())?;
    // SAFETY: valid C string; the fd returned is fresh.
    let m =
        cvt(unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: `m` is the fresh fd just opened.
    let master = unsafe { std::os::fd::OwnedFd::from_raw_fd(m) };
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int; TIOCGPTPEER takes open flags and returns a
    // fresh fd for the slave of this master (Linux 4.13+), without a path lookup.
    let s = unsafe {
        cvt(libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCSPTLCK,
            &mut unlock,
        ))?;
        cvt(libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?
    };
    // SAFETY: `s` is the fresh fd TIOCGPTPEER returned.
    Ok((master, unsafe { std::os::fd::OwnedFd::from_raw_fd(s) }))
}

/// getppid(2).
pub fn getppid() -> libc::pid_t {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}

/// Whether reading `fd` would not block (data or end of file), without waiting.
pub fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd; a zero timeout never blocks.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// Marks every descriptor from `lowest` up close-on-exec (close_range(2) with
/// CLOSE_RANGE_CLOEXEC, Linux 5.11), or closes them when `close` is set, so nothing the caller
/// had open reaches a container (runc does the same; CVE-2024-21626 is what a leak allows).
/// Without close_range, each open descriptor listed in /proc/self/fd is handled in turn.
pub fn close_fds_from(lowest: u32, close: bool) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let flags = if close { 0 } else { CLOSE_RANGE_CLOEXEC };
    // SAFETY: close_range only changes the descriptor table; every fd from `lowest` up is
    // either closed (no Rust object owns one there when `close` is asked: callers run before
    // they open any) or marked close-on-exec, which breaks no owner.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            lowest as libc::c_uint,
            libc::c_uint::MAX,
            flags,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= lowest as i32)
        .collect();
    for fd in fds {
        // SAFETY: as above, for one descriptor (the directory's own fd is closed already).
        unsafe {
            if close {
                libc::close(fd);
            } else {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Installs a seccomp filter on the calling thread (seccomp(2), SECCOMP_SET_MODE_FILTER). The
/// caller holds CAP_SYS_ADMIN or has set no_new_privs.
pub fn install_seccomp(prog: &[crate::runtime::seccomp::Insn]) -> io::Result<()> {
    let filter: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let len = u16::try_from(filter.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp filter too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
    // SAFETY: `fprog` points at `filter`, alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    cvt(r as libc::c_int).map(drop)
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program and attaches it to the cgroup `cg` (cgroup v2
/// device control). The program stays while the cgroup exists.
pub fn attach_device_program(
    prog: &[crate::runtime::devices::BpfInsn],
    cg: BorrowedFd<'_>,
) -> io::Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_ALLOW_MULTI: u32 = 2;
    #[repr(C)]
    #[derive(Default)]
    struct Load {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        _rest: [u64; 12],
    }
    #[repr(C)]
    #[derive(Default)]
    struct Attach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
        _rest: [u64; 4],
    }
    let license = b"Apache\0";
    let load = Load {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `load` is a bpf_attr prefix for BPF_PROG_LOAD, zero-padded; it points at `prog`
    // (repr(C) bpf_insn) and `license`, both alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const Load,
            std::mem::size_of::<Load>(),
        )
    };
    let fd = cvt(fd as libc::c_int)?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    let prog_fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let attach = Attach {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: `attach` is a zero-padded bpf_attr for BPF_PROG_ATTACH, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const Attach,
            std::mem::size_of::<Attach>(),
        )
    };
    cvt(r as libc::c_int).map(drop)
}

/// Spawns `cmd` with extra descriptors: each `(fd, n)` appears as descriptor `n` in the child
/// (close-on-exec cleared), so a helper can be handed a pipe at a fixed number. The sources are
/// first copied above every target, so no mapping overwrites a source still to be mapped.
pub fn spawn_with_fds(
    cmd: &mut std::process::Command,
    fds: &[(BorrowedFd<'_>, libc::c_int)],
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let map: Vec<(libc::c_int, libc::c_int)> =
        fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    let above = map.iter().map(|(_, n)| *n).max().unwrap_or(2) + 1;
    // SAFETY: the closure runs in the forked child before exec and calls only fcntl and dup2,
    // which are async-signal-safe; `map` was built before the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0 as libc::c_int; 8];
            if map.len() > high.len() {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            for (i, (src, _)) in map.iter().enumerate() {
                let h = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, above);
                if h < 0 {
                    return Err(io::Error::last_os_error());
                }
                high[i] = h;
            }
            for (i, (_, n)) in map.iter().enumerate() {
                // dup2 to a new number clears close-on-exec on the copy.
                if libc::dup2(high[i], *n) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}
