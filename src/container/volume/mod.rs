//! Volumes and the mounts `kiln run` takes (`-v`, `--mount`, `--tmpfs`, `--volumes-from`, the
//! image's VOLUMEs), as Docker's local driver keeps them.
//!
//! ```text
//! <root>/volumes/<name>/_data        the volume's files (what containers mount)
//! <root>/volumes/<name>/volume.json  created, labels, whether it is anonymous
//! ```
//!
//! A volume outlives its containers: `rm` keeps it, `rm -v` (and `run --rm`) removes the
//! anonymous ones it made, `volume rm` refuses one a container still names, `volume prune`
//! removes unused anonymous volumes (every unused one with `-a`). Which containers use a volume
//! is read from their specs, so nothing can drift. A new volume mounted where the image has
//! files starts as a copy of them (owner and mode included), as Docker's does.

use super::{ContainerError, ContainerSpec};
use kiln_store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

mod flags;
pub use flags::{parse_mount_flag, parse_tmpfs_flag, parse_volume_flag};

/// A volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// Where its files are (`<root>/volumes/<name>/_data`).
    pub mountpoint: PathBuf,
    pub created: i64,
    pub labels: BTreeMap<String, String>,
    /// Made for one container (`-v /path`, an image VOLUME), named by 64 hex digits.
    pub anonymous: bool,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    created: i64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    anonymous: bool,
}

/// One mount of a container, as its spec keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSpec {
    /// A host path.
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    /// A volume (by name; anonymous ones have their generated name here).
    Volume {
        name: String,
        target: String,
        readonly: bool,
        anonymous: bool,
    },
    Tmpfs {
        target: String,
        options: String,
    },
}

impl MountSpec {
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Bind { target, .. }
            | MountSpec::Volume { target, .. }
            | MountSpec::Tmpfs { target, .. } => target,
        }
    }
}

/// A mount as the user asked for it, before volumes exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountRequest {
    /// `create`: `-v` makes a missing host path (a directory); `--mount` refuses it.
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
        create: bool,
    },
    /// No name: anonymous.
    Volume {
        name: Option<String>,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        options: String,
    },
}

impl MountRequest {
    pub fn target(&self) -> &str {
        match self {
            MountRequest::Bind { target, .. }
            | MountRequest::Volume { target, .. }
            | MountRequest::Tmpfs { target, .. } => target,
        }
    }
}

fn invalid(m: String) -> ContainerError {
    ContainerError::Invalid(m)
}

/// Whether `s` is a valid volume name (Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
pub fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    s.len() >= 2
        && c.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && c.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn volumes_dir(store: &Store) -> PathBuf {
    store.root().join("volumes")
}

fn read(store: &Store, name: &str) -> Result<Option<Volume>, ContainerError> {
    let dir = volumes_dir(store).join(name);
    let meta = match fs::read(dir.join("volume.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(super::io_err(format!("read volume {name}"))(e)),
    };
    let m: Meta = serde_json::from_slice(&meta)
        .map_err(|e| invalid(format!("volume {name}: its volume.json is corrupt: {e}")))?;
    Ok(Some(Volume {
        name: name.to_string(),
        mountpoint: dir.join("_data"),
        created: m.created,
        labels: m.labels,
        anonymous: m.anonymous,
    }))
}

/// The volume `name`, if it exists.
pub fn get(store: &Store, name: &str) -> Result<Option<Volume>, ContainerError> {
    if !valid_name(name) {
        return Ok(None);
    }
    read(store, name)
}

/// Creates a volume (a random 64-hex name when `name` is None); an existing one of that name is
/// returned as it is (Docker's `volume create` of an existing name succeeds).
pub fn create(
    store: &Store,
    name: Option<&str>,
    labels: BTreeMap<String, String>,
) -> Result<Volume, ContainerError> {
    let anonymous = name.is_none();
    let name = match name {
        Some(n) if !valid_name(n) => {
            return Err(invalid(format!(
                "invalid volume name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )))
        }
        Some(n) => n.to_string(),
        None => super::new_id()?,
    };
    if let Some(v) = read(store, &name)? {
        return Ok(v);
    }
    let base = volumes_dir(store);
    fs::create_dir_all(&base).map_err(super::io_err(format!("create {}", base.display())))?;
    // Made under a temporary name, then renamed: a volume is there whole or not at all.
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(&base)
        .map_err(super::io_err("create a volume"))?;
    fs::create_dir(tmp.path().join("_data")).map_err(super::io_err("create a volume"))?;
    let meta = Meta {
        created: kiln_store::store::now(),
        labels,
        anonymous,
    };
    fs::write(
        tmp.path().join("volume.json"),
        serde_json::to_vec(&meta).expect("volume metadata serializes"),
    )
    .map_err(super::io_err("write a volume's metadata"))?;
    let kept = tmp.keep();
    if fs::rename(&kept, base.join(&name)).is_err() {
        // Made meanwhile by another kiln: theirs stands.
        let _ = fs::remove_dir_all(&kept);
    }
    read(store, &name)?.ok_or_else(|| invalid(format!("volume {name} vanished")))
}

/// Every volume, by name.
pub fn list(store: &Store) -> Result<Vec<Volume>, ContainerError> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(volumes_dir(store)) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !valid_name(&name) {
            continue;
        }
        if let Some(v) = read(store, &name)? {
            out.push(v);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The containers (names) whose spec mounts volume `name`.
pub fn users(store: &Store, name: &str) -> Result<Vec<String>, ContainerError> {
    let mut out = Vec::new();
    for row in store.containers().list()? {
        if let Ok(spec) = serde_json::from_str::<ContainerSpec>(&row.spec) {
            if spec
                .mounts
                .iter()
                .any(|m| matches!(m, MountSpec::Volume { name: n, .. } if n == name))
            {
                out.push(row.record.name.clone());
            }
        }
    }
    Ok(out)
}

/// Removes volume `name`; refused while a container uses it.
pub fn remove(store: &Store, name: &str) -> Result<(), ContainerError> {
    if get(store, name)?.is_none() {
        return Err(ContainerError::NoSuchVolume(name.to_string()));
    }
    let users = users(store, name)?;
    if !users.is_empty() {
        return Err(invalid(format!(
            "remove {name}: volume is in use - [{}]",
            users.join(", ")
        )));
    }
    let dir = volumes_dir(store).join(name);
    // Renamed away first, so a half-removed volume is never seen under its name.
    let gone = volumes_dir(store).join(format!(".rm-{name}"));
    // What a crash in an earlier removal left.
    let _ = fs::remove_dir_all(&gone);
    fs::rename(&dir, &gone).map_err(super::io_err(format!("remove volume {name}")))?;
    fs::remove_dir_all(&gone).map_err(super::io_err(format!("remove volume {name}")))
}

/// The names of the anonymous volumes among `mounts` (those made for that one container).
pub fn anonymous(mounts: &[MountSpec]) -> impl Iterator<Item = &str> {
    mounts.iter().filter_map(|m| match m {
        MountSpec::Volume {
            name,
            anonymous: true,
            ..
        } => Some(name.as_str()),
        _ => None,
    })
}

/// Removes the anonymous volumes among `mounts`, as far as it can (a container that was not
/// created after all).
pub fn remove_anonymous(store: &Store, mounts: &[MountSpec]) {
    for name in anonymous(mounts) {
        let _ = remove(store, name);
    }
}

/// Removes the volumes no container uses: anonymous ones, or every one with `all`. Returns the
/// names removed and the bytes freed.
pub fn prune(store: &Store, all: bool) -> Result<(Vec<String>, u64), ContainerError> {
    let mut names = Vec::new();
    let mut bytes = 0;
    for v in list(store)? {
        if (v.anonymous || all) && users(store, &v.name)?.is_empty() {
            bytes += kiln_store::gc::dir_size(&v.mountpoint);
            remove(store, &v.name)?;
            names.push(v.name);
        }
    }
    Ok((names, bytes))
}

/// Resolves a container's mount requests (and the image's VOLUMEs, which become anonymous
/// volumes where nothing else is mounted) into the mounts of its spec: volumes are created,
/// a new one is filled from the image's files at its target, a missing `-v` host path is made
/// (and refused for `--mount`, as Docker).
pub(super) fn resolve(
    store: &Store,
    requests: &[MountRequest],
    image_volumes: &[String],
    view: &crate::snapshotter::view::View,
) -> Result<Vec<MountSpec>, ContainerError> {
    let mut reqs: Vec<MountRequest> = requests.to_vec();
    for v in image_volumes {
        let t = v.trim_end_matches('/');
        if !t.is_empty() && !reqs.iter().any(|r| r.target() == t) {
            reqs.push(MountRequest::Volume {
                name: None,
                target: t.to_string(),
                readonly: false,
            });
        }
    }
    // Checked before anything is made: one mount per target, bind sources there (or made).
    let mut seen = std::collections::BTreeSet::new();
    for r in &reqs {
        if !seen.insert(r.target().to_string()) {
            return Err(invalid(format!("duplicate mount point: {}", r.target())));
        }
        if let MountRequest::Bind { source, create, .. } = r {
            if fs::symlink_metadata(source).is_err() {
                if !create {
                    return Err(invalid(format!(
                        "invalid mount config for type \"bind\": bind source path does not exist: {}",
                        source.display()
                    )));
                }
                fs::create_dir_all(source)
                    .map_err(super::io_err(format!("create {}", source.display())))?;
            }
        }
    }
    let mut out = Vec::new();
    for r in reqs {
        let m = match r {
            MountRequest::Bind {
                source,
                target,
                readonly,
                ..
            } => MountSpec::Bind {
                source,
                target,
                readonly,
            },
            MountRequest::Volume {
                name,
                target,
                readonly,
            } => {
                let made = (|| {
                    let fresh = match &name {
                        Some(n) => get(store, n)?.is_none(),
                        None => true,
                    };
                    let v = create(store, name.as_deref(), BTreeMap::new())?;
                    if fresh {
                        if let Err(e) = fill_from_image(view, &target, &v.mountpoint) {
                            let _ = remove(store, &v.name);
                            return Err(e);
                        }
                    }
                    Ok(v)
                })();
                let v = match made {
                    Ok(v) => v,
                    Err(e) => {
                        // What this call made stays only if it all worked.
                        remove_anonymous(store, &out);
                        return Err(e);
                    }
                };
                MountSpec::Volume {
                    name: v.name,
                    target,
                    readonly,
                    anonymous: v.anonymous,
                }
            }
            MountRequest::Tmpfs { target, options } => MountSpec::Tmpfs { target, options },
        };
        out.push(m);
    }
    // Parents before children (`/data` before `/data/logs`).
    out.sort_by_key(|m| m.target().matches('/').count());
    Ok(out)
}

/// A new volume mounted where the image has a directory starts as a copy of it: its files, and
/// the directory's own owner and mode.
fn fill_from_image(
    view: &crate::snapshotter::view::View,
    target: &str,
    data: &Path,
) -> Result<(), ContainerError> {
    let Some(found) = view
        .resolve(target, true)
        .map_err(super::io_err(format!("look up {target} in the image")))?
    else {
        return Ok(());
    };
    if !found.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    crate::snapshotter::copy_dir(view, target, data).map_err(super::io_err(format!(
        "copy the image's {target} into its volume"
    )))?;
    fs::set_permissions(data, fs::Permissions::from_mode(found.meta.mode() & 0o7777))
        .map_err(super::io_err("set a volume's mode"))?;
    std::os::unix::fs::chown(data, Some(found.meta.uid()), Some(found.meta.gid()))
        .map_err(super::io_err("set a volume's owner"))
}

/// `--volumes-from CONTAINER[:ro|rw]`: that container's volume and bind mounts, at the same
/// targets (read-only with `:ro`).
pub fn volumes_from(store: &Store, spec: &str) -> Result<Vec<MountRequest>, ContainerError> {
    let (who, mode) = match spec.rsplit_once(':') {
        Some((w, m @ ("ro" | "rw"))) => (w, Some(m)),
        _ => (spec, None),
    };
    let row = super::resolve(store, who)?;
    let other = super::spec_of(&row)?;
    Ok(other
        .mounts
        .iter()
        .filter_map(|m| {
            let ro = |own: bool| match mode {
                Some("ro") => true,
                Some(_) => false,
                None => own,
            };
            match m {
                MountSpec::Bind {
                    source,
                    target,
                    readonly,
                } => Some(MountRequest::Bind {
                    source: source.clone(),
                    target: target.clone(),
                    readonly: ro(*readonly),
                    create: false,
                }),
                MountSpec::Volume {
                    name,
                    target,
                    readonly,
                    ..
                } => Some(MountRequest::Volume {
                    name: Some(name.clone()),
                    target: target.clone(),
                    readonly: ro(*readonly),
                }),
                MountSpec::Tmpfs { .. } => None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests;
