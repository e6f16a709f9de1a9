//! Behaviours real Dockerfiles met where kiln differed from BuildKit, Docker's duration and size syntax, big heredocs, Ctrl-C.

#[allow(unused_imports)]
use super::*;

/// The behaviours real Dockerfiles met where kiln differed from BuildKit, each as BuildKit
/// does it.
#[test]
pub(super) fn buildkit_parity_on_scratch_home_args_healthcheck_users_and_stopsignal() {
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
pub(super) fn durations_and_sizes_parse_as_docker() {
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
pub(super) fn a_run_heredoc_of_200_kb_builds() {
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
pub(super) fn ctrl_c_during_a_build_says_so_and_exits_130() {
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
