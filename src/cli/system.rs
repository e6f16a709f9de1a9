//! `kiln system`: prune (GC), df (usage by kind), check (verify the store's invariants),
//! restore (restart policies after a reboot), reset (remove everything).

use super::ui::table;
use super::Ctx;
use crate::timefmt::human_size;
use anyhow::Result;
use clap::Subcommand;
use kiln_store::ContainerState;
use kiln_store::GcOptions;

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Remove untagged images and everything nothing uses (blobs, snapshots, crash leftovers)
    Prune {
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
        /// Prune anonymous volumes no container uses too
        #[arg(long)]
        volumes: bool,
    },
    /// Show the store's disk usage by kind
    Df,
    /// Verify the store: every recorded blob present and matching its digest, every record whole
    Check,
    /// Start every container whose restart policy asks for it (what a boot unit calls: kiln has
    /// no daemon, so after a reboot nothing runs until this does)
    Restore,
    /// Remove every container, network, volume, image and cache of the store, then the store
    Reset {
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
    },
    /// Show how kiln runs here: store, snapshotter and why, rootless id map, networking, cgroups
    Info,
    /// Rootless: stop the process that holds kiln's user namespace, so the next command maps the
    /// ids /etc/subuid and /etc/subgid give now (stop running containers first)
    Migrate,
}

pub fn run(ctx: &Ctx, c: SystemCommand) -> Result<i32> {
    match c {
        SystemCommand::Prune { force, volumes } => prune(ctx, force, volumes),
        SystemCommand::Df => df(ctx),
        SystemCommand::Check => check(ctx),
        SystemCommand::Reset { force } => {
            if !super::ui::confirm(
                force,
                &format!(
                    "This will remove the store {} and everything in it:\n  - all containers (running ones are killed)\n  - all networks, the default one too, with their bridges and firewall rules\n  - all volumes\n  - all images and build cache\n",
                    ctx.root.display()
                ),
            )? {
                return Ok(1);
            }
            let store = ctx.store()?;
            crate::stack::reset(&store)?;
            crate::container::reset(store)?;
            Ok(0)
        }
        SystemCommand::Info => info(ctx),
        SystemCommand::Migrate => {
            match crate::rootless::stop_pause()? {
                Some(pid) => eprintln!("stopped kiln's pause process {pid}: the next command makes a new user namespace"),
                None => eprintln!("no pause process runs: nothing to do"),
            }
            Ok(0)
        }
        SystemCommand::Restore => {
            let store = ctx.store()?;
            for name in crate::container::restart::restore(&store)? {
                println!("{name}");
            }
            for name in crate::stack::restore(&store)? {
                println!("{name}");
            }
            Ok(0)
        }
    }
}

fn prune(ctx: &Ctx, force: bool, volumes: bool) -> Result<i32> {
    if !super::ui::confirm(
        force,
        "This will remove:\n  - all networks not used by at least one container\n  - all images without at least one tag and not used by a container\n  - all blobs and snapshots no image uses\n",
    )? {
        return Ok(1);
    }
    let store = ctx.store()?;
    let networks = crate::network::prune(&store)?;
    if !networks.is_empty() {
        println!("Deleted Networks:");
        for n in &networks {
            println!("{n}");
        }
        println!();
    }
    let report = match store.gc(GcOptions {
        prune_dangling: true,
        wait: false,
    })? {
        Some(r) => r,
        None => {
            eprintln!("waiting for builds and imports in progress to finish...");
            store
                .gc(GcOptions {
                    prune_dangling: true,
                    wait: true,
                })?
                .expect("a waiting GC always runs")
        }
    };
    if !report.images_removed.is_empty() {
        println!("Deleted Images:");
        for d in &report.images_removed {
            println!("deleted: {d}");
        }
        println!();
    }
    let mut reclaimed = report.bytes_reclaimed;
    if volumes {
        let (names, bytes) = crate::container::volume::prune(&store, false)?;
        if !names.is_empty() {
            println!("Deleted Volumes:");
            for n in &names {
                println!("{n}");
            }
            println!();
        }
        reclaimed += bytes;
    }
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(0)
}

fn df(ctx: &Ctx) -> Result<i32> {
    let store = ctx.store()?;
    let u = store.usage()?;
    let pct = |part: u64, whole: u64| (part * 100).checked_div(whole).unwrap_or(0);
    let rows = vec![
        vec![
            "TYPE".into(),
            "TOTAL".into(),
            "ACTIVE".into(),
            "SIZE".into(),
            "RECLAIMABLE".into(),
        ],
        vec![
            "Images".into(),
            u.images.to_string(),
            u.images_tagged.to_string(),
            human_size(u.image_bytes),
            format!(
                "{} ({}%)",
                human_size(u.image_reclaimable),
                pct(u.image_reclaimable, u.image_bytes)
            ),
        ],
        {
            // ACTIVE: running now (as Docker); SIZE: their writable layers and logs.
            let (mut running, mut size, mut stopped) = (0, 0u64, 0u64);
            for row in store.containers().list()? {
                let row = crate::container::refresh(&store, row)?;
                let bytes =
                    kiln_store::gc::dir_size(&crate::container::dir(&store, &row.record.id));
                size += bytes;
                if row.record.state == ContainerState::Running {
                    running += 1;
                } else {
                    stopped += bytes;
                }
            }
            vec![
                "Containers".into(),
                u.containers.to_string(),
                running.to_string(),
                human_size(size),
                format!("{} ({}%)", human_size(stopped), pct(stopped, size)),
            ]
        },
        vec![
            "Snapshots".into(),
            u.snapshots.to_string(),
            u.snapshots_live.to_string(),
            human_size(u.snapshot_bytes),
            format!(
                "{} ({}%)",
                human_size(u.snapshot_reclaimable),
                pct(u.snapshot_reclaimable, u.snapshot_bytes)
            ),
        ],
        vec![
            "Leftovers".into(),
            "-".into(),
            "0".into(),
            human_size(u.orphan_bytes),
            format!(
                "{} ({}%)",
                human_size(u.orphan_bytes),
                if u.orphan_bytes > 0 { 100 } else { 0 }
            ),
        ],
    ];
    print!("{}", table(&rows));
    Ok(0)
}

fn check(ctx: &Ctx) -> Result<i32> {
    let store = ctx.store()?;
    let problems = store.verify()?;
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        eprintln!("store {} is consistent", ctx.root.display());
        Ok(0)
    } else {
        eprintln!("store {}: {} problems", ctx.root.display(), problems.len());
        Ok(1)
    }
}

/// `kiln info`: what a bug report needs to know about how kiln runs here.
pub fn info(ctx: &Ctx) -> Result<i32> {
    let facts = crate::rootless::facts(&ctx.root);
    for (k, v) in facts {
        println!("{k}: {v}");
    }
    Ok(0)
}

/// `kiln unshare [COMMAND...]`: runs a command (a shell by default) inside kiln's user and mount
/// namespaces, where the store's files have the ids images gave them (podman unshare).
pub fn unshare(cmd: &[String]) -> Result<i32> {
    let (prog, args) = match cmd.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => (
            std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into()),
            vec![],
        ),
    };
    let status = std::process::Command::new(&prog)
        .args(&args)
        .status()
        .map_err(|e| anyhow::anyhow!("run {prog}: {e}"))?;
    Ok(crate::runtime::exit_code(status))
}
