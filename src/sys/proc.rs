//! Process, namespace, signal, terminal and descriptor calls: for the container init helper
//! (`runtime::init`, a fresh single-threaded process: never fork inside the multithreaded kiln
//! process, see docs/ARCHITECTURE.md "System calls") and for the runner around it.
//!
//! Most calls are nix's, used directly by their callers; what is here adds kiln's semantics to
//! them (retries, defaults, the descriptor passing protocol) or is a call neither nix nor rustix
//! has (capset, PR_CAPBSET_DROP, SIOCSIFFLAGS, TIOCSPTLCK/TIOCGPTPEER, close_range, seccomp,
//! bpf, the pre-exec descriptor shuffle), each `unsafe` block with its reason.

use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::Termios;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2); an empty `source`, `fstype` or `data` is passed as NULL.
pub fn mount(
    source: &str,
    target: &OsStr,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> io::Result<()> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(nix::mount::mount(
        opt(source).as_deref(),
        target,
        opt(fstype).as_deref(),
        flags,
        opt(data).as_deref(),
    )?)
}

/// waitpid(2) for one child, retried on EINTR: its exit code, or 128+N when signal N killed it.
pub fn wait_exit_code(pid: nix::unistd::Pid) -> io::Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// kill(2) with a signal number (as [`signal_number`] gives). Raw, because nix's `Signal` has
/// no real-time signals, which STOPSIGNAL and `kill -s` accept (SIGRTMIN+3 is 37).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Removes capability `cap` from the bounding set (prctl PR_CAPBSET_DROP).
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes one integer argument; the unused ones are zero.
    cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }).map(drop)
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
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: `req` is a valid ifreq for the duration of the ioctl on our socket.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// execve(2) of `path` with `argv` and `env`; returns only on failure.
pub fn execve(path: &OsStr, argv: &[CString], env: &[CString]) -> io::Error {
    let path = match CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path)) {
        Ok(p) => p,
        Err(_) => return io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    };
    match nix::unistd::execve(&path, argv, env) {
        Err(e) => e.into(),
        Ok(never) => match never {},
    }
}

/// Resets a signal to its default disposition.
pub fn default_signal(sig: Signal) {
    // SAFETY: SIG_DFL is not a handler function, so no code of ours can run in signal context.
    let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
}

/// Ignores a signal.
pub fn ignore_signal(sig: Signal) {
    // SAFETY: SIG_IGN is not a handler function, so no code of ours can run in signal context.
    let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
}

/// The highest capability number the kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
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

fn sigset(sigs: &[libc::c_int]) -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in sigs {
        set.add(Signal::try_from(*s)?);
    }
    Ok(set)
}

/// Blocks `sigs` in the calling thread (and the threads it creates afterwards), so a dedicated
/// thread can take them with [`wait_signal`].
pub fn block_signals(sigs: &[libc::c_int]) -> io::Result<()> {
    Ok(sigset(sigs)?.thread_block()?)
}

/// Whether `sig` is blocked in the calling thread (someone already takes it with
/// [`wait_signal`]).
pub fn is_blocked(sig: libc::c_int) -> bool {
    SigSet::thread_get_mask()
        .is_ok_and(|m| nix::sys::signal::Signal::try_from(sig).is_ok_and(|s| m.contains(s)))
}

/// sigwait(3) for one of `sigs` (which must be blocked); returns the signal taken.
pub fn wait_signal(sigs: &[libc::c_int]) -> io::Result<libc::c_int> {
    Ok(sigset(sigs)?.wait()? as libc::c_int)
}

/// Ends the process by SIGPIPE (status 141 to a shell), as a write to a closed pipe does when
/// the signal is not ignored.
pub fn die_of_sigpipe() -> ! {
    // SAFETY: restoring a signal's default action and raising it touch no memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}

/// Unblocks every signal in the calling thread (a child inherits its parent's mask across exec;
/// the runner blocks SIGINT/SIGTERM to forward them, the container must not inherit that).
pub fn unblock_all_signals() {
    let _ = SigSet::empty().thread_set_mask();
}

/// Makes the terminal on fd 0 the calling session leader's controlling terminal (TIOCSCTTY).
pub fn set_controlling_tty() -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal it from another session).
    cvt(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }).map(drop)
}

/// The window size (rows, columns) of terminal `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    rustix::termios::tcgetwinsize(fd)
        .ok()
        .map(|w| (w.ws_row, w.ws_col))
}

/// Sets the window size (rows, columns) of terminal `fd`.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) {
    let ws = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(fd, ws);
}

/// Puts terminal `fd` in raw mode; returns the previous settings to restore.
pub fn make_raw(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let old = tcgetattr(fd)?;
    let mut t = old.clone();
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t)?;
    Ok(old)
}

/// Turns the echo of terminal `fd` off (a line is still read whole, and the newline typed is
/// still shown); returns the previous settings to restore. For password prompts.
pub fn echo_off(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let old = tcgetattr(fd)?;
    let mut t = old.clone();
    t.local_flags.remove(LocalFlags::ECHO);
    t.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(fd, SetArg::TCSANOW, &t)?;
    Ok(old)
}

/// Restores terminal settings saved by [`make_raw`] or [`echo_off`].
pub fn restore_terminal(fd: BorrowedFd<'_>, t: &Termios) {
    let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, t);
}

/// A connected pair of Unix stream sockets, close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends `fd` over the Unix socket `sock` (SCM_RIGHTS), with one byte of data.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fds = [fd.as_raw_fd()];
    let iov = [io::IoSlice::new(&[0u8])];
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`] (close-on-exec).
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel installed this descriptor for us with the message; nothing
                // else in this process knows it.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "no file descriptor was sent",
    ))
}

/// Opens a new pseudo-terminal from `ptmx` (the container's /dev/ptmx): (master, slave).
pub fn open_pty_at(ptmx: &std::path::Path) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let master = nix::fcntl::open(
        ptmx,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int, valid for the call; TIOCGPTPEER takes open
    // flags and returns a fresh descriptor for this master's slave (Linux 4.13+), without a
    // path lookup.
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
    // SAFETY: `s` is the fresh descriptor TIOCGPTPEER returned.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// Whether reading `fd` would not block (data or end of file), without waiting.
pub fn readable_now(fd: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0)
        && p[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn kill_sends_real_time_signals_too() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let rt = signal_number("40").unwrap();
        kill(child.id() as libc::pid_t, rt).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(40));
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("65"), None);
    }
}
