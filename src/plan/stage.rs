//! Planning one stage: each instruction becomes a step with its canonical definition, or a change to the stage's config and history.

#[allow(unused_imports)]
use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn plan_stage(
    df: &Dockerfile,
    opts: &PlanOptions,
    lx: &Lexer,
    s: &RawStage,
    bases: &[Base],
    platforms: &[Option<String>],
    global: &[(String, String)],
    raw: &[RawStage],
    planned: &[Stage],
    used_args: &mut BTreeSet<String>,
) -> Result<(Stage, BTreeSet<usize>), DockerfileError> {
    let base = bases[s.position].clone();
    let mut deps = BTreeSet::new();
    let (mut config, triggers) = match &base {
        // BuildKit's empty image config has WorkingDir "/".
        Base::Scratch => (
            Config {
                workdir: "/".into(),
                ..Config::default()
            },
            Vec::new(),
        ),
        Base::Image(r) => {
            let c = opts.bases.get(r).cloned().unwrap_or_default();
            let t = c.onbuild.clone();
            (c, t)
        }
        Base::Stage(p) => {
            deps.insert(*p);
            let c = planned[*p].config.clone();
            let t = c.onbuild.clone();
            (c, t)
        }
    };
    // Triggers run once, in the stage built from the image; they are not inherited further.
    config.onbuild.clear();
    if config.get_env("PATH").is_none() {
        config.env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let mut stage = Stage {
        position: s.position,
        name: s.name.clone(),
        line: s.from.line,
        base,
        platform: platforms[s.position].clone(),
        steps: Vec::new(),
        config,
        history: Vec::new(),
        args: Vec::new(),
    };
    // Trigger instructions, parsed like Dockerfile lines, placed at the FROM line.
    let mut trigger_locs = Vec::new();
    for t in &triggers {
        let ast = parser::parse(t)
            .map_err(|e| df.error_at(s.from.line, format!("ONBUILD trigger {t:?}: {e}")))?;
        for node in &ast.children {
            let ins = instructions::from_node(node)
                .map_err(|e| df.error_at(s.from.line, format!("ONBUILD trigger {t:?}: {e}")))?;
            trigger_locs.push(Located {
                instruction: ins,
                line: s.from.line,
                end_line: s.from.end_line,
                original: t.clone(),
            });
        }
    }
    // A stage FROM an earlier stage inherits the args that stage had in scope.
    let mut args: Vec<(String, String)> = match &stage.base {
        Base::Stage(p) => planned[*p].args.clone(),
        _ => Vec::new(),
    };
    // The stage's ARG declarations in order, with their values, as BuildKit lists them in a
    // RUN's history entry (`RUN |2 A=1 B=2 /bin/sh -c ...`).
    // Inherited args are in scope but not listed until declared again (BuildKit).
    let mut stage_args: Vec<(String, Option<String>)> = Vec::new();
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let mut cmd_set = false;
    for l in trigger_locs.iter().chain(s.body.iter()) {
        let at = |m: String| df.error_at(l.line, m);
        let expand = |w: &str, env: &[(String, String)], args: &[(String, String)]| {
            lx.process_word(w, &Scope { env, args })
                .map_err(|e| df.error_at(l.line, e.to_string()))
        };
        let text = l.original.trim().to_string();
        match &l.instruction {
            Instruction::From { .. } => unreachable!("stages are split at FROM"),
            Instruction::Arg(list) => {
                let mut shown = Vec::new();
                for (k, default) in list {
                    // The name itself may hold variables: `ARG ${src}=x` (BuildKit expands it).
                    let k = &expand(k, &stage.config.env, &args)?;
                    used_args.insert(k.clone());
                    declared.insert(k.clone());
                    let default = default
                        .as_deref()
                        .map(|d| expand(d, &stage.config.env, &args))
                        .transpose()?;
                    shown.push(match &default {
                        Some(d) => format!("{k}={d}"),
                        None => k.clone(),
                    });
                    let v = if let Some(v) = opts.build_args.get(k) {
                        Some(v.clone())
                    } else if default.is_some() {
                        default
                    } else {
                        // Declared again without a default: the value in scope stays.
                        args.lookup(k)
                            .or_else(|| global.lookup(k))
                            .map(str::to_string)
                    };
                    args.retain(|(ak, _)| ak != k);
                    stage_args.push((k.clone(), v.clone()));
                    if let Some(v) = v {
                        args.push((k.clone(), v));
                    }
                }
                stage
                    .history
                    .push((l.line, format!("ARG {}", shown.join(" ")), false));
            }
            Instruction::Env(pairs) => {
                let before = stage.config.env.clone();
                let mut shown = String::from("ENV");
                for (k, v) in pairs {
                    let k = expand(k, &before, &args)?;
                    let v = expand(v, &before, &args)?;
                    shown.push_str(&format!(" {k}={v}"));
                    stage.config.set_env(&k, v);
                }
                stage.history.push((l.line, shown, false));
            }
            Instruction::Label(pairs) => {
                let mut shown = String::from("LABEL");
                for (k, v) in pairs {
                    let k = expand(k, &stage.config.env, &args)?;
                    let v = expand(v, &stage.config.env, &args)?;
                    shown.push_str(&format!(" {k}={v}"));
                    stage.config.labels.insert(k, v);
                }
                stage.history.push((l.line, shown, false));
            }
            Instruction::Cmd(c) => {
                cmd_set = true;
                let argv = command_argv(c, &stage.config);
                let shown = format!("CMD {}", go_quote_list(&argv));
                stage.config.cmd = Some(argv);
                stage.history.push((l.line, shown, false));
            }
            Instruction::Entrypoint(c) => {
                let argv = command_argv(c, &stage.config);
                let shown = format!("ENTRYPOINT {}", go_quote_list(&argv));
                stage.config.entrypoint = Some(argv);
                // Docker: a new ENTRYPOINT drops the CMD inherited from the base.
                if !cmd_set {
                    stage.config.cmd = None;
                }
                stage.history.push((l.line, shown, false));
            }
            Instruction::Shell(sh) => {
                stage.config.shell = sh.clone();
                stage
                    .history
                    .push((l.line, format!("SHELL [{}]", sh.join(" ")), false));
            }
            Instruction::Expose(ports) => {
                let mut these = BTreeSet::new();
                for p in ports {
                    for w in lx
                        .process_words(
                            p,
                            &Scope {
                                env: &stage.config.env,
                                args: &args,
                            },
                        )
                        .map_err(|e| at(e.to_string()))?
                    {
                        let port = normalize_port(&w).map_err(at)?;
                        these.insert(port.clone());
                        stage.config.exposed.insert(port);
                    }
                }
                // Go's %v of a map: sorted keys, `map[53/udp:{} 80/tcp:{}]`.
                let shown: Vec<String> = these.iter().map(|p| format!("{p}:{{}}")).collect();
                stage
                    .history
                    .push((l.line, format!("EXPOSE map[{}]", shown.join(" ")), false));
            }
            Instruction::Volume(vols) => {
                let mut shown = Vec::new();
                for v in vols {
                    let v = expand(v, &stage.config.env, &args)?;
                    if v.is_empty() {
                        return Err(at("VOLUME specified can not be an empty string".into()));
                    }
                    shown.push(v.clone());
                    stage.config.volumes.insert(v);
                }
                stage
                    .history
                    .push((l.line, format!("VOLUME [{}]", shown.join(" ")), false));
            }
            Instruction::User(u) => {
                stage.config.user = expand(u, &stage.config.env, &args)?;
                let shown = format!("USER {}", stage.config.user);
                stage.history.push((l.line, shown, false));
            }
            Instruction::StopSignal(sig) => {
                let sig = expand(sig, &stage.config.env, &args)?;
                // BuildKit refuses an unknown signal at build time (after expansion, so a
                // variable naming a signal stays allowed).
                if crate::sys::proc::signal_number(&sig).is_none() {
                    return Err(at(format!("failed to process \"{sig}\": invalid signal")));
                }
                stage
                    .history
                    .push((l.line, format!("STOPSIGNAL {sig}"), false));
                stage.config.stop_signal = Some(sig);
            }
            Instruction::Maintainer(m) => {
                stage.config.author = Some(m.clone());
                stage
                    .history
                    .push((l.line, format!("MAINTAINER {m}"), false));
            }
            Instruction::Healthcheck(h) => {
                let shown = healthcheck_history(h);
                // Each HEALTHCHECK replaces the whole healthcheck (BuildKit): a zero field is
                // absent, never the earlier one's (Docker merges with the image's only when a
                // container starts).
                stage.config.healthcheck = Some(h.clone());
                stage.history.push((l.line, shown, false));
            }
            Instruction::Onbuild(t) => {
                // BuildKit records no history entry for ONBUILD.
                stage.config.onbuild.push(t.clone());
            }
            Instruction::Workdir(w) => {
                let w = expand(w, &stage.config.env, &args)?;
                let abs = resolve_path(&stage.config.workdir(), &w);
                stage.config.workdir = abs.clone();
                // `WORKDIR /` makes nothing (BuildKit: no mkdir, an empty_layer entry).
                if abs == "/" {
                    stage
                        .history
                        .push((l.line, format!("WORKDIR {abs}"), false));
                    continue;
                }
                let def = schema::workdir_definition(&abs, &stage.config.user);
                stage.steps.push(Step {
                    line: l.line,
                    end_line: l.end_line,
                    text: text.clone(),
                    kind: StepKind::Workdir(abs.clone(), stage.config.user.clone()),
                    definition: def,
                });
                stage.history.push((l.line, format!("WORKDIR {abs}"), true));
            }
            Instruction::Run(run) => {
                let scope_args = args.clone();
                let mut env = stage.config.env.clone();
                let mut unkeyed = BTreeSet::new();
                for (k, v) in &scope_args {
                    if !env.iter().any(|(ek, _)| ek == k) {
                        env.push((k.clone(), v.clone()));
                    }
                }
                for p in PROXY_ARGS {
                    if let Some(v) = opts.build_args.get(*p) {
                        if !declared.contains(*p) && !env.iter().any(|(ek, _)| ek == p) {
                            env.push((p.to_string(), v.clone()));
                            unkeyed.insert(p.to_string());
                        }
                    }
                }
                let mut mounts = Vec::new();
                let mut mount_sources = Vec::new();
                for m in &run.mounts {
                    let m = expand(m, &stage.config.env, &args)?;
                    let mount = parse_mount(&m).map_err(at)?;
                    if let Some(from) = mount.from() {
                        let src = resolve_from(from, s.position, raw).map_err(at)?;
                        if let Source::Stage(p) = src {
                            deps.insert(p);
                        }
                        mount_sources.push(src);
                    }
                    mounts.push(mount);
                }
                let network = match run.network.as_deref() {
                    Some("none") => Network::None,
                    _ => Network::Host,
                };
                let (argv, script) = run_argv(run, &stage.config);
                let shown = run_history(&argv, &stage_args, &stage.config.env);
                let keyed: Vec<(String, String)> = env
                    .iter()
                    .filter(|(k, _)| !unkeyed.contains(k))
                    .cloned()
                    .collect();
                let mount_fields: Vec<(String, Vec<(String, String)>)> = mounts
                    .iter()
                    .map(|m: &crate::frontend::instructions::Mount| {
                        let f = m.fields.iter().map(|(k, v)| (k.clone(), v.clone()));
                        (m.type_name().to_string(), f.collect())
                    })
                    .collect();
                let def = schema::run_definition(&schema::RunDefinition {
                    argv: &argv,
                    script: script.as_ref().map(|(_, body)| body.as_str()),
                    env: &keyed,
                    workdir: &stage.config.workdir(),
                    user: &stage.config.user,
                    network_none: network == Network::None,
                    insecure: run.security.as_deref() == Some("insecure"),
                    mounts: &mount_fields,
                });
                stage.steps.push(Step {
                    line: l.line,
                    end_line: l.end_line,
                    text: text.clone(),
                    kind: StepKind::Run(RunStep {
                        argv,
                        script,
                        env,
                        unkeyed,
                        workdir: stage.config.workdir(),
                        user: stage.config.user.clone(),
                        network,
                        insecure: run.security.as_deref() == Some("insecure"),
                        mounts,
                        mount_sources,
                    }),
                    definition: def,
                });
                stage.history.push((l.line, shown, true));
            }
            Instruction::Copy(c) => {
                let env = stage.config.env.clone();
                let mut c = c.clone();
                let ex = |w: &str| expand(w, &env, &args);
                c.sources = c.sources.iter().map(|w| ex(w)).collect::<Result<_, _>>()?;
                c.dest = ex(&c.dest)?;
                c.chown = c.chown.as_deref().map(ex).transpose()?;
                c.chmod = c.chmod.as_deref().map(ex).transpose()?;
                c.from = c.from.as_deref().map(ex).transpose()?;
                c.exclude = c.exclude.iter().map(|w| ex(w)).collect::<Result<_, _>>()?;
                if let Some(m) = &c.chmod {
                    if u32::from_str_radix(m, 8).map_or(true, |v| v > 0o7777) {
                        return Err(at(format!(
                            "invalid --chmod={m}: want an octal mode such as 0755"
                        )));
                    }
                }
                let mut heredoc_lx = *lx;
                heredoc_lx.skip_quotes = true;
                for src in &mut c.inline {
                    if src.expand {
                        src.data = heredoc_lx
                            .process_word(
                                &src.data,
                                &Scope {
                                    env: &env,
                                    args: &args,
                                },
                            )
                            .map_err(|e| at(e.to_string()))?;
                    }
                }
                if c.add && c.from.is_some() {
                    return Err(at("ADD does not support --from; use COPY --from".into()));
                }
                let source = match &c.from {
                    None => Source::Context,
                    Some(f) => resolve_from(f, s.position, raw).map_err(at)?,
                };
                if let Source::Stage(p) = source {
                    deps.insert(p);
                }
                let mut dest = resolve_path(&stage.config.workdir(), &c.dest);
                if (c.dest.ends_with('/') || c.dest == "." || c.dest.ends_with("/."))
                    && !dest.ends_with('/')
                {
                    dest.push('/');
                }
                let heredocs: Vec<(&str, &str)> = c
                    .inline
                    .iter()
                    .map(|h| (h.path.as_str(), h.data.as_str()))
                    .collect();
                let def = schema::copy_definition(&schema::CopyDefinition {
                    add: c.add,
                    sources: &c.sources,
                    dest: &dest,
                    chown: c.chown.as_deref(),
                    chmod: c.chmod.as_deref(),
                    link: c.link,
                    parents: c.parents,
                    exclude: &c.exclude,
                    checksum: c.checksum.as_deref(),
                    keep_git_dir: c.keep_git_dir,
                    unpack: c.unpack,
                    heredocs: &heredocs,
                });
                // BuildKit 0.13: the instruction, --chown and --chmod as expanded (no other flag),
                // the sources, the heredocs as `<<NAME`, the destination.
                let mut shown = String::from(if c.add { "ADD" } else { "COPY" });
                if let Some(o) = &c.chown {
                    shown.push_str(&format!(" --chown={o}"));
                }
                if let Some(m) = &c.chmod {
                    shown.push_str(&format!(" --chmod={m}"));
                }
                for src in &c.sources {
                    shown.push(' ');
                    shown.push_str(src);
                }
                for i in &c.inline {
                    shown.push_str(&format!(" <<{}", i.path));
                }
                shown.push(' ');
                shown.push_str(&c.dest);
                shown.push_str(" # buildkit");
                stage.steps.push(Step {
                    line: l.line,
                    end_line: l.end_line,
                    text: text.clone(),
                    kind: StepKind::Copy(CopyStep {
                        copy: c,
                        dest,
                        source,
                    }),
                    definition: def,
                });
                stage.history.push((l.line, shown, true));
            }
        }
    }
    stage.args = args;
    Ok((stage, deps))
}
