//! The tree comparison on hand-made layers: whiteouts, opaque directories, a file replacing a
//! directory, and the common layers read only when needed.

use super::tree::{compare, needs_common, wanted_in_common, FileChange, Tree};

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    FileAt(&'a str, &'a str, u64),
    Link(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(100);
        let (name, data): (&str, &[u8]) = match e {
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            E::File(n, d) => (n, d.as_bytes()),
            E::FileAt(n, d, t) => {
                h.set_mtime(*t);
                (n, d.as_bytes())
            }
            E::Link(n, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name(target).unwrap();
                (n, b"")
            }
        };
        h.set_size(data.len() as u64);
        h.set_path(name).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn tree(layers: &[Vec<u8>], want: &dyn Fn(&str) -> bool) -> Tree {
    let mut t = Tree::default();
    for l in layers {
        t.apply(&l[..], want).unwrap();
    }
    t
}

fn all(_: &str) -> bool {
    true
}

fn summary(c: &[FileChange]) -> Vec<String> {
    c.iter()
        .map(|c| {
            format!("{} {} {}", c.change, c.path, c.what.join(","))
                .trim()
                .to_string()
        })
        .collect()
}

/// Compares `a` and `b` over `base` the way `image diff` does, and checks the answer against
/// reading every layer of both.
fn diff(base: &[Vec<u8>], a: &[Vec<u8>], b: &[Vec<u8>]) -> (Vec<String>, bool) {
    let (ta, tb) = (tree(a, &all), tree(b, &all));
    let needed = needs_common(&ta, &tb);
    let below = if needed {
        tree(base, &wanted_in_common(&ta, &tb))
    } else {
        Tree::default()
    };
    let fast = summary(&compare(&ta, &tb, &below));
    let full_a: Vec<Vec<u8>> = base.iter().chain(a).cloned().collect();
    let full_b: Vec<Vec<u8>> = base.iter().chain(b).cloned().collect();
    let slow = summary(&compare(
        &tree(&full_a, &all),
        &tree(&full_b, &all),
        &Tree::default(),
    ));
    assert_eq!(fast, slow, "skipping the common layers changes nothing");
    (fast, needed)
}

#[test]
fn the_same_paths_on_both_sides_need_no_common_layer() {
    let base = vec![layer(&[E::Dir("etc"), E::File("etc/motd", "hi")])];
    let a = vec![layer(&[E::Dir("app"), E::FileAt("app/x", "1", 100)])];
    let b = vec![layer(&[E::Dir("app"), E::FileAt("app/x", "1", 200)])];
    let (d, needed) = diff(&base, &a, &b);
    assert!(!needed);
    assert_eq!(d, vec!["changed /app/x mtime"]);
}

#[test]
fn whiteouts_opaque_dirs_and_replaced_dirs_reach_into_the_common_layers() {
    let base = vec![layer(&[
        E::Dir("etc"),
        E::File("etc/motd", "hi"),
        E::File("etc/group", "g"),
        E::Dir("lib"),
        E::File("lib/a", "a"),
        E::Dir("opt"),
        E::Dir("opt/sub"),
        E::File("opt/sub/z", "z"),
    ])];
    // A: removes motd, makes /lib opaque with a new file, turns /opt into a file.
    let a = vec![layer(&[
        E::Dir("etc"),
        E::File("etc/.wh.motd", ""),
        E::Dir("lib"),
        E::File("lib/.wh..wh..opq", ""),
        E::File("lib/b", "b"),
        E::File("opt", "now a file"),
    ])];
    // B: changes group, adds a symlink.
    let b = vec![layer(&[
        E::Dir("etc"),
        E::File("etc/group", "g2"),
        E::Link("etc/l", "group"),
    ])];
    let (d, needed) = diff(&base, &a, &b);
    assert!(needed);
    assert_eq!(
        d,
        vec![
            "changed /etc/group size,content",
            "added /etc/l",
            "added /etc/motd",
            "added /lib/a",
            "removed /lib/b",
            "changed /opt type,mode,size,content",
            "added /opt/sub",
            "added /opt/sub/z",
        ]
    );
}

#[test]
fn a_whiteout_then_the_same_path_again_is_the_new_entry() {
    let base = vec![layer(&[E::Dir("d"), E::File("d/f", "old")])];
    let a = vec![
        layer(&[E::Dir("d"), E::File("d/.wh.f", "")]),
        layer(&[E::Dir("d"), E::File("d/f", "newer")]),
    ];
    let b = vec![layer(&[E::Dir("d")])];
    let (d, _) = diff(&base, &a, &b);
    assert_eq!(d, vec!["changed /d/f size,content"]);
}
