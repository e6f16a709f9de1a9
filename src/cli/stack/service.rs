//! `kiln service ls|ps|logs|scale|update|inspect|rm`.

use super::super::Ctx;
use super::{converge, services_table, tasks_table};
use crate::stack;
use anyhow::Result;
use clap::{Args, Subcommand};
use kiln_store::Store;

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// List services
    #[command(alias = "list")]
    Ls(LsArgs),
    /// List the tasks (replicas) of services
    Ps(PsArgs),
    /// Show the output of a service's replicas, each line after its task's name
    Logs(LogsArgs),
    /// Set the number of replicas of services (NAME=N ...)
    Scale(ScaleArgs),
    /// Change a service's image or replica count (a new image rolls out by its update_config)
    Update(UpdateArgs),
    /// Show services' details as JSON
    Inspect(NamesArgs),
    /// Remove services (their replicas stop at once)
    #[command(alias = "remove")]
    Rm(NamesArgs),
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only the IDs
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Only the task IDs
    #[arg(short, long)]
    quiet: bool,
    /// Full IDs
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    #[arg(required = true)]
    services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow the output
    #[arg(short, long)]
    follow: bool,
    service: String,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Exit at once instead of waiting for the services to converge
    #[arg(short, long)]
    detach: bool,
    #[arg(required = true, value_name = "SERVICE=REPLICAS")]
    scales: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// A new image
    #[arg(long)]
    image: Option<String>,
    /// A new number of replicas
    #[arg(long)]
    replicas: Option<u32>,
    /// Exit at once instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    service: String,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run_service(ctx: &Ctx, c: ServiceCommand) -> Result<i32> {
    let store = ctx.store()?;
    match c {
        ServiceCommand::Ls(a) => services_table(&store, &stack::list(&store)?, a.quiet),
        ServiceCommand::Ps(a) => {
            let mut ts = Vec::new();
            for s in &a.services {
                let r = stack::resolve(&store, s)?;
                ts.extend(stack::tasks(&store, &r.name)?);
            }
            tasks_table(&store, &ts, a.quiet, a.no_trunc)
        }
        ServiceCommand::Logs(a) => logs(&store, a),
        ServiceCommand::Scale(a) => {
            let mut wanted = Vec::new();
            for s in &a.scales {
                let (name, n) = s
                    .split_once('=')
                    .and_then(|(k, v)| Some((k, v.parse::<u32>().ok()?)))
                    .ok_or_else(|| {
                        anyhow::anyhow!("invalid scale specifier {s:?}: want SERVICE=REPLICAS")
                    })?;
                wanted.push((stack::resolve(&store, name)?.name, n));
            }
            let mut code = 0;
            for (name, n) in &wanted {
                stack::scale(&store, name, *n)?;
                println!("{name} scaled to {n}");
            }
            if !a.detach {
                for (name, _) in &wanted {
                    code = code.max(converge(&store, name, false)?);
                }
            }
            Ok(code)
        }
        ServiceCommand::Update(a) => {
            if let Some(i) = &a.image {
                super::super::ui::pull::ensure_image(&store, i, false)?;
            }
            let r = stack::update(&store, &a.service, a.image.as_deref(), a.replicas)?;
            println!("{}", r.name);
            if a.detach {
                return Ok(0);
            }
            converge(&store, &r.name, r.update_state == "updating")
        }
        ServiceCommand::Inspect(a) => {
            let mut out = Vec::new();
            for n in &a.names {
                out.push(inspect(&store, &stack::resolve(&store, n)?)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        ServiceCommand::Rm(a) => {
            let mut code = 0;
            for n in &a.names {
                match stack::resolve(&store, n) {
                    Ok(r) => {
                        stack::remove(&store, &r.name)?;
                        println!("{n}");
                    }
                    Err(e) => {
                        super::super::ui::report(&anyhow::Error::new(e));
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

/// Every replica's output, old tasks' too, each line after `name.slot.id@node`; `-f` follows,
/// picking up replicas as they come.
fn logs(store: &Store, a: LogsArgs) -> Result<i32> {
    use std::io::Write;
    let r = stack::resolve(store, &a.service)?;
    let node = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tails: Vec<(String, String, crate::container::LogTail)> = Vec::new();
    loop {
        for t in stack::tasks(store, &r.name)? {
            if !tails.iter().any(|x| x.0 == t.row.record.id) {
                let prefix = format!(
                    "{}.{}.{}@{node}",
                    r.name,
                    t.slot,
                    &t.id[..12.min(t.id.len())]
                );
                tails.push((
                    t.row.record.id.clone(),
                    prefix,
                    crate::container::LogTail::new(store, &t.row.record.id),
                ));
            }
        }
        let width = tails.iter().map(|t| t.1.len()).max().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        for (_, prefix, tail) in &mut tails {
            for line in tail.read()? {
                let text = line.log.strip_suffix('\n').unwrap_or(&line.log);
                writeln!(out, "{prefix:<width$}    | {text}")?;
            }
        }
        out.flush()?;
        drop(out);
        if !a.follow || stack::load(store, &r.name)?.is_none() {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Docker's service object, as far as kiln has its fields.
fn inspect(store: &Store, r: &stack::Record) -> Result<serde_json::Value> {
    let spec = |sp: &stack::Spec| {
        let s = &sp.project.services[&r.key];
        let d = &s.deploy;
        let nanos = |v: &Option<String>| {
            v.as_deref()
                .and_then(crate::frontend::instructions::parse_go_duration)
                .unwrap_or(0)
        };
        serde_json::json!({
            "Name": r.name,
            "Labels": { stack::NAMESPACE: r.stack },
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": s.image,
                    "Command": s.entrypoint,
                    "Args": s.command,
                    "Env": s.environment.iter().map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    }).collect::<Vec<_>>(),
                },
                "Resources": { "Limits": {
                    "NanoCPUs": d.cpus.map(|c| (c * 1e9) as u64),
                    "MemoryBytes": d.memory,
                }},
                "RestartPolicy": {
                    "Condition": d.restart_condition.as_deref().unwrap_or("any"),
                    "Delay": d.restart_delay.as_ref().map_or(5_000_000_000, |_| nanos(&d.restart_delay)),
                    "MaxAttempts": d.restart_max_attempts.unwrap_or(0),
                },
                "Placement": { "Constraints": d.placement_constraints },
                "Networks": s.networks.keys().map(|k| serde_json::json!({
                    "Target": crate::service::network_name(&sp.project, k),
                    "Aliases": [r.key.clone()],
                })).collect::<Vec<_>>(),
            },
            "Mode": if d.mode.as_deref() == Some("global") {
                serde_json::json!({ "Global": {} })
            } else {
                serde_json::json!({ "Replicated": { "Replicas": sp.replicas } })
            },
            "UpdateConfig": {
                "Parallelism": d.update_parallelism.unwrap_or(1),
                "Delay": nanos(&d.update_delay),
                "FailureAction": d.update_failure_action.as_deref().unwrap_or("pause"),
                "Order": d.update_order.as_deref().unwrap_or("stop-first"),
            },
            "EndpointSpec": { "Mode": "vip", "Ports": r.ports.iter().map(|p| serde_json::json!({
                "Protocol": p.proto,
                "TargetPort": p.container_port,
                "PublishedPort": p.host_port,
                "PublishMode": "ingress",
            })).collect::<Vec<_>>() },
        })
    };
    let (running, desired) = stack::progress(store, r)?;
    Ok(serde_json::json!({
        "ID": r.id,
        "CreatedAt": crate::timefmt::rfc3339(r.created),
        "UpdatedAt": crate::timefmt::rfc3339(r.updated),
        "Spec": spec(&r.spec),
        "PreviousSpec": r.previous.as_ref().map(spec),
        "UpdateStatus": if r.update_state.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!({ "State": r.update_state, "Message": r.update_message })
        },
        "ServiceStatus": { "RunningTasks": running, "DesiredTasks": desired },
    }))
}
