//! Commit: an executed step's changes become a layer blob, its snapshot is recorded under the
//! new ChainID, and the step's cache row (and `--link`'s parent-free row) is written. The order
//! (blob, snapshot, rows) is what keeps a crash from leaving a row that points at nothing.

use super::execute::Executed;
use super::explain::Summary;
use super::stage::StageState;
use super::{step_error, BuildError, Ctx};
use crate::diff::{self, TarEntry, TarOptions};
use crate::image::ImageError;
use crate::plan::{self, StepKey};
use kiln_store::{LayerEncoder, LayerRecord, StepRecord};
use std::time::Instant;

/// What the step's cache row is written under.
pub(super) struct Row {
    pub(super) key: StepKey,
    pub(super) link_key: Option<StepKey>,
    pub(super) slot: String,
    pub(super) summary: Summary,
}

/// Commits `executed` on top of `state`; returns the stage's next state and the build time.
pub(super) fn commit(
    ctx: &Ctx<'_>,
    step: &plan::Step,
    state: &StageState,
    executed: Executed,
    row: Row,
) -> Result<(StageState, i64), BuildError> {
    let t_layer = Instant::now();
    let snapshotter = ctx.opts.snapshotter.get();
    let Executed { dir, active } = executed;
    let entries: Vec<TarEntry> = match &active {
        Some(a) => snapshotter.changes(a)?,
        None => diff::overlay::changes(&dir.path().join("fs"))?,
    };
    // A step that changed nothing still has a layer, an empty tar, as BuildKit 0.13 writes it
    // (its history entry is not an empty_layer one).
    // The same step's previous build: a rebuild copies the frames of the files it still has.
    let previous = match ctx.opts.compression {
        kiln_store::Compression::ZstdChunked => {
            ctx.store
                .steps()
                .previous(&row.slot, &row.key.to_hex(), &state.key.to_hex())?
        }
        _ => None,
    };
    let layer =
        encode(ctx, &entries, previous.as_ref()).map_err(|e| no_space(ctx, step, &entries, e))?;
    tracing::debug!(step = %step.text, entries = entries.len(), secs = t_layer.elapsed().as_secs_f64(), "layer written");
    drop(entries);
    let t_commit = Instant::now();
    let mut next = state.clone();
    next.layers.push(layer.clone());
    let chain = next.chain().expect("a layer");
    let parent_chain = state.chain();
    let snap = match active {
        Some(a) => snapshotter.commit(ctx.store, a, dir, &layer, chain, parent_chain),
        None => crate::snapshotter::commit_upper(ctx.store, dir, &layer, chain, parent_chain),
    }
    .map_err(ImageError::from)?;
    next.lowers.push(ctx.store.snapshot_fs(&snap));
    let built = kiln_store::store::now();
    let rec = StepRecord {
        key: row.key.to_hex(),
        slot: row.slot,
        parent: state.key.to_hex(),
        layer: Some(layer),
        chain_id: next.chain(),
        instruction: step.text.clone(),
        inputs: serde_json::to_string(&row.summary).unwrap_or_default(),
        created: built,
        last_used: built,
        hits: 0,
    };
    ctx.store.steps().record(&rec)?;
    ctx.keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(rec.key.clone());
    if let Some(lk) = &row.link_key {
        let link_slot = blake3::hash(format!("{}:link", rec.slot).as_bytes())
            .to_hex()
            .to_string();
        ctx.store.steps().record(&StepRecord {
            key: lk.to_hex(),
            slot: link_slot,
            parent: String::new(),
            ..rec.clone()
        })?;
    }
    tracing::debug!(step = %step.text, secs = t_commit.elapsed().as_secs_f64(), "committed");
    next.key = row.key;
    Ok((next, built))
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

/// Writes a layer blob from sorted entries. A zstd:chunked layer copies the frames of content
/// that `previous`'s layer (the same step's last build) holds: as they are for files that are
/// hard links to that build's snapshot (the same inode, so the same bytes: COPY links the files
/// it did not change), after checking them against the content for the rest.
pub(super) fn encode(
    ctx: &Ctx<'_>,
    entries: &[TarEntry],
    previous: Option<&kiln_store::StepRecord>,
) -> Result<LayerRecord, BuildError> {
    let ingest = ctx.store.ingest_prehashed()?;
    let enc = match ctx.opts.compression {
        kiln_store::Compression::ZstdChunked => {
            let mut frames = kiln_store::chunked::FrameIndex::default();
            let mut known = None;
            if let Some((p, layer)) = previous.and_then(|p| Some((p, p.layer.as_ref()?))) {
                // Unreadable or not chunked: nothing to copy, the layer is compressed whole.
                let path = ctx.store.blob_path(&layer.digest);
                if let Ok(Some(blob)) = kiln_store::chunked::ChunkedBlob::open(&path) {
                    let _ = frames.add(&blob);
                    known = known_files(ctx, entries, p, &blob);
                }
            }
            let frames = (!frames.is_empty()).then(|| std::sync::Arc::new(frames));
            LayerEncoder::chunked(ingest, frames, known)
        }
        c => LayerEncoder::new(ingest, c)?,
    };
    // The step's layer keeps its files' times; the image's timestamp mode is applied to a copy
    // when the image is made (`image::retime`), so the cached step serves every mode.
    let enc = diff::write_entries(entries, enc, &TarOptions::default())?;
    let (d, ingest) = enc.finish()?;
    if d.reused > 0 {
        tracing::debug!(
            reused = d.reused,
            of = d.uncompressed_size,
            "frames copied from the previous layer"
        );
    }
    ingest.commit(Some(d.digest))?;
    Ok(LayerRecord {
        digest: d.digest,
        diff_id: d.diff_id,
        media_type: ctx.opts.compression.media_type().to_string(),
        size: d.size,
        uncompressed_size: d.uncompressed_size,
    })
}

/// The regular files among `entries` that are the same inode as the file at the same path in
/// `previous`'s snapshot, with their frames in its layer `blob` (None when there are none).
fn known_files(
    ctx: &Ctx<'_>,
    entries: &[TarEntry],
    previous: &kiln_store::StepRecord,
    blob: &kiln_store::chunked::ChunkedBlob,
) -> Option<std::sync::Arc<kiln_store::chunked::KnownFiles>> {
    use rayon::prelude::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let snap = ctx.store.snapshot(&previous.chain_id?).ok()??;
    let old = ctx.store.snapshot_fs(&snap);
    let names: std::collections::HashSet<Vec<u8>> = entries
        .par_iter()
        .filter_map(|e| {
            let diff::EntrySource::Host(path) = &e.source else {
                return None;
            };
            let m = std::fs::symlink_metadata(path).ok()?;
            if !m.is_file() || m.nlink() < 2 || m.len() == 0 {
                return None;
            }
            let o =
                std::fs::symlink_metadata(old.join(std::ffi::OsStr::from_bytes(&e.name))).ok()?;
            (o.dev() == m.dev() && o.ino() == m.ino()).then(|| e.name.clone())
        })
        .collect();
    if names.is_empty() {
        return None;
    }
    let known = kiln_store::chunked::KnownFiles::new(blob, &|n| names.contains(n)).ok()??;
    tracing::debug!(
        files = known.len(),
        "files unchanged since the previous build"
    );
    Some(std::sync::Arc::new(known))
}
