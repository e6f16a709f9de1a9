//! `kiln stats`: Docker's live table of CPU, memory, network and PIDs per running container.

#[allow(unused_imports)]
use super::*;
use crate::container::stats::{self, Sample};

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print one reading and exit (default: refresh every second)
    #[arg(long = "no-stream")]
    no_stream: bool,
    /// Show stopped containers too (with empty readings)
    #[arg(short, long)]
    all: bool,
    /// Do not truncate IDs
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Format the output with a Go template (`{{.Name}}\t{{.CPUPerc}}`, `{{json .}}`)
    #[arg(long)]
    format: Option<String>,
    /// Containers (default: every running one)
    containers: Vec<String>,
}

fn pick(store: &kiln_store::Store, a: &StatsArgs) -> Result<Vec<kiln_store::ContainerRow>> {
    let mut out = Vec::new();
    if a.containers.is_empty() {
        for c in store.containers().list()? {
            let c = container::refresh(store, c)?;
            if a.all || c.record.state == ContainerState::Running {
                out.push(c);
            }
        }
    } else {
        for n in &a.containers {
            out.push(container::refresh(store, container::resolve(store, n)?)?);
        }
    }
    Ok(out)
}

fn render(
    a: &StatsArgs,
    rows: &[(kiln_store::ContainerRow, Sample, Option<f64>)],
) -> Result<String> {
    let mut items = Vec::new();
    for (c, s, cpu) in rows {
        let running = c.record.state == ContainerState::Running;
        let dash = |v: Option<String>| v.filter(|_| running).unwrap_or_else(|| "--".into());
        let mem = s.mem_usage.map(|u| {
            format!(
                "{} / {}",
                stats::bytes_size(u),
                stats::bytes_size(s.mem_limit)
            )
        });
        let mem_perc = s
            .mem_usage
            .filter(|_| s.mem_limit > 0)
            .map(|u| format!("{:.2}%", u as f64 / s.mem_limit as f64 * 100.0));
        let net = s
            .net
            .map(|(rx, tx)| format!("{} / {}", timefmt::human_size(rx), timefmt::human_size(tx)));
        items.push(serde_json::json!({
            "ID": if a.no_trunc { c.record.id.clone() } else { c.record.id[..12].to_string() },
            "Container": c.record.id[..12].to_string(),
            "Name": c.record.name,
            "CPUPerc": dash(cpu.map(|p| format!("{p:.2}%"))),
            "MemUsage": dash(mem),
            "MemPerc": dash(mem_perc),
            "NetIO": dash(net),
            "BlockIO": "--",
            "PIDs": dash(s.pids.map(|p| p.to_string())),
        }));
    }
    if let Some(f) = &a.format {
        let headers = serde_json::json!({"ID": "CONTAINER ID", "Container": "CONTAINER", "Name": "NAME",
            "CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %",
            "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS"});
        return super::super::ui::format::render(f, &items, &headers);
    }
    let mut t = vec![[
        "CONTAINER ID",
        "NAME",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "BLOCK I/O",
        "PIDS",
    ]
    .map(String::from)
    .to_vec()];
    for i in &items {
        t.push(
            [
                "ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs",
            ]
            .iter()
            .map(|k| i[*k].as_str().unwrap_or_default().to_string())
            .collect(),
        );
    }
    Ok(table(&t))
}

pub fn stats(ctx: &Ctx, a: StatsArgs) -> Result<i32> {
    let store = ctx.store()?;
    let mut before: std::collections::HashMap<String, Sample> = Default::default();
    let mut first = true;
    loop {
        let list = pick(&store, &a)?;
        if first {
            // CPU % needs two readings: the first is taken half a second before the one shown.
            for c in &list {
                before.insert(c.record.id.clone(), stats::sample(c));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            first = false;
        }
        let mut rows = Vec::new();
        for c in list {
            let s = stats::sample(&c);
            let cpu = before
                .get(&c.record.id)
                .and_then(|b| stats::cpu_percent(b, &s));
            before.insert(c.record.id.clone(), s.clone());
            rows.push((c, s, cpu));
        }
        let out = render(&a, &rows)?;
        if a.no_stream {
            print!("{out}");
            return Ok(0);
        }
        // Docker's refresh: clear the screen, the table at the top.
        print!("\x1b[2J\x1b[H{out}");
        std::io::stdout().flush()?;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
