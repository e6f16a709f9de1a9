//! Sources and their edges: --explain, ADD of URLs and archives, hard links, ssh agents, destination symlinks, bad archives, a full disk.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn explain_names_the_inputs_and_what_changed() {
    let Some((k, ctx)) = setup() else { return };
    base2(&k);
    fs::write(ctx.join("a.txt"), "one\n").unwrap();
    fs::write(ctx.join("b.txt"), "bee\n").unwrap();
    dockerfile(
        &ctx,
        "ARG B=base\nFROM $B\nARG V=1\nCOPY *.txt /d/\nRUN echo $V > /v\n",
    );
    let (_, out) = build(&k, &ctx, &["--explain"]);
    let step = |out: &str, n: usize| -> String {
        out.lines()
            .filter(|l| l.starts_with(&format!("#{n} ")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let copy = step(&out, 2);
    assert!(copy.contains("#2 key "), "{copy}");
    assert!(copy.contains("copy: [\"*.txt\"] -> /d/"), "{copy}");
    assert!(copy.contains("base: image base (sha256:"), "{copy}");
    assert!(
        copy.contains("    a.txt ") && copy.contains("    b.txt "),
        "{copy}"
    );
    assert!(copy.contains("no earlier build"), "{copy}");
    assert!(step(&out, 3).contains("env: ") && step(&out, 3).contains(" V=1"));

    // Cached: the key and inputs, no comparison.
    let (_, out) = build(&k, &ctx, &["--explain"]);
    assert!(
        step(&out, 2).contains("CACHED") && !out.contains("nearest earlier"),
        "{out}"
    );

    // A changed file, an added file, a changed build arg.
    fs::write(ctx.join("a.txt"), "uno\n").unwrap();
    fs::write(ctx.join("c.txt"), "sea\n").unwrap();
    let (_, out) = build(&k, &ctx, &["--explain", "--build-arg", "V=2"]);
    let copy = step(&out, 2);
    assert!(copy.contains("nearest earlier: key "), "{copy}");
    assert!(copy.contains("    changed a.txt: "), "{copy}");
    assert!(copy.contains("    added c.txt"), "{copy}");
    assert!(!copy.contains("b.txt:"), "{copy}");
    let run = step(&out, 3);
    assert!(run.contains("    env V: \"1\" -> \"2\""), "{run}");
    assert!(run.contains("    parent: "), "{run}");

    // A removed file.
    fs::remove_file(ctx.join("c.txt")).unwrap();
    let (_, out) = build(&k, &ctx, &["--explain", "--build-arg", "V=2"]);
    assert!(step(&out, 2).contains("    removed c.txt"), "{out}");

    // The base changed: named on both sides, in the explanation and the one-line reason.
    let (_, out) = build(
        &k,
        &ctx,
        &["--explain", "--build-arg", "V=2", "--build-arg", "B=base2"],
    );
    let copy = step(&out, 2);
    assert!(
        copy.contains("    base: image base (sha256:") && copy.contains("-> image base2 (sha256:"),
        "{copy}"
    );
    assert!(
        copy.contains("cache miss: the base changed: image base (sha256:"),
        "{copy}"
    );
    // An instruction change shows the old and the new canonical line.
    dockerfile(
        &ctx,
        "ARG B=base\nFROM $B\nARG V=1\nCOPY *.txt /e/\nRUN echo $V > /v\n",
    );
    let (_, out) = build(&k, &ctx, &["--explain", "--build-arg", "B=base2"]);
    let copy = step(&out, 2);
    assert!(
        copy.contains("    - copy: [\"*.txt\"] -> /d/")
            && copy.contains("    + copy: [\"*.txt\"] -> /e/"),
        "{copy}"
    );
}

#[test]
pub(super) fn add_url_downloads_checks_and_revalidates() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let Some((k, ctx)) = setup() else { return };
    // What the server serves: (body, etag); and every request it saw (path, If-None-Match).
    let content = Arc::new(Mutex::new((b"tool v1\n".to_vec(), "\"v1\"".to_string())));
    type Seen = Vec<(String, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (c2, s2) = (content.clone(), seen.clone());
    // A gzipped tar with one file, for --unpack.
    let tgz = {
        let src = k.dir.path().join("tgz");
        fs::create_dir_all(src.join("pkg")).unwrap();
        fs::write(src.join("pkg/inside.txt"), "unpacked\n").unwrap();
        let out = k.dir.path().join("a.tar.gz");
        tar_gz(&src, &out);
        fs::read(&out).unwrap()
    };
    let port = serve(Arc::new(
        move |_m: &str, path: &str, h: &HashMap<String, String>| {
            s2.lock()
                .unwrap()
                .push((path.to_string(), h.get("if-none-match").cloned()));
            let (body, etag) = c2.lock().unwrap().clone();
            let lm = (
                "Last-Modified".to_string(),
                "Sun, 06 Nov 1994 08:49:37 GMT".to_string(),
            );
            match path {
                "/tool.txt" if h.get("if-none-match") == Some(&etag) => {
                    (304, vec![("ETag".into(), etag)], vec![])
                }
                "/tool.txt" => (200, vec![("ETag".into(), etag), lm], body),
                "/a.tar.gz" => (200, vec![], tgz.clone()),
                "/dl?id=3" => (
                    200,
                    vec![(
                        "Content-Disposition".into(),
                        "attachment; filename=\"report.txt\"".into(),
                    )],
                    b"report\n".to_vec(),
                ),
                _ => (404, vec![], b"not found".to_vec()),
            }
        },
    ));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    dockerfile(
        &ctx,
        &format!(
            "FROM base\nADD {} /opt/\nADD {} /d/\nRUN stat -c '%a %Y' /opt/tool.txt > /st\n\
             ADD {} /kept/\nADD --unpack=true {} /u/\n",
            url("/tool.txt"),
            url("/dl?id=3"),
            url("/a.tar.gz"),
            url("/a.tar.gz")
        ),
    );
    build(&k, &ctx, &["-t", "u1"]);
    let v = image_view(&k, "u1");
    assert_eq!(read(&v, "/opt/tool.txt"), "tool v1\n");
    assert_eq!(
        read(&v, "/st").trim(),
        "600 784111777",
        "mode 0600, mtime from Last-Modified"
    );
    assert_eq!(read(&v, "/d/report.txt"), "report\n");
    assert!(
        meta(&v, "/kept/a.tar.gz").is_file(),
        "a download is not unpacked by default"
    );
    assert_eq!(read(&v, "/u/pkg/inside.txt"), "unpacked\n");

    // A rebuild re-validates with the ETag, gets 304, and hits.
    seen.lock().unwrap().clear();
    let (_, out) = build(&k, &ctx, &[]);
    assert_eq!(counts(&out).1, 0, "{out}");
    assert!(
        seen.lock()
            .unwrap()
            .contains(&("/tool.txt".to_string(), Some("\"v1\"".to_string()))),
        "{:?}",
        seen.lock().unwrap()
    );
    // New content behind the URL: the ADD misses and the image has it.
    *content.lock().unwrap() = (b"tool v2\n".to_vec(), "\"v2\"".to_string());
    let (_, out) = build(&k, &ctx, &["-t", "u2"]);
    assert_eq!(counts(&out).1, 5, "{out}");
    assert!(
        out.contains("cache miss: 1 file changed: tool.txt"),
        "{out}"
    );
    assert_eq!(read(&image_view(&k, "u2"), "/opt/tool.txt"), "tool v2\n");

    // --checksum: a match builds; a mismatch fails naming both digests, and nothing is added.
    let good = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(b"tool v2\n");
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    dockerfile(
        &ctx,
        &format!(
            "FROM base\nADD --checksum=sha256:{good} {} /t.txt\n",
            url("/tool.txt")
        ),
    );
    build(&k, &ctx, &["-t", "u3"]);
    assert_eq!(read(&image_view(&k, "u3"), "/t.txt"), "tool v2\n");
    let bad = "0".repeat(64);
    dockerfile(
        &ctx,
        &format!(
            "FROM base\nADD --checksum=sha256:{bad} {} /t.txt\n",
            url("/tool.txt")
        ),
    );
    let err = String::from_utf8_lossy(&build_raw(&k, &ctx, &[]).stderr).into_owned();
    assert!(
        err.contains("Dockerfile:2")
            && err.contains("checksum mismatch")
            && err.contains(&good)
            && err.contains(&bad),
        "{err}"
    );
    // A 404 names the URL and the status.
    dockerfile(&ctx, &format!("FROM base\nADD {} /x\n", url("/nope")));
    let err = String::from_utf8_lossy(&build_raw(&k, &ctx, &[]).stderr).into_owned();
    assert!(
        err.contains("Dockerfile:2") && err.contains("404") && err.contains("/nope"),
        "{err}"
    );
    // git sources and COPY of a URL fail clearly.
    dockerfile(&ctx, "FROM base\nADD git@git.example:team/app.git /src\n");
    let err = String::from_utf8_lossy(&build_raw(&k, &ctx, &[]).stderr).into_owned();
    assert!(err.contains("git sources are not supported yet"), "{err}");
    dockerfile(&ctx, &format!("FROM base\nCOPY {} /x\n", url("/tool.txt")));
    let err = String::from_utf8_lossy(&build_raw(&k, &ctx, &[]).stderr).into_owned();
    assert!(err.contains("needs ADD"), "{err}");
}

#[test]
pub(super) fn add_of_an_archive_follows_the_images_symlinked_directories() {
    let Some((k, ctx)) = setup() else { return };
    // A tar with lib/x.so (no directory entries), another with lib/ as an entry, and one with a
    // "./" root entry of mode 0700, added to a subdirectory.
    let src = k.dir.path().join("t1");
    fs::create_dir_all(src.join("lib")).unwrap();
    fs::write(src.join("lib/x.so"), "x\n").unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-cf"])
        .arg(ctx.join("nodirs.tar"))
        .args(["--no-recursion", "lib/x.so"])
        .status()
        .unwrap();
    assert!(status.success());
    fs::write(src.join("lib/y.so"), "y\n").unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["-cf"])
        .arg(ctx.join("withdir.tar"))
        .args(["--no-recursion", "lib", "lib/y.so"])
        .status()
        .unwrap();
    assert!(status.success());
    let app = k.dir.path().join("app");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("run.sh"), "echo hi\n").unwrap();
    fs::set_permissions(&app, fs::Permissions::from_mode(0o700)).unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(&app)
        .args(["-cf"])
        .arg(ctx.join("app.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    dockerfile(
        &ctx,
        "FROM base\nRUN mkdir -p /usr/lib && echo keep > /usr/lib/keep && ln -s usr/lib /lib\n\
         ADD nodirs.tar /\nADD withdir.tar /\nADD app.tar /opt/app/\n",
    );
    build(&k, &ctx, &["-t", "merged"]);
    let v = image_view(&k, "merged");
    assert!(
        meta(&v, "/lib").file_type().is_symlink(),
        "/lib is still a symlink"
    );
    assert_eq!(read(&v, "/usr/lib/x.so"), "x\n");
    assert_eq!(read(&v, "/usr/lib/y.so"), "y\n");
    assert_eq!(read(&v, "/usr/lib/keep"), "keep\n");
    assert_eq!(read(&v, "/opt/app/run.sh"), "echo hi\n");
    // Docker's untar skips an archive's "." entry: the target keeps the mode it was made with.
    assert_eq!(meta(&v, "/opt/app").permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        meta(&v, "/").permissions().mode() & 0o7777,
        0o755,
        "the archive's ./ went to the target, not the image root"
    );
}

#[test]
pub(super) fn copy_keeps_hard_links_between_the_files_it_copies() {
    let Some((k, ctx)) = setup() else { return };
    fs::create_dir_all(ctx.join("d")).unwrap();
    fs::write(ctx.join("d/a.bin"), vec![7u8; 100_000]).unwrap();
    fs::hard_link(ctx.join("d/a.bin"), ctx.join("d/b.bin")).unwrap();
    fs::write(ctx.join("d/c.bin"), vec![7u8; 100_000]).unwrap();
    dockerfile(&ctx, "FROM base\nCOPY d /x/\n");
    build(&k, &ctx, &["-t", "hl"]);
    let v = image_view(&k, "hl");
    let (a, b, c) = (
        meta(&v, "/x/a.bin"),
        meta(&v, "/x/b.bin"),
        meta(&v, "/x/c.bin"),
    );
    assert_eq!(a.ino(), b.ino(), "a and b are one file in the image too");
    assert_ne!(a.ino(), c.ino());
    // The layer stores the data once: its uncompressed size is well under three copies.
    let store = k.store();
    let img = kiln::image::resolve(&store, "hl").unwrap().image;
    let top = img.layers.last().unwrap();
    assert!(top.uncompressed_size < 250_000, "{}", top.uncompressed_size);
}

#[test]
pub(super) fn run_ssh_mounts_forward_the_agent_socket() {
    let Some((k, ctx)) = setup() else { return };
    let sock = k.dir.path().join("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    dockerfile(
        &ctx,
        "FROM base\n\
         RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /default\n\
         RUN --mount=type=ssh,id=deploy,target=/tmp/deploy.sock,required test -S /tmp/deploy.sock && echo ok > /deploy\n\
         RUN --mount=type=ssh,id=absent echo \"${SSH_AUTH_SOCK:-unset}\" > /absent\n",
    );
    let spec = |id: &str| format!("{id}={}", sock.display());
    build(
        &k,
        &ctx,
        &[
            "-t",
            "ssh",
            "--ssh",
            &spec("default"),
            "--ssh",
            &spec("deploy"),
        ],
    );
    let v = image_view(&k, "ssh");
    assert_eq!(read(&v, "/default").trim(), "/run/buildkit/ssh_agent.0");
    assert_eq!(read(&v, "/deploy").trim(), "ok");
    assert_eq!(
        read(&v, "/absent").trim(),
        "unset",
        "an absent optional agent mounts nothing"
    );
    for p in ["/run/buildkit", "/tmp/deploy.sock"] {
        assert!(
            v.resolve(p, false).unwrap().is_none(),
            "{p} leaked into the image"
        );
    }
    let env = config(&k, "ssh").config.env.unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK")),
        "{env:?}"
    );
    // Not a socket: refused before any work.
    let err = k.fails(&[
        "build",
        "--ssh",
        "default=/etc/hostname",
        ctx.to_str().unwrap(),
    ]);
    assert!(err.contains("is not a socket"), "{err}");
}

#[test]
pub(super) fn copy_follows_destination_symlinks_inside_the_root_and_keeps_them() {
    let Some((k, ctx)) = setup() else { return };
    fs::write(ctx.join("f"), "content\n").unwrap();
    dockerfile(
        &ctx,
        "FROM base\n\
         RUN mkdir -p /usr/libx /a/b/c /tmp/symlink-target && ln -s usr/libx /libx && ln -s /a/b/c /deep \
         && ln -s /nowhere/deep /dl && ln -s /tmp/symlink-target /symlink && ln -s ../../../../../etc /esc\n\
         COPY f /libx/x\n\
         COPY f /deep/\n\
         COPY f /dl/x\n\
         COPY f /symlink/\n\
         COPY f /esc/escaped\n",
    );
    for snapshotter in ["overlay", "native"] {
        let tag = format!("links-{snapshotter}");
        build(
            &k,
            &ctx,
            &["--no-cache", "--snapshotter", snapshotter, "-t", &tag],
        );
        let v = image_view(&k, &tag);
        // merged-/usr style (a two-component target) and an absolute deep one
        assert_eq!(read(&v, "/usr/libx/x"), "content\n", "{snapshotter}");
        assert_eq!(read(&v, "/a/b/c/f"), "content\n", "{snapshotter}");
        // a dangling link: its target is created, the link stays (BuildKit)
        assert_eq!(read(&v, "/nowhere/deep/x"), "content\n", "{snapshotter}");
        // a symlinked destination directory
        assert_eq!(
            read(&v, "/tmp/symlink-target/f"),
            "content\n",
            "{snapshotter}"
        );
        // a link climbing out resolves inside the root
        assert_eq!(read(&v, "/etc/escaped"), "content\n", "{snapshotter}");
        for (link, target) in [
            ("/libx", "usr/libx"),
            ("/deep", "/a/b/c"),
            ("/dl", "/nowhere/deep"),
            ("/symlink", "/tmp/symlink-target"),
        ] {
            let f = v.resolve(link, false).unwrap().unwrap();
            assert!(
                f.meta.file_type().is_symlink(),
                "{snapshotter}: {link} stays a link"
            );
            assert_eq!(fs::read_link(&f.host).unwrap().to_str().unwrap(), target);
        }
    }
}

#[test]
pub(super) fn a_bad_archive_in_add_says_why_and_escapes_raw_bytes() {
    let Some((k, ctx)) = setup() else { return };
    // An xattr in a namespace no filesystem takes: the error names the entry, the xattr and
    // the reason.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.bogus.name", &b"1"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("xfile").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    fs::write(ctx.join("x.tar"), b.into_inner().unwrap()).unwrap();
    dockerfile(&ctx, "FROM base\nADD x.tar /\n");
    let o = build_raw(&k, &ctx, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("xfile")
            && err.contains("set xattr bogus.name")
            && err.contains("not supported"),
        "{err}"
    );

    // A header whose numeric field holds raw bytes: printed escaped.
    let mut raw = vec![0u8; 1024];
    raw[..5].copy_from_slice(b"entry");
    raw[100..108].copy_from_slice(b"0000644\0");
    raw[124..136].copy_from_slice(b"\x01\x02\x1b[31m\xff\xfe\x07zz"); // size
    raw[156] = b'0';
    raw[148..156].copy_from_slice(b"        ");
    let sum: u32 = raw[..512].iter().map(|b| u32::from(*b)).sum();
    raw[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    fs::write(ctx.join("x.tar"), &raw).unwrap();
    let o = build_raw(&k, &ctx, &["--no-cache"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.chars()
            .any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\u{1}'),
        "raw bytes in {err:?}"
    );
}

/// Unmounts a test's tmpfs when the test ends, also when it fails.
pub(super) struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
pub(super) fn a_full_disk_while_writing_a_layer_names_the_step_and_the_space() {
    if !needs(&["mount", "umount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount a tmpfs");
    let _guard = Tmpfs(mnt.clone());
    let k = Kiln {
        dir: tempfile::tempdir_in(&mnt).unwrap(),
    };
    let rootfs = mnt.join("rootfs");
    if !busybox_rootfs(&rootfs) {
        return;
    }
    let tgz = mnt.join("base.tgz");
    tar_gz(&rootfs, &tgz);
    k.ok(&["import", tgz.to_str().unwrap(), "base"]);
    fs::remove_dir_all(&rootfs).unwrap();
    fs::remove_file(&tgz).unwrap();
    let ctx = mnt.join("ctx");
    fs::create_dir(&ctx).unwrap();
    // 22 MB that do not compress: the RUN fits, its layer does not.
    dockerfile(
        &ctx,
        "FROM base\nRUN head -c 22000000 /dev/urandom > /big\n",
    );
    let o = build_raw(&k, &ctx, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Dockerfile:2: RUN head")
            && err.contains("no space left on device writing its layer to")
            && err.contains(&k.root().join("ingest").display().to_string())
            && err.contains("22MB of files"),
        "{err}"
    );
    let check = k.run(&["system", "check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
