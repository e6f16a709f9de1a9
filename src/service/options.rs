//! A service's containers as `kiln run` options: replicas (`<project>-<service>-<n>`, with
//! docker compose's labels and the hash that says when to recreate them) and one-off
//! containers (`compose run`).

use super::{network_name, HASH, NUMBER, PROJECT, SERVICE};
use crate::compose::model::{Mount, Service};
use crate::compose::Project;
use crate::container::{self, ports::PortSpec, volume::MountRequest, ContainerError, RunOptions};
use kiln_store::Store;
use std::collections::BTreeMap;

/// What `svc` depends on, directly or not.
pub fn dependencies(p: &Project, svc: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut todo: Vec<&String> = p.services[svc].depends_on.keys().collect();
    while let Some(d) = todo.pop() {
        if !out.contains(d) {
            out.push(d.clone());
            todo.extend(p.services[d].depends_on.keys());
        }
    }
    out
}

/// The options of a one-off container of `svc` (`compose run`): the service's, with `cmd`
/// over its command (when given), no published ports (as docker compose, unless
/// `service_ports`), named `<project>-<service>-run-<id>`.
pub fn one_off(
    store: &Store,
    p: &Project,
    svc: &str,
    cmd: &[String],
    service_ports: bool,
) -> Result<RunOptions, ContainerError> {
    let s = &p.services[svc];
    let image_id = crate::image::resolve(store, &image_name(p, svc, s))
        .map(|r| r.image.id().to_string())
        .unwrap_or_default();
    let mut o = run_options(p, svc, s, 1, &config_hash(p, svc, s, &image_id))?;
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix)
        .map_err(|e| ContainerError::Invalid(format!("no random bytes: {e}")))?;
    o.name = Some(format!(
        "{}-{svc}-run-{}",
        p.name,
        kiln_store::digest::to_hex(&suffix)
    ));
    o.labels.remove(NUMBER);
    o.labels.insert(super::ONEOFF.into(), "True".into());
    if !cmd.is_empty() {
        // The entrypoint stays; the command is replaced.
        let keep = o.cmd.len() - s.command.as_ref().map_or(0, Vec::len);
        o.cmd.truncate(keep);
        o.cmd.extend(cmd.iter().cloned());
    }
    if !service_ports {
        o.ports.clear();
    }
    o.restart = container::restart::RestartPolicy::No;
    Ok(o)
}

pub(super) fn with_service(svc: &str, aliases: &[String]) -> Vec<String> {
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
pub fn config_hash(p: &Project, svc: &str, s: &Service, image_id: &str) -> String {
    let mut s = s.clone();
    s.deploy.replicas = None;
    let text = serde_json::to_string(&(&p.name, svc, &s, image_id)).expect("the model serializes");
    kiln_store::Digest::of(text.as_bytes()).hex()[..16].to_string()
}

/// The `kiln run` options of replica `i` of service `svc`.
pub fn run_options(
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
    // Secrets and configs are their files, read-only, where compose puts them.
    for (names, defs, dir) in [
        (&s.secrets, &p.secrets, "/run/secrets/"),
        (&s.configs, &p.configs, "/"),
    ] {
        for n in names {
            let def = defs
                .get(n)
                .ok_or_else(|| bad(format!("{n} is not defined at the top level")))?;
            mounts.push(MountRequest::Bind {
                source: def.file.clone(),
                target: format!("{dir}{n}"),
                readonly: true,
                create: false,
            });
        }
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
