//! Conformance with a current BuildKit: every case in `fixtures/conformance/cases` (a
//! Dockerfile, built against `fixtures/conformance/contexts/main`, or the context its first
//! line names) is built by kiln and compared with what BuildKit (Docker 26.1 with BuildKit 0.13)
//! built from the same Dockerfile, context and base, recorded in
//! `fixtures/conformance/expected/NAME.json` by `fixtures/conformance/record.sh`.
//!
//! What is compared is what the steps change relative to the base, so an update of Debian's
//! busybox (the base) does not touch the expectations: the config fields a user sees, the new
//! history entries (text and `empty_layer`), and every file of the final tree that is not
//! exactly as in the base (type, mode, owner, size, content digest, link target; mtimes left
//! out), plus the base's files that are gone. Differences known to come from the BuildKit
//! version are listed with their cause in `fixtures/conformance/known.txt`; any other
//! difference fails the test.
//!
//! With `KILN_CONFORMANCE_RECORD=DIR` (DIR holding `docker save` archives `NAME.tar` of
//! BuildKit's builds), the expected files are written from those archives instead.

use crate::common::*;
use kiln::snapshotter::view::{Found, View};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/conformance")
}

struct Case {
    name: String,
    dockerfile: PathBuf,
    context: PathBuf,
}

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = fs::read_dir(root().join("cases"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".Dockerfile")?
                .to_string();
            let text = fs::read_to_string(e.path()).ok()?;
            let ctx = text
                .lines()
                .find_map(|l| l.strip_prefix("# context: "))
                .unwrap_or("main")
                .trim()
                .to_string();
            Some(Case {
                name,
                dockerfile: e.path(),
                context: root().join("contexts").join(ctx),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// path -> "type mode uid:gid detail" for every entry of an image's merged tree.
fn tree(k: &Kiln, image: &str) -> BTreeMap<String, String> {
    let store = k.store();
    let img = kiln::image::resolve(&store, image).unwrap().image;
    let snaps = kiln::snapshotter::unpack_image(&store, &img).unwrap();
    let view = View::new(snaps.iter().rev().map(|s| store.snapshot_fs(s)).collect());
    let mut out = BTreeMap::new();
    let top = view.resolve("/", true).unwrap().unwrap();
    walk(&view, &top, "", &mut out);
    out
}

fn walk(view: &View, dir: &Found, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (name, f) in view.read_dir(dir).unwrap() {
        let path = format!("{prefix}/{}", name.to_string_lossy());
        let m = &f.meta;
        let ft = m.file_type();
        let detail = if ft.is_symlink() {
            format!("link {}", fs::read_link(&f.host).unwrap().display())
        } else if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_file() {
            let data = fs::read(&f.host).unwrap();
            format!(
                "file {} {}",
                data.len(),
                &kiln::store::Digest::of(&data).hex()[..16]
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            format!("dev {}:{}", libc::major(m.rdev()), libc::minor(m.rdev()))
        } else {
            "other".to_string()
        };
        out.insert(
            path.clone(),
            format!("{:o} {}:{} {detail}", m.mode() & 0o7777, m.uid(), m.gid()),
        );
        if ft.is_dir() {
            walk(view, &f, &path, out);
        }
    }
}

/// What a user sees of an image, relative to the base.
fn describe(
    k: &Kiln,
    image: &str,
    base_tree: &BTreeMap<String, String>,
    base_history: &[Value],
) -> Value {
    let store = k.store();
    let img = kiln::image::resolve(&store, image).unwrap().image;
    let config: Value = serde_json::from_slice(&store.read_blob(&img.config).unwrap()).unwrap();
    let c = &config["config"];
    let mut cfg = Map::new();
    for f in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
        "Healthcheck",
        "Shell",
        "OnBuild",
    ] {
        let v = c.get(f).cloned().unwrap_or(Value::Null);
        // Absent, null and empty are the same to a user.
        let empty = v.is_null()
            || v.as_str() == Some("")
            || v.as_array().is_some_and(|a| a.is_empty())
            || v.as_object().is_some_and(|o| o.is_empty());
        if !empty {
            cfg.insert(f.to_string(), v);
        }
    }
    let history: Vec<Value> = config["history"].as_array().cloned().unwrap_or_default();
    let skip = history
        .iter()
        .zip(base_history)
        .take_while(|(a, b)| a["created_by"] == b["created_by"])
        .count();
    let history: Vec<Value> = history[skip..]
        .iter()
        .map(|h| {
            json!({
                "created_by": h["created_by"],
                "empty_layer": h["empty_layer"].as_bool().unwrap_or(false),
            })
        })
        .collect();
    let t = tree(k, image);
    let mut files = Map::new();
    for (p, d) in &t {
        if base_tree.get(p) != Some(d) {
            files.insert(p.clone(), json!(d));
        }
    }
    for p in base_tree.keys() {
        if !t.contains_key(p) {
            files.insert(p.clone(), json!("removed"));
        }
    }
    json!({"config": cfg, "history": history, "files": files})
}

/// Known differences: `NAME: cause` lines.
fn known() -> BTreeMap<String, String> {
    fs::read_to_string(root().join("known.txt"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, why)| (n.trim().to_string(), why.trim().to_string()))
        .collect()
}

/// The first lines where two descriptions differ, for the report.
fn diff(want: &Value, got: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for part in ["config", "history"] {
        if want[part] != got[part] {
            out.push(format!(
                "  {part}: BuildKit {} / kiln {}",
                want[part], got[part]
            ));
        }
    }
    let empty = Map::new();
    let (wf, gf) = (
        want["files"].as_object().unwrap_or(&empty),
        got["files"].as_object().unwrap_or(&empty),
    );
    for p in wf.keys().chain(gf.keys().filter(|p| !wf.contains_key(*p))) {
        if wf.get(p) != gf.get(p) {
            out.push(format!(
                "  {p}: BuildKit {} / kiln {}",
                wf.get(p).map_or("absent".into(), |v| v.to_string()),
                gf.get(p).map_or("absent".into(), |v| v.to_string())
            ));
        }
    }
    out
}

#[test]
fn conformance_with_buildkit_from_recorded_results() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    if let Some(out) = std::env::var_os("KILN_CONFORMANCE_EXPORT_BASE") {
        // record.sh loads this very base into the Docker it records with.
        k.ok(&[
            "save",
            "--format",
            "docker",
            "-o",
            out.to_str().unwrap(),
            "base",
        ]);
        return;
    }
    let record = std::env::var_os("KILN_CONFORMANCE_RECORD").map(PathBuf::from);
    let base_tree = tree(&k, "base");
    let base_history: Vec<Value> = {
        let store = k.store();
        let img = kiln::image::resolve(&store, "base").unwrap().image;
        let c: Value = serde_json::from_slice(&store.read_blob(&img.config).unwrap()).unwrap();
        c["history"].as_array().cloned().unwrap_or_default()
    };
    let cases = cases();
    assert!(
        cases.len() >= 60,
        "{} cases: the corpus has at least 60",
        cases.len()
    );
    let known = known();
    let (mut same, mut unexpected, mut known_seen) = (0, Vec::new(), Vec::new());
    for c in &cases {
        let expected_path = root().join("expected").join(format!("{}.json", c.name));
        if let Some(dir) = &record {
            let tar = dir.join(format!("{}.tar", c.name));
            if tar.exists() {
                k.ok(&["load", "-i", tar.to_str().unwrap()]);
                let d = describe(
                    &k,
                    &format!("conformance-{}", c.name),
                    &base_tree,
                    &base_history,
                );
                fs::write(
                    &expected_path,
                    serde_json::to_string_pretty(&d).unwrap() + "\n",
                )
                .unwrap();
            }
        }
        let tag = format!("kiln-{}", c.name);
        let o = k.run(&[
            "build",
            "-q",
            "-t",
            &tag,
            "-f",
            c.dockerfile.to_str().unwrap(),
            c.context.to_str().unwrap(),
        ]);
        let want: Value =
            serde_json::from_str(&fs::read_to_string(&expected_path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (record it with fixtures/conformance/record.sh)",
                    expected_path.display()
                )
            }))
            .unwrap();
        let lines = if o.status.success() {
            diff(&want, &describe(&k, &tag, &base_tree, &base_history))
        } else {
            vec![format!(
                "  kiln build failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )]
        };
        match (lines.is_empty(), known.get(&c.name)) {
            (true, None) => same += 1,
            (true, Some(_)) => {
                same += 1;
                let _ = writeln!(
                    std::io::stderr(),
                    "conformance: {} is identical now: drop it from known.txt",
                    c.name
                );
            }
            (false, Some(why)) => {
                known_seen.push(format!("{}: {why}\n{}", c.name, lines.join("\n")))
            }
            (false, None) => unexpected.push(format!("{}:\n{}", c.name, lines.join("\n"))),
        }
    }
    for k in &known_seen {
        let _ = writeln!(std::io::stderr(), "conformance: known difference {k}");
    }
    // Straight to the process's stderr, past the test harness's capture: the figure belongs in
    // every run's output.
    let _ = writeln!(
        std::io::stderr(),
        "conformance: {same} of {} identical to BuildKit",
        cases.len()
    );
    assert!(
        unexpected.is_empty(),
        "{} cases differ from BuildKit:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}
