//! Health checks: the image's HEALTHCHECK (or `--health-*`), run inside the container by its
//! owner (the supervisor, or the foreground `kiln run`) while it runs, as Docker's daemon does.
//! The state is kept beside the container (`<root>/containers/<id>/health.json`), written whole
//! (temp file, rename); `ps` shows it as `Up 2 minutes (healthy)` and `inspect` as State.Health.

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Docker's defaults: every 30 s, 30 s to answer, 3 failures in a row make it unhealthy.
const INTERVAL: u64 = 30_000_000_000;
const TIMEOUT: u64 = 30_000_000_000;
const RETRIES: u32 = 3;
/// The output kept of each probe, and how many probes are kept (Docker's).
const MAX_OUTPUT: usize = 4096;
const MAX_LOG: usize = 5;

/// A container's health check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// `["CMD", args...]` or `["CMD-SHELL", line]`.
    pub test: Vec<String>,
    /// Nanoseconds.
    pub interval: u64,
    pub timeout: u64,
    pub start_period: u64,
    pub retries: u32,
}

impl HealthConfig {
    /// The check the image config's `Healthcheck` asks for (none for `["NONE"]`), with Docker's
    /// defaults for what it leaves at 0; `over` (the `--health-*` flags) wins field by field.
    pub fn resolve(
        image: Option<&serde_json::Value>,
        over: &HealthConfig,
        disabled: bool,
    ) -> Option<HealthConfig> {
        if disabled {
            return None;
        }
        let n = |k: &str| {
            image
                .and_then(|h| h.get(k))
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
        };
        let test: Vec<String> = if !over.test.is_empty() {
            over.test.clone()
        } else {
            image
                .and_then(|h| h.get("Test"))
                .and_then(|t| t.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        if test.first().is_none_or(|t| t == "NONE") || test.len() < 2 {
            return None;
        }
        let pick = |o: u64, i: u64, d: u64| match (o, i) {
            (0, 0) => d,
            (0, i) => i,
            (o, _) => o,
        };
        Some(HealthConfig {
            test,
            interval: pick(over.interval, n("Interval"), INTERVAL),
            timeout: pick(over.timeout, n("Timeout"), TIMEOUT),
            start_period: pick(over.start_period, n("StartPeriod"), 0),
            retries: match (over.retries, n("Retries") as u32) {
                (0, 0) => RETRIES,
                (0, i) => i,
                (o, _) => o,
            },
        })
    }

    /// The command to run.
    fn argv(&self) -> Vec<String> {
        match self.test.first().map(String::as_str) {
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), self.test[1..].join(" ")],
            _ => self.test[1..].to_vec(),
        }
    }
}

/// One probe's result (Docker's State.Health.Log entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Probe {
    pub start: String,
    pub end: String,
    pub exit_code: i64,
    pub output: String,
}

/// Docker's State.Health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// starting, healthy or unhealthy.
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<Probe>,
}

fn file(dir: &Path) -> PathBuf {
    dir.join("health.json")
}

/// The container's health, while it has a check and has run.
pub fn read(dir: &Path) -> Option<Health> {
    serde_json::from_slice(&std::fs::read(file(dir)).ok()?).ok()
}

fn write(dir: &Path, h: &Health) {
    let tmp = dir.join("health.json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec(h).expect("health serializes")).is_ok() {
        let _ = std::fs::rename(&tmp, file(dir));
    }
}

/// Runs the check every interval until `stop` is set (the container exited): each probe as an
/// `exec` in the container, killed at the timeout; failures during the start period do not
/// count, `retries` failures in a row make the container unhealthy, one success healthy.
pub(super) fn monitor(
    dir: PathBuf,
    cfg: HealthConfig,
    exec: crate::runtime::ExecSpec,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let began = Instant::now();
        let mut h = Health {
            status: "starting".into(),
            failing_streak: 0,
            log: vec![],
        };
        write(&dir, &h);
        let sleep = |d: Duration| {
            let until = Instant::now() + d;
            while Instant::now() < until {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        };
        while sleep(Duration::from_nanos(cfg.interval)) {
            let probe = run_probe(&cfg, &exec);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if probe.exit_code == 0 {
                h.failing_streak = 0;
                h.status = "healthy".into();
            } else if began.elapsed() >= Duration::from_nanos(cfg.start_period)
                || h.status == "healthy"
            {
                h.failing_streak += 1;
                if h.failing_streak >= cfg.retries {
                    h.status = "unhealthy".into();
                }
            }
            h.log.push(probe);
            if h.log.len() > MAX_LOG {
                h.log.remove(0);
            }
            write(&dir, &h);
        }
    })
}

fn run_probe(cfg: &HealthConfig, exec: &crate::runtime::ExecSpec) -> Probe {
    let start = crate::timefmt::rfc3339_nanos(std::time::SystemTime::now());
    let mut es = exec.clone();
    es.argv = cfg.argv();
    let (code, output) = match crate::runtime::spawn_exec_output(&es) {
        Err(e) => (-1, format!("cannot run the health check: {e}")),
        Ok((mut child, mut out)) => {
            let reader = std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut out).take(MAX_OUTPUT as u64).read_to_end(&mut buf);
                let _ = std::io::copy(&mut out, &mut std::io::sink());
                buf
            });
            let deadline = Instant::now() + Duration::from_nanos(cfg.timeout);
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => break None,
                }
            };
            let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
            match status {
                Some(s) => (crate::runtime::exit_code(s) as i64, out),
                None => (
                    -1,
                    format!(
                        "Health check exceeded timeout ({}s)",
                        Duration::from_nanos(cfg.timeout).as_secs_f64()
                    ),
                ),
            }
        }
    };
    Probe {
        start,
        end: crate::timefmt::rfc3339_nanos(std::time::SystemTime::now()),
        exit_code: code,
        output,
    }
}

/// The probe a flag set stands for (`--health-cmd` is a shell line, as Docker's).
pub fn from_flags(
    cmd: Option<&str>,
    interval: Option<u64>,
    timeout: Option<u64>,
    start_period: Option<u64>,
    retries: Option<u32>,
) -> HealthConfig {
    HealthConfig {
        test: cmd
            .map(|c| vec!["CMD-SHELL".to_string(), c.to_string()])
            .unwrap_or_default(),
        interval: interval.unwrap_or(0),
        timeout: timeout.unwrap_or(0),
        start_period: start_period.unwrap_or(0),
        retries: retries.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_checks_and_flags_resolve_as_docker() {
        let image = serde_json::json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000u64, "Retries": 2});
        let c = HealthConfig::resolve(Some(&image), &HealthConfig::default(), false).unwrap();
        assert_eq!(c.argv(), ["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!(
            (c.interval, c.timeout, c.retries),
            (5_000_000_000, TIMEOUT, 2)
        );
        let over = from_flags(Some("true"), Some(1_000_000_000), None, None, None);
        let c = HealthConfig::resolve(Some(&image), &over, false).unwrap();
        assert_eq!(c.argv(), ["/bin/sh", "-c", "true"]);
        assert_eq!(c.interval, 1_000_000_000);
        assert_eq!(c.retries, 2);
        assert!(HealthConfig::resolve(Some(&image), &over, true).is_none());
        let none = serde_json::json!({"Test": ["NONE"]});
        assert!(HealthConfig::resolve(Some(&none), &HealthConfig::default(), false).is_none());
        let exec = serde_json::json!({"Test": ["CMD", "/bin/check", "-q"]});
        let c = HealthConfig::resolve(Some(&exec), &HealthConfig::default(), false).unwrap();
        assert_eq!(c.argv(), ["/bin/check", "-q"]);
    }
}
