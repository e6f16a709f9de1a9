//! The container process: what to run and how, and the helper that runs it.
//!
//! kiln's own process is multithreaded, so it never forks to make a container. It spawns itself
//! (`/proc/self/exe __kiln-init`) and writes a [`Spec`] (JSON) into a pipe that is the helper's
//! descriptor 3 (no size limit, unlike an environment variable); that fresh,
//! single-threaded helper ([`init`]) unshares the namespaces, forks so the workload is PID 1 of
//! its PID namespace, builds the root filesystem (an overlay of snapshots plus an upper dir, or a
//! bind of a plain directory), mounts /proc, /sys, /dev and the files kiln provides, pivots root,
//! drops capabilities and execs. The helper waits and exits with the workload's status, so the
//! caller sees an ordinary child process. All mounts live in the private mount namespace and
//! vanish with it: a crash leaves nothing mounted on the host.
//!
//! Exit codes follow Docker: 125 the helper could not set the container up, 126 the command
//! cannot be executed, 127 it was not found, 128+N killed by signal N, else the command's own.

pub mod caps;
pub mod devices;
pub mod init;
pub mod seccomp;
pub mod user;

use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The hidden argv[1] that makes kiln act as the init helper.
pub const INIT_ARG: &str = "__kiln-init";
/// The helper's descriptor from which it reads its spec (compact JSON, then a newline), and then
/// the gate: one byte [`GO`] once the caller has the container's surroundings ready (its
/// network), which the workload waits for just before its exec; end of file instead makes it
/// exit with [`EXIT_SETUP`] (the caller reports why).
pub const SPEC_FD: i32 = 3;
/// The gate's byte: go on to the exec.
pub const GO: u8 = b'G';
/// The helper's descriptor on which it reports the workload's start: the workload's host PID
/// (4 bytes, native order) once it is forked, then end of file when the workload has exec'd
/// (the descriptor is close-on-exec) or the helper gave up.
pub const READY_FD: i32 = 4;

/// Exit code: the container could not be set up.
pub const EXIT_SETUP: i32 = 125;
/// Exit code: the command exists but cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit code: the command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Where the container's root filesystem comes from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Rootfs {
    /// overlay: `lower` (top first, relative to `base`, which keeps the mount options short),
    /// `upper` and `work` on the same filesystem, mounted at `target`.
    Overlay {
        base: PathBuf,
        lower: Vec<String>,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
    },
    /// A plain directory used as it is (the native snapshotter), bind-mounted at itself.
    Dir(PathBuf),
}

/// The network a container gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Net {
    /// The host's network namespace.
    Host,
    /// A new network namespace with only loopback, up.
    Private,
    /// The namespace bound at this path (a bridge network's, set up by netavark before the
    /// container starts).
    Join(PathBuf),
}

/// A numeric user, resolved from the image's passwd/group files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<String>,
}

/// Everything the helper needs to start one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub rootfs: Rootfs,
    pub argv: Vec<String>,
    /// `KEY=VALUE` strings, exactly the workload's environment.
    pub env: Vec<String>,
    pub cwd: String,
    pub ids: Ids,
    pub hostname: String,
    pub net: Net,
    /// Host files bind-mounted at in-container paths (/etc/hosts, /etc/resolv.conf, ...).
    pub files: Vec<(String, PathBuf)>,
    /// Mount points the image lacks: (path, is a directory). The helper creates them; the caller
    /// removes what is left of them afterwards so they never reach a layer.
    pub stubs: Vec<(String, bool)>,
    /// A file to write under /dev/pipes before `argv` runs: (name, content), RUN's `#!` heredoc.
    pub script: Option<(String, String)>,
    /// Set no_new_privs (kiln run does; RUN steps don't, as BuildKit, so setuid tools work).
    pub no_new_privs: bool,
    /// Mask /proc paths and make /proc/sys and friends read-only, as Docker does.
    pub mask_proc: bool,
    /// `-t`: the workload gets a pseudo-terminal of the container's own devpts as its standard
    /// streams and controlling terminal; the master is sent back over fd 0 (a Unix socket the
    /// caller passes as stdin), as runc's console socket does.
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size (rows, columns), when known.
    #[serde(default)]
    pub winsize: Option<(u16, u16)>,
    /// Control groups (directories) the helper joins before it forks, so the workload and all
    /// it starts are accounted and limited there (`-m`, `--cpus`, `--pids-limit`).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// Extra mounts (RUN --mount): tmpfs, or a host directory bound read-write.
    #[serde(default)]
    pub mounts: Vec<ExtraMount>,
    /// Capabilities, seccomp, devices, privileged mode.
    #[serde(default)]
    pub security: Security,
    /// `--init`: PID 1 is a small reaper that forwards signals to the workload and reaps
    /// orphans, instead of the workload itself.
    #[serde(default)]
    pub init: bool,
}

/// What confines a container beyond its namespaces (the README's "Security" section).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// The capability set root keeps in the container (bounding, permitted, effective), a mask
    /// over capability numbers; Docker's default set unless changed.
    pub caps: u64,
    /// `--privileged`: every capability, every host device, no seccomp filter, /sys and /proc
    /// writable, nothing masked.
    pub privileged: bool,
    pub seccomp: SeccompMode,
    /// Host devices made available (`--device`): created in the container and allowed.
    pub devices: Vec<devices::Device>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            caps: caps::default_mask(),
            privileged: false,
            seccomp: SeccompMode::Default,
            devices: vec![],
        }
    }
}

/// Which seccomp filter a container gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompMode {
    /// kiln's default (Docker's rules) for the container's capabilities.
    Default,
    /// `--security-opt seccomp=unconfined`, and `--privileged`.
    Unconfined,
    /// `--security-opt seccomp=PATH`, read when the container was created.
    Profile(seccomp::Profile),
}

impl Security {
    /// The filter to install, if any.
    pub fn seccomp_program(&self) -> Option<Vec<seccomp::Insn>> {
        if self.privileged {
            return None;
        }
        match &self.seccomp {
            SeccompMode::Default => Some(seccomp::compile(&seccomp::default_profile(self.caps))),
            SeccompMode::Unconfined => None,
            SeccompMode::Profile(p) => Some(seccomp::compile(p)),
        }
    }

    /// The device rules for the device controller; `None` when every device is allowed.
    pub fn device_rules(&self) -> Option<Vec<devices::Rule>> {
        devices::rules_for(self.privileged, &self.devices)
    }

    /// `--security-opt` values as Docker's inspect shows them.
    pub fn security_opt(&self) -> Vec<String> {
        match &self.seccomp {
            SeccompMode::Default => vec![],
            SeccompMode::Unconfined => vec!["seccomp=unconfined".into()],
            SeccompMode::Profile(_) => vec!["seccomp=<profile>".into()],
        }
    }
}

/// A mount added to a container's root filesystem at `target`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ExtraMount {
    /// A tmpfs; `options` as mount(8) takes them (`size=...`).
    Tmpfs { target: String, options: String },
    /// A host directory, bound read-write (a cache mount).
    Bind { target: String, source: PathBuf },
    /// A host file or directory, bound read-only (a secret).
    ReadOnly { target: String, source: PathBuf },
}

/// The hidden argv[1] that makes kiln act as the exec helper (`kiln exec`).
pub const EXEC_ARG: &str = "__kiln-exec";

/// What the exec helper needs to start a process inside a running container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Host PID of the container's init, whose namespaces to join.
    pub pid: i32,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub ids: Ids,
    pub no_new_privs: bool,
    /// A pseudo-terminal of the container's devpts, its master sent back over fd 0 (`-t`).
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub winsize: Option<(u16, u16)>,
    /// The container's control groups, joined so its limits hold for this process too.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// The container's confinement, applied to this process too.
    #[serde(default)]
    pub security: Security,
}

/// Containers and RUN steps need root, or kiln's rootless mode (the `kiln` command enters its
/// user namespace first, where this process is root): an error that says so, rather than
/// `unshare: Operation not permitted` from deep inside, for a caller that did neither.
pub fn need_root(what: &str) -> Result<(), String> {
    if crate::sys::is_root() {
        return Ok(());
    }
    Err(format!(
        "{what} needs root or kiln's rootless mode: kiln makes namespaces and mounts; run it through the kiln command, which enters its user namespace first"
    ))
}

/// Starts the exec helper for `spec`.
pub fn spawn_exec(spec: &ExecSpec, stdin: Stdio) -> io::Result<Helper> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(EXEC_ARG).env_clear().stdin(stdin);
    start(
        cmd,
        &serde_json::to_vec(spec).map_err(io::Error::other)?,
        false,
    )
}

/// Starts the exec helper for a probe: no input, its standard output and error together on
/// the returned pipe (a health check's output, as Docker keeps it).
pub fn spawn_exec_output(spec: &ExecSpec) -> io::Result<(Child, std::fs::File)> {
    let (r, w) = crate::sys::pipe()?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(EXEC_ARG)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(w.try_clone()?))
        .stderr(Stdio::from(w));
    let helper = start(
        cmd,
        &serde_json::to_vec(spec).map_err(io::Error::other)?,
        false,
    )?;
    Ok((helper.child, std::fs::File::from(r)))
}

/// A started helper: the process, the pipe on which it reports the workload's start, and (for
/// a gated start) the gate the workload waits at.
pub struct Helper {
    pub child: Child,
    ready: std::fs::File,
    gate: Option<std::fs::File>,
}

impl Helper {
    /// Lets a gated workload go on to its exec (nothing for an ungated one).
    pub fn open_gate(&mut self) {
        use std::io::Write;
        if let Some(mut g) = self.gate.take() {
            let _ = g.write_all(&[GO]);
        }
    }

    /// Makes a gated workload give up before its exec (exit status [`EXIT_SETUP`]), and waits
    /// for the helper to end.
    pub fn abort(mut self) {
        self.gate = None;
        let _ = self.child.wait();
    }

    /// Waits until the workload has exec'd (its setup done: hostname, mounts, credentials), or
    /// the helper gave up; returns the workload's host PID when it was forked. Opens the gate
    /// first if it is still closed.
    pub fn wait_started(&mut self) -> Option<i32> {
        use std::io::Read;
        self.open_gate();
        let mut pid = [0u8; 4];
        let got = self
            .ready
            .read_exact(&mut pid)
            .ok()
            .map(|_| i32::from_ne_bytes(pid));
        // End of file: the workload exec'd (close-on-exec) or is gone.
        let mut rest = Vec::new();
        let _ = self.ready.read_to_end(&mut rest);
        got
    }
}

/// Spawns `cmd` with the spec pipe as its descriptor 3 and the ready pipe as 4, then writes
/// the spec and, unless `gated`, the gate's [`GO`] (a gated start keeps the pipe as the gate).
fn start(mut cmd: Command, spec: &[u8], gated: bool) -> io::Result<Helper> {
    use std::io::Write;
    use std::os::fd::AsFd;
    let (spec_r, spec_w) = crate::sys::pipe()?;
    let (ready_r, ready_w) = crate::sys::pipe()?;
    let child = crate::sys::proc::spawn_with_fds(
        &mut cmd,
        &[(spec_r.as_fd(), SPEC_FD), (ready_w.as_fd(), READY_FD)],
    )?;
    drop((spec_r, ready_w));
    // The helper reads its spec first thing; if it died before, the write fails and its exit
    // status says why.
    let mut w = std::fs::File::from(spec_w);
    let mut msg = Vec::with_capacity(spec.len() + 2);
    msg.extend_from_slice(spec);
    msg.push(b'\n');
    if !gated {
        msg.push(GO);
    }
    let _ = w.write_all(&msg);
    Ok(Helper {
        child,
        ready: std::fs::File::from(ready_r),
        gate: gated.then_some(w),
    })
}

/// The mount points every container needs, and whether each is a directory.
pub const MOUNT_POINTS: &[(&str, bool)] = &[
    ("proc", true),
    ("sys", true),
    ("dev", true),
    ("etc", true),
    ("etc/hosts", false),
    ("etc/resolv.conf", false),
    ("etc/hostname", false),
];

/// Starts the helper for `spec`. The child's stdin is null; stdout and stderr are as given.
pub fn spawn(spec: &Spec, stdout: Stdio, stderr: Stdio) -> io::Result<Helper> {
    spawn_with_stdin(spec, Stdio::null(), stdout, stderr)
}

/// Starts the helper for `spec` with all three standard streams as given.
pub fn spawn_with_stdin(
    spec: &Spec,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> io::Result<Helper> {
    spawn_gated(spec, stdin, stdout, stderr, false)
}

/// Starts the helper for `spec`; when `gated`, its workload is set up in full (namespaces,
/// mounts, credentials) but waits before its exec until [`Helper::open_gate`], so the caller
/// can do its own part (a bridge network's setup) meanwhile.
pub fn spawn_gated(
    spec: &Spec,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    gated: bool,
) -> io::Result<Helper> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(INIT_ARG)
        .env_clear()
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    start(
        cmd,
        &serde_json::to_vec(spec).map_err(io::Error::other)?,
        gated,
    )
}

/// Docker's exit code for a wait status: the code, or 128 + the signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => EXIT_SETUP,
    }
}

/// /etc/hosts for a container named `hostname` (Docker's content).
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

/// The host's resolv.conf (empty when it has none), as Docker copies it for host networking.
pub fn resolv_conf() -> String {
    std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
}

/// Writes `hosts`, `hostname` and `resolv.conf` into `files`: what the init helper binds over
/// the container's /etc files (RUN steps and `kiln run` alike).
pub fn write_etc_files(files: &std::path::Path, hostname: &str) -> io::Result<()> {
    for (name, content) in [
        ("hosts", hosts_file(hostname)),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv_conf()),
    ] {
        std::fs::write(files.join(name), content)
            .map_err(|e| io::Error::new(e.kind(), format!("write {name}: {e}")))?;
    }
    Ok(())
}

/// The [`MOUNT_POINTS`] the root filesystem `view` lacks, as `(absolute path, is a directory)`:
/// the stubs the helper creates to mount on, removed again afterwards.
pub fn missing_mount_points(
    view: &crate::snapshotter::view::View,
) -> io::Result<Vec<(String, bool)>> {
    let mut stubs = Vec::new();
    for (p, dir) in MOUNT_POINTS {
        let abs = format!("/{p}");
        if view.resolve(&abs, false)?.is_none() {
            stubs.push((abs, *dir));
        }
    }
    Ok(stubs)
}
