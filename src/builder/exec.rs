//! Executing RUN: the step's mounts, the container process, and what it left.
//!
//! The root comes from the build's [`Snapshotter`] in the step's snapshot dir: with overlay,
//! lower dirs = the parent chain's snapshots and upper = the dir's `fs/`, both the change set
//! and, once committed, the snapshot later steps stack on; with native, `fs/` is a copy of the
//! parent's merged tree the step runs in, compared with a second copy by the walk differ.
//!
//! /proc, /sys, /dev, /etc/hosts, /etc/resolv.conf and /etc/hostname are mounted for the step
//! and never reach the layer: mount points the image lacks are created as stubs and removed
//! afterwards (as BuildKit's mount-stub cleaner does), together with a parent directory that
//! only the stub's creation copied up.

use super::cgroup::StepCgroup;
use crate::frontend::mount::{MountKind, Sharing};
use crate::plan::RunStep;
use crate::runtime::{self, Net, Spec};
use crate::snapshotter::view::View;
use crate::snapshotter::{Active, Snapshotter};
use kiln_store::Store;
use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The hostname RUN steps see (BuildKit's, so scripts that record it produce the same files).
pub const BUILD_HOSTNAME: &str = "buildkitsandbox";

/// Lines of output kept to show when a step fails.
const TAIL: usize = 12;

/// One RUN to execute.
pub struct RunRequest<'a> {
    pub run: &'a RunStep,
    /// Snapshot fs dirs, bottom to top.
    pub lowers: &'a [PathBuf],
    pub view: &'a View,
    /// The prepared snapshot dir (its `fs/` is the upper dir).
    pub snapshot_dir: &'a Path,
    pub network_none: bool,
    pub snapshotter: &'a dyn Snapshotter,
    /// `kiln build --secret` values by id (never keyed, logged or written to the store).
    pub secrets: &'a std::collections::BTreeMap<String, Vec<u8>>,
    /// `kiln build --ssh` agent sockets by id.
    pub ssh: &'a std::collections::BTreeMap<String, std::path::PathBuf>,
    /// Bind mount sources by mount index: a prepared copy, and whether it is a directory.
    pub binds: &'a std::collections::BTreeMap<usize, (std::path::PathBuf, bool)>,
}

/// Why a RUN failed.
#[derive(Debug)]
pub enum RunError {
    /// The command exited non-zero; the last lines of its output.
    Exit { code: i32, tail: Vec<String> },
    /// The container could not be set up.
    Setup(String),
}

pub(super) fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> RunError + '_ {
    move |e| RunError::Setup(format!("{what}: {e}"))
}

/// Runs the step; output lines go to `out` as they come.
pub fn run(store: &Store, req: &RunRequest<'_>, out: &dyn Fn(&str)) -> Result<Active, RunError> {
    runtime::need_root("RUN").map_err(RunError::Setup)?;
    let r = req.run;
    let view = req.view;
    let passwd = view.read_string("/etc/passwd");
    let group = view.read_string("/etc/group");
    let ids = runtime::user::resolve(&r.user, passwd.as_deref(), group.as_deref())
        .map_err(|e| RunError::Setup(e.to_string()))?;

    let files = req.snapshot_dir.join("files");
    fs::create_dir_all(files.join("empty")).map_err(setup("create run files"))?;
    runtime::write_etc_files(&files, BUILD_HOSTNAME).map_err(setup("prepare /etc files"))?;
    let mut stubs = runtime::missing_mount_points(view).map_err(setup("look up mount points"))?;

    // RUN --mount: tmpfs and cache mounts. Their targets (and missing parents) are stubs too, so
    // nothing of them reaches the layer; a locked cache mount is held for the whole step.
    let mut extra = Vec::new();
    let mut _locks = Vec::new();
    // Private scratch caches (another build holds the shared one): removed after the step.
    let mut _scratch = Vec::new();
    let mut secret_env = Vec::new();
    let mut ssh_n = 0;
    // Secret files live outside the store, in memory when /dev/shm is there (so a value never
    // reaches a disk), in a directory only root can enter, gone after the step.
    let mut secret_dir: Option<tempfile::TempDir> = None;
    for (i, m) in r.mounts.iter().enumerate() {
        match &m.kind {
            MountKind::Secret {
                id,
                target,
                env,
                required,
                mode,
                uid,
                gid,
            } => {
                let Some(value) = req.secrets.get(id) else {
                    if *required {
                        return Err(RunError::Setup(format!(
                            "secret {id:?} is required but was not given: kiln build --secret id={id},src=FILE"
                        )));
                    }
                    continue;
                };
                if let Some(var) = env {
                    secret_env.push(format!("{var}={}", String::from_utf8_lossy(value)));
                    if target.is_none() {
                        continue;
                    }
                }
                let target = target
                    .clone()
                    .unwrap_or_else(|| format!("/run/secrets/{id}"));
                let target = crate::plan::resolve_path(&r.workdir, &target);
                add_stubs(view, &target, false, &mut stubs)?;
                if secret_dir.is_none() {
                    let shm = Path::new("/dev/shm");
                    let parent = if crate::sys::fs_type(shm).ok() == Some(crate::sys::TMPFS_MAGIC) {
                        shm.to_path_buf()
                    } else {
                        std::env::temp_dir()
                    };
                    remove_stale_secrets(&parent);
                    let prefix = format!("{SECRETS_PREFIX}{}-", std::process::id());
                    secret_dir = Some(
                        tempfile::Builder::new()
                            .prefix(&prefix)
                            .tempdir_in(&parent)
                            .map_err(setup("create the secrets directory"))?,
                    );
                }
                let file = secret_dir
                    .as_ref()
                    .expect("made above")
                    .path()
                    .join(blake3::hash(id.as_bytes()).to_hex().as_str());
                write_secret(&file, value, *mode, *uid, *gid)?;
                extra.push(runtime::ExtraMount::ReadOnly {
                    target,
                    source: file,
                });
            }
            MountKind::Ssh {
                id,
                target,
                required,
            } => {
                // The agent's socket, bound in (BuildKit's default path and SSH_AUTH_SOCK).
                let Some(sock) = req.ssh.get(id) else {
                    if *required {
                        return Err(RunError::Setup(format!(
                            "ssh agent {id:?} is required but was not given: kiln build --ssh {id}[=SOCKET]"
                        )));
                    }
                    continue;
                };
                let target = target
                    .clone()
                    .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_n}"));
                ssh_n += 1;
                let target = crate::plan::resolve_path(&r.workdir, &target);
                add_stubs(view, &target, false, &mut stubs)?;
                if !secret_env
                    .iter()
                    .any(|e: &String| e.starts_with("SSH_AUTH_SOCK="))
                {
                    secret_env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                extra.push(runtime::ExtraMount::Bind {
                    target,
                    source: sock.clone(),
                });
            }
            MountKind::Bind { target, rw, .. } => {
                let target = crate::plan::resolve_path(&r.workdir, target);
                let (source, is_dir) = req
                    .binds
                    .get(&i)
                    .cloned()
                    .ok_or_else(|| RunError::Setup("bind mount source not prepared".into()))?;
                add_stubs(view, &target, is_dir, &mut stubs)?;
                if *rw {
                    extra.push(runtime::ExtraMount::Bind { target, source });
                } else {
                    extra.push(runtime::ExtraMount::ReadOnly { target, source });
                }
            }
            MountKind::Tmpfs { target, size } => {
                let target = crate::plan::resolve_path(&r.workdir, target);
                add_stubs(view, &target, true, &mut stubs)?;
                let mut options = "mode=1777".to_string();
                if let Some(bytes) = size {
                    options.push_str(&format!(",size={bytes}"));
                }
                extra.push(runtime::ExtraMount::Tmpfs { target, options });
            }
            MountKind::Cache {
                target,
                id,
                sharing,
                mode,
                uid,
                gid,
                ..
            } => {
                let target = crate::plan::resolve_path(&r.workdir, target);
                add_stubs(view, &target, true, &mut stubs)?;
                let seed = req.binds.get(&i).map(|(p, is_dir)| {
                    if *is_dir {
                        p.as_path()
                    } else {
                        p.parent().unwrap_or(p)
                    }
                });
                let cache = CacheMount {
                    id: id.as_deref().unwrap_or(&target),
                    sharing: *sharing,
                    mode: *mode,
                    owner: (*uid, *gid),
                };
                let (source, lock, scratch) = cache_dir(store, &cache, seed)?;
                _locks.extend(lock);
                _scratch.extend(scratch);
                extra.push(runtime::ExtraMount::Bind { target, source });
            }
        }
    }

    let snapshotter = req.snapshotter;
    let dirs = crate::snapshotter::Dirs {
        upper: req.snapshot_dir.join("fs"),
        work: req.snapshot_dir.join("work"),
        target: req.snapshot_dir.join("rootfs"),
        empty: files.join("empty"),
    };
    let active = snapshotter
        .prepare(store, req.lowers, &dirs, true)
        .map_err(setup("prepare the root filesystem"))?;
    let rootfs = snapshotter.mounts(&active);
    let tree = active.tree.clone();

    let mut env: Vec<String> = r.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend(secret_env);
    if !r.env.iter().any(|(k, _)| k == "PATH") {
        env.push(format!("PATH={}", crate::plan::DEFAULT_PATH));
    }
    // The OCI runtime under BuildKit (runc's setupUser) sets HOME when the env has none: the
    // user's home from the image's passwd, else "/".
    if !r.env.iter().any(|(k, _)| k == "HOME") {
        env.push(format!("HOME={}", ids.home.as_deref().unwrap_or("/")));
    }
    // Docker's device list holds in RUN too (BuildKit's runc gets the same): a step may mknod
    // but not open a host disk or /dev/kmsg through the node.
    let security = runtime::Security::default();
    let in_place = snapshotter.kind() == crate::snapshotter::Kind::InPlace;
    let devices = if in_place {
        StepCgroup(None)
    } else {
        StepCgroup::create(&security)?
    };
    let spec = Spec {
        rootfs,
        argv: r.argv.clone(),
        env,
        cwd: r.workdir.clone(),
        ids,
        hostname: BUILD_HOSTNAME.into(),
        net: if req.network_none {
            Net::Private
        } else {
            Net::Host
        },
        files: vec![
            ("/etc/hosts".into(), files.join("hosts")),
            ("/etc/resolv.conf".into(), files.join("resolv.conf")),
            ("/etc/hostname".into(), files.join("hostname")),
        ],
        stubs: stubs.clone(),
        script: r.script.clone(),
        no_new_privs: false,
        mask_proc: true,
        tty: false,
        winsize: None,
        cgroups: devices.0.iter().cloned().collect(),
        mounts: extra,
        security,
        init: false,
    };

    let (rd, wr) = crate::sys::pipe().map_err(setup("create a pipe"))?;
    let wr2 = wr.try_clone().map_err(setup("dup a pipe"))?;
    let (mut child, emulated) = if in_place {
        // The mount points the image lacks that a runtime leaves in the layer (see below).
        let kept: Vec<String> = stubs
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| p == "/proc" || p == "/sys" || (p == "/dev" && r.script.is_none()))
            .collect();
        let (c, m) = super::inplace::spawn(&spec, &kept, Stdio::from(wr), Stdio::from(wr2))?;
        (c, Some(m))
    } else {
        let c = runtime::spawn(&spec, Stdio::from(wr), Stdio::from(wr2))
            .map_err(setup("start the container helper"))?
            .child;
        (c, None)
    };
    let mut tail: VecDeque<String> = VecDeque::new();
    let reader = BufReader::new(fs::File::from(rd));
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        out(line);
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    }
    let status = child.wait().map_err(setup("wait for the step"))?;
    let code = runtime::exit_code(status);
    if let Some(m) = emulated {
        // In place, `/` is the host's: no stubs were made, and the mounts were copies.
        m.undo()?;
        if code != 0 {
            return Err(RunError::Exit {
                code,
                tail: tail.into_iter().collect(),
            });
        }
        return Ok(active);
    }
    // The runtime's own mount points for /proc, /sys and /dev stay in the layer, as runc
    // leaves them under BuildKit 0.13; the files and RUN --mount targets go. A `#!` heredoc is
    // one of BuildKit's mounts (/dev/pipes/NAME): then /dev was its stub, and goes too.
    let keep_dev = r.script.is_none();
    let stubs: Vec<(String, bool)> = stubs
        .into_iter()
        .filter(|(p, _)| !(p == "/proc" || p == "/sys" || (p == "/dev" && keep_dev)))
        .collect();
    let overlay = snapshotter.kind() == crate::snapshotter::Kind::Overlay;
    remove_stubs(&tree, view, &stubs, overlay);
    if code != 0 {
        return Err(RunError::Exit {
            code,
            tail: tail.into_iter().collect(),
        });
    }
    Ok(active)
}

/// Adds `target` (a directory or a file) and its missing parents to the stubs, shallowest first.
fn add_stubs(
    view: &View,
    target: &str,
    dir: bool,
    stubs: &mut Vec<(String, bool)>,
) -> Result<(), RunError> {
    let mut missing = Vec::new();
    let mut p = std::path::PathBuf::from(target);
    let mut is_dir = dir;
    loop {
        let s = p.display().to_string();
        if s == "/"
            || view
                .resolve(&s, true)
                .map_err(setup("look up mount targets"))?
                .is_some()
        {
            break;
        }
        missing.push((s, is_dir));
        is_dir = true;
        if !p.pop() {
            break;
        }
    }
    missing.reverse();
    for st in missing {
        if !stubs.contains(&st) {
            stubs.push(st);
        }
    }
    Ok(())
}

/// Secret directories are `<tmpfs>/kiln-secrets-<pid>-XXXXXX`.
const SECRETS_PREFIX: &str = "kiln-secrets-";

/// Removes the secret directories of builds that died without cleaning up (SIGKILL): their
/// process is gone.
fn remove_stale_secrets(parent: &Path) {
    let Ok(rd) = fs::read_dir(parent) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SECRETS_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Writes a secret file with the mount's mode (default 0400) and owner.
fn write_secret(file: &Path, value: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), RunError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(file)
        .map_err(setup("write a secret"))?;
    f.write_all(value).map_err(setup("write a secret"))?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(setup("chown a secret"))?;
    Ok(())
}

/// Where RUN cache mounts live: `<root>/cache-mounts/<blake3(id)>`.
pub(super) fn cache_mounts_dir(store: &Store) -> PathBuf {
    store.root().join("cache-mounts")
}

/// A cache mount's lock file (`<dir>.lock`): held by a build whose mount is `locked` or
/// `private`, and taken by `cache prune --all` before it removes the mount.
pub(super) fn cache_mount_lock(dir: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.with_extension("lock"))
}

/// The host directory of a cache mount: `<root>/cache-mounts/<blake3(id)>`, made with the
/// mount's mode, uid and gid the first time. `sharing=locked` holds an exclusive lock on it for
/// the step; `sharing=private` takes a fresh scratch directory when another build holds it;
/// `shared` (the default) neither. Cache mounts are never keyed and never in a layer.
/// A cache mount, resolved: its id (the target by default), sharing, and the mode and owner a
/// new one gets.
struct CacheMount<'a> {
    id: &'a str,
    sharing: Sharing,
    mode: u32,
    owner: (u32, u32),
}

fn cache_dir(
    store: &Store,
    m: &CacheMount<'_>,
    seed: Option<&Path>,
) -> Result<
    (
        std::path::PathBuf,
        Option<fs::File>,
        Option<tempfile::TempDir>,
    ),
    RunError,
> {
    use std::os::unix::fs::PermissionsExt;
    let id = m.id;
    let base = cache_mounts_dir(store);
    let dir = base.join(blake3::hash(id.as_bytes()).to_hex().as_str());
    if !dir.exists() {
        fs::create_dir_all(&base).map_err(setup("create cache mounts"))?;
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&base)
            .map_err(setup("create a cache mount"))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(m.mode))
            .map_err(setup("chmod a cache mount"))?;
        let (uid, gid) = m.owner;
        std::os::unix::fs::chown(tmp.path(), Some(uid), Some(gid))
            .map_err(setup("chown a cache mount"))?;
        // `from=`: a new cache starts as a copy of the source (BuildKit's base of the cache).
        if let Some(seed) = seed {
            crate::snapshotter::materialize(&View::new(vec![seed.to_path_buf()]), tmp.path())
                .map_err(|e| RunError::Setup(format!("seed the cache mount: {e}")))?;
        }
        let kept = tmp.keep();
        // Another build may have made it meanwhile: theirs wins.
        if fs::rename(&kept, &dir).is_err() {
            let _ = fs::remove_dir_all(&kept);
        }
    }
    let lockfile = || cache_mount_lock(&dir).map_err(setup("open a cache mount's lock"));
    match m.sharing {
        Sharing::Locked => {
            let f = lockfile()?;
            f.lock().map_err(setup("lock a cache mount"))?;
            Ok((dir, Some(f), None))
        }
        Sharing::Private => {
            let f = lockfile()?;
            match f.try_lock() {
                Ok(()) => Ok((dir, Some(f), None)),
                Err(_) => {
                    let scratch = tempfile::Builder::new()
                        .prefix(".private-")
                        .tempdir_in(&base)
                        .map_err(setup("create a private cache mount"))?;
                    Ok((scratch.path().to_path_buf(), None, Some(scratch)))
                }
            }
        }
        Sharing::Shared => Ok((dir, None, None)),
    }
}

/// Removes what is left of the stubs in `tree`: empty files and empty directories the image did
/// not have. A parent directory the stubs were created in gets its mtime back when the step did
/// not add or remove entries there itself, and in an overlay upper dir it goes away entirely when
/// only the stubs' creation had copied it up (empty, same mode and owner as below).
fn remove_stubs(tree: &Path, view: &View, stubs: &[(String, bool)], overlay: bool) {
    let mut parents = Vec::new();
    for (p, dir) in stubs.iter().rev() {
        let host = tree.join(p.trim_start_matches('/'));
        if let Some(parent) = Path::new(p).parent() {
            if parent != Path::new("/") {
                parents.push(parent.to_path_buf());
            }
        }
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        if *dir && meta.is_dir() {
            let _ = fs::remove_dir(&host);
        } else if !*dir && meta.is_file() && meta.len() == 0 {
            let _ = fs::remove_file(&host);
        }
    }
    parents.sort();
    parents.dedup();
    for parent in parents {
        let host = tree.join(parent.strip_prefix("/").unwrap_or(&parent));
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        let Some(below) = view
            .resolve(&parent.display().to_string(), false)
            .ok()
            .flatten()
        else {
            continue;
        };
        if !below.is_dir() || !meta.is_dir() {
            continue;
        }
        let lower: std::collections::BTreeSet<std::ffi::OsString> = match view.read_dir(&below) {
            Ok(m) => m.into_keys().collect(),
            Err(_) => continue,
        };
        let Ok(rd) = fs::read_dir(&host) else {
            continue;
        };
        let here: Vec<(std::ffi::OsString, bool)> = rd
            .flatten()
            .map(|e| {
                let wh = e
                    .metadata()
                    .map(|m| crate::snapshotter::view::is_whiteout(&m))
                    .unwrap_or(false);
                (e.file_name(), wh)
            })
            .collect();
        let entries_changed = if overlay {
            here.iter().any(|(n, wh)| *wh || !lower.contains(n))
        } else {
            here.len() != lower.len() || here.iter().any(|(n, _)| !lower.contains(n))
        };
        if entries_changed {
            continue;
        }
        let same_owner = below.meta.mode() == meta.mode()
            && below.meta.uid() == meta.uid()
            && below.meta.gid() == meta.gid();
        if overlay && here.is_empty() && same_owner {
            let _ = fs::remove_dir(&host);
            continue;
        }
        if let (Ok(f), Ok(m)) = (fs::File::open(&host), below.meta.modified()) {
            let _ = f.set_times(fs::FileTimes::new().set_modified(m).set_accessed(m));
        }
    }
}
