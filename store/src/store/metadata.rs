//! Metadata: leases, images, refs (and the OCI index.json they make), layers and snapshots.

use super::index::RefChange;
use super::*;
use crate::codec::Compression;
use std::collections::{BTreeMap, HashMap};

impl Store {
    /// Takes a lease: GC will not run until it is dropped.
    pub fn lease(&self) -> Result<Lease> {
        let f = open_lock(&self.root.join("gc.lock"))?;
        f.lock_shared().map_err(|e| io_err("lock gc.lock", e))?;
        Ok(Lease { _file: f })
    }

    /// Records an image whose blobs are all in the store, and points `tags` at it, in one
    /// transaction; then regenerates index.json.
    pub fn commit_image(&self, img: &NewImage, tags: &[String]) -> Result<()> {
        for b in [&img.manifest.digest, &img.config.digest]
            .into_iter()
            .chain(img.layers.iter().map(|l| &l.digest))
        {
            if !self.has_blob(b) {
                return Err(Error::NotFound(format!(
                    "blob {b} (needed by image {})",
                    img.manifest.digest
                )));
            }
        }
        let now = now();
        let index = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut blob = tx.prepare_cached(
                "INSERT OR IGNORE INTO blobs(digest, size, media_type, created) VALUES (?1, ?2, ?3, ?4)",
            )?;
            blob.execute(params![
                img.manifest.digest.to_string(),
                img.manifest.size,
                img.manifest.media_type,
                now
            ])?;
            blob.execute(params![
                img.config.digest.to_string(),
                img.config.size,
                img.config.media_type,
                now
            ])?;
            for l in &img.layers {
                blob.execute(params![l.digest.to_string(), l.size, l.media_type, now])?;
                tx.execute(
                    "INSERT OR IGNORE INTO layers(digest, diff_id, media_type, size, uncompressed_size)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![l.digest.to_string(), l.diff_id.to_string(), l.media_type, l.size, l.uncompressed_size],
                )?;
            }
            drop(blob);
            let m = img.manifest.digest.to_string();
            let size: u64 = img.layers.iter().map(|l| l.uncompressed_size).sum();
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO images(manifest, config, media_type, created, added, size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    m,
                    img.config.digest.to_string(),
                    img.manifest.media_type,
                    img.created,
                    now,
                    size
                ],
            )?;
            if inserted > 0 {
                for (i, l) in img.layers.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO image_layers(manifest, idx, layer) VALUES (?1, ?2, ?3)",
                        params![m, i as i64, l.digest.to_string()],
                    )?;
                }
            }
            for t in tags {
                tx.execute(
                    "INSERT OR REPLACE INTO refs(name, manifest, updated) VALUES (?1, ?2, ?3)",
                    params![t, m, now],
                )?;
            }
            let index = if tags.is_empty() {
                None
            } else {
                let version = Self::bump_refs_version(&tx)?;
                let changes: Vec<RefChange> = tags
                    .iter()
                    .map(|t| {
                        Ok(RefChange {
                            name: t.clone(),
                            target: Some(Self::index_target(&tx, &m)?),
                        })
                    })
                    .collect::<Result<_>>()?;
                Some((version, changes))
            };
            tx.commit()?;
            index
        };
        if let Some((version, changes)) = index {
            self.update_index(version, &changes)?;
        }
        Ok(())
    }

    /// Points `name` at an image already in the store; returns what it pointed at before.
    pub fn set_ref(&self, name: &str, manifest: &Digest) -> Result<Option<Digest>> {
        let (prev, version, change) = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let prev = tx
                .query_row("SELECT manifest FROM refs WHERE name = ?1", [name], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?;
            let exists: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM images WHERE manifest = ?1)",
                [manifest.to_string()],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(Error::NotFound(format!("image {manifest}")));
            }
            // Already so (a rebuild that changed nothing): no write, no index rewrite.
            if prev.as_deref() == Some(manifest.to_string().as_str()) {
                return Ok(Some(*manifest));
            }
            tx.execute(
                "INSERT OR REPLACE INTO refs(name, manifest, updated) VALUES (?1, ?2, ?3)",
                params![name, manifest.to_string(), now()],
            )?;
            let version = Self::bump_refs_version(&tx)?;
            let target = Self::index_target(&tx, &manifest.to_string())?;
            tx.commit()?;
            let change = RefChange {
                name: name.to_string(),
                target: Some(target),
            };
            (prev.map(parse_digest).transpose()?, version, change)
        };
        self.update_index(version, &[change])?;
        Ok(prev)
    }

    /// Removes the tag `name`; returns what it pointed at.
    pub fn remove_ref(&self, name: &str) -> Result<Option<Digest>> {
        let (prev, version) = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let prev = tx
                .query_row("SELECT manifest FROM refs WHERE name = ?1", [name], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?;
            if prev.is_none() {
                return Ok(None);
            }
            tx.execute("DELETE FROM refs WHERE name = ?1", [name])?;
            let version = Self::bump_refs_version(&tx)?;
            tx.commit()?;
            (prev.map(parse_digest).transpose()?, version)
        };
        let change = RefChange {
            name: name.to_string(),
            target: None,
        };
        self.update_index(version, &[change])?;
        Ok(prev)
    }

    /// The image a tag points at.
    pub fn resolve_ref(&self, name: &str) -> Result<Option<Digest>> {
        let db = self.db();
        let m = db
            .query_row("SELECT manifest FROM refs WHERE name = ?1", [name], |r| {
                r.get::<_, String>(0)
            })
            .optional()?;
        Ok(m.map(parse_digest).transpose()?)
    }

    /// Every tag, sorted by name.
    pub fn refs(&self) -> Result<Vec<(String, Digest)>> {
        let db = self.db();
        let mut st = db.prepare_cached("SELECT name, manifest FROM refs ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, parse_digest(r.get(1)?)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The tags pointing at an image, sorted.
    /// How many tags point at `manifest`, counting no further than `limit` (an image can have
    /// thousands, and `rmi` only asks whether there is more than one).
    pub fn ref_count_up_to(&self, manifest: &Digest, limit: usize) -> Result<usize> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM refs WHERE manifest = ?1 LIMIT ?2)",
        )?;
        Ok(
            st.query_row(params![manifest.to_string(), limit as i64], |r| {
                r.get::<_, i64>(0)
            })? as usize,
        )
    }

    pub fn refs_of(&self, manifest: &Digest) -> Result<Vec<String>> {
        let db = self.db();
        let mut st =
            db.prepare_cached("SELECT name FROM refs WHERE manifest = ?1 ORDER BY name")?;
        let rows = st.query_map([manifest.to_string()], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn load_images(&self, filter: Option<&Digest>) -> Result<Vec<ImageRecord>> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT i.manifest, i.config, i.media_type, i.created, i.added, b.size
             FROM images i JOIN blobs b ON b.digest = i.manifest
             WHERE ?1 IS NULL OR i.manifest = ?1 ORDER BY i.added DESC, i.manifest",
        )?;
        let heads = st
            .query_map([filter.map(|d| d.to_string())], |r| {
                Ok((
                    parse_digest(r.get(0)?)?,
                    parse_digest(r.get(1)?)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, u64>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut ls = db.prepare_cached(
            "SELECT l.digest, l.diff_id, l.media_type, l.size, l.uncompressed_size
             FROM image_layers il JOIN layers l ON l.digest = il.layer
             WHERE il.manifest = ?1 ORDER BY il.idx",
        )?;
        let mut out = Vec::with_capacity(heads.len());
        for (manifest, config, media_type, created, added, msize) in heads {
            let layers = ls
                .query_map([manifest.to_string()], layer_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            out.push(ImageRecord {
                manifest: BlobRef {
                    digest: manifest,
                    media_type,
                    size: msize,
                },
                config,
                layers,
                created,
                added,
            });
        }
        Ok(out)
    }

    /// Every image, newest first.
    /// Every image with its size and tags, newest first: what `images` lists, in two queries.
    pub fn image_list(&self) -> Result<Vec<ImageSummary>> {
        let db = self.db();
        let mut tags: HashMap<String, Vec<String>> = HashMap::new();
        let mut st = db.prepare_cached("SELECT manifest, name FROM refs ORDER BY name")?;
        for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (m, name) = r?;
            tags.entry(m).or_default().push(name);
        }
        let mut st = db.prepare_cached(
            "SELECT manifest, config, created, size FROM images ORDER BY added DESC, manifest",
        )?;
        let rows = st.query_map([], |r| {
            let m: String = r.get(0)?;
            Ok(ImageSummary {
                tags: tags.remove(&m).unwrap_or_default(),
                manifest: parse_digest(m)?,
                config: parse_digest(r.get(1)?)?,
                created: r.get(2)?,
                size: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        self.load_images(None)
    }

    pub fn image(&self, manifest: &Digest) -> Result<Option<ImageRecord>> {
        Ok(self.load_images(Some(manifest))?.pop())
    }

    /// Deletes an image's record (not its blobs: GC removes those once nothing else uses them).
    /// Fails while tags point at it or containers use it.
    pub fn delete_image(&self, manifest: &Digest) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let m = manifest.to_string();
        let tags: i64 =
            tx.query_row("SELECT COUNT(*) FROM refs WHERE manifest = ?1", [&m], |r| {
                r.get(0)
            })?;
        let users: i64 = tx.query_row(
            "SELECT COUNT(*) FROM containers WHERE image = ?1",
            [&m],
            |r| r.get(0),
        )?;
        if tags > 0 || users > 0 {
            return Err(Error::InUse(format!(
                "image {manifest} ({tags} tags, {users} containers)"
            )));
        }
        tx.execute("DELETE FROM images WHERE manifest = ?1", [&m])?;
        tx.commit()?;
        Ok(())
    }

    /// A layer record by blob digest.
    pub fn layer(&self, digest: &Digest) -> Result<Option<LayerRecord>> {
        let db = self.db();
        Ok(db
            .query_row(
                "SELECT digest, diff_id, media_type, size, uncompressed_size FROM layers WHERE digest = ?1",
                [digest.to_string()],
                layer_row,
            )
            .optional()?)
    }

    /// Records a layer blob already in the store (another encoding of a known DiffID, say).
    pub fn record_layer(&self, l: &LayerRecord) -> Result<()> {
        if !self.has_blob(&l.digest) {
            return Err(Error::NotFound(format!("blob {}", l.digest)));
        }
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR IGNORE INTO blobs(digest, size, media_type, created) VALUES (?1, ?2, ?3, ?4)",
            params![l.digest.to_string(), l.size, l.media_type, now()],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO layers(digest, diff_id, media_type, size, uncompressed_size) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![l.digest.to_string(), l.diff_id.to_string(), l.media_type, l.size, l.uncompressed_size],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A stored encoding of the layer with this DiffID and media type, if any.
    /// A stored encoding of the layer with this DiffID in compression `c` (zstd:chunked and
    /// plain zstd share a media type; the blob's footer tells them apart).
    pub fn layer_variant(&self, diff_id: &Digest, c: Compression) -> Result<Option<LayerRecord>> {
        let rows: Vec<LayerRecord> = {
            let db = self.db();
            let mut st = db.prepare_cached(
                "SELECT digest, diff_id, media_type, size, uncompressed_size FROM layers
                 WHERE diff_id = ?1 AND media_type = ?2 ORDER BY digest",
            )?;
            let rows = st.query_map(params![diff_id.to_string(), c.media_type()], layer_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for l in rows {
            if self.layer_compression(&l)? == Some(c) {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// A stored encoding of layer `diff_id` with its times rewritten in mode `times`, when that
    /// layer was made and is still stored.
    pub fn retimed_layer(&self, diff_id: &Digest, times: &str) -> Result<Option<LayerRecord>> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT l.digest, l.diff_id, l.media_type, l.size, l.uncompressed_size
             FROM layer_times t JOIN layers l ON l.diff_id = t.variant
             WHERE t.diff_id = ?1 AND t.times = ?2 ORDER BY l.digest LIMIT 1",
        )?;
        Ok(st
            .query_row(params![diff_id.to_string(), times], layer_row)
            .optional()?)
    }

    /// Records that layer `diff_id` in timestamp mode `times` is layer `variant` (recorded
    /// first, so a row never names a layer that was not stored).
    pub fn record_retimed_layer(
        &self,
        diff_id: &Digest,
        times: &str,
        variant: &Digest,
    ) -> Result<()> {
        self.db().execute(
            "INSERT OR REPLACE INTO layer_times(diff_id, times, variant) VALUES (?1, ?2, ?3)",
            params![diff_id.to_string(), times, variant.to_string()],
        )?;
        Ok(())
    }

    /// Every stored layer in compression family `c` (zstd:chunked and plain zstd are one).
    pub fn layers_of(&self, c: Compression) -> Result<Vec<LayerRecord>> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT digest, diff_id, media_type, size, uncompressed_size FROM layers
             WHERE media_type = ?1 ORDER BY digest",
        )?;
        let rows = st.query_map([c.media_type()], layer_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How a stored layer is encoded: its media type's compression, and for zstd whether the
    /// blob is zstd:chunked.
    pub fn layer_compression(&self, l: &LayerRecord) -> Result<Option<Compression>> {
        let c = Compression::from_media_type(&l.media_type);
        if c != Some(Compression::Zstd) {
            return Ok(c);
        }
        let f = self.open_blob(&l.digest)?;
        let chunked = crate::chunked::toc::Footer::read(&f, l.size)
            .map_err(|e| io_err(format!("read layer {}", l.digest), e))?
            .is_some();
        Ok(Some(if chunked {
            Compression::ZstdChunked
        } else {
            Compression::Zstd
        }))
    }

    /// The annotations a manifest gives this layer: zstd:chunked's four, or none.
    pub fn layer_annotations(&self, l: &LayerRecord) -> Result<BTreeMap<String, String>> {
        if Compression::from_media_type(&l.media_type) != Some(Compression::Zstd) {
            return Ok(BTreeMap::new());
        }
        // Read from the blob's end once (the TOC is megabytes for a big layer), then kept.
        let key = l.digest.to_string();
        let kept: Option<String> = self
            .db()
            .query_row(
                "SELECT json FROM layer_annotations WHERE digest = ?1",
                [&key],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(a) = kept.and_then(|j| serde_json::from_str(&j).ok()) {
            return Ok(a);
        }
        let f = self.open_blob(&l.digest)?;
        let meta = crate::chunked::toc::Metadata::read(&f, l.size)
            .map_err(|e| io_err(format!("read layer {}", l.digest), e))?;
        let a = meta.map(|m| m.annotations()).unwrap_or_default();
        self.db().execute(
            "INSERT OR REPLACE INTO layer_annotations(digest, json) VALUES (?1, ?2)",
            params![
                key,
                serde_json::to_string(&a).expect("annotations serialize")
            ],
        )?;
        Ok(a)
    }

    pub fn snapshot(&self, chain_id: &Digest) -> Result<Option<SnapshotRecord>> {
        let db = self.db();
        Ok(db
            .query_row(
                "SELECT chain_id, dir, parent, diff_id, size, created, last_used FROM snapshots WHERE chain_id = ?1",
                [chain_id.to_string()],
                snapshot_row,
            )
            .optional()?)
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let db = self.db();
        let mut st = db.prepare_cached(
            "SELECT chain_id, dir, parent, diff_id, size, created, last_used FROM snapshots ORDER BY chain_id",
        )?;
        let rows = st.query_map([], snapshot_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The filesystem directory of a snapshot (what overlay uses as a lower dir).
    pub fn snapshot_fs(&self, s: &SnapshotRecord) -> PathBuf {
        self.root.join("snapshots").join(&s.dir).join("fs")
    }

    /// A new empty directory under ingest/ to unpack a snapshot into; pass it to `commit_snapshot`.
    /// Dropping the returned TempDir without committing removes it.
    pub fn prepare_snapshot_dir(&self) -> Result<tempfile::TempDir> {
        let d = tempfile::Builder::new()
            .prefix("snap-")
            .tempdir_in(self.ingest_dir())
            .map_err(|e| io_err("create snapshot temp dir", e))?;
        fs::create_dir(d.path().join("fs")).map_err(|e| io_err("create snapshot fs dir", e))?;
        Ok(d)
    }

    /// Moves an unpacked snapshot into place and records it. If another process recorded the
    /// same ChainID first, this one's copy is dropped and the recorded one returned.
    pub fn commit_snapshot(
        &self,
        dir: tempfile::TempDir,
        chain_id: Digest,
        parent: Option<Digest>,
        diff_id: Digest,
        size: u64,
    ) -> Result<SnapshotRecord> {
        if let Some(existing) = self.snapshot(&chain_id)? {
            return Ok(existing);
        }
        let tmp = dir.keep();
        let name = tmp
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("snap")
            .trim_start_matches("snap-")
            .to_string();
        let name = format!("{}-{}", &chain_id.hex()[..16], name);
        let dest = self.root.join("snapshots").join(&name);
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err(format!("move snapshot into {}", dest.display()), e));
        }
        sync_dir(&self.root.join("snapshots"))?;
        let now = now();
        let rec = SnapshotRecord {
            chain_id,
            dir: name,
            parent,
            diff_id,
            size,
            created: now,
            last_used: now,
        };
        let inserted = {
            let db = self.db();
            db.execute(
                "INSERT OR IGNORE INTO snapshots(chain_id, dir, parent, diff_id, size, created, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    chain_id.to_string(),
                    rec.dir,
                    parent.map(|p| p.to_string()),
                    diff_id.to_string(),
                    size,
                    now,
                    now
                ],
            )?
        };
        if inserted == 0 {
            let _ = fs::remove_dir_all(&dest);
            return self
                .snapshot(&chain_id)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {chain_id}")));
        }
        Ok(rec)
    }
}
