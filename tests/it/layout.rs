//! The structure docs/ARCHITECTURE.md promises, checked on the source tree (the library, the
//! store, the tests and the benchmarks): files stay small,
//! CLI command modules do not import each other, library code does not print, and no comment
//! sends a reader to a document outside the repository.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn all() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for d in ["src", "store/src", "tests", "benches"] {
        sources(&repo().join(d), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(repo()).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn is_test_file(rel: &str) -> bool {
    rel.starts_with("tests/")
        || rel.starts_with("benches/")
        || rel.ends_with("/tests.rs")
        || rel.ends_with("_tests.rs")
        || rel.contains("/tests/")
}

#[test]
fn no_source_file_is_over_600_lines() {
    let big: Vec<String> = all()
        .into_iter()
        .filter(|(_, text)| text.lines().count() > 600)
        .map(|(rel, text)| format!("{rel}: {} lines", text.lines().count()))
        .collect();
    assert!(big.is_empty(), "split these by concern: {big:#?}");
}

#[test]
fn cli_command_modules_do_not_import_each_other() {
    let cli = repo().join("src/cli");
    let commands: Vec<String> = std::fs::read_dir(&cli)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".rs")?.to_string();
            (stem != "mod").then_some(stem)
        })
        .filter(|s| s != "ui")
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    let mut bad = Vec::new();
    for (rel, text) in all() {
        let Some(own) = rel
            .strip_prefix("src/cli/")
            .and_then(|r| r.split(['/', '.']).next())
        else {
            continue;
        };
        if own == "mod" || own == "ui" {
            continue;
        }
        for other in commands.iter().filter(|c| *c != own) {
            for pat in [
                format!("super::{other}::"),
                format!("super::{{{other}"),
                format!("crate::cli::{other}::"),
                format!(", {other}}}"),
            ] {
                if text.contains(&pat) {
                    bad.push(format!("{rel} uses {other} ({pat})"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn only_the_cli_prints() {
    let mut bad = Vec::new();
    for (rel, text) in all() {
        if rel.starts_with("src/cli/") || rel == "src/main.rs" || is_test_file(&rel) {
            continue;
        }
        // Test modules at the end of a file may print skip reasons.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            if ["println!(", "print!(", "eprintln!(", "eprint!(", "dbg!("]
                .iter()
                .any(|m| l.contains(m))
            {
                bad.push(format!("{rel}:{}: {}", i + 1, l));
            }
        }
    }
    assert!(bad.is_empty(), "library code prints: {bad:#?}");
}

#[test]
fn no_comment_points_outside_the_repository() {
    let mut bad = Vec::new();
    for (rel, text) in all() {
        if rel == "tests/it/layout.rs" {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            if ["DESIGN.md", "CONVENTIONS", "../shared"]
                .iter()
                .any(|m| line.contains(m))
            {
                bad.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for m in ["DESIGN.md", "CONVENTIONS.md"] {
        if readme.contains(m) {
            bad.push(format!("README.md mentions {m}"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_architecture_document_names_every_room() {
    let doc = std::fs::read_to_string(repo().join("docs/ARCHITECTURE.md")).unwrap();
    let mut rooms: Vec<String> = std::fs::read_dir(repo().join("src"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    rooms.sort();
    let missing: Vec<&String> = rooms
        .iter()
        .filter(|r| !doc.contains(&format!("`src/{r}/`")) && !doc.contains(&format!("`{r}/`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not describe {missing:?}"
    );
}

#[test]
fn every_source_path_the_docs_name_exists() {
    let mut bad = Vec::new();
    for doc in ["README.md", "docs/ARCHITECTURE.md"] {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap();
        for word in text.split(|c: char| c.is_whitespace() || "`()[],;:".contains(c)) {
            let word = word.trim_end_matches('.');
            let rooted = ["src/", "store/", "tests/", "benches/", "fixtures/"]
                .iter()
                .any(|r| word.starts_with(r));
            if rooted
                && (word.ends_with(".rs") || word.ends_with(".sh"))
                && !repo().join(word).exists()
            {
                bad.push(format!("{doc}: {word}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the docs name files that are not there: {bad:#?}"
    );
}
