//! Content hashes of context files, with a stat cache in the store (one file per context root,
//! `kiln_store::StatFile`: read whole, searched in place).
//!
//! Only the files a COPY/ADD selects are hashed. Each costs one `lstat`; when its stat tuple
//! (size, mtime ns, ctime ns, inode, mode) equals the cached one, the cached blake3 is used,
//! otherwise the content is read and hashed again. mtime alone is never trusted: an edit that
//! keeps size and mtime still changes ctime (moby/buildkit#2592 and #4817 are that mistake).
//! Hashing runs in parallel (rayon); new entries are merged into the file at the end.

use kiln_store::{StatFile, StatTuple, Store};
use rayon::prelude::*;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A stat-cache entry to write: path relative to the root, stat tuple, blake3.
type NewRow = (Vec<u8>, StatTuple, [u8; 32]);

/// One hashed file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHash {
    pub stat: StatTuple,
    /// blake3 of the content (regular files), of the link target (symlinks), else zero.
    pub hash: [u8; 32],
}

/// Hashes context files, remembering results in the store.
pub struct Hasher<'a> {
    store: Option<&'a Store>,
    root: PathBuf,
    cache: StatFile,
    fresh: Mutex<Vec<NewRow>>,
    /// Files whose content was read (stat cache misses), for benchmarks and tests.
    pub rehashed: std::sync::atomic::AtomicUsize,
}

/// The stat tuple the cache compares.
pub fn stat_tuple(m: &fs::Metadata) -> StatTuple {
    StatTuple {
        size: m.size(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
        mode: m.mode(),
    }
}

fn hash_file(p: &Path) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let f = fs::File::open(p)?;
    h.update_reader(f)?;
    Ok(*h.finalize().as_bytes())
}

impl<'a> Hasher<'a> {
    /// A hasher for the context at `root` (made absolute), using the store's stat cache if given.
    pub fn new(store: Option<&'a Store>, root: &Path) -> io::Result<Hasher<'a>> {
        let root = fs::canonicalize(root)?;
        // Keyed by context-relative path, so a lookup needs no allocation.
        let cache = match store {
            Some(s) => s
                .stat_cache()
                .load(root.as_os_str().as_bytes())
                .map_err(io::Error::other)?,
            None => StatFile::default(),
        };
        Ok(Hasher {
            store,
            root,
            cache,
            fresh: Mutex::new(Vec::new()),
            rehashed: Default::default(),
        })
    }

    /// Hashes the context-relative `paths`, in parallel; results in the same order.
    pub fn hash(&self, paths: &[&str]) -> io::Result<Vec<FileHash>> {
        paths
            .par_iter()
            .map_init(|| 0, |next, rel| self.one(rel, None, next))
            .collect()
    }

    /// Like [`Hasher::hash`] for paths whose stat tuple the walk already took. In the walk's
    /// order, each cache lookup is one comparison (`StatFile::get_near`).
    pub fn hash_stat(&self, paths: &[(&str, StatTuple)]) -> io::Result<Vec<FileHash>> {
        paths
            .par_iter()
            .with_min_len(256)
            .map_init(|| 0, |next, (rel, st)| self.one(rel, Some(*st), next))
            .collect()
    }

    fn one(&self, rel: &str, known: Option<StatTuple>, next: &mut usize) -> io::Result<FileHash> {
        let stat =
            match known {
                Some(s) => s,
                None => {
                    let full = self.root.join(rel);
                    stat_tuple(&fs::symlink_metadata(&full).map_err(|e| {
                        io::Error::new(e.kind(), format!("{}: {e}", full.display()))
                    })?)
                }
            };
        if let Some((cached, h)) = self.cache.get_near(rel.as_bytes(), next) {
            if cached == stat {
                return Ok(FileHash { stat, hash: h });
            }
        }
        let full = self.root.join(rel);
        let fmt = stat.mode & libc::S_IFMT;
        let hash = if fmt == libc::S_IFREG {
            self.rehashed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let h = hash_file(&full)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", full.display())))?;
            // The file changed while being hashed: don't remember a hash that may be torn.
            let after = fs::symlink_metadata(&full).map(|m| stat_tuple(&m)).ok();
            if after == Some(stat) {
                self.fresh.lock().unwrap_or_else(|p| p.into_inner()).push((
                    rel.as_bytes().to_vec(),
                    stat,
                    h,
                ));
            }
            h
        } else if fmt == libc::S_IFLNK {
            *blake3::hash(fs::read_link(&full)?.as_os_str().as_bytes()).as_bytes()
        } else {
            [0; 32]
        };
        Ok(FileHash { stat, hash })
    }

    /// Writes the new cache rows.
    pub fn save(&self) -> io::Result<()> {
        let rows = std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(s) = self.store {
            s.stat_cache()
                .save(self.root.as_os_str().as_bytes(), &self.cache, rows)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// The context root, absolute.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn stat_cache_sees_same_size_same_mtime_edits() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let ctx = t.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        fs::write(ctx.join("a"), "aaaa").unwrap();
        let h = Hasher::new(Some(&store), &ctx).unwrap();
        let first = h.hash(&["a"]).unwrap();
        h.save().unwrap();
        assert_eq!(h.rehashed.load(Ordering::Relaxed), 1);

        let h = Hasher::new(Some(&store), &ctx).unwrap();
        assert_eq!(h.hash(&["a"]).unwrap(), first);
        assert_eq!(
            h.rehashed.load(Ordering::Relaxed),
            0,
            "unchanged file is not read"
        );

        // Same size, mtime put back: only ctime tells.
        let m = fs::metadata(ctx.join("a")).unwrap();
        fs::write(ctx.join("a"), "bbbb").unwrap();
        let f = fs::File::options().write(true).open(ctx.join("a")).unwrap();
        f.set_modified(m.modified().unwrap()).unwrap();
        let h = Hasher::new(Some(&store), &ctx).unwrap();
        let again = h.hash(&["a"]).unwrap();
        assert_ne!(again[0].hash, first[0].hash);
        assert_eq!(again[0].hash, *blake3::hash(b"bbbb").as_bytes());
    }
}
