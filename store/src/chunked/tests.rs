use super::toc::Metadata;
use super::*;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::sync::Arc;

/// A tar of `files` (path, content) with a directory, a symlink, a hard link, a long name and an
/// xattr, in the shapes kiln's layer writer produces.
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h.set_path("dir/").unwrap();
    h.set_cksum();
    b.append(&h, io::empty()).unwrap();
    for (i, (name, data)) in files.iter().enumerate() {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(i as u64 % 3);
        h.set_mtime(1_700_000_000 + i as u64);
        h.set_size(data.len() as u64);
        if i == 1 {
            b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v\x00w"[..])])
                .unwrap();
        }
        if name.len() > 100 {
            b.append_pax_extensions([("path", name.as_bytes())])
                .unwrap();
            h.as_old_mut().name[..100].copy_from_slice(&name.as_bytes()[..100]);
        } else {
            h.set_path(name).unwrap();
        }
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    for (kind, name, target) in [
        (tar::EntryType::Symlink, "dir/sym", "../x"),
        (tar::EntryType::Link, "dir/hard", "dir/f0"),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_path(name).unwrap();
        h.set_link_name(target).unwrap();
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

fn encode(tar: &[u8], frames: Option<Arc<FrameIndex>>) -> (Vec<u8>, u64) {
    let mut w = ChunkedWriter::new(Vec::new(), frames);
    // Odd write sizes: the parser must not depend on how the stream is cut.
    for piece in tar.chunks(777) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fn metadata(blob: &[u8]) -> Metadata {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(blob).unwrap();
    Metadata::read(&f, blob.len() as u64)
        .unwrap()
        .expect("a chunked blob")
}

fn sample() -> Vec<(String, Vec<u8>)> {
    let big: Vec<u8> = (0..(CHUNK * 2 + 12_345))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    vec![
        ("dir/f0".into(), b"hello".to_vec()),
        ("dir/f1".into(), vec![b'x'; 1000]),
        ("dir/empty".into(), Vec::new()),
        (format!("dir/{}", "n".repeat(150)), b"long".to_vec()),
        ("dir/big".into(), big),
    ]
}

#[test]
fn blob_decompresses_to_the_tar_and_the_toc_finds_every_file() {
    let files = sample();
    let tar = tar_of(&files);
    let (blob, reused) = encode(&tar, None);
    assert_eq!(reused, 0);
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(&blob[..])
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, tar, "one zstd stream, skippable frames ignored");

    let meta = metadata(&blob);
    let toc = meta.toc().unwrap();
    assert_eq!(toc.version, 1);
    assert_eq!(
        toc.tar_split_digest,
        crate::Digest::of(&meta.tarsplit_zst).to_string()
    );
    let names: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"dir/"), "{names:?}");
    let long = format!("dir/{}", "n".repeat(150));
    for (name, data) in &files {
        let e = toc
            .entries
            .iter()
            .find(|e| &e.name == name && e.kind == "reg")
            .unwrap();
        assert_eq!(e.size as usize, data.len(), "{name}");
        if data.is_empty() {
            assert!(e.digest.is_empty() && e.offset == 0);
            continue;
        }
        assert_eq!(e.digest, crate::Digest::of(data).to_string(), "{name}");
        let frame = &blob[e.offset as usize..e.end_offset as usize];
        let mut got = Vec::new();
        zstd::stream::read::Decoder::new(frame)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(&got, data, "{name}: its frames hold exactly its content");
    }
    let big = toc.entries.iter().find(|e| e.name == "dir/big").unwrap();
    assert_eq!(big.chunk_size as usize, CHUNK);
    let chunks: Vec<_> = toc.entries.iter().filter(|e| e.kind == "chunk").collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1].chunk_offset as usize, 2 * CHUNK);
    let f1 = toc.entries.iter().find(|e| e.name == "dir/f1").unwrap();
    assert_eq!(f1.xattrs.get("user.k").map(String::as_str), Some("dgB3"));
    assert_eq!(f1.modtime.as_deref(), Some("2023-11-14T22:13:21Z"));
    assert!(toc.entries.iter().any(|e| e.name == long));
    let hard = toc.entries.iter().find(|e| e.name == "dir/hard").unwrap();
    assert_eq!(
        (hard.kind.as_str(), hard.link_name.as_str()),
        ("hardlink", "dir/f0")
    );

    let ann = meta.annotations();
    assert_eq!(
        ann[toc::ANNOTATION_TOC_DIGEST],
        crate::Digest::of(&meta.toc_zst).to_string()
    );
    let pos = &ann[toc::ANNOTATION_TOC_POSITION];
    assert_eq!(
        pos,
        &format!(
            "{}:{}:{}:1",
            meta.footer.toc_offset,
            meta.toc_zst.len(),
            meta.footer.toc_uncompressed
        )
    );
}

/// Rebuilds the tar from tar-split as tar-split's assembler does: segments verbatim, each file's
/// payload from elsewhere, checked against its CRC-64.
#[test]
fn tar_split_rebuilds_the_tar_with_checksums() {
    let files = sample();
    let tar = tar_of(&files);
    let (blob, _) = encode(&tar, None);
    let lines = metadata(&blob).tarsplit().unwrap();
    let content = |name: &str| -> Vec<u8> {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (i, line) in lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["position"], i);
        use base64::Engine as _;
        let payload = v["payload"]
            .as_str()
            .map(|p| base64::engine::general_purpose::STANDARD.decode(p).unwrap());
        match v["type"].as_u64().unwrap() {
            2 => out.extend_from_slice(&payload.unwrap()),
            1 => {
                let data = content(v["name"].as_str().unwrap());
                assert_eq!(v["size"].as_u64().unwrap_or(0), data.len() as u64);
                if data.is_empty() {
                    assert!(v["payload"].is_null());
                } else {
                    let crc = crc64::update(0, &data).to_be_bytes();
                    assert_eq!(payload.unwrap(), crc);
                }
                out.extend_from_slice(&data);
            }
            t => panic!("type {t}"),
        }
    }
    assert_eq!(out, tar);
}

/// `blob` as a file, opened (it stays readable after its directory is gone).
fn opened(blob: &[u8]) -> ChunkedBlob {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("blob");
    std::fs::write(&p, blob).unwrap();
    ChunkedBlob::open(&p).unwrap().expect("a chunked blob")
}

fn index_of(blob: &[u8]) -> Arc<FrameIndex> {
    let mut ix = FrameIndex::default();
    assert!(ix.add(&opened(blob)).unwrap() > 0);
    Arc::new(ix)
}

#[test]
fn a_rebuild_copies_unchanged_frames_and_equals_a_fresh_encode() {
    let mut files = sample();
    let (old, _) = encode(&tar_of(&files), None);
    files[1].1[10] = b'y';
    let tar = tar_of(&files);
    let (fresh, _) = encode(&tar, None);
    let (incremental, reused) = encode(&tar, Some(index_of(&old)));
    assert!(incremental == fresh, "the same bytes whatever was reused");
    let big = files[4].1.len() as u64;
    assert_eq!(
        reused,
        big + 5 + 4,
        "every unchanged content frame is copied"
    );
}

#[test]
fn known_files_are_taken_as_they_are_and_give_the_same_blob() {
    let mut files = sample();
    let (old, _) = encode(&tar_of(&files), None);
    files[1].1[10] = b'y';
    let tar = tar_of(&files);
    let (fresh, _) = encode(&tar, None);
    let changed = files[1].0.clone();
    let known = KnownFiles::new(&opened(&old), &|n| n != changed.as_bytes())
        .unwrap()
        .unwrap();
    assert_eq!(
        known.len(),
        3,
        "f0, the long name and the big file (not the empty one)"
    );
    let mut w = ChunkedWriter::new(Vec::new(), None).with_known(Some(Arc::new(known)));
    for piece in tar.chunks(1000) {
        w.write_all(piece).unwrap();
    }
    let (blob, reused) = w.finish().unwrap();
    assert!(blob == fresh, "the same bytes as a fresh encode");
    assert_eq!(reused, files[4].1.len() as u64 + 5 + 4);
}

#[test]
fn a_frame_that_does_not_hold_its_content_is_not_used() {
    let files = sample();
    let tar = tar_of(&files);
    let (blob, _) = encode(&tar, None);
    let mut ix = FrameIndex::default();
    ix.add(&opened(&blob)).unwrap();
    // Point every digest at the first content frame: only f0's own entry is true.
    let first = ix.get(&Sha256::digest(b"hello").into()).unwrap();
    for v in ix.frames.values_mut() {
        *v = first;
    }
    let (again, reused) = encode(&tar, Some(Arc::new(ix)));
    assert_eq!(reused, 5);
    assert!(again == blob);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Random trees, random edits: the blob written with the old blob's frames at hand is the
    /// blob written from scratch, byte for byte.
    #[test]
    fn incremental_equals_from_scratch(
        sizes in proptest::collection::vec(0usize..20_000, 1..30),
        seed in any::<u64>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6),
    ) {
        let mut rng = seed;
        let mut byte = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u8 };
        let mut files: Vec<(String, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("dir/f{i}"), (0..n).map(|_| byte() % 16).collect()))
            .collect();
        let (old, _) = encode(&tar_of(&files), None);
        for (at, b, kind) in edits {
            let i = at % files.len();
            let f = &mut files[i].1;
            match kind {
                0 if !f.is_empty() => { let k = at % f.len(); f[k] = b; }
                1 => f.push(b),
                _ => { f.truncate(f.len() / 2); }
            }
        }
        let tar = tar_of(&files);
        let (fresh, _) = encode(&tar, None);
        let mut ix = FrameIndex::default();
        ix.add(&opened(&old)).unwrap();
        let ix = Arc::new(ix);
        let (incremental, _) = encode(&tar, Some(ix));
        prop_assert!(incremental == fresh);
    }
}
