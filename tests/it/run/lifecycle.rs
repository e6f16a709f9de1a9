//! Containers' lives: Docker's command, env, user, workdir and exit codes; isolation; detached containers with ports, logs, stop and rm; a killed supervisor; Ctrl-C.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn command_env_user_workdir_and_exit_codes_follow_docker() {
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
pub(super) fn containers_are_isolated() {
    let Some(k) = setup() else { return };
    let (code, out, err) = run(
        &k,
        &["run", "--rm", "--network", "private", "base", "sh", "-c",
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
pub(super) fn detached_containers_publish_ports_list_log_stop_and_remove() {
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

    // logs -f follows a running container to its end; --tail keeps the last lines.
    let (_, out, _) = run(
        &k,
        &[
            "run",
            "-d",
            "base",
            "sh",
            "-c",
            "for i in 1 2 3 4; do echo n$i; sleep 0.1; done",
        ],
    );
    let id = out.trim().to_string();
    assert_eq!(k.ok(&["logs", "-f", &id]), "n1\nn2\nn3\nn4\n");
    assert_eq!(k.ok(&["logs", "--tail", "2", &id]), "n3\nn4\n");
    k.ok(&["rm", &id]);

    // A process that handles SIGTERM stops at once, with its own code.
    let (_, out, _) = run(
        &k,
        &[
            "run",
            "-d",
            "base",
            "sh",
            "-c",
            "trap 'exit 7' TERM; echo trapped; while true; do sleep 0.05; done",
        ],
    );
    let id = out.trim().to_string();
    // A stop before the shell has set its trap would end it with 143, not 7.
    let t = std::time::Instant::now();
    while !k.ok(&["logs", &id]).contains("trapped") {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "the trap was never set"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    k.ok(&["stop", &id[..12]]);
    assert!(k.ok(&["ps", "-a"]).contains("Exited (7)"));
    k.ok(&["rm", &id]);
}

#[test]
pub(super) fn a_killed_supervisor_leaves_the_truth_and_nothing_behind() {
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
pub(super) fn ctrl_c_of_a_foreground_run_reaches_the_container() {
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
fn init_forwards_signals_reaps_and_keeps_the_exit_code() {
    let Some(k) = setup() else { return };
    // The workload's code is the container's.
    let (code, _, _) = run(&k, &["run", "--rm", "--init", "base", "sh", "-c", "exit 7"]);
    assert_eq!(code, 7);
    // PID 1 is kiln's init, the workload its child.
    let out = k.ok(&[
        "run",
        "--rm",
        "--init",
        "base",
        "sh",
        "-c",
        "echo $$; tr '\\0' ' ' < /proc/1/cmdline",
    ]);
    let mut lines = out.lines();
    assert_ne!(lines.next(), Some("1"), "{out}");
    assert!(lines.next().unwrap_or("").contains("__kiln-init"), "{out}");
    // A `sleep` that is not PID 1 dies of SIGTERM at once (143), where as PID 1 it ignores it
    // and stop has to kill it (137).
    k.ok(&[
        "run", "-d", "--name", "with", "--init", "base", "sleep", "60",
    ]);
    k.ok(&["run", "-d", "--name", "without", "base", "sleep", "60"]);
    k.ok(&["stop", "-t", "1", "with", "without"]);
    let ps = k.ok(&["ps", "-a"]);
    let status = |name: &str| {
        ps.lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(status("with").contains("Exited (143)"), "{ps}");
    assert!(status("without").contains("Exited (137)"), "{ps}");
    // Orphans are reaped. A process whose parent exits is handed to PID 1: a `sleep` there never
    // waits for it, so it stays a zombie; kiln's init reaps it.
    let zombies = |init: bool| {
        let mut args = vec!["run", "-d"];
        if init {
            args.push("--init");
        }
        args.extend(["base", "sh", "-c", "(sleep 0.1 &); exec sleep 5"]);
        let id = k.ok(&args).trim().to_string();
        std::thread::sleep(Duration::from_millis(600));
        let n = k.ok(&[
            "exec",
            &id,
            "sh",
            "-c",
            "grep -l '^State:.Z' /proc/[0-9]*/status | wc -l",
        ]);
        k.ok(&["rm", "-f", &id]);
        n.trim().to_string()
    };
    assert_eq!(zombies(false), "1", "the check cannot see a zombie");
    assert_eq!(zombies(true), "0", "--init left a zombie");
}
