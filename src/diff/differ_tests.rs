//! The two snapshot differs held against each other on random trees and random changes: the
//! overlay differ (changes made through a real overlay mount) and the walk differ (the same
//! changes made on a plain copy) give the same layer entries, and each layer, stacked on the
//! parent, reproduces the child tree exactly. Needs root (overlay mounts); skips otherwise.

use super::tar::{write_entries, EntrySource, TarOptions};
use super::{apply_layer, overlay, walk};
use crate::rootfs::Root;
use crate::snapshotter::view::{Found, View};
use crate::sys;
use proptest::prelude::*;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FIXED_MTIME: i64 = 1_234_567_890;

#[derive(Clone, Debug)]
enum Base {
    File(String, Vec<u8>, u32),
    Dir(String, u32),
    Link(String, String),
}

#[derive(Clone, Debug)]
enum Op {
    Write(usize, Vec<u8>),
    NewFile(usize, String, Vec<u8>),
    Delete(usize),
    ReplaceDir(usize),
    Chmod(usize, u32),
    Chown(usize, u32),
    Xattr(usize, Vec<u8>),
    Mkdir(usize, String),
    Symlink(usize, String, String),
}

fn base_entry() -> impl Strategy<Value = Base> {
    let name = "[a-d]{1,2}(/[a-d]{1,2}){0,2}";
    prop_oneof![
        (
            name,
            proptest::collection::vec(any::<u8>(), 0..64),
            prop_oneof![Just(0o644u32), Just(0o600), Just(0o755)]
        )
            .prop_map(|(n, d, m)| Base::File(n, d, m)),
        (name, prop_oneof![Just(0o755u32), Just(0o700)]).prop_map(|(n, m)| Base::Dir(n, m)),
        (name, "[a-z/]{1,8}").prop_map(|(n, t)| Base::Link(n, t)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..64;
    prop_oneof![
        (i.clone(), proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(i, d)| Op::Write(i, d)),
        (
            i.clone(),
            "[e-h]{1,2}",
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(i, n, d)| Op::NewFile(i, n, d)),
        i.clone().prop_map(Op::Delete),
        i.clone().prop_map(Op::ReplaceDir),
        (
            i.clone(),
            prop_oneof![Just(0o640u32), Just(0o751), Just(0o4755)]
        )
            .prop_map(|(i, m)| Op::Chmod(i, m)),
        (i.clone(), 1u32..5000).prop_map(|(i, u)| Op::Chown(i, u)),
        (i.clone(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Op::Xattr(i, v)),
        // Binary values with newlines in them included: PAX records are length-prefixed.
        (i.clone(), "[e-h]{1,2}").prop_map(|(i, n)| Op::Mkdir(i, n)),
        (i, "[e-h]{1,2}", "[a-z/]{1,8}").prop_map(|(i, n, t)| Op::Symlink(i, n, t)),
    ]
}

fn make_base(root: &Path, entries: &[Base]) {
    for e in entries {
        let (name, kind) = match e {
            Base::File(n, ..) | Base::Dir(n, _) | Base::Link(n, _) => (n, e),
        };
        let p = root.join(name);
        if let Some(parent) = p.parent() {
            if fs::create_dir_all(parent).is_err() {
                continue; // a parent is a file
            }
        }
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        match kind {
            Base::File(_, d, m) => {
                fs::write(&p, d).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
            }
            Base::Dir(_, m) => {
                fs::create_dir(&p).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
            }
            Base::Link(_, t) => std::os::unix::fs::symlink(t, &p).unwrap(),
        }
    }
    pin_all(root, 1_000_000_000);
}

/// Every path below `root`, sorted (relative).
fn paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    out
}

fn set_mtime(root: &Path, rel: &Path, t: i64) {
    let r = Root::open(root).unwrap();
    let _ = sys::lutimesat(r.fd(), rel.as_os_str(), t, 0);
}

fn pin_all(root: &Path, t: i64) {
    for p in paths(root).iter().rev() {
        set_mtime(root, p, t);
    }
}

/// Applies the ops to `tree` (a merged overlay mount or a plain copy); returns the paths touched.
fn apply_ops(tree: &Path, targets: &[PathBuf], ops: &[Op]) -> Vec<PathBuf> {
    let mut touched = Vec::new();
    let pick = |i: usize| -> Option<&PathBuf> {
        if targets.is_empty() {
            None
        } else {
            Some(&targets[i % targets.len()])
        }
    };
    for op in ops {
        let (rel, done) = match op {
            Op::Write(i, d) => {
                let Some(r) = pick(*i) else { continue };
                let p = tree.join(r);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_file() => {
                        let mut old = fs::read(&p).unwrap();
                        old.extend_from_slice(d);
                        fs::write(&p, old).unwrap();
                        (r.clone(), true)
                    }
                    _ => continue,
                }
            }
            Op::NewFile(i, n, _) | Op::Mkdir(i, n) | Op::Symlink(i, n, _) => {
                let dir = match pick(*i) {
                    Some(r)
                        if tree.join(r).is_dir()
                            && !fs::symlink_metadata(tree.join(r)).unwrap().is_symlink() =>
                    {
                        r.clone()
                    }
                    _ => PathBuf::new(),
                };
                let rel = dir.join(n);
                let p = tree.join(&rel);
                if fs::symlink_metadata(&p).is_ok() {
                    continue;
                }
                match op {
                    Op::NewFile(.., d) => fs::write(&p, d).unwrap(),
                    Op::Mkdir(..) => fs::create_dir(&p).unwrap(),
                    Op::Symlink(.., t) => std::os::unix::fs::symlink(t, &p).unwrap(),
                    _ => unreachable!(),
                }
                (rel, true)
            }
            Op::Delete(i) => {
                let Some(r) = pick(*i) else { continue };
                let p = tree.join(r);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&p).unwrap(),
                    Ok(_) => fs::remove_file(&p).unwrap(),
                    Err(_) => continue,
                }
                (r.clone(), true)
            }
            Op::ReplaceDir(i) => {
                let Some(r) = pick(*i) else { continue };
                let p = tree.join(r);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {
                        fs::remove_dir_all(&p).unwrap();
                        fs::create_dir(&p).unwrap();
                        fs::write(p.join("fresh"), b"fresh").unwrap();
                        touched.push(r.join("fresh"));
                        (r.clone(), true)
                    }
                    _ => continue,
                }
            }
            Op::Chmod(i, m) => {
                let Some(r) = pick(*i) else { continue };
                let p = tree.join(r);
                match fs::symlink_metadata(&p) {
                    Ok(meta) if !meta.is_symlink() && meta.mode() & 0o7777 != *m => {
                        fs::set_permissions(&p, fs::Permissions::from_mode(*m)).unwrap();
                        (r.clone(), true)
                    }
                    _ => continue,
                }
            }
            Op::Chown(i, u) => {
                let Some(r) = pick(*i) else { continue };
                let p = tree.join(r);
                match fs::symlink_metadata(&p) {
                    Ok(meta) if meta.uid() != *u => {
                        // chown clears set-id bits; keep the mode as it was so both trees agree.
                        std::os::unix::fs::lchown(&p, Some(*u), Some(*u)).unwrap();
                        (r.clone(), true)
                    }
                    _ => continue,
                }
            }
            Op::Xattr(i, v) => {
                let Some(r) = pick(*i) else { continue };
                let p = tree.join(r);
                match fs::symlink_metadata(&p) {
                    Ok(meta) if !meta.is_symlink() => {
                        let f = fs::File::open(&p).unwrap();
                        use std::os::fd::AsFd;
                        sys::fsetxattr(f.as_fd(), OsStr::new("user.kiln"), v).unwrap();
                        (r.clone(), true)
                    }
                    _ => continue,
                }
            }
        };
        if done {
            touched.push(rel);
        }
    }
    // Pin the mtimes of everything touched and its parents, so both trees agree on them.
    let mut pin: Vec<PathBuf> = Vec::new();
    for t in &touched {
        let mut p = t.clone();
        loop {
            if !p.as_os_str().is_empty() {
                pin.push(p.clone());
            }
            if !p.pop() {
                break;
            }
        }
    }
    pin.sort();
    pin.dedup();
    for p in pin.iter().rev() {
        if fs::symlink_metadata(tree.join(p)).is_ok() {
            set_mtime(tree, p, FIXED_MTIME);
        }
    }
    touched
}

/// One line per entry of a merged view: type, mode, owner, mtime, content, target, xattrs.
fn describe(v: &View) -> Vec<String> {
    fn walk(v: &View, dir: &Found, rel: &str, out: &mut Vec<String>) {
        for (name, f) in v.read_dir(dir).unwrap() {
            let r = format!("{rel}/{}", name.to_string_lossy());
            let m = &f.meta;
            let what = if m.is_symlink() {
                format!("link {}", fs::read_link(&f.host).unwrap().display())
            } else if m.is_dir() {
                "dir".to_string()
            } else {
                format!("file {:?}", fs::read(&f.host).unwrap())
            };
            let mut x: Vec<String> = sys::llistxattr(&f.host)
                .unwrap()
                .into_iter()
                .filter(|n| !n.to_string_lossy().starts_with("trusted.overlay."))
                .map(|n| {
                    format!(
                        "{}={:?}",
                        n.to_string_lossy(),
                        sys::lgetxattr(&f.host, &n).unwrap()
                    )
                })
                .collect();
            x.sort();
            let mtime = if m.is_symlink() { 0 } else { m.mtime() };
            out.push(format!(
                "{r} {what} {:o} {}:{} {mtime} {x:?}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
            if f.is_dir() {
                walk(v, &f, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(root) = v.resolve("/", true).unwrap() {
        walk(v, &root, "", &mut out);
    }
    out
}

fn stacked(layer_tar: &[u8], parent: &Path, scratch: &Path) -> Vec<String> {
    fs::create_dir_all(scratch).unwrap();
    apply_layer(&Root::open(scratch).unwrap(), layer_tar).unwrap();
    describe(&View::new(vec![
        scratch.to_path_buf(),
        parent.to_path_buf(),
    ]))
}

struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn overlay_differ_equals_walk_differ_and_layers_reproduce_the_child(
        base in proptest::collection::vec(base_entry(), 1..24),
        ops in proptest::collection::vec(op(), 1..12),
    ) {
        if !sys::test_has_root("overlay mounts need root") {
            return Ok(());
        }
        let t = tempfile::tempdir().unwrap();
        let (lower, upper, work, merged, copy) = (
            t.path().join("lower"), t.path().join("upper"), t.path().join("work"),
            t.path().join("merged"), t.path().join("copy"),
        );
        for d in [&lower, &upper, &work, &merged, &copy] {
            fs::create_dir_all(d).unwrap();
        }
        make_base(&lower, &base);
        let st = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", lower.display())).arg(&copy).status().unwrap();
        prop_assert!(st.success());
        pin_all(&copy, 1_000_000_000);
        let targets = paths(&lower);

        let opts = format!(
            "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off",
            lower.display(), upper.display(), work.display()
        );
        sys::proc::mount("overlay", merged.as_os_str(), "overlay", nix::mount::MsFlags::empty(), &opts).unwrap();
        let guard = Mounted(merged.clone());
        apply_ops(&merged, &targets, &ops);
        drop(guard);
        apply_ops(&copy, &targets, &ops);

        let by_overlay = overlay::changes(&upper).unwrap();
        let by_walk = walk::changes(&lower, &copy).unwrap();
        let tar_o = write_entries(&by_overlay, Vec::new(), &TarOptions::default()).unwrap();
        let tar_w = write_entries(&by_walk, Vec::new(), &TarOptions::default()).unwrap();

        // The child tree, and each layer stacked on the parent.
        let child = describe(&View::new(vec![copy.clone()]));
        prop_assert_eq!(&stacked(&tar_o, &lower, &t.path().join("s1")), &child, "overlay layer on the parent");
        prop_assert_eq!(&stacked(&tar_w, &lower, &t.path().join("s2")), &child, "walk layer on the parent");

        // The same entries; whiteouts may differ only where overlay recorded a replaced
        // directory as opaque (the walk differ lists the deleted names instead).
        let names = |v: &[super::TarEntry], keep_wh: bool| -> Vec<Vec<u8>> {
            v.iter()
                .filter(|e| keep_wh || matches!(e.source, EntrySource::Host(_)))
                .map(|e| e.name.clone())
                .collect()
        };
        let replaced = by_overlay.iter().any(|e| e.source == EntrySource::Opaque);
        if replaced {
            prop_assert_eq!(names(&by_overlay, false), names(&by_walk, false));
        } else {
            prop_assert_eq!(names(&by_overlay, true), names(&by_walk, true));
            prop_assert_eq!(tar_o, tar_w, "byte-identical layers");
        }
    }
}
