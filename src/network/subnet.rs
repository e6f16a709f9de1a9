//! Choosing a network's subnet: Docker's address pools (172.17.0.0/16 for the default network,
//! 172.18-31.0.0/16, then 192.168.0.0/16 in /20s), skipping what this store's networks use, what
//! the host routes to or resolves through, and what another store on the machine claimed.
//! A claim is a file under /run/kiln/subnets naming the claiming store's root; a claim whose
//! store is gone (its database removed) is stale and taken over.

use super::NetworkError;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Root's machine-wide network state.
const RUN_DIR: &str = "/run/kiln";

/// Where network state lives: /run/kiln for root; rootless, the user's own runtime dir (the
/// user's networks live in the user's rootless network namespace, so their subnets and
/// netavark's lock are the user's alone).
pub(super) fn run_dir() -> PathBuf {
    crate::rootless::runtime_dir_inside()
        .map(|d| d.join("net"))
        .unwrap_or_else(|| PathBuf::from(RUN_DIR))
}

type Cidr = (Ipv4Addr, u8);

/// Whether two subnets share an address.
pub fn overlap(a: Cidr, b: Cidr) -> bool {
    kiln_store::networks::contains(a, b.0) || kiln_store::networks::contains(b, a.0)
}

/// The candidate pools, in order.
fn candidates(default: bool) -> Vec<Cidr> {
    let mut c = Vec::new();
    if default {
        c.push((Ipv4Addr::new(172, 17, 0, 0), 16));
    }
    c.extend((18..=31).map(|b| (Ipv4Addr::new(172, b, 0, 0), 16)));
    c.extend((0..16).map(|i| (Ipv4Addr::new(192, 168, i * 16, 0), 20)));
    c
}

/// The host's routes (from /proc/net/route; not the default route) and IPv4 resolvers (/32).
pub fn host_nets(routes: &str, resolv: &str) -> Vec<Cidr> {
    let mut out = Vec::new();
    for l in routes.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // The kernel prints the network-order words as host-order (little-endian) numbers.
        let len = mask.count_ones() as u8;
        if len > 0 {
            out.push((Ipv4Addr::from(dst.to_le_bytes()), len));
        }
    }
    for l in resolv.lines() {
        if let Some(ip) = l
            .strip_prefix("nameserver")
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
        {
            out.push((ip, 32));
        }
    }
    out
}

fn claim_path(c: Cidr) -> PathBuf {
    run_dir().join("subnets").join(format!("{}_{}", c.0, c.1))
}

/// Claims `c` for the store at `root`: refused when a live other store holds it.
pub fn claim(root: &Path, c: Cidr) -> Result<(), NetworkError> {
    let p = claim_path(c);
    let dir = p.parent().expect("claim has a parent");
    fs::create_dir_all(dir)
        .map_err(|e| NetworkError::Invalid(format!("create {}: {e}", dir.display())))?;
    let me = root.to_string_lossy().to_string();
    for _ in 0..3 {
        match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(mut f) => {
                f.write_all(me.as_bytes())
                    .map_err(|e| NetworkError::Invalid(format!("write {}: {e}", p.display())))?;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&p).unwrap_or_default();
                if owner == me {
                    return Ok(());
                }
                if !owner.is_empty() && Path::new(&owner).join("kiln.db").exists() {
                    return Err(NetworkError::Invalid(format!(
                        "subnet {}/{} is used by the kiln store at {owner}",
                        c.0, c.1
                    )));
                }
                let _ = fs::remove_file(&p);
            }
            Err(e) => return Err(NetworkError::Invalid(format!("claim {}: {e}", p.display()))),
        }
    }
    Err(NetworkError::Invalid(format!(
        "could not claim subnet {}/{}",
        c.0, c.1
    )))
}

/// Gives a claim of this store's back.
pub fn unclaim(root: &Path, c: Cidr) {
    let p = claim_path(c);
    if fs::read_to_string(&p).is_ok_and(|o| o == root.to_string_lossy()) {
        let _ = fs::remove_file(p);
    }
}

/// The first free candidate, claimed.
pub fn pick(root: &Path, taken: &[Cidr], default: bool) -> Result<Cidr, NetworkError> {
    let host = host_nets(
        &fs::read_to_string("/proc/net/route").unwrap_or_default(),
        &fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    );
    for c in candidates(default) {
        if taken.iter().chain(&host).any(|t| overlap(*t, c)) {
            continue;
        }
        if claim(root, c).is_ok() {
            return Ok(c);
        }
    }
    Err(NetworkError::Invalid(
        "no free subnet left in the default pools (172.17-31.0.0/16, 192.168.0.0/16 in /20s): remove unused networks (kiln network prune) or give --subnet".into(),
    ))
}
