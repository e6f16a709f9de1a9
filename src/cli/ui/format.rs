//! `--format`: Go templates as Docker's CLI takes them (`{{.State.Status}}`,
//! `{{json .Config}}`, `table {{.ID}}\t{{.Names}}`), rendered by the `gotmpl` crate (a port of
//! Go's text/template) over the same JSON kiln prints, with Docker's template functions:
//! `json`, `join`, `split`, `upper`, `lower`, `title`, `truncate`, `pad`, and the `table`
//! prefix (a header row, columns aligned).

use anyhow::{Context, Result};
use gotmpl::Value;
use serde_json::Value as Json;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        other => other.to_string(),
    }
}

fn arg<'a>(args: &'a [Value], i: usize, f: &str) -> gotmpl::Result<&'a Value> {
    args.get(i)
        .ok_or_else(|| gotmpl::TemplateError::Exec(format!("{f}: wrong number of arguments")))
}

/// Go's encoding/json of a template value (what Docker's `json` function prints).
fn to_json(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Uint(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.to_string()),
        Value::List(l) => Json::Array(l.iter().map(to_json).collect()),
        Value::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect()),
        other => Json::String(other.to_string()),
    }
}

fn template(src: &str) -> Result<gotmpl::Template> {
    gotmpl::Template::new("format")
        .func("json", |a| {
            Ok(Value::String(
                serde_json::to_string(&to_json(arg(a, 0, "json")?))
                    .unwrap_or_default()
                    .into(),
            ))
        })
        .func("join", |a| {
            let sep = text(arg(a, 1, "join")?);
            let items: Vec<String> = match arg(a, 0, "join")? {
                Value::List(l) => l.iter().map(text).collect(),
                v => vec![text(v)],
            };
            Ok(Value::String(items.join(&sep).into()))
        })
        .func("split", |a| {
            let s = text(arg(a, 0, "split")?);
            let sep = text(arg(a, 1, "split")?);
            let parts: Vec<Value> = s
                .split(sep.as_str())
                .map(|p| Value::String(p.into()))
                .collect();
            Ok(Value::List(parts.into()))
        })
        .func("upper", |a| {
            Ok(Value::String(
                text(arg(a, 0, "upper")?).to_uppercase().into(),
            ))
        })
        .func("lower", |a| {
            Ok(Value::String(
                text(arg(a, 0, "lower")?).to_lowercase().into(),
            ))
        })
        .func("title", |a| {
            let s = text(arg(a, 0, "title")?);
            let mut out = String::new();
            let mut start = true;
            for c in s.chars() {
                out.extend(if start {
                    c.to_uppercase().collect::<Vec<_>>()
                } else {
                    vec![c]
                });
                start = c.is_whitespace();
            }
            Ok(Value::String(out.into()))
        })
        .func("truncate", |a| {
            let s = text(arg(a, 0, "truncate")?);
            let n = arg(a, 1, "truncate")?.as_int().unwrap_or(0).max(0) as usize;
            Ok(Value::String(s.chars().take(n).collect::<String>().into()))
        })
        .func("pad", |a| {
            let s = text(arg(a, 0, "pad")?);
            let l = arg(a, 1, "pad")?.as_int().unwrap_or(0).max(0) as usize;
            let r = arg(a, 2, "pad")?.as_int().unwrap_or(0).max(0) as usize;
            Ok(Value::String(
                format!("{}{s}{}", " ".repeat(l), " ".repeat(r)).into(),
            ))
        })
        .parse(src)
        .with_context(|| format!("invalid --format template {src:?}"))
}

/// Renders `format` once per item, a line each. With the `table` prefix, a header row comes
/// first (the template rendered over `headers`, a field name -> column title object, as
/// Docker does) and the tab-separated columns are aligned.
pub fn render(format: &str, items: &[Json], headers: &Json) -> Result<String> {
    let (is_table, src) = match format.strip_prefix("table") {
        Some(rest) => (true, rest.trim_start()),
        None => (false, format),
    };
    // Docker reads `\t` and `\n` typed on the command line as the characters.
    let src = src.replace("\\t", "\t").replace("\\n", "\n");
    let t = template(&src)?;
    let mut lines = Vec::new();
    if is_table {
        let h = gotmpl::to_value(headers).context("template headers")?;
        lines.push(t.execute_to_string(&h).context("render the header")?);
    }
    for item in items {
        let v = gotmpl::to_value(item).context("template data")?;
        lines.push(t.execute_to_string(&v).context("render --format")?);
    }
    if !is_table {
        let mut out = lines.join("\n");
        out.push('\n');
        return Ok(out);
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    Ok(super::table(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn docker_templates_and_functions() {
        let items = [
            json!({"ID": "abc", "Names": "web", "State": {"Status": "running"},
                            "Config": {"Env": ["A=1", "B=2"], "Cmd": ["sh"]}}),
        ];
        let h = json!({"ID": "CONTAINER ID", "Names": "NAMES"});
        let r = |f: &str| render(f, &items, &h).unwrap();
        assert_eq!(r("{{.State.Status}}"), "running\n");
        assert_eq!(r("{{json .Config.Cmd}}"), "[\"sh\"]\n");
        assert_eq!(r("{{join .Config.Env \",\"}}"), "A=1,B=2\n");
        assert_eq!(r("{{.ID}}\\t{{.Names}}"), "abc\tweb\n");
        assert_eq!(
            r("table {{.ID}}\\t{{.Names}}"),
            "CONTAINER ID   NAMES\nabc            web\n"
        );
        assert_eq!(
            r("{{upper .Names}} {{lower \"X\"}} {{title \"a b\"}}"),
            "WEB x A B\n"
        );
        assert_eq!(
            r("{{truncate .ID 2}}|{{index (split \"a:b\" \":\") 1}}"),
            "ab|b\n"
        );
        assert!(render("{{.ID", &items, &h).is_err());
    }
}
