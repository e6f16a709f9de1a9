//! The container boundary (the adversarial run's findings): descriptors the caller has open,
//! host devices, Docker's seccomp rules, and the flags that loosen them on purpose; flags that
//! must be refused before anything is created. Root; the busybox base imported as `base`.

use crate::common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

fn setup() -> Option<Kiln> {
    busybox_image("base", &[]).map(|(k, _, _)| k)
}

/// Runs `kiln ARGS` from a shell that holds fd 7 (a host directory) and fd 8 (a host file,
/// append), as `exec 7</dir 8>>file` in a user's shell would. Returns (code, stdout, stderr).
fn with_open_fds(k: &Kiln, dir: &Path, file: &Path, args: &str) -> (i32, String, String) {
    let bin = env!("CARGO_BIN_EXE_kiln");
    let script = format!(
        "exec 7<'{}' 8>>'{}'; exec '{bin}' --root '{}' {args}",
        dir.display(),
        file.display(),
        k.root().display()
    );
    let o = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The descriptors open in a process, without the one `ls` itself opens.
const LIST_FDS: &str = "ls /proc/self/fd | tr '\\n' ' '; ls /proc/self/fd/7/ 2>/dev/null && echo REACHED-DIR; (echo X >&8) 2>/dev/null && echo WROTE-FILE; true";

#[test]
fn descriptors_the_caller_has_open_never_reach_a_container() {
    let Some(k) = setup() else { return };
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().join("secret-dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("inside"), "x").unwrap();
    let file = host.path().join("host-file");
    fs::write(&file, "").unwrap();
    let only_std = |out: &str, what: &str| {
        assert!(
            !out.contains("REACHED-DIR") && !out.contains("WROTE-FILE"),
            "{what}: {out}"
        );
        // 0 1 2 and ls's own directory
        let fds: Vec<&str> = out
            .split_whitespace()
            .take_while(|w| w.parse::<u32>().is_ok())
            .collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "{what}: {out}");
    };

    // kiln run, in the foreground
    let (code, out, err) = with_open_fds(
        &k,
        &dir,
        &file,
        &format!("run --rm base sh -c \"{LIST_FDS}\""),
    );
    assert_eq!(code, 0, "{err}");
    only_std(&out, "run");

    // run -d: the container's PID 1 and the supervisor hold none of them
    let (code, out, err) = with_open_fds(&k, &dir, &file, "run -d --name fds base sleep 300");
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let inspect: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", &id])).unwrap();
    let pid = inspect[0]["State"]["Pid"].as_i64().unwrap();
    let pid_fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut pid_fds: Vec<u32> = pid_fds.iter().map(|f| f.parse().unwrap()).collect();
    pid_fds.sort();
    assert_eq!(pid_fds, [0, 1, 2], "the detached container's PID 1");
    for p in fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("__kiln-supervise")
            && String::from_utf8_lossy(&cmdline).contains(&id)
        {
            for fd in fs::read_dir(p.path().join("fd")).unwrap().flatten() {
                let target = fs::read_link(fd.path()).unwrap_or_default();
                assert!(
                    !target.starts_with(host.path()),
                    "the supervisor holds the caller's {}",
                    target.display()
                );
            }
        }
    }

    // exec into it
    let (code, out, err) =
        with_open_fds(&k, &dir, &file, &format!("exec fds sh -c \"{LIST_FDS}\""));
    assert_eq!(code, 0, "{err}");
    only_std(&out, "exec");
    k.ok(&["rm", "-f", "fds"]);

    // a build's RUN step
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM base\nRUN ({LIST_FDS}) > /fds.txt\n"),
    )
    .unwrap();
    let (code, _, err) = with_open_fds(
        &k,
        &dir,
        &file,
        &format!("build -t fds-img {}", ctx.path().display()),
    );
    assert_eq!(code, 0, "{err}");
    let out = k.ok(&["run", "--rm", "fds-img", "cat", "/fds.txt"]);
    only_std(&out, "RUN");
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "",
        "nothing wrote the host file"
    );
}

/// mknod is allowed (CAP_MKNOD, as Docker) but the node cannot be opened: a host block device
/// (the first loop device) and the kernel log (/dev/kmsg, c 1:11).
const DEVICE_ATTEMPTS: &str = "mknod /tmp/blk b 7 0 && mknod /tmp/kmsg c 1 11 && echo MADE; \
    (head -c 1 /tmp/blk >/dev/null) 2>&1; (echo kiln-test > /tmp/kmsg) 2>&1; \
    echo ok > /dev/null && echo NULL-OK";

#[test]
fn host_devices_cannot_be_used_through_nodes_a_container_makes() {
    let Some(k) = setup() else { return };
    if !require(
        Path::new("/sys/fs/cgroup/devices/devices.deny").exists()
            || !Path::new("/sys/fs/cgroup/devices").exists(),
        "no devices controller",
    ) {
        return;
    }
    let out = k.ok(&["run", "--rm", "base", "sh", "-c", DEVICE_ATTEMPTS]);
    assert!(out.contains("MADE"), "{out}");
    assert_eq!(out.matches("Operation not permitted").count(), 2, "{out}");
    assert!(out.contains("NULL-OK"), "{out}");

    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM base\nRUN ({DEVICE_ATTEMPTS}) > /devices.txt; rm -f /tmp/blk /tmp/kmsg\n"),
    )
    .unwrap();
    k.ok(&["build", "-t", "dev-img", &ctx.path().display().to_string()]);
    let out = k.ok(&["run", "--rm", "dev-img", "cat", "/devices.txt"]);
    assert!(out.contains("MADE"), "{out}");
    assert_eq!(
        out.matches("Operation not permitted").count(),
        2,
        "RUN: {out}"
    );
    // The step's device cgroup is gone with the step.
    let left: Vec<_> = fs::read_dir("/sys/fs/cgroup/devices/kiln")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("build-{}-", std::process::id()))
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // --device adds one node with the access asked for; inspect shows it.
    let out = k.ok(&[
        "run",
        "-d",
        "--name",
        "withdev",
        "--device",
        "/dev/kmsg:/dev/hostlog:r",
        "base",
        "sleep",
        "300",
    ]);
    let id = out.trim();
    let out = k.ok(&[
        "exec",
        "withdev",
        "sh",
        "-c",
        "ls -l /dev/hostlog; (echo x > /dev/hostlog) 2>&1; true",
    ]);
    assert!(out.contains("1,  11") || out.contains("1, 11"), "{out}");
    // read is what was asked for (reading the kernel log also needs CAP_SYSLOG, so the
    // controller's list is what shows it), write is refused
    let list = fs::read_to_string(format!("/sys/fs/cgroup/devices/kiln/{id}/devices.list"));
    if let Ok(list) = list {
        assert!(list.lines().any(|l| l == "c 1:11 r"), "{list}");
    }
    assert!(out.contains("Operation not permitted"), "{out}");
    let inspect = k.ok(&["inspect", id]);
    assert!(
        inspect.contains("\"PathInContainer\": \"/dev/hostlog\""),
        "{inspect}"
    );
    k.ok(&["rm", "-f", "withdev"]);
    assert!(!Path::new(&format!("/sys/fs/cgroup/devices/kiln/{id}")).exists());
    // A container that exited and was never removed keeps no cgroup.
    k.ok(&["run", "--name", "exited", "base", "true"]);
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", "exited"])).unwrap();
    let id = v[0]["Id"].as_str().unwrap().to_string();
    assert!(!Path::new(&format!("/sys/fs/cgroup/devices/kiln/{id}")).exists());
    k.ok(&["rm", "exited"]);
}

#[test]
fn seccomp_and_capabilities_follow_docker_and_loosen_only_when_asked() {
    let Some(k) = setup() else { return };
    let probe = "grep -E '^(Seccomp|CapEff):' /proc/self/status; (unshare -U true) 2>&1; (chown 1 /tmp && echo CHOWN-OK) 2>&1; true";
    let out = k.ok(&["run", "--rm", "base", "sh", "-c", probe]);
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(
        out.contains("CapEff:\t00000000a80425fb"),
        "Docker's default set: {out}"
    );
    assert!(
        out.contains("unshare(0x10000000): Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("CHOWN-OK"), "{out}");

    // A RUN step gets the same filter.
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM base\nRUN ({probe}) > /probe.txt; chown 0 /tmp\n"),
    )
    .unwrap();
    k.ok(&[
        "build",
        "-t",
        "probe-img",
        &ctx.path().display().to_string(),
    ]);
    let out = k.ok(&["run", "--rm", "probe-img", "cat", "/probe.txt"]);
    assert!(out.contains("Seccomp:\t2"), "RUN: {out}");
    assert!(out.contains("Operation not permitted"), "RUN: {out}");

    let out = k.ok(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        "base",
        "sh",
        "-c",
        probe,
    ]);
    assert!(out.contains("Seccomp:\t0"), "{out}");

    let out = k.ok(&[
        "run",
        "--rm",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN",
        "base",
        "sh",
        "-c",
        probe,
    ]);
    assert!(out.contains("CapEff:\t0000000000001000"), "{out}");
    assert!(!out.contains("CHOWN-OK"), "{out}");

    let out = k.ok(&[
        "run", "--rm", "--privileged", "base", "sh", "-c",
        "grep -E '^Seccomp:' /proc/self/status; grep ' /sys ' /proc/mounts; ls /dev/loop-control /dev/kmsg",
    ]);
    assert!(out.contains("Seccomp:\t0"), "{out}");
    assert!(out.contains("sysfs rw,"), "/sys writable: {out}");
    assert!(out.contains("/dev/kmsg"), "host devices: {out}");

    // A Docker-format profile from a file: mkdir answers the errno it names.
    let profile = ctx.path().join("profile.json");
    fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = k.ok(&[
        "run",
        "--rm",
        "--security-opt",
        &opt,
        "base",
        "sh",
        "-c",
        "(mkdir /x) 2>&1; true",
    ]);
    assert!(out.contains("Permission denied"), "{out}");
    let err = k.fails(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=/nope.json",
        "base",
        "true",
    ]);
    assert!(err.contains("/nope.json"), "{err}");
    let err = k.fails(&["run", "--rm", "--cap-add", "SYS_NOPE", "base", "true"]);
    assert!(err.contains("SYS_NOPE"), "{err}");

    let id = k.ok(&[
        "run",
        "-d",
        "--cap-add",
        "SYS_PTRACE",
        "--cap-drop",
        "MKNOD",
        "--security-opt",
        "seccomp=unconfined",
        "base",
        "sleep",
        "300",
    ]);
    let inspect = k.ok(&["inspect", id.trim()]);
    assert!(inspect.contains("\"CAP_SYS_PTRACE\""), "{inspect}");
    assert!(inspect.contains("\"CAP_MKNOD\""), "{inspect}");
    assert!(inspect.contains("seccomp=unconfined"), "{inspect}");
    k.ok(&["rm", "-f", id.trim()]);
}

#[test]
fn bad_run_flags_are_refused_before_anything_is_created() {
    let Some(k) = setup() else { return };
    for (args, says) in [
        (vec!["--cpus", "NaN"], "--cpus"),
        (vec!["--cpus", "inf"], "--cpus"),
        (vec!["--cpus", "1e308"], "--cpus"),
        (vec!["--cpus", "0"], "--cpus"),
        (vec!["-m", "1k"], "memory"),
        (vec!["--hostname", &"h".repeat(100)], "hostname"),
        (vec!["-e", "="], "environment"),
        (vec!["-e", "=x"], "environment"),
        (vec!["-w", "relative/dir"], "absolute"),
        (vec!["--device", "/etc/passwd"], "not a device"),
    ] {
        let mut a = vec!["run", "--rm"];
        a.extend(args.iter().copied());
        a.extend(["base", "true"]);
        let err = k.fails(&a);
        assert!(err.contains(says), "{a:?}: {err}");
    }
    // The container's directory (made before its cgroups) never existed: nothing to leak.
    let made = fs::read_dir(k.root().join("containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(made, 0, "nothing was created");
    assert_eq!(k.ok(&["ps", "-aq"]).trim(), "", "no container left behind");
    let err = k.fails(&["--log-level", "bogus", "images"]);
    assert!(err.contains("bogus"), "{err}");
    // Docker: 0 and -1 mean no pids limit.
    for n in ["0", "-1"] {
        k.ok(&["run", "--rm", "--pids-limit", n, "base", "true"]);
    }
}
