//! Reproducible and shareable: SOURCE_DATE_EPOCH across context copies, skopeo and umoci reading kiln's images, concurrent builds, command-line flags, a store on overlayfs.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn source_date_epoch_builds_are_reproducible_across_context_copies() {
    let Some((k, ctx)) = setup() else { return };
    fs::create_dir_all(ctx.join("d")).unwrap();
    fs::write(ctx.join("d/one"), "1\n").unwrap();
    fs::write(ctx.join("two"), "2\n").unwrap();
    dockerfile(
        &ctx,
        "FROM base\nCOPY . /src\nRUN ls -ln /src > /listing\nWORKDIR /w\nCOPY <<EOF /inline\nx\nEOF\n",
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
