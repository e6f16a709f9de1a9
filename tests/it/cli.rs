//! CLI behaviour a Docker user relies on: names, tags, IDs, errors that name the thing, exit codes.

use crate::common::*;
use std::fs;

fn imported() -> Option<(Kiln, String)> {
    busybox_image("busybox", &[]).map(|(k, _, id)| (k, id))
}

#[test]
fn tag_images_filter_and_rmi_behave_like_docker() {
    let Some((k, id)) = imported() else { return };
    let short = &id[7..19];
    k.ok(&["tag", "busybox", "localhost:5000/john/get-started:part1"]);
    k.ok(&["tag", short, "busybox:1.36"]);
    let all = k.ok(&["images"]);
    assert_eq!(all.lines().count(), 4, "{all}");
    assert!(
        all.contains("localhost:5000/john/get-started   part1"),
        "{all}"
    );
    let filtered = k.ok(&["images", "busybox"]);
    assert_eq!(filtered.lines().count(), 3, "repository filter: {filtered}");
    assert_eq!(k.ok(&["images", "busybox:1.36"]).lines().count(), 2);
    assert_eq!(
        k.ok(&["images", "-q"]).trim(),
        short,
        "-q lists each image once"
    );
    assert_eq!(k.ok(&["images", "-q", "--no-trunc"]).trim(), id);
    let j: serde_json::Value = serde_json::from_str(
        k.ok(&["images", "--format", "json"])
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(j["ID"], short);

    // By ID with several tags: refused without -f, as Docker does.
    let err = k.fails(&["rmi", short]);
    assert!(
        err.contains("must be forced") && err.contains(short),
        "{err}"
    );
    // By tag: only that tag goes.
    assert_eq!(
        k.ok(&["rmi", "busybox:1.36"]).trim(),
        "Untagged: busybox:1.36"
    );
    assert_eq!(
        k.ok(&["rmi", "localhost:5000/john/get-started:part1"])
            .trim(),
        "Untagged: localhost:5000/john/get-started:part1"
    );
    // The last tag: untag and delete, and the blobs go with it.
    let out = k.ok(&["rmi", "busybox"]);
    assert_eq!(out, format!("Untagged: busybox:latest\nDeleted: {id}\n"));
    assert_eq!(k.ok(&["images", "-q"]), "");
    assert_eq!(
        fs::read_dir(k.root().join("blobs/sha256")).unwrap().count(),
        0,
        "rmi reclaims the blobs"
    );
    assert_eq!(k.ok(&["system", "check"]), "");
}

#[test]
fn rmi_refuses_an_image_a_container_uses() {
    let Some((k, id)) = imported() else { return };
    let store = k.store();
    let img = kiln::image::resolve(&store, "busybox").unwrap().image;
    store
        .containers()
        .add(&kiln::store::ContainerRecord {
            id: "0123456789abcdef".repeat(4),
            name: "happy_kiln".into(),
            image: img.manifest.digest,
            image_ref: "busybox".into(),
            created: 0,
            state: kiln::store::ContainerState::Exited,
        })
        .unwrap();
    let err = k.fails(&["rmi", "busybox"]);
    assert!(
        err.contains("container 0123456789ab is using its referenced image"),
        "{err}"
    );
    // -f untags; the image stays for the container.
    assert_eq!(
        k.ok(&["rmi", "-f", "busybox"]).trim(),
        "Untagged: busybox:latest"
    );
    assert!(k.ok(&["images", "-q", "--no-trunc"]).contains(&id));
    store
        .containers()
        .remove(&"0123456789abcdef".repeat(4))
        .unwrap();
    let pruned = k.ok(&["system", "prune", "-f"]);
    assert!(
        pruned.contains(&img.manifest.digest.to_string())
            && pruned.contains("Total reclaimed space"),
        "{pruned}"
    );
    assert_eq!(k.ok(&["images", "-q"]), "");
}

#[test]
fn errors_name_the_thing_and_exit_non_zero() {
    let k = Kiln::new();
    let err = k.fails(&["inspect", "nosuch:1"]);
    assert!(
        err.starts_with("kiln: error: no such image: nosuch:1\n"),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");
    let err = k.fails(&["tag", "nosuch", "Bad:Name"]);
    assert!(err.contains("must be lowercase"), "{err}");
    let junk = k.dir.path().join("junk.tar");
    fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let err = k.fails(&["import", junk.to_str().unwrap()]);
    assert!(err.contains("junk.tar is not a valid tar archive"), "{err}");
    let err = k.fails(&["load", "-i", junk.to_str().unwrap()]);
    assert!(err.contains("junk.tar"), "{err}");
    let err = k.fails(&["import", "/nonexistent/rootfs.tar"]);
    assert!(err.contains("/nonexistent/rootfs.tar"), "{err}");
    // A tarball with an entry climbing out is refused at import, naming the entry.
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..12].copy_from_slice(b"../etc/shado");
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut bad = h.as_bytes().to_vec();
    bad.extend_from_slice(&[0; 1024]);
    let evil = k.dir.path().join("evil.tar");
    fs::write(&evil, bad).unwrap();
    let err = k.fails(&["import", evil.to_str().unwrap()]);
    assert!(err.contains("../etc/shado"), "{err}");
    assert_eq!(k.ok(&["images", "-q"]), "", "nothing was recorded");
    // Nothing half-written: a failed save leaves no output file.
    let out = k.dir.path().join("out.tar");
    k.fails(&["save", "-o", out.to_str().unwrap(), "nosuch"]);
    assert!(!out.exists());
}

#[test]
fn import_is_reproducible_with_source_date_epoch() {
    let Some((k, _)) = imported() else { return };
    let tgz = k.dir.path().join("busybox.tgz");
    let a = k
        .cmd()
        .args(["import", tgz.to_str().unwrap(), "r:1"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    let k2 = Kiln::new();
    let b = k2
        .cmd()
        .args(["import", tgz.to_str().unwrap(), "r:1"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(a.status.success() && b.status.success());
    assert_eq!(
        a.stdout, b.stdout,
        "same tarball, same SOURCE_DATE_EPOCH: same image ID"
    );
}

#[test]
fn import_change_sets_the_config_as_docker_import() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("root/app")).unwrap();
    fs::write(dir.path().join("root/app/app.py"), "print(1)\n").unwrap();
    let tar = dir.path().join("rootfs.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("root"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let t = tar.to_str().unwrap();
    k.ok(&[
        "import",
        "-c",
        "ENV PATH=/usr/local/bin:/usr/bin:/bin",
        "--change",
        "CMD [\"python\", \"app.py\"]",
        "-c",
        "WORKDIR /app",
        "-c",
        "EXPOSE 80",
        "-c",
        "LABEL stage=base",
        "-c",
        "USER 1000",
        "-c",
        "STOPSIGNAL SIGINT",
        "-c",
        "ENTRYPOINT [\"/bin/sh\", \"-c\"]",
        t,
        "py:base",
    ]);
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", "py:base"])).unwrap();
    let c = &v[0]["Config"];
    assert_eq!(
        c["Env"],
        serde_json::json!(["PATH=/usr/local/bin:/usr/bin:/bin"])
    );
    assert_eq!(c["Cmd"], serde_json::json!(["python", "app.py"]));
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"80/tcp": {}}));
    assert_eq!(c["Labels"], serde_json::json!({"stage": "base"}));
    assert_eq!(c["User"], "1000");
    assert_eq!(c["StopSignal"], "SIGINT");
    // Without --change: nothing set, as docker import.
    k.ok(&["import", t, "bare"]);
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", "bare"])).unwrap();
    assert_eq!(v[0]["Config"], serde_json::json!({}));
    // Instructions that are not config are refused, naming them; nothing is imported.
    for bad in ["RUN echo hi", "COPY a b", "FROM x", "ARG A"] {
        let err = k.fails(&["import", "-c", bad, t, "nope"]);
        let kw = bad.split(' ').next().unwrap();
        assert!(
            err.contains(&format!("{kw} is not allowed in --change")),
            "{bad}: {err}"
        );
    }
    assert!(!k.ok(&["images"]).contains("nope"));
}

/// Docker's management commands and the few commands that came with them.
#[test]
fn management_commands_history_and_prune_as_docker() {
    let Some((k, id)) = imported() else { return };
    let short = &id[7..19];
    // The same table (CREATED left out: a second may pass between the two).
    let f = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.Size}}";
    assert_eq!(
        k.ok(&["image", "ls", "--format", f]),
        k.ok(&["images", "--format", f])
    );
    assert!(k.ok(&["image", "ls"]).starts_with("REPOSITORY   TAG "));
    assert_eq!(k.ok(&["image", "list", "-q"]).trim(), short);
    k.ok(&["image", "tag", "busybox", "bb:two"]);
    k.ok(&["image", "rm", "bb:two"]);
    let hist = k.ok(&["image", "history", "busybox"]);
    let first = hist.lines().nth(1).unwrap();
    assert!(
        hist.starts_with("IMAGE") && first.starts_with(short),
        "{hist}"
    );
    assert_eq!(k.ok(&["history", "-q", "busybox"]).trim(), short);

    // A running and a stopped container: ls, inspect's Image (the image ID), df's ACTIVE.
    let running = k.ok(&[
        "container",
        "run",
        "-d",
        "--name",
        "up",
        "busybox",
        "sleep",
        "300",
    ]);
    k.ok(&["container", "run", "--name", "down", "busybox", "true"]);
    let ls = k.ok(&["container", "ls"]);
    assert!(ls.contains("up") && !ls.contains("down"), "{ls}");
    assert_eq!(k.ok(&["container", "ls", "-aq"]).lines().count(), 2);
    let v: serde_json::Value =
        serde_json::from_str(&k.ok(&["container", "inspect", running.trim()])).unwrap();
    assert_eq!(
        v[0]["Image"],
        serde_json::json!(id),
        "the image ID, not the manifest digest"
    );
    let df = k.ok(&["system", "df"]);
    let containers = df
        .lines()
        .find(|l| l.starts_with("Containers"))
        .unwrap()
        .to_string();
    let cols: Vec<&str> = containers.split_whitespace().collect();
    assert_eq!((cols[1], cols[2]), ("2", "1"), "{df}");
    let pruned = k.ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Deleted Containers:"), "{pruned}");
    assert_eq!(
        k.ok(&["container", "ls", "-aq"]).trim(),
        &running.trim()[..12],
        "only the running one stays"
    );
    k.ok(&["container", "rm", "-f", "up"]);

    // image prune: untagged only; -a every image no container uses.
    let ctx = k.dir.path().join("pctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo one > /one\n",
    )
    .unwrap();
    let built = k.ok(&["build", "-q", ctx.to_str().unwrap()]);
    let built = built.trim();
    assert!(k.ok(&["images", "-q", "--no-trunc"]).contains(built));
    let out = k.ok(&["image", "prune", "-f"]);
    assert!(out.contains(&format!("deleted: {built}")), "{out}");
    assert!(
        k.ok(&["images", "-q"]).contains(short),
        "tagged images stay"
    );
    let out = k.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: busybox:latest"), "{out}");
    assert_eq!(k.ok(&["images", "-q"]).trim(), "");
    k.ok(&["builder", "prune", "--all"]);
    assert_eq!(k.ok(&["-v"]), k.ok(&["--version"]));
}

#[test]
fn messages_that_say_what_to_do() {
    let k = Kiln::new();
    // A context that is not there.
    let err = k.fails(&["build", "/nonexistent-context"]);
    assert!(
        err.contains("unable to prepare context: path \"/nonexistent-context\" not found"),
        "{err}"
    );
    // The usage line shows what was typed, not options the environment filled in.
    let o = k
        .cmd()
        .env("KILN_ROOT", k.root())
        .args(["build", "-t", "x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Usage: kiln build --tag <NAME[:TAG]> <CONTEXT>"),
        "{err}"
    );
    // An ordinary user without subordinate ids (nobody) runs kiln rootless with a root-only map:
    // told so once, and what cannot work rootless is refused naming the flag.
    if !needs(&["setpriv", "pkill"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("store");
    fs::create_dir(&open).unwrap();
    std::process::Command::new("chown")
        .args(["65534:65534"])
        .arg(&open)
        .status()
        .unwrap();
    // nobody's kiln namespace (its pause process) goes with the test, whatever happens.
    struct Pause;
    impl Drop for Pause {
        fn drop(&mut self) {
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-u", "65534", "-f", "__kiln-pause"])
                .status();
            let _ = fs::remove_dir_all("/tmp/kiln-65534");
        }
    }
    // One an earlier run left goes first, so this test's first command makes its own (and warns).
    drop(Pause);
    let _pause = Pause;
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .arg("--root")
            .arg(&open)
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap()
    };
    let tar = dir.path().join("r.tar");
    fs::create_dir(dir.path().join("r")).unwrap();
    fs::write(dir.path().join("r/f"), "f").unwrap();
    std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("r"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()
        .unwrap();
    let o = as_nobody(&["import", tar.to_str().unwrap(), "x:1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("has no subordinate ids in /etc/subuid"),
        "{err}"
    );
    let o = as_nobody(&["run", "--rm", "--pids-limit", "5", "x:1", "/f"]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--pids-limit: a rootless kiln cannot set cgroup limits"),
        "{err}"
    );
    let o = as_nobody(&["run", "--rm", "x:1", "/f"]);
    assert_eq!(o.status.code(), Some(126), "a file that is not executable");
    let info = String::from_utf8_lossy(&as_nobody(&["info"]).stdout).into_owned();
    assert!(
        info.contains("Rootless: true") && info.contains("1 uids"),
        "{info}"
    );
}

/// `--format` Go templates and the filters scripts use with `ps` and `images`.
#[test]
fn format_templates_and_filters_as_docker() {
    let Some((k, id)) = imported() else { return };
    let short = &id[7..19];
    let up = k.ok(&["run", "-d", "--name", "up", "busybox", "sleep", "300"]);
    let up = &up.trim()[..12];
    k.ok(&["run", "--name", "down", "busybox", "true"]);
    // inspect
    assert_eq!(
        k.ok(&["inspect", "--format", "{{.State.Status}}", "up"]),
        "running\n"
    );
    assert_eq!(
        k.ok(&["inspect", "-f", "{{.Name}} {{.State.Running}}", "down"]),
        "/down false\n"
    );
    let cfg = k.ok(&["inspect", "--format", "{{json .Config}}", "busybox"]);
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert!(v.is_object(), "{cfg}");
    // ps: templates, table, filters, -n/-l
    assert_eq!(
        k.ok(&["ps", "--format", "{{.ID}}\\t{{.Names}}"]),
        format!("{up}\tup\n")
    );
    let t = k.ok(&["ps", "-a", "--format", "table {{.Names}}\\t{{.Status}}"]);
    assert!(t.starts_with("NAMES   STATUS\n"), "{t}");
    assert_eq!(
        k.ok(&["ps", "--filter", "status=exited", "--format", "{{.Names}}"]),
        "down\n"
    );
    assert_eq!(
        k.ok(&["ps", "-a", "-f", "name=do", "--format", "{{.Names}}"]),
        "down\n"
    );
    assert_eq!(
        k.ok(&["ps", "-a", "-q", "--filter", "ancestor=busybox"])
            .lines()
            .count(),
        2
    );
    assert_eq!(k.ok(&["ps", "-l", "--format", "{{.Names}}"]), "down\n");
    assert_eq!(k.ok(&["ps", "-n", "2", "-q"]).lines().count(), 2);
    let err = k.fails(&["ps", "--filter", "bogus=1"]);
    assert!(err.contains("bogus"), "{err}");
    // images: templates and filters
    assert_eq!(
        k.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]),
        format!("busybox:latest {short}\n")
    );
    assert_eq!(
        k.ok(&["images", "--filter", "reference=busy*", "-q"])
            .trim(),
        short
    );
    assert_eq!(
        k.ok(&["images", "--filter", "reference=nothing*", "-q"])
            .trim(),
        ""
    );
    assert_eq!(
        k.ok(&["images", "--filter", "dangling=true", "-q"]).trim(),
        ""
    );
    let err = k.fails(&["images", "--format", "{{.Repository"]);
    assert!(err.contains("invalid --format template"), "{err}");
    k.ok(&["rm", "-f", "up", "down"]);
}

#[test]
fn a_base_that_cannot_be_pulled_names_the_local_images_of_its_repository() {
    let Some((k, _)) = imported() else { return };
    // A registry that refuses connections: the pull fails at once, offline.
    k.ok(&["tag", "busybox", "127.0.0.1:1/team/app:1"]);
    let ctx = k.dir.path().join("hctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM 127.0.0.1:1/team/app:2\n").unwrap();
    let o = k.run(&["build", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the store has 127.0.0.1:1/team/app:1 of the same repository"),
        "{err}"
    );
    assert!(
        !err.contains("Pulling from"),
        "no pulling line before the manifest is found: {err}"
    );
}

#[test]
fn a_closed_pipe_ends_kiln_quietly() {
    let k = Kiln::new();
    let tarball = k.dir.path().join("one.tar");
    let mut b = tar::Builder::new(fs::File::create(&tarball).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello", &b"hi"[..]).unwrap();
    b.finish().unwrap();
    drop(b);
    k.ok(&["import", tarball.to_str().unwrap(), "tiny"]);
    // More than a pipe holds (300 copies of the image's JSON), read one byte of: kiln ends by
    // SIGPIPE, as `ls | head` does, with nothing on stderr (no panic).
    let script = format!(
        "{} --root {} inspect {} | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}",
        env!("CARGO_BIN_EXE_kiln"),
        k.root().display(),
        vec!["tiny"; 300].join(" ")
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "141");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
