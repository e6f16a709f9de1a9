//! BuildKit's shell lexer cases: variable expansion (envVarTest), word splitting (wordsTest) and its inline cases.

#[allow(unused_imports)]
use super::*;

/// The cases of `shell/envVarTest` for Unix (`A` and `U` lines).
#[test]
pub(super) fn shell_env_var_test() {
    if !present() {
        return;
    }
    let mut r = Report::new("shell/envVarTest");
    let text = std::fs::read_to_string(data().join("shell/envVarTest")).unwrap();
    let env = env_from_strings(&["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="]);
    let lx = Lexer::new('\\');
    let mut windows_only = 0;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').collect();
        assert_eq!(fields.len(), 3, "envVarTest:{}: malformed", n + 1);
        let (platform, source, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        match platform {
            "W" => {
                windows_only += 1;
                continue;
            }
            "A" | "U" => {}
            p => panic!("envVarTest:{}: unknown platform {p:?}", n + 1),
        }
        let got = lx.process_word(source, &env);
        let ok = match &got {
            Ok(s) => expected != "error" && s == expected,
            Err(_) => expected == "error",
        };
        r.check(format!("envVarTest:{} {source}", n + 1), ok, || {
            format!("want {expected:?}, got {got:?}")
        });
    }
    assert_eq!(windows_only, 2);
    r.finish(228);
}

#[test]
pub(super) fn shell_words_test() {
    if !present() {
        return;
    }
    let mut r = Report::new("shell/wordsTest");
    let text = std::fs::read_to_string(data().join("shell/wordsTest")).unwrap();
    let mut env: Vec<String> = Vec::new();
    let lx = Lexer::new('\\');
    for (n, line) in text.split('\n').enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            env.push(rest.trim_start_matches(' ').to_string());
            continue;
        }
        let (input, expected) = line.split_once('|').unwrap();
        assert!(!expected.contains('|'));
        let want: Vec<String> = expected.trim_start().split(',').map(String::from).collect();
        let got = lx
            .process_words(input.trim(), &env_from_strings(&env))
            .unwrap_or_else(|_| vec!["error".into()]);
        r.check(
            format!("wordsTest:{} {}", n + 1, input.trim()),
            got == want,
            || format!("want {want:?}, got {got:?}"),
        );
    }
    r.finish(24);
}

#[test]
pub(super) fn shell_inline_cases() {
    if !present() {
        return;
    }
    let mut r = Report::new("shell inline cases");
    let lx = Lexer::new('\\');
    let pm = read_json("shell/inline-cases/process_with_matches.json");
    for c in pm["cases"].as_array().unwrap() {
        let input = c["input"].as_str().unwrap();
        let env = env_map(&c["envs"]);
        let got = lx.process(input, &env);
        let ok = if c["expectedErr"].as_bool().unwrap() {
            got.is_err()
        } else {
            got.as_ref().is_ok_and(|e| {
                e.word == c["expected"].as_str().unwrap()
                    && e.matched.iter().cloned().collect::<Vec<_>>() == strs(&c["matches"])
                    && e.unmatched.iter().cloned().collect::<Vec<_>>() == strs(&c["unmatched"])
            })
        };
        r.check(format!("with_matches {input:?} {env:?}"), ok, || {
            format!("{got:?}")
        });
    }
    let misc = read_json("shell/inline-cases/misc.json");
    for list in ["mandatory", "platform"] {
        for c in misc[list].as_array().unwrap() {
            let input = c["input"].as_str().unwrap();
            let env = env_map(&c["envs"]);
            let got = lx.process_word(input, &env);
            let ok = match (c["expected"].as_str(), c["error_contains"].as_str()) {
                (Some(want), _) => got.as_deref() == Ok(want),
                (None, Some(needle)) => matches!(&got, Err(e) if e.to_string().contains(needle)),
                _ => panic!("misc case without expectation"),
            };
            r.check(format!("{list} {input:?} {env:?}"), ok, || {
                format!("{got:?}")
            });
        }
    }
    for c in misc["env_slice_semantics"].as_array().unwrap() {
        let envs = strs(&c["envs"]);
        let key = c["get"].as_str().unwrap();
        let got = env_from_strings(&envs)
            .get(key)
            .cloned()
            .unwrap_or_default();
        r.check(
            format!("env slice {envs:?} get {key}"),
            got == c["expected"].as_str().unwrap(),
            || got.clone(),
        );
    }
    r.finish(47 + 14);
}
