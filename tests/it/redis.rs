//! The Redis base (fixtures/redis-base.sh, Debian's redis-server made into an image offline)
//! keeps its data in a volume: a counter survives the removal of its container, as the
//! tutorial's visit counter needs. Root and mmdebstrap.

use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits until redis in `name` answers, then runs `redis-cli ARGS` there.
fn cli(k: &Kiln, name: &str, args: &[&str]) -> String {
    let t = Instant::now();
    while k.run(&["exec", name, "redis-cli", "ping"]).stdout != b"PONG\n" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "redis in {name} never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut all = vec!["exec", name, "redis-cli"];
    all.extend_from_slice(args);
    k.ok(&all).trim().to_string()
}

#[test]
fn a_redis_counter_survives_its_container_on_a_volume() {
    if !needs(&["mmdebstrap"]) {
        return;
    }
    let k = Kiln::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(repo.join("fixtures/redis-base.sh"))
        .arg("redis")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_ROOT", k.root())
        .status()
        .unwrap();
    assert!(st.success(), "fixtures/redis-base.sh failed");
    let run = |name: &str| {
        k.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "-v",
            "redis-data:/data",
            "redis",
            "redis-server",
            "--appendonly",
            "yes",
        ]);
    };
    run("redis");
    assert_eq!(cli(&k, "redis", &["incr", "visits"]), "1");
    assert_eq!(cli(&k, "redis", &["incr", "visits"]), "2");
    // The entrypoint turned protected mode off (clients from other containers are let in).
    assert_eq!(
        cli(&k, "redis", &["config", "get", "protected-mode"]),
        "protected-mode\nno"
    );
    k.ok(&["rm", "-f", "redis"]);
    run("redis-again");
    assert_eq!(
        cli(&k, "redis-again", &["incr", "visits"]),
        "3",
        "the counter was lost"
    );
    k.ok(&["rm", "-f", "redis-again"]);
}
