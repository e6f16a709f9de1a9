//! `kiln volume create|ls|inspect|rm|prune`: Docker's volume commands, for the local volumes
//! under the store.

use super::ui::table;
use super::Ctx;
use crate::container::volume;
use crate::timefmt;
use anyhow::Result;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (a random name when none is given)
    Create(CreateArgs),
    /// List volumes
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show volumes' details as JSON
    Inspect(NamesArgs),
    /// Remove volumes (refused while a container uses one)
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove unused anonymous volumes (with -a, every unused volume)
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Set metadata (KEY=VALUE)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The volume's name
    name: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only the names
    #[arg(short, long)]
    quiet: bool,
    /// Format the output with a Go template (`{{.Name}}`, `{{json .}}`)
    #[arg(long)]
    format: Option<String>,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Accepted for Docker's scripts (a volume in use is still refused)
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Every unused volume, named ones too
    #[arg(short, long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

pub fn run(ctx: &Ctx, c: VolumeCommand) -> Result<i32> {
    match c {
        VolumeCommand::Create(a) => create(ctx, a),
        VolumeCommand::Ls(a) => ls(ctx, a),
        VolumeCommand::Inspect(a) => inspect(ctx, a),
        VolumeCommand::Rm(a) => rm(ctx, a),
        VolumeCommand::Prune(a) => prune(ctx, a),
    }
}

fn create(ctx: &Ctx, a: CreateArgs) -> Result<i32> {
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_string(), v.to_string());
            }
            _ => anyhow::bail!("invalid --label {l:?}: want KEY=VALUE"),
        }
    }
    let store = ctx.store()?;
    let v = volume::create(&store, a.name.as_deref(), labels)?;
    println!("{}", v.name);
    Ok(0)
}

fn json(v: &volume::Volume) -> serde_json::Value {
    serde_json::json!({
        "CreatedAt": timefmt::rfc3339(v.created),
        "Driver": "local",
        "Labels": v.labels,
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": null,
        "Scope": "local",
    })
}

fn ls(ctx: &Ctx, a: LsArgs) -> Result<i32> {
    let store = ctx.store()?;
    let vols = volume::list(&store)?;
    if a.quiet {
        for v in &vols {
            println!("{}", v.name);
        }
        return Ok(0);
    }
    if let Some(f) = &a.format {
        let items: Vec<serde_json::Value> = vols.iter().map(json).collect();
        let headers = serde_json::json!({"Name": "VOLUME NAME", "Driver": "DRIVER", "Mountpoint": "MOUNTPOINT", "Scope": "SCOPE"});
        print!("{}", super::ui::format::render(f, &items, &headers)?);
        return Ok(0);
    }
    let mut rows = vec![vec!["DRIVER".to_string(), "VOLUME NAME".to_string()]];
    for v in &vols {
        rows.push(vec!["local".into(), v.name.clone()]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

fn inspect(ctx: &Ctx, a: NamesArgs) -> Result<i32> {
    let store = ctx.store()?;
    let mut out = Vec::new();
    let mut code = 0;
    for n in &a.names {
        match volume::get(&store, n)? {
            Some(v) => out.push(json(&v)),
            None => {
                eprintln!("kiln: error: no such volume: {n}");
                code = 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

fn rm(ctx: &Ctx, a: RmArgs) -> Result<i32> {
    let _ = a.force;
    let store = ctx.store()?;
    let mut code = 0;
    for n in &a.names {
        match volume::remove(&store, n) {
            Ok(()) => println!("{n}"),
            Err(e) => {
                super::ui::report(&anyhow::Error::new(e));
                code = 1;
            }
        }
    }
    Ok(code)
}

fn prune(ctx: &Ctx, a: PruneArgs) -> Result<i32> {
    let warning = if a.all {
        "This will remove all local volumes not used by at least one container."
    } else {
        "This will remove anonymous local volumes not used by at least one container."
    };
    if !super::ui::confirm(a.force, warning)? {
        return Ok(1);
    }
    let store = ctx.store()?;
    let (names, bytes) = volume::prune(&store, a.all)?;
    if !names.is_empty() {
        println!("Deleted Volumes:");
        for n in &names {
            println!("{n}");
        }
        println!();
    }
    println!("Total reclaimed space: {}", timefmt::human_size(bytes));
    Ok(0)
}
