//! netavark 1.4, the network backend podman uses: kiln writes its per-container JSON (the
//! networks with their bridge and subnet, the container's static address and aliases on each)
//! and runs `netavark setup|teardown NETNS_PATH` with it on stdin. netavark makes the bridge, the
//! veth pair, the routes and the iptables rules (masquerading unless the network is internal),
//! and starts aardvark-dns for networks with DNS, whose state lives in the store's runtime
//! directory (`--config`).

use super::{Endpoint, NetworkError};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian's (and podman's) packages install the two programs.
const DIRS: &[&str] = &[
    "/usr/lib/podman",
    "/usr/libexec/podman",
    "/usr/local/libexec/podman",
];

/// The netavark binary: `$KILN_NETAVARK`, else podman's directories, else PATH.
pub fn binary() -> Result<PathBuf, NetworkError> {
    if let Some(p) = std::env::var_os("KILN_NETAVARK") {
        return Ok(PathBuf::from(p));
    }
    for d in DIRS {
        let p = Path::new(d).join("netavark");
        if p.exists() {
            return Ok(p);
        }
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("netavark"))
        .find(|p| p.exists())
    {
        return Ok(p);
    }
    Err(NetworkError::Invalid(format!(
        "bridge networks need netavark (Debian's netavark and aardvark-dns packages; looked in {} and PATH, or set KILN_NETAVARK): install them, or run with --network private",
        DIRS.join(", ")
    )))
}

/// The per-container options netavark reads: every endpoint's network and address. netavark
/// knows each network by its bridge's name, which is unique on the machine: it names a network's
/// iptables chain after a hash of the name it is given, so two stores' networks of one name
/// (every store has a `bridge`) would share a chain, and removing one would take the other's
/// masquerading rule with it.
pub fn options(id: &str, name: &str, eps: &[Endpoint], dns_servers: &[String]) -> Value {
    let mut networks = serde_json::Map::new();
    let mut info = serde_json::Map::new();
    for e in eps {
        let n = &e.network;
        let mut aliases = e.aliases.clone();
        aliases.push(id[..12].to_string());
        networks.insert(
            n.bridge.clone(),
            json!({
                "static_ips": [e.ip.to_string()],
                "interface_name": e.interface,
                "aliases": if n.dns { Some(aliases) } else { None },
            }),
        );
        info.insert(
            n.bridge.clone(),
            json!({
                "name": n.bridge,
                "id": n.id,
                "driver": "bridge",
                "network_interface": n.bridge,
                "subnets": [{"subnet": n.subnet, "gateway": n.gateway.to_string()}],
                "ipv6_enabled": false,
                "internal": n.internal,
                "dns_enabled": n.dns,
                "ipam_options": {"driver": "host-local"},
            }),
        );
    }
    let servers: Vec<&String> = dns_servers.iter().collect();
    json!({
        "container_id": id,
        "container_name": name,
        "networks": networks,
        "network_info": info,
        "dns_servers": if servers.is_empty() { None } else { Some(servers) },
    })
}

/// Runs `netavark setup` or `teardown` for `netns` with `opts`; its error message on failure.
pub fn run(verb: &str, config: &Path, netns: &Path, opts: &Value) -> Result<(), NetworkError> {
    let bin = binary()?;
    let aardvark = bin.with_file_name("aardvark-dns");
    std::fs::create_dir_all(config)
        .map_err(|e| NetworkError::Invalid(format!("create {}: {e}", config.display())))?;
    // Rootless, netavark works in the user's network namespace (its bridges, rules and
    // aardvark-dns live there), entered through util-linux's nsenter.
    let mut cmd = match super::rootless::shared_netns()? {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("--").arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let mut child = cmd
        .arg("--config")
        .arg(config)
        .arg("--aardvark-binary")
        .arg(&aardvark)
        .arg(verb)
        .arg(netns)
        // It runs iptables once per rule: a short PATH spares it the search.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Invalid(format!("run {}: {e}", bin.display())))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(opts.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Invalid(format!("wait for netavark: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    // netavark prints {"error": "..."} on stdout; stderr has its log.
    let mut msg = serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.contains("syslog"))
                .collect::<Vec<_>>()
                .join("; ")
        });
    if msg.trim().is_empty() {
        msg = format!(
            "{} ended with {} and said nothing",
            bin.display(),
            out.status
        );
    }
    Err(NetworkError::Invalid(format!("netavark {verb}: {msg}")))
}
