//! The build cache commands and RUN's mounts (cache, tmpfs, secret, bind), COPY --link, --parents and --exclude.

#[allow(unused_imports)]
use super::*;

#[test]
pub(super) fn cache_ls_du_inspect_and_prune() {
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
pub(super) fn run_cache_and_tmpfs_mounts() {
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
pub(super) fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
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

pub(super) fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
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
pub(super) fn run_secret_mounts_never_reach_the_store_or_the_output() {
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
pub(super) fn run_bind_mounts_are_keyed_by_what_they_expose() {
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
pub(super) fn copy_link_parents_and_exclude() {
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
