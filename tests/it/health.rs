//! Health checks: the image's HEALTHCHECK and `--health-*`, run in the container while it is up;
//! `ps` shows the state, `inspect` State.Health. Root; the busybox base imported as `base`.

use crate::common::*;
use std::time::{Duration, Instant};

fn inspect(k: &Kiln, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", name])).unwrap();
    v[0].clone()
}

fn wait_health(k: &Kiln, name: &str, want: &str) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let v = inspect(k, name);
        if v["State"]["Health"]["Status"] == want {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name}: never {want}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn checks_turn_healthy_and_unhealthy_as_docker_counts() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    let ctx = k.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM base\nHEALTHCHECK --interval=200ms --timeout=2s --retries=2 CMD test -e /tmp/ok && echo fine\n",
    )
    .unwrap();
    k.ok(&["build", "-q", "-t", "checked", ctx.to_str().unwrap()]);
    k.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "checked",
        "sh",
        "-c",
        "touch /tmp/ok; sleep 60",
    ]);
    let v = wait_health(&k, "web", "healthy");
    let log = v["State"]["Health"]["Log"].as_array().unwrap();
    assert_eq!(log.last().unwrap()["ExitCode"], 0);
    assert_eq!(log.last().unwrap()["Output"], "fine\n");
    assert!(k.ok(&["ps"]).contains("(healthy)"), "{}", k.ok(&["ps"]));
    // Two failures in a row: unhealthy.
    k.ok(&["exec", "web", "rm", "/tmp/ok"]);
    let v = wait_health(&k, "web", "unhealthy");
    assert!(
        v["State"]["Health"]["FailingStreak"].as_u64().unwrap() >= 2,
        "{v:#}"
    );
    assert!(k.ok(&["ps"]).contains("(unhealthy)"));
    k.ok(&["rm", "-f", "web"]);
    // --health-cmd replaces the image's check; --no-healthcheck disables it.
    k.ok(&[
        "run",
        "-d",
        "--name",
        "flagged",
        "--health-cmd",
        "exit 1",
        "--health-interval",
        "100ms",
        "--health-retries",
        "1",
        "checked",
        "sleep",
        "60",
    ]);
    wait_health(&k, "flagged", "unhealthy");
    k.ok(&["rm", "-f", "flagged"]);
    k.ok(&[
        "run",
        "-d",
        "--name",
        "plain",
        "--no-healthcheck",
        "checked",
        "sleep",
        "60",
    ]);
    std::thread::sleep(Duration::from_millis(400));
    assert!(inspect(&k, "plain")["State"]["Health"].is_null());
    assert!(!k.ok(&["ps"]).contains("health"));
    k.ok(&["rm", "-f", "plain"]);
}
