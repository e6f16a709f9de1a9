//! `kiln cache ls|du|inspect|prune`: the build step cache, looked at and trimmed.

use super::ui::table;
use super::Ctx;
use crate::timefmt;
use anyhow::Result;
use clap::{Args, Subcommand};
use kiln_store::gc::dir_size;
use kiln_store::{StepRecord, Store};
use std::collections::HashSet;

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List the step cache: key, instruction, created, last used, hits, layer size
    Ls(LsArgs),
    /// Space the step cache uses, and what pruning would reclaim
    Du,
    /// A step's key inputs, its layer, and the images that use it
    Inspect(InspectArgs),
    /// Remove cache entries, least recently used first (images keep what they need)
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Output format: table or json
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A step key or a unique prefix of one
    key: String,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove every entry (default: only those no image uses)
    #[arg(short, long)]
    all: bool,
    /// Keep the most recently used entries up to this much layer data (e.g. 500mb, 2gb)
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
    /// Only entries last used before this long ago: until=DURATION (e.g. until=24h, 90m, 7d)
    #[arg(long, value_name = "until=DURATION")]
    filter: Option<String>,
    /// Do not prompt (kiln never prompts; accepted for Docker's habit)
    #[arg(short, long)]
    force: bool,
}

pub fn run(ctx: &Ctx, c: CacheCommand) -> Result<i32> {
    match c {
        CacheCommand::Ls(a) => ls(ctx, a),
        CacheCommand::Du => du(ctx),
        CacheCommand::Inspect(a) => inspect(ctx, a),
        CacheCommand::Prune(a) => prune(ctx, a),
    }
}

fn ls(ctx: &Ctx, a: LsArgs) -> Result<i32> {
    let store = ctx.store()?;
    let steps = store.steps().list()?;
    if a.format == "json" {
        let v: Vec<serde_json::Value> = steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "key": s.key,
                    "instruction": s.instruction,
                    "created": timefmt::rfc3339(s.created),
                    "last_used": timefmt::rfc3339(s.last_used),
                    "hits": s.hits,
                    "layer": s.layer,
                    "layer_size": s.layer_size,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let now = kiln_store::store::now();
    let mut rows = vec![vec![
        "KEY".to_string(),
        "INSTRUCTION".into(),
        "CREATED".into(),
        "LAST USED".into(),
        "HITS".into(),
        "SIZE".into(),
    ]];
    for s in &steps {
        rows.push(vec![
            s.key[..12].to_string(),
            super::ui::truncate(&s.instruction, 40),
            timefmt::ago(s.created, now),
            timefmt::ago(s.last_used, now),
            s.hits.to_string(),
            if s.layer.is_some() {
                timefmt::human_size(s.layer_size)
            } else {
                "0B".into()
            },
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

fn du(ctx: &Ctx) -> Result<i32> {
    let store = ctx.store()?;
    let steps = store.steps().all()?;
    let shared = crate::builder::prune::shared_layers(&store)?;
    let mut seen = HashSet::new();
    let (mut total, mut shared_bytes) = (0u64, 0u64);
    let mut snap_bytes = 0u64;
    let mut chains = HashSet::new();
    for s in &steps {
        if let Some(l) = &s.layer {
            if seen.insert(l.digest.to_string()) {
                total += l.size;
                if shared.contains(&l.digest.to_string()) {
                    shared_bytes += l.size;
                }
            }
        }
        if let Some(c) = s.chain_id {
            if s.layer.is_some() && chains.insert(c) {
                if let Some(snap) = store.snapshot(&c)? {
                    snap_bytes += snap.size;
                }
            }
        }
    }
    let rows = vec![
        vec![
            "TYPE".to_string(),
            "ENTRIES".into(),
            "SIZE".into(),
            "RECLAIMABLE".into(),
        ],
        vec![
            "Step layers".into(),
            steps.len().to_string(),
            timefmt::human_size(total),
            timefmt::human_size(total - shared_bytes),
        ],
        vec![
            "  shared with images".into(),
            shared.len().to_string(),
            timefmt::human_size(shared_bytes),
            "0B".into(),
        ],
        vec![
            "Step snapshots".into(),
            chains.len().to_string(),
            timefmt::human_size(snap_bytes),
            "-".into(),
        ],
        {
            let (n, bytes) = crate::builder::prune::cache_mounts(&store);
            vec![
                "Cache mounts".into(),
                n.to_string(),
                timefmt::human_size(bytes),
                timefmt::human_size(bytes),
            ]
        },
        {
            let dir = store.root().join("http-cache");
            let n = std::fs::read_dir(&dir).map_or(0, |rd| rd.flatten().count());
            let bytes = dir_size(&dir);
            vec![
                "ADD downloads".into(),
                n.to_string(),
                timefmt::human_size(bytes),
                timefmt::human_size(bytes),
            ]
        },
    ];
    print!("{}", table(&rows));
    Ok(0)
}

fn find(store: &Store, key: &str) -> Result<StepRecord> {
    let hits: Vec<StepRecord> = store
        .steps()
        .all()?
        .into_iter()
        .filter(|s| s.key.starts_with(key))
        .collect();
    match hits.len() {
        1 => Ok(hits.into_iter().next().expect("one")),
        0 => anyhow::bail!("no cache entry with key {key:?}: `kiln cache ls` lists them"),
        n => anyhow::bail!("key {key:?} matches {n} cache entries: give more of it"),
    }
}

fn inspect(ctx: &Ctx, a: InspectArgs) -> Result<i32> {
    let store = ctx.store()?;
    let s = find(&store, &a.key)?;
    let inputs: serde_json::Value =
        serde_json::from_str(&s.inputs).unwrap_or(serde_json::Value::Null);
    let images: Vec<String> = match &s.layer {
        Some(l) => store
            .images_using_layer(&l.digest)?
            .iter()
            .map(|m| {
                let tags = store.refs_of(m).unwrap_or_default();
                if tags.is_empty() {
                    m.to_string()
                } else {
                    tags.join(", ")
                }
            })
            .collect(),
        None => vec![],
    };
    let v = serde_json::json!({
        "Key": s.key,
        "Parent": s.parent,
        "Instruction": s.instruction,
        "Inputs": inputs,
        "Layer": s.layer.as_ref().map(|l| serde_json::json!({
            "Digest": l.digest.to_string(),
            "DiffID": l.diff_id.to_string(),
            "MediaType": l.media_type,
            "Size": l.size,
            "UncompressedSize": l.uncompressed_size,
        })),
        "ChainID": s.chain_id.map(|c| c.to_string()),
        "Created": timefmt::rfc3339(s.created),
        "LastUsed": timefmt::rfc3339(s.last_used),
        "Hits": s.hits,
        "UsedByImages": images,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}

/// Parses Docker's sizes (`500mb`, `2gb`, `1024`), as `docker builder prune` does.
fn parse_size(s: &str) -> Result<u64> {
    crate::timefmt::ram_in_bytes(s).map_err(|e| anyhow::anyhow!(e))
}

/// Parses `until=DURATION` (Go durations and days: `24h`, `90m`, `7d`) into seconds.
fn parse_until(f: &str) -> Result<i64> {
    let d = f.strip_prefix("until=").ok_or_else(|| {
        anyhow::anyhow!("invalid --filter {f:?}: the filter kiln knows is until=DURATION")
    })?;
    if let Some(days) = d.strip_suffix('d') {
        if let Ok(n) = days.parse::<i64>() {
            return Ok(n * 86_400);
        }
    }
    let ns = crate::frontend::instructions::parse_go_duration(d).ok_or_else(|| {
        anyhow::anyhow!("invalid --filter {f:?}: a duration such as 24h, 90m or 7d")
    })?;
    Ok((ns / 1_000_000_000) as i64)
}

fn prune(ctx: &Ctx, a: PruneArgs) -> Result<i32> {
    let store = ctx.store()?;
    let _ = a.force;
    let opts = crate::builder::prune::PruneOptions {
        all: a.all,
        unused_for: a.filter.as_deref().map(parse_until).transpose()?,
        keep_storage: a.keep_storage.as_deref().map(parse_size).transpose()?,
    };
    let pruned = crate::builder::prune::prune(&store, &opts)?;
    for k in &pruned.entries {
        println!("Deleted cache entry {}", &k[..12]);
    }
    println!(
        "Total reclaimed space: {} ({} cache entries)",
        timefmt::human_size(pruned.bytes),
        pruned.entries.len()
    );
    Ok(0)
}
