//! Pulling an image: manifests (with the platform's entry of an index), then missing layers, verified by digest as they stream into the store.

#[allow(unused_imports)]
use super::*;

/// Where pull and push report their progress: Docker's lines, and bytes per blob (a terminal
/// shows bars; elsewhere the lines are enough).
pub trait Transfer: Sync {
    /// A line of Docker's wording (`abc123: Pull complete`, `Digest: ...`).
    fn line(&self, line: &str);
    /// A blob transfer of `total` bytes starts (`short` is its digest's first 12 digits).
    fn start(&self, _short: &str, _what: &str, _total: u64) {}
    /// `n` more bytes of it moved.
    fn advance(&self, _short: &str, _n: u64) {}
}

impl<F: Fn(&str) + Sync> Transfer for F {
    fn line(&self, line: &str) {
        self(line)
    }
}

pub type Report<'a> = &'a dyn Transfer;

/// Counts bytes read through it into a transfer's progress.
pub(super) struct Counting<'a, R> {
    pub(super) inner: R,
    pub(super) short: String,
    pub(super) report: Report<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.report.advance(&self.short, n as u64);
        }
        Ok(n)
    }
}

/// Pulls `reference` into the store and tags it; returns the image.
pub fn pull(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    report: Report<'_>,
) -> Result<ImageRecord> {
    let r = reference.clone().with_default_tag();
    let c = Client::new(&r.domain);
    let repo = r.path.clone();
    let scope = format!("repository:{repo}:pull");
    let tag_or_digest = r
        .digest
        .map(|d| d.to_string())
        .unwrap_or_else(|| r.tag.clone().unwrap_or_default());
    let (mut bytes, mut mt, mut digest) = fetch_manifest(&c, &repo, &tag_or_digest, &scope, None)?;
    // Said once the manifest is there: a pull that fails to find it says only why.
    report.line(&format!(
        "{}: Pulling from {}",
        r.tag.clone().unwrap_or_else(|| tag_or_digest.clone()),
        if r.domain == "docker.io" {
            repo.clone()
        } else {
            r.name()
        }
    ));
    // Indexes may nest (an index entry naming another index); follow them, a bounded depth.
    let mut depth = 0;
    loop {
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                host: c.host.clone(),
                what: format!("manifest {digest}"),
                why: e.to_string(),
            })?;
        if mt.is_empty() {
            mt = doc["mediaType"].as_str().unwrap_or("").to_string();
        }
        if !(oci::is_index(&mt) || (mt.is_empty() && doc.get("manifests").is_some())) {
            break;
        }
        if depth == image::archive::MAX_INDEX_DEPTH {
            return Err(RegistryError::Invalid(format!(
                "{}: indexes nest more than {} deep",
                r.familiar(),
                image::archive::MAX_INDEX_DEPTH
            )));
        }
        depth += 1;
        let index: Index = serde_json::from_value(doc).map_err(|e| RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("index {digest}"),
            why: e.to_string(),
        })?;
        // A platform's entry, or a nested index (whose entries say the platforms).
        let pick = index
            .manifests
            .iter()
            .find(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    p.os == platform.os
                        && p.architecture == platform.architecture
                        && (platform.variant.is_none() || p.variant == platform.variant)
                })
            })
            .or_else(|| {
                index
                    .manifests
                    .iter()
                    .find(|m| m.platform.is_none() && oci::is_index(&m.media_type))
            })
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "{}: no manifest for {}/{} in the index",
                    r.familiar(),
                    platform.os,
                    platform.architecture
                ))
            })?
            .clone();
        (bytes, mt, digest) =
            fetch_manifest(&c, &repo, &pick.digest.to_string(), &scope, Some(pick.size))?;
        if mt.is_empty() {
            mt = pick.media_type.clone();
        }
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("manifest {digest}"),
            why: e.to_string(),
        })?;
    let tag = r.to_string();
    if let Some(existing) = store.image(&digest)? {
        store.set_ref(&tag, &digest)?;
        store.write_index()?;
        report.line(&format!("Digest: {digest}"));
        report.line(&format!("Status: Image is up to date for {}", r.familiar()));
        return Ok(existing);
    }
    // Config.
    let config_bytes = if store.has_blob(&manifest.config.digest) {
        store.read_blob(&manifest.config.digest)?
    } else {
        let resp = c.send(
            "GET",
            &format!("/v2/{repo}/blobs/{}", manifest.config.digest),
            &scope,
            &[],
            Body::Empty,
        )?;
        let resp = c.expect(resp, &[200], &format!("config {}", manifest.config.digest))?;
        let b = read_small(
            &c,
            resp,
            &format!("config {}", manifest.config.digest),
            16 << 20,
            Some(manifest.config.size),
        )?;
        let d = Digest::of(&b);
        if d != manifest.config.digest {
            return Err(RegistryError::Corrupt {
                host: c.host.clone(),
                what: format!("config {}", manifest.config.digest),
                why: format!("its content has digest {d}"),
            });
        }
        b
    };
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("config {}", manifest.config.digest),
            why: e.to_string(),
        })?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("image {digest}"),
            why: format!(
                "{} layers but {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    // Layers, in parallel, each verified before it is recorded.
    let pairs: Vec<_> = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .collect();
    let results = bounded(&pairs, PARALLEL_DOWNLOADS, |(l, diff_id)| {
        pull_layer(store, &c, &repo, &scope, l, **diff_id, report)
    });
    let layers = results.into_iter().collect::<Result<Vec<_>>>()?;
    store.put_blob(&config_bytes, Some(manifest.config.digest))?;
    store.put_blob(&bytes, Some(digest))?;
    let image = image::record_image(
        store,
        BlobRef {
            digest,
            media_type: manifest.media_type.clone().unwrap_or_else(|| {
                if mt.is_empty() {
                    oci::MEDIA_TYPE_OCI_MANIFEST.to_string()
                } else {
                    mt.clone()
                }
            }),
            size: bytes.len() as u64,
        },
        BlobRef {
            digest: manifest.config.digest,
            media_type: manifest.config.media_type.clone(),
            size: config_bytes.len() as u64,
        },
        layers,
        &config,
        &[tag],
    )?;
    report.line(&format!("Digest: {digest}"));
    report.line(&format!(
        "Status: Downloaded newer image for {}",
        r.familiar()
    ));
    Ok(image)
}

pub(super) fn pull_layer(
    store: &Store,
    c: &Client,
    repo: &str,
    scope: &str,
    l: &Descriptor,
    diff_id: Digest,
    report: Report<'_>,
) -> Result<LayerRecord> {
    let short = &l.digest.hex()[..12];
    if Compression::from_media_type(&l.media_type).is_none() {
        return Err(RegistryError::Invalid(format!(
            "layer {}: unsupported media type {}",
            l.digest, l.media_type
        )));
    }
    if let Some(rec) = store.layer(&l.digest)? {
        report.line(&format!("{short}: Already exists"));
        return Ok(rec);
    }
    // A zstd:chunked layer: only what no local layer holds, when the registry takes ranges.
    let partial = if Compression::from_media_type(&l.media_type) == Some(Compression::Zstd) {
        let frames = super::partial::local_frames(store)?;
        super::partial::fetch(store, c, repo, scope, l, &frames, report)?
    } else {
        None
    };
    let size = match partial {
        Some(m) => {
            report.line(&format!(
                "{short}: fetched {} of {}, the rest from local layers",
                crate::timefmt::human_size(m.fetched),
                crate::timefmt::human_size(l.size)
            ));
            l.size
        }
        None => fetch_whole(store, c, repo, scope, l, report)?,
    };
    let rec = image::archive::verify_layer(store, &l.digest, size, &l.media_type, diff_id)
        .map_err(|e| {
            // The blob matched its digest but not the config's DiffID: drop it, record nothing.
            let _ = store.discard_blob(&l.digest);
            RegistryError::Image(e)
        })?;
    report.line(&format!("{short}: Pull complete"));
    Ok(rec)
}

/// Downloads a whole layer blob into the store (checked against its digest); returns its size.
fn fetch_whole(
    store: &Store,
    c: &Client,
    repo: &str,
    scope: &str,
    l: &Descriptor,
    report: Report<'_>,
) -> Result<u64> {
    let short = &l.digest.hex()[..12];
    let resp = c.send(
        "GET",
        &format!("/v2/{repo}/blobs/{}", l.digest),
        scope,
        &[],
        Body::Empty,
    )?;
    let resp = c.expect(resp, &[200], &format!("layer {}", l.digest))?;
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(l.size);
    report.start(short, "Downloading", total);
    let what = format!("layer {}", l.digest);
    if total > l.size {
        return Err(RegistryError::Corrupt {
            host: c.host.clone(),
            what,
            why: format!(
                "the registry sends {total} bytes, the manifest declares {}",
                l.size
            ),
        });
    }
    let mut ingest = store.ingest()?;
    // Never more than the declared size: one byte past it ends the download.
    let mut reader = Counting {
        inner: Deadline::new(resp.into_reader()),
        short: short.to_string(),
        report,
    }
    .take(l.size + 1);
    let n = io::copy(&mut reader, &mut ingest).map_err(|e| read_error(c, &what, e))?;
    if n != l.size {
        return Err(RegistryError::Corrupt {
            host: c.host.clone(),
            what,
            why: image::archive::size_mismatch(n, l.size),
        });
    }
    let (_, size) = ingest.commit(Some(l.digest)).map_err(|e| match e {
        kiln_store::Error::DigestMismatch { actual, .. } => RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("layer {}", l.digest),
            why: format!("its content has digest {actual}"),
        },
        e => e.into(),
    })?;
    Ok(size)
}
