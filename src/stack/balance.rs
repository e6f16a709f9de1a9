//! A service's published ports: one listener per port, each connection sent to the next ready
//! replica in turn (round robin over their bridge addresses), as swarm's ingress spreads
//! connections on one node. A replica that refuses is skipped for the next one, so a client
//! only sees a failure when none answers. The supervisor sets the list; a replica leaves it
//! before it is stopped, and `drain` waits for its open connections to end.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The replicas a service's connections go to.
#[derive(Default)]
pub struct Backends {
    inner: Mutex<Inner>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    list: Vec<Ipv4Addr>,
    /// Connections per replica address, counted from the moment one is picked: a replica
    /// out of the list whose count is zero gets no more.
    active: HashMap<Ipv4Addr, usize>,
}

impl Backends {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, list: Vec<Ipv4Addr>) {
        self.lock().list = list;
    }

    /// The `k`th replica after the connection's turn `first`, counted as busy.
    fn pick(&self, first: usize, k: usize) -> Option<Ipv4Addr> {
        let mut g = self.lock();
        if k >= g.list.len() {
            return None;
        }
        let ip = g.list[(first + k) % g.list.len()];
        *g.active.entry(ip).or_default() += 1;
        Some(ip)
    }

    fn done(&self, ip: Ipv4Addr) {
        let mut g = self.lock();
        if let Some(n) = g.active.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                g.active.remove(&ip);
            }
        }
    }

    /// Waits (at most `max`) until no connection to `ip` is open; it must be out of the list.
    pub fn drain(&self, ip: Ipv4Addr, max: Duration) {
        let t = Instant::now();
        while t.elapsed() < max && self.lock().active.contains_key(&ip) {
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
            let first = b.next.fetch_add(1, Ordering::Relaxed);
            // Nothing ready (or nothing answers): the client sees the connection closed.
            let mut k = 0;
            while let Some(ip) = b.pick(first, k) {
                let to = SocketAddr::from((ip, port));
                if let Ok(server) = crate::network::rootless::connect(to, Duration::from_secs(2)) {
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    crate::container::ports::splice(client, server);
                    b.done(ip);
                    return;
                }
                b.done(ip);
                k += 1;
            }
        });
    }
}
