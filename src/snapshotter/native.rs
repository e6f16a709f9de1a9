//! The native snapshotter: the chain is copied into a plain directory the step runs in; a second,
//! untouched copy is what the walk differ compares it with. Committing unpacks the layer the
//! changes became, so the snapshot is the same as one made from a pulled layer. The copies use
//! the builder's tree writer (the one COPY uses), so a native build costs two plain copies.

use super::view::View;
use super::{Active, Dirs, Kind, SnapshotError, Snapshotter};
use crate::diff::{self, TarEntry};
use crate::runtime::Rootfs;
use kiln_store::{Digest, LayerRecord, SnapshotRecord, Store};
use std::fs;
use std::io;
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
        materialize(&view, &dirs.upper)?;
        let pristine = if diffable {
            let old = tempfile::Builder::new()
                .prefix("native-old-")
                .tempdir_in(store.ingest_dir())?;
            materialize(&view, old.path())?;
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
/// xattrs, with the tree writer COPY uses (`COPY / /` from the view onto an empty tree): whiteouts
/// of either form are resolved by the view, and nothing is encoded or hashed on the way.
pub fn materialize(view: &View, dest: &Path) -> io::Result<()> {
    copy_dir(view, "/", dest)
}

/// Copies the directory `path` of the merged `view` into `dest` (an existing directory): its
/// contents, with their modes, owners, mtimes and xattrs (a new volume's first contents).
pub fn copy_dir(view: &View, path: &str, dest: &Path) -> io::Result<()> {
    use crate::builder::copy::{select_view, WriteOptions, Writer};
    if view.layers().is_empty() {
        return Ok(());
    }
    let roots = select_view(&[path.to_string()], view, "the image").map_err(io::Error::other)?;
    let empty = View::default();
    let mut w = Writer::new(
        dest,
        &empty,
        WriteOptions {
            chown: None,
            chmod: None,
            unpack: false,
            now: 0,
            link_from: None,
        },
    )
    .map_err(io::Error::other)?;
    w.copy(&roots, "/").map_err(io::Error::other)?;
    w.finish().map_err(io::Error::other)
}
