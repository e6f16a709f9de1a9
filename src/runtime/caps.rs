//! Linux capabilities by name, and the set a container gets: Docker's default set, changed by
//! `--cap-add`/`--cap-drop` (Docker's rules: names with or without `CAP_`, any case, `ALL`;
//! drops apply first, so `--cap-drop ALL --cap-add NET_ADMIN` leaves exactly NET_ADMIN), or every
//! capability with `--privileged`.

/// Capability names by number (linux/capability.h), without the `CAP_` prefix.
pub const NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SYS_CHROOT",
    "MKNOD",
    "AUDIT_WRITE",
    "SETFCAP",
];

/// Every capability this table knows, as a mask.
pub fn all() -> u64 {
    (1u64 << NAMES.len()) - 1
}

/// The number of a capability name (`NET_ADMIN`, `cap_net_admin`, ...).
pub fn number(name: &str) -> Option<u32> {
    let up = name.to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// Docker's default set as a mask.
pub fn default_mask() -> u64 {
    DOCKER_DEFAULT
        .iter()
        .fold(0, |m, n| m | 1u64 << number(n).expect("known name"))
}

/// The set for `--cap-drop` then `--cap-add` over the default set; an unknown name is an error
/// naming it.
pub fn resolve(add: &[String], drop: &[String]) -> Result<u64, String> {
    let mask_of = |names: &[String]| -> Result<u64, String> {
        let mut m = 0;
        for n in names {
            if n.eq_ignore_ascii_case("ALL") {
                m |= all();
            } else {
                let c = number(n).ok_or_else(|| format!("unknown capability: {n:?}"))?;
                m |= 1u64 << c;
            }
        }
        Ok(m)
    };
    let (a, d) = (mask_of(add)?, mask_of(drop)?);
    Ok((default_mask() & !d) | a)
}

/// The names in `mask`, `CAP_`-prefixed, in number order.
pub fn names(mask: u64) -> Vec<String> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1u64 << i) != 0)
        .map(|(_, n)| format!("CAP_{n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("net_admin"), Some(12));
        assert_eq!(number("CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("NOPE"), None);
        assert_eq!(names(1 << 21), vec!["CAP_SYS_ADMIN"]);
    }

    #[test]
    fn drop_then_add_as_docker() {
        assert_eq!(resolve(&[], &[]).unwrap(), default_mask());
        let only = resolve(&["NET_ADMIN".into()], &["ALL".into()]).unwrap();
        assert_eq!(only, 1 << 12);
        let no_mknod = resolve(&[], &["mknod".into()]).unwrap();
        assert_eq!(no_mknod & (1 << 27), 0);
        assert_eq!(resolve(&["ALL".into()], &[]).unwrap(), all());
        assert!(resolve(&["SYS_NOPE".into()], &[])
            .unwrap_err()
            .contains("SYS_NOPE"));
    }
}
