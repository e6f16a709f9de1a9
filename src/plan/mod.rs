//! Planning: a parsed Dockerfile, build args and a target in; stages and keyed steps out.
//! Pure: no I/O. What a build must look up (base images, context files) comes in through
//! [`PlanOptions::bases`] or is left as an input the builder resolves before computing keys.
//!
//! What planning settles, as BuildKit does:
//! - Stages by name (case-insensitive) and by index; `--target` (default: the last stage);
//!   only the stages the target reaches through `FROM <stage>`, `COPY --from` and
//!   `RUN --mount=from=` are kept.
//! - ARG scoping: ARGs before the first FROM are global and usable in FROM lines; inside a
//!   stage an ARG is visible from its declaration on, and `ARG NAME` without a default
//!   re-declares a global one with its value. `--build-arg` overrides defaults. The predefined
//!   platform ARGs (`TARGETPLATFORM`, `TARGETOS`, `TARGETARCH`, `TARGETVARIANT`,
//!   `BUILDPLATFORM`, `BUILDOS`, `BUILDARCH`, `BUILDVARIANT`) are linux/amd64, global, and
//!   visible in a stage once declared. Proxy args (`HTTP_PROXY`, ...) given with
//!   `--build-arg` reach RUN's environment without being declared, and are not keyed unless
//!   declared.
//! - ENV: every value of one ENV instruction expands against the environment from *before*
//!   it (`ENV A=1 B=$A` gives B the old A); ENV beats an ARG of the same name.
//! - Word expansion for ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME,
//!   WORKDIR, ARG defaults and the `--from`/`--chown`/`--chmod`/`--mount`/`--platform` flags;
//!   RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK are left to the shell at run time.
//! - ONBUILD triggers of a base (an image's from [`PlanOptions::bases`], or a stage's own)
//!   run right after its FROM.
//!
//! Each layer-making step (RUN, COPY, ADD, WORKDIR) gets a canonical definition; the key
//! table is in [`key`]. Metadata instructions only change [`Config`].

use std::collections::{BTreeMap, BTreeSet};

use crate::frontend::instructions::{self, parse_mount, Copy, Healthcheck};
use crate::frontend::quote::go_quote_list;
use crate::frontend::shell::{Lexer, Lookup};
use crate::frontend::{
    parser, Command, Dockerfile, DockerfileError, Instruction, Located, Warning,
};
use crate::key::schema;
pub use crate::key::{step_key, Canon, StepKey, KEY_VERSION};

/// The platform kiln builds for.
pub const PLATFORM: (&str, &str, &str) = ("linux", "amd64", "");

/// The PATH BuildKit gives a Linux image that has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Build args that reach RUN without an ARG and are never keyed unless declared.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The image configuration a stage builds up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Environment, in definition order (a redefinition replaces in place).
    pub env: Vec<(String, String)>,
    /// CMD.
    pub cmd: Option<Vec<String>>,
    /// ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// USER.
    pub user: String,
    /// WORKDIR (absolute); empty means `/`.
    pub workdir: String,
    /// LABELs.
    pub labels: BTreeMap<String, String>,
    /// EXPOSEd ports, `80/tcp` form.
    pub exposed: BTreeSet<String>,
    /// VOLUMEs.
    pub volumes: BTreeSet<String>,
    /// STOPSIGNAL.
    pub stop_signal: Option<String>,
    /// HEALTHCHECK.
    pub healthcheck: Option<Healthcheck>,
    /// SHELL; empty means `["/bin/sh", "-c"]`.
    pub shell: Vec<String>,
    /// ONBUILD triggers recorded for images built from this one.
    pub onbuild: Vec<String>,
    /// MAINTAINER.
    pub author: Option<String>,
}

impl Config {
    /// The shell, defaulted.
    pub fn shell(&self) -> Vec<String> {
        if self.shell.is_empty() {
            vec!["/bin/sh".into(), "-c".into()]
        } else {
            self.shell.clone()
        }
    }

    /// The working directory, defaulted.
    pub fn workdir(&self) -> String {
        if self.workdir.is_empty() {
            "/".into()
        } else {
            self.workdir.clone()
        }
    }

    fn set_env(&mut self, k: &str, v: String) {
        match self.env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v,
            None => self.env.push((k.to_string(), v)),
        }
    }

    fn get_env(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v.as_str())
    }
}

impl From<&crate::image::oci::RunConfig> for Config {
    /// The parts of an image's config that planning needs (env, workdir, user, shell, ONBUILD
    /// triggers...), read from the OCI/Docker config JSON.
    fn from(rc: &crate::image::oci::RunConfig) -> Config {
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Config {
            env: rc
                .env
                .iter()
                .flatten()
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (e.clone(), String::new()),
                })
                .collect(),
            cmd: rc.cmd.clone(),
            entrypoint: rc.entrypoint.clone(),
            user: rc.user.clone().unwrap_or_default(),
            workdir: rc.working_dir.clone().unwrap_or_default(),
            labels: rc.labels.clone().unwrap_or_default(),
            exposed: rc
                .exposed_ports
                .iter()
                .flat_map(|m| m.keys().cloned())
                .collect(),
            volumes: rc.volumes.iter().flat_map(|m| m.keys().cloned()).collect(),
            stop_signal: rc.stop_signal.clone(),
            healthcheck: rc.extra.get("Healthcheck").map(|h| {
                let n = |k: &str| h.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                Healthcheck {
                    test: strings(h.get("Test")),
                    interval: n("Interval"),
                    timeout: n("Timeout"),
                    start_period: n("StartPeriod"),
                    start_interval: n("StartInterval"),
                    retries: n("Retries"),
                }
            }),
            shell: strings(rc.extra.get("Shell")),
            onbuild: strings(rc.extra.get("OnBuild")),
            author: None,
        }
    }
}

impl Config {
    /// Writes this configuration into an image config's `config` object as BuildKit does
    /// (empty values absent; unknown fields of `rc` kept).
    pub fn write_to(&self, rc: &mut crate::image::oci::RunConfig) {
        let c = self;
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        rc.user = opt(&c.user);
        rc.working_dir = opt(&c.workdir);
        rc.env =
            (!c.env.is_empty()).then(|| c.env.iter().map(|(k, v)| format!("{k}={v}")).collect());
        rc.cmd = c.cmd.clone();
        rc.entrypoint = c.entrypoint.clone();
        rc.labels = (!c.labels.is_empty()).then(|| c.labels.clone());
        let set = |v: &BTreeSet<String>| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|p| (p.clone(), serde_json::json!({})))
                    .collect()
            })
        };
        rc.exposed_ports = set(&c.exposed);
        rc.volumes = set(&c.volumes);
        rc.stop_signal = c.stop_signal.clone();
        rc.extra.remove("OnBuild");
        if !c.onbuild.is_empty() {
            rc.extra
                .insert("OnBuild".into(), serde_json::json!(c.onbuild));
        }
        if !c.shell.is_empty() {
            rc.extra.insert("Shell".into(), serde_json::json!(c.shell));
        }
        if let Some(h) = &c.healthcheck {
            let mut m = serde_json::Map::new();
            m.insert("Test".into(), serde_json::json!(h.test));
            for (k, v) in [
                ("Interval", h.interval),
                ("Timeout", h.timeout),
                ("StartPeriod", h.start_period),
                ("StartInterval", h.start_interval),
                ("Retries", h.retries),
            ] {
                if v != 0 {
                    m.insert(k.into(), serde_json::json!(v));
                }
            }
            rc.extra
                .insert("Healthcheck".into(), serde_json::Value::Object(m));
        }
    }
}

/// The instructions `kiln import --change` takes (those Docker's commit and import accept).
pub const CHANGE_INSTRUCTIONS: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "USER",
    "VOLUME",
    "WORKDIR",
    "STOPSIGNAL",
    "HEALTHCHECK",
];

/// The configuration `kiln import --change` values make: each a Dockerfile line, parsed and
/// applied by the same frontend and planner as a build, and nothing else (no default PATH or
/// WorkingDir that no change set, as `docker import`). Another instruction is an error naming it.
pub fn config_from_changes(changes: &[String]) -> Result<Config, DockerfileError> {
    let text = format!("FROM scratch\n{}\n", changes.join("\n"));
    let df = Dockerfile::parse("--change", text.as_bytes())?;
    let mut sets_workdir = false;
    let mut sets_path = false;
    for l in df.instructions.iter().skip(1) {
        let kw = l.instruction.keyword();
        if !CHANGE_INSTRUCTIONS.contains(&kw) {
            return Err(df.error_at(
                l.line,
                format!(
                    "{kw} is not allowed in --change (allowed: {})",
                    CHANGE_INSTRUCTIONS.join(", ")
                ),
            ));
        }
        match &l.instruction {
            Instruction::Workdir(_) => sets_workdir = true,
            Instruction::Env(pairs) => sets_path |= pairs.iter().any(|(k, _)| k == "PATH"),
            _ => {}
        }
    }
    let plan = plan(&df, &PlanOptions::default())?;
    let mut config = plan.stages[plan.target].config.clone();
    if !sets_workdir {
        config.workdir.clear();
    }
    if !sets_path {
        config.env.retain(|(k, _)| k != "PATH");
    }
    Ok(config)
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`.
    Scratch,
    /// An image reference, after expansion.
    Image(String),
    /// An earlier stage, by index in [`Plan::stages`].
    Stage(usize),
}

/// Where COPY/ADD or a bind mount reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The build context.
    Context,
    /// An earlier stage, by index in [`Plan::stages`].
    Stage(usize),
    /// An image reference.
    Image(String),
}

/// How a RUN reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network (default, so package installs work).
    Host,
    /// No network.
    None,
}

/// A RUN step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStep {
    /// The argv after shell wrapping.
    pub argv: Vec<String>,
    /// When the command is a single `#!` heredoc: the file to write under /dev/pipes (the
    /// heredoc's name) and its content; `argv` runs it through the shell, as BuildKit does.
    pub script: Option<(String, String)>,
    /// The full environment (ENV, ARGs in scope, proxy args).
    pub env: Vec<(String, String)>,
    /// The names in `env` that are not keyed (undeclared proxy args).
    pub unkeyed: BTreeSet<String>,
    /// Working directory.
    pub workdir: String,
    /// USER (may be empty: root).
    pub user: String,
    /// Network mode.
    pub network: Network,
    /// `--security=insecure`.
    pub insecure: bool,
    /// `--mount` definitions, parsed, after expansion.
    pub mounts: Vec<instructions::Mount>,
    /// Sources of bind/cache mounts with `from=`.
    pub mount_sources: Vec<Source>,
}

/// A COPY or ADD step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStep {
    /// The instruction, words expanded.
    pub copy: Copy,
    /// Destination, absolute.
    pub dest: String,
    /// Where the sources come from.
    pub source: Source,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// RUN.
    Run(RunStep),
    /// COPY/ADD.
    Copy(CopyStep),
    /// WORKDIR: make sure the directory (absolute) exists, created owned by the USER in force
    /// (as BuildKit does).
    Workdir(String, String),
}

/// One layer-making step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based first line of the instruction (of FROM for an ONBUILD trigger).
    pub line: usize,
    /// 1-based last line.
    pub end_line: usize,
    /// The instruction as written, for progress and history (`RUN apt-get update`).
    pub text: String,
    /// What it does.
    pub kind: StepKind,
    /// The canonical definition that is hashed into the key.
    pub definition: Canon,
}

impl Step {
    /// The step's key, given its parent's key and the digest of its resolved inputs (for
    /// COPY/ADD: the selected files' content digest and the `--from` source's identity; RUN:
    /// the identities of mount sources). The builder encodes those in `inputs`.
    pub fn key(&self, parent: &StepKey, inputs: &Canon) -> StepKey {
        step_key(Some(parent), &self.definition, inputs)
    }
}

/// The key of a stage's base: blake3 over the base's identity and the platform.
pub fn base_key(identity: &str) -> StepKey {
    crate::key::schema::from_key(identity, &platform_string())
}

fn platform_string() -> String {
    format!("{}/{}", PLATFORM.0, PLATFORM.1)
}

impl std::fmt::Debug for Canon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Canon({} bytes)", self.as_bytes().len())
    }
}

impl PartialEq for Canon {
    fn eq(&self, o: &Canon) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}

impl Eq for Canon {}

/// One stage.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Position in the Dockerfile (0-based), which `--from=N` refers to.
    pub position: usize,
    /// The stage name, lower-cased.
    pub name: Option<String>,
    /// Line of its FROM.
    pub line: usize,
    /// Its base.
    pub base: Base,
    /// `--platform` of FROM, expanded.
    pub platform: Option<String>,
    /// Layer-making steps, in order.
    pub steps: Vec<Step>,
    /// The final image configuration.
    pub config: Config,
    /// History entries for metadata instructions and steps, in order: (line, text, makes a layer).
    pub history: Vec<(usize, String, bool)>,
    /// The build args in scope at the stage's end, with their values: a stage built FROM this
    /// one starts with them (BuildKit: `FROM base AS dev` then `ARG NAME="$NAME-dev"` sees
    /// base's NAME).
    pub args: Vec<(String, String)>,
}

impl Stage {
    /// `name` or `#position`.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("#{}", self.position))
    }
}

/// What a plan needs to know.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--build-arg` values (a `None` value means "take it from the environment", resolved
    /// by the caller; here it reads as unset).
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// Known base images by reference as written after expansion: their configs (env,
    /// workdir, user, shell, ONBUILD triggers...). A base that is not here starts empty.
    pub bases: BTreeMap<String, Config>,
}

/// The result of planning.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The stages the target needs, in Dockerfile order.
    pub stages: Vec<Stage>,
    /// The target's index in `stages`.
    pub target: usize,
    /// Warnings found while planning (unused build args...).
    pub warnings: Vec<Warning>,
}

impl Plan {
    /// The image references the kept stages need (bases and `--from` images), sorted.
    pub fn image_refs(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for s in &self.stages {
            if let Base::Image(r) = &s.base {
                out.insert(r.clone());
            }
            for st in &s.steps {
                match &st.kind {
                    StepKind::Copy(CopyStep {
                        source: Source::Image(r),
                        ..
                    }) => {
                        out.insert(r.clone());
                    }
                    StepKind::Run(r) => {
                        for src in &r.mount_sources {
                            if let Source::Image(i) = src {
                                out.insert(i.clone());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        out.into_iter().collect()
    }
}

/// Variables visible to word expansion: ENV first, then ARGs.
struct Scope<'a> {
    env: &'a [(String, String)],
    args: &'a [(String, String)],
}

impl Lookup for Scope<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.env.lookup(name).or_else(|| self.args.lookup(name))
    }
}

fn predefined_args() -> Vec<(String, String)> {
    let p = platform_string();
    let (os, arch, variant) = PLATFORM;
    [
        ("TARGETPLATFORM", p.as_str()),
        ("TARGETOS", os),
        ("TARGETARCH", arch),
        ("TARGETVARIANT", variant),
        ("BUILDPLATFORM", p.as_str()),
        ("BUILDOS", os),
        ("BUILDARCH", arch),
        ("BUILDVARIANT", variant),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

struct RawStage<'a> {
    position: usize,
    name: Option<String>,
    from: &'a Located,
    image: String,
    platform: Option<String>,
    body: &'a [Located],
}

/// Plans `df`.
pub fn plan(df: &Dockerfile, opts: &PlanOptions) -> Result<Plan, DockerfileError> {
    let lx = Lexer::new(df.escape());
    let predefined = predefined_args();
    // Global ARGs (before the first FROM), with build-arg overrides.
    let first_from = df
        .instructions
        .iter()
        .position(|l| matches!(l.instruction, Instruction::From { .. }))
        .ok_or_else(|| {
            df.error_at(
                df.instructions.first().map_or(0, |l| l.line),
                "no FROM instruction: a Dockerfile must start a stage with FROM",
            )
        })?;
    let mut global: Vec<(String, String)> = predefined.clone();
    let mut declared: BTreeSet<String> = BTreeSet::new();
    for l in &df.instructions[..first_from] {
        match &l.instruction {
            Instruction::Arg(list) => {
                for (k, default) in list {
                    // The name itself may hold variables (BuildKit expands it).
                    let k = &lx
                        .process_word(
                            k,
                            &Scope {
                                env: &[],
                                args: &global,
                            },
                        )
                        .map_err(|e| df.error_at(l.line, e.to_string()))?;
                    declared.insert(k.clone());
                    let v = match opts.build_args.get(k) {
                        Some(v) => Some(v.clone()),
                        None => match default {
                            Some(d) => Some(
                                lx.process_word(
                                    d,
                                    &Scope {
                                        env: &[],
                                        args: &global,
                                    },
                                )
                                .map_err(|e| df.error_at(l.line, e.to_string()))?,
                            ),
                            None => None,
                        },
                    };
                    global.retain(|(gk, _)| gk != k);
                    if let Some(v) = v {
                        global.push((k.clone(), v));
                    }
                }
            }
            other => {
                return Err(df.error_at(
                    l.line,
                    format!(
                        "{} must come after FROM: only ARG may precede the first FROM",
                        other.keyword()
                    ),
                ))
            }
        }
    }

    // Split into stages.
    let mut raw: Vec<RawStage> = Vec::new();
    let mut i = first_from;
    while i < df.instructions.len() {
        let from = &df.instructions[i];
        let Instruction::From {
            image,
            name,
            platform,
        } = &from.instruction
        else {
            unreachable!()
        };
        let mut j = i + 1;
        while j < df.instructions.len()
            && !matches!(df.instructions[j].instruction, Instruction::From { .. })
        {
            j += 1;
        }
        if let Some(n) = name {
            if raw.iter().any(|s| s.name.as_deref() == Some(n)) {
                return Err(df.error_at(from.line, format!("duplicate stage name {n:?}")));
            }
        }
        raw.push(RawStage {
            position: raw.len(),
            name: name.clone(),
            from,
            image: image.clone(),
            platform: platform.clone(),
            body: &df.instructions[i + 1..j],
        });
        i = j;
    }

    // Resolve FROM words and stage references (global args only).
    let global_scope = Scope {
        env: &[],
        args: &global,
    };
    let mut bases: Vec<Base> = Vec::new();
    let mut platforms: Vec<Option<String>> = Vec::new();
    for s in &raw {
        let image = lx
            .process_word(&s.image, &global_scope)
            .map_err(|e| df.error_at(s.from.line, e.to_string()))?;
        if image.is_empty() {
            return Err(df.error_at(
                s.from.line,
                format!("base name ({}) should not be blank", s.image),
            ));
        }
        let lower = image.to_ascii_lowercase();
        let base = if lower == "scratch" {
            Base::Scratch
        } else if let Some(p) = raw[..s.position]
            .iter()
            .position(|r| r.name.as_deref() == Some(lower.as_str()))
        {
            Base::Stage(p)
        } else if raw[s.position..]
            .iter()
            .any(|r| r.name.as_deref() == Some(lower.as_str()))
        {
            return Err(df.error_at(
                s.from.line,
                format!("stage {image:?} is used before it is defined"),
            ));
        } else {
            Base::Image(image)
        };
        let platform = match &s.platform {
            Some(p) => Some(
                lx.process_word(p, &global_scope)
                    .map_err(|e| df.error_at(s.from.line, e.to_string()))?,
            ),
            None => None,
        };
        if let Some(p) = &platform {
            if p != &platform_string() && !p.is_empty() {
                return Err(df.error_at(
                    s.from.line,
                    format!(
                        "platform {p:?} is not supported: kiln builds for {}",
                        platform_string()
                    ),
                ));
            }
        }
        bases.push(base);
        platforms.push(platform);
    }

    // The target and what it reaches.
    let target = match &opts.target {
        Some(t) => {
            let t = t.to_ascii_lowercase();
            raw.iter()
                .position(|s| s.name.as_deref() == Some(t.as_str()))
                .ok_or_else(|| df.error_at(0, format!("target stage {t:?} could not be found")))?
        }
        None => raw.len() - 1,
    };

    // Plan every stage up to the target in order (a stage only refers to earlier ones), then
    // keep the reachable ones.
    let mut planned: Vec<Stage> = Vec::new();
    let mut deps: Vec<BTreeSet<usize>> = Vec::new();
    let mut used_args: BTreeSet<String> = declared.clone();
    for s in &raw[..=target] {
        let (stage, d) = plan_stage(
            df,
            opts,
            &lx,
            s,
            &bases,
            &platforms,
            &global,
            &raw,
            &planned,
            &mut used_args,
        )?;
        planned.push(stage);
        deps.push(d);
    }
    let mut keep = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(t) = todo.pop() {
        if keep.insert(t) {
            todo.extend(deps[t].iter().copied());
        }
    }
    // Renumber stage references into the kept list.
    let index: BTreeMap<usize, usize> = keep
        .iter()
        .enumerate()
        .map(|(new, old)| (*old, new))
        .collect();
    let mut stages = Vec::new();
    for old in &keep {
        let mut st = planned[*old].clone();
        if let Base::Stage(b) = &mut st.base {
            *b = index[b];
        }
        for step in &mut st.steps {
            let fix = |src: &mut Source| {
                if let Source::Stage(b) = src {
                    *b = index[b];
                }
            };
            match &mut step.kind {
                StepKind::Copy(c) => fix(&mut c.source),
                StepKind::Run(r) => r.mount_sources.iter_mut().for_each(fix),
                StepKind::Workdir(..) => {}
            }
        }
        stages.push(st);
    }
    let mut warnings = Vec::new();
    let unused: Vec<&String> = opts
        .build_args
        .keys()
        .filter(|k| !used_args.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .collect();
    if !unused.is_empty() {
        warnings.push(Warning {
            rule: "UnusedBuildArg",
            message: format!(
                "one or more build args were not consumed: {}",
                unused
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            line: 0,
        });
    }
    Ok(Plan {
        target: index[&target],
        stages,
        warnings,
    })
}

#[allow(clippy::too_many_arguments)]
fn plan_stage(
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
                    if let Some(from) = mount.fields.get("from") {
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
                        (m.kind.clone(), f.collect())
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

fn command_argv(c: &Command, config: &Config) -> Vec<String> {
    match c {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let mut v = config.shell();
            v.push(s.clone());
            v
        }
    }
}

/// A RUN's history entry as BuildKit writes it (dockerfile2llb `runCommandString`): the stage's
/// ARGs (an ENV of the same name wins) as `|N K=V...`, then the argv, then ` # buildkit`.
fn run_history(
    argv: &[String],
    stage_args: &[(String, Option<String>)],
    env: &[(String, String)],
) -> String {
    let mut parts = Vec::new();
    // Every declaration is listed (a name declared twice, twice), each with the name's value
    // now: the latest declaration's (BuildKit 0.13: `ARG A=1 B=2`, `ARG A=3` give
    // `|3 A=3 B=2 A=3`).
    for (k, _) in stage_args {
        let v = env
            .iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, ev)| ev.clone())
            .or_else(|| {
                stage_args
                    .iter()
                    .rev()
                    .find(|(ak, _)| ak == k)
                    .and_then(|(_, v)| v.clone())
            })
            .unwrap_or_default();
        parts.push(format!("{k}={v}"));
    }
    if !parts.is_empty() {
        parts.insert(0, format!("|{}", parts.len()));
    }
    parts.extend(argv.iter().cloned());
    format!("RUN {} # buildkit", parts.join(" "))
}

/// HEALTHCHECK's history entry: Go's `%q` of the config struct, as BuildKit formats it.
fn healthcheck_history(h: &Healthcheck) -> String {
    format!(
        "HEALTHCHECK &{{{} \"{}\" \"{}\" \"{}\" \"{}\" {}}}",
        go_quote_list(&h.test),
        go_duration(h.interval),
        go_duration(h.timeout),
        go_duration(h.start_period),
        go_duration(h.start_interval),
        go_quote_rune(h.retries)
    )
}

/// Go's `time.Duration.String` for a count of nanoseconds.
pub fn go_duration(ns: u64) -> String {
    fn frac(v: u64, unit: u64) -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", frac(n, 1_000)),
        n if n < 1_000_000_000 => format!("{}ms", frac(n, 1_000_000)),
        n => {
            let secs = n / 1_000_000_000;
            let sub = n % 1_000_000_000;
            let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
            let sec = frac(s * 1_000_000_000 + sub, 1_000_000_000);
            if h > 0 {
                format!("{h}h{m}m{sec}s")
            } else if m > 0 {
                format!("{m}m{sec}s")
            } else {
                format!("{sec}s")
            }
        }
    }
}

/// Go's `%q` of an integer: a quoted character literal (`strconv.QuoteRune`).
fn go_quote_rune(n: u64) -> String {
    let Some(c) = u32::try_from(n).ok().and_then(char::from_u32) else {
        return "'\\ufffd'".into();
    };
    let body = match c {
        '\x07' => "\\a".to_string(),
        '\x08' => "\\b".to_string(),
        '\x0c' => "\\f".to_string(),
        '\n' => "\\n".to_string(),
        '\r' => "\\r".to_string(),
        '\t' => "\\t".to_string(),
        '\x0b' => "\\v".to_string(),
        '\\' => "\\\\".to_string(),
        '\'' => "\\'".to_string(),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("\\x{:02x}", c as u32),
        c if (c as u32) < 0x80 => c.to_string(),
        c if !c.is_control() => c.to_string(),
        c if (c as u32) < 0x10000 => format!("\\u{:04x}", c as u32),
        c => format!("\\U{:08x}", c as u32),
    };
    format!("'{body}'")
}

/// RUN's argv. A shell-form command that is exactly one heredoc runs the heredoc body as the
/// script (through the shell, or executed directly when it starts with `#!`); any other
/// shell form with heredocs hands the command line and the bodies to the shell, which reads
/// the heredocs itself (so quoting of the terminator keeps its shell meaning).
fn run_argv(run: &instructions::Run, config: &Config) -> (Vec<String>, Option<(String, String)>) {
    let Command::Shell(line) = &run.command else {
        return (command_argv(&run.command, config), None);
    };
    if run.heredocs.is_empty() {
        return (command_argv(&run.command, config), None);
    }
    let only = run.heredocs.len() == 1
        && parser::parse_heredoc(line.trim())
            .ok()
            .flatten()
            .is_some_and(|h| h.name == run.heredocs[0].name);
    if only {
        let h = &run.heredocs[0];
        let body = if h.chomp {
            parser::chomp_heredoc(&h.content)
        } else {
            h.content.clone()
        };
        if body.starts_with("#!") {
            // Written to /dev/pipes/NAME and run as the shell's command (so $0 is that path).
            let name = if h.name.is_empty() || h.name.contains('/') || h.name.starts_with('.') {
                "script".to_string()
            } else {
                h.name.clone()
            };
            let mut argv = config.shell();
            argv.push(format!("/dev/pipes/{name}"));
            return (argv, Some((name, body)));
        }
        let mut argv = config.shell();
        argv.push(body);
        return (argv, None);
    }
    let mut script = line.clone();
    script.push('\n');
    for h in &run.heredocs {
        script.push_str(&h.content);
        if !h.content.is_empty() && !h.content.ends_with('\n') {
            script.push('\n');
        }
        script.push_str(&h.name);
        script.push('\n');
    }
    let mut argv = config.shell();
    argv.push(script);
    (argv, None)
}

/// `--from=` value: a stage name, a stage index, or an image reference.
fn resolve_from(from: &str, current: usize, raw: &[RawStage]) -> Result<Source, String> {
    if from.is_empty() {
        return Err("--from requires a stage name, index or image".into());
    }
    if from.bytes().all(|b| b.is_ascii_digit()) {
        let n: usize = from
            .parse()
            .map_err(|_| format!("invalid stage index {from:?}"))?;
        if n >= current {
            return Err(format!(
                "undefined stage in --from={from}: stage {n} {}",
                if n < raw.len() {
                    "is this stage or a later one"
                } else {
                    "does not exist"
                }
            ));
        }
        return Ok(Source::Stage(n));
    }
    let lower = from.to_ascii_lowercase();
    if let Some(p) = raw
        .iter()
        .position(|r| r.name.as_deref() == Some(lower.as_str()))
    {
        if p >= current {
            return Err(format!(
                "undefined stage in --from={from}: stage {lower:?} is this stage or a later one"
            ));
        }
        return Ok(Source::Stage(p));
    }
    if crate::image::reference::Reference::parse(from).is_err() {
        return Err(format!("undefined stage in --from={from}: no stage has that name and it is not an image reference"));
    }
    Ok(Source::Image(from.to_string()))
}

/// Joins `p` onto `workdir` when relative, and cleans the result.
pub fn resolve_path(workdir: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{workdir}/{p}")
    };
    crate::context::dockerignore::clean(&joined)
}

/// `80`, `80/tcp`, `53/udp`, `8000-8002/tcp` -> `80/tcp` form, as Docker stores EXPOSE.
fn normalize_port(p: &str) -> Result<String, String> {
    let (port, proto) = match p.split_once('/') {
        Some((port, proto)) => (port, proto.to_ascii_lowercase()),
        None => (p, "tcp".into()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid protocol {proto:?} in EXPOSE {p}"));
    }
    let ok = |s: &str| s.parse::<u16>().is_ok();
    let valid = match port.split_once('-') {
        Some((a, b)) => ok(a) && ok(b),
        None => ok(port),
    };
    if !valid {
        return Err(format!("invalid port {p:?} in EXPOSE"));
    }
    Ok(format!("{port}/{proto}"))
}

#[cfg(test)]
mod tests;
