//! Crash safety: `kiln import` and `kiln build` killed with SIGKILL at random points leave a
//! store in which every recorded blob exists and matches its digest and every step-cache entry
//! has its layer and snapshot; the next run succeeds; prune clears leftovers.

use crate::common::*;
use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// xorshift64*: a small, seeded generator (the seed is printed so a failure can be replayed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Runs `kiln ARGS` and SIGKILLs it after `delay` ms (or reaps it, if it finished first).
fn kill_after(k: &Kiln, args: &[&str], delay: u64) {
    let mut child = k
        .cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(delay));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sigkill_during_import_leaves_a_consistent_store() {
    if !needs(&["tar"]) {
        return;
    }
    let k = Kiln::new();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    // A tree big enough that an import takes a while: 48 MiB of noise and 2,000 small files.
    let tree = k.dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let mut big = fs::File::create(tree.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..48 {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        big.write_all(&buf).unwrap();
    }
    for i in 0..2000 {
        let d = tree.join(format!("d{}", i % 20));
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join(format!("f{i}")),
            format!("small file {i}\n").repeat(i % 50 + 1),
        )
        .unwrap();
    }
    let tarball = k.dir.path().join("tree.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    // How long a whole import takes here, to spread the kills across it.
    let t = Instant::now();
    k.ok(&["import", tarball.to_str().unwrap(), "whole:1"]);
    let full = t.elapsed().as_millis() as u64;
    k.ok(&["rmi", "whole:1"]);

    for round in 0..8 {
        let delay = rng.next() % (full + 20);
        kill_after(
            &k,
            &[
                "import",
                tarball.to_str().unwrap(),
                &format!("crash:{round}"),
            ],
            delay,
        );
        let problems = k.store().verify().unwrap();
        assert!(
            problems.is_empty(),
            "round {round}, killed after {delay} ms (seed {seed}): {problems:?}"
        );
        assert_eq!(k.ok(&["system", "check"]), "");
    }
    k.ok(&["import", tarball.to_str().unwrap(), "after:crash"]);
    assert!(k.ok(&["images"]).contains("after"));
    k.ok(&["system", "prune", "-f"]);
    assert_eq!(
        fs::read_dir(k.root().join("ingest")).unwrap().count(),
        0,
        "prune clears crash leftovers"
    );
    assert!(k.store().verify().unwrap().is_empty());
}

/// SIGKILL `kiln build` at random moments (hashing, RUN, layer encoding, commit): the store stays
/// consistent, nothing stays mounted, and the next build succeeds with the right files.
#[test]
fn sigkill_during_build_leaves_a_consistent_store() {
    let Some((k, _rootfs, _)) = busybox_image("base", &[]) else {
        return;
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("build crash test seed {seed}");
    let mut rng = Rng(seed);
    let ctx = k.dir.path().join("ctx");
    for i in 0..1500 {
        let d = ctx.join(format!("d{}", i % 15));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), format!("{i}\n").repeat(i % 40 + 1)).unwrap();
    }
    let mut big = fs::File::create(ctx.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..24 {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        big.write_all(&buf).unwrap();
    }
    drop(big);
    fs::write(
        ctx.join("Dockerfile"),
        "FROM base\nCOPY . /src\nRUN find /src -type f | wc -l > /count && cat /src/big.bin /src/big.bin > /double\nRUN sleep 0.2 && md5sum /double | cut -c1-32 > /sum\n",
    )
    .unwrap();
    let build = |extra: &[&str]| {
        let mut a = vec!["build", "-q", "-t", "crashy"];
        a.extend_from_slice(extra);
        a.push(ctx.to_str().unwrap());
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let t = Instant::now();
    let args = build(&["--no-cache"]);
    k.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let full = t.elapsed().as_millis() as u64;
    let expected_sum = {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cat {0} {0} | md5sum | cut -c1-32",
                ctx.join("big.bin").display()
            ))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };

    for round in 0..6 {
        let delay = rng.next() % (full + 20);
        let args = build(&["--no-cache"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kill_after(&k, &args, delay);
        let problems = k.store().verify().unwrap();
        assert!(
            problems.is_empty(),
            "round {round}, killed after {delay} ms (seed {seed}): {problems:?}"
        );
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(k.root().to_str().unwrap()),
            "a build left a mount on the host: {mounts}"
        );
    }
    // The next build (with whatever the killed ones cached) is correct.
    let args = build(&[]);
    k.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let store = k.store();
    let img = kiln::image::resolve(&store, "crashy").unwrap().image;
    let snaps = kiln::snapshotter::unpack_image(&store, &img).unwrap();
    let view = kiln::snapshotter::view::View::new(
        snaps.iter().rev().map(|s| store.snapshot_fs(s)).collect(),
    );
    assert_eq!(view.read_string("/count").unwrap(), "1502\n");
    assert_eq!(view.read_string("/sum").unwrap(), expected_sum);
    assert!(store.verify().unwrap().is_empty());
}
