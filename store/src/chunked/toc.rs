//! The metadata at the end of a zstd:chunked blob: the TOC (JSON, one entry per tar entry and
//! per extra chunk of a large file), the tar-split stream, and the 64-byte footer, each in a zstd
//! skippable frame; and the four layer annotations that locate and check them.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const ANNOTATION_TOC_DIGEST: &str = "io.github.containers.zstd-chunked.manifest-checksum";
pub const ANNOTATION_TOC_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
pub const ANNOTATION_TARSPLIT_DIGEST: &str = "io.github.containers.zstd-chunked.tarsplit-checksum";
pub const ANNOTATION_TARSPLIT_POSITION: &str =
    "io.github.containers.zstd-chunked.tarsplit-position";

/// `GNUlInUx`: the footer's last 8 bytes.
pub const FOOTER_MAGIC: [u8; 8] = *b"GNUlInUx";
/// The footer's payload size (it is written as a skippable frame of this many bytes).
pub const FOOTER_SIZE: usize = 64;
/// A skippable frame's magic number and its little-endian payload length.
pub const SKIPPABLE_HEADER: u64 = 8;
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// The TOC's manifest type (CRFS-compatible), the only one there is.
const MANIFEST_TYPE_CRFS: u64 = 1;
/// The most metadata kiln reads from a blob's end (a TOC of a million entries is ~100 MiB).
const MAX_METADATA: u64 = 512 << 20;

/// The table of contents. Field names and order are containers/storage's.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Toc {
    pub version: u32,
    pub entries: Vec<TocEntry>,
    #[serde(
        rename = "tarSplitDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub tar_split_digest: String,
}

fn zero(n: &i64) -> bool {
    *n == 0
}

/// One TOC entry: a tar entry (its header's metadata, and for content its frames' position in
/// the blob and its sha256) or, with type `chunk`, one more piece of the previous file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TocEntry {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "linkName", default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default, skip_serializing_if = "zero")]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "zero")]
    pub size: i64,
    #[serde(default, skip_serializing_if = "zero")]
    pub uid: i64,
    #[serde(default, skip_serializing_if = "zero")]
    pub gid: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modtime: Option<String>,
    #[serde(rename = "devMajor", default, skip_serializing_if = "zero")]
    pub dev_major: i64,
    #[serde(rename = "devMinor", default, skip_serializing_if = "zero")]
    pub dev_minor: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "zero")]
    pub offset: i64,
    #[serde(rename = "endOffset", default, skip_serializing_if = "zero")]
    pub end_offset: i64,
    #[serde(rename = "chunkSize", default, skip_serializing_if = "zero")]
    pub chunk_size: i64,
    #[serde(rename = "chunkOffset", default, skip_serializing_if = "zero")]
    pub chunk_offset: i64,
    #[serde(
        rename = "chunkDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_digest: String,
    #[serde(
        rename = "chunkType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_type: String,
}

/// Where the metadata sits in a blob (the footer's fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub toc_offset: u64,
    pub toc_len: u64,
    pub toc_uncompressed: u64,
    pub tarsplit_offset: u64,
    pub tarsplit_len: u64,
    pub tarsplit_uncompressed: u64,
}

impl Footer {
    pub fn to_bytes(self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        let fields = [
            self.toc_offset,
            self.toc_len,
            self.toc_uncompressed,
            MANIFEST_TYPE_CRFS,
            self.tarsplit_offset,
            self.tarsplit_len,
            self.tarsplit_uncompressed,
        ];
        for (i, f) in fields.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        b[56..].copy_from_slice(&FOOTER_MAGIC);
        b
    }

    /// Reads the footer from a blob's last 72 bytes (skippable header + payload); None when the
    /// bytes are not a zstd:chunked footer.
    pub fn parse(tail: &[u8]) -> Option<Footer> {
        if tail.len() != FOOTER_SIZE + SKIPPABLE_HEADER as usize
            || tail[..4] != SKIPPABLE_MAGIC
            || u32::from_le_bytes(tail[4..8].try_into().ok()?) as usize != FOOTER_SIZE
        {
            return None;
        }
        let b = &tail[8..];
        if b[56..] != FOOTER_MAGIC {
            return None;
        }
        let f = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        if f(3) != MANIFEST_TYPE_CRFS {
            return None;
        }
        Some(Footer {
            toc_offset: f(0),
            toc_len: f(1),
            toc_uncompressed: f(2),
            tarsplit_offset: f(4),
            tarsplit_len: f(5),
            tarsplit_uncompressed: f(6),
        })
    }

    /// The footer of a blob of `size` bytes, if it is a zstd:chunked blob.
    pub fn read(f: &File, size: u64) -> io::Result<Option<Footer>> {
        let tail_len = FOOTER_SIZE as u64 + SKIPPABLE_HEADER;
        if size < tail_len {
            return Ok(None);
        }
        let mut tail = vec![0u8; tail_len as usize];
        f.read_exact_at(&mut tail, size - tail_len)?;
        Ok(Footer::parse(&tail))
    }

    /// Where the metadata begins: the TOC's skippable frame header. Everything before it is
    /// the tar stream's frames.
    pub fn metadata_start(&self) -> u64 {
        self.toc_offset.saturating_sub(SKIPPABLE_HEADER)
    }

    /// The four layer annotations for this footer and the compressed TOC and tar-split.
    pub fn annotations(&self, toc: &[u8], tarsplit: &[u8]) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ANNOTATION_TOC_DIGEST.into(), Digest::of(toc).to_string()),
            (
                ANNOTATION_TOC_POSITION.into(),
                format!(
                    "{}:{}:{}:{MANIFEST_TYPE_CRFS}",
                    self.toc_offset, self.toc_len, self.toc_uncompressed
                ),
            ),
            (
                ANNOTATION_TARSPLIT_DIGEST.into(),
                Digest::of(tarsplit).to_string(),
            ),
            (
                ANNOTATION_TARSPLIT_POSITION.into(),
                format!(
                    "{}:{}:{}",
                    self.tarsplit_offset, self.tarsplit_len, self.tarsplit_uncompressed
                ),
            ),
        ])
    }
}

/// Appends a skippable frame holding `data`.
pub fn skippable(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 8);
    v.extend_from_slice(&SKIPPABLE_MAGIC);
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// The zstd:chunked metadata of a blob on disk: None when it is not a zstd:chunked blob.
pub struct Metadata {
    pub footer: Footer,
    /// The compressed TOC and tar-split, as stored.
    pub toc_zst: Vec<u8>,
    pub tarsplit_zst: Vec<u8>,
}

impl Metadata {
    /// Reads the footer, TOC and tar-split of a blob of `size` bytes.
    pub fn read(f: &File, size: u64) -> io::Result<Option<Metadata>> {
        let Some(footer) = Footer::read(f, size)? else {
            return Ok(None);
        };
        let start = footer.metadata_start();
        if start >= size || size - start > MAX_METADATA {
            return Ok(None);
        }
        let mut all = vec![0u8; (size - start) as usize];
        f.read_exact_at(&mut all, start)?;
        Ok(Metadata::from_tail(footer, start, &all))
    }

    /// The metadata from the blob's bytes `[start, end)`, which hold the TOC, the tar-split
    /// and the footer. None when the footer's positions fall outside them.
    pub fn from_tail(footer: Footer, start: u64, tail: &[u8]) -> Option<Metadata> {
        let slice = |off: u64, len: u64| -> Option<Vec<u8>> {
            let a = off.checked_sub(start)? as usize;
            let b = a.checked_add(len as usize)?;
            tail.get(a..b).map(<[u8]>::to_vec)
        };
        Some(Metadata {
            toc_zst: slice(footer.toc_offset, footer.toc_len)?,
            tarsplit_zst: slice(footer.tarsplit_offset, footer.tarsplit_len)?,
            footer,
        })
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.footer.annotations(&self.toc_zst, &self.tarsplit_zst)
    }

    /// The decoded TOC (at most the size the footer declares).
    pub fn toc(&self) -> io::Result<Toc> {
        let json = zstd::bulk::decompress(
            &self.toc_zst,
            (self.footer.toc_uncompressed as usize).min(MAX_METADATA as usize),
        )?;
        serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The decoded tar-split stream (JSON lines).
    pub fn tarsplit(&self) -> io::Result<Vec<u8>> {
        zstd::bulk::decompress(
            &self.tarsplit_zst,
            (self.footer.tarsplit_uncompressed as usize).min(MAX_METADATA as usize),
        )
    }
}

/// One line of a tar-split stream: raw archive bytes (`kind` 2, in `payload`), or a file entry
/// (`kind` 1) with its name, size and, for content, its CRC-64 big-endian in `payload`.
pub struct TarSplitEntry {
    pub kind: u8,
    pub name: Vec<u8>,
    pub size: u64,
    pub payload: Option<Vec<u8>>,
}

/// The lines of a tar-split stream, in order; None for a line that does not parse.
pub fn tarsplit_entries(lines: &[u8]) -> impl Iterator<Item = Option<TarSplitEntry>> + '_ {
    #[derive(Deserialize)]
    struct Line {
        #[serde(rename = "type")]
        kind: u8,
        #[serde(default)]
        name: String,
        #[serde(default)]
        name_raw: Option<String>,
        #[serde(default)]
        size: u64,
        #[serde(default)]
        payload: Option<String>,
    }
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
    lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(move |line| {
            let l: Line = serde_json::from_slice(line).ok()?;
            let name = match &l.name_raw {
                Some(raw) => b64(raw)?,
                None => l.name.into_bytes(),
            };
            let payload = match &l.payload {
                Some(p) => Some(b64(p)?),
                None => None,
            };
            Some(TarSplitEntry {
                kind: l.kind,
                name,
                size: l.size,
                payload,
            })
        })
}

/// A frame of file content in a blob: the bytes `[offset, end)` decompress to content whose
/// sha256 is the key it is found under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    pub offset: u64,
    pub end: u64,
}

/// A file's content in a blob: `[offset, end)` holds its frames, one per chunk.
#[derive(Clone, Debug)]
pub struct FileFrames {
    pub name: String,
    pub size: u64,
    /// The whole content's sha256.
    pub digest: Option<[u8; 32]>,
    pub offset: u64,
    pub end: u64,
    /// Each chunk's content sha256 (None for chunks of zeros or unreadable digests) and frame.
    pub chunks: Vec<(Option<[u8; 32]>, FrameSpan)>,
}

/// The files with content a TOC names, in blob order.
pub fn files(toc: &Toc) -> Vec<FileFrames> {
    let key = |d: &str| {
        d.strip_prefix("sha256:")
            .and_then(|h| Digest::from_hex(h).ok())
            .map(|d| d.0)
    };
    let mut out = Vec::new();
    let es = &toc.entries;
    let mut i = 0;
    while i < es.len() {
        let e = &es[i];
        i += 1;
        if e.kind != "reg" || e.size <= 0 || e.end_offset <= e.offset {
            continue;
        }
        // A file's chunk entries follow it.
        let mut j = i;
        while j < es.len() && es[j].kind == "chunk" {
            j += 1;
        }
        let extra = &es[i..j];
        i = j;
        let chunks = if extra.is_empty() && e.chunk_digest.is_empty() {
            vec![(key(&e.digest), span(e.offset, e.end_offset))]
        } else {
            let parts: Vec<&TocEntry> = std::iter::once(e).chain(extra).collect();
            (0..parts.len())
                .map(|k| {
                    let end = parts.get(k + 1).map_or(e.end_offset, |n| n.offset);
                    let d = if parts[k].chunk_type.is_empty() {
                        key(&parts[k].chunk_digest)
                    } else {
                        None
                    };
                    (d, span(parts[k].offset, end))
                })
                .collect()
        };
        out.push(FileFrames {
            name: e.name.clone(),
            size: e.size as u64,
            digest: key(&e.digest),
            offset: e.offset.max(0) as u64,
            end: e.end_offset.max(0) as u64,
            chunks,
        });
    }
    out
}

/// The content frames a TOC names, by content sha256: one per whole file of one chunk, one per
/// chunk of a larger file. Spans outside `[0, limit)` are left out.
pub fn content_frames(toc: &Toc, limit: u64) -> Vec<([u8; 32], FrameSpan)> {
    files(toc)
        .into_iter()
        .flat_map(|f| f.chunks)
        .filter_map(|(d, s)| Some((d?, s)))
        .filter(|(_, s)| s.end > s.offset && s.end <= limit)
        .collect()
}

fn span(offset: i64, end: i64) -> FrameSpan {
    FrameSpan {
        offset: offset.max(0) as u64,
        end: end.max(0) as u64,
    }
}
