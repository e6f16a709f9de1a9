//! The context stat cache as one file per context root, `<root>/stat-cache/<hash of the root>`:
//! every file's stat tuple and content hash, sorted by relative path in the context walk's order
//! ([`path_order`]), read in one `read` and searched in place (no row per file, no allocation per
//! file, no hash map to build). Lookups in walk order find each file next to the last one, so an
//! unchanged file costs one `statx` and one comparison.
//!
//! Layout: `KILNSC02`, the entry count (u64 LE), the entries, then the blake3 of all of that.
//! An entry: path length (u16 LE), the path, size (u64), mtime_ns (i64), ctime_ns (i64), ino
//! (u64), mode (u32), the 32-byte content hash. The file is a cache: it is replaced by rename
//! without fsync, and one that does not check (torn by a crash, cut, edited) reads as empty, so
//! it can cost a rehash, never a wrong hash.

use crate::steps::{StatRow, StatTuple};
use crate::{io_err, Result, Store};
use std::fs;
use std::io::Write;
use std::path::PathBuf;

const MAGIC: &[u8; 8] = b"KILNSC02";
const FIXED: usize = 8 + 8 + 8 + 8 + 4 + 32;

/// The walk's order of relative paths: depth first with names sorted, so a directory's subtree
/// follows it directly. That is byte order with '/' below every other byte.
pub fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    match a.iter().zip(b).find(|(x, y)| x != y) {
        Some((&x, &y)) => key(x).cmp(&key(y)),
        None => a.len().cmp(&b.len()),
    }
}

/// A loaded stat cache: the file's bytes and where each entry starts.
#[derive(Default)]
pub struct StatFile {
    bytes: Vec<u8>,
    offsets: Vec<u32>,
}

impl StatFile {
    /// Checks and indexes `bytes`; None when they are not a whole, sorted stat cache.
    fn parse(bytes: Vec<u8>) -> Option<StatFile> {
        if bytes.len() < 16 + 32 || &bytes[..8] != MAGIC || bytes.len() > u32::MAX as usize {
            return None;
        }
        let body = bytes.len() - 32;
        if blake3::hash(&bytes[..body]).as_bytes() != &bytes[body..] {
            return None;
        }
        let count = u64::from_le_bytes(bytes[8..16].try_into().ok()?) as usize;
        let mut offsets = Vec::with_capacity(count.min(body / (2 + FIXED)));
        let mut at = 16;
        let mut prev: Option<&[u8]> = None;
        for _ in 0..count {
            let len = u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
            let path = bytes.get(at + 2..at + 2 + len)?;
            if prev.is_some_and(|p| path_order(p, path).is_ge()) {
                return None;
            }
            prev = Some(path);
            offsets.push(at as u32);
            at += 2 + len + FIXED;
        }
        (at == body).then_some(StatFile { bytes, offsets })
    }

    fn path_at(&self, off: u32) -> &[u8] {
        let at = off as usize;
        let len = u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]) as usize;
        &self.bytes[at + 2..at + 2 + len]
    }

    fn row_at(&self, off: u32) -> StatRow {
        let at = off as usize;
        let len = u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]) as usize;
        let f = &self.bytes[at + 2 + len..at + 2 + len + FIXED];
        let u = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().expect("8 bytes"));
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&f[36..68]);
        (
            StatTuple {
                size: u(0),
                mtime_ns: u(8) as i64,
                ctime_ns: u(16) as i64,
                ino: u(24),
                mode: u32::from_le_bytes(f[32..36].try_into().expect("4 bytes")),
            },
            hash,
        )
    }

    /// The stat tuple and hash recorded for `path` (relative to the context root).
    pub fn get(&self, path: &[u8]) -> Option<StatRow> {
        self.get_near(path, &mut 0)
    }

    /// [`StatFile::get`] that looks at entry `*next` first and leaves `*next` after what it
    /// found: lookups in walk order cost one comparison each.
    pub fn get_near(&self, path: &[u8], next: &mut usize) -> Option<StatRow> {
        if let Some(&o) = self.offsets.get(*next) {
            if self.path_at(o) == path {
                *next += 1;
                return Some(self.row_at(o));
            }
        }
        let i = self
            .offsets
            .binary_search_by(|&o| path_order(self.path_at(o), path))
            .ok()?;
        *next = i + 1;
        Some(self.row_at(self.offsets[i]))
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The entries of `self` with `fresh` (relative path, stat, hash) merged in, fresh ones
    /// winning, as file bytes.
    fn merged(&self, mut fresh: Vec<(Vec<u8>, StatTuple, [u8; 32])>) -> Vec<u8> {
        fresh.sort_by(|a, b| path_order(&a.0, &b.0));
        fresh.dedup_by(|a, b| a.0 == b.0);
        let mut out = Vec::with_capacity(self.bytes.len() + fresh.len() * (2 + FIXED + 64));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; 8]);
        let mut count = 0u64;
        let mut push = |out: &mut Vec<u8>, path: &[u8], (t, h): StatRow| {
            out.extend_from_slice(&(path.len() as u16).to_le_bytes());
            out.extend_from_slice(path);
            for v in [t.size, t.mtime_ns as u64, t.ctime_ns as u64, t.ino] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&t.mode.to_le_bytes());
            out.extend_from_slice(&h);
            count += 1;
        };
        let mut old = self.offsets.iter().peekable();
        let mut new = fresh
            .iter()
            .filter(|f| f.0.len() <= u16::MAX as usize)
            .peekable();
        loop {
            match (old.peek(), new.peek()) {
                (Some(&&o), Some(n)) => match path_order(self.path_at(o), &n.0) {
                    std::cmp::Ordering::Less => {
                        push(&mut out, self.path_at(o), self.row_at(o));
                        old.next();
                    }
                    ord => {
                        push(&mut out, &n.0, (n.1, n.2));
                        new.next();
                        if ord == std::cmp::Ordering::Equal {
                            old.next();
                        }
                    }
                },
                (Some(&&o), None) => {
                    push(&mut out, self.path_at(o), self.row_at(o));
                    old.next();
                }
                (None, Some(n)) => {
                    push(&mut out, &n.0, (n.1, n.2));
                    new.next();
                }
                (None, None) => break,
            }
        }
        out[8..16].copy_from_slice(&count.to_le_bytes());
        let sum = *blake3::hash(&out).as_bytes();
        out.extend_from_slice(&sum);
        out
    }
}

/// The context stat cache (`store.stat_cache()`).
pub struct StatCache<'s> {
    pub(crate) store: &'s Store,
}

impl StatCache<'_> {
    fn path(&self, root: &[u8]) -> PathBuf {
        let h = blake3::hash(root).to_hex();
        self.store.root().join("stat-cache").join(&h[..32])
    }

    /// The stat cache of the context at `root` (an absolute path): empty when there is none or
    /// the file does not check.
    pub fn load(&self, root: &[u8]) -> Result<StatFile> {
        let p = self.path(root);
        match fs::read(&p) {
            Ok(b) => Ok(StatFile::parse(b).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StatFile::default()),
            Err(e) => Err(io_err(format!("read {}", p.display()), e)),
        }
    }

    /// Replaces the stat cache of `root` with `old` plus `fresh` (relative path, stat, hash).
    pub fn save(
        &self,
        root: &[u8],
        old: &StatFile,
        fresh: Vec<(Vec<u8>, StatTuple, [u8; 32])>,
    ) -> Result<()> {
        if fresh.is_empty() {
            return Ok(());
        }
        let bytes = old.merged(fresh);
        let dest = self.path(root);
        let dir = dest.parent().expect("a parent");
        fs::create_dir_all(dir).map_err(|e| io_err(format!("create {}", dir.display()), e))?;
        let mut t = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(self.store.ingest_dir())
            .map_err(|e| io_err("create temp file", e))?;
        for part in bytes.chunks(256 << 10) {
            t.write_all(part)
                .map_err(|e| io_err("write the stat cache", e))?;
        }
        t.persist(&dest)
            .map_err(|e| io_err(format!("rename into {}", dest.display()), e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> StatTuple {
        StatTuple {
            size: n,
            mtime_ns: n as i64 * 10,
            ctime_ns: -(n as i64),
            ino: n + 1,
            mode: 0o100644,
        }
    }

    #[test]
    fn merges_finds_and_refuses_what_does_not_check() {
        let empty = StatFile::default();
        let a = StatFile::parse(empty.merged(vec![
            (b"b/c".to_vec(), t(2), [2; 32]),
            (b"a".to_vec(), t(1), [1; 32]),
            (b"z".to_vec(), t(9), [9; 32]),
        ]))
        .unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a.get(b"b/c"), Some((t(2), [2; 32])));
        assert_eq!(a.get(b"b"), None);
        // Fresh rows win and are merged in order.
        let b = StatFile::parse(a.merged(vec![
            (b"b/c".to_vec(), t(3), [3; 32]),
            (b"m".to_vec(), t(4), [4; 32]),
        ]))
        .unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b.get(b"b/c"), Some((t(3), [3; 32])));
        assert_eq!(b.get(b"a"), Some((t(1), [1; 32])));
        assert_eq!(b.get(b"m"), Some((t(4), [4; 32])));
        assert_eq!(b.get(b"z"), Some((t(9), [9; 32])));
        // A cut file, a changed byte, a wrong magic: nothing is believed.
        let bytes = a.merged(vec![]);
        assert!(StatFile::parse(bytes[..bytes.len() - 1].to_vec()).is_none());
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(StatFile::parse(bad).is_none());
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(StatFile::parse(bad).is_none());
    }

    #[test]
    fn walk_order_lookups_are_found_next_to_the_last() {
        // The walk's order: "a" and its subtree before "a.b", "a-" and "a.b" sort by byte.
        let walk: [&[u8]; 7] = [b"a", b"a/x", b"a/x/y", b"a-", b"a.b", b"a.b/c", b"b"];
        assert!(walk.windows(2).all(|w| path_order(w[0], w[1]).is_lt()));
        let f = StatFile::parse(
            StatFile::default().merged(
                walk.iter()
                    .rev()
                    .enumerate()
                    .map(|(i, p)| (p.to_vec(), t(i as u64), [i as u8; 32]))
                    .collect(),
            ),
        )
        .unwrap();
        let mut next = 0;
        for (i, p) in walk.iter().enumerate() {
            assert_eq!(next, i, "{:?} is found where the last lookup left off", p);
            assert_eq!(
                f.get_near(p, &mut next).map(|r| r.1[0]),
                Some((6 - i) as u8)
            );
        }
        // Out of order and missing: found by search, and the hint follows.
        let mut next = 0;
        assert!(f.get_near(b"a.b", &mut next).is_some());
        assert_eq!(next, 5);
        assert!(f.get_near(b"a/zz", &mut next).is_none());
        assert!(f.get_near(b"a", &mut next).is_some());
        assert_eq!(next, 1);
    }
}
