//! Containers: creating one from an image, running it (in the foreground, or under a detached
//! supervisor), and its lifecycle (stop, kill, remove), as DESIGN.md "A run" describes.
//!
//! ```text
//! <root>/containers/<id>/upper, work   the container's overlay upper and work dirs
//! <root>/containers/<id>/rootfs        its mount point (mounted only inside its namespace)
//! <root>/containers/<id>/files/        hosts, hostname, resolv.conf bind-mounted into it
//! <root>/containers/<id>/log.json      its output, Docker's json-file format, one line each
//! ```
//!
//! The row in `kiln.db` (`containers`) holds the state; every transition is one UPDATE
//! (created -> running -> exited). Whoever runs the container (the foreground `kiln run`, or
//! the `kiln __kiln-supervise` process a `run -d` leaves behind in its own session) owns its
//! output, its ports and its exit status. If that owner is killed, the container dies with it
//! (parent-death signals down the chain) and `ps` reports it `Exited (unknown)`.

pub mod exec;
pub mod inspect;
pub mod ports;

use crate::image::{self, ImageError};
use crate::runtime::{self, Ids, Net, Rootfs, Spec};
use crate::timefmt;
use kiln_store::{ContainerRecord, ContainerRow, Store};
use ports::PortSpec;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The hidden argv[1] of the detached supervisor: `kiln __kiln-supervise ROOT ID`.
pub const SUPERVISE_ARG: &str = "__kiln-supervise";

/// A container problem, naming the container or image.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("container name {0:?} matches several containers; use more of the ID")]
    Ambiguous(String),
    #[error("the container name {0:?} is already in use")]
    NameInUse(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerError {
    let context = context.into();
    move |source| ContainerError::Io { context, source }
}

/// What `kiln run` asks for.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub image: String,
    pub name: Option<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Option<String>,
    /// `-e` values in order (`K=V`, or `K` to copy the host's).
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// private (default), host or none.
    pub network: String,
    pub ports: Vec<PortSpec>,
    /// `-P`: publish every EXPOSEd port on a free host port.
    pub publish_all: bool,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u64>,
    pub remove: bool,
    pub interactive: bool,
    /// `-t`: the container's standard streams are a pseudo-terminal.
    pub tty: bool,
    /// `-m`: memory limit in bytes.
    pub memory: Option<u64>,
    /// `--cpus`: CPU quota in CPUs.
    pub cpus: Option<f64>,
    /// `--pids-limit`.
    pub pids_limit: Option<u64>,
    /// `--privileged`, `--cap-add/--cap-drop`, `--device`, `--security-opt`.
    pub security: runtime::Security,
}

/// The container's confinement from the run flags, checked before anything is created.
pub fn security_options(
    privileged: bool,
    cap_add: &[String],
    cap_drop: &[String],
    devices: &[String],
    security_opt: &[String],
) -> Result<runtime::Security, String> {
    let mut sec = runtime::Security {
        caps: runtime::caps::resolve(cap_add, cap_drop)?,
        privileged,
        ..Default::default()
    };
    if privileged {
        sec.caps = runtime::caps::all();
        sec.seccomp = runtime::SeccompMode::Unconfined;
    }
    for d in devices {
        sec.devices.push(runtime::devices::parse_device(d)?);
    }
    for o in security_opt {
        let (k, v) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
        match (k, v) {
            ("seccomp", "unconfined") => sec.seccomp = runtime::SeccompMode::Unconfined,
            ("seccomp", "") => return Err(format!("invalid --security-opt {o:?}: seccomp needs unconfined or a profile path")),
            ("seccomp", path) => {
                let text = fs::read_to_string(path)
                    .map_err(|e| format!("opening seccomp profile ({path}) failed: {e}"))?;
                let p = runtime::seccomp::parse_docker(path, &text, sec.caps)
                    .map_err(|e| e.to_string())?;
                if !privileged {
                    sec.seccomp = runtime::SeccompMode::Profile(p);
                }
            }
            ("no-new-privileges", "" | "true") => {}
            ("label" | "apparmor", _) => {} // no LSM support here; Docker ignores them without one too
            _ => {
                return Err(format!(
                    "invalid --security-opt {o:?}: kiln knows seccomp=unconfined|PATH and no-new-privileges"
                ))
            }
        }
    }
    Ok(sec)
}

/// What the runner records about a container (the row's `spec`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub runtime: Spec,
    pub ports: Vec<PortSpec>,
    pub stop_signal: String,
    pub stop_timeout: u64,
    pub remove: bool,
    /// The command as `ps` shows it.
    pub command: Vec<String>,
}

/// The container's directory.
pub fn dir(store: &Store, id: &str) -> PathBuf {
    store.root().join("containers").join(id)
}

fn new_id() -> Result<String, ContainerError> {
    let mut b = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut b))
        .map_err(io_err("read /dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

const ADJECTIVES: &[&str] = &[
    "admiring",
    "bold",
    "brave",
    "busy",
    "calm",
    "clever",
    "cool",
    "dazzling",
    "eager",
    "elegant",
    "festive",
    "focused",
    "gallant",
    "gifted",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "lucid",
    "modest",
    "nifty",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "sweet",
    "trusting",
    "vibrant",
    "wizardly",
    "zealous",
];
const NAMES: &[&str] = &[
    "babbage", "bell", "boole", "cerf", "curie", "darwin", "dijkstra", "einstein", "euler",
    "fermat", "gauss", "hamilton", "hopper", "hypatia", "kepler", "knuth", "lamport", "liskov",
    "lovelace", "mccarthy", "noether", "pasteur", "ritchie", "shannon", "thompson", "torvalds",
    "turing", "wozniak",
];

/// A Docker-style generated name (`adjective_scientist`), unused in the store.
fn generate_name(store: &Store, id: &str) -> Result<String, ContainerError> {
    let taken: Vec<String> = store
        .containers()?
        .into_iter()
        .map(|c| c.record.name)
        .collect();
    let seed = u64::from_str_radix(&id[..16], 16).unwrap_or(0);
    for i in 0..64u64 {
        let n = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let name = format!(
            "{}_{}",
            ADJECTIVES[(n % ADJECTIVES.len() as u64) as usize],
            NAMES[((n >> 20) % NAMES.len() as u64) as usize]
        );
        let name = if i < 8 { name } else { format!("{name}{i}") };
        if !taken.contains(&name) {
            return Ok(name);
        }
    }
    Ok(format!("kiln_{}", &id[..12]))
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `KEY=VALUE` lines of an env file (blank lines and `#` comments skipped; `KEY` alone copies
/// the host's value, as Docker does).
fn read_env_file(p: &Path) -> Result<Vec<String>, ContainerError> {
    let text = fs::read_to_string(p).map_err(io_err(format!("read env file {}", p.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

fn set_env(env: &mut Vec<String>, kv: &str) {
    let (k, v) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, std::env::var(kv).ok()),
    };
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) != k);
    if let Some(v) = v {
        env.push(format!("{k}={v}"));
    }
}

/// Creates a container: resolves the image, makes its directories and records it. Returns the
/// container's row, in state "created".
pub fn create(store: &Store, o: &RunOptions) -> Result<ContainerRow, ContainerError> {
    runtime::need_root("kiln run").map_err(ContainerError::Invalid)?;
    check_flags(o)?;
    let resolved = image::resolve(store, &o.image)?;
    let img = resolved.image;
    let cfg = image::read_config(store, &img)?;
    let snaps = crate::snapshotter::unpack_image(store, &img).map_err(ImageError::from)?;
    let lowers: Vec<PathBuf> = snaps.iter().map(|s| store.snapshot_fs(s)).collect();
    let view = crate::snapshotter::view(&lowers);
    let rc = &cfg.config;

    let id = new_id()?;
    let name = match &o.name {
        Some(n) if !valid_name(n) => {
            return Err(ContainerError::Invalid(format!(
                "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )))
        }
        Some(n) => n.clone(),
        None => generate_name(store, &id)?,
    };
    let hostname = o.hostname.clone().unwrap_or_else(|| id[..12].to_string());

    // Docker's rules: --entrypoint replaces the image's and drops its CMD; CLI args replace CMD.
    let entrypoint: Vec<String> = match &o.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => rc.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !o.cmd.is_empty() {
        o.cmd.clone()
    } else if o.entrypoint.is_some() {
        vec![]
    } else {
        rc.cmd.clone().unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(ContainerError::Invalid(format!(
            "no command specified: image {} has no CMD or ENTRYPOINT; give one after the image name",
            o.image
        )));
    }

    // Env: the image's, HOSTNAME, then --env-file, then -e; PATH and HOME as Docker sets them.
    let mut env: Vec<String> = rc.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", crate::plan::DEFAULT_PATH));
    }
    set_env(&mut env, &format!("HOSTNAME={hostname}"));
    for f in &o.env_files {
        for kv in read_env_file(f)? {
            set_env(&mut env, &kv);
        }
    }
    for kv in &o.env {
        set_env(&mut env, kv);
    }
    let user = o
        .user
        .clone()
        .or_else(|| rc.user.clone())
        .unwrap_or_default();
    let ids: Ids = runtime::user::resolve(
        &user,
        view.read_string("/etc/passwd").as_deref(),
        view.read_string("/etc/group").as_deref(),
    )
    .map_err(|e| ContainerError::Invalid(e.to_string()))?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            ids.home.clone().unwrap_or_else(|| "/".into())
        ));
    }
    let cwd = o
        .workdir
        .clone()
        .or_else(|| rc.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());

    let net = match o.network.as_str() {
        "" | "private" | "bridge" | "default" => Net::Private,
        "host" => Net::Host,
        "none" => Net::Private,
        other => {
            return Err(ContainerError::Invalid(format!(
                "unknown network {other:?}: use private, host or none"
            )))
        }
    };
    let mut ports = o.ports.clone();
    if o.publish_all {
        for p in rc.exposed_ports.iter().flat_map(|m| m.keys()) {
            let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            if let Ok(n) = num.parse::<u16>() {
                if !ports
                    .iter()
                    .any(|q| q.container_port == n && q.proto == proto)
                {
                    ports.push(PortSpec {
                        host_ip: "0.0.0.0".into(),
                        host_port: 0,
                        container_port: n,
                        proto: proto.to_string(),
                    });
                }
            }
        }
    }
    if !ports.is_empty() && (net != Net::Private || o.network == "none") {
        return Err(ContainerError::Invalid(format!(
            "ports cannot be published with --network {}",
            o.network
        )));
    }
    let stop_signal = o
        .stop_signal
        .clone()
        .or_else(|| rc.stop_signal.clone())
        .unwrap_or_else(|| "SIGTERM".into());
    if crate::sys::proc::signal_number(&stop_signal).is_none() {
        return Err(ContainerError::Invalid(format!(
            "invalid stop signal {stop_signal:?}"
        )));
    }

    let d = dir(store, &id);
    let files = d.join("files");
    // Everything made from here on is removed again if a later step fails.
    // The root filesystem, the mount stubs it needs, its control groups.
    type Prepared = (Rootfs, Vec<(String, bool)>, Vec<PathBuf>);
    let prepared = (|| -> Result<Prepared, ContainerError> {
        fs::create_dir_all(&files).map_err(io_err(format!("create {}", d.display())))?;
        runtime::write_etc_files(&files, &hostname).map_err(io_err("prepare /etc files"))?;
        let stubs = runtime::missing_mount_points(&view).map_err(io_err("look up mount points"))?;
        let (kind, _) = crate::snapshotter::choose(store.root(), None);
        let snapshotter = kind.get();
        let dirs = crate::snapshotter::Dirs {
            upper: d.join(if kind == crate::snapshotter::Kind::Overlay {
                "upper"
            } else {
                "tree"
            }),
            work: d.join("work"),
            target: d.join("rootfs"),
            empty: files.join("empty"),
        };
        let active = snapshotter
            .prepare(store, &lowers, &dirs, false)
            .map_err(io_err("prepare the root filesystem"))?;
        let rootfs = snapshotter.mounts(&active);
        Ok((rootfs, stubs, cgroups(&id, o)?))
    })();
    let (rootfs, stubs, cgroups) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = fs::remove_dir_all(&d);
            return Err(e);
        }
    };
    let spec = ContainerSpec {
        runtime: Spec {
            rootfs,
            argv: argv.clone(),
            env,
            cwd,
            ids,
            hostname,
            net,
            files: vec![
                ("/etc/hosts".into(), files.join("hosts")),
                ("/etc/hostname".into(), files.join("hostname")),
                ("/etc/resolv.conf".into(), files.join("resolv.conf")),
            ],
            stubs,
            script: None,
            no_new_privs: true,
            mask_proc: true,
            tty: o.tty,
            winsize: None,
            cgroups,
            mounts: vec![],
            security: o.security.clone(),
        },
        ports,
        stop_signal,
        stop_timeout: o.stop_timeout.unwrap_or(10),
        remove: o.remove,
        command: argv,
    };
    let rec = ContainerRecord {
        id: id.clone(),
        name: name.clone(),
        image: img.manifest.digest,
        image_ref: o.image.clone(),
        created: kiln_store::store::now(),
        state: "created".into(),
    };
    let json = serde_json::to_string(&spec).expect("spec serializes");
    if let Err(e) = store.create_container(&rec, &json) {
        let _ = fs::remove_dir_all(&d);
        for cg in &spec.runtime.cgroups {
            runtime::devices::remove_cgroup(cg);
        }
        return Err(match e {
            kiln_store::Error::AlreadyExists(_) => ContainerError::NameInUse(name),
            e => e.into(),
        });
    }
    store
        .container(&id)?
        .ok_or_else(|| ContainerError::NotFound(id.clone()))
}

/// Refuses what Docker refuses, before anything is created: an environment entry with no name
/// (`-e =x`), a relative working directory, a hostname the kernel would refuse, bad limits.
fn check_flags(o: &RunOptions) -> Result<(), ContainerError> {
    for kv in &o.env {
        if kv.is_empty() || kv.starts_with('=') {
            return Err(ContainerError::Invalid(format!(
                "invalid environment variable: {kv:?}: the name is empty"
            )));
        }
    }
    if let Some(w) = &o.workdir {
        if !w.starts_with('/') {
            return Err(ContainerError::Invalid(format!(
                "the working directory {w:?} is invalid: it needs to be an absolute path"
            )));
        }
    }
    if let Some(h) = &o.hostname {
        // HOST_NAME_MAX
        if h.len() > 64 || h.is_empty() {
            return Err(ContainerError::Invalid(format!(
                "invalid hostname {h:?}: a hostname has 1 to 64 characters"
            )));
        }
    }
    check_limits(o)
}

/// Checks the resource flags before anything is created (Docker's ranges: `--cpus` from 0.01
/// to the number of CPUs, a memory limit of at least 6 MiB).
fn check_limits(o: &RunOptions) -> Result<(), ContainerError> {
    if let Some(c) = o.cpus {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if !c.is_finite() || c < 0.01 || c > ncpu {
            return Err(ContainerError::Invalid(format!(
                "invalid --cpus {c}: the range of CPUs is from 0.01 to {ncpu} (the CPUs available)"
            )));
        }
    }
    if let Some(m) = o.memory {
        if m < 6 << 20 {
            return Err(ContainerError::Invalid(format!(
                "invalid -m {m}: the minimum memory limit allowed is 6MB"
            )));
        }
    }
    Ok(())
}

/// Creates the container's control groups (cgroup v1: `/sys/fs/cgroup/<controller>/kiln/<id>`):
/// `devices` always (Docker's device list, unless `--privileged`), `memory`, `cpu` and `pids`
/// for `-m`, `--cpus` and `--pids-limit`. Whatever was created is removed again if a later one
/// fails.
fn cgroups(id: &str, o: &RunOptions) -> Result<Vec<PathBuf>, ContainerError> {
    let mut want: Vec<(&str, Vec<(&str, String)>)> = Vec::new();
    if let Some(m) = o.memory {
        want.push(("memory", vec![("memory.limit_in_bytes", m.to_string())]));
    }
    if let Some(c) = o.cpus {
        let period = 100_000u64;
        let quota = ((c * period as f64).round() as u64).max(1000);
        want.push((
            "cpu",
            vec![
                ("cpu.cfs_period_us", period.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ],
        ));
    }
    if let Some(p) = o.pids_limit {
        want.push(("pids", vec![("pids.max", p.to_string())]));
    }
    let mut out = Vec::new();
    let undo = |out: &Vec<PathBuf>| {
        for d in out {
            runtime::devices::remove_cgroup(d);
        }
    };
    if let Some(rules) = o.security.device_rules() {
        match runtime::devices::create(id, &rules) {
            Ok(d) => out.push(d),
            Err(e) => {
                return Err(ContainerError::Io {
                    context: "limit the container's devices".into(),
                    source: e,
                })
            }
        }
    }
    for (ctrl, files) in want {
        let base = Path::new(runtime::devices::CGROUP_ROOT).join(ctrl);
        if !base.join("cgroup.procs").exists() {
            undo(&out);
            return Err(ContainerError::Invalid(format!(
                "this machine has no cgroup v1 {ctrl} controller at {}: the {ctrl} limit cannot be set",
                base.display()
            )));
        }
        let dir = base.join("kiln").join(id);
        if let Err(e) = fs::create_dir_all(&dir) {
            undo(&out);
            return Err(io_err(format!("create cgroup {}", dir.display()))(e));
        }
        out.push(dir.clone());
        for (f, v) in files {
            if let Err(e) = fs::write(dir.join(f), &v) {
                undo(&out);
                return Err(io_err(format!("set {f}={v} in {}", dir.display()))(e));
            }
        }
    }
    Ok(out)
}

/// The recorded spec of a container.
pub fn spec_of(row: &ContainerRow) -> Result<ContainerSpec, ContainerError> {
    serde_json::from_str(&row.spec)
        .map_err(|e| ContainerError::Invalid(format!("container {}: bad spec: {e}", row.record.id)))
}

/// Finds a container by full ID, unique ID prefix, or name (as Docker: exact ID or name first).
pub fn resolve(store: &Store, what: &str) -> Result<ContainerRow, ContainerError> {
    let all = store.containers()?;
    if let Some(c) = all
        .iter()
        .find(|c| c.record.id == what || c.record.name == what)
    {
        return Ok(c.clone());
    }
    let hits: Vec<&ContainerRow> = all
        .iter()
        .filter(|c| c.record.id.starts_with(what))
        .collect();
    match hits.as_slice() {
        [one] if !what.is_empty() => Ok((*one).clone()),
        [] | [_] => Err(ContainerError::NotFound(what.to_string())),
        _ => Err(ContainerError::Ambiguous(what.to_string())),
    }
}

/// Whether `pid` is alive (not a zombie).
fn alive(pid: i64) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// The row, with a "running" container whose init is gone (its owner was killed) recorded as
/// exited with an unknown code: `ps` tells the truth.
pub fn refresh(store: &Store, row: ContainerRow) -> Result<ContainerRow, ContainerError> {
    if row.record.state == "running" && !row.pid.is_some_and(alive) {
        store.container_exited(&row.record.id, None, kiln_store::store::now())?;
        return Ok(store.container(&row.record.id)?.unwrap_or(row));
    }
    Ok(row)
}

/// Docker's STATUS column: `Up 3 seconds`, `Exited (0) 2 minutes ago`, `Created`.
pub fn status(row: &ContainerRow, now: i64) -> String {
    match row.record.state.as_str() {
        "running" => format!(
            "Up {}",
            timefmt::ago(row.started.unwrap_or(now), now).trim_end_matches(" ago")
        ),
        "exited" => {
            let code = row
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unknown".into());
            format!(
                "Exited ({code}) {}",
                timefmt::ago(row.finished.unwrap_or(now), now)
            )
        }
        other => {
            let mut s = other.to_string();
            if let Some(c) = s.get_mut(..1) {
                c.make_ascii_uppercase();
            }
            s
        }
    }
}

/// One line of the container's log (Docker's json-file driver format).
#[derive(Serialize, Deserialize)]
pub struct LogLine {
    pub log: String,
    pub stream: String,
    pub time: String,
}

fn now_rfc3339_nanos() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let base = timefmt::rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", base.trim_end_matches('Z'), d.subsec_nanos())
}

/// Where the container's output goes besides the log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// Detached: the log only.
    None,
    /// Foreground: also to kiln's own stdout/stderr.
    Terminal,
}

/// Runs a created container to its end: starts it, publishes its ports, writes its log, and
/// records its start and exit. Returns the exit code (Docker's: 125 setup, 126, 127, else the
/// command's; 128+N when killed by signal N).
pub fn run(
    store: &Store,
    row: &ContainerRow,
    tee: Tee,
    stdin: Stdio,
    forward_signals: bool,
) -> Result<i32, ContainerError> {
    let id = row.record.id.clone();
    let mut spec = spec_of(row)?;
    let listeners = ports::bind(&mut spec.ports).map_err(ContainerError::Invalid)?;
    // The chosen host ports (for -P and `-p 80`) are what ps shows.
    store.set_container_spec(&id, &serde_json::to_string(&spec).expect("spec serializes"))?;

    let log_path = dir(store, &id).join("log.json");
    let log = Arc::new(Mutex::new(
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("open {}", log_path.display())))?,
    ));
    // With -t the container's three streams are the slave side of a pseudo-terminal; kiln
    // relays the master side (and, in the foreground, puts its own terminal in raw mode).
    let mut pty_master: Option<fs::File> = None;
    let mut child = if spec.runtime.tty {
        use std::os::fd::AsFd;
        let (ours, theirs) =
            crate::sys::proc::socketpair().map_err(io_err("create the terminal socket"))?;
        let mut rt = spec.runtime.clone();
        rt.winsize =
            crate::sys::proc::window_size(io::stdin().as_fd()).map(|w| (w.ws_row, w.ws_col));
        drop(stdin);
        // stderr stays a pipe until the terminal replaces it: setup errors still reach kiln.
        let c = runtime::spawn_with_stdin(&rt, Stdio::from(theirs), Stdio::null(), Stdio::piped())
            .map_err(io_err("start the container"))?;
        // No terminal means the helper failed before making one; its exit code says why.
        if let Ok(master) = crate::sys::proc::recv_fd(ours.as_fd()) {
            pty_master = Some(fs::File::from(master));
        }
        c
    } else {
        runtime::spawn_with_stdin(&spec.runtime, stdin, Stdio::piped(), Stdio::piped())
            .map_err(io_err("start the container"))?
    };
    let helper = child.child.id();
    // The PID arrives once the workload is forked, the pipe's end once it has exec'd: then it
    // is "running", so `exec` and `stop` meet a container set up.
    let init = child.wait_started();
    let mut child = child.child;
    if let Some(pid) = init {
        store.container_started(&id, pid as i64, kiln_store::store::now())?;
        if forward_signals {
            std::thread::spawn(move || {
                let sigs = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
                while let Ok(sig) = crate::sys::proc::wait_signal(&sigs) {
                    let _ = crate::sys::proc::kill(pid, sig);
                }
            });
        }
        if let Ok(ns) = fs::File::open(format!("/proc/{helper}/ns/net")) {
            let _ = ports::serve(listeners, ns.into());
        }
    }
    let mut pumps = Vec::new();
    let mut raw_mode = None;
    let mut tty_reader: Option<Box<dyn io::Read + Send>> = None;
    if let Some(master) = &pty_master {
        use std::os::fd::AsFd;
        tty_reader = Some(Box::new(
            master.try_clone().map_err(io_err("dup the terminal"))?,
        ));
        if tee == Tee::Terminal {
            raw_mode = crate::sys::proc::make_raw(io::stdin().as_fd()).ok();
            let mut writer = master.try_clone().map_err(io_err("dup the terminal"))?;
            // Keyboard input to the container, until kiln ends.
            std::thread::spawn(move || {
                let _ = io::copy(&mut io::stdin().lock(), &mut writer);
            });
        }
    }
    for (reader, stream) in [
        (
            tty_reader.or_else(|| {
                child
                    .stdout
                    .take()
                    .map(|r| Box::new(r) as Box<dyn io::Read + Send>)
            }),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn io::Read + Send>),
            "stderr",
        ),
    ] {
        let Some(reader) = reader else { continue };
        let log = log.clone();
        pumps.push(std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if tee == Tee::Terminal {
                    let _ = if stream == "stdout" {
                        let mut o = io::stdout().lock();
                        o.write_all(&buf).and_then(|_| o.flush())
                    } else {
                        io::stderr().lock().write_all(&buf)
                    };
                }
                let line = LogLine {
                    log: String::from_utf8_lossy(&buf).into_owned(),
                    stream: stream.into(),
                    time: now_rfc3339_nanos(),
                };
                let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                let _ = serde_json::to_writer(&mut *f, &line);
                let _ = f.write_all(b"\n");
            }
        }));
    }
    let status = child.wait().map_err(io_err("wait for the container"))?;
    // The terminal's reader sees EOF (EIO) once every slave copy is closed; ours went to the
    // child, so only the master copies remain.
    drop(pty_master);
    for p in pumps {
        let _ = p.join();
    }
    if let Some(t) = raw_mode {
        use std::os::fd::AsFd;
        crate::sys::proc::restore_terminal(io::stdin().as_fd(), &t);
    }
    let code = runtime::exit_code(status);
    store.container_exited(&id, Some(code as i64), kiln_store::store::now())?;
    // Its control groups only matter while it runs (as Docker's): they go now, not at `rm`, so
    // a stopped container that is never removed leaves nothing in /sys/fs/cgroup.
    for cg in &spec.runtime.cgroups {
        runtime::devices::remove_cgroup(cg);
    }
    if spec.remove {
        remove(store, &id)?;
    }
    Ok(code)
}

/// Starts a created container under a detached supervisor (`kiln __kiln-supervise`) in its own
/// session, and waits until it runs (or failed to).
pub fn start_detached(store: &Store, row: &ContainerRow) -> Result<(), ContainerError> {
    let id = &row.record.id;
    let errfile = dir(store, id).join("supervisor.err");
    let err = fs::File::create(&errfile).map_err(io_err("create the supervisor's error file"))?;
    std::process::Command::new("/proc/self/exe")
        .arg(SUPERVISE_ARG)
        .arg(store.root())
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(io_err("start the supervisor"))?;
    let t = std::time::Instant::now();
    loop {
        let r = store
            .container(id)?
            .ok_or_else(|| ContainerError::NotFound(id.clone()))?;
        match r.record.state.as_str() {
            "running" => return Ok(()),
            "exited" => {
                let why = fs::read_to_string(&errfile).unwrap_or_default();
                if r.exit_code.unwrap_or(0) != 0 || !why.trim().is_empty() {
                    return Err(ContainerError::Invalid(format!(
                        "container {} exited at once (code {}){}",
                        &id[..12],
                        r.exit_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "unknown".into()),
                        if why.trim().is_empty() {
                            String::new()
                        } else {
                            format!(": {}", why.trim())
                        }
                    )));
                }
                return Ok(());
            }
            _ => {}
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(ContainerError::Invalid(format!(
                "container {} did not start within 30 s",
                &id[..12]
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The supervisor: `kiln __kiln-supervise ROOT ID`. Leaves the caller's session, runs the
/// container with its output to the log, records its end, and exits.
pub fn supervise_main(root: &Path, id: &str) -> i32 {
    // The caller's descriptors stay with the caller: a supervisor lives as long as its
    // container, and would otherwise hold them (a pipe never closing, a file kept open).
    let _ = crate::sys::proc::close_fds_from(3, true);
    let _ = crate::sys::proc::setsid();
    let result = (|| -> Result<i32, ContainerError> {
        let store = Store::open(root)?;
        let row = store
            .container(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        run(&store, &row, Tee::None, Stdio::null(), false)
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("supervise {id}: {e}");
            if let Ok(store) = Store::open(root) {
                let _ = store.container_exited(id, Some(125), kiln_store::store::now());
            }
            125
        }
    }
}

/// Stops a container: its stop signal, then SIGKILL after `timeout` seconds. Returns whether it
/// was running.
pub fn stop(
    store: &Store,
    row: &ContainerRow,
    timeout: Option<u64>,
) -> Result<bool, ContainerError> {
    let row = refresh(store, row.clone())?;
    if row.record.state != "running" {
        return Ok(false);
    }
    let spec = spec_of(&row)?;
    let Some(pid) = row.pid else { return Ok(false) };
    let sig = crate::sys::proc::signal_number(&spec.stop_signal).unwrap_or(libc::SIGTERM);
    let _ = crate::sys::proc::kill(pid as i32, sig);
    let wait = Duration::from_secs(timeout.unwrap_or(spec.stop_timeout));
    if !wait_exit(store, &row.record.id, pid, wait) {
        let _ = crate::sys::proc::kill(pid as i32, libc::SIGKILL);
        wait_exit(store, &row.record.id, pid, Duration::from_secs(10));
    }
    Ok(true)
}

/// Sends `sig` to a running container's init.
pub fn kill(store: &Store, row: &ContainerRow, sig: libc::c_int) -> Result<(), ContainerError> {
    let row = refresh(store, row.clone())?;
    match (row.record.state.as_str(), row.pid) {
        ("running", Some(pid)) => {
            crate::sys::proc::kill(pid as i32, sig).map_err(io_err("send the signal"))?;
            if sig == libc::SIGKILL {
                wait_exit(store, &row.record.id, pid, Duration::from_secs(10));
            }
            Ok(())
        }
        _ => Err(ContainerError::Invalid(format!(
            "container {} is not running",
            row.record.name
        ))),
    }
}

/// Waits until the container's owner recorded its exit (or its init is gone).
fn wait_exit(store: &Store, id: &str, pid: i64, timeout: Duration) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < timeout {
        let exited = store
            .container(id)
            .ok()
            .flatten()
            .is_none_or(|r| r.record.state != "running");
        if exited {
            return true;
        }
        if !alive(pid) {
            // The owner (supervisor or foreground kiln) records the code as soon as it reaps
            // the helper; give it time, then record the exit as unknown (it was killed too).
            let t2 = std::time::Instant::now();
            while t2.elapsed() < Duration::from_secs(3) {
                match store.container(id) {
                    Ok(Some(r)) if r.record.state == "running" => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => return true,
                }
            }
            let _ = store.container_exited(id, None, kiln_store::store::now());
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Removes a stopped container: its control groups, its directory, then its row.
pub fn remove(store: &Store, id: &str) -> Result<(), ContainerError> {
    if let Some(row) = store.container(id)? {
        if let Ok(spec) = spec_of(&row) {
            for cg in &spec.runtime.cgroups {
                runtime::devices::remove_cgroup(cg);
            }
        }
    }
    let d = dir(store, id);
    if d.exists() {
        fs::remove_dir_all(&d).map_err(io_err(format!("remove {}", d.display())))?;
    }
    store.remove_container(id)?;
    Ok(())
}

/// The container's log lines.
pub fn read_log(store: &Store, id: &str) -> Result<Vec<LogLine>, ContainerError> {
    let p = dir(store, id).join("log.json");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(format!("read {}", p.display()))(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
