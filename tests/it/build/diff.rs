//! `kiln image diff`: a rebuild that differs only in times, a config and file change with a
//! whiteout and an opaque directory over the base, archives, the capped text report.

#[allow(unused_imports)]
use super::*;

fn diff_json(k: &Kiln, a: &str, b: &str) -> serde_json::Value {
    serde_json::from_str(&k.ok(&["image", "diff", "--format", "json", a, b])).unwrap()
}

/// The `change path what` lines of a JSON diff.
fn files(d: &serde_json::Value) -> Vec<String> {
    d["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let what: Vec<&str> = f["what"]
                .as_array()
                .map(|w| w.iter().map(|x| x.as_str().unwrap()).collect())
                .unwrap_or_default();
            format!(
                "{} {} {}",
                f["change"].as_str().unwrap(),
                f["path"].as_str().unwrap(),
                what.join(",")
            )
            .trim()
            .to_string()
        })
        .collect()
}

fn fields(d: &serde_json::Value) -> Vec<String> {
    d["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap().to_string())
        .collect()
}

#[test]
pub(super) fn image_diff_explains_rebuilds_config_changes_and_archives() {
    let Some((k, ctx)) = setup() else { return };
    fs::create_dir_all(ctx.join("app")).unwrap();
    fs::write(ctx.join("app/main.sh"), "echo hi\n").unwrap();
    fs::write(ctx.join("app/data"), "1\n").unwrap();
    let df = "FROM base\nCOPY app /app\nRUN echo ran > /ran\n";
    dockerfile(&ctx, df);
    build(
        &k,
        &ctx,
        &["-t", "r:1", "--build-arg", "SOURCE_DATE_EPOCH=1700000000"],
    );

    // A rebuild from another checkout (older times) is not bit-identical: the diff says the
    // files' mtimes, and reads only the layers above the base.
    sh(Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(ctx.join("app/data")));
    build(
        &k,
        &ctx,
        &[
            "--no-cache",
            "-t",
            "r:2",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
        ],
    );
    let d = diff_json(&k, "r:1", "r:2");
    assert_eq!(files(&d), vec!["changed /app/data mtime"], "{d:#}");
    assert_eq!(d["common_layers"], 1);
    assert_eq!(d["a"]["layers_read"], 2, "the base layer is skipped: {d:#}");
    assert!(fields(&d).is_empty(), "{d:#}");
    let text = k.ok(&["image", "diff", "r:1", "r:2"]);
    assert!(
        text.contains("The first layer is the same in both and was not read."),
        "{text}"
    );
    assert!(
        text.contains("~ data: mtime 2023-11-14T22:13:20Z → 2001-01-01T00:00:00Z"),
        "{text}"
    );
    // The same with --timestamp: identical.
    let (t1, _) = build(&k, &ctx, &["--timestamp", "1", "-t", "t:1"]);
    sh(Command::new("touch").arg(ctx.join("app/data")));
    let (t2, _) = build(&k, &ctx, &["--no-cache", "--timestamp", "1", "-t", "t:2"]);
    assert_eq!(t1, t2);
    assert!(k
        .ok(&["image", "diff", "t:1", "t:2"])
        .contains("The images are identical"));

    // Config and files: a whiteout of a base file, a directory made again (opaque).
    dockerfile(
        &ctx,
        "FROM base\nCOPY app /app\nRUN echo ran2 > /ran && rm /etc/passwd && rm -rf /tmp && mkdir /tmp && echo t > /tmp/only\n\
         ENV MODE=prod\nUSER nobody\nWORKDIR /app\nEXPOSE 8080\nLABEL v=2\nCMD [\"sh\", \"main.sh\"]\n\
         HEALTHCHECK CMD true\n",
    );
    fs::create_dir_all(ctx.join("app/many")).unwrap();
    for i in 0..30 {
        fs::write(ctx.join(format!("app/many/f{i:02}")), format!("{i}\n")).unwrap();
    }
    build(&k, &ctx, &["-t", "r:3"]);
    let d = diff_json(&k, "r:1", "r:3");
    let f = fields(&d);
    for want in [
        "Env",
        "User",
        "WorkingDir",
        "ExposedPorts",
        "Labels",
        "Cmd",
        "Healthcheck",
        "created",
    ] {
        assert!(f.contains(&want.to_string()), "{want} in {f:?}");
    }
    assert!(f.iter().any(|x| x.starts_with("history[")), "{f:?}");
    let fl = files(&d);
    assert!(fl.contains(&"removed /etc/passwd".to_string()), "{fl:?}");
    assert!(fl.contains(&"added /tmp/only".to_string()), "{fl:?}");
    assert!(
        fl.contains(&"changed /ran size,content,mtime".to_string()),
        "{fl:?}"
    );
    assert_eq!(
        fl.iter()
            .filter(|l| l.starts_with("added /app/many/"))
            .count(),
        30
    );
    assert!(
        d["a"]["layers_read"].as_u64().unwrap() >= 3,
        "the base is read for /etc/passwd"
    );
    // The text report caps each directory and names the rest.
    let text = k.ok(&["image", "diff", "r:1", "r:3"]);
    assert!(text.contains("… and 20 more in /app/many"), "{text}");
    assert!(text.contains("- passwd"), "{text}");
    assert!(text.contains("  Env:\n    + MODE=prod"), "{text}");

    // An archive compares as the image it holds, and the store is not changed by it.
    let archive = k.dir.path().join("r1.tar");
    k.ok(&["save", "-o", archive.to_str().unwrap(), "r:1"]);
    let images_before = k.ok(&["images", "-q"]);
    let from_archive = diff_json(&k, &format!("oci-archive:{}", archive.display()), "r:3");
    assert_eq!(files(&from_archive), fl);
    assert_eq!(fields(&from_archive), f);
    assert_eq!(k.ok(&["images", "-q"]), images_before);
    let err = k.fails(&["image", "diff", "r:1", "nope"]);
    assert!(
        err.contains("No such image: nope") || err.contains("no such image: nope"),
        "{err}"
    );
}
