//! Container commands, with Docker's flags and output: run, ps, stop, kill, rm, logs.

use super::ui::table;
use super::{Ctx, Hint};
use crate::container::{self, ports::PortSpec, volume, ContainerError, RunOptions};
use crate::timefmt;
use anyhow::Result;
use clap::Args;
use kiln_store::ContainerState;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

mod ps;
pub use ps::*;
mod stats;
pub use stats::*;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container ID
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits
    #[arg(long)]
    rm: bool,
    /// Assign a name to the container
    #[arg(long)]
    name: Option<String>,
    /// Publish a container's port to the host ([IP:]HOST:CTR[/tcp])
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:CTR")]
    publish: Vec<String>,
    /// Publish every exposed port to a free host port
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Set an environment variable (K=V, or K to copy the host's)
    #[arg(short = 'e', long = "env", value_name = "K[=V]")]
    env: Vec<String>,
    /// Read environment variables from a file
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User (name or UID, optionally :group)
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Overwrite the image's ENTRYPOINT
    #[arg(long)]
    entrypoint: Option<String>,
    /// Container hostname (default: the first 12 digits of its ID)
    #[arg(long)]
    hostname: Option<String>,
    /// Network: bridge (the default network), a user network, host, none, or private
    /// (loopback only; -p through kiln's forwarder, no bridge)
    #[arg(long, alias = "net", default_value = "bridge")]
    network: String,
    /// Add a name for the container on its user network
    #[arg(long = "network-alias", alias = "net-alias", value_name = "NAME")]
    network_alias: Vec<String>,
    /// IPv4 address on a user network
    #[arg(long)]
    ip: Option<std::net::Ipv4Addr>,
    /// Add a line to /etc/hosts (NAME:IP, or NAME:host-gateway)
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// Set a DNS server
    #[arg(long)]
    dns: Vec<String>,
    /// Signal to stop the container (default: the image's STOPSIGNAL, else SIGTERM)
    #[arg(long = "stop-signal")]
    stop_signal: Option<String>,
    /// Seconds to wait for the container to stop before killing it (default 10)
    #[arg(long = "stop-timeout")]
    stop_timeout: Option<u64>,
    /// Keep standard input open
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    tty: bool,
    /// Memory limit (e.g. 256m, 1g)
    #[arg(short = 'm', long = "memory", value_name = "SIZE")]
    memory: Option<String>,
    /// Number of CPUs (a CFS quota, e.g. 1.5)
    #[arg(long)]
    cpus: Option<f64>,
    /// Maximum number of processes (0 or -1: unlimited)
    #[arg(long = "pids-limit", value_name = "N", allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    /// Give the container every capability and device, no seccomp filter, writable /sys
    #[arg(long)]
    privileged: bool,
    /// Add a Linux capability (NET_ADMIN, CAP_SYS_PTRACE, ALL)
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a Linux capability (MKNOD, ALL)
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Add a host device (HOST[:CONTAINER[:rwm]])
    #[arg(long = "device", value_name = "HOST[:CTR[:rwm]]")]
    device: Vec<String>,
    /// Security options: seccomp=unconfined or seccomp=PATH (a Docker-format profile)
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// Mount a volume or a host path (NAME:CTR[:ro], /HOST:CTR[:ro], or CTR for an anonymous volume)
    #[arg(short = 'v', long = "volume", value_name = "[SRC:]CTR[:ro]")]
    volumes: Vec<String>,
    /// Mount: type=bind|volume|tmpfs,source=...,target=...[,readonly]
    #[arg(long = "mount", value_name = "type=...,target=...")]
    mount: Vec<String>,
    /// Mount a tmpfs (PATH[:OPTIONS])
    #[arg(long = "tmpfs", value_name = "PATH[:OPTS]")]
    tmpfs: Vec<String>,
    /// A health check: a shell command run in the container every --health-interval
    #[arg(long = "health-cmd", value_name = "CMD")]
    health_cmd: Option<String>,
    /// Time between health checks (e.g. 30s, 1m; default 30s)
    #[arg(long = "health-interval", value_name = "DURATION")]
    health_interval: Option<String>,
    /// Time a health check may take (default 30s)
    #[arg(long = "health-timeout", value_name = "DURATION")]
    health_timeout: Option<String>,
    /// Time to start before failures count (default 0s)
    #[arg(long = "health-start-period", value_name = "DURATION")]
    health_start_period: Option<String>,
    /// Failures in a row that make the container unhealthy (default 3)
    #[arg(long = "health-retries", value_name = "N")]
    health_retries: Option<u32>,
    /// Run a small init as PID 1 that forwards signals and reaps orphans
    #[arg(long)]
    init: bool,
    /// Set metadata on the container (KEY=VALUE)
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Disable the image's HEALTHCHECK
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
    /// Restart policy: no, on-failure[:N], always, unless-stopped
    #[arg(long, default_value = "no", value_name = "POLICY")]
    restart: String,
    /// Mount every volume of another container (CONTAINER[:ro|rw])
    #[arg(long = "volumes-from", value_name = "CONTAINER")]
    volumes_from: Vec<String>,
    /// The image
    image: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

fn container_failure(e: ContainerError) -> anyhow::Error {
    match e {
        ContainerError::Image(crate::image::ImageError::NotFound(ref name)) => {
            let msg = format!("Unable to find image '{name}' locally");
            anyhow::Error::new(e).context(msg).context(Hint(
                "`kiln images` lists the local images; `kiln import`, `kiln load` or `kiln build` make one".into(),
            ))
        }
        e => anyhow::Error::new(e),
    }
}

/// `kiln run`: exit code 125 for kiln's own errors, else the container's.
pub fn run(ctx: &Ctx, a: RunArgs) -> Result<i32> {
    // Signals are taken by a forwarding thread, never by kiln itself: block them before any
    // thread starts (threads inherit the mask; the container helper unblocks them again).
    if !a.detach {
        let _ = crate::sys::proc::block_signals(&[
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
        ]);
    }
    match run_inner(ctx, a) {
        Ok(code) => Ok(code),
        Err(e) => {
            super::ui::report(&e);
            Ok(crate::runtime::EXIT_SETUP)
        }
    }
}

fn run_inner(ctx: &Ctx, a: RunArgs) -> Result<i32> {
    let ports = a
        .publish
        .iter()
        .map(|p| PortSpec::parse_ranges(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .flatten()
        .collect();
    let store = ctx.store()?;
    let mut mounts = Vec::new();
    for v in &a.volumes {
        mounts.push(volume::parse_volume_flag(v).map_err(anyhow::Error::msg)?);
    }
    for m in &a.mount {
        mounts.push(volume::parse_mount_flag(m).map_err(anyhow::Error::msg)?);
    }
    for t in &a.tmpfs {
        mounts.push(volume::parse_tmpfs_flag(t).map_err(anyhow::Error::msg)?);
    }
    for c in &a.volumes_from {
        mounts.extend(volume::volumes_from(&store, c)?);
    }
    super::ui::pull::ensure_image(&store, &a.image, false)?;
    let restart =
        container::restart::RestartPolicy::parse(&a.restart).map_err(anyhow::Error::msg)?;
    let duration = |flag: &str, v: &Option<String>| -> Result<Option<u64>> {
        v.as_deref()
            .map(|d| {
                crate::frontend::instructions::parse_go_duration(d).ok_or_else(|| {
                    anyhow::anyhow!("invalid {flag} {d:?}: a duration such as 30s, 1m30s or 500ms")
                })
            })
            .transpose()
    };
    let health = container::health::from_flags(
        a.health_cmd.as_deref(),
        duration("--health-interval", &a.health_interval)?,
        duration("--health-timeout", &a.health_timeout)?,
        duration("--health-start-period", &a.health_start_period)?,
        a.health_retries,
    );
    let opts = RunOptions {
        mounts,
        restart,
        health,
        no_healthcheck: a.no_healthcheck,
        init: a.init,
        labels: a
            .labels
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        image: a.image.clone(),
        name: a.name.clone(),
        cmd: a.cmd.clone(),
        entrypoint: a.entrypoint.clone(),
        env: a.env.clone(),
        env_files: a.env_file.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        network: a.network.clone(),
        network_aliases: a.network_alias.clone(),
        ip: a.ip,
        add_hosts: a.add_host.clone(),
        dns: a.dns.clone(),
        ports,
        publish_all: a.publish_all,
        stop_signal: a.stop_signal.clone(),
        stop_timeout: a.stop_timeout,
        remove: a.rm,
        interactive: a.interactive,
        tty: a.tty,
        memory: a
            .memory
            .as_deref()
            .map(crate::timefmt::ram_in_bytes)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?,
        cpus: a.cpus,
        // Docker: 0 and -1 mean unlimited.
        pids_limit: a.pids_limit.filter(|n| *n > 0).map(|n| n as u64),
        security: container::security_options(
            a.privileged,
            &a.cap_add,
            &a.cap_drop,
            &a.device,
            &a.security_opt,
        )
        .map_err(|e| anyhow::anyhow!(e))?,
    };
    let row = container::create(&store, &opts).map_err(container_failure)?;
    if a.detach {
        container::run_detached(&store, &row)?;
        println!("{}", row.record.id);
        return Ok(0);
    }
    let stdin = if a.interactive {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    Ok(container::run_attached(&store, &row, stdin)?)
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing (default: the container's stop timeout, 10)
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
    /// Containers (ID, ID prefix or name)
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Runs `f` on each named container, printing the name as Docker does; errors are reported per
/// container and make the exit code 1.
fn each(
    ctx: &Ctx,
    names: &[String],
    mut f: impl FnMut(&kiln_store::Store, &kiln_store::ContainerRow) -> Result<(), ContainerError>,
) -> Result<i32> {
    let store = ctx.store()?;
    let mut code = 0;
    for n in names {
        let r = container::resolve(&store, n).and_then(|row| f(&store, &row));
        match r {
            Ok(()) => println!("{n}"),
            Err(e) => {
                super::ui::report(&anyhow::Error::new(e));
                code = 1;
            }
        }
    }
    Ok(code)
}

pub fn stop(ctx: &Ctx, a: StopArgs) -> Result<i32> {
    each(ctx, &a.containers, |store, row| {
        container::stop(store, row, a.time).map(drop)
    })
}

#[derive(Args, Debug)]
pub struct StartArgs {
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `kiln start`: runs stopped containers again, in the background.
pub fn start(ctx: &Ctx, a: StartArgs) -> Result<i32> {
    each(ctx, &a.containers, |store, row| {
        container::restart::start(store, row)
    })
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// Seconds to wait for a running container to stop before killing it
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `kiln restart`: stops (if running) and starts containers again.
pub fn restart(ctx: &Ctx, a: RestartArgs) -> Result<i32> {
    each(ctx, &a.containers, |store, row| {
        container::stop(store, row, a.time)?;
        let row = store
            .containers()
            .get(&row.record.id)?
            .ok_or_else(|| ContainerError::NotFound(row.record.id.clone()))?;
        container::restart::start(store, &row)
    })
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal to send (default SIGKILL)
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn kill(ctx: &Ctx, a: KillArgs) -> Result<i32> {
    let Some(sig) = crate::sys::proc::signal_number(&a.signal) else {
        anyhow::bail!("invalid signal {:?}", a.signal);
    };
    each(ctx, &a.containers, |store, row| {
        container::kill(store, row, sig)
    })
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill and remove a running container
    #[arg(short, long)]
    force: bool,
    /// Remove the anonymous volumes made for the container too
    #[arg(short, long)]
    volumes: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn rm(ctx: &Ctx, a: RmArgs) -> Result<i32> {
    each(ctx, &a.containers, |store, row| {
        let row = container::refresh(store, row.clone())?;
        if row.record.state == ContainerState::Running {
            if !a.force {
                return Err(ContainerError::Invalid(format!(
                    "cannot remove container {:?}: it is running: stop it first, or use rm -f",
                    row.record.name
                )));
            }
            container::kill(store, &row, libc::SIGKILL)?;
        }
        if a.volumes {
            container::remove_with_volumes(store, &row.record.id)
        } else {
            container::remove(store, &row.record.id)
        }
    })
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow the output
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines
    #[arg(long = "tail", value_name = "N")]
    tail: Option<String>,
    /// Show timestamps
    #[arg(short, long)]
    timestamps: bool,
    container: String,
}

pub fn logs(ctx: &Ctx, a: LogsArgs) -> Result<i32> {
    let store = ctx.store()?;
    let row = container::resolve(&store, &a.container)?;
    let tail: Option<usize> = match a.tail.as_deref() {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse()
                .map_err(|_| anyhow::anyhow!("invalid --tail {n:?}: a number or \"all\""))?,
        ),
    };
    let print = |lines: &[container::LogLine]| {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        for l in lines {
            let text = if a.timestamps {
                format!("{} {}", l.time, l.log)
            } else {
                l.log.clone()
            };
            let _ = if l.stream == "stderr" {
                err.write_all(text.as_bytes())
            } else {
                out.write_all(text.as_bytes())
            };
        }
        let _ = out.flush();
    };
    // Read once to the end; -f then reads only what is added.
    let mut log = container::LogTail::new(&store, &row.record.id);
    let lines = log.read()?;
    let start = tail.map_or(0, |n| lines.len().saturating_sub(n));
    print(&lines[start..]);
    if a.follow {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            print(&log.read()?);
            let now = container::refresh(
                &store,
                store
                    .containers()
                    .get(&row.record.id)?
                    .unwrap_or(row.clone()),
            )?;
            if now.record.state != ContainerState::Running {
                print(&log.read()?);
                return Ok(0);
            }
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Keep standard input open
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    tty: bool,
    /// User (name or UID, optionally :group; default: the container's)
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Set an environment variable (K=V, or K to copy the host's)
    #[arg(short = 'e', long = "env", value_name = "K[=V]")]
    env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// The container (ID, ID prefix or name)
    container: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// `kiln exec`: the command's exit code; 125 for kiln's own errors (not running, no such
/// container), 126/127 as `run`.
pub fn exec(ctx: &Ctx, a: ExecArgs) -> Result<i32> {
    let go = || -> Result<i32> {
        let store = ctx.store()?;
        let opts = container::exec::ExecOptions {
            container: a.container.clone(),
            cmd: a.cmd.clone(),
            env: a.env.clone(),
            user: a.user.clone(),
            workdir: a.workdir.clone(),
            tty: a.tty,
            interactive: a.interactive,
        };
        Ok(container::exec::exec(&store, &opts)?)
    };
    match go() {
        Ok(code) => Ok(code),
        Err(e) => {
            super::ui::report(&e);
            Ok(crate::runtime::EXIT_SETUP)
        }
    }
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

/// `kiln container prune`: removes every stopped container, as `docker container prune`.
pub fn prune(ctx: &Ctx, a: PruneArgs) -> Result<i32> {
    if !super::ui::confirm(a.force, "This will remove all stopped containers.")? {
        return Ok(1);
    }
    let store = ctx.store()?;
    let mut removed = Vec::new();
    let mut bytes = 0u64;
    for row in store.containers().list()? {
        let row = container::refresh(&store, row)?;
        if row.record.state == ContainerState::Running {
            continue;
        }
        bytes += kiln_store::gc::dir_size(&container::dir(&store, &row.record.id));
        container::remove(&store, &row.record.id)?;
        removed.push(row.record.id);
    }
    if !removed.is_empty() {
        println!("Deleted Containers:");
        for id in &removed {
            println!("{id}");
        }
        println!();
    }
    println!("Total reclaimed space: {}", timefmt::human_size(bytes));
    Ok(0)
}
