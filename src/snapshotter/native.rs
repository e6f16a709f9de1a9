//! The native snapshotter: the chain is copied into a plain directory the step runs in; a second,
//! untouched copy is what the walk differ compares it with. Committing unpacks the layer the
//! changes became, so the snapshot is the same as one made from a pulled layer.

use super::view::View;
use super::{Active, Dirs, Kind, SnapshotError, Snapshotter};
use crate::diff::{self, TarEntry, TarOptions};
use crate::rootfs::Root;
use crate::runtime::Rootfs;
use kiln_store::{Digest, LayerRecord, SnapshotRecord, Store};
use std::fs;
use std::io::{self, Seek};
use std::path::{Path, PathBuf};

pub struct Native;

impl Snapshotter for Native {
    fn kind(&self) -> Kind {
        Kind::Native
    }

    fn prepare(
        &self,
        store: &Store,
        lowers: &[PathBuf],
        dirs: &Dirs,
        diffable: bool,
    ) -> io::Result<Active> {
        let view = super::view(lowers);
        fs::create_dir_all(&dirs.upper)?;
        materialize(store, &view, &dirs.upper)?;
        let pristine = if diffable {
            let old = tempfile::Builder::new()
                .prefix("native-old-")
                .tempdir_in(store.ingest_dir())?;
            materialize(store, &view, old.path())?;
            Some(old)
        } else {
            None
        };
        Ok(Active {
            rootfs: Rootfs::Dir(dirs.upper.clone()),
            tree: dirs.upper.clone(),
            pristine,
        })
    }

    fn changes(&self, active: &Active) -> io::Result<Vec<TarEntry>> {
        let old = active.pristine.as_ref().ok_or_else(|| {
            io::Error::other("the native snapshot was prepared without a copy to compare with")
        })?;
        diff::walk::changes(old.path(), &active.tree)
    }

    fn commit(
        &self,
        store: &Store,
        active: Active,
        dir: tempfile::TempDir,
        layer: &LayerRecord,
        chain: Digest,
        parent: Option<Digest>,
    ) -> Result<SnapshotRecord, SnapshotError> {
        drop(active);
        drop(dir);
        super::unpack_layer_record(store, layer, chain, parent)
    }

    fn remove(&self, active: Active) -> io::Result<()> {
        match fs::remove_dir_all(&active.tree) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Copies the merged `view` into `dest` (an empty directory), keeping modes, owners, mtimes and
/// xattrs: each snapshot, bottom to top, is read as a layer (whiteouts in either form) and applied
/// as one, through a temporary tar in the store's ingest dir.
pub fn materialize(store: &Store, view: &View, dest: &Path) -> io::Result<()> {
    if view.layers().is_empty() {
        return Ok(());
    }
    let root = Root::open(dest)?;
    for layer in view.layers().iter().rev() {
        let entries = diff::overlay::changes(layer)?;
        let tar = tempfile::tempfile_in(store.ingest_dir())?;
        let mut tar = diff::write_entries(&entries, tar, &TarOptions::default())?;
        tar.rewind()?;
        diff::apply_layer(&root, io::BufReader::new(tar)).map_err(|e| {
            io::Error::other(format!("copy {}: {}", layer.display(), diff::chain(&e)))
        })?;
    }
    Ok(())
}
