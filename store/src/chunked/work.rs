//! The chunked writer's units of work: the events the parser makes, in stream order, and their
//! processing on worker threads (compress a frame, or find it among older blobs' frames).

use super::frames::KnownFiles;
use super::toc::FrameSpan;
use super::{crc64, header, FrameIndex, ThreadedSha256, ZSTD_LEVEL};
use sha2::{Digest as _, Sha256};
use std::io;

/// One unit of the stream between the parser and the writer, in stream order.
pub(super) enum Ev {
    /// Tar bytes between contents: compressed as one frame.
    Frame(Vec<u8>),
    /// Raw tar bytes for tar-split (headers and padding since the last entry).
    Segment(Vec<u8>),
    /// A tar entry; its content (if any) follows as chunks.
    Entry(Box<header::Parsed>),
    /// A piece of the current entry's content (`len` bytes): its bytes, or, for a known file,
    /// its frame in the older blob and its sha256. The last piece of a file of several carries
    /// the file's sha256 (being computed), and a known file's last piece its digest and CRC-64.
    Chunk {
        data: Vec<u8>,
        len: u64,
        file_sha: Option<Box<ThreadedSha256>>,
        known: Option<([u8; 32], FrameSpan)>,
        file_known: Option<([u8; 32], u64)>,
    },
}

/// A batch being processed: its events and what became of them.
pub(super) type Batch = std::thread::JoinHandle<(Vec<Ev>, io::Result<Vec<Done>>)>;

/// A processed frame.
pub(super) enum Done {
    Bytes(Vec<u8>),
    Piece {
        bytes: Vec<u8>,
        sha: [u8; 32],
        crc: u64,
        len: u64,
        reused: bool,
    },
    None,
}

/// A worker's zstd contexts and scratch buffer, kept for the writer's life (a context's tables
/// are megabytes; making them per batch cost more than the small frames they compress).
pub(crate) struct Codecs {
    c: zstd::bulk::Compressor<'static>,
    d: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

pub(super) type CodecPool = std::sync::Arc<std::sync::Mutex<Vec<Codecs>>>;

/// Compresses each Frame and Chunk event, on `workers` threads when there is enough to share;
/// a known chunk's frame is copied as it is, and a chunk whose frame the index holds is copied
/// once it decompresses to the chunk.
pub(super) fn process(
    events: &[Ev],
    frames: Option<&FrameIndex>,
    known: Option<&KnownFiles>,
    workers: usize,
    pool: &CodecPool,
) -> io::Result<Vec<Done>> {
    let work: usize = events
        .iter()
        .map(|e| match e {
            Ev::Frame(b) => b.len(),
            Ev::Chunk { len, .. } => *len as usize,
            _ => 0,
        })
        .sum();
    let workers = if work < 256 << 10 { 1 } else { workers.max(1) };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<io::Result<Done>>>> =
        events.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let run = || -> io::Result<()> {
        let popped = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut k = match popped {
            Some(k) => k,
            None => Codecs {
                c: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
                d: zstd::bulk::Decompressor::new()?,
                scratch: Vec::new(),
            },
        };
        let Codecs { c, d, scratch } = &mut k;
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(ev) = events.get(i) else { break };
            let r = match ev {
                Ev::Frame(b) => c.compress(b).map(Done::Bytes),
                Ev::Chunk {
                    known: Some((sha, span)),
                    len,
                    ..
                } => match known {
                    Some(k) => k.read_frame(*span).map(|bytes| Done::Piece {
                        bytes,
                        sha: *sha,
                        crc: 0,
                        len: *len,
                        reused: true,
                    }),
                    None => Err(io::Error::other("a known chunk without its blob")),
                },
                Ev::Chunk { data, .. } => {
                    let sha: [u8; 32] = Sha256::digest(data).into();
                    let crc = crc64::update(0, data);
                    let found = frames.and_then(|f| f.reuse(&sha, data, d, scratch));
                    let reused = found.is_some();
                    match found.map(Ok).unwrap_or_else(|| c.compress(data)) {
                        Ok(bytes) => Ok(Done::Piece {
                            bytes,
                            sha,
                            crc,
                            len: data.len() as u64,
                            reused,
                        }),
                        Err(e) => Err(e),
                    }
                }
                _ => Ok(Done::None),
            };
            *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        }
        pool.lock().unwrap_or_else(|p| p.into_inner()).push(k);
        Ok(())
    };
    if workers == 1 {
        run()?;
    } else {
        std::thread::scope(|s| -> io::Result<()> {
            let hs: Vec<_> = (0..workers).map(|_| s.spawn(run)).collect();
            for h in hs {
                h.join()
                    .map_err(|_| io::Error::other("a compression worker panicked"))??;
            }
            Ok(())
        })?;
    }
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(Ok(Done::None))
        })
        .collect()
}
