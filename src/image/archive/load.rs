//! `kiln load`: OCI layouts and docker-archives (tar or directory), every blob verified as it is copied into the store.

#[allow(unused_imports)]
use super::*;

pub(super) fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// One image found in an archive.
#[derive(Debug)]
pub struct Loaded {
    pub image: ImageRecord,
    /// The full references it was tagged with.
    pub tags: Vec<String>,
}

/// Loads from a path: an OCI layout directory or an archive file (plain, gzip or zstd).
pub fn load_path(store: &Store, path: &Path) -> Result<Vec<Loaded>> {
    if path.is_dir() {
        return load_source(store, &Source::Dir(path.to_path_buf()));
    }
    let mut f = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let mut head = [0u8; 4];
    let n = f
        .read(&mut head)
        .map_err(io_err(format!("read {}", path.display())))?;
    if Compression::detect(&head[..n]) == Compression::None {
        let f = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
        return load_source(store, &Source::tar(f, path.display().to_string())?);
    }
    let f = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    load_reader(store, f, &path.display().to_string())
}

/// Loads from a stream (standard input): spooled, decompressed, to a temp file first.
pub fn load_reader<R: Read>(store: &Store, r: R, what: &str) -> Result<Vec<Loaded>> {
    let mut tmp = tempfile::Builder::new()
        .prefix("load-")
        .tempfile_in(store.ingest_dir())
        .map_err(io_err("create temp file"))?;
    let mut plain = codec::decompress(r).map_err(io_err(format!("read {what}")))?;
    io::copy(&mut plain, tmp.as_file_mut()).map_err(io_err(format!("read {what}")))?;
    let f = tmp.reopen().map_err(io_err("reopen temp file"))?;
    load_source(store, &Source::tar(f, what.to_string())?)
}

pub(super) fn load_source(store: &Store, src: &Source) -> Result<Vec<Loaded>> {
    let _lease = store.lease()?;
    if src.exists("index.json") && src.exists("oci-layout") {
        load_oci(store, src)
    } else if src.exists("manifest.json") {
        load_docker(store, src)
    } else {
        Err(ImageError::Invalid(format!(
            "{}: neither an OCI archive (index.json, oci-layout) nor a docker-archive (manifest.json)",
            src.describe()
        )))
    }
}

/// The tag an OCI index entry names, from containerd's full-name annotation or a ref.name that
/// is a whole reference. A bare tag (`latest`) names no repository, so it cannot be a tag here.
pub(super) fn oci_entry_name(d: &Descriptor) -> Option<String> {
    let full = d
        .annotations
        .get(oci::ANNOTATION_CONTAINERD_NAME)
        .or_else(|| {
            d.annotations
                .get(oci::ANNOTATION_REF_NAME)
                .filter(|n| n.contains('/') || n.contains(':'))
        })?;
    let r = Reference::parse(full).ok()?.with_default_tag();
    r.tag.is_some().then(|| r.to_string())
}

pub(super) fn load_oci(store: &Store, src: &Source) -> Result<Vec<Loaded>> {
    let index: Index =
        serde_json::from_slice(&src.read_all("index.json")?).map_err(|e| ImageError::Corrupt {
            what: format!("index.json in {}", src.describe()),
            why: e.to_string(),
        })?;
    let mut out: Vec<Loaded> = Vec::new();
    for d in &index.manifests {
        let name = oci_entry_name(d);
        let manifest_desc = select_manifest(src, d, 0)?;
        let image = import_oci_manifest(store, src, &manifest_desc)?;
        let tags: Vec<String> = name.into_iter().collect();
        for t in &tags {
            store.set_ref(t, &image.manifest.digest)?;
        }
        match out
            .iter_mut()
            .find(|l| l.image.manifest.digest == image.manifest.digest)
        {
            Some(l) => l.tags.extend(tags),
            None => out.push(Loaded { image, tags }),
        }
    }
    if out.is_empty() {
        return Err(ImageError::Invalid(format!(
            "{}: index.json lists no images",
            src.describe()
        )));
    }
    Ok(out)
}

/// Follows an index entry to the manifest for this host's platform.
pub(super) fn select_manifest(src: &Source, d: &Descriptor, depth: usize) -> Result<Descriptor> {
    if oci::is_manifest(&d.media_type) {
        return Ok(d.clone());
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(ImageError::Invalid(format!(
            "{}: index {} nests indexes more than {MAX_INDEX_DEPTH} deep",
            src.describe(),
            d.digest
        )));
    }
    if !oci::is_index(&d.media_type) {
        return Err(ImageError::Invalid(format!(
            "{}: unsupported manifest media type {}",
            src.describe(),
            d.media_type
        )));
    }
    let idx: Index =
        serde_json::from_slice(&src.read_blob(d)?).map_err(|e| ImageError::Corrupt {
            what: format!("index {}", d.digest),
            why: e.to_string(),
        })?;
    let want = oci::host_platform();
    let found = idx.manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
    });
    match found {
        Some(m) => select_manifest(src, m, depth + 1),
        None => Err(ImageError::NotFound(format!(
            "a {}/{} image in index {}",
            want.os, want.architecture, d.digest
        ))),
    }
}

pub(super) fn import_oci_manifest(
    store: &Store,
    src: &Source,
    d: &Descriptor,
) -> Result<ImageRecord> {
    if let Some(existing) = store.image(&d.digest)? {
        return Ok(existing);
    }
    let manifest_bytes = src.read_blob(d)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| ImageError::Corrupt {
            what: format!("manifest {}", d.digest),
            why: e.to_string(),
        })?;
    let config_bytes = src.read_blob(&manifest.config)?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| ImageError::Corrupt {
            what: format!("config {}", manifest.config.digest),
            why: e.to_string(),
        })?;
    crate::image::created_of(
        &config,
        &format!("config {} in {}", manifest.config.digest, src.describe()),
    )?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::Corrupt {
            what: format!("image {}", d.digest),
            why: format!(
                "{} layers but {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (l, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        if Compression::from_media_type(&l.media_type).is_none() {
            return Err(ImageError::Invalid(format!(
                "layer {}: unsupported media type {}",
                l.digest, l.media_type
            )));
        }
        if let Some(rec) = store.layer(&l.digest)? {
            layers.push(rec);
            continue;
        }
        let mut ingest = store.ingest()?;
        // Never past the declared size: one byte more is already an error.
        let n = io::copy(
            &mut src.open(&blob_name(&l.digest))?.take(l.size + 1),
            &mut ingest,
        )
        .map_err(io_err(format!("copy layer {}", l.digest)))?;
        if n != l.size {
            return Err(ImageError::Corrupt {
                what: format!("layer {} in {}", l.digest, src.describe()),
                why: size_mismatch(n, l.size),
            });
        }
        let (_, size) = ingest.commit(Some(l.digest)).map_err(|e| match e {
            kiln_store::Error::DigestMismatch { actual, .. } => ImageError::Corrupt {
                what: format!("layer {} in {}", l.digest, src.describe()),
                why: format!("content has digest {actual}"),
            },
            e => e.into(),
        })?;
        layers.push(verify_layer(
            store,
            &l.digest,
            size,
            &l.media_type,
            *diff_id,
        )?);
    }
    store.put_blob(&config_bytes, Some(manifest.config.digest))?;
    store.put_blob(&manifest_bytes, Some(d.digest))?;
    crate::image::record_image(
        store,
        BlobRef {
            digest: d.digest,
            media_type: manifest
                .media_type
                .clone()
                .unwrap_or_else(|| d.media_type.clone()),
            size: manifest_bytes.len() as u64,
        },
        BlobRef {
            digest: manifest.config.digest,
            media_type: manifest.config.media_type.clone(),
            size: config_bytes.len() as u64,
        },
        layers,
        &config,
        &[],
    )
}

/// Decompresses a stored layer blob (of `size` bytes) to check its DiffID and learn its
/// unpacked size.
pub(crate) fn verify_layer(
    store: &Store,
    digest: &Digest,
    size: u64,
    media_type: &str,
    diff_id: Digest,
) -> Result<LayerRecord> {
    let mut h = HashReader::new(
        codec::decompress(store.open_blob(digest)?)
            .map_err(io_err(format!("read layer {digest}")))?,
    );
    read_tar(&mut h).map_err(|e| ImageError::Corrupt {
        what: format!("layer {digest}"),
        why: format!("not a valid tar stream: {e}"),
    })?;
    let (actual, uncompressed_size) = h.finish();
    if actual != diff_id {
        return Err(ImageError::Corrupt {
            what: format!("layer {digest}"),
            why: format!("uncompressed content has digest {actual}, the config says {diff_id}"),
        });
    }
    Ok(LayerRecord {
        digest: *digest,
        diff_id,
        media_type: media_type.to_string(),
        size,
        uncompressed_size,
    })
}

/// Reads `r` to its end as a tar stream: every header must parse and every entry hold the bytes
/// its header declares, so a truncated, garbage or non-tar layer fails when it is loaded or
/// pulled rather than when a container first unpacks it. Returns the number of entries.
pub(crate) fn read_tar<R: Read>(r: &mut R) -> io::Result<u64> {
    let mut n = 0;
    {
        let mut a = tar::Archive::new(&mut *r);
        for e in a.entries().map_err(crate::diff::escaped)? {
            let mut e = e.map_err(crate::diff::escaped)?;
            let size = e.size();
            let got = io::copy(&mut e, &mut io::sink())?;
            if got != size {
                let path = String::from_utf8_lossy(&e.path_bytes())
                    .escape_debug()
                    .to_string();
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("entry \"{path}\" is cut short: {got} of {size} bytes"),
                ));
            }
            n += 1;
        }
    }
    // What follows the last entry (the end blocks, padding) belongs to the DiffID too.
    io::copy(r, &mut io::sink())?;
    Ok(n)
}

pub(super) fn load_docker(store: &Store, src: &Source) -> Result<Vec<Loaded>> {
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&src.read_all("manifest.json")?)
        .map_err(|e| ImageError::Corrupt {
            what: format!("manifest.json in {}", src.describe()),
            why: e.to_string(),
        })?;
    let mut out = Vec::new();
    for e in entries {
        let config_bytes = src.read_all(&e.config)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|er| ImageError::Corrupt {
                what: format!("{} in {}", e.config, src.describe()),
                why: er.to_string(),
            })?;
        crate::image::created_of(&config, &format!("{} in {}", e.config, src.describe()))?;
        if config.rootfs.diff_ids.len() != e.layers.len() {
            return Err(ImageError::Corrupt {
                what: format!("{} in {}", e.config, src.describe()),
                why: format!(
                    "{} layers but {} diff_ids",
                    e.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (path, diff_id) in e.layers.iter().zip(&config.rootfs.diff_ids) {
            // Re-encode to zstd; the DiffID (uncompressed content) must come out as declared.
            let mut plain =
                codec::decompress(src.open(path)?).map_err(io_err(format!("read {path}")))?;
            let mut enc = LayerEncoder::new(store.ingest_prehashed()?, Compression::ZstdChunked)
                .map_err(io_err("start layer encoder"))?;
            read_tar(&mut crate::image::Tee {
                r: &mut plain,
                w: &mut enc,
            })
            .map_err(|e| ImageError::Corrupt {
                what: format!("{path} in {}", src.describe()),
                why: format!("not a valid tar stream: {e}"),
            })?;
            let (d, ingest) = enc.finish().map_err(io_err("finish layer"))?;
            if d.diff_id != *diff_id {
                return Err(ImageError::Corrupt {
                    what: format!("{path} in {}", src.describe()),
                    why: format!(
                        "content has digest {}, the config says {diff_id}",
                        d.diff_id
                    ),
                });
            }
            ingest.commit(Some(d.digest))?;
            layers.push(LayerRecord {
                digest: d.digest,
                diff_id: d.diff_id,
                media_type: Compression::Zstd.media_type().into(),
                size: d.size,
                uncompressed_size: d.uncompressed_size,
            });
        }
        // Keep the config byte for byte: the image ID is its digest.
        let config_digest = store.put_blob(&config_bytes, None)?;
        let tags: Vec<String> = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| Reference::parse(t).map(|r| r.with_default_tag().to_string()))
            .collect::<std::result::Result<_, _>>()?;
        let image = crate::image::commit_manifest(
            store,
            config_digest,
            &config_bytes,
            &config,
            layers,
            &tags,
        )?;
        out.push(Loaded { image, tags });
    }
    Ok(out)
}
