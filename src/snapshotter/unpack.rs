//! Unpacking layers into snapshots: one directory per ChainID, usable as overlay lower dirs.
//!
//! `unpack_image` makes sure every layer of an image is unpacked. Each layer is applied into its
//! own fresh directory under ingest/ (the whiteouts it carries hide files of the layers below it
//! once stacked by overlay), checked against its DiffID, and only then moved into snapshots/ and
//! recorded; a failure leaves nothing behind. Missing layers unpack in parallel.

use super::view;
use crate::diff::{apply_layer, ApplyError};
use crate::rootfs::Root;
use kiln_store::{chain_ids, codec, Digest, ImageRecord, SnapshotRecord, Store};
use rayon::prelude::*;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    #[error("unpack layer {layer}")]
    Apply {
        layer: Digest,
        #[source]
        source: ApplyError,
    },
    #[error(
        "layer {layer} is corrupt: its content has DiffID {actual}, the image says {expected}"
    )]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("unpack layer {layer}")]
    Io {
        layer: Digest,
        #[source]
        source: io::Error,
    },
}

/// Unpacks one layer blob into a new snapshot directory and records it.
fn unpack_layer(
    store: &Store,
    blob: &Digest,
    diff_id: Digest,
    chain: Digest,
    parent: Option<Digest>,
) -> Result<SnapshotRecord, SnapshotError> {
    let dir = store.prepare_snapshot_dir()?;
    let io = |source| SnapshotError::Io {
        layer: *blob,
        source,
    };
    let root = Root::open(&dir.path().join("fs")).map_err(io)?;
    let file = store.open_blob(blob)?;
    let reader = codec::decompress(file).map_err(io)?;
    let stats = apply_layer(&root, reader).map_err(|source| SnapshotError::Apply {
        layer: *blob,
        source,
    })?;
    if stats.diff_id != diff_id {
        return Err(SnapshotError::DiffIdMismatch {
            layer: *blob,
            expected: diff_id,
            actual: stats.diff_id,
        });
    }
    if stats.oci_whiteouts {
        std::fs::write(dir.path().join(view::OCI_WHITEOUTS), b"").map_err(io)?;
    }
    // Rootless: what the user namespace could not keep is said, never silently changed.
    let short = &blob.to_string()[..19];
    let (n, some) = &stats.unkept_owners;
    if *n > 0 {
        tracing::warn!(
            "layer {short}: {n} entries stay owned by root, since their ids are not mapped in kiln's user namespace (no subordinate range for this user in /etc/subuid and /etc/subgid): {}{}",
            some.join(", "),
            if *n > some.len() as u64 { ", ..." } else { "" }
        );
    }
    let (n, some) = &stats.skipped_devices;
    if *n > 0 {
        tracing::warn!(
            "layer {short}: {n} device nodes skipped (a user namespace cannot make them; containers get the host's /dev nodes): {}",
            some.join(", ")
        );
    }
    Ok(store.commit_snapshot(dir, chain, parent, diff_id, stats.bytes)?)
}

/// Unpacks a recorded layer as the snapshot `chain` (on top of `parent`), or returns the
/// snapshot already recorded under that ChainID.
pub fn unpack_layer_record(
    store: &Store,
    layer: &kiln_store::LayerRecord,
    chain: Digest,
    parent: Option<Digest>,
) -> Result<SnapshotRecord, SnapshotError> {
    if let Some(s) = store.snapshot(&chain)? {
        return Ok(s);
    }
    let _lease = store.lease()?;
    unpack_layer(store, &layer.digest, layer.diff_id, chain, parent)
}

/// Ensures every layer of `image` is unpacked; returns the snapshots bottom to top.
pub fn unpack_image(
    store: &Store,
    image: &ImageRecord,
) -> Result<Vec<SnapshotRecord>, SnapshotError> {
    let _lease = store.lease()?;
    let chains = chain_ids(&image.diff_ids());
    let results: Vec<Result<SnapshotRecord, SnapshotError>> = image
        .layers
        .par_iter()
        .enumerate()
        .map(|(i, layer)| {
            if let Some(s) = store.snapshot(&chains[i])? {
                return Ok(s);
            }
            unpack_layer(
                store,
                &layer.digest,
                layer.diff_id,
                chains[i],
                i.checked_sub(1).map(|p| chains[p]),
            )
        })
        .collect();
    results.into_iter().collect()
}
