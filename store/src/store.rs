//! The store: an OCI image layout plus a SQLite index, under one root directory.
//!
//! ```text
//! <root>/oci-layout, index.json   OCI image layout; index.json lists every tag, regenerated from
//!                                  the database under index.lock, written atomically
//! <root>/kiln-version             the store format version (this kiln writes and reads "1")
//! <root>/blobs/sha256/<hex>       manifests, configs, compressed layers
//! <root>/snapshots/<dir>/fs       unpacked layers (overlay lower dirs), found by ChainID in the db
//! <root>/ingest/                  temp files and dirs of writes in progress (same filesystem)
//! <root>/kiln.db                  SQLite (WAL), schema version in PRAGMA user_version
//! <root>/kiln.lock                held exclusively while the store is created or migrated
//! <root>/gc.lock                  shared by leases (in-flight writes), exclusive for GC
//! ```
//!
//! Invariants: a row is inserted only after the file it names is durable, and deleted before the
//! file is removed, so no crash leaves a row pointing at a missing or partial file. Files without
//! rows are garbage that GC removes, and GC runs only while no lease is held.

use crate::blob::{sync_dir, Ingest};
use crate::digest::Digest;
use crate::{io_err, Error, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The store format version in `<root>/kiln-version`.
pub const STORE_VERSION: u32 = 1;

pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Append-only schema migrations; entry i takes the schema from version i to i+1.
const MIGRATIONS: &[&str] = &[
    // 1: blobs, layers, images, refs, snapshots, containers.
    "CREATE TABLE blobs(
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        media_type TEXT NOT NULL,
        created INTEGER NOT NULL
     );
     CREATE TABLE layers(
        digest TEXT PRIMARY KEY REFERENCES blobs(digest),
        diff_id TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        uncompressed_size INTEGER NOT NULL
     );
     CREATE INDEX layers_diff_id ON layers(diff_id);
     CREATE TABLE images(
        manifest TEXT PRIMARY KEY REFERENCES blobs(digest),
        config TEXT NOT NULL REFERENCES blobs(digest),
        media_type TEXT NOT NULL,
        created INTEGER,
        added INTEGER NOT NULL
     );
     CREATE TABLE image_layers(
        manifest TEXT NOT NULL REFERENCES images(manifest) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        layer TEXT NOT NULL REFERENCES layers(digest),
        PRIMARY KEY(manifest, idx)
     );
     CREATE TABLE refs(
        name TEXT PRIMARY KEY,
        manifest TEXT NOT NULL REFERENCES images(manifest),
        updated INTEGER NOT NULL
     );
     CREATE INDEX refs_manifest ON refs(manifest);
     CREATE TABLE snapshots(
        chain_id TEXT PRIMARY KEY,
        dir TEXT NOT NULL UNIQUE,
        parent TEXT,
        diff_id TEXT NOT NULL,
        size INTEGER NOT NULL,
        created INTEGER NOT NULL,
        last_used INTEGER NOT NULL
     );
     CREATE TABLE containers(
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        image TEXT NOT NULL REFERENCES images(manifest),
        image_ref TEXT NOT NULL,
        created INTEGER NOT NULL,
        state TEXT NOT NULL
     );",
    // 2: the build step cache and the context stat cache.
    "CREATE TABLE step_cache(
        key TEXT PRIMARY KEY,
        slot TEXT NOT NULL,
        parent TEXT NOT NULL,
        layer TEXT REFERENCES layers(digest),
        chain_id TEXT,
        instruction TEXT NOT NULL,
        inputs TEXT NOT NULL,
        created INTEGER NOT NULL,
        last_used INTEGER NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX step_cache_slot ON step_cache(slot, created);
     CREATE TABLE stat_cache(
        path BLOB PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        mode INTEGER NOT NULL,
        hash BLOB NOT NULL
     );",
    // 3: what the runner needs to know of a container.
    "ALTER TABLE containers ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';
     ALTER TABLE containers ADD COLUMN pid INTEGER;
     ALTER TABLE containers ADD COLUMN exit_code INTEGER;
     ALTER TABLE containers ADD COLUMN started INTEGER;
     ALTER TABLE containers ADD COLUMN finished INTEGER;",
];

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A layer blob the store knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRecord {
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
    pub uncompressed_size: u64,
}

/// A blob reference with its media type and size, as an OCI descriptor names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// An image to record: its manifest and config blobs (already in the store) and its layers.
#[derive(Clone, Debug)]
pub struct NewImage {
    pub manifest: BlobRef,
    pub config: BlobRef,
    pub layers: Vec<LayerRecord>,
    /// The config's `created`, as Unix seconds.
    pub created: Option<i64>,
}

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    pub manifest: BlobRef,
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    pub created: Option<i64>,
    /// When this store first recorded the image.
    pub added: i64,
}

impl ImageRecord {
    /// The image ID, as Docker defines it: the config digest.
    pub fn id(&self) -> Digest {
        self.config
    }
    /// Unpacked size: the sum of the layers' uncompressed sizes (what `docker images` shows).
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.uncompressed_size).sum()
    }
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id).collect()
    }
}

/// An unpacked layer on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub chain_id: Digest,
    pub dir: String,
    pub parent: Option<Digest>,
    pub diff_id: Digest,
    pub size: u64,
    pub created: i64,
    pub last_used: i64,
}

/// A container's record (the runner extends this; the store needs it to know what images are in use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub image: Digest,
    pub image_ref: String,
    pub created: i64,
    pub state: String,
}

/// The ChainIDs of a layer stack (image-spec config.md, "Layer ChainID"):
/// ChainID(L0) = DiffID(L0); ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln)).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => *d,
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Holds the store's GC lock shared: while any lease lives, GC waits, so blobs and snapshots
/// written but not yet recorded are safe. Dropping it releases the lock.
pub struct Lease {
    _file: File,
}

/// The content-addressed store. Shareable across threads; several processes may open the same root.
pub struct Store {
    root: PathBuf,
    db: Mutex<Connection>,
}

fn parse_digest(s: String) -> rusqlite::Result<Digest> {
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err(format!("open lock {}", path.display()), e))
}

/// Marks `dir` as the top of a directory hierarchy for ext2/3/4 (`chattr +T`, FS_TOPDIR_FL),
/// so the directories made in it (each snapshot tree) are spread over block groups by the
/// Orlov allocator instead of all going to the parent's group. Without it, creating a tree's
/// files in a group where many inodes were freed in the last minutes is slow: ext4 skips every
/// recently freed inode on each create, and a 5,000-file COPY took 1.3 s instead of 0.18 s
/// after other tools deleted trees nearby. Best effort: other filesystems ignore or refuse it.
pub fn set_topdir(dir: &Path) {
    use std::os::fd::AsRawFd;
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(f) = File::open(dir) else { return };
    // The kernel reads and writes an int, whatever the ioctl number says.
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int through the pointer.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0
            || flags & FS_TOPDIR_FL != 0
        {
            return;
        }
        flags |= FS_TOPDIR_FL;
        libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
    }
}

impl Store {
    /// Opens the store at `root`, creating it (or migrating it) if needed.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        for d in ["blobs/sha256", "snapshots", "ingest"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| io_err(format!("create {}", p.display()), e))?;
        }
        // Snapshot trees are made under ingest/ and renamed into snapshots/.
        set_topdir(&root.join("ingest"));
        set_topdir(&root.join("snapshots"));
        let lock = open_lock(&root.join("kiln.lock"))?;
        lock.lock().map_err(|e| io_err("lock kiln.lock", e))?;

        let version_file = root.join("kiln-version");
        match fs::read_to_string(&version_file) {
            Ok(s) => {
                let found: u32 = s.trim().parse().map_err(|_| Error::Corrupt {
                    what: version_file.display().to_string(),
                    why: format!("not a version number: {:?}", s.trim()),
                })?;
                if found > STORE_VERSION {
                    return Err(Error::TooNew {
                        root: root.clone(),
                        found,
                        known: STORE_VERSION,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(
                    &root,
                    &version_file,
                    format!("{STORE_VERSION}\n").as_bytes(),
                )?;
            }
            Err(e) => return Err(io_err(format!("read {}", version_file.display()), e)),
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&root, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }

        let conn = Connection::open(root.join("kiln.db"))?;
        conn.busy_timeout(Duration::from_secs(60))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Closing would checkpoint the WAL (two fsyncs) on every command; the automatic
        // checkpoint at 1,000 WAL pages does that work when there is some.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        migrate(&conn, &root)?;
        let store = Store {
            root,
            db: Mutex::new(conn),
        };
        if !store.root.join("index.json").exists() {
            store.write_index()?;
        }
        drop(lock);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    pub fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    /// Starts writing a blob.
    pub fn ingest(&self) -> Result<Ingest> {
        Ingest::new(&self.ingest_dir(), self.blobs_dir(), true)
    }

    /// Starts writing a blob through a writer that computes its digest itself (a
    /// `LayerEncoder`): `commit(Some(digest))` takes that digest instead of hashing again.
    pub fn ingest_prehashed(&self) -> Result<Ingest> {
        Ingest::new(&self.ingest_dir(), self.blobs_dir(), false)
    }

    /// Writes a small blob in one call.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<Digest>) -> Result<Digest> {
        let d = Digest::of(bytes);
        if let Some(e) = expected {
            if e != d {
                return Err(Error::DigestMismatch {
                    expected: e,
                    actual: d,
                });
            }
        }
        // Already stored (a rebuild writing the same manifest): nothing to write or fsync.
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.ingest()?;
        w.write_all(bytes).map_err(|e| io_err("write blob", e))?;
        Ok(w.commit(expected)?.0)
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("blob {d}")),
            _ => io_err(format!("open {}", p.display()), e),
        })
    }

    /// Reads a (small) blob whole and checks it against its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("blob {d}")),
            _ => io_err(format!("read {}", p.display()), e),
        })?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(Error::DigestMismatch {
                expected: *d,
                actual,
            });
        }
        Ok(bytes)
    }

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
        {
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
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO images(manifest, config, media_type, created, added) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![m, img.config.digest.to_string(), img.manifest.media_type, img.created, now],
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
            tx.commit()?;
        }
        if !tags.is_empty() {
            self.write_index()?;
        }
        Ok(())
    }

    /// Points `name` at an image already in the store; returns what it pointed at before.
    pub fn set_ref(&self, name: &str, manifest: &Digest) -> Result<Option<Digest>> {
        let prev = {
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
            tx.commit()?;
            prev.map(parse_digest).transpose()?
        };
        self.write_index()?;
        Ok(prev)
    }

    /// Removes the tag `name`; returns what it pointed at.
    pub fn remove_ref(&self, name: &str) -> Result<Option<Digest>> {
        let prev = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let prev = tx
                .query_row("SELECT manifest FROM refs WHERE name = ?1", [name], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?;
            tx.execute("DELETE FROM refs WHERE name = ?1", [name])?;
            tx.commit()?;
            prev.map(parse_digest).transpose()?
        };
        if prev.is_some() {
            self.write_index()?;
        }
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
    pub fn layer_variant(&self, diff_id: &Digest, media_type: &str) -> Result<Option<LayerRecord>> {
        let db = self.db();
        Ok(db
            .query_row(
                "SELECT digest, diff_id, media_type, size, uncompressed_size FROM layers
                 WHERE diff_id = ?1 AND media_type = ?2 ORDER BY digest LIMIT 1",
                params![diff_id.to_string(), media_type],
                layer_row,
            )
            .optional()?)
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

    /// Records a container (the runner's state; here so the store knows which images are in use).
    pub fn add_container(&self, c: &ContainerRecord) -> Result<()> {
        let db = self.db();
        db.execute(
            "INSERT INTO containers(id, name, image, image_ref, created, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![c.id, c.name, c.image.to_string(), c.image_ref, c.created, c.state],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                Error::AlreadyExists(format!("container {} ({})", c.name, c.id))
            }
            e => e.into(),
        })?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<bool> {
        let db = self.db();
        Ok(db.execute("DELETE FROM containers WHERE id = ?1", [id])? > 0)
    }

    /// The containers (id, name) that use an image.
    pub fn containers_using(&self, manifest: &Digest) -> Result<Vec<(String, String)>> {
        let db = self.db();
        let mut st =
            db.prepare_cached("SELECT id, name FROM containers WHERE image = ?1 ORDER BY created")?;
        let rows = st.query_map([manifest.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Regenerates index.json from the refs table: one descriptor per tag, sorted by name, each
    /// annotated with its full reference. Serialized by index.lock so the last writer has read
    /// the latest refs.
    pub fn write_index(&self) -> Result<()> {
        let lock = open_lock(&self.root.join("index.lock"))?;
        lock.lock().map_err(|e| io_err("lock index.lock", e))?;
        let entries: Vec<(String, String, String, u64)> = {
            let db = self.db();
            let mut st = db.prepare_cached(
                "SELECT r.name, i.manifest, i.media_type, b.size FROM refs r
                 JOIN images i ON i.manifest = r.manifest JOIN blobs b ON b.digest = i.manifest
                 ORDER BY r.name",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let manifests: Vec<serde_json::Value> = entries
            .into_iter()
            .map(|(name, digest, mt, size)| {
                serde_json::json!({
                    "mediaType": mt,
                    "digest": digest,
                    "size": size,
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name,
                    }
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
        write_atomic(&self.ingest_dir(), &self.root.join("index.json"), &bytes)
    }
}

fn layer_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LayerRecord> {
    Ok(LayerRecord {
        digest: parse_digest(r.get(0)?)?,
        diff_id: parse_digest(r.get(1)?)?,
        media_type: r.get(2)?,
        size: r.get(3)?,
        uncompressed_size: r.get(4)?,
    })
}

fn snapshot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        chain_id: parse_digest(r.get(0)?)?,
        dir: r.get(1)?,
        parent: r
            .get::<_, Option<String>>(2)?
            .map(parse_digest)
            .transpose()?,
        diff_id: parse_digest(r.get(3)?)?,
        size: r.get(4)?,
        created: r.get(5)?,
        last_used: r.get(6)?,
    })
}

/// Writes `dest` atomically: a temp file in `tmp_dir` (same filesystem), fsync, rename, fsync dir.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut t = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(tmp_dir)
        .map_err(|e| io_err(format!("create temp file in {}", tmp_dir.display()), e))?;
    t.write_all(bytes)
        .map_err(|e| io_err("write temp file", e))?;
    t.as_file()
        .sync_all()
        .map_err(|e| io_err("fsync temp file", e))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o644))
        .map_err(|e| io_err("chmod", e))?;
    t.persist(dest)
        .map_err(|e| io_err(format!("rename into {}", dest.display()), e.error))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn migrate(conn: &Connection, root: &Path) -> Result<()> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version as usize > MIGRATIONS.len() {
        return Err(Error::TooNew {
            root: root.to_path_buf(),
            found: version,
            known: MIGRATIONS.len() as u32,
        });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(m)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(())
}

/// The schema version this kiln writes.
pub fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}
