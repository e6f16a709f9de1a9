//! Restart policies, `start`, `restart` and `system restore`: the supervisor runs a container
//! again as its policy says (Docker's back-off), a user's stop ends that, and a restore after a
//! "reboot" starts what the policies ask for. Root; the busybox base imported as `base`.

use crate::common::*;
use std::time::{Duration, Instant};

fn setup() -> Option<Kiln> {
    busybox_image("base", &[]).map(|(k, _, _)| k)
}

fn inspect(k: &Kiln, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", name])).unwrap();
    v[0].clone()
}

/// Waits (at most 20 s) until `f` holds for the container's inspect output.
fn wait_for(k: &Kiln, name: &str, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    let t = Instant::now();
    loop {
        let v = inspect(k, name);
        if f(&v) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name}: {what}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn on_failure_retries_then_gives_up_and_always_runs_until_stopped() {
    let Some(k) = setup() else { return };
    k.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "base",
        "sh",
        "-c",
        "echo try; exit 3",
    ]);
    wait_for(&k, "flaky", "two restarts, then exited", |v| {
        v["RestartCount"] == 2 && v["State"]["Status"] == "exited"
    });
    let v = inspect(&k, "flaky");
    assert_eq!(v["State"]["ExitCode"], 3);
    assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(v["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 2);
    assert_eq!(k.ok(&["logs", "flaky"]), "try\ntry\ntry\n");

    k.ok(&[
        "run",
        "-d",
        "--name",
        "loop",
        "--restart",
        "always",
        "base",
        "sh",
        "-c",
        "echo up; sleep 0.2",
    ]);
    wait_for(&k, "loop", "restarted at least twice", |v| {
        v["RestartCount"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(k.ok(&["stop", "-t", "1", "loop"]).trim(), "loop");
    let v = inspect(&k, "loop");
    assert_eq!(v["State"]["Status"], "exited", "{v:#}");
    let count = v["RestartCount"].clone();
    std::thread::sleep(Duration::from_millis(600));
    let v = inspect(&k, "loop");
    assert_eq!(
        v["State"]["Status"], "exited",
        "a stopped container came back: {v:#}"
    );
    assert_eq!(v["RestartCount"], count);
    // --rm and a restart policy are Docker's conflict too.
    let err = k.fails(&["run", "--rm", "--restart", "always", "base", "true"]);
    assert!(
        err.contains("conflicting options: --restart and --rm"),
        "{err}"
    );
    let err = k.fails(&["run", "--restart", "sometimes", "base", "true"]);
    assert!(err.contains("invalid restart policy"), "{err}");
}

#[test]
fn start_restart_and_restore_after_a_reboot() {
    let Some(k) = setup() else { return };
    k.ok(&["run", "--name", "once", "base", "sh", "-c", "echo ran"]);
    assert_eq!(k.ok(&["start", "once"]).trim(), "once");
    wait_for(&k, "once", "ran again", |v| {
        v["State"]["Status"] == "exited"
    });
    assert_eq!(k.ok(&["logs", "once"]), "ran\nran\n");

    k.ok(&["run", "-d", "--name", "srv", "base", "sleep", "60"]);
    let pid = inspect(&k, "srv")["State"]["Pid"].clone();
    assert_eq!(k.ok(&["restart", "-t", "1", "srv"]).trim(), "srv");
    let v = inspect(&k, "srv");
    assert_eq!(v["State"]["Status"], "running");
    assert_ne!(v["State"]["Pid"], pid, "restart ran the same process");

    // "Reboot": everything stopped by hand. restore starts `always` (even when stopped by its
    // user, as Docker's daemon does on boot) and an `unless-stopped` one nobody stopped; not one
    // its user stopped, and not one without a policy.
    for (name, policy) in [
        ("always", "always"),
        ("unless", "unless-stopped"),
        ("unless2", "unless-stopped"),
    ] {
        k.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--restart",
            policy,
            "base",
            "sleep",
            "60",
        ]);
    }
    for n in ["always", "unless", "srv"] {
        k.ok(&["stop", "-t", "1", n]);
    }
    // The crash of a whole machine: the workload, its init helper and its supervisor die
    // without a stop.
    let workload = inspect(&k, "unless2")["State"]["Pid"].as_i64().unwrap() as i32;
    let helper = parent(workload);
    let supervisor = parent(helper);
    for p in [supervisor, helper, workload] {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    wait_for(&k, "unless2", "seen as exited", |v| {
        v["State"]["Status"] == "exited"
    });
    let restored = k.ok(&["system", "restore"]);
    let mut names: Vec<&str> = restored.lines().collect();
    names.sort();
    assert_eq!(names, ["always", "unless2"], "{restored}");
    assert_eq!(inspect(&k, "always")["State"]["Status"], "running");
    assert_eq!(inspect(&k, "unless")["State"]["Status"], "exited");
    for n in ["always", "unless2"] {
        k.ok(&["rm", "-f", n]);
    }
}

/// The parent of process `pid` (from /proc).
fn parent(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}
