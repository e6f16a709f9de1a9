//! Layer encode throughput: walk a generated 200 MiB tree, write the deterministic layer tar,
//! zstd it (multithreaded, pinned level) and compute both sha256s (DiffID and blob digest) in one
//! pass; beside `tar | zstd -T0 | sha256sum` on the same tree, measured in the same run.
//!
//! Run: `cargo bench --bench layer_encode`. The tree is generated under $KILN_BENCH_DIR (default:
//! the system temp dir) and reused across runs.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::diff::{write_tree, TarOptions};
use kiln::store::{Compression, LayerEncoder};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const TREE_BYTES: u64 = 200 << 20;

/// Text-like content that compresses about as much as real files do (not all zeros, not noise).
fn fill(buf: &mut [u8], seed: &mut u64) {
    const WORDS: [&[u8]; 12] = [
        b"layer ",
        b"kiln ",
        b"image ",
        b"0x3f2a ",
        b"build\n",
        b"cache ",
        b"{\"k\": ",
        b"42}, ",
        b"snapshot ",
        b"\t",
        b"digest ",
        b"overlay ",
    ];
    let mut i = 0;
    while i < buf.len() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let w = if (*seed).is_multiple_of(5) {
            &seed.to_le_bytes()[..]
        } else {
            WORDS[(*seed >> 8) as usize % WORDS.len()]
        };
        let n = w.len().min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[..n]);
        i += n;
    }
}

/// 100 MiB in one file plus 100 MiB in 3,200 files of 32 KiB across 64 directories.
fn tree() -> PathBuf {
    let base = std::env::var_os("KILN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("kiln-bench-encode-200m");
    if dir.join(".complete").exists() {
        return dir;
    }
    let _ = fs::remove_dir_all(&dir);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    fs::create_dir_all(&dir).unwrap();
    let mut big = vec![0u8; 100 << 20];
    fill(&mut big, &mut seed);
    fs::write(dir.join("big.bin"), &big).unwrap();
    let mut small = vec![0u8; 32 << 10];
    for i in 0..3200 {
        let d = dir.join(format!("dir{:02}/sub{}", i % 64, i % 3));
        fs::create_dir_all(&d).unwrap();
        fill(&mut small, &mut seed);
        fs::write(d.join(format!("file{i}.txt")), &small).unwrap();
    }
    fs::write(dir.join(".complete"), b"").unwrap();
    dir
}

fn kiln_encode(dir: &Path) -> kiln::store::LayerDigests {
    let enc = LayerEncoder::new(io::sink(), Compression::Zstd).unwrap();
    let mut enc = write_tree(dir, enc, &TarOptions::default()).unwrap();
    enc.flush().unwrap();
    enc.finish().unwrap().0
}

fn bench(c: &mut Criterion) {
    let dir = tree();
    let mut g = c.benchmark_group("layer_encode_200MiB");
    g.sample_size(10).throughput(Throughput::Bytes(TREE_BYTES));
    g.bench_function("kiln_walk_tar_zstd_2xsha256", |b| {
        b.iter(|| kiln_encode(&dir))
    });
    let have_zstd = Command::new("sh")
        .args(["-c", "command -v zstd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have_zstd {
        let script = format!(
            "tar -C '{}' -cf - . | zstd -q -T0 -3 -c | sha256sum >/dev/null",
            dir.display()
        );
        g.bench_function("tar_pipe_zstd_T0_sha256sum", |b| {
            b.iter(|| {
                assert!(Command::new("sh")
                    .args(["-c", &script])
                    .status()
                    .unwrap()
                    .success())
            })
        });
    } else {
        eprintln!("zstd not installed: the shell pipeline baseline is skipped");
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
