//! `kiln build`: instructions and flags checked on the image config and the files inside the
//! image, cache behaviour, RUN isolation, both snapshotters, reproducibility, interop, crashes.
//! Root, real overlay mounts and namespaces; the base is busybox-static imported as `base`.

use crate::common::*;
use kiln::snapshotter::view::View;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A store with the busybox base imported as `base`, and an empty context dir.
fn setup() -> Option<(Kiln, std::path::PathBuf)> {
    let (k, _rootfs, _id) = busybox_image("base", &[])?;
    let ctx = k.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    Some((k, ctx))
}

/// Builds `ctx` with plain progress; returns (image ID, progress on stderr).
fn build(k: &Kiln, ctx: &Path, args: &[&str]) -> (String, String) {
    let o = build_raw(k, ctx, args);
    assert!(
        o.status.success(),
        "kiln build failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    let id = out.lines().last().unwrap_or("").trim().to_string();
    assert!(
        id.starts_with("sha256:"),
        "last stdout line is the image ID: {out:?}"
    );
    (id, String::from_utf8_lossy(&o.stderr).into_owned())
}

fn build_raw(k: &Kiln, ctx: &Path, args: &[&str]) -> Output {
    let mut a = vec!["build", "--progress", "plain"];
    a.extend_from_slice(args);
    a.push(ctx.to_str().unwrap());
    k.run(&a)
}

/// The merged view of an image's files (snapshots unpacked by the library).
fn image_view(k: &Kiln, name: &str) -> View {
    let store = k.store();
    let img = kiln::image::resolve(&store, name).unwrap().image;
    let snaps = kiln::snapshotter::unpack_image(&store, &img).unwrap();
    View::new(snaps.iter().rev().map(|s| store.snapshot_fs(s)).collect())
}

fn config(k: &Kiln, name: &str) -> kiln::image::oci::ImageConfig {
    let store = k.store();
    let img = kiln::image::resolve(&store, name).unwrap().image;
    kiln::image::read_config(&store, &img).unwrap()
}

fn read(v: &View, p: &str) -> String {
    v.read_string(p)
        .unwrap_or_else(|| panic!("{p} missing from the image"))
}

fn meta(v: &View, p: &str) -> fs::Metadata {
    v.resolve(p, false)
        .unwrap()
        .unwrap_or_else(|| panic!("{p} missing from the image"))
        .meta
}

/// Step lines of plain progress: how many were CACHED and how many executed (DONE).
fn counts(progress: &str) -> (usize, usize) {
    let cached = progress.lines().filter(|l| l.ends_with(" CACHED")).count();
    let misses = progress
        .lines()
        .filter(|l| l.contains(" cache miss: "))
        .count();
    (cached, misses)
}

/// A second base image, `base2`: the busybox base plus /base2 ("two").
fn base2(k: &Kiln) {
    let dir = k.dir.path().join("base2");
    fs::create_dir_all(&dir).unwrap();
    dockerfile(&dir, "FROM base\nRUN echo two > /base2\n");
    build(k, &dir, &["-t", "base2"]);
}

fn dockerfile(ctx: &Path, text: &str) {
    fs::write(ctx.join("Dockerfile"), text).unwrap();
}

#[test]
fn every_instruction_sets_the_config_and_files_as_buildkit() {
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
fn rebuilds_redo_only_what_changed() {
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
fn a_failing_run_names_the_line_the_exit_code_and_the_output() {
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
fn run_is_isolated_and_sees_proc_dev_and_its_network_mode() {
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
fn multi_stage_builds_copy_from_stages_and_images() {
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
fn both_snapshotters_give_the_same_image() {
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

#[test]
fn source_date_epoch_builds_are_reproducible_across_context_copies() {
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
fn built_images_read_the_same_in_skopeo_and_umoci() {
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
fn two_builds_at_once_on_one_store_both_succeed() {
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
fn command_line_flags_tags_labels_file_and_quiet() {
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
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// kiln inside a container: the store on overlayfs, where overlay upper dirs and whiteout
/// devices are refused. The native snapshotter is chosen, whiteouts stay in OCI form, and the
/// image is right.
#[test]
fn a_store_on_overlayfs_builds_with_the_native_snapshotter() {
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

#[test]
fn cache_ls_du_inspect_and_prune() {
    let Some((k, ctx)) = setup() else { return };
    fs::write(ctx.join("f"), "f\n").unwrap();
    dockerfile(&ctx, "FROM base\nCOPY f /f\nRUN echo one > /one\n");
    build(&k, &ctx, &["-t", "c1"]);
    dockerfile(&ctx, "FROM base\nCOPY f /f\nRUN echo two > /two\n");
    build(&k, &ctx, &[]);
    k.ok(&["rmi", "-f", &build(&k, &ctx, &[]).0]);

    let ls = k.ok(&["cache", "ls"]);
    assert!(ls.starts_with("KEY"), "{ls}");
    assert!(
        ls.contains("COPY f /f")
            && ls.contains("RUN echo one > /one")
            && ls.contains("RUN echo two"),
        "{ls}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["cache", "ls", "--format", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let key = json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["instruction"] == "RUN echo one > /one")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let v: serde_json::Value =
        serde_json::from_str(&k.ok(&["cache", "inspect", &key[..12]])).unwrap();
    assert_eq!(v["Key"], key.as_str());
    assert!(v["UsedByImages"][0].as_str().unwrap().contains("c1"), "{v}");
    assert!(k.ok(&["cache", "du"]).contains("Step layers"));

    // Default prune: only what no image uses (the second RUN, its image removed).
    let out = k.ok(&["cache", "prune"]);
    assert!(out.contains("1 cache entries"), "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&k.ok(&["cache", "ls", "--format", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // --all: everything; images keep their layers; the next build misses and works.
    k.ok(&["cache", "prune", "--all"]);
    assert_eq!(k.ok(&["cache", "ls"]).lines().count(), 1);
    assert!(k.store().verify().unwrap().is_empty());
    assert_eq!(read(&image_view(&k, "c1"), "/one"), "one\n");
    dockerfile(&ctx, "FROM base\nCOPY f /f\nRUN echo one > /one\n");
    let (_, p) = build(&k, &ctx, &["-t", "c1"]);
    assert_eq!(counts(&p), (0, 2), "{p}");
    let err = k.fails(&["cache", "inspect", "ffffffffffff"]);
    assert!(err.contains("no cache entry"), "{err}");
}

#[test]
fn run_cache_and_tmpfs_mounts() {
    let Some((k, ctx)) = setup() else { return };
    // A cache mount persists across builds and --no-cache, is shared by id, and never reaches
    // a layer; its target does not appear in the image either.
    dockerfile(
        &ctx,
        "FROM base\nRUN --mount=type=cache,id=c,target=/root/.cache/x echo run >> /root/.cache/x/log && wc -l < /root/.cache/x/log > /count\n\
         RUN --mount=type=cache,id=c,target=/other wc -l < /other/log > /seen\n\
         RUN --mount=type=tmpfs,target=/scratch,size=1m echo t > /scratch/t && df -k /scratch | tail -1 > /df\n",
    );
    build(&k, &ctx, &["-t", "m1"]);
    build(&k, &ctx, &["-t", "m2", "--no-cache"]);
    let v = image_view(&k, "m2");
    assert_eq!(read(&v, "/count").trim(), "2");
    assert_eq!(read(&v, "/seen").trim(), "2", "shared by id");
    assert!(read(&v, "/df").contains("1024"), "tmpfs size");
    for p in ["/root/.cache", "/other", "/scratch"] {
        assert!(
            v.resolve(p, false).unwrap().is_none(),
            "{p} leaked into the image"
        );
    }
    let du = k.ok(&["cache", "du"]);
    assert!(
        du.lines()
            .any(|l| l.starts_with("Cache mounts") && l.contains(" 1 ")),
        "{du}"
    );
    // sharing=locked serializes two concurrent builds on the same id.
    dockerfile(
        &ctx,
        "FROM base\nARG N\nRUN --mount=type=cache,id=l,target=/l,sharing=locked echo start $N >> /l/log && sleep 0.3 && echo end $N >> /l/log\n",
    );
    let spawn = |n: &str| {
        k.cmd()
            .args([
                "build",
                "-q",
                "--build-arg",
                &format!("N={n}"),
                ctx.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    dockerfile(
        &ctx,
        "FROM base\nRUN --mount=type=cache,id=l,target=/l cat /l/log > /log\n",
    );
    build(&k, &ctx, &["-t", "log", "--no-cache"]);
    let log = read(&image_view(&k, "log"), "/log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines[0].starts_with("start")
            && lines[1].starts_with("end")
            && lines[0][6..] == lines[1][4..],
        "interleaved: {log}"
    );
    // sharing=private: a build that finds the cache in use gets a scratch one, removed after.
    dockerfile(
        &ctx,
        "FROM base\nARG N\nRUN --mount=type=cache,id=p,target=/p,sharing=private echo $N >> /p/log && sleep 0.3 && cat /p/log > /seen\n",
    );
    let (a, b) = (spawn("a"), spawn("b"));
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    let left: Vec<String> = fs::read_dir(k.root().join("cache-mounts"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".private-"))
        .collect();
    assert!(left.is_empty(), "scratch caches left: {left:?}");
    // from=: a new cache starts as a copy of the source; later builds keep what was added.
    dockerfile(
        &ctx,
        "FROM base AS gen\nRUN mkdir /out && echo seed > /out/s.txt\n\
         FROM base\nRUN --mount=type=cache,id=seeded,target=/c,from=gen,source=/out cat /c/s.txt > /seeded && ls /c > /list && touch /c/added\n",
    );
    build(&k, &ctx, &["-t", "seeded"]);
    build(&k, &ctx, &["-t", "seeded2", "--no-cache"]);
    assert_eq!(read(&image_view(&k, "seeded"), "/seeded"), "seed\n");
    assert_eq!(read(&image_view(&k, "seeded2"), "/list"), "added\ns.txt\n");
    // prune --all drops the cache mounts.
    k.ok(&["cache", "prune", "--all"]);
    assert!(k
        .ok(&["cache", "du"])
        .lines()
        .any(|l| l.starts_with("Cache mounts") && l.contains(" 0 ")));
}

/// Every file under `dir` whose bytes contain `needle` (compressed blobs are searched both raw
/// and decompressed).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in walkdir(dir) {
        let Ok(bytes) = fs::read(&e) else { continue };
        let mut found = bytes.windows(needle.len()).any(|w| w == needle);
        if !found {
            let plain = kiln_store::codec::decompress(&bytes[..])
                .ok()
                .and_then(|mut r| {
                    let mut out = Vec::new();
                    r.read_to_end(&mut out).ok().map(|_| out)
                });
            found = plain.is_some_and(|p| p.windows(needle.len()).any(|w| w == needle));
        }
        if found {
            hits.push(e.display().to_string());
        }
    }
    hits
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn run_secret_mounts_never_reach_the_store_or_the_output() {
    let Some((k, ctx)) = setup() else { return };
    let file_secret = "s3cr3t-from-a-file-5d1c";
    let env_secret = "s3cr3t-from-the-env-9a7e";
    let src = k.dir.path().join("token");
    fs::write(&src, file_secret).unwrap();
    dockerfile(
        &ctx,
        "FROM base\n\
         RUN --mount=type=secret,id=tok touch /len-$(cat /run/secrets/tok | wc -c) && stat -c %a /run/secrets/tok > /mode\n\
         RUN --mount=type=secret,id=api,env=API_KEY,required test \"${API_KEY%-the-env-9a7e}\" = s3cr3t-from && echo ok > /env-ok\n\
         RUN --mount=type=secret,id=tok,target=/etc/app/key,uid=1,mode=0440 stat -c '%u %a' /etc/app/key > /owner\n\
         RUN --mount=type=secret,id=absent ls /run/secrets > /absent 2>&1 || true\n",
    );
    // What a SIGKILLed build left (its process is gone) is removed by the next one.
    let stale = Path::new("/dev/shm/kiln-secrets-999999999-test");
    if Path::new("/dev/shm").is_dir() {
        fs::create_dir_all(stale).unwrap();
        fs::write(stale.join("s"), "left by a killed build").unwrap();
    }
    let o = k
        .cmd()
        .env("MY_API", env_secret)
        .args([
            "build",
            "--progress",
            "plain",
            "-t",
            "sec",
            "--secret",
            &format!("id=tok,src={}", src.display()),
            "--secret",
            "id=api,env=MY_API",
            ctx.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    // The progress shows the instructions with their mount flags, never a value.
    assert!(
        !err.contains(file_secret) && !err.contains(env_secret),
        "{err}"
    );
    let v = image_view(&k, "sec");
    assert!(
        v.resolve("/len-23", false).unwrap().is_some(),
        "the secret file was readable"
    );
    assert_eq!(read(&v, "/mode").trim(), "400");
    assert_eq!(read(&v, "/env-ok").trim(), "ok");
    assert_eq!(read(&v, "/owner").trim(), "1 440");
    assert!(
        read(&v, "/absent").contains("No such file"),
        "an absent optional secret mounts nothing"
    );
    for p in [
        "/run/secrets/tok",
        "/run/secrets",
        "/etc/app/key",
        "/etc/app",
    ] {
        assert!(
            v.resolve(p, false).unwrap().is_none(),
            "{p} is in the image"
        );
    }
    let hist = serde_json::to_string(&config(&k, "sec")).unwrap();
    assert!(
        !hist.contains(file_secret) && !hist.contains(env_secret),
        "{hist}"
    );
    // Nowhere in the store: blobs (decompressed too), snapshots, the database.
    for needle in [file_secret, env_secret] {
        let hits = files_containing(&k.root(), needle.as_bytes());
        assert!(hits.is_empty(), "{needle} found in {hits:?}");
    }
    assert!(!stale.exists(), "a dead build's secrets were not removed");
    // The secret files (in /dev/shm, so never on a disk) are gone after the build.
    for dir in ["/dev/shm", "/tmp"] {
        let left: Vec<_> = fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("kiln-secrets-"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
    }
    // A secret never keys the step: another value hits the cache.
    fs::write(&src, "another-value-entirely!").unwrap();
    let o = k
        .cmd()
        .env("MY_API", env_secret)
        .args(["build", "--progress", "plain", "--secret"])
        .arg(format!("id=tok,src={}", src.display()))
        .args(["--secret", "id=api,env=MY_API", ctx.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(counts(&String::from_utf8_lossy(&o.stderr)).1, 0);
    // required and missing: an error naming the secret and the line.
    let err = k.fails(&[
        "build",
        "--no-cache",
        "--secret",
        &format!("id=tok,src={}", src.display()),
        ctx.to_str().unwrap(),
    ]);
    assert!(
        err.contains("Dockerfile:3") && err.contains("\"api\""),
        "{err}"
    );
    // A missing --secret file is named before any work.
    let err = k.fails(&[
        "build",
        "--secret",
        "id=tok,src=/no/such/file",
        ctx.to_str().unwrap(),
    ]);
    assert!(err.contains("/no/such/file"), "{err}");
}

#[test]
fn run_bind_mounts_are_keyed_by_what_they_expose() {
    let Some((k, ctx)) = setup() else { return };
    fs::create_dir_all(ctx.join("src")).unwrap();
    fs::write(ctx.join("src/a.txt"), "alpha\n").unwrap();
    fs::write(ctx.join("src/secret.key"), "no\n").unwrap();
    fs::write(ctx.join("other.txt"), "unrelated\n").unwrap();
    fs::write(ctx.join(".dockerignore"), "src/*.key\n").unwrap();
    dockerfile(
        &ctx,
        "FROM base AS gen\nRUN mkdir /out && echo generated > /out/g.txt && echo junk > /junk\n\
         FROM base\n\
         RUN --mount=type=bind,source=src,target=/mnt/src cat /mnt/src/a.txt > /a && ls /mnt/src > /ls && (touch /mnt/src/new 2>/dev/null && echo writable || echo read-only) > /ro\n\
         RUN --mount=type=bind,from=gen,source=/out,target=/g,rw cat /g/g.txt > /g.txt && echo scribble > /g/g.txt && touch /g/extra\n\
         RUN --mount=type=bind,from=gen,source=/out/g.txt,target=/one.txt cat /one.txt > /again.txt\n\
         RUN --mount=target=/ctx ls /ctx > /ctx-ls\n",
    );
    let (_, out) = build(&k, &ctx, &["-t", "b1"]);
    let v = image_view(&k, "b1");
    assert_eq!(read(&v, "/a"), "alpha\n");
    assert_eq!(read(&v, "/ls"), "a.txt\n", ".dockerignore applies: {out}");
    assert_eq!(read(&v, "/ro").trim(), "read-only");
    assert_eq!(read(&v, "/g.txt"), "generated\n");
    assert_eq!(
        read(&v, "/again.txt"),
        "generated\n",
        "the write of the rw mount was discarded"
    );
    assert!(read(&v, "/ctx-ls").contains("other.txt"));
    for p in ["/mnt", "/g", "/one.txt", "/ctx"] {
        assert!(
            v.resolve(p, false).unwrap().is_none(),
            "{p} leaked into the image"
        );
    }
    // An unrelated file only misses the step that binds the whole context.
    fs::write(ctx.join("other.txt"), "changed\n").unwrap();
    let (_, out) = build(&k, &ctx, &[]);
    assert_eq!(counts(&out).1, 1, "{out}");
    assert!(out.contains("1 file changed: other.txt"), "{out}");
    // The bound file misses its step (and, through it, the ones after).
    fs::write(ctx.join("src/a.txt"), "beta\n").unwrap();
    let (_, out) = build(&k, &ctx, &["-t", "b2"]);
    assert!(out.contains("1 file changed: src/a.txt"), "{out}");
    assert_eq!(read(&image_view(&k, "b2"), "/a"), "beta\n");
    // The excluded file changing changes nothing.
    fs::write(ctx.join("src/secret.key"), "still no\n").unwrap();
    let (_, out) = build(&k, &ctx, &[]);
    assert_eq!(counts(&out).1, 0, "{out}");
}

#[test]
fn copy_link_parents_and_exclude() {
    let Some((k, ctx)) = setup() else { return };
    for (p, body) in [
        ("web/index.html", "<h1>hi</h1>\n"),
        ("web/app.js", "js\n"),
        ("web/notes.md", "md\n"),
        ("web/tmp/scratch.txt", "scratch\n"),
        ("web/img/logo.svg", "svg\n"),
        ("pkg/a/go.mod", "module a\n"),
        ("pkg/b/go.mod", "module b\n"),
        ("pkg/b/main.go", "package main\n"),
    ] {
        fs::create_dir_all(ctx.join(p).parent().unwrap()).unwrap();
        fs::write(ctx.join(p), body).unwrap();
    }
    base2(&k);

    dockerfile(
        &ctx,
        "ARG B=base\nFROM $B\n\
         COPY --exclude=*.md --exclude=tmp web /site/\n\
         COPY --parents pkg/*/go.mod /src/\n\
         COPY --link --chown=1:1 web/index.html /app/\n\
         RUN ls -R /site /src > /listing && stat -c '%u %n' /app/index.html > /owner\n",
    );
    let (_, out) = build(&k, &ctx, &["-t", "l1"]);
    let v = image_view(&k, "l1");
    let listing = read(&v, "/listing");
    for want in ["app.js", "index.html", "logo.svg", "go.mod"] {
        assert!(listing.contains(want), "{want} missing: {listing}");
    }
    for gone in ["notes.md", "scratch.txt", "tmp", "main.go"] {
        assert!(!listing.contains(gone), "{gone} copied: {listing}");
    }
    assert_eq!(read(&v, "/src/pkg/a/go.mod"), "module a\n");
    assert_eq!(read(&v, "/src/pkg/b/go.mod"), "module b\n");
    assert_eq!(read(&v, "/owner").trim(), "1 /app/index.html");
    assert!(out.contains("COPY --link"), "{out}");

    // An excluded file changing does not miss.
    fs::write(ctx.join("web/notes.md"), "changed\n").unwrap();
    fs::write(ctx.join("pkg/b/main.go"), "package main // changed\n").unwrap();
    let (_, out) = build(&k, &ctx, &[]);
    assert_eq!(counts(&out).1, 0, "{out}");

    // The base changes: every step misses except the linked COPY, whose layer is reused.
    let (_, out) = build(&k, &ctx, &["-t", "l2", "--build-arg", "B=base2"]);
    let copy_line = out.lines().position(|l| l.contains("COPY --link")).unwrap();
    assert!(
        out.lines().nth(copy_line + 1).unwrap().ends_with("CACHED"),
        "{out}"
    );
    assert_eq!(counts(&out), (1, 3), "{out}");
    let (c1, c2) = (config(&k, "l1"), config(&k, "l2"));
    let n1 = c1.rootfs.diff_ids.len();
    let n2 = c2.rootfs.diff_ids.len();
    assert_eq!(
        c1.rootfs.diff_ids[n1 - 2],
        c2.rootfs.diff_ids[n2 - 2],
        "the linked layer is the same"
    );
    let v = image_view(&k, "l2");
    assert_eq!(read(&v, "/app/index.html"), "<h1>hi</h1>\n");
    assert_eq!(read(&v, "/base2"), "two\n");
    assert_eq!(read(&v, "/owner").trim(), "1 /app/index.html");
}

#[test]
fn explain_names_the_inputs_and_what_changed() {
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
fn add_url_downloads_checks_and_revalidates() {
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
fn add_of_an_archive_follows_the_images_symlinked_directories() {
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
fn copy_keeps_hard_links_between_the_files_it_copies() {
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
fn run_ssh_mounts_forward_the_agent_socket() {
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
fn copy_follows_destination_symlinks_inside_the_root_and_keeps_them() {
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
fn a_bad_archive_in_add_says_why_and_escapes_raw_bytes() {
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
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_while_writing_a_layer_names_the_step_and_the_space() {
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

/// The behaviours real Dockerfiles met where kiln differed from BuildKit, each as BuildKit
/// does it.
#[test]
fn buildkit_parity_on_scratch_home_args_healthcheck_users_and_stopsignal() {
    let Some((k, ctx)) = setup() else { return };
    fs::write(ctx.join("f"), "f\n").unwrap();
    fs::create_dir_all(ctx.join("context/bar")).unwrap();
    fs::write(ctx.join("context/bar/baz"), "baz\n").unwrap();
    // A base whose passwd has no entry for root, and one with no passwd at all.
    dockerfile(
        &ctx,
        "FROM base AS nopw\nRUN rm /etc/passwd /etc/group\n\
         FROM base AS nobody\nRUN echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && mkdir -p /home/app && chown 1000 /home/app\n",
    );
    build(&k, &ctx, &["--target", "nopw", "-t", "nopw"]);
    build(&k, &ctx, &["--target", "nobody", "-t", "withapp"]);

    // 1. FROM scratch: WorkingDir "/".
    dockerfile(&ctx, "FROM scratch\nCOPY f /f\n");
    build(&k, &ctx, &["-t", "scratchy"]);
    assert_eq!(
        config(&k, "scratchy").config.working_dir.as_deref(),
        Some("/")
    );

    // 2. HOME in RUN: passwd's home, "/" without an entry; a non-root user's own.
    dockerfile(&ctx, "FROM base\nRUN echo \"$HOME\" > /root-home\n");
    build(&k, &ctx, &["-t", "h0"]);
    assert_eq!(read(&image_view(&k, "h0"), "/root-home"), "/root\n");
    dockerfile(&ctx, "FROM nopw\nRUN echo \"$HOME\" > /nopw-home\n");
    build(&k, &ctx, &["-t", "h1"]);
    assert_eq!(read(&image_view(&k, "h1"), "/nopw-home"), "/\n");
    dockerfile(
        &ctx,
        "FROM withapp\nUSER app\nRUN echo \"$HOME\" > /home/app/h\n",
    );
    build(&k, &ctx, &["-t", "h2"]);
    assert_eq!(read(&image_view(&k, "h2"), "/home/app/h"), "/home/app\n");

    // 3. A stage FROM a stage inherits its args; 4. variables in an ARG's name.
    dockerfile(
        &ctx,
        "FROM base AS base1\nARG NAME=base\n\
         FROM base1 AS dev\nARG NAME=\"$NAME-dev\"\nRUN echo \"$NAME\" > /dev-name\n\
         FROM dev\nARG NAME\nRUN echo \"$NAME\" > /final-name\n\
         ENV src=file3\nARG ${src}=context/bar/baz\nCOPY $file3 /baz\n",
    );
    build(&k, &ctx, &["-t", "args"]);
    let v = image_view(&k, "args");
    assert_eq!(read(&v, "/dev-name"), "base-dev\n");
    assert_eq!(read(&v, "/final-name"), "base-dev\n");
    assert_eq!(
        read(&v, "/baz"),
        "baz\n",
        "the ARG named by ${{src}} is file3"
    );

    // 6. A later HEALTHCHECK replaces the whole healthcheck.
    dockerfile(
        &ctx,
        "FROM base\nHEALTHCHECK --interval=5s --timeout=3s --retries=4 CMD true\n\
         HEALTHCHECK --retries=0 --timeout=0s CMD false\n",
    );
    build(&k, &ctx, &["-t", "hc"]);
    let hc = config(&k, "hc").config.extra["Healthcheck"].clone();
    assert_eq!(hc, serde_json::json!({"Test": ["CMD-SHELL", "false"]}));

    // 7. WORKDIR and COPY --chown under USER root with no passwd: uid/gid 0, no error; RUN
    // still refuses a name it cannot find.
    dockerfile(
        &ctx,
        "FROM nopw\nUSER root\nWORKDIR /made\nCOPY --chown=someone:somegroup f /made/f\n",
    );
    build(&k, &ctx, &["-t", "nopw-user"]);
    let v = image_view(&k, "nopw-user");
    let m = meta(&v, "/made/f");
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(meta(&v, "/made").uid(), 0);
    dockerfile(&ctx, "FROM nopw\nUSER someone\nRUN true\n");
    let o = build_raw(&k, &ctx, &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unable to find user someone"));

    // 8. An invalid STOPSIGNAL fails the build (and --check); one from a variable is fine.
    dockerfile(&ctx, "FROM base\nSTOPSIGNAL SIGNOPE\n");
    let o = build_raw(&k, &ctx, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Dockerfile:2") && err.contains("SIGNOPE"),
        "{err}"
    );
    let o = k.run(&["build", "--check", ctx.to_str().unwrap()]);
    assert!(!o.status.success(), "--check reports it");
    dockerfile(&ctx, "FROM base\nARG SIG=SIGUSR1\nSTOPSIGNAL $SIG\n");
    build(&k, &ctx, &["-t", "sig"]);
    assert_eq!(
        config(&k, "sig").config.stop_signal.as_deref(),
        Some("SIGUSR1")
    );
}

#[test]
fn durations_and_sizes_parse_as_docker() {
    let Some((k, ctx)) = setup() else { return };
    // Go's durations, integer-exact; Docker's sizes (binary units, `mb`) for a tmpfs mount.
    dockerfile(
        &ctx,
        "FROM base\nHEALTHCHECK --interval=1.001s --timeout=1m30s CMD true\n\
         RUN --mount=type=tmpfs,target=/t,size=64mb df -k /t | tail -1 | awk '{print $2}' > /tmpfs-size\n",
    );
    build(&k, &ctx, &["-t", "dur"]);
    let hc = config(&k, "dur").config.extra["Healthcheck"].clone();
    assert_eq!(hc["Interval"], serde_json::json!(1_001_000_000u64));
    assert_eq!(hc["Timeout"], serde_json::json!(90_000_000_000u64));
    assert_eq!(read(&image_view(&k, "dur"), "/tmpfs-size"), "65536\n");
    // An oversized duration is an error, not a saturated value.
    dockerfile(
        &ctx,
        "FROM base\nHEALTHCHECK --interval=3000000h CMD true\n",
    );
    let o = build_raw(&k, &ctx, &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid duration"));
}

#[test]
fn a_run_heredoc_of_200_kb_builds() {
    let Some((k, ctx)) = setup() else { return };
    // The spec reaches the helper through a pipe: no argument-size limit.
    let body: String = (0..25_000).map(|i| format!("line{i:05}\n")).collect();
    assert!(body.len() > 200_000);
    dockerfile(
        &ctx,
        &format!("FROM base\nRUN <<EOF\ncat > /big.txt <<'INNER'\n{body}INNER\nEOF\n"),
    );
    build(&k, &ctx, &["-t", "heredoc"]);
    assert_eq!(read(&image_view(&k, "heredoc"), "/big.txt"), body);
}

#[test]
fn ctrl_c_during_a_build_says_so_and_exits_130() {
    let Some((k, ctx)) = setup() else { return };
    dockerfile(&ctx, "FROM base\nRUN sleep 30\n");
    let mut child = k
        .cmd()
        .args(["build", "--progress", "plain", ctx.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the RUN step runs, then interrupt.
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("cache miss") {
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("build interrupted (SIGINT)"), "{rest}");
}
