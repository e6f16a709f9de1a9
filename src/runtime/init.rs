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
    ExecSpec, Net, Rootfs, Spec, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SETUP, READY_FD, SPEC_FD,
};
use crate::rootfs::{clean, Root};
use crate::sys::{self, proc as p};
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    let _ = writeln!(io::stderr(), "kiln: container setup: {what}: {e}");
    std::process::exit(EXIT_SETUP)
}

/// Dies (SIGKILL) when the parent does; exits at once if the parent is already gone (it may
/// have died before the parent-death signal was set).
fn die_with_parent() {
    let parent = p::getppid();
    if let Err(e) = p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) {
        fail("set parent-death signal", e);
    }
    if p::getppid() != parent {
        std::process::exit(EXIT_SETUP);
    }
}

/// Reads the spec from its descriptor (then closed), takes the ready descriptor, and closes
/// every other one the caller left open: nothing the caller had open passes this point.
fn take_spec<T: serde::de::DeserializeOwned>() -> (T, OwnedFd) {
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
    std::fs::File::from(spec_fd)
        .read_to_end(&mut json)
        .unwrap_or_else(|e| fail("read spec", e));
    let _ = p::close_fds_from(READY_FD as u32 + 1, true);
    sys::set_cloexec(ready.as_fd()).unwrap_or_else(|e| fail("prepare the ready pipe", e));
    let spec = serde_json::from_slice(&json).unwrap_or_else(|e| fail("parse spec", e));
    (spec, ready)
}

/// The helper's half after the fork: tells the caller the workload's PID, then lets go of the
/// pipe so only the workload holds it until its exec.
fn report_pid(ready: OwnedFd, pid: libc::pid_t) {
    let _ = std::fs::File::from(ready).write_all(&pid.to_ne_bytes());
}

/// Entry point of `kiln __kiln-init`; never returns.
pub fn main() -> ! {
    let (spec, ready): (Spec, OwnedFd) = take_spec();
    p::unblock_all_signals();
    die_with_parent();
    for cg in &spec.cgroups {
        // "0" moves the writing process; its children are born inside.
        std::fs::write(cg.join("cgroup.procs"), "0")
            .unwrap_or_else(|e| fail(&format!("join cgroup {}", cg.display()), e));
    }
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP;
    if spec.net != Net::Host {
        flags |= libc::CLONE_NEWNET;
    }
    if let Err(e) = p::unshare(flags) {
        fail("unshare namespaces", e);
    }
    if let Err(e) = p::mount("", OsStr::new("/"), "", libc::MS_REC | libc::MS_PRIVATE, "") {
        fail("make mounts private", e);
    }
    // The workload learns that the helper died from this pipe's end of file (its parent-death
    // signal is cleared by the credential change and set again only just before exec).
    let (alive_r, alive_w) = sys::pipe().unwrap_or_else(|e| fail("create a pipe", e));
    // SAFETY: this helper is single-threaded: it was just exec'd and starts no threads.
    match unsafe { p::fork() } {
        Err(e) => fail("fork", e),
        Ok(p::Fork::Child) => {
            drop(alive_w);
            // Until the credentials change, the parent-death signal holds.
            let _ = p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            child(&spec, alive_r, ready)
        }
        Ok(p::Fork::Parent(pid)) => {
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
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        p::set_window_size(slave.as_fd(), &ws);
    }
    // SAFETY: fd 0 is the socket the caller passed as stdin; it stays open for this call.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    p::send_fd(sock, master.as_fd()).unwrap_or_else(|e| fail("send the terminal", e));
    drop(master);
    for n in 0..3 {
        p::dup2(slave.as_fd(), n).unwrap_or_else(|e| fail("attach the terminal", e));
    }
    drop(slave);
    p::setsid().unwrap_or_else(|e| fail("setsid", e));
    p::set_controlling_tty().unwrap_or_else(|e| fail("set the controlling terminal", e));
}

/// Entry point of `kiln __kiln-exec`: joins a running container's namespaces (IPC, UTS,
/// network, PID, mount: mount last, since it changes what /proc means), forks so the command is
/// in the PID namespace, and execs it with the container's credentials. Never returns.
pub fn exec_main() -> ! {
    let (spec, ready): (ExecSpec, OwnedFd) = take_spec();
    p::unblock_all_signals();
    if let Err(e) = p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) {
        fail("set parent-death signal", e);
    }
    let kinds = [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
    ];
    for cg in &spec.cgroups {
        let _ = std::fs::write(cg.join("cgroup.procs"), "0");
    }
    let fds: Vec<(OwnedFd, libc::c_int, &str)> = kinds
        .iter()
        .map(|(n, k)| {
            let f = std::fs::File::open(format!("/proc/{}/ns/{n}", spec.pid))
                .unwrap_or_else(|e| fail(&format!("open the container's {n} namespace"), e));
            (OwnedFd::from(f), *k, *n)
        })
        .collect();
    for (fd, kind, n) in &fds {
        p::setns(fd.as_fd(), *kind).unwrap_or_else(|e| fail(&format!("join the {n} namespace"), e));
    }
    drop(fds);
    // SAFETY: this helper is single-threaded: it was just exec'd and starts no threads.
    match unsafe { p::fork() } {
        Err(e) => fail("fork", e),
        Ok(p::Fork::Child) => {
            let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
            std::env::set_current_dir(cwd)
                .unwrap_or_else(|e| fail(&format!("working directory {cwd}"), e));
            confine(&spec.security);
            drop_caps(&spec.ids, caps_of(&spec.security));
            if spec.no_new_privs {
                p::prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
                    .unwrap_or_else(|e| fail("set no_new_privs", e));
            }
            p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
                .unwrap_or_else(|e| fail("set parent-death signal", e));
            if spec.tty {
                attach_tty(spec.winsize);
            }
            // Held (close-on-exec) until the exec.
            let _ready = ready;
            exec_argv(&spec.argv, &spec.env)
        }
        Ok(p::Fork::Parent(pid)) => {
            report_pid(ready, pid);
            reap_and_exit(pid)
        }
    }
}

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

fn mount_at(root: &Root, path: &str, src: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let t = target(root, path).unwrap_or_else(|e| fail(&format!("open mount point {path}"), e));
    p::mount(src, &t.proc_path, fstype, flags, data)
        .unwrap_or_else(|e| fail(&format!("mount {fstype} on {path}"), e));
}

fn bind_at(root: &Root, path: &str, src: &Path, flags: libc::c_ulong) {
    let t = target(root, path).unwrap_or_else(|e| fail(&format!("open mount point {path}"), e));
    p::mount(
        &src.to_string_lossy(),
        &t.proc_path,
        "",
        libc::MS_BIND | flags,
        "",
    )
    .unwrap_or_else(|e| fail(&format!("bind {} on {path}", src.display()), e));
}

/// Waits for the workload `pid` and exits with its status (128+N for signal N), ignoring the
/// terminal's SIGINT/SIGQUIT meanwhile: they reach the whole process group, and the workload
/// decides about them itself.
fn reap_and_exit(pid: libc::pid_t) -> ! {
    p::ignore_signal(libc::SIGINT);
    p::ignore_signal(libc::SIGQUIT);
    let status = p::waitpid(pid).unwrap_or_else(|e| fail("wait", e));
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_SETUP
    };
    std::process::exit(code)
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

fn mount_rootfs(spec: &Spec) -> PathBuf {
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
            let opts = format!(
                "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off",
                lower.join(":"),
                upper.display(),
                work.display()
            );
            p::mount("overlay", target.as_os_str(), "overlay", 0, &opts)
                .unwrap_or_else(|e| fail("mount the overlay root filesystem", e));
            target.clone()
        }
        Rootfs::Dir(dir) => {
            p::mount(
                &dir.to_string_lossy(),
                dir.as_os_str(),
                "",
                libc::MS_BIND | libc::MS_REC,
                "",
            )
            .unwrap_or_else(|e| fail("bind the root filesystem", e));
            dir.clone()
        }
    }
}

fn setup_dev(root: &Root, sec: &super::Security) {
    mount_at(
        root,
        "/dev",
        "tmpfs",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_STRICTATIME,
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
        bind_at(root, &format!("/dev/{d}"), &Path::new("/dev").join(d), 0);
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
        root,
        "/dev/pts",
        "devpts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    );
    mount_at(
        root,
        "/dev/shm",
        "shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "mode=1777,size=65536k",
    );
    mount_at(
        root,
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
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
        host_devices(root, Path::new("/dev"), "/dev");
    }
    for d in &sec.devices {
        make_node(root, &d.container, d.kind, d.major, d.minor, 0o666);
    }
}

/// Creates device node `path` in-root (its parents too) unless something is there.
fn make_node(root: &Root, path: &str, kind: char, major: u32, minor: u32, perm: u32) {
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
    sys::mknodat(
        pfd.as_fd(),
        name,
        fmt | (perm & 0o7777),
        sys::makedev(major, minor),
    )
    .unwrap_or_else(|e| fail(&format!("create device {path}"), e));
}

/// `--privileged`: every host device under `host` (as Docker: not pts, shm, mqueue or fd),
/// made at the same path in the container.
fn host_devices(root: &Root, host: &Path, inside: &str) {
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
                host_devices(root, &e.path(), &path);
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_block_device() { 'b' } else { 'c' };
            let rdev = meta.rdev();
            make_node(
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

fn mask_proc() {
    for m in MASKED {
        let path = Path::new(m);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let _ = p::mount(
                    "tmpfs",
                    path.as_os_str(),
                    "tmpfs",
                    libc::MS_RDONLY,
                    "size=0k",
                );
            }
            Ok(_) => {
                let _ = p::mount("/dev/null", path.as_os_str(), "", libc::MS_BIND, "");
            }
            Err(_) => {}
        }
    }
    for r in READONLY {
        let path = OsStr::new(r);
        if Path::new(r).exists() && p::mount(r, path, "", libc::MS_BIND | libc::MS_REC, "").is_ok()
        {
            let _ = p::mount(
                r,
                path,
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                "",
            );
        }
    }
}

/// The capability set root keeps: all with --privileged, else the container's set.
fn caps_of(sec: &super::Security) -> u64 {
    if sec.privileged {
        u64::MAX
    } else {
        sec.caps
    }
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
            p::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)
                .unwrap_or_else(|e| fail("drop capabilities", e));
        }
    }
    p::setgroups(&ids.groups).unwrap_or_else(|e| fail("setgroups", e));
    p::setresgid(ids.gid).unwrap_or_else(|e| fail("setgid", e));
    p::setresuid(ids.uid).unwrap_or_else(|e| fail("setuid", e));
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

/// The workload's side: `_ready` stays open (close-on-exec) until the exec tells the caller
/// that setup is done.
fn child(spec: &Spec, helper_alive: OwnedFd, _ready: OwnedFd) -> ! {
    let rootfs = mount_rootfs(spec);
    let root = Root::open(&rootfs).unwrap_or_else(|e| fail("open the root filesystem", e));
    for (path, dir) in &spec.stubs {
        stub(&root, path, *dir);
    }
    mount_at(
        &root,
        "/proc",
        "proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    );
    let mut sys_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if !spec.security.privileged {
        sys_flags |= libc::MS_RDONLY;
    }
    mount_at(&root, "/sys", "sysfs", "sysfs", sys_flags, "");
    setup_dev(&root, &spec.security);
    for (path, host) in &spec.files {
        bind_at(&root, path, host, 0);
    }
    for m in &spec.mounts {
        match m {
            super::ExtraMount::Tmpfs { target, options } => mount_at(
                &root,
                target,
                "tmpfs",
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
                options,
            ),
            super::ExtraMount::Bind { target, source } => bind_at(&root, target, source, 0),
            super::ExtraMount::ReadOnly { target, source } => {
                bind_at(&root, target, source, 0);
                let t = self::target(&root, target)
                    .unwrap_or_else(|e| fail(&format!("open mount point {target}"), e));
                p::mount(
                    "",
                    &t.proc_path,
                    "",
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
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

    std::env::set_current_dir(&rootfs).unwrap_or_else(|e| fail("enter the root filesystem", e));
    p::pivot_root(OsStr::new("."), OsStr::new(".")).unwrap_or_else(|e| fail("pivot_root", e));
    p::umount2(OsStr::new("."), libc::MNT_DETACH)
        .unwrap_or_else(|e| fail("detach the old root", e));
    std::env::set_current_dir("/").unwrap_or_else(|e| fail("chdir /", e));
    if spec.mask_proc && !spec.security.privileged {
        mask_proc();
    }
    p::sethostname(&spec.hostname).unwrap_or_else(|e| fail("set hostname", e));
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
    confine(&spec.security);
    drop_caps(&spec.ids, caps_of(&spec.security));
    if spec.no_new_privs {
        p::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).unwrap_or_else(|e| fail("set no_new_privs", e));
    }
    // Credentials changes clear the parent-death signal; set it again last, then make sure
    // the helper did not die in between (its end of the pipe closed).
    p::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .unwrap_or_else(|e| fail("set parent-death signal", e));
    if p::readable_now(helper_alive.as_fd()) {
        std::process::exit(EXIT_SETUP);
    }
    drop(helper_alive);
    if spec.tty {
        attach_tty(spec.winsize);
    }
    exec_argv(&argv, &spec.env)
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

/// Resets the signals a workload should see at their defaults and execs `argv` with `env`,
/// finding the command on the workload's PATH; exits 127/126 as Docker when it cannot.
fn exec_argv(argv: &[String], env: &[String]) -> ! {
    for s in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGPIPE] {
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
