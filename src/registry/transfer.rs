//! Transfers: a deadline on progress for every body read (a stalled registry cannot hang a pull), and a bounded pool for moving several blobs at once.

#[allow(unused_imports)]
use super::*;

/// How long a transfer may go without progress: no byte at all, or under 1 KiB/s over the whole
/// period, ends it (`KILN_REGISTRY_STALL_TIMEOUT` seconds, default 60). There is no total
/// timeout: a large layer over a slow link is legitimate.
pub fn stall_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("KILN_REGISTRY_STALL_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(60),
    )
}

/// The slowest rate that counts as progress.
pub(super) const MIN_RATE: u64 = 1024;

/// Ends a read that makes no progress (see [`stall_timeout`]); each read waits at most that
/// long too (the agent's read timeout).
pub struct Deadline<R> {
    inner: R,
    stall: Duration,
    window: std::time::Instant,
    bytes: u64,
}

impl<R> Deadline<R> {
    pub fn new(inner: R) -> Deadline<R> {
        Deadline {
            inner,
            stall: stall_timeout(),
            window: std::time::Instant::now(),
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stalled = |msg: String| io::Error::new(io::ErrorKind::TimedOut, msg);
        let secs = self.stall.as_secs();
        let n = match self.inner.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(stalled(format!("no data for {secs} s")))
            }
            r => r?,
        };
        self.bytes += n as u64;
        if self.window.elapsed() >= self.stall {
            if self.bytes < MIN_RATE * secs {
                return Err(stalled(format!(
                    "{} bytes in {secs} s, under 1 KiB/s (KILN_REGISTRY_STALL_TIMEOUT sets the period)",
                    self.bytes
                )));
            }
            self.window = std::time::Instant::now();
            self.bytes = 0;
        }
        Ok(n)
    }
}

/// Layers downloaded at once (Docker's `max-concurrent-downloads`).
pub const PARALLEL_DOWNLOADS: usize = 3;
/// Blobs uploaded at once (Docker's `max-concurrent-uploads`).
pub const PARALLEL_UPLOADS: usize = 5;

/// Runs `f` on every item with at most `workers` threads (a manifest names any number of
/// layers: never one thread per item); results in the items' order.
pub(super) fn bounded<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<R>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)))
                    .unwrap_or_else(|_| Err(RegistryError::Invalid("a transfer panicked".into())));
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(RegistryError::Invalid("a transfer did not run".into())))
        })
        .collect()
}
