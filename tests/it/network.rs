//! Bridge networks (netavark and aardvark-dns, real bridges, veths and iptables rules): two
//! containers talking by name, a host server reached through the gateway, a published port
//! reached from another container, masquerading seen by a server in a namespace that plays
//! "outside", and nothing left behind after removal or a killed supervisor. Root.

use crate::common::*;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn setup() -> Option<Kiln> {
    busybox_image("base", &["iptables-save", "ip"]).map(|(k, _, _)| k)
}

/// (subnet, gateway, bridge) of a network, from `network inspect`.
fn describe_network(k: &Kiln, name: &str) -> (String, String, String) {
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["network", "inspect", name])).unwrap();
    let n = &v[0];
    (
        n["IPAM"]["Config"][0]["Subnet"].as_str().unwrap().into(),
        n["IPAM"]["Config"][0]["Gateway"].as_str().unwrap().into(),
        n["Options"]["com.docker.network.bridge.name"]
            .as_str()
            .unwrap()
            .into(),
    )
}

/// What a network left on the machine: iptables rules naming its subnet, its bridge, and the
/// store's namespace handles and addresses.
fn leftovers(k: &Kiln, subnet: &str, bridge: &str) -> Vec<String> {
    let mut out: Vec<String> = sh(&mut Command::new("iptables-save"))
        .lines()
        .filter(|l| l.contains(subnet))
        .map(String::from)
        .collect();
    if Path::new("/sys/class/net").join(bridge).exists() {
        out.push(format!("bridge {bridge}"));
    }
    // The down veth that keeps the bridge while the network exists.
    let keeper = format!("kk-{}", &bridge["kiln-".len()..]);
    if Path::new("/sys/class/net").join(&keeper).exists() {
        out.push(format!("keeper {keeper}"));
    }
    if let Ok(d) = fs::read_dir(k.root().join("netns")) {
        out.extend(d.flatten().map(|e| format!("netns {:?}", e.file_name())));
    }
    for n in k.store().networks().list().unwrap() {
        for e in k.store().networks().endpoints_on(&n.id).unwrap() {
            out.push(format!("address {} on {}", e.ip, n.name));
        }
    }
    out
}

/// Runs a throwaway container; (exit code, stdout + stderr).
fn try_run(k: &Kiln, args: &[&str]) -> (i32, String) {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    let o = k.run(&all);
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Retries `wget` from a new container until it answers (the server may still be starting).
fn fetch(k: &Kiln, net: &[&str], url: &str) -> String {
    let t = Instant::now();
    loop {
        let mut args: Vec<&str> = net.to_vec();
        args.extend(["base", "timeout", "5", "wget", "-qO-", url]);
        let (code, out) = try_run(k, &args);
        if code == 0 {
            return out;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{url} never answered: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn containers_talk_by_name_and_nothing_is_left_behind() {
    let Some(k) = setup() else { return };
    k.ok(&["network", "create", "--label", "team=web", "app"]);
    let (subnet, _, bridge) = describe_network(&k, "app");
    let web = k.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "app",
        "--network-alias",
        "www",
        "base",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    let web = web.trim();
    // By name and by alias, through aardvark-dns; the page is the server's own hostname.
    for host in ["web", "www"] {
        let page = fetch(
            &k,
            &["--network", "app"],
            &format!("http://{host}/hostname"),
        );
        assert_eq!(page.trim(), &web[..12], "{host}");
    }
    let inspect: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", "web"])).unwrap();
    let ip = inspect[0]["NetworkSettings"]["Networks"]["app"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        subnet.starts_with(&ip[..ip.rfind('.').unwrap()]),
        "{ip} in {subnet}"
    );
    // The default network resolves no container names (Docker's rule).
    let (code, _) = try_run(&k, &["base", "nslookup", "web"]);
    assert_ne!(code, 0, "web resolved on the default network");
    // In use: refused.
    let err = k.fails(&["network", "rm", "app"]);
    assert!(err.contains("active endpoints (web)"), "{err}");

    // A killed supervisor takes its container with it; the next look at it tears the network down.
    let sup = supervisor_of(web);
    Command::new("kill")
        .args(["-9", &sup.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    while !k
        .ok(&["ps", "-a", "--filter", "name=web"])
        .contains("Exited")
    {
        assert!(t.elapsed() < Duration::from_secs(10), "web still up");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !k.root().join("netns").join(web).exists(),
        "namespace handle left"
    );
    k.ok(&["rm", "web"]);
    // The bridge and its rules stay while the network exists (as Docker's), with no container.
    let kept = leftovers(&k, &subnet, &bridge);
    assert!(kept.contains(&format!("bridge {bridge}")), "{kept:?}");
    assert!(kept.iter().any(|l| l.contains("POSTROUTING")), "{kept:?}");
    assert!(
        !kept
            .iter()
            .any(|l| l.starts_with("netns") || l.starts_with("address")),
        "{kept:?}"
    );
    k.ok(&["network", "rm", "app"]);
    assert_eq!(leftovers(&k, &subnet, &bridge), Vec::<String>::new());
    assert!(k
        .fails(&["network", "inspect", "app"])
        .contains("network app not found"));
}

/// The PID of the detached supervisor of container `id`.
fn supervisor_of(id: &str) -> u32 {
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.len() > 3 && args[1] == b"__kiln-supervise" && args[3] == id.as_bytes() {
            return pid;
        }
    }
    panic!("no supervisor for {id}");
}

#[test]
fn host_servers_published_ports_addresses_and_connect() {
    let Some(k) = setup() else { return };
    // A server on the host, on every address.
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello from the host");
        }
    });
    k.ok(&["network", "create", "--subnet", "10.213.7.0/24", "side"]);
    let out = fetch(
        &k,
        &[
            "--network",
            "side",
            "--ip",
            "10.213.7.50",
            "--add-host",
            "host.docker.internal:host-gateway",
        ],
        &format!("http://host.docker.internal:{port}/"),
    );
    assert_eq!(out, "hello from the host");
    let (_, hosts) = try_run(
        &k,
        &[
            "--network",
            "side",
            "--ip",
            "10.213.7.51",
            "--hostname",
            "me",
            "base",
            "cat",
            "/etc/hosts",
        ],
    );
    assert!(hosts.contains("10.213.7.51\tme\n"), "{hosts}");

    // A chosen address is one container's; --ip needs a user network.
    k.ok(&[
        "run",
        "-d",
        "--name",
        "fixed",
        "--network",
        "side",
        "--ip",
        "10.213.7.60",
        "base",
        "sleep",
        "60",
    ]);
    let (code, err) = try_run(
        &k,
        &["--network", "side", "--ip", "10.213.7.60", "base", "true"],
    );
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("10.213.7.60") && err.contains("in use"),
        "{err}"
    );
    let (code, err) = try_run(&k, &["--ip", "172.17.0.99", "base", "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("user defined networks only"), "{err}");

    // A published port, reached from another container through the host.
    let hp = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publ = k.ok(&[
        "run",
        "-d",
        "--name",
        "pub",
        "-p",
        &format!("{hp}:80"),
        "base",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    let (_, gw, _) = describe_network(&k, "bridge");
    let page = fetch(&k, &[], &format!("http://{gw}:{hp}/hostname"));
    assert_eq!(page.trim(), &publ.trim()[..12]);

    // connect and disconnect a running container: its name resolves on the network only between.
    k.ok(&["network", "connect", "--alias", "other", "side", "pub"]);
    let page = fetch(&k, &["--network", "side"], "http://other/hostname");
    assert_eq!(page.trim(), &publ.trim()[..12]);
    let err = k.fails(&["network", "connect", "side", "pub"]);
    assert!(err.contains("already exists in network side"), "{err}");
    k.ok(&["network", "disconnect", "side", "pub"]);
    let (code, _) = try_run(&k, &["--network", "side", "base", "nslookup", "other"]);
    assert_ne!(code, 0, "other still resolves after disconnect");

    k.ok(&["rm", "-f", "fixed", "pub"]);
    let (subnet, _, bridge) = describe_network(&k, "side");
    k.ok(&["network", "rm", "side"]);
    assert_eq!(leftovers(&k, &subnet, &bridge), Vec::<String>::new());
}

#[test]
fn outbound_traffic_is_masqueraded_and_internal_networks_stay_inside() {
    let Some(k) = setup() else { return };
    // "Outside": a namespace of its own behind a veth, 198.51.100.0/24, with a server that
    // answers with the address it sees.
    let ns = format!("kiln-outside-{}", std::process::id());
    let hv = format!("ko{}", std::process::id() % 100_000);
    let ip = |args: &[&str]| sh(Command::new("ip").args(args));
    ip(&["netns", "add", &ns]);
    ip(&["link", "add", &hv, "type", "veth", "peer", "name", "ko-in"]);
    ip(&["link", "set", "ko-in", "netns", &ns]);
    ip(&["addr", "add", "198.51.100.1/24", "dev", &hv]);
    ip(&["link", "set", &hv, "up"]);
    for a in [
        vec!["addr", "add", "198.51.100.2/24", "dev", "ko-in"],
        vec!["link", "set", "ko-in", "up"],
        vec!["link", "set", "lo", "up"],
    ] {
        let mut all = vec!["netns", "exec", ns.as_str(), "ip"];
        all.extend(a);
        sh(Command::new("ip").args(all));
    }
    let nspath = format!("/run/netns/{ns}");
    let server = std::thread::spawn(move || {
        let f = fs::File::open(&nspath).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind("198.51.100.2:8080").unwrap();
        for mut c in l.incoming().flatten().take(2) {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let peer = c.peer_addr().unwrap().ip();
            let _ = c.write_all(format!("HTTP/1.0 200 OK\r\n\r\nseen {peer}").as_bytes());
        }
    });
    let result = std::panic::catch_unwind(|| {
        k.ok(&["network", "create", "--internal", "closed"]);
        let (code, out) = try_run(
            &k,
            &[
                "--network",
                "closed",
                "base",
                "timeout",
                "3",
                "wget",
                "-qO-",
                "http://198.51.100.2:8080/",
            ],
        );
        assert_ne!(code, 0, "an internal network reached outside: {out}");
        let out = fetch(&k, &[], "http://198.51.100.2:8080/");
        assert_eq!(
            out, "seen 198.51.100.1",
            "the source was not the host's address"
        );
        k.ok(&["network", "rm", "closed"]);
        // Another store's default network has the same name: removing it with its bridge and
        // rules must leave this store's masquerading alone.
        let other = setup().unwrap();
        other.ok(&["run", "--rm", "base", "true"]);
        other.ok(&["system", "reset", "--force"]);
        assert!(!other.root().exists(), "system reset left the store");
        let out = fetch(&k, &[], "http://198.51.100.2:8080/");
        assert_eq!(out, "seen 198.51.100.1", "masquerading lost");
    });
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    // Gone with its peer's namespace, unless the test failed before.
    let _ = Command::new("ip")
        .args(["link", "del", &hv])
        .stderr(std::process::Stdio::null())
        .status();
    result.unwrap();
    server.join().unwrap();
}
