//! Networks and their address management (IPAM): rows of the `networks` table, and of
//! `endpoints`, one per container attached to a network with the IPv4 address it holds there.
//! An address is taken in one IMMEDIATE transaction against UNIQUE(network, ip), so two
//! concurrent `kiln run`s never get the same one; it is released when the container is removed
//! or disconnected. Addresses are handed out round-robin (the next free one after the last one
//! given, as Docker's IPAM): a released address is not given again at once, so a container that
//! replaces another does not inherit the address its peers still have in their ARP caches. kiln-store knows addresses, not bridges: the runner does the rest.

use crate::store::Store;
use crate::{Error, Result};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use std::net::Ipv4Addr;

/// A network as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRecord {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    /// CIDR, `172.18.0.0/16`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// The host's bridge interface.
    pub bridge: String,
    /// No route out (`--internal`).
    pub internal: bool,
    /// Container names resolve by DNS on it (user networks; not the default bridge).
    pub dns: bool,
    /// `--label` values, a JSON object (kiln-store does not read it).
    pub labels: String,
    pub created: i64,
}

/// A container's place on a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRow {
    pub network: String,
    pub container: String,
    pub ip: Ipv4Addr,
    /// `--network-alias` names.
    pub aliases: Vec<String>,
}

/// A parsed IPv4 CIDR: the network address and the prefix length.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    if p > 30 {
        return None;
    }
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Some((Ipv4Addr::from(u32::from(a) & mask), p))
}

/// Whether `ip` is inside the CIDR `(net, prefix)`.
pub fn contains(net: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = if net.1 == 0 {
        0
    } else {
        u32::MAX << (32 - net.1)
    };
    u32::from(ip) & mask == u32::from(net.0)
}

/// The networks table (`store.networks()`).
pub struct Networks<'s> {
    store: &'s Store,
}

impl Store {
    /// The networks table and its endpoints.
    pub fn networks(&self) -> Networks<'_> {
        Networks { store: self }
    }
}

const COLUMNS: &str = "id, name, subnet, gateway, bridge, internal, dns, labels, created";

fn network_row(r: &rusqlite::Row) -> rusqlite::Result<NetworkRecord> {
    let gw: String = r.get(3)?;
    Ok(NetworkRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        subnet: r.get(2)?,
        gateway: gw.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
        bridge: r.get(4)?,
        internal: r.get(5)?,
        dns: r.get(6)?,
        labels: r.get(7)?,
        created: r.get(8)?,
    })
}

fn endpoint_row(r: &rusqlite::Row) -> rusqlite::Result<EndpointRow> {
    let ip: String = r.get(2)?;
    let aliases: String = r.get(3)?;
    Ok(EndpointRow {
        network: r.get(0)?,
        container: r.get(1)?,
        ip: ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
        aliases: aliases
            .split(',')
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
    })
}

impl Networks<'_> {
    /// Records a network. A name or subnet already taken is `AlreadyExists`.
    pub fn create(&self, n: &NetworkRecord) -> Result<()> {
        let db = self.store.db();
        db.execute(
            &format!("INSERT INTO networks({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                n.id,
                n.name,
                n.subnet,
                n.gateway.to_string(),
                n.bridge,
                n.internal,
                n.dns,
                n.labels,
                n.created
            ],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, Some(m))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                if m.contains("networks.subnet") {
                    Error::AlreadyExists(format!("a network with subnet {}", n.subnet))
                } else {
                    Error::AlreadyExists(format!("network {}", n.name))
                }
            }
            e => e.into(),
        })?;
        Ok(())
    }

    /// Every network, oldest first.
    pub fn list(&self) -> Result<Vec<NetworkRecord>> {
        let db = self.store.db();
        let mut st = db.prepare(&format!(
            "SELECT {COLUMNS} FROM networks ORDER BY created, rowid"
        ))?;
        let rows = st.query_map([], network_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One network by name.
    pub fn by_name(&self, name: &str) -> Result<Option<NetworkRecord>> {
        let db = self.store.db();
        Ok(db
            .query_row(
                &format!("SELECT {COLUMNS} FROM networks WHERE name = ?1"),
                [name],
                network_row,
            )
            .optional()?)
    }

    /// Removes a network that no container is attached to; `InUse` names the containers.
    pub fn remove(&self, id: &str) -> Result<()> {
        let mut db = self.store.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let users: Vec<String> = {
            let mut st = tx.prepare("SELECT container FROM endpoints WHERE network = ?1")?;
            let rows = st.query_map([id], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if !users.is_empty() {
            return Err(Error::InUse(format!(
                "network {} (by {} container(s): {})",
                &id[..id.len().min(12)],
                users.len(),
                users
                    .iter()
                    .map(|u| &u[..u.len().min(12)])
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if tx.execute("DELETE FROM networks WHERE id = ?1", [id])? == 0 {
            return Err(Error::NotFound(format!("network {id}")));
        }
        tx.commit()?;
        Ok(())
    }

    /// Gives `container` an address on network `id`: `want` if given (refused when taken or
    /// outside the subnet), else the next free one after the last one given.
    pub fn attach(
        &self,
        id: &str,
        container: &str,
        want: Option<Ipv4Addr>,
        aliases: &[String],
    ) -> Result<Ipv4Addr> {
        let mut db = self.store.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let net = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM networks WHERE id = ?1"),
                [id],
                network_row,
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("network {id}")))?;
        let cidr = parse_cidr(&net.subnet).ok_or_else(|| Error::Corrupt {
            what: format!("network {}", net.name),
            why: format!("subnet {:?}", net.subnet),
        })?;
        let taken: std::collections::HashSet<u32> = {
            let mut st = tx.prepare("SELECT ip FROM endpoints WHERE network = ?1")?;
            let rows = st.query_map([id], |r| r.get::<_, String>(0))?;
            rows.filter_map(|r| r.ok()?.parse::<Ipv4Addr>().ok().map(u32::from))
                .collect()
        };
        let first = u32::from(cidr.0) + 1;
        let last = u32::from(cidr.0) + (1u32 << (32 - cidr.1)) - 2;
        let gw = u32::from(net.gateway);
        let ip = match want {
            Some(ip) => {
                let n = u32::from(ip);
                if !(first..=last).contains(&n) || n == gw {
                    return Err(Error::InUse(format!(
                        "address {ip} (not a free host address of {}'s subnet {})",
                        net.name, net.subnet
                    )));
                }
                if taken.contains(&n) {
                    return Err(Error::InUse(format!(
                        "address {ip} on network {}",
                        net.name
                    )));
                }
                ip
            }
            None => {
                let prev: Option<String> =
                    tx.query_row("SELECT last_ip FROM networks WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })?;
                let start = prev
                    .and_then(|p| p.parse::<Ipv4Addr>().ok())
                    .map(u32::from)
                    .filter(|p| (first..=last).contains(p))
                    .map_or(first, |p| p + 1);
                (start..=last)
                    .chain(first..start)
                    .find(|n| *n != gw && !taken.contains(n))
                    .map(Ipv4Addr::from)
                    .ok_or_else(|| {
                        Error::InUse(format!(
                            "every address of network {} ({})",
                            net.name, net.subnet
                        ))
                    })?
            }
        };
        if want.is_none() {
            tx.execute(
                "UPDATE networks SET last_ip = ?2 WHERE id = ?1",
                params![id, ip.to_string()],
            )?;
        }
        tx.execute(
            "INSERT INTO endpoints(network, container, ip, aliases) VALUES (?1, ?2, ?3, ?4)",
            params![id, container, ip.to_string(), aliases.join(",")],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::AlreadyExists(format!(
                    "endpoint of container {} on network {}",
                    &container[..container.len().min(12)],
                    net.name
                ))
            }
            e => e.into(),
        })?;
        tx.commit()?;
        Ok(ip)
    }

    /// Releases a container's address on one network; true when it had one.
    pub fn detach(&self, id: &str, container: &str) -> Result<bool> {
        let db = self.store.db();
        Ok(db.execute(
            "DELETE FROM endpoints WHERE network = ?1 AND container = ?2",
            [id, container],
        )? > 0)
    }

    /// Releases every address a container holds.
    pub fn release(&self, container: &str) -> Result<()> {
        let db = self.store.db();
        db.execute("DELETE FROM endpoints WHERE container = ?1", [container])?;
        Ok(())
    }

    /// A container's endpoints, in the order it joined them.
    pub fn endpoints_of(&self, container: &str) -> Result<Vec<EndpointRow>> {
        self.endpoints("container", container)
    }

    /// The endpoints on a network.
    pub fn endpoints_on(&self, id: &str) -> Result<Vec<EndpointRow>> {
        self.endpoints("network", id)
    }

    fn endpoints(&self, column: &str, value: &str) -> Result<Vec<EndpointRow>> {
        let db = self.store.db();
        let mut st = db.prepare(&format!(
            "SELECT network, container, ip, aliases FROM endpoints WHERE {column} = ?1 ORDER BY rowid"
        ))?;
        let rows = st.query_map([value], endpoint_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &Store, name: &str, subnet: &str) -> NetworkRecord {
        let (a, _) = parse_cidr(subnet).unwrap();
        let n = NetworkRecord {
            id: format!("{name:0>64}"),
            name: name.into(),
            subnet: subnet.into(),
            gateway: Ipv4Addr::from(u32::from(a) + 1),
            bridge: format!("br-{name}"),
            internal: false,
            dns: true,
            labels: "{}".into(),
            created: 1,
        };
        s.networks().create(&n).unwrap();
        n
    }

    #[test]
    fn addresses_are_unique_reused_after_release_and_bounded_by_the_subnet() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let n = net(&s, "a", "10.9.0.0/29"); // hosts .1-.6, gateway .1
        let nets = s.networks();
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| nets.attach(&n.id, &format!("c{i}"), None, &[]).unwrap())
            .collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 9, 0, 6));
        assert!(matches!(
            nets.attach(&n.id, "c9", None, &[]),
            Err(Error::InUse(_))
        ));
        assert!(nets.detach(&n.id, "c2").unwrap());
        assert_eq!(
            nets.attach(&n.id, "c9", None, &[]).unwrap(),
            Ipv4Addr::new(10, 9, 0, 4)
        );
        // Round robin: a released address is given again only after the others.
        assert!(nets.detach(&n.id, "c9").unwrap());
        assert!(nets.detach(&n.id, "c3").unwrap());
        assert_eq!(
            nets.attach(&n.id, "c10", None, &[]).unwrap(),
            Ipv4Addr::new(10, 9, 0, 5)
        );
        // A chosen address: taken, the gateway, or outside the subnet is refused.
        nets.release("c0").unwrap();
        for bad in ["10.9.0.3", "10.9.0.1", "10.9.0.7", "10.8.0.2"] {
            assert!(nets
                .attach(&n.id, "x", Some(bad.parse().unwrap()), &[])
                .is_err());
        }
        let ip = nets
            .attach(
                &n.id,
                "x",
                Some("10.9.0.2".parse().unwrap()),
                &["db".into()],
            )
            .unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(nets.endpoints_of("x").unwrap()[0].aliases, vec!["db"]);
        // In use: refused; once empty, removed.
        assert!(matches!(nets.remove(&n.id), Err(Error::InUse(_))));
        for c in ["c1", "c4", "c10", "x"] {
            nets.release(c).unwrap();
        }
        nets.remove(&n.id).unwrap();
        assert!(nets.list().unwrap().is_empty());
    }

    #[test]
    fn a_name_or_subnet_is_taken_once() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut n = net(&s, "a", "10.9.0.0/24");
        n.id = "b".repeat(64);
        n.bridge = "other".into();
        n.subnet = "10.10.0.0/24".into();
        assert!(
            matches!(s.networks().create(&n), Err(Error::AlreadyExists(m)) if m.contains("network a"))
        );
        n.name = "b".into();
        n.subnet = "10.9.0.0/24".into();
        assert!(
            matches!(s.networks().create(&n), Err(Error::AlreadyExists(m)) if m.contains("subnet"))
        );
    }

    #[test]
    fn concurrent_attaches_never_share_an_address() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let n = net(&s, "a", "10.9.0.0/24");
        let root = d.path().to_path_buf();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let root = root.clone();
                let id = n.id.clone();
                std::thread::spawn(move || {
                    let s = Store::open(&root).unwrap();
                    (0..20)
                        .map(|i| {
                            s.networks()
                                .attach(&id, &format!("t{t}c{i}"), None, &[])
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 80);
    }
}
