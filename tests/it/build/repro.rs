//! Reproducible and shareable: SOURCE_DATE_EPOCH across context copies, skopeo and umoci reading kiln's images, concurrent builds, command-line flags, a store on overlayfs.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn source_date_epoch_builds_are_reproducible_across_context_copies() {
    let Some((k, ctx)) = setup() else { return };
    fs::create_dir_all(ctx.join("d")).unwrap();
    fs::write(ctx.join("d/one"), "1\n").unwrap();
    fs::write(ctx.join("two"), "2\n").unwrap();
    // The RUN lists modes, owners, sizes and names, not times: a step's output with the
    // checkout's mtimes (to the minute, in `ls -l`) is not the same from a later copy.
    dockerfile(
        &ctx,
        "FROM base\nCOPY . /src\nRUN ls -Rn /src | awk '{print $1, $3, $4, $5, $NF}' > /listing\nWORKDIR /w\nCOPY <<EOF /inline\nx\nEOF\n",
    );
    let sde = "1700000000";
    // SOURCE_DATE_EPOCH from the environment...
    let run = |c: &Path, tag: &str| {
        let o = k
            .cmd()
            .env("SOURCE_DATE_EPOCH", sde)
            .args(["build", "-q", "--no-cache", "-t", tag, c.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o).trim().to_string()
    };
    let x = run(&ctx, "r1");
    // ...and from a copy of the context made later (every mtime differs).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let copy = k.dir.path().join("ctx-copy");
    let st = Command::new("cp")
        .arg("-r")
        .arg(&ctx)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let y = run(&copy, "r2");
    assert_eq!(x, y, "same inputs, same image ID");
    let store = k.store();
    let m1 = kiln::image::resolve(&store, "r1")
        .unwrap()
        .image
        .manifest
        .digest;
    let m2 = kiln::image::resolve(&store, "r2")
        .unwrap()
        .image
        .manifest
        .digest;
    assert_eq!(m1, m2, "same manifest digest");
    assert_eq!(
        config(&k, "r1").created.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
    // ...and as a build arg, as BuildKit takes it.
    let (z, _) = build(
        &k,
        &copy,
        &[
            "--no-cache",
            "--build-arg",
            &format!("SOURCE_DATE_EPOCH={sde}"),
        ],
    );
    assert_eq!(z, x);
}

#[test]
pub(super) fn built_images_read_the_same_in_skopeo_and_umoci() {
    let Some((k, ctx)) = setup() else { return };
    if !needs(&["skopeo", "umoci"]) {
        return;
    }
    fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    dockerfile(&ctx, "FROM base\nCOPY hello.txt /hello.txt\nRUN echo ran > /ran && rm /etc/motd\nENV A=1\nCMD [\"cat\", \"/hello.txt\"]\n");
    // umoci 0.4 reads gzip layers only.
    let (id, _) = build(&k, &ctx, &["-t", "interop", "--compression", "gzip"]);
    let archive = k.dir.path().join("interop.tar");
    k.ok(&["save", "-o", archive.to_str().unwrap(), "interop"]);
    let out = sh(Command::new("skopeo")
        .arg("inspect")
        .arg("--config")
        .arg(format!("oci-archive:{}", archive.display())));
    let cfg: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        cfg["config"]["Cmd"],
        serde_json::json!(["cat", "/hello.txt"])
    );
    assert!(cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("A=1")));
    assert_eq!(
        format!("sha256:{}", kiln::store::Digest::of(out.as_bytes()).hex()).len(),
        id.len()
    );
    let layout = k.dir.path().join("layout");
    fs::create_dir_all(&layout).unwrap();
    sh(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let bundle = k.dir.path().join("bundle");
    sh(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(fs::read_to_string(rootfs.join("ran")).unwrap(), "ran\n");
    assert!(
        !rootfs.join("etc/motd").exists(),
        "the whiteout applies in umoci"
    );
    assert!(rootfs.join("etc/passwd").exists());
    // kiln's own view agrees file for file.
    let v = image_view(&k, "interop");
    for p in ["/hello.txt", "/ran", "/etc/passwd", "/etc/group"] {
        assert_eq!(
            v.read(p).unwrap().unwrap(),
            fs::read(rootfs.join(&p[1..])).unwrap(),
            "{p}"
        );
    }
}

#[test]
pub(super) fn two_builds_at_once_on_one_store_both_succeed() {
    let Some((k, ctx)) = setup() else { return };
    fs::write(ctx.join("f"), "f\n").unwrap();
    dockerfile(
        &ctx,
        "FROM base\nCOPY f /f\nRUN sleep 0.3 && echo done > /done\n",
    );
    let spawn = |tag: &str| {
        k.cmd()
            .args(["build", "-q", "-t", tag, ctx.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("c1");
    let b = spawn("c2");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(read(&image_view(&k, "c1"), "/done"), "done\n");
    assert_eq!(read(&image_view(&k, "c2"), "/done"), "done\n");
    let out = k.ok(&["system", "check"]);
    assert!(out.is_empty(), "{out}");
}

#[test]
pub(super) fn command_line_flags_tags_labels_file_and_quiet() {
    let Some((k, ctx)) = setup() else { return };
    fs::create_dir_all(ctx.join("docker")).unwrap();
    let file = ctx.join("docker/app.Dockerfile");
    fs::write(
        &file,
        "FROM base\nLABEL from.file=yes\nRUN echo $GREETING > /greeting\nARG GREETING=hi\nRUN echo $GREETING > /greeting2\n",
    )
    .unwrap();
    let (file, ctxs) = (file.to_str().unwrap(), ctx.to_str().unwrap());
    let out = k.ok(&[
        "build",
        "-q",
        "-t",
        "one:1",
        "-t",
        "two",
        "--label",
        "org.example.team=build",
        "--label",
        "from.file=overridden",
        "-f",
        file,
        "--build-arg",
        "GREETING=bonjour",
        ctxs,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "-q prints only the image ID: {out:?}");
    assert!(lines[0].starts_with("sha256:") && lines[0].len() == 71);
    let images = k.ok(&["images"]);
    assert!(images.contains("one") && images.contains("two"), "{images}");
    let c = config(&k, "two:latest");
    let labels = c.config.labels.unwrap();
    assert_eq!(labels["org.example.team"], "build");
    assert_eq!(labels["from.file"], "overridden", "--label wins over LABEL");
    let v = image_view(&k, "one:1");
    assert_eq!(
        read(&v, "/greeting"),
        "\n",
        "an ARG is not visible before its declaration"
    );
    assert_eq!(read(&v, "/greeting2"), "bonjour\n");

    // --progress quiet prints no progress; bad flags fail before any work.
    let o = k.run(&[
        "build",
        "--progress",
        "quiet",
        "-t",
        "three",
        "-f",
        file,
        ctxs,
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("#1"), "{err}");
    let err = k.fails(&["build", "-t", "Bad:Tag:x", ctxs]);
    assert!(err.contains("Bad:Tag:x"), "{err}");
    let err = k.fails(&["build", "--label", "novalue", ctxs]);
    assert!(err.contains("--label"), "{err}");
}

/// Unmounts on drop, so a failing test leaves no mount behind.
pub(super) struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// kiln inside a container: the store on overlayfs, where overlay upper dirs and whiteout
/// devices are refused. The native snapshotter is chosen, whiteouts stay in OCI form, and the
/// image is right.
#[test]
pub(super) fn a_store_on_overlayfs_builds_with_the_native_snapshotter() {
    let Some((k, ctx)) = setup() else { return };
    let d = k.dir.path().join("ov");
    for s in ["l", "u", "w", "m"] {
        fs::create_dir_all(d.join(s)).unwrap();
    }
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            d.join("l").display(),
            d.join("u").display(),
            d.join("w").display()
        ))
        .arg(d.join("m"))
        .status()
        .unwrap();
    assert!(st.success());
    let _m = Mount(d.join("m"));
    let root = d.join("m/store");
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--root")
            .arg(&root)
            .args(args)
            .env_remove("KILN_SNAPSHOTTER")
            .output()
            .unwrap()
    };
    let archive = k.dir.path().join("base.tar");
    k.ok(&["save", "-o", archive.to_str().unwrap(), "base"]);
    assert!(kiln(&["load", "-i", archive.to_str().unwrap()])
        .status
        .success());
    dockerfile(
        &ctx,
        "FROM base\nRUN echo hi > /x && rm /etc/group && rm -rf /tmp && mkdir /tmp && touch /tmp/new\nRUN test ! -e /etc/group && cat /x > /y\n",
    );
    let o = kiln(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "ov",
        ctx.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("native snapshotter"), "{err}");
    let store = kiln::store::Store::open(&root).unwrap();
    let img = kiln::image::resolve(&store, "ov").unwrap().image;
    let snaps = kiln::snapshotter::unpack_image(&store, &img).unwrap();
    let v = View::new(snaps.iter().rev().map(|s| store.snapshot_fs(s)).collect());
    assert_eq!(read(&v, "/y"), "hi\n");
    assert!(v.resolve("/etc/group", false).unwrap().is_none());
    assert!(v.resolve("/etc/passwd", false).unwrap().is_some());
    let tmp = v.resolve("/tmp", true).unwrap().unwrap();
    let names: Vec<String> = v
        .read_dir(&tmp)
        .unwrap()
        .into_keys()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["new"]);
    assert!(store.verify().unwrap().is_empty());
}

/// The context's files, copied to `dir` with `cp -r` (every mtime is the copy's time), then
/// given `touch -d` time `when` (None: left as copied).
fn checkout(src: &Path, dir: &Path, when: Option<&str>) {
    sh(Command::new("cp").arg("-r").arg(src).arg(dir));
    if let Some(w) = when {
        sh(Command::new("find")
            .arg(dir)
            .args(["-exec", "touch", "-h", "-d", w, "{}", "+"]));
    }
}

/// Every entry's mtime in the image's layers above its first (the base's).
fn build_layer_mtimes(k: &Kiln, name: &str) -> Vec<(String, u64)> {
    let store = k.store();
    let img = kiln::image::resolve(&store, name).unwrap().image;
    let mut out = Vec::new();
    for l in &img.layers[1..] {
        let plain = kiln::store::codec::decompress(store.open_blob(&l.digest).unwrap()).unwrap();
        let mut a = tar::Archive::new(plain);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            out.push((
                e.path().unwrap().display().to_string(),
                e.header().mtime().unwrap(),
            ));
        }
    }
    out
}

#[test]
pub(super) fn timestamp_mode_gives_one_digest_from_any_checkout_and_keeps_the_cache() {
    let Some((k, ctx)) = setup() else { return };
    if !needs(&["docker-registry"]) {
        return;
    }
    fs::create_dir_all(ctx.join("d/e")).unwrap();
    fs::write(ctx.join("d/e/one"), "1\n").unwrap();
    fs::write(ctx.join("two"), "2\n").unwrap();
    std::os::unix::fs::symlink("two", ctx.join("link")).unwrap();
    dockerfile(
        &ctx,
        "FROM base\nCOPY . /src\nRUN echo ran > /ran && mkdir -p /made && rm /etc/motd\nWORKDIR /w\n",
    );
    let w = k.dir.path();
    checkout(&ctx, &w.join("fresh"), None);
    checkout(&ctx, &w.join("old"), Some("2001-02-03 04:05:06"));
    checkout(&ctx, &w.join("now"), Some("now"));
    let ts = "1600000000";
    let with = |dir: &str, args: &[&str]| {
        let mut a = vec!["--no-cache"];
        a.extend_from_slice(args);
        build(&k, &w.join(dir), &a).0
    };
    // The mode: one digest whatever the checkout's times.
    let set: Vec<String> = ["fresh", "old", "now"]
        .iter()
        .map(|d| with(d, &["--timestamp", ts, "-t", &format!("ts-{d}")]))
        .collect();
    assert_eq!(
        set[0], set[1],
        "--timestamp: a checkout from 2001 gives the same image"
    );
    assert_eq!(
        set[0], set[2],
        "--timestamp: a checkout touched now gives the same image"
    );
    let times = build_layer_mtimes(&k, "ts-old");
    assert!(times.iter().any(|(p, _)| p == "ran"), "{times:?}");
    assert!(
        times.iter().all(|(_, m)| *m == 1_600_000_000),
        "every entry of the build's layers has the timestamp: {times:?}"
    );
    let cfg = config(&k, "ts-old");
    assert_eq!(cfg.created.as_deref(), Some("2020-09-13T12:26:40Z"));
    let hist: Vec<&str> = cfg
        .history
        .iter()
        .skip(1)
        .filter_map(|h| h.created.as_deref())
        .collect();
    assert!(
        !hist.is_empty() && hist.iter().all(|c| *c == "2020-09-13T12:26:40Z"),
        "{hist:?}"
    );
    // SOURCE_DATE_EPOCH without the mode clamps: files newer than the epoch agree, files older
    // keep their own times (the documented behaviour).
    let sde = |dir: &str| with(dir, &["--build-arg", "SOURCE_DATE_EPOCH=1700000000"]);
    let (fresh, now, old) = (sde("fresh"), sde("now"), sde("old"));
    assert_eq!(
        fresh, now,
        "clamped: both checkouts are newer than the epoch"
    );
    assert_ne!(
        fresh, old,
        "clamped: a checkout older than the epoch keeps its times"
    );
    // Without either, the checkout's times are the image's.
    assert_ne!(with("fresh", &[]), with("old", &[]));

    // The cache serves every mode: a default build, then each mode from the cache, runs no step
    // and gives the digest of a build that ran every step. (The cached COPY layer has the times
    // of the checkout that first built it, "fresh": keys cover contents, not times.)
    let (_, progress) = build(&k, &w.join("now"), &[]);
    assert_eq!(counts(&progress), (3, 0), "{progress}");
    let (id, progress) = build(&k, &w.join("now"), &["--timestamp", ts, "-t", "ts-cached"]);
    assert_eq!(counts(&progress), (3, 0), "{progress}");
    assert_eq!(id, set[0], "--timestamp from the cache");
    let (id, progress) = build(
        &k,
        &w.join("now"),
        &["--build-arg", "SOURCE_DATE_EPOCH=1700000000"],
    );
    assert_eq!(counts(&progress), (3, 0), "{progress}");
    assert_eq!(id, fresh, "SOURCE_DATE_EPOCH from the cache");
    // ...and the variant made once is found again.
    assert_eq!(
        build(&k, &w.join("now"), &["--timestamp", ts]).0,
        set[0],
        "the retimed layers are reused"
    );

    // Push and pull keep the digest.
    let reg = crate::registry::Registry::start(None);
    let name = format!("{}/repro/app:ts", reg.host());
    k.ok(&["tag", "ts-cached", &name]);
    let manifest = |k: &Kiln| {
        kiln::image::resolve(&k.store(), &name)
            .unwrap()
            .image
            .manifest
            .digest
    };
    let pushed = manifest(&k);
    k.ok(&["push", &name]);
    let (k2, _, _) = busybox_image("base", &[]).unwrap();
    k2.ok(&["pull", &name]);
    assert_eq!(
        manifest(&k2),
        pushed,
        "pull gives the manifest that was pushed"
    );
    let v: serde_json::Value = serde_json::from_str(&k2.ok(&["inspect", &name])).unwrap();
    assert_eq!(v[0]["Id"].as_str().unwrap(), set[0]);
    // Bad values are refused naming the flag.
    let o = build_raw(&k, &w.join("now"), &["--timestamp", "yesterday"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("invalid --timestamp \"yesterday\": it is not a number of seconds"),
        "{err}"
    );
}
