//! `kiln compose up|down|ps`: the project's containers, through the service engine.

use super::super::ui::table;
use super::super::Ctx;
use crate::compose::Loaded;
use crate::service;
use anyhow::Result;
use clap::Args;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Detached mode: start the containers in the background (else kiln shows their output
    /// until they end, and stops them at Ctrl-C)
    #[arg(short, long)]
    detach: bool,
    /// Build images before starting containers (else only the missing ones are built)
    #[arg(long)]
    build: bool,
    /// Run N containers of SERVICE (over deploy.replicas)
    #[arg(long = "scale", value_name = "SERVICE=N")]
    scale: Vec<String>,
    /// Wait until every container runs, healthy where it has a health check (implies -d)
    #[arg(long)]
    wait: bool,
    /// How long to wait (--wait, and for a dependency to become healthy), in seconds
    #[arg(long = "wait-timeout", value_name = "SECONDS")]
    wait_timeout: Option<u64>,
    /// Remove containers of services no longer in the files
    #[arg(long = "remove-orphans")]
    remove_orphans: bool,
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
pub struct LogsArgs {
    /// Follow the output until the containers end
    #[arg(short, long)]
    follow: bool,
    /// Only these services
    services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it exits
    #[arg(long)]
    rm: bool,
    /// Publish the service's ports too
    #[arg(long = "service-ports")]
    service_ports: bool,
    /// Keep standard input open
    #[arg(short, long)]
    interactive: bool,
    /// Do not start the service's dependencies
    #[arg(long = "no-deps")]
    no_deps: bool,
    service: String,
    /// The command (default: the service's)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// Remove the project's named volumes too
    #[arg(short, long)]
    volumes: bool,
    /// Remove images too: local (those built for services without an image: name) or all
    #[arg(long, value_name = "TYPE")]
    rmi: Option<String>,
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
    // In the foreground Ctrl-C stops the project: taken by a thread, from before anything runs
    // (builds included).
    let interrupted = (!a.detach && !a.wait).then(on_interrupt);
    for (name, s) in &l.project.services {
        let image = service::image_name(&l.project, name, s);
        let missing = crate::image::resolve(&store, &image).is_err();
        if s.build.is_some() && (a.build || missing) {
            build_one(ctx, l, name, false, false)?;
        } else if missing {
            // Pulled before the containers are compared: their hash covers the image's ID.
            eprintln!(" Image {image}  Pulling");
            if super::super::run_args(ctx, &["pull".to_string(), image.clone()])? != 0 {
                anyhow::bail!("service {name}: pull {image} failed");
            }
        }
    }
    let o = service::UpOptions {
        scale,
        wait: a.wait_timeout.map(std::time::Duration::from_secs),
        remove_orphans: a.remove_orphans,
        only: None,
    };
    let mut orphans = Vec::new();
    service::up(&store, &l.project, &o, &mut |e| match e {
        ("Orphan", name, _) => orphans.push(name),
        e => say(e),
    })?;
    if !orphans.is_empty() {
        eprintln!(
            "kiln: warning: found orphan containers ({}) for this project: if you removed or renamed their service in the compose file, run up with --remove-orphans to clean them up",
            orphans.join(", ")
        );
    }
    if a.wait {
        let limit = std::time::Duration::from_secs(a.wait_timeout.unwrap_or(120));
        service::wait_ready(&store, &l.project, limit)?;
    }
    match interrupted {
        None => Ok(0),
        Some(flag) => attach(&store, l, &flag),
    }
}

/// Blocks SIGINT and SIGTERM and takes them on a thread: the first sets the flag, a second
/// ends kiln at once (130).
fn on_interrupt() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let sigs = [libc::SIGINT, libc::SIGTERM];
    if crate::sys::proc::block_signals(&sigs).is_ok() {
        let f = flag.clone();
        std::thread::spawn(move || {
            while crate::sys::proc::wait_signal(&sigs).is_ok() {
                if f.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
            }
        });
    }
    flag
}

/// `up` in the foreground: every container's output after its name until they have all
/// ended, or Ctrl-C stops them (exit 130).
fn attach(store: &kiln_store::Store, l: &Loaded, interrupted: &AtomicBool) -> Result<i32> {
    eprintln!("Attaching to {}", short_names(store, l)?.join(", "));
    let mut follow = Follow::new(store, l, &[], true)?;
    loop {
        follow.print(store)?;
        if interrupted.load(Ordering::SeqCst) {
            eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
            service::stop(store, &l.project, &mut say)?;
            return Ok(130);
        }
        if follow.all_ended {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn short_names(store: &kiln_store::Store, l: &Loaded) -> Result<Vec<String>> {
    let prefix = format!("{}-", l.project.name);
    Ok(service::containers(store, &l.project.name)?
        .iter()
        .map(|r| r.record.name.trim_start_matches(&prefix).to_string())
        .collect())
}

/// The project's containers' logs, followed: `web-1  | line`, and (when `notices`) `web-1
/// exited with code N`.
struct Follow {
    tails: Vec<(String, String, crate::container::LogTail, bool)>,
    width: usize,
    all_ended: bool,
    notices: bool,
}

impl Follow {
    fn new(
        store: &kiln_store::Store,
        l: &Loaded,
        only: &[String],
        notices: bool,
    ) -> Result<Follow> {
        let prefix = format!("{}-", l.project.name);
        let mut rows = service::containers(store, &l.project.name)?;
        rows.retain(|r| !service::is_one_off(r));
        rows.retain(|r| {
            only.is_empty()
                || service::labels(r)
                    .get(service::SERVICE)
                    .is_some_and(|s| only.contains(s))
        });
        rows.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        let tails: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.record.id.clone(),
                    r.record.name.trim_start_matches(&prefix).to_string(),
                    crate::container::LogTail::new(store, &r.record.id),
                    false,
                )
            })
            .collect();
        let width = tails.iter().map(|t| t.1.len()).max().unwrap_or(0);
        Ok(Follow {
            tails,
            width,
            all_ended: false,
            notices,
        })
    }

    /// Prints what came since the last call; notes containers that ended.
    fn print(&mut self, store: &kiln_store::Store) -> Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let mut running = 0;
        for (id, name, tail, ended) in &mut self.tails {
            let state = store.containers().get(id)?;
            for line in tail.read()? {
                let text = line.log.strip_suffix('\n').unwrap_or(&line.log);
                writeln!(out, "{name:<w$}  | {text}", w = self.width)?;
            }
            match state {
                Some(r) if r.record.state == kiln_store::ContainerState::Running => running += 1,
                Some(r) if !*ended => {
                    *ended = true;
                    if self.notices {
                        let code = r.exit_code.map_or("unknown".into(), |c| c.to_string());
                        writeln!(out, "{name} exited with code {code}")?;
                    }
                }
                _ => {}
            }
        }
        out.flush()?;
        self.all_ended = running == 0;
        Ok(())
    }
}

pub fn logs(ctx: &Ctx, l: &Loaded, a: LogsArgs) -> Result<i32> {
    let store = ctx.store()?;
    for s in &a.services {
        if !l.project.services.contains_key(s) {
            anyhow::bail!("no such service: {s}");
        }
    }
    let mut follow = Follow::new(&store, l, &a.services, false)?;
    loop {
        follow.print(&store)?;
        if !a.follow || follow.all_ended {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn stop(ctx: &Ctx, l: &Loaded) -> Result<i32> {
    service::stop(&ctx.store()?, &l.project, &mut say)?;
    Ok(0)
}

pub fn start(ctx: &Ctx, l: &Loaded) -> Result<i32> {
    service::start(&ctx.store()?, &l.project, &mut say)?;
    Ok(0)
}

pub fn down(ctx: &Ctx, l: &Loaded, a: DownArgs) -> Result<i32> {
    let store = ctx.store()?;
    let all = match a.rmi.as_deref() {
        None => None,
        Some("local") => Some(false),
        Some("all") => Some(true),
        Some(t) => anyhow::bail!("invalid --rmi {t:?}: use local or all"),
    };
    // local: the images built for services without an image: name.
    let images: Vec<String> = l
        .project
        .services
        .iter()
        .filter(|(_, s)| all.is_some_and(|all| all || s.image.is_none()))
        .map(|(n, s)| service::image_name(&l.project, n, s))
        .collect();
    service::down(&store, &l.project, a.volumes, &mut say)?;
    for image in images {
        if crate::image::resolve(&store, &image).is_ok() {
            super::super::run_args(ctx, &["rmi".to_string(), image.clone()])?;
            eprintln!(" Image {image}  Removed");
        }
    }
    Ok(0)
}

/// `compose pull`: the images of services that name one (services that build are skipped).
pub fn pull(ctx: &Ctx, l: &Loaded) -> Result<i32> {
    for (name, s) in &l.project.services {
        match (&s.image, &s.build) {
            (Some(image), None) => {
                eprintln!(" {name} Pulling");
                if super::super::run_args(ctx, &["pull".to_string(), image.clone()])? != 0 {
                    anyhow::bail!("service {name}: pull {image} failed");
                }
            }
            _ => eprintln!(" {name} Skipped - No image to be pulled"),
        }
    }
    Ok(0)
}

/// `compose push`: the images of services that build one and name it.
pub fn push(ctx: &Ctx, l: &Loaded) -> Result<i32> {
    for (name, s) in &l.project.services {
        if let (Some(image), Some(_)) = (&s.image, &s.build) {
            eprintln!(" {name} Pushing");
            if super::super::run_args(ctx, &["push".to_string(), image.clone()])? != 0 {
                anyhow::bail!("service {name}: push {image} failed");
            }
        }
    }
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
    // As docker compose ps: one-off containers of `compose run` are not the project's services.
    list.retain(|r| !service::is_one_off(r));
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

/// `compose run`: the service's dependencies up (unless --no-deps), then a one-off container in
/// the foreground; kiln exits with its code.
pub fn run(ctx: &Ctx, l: &Loaded, a: RunArgs) -> Result<i32> {
    let p = &l.project;
    if !p.services.contains_key(&a.service) {
        anyhow::bail!("no such service: {}", a.service);
    }
    let store = ctx.store()?;
    let mut only = if a.no_deps {
        Vec::new()
    } else {
        service::dependencies(p, &a.service)
    };
    only.retain(|d| d != &a.service);
    let s = &p.services[&a.service];
    if s.build.is_some()
        && crate::image::resolve(&store, &service::image_name(p, &a.service, s)).is_err()
    {
        build_one(ctx, l, &a.service, false, false)?;
    }
    // Networks always; the dependencies' containers unless --no-deps.
    let o = service::UpOptions {
        only: Some(only),
        ..Default::default()
    };
    service::up(&store, p, &o, &mut say)?;
    let mut opts = service::one_off(&store, p, &a.service, &a.cmd, a.service_ports)?;
    opts.remove = a.rm;
    opts.interactive = a.interactive;
    let row = crate::container::create(&store, &opts)?;
    let stdin = if a.interactive {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    };
    Ok(crate::container::run_attached(&store, &row, stdin)?)
}
