//! The init helper: runs in a fresh single-threaded kiln process (`kiln __kiln-init`), reads its
//! [`Spec`](super::Spec) from descriptor 3 and reports the workload's start on descriptor 4.
//!
//! Order matters and follows runc: unshare, make every mount private (nothing propagates back to
//! the host), fork (the child is PID 1 of the new PID namespace, so the /proc it mounts is its
//! own), mount the rootfs, create missing mount points in-root, mount /proc, /sys, /dev and the
//! provided files onto in-root-resolved targets (through `/proc/self/fd/N`, so a symlink in the
//! image can never redirect a mount to the host), pivot_root, mask /proc paths, set hostname,
//! loopback, then credentials and capabilities last, and exec.
//!
//! Both processes die with their parent (PR_SET_PDEATHSIG), so killing kiln kills the build step.

use super::{
    ExecSpec, Net, Spec, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SETUP, GO, READY_FD, SPEC_FD,
};
mod mounts;

use crate::sys::{self, proc as p};
use mounts::Linux;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub(super) fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    let _ = writeln!(io::stderr(), "kiln: container setup: {what}: {e}");
    std::process::exit(EXIT_SETUP)
}

/// Dies (SIGKILL) when the parent does; exits at once if the parent is already gone (it may
/// have died before the parent-death signal was set).
fn die_with_parent() {
    let parent = nix::unistd::getppid();
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGKILL) {
        fail("set parent-death signal", e);
    }
    if nix::unistd::getppid() != parent {
        std::process::exit(EXIT_SETUP);
    }
}

/// The rest of the spec pipe after the spec: the caller's go-ahead for the exec.
struct Gate {
    fd: OwnedFd,
    /// The go-ahead, when it came with the spec.
    early: bool,
}

impl Gate {
    /// Returns once the caller says go; exits (EXIT_SETUP, quietly: the caller says why) if it
    /// closes the pipe instead.
    fn pass(self) {
        use std::io::Read;
        if self.early {
            return;
        }
        let mut b = [0u8; 1];
        match std::fs::File::from(self.fd).read(&mut b) {
            Ok(1) if b[0] == GO => {}
            _ => std::process::exit(EXIT_SETUP),
        }
    }
}

/// Reads the spec from its descriptor (up to its newline), takes the ready descriptor and the
/// gate, and closes every other one the caller left open: nothing the caller had open passes
/// this point.
fn take_spec<T: serde::de::DeserializeOwned>() -> (T, OwnedFd, Gate) {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    if !sys::is_open(SPEC_FD) || !sys::is_open(READY_FD) {
        fail(
            "read spec",
            "descriptors 3 and 4 are not open (kiln starts this helper itself)",
        );
    }
    // SAFETY: descriptors 3 and 4 are the pipes kiln's spawn placed there, open (checked above)
    // and owned by nothing else in this fresh process.
    let (spec_fd, ready) = unsafe {
        (
            OwnedFd::from_raw_fd(SPEC_FD),
            OwnedFd::from_raw_fd(READY_FD),
        )
    };
    let mut json = Vec::new();
    let mut f = std::fs::File::from(spec_fd);
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        let from = json.len();
        match f.read(&mut buf) {
            Ok(0) => fail(
                "read spec",
                "the caller closed the pipe before the spec's end",
            ),
            Ok(n) => json.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => fail("read spec", e),
        }
        if let Some(i) = json[from..].iter().position(|&b| b == b'\n') {
            break from + i;
        }
    };
    let early = json.get(end + 1) == Some(&GO);
    json.truncate(end);
    let fd = OwnedFd::from(f);
    let _ = p::close_fds_from(READY_FD as u32 + 1, true);
    sys::set_cloexec(ready.as_fd()).unwrap_or_else(|e| fail("prepare the ready pipe", e));
    sys::set_cloexec(fd.as_fd()).unwrap_or_else(|e| fail("prepare the spec pipe", e));
    let spec = serde_json::from_slice(&json).unwrap_or_else(|e| fail("parse spec", e));
    (spec, ready, Gate { fd, early })
}

/// The helper's half after the fork: tells the caller the workload's PID, then lets go of the
/// pipe so only the workload holds it until its exec.
fn report_pid(ready: OwnedFd, pid: Pid) {
    let _ = std::fs::File::from(ready).write_all(&pid.as_raw().to_ne_bytes());
}

/// Entry point of `kiln __kiln-init`; never returns.
pub fn main() -> ! {
    let (spec, ready, gate): (Spec, OwnedFd, Gate) = take_spec();
    p::unblock_all_signals();
    die_with_parent();
    for cg in &spec.cgroups {
        // "0" moves the writing process; its children are born inside.
        std::fs::write(cg.join("cgroup.procs"), "0")
            .unwrap_or_else(|e| fail(&format!("join cgroup {}", cg.display()), e));
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    match &spec.net {
        Net::Host => {}
        Net::Private => flags |= CloneFlags::CLONE_NEWNET,
        Net::Join(path) => {
            let ns = std::fs::File::open(path)
                .unwrap_or_else(|e| fail(&format!("open network namespace {}", path.display()), e));
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| fail("join the network namespace", e));
        }
    }
    if let Err(e) = nix::sched::unshare(flags) {
        fail("unshare namespaces", e);
    }
    if let Err(e) = p::mount(
        "",
        OsStr::new("/"),
        "",
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        "",
    ) {
        fail("make mounts private", e);
    }
    // The workload learns that the helper died from this pipe's end of file (its parent-death
    // signal is cleared by the credential change and set again only just before exec).
    let (alive_r, alive_w) = sys::pipe().unwrap_or_else(|e| fail("create a pipe", e));
    // SAFETY: this helper is single-threaded: it was just exec'd and starts no threads.
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail("fork", e),
        Ok(ForkResult::Child) => {
            drop(alive_w);
            // Until the credentials change, the parent-death signal holds.
            let _ = prctl::set_pdeathsig(Signal::SIGKILL);
            child(&spec, alive_r, ready, gate)
        }
        Ok(ForkResult::Parent { child: pid }) => {
            drop(gate);
            leave_groups(&spec.cgroups);
            report_pid(ready, pid);
            // Terminal signals reach the whole process group; the workload (PID 1 of its
            // namespace) ignores what it has no handler for, so the helper stays to reap it and
            // the parent-death signal takes it down if the helper is killed.
            reap_and_exit(pid)
        }
    }
}

/// A terminal of the container's own devpts (so ttyname works inside), its master sent to the
/// caller over fd 0, the slave as the three standard streams; then a session of its own with it
/// as controlling terminal, so Ctrl-C typed there signals the workload.
fn attach_tty(winsize: Option<(u16, u16)>) {
    let (master, slave) = sys::proc::open_pty_at(Path::new("/dev/ptmx"))
        .unwrap_or_else(|e| fail("open a pseudo-terminal", e));
    if let Some((rows, cols)) = winsize {
        p::set_window_size(slave.as_fd(), rows, cols);
    }
    // SAFETY: fd 0 is the socket the caller passed as stdin; it stays open for this call.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    p::send_fd(sock, master.as_fd()).unwrap_or_else(|e| fail("send the terminal", e));
    drop(master);
    nix::unistd::dup2_stdin(&slave)
        .and_then(|_| nix::unistd::dup2_stdout(&slave))
        .and_then(|_| nix::unistd::dup2_stderr(&slave))
        .unwrap_or_else(|e| fail("attach the terminal", e));
    drop(slave);
    nix::unistd::setsid().unwrap_or_else(|e| fail("setsid", e));
    p::set_controlling_tty().unwrap_or_else(|e| fail("set the controlling terminal", e));
}

/// Entry point of `kiln __kiln-exec`: joins a running container's namespaces (IPC, UTS,
/// network, PID, mount: mount last, since it changes what /proc means), forks so the command is
/// in the PID namespace, and execs it with the container's credentials. Never returns.
pub fn exec_main() -> ! {
    // An exec is never gated: its go-ahead came with the spec.
    let (spec, ready, _): (ExecSpec, OwnedFd, Gate) = take_spec();
    p::unblock_all_signals();
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGKILL) {
        fail("set parent-death signal", e);
    }
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    for cg in &spec.cgroups {
        let _ = std::fs::write(cg.join("cgroup.procs"), "0");
    }
    let fds: Vec<(OwnedFd, CloneFlags, &str)> = kinds
        .iter()
        .map(|(n, k)| {
            let f = std::fs::File::open(format!("/proc/{}/ns/{n}", spec.pid))
                .unwrap_or_else(|e| fail(&format!("open the container's {n} namespace"), e));
            (OwnedFd::from(f), *k, *n)
        })
        .collect();
    for (fd, kind, n) in &fds {
        nix::sched::setns(fd, *kind)
            .unwrap_or_else(|e| fail(&format!("join the {n} namespace"), e));
    }
    drop(fds);
    // SAFETY: this helper is single-threaded: it was just exec'd and starts no threads.
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail("fork", e),
        Ok(ForkResult::Child) => {
            let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
            std::env::set_current_dir(cwd)
                .unwrap_or_else(|e| fail(&format!("working directory {cwd}"), e));
            lock_down(&spec.security, &spec.ids, spec.no_new_privs);
            if spec.tty {
                attach_tty(spec.winsize);
            }
            // Held (close-on-exec) until the exec.
            let _ready = ready;
            exec_argv(&spec.argv, &spec.env)
        }
        Ok(ForkResult::Parent { child: pid }) => {
            leave_groups(&spec.cgroups);
            report_pid(ready, pid);
            reap_and_exit(pid)
        }
    }
}

/// The workload was born inside the container's control groups; the helper, which only waits
/// for it, moves up to kiln's own group, so they count (and limit) the container's processes only.
fn leave_groups(cgroups: &[std::path::PathBuf]) {
    for cg in cgroups {
        if let Some(up) = cg.parent() {
            let _ = std::fs::write(up.join("cgroup.procs"), "0");
        }
    }
}

/// Waits for the workload `pid` and exits with its status (128+N for signal N), ignoring the
/// terminal's SIGINT/SIGQUIT meanwhile: they reach the whole process group, and the workload
/// decides about them itself.
fn reap_and_exit(pid: Pid) -> ! {
    p::ignore_signal(Signal::SIGINT);
    p::ignore_signal(Signal::SIGQUIT);
    let code = p::wait_exit_code(pid).unwrap_or_else(|e| fail("wait", e));
    std::process::exit(code)
}

/// The capability set root keeps: all with --privileged, else the container's set.
fn caps_of(sec: &super::Security) -> u64 {
    if sec.privileged {
        u64::MAX
    } else {
        sec.caps
    }
}

/// The workload's last steps before exec, in this order: the seccomp filter, capabilities and
/// credentials, no_new_privs, and the parent-death signal again (a credential change clears it).
fn lock_down(sec: &super::Security, ids: &super::Ids, no_new_privs: bool) {
    confine(sec);
    drop_caps(ids, caps_of(sec));
    if no_new_privs {
        prctl::set_no_new_privs().unwrap_or_else(|e| fail("set no_new_privs", e));
    }
    prctl::set_pdeathsig(Signal::SIGKILL).unwrap_or_else(|e| fail("set parent-death signal", e));
}

/// Installs the container's seccomp filter. It comes before the credential change, while the
/// helper still holds CAP_SYS_ADMIN, so RUN steps (which keep setuid working, without
/// no_new_privs) are filtered too; every call made after it (setgroups, setresuid, capset,
/// prctl, execve) is one the filter allows.
fn confine(sec: &super::Security) {
    if let Some(prog) = sec.seccomp_program() {
        p::install_seccomp(&prog).unwrap_or_else(|e| fail("install the seccomp filter", e));
    }
}

fn drop_caps(ids: &super::Ids, keep: u64) {
    // Never more than kiln itself holds (a host may withhold some, e.g. CAP_SYS_RESOURCE).
    let keep = keep & ((1u64 << (p::last_cap() + 1)) - 1) & permitted_caps();
    for cap in 0..=p::last_cap() {
        if keep & (1u64 << cap) == 0 {
            p::capbset_drop(cap).unwrap_or_else(|e| fail("drop capabilities", e));
        }
    }
    let groups: Vec<Gid> = ids.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    if let Err(e) = nix::unistd::setgroups(&groups) {
        // A rootless namespace that maps root only has setgroups denied: nothing to change.
        let denied =
            std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|t| t.trim() == "deny");
        if !denied {
            fail("setgroups", e);
        }
    }
    let (g, u) = (Gid::from_raw(ids.gid), Uid::from_raw(ids.uid));
    let why = |e: nix::Error| {
        crate::rootless::unmapped(&e.into(), ids.uid, ids.gid).unwrap_or_else(|| e.to_string())
    };
    nix::unistd::setresgid(g, g, g).unwrap_or_else(|e| fail("setgid", why(e)));
    nix::unistd::setresuid(u, u, u).unwrap_or_else(|e| fail("setuid", why(e)));
    // A non-root uid lost its capabilities in setresuid; root keeps exactly the default set.
    let caps = if ids.uid == 0 { keep } else { 0 };
    p::capset(caps).unwrap_or_else(|e| fail("set capabilities", e));
}

/// This process's permitted capabilities (`CapPrm` in /proc/self/status).
fn permitted_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapPrm:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// Finds `cmd` on the container's PATH, as execvp does (but with the workload's PATH).
fn lookup(cmd: &str, env: &[String]) -> Result<PathBuf, i32> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = env_value(env, "PATH").unwrap_or(crate::plan::DEFAULT_PATH);
    let mut denied = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(cmd);
        if let Ok(meta) = std::fs::metadata(&cand) {
            if meta.is_file() {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o111 != 0 {
                    return Ok(cand);
                }
                denied = Some(cand);
            }
        }
    }
    match denied {
        Some(p) => Ok(p),
        None => {
            let _ = writeln!(
                io::stderr(),
                "kiln: exec: {cmd:?}: executable file not found in $PATH"
            );
            Err(EXIT_NOT_FOUND)
        }
    }
}

/// The workload's side: `ready` stays open (close-on-exec) until the exec tells the caller
/// that setup is done.
fn child(spec: &Spec, helper_alive: OwnedFd, ready: OwnedFd, gate: Gate) -> ! {
    let (rootfs, argv) = mounts::prepare_root(&Linux, spec, crate::rootless::active());

    std::env::set_current_dir(&rootfs).unwrap_or_else(|e| fail("enter the root filesystem", e));
    nix::unistd::pivot_root(".", ".").unwrap_or_else(|e| fail("pivot_root", e));
    nix::mount::umount2(".", MntFlags::MNT_DETACH)
        .unwrap_or_else(|e| fail("detach the old root", e));
    std::env::set_current_dir("/").unwrap_or_else(|e| fail("chdir /", e));
    if spec.mask_proc && !spec.security.privileged {
        mounts::mask_proc(&Linux);
    }
    nix::unistd::sethostname(&spec.hostname).unwrap_or_else(|e| fail("set hostname", e));
    if spec.net != Net::Host {
        p::loopback_up().unwrap_or_else(|e| fail("bring loopback up", e));
    }

    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    if std::env::set_current_dir(cwd).is_err() {
        // BuildKit and Docker create a missing working directory.
        let _ = std::fs::create_dir_all(cwd);
        std::env::set_current_dir(cwd)
            .unwrap_or_else(|e| fail(&format!("working directory {cwd}"), e));
    }
    // Everything of the container's own is ready; what the caller sets up from outside (a
    // bridge network) may still be under way.
    gate.pass();
    lock_down(&spec.security, &spec.ids, spec.no_new_privs);
    // Then make sure the helper did not die before the parent-death signal was set again (its
    // end of the pipe closed).
    if p::readable_now(helper_alive.as_fd()) {
        std::process::exit(EXIT_SETUP);
    }
    drop(helper_alive);
    if spec.tty {
        attach_tty(spec.winsize);
    }
    let _ready = if spec.init { reaper(ready) } else { ready };
    exec_argv(&argv, &spec.env)
}

/// `--init`: stays PID 1, runs the workload as its child, forwards the signals a container is
/// sent to it, reaps every orphan that ends up here, and exits with the workload's status (as
/// tini and docker-init do). Returns only in the workload's process, which then execs, with the
/// ready pipe (its end of file tells the caller the workload exec'd); PID 1 lets go of it.
fn reaper(ready: OwnedFd) -> OwnedFd {
    use nix::sys::signal::SigSet;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let forward = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ];
    let mut set = SigSet::empty();
    for s in forward {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set.thread_block()
        .unwrap_or_else(|e| fail("block signals for the init", e));
    // SAFETY: this process is single-threaded (a fork of the single-threaded helper).
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail("fork the workload", e),
        Ok(ForkResult::Child) => {
            let _ = SigSet::empty().thread_set_mask();
            ready
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ready);
            loop {
                let Ok(sig) = set.wait() else { continue };
                if sig != Signal::SIGCHLD {
                    let _ = nix::sys::signal::kill(child, sig);
                    continue;
                }
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                            std::process::exit(code)
                        }
                        Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                            std::process::exit(128 + sig as i32)
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            }
        }
    }
}

/// Resets the signals a workload should see at their defaults and execs `argv` with `env`,
/// finding the command on the workload's PATH; exits 127/126 as Docker when it cannot.
fn exec_argv(argv: &[String], env: &[String]) -> ! {
    for s in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGPIPE,
    ] {
        p::default_signal(s);
    }
    let Some(cmd) = argv.first() else {
        fail("exec", "no command given");
    };
    let path = match lookup(cmd, env) {
        Ok(p) => p,
        Err(code) => std::process::exit(code),
    };
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|e| fail("argument", e)))
        .collect();
    let cenv: Vec<CString> = env
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|e| fail("environment", e)))
        .collect();
    // No descriptor past the standard three survives the exec (runc closes them too).
    if let Err(e) = p::close_fds_from(3, false) {
        fail("close inherited descriptors", e);
    }
    let err = p::execve(path.as_os_str(), &cargs, &cenv);
    let code = match err.raw_os_error() {
        Some(libc::ENOENT) => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXEC,
    };
    let _ = writeln!(
        io::stderr(),
        "kiln: exec {}: {err}",
        String::from_utf8_lossy(path.as_os_str().as_bytes())
    );
    std::process::exit(code)
}
