//! The seed's demo, end to end: the Python base made locally (fixtures/python-base.sh, with
//! mmdebstrap from the host's apt sources), the Flask "friendlyhello" app built (pip reaches the
//! package index through the host network), run with -p, the page checked byte for byte with
//! the container's own hostname, and the image read by skopeo.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[test]
fn friendlyhello_builds_runs_and_answers_as_the_seed_shows() {
    if !needs(&["mmdebstrap", "skopeo"]) {
        return;
    }
    let k = Kiln::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(repo.join("fixtures/python-base.sh"))
        .arg("python:3.11-slim")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_ROOT", k.root())
        .status()
        .unwrap();
    assert!(st.success(), "fixtures/python-base.sh failed");
    let id = k.ok(&[
        "build",
        "-q",
        "-t",
        "friendlyhello",
        repo.join("fixtures/friendlyhello").to_str().unwrap(),
    ]);
    assert!(id.trim().starts_with("sha256:"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cid = k.ok(&["run", "-d", "-p", &format!("{port}:80"), "friendlyhello"]);
    let cid = cid.trim();
    let t = Instant::now();
    let page = loop {
        if let Some(p) = get(port).filter(|p| !p.is_empty()) {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "friendlyhello never answered: {}",
            k.ok(&["logs", cid])
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        page,
        format!(
            "<h3>Hello World!</h3><b>Hostname:</b> {}<br/><b>Visits:</b> <i>cannot connect to Redis, counter disabled</i>",
            &cid[..12]
        )
    );
    let ps = k.ok(&["ps"]);
    assert!(
        ps.contains(&format!("0.0.0.0:{port}->80/tcp")) && ps.contains("\"python app.py\""),
        "{ps}"
    );
    k.ok(&["stop", "-t", "1", cid]);
    assert!(k.ok(&["ps", "-a"]).contains("Exited"));
    k.ok(&["rm", cid]);

    let archive = k.dir.path().join("friendlyhello.tar");
    k.ok(&["save", "-o", archive.to_str().unwrap(), "friendlyhello"]);
    let out = sh(Command::new("skopeo")
        .arg("inspect")
        .arg("--config")
        .arg(format!("oci-archive:{}", archive.display())));
    let cfg: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        cfg["config"]["Cmd"],
        serde_json::json!(["python", "app.py"])
    );
    assert!(cfg["config"]["ExposedPorts"].get("80/tcp").is_some());
    assert!(cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("NAME=World")));
}
