//! The file side of `image diff`: layers read as tar streams into the merged state of the paths
//! they touch (whiteouts, opaque directories and a file replacing a directory hide what lies
//! below), and two such states compared path by path.

use kiln_store::digest::HashWriter;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

/// What a path is in an image's merged tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileInfo {
    /// file, dir, symlink, hardlink, char, block, fifo
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits in octal, as `ls -l` counts them (`0755`).
    pub mode: String,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// A symlink's target, or the path a hard link shares its file with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A regular file's content digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Seconds since 1970.
    pub mtime: u64,
    /// Extended attributes, values escaped as text.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// `major,minor` of a device node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// One path that differs between the images: in A only (removed), in B only (added), or in both
/// with `what` naming the attributes that changed.
#[derive(Clone, Debug, Serialize)]
pub struct FileChange {
    pub path: String,
    /// added, removed or changed
    pub change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<FileInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b: Option<FileInfo>,
    /// type, mode, owner, size, link, content, mtime, xattrs, device
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
}

/// The merged state of the paths some layers touch: present, or gone (a whiteout), plus the
/// paths below which the layers underneath are hidden.
#[derive(Default, Debug)]
pub struct Tree {
    pub map: BTreeMap<String, Option<FileInfo>>,
    pub hidden: BTreeSet<String>,
}

/// `a/b/` and `./a/b` as `a/b`; the root is "".
fn normalize(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut s: &str = &s;
    while let Some(r) = s.strip_prefix("./") {
        s = r;
    }
    let s = s.trim_start_matches('/').trim_end_matches('/');
    if s == "." {
        String::new()
    } else {
        s.to_string()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Escapes bytes as text: printable ASCII as is, the rest as `\xNN`.
fn escape(v: &[u8]) -> String {
    let mut s = String::new();
    for &b in v {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

impl Tree {
    /// Applies one layer on top. Only paths `want` accepts are recorded (and only their contents
    /// hashed); whiteouts and hiding apply to every path.
    pub fn apply<R: Read>(&mut self, layer: R, want: &dyn Fn(&str) -> bool) -> io::Result<()> {
        let mut archive = tar::Archive::new(layer);
        let (mut opaque, mut whiteouts, mut replaced) = (Vec::new(), Vec::new(), Vec::new());
        let mut added: Vec<(String, FileInfo)> = Vec::new();
        for e in archive.entries()? {
            let mut e = e?;
            let p = normalize(&e.path_bytes());
            if p.is_empty() {
                continue;
            }
            let (dir, base) = p.rsplit_once('/').unwrap_or(("", &p));
            if base == ".wh..wh..opq" {
                opaque.push(dir.to_string());
                continue;
            }
            if let Some(n) = base.strip_prefix(".wh.") {
                whiteouts.push(join(dir, n));
                continue;
            }
            let h = e.header().clone();
            let kind = match h.entry_type() {
                tar::EntryType::Directory => "dir",
                tar::EntryType::Symlink => "symlink",
                tar::EntryType::Link => "hardlink",
                tar::EntryType::Char => "char",
                tar::EntryType::Block => "block",
                tar::EntryType::Fifo => "fifo",
                _ => "file",
            };
            if kind != "dir" {
                replaced.push(p.clone());
            }
            if !want(&p) {
                continue;
            }
            let mut xattrs = BTreeMap::new();
            if let Some(ext) = e.pax_extensions()? {
                for x in ext {
                    let x = x?;
                    if let Some(k) = x.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                        xattrs.insert(k.to_string(), escape(x.value_bytes()));
                    }
                }
            }
            let link = match kind {
                "symlink" => e.link_name_bytes().map(|l| escape(&l)),
                "hardlink" => e.link_name_bytes().map(|l| format!("/{}", normalize(&l))),
                _ => None,
            };
            let digest = if kind == "file" {
                let mut w = HashWriter::new(io::sink());
                io::copy(&mut e, &mut w)?;
                Some(w.finish().0.to_string())
            } else {
                None
            };
            let device = matches!(kind, "char" | "block").then(|| {
                format!(
                    "{},{}",
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0)
                )
            });
            added.push((
                p,
                FileInfo {
                    kind,
                    mode: format!("{:04o}", h.mode().unwrap_or(0) & 0o7777),
                    uid: h.uid().unwrap_or(0),
                    gid: h.gid().unwrap_or(0),
                    size: if kind == "file" {
                        h.size().unwrap_or(0)
                    } else {
                        0
                    },
                    link,
                    digest,
                    mtime: h.mtime().unwrap_or(0),
                    xattrs,
                    device,
                },
            ));
        }
        // Whiteouts and opaque markers hide the layers below, not this one's own entries.
        for d in opaque {
            self.hide_below(&d);
        }
        for w in whiteouts {
            self.hide_below(&w);
            self.map.insert(w, None);
        }
        for p in replaced {
            self.hide_below(&p);
        }
        for (p, info) in added {
            self.map.insert(p, Some(info));
        }
        Ok(())
    }

    /// Everything below `d` (not `d` itself) in the layers applied so far, and underneath, is
    /// gone.
    fn hide_below(&mut self, d: &str) {
        if d.is_empty() {
            self.map.clear();
        } else {
            let lo = format!("{d}/");
            let hi = format!("{d}0");
            let keys: Vec<String> = self.map.range(lo..hi).map(|(k, _)| k.clone()).collect();
            for k in keys {
                self.map.remove(&k);
            }
        }
        self.hidden.insert(d.to_string());
    }

    /// Whether the layers underneath cannot show `p`.
    pub fn hides(&self, p: &str) -> bool {
        hidden_by(&self.hidden, p)
    }

    /// `p` as these layers over `below` make it.
    fn state<'a>(&'a self, p: &str, below: &'a Tree) -> Option<&'a FileInfo> {
        match self.map.get(p) {
            Some(s) => s.as_ref(),
            None if self.hides(p) => None,
            None => below.map.get(p).and_then(Option::as_ref),
        }
    }
}

/// Whether an ancestor of `p` is in `roots`.
pub fn hidden_by(roots: &BTreeSet<String>, p: &str) -> bool {
    if roots.is_empty() {
        return false;
    }
    if roots.contains("") {
        return true;
    }
    let mut s = p;
    while let Some((dir, _)) = s.rsplit_once('/') {
        if roots.contains(dir) {
            return true;
        }
        s = dir;
    }
    false
}

/// Whether the common layers must be read: only when a path that one side's own layers leave
/// alone, or a subtree one side hides, could differ.
pub fn needs_common(a: &Tree, b: &Tree) -> bool {
    a.hidden != b.hidden || !a.map.keys().eq(b.map.keys())
}

/// What `common` must record for comparing `a` and `b` over it.
pub fn wanted_in_common<'a>(a: &'a Tree, b: &'a Tree) -> impl Fn(&str) -> bool + 'a {
    move |p: &str| {
        a.map.contains_key(p)
            || b.map.contains_key(p)
            || hidden_by(&a.hidden, p)
            || hidden_by(&b.hidden, p)
    }
}

/// The attributes of `a` and `b` that differ.
fn what_differs(a: &FileInfo, b: &FileInfo) -> Vec<&'static str> {
    let mut w = Vec::new();
    let mut check = |cond: bool, name: &'static str| {
        if cond {
            w.push(name)
        }
    };
    check(a.kind != b.kind, "type");
    check(a.mode != b.mode, "mode");
    check((a.uid, a.gid) != (b.uid, b.gid), "owner");
    check(a.size != b.size, "size");
    check(a.link != b.link, "link");
    check(a.digest != b.digest, "content");
    check(a.mtime != b.mtime, "mtime");
    check(a.xattrs != b.xattrs, "xattrs");
    check(a.device != b.device, "device");
    w
}

/// Every path whose state differs between `a` over `common` and `b` over `common`, sorted.
pub fn compare(a: &Tree, b: &Tree, common: &Tree) -> Vec<FileChange> {
    let paths: BTreeSet<&String> = a
        .map
        .keys()
        .chain(b.map.keys())
        .chain(common.map.keys())
        .collect();
    let mut out = Vec::new();
    for p in paths {
        let (x, y) = (a.state(p, common), b.state(p, common));
        let (change, what) = match (x, y) {
            (None, None) => continue,
            (Some(_), None) => ("removed", vec![]),
            (None, Some(_)) => ("added", vec![]),
            (Some(x), Some(y)) => {
                let w = what_differs(x, y);
                if w.is_empty() {
                    continue;
                }
                ("changed", w)
            }
        };
        out.push(FileChange {
            path: format!("/{p}"),
            change,
            a: x.cloned(),
            b: y.cloned(),
            what,
        });
    }
    out
}
