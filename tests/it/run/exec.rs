//! exec, inspect, kill, networks, -P, and terminals of the container's own.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn exec_inspect_kill_networks_and_publish_all() {
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
pub(super) fn tty_is_a_terminal_of_the_containers_own() {
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
