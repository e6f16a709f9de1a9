//! `kiln run` and the container lifecycle: Docker's command/env/user rules and exit codes,
//! isolation, detached containers with published ports, ps/stop/kill/logs/rm, and a supervisor
//! killed under a running container. Root; the busybox base imported as `base`.

use crate::common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod exec;
mod lifecycle;
mod limits;

fn setup() -> Option<Kiln> {
    busybox_image("base", &[]).map(|(k, _, _)| k)
}

/// Runs kiln; returns (exit code, stdout, stderr).
fn run(k: &Kiln, args: &[&str]) -> (i32, String, String) {
    let o = k.run(args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Whether the cgroup v1 controller `ctrl` is mounted (or skip, as `require` does).
fn cgroup_v1(ctrl: &str) -> bool {
    require(
        std::path::Path::new(&format!("/sys/fs/cgroup/{ctrl}/cgroup.procs")).exists(),
        &format!("cgroup v1 {ctrl} controller is not mounted"),
    )
}

fn http_get(port: u16) -> std::io::Result<String> {
    http_get_at("127.0.0.1", port)
}

fn http_get_at(host: &str, port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Waits until `port` answers HTTP.
fn wait_http(port: u16) -> String {
    wait_http_at("127.0.0.1", port)
}

/// Waits until `host:port` answers HTTP.
fn wait_http_at(host: &str, port: u16) -> String {
    let t = Instant::now();
    loop {
        if let Ok(r) = http_get_at(host, port) {
            if r.contains("200") {
                return r;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{host}:{port} never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
