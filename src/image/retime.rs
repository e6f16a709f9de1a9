//! A build's layers in another timestamp mode (`--timestamp`, SOURCE_DATE_EPOCH): the step
//! cache keeps each layer with its files' own times, and an image in another mode gets a copy
//! whose tar headers carry the mode's times, made once and recorded beside the layer
//! (`layer_times`), so a rebuild in either mode runs no step again.

use super::archive::{commit_layer, layer_in};
use super::{io_err, Result};
use crate::diff::{Times, TimesWriter};
use kiln_store::chunked::{ChunkedBlob, FrameIndex};
use kiln_store::{codec, Compression, LayerEncoder, LayerRecord, Store};
use std::io;

/// `layer` (written with its entries' own times) in timestamp mode `times` and compression
/// `c`: stored, or made from it and recorded. A zstd:chunked copy takes the frames of the
/// files' contents from `layer`, which it checks before using, so mostly the headers are
/// compressed again.
pub fn layer_with_times(
    store: &Store,
    layer: &LayerRecord,
    times: Times,
    c: Compression,
) -> Result<LayerRecord> {
    let Some(key) = times.key() else {
        return layer_in(store, layer, c);
    };
    if let Some(v) = store.retimed_layer(&layer.diff_id, &key)? {
        return layer_in(store, &v, c);
    }
    let what = format!("layer {}", layer.digest);
    let mut plain = codec::decompress(store.open_blob(&layer.digest)?)
        .map_err(io_err(format!("read {what}")))?;
    let ingest = store.ingest_prehashed()?;
    let enc = match c {
        Compression::ZstdChunked => {
            let mut frames = FrameIndex::default();
            if let Ok(Some(blob)) = ChunkedBlob::open(&store.blob_path(&layer.digest)) {
                let _ = frames.add(&blob);
            }
            let frames = (!frames.is_empty()).then(|| std::sync::Arc::new(frames));
            LayerEncoder::chunked(ingest, frames, None)
        }
        c => LayerEncoder::new(ingest, c).map_err(io_err("start layer encoder"))?,
    };
    let mut w = TimesWriter::new(enc, times);
    io::copy(&mut plain, &mut w).map_err(io_err(format!("rewrite the times of {what}")))?;
    let enc = w
        .finish()
        .map_err(io_err(format!("rewrite the times of {what}")))?;
    let (d, ingest) = enc.finish().map_err(io_err("finish layer"))?;
    let rec = commit_layer(store, ingest, &d, c)?;
    store.record_retimed_layer(&layer.diff_id, &key, &rec.diff_id)?;
    Ok(rec)
}
