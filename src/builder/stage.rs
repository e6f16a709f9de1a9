//! Stages: a stage's state as its steps run, its base, and its image config and history.

use super::step::run_step;
use super::{BuildError, Ctx, Event};
use crate::image::oci::{self, History, ImageConfig, RootFs, RunConfig};
use crate::image::ImageError;
use crate::plan::{self, Base, CopyStep, Source, Stage, StepKey, StepKind};
use crate::snapshotter::view::View;
use crate::timefmt;
use kiln_store::{chain_ids, Digest, LayerRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// A stage's state after its last step.
#[derive(Clone, Debug)]
pub(super) struct StageState {
    pub(super) key: StepKey,
    /// What the stage is built on, for explaining a changed base.
    pub(super) base: String,
    pub(super) layers: Vec<LayerRecord>,
    /// How many of `layers`, from the bottom, are a base image's (kept as they are when the
    /// build's layers are retimed).
    pub(super) base_layers: usize,
    /// Snapshot fs dirs, bottom to top.
    pub(super) lowers: Vec<PathBuf>,
    pub(super) config: ImageConfig,
}

impl StageState {
    pub(super) fn view(&self) -> View {
        View::new(self.lowers.iter().rev().cloned().collect())
    }
    pub(super) fn chain(&self) -> Option<Digest> {
        chain_ids(&self.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>())
            .last()
            .copied()
    }
}

pub(super) fn empty_config() -> ImageConfig {
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

/// The stages a stage needs first.
pub(super) fn stage_deps(s: &Stage) -> Vec<usize> {
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
            base_layers: 0,
            lowers: vec![],
            config: empty_config(),
        }),
        Base::Image(r) => {
            let img = &ctx.images[r];
            let snaps =
                crate::snapshotter::unpack_image(ctx.store, img).map_err(ImageError::from)?;
            Ok(StageState {
                key: plan::base_key(&img.manifest.digest.to_string()),
                base: format!("image {r} ({})", img.manifest.digest),
                layers: img.layers.clone(),
                base_layers: img.layers.len(),
                lowers: snaps.iter().map(|s| ctx.store.snapshot_fs(s)).collect(),
                config: ctx.configs[r].clone(),
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

pub(super) fn run_stage(
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
    // gives the same image ID; metadata entries take the last step's; SOURCE_DATE_EPOCH and
    // --timestamp win.
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
        let r = run_step(ctx, stage, si, &mut state, results, n).inspect_err(|_| {
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
    let stamp = |t: i64| timefmt::rfc3339(ctx.opts.times.stamp(t));
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
