//! Layer tar write/apply tests: the malicious-tar suite (every escape attempt rejected or
//! contained, nothing written outside the root) and write/apply round trips on random trees.

use super::{apply_layer, write_tree, TarOptions, Times};
use crate::rootfs::Root;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A tar built entry by entry with raw names, so hostile names reach the archive unchanged.
struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> Self {
        RawTar(Vec::new())
    }
    fn entry(mut self, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Self {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, "", data)
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, target, b"")
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, target, b"")
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, "", b"")
    }
    fn bytes(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// A temp dir holding `root/` (where layers go) and `outside/` (which must never change).
struct Jail {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Jail {
    fn new() -> Jail {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"host secret").unwrap();
        fs::write(outside.join("victim"), b"host victim").unwrap();
        Jail {
            _dir: dir,
            root,
            outside,
        }
    }

    fn apply(&self, tar: &[u8]) -> Result<super::ApplyStats, super::ApplyError> {
        apply_layer(&Root::open(&self.root).unwrap(), tar)
    }

    /// The host side is exactly as created.
    fn assert_outside_untouched(&self) {
        let mut names: Vec<String> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["secret", "victim"],
            "files appeared or vanished outside the root"
        );
        assert_eq!(
            fs::read(self.outside.join("secret")).unwrap(),
            b"host secret"
        );
        assert_eq!(
            fs::read(self.outside.join("victim")).unwrap(),
            b"host victim"
        );
        assert_eq!(
            fs::metadata(self.outside.join("secret")).unwrap().nlink(),
            1,
            "a hard link reached a host file"
        );
        let parent = self.root.parent().unwrap();
        let mut top: Vec<String> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["outside", "root"],
            "something was written beside the root"
        );
    }
}

fn expect_rejected(tar: Vec<u8>, entry: &str) {
    let j = Jail::new();
    let err = j.apply(&tar).expect_err("hostile layer must be rejected");
    let msg = format!("{err}");
    assert!(
        msg.contains(entry),
        "error {msg:?} should name the entry {entry:?}"
    );
    j.assert_outside_untouched();
}

#[test]
fn dotdot_entries_are_rejected() {
    expect_rejected(
        RawTar::new().file("../outside/victim", b"pwned").bytes(),
        "../outside/victim",
    );
    expect_rejected(
        RawTar::new()
            .file("a/../../outside/victim", b"pwned")
            .bytes(),
        "a/../../outside/victim",
    );
}

#[test]
fn absolute_paths_are_contained() {
    let j = Jail::new();
    let abs = format!("{}/victim", j.outside.display());
    j.apply(&RawTar::new().file(&abs, b"pwned").bytes())
        .unwrap();
    j.assert_outside_untouched();
    assert_eq!(
        fs::read(j.root.join(abs.trim_start_matches('/'))).unwrap(),
        b"pwned"
    );
}

/// Directory entries that make `abs` exist inside the root too (so a symlink to it resolves).
fn mirror(mut t: RawTar, abs: &Path) -> RawTar {
    let mut p = PathBuf::new();
    for c in abs.components().skip(1) {
        p.push(c);
        t = t.dir(&format!("{}/", p.display()));
    }
    t
}

#[test]
fn writes_through_a_symlinked_parent_stay_inside() {
    // (link target, where it resolves inside the root: `..` stops at the root as in a chroot)
    for (target, inside) in [
        ("OUTSIDE", "OUTSIDE"),
        ("../../../../../../OUTSIDE", "OUTSIDE"),
        ("../outside", "/outside"),
    ] {
        // Where the in-root target does not exist, the entry is rejected, naming it.
        let j = Jail::new();
        let outside = j.outside.display().to_string();
        let target = target.replace("OUTSIDE", &outside);
        let inside = PathBuf::from(inside.replace("OUTSIDE", &outside));
        let err = j
            .apply(
                &RawTar::new()
                    .symlink("link", &target)
                    .file("link/victim", b"pwned")
                    .bytes(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("link/victim"), "{err}");
        j.assert_outside_untouched();
        // Where it exists inside the root, the write lands there.
        let j = Jail::new();
        let target = target.replace(&outside, &j.outside.display().to_string());
        let inside = PathBuf::from(
            inside
                .display()
                .to_string()
                .replace(&outside, &j.outside.display().to_string()),
        );
        let tar = mirror(RawTar::new(), &inside)
            .symlink("link", &target)
            .file("link/victim", b"pwned")
            .bytes();
        j.apply(&tar).unwrap();
        j.assert_outside_untouched();
        assert_eq!(
            fs::read(
                j.root
                    .join(inside.strip_prefix("/").unwrap())
                    .join("victim")
            )
            .unwrap(),
            b"pwned",
            "{target}"
        );
    }
}

#[test]
fn a_symlink_in_the_last_component_is_replaced_not_followed() {
    let j = Jail::new();
    let host = format!("{}/victim", j.outside.display());
    let tar = RawTar::new()
        .symlink("f", &host)
        .file("f", b"inside")
        .bytes();
    j.apply(&tar).unwrap();
    j.assert_outside_untouched();
    assert!(fs::symlink_metadata(j.root.join("f")).unwrap().is_file());
    assert_eq!(fs::read(j.root.join("f")).unwrap(), b"inside");
}

#[test]
fn hard_links_cannot_reach_outside() {
    expect_rejected(
        RawTar::new().hardlink("hl", "../outside/secret").bytes(),
        "hl",
    );
    let j = Jail::new();
    let abs = format!("{}/secret", j.outside.display());
    let err = j
        .apply(&RawTar::new().hardlink("hl", &abs).bytes())
        .unwrap_err();
    assert!(err.to_string().contains("not in this layer"), "{err}");
    j.assert_outside_untouched();
    // A link to a symlink that points out links the symlink itself, never the host file.
    let j = Jail::new();
    let tar = RawTar::new().symlink("s", &abs).hardlink("hl", "s").bytes();
    j.apply(&tar).unwrap();
    j.assert_outside_untouched();
    assert!(fs::symlink_metadata(j.root.join("hl"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn whiteouts_of_dot_dot_are_rejected_and_others_contained() {
    expect_rejected(RawTar::new().file(".wh...", b"").bytes(), ".wh..");
    expect_rejected(
        RawTar::new().dir("a/").file("a/.wh..", b"").bytes(),
        "a/.wh..",
    );
    if !crate::sys::is_root() {
        return; // whiteout device nodes need CAP_MKNOD
    }
    let j = Jail::new();
    let tar = mirror(RawTar::new(), &j.outside)
        .file(&format!("{}/victim", j.outside.display()), b"inside")
        .symlink("link", &j.outside.display().to_string())
        .file("link/.wh.victim", b"")
        .bytes();
    j.apply(&tar).unwrap();
    j.assert_outside_untouched();
    let inner = fs::symlink_metadata(
        j.root
            .join(j.outside.strip_prefix("/").unwrap())
            .join("victim"),
    )
    .unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&inner.file_type()),
        "the whiteout replaced the in-root copy"
    );
}

#[test]
fn whiteouts_and_opaque_dirs_become_overlay_form() {
    if !crate::sys::test_has_root("whiteout device nodes and trusted.* xattrs need root") {
        return;
    }
    let j = Jail::new();
    let tar = RawTar::new()
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/keep", b"k")
        .file(".wh.gone", b"")
        .bytes();
    j.apply(&tar).unwrap();
    let gone = fs::symlink_metadata(j.root.join("gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &gone.file_type()
    ));
    assert_eq!(gone.rdev(), 0);
    assert_eq!(
        crate::sys::lgetxattr(&j.root.join("d"), "trusted.overlay.opaque".as_ref()).unwrap(),
        b"y"
    );
    assert!(!j.root.join("d/.wh..wh..opq").exists());
}

/// Everything about a tree that a layer must carry, in sorted order.
pub(crate) fn describe_tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        for n in entries {
            let r = rel.join(&n);
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                format!("dir {:o} mtime {}", m.mode() & 0o7777, m.mtime())
            } else {
                let data = fs::read(&p).unwrap();
                format!(
                    "file {:o} {} bytes {} mtime {} nlink {}",
                    m.mode() & 0o7777,
                    data.len(),
                    kiln_store::Digest::of(&data).short(),
                    m.mtime(),
                    m.nlink()
                )
            };
            out.push(format!(
                "{} uid {} gid {}: {what}",
                r.display(),
                m.uid(),
                m.gid()
            ));
            if ft.is_dir() {
                walk(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}

#[test]
fn long_names_hard_links_and_modes_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let deep = src.path().join("a".repeat(60)).join("b".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("c".repeat(120)), b"long").unwrap();
    fs::write(src.path().join("x"), b"linked").unwrap();
    fs::hard_link(src.path().join("x"), src.path().join("y")).unwrap();
    std::os::unix::fs::symlink("l".repeat(150), src.path().join("longlink")).unwrap();
    fs::set_permissions(src.path().join("x"), fs::Permissions::from_mode(0o4755)).unwrap();
    let tar = write_tree(src.path(), Vec::new(), &TarOptions::default()).unwrap();
    assert_eq!(
        tar,
        write_tree(src.path(), Vec::new(), &TarOptions::default()).unwrap(),
        "same tree, same bytes"
    );
    let dst = tempfile::tempdir().unwrap();
    apply_layer(&Root::open(dst.path()).unwrap(), &tar[..]).unwrap();
    assert_eq!(describe_tree(src.path()), describe_tree(dst.path()));
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"x").unwrap();
    let a = write_tree(
        src.path(),
        Vec::new(),
        &TarOptions {
            times: Times::Clamp(1000),
        },
    )
    .unwrap();
    crate::sys::lutimesat(
        Root::open(src.path()).unwrap().fd(),
        "f".as_ref(),
        5_000_000,
        0,
    )
    .unwrap();
    let b = write_tree(
        src.path(),
        Vec::new(),
        &TarOptions {
            times: Times::Clamp(1000),
        },
    )
    .unwrap();
    assert_eq!(
        a, b,
        "mtimes after SOURCE_DATE_EPOCH must not show in the tar"
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Node {
        File(Vec<u8>, u32),
        Dir(u32),
        Link(String),
        HardLinkToFirstFile,
    }

    fn node() -> impl Strategy<Value = Node> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..300),
                prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o4711)]
            )
                .prop_map(|(d, m)| Node::File(d, m)),
            prop_oneof![Just(0o755u32), Just(0o700), Just(0o1777)].prop_map(Node::Dir),
            "[a-z./]{1,20}".prop_map(Node::Link),
            Just(Node::HardLinkToFirstFile),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// write_tree then apply_layer reproduces the tree exactly (types, modes, owners, content,
        /// link targets, hard links, mtimes).
        #[test]
        fn write_then_apply_reproduces_the_tree(nodes in proptest::collection::vec(("[a-z]{1,8}", 0usize..3, node(), 0i64..2_000_000_000), 1..25)) {
            let src = tempfile::tempdir().unwrap();
            let mut first_file: Option<PathBuf> = None;
            let mut dirs = vec![PathBuf::new()];
            for (name, depth, n, mtime) in nodes {
                let parent = dirs[depth.min(dirs.len() - 1)].clone();
                let rel = parent.join(&name);
                let p = src.path().join(&rel);
                if fs::symlink_metadata(&p).is_ok() { continue; }
                match n {
                    Node::File(data, mode) => {
                        fs::write(&p, &data).unwrap();
                        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                        if first_file.is_none() { first_file = Some(p.clone()); }
                    }
                    Node::Dir(mode) => {
                        fs::create_dir(&p).unwrap();
                        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                        dirs.push(rel.clone());
                    }
                    Node::Link(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
                    Node::HardLinkToFirstFile => match &first_file {
                        Some(f) => fs::hard_link(f, &p).unwrap(),
                        None => continue,
                    },
                }
                let root = Root::open(src.path()).unwrap();
                crate::sys::lutimesat(root.fd(), rel.as_os_str(), mtime, 0).unwrap();
            }
            // Parent dirs' mtimes changed as children were made: pin them all afterwards.
            for d in dirs.iter().rev().filter(|d| !d.as_os_str().is_empty()) {
                crate::sys::lutimesat(Root::open(src.path()).unwrap().fd(), d.as_os_str(), 12345, 0).unwrap();
            }
            let tar = write_tree(src.path(), Vec::new(), &TarOptions::default()).unwrap();
            let dst = tempfile::tempdir().unwrap();
            apply_layer(&Root::open(dst.path()).unwrap(), &tar[..]).unwrap();
            prop_assert_eq!(describe_tree(src.path()), describe_tree(dst.path()));
        }
    }
}

/// Regression: the tar crate's PAX reader splits records on newlines, so a binary xattr value
/// holding 0x0a (a security.capability mask can) made apply fail with "malformed pax extension".
#[test]
fn binary_xattr_values_with_newlines_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let f = src.path().join("f");
    fs::write(&f, b"x").unwrap();
    let value = b"a\nb\n\x00\xff=c".to_vec();
    {
        use std::os::fd::AsFd;
        let file = fs::File::open(&f).unwrap();
        crate::sys::fsetxattr(file.as_fd(), std::ffi::OsStr::new("user.bin"), &value).unwrap();
    }
    let tar = write_tree(src.path(), Vec::new(), &TarOptions::default()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    apply_layer(&Root::open(dst.path()).unwrap(), &tar[..]).unwrap();
    let got =
        crate::sys::lgetxattr(&dst.path().join("f"), std::ffi::OsStr::new("user.bin")).unwrap();
    assert_eq!(got, value);
}
