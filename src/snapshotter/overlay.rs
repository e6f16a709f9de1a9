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
        let lowers = stackable(store, lowers)?;
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

/// The most lower layers overlayfs stacks (the kernel's OVL_MAX_STACK).
pub const MAX_LOWERS: usize = 500;

/// Deeper chains flatten their bottom layers in multiples of this many, so consecutive steps of a
/// deep build share one flattened snapshot.
const FLAT_BLOCK: usize = 250;

/// `lowers` (bottom first) as overlay can stack them: as they are up to [`MAX_LOWERS`], else
/// with the bottom ones replaced by one flattened snapshot of them.
fn stackable(store: &Store, lowers: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    if lowers.len() <= MAX_LOWERS {
        return Ok(lowers.to_vec());
    }
    let k = lowers.len() - lowers.len() % FLAT_BLOCK;
    let flat = flattened(store, &lowers[..k])?;
    Ok(std::iter::once(flat)
        .chain(lowers[k..].iter().cloned())
        .collect())
}

/// The merged tree of snapshot dirs `lowers` (bottom first) as one directory, made once:
/// `snapshots/flat-<hash of the dirs>/fs`, beside a `lowers` file naming the snapshot dirs it was
/// made of (GC keeps it while they all live).
fn flattened(store: &Store, lowers: &[PathBuf]) -> io::Result<PathBuf> {
    let base = store.root().join("snapshots");
    let names: Vec<String> = lowers
        .iter()
        .map(|p| {
            p.strip_prefix(&base)
                .ok()
                .and_then(|r| r.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        })
        .collect();
    let list = names.join("\n") + "\n";
    let hash = blake3::hash(list.as_bytes()).to_hex();
    let dest = base.join(format!("flat-{}", &hash[..32]));
    if dest.join("lowers").is_file() {
        return Ok(dest.join("fs"));
    }
    // GC stays away from the half-made copy in ingest/ (a `run` holds no build's lease).
    let _lease = store.lease().map_err(io::Error::other)?;
    let tmp = store.prepare_snapshot_dir().map_err(io::Error::other)?;
    let view = super::view::View::new(lowers.iter().rev().cloned().collect());
    super::native::materialize(&view, &tmp.path().join("fs"))?;
    fs::write(tmp.path().join("lowers"), list)?;
    match fs::rename(tmp.path(), &dest) {
        Ok(()) => {
            let _ = tmp.keep();
        }
        // Another process made it first.
        Err(_) if dest.join("lowers").is_file() => {}
        Err(e) => return Err(e),
    }
    Ok(dest.join("fs"))
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
