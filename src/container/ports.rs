//! Published ports: `-p [IP:]HOST:CTR[/tcp]` listens on the host and, for each connection,
//! connects to the container's port from inside its network namespace, then copies both ways.
//!
//! The connecting sockets are made by one thread that has joined the container's network
//! namespace with setns(2) (a namespace switch is per thread, so the rest of kiln stays on the
//! host's network); a socket keeps the namespace it was made in, so the stream it returns is used
//! from ordinary threads. The listeners are bound before the container starts, so a port in use
//! fails the run cleanly.

use serde::{Deserialize, Serialize};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::thread;

/// One published port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: String,
    /// 0 = any free port (chosen when bound).
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
}

impl PortSpec {
    /// Parses Docker's `-p` forms: `CTR`, `HOST:CTR`, `IP:HOST:CTR`, `IP::CTR`, each with an
    /// optional `/tcp` or `/udp`.
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        let bad = |why: &str| format!("invalid port specification {s:?}: {why}");
        let (rest, proto) = match s.rsplit_once('/') {
            Some((r, p)) => (r, p.to_ascii_lowercase()),
            None => (s, "tcp".to_string()),
        };
        if proto != "tcp" && proto != "udp" {
            return Err(bad("the protocol must be tcp or udp"));
        }
        let parts: Vec<&str> = rest.rsplitn(3, ':').collect();
        let (ip, host, ctr) = match parts.as_slice() {
            [c] => ("", "", *c),
            [c, h] => ("", *h, *c),
            [c, h, ip] => (*ip, *h, *c),
            _ => return Err(bad("too many parts")),
        };
        let port = |p: &str| -> Result<u16, String> {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(&format!("{p:?} is not a port number")))
        };
        let host_ip = if ip.is_empty() {
            "0.0.0.0"
        } else {
            ip.trim_matches(['[', ']'])
        };
        host_ip
            .parse::<std::net::IpAddr>()
            .map_err(|_| bad(&format!("{host_ip:?} is not an IP address")))?;
        Ok(PortSpec {
            host_ip: host_ip.to_string(),
            host_port: if host.is_empty() { 0 } else { port(host)? },
            container_port: port(ctr)?,
            proto,
        })
    }

    /// Docker's PORTS column form: `0.0.0.0:4000->80/tcp`.
    pub fn display(&self) -> String {
        format!(
            "{}:{}->{}/{}",
            self.host_ip, self.host_port, self.container_port, self.proto
        )
    }
}

/// Host listeners bound for a container's ports.
pub struct Listeners {
    tcp: Vec<(TcpListener, PortSpec)>,
}

/// Binds every port (a port in use is an error naming it); fills in chosen host ports.
pub fn bind(ports: &mut [PortSpec]) -> Result<Listeners, String> {
    let mut tcp = Vec::new();
    for p in ports.iter_mut() {
        if p.proto != "tcp" {
            return Err(format!(
                "publishing {} is not supported yet: only TCP ports can be published",
                p.display()
            ));
        }
        let addr: SocketAddr = (
            p.host_ip
                .parse::<std::net::IpAddr>()
                .unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            p.host_port,
        )
            .into();
        let l = TcpListener::bind(addr).map_err(|e| {
            format!(
                "cannot publish {}: bind {addr}: {e}{}",
                p.display(),
                if e.kind() == io::ErrorKind::AddrInUse {
                    " (the port is already allocated)"
                } else {
                    ""
                }
            )
        })?;
        p.host_port = l.local_addr().map(|a| a.port()).unwrap_or(p.host_port);
        tcp.push((l, p.clone()));
    }
    Ok(Listeners { tcp })
}

/// Serves every listener until the process ends: connections are forwarded to the container
/// whose network namespace `netns` is (an fd of /proc/PID/ns/net).
pub fn serve(listeners: Listeners, netns: OwnedFd) -> io::Result<()> {
    if listeners.tcp.is_empty() {
        return Ok(());
    }
    // The connector thread lives in the container's network namespace.
    let (tx, rx) = mpsc::channel::<(u16, mpsc::Sender<io::Result<TcpStream>>)>();
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    thread::spawn(move || {
        use std::os::fd::AsFd;
        if let Err(e) = crate::sys::proc::setns(netns.as_fd(), libc::CLONE_NEWNET) {
            let _ = ready_tx.send(Err(e));
            return;
        }
        let _ = ready_tx.send(Ok(()));
        for (port, reply) in rx {
            let _ = reply.send(TcpStream::connect((Ipv4Addr::LOCALHOST, port)));
        }
    });
    ready_rx
        .recv()
        .map_err(|_| io::Error::other("the port forwarder stopped"))??;
    for (listener, spec) in listeners.tcp {
        let tx = tx.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (rtx, rrx) = mpsc::channel();
                if tx.send((spec.container_port, rtx)).is_err() {
                    return;
                }
                let Ok(Ok(upstream)) = rrx.recv() else {
                    // Nothing listens in the container (yet): close, as a refused connection.
                    drop(client);
                    continue;
                };
                thread::spawn(move || splice(client, upstream));
            }
        });
    }
    Ok(())
}

/// Copies both ways until each side ends; half-closes so protocols that end a request with EOF
/// work.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        let (mut r, mut w) = (a2, b2);
        let _ = io::copy(&mut r, &mut w);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let (mut r, mut w) = (b, a);
    let _ = io::copy(&mut r, &mut w);
    let _ = w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dockers_port_forms() {
        let p = PortSpec::parse("4000:80").unwrap();
        assert_eq!(p.display(), "0.0.0.0:4000->80/tcp");
        let p = PortSpec::parse("127.0.0.1:8080:80/tcp").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.container_port),
            ("127.0.0.1", 8080, 80)
        );
        let p = PortSpec::parse("53/udp").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.proto.as_str()),
            (0, 53, "udp")
        );
        let p = PortSpec::parse("127.0.0.1::80").unwrap();
        assert_eq!(p.host_port, 0);
        assert!(PortSpec::parse("80/sctp").is_err());
        assert!(PortSpec::parse("x:80").is_err());
        assert!(PortSpec::parse("0:80").is_err());
        assert!(PortSpec::parse("nothost:1:80").is_err());
    }
}
