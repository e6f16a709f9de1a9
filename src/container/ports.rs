//! Published ports: `-p [IP:]HOST:CTR[/tcp|/udp]` listens on the host and, for each TCP
//! connection, connects to the container's port from inside its network namespace, then copies
//! both ways; for UDP, each client address gets its own socket inside, and replies go back to it.
//!
//! The connecting sockets are made by one thread that has joined the container's network
//! namespace with setns(2) (a namespace switch is per thread, so the rest of kiln stays on the
//! host's network); a socket keeps the namespace it was made in, so the stream it returns is used
//! from ordinary threads. The listeners are bound before the container starts, so a port in use
//! fails the run cleanly.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
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

    /// Parses `-p` with Docker's port ranges: `8000-8001:80-81` publishes two ports (the
    /// ranges must be as long as each other), `80-81` two on free host ports.
    pub fn parse_ranges(s: &str) -> Result<Vec<PortSpec>, String> {
        let bad = |why: &str| format!("invalid port specification {s:?}: {why}");
        let (rest, proto) = match s.rsplit_once('/') {
            Some((r, p)) => (r, Some(p)),
            None => (s, None),
        };
        let parts: Vec<&str> = rest.rsplitn(3, ':').collect();
        let (ctr, host) = (parts[0], parts.get(1).copied().unwrap_or(""));
        if !ctr.contains('-') && !host.contains('-') {
            return Ok(vec![PortSpec::parse(s)?]);
        }
        let range = |r: &str| -> Result<(u16, u16), String> {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let n = |x: &str| x.parse::<u16>().ok().filter(|v| *v > 0);
            match (n(a), n(b)) {
                (Some(a), Some(b)) if a <= b => Ok((a, b)),
                _ => Err(bad(&format!("{r:?} is not a port range"))),
            }
        };
        let (c0, c1) = range(ctr)?;
        // `-p 8000-8001:80` (a host range for one port) picks one of them in Docker; kiln
        // takes the ranges one to one, so say so rather than guess.
        let hosts = if host.is_empty() {
            None
        } else {
            let (h0, h1) = range(host)?;
            if h1 - h0 != c1 - c0 {
                return Err(bad("the host and container ranges differ in length"));
            }
            Some(h0)
        };
        let ip = parts.get(2).map(|ip| format!("{ip}:")).unwrap_or_default();
        let proto = proto.map(|p| format!("/{p}")).unwrap_or_default();
        (0..=(c1 - c0))
            .map(|i| {
                let host = hosts.map(|h| format!("{}:", h + i)).unwrap_or_default();
                PortSpec::parse(&format!("{ip}{host}{}{proto}", c0 + i))
            })
            .collect()
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
    udp: Vec<(UdpSocket, PortSpec)>,
}

/// Binds every port (a port in use is an error naming it); fills in chosen host ports. A port
/// published on every IPv4 address (`0.0.0.0`, the default) also listens on every IPv6 one
/// (`[::]`) when the host has IPv6, as Docker does; that listener is added to `ports` too, so
/// `ps` shows `0.0.0.0:4000->80/tcp, :::4000->80/tcp`.
pub fn bind(ports: &mut Vec<PortSpec>) -> Result<Listeners, String> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut v6 = Vec::new();
    for p in ports.iter_mut() {
        let addr: SocketAddr = (
            p.host_ip
                .parse::<std::net::IpAddr>()
                .unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            p.host_port,
        )
            .into();
        let shown = p.display();
        let why = |e: io::Error| {
            format!(
                "cannot publish {shown}: bind {addr}: {e}{}",
                if e.kind() == io::ErrorKind::AddrInUse {
                    " (the port is already allocated)"
                } else {
                    ""
                }
            )
        };
        if p.proto == "udp" {
            let s = UdpSocket::bind(addr).map_err(why)?;
            p.host_port = s.local_addr().map(|a| a.port()).unwrap_or(p.host_port);
            udp.push((s, p.clone()));
        } else {
            let l = TcpListener::bind(addr).map_err(why)?;
            p.host_port = l.local_addr().map(|a| a.port()).unwrap_or(p.host_port);
            tcp.push((l, p.clone()));
        }
        if p.host_ip == "0.0.0.0" {
            // Without IPv6 (no address family, or it is disabled) the IPv4 port is enough.
            if let Ok(fd) = crate::sys::bind_ipv6_only(p.host_port, p.proto == "udp") {
                let spec = PortSpec {
                    host_ip: "::".into(),
                    ..p.clone()
                };
                if p.proto == "udp" {
                    udp.push((UdpSocket::from(fd), spec.clone()));
                } else {
                    tcp.push((TcpListener::from(fd), spec.clone()));
                }
                v6.push(spec);
            }
        }
    }
    ports.extend(v6);
    Ok(Listeners { tcp, udp })
}

impl Listeners {
    /// The TCP listeners with their ports (a service's balancer serves them itself).
    pub(crate) fn into_tcp(self) -> Vec<(TcpListener, PortSpec)> {
        self.tcp
    }
}

/// A job run on the thread that lives in the container's network namespace.
type NsJob = Box<dyn FnOnce() + Send>;

/// Runs `make` on the namespace thread and returns what it made.
fn in_ns<T: Send + 'static>(
    tx: &mpsc::Sender<NsJob>,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (rtx, rrx) = mpsc::channel();
    tx.send(Box::new(move || {
        let _ = rtx.send(make());
    }))
    .map_err(|_| io::Error::other("the port forwarder stopped"))?;
    rrx.recv()
        .map_err(|_| io::Error::other("the port forwarder stopped"))?
}

/// Serves every listener until the process ends: connections are forwarded to the container
/// whose network namespace `netns` is (an fd of /proc/PID/ns/net).
pub fn serve(listeners: Listeners, netns: OwnedFd) -> io::Result<()> {
    if listeners.tcp.is_empty() && listeners.udp.is_empty() {
        return Ok(());
    }
    // The connector thread lives in the container's network namespace and makes its sockets.
    let (tx, rx) = mpsc::channel::<NsJob>();
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    thread::spawn(move || {
        if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
            let _ = ready_tx.send(Err(e.into()));
            return;
        }
        let _ = ready_tx.send(Ok(()));
        for job in rx {
            job();
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
                // Only the socket is made on the namespace thread (a quick call); the connect,
                // which waits when the server's accept queue is full, runs on the connection's
                // own thread, so one slow connect never holds up the next accept.
                let Ok(socket) = in_ns(&tx, stream_socket) else {
                    continue;
                };
                let port = spec.container_port;
                thread::spawn(move || {
                    let to = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, port);
                    // Nothing listens in the container (yet): close, as a refused connection.
                    if nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), &to)
                        .is_ok()
                    {
                        splice(client, TcpStream::from(socket));
                    }
                });
            }
        });
    }
    for (socket, spec) in listeners.udp {
        let tx = tx.clone();
        thread::spawn(move || udp_relay(socket, spec.container_port, tx));
    }
    Ok(())
}

/// An unconnected IPv4 TCP socket, in the calling thread's network namespace.
fn stream_socket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    Ok(socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// UDP: each client address gets its own socket in the container's namespace, connected to the
/// container port; what comes back on it goes to that client from the published socket.
fn udp_relay(host: UdpSocket, port: u16, tx: mpsc::Sender<NsJob>) {
    let mut peers: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = host.recv_from(&mut buf) else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = peers.entry(from) {
            let made = in_ns(&tx, move || {
                let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
                s.connect((Ipv4Addr::LOCALHOST, port))?;
                Ok(s)
            });
            let Ok(inner) = made else { continue };
            let (Ok(back), Ok(reply_to)) = (inner.try_clone(), host.try_clone()) else {
                continue;
            };
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = back.recv(&mut buf) {
                    if reply_to.send_to(&buf[..n], from).is_err() {
                        return;
                    }
                }
            });
            slot.insert(inner);
        }
        if let Some(s) = peers.get(&from) {
            let _ = s.send(&buf[..n]);
        }
    }
}

/// Copies both ways until each side ends; half-closes so protocols that end a request with EOF
/// work.
pub(crate) fn splice(a: TcpStream, b: TcpStream) {
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

    /// A thread in a fresh network namespace (loopback up) running a UDP and a TCP echo server
    /// on `port`; returns an fd of that namespace.
    fn echo_namespace(port: u16) -> OwnedFd {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            crate::sys::proc::loopback_up().unwrap();
            let tid = thread_id();
            let ns = std::fs::File::open(format!("/proc/self/task/{tid}/ns/net")).unwrap();
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
            let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
            tx.send(OwnedFd::from(ns)).unwrap();
            thread::spawn(move || {
                for c in tcp.incoming().flatten() {
                    let mut r = c.try_clone().unwrap();
                    let mut w = c;
                    thread::spawn(move || {
                        let _ = io::copy(&mut r, &mut w);
                    });
                }
            });
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        });
        rx.recv().unwrap()
    }

    fn thread_id() -> i64 {
        std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn tcp_and_udp_reach_a_server_in_another_network_namespace() {
        if !crate::sys::test_has_root("network namespaces need root") {
            return;
        }
        let ns = echo_namespace(7007);
        let mut specs = vec![
            PortSpec::parse("127.0.0.1::7007/tcp").unwrap(),
            PortSpec::parse("127.0.0.1::7007/udp").unwrap(),
        ];
        let l = bind(&mut specs).unwrap();
        serve(l, ns).unwrap();
        // UDP: two clients, each answered on its own.
        for i in 0..2 {
            let c = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let msg = format!("ping {i}");
            c.send_to(msg.as_bytes(), (Ipv4Addr::LOCALHOST, specs[1].host_port))
                .unwrap();
            let mut buf = [0u8; 64];
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], msg.as_bytes());
        }
        // TCP, with a half-close.
        use std::io::{Read, Write};
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, specs[0].host_port)).unwrap();
        c.write_all(b"hello tcp").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello tcp");
        // The same host port again: refused with a clear error.
        let mut again = vec![specs[0].clone()];
        let err = bind(&mut again).err().unwrap();
        assert!(err.contains("already allocated"), "{err}");
    }

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
        let r = PortSpec::parse_ranges("127.0.0.1:8000-8001:80-81/udp").unwrap();
        let shown: Vec<String> = r.iter().map(PortSpec::display).collect();
        assert_eq!(shown, ["127.0.0.1:8000->80/udp", "127.0.0.1:8001->81/udp"]);
        assert_eq!(PortSpec::parse_ranges("80-82").unwrap().len(), 3);
        assert_eq!(
            PortSpec::parse_ranges("[::1]:8080:80").unwrap()[0].host_ip,
            "::1"
        );
        assert!(PortSpec::parse_ranges("8000-8002:80-81").is_err());
        assert!(PortSpec::parse_ranges("81-80").is_err());
        assert!(PortSpec::parse("x:80").is_err());
        assert!(PortSpec::parse("0:80").is_err());
        assert!(PortSpec::parse("nothost:1:80").is_err());
    }
}
