//! `kiln stack` and `kiln service`: a compose file deployed as replicated services on one
//! node. Replicas answer on the published port in turn, each with its limits; a killed replica
//! is replaced by a new container with a new hostname; a rolling update under a loop of
//! requests loses none; a failing update rolls back; scale, logs, inspect; `stack rm` leaves
//! nothing. And `stack convert --to kubernetes` writes manifests the Kubernetes API schemas
//! accept (for the tutorial's two files and a larger example), whose Services select their
//! Deployments and whose references all exist. Root.

use crate::common::*;
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One GET, no retries: the body of a 200, or None.
fn get(port: u16) -> Option<String> {
    try_get(port).ok()
}

/// One GET: the body of a 200, or what went wrong.
fn try_get(port: u16) -> Result<String, String> {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.contains(" 200 ") => Ok(body.trim().to_string()),
        _ => Err(format!("answer {out:?}")),
    }
}

fn file(port: u16) -> String {
    format!(
        r#"services:
  web:
    image: site
    init: true
    command: ["sh", "-c", "mkdir -p /w && hostname > /w/index.html && echo serving on $$(hostname) && exec httpd -f -p 80 -h /w"]
    deploy:
      replicas: 3
      resources:
        limits:
          cpus: "0.1"
          memory: 50M
      restart_policy:
        condition: on-failure
        delay: 1s
      update_config:
        parallelism: 1
        order: start-first
        failure_action: rollback
    ports:
      - "{port}:80"
    networks:
      - webnet
networks:
  webnet:
"#
    )
}

/// Waits until `f` holds (10 s at most).
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stack_balances_replaces_rolls_back_and_leaves_nothing() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    let ctx = k.dir.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    for (tag, line) in [
        ("site", "RUN echo v1 > /version"),
        ("site:v2", "RUN echo v2 > /version"),
        ("site:broken", "RUN rm /bin/busybox"),
        ("site:flaky", "RUN touch /flaky"),
    ] {
        fs::write(ctx.join("Dockerfile"), format!("FROM base\n{line}\n")).unwrap();
        k.ok(&["build", "-q", "-t", tag, ctx.to_str().unwrap()]);
    }
    let port = free_port();
    let dir = k.dir.path().join("app");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("stack.yml"), file(port)).unwrap();
    let yml = dir.join("stack.yml");
    let yml = yml.to_str().unwrap();

    let out = k.ok(&["stack", "deploy", "-c", yml, "--detach=false", "app"]);
    assert_eq!(
        out,
        "Creating network app_webnet\nCreating service app_web\n"
    );
    let services = k.ok(&["stack", "services", "app"]);
    let row = services.lines().nth(1).unwrap();
    for want in ["app_web", "replicated", "3/3", "site:latest"] {
        assert!(row.contains(want), "{services}");
    }
    assert!(row.ends_with(&format!("*:{port}->80/tcp")), "{services}");
    assert!(services.starts_with("ID "), "{services}");
    assert_eq!(k.ok(&["stack", "ls"]), "NAME   SERVICES\napp    1\n");

    // In turn: each of three requests in a row meets another replica (hostname).
    let seen: Vec<String> = (0..6)
        .map(|_| get(port).expect("a replica answers"))
        .collect();
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    // Each replica has the service's limits; the service name resolves to all of them.
    let ids = k.ok(&["ps", "-q", "--no-trunc"]);
    for id in ids.lines() {
        let q =
            fs::read_to_string(format!("/sys/fs/cgroup/cpu/kiln/{id}/cpu.cfs_quota_us")).unwrap();
        assert_eq!(q.trim(), "10000", "0.1 CPU of a 100 ms period");
        let m = fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/kiln/{id}/memory.limit_in_bytes"
        ))
        .unwrap();
        assert_eq!(m.trim(), (50u64 << 20).to_string());
    }
    let first = ids.lines().next().unwrap();
    let lookup = k.ok(&["exec", first, "nslookup", "web"]);
    assert_eq!(
        lookup.matches("Address: 10.").count()
            + lookup.matches("Address: 172.").count()
            + lookup.matches("Address: 192.").count(),
        3,
        "{lookup}"
    );

    // Kill a replica: a new task (a new container, a new hostname) takes its slot.
    let ps = k.ok(&["service", "ps", "app_web"]);
    let slot1 = ps.lines().find(|l| l.contains(" app_web.1 ")).unwrap();
    let task = slot1.split_whitespace().next().unwrap().to_string();
    let victim = k
        .ok(&["ps", "-q", "--filter", &format!("name=app_web.1.{task}")])
        .trim()
        .to_string();
    k.ok(&["kill", &victim]);
    until("slot 1 has a new task that serves", || {
        let ps = k.ok(&["service", "ps", "app_web"]);
        ps.lines()
            .any(|l| l.contains(" app_web.1 ") && !l.starts_with(&task) && l.contains("Running"))
            && k.ok(&["service", "ls"]).contains("3/3")
    });
    let ps = k.ok(&["service", "ps", "app_web"]);
    assert!(
        ps.contains(&format!("{task}    \\_ app_web.1"))
            && ps.contains("\"task: non-zero exit (137)\""),
        "{ps}"
    );
    let hosts: BTreeSet<String> = (0..6).filter_map(|_| get(port)).collect();
    assert!(!hosts.contains(&victim[..12]), "{hosts:?}");
    assert_eq!(hosts.len(), 3, "{hosts:?}");

    // The bridge's MAC address is fixed: else it follows its ports' lowest, changing as
    // replicas come and go, and what replicas send the host is lost until they ask again.
    let net: serde_json::Value =
        serde_json::from_str(&k.ok(&["network", "inspect", "app_webnet"])).unwrap();
    let bridge = net[0]["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap();
    let kind = fs::read_to_string(format!("/sys/class/net/{bridge}/addr_assign_type")).unwrap();
    assert_eq!(kind.trim(), "3", "NET_ADDR_SET");

    // A rolling update (start-first) under a loop of requests: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match try_get(port) {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let out = k.ok(&["service", "update", "--image", "site:v2", "app_web"]);
    assert_eq!(out, "app_web\n");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.lock().unwrap().clone());
    assert!(
        ok > 50 && failed.is_empty(),
        "{ok} answered, failed: {failed:?}"
    );
    let ps = k.ok(&["service", "ps", "app_web"]);
    assert_eq!(
        ps.lines()
            .filter(|l| !l.contains("\\_") && l.contains("site:v2") && l.contains("Running"))
            .count(),
        3,
        "{ps}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&k.ok(&["service", "inspect", "app_web"])).unwrap();
    assert_eq!(inspect[0]["UpdateStatus"]["State"], "completed");
    assert_eq!(
        inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "site:v2"
    );
    assert_eq!(
        inspect[0]["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "site"
    );
    assert_eq!(
        inspect[0]["Spec"]["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"],
        50u64 << 20
    );

    // An image that cannot serve: its first replica fails, the update rolls back, and the
    // service kept serving throughout (start-first never stopped an old replica).
    let o = k.run(&["service", "update", "--image", "site:broken", "app_web"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("update rolled back due to failure or early termination of task app_web.1"),
        "{err}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&k.ok(&["service", "inspect", "app_web"])).unwrap();
    assert_eq!(inspect[0]["UpdateStatus"]["State"], "rollback_completed");
    assert_eq!(
        inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "site:v2"
    );
    assert!(get(port).is_some());

    // Scale, logs.
    assert_eq!(
        k.ok(&["service", "scale", "app_web=1"]),
        "app_web scaled to 1\n"
    );
    assert!(k.ok(&["service", "ls"]).contains(" 1/1 "));
    let hosts: BTreeSet<String> = (0..4).filter_map(|_| get(port)).collect();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let logs = k.ok(&["service", "logs", "app_web"]);
    let line = logs
        .lines()
        .find(|l| l.contains("serving on"))
        .expect("a replica's line");
    assert!(line.starts_with("app_web."), "{logs}");
    assert!(line.contains("    | serving on "), "{logs}");

    // update_config.monitor: a new replica that ends soon after it was ready fails the
    // update (here it pauses; without monitor it would have counted as done).
    let port2 = free_port();
    fs::write(
        dir.join("mon.yml"),
        format!(
            r#"services:
  api:
    image: site:v2
    init: true
    command: ["sh", "-c", "mkdir -p /w && echo ok > /w/index.html && if [ -f /flaky ]; then (sleep 1; kill 1) & fi; exec httpd -f -p 80 -h /w"]
    deploy:
      restart_policy: {{condition: none}}
      update_config: {{monitor: 3s}}
    ports: ["{port2}:80"]
"#
        ),
    )
    .unwrap();
    let mon = dir.join("mon.yml");
    k.ok(&[
        "stack",
        "deploy",
        "-c",
        mon.to_str().unwrap(),
        "--detach=false",
        "mon",
    ]);
    let o = k.run(&["service", "update", "--image", "site:flaky", "mon_api"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("update paused due to failure or early termination of task mon_api.1"),
        "{err}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&k.ok(&["service", "inspect", "mon_api"])).unwrap();
    assert_eq!(inspect[0]["UpdateStatus"]["State"], "paused");
    k.ok(&["stack", "rm", "mon"]);

    // stack rm: services, tasks, network and port all gone.
    assert_eq!(
        k.ok(&["stack", "rm", "app"]),
        "Removing service app_web\nRemoving network app_webnet\n"
    );
    assert_eq!(k.ok(&["ps", "-a", "-q"]), "");
    assert!(!k.ok(&["network", "ls"]).contains("app_webnet"));
    until("the port is free", || {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    });
    assert!(get(port).is_none());

    // A constraint one node cannot meet is an error, and nothing is made.
    fs::write(
        dir.join("worker.yml"),
        file(port).replace(
            "      replicas: 3\n",
            "      replicas: 3\n      placement:\n        constraints: [node.role == worker]\n",
        ),
    )
    .unwrap();
    let err = k.fails(&[
        "stack",
        "deploy",
        "-c",
        dir.join("worker.yml").to_str().unwrap(),
        "app",
    ]);
    assert!(
        err.contains("service web: placement constraint node.role == worker cannot be met"),
        "{err}"
    );
    assert_eq!(k.ok(&["stack", "ls"]), "NAME   SERVICES\n");
    // So is a published port already taken, and the service is not left half made.
    let taken = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    let err = k.fails(&["stack", "deploy", "-c", yml, "app"]);
    assert!(err.contains("port is already allocated"), "{err}");
    assert_eq!(k.ok(&["stack", "ls"]), "NAME   SERVICES\n");
    assert_eq!(k.ok(&["ps", "-a", "-q"]), "");
    drop(taken);
}

/// kubernetes-validate, from the venv test.sh makes (or $KILN_KUBERNETES_VALIDATE).
fn kubernetes_validate() -> Option<PathBuf> {
    let p = std::env::var_os("KILN_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/kubernetes-validate")
        });
    require(
        p.exists(),
        &format!("{} is missing (test.sh makes it: pip install kubernetes-validate==1.37.0 in target/venv)", p.display()),
    )
    .then_some(p)
}

const LARGER: &str = r#"services:
  shop:
    image: registry.example/shop:1.4
    entrypoint: ["/app/shop"]
    command: ["--listen", ":8000"]
    environment:
      DB_HOST: db
      MODE: production
    ports: ["80:8000"]
    expose: ["9090"]
    user: "1000:1000"
    working_dir: /app
    healthcheck:
      test: ["CMD", "/app/shop", "--health"]
      interval: 10s
      timeout: 3s
      retries: 3
      start_period: 20s
    secrets: [db_password]
    configs: [shop_conf]
    stop_grace_period: 30s
    deploy:
      replicas: 3
      update_config: { parallelism: 2, order: start-first }
      placement:
        constraints: [node.labels.zone == east]
  db:
    image: postgres:16
    volumes:
      - db-data:/var/lib/postgresql/data
      - type: tmpfs
        target: /run/postgresql
    expose: ["5432"]
    secrets: [db_password]
  agent:
    image: agent:2
    deploy:
      mode: global
volumes:
  db-data:
secrets:
  db_password:
    file: ./db_password.txt
configs:
  shop_conf:
    file: ./shop.conf
"#;

/// Checks what the schemas cannot: each Service selects its Deployment's pods; every claim,
/// config map and secret a pod names exists.
const CHECK: &str = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by = lambda kind: {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
workloads = list(by("Deployment").values()) + list(by("DaemonSet").values())
pods = [w["spec"]["template"] for w in workloads]
for s in by("Service").values():
    sel = s["spec"]["selector"]
    assert any(all(p["metadata"]["labels"].get(k) == v for k, v in sel.items()) for p in pods), s["metadata"]["name"]
for w in workloads:
    m = w["spec"]["selector"]["matchLabels"]
    assert all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in m.items())
    for v in w["spec"]["template"]["spec"].get("volumes", []):
        if "persistentVolumeClaim" in v: assert v["persistentVolumeClaim"]["claimName"] in by("PersistentVolumeClaim")
        if "configMap" in v: assert v["configMap"]["name"] in by("ConfigMap")
        if "secret" in v: assert v["secret"]["secretName"] in by("Secret")
ns = list(by("Namespace"))
assert len(ns) == 1 and all(d["metadata"].get("namespace", ns[0]) == ns[0] for d in docs)
print(len(docs))
"#;

#[test]
fn stack_convert_writes_manifests_the_kubernetes_schemas_accept() {
    let Some(validate) = kubernetes_validate() else {
        return;
    };
    let k = Kiln::new();
    let dir = k.dir.path();
    fs::write(dir.join("db_password.txt"), "hunter2\n").unwrap();
    fs::write(dir.join("shop.conf"), "workers = 4\n").unwrap();
    let python = validate.parent().unwrap().join("python3");
    fs::write(dir.join("dashboard.html"), "<h1>getstartedlab</h1>\n").unwrap();
    for (name, text, kinds) in [
        ("part3.yml", TUTORIAL_PART3, 3),
        ("part5.yml", TUTORIAL_PART5, 7),
        ("larger.yml", LARGER, 10),
    ] {
        let src = dir.join(name);
        fs::write(&src, text).unwrap();
        let out = dir.join(format!("{name}.k8s.yaml"));
        k.ok(&[
            "stack",
            "convert",
            "--to",
            "kubernetes",
            "-c",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "shop",
        ]);
        let o = Command::new(&validate)
            .args(["--strict", "-k", "1.30.0"])
            .arg(&out)
            .output()
            .unwrap();
        let report =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && !report.contains("ERROR"),
            "{name}: {report}"
        );
        assert_eq!(report.matches("passed").count(), kinds, "{name}: {report}");
        let docs = sh(Command::new(&python).arg("-c").arg(CHECK).arg(&out));
        assert_eq!(docs.trim(), kinds.to_string(), "{name}");
    }
    let text = fs::read_to_string(dir.join("larger.yml.k8s.yaml")).unwrap();
    for want in [
        "kind: DaemonSet",
        "claimName: shop-db-data",
        "mountPath: /run/secrets/db_password",
        "zone: east",
        "runAsUser: 1000",
        "type: LoadBalancer",
        "name: shop-internal",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
}
