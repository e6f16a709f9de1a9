//! The build orchestrator: the only module that drives a build from a parsed Dockerfile to an
//! image in the store (docs/ARCHITECTURE.md "A build").
//!
//! 1. Plan with the bases' configs ([`plan::plan_with_bases`]; [`Bases`] brings in what the
//!    store lacks).
//! 2. Stages run in waves ([`stage`]): every stage whose dependencies are done runs at once
//!    (scoped threads), so independent stages build in parallel; only the stages the target
//!    reaches were planned.
//! 3. Each step ([`step`]): resolve its inputs ([`inputs`]), key it, look it up ([`lookup`]: local,
//!    `--link`, `--cache-from`); on a miss say why ([`explain`]), execute ([`execute`]: COPY/ADD
//!    and WORKDIR through [`copy`], RUN through [`exec`] in a root the snapshotter prepares) and
//!    commit the layer, snapshot and cache row ([`commit`]).
//! 4. The target stage's layers and config (the base's config with the stage's changes, history
//!    with `empty_layer` for metadata instructions) become the image, tagged.
//!
//! Crash safety comes from the store: blobs, snapshots and rows are committed in that order, a
//! lease keeps GC away for the whole build, and temp dirs live under ingest/ until committed.

mod cgroup;
mod commit;
pub mod copy;
pub mod exec;
mod execute;
mod explain;
mod inplace;
pub use explain::inputs_for_export;
mod inputs;
mod lookup;
pub mod prune;
pub mod remote;
mod stage;
mod step;

use stage::{run_stage, stage_deps, StageState};

use crate::context::hash::Hasher;
use crate::context::{Context, ContextError, Entry};
use crate::frontend::{Dockerfile, DockerfileError};
use crate::image::oci::ImageConfig;
use crate::image::{self, ImageError};
use crate::plan::{self, CopyStep, Plan, PlanOptions, Source, StepKind};
use kiln_store::{Compression, ImageRecord, LayerRecord, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

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
    pub snapshotter: crate::snapshotter::Kind,
    /// What the image's layers, config and history say of time: their own (default),
    /// clamped to SOURCE_DATE_EPOCH, or all one `--timestamp`. Steps are keyed and cached
    /// without it: it applies when the image is made.
    pub times: crate::diff::Times,
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

/// Where base and `--from` images come from when the store lacks them (the CLI pulls them).
pub trait Bases: Sync {
    /// Makes `reference` present in `store`, before the build resolves it. The error is shown
    /// as the build's.
    fn ensure(&self, store: &Store, reference: &str) -> Result<(), String>;
}

/// Only what the store holds: a missing image is [`BuildError::MissingImage`].
pub struct StoreOnly;

impl Bases for StoreOnly {
    fn ensure(&self, _: &Store, _: &str) -> Result<(), String> {
        Ok(())
    }
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
    Base(String),
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

/// What every stage and step of one build shares.
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

/// Builds the Dockerfile `df` with `context`, reporting to `progress`.
pub fn build(
    store: &Store,
    df: &Dockerfile,
    context: &Context,
    opts: &BuildOptions,
    bases: &dyn Bases,
    progress: &dyn Progress,
) -> Result<Outcome, BuildError> {
    let _lease = store.lease()?;
    let popts = PlanOptions {
        build_args: opts.build_args.clone(),
        target: opts.target.clone(),
        bases: BTreeMap::new(),
    };
    let mut images = BTreeMap::new();
    let mut configs = BTreeMap::new();
    let (plan, _) = plan::plan_with_bases(df, &popts, |r, line| {
        bases.ensure(store, r).map_err(BuildError::Base)?;
        let resolved = match image::resolve(store, r) {
            Ok(res) => res.image,
            Err(ImageError::NotFound(_)) => {
                return Err(BuildError::MissingImage {
                    file: df.file.clone(),
                    line,
                    reference: r.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let cfg = image::read_config(store, &resolved)?;
        let base = plan::Config::from(&cfg.config);
        images.insert(r.to_string(), resolved);
        configs.insert(r.to_string(), cfg);
        Ok(Some(base))
    })?;
    tracing::debug!("planned");
    let mut numbers = Vec::new();
    let mut n = 0;
    for s in &plan.stages {
        numbers.push(n + 1);
        n += 1 + s.steps.len();
    }
    // The time of files a step makes (heredocs, COPY's parent dirs): the real one, as the
    // step's layer keeps times; the image's mode rewrites it with the rest.
    let now = kiln_store::store::now();
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
        let mut ready: Vec<usize> = (0..count)
            .filter(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
            .collect();
        // In place, RUN steps share `/`: one stage at a time.
        if ctx.opts.snapshotter == crate::snapshotter::Kind::InPlace {
            ready.truncate(1);
        }
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
        .steps()
        .touch(&ctx.hits.lock().unwrap_or_else(|p| p.into_inner()))?;

    let state = results[plan.target]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| BuildError::Internal("target stage did not run".into()))?;
    let layers = image_layers(store, &state, opts)?;
    let mut config = state.config;
    if !opts.labels.is_empty() {
        let labels = config.config.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in &opts.labels {
            labels.insert(k.clone(), v.clone());
        }
    }
    config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id).collect();
    let image = image::create_image(store, &config, layers, &opts.tags)?;
    tracing::debug!("image committed");
    Ok(Outcome {
        image,
        keys: ctx.keys.into_inner().unwrap_or_else(|p| p.into_inner()),
        steps: plan.stages.iter().map(|s| s.steps.len()).sum(),
        cached: ctx.cached.load(std::sync::atomic::Ordering::Relaxed),
        warnings: plan.warnings.clone(),
    })
}

/// The image's layers in the wanted compression and timestamp mode: a cached layer is
/// transcoded (a `--compression gzip` build after zstd ones) and the build's own layers retimed
/// (the base image's stay as they are, shared with it); each variant is recorded once.
fn image_layers(
    store: &Store,
    state: &stage::StageState,
    opts: &BuildOptions,
) -> Result<Vec<LayerRecord>, BuildError> {
    state
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let times = if i < state.base_layers {
                crate::diff::Times::Keep
            } else {
                opts.times
            };
            Ok(image::retime::layer_with_times(
                store,
                l,
                times,
                opts.compression,
            )?)
        })
        .collect()
}

fn step_error(ctx: &Ctx<'_>, step: &plan::Step, message: impl Into<String>) -> BuildError {
    BuildError::Step {
        file: ctx.df.file.clone(),
        line: step.line,
        text: step.text.clone(),
        message: message.into(),
    }
}
