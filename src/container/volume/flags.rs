//! The mount flags of `kiln run` as Docker reads them: `-v`, `--mount`, `--tmpfs`.

use super::{valid_name, MountRequest};
use std::path::PathBuf;

fn check_target(t: &str, flag: &str) -> Result<String, String> {
    if !t.starts_with('/') {
        return Err(format!(
            "invalid {flag}: the mount destination {t:?} is not an absolute path"
        ));
    }
    if t == "/" {
        return Err(format!("invalid {flag}: cannot mount over /"));
    }
    Ok(t.trim_end_matches('/').to_string())
}

/// `-v HOST:CTR[:ro|rw]`, `-v NAME:CTR[:ro|rw]`, `-v CTR` (anonymous), as Docker reads them.
pub fn parse_volume_flag(v: &str) -> Result<MountRequest, String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, target, opts) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, o] => (Some(*s), *t, Some(*o)),
        _ => return Err(format!("invalid volume specification: {v:?}")),
    };
    let mut readonly = false;
    for o in opts
        .unwrap_or_default()
        .split(',')
        .filter(|o| !o.is_empty())
    {
        match o {
            "ro" => readonly = true,
            "rw" => readonly = false,
            // SELinux labels and propagation: nothing to do here.
            "z" | "Z" | "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
            | "nocopy" => {}
            other => {
                return Err(format!(
                    "invalid mode {other:?} in volume specification {v:?}"
                ))
            }
        }
    }
    let target = check_target(target, "--volume")?;
    Ok(match src {
        None => MountRequest::Volume {
            name: None,
            target,
            readonly,
        },
        Some(s) if s.starts_with('/') => MountRequest::Bind {
            source: PathBuf::from(s),
            target,
            readonly,
            create: true,
        },
        Some(s) if valid_name(s) => MountRequest::Volume {
            name: Some(s.to_string()),
            target,
            readonly,
        },
        Some(s) => {
            return Err(format!(
                "invalid volume specification {v:?}: {s:?} is neither an absolute host path nor a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
            ))
        }
    })
}

/// `--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,tmpfs-size=...][,tmpfs-mode=...]`.
pub fn parse_mount_flag(v: &str) -> Result<MountRequest, String> {
    let mut kind = "volume".to_string();
    let (mut source, mut target) = (None, None);
    let mut readonly = false;
    let mut tmpfs = Vec::new();
    for part in v.split(',').filter(|p| !p.is_empty()) {
        let (k, val) = match part.split_once('=') {
            Some((k, val)) => (k.trim(), Some(val.trim())),
            None => (part.trim(), None),
        };
        match (k, val) {
            ("type", Some(t)) => kind = t.to_string(),
            ("source" | "src", Some(s)) => source = Some(s.to_string()),
            ("target" | "destination" | "dst", Some(t)) => target = Some(t.to_string()),
            ("readonly" | "ro", None) => readonly = true,
            ("readonly" | "ro", Some(b)) => readonly = b != "false" && b != "0",
            ("tmpfs-size", Some(s)) => tmpfs.push(format!(
                "size={}",
                crate::timefmt::ram_in_bytes(s).map_err(|e| format!("--mount {v:?}: {e}"))?
            )),
            ("tmpfs-mode", Some(m)) => {
                let m = u32::from_str_radix(m, 8)
                    .map_err(|_| format!("--mount {v:?}: tmpfs-mode {m:?} is not octal"))?;
                tmpfs.push(format!("mode={m:o}"));
            }
            ("volume-nocopy" | "bind-propagation" | "consistency", _) => {}
            _ => return Err(format!("unexpected key {k:?} in --mount {v:?}")),
        }
    }
    let target = check_target(
        target
            .as_deref()
            .ok_or_else(|| format!("--mount {v:?}: target is required"))?,
        "--mount",
    )?;
    Ok(match kind.as_str() {
        "bind" => {
            let s = source.ok_or_else(|| format!("--mount {v:?}: source is required"))?;
            if !s.starts_with('/') {
                return Err(format!(
                    "--mount {v:?}: the bind source {s:?} is not an absolute path"
                ));
            }
            MountRequest::Bind {
                source: PathBuf::from(s),
                target,
                readonly,
                create: false,
            }
        }
        "volume" => {
            if let Some(n) = source.as_deref().filter(|n| !valid_name(n)) {
                return Err(format!("--mount {v:?}: invalid volume name {n:?}"));
            }
            MountRequest::Volume {
                name: source,
                target,
                readonly,
            }
        }
        "tmpfs" => {
            if source.is_some() {
                return Err(format!("--mount {v:?}: a tmpfs mount takes no source"));
            }
            MountRequest::Tmpfs {
                target,
                options: tmpfs_options(&tmpfs.join(",")),
            }
        }
        other => return Err(format!("--mount {v:?}: unsupported type {other:?}")),
    })
}

/// `--tmpfs PATH[:OPTIONS]` (mount(8) options; Docker's default mode 1777, noexec, nosuid, nodev).
pub fn parse_tmpfs_flag(v: &str) -> Result<MountRequest, String> {
    let (t, opts) = v.split_once(':').unwrap_or((v, ""));
    Ok(MountRequest::Tmpfs {
        target: check_target(t, "--tmpfs")?,
        options: tmpfs_options(opts),
    })
}

/// The options a tmpfs is mounted with: the user's, with Docker's mode (1777) unless given.
fn tmpfs_options(opts: &str) -> String {
    let mut o: Vec<&str> = opts.split(',').filter(|o| !o.is_empty()).collect();
    if !o.iter().any(|x| x.starts_with("mode=")) {
        o.insert(0, "mode=1777");
    }
    o.join(",")
}
