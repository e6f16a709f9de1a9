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

mod bases;
pub use bases::plan_with_bases;
mod config;
pub use config::*;
mod stage;
use stage::*;
mod history;
pub use history::*;
mod words;
pub use words::*;

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

#[cfg(test)]
mod tests;
