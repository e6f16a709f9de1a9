//! The pause process that holds a user's kiln namespaces, and joining it.
//!
//! Creating: under the runtime dir's lock, kiln spawns itself as `__kiln-pause`; the child
//! starts its own session, unshares a user and a mount namespace, and says so on its stdout;
//! the parent writes the id maps from outside (newuidmap/newgidmap for the subordinate ranges,
//! or a root-only map it may write itself) and answers on the child's stdin; the child makes
//! its mounts slaves of the host's (host mounts still appear, its own never leak out) and waits
//! forever. Its pid goes to `pause.pid`. Joining: setns(2) into the pid's user namespace (which
//! gives every capability in it), then its mount namespace, then the working directory again
//! (setns of a mount namespace moves the caller to its root).

use super::{runtime_dir, sub_range, Entered, Range};
use nix::fcntl::{Flock, FlockArg};
use nix::sched::CloneFlags;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The hidden argv[1] that makes kiln act as the pause process.
pub const PAUSE_ARG: &str = "__kiln-pause";

/// The child's word that its namespaces exist, and the parent's that the maps are written.
const READY: u8 = b'R';
const GO: u8 = b'G';

pub(super) fn join_or_create() -> Result<Entered, String> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let dir = runtime_dir(uid, uid).map_err(|e| format!("kiln's runtime directory: {e}"))?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("pause.lock"))
        .map_err(|e| format!("open {}: {e}", dir.join("pause.lock").display()))?;
    let lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("lock {}: {e}", dir.join("pause.lock").display()))?;
    let pid_file = dir.join("pause.pid");
    let mut entered = Entered::default();
    let pid = match running(&pid_file, uid) {
        Some(pid) => pid,
        None => {
            let (pid, notes) = create(uid, gid)?;
            entered.notes = notes;
            let tmp = dir.join("pause.pid.tmp");
            fs::write(&tmp, pid.to_string())
                .and_then(|()| fs::rename(&tmp, &pid_file))
                .map_err(|e| format!("write {}: {e}", pid_file.display()))?;
            pid
        }
    };
    drop(lock);
    join(pid).map_err(|e| format!("join kiln's user namespace (pause process {pid}): {e}"))?;
    Ok(entered)
}

/// A process of the user's that lives in kiln's namespaces without being its pause: a detached
/// container's or a service's supervisor. When the pause process is gone (killed, or stopped by
/// `system migrate`) while containers run, a new pause joins their namespaces through it, so
/// later commands still reach them.
fn survivor(uid: u32) -> Option<i32> {
    let kinds = [crate::container::SUPERVISE_ARG, crate::stack::SUPERVISE_ARG];
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        if fs::metadata(e.path()).ok()?.uid() != uid {
            return None;
        }
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let arg = cmdline.split(|b| *b == 0).nth(1)?;
        kinds.iter().any(|k| arg == k.as_bytes()).then_some(pid)
    })
}

/// The pause process named in `pid_file`, if it is alive, the user's, and kiln's pause.
fn running(pid_file: &Path, uid: u32) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let proc = Path::new("/proc").join(pid.to_string());
    let owner = fs::metadata(&proc).ok()?.uid();
    let cmdline = fs::read(proc.join("cmdline")).ok()?;
    let is_pause = cmdline
        .split(|b| *b == 0)
        .nth(1)
        .is_some_and(|a| a == PAUSE_ARG.as_bytes());
    (owner == uid && is_pause).then_some(pid)
}

/// Stops the user's pause process (`kiln system migrate`): the next command makes a new one
/// with the id maps /etc/subuid and /etc/subgid give now. Returns its pid, if one ran.
pub fn stop() -> io::Result<Option<i32>> {
    let uid = super::mapping().map_or_else(|| nix::unistd::getuid().as_raw(), |m| m.uid);
    let seen = if super::active() { 0 } else { uid };
    let dir = runtime_dir(uid, seen)?;
    let Some(pid) = running(&dir.join("pause.pid"), seen) else {
        return Ok(None);
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)?;
    let _ = fs::remove_file(dir.join("pause.pid"));
    Ok(Some(pid))
}

/// The user's name, for /etc/subuid lines that name users.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default()
}

/// Spawns the pause process and writes its maps; returns its pid and notes for the user.
fn create(uid: u32, gid: u32) -> Result<(i32, Vec<String>), String> {
    if let Some(through) = survivor(uid) {
        return adopt(through).map(|pid| (pid, vec![]));
    }
    let name = user_name(uid);
    let subuid = sub_range(
        &fs::read_to_string("/etc/subuid").unwrap_or_default(),
        &name,
        uid,
    );
    let subgid = sub_range(
        &fs::read_to_string("/etc/subgid").unwrap_or_default(),
        &name,
        gid,
    );
    let mut child = spawn_pause(None)?;
    let pid = child.id() as i32;
    if let Err(why) = await_ready(&mut child) {
        return Err(format!(
            "kiln's pause process could not make a user namespace ({why}): this kernel or its settings (kernel.unprivileged_userns_clone, user.max_user_namespaces) refuse them to ordinary users, or a seccomp profile does (inside a container, build with --isolation=none)"
        ));
    }
    let mut notes = Vec::new();
    let written = match (subuid, subgid) {
        (Some(u), Some(g)) => match write_maps_with_helpers(pid, uid, gid, u, g) {
            Ok(()) => true,
            Err(e) => {
                notes.push(format!(
                    "{e}; using a single-id map instead (root only): files owned by other ids cannot be kept"
                ));
                false
            }
        },
        _ => {
            notes.push(format!(
                "user {name:?} (uid {uid}) has no subordinate ids in /etc/subuid and /etc/subgid: kiln's user namespace maps root only, so files owned by other ids cannot be kept and images that switch USER cannot run"
            ));
            false
        }
    };
    if !written {
        let r = fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n"))
            .and_then(|()| fs::write(format!("/proc/{pid}/setgroups"), "deny"))
            .and_then(|()| fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n")));
        if let Err(e) = r {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("write the id maps of kiln's user namespace: {e}"));
        }
    }
    let mut stdin = child.stdin.take().expect("piped");
    if stdin.write_all(&[GO]).is_err() {
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        return Err(format!("kiln's pause process ended ({status})"));
    }
    drop(stdin);
    // The pause process lives on, in its own session; its exit status is never collected by
    // this short-lived command, and init reaps it.
    std::mem::forget(child);
    Ok((pid, notes))
}

/// Spawns `kiln __kiln-pause [THROUGH]`, talking to it over its stdin and stdout.
fn spawn_pause(through: Option<i32>) -> Result<std::process::Child, String> {
    Command::new("/proc/self/exe")
        .arg(PAUSE_ARG)
        .args(through.map(|p| p.to_string()))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start kiln's pause process: {e}"))
}

/// Waits for the pause process's READY; otherwise reaps it and returns what it said.
fn await_ready(child: &mut std::process::Child) -> Result<(), String> {
    let mut said = [0u8; 1];
    let mut stdout = child.stdout.take().expect("piped");
    if stdout.read_exact(&mut said).is_ok() && said[0] == READY {
        return Ok(());
    }
    let mut why = String::new();
    let _ = stdout.read_to_string(&mut why);
    let _ = child.wait();
    Err(if why.is_empty() {
        "it ended".into()
    } else {
        why
    })
}

/// Starts a pause process in the namespaces of `through` (see [`survivor`]).
fn adopt(through: i32) -> Result<i32, String> {
    let mut child = spawn_pause(Some(through))?;
    if let Err(why) = await_ready(&mut child) {
        return Err(format!(
            "kiln's pause process could not join the namespaces of process {through}: {why}"
        ));
    }
    let pid = child.id() as i32;
    // Nothing to map: the namespace exists. Its stdin closing is its go.
    drop(child.stdin.take());
    std::mem::forget(child);
    Ok(pid)
}

/// newuidmap/newgidmap: root to the user, 1.. to the subordinate ranges.
fn write_maps_with_helpers(pid: i32, uid: u32, gid: u32, u: Range, g: Range) -> Result<(), String> {
    for (tool, own, (start, count)) in [("newuidmap", uid, u), ("newgidmap", gid, g)] {
        let out = Command::new(tool)
            .args([pid.to_string(), "0".into(), own.to_string(), "1".into()])
            .args(["1".to_string(), start.to_string(), count.to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    format!("{tool} is not installed (Debian's uidmap package)")
                } else {
                    format!("run {tool}: {e}")
                }
            })?;
        if !out.status.success() {
            return Err(format!(
                "{tool} {pid} 0 {own} 1 1 {start} {count}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

fn join(pid: i32) -> io::Result<()> {
    let cwd = std::env::current_dir();
    let user = fs::File::open(format!("/proc/{pid}/ns/user"))?;
    let mnt = fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    nix::sched::setns(&user, CloneFlags::CLONE_NEWUSER)?;
    nix::sched::setns(&mnt, CloneFlags::CLONE_NEWNS)?;
    let root = nix::unistd::Gid::from_raw(0);
    nix::unistd::setresgid(root, root, root)?;
    let root = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresuid(root, root, root)?;
    if let Ok(cwd) = cwd {
        std::env::set_current_dir(cwd)?;
    }
    Ok(())
}

/// `kiln __kiln-pause`: see the module docs. Never returns.
pub fn pause_main() -> ! {
    let _ = nix::unistd::setsid();
    // It lives on: nothing the caller's caller had open (a pipe a script waits on) stays with it.
    let _ = crate::sys::proc::close_fds_from(3, true);
    let mut out = io::stdout();
    // `__kiln-pause PID`: join the namespaces PID lives in (a surviving supervisor's) instead.
    let through: Option<i32> = std::env::args().nth(2).and_then(|p| p.parse().ok());
    if let Some(pid) = through {
        if let Err(e) = join(pid) {
            let _ = write!(out, "Ejoin: {e}");
            std::process::exit(1);
        }
        let _ = out.write_all(&[READY]);
        let _ = out.flush();
    } else {
        if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
            // The parent reports it: anything but READY, then the reason.
            let _ = write!(out, "Eunshare: {e}");
            std::process::exit(1);
        }
        let _ = out.write_all(&[READY]);
        let _ = out.flush();
        let mut go = [0u8; 1];
        if io::stdin().read_exact(&mut go).is_err() || go[0] != GO {
            std::process::exit(1);
        }
    }
    let root = nix::unistd::Uid::from_raw(0);
    let _ = nix::unistd::setresuid(root, root, root);
    let _ = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    );
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    loop {
        nix::unistd::pause();
    }
}
