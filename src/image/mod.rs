//! Images in the store: resolving what a user names, reading manifests and configs, creating
//! images from layers, `import` of rootfs tarballs, and archive `load`/`save` (see `archive`).

pub mod archive;
pub mod compare;
pub mod import;
pub mod oci;
pub mod reference;
pub mod retime;

use crate::timefmt;
use kiln_store::{BlobRef, Digest, ImageRecord, LayerRecord, NewImage, Store};
use oci::{ImageConfig, Manifest};
use reference::{RefError, Reference};
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("image name {input:?} is ambiguous: it matches {count} image IDs")]
    Ambiguous { input: String, count: usize },
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("corrupt image {what}: {why}")]
    Corrupt { what: String, why: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] crate::snapshotter::SnapshotError),
    /// Docker's `conflict: ...` refusals of `rmi`.
    #[error("conflict: {0}")]
    Conflict(String),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// An image found by a name the user gave, and the reference it was found by (if a tag).
#[derive(Clone, Debug)]
pub struct Resolved {
    pub image: ImageRecord,
    pub reference: Option<Reference>,
}

/// Resolves what a user typed: a reference (`busybox`, `busybox:1`, `name@sha256:...`), a full
/// image ID (`sha256:<hex>`) or a unique prefix of one, as Docker does (reference first).
pub fn resolve(store: &Store, input: &str) -> Result<Resolved> {
    let id_prefix = input.strip_prefix("sha256:").unwrap_or(input);
    let hexish = !id_prefix.is_empty()
        && id_prefix.len() <= 64
        && id_prefix
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if !input.starts_with("sha256:") {
        match Reference::parse(input) {
            Ok(r) => {
                let r = r.with_default_tag();
                if let Some(d) = r.digest {
                    if let Some(image) = store.image(&d)? {
                        return Ok(Resolved {
                            image,
                            reference: None,
                        });
                    }
                } else if let Some(m) = store.resolve_ref(&r.to_string())? {
                    let image = store
                        .image(&m)?
                        .ok_or_else(|| ImageError::NotFound(input.to_string()))?;
                    return Ok(Resolved {
                        image,
                        reference: Some(r),
                    });
                }
            }
            Err(e) if !hexish => return Err(e.into()),
            Err(_) => {}
        }
    }
    if hexish {
        let mut matches: Vec<ImageRecord> = store
            .images()?
            .into_iter()
            .filter(|i| i.config.hex().starts_with(id_prefix))
            .collect();
        matches.sort_by_key(|i| i.added);
        let distinct: std::collections::HashSet<Digest> =
            matches.iter().map(|i| i.config).collect();
        match distinct.len() {
            0 => {}
            1 => {
                return Ok(Resolved {
                    image: matches.pop().expect("one match"),
                    reference: None,
                })
            }
            n => {
                return Err(ImageError::Ambiguous {
                    input: input.to_string(),
                    count: n,
                })
            }
        }
    }
    Err(ImageError::NotFound(input.to_string()))
}

pub fn read_manifest(store: &Store, image: &ImageRecord) -> Result<Manifest> {
    let bytes = store.read_blob(&image.manifest.digest)?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
        what: format!("manifest {}", image.manifest.digest),
        why: e.to_string(),
    })
}

pub fn read_config(store: &Store, image: &ImageRecord) -> Result<ImageConfig> {
    let bytes = store.read_blob(&image.config)?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
        what: format!("config {}", image.config),
        why: e.to_string(),
    })
}

/// The tags of an image in Docker's familiar form (`busybox:latest`), sorted.
pub fn familiar_tags(store: &Store, image: &ImageRecord) -> Result<Vec<String>> {
    let mut tags: Vec<String> = store
        .refs_of(&image.manifest.digest)?
        .iter()
        .map(|t| {
            Reference::parse(t)
                .map(|r| r.familiar())
                .unwrap_or_else(|_| t.clone())
        })
        .collect();
    tags.sort();
    Ok(tags)
}

/// Writes a config and an OCI manifest for `layers` (already in the store) and records the image
/// under `tags` (full references). The manifest is canonical JSON, so equal inputs give equal
/// digests.
pub fn create_image(
    store: &Store,
    config: &ImageConfig,
    layers: Vec<LayerRecord>,
    tags: &[String],
) -> Result<ImageRecord> {
    let config_bytes = config.to_json();
    let config_digest = store.put_blob(&config_bytes, None)?;
    commit_manifest(store, config_digest, &config_bytes, config, layers, tags)
}

/// Writes an OCI manifest for a config blob already in the store (`config_bytes`, parsed as
/// `config`) and its layers, and records the image under `tags`. Used by `create_image` and by
/// archive loads, which keep a config byte for byte (the image ID is its digest).
pub(crate) fn commit_manifest(
    store: &Store,
    config_digest: kiln_store::Digest,
    config_bytes: &[u8],
    config: &ImageConfig,
    layers: Vec<LayerRecord>,
    tags: &[String],
) -> Result<ImageRecord> {
    if config.rootfs.diff_ids.len() != layers.len()
        || config
            .rootfs
            .diff_ids
            .iter()
            .zip(&layers)
            .any(|(d, l)| *d != l.diff_id)
    {
        return Err(ImageError::Invalid(
            "image config's diff_ids do not match its layers".into(),
        ));
    }
    let manifest = Manifest::oci(
        store,
        oci::MEDIA_TYPE_OCI_CONFIG,
        config_digest,
        config_bytes.len() as u64,
        &layers,
    )?;
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    // A rebuild that changed nothing: the image and its tags are already recorded.
    let digest = kiln_store::Digest::of(&manifest_bytes);
    if let Some(existing) = store.image(&digest)? {
        let mut tagged = true;
        for t in tags {
            tagged &= store.resolve_ref(t)? == Some(digest);
        }
        if tagged {
            return Ok(existing);
        }
    }
    let manifest_digest = store.put_blob(&manifest_bytes, None)?;
    record_image(
        store,
        BlobRef {
            digest: manifest_digest,
            media_type: oci::MEDIA_TYPE_OCI_MANIFEST.into(),
            size: manifest_bytes.len() as u64,
        },
        BlobRef {
            digest: config_digest,
            media_type: oci::MEDIA_TYPE_OCI_CONFIG.into(),
            size: config_bytes.len() as u64,
        },
        layers,
        config,
        tags,
    )
}

/// Records an image whose manifest, config and layer blobs are all stored (its creation time
/// from `config`), under `tags`; returns the stored record.
pub(crate) fn record_image(
    store: &Store,
    manifest: BlobRef,
    config_blob: BlobRef,
    layers: Vec<LayerRecord>,
    config: &ImageConfig,
    tags: &[String],
) -> Result<ImageRecord> {
    let digest = manifest.digest;
    let created = created_of(config, &format!("config {}", config_blob.digest))?;
    let new = NewImage {
        manifest,
        config: config_blob,
        layers,
        created,
    };
    store.commit_image(&new, tags)?;
    store
        .image(&digest)?
        .ok_or_else(|| ImageError::NotFound(digest.to_string()))
}

/// Passes everything read through into a writer (a tar checked while it is encoded).
pub(crate) struct Tee<R, W> {
    pub r: R,
    pub w: W,
}

impl<R: std::io::Read, W: std::io::Write> std::io::Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The config's `created` time as Unix seconds; a malformed one is an error naming `what` (the
/// config's file or digest) and the field.
pub fn created_of(config: &ImageConfig, what: &str) -> Result<Option<i64>> {
    config
        .created
        .as_deref()
        .map(|c| {
            timefmt::parse_rfc3339(c).map_err(|e| ImageError::Corrupt {
                what: what.to_string(),
                why: format!("field \"created\": {e}"),
            })
        })
        .transpose()
}

/// Parses user-given tags into the full references the store keys tags by.
pub fn parse_tags(tags: &[String]) -> Result<Vec<String>> {
    tags.iter()
        .map(|t| {
            let r = Reference::parse(t)
                .map_err(|e| ImageError::Invalid(format!("invalid tag {t:?}: {e}")))?
                .with_default_tag();
            if r.digest.is_some() {
                return Err(ImageError::Invalid(format!(
                    "{t}: a tag cannot contain a digest"
                )));
            }
            Ok(r.to_string())
        })
        .collect()
}

/// What [`remove`] did: the tags it removed, and the image ID when the image itself went.
#[derive(Debug, Default)]
pub struct Removed {
    pub untagged: Vec<String>,
    pub deleted: Option<Digest>,
}

/// `rmi NAME` with Docker's rules: by tag, only that tag while others remain; the image goes with
/// its last tag unless a container uses it (then `force` keeps it, untagged); an image with
/// several tags named by ID needs `force`.
pub fn remove(store: &Store, name: &str, force: bool) -> Result<Removed> {
    let r = resolve(store, name)?;
    let m = r.image.manifest.digest;
    // Whether other tags remain is all that matters, not how many there are.
    let several = store.ref_count_up_to(&m, 2)? > 1;
    let (to_untag, last): (Vec<String>, bool) = match &r.reference {
        Some(reference) if several => (vec![reference.to_string()], false),
        _ if several && !force => {
            return Err(ImageError::Conflict(format!(
            "unable to delete {} (must be forced) - image is referenced in multiple repositories",
            r.image.id().short()
        )))
        }
        _ => (store.refs_of(&m)?, true),
    };
    let users = store.containers().using(&m)?;
    if last && !users.is_empty() && !force {
        return Err(ImageError::Conflict(format!(
            "unable to remove repository reference {name:?} (must force) - container {} is using its referenced image {}",
            &users[0].0[..users[0].0.len().min(12)],
            r.image.id().short()
        )));
    }
    let mut out = Removed::default();
    for t in to_untag {
        store.remove_ref(&t)?;
        out.untagged.push(t);
    }
    if last && users.is_empty() {
        store.delete_image(&m)?;
        out.deleted = Some(r.image.id());
    }
    Ok(out)
}
