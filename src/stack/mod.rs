//! Stacks and services as swarm mode runs them on one node, without a daemon: `stack deploy`
//! turns each service of a compose file into a service record, and a small supervisor process
//! per service (`supervise.rs`) keeps its replicas as the record says: it replaces a replica
//! that dies with a new container (a new task, with a new hostname: swarm's rule, where
//! compose's `restart:` runs the same container again), scales, rolls updates batch by batch
//! (`update.rs`), and holds the service's published ports, spreading connections over its ready
//! replicas (`balance.rs`, as swarm's ingress does on one node). The commands only write the
//! record and wait for the supervisor to converge.
//!
//! ```text
//! <root>/services/<name>.json   the record: the service as deployed, the one before it, state
//! <root>/services/<name>.lock   held by the supervisor while it runs (flock)
//! <root>/services/<name>.pid    the supervisor's PID, for `rm` and redeploys
//! <root>/services/<name>.log    the supervisor's own messages
//! ```
//!
//! Names are swarm's: services `<stack>_<service>`, tasks (containers)
//! `<stack>_<service>.<slot>.<task id>`, networks `<stack>_<key>`, volumes `<stack>_<key>`.

use crate::compose::Project;
use crate::container::{self, ports::PortSpec, ContainerError};
use crate::service;
use kiln_store::{ContainerRow, ContainerState, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod balance;
pub mod kube;
pub mod placement;
mod supervise;
mod tasks;
mod update;

pub use supervise::{main as supervise_main, SUPERVISE_ARG};
pub use tasks::{tasks, Task};

pub const NAMESPACE: &str = "com.docker.stack.namespace";
pub const SERVICE_NAME: &str = "com.docker.swarm.service.name";
pub const SERVICE_ID: &str = "com.docker.swarm.service.id";
pub const TASK_ID: &str = "com.docker.swarm.task.id";
pub const TASK_NAME: &str = "com.docker.swarm.task.name";
/// kiln's own: the task's slot and the version (config hash) of the service it runs.
pub const SLOT: &str = "io.kiln.service.slot";
pub const VERSION: &str = "io.kiln.service.version";

/// A service as deployed: what its replicas run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Spec {
    /// The stack's project with only this service in it (its networks, volumes, secrets and
    /// configs stay).
    pub project: Project,
    pub replicas: u32,
    /// The image's ID when deployed (a new ID is a new version).
    pub image_id: String,
    /// The config hash: replicas whose `VERSION` differs are updated.
    pub hash: String,
}

/// A service record (`<root>/services/<name>.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// 25 characters, as swarm's IDs.
    pub id: String,
    /// `<stack>_<service>`.
    pub name: String,
    pub stack: String,
    /// The service's key in the file.
    pub key: String,
    pub spec: Spec,
    /// The spec before the last update (what a rollback returns to).
    #[serde(default)]
    pub previous: Option<Spec>,
    /// Published ports (swarm's ingress mode), host ports fixed at creation.
    pub ports: Vec<PortSpec>,
    /// `updating`, `completed`, `paused`, `rollback_started`, `rollback_completed`, or empty
    /// (never updated).
    #[serde(default)]
    pub update_state: String,
    #[serde(default)]
    pub update_message: String,
    pub created: i64,
    pub updated: i64,
}

impl Record {
    /// The service as the file has it.
    pub fn service(&self) -> &crate::compose::model::Service {
        &self.spec.project.services[&self.key]
    }

    pub fn image(&self) -> String {
        service::image_name(&self.spec.project, &self.key, self.service())
    }

    /// `replicated` or `global`.
    pub fn mode(&self) -> &str {
        self.service()
            .deploy
            .mode
            .as_deref()
            .unwrap_or("replicated")
    }
}

pub(crate) fn dir(store: &Store) -> PathBuf {
    store.root().join("services")
}

fn file(store: &Store, name: &str, ext: &str) -> PathBuf {
    dir(store).join(format!("{name}.{ext}"))
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ContainerError {
    move |e| ContainerError::Invalid(format!("{what}: {e}"))
}

/// Every service record, by name.
pub fn list(store: &Store) -> Result<Vec<Record>, ContainerError> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir(store)) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".json") {
            if let Some(r) = load(store, n)? {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The record of service `name`, if there is one.
pub fn load(store: &Store, name: &str) -> Result<Option<Record>, ContainerError> {
    match fs::read(file(store, name, "json")) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            ContainerError::Invalid(format!("service {name}: its record is damaged: {e}"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read service {name}"))(e)),
    }
}

/// A service by name, ID or unique ID prefix (Docker's "no such service" otherwise).
pub fn resolve(store: &Store, what: &str) -> Result<Record, ContainerError> {
    if let Some(r) = load(store, what).ok().flatten() {
        return Ok(r);
    }
    let found: Vec<Record> = list(store)?
        .into_iter()
        .filter(|r| !what.is_empty() && r.id.starts_with(what))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => Err(ContainerError::NotFound(format!("service {what}"))),
        _ => Err(ContainerError::Invalid(format!(
            "service {what} is ambiguous: {} services match",
            found.len()
        ))),
    }
}

/// Writes a record whole (a temp file renamed over the old one).
pub fn save(store: &Store, r: &Record) -> Result<(), ContainerError> {
    let d = dir(store);
    fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
    let tmp = file(store, &r.name, "json.tmp");
    fs::write(
        &tmp,
        serde_json::to_vec_pretty(r).expect("a record serializes"),
    )
    .map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, file(store, &r.name, "json"))
        .map_err(io_err(format!("save service {}", r.name)))
}

/// A new random ID of `n` characters from swarm's alphabet (lowercase base 36).
pub(crate) fn new_id(n: usize) -> Result<String, ContainerError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)
        .map_err(|e| ContainerError::Invalid(format!("no random bytes for an ID: {e}")))?;
    const ABC: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    // 252 is the largest multiple of 36 below 256; a slight bias is harmless for names.
    Ok(b.iter().map(|x| ABC[*x as usize % 36] as char).collect())
}

/// What `deploy` and `rm` did, one line each: (kind, name, what).
pub type Event = service::Event;

/// What a service's spec would be from `p` now (its image resolved to an ID).
fn spec_of(store: &Store, p: &Project, key: &str) -> Result<(Spec, Vec<PortSpec>), ContainerError> {
    let s = &p.services[key];
    let bad = |m: String| ContainerError::Invalid(format!("service {key}: {m}"));
    let Some(image) = &s.image else {
        return Err(bad(
            "image is required: stack deploy does not build (build it first, with kiln compose build, and name it in image:)".into(),
        ));
    };
    placement::check(&s.deploy.placement_constraints).map_err(bad)?;
    let image_id = crate::image::resolve(store, image)
        .map(|r| r.image.id().to_string())
        .map_err(|e| bad(format!("image {image}: {e}")))?;
    let mut ports = Vec::new();
    for p in &s.ports {
        let spec = PortSpec::parse(p).map_err(bad)?;
        if spec.proto != "tcp" {
            return Err(bad(format!(
                "published port {p}: kiln's service ports are TCP only (publish UDP from a container with kiln run -p)"
            )));
        }
        ports.push(spec);
    }
    let mut only = p.clone();
    only.services = BTreeMap::from([(key.to_string(), s.clone())]);
    let replicas = match s.deploy.mode.as_deref() {
        Some("global") => 1,
        _ => s.deploy.replicas.unwrap_or(1),
    };
    let hash = service::config_hash(p, key, s, &image_id);
    Ok((
        Spec {
            project: only,
            replicas,
            image_id,
            hash,
        },
        ports,
    ))
}

/// Host ports swarm would pick for a published port without one: its dynamic range, the first
/// not taken by another service or in use on the host.
fn pick_port(store: &Store) -> Result<u16, ContainerError> {
    let taken: Vec<u16> = list(store)?
        .iter()
        .flat_map(|r| r.ports.iter().map(|p| p.host_port))
        .collect();
    (30000..=32767)
        .find(|p| !taken.contains(p) && std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok())
        .ok_or_else(|| ContainerError::Invalid("no free port in 30000-32767".into()))
}

/// `stack deploy`: creates the stack's networks and services, or updates the services that
/// changed (their supervisors roll the replicas). With `prune`, services of the stack that are
/// gone from the files are removed.
pub fn deploy(
    store: &Store,
    p: &Project,
    prune: bool,
    event: &mut dyn FnMut(Event),
) -> Result<(), ContainerError> {
    let stack = &p.name;
    // Everything is checked before anything changes.
    let order =
        crate::compose::start_order(p).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    let mut specs = Vec::new();
    for key in &order {
        specs.push((key.clone(), spec_of(store, p, key)?));
    }
    service::create_networks(store, p, (NAMESPACE, stack), event)?;
    for (key, (spec, mut ports)) in specs {
        let name = format!("{stack}_{key}");
        let now = kiln_store::store::now();
        let record = match load(store, &name)? {
            Some(mut r) => {
                if r.spec.hash != spec.hash {
                    r.previous = Some(r.spec.clone());
                    r.update_state = "updating".into();
                    r.update_message = "update in progress".into();
                }
                r.spec = spec;
                let same_ports = ports.iter().all(|p| {
                    r.ports.iter().any(|q| {
                        q.container_port == p.container_port
                            && (p.host_port == 0 || p.host_port == q.host_port)
                    })
                }) && ports.len() == r.ports.len();
                if !same_ports {
                    for p in ports.iter_mut().filter(|p| p.host_port == 0) {
                        p.host_port = pick_port(store)?;
                    }
                    // The supervisor binds its ports once: a new one takes the new ports.
                    supervise::stop(store, &name)?;
                    r.ports = ports;
                }
                r.updated = now;
                event(("Service", name.clone(), "Updating"));
                r
            }
            None => {
                for p in ports.iter_mut().filter(|p| p.host_port == 0) {
                    p.host_port = pick_port(store)?;
                }
                event(("Service", name.clone(), "Creating"));
                Record {
                    id: new_id(25)?,
                    name: name.clone(),
                    stack: stack.clone(),
                    key: key.clone(),
                    spec,
                    previous: None,
                    ports,
                    update_state: String::new(),
                    update_message: String::new(),
                    created: now,
                    updated: now,
                }
            }
        };
        let is_new = record.created == now && load(store, &name)?.is_none();
        save(store, &record)?;
        if let Err(e) = supervise::ensure(store, &name) {
            // A new service whose supervisor could not start (its port is taken) leaves nothing.
            if is_new {
                remove(store, &name)?;
            }
            return Err(e);
        }
    }
    if prune {
        for r in list(store)? {
            if &r.stack == stack && !p.services.contains_key(&r.key) {
                remove(store, &r.name)?;
                event(("Service", r.name, "Removing"));
            }
        }
    }
    Ok(())
}

/// Removes a service: its supervisor first (so nothing replaces what goes), then its tasks,
/// stopped at once, then its files.
pub fn remove(store: &Store, name: &str) -> Result<(), ContainerError> {
    let _ = fs::remove_file(file(store, name, "json"));
    supervise::stop(store, name)?;
    let ts = tasks(store, name)?;
    std::thread::scope(|sc| {
        for t in &ts {
            sc.spawn(|| tasks::stop(store, t));
        }
    });
    for t in &ts {
        container::remove(store, &t.row.record.id)?;
    }
    for ext in ["lock", "pid", "log", "status"] {
        let _ = fs::remove_file(file(store, name, ext));
    }
    Ok(())
}

/// `stack rm`: the stack's services, then its networks. Returns false when nothing was there.
pub fn remove_stack(
    store: &Store,
    stack: &str,
    event: &mut dyn FnMut(Event),
) -> Result<bool, ContainerError> {
    let mut found = false;
    for r in list(store)?.into_iter().filter(|r| r.stack == stack) {
        event(("Service", r.name.clone(), "Removing"));
        remove(store, &r.name)?;
        found = true;
    }
    for n in store.networks().list()? {
        let labels: BTreeMap<String, String> = serde_json::from_str(&n.labels).unwrap_or_default();
        if labels.get(NAMESPACE).map(String::as_str) == Some(stack) {
            event(("Network", n.name.clone(), "Removing"));
            crate::network::remove(store, &n.id)?;
            found = true;
        }
    }
    Ok(found)
}

/// Every service's record and supervisor gone (`system reset`, which then kills every
/// container, tasks included).
pub fn reset(store: &Store) -> Result<(), ContainerError> {
    for r in list(store)? {
        let _ = fs::remove_file(file(store, &r.name, "json"));
        supervise::stop(store, &r.name)?;
    }
    Ok(())
}

/// Starts the supervisor of every service that has none (`system restore`, after a reboot).
pub fn restore(store: &Store) -> Result<Vec<String>, ContainerError> {
    let mut out = Vec::new();
    for r in list(store)? {
        if !supervise::running(store, &r.name) {
            supervise::ensure(store, &r.name)?;
            out.push(r.name);
        }
    }
    Ok(out)
}

/// `service scale NAME=N`.
pub fn scale(store: &Store, name: &str, replicas: u32) -> Result<Record, ContainerError> {
    let mut r = resolve(store, name)?;
    if r.mode() == "global" {
        return Err(ContainerError::Invalid(format!(
            "{}: scale can only be used with replicated mode",
            r.name
        )));
    }
    r.spec.replicas = replicas;
    r.updated = kiln_store::store::now();
    save(store, &r)?;
    supervise::ensure(store, &r.name)?;
    Ok(r)
}

/// `service update [--image IMAGE] [--replicas N]`: a new image (or a new ID for the same name)
/// is a new version, which the supervisor rolls out.
pub fn update(
    store: &Store,
    name: &str,
    image: Option<&str>,
    replicas: Option<u32>,
) -> Result<Record, ContainerError> {
    let mut r = resolve(store, name)?;
    let mut spec = r.spec.clone();
    if let Some(n) = replicas {
        spec.replicas = n;
    }
    let key = r.key.clone();
    let svc = spec
        .project
        .services
        .get_mut(&key)
        .expect("a record holds its service");
    if let Some(i) = image {
        svc.image = Some(i.to_string());
    }
    let img = svc.image.clone().unwrap_or_default();
    spec.image_id = crate::image::resolve(store, &img)
        .map(|x| x.image.id().to_string())
        .map_err(|e| ContainerError::Invalid(format!("image {img}: {e}")))?;
    spec.hash = service::config_hash(
        &spec.project,
        &key,
        &spec.project.services[&key],
        &spec.image_id,
    );
    if spec.hash != r.spec.hash {
        r.previous = Some(r.spec.clone());
        r.update_state = "updating".into();
        r.update_message = "update in progress".into();
    }
    r.spec = spec;
    r.updated = kiln_store::store::now();
    save(store, &r)?;
    supervise::ensure(store, &r.name)?;
    Ok(r)
}

/// What a service's supervisor says of its tasks (`<name>.status`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Tasks (container IDs) taking connections: ready, and not on their way out.
    pub serving: Vec<String>,
    /// Tasks the supervisor stopped (updated, scaled down, unhealthy).
    pub retired: Vec<String>,
}

/// The service's status as its supervisor last wrote it.
pub fn status(store: &Store, name: &str) -> Status {
    fs::read(file(store, name, "status"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// How many of a service's replicas run its current version and take connections, and how
/// many it wants.
pub fn progress(store: &Store, r: &Record) -> Result<(u32, u32), ContainerError> {
    Ok(progress_of(store, r, &tasks(store, &r.name)?))
}

/// `progress` over tasks already listed.
fn progress_of(store: &Store, r: &Record, ts: &[Task]) -> (u32, u32) {
    let serving = status(store, &r.name).serving;
    let running = ts
        .iter()
        .filter(|t| {
            t.slot <= r.spec.replicas
                && t.version == r.spec.hash
                && t.running()
                && serving.contains(&t.row.record.id)
        })
        .count() as u32;
    (running.min(r.spec.replicas), r.spec.replicas)
}

/// Waits until the service runs its current version on every replica and no update is in
/// progress; returns the record as it ended (a paused or rolled back update is the caller's to
/// report). `tick` hears (running, desired) as they change.
pub fn wait_converged(
    store: &Store,
    name: &str,
    timeout: Duration,
    tick: &mut dyn FnMut(u32, u32),
) -> Result<Record, ContainerError> {
    let t = Instant::now();
    let mut last = (u32::MAX, 0);
    loop {
        let r = resolve(store, name)?;
        let ts = tasks(store, &r.name)?;
        let (running, desired) = progress_of(store, &r, &ts);
        if (running, desired) != last {
            tick(running, desired);
            last = (running, desired);
        }
        let extra = ts
            .iter()
            .any(|t| t.slot > r.spec.replicas && t.row.record.state == ContainerState::Running);
        let settled = !matches!(r.update_state.as_str(), "updating" | "rollback_started");
        if settled && (running == desired && !extra || r.update_state == "paused") {
            return Ok(r);
        }
        if t.elapsed() > timeout {
            return Err(ContainerError::Invalid(format!(
                "service {}: {running} of {desired} replicas running after {} s (see kiln service ps {})",
                r.name,
                timeout.as_secs(),
                r.name
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The containers of a stack's services, any state (`stack ps`).
pub fn stack_tasks(store: &Store, stack: &str) -> Result<Vec<Task>, ContainerError> {
    let mut out = Vec::new();
    for r in list(store)?.into_iter().filter(|r| r.stack == stack) {
        out.extend(tasks(store, &r.name)?);
    }
    Ok(out)
}

/// Whether a container is a service's task.
pub fn is_task(row: &ContainerRow) -> bool {
    service::labels(row).contains_key(SERVICE_NAME)
}
