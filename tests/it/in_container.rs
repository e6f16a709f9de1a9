//! kiln inside an unprivileged container, as a CI runner or a Kubernetes pod runs it: Docker's
//! default capabilities and seccomp profile, no extra privileges, so no namespace can be made.
//! The kiln binary and a benchmark-shaped context are bind-mounted into a busybox container
//! (with the binary's libraries), once under kiln itself and once under podman; each builds
//! with RUN steps in its own filesystem (`--isolation=none`; under podman kiln picks it by
//! itself) and pushes to the real registry on the host, reached at the container's gateway.
//! Both images are the one a normal build of the same context makes.

use crate::common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

const DOCKERFILE: &str = "\
ARG BASE
FROM $BASE
WORKDIR /app
COPY . /app
RUN --mount=type=cache,target=/cache find /app -type f | wc -l > /count && echo run >> /cache/log
RUN rm /etc/motd && mkdir -p /srv && cp /app/big.bin /srv/
ENV MODE=ci
";

/// The benchmark's context, smaller: 2,000 small files in nested directories and an 8 MiB one.
fn context(dir: &Path) {
    for i in 0..2000 {
        let d = dir.join(format!("src/d{}/e{}", i % 20, i % 7));
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join(format!("f{i}.txt")),
            format!("{i}\n").repeat(1 + i % 300),
        )
        .unwrap();
    }
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(dir.join("big.bin"), big).unwrap();
    fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
}

/// A busybox rootfs with the kiln binary's shared libraries (it is not static), as a tarball.
fn runner_tarball(dir: &Path) -> std::path::PathBuf {
    let rootfs = dir.join("runner");
    assert!(busybox_rootfs(&rootfs));
    let ldd = sh(Command::new("ldd").arg(env!("CARGO_BIN_EXE_kiln")));
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = rootfs.join(lib.trim_start_matches('/'));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(lib, &to).unwrap();
    }
    let tgz = dir.join("runner.tgz");
    tar_gz(&rootfs, &tgz);
    tgz
}

/// The build script a container runs: the registry is on the host, at the default route.
fn script(port: u16, tag: &str, isolation: &str) -> String {
    format!(
        "set -e; gw=$(ip route | awk '/default/ {{print $3}}'); export KILN_INSECURE_REGISTRIES=$gw:{port}; \
         kiln build {isolation} --push --build-arg BASE=$gw:{port}/ci/bb:1 -t $gw:{port}/ci/app:{tag} /ctx"
    )
}

#[test]
fn unprivileged_containers_build_in_place_and_push_the_image_a_normal_build_makes() {
    let Some((k, _, _)) = busybox_image("bb", &["podman", "runc", "docker-registry", "ldd", "ip"])
    else {
        return;
    };
    let w = k.dir.path();
    let ctx = w.join("ctx");
    context(&ctx);
    let registry = crate::registry::Registry::start_on("0.0.0.0", None);
    let port = registry
        .host()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse::<u16>()
        .unwrap();
    let local = format!("127.0.0.1:{port}");
    k.ok(&["tag", "bb", &format!("{local}/ci/bb:1")]);
    k.ok(&["push", &format!("{local}/ci/bb:1")]);
    k.ok(&["import", runner_tarball(w).to_str().unwrap(), "runner"]);

    // The normal build, namespaces and overlay.
    let epoch = "SOURCE_DATE_EPOCH=1700000000";
    let mut c = k.cmd();
    let normal = sh(c.env("SOURCE_DATE_EPOCH", "1700000000").args([
        "build",
        "-q",
        "--build-arg",
        &format!("BASE={local}/ci/bb:1"),
        "-t",
        "normal",
        ctx.to_str().unwrap(),
    ]));
    let normal = normal.lines().last().unwrap().to_string();

    // Under kiln: `kiln run` gives Docker's default capabilities and seccomp.
    let bin = format!("{}:/usr/local/bin/kiln:ro", env!("CARGO_BIN_EXE_kiln"));
    let ctx_mount = format!("{}:/ctx:ro", ctx.display());
    // What both containers get: the epoch, the binary and the context.
    let given = ["-e", epoch, "-v", &bin, "-v", &ctx_mount];
    let kiln_script = script(port, "kiln", "--isolation=none");
    let mut args = vec!["run", "--rm", "-e", "container=kiln"];
    args.extend(given);
    args.extend(["runner", "sh", "-c", &kiln_script]);
    let o = k.run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "the build in a kiln container failed: {err}"
    );
    assert!(err.contains("RUN --mount=type=cache"), "{err}");

    // Under podman, where kiln sees it cannot make namespaces and builds in place by itself.
    let proot = w.join("podman");
    let podman = || podman(&proot);
    let archive = w.join("runner.tar");
    k.ok(&[
        "save",
        "--format",
        "docker",
        "-o",
        archive.to_str().unwrap(),
        "runner",
    ]);
    sh(podman().arg("load").arg("-i").arg(&archive));
    let o = podman()
        .args(["run", "--rm"])
        .args(PODMAN_ULIMITS)
        .args(given)
        .args([
            "localhost/runner:latest",
            "sh",
            "-c",
            &script(port, "podman", ""),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "the build in a podman container failed: {err}"
    );
    assert!(
        err.contains("no namespace can be made here") && err.contains("--isolation=none"),
        "{err}"
    );
    let _ = podman().args(["rmi", "-a", "-f"]).output();

    for tag in ["kiln", "podman"] {
        let name = format!("{local}/ci/app:{tag}");
        k.ok(&["pull", &name]);
        let id = k.ok(&["images", "-q", "--no-trunc", &name]);
        assert_eq!(id.trim(), normal, "the image built in a {tag} container");
    }
    let out = k.ok(&[
        "run",
        "--rm",
        &format!("{local}/ci/app:podman"),
        "sh",
        "-c",
        "cat /count; test -e /etc/motd || echo gone; echo $MODE",
    ]);
    assert_eq!(
        out, "2002\ngone\nci\n",
        "2,000 files, big.bin and the Dockerfile"
    );
}
