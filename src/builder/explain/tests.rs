use super::*;
use crate::key::StepKey;

fn summary(definition: &str, env: &[(&str, &str)], files: &[(&str, &str)]) -> Summary {
    Summary {
        definition: definition.into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        files: files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn record(parent: &str, s: &Summary) -> StepRecord {
    StepRecord {
        key: "a".repeat(64),
        slot: "slot".into(),
        parent: parent.into(),
        layer: None,
        chain_id: None,
        instruction: "RUN x".into(),
        inputs: serde_json::to_string(s).unwrap(),
        created: 0,
        last_used: 0,
        hits: 0,
    }
}

#[test]
fn a_miss_names_its_cause() {
    let now = summary("d1", &[("A", "1")], &[("a.txt", "h1"), ("b.txt", "h2")]);
    assert_eq!(
        why_missed(true, None, "p", &now, false),
        "cache miss: --no-cache"
    );
    assert_eq!(
        why_missed(false, None, "p", &now, false),
        "cache miss: not built before"
    );
    let same = record("p", &now);
    assert_eq!(
        why_missed(false, Some(&same), "q", &now, false),
        "cache miss: an earlier step changed"
    );
    let mut based = summary("d1", &[("A", "1")], &[("a.txt", "h1"), ("b.txt", "h2")]);
    based.base = Some(format!("image busybox (sha256:{})", "1".repeat(64)));
    let mut rebased = summary("d1", &[("A", "1")], &[("a.txt", "h1"), ("b.txt", "h2")]);
    rebased.base = Some(format!("image busybox (sha256:{})", "2".repeat(64)));
    assert_eq!(
        why_missed(false, Some(&record("p", &based)), "q", &rebased, true),
        "cache miss: the base changed: image busybox (sha256:111111111111) -> image busybox (sha256:222222222222)"
    );
    let env_changed = summary("d2", &[("A", "2")], &[]);
    assert_eq!(
        why_missed(false, Some(&same), "p", &env_changed, false),
        "cache miss: build arg or env changed: A"
    );
    let text_changed = summary("d2", &[("A", "1")], &[]);
    assert_eq!(
        why_missed(false, Some(&same), "p", &text_changed, false),
        "cache miss: the instruction changed"
    );
    let files = summary("d1", &[("A", "1")], &[("a.txt", "h9"), ("c.txt", "h3")]);
    assert_eq!(
        why_missed(false, Some(&same), "p", &files, false),
        "cache miss: 1 file changed: a.txt, 1 added, 1 removed"
    );
}

#[test]
fn explain_lists_the_key_and_the_differences() {
    let key = StepKey([1; 32]);
    let parent = StepKey([2; 32]);
    let mut now = summary("d", &[("A", "2")], &[("a.txt", "h2")]);
    now.canonical = vec!["run: [\"make\"]".into()];
    let hit = explain(&key, &parent, &now, None, true);
    assert!(
        hit[0].starts_with("key 010101010101 = blake3(parent 020202020202"),
        "{hit:?}"
    );
    assert!(hit[0].ends_with("found by its --link key (base-independent)"));
    assert!(hit.contains(&"  run: [\"make\"]".to_string()));
    assert!(hit.contains(&"  env: A=2".to_string()));
    let mut old = summary(
        "d",
        &[("A", "1"), ("B", "x")],
        &[("a.txt", "h1"), ("gone", "h")],
    );
    old.canonical = vec!["run: [\"make\", \"all\"]".into()];
    let rec = record(&parent.to_hex(), &old);
    let miss = explain(&key, &parent, &now, Some(Some(&rec)), false);
    for want in [
        "    - run: [\"make\", \"all\"]",
        "    + run: [\"make\"]",
        "    env A: \"1\" -> \"2\"",
        "    env B: \"x\" -> unset",
        "    changed a.txt: h1 -> h2",
        "    removed gone",
    ] {
        assert!(
            miss.contains(&want.to_string()),
            "missing {want:?} in {miss:#?}"
        );
    }
    let none = explain(&key, &parent, &now, Some(None), false);
    assert_eq!(
        none.last().unwrap(),
        "  no earlier build of this step is in the cache"
    );
}

#[test]
fn short_ids_shortens_every_digest() {
    let s = format!("a sha256:{} b sha256:{}", "f".repeat(64), "e".repeat(64));
    assert_eq!(short_ids(&s), "a sha256:ffffffffffff b sha256:eeeeeeeeeeee");
}

#[test]
fn exported_inputs_keep_no_env_values() {
    let s = summary("d", &[("TOKEN", "secret")], &[("a", "h")]);
    let out = inputs_for_export(&serde_json::to_string(&s).unwrap());
    assert!(!out.contains("secret"), "{out}");
    let back: Summary = serde_json::from_str(&out).unwrap();
    assert!(back.env_omitted && back.env.is_empty());
    assert_eq!(back.files, s.files);
    assert_eq!(inputs_for_export("not json"), "");
}
