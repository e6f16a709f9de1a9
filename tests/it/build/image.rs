//! Images as BuildKit makes them: every instruction's config and files, rebuilds that redo only what changed, failing and isolated RUN steps, multi-stage builds, both snapshotters.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn every_instruction_sets_the_config_and_files_as_buildkit() {
    let Some((k, ctx)) = setup() else { return };
    fs::create_dir_all(ctx.join("src/sub")).unwrap();
    fs::write(ctx.join("src/a.txt"), "a\n").unwrap();
    fs::write(ctx.join("src/sub/b.txt"), "b\n").unwrap();
    fs::write(ctx.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(ctx.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ctx.join("one.txt"), "one\n").unwrap();
    std::os::unix::fs::symlink("src/a.txt", ctx.join("link.txt")).unwrap();
    // An archive ADD unpacks, in three compressions.
    let arch = k.dir.path().join("arch");
    fs::create_dir_all(arch.join("pkg")).unwrap();
    fs::write(arch.join("pkg/inside.txt"), "from the tarball\n").unwrap();
    for (flags, name) in [
        (&["-czf"][..], "p.tar.gz"),
        (&["-cjf"][..], "p.tar.bz2"),
        (&["-cJf"][..], "p.tar.xz"),
        (&["--zstd", "-cf"][..], "p.tar.zst"),
        (&["-cf"][..], "p.tar"),
    ] {
        let st = Command::new("tar")
            .arg("-C")
            .arg(&arch)
            .args(flags)
            .arg(ctx.join(name))
            .arg("pkg")
            .status()
            .unwrap();
        assert!(st.success());
    }
    dockerfile(
        &ctx,
        r#"FROM base
ARG VERSION=1.0
ENV APP_HOME=/srv/app PATH=/srv/app/bin:$PATH
LABEL org.example.version=$VERSION "description"="a test"
MAINTAINER someone@example.com
RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group && echo 'staff:x:50:app' >> /etc/group
WORKDIR $APP_HOME
COPY src/ ./src/
COPY --chown=app:staff --chmod=640 one.txt /owned/one.txt
COPY --chown=1234 one.txt /numeric
COPY run.sh one.txt link.txt /many/
COPY src/*.txt /wild/
COPY *.nothing /none/
ADD p.tar.gz /gz/
ADD p.tar.bz2 /bz2/
ADD p.tar.xz /xz/
ADD p.tar.zst /zst/
ADD p.tar /plain/
ADD --unpack=false p.tar.gz /kept/
COPY <<EOF /etc/greeting
hello $VERSION
EOF
RUN <<EOF
#!/bin/sh
echo "script ran as $(id -u)" > /script.out
EOF
USER app
WORKDIR /home/app/work
RUN id -u > /home/app/work/uid && id -G > /home/app/work/groups && pwd > /home/app/work/pwd
USER root
SHELL ["/bin/sh", "-ec"]
RUN echo "shell $0" > /shell.out
EXPOSE 80 53/udp
VOLUME /data
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --timeout=5s --retries=2 CMD wget -q -O- localhost || exit 1
ONBUILD RUN echo child
CMD ["serve"]
ENTRYPOINT ["/bin/sh", "-c"]
"#,
    );
    let (_id, progress) = build(&k, &ctx, &["-t", "every"]);
    assert!(!progress.contains("ERROR"), "{progress}");
    let c = config(&k, "every");
    let rc = &c.config;
    let env = rc.env.clone().unwrap();
    assert!(env.contains(&"APP_HOME=/srv/app".to_string()), "{env:?}");
    assert!(
        env.iter()
            .any(|e| e.starts_with("PATH=/srv/app/bin:/usr/local/sbin")),
        "{env:?}"
    );
    let labels = rc.labels.clone().unwrap();
    assert_eq!(labels["org.example.version"], "1.0");
    assert_eq!(labels["description"], "a test");
    assert_eq!(c.author.as_deref(), Some("someone@example.com"));
    assert_eq!(rc.working_dir.as_deref(), Some("/home/app/work"));
    assert_eq!(rc.user.as_deref(), Some("root"));
    // A CMD of the same stage survives a later ENTRYPOINT...
    assert_eq!(rc.entrypoint.clone().unwrap(), vec!["/bin/sh", "-c"]);
    assert_eq!(rc.cmd.clone().unwrap(), vec!["serve"]);
    let ports: Vec<&String> = rc.exposed_ports.as_ref().unwrap().keys().collect();
    assert_eq!(ports, vec!["53/udp", "80/tcp"]);
    assert!(rc.volumes.as_ref().unwrap().contains_key("/data"));
    assert_eq!(rc.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(rc.extra["Shell"], serde_json::json!(["/bin/sh", "-ec"]));
    assert_eq!(rc.extra["OnBuild"], serde_json::json!(["RUN echo child"]));
    let hc = &rc.extra["Healthcheck"];
    assert_eq!(hc["Test"][0], "CMD-SHELL");
    assert_eq!(hc["Interval"], 30_000_000_000u64);
    assert_eq!(hc["Retries"], 2);
    // History: every instruction, metadata ones as empty layers; one layer per changing step.
    let layers = c.history.iter().filter(|h| !h.empty_layer).count();
    assert_eq!(layers, c.rootfs.diff_ids.len());
    // created_by reads as BuildKit writes it.
    let by: Vec<&str> = c
        .history
        .iter()
        .filter_map(|h| h.created_by.as_deref())
        .collect();
    for want in [
        "ARG VERSION=1.0",
        "EXPOSE map[53/udp:{} 80/tcp:{}]",
        "COPY --chown=app:staff --chmod=640 one.txt /owned/one.txt # buildkit",
        "WORKDIR /srv/app",
        "CMD [\"serve\"]",
    ] {
        assert!(by.contains(&want), "{want:?} not in {by:?}");
    }
    assert!(
        by.iter()
            .any(|b| b.starts_with("RUN |1 VERSION=1.0 /bin/sh -c echo")),
        "{by:?}"
    );
    assert!(
        !by.iter().any(|b| b.starts_with("ONBUILD")),
        "BuildKit records no ONBUILD entry"
    );

    let v = image_view(&k, "every");
    assert_eq!(read(&v, "/srv/app/src/a.txt"), "a\n");
    assert_eq!(read(&v, "/srv/app/src/sub/b.txt"), "b\n");
    let m = meta(&v, "/owned/one.txt");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 50, 0o640));
    let m = meta(&v, "/numeric");
    assert_eq!((m.uid(), m.gid()), (1234, 1234));
    let m = meta(&v, "/srv/app/src/a.txt");
    assert_eq!((m.uid(), m.gid()), (0, 0), "context files become root's");
    assert_eq!(meta(&v, "/many/run.sh").mode() & 0o777, 0o755);
    assert_eq!(read(&v, "/many/one.txt"), "one\n");
    // A symlinked source is followed, as BuildKit does.
    assert!(meta(&v, "/many/link.txt").is_file());
    assert_eq!(read(&v, "/many/link.txt"), "a\n");
    assert_eq!(read(&v, "/wild/a.txt"), "a\n");
    assert!(
        v.resolve("/wild/sub", false).unwrap().is_none(),
        "* does not cross /"
    );
    for d in ["gz", "bz2", "xz", "zst", "plain"] {
        assert_eq!(
            read(&v, &format!("/{d}/pkg/inside.txt")),
            "from the tarball\n"
        );
    }
    assert!(
        meta(&v, "/kept/p.tar.gz").is_file(),
        "--unpack=false keeps the archive"
    );
    assert_eq!(read(&v, "/etc/greeting"), "hello 1.0\n");
    assert_eq!(read(&v, "/script.out"), "script ran as 0\n");
    assert_eq!(read(&v, "/home/app/work/uid"), "1000\n");
    assert_eq!(read(&v, "/home/app/work/groups"), "1000 50\n");
    assert_eq!(read(&v, "/home/app/work/pwd"), "/home/app/work\n");
    let m = meta(&v, "/home/app/work");
    assert_eq!(
        (m.uid(), m.gid()),
        (1000, 1000),
        "WORKDIR is created as the USER"
    );
    assert_eq!(read(&v, "/shell.out"), "shell /bin/sh\n");
    // ...but an inherited one is reset by ENTRYPOINT, as BuildKit does.
    dockerfile(&ctx, "FROM every\nENTRYPOINT [\"/bin/echo\"]\n");
    build(&k, &ctx, &["-t", "child"]);
    let child = config(&k, "child");
    assert_eq!(child.config.cmd, None);
    assert_eq!(
        child.config.extra.get("OnBuild"),
        None,
        "ONBUILD triggers are not inherited"
    );
    assert!(read(&image_view(&k, "child"), "/etc/passwd").contains("app:x:1000"));

    // The files kiln binds into RUN steps never reach a layer; the runtime's mount points for
    // /proc, /sys and /dev stay as empty directories, as under BuildKit 0.13 (runc makes them).
    for p in ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"] {
        assert!(
            v.resolve(p, false).unwrap().is_none(),
            "{p} leaked into the image"
        );
    }
    for p in ["/proc", "/sys", "/dev"] {
        let f = v.resolve(p, false).unwrap().expect(p);
        assert!(f.is_dir() && v.read_dir(&f).unwrap().is_empty(), "{p}");
    }
}

#[test]
pub(super) fn rebuilds_redo_only_what_changed() {
    let Some((k, ctx)) = setup() else { return };
    fs::create_dir_all(ctx.join("app")).unwrap();
    fs::write(ctx.join("app/main.txt"), "v1\n").unwrap();
    fs::write(ctx.join("app/other.txt"), "other\n").unwrap();
    fs::write(ctx.join("config.txt"), "c1\n").unwrap();
    fs::write(ctx.join("unused.txt"), "u\n").unwrap();
    fs::write(ctx.join("ignored.log"), "l\n").unwrap();
    fs::write(ctx.join(".dockerignore"), "*.log\n").unwrap();
    dockerfile(
        &ctx,
        "FROM base\nCOPY config.txt /cfg/\nRUN echo step > /step\nCOPY app /app\nARG MODE=a\nRUN echo $MODE > /mode\nRUN cat /app/main.txt > /copy\n",
    );
    let (id1, p) = build(&k, &ctx, &["-t", "cache"]);
    assert_eq!(counts(&p), (0, 5), "{p}");

    // No change: every step CACHED, same image ID.
    let (id2, p) = build(&k, &ctx, &["-t", "cache"]);
    assert_eq!(id1, id2);
    assert_eq!(counts(&p), (5, 0), "{p}");

    // A file no COPY selects, and one .dockerignore excludes: nothing re-runs.
    fs::write(ctx.join("unused.txt"), "changed\n").unwrap();
    fs::write(ctx.join("ignored.log"), "changed\n").unwrap();
    let (id3, p) = build(&k, &ctx, &["-t", "cache"]);
    assert_eq!((id3.as_str(), counts(&p)), (id1.as_str(), (5, 0)), "{p}");

    // One selected file: the COPY that selects it and everything after re-run, and the miss
    // names the file.
    fs::write(ctx.join("app/main.txt"), "v2\n").unwrap();
    let (id4, p) = build(&k, &ctx, &["-t", "cache"]);
    assert_ne!(id4, id1);
    assert_eq!(counts(&p), (2, 3), "{p}");
    assert!(
        p.contains("cache miss: 1 file changed: app/main.txt"),
        "{p}"
    );
    assert_eq!(read(&image_view(&k, "cache"), "/copy"), "v2\n");
    // The unchanged file was hard-linked from the previous build's snapshot of this COPY (not
    // copied, and never linked to the context file itself).
    let copy_layer = |id: &str| {
        let store = k.store();
        let img = kiln::image::resolve(&store, id).unwrap().image;
        let snaps = kiln::snapshotter::unpack_image(&store, &img).unwrap();
        store.snapshot_fs(&snaps[3])
    };
    let (before, after) = (copy_layer(&id1), copy_layer(&id4));
    let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
    assert_eq!(
        ino(&before.join("app/other.txt")),
        ino(&after.join("app/other.txt"))
    );
    assert_ne!(
        ino(&before.join("app/main.txt")),
        ino(&after.join("app/main.txt"))
    );
    assert_ne!(
        ino(&after.join("app/other.txt")),
        ino(&ctx.join("app/other.txt"))
    );
    assert_eq!(
        fs::read_to_string(before.join("app/main.txt")).unwrap(),
        "v1\n"
    );

    // Same size, mtime put back: still seen (ctime and the stat cache).
    let before = fs::metadata(ctx.join("app/main.txt")).unwrap();
    fs::write(ctx.join("app/main.txt"), "v3\n").unwrap();
    fs::File::options()
        .write(true)
        .open(ctx.join("app/main.txt"))
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let (_, p) = build(&k, &ctx, &["-t", "cache"]);
    assert_eq!(counts(&p), (2, 3), "{p}");
    assert_eq!(read(&image_view(&k, "cache"), "/copy"), "v3\n");

    // A build arg misses at the first RUN that sees it.
    let (_, p) = build(&k, &ctx, &["-t", "cache", "--build-arg", "MODE=b"]);
    assert_eq!(counts(&p), (3, 2), "{p}");
    assert!(
        p.contains("cache miss: build arg or env changed: MODE"),
        "{p}"
    );

    // chmod of a source file misses.
    fs::set_permissions(ctx.join("config.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let (_, p) = build(&k, &ctx, &["-t", "cache", "--build-arg", "MODE=b"]);
    assert_eq!(counts(&p), (0, 5), "{p}");

    // --no-cache runs everything and says so.
    let (_, p) = build(&k, &ctx, &["--no-cache"]);
    assert_eq!(counts(&p), (0, 5), "{p}");
    assert!(p.contains("cache miss: --no-cache"), "{p}");
    let out = k.ok(&["system", "check"]);
    assert!(out.is_empty(), "{out}");
}

#[test]
pub(super) fn a_failing_run_names_the_line_the_exit_code_and_the_output() {
    let Some((k, ctx)) = setup() else { return };
    dockerfile(
        &ctx,
        "FROM base\nRUN echo fine\nRUN echo about to fail; echo on stderr >&2; exit 3\nRUN echo never\n",
    );
    let o = build_raw(&k, &ctx, &["-t", "bad"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Dockerfile:3: RUN echo about to fail"),
        "{err}"
    );
    assert!(err.contains("exit code 3"), "{err}");
    assert!(err.contains("> on stderr"), "{err}");
    assert!(!err.contains("never"), "{err}");
    assert!(k.run(&["inspect", "bad"]).status.code() != Some(0));

    // Missing base: named, with the commands that bring it in.
    dockerfile(&ctx, "FROM nosuchimage:1\nRUN true\n");
    let err = String::from_utf8_lossy(&build_raw(&k, &ctx, &[]).stderr).into_owned();
    // Not in the store: kiln tries to pull it (no registry is reachable here), naming it and
    // the ways to bring it in without one.
    assert!(
        err.contains("Unable to find image 'nosuchimage:1' locally"),
        "{err}"
    );
    assert!(err.contains("pull nosuchimage:1"), "{err}");
    assert!(
        err.contains("kiln import") && err.contains("kiln load"),
        "{err}"
    );

    // A missing source names itself.
    dockerfile(&ctx, "FROM base\nCOPY nothere.txt /\n");
    let err = String::from_utf8_lossy(&build_raw(&k, &ctx, &[]).stderr).into_owned();
    assert!(
        err.contains("Dockerfile:2") && err.contains("nothere.txt"),
        "{err}"
    );

    // A required mount that was not given is a clear error, never a silent build without it.
    dockerfile(&ctx, "FROM base\nRUN --mount=type=ssh,required true\n");
    let err = String::from_utf8_lossy(&build_raw(&k, &ctx, &[]).stderr).into_owned();
    assert!(
        err.contains("Dockerfile:2") && err.contains("kiln build --ssh default"),
        "{err}"
    );

    // Command not found: 127.
    dockerfile(&ctx, "FROM base\nRUN [\"/no/such/cmd\"]\n");
    let err = String::from_utf8_lossy(&build_raw(&k, &ctx, &[]).stderr).into_owned();
    assert!(err.contains("exit code 127"), "{err}");
}

#[test]
pub(super) fn run_is_isolated_and_sees_proc_dev_and_its_network_mode() {
    let Some((k, ctx)) = setup() else { return };
    dockerfile(
        &ctx,
        "FROM base\n\
         RUN echo $$ > /pid && hostname > /hostname.out && ls /proc/self/fd > /fds && echo x > /dev/null && cat /etc/hosts > /hosts.out\n\
         RUN --network=none ls /sys/class/net > /net.none\n\
         RUN ls /sys/class/net > /net.host\n\
         RUN grep CapBnd /proc/self/status > /caps\n",
    );
    build(&k, &ctx, &["-t", "iso"]);
    let v = image_view(&k, "iso");
    assert_eq!(
        read(&v, "/pid"),
        "1\n",
        "RUN is PID 1 of its own PID namespace"
    );
    assert_eq!(read(&v, "/hostname.out"), "buildkitsandbox\n");
    assert!(read(&v, "/hosts.out").contains("localhost"));
    assert_eq!(read(&v, "/net.none"), "lo\n");
    assert!(read(&v, "/net.host").lines().count() >= 1);
    // Docker's default bounding set.
    assert_eq!(read(&v, "/caps").trim(), "CapBnd:\t00000000a80425fb");

    // --network none on the command line isolates every RUN.
    dockerfile(&ctx, "FROM base\nRUN ls /sys/class/net > /n\n");
    build(&k, &ctx, &["-t", "iso2", "--network", "none"]);
    assert_eq!(read(&image_view(&k, "iso2"), "/n"), "lo\n");
}

#[test]
pub(super) fn multi_stage_builds_copy_from_stages_and_images() {
    let Some((k, ctx)) = setup() else { return };
    dockerfile(
        &ctx,
        "FROM base AS a\nRUN mkdir /out && echo from-a > /out/a.txt\n\
         FROM base AS b\nRUN echo from-b > /b.txt\n\
         FROM base AS unused\nRUN exit 1\n\
         FROM scratch\nCOPY --from=a /out/ /\nCOPY --from=1 /b.txt /x/\nCOPY --from=base /bin/busybox /bin/\n",
    );
    let (_, p) = build(&k, &ctx, &["-t", "multi"]);
    assert!(
        !p.contains("unused"),
        "an unreached stage must not run: {p}"
    );
    let v = image_view(&k, "multi");
    assert_eq!(read(&v, "/a.txt"), "from-a\n");
    assert_eq!(read(&v, "/x/b.txt"), "from-b\n");
    assert!(meta(&v, "/bin/busybox").len() > 100_000);
    let c = config(&k, "multi");
    assert_eq!(c.rootfs.diff_ids.len(), 3);

    // --target builds the named stage.
    build(&k, &ctx, &["-t", "tb", "--target", "b"]);
    assert_eq!(read(&image_view(&k, "tb"), "/b.txt"), "from-b\n");
}

#[test]
pub(super) fn both_snapshotters_give_the_same_image() {
    let Some((k, ctx)) = setup() else { return };
    fs::write(ctx.join("f.txt"), "f\n").unwrap();
    dockerfile(
        &ctx,
        "FROM base\nCOPY f.txt /f.txt\nRUN mkdir -p /a/b && echo x > /a/b/c && chmod 700 /a && ln -s /a/b/c /link\nRUN rm /etc/group && echo y >> /a/b/c\n",
    );
    let (overlay, _) = build(&k, &ctx, &["--no-cache", "--snapshotter", "overlay"]);
    let (native, _) = build(&k, &ctx, &["--no-cache", "--snapshotter", "native"]);
    // Timestamps differ between runs: compare with SOURCE_DATE_EPOCH clamping.
    let sde = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let (o2, _) = build(
        &k,
        &ctx,
        &[
            &["--no-cache", "--snapshotter", "overlay", "-t", "o"][..],
            &sde[..],
        ]
        .concat(),
    );
    let (n2, _) = build(
        &k,
        &ctx,
        &[
            &["--no-cache", "--snapshotter", "native", "-t", "n"][..],
            &sde[..],
        ]
        .concat(),
    );
    assert!(overlay.starts_with("sha256:") && native.starts_with("sha256:"));
    assert_eq!(
        o2, n2,
        "overlay and native snapshotters must produce the same layers"
    );
    let v = image_view(&k, "n");
    assert!(v.resolve("/etc/group", false).unwrap().is_none());
    assert_eq!(read(&v, "/a/b/c"), "x\ny\n");
}
