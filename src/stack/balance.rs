//! A service's published ports: one listener per port, each connection sent to the next ready
//! replica in turn (round robin over their bridge addresses), as swarm's ingress spreads
//! connections on one node. A replica that refuses is skipped for the next one, so a client
//! only sees a failure when none answers. The supervisor sets the list; a replica leaves it
//! before it is stopped, and `drain` waits for its open connections to end.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

/// The replicas a service's connections go to.
#[derive(Default)]
pub struct Backends {
    list: RwLock<Vec<Ipv4Addr>>,
    next: AtomicUsize,
    /// Open connections per replica address.
    active: Mutex<HashMap<Ipv4Addr, usize>>,
}

impl Backends {
    pub fn set(&self, list: Vec<Ipv4Addr>) {
        let mut l = self.list.write().unwrap_or_else(|e| e.into_inner());
        if *l != list {
            *l = list;
        }
    }

    fn snapshot(&self) -> Vec<Ipv4Addr> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, ip: Ipv4Addr, delta: isize) {
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let n = a.entry(ip).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            a.remove(&ip);
        }
    }

    /// Waits (at most `max`) until no connection to `ip` is open; it must be out of the list.
    pub fn drain(&self, ip: Ipv4Addr, max: Duration) {
        let t = Instant::now();
        while t.elapsed() < max {
            if !self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&ip)
            {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Accepts on `listener` until the process ends, forwarding to `port` of the backends.
pub fn serve(listener: TcpListener, port: u16, b: Arc<Backends>) {
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let b = b.clone();
        thread::spawn(move || {
            let list = b.snapshot();
            if list.is_empty() {
                return; // nothing ready: the client sees the connection closed
            }
            let first = b.next.fetch_add(1, Ordering::Relaxed);
            for k in 0..list.len() {
                let ip = list[(first + k) % list.len()];
                let to = SocketAddr::from((ip, port));
                if let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    b.count(ip, 1);
                    crate::container::ports::splice(client, server);
                    b.count(ip, -1);
                    return;
                }
            }
        });
    }
}
