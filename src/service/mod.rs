//! Services: a compose project's services made real as containers, networks and volumes, and
//! kept as the files say (`kiln compose up` converges: what already matches stays). The model
//! comes from `crate::compose`; this room only turns it into containers.
//!
//! Names and labels are docker compose v2's: networks `<project>_<key>` (`<project>_default`
//! for services that name none), named volumes `<project>_<key>`, containers
//! `<project>-<service>-<n>`, each labelled `com.docker.compose.project`, `.service`,
//! `.container-number` and `.config-hash` (a hash of the service as read, so `up` recreates a
//! container exactly when its service changed).

use crate::compose::model::{Mount, Service};
use crate::compose::Project;
use crate::container::{self, ports::PortSpec, volume::MountRequest, ContainerError, RunOptions};
use crate::network;
use kiln_store::{ContainerRow, ContainerState, Store};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const PROJECT: &str = "com.docker.compose.project";
pub const SERVICE: &str = "com.docker.compose.service";
pub const NUMBER: &str = "com.docker.compose.container-number";
pub const HASH: &str = "com.docker.compose.config-hash";

#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// `--scale SERVICE=N`, over `deploy.replicas`.
    pub scale: BTreeMap<String, u32>,
    /// How long a `service_healthy` dependency may take.
    pub wait: Option<Duration>,
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

pub fn labels(row: &ContainerRow) -> BTreeMap<String, String> {
    container::spec_of(row)
        .map(|s| s.labels)
        .unwrap_or_default()
}

/// The network a service's network key stands for on the machine.
fn network_name(p: &Project, key: &str) -> String {
    match p.networks.get(key) {
        Some(d) => d.name.clone(),
        None => format!("{}_{key}", p.name),
    }
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
    // Networks first, each once.
    let mut keys: Vec<&String> = p
        .services
        .values()
        .flat_map(|s| s.networks.keys())
        .collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let name = network_name(p, key);
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
            format!("{PROJECT}={}", p.name),
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
    let existing = containers(store, &p.name)?;
    for svc in &order {
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
        extra.sort_by_key(|r| std::cmp::Reverse(labels(r).get(NUMBER).cloned()));
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
    let mut rows = containers(store, &p.name)?;
    // Services of the files first, in reverse order; whatever else the project has (services
    // since removed from the files) after.
    rows.sort_by_key(|r| {
        let l = labels(r);
        order
            .iter()
            .position(|s| Some(s) == l.get(SERVICE))
            .unwrap_or(usize::MAX)
    });
    for row in &rows {
        let name = row.record.name.clone();
        if row.record.state == ContainerState::Running {
            container::stop(store, row, None)?;
            event(("Container", name.clone(), "Stopped"));
        }
        container::remove(store, &row.record.id)?;
        event(("Container", name, "Removed"));
    }
    let mut keys: Vec<String> = p
        .services
        .values()
        .flat_map(|s| s.networks.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    for key in keys {
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
    let mut rows = containers(store, &p.name)?;
    rows.sort_by_key(|r| order.iter().position(|s| Some(s) == labels(r).get(SERVICE)));
    for row in rows
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
    let mut rows = containers(store, &p.name)?;
    rows.sort_by_key(|r| order.iter().position(|s| Some(s) == labels(r).get(SERVICE)));
    for row in rows
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

fn with_service(svc: &str, aliases: &[String]) -> Vec<String> {
    let mut a = vec![svc.to_string()];
    a.extend(aliases.iter().cloned());
    a
}

/// The image a service runs: its `image:`, else the one `build:` makes, `<project>-<service>`
/// (docker compose v2's name).
pub fn image_name(p: &Project, svc: &str, s: &Service) -> String {
    s.image
        .clone()
        .unwrap_or_else(|| format!("{}-{svc}", p.name))
}

/// A hash of the service as read, the project's name and the image's ID: equal hashes, same
/// container. The replica count is left out: scaling adds or removes containers, it changes
/// none.
fn config_hash(p: &Project, svc: &str, s: &Service, image_id: &str) -> String {
    let mut s = s.clone();
    s.deploy.replicas = None;
    let text = serde_json::to_string(&(&p.name, svc, &s, image_id)).expect("the model serializes");
    kiln_store::Digest::of(text.as_bytes()).hex()[..16].to_string()
}

/// The `kiln run` options of replica `i` of service `svc`.
fn run_options(
    p: &Project,
    svc: &str,
    s: &Service,
    i: u32,
    hash: &str,
) -> Result<RunOptions, ContainerError> {
    let bad = |m: String| ContainerError::Invalid(format!("service {svc}: {m}"));
    let image = image_name(p, svc, s);
    let mut ports = Vec::new();
    for spec in &s.ports {
        ports.push(PortSpec::parse(spec).map_err(bad)?);
    }
    let mut mounts = Vec::new();
    for m in &s.volumes {
        mounts.push(mount(p, m));
    }
    let (first_net, aliases) = s
        .networks
        .iter()
        .next()
        .map(|(k, a)| (network_name(p, k), with_service(svc, a)))
        .expect("a service is on at least one network");
    let restart = match (&s.restart, s.deploy.restart_condition.as_deref()) {
        (Some(r), _) => r.clone(),
        (None, Some("any")) => "always".into(),
        (None, Some("on-failure")) => match s.deploy.restart_max_attempts {
            Some(n) => format!("on-failure:{n}"),
            None => "on-failure".into(),
        },
        _ => "no".into(),
    };
    let mut health = container::health::HealthConfig::default();
    let mut no_healthcheck = false;
    if let Some(h) = &s.healthcheck {
        if h.test.first().map(String::as_str) == Some("NONE") {
            no_healthcheck = true;
        } else {
            health.test = h.test.clone();
        }
        let ns = |d: &Option<String>| {
            d.as_deref()
                .and_then(crate::frontend::instructions::parse_go_duration)
                .unwrap_or(0)
        };
        health.interval = ns(&h.interval);
        health.timeout = ns(&h.timeout);
        health.start_period = ns(&h.start_period);
        health.retries = h.retries.unwrap_or(0);
    }
    let mut labels: BTreeMap<String, String> = s.labels.clone();
    labels.insert(PROJECT.into(), p.name.clone());
    labels.insert(SERVICE.into(), svc.to_string());
    labels.insert(NUMBER.into(), i.to_string());
    labels.insert(HASH.into(), hash.to_string());
    let (entrypoint, mut cmd) = match &s.entrypoint {
        Some(e) if !e.is_empty() => (Some(e[0].clone()), e[1..].to_vec()),
        Some(_) => (Some(String::new()), Vec::new()),
        None => (None, Vec::new()),
    };
    cmd.extend(s.command.clone().unwrap_or_default());
    Ok(RunOptions {
        image,
        name: Some(format!("{}-{svc}-{i}", p.name)),
        cmd,
        entrypoint,
        env: s
            .environment
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect(),
        workdir: s.working_dir.clone(),
        user: s.user.clone(),
        hostname: s.hostname.clone(),
        network: first_net,
        network_aliases: aliases,
        ports,
        stop_signal: s.stop_signal.clone(),
        stop_timeout: s
            .stop_grace_period
            .as_deref()
            .and_then(crate::frontend::instructions::parse_go_duration)
            .map(|ns| ns / 1_000_000_000),
        memory: s.deploy.memory,
        cpus: s.deploy.cpus,
        mounts,
        restart: container::restart::RestartPolicy::parse(&restart).map_err(bad)?,
        health,
        no_healthcheck,
        init: s.init.unwrap_or(false),
        labels,
        ..Default::default()
    })
}

fn mount(p: &Project, m: &Mount) -> MountRequest {
    match m.kind.as_str() {
        "bind" => MountRequest::Bind {
            source: m.source.clone().unwrap_or_default().into(),
            target: m.target.clone(),
            readonly: m.read_only,
            create: true,
        },
        "tmpfs" => MountRequest::Tmpfs {
            target: m.target.clone(),
            options: String::new(),
        },
        _ => MountRequest::Volume {
            name: m.source.as_ref().map(|k| {
                p.volumes
                    .get(k)
                    .map_or_else(|| k.clone(), |d| d.name.clone())
            }),
            target: m.target.clone(),
            readonly: m.read_only,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_the_service_and_its_image_but_not_its_replica_count() {
        let p = Project {
            name: "app".into(),
            ..Default::default()
        };
        let mut s = Service {
            image: Some("web".into()),
            ..Default::default()
        };
        let one = config_hash(&p, "web", &s, "sha256:a");
        s.deploy.replicas = Some(5);
        assert_eq!(config_hash(&p, "web", &s, "sha256:a"), one);
        assert_ne!(config_hash(&p, "web", &s, "sha256:b"), one, "a new image");
        s.command = Some(vec!["serve".into()]);
        assert_ne!(config_hash(&p, "web", &s, "sha256:a"), one);
        let d = Service::default();
        assert_ne!(
            config_hash(&p, "api", &d, ""),
            config_hash(&p, "web", &d, "")
        );
    }
}
