//! Image archives: `load` reads a docker-archive (`docker save`, `podman save`), an OCI archive
//! or an OCI layout directory; `save` writes an OCI archive or a docker-archive.
//!
//! Archives are read by offset: the tar is indexed once (names, offsets, sizes), then each blob is
//! read where it lies, so the order of entries does not matter and nothing is extracted to disk.
//! Compressed archives and standard input are first spooled, decompressed, into the store's ingest
//! dir. Every blob read from an archive is verified against its digest, and every layer against
//! its DiffID, before the image is recorded.

use super::oci::{self, Descriptor, ImageConfig, Index, Manifest};
use super::reference::Reference;
use super::{io_err, ImageError, Result};
use kiln_store::digest::HashReader;
use kiln_store::{
    codec, BlobRef, Compression, Digest, ImageRecord, LayerEncoder, LayerRecord, Store,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One image of a docker-archive's manifest.json.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

mod load;
pub use load::*;

/// Where archive members come from.
enum Source {
    Dir(PathBuf),
    Tar {
        file: File,
        entries: HashMap<String, (u64, u64)>,
        what: String,
    },
}

/// Reads a byte range of a file without moving any shared offset.
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min((self.end - self.pos) as usize);
        if max == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..max], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive is truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Opens member `name` of an archive directory as the tar form would find it: the name made
/// relative (`..` cannot climb above the directory, a leading `/` is dropped), symlinks resolved
/// inside the directory, and only a regular file accepted (no device, no FIFO), so a crafted
/// manifest cannot make kiln read a host file or /dev/zero.
fn open_in_dir(dir: &Path, name: &str) -> io::Result<File> {
    let root = File::open(dir)?;
    let rel = normalize(name);
    let fd = crate::sys::openat2_in_root(
        std::os::fd::AsFd::as_fd(&root),
        std::ffi::OsStr::new(&rel),
        libc::O_RDONLY | libc::O_NONBLOCK,
        0,
    )?;
    let f = File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{rel} is not a regular file"),
        ));
    }
    Ok(f)
}

fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl Source {
    fn tar(file: File, what: String) -> Result<Source> {
        let bad =
            |e: io::Error| ImageError::Invalid(format!("{what} is not a valid tar archive: {e}"));
        let mut entries = HashMap::new();
        let mut links = Vec::new();
        {
            let mut a = tar::Archive::new(&file);
            for e in a.entries().map_err(bad)? {
                let e = e.map_err(bad)?;
                let name = normalize(&e.path().map_err(bad)?.to_string_lossy());
                match e.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        entries.insert(name, (e.raw_file_position(), e.size()));
                    }
                    // Older `docker save` links identical layer.tar files to each other.
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        if let Some(target) = e.link_name().map_err(bad)? {
                            let t = target.to_string_lossy().into_owned();
                            let resolved = if e.header().entry_type() == tar::EntryType::Symlink {
                                let dir = Path::new(&name)
                                    .parent()
                                    .map(|p| p.to_string_lossy().into_owned())
                                    .unwrap_or_default();
                                normalize(&format!("{dir}/{t}"))
                            } else {
                                normalize(&t)
                            };
                            links.push((name, resolved));
                        }
                    }
                    _ => {}
                }
            }
        }
        for (name, target) in links {
            if let Some(v) = entries.get(&target).copied() {
                entries.insert(name, v);
            }
        }
        Ok(Source::Tar {
            file,
            entries,
            what,
        })
    }

    fn describe(&self) -> String {
        match self {
            Source::Dir(p) => p.display().to_string(),
            Source::Tar { what, .. } => what.clone(),
        }
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(p) => open_in_dir(p, name).is_ok(),
            Source::Tar { entries, .. } => entries.contains_key(&normalize(name)),
        }
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>> {
        let missing = || {
            ImageError::Invalid(format!(
                "{}: {name} is missing from the archive",
                self.describe()
            ))
        };
        match self {
            Source::Dir(p) => Ok(Box::new(open_in_dir(p, name).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    missing()
                } else {
                    io_err(format!("open {name} in {}", p.display()))(e)
                }
            })?)),
            Source::Tar { file, entries, .. } => {
                let (off, size) = *entries.get(&normalize(name)).ok_or_else(missing)?;
                Ok(Box::new(RangeReader {
                    file,
                    pos: off,
                    end: off + size,
                }))
            }
        }
    }

    /// Reads a small member whole (manifests, configs, indexes), at most [`MAX_JSON`].
    fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open(name)?
            .take(MAX_JSON)
            .read_to_end(&mut v)
            .map_err(io_err(format!("read {name} from {}", self.describe())))?;
        Ok(v)
    }

    /// Reads a blob (OCI layout) of the size its descriptor declares, reading at most one byte
    /// more, and checks its length and digest.
    fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let d = &desc.digest;
        if desc.size > MAX_JSON {
            return Err(ImageError::Invalid(format!(
                "blob {d} in {}: its descriptor declares {} bytes, more than the {} MiB kiln reads for a manifest, index or config",
                self.describe(),
                desc.size,
                MAX_JSON >> 20
            )));
        }
        let mut bytes = Vec::new();
        self.open(&blob_name(d))?
            .take(desc.size + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(format!("read blob {d} from {}", self.describe())))?;
        if bytes.len() as u64 != desc.size {
            return Err(ImageError::Corrupt {
                what: format!("blob {d} in {}", self.describe()),
                why: size_mismatch(bytes.len() as u64, desc.size),
            });
        }
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(ImageError::Corrupt {
                what: format!("blob {d} in {}", self.describe()),
                why: format!("content has digest {actual}"),
            });
        }
        Ok(bytes)
    }
}

/// Why a blob read to its declared size + 1 (`got` bytes) does not match the size its
/// descriptor declares.
pub(crate) fn size_mismatch(got: u64, declared: u64) -> String {
    if got > declared {
        format!("more than the {declared} bytes its descriptor declares")
    } else {
        format!("{got} bytes, its descriptor declares {declared}")
    }
}

/// The largest manifest, index or config read.
const MAX_JSON: u64 = 64 << 20;

/// How deep indexes may nest inside indexes (a hostile archive nests thousands).
pub const MAX_INDEX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    Oci,
    Docker,
}

/// An image to save, and the reference to save it under (None: untagged).
pub struct SaveItem {
    pub image: ImageRecord,
    pub reference: Option<Reference>,
}

fn header(path: &str, size: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("archive member names are short");
    h.set_size(size);
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// The layers of `items` that have no stored encoding in compression `c` yet (each DiffID once):
/// what [`layer_in`] would have to make before saving them so.
pub fn layers_to_encode(
    store: &Store,
    items: &[SaveItem],
    c: Compression,
) -> Result<Vec<LayerRecord>> {
    let mut todo: Vec<LayerRecord> = Vec::new();
    for it in items {
        for l in &it.image.layers {
            if store.layer_compression(l)? != Some(c)
                && store.layer_variant(&l.diff_id, c)?.is_none()
                && !todo.iter().any(|t| t.diff_id == l.diff_id)
            {
                todo.push(l.clone());
            }
        }
    }
    Ok(todo)
}

/// A stored encoding of `layer` in compression `c`, made and recorded the first time it is asked
/// for (re-encoding is deterministic, so every machine makes the same blob).
pub fn layer_in(store: &Store, layer: &LayerRecord, c: Compression) -> Result<LayerRecord> {
    if store.layer_compression(layer)? == Some(c) {
        return Ok(layer.clone());
    }
    if let Some(v) = store.layer_variant(&layer.diff_id, c)? {
        return Ok(v);
    }
    let mut plain = codec::decompress(store.open_blob(&layer.digest)?)
        .map_err(io_err(format!("read layer {}", layer.digest)))?;
    let mut enc =
        LayerEncoder::new(store.ingest_prehashed()?, c).map_err(io_err("start layer encoder"))?;
    io::copy(&mut plain, &mut enc).map_err(io_err(format!("re-encode layer {}", layer.digest)))?;
    let (d, ingest) = enc.finish().map_err(io_err("finish layer"))?;
    if d.diff_id != layer.diff_id {
        return Err(ImageError::Corrupt {
            what: format!("layer {}", layer.digest),
            why: format!("uncompressed content has digest {}", d.diff_id),
        });
    }
    commit_layer(store, ingest, &d, c)
}

/// Moves an encoded layer into place and records it in compression `c`.
pub(crate) fn commit_layer(
    store: &Store,
    ingest: kiln_store::Ingest,
    d: &kiln_store::LayerDigests,
    c: Compression,
) -> Result<LayerRecord> {
    ingest.commit(Some(d.digest))?;
    let rec = LayerRecord {
        digest: d.digest,
        diff_id: d.diff_id,
        media_type: c.media_type().into(),
        size: d.size,
        uncompressed_size: d.uncompressed_size,
    };
    store.record_layer(&rec)?;
    Ok(rec)
}

enum Member {
    Blob,
    Bytes(Vec<u8>),
}

/// Writes the images as an archive. Deterministic: fixed order, mtime 0, each blob once.
/// For OCI archives, `compression` re-encodes layers (None keeps them as stored); the manifest
/// then describes the exported layers and so has its own digest, while the image ID (the config
/// digest) and the DiffIDs stay the same.
pub fn save<W: Write>(
    store: &Store,
    items: &[SaveItem],
    format: ArchiveFormat,
    compression: Option<Compression>,
    out: W,
) -> Result<W> {
    let _lease = store.lease()?;
    let mut b = tar::Builder::new(out);
    match format {
        ArchiveFormat::Oci => {
            let mut blobs: BTreeMap<Digest, Member> = BTreeMap::new();
            let mut manifests = Vec::new();
            for it in items {
                let mut manifest = super::read_manifest(store, &it.image)?;
                let mut desc_digest = it.image.manifest.digest;
                let mut desc_size = it.image.manifest.size;
                let mut desc_type = it.image.manifest.media_type.clone();
                let layers: Vec<LayerRecord> = match compression {
                    Some(c) => it
                        .image
                        .layers
                        .iter()
                        .map(|l| layer_in(store, l, c))
                        .collect::<Result<_>>()?,
                    None => it.image.layers.clone(),
                };
                if layers != it.image.layers {
                    for (d, l) in manifest.layers.iter_mut().zip(&layers) {
                        d.media_type = l.media_type.clone();
                        d.digest = l.digest;
                        d.size = l.size;
                        d.annotations = store.layer_annotations(l)?;
                    }
                    manifest.media_type = Some(oci::MEDIA_TYPE_OCI_MANIFEST.into());
                    if manifest.config.media_type == oci::MEDIA_TYPE_DOCKER_CONFIG {
                        manifest.config.media_type = oci::MEDIA_TYPE_OCI_CONFIG.into();
                    }
                    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
                    desc_digest = Digest::of(&bytes);
                    desc_size = bytes.len() as u64;
                    desc_type = oci::MEDIA_TYPE_OCI_MANIFEST.into();
                    blobs.insert(desc_digest, Member::Bytes(bytes));
                } else {
                    blobs.insert(desc_digest, Member::Blob);
                }
                blobs.insert(it.image.config, Member::Blob);
                for l in &layers {
                    blobs.insert(l.digest, Member::Blob);
                }
                let mut annotations = BTreeMap::new();
                if let Some(r) = &it.reference {
                    annotations.insert(oci::ANNOTATION_CONTAINERD_NAME.to_string(), r.to_string());
                    if let Some(t) = &r.tag {
                        annotations.insert(oci::ANNOTATION_REF_NAME.to_string(), t.clone());
                    }
                }
                manifests.push(Descriptor {
                    media_type: desc_type,
                    digest: desc_digest,
                    size: desc_size,
                    platform: None,
                    annotations,
                });
            }
            b.append(&header("blobs/", 0, true), io::empty())
                .map_err(io_err("write archive"))?;
            b.append(&header("blobs/sha256/", 0, true), io::empty())
                .map_err(io_err("write archive"))?;
            for (d, m) in &blobs {
                match m {
                    Member::Blob => {
                        let f = store.open_blob(d)?;
                        let len = f.metadata().map_err(io_err("stat blob"))?.len();
                        b.append(&header(&blob_name(d), len, false), f)
                            .map_err(io_err(format!("write blob {d}")))?;
                    }
                    Member::Bytes(bytes) => {
                        b.append(
                            &header(&blob_name(d), bytes.len() as u64, false),
                            &bytes[..],
                        )
                        .map_err(io_err("write archive"))?;
                    }
                }
            }
            let index = Index {
                schema_version: 2,
                media_type: Some(oci::MEDIA_TYPE_OCI_INDEX.into()),
                manifests,
                annotations: BTreeMap::new(),
            };
            let index = serde_json::to_vec(&index).expect("index serializes");
            b.append(&header("index.json", index.len() as u64, false), &index[..])
                .map_err(io_err("write archive"))?;
            let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
            b.append(
                &header("oci-layout", layout.len() as u64, false),
                &layout[..],
            )
            .map_err(io_err("write archive"))?;
        }
        ArchiveFormat::Docker => {
            let mut written: BTreeSet<Digest> = BTreeSet::new();
            let mut entries = Vec::new();
            for it in items {
                let config_name = format!("{}.json", it.image.config.hex());
                if written.insert(it.image.config) {
                    let c = store.read_blob(&it.image.config)?;
                    b.append(&header(&config_name, c.len() as u64, false), &c[..])
                        .map_err(io_err("write archive"))?;
                }
                let mut layer_names = Vec::new();
                for l in &it.image.layers {
                    let name = format!("{}/layer.tar", l.diff_id.hex());
                    if written.insert(l.diff_id) {
                        b.append(
                            &header(&format!("{}/", l.diff_id.hex()), 0, true),
                            io::empty(),
                        )
                        .map_err(io_err("write archive"))?;
                        let mut r = HashReader::new(
                            codec::decompress(store.open_blob(&l.digest)?)
                                .map_err(io_err(format!("read layer {}", l.digest)))?,
                        );
                        b.append(&header(&name, l.uncompressed_size, false), &mut r)
                            .map_err(io_err(format!("write layer {}", l.digest)))?;
                        let (actual, n) = r.finish();
                        if actual != l.diff_id || n != l.uncompressed_size {
                            return Err(ImageError::Corrupt {
                                what: format!("layer {}", l.digest),
                                why: format!(
                                    "uncompressed content has digest {actual} ({n} bytes)"
                                ),
                            });
                        }
                    }
                    layer_names.push(name);
                }
                entries.push(DockerManifestEntry {
                    config: config_name,
                    repo_tags: it.reference.as_ref().map(|r| vec![r.familiar()]),
                    layers: layer_names,
                });
            }
            let m = serde_json::to_vec(&entries).expect("manifest.json serializes");
            b.append(&header("manifest.json", m.len() as u64, false), &m[..])
                .map_err(io_err("write archive"))?;
        }
    }
    b.into_inner().map_err(io_err("finish archive"))
}
