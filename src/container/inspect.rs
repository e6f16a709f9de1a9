//! `inspect`: a container's record, spec and state in Docker's JSON shape.

use super::{ContainerError, ContainerSpec};
use kiln_store::ContainerState;
use kiln_store::{ContainerRow, Store};

/// A container as `docker inspect` shows it: Docker's shape, the fields kiln knows.
pub fn inspect(store: &Store, row: ContainerRow) -> Result<serde_json::Value, ContainerError> {
    let row = super::refresh(store, row)?;
    let spec = super::spec_of(&row)?;
    let time = |t: Option<i64>| {
        t.map(crate::timefmt::rfc3339)
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
    };
    // One entry per container port, with every host address it is published on (IPv4 and
    // IPv6), as Docker's NetworkSettings.Ports.
    let mut ports = serde_json::Map::new();
    for p in &spec.ports {
        let entry = ports
            .entry(format!("{}/{}", p.container_port, p.proto))
            .or_insert_with(|| serde_json::json!([]));
        if let Some(a) = entry.as_array_mut() {
            a.push(serde_json::json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}));
        }
    }
    let running = row.record.state == ContainerState::Running;
    let sec = &spec.runtime.security;
    use crate::runtime::caps;
    Ok(serde_json::json!({
        "Id": row.record.id,
        "Created": crate::timefmt::rfc3339(row.record.created),
        "Path": spec.command.first(),
        "Args": spec.command.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": row.record.state.as_str(),
            "Running": running,
            "Pid": if running { row.pid.unwrap_or(0) } else { 0 },
            "ExitCode": row.exit_code,
            "StartedAt": time(row.started),
            "FinishedAt": time(row.finished),
            "Restarting": row.record.state == kiln_store::ContainerState::Restarting,
            "Health": spec.health.as_ref().and_then(|_| super::health::read(&super::dir(store, &row.record.id))),
        },
        "RestartCount": super::restart::state(store, &row.record.id).count,
        // Docker's "Image" is the image ID (the config's digest), not the manifest's.
        "Image": store
            .image(&row.record.image)?
            .map(|i| i.id().to_string())
            .unwrap_or_else(|| row.record.image.to_string()),
        "Name": format!("/{}", row.record.name),
        "LogPath": super::dir(store, &row.record.id).join("log.json"),
        "Config": {
            "Hostname": spec.runtime.hostname,
            "User": format!("{}:{}", spec.runtime.ids.uid, spec.runtime.ids.gid),
            "Env": spec.runtime.env,
            "Cmd": spec.command,
            "Image": row.record.image_ref,
            "WorkingDir": spec.runtime.cwd,
            "StopSignal": spec.stop_signal,
            "Labels": spec.labels,
        },
        "HostConfig": {
            "NetworkMode": network_mode(&spec),
            "AutoRemove": spec.remove,
            "RestartPolicy": {
                "Name": spec.restart.name(),
                "MaximumRetryCount": match spec.restart {
                    super::restart::RestartPolicy::OnFailure { max: Some(n) } => n,
                    _ => 0,
                },
            },
            "Privileged": sec.privileged,
            "CapAdd": caps::names(sec.caps & !caps::default_mask()),
            "CapDrop": caps::names(caps::default_mask() & !sec.caps),
            "SecurityOpt": sec.security_opt(),
            "Devices": sec.devices.iter().map(|d| serde_json::json!({
                "PathOnHost": d.host, "PathInContainer": d.container, "CgroupPermissions": d.access,
            })).collect::<Vec<_>>(),
        },
        "NetworkSettings": network_settings(store, &row.record.id, &spec, ports.into())?,
    }))
}

fn network_mode(spec: &ContainerSpec) -> String {
    match (&spec.runtime.net, spec.network_mode.as_str()) {
        (_, m) if !m.is_empty() => m.to_string(),
        (crate::runtime::Net::Host, _) => "host".into(),
        _ => "private".into(),
    }
}

/// Docker's NetworkSettings: the published ports, each network's address and gateway, and the
/// top-level IPAddress of the default network.
fn network_settings(
    store: &Store,
    id: &str,
    spec: &ContainerSpec,
    ports: serde_json::Value,
) -> Result<serde_json::Value, ContainerError> {
    let eps = crate::network::endpoints(store, id, &spec.networks)?;
    let mut nets = serde_json::Map::new();
    for e in &eps {
        let prefix = e.network.subnet.rsplit_once('/').map_or("", |(_, p)| p);
        nets.insert(
            e.network.name.clone(),
            serde_json::json!({
                "NetworkID": e.network.id,
                "IPAddress": e.ip.to_string(),
                "IPPrefixLen": prefix.parse::<u8>().unwrap_or(0),
                "Gateway": e.network.gateway.to_string(),
                "Aliases": e.aliases,
            }),
        );
    }
    let default = eps
        .iter()
        .find(|e| e.network.name == crate::network::DEFAULT);
    Ok(serde_json::json!({
        "Ports": ports,
        "IPAddress": default.map(|e| e.ip.to_string()).unwrap_or_default(),
        "Gateway": default.map(|e| e.network.gateway.to_string()).unwrap_or_default(),
        "Networks": nets,
    }))
}
