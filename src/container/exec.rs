//! `exec`: a command in a running container (its namespaces, cgroups, user and security), with
//! an optional terminal relayed to the caller's.

use super::{io_err, ContainerError};
use kiln_store::ContainerState;
use kiln_store::Store;
use std::io::Write;
use std::process::Stdio;

/// What `kiln exec` asks for.
pub struct ExecOptions {
    /// Name or ID.
    pub container: String,
    pub cmd: Vec<String>,
    /// `-e KEY=VALUE`, or `KEY` to pass the caller's value.
    pub env: Vec<String>,
    /// `-u USER[:GROUP]`, resolved in the container's passwd and group.
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub tty: bool,
    pub interactive: bool,
}

/// Reads a small file inside a running container, resolved in its root (never through it).
fn container_file(pid: i64, path: &str) -> Option<String> {
    let root =
        crate::rootfs::Root::open(std::path::Path::new(&format!("/proc/{pid}/root"))).ok()?;
    let p = crate::rootfs::clean(std::path::Path::new(path))?;
    let fd = root.open_at(&p, libc::O_RDONLY).ok()?;
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).ok()?;
    Some(s)
}

/// A process in the container `spec` describes, whose init has host PID `pid`: the container's
/// own user, environment, working directory, cgroups and confinement, no terminal, no command
/// yet (`kiln exec` and health checks change what they need).
pub(super) fn exec_spec(spec: &super::ContainerSpec, pid: i32) -> crate::runtime::ExecSpec {
    crate::runtime::ExecSpec {
        pid,
        argv: vec![],
        env: spec.runtime.env.clone(),
        cwd: spec.runtime.cwd.clone(),
        ids: spec.runtime.ids.clone(),
        no_new_privs: spec.runtime.no_new_privs,
        tty: false,
        winsize: None,
        cgroups: spec.runtime.cgroups.clone(),
        security: spec.runtime.security.clone(),
    }
}

/// Runs `opts.cmd` in a running container; returns its exit code (126/127 as `run`). With
/// `tty`, the terminal's master comes back from the helper and is relayed to this process's
/// stdin and stdout (raw mode while it runs).
pub fn exec(store: &Store, a: &ExecOptions) -> Result<i32, ContainerError> {
    let row = super::refresh(store, super::resolve(store, &a.container)?)?;
    let (Some(pid), ContainerState::Running) = (row.pid, row.record.state) else {
        return Err(ContainerError::Invalid(format!(
            "container {} is not running",
            row.record.name
        )));
    };
    let spec = super::spec_of(&row)?;
    let ids = match &a.user {
        None => spec.runtime.ids.clone(),
        Some(u) => crate::runtime::user::resolve(
            u,
            container_file(pid, "/etc/passwd").as_deref(),
            container_file(pid, "/etc/group").as_deref(),
        )
        .map_err(|e| ContainerError::Invalid(e.to_string()))?,
    };
    let mut env = spec.runtime.env.clone();
    for kv in &a.env {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (kv.clone(), std::env::var(kv).ok()),
        };
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) != k);
        if let Some(v) = v {
            env.push(format!("{k}={v}"));
        }
    }
    use std::os::fd::AsFd;
    let es = crate::runtime::ExecSpec {
        argv: a.cmd.clone(),
        env,
        cwd: a.workdir.clone().unwrap_or(spec.runtime.cwd.clone()),
        ids,
        tty: a.tty,
        winsize: crate::sys::proc::window_size(std::io::stdin().as_fd()),
        ..exec_spec(&spec, pid as i32)
    };
    if !a.tty {
        let stdin = if a.interactive {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let status = crate::runtime::spawn_exec(&es, stdin)
            .map_err(io_err("start the exec helper"))?
            .child
            .wait()
            .map_err(io_err("wait for the command"))?;
        return Ok(crate::runtime::exit_code(status));
    }
    // -t: the helper sends the terminal's master back over a socket given as its stdin.
    let (ours, theirs) = crate::sys::proc::socketpair().map_err(io_err("create a socket pair"))?;
    let mut child = crate::runtime::spawn_exec(&es, Stdio::from(theirs))
        .map_err(io_err("start the exec helper"))?
        .child;
    let Ok(master) = crate::sys::proc::recv_fd(ours.as_fd()) else {
        return Ok(crate::runtime::exit_code(
            child.wait().map_err(io_err("wait for the command"))?,
        ));
    };
    let master = std::fs::File::from(master);
    let raw = crate::sys::proc::make_raw(std::io::stdin().as_fd()).ok();
    if a.interactive {
        let mut w = master.try_clone().map_err(io_err("dup the terminal"))?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut w);
        });
    }
    let mut r = master.try_clone().map_err(io_err("dup the terminal"))?;
    drop(master);
    let out = std::thread::spawn(move || {
        let mut o = std::io::stdout();
        let mut buf = [0u8; 8192];
        // The master reads EIO once the last slave copy closes.
        while let Ok(n) = std::io::Read::read(&mut r, &mut buf) {
            if n == 0 || o.write_all(&buf[..n]).and_then(|_| o.flush()).is_err() {
                break;
            }
        }
    });
    let status = child.wait().map_err(io_err("wait for the command"))?;
    let _ = out.join();
    if let Some(t) = raw {
        crate::sys::proc::restore_terminal(std::io::stdin().as_fd(), &t);
    }
    Ok(crate::runtime::exit_code(status))
}
