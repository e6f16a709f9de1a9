//! Trimming the build cache (`kiln cache prune`, `kiln builder prune`): step-cache rows, least
//! recently used first, then GC of what no row or image needs; with `--all`, the RUN cache mounts
//! (each taken under its lock, so no build is using it) and ADD's downloads too.

use kiln_store::gc::dir_size;
use kiln_store::{GcOptions, StepRecord, Store};
use std::collections::HashSet;

/// What to prune.
#[derive(Debug, Default)]
pub struct PruneOptions {
    /// Every entry (else only those whose layer no image shares), and the cache mounts and
    /// downloads with them.
    pub all: bool,
    /// Only entries unused for this many seconds (`--filter until=`).
    pub unused_for: Option<i64>,
    /// Keep the most recently used entries up to this many bytes (`--keep-storage`).
    pub keep_storage: Option<u64>,
}

/// What went.
#[derive(Debug, Default)]
pub struct Pruned {
    /// The keys of the removed entries.
    pub entries: Vec<String>,
    /// Bytes reclaimed on disk.
    pub bytes: u64,
}

/// The stored size of a step's layer.
pub fn layer_size(r: &StepRecord) -> u64 {
    r.layer.as_ref().map_or(0, |l| l.size)
}

/// The step-layer digests some image also uses (their bytes are shared, not reclaimable).
pub fn shared_layers(store: &Store) -> kiln_store::Result<HashSet<String>> {
    store.step_layers_used_by_images()
}

/// RUN cache mounts (`<root>/cache-mounts/<id>`): how many, and their bytes.
pub fn cache_mounts(store: &Store) -> (usize, u64) {
    let Ok(rd) = std::fs::read_dir(super::exec::cache_mounts_dir(store)) else {
        return (0, 0);
    };
    rd.flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .fold((0, 0), |(n, b), e| (n + 1, b + dir_size(&e.path())))
}

/// Prunes the build cache as `opts` says.
pub fn prune(store: &Store, opts: &PruneOptions) -> kiln_store::Result<Pruned> {
    let now = kiln_store::store::now();
    let mut steps = store.steps().all()?;
    let shared = shared_layers(store)?;
    // With a storage limit, the most recently used entries up to it stay.
    let mut kept_bytes = 0u64;
    let mut doomed = Vec::new();
    steps.sort_by_key(|s| std::cmp::Reverse(s.last_used));
    for s in &steps {
        let size = layer_size(s);
        let eligible = opts.unused_for.is_none_or(|o| s.last_used <= now - o);
        let used = s
            .layer
            .as_ref()
            .is_some_and(|l| shared.contains(&l.digest.to_string()));
        let wanted = match opts.keep_storage {
            Some(limit) => {
                if kept_bytes + size <= limit {
                    kept_bytes += size;
                    false
                } else {
                    true
                }
            }
            None => opts.all || !used,
        };
        if eligible && wanted {
            doomed.push(s.key.clone());
        }
    }
    store.steps().delete(&doomed)?;
    let mut bytes = 0;
    if opts.all && opts.unused_for.is_none() && opts.keep_storage.is_none() {
        let dir = super::exec::cache_mounts_dir(store);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                // Held until the mount is gone.
                let lock = super::exec::cache_mount_lock(&p);
                if let Ok(l) = &lock {
                    if l.try_lock().is_err() {
                        continue;
                    }
                }
                bytes += dir_size(&p);
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        // ADD's downloads: the next build downloads again.
        let http = store.root().join("http-cache");
        bytes += dir_size(&http);
        let _ = std::fs::remove_dir_all(&http);
    }
    let report = store.gc(GcOptions {
        prune_dangling: false,
        wait: true,
    })?;
    bytes += report.map_or(0, |r| r.bytes_reclaimed);
    Ok(Pruned {
        entries: doomed,
        bytes,
    })
}
