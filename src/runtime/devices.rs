//! Which devices a container may use. A container keeps CAP_MKNOD (Docker's default set does),
//! so the node it can make is not the boundary: the device controller is. Like Docker (runc's
//! `AllowedDevices`), a container may create any node (`m`) but read or write only null, zero,
//! full, random, urandom, tty, console, ptmx and its own pseudo-terminals, plus what `--device`
//! adds; `--privileged` lifts the list.
//!
//! cgroup v1 (this machine): a `devices` cgroup with `devices.deny a` then one `devices.allow`
//! line per rule. cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to
//! the container's cgroup, compiled from the same rules ([`ebpf_program`]); it follows runc's
//! `devicefilter` and is untested on this cgroup v1 machine.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// One allow rule: `kind` `c`, `b` or `a` (all), `None` for any major or minor, and access
/// letters out of `rwm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: String,
}

impl Rule {
    fn new(kind: char, major: Option<u32>, minor: Option<u32>, access: &str) -> Rule {
        Rule {
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    /// The line cgroup v1's `devices.allow` takes: `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let n = |x: Option<u32>| x.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// Docker's default allow list (runc libcontainer/specconv `AllowedDevices`, without the tun
/// device runc dropped in 1.2).
pub fn default_rules() -> Vec<Rule> {
    let c = |maj, min| Rule::new('c', Some(maj), Some(min), "rwm");
    vec![
        Rule::new('c', None, None, "m"),
        Rule::new('b', None, None, "m"),
        c(1, 3),                                // null
        c(1, 5),                                // zero
        c(1, 7),                                // full
        c(1, 8),                                // random
        c(1, 9),                                // urandom
        c(5, 0),                                // tty
        c(5, 1),                                // console
        c(5, 2),                                // ptmx
        Rule::new('c', Some(136), None, "rwm"), // the container's own /dev/pts
    ]
}

/// A host device given with `--device HOST[:CONTAINER[:PERMS]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub host: PathBuf,
    pub container: String,
    pub access: String,
    pub kind: char,
    pub major: u32,
    pub minor: u32,
}

/// Parses `--device` as Docker does and looks the node up on the host.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, ctr, access) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, x] if !x.starts_with('/') && is_access(x) => (*h, *h, *x),
        [h, c] => (*h, *c, "rwm"),
        [h, c, a] => (*h, *c, *a),
        _ => return Err(format!("invalid device specification: {s:?}")),
    };
    if !is_access(access) {
        return Err(format!(
            "invalid device mode {access:?} in {s:?}: use letters of rwm"
        ));
    }
    if !ctr.starts_with('/') {
        return Err(format!(
            "invalid device path {ctr:?} in {s:?}: must be absolute"
        ));
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(host)
        .map_err(|e| format!("error gathering device information for {host:?}: {e}"))?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return Err(format!("{host:?} is not a device node"));
    };
    let rdev = meta.rdev();
    Ok(Device {
        host: PathBuf::from(host),
        container: ctr.to_string(),
        access: access.to_string(),
        kind,
        major: libc::major(rdev),
        minor: libc::minor(rdev),
    })
}

fn is_access(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
}

/// The rules for a container: the default list plus its devices; `None` for `--privileged`
/// (every device).
pub fn rules_for(privileged: bool, devices: &[Device]) -> Option<Vec<Rule>> {
    if privileged {
        return None;
    }
    let mut r = default_rules();
    for d in devices {
        r.push(Rule::new(d.kind, Some(d.major), Some(d.minor), &d.access));
    }
    Some(r)
}

/// Where the cgroup hierarchies are.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether this host uses the unified (v2) hierarchy only.
pub fn unified() -> bool {
    crate::sys::fs_type(Path::new(CGROUP_ROOT)).ok() == Some(CGROUP2_SUPER_MAGIC)
}
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Creates the device cgroup `name` (a path below the hierarchy's `kiln/`) holding `rules`, and
/// returns its directory for the helper to join. On cgroup v1 it is `devices/kiln/NAME`; on v2,
/// `kiln/NAME` with the eBPF program attached.
pub fn create(name: &str, rules: &[Rule]) -> io::Result<PathBuf> {
    if unified() {
        let dir = Path::new(CGROUP_ROOT).join("kiln").join(name);
        std::fs::create_dir_all(&dir)?;
        if let Err(e) = attach_v2(&dir, rules) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        return Ok(dir);
    }
    let base = Path::new(CGROUP_ROOT).join("devices");
    if !base.join("devices.deny").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no cgroup v1 devices controller at {}: the container's device access cannot be limited",
                base.display()
            ),
        ));
    }
    let dir = base.join("kiln").join(name);
    std::fs::create_dir_all(&dir)?;
    let write = |f: &str, v: &str| {
        std::fs::write(dir.join(f), v).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("write {v:?} to {}: {e}", dir.join(f).display()),
            )
        })
    };
    let r = (|| {
        write("devices.deny", "a")?;
        for rule in rules {
            write("devices.allow", &rule.v1_line())?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_dir(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// Removes a container's or step's cgroup directory. Its last processes may still be on their
/// way out (a cgroup with members cannot be removed), so it tries again for up to half a second.
pub fn remove_cgroup(dir: &Path) {
    let mut wait = std::time::Duration::from_micros(200);
    let mut total = std::time::Duration::ZERO;
    while total < std::time::Duration::from_millis(500) {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(wait);
        total += wait;
        wait = (wait * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Removes device cgroups `kiln/PREFIX<pid>-*` whose process `pid` is gone (what a killed build
/// left); a cgroup that still holds processes is kept.
pub fn sweep(prefix: &str) {
    let base = if unified() {
        Path::new(CGROUP_ROOT).join("kiln")
    } else {
        Path::new(CGROUP_ROOT).join("devices").join("kiln")
    };
    let Ok(rd) = std::fs::read_dir(&base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// An eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BpfInsn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

fn bi(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The cgroup v2 device program for `rules` (runc's devicefilter): the context
/// (`struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`, access in the high
/// 16 bits, type in the low) is loaded into R2 (type), R3 (access), R4 (major), R5 (minor);
/// each rule checks what it constrains and returns 1 on a match; the end returns 0.
pub fn ebpf_program(rules: &[Rule]) -> Vec<BpfInsn> {
    const LDXW: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
    const AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K (32-bit)
    const RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
    const MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
    const MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
    const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
    const EXIT: u8 = 0x95;
    let mut p = vec![
        bi(LDXW, 2, 1, 0, 0), // r2 = ctx->access_type
        bi(AND_K, 2, 0, 0, 0xffff),
        bi(LDXW, 3, 1, 0, 0), // r3 = access_type >> 16
        bi(RSH_K, 3, 0, 0, 16),
        bi(LDXW, 4, 1, 4, 0), // r4 = major
        bi(LDXW, 5, 1, 8, 0), // r5 = minor
    ];
    for r in rules {
        let mut block: Vec<BpfInsn> = Vec::new();
        // Each check jumps past the block (patched below) when it fails.
        let kind = match r.kind {
            'b' => Some(1),
            'c' => Some(2),
            _ => None,
        };
        if let Some(t) = kind {
            block.push(bi(JNE_K, 2, 0, 0, t));
        }
        let mut acc = 0;
        for c in r.access.chars() {
            acc |= match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => 0,
            };
        }
        if acc != 7 {
            // (access & ~acc) must be 0: r1 = r3 & ~acc; if r1 != 0 fail
            block.push(bi(MOV_X, 1, 3, 0, 0));
            block.push(bi(AND_K, 1, 0, 0, !acc & 7));
            block.push(bi(JNE_K, 1, 0, 0, 0));
        }
        if let Some(m) = r.major {
            block.push(bi(JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = r.minor {
            block.push(bi(JNE_K, 5, 0, 0, m as i32));
        }
        block.push(bi(MOV_K, 0, 0, 0, 1));
        block.push(bi(EXIT, 0, 0, 0, 0));
        let n = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K {
                // jump to the first instruction after the block
                ins.off = (n - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(bi(MOV_K, 0, 0, 0, 0));
    p.push(bi(EXIT, 0, 0, 0, 0));
    p
}

/// Loads the device program for `rules` and attaches it to the cgroup `dir` (cgroup v2).
fn attach_v2(dir: &Path, rules: &[Rule]) -> io::Result<()> {
    let prog = ebpf_program(rules);
    let cg = std::fs::File::open(dir)?;
    crate::sys::proc::attach_device_program(&prog, std::os::fd::AsFd::as_fd(&cg)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("attach the device filter to {}: {e}", dir.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_are_dockers() {
        let lines: Vec<String> = default_rules().iter().map(Rule::v1_line).collect();
        assert_eq!(lines[0], "c *:* m");
        assert!(lines.contains(&"c 1:3 rwm".to_string()));
        assert!(lines.contains(&"c 136:* rwm".to_string()));
        assert!(!lines
            .iter()
            .any(|l| l.starts_with('b') && l.ends_with("rwm")));
    }

    #[test]
    fn device_flag() {
        let d = parse_device("/dev/null").unwrap();
        assert_eq!((d.kind, d.major, d.minor), ('c', 1, 3));
        assert_eq!(d.container, "/dev/null");
        let d = parse_device("/dev/null:/dev/mynull:r").unwrap();
        assert_eq!(
            (d.container.as_str(), d.access.as_str()),
            ("/dev/mynull", "r")
        );
        let d = parse_device("/dev/null:rw").unwrap();
        assert_eq!(
            (d.container.as_str(), d.access.as_str()),
            ("/dev/null", "rw")
        );
        assert!(parse_device("/dev/null:/x:q").unwrap_err().contains("rwm"));
        assert!(parse_device("/etc/passwd")
            .unwrap_err()
            .contains("not a device"));
        assert!(parse_device("/nope").unwrap_err().contains("/nope"));
    }

    /// Runs the device program on one access, as the kernel's verifier-checked program would.
    fn eval(p: &[BpfInsn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access << 16 | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                0x61 => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                0x54 => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                0x74 => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                0xbc => r[dst] = r[src] as u32 as u64,
                0xb4 => r[dst] = i.imm as u32 as u64,
                0x55 => {
                    if r[dst] != i.imm as u32 as u64 {
                        pc += i.off as usize;
                    }
                }
                0x95 => return r[0],
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn ebpf_program_allows_the_list_only() {
        let p = ebpf_program(&default_rules());
        let (blk, chr, m, r, w) = (1, 2, 1, 2, 4);
        assert_eq!(eval(&p, chr, r | w, 1, 3), 1, "null");
        assert_eq!(eval(&p, chr, r, 136, 7), 1, "pts");
        assert_eq!(eval(&p, blk, m, 7, 0), 1, "mknod of a loop device");
        assert_eq!(eval(&p, blk, r | w, 7, 0), 0, "read/write a loop device");
        assert_eq!(eval(&p, chr, w, 1, 11), 0, "kmsg");
        let ro = vec![Rule::new('c', Some(1), Some(11), "r")];
        let p = ebpf_program(&ro);
        assert_eq!(eval(&p, chr, r, 1, 11), 1);
        assert_eq!(eval(&p, chr, w, 1, 11), 0);
    }
}
