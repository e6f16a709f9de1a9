//! Seccomp: which system calls a container may make, as a classic BPF program the init helper
//! installs just before it drops capabilities (so the filter also holds for RUN steps, which do
//! not set no_new_privs) and execs.
//!
//! A [`Profile`] is a list of rules over syscall numbers, each with argument conditions and an
//! action; the first matching rule decides, rules with conditions before unconditional ones
//! (libseccomp's precedence of the more specific rule), else the default action. It comes from
//! kiln's default (Docker's rules, see [`default`], resolved against the container's
//! capabilities) or from a Docker-format JSON profile (`--security-opt seccomp=PATH`).
//!
//! The compiled program checks the architecture (only x86_64 calls pass; i386 and x32 calls get
//! ENOSYS, so nothing reaches the kernel by another call table), then walks a binary decision
//! tree over the syscall numbers. Unknown numbers above the newest call kiln knows get ENOSYS
//! rather than the default action, as runc does, so a newer libc falls back instead of failing
//! on a call this table predates.

mod default;
mod syscalls;

use serde::{Deserialize, Serialize};

/// What a rule does to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Errno(u16),
    KillThread,
    KillProcess,
    Trap,
    Log,
    Trace(u16),
}

impl Action {
    fn ret(self) -> u32 {
        match self {
            Action::Allow => 0x7fff_0000,
            Action::Errno(e) => 0x0005_0000 | u32::from(e),
            Action::KillThread => 0,
            Action::KillProcess => 0x8000_0000,
            Action::Trap => 0x0003_0000,
            Action::Log => 0x7ffc_0000,
            Action::Trace(d) => 0x7ff0_0000 | u32::from(d),
        }
    }
}

/// How an argument is compared (libseccomp's `SCMP_CMP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & mask) == value`
    MaskedEq(u64),
}

/// One condition on argument `index` (0-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
}

/// A rule: when call `nr` is made and every condition holds, `action`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub nr: u32,
    pub conds: Vec<Cond>,
    pub action: Action,
}

/// A whole filter, before compilation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub default: Action,
    pub rules: Vec<Rule>,
}

/// A profile that cannot be used, naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {path}: {msg}")]
    Invalid { path: String, msg: String },
}

const EPERM: u16 = libc::EPERM as u16;
const ENOSYS: u16 = libc::ENOSYS as u16;

/// The number of an x86_64 system call.
pub fn number(name: &str) -> Option<u32> {
    syscalls::X86_64
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| syscalls::X86_64[i].1)
}

fn max_known() -> u32 {
    syscalls::X86_64.iter().map(|(_, n)| *n).max().unwrap_or(0)
}

/// kiln's default profile for a container whose capability set is `caps`.
pub fn default_profile(caps: u64) -> Profile {
    let has = |name: &str| {
        let c = super::caps::number(name).expect("known capability");
        caps & (1u64 << c) != 0
    };
    let mut rules = Vec::new();
    let add = |names: &str, action: Action, rules: &mut Vec<Rule>| {
        for n in names.split_whitespace() {
            let nr = number(n).unwrap_or_else(|| panic!("unknown syscall {n} in the default"));
            rules.push(Rule {
                nr,
                conds: vec![],
                action,
            });
        }
    };
    add(default::ALLOW, Action::Allow, &mut rules);
    // A call named under several capabilities (syslog, bpf, perf_event_open) is allowed when
    // any of them is held.
    let mut gated: std::collections::BTreeMap<&str, bool> = Default::default();
    for (cap, names) in default::BY_CAP {
        for n in names.split_whitespace() {
            *gated.entry(n).or_default() |= has(cap);
        }
    }
    for (n, allowed) in gated {
        let action = if allowed {
            Action::Allow
        } else {
            Action::Errno(EPERM)
        };
        add(n, action, &mut rules);
    }
    for p in default::PERSONALITIES {
        rules.push(Rule {
            nr: number("personality").expect("known"),
            conds: vec![Cond {
                index: 0,
                op: Op::Eq,
                value: *p,
            }],
            action: Action::Allow,
        });
    }
    let clone = number("clone").expect("known");
    if has("SYS_ADMIN") {
        rules.push(Rule {
            nr: clone,
            conds: vec![],
            action: Action::Allow,
        });
    } else {
        rules.push(Rule {
            nr: clone,
            conds: vec![Cond {
                index: 0,
                op: Op::MaskedEq(default::CLONE_NAMESPACE_FLAGS),
                value: 0,
            }],
            action: Action::Allow,
        });
        // clone3 passes its flags in memory, where BPF cannot look: ENOSYS makes libc use clone.
        rules.retain(|r| r.nr != number("clone3").expect("known"));
        add("clone3", Action::Errno(ENOSYS), &mut rules);
    }
    // What the default leaves out answers EPERM, as Docker's does.
    Profile {
        default: Action::Errno(EPERM),
        rules,
    }
}

/// Docker's JSON profile format (moby `api/types/seccomp`), the fields kiln reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u16>,
    #[serde(default)]
    syscalls: Vec<DockerSyscall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerSyscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u16>,
    #[serde(default)]
    args: Option<Vec<DockerArg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

fn action(name: &str, errno: Option<u16>, default_errno: u16) -> Result<Action, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(default_errno)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_TRACE" => Action::Trace(errno.unwrap_or(0)),
        other => return Err(format!("unsupported action {other:?}")),
    })
}

fn kernel_at_least(want: &str) -> bool {
    let parse = |s: &str| -> (u32, u32) {
        let mut it = s.split(|c: char| !c.is_ascii_digit());
        let a = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let b = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        (a, b)
    };
    let have = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    parse(have.trim()) >= parse(want)
}

/// Reads a Docker-format profile for a container whose capability set is `caps`. Rules for
/// other architectures and calls x86_64 does not have are left out, as libseccomp does.
pub fn parse_docker(path: &str, text: &str, caps: u64) -> Result<Profile, SeccompError> {
    let bad = |msg: String| SeccompError::Invalid {
        path: path.to_string(),
        msg,
    };
    let p: DockerProfile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let default_errno = p.default_errno_ret.unwrap_or(EPERM);
    let default = action(&p.default_action, p.default_errno_ret, default_errno).map_err(bad)?;
    let has_caps = |list: &[String]| {
        list.iter()
            .all(|c| super::caps::number(c).is_some_and(|n| caps & (1u64 << n) != 0))
    };
    let amd64 = |list: &[String]| list.iter().any(|a| a == "amd64" || a == "x86_64");
    let mut rules = Vec::new();
    for s in &p.syscalls {
        if (!s.includes.arches.is_empty() && !amd64(&s.includes.arches))
            || (!s.includes.caps.is_empty() && !has_caps(&s.includes.caps))
            || s.includes
                .min_kernel
                .as_deref()
                .is_some_and(|k| !kernel_at_least(k))
            || amd64(&s.excludes.arches)
            || (!s.excludes.caps.is_empty() && has_caps(&s.excludes.caps))
        {
            continue;
        }
        let act = action(&s.action, s.errno_ret, default_errno).map_err(bad)?;
        let mut conds = Vec::new();
        for a in s.args.iter().flatten() {
            if a.index > 5 {
                return Err(bad(format!("argument index {} is out of range", a.index)));
            }
            let (op, value) = match a.op.as_str() {
                "SCMP_CMP_EQ" => (Op::Eq, a.value),
                "SCMP_CMP_NE" => (Op::Ne, a.value),
                "SCMP_CMP_LT" => (Op::Lt, a.value),
                "SCMP_CMP_LE" => (Op::Le, a.value),
                "SCMP_CMP_GT" => (Op::Gt, a.value),
                "SCMP_CMP_GE" => (Op::Ge, a.value),
                "SCMP_CMP_MASKED_EQ" => (Op::MaskedEq(a.value), a.value_two),
                other => return Err(bad(format!("unsupported comparison {other:?}"))),
            };
            conds.push(Cond {
                index: a.index,
                op,
                value,
            });
        }
        for n in s.names.iter().chain(s.name.iter()) {
            if let Some(nr) = number(n) {
                rules.push(Rule {
                    nr,
                    conds: conds.clone(),
                    action: act,
                });
            }
        }
    }
    Ok(Profile { default, rules })
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGT: u16 = 0x25;
const JGE: u16 = 0x35;
const JA: u16 = 0x05;
const AND: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RET: u16 = 0x06; // BPF_RET | BPF_K

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn off_arg(i: u8, high: bool) -> u32 {
    16 + 8 * u32::from(i) + if high { 4 } else { 0 }
}

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// A rule's checks: each condition falls through when it holds and jumps to the rule's end when
/// it does not; the rule ends with its action.
fn rule_code(r: &Rule) -> Vec<Insn> {
    // Built back to front so every jump to the end of the rule knows its distance.
    let mut code: Vec<Insn> = vec![ins(RET, 0, 0, r.action.ret())];
    for c in r.conds.iter().rev() {
        let hi = (c.value >> 32) as u32;
        let lo = c.value as u32;
        // `to_fail` is the distance from the instruction after the block to the rule's end.
        let after = code.len() as u32; // instructions between this block and the end, RET included
        let mut b: Vec<Insn> = Vec::new();
        let far = |n: u32| -> u8 { u8::try_from(n).expect("rule short enough for a jump") };
        match c.op {
            Op::Eq | Op::MaskedEq(_) => {
                let mask = if let Op::MaskedEq(m) = c.op {
                    m
                } else {
                    u64::MAX
                };
                b.push(ins(LD_W_ABS, 0, 0, off_arg(c.index, true)));
                b.push(ins(AND, 0, 0, (mask >> 32) as u32));
                b.push(ins(JEQ, 0, 0, hi & (mask >> 32) as u32)); // jf patched below
                b.push(ins(LD_W_ABS, 0, 0, off_arg(c.index, false)));
                b.push(ins(AND, 0, 0, mask as u32));
                b.push(ins(JEQ, 0, far(after), lo & mask as u32));
                // first JEQ's fail distance: 3 more instructions in this block, then `after`
                b[2].jf = far(after + 3);
            }
            Op::Ne => {
                // holds when either half differs
                b.push(ins(LD_W_ABS, 0, 0, off_arg(c.index, true)));
                b.push(ins(JEQ, 0, 2, hi)); // differs: skip to the end of the block
                b.push(ins(LD_W_ABS, 0, 0, off_arg(c.index, false)));
                b.push(ins(JEQ, far(after), 0, lo));
            }
            Op::Gt | Op::Ge | Op::Lt | Op::Le => {
                // arg > v (or >=) compared as (hi, lo); Lt/Le are the negations of Ge/Gt.
                let (strict, negate) = match c.op {
                    Op::Gt => (true, false),
                    Op::Ge => (false, false),
                    Op::Lt => (false, true),
                    _ => (true, true),
                };
                let lo_op = if strict { JGT } else { JGE };
                // [0] LD hi; [1] JGT hi -> above; [2] JEQ hi -> check lo, else below;
                // [3] LD lo; [4] lo_op lo -> above, else below
                let (above, below) = if negate { (after, 0) } else { (0, after) };
                b.push(ins(LD_W_ABS, 0, 0, off_arg(c.index, true)));
                b.push(ins(JGT, far(above + 3), 0, hi));
                b.push(ins(JEQ, 0, far(below + 2), hi));
                b.push(ins(LD_W_ABS, 0, 0, off_arg(c.index, false)));
                b.push(ins(lo_op, far(above), far(below), lo));
            }
        }
        b.extend(code);
        code = b;
    }
    code
}

/// The code for one syscall: its rules (conditional first), then `fallback`.
fn syscall_code(rules: &[&Rule], fallback: Action) -> Vec<Insn> {
    let mut code = Vec::new();
    let (cond, plain): (Vec<&&Rule>, Vec<&&Rule>) = rules.iter().partition(|r| !r.conds.is_empty());
    for r in cond {
        code.extend(rule_code(r));
    }
    let last = plain.first().map(|r| r.action).unwrap_or(fallback);
    code.push(ins(RET, 0, 0, last.ret()));
    code
}

/// Compiles `p` into a BPF program.
pub fn compile(p: &Profile) -> Vec<Insn> {
    let mut by_nr: std::collections::BTreeMap<u32, Vec<&Rule>> = Default::default();
    for r in &p.rules {
        by_nr.entry(r.nr).or_default().push(r);
    }
    let calls: Vec<(u32, Vec<Insn>)> = by_nr
        .into_iter()
        .map(|(nr, rules)| (nr, syscall_code(&rules, p.default)))
        .collect();
    let mut prog = vec![
        ins(LD_W_ABS, 0, 0, OFF_ARCH),
        ins(JEQ, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET, 0, 0, Action::Errno(ENOSYS).ret()),
        ins(LD_W_ABS, 0, 0, OFF_NR),
        ins(JGE, 0, 1, X32_SYSCALL_BIT),
        ins(RET, 0, 0, Action::Errno(ENOSYS).ret()),
        ins(JGT, 0, 1, max_known()),
        ins(RET, 0, 0, Action::Errno(ENOSYS).ret()),
    ];
    prog.extend(tree(&calls, p.default));
    prog
}

/// A binary decision tree over the sorted calls: `nr >= mid` goes right through a long jump,
/// else falls into the left half; leaves compare a few numbers each.
fn tree(calls: &[(u32, Vec<Insn>)], default: Action) -> Vec<Insn> {
    if calls.len() <= 4 {
        let mut code = Vec::new();
        for (nr, body) in calls {
            code.push(ins(JEQ, 1, 0, *nr));
            code.push(ins(JA, 0, 0, body.len() as u32));
            code.extend(body.iter().copied());
        }
        code.push(ins(RET, 0, 0, default.ret()));
        return code;
    }
    let mid = calls.len() / 2;
    let left = tree(&calls[..mid], default);
    let right = tree(&calls[mid..], default);
    let mut code = vec![
        ins(JGE, 0, 1, calls[mid].0),
        ins(JA, 0, 0, left.len() as u32),
    ];
    code.extend(left);
    code.extend(right);
    code
}

#[cfg(test)]
mod tests;
