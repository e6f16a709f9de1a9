//! The command line: clap definitions, one file per command family. The only code that prints:
//! data to stdout, progress and errors to stderr, errors as `kiln: error: ...`, then each cause on
//! its own line, then an optional `hint:`.

mod build;
mod cache;
mod compose;
mod containers;
mod images;
mod networks;
mod registry;
mod stack;
mod system;
mod ui;
mod volumes;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kiln_store::Store;
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    disable_version_flag = true,
    about = "Build container images from Dockerfiles, fast and reproducibly; run and share them"
)]
pub struct Cli {
    /// Print the version
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    version: Option<bool>,
    // KILN_ROOT and KILN_LOG are read here rather than by clap's `env`, so that a usage line
    // after a mistake shows what was typed, not options the environment filled in.
    /// Store directory [env: KILN_ROOT] (default: /var/lib/kiln as root, else
    /// $XDG_DATA_HOME/kiln)
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace [env: KILN_LOG] (default: warn)
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        value_parser = ["error", "warn", "info", "debug", "trace", "fatal", "panic"],
        ignore_case = true
    )]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a Dockerfile (`--check`: parse, plan and lint only)
    Build(build::BuildArgs),
    /// Import a rootfs tarball (plain, gzip or zstd) as a one-layer image
    Import(images::ImportArgs),
    /// Load images from a docker-archive, an OCI archive or an OCI layout directory
    Load(images::LoadArgs),
    /// Save images to an OCI archive (default) or a docker-archive
    Save(images::SaveArgs),
    /// List images
    #[command(alias = "image-ls")]
    Images(images::ImagesArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(images::TagArgs),
    /// Remove images
    Rmi(images::RmiArgs),
    /// Show a container's or an image's details as JSON
    Inspect(images::InspectArgs),
    /// Run a command in a new container
    Run(containers::RunArgs),
    /// List containers
    Ps(containers::PsArgs),
    /// Show running containers' CPU, memory, network and PIDs
    Stats(containers::StatsArgs),
    /// Stop running containers (stop signal, then SIGKILL after a timeout)
    Stop(containers::StopArgs),
    /// Start stopped containers again (in the background)
    Start(containers::StartArgs),
    /// Stop and start containers again
    Restart(containers::RestartArgs),
    /// Send a signal to running containers
    Kill(containers::KillArgs),
    /// Remove containers
    Rm(containers::RmArgs),
    /// Show a container's output
    Logs(containers::LogsArgs),
    /// Run a command in a running container
    Exec(containers::ExecArgs),
    /// Log in to a registry (verifies the credentials, then stores them)
    Login(registry::LoginArgs),
    /// Forget a registry's credentials
    Logout(registry::LogoutArgs),
    /// Push an image to a registry
    Push(registry::PushArgs),
    /// Pull an image from a registry
    Pull(registry::PullArgs),
    /// Look at and trim the build step cache
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Manage the store
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Show how kiln runs here: store, snapshotter, rootless id map, networking, cgroups
    Info,
    /// Run a command (default: $SHELL) in kiln's rootless user namespace, where the store's
    /// files show the ids images gave them
    Unshare {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Manage images: ls, rm, inspect, tag, push, pull, save, load, import, history, prune
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage containers: ls, run, stop, kill, rm, logs, exec, inspect, prune
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Manage the build cache: prune
    #[command(subcommand)]
    Builder(BuilderCommand),
    /// Manage volumes: create, ls, inspect, rm, prune
    #[command(subcommand)]
    Volume(volumes::VolumeCommand),
    /// Manage networks: create, ls, inspect, rm, prune, connect, disconnect
    #[command(subcommand)]
    Network(networks::NetworkCommand),
    /// Show the history of an image
    History(images::HistoryArgs),
    /// Run a multi-container application from a compose file (docker compose v2's commands)
    Compose(compose::ComposeArgs),
    /// Deploy compose files as stacks of replicated services (swarm mode's commands, one node)
    #[command(subcommand)]
    Stack(stack::StackCommand),
    /// Manage the services of stacks: ls, ps, logs, scale, update, inspect, rm
    #[command(subcommand)]
    Service(stack::ServiceCommand),
}

/// `kiln ps | head`: when the reader of kiln's output goes, kiln ends as `ls` does (killed by
/// SIGPIPE, status 141, nothing printed), as Go programs such as docker do for their standard
/// streams. SIGPIPE itself stays ignored, so a registry, a published port's client or a child's
/// pipe hanging up is an error kiln handles; only `println!`'s panic on a closed stdout is turned
/// into the signal.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            crate::sys::proc::die_of_sigpipe();
        }
        default(info)
    }));
}

fn dispatch(ctx: &Ctx, command: Command) -> Result<i32> {
    match command {
        Command::Build(a) => build::build(ctx, a),
        Command::Import(a) => images::import(ctx, a),
        Command::Load(a) => images::load(ctx, a),
        Command::Save(a) => images::save(ctx, a),
        Command::Images(a) => images::images(ctx, a),
        Command::Tag(a) => images::tag(ctx, a),
        Command::Rmi(a) => images::rmi(ctx, a),
        Command::Inspect(a) => images::inspect(ctx, a),
        Command::Run(a) => containers::run(ctx, a),
        Command::Ps(a) => containers::ps(ctx, a),
        Command::Stats(a) => containers::stats(ctx, a),
        Command::Stop(a) => containers::stop(ctx, a),
        Command::Start(a) => containers::start(ctx, a),
        Command::Restart(a) => containers::restart(ctx, a),
        Command::Kill(a) => containers::kill(ctx, a),
        Command::Rm(a) => containers::rm(ctx, a),
        Command::Logs(a) => containers::logs(ctx, a),
        Command::Exec(a) => containers::exec(ctx, a),
        Command::Login(a) => registry::login(ctx, a),
        Command::Logout(a) => registry::logout(ctx, a),
        Command::Push(a) => registry::push(ctx, a),
        Command::Pull(a) => registry::pull(ctx, a),
        Command::Cache(c) => cache::run(ctx, c),
        Command::System(c) => system::run(ctx, c),
        Command::Info => system::info(ctx),
        Command::Unshare { command } => system::unshare(&command),
        Command::Image(c) => image(ctx, c),
        Command::Container(c) => container(ctx, c),
        Command::Builder(c) => builder(ctx, c),
        Command::Volume(c) => volumes::run(ctx, c),
        Command::Network(c) => networks::run(ctx, c),
        Command::History(a) => images::history(ctx, a),
        Command::Compose(a) => compose::run(ctx, a),
        Command::Stack(c) => stack::run(ctx, c),
        Command::Service(c) => stack::run_service(ctx, c),
    }
}

/// Runs the kiln command line `args` (without the program's name) on `ctx`'s store, as if
/// typed: how one command family reuses another whole (`compose build` runs `build`) without
/// importing it.
pub(crate) fn run_args(ctx: &Ctx, args: &[String]) -> Result<i32> {
    let cli = Cli::try_parse_from(std::iter::once("kiln".to_string()).chain(args.iter().cloned()))
        .map_err(|e| anyhow::anyhow!("kiln {}: {e}", args.join(" ")))?;
    dispatch(ctx, cli.command)
}

/// The store root: `--root`, `$KILN_ROOT`, `/var/lib/kiln` for root, `$XDG_DATA_HOME/kiln` otherwise.
fn default_root() -> PathBuf {
    if crate::sys::is_root() && !crate::rootless::active() {
        return PathBuf::from("/var/lib/kiln");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("kiln"),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".local/share/kiln"),
    }
}

pub(crate) struct Ctx {
    root: PathBuf,
}

impl Ctx {
    fn store(&self) -> Result<Store> {
        let store = Store::open(&self.root).map_err(|e| {
            anyhow::Error::new(e).context(format!("open store {}", self.root.display()))
        })?;
        // A rootless store is its user's alone: no other user reads its layers, containers or
        // cache mounts.
        if crate::rootless::active() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700));
        }
        Ok(store)
    }
}

/// A hint for the user, attached to an error and printed after it.
#[derive(Debug)]
pub(crate) struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses argv, runs the command, prints any error; returns the process exit code.
pub fn run<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == crate::runtime::INIT_ARG) {
        // The container init helper: single-threaded, before anything else starts.
        crate::runtime::init::main();
    }
    if args.get(1).is_some_and(|a| a == crate::runtime::EXEC_ARG) {
        // The exec helper: joins a running container's namespaces.
        crate::runtime::init::exec_main();
    }
    if args
        .get(1)
        .is_some_and(|a| a == crate::container::SUPERVISE_ARG)
    {
        // A detached container's supervisor: `kiln __kiln-supervise ROOT ID`.
        let (Some(root), Some(id)) = (args.get(2), args.get(3)) else {
            return 2;
        };
        return crate::container::supervise_main(std::path::Path::new(root), &id.to_string_lossy());
    }
    if args
        .get(1)
        .is_some_and(|a| a == crate::stack::SUPERVISE_ARG)
    {
        // A service's supervisor: `kiln __kiln-service ROOT NAME`.
        let (Some(root), Some(name)) = (args.get(2), args.get(3)) else {
            return 2;
        };
        return crate::stack::supervise_main(std::path::Path::new(root), &name.to_string_lossy());
    }
    if args.get(1).is_some_and(|a| a == crate::rootless::PAUSE_ARG) {
        // The process that holds an ordinary user's kiln namespaces.
        crate::rootless::pause_main();
    }
    quiet_on_closed_stdout();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // An ordinary user's kiln runs in its own user namespace: joined here, while this process
    // is still single-threaded (setns into a user namespace requires it).
    match crate::rootless::enter() {
        Ok(entered) => {
            for n in entered.notes {
                eprintln!("kiln: warning: {n}");
            }
        }
        Err(e) => {
            eprintln!("kiln: error: {e}");
            return 125;
        }
    }
    // Docker's fatal and panic are error here.
    let level_name = match cli.log_level.clone() {
        Some(l) => l,
        None => match std::env::var("KILN_LOG") {
            Ok(l) if !l.is_empty() => {
                let known = ["error", "warn", "info", "debug", "trace", "fatal", "panic"];
                if !known.contains(&l.to_ascii_lowercase().as_str()) {
                    eprintln!(
                        "kiln: error: invalid KILN_LOG {l:?}: use one of {}",
                        known.join(", ")
                    );
                    return 2;
                }
                l
            }
            _ => "warn".into(),
        },
    };
    let level = level_name.parse().unwrap_or(tracing::Level::ERROR);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let ctx = Ctx {
        root: cli
            .root
            .clone()
            .or_else(|| {
                std::env::var_os("KILN_ROOT")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(default_root),
    };
    let result = dispatch(&ctx, cli.command);
    match result {
        Ok(code) => code,
        Err(e) => {
            ui::report(&e);
            1
        }
    }
}

// Docker's management commands (`kiln image ls`, `kiln container rm`, `kiln builder prune`):
// the same arguments and the same code as the top-level commands they name, so a script
// written for `docker image ls` or `docker container prune` runs as it is.

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images (as `kiln images`)
    #[command(alias = "list")]
    Ls(images::ImagesArgs),
    /// Remove images (as `kiln rmi`)
    #[command(alias = "remove", alias = "rmi")]
    Rm(images::RmiArgs),
    /// Show images' details as JSON
    Inspect(images::InspectArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(images::TagArgs),
    /// Push an image to a registry
    Push(registry::PushArgs),
    /// Pull an image from a registry
    Pull(registry::PullArgs),
    /// Save images to an archive
    Save(images::SaveArgs),
    /// Load images from an archive
    Load(images::LoadArgs),
    /// Import a rootfs tarball as a one-layer image
    Import(images::ImportArgs),
    /// Show the history of an image
    History(images::HistoryArgs),
    /// Show why two images differ: config fields, then files (names, IDs or archives)
    Diff(images::ImageDiffArgs),
    /// Remove images no container uses: untagged ones, or with -a every one
    Prune(images::ImagePruneArgs),
}

// Parsed once per process: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// List containers (as `kiln ps`)
    #[command(alias = "list", alias = "ps")]
    Ls(containers::PsArgs),
    /// Run a command in a new container
    Run(containers::RunArgs),
    /// Stop running containers
    Stop(containers::StopArgs),
    /// Start stopped containers again (in the background)
    Start(containers::StartArgs),
    /// Stop and start containers again
    Restart(containers::RestartArgs),
    /// Send a signal to running containers
    Kill(containers::KillArgs),
    /// Remove containers
    #[command(alias = "remove")]
    Rm(containers::RmArgs),
    /// Show a container's output
    Logs(containers::LogsArgs),
    /// Run a command in a running container
    Exec(containers::ExecArgs),
    /// Show containers' details as JSON
    Inspect(images::InspectArgs),
    /// Remove every stopped container
    Prune(containers::PruneArgs),
    /// Show running containers' CPU, memory, network and PIDs (as `kiln stats`)
    Stats(containers::StatsArgs),
}

#[derive(Subcommand, Debug)]
pub enum BuilderCommand {
    /// Remove build cache entries (as `kiln cache prune`)
    Prune(cache::PruneArgs),
}

fn image(ctx: &Ctx, c: ImageCommand) -> Result<i32> {
    match c {
        ImageCommand::Ls(a) => images::images(ctx, a),
        ImageCommand::Rm(a) => images::rmi(ctx, a),
        ImageCommand::Inspect(a) => images::inspect(ctx, a),
        ImageCommand::Tag(a) => images::tag(ctx, a),
        ImageCommand::Push(a) => registry::push(ctx, a),
        ImageCommand::Pull(a) => registry::pull(ctx, a),
        ImageCommand::Diff(a) => images::image_diff(ctx, a),
        ImageCommand::Save(a) => images::save(ctx, a),
        ImageCommand::Load(a) => images::load(ctx, a),
        ImageCommand::Import(a) => images::import(ctx, a),
        ImageCommand::History(a) => images::history(ctx, a),
        ImageCommand::Prune(a) => images::prune(ctx, a),
    }
}

fn container(ctx: &Ctx, c: ContainerCommand) -> Result<i32> {
    match c {
        ContainerCommand::Ls(a) => containers::ps(ctx, a),
        ContainerCommand::Stats(a) => containers::stats(ctx, a),
        ContainerCommand::Run(a) => containers::run(ctx, a),
        ContainerCommand::Stop(a) => containers::stop(ctx, a),
        ContainerCommand::Start(a) => containers::start(ctx, a),
        ContainerCommand::Restart(a) => containers::restart(ctx, a),
        ContainerCommand::Kill(a) => containers::kill(ctx, a),
        ContainerCommand::Rm(a) => containers::rm(ctx, a),
        ContainerCommand::Logs(a) => containers::logs(ctx, a),
        ContainerCommand::Exec(a) => containers::exec(ctx, a),
        ContainerCommand::Inspect(a) => images::inspect(ctx, a),
        ContainerCommand::Prune(a) => containers::prune(ctx, a),
    }
}

fn builder(ctx: &Ctx, c: BuilderCommand) -> Result<i32> {
    match c {
        BuilderCommand::Prune(a) => cache::run(ctx, cache::CacheCommand::Prune(a)),
    }
}
