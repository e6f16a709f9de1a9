//! Why a step missed the cache, and what formed its key (`--explain`): pure functions over the
//! summary of a step's inputs that each cache row keeps.

use crate::key::StepKey;
use crate::plan::{self, Source, StepKind};
use kiln_store::StepRecord;
use std::collections::BTreeMap;

use super::copy;

/// The summary of a step's inputs kept in its cache row, for explaining the next miss.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Summary {
    pub(super) definition: String,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) files: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) from: Option<String>,
    /// The instruction's canonical form, readable (`--explain`).
    #[serde(default)]
    pub(super) canonical: Vec<String>,
    /// The stage's base, for its first step.
    #[serde(default)]
    pub(super) base: Option<String>,
    /// Imported with `--cache-from`, whose records leave the env values out.
    #[serde(default)]
    pub(super) env_omitted: bool,
}

/// A step row's input summary as it leaves the machine (`--cache-to`): without the env values
/// (build args may hold secrets), marked so the importing store's explanations say so.
pub fn inputs_for_export(inputs: &str) -> String {
    match serde_json::from_str::<Summary>(inputs) {
        Ok(mut s) => {
            s.env.clear();
            s.env_omitted = true;
            serde_json::to_string(&s).unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

/// One line saying why `key` missed, comparing with the last build of the same step.
pub(super) fn why_missed(
    no_cache: bool,
    prev: Option<&StepRecord>,
    parent: &str,
    inputs: &Summary,
    first_step: bool,
) -> String {
    if no_cache {
        return "cache miss: --no-cache".into();
    }
    let Some(prev) = prev else {
        return "cache miss: not built before".into();
    };
    let old: Summary = serde_json::from_str(&prev.inputs).unwrap_or_default();
    if prev.parent != parent {
        return if first_step {
            match (&old.base, &inputs.base) {
                (Some(a), Some(b)) if a != b => {
                    format!(
                        "cache miss: the base changed: {} -> {}",
                        short_ids(a),
                        short_ids(b)
                    )
                }
                _ => "cache miss: the base image changed".into(),
            }
        } else {
            "cache miss: an earlier step changed".into()
        };
    }
    if old.from != inputs.from {
        return "cache miss: the --from source changed".into();
    }
    if old.definition != inputs.definition {
        if old.env_omitted {
            // An imported record (--cache-from) carries no env values to compare.
            return "cache miss: the instruction, a build arg or env changed".into();
        }
        // Same text, different definition: something the instruction expands changed.
        let changed: Vec<&String> = inputs
            .env
            .iter()
            .filter(|(k, v)| old.env.get(*k) != Some(v))
            .map(|(k, _)| k)
            .chain(old.env.keys().filter(|k| !inputs.env.contains_key(*k)))
            .collect();
        if !changed.is_empty() {
            let names: Vec<&str> = changed.iter().map(|s| s.as_str()).take(3).collect();
            return format!("cache miss: build arg or env changed: {}", names.join(", "));
        }
        return "cache miss: the instruction changed".into();
    }
    let mut changed = Vec::new();
    let (mut added, mut removed) = (0, 0);
    for (p, h) in &inputs.files {
        match old.files.get(p) {
            None => added += 1,
            Some(o) if o != h => changed.push(p.as_str()),
            _ => {}
        }
    }
    for p in old.files.keys() {
        if !inputs.files.contains_key(p) {
            removed += 1;
        }
    }
    let mut parts = Vec::new();
    if !changed.is_empty() {
        let shown: Vec<&str> = changed.iter().copied().take(3).collect();
        let more = if changed.len() > 3 { ", ..." } else { "" };
        parts.push(format!(
            "{} file{} changed: {}{more}",
            changed.len(),
            if changed.len() == 1 { "" } else { "s" },
            shown.join(", ")
        ));
    }
    if added > 0 {
        parts.push(format!("{added} added"));
    }
    if removed > 0 {
        parts.push(format!("{removed} removed"));
    }
    if parts.is_empty() {
        "cache miss: inputs changed".into()
    } else {
        format!("cache miss: {}", parts.join(", "))
    }
}

/// Shortens every `sha256:<64 hex>` in `s` to 12 hex digits.
fn short_ids(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("sha256:") {
        out.push_str(&rest[..i + 7]);
        let hex = &rest[i + 7..];
        let n = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
        out.push_str(&hex[..n.min(12)]);
        rest = &hex[n..];
    }
    out.push_str(rest);
    out
}

/// The instruction's canonical definition, one readable line per field (what the key hashes,
/// besides the parent and the selected files).
pub(super) fn describe(step: &plan::Step) -> Vec<String> {
    let q = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    let mut out = Vec::new();
    match &step.kind {
        StepKind::Run(r) => {
            out.push(format!("run: {}", q(&r.argv)));
            if let Some((name, sc)) = &r.script {
                out.push(format!(
                    "script /dev/pipes/{name}: {} bytes, blake3 {}",
                    sc.len(),
                    &blake3::hash(sc.as_bytes()).to_hex()[..12]
                ));
            }
            out.push(format!("workdir: {}", r.workdir));
            out.push(format!(
                "user: {}",
                if r.user.is_empty() { "root" } else { &r.user }
            ));
            out.push(format!(
                "network: {}",
                if r.network == plan::Network::None {
                    "none"
                } else {
                    "host"
                }
            ));
            for m in &r.mounts {
                let f: Vec<String> = m.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push(format!("mount: type={},{}", m.type_name(), f.join(",")));
            }
        }
        StepKind::Copy(c) => {
            let cp = &c.copy;
            out.push(format!(
                "{}: {} -> {}",
                if cp.add { "add" } else { "copy" },
                q(&cp.sources),
                c.dest
            ));
            match &c.source {
                Source::Context => {}
                Source::Stage(i) => out.push(format!("from: stage {i}")),
                Source::Image(r) => out.push(format!("from: image {r}")),
            }
            for h in &cp.inline {
                out.push(format!(
                    "heredoc {}: {} bytes, blake3 {}",
                    h.path,
                    h.data.len(),
                    &blake3::hash(h.data.as_bytes()).to_hex()[..12]
                ));
            }
            let mut flags = Vec::new();
            if let Some(v) = &cp.chown {
                flags.push(format!("--chown={v}"));
            }
            if let Some(v) = &cp.chmod {
                flags.push(format!("--chmod={v}"));
            }
            if cp.link {
                flags.push("--link".into());
            }
            if cp.parents {
                flags.push("--parents".into());
            }
            for e in &cp.exclude {
                flags.push(format!("--exclude={e}"));
            }
            if let Some(v) = &cp.checksum {
                flags.push(format!("--checksum={v}"));
            }
            if let Some(v) = cp.unpack {
                flags.push(format!("--unpack={v}"));
            }
            if !flags.is_empty() {
                out.push(format!("flags: {}", flags.join(" ")));
            }
        }
        StepKind::Workdir(path, user) => {
            out.push(format!("workdir: {path}"));
            if !user.is_empty() {
                out.push(format!("owner: {user}"));
            }
        }
    }
    out
}

/// `--explain`: the step's key and what formed it; for a miss (`prev` given), the nearest
/// earlier build of the same step and what differs from it.
pub(super) fn explain(
    key: &StepKey,
    parent: &StepKey,
    now: &Summary,
    prev: Option<Option<&StepRecord>>,
    relinked: bool,
) -> Vec<String> {
    const MAX: usize = 20;
    let mut out = vec![format!(
        "key {} = blake3(parent {} | definition | inputs){}",
        &key.to_hex()[..12],
        &parent.to_hex()[..12],
        if relinked {
            ", found by its --link key (base-independent)"
        } else {
            ""
        }
    )];
    for c in &now.canonical {
        out.push(format!("  {c}"));
    }
    if let Some(b) = &now.base {
        out.push(format!("  base: {b}"));
    }
    if let Some(f) = &now.from {
        out.push(format!("  from: {f}"));
    }
    if !now.env.is_empty() {
        let env: Vec<String> = now.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push(format!("  env: {}", env.join(" ")));
    }
    if !now.files.is_empty() {
        out.push(format!("  files: {}", now.files.len()));
        for (p, d) in now.files.iter().take(MAX) {
            out.push(format!("    {p} {d}"));
        }
        if now.files.len() > MAX {
            out.push(format!("    ... and {} more", now.files.len() - MAX));
        }
    }
    let Some(prev) = prev else { return out };
    let Some(prev) = prev else {
        out.push("  no earlier build of this step is in the cache".into());
        return out;
    };
    let old: Summary = serde_json::from_str(&prev.inputs).unwrap_or_default();
    out.push(format!(
        "  nearest earlier: key {}, built {}; differs in:",
        &prev.key[..12.min(prev.key.len())],
        crate::timefmt::ago(prev.created, kiln_store::store::now()).to_lowercase()
    ));
    let before = out.len();
    if prev.parent != parent.to_hex() {
        match (&old.base, &now.base) {
            (Some(a), Some(b)) if a != b => out.push(format!("    base: {a} -> {b}")),
            _ => out.push(format!(
                "    parent: {} -> {} (an earlier step or the base changed)",
                &prev.parent[..12.min(prev.parent.len())],
                &parent.to_hex()[..12]
            )),
        }
    }
    if old.from != now.from {
        out.push(format!(
            "    from: {} -> {}",
            old.from.as_deref().unwrap_or("-"),
            now.from.as_deref().unwrap_or("-")
        ));
    }
    for c in old.canonical.iter().filter(|c| !now.canonical.contains(c)) {
        out.push(format!("    - {c}"));
    }
    for c in now.canonical.iter().filter(|c| !old.canonical.contains(c)) {
        out.push(format!("    + {c}"));
    }
    if old.env_omitted {
        out.push(
            "    (env not compared: the earlier build was imported without its values)".into(),
        );
    }
    for (k, v) in now.env.iter().filter(|_| !old.env_omitted) {
        match old.env.get(k) {
            Some(o) if o != v => out.push(format!("    env {k}: {o:?} -> {v:?}")),
            None => out.push(format!("    env {k}: unset -> {v:?}")),
            _ => {}
        }
    }
    for (k, o) in &old.env {
        if !now.env.contains_key(k) {
            out.push(format!("    env {k}: {o:?} -> unset"));
        }
    }
    let mut file_lines = Vec::new();
    for (p, d) in &now.files {
        match old.files.get(p) {
            Some(o) if o != d => file_lines.push(format!("    changed {p}: {o} -> {d}")),
            None => file_lines.push(format!("    added {p}")),
            _ => {}
        }
    }
    for p in old.files.keys().filter(|p| !now.files.contains_key(*p)) {
        file_lines.push(format!("    removed {p}"));
    }
    let n = file_lines.len();
    out.extend(file_lines.into_iter().take(MAX));
    if n > MAX {
        out.push(format!("    ... and {} more file changes", n - MAX));
    }
    if out.len() == before {
        out.push(
            "    nothing recorded: the same inputs (the entry's layer was pruned, or --no-cache)"
                .into(),
        );
    }
    out
}

fn summary_path(root: &copy::Root_, it: &copy::Item) -> Option<String> {
    match (root.name.is_empty(), it.rel.is_empty()) {
        (true, true) => None,
        (_, true) => Some(root.name.clone()),
        (true, false) => Some(it.rel.clone()),
        (false, false) => Some(format!("{}/{}", root.name, it.rel)),
    }
}

/// Flags the items whose summary equals the previous build's.
pub(super) fn mark_unchanged(
    roots: &mut [copy::Root_],
    now: &BTreeMap<String, String>,
    before: &BTreeMap<String, String>,
) {
    for root in roots.iter_mut() {
        let name = root.name.clone();
        let is_dir = root.is_dir;
        for it in root.items.iter_mut() {
            let probe = copy::Root_ {
                name: name.clone(),
                path: String::new(),
                no_unpack: false,
                is_dir,
                items: vec![],
            };
            if let Some(p) = summary_path(&probe, it) {
                it.unchanged = now.get(&p).is_some() && now.get(&p) == before.get(&p);
            }
        }
    }
}

/// Per selected file, a short digest of (type, mode, content), for explaining the next miss.
pub(super) fn file_summary(roots: &[copy::Root_]) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for root in roots {
        for it in &root.items {
            let Some(p) = summary_path(root, it) else {
                continue;
            };
            let mut h = blake3::Hasher::new();
            h.update(format!("{:?}", it.kind).as_bytes());
            h.update(&it.mode.to_le_bytes());
            h.update(&it.hash);
            files.insert(p, h.finalize().to_hex()[..16].to_string());
        }
    }
    files
}

#[cfg(test)]
mod tests;
