//! Unpacking images into snapshots (the library path `run` and `build` use).

use crate::common::*;
use kiln::store::{Compression, LayerEncoder, LayerRecord};
use std::io::Write;

#[test]
fn unpacked_snapshot_equals_the_imported_tree() {
    let Some((k, rootfs, _)) = busybox_image("busybox", &[]) else {
        return;
    };
    let store = k.store();
    let img = kiln::image::resolve(&store, "busybox").unwrap().image;
    let snaps = kiln::snapshotter::unpack_image(&store, &img).unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(describe(&store.snapshot_fs(&snaps[0])), describe(&rootfs));
    // A second call finds the snapshot instead of unpacking again.
    assert_eq!(
        kiln::snapshotter::unpack_image(&store, &img).unwrap(),
        snaps
    );
    assert!(store.verify().unwrap().is_empty());
}

/// A hostile layer that got into the store (kiln import refuses it; a registry might not) fails
/// to unpack with an error naming the entry, and leaves no snapshot and no temp dir behind.
#[test]
fn a_malicious_layer_leaves_no_partial_snapshot() {
    if !needs(&[]) {
        return;
    }
    let k = Kiln::new();
    let store = k.store();
    let mut tar = Vec::new();
    for (name, data) in [("ok-file", &b"fine"[..]), ("../escape", &b"evil"[..])] {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.extend_from_slice(&[0; 1024]);
    let mut enc = LayerEncoder::new(store.ingest().unwrap(), Compression::Zstd).unwrap();
    enc.write_all(&tar).unwrap();
    let (d, ingest) = enc.finish().unwrap();
    ingest.commit(Some(d.digest)).unwrap();
    let layer = LayerRecord {
        digest: d.digest,
        diff_id: d.diff_id,
        media_type: Compression::Zstd.media_type().into(),
        size: d.size,
        uncompressed_size: d.uncompressed_size,
    };
    let config = kiln::image::oci::ImageConfig {
        created: None,
        author: None,
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        config: Default::default(),
        rootfs: kiln::image::oci::RootFs {
            kind: "layers".into(),
            diff_ids: vec![d.diff_id],
        },
        history: vec![],
        extra: Default::default(),
    };
    let img = kiln::image::create_image(
        &store,
        &config,
        vec![layer],
        &["docker.io/library/evil:latest".into()],
    )
    .unwrap();
    let err = kiln::snapshotter::unpack_image(&store, &img).unwrap_err();
    let chain: Vec<String> =
        std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect();
    assert!(
        chain.iter().any(|m| m.contains("../escape")),
        "the error names the entry: {chain:?}"
    );
    assert!(store.snapshots().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(store.root().join("snapshots"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(store.ingest_dir()).unwrap().count(),
        0,
        "no temp dir left"
    );
    assert!(!k.dir.path().join("escape").exists() && !k.root().join("escape").exists());
}
