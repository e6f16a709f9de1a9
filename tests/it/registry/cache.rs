//! --cache-to a registry, then --cache-from it on an empty store.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn cache_to_a_registry_then_cache_from_it_on_an_empty_store() {
    let Some((a, _, _)) = busybox_image("base", &["docker-registry", "skopeo"]) else {
        return;
    };
    let reg = Registry::start(None);
    let base = format!("{}/lib/base:1", reg.host());
    let cache = format!("{}/team/app-cache:main", reg.host());
    ok(&a, &["tag", "base", &base]);
    ok(&a, &["push", &base]);

    let ctx = a.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("a.txt"), "from the context\n").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {base} AS build\nARG TOKEN\nCOPY a.txt /a.txt\nRUN cat /a.txt > /out && echo built >> /out\n\
             FROM {base}\nWORKDIR /app\nCOPY --from=build /out ./final\nRUN echo done > /done\n"
        ),
    )
    .unwrap();
    let build = |k: &Kiln, extra: &[&str]| -> (String, String) {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        let o = kiln_cmd(k, &args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (out.lines().last().unwrap().to_string(), err)
    };
    let to = format!("type=registry,ref={cache}");
    let (id_a, err) = build(
        &a,
        &[
            "-t",
            "app",
            "--build-arg",
            "TOKEN=s3cret-arg",
            "--cache-to",
            &to,
        ],
    );
    assert!(
        err.contains("exported cache to") && err.contains("5 steps"),
        "{err}"
    );
    // The cache is an ordinary OCI manifest to other tools.
    let o = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{cache}"))
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&o.stdout);
    assert!(
        raw.contains("application/vnd.kiln.cache.config.v1+json"),
        "{raw}"
    );
    // Build-arg and env values stay on the machine: the exported input summaries leave them out.
    let cfg = Command::new("skopeo")
        .args(["inspect", "--raw", "--config", "--tls-verify=false"])
        .arg(format!("docker://{cache}"))
        .output()
        .unwrap();
    let cfg = String::from_utf8_lossy(&cfg.stdout);
    assert!(
        cfg.contains("\"records\"") && !cfg.contains("s3cret-arg"),
        "{cfg}"
    );

    // Another store, nothing in it: every step is a hit from the registry, same image ID.
    let b = Kiln::new();
    let (id_b, err) = build(
        &b,
        &[
            "-t",
            "app",
            "--build-arg",
            "TOKEN=s3cret-arg",
            "--cache-from",
            &to,
        ],
    );
    assert!(
        err.contains("importing cache from") && err.contains("5 steps"),
        "{err}"
    );
    let cached = err.lines().filter(|l| l.ends_with(" CACHED")).count();
    let misses = err.lines().filter(|l| l.contains(" cache miss: ")).count();
    assert_eq!((cached, misses), (5, 0), "{err}");
    assert_eq!(id_a, id_b);
    let o = kiln_cmd(&b, &["run", "--rm", "app", "cat", "/app/final", "/done"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from the context\nbuilt\ndone\n"
    );
    let check = kiln_cmd(&b, &["system", "check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A step whose record came from the registry cannot name the changed build arg (the values
    // stayed on machine A), and says so.
    let (_, err) = build(&b, &["--build-arg", "TOKEN=other"]);
    assert!(
        err.contains("cache miss: the instruction, a build arg or env changed"),
        "{err}"
    );
    // A changed file misses from there on, in store B too; a cache that does not exist yet is
    // an empty cache.
    fs::write(ctx.join("a.txt"), "changed\n").unwrap();
    let missing = format!("type=registry,ref={}/team/app-cache:none", reg.host());
    let (_, err) = build(&b, &["--cache-from", &to, "--cache-from", &missing]);
    assert!(err.contains("0 steps"), "{err}");
    assert!(err.contains("cache miss: 1 file changed: a.txt"), "{err}");
    // A cache that cannot be reached is a warning; the build goes on (from the local cache).
    let (_, err) = build(
        &b,
        &["--cache-from", "type=registry,ref=127.0.0.1:9/none/cache:x"],
    );
    assert!(
        err.contains("warning: --cache-from 127.0.0.1:9/none/cache:x")
            && err.contains("building without it"),
        "{err}"
    );
}
