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
    /// Build images before starting containers (else only the missing ones are built)
    #[arg(long)]
    build: bool,
    /// Run N containers of SERVICE (over deploy.replicas)
    #[arg(long = "scale", value_name = "SERVICE=N")]
    scale: Vec<String>,
    /// How long to wait for a dependency to become healthy, in seconds
    #[arg(long = "wait-timeout", value_name = "SECONDS")]
    wait_timeout: Option<u64>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Do not use the build cache
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Always pull the base images
    #[arg(long)]
    pull: bool,
    /// Only these services (default: every service with a build section)
    services: Vec<String>,
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
    for (name, s) in &l.project.services {
        let image = service::image_name(&l.project, name, s);
        if s.build.is_some() && (a.build || crate::image::resolve(&store, &image).is_err()) {
            build_one(ctx, l, name, false, false)?;
        }
    }
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

pub fn build(ctx: &Ctx, l: &Loaded, a: BuildArgs) -> Result<i32> {
    for svc in &a.services {
        if !l.project.services.contains_key(svc) {
            anyhow::bail!("no such service: {svc}");
        }
    }
    for (name, s) in &l.project.services {
        if s.build.is_some() && (a.services.is_empty() || a.services.contains(name)) {
            build_one(ctx, l, name, a.no_cache, a.pull)?;
        }
    }
    Ok(0)
}

/// `kiln build` of one service's build section, tagged with the service's image name.
fn build_one(ctx: &Ctx, l: &Loaded, svc: &str, no_cache: bool, pull: bool) -> Result<()> {
    let s = &l.project.services[svc];
    let b = s.build.as_ref().expect("a service with a build section");
    let mut args = vec![
        "build".to_string(),
        "-t".into(),
        service::image_name(&l.project, svc, s),
    ];
    if let Some(f) = &b.dockerfile {
        args.extend(["-f".into(), b.context.join(f).display().to_string()]);
    }
    for (k, v) in &b.args {
        args.push("--build-arg".into());
        // No value: the environment's, as docker compose takes it.
        args.push(match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        });
    }
    if let Some(t) = &b.target {
        args.extend(["--target".into(), t.clone()]);
    }
    for c in &b.cache_from {
        // A bare reference is a registry cache, as docker compose reads it.
        let spec = if c.contains("type=") {
            c.clone()
        } else {
            format!("type=registry,ref={c}")
        };
        args.extend(["--cache-from".into(), spec]);
    }
    if no_cache {
        args.push("--no-cache".into());
    }
    if pull {
        args.push("--pull".into());
    }
    args.push(b.context.display().to_string());
    eprintln!(" Service {svc}  Building");
    let code = super::super::run_args(ctx, &args)?;
    if code != 0 {
        anyhow::bail!("service {svc}: the build failed");
    }
    Ok(())
}
