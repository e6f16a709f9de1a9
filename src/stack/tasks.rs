//! A service's tasks: the containers that run its replicas, one slot each; a slot's newest task
//! is its current one, the older ones its history (`service ps` shows them as Shutdown or
//! Failed, as swarm keeps them).

use super::{Record, Spec, NAMESPACE, SERVICE_ID, SERVICE_NAME, SLOT, TASK_ID, TASK_NAME, VERSION};

/// kiln's own: when the task was made, in nanoseconds.
const MADE: &str = "io.kiln.service.made";
use crate::container::{self, ContainerError};
use crate::service;
use kiln_store::{ContainerRow, ContainerState, Store};
use std::net::Ipv4Addr;

/// One task.
#[derive(Clone, Debug)]
pub struct Task {
    pub row: ContainerRow,
    /// The service it belongs to (`<stack>_<service>`).
    pub service: String,
    pub slot: u32,
    /// 25 characters.
    pub id: String,
    /// The config hash of the service version it runs.
    pub version: String,
    /// Its address on the service's first network.
    pub ip: Option<Ipv4Addr>,
    /// Whether its health check says unhealthy (never, without one).
    pub unhealthy: bool,
    /// Whether it has a health check that has not said healthy yet.
    pub health_starting: bool,
    /// When it was made, in nanoseconds (orders a slot's tasks).
    made: u128,
}

impl Task {
    pub fn running(&self) -> bool {
        self.row.record.state == ContainerState::Running
    }
}

/// Service `name`'s tasks, oldest first.
pub fn tasks(store: &Store, name: &str) -> Result<Vec<Task>, ContainerError> {
    let mut out = Vec::new();
    for row in store.containers().list()? {
        let Ok(spec) = container::spec_of(&row) else {
            continue;
        };
        if spec.labels.get(SERVICE_NAME).map(String::as_str) != Some(name) {
            continue;
        }
        let row = container::refresh(store, row)?;
        let ip = crate::network::endpoints(store, &row.record.id, &spec.networks)
            .ok()
            .and_then(|e| e.first().map(|e| e.ip));
        let health = spec
            .health
            .as_ref()
            .map(|_| container::health::read(&container::dir(store, &row.record.id)));
        let has_check = health.is_some();
        let status = health.flatten().map(|h| h.status);
        out.push(Task {
            service: name.to_string(),
            slot: spec
                .labels
                .get(SLOT)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            id: spec.labels.get(TASK_ID).cloned().unwrap_or_default(),
            version: spec.labels.get(VERSION).cloned().unwrap_or_default(),
            ip,
            unhealthy: status.as_deref() == Some("unhealthy"),
            health_starting: has_check && status.as_deref() != Some("healthy"),
            made: spec
                .labels
                .get(MADE)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            row,
        });
    }
    out.sort_by_key(|t| (t.made, t.row.record.id.clone()));
    Ok(out)
}

/// Creates and starts a task of `spec` in `slot`.
pub fn create(store: &Store, r: &Record, spec: &Spec, slot: u32) -> Result<(), ContainerError> {
    let p = &spec.project;
    let key = &r.key;
    let s = &p.services[key];
    let mut o = service::run_options(p, key, s, slot, &spec.hash)?;
    let id = super::new_id(25)?;
    let made = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    o.name = Some(format!("{}.{slot}.{id}", r.name));
    for l in [
        service::PROJECT,
        service::SERVICE,
        service::NUMBER,
        service::HASH,
    ] {
        o.labels.remove(l);
    }
    for (k, v) in [
        (NAMESPACE, r.stack.clone()),
        (SERVICE_NAME, r.name.clone()),
        (SERVICE_ID, r.id.clone()),
        (TASK_ID, id),
        (TASK_NAME, format!("{}.{slot}", r.name)),
        (SLOT, slot.to_string()),
        (VERSION, spec.hash.clone()),
        (MADE, made.to_string()),
    ] {
        o.labels.insert(k.into(), v);
    }
    // The service's ports are its supervisor's; the supervisor replaces what ends.
    o.ports.clear();
    o.restart = container::restart::RestartPolicy::No;
    o.network_aliases.push(r.name.clone());
    let row = container::create(store, &o)?;
    for (net, aliases) in s.networks.iter().skip(1) {
        let n = crate::network::resolve(store, &service::network_name(p, net))?;
        let mut a = vec![key.clone(), r.name.clone()];
        a.extend(aliases.iter().cloned());
        container::connect(store, &row, &n, &a, None)?;
    }
    container::start_detached(store, &row)
}

/// Stops a task (its stop signal, then SIGKILL after its grace period).
pub fn stop(store: &Store, t: &Task) {
    if t.running() {
        let _ = container::stop(store, &t.row, None);
    }
}

/// Whether a task may take connections: running, healthy if it has a check, and (for a
/// service with published ports) accepting on the first one's target port.
pub fn ready(r: &Record, t: &Task) -> bool {
    if !t.running() || t.unhealthy || t.health_starting {
        return false;
    }
    match (r.ports.first(), t.ip) {
        (None, _) => true,
        (Some(p), Some(ip)) => crate::network::rootless::connect(
            (ip, p.container_port).into(),
            std::time::Duration::from_millis(200),
        )
        .is_ok(),
        (Some(_), None) => false,
    }
}
