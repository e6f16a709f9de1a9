//! `kiln import`: a rootfs tarball (plain, gzip or zstd) becomes a one-layer image, as
//! `docker import` does. The tar is streamed once: decompressed, checked entry by entry, and
//! fed to the layer encoder as it is read, byte for byte (its DiffID is the input's).

use super::oci::{host_platform, History, ImageConfig, RootFs, RunConfig};
use super::{create_image, io_err, ImageError, Result, Tee};
use crate::timefmt;
use kiln_store::{codec, Compression, ImageRecord, LayerEncoder, LayerRecord, Store};
use std::collections::BTreeMap;
use std::io::{self, Read};

pub struct ImportOptions {
    pub compression: Compression,
    /// Shown in the history entry (`docker import -m`).
    pub message: Option<String>,
    /// Fixed `created` time (SOURCE_DATE_EPOCH), for reproducible imports.
    pub created: Option<i64>,
    /// What the tarball was (a path or "-"), for error messages and the history.
    pub source: String,
    /// `--change` instructions applied to the config (CMD, ENV, WORKDIR...).
    pub changes: Option<crate::plan::Config>,
}

pub fn import_tarball<R: Read>(
    store: &Store,
    input: R,
    opts: &ImportOptions,
    tags: &[String],
) -> Result<ImageRecord> {
    let _lease = store.lease()?;
    let plain = codec::decompress(input).map_err(io_err(format!("read {}", opts.source)))?;
    let enc = LayerEncoder::new(store.ingest_prehashed()?, opts.compression)
        .map_err(io_err("start layer encoder"))?;
    let mut archive = tar::Archive::new(Tee { r: plain, w: enc });
    let not_tar = |e: io::Error| {
        ImageError::Invalid(format!("{} is not a valid tar archive: {e}", opts.source))
    };
    let mut entries = 0u64;
    for e in archive.entries().map_err(not_tar)? {
        let e = e.map_err(not_tar)?;
        let path = e.path().map_err(not_tar)?;
        // Refuse what no unpack would accept (Docker's untar does the same): names climbing out.
        if crate::rootfs::clean(&path).is_none() {
            return Err(ImageError::Invalid(format!(
                "{}: entry {:?} climbs out of the root with \"..\"",
                opts.source,
                path.display()
            )));
        }
        if e.header().entry_type() == tar::EntryType::Link {
            if let Some(link) = e.link_name().map_err(not_tar)? {
                if crate::rootfs::clean(&link).is_none() {
                    return Err(ImageError::Invalid(format!(
                        "{}: hard link {:?} points out of the root",
                        opts.source,
                        path.display()
                    )));
                }
            }
        }
        entries += 1;
    }
    let mut tee = archive.into_inner();
    io::copy(&mut tee, &mut io::sink()).map_err(io_err(format!("read {}", opts.source)))?;
    if entries == 0 {
        return Err(ImageError::Invalid(format!(
            "{} is empty: a rootfs tarball needs at least one entry",
            opts.source
        )));
    }
    let (digests, ingest) = tee.w.finish().map_err(io_err("finish layer"))?;
    ingest.commit(Some(digests.digest))?;
    let layer = LayerRecord {
        digest: digests.digest,
        diff_id: digests.diff_id,
        media_type: opts.compression.media_type().to_string(),
        size: digests.size,
        uncompressed_size: digests.uncompressed_size,
    };
    let created = timefmt::rfc3339(opts.created.unwrap_or_else(kiln_store::store::now));
    let platform = host_platform();
    let mut run_config = RunConfig::default();
    if let Some(c) = &opts.changes {
        c.write_to(&mut run_config);
    }
    let config = ImageConfig {
        created: Some(created.clone()),
        author: None,
        architecture: platform.architecture,
        os: platform.os,
        variant: None,
        config: run_config,
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer.diff_id],
        },
        history: vec![History {
            created: Some(created),
            // The file name only: a temp directory in the path would make imports irreproducible.
            created_by: Some(format!(
                "kiln import {}",
                std::path::Path::new(&opts.source)
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            )),
            comment: opts.message.clone(),
            ..History::default()
        }],
        extra: BTreeMap::new(),
    };
    create_image(store, &config, vec![layer], tags)
}
