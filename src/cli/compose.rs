//! `kiln compose`: docker compose v2's command line over kiln's compose model
//! (`crate::compose`) and its service engine (`crate::service`).

use super::Ctx;
use crate::compose::{self, Loaded};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

mod run;

#[derive(Args, Debug)]
pub struct ComposeArgs {
    /// Compose configuration files (default: compose.yaml, compose.yml, docker-compose.yml or
    /// docker-compose.yaml in the working directory, with its .override file)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Project name (default: the file's `name:`, COMPOSE_PROJECT_NAME, or its directory's name)
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    project: Option<String>,
    /// Enable services of this profile
    #[arg(long = "profile", value_name = "PROFILE")]
    profiles: Vec<String>,
    #[command(subcommand)]
    command: ComposeCommand,
}

#[derive(Subcommand, Debug)]
pub enum ComposeCommand {
    /// Check the files and print the project as kiln reads it (interpolated, merged, normalized)
    #[command(alias = "convert")]
    Config(ConfigArgs),
    /// Create and start the project's networks, volumes and containers (converging: what is
    /// already as the files say stays)
    Up(run::UpArgs),
    /// Stop and remove the project's containers and networks (named volumes stay unless -v)
    Down(run::DownArgs),
    /// List the project's containers
    Ps(run::PsArgs),
    /// Build the images of services that have a build section
    Build(run::BuildArgs),
    /// Pull the images of services that name one
    Pull,
    /// Push the images of services that build one and name it
    Push,
    /// Show the project's output, each line after its container's name
    Logs(run::LogsArgs),
    /// Stop the project's running containers
    Stop,
    /// Start the project's stopped containers
    Start,
    /// Stop and start the project's containers
    Restart,
    /// Run a command in a service's running container
    Exec(ExecArgs),
    /// Run a one-off command in a new container of a service (its dependencies started first)
    Run(run::RunArgs),
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Which replica (1 is the first)
    #[arg(long, default_value_t = 1)]
    index: u32,
    /// No pseudo-terminal (kiln's exec has none unless asked: accepted for docker compose's
    /// scripts)
    #[arg(short = 'T', long = "no-TTY")]
    no_tty: bool,
    /// Set an environment variable (K=V)
    #[arg(short = 'e', long = "env", value_name = "K[=V]")]
    env: Vec<String>,
    /// User (name or UID, optionally :group)
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    service: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Only check: print nothing but errors
    #[arg(short, long)]
    quiet: bool,
    /// Print the service names, one per line
    #[arg(long)]
    services: bool,
    /// Output format: yaml or json
    #[arg(long, default_value = "yaml")]
    format: String,
}

pub fn run(ctx: &Ctx, a: ComposeArgs) -> Result<i32> {
    let loaded = super::ui::load_compose(&a.files, a.project.as_deref(), &a.profiles)?;
    match a.command {
        ComposeCommand::Config(c) => config(&loaded, c),
        ComposeCommand::Up(u) => run::up(ctx, &loaded, u),
        ComposeCommand::Down(d) => run::down(ctx, &loaded, d),
        ComposeCommand::Ps(p) => run::ps(ctx, &loaded, p),
        ComposeCommand::Build(b) => run::build(ctx, &loaded, b),
        ComposeCommand::Pull => run::pull(ctx, &loaded),
        ComposeCommand::Push => run::push(ctx, &loaded),
        ComposeCommand::Logs(g) => run::logs(ctx, &loaded, g),
        ComposeCommand::Stop => run::stop(ctx, &loaded),
        ComposeCommand::Start => run::start(ctx, &loaded),
        ComposeCommand::Exec(e) => exec(ctx, &loaded, e),
        ComposeCommand::Run(r) => run::run(ctx, &loaded, r),
        ComposeCommand::Restart => {
            run::stop(ctx, &loaded)?;
            run::start(ctx, &loaded)
        }
    }
}

fn config(l: &Loaded, c: ConfigArgs) -> Result<i32> {
    if c.quiet {
        return Ok(0);
    }
    if c.services {
        for name in l.project.services.keys() {
            println!("{name}");
        }
        return Ok(0);
    }
    let v = serde_json::to_value(&l.project)?;
    match c.format.as_str() {
        "yaml" => print!("{}", compose::emit::to_yaml(&v)),
        "json" => println!("{}", serde_json::to_string_pretty(&v)?),
        f => anyhow::bail!("invalid --format {f:?}: use yaml or json"),
    }
    Ok(0)
}

/// `compose exec`: `kiln exec` in `<project>-<service>-<index>`.
fn exec(ctx: &Ctx, l: &Loaded, e: ExecArgs) -> Result<i32> {
    if !l.project.services.contains_key(&e.service) {
        anyhow::bail!("no such service: {}", e.service);
    }
    let _ = e.no_tty;
    let mut args = vec!["exec".to_string()];
    for v in &e.env {
        args.extend(["-e".into(), v.clone()]);
    }
    if let Some(u) = &e.user {
        args.extend(["-u".into(), u.clone()]);
    }
    if let Some(w) = &e.workdir {
        args.extend(["-w".into(), w.clone()]);
    }
    args.push(format!("{}-{}-{}", l.project.name, e.service, e.index));
    args.extend(e.cmd.iter().cloned());
    super::run_args(ctx, &args)
}
