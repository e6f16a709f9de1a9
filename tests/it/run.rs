//! `kiln run` and the container lifecycle: Docker's command/env/user rules and exit codes,
//! isolation, detached containers with published ports, ps/stop/kill/logs/rm, and a supervisor
//! killed under a running container. Root; the busybox base imported as `base`.

use crate::common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

#[test]
fn command_env_user_workdir_and_exit_codes_follow_docker() {
    let Some(k) = setup() else { return };
    let (code, out, _) = run(&k, &["run", "--rm", "base", "echo", "hello"]);
    assert_eq!((code, out.as_str()), (0, "hello\n"));

    // Hostname = the first 12 hex digits of the container ID; HOSTNAME, HOME, PATH set.
    let (code, out, _) = run(
        &k,
        &[
            "run",
            "--name",
            "h",
            "base",
            "sh",
            "-c",
            "hostname; echo $HOSTNAME; echo $HOME; echo $PATH",
        ],
    );
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    let ps = k.ok(&["ps", "-a", "--no-trunc"]);
    let id = ps
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(lines[0], &id[..12], "{ps}");
    assert_eq!(lines[1], &id[..12]);
    assert_eq!(lines[2], "/root");
    assert!(lines[3].contains("/usr/bin"), "{out}");

    // Env precedence: image, then --env-file, then -e; `-e K` copies the host's value.
    let envfile = k.dir.path().join("env");
    fs::write(&envfile, "# comment\nA=from-file\nB=from-file\n\n").unwrap();
    let o = k
        .cmd()
        .env("HOSTVAR", "from-host")
        .args([
            "run",
            "--rm",
            "--env-file",
            envfile.to_str().unwrap(),
            "-e",
            "B=from-flag",
            "-e",
            "HOSTVAR",
            "-e",
            "UNSET_VAR_XYZ",
            "base",
            "sh",
            "-c",
            "echo $A $B $HOSTVAR ${UNSET_VAR_XYZ-unset}",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from-file from-flag from-host unset\n"
    );

    // -w, -u.
    let (_, out, _) = run(
        &k,
        &[
            "run",
            "--rm",
            "-w",
            "/tmp/work",
            "-u",
            "nobody",
            "base",
            "sh",
            "-c",
            "pwd; id -u; id -g",
        ],
    );
    assert_eq!(out, "/tmp/work\n65534\n65534\n");
    let (code, _, err) = run(&k, &["run", "--rm", "-u", "nosuchuser", "base", "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("nosuchuser"), "{err}");

    // Exit codes: the command's, 126 cannot execute, 127 not found, 125 kiln's own error.
    assert_eq!(run(&k, &["run", "--rm", "base", "sh", "-c", "exit 1"]).0, 1);
    assert_eq!(run(&k, &["run", "--rm", "base", "/etc/passwd"]).0, 126);
    let (code, _, err) = run(&k, &["run", "--rm", "base", "no-such-command"]);
    assert_eq!(code, 127);
    assert!(err.contains("no-such-command"), "{err}");
    let (code, _, err) = run(&k, &["run", "--rm", "no-such-image"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("Unable to find image 'no-such-image:latest' locally"),
        "{err}"
    );
    // 128 + N for a command killed by signal N (PID 1 itself cannot be killed from inside).
    assert_eq!(
        run(
            &k,
            &[
                "run",
                "--rm",
                "base",
                "sh",
                "-c",
                "sleep 100 & kill -9 $!; wait $!"
            ]
        )
        .0,
        137
    );

    // --entrypoint replaces the image's ENTRYPOINT and drops its CMD; args replace CMD.
    let ctx = k.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM base\nENTRYPOINT [\"echo\", \"ep\"]\nCMD [\"cmd\"]\n",
    )
    .unwrap();
    k.ok(&["build", "-q", "-t", "ep", ctx.to_str().unwrap()]);
    assert_eq!(run(&k, &["run", "--rm", "ep"]).1, "ep cmd\n");
    assert_eq!(run(&k, &["run", "--rm", "ep", "args"]).1, "ep args\n");
    assert_eq!(
        run(&k, &["run", "--rm", "--entrypoint", "echo", "ep"]).1,
        "\n"
    );
    assert_eq!(
        run(&k, &["run", "--rm", "--entrypoint", "echo", "ep", "x"]).1,
        "x\n"
    );

    // --rm removed its containers; the named one stays until rm.
    let ps = k.ok(&["ps", "-a"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");
    assert!(
        ps.contains("Exited (0)") && ps.contains(" h\n") || ps.trim_end().ends_with(" h"),
        "{ps}"
    );
    k.ok(&["rm", "h"]);
    assert_eq!(k.ok(&["ps", "-a"]).lines().count(), 1);
}

#[test]
fn containers_are_isolated() {
    let Some(k) = setup() else { return };
    let (code, out, err) = run(
        &k,
        &["run", "--rm", "base", "sh", "-c",
          "echo $$; grep CapBnd /proc/self/status; ls /work 2>&1 | head -1; mount -o remount,rw /sys 2>/dev/null && echo sys-rw || echo sys-ro; cat /proc/kcore 2>/dev/null | head -c1 | wc -c; ls /sys/class/net"],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "the command is PID 1");
    assert_eq!(
        lines[1], "CapBnd:\t00000000a80425fb",
        "Docker's default capabilities"
    );
    assert!(
        lines[2].contains("No such file"),
        "host paths are not visible: {out}"
    );
    assert_eq!(lines[3], "sys-ro");
    assert_eq!(lines[4], "0", "/proc/kcore is masked");
    assert_eq!(lines[5], "lo", "a private network with loopback only");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(k.root().to_str().unwrap()),
        "no mount leaks to the host"
    );
}

#[test]
fn detached_containers_publish_ports_list_log_stop_and_remove() {
    let Some(k) = setup() else { return };
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let (code, out, err) = run(
        &k,
        &["run", "-d", "--name", "web", "-p", &publish, "base", "sh", "-c",
          "mkdir -p /www && echo \"host $(hostname)\" > /www/index.html && echo serving && exec httpd -f -p 80 -h /www"],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the full ID: {out:?}");
    let page = wait_http(port);
    assert!(page.contains(&format!("host {}", &id[..12])), "{page}");

    // 100 sequential and 20 concurrent requests all succeed.
    for _ in 0..100 {
        assert!(http_get(port).unwrap().contains("200 OK"));
    }
    let handles: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || http_get(port).map(|r| r.contains("200 OK"))))
        .collect();
    for h in handles {
        assert!(h.join().unwrap().unwrap());
    }

    let ps = k.ok(&["ps"]);
    assert!(ps.contains("Up "), "{ps}");
    assert!(ps.contains(&format!("127.0.0.1:{port}->80/tcp")), "{ps}");
    assert!(ps.contains(&id[..12]) && ps.contains("web"), "{ps}");

    // A second container cannot take the same host port: an error before it starts.
    let (code, _, err) = run(&k, &["run", "--rm", "-p", &publish, "base", "true"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("already allocated") || err.contains("in use"),
        "{err}"
    );

    // httpd as PID 1 ignores SIGTERM: stop kills it after -t (137 = SIGKILL, below).
    assert_eq!(k.ok(&["stop", "-t", "1", "web"]).trim(), "web");
    let ps = k.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (137)"), "{ps}");
    assert!(!k.ok(&["ps"]).contains("web"));
    // Logs survive the container.
    assert_eq!(k.ok(&["logs", "web"]), "serving\n");
    assert!(k.ok(&["logs", "-t", "web"]).contains("Z serving"));
    k.ok(&["rm", "web"]);
    assert!(!k.ok(&["ps", "-a"]).contains("web"));
    assert!(!k.root().join("containers").join(&id).exists());

    // A process that handles SIGTERM stops at once, with its own code.
    let (_, out, _) = run(
        &k,
        &[
            "run",
            "-d",
            "base",
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 0.05; done",
        ],
    );
    let id = out.trim().to_string();
    k.ok(&["stop", &id[..12]]);
    assert!(k.ok(&["ps", "-a"]).contains("Exited (7)"));
    k.ok(&["rm", &id]);
}

#[test]
fn a_killed_supervisor_leaves_the_truth_and_nothing_behind() {
    let Some(k) = setup() else { return };
    let (_, out, _) = run(
        &k,
        &["run", "-d", "--name", "victim", "base", "sleep", "1000"],
    );
    let id = out.trim().to_string();
    // The supervisor is the process running `__kiln-supervise ... ID`.
    let mut sup = None;
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("__kiln-supervise") && cmd.contains(&id) {
            sup = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok());
        }
    }
    let sup = sup.expect("a supervisor process");
    kiln::sys::proc::kill(sup, libc::SIGKILL).unwrap();
    let t = Instant::now();
    loop {
        let ps = k.ok(&["ps", "-a"]);
        if ps.contains("Exited (unknown)") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "ps never told the truth: {ps}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    k.ok(&["rm", "-f", "victim"]);
    assert!(!k.root().join("containers").join(&id).exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(k.root().to_str().unwrap()));
    // A stale container never blocks a new one of the same name once removed.
    let (code, _, err) = run(&k, &["run", "--rm", "--name", "victim", "base", "true"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn ctrl_c_of_a_foreground_run_reaches_the_container() {
    let Some(k) = setup() else { return };
    let mut child = k
        .cmd()
        .args([
            "run",
            "--rm",
            "base",
            "sh",
            "-c",
            "trap 'echo got-int; exit 130' INT; echo ready; while true; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    kiln::sys::proc::kill(child.id() as i32, libc::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got-int\n");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn exec_inspect_kill_networks_and_publish_all() {
    let Some(k) = setup() else { return };
    let (code, out, err) = run(
        &k,
        &[
            "run",
            "-d",
            "--name",
            "box",
            "-e",
            "FROM_RUN=1",
            "base",
            "sleep",
            "1000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    // exec joins the container: its PID namespace, hostname, env; -u, -w, -e; exit codes.
    let (code, out, _) = run(
        &k,
        &[
            "exec",
            "box",
            "sh",
            "-c",
            "echo $$ $FROM_RUN; hostname; cat /proc/1/cmdline | tr '\\0' ' '",
        ],
    );
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_ne!(lines[0].split(' ').next(), Some("1"));
    assert!(lines[0].ends_with(" 1"), "{out}");
    assert_eq!(lines[1], &id[..12]);
    assert_eq!(lines[2].trim(), "sleep 1000");
    assert_eq!(
        run(
            &k,
            &[
                "exec",
                "-u",
                "nobody",
                "-w",
                "/tmp",
                "-e",
                "X=y",
                "box",
                "sh",
                "-c",
                "id -u; pwd; echo $X"
            ]
        )
        .1,
        "65534\n/tmp\ny\n"
    );
    assert_eq!(run(&k, &["exec", "box", "sh", "-c", "exit 4"]).0, 4);
    assert_eq!(run(&k, &["exec", "box", "no-such-cmd"]).0, 127);
    assert_eq!(run(&k, &["exec", "nosuchcontainer", "true"]).0, 125);

    // inspect: state, pid, config.
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", "box"])).unwrap();
    let c = &v[0];
    assert_eq!(c["Id"], id.as_str());
    assert_eq!(c["State"]["Status"], "running");
    assert!(c["State"]["Pid"].as_i64().unwrap() > 1);
    assert_eq!(c["Name"], "/box");
    assert!(c["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("FROM_RUN=1")));

    // kill -s: the signal reaches the container's init.
    k.ok(&["kill", "-s", "KILL", "box"]);
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", "box"])).unwrap();
    assert_eq!(v[0]["State"]["Status"], "exited");
    assert_eq!(v[0]["State"]["ExitCode"], 137);
    let (code, _, err) = run(&k, &["exec", "box", "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("not running"), "{err}");
    k.ok(&["rm", "box"]);

    // --network host shares the host's interfaces; none has loopback only.
    let host_ifaces = fs::read_dir("/sys/class/net").unwrap().count();
    let (_, out, _) = run(
        &k,
        &[
            "run",
            "--rm",
            "--network",
            "host",
            "base",
            "ls",
            "/sys/class/net",
        ],
    );
    assert_eq!(out.lines().count(), host_ifaces);
    assert_eq!(
        run(
            &k,
            &[
                "run",
                "--rm",
                "--network",
                "none",
                "base",
                "ls",
                "/sys/class/net"
            ]
        )
        .1,
        "lo\n"
    );
    let (code, _, err) = run(
        &k,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "-p",
            "9999:80",
            "base",
            "true",
        ],
    );
    assert_eq!(code, 125);
    assert!(err.contains("--network none"), "{err}");

    // -P publishes every EXPOSEd port on a free host port, shown by ps.
    let ctx = k.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM base\nEXPOSE 80\nCMD [\"sh\", \"-c\", \"mkdir -p /w && echo P > /w/index.html && exec httpd -f -p 80 -h /w\"]\n").unwrap();
    k.ok(&["build", "-q", "-t", "web", ctx.to_str().unwrap()]);
    let (code, _, err) = run(&k, &["run", "-d", "-P", "--name", "pa", "web"]);
    assert_eq!(code, 0, "{err}");
    let ps = k.ok(&["ps"]);
    let published = ps
        .split_whitespace()
        .find(|w| w.contains("->80/tcp"))
        .unwrap_or_else(|| panic!("{ps}"));
    let port: u16 = published
        .trim_start_matches("0.0.0.0:")
        .split("->")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait_http(port).contains("P"));
    k.ok(&["rm", "-f", "pa"]);
    // logs --tail.
    let (_, out, _) = run(
        &k,
        &[
            "run",
            "--name",
            "many",
            "base",
            "sh",
            "-c",
            "echo err >&2; sleep 0.2; for i in 1 2 3 4 5; do echo $i; done",
        ],
    );
    assert_eq!(out, "1\n2\n3\n4\n5\n");
    let o = k.run(&["logs", "many"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1\n2\n3\n4\n5\n");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "err\n",
        "stderr stays stderr"
    );
    let o = k.run(&["logs", "--tail", "2", "many"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "4\n5\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}

#[test]
fn tty_is_a_terminal_of_the_containers_own() {
    let Some(k) = setup() else { return };
    let (code, out, err) = run(
        &k,
        &[
            "run",
            "-t",
            "--rm",
            "base",
            "sh",
            "-c",
            "tty; [ -t 0 ] && [ -t 1 ] && echo both-ttys; exit 6",
        ],
    );
    assert_eq!(code, 6, "{err}");
    assert_eq!(
        out, "/dev/pts/0\r\nboth-ttys\r\n",
        "a terminal translates newlines"
    );
    let (_, out, _) = run(&k, &["run", "--rm", "base", "sh", "-c", "tty"]);
    assert_eq!(out, "not a tty\n");
    // exec -t: a terminal of the container's devpts for the exec'd process too.
    let (code, _, err) = run(&k, &["run", "-d", "--name", "t", "base", "sleep", "1000"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&k, &["exec", "-t", "t", "sh", "-c", "tty; exit 3"]);
    assert_eq!((code, out.as_str()), (3, "/dev/pts/0\r\n"));
    k.ok(&["rm", "-f", "t"]);
}

#[test]
fn memory_cpu_and_pids_limits_on_cgroup_v1() {
    let Some(k) = setup() else { return };
    if !cgroup_v1("pids") {
        return;
    }
    let (code, out, err) = run(
        &k,
        &[
            "run",
            "-d",
            "--name",
            "lim",
            "-m",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "8",
            "base",
            "sleep",
            "1000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let cg = |ctrl: &str, f: &str| {
        fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/kiln/{id}/{f}")).unwrap()
    };
    assert_eq!(
        cg("memory", "memory.limit_in_bytes").trim(),
        (64u64 << 20).to_string()
    );
    assert_eq!(cg("cpu", "cpu.cfs_quota_us").trim(), "50000");
    assert_eq!(cg("pids", "pids.max").trim(), "8");
    let pid = cg("pids", "cgroup.procs");
    assert!(
        !pid.trim().is_empty(),
        "the container runs inside its cgroup"
    );
    // The pids limit holds: more processes than allowed cannot start.
    let (_, out, _) = run(
        &k,
        &[
            "exec",
            "lim",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done 2>/dev/null; echo started",
        ],
    );
    let _ = out;
    let n: usize = cg("pids", "pids.current").trim().parse().unwrap();
    assert!(n <= 8, "{n} processes under a limit of 8");
    k.ok(&["rm", "-f", "lim"]);
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/pids/kiln/{id}")).exists(),
        "rm removes the cgroups"
    );
    let (code, _, err) = run(&k, &["run", "--rm", "-m", "12x", "base", "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("12x"), "{err}");
}

/// Regression: `run -d` returned (and `ps` said Up) as soon as the container's init existed,
/// before it had set its hostname and mounts, so an `exec` right after could see the host's.
#[test]
fn exec_right_after_run_d_meets_a_container_set_up() {
    let Some(k) = setup() else { return };
    for _ in 0..5 {
        let (code, out, err) = run(&k, &["run", "-d", "base", "sleep", "1000"]);
        assert_eq!(code, 0, "{err}");
        let id = out.trim().to_string();
        let (code, out, _) = run(&k, &["exec", &id, "hostname"]);
        assert_eq!((code, out.trim()), (0, &id[..12]));
        k.ok(&["rm", "-f", &id]);
    }
}

#[test]
fn memory_sizes_and_bridge_ports_as_docker() {
    let Some(k) = setup() else { return };
    if !cgroup_v1("memory") {
        return;
    }
    for (flag, bytes) in [("256mb", 256u64 << 20), ("1.5g", 3 << 29)] {
        let (code, out, err) = run(&k, &["run", "-d", "-m", flag, "base", "sleep", "100"]);
        assert_eq!(code, 0, "-m {flag}: {err}");
        let id = out.trim();
        let limit = fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/kiln/{id}/memory.limit_in_bytes"
        ))
        .unwrap();
        assert_eq!(limit.trim(), bytes.to_string(), "-m {flag}");
        k.ok(&["rm", "-f", id]);
    }
    // bridge is accepted as the default network, ports and all.
    let port = free_port();
    let (code, _, err) = run(
        &k,
        &[
            "run",
            "-d",
            "--name",
            "br",
            "--network",
            "bridge",
            "-p",
            &format!("{port}:80"),
            "base",
            "httpd",
            "-f",
            "-p",
            "80",
        ],
    );
    assert_eq!(code, 0, "{err}");
    k.ok(&["rm", "-f", "br"]);
}

#[test]
fn port_ranges_and_ipv6_addresses_publish_as_docker() {
    let Some(k) = setup() else { return };
    let (a, b) = loop {
        let a = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", a + 1)).is_ok() {
            break (a, a + 1);
        }
    };
    let (code, out, err) = run(
        &k,
        &[
            "run", "-d", "--name", "range", "-p", &format!("{a}-{b}:80-81"), "base", "sh", "-c",
            "mkdir -p /w && echo range > /w/index.html && httpd -p 80 -h /w && exec httpd -f -p 81 -h /w",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());
    assert!(wait_http(a).contains("range"));
    assert!(wait_http(b).contains("range"));
    let ps = k.ok(&["ps", "--format", "{{.Ports}}"]);
    assert!(
        ps.contains(&format!("0.0.0.0:{a}->80/tcp"))
            && ps.contains(&format!("0.0.0.0:{b}->81/tcp")),
        "{ps}"
    );
    k.ok(&["rm", "-f", "range"]);
    // An IPv6 host address in brackets, where the host has IPv6 loopback; and a port published
    // on every address listens on IPv6 too, as Docker's.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let p = free_port();
        let (code, _, err) = run(
            &k,
            &[
                "run",
                "-d",
                "--name",
                "dual",
                "-p",
                &format!("{p}:80"),
                "base",
                "sh",
                "-c",
                "mkdir -p /w && echo dual > /w/index.html && exec httpd -f -p 80 -h /w",
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(wait_http(p).contains("dual"));
        let ps = k.ok(&["ps", "--format", "{{.Ports}}"]);
        assert!(
            ps.contains(&format!("0.0.0.0:{p}->80/tcp, :::{p}->80/tcp")),
            "{ps}"
        );
        assert!(wait_http_at("::1", p).contains("dual"));
        k.ok(&["rm", "-f", "dual"]);
        let p = free_port();
        let (code, _, err) = run(
            &k,
            &[
                "run",
                "-d",
                "--name",
                "v6",
                "-p",
                &format!("[::1]:{p}:80"),
                "base",
                "sh",
                "-c",
                "mkdir -p /w && echo six > /w/index.html && exec httpd -f -p 80 -h /w",
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(wait_http_at("::1", p).contains("six"));
        k.ok(&["rm", "-f", "v6"]);
    }
}
