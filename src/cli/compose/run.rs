//! `kiln compose up|down|ps`: the project's containers, through the service engine.

use super::super::ui::table;
use super::super::Ctx;
use crate::compose::Loaded;
use crate::service;
use anyhow::Result;
use clap::Args;
use std::collections::BTreeMap;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Detached mode: start the containers in the background (the only mode kiln has yet)
    #[arg(short, long)]
    detach: bool,
    /// Run N containers of SERVICE (over deploy.replicas)
    #[arg(long = "scale", value_name = "SERVICE=N")]
    scale: Vec<String>,
    /// How long to wait for a dependency to become healthy, in seconds
    #[arg(long = "wait-timeout", value_name = "SECONDS")]
    wait_timeout: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// Remove the project's named volumes too
    #[arg(short, long)]
    volumes: bool,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show stopped containers too
    #[arg(short, long)]
    all: bool,
    /// Only the IDs
    #[arg(short, long)]
    quiet: bool,
}

fn say(e: service::Event) {
    eprintln!(" {} {}  {}", e.0, e.1, e.2);
}

pub fn up(ctx: &Ctx, l: &Loaded, a: UpArgs) -> Result<i32> {
    if !a.detach {
        anyhow::bail!(
            "kiln compose up runs detached only for now: add -d (then kiln compose logs is kiln logs NAME, kiln compose ps lists them)"
        );
    }
    let mut scale = BTreeMap::new();
    for s in &a.scale {
        let (svc, n) = s
            .split_once('=')
            .and_then(|(k, v)| Some((k, v.parse::<u32>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("invalid --scale {s:?}: want SERVICE=N"))?;
        if !l.project.services.contains_key(svc) {
            anyhow::bail!("invalid --scale {s:?}: no such service: {svc}");
        }
        scale.insert(svc.to_string(), n);
    }
    let store = ctx.store()?;
    let o = service::UpOptions {
        scale,
        wait: a.wait_timeout.map(std::time::Duration::from_secs),
    };
    service::up(&store, &l.project, &o, &mut say)?;
    Ok(0)
}

pub fn down(ctx: &Ctx, l: &Loaded, a: DownArgs) -> Result<i32> {
    let store = ctx.store()?;
    service::down(&store, &l.project, a.volumes, &mut say)?;
    Ok(0)
}

pub fn ps(ctx: &Ctx, l: &Loaded, a: PsArgs) -> Result<i32> {
    let store = ctx.store()?;
    let now = kiln_store::store::now();
    let mut rows = vec![vec![
        "NAME".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "SERVICE".into(),
        "CREATED".into(),
        "STATUS".into(),
        "PORTS".into(),
    ]];
    let mut list = service::containers(&store, &l.project.name)?;
    list.sort_by(|x, y| x.record.name.cmp(&y.record.name));
    for row in list {
        if !a.all && row.record.state != kiln_store::ContainerState::Running {
            continue;
        }
        if a.quiet {
            println!("{}", row.record.id);
            continue;
        }
        let spec = crate::container::spec_of(&row)?;
        let mut cmd = format!("\"{}\"", spec.command.join(" "));
        if cmd.chars().count() > 22 {
            cmd = format!("{}…\"", cmd.chars().take(20).collect::<String>());
        }
        rows.push(vec![
            row.record.name.clone(),
            row.record.image_ref.clone(),
            cmd,
            spec.labels
                .get(service::SERVICE)
                .cloned()
                .unwrap_or_default(),
            crate::timefmt::ago(row.record.created, now),
            crate::container::status(&store, &row, now),
            spec.ports
                .iter()
                .map(|p| p.display())
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    if !a.quiet {
        print!("{}", table(&rows));
    }
    Ok(0)
}
