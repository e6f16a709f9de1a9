//! The content frames of blobs already in the store, by the sha256 of the content they hold:
//! what a new blob may copy instead of compressing (rebuilds) or fetching (partial pulls).

use super::toc::{self, FrameSpan};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Content frames of other blobs that a new blob may copy, by the content's sha256.
#[derive(Default)]
pub struct FrameIndex {
    pub(super) sources: Vec<File>,
    pub(super) frames: HashMap<[u8; 32], (u32, FrameSpan)>,
}

impl FrameIndex {
    /// Adds the content frames of the zstd:chunked blob at `path`; returns how many (0 when the
    /// blob is not chunked or its metadata does not read).
    pub fn add_blob(&mut self, path: &Path) -> io::Result<usize> {
        let f = File::open(path)?;
        let size = f.metadata()?.len();
        let Some(meta) = toc::Metadata::read(&f, size)? else {
            return Ok(0);
        };
        let Ok(t) = meta.toc() else { return Ok(0) };
        let frames = toc::content_frames(&t, meta.footer.metadata_start());
        let src = self.sources.len() as u32;
        self.sources.push(f);
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
        let mut buf = vec![0u8; (span.end - span.offset) as usize];
        self.sources[src as usize].read_exact_at(&mut buf, span.offset)?;
        Ok(buf)
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
