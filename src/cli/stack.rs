//! `kiln stack deploy|ls|ps|services|rm|convert` and `kiln service ls|ps|logs|scale|update|
//! inspect|rm`: swarm mode's commands, on one node (`crate::stack`), with Docker's columns.

use super::ui::table;
use super::Ctx;
use crate::stack::{self, Record, Task};
use crate::timefmt;
use anyhow::Result;
use clap::{Args, Subcommand};
use kiln_store::{ContainerState, Store};
use std::path::PathBuf;
use std::time::Duration;

mod service;
pub use service::{run_service, ServiceCommand};

#[derive(Subcommand, Debug)]
pub enum StackCommand {
    /// Deploy a new stack or update an existing one, from compose files
    #[command(alias = "up")]
    Deploy(DeployArgs),
    /// List stacks
    #[command(alias = "list")]
    Ls,
    /// List the tasks (replicas) of a stack
    Ps(PsArgs),
    /// List the services of a stack
    Services(ServicesArgs),
    /// Remove stacks: their services, then their networks (volumes stay)
    #[command(aliases = ["remove", "down"])]
    Rm(RmArgs),
    /// Write the stack as Kubernetes manifests
    Convert(ConvertArgs),
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Compose files (more than one are merged in order)
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "FILE",
        required = true
    )]
    files: Vec<PathBuf>,
    /// Remove services of the stack that are no longer in the files
    #[arg(long)]
    prune: bool,
    /// Exit at once instead of waiting for the services to converge
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    detach: bool,
    name: String,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Only the task IDs
    #[arg(short, long)]
    quiet: bool,
    /// Full IDs
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    name: String,
}

#[derive(Args, Debug)]
pub struct ServicesArgs {
    /// Only the service IDs
    #[arg(short, long)]
    quiet: bool,
    name: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// What to write: kubernetes
    #[arg(long, default_value = "kubernetes")]
    to: String,
    /// Compose files
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "FILE",
        required = true
    )]
    files: Vec<PathBuf>,
    /// Write here instead of standard output
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The stack's name (the Kubernetes namespace; default: the project name)
    name: Option<String>,
}

pub fn run(ctx: &Ctx, c: StackCommand) -> Result<i32> {
    if let StackCommand::Convert(a) = c {
        return convert(a);
    }
    let store = ctx.store()?;
    match c {
        StackCommand::Deploy(a) => deploy(&store, a),
        StackCommand::Ls => {
            let mut rows = vec![vec!["NAME".to_string(), "SERVICES".to_string()]];
            let mut stacks: Vec<(String, usize)> = Vec::new();
            for r in stack::list(&store)? {
                match stacks.iter_mut().find(|s| s.0 == r.stack) {
                    Some(s) => s.1 += 1,
                    None => stacks.push((r.stack.clone(), 1)),
                }
            }
            stacks.sort();
            rows.extend(stacks.into_iter().map(|(n, c)| vec![n, c.to_string()]));
            print!("{}", table(&rows));
            Ok(0)
        }
        StackCommand::Ps(a) => {
            let ts = stack::stack_tasks(&store, &a.name)?;
            if ts.is_empty() && !stack::list(&store)?.iter().any(|r| r.stack == a.name) {
                anyhow::bail!("nothing found in stack: {}", a.name);
            }
            tasks_table(&store, &ts, a.quiet, a.no_trunc)
        }
        StackCommand::Services(a) => {
            let rs: Vec<Record> = stack::list(&store)?
                .into_iter()
                .filter(|r| r.stack == a.name)
                .collect();
            if rs.is_empty() {
                eprintln!("Nothing found in stack: {}", a.name);
                return Ok(0);
            }
            services_table(&store, &rs, a.quiet)
        }
        StackCommand::Rm(a) => {
            let mut code = 0;
            for name in &a.names {
                let found = stack::remove_stack(&store, name, &mut |(kind, n, _)| {
                    println!("Removing {} {n}", kind.to_lowercase())
                })?;
                if !found {
                    eprintln!("Nothing found in stack: {name}");
                    code = 1;
                }
            }
            Ok(code)
        }
        StackCommand::Convert(_) => unreachable!("handled above"),
    }
}

fn deploy(store: &Store, a: DeployArgs) -> Result<i32> {
    let l = super::ui::load_compose(&a.files, Some(&a.name), &[])?;
    for (key, s) in &l.project.services {
        if s.build.is_some() {
            eprintln!("Ignoring unsupported options: build (service {key})");
        }
        if s.restart.is_some() {
            eprintln!("Ignoring unsupported options: restart (service {key}: deploy.restart_policy applies)");
        }
        if let Some(image) = &s.image {
            super::ui::pull::ensure_image(store, image, false)?;
        }
    }
    stack::deploy(
        store,
        &l.project,
        a.prune,
        &mut |(kind, name, what)| match (kind, what) {
            ("Network", _) => println!("Creating network {name}"),
            ("Service", "Creating") => println!("Creating service {name}"),
            ("Service", "Updating") => println!("Updating service {name}"),
            ("Service", _) => println!("Removing service {name}"),
            _ => {}
        },
    )?;
    if a.detach {
        return Ok(0);
    }
    let mut code = 0;
    for r in stack::list(store)?
        .into_iter()
        .filter(|r| r.stack == a.name)
    {
        code = code.max(converge(store, &r.name, r.update_state == "updating")?);
    }
    Ok(code)
}

/// Waits for a service to converge, as `docker service update` does without `-d`; with
/// `updating` (the command started an update), 1 when it paused or rolled back.
pub(crate) fn converge(store: &Store, name: &str, updating: bool) -> Result<i32> {
    let r = stack::wait_converged(store, name, Duration::from_secs(300), &mut |n, of| {
        eprintln!("{name}: {n}/{of} replicas running");
    })?;
    match r.update_state.as_str() {
        "paused" | "rollback_completed" if updating => {
            eprintln!("kiln: service {name}: {}", r.update_message);
            Ok(1)
        }
        _ => {
            eprintln!("verify: Service {name} converged");
            Ok(0)
        }
    }
}

/// An image as Docker's lists show it: with its tag.
fn image_shown(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// `*:4000->80/tcp, *:8080->8080/tcp`.
fn ports_shown(r: &Record) -> String {
    r.ports
        .iter()
        .map(|p| format!("*:{}->{}/{}", p.host_port, p.container_port, p.proto))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ID NAME MODE REPLICAS IMAGE PORTS`.
pub(crate) fn services_table(store: &Store, rs: &[Record], quiet: bool) -> Result<i32> {
    if quiet {
        for r in rs {
            println!("{}", &r.id[..12]);
        }
        return Ok(0);
    }
    let mut rows = vec![["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
        .map(String::from)
        .to_vec()];
    for r in rs {
        let (running, desired) = stack::progress(store, r)?;
        rows.push(vec![
            r.id[..12].to_string(),
            r.name.clone(),
            r.mode().to_string(),
            format!("{running}/{desired}"),
            image_shown(&r.image()),
            ports_shown(r),
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

/// `ID NAME IMAGE NODE DESIRED STATE CURRENT STATE ERROR PORTS`: each slot's current task,
/// then its history (`\_ name.slot`), newest first.
pub(crate) fn tasks_table(store: &Store, ts: &[Task], quiet: bool, no_trunc: bool) -> Result<i32> {
    let node = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let now = kiln_store::store::now();
    // Newest first within each slot (`tasks` lists each service's oldest first).
    let mut order: Vec<&Task> = ts.iter().rev().collect();
    order.sort_by(|a, b| (&a.service, a.slot).cmp(&(&b.service, b.slot)));
    let mut rows = vec![[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]
    .map(String::from)
    .to_vec()];
    let mut seen: Vec<(&str, u32)> = Vec::new();
    // Per service, read once: its replica count and the tasks its supervisor stopped.
    let mut services: Vec<(&str, u32, Vec<String>)> = Vec::new();
    for t in order {
        let svc = t.service.as_str();
        let id = if no_trunc {
            t.id.clone()
        } else {
            t.id.chars().take(12).collect()
        };
        if quiet {
            println!("{id}");
            continue;
        }
        let first = !seen.contains(&(svc, t.slot));
        seen.push((svc, t.slot));
        if !services.iter().any(|x| x.0 == svc) {
            let replicas = stack::load(store, svc)?.map_or(0, |r| r.spec.replicas);
            services.push((svc, replicas, stack::status(store, svc).retired));
        }
        let (_, replicas, retired) = services.iter().find(|x| x.0 == svc).expect("just added");
        let stopped_by_service = retired.contains(&t.row.record.id);
        let desired = if first && t.slot <= *replicas {
            "Running"
        } else {
            "Shutdown"
        };
        let r = &t.row;
        let (state, error) = match r.record.state {
            ContainerState::Running => (
                format!("Running {}", timefmt::ago(r.started.unwrap_or(now), now)),
                String::new(),
            ),
            ContainerState::Created => ("Starting".to_string(), String::new()),
            _ => {
                let when = timefmt::ago(r.finished.unwrap_or(now), now);
                match r.exit_code {
                    Some(0) if desired == "Running" => (format!("Complete {when}"), String::new()),
                    _ if stopped_by_service && !t.unhealthy => {
                        (format!("Shutdown {when}"), String::new())
                    }
                    c => (
                        format!("Failed {when}"),
                        format!(
                            "\"task: non-zero exit ({})\"",
                            c.map_or("unknown".into(), |c| c.to_string())
                        ),
                    ),
                }
            }
        };
        rows.push(vec![
            id,
            if first {
                format!("{svc}.{}", t.slot)
            } else {
                format!(" \\_ {svc}.{}", t.slot)
            },
            image_shown(&r.record.image_ref),
            node.clone(),
            desired.to_string(),
            state,
            error,
            String::new(),
        ]);
    }
    if !quiet {
        print!("{}", table(&rows));
    }
    Ok(0)
}

fn convert(a: ConvertArgs) -> Result<i32> {
    if a.to != "kubernetes" {
        anyhow::bail!("invalid --to {:?}: kiln converts to kubernetes", a.to);
    }
    let l = super::ui::load_compose(&a.files, a.name.as_deref(), &[])?;
    let (yaml, warnings) = stack::kube::convert(&l.project)?;
    for w in warnings {
        eprintln!("kiln: warning: {w}");
    }
    match a.output {
        Some(path) => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &yaml)?;
            std::fs::rename(&tmp, &path)?;
        }
        None => print!("{yaml}"),
    }
    Ok(0)
}
