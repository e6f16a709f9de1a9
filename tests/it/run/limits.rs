//! Limits and publishing as Docker: cgroup v1 memory, CPU and pids; exec right after run -d; sizes; port ranges and IPv6 addresses.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn memory_cpu_and_pids_limits_on_cgroup_v1() {
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
pub(super) fn exec_right_after_run_d_meets_a_container_set_up() {
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
pub(super) fn memory_sizes_and_bridge_ports_as_docker() {
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
pub(super) fn port_ranges_and_ipv6_addresses_publish_as_docker() {
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
