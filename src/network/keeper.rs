//! A network's bridge and firewall rules live as long as the network, as Docker's do (docker0 is
//! always there), not as long as its last container: netavark removes a bridge, with its
//! masquerading and forwarding rules, when the last interface leaves it, and making them again
//! costs each next start about 150 ms (a dozen iptables calls and a new bridge). So after the
//! first setup on a network, kiln attaches a keeper to its bridge: one end of a down veth pair
//! (`kk-<network id>`, peer `kp-<network id>`) that carries no traffic. netavark then sees the
//! bridge in use and leaves it, and its rules, in place.
//!
//! `network rm` (and `prune`, `system reset`) must then do what netavark's last teardown would
//! have done: it sets a throwaway namespace up on the network, removes the keeper, and tears the
//! namespace down, so that netavark itself removes the bridge and exactly the rules it made.

use super::{netavark, netns, Endpoint, NetworkError, NetworkRecord};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// The keeper's interface name (at most 15 bytes, as the kernel requires).
fn name(n: &NetworkRecord) -> String {
    format!("kk-{}", &n.id[..10])
}

fn peer(n: &NetworkRecord) -> String {
    format!("kp-{}", &n.id[..10])
}

fn sys(iface: &str) -> std::path::PathBuf {
    Path::new("/sys/class/net").join(iface)
}

/// Runs iproute2's `ip` with `args`; its message on failure.
fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let out = Command::new("ip")
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| {
            NetworkError::Invalid(format!(
                "run ip (iproute2, which kiln needs for bridge networks): {e}"
            ))
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetworkError::Invalid(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Attaches the keeper to `n`'s bridge unless it is there (one stat when it is). Called with
/// the netavark lock held, after a setup made the bridge.
pub fn ensure(n: &NetworkRecord) -> Result<(), NetworkError> {
    let k = name(n);
    let master = sys(&k).join("master");
    if std::fs::read_link(&master).is_ok_and(|m| m.file_name() == Some(n.bridge.as_ref())) {
        return pin_address(&n.bridge);
    }
    if !sys(&n.bridge).exists() {
        return Ok(());
    }
    if !sys(&k).exists() {
        ip(&["link", "add", &k, "type", "veth", "peer", "name", &peer(n)])?;
    }
    // A keeper left from a bridge a reboot or a user removed joins the new one.
    ip(&["link", "set", &k, "master", &n.bridge])?;
    pin_address(&n.bridge)
}

/// Fixes the bridge's MAC address. A bridge whose address nobody set takes the lowest of its
/// ports' addresses, so it changes as containers come and go; containers keep the old one in
/// their neighbour tables and what they send the host (a published port's answers) is lost for
/// seconds, until they ask again. Docker sets its bridges' addresses for the same reason. Once
/// set (`addr_assign_type` 3), the kernel leaves it alone.
fn pin_address(bridge: &str) -> Result<(), NetworkError> {
    let kind = std::fs::read_to_string(sys(bridge).join("addr_assign_type")).unwrap_or_default();
    if kind.trim() == "3" {
        return Ok(());
    }
    let Ok(mac) = std::fs::read_to_string(sys(bridge).join("address")) else {
        return Ok(());
    };
    ip(&["link", "set", "dev", bridge, "address", mac.trim()])
}

/// Removes `n`'s bridge and its rules through netavark (see the module's note). Nothing to do
/// when the bridge is gone (a reboot took it and its rules). Called with the netavark lock held,
/// for a network no container is attached to.
pub fn remove_bridge(root: &Path, config: &Path, n: &NetworkRecord) -> Result<(), NetworkError> {
    let k = name(n);
    if !sys(&n.bridge).exists() {
        if sys(&k).exists() {
            ip(&["link", "del", &k])?;
        }
        return Ok(());
    }
    let Some((net, _)) = kiln_store::networks::parse_cidr(&n.subnet) else {
        return Err(NetworkError::Invalid(format!(
            "network {}: invalid subnet {}",
            n.name, n.subnet
        )));
    };
    // Any host address but the gateway: no container uses the network.
    let first = u32::from(net) + 1;
    let addr = if Ipv4Addr::from(first) == n.gateway {
        first + 1
    } else {
        first
    };
    let id = format!("{:0<64}", format!("kiln-network-rm-{}", &n.id[..16]));
    let ep = Endpoint {
        network: n.clone(),
        ip: Ipv4Addr::from(addr),
        aliases: Vec::new(),
        interface: "eth0".into(),
    };
    let opts = netavark::options(&id, "kiln-network-rm", &[ep], &[]);
    let ns = netns::path(root, &id);
    netns::create(&ns)
        .map_err(|e| NetworkError::Invalid(format!("create the network namespace: {e}")))?;
    let result = netavark::run("setup", config, &ns, &opts).and_then(|()| {
        if sys(&k).exists() {
            ip(&["link", "del", &k])?;
        }
        netavark::run("teardown", config, &ns, &opts)
    });
    let _ = netns::remove(&ns);
    result
}
