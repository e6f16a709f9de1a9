//! Partial pulls of zstd:chunked layers: fetch the blob's metadata (TOC, tar-split, footer) with
//! one range request, then only the byte ranges whose content no local layer holds, and put the
//! blob together from those, the local layers' frames and header frames re-made from tar-split.
//! The result is checked against the layer's digest like any download; when it does not match
//! (another encoder's framing, a TOC that lies), or the registry ignores ranges, the caller
//! fetches the whole blob instead. Nothing is recorded before the digest matches.

use super::*;
use kiln_store::chunked::toc::{self, FrameSpan, Metadata};
use kiln_store::chunked::FrameIndex;
use std::io::Write;

/// Remote ranges closer than this are fetched as one (the local bytes between come along).
const MERGE_GAP: u64 = 16 << 10;
/// The most range requests one layer takes; closer ranges merge until it fits.
const MAX_REQUESTS: usize = 32;
/// The most metadata (TOC, tar-split, footer) a partial pull reads (a layer of a million files
/// has about 100 MiB).
const MAX_METADATA: u64 = 512 << 20;

/// What a partial fetch moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Moved {
    /// Bytes fetched from the registry (metadata included).
    pub fetched: u64,
    /// Bytes copied from local layers or re-made locally.
    pub local: u64,
}

/// The frames of every zstd:chunked layer in the store, by content digest: read once per
/// process and store (layers pulled meanwhile are missing from it, which costs only bytes).
pub fn local_frames(store: &Store) -> Result<std::sync::Arc<FrameIndex>> {
    type Cached = Option<(std::path::PathBuf, std::sync::Arc<FrameIndex>)>;
    static CACHE: Mutex<Cached> = Mutex::new(None);
    let mut cached = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((root, ix)) = cached.as_ref() {
        if root == store.root() {
            return Ok(ix.clone());
        }
    }
    let mut ix = FrameIndex::default();
    for l in store.layers_of(Compression::Zstd)? {
        // A blob that is not chunked (or unreadable) adds nothing.
        let _ = ix.add_blob(&store.blob_path(&l.digest));
    }
    let ix = std::sync::Arc::new(ix);
    *cached = Some((store.root().to_path_buf(), ix.clone()));
    Ok(ix)
}

/// A piece of the blob, in order.
enum Piece {
    Remote(u64, u64),
    Local(u32, FrameSpan),
    Made(Vec<u8>),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Remote(a, b) => b - a,
            Piece::Local(_, s) => s.end - s.offset,
            Piece::Made(v) => v.len() as u64,
        }
    }
}

/// GETs `[start, end)` of a blob; None when the registry does not answer with that range.
fn range(
    c: &Client,
    repo: &str,
    scope: &str,
    digest: &Digest,
    start: u64,
    end: u64,
) -> Result<Option<ureq::Response>> {
    let resp = c.send(
        "GET",
        &format!("/v2/{repo}/blobs/{digest}"),
        scope,
        &[("Range", format!("bytes={start}-{}", end - 1))],
        Body::Empty,
    )?;
    let ok = resp.status() == 206
        && resp
            .header("Content-Range")
            .is_some_and(|v| v.starts_with(&format!("bytes {start}-{}/", end - 1)));
    Ok(ok.then_some(resp))
}

fn read_range(c: &Client, what: &str, resp: ureq::Response, len: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len as usize);
    Deadline::new(resp.into_reader())
        .take(len + 1)
        .read_to_end(&mut buf)
        .map_err(|e| read_error(c, what, e))?;
    if buf.len() as u64 != len {
        return Err(RegistryError::Corrupt {
            host: c.host.clone(),
            what: what.to_string(),
            why: image::archive::size_mismatch(buf.len() as u64, len),
        });
    }
    Ok(buf)
}

/// Fetches layer `l` by parts into an ingest file whose content matched the digest; None when
/// a partial fetch is not possible or did not give the blob (fetch it whole then).
pub(super) fn fetch(
    store: &Store,
    c: &Client,
    repo: &str,
    scope: &str,
    l: &Descriptor,
    frames: &FrameIndex,
    report: Report<'_>,
) -> Result<Option<Moved>> {
    if frames.is_empty() || Compression::from_media_type(&l.media_type) != Some(Compression::Zstd) {
        return Ok(None);
    }
    let what = format!("layer {}", l.digest);
    let mut moved = Moved::default();
    // Where the metadata starts: the annotation says, or the footer (one small request more).
    let foot_len = toc::FOOTER_SIZE as u64 + toc::SKIPPABLE_HEADER;
    let start = match l
        .annotations
        .get(toc::ANNOTATION_TOC_POSITION)
        .and_then(|p| p.split(':').next()?.parse::<u64>().ok())
    {
        Some(off) => off.saturating_sub(toc::SKIPPABLE_HEADER),
        None => {
            if l.size < foot_len {
                return Ok(None);
            }
            let Some(resp) = range(c, repo, scope, &l.digest, l.size - foot_len, l.size)? else {
                return Ok(None);
            };
            let tail = read_range(c, &what, resp, foot_len)?;
            moved.fetched += foot_len;
            match toc::Footer::parse(&tail) {
                Some(f) => f.metadata_start(),
                None => return Ok(None),
            }
        }
    };
    // The metadata is read into memory: a position that makes it huge is not followed.
    if start == 0 || start + foot_len > l.size || l.size - start > MAX_METADATA {
        return Ok(None);
    }
    let Some(resp) = range(c, repo, scope, &l.digest, start, l.size)? else {
        return Ok(None);
    };
    let tail = read_range(c, &what, resp, l.size - start)?;
    moved.fetched += tail.len() as u64;
    let Some(footer) = toc::Footer::parse(&tail[tail.len() - foot_len as usize..]) else {
        return Ok(None);
    };
    let Some(meta) = Metadata::from_tail(footer, start, &tail) else {
        return Ok(None);
    };
    if let Some(want) = l.annotations.get(toc::ANNOTATION_TOC_DIGEST) {
        if *want != Digest::of(&meta.toc_zst).to_string() {
            return Ok(None);
        }
    }
    let (Ok(t), Ok(ts)) = (meta.toc(), meta.tarsplit()) else {
        return Ok(None);
    };
    let Some(pieces) = plan(&toc::files(&t), &ts, start, frames) else {
        return Ok(None);
    };
    let runs = merge(pieces);
    let remote: u64 = runs
        .iter()
        .filter(|p| matches!(p, Piece::Remote(..)))
        .map(Piece::len)
        .sum();
    let short = &l.digest.hex()[..12];
    report.start(short, "Downloading", remote);
    let mut ingest = store.ingest()?;
    for p in &runs {
        match p {
            Piece::Remote(a, b) => {
                let Some(resp) = range(c, repo, scope, &l.digest, *a, *b)? else {
                    return Ok(None);
                };
                let mut r = Counting {
                    inner: Deadline::new(resp.into_reader()),
                    short: short.to_string(),
                    report,
                }
                .take(b - a);
                let n = io::copy(&mut r, &mut ingest).map_err(|e| read_error(c, &what, e))?;
                if n != b - a {
                    return Ok(None);
                }
                moved.fetched += n;
            }
            Piece::Local(src, span) => {
                // A local layer that does not read (removed meanwhile): fetch the blob whole.
                let Ok(bytes) = frames.read(*src, *span) else {
                    return Ok(None);
                };
                ingest
                    .write_all(&bytes)
                    .map_err(|e| read_error(c, &what, e))?;
                moved.local += bytes.len() as u64;
            }
            Piece::Made(bytes) => {
                ingest
                    .write_all(bytes)
                    .map_err(|e| read_error(c, &what, e))?;
                moved.local += bytes.len() as u64;
            }
        }
    }
    ingest
        .write_all(&tail)
        .map_err(|e| read_error(c, &what, e))?;
    match ingest.commit(Some(l.digest)) {
        Ok(_) => Ok(Some(moved)),
        Err(kiln_store::Error::DigestMismatch { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The blob's data region `[0, end)` as pieces: each file's chunks from a local layer when one
/// holds a frame of the same content and length, the header frames between files re-made from
/// tar-split when the re-made frame has the right length, the rest remote. None when the TOC's
/// positions do not tile the region.
fn plan(
    files: &[toc::FileFrames],
    tarsplit: &[u8],
    end: u64,
    frames: &FrameIndex,
) -> Option<Vec<Piece>> {
    let gaps = gaps(tarsplit).filter(|g| g.len() == files.len() + 1);
    let mut out = Vec::new();
    let mut at = 0u64;
    for i in 0..=files.len() {
        let next = files.get(i).map_or(end, |f| f.offset);
        if next < at || next > end {
            return None;
        }
        if next > at {
            let made = gaps
                .as_ref()
                .and_then(|g| kiln_store::chunked::frame(&g[i]).ok())
                .filter(|m| m.len() as u64 == next - at);
            out.push(match made {
                Some(m) => Piece::Made(m),
                None => Piece::Remote(at, next),
            });
        }
        let Some(f) = files.get(i) else { break };
        let mut pos = f.offset;
        for (d, span) in &f.chunks {
            if span.offset != pos || span.end < span.offset || span.end > f.end {
                return None;
            }
            let local = d
                .and_then(|d| frames.get(&d))
                .filter(|(_, s)| s.end - s.offset == span.end - span.offset);
            out.push(match local {
                Some((src, s)) => Piece::Local(src, s),
                None => Piece::Remote(span.offset, span.end),
            });
            pos = span.end;
        }
        if pos != f.end {
            return None;
        }
        at = f.end;
    }
    Some(out)
}

/// The tar bytes between files with content, from tar-split: before the first, between each
/// two, and after the last (what kiln's writer puts in one frame each).
fn gaps(tarsplit: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for e in toc::tarsplit_entries(tarsplit) {
        let e = e?;
        match e.kind {
            2 => cur.extend_from_slice(&e.payload?),
            1 if e.size > 0 => out.push(std::mem::take(&mut cur)),
            _ => {}
        }
    }
    out.push(cur);
    Some(out)
}

/// Joins neighbouring remote pieces (and what lies between them when it is small), so a layer
/// takes few requests.
fn merge(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    // Local bytes since the last remote piece, kept aside in case the next remote one absorbs them.
    let mut held: Vec<Piece> = Vec::new();
    let mut held_len = 0u64;
    for p in pieces {
        match p {
            Piece::Remote(a, b) => {
                if let Some(Piece::Remote(_, end)) = out.last_mut() {
                    if held_len < MERGE_GAP {
                        *end = b;
                        held.clear();
                        held_len = 0;
                        continue;
                    }
                }
                out.append(&mut held);
                held_len = 0;
                out.push(Piece::Remote(a, b));
            }
            local => {
                held_len += local.len();
                held.push(local);
            }
        }
    }
    out.append(&mut held);
    // Too many requests: join the closest remote ranges until few enough remain.
    loop {
        let remote: Vec<usize> = (0..out.len())
            .filter(|&i| matches!(out[i], Piece::Remote(..)))
            .collect();
        if remote.len() <= MAX_REQUESTS {
            return out;
        }
        let (i, j) = remote
            .windows(2)
            .map(|w| (w[0], w[1]))
            .min_by_key(|&(i, j)| out[i + 1..j].iter().map(Piece::len).sum::<u64>())
            .expect("more than one remote range");
        let (Piece::Remote(a, _), Piece::Remote(_, b)) = (&out[i], &out[j]) else {
            unreachable!("both are remote")
        };
        let joined = Piece::Remote(*a, *b);
        out.splice(i..=j, [joined]);
    }
}
