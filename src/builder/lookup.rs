//! Cache lookup: the local step cache by key, `COPY --link`'s parent-free key, and the remote
//! caches of `--cache-from`; a hit gives the stage's next state from the recorded layer and its
//! snapshot (unpacked again when it was pruned).

use super::commit::encode;
use super::explain::{explain, Summary};
use super::stage::StageState;
use super::{copy, step_error, BuildError, Ctx, Event};
use crate::image::ImageError;
use crate::key::schema;
use crate::plan::{self, StepKey, StepKind};
use kiln_store::StepRecord;

/// COPY --link: the layer is written against an empty tree, so it does not depend on the layers
/// below; a second key without the parent finds it again after the base changed. Owners named
/// by --chown are resolved in the base and keyed as numbers.
pub(super) fn link_key(
    step: &plan::Step,
    inputs: &schema::Inputs,
    state: &StageState,
) -> Option<StepKey> {
    match &step.kind {
        StepKind::Copy(c) if c.copy.link => {
            let mut li = inputs.clone();
            if let Some(spec) = c.copy.chown.as_deref() {
                let (u, g) = copy::resolve_chown(spec, &state.view());
                li.link_owner(u, g);
            }
            Some(plan::step_key(None, &step.definition, li.as_canon()))
        }
        _ => None,
    }
}

/// A cache hit: the state after the step, and when the step was first built.
pub(super) struct Hit {
    pub(super) state: StageState,
    pub(super) created: i64,
}

/// Looks the step up in every cache; on a hit, records it and reports it.
#[allow(clippy::too_many_arguments)]
pub(super) fn find(
    ctx: &Ctx<'_>,
    step: &plan::Step,
    state: &StageState,
    key: &StepKey,
    link_key: Option<&StepKey>,
    slot: &str,
    summary: &Summary,
    n: usize,
) -> Result<Option<Hit>, BuildError> {
    let linked = match link_key {
        Some(lk) => ctx.store.steps().get(&lk.to_hex())?.map(|mut r| {
            // Reused on this parent: record it under the full key too.
            r.key = key.to_hex();
            r.slot = slot.to_string();
            r.parent = state.key.to_hex();
            r
        }),
        None => None,
    };
    let mut found = match ctx.store.steps().get(&key.to_hex())? {
        Some(r) => Some((r, false)),
        None => linked.map(|r| (r, true)),
    };
    if found.is_none() {
        // --cache-from: the record and its layer come from the registry cache.
        let say = |line: &str| ctx.progress.event(Event::Output { n, line });
        for rc in &ctx.opts.remote_caches {
            if let Some(r) = rc
                .materialize(ctx.store, &key.to_hex(), slot, &say)
                .map_err(|e| step_error(ctx, step, format!("--cache-from {}: {e}", rc.name())))?
            {
                found = Some((r, false));
                break;
            }
        }
    }
    let Some((rec, relinked)) = found else {
        return Ok(None);
    };
    let Some(next) = reuse(ctx, state, &rec)? else {
        return Ok(None);
    };
    if relinked {
        ctx.store.steps().record(&StepRecord {
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
        let lines = explain(key, &state.key, summary, None, relinked);
        ctx.progress.event(Event::Explain { n, lines: &lines });
    }
    ctx.progress.event(Event::Cached { n });
    Ok(Some(Hit {
        state: StageState { key: *key, ..next },
        created: rec.created,
    }))
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
        None => encode(ctx, &[], None)?,
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
    Ok(Some(next))
}
