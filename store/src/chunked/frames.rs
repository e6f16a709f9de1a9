//! The content frames of blobs already in the store, by the sha256 of the content they hold:
//! what a new blob may copy instead of compressing (rebuilds) or fetching (partial pulls).

use super::toc::{self, FrameSpan};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Blobs kept open by a frame index; the others are opened for each read.
const OPEN_SOURCES: usize = 64;

/// Where a frame index reads a blob.
pub(super) enum Source {
    Open(File),
    Path(std::path::PathBuf),
}

/// A zstd:chunked blob opened, its metadata and TOC read: what a frame index and a rebuild's
/// known files both take, so the previous layer's metadata is read once.
pub struct ChunkedBlob {
    path: std::path::PathBuf,
    file: File,
    meta: toc::Metadata,
    toc: toc::Toc,
}

impl ChunkedBlob {
    /// The blob at `path`; None when it is not zstd:chunked or its TOC does not read.
    pub fn open(path: &Path) -> io::Result<Option<ChunkedBlob>> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let Some(meta) = toc::Metadata::read(&file, size)? else {
            return Ok(None);
        };
        let Ok(toc) = meta.toc() else {
            return Ok(None);
        };
        Ok(Some(ChunkedBlob {
            path: path.to_path_buf(),
            file,
            meta,
            toc,
        }))
    }
}

/// The bytes of `span` in `f`.
fn read_span(f: &File, span: FrameSpan) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (span.end - span.offset) as usize];
    f.read_exact_at(&mut buf, span.offset)?;
    Ok(buf)
}

/// Content frames of other blobs that a new blob may copy, by the content's sha256.
#[derive(Default)]
pub struct FrameIndex {
    pub(super) sources: Vec<Source>,
    pub(super) frames: HashMap<[u8; 32], (u32, FrameSpan)>,
}

impl FrameIndex {
    /// Adds the content frames of the zstd:chunked blob at `path`; returns how many (0 when the
    /// blob is not chunked or its metadata does not read).
    pub fn add_blob(&mut self, path: &Path) -> io::Result<usize> {
        match ChunkedBlob::open(path)? {
            Some(blob) => self.add(&blob),
            None => Ok(0),
        }
    }

    /// Adds the content frames of an opened blob; returns how many.
    pub fn add(&mut self, blob: &ChunkedBlob) -> io::Result<usize> {
        let frames = toc::content_frames(&blob.toc, blob.meta.footer.metadata_start());
        let src = self.sources.len() as u32;
        // A few blobs stay open; past that each read opens its blob (a store's layers must not
        // use up the process's file descriptors).
        self.sources.push(if self.sources.len() < OPEN_SOURCES {
            Source::Open(blob.file.try_clone()?)
        } else {
            Source::Path(blob.path.clone())
        });
        let n = frames.len();
        for (d, span) in frames {
            self.frames.entry(d).or_insert((src, span));
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Where a frame of content with this sha256 is.
    pub fn get(&self, sha256: &[u8; 32]) -> Option<(u32, FrameSpan)> {
        self.frames.get(sha256).copied()
    }

    /// The compressed bytes of a frame.
    pub fn read(&self, src: u32, span: FrameSpan) -> io::Result<Vec<u8>> {
        match &self.sources[src as usize] {
            Source::Open(f) => read_span(f, span),
            Source::Path(p) => read_span(&File::open(p)?, span),
        }
    }

    /// The frame for `data` (sha256 `sha`) if one is indexed and decompresses to exactly `data`.
    pub(super) fn reuse(
        &self,
        sha: &[u8; 32],
        data: &[u8],
        d: &mut zstd::bulk::Decompressor,
        scratch: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        let (src, span) = self.get(sha)?;
        if span.end - span.offset > data.len() as u64 + 1024 + data.len() as u64 / 8 {
            return None;
        }
        let bytes = self.read(src, span).ok()?;
        scratch.clear();
        scratch.reserve(data.len());
        let n = d.decompress_to_buffer(&bytes[..], scratch).ok()?;
        (n == data.len() && scratch[..] == *data).then_some(bytes)
    }
}

/// A file of an older blob whose content is known to be what it was (the same inode of an
/// immutable snapshot): its frames, digests and checksum are taken from that blob's metadata
/// without reading, hashing or compressing the content again.
#[derive(Clone, Debug)]
pub(super) struct Known {
    pub(super) digest: [u8; 32],
    pub(super) crc: u64,
    pub(super) chunks: Vec<([u8; 32], FrameSpan)>,
}

/// The files of one older blob that a layer may take as they are (see [`Known`]).
pub struct KnownFiles {
    file: File,
    files: HashMap<Vec<u8>, (u64, Known)>,
}

impl KnownFiles {
    /// The files of `blob` that `wanted` names, with their frames as kiln's writer cuts them (a
    /// chunk per [`super::CHUNK`] bytes). None when its tar-split does not read; files whose
    /// metadata is incomplete are left out.
    pub fn new(
        blob: &ChunkedBlob,
        wanted: &dyn Fn(&[u8]) -> bool,
    ) -> io::Result<Option<KnownFiles>> {
        let Ok(ts) = blob.meta.tarsplit() else {
            return Ok(None);
        };
        let limit = blob.meta.footer.metadata_start();
        let mut crcs: HashMap<Vec<u8>, u64> = HashMap::new();
        for e in toc::tarsplit_entries(&ts).flatten() {
            if e.kind != 1 || !wanted(&e.name) {
                continue;
            }
            let crc = e
                .payload
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok());
            if let Some(c) = crc {
                crcs.insert(e.name, u64::from_be_bytes(c));
            }
        }
        let mut files = HashMap::new();
        for f in toc::files(&blob.toc) {
            let name = f.name.as_bytes();
            let (Some(digest), Some(&crc)) = (f.digest, crcs.get(name)) else {
                continue;
            };
            let pieces = f.size.div_ceil(super::CHUNK as u64) as usize;
            let chunks: Option<Vec<([u8; 32], FrameSpan)>> =
                f.chunks.iter().map(|(d, s)| Some(((*d)?, *s))).collect();
            let Some(chunks) = chunks.filter(|c| {
                c.len() == pieces && c.iter().all(|(_, s)| s.end > s.offset && s.end <= limit)
            }) else {
                continue;
            };
            files.insert(
                name.to_vec(),
                (
                    f.size,
                    Known {
                        digest,
                        crc,
                        chunks,
                    },
                ),
            );
        }
        Ok(Some(KnownFiles {
            file: blob.file.try_clone()?,
            files,
        }))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file `name` if it is known with this size.
    pub(super) fn get(&self, name: &[u8], size: u64) -> Option<&Known> {
        self.files
            .get(name)
            .filter(|(s, _)| *s == size)
            .map(|(_, k)| k)
    }

    pub(super) fn read_frame(&self, span: FrameSpan) -> io::Result<Vec<u8>> {
        read_span(&self.file, span)
    }
}
