//! `kiln network create|ls|inspect|rm|prune|connect|disconnect`: Docker's network commands,
//! for bridge networks (netavark) on this machine.

use super::ui::table;
use super::Ctx;
use crate::network::{self, NetworkRecord};
use crate::timefmt;
use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a bridge network (its containers resolve each other's names)
    Create(CreateArgs),
    /// List networks
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show networks' details as JSON
    Inspect(NamesArgs),
    /// Remove networks (refused while a container is attached)
    #[command(alias = "remove")]
    Rm(NamesArgs),
    /// Remove every network no container is attached to
    Prune(PruneArgs),
    /// Connect a container to a network
    Connect(ConnectArgs),
    /// Disconnect a container from a network
    Disconnect(DisconnectArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Subnet in CIDR form (default: the first free one of 172.18-31.0.0/16, 192.168.0.0/16)
    #[arg(long)]
    subnet: Option<String>,
    /// Gateway address (default: the subnet's first address)
    #[arg(long)]
    gateway: Option<std::net::Ipv4Addr>,
    /// No route out of the network
    #[arg(long)]
    internal: bool,
    /// Set metadata (KEY=VALUE)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Driver (only bridge)
    #[arg(short, long, default_value = "bridge")]
    driver: String,
    name: String,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only the IDs
    #[arg(short, long)]
    quiet: bool,
    /// Show full IDs
    #[arg(long = "no-trunc")]
    no_trunc: bool,
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
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// Add a name for the container on this network
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// IPv4 address on this network
    #[arg(long)]
    ip: Option<std::net::Ipv4Addr>,
    network: String,
    container: String,
}

#[derive(Args, Debug)]
pub struct DisconnectArgs {
    /// Accepted for Docker's scripts
    #[arg(short, long)]
    force: bool,
    network: String,
    container: String,
}

pub fn run(ctx: &Ctx, c: NetworkCommand) -> Result<i32> {
    let store = ctx.store()?;
    match c {
        NetworkCommand::Create(a) => {
            if a.driver != "bridge" {
                anyhow::bail!(
                    "network driver {:?} is not supported: kiln has bridge networks",
                    a.driver
                );
            }
            for l in &a.labels {
                if l.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                    anyhow::bail!("invalid --label {l:?}: want KEY=VALUE");
                }
            }
            let n = network::create(
                &store,
                &network::CreateOptions {
                    name: a.name,
                    subnet: a.subnet,
                    gateway: a.gateway,
                    internal: a.internal,
                    labels: a.labels,
                },
            )?;
            println!("{}", n.id);
            Ok(0)
        }
        NetworkCommand::Ls(a) => ls(&store, a),
        NetworkCommand::Inspect(a) => {
            let mut out = Vec::new();
            let mut code = 0;
            for n in &a.names {
                match network::resolve(&store, n) {
                    Ok(net) => out.push(inspect_json(&store, &net)?),
                    Err(e) => {
                        super::ui::report(&anyhow::Error::new(e));
                        code = 1;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(code)
        }
        NetworkCommand::Rm(a) => {
            let mut code = 0;
            for n in &a.names {
                match network::remove(&store, n) {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        super::ui::report(&anyhow::Error::new(e));
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        NetworkCommand::Prune(a) => {
            if !super::ui::confirm(
                a.force,
                "This will remove all custom networks not used by at least one container.",
            )? {
                return Ok(1);
            }
            let gone = network::prune(&store)?;
            if !gone.is_empty() {
                println!("Deleted Networks:");
                for n in gone {
                    println!("{n}");
                }
            }
            Ok(0)
        }
        NetworkCommand::Connect(a) => {
            let net = network::resolve(&store, &a.network)?;
            let row = crate::container::resolve(&store, &a.container)?;
            crate::container::connect(&store, &row, &net, &a.aliases, a.ip)?;
            Ok(0)
        }
        NetworkCommand::Disconnect(a) => {
            let _ = a.force;
            let net = network::resolve(&store, &a.network)?;
            let row = crate::container::resolve(&store, &a.container)?;
            crate::container::disconnect(&store, &row, &net)?;
            Ok(0)
        }
    }
}

fn ls(store: &kiln_store::Store, a: LsArgs) -> Result<i32> {
    // The default network is listed from the start, as Docker's.
    network::default_network(store)?;
    let nets = store.networks().list()?;
    let id = |n: &NetworkRecord| {
        if a.no_trunc {
            n.id.clone()
        } else {
            n.id[..12].to_string()
        }
    };
    if a.quiet {
        for n in &nets {
            println!("{}", id(n));
        }
        return Ok(0);
    }
    if let Some(f) = &a.format {
        let items: Vec<serde_json::Value> = nets
            .iter()
            .map(|n| {
                serde_json::json!({
                    "ID": id(n), "Name": n.name, "Driver": "bridge", "Scope": "local",
                    "Internal": n.internal, "IPv6": false, "Labels": n.labels,
                    "CreatedAt": timefmt::rfc3339(n.created),
                })
            })
            .collect();
        let headers = serde_json::json!({"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE"});
        print!("{}", super::ui::format::render(f, &items, &headers)?);
        return Ok(0);
    }
    let mut rows = vec![vec![
        "NETWORK ID".to_string(),
        "NAME".into(),
        "DRIVER".into(),
        "SCOPE".into(),
    ]];
    for n in &nets {
        rows.push(vec![id(n), n.name.clone(), "bridge".into(), "local".into()]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

/// Docker's `network inspect` shape.
fn inspect_json(store: &kiln_store::Store, n: &NetworkRecord) -> Result<serde_json::Value> {
    let mut containers = serde_json::Map::new();
    let prefix = n.subnet.rsplit_once('/').map_or("", |(_, p)| p);
    for e in store.networks().endpoints_on(&n.id)? {
        let name = store
            .containers()
            .get(&e.container)?
            .map(|r| r.record.name)
            .unwrap_or_default();
        containers.insert(
            e.container.clone(),
            serde_json::json!({"Name": name, "IPv4Address": format!("{}/{prefix}", e.ip), "Aliases": e.aliases}),
        );
    }
    let labels: serde_json::Value =
        serde_json::from_str(&n.labels).unwrap_or(serde_json::json!({}));
    Ok(serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": timefmt::rfc3339(n.created),
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": n.subnet, "Gateway": n.gateway.to_string()}]},
        "Internal": n.internal,
        "Containers": containers,
        "Options": {"com.docker.network.bridge.name": n.bridge},
        "Labels": labels,
        "DNS": n.dns,
    }))
}
