//! Networks: kiln keeps their definitions and allocates addresses (the store's `networks` and
//! `endpoints` tables); netavark builds them (bridge, veth, routes, masquerading) and
//! aardvark-dns answers container names on user networks.
//!
//! ```text
//! <root>/netns/<container id>        the container's network namespace, bind-mounted (netns.rs)
//! <root>/netns/<container id>.json   the netavark options it was set up with, for teardown
//! /run/kiln/net-<hash of root>/      netavark's --config: aardvark-dns's names and pid
//! /run/kiln/subnets/<a.b.c.d>_<len>  a subnet claimed by a store (its root), across stores
//! /run/kiln/netavark.lock            one netavark at a time on the machine
//! ```
//!
//! A container on a bridge network gets its namespace at each start (`setup`) and loses it at
//! each exit (`teardown`); the address stays its own until it is removed. A network's bridge and
//! rules stay until the network is removed (keeper.rs). Teardown reads the
//! options file, not the current definitions, so it undoes exactly what setup did, also after
//! the supervisor was killed (`container::refresh` and `rm` call it).

mod keeper;
pub mod netavark;
pub mod netns;
mod ready;
pub mod rootless;
mod subnet;

pub use kiln_store::NetworkRecord;
use kiln_store::Store;
use serde::{Deserialize, Serialize};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The default network's name (Docker's).
pub const DEFAULT: &str = "bridge";

/// A network problem, naming the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
}

/// `kiln network create`'s options.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub name: String,
    pub subnet: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    pub labels: Vec<String>,
}

/// A network a container is attached to, as its spec records it: the network's ID and the
/// interface name inside the container (eth0, eth1, ... in the order it joined).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub network: String,
    pub interface: String,
}

/// A container's endpoint with everything netavark needs.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub network: NetworkRecord,
    pub ip: Ipv4Addr,
    pub aliases: Vec<String>,
    pub interface: String,
}

fn new_id() -> Result<String, NetworkError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| NetworkError::Invalid(format!("no random bytes for an ID: {e}")))?;
    Ok(kiln_store::digest::to_hex(&b))
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Creates a network: the subnet given (refused if it overlaps another of this store's or one
/// another store claimed) or the first free one of Docker's pools, clear of the host's routes and
/// resolvers.
pub fn create(store: &Store, o: &CreateOptions) -> Result<NetworkRecord, NetworkError> {
    if !valid_name(&o.name) {
        return Err(NetworkError::Invalid(format!(
            "invalid network name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            o.name
        )));
    }
    if ["host", "none", "private", "default"].contains(&o.name.as_str()) {
        return Err(NetworkError::Invalid(format!(
            "network name {} is reserved for the network mode of that name",
            o.name
        )));
    }
    if store.networks().by_name(&o.name)?.is_some() {
        return Err(NetworkError::Invalid(format!(
            "network with name {} already exists",
            o.name
        )));
    }
    let mut labels = serde_json::Map::new();
    for l in &o.labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.into());
    }
    let taken: Vec<(Ipv4Addr, u8)> = store
        .networks()
        .list()?
        .iter()
        .filter_map(|n| kiln_store::networks::parse_cidr(&n.subnet))
        .collect();
    let cidr = match &o.subnet {
        Some(s) => {
            let c = kiln_store::networks::parse_cidr(s).ok_or_else(|| {
                NetworkError::Invalid(format!(
                    "invalid --subnet {s:?}: want an IPv4 CIDR such as 10.10.0.0/24 (prefix at most /30)"
                ))
            })?;
            if let Some(t) = taken.iter().find(|t| subnet::overlap(**t, c)) {
                return Err(NetworkError::Invalid(format!(
                    "invalid --subnet {s}: it overlaps network subnet {}/{}",
                    t.0, t.1
                )));
            }
            subnet::claim(store.root(), c)?;
            c
        }
        None => subnet::pick(store.root(), &taken, o.name == DEFAULT)?,
    };
    let gateway = match o.gateway {
        Some(g) if !kiln_store::networks::contains(cidr, g) || g == cidr.0 => {
            subnet::unclaim(store.root(), cidr);
            return Err(NetworkError::Invalid(format!(
                "invalid --gateway {g}: not a host address of subnet {}/{}",
                cidr.0, cidr.1
            )));
        }
        Some(g) => g,
        None => Ipv4Addr::from(u32::from(cidr.0) + 1),
    };
    let id = new_id()?;
    let rec = NetworkRecord {
        bridge: format!("kiln-{}", &id[..10]),
        id,
        name: o.name.clone(),
        subnet: format!("{}/{}", cidr.0, cidr.1),
        gateway,
        internal: o.internal,
        // Docker's rule: the default network resolves no container names.
        dns: o.name != DEFAULT,
        labels: serde_json::Value::Object(labels).to_string(),
        created: kiln_store::store::now(),
    };
    if let Err(e) = store.networks().create(&rec) {
        subnet::unclaim(store.root(), cidr);
        return Err(match e {
            kiln_store::Error::AlreadyExists(_) if store.networks().by_name(&o.name)?.is_some() => {
                NetworkError::Invalid(format!("network with name {} already exists", o.name))
            }
            e => e.into(),
        });
    }
    Ok(rec)
}

/// The default network, made on first use.
pub fn default_network(store: &Store) -> Result<NetworkRecord, NetworkError> {
    if let Some(n) = store.networks().by_name(DEFAULT)? {
        return Ok(n);
    }
    match create(
        store,
        &CreateOptions {
            name: DEFAULT.into(),
            ..Default::default()
        },
    ) {
        Ok(n) => Ok(n),
        // Made by a concurrent run meanwhile.
        Err(e) => store.networks().by_name(DEFAULT)?.ok_or(e),
    }
}

/// Finds a network by name, full ID or unique ID prefix (the default one is made on first use).
pub fn resolve(store: &Store, what: &str) -> Result<NetworkRecord, NetworkError> {
    if what == DEFAULT {
        return default_network(store);
    }
    let all = store.networks().list()?;
    if let Some(n) = all.iter().find(|n| n.name == what || n.id == what) {
        return Ok(n.clone());
    }
    let hits: Vec<&NetworkRecord> = all.iter().filter(|n| n.id.starts_with(what)).collect();
    match hits.as_slice() {
        [one] if !what.is_empty() => Ok((*one).clone()),
        _ => Err(NetworkError::NotFound(what.to_string())),
    }
}

/// Removes a network no container is attached to (the default one stays, as Docker's).
pub fn remove(store: &Store, what: &str) -> Result<NetworkRecord, NetworkError> {
    let n = resolve(store, what)?;
    if n.name == DEFAULT {
        return Err(NetworkError::Invalid(format!(
            "{DEFAULT} is a pre-defined network and cannot be removed"
        )));
    }
    destroy(store, n)
}

/// Removes every network, the default one too, with their bridges and rules: what
/// `system reset` does before it removes the store. No container may be left.
pub fn reset(store: &Store) -> Result<Vec<String>, NetworkError> {
    let mut gone = Vec::new();
    for n in store.networks().list()? {
        gone.push(destroy(store, n)?.name);
    }
    Ok(gone)
}

/// Refuses a network in use; else removes its bridge and rules, then its record and subnet
/// claim. The bridge goes first: a container that joins meanwhile makes it again and then holds
/// the record, so what exists always matches what is recorded.
fn destroy(store: &Store, n: NetworkRecord) -> Result<NetworkRecord, NetworkError> {
    let in_use = |store: &Store| -> NetworkError {
        let users: Vec<String> = store
            .networks()
            .endpoints_on(&n.id)
            .unwrap_or_default()
            .iter()
            .map(|e| container_name(store, &e.container))
            .collect();
        NetworkError::Invalid(format!(
            "network {} has active endpoints ({})",
            n.name,
            users.join(", ")
        ))
    };
    if !store.networks().endpoints_on(&n.id)?.is_empty() {
        return Err(in_use(store));
    }
    {
        let _lock = lock()?;
        keeper::remove_bridge(store.root(), &config_dir(store.root()), &n)?;
    }
    store.networks().remove(&n.id).map_err(|e| match e {
        kiln_store::Error::InUse(_) => in_use(store),
        e => e.into(),
    })?;
    if let Some(c) = kiln_store::networks::parse_cidr(&n.subnet) {
        subnet::unclaim(store.root(), c);
    }
    Ok(n)
}

fn container_name(store: &Store, id: &str) -> String {
    store
        .containers()
        .get(id)
        .ok()
        .flatten()
        .map(|r| r.record.name)
        .unwrap_or_else(|| id[..12.min(id.len())].to_string())
}

/// Removes every user network no container uses; their names.
pub fn prune(store: &Store) -> Result<Vec<String>, NetworkError> {
    let mut gone = Vec::new();
    for n in store.networks().list()? {
        if n.name != DEFAULT && store.networks().endpoints_on(&n.id)?.is_empty() {
            match remove(store, &n.id) {
                Ok(n) => gone.push(n.name),
                Err(NetworkError::Invalid(m)) if m.contains("active endpoints") => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(gone)
}

/// A container's endpoints, with their networks, in the order of `attached`.
pub fn endpoints(
    store: &Store,
    container: &str,
    attached: &[Attached],
) -> Result<Vec<Endpoint>, NetworkError> {
    let rows = store.networks().endpoints_of(container)?;
    let nets = store.networks().list()?;
    let mut out = Vec::new();
    for a in attached {
        let row = rows.iter().find(|r| r.network == a.network);
        let net = nets.iter().find(|n| n.id == a.network);
        if let (Some(row), Some(net)) = (row, net) {
            out.push(Endpoint {
                network: net.clone(),
                ip: row.ip,
                aliases: row.aliases.clone(),
                interface: a.interface.clone(),
            });
        }
    }
    Ok(out)
}

/// The runtime directory of the store's network state (netavark's `--config`): under /run, so
/// a reboot, which takes every namespace and veth with it, takes aardvark-dns's names too.
pub fn config_dir(root: &Path) -> PathBuf {
    let key = kiln_store::Digest::of(root.to_string_lossy().as_bytes()).hex();
    subnet::run_dir().join(format!("net-{}", &key[..12]))
}

/// Holds the machine-wide netavark lock: netavark makes bridges and shared iptables chains, and
/// two at once race on them.
fn lock() -> Result<fs::File, NetworkError> {
    let dir = subnet::run_dir();
    fs::create_dir_all(&dir)
        .map_err(|e| NetworkError::Invalid(format!("create {}: {e}", dir.display())))?;
    let p = dir.join("netavark.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| NetworkError::Invalid(format!("open {}: {e}", p.display())))?;
    f.lock()
        .map_err(|e| NetworkError::Invalid(format!("lock {}: {e}", p.display())))?;
    Ok(f)
}

fn options_path(root: &Path, id: &str) -> PathBuf {
    netns::path(root, id).with_extension("json")
}

/// A container's network namespace made, and netavark's setup of it still to run: the
/// container's init can join the namespace meanwhile. Holds the netavark lock until finished.
pub struct Pending {
    _lock: fs::File,
    root: PathBuf,
    id: String,
    ns: PathBuf,
    opts: serde_json::Value,
    eps: Vec<Endpoint>,
    name: String,
}

/// Makes a container's network namespace for every network it is attached to; `finish` sets
/// it up. Whatever was made is undone on error.
pub fn prepare(
    store: &Store,
    id: &str,
    name: &str,
    attached: &[Attached],
    dns: &[String],
) -> Result<Pending, NetworkError> {
    let eps = endpoints(store, id, attached)?;
    let opts = netavark::options(id, name, &eps, dns);
    let root = store.root();
    let ns = netns::path(root, id);
    let lock = lock()?;
    // A handle left by an owner killed before its teardown goes first.
    teardown_locked(root, id)?;
    netns::create(&ns)
        .map_err(|e| NetworkError::Invalid(format!("create the network namespace: {e}")))?;
    let op = options_path(root, id);
    if let Err(e) = fs::write(&op, opts.to_string()) {
        let _ = teardown_locked(root, id);
        return Err(NetworkError::Invalid(format!(
            "write {}: {e}",
            op.display()
        )));
    }
    Ok(Pending {
        _lock: lock,
        root: root.to_path_buf(),
        id: id.to_string(),
        ns,
        opts,
        eps,
        name: name.to_string(),
    })
}

impl Pending {
    /// The namespace's path (what the container's init joins).
    pub fn path(&self) -> &Path {
        &self.ns
    }

    /// Sets the namespace up with netavark (bridge, veth, address, routes, rules); undone on
    /// error.
    pub fn finish(self) -> Result<(), NetworkError> {
        if let Err(e) = netavark::run("setup", &config_dir(&self.root), &self.ns, &self.opts) {
            let _ = teardown_locked(&self.root, &self.id);
            return Err(e);
        }
        keep_bridges(&self.eps);
        ready::wait_for_dns(&self.ns, &self.eps, &self.name);
        Ok(())
    }
}

/// Attaches the keeper of each endpoint's bridge. Without it a bridge goes at its last
/// container's exit: slower, not wrong, so the container starts anyway.
fn keep_bridges(eps: &[Endpoint]) {
    // Rootless, bridges live in the user's network namespace, out of this /sys's sight: netavark
    // removes one with its last container, and makes it again at the next.
    if crate::rootless::active() {
        return;
    }
    for e in eps {
        if let Err(err) = keeper::ensure(&e.network) {
            tracing::warn!("network {}: keep its bridge: {err}", e.network.name);
        }
    }
}

/// Undoes `setup` (idempotent): netavark's teardown with the options setup used, then the
/// namespace handle. A namespace a reboot already took needs no netavark.
pub fn teardown(root: &Path, id: &str) -> Result<(), NetworkError> {
    if !netns::path(root, id).exists() && !options_path(root, id).exists() {
        return Ok(());
    }
    let _lock = lock()?;
    teardown_locked(root, id)
}

fn teardown_locked(root: &Path, id: &str) -> Result<(), NetworkError> {
    let ns = netns::path(root, id);
    let op = options_path(root, id);
    let mut result = Ok(());
    if netns::is_live(&ns) {
        if let Ok(text) = fs::read_to_string(&op) {
            if let Ok(opts) = serde_json::from_str(&text) {
                result = netavark::run("teardown", &config_dir(root), &ns, &opts);
            }
        }
    }
    netns::remove(&ns)
        .map_err(|e| NetworkError::Invalid(format!("remove {}: {e}", ns.display())))?;
    let _ = fs::remove_file(&op);
    result
}

/// Adds one endpoint to a running container's namespace (`network connect`), and records it in
/// the options its teardown uses.
pub fn setup_one(
    store: &Store,
    id: &str,
    name: &str,
    all: &[Attached],
    new: &Attached,
    dns: &[String],
) -> Result<(), NetworkError> {
    change_one(store, "setup", id, name, new, all, dns)
}

/// Takes one endpoint out of a running container's namespace (`network disconnect`).
pub fn teardown_one(
    store: &Store,
    id: &str,
    name: &str,
    rest: &[Attached],
    gone: &Attached,
    dns: &[String],
) -> Result<(), NetworkError> {
    change_one(store, "teardown", id, name, gone, rest, dns)
}

/// Runs netavark `verb` for the one endpoint `which` in a live namespace, then records `after`
/// (the container's endpoints from now on) as the options its teardown uses.
fn change_one(
    store: &Store,
    verb: &str,
    id: &str,
    name: &str,
    which: &Attached,
    after: &[Attached],
    dns: &[String],
) -> Result<(), NetworkError> {
    let root = store.root();
    let ns = netns::path(root, id);
    let _lock = lock()?;
    if !netns::is_live(&ns) {
        return Ok(());
    }
    let one = endpoints(store, id, std::slice::from_ref(which))?;
    netavark::run(
        verb,
        &config_dir(root),
        &ns,
        &netavark::options(id, name, &one, dns),
    )?;
    if verb == "setup" {
        keep_bridges(&one);
    }
    let eps = endpoints(store, id, after)?;
    let _ = fs::write(
        options_path(root, id),
        netavark::options(id, name, &eps, dns).to_string(),
    );
    Ok(())
}

/// The container's /etc/resolv.conf: aardvark-dns (the first DNS-enabled network's gateway)
/// on user networks, with `--dns` servers as its upstream; else `--dns`, else the host's
/// resolvers without loopback ones (unreachable from the container), else Docker's fallback.
pub fn resolv_conf(eps: &[Endpoint], dns: &[String], host: &str) -> String {
    let extra: String = host
        .lines()
        .filter(|l| l.starts_with("search") || l.starts_with("options"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(e) = eps.iter().find(|e| e.network.dns) {
        return format!("nameserver {}\n{extra}", e.network.gateway);
    }
    let mut servers: Vec<String> = dns.to_vec();
    if servers.is_empty() {
        servers = host
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .map(|s| s.trim().to_string())
            .filter(|s| {
                s.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| !ip.is_loopback())
            })
            .collect();
    }
    if servers.is_empty() {
        servers = vec!["8.8.8.8".into(), "8.8.4.4".into()];
    }
    let ns: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    format!("{ns}{extra}")
}

/// `--add-host NAME:IP` as a hosts line; `host-gateway` is the first network's gateway.
pub fn add_host_line(spec: &str, eps: &[Endpoint]) -> Result<String, NetworkError> {
    let (name, ip) = spec
        .split_once([':', '='])
        .filter(|(n, i)| !n.is_empty() && !i.is_empty())
        .ok_or_else(|| {
            NetworkError::Invalid(format!(
                "invalid --add-host {spec:?}: want NAME:IP (or NAME:host-gateway)"
            ))
        })?;
    let ip = if ip == "host-gateway" {
        eps.first()
            .map(|e| e.network.gateway.to_string())
            .ok_or_else(|| {
                NetworkError::Invalid(format!(
                    "--add-host {spec}: host-gateway needs a bridge network"
                ))
            })?
    } else {
        ip.parse::<std::net::IpAddr>()
            .map_err(|_| {
                NetworkError::Invalid(format!(
                    "invalid --add-host {spec:?}: {ip:?} is not an IP address"
                ))
            })?
            .to_string()
    };
    Ok(format!("{ip}\t{name}\n"))
}

#[cfg(test)]
mod tests;
