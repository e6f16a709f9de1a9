//! Layer codec: one streaming pass from tar bytes to a compressed blob, computing the DiffID
//! (sha256 of the uncompressed tar) and the blob digest (sha256 of the compressed stream) together,
//! never by re-reading the data; and decompression of gzip, zstd or plain layers by magic number.
//!
//! zstd is written multithreaded at a pinned level. zstd's multithreaded output does not depend on
//! the number of workers (any count >= 1 gives the same frames), but differs from single-threaded
//! output, so kiln always uses >= 1 worker: the same tar gives the same blob on every machine.

use crate::digest::{Digest, HashWriter};
use std::io::{self, BufRead, BufReader, Read, Write};

pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The zstd level kiln writes. Pinned: changing it changes every layer digest.
pub const ZSTD_LEVEL: i32 = 3;
/// The gzip level kiln writes. Pinned for the same reason.
pub const GZIP_LEVEL: u32 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// zstd as one multithreaded stream (`--compression zstd:plain`).
    Zstd,
    /// zstd:chunked (the default): a frame per file, a TOC and tar-split (see [`crate::chunked`]).
    ZstdChunked,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_LAYER_TAR,
            Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Compression::Zstd | Compression::ZstdChunked => MEDIA_TYPE_LAYER_ZSTD,
        }
    }

    /// The encoding a reader must decode: zstd:chunked is zstd.
    pub fn family(self) -> Compression {
        match self {
            Compression::ZstdChunked => Compression::Zstd,
            c => c,
        }
    }

    /// The name `--compression` takes.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd:plain",
            Compression::ZstdChunked => "zstd",
        }
    }

    /// The compression a layer media type declares (OCI or Docker schema 2), if it is a layer
    /// type. zstd types give `Zstd`: whether a zstd blob is chunked is in its bytes (see
    /// [`crate::chunked::toc::Metadata`]).
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        match mt {
            MEDIA_TYPE_LAYER_TAR | MEDIA_TYPE_DOCKER_LAYER_TAR => Some(Compression::None),
            MEDIA_TYPE_LAYER_GZIP | MEDIA_TYPE_DOCKER_LAYER_GZIP => Some(Compression::Gzip),
            MEDIA_TYPE_LAYER_ZSTD => Some(Compression::Zstd),
            // Non-distributable layers (deprecated) carry the same encodings.
            "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    /// The compression of a stream, from its first bytes.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What a finished layer encode produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Content bytes whose zstd:chunked frames were copied from older blobs, not compressed.
    pub reused: u64,
}

enum Compressor<W: Write> {
    None(W),
    Gzip(ParallelGzip<W>),
    Zstd(zstd::Encoder<'static, W>),
    Chunked(Box<crate::chunked::ChunkedWriter<W>>),
}

/// gzip on every core, as pigz does: the stream is cut into 1 MiB chunks, each compressed on
/// its own (a batch at a time, one thread per chunk) into a gzip member of its own, and the
/// members are written in order. Concatenated members are one valid gzip stream (RFC 1952 2.2;
/// Go's, containerd's and zlib's readers take them), and the output depends only on the input
/// (the chunk size is fixed), never on how many threads ran.
pub struct ParallelGzip<W: Write> {
    out: W,
    buf: Vec<u8>,
    batch: Vec<Vec<u8>>,
    wrote_any: bool,
}

const GZIP_CHUNK: usize = 1 << 20;

impl<W: Write> ParallelGzip<W> {
    pub fn new(out: W) -> Self {
        ParallelGzip {
            out,
            buf: Vec::with_capacity(GZIP_CHUNK),
            batch: Vec::new(),
            wrote_any: false,
        }
    }

    fn member(data: &[u8]) -> io::Result<Vec<u8>> {
        // GzBuilder writes mtime 0 and no file name: the header is reproducible.
        let mut g = flate2::GzBuilder::new().write(
            Vec::with_capacity(data.len() / 2),
            flate2::Compression::new(GZIP_LEVEL),
        );
        g.write_all(data)?;
        g.finish()
    }

    fn flush_batch(&mut self) -> io::Result<()> {
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        let members: Vec<io::Result<Vec<u8>>> = if batch.len() == 1 {
            vec![Self::member(&batch[0])]
        } else {
            std::thread::scope(|s| {
                let hs: Vec<_> = batch
                    .iter()
                    .map(|c| s.spawn(move || Self::member(c)))
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(io::Error::other("gzip worker panicked")))
                    })
                    .collect()
            })
        };
        for m in members {
            self.out.write_all(&m?)?;
            self.wrote_any = true;
        }
        Ok(())
    }

    fn cut(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(GZIP_CHUNK));
        self.batch.push(chunk);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.batch.len() >= workers {
            self.flush_batch()?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() || (!self.wrote_any && self.batch.is_empty()) {
            // An empty input still makes one (empty) member: a valid gzip stream.
            self.cut()?;
        }
        self.flush_batch()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(GZIP_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == GZIP_CHUNK {
            self.cut()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Compressor<W> {
    /// Ends the stream; returns the writer and the content bytes reused (chunked only).
    fn finish(self) -> io::Result<(W, u64)> {
        match self {
            Compressor::None(w) => Ok((w, 0)),
            Compressor::Gzip(g) => Ok((g.finish()?, 0)),
            Compressor::Zstd(z) => Ok((z.finish()?, 0)),
            Compressor::Chunked(c) => (*c).finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
            Compressor::Chunked(c) => c.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
            Compressor::Chunked(c) => c.flush(),
        }
    }
}

/// sha256 computed on its own thread: bytes are batched and handed over a bounded channel, so
/// the DiffID hash runs beside compression and the blob hash instead of after them (on a
/// 2-core machine this is the difference between the layer writer being CPU-bound on one core
/// or on two).
pub(crate) struct ThreadedSha256 {
    buf: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<(Digest, u64)>>,
}

const HASH_BATCH: usize = 1 << 20;

impl ThreadedSha256 {
    pub(crate) fn new() -> ThreadedSha256 {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let worker = std::thread::spawn(move || {
            let mut h = HashWriter::new(io::sink());
            for chunk in rx {
                let _ = h.write_all(&chunk);
            }
            let (d, n, _) = h.finish();
            (d, n)
        });
        ThreadedSha256 {
            buf: Vec::with_capacity(HASH_BATCH),
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= HASH_BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(HASH_BATCH));
        if let Some(tx) = &self.tx {
            let _ = tx.send(chunk);
        }
    }

    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        if !self.buf.is_empty() {
            self.send();
        }
        drop(self.tx.take());
        self.worker
            .take()
            .expect("worker runs until finish")
            .join()
            .map_err(|_| io::Error::other("the DiffID hasher thread panicked"))
    }
}

impl Drop for ThreadedSha256 {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Compresses a tar stream written into it, hashing both sides on the way (each hash on a
/// thread of its own).
pub struct LayerEncoder<W: Write> {
    /// The tar bytes, hashed (the DiffID) on their way into the compressor, whose output is
    /// hashed (the blob digest) on its way out.
    inner: ThreadedHashWriter<Compressor<ThreadedHashWriter<W>>>,
}

/// Passes writes on and hashes them on another thread.
struct ThreadedHashWriter<W> {
    inner: W,
    hash: ThreadedSha256,
}

impl<W: Write> ThreadedHashWriter<W> {
    fn new(inner: W) -> Self {
        ThreadedHashWriter {
            inner,
            hash: ThreadedSha256::new(),
        }
    }

    fn finish(self) -> io::Result<(Digest, u64, W)> {
        let (d, n) = self.hash.finish()?;
        Ok((d, n, self.inner))
    }
}

impl<W: Write> Write for ThreadedHashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// zstd workers: the machine's cores, at least one (see the module docs for why never zero).
fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .clamp(1, 16)
}

impl<W: Write> LayerEncoder<W> {
    pub fn new(out: W, compression: Compression) -> io::Result<Self> {
        Self::with_workers(out, compression, zstd_workers())
    }

    /// A zstd:chunked encoder that copies the frames of unchanged content from `frames`, and
    /// takes `known` files' frames as they are.
    pub fn chunked(
        out: W,
        frames: Option<std::sync::Arc<crate::chunked::FrameIndex>>,
        known: Option<std::sync::Arc<crate::chunked::KnownFiles>>,
    ) -> Self {
        LayerEncoder {
            inner: ThreadedHashWriter::new(Compressor::Chunked(Box::new(
                crate::chunked::ChunkedWriter::new(ThreadedHashWriter::new(out), frames)
                    .with_known(known),
            ))),
        }
    }

    /// Like `new` with an explicit zstd worker count (tests prove the count does not matter).
    pub fn with_workers(out: W, compression: Compression, workers: u32) -> io::Result<Self> {
        let out = ThreadedHashWriter::new(out);
        let c = match compression {
            Compression::None => Compressor::None(out),
            Compression::Gzip => Compressor::Gzip(ParallelGzip::new(out)),
            Compression::Zstd => {
                let mut z = zstd::Encoder::new(out, ZSTD_LEVEL)?;
                z.multithread(workers.max(1))?;
                Compressor::Zstd(z)
            }
            Compression::ZstdChunked => {
                Compressor::Chunked(Box::new(crate::chunked::ChunkedWriter::new(out, None)))
            }
        };
        Ok(LayerEncoder {
            inner: ThreadedHashWriter::new(c),
        })
    }

    /// Ends the compressed stream; returns the digests and the output writer.
    pub fn finish(self) -> io::Result<(LayerDigests, W)> {
        let (diff_id, uncompressed_size, compressor) = self.inner.finish()?;
        let (hashed, reused) = compressor.finish()?;
        let (digest, size, w) = hashed.finish()?;
        Ok((
            LayerDigests {
                diff_id,
                digest,
                size,
                uncompressed_size,
                reused,
            },
            w,
        ))
    }
}

impl<W: Write> Write for LayerEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader of the uncompressed content of a layer in any of the three encodings, chosen by the
/// stream's magic number (media types lie often enough that the bytes decide).
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let head = r.fill_buf()?;
    Ok(match Compression::detect(head) {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd | Compression::ZstdChunked => Box::new(zstd::Decoder::with_buffer(r)?),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn parallel_gzip_is_one_valid_stream_and_deterministic() {
        let mut data = Vec::new();
        let mut x: u32 = 1;
        for i in 0..(3 * GZIP_CHUNK + 12345) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.push(if i % 7 == 0 {
                (x >> 16) as u8
            } else {
                b'a' + (i % 13) as u8
            });
        }
        let enc = |d: &[u8]| {
            let mut g = ParallelGzip::new(Vec::new());
            g.write_all(d).unwrap();
            g.finish().unwrap()
        };
        let a = enc(&data);
        assert_eq!(a, enc(&data), "the same input gives the same bytes");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut decompress(&a[..]).unwrap(), &mut back).unwrap();
        assert_eq!(back, data);
        let empty = enc(&[]);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut decompress(&empty[..]).unwrap(), &mut back).unwrap();
        assert!(back.is_empty() && !empty.is_empty());
    }

    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        // Compressible but not trivial: a repeating text with a counter.
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(format!("line {i} of the kiln layer codec test\n").as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn round_trip_every_compression_and_digests_agree() {
        let data = sample(3 << 20);
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::ZstdChunked,
        ] {
            let mut enc = LayerEncoder::new(Vec::new(), c).unwrap();
            enc.write_all(&data).unwrap();
            let (d, blob) = enc.finish().unwrap();
            assert_eq!(d.diff_id, Digest::of(&data), "{c:?}");
            assert_eq!(d.digest, Digest::of(&blob), "{c:?}");
            assert_eq!(d.size, blob.len() as u64);
            assert_eq!(d.uncompressed_size, data.len() as u64);
            let mut back = Vec::new();
            decompress(&blob[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }

    #[test]
    fn zstd_output_does_not_depend_on_worker_count() {
        let data = sample(9 << 20);
        let enc = |w| {
            let mut e = LayerEncoder::with_workers(Vec::new(), Compression::Zstd, w).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap().1
        };
        let one = enc(1);
        assert_eq!(one, enc(2));
        assert_eq!(one, enc(4));
    }

    #[test]
    fn media_types_map_both_ways() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::ZstdChunked,
        ] {
            assert_eq!(
                Compression::from_media_type(c.media_type()),
                Some(c.family())
            );
        }
        assert_eq!(
            Compression::from_media_type(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("application/json"), None);
    }
}
