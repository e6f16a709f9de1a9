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

/// Whether kernel overlayfs mounts in this (rootless) user namespace on the store's filesystem,
/// with `userxattr`: a throwaway mount in a temp dir of the store, once per process.
pub(super) fn works_in_user_namespace(store_root: &Path) -> Result<(), String> {
    static RESULT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    RESULT
        .get_or_init(|| {
            if !store_root.is_dir() {
                return Ok(()); // a new store: the first build says, if it fails
            }
            let probe = || -> io::Result<()> {
                let t = tempfile::Builder::new()
                    .prefix(".overlay-probe-")
                    .tempdir_in(store_root)?;
                let d = |n: &str| -> io::Result<PathBuf> {
                    let p = t.path().join(n);
                    fs::create_dir(&p)?;
                    Ok(p)
                };
                let (lower, upper, work, target) = (d("l")?, d("u")?, d("w")?, d("m")?);
                let opts = format!(
                    "lowerdir={},upperdir={},workdir={},userxattr",
                    lower.display(),
                    upper.display(),
                    work.display()
                );
                nix::mount::mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    nix::mount::MsFlags::empty(),
                    Some(opts.as_str()),
                )?;
                nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH)?;
                Ok(())
            };
            probe().map_err(|e| e.to_string())
        })
        .clone()
}
