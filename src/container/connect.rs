//! `network connect` and `network disconnect`: a container's endpoints change in the store and
//! its spec, and, while it runs, in its namespace (netavark adds or removes one interface).

use super::*;
use crate::network::{self, Attached, NetworkRecord};

fn bridge_mode(spec: &ContainerSpec, name: &str) -> Result<(), ContainerError> {
    if matches!(spec.runtime.net, runtime::Net::Join(_)) {
        return Ok(());
    }
    let mode = if spec.network_mode.is_empty() {
        "private"
    } else {
        spec.network_mode.as_str()
    };
    Err(ContainerError::Invalid(format!(
        "container {name} uses --network {mode}: only containers on bridge networks can be connected to other networks"
    )))
}

fn running(row: &ContainerRow) -> bool {
    row.record.state == ContainerState::Running
}

/// Connects a container to a network (`--alias`, `--ip` as for `run`).
pub fn connect(
    store: &Store,
    row: &ContainerRow,
    net: &NetworkRecord,
    aliases: &[String],
    ip: Option<std::net::Ipv4Addr>,
) -> Result<(), ContainerError> {
    let row = refresh(store, row.clone())?;
    let id = row.record.id.clone();
    let mut spec = spec_of(&row)?;
    bridge_mode(&spec, &row.record.name)?;
    if spec.networks.iter().any(|a| a.network == net.id) {
        return Err(ContainerError::Invalid(format!(
            "endpoint with name {} already exists in network {}",
            row.record.name, net.name
        )));
    }
    if net.name == network::DEFAULT && (ip.is_some() || !aliases.is_empty()) {
        return Err(ContainerError::Invalid(
            "--ip and --alias are supported on user defined networks only".into(),
        ));
    }
    let interface = (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !spec.networks.iter().any(|a| &a.interface == n))
        .expect("an unused interface name");
    store
        .networks()
        .attach(&net.id, &id, ip, aliases)
        .map_err(|e| match e {
            kiln_store::Error::InUse(m) => {
                ContainerError::Invalid(format!("{m} is already in use"))
            }
            e => e.into(),
        })?;
    let new = Attached {
        network: net.id.clone(),
        interface,
    };
    spec.networks.push(new.clone());
    if running(&row) {
        if let Err(e) = network::setup_one(
            store,
            &id,
            &row.record.name,
            &spec.networks,
            &new,
            &spec.dns,
        ) {
            let _ = store.networks().detach(&net.id, &id);
            return Err(e.into());
        }
    }
    store
        .containers()
        .set_spec(&id, &serde_json::to_string(&spec).expect("spec serializes"))?;
    Ok(())
}

/// Disconnects a container from a network.
pub fn disconnect(
    store: &Store,
    row: &ContainerRow,
    net: &NetworkRecord,
) -> Result<(), ContainerError> {
    let row = refresh(store, row.clone())?;
    let id = row.record.id.clone();
    let mut spec = spec_of(&row)?;
    let Some(pos) = spec.networks.iter().position(|a| a.network == net.id) else {
        return Err(ContainerError::Invalid(format!(
            "container {} is not connected to network {}",
            row.record.name, net.name
        )));
    };
    let gone = spec.networks.remove(pos);
    if running(&row) {
        network::teardown_one(
            store,
            &id,
            &row.record.name,
            &spec.networks,
            &gone,
            &spec.dns,
        )?;
    }
    store
        .containers()
        .set_spec(&id, &serde_json::to_string(&spec).expect("spec serializes"))?;
    store.networks().detach(&net.id, &id)?;
    Ok(())
}
