/// Runs `prog` on a call as the kernel would, for tests: the action's return value.
fn run(prog: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => {
                let o = i.k as usize;
                acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
            }
            AND => acc &= i.k,
            JA => pc += i.k as usize,
            JEQ | JGT | JGE => {
                let t = match i.code {
                    JEQ => acc == i.k,
                    JGT => acc > i.k,
                    _ => acc >= i.k,
                };
                pc += usize::from(if t { i.jt } else { i.jf });
            }
            RET => return i.k,
            c => panic!("unknown opcode {c:#x}"),
        }
    }
}

use super::*;
use crate::runtime::caps;

fn call(prog: &[Insn], name: &str, args: [u64; 6]) -> Action {
    let r = run(prog, AUDIT_ARCH_X86_64, number(name).unwrap(), args);
    match r & 0xffff_0000 {
        0x7fff_0000 => Action::Allow,
        0x0005_0000 => Action::Errno((r & 0xffff) as u16),
        _ => Action::KillProcess,
    }
}

#[test]
fn default_blocks_what_docker_blocks() {
    let prog = compile(&default_profile(caps::default_mask()));
    assert!(prog.len() < 4096, "BPF_MAXINSNS");
    for ok in [
        "read",
        "write",
        "openat",
        "execve",
        "mknodat",
        "fchmodat2",
        "ptrace",
    ] {
        assert_eq!(call(&prog, ok, [0; 6]), Action::Allow, "{ok}");
    }
    for no in [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "unshare",
        "mount",
        "kexec_load",
        "open_by_handle_at",
        "setns",
        "pivot_root",
        "init_module",
        "swapon",
        "userfaultfd",
    ] {
        assert_eq!(call(&prog, no, [0; 6]), Action::Errno(EPERM), "{no}");
    }
    assert_eq!(call(&prog, "clone3", [0; 6]), Action::Errno(ENOSYS));
    // fork-like clone passes; clone with CLONE_NEWUSER (0x10000000) does not
    assert_eq!(
        call(&prog, "clone", [0x01200011, 0, 0, 0, 0, 0]),
        Action::Allow
    );
    assert_eq!(
        call(&prog, "clone", [0x10000000 | 17, 0, 0, 0, 0, 0]),
        Action::Errno(EPERM)
    );
    assert_eq!(
        call(&prog, "personality", [8, 0, 0, 0, 0, 0]),
        Action::Allow
    );
    assert_eq!(
        call(&prog, "personality", [0xffff_ffff, 0, 0, 0, 0, 0]),
        Action::Allow
    );
    assert_eq!(
        call(&prog, "personality", [0x1_0000_0008, 0, 0, 0, 0, 0]),
        Action::Errno(EPERM)
    );
    assert_eq!(
        call(&prog, "personality", [0x0040000, 0, 0, 0, 0, 0]),
        Action::Errno(EPERM)
    );
    // other architectures and x32 calls, and numbers past the table
    assert_eq!(
        run(&prog, 0x4000_0003, 1, [0; 6]),
        Action::Errno(ENOSYS).ret()
    );
    assert_eq!(
        run(&prog, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1, [0; 6]),
        Action::Errno(ENOSYS).ret()
    );
    assert_eq!(
        run(&prog, AUDIT_ARCH_X86_64, 999, [0; 6]),
        Action::Errno(ENOSYS).ret()
    );
    // a known call the profile leaves out
    assert_eq!(call(&prog, "uselib", [0; 6]), Action::Errno(EPERM));
}

#[test]
fn capabilities_open_their_calls() {
    let admin = caps::resolve(&["SYS_ADMIN".into()], &[]).unwrap();
    let prog = compile(&default_profile(admin));
    for ok in ["mount", "unshare", "setns", "clone3"] {
        assert_eq!(call(&prog, ok, [0; 6]), Action::Allow, "{ok}");
    }
    assert_eq!(
        call(&prog, "clone", [0x10000000, 0, 0, 0, 0, 0]),
        Action::Allow
    );
    // keyctl is not namespaced: denied even with CAP_SYS_ADMIN, as Docker
    assert_eq!(call(&prog, "keyctl", [0; 6]), Action::Errno(EPERM));
    let syslog = caps::resolve(&["SYSLOG".into()], &[]).unwrap();
    assert_eq!(
        call(&compile(&default_profile(syslog)), "syslog", [0; 6]),
        Action::Allow
    );
    let none = caps::resolve(&[], &["ALL".into()]).unwrap();
    let prog = compile(&default_profile(none));
    assert_eq!(call(&prog, "chroot", [0; 6]), Action::Errno(EPERM));
}

#[test]
fn comparisons_on_64_bit_arguments() {
    let nr = number("getpid").unwrap();
    let v = 0x1_0000_0005u64;
    for (op, yes, no) in [
        (Op::Eq, v, v + 1),
        (Op::Ne, v + 1, v),
        (Op::Gt, v + 1, v),
        (Op::Gt, 0x2_0000_0000, 0x0_ffff_ffff),
        (Op::Ge, v, v - 1),
        (Op::Lt, v - 1, v),
        (Op::Lt, 0x0_ffff_ffff, 0x1_0000_0006),
        (Op::Le, v, v + 1),
        (Op::MaskedEq(0xff), 0x7_0000_0005, 0x6),
    ] {
        let p = Profile {
            default: Action::Errno(1),
            rules: vec![Rule {
                nr,
                conds: vec![Cond {
                    index: 3,
                    op,
                    value: if let Op::MaskedEq(_) = op { 5 } else { v },
                }],
                action: Action::Allow,
            }],
        };
        let prog = compile(&p);
        let args = |x| [0, 0, 0, x, 0, 0];
        assert_eq!(
            call(&prog, "getpid", args(yes)),
            Action::Allow,
            "{op:?} {yes:#x}"
        );
        assert_eq!(
            call(&prog, "getpid", args(no)),
            Action::Errno(1),
            "{op:?} {no:#x}"
        );
    }
}

#[test]
fn docker_format_profiles() {
    let text = r#"{
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "syscalls": [
            {"names": ["read", "write", "exit_group", "_llseek"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["iopl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}]}
        ]}"#;
    let p = parse_docker("p.json", text, caps::default_mask()).unwrap();
    let prog = compile(&p);
    assert_eq!(call(&prog, "read", [0; 6]), Action::Allow);
    assert_eq!(call(&prog, "mkdir", [0; 6]), Action::Errno(13));
    assert_eq!(call(&prog, "chroot", [0; 6]), Action::Allow);
    assert_eq!(call(&prog, "iopl", [0; 6]), Action::Errno(1));
    assert_eq!(call(&prog, "socket", [2, 0, 0, 0, 0, 0]), Action::Allow);
    assert_eq!(call(&prog, "socket", [40, 0, 0, 0, 0, 0]), Action::Errno(1));
    let e = parse_docker("p.json", r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, 0).unwrap_err();
    assert!(e.to_string().contains("p.json") && e.to_string().contains("SCMP_ACT_NOTIFY"));
}

#[test]
fn debian_profile_compiles_when_present() {
    let path = "/usr/share/containers/seccomp.json";
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("skipped: {path} is absent (Debian's containers-common)");
        return;
    };
    let p = parse_docker(path, &text, caps::default_mask()).unwrap();
    let prog = compile(&p);
    assert_eq!(call(&prog, "read", [0; 6]), Action::Allow);
    assert_eq!(call(&prog, "kexec_load", [0; 6]), Action::Errno(1));
}
