//! `kiln image diff A B`: the config fields and files that differ, grouped by directory and
//! capped, or every one as JSON.

#[allow(unused_imports)]
use super::*;
use crate::image::compare::{self, tree::FileChange, tree::FileInfo, ConfigChange, ImageDiff};
use serde_json::Value;

#[derive(Args, Debug)]
pub struct ImageDiffArgs {
    /// The first image: a name, an ID, or oci-archive:PATH / docker-archive:PATH
    a: String,
    /// The second image, named the same ways
    b: String,
    /// `json` for every difference as one JSON document, or a Go template over it
    #[arg(short, long)]
    format: Option<String>,
    /// Changed paths shown per directory (the rest are counted)
    #[arg(long, value_name = "N", default_value_t = 10)]
    per_dir: usize,
    /// Directories shown (the rest are counted)
    #[arg(long, value_name = "N", default_value_t = 20)]
    dirs: usize,
}

pub fn image_diff(ctx: &Ctx, a: ImageDiffArgs) -> Result<i32> {
    let store = ctx.store()?;
    let x = compare::open(&store, &a.a)?;
    let y = compare::open(&store, &a.b)?;
    let d = compare::diff(&store, &x, &y)?;
    match a.format.as_deref() {
        Some("json") => println!("{}", serde_json::to_string_pretty(&d)?),
        Some(f) => print!(
            "{}",
            crate::cli::ui::format::render(
                f,
                &[serde_json::to_value(&d)?],
                &serde_json::json!({})
            )?
        ),
        None => print!("{}", render(&d, a.per_dir, a.dirs)),
    }
    Ok(0)
}

fn compact(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        v => v.to_string(),
    }
}

fn config_lines(c: &ConfigChange, out: &mut Vec<String>) {
    match (&c.a, &c.b) {
        (Value::Array(_) | Value::Null, Value::Array(_) | Value::Null)
            if !c.field.starts_with("history") && (c.a.is_array() || c.b.is_array()) =>
        {
            let items = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .map(|i| {
                                i.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| i.to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (xa, xb) = (items(&c.a), items(&c.b));
            // Env-like lists: items removed and added; an argv: the whole of it.
            if c.field == "Env" {
                out.push(format!("  {}:", c.field));
                out.extend(
                    xa.iter()
                        .filter(|i| !xb.contains(i))
                        .map(|i| format!("    - {i}")),
                );
                out.extend(
                    xb.iter()
                        .filter(|i| !xa.contains(i))
                        .map(|i| format!("    + {i}")),
                );
            } else {
                out.push(format!(
                    "  {}: {} → {}",
                    c.field,
                    compact(&c.a),
                    compact(&c.b)
                ));
            }
        }
        (Value::Object(_) | Value::Null, Value::Object(_) | Value::Null)
            if !c.field.starts_with("history") && (c.a.is_object() || c.b.is_object()) =>
        {
            let empty = serde_json::Map::new();
            let (ma, mb) = (
                c.a.as_object().unwrap_or(&empty),
                c.b.as_object().unwrap_or(&empty),
            );
            out.push(format!("  {}:", c.field));
            let mut keys: Vec<&String> = ma.keys().chain(mb.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (ma.get(k), mb.get(k)) {
                    (Some(x), None) => out.push(format!("    - {k} ({})", compact(x))),
                    (None, Some(y)) => out.push(format!("    + {k} ({})", compact(y))),
                    (Some(x), Some(y)) if x != y => {
                        out.push(format!("    ~ {k}: {} → {}", compact(x), compact(y)))
                    }
                    _ => {}
                }
            }
        }
        _ if c.field.starts_with("history") => {
            let by = |v: &Value| {
                v.get("created_by")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let label = by(&c.b).or_else(|| by(&c.a)).unwrap_or_default();
            let mut parts = Vec::new();
            for k in ["created", "created_by", "comment", "author", "empty_layer"] {
                let (x, y) = (c.a.get(k), c.b.get(k));
                if x != y {
                    let s = |v: Option<&Value>| v.map(compact).unwrap_or_else(|| "(none)".into());
                    parts.push(format!("{k} {} → {}", s(x), s(y)));
                }
            }
            if c.a.is_null() || c.b.is_null() {
                parts = vec![if c.a.is_null() {
                    "only in B".into()
                } else {
                    "only in A".into()
                }];
            }
            out.push(format!(
                "  {} ({}): {}",
                c.field,
                crate::cli::ui::truncate(&label, 61),
                parts.join(", ")
            ));
        }
        _ => out.push(format!(
            "  {}: {} → {}",
            c.field,
            compact(&c.a),
            compact(&c.b)
        )),
    }
}

fn short_digest(d: &Option<String>) -> String {
    d.as_deref()
        .map(|d| {
            d.strip_prefix("sha256:")
                .unwrap_or(d)
                .chars()
                .take(12)
                .collect()
        })
        .unwrap_or_else(|| "(none)".into())
}

fn describe(i: &FileInfo) -> String {
    let mut s = format!("{} {} {}:{}", i.kind, i.mode, i.uid, i.gid);
    if i.kind == "file" {
        s.push_str(&format!(", {}", timefmt::human_size(i.size)));
    }
    if let Some(l) = &i.link {
        s.push_str(&format!(" → {l}"));
    }
    s
}

fn change_detail(c: &FileChange) -> String {
    let (Some(a), Some(b)) = (&c.a, &c.b) else {
        return match (&c.a, &c.b) {
            (Some(a), None) => describe(a),
            (None, Some(b)) => describe(b),
            _ => String::new(),
        };
    };
    let time = |t: u64| timefmt::rfc3339(t as i64);
    c.what
        .iter()
        .map(|w| match *w {
            "type" => format!("type {} → {}", a.kind, b.kind),
            "mode" => format!("mode {} → {}", a.mode, b.mode),
            "owner" => format!("owner {}:{} → {}:{}", a.uid, a.gid, b.uid, b.gid),
            "size" => {
                let (x, y) = (timefmt::human_size(a.size), timefmt::human_size(b.size));
                if x == y {
                    format!("size {} → {} bytes", a.size, b.size)
                } else {
                    format!("size {x} → {y}")
                }
            }
            "link" => format!(
                "link {} → {}",
                a.link.as_deref().unwrap_or("(none)"),
                b.link.as_deref().unwrap_or("(none)")
            ),
            "content" => format!(
                "content {} → {}",
                short_digest(&a.digest),
                short_digest(&b.digest)
            ),
            "mtime" => format!("mtime {} → {}", time(a.mtime), time(b.mtime)),
            "xattrs" => {
                let keys = |i: &FileInfo| i.xattrs.keys().cloned().collect::<Vec<_>>().join(",");
                format!("xattrs [{}] → [{}]", keys(a), keys(b))
            }
            "device" => format!(
                "device {} → {}",
                a.device.as_deref().unwrap_or("-"),
                b.device.as_deref().unwrap_or("-")
            ),
            w => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text report: both images, the common layers, the config, then the files by directory.
pub fn render(d: &ImageDiff, per_dir: usize, max_dirs: usize) -> String {
    let mut out = Vec::new();
    for (tag, s) in [("A", &d.a), ("B", &d.b)] {
        out.push(format!(
            "{tag}: {} ({}, {} layers)",
            s.name,
            s.id.short(),
            s.layers
        ));
    }
    if d.a.id == d.b.id {
        out.push("The images are identical: they have the same image ID.".into());
        return out.join("\n") + "\n";
    }
    if d.common_layers > 0 {
        let read_common = d.a.layers_read > d.a.layers - d.common_layers;
        let (first, was) = match d.common_layers {
            1 => ("The first layer is".to_string(), "was"),
            n => (format!("The first {n} layers are"), "were"),
        };
        out.push(if read_common {
            format!("{first} the same in both ({was} read only for the paths in question).")
        } else {
            format!("{first} the same in both and {was} not read.")
        });
    }
    out.push(String::new());
    if d.config.is_empty() {
        out.push("Config: no field differs".into());
    } else {
        out.push(format!("Config ({} differ):", d.config.len()));
        for c in &d.config {
            config_lines(c, &mut out);
        }
    }
    out.push(String::new());
    let count = |k: &str| d.files.iter().filter(|f| f.change == k).count();
    if d.files.is_empty() {
        out.push("Files: none differ".into());
    } else {
        out.push(format!(
            "Files ({} changed, {} added, {} removed):",
            count("changed"),
            count("added"),
            count("removed")
        ));
    }
    // Grouped by directory, directories in path order.
    let mut groups: std::collections::BTreeMap<&str, Vec<&FileChange>> = Default::default();
    for f in &d.files {
        let dir = match f.path.rfind('/') {
            Some(0) | None => "/",
            Some(i) => &f.path[..i],
        };
        groups.entry(dir).or_default().push(f);
    }
    let mut hidden = (0, 0);
    for (i, (dir, v)) in groups.iter().enumerate() {
        if i >= max_dirs {
            hidden.0 += v.len();
            hidden.1 += 1;
            continue;
        }
        out.push(format!(
            "  {}",
            if *dir == "/" {
                "/".to_string()
            } else {
                format!("{dir}/")
            }
        ));
        for f in v.iter().take(per_dir) {
            let name = &f.path[f.path.rfind('/').map(|i| i + 1).unwrap_or(0)..];
            let sign = match f.change {
                "added" => '+',
                "removed" => '-',
                _ => '~',
            };
            out.push(format!("    {sign} {name}: {}", change_detail(f)));
        }
        if v.len() > per_dir {
            out.push(format!("    … and {} more in {dir}", v.len() - per_dir));
        }
    }
    if hidden.1 > 0 {
        out.push(format!(
            "  … and {} more in {} more directories (--format json lists every one)",
            hidden.0, hidden.1
        ));
    }
    if d.config.is_empty() && d.files.is_empty() {
        out.push(String::new());
        out.push(
            "No config field or file differs: the layers' bytes do (entry order, tar headers or layering)."
                .into(),
        );
    }
    out.join("\n") + "\n"
}
