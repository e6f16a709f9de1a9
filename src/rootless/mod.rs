//! Rootless mode: kiln run by an ordinary user.
//!
//! As podman does, every kiln process of a user runs inside one user namespace and one mount
//! namespace, both held open by a small pause process (`kiln __kiln-pause`). The user
//! namespace maps root inside to the user, and ids 1..N to the user's subordinate range from
//! /etc/subuid and /etc/subgid (written by `newuidmap`/`newgidmap`, Debian's uidmap package).
//! The first command creates the pause process; every later one joins it ([`enter`], the first
//! thing `kiln` does, while still single-threaded: setns(2) into a user namespace needs that).
//! Inside, kiln is root with every capability over its own namespaces, and the rest of the code
//! is the same as for root: layers unpack with their ids (shifted on disk into the subordinate
//! range by the kernel), the differs read them back unshifted, so an image built rootless is
//! the image built as root. Detached containers and services started by one command stay
//! reachable by the next, because they all live in the same namespaces.
//!
//! What differs inside, and where it is handled: overlayfs keeps its whiteout and opaque
//! markers in `user.overlay.*` xattrs (mounted with `userxattr`; [`opaque_xattr`]); sysfs cannot
//! be mounted for a RUN step on the host's network (it is bound instead); there are no cgroups
//! (limits are refused, naming the flag); bridge networks need root, so containers get their
//! own network namespace with loopback and, when pasta is installed, outbound access.
//!
//! Without a subordinate range, the namespace maps only root, and files owned by other ids
//! cannot be kept (each unpack says which).

mod pause;

pub use pause::{pause_main, stop as stop_pause, PAUSE_ARG};

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The identity map of the initial user namespace: all 2^32 ids to themselves.
const IDENTITY: (u32, u32, u64) = (0, 0, 4_294_967_295);

/// One line of /proc/PID/uid_map: (inside, outside, count).
type MapLine = (u32, u32, u64);

fn read_map(path: &str) -> Vec<MapLine> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|w| w.parse::<u64>().ok());
            Some((f.next()?? as u32, f.next()?? as u32, f.next()??))
        })
        .collect()
}

/// Whether this process runs in a user namespace other than the machine's own: kiln's
/// rootless namespace, or a rootless container's. Overlay markers, sysfs and cgroups differ
/// there.
pub fn active() -> bool {
    static ACTIVE: OnceLock<bool> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let m = read_map("/proc/self/uid_map");
        !(m.is_empty() || m == [IDENTITY])
    })
}

/// The xattr overlayfs marks an opaque directory with: `user.overlay.opaque` in a user
/// namespace (overlay mounted with `userxattr`), `trusted.overlay.opaque` otherwise.
pub fn opaque_xattr() -> &'static str {
    if active() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// Whether an xattr name is one of overlayfs's own (never part of a layer).
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// The ids this process's user namespace maps, as the kernel reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The host uid and gid that root inside is.
    pub uid: u32,
    pub gid: u32,
    /// How many uids and gids are mapped in all (1: root only).
    pub uids: u64,
    pub gids: u64,
}

/// The mapping of this process's user namespace, when [`active`].
pub fn mapping() -> Option<Mapping> {
    if !active() {
        return None;
    }
    let u = read_map("/proc/self/uid_map");
    let g = read_map("/proc/self/gid_map");
    let root = |m: &[MapLine]| m.iter().find(|l| l.0 == 0).map(|l| l.1);
    Some(Mapping {
        uid: root(&u)?,
        gid: root(&g)?,
        uids: u.iter().map(|l| l.2).sum(),
        gids: g.iter().map(|l| l.2).sum(),
    })
}

/// Why an id cannot be given to a file or a process in this namespace, when that is the reason
/// for `err` (EINVAL from chown or setuid of an unmapped id); `None` otherwise.
pub fn unmapped(err: &io::Error, uid: u32, gid: u32) -> Option<String> {
    if err.raw_os_error() != Some(libc::EINVAL) {
        return None;
    }
    let m = mapping()?;
    Some(format!(
        "uid {uid} / gid {gid} is not mapped in kiln's user namespace, which maps {} uids and {} gids: give this user a subordinate range in /etc/subuid and /etc/subgid (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`), then run `kiln system migrate`",
        m.uids, m.gids
    ))
}

/// A subordinate id range: (first host id, count).
pub type Range = (u32, u32);

/// The first range of `/etc/subuid`-style `text` for the user named `name` or numbered `id`.
pub fn sub_range(text: &str, name: &str, id: u32) -> Option<Range> {
    text.lines().find_map(|l| {
        let mut f = l.trim().splitn(3, ':');
        let who = f.next()?;
        let start = f.next()?.parse::<u32>().ok()?;
        let count = f.next()?.trim().parse::<u32>().ok()?;
        (count > 0 && (who == name || who.parse::<u32>().ok() == Some(id)))
            .then_some((start, count))
    })
}

/// The directory for a user's runtime state (the pause process's pid and lock):
/// `$XDG_RUNTIME_DIR/kiln` when that belongs to the user, else `/tmp/kiln-<uid>`, created
/// private (0700) and refused when it belongs to someone else. `uid` is the user's host uid,
/// `owner` the owner its files show (the uid outside; root inside kiln's user namespace).
/// Never asks [`active`], which must not be settled before the namespace is joined.
pub fn runtime_dir(uid: u32, owner: u32) -> io::Result<PathBuf> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.uid() == owner && m.is_dir()));
    let dir = match xdg {
        Some(x) => x.join("kiln"),
        None => std::env::temp_dir().join(format!("kiln-{uid}")),
    };
    match fs::create_dir(&dir) {
        Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = fs::symlink_metadata(&dir)?;
    if !m.is_dir() || m.uid() != owner || m.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a private directory of uid {uid}: remove it, or set XDG_RUNTIME_DIR",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The user's runtime directory, seen from inside kiln's user namespace; `None` for root.
pub fn runtime_dir_inside() -> Option<PathBuf> {
    let m = mapping()?;
    runtime_dir(m.uid, 0).ok()
}

/// What [`enter`] did, for the CLI to say.
#[derive(Debug, Default)]
pub struct Entered {
    /// Warnings: why the namespace maps only root, for example.
    pub notes: Vec<String>,
}

/// Makes an ordinary user's kiln run inside the user's kiln namespaces (see the module docs):
/// joins the pause process's user and mount namespaces, creating it first if there is none.
/// Nothing for root. Must run before any thread starts.
pub fn enter() -> Result<Entered, String> {
    if nix::unistd::geteuid().is_root() {
        return Ok(Entered::default());
    }
    pause::join_or_create()
}

/// What `kiln info` shows: (name, value) lines about the store and how kiln runs here.
pub fn facts(store_root: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut out = vec![("Root Dir", store_root.display().to_string())];
    let (kind, why) = crate::snapshotter::choose(store_root, None);
    let how = match (kind, why) {
        (_, Some(why)) => format!("{} ({why})", kind.name()),
        (crate::snapshotter::Kind::Overlay, None) if active() => {
            "overlay (kernel overlayfs in kiln's user namespace, mounted with userxattr)".into()
        }
        (k, None) => k.name().to_string(),
    };
    out.push(("Snapshotter", how));
    match mapping() {
        None => out.push(("Rootless", "false".into())),
        Some(m) => {
            out.push(("Rootless", "true".into()));
            out.push((
                "ID Map",
                format!(
                    "root is uid {} / gid {}; {} uids and {} gids mapped{}",
                    m.uid,
                    m.gid,
                    m.uids,
                    m.gids,
                    if m.uids > 1 { "" } else { " (no subordinate range in /etc/subuid: files owned by other ids cannot be kept)" }
                ),
            ));
        }
    }
    out.push(("Network", crate::network::rootless::describe()));
    out.push((
        "Cgroups",
        if active() {
            "none: limits (-m, --cpus, --pids-limit) need root here (cgroup v1, or v2 without delegation)".into()
        } else {
            "v1, under /sys/fs/cgroup/<controller>/kiln".into()
        },
    ));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    out.push(("Kernel Version", kernel.trim().to_string()));
    out
}

#[cfg(test)]
mod tests;
