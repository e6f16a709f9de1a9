//! index.json, the OCI layout's list of tags, kept in step with the refs table.
//!
//! Every change to the refs table bumps `counters.refs` in the same transaction, and index.json
//! carries the value it was made from (the `dev.kiln.refs-version` annotation). The process that
//! made change V then, under index.lock:
//! - does nothing if index.json is already at V or later (a later writer regenerated it whole);
//! - splices its own entries into index.json if it is at V - 1: the few lines are found by a
//!   binary search on the sorted names that reads only the lines it looks at, and the rest of the
//!   file is copied in the kernel (copy_file_range), so a tag costs a copy of the file rather
//!   than a query and formatting of every tag;
//! - otherwise (a crash between commit and write, a concurrent writer's change not yet written, an
//!   older kiln's file) regenerates it whole from the table, reading the counter in the same read
//!   transaction.
//!
//! Either way the file is replaced by rename, so readers (skopeo, `system check`) see a whole
//! index at every moment.

use super::*;
use std::borrow::Cow;

/// The annotation that records the refs version index.json was made from.
const VERSION_KEY: &str = "dev.kiln.refs-version";

/// One tag's line in index.json: the name, and the image it points at (None: removed).
pub(crate) struct RefChange {
    pub name: String,
    pub target: Option<IndexTarget>,
}

/// The image a tag's descriptor describes.
pub(crate) struct IndexTarget {
    pub manifest: String,
    pub media_type: String,
    pub size: u64,
}

impl Store {
    /// Bumps the refs version inside `tx` (which changed refs) and returns it.
    pub(crate) fn bump_refs_version(tx: &rusqlite::Transaction<'_>) -> Result<i64> {
        Ok(tx.query_row(
            "UPDATE counters SET value = value + 1 WHERE name = 'refs' RETURNING value",
            [],
            |r| r.get(0),
        )?)
    }

    /// The descriptor fields of image `manifest`, read inside a transaction that changes refs.
    pub(crate) fn index_target(
        tx: &rusqlite::Transaction<'_>,
        manifest: &str,
    ) -> Result<IndexTarget> {
        Ok(tx.query_row(
            "SELECT i.media_type, b.size FROM images i JOIN blobs b ON b.digest = i.manifest
             WHERE i.manifest = ?1",
            [manifest],
            |r| {
                Ok(IndexTarget {
                    manifest: manifest.to_string(),
                    media_type: r.get(0)?,
                    size: r.get(1)?,
                })
            },
        )?)
    }

    /// Brings index.json to refs version `version`, whose changes are `changes` (see the module
    /// comment).
    pub(crate) fn update_index(&self, version: i64, changes: &[RefChange]) -> Result<()> {
        let lock = open_lock(&self.root.join("index.lock"))?;
        lock.lock().map_err(|e| io_err("lock index.lock", e))?;
        let path = self.root.join("index.json");
        if let Ok(old) = File::open(&path) {
            if let Some(index) = Index::open(&old) {
                if index.version >= version {
                    return Ok(());
                }
                if index.version == version - 1 {
                    if let Some(edits) = index.edits(changes) {
                        let tail = tail(version);
                        let pieces = index.pieces(&edits, &tail);
                        return write_atomic_with(&self.ingest_dir(), &path, |f| {
                            index.write(&pieces, f)
                        });
                    }
                }
            }
        }
        self.regenerate_index()
    }

    /// Regenerates index.json from the refs table: one descriptor per tag, sorted by name, each
    /// annotated with its full reference.
    pub fn write_index(&self) -> Result<()> {
        let lock = open_lock(&self.root.join("index.lock"))?;
        lock.lock().map_err(|e| io_err("lock index.lock", e))?;
        self.regenerate_index()
    }

    fn regenerate_index(&self) -> Result<()> {
        let (version, entries) = {
            let mut db = self.db();
            let tx = db.transaction()?;
            let version: i64 =
                tx.query_row("SELECT value FROM counters WHERE name = 'refs'", [], |r| {
                    r.get(0)
                })?;
            let mut st = tx.prepare_cached(
                "SELECT r.name, i.manifest, i.media_type, b.size FROM refs r
                 JOIN images i ON i.manifest = r.manifest JOIN blobs b ON b.digest = i.manifest
                 ORDER BY r.name",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    IndexTarget {
                        manifest: r.get(1)?,
                        media_type: r.get(2)?,
                        size: r.get(3)?,
                    },
                ))
            })?;
            let entries: Vec<(String, IndexTarget)> = rows.collect::<rusqlite::Result<_>>()?;
            drop(st);
            tx.commit()?;
            (version, entries)
        };
        let lines: Vec<Vec<u8>> = entries.iter().map(|(n, t)| line(n, t)).collect();
        let bytes = assemble(lines.iter().map(|l| &l[..]), version);
        write_atomic(&self.ingest_dir(), &self.root.join("index.json"), &bytes)
    }
}

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A tag's descriptor, one line of compact JSON.
fn line(name: &str, t: &IndexTarget) -> Vec<u8> {
    let name = js(name);
    format!(
        "{{\"mediaType\":{},\"digest\":{},\"size\":{},\"annotations\":{{\"io.containerd.image.name\":{name},\"org.opencontainers.image.ref.name\":{name}}}}}",
        js(&t.media_type),
        js(&t.manifest),
        t.size
    )
    .into_bytes()
}

const HEAD: &str = "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[";

/// The tail after the last descriptor, up to the version.
fn tail_prefix() -> String {
    format!("\n],\"annotations\":{{{}:\"", js(VERSION_KEY))
}

/// The whole file: the head, one descriptor per line, the version annotation.
fn assemble<'a>(lines: impl Iterator<Item = &'a [u8]>, version: i64) -> Vec<u8> {
    let (lo, _) = lines.size_hint();
    let mut out = Vec::with_capacity(256 + lo * 330);
    out.extend_from_slice(HEAD.as_bytes());
    for (i, l) in lines.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'\n');
        out.extend_from_slice(l);
    }
    out.extend_from_slice(&tail(version));
    out
}

/// The bytes of index.json's body, in memory (tests) or read from the file as needed: a splice
/// reads the head, the tail and the few units its binary search looks at, not the whole file.
trait Body {
    fn len(&self) -> usize;
    /// Bytes [a, b).
    fn get(&self, a: usize, b: usize) -> Option<Cow<'_, [u8]>>;
}

#[cfg(test)]
impl Body for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn get(&self, a: usize, b: usize) -> Option<Cow<'_, [u8]>> {
        <[u8]>::get(self, a..b).map(Cow::Borrowed)
    }
}

/// The body of an index.json file: bytes [start, start + len) of it.
struct FileBody<'f> {
    file: &'f File,
    start: u64,
    len: usize,
}

impl Body for FileBody<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, a: usize, b: usize) -> Option<Cow<'_, [u8]>> {
        use std::os::unix::fs::FileExt;
        if a > b || b > self.len {
            return None;
        }
        let mut buf = vec![0; b - a];
        self.file
            .read_exact_at(&mut buf, self.start + a as u64)
            .ok()?;
        Some(Cow::Owned(buf))
    }
}

/// How far a search for a unit's edge reads (a unit is one tag's descriptor, well under this).
const WINDOW: usize = 8 << 10;

/// A piece of the new file: bytes of the old body, or new bytes.
#[derive(Clone, Copy)]
enum Piece<'a> {
    Old(usize, usize),
    New(&'a [u8]),
}

/// index.json as `assemble` writes it. Its descriptors are seen as units of "\n{...}," (the
/// last one's comma is virtual), so that adding, replacing and removing are all the same cut.
struct Index<B: Body> {
    version: i64,
    /// From the first descriptor's "\n" to the last one's "}".
    body: B,
}

/// Parses the version from the file's last bytes (`tail`, which start at `tail_at` within the
/// part after the head); returns where the body ends and the version.
fn parse_tail(tail: &[u8], tail_at: usize) -> Option<(usize, i64)> {
    let prefix = tail_prefix();
    let at = find(tail, prefix.as_bytes())?;
    let version = std::str::from_utf8(&tail[at + prefix.len()..])
        .ok()?
        .strip_suffix("\"}}\n")?
        .parse()
        .ok()?;
    Some((tail_at + at, version))
}

#[cfg(test)]
impl<'a> Index<&'a [u8]> {
    /// None for anything but the exact layout `assemble` writes (then the caller regenerates).
    fn parse(bytes: &'a [u8]) -> Option<Index<&'a [u8]>> {
        let rest = bytes.strip_prefix(HEAD.as_bytes())?;
        let from = rest.len().saturating_sub(96);
        let (end, version) = parse_tail(&rest[from..], from)?;
        Index::checked(version, &rest[..end])
    }
}

impl<'f> Index<FileBody<'f>> {
    /// [`Index::parse`] of an open file, reading only its head and tail.
    fn open(file: &'f File) -> Option<Index<FileBody<'f>>> {
        use std::os::unix::fs::FileExt;
        let len = file.metadata().ok()?.len() as usize;
        let mut head = vec![0; HEAD.len()];
        file.read_exact_at(&mut head, 0).ok()?;
        if head != HEAD.as_bytes() {
            return None;
        }
        let rest = len.checked_sub(HEAD.len())?;
        let from = rest.saturating_sub(96);
        let mut tail = vec![0; rest - from];
        file.read_exact_at(&mut tail, (HEAD.len() + from) as u64)
            .ok()?;
        let (end, version) = parse_tail(&tail, from)?;
        let body = FileBody {
            file,
            start: HEAD.len() as u64,
            len: end,
        };
        Index::checked(version, body)
    }
}

impl<B: Body> Index<B> {
    fn checked(version: i64, body: B) -> Option<Index<B>> {
        let n = body.len();
        if n > 0 && (&*body.get(0, 2.min(n))? != b"\n{" || &*body.get(n - 1, n)? != b"}") {
            return None;
        }
        Some(Index { version, body })
    }

    /// The unit starting at `start` (a "\n"): its end (after its comma, or the body's end).
    fn unit_end(&self, start: usize) -> Option<usize> {
        let n = self.body.len();
        let to = (start + 1 + WINDOW).min(n);
        let w = self.body.get(start + 1, to)?;
        match w.iter().position(|&b| b == b'\n') {
            Some(k) => Some(start + 1 + k),
            None if to == n => Some(n),
            None => None,
        }
    }

    /// The tag name of the unit at `start`, and its end.
    fn name_at(&self, start: usize) -> Option<(String, usize)> {
        let end = self.unit_end(start)?;
        let l = self.body.get(start, end)?;
        let key = b"\"io.containerd.image.name\":";
        let at = find(&l, key)? + key.len();
        let mut de = serde_json::Deserializer::from_slice(&l[at..]);
        Some((serde::Deserialize::deserialize(&mut de).ok()?, end))
    }

    /// Where `name` is: (its unit's start, its end if it is there).
    fn find_name(&self, name: &str) -> Option<(usize, Option<usize>)> {
        let (mut lo, mut hi) = (0usize, self.body.len());
        // lo and hi are unit starts (or the end); each step looks at the unit holding the middle.
        while lo < hi {
            let mid = (lo + hi) / 2;
            let from = mid.saturating_sub(WINDOW).max(lo);
            let w = self.body.get(from, mid + 1)?;
            let start = w.iter().rposition(|&b| b == b'\n')? + from;
            let (found, end) = self.name_at(start)?;
            match found.as_str().cmp(name) {
                std::cmp::Ordering::Less => lo = end,
                std::cmp::Ordering::Greater => hi = start,
                std::cmp::Ordering::Equal => return Some((start, Some(end))),
            }
        }
        Some((lo, None))
    }

    /// The cuts that make `changes`, in the file's order; None if a unit cannot be read or a
    /// name is changed twice. The units are sorted by name: the file is kiln's own (its version
    /// says so), and only kiln at this schema writes it.
    fn edits(&self, changes: &[RefChange]) -> Option<Vec<Edit>> {
        let mut edits = Vec::with_capacity(changes.len());
        for c in changes {
            let (start, end) = self.find_name(&c.name)?;
            let unit = c.target.as_ref().map(|t| {
                let mut u = b"\n".to_vec();
                u.extend_from_slice(&line(&c.name, t));
                u.push(b',');
                u
            });
            let end = end.unwrap_or(start);
            edits.push(Edit {
                start: self.virtual_pos(start),
                end: self.virtual_pos(end),
                name: c.name.clone(),
                unit,
            });
        }
        // At one place, a new name sorts before the name found there, so (place, name) order is
        // the file's order.
        edits.sort_by(|a, b| (a.start, &a.name).cmp(&(b.start, &b.name)));
        if edits.windows(2).any(|w| w[0].name == w[1].name) {
            return None;
        }
        Some(edits)
    }

    /// A position in the body as a position in the body with its virtual last comma.
    fn virtual_pos(&self, p: usize) -> usize {
        if p == self.body.len() && p > 0 {
            p + 1
        } else {
            p
        }
    }

    /// Bytes [a, b) of the body with its virtual last comma.
    fn virtual_slice(&self, a: usize, b: usize) -> [Piece<'static>; 2] {
        let n = self.body.len();
        let comma: &'static [u8] = if b > n && a <= n { b"," } else { b"" };
        [Piece::Old(a.min(n), b.min(n)), Piece::New(comma)]
    }

    /// The new file, as pieces to write in order: the head, the body with `edits` made, the tail
    /// (which carries the new version).
    fn pieces<'b>(&self, edits: &'b [Edit], tail: &'b [u8]) -> Vec<Piece<'b>> {
        let mut out: Vec<Piece<'b>> = vec![Piece::New(HEAD.as_bytes())];
        let mut next = 0;
        for e in edits {
            out.extend(self.virtual_slice(next, e.start));
            if let Some(u) = &e.unit {
                out.push(Piece::New(u));
            }
            next = e.end;
        }
        out.extend(self.virtual_slice(next, self.virtual_pos(self.body.len())));
        // Every unit ends in a comma now; the array's last one must not.
        let empty = |p: &Piece<'_>| match p {
            Piece::Old(a, b) => a == b,
            Piece::New(s) => s.is_empty(),
        };
        if let Some(last) = out[1..].iter_mut().rev().find(|p| !empty(p)) {
            *last = match *last {
                Piece::Old(a, b) => Piece::Old(a, b - 1),
                Piece::New(s) => Piece::New(&s[..s.len() - 1]),
            };
        }
        out.push(Piece::New(tail));
        out
    }
}

impl Index<FileBody<'_>> {
    /// Writes `pieces` to `out`: new bytes as they are, old ones copied from the file in the
    /// kernel (copy_file_range), never through this process.
    fn write(&self, pieces: &[Piece<'_>], out: &mut File) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        for p in pieces {
            match *p {
                Piece::New(s) => out.write_all(s)?,
                Piece::Old(a, b) => {
                    let mut src = self.body.file;
                    src.seek(SeekFrom::Start(self.body.start + a as u64))?;
                    let n = std::io::copy(&mut src.take((b - a) as u64), out)?;
                    if n != (b - a) as u64 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// One cut of the body (with its virtual comma): [start, end) replaced by `unit`.
struct Edit {
    start: usize,
    end: usize,
    name: String,
    unit: Option<Vec<u8>>,
}

/// The tail of a file at `version`.
fn tail(version: i64) -> Vec<u8> {
    format!("{}{version}\"}}}}\n", tail_prefix()).into_bytes()
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(n: u8) -> IndexTarget {
        IndexTarget {
            manifest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 400 + n as u64,
        }
    }

    fn file(tags: &[(&str, u8)], version: i64) -> Vec<u8> {
        let lines: Vec<Vec<u8>> = tags.iter().map(|(n, t)| line(n, &target(*t))).collect();
        assemble(lines.iter().map(|l| &l[..]), version)
    }

    /// The splice in memory, and the same splice of the bytes as a file: both must agree.
    fn splice(index: &Index<&[u8]>, version: i64, changes: &[RefChange]) -> Option<Vec<u8>> {
        let edits = index.edits(changes)?;
        let tail = tail(version);
        let mem: Vec<u8> = index
            .pieces(&edits, &tail)
            .iter()
            .flat_map(|p| match *p {
                Piece::Old(a, b) => index.body[a..b].to_vec(),
                Piece::New(s) => s.to_vec(),
            })
            .collect();
        let mut whole = HEAD.as_bytes().to_vec();
        whole.extend_from_slice(index.body);
        whole.extend_from_slice(&super::tail(index.version));
        let src = tempfile::tempfile().unwrap();
        (&src).write_all(&whole).unwrap();
        let on_disk = Index::open(&src).expect("the same bytes parse as a file");
        assert_eq!(on_disk.version, index.version);
        let edits = on_disk.edits(changes).expect("the same edits");
        let mut out = tempfile::tempfile().unwrap();
        on_disk
            .write(&on_disk.pieces(&edits, &tail), &mut out)
            .unwrap();
        use std::io::{Read, Seek};
        out.rewind().unwrap();
        let mut file = Vec::new();
        out.read_to_end(&mut file).unwrap();
        assert_eq!(
            file, mem,
            "the file splice writes what the in-memory one does"
        );
        Some(mem)
    }

    fn set(name: &str, t: Option<u8>) -> RefChange {
        RefChange {
            name: name.into(),
            target: t.map(target),
        }
    }

    #[test]
    fn a_splice_gives_the_file_a_regeneration_would() {
        let names = ["a/b:1", "a:1", "b:1", "c:2", "docker.io/x/y:latest", "z:9"];
        let tags: Vec<(&str, u8)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, i as u8))
            .collect();
        let old = file(&tags, 7);
        let index = Index::parse(&old).expect("kiln's own file parses");
        assert_eq!(index.version, 7);
        // The JSON is an OCI index with the version annotation.
        let v: serde_json::Value = serde_json::from_slice(&old).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), names.len());
        assert_eq!(v["annotations"][VERSION_KEY], "7");

        // Add at the front, middle and end; replace; remove; several at once.
        let cases: Vec<(Vec<RefChange>, Vec<(&str, u8)>)> = vec![
            (
                vec![set("0:0", Some(40))],
                [("0:0", 40)].into_iter().chain(tags.clone()).collect(),
            ),
            (
                vec![set("zz:1", Some(41))],
                tags.iter().cloned().chain([("zz:1", 41)]).collect(),
            ),
            (vec![set("bb:1", Some(42))], {
                let mut t = tags.clone();
                t.insert(3, ("bb:1", 42));
                t
            }),
            (vec![set("c:2", Some(43))], {
                let mut t = tags.clone();
                t[3].1 = 43;
                t
            }),
            (vec![set("a/b:1", None)], tags[1..].to_vec()),
            (
                vec![set("z:9", None), set("b:1", None), set("m:1", Some(44))],
                { vec![tags[0], tags[1], tags[3], tags[4], ("m:1", 44)] },
            ),
            (vec![set("nope:1", None)], tags.clone()),
            (vec![set("bz:1", Some(45)), set("ba:1", Some(46))], {
                let mut t = tags.clone();
                t.insert(3, ("ba:1", 46));
                t.insert(4, ("bz:1", 45));
                t
            }),
        ];
        for (changes, want) in cases {
            let got = splice(&index, 8, &changes).unwrap_or_else(|| {
                panic!("{:?}", changes.iter().map(|c| &c.name).collect::<Vec<_>>())
            });
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(file(&want, 8)).unwrap()
            );
        }
        // Empty files, both ways.
        let empty = file(&[], 3);
        let e = Index::parse(&empty).unwrap();
        assert!(e.body.is_empty());
        assert_eq!(
            splice(&e, 4, &[set("a:1", Some(1))]).unwrap(),
            file(&[("a:1", 1)], 4)
        );
        let one = file(&[("a:1", 1)], 4);
        assert_eq!(
            splice(&Index::parse(&one).unwrap(), 5, &[set("a:1", None)]).unwrap(),
            file(&[], 5)
        );
    }

    #[test]
    fn anything_else_is_regenerated() {
        // An older kiln's file (no version), a cut file, two changes to a name.
        let good = file(&[("a:1", 1), ("b:1", 2)], 2);
        assert!(Index::parse(&good[..good.len() - 5]).is_none());
        let no_version = String::from_utf8(good.clone())
            .unwrap()
            .replace(",\"annotations\":{\"dev.kiln.refs-version\":\"2\"}", "");
        assert!(Index::parse(no_version.as_bytes()).is_none());
        let g = Index::parse(&good).unwrap();
        assert!(splice(&g, 3, &[set("a:1", None), set("a:1", Some(3))]).is_none());
    }
}
