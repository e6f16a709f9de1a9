//! Sharing images: the real registry server (Debian's docker-registry, distribution 2.8) on
//! 127.0.0.1, without and with htpasswd auth; skopeo as the peer client; and small servers in
//! the test for what the real one cannot be made to do (serve a corrupt blob, a Bearer token
//! dance).

use crate::common::*;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod cache;
mod partial;

/// A docker-registry process on 127.0.0.1, stopped on drop.
pub(crate) struct Registry {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub(crate) fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_on("127.0.0.1", htpasswd)
    }

    /// Listening on `ip` (0.0.0.0: containers reach it at their gateway's address).
    pub(crate) fn start_on(ip: &str, htpasswd: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap();
            assert!(out.status.success());
            fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the registry did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            port,
            child,
            _dir: dir,
        }
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kiln with its credentials kept in the test's own config dir (never the user's).
fn kiln_cmd(k: &Kiln, args: &[&str]) -> std::process::Output {
    let home = k.dir.path().join("home");
    fs::create_dir_all(&home).unwrap();
    k.cmd()
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(k: &Kiln, args: &[&str]) -> String {
    let o = kiln_cmd(k, args);
    assert!(
        o.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(k: &Kiln, args: &[&str]) -> String {
    let o = kiln_cmd(k, args);
    assert!(
        !o.status.success(),
        "kiln {args:?} should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn image_id(k: &Kiln, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(k, &["inspect", name])).unwrap();
    v[0]["Id"].as_str().unwrap().to_string()
}

#[test]
fn push_pull_and_peer_clients_agree_on_a_real_registry() {
    let Some((k, _, _)) = busybox_image("base", &["docker-registry", "skopeo"]) else {
        return;
    };
    let reg = Registry::start(None);
    let name = format!("{}/john/get-started:part1", reg.host());

    // A built image (zstd layers) pushed: skopeo sees the same manifest digest.
    let ctx = k.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM base\nRUN echo pushed > /pushed\nCMD [\"cat\", \"/pushed\"]\n",
    )
    .unwrap();
    ok(&k, &["build", "-q", "-t", "app", ctx.to_str().unwrap()]);
    ok(&k, &["tag", "app", &name]);
    let out = ok(&k, &["push", &name]);
    assert!(
        out.contains(&format!(
            "The push refers to repository [{}/john/get-started]",
            reg.host()
        )),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("part1: digest: "))
        .expect(&out)
        .to_string();
    let digest = line.split_whitespace().nth(2).unwrap().to_string();
    let inspected = sh(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{name}")));
    let v: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(v["Digest"], digest.as_str());
    // Pushing again: every blob is already there.
    assert!(ok(&k, &["push", &name]).contains("Layer already exists"));
    // Another repository of the same registry: the layers are mounted, not uploaded.
    let second = format!("{}/john/second:1", reg.host());
    ok(&k, &["tag", "app", &second]);
    let out = ok(&k, &["push", &second]);
    assert!(out.contains("Mounted from john/get-started"), "{out}");
    // Chunked uploads (PATCH ranges, then PUT) give the same blobs.
    let third = format!("{}/john/chunked:1", reg.host());
    ok(&k, &["tag", "app", &third]);
    let o = k
        .cmd()
        .env("HOME", k.dir.path().join("home"))
        .env("KILN_UPLOAD_CHUNK", "4096")
        .args(["push", &third])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inspected = sh(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{third}")));
    let v3: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(v3["Digest"], digest.as_str());

    // rmi, pull: the same image ID, and it runs.
    let id = image_id(&k, "app");
    ok(&k, &["rmi", "app", &name, &second, &third]);
    let out = ok(&k, &["pull", &name]);
    assert!(out.contains("Status: Downloaded newer image for"), "{out}");
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(image_id(&k, &name), id);
    assert!(ok(&k, &["pull", &name]).contains("Status: Image is up to date"));
    let o = kiln_cmd(&k, &["run", "--rm", &name]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "pushed\n");

    // An image skopeo copies into the registry (gzip layers, from an OCI archive) pulls and runs;
    // `run` pulls what it lacks, saying so first.
    let archive = k.dir.path().join("base.tar");
    ok(&k, &["save", "-o", archive.to_str().unwrap(), "base"]);
    let copied = format!("{}/library/copied:1", reg.host());
    sh(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{copied}")));
    let o = kiln_cmd(&k, &["run", "--rm", &copied, "echo", "from", "skopeo"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from skopeo\n");
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains(&format!("Unable to find image '{copied}' locally")));

    // A build pulls its missing base.
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/john/get-started:part1\nRUN cat /pushed > /again\n",
            reg.host()
        ),
    )
    .unwrap();
    ok(&k, &["rmi", &name]);
    ok(
        &k,
        &["build", "-q", "-t", "onpulled", ctx.to_str().unwrap()],
    );

    // A tag that is not there: not found, named.
    let err = fails(&k, &["pull", &format!("{}/john/nothere:1", reg.host())]);
    assert!(
        err.contains("not found") && err.contains("nothere"),
        "{err}"
    );
    assert!(k.store().verify().unwrap().is_empty());
}

#[test]
fn login_push_and_logout_on_a_registry_with_htpasswd() {
    let Some((k, _, _)) = busybox_image("base", &["docker-registry", "htpasswd"]) else {
        return;
    };
    let reg = Registry::start(Some(("john", "s3cret")));
    let name = format!("{}/john/base:1", reg.host());
    ok(&k, &["tag", "base", &name]);

    let err = fails(&k, &["push", &name]);
    assert!(err.contains("unauthorized"), "{err}");
    assert!(err.contains("kiln login"), "{err}");

    let err = fails(&k, &["login", "-u", "john", "-p", "wrong", &reg.host()]);
    assert!(err.contains("unauthorized"), "{err}");
    let auth = k.dir.path().join("home/.config/kiln/auth.json");
    assert!(!auth.exists(), "failed logins store nothing");

    let o = k
        .cmd()
        .env("HOME", k.dir.path().join("home"))
        .env("XDG_CONFIG_HOME", k.dir.path().join("home/.config"))
        .args(["login", "-u", "john", "--password-stdin", &reg.host()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"s3cret\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Login Succeeded\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&auth).unwrap()).unwrap();
    assert!(saved["auths"][reg.host()]["auth"].is_string());

    ok(&k, &["push", &name]);
    ok(&k, &["rmi", &name]);
    ok(&k, &["pull", &name]);
    assert!(ok(&k, &["logout", &reg.host()]).contains("Removing login credentials"));
    let err = fails(&k, &["pull", &name]);
    assert!(err.contains("unauthorized"), "{err}");
}

/// The blobs and manifest of the `base` image in `k`'s store, by digest.
fn blobs_of(k: &Kiln) -> (String, HashMap<String, Vec<u8>>, Vec<String>) {
    let store = k.store();
    let img = kiln::image::resolve(&store, "base").unwrap().image;
    let mut blobs = HashMap::new();
    let manifest = store.read_blob(&img.manifest.digest).unwrap();
    blobs.insert(img.manifest.digest.to_string(), manifest);
    blobs.insert(
        img.config.to_string(),
        store.read_blob(&img.config).unwrap(),
    );
    let mut layers = Vec::new();
    for l in &img.layers {
        blobs.insert(
            l.digest.to_string(),
            fs::read(store.blob_path(&l.digest)).unwrap(),
        );
        layers.push(l.digest.to_string());
    }
    (img.manifest.digest.to_string(), blobs, layers)
}

fn registry_api(
    manifest: String,
    blobs: HashMap<String, Vec<u8>>,
    path: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    if path == "/v2/" {
        return (200, vec![], b"{}".to_vec());
    }
    if path.contains("/manifests/") {
        return (
            200,
            vec![(
                "Content-Type".into(),
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            blobs[&manifest].clone(),
        );
    }
    if let Some((_, d)) = path.split_once("/blobs/") {
        if let Some(b) = blobs.get(d) {
            return (200, vec![], b.clone());
        }
    }
    (
        404,
        vec![],
        br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#.to_vec(),
    )
}

#[test]
fn a_registry_serving_a_corrupt_blob_changes_nothing() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    let (manifest, mut blobs, layers) = blobs_of(&k);
    // Other bytes under the layer's digest.
    let bad = blobs.get_mut(&layers[0]).unwrap();
    let n = bad.len();
    bad[n / 2] ^= 0xff;
    let port = serve(Arc::new(
        move |_m: &str, path: &str, _h: &HashMap<String, String>| {
            registry_api(manifest.clone(), blobs.clone(), path)
        },
    ));
    let other = Kiln::new();
    let name = format!("127.0.0.1:{port}/bad/image:1");
    let o = kiln_cmd(&other, &["pull", &name]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("corrupt") && err.contains(&layers[0]), "{err}");
    let store = other.store();
    assert!(store.images().unwrap().is_empty(), "nothing recorded");
    assert!(
        !store.has_blob(&layers[0].parse().unwrap()),
        "the bad blob is not kept"
    );
    assert!(store.verify().unwrap().is_empty());
}

#[test]
fn bearer_token_challenge_is_answered() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    let (manifest, blobs, _) = blobs_of(&k);
    let scopes: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let seen = scopes.clone();
    let port_cell: Arc<Mutex<u16>> = Arc::new(Mutex::new(0));
    let pc = port_cell.clone();
    let port = serve(Arc::new(
        move |_m: &str, path: &str, h: &HashMap<String, String>| {
            let port = *pc.lock().unwrap();
            if let Some(q) = path.strip_prefix("/token?") {
                seen.lock().unwrap().push(q.to_string());
                // The credentials reach the token service, never the registry itself.
                let basic = h.get("authorization").cloned().unwrap_or_default();
                if basic != "Basic am9objpzM2NyZXQ=" {
                    return (401, vec![], b"{}".to_vec());
                }
                return (
                    200,
                    vec![],
                    br#"{"token":"tok-123","expires_in":300}"#.to_vec(),
                );
            }
            if h.get("authorization").map(String::as_str) != Some("Bearer tok-123") {
                let scope = path
                    .strip_prefix("/v2/")
                    .and_then(|p| {
                        p.split_once("/manifests/")
                            .or_else(|| p.split_once("/blobs/"))
                    })
                    .map(|(repo, _)| format!(",scope=\"repository:{repo}:pull\""))
                    .unwrap_or_default();
                return (
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test-registry\"{scope}"),
                )],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
            );
            }
            registry_api(manifest.clone(), blobs.clone(), path)
        },
    ));
    *port_cell.lock().unwrap() = port;
    let other = Kiln::new();
    let name = format!("127.0.0.1:{port}/john/tokened:1");
    // Without credentials the token service refuses: unauthorized.
    let err = fails(&other, &["pull", &name]);
    assert!(err.contains("unauthorized"), "{err}");
    // Log in (verified through the token dance), then pull.
    assert_eq!(
        ok(
            &other,
            &[
                "login",
                "-u",
                "john",
                "-p",
                "s3cret",
                &format!("127.0.0.1:{port}")
            ]
        ),
        "Login Succeeded\n"
    );
    let out = ok(&other, &["pull", &name]);
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    let scopes = scopes.lock().unwrap().clone();
    assert!(
        scopes.iter().any(|s| s.contains("service=test-registry")
            && s.contains("scope=repository:john/tokened:pull")),
        "{scopes:?}"
    );
    assert_eq!(image_id(&other, &name), image_id(&k, "base"));
    let _: PathBuf = other.root();
}

/// `kiln login` at a terminal: the password prompt has echo off, the password never appears,
/// and rejected credentials are said as such (not "log in first").
#[test]
fn login_prompt_hides_the_password_and_says_when_it_is_rejected() {
    if !needs(&["python3"]) {
        return;
    }
    // A registry that refuses every credential.
    let port = serve(Arc::new(
        |_m: &str, _p: &str, _h: &HashMap<String, String>| {
            (
                401,
                vec![("WWW-Authenticate".into(), "Basic realm=\"test\"".into())],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                    .to_vec(),
            )
        },
    ));
    let k = Kiln::new();
    let script = r#"
import os, pty, select, sys, termios, time
kiln, root, registry = sys.argv[1:4]
pid, fd = pty.fork()
if pid == 0:
    os.environ["XDG_CONFIG_HOME"] = root + "/config"
    os.execv(kiln, [kiln, "--root", root, "login", "-u", "john", registry])
buf, deadline = b"", time.time() + 20
while b"Password:" not in buf and time.time() < deadline:
    if select.select([fd], [], [], 0.5)[0]:
        buf += os.read(fd, 1024)
time.sleep(0.3)
echo = bool(termios.tcgetattr(fd)[3] & termios.ECHO)
os.write(fd, b"s3cret-pw\n")
out = b""
while True:
    try:
        d = os.read(fd, 1024)
    except OSError:
        break
    if not d:
        break
    out += d
_, status = os.waitpid(pid, 0)
print("ECHO=%s" % echo)
print("STATUS=%d" % os.WEXITSTATUS(status))
print(out.decode(errors="replace"))
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, env!("CARGO_BIN_EXE_kiln")])
        .arg(k.root())
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("ECHO=False"),
        "echo stays off while the password is typed: {out}"
    );
    assert!(
        !out.contains("s3cret-pw"),
        "the password is never shown: {out}"
    );
    assert!(out.contains("STATUS=1"), "{out}");
    assert!(
        out.contains("rejected the credentials")
            && out.contains("\"john\"")
            && !out.contains("log in first"),
        "{out}"
    );
}

/// `compose push` sends the images its services build; `compose pull` fetches the ones they
/// only name, skipping the built ones, as docker compose does.
#[test]
fn compose_push_and_pull_move_the_services_images() {
    let Some((k, _, _)) = busybox_image("base", &["docker-registry"]) else {
        return;
    };
    let reg = Registry::start(None);
    let (app, db) = (
        format!("{}/team/app:1", reg.host()),
        format!("{}/team/db:1", reg.host()),
    );
    let dir = k.dir.path().join("proj");
    fs::create_dir_all(dir.join("ctx")).unwrap();
    fs::write(
        dir.join("ctx/Dockerfile"),
        "FROM base\nRUN echo app > /app\n",
    )
    .unwrap();
    fs::write(
        dir.join("compose.yaml"),
        format!("services:\n  app:\n    build: ./ctx\n    image: {app}\n  db:\n    image: {db}\n"),
    )
    .unwrap();
    ok(&k, &["tag", "base", &db]);
    ok(&k, &["push", &db]);
    ok(&k, &["rmi", &db]);
    let compose = |args: &[&str]| {
        let o = k
            .cmd()
            .current_dir(&dir)
            .env("HOME", k.dir.path())
            .arg("compose")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "compose {args:?}: {err}");
        err
    };
    compose(&["build"]);
    assert!(compose(&["push"]).contains(" app Pushing"));
    ok(&k, &["rmi", &app]);
    let err = compose(&["pull"]);
    assert!(
        err.contains(" db Pulling") && err.contains(" app Skipped - No image to be pulled"),
        "{err}"
    );
    let images = ok(&k, &["images"]);
    assert!(
        images.contains(&format!("{}/team/db", reg.host())),
        "{images}"
    );
    // What compose push sent is in the registry.
    ok(&k, &["pull", &app]);
    assert_eq!(
        ok(
            &k,
            &["run", "--rm", "--network", "none", &app, "cat", "/app"]
        ),
        "app\n"
    );
}
