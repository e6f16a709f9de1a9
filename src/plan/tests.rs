use super::*;
use proptest::prelude::*;

fn df(src: &str) -> Dockerfile {
    Dockerfile::parse("Dockerfile", src.as_bytes()).unwrap()
}

fn plan_of(
    src: &str,
    args: &[(&str, &str)],
    target: Option<&str>,
) -> Result<Plan, DockerfileError> {
    let opts = PlanOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        target: target.map(String::from),
        ..PlanOptions::default()
    };
    plan(&df(src), &opts)
}

fn run_env(step: &Step) -> Vec<(String, String)> {
    match &step.kind {
        StepKind::Run(r) => r.env.clone(),
        _ => panic!("not a RUN"),
    }
}

fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str())
}

#[test]
fn global_args_reach_from_only_and_need_redeclaring() {
    let p = plan_of(
        "ARG TAG=1.0\nARG BASE=alpine\nFROM $BASE:$TAG\nRUN echo $TAG\nARG TAG\nRUN echo $TAG\n",
        &[("TAG", "2.0")],
        None,
    )
    .unwrap();
    let s = &p.stages[0];
    assert_eq!(s.base, Base::Image("alpine:2.0".into()));
    assert_eq!(
        get(&run_env(&s.steps[0]), "TAG"),
        None,
        "global ARG is not visible before re-declaration"
    );
    assert_eq!(get(&run_env(&s.steps[1]), "TAG"), Some("2.0"));
    assert!(p.warnings.is_empty());
}

#[test]
fn predefined_platform_args() {
    let p = plan_of("FROM busybox-$TARGETARCH\nARG TARGETOS\nRUN x\n", &[], None).unwrap();
    assert_eq!(p.stages[0].base, Base::Image("busybox-amd64".into()));
    assert_eq!(
        get(&run_env(&p.stages[0].steps[0]), "TARGETOS"),
        Some("linux")
    );
    assert_eq!(get(&run_env(&p.stages[0].steps[0]), "TARGETARCH"), None);
}

#[test]
fn env_values_come_from_before_the_instruction() {
    let p = plan_of(
        "FROM scratch\nENV A=old\nENV A=new B=$A\nENV C=${A}\nRUN x\n",
        &[],
        None,
    )
    .unwrap();
    let env = &p.stages[0].config.env;
    assert_eq!(get(env, "B"), Some("old"));
    assert_eq!(get(env, "C"), Some("new"));
    assert_eq!(get(env, "PATH"), Some(DEFAULT_PATH));
}

#[test]
fn env_beats_arg_of_the_same_name() {
    let p = plan_of(
        "FROM scratch\nARG V=arg\nENV V=env\nWORKDIR /$V\n",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(p.stages[0].config.workdir, "/env");
}

#[test]
fn stages_reachability_and_target() {
    let src = "FROM scratch AS a\nRUN a\nFROM scratch AS b\nRUN b\nFROM a AS c\nCOPY --from=1 /x /x\nFROM scratch AS d\nRUN d\n";
    let p = plan_of(src, &[], None).unwrap();
    assert_eq!(p.stages.len(), 1, "the last stage needs nothing else");
    let p = plan_of(src, &[], Some("C")).unwrap();
    let names: Vec<_> = p.stages.iter().map(|s| s.display_name()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(p.stages[p.target].base, Base::Stage(0));
    match &p.stages[2].steps[0].kind {
        StepKind::Copy(c) => assert_eq!(c.source, Source::Stage(1)),
        k => panic!("{k:?}"),
    }
    let e = plan_of(src, &[], Some("nope")).unwrap_err();
    assert!(e
        .message
        .contains("target stage \"nope\" could not be found"));
}

#[test]
fn from_errors_name_the_line() {
    let e = plan_of("FROM scratch\nCOPY --from=3 /a /b\n", &[], None).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.message.contains("undefined stage"), "{e}");
    let e = plan_of(
        "FROM scratch AS a\nCOPY --from=b /a /b\nFROM scratch AS b\n",
        &[],
        Some("a"),
    )
    .unwrap_err();
    assert!(e.message.contains("later one"), "{e}");
    let e = plan_of("FROM scratch\nCOPY --from=Not_A_Ref! /a /b\n", &[], None).unwrap_err();
    assert!(e.message.contains("undefined stage"), "{e}");
    let e = plan_of("FROM $NOPE\n", &[], None).unwrap_err();
    assert!(e.message.contains("should not be blank"), "{e}");
    let e = plan_of("FROM scratch\nWORKDIR ${DIR:?set DIR}\n", &[], None).unwrap_err();
    assert_eq!(
        (e.line, e.message.contains("DIR: set DIR")),
        (2, true),
        "{e}"
    );
}

#[test]
fn unused_build_args_warn_proxy_args_do_not() {
    let p = plan_of(
        "FROM scratch\nARG USED\n",
        &[("USED", "1"), ("EXTRA", "2"), ("HTTP_PROXY", "p")],
        None,
    )
    .unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].message.contains("EXTRA") && !p.warnings[0].message.contains("USED"));
}

#[test]
fn onbuild_triggers_of_a_base_run_after_from() {
    let mut opts = PlanOptions::default();
    let base = Config {
        onbuild: vec!["RUN echo triggered".into()],
        ..Config::default()
    };
    opts.bases.insert("parent".into(), base);
    let p = plan(&df("FROM parent\nRUN echo own\n"), &opts).unwrap();
    let texts: Vec<_> = p.stages[0].steps.iter().map(|s| s.text.clone()).collect();
    assert_eq!(texts, ["RUN echo triggered", "RUN echo own"]);
    assert!(
        p.stages[0].config.onbuild.is_empty(),
        "triggers are consumed, not inherited"
    );
}

#[test]
fn heredoc_runs() {
    let p = plan_of("FROM scratch\nRUN <<EOF\necho hi\nEOF\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\nRUN cat <<'A' > /f\n$x\nA\n", &[], None)
        .unwrap();
    let runs: Vec<&RunStep> = p.stages[0]
        .steps
        .iter()
        .map(|s| match &s.kind {
            StepKind::Run(r) => r,
            k => panic!("{k:?}"),
        })
        .collect();
    assert_eq!(runs[0].argv, ["/bin/sh", "-c", "echo hi\n"]);
    // BuildKit: the file /dev/pipes/NAME, run as the shell's command.
    assert_eq!(
        runs[1].script,
        Some((
            "EOF".to_string(),
            "#!/usr/bin/env python3\nprint(1)\n".to_string()
        ))
    );
    assert_eq!(runs[1].argv, ["/bin/sh", "-c", "/dev/pipes/EOF"]);
    assert_eq!(runs[2].argv, ["/bin/sh", "-c", "cat <<'A' > /f\n$x\nA\n"]);
}

#[test]
fn copy_heredoc_expands_unless_quoted() {
    let p = plan_of(
        "FROM scratch\nARG N=kiln\nCOPY <<A <<'B' /etc/\nhello $N\nA\nhello $N\nB\n",
        &[],
        None,
    )
    .unwrap();
    match &p.stages[0].steps[0].kind {
        StepKind::Copy(c) => {
            assert_eq!(c.copy.inline[0].data, "hello kiln\n");
            assert_eq!(c.copy.inline[1].data, "hello $N\n");
            assert_eq!(c.dest, "/etc/");
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn metadata_does_not_change_later_keys() {
    let key_of = |src: &str| {
        let p = plan_of(src, &[], None).unwrap();
        let root = base_key("scratch");
        p.stages[0]
            .steps
            .iter()
            .fold(root, |k, s| s.key(&k, &Canon::new()))
    };
    let a = key_of("FROM scratch\nRUN x\nCOPY a /b\n");
    assert_eq!(
        a,
        key_of("FROM scratch\nLABEL l=1\nCMD [\"y\"]\nEXPOSE 80\nRUN x\nCOPY a /b\n")
    );
    assert_ne!(
        a,
        key_of("FROM scratch\nENV E=1\nRUN x\nCOPY a /b\n"),
        "ENV reaches RUN"
    );
    assert_eq!(
        key_of("FROM scratch\nUSER nobody\nCOPY a /b\n"),
        key_of("FROM scratch\nCOPY a /b\n"),
        "USER does not reach COPY"
    );
    assert_ne!(
        key_of("FROM scratch\nUSER nobody\nRUN x\n"),
        key_of("FROM scratch\nRUN x\n")
    );
}

/// One keyed or unkeyed change to a RUN step's inputs.
#[derive(Debug, Clone)]
enum Change {
    Env(String),
    Arg(String),
    Workdir(String),
    User(String),
    Network,
    Command(String),
    Proxy(String),
    Label(String),
}

fn change() -> impl Strategy<Value = Change> {
    let word = "[a-z0-9]{1,8}";
    prop_oneof![
        word.prop_map(Change::Env),
        word.prop_map(Change::Arg),
        word.prop_map(Change::Workdir),
        word.prop_map(Change::User),
        Just(Change::Network),
        word.prop_map(Change::Command),
        word.prop_map(Change::Proxy),
        word.prop_map(Change::Label),
    ]
}

fn render(c: Option<&Change>) -> (String, Vec<(String, String)>) {
    let mut env = "ENV E=base\n".to_string();
    let mut arg = "ARG A=base\n".to_string();
    let mut workdir = "WORKDIR /w\n".to_string();
    let mut user = String::new();
    let mut net = "";
    let mut cmd = "make".to_string();
    let mut label = String::new();
    let mut args = vec![("HTTP_PROXY".to_string(), "http://proxy".to_string())];
    match c {
        Some(Change::Env(v)) => env = format!("ENV E=base{v}\n"),
        Some(Change::Arg(v)) => arg = format!("ARG A=base{v}\n"),
        Some(Change::Workdir(v)) => workdir = format!("WORKDIR /w{v}\n"),
        Some(Change::User(v)) => user = format!("USER u{v}\n"),
        Some(Change::Network) => net = "--network=none ",
        Some(Change::Command(v)) => cmd = format!("make {v}"),
        Some(Change::Proxy(v)) => args[0].1 = format!("http://{v}"),
        Some(Change::Label(v)) => label = format!("LABEL l={v}\n"),
        None => {}
    }
    (
        format!("FROM scratch\n{env}{arg}{workdir}{user}{label}RUN {net}{cmd}\n"),
        args,
    )
}

fn last_key(src: &str, args: &[(String, String)]) -> StepKey {
    let opts = PlanOptions {
        build_args: args.iter().cloned().collect(),
        ..PlanOptions::default()
    };
    let p = plan(&df(src), &opts).unwrap();
    let st = &p.stages[p.target];
    st.steps
        .iter()
        .fold(base_key("scratch"), |k, s| s.key(&k, &Canon::new()))
}

proptest! {
    #[test]
    fn keys_are_stable_and_react_to_keyed_fields_only(c in change()) {
        let (base_src, base_args) = render(None);
        let base = last_key(&base_src, &base_args);
        // Same inputs, same key (planning twice).
        prop_assert_eq!(base, last_key(&base_src, &base_args));
        let (src, args) = render(Some(&c));
        let k = last_key(&src, &args);
        match c {
            Change::Proxy(_) | Change::Label(_) => prop_assert_eq!(k, base, "unkeyed change moved the key"),
            _ => prop_assert_ne!(k, base, "keyed change kept the key"),
        }
    }

    #[test]
    fn copy_keys_react_to_every_keyed_field(field in 0usize..7, v in "[a-z]{1,6}") {
        // Fields 0-5 are keyed; 6 adds metadata (LABEL, USER) that COPY must ignore.
        let mut parts = ["", "", "", "", "src", "/dst", ""].map(String::from);
        let base = format!("FROM scratch\nCOPY {} {} {} {} {} {}\n", parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]);
        match field {
            0 => parts[0] = format!("--chown={v}"),
            1 => parts[1] = "--chmod=0755".into(),
            2 => parts[2] = "--link".into(),
            3 => parts[3] = format!("--exclude={v}"),
            4 => parts[4] = format!("src{v}"),
            5 => parts[5] = format!("/dst{v}"),
            _ => parts[6] = format!("LABEL l={v}\nUSER {v}\n"),
        }
        let changed = format!("FROM scratch\n{}COPY {} {} {} {} {} {}\n", parts[6], parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]);
        let kb = last_key(&base, &[]);
        if field == 6 {
            prop_assert_eq!(kb, last_key(&changed, &[]));
        } else {
            prop_assert_ne!(kb, last_key(&changed, &[]));
        }
    }

    #[test]
    fn inputs_are_keyed(a in proptest::collection::vec(any::<u8>(), 0..32), b in proptest::collection::vec(any::<u8>(), 0..32)) {
        let p = plan_of("FROM scratch\nCOPY . /\n", &[], None).unwrap();
        let step = &p.stages[0].steps[0];
        let (mut ia, mut ib) = (Canon::new(), Canon::new());
        ia.bytes(0, &a);
        ib.bytes(0, &b);
        let parent = base_key("scratch");
        prop_assert_eq!(step.key(&parent, &ia) == step.key(&parent, &ib), a == b);
    }
}

/// History entries as BuildKit's dockerfile2llb writes them (BuildKit 0.13 in Docker 26.1: COPY
/// shows --chown and --chmod; HEALTHCHECK in the five-field form).
#[test]
fn history_entries_read_as_buildkit_writes_them() {
    let p = plan_of(
        "FROM scratch\nARG VERSION=1.0 OTHER\nENV APP=/srv/app PATH=/x:$PATH\nLABEL v=$VERSION \"description\"=\"a test\"\n\
         RUN echo hi\nWORKDIR $APP\nCOPY --chown=1:1 a b/ ./\nUSER app\nSHELL [\"/bin/sh\", \"-ec\"]\nEXPOSE 80 53/udp\n\
         VOLUME /data /logs\nSTOPSIGNAL SIGQUIT\nHEALTHCHECK --interval=90s --timeout=1500ms --retries=2 CMD true\n\
         ONBUILD RUN x\nCMD [\"serve\", \"it\"]\nENTRYPOINT /bin/run\nMAINTAINER me\n",
        &[("OTHER", "o")],
        None,
    )
    .unwrap();
    let h: Vec<&str> = p.stages[0]
        .history
        .iter()
        .map(|(_, t, _)| t.as_str())
        .collect();
    assert_eq!(
        h,
        vec![
            "ARG VERSION=1.0 OTHER",
            "ENV APP=/srv/app PATH=/x:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LABEL v=1.0 description=a test",
            "RUN |2 VERSION=1.0 OTHER=o /bin/sh -c echo hi # buildkit",
            "WORKDIR /srv/app",
            "COPY --chown=1:1 a b/ ./ # buildkit",
            "USER app",
            "SHELL [/bin/sh -ec]",
            "EXPOSE map[53/udp:{} 80/tcp:{}]",
            "VOLUME [/data /logs]",
            "STOPSIGNAL SIGQUIT",
            "HEALTHCHECK &{[\"CMD-SHELL\" \"true\"] \"1m30s\" \"1.5s\" \"0s\" \"0s\" '\\x02'}",
            "CMD [\"serve\" \"it\"]",
            "ENTRYPOINT [\"/bin/sh\" \"-ec\" \"/bin/run\"]",
            "MAINTAINER me",
        ]
    );
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(1_500), "1.5µs");
    assert_eq!(go_duration(250_000_000), "250ms");
}
