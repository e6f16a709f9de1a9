//! The root's layout, checked without root: a recording [`Syscall`] stands in for mount(2) and
//! mknod(2); directories, files and symlinks are made for real in a temporary root.

use super::*;
use crate::runtime::{devices::Device, ExtraMount, Ids, Net, Security};
use std::cell::RefCell;

/// Records each call as one line: `mount SOURCE TARGET FSTYPE FLAGS DATA`, `mknod PATH MODE DEV`,
/// with targets shown inside the root (`/proc/self/fd/N` resolved, the root's prefix dropped).
struct Recorder {
    root: PathBuf,
    calls: RefCell<Vec<String>>,
}

impl Recorder {
    fn inside(&self, p: &Path) -> String {
        let real = std::fs::read_link(p).unwrap_or_else(|_| p.to_path_buf());
        match real.strip_prefix(&self.root) {
            Ok(r) => format!("/{}", r.display()),
            Err(_) => real.display().to_string(),
        }
    }
}

impl Syscall for Recorder {
    fn mount(
        &self,
        source: &str,
        target: &OsStr,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> io::Result<()> {
        let source = if source.starts_with(self.root.to_str().unwrap()) {
            self.inside(Path::new(source))
        } else {
            source.to_string()
        };
        let flags: Vec<&str> = flags.iter_names().map(|(n, _)| n).collect();
        self.calls.borrow_mut().push(format!(
            "mount {source} {} {fstype} {} {data}",
            self.inside(Path::new(target)),
            flags.join(" | ")
        ));
        Ok(())
    }
    fn mknodat(&self, dir: BorrowedFd<'_>, name: &OsStr, mode: u32, dev: u64) -> io::Result<()> {
        let d = self.inside(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())));
        self.calls.borrow_mut().push(format!(
            "mknod {}/{} {mode:o} {dev}",
            d.trim_end_matches('/'),
            name.to_string_lossy()
        ));
        Ok(())
    }
}

fn spec(root: &Path, files: &Path) -> Spec {
    Spec {
        rootfs: Rootfs::Dir(root.to_path_buf()),
        argv: vec!["/bin/sh".into(), "-c".into(), "x".repeat(MAX_ARG_STRLEN)],
        env: vec![],
        cwd: "/".into(),
        ids: Ids::default(),
        hostname: "h".into(),
        net: Net::Private,
        files: vec![("/etc/hosts".into(), files.join("hosts"))],
        stubs: vec![
            ("/proc".into(), true),
            ("/sys".into(), true),
            ("/dev".into(), true),
            ("/etc/hosts".into(), false),
        ],
        script: Some(("run".into(), "#!/bin/sh\necho hi\n".into())),
        no_new_privs: true,
        mask_proc: true,
        tty: false,
        winsize: None,
        cgroups: vec![],
        mounts: vec![
            ExtraMount::Tmpfs {
                target: "/tmp/t".into(),
                options: "mode=1777".into(),
            },
            ExtraMount::ReadOnly {
                target: "/run/secrets/s".into(),
                source: files.join("s"),
            },
        ],
        security: Security {
            devices: vec![Device {
                host: "/dev/fuse".into(),
                container: "/dev/fuse".into(),
                access: "rwm".into(),
                kind: 'c',
                major: 10,
                minor: 229,
            }],
            ..Security::default()
        },
        init: false,
    }
}

#[test]
fn the_root_is_laid_out_as_docker_lays_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let files = dir.path().join("files");
    for d in [&root, &files] {
        std::fs::create_dir_all(d).unwrap();
    }
    for f in ["hosts", "s"] {
        std::fs::write(files.join(f), "").unwrap();
    }
    for d in ["tmp/t", "run/secrets"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("run/secrets/s"), "").unwrap();
    let rec = Recorder {
        root: std::fs::canonicalize(&root).unwrap(),
        calls: RefCell::new(vec![]),
    };
    let (rootfs, argv) = prepare_root(&rec, &spec(&root, &files), false);
    assert_eq!(rootfs, root);
    let calls = rec.calls.into_inner();
    let none = "";
    let host = |f: &str| files.join(f).display().to_string();
    let want: Vec<String> = [
        format!("mount / / {none} MS_BIND | MS_REC {none}"),
        "mount proc /proc proc MS_NOSUID | MS_NODEV | MS_NOEXEC ".into(),
        "mount sysfs /sys sysfs MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC ".into(),
        "mount tmpfs /dev tmpfs MS_NOSUID | MS_STRICTATIME mode=755,size=65536k".into(),
        "mount /dev/null /dev/null  MS_BIND ".into(),
        "mount /dev/zero /dev/zero  MS_BIND ".into(),
        "mount /dev/full /dev/full  MS_BIND ".into(),
        "mount /dev/random /dev/random  MS_BIND ".into(),
        "mount /dev/urandom /dev/urandom  MS_BIND ".into(),
        "mount /dev/tty /dev/tty  MS_BIND ".into(),
        "mount devpts /dev/pts devpts MS_NOSUID | MS_NOEXEC newinstance,ptmxmode=0666,mode=0620"
            .into(),
        "mount shm /dev/shm tmpfs MS_NOSUID | MS_NODEV | MS_NOEXEC mode=1777,size=65536k".into(),
        "mount mqueue /dev/mqueue mqueue MS_NOSUID | MS_NODEV | MS_NOEXEC ".into(),
        "mknod /dev/fuse 20666 2789".into(),
        format!("mount {} /etc/hosts  MS_BIND ", host("hosts")),
        "mount tmpfs /tmp/t tmpfs MS_NOSUID | MS_NODEV mode=1777".into(),
        format!("mount {} /run/secrets/s  MS_BIND ", host("s")),
        "mount  /run/secrets/s  MS_RDONLY | MS_REMOUNT | MS_BIND ".into(),
    ]
    .into_iter()
    .collect();
    assert_eq!(calls, want, "{calls:#?}");
    // What the setup made for real: the stubs, /dev's directories and links, the scripts.
    assert!(root.join("proc").is_dir() && root.join("etc/hosts").is_file());
    for d in ["pts", "shm", "mqueue", "pipes"] {
        assert!(root.join("dev").join(d).is_dir(), "/dev/{d}");
    }
    assert_eq!(
        std::fs::read_link(root.join("dev/fd")).unwrap(),
        Path::new("/proc/self/fd")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("dev/pipes/run")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    // An argument too long for the kernel runs from /dev/pipes instead.
    assert_eq!(argv, ["/bin/sh", "/dev/pipes/command"]);
    assert_eq!(
        std::fs::metadata(root.join("dev/pipes/command"))
            .unwrap()
            .len(),
        MAX_ARG_STRLEN as u64
    );
}

#[test]
fn masking_covers_docker_s_paths() {
    let rec = Recorder {
        root: PathBuf::from("/nonexistent"),
        calls: RefCell::new(vec![]),
    };
    mask_proc(&rec);
    let calls = rec.calls.into_inner();
    // Every masked path that exists here gets a mount (a read-only tmpfs on a directory,
    // /dev/null on a file); /proc/sys is made read-only (bind, then remount).
    for m in MASKED {
        let Ok(meta) = std::fs::symlink_metadata(m) else {
            continue;
        };
        let want = if meta.is_dir() {
            format!("mount tmpfs {m} tmpfs MS_RDONLY size=0k")
        } else {
            format!("mount /dev/null {m}  MS_BIND ")
        };
        assert!(calls.contains(&want), "{want:?} not in {calls:#?}");
    }
    assert!(calls
        .iter()
        .any(|c| c.starts_with("mount /proc/sys /proc/sys  MS_RDONLY | MS_REMOUNT | MS_BIND")));
    for c in &calls {
        let target = c.split(' ').nth(2).unwrap();
        assert!(
            MASKED.contains(&target) || READONLY.contains(&target),
            "unexpected mount {c}"
        );
    }
}
