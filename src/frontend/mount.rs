//! `RUN --mount`, parsed and validated once: a typed [`MountKind`] for the builder, and the
//! fields as written (aliases renamed), which is what the step key covers.

use std::collections::BTreeMap;

/// A `RUN --mount` value (`type=cache,target=/x,...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// The fields as written, by name (`dst`/`destination` -> `target`, `src` -> `source`,
    /// `readwrite` -> `rw`), without `type`: keyed as they are.
    pub fields: BTreeMap<String, String>,
}

/// What a mount is, with its fields checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// Files of the context or of `from` (a stage or image), read-only unless `rw`.
    Bind {
        target: String,
        source: String,
        from: Option<String>,
        rw: bool,
    },
    /// A directory kept across builds under `id` (the target by default), never keyed.
    Cache {
        target: String,
        id: Option<String>,
        sharing: Sharing,
        /// Seeds a new cache from this stage or image's `source`.
        from: Option<String>,
        source: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        target: String,
        /// Bytes.
        size: Option<u64>,
    },
    /// A `--secret` value as a file (default `/run/secrets/ID`) and/or an env variable.
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// An `--ssh` agent socket (default `/run/buildkit/ssh_agent.N`).
    Ssh {
        id: String,
        target: Option<String>,
        required: bool,
    },
}

/// A cache mount's `sharing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Every build uses it at once (the default).
    Shared,
    /// A build that finds it in use gets a fresh scratch directory.
    Private,
    /// Builds take turns.
    Locked,
}

impl Mount {
    /// The `type=` word.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            MountKind::Bind { .. } => "bind",
            MountKind::Cache { .. } => "cache",
            MountKind::Tmpfs { .. } => "tmpfs",
            MountKind::Secret { .. } => "secret",
            MountKind::Ssh { .. } => "ssh",
        }
    }

    /// The stage or image a bind or cache mount reads from.
    pub fn from(&self) -> Option<&str> {
        match &self.kind {
            MountKind::Bind { from, .. } | MountKind::Cache { from, .. } => from.as_deref(),
            _ => None,
        }
    }
}

/// Parses one `--mount` value (after expansion), as BuildKit: `type` defaults to bind; unknown
/// keys, types and values are errors that name the value.
pub fn parse_mount(v: &str) -> Result<Mount, String> {
    let mut kind = "bind".to_string();
    let mut fields = BTreeMap::new();
    for part in v.split(',').filter(|p| !p.is_empty()) {
        let (k, val) = match part.split_once('=') {
            Some((k, val)) => (k.trim().to_ascii_lowercase(), val.trim().to_string()),
            None => (part.trim().to_ascii_lowercase(), "true".to_string()),
        };
        let k = match k.as_str() {
            "dst" | "destination" => "target".to_string(),
            "src" => "source".to_string(),
            "readwrite" => "rw".to_string(),
            _ => k,
        };
        if k == "type" {
            kind = val;
            continue;
        }
        let known = [
            "target", "source", "from", "rw", "readonly", "ro", "id", "sharing", "mode", "uid",
            "gid", "size", "required", "env",
        ];
        if !known.contains(&k.as_str()) {
            return Err(format!("unexpected key '{k}' in '{v}'"));
        }
        fields.insert(k, val);
    }
    let get = |k: &str| fields.get(k).cloned();
    let flag = |k: &str| fields.get(k).is_some_and(|v| v != "false");
    let target = || get("target").ok_or_else(|| format!("mount {v:?}: target is required"));
    let source = || {
        let s = get("source").unwrap_or_default();
        let s = s.trim_start_matches('/');
        if s.is_empty() {
            ".".to_string()
        } else {
            s.to_string()
        }
    };
    let mode = |default: u32| match fields.get("mode") {
        None => Ok(default),
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| format!("invalid mode {m:?} in --mount={v}: want octal, such as 0755")),
    };
    let id_of = |k: &str| match fields.get(k) {
        None => Ok(0),
        Some(n) => n
            .parse::<u32>()
            .map_err(|_| format!("invalid {k} {n:?} in --mount={v}: want a number")),
    };
    let kind = match kind.as_str() {
        "bind" => MountKind::Bind {
            target: target()?,
            source: source(),
            from: get("from"),
            rw: flag("rw"),
        },
        "cache" => MountKind::Cache {
            target: target()?,
            id: get("id"),
            sharing: match fields.get("sharing").map(String::as_str) {
                None | Some("shared") => Sharing::Shared,
                Some("private") => Sharing::Private,
                Some("locked") => Sharing::Locked,
                Some(s) => return Err(format!("unsupported sharing value {s:?} in --mount={v}")),
            },
            from: get("from"),
            source: source(),
            mode: mode(0o755)?,
            uid: id_of("uid")?,
            gid: id_of("gid")?,
        },
        "tmpfs" => MountKind::Tmpfs {
            target: target()?,
            size: match fields.get("size") {
                None => None,
                Some(s) => Some(
                    crate::timefmt::ram_in_bytes(s)
                        .map_err(|e| format!("--mount=type=tmpfs: {e}"))?,
                ),
            },
        },
        "secret" => {
            let target = get("target");
            let id = get("id")
                .or_else(|| {
                    target
                        .as_deref()
                        .map(|t| t.rsplit('/').next().unwrap_or(t).to_string())
                })
                .filter(|id| !id.is_empty())
                .ok_or_else(|| format!("mount {v:?}: a secret needs an id or a target"))?;
            MountKind::Secret {
                id,
                target,
                env: get("env"),
                required: flag("required"),
                mode: mode(0o400)?,
                uid: id_of("uid")?,
                gid: id_of("gid")?,
            }
        }
        "ssh" => MountKind::Ssh {
            id: get("id").unwrap_or_else(|| "default".into()),
            target: get("target"),
            required: flag("required"),
        },
        other => return Err(format!("unsupported mount type {other:?} in --mount={v}")),
    };
    Ok(Mount { kind, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_typed_and_checked_once() {
        let m = parse_mount("type=cache,dst=/root/.cache,sharing=locked,mode=0700,uid=1").unwrap();
        assert_eq!(
            m.kind,
            MountKind::Cache {
                target: "/root/.cache".into(),
                id: None,
                sharing: Sharing::Locked,
                from: None,
                source: ".".into(),
                mode: 0o700,
                uid: 1,
                gid: 0,
            }
        );
        assert_eq!(m.fields["target"], "/root/.cache");
        let b = parse_mount("target=/src,src=/app,readwrite").unwrap();
        assert_eq!(
            b.kind,
            MountKind::Bind {
                target: "/src".into(),
                source: "app".into(),
                from: None,
                rw: true
            }
        );
        let s = parse_mount("type=secret,target=/run/secrets/token").unwrap();
        assert!(matches!(s.kind, MountKind::Secret { ref id, mode: 0o400, .. } if id == "token"));
        let t = parse_mount("type=tmpfs,target=/t,size=64m").unwrap();
        assert_eq!(
            t.kind,
            MountKind::Tmpfs {
                target: "/t".into(),
                size: Some(64 << 20)
            }
        );
        for (bad, says) in [
            ("type=nfs,target=/x", "unsupported mount type"),
            ("type=cache", "target is required"),
            ("type=cache,target=/x,sharing=all", "unsupported sharing"),
            ("type=cache,target=/x,mode=999", "invalid mode"),
            ("type=secret,target=/x,uid=root", "invalid uid"),
            ("type=secret", "needs an id"),
            ("type=tmpfs,target=/x,size=lots", "invalid size"),
            ("type=bind,target=/x,colour=red", "unexpected key"),
        ] {
            let e = parse_mount(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
