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

mod content;
mod index;
mod metadata;

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
    // 4: networks, and each container's address on them (IPAM).
    "CREATE TABLE networks(
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        subnet TEXT NOT NULL UNIQUE,
        gateway TEXT NOT NULL,
        bridge TEXT NOT NULL UNIQUE,
        internal INTEGER NOT NULL,
        dns INTEGER NOT NULL,
        labels TEXT NOT NULL,
        created INTEGER NOT NULL,
        last_ip TEXT
     );
     CREATE TABLE endpoints(
        network TEXT NOT NULL REFERENCES networks(id),
        container TEXT NOT NULL,
        ip TEXT NOT NULL,
        aliases TEXT NOT NULL,
        PRIMARY KEY(network, container),
        UNIQUE(network, ip)
     );
     CREATE INDEX endpoints_container ON endpoints(container);",
    // 5: a build layer with its times rewritten (`--timestamp`, SOURCE_DATE_EPOCH): the layer
    // with DiffID diff_id in timestamp mode `times` is the layer with DiffID `variant`.
    "CREATE TABLE layer_times(
        diff_id TEXT NOT NULL,
        times TEXT NOT NULL,
        variant TEXT NOT NULL,
        PRIMARY KEY(diff_id, times)
     );",
    // 6: the context stat cache moved to one file per context (`statfile.rs`); a zstd:chunked
    // layer's manifest annotations, read from its blob once.
    "DROP TABLE stat_cache;
     CREATE TABLE layer_annotations(
        digest TEXT PRIMARY KEY,
        json TEXT NOT NULL
     );",
    // 7: the refs version, bumped with every change to refs; index.json records the version it
    // was made from, so a tag splices its line into the file instead of rewriting it whole
    // (`store/src/store/index.rs`).
    "CREATE TABLE counters(
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     );
     INSERT INTO counters(name, value) VALUES ('refs', 0);",
    // 8: an image's size (its layers' uncompressed bytes) and a step's layer size on their
    // rows; the step cache indexed by last use; and an index on every column a foreign key
    // names, so deleting a blob, layer or image checks its users by lookup (without them GC
    // scanned every image's layers and every cache entry per row it deleted: a prune of 1,000
    // images in a store of 100,000 blobs took 71 s). `images` with ten thousand images and
    // `cache ls` with a hundred thousand entries read their own rows, in order, and no others.
    "ALTER TABLE images ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
     UPDATE images SET size = (SELECT COALESCE(SUM(l.uncompressed_size), 0)
        FROM image_layers il JOIN layers l ON l.digest = il.layer
        WHERE il.manifest = images.manifest);
     ALTER TABLE step_cache ADD COLUMN layer_size INTEGER NOT NULL DEFAULT 0;
     UPDATE step_cache SET layer_size =
        COALESCE((SELECT size FROM layers WHERE digest = step_cache.layer), 0);
     CREATE INDEX step_cache_used ON step_cache(last_used DESC, key);
     CREATE INDEX image_layers_layer ON image_layers(layer);
     CREATE INDEX step_cache_layer ON step_cache(layer);
     CREATE INDEX images_config ON images(config);
     CREATE INDEX containers_image ON containers(image);",
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

/// An image as `images` lists it: without its layers, with its tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub manifest: Digest,
    pub config: Digest,
    pub created: Option<i64>,
    /// Its layers' uncompressed bytes ([`ImageRecord::size`]).
    pub size: u64,
    /// The tags pointing at it, sorted.
    pub tags: Vec<String>,
}

impl ImageSummary {
    /// The image ID: the config digest.
    pub fn id(&self) -> Digest {
        self.config
    }
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
    pub state: crate::containers::ContainerState,
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

/// The WAL size past which a closing Store checkpoints and truncates it.
const WAL_LIMIT: u64 = 1 << 20;

impl Drop for Store {
    fn drop(&mut self) {
        let wal = self.root.join("kiln.db-wal");
        if fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) <= WAL_LIMIT {
            return;
        }
        // Best effort and without waiting: a busy store is checkpointed by a later command.
        let db = self.db();
        let _ = db.busy_timeout(Duration::ZERO);
        let _ = db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
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
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let Ok(f) = File::open(dir) else { return };
    match ioctl_getflags(&f) {
        Ok(flags) if !flags.contains(IFlags::TOPDIR) => {
            let _ = ioctl_setflags(&f, flags | IFlags::TOPDIR);
        }
        _ => {}
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
        // Closing would checkpoint the WAL (two fsyncs) on every command. Instead the WAL is
        // checkpointed and truncated when a Store is dropped with more than WAL_LIMIT in it
        // (see Drop). SQLite's automatic checkpoint is off: every kiln process is usually the
        // WAL's first opener, which rebuilds the WAL's shared index from the file and so
        // forgets what was checkpointed; the automatic checkpoint then copied the whole WAL on
        // every commit and never restarted it, and the WAL grew without bound, read and
        // checksummed whole by every command (3 ms at 4 MB).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
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
    write_atomic_with(tmp_dir, dest, |f| {
        // In 256 KiB writes: one multi-megabyte write(2) costs several times more in the kernel
        // (page allocation) on the machines measured.
        for part in bytes.chunks(256 << 10) {
            f.write_all(part)?;
        }
        Ok(())
    })
}

/// `write_atomic` of what `fill` writes into the temp file.
pub(crate) fn write_atomic_with(
    tmp_dir: &Path,
    dest: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let mut t = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(tmp_dir)
        .map_err(|e| io_err(format!("create temp file in {}", tmp_dir.display()), e))?;
    fill(t.as_file_mut()).map_err(|e| io_err("write temp file", e))?;
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
