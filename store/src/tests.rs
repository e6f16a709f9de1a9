//! Store unit tests: ingest, records, migrations, GC roots, verification.

use crate::*;
use std::io::Write;
use std::sync::Arc;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
}

fn layer(s: &Store, content: &[u8]) -> LayerRecord {
    let mut enc = LayerEncoder::new(s.ingest().unwrap(), Compression::Zstd).unwrap();
    enc.write_all(content).unwrap();
    let (d, ingest) = enc.finish().unwrap();
    ingest.commit(Some(d.digest)).unwrap();
    LayerRecord {
        digest: d.digest,
        diff_id: d.diff_id,
        media_type: Compression::Zstd.media_type().into(),
        size: d.size,
        uncompressed_size: d.uncompressed_size,
    }
}

#[test]
fn a_prehashed_ingest_takes_its_writers_digest_and_a_hashed_one_checks() {
    let (_d, s) = store();
    // The encoder's digest of the compressed stream is the blob's digest.
    let mut enc = LayerEncoder::new(s.ingest_prehashed().unwrap(), Compression::Zstd).unwrap();
    enc.write_all(b"some layer bytes").unwrap();
    let (d, ingest) = enc.finish().unwrap();
    let (got, size) = ingest.commit(Some(d.digest)).unwrap();
    assert_eq!((got, size), (d.digest, d.size));
    assert_eq!(Digest::of(&std::fs::read(s.blob_path(&got)).unwrap()), got);
    // Without the digest a prehashed ingest cannot commit (and stores nothing).
    let mut i = s.ingest_prehashed().unwrap();
    i.write_all(b"x").unwrap();
    assert!(i.commit(None).is_err());
    assert!(!s.has_blob(&Digest::of(b"x")));
    // A hashed ingest still refuses bytes that are not the expected digest.
    let mut i = s.ingest().unwrap();
    i.write_all(b"y").unwrap();
    assert!(matches!(
        i.commit(Some(Digest::of(b"z"))),
        Err(Error::DigestMismatch { .. })
    ));
}

fn image(s: &Store, layers: Vec<LayerRecord>, salt: &str) -> NewImage {
    let config = format!(r#"{{"salt":"{salt}"}}"#);
    let c = s.put_blob(config.as_bytes(), None).unwrap();
    let manifest = format!(r#"{{"config":"{c}","layers":{}}}"#, layers.len());
    let m = s.put_blob(manifest.as_bytes(), None).unwrap();
    NewImage {
        manifest: BlobRef {
            digest: m,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: manifest.len() as u64,
        },
        config: BlobRef {
            digest: c,
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            size: config.len() as u64,
        },
        layers,
        created: Some(0),
    }
}

#[test]
fn ingest_is_idempotent_and_already_exists_is_success() {
    let (_d, s) = store();
    let a = s.put_blob(b"same bytes", None).unwrap();
    let b = s.put_blob(b"same bytes", Some(a)).unwrap();
    assert_eq!(a, b);
    assert_eq!(std::fs::read(s.blob_path(&a)).unwrap(), b"same bytes");
    assert_eq!(
        std::fs::read_dir(s.ingest_dir()).unwrap().count(),
        0,
        "no temp file left"
    );
}

#[test]
fn digest_mismatch_is_rejected_and_nothing_is_stored() {
    let (_d, s) = store();
    let wrong = Digest::of(b"something else");
    let err = s.put_blob(b"content", Some(wrong)).unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { expected, .. } if expected == wrong),
        "{err}"
    );
    assert!(!s.has_blob(&Digest::of(b"content")));
    assert!(!s.has_blob(&wrong));
    assert_eq!(std::fs::read_dir(s.ingest_dir()).unwrap().count(), 0);
}

#[test]
fn concurrent_ingest_of_the_same_blob() {
    let (d, s) = store();
    let s = Arc::new(s);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = Digest::of(&data);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 {
                s.clone()
            } else {
                Arc::new(Store::open(d.path()).unwrap())
            };
            let data = data.clone();
            std::thread::spawn(move || s.put_blob(&data, Some(expected)).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
    assert_eq!(s.read_blob(&expected).unwrap(), data);
    assert!(s.verify().unwrap().is_empty());
}

#[test]
fn read_blob_detects_a_corrupted_file() {
    let (_d, s) = store();
    let d = s.put_blob(b"{}", None).unwrap();
    std::fs::write(s.blob_path(&d), b"{ }").unwrap();
    assert!(matches!(s.read_blob(&d), Err(Error::DigestMismatch { .. })));
}

#[test]
fn migrations_run_once_and_a_newer_store_is_refused() {
    let (d, s) = store();
    let v: u32 = s
        .db()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, store::schema_version());
    drop(s);
    // Reopening keeps data and does not re-run migrations.
    let s = Store::open(d.path()).unwrap();
    s.db().pragma_update(None, "user_version", 999).unwrap();
    drop(s);
    match Store::open(d.path()) {
        Err(Error::TooNew { found: 999, .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a store from the future"),
    }
    std::fs::write(d.path().join("kiln-version"), "7\n").unwrap();
    assert!(matches!(
        Store::open(d.path()),
        Err(Error::TooNew { found: 7, .. })
    ));
}

#[test]
fn images_refs_and_index_json() {
    let (_d, s) = store();
    let l = layer(&s, b"layer one");
    let img = image(&s, vec![l.clone()], "a");
    s.commit_image(&img, &["docker.io/library/a:latest".into()])
        .unwrap();
    let rec = s.image(&img.manifest.digest).unwrap().unwrap();
    assert_eq!(rec.layers, vec![l]);
    assert_eq!(rec.size(), b"layer one".len() as u64);
    assert_eq!(
        s.resolve_ref("docker.io/library/a:latest").unwrap(),
        Some(img.manifest.digest)
    );
    s.set_ref("docker.io/library/b:1", &img.manifest.digest)
        .unwrap();
    assert_eq!(s.refs_of(&img.manifest.digest).unwrap().len(), 2);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.root().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        index["manifests"][0]["digest"],
        img.manifest.digest.to_string()
    );
    assert!(s
        .set_ref("x:1", &Digest::of(b"nope"))
        .unwrap_err()
        .is_not_found());
    assert!(matches!(
        s.delete_image(&img.manifest.digest),
        Err(Error::InUse(_))
    ));
    assert!(s.verify().unwrap().is_empty(), "{:?}", s.verify());
}

/// index.json as a whole regeneration from the refs table writes it.
fn regenerated(s: &Store) -> Vec<u8> {
    let path = s.root().join("index.json");
    let spliced = std::fs::read(&path).unwrap();
    s.write_index().unwrap();
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &spliced).unwrap();
    whole
}

#[test]
fn index_json_splices_stay_equal_to_regenerating_it() {
    let (_d, s) = store();
    let l = layer(&s, b"layer");
    let imgs: Vec<NewImage> = (0..3)
        .map(|i| image(&s, vec![l.clone()], &i.to_string()))
        .collect();
    s.commit_image(&imgs[0], &[]).unwrap();
    s.commit_image(&imgs[1], &[]).unwrap();
    // Tags added, moved and removed in a scrambled order; the file after each change is the one
    // a regeneration writes.
    for step in 0..60u32 {
        let name = format!("docker.io/t/n{}:{}", (step * 7) % 13, step % 3);
        match step % 4 {
            0 | 1 => {
                s.set_ref(&name, &imgs[(step % 2) as usize].manifest.digest)
                    .unwrap();
            }
            2 => {
                s.remove_ref(&name).unwrap();
            }
            _ => s
                .commit_image(&imgs[2], &[name.clone(), format!("{name}-b")])
                .unwrap(),
        }
        let now = std::fs::read(s.root().join("index.json")).unwrap();
        assert_eq!(
            String::from_utf8(now).unwrap(),
            String::from_utf8(regenerated(&s)).unwrap(),
            "step {step}"
        );
    }
    assert!(s.verify().unwrap().is_empty(), "{:?}", s.verify());

    // A file left behind (a crash between the commit and the write; another kiln's change not
    // yet written) is not spliced but regenerated.
    let stale = std::fs::read(s.root().join("index.json")).unwrap();
    s.set_ref("docker.io/t/lost:1", &imgs[0].manifest.digest)
        .unwrap();
    std::fs::write(s.root().join("index.json"), &stale).unwrap();
    s.set_ref("docker.io/t/next:1", &imgs[0].manifest.digest)
        .unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.root().join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(names.contains(&"docker.io/t/lost:1") && names.contains(&"docker.io/t/next:1"));
    assert!(s.verify().unwrap().is_empty(), "{:?}", s.verify());

    // Writers on other threads (each its own Store, as separate kiln processes are): the last
    // file holds every tag.
    let root = s.root().to_path_buf();
    let m = imgs[1].manifest.digest;
    std::thread::scope(|sc| {
        for t in 0..4 {
            let root = root.clone();
            sc.spawn(move || {
                let s = Store::open(&root).unwrap();
                for i in 0..10 {
                    s.set_ref(&format!("docker.io/c/t{t}:{i}"), &m).unwrap();
                }
            });
        }
    });
    let now = std::fs::read(s.root().join("index.json")).unwrap();
    assert_eq!(now, regenerated(&s));
    assert!(s.verify().unwrap().is_empty(), "{:?}", s.verify());
}

#[test]
fn gc_keeps_roots_and_sweeps_the_rest() {
    let (_d, s) = store();
    let shared = layer(&s, b"shared base layer");
    let only_b = layer(&s, b"only in b");
    let a = image(&s, vec![shared.clone()], "a");
    let b = image(&s, vec![shared.clone(), only_b.clone()], "b");
    s.commit_image(&a, &["a:1".into()]).unwrap();
    s.commit_image(&b, &["b:1".into()]).unwrap();
    let orphan = s.put_blob(b"orphan from a crash", None).unwrap();
    std::fs::write(s.ingest_dir().join("blob-leftover"), b"partial").unwrap();

    // A lease blocks a non-waiting GC.
    let lease = s.lease().unwrap();
    assert_eq!(s.gc(GcOptions::default()).unwrap(), None);
    drop(lease);

    let r = s.gc(GcOptions::default()).unwrap().unwrap();
    assert_eq!(r.blobs_removed, 1, "only the orphan goes: {r:?}");
    assert_eq!(r.temp_removed, 1);
    assert!(!s.has_blob(&orphan));

    // Untag b: it is dangling, kept by a plain GC, removed by a pruning one; the shared layer stays.
    s.remove_ref("b:1").unwrap();
    let r = s.gc(GcOptions::default()).unwrap().unwrap();
    assert_eq!(r.blobs_removed, 0);
    // A container keeps an untagged image alive.
    s.containers()
        .add(&ContainerRecord {
            id: "c1".into(),
            name: "n1".into(),
            image: b.manifest.digest,
            image_ref: "b:1".into(),
            created: 0,
            state: ContainerState::Created,
        })
        .unwrap();
    let r = s
        .gc(GcOptions {
            prune_dangling: true,
            wait: true,
        })
        .unwrap()
        .unwrap();
    assert!(r.images_removed.is_empty());
    s.containers().remove("c1").unwrap();
    let r = s
        .gc(GcOptions {
            prune_dangling: true,
            wait: true,
        })
        .unwrap()
        .unwrap();
    assert_eq!(r.images_removed, vec![b.manifest.digest]);
    assert_eq!(
        r.blobs_removed, 3,
        "b's manifest, config and own layer: {r:?}"
    );
    assert!(s.has_blob(&shared.digest));
    assert!(!s.has_blob(&only_b.digest));
    assert!(s.image(&a.manifest.digest).unwrap().is_some());
    assert!(s.verify().unwrap().is_empty());
}

#[test]
fn snapshots_commit_once_and_gc_follows_chain_ids() {
    let (_d, s) = store();
    let l = layer(&s, b"snap layer");
    let img = image(&s, vec![l.clone()], "s");
    s.commit_image(&img, &["s:1".into()]).unwrap();
    let chain = chain_ids(&[l.diff_id])[0];
    let d1 = s.prepare_snapshot_dir().unwrap();
    std::fs::write(d1.path().join("fs/file"), b"x").unwrap();
    let r1 = s.commit_snapshot(d1, chain, None, l.diff_id, 1).unwrap();
    let d2 = s.prepare_snapshot_dir().unwrap();
    let r2 = s.commit_snapshot(d2, chain, None, l.diff_id, 1).unwrap();
    assert_eq!(r1, r2, "second commit of the same chain returns the first");
    assert!(s.snapshot_fs(&r1).join("file").exists());
    let stray = s.prepare_snapshot_dir().unwrap();
    let stray_chain = Digest::of(b"stray");
    s.commit_snapshot(stray, stray_chain, None, stray_chain, 0)
        .unwrap();
    let r = s
        .gc(GcOptions {
            prune_dangling: false,
            wait: true,
        })
        .unwrap()
        .unwrap();
    assert_eq!(r.snapshots_removed, 1);
    assert!(s.snapshot(&chain).unwrap().is_some());
    assert!(s.snapshot(&stray_chain).unwrap().is_none());
    assert!(s.verify().unwrap().is_empty());
}

#[test]
fn chain_ids_follow_the_image_spec() {
    let a = Digest::of(b"a");
    let b = Digest::of(b"b");
    let c = chain_ids(&[a, b]);
    assert_eq!(c[0], a);
    assert_eq!(c[1], Digest::of(format!("{a} {b}").as_bytes()));
}

#[test]
fn discard_blob_removes_only_what_nothing_uses() {
    let (_d, s) = store();
    let loose = s.put_blob(b"downloaded, then refused", None).unwrap();
    assert!(s.discard_blob(&loose).unwrap());
    assert!(!s.has_blob(&loose));
    assert!(!s.discard_blob(&loose).unwrap(), "already gone");
    let l = layer(&s, b"a layer an image uses");
    s.record_layer(&l).unwrap();
    assert!(!s.discard_blob(&l.digest).unwrap());
    assert!(s.has_blob(&l.digest));
    assert!(s.layer(&l.digest).unwrap().is_some());
}

#[test]
fn the_wal_stays_bounded_across_processes() {
    // Each kiln command opens the store, writes a little and exits; SQLite's WAL recovery in
    // every new process forgot what was checkpointed, and the WAL grew with every command.
    let (d, s) = store();
    let img = image(&s, vec![layer(&s, b"l")], "w");
    s.commit_image(&img, &[]).unwrap();
    drop(s);
    let wal = d.path().join("kiln.db-wal");
    let mut most = 0;
    for i in 0..300 {
        let s = Store::open(d.path()).unwrap();
        s.set_ref(&format!("docker.io/w/t{i}:1"), &img.manifest.digest)
            .unwrap();
        drop(s);
        most = most.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    assert!(most < 2 << 20, "the WAL reached {most} bytes");
    let s = Store::open(d.path()).unwrap();
    assert_eq!(s.refs_of(&img.manifest.digest).unwrap().len(), 300);
}

#[test]
fn usage_counts_shared_blobs_once_and_what_only_dangling_images_use() {
    let (_d, s) = store();
    let shared = layer(&s, b"shared layer");
    let own = layer(&s, b"only the dangling image's layer");
    let tagged = image(&s, vec![shared.clone()], "tagged");
    let dangling = image(&s, vec![shared.clone(), own.clone()], "dangling");
    s.commit_image(&tagged, &["t:1".into()]).unwrap();
    s.commit_image(&dangling, &[]).unwrap();
    let u = s.usage().unwrap();
    assert_eq!((u.images, u.images_tagged), (2, 1));
    let size = |b: &BlobRef| b.size;
    let all = size(&tagged.manifest)
        + size(&tagged.config)
        + size(&dangling.manifest)
        + size(&dangling.config)
        + shared.size
        + own.size;
    assert_eq!(u.image_bytes, all, "the shared layer counts once");
    assert_eq!(
        u.image_reclaimable,
        size(&dangling.manifest) + size(&dangling.config) + own.size,
        "what only the dangling image uses"
    );
    assert_eq!(u.orphan_bytes, 0);
}

#[test]
fn schema_8_fills_image_and_step_sizes_in_a_store_made_before_it() {
    let (d, s) = store();
    let l = layer(&s, b"a layer of some bytes");
    let img = image(&s, vec![l.clone()], "old");
    s.commit_image(&img, &["old:1".into()]).unwrap();
    s.steps()
        .record(&crate::StepRecord {
            key: "k".repeat(64),
            slot: "slot".into(),
            parent: "p".repeat(64),
            layer: Some(l.clone()),
            chain_id: None,
            instruction: "RUN x".into(),
            inputs: "{}".into(),
            created: 1,
            last_used: 2,
            hits: 0,
        })
        .unwrap();
    // Back to schema 7: without the columns and indexes 8 adds.
    s.db()
        .execute_batch(
            "DROP INDEX step_cache_used; DROP INDEX image_layers_layer; DROP INDEX step_cache_layer;
             DROP INDEX images_config; DROP INDEX containers_image;
             ALTER TABLE images DROP COLUMN size; ALTER TABLE step_cache DROP COLUMN layer_size;
             PRAGMA user_version = 7;",
        )
        .unwrap();
    drop(s);
    let s = Store::open(d.path()).unwrap();
    let listed = s.image_list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, l.uncompressed_size);
    assert_eq!(listed[0].tags, vec!["old:1".to_string()]);
    let steps = s.steps().list().unwrap();
    assert_eq!(steps[0].layer_size, l.size);
    assert_eq!(
        steps[0].layer.as_deref(),
        Some(l.digest.to_string().as_str())
    );
}
