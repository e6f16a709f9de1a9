//! The overlay snapshotter: lower dirs = the chain's snapshots, the upper dir = the change set.

use super::{Active, Dirs, Kind, SnapshotError, Snapshotter};
use crate::diff::TarEntry;
use crate::runtime::Rootfs;
use kiln_store::{Digest, LayerRecord, SnapshotRecord, Store};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub struct Overlay;

impl Snapshotter for Overlay {
    fn kind(&self) -> Kind {
        Kind::Overlay
    }

    fn prepare(
        &self,
        store: &Store,
        lowers: &[PathBuf],
        dirs: &Dirs,
        _diffable: bool,
    ) -> io::Result<Active> {
        for d in [&dirs.upper, &dirs.work, &dirs.target, &dirs.empty] {
            fs::create_dir_all(d)?;
        }
        let base = store.root().join("snapshots");
        let lower = lowerdirs(&base, lowers.iter().rev(), &dirs.empty);
        Ok(Active {
            rootfs: Rootfs::Overlay {
                base,
                lower,
                upper: dirs.upper.clone(),
                work: dirs.work.clone(),
                target: dirs.target.clone(),
            },
            tree: dirs.upper.clone(),
            pristine: None,
        })
    }

    fn changes(&self, active: &Active) -> io::Result<Vec<TarEntry>> {
        crate::diff::overlay::changes(&active.tree)
    }

    fn commit(
        &self,
        store: &Store,
        _active: Active,
        dir: tempfile::TempDir,
        layer: &LayerRecord,
        chain: Digest,
        parent: Option<Digest>,
    ) -> Result<SnapshotRecord, SnapshotError> {
        super::commit_upper(store, dir, layer, chain, parent)
    }

    fn remove(&self, active: Active) -> io::Result<()> {
        match fs::remove_dir_all(&active.tree) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Overlay `lowerdir` entries for snapshot dirs given top first: relative to `base` (the init
/// helper mounts from there, keeping the option string short), or `empty` when there are none.
fn lowerdirs<'p>(
    base: &Path,
    top_first: impl Iterator<Item = &'p PathBuf>,
    empty: &Path,
) -> Vec<String> {
    let mut lower: Vec<String> = top_first
        .map(|p| {
            p.strip_prefix(base)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| p.display().to_string())
        })
        .collect();
    if lower.is_empty() {
        lower.push(empty.display().to_string());
    }
    lower
}
