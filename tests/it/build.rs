//! `kiln build`: instructions and flags checked on the image config and the files inside the
//! image, cache behaviour, RUN isolation, both snapshotters, reproducibility, interop, crashes.
//! Root, real overlay mounts and namespaces; the base is busybox-static imported as `base`.

use crate::common::*;
use kiln::snapshotter::view::View;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod diff;
mod image;
mod mounts;
mod parity;
mod repro;
mod sources;

/// A store with the busybox base imported as `base`, and an empty context dir.
fn setup() -> Option<(Kiln, std::path::PathBuf)> {
    let (k, _rootfs, _id) = busybox_image("base", &[])?;
    let ctx = k.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    Some((k, ctx))
}

/// Builds `ctx` with plain progress; returns (image ID, progress on stderr).
fn build(k: &Kiln, ctx: &Path, args: &[&str]) -> (String, String) {
    let o = build_raw(k, ctx, args);
    assert!(
        o.status.success(),
        "kiln build failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    let id = out.lines().last().unwrap_or("").trim().to_string();
    assert!(
        id.starts_with("sha256:"),
        "last stdout line is the image ID: {out:?}"
    );
    (id, String::from_utf8_lossy(&o.stderr).into_owned())
}

fn build_raw(k: &Kiln, ctx: &Path, args: &[&str]) -> Output {
    let mut a = vec!["build", "--progress", "plain"];
    a.extend_from_slice(args);
    a.push(ctx.to_str().unwrap());
    k.run(&a)
}

/// The merged view of an image's files (snapshots unpacked by the library).
fn image_view(k: &Kiln, name: &str) -> View {
    let store = k.store();
    let img = kiln::image::resolve(&store, name).unwrap().image;
    let snaps = kiln::snapshotter::unpack_image(&store, &img).unwrap();
    View::new(snaps.iter().rev().map(|s| store.snapshot_fs(s)).collect())
}

fn config(k: &Kiln, name: &str) -> kiln::image::oci::ImageConfig {
    let store = k.store();
    let img = kiln::image::resolve(&store, name).unwrap().image;
    kiln::image::read_config(&store, &img).unwrap()
}

fn read(v: &View, p: &str) -> String {
    v.read_string(p)
        .unwrap_or_else(|| panic!("{p} missing from the image"))
}

fn meta(v: &View, p: &str) -> fs::Metadata {
    v.resolve(p, false)
        .unwrap()
        .unwrap_or_else(|| panic!("{p} missing from the image"))
        .meta
}

/// Step lines of plain progress: how many were CACHED and how many executed (DONE).
fn counts(progress: &str) -> (usize, usize) {
    let cached = progress.lines().filter(|l| l.ends_with(" CACHED")).count();
    let misses = progress
        .lines()
        .filter(|l| l.contains(" cache miss: "))
        .count();
    (cached, misses)
}

/// A second base image, `base2`: the busybox base plus /base2 ("two").
fn base2(k: &Kiln) {
    let dir = k.dir.path().join("base2");
    fs::create_dir_all(&dir).unwrap();
    dockerfile(&dir, "FROM base\nRUN echo two > /base2\n");
    build(k, &dir, &["-t", "base2"]);
}

fn dockerfile(ctx: &Path, text: &str) {
    fs::write(ctx.join("Dockerfile"), text).unwrap();
}
