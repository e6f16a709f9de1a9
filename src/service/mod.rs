//! Services: a compose project's services made real as containers, networks and volumes, and
//! kept as the files say (`kiln compose up` converges: what already matches stays). The model
//! comes from `crate::compose`; this room only turns it into containers.
//!
//! Names and labels are docker compose v2's: networks `<project>_<key>` (`<project>_default`
//! for services that name none), named volumes `<project>_<key>`, containers
//! `<project>-<service>-<n>`, each labelled `com.docker.compose.project`, `.service`,
//! `.container-number` and `.config-hash` (a hash of the service as read, so `up` recreates a
//! container exactly when its service changed).

use crate::compose::model::Service;
use crate::compose::Project;
use crate::container::{self, ContainerError};
use crate::network;
use kiln_store::{ContainerRow, ContainerState, Store};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod options;
pub use options::config_hash;
use options::with_service;
pub use options::{dependencies, image_name, one_off, run_options};

pub const PROJECT: &str = "com.docker.compose.project";
pub const SERVICE: &str = "com.docker.compose.service";
pub const NUMBER: &str = "com.docker.compose.container-number";
pub const HASH: &str = "com.docker.compose.config-hash";
/// On `compose run`'s one-off containers: `ps`, `logs` and `up` leave them out.
pub const ONEOFF: &str = "com.docker.compose.oneoff";

#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// `--scale SERVICE=N`, over `deploy.replicas`.
    pub scale: BTreeMap<String, u32>,
    /// How long a `service_healthy` dependency may take.
    pub wait: Option<Duration>,
    /// Remove the project's containers whose service is no longer in the files (else each is
    /// reported as an `Orphan` event).
    pub remove_orphans: bool,
    /// Only these services (and nothing else: no orphan check); all when None.
    pub only: Option<Vec<String>>,
}

/// What `up` and `down` did, one line each: (kind, name, what), as `Container app-web-1
/// Started`.
pub type Event = (&'static str, String, &'static str);

/// A project's containers (any state), from their labels.
pub fn containers(store: &Store, project: &str) -> Result<Vec<ContainerRow>, ContainerError> {
    let mut out = Vec::new();
    for row in store.containers().list()? {
        let row = container::refresh(store, row)?;
        if labels(&row).get(PROJECT).map(String::as_str) == Some(project) {
            out.push(row);
        }
    }
    Ok(out)
}

/// Whether a container is a one-off of `compose run`.
pub fn is_one_off(row: &ContainerRow) -> bool {
    labels(row).contains_key(ONEOFF)
}

pub fn labels(row: &ContainerRow) -> BTreeMap<String, String> {
    container::spec_of(row)
        .map(|s| s.labels)
        .unwrap_or_default()
}

/// The network keys the project's services use, each once.
fn network_keys(p: &Project) -> Vec<String> {
    let mut keys: Vec<String> = p
        .services
        .values()
        .flat_map(|s| s.networks.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The project's containers, their services in `order`; containers of services not in it
/// (gone from the files) last.
fn in_order(
    store: &Store,
    p: &Project,
    order: &[String],
) -> Result<Vec<ContainerRow>, ContainerError> {
    let mut rows = containers(store, &p.name)?;
    rows.sort_by_key(|r| {
        let l = labels(r);
        order
            .iter()
            .position(|s| Some(s) == l.get(SERVICE))
            .unwrap_or(usize::MAX)
    });
    Ok(rows)
}

/// The network a service's network key stands for on the machine.
pub fn network_name(p: &Project, key: &str) -> String {
    match p.networks.get(key) {
        Some(d) => d.name.clone(),
        None => format!("{}_{key}", p.name),
    }
}

/// Creates the networks the project's services use that do not exist yet, labelled with
/// `owner` (compose's project label, or a stack's namespace).
pub fn create_networks(
    store: &Store,
    p: &Project,
    owner: (&str, &str),
    event: &mut dyn FnMut(Event),
) -> Result<(), ContainerError> {
    for key in network_keys(p) {
        let name = network_name(p, &key);
        let def = p.networks.get(key.as_str());
        if store.networks().by_name(&name)?.is_some() {
            continue;
        }
        if def.is_some_and(|d| d.external) {
            return Err(ContainerError::Invalid(format!(
                "network {name} declared as external, but could not be found: create it with kiln network create {name}"
            )));
        }
        let mut labels = vec![
            format!("{}={}", owner.0, owner.1),
            format!("com.docker.compose.network={key}"),
        ];
        if let Some(d) = def {
            labels.extend(d.labels.iter().map(|(k, v)| format!("{k}={v}")));
        }
        network::create(
            store,
            &network::CreateOptions {
                name: name.clone(),
                subnet: def.and_then(|d| d.subnet.clone()),
                gateway: None,
                internal: def.is_some_and(|d| d.internal),
                labels,
            },
        )?;
        event(("Network", name, "Created"));
    }
    Ok(())
}

/// Creates what is missing and (re)starts what differs from the files, service by service in
/// dependency order; extra replicas go. `event` hears each step.
pub fn up(
    store: &Store,
    p: &Project,
    o: &UpOptions,
    event: &mut dyn FnMut(Event),
) -> Result<(), ContainerError> {
    let order =
        crate::compose::start_order(p).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    create_networks(store, p, (PROJECT, &p.name), event)?;
    let existing = containers(store, &p.name)?;
    for row in existing.iter().filter(|_| o.only.is_none()) {
        let l = labels(row);
        if l.get(SERVICE)
            .is_some_and(|svc| !p.services.contains_key(svc))
        {
            if o.remove_orphans {
                remove(store, row)?;
                event(("Container", row.record.name.clone(), "Removed"));
            } else {
                event(("Orphan", row.record.name.clone(), "Found"));
            }
        }
    }
    for svc in &order {
        if o.only.as_ref().is_some_and(|only| !only.contains(svc)) {
            continue;
        }
        let s = &p.services[svc];
        wait_for_dependencies(store, p, s, o)?;
        let n = o.scale.get(svc).copied().or(s.deploy.replicas).unwrap_or(1);
        // The image as it is now: a rebuilt or pulled image recreates the containers too.
        let image_id = crate::image::resolve(store, &image_name(p, svc, s))
            .map(|r| r.image.id().to_string())
            .unwrap_or_default();
        let hash = config_hash(p, svc, s, &image_id);
        for i in 1..=n {
            let name = format!("{}-{svc}-{i}", p.name);
            let current = existing.iter().find(|r| r.record.name == name);
            if let Some(row) = current {
                if labels(row).get(HASH) == Some(&hash) {
                    if row.record.state == ContainerState::Running {
                        event(("Container", name, "Running"));
                    } else {
                        launch(store, row)?;
                        event(("Container", name, "Started"));
                    }
                    continue;
                }
                remove(store, row)?;
            }
            let opts = run_options(p, svc, s, i, &hash)?;
            let row = container::create(store, &opts)?;
            for (key, aliases) in s.networks.iter().skip(1) {
                let net = network::resolve(store, &network_name(p, key))?;
                container::connect(store, &row, &net, &with_service(svc, aliases), None)?;
            }
            event((
                "Container",
                name.clone(),
                if current.is_some() {
                    "Recreated"
                } else {
                    "Created"
                },
            ));
            launch(store, &row)?;
            event(("Container", name, "Started"));
        }
        // Replicas above the count go, highest first.
        let mut extra: Vec<&ContainerRow> = existing
            .iter()
            .filter(|r| {
                let l = labels(r);
                l.get(SERVICE) == Some(svc)
                    && l.get(NUMBER)
                        .and_then(|x| x.parse::<u32>().ok())
                        .is_some_and(|k| k > n)
            })
            .collect();
        extra.sort_by_key(|r| {
            std::cmp::Reverse(labels(r).get(NUMBER).and_then(|x| x.parse::<u32>().ok()))
        });
        for row in extra {
            remove(store, row)?;
            event(("Container", row.record.name.clone(), "Removed"));
        }
    }
    Ok(())
}

/// Stops and removes the project's containers (in reverse dependency order), then its networks;
/// named volumes too with `volumes`.
pub fn down(
    store: &Store,
    p: &Project,
    volumes: bool,
    event: &mut dyn FnMut(Event),
) -> Result<(), ContainerError> {
    let mut order =
        crate::compose::start_order(p).unwrap_or_else(|_| p.services.keys().cloned().collect());
    order.reverse();
    for row in &in_order(store, p, &order)? {
        let name = row.record.name.clone();
        if row.record.state == ContainerState::Running {
            container::stop(store, row, None)?;
            event(("Container", name.clone(), "Stopped"));
        }
        container::remove(store, &row.record.id)?;
        event(("Container", name, "Removed"));
    }
    for key in network_keys(p) {
        if p.networks.get(&key).is_some_and(|d| d.external) {
            continue;
        }
        let name = network_name(p, &key);
        if store.networks().by_name(&name)?.is_some() {
            network::remove(store, &name)?;
            event(("Network", name, "Removed"));
        }
    }
    if volumes {
        for (key, d) in &p.volumes {
            if d.external {
                continue;
            }
            match container::volume::remove(store, &d.name) {
                Ok(()) => event(("Volume", d.name.clone(), "Removed")),
                Err(ContainerError::NoSuchVolume(_)) => {}
                Err(e) => return Err(ContainerError::Invalid(format!("volume {key}: {e}"))),
            }
        }
    }
    Ok(())
}

/// Stops the project's running containers, dependents first (`compose stop`, and `up` in the
/// foreground at Ctrl-C).
pub fn stop(
    store: &Store,
    p: &Project,
    event: &mut dyn FnMut(Event),
) -> Result<(), ContainerError> {
    let mut order =
        crate::compose::start_order(p).unwrap_or_else(|_| p.services.keys().cloned().collect());
    order.reverse();
    for row in in_order(store, p, &order)?
        .iter()
        .filter(|r| r.record.state == ContainerState::Running)
    {
        container::stop(store, row, None)?;
        event(("Container", row.record.name.clone(), "Stopped"));
    }
    Ok(())
}

/// Starts the project's stopped containers, dependencies first (`compose start`).
pub fn start(
    store: &Store,
    p: &Project,
    event: &mut dyn FnMut(Event),
) -> Result<(), ContainerError> {
    let order =
        crate::compose::start_order(p).map_err(|e| ContainerError::Invalid(e.to_string()))?;
    for row in in_order(store, p, &order)?
        .iter()
        .filter(|r| r.record.state != ContainerState::Running)
    {
        launch(store, row)?;
        event(("Container", row.record.name.clone(), "Started"));
    }
    Ok(())
}

/// Starts a container under its supervisor. One whose command ran and already ended (a
/// one-shot task, or a failing one: its exit code says which) is started all the same, as
/// docker compose sees it; only a container that could not start at all is an error.
fn launch(store: &Store, row: &ContainerRow) -> Result<(), ContainerError> {
    let t0 = kiln_store::store::now();
    // As `kiln start`: an exited container is made "created" again first.
    match container::restart::start(store, row) {
        Ok(()) => Ok(()),
        Err(e) => match store.containers().get(&row.record.id)? {
            Some(r) if r.started.is_some_and(|s| s >= t0) => Ok(()),
            _ => Err(e),
        },
    }
}

fn remove(store: &Store, row: &ContainerRow) -> Result<(), ContainerError> {
    if row.record.state == ContainerState::Running {
        container::stop(store, row, None)?;
    }
    container::remove(store, &row.record.id)
}

/// Waits for what `s` depends on: healthy for `service_healthy`, exited 0 for
/// `service_completed_successfully` (started is enough otherwise: the order saw to it).
/// `up --wait`: waits until every container of the project runs, healthy where it has a
/// health check; one that exits or turns unhealthy is an error naming it.
pub fn wait_ready(store: &Store, p: &Project, limit: Duration) -> Result<(), ContainerError> {
    let t = Instant::now();
    loop {
        let mut pending = None;
        for r in containers(store, &p.name)?
            .iter()
            .filter(|r| !is_one_off(r))
        {
            let health = container::spec_of(r)?
                .health
                .and_then(|_| container::health::read(&container::dir(store, &r.record.id)))
                .map(|h| h.status);
            match (r.record.state, health.as_deref()) {
                (ContainerState::Running, None | Some("healthy")) => {}
                (ContainerState::Running, Some("unhealthy")) => {
                    return Err(ContainerError::Invalid(format!(
                        "container {} is unhealthy",
                        r.record.name
                    )))
                }
                (ContainerState::Exited, _) => {
                    return Err(ContainerError::Invalid(format!(
                        "container {} exited ({})",
                        r.record.name,
                        r.exit_code.map_or("unknown".into(), |c| c.to_string())
                    )))
                }
                _ => pending = Some(r.record.name.clone()),
            }
        }
        let Some(name) = pending else {
            return Ok(());
        };
        if t.elapsed() > limit {
            return Err(ContainerError::Invalid(format!(
                "container {name} is not ready after {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_dependencies(
    store: &Store,
    p: &Project,
    s: &Service,
    o: &UpOptions,
) -> Result<(), ContainerError> {
    let limit = o.wait.unwrap_or(Duration::from_secs(120));
    for (dep, cond) in &s.depends_on {
        if cond == "service_started" {
            continue;
        }
        let t = Instant::now();
        loop {
            let rows: Vec<ContainerRow> = containers(store, &p.name)?
                .into_iter()
                .filter(|r| labels(r).get(SERVICE) == Some(dep))
                .collect();
            let ok = !rows.is_empty()
                && rows.iter().all(|r| match cond.as_str() {
                    "service_healthy" => {
                        container::health::read(&container::dir(store, &r.record.id))
                            .is_some_and(|h| h.status == "healthy")
                    }
                    _ => r.record.state == ContainerState::Exited && r.exit_code == Some(0),
                });
            if ok {
                break;
            }
            if cond == "service_healthy" {
                if let Some(r) = rows
                    .iter()
                    .find(|r| container::spec_of(r).is_ok_and(|s| s.health.is_none()))
                {
                    return Err(ContainerError::Invalid(format!(
                        "dependency failed to start: container {} has no healthcheck configured",
                        r.record.name
                    )));
                }
            }
            let failed = rows.iter().find(|r| match cond.as_str() {
                "service_healthy" => r.record.state == ContainerState::Exited,
                _ => r.record.state == ContainerState::Exited && r.exit_code != Some(0),
            });
            if let Some(r) = failed {
                return Err(ContainerError::Invalid(format!(
                    "dependency failed to start: container {} exited ({})",
                    r.record.name,
                    r.exit_code.map_or("unknown".into(), |c| c.to_string())
                )));
            }
            if t.elapsed() > limit {
                return Err(ContainerError::Invalid(format!(
                    "dependency failed to start: service {dep} is not {} after {} s",
                    if cond == "service_healthy" {
                        "healthy"
                    } else {
                        "completed"
                    },
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
