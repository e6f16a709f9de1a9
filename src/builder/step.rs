//! One step: resolve its inputs, key it, look it up, and on a miss explain why, execute and
//! commit. Each phase is its own module; this is the order they run in.

use super::commit::{commit, Row};
use super::execute::execute;
use super::explain::{describe, explain, file_summary, mark_unchanged, why_missed, Summary};
use super::inputs::resolve;
use super::stage::StageState;
use super::{lookup, BuildError, Ctx, Event};
use crate::plan::Stage;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// What running one step did.
pub(super) struct StepOutcome {
    pub(super) cached: bool,
    /// When the step was first built (seconds).
    pub(super) created: i64,
}

/// Where a step's rows are found across builds: the Dockerfile, the stage, the step's place.
fn slot(ctx: &Ctx<'_>, stage: &Stage, si: usize) -> String {
    blake3::hash(format!("{}\0{}\0{}", ctx.opts.dockerfile_id, stage.position, si).as_bytes())
        .to_hex()
        .to_string()
}

/// Runs (or reuses) step `si` of `stage`, numbered `n` in the progress output.
pub(super) fn run_step(
    ctx: &Ctx<'_>,
    stage: &Stage,
    si: usize,
    state: &mut StageState,
    results: &[Mutex<Option<StageState>>],
    n: usize,
) -> Result<StepOutcome, BuildError> {
    let step = &stage.steps[si];
    let mut resolved = resolve(ctx, step, results, n)?;
    let key = step.key(&state.key, resolved.inputs.as_canon());
    let slot = slot(ctx, stage, si);
    resolved.summary.canonical = describe(step);
    if si == 0 {
        resolved.summary.base = Some(state.base.clone());
    }
    // The per-file summary costs a hash per file: made for a miss (it is recorded) or --explain,
    // never for a plain hit.
    let mut files_summarized = false;
    if ctx.opts.explain {
        if let Some(r) = resolved.roots.as_ref() {
            resolved.summary.files.extend(file_summary(r));
            files_summarized = true;
        }
    }
    let link_key = lookup::link_key(step, &resolved.inputs, state);
    if !ctx.opts.no_cache {
        let hit = lookup::find(
            ctx,
            step,
            state,
            &key,
            link_key.as_ref(),
            &slot,
            &resolved.summary,
            n,
        )?;
        if let Some(hit) = hit {
            *state = hit.state;
            return Ok(StepOutcome {
                cached: true,
                created: hit.created,
            });
        }
    }
    let prev = ctx
        .store
        .steps()
        .previous(&slot, &key.to_hex(), &state.key.to_hex())?;
    // The previous build of this COPY on the same parent: files whose type, mode and content
    // are unchanged are hard-linked from its (immutable) snapshot instead of copied again.
    let mut link_from: Option<PathBuf> = None;
    if let Some(r) = resolved.roots.as_mut() {
        if !files_summarized {
            resolved.summary.files.extend(file_summary(r));
        }
        if let Some(p) = prev.as_ref().filter(|p| p.parent == state.key.to_hex()) {
            let old: Summary = serde_json::from_str(&p.inputs).unwrap_or_default();
            if let Some(snap) = p
                .chain_id
                .map(|c| ctx.store.snapshot(&c))
                .transpose()?
                .flatten()
            {
                link_from = Some(ctx.store.snapshot_fs(&snap));
                mark_unchanged(r, &resolved.summary.files, &old.files);
            }
        }
    }
    let summary = std::mem::take(&mut resolved.summary);
    let why = why_missed(
        ctx.opts.no_cache,
        prev.as_ref(),
        &state.key.to_hex(),
        &summary,
        si == 0,
    );
    if ctx.opts.explain {
        let lines = explain(&key, &state.key, &summary, Some(prev.as_ref()), false);
        ctx.progress.event(Event::Explain { n, lines: &lines });
    }
    ctx.progress.event(Event::Miss { n, why: &why });

    let t_exec = Instant::now();
    let executed = execute(ctx, step, state, resolved, link_from, n)?;
    tracing::debug!(step = %step.text, secs = t_exec.elapsed().as_secs_f64(), "executed");
    let row = Row {
        key,
        link_key,
        slot,
        summary,
    };
    let (next, built) = commit(ctx, step, state, executed, row)?;
    *state = next;
    Ok(StepOutcome {
        cached: false,
        created: built,
    })
}
