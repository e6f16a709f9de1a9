//! Interop with real OCI tools: kiln's archives read by skopeo, umoci and podman; theirs loaded
//! by kiln. Needs root (ownership, whiteouts) and the Debian packages skopeo, umoci, podman.

use crate::common::*;
use std::fs;
use std::process::Command;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// kiln import -> images -> save -> skopeo inspect, umoci unpack: the tree comes back unchanged.
#[test]
fn import_then_save_is_read_by_skopeo_and_umoci() {
    let Some((k, rootfs, id)) = busybox_image("busybox:1.0", &["skopeo", "umoci"]) else {
        return;
    };
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "import prints the image ID: {id}"
    );

    let images = k.ok(&["images"]);
    let mut lines = images.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(header, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("busybox ") && row.contains(" 1.0 ") && row.contains(&id[7..19]),
        "{images}"
    );
    assert!(row.contains("MB"), "size in Docker's units: {row}");

    let inspect = json(&k.ok(&["inspect", "busybox:1.0"]));
    let diff_ids = inspect[0]["RootFS"]["Layers"].clone();
    assert_eq!(inspect[0]["Id"], id);
    assert_eq!(inspect[0]["RepoTags"][0], "busybox:1.0");

    for compression in ["gzip", "zstd"] {
        let archive = k.dir.path().join(format!("busybox-{compression}.tar"));
        k.ok(&[
            "save",
            "--compression",
            compression,
            "-o",
            archive.to_str().unwrap(),
            "busybox:1.0",
        ]);
        let oci = format!("oci-archive:{}", archive.display());
        let info = json(&sh(Command::new("skopeo").args(["inspect", &oci])));
        assert_eq!(info["Architecture"], "amd64");
        assert_eq!(info["Os"], "linux");
        assert_eq!(info["Layers"].as_array().unwrap().len(), 1);
        let config = json(&sh(
            Command::new("skopeo").args(["inspect", "--config", &oci])
        ));
        assert_eq!(
            config["rootfs"]["diff_ids"], diff_ids,
            "skopeo sees kiln's DiffIDs ({compression})"
        );
    }

    // umoci (Debian 12's 0.4.7 reads gzip layers, kiln save's default) unpacks the same tree.
    let layout = k.dir.path().join("layout");
    fs::create_dir(&layout).unwrap();
    sh(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-xf")
        .arg(k.dir.path().join("busybox-gzip.tar")));
    let bundle = k.dir.path().join("bundle");
    sh(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:1.0", layout.display()))
        .arg(&bundle));
    assert_eq!(
        describe(&bundle.join("rootfs")),
        describe(&rootfs),
        "umoci's unpacked tree differs from the input"
    );
}

/// skopeo's docker-archive and OCI layout, and podman's save, load into kiln with the same DiffIDs;
/// kiln's docker-archive loads into podman.
#[test]
fn archives_round_trip_through_skopeo_and_podman() {
    let Some((k, _, _)) = busybox_image("busybox", &["skopeo", "podman"]) else {
        return;
    };
    let diff_ids = json(&k.ok(&["inspect", "busybox"]))[0]["RootFS"]["Layers"].clone();
    let oci = k.dir.path().join("busybox.tar");
    k.ok(&["save", "-o", oci.to_str().unwrap(), "busybox"]);

    // skopeo -> docker-archive -> kiln load (a fresh store).
    let da = k.dir.path().join("docker-archive.tar");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci-archive:{}", oci.display()),
        &format!("docker-archive:{}:busybox:copied", da.display()),
    ]));
    let k2 = Kiln::new();
    assert_eq!(
        k2.ok(&["load", "-i", da.to_str().unwrap()]).trim(),
        "Loaded image: busybox:copied"
    );
    assert_eq!(
        json(&k2.ok(&["inspect", "busybox:copied"]))[0]["RootFS"]["Layers"],
        diff_ids
    );

    // skopeo -> OCI layout directory -> kiln load -i DIR.
    let dir = k.dir.path().join("oci-dir");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci-archive:{}", oci.display()),
        &format!("oci:{}:other/name:v2", dir.display()),
    ]));
    let loaded = k2.ok(&["load", "-i", dir.to_str().unwrap()]);
    assert!(loaded.contains("other/name:v2"), "{loaded}");
    assert_eq!(
        json(&k2.ok(&["inspect", "other/name:v2"]))[0]["RootFS"]["Layers"],
        diff_ids
    );

    // kiln save --format docker -> podman load, and podman save -> kiln load.
    let dk = k.dir.path().join("kiln-docker.tar");
    k.ok(&[
        "save",
        "--format",
        "docker",
        "-o",
        dk.to_str().unwrap(),
        "busybox",
    ]);
    let proot = k.dir.path().join("podman");
    let podman = || podman(&proot);
    let out = sh(podman().arg("load").arg("-i").arg(&dk));
    assert!(out.contains("busybox:latest"), "{out}");
    let pinspect = json(&sh(podman().args(["image", "inspect", "busybox:latest"])));
    assert_eq!(
        pinspect[0]["RootFS"]["Layers"], diff_ids,
        "podman sees kiln's DiffIDs"
    );
    let ps = k.dir.path().join("podman-save.tar");
    sh(podman()
        .args(["save", "--format", "docker-archive", "-o"])
        .arg(&ps)
        .arg("busybox:latest"));
    let k3 = Kiln::new();
    let loaded = k3.ok(&["load", "-i", ps.to_str().unwrap()]);
    // podman names short names under localhost/, and its archive says so.
    assert_eq!(loaded.trim(), "Loaded image: localhost/busybox:latest");
    assert_eq!(
        json(&k3.ok(&["inspect", "localhost/busybox"]))[0]["RootFS"]["Layers"],
        diff_ids
    );
    assert_eq!(k3.ok(&["system", "check"]), "");
}

/// Saving twice gives the same bytes (the archive is deterministic), via stdout too.
#[test]
fn save_is_deterministic() {
    let Some((k, _, _)) = busybox_image("busybox", &[]) else {
        return;
    };
    let a = k.dir.path().join("a.tar");
    k.ok(&["save", "-o", a.to_str().unwrap(), "busybox"]);
    let b = k.cmd().args(["save", "busybox"]).output().unwrap();
    assert!(b.status.success());
    assert_eq!(fs::read(&a).unwrap(), b.stdout);
}

/// The runtime Kubernetes nodes use: a `kiln save` archive imported into containerd (its own
/// config, root, state and socket, started here) with `ctr image import`, and run by
/// `ctr run --rm`.
#[test]
fn saved_images_run_under_containerd() {
    let Some((k, _, _)) = busybox_image("hello:1.0", &["containerd", "ctr", "runc"]) else {
        return;
    };
    let ctx = k.dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM hello:1.0\nRUN echo built by kiln > /message\nCMD [\"cat\", \"/message\"]\n",
    )
    .unwrap();
    k.ok(&["build", "-q", "-t", "hello:2.0", ctx.to_str().unwrap()]);
    let archive = k.dir.path().join("hello.tar");
    // zstd:chunked layers, as kiln stores them: containerd reads them as zstd.
    k.ok(&[
        "save",
        "--compression",
        "zstd",
        "-o",
        archive.to_str().unwrap(),
        "hello:2.0",
    ]);

    let d = k.dir.path().join("containerd");
    std::fs::create_dir(&d).unwrap();
    let sock = d.join("sock");
    std::fs::write(
        d.join("config.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/sock\"\n[ttrpc]\n  address = \"{0}/sock.ttrpc\"\n",
            d.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("log")).unwrap();
    /// Ends containerd however the test ends.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Reap(
        Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let ctr = |args: &[&str]| {
        // Not "kiln": containerd names its cgroups after the namespace, and kiln's are /kiln.
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&sock).args(["-n", "kiln-test"]).args(args);
        c
    };
    let t = std::time::Instant::now();
    while ctr(&["version"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "containerd never answered: {}",
            std::fs::read_to_string(d.join("log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The archive names the image by its tag only: --base-name gives it a repository.
    sh(ctr(&["image", "import", "--base-name", "docker.io/library/hello"]).arg(&archive));
    let images = sh(&mut ctr(&["image", "ls", "-q"]));
    assert!(images.contains("docker.io/library/hello:2.0"), "{images}");
    let out = sh(&mut ctr(&[
        "run",
        "--rm",
        "docker.io/library/hello:2.0",
        "kiln-test-1",
    ]));
    assert_eq!(out, "built by kiln\n");
}
