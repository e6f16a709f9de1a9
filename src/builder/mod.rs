//! The build orchestrator: the only module that drives a build from a parsed Dockerfile to an
//! image in the store (DESIGN.md "A build").
//!
//! 1. Plan once, resolve every base and `--from` image in the store, plan again with their
//!    configs (ONBUILD triggers, ENV, USER, WORKDIR come from the base).
//! 2. Stages run in waves: every stage whose dependencies are done runs at once (scoped threads),
//!    so independent stages build in parallel; only the stages the target reaches were planned.
//! 3. Per step: compute its inputs (COPY/ADD: the selected context files' content digest via the
//!    stat cache, or the `--from` source's identity), its key, and look the key up. A hit reuses
//!    the recorded layer and snapshot; a miss executes ([`exec`] for RUN and WORKDIR, [`copy`] for
//!    COPY/ADD) into a fresh upper directory, diffs it into a layer (no layer when nothing
//!    changed), commits the snapshot under its ChainID, and records the step.
//! 4. The target stage's layers and config (the base's config with the stage's changes, history
//!    with `empty_layer` for metadata instructions) become the image, tagged.
//!
//! Crash safety comes from the store: blobs, snapshots and rows are committed in that order, a
//! lease keeps GC away for the whole build, and temp dirs live under ingest/ until committed.

pub mod copy;
pub mod exec;
pub mod remote;

use crate::context::hash::Hasher;
use crate::context::{Context, ContextError, Entry};
use crate::diff::{self, TarEntry, TarOptions};
use crate::frontend::{Dockerfile, DockerfileError};
use crate::image::oci::{self, History, ImageConfig, RootFs, RunConfig};
use crate::image::{self, ImageError};
use crate::plan::{
    self, Base, Canon, CopyStep, Plan, PlanOptions, Source, Stage, StepKey, StepKind,
};
use crate::snapshotter::view::View;
use crate::timefmt;
use kiln_store::{
    chain_ids, Compression, Digest, ImageRecord, LayerEncoder, LayerRecord, StepRecord, Store,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// How RUN steps get their filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Snapshotter {
    /// overlayfs: lower dirs = the parent chain, upper = the change set (the default).
    Overlay,
    /// Plain copies and the walk differ, where overlay cannot be mounted.
    Native,
}

/// What the caller asks for.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Full references to tag the result with.
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    /// `--network none` for every RUN.
    pub network_none: bool,
    pub compression: Compression,
    pub labels: BTreeMap<String, String>,
    pub snapshotter: Snapshotter,
    pub source_date_epoch: Option<i64>,
    /// Names the Dockerfile across builds (its absolute path), so a miss can be explained
    /// against the last build of the same step.
    pub dockerfile_id: String,
    /// `--secret` values by id, for RUN --mount=type=secret (never keyed or stored).
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--ssh` agent sockets by id, for RUN --mount=type=ssh (never keyed).
    pub ssh: BTreeMap<String, PathBuf>,
    /// `--explain`: report every step's key inputs, and for a miss what differs from the
    /// nearest earlier build of the same step.
    pub explain: bool,
    /// `--cache-from` registry caches: a step missing locally is looked up there.
    pub remote_caches: Vec<std::sync::Arc<crate::registry::cache::RemoteCache>>,
}

/// A progress event. Step numbers start at 1 and are stable for a plan.
#[derive(Debug)]
pub enum Event<'a> {
    /// A stage's FROM (number, `[stage k/n]` label, text).
    Start {
        n: usize,
        label: &'a str,
        text: &'a str,
    },
    Cached {
        n: usize,
    },
    /// A miss, and why (one line).
    Miss {
        n: usize,
        why: &'a str,
    },
    Output {
        n: usize,
        line: &'a str,
    },
    /// `--explain` lines for a step (its key inputs, and for a miss what differs).
    Explain {
        n: usize,
        lines: &'a [String],
    },
    Done {
        n: usize,
        secs: f64,
    },
    Failed {
        n: usize,
    },
}

/// Receives progress; the CLI renders it.
pub trait Progress: Sync {
    fn event(&self, e: Event<'_>);
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    #[error("{file}:{line}: base image {reference:?} is not in the store")]
    MissingImage {
        file: String,
        line: usize,
        reference: String,
    },
    #[error("{file}:{line}: {text}: {message}")]
    Step {
        file: String,
        line: usize,
        text: String,
        message: String,
    },
    #[error("{file}:{line}: {text}: exit code {code}")]
    RunFailed {
        file: String,
        line: usize,
        text: String,
        code: i32,
        tail: Vec<String>,
    },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for BuildError {
    fn from(e: std::io::Error) -> BuildError {
        BuildError::Io(e.to_string())
    }
}

/// What a finished build produced.
#[derive(Debug)]
pub struct Outcome {
    pub image: ImageRecord,
    /// Every step key this build used or made (hex), for `--cache-to`.
    pub keys: Vec<String>,
    pub steps: usize,
    pub cached: usize,
    pub warnings: Vec<crate::frontend::Warning>,
}

/// A stage's state after its last step.
#[derive(Clone, Debug)]
struct StageState {
    key: StepKey,
    /// What the stage is built on, for explaining a changed base.
    base: String,
    layers: Vec<LayerRecord>,
    /// Snapshot fs dirs, bottom to top.
    lowers: Vec<PathBuf>,
    config: ImageConfig,
    executed: bool,
}

impl StageState {
    fn view(&self) -> View {
        View::new(self.lowers.iter().rev().cloned().collect())
    }
    fn chain(&self) -> Option<Digest> {
        chain_ids(&self.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>())
            .last()
            .copied()
    }
}

struct Ctx<'a> {
    store: &'a Store,
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    progress: &'a dyn Progress,
    plan: &'a Plan,
    images: BTreeMap<String, ImageRecord>,
    configs: BTreeMap<String, ImageConfig>,
    context: &'a Context,
    entries: std::sync::OnceLock<Result<Vec<Entry>, String>>,
    hasher: Hasher<'a>,
    numbers: Vec<usize>,
    now: i64,
    cached: std::sync::atomic::AtomicUsize,
    /// Keys of cache hits, counted in one transaction at the end.
    hits: Mutex<Vec<String>>,
    /// Every step key used or made, in order.
    keys: Mutex<Vec<String>>,
}

fn empty_config() -> ImageConfig {
    let p = oci::host_platform();
    ImageConfig {
        created: None,
        author: None,
        architecture: p.architecture,
        os: p.os,
        variant: None,
        config: RunConfig::default(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![],
        },
        history: vec![],
        extra: BTreeMap::new(),
    }
}

/// Builds the Dockerfile `df` with `context`, reporting to `progress`.
pub fn build(
    store: &Store,
    df: &Dockerfile,
    context: &Context,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Outcome, BuildError> {
    let _lease = store.lease()?;
    let mut popts = PlanOptions {
        build_args: opts.build_args.clone(),
        target: opts.target.clone(),
        bases: BTreeMap::new(),
    };
    let first = plan::plan(df, &popts)?;
    let mut images = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for r in first.image_refs() {
        let line = first
            .stages
            .iter()
            .find(|s| s.base == Base::Image(r.clone()))
            .map(|s| s.line)
            .unwrap_or(0);
        let resolved = match image::resolve(store, &r) {
            Ok(res) => res.image,
            Err(ImageError::NotFound(_)) => {
                return Err(BuildError::MissingImage {
                    file: df.file.clone(),
                    line,
                    reference: r,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let cfg = image::read_config(store, &resolved)?;
        popts
            .bases
            .insert(r.clone(), plan::Config::from(&cfg.config));
        images.insert(r.clone(), resolved);
        configs.insert(r, cfg);
    }
    let plan = plan::plan(df, &popts)?;
    tracing::debug!("planned");
    let mut numbers = Vec::new();
    let mut n = 0;
    for s in &plan.stages {
        numbers.push(n + 1);
        n += 1 + s.steps.len();
    }
    let now = opts
        .source_date_epoch
        .unwrap_or_else(kiln_store::store::now);
    // When a step copies from the context, walk it while the stat cache loads.
    let uses_context = plan.stages.iter().any(|s| {
        s.steps.iter().any(|st| {
            matches!(
                &st.kind,
                StepKind::Copy(CopyStep {
                    source: Source::Context,
                    ..
                })
            )
        })
    });
    let entries = std::sync::OnceLock::new();
    let hasher = if uses_context {
        let (h, walked) = rayon::join(
            || Hasher::new(Some(store), context.root()),
            || context.walk().map_err(|e| e.to_string()),
        );
        tracing::debug!("context walked, stat cache loaded");
        let _ = entries.set(walked);
        h?
    } else {
        Hasher::new(None, context.root())?
    };
    let ctx = Ctx {
        store,
        df,
        opts,
        progress,
        plan: &plan,
        images,
        configs,
        context,
        entries,
        hasher,
        numbers,
        now,
        cached: Default::default(),
        hits: Mutex::new(Vec::new()),
        keys: Mutex::new(Vec::new()),
    };

    // Waves of independent stages.
    let count = plan.stages.len();
    let deps: Vec<Vec<usize>> = plan.stages.iter().map(stage_deps).collect();
    let results: Vec<Mutex<Option<StageState>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let mut done = vec![false; count];
    while done.iter().any(|d| !d) {
        let ready: Vec<usize> = (0..count)
            .filter(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
            .collect();
        if ready.is_empty() {
            return Err(BuildError::Internal(
                "stages depend on each other in a cycle".into(),
            ));
        }
        let outcomes: Vec<Result<StageState, BuildError>> = std::thread::scope(|s| {
            let handles: Vec<_> = ready
                .iter()
                .map(|&i| {
                    let ctx = &ctx;
                    let results = &results;
                    s.spawn(move || run_stage(ctx, i, results))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(BuildError::Internal("a stage panicked".into())))
                })
                .collect()
        });
        for (i, r) in ready.iter().zip(outcomes) {
            *results[*i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r?);
            done[*i] = true;
        }
    }
    tracing::debug!("stages done");
    ctx.hasher.save()?;
    ctx.store
        .touch_steps(&ctx.hits.lock().unwrap_or_else(|p| p.into_inner()))?;

    let state = results[plan.target]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| BuildError::Internal("target stage did not run".into()))?;
    let mut config = state.config.clone();
    if !opts.labels.is_empty() {
        let labels = config.config.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in &opts.labels {
            labels.insert(k.clone(), v.clone());
        }
    }
    let layers = ensure_compression(store, &state.layers, opts.compression)?;
    let image = image::create_image(store, &config, layers, &opts.tags)?;
    tracing::debug!("image committed");
    let _ = &mut config;
    Ok(Outcome {
        image,
        keys: ctx.keys.into_inner().unwrap_or_else(|p| p.into_inner()),
        steps: plan.stages.iter().map(|s| s.steps.len()).sum(),
        cached: ctx.cached.load(std::sync::atomic::Ordering::Relaxed),
        warnings: plan.warnings.clone(),
    })
}

/// The stages a stage needs first.
fn stage_deps(s: &Stage) -> Vec<usize> {
    let mut d = Vec::new();
    if let Base::Stage(i) = s.base {
        d.push(i);
    }
    for st in &s.steps {
        match &st.kind {
            StepKind::Copy(CopyStep {
                source: Source::Stage(i),
                ..
            }) => d.push(*i),
            StepKind::Run(r) => {
                for m in &r.mount_sources {
                    if let Source::Stage(i) = m {
                        d.push(*i);
                    }
                }
            }
            _ => {}
        }
    }
    d.sort_unstable();
    d.dedup();
    d
}

/// The stored layers in the wanted compression, transcoding a cached layer when needed (a
/// `--compression gzip` build after zstd ones). Both encodings stay recorded under one DiffID.
fn ensure_compression(
    store: &Store,
    layers: &[LayerRecord],
    want: Compression,
) -> Result<Vec<LayerRecord>, BuildError> {
    layers
        .iter()
        .map(|l| Ok(crate::image::archive::layer_in(store, l, want)?))
        .collect()
}

fn base_state(
    ctx: &Ctx<'_>,
    stage: &Stage,
    results: &[Mutex<Option<StageState>>],
) -> Result<StageState, BuildError> {
    match &stage.base {
        Base::Scratch => Ok(StageState {
            key: plan::base_key("scratch"),
            base: "scratch".into(),
            layers: vec![],
            lowers: vec![],
            config: empty_config(),
            executed: false,
        }),
        Base::Image(r) => {
            let img = &ctx.images[r];
            let snaps = crate::snapshotter::unpack_image(ctx.store, img).map_err(ImageError::from)?;
            Ok(StageState {
                key: plan::base_key(&img.manifest.digest.to_string()),
                base: format!("image {r} ({})", img.manifest.digest),
                layers: img.layers.clone(),
                lowers: snaps.iter().map(|s| ctx.store.snapshot_fs(s)).collect(),
                config: ctx.configs[r].clone(),
                executed: false,
            })
        }
        Base::Stage(i) => {
            let s = results[*i]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or_else(|| BuildError::Internal("base stage did not run".into()))?;
            Ok(StageState {
                key: plan::base_key(&s.key.to_hex()),
                base: format!(
                    "stage {} (key {})",
                    ctx.plan.stages[*i].display_name(),
                    &s.key.to_hex()[..12]
                ),
                ..s
            })
        }
    }
}

fn history(created: &str, text: &str, empty: bool) -> History {
    History {
        created: Some(created.to_string()),
        created_by: Some(text.to_string()),
        author: None,
        comment: Some("buildkit.dockerfile.v0".into()),
        empty_layer: empty,
    }
}

fn run_stage(
    ctx: &Ctx<'_>,
    idx: usize,
    results: &[Mutex<Option<StageState>>],
) -> Result<StageState, BuildError> {
    let stage = &ctx.plan.stages[idx];
    let total = stage.steps.len() + 1;
    let label_for = |k: usize| match &stage.name {
        Some(n) => format!("{n} {k}/{total}"),
        None if ctx.plan.stages.len() > 1 => format!("stage-{} {k}/{total}", stage.position),
        None => format!("{k}/{total}"),
    };
    let first = ctx.numbers[idx];
    let from_text = ctx
        .df
        .instructions
        .iter()
        .find(|l| l.line == stage.line)
        .map(|l| l.original.clone())
        .unwrap_or_else(|| "FROM".into());
    let t0 = Instant::now();
    ctx.progress.event(Event::Start {
        n: first,
        label: &label_for(1),
        text: &from_text,
    });
    let mut state = base_state(ctx, stage, results)?;
    ctx.progress.event(Event::Done {
        n: first,
        secs: t0.elapsed().as_secs_f64(),
    });
    // Timestamps: a step's is when it was first built (its cache row), so a rebuild from cache
    // gives the same image ID; metadata entries take the last step's; SOURCE_DATE_EPOCH wins.
    let base_created = state
        .config
        .created
        .as_deref()
        .and_then(|c| timefmt::parse_rfc3339(c).ok());
    let mut hist = state.config.history.clone();
    // Every step has a layer (an empty one when it changed nothing); when each was first built.
    let mut step_times: Vec<i64> = Vec::new();
    for (si, step) in stage.steps.iter().enumerate() {
        let n = first + 1 + si;
        let label = label_for(si + 2);
        ctx.progress.event(Event::Start {
            n,
            label: &label,
            text: &step.text,
        });
        let t = Instant::now();
        let r = run_step(ctx, stage, si, step, &mut state, results, n).inspect_err(|_| {
            ctx.progress.event(Event::Failed { n });
        })?;
        step_times.push(r.created);
        if !r.cached {
            ctx.progress.event(Event::Done {
                n,
                secs: t.elapsed().as_secs_f64(),
            });
        }
    }
    // History: the stage's entries in order; metadata entries are empty layers and take the
    // time of the step before them.
    let stamp = |t: i64| timefmt::rfc3339(ctx.opts.source_date_epoch.unwrap_or(t));
    let mut last = step_times
        .first()
        .copied()
        .or(base_created)
        .unwrap_or(ctx.now);
    let mut times = step_times.iter();
    for (_, text, layer) in &stage.history {
        let step_time = if *layer { times.next() } else { None };
        if let Some(t) = step_time {
            last = *t;
        }
        let empty = step_time.is_none();
        hist.push(history(&stamp(last), text, empty));
    }
    let newest = step_times.iter().max().copied();
    let created = stamp(newest.or(base_created).unwrap_or(ctx.now));
    state.config = stage_config(&state.config, stage, &state.layers, hist, &created);
    Ok(state)
}

/// The image config after a stage: the base's config (unknown fields kept) with the stage's
/// configuration applied, as BuildKit writes it.
fn stage_config(
    base: &ImageConfig,
    stage: &Stage,
    layers: &[LayerRecord],
    history: Vec<History>,
    created: &str,
) -> ImageConfig {
    let c = &stage.config;
    let mut out = base.clone();
    out.created = Some(created.to_string());
    if c.author.is_some() {
        out.author = c.author.clone();
    }
    c.write_to(&mut out.config);
    out.rootfs = RootFs {
        kind: "layers".into(),
        diff_ids: layers.iter().map(|l| l.diff_id).collect(),
    };
    out.history = history;
    out
}

fn slot(ctx: &Ctx<'_>, stage: &Stage, si: usize) -> String {
    blake3::hash(format!("{}\0{}\0{}", ctx.opts.dockerfile_id, stage.position, si).as_bytes())
        .to_hex()
        .to_string()
}

/// The summary of a step's inputs kept in its cache row, for explaining the next miss.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Inputs {
    definition: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    from: Option<String>,
    /// The instruction's canonical form, readable (`--explain`).
    #[serde(default)]
    canonical: Vec<String>,
    /// The stage's base, for its first step.
    #[serde(default)]
    base: Option<String>,
    /// Imported with `--cache-from`, whose records leave the env values out.
    #[serde(default)]
    env_omitted: bool,
}

/// One line saying why `key` missed, comparing with the last build of the same step.
fn why_missed(
    ctx: &Ctx<'_>,
    prev: Option<&StepRecord>,
    parent: &str,
    inputs: &Inputs,
    first_step: bool,
) -> String {
    if ctx.opts.no_cache {
        return "cache miss: --no-cache".into();
    }
    let Some(prev) = prev else {
        return "cache miss: not built before".into();
    };
    let old: Inputs = serde_json::from_str(&prev.inputs).unwrap_or_default();
    if prev.parent != parent {
        return if first_step {
            match (&old.base, &inputs.base) {
                (Some(a), Some(b)) if a != b => {
                    format!(
                        "cache miss: the base changed: {} -> {}",
                        short_ids(a),
                        short_ids(b)
                    )
                }
                _ => "cache miss: the base image changed".into(),
            }
        } else {
            "cache miss: an earlier step changed".into()
        };
    }
    if old.from != inputs.from {
        return "cache miss: the --from source changed".into();
    }
    if old.definition != inputs.definition {
        if old.env_omitted {
            // An imported record (--cache-from) carries no env values to compare.
            return "cache miss: the instruction, a build arg or env changed".into();
        }
        // Same text, different definition: something the instruction expands changed.
        let changed: Vec<&String> = inputs
            .env
            .iter()
            .filter(|(k, v)| old.env.get(*k) != Some(v))
            .map(|(k, _)| k)
            .chain(old.env.keys().filter(|k| !inputs.env.contains_key(*k)))
            .collect();
        if !changed.is_empty() {
            let names: Vec<&str> = changed.iter().map(|s| s.as_str()).take(3).collect();
            return format!("cache miss: build arg or env changed: {}", names.join(", "));
        }
        return "cache miss: the instruction changed".into();
    }
    let mut changed = Vec::new();
    let (mut added, mut removed) = (0, 0);
    for (p, h) in &inputs.files {
        match old.files.get(p) {
            None => added += 1,
            Some(o) if o != h => changed.push(p.as_str()),
            _ => {}
        }
    }
    for p in old.files.keys() {
        if !inputs.files.contains_key(p) {
            removed += 1;
        }
    }
    let mut parts = Vec::new();
    if !changed.is_empty() {
        let shown: Vec<&str> = changed.iter().copied().take(3).collect();
        let more = if changed.len() > 3 { ", ..." } else { "" };
        parts.push(format!(
            "{} file{} changed: {}{more}",
            changed.len(),
            if changed.len() == 1 { "" } else { "s" },
            shown.join(", ")
        ));
    }
    if added > 0 {
        parts.push(format!("{added} added"));
    }
    if removed > 0 {
        parts.push(format!("{removed} removed"));
    }
    if parts.is_empty() {
        "cache miss: inputs changed".into()
    } else {
        format!("cache miss: {}", parts.join(", "))
    }
}

/// Shortens every `sha256:<64 hex>` in `s` to 12 hex digits.
fn short_ids(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("sha256:") {
        out.push_str(&rest[..i + 7]);
        let hex = &rest[i + 7..];
        let n = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
        out.push_str(&hex[..n.min(12)]);
        rest = &hex[n..];
    }
    out.push_str(rest);
    out
}

/// The instruction's canonical definition, one readable line per field (what the key hashes,
/// besides the parent and the selected files).
fn describe(step: &plan::Step) -> Vec<String> {
    let q = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    let mut out = Vec::new();
    match &step.kind {
        StepKind::Run(r) => {
            out.push(format!("run: {}", q(&r.argv)));
            if let Some((name, sc)) = &r.script {
                out.push(format!(
                    "script /dev/pipes/{name}: {} bytes, blake3 {}",
                    sc.len(),
                    &blake3::hash(sc.as_bytes()).to_hex()[..12]
                ));
            }
            out.push(format!("workdir: {}", r.workdir));
            out.push(format!(
                "user: {}",
                if r.user.is_empty() { "root" } else { &r.user }
            ));
            out.push(format!(
                "network: {}",
                if r.network == plan::Network::None {
                    "none"
                } else {
                    "host"
                }
            ));
            for m in &r.mounts {
                let f: Vec<String> = m.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push(format!("mount: type={},{}", m.kind, f.join(",")));
            }
        }
        StepKind::Copy(c) => {
            let cp = &c.copy;
            out.push(format!(
                "{}: {} -> {}",
                if cp.add { "add" } else { "copy" },
                q(&cp.sources),
                c.dest
            ));
            match &c.source {
                Source::Context => {}
                Source::Stage(i) => out.push(format!("from: stage {i}")),
                Source::Image(r) => out.push(format!("from: image {r}")),
            }
            for h in &cp.inline {
                out.push(format!(
                    "heredoc {}: {} bytes, blake3 {}",
                    h.path,
                    h.data.len(),
                    &blake3::hash(h.data.as_bytes()).to_hex()[..12]
                ));
            }
            let mut flags = Vec::new();
            if let Some(v) = &cp.chown {
                flags.push(format!("--chown={v}"));
            }
            if let Some(v) = &cp.chmod {
                flags.push(format!("--chmod={v}"));
            }
            if cp.link {
                flags.push("--link".into());
            }
            if cp.parents {
                flags.push("--parents".into());
            }
            for e in &cp.exclude {
                flags.push(format!("--exclude={e}"));
            }
            if let Some(v) = &cp.checksum {
                flags.push(format!("--checksum={v}"));
            }
            if let Some(v) = cp.unpack {
                flags.push(format!("--unpack={v}"));
            }
            if !flags.is_empty() {
                out.push(format!("flags: {}", flags.join(" ")));
            }
        }
        StepKind::Workdir(path, user) => {
            out.push(format!("workdir: {path}"));
            if !user.is_empty() {
                out.push(format!("owner: {user}"));
            }
        }
    }
    out
}

/// `--explain`: the step's key and what formed it; for a miss (`prev` given), the nearest
/// earlier build of the same step and what differs from it.
fn explain(
    key: &StepKey,
    parent: &StepKey,
    now: &Inputs,
    prev: Option<Option<&StepRecord>>,
    relinked: bool,
) -> Vec<String> {
    const MAX: usize = 20;
    let mut out = vec![format!(
        "key {} = blake3(parent {} | definition | inputs){}",
        &key.to_hex()[..12],
        &parent.to_hex()[..12],
        if relinked {
            ", found by its --link key (base-independent)"
        } else {
            ""
        }
    )];
    for c in &now.canonical {
        out.push(format!("  {c}"));
    }
    if let Some(b) = &now.base {
        out.push(format!("  base: {b}"));
    }
    if let Some(f) = &now.from {
        out.push(format!("  from: {f}"));
    }
    if !now.env.is_empty() {
        let env: Vec<String> = now.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push(format!("  env: {}", env.join(" ")));
    }
    if !now.files.is_empty() {
        out.push(format!("  files: {}", now.files.len()));
        for (p, d) in now.files.iter().take(MAX) {
            out.push(format!("    {p} {d}"));
        }
        if now.files.len() > MAX {
            out.push(format!("    ... and {} more", now.files.len() - MAX));
        }
    }
    let Some(prev) = prev else { return out };
    let Some(prev) = prev else {
        out.push("  no earlier build of this step is in the cache".into());
        return out;
    };
    let old: Inputs = serde_json::from_str(&prev.inputs).unwrap_or_default();
    out.push(format!(
        "  nearest earlier: key {}, built {}; differs in:",
        &prev.key[..12.min(prev.key.len())],
        crate::timefmt::ago(prev.created, kiln_store::store::now()).to_lowercase()
    ));
    let before = out.len();
    if prev.parent != parent.to_hex() {
        match (&old.base, &now.base) {
            (Some(a), Some(b)) if a != b => out.push(format!("    base: {a} -> {b}")),
            _ => out.push(format!(
                "    parent: {} -> {} (an earlier step or the base changed)",
                &prev.parent[..12.min(prev.parent.len())],
                &parent.to_hex()[..12]
            )),
        }
    }
    if old.from != now.from {
        out.push(format!(
            "    from: {} -> {}",
            old.from.as_deref().unwrap_or("-"),
            now.from.as_deref().unwrap_or("-")
        ));
    }
    for c in old.canonical.iter().filter(|c| !now.canonical.contains(c)) {
        out.push(format!("    - {c}"));
    }
    for c in now.canonical.iter().filter(|c| !old.canonical.contains(c)) {
        out.push(format!("    + {c}"));
    }
    if old.env_omitted {
        out.push(
            "    (env not compared: the earlier build was imported without its values)".into(),
        );
    }
    for (k, v) in now.env.iter().filter(|_| !old.env_omitted) {
        match old.env.get(k) {
            Some(o) if o != v => out.push(format!("    env {k}: {o:?} -> {v:?}")),
            None => out.push(format!("    env {k}: unset -> {v:?}")),
            _ => {}
        }
    }
    for (k, o) in &old.env {
        if !now.env.contains_key(k) {
            out.push(format!("    env {k}: {o:?} -> unset"));
        }
    }
    let mut file_lines = Vec::new();
    for (p, d) in &now.files {
        match old.files.get(p) {
            Some(o) if o != d => file_lines.push(format!("    changed {p}: {o} -> {d}")),
            None => file_lines.push(format!("    added {p}")),
            _ => {}
        }
    }
    for p in old.files.keys().filter(|p| !now.files.contains_key(*p)) {
        file_lines.push(format!("    removed {p}"));
    }
    let n = file_lines.len();
    out.extend(file_lines.into_iter().take(MAX));
    if n > MAX {
        out.push(format!("    ... and {} more file changes", n - MAX));
    }
    if out.len() == before {
        out.push(
            "    nothing recorded: the same inputs (the entry's layer was pruned, or --no-cache)"
                .into(),
        );
    }
    out
}

/// The build context's entries (after .dockerignore), walked once for the whole build by
/// whichever step needs them first.
fn context_entries<'c>(ctx: &'c Ctx<'_>, step: &plan::Step) -> Result<&'c [Entry], BuildError> {
    ctx.entries
        .get_or_init(|| ctx.context.walk().map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| step_error(ctx, step, e.clone()))
}

fn step_error(ctx: &Ctx<'_>, step: &plan::Step, message: impl Into<String>) -> BuildError {
    BuildError::Step {
        file: ctx.df.file.clone(),
        line: step.line,
        text: step.text.clone(),
        message: message.into(),
    }
}

/// The view of a `--from` source and its identity.
fn from_view(
    ctx: &Ctx<'_>,
    src: &Source,
    results: &[Mutex<Option<StageState>>],
) -> Result<(View, String), BuildError> {
    match src {
        Source::Stage(i) => {
            let s = results[*i]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or_else(|| BuildError::Internal("source stage did not run".into()))?;
            Ok((s.view(), format!("stage:{}", s.key.to_hex())))
        }
        Source::Image(r) => {
            let img = &ctx.images[r];
            let snaps = crate::snapshotter::unpack_image(ctx.store, img).map_err(ImageError::from)?;
            let lowers: Vec<PathBuf> = snaps
                .iter()
                .rev()
                .map(|s| ctx.store.snapshot_fs(s))
                .collect();
            Ok((View::new(lowers), format!("image:{}", img.manifest.digest)))
        }
        Source::Context => Ok((View::default(), "context".into())),
    }
}

/// What running one step did.
struct StepOutcome {
    cached: bool,
    /// When the step was first built (seconds).
    created: i64,
}

/// Runs (or reuses) one step.
#[allow(clippy::too_many_arguments)]
fn run_step(
    ctx: &Ctx<'_>,
    stage: &Stage,
    si: usize,
    step: &plan::Step,
    state: &mut StageState,
    results: &[Mutex<Option<StageState>>],
    n: usize,
) -> Result<StepOutcome, BuildError> {
    let mut inputs = Canon::new();
    let mut summary = Inputs {
        definition: blake3::hash(step.definition.as_bytes())
            .to_hex()
            .to_string(),
        ..Default::default()
    };
    let mut roots: Option<Vec<copy::Root_>> = None;
    let mut from_src: Option<View> = None;
    let mut binds: Vec<(usize, Vec<copy::Root_>)> = Vec::new();
    match &step.kind {
        StepKind::Copy(c) => {
            if let Some(g) = c.copy.sources.iter().find(|s| remote::is_git(s)) {
                return Err(step_error(
                    ctx,
                    step,
                    format!("git sources are not supported yet ({g}): clone the repository in a RUN step of an earlier stage and COPY --from it"),
                ));
            }
            let urls: Vec<&String> = c
                .copy
                .sources
                .iter()
                .filter(|s| remote::is_url(s))
                .collect();
            if !urls.is_empty() && (!c.copy.add || !matches!(c.source, Source::Context)) {
                return Err(step_error(
                    ctx,
                    step,
                    "a URL source needs ADD, without --from",
                ));
            }
            if c.copy.checksum.is_some() && urls.len() != c.copy.sources.len() {
                return Err(step_error(ctx, step, "--checksum is only for URL sources"));
            }
            match &c.source {
                Source::Context => {
                    let entries = context_entries(ctx, step)?;
                    let locals: Vec<String> = c
                        .copy
                        .sources
                        .iter()
                        .filter(|s| !remote::is_url(s))
                        .cloned()
                        .collect();
                    let r = if locals.is_empty() {
                        Vec::new()
                    } else {
                        copy::select_context(&locals, entries, &ctx.hasher)
                            .map_err(|e| step_error(ctx, step, e))?
                    };
                    let mut r = copy::apply_parents_exclude(r, c.copy.parents, &c.copy.exclude)
                        .map_err(|e| step_error(ctx, step, e))?;
                    // Downloads: keyed by content, name and Last-Modified (BuildKit's http
                    // cache key), re-validated on every build.
                    let mut remote_key = Canon::new();
                    for url in &urls {
                        let say = |line: &str| ctx.progress.event(Event::Output { n, line });
                        let f =
                            remote::fetch(ctx.store.root(), url, c.copy.checksum.as_deref(), &say)
                                .map_err(|e| step_error(ctx, step, e))?;
                        remote_key
                            .str(0, url)
                            .str(1, &f.sha256)
                            .str(2, &f.name)
                            .str(3, &f.mtime.to_string());
                        r.push(url_root(&f, c.copy.unpack == Some(true)));
                    }
                    if !urls.is_empty() {
                        inputs.nested(4, &remote_key);
                    }
                    for src in &c.copy.inline {
                        r.push(inline_root(src, ctx.now));
                    }
                    tracing::debug!("context hashed");
                    inputs.nested(0, &copy::inputs_digest(&r));
                    roots = Some(r);
                }
                other => {
                    let (view, identity) = from_view(ctx, other, results)?;
                    inputs.str(1, &identity);
                    summary.from = Some(identity);
                    from_src = Some(view);
                }
            }
        }
        StepKind::Run(r) => {
            if let Some(m) = r.mounts.iter().find(|m| {
                !matches!(
                    m.kind.as_str(),
                    "tmpfs" | "cache" | "secret" | "bind" | "ssh"
                )
            }) {
                return Err(step_error(
                    ctx,
                    step,
                    format!(
                        "RUN --mount=type={} is not supported (bind, cache, tmpfs, secret and ssh are)",
                        m.kind
                    ),
                ));
            }
            // Bind mounts are keyed by what they expose: the selected context files' digests,
            // or a stage's key / an image's digest with the source path.
            let mut from_sources = r.mount_sources.iter();
            for (i, m) in r.mounts.iter().enumerate() {
                let seeds_cache = m.kind == "cache" && m.fields.contains_key("from");
                if m.kind != "bind" && !seeds_cache {
                    if m.fields.contains_key("from") {
                        from_sources.next();
                    }
                    continue;
                }
                let source = m.fields.get("source").map_or(".", |s| s.as_str());
                let source = source.trim_start_matches('/');
                let source = if source.is_empty() { "." } else { source };
                let mut mc = Canon::new();
                mc.str(0, &i.to_string());
                let roots = if m.fields.contains_key("from") {
                    let src = from_sources
                        .next()
                        .ok_or_else(|| BuildError::Internal("mount source not resolved".into()))?;
                    let (view, identity) = from_view(ctx, src, results)?;
                    mc.str(1, &identity).str(2, source);
                    let what = format!("the --mount from={}", m.fields["from"]);
                    copy::select_view(&[source.to_string()], &view, &what)
                        .map_err(|e| step_error(ctx, step, e))?
                } else {
                    let entries = context_entries(ctx, step)?;
                    let r = copy::select_context(&[source.to_string()], entries, &ctx.hasher)
                        .map_err(|e| step_error(ctx, step, format!("--mount=type=bind: {e}")))?;
                    mc.nested(3, &copy::inputs_digest(&r));
                    summary.files.extend(file_summary(&r));
                    r
                };
                // A cache mount's seed is not keyed: cache contents never are.
                if !seeds_cache {
                    inputs.nested(2, &mc);
                }
                binds.push((i, roots));
            }
            if r.insecure {
                return Err(step_error(
                    ctx,
                    step,
                    "RUN --security=insecure is not supported",
                ));
            }
            for (k, v) in &r.env {
                if !r.unkeyed.contains(k) {
                    summary.env.insert(k.clone(), v.clone());
                }
            }
        }
        StepKind::Workdir(..) => {}
    }
    let key = step.key(&state.key, &inputs);
    let slot = slot(ctx, stage, si);
    summary.canonical = describe(step);
    if si == 0 {
        summary.base = Some(state.base.clone());
    }
    // The per-file summary costs a hash per file: made for a miss (it is recorded) or --explain,
    // never for a plain hit.
    let mut files_summarized = false;
    if ctx.opts.explain {
        if let Some(r) = roots.as_ref() {
            summary.files.extend(file_summary(r));
            files_summarized = true;
        }
    }
    // COPY --link: the layer is written against an empty tree, so it does not depend on the
    // layers below; a second key without the parent finds it again after the base changed.
    // Owners named by --chown are resolved in the base and keyed as numbers.
    let link_key = match &step.kind {
        StepKind::Copy(c) if c.copy.link => {
            let mut li = inputs.clone();
            if let Some(spec) = c.copy.chown.as_deref() {
                let (u, g) = copy::resolve_chown(spec, &state.view());
                li.str(5, &format!("{u}:{g}"));
            }
            Some(plan::step_key(None, &step.definition, &li))
        }
        _ => None,
    };
    if !ctx.opts.no_cache {
        let linked = match &link_key {
            Some(lk) => ctx.store.step(&lk.to_hex())?.map(|mut r| {
                // Reused on this parent: record it under the full key too.
                r.key = key.to_hex();
                r.slot = slot.clone();
                r.parent = state.key.to_hex();
                r
            }),
            None => None,
        };
        let mut found = match ctx.store.step(&key.to_hex())? {
            Some(r) => Some((r, false)),
            None => linked.map(|r| (r, true)),
        };
        if found.is_none() {
            // --cache-from: the record and its layer come from the registry cache.
            let say = |line: &str| ctx.progress.event(Event::Output { n, line });
            for rc in &ctx.opts.remote_caches {
                if let Some(r) = rc
                    .materialize(ctx.store, &key.to_hex(), &slot, &say)
                    .map_err(|e| {
                        step_error(ctx, step, format!("--cache-from {}: {e}", rc.name()))
                    })?
                {
                    found = Some((r, false));
                    break;
                }
            }
        }
        if let Some((rec, relinked)) = found {
            if let Some(next) = reuse(ctx, state, &rec)? {
                if relinked {
                    ctx.store.record_step(&StepRecord {
                        chain_id: next.chain(),
                        hits: 0,
                        ..rec.clone()
                    })?;
                }
                ctx.hits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(rec.key.clone());
                ctx.keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(rec.key.clone());
                ctx.cached
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if ctx.opts.explain {
                    let lines = explain(&key, &state.key, &summary, None, relinked);
                    ctx.progress.event(Event::Explain { n, lines: &lines });
                }
                ctx.progress.event(Event::Cached { n });
                *state = StageState { key, ..next };
                return Ok(StepOutcome {
                    cached: true,
                    created: rec.created,
                });
            }
        }
    }
    let prev = ctx
        .store
        .previous_step(&slot, &key.to_hex(), &state.key.to_hex())?;
    // The previous build of this COPY on the same parent: files whose type, mode and content
    // are unchanged are hard-linked from its (immutable) snapshot instead of copied again.
    let mut link_from: Option<PathBuf> = None;
    if let Some(r) = roots.as_mut() {
        if !files_summarized {
            summary.files.extend(file_summary(r));
        }
        if let Some(p) = prev.as_ref().filter(|p| p.parent == state.key.to_hex()) {
            let old: Inputs = serde_json::from_str(&p.inputs).unwrap_or_default();
            if let Some(snap) = p
                .chain_id
                .map(|c| ctx.store.snapshot(&c))
                .transpose()?
                .flatten()
            {
                link_from = Some(ctx.store.snapshot_fs(&snap));
                mark_unchanged(r, &summary.files, &old.files);
            }
        }
    }
    let why = why_missed(ctx, prev.as_ref(), &state.key.to_hex(), &summary, si == 0);
    if ctx.opts.explain {
        let lines = explain(&key, &state.key, &summary, Some(prev.as_ref()), false);
        ctx.progress.event(Event::Explain { n, lines: &lines });
    }
    ctx.progress.event(Event::Miss { n, why: &why });

    // Execute into a fresh snapshot dir; its fs/ is the upper dir.
    let t_exec = Instant::now();
    let dir = ctx.store.prepare_snapshot_dir()?;
    let upper = dir.path().join("fs");
    let view = state.view();
    let produced: Produced = match &step.kind {
        StepKind::Copy(c) => {
            let roots = match (roots, &from_src) {
                (Some(r), _) => r,
                (None, Some(v)) => {
                    let what = match &c.source {
                        Source::Image(r) => format!("image {r}"),
                        Source::Stage(i) => format!("stage {}", ctx.plan.stages[*i].display_name()),
                        Source::Context => "the context".into(),
                    };
                    let r = copy::select_view(&c.copy.sources, v, &what)
                        .map_err(|e| step_error(ctx, step, e))?;
                    let mut r = copy::apply_parents_exclude(r, c.copy.parents, &c.copy.exclude)
                        .map_err(|e| step_error(ctx, step, e))?;
                    for src in &c.copy.inline {
                        r.push(inline_root(src, ctx.now));
                    }
                    r
                }
                (None, None) => unreachable!("copy sources resolved above"),
            };
            let chown = c
                .copy
                .chown
                .as_deref()
                .map(|s| copy::resolve_chown(s, &view));
            let chmod = c
                .copy
                .chmod
                .as_deref()
                .map(|m| u32::from_str_radix(m, 8))
                .transpose()
                .map_err(|e| step_error(ctx, step, e.to_string()))?;
            let empty = View::default();
            let mut w = copy::Writer::new(
                &upper,
                if c.copy.link { &empty } else { &view },
                copy::WriteOptions {
                    chown,
                    chmod,
                    unpack: c.copy.add && c.copy.unpack != Some(false),
                    now: ctx.now,
                    link_from: link_from.clone(),
                },
            )
            .map_err(|e| step_error(ctx, step, e))?;
            w.copy(&roots, &c.dest)
                .map_err(|e| step_error(ctx, step, e))?;
            w.finish().map_err(|e| step_error(ctx, step, e))?;
            Produced::Upper
        }
        StepKind::Workdir(path, user) => {
            let exists = view.resolve(path, true)?.is_some_and(|f| f.is_dir());
            if !exists {
                let chown = match user.as_str() {
                    u if !u.is_empty() => Some(copy::resolve_chown(u, &view)),
                    _ => None,
                };
                let mut w = copy::Writer::new(
                    &upper,
                    &view,
                    copy::WriteOptions {
                        chown,
                        chmod: None,
                        unpack: false,
                        now: ctx.now,
                        link_from: None,
                    },
                )
                .map_err(|e| step_error(ctx, step, e))?;
                w.ensure_dir(path).map_err(|e| step_error(ctx, step, e))?;
                w.finish().map_err(|e| step_error(ctx, step, e))?;
            }
            Produced::Upper
        }
        StepKind::Run(r) => {
            let network_none = ctx.opts.network_none || r.network == plan::Network::None;
            // Bind sources are copied into the step's scratch files (never into the layer), so
            // the RUN sees exactly what was keyed and `rw` writes are discarded.
            let mut bind_dirs = BTreeMap::new();
            for (i, roots) in &binds {
                let base = dir.path().join("files").join("binds").join(i.to_string());
                std::fs::create_dir_all(&base)?;
                let empty = View::default();
                let mut w = copy::Writer::new(
                    &base,
                    &empty,
                    copy::WriteOptions {
                        chown: None,
                        chmod: None,
                        unpack: false,
                        now: ctx.now,
                        link_from: None,
                    },
                )
                .map_err(|e| step_error(ctx, step, e))?;
                w.copy(roots, "/").map_err(|e| step_error(ctx, step, e))?;
                w.finish().map_err(|e| step_error(ctx, step, e))?;
                let (path, is_dir) = match roots.as_slice() {
                    [r] if !r.is_dir => (base.join(&r.name), false),
                    _ => (base, true),
                };
                bind_dirs.insert(*i, (path, is_dir));
            }
            let out = |line: &str| ctx.progress.event(Event::Output { n, line });
            match exec::run(
                ctx.store,
                &exec::RunRequest {
                    run: r,
                    lowers: &state.lowers,
                    view: &view,
                    snapshot_dir: dir.path(),
                    network_none,
                    snapshotter: ctx.opts.snapshotter,
                    secrets: &ctx.opts.secrets,
                    ssh: &ctx.opts.ssh,
                    binds: &bind_dirs,
                },
                &out,
            ) {
                Ok(p) => p,
                Err(exec::RunError::Exit { code, tail }) => {
                    return Err(BuildError::RunFailed {
                        file: ctx.df.file.clone(),
                        line: step.line,
                        text: step.text.clone(),
                        code,
                        tail,
                    })
                }
                Err(exec::RunError::Setup(m)) => return Err(step_error(ctx, step, m)),
            }
        }
    };

    tracing::debug!(step = %step.text, secs = t_exec.elapsed().as_secs_f64(), "executed");
    let t_layer = Instant::now();
    let entries: Vec<TarEntry> = match &produced {
        Produced::Upper => diff::overlay::changes(&upper)?,
        Produced::Walked { entries, .. } => entries.clone(),
    };
    // A step that changed nothing still has a layer, an empty tar, as BuildKit 0.13 writes it
    // (its history entry is not an empty_layer one).
    let layer = encode(ctx, &entries).map_err(|e| no_space(ctx, step, &entries, e))?;
    tracing::debug!(step = %step.text, entries = entries.len(), secs = t_layer.elapsed().as_secs_f64(), "layer written");
    let t_commit = Instant::now();
    let mut next = state.clone();
    next.layers.push(layer.clone());
    let chain = next.chain().expect("a layer");
    let parent_chain = state.chain();
    let snap = match produced {
        Produced::Upper => {
            for d in ["work", "rootfs", "files"] {
                let p = dir.path().join(d);
                if p.exists() {
                    std::fs::remove_dir_all(&p)?;
                }
            }
            ctx.store.commit_snapshot(
                dir,
                chain,
                parent_chain,
                layer.diff_id,
                layer.uncompressed_size,
            )?
        }
        Produced::Walked { .. } => {
            drop(dir);
            crate::snapshotter::unpack_layer_record(ctx.store, &layer, chain, parent_chain)
                .map_err(ImageError::from)?
        }
    };
    next.lowers.push(ctx.store.snapshot_fs(&snap));
    let built = kiln_store::store::now();
    let rec = StepRecord {
        key: key.to_hex(),
        slot,
        parent: state.key.to_hex(),
        layer: Some(layer),
        chain_id: next.chain(),
        instruction: step.text.clone(),
        inputs: serde_json::to_string(&summary).unwrap_or_default(),
        created: built,
        last_used: built,
        hits: 0,
    };
    ctx.store.record_step(&rec)?;
    ctx.keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(rec.key.clone());
    if let Some(lk) = &link_key {
        let link_slot = blake3::hash(format!("{}:link", rec.slot).as_bytes())
            .to_hex()
            .to_string();
        ctx.store.record_step(&StepRecord {
            key: lk.to_hex(),
            slot: link_slot,
            parent: String::new(),
            ..rec.clone()
        })?;
    }
    tracing::debug!(step = %step.text, secs = t_commit.elapsed().as_secs_f64(), "committed");
    next.key = key;
    next.executed = true;
    *state = next;
    Ok(StepOutcome {
        cached: false,
        created: built,
    })
}

fn summary_path(root: &copy::Root_, it: &copy::Item) -> Option<String> {
    match (root.name.is_empty(), it.rel.is_empty()) {
        (true, true) => None,
        (_, true) => Some(root.name.clone()),
        (true, false) => Some(it.rel.clone()),
        (false, false) => Some(format!("{}/{}", root.name, it.rel)),
    }
}

/// Flags the items whose summary equals the previous build's.
fn mark_unchanged(
    roots: &mut [copy::Root_],
    now: &BTreeMap<String, String>,
    before: &BTreeMap<String, String>,
) {
    for root in roots.iter_mut() {
        let name = root.name.clone();
        let is_dir = root.is_dir;
        for it in root.items.iter_mut() {
            let probe = copy::Root_ {
                name: name.clone(),
                path: String::new(),
                no_unpack: false,
                is_dir,
                items: vec![],
            };
            if let Some(p) = summary_path(&probe, it) {
                it.unchanged = now.get(&p).is_some() && now.get(&p) == before.get(&p);
            }
        }
    }
}

/// Per selected file, a short digest of (type, mode, content), for explaining the next miss.
fn file_summary(roots: &[copy::Root_]) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for root in roots {
        for it in &root.items {
            let Some(p) = summary_path(root, it) else {
                continue;
            };
            let mut h = blake3::Hasher::new();
            h.update(format!("{:?}", it.kind).as_bytes());
            h.update(&it.mode.to_le_bytes());
            h.update(&it.hash);
            files.insert(p, h.finalize().to_hex()[..16].to_string());
        }
    }
    files
}

/// What an executed step left: an upper dir to diff, or the walk differ's entries.
pub enum Produced {
    Upper,
    /// The entries, and the temp trees they point into (kept until the layer is written).
    Walked {
        entries: Vec<TarEntry>,
        _trees: Vec<tempfile::TempDir>,
    },
}

/// A source that is one regular file owned by root, copied under `name`.
fn file_root(
    name: &str,
    mode: u32,
    mtime: i64,
    data: copy::Data,
    hash: [u8; 32],
    size: u64,
) -> copy::Root_ {
    copy::Root_ {
        name: name.to_string(),
        path: String::new(),
        no_unpack: false,
        is_dir: false,
        items: vec![copy::Item {
            rel: String::new(),
            kind: copy::Kind::File,
            mode,
            uid: 0,
            gid: 0,
            mtime: (mtime, 0),
            data,
            hash,
            size,
            unchanged: false,
        }],
    }
}

/// A download: mode 0600, Last-Modified mtime, unpacked only with `--unpack=true`.
fn url_root(f: &remote::Fetched, unpack: bool) -> copy::Root_ {
    let mut r = file_root(
        &f.name,
        0o600,
        f.mtime,
        copy::Data::Host(f.path.clone()),
        f.blake3_bytes(),
        f.size,
    );
    r.no_unpack = !unpack;
    r
}

fn inline_root(src: &crate::frontend::instructions::InlineSource, now: i64) -> copy::Root_ {
    file_root(
        &src.path,
        0o644,
        now,
        copy::Data::Inline(src.data.clone().into_bytes()),
        *blake3::hash(src.data.as_bytes()).as_bytes(),
        src.data.len() as u64,
    )
}

/// A full disk while writing a step's layer, said with the step, the store and the space the
/// layer wants (its files' size, the most a layer of them takes); other errors unchanged. The
/// store stays consistent: the ingest file is removed and nothing is recorded.
fn no_space(ctx: &Ctx<'_>, step: &plan::Step, entries: &[TarEntry], e: BuildError) -> BuildError {
    // The encoder's errors reach here as text (BuildError::Io) or as the store's io::Error.
    let full = match &e {
        BuildError::Store(kiln_store::Error::Io { source, .. }) => {
            source.raw_os_error() == Some(libc::ENOSPC)
        }
        _ => e.to_string().contains("os error 28"),
    };
    if !full {
        return e;
    }
    let need: u64 = entries
        .iter()
        .filter_map(|t| match &t.source {
            diff::EntrySource::Host(p) => std::fs::symlink_metadata(p).ok(),
            _ => None,
        })
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let dir = ctx.store.ingest_dir();
    let free = crate::sys::free_space(&dir).unwrap_or(0);
    step_error(
        ctx,
        step,
        format!(
            "no space left on device writing its layer to {}: the layer holds {} of files, {} is free there",
            dir.display(),
            crate::timefmt::human_size(need),
            crate::timefmt::human_size(free)
        ),
    )
}

/// Writes a layer blob from sorted entries.
fn encode(ctx: &Ctx<'_>, entries: &[TarEntry]) -> Result<LayerRecord, BuildError> {
    let ingest = ctx.store.ingest_prehashed()?;
    let enc = LayerEncoder::new(ingest, ctx.opts.compression)?;
    let opts = TarOptions {
        source_date_epoch: ctx.opts.source_date_epoch,
    };
    let enc = diff::write_entries(entries, enc, &opts)?;
    let (d, ingest) = enc.finish()?;
    ingest.commit(Some(d.digest))?;
    Ok(LayerRecord {
        digest: d.digest,
        diff_id: d.diff_id,
        media_type: ctx.opts.compression.media_type().to_string(),
        size: d.size,
        uncompressed_size: d.uncompressed_size,
    })
}

/// The state after a cached step, if its layer and snapshot can be had.
fn reuse(
    ctx: &Ctx<'_>,
    state: &StageState,
    rec: &StepRecord,
) -> Result<Option<StageState>, BuildError> {
    let mut next = state.clone();
    // A record from before empty steps had layers gets the empty layer now, so the image is
    // the same whether the step ran or came from the cache.
    let l = &match &rec.layer {
        Some(l) => l.clone(),
        None => encode(ctx, &[])?,
    };
    if !ctx.store.has_blob(&l.digest) {
        return Ok(None);
    }
    next.layers.push(l.clone());
    let chain = next.chain().expect("a layer");
    let snap = match ctx.store.snapshot(&chain)? {
        Some(s) => s,
        None => crate::snapshotter::unpack_layer_record(ctx.store, l, chain, state.chain())
            .map_err(ImageError::from)?,
    };
    next.lowers.push(ctx.store.snapshot_fs(&snap));
    next.executed = false;
    Ok(Some(next))
}
