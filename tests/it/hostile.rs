//! Hostile archives and registries (the adversarial run's findings): an OCI layout whose blob is
//! a link to /dev/zero, a docker-archive directory naming host paths, indexes nested thousands
//! deep, layers that are not tar streams, and registries that send more than they declare or
//! trickle forever. Each must fail at once, naming the thing, with nothing recorded. No root.

use crate::common::*;
use kiln::store::Digest;
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A small, valid layer: a tar holding /hello.
fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("hello").unwrap();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"hi"[..]).unwrap();
    b.into_inner().unwrap()
}

fn config_for(diff_ids: &[Digest]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
    }))
    .unwrap()
}

fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": Digest::of(bytes).to_string(), "size": bytes.len()})
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn put_blob(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

fn write_layout(dir: &Path, index_entry: serde_json::Value) {
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [index_entry]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A manifest (as a blob in `dir`) for `config` and one layer descriptor.
fn manifest_with(dir: &Path, config: &[u8], layer: serde_json::Value) -> Vec<u8> {
    put_blob(dir, config);
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": desc(CONFIG, config), "layers": [layer],
    }))
    .unwrap();
    put_blob(dir, &m);
    m
}

fn nothing_recorded(k: &Kiln) {
    let store = k.store();
    assert!(store.images().unwrap().is_empty(), "no image recorded");
    assert!(
        store.verify().unwrap().is_empty(),
        "the store is consistent"
    );
    let ingest: u64 = fs::read_dir(store.ingest_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert!(ingest < 1 << 20, "{ingest} bytes left in ingest");
}

#[test]
fn a_layout_blob_linked_to_dev_zero_is_not_read() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The descriptor says 10,240 bytes; the blob is a link to /dev/zero (absolute, and relative
    // climbing out of the layout).
    let fake = Digest::of(b"not the content");
    let config = config_for(&[Digest::of(&vec![0u8; 10240])]);
    let m = manifest_with(
        d,
        &config,
        serde_json::json!({"mediaType": LAYER, "digest": fake.to_string(), "size": 10240}),
    );
    write_layout(d, desc(MANIFEST, &m));
    for target in ["/dev/zero", "../../../../../../../../dev/zero"] {
        let blob = d.join("blobs/sha256").join(fake.hex());
        let _ = fs::remove_file(&blob);
        std::os::unix::fs::symlink(target, &blob).unwrap();
        let err = k.fails(&["load", "-i", d.to_str().unwrap()]);
        assert!(err.contains(&fake.hex()), "{target}: {err}");
        nothing_recorded(&k);
    }
    // A regular file longer than declared is read to the declared size + 1 and refused.
    let blob = d.join("blobs/sha256").join(fake.hex());
    fs::remove_file(&blob).unwrap();
    fs::write(&blob, vec![0u8; 1 << 20]).unwrap();
    let err = k.fails(&["load", "-i", d.to_str().unwrap()]);
    assert!(
        err.contains(&fake.hex()) && err.contains("more than the 10240 bytes"),
        "{err}"
    );
    nothing_recorded(&k);
}

#[test]
fn a_docker_archive_directory_cannot_name_host_files() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layer = layer_tar();
    fs::write(d.join("layer.tar"), &layer).unwrap();
    let config = config_for(&[Digest::of(&layer)]);
    fs::write(d.join("config.json"), &config).unwrap();
    // A host file outside the directory, with a recognisable content.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("x.tar"), &layer).unwrap();
    fs::write(outside.path().join("secret"), "TOP-SECRET-CONTENT").unwrap();
    let depth = d.components().count();
    let up = "../".repeat(depth + 2);
    let outside_rel = format!("{up}{}", outside.path().join("x.tar").display());
    for (config_name, layer_name) in [
        (
            "config.json",
            outside.path().join("x.tar").display().to_string(),
        ),
        ("config.json", outside_rel.clone()),
        ("config.json", "/dev/zero".to_string()),
        (
            &*outside.path().join("secret").display().to_string(),
            "layer.tar".to_string(),
        ),
    ] {
        let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["evil:1"], "Layers": [layer_name]}]);
        fs::write(
            d.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let err = k.fails(&["load", "-i", d.to_str().unwrap()]);
        assert!(
            err.contains("missing from the archive"),
            "{config_name} {layer_name}: {err}"
        );
        assert!(!err.contains("TOP-SECRET"), "{err}");
        nothing_recorded(&k);
    }
    // The same directory with its own names loads.
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": ["fine:1"], "Layers": ["layer.tar"]}]);
    fs::write(
        d.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    k.ok(&["load", "-i", d.to_str().unwrap()]);
}

#[test]
fn indexes_nested_thousands_deep_fail_clearly() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layer = layer_tar();
    let config = config_for(&[Digest::of(&layer)]);
    put_blob(d, &layer);
    let m = manifest_with(d, &config, desc(LAYER, &layer));
    let mut entry = desc(MANIFEST, &m);
    entry["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    for _ in 0..20_000 {
        let idx =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [entry]}))
                .unwrap();
        put_blob(d, &idx);
        entry = desc(INDEX, &idx);
        entry["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    }
    write_layout(d, entry);
    let o = k.run(&["load", "-i", d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "an error, not a crash: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("more than 32 deep"), "{err}");
    nothing_recorded(&k);
}

#[test]
fn layers_that_are_not_tar_streams_fail_at_load() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = layer_tar();
    for (what, bytes) in [
        (
            "garbage",
            b"\x01\x02garbage, not a tar \xff\xfe header at all".repeat(40),
        ),
        ("truncated", good[..700].to_vec()),
    ] {
        // The DiffID and digest match the bytes: only the tar reading can tell.
        fs::write(d.join("layer.tar"), &bytes).unwrap();
        fs::write(d.join("config.json"), config_for(&[Digest::of(&bytes)])).unwrap();
        let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": ["bad:1"], "Layers": ["layer.tar"]}]);
        fs::write(
            d.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let err = k.fails(&["load", "-i", d.to_str().unwrap()]);
        assert!(err.contains("not a valid tar stream"), "{what}: {err}");
        assert!(
            err.is_ascii() || !err.contains('\u{1}'),
            "raw bytes escaped: {err:?}"
        );
        nothing_recorded(&k);

        // The same as an OCI layout.
        let layout = tempfile::tempdir().unwrap();
        let l = layout.path();
        put_blob(l, &bytes);
        let m = manifest_with(l, &config_for(&[Digest::of(&bytes)]), desc(LAYER, &bytes));
        write_layout(l, desc(MANIFEST, &m));
        let err = k.fails(&["load", "-i", l.to_str().unwrap()]);
        assert!(err.contains("not a valid tar stream"), "{what}, OCI: {err}");
        nothing_recorded(&k);
    }
}

/// How a hostile registry sends the layer blob (or the manifest).
#[derive(Clone, Copy, PartialEq)]
enum Blob {
    /// The manifest claims 2.6 GB (then zeros, at most 64 MiB of them).
    HugeManifest,
    /// Zeros, without end (or until 1 GiB), no Content-Length.
    Endless,
    /// One byte every 100 ms, for at most 60 s.
    Trickle,
    /// The headers, then nothing for 60 s.
    Silent,
    /// The right bytes.
    Honest,
}

/// A registry on 127.0.0.1 serving one image whose layer is sent as `how`; counts the layer
/// bytes it wrote. Every loop is bounded so the server stops by itself.
fn hostile_registry(
    manifest: Vec<u8>,
    blobs: HashMap<String, Vec<u8>>,
    layer: String,
    how: Blob,
) -> (u16, Arc<AtomicU64>) {
    registry_with(manifest, HashMap::new(), blobs, layer, how)
}

/// As [`hostile_registry`], and `manifests` answers `/manifests/REF` by reference (the tag `1`,
/// or a digest) with its media type; any other reference gets `manifest`.
fn registry_with(
    manifest: Vec<u8>,
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    layer: String,
    how: Blob,
) -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (manifest, blobs, layer, sent) = (
                manifest.clone(),
                blobs.clone(),
                layer.clone(),
                counter.clone(),
            );
            let manifests = manifests.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                    }
                    let reply = |w: &mut std::net::TcpStream, ct: &str, body: &[u8]| {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        w.write_all(head.as_bytes()).and_then(|_| w.write_all(body))
                    };
                    let ok = if path == "/v2/" {
                        reply(&mut w, "application/json", b"{}")
                    } else if path.contains("/manifests/") && how == Blob::HugeManifest {
                        let _ = w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: {MANIFEST}\r\nContent-Length: 2600000000\r\n\r\n").as_bytes());
                        let chunk = vec![b' '; 64 * 1024];
                        while sent.load(Ordering::Relaxed) < 64 << 20 && w.write_all(&chunk).is_ok()
                        {
                            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                        return;
                    } else if let Some((_, r)) = path.split_once("/manifests/") {
                        match manifests.get(r) {
                            Some((mt, body)) => reply(&mut w, mt, body),
                            None => reply(&mut w, MANIFEST, &manifest),
                        }
                    } else if path.ends_with(&layer) {
                        let t = Instant::now();
                        match how {
                            Blob::Honest | Blob::HugeManifest => {
                                reply(&mut w, "application/octet-stream", &blobs[&layer])
                            }
                            Blob::Endless => {
                                let _ =
                                    w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                                let chunk = vec![0u8; 64 * 1024];
                                while sent.load(Ordering::Relaxed) < 1 << 30
                                    && w.write_all(&chunk).is_ok()
                                {
                                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                                }
                                return;
                            }
                            Blob::Trickle => {
                                let _ = w.write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
                                );
                                while t.elapsed() < Duration::from_secs(60)
                                    && w.write_all(b"\0").is_ok()
                                {
                                    sent.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(100));
                                }
                                return;
                            }
                            Blob::Silent => {
                                let _ = w.write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
                                );
                                let mut b = [0u8; 1];
                                let _ = w.set_read_timeout(Some(Duration::from_secs(60)));
                                // Returns when kiln closes the connection (or after 60 s).
                                let _ = std::io::Read::read(&mut r, &mut b);
                                return;
                            }
                        }
                    } else if let Some(b) =
                        path.split_once("/blobs/").and_then(|(_, d)| blobs.get(d))
                    {
                        reply(&mut w, "application/octet-stream", b)
                    } else {
                        w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    };
                    if ok.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, sent)
}

/// An image whose manifest declares the layer's size as `declared` (its real size when None).
fn registry_image(declared: Option<u64>) -> (Vec<u8>, HashMap<String, Vec<u8>>, String) {
    let layer = layer_tar();
    let config = config_for(&[Digest::of(&layer)]);
    let mut ld = desc(LAYER, &layer);
    if let Some(n) = declared {
        ld["size"] = serde_json::json!(n);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": desc(CONFIG, &config), "layers": [ld],
    }))
    .unwrap();
    let mut blobs = HashMap::new();
    blobs.insert(Digest::of(&config).to_string(), config);
    blobs.insert(Digest::of(&layer).to_string(), layer.clone());
    (manifest, blobs, Digest::of(&layer).to_string())
}

fn pull(k: &Kiln, port: u16, stall: &str) -> (bool, String) {
    let o = k
        .cmd()
        .args(["pull", &format!("127.0.0.1:{port}/hostile/image:1")])
        .env("KILN_REGISTRY_STALL_TIMEOUT", stall)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_registry_cannot_send_more_than_the_manifest_declares() {
    // 10 KiB declared, zeros without end: kiln stops one byte past the declared size.
    let (manifest, blobs, layer) = registry_image(Some(10 * 1024));
    let (port, sent) = hostile_registry(manifest, blobs, layer.clone(), Blob::Endless);
    let k = Kiln::new();
    let (ok, err) = pull(&k, port, "60");
    assert!(!ok);
    assert!(
        err.contains(&layer) && err.contains("more than the 10240 bytes"),
        "{err}"
    );
    assert!(
        sent.load(Ordering::Relaxed) < 64 << 20,
        "kiln kept reading: {} bytes",
        sent.load(Ordering::Relaxed)
    );
    nothing_recorded(&k);

    // The right bytes, but the manifest declares one byte fewer, then one more: refused too.
    let real = layer_tar().len() as u64;
    for declared in [real - 1, real + 1] {
        let (manifest, blobs, layer) = registry_image(Some(declared));
        let (port, _) = hostile_registry(manifest, blobs, layer.clone(), Blob::Honest);
        let (ok, err) = pull(&k, port, "60");
        assert!(!ok, "declared {declared} of {real}");
        assert!(err.contains(&layer) && err.contains("declares"), "{err}");
        nothing_recorded(&k);
    }
    // And the honest registry works.
    let (manifest, blobs, layer) = registry_image(None);
    let (port, _) = hostile_registry(manifest, blobs, layer, Blob::Honest);
    let (ok, err) = pull(&k, port, "60");
    assert!(ok, "{err}");
}

#[test]
fn a_stalled_or_trickling_registry_ends_the_pull() {
    for how in [Blob::Silent, Blob::Trickle] {
        let (manifest, blobs, layer) = registry_image(Some(100_000));
        let (port, _) = hostile_registry(manifest, blobs, layer.clone(), how);
        let k = Kiln::new();
        // A 2-second stall period: under 1 KiB/s over it ends the transfer.
        let (ok, err) = pull(&k, port, "2");
        assert!(!ok);
        assert!(
            err.contains("stalled") && err.contains(&layer) && err.contains("127.0.0.1"),
            "{err}"
        );
        nothing_recorded(&k);
    }
}

#[test]
fn an_oversized_manifest_is_refused_as_too_large() {
    let (manifest, blobs, layer) = registry_image(None);
    let (port, sent) = hostile_registry(manifest, blobs, layer, Blob::HugeManifest);
    let k = Kiln::new();
    let (ok, err) = pull(&k, port, "60");
    assert!(!ok);
    assert!(
        err.contains("too large") && err.contains("2600000000"),
        "{err}"
    );
    assert!(!err.contains("cannot reach"), "{err}");
    assert!(sent.load(Ordering::Relaxed) < 64 << 20);
    nothing_recorded(&k);
}

#[test]
fn a_pull_follows_nested_indexes_a_bounded_depth() {
    let (manifest, blobs, layer) = registry_image(None);
    // tag -> index -> index -> manifest
    let mut manifests = HashMap::new();
    let mut entry = desc(MANIFEST, &manifest);
    entry["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    manifests.insert(
        Digest::of(&manifest).to_string(),
        (MANIFEST.to_string(), manifest.clone()),
    );
    let mut top = Vec::new();
    for level in 0..2 {
        let idx = serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [entry]}),
        )
        .unwrap();
        manifests.insert(
            Digest::of(&idx).to_string(),
            (INDEX.to_string(), idx.clone()),
        );
        entry = desc(INDEX, &idx);
        if level == 0 {
            entry["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
        }
        top = idx;
    }
    manifests.insert("1".to_string(), (INDEX.to_string(), top));
    let (port, _) = registry_with(
        manifest.clone(),
        manifests.clone(),
        blobs.clone(),
        layer.clone(),
        Blob::Honest,
    );
    let k = Kiln::new();
    let (ok, err) = pull(&k, port, "60");
    assert!(ok, "{err}");

    // An index that names itself, as deep as a registry likes: refused past 32 levels.
    let mut looped = HashMap::new();
    let mut e = serde_json::json!({"mediaType": INDEX, "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "size": 10});
    e["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let mut chain = Vec::new();
    for _ in 0..40 {
        let idx = serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [e]}),
        )
        .unwrap();
        chain.push(idx.clone());
        e = desc(INDEX, &idx);
        e["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    }
    for idx in &chain {
        looped.insert(
            Digest::of(idx).to_string(),
            (INDEX.to_string(), idx.clone()),
        );
    }
    looped.insert(
        "1".to_string(),
        (INDEX.to_string(), chain.last().unwrap().clone()),
    );
    let (port, _) = registry_with(manifest, looped, blobs, layer, Blob::Honest);
    let k = Kiln::new();
    let (ok, err) = pull(&k, port, "60");
    assert!(!ok);
    assert!(err.contains("more than 32 deep"), "{err}");
    nothing_recorded(&k);
}

#[test]
fn a_malformed_created_time_is_an_error_naming_the_file() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layer = layer_tar();
    fs::write(d.join("layer.tar"), &layer).unwrap();
    for created in [
        "2024-02-31T99:99:99Z",
        "2024-01-01T00:00:00\u{e9}\u{e9}",
        "\u{e9}",
    ] {
        let mut config: serde_json::Value =
            serde_json::from_slice(&config_for(&[Digest::of(&layer)])).unwrap();
        config["created"] = serde_json::json!(created);
        fs::write(d.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": ["t:1"], "Layers": ["layer.tar"]}]);
        fs::write(
            d.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let o = k.run(&["load", "-i", d.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "an error, not a panic");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("config.json") && err.contains("created"),
            "{err}"
        );
        nothing_recorded(&k);
    }
}
