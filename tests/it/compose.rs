//! `kiln compose`: a project's file read as docker compose reads it (errors naming the file,
//! line and key), brought up on its own network with names that resolve, converged on a second
//! `up`, changed, scaled, and taken down with nothing left but its named volume. Root.

use crate::common::*;
use std::fs;
use std::path::Path;
use std::process::Output;

fn compose(k: &Kiln, dir: &Path, args: &[&str]) -> Output {
    k.cmd()
        .current_dir(dir)
        .arg("compose")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(k: &Kiln, dir: &Path, args: &[&str]) -> (String, String) {
    let o = compose(k, dir, args);
    assert!(
        o.status.success(),
        "kiln compose {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

const FILE: &str = r#"services:
  web:
    image: base
    init: true
    command: sh -c 'mkdir -p /w && echo ${GREETING:-hello} > /w/index.html && exec httpd -f -p 80 -h /w'
    ports: ["${PORT}:80"]
    secrets: [token]
    depends_on:
      db:
        condition: service_healthy
  db:
    image: base
    # httpd as PID 1 would ignore the SIGTERM of stop (10 s each): PID 1 is kiln's init.
    init: true
    command: ["sh", "-c", "echo stored > /data/x; exec httpd -f -p 81 -h /data"]
    healthcheck:
      test: test -f /data/x
      interval: 1s
    volumes: ["data:/data"]
volumes:
  data:
secrets:
  token:
    file: ./token.txt
"#;

#[test]
fn compose_up_converges_and_down_leaves_only_named_volumes() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    let dir = k.dir.path().join("shop");
    fs::create_dir(&dir).unwrap();
    let port = free_port();
    fs::write(dir.join("compose.yaml"), FILE).unwrap();
    fs::write(dir.join(".env"), format!("PORT={port}\n")).unwrap();
    fs::write(dir.join("token.txt"), "t0ken\n").unwrap();

    let (config, _) = ok(&k, &dir, &["config"]);
    assert!(
        config.contains(&format!("0.0.0.0:{port}:80/tcp")),
        "{config}"
    );
    assert!(config.contains("name: shop_data"), "{config}");

    let (_, err) = ok(&k, &dir, &["up", "-d"]);
    for line in [
        "Network shop_default  Created",
        "Container shop-db-1  Started",
        "Container shop-web-1  Started",
    ] {
        assert!(err.contains(line), "{err}");
    }
    // db was healthy before web started (depends_on: service_healthy).
    assert!(err.find("shop-db-1  Started").unwrap() < err.find("shop-web-1  Created").unwrap());
    assert_eq!(http_body(port, "/").trim(), "hello");
    // Service names resolve on the project's network.
    let (page, _) = ok(&k, &dir, &["exec", "web", "wget", "-qO-", "http://db:81/x"]);
    assert_eq!(page.trim(), "stored");
    // A secret is its file, read-only under /run/secrets.
    let (secret, _) = ok(&k, &dir, &["exec", "web", "cat", "/run/secrets/token"]);
    assert_eq!(secret, "t0ken\n");
    let o = compose(
        &k,
        &dir,
        &["exec", "web", "sh", "-c", "echo x > /run/secrets/token"],
    );
    assert!(!o.status.success(), "a secret is read-only");
    let (ps, _) = ok(&k, &dir, &["ps"]);
    assert!(ps.contains("shop-db-1") && ps.contains("(healthy)"), "{ps}");

    // Nothing changed: nothing is touched.
    let (_, err) = ok(&k, &dir, &["up", "-d"]);
    assert!(
        err.contains("shop-web-1  Running") && !err.contains("Created"),
        "{err}"
    );
    // A changed service is recreated, the other stays; --scale adds replicas.
    fs::write(dir.join(".env"), format!("PORT={port}\nGREETING=changed\n")).unwrap();
    let (_, err) = ok(&k, &dir, &["up", "--wait", "--scale", "db=2"]);
    assert!(
        err.contains("shop-web-1  Recreated") && err.contains("shop-db-1  Running"),
        "{err}"
    );
    assert!(err.contains("shop-db-2  Started"), "{err}");
    // --wait returned once every container ran, healthy where it has a check.
    let (ps, _) = ok(&k, &dir, &["ps"]);
    assert_eq!(ps.matches("(healthy)").count(), 2, "{ps}");
    assert_eq!(http_body(port, "/").trim(), "changed");
    let (_, err) = ok(&k, &dir, &["up", "-d"]);
    assert!(err.contains("shop-db-2  Removed"), "{err}");
    // A service gone from the files leaves an orphan: reported, then removed on request.
    let web_only = FILE.replace(
        "    depends_on:\n      db:\n        condition: service_healthy\n",
        "",
    );
    let web_only = format!(
        "{}secrets:\n  token:\n    file: ./token.txt\n",
        &web_only[..web_only.find("  db:").unwrap()]
    );
    fs::write(dir.join("compose.yaml"), web_only).unwrap();
    let (_, err) = ok(&k, &dir, &["up", "-d"]);
    assert!(err.contains("orphan containers (shop-db-1)"), "{err}");
    let (_, err) = ok(&k, &dir, &["up", "-d", "--remove-orphans"]);
    assert!(err.contains("shop-db-1  Removed"), "{err}");
    fs::write(dir.join("compose.yaml"), FILE).unwrap();

    let (_, err) = ok(&k, &dir, &["down"]);
    assert!(err.contains("Network shop_default  Removed"), "{err}");
    assert_eq!(k.ok(&["ps", "-aq"]), "");
    assert!(!k.ok(&["network", "ls"]).contains("shop_default"));
    assert!(
        k.ok(&["volume", "ls"]).contains("shop_data"),
        "named volumes stay"
    );
    ok(&k, &dir, &["down", "-v"]);
    assert!(!k.ok(&["volume", "ls"]).contains("shop_data"));
}

#[test]
fn compose_errors_name_the_file_line_and_key() {
    let k = Kiln::new();
    let dir = k.dir.path().join("bad");
    fs::create_dir(&dir).unwrap();
    fs::write(
        dir.join("compose.yaml"),
        "services:\n  web:\n    image: x\n    ports:\n      - \"4000:eighty\"\n",
    )
    .unwrap();
    let o = compose(&k, &dir, &["config"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("compose.yaml:5: services.web.ports[0]: \"4000:eighty\" is not a port"),
        "{err}"
    );
    let o = compose(&k, &k.dir.path().join("."), &["config"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no configuration file provided"));
}

#[test]
fn compose_builds_missing_images_and_a_new_image_recreates_the_container() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    let dir = k.dir.path().join("site");
    fs::create_dir_all(dir.join("app")).unwrap();
    let port = free_port();
    let dockerfile = |text: &str| {
        fs::write(
            dir.join("app/Dockerfile"),
            format!("FROM base\nARG GREETING\nRUN mkdir /w && echo \"$GREETING {text}\" > /w/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/w\"]\n"),
        )
        .unwrap()
    };
    dockerfile("one");
    fs::write(
        dir.join("compose.yaml"),
        format!("services:\n  web:\n    build:\n      context: app\n      args:\n        GREETING: hello\n    init: true\n    ports: [\"{port}:80\"]\n"),
    )
    .unwrap();
    let (_, err) = ok(&k, &dir, &["up", "-d"]);
    assert!(err.contains("Service web  Building"), "{err}");
    assert_eq!(http_body(port, "/").trim(), "hello one");
    assert!(k.ok(&["images"]).contains("site-web"));
    // Up to date: no build, nothing recreated.
    let (_, err) = ok(&k, &dir, &["up", "-d"]);
    assert!(
        !err.contains("Building") && err.contains("site-web-1  Running"),
        "{err}"
    );
    // A new image (compose build) recreates the container on the next up.
    dockerfile("two");
    ok(&k, &dir, &["build"]);
    let (_, err) = ok(&k, &dir, &["up", "-d"]);
    assert!(err.contains("site-web-1  Recreated"), "{err}");
    assert_eq!(http_body(port, "/").trim(), "hello two");
    // The image built for the service goes with --rmi local.
    let (_, err) = ok(&k, &dir, &["down", "--rmi", "local"]);
    assert!(err.contains("Image site-web  Removed"), "{err}");
    assert!(!k.ok(&["images"]).contains("site-web"));
}

#[test]
fn compose_up_in_the_foreground_shows_output_until_ctrl_c_stops_it() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    let dir = k.dir.path().join("fg");
    fs::create_dir(&dir).unwrap();
    fs::write(
        dir.join("compose.yaml"),
        "services:\n  talker:\n    image: base\n    init: true\n    command: sh -c 'for i in 1 2 3; do echo line $$i; done; exec sleep 100'\n  once:\n    image: base\n    command: sh -c 'echo done; exit 3'\n",
    )
    .unwrap();
    let mut child = k
        .cmd()
        .current_dir(&dir)
        .args(["compose", "up"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !(seen.contains("talker-1  | line 3") && seen.contains("once-1 exited with code 3")) {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "compose up ended early: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(seen.contains("once-1    | done"), "{seen}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let (ps, _) = ok(&k, &dir, &["ps", "-a"]);
    assert!(ps.contains("fg-talker-1") && ps.contains("Exited"), "{ps}");
    let (logs, _) = ok(&k, &dir, &["logs", "talker"]);
    assert_eq!(
        logs,
        "talker-1  | line 1\ntalker-1  | line 2\ntalker-1  | line 3\n"
    );
    // A one-shot that ends at once starts all the same.
    let (_, err) = ok(&k, &dir, &["start"]);
    assert!(err.contains("fg-once-1  Started"), "{err}");
    ok(&k, &dir, &["down"]);
    // compose run: a one-off container with the service's settings and another command, its
    // exit code kiln's; --rm leaves nothing.
    let (out, _) = ok(&k, &dir, &["run", "--rm", "talker", "echo", "one", "off"]);
    assert_eq!(out, "one off\n");
    let o = compose(&k, &dir, &["run", "--rm", "once"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(k.ok(&["ps", "-aq"]), "");
    // Without --rm the one-off stays, but compose ps lists the project's services only; down
    // removes it too.
    ok(&k, &dir, &["run", "talker", "true"]);
    assert!(k.ok(&["ps", "-a"]).contains("fg-talker-run-"));
    let (ps, _) = ok(&k, &dir, &["ps", "-a"]);
    assert!(!ps.contains("-run-"), "{ps}");
    ok(&k, &dir, &["down"]);
}
