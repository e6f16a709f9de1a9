//! `kiln stats`: a running container's CPU, memory, PIDs and network counters, read from its
//! cgroup v1 groups (`/sys/fs/cgroup/<controller>/kiln/<id>`) and from its network namespace's
//! `/proc/<pid>/net/dev`, computed as Docker computes them.

use super::*;

/// One reading of a container's counters.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// CPU time used, nanoseconds (cpuacct.usage).
    pub cpu_ns: Option<u64>,
    /// Memory in use without the inactive page cache, as Docker shows it.
    pub mem_usage: Option<u64>,
    /// Its memory limit, or the host's memory when it has none.
    pub mem_limit: u64,
    pub pids: Option<u64>,
    /// Bytes received and sent on its interfaces (loopback excluded).
    pub net: Option<(u64, u64)>,
    pub at: Option<std::time::Instant>,
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn group(ctrl: &str, id: &str) -> PathBuf {
    Path::new(runtime::devices::CGROUP_ROOT)
        .join(ctrl)
        .join("kiln")
        .join(id)
}

/// The host's memory (MemTotal), bytes.
fn host_memory() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// (received, sent) bytes over every interface but loopback in `/proc/net/dev` text.
pub fn net_bytes(dev: &str) -> (u64, u64) {
    let mut rx = 0;
    let mut tx = 0;
    for l in dev.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    (rx, tx)
}

/// Reads a running container's counters now.
pub fn sample(row: &ContainerRow) -> Sample {
    let id = &row.record.id;
    let mem = group("memory", id);
    let usage = read_u64(&mem.join("memory.usage_in_bytes")).map(|u| {
        // Docker (cgroup v1): usage minus the inactive file cache.
        let inactive = fs::read_to_string(mem.join("memory.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("total_inactive_file "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        u.saturating_sub(inactive)
    });
    let host = host_memory();
    let limit = read_u64(&mem.join("memory.limit_in_bytes"))
        .filter(|l| *l < host)
        .unwrap_or(host);
    let net = row
        .pid
        .and_then(|p| fs::read_to_string(format!("/proc/{p}/net/dev")).ok())
        .map(|d| net_bytes(&d));
    Sample {
        cpu_ns: read_u64(&group("cpuacct", id).join("cpuacct.usage")),
        mem_usage: usage,
        mem_limit: limit,
        pids: read_u64(&group("pids", id).join("pids.current")),
        net,
        at: Some(std::time::Instant::now()),
    }
}

/// CPU % between two samples: CPU time over wall time, 100% per busy CPU (Docker's scale).
pub fn cpu_percent(before: &Sample, after: &Sample) -> Option<f64> {
    let (a, b) = (before.cpu_ns?, after.cpu_ns?);
    let wall = after.at?.duration_since(before.at?).as_nanos() as f64;
    (wall > 0.0).then(|| b.saturating_sub(a) as f64 / wall * 100.0)
}

/// Docker's binary size (`units.BytesSize`: four significant digits, KiB, MiB...).
pub fn bytes_size(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    let s = format!("{v:.4}");
    // %.4g: four significant digits, trailing zeros dropped.
    let int_digits = s.split('.').next().map_or(1, |p| p.len());
    let decimals = 4usize.saturating_sub(int_digits);
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_network_counters_read_as_docker_shows_them() {
        assert_eq!(bytes_size(0), "0B");
        assert_eq!(bytes_size(1536), "1.5KiB");
        assert_eq!(bytes_size(2_847_000), "2.715MiB");
        assert_eq!(bytes_size(25_165_824_000), "23.44GiB");
        let dev = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    1466      17    0    0    0     0          0         0      866       9    0    0    0     0       0          0\n";
        assert_eq!(net_bytes(dev), (1466, 866));
        let a = Sample {
            cpu_ns: Some(0),
            at: Some(std::time::Instant::now()),
            ..Default::default()
        };
        let b = Sample {
            cpu_ns: Some(500_000_000),
            at: a.at.map(|t| t + Duration::from_secs(1)),
            ..Default::default()
        };
        assert_eq!(cpu_percent(&a, &b), Some(50.0));
    }
}
