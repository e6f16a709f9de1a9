//! The build step cache, rows in `kiln.db`, and the context stat cache's tuple (the cache itself
//! is one file per context: `statfile.rs`).
//!
//! A step-cache row maps a step key (blake3, hex) to what executing the step produced: the layer
//! (a row in `layers`, absent when the step changed nothing) and the ChainID of the snapshot stack
//! after it. `slot` names "the same step" across builds (Dockerfile, stage, step position) so a miss
//! can be explained against the nearest earlier row of that slot; `inputs` is the JSON record of
//! what formed the key, kept for that explanation and for `kiln cache inspect`.
//!
//! Rows are inserted only after the layer blob and snapshot they name are durable and recorded
//! (the store's invariant); GC keeps every step-cache layer and snapshot alive until the row goes.
//!
//! The stat cache maps a context path to its stat tuple (size, mtime ns, ctime ns,
//! inode, mode) and the blake3 of its content. A hit needs every field equal: mtime alone is never
//! trusted (a same-size edit within one mtime tick still changes ctime).

use crate::digest::Digest;
use crate::store::{now, LayerRecord, Store};
use crate::Result;
use rusqlite::{params, OptionalExtension};

/// A stat-cache row: the stat tuple and the content's blake3.
pub type StatRow = (StatTuple, [u8; 32]);

/// A step-cache row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    pub key: String,
    pub slot: String,
    pub parent: String,
    pub layer: Option<LayerRecord>,
    pub chain_id: Option<Digest>,
    pub instruction: String,
    pub inputs: String,
    pub created: i64,
    pub last_used: i64,
    pub hits: i64,
}

/// A step-cache row as `cache ls` lists it: no inputs, no layer row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepListing {
    pub key: String,
    pub instruction: String,
    pub created: i64,
    pub last_used: i64,
    pub hits: i64,
    pub layer: Option<String>,
    /// The layer's compressed size (0 without one).
    pub layer_size: u64,
}

/// A file's stat tuple, as the stat cache compares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatTuple {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub mode: u32,
}

const STEP_COLUMNS: &str =
    "s.key, s.slot, s.parent, s.chain_id, s.instruction, s.inputs, s.created, s.last_used, s.hits,
     l.digest, l.diff_id, l.media_type, l.size, l.uncompressed_size";

fn step_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StepRecord> {
    let digest = |i: usize| -> rusqlite::Result<Option<Digest>> {
        r.get::<_, Option<String>>(i)?
            .map(|s| {
                s.parse().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            })
            .transpose()
    };
    let layer = match (digest(9)?, digest(10)?) {
        (Some(d), Some(diff)) => Some(LayerRecord {
            digest: d,
            diff_id: diff,
            media_type: r.get(11)?,
            size: r.get(12)?,
            uncompressed_size: r.get(13)?,
        }),
        _ => None,
    };
    Ok(StepRecord {
        key: r.get(0)?,
        slot: r.get(1)?,
        parent: r.get(2)?,
        layer,
        chain_id: digest(3)?,
        instruction: r.get(4)?,
        inputs: r.get(5)?,
        created: r.get(6)?,
        last_used: r.get(7)?,
        hits: r.get(8)?,
    })
}

/// The build step cache (`store.steps()`).
pub struct StepCache<'s> {
    store: &'s Store,
}

impl Store {
    /// The build step cache.
    pub fn steps(&self) -> StepCache<'_> {
        StepCache { store: self }
    }

    /// The context stat cache.
    pub fn stat_cache(&self) -> crate::statfile::StatCache<'_> {
        crate::statfile::StatCache { store: self }
    }
}

impl StepCache<'_> {
    /// The step-cache row for `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<StepRecord>> {
        let db = self.store.db();
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM step_cache s LEFT JOIN layers l ON l.digest = s.layer WHERE s.key = ?1"
        );
        Ok(db.query_row(&sql, [key], step_row).optional()?)
    }

    /// The row of `slot` other than `key` to explain a miss against: one with the same `parent`
    /// if any (then only the step's own inputs differ), else the most recently used.
    pub fn previous(&self, slot: &str, key: &str, parent: &str) -> Result<Option<StepRecord>> {
        let db = self.store.db();
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM step_cache s LEFT JOIN layers l ON l.digest = s.layer
             WHERE s.slot = ?1 AND s.key != ?2
             ORDER BY s.parent = ?3 DESC, s.last_used DESC, s.created DESC, s.rowid DESC LIMIT 1"
        );
        Ok(db
            .query_row(&sql, [slot, key, parent], step_row)
            .optional()?)
    }

    /// Every step-cache row, most recently used first.
    /// Every row, most recently used first, for listing: one indexed scan of the table.
    pub fn list(&self) -> Result<Vec<StepListing>> {
        let db = self.store.db();
        let mut st = db.prepare(
            "SELECT key, instruction, created, last_used, hits, layer, layer_size FROM step_cache
             ORDER BY last_used DESC, key",
        )?;
        let rows = st.query_map([], |r| {
            Ok(StepListing {
                key: r.get(0)?,
                instruction: r.get(1)?,
                created: r.get(2)?,
                last_used: r.get(3)?,
                hits: r.get(4)?,
                layer: r.get(5)?,
                layer_size: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn all(&self) -> Result<Vec<StepRecord>> {
        let db = self.store.db();
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM step_cache s LEFT JOIN layers l ON l.digest = s.layer
             ORDER BY s.last_used DESC, s.key"
        );
        let mut st = db.prepare(&sql)?;
        let rows = st.query_map([], step_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a step's result. Its layer (if any) must already be a recorded layer and its
    /// snapshot committed. An existing row for the key (a concurrent build) is kept.
    pub fn record(&self, rec: &StepRecord) -> Result<()> {
        if let Some(l) = &rec.layer {
            self.store.record_layer(l)?;
        }
        let db = self.store.db();
        db.execute(
            "INSERT OR IGNORE INTO step_cache(key, slot, parent, layer, chain_id, instruction, inputs, created, last_used, hits, layer_size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10)",
            params![
                rec.key,
                rec.slot,
                rec.parent,
                rec.layer.as_ref().map(|l| l.digest.to_string()),
                rec.chain_id.map(|c| c.to_string()),
                rec.instruction,
                rec.inputs,
                rec.created,
                rec.last_used,
                rec.layer.as_ref().map_or(0, |l| l.size)
            ],
        )?;
        Ok(())
    }

    /// Counts cache hits (one transaction for all of a build's).
    pub fn touch(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut db = self.store.db();
        let tx = db.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE step_cache SET hits = hits + 1, last_used = ?2 WHERE key = ?1",
            )?;
            let now = now();
            for k in keys {
                st.execute(params![k, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl StepCache<'_> {
    /// Deletes step-cache rows (their files go with the next GC); returns how many went.
    pub fn delete(&self, keys: &[String]) -> Result<usize> {
        let mut db = self.store.db();
        let tx = db.transaction()?;
        let mut n = 0;
        {
            let mut st = tx.prepare_cached("DELETE FROM step_cache WHERE key = ?1")?;
            for k in keys {
                n += st.execute([k])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }
}

impl Store {
    /// The images (manifest digests) whose layers include the blob `layer`.
    /// The step-cache layers some image also uses (in any encoding of the same DiffID), in one
    /// query.
    pub fn step_layers_used_by_images(&self) -> Result<std::collections::HashSet<String>> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT DISTINCT s.layer FROM step_cache s JOIN layers l ON l.digest = s.layer
             WHERE EXISTS (SELECT 1 FROM layers v JOIN image_layers il ON il.layer = v.digest
                           WHERE v.diff_id = l.diff_id)",
        )?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn images_using_layer(&self, layer: &Digest) -> Result<Vec<Digest>> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT DISTINCT il.manifest FROM image_layers il JOIN layers l ON l.digest = il.layer
             WHERE l.diff_id = (SELECT diff_id FROM layers WHERE digest = ?1) ORDER BY il.manifest",
        )?;
        let rows = st.query_map([layer.to_string()], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(d) = r?.parse() {
                out.push(d);
            }
        }
        Ok(out)
    }
}
