//! How far kiln goes: a 500-step Dockerfile (more lower layers than overlayfs stacks once the
//! image runs), built, run, saved and loaded into another store and run there.

use crate::common::*;
use std::fs;

#[test]
fn a_500_step_build_runs_here_and_loaded_elsewhere() {
    let Some((k, _, _)) = busybox_image("base", &[]) else {
        return;
    };
    let ctx = k.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    // 495 COPY steps (cheap), then 5 RUN steps, which mount overlay with up to 500 lower
    // layers: past mount(2)'s one page of options, so each layer goes as its own lowerdir+.
    let mut df = String::from("FROM base\n");
    for i in 1..=495 {
        fs::write(ctx.join(format!("f{i}")), format!("x{i}\n")).unwrap();
        df.push_str(&format!("COPY f{i} /f{i}\n"));
    }
    for i in 496..=500 {
        df.push_str(&format!(
            "RUN echo {i} > /f{i} && cat /f{} > /seen{i}\n",
            i - 1
        ));
    }
    fs::write(ctx.join("Dockerfile"), df).unwrap();
    let id = k.ok(&["build", "-q", "-t", "deep", ctx.to_str().unwrap()]);
    assert!(id.trim().starts_with("sha256:"));
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["inspect", "deep"])).unwrap();
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 501);

    // Its container has 501 lower layers, one more than overlayfs stacks: the bottom 500 are
    // one flattened snapshot, made once.
    let cmd = ["run", "--rm", "--network", "none", "deep", "sh", "-c"];
    let out = k.ok(&[&cmd[..], &["cat /f1 /f250 /f495 /seen500 /f500"]].concat());
    assert_eq!(out, "x1\nx250\nx495\n499\n500\n");
    let flats = || {
        fs::read_dir(k.root().join("snapshots"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("flat-")
            })
            .count()
    };
    assert_eq!(flats(), 1);
    // The base's 8 entries, /f1../f500 and /seen496../seen500.
    assert_eq!(k.ok(&[&cmd[..], &["ls / | wc -l"]].concat()).trim(), "513");
    assert_eq!(flats(), 1, "the flattened snapshot is reused");

    // The same image in another store (as pulled: every layer unpacked there) runs too.
    let archive = k.dir.path().join("deep.tar");
    k.ok(&["save", "-o", archive.to_str().unwrap(), "deep"]);
    let k2 = Kiln::new();
    k2.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(k2.ok(&[&cmd[..], &["cat /f1 /f500"]].concat()), "x1\n500\n");

    // GC keeps the flattened snapshot while the snapshots it was made of live, then removes it.
    k.ok(&["system", "prune", "-f"]);
    assert_eq!(flats(), 1);
    k.ok(&["rmi", "deep"]);
    k.ok(&["cache", "prune", "--all"]);
    k.ok(&["system", "prune", "-f"]);
    assert_eq!(flats(), 0);
    k.ok(&["system", "check"]);
}
