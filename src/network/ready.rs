//! Waiting for aardvark-dns. netavark 1.4 starts aardvark-dns with the first container on a
//! network that resolves names, and returns before it answers; netavark stops it again with the
//! network's last container. A container started right after (`run -d --name db ...`, then
//! `run app` which looks `db` up) could then fail its first lookup. So after a setup, kiln asks
//! the network's resolver for the new container's own name from inside its namespace, which
//! aardvark-dns answers from its own records, never upstream: one round trip when it is up,
//! a short wait when it is starting, never more than two seconds.

use super::Endpoint;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to wait for a resolver that does not answer.
const LIMIT: Duration = Duration::from_secs(2);

/// A DNS query (RFC 1035 4.1) for the A record of `name`.
fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0x6b, 0x6e, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let l = &label.as_bytes()[..label.len().min(63)];
        q.push(l.len() as u8);
        q.extend_from_slice(l);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Waits until the resolver of the first network in `eps` that resolves names answers a lookup
/// of `name` made from the namespace at `ns` (see the module docs). Best effort: a resolver
/// that never answers only costs the wait.
pub(super) fn wait_for_dns(ns: &Path, eps: &[Endpoint], name: &str) {
    let Some(gateway) = eps
        .iter()
        .find(|e| e.network.dns)
        .map(|e| e.network.gateway)
    else {
        return;
    };
    let q = query(name);
    let _ = super::netns::within(ns, || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect((gateway, 53))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let start = Instant::now();
        let mut buf = [0u8; 512];
        while start.elapsed() < LIMIT {
            let _ = sock.send(&q);
            match sock.recv(&mut buf) {
                Ok(n) if n >= 2 && buf[..2] == q[..2] => return Ok(()),
                Ok(_) => {}
                // Nothing listens yet (an ICMP port unreachable): try again shortly.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => {}
            }
        }
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_query_asks_for_an_a_record_by_labels() {
        let q = super::query("web.app");
        assert_eq!(&q[4..6], &[0, 1], "one question");
        assert_eq!(&q[12..], b"\x03web\x03app\x00\x00\x01\x00\x01");
    }
}
