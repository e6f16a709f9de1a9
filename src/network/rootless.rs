//! A rootless container's network: bridges, veths and firewall rules need root on the host, so
//! a container of an ordinary user gets a network namespace of its own (bound at
//! `<root>/netns/<id>` as on a bridge) with loopback up and, when pasta (Debian's passt
//! package) is installed, outbound access through it: pasta copies the host's addresses and
//! routes into the namespace and relays its traffic through ordinary sockets of the user. The
//! gateway's address reaches the host itself. Published ports stay kiln's own forwarder, which
//! needs no privilege (ports below `net.ipv4.ip_unprivileged_port_start` are refused first).
//! pasta ends by itself when the namespace's handle is removed at the container's exit.
//!
//! User-defined networks live in one more namespace of the user's, shared by their containers
//! (podman's rootless netns, [`shared_netns`]): netavark runs inside it, so its bridges,
//! firewall rules and aardvark-dns are the user's, reached from the host only through pasta and
//! published ports.

use super::{netns, NetworkError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// pasta's path, if installed.
pub fn pasta() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("pasta"))
        .find(|p| p.is_file())
}

/// How containers get their network here, for `kiln info`.
pub fn describe() -> String {
    if !crate::rootless::active() {
        return "bridge (netavark; aardvark-dns on user networks)".into();
    }
    match pasta() {
        Some(_) if tun_usable() => "rootless: a namespace per container, outbound through pasta; user-defined networks in the user's own namespace (netavark, aardvark-dns); published ports through kiln's forwarder".into(),
        Some(_) => "rootless: a namespace per container with loopback only (pasta is installed but /dev/net/tun cannot be opened); published ports through kiln's forwarder".into(),
        None => "rootless: a namespace per container with loopback only (install Debian's passt package for outbound access); published ports through kiln's forwarder".into(),
    }
}

/// Whether this user can open /dev/net/tun (pasta needs it; Debian makes it 0666).
fn tun_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok()
}

/// Makes the container's namespace, bound at its handle; [`finish`] connects it.
pub fn prepare(root: &Path, id: &str) -> Result<PathBuf, NetworkError> {
    let ns = netns::path(root, id);
    netns::create(&ns)
        .map_err(|e| NetworkError::Invalid(format!("create the network namespace: {e}")))?;
    Ok(ns)
}

/// The user's shared network namespace, where user-defined networks live (podman's rootless
/// netns): bound at `<runtime dir>/net/rootless-netns`, made on first use with loopback and
/// pasta; `None` for root. Called with the netavark lock held.
pub fn shared_netns() -> Result<Option<PathBuf>, NetworkError> {
    if !crate::rootless::active() {
        return Ok(None);
    }
    let ns = super::subnet::run_dir().join("rootless-netns");
    if !netns::is_live(&ns) {
        netns::create(&ns)
            .map_err(|e| NetworkError::Invalid(format!("create {}: {e}", ns.display())))?;
        finish(&ns)?;
    }
    Ok(Some(ns))
}

/// A TCP connection to `to`, an address on a user-defined network: made from inside the user's
/// shared network namespace when rootless (a thread of its own enters it; the socket keeps its
/// namespace after), from here for root. What a stack's balancer and readiness checks use.
pub fn connect(
    to: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    use std::net::TcpStream;
    if !crate::rootless::active() {
        return TcpStream::connect_timeout(&to, timeout);
    }
    let ns = super::subnet::run_dir().join("rootless-netns");
    netns::within(&ns, || TcpStream::connect_timeout(&to, timeout))
}

/// Brings the namespace's loopback up and starts pasta for it (when it can run). Undone by
/// removing the handle.
pub fn finish(ns: &Path) -> Result<(), NetworkError> {
    let undo = |why: String| {
        let _ = netns::remove(ns);
        NetworkError::Invalid(why)
    };
    netns::within(ns, crate::sys::proc::loopback_up)
        .map_err(|e| undo(format!("bring loopback up in {}: {e}", ns.display())))?;
    let Some(pasta) = pasta() else {
        return Ok(());
    };
    if !tun_usable() {
        return Ok(());
    }
    // No port forwarding by pasta (-t/-u/-T/-U none): kiln's forwarder publishes ports.
    let out = Command::new(&pasta)
        .args(["--config-net", "--quiet", "--netns"])
        .arg(ns)
        .args(["-t", "none", "-u", "none", "-T", "none", "-U", "none"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| undo(format!("run {}: {e}", pasta.display())))?;
    if !out.status.success() {
        // A machine without a route out (pasta has nothing to copy) still runs the container,
        // as Docker's would run on a bridge that leads nowhere: loopback and published ports.
        tracing::warn!(
            "pasta --config-net --netns {}: {}: the container has loopback only",
            ns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
