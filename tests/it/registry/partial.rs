//! zstd:chunked layers end to end: a rebuild copies unchanged frames and writes the blob a fresh
//! build writes; a pull of a rebuilt image fetches the metadata and the changed frames only
//! (measured at a proxy in front of the real registry), and a registry that ignores ranges
//! still serves whole blobs.

use super::*;
use kiln::store::chunked::toc::{Footer, Metadata};
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};

/// 300 small files and one 6 MiB file of pseudo-random bytes (incompressible, like the
/// benchmark's), and a Dockerfile copying them.
fn context(dir: &std::path::Path) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for i in 0..300 {
        let d = dir.join(format!("d{}", i % 10));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), bytes(1024 + i * 7)).unwrap();
    }
    fs::write(dir.join("big.bin"), bytes(6 << 20)).unwrap();
    fs::write(dir.join("Dockerfile"), "FROM base\nCOPY . /app\n").unwrap();
}

/// The store's manifest for `name` (from its OCI index) and that manifest's last layer.
fn top_layer(k: &Kiln, name: &str) -> (String, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(k.root().join("index.json")).unwrap()).unwrap();
    let full = if name.contains('/') {
        name.to_string()
    } else {
        format!("docker.io/library/{name}:latest")
    };
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == full.as_str())
        .unwrap_or_else(|| panic!("{full} in {index}"));
    let digest = m["digest"].as_str().unwrap().to_string();
    let blob = |d: &str| {
        k.root()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&digest)).unwrap()).unwrap();
    let top = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    (digest, top)
}

/// The store's blob of a manifest's layer descriptor.
fn blob_file(k: &Kiln, layer: &serde_json::Value) -> fs::File {
    let hex = layer["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    fs::File::open(k.root().join("blobs/sha256").join(hex)).unwrap()
}

/// A layer blob's metadata size (TOC, tar-split, footer with their frame headers) and the
/// compressed size of `path`'s frames.
fn sizes(k: &Kiln, layer: &serde_json::Value, path: &str) -> (u64, u64) {
    let f = blob_file(k, layer);
    let size = layer["size"].as_u64().unwrap();
    let meta = Metadata::read(&f, size)
        .unwrap()
        .expect("a zstd:chunked layer");
    let toc = meta.toc().unwrap();
    let e = toc.entries.iter().find(|e| e.name == path).unwrap();
    (
        size - meta.footer.metadata_start(),
        (e.end_offset - e.offset) as u64,
    )
}

/// An HTTP proxy on 127.0.0.1 in front of `upstream` (one request per connection) that counts
/// the body bytes of blob responses whose path contains `count`; with `strip_ranges` it drops
/// Range headers, as a registry without range support answers.
fn proxy(upstream: String, strip_ranges: bool) -> (u16, Arc<Mutex<String>>, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let watch = Arc::new(Mutex::new(String::new()));
    let bytes = Arc::new(AtomicU64::new(0));
    let (w2, b2) = (watch.clone(), bytes.clone());
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (upstream, watch, bytes) = (upstream.clone(), w2.clone(), b2.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                let mut line = String::new();
                r.read_line(&mut line).unwrap_or(0);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                head.push_str(&line);
                let mut body_len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if strip_ranges && lower.starts_with("range:")
                        || lower.starts_with("connection:")
                    {
                        continue;
                    }
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        body_len = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&h);
                }
                head.push_str("Connection: close\r\n\r\n");
                let mut body = vec![0u8; body_len];
                r.read_exact(&mut body).unwrap();
                let mut up = TcpStream::connect(&upstream).unwrap();
                up.write_all(head.as_bytes()).unwrap();
                up.write_all(&body).unwrap();
                let mut resp = Vec::new();
                up.read_to_end(&mut resp).unwrap();
                let watched = watch.lock().unwrap().clone();
                if !watched.is_empty() && path.contains("/blobs/") && path.contains(&watched) {
                    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    bytes.fetch_add((resp.len() - split) as u64, Ordering::Relaxed);
                }
                let mut conn = conn;
                let _ = conn.write_all(&resp);
            });
        }
    });
    (port, watch, bytes)
}

#[test]
fn chunked_layers_rebuild_from_frames_and_pull_only_what_changed() {
    let Some((a, _, _)) = busybox_image("base", &["docker-registry"]) else {
        return;
    };
    let reg = Registry::start(None);
    let (port, watch, moved) = proxy(reg.host(), false);
    let (bare, _, whole) = proxy(reg.host(), true);
    let ctx = a.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    context(&ctx);
    let c = ctx.to_str().unwrap();
    let name = |v: u32| format!("127.0.0.1:{port}/app:v{v}");

    // v1, pushed; a second store pulls it whole.
    ok(&a, &["build", "-q", "-t", &name(1), c]);
    ok(&a, &["push", &name(1)]);
    let b = Kiln::new();
    ok(&b, &["pull", &name(1)]);

    // One small file changes: the rebuild copies the other frames, and its blob is the blob a
    // fresh store writes for the same tree. (SOURCE_DATE_EPOCH: the directories COPY creates
    // have the build's time, which would differ between the two builds by a second now and then.)
    fs::write(ctx.join("d3/f3"), b"changed").unwrap();
    let epoch = "1700000000";
    let o = a
        .cmd()
        .env("KILN_LOG", "debug")
        .env("SOURCE_DATE_EPOCH", epoch)
        .args(["build", "-t", &name(2), c])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("frames copied from the previous layer"),
        "{log}"
    );
    // The files COPY hard-linked from the previous snapshot are taken without being hashed.
    assert!(
        log.contains("files unchanged since the previous build"),
        "{log}"
    );
    let fresh = Kiln::new();
    let base_tar = a.dir.path().join("base.tar");
    ok(&a, &["save", "-o", base_tar.to_str().unwrap(), "base"]);
    ok(&fresh, &["load", "-q", "-i", base_tar.to_str().unwrap()]);
    let o = fresh
        .cmd()
        .env("SOURCE_DATE_EPOCH", epoch)
        .args(["build", "-q", "-t", "app", c])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, layer2) = top_layer(&a, &name(2));
    let (_, fresh_layer) = top_layer(&fresh, "app");
    assert_eq!(
        layer2, fresh_layer,
        "the same bytes (and annotations) whatever was reused"
    );
    assert!(layer2["annotations"]
        .get("io.github.containers.zstd-chunked.manifest-checksum")
        .is_some());

    // Its pull fetches the metadata and that file's frame, and nothing else.
    ok(&a, &["push", &name(2)]);
    let (meta, frame) = sizes(&a, &layer2, "app/d3/f3");
    *watch.lock().unwrap() = layer2["digest"].as_str().unwrap().to_string();
    let out = ok(&b, &["pull", &name(2)]);
    assert!(out.contains("the rest from local layers"), "{out}");
    let got = moved.swap(0, Ordering::Relaxed);
    eprintln!("small file changed: moved {got} bytes (metadata {meta}, its frame {frame})");
    assert!(
        got > 0 && got <= meta + frame,
        "moved {got}: metadata {meta} + frame {frame}"
    );
    assert_eq!(image_id(&b, &name(2)), image_id(&a, &name(2)));
    let o = kiln_cmd(&b, &["run", "--rm", &name(2), "cat", "/app/d3/f3"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "changed");

    watch.lock().unwrap().clear();
    // Peers read the chunked layers as zstd: skopeo copies them (checking every digest) and
    // podman pulls and runs the image.
    if have("skopeo") {
        let out = a.dir.path().join("skopeo");
        sh(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{}", name(2)))
            .arg(format!("dir:{}", out.display())));
    }
    if have("podman") {
        let pm = |args: &[&str]| {
            let mut c = podman(a.dir.path());
            c.args(args);
            c
        };
        sh(&mut pm(&["pull", "-q", "--tls-verify=false", &name(2)]));
        let got = sh(pm(&["run", "--rm"]).args(PODMAN_ULIMITS).args([
            name(2).as_str(),
            "cat",
            "/app/d3/f3",
        ]));
        assert_eq!(got, "changed");
        let _ = pm(&["rmi", "-af"]).output();
    }

    // One byte of the big file changes: about that file's frames move (one 4 MiB chunk of it).
    let mut big = fs::read(ctx.join("big.bin")).unwrap();
    big[5 << 20] ^= 0xff;
    fs::write(ctx.join("big.bin"), &big).unwrap();
    ok(&a, &["build", "-q", "-t", &name(3), c]);
    ok(&a, &["push", &name(3)]);
    let (_, layer3) = top_layer(&a, &name(3));
    let (meta, frames) = sizes(&a, &layer3, "app/big.bin");
    *watch.lock().unwrap() = layer3["digest"].as_str().unwrap().to_string();
    ok(&b, &["pull", &name(3)]);
    let got = moved.swap(0, Ordering::Relaxed);
    eprintln!("big file changed: moved {got} bytes (metadata {meta}, the file's frames {frames})");
    assert!(
        got <= meta + frames * 12 / 10 && got < meta + frames,
        "moved {got}: metadata {meta}, the file's frames {frames}"
    );
    assert_eq!(image_id(&b, &name(3)), image_id(&a, &name(3)));

    // A registry that ignores ranges: the whole blob, the same image.
    fs::write(ctx.join("d4/f4"), b"again").unwrap();
    let v4 = format!("127.0.0.1:{bare}/app:v4");
    ok(&a, &["build", "-q", "-t", &v4, c]);
    ok(&a, &["push", &v4]);
    let out = ok(&b, &["pull", &v4]);
    assert!(!out.contains("the rest from local layers"), "{out}");
    assert_eq!(image_id(&b, &v4), image_id(&a, &v4));
    drop(whole);

    // zstd:plain writes one stream without chunked metadata; it still pushes and pulls.
    ok(
        &a,
        &[
            "build",
            "-q",
            "--compression",
            "zstd:plain",
            "-t",
            "plain",
            c,
        ],
    );
    let (_, plain) = top_layer(&a, "plain");
    assert!(plain.get("annotations").is_none(), "{plain}");
    let f = blob_file(&a, &plain);
    assert!(Footer::read(&f, plain["size"].as_u64().unwrap())
        .unwrap()
        .is_none());
}
