//! Snapshotters: the root filesystems of RUN steps and containers, and the committed snapshots
//! they stack on (one directory per ChainID under `<store>/snapshots/`).
//!
//! The seam follows containerd's snapshotter interface, cut to what kiln needs:
//! - [`Snapshotter::prepare`] gives a writable root on a chain of committed snapshots, and
//!   [`Snapshotter::mounts`] the runtime's description of it;
//! - [`Snapshotter::changes`] is the change set since `prepare`, as sorted layer entries;
//! - [`Snapshotter::commit`] records the active root as the snapshot of a new layer;
//! - [`Snapshotter::remove`] drops it;
//! - [`view`] reads a committed chain without mounting anything.
//!
//! Two implementations: [`Kind::Overlay`] (kernel overlayfs: lower dirs = the chain, the upper
//! dir is the change set and, once committed, the new snapshot) and [`Kind::Native`] (plain
//! copies and the walk differ, for a store that itself lives on overlayfs, where an overlay
//! upper dir cannot be). [`choose`] is the one place that picks between them. COPY and WORKDIR
//! need no mounted root: they write their change set straight into a prepared snapshot dir,
//! committed with [`commit_upper`] whatever the snapshotter.

mod inplace;
mod native;
mod overlay;
mod unpack;
pub mod view;

pub use inplace::{ignore_for_step, in_container, select as select_in_place};
pub use native::{copy_dir, materialize};
pub use unpack::{unpack_image, unpack_layer_record, SnapshotError};

use crate::diff::TarEntry;
use crate::runtime::Rootfs;
use kiln_store::{Digest, LayerRecord, SnapshotRecord, Store};
use std::io;
use std::path::{Path, PathBuf};
use view::View;

/// Which snapshotter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// overlayfs: lower dirs = the parent chain, upper = the change set (the default).
    Overlay,
    /// Plain copies and the walk differ, where overlay cannot be mounted.
    Native,
    /// RUN in the container kiln runs in, `/` itself (`--isolation=none`; inplace.rs).
    InPlace,
}

impl Kind {
    /// The implementation.
    pub fn get(self) -> &'static dyn Snapshotter {
        match self {
            Kind::Overlay => &overlay::Overlay,
            Kind::Native => &native::Native,
            Kind::InPlace => &inplace::InPlace,
        }
    }

    /// The name `--snapshotter` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Overlay => "overlay",
            Kind::Native => "native",
            Kind::InPlace => "in-place",
        }
    }
}

/// The snapshotter for a store at `store_root`: `asked` if given, else overlay, or native when
/// the store is itself on overlayfs (an overlay upper dir cannot live there: overlayfs.rst).
/// The second value says why native was chosen when nobody asked for it.
pub fn choose(store_root: &Path, asked: Option<Kind>) -> (Kind, Option<String>) {
    if let Some(k) = asked {
        return (k, None);
    }
    if crate::sys::fs_type(store_root).ok() == Some(crate::sys::OVERLAYFS_MAGIC) {
        let why = format!(
            "the store {} is on overlayfs, so RUN steps use the native snapshotter",
            store_root.display()
        );
        return (Kind::Native, Some(why));
    }
    if crate::rootless::active() {
        if let Err(e) = overlay::works_in_user_namespace(store_root) {
            let why = format!(
                "kernel overlayfs cannot be mounted in kiln's user namespace here ({e}; it needs Linux 5.11 or later), so RUN steps and containers use the native snapshotter"
            );
            return (Kind::Native, Some(why));
        }
    }
    (Kind::Overlay, None)
}

/// Where an active snapshot lives.
pub struct Dirs {
    /// The writable directory: overlay's upper dir, or the native tree.
    pub upper: PathBuf,
    /// overlay's work dir (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the root is mounted.
    pub target: PathBuf,
    /// An empty directory, the lower dir of a chain with no layers.
    pub empty: PathBuf,
}

/// A writable root filesystem in use by a RUN step or a container.
pub struct Active {
    rootfs: Rootfs,
    /// Where the changes land (overlay: the upper dir; native: the tree itself).
    pub tree: PathBuf,
    /// Native, when changes are wanted: the untouched copy the tree is compared with.
    pristine: Option<tempfile::TempDir>,
}

/// A way to give RUN steps and containers their root filesystem (see the module docs).
pub trait Snapshotter: Sync {
    /// Which one this is.
    fn kind(&self) -> Kind;

    /// A writable root on `lowers` (committed snapshot fs dirs, bottom to top) in `dirs`. With
    /// `diffable`, [`Snapshotter::changes`] can be asked for afterwards.
    fn prepare(
        &self,
        store: &Store,
        lowers: &[PathBuf],
        dirs: &Dirs,
        diffable: bool,
    ) -> io::Result<Active>;

    /// What the runtime mounts as the root.
    fn mounts(&self, active: &Active) -> Rootfs {
        active.rootfs.clone()
    }

    /// The changes made in `active` since it was prepared, as sorted layer entries.
    fn changes(&self, active: &Active) -> io::Result<Vec<TarEntry>>;

    /// Records `active`, whose changes became `layer`, as the snapshot `chain` on `parent`.
    /// `dir` is the store's prepared snapshot dir `active` was made in.
    fn commit(
        &self,
        store: &Store,
        active: Active,
        dir: tempfile::TempDir,
        layer: &LayerRecord,
        chain: Digest,
        parent: Option<Digest>,
    ) -> Result<SnapshotRecord, SnapshotError>;

    /// Drops an active root without committing it.
    fn remove(&self, active: Active) -> io::Result<()>;
}

/// A read-only view of a committed chain (snapshot fs dirs, bottom to top).
pub fn view(lowers: &[PathBuf]) -> View {
    View::new(lowers.iter().rev().cloned().collect())
}

/// Commits a change set written straight into a prepared snapshot dir's `fs/` (COPY, WORKDIR,
/// an overlay RUN): the scratch dirs beside it go, the dir moves into snapshots/.
pub fn commit_upper(
    store: &Store,
    dir: tempfile::TempDir,
    layer: &LayerRecord,
    chain: Digest,
    parent: Option<Digest>,
) -> Result<SnapshotRecord, SnapshotError> {
    for d in ["work", "rootfs", "files"] {
        let p = dir.path().join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|source| SnapshotError::Io {
                layer: layer.digest,
                source,
            })?;
        }
    }
    Ok(store.commit_snapshot(dir, chain, parent, layer.diff_id, layer.uncompressed_size)?)
}
