//! `kiln ps`: Docker's columns, `--filter`, `--format`, `-q`.

#[allow(unused_imports)]
use super::*;

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default: running ones)
    #[arg(short, long)]
    all: bool,
    /// Only IDs
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate IDs and commands
    #[arg(long)]
    no_trunc: bool,
    /// Show the N most recently created containers (all states)
    #[arg(short = 'n', long = "last", value_name = "N")]
    last: Option<usize>,
    /// Show the most recently created container (all states)
    #[arg(short = 'l', long)]
    latest: bool,
    /// Filter: status=created|running|exited, name=PART, ancestor=IMAGE (repeatable)
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// Format the output with a Go template (`{{.ID}}\t{{.Names}}`, `table {{.Names}}`)
    #[arg(long)]
    format: Option<String>,
}

/// `ps --filter`: values of one key are alternatives, different keys all must hold (Docker).
pub(super) struct PsFilter {
    status: Vec<String>,
    name: Vec<String>,
    ancestor: Vec<(String, Option<kiln_store::Digest>)>,
}

impl PsFilter {
    fn parse(store: &kiln_store::Store, list: &[String]) -> Result<PsFilter> {
        let mut f = PsFilter {
            status: vec![],
            name: vec![],
            ancestor: vec![],
        };
        for item in list {
            let Some((k, v)) = item.split_once('=') else {
                anyhow::bail!("bad format of filter (expected name=value): {item:?}");
            };
            match k {
                "status" => {
                    if ![
                        "created",
                        "restarting",
                        "running",
                        "removing",
                        "paused",
                        "exited",
                        "dead",
                    ]
                    .contains(&v)
                    {
                        anyhow::bail!(
                            "invalid filter 'status={v}': use created, running or exited"
                        );
                    }
                    f.status.push(v.to_string())
                }
                "name" => f.name.push(v.to_string()),
                "ancestor" => {
                    let m = crate::image::resolve(store, v)
                        .ok()
                        .map(|r| r.image.manifest.digest);
                    f.ancestor.push((v.to_string(), m));
                }
                other => {
                    anyhow::bail!("invalid filter {other:?}: kiln knows status, name and ancestor")
                }
            }
        }
        Ok(f)
    }

    fn keeps(&self, c: &kiln_store::ContainerRow) -> bool {
        (self.status.is_empty() || self.status.iter().any(|s| s == c.record.state.as_str()))
            && (self.name.is_empty()
                || self.name.iter().any(|n| c.record.name.contains(n.as_str())))
            && (self.ancestor.is_empty()
                || self
                    .ancestor
                    .iter()
                    .any(|(name, m)| *m == Some(c.record.image) || c.record.image_ref == *name))
    }
}

pub(super) fn quote_command(cmd: &[String]) -> String {
    format!("\"{}\"", cmd.join(" "))
}

pub fn ps(ctx: &Ctx, a: PsArgs) -> Result<i32> {
    let store = ctx.store()?;
    let now = kiln_store::store::now();
    let mut rows = vec![vec![
        "CONTAINER ID".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
        "PORTS".into(),
        "NAMES".into(),
    ]];
    let mut ids = Vec::new();
    let mut items = Vec::new();
    let filter = PsFilter::parse(&store, &a.filter)?;
    // -n/-l and a status filter look at every container, as Docker.
    let last = if a.latest { Some(1) } else { a.last };
    let all = a.all || last.is_some() || !filter.status.is_empty();
    // Newest first, as the store lists them.
    let mut list = store.containers().list()?;
    if let Some(n) = last {
        list.truncate(n);
    }
    for c in list {
        let c = container::refresh(&store, c)?;
        if (!all && c.record.state != ContainerState::Running) || !filter.keeps(&c) {
            continue;
        }
        let id = if a.no_trunc {
            c.record.id.clone()
        } else {
            c.record.id[..12].to_string()
        };
        ids.push(id.clone());
        let spec = container::spec_of(&c).ok();
        let mut command = spec
            .as_ref()
            .map(|s| quote_command(&s.command))
            .unwrap_or_default();
        if !a.no_trunc && command.chars().count() > 22 {
            command = format!("{}…\"", command.chars().take(20).collect::<String>());
        }
        let ports = if c.record.state == ContainerState::Running {
            spec.map(|s| {
                s.ports
                    .iter()
                    .map(PortSpec::display)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
        } else {
            String::new()
        };
        items.push(serde_json::json!({
            "ID": id,
            "Image": c.record.image_ref,
            "Command": command,
            "CreatedAt": timefmt::rfc3339(c.record.created),
            "RunningFor": timefmt::ago(c.record.created, now),
            "Status": container::status(&store, &c, now),
            "State": c.record.state.as_str(),
            "Ports": ports,
            "Names": c.record.name,
            "Labels": "",
            "Size": "",
        }));
        rows.push(vec![
            id,
            c.record.image_ref.clone(),
            command,
            timefmt::ago(c.record.created, now),
            container::status(&store, &c, now),
            ports,
            c.record.name.clone(),
        ]);
    }
    if let (Some(f), false) = (&a.format, a.quiet) {
        let headers = serde_json::json!({
            "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
            "RunningFor": "CREATED", "Status": "STATUS", "State": "STATE", "Ports": "PORTS",
            "Names": "NAMES", "Labels": "LABELS", "Size": "SIZE",
        });
        print!("{}", crate::cli::ui::format::render(f, &items, &headers)?);
        return Ok(0);
    }
    if a.quiet {
        for id in ids {
            println!("{id}");
        }
    } else {
        print!("{}", table(&rows));
    }
    Ok(0)
}
