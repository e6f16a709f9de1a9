//! Containers: creating one from an image, running it (in the foreground, or under a detached
//! supervisor), and its lifecycle (stop, kill, remove), as docs/ARCHITECTURE.md "A run" describes.
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
pub mod health;
pub mod inspect;
pub mod ports;
pub mod restart;
pub mod stats;
pub mod volume;

use crate::image::{self, ImageError};
use crate::runtime::{self, Ids, Net, Rootfs, Spec};
use crate::timefmt;
use kiln_store::ContainerState;
use kiln_store::{ContainerRecord, ContainerRow, Store};
use ports::PortSpec;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod connect;
pub use connect::*;
mod create;
pub use create::*;
mod lifecycle;
pub use lifecycle::*;
mod logtail;
pub use logtail::LogTail;

/// The hidden argv[1] of the detached supervisor: `kiln __kiln-supervise ROOT ID`.
pub const SUPERVISE_ARG: &str = "__kiln-supervise";

/// A container problem, naming the container or image.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("no such volume: {0}")]
    NoSuchVolume(String),
    #[error("container name {0:?} matches several containers; use more of the ID")]
    Ambiguous(String),
    #[error("the container name {0:?} is already in use")]
    NameInUse(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
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
    /// `--network`: bridge (the default network), a user network's name or ID, host, none, or
    /// private (loopback only, ports through kiln's forwarder).
    pub network: String,
    /// `--network-alias` (user networks).
    pub network_aliases: Vec<String>,
    /// `--ip` (user networks).
    pub ip: Option<std::net::Ipv4Addr>,
    /// `--add-host NAME:IP`.
    pub add_hosts: Vec<String>,
    /// `--dns`.
    pub dns: Vec<String>,
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
    /// `-v`, `--mount`, `--tmpfs`, `--volumes-from`, in order.
    pub mounts: Vec<volume::MountRequest>,
    /// `--restart`.
    pub restart: restart::RestartPolicy,
    /// `--health-*` (what they leave empty comes from the image).
    pub health: health::HealthConfig,
    /// `--no-healthcheck`.
    pub no_healthcheck: bool,
    /// `--init`: a reaper as PID 1.
    pub init: bool,
    /// `-l`/`--label`: the container's own labels (over the image's).
    pub labels: std::collections::BTreeMap<String, String>,
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
    /// Volumes, bind mounts and tmpfs mounts (`volume::users` reads them from here).
    #[serde(default)]
    pub mounts: Vec<volume::MountSpec>,
    /// When the supervisor runs it again.
    #[serde(default)]
    pub restart: restart::RestartPolicy,
    /// `-m`, `--cpus`, `--pids-limit`: what its control groups are made with (again at each
    /// start: they go when it exits).
    #[serde(default)]
    pub limits: Limits,
    /// The health check its owner runs while it is up.
    #[serde(default)]
    pub health: Option<health::HealthConfig>,
    /// `--network` as given (empty in specs older than networks: then `runtime.net` says).
    #[serde(default)]
    pub network_mode: String,
    /// The bridge networks it is attached to; its addresses are the store's endpoints.
    #[serde(default)]
    pub networks: Vec<crate::network::Attached>,
    /// `--dns` servers (aardvark-dns's upstream on user networks).
    #[serde(default)]
    pub dns: Vec<String>,
    /// The image's labels with `--label`s over them (Docker's Config.Labels).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A container's resource limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<u64>,
    /// CPUs (a CFS quota).
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

/// The container's directory.
pub fn dir(store: &Store, id: &str) -> PathBuf {
    store.root().join("containers").join(id)
}

pub(crate) fn new_id() -> Result<String, ContainerError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| ContainerError::Invalid(format!("no random bytes for an ID: {e}")))?;
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
        .containers()
        .list()?
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

/// The recorded spec of a container.
pub fn spec_of(row: &ContainerRow) -> Result<ContainerSpec, ContainerError> {
    serde_json::from_str(&row.spec)
        .map_err(|e| ContainerError::Invalid(format!("container {}: bad spec: {e}", row.record.id)))
}

/// Finds a container by full ID, unique ID prefix, or name (as Docker: exact ID or name first).
pub fn resolve(store: &Store, what: &str) -> Result<ContainerRow, ContainerError> {
    let all = store.containers().list()?;
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

/// The lock a container's owner (the foreground `kiln run`, or the detached supervisor) holds
/// from the start until it has recorded the exit: while it is held, an exit the owner is about
/// to record is not guessed by anyone else.
fn owner_lock_file(store: &Store, id: &str) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir(store, id).join("owner.lock"))
}

/// Whether the container's owner is still at work (holds its lock).
fn owner_busy(store: &Store, id: &str) -> bool {
    match owner_lock_file(store, id) {
        Ok(f) => matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// The row, with a "running" container whose init is gone and whose owner is gone too (killed
/// before it could record the exit) recorded as exited with an unknown code: `ps` tells the
/// truth.
pub fn refresh(store: &Store, row: ContainerRow) -> Result<ContainerRow, ContainerError> {
    if row.record.state == ContainerState::Running
        && !row.pid.is_some_and(alive)
        && !owner_busy(store, &row.record.id)
    {
        // Its owner died before its teardown: the namespace handle still holds the network.
        if let Err(e) = crate::network::teardown(store.root(), &row.record.id) {
            tracing::warn!("container {}: network teardown: {e}", row.record.name);
        }
        store
            .containers()
            .exited(&row.record.id, None, kiln_store::store::now())?;
        return Ok(store.containers().get(&row.record.id)?.unwrap_or(row));
    }
    Ok(row)
}

/// Docker's STATUS column: `Up 3 seconds (healthy)`, `Exited (0) 2 minutes ago`, `Created`.
pub fn status(store: &Store, row: &ContainerRow, now: i64) -> String {
    match row.record.state {
        ContainerState::Running => {
            let up = format!(
                "Up {}",
                timefmt::ago(row.started.unwrap_or(now), now).trim_end_matches(" ago")
            );
            match health::read(&dir(store, &row.record.id)) {
                Some(h) if h.status == "starting" => format!("{up} (health: starting)"),
                Some(h) => format!("{up} ({})", h.status),
                None => up,
            }
        }
        ContainerState::Exited => {
            let code = row
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unknown".into());
            format!(
                "Exited ({code}) {}",
                timefmt::ago(row.finished.unwrap_or(now), now)
            )
        }
        ContainerState::Restarting => {
            let code = row
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unknown".into());
            format!(
                "Restarting ({code}) {}",
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
