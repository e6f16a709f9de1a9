//! YAML out, for `kiln compose config`: block style, two-space indents, strings quoted (as
//! JSON strings, which YAML reads the same) only where a plain scalar would mean something else.

use serde_json::Value;

pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    block(v, 0, &mut out);
    out
}

fn block(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) => entries(m, indent, false, out),
        Value::Array(items) => {
            for x in items {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                match x {
                    // The first key on the dash's line, the rest aligned under it.
                    Value::Object(m) if !m.is_empty() => entries(m, indent + 2, true, out),
                    _ => after(x, indent, out),
                }
            }
        }
        _ => {
            out.push_str(&" ".repeat(indent));
            out.push_str(&inline(v));
            out.push('\n');
        }
    }
}

/// A mapping's entries at `indent`; with `on_dash` the first goes on the line already begun.
fn entries(m: &serde_json::Map<String, Value>, indent: usize, on_dash: bool, out: &mut String) {
    for (i, (k, x)) in m.iter().enumerate() {
        if on_dash && i == 0 {
            out.push(' ');
        } else {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&scalar_str(k));
        out.push(':');
        after(x, indent, out);
    }
}

/// What follows a key's colon or a dash: a nested block on the next lines, or a scalar.
fn after(x: &Value, indent: usize, out: &mut String) {
    match x {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            block(x, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            block(x, indent + 2, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&inline(x));
            out.push('\n');
        }
    }
}

fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_str(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// `s` plain when YAML would read it back as the same string, else double-quoted.
fn scalar_str(s: &str) -> String {
    let special = s.is_empty()
        || s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`~ ".contains(c))
        || s.ends_with(' ')
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.contains(['\n', '\t', '\\'])
        || ["true", "false", "null", "yes", "no", "on", "off", "y", "n"]
            .contains(&s.to_ascii_lowercase().as_str())
        || s.parse::<f64>().is_ok()
        || s.starts_with("0x")
        || s.starts_with("0o");
    if special {
        serde_json::to_string(s).expect("a string serializes")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_as_the_same_tree() {
        let v = serde_json::json!({
            "name": "app",
            "services": {"web": {
                "command": ["redis-server", "--appendonly", "yes"],
                "ports": ["0.0.0.0:4000:80/tcp"],
                "environment": {"A": "1", "B": null, "C": "true", "D": "", "E": "a: b"},
                "volumes": [{"type": "bind", "source": "/x", "target": "/y"}],
                "deploy": {"replicas": 5, "cpus": 0.1},
                "networks": {"default": []}
            }}
        });
        let text = to_yaml(&v);
        assert!(
            text.contains("    command:\n      - redis-server\n"),
            "{text}"
        );
        assert!(
            text.contains("      - source: /x\n        target: /y\n        type: bind\n"),
            "{text}"
        );
        // Parse it again with kiln's reader: the same strings come back.
        let n = crate::compose::yaml::parse(&text).unwrap();
        let env = n
            .get("services")
            .unwrap()
            .get("web")
            .unwrap()
            .get("environment")
            .unwrap();
        let s = |k: &str| match &env.get(k).unwrap().value {
            crate::compose::yaml::Value::Scalar(s, plain) => (s.clone(), *plain),
            v => panic!("{v:?}"),
        };
        assert_eq!(s("A"), ("1".into(), false));
        assert_eq!(s("C"), ("true".into(), false));
        assert_eq!(s("D"), ("".into(), false));
        assert_eq!(s("E"), ("a: b".into(), false));
        assert!(env.get("B").unwrap().is_null());
    }
}
