//! criterion micro-benchmarks of kiln's hot paths:
//! - context hashing of the benchmark context (5,000 files of 1-4 KiB), cold and with the stat
//!   cache (the no-op rebuild's path: one walk, one fstatat per file, cache lookups);
//! - the overlay differ (an upper dir) and the walk differ (two trees) over a generated
//!   100,000-file tree with 1 and 1,000 changed files;
//! - layer unpack (decompress + in-root apply) of a 5,000-file layer;
//! - the step key of a wide COPY (5,000 selected files).
//!
//! (`layer_encode` and `parse_plan` are the other two.) Run: `cargo bench --bench hot_paths`.
//! Trees are generated under $KILN_BENCH_DIR (default: the system temp dir) and reused.

use criterion::{criterion_group, criterion_main, Criterion};
use kiln::builder::copy;
use kiln::context::hash::Hasher;
use kiln::context::Context;
use kiln::diff::{self, TarOptions};
use kiln::rootfs::Root;
use kiln::store::{Compression, LayerEncoder, Store};
use std::fs;
use std::io;
use std::path::PathBuf;

fn base() -> PathBuf {
    std::env::var_os("KILN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// xorshift: deterministic content without a dependency.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// 5,000 files of 1-4 KiB in nested directories (the benchmark context, without the big file).
fn context() -> PathBuf {
    let dir = base().join("kiln-bench-context-5000");
    if dir.join(".complete").exists() {
        return dir;
    }
    let _ = fs::remove_dir_all(&dir);
    let mut seed = 0x1234_5678_9abc_def1;
    for i in 0..5000 {
        let d = dir.join(format!("d{}/e{}", i % 50, i % 7));
        fs::create_dir_all(&d).unwrap();
        let n = 1024 + (next(&mut seed) % 3072) as usize;
        let data: Vec<u8> = (0..n).map(|_| next(&mut seed) as u8).collect();
        fs::write(d.join(format!("f{i}")), data).unwrap();
    }
    fs::write(dir.join(".complete"), "").unwrap();
    dir
}

/// A 100,000-file tree (small files in 1,000 directories), and beside it a copy with `changed`
/// files rewritten, plus the overlay upper dir that holds exactly those changes.
fn trees(changed: usize) -> (PathBuf, PathBuf, PathBuf) {
    let root = base().join("kiln-bench-100k");
    let lower = root.join("lower");
    if !root.join(".complete").exists() {
        let _ = fs::remove_dir_all(&root);
        for i in 0..100_000 {
            let d = lower.join(format!("a{}/b{}", i % 100, (i / 100) % 10));
            if i < 1000 {
                fs::create_dir_all(&d).unwrap();
            }
            fs::write(d.join(format!("f{i}")), format!("file {i}\n")).unwrap();
        }
        fs::write(root.join(".complete"), "").unwrap();
    }
    let new = root.join(format!("new-{changed}"));
    let upper = root.join(format!("upper-{changed}"));
    if !root.join(format!(".complete-{changed}")).exists() {
        let _ = fs::remove_dir_all(&new);
        let _ = fs::remove_dir_all(&upper);
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&lower)
            .arg(&new)
            .status()
            .unwrap();
        assert!(st.success());
        for i in 0..changed {
            let j = i * (100_000 / changed.max(1));
            let rel = format!("a{}/b{}/f{j}", j % 100, (j / 100) % 10);
            fs::write(new.join(&rel), format!("changed {j}\n")).unwrap();
            let u = upper.join(&rel);
            fs::create_dir_all(u.parent().unwrap()).unwrap();
            fs::write(&u, format!("changed {j}\n")).unwrap();
        }
        fs::write(root.join(format!(".complete-{changed}")), "").unwrap();
    }
    (lower, new, upper)
}

fn hashing(c: &mut Criterion) {
    let ctx = context();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let context = Context::open(&ctx, None).unwrap();
    let srcs = vec![".".to_string()];
    // Warm the stat cache once.
    {
        let entries = context.walk().unwrap();
        let h = Hasher::new(Some(&store), &ctx).unwrap();
        copy::select_context(&srcs, &entries, &h).unwrap();
        h.save().unwrap();
    }
    let mut g = c.benchmark_group("context hashing, 5,000 files");
    g.sample_size(20);
    g.bench_function("cold (walk + read + blake3 every file)", |b| {
        b.iter(|| {
            let entries = context.walk().unwrap();
            let h = Hasher::new(None, &ctx).unwrap();
            copy::select_context(&srcs, &entries, &h).unwrap()
        })
    });
    g.bench_function("stat cache (walk + one fstatat per file)", |b| {
        b.iter(|| {
            let entries = context.walk().unwrap();
            let h = Hasher::new(Some(&store), &ctx).unwrap();
            copy::select_context(&srcs, &entries, &h).unwrap()
        })
    });
    g.finish();
}

fn differs(c: &mut Criterion) {
    let mut g = c.benchmark_group("differs, 100,000-file tree");
    g.sample_size(10);
    for changed in [1usize, 1000] {
        let (lower, new, upper) = trees(changed);
        g.bench_function(
            format!("overlay differ, {changed} changed (list + tar)"),
            |b| {
                b.iter(|| {
                    let e = diff::overlay::changes(&upper).unwrap();
                    diff::write_entries(&e, io::sink(), &TarOptions::default()).unwrap();
                })
            },
        );
        g.bench_function(
            format!("walk differ, {changed} changed (compare + tar)"),
            |b| {
                b.iter(|| {
                    let e = diff::walk::changes(&lower, &new).unwrap();
                    diff::write_entries(&e, io::sink(), &TarOptions::default()).unwrap();
                })
            },
        );
    }
    g.finish();
}

fn unpack(c: &mut Criterion) {
    let ctx = context();
    let mut enc = LayerEncoder::new(Vec::new(), Compression::Zstd).unwrap();
    enc = diff::write_tree(&ctx, enc, &TarOptions::default()).unwrap();
    let (_, blob) = enc.finish().unwrap();
    let mut g = c.benchmark_group("layer unpack, 5,000 files");
    g.sample_size(10);
    // Trees are made where the store makes them: under a TOPDIR-flagged directory (see
    // kiln_store::store::set_topdir; without it this loop of creating and deleting 5,000-file
    // trees measures ext4 skipping its recently freed inodes).
    let parent = tempfile::tempdir().unwrap();
    kiln::store::store::set_topdir(parent.path());
    g.bench_function("zstd decompress + in-root apply", |b| {
        b.iter_with_setup(
            || tempfile::tempdir_in(parent.path()).unwrap(),
            |dir| {
                let r = kiln::store::codec::decompress(&blob[..]).unwrap();
                diff::apply_layer(&Root::open(dir.path()).unwrap(), r).unwrap();
                dir
            },
        )
    });
    g.finish();
}

fn step_key(c: &mut Criterion) {
    let ctx = context();
    let context = Context::open(&ctx, None).unwrap();
    let entries = context.walk().unwrap();
    let h = Hasher::new(None, &ctx).unwrap();
    let roots = copy::select_context(&[".".to_string()], &entries, &h).unwrap();
    let df =
        kiln::frontend::Dockerfile::parse("Dockerfile", b"FROM scratch\nCOPY . /app\n").unwrap();
    let plan = kiln::plan::plan(&df, &kiln::plan::PlanOptions::default()).unwrap();
    let step = &plan.stages[0].steps[0];
    let parent = kiln::plan::base_key("scratch");
    let mut g = c.benchmark_group("step key");
    g.bench_function("COPY selecting 5,000 files (inputs digest + key)", |b| {
        b.iter(|| step.key(&parent, &copy::inputs_digest(&roots)))
    });
    g.finish();
}

criterion_group!(benches, hashing, differs, unpack, step_key);
criterion_main!(benches);
