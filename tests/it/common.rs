//! Shared test harness: privilege and tool checks, a busybox rootfs, a kiln runner, tree compare.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead as _, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn strict() -> bool {
    std::env::var("KILN_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Whether the test can go on; prints why not, or panics under KILN_REQUIRE_PRIVILEGED=1.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if strict() {
        panic!("KILN_REQUIRE_PRIVILEGED=1 but {what}");
    }
    eprintln!("skipped: {what}");
    false
}

pub fn is_root() -> bool {
    kiln::sys::is_root()
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Root and these tools, or skip.
pub fn needs(tools: &[&str]) -> bool {
    if !require(is_root(), "this test needs root") {
        return false;
    }
    tools
        .iter()
        .all(|t| require(have(t), &format!("{t} is not installed")))
}

/// A kiln store in a temp dir, and a way to run the kiln binary on it.
pub struct Kiln {
    pub dir: tempfile::TempDir,
}

impl Kiln {
    pub fn new() -> Kiln {
        Kiln {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.arg("--root")
            .arg(self.root())
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("KILN_ROOT");
        c
    }
    /// Runs kiln; returns the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }
    /// Runs kiln and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kiln {args:?} failed: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    /// Runs kiln and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "kiln {args:?} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).unwrap()
    }
    pub fn store(&self) -> kiln::store::Store {
        kiln::store::Store::open(self.root()).unwrap()
    }
}

/// A test's store goes with everything it made outside its directory: containers a failed test
/// left running, and network bridges and rules (which outlive their containers, as Docker's).
impl Drop for Kiln {
    fn drop(&mut self) {
        if self.root().join("kiln.db").exists() {
            let _ = self
                .cmd()
                .args(["system", "reset", "--force"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A busybox rootfs from Debian's busybox-static: /bin/busybox and a symlink per applet, a
/// passwd and group, a sticky /tmp, a hard link, a long path (PAX), a setuid file.
pub fn busybox_rootfs(dir: &Path) -> bool {
    if !require(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing (apt-get install busybox-static)",
    ) {
        return false;
    }
    for d in ["bin", "etc", "tmp", "root", "usr/share/doc"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter(|a| *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let long = dir
        .join("usr/share/doc")
        .join("d".repeat(90))
        .join("e".repeat(90));
    fs::create_dir_all(&long).unwrap();
    fs::write(
        long.join("README"),
        "a path longer than 100 bytes needs PAX\n",
    )
    .unwrap();
    fs::write(dir.join("etc/motd"), "hello from kiln\n").unwrap();
    fs::hard_link(dir.join("etc/motd"), dir.join("etc/motd.link")).unwrap();
    fs::write(dir.join("bin/suid"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("bin/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(dir.join("root"), Some(0), Some(0)).unwrap();
    std::os::unix::fs::lchown(dir.join("etc/motd"), Some(65534), Some(65534)).unwrap();
    true
}

/// Tars a directory with GNU tar, gzip-compressed, as a user would for `docker import`.
pub fn tar_gz(dir: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-czf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

/// Everything about a tree a layer must carry, one line per entry, sorted (the library's view).
pub fn describe(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(r.clone());
                format!("dir {:o}", m.mode() & 0o7777)
            } else {
                let data = fs::read(&p).unwrap();
                format!(
                    "file {:o} {} {} nlink {} mtime {}",
                    m.mode() & 0o7777,
                    data.len(),
                    kiln::store::Digest::of(&data).short(),
                    m.nlink(),
                    m.mtime()
                )
            };
            out.push(format!("{} {}:{} {what}", r.display(), m.uid(), m.gid()));
        }
    }
    out.sort();
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command and requires success; returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A store with a busybox rootfs imported as NAME: (store, rootfs dir, image ID), when root and
/// `tools` are available (else the test skips, or fails under KILN_REQUIRE_PRIVILEGED=1).
pub fn busybox_image(name: &str, tools: &[&str]) -> Option<(Kiln, PathBuf, String)> {
    let mut all = vec!["tar"];
    all.extend_from_slice(tools);
    if !needs(&all) {
        return None;
    }
    // `kiln run` joins the default bridge network, made by netavark.
    if !require(
        Path::new("/usr/lib/podman/netavark").exists(),
        "netavark is missing (apt-get install netavark aardvark-dns)",
    ) {
        return None;
    }
    let k = Kiln::new();
    let rootfs = k.dir.path().join("rootfs");
    if !busybox_rootfs(&rootfs) {
        return None;
    }
    let tgz = k.dir.path().join("busybox.tgz");
    tar_gz(&rootfs, &tgz);
    let id = k
        .ok(&["import", tgz.to_str().unwrap(), name])
        .trim()
        .to_string();
    Some((k, rootfs, id))
}

/// `podman run`'s limits on this machine: its defaults ask for more open files than the hard
/// limit allows.
pub const PODMAN_ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:20000",
    "--ulimit",
    "nproc=4096:4096",
];

/// podman with its own root and run root under `dir` (vfs: no overlay mounts to leave behind),
/// and runc (crun refuses this machine's hybrid cgroups), never the machine's own storage.
pub fn podman(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs", "--runtime", "runc"]);
    c
}

/// A tiny HTTP/1.1 server: `handle(method, path, headers)` answers (status, headers, body).
pub type Handler = dyn Fn(
        &str,
        &str,
        &std::collections::HashMap<String, String>,
    ) -> (u16, Vec<(String, String)>, Vec<u8>)
    + Send
    + Sync;

pub fn serve(handler: std::sync::Arc<Handler>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let h = handler.clone();
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or("").to_string(),
                        parts.next().unwrap_or("").to_string(),
                    );
                    let mut headers = std::collections::HashMap::new();
                    loop {
                        let mut l = String::new();
                        r.read_line(&mut l).unwrap();
                        let l = l.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    if let Some(n) = headers
                        .get("content-length")
                        .and_then(|v| v.parse::<usize>().ok())
                    {
                        let mut b = vec![0; n];
                        r.read_exact(&mut b).unwrap();
                    }
                    let (status, hs, body) = h(&method, &path, &headers);
                    let mut out =
                        format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                    for (k, v) in hs {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    if w.write_all(out.as_bytes()).is_err() {
                        return;
                    }
                    if method != "HEAD" && w.write_all(&body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET path` on 127.0.0.1:`port`, waiting up to 10 s for a 200 (a server just
/// started may not listen yet).
pub fn http_body(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let t = std::time::Instant::now();
    loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        if let Ok(r) = got {
            if let (true, Some((_, body))) = (r.contains(" 200 "), r.split_once("\r\n\r\n")) {
                return body.to_string();
            }
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "127.0.0.1:{port}{path} never answered 200"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The tutorial's part 3 file: five replicas of the app behind port 4000.
pub const TUTORIAL_PART3: &str = include_str!("../../fixtures/getstartedlab/part3.yml");

/// Part 5's: the same with Redis (its data in a host directory) and a dashboard on 8080, here a
/// local web server showing a bind-mounted host file (the tutorial's visualizer reads the swarm
/// engine's socket, which kiln, having no daemon, does not have).
pub const TUTORIAL_PART5: &str = include_str!("../../fixtures/getstartedlab/part5.yml");
