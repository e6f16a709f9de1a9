//! The command line: clap definitions, one file per command family. The only code that prints:
//! data to stdout, progress and errors to stderr, errors as `kiln: error: ...`, then each cause on
//! its own line, then an optional `hint:`.

mod build;
mod cache;
mod containers;
mod format;
mod images;
mod manage;
mod registry;
mod system;

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
    /// Stop running containers (stop signal, then SIGKILL after a timeout)
    Stop(containers::StopArgs),
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
    /// Manage images: ls, rm, inspect, tag, push, pull, save, load, import, history, prune
    #[command(subcommand)]
    Image(manage::ImageCommand),
    /// Manage containers: ls, run, stop, kill, rm, logs, exec, inspect, prune
    #[command(subcommand)]
    Container(manage::ContainerCommand),
    /// Manage the build cache: prune
    #[command(subcommand)]
    Builder(manage::BuilderCommand),
    /// Show the history of an image
    History(images::HistoryArgs),
}

/// The store root: `--root`, `$KILN_ROOT`, `/var/lib/kiln` for root, `$XDG_DATA_HOME/kiln` otherwise.
fn default_root() -> PathBuf {
    if crate::sys::is_root() {
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
        Store::open(&self.root).map_err(|e| {
            anyhow::Error::new(e).context(format!("open store {}", self.root.display()))
        })
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

fn hint_for(e: &anyhow::Error) -> Option<String> {
    if let Some(h) = e.downcast_ref::<Hint>() {
        return Some(h.0.clone());
    }
    for cause in e.chain() {
        if let Some(crate::image::ImageError::NotFound(_)) =
            cause.downcast_ref::<crate::image::ImageError>()
        {
            return Some("`kiln images` lists what the store has; `kiln import` or `kiln load` brings an image in".into());
        }
        if let Some(kiln_store::Error::TooNew { .. }) = cause.downcast_ref::<kiln_store::Error>() {
            return Some("use a newer kiln, or another --root".into());
        }
    }
    None
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
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
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
    let result = match cli.command {
        Command::Build(a) => build::build(&ctx, a),
        Command::Import(a) => images::import(&ctx, a),
        Command::Load(a) => images::load(&ctx, a),
        Command::Save(a) => images::save(&ctx, a),
        Command::Images(a) => images::images(&ctx, a),
        Command::Tag(a) => images::tag(&ctx, a),
        Command::Rmi(a) => images::rmi(&ctx, a),
        Command::Inspect(a) => images::inspect(&ctx, a),
        Command::Run(a) => containers::run(&ctx, a),
        Command::Ps(a) => containers::ps(&ctx, a),
        Command::Stop(a) => containers::stop(&ctx, a),
        Command::Kill(a) => containers::kill(&ctx, a),
        Command::Rm(a) => containers::rm(&ctx, a),
        Command::Logs(a) => containers::logs(&ctx, a),
        Command::Exec(a) => containers::exec(&ctx, a),
        Command::Login(a) => registry::login(&ctx, a),
        Command::Logout(a) => registry::logout(&ctx, a),
        Command::Push(a) => registry::push(&ctx, a),
        Command::Pull(a) => registry::pull(&ctx, a),
        Command::Cache(c) => cache::run(&ctx, c),
        Command::System(c) => system::run(&ctx, c),
        Command::Image(c) => manage::image(&ctx, c),
        Command::Container(c) => manage::container(&ctx, c),
        Command::Builder(c) => manage::builder(&ctx, c),
        Command::History(a) => images::history(&ctx, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            1
        }
    }
}

/// Prints an error Docker-style: the message, each cause on its own line, then a hint.
pub(crate) fn report(e: &anyhow::Error) {
    let hint = e.downcast_ref::<Hint>().map(|h| h.0.clone());
    let mut chain = e.chain().filter(|c| Some(c.to_string()) != hint);
    if let Some(first) = chain.next() {
        eprintln!("kiln: error: {first}");
    }
    let mut last = String::new();
    for c in chain {
        let s = c.to_string();
        if s != last {
            eprintln!("  caused by: {s}");
        }
        last = s;
    }
    if let Some(h) = hint_for(e) {
        eprintln!("hint: {h}");
    }
}

/// Formats rows as Docker's tabwriter does (columns padded by 3 spaces, last column unpadded).
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
