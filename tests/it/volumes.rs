//! Volumes and mounts of `kiln run`: named volumes that outlive their containers, anonymous
//! ones (`-v PATH`, the image's VOLUMEs, filled from the image) that `rm -v` and `--rm` take
//! along, host binds (`-v` makes a missing path, `--mount` refuses it), read-only mounts, tmpfs,
//! `--volumes-from`, and the `volume` commands. Root; the busybox base imported as `base`.

use crate::common::*;
use std::fs;

fn setup() -> Option<Kiln> {
    busybox_image("base", &[]).map(|(k, _, _)| k)
}

fn names(k: &Kiln) -> Vec<String> {
    k.ok(&["volume", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn named_volumes_outlive_their_containers() {
    let Some(k) = setup() else { return };
    let sh = |v: &str, script: &str| k.ok(&["run", "--rm", "-v", v, "base", "sh", "-c", script]);
    sh("data:/data", "echo kept > /data/f");
    assert_eq!(names(&k), ["data"]);
    assert_eq!(sh("data:/data", "cat /data/f"), "kept\n");
    // Read-only: reading works, writing does not.
    let o = k.run(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        "base",
        "sh",
        "-c",
        "cat /data/f; echo x > /data/g",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "kept\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only"),
        "{o:?}"
    );
    // In use by a (stopped) container: volume rm refuses, prune keeps it.
    k.ok(&["run", "--name", "user", "-v", "data:/data", "base", "true"]);
    let err = k.fails(&["volume", "rm", "data"]);
    assert!(err.contains("volume is in use - [user]"), "{err}");
    k.ok(&["volume", "prune", "-a", "-f"]);
    assert_eq!(names(&k), ["data"]);
    // rm -v takes anonymous volumes only; the named one stays until removed.
    k.ok(&["rm", "-v", "user"]);
    assert_eq!(names(&k), ["data"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&k.ok(&["volume", "inspect", "data"])).unwrap();
    assert_eq!(inspect[0]["Name"], "data");
    assert_eq!(inspect[0]["Driver"], "local");
    assert!(inspect[0]["Mountpoint"]
        .as_str()
        .unwrap()
        .ends_with("/volumes/data/_data"));
    assert_eq!(k.ok(&["volume", "rm", "data"]).trim(), "data");
    assert!(names(&k).is_empty());
    let err = k.fails(&["volume", "rm", "data"]);
    assert!(err.contains("no such volume: data"), "{err}");
}

#[test]
fn image_volumes_are_anonymous_and_start_with_the_image_files() {
    let Some(k) = setup() else { return };
    let ctx = k.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM base\nRUN mkdir -p /v && echo seed > /v/s && chown 1:2 /v && chmod 0750 /v\nVOLUME /v\n",
    )
    .unwrap();
    k.ok(&["build", "-q", "-t", "withvol", ctx.to_str().unwrap()]);
    let out = k.ok(&[
        "run",
        "--name",
        "a",
        "withvol",
        "sh",
        "-c",
        "cat /v/s; stat -c '%u:%g %a' /v; echo more > /v/m",
    ]);
    assert_eq!(out, "seed\n1:2 750\n");
    let anon = names(&k);
    assert_eq!(anon.len(), 1);
    assert_eq!(anon[0].len(), 64, "{anon:?}");
    // --volumes-from mounts the same volume.
    assert_eq!(
        k.ok(&["run", "--rm", "--volumes-from", "a", "base", "cat", "/v/m"]),
        "more\n"
    );
    // A plain rm keeps it; prune takes it once no container uses it.
    k.ok(&["rm", "a"]);
    assert_eq!(names(&k), anon);
    let pruned = k.ok(&["volume", "prune", "-f"]);
    assert!(pruned.contains(&anon[0]), "{pruned}");
    assert!(names(&k).is_empty());
    // A mount target reached through the image's symlink lands inside the container's root,
    // never on the host's path of the same name.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM base\nRUN mkdir /tmp/kiln-volume-escape && ln -s /tmp/kiln-volume-escape /link\n",
    )
    .unwrap();
    k.ok(&["build", "-q", "-t", "linked", ctx.to_str().unwrap()]);
    assert_eq!(
        k.ok(&[
            "run",
            "--rm",
            "-v",
            "esc:/link/x",
            "linked",
            "sh",
            "-c",
            "echo in > /link/x/f; cat /tmp/kiln-volume-escape/x/f"
        ]),
        "in\n"
    );
    assert!(!std::path::Path::new("/tmp/kiln-volume-escape").exists());
    k.ok(&["volume", "rm", "esc"]);
    // `run --rm` and `rm -v` take the anonymous volumes along.
    k.ok(&["run", "--rm", "withvol", "true"]);
    k.ok(&["run", "--name", "b", "-v", "/scratch", "withvol", "true"]);
    assert_eq!(names(&k).len(), 2);
    k.ok(&["rm", "-v", "b"]);
    assert!(names(&k).is_empty(), "{:?}", names(&k));
}

#[test]
fn binds_and_tmpfs_mount_as_docker_does() {
    let Some(k) = setup() else { return };
    let host = k.dir.path().join("host");
    fs::create_dir_all(&host).unwrap();
    fs::write(host.join("in"), "from the host\n").unwrap();
    let h = host.to_str().unwrap();
    assert_eq!(
        k.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{h}:/mnt"),
            "base",
            "sh",
            "-c",
            "cat /mnt/in; echo back > /mnt/out"
        ]),
        "from the host\n"
    );
    assert_eq!(fs::read_to_string(host.join("out")).unwrap(), "back\n");
    // -v makes a missing host path; --mount refuses it, naming it.
    let missing = k.dir.path().join("made/by/v");
    k.ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/m", missing.display()),
        "base",
        "true",
    ]);
    assert!(missing.is_dir());
    let absent = k.dir.path().join("absent");
    let err = k.fails(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,source={},target=/m", absent.display()),
        "base",
        "true",
    ]);
    assert!(err.contains("bind source path does not exist"), "{err}");
    assert!(!absent.exists());
    // A read-only --mount, a tmpfs; the mount points are made inside the container's root.
    let out = k.ok(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,source={h},target=/deep/ro,readonly"),
        "--tmpfs",
        "/scratch:size=1m",
        "base",
        "sh",
        "-c",
        "grep -E ' /(deep/ro|scratch) ' /proc/mounts | cut -d' ' -f2,3,4 | cut -d, -f1 | sort",
    ]);
    assert_eq!(
        out,
        "/deep/ro ext4 ro\n/scratch tmpfs rw\n".replace("ext4", &fs_type(&host)),
        "{out}"
    );
    // Bad flags are refused before anything is made.
    let err = k.fails(&["run", "--rm", "-v", "data", "base", "true"]);
    assert!(err.contains("not an absolute path"), "{err}");
    let err = k.fails(&["run", "--rm", "-v", "va:/x", "-v", "vb:/x", "base", "true"]);
    assert!(err.contains("duplicate mount point: /x"), "{err}");
    assert!(
        names(&k).is_empty(),
        "a refused run left volumes: {:?}",
        names(&k)
    );
}

/// The filesystem type of `p` as /proc/mounts names it.
fn fs_type(p: &std::path::Path) -> String {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .unwrap();
    match String::from_utf8_lossy(&out.stdout).trim() {
        "ext2/ext3" => "ext4".into(),
        t => t.to_string(),
    }
}
