//! zstd:chunked layers (containers/storage's layout): the tar stream as a sequence of
//! independent zstd frames, with each file's content in frames of its own, then the TOC, the
//! tar-split stream and a footer in zstd skippable frames. Concatenated frames are one zstd
//! stream, so every reader of `tar+zstd` layers reads these unchanged; readers that know the
//! layout find any file's frames from the TOC (partial pulls), and kiln's rebuilds copy the
//! frames of unchanged files from the previous layer instead of compressing them again.
//!
//! The frames, in order: the tar bytes before the first content (headers), then for each entry
//! with content its content in frames of at most [`CHUNK`] bytes, and the tar bytes up to the
//! next content (padding, headers) in one frame; the last such frame ends with the archive's
//! end blocks. Every frame is compressed on its own at the pinned level, so a frame depends only
//! on its bytes: a frame copied from an older blob is the frame a fresh encode would write, and
//! the blob is the same whatever was reused. A copied frame is decompressed and compared with
//! the content it stands for before it is used, so a TOC that lies costs a compression, never a
//! wrong layer.

pub mod crc64;
mod frames;
mod header;
pub mod toc;
mod work;

use frames::Known;
pub use frames::{ChunkedBlob, FrameIndex, KnownFiles};

use crate::codec::{ThreadedSha256, ZSTD_LEVEL};
use header::{Pending, BLOCK};
use std::io::{self, Write};
use toc::{Footer, Toc, TocEntry};
use work::{process, Batch, CodecPool, Done, Ev};

/// Files larger than this are split into frames of this size (compressed in parallel, and
/// fetched or reused one by one).
pub const CHUNK: usize = 4 << 20;
/// Pending frame input processed together (in parallel) before it is written out.
const BATCH: usize = 16 << 20;
const BATCH_EVENTS: usize = 8192;

/// A frame as the writer makes it: `data` compressed on its own at the pinned level. A partial
/// pull re-makes header frames with this and checks them against the blob's digest.
pub fn frame(data: &[u8]) -> io::Result<Vec<u8>> {
    zstd::bulk::compress(data, ZSTD_LEVEL)
}

enum State {
    Header,
    /// Extended header data ('x', 'g', 'L', 'K') of this type, this many bytes left (padding
    /// included), kept until it ends.
    Extended {
        kind: u8,
        left: u64,
        data_len: usize,
    },
    Content {
        left: u64,
    },
    Padding {
        left: u64,
    },
    /// After the end-of-archive block: everything is trailer.
    Trailer,
}

/// The file whose content is being written.
struct Current {
    toc: usize,
    name: Vec<u8>,
    size: u64,
    crc: u64,
    done: u64,
    pieces: usize,
}

/// Writes a tar stream as a zstd:chunked blob. Feed it the tar bytes; `finish` writes the
/// metadata and returns the output and what was reused.
pub struct ChunkedWriter<W: Write> {
    out: W,
    written: u64,
    state: State,
    block: Vec<u8>,
    ext: Vec<u8>,
    pending: Pending,
    raw: Vec<u8>,
    segment: Vec<u8>,
    chunk: Vec<u8>,
    /// A file of several chunks: its sha256, computed on a thread of its own.
    file_hash: Option<Box<ThreadedSha256>>,
    /// Bytes of the current chunk so far.
    fill: usize,
    /// Files whose frames are taken from an older blob as they are, and the current one.
    known: Option<std::sync::Arc<KnownFiles>>,
    known_cur: Option<Known>,
    known_piece: usize,
    content_left: u64,
    /// Padding after the current content.
    pad: u64,
    events: Vec<Ev>,
    event_bytes: usize,
    entries: Vec<TocEntry>,
    tarsplit: Vec<u8>,
    position: u64,
    current: Option<Current>,
    frames: Option<std::sync::Arc<FrameIndex>>,
    inflight: Option<Batch>,
    codecs: CodecPool,
    reused: u64,
    workers: usize,
}

impl<W: Write> ChunkedWriter<W> {
    pub fn new(out: W, frames: Option<std::sync::Arc<FrameIndex>>) -> Self {
        ChunkedWriter {
            out,
            written: 0,
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            ext: Vec::new(),
            pending: Pending::default(),
            raw: Vec::new(),
            segment: Vec::new(),
            chunk: Vec::new(),
            file_hash: None,
            fill: 0,
            known: None,
            known_cur: None,
            known_piece: 0,
            content_left: 0,
            pad: 0,
            events: Vec::new(),
            event_bytes: 0,
            entries: Vec::new(),
            tarsplit: Vec::new(),
            position: 0,
            current: None,
            frames,
            inflight: None,
            codecs: CodecPool::default(),
            reused: 0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn push(&mut self, ev: Ev) -> io::Result<()> {
        self.event_bytes += match &ev {
            Ev::Frame(b) | Ev::Segment(b) => b.len(),
            Ev::Chunk { len, .. } => *len as usize,
            Ev::Entry(_) => 256,
        };
        self.events.push(ev);
        if self.event_bytes >= BATCH || self.events.len() >= BATCH_EVENTS {
            self.flush_events()?;
        }
        Ok(())
    }

    fn raw_bytes(&mut self, b: &[u8]) {
        self.raw.extend_from_slice(b);
        self.segment.extend_from_slice(b);
    }

    /// A full header block arrived.
    fn header(&mut self) -> io::Result<()> {
        let h: [u8; BLOCK] = self.block[..].try_into().expect("a block");
        self.block.clear();
        self.raw_bytes(&h);
        if h.iter().all(|&b| b == 0) {
            self.state = State::Trailer;
            return Ok(());
        }
        let kind = header::kind(&h);
        if matches!(kind, b'x' | b'g' | b'L' | b'K') {
            let len = header::size(&h);
            self.ext.clear();
            self.state = State::Extended {
                kind,
                left: len.div_ceil(BLOCK as u64) * BLOCK as u64,
                data_len: len.min(64 << 20) as usize,
            };
            return Ok(());
        }
        let parsed = header::parse(&h, std::mem::take(&mut self.pending));
        let content = parsed.content;
        let name = parsed.name.clone();
        let seg = std::mem::take(&mut self.segment);
        self.push(Ev::Segment(seg))?;
        self.push(Ev::Entry(Box::new(parsed)))?;
        if content > 0 {
            let raw = std::mem::take(&mut self.raw);
            self.push(Ev::Frame(raw))?;
            self.content_left = content;
            self.pad = (BLOCK as u64 - content % BLOCK as u64) % BLOCK as u64;
            self.known_cur = self
                .known
                .as_ref()
                .and_then(|k| k.get(&name, content))
                .cloned();
            self.known_piece = 0;
            self.fill = 0;
            self.file_hash = (content > CHUNK as u64 && self.known_cur.is_none())
                .then(|| Box::new(ThreadedSha256::new()));
            self.state = State::Content { left: content };
        } else {
            self.state = State::Header;
        }
        Ok(())
    }

    fn content(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some(h) = &mut self.file_hash {
            h.update(data);
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(CHUNK - self.fill);
            // A known file's bytes are not kept: its frames come from the older blob.
            if self.known_cur.is_none() {
                self.chunk.extend_from_slice(&rest[..n]);
            }
            self.fill += n;
            rest = &rest[n..];
            self.content_left -= n as u64;
            if self.fill == CHUNK || self.content_left == 0 {
                let len = std::mem::take(&mut self.fill) as u64;
                let last = self.content_left == 0;
                let ev = match &self.known_cur {
                    Some(k) => {
                        let chunk = k.chunks[self.known_piece];
                        self.known_piece += 1;
                        Ev::Chunk {
                            data: Vec::new(),
                            len,
                            file_sha: None,
                            known: Some(chunk),
                            file_known: last.then_some((k.digest, k.crc)),
                        }
                    }
                    None => Ev::Chunk {
                        data: std::mem::replace(
                            &mut self.chunk,
                            Vec::with_capacity(CHUNK.min(self.content_left as usize)),
                        ),
                        len,
                        file_sha: if last { self.file_hash.take() } else { None },
                        known: None,
                        file_known: None,
                    },
                };
                if last {
                    self.known_cur = None;
                }
                self.push(ev)?;
            }
        }
        Ok(())
    }

    /// Compresses (or finds) every frame of the pending events, then writes them in order.
    /// Pipelined: the batch is processed on other threads while the writer goes on reading the
    /// stream, and the previous batch (already processed) is written out meanwhile.
    fn flush_events(&mut self) -> io::Result<()> {
        let events = std::mem::take(&mut self.events);
        self.event_bytes = 0;
        let frames = self.frames.clone();
        let known = self.known.clone();
        let workers = self.workers;
        let pool = self.codecs.clone();
        let batch = std::thread::spawn(move || {
            let done = process(&events, frames.as_deref(), known.as_deref(), workers, &pool);
            (events, done)
        });
        let previous = self.inflight.replace(batch);
        if let Some(p) = previous {
            self.emit_batch(p)?;
        }
        Ok(())
    }

    fn emit_batch(&mut self, batch: Batch) -> io::Result<()> {
        let (events, done) = batch
            .join()
            .map_err(|_| io::Error::other("a compression batch panicked"))?;
        for (ev, d) in events.into_iter().zip(done?) {
            self.emit(ev, d)?;
        }
        Ok(())
    }

    fn emit(&mut self, ev: Ev, done: Done) -> io::Result<()> {
        match (ev, done) {
            (Ev::Frame(_), Done::Bytes(b)) => self.write_out(&b),
            (Ev::Segment(b), _) => {
                self.tarsplit_line(2, None, 0, Some(&b));
                Ok(())
            }
            (Ev::Entry(p), _) => {
                let header::Parsed {
                    toc,
                    name,
                    size,
                    content,
                    ..
                } = *p;
                self.entries.push(toc);
                if content == 0 {
                    self.tarsplit_line(1, Some(&name), size, None);
                } else {
                    self.current = Some(Current {
                        toc: self.entries.len() - 1,
                        name,
                        size,
                        crc: 0,
                        done: 0,
                        pieces: 0,
                    });
                }
                Ok(())
            }
            (
                Ev::Chunk {
                    file_sha,
                    file_known,
                    ..
                },
                Done::Piece {
                    bytes,
                    sha,
                    crc,
                    len,
                    reused,
                },
            ) => {
                let start = self.written;
                self.write_out(&bytes)?;
                if reused {
                    self.reused += len;
                }
                let end = self.written;
                let mut cur = self.current.take().expect("a chunk follows its entry");
                let whole = cur.pieces == 0 && len == cur.size - cur.done;
                let digest = format!("sha256:{}", crate::digest::to_hex(&sha));
                if whole {
                    let e = &mut self.entries[cur.toc];
                    e.digest = digest;
                    e.offset = start as i64;
                    e.end_offset = end as i64;
                } else {
                    let chunk_offset = cur.done as i64;
                    if cur.pieces == 0 {
                        let e = &mut self.entries[cur.toc];
                        e.offset = start as i64;
                        e.chunk_size = len as i64;
                        e.chunk_digest = digest;
                    } else {
                        self.entries.push(TocEntry {
                            kind: "chunk".into(),
                            name: self.entries[cur.toc].name.clone(),
                            offset: start as i64,
                            chunk_offset,
                            chunk_size: len as i64,
                            chunk_digest: digest,
                            ..TocEntry::default()
                        });
                    }
                    let e = &mut self.entries[cur.toc];
                    e.end_offset = end as i64;
                    if let Some(f) = file_sha {
                        e.digest = f.finish()?.0.to_string();
                    }
                    if let Some((d, _)) = file_known {
                        e.digest = format!("sha256:{}", crate::digest::to_hex(&d));
                    }
                }
                cur.crc = match file_known {
                    Some((_, c)) => c,
                    None if cur.pieces == 0 => crc,
                    None => crc64::combine(cur.crc, crc, len),
                };
                cur.done += len;
                cur.pieces += 1;
                if cur.done == cur.size {
                    let crc = cur.crc.to_be_bytes();
                    self.tarsplit_line(1, Some(&cur.name), cur.size, Some(&crc));
                } else {
                    self.current = Some(cur);
                }
                Ok(())
            }
            _ => Err(io::Error::other(
                "chunked writer: a frame was not processed",
            )),
        }
    }

    fn write_out(&mut self, b: &[u8]) -> io::Result<()> {
        // Through the output's buffer in pieces: one write(2) of a multi-MiB frame from a fresh
        // allocation measured several times slower here than buffered 1 MiB writes.
        for piece in b.chunks(256 << 10) {
            self.out.write_all(piece)?;
        }
        self.written += b.len() as u64;
        Ok(())
    }

    /// One tar-split JSON line (tar-split's `storage.Entry` as Go's JSON encoder writes it).
    fn tarsplit_line(&mut self, kind: u8, name: Option<&[u8]>, size: u64, payload: Option<&[u8]>) {
        let mut line = format!("{{\"type\":{kind}");
        if let Some(n) = name {
            match std::str::from_utf8(n) {
                Ok(s) => {
                    line.push_str(",\"name\":");
                    line.push_str(&serde_json::to_string(s).expect("a string serializes"));
                }
                Err(_) => {
                    line.push_str(",\"name_raw\":\"");
                    line.push_str(&header::base64_encode(n));
                    line.push('"');
                }
            }
        }
        if size > 0 {
            line.push_str(&format!(",\"size\":{size}"));
        }
        match payload {
            Some(p) => {
                line.push_str(",\"payload\":\"");
                line.push_str(&header::base64_encode(p));
                line.push('"');
            }
            None => line.push_str(",\"payload\":null"),
        }
        line.push_str(&format!(",\"position\":{}}}\n", self.position));
        self.position += 1;
        self.tarsplit.extend_from_slice(line.as_bytes());
    }

    /// Takes the frames, digests and checksums of `known` files from their older blob as they
    /// are (the caller vouches that their content is unchanged, see [`KnownFiles`]).
    pub fn with_known(mut self, known: Option<std::sync::Arc<KnownFiles>>) -> Self {
        self.known = known.filter(|k| !k.is_empty());
        self
    }

    /// Writes the last frames and the metadata; returns the output and the content bytes whose
    /// frames were copied from the frame index.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        // A stream that is not a whole tar (cut inside an entry, or no tar at all) still comes
        // out as the same bytes: what is left goes in a plain frame, the TOC stays partial.
        if self.known_cur.is_some() && matches!(self.state, State::Content { .. }) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar stream ended inside a file whose frames were being copied",
            ));
        }
        let mut tail = std::mem::take(&mut self.raw);
        if matches!(self.state, State::Content { .. }) {
            tail.extend_from_slice(&std::mem::take(&mut self.chunk));
        }
        tail.extend_from_slice(&std::mem::take(&mut self.block));
        if !tail.is_empty() || self.written == 0 && self.events.is_empty() {
            self.push(Ev::Frame(tail))?;
        }
        let seg = std::mem::take(&mut self.segment);
        if !seg.is_empty() {
            self.push(Ev::Segment(seg))?;
        }
        self.flush_events()?;
        if let Some(last) = self.inflight.take() {
            self.emit_batch(last)?;
        }
        let tarsplit_zst = zstd::bulk::compress(&self.tarsplit, ZSTD_LEVEL)?;
        let toc = Toc {
            version: 1,
            entries: std::mem::take(&mut self.entries),
            tar_split_digest: crate::Digest::of(&tarsplit_zst).to_string(),
        };
        let toc_json = serde_json::to_vec(&toc).map_err(io::Error::other)?;
        let toc_zst = zstd::bulk::compress(&toc_json, ZSTD_LEVEL)?;
        let toc_offset = self.written + toc::SKIPPABLE_HEADER;
        let tarsplit_offset = toc_offset + toc_zst.len() as u64 + toc::SKIPPABLE_HEADER;
        let footer = Footer {
            toc_offset,
            toc_len: toc_zst.len() as u64,
            toc_uncompressed: toc_json.len() as u64,
            tarsplit_offset,
            tarsplit_len: tarsplit_zst.len() as u64,
            tarsplit_uncompressed: self.tarsplit.len() as u64,
        };
        self.write_out(&toc::skippable(&toc_zst))?;
        self.write_out(&toc::skippable(&tarsplit_zst))?;
        self.write_out(&toc::skippable(&footer.to_bytes()))?;
        Ok((self.out, self.reused))
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            match self.state {
                State::Header => {
                    let n = rest.len().min(BLOCK - self.block.len());
                    self.block.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    if self.block.len() == BLOCK {
                        self.header()?;
                    }
                }
                State::Extended {
                    kind,
                    left,
                    data_len,
                } => {
                    let n = rest.len().min(left as usize);
                    let (now, later) = rest.split_at(n);
                    let want = data_len.saturating_sub(self.ext.len()).min(n);
                    self.ext.extend_from_slice(&now[..want]);
                    self.raw_bytes(now);
                    rest = later;
                    let left = left - n as u64;
                    if left == 0 {
                        let ext = std::mem::take(&mut self.ext);
                        header::extend(&mut self.pending, kind, &ext);
                        self.state = State::Header;
                    } else {
                        self.state = State::Extended {
                            kind,
                            left,
                            data_len,
                        };
                    }
                }
                State::Content { left } => {
                    let n = rest.len().min(left as usize);
                    let (now, later) = rest.split_at(n);
                    self.content(now)?;
                    rest = later;
                    let left = left - n as u64;
                    self.state = if left > 0 {
                        State::Content { left }
                    } else {
                        if self.pad > 0 {
                            State::Padding { left: self.pad }
                        } else {
                            State::Header
                        }
                    };
                }
                State::Padding { left } => {
                    let n = rest.len().min(left as usize);
                    let (now, later) = rest.split_at(n);
                    self.raw_bytes(now);
                    rest = later;
                    let left = left - n as u64;
                    self.state = if left > 0 {
                        State::Padding { left }
                    } else {
                        State::Header
                    };
                }
                State::Trailer => {
                    self.raw_bytes(rest);
                    rest = &[];
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
