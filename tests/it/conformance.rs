//! BuildKit conformance: BuildKit's own parser and shell-lexer cases, read in place from a
//! `shared/testdata/buildkit` folder above the checkout (or `$KILN_TESTDATA`; see its
//! FORMAT.md), never copied into the repository. Every case reports by name. Where the folder
//! is absent (a clone elsewhere) the tests skip with a message, and fail under
//! KILN_REQUIRE_PRIVILEGED=1, as CI runs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln::frontend::parser::{
    self, chomp_heredoc, heredocs_from_line, parse_heredoc, parse_json_array, parse_words,
};
use kiln::frontend::shell::{env_from_strings, Lexer};
use kiln::frontend::{instructions, Command, Instruction};
use serde_json::Value;

mod shell;

/// The data folder: `$KILN_TESTDATA`, else `shared/testdata/buildkit` in the checkout's parent
/// directories.
fn data_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KILN_TESTDATA") {
        return Some(PathBuf::from(p)).filter(|p| p.is_dir());
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|dir| dir.join("shared/testdata/buildkit"))
        .find(|c| c.is_dir())
}

/// Whether the data is here; otherwise the test skips (or fails in strict mode).
fn present() -> bool {
    crate::common::require(
        data_dir().is_some(),
        "BuildKit's conformance data (shared/testdata/buildkit) is not above this checkout; set KILN_TESTDATA to run these",
    )
}

fn data() -> PathBuf {
    data_dir().expect("checked by present()")
}

struct Report {
    suite: &'static str,
    passed: usize,
    failed: Vec<String>,
}

impl Report {
    fn new(suite: &'static str) -> Report {
        Report {
            suite,
            passed: 0,
            failed: Vec::new(),
        }
    }
    fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(format!("{}: {}", name.into(), detail()));
        }
    }
    fn finish(self, expected_min: usize) {
        eprintln!(
            "{}: {} cases passed, {} failed",
            self.suite,
            self.passed,
            self.failed.len()
        );
        assert!(
            self.failed.is_empty(),
            "{} failures:\n{}",
            self.suite,
            self.failed.join("\n")
        );
        assert!(
            self.passed >= expected_min,
            "{}: only {} cases ran, expected {expected_min}",
            self.suite,
            self.passed
        );
    }
}

fn read_json(rel: &str) -> Value {
    let p = data().join(rel);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn env_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn case_dirs(rel: &str) -> Vec<PathBuf> {
    let dir = data().join(rel);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn parser_testfiles_dump_byte_exact() {
    if !present() {
        return;
    }
    let mut r = Report::new("parser/testfiles");
    for dir in case_dirs("parser/testfiles") {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let src = std::fs::read(dir.join("Dockerfile")).unwrap();
        let want = String::from_utf8(std::fs::read(dir.join("result")).unwrap()).unwrap();
        match parser::parse(&String::from_utf8_lossy(&src)) {
            Ok(ast) => {
                let got = ast.dump();
                r.check(&name, got == want, || {
                    format!("dump differs\n--- want\n{want}--- got\n{got}")
                });
            }
            Err(e) => r.check(&name, false, || format!("parse failed: {e}")),
        }
    }
    r.finish(33);
}

#[test]
fn parser_negative_cases_fail() {
    if !present() {
        return;
    }
    let mut r = Report::new("parser/testfiles-negative");
    for dir in case_dirs("parser/testfiles-negative") {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let src = std::fs::read(dir.join("Dockerfile")).unwrap();
        let res = parser::parse(&String::from_utf8_lossy(&src));
        r.check(&name, res.is_err(), || {
            format!("parsed, but must fail: {:?}", res.map(|a| a.dump()))
        });
    }
    r.finish(4);
}

#[test]
fn parser_line_numbers_and_warnings() {
    if !present() {
        return;
    }
    let mut r = Report::new("parser line numbers / warnings");
    let cases = read_json("parser/inline-cases/warnings_and_lines.json");
    let ln = &cases["line_numbers"];
    let src = std::fs::read_to_string(data().join(ln["file"].as_str().unwrap())).unwrap();
    let ast = parser::parse(&src).unwrap();
    let want_root: Vec<usize> = ln["root"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    r.check(
        "root span",
        ast.span() == (want_root[0], want_root[1]),
        || format!("{:?}", ast.span()),
    );
    for (i, want) in ln["children"].as_array().unwrap().iter().enumerate() {
        let w: Vec<usize> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let c = &ast.children[i];
        r.check(
            format!("child {i} span"),
            (c.start_line, c.end_line) == (w[0], w[1]),
            || format!("{:?}", (c.start_line, c.end_line)),
        );
    }
    let ec = &cases["empty_continuation"];
    let ast = parser::parse(ec["dockerfile"].as_str().unwrap()).unwrap();
    let count = ec["warning_count"].as_u64().unwrap() as usize;
    r.check(
        "empty continuation count",
        ast.warnings.len() == count,
        || format!("{:?}", ast.warnings),
    );
    for (i, key) in ["warning0_contains", "warning1_contains"]
        .iter()
        .enumerate()
    {
        for needle in strs(&ec[*key]) {
            let ok = ast
                .warnings
                .get(i)
                .is_some_and(|w| w.message.contains(&needle));
            r.check(format!("warning {i} contains {needle:?}"), ok, || {
                format!("{:?}", ast.warnings.get(i))
            });
        }
    }
    let detail = ec["detail_contains"].as_str().unwrap();
    r.check(
        "warning detail",
        ast.warnings.iter().all(|w| w.detail.contains(detail)),
        || format!("{:?}", ast.warnings),
    );
    let long = format!("FROM a\nRUN {}\n", "x".repeat(70_000));
    let e = parser::parse(&long).unwrap_err();
    let want = cases["line_too_long"]["error"].as_str().unwrap();
    r.check("line too long", e.message == want, || e.message.clone());
    r.finish(8);
}

#[test]
fn heredoc_extraction() {
    if !present() {
        return;
    }
    let mut r = Report::new("heredoc_extract");
    let cases = read_json("parser/inline-cases/heredoc_extract.json");
    let ast = parser::parse(cases["dockerfile"].as_str().unwrap()).unwrap();
    for (i, exp) in cases["expected_heredocs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let child = &ast.children[i + 1];
        let got: Vec<Value> = child
            .heredocs
            .iter()
            .map(|h| {
                serde_json::json!({"Name": h.name, "FileDescriptor": h.fd, "Expand": h.expand,
                                   "Chomp": h.chomp, "Content": h.content})
            })
            .collect();
        let want: Vec<Value> = exp.as_array().cloned().unwrap_or_default();
        r.check(
            format!("child {} ({})", i + 1, child.original),
            got == want,
            || format!("got {got:?}"),
        );
    }
    let json = read_json("parser/inline-cases/heredoc_json_form.json");
    let ast = parser::parse(json["dockerfile"].as_str().unwrap()).unwrap();
    for i in json["children_without_heredocs"].as_array().unwrap() {
        let c = &ast.children[i.as_u64().unwrap() as usize];
        r.check(
            format!("json form child {i}"),
            c.heredocs.is_empty(),
            || format!("{:?}", c.heredocs),
        );
    }
    r.finish(30);
}

#[test]
fn heredoc_helpers() {
    if !present() {
        return;
    }
    let mut r = Report::new("heredoc_helpers");
    let cases = read_json("parser/inline-cases/heredoc_helpers.json");
    let w = &cases["parse_heredoc_word"];
    for word in strs(&w["valid_name_EOF"]) {
        let got = parse_heredoc(&word);
        r.check(
            format!("valid {word:?}"),
            matches!(&got, Ok(Some(h)) if h.name == "EOF"),
            || format!("{got:?}"),
        );
    }
    for word in strs(&w["error"]) {
        let got = parse_heredoc(&word);
        r.check(format!("error {word:?}"), got.is_err(), || {
            format!("{got:?}")
        });
    }
    for word in strs(&w["not_a_heredoc"]) {
        let got = parse_heredoc(&word);
        r.check(
            format!("not a heredoc {word:?}"),
            matches!(got, Ok(None)),
            || format!("{got:?}"),
        );
    }
    for c in cases["heredocs_from_line"].as_array().unwrap() {
        let line = c["line"].as_str().unwrap();
        let want = strs(&c["names"]);
        let got: Vec<String> = heredocs_from_line(line)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        r.check(format!("from line {line:?}"), got == want, || {
            format!("{got:?}")
        });
    }
    let ch = &cases["chomp"];
    let got = chomp_heredoc(ch["input"].as_str().unwrap());
    r.check("chomp", got == ch["expected"].as_str().unwrap(), || {
        got.clone()
    });
    r.finish(31);
}

#[test]
fn heredoc_instructions() {
    if !present() {
        return;
    }
    let mut r = Report::new("heredoc_instructions");
    let cases = read_json("parser/inline-cases/heredoc_instructions.json");
    let parse_one = |src: &str| -> Result<Instruction, String> {
        let ast = parser::parse(src).map_err(|e| e.message)?;
        instructions::from_node(&ast.children[0])
    };
    for c in cases["error_cases"].as_array().unwrap() {
        let src = c["dockerfile"].as_str().unwrap();
        let got = parse_one(src);
        let needle = c["error_contains"].as_str().unwrap();
        r.check(src, matches!(&got, Err(e) if e.contains(needle)), || {
            format!("{got:?}")
        });
    }
    for c in cases["copy"].as_array().unwrap() {
        let src = c["dockerfile"].as_str().unwrap();
        let want = &c["sourcesAndDest"];
        let got = parse_one(src);
        let ok = match &got {
            Ok(Instruction::Copy(cp)) => {
                let inline: Vec<Value> = cp
                    .inline
                    .iter()
                    .map(
                        |s| serde_json::json!({"Path": s.path, "Data": s.data, "Expand": s.expand}),
                    )
                    .collect();
                cp.dest == want["DestPath"].as_str().unwrap()
                    && cp.sources == strs(&want["SourcePaths"])
                    && inline
                        == want["SourceContents"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
            }
            _ => false,
        };
        r.check(src, ok, || format!("{got:?}"));
    }
    for c in cases["run"].as_array().unwrap() {
        let src = c["dockerfile"].as_str().unwrap();
        let got = parse_one(src);
        let ok = match &got {
            Ok(Instruction::Run(run)) => {
                let (shell, line) = match &run.command {
                    Command::Exec(v) => (false, v.clone()),
                    Command::Shell(s) => (true, vec![s.clone()]),
                };
                let files: Vec<Value> = run
                    .heredocs
                    .iter()
                    .map(|h| serde_json::json!({"Name": h.name, "Data": h.content, "Chomp": h.chomp}))
                    .collect();
                shell == c["prependShell"].as_bool().unwrap()
                    && line == strs(&c["cmdLine"])
                    && files == c["files"].as_array().cloned().unwrap_or_default()
            }
            _ => false,
        };
        r.check(src, ok, || format!("{got:?}"));
    }
    r.finish(15);
}

#[test]
fn parse_words_and_json_arrays() {
    if !present() {
        return;
    }
    let mut r = Report::new("parse_words / json_arrays");
    let pw = read_json("parser/inline-cases/parse_words.json");
    for c in pw["cases"].as_array().unwrap() {
        let input = c["input"].as_str().unwrap();
        let got = parse_words(input, '\\');
        r.check(
            format!("words {input:?}"),
            got == strs(&c["expect"]),
            || format!("{got:?}"),
        );
    }
    let ja = read_json("parser/inline-cases/json_arrays.json");
    for c in ja["valid"].as_array().unwrap() {
        let input = c["input"].as_str().unwrap();
        let got = parse_json_array(input);
        r.check(
            format!("json {input:?}"),
            got.as_ref().ok() == Some(&strs(&c["expect"])),
            || format!("{got:?}"),
        );
        // And the same through the parser as exec-form CMD.
        let ast = parser::parse(&format!("CMD {input}")).unwrap();
        r.check(
            format!("CMD {input:?}"),
            ast.children[0].json && ast.children[0].args == strs(&c["expect"]),
            || format!("{:?}", ast.children[0]),
        );
    }
    for input in strs(&ja["not_string_array_error"]) {
        let got = parser::parse(&format!("CMD {input}"));
        r.check(format!("non-string {input:?}"), got.is_err(), || {
            format!("{got:?}")
        });
    }
    r.finish(8 + 16 + 8);
}

#[test]
fn directives() {
    if !present() {
        return;
    }
    let mut r = Report::new("directives");
    let cases = read_json("parser/inline-cases/directives.json");
    for c in cases["directive_parser_parse_all"].as_array().unwrap() {
        let input = c["input"].as_str().unwrap();
        let got: Vec<Value> = parser::DirectiveParser::default()
            .parse_all(input)
            .unwrap()
            .into_iter()
            .map(|d| serde_json::json!({"name": d.name, "value": d.value}))
            .collect();
        r.check(
            format!("parse_all {input:?}"),
            got == c["expected"].as_array().cloned().unwrap(),
            || format!("{got:?}"),
        );
    }
    for (key, field, list) in [
        ("syntax", "ref", "detect_syntax"),
        ("check", "value", "parse_directive_check"),
    ] {
        for c in cases[list].as_array().unwrap() {
            let input = c["input"].as_str().unwrap();
            let got = parser::detect_directive(key, input);
            let mut ok = got.is_some() == c["ok"].as_bool().unwrap();
            if let Some(g) = &got {
                if let Some(v) = c[field].as_str() {
                    ok &= g.value == v;
                }
                if let Some(v) = c["cmdline"].as_str() {
                    ok &= g.cmdline == v;
                }
                if let Some(l) = c["line"].as_u64() {
                    ok &= g.line == l as usize;
                }
            }
            r.check(format!("{list} {input:?}"), ok, || format!("{got:?}"));
        }
    }
    r.finish(17);
}
