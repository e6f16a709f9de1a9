//! Rootless kiln: ordinary users, created by the test (two with subordinate ranges, as Debian's
//! useradd gives them, and a system user without any), run a copy of the kiln binary they can
//! execute (the build's is under /root, which is 0700). One scenario, sharing the base and the
//! registry: a multi-stage build with RUN, COPY --chown, a cache mount and a whiteout gives the
//! same image ID as root's; the image runs with -p; it is pushed to the real registry and pulled
//! by the other user; a user-defined network resolves names in the user's own network
//! namespace, and a stack's balancer reaches its replicas there; two users build at once, each in a store only they can enter; without
//! subordinate ids a build that needs them fails naming /etc/subuid; what cannot work rootless
//! is refused by flag.

use crate::common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const DOCKERFILE: &str = "\
FROM bb AS build
RUN --mount=type=cache,target=/cache echo run >> /cache/log && mkdir -p /out && echo built > /out/a && cp /cache/log /out/log
FROM bb
COPY --chown=1000:1000 --from=build /out /srv/out
COPY --chown=app hello.txt /srv/
RUN rm /etc/motd && mkdir -p /var/empty && chown 65534:65534 /var/empty
USER app
CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/srv\"]
";

/// An ordinary user made for the test, removed with everything it left (its processes, the
/// pause process among them, its home with its store, its runtime dir) on drop.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl User {
    /// `subids`: a normal user (useradd gives it subordinate ranges), else a system user (none).
    fn create(tag: &str, subids: bool) -> User {
        let name = format!("kiln{}{tag}", std::process::id() % 100_000);
        let mut c = Command::new("useradd");
        c.args(["-m", "-s", "/bin/sh"]);
        if !subids {
            c.arg("-r");
        }
        sh(c.arg(&name));
        let id = |flag: &str| -> u32 {
            sh(Command::new("id").args([flag, &name]))
                .trim()
                .parse()
                .unwrap()
        };
        let user = User {
            uid: id("-u"),
            gid: id("-g"),
            home: PathBuf::from("/home").join(&name),
            name,
        };
        let listed = fs::read_to_string("/etc/subuid")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{}:", user.name)));
        assert_eq!(
            listed, subids,
            "useradd's subordinate ranges for {}",
            user.name
        );
        user
    }

    /// kiln as this user, in `dir`, with a clean environment (no XDG_RUNTIME_DIR: kiln makes
    /// /tmp/kiln-UID).
    fn kiln(&self, bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .envs(env.iter().copied())
            .uid(self.uid)
            .gid(self.gid)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
        let o = self.kiln(bin, dir, args, env);
        assert!(
            o.status.success(),
            "{}: kiln {args:?} failed: {}\n{}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn fails(&self, bin: &Path, dir: &Path, args: &[&str]) -> String {
        let o = self.kiln(bin, dir, args, &[]);
        assert!(
            !o.status.success(),
            "{}: kiln {args:?} should have failed: {}",
            self.name,
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        for _ in 0..50 {
            let _ = Command::new("pkill")
                .args(["-KILL", "-u", &self.name])
                .status();
            let left = Command::new("pgrep").args(["-u", &self.name]).output();
            if left.is_ok_and(|o| o.stdout.is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("userdel").args(["-r", &self.name]).output();
        let _ = fs::remove_dir_all(format!("/tmp/kiln-{}", self.uid));
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// A directory every user may read and search, removed on drop.
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The busybox base with an `app` user (uid 1000) and a file owned by nobody, as a tarball.
fn base_tarball(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    assert!(busybox_rootfs(&rootfs));
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/srv:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n",
    )
    .unwrap();
    let tgz = dir.join("bb.tgz");
    tar_gz(&rootfs, &tgz);
    fs::remove_dir_all(&rootfs).unwrap();
    fs::set_permissions(&tgz, fs::Permissions::from_mode(0o644)).unwrap();
    tgz
}

fn image_id(out: &str) -> String {
    out.lines().last().unwrap_or_default().trim().to_string()
}

#[test]
fn ordinary_users_build_run_push_and_pull_the_image_root_builds() {
    if !needs(&[
        "useradd",
        "userdel",
        "pkill",
        "newuidmap",
        "newgidmap",
        "pasta",
        "docker-registry",
        "tar",
    ]) {
        return;
    }
    let bin_dir = shared_dir();
    let bin = bin_dir.path().join("kiln");
    fs::copy(env!("CARGO_BIN_EXE_kiln"), &bin).unwrap();
    let work = shared_dir();
    let w = work.path();
    let tgz = base_tarball(w);
    let ctx = w.join("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    sh(Command::new("chmod").args(["-R", "a+rX"]).arg(w));
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];

    // Root's image of the context.
    let root = Kiln::new();
    let mut c = root.cmd();
    sh(c.env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["import", tgz.to_str().unwrap(), "bb"]));
    let mut c = root.cmd();
    let root_id = image_id(&sh(c
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .current_dir(w)
        .args(["build", "-q", "-t", "app", "ctx"])));

    let a = User::create("a", true);
    let b = User::create("b", true);
    let nosub = User::create("c", false);

    // Two users build at the same time, each in their own store; both get root's image.
    let ids: Vec<String> = std::thread::scope(|s| {
        let builds: Vec<_> = [&a, &b]
            .into_iter()
            .map(|u| {
                let (bin, tgz) = (&bin, &tgz);
                s.spawn(move || {
                    u.ok(bin, w, &["import", tgz.to_str().unwrap(), "bb"], &epoch);
                    image_id(&u.ok(bin, w, &["build", "-q", "-t", "app", "ctx"], &epoch))
                })
            })
            .collect();
        builds.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        ids,
        vec![root_id.clone(), root_id.clone()],
        "rootless builds give root's image ID"
    );
    // With every time fixed (--timestamp, from the cache), root and a user still agree.
    let ts = [
        "build",
        "-q",
        "--timestamp",
        "1600000000",
        "-t",
        "app-ts",
        "ctx",
    ];
    let mut c = root.cmd();
    let root_ts = image_id(&sh(c.current_dir(w).args(ts)));
    assert_ne!(root_ts, root_id);
    assert_eq!(
        image_id(&a.ok(&bin, w, &ts, &[])),
        root_ts,
        "--timestamp as root and as a user"
    );
    let info = a.ok(&bin, w, &["info"], &[]);
    assert!(info.contains("Rootless: true"), "{info}");
    assert!(info.contains("65537 uids"), "{info}");
    assert!(
        info.contains("userxattr"),
        "kernel overlay in the user namespace: {info}"
    );

    // Each store is its owner's alone: private, and closed to the other user.
    let store_a = a.home.join(".local/share/kiln");
    let meta = fs::metadata(&store_a).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (a.uid, 0o700));
    let peek = Command::new("ls")
        .arg(store_a.join("cache-mounts"))
        .uid(b.uid)
        .gid(b.gid)
        .output()
        .unwrap();
    assert!(!peek.status.success(), "user b read user a's cache mounts");
    // The files inside carry the image's ids, shifted into a's subordinate range on disk.
    let unshared = a.ok(&bin, w, &["unshare", "id", "-u"], &[]);
    assert_eq!(unshared.trim(), "0");

    // The image runs with a published port, as its USER, with outbound access through pasta.
    let port = free_port();
    a.ok(
        &bin,
        w,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &format!("{port}:8080"),
            "app",
        ],
        &[],
    );
    assert_eq!(http_body(port, "/hello.txt"), "hello\n");
    // The pause process gone (killed) while a container runs: the next command adopts the
    // namespaces through the container's supervisor, and still reaches it.
    sh(Command::new("pkill").args(["-KILL", "-u", &a.name, "-f", "__kiln-pause"]));
    let who = a.ok(
        &bin,
        w,
        &[
            "exec",
            "web",
            "sh",
            "-c",
            "id -u; stat -c %u:%g /srv/out/a; cat /srv/out/log; test -e /etc/motd || echo gone",
        ],
        &[],
    );
    assert_eq!(who, "1000\n1000:1000\nrun\ngone\n");
    let ps = a.ok(&bin, w, &["ps", "--format", "{{.Names}} {{.Ports}}"], &[]);
    assert!(ps.starts_with("web 0.0.0.0:"), "{ps}");
    a.ok(&bin, w, &["rm", "-f", "web"], &[]);
    // Outbound: pasta maps the gateway's address to the host, where a server listens.
    let gateway = sh(Command::new("ip").args(["-4", "route", "show", "default"]));
    if let Some(gw) = gateway.split_whitespace().nth(2) {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let hport = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom the host\n")
                .unwrap();
        });
        let url = format!("http://{gw}:{hport}/");
        let got = a.ok(
            &bin,
            w,
            &["run", "--rm", "bb", "wget", "-q", "-O-", &url],
            &[],
        );
        assert_eq!(got, "from the host\n");
        server.join().unwrap();
    }

    // What cannot work rootless is refused before anything starts, naming the flag.
    let err = a.fails(&bin, w, &["run", "--rm", "-m", "10m", "bb", "true"]);
    assert!(
        err.contains("-m/--memory") && err.contains("rootless"),
        "{err}"
    );
    let err = a.fails(&bin, w, &["run", "--rm", "-p", "80:8080", "bb", "true"]);
    assert!(err.contains("ip_unprivileged_port_start"), "{err}");

    // A user-defined network lives in the user's own network namespace: names resolve through
    // aardvark-dns there, ports publish as on the default network, `network rm` cleans up.
    a.ok(&bin, w, &["network", "create", "mynet"], &[]);
    let port = free_port();
    let publish = format!("{port}:8080");
    a.ok(
        &bin,
        w,
        &[
            "run",
            "-d",
            "--name",
            "api",
            "--network",
            "mynet",
            "-p",
            &publish,
            "app",
        ],
        &[],
    );
    // Right after `run -d`: kiln waited for aardvark-dns (started with the network's first
    // container) to answer before it let `api` start.
    let by_name = a.ok(
        &bin,
        w,
        &[
            "run",
            "--rm",
            "--network",
            "mynet",
            "bb",
            "wget",
            "-q",
            "-O-",
            "http://api:8080/hello.txt",
        ],
        &[],
    );
    assert_eq!(by_name, "hello\n");
    assert_eq!(http_body(port, "/hello.txt"), "hello\n");
    a.ok(&bin, w, &["rm", "-f", "api"], &[]);
    a.ok(&bin, w, &["network", "rm", "mynet"], &[]);
    // A stack: its balancer reaches the replicas inside the user's network namespace.
    let port = free_port();
    let stack = w.join(format!("stack-{}.yml", a.name));
    fs::write(
        &stack,
        format!("services:\n  web:\n    image: app\n    stop_grace_period: 1s\n    deploy:\n      replicas: 2\n    ports: [\"{port}:8080\"]\n"),
    )
    .unwrap();
    fs::set_permissions(&stack, fs::Permissions::from_mode(0o644)).unwrap();
    let file = stack.to_str().unwrap();
    a.ok(
        &bin,
        w,
        &["stack", "deploy", "--detach=false", "-c", file, "st"],
        &[],
    );
    for _ in 0..2 {
        assert_eq!(http_body(port, "/hello.txt"), "hello\n");
    }
    a.ok(&bin, w, &["stack", "rm", "st"], &[]);

    // Push to the real registry as a; b pulls the same image.
    let registry = crate::registry::Registry::start(None);
    let name = format!("{}/rootless/app:1", registry.host());
    a.ok(&bin, w, &["tag", "app", &name], &[]);
    a.ok(&bin, w, &["push", &name], &[]);
    b.ok(&bin, w, &["rmi", "app"], &[]);
    b.ok(&bin, w, &["pull", &name], &[]);
    let pulled = b.ok(&bin, w, &["images", "-q", "--no-trunc", &name], &[]);
    assert_eq!(pulled.trim(), root_id);
    let out = b.ok(
        &bin,
        w,
        &["run", "--rm", &name, "cat", "/srv/hello.txt"],
        &[],
    );
    assert_eq!(out, "hello\n");

    // Without subordinate ids: root-only images work, the owners that cannot be kept are
    // named, and what needs other ids fails naming /etc/subuid.
    let o = nosub.kiln(&bin, w, &["import", tgz.to_str().unwrap(), "bb"], &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no subordinate ids in /etc/subuid"));
    let o = nosub.kiln(
        &bin,
        w,
        &["run", "--rm", "bb", "stat", "-c", "%u", "/etc/motd"],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "0\n", "{err}");
    assert!(
        err.contains("./etc/motd (65534:65534)") && err.contains("/etc/subuid"),
        "{err}"
    );
    let err = nosub.fails(&bin, w, &["build", "-t", "app", "ctx"]);
    assert!(
        err.contains("uid 1000 / gid 1000 is not mapped") && err.contains("/etc/subuid"),
        "{err}"
    );
    // `system migrate` stops the namespace's holder; the next command makes a new one.
    let o = nosub.kiln(&bin, w, &["system", "migrate"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("stopped kiln's pause process"),
        "{err}"
    );
    let info = nosub.ok(&bin, w, &["info"], &[]);
    assert!(
        info.contains("Rootless: true") && info.contains("1 uids"),
        "{info}"
    );
}
