//! Garbage collection and verification.
//!
//! GC marks from roots (tagged images, untagged images unless pruned, images used by containers;
//! with an image's layers, every stored encoding of the same DiffID)
//! and sweeps rows first, then files: unreferenced blob rows and snapshot rows are deleted in one
//! transaction, then blob files and snapshot dirs without rows, and everything in ingest/ (GC holds
//! gc.lock exclusively, so no write is in flight and anything there is a crash's leftover).

use crate::digest::{Digest, HashReader};
use crate::store::{chain_ids, Store};
use crate::{io_err, Result};
use rusqlite::TransactionBehavior;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default)]
pub struct GcOptions {
    /// Also delete images no tag points at and no container uses (`docker image prune`).
    pub prune_dangling: bool,
    /// Wait for leases to end; otherwise return `None` at once when the store is busy.
    pub wait: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub images_removed: Vec<Digest>,
    pub blobs_removed: u64,
    pub snapshots_removed: u64,
    pub temp_removed: u64,
    pub bytes_reclaimed: u64,
}

/// Space used by kind, for `system df`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub images: u64,
    pub images_tagged: u64,
    /// Sum of image blob sizes (manifests, configs, compressed layers), shared blobs counted once.
    pub image_bytes: u64,
    /// Bytes of image blobs only dangling images use.
    pub image_reclaimable: u64,
    pub containers: u64,
    pub snapshots: u64,
    /// Snapshots some image's layers still need.
    pub snapshots_live: u64,
    pub snapshot_bytes: u64,
    pub snapshot_reclaimable: u64,
    /// Files without rows (crash leftovers) in blobs/ and ingest/.
    pub orphan_bytes: u64,
}

/// Bytes below `p`: a file's own size, a directory's entries' (links not followed).
pub fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten().map(|e| dir_size(&e.path())).sum()
}

fn remove_any(p: &Path) -> io::Result<u64> {
    let size = dir_size(p);
    let meta = fs::symlink_metadata(p)?;
    if meta.is_dir() {
        fs::remove_dir_all(p)?;
    } else {
        fs::remove_file(p)?;
    }
    Ok(size)
}

impl Store {
    /// The marked sets: blob digests and snapshot ChainIDs reachable from the roots.
    /// `image_blob(manifest, blob)` sees each image's manifest, config and layers as they are
    /// read (`usage` sums sizes from them without reading the tables again).
    fn mark(
        &self,
        tx: &rusqlite::Connection,
        mut image_blob: impl FnMut(&str, &str),
    ) -> Result<(HashSet<String>, HashSet<String>)> {
        let mut blobs = HashSet::new();
        let mut st = tx.prepare("SELECT manifest, config FROM images")?;
        for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (m, c) = r?;
            image_blob(&m, &m);
            image_blob(&m, &c);
            blobs.insert(m);
            blobs.insert(c);
        }
        let mut chains = HashSet::new();
        // The DiffIDs of live layers: every stored encoding of one lives as long as it does.
        let mut live_diffs: HashSet<String> = HashSet::new();
        let mut st = tx.prepare(
            "SELECT il.manifest, l.digest, l.diff_id FROM image_layers il JOIN layers l ON l.digest = il.layer
             ORDER BY il.manifest, il.idx",
        )?;
        let mut cur: Option<String> = None;
        let mut diffs: Vec<Digest> = Vec::new();
        let mut flush = |diffs: &mut Vec<Digest>| {
            for c in chain_ids(diffs) {
                chains.insert(c.to_string());
            }
            diffs.clear();
        };
        for r in st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })? {
            let (m, layer, diff) = r?;
            image_blob(&m, &layer);
            if cur.as_deref() != Some(&m) {
                flush(&mut diffs);
                cur = Some(m);
            }
            blobs.insert(layer);
            if let Ok(d) = diff.parse() {
                diffs.push(d);
            }
            live_diffs.insert(diff);
        }
        flush(&mut diffs);
        // The step cache: its layers and the snapshot stacks after each step stay until
        // the row goes (`kiln cache prune`).
        let mut st = tx.prepare(
            "SELECT s.layer, s.chain_id, l.diff_id FROM step_cache s
             LEFT JOIN layers l ON l.digest = s.layer",
        )?;
        for r in st.query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })? {
            let (layer, chain, diff) = r?;
            blobs.extend(layer);
            chains.extend(chain);
            live_diffs.extend(diff);
        }
        // Other encodings of a live layer (kept for export and push) live as long as it does:
        // one pass over the layers, matched in memory (an IN over a UNION of every image's
        // layers took most of a GC in a big store).
        let mut st = tx.prepare("SELECT digest, diff_id FROM layers")?;
        for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (digest, diff) = r?;
            if live_diffs.contains(&diff) {
                blobs.insert(digest);
            }
        }
        // A live snapshot needs the ones below it (step-cache chains name only the top).
        let mut st = tx.prepare("SELECT chain_id, parent FROM snapshots")?;
        let parents: std::collections::HashMap<String, Option<String>> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut todo: Vec<String> = chains.iter().cloned().collect();
        while let Some(c) = todo.pop() {
            if let Some(Some(p)) = parents.get(&c) {
                if chains.insert(p.clone()) {
                    todo.push(p.clone());
                }
            }
        }
        Ok((blobs, chains))
    }

    /// Runs GC. Returns `None` when a lease is held and `opts.wait` is false.
    pub fn gc(&self, opts: GcOptions) -> Result<Option<GcReport>> {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root().join("gc.lock"))
            .map_err(|e| io_err("open gc.lock", e))?;
        if opts.wait {
            lock.lock().map_err(|e| io_err("lock gc.lock", e))?;
        } else {
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock gc.lock", e)),
            }
        }
        let mut report = GcReport::default();

        // Rows first.
        let (live_blobs, live_snapshot_dirs) = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if opts.prune_dangling {
                let mut st = tx.prepare(
                    "SELECT manifest FROM images WHERE manifest NOT IN (SELECT manifest FROM refs)
                     AND manifest NOT IN (SELECT image FROM containers)",
                )?;
                let dangling: Vec<String> = st
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                drop(st);
                for m in dangling {
                    tx.execute("DELETE FROM images WHERE manifest = ?1", [&m])?;
                    if let Ok(d) = m.parse() {
                        report.images_removed.push(d);
                    }
                }
            }
            let (blobs, chains) = self.mark(&tx, |_, _| {})?;
            let all: Vec<String> = {
                let mut st = tx.prepare("SELECT digest FROM blobs")?;
                let v = st
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                v
            };
            for d in all.iter().filter(|d| !blobs.contains(*d)) {
                tx.execute("DELETE FROM layers WHERE digest = ?1", [d])?;
                tx.execute("DELETE FROM blobs WHERE digest = ?1", [d])?;
            }
            // A retimed layer's row goes with the last encoding of the layer it names.
            tx.execute(
                "DELETE FROM layer_times WHERE variant NOT IN (SELECT diff_id FROM layers)",
                [],
            )?;
            tx.execute(
                "DELETE FROM layer_annotations WHERE digest NOT IN (SELECT digest FROM layers)",
                [],
            )?;
            let snaps: Vec<(String, String)> = {
                let mut st = tx.prepare("SELECT chain_id, dir FROM snapshots")?;
                let v = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                v
            };
            let mut live_dirs = HashSet::new();
            for (chain, dir) in snaps {
                if chains.contains(&chain) {
                    live_dirs.insert(dir);
                } else {
                    tx.execute("DELETE FROM snapshots WHERE chain_id = ?1", [&chain])?;
                }
            }
            tx.commit()?;
            (blobs, live_dirs)
        };

        // Then files.
        let blobs_dir = self.blobs_dir();
        for e in fs::read_dir(&blobs_dir)
            .map_err(|e| io_err("list blobs", e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live_blobs.contains(&format!("sha256:{name}")) {
                report.bytes_reclaimed += remove_any(&e.path())
                    .map_err(|er| io_err(format!("remove {}", e.path().display()), er))?;
                report.blobs_removed += 1;
            }
        }
        let snap_dir = self.root().join("snapshots");
        for e in fs::read_dir(&snap_dir)
            .map_err(|e| io_err("list snapshots", e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            // A flattened snapshot of a deep chain lives while every snapshot it was made of does.
            let flat_live = name.starts_with("flat-")
                && fs::read_to_string(e.path().join("lowers"))
                    .is_ok_and(|l| l.lines().all(|d| live_snapshot_dirs.contains(d)));
            if !live_snapshot_dirs.contains(&name) && !flat_live {
                report.bytes_reclaimed += remove_any(&e.path())
                    .map_err(|er| io_err(format!("remove {}", e.path().display()), er))?;
                report.snapshots_removed += 1;
            }
        }
        for e in fs::read_dir(self.ingest_dir())
            .map_err(|e| io_err("list ingest", e))?
            .flatten()
        {
            report.bytes_reclaimed += remove_any(&e.path())
                .map_err(|er| io_err(format!("remove {}", e.path().display()), er))?;
            report.temp_removed += 1;
        }
        drop(lock);
        Ok(Some(report))
    }

    /// Space used by kind.
    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage::default();
        let db = self.db();
        u.images = db.query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))?;
        u.images_tagged = db.query_row("SELECT COUNT(DISTINCT manifest) FROM refs", [], |r| {
            r.get(0)
        })?;
        u.containers = db.query_row("SELECT COUNT(*) FROM containers", [], |r| r.get(0))?;
        // Blobs reachable from any image, and those reachable from kept (tagged or in use)
        // images: seen by the mark pass (which reads every image's blobs anyway), then summed in
        // one pass over the blobs.
        let kept_images: HashSet<String> = {
            let mut st =
                db.prepare("SELECT manifest FROM refs UNION SELECT image FROM containers")?;
            let v = st
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        let (mut used, mut kept) = (HashSet::new(), HashSet::new());
        let (_, live_chains) = self.mark(&db, |m, blob| {
            if kept_images.contains(m) {
                kept.insert(blob.to_string());
            }
            used.insert(blob.to_string());
        })?;
        let (mut rows_bytes, mut kept_bytes) = (0u64, 0u64);
        {
            let mut st = db.prepare("SELECT digest, size FROM blobs")?;
            for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
                let (d, size) = r?;
                rows_bytes += size;
                if used.contains(&d) {
                    u.image_bytes += size;
                }
                if kept.contains(&d) {
                    kept_bytes += size;
                }
            }
        }
        u.image_reclaimable = u.image_bytes - kept_bytes.min(u.image_bytes);
        let mut st = db.prepare("SELECT chain_id, size FROM snapshots")?;
        for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
            let (chain, size) = r?;
            u.snapshots += 1;
            u.snapshot_bytes += size;
            if live_chains.contains(&chain) {
                u.snapshots_live += 1;
            } else {
                u.snapshot_reclaimable += size;
            }
        }
        drop(st);
        drop(db);
        let files_bytes = dir_size(&self.blobs_dir());
        u.orphan_bytes = files_bytes.saturating_sub(rows_bytes) + dir_size(&self.ingest_dir());
        Ok(u)
    }

    /// Checks the store's invariants; returns one line per problem (empty when the store is sound).
    /// Every blob row's file exists and hashes to its digest; every image's blobs have rows;
    /// every snapshot row's directory exists; every step-cache entry's layer and snapshot are
    /// recorded; index.json lists exactly the tags.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let blobs: Vec<(String, u64)> = {
            let db = self.db();
            let mut st = db.prepare("SELECT digest, size FROM blobs ORDER BY digest")?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        for (d, size) in &blobs {
            let Ok(digest) = d.parse::<Digest>() else {
                problems.push(format!("blob row {d}: not a digest"));
                continue;
            };
            match fs::File::open(self.blob_path(&digest)) {
                Err(e) => problems.push(format!("blob {d}: {e}")),
                Ok(f) => {
                    let mut h = HashReader::new(f);
                    if let Err(e) = io::copy(&mut h, &mut io::sink()) {
                        problems.push(format!("blob {d}: read: {e}"));
                        continue;
                    }
                    let (actual, n) = h.finish();
                    if actual != digest {
                        problems.push(format!("blob {d}: content has digest {actual}"));
                    }
                    if n != *size {
                        problems.push(format!("blob {d}: {n} bytes on disk, {size} recorded"));
                    }
                }
            }
        }
        let db = self.db();
        let checks = [
            (
                "image manifest without blob row",
                "SELECT manifest FROM images WHERE manifest NOT IN (SELECT digest FROM blobs)",
            ),
            (
                "image config without blob row",
                "SELECT config FROM images WHERE config NOT IN (SELECT digest FROM blobs)",
            ),
            (
                "image layer without layer row",
                "SELECT layer FROM image_layers WHERE layer NOT IN (SELECT digest FROM layers)",
            ),
            (
                "tag pointing at a missing image",
                "SELECT name FROM refs WHERE manifest NOT IN (SELECT manifest FROM images)",
            ),
            (
                "step-cache entry without its layer row",
                "SELECT key FROM step_cache WHERE layer IS NOT NULL AND layer NOT IN (SELECT digest FROM layers)",
            ),
            (
                "step-cache entry without its snapshot",
                "SELECT key FROM step_cache WHERE layer IS NOT NULL AND chain_id NOT IN (SELECT chain_id FROM snapshots)",
            ),
        ];
        for (what, sql) in checks {
            let mut st = db.prepare(sql)?;
            for r in st.query_map([], |r| r.get::<_, String>(0))? {
                problems.push(format!("{what}: {}", r?));
            }
        }
        let mut st = db.prepare("SELECT chain_id, dir FROM snapshots")?;
        for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (chain, dir) = r?;
            if !self.root().join("snapshots").join(&dir).join("fs").is_dir() {
                problems.push(format!("snapshot {chain}: directory {dir} missing"));
            }
        }
        drop(st);
        drop(db);
        let tags: HashSet<String> = self.refs()?.into_iter().map(|(n, _)| n).collect();
        match fs::read(self.root().join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        {
            None => problems.push("index.json missing or not JSON".into()),
            Some(v) => {
                let listed: HashSet<String> = v["manifests"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| {
                                m["annotations"]["org.opencontainers.image.ref.name"]
                                    .as_str()
                                    .map(String::from)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if listed != tags {
                    problems.push(format!(
                        "index.json lists {} tags, the database {}",
                        listed.len(),
                        tags.len()
                    ));
                }
            }
        }
        Ok(problems)
    }
}
