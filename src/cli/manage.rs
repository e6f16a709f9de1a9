//! Docker's management commands (`kiln image ls`, `kiln container rm`, `kiln builder prune`):
//! the same arguments and the same code as the top-level commands they name, so a script
//! written for `docker image ls` or `docker container prune` runs as it is.

use super::{cache, containers, images, registry, Ctx};
use anyhow::Result;
use clap::Subcommand;

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
}

#[derive(Subcommand, Debug)]
pub enum BuilderCommand {
    /// Remove build cache entries (as `kiln cache prune`)
    Prune(cache::PruneArgs),
}

pub fn image(ctx: &Ctx, c: ImageCommand) -> Result<i32> {
    match c {
        ImageCommand::Ls(a) => images::images(ctx, a),
        ImageCommand::Rm(a) => images::rmi(ctx, a),
        ImageCommand::Inspect(a) => images::inspect(ctx, a),
        ImageCommand::Tag(a) => images::tag(ctx, a),
        ImageCommand::Push(a) => registry::push(ctx, a),
        ImageCommand::Pull(a) => registry::pull(ctx, a),
        ImageCommand::Save(a) => images::save(ctx, a),
        ImageCommand::Load(a) => images::load(ctx, a),
        ImageCommand::Import(a) => images::import(ctx, a),
        ImageCommand::History(a) => images::history(ctx, a),
        ImageCommand::Prune(a) => images::prune(ctx, a),
    }
}

pub fn container(ctx: &Ctx, c: ContainerCommand) -> Result<i32> {
    match c {
        ContainerCommand::Ls(a) => containers::ps(ctx, a),
        ContainerCommand::Run(a) => containers::run(ctx, a),
        ContainerCommand::Stop(a) => containers::stop(ctx, a),
        ContainerCommand::Kill(a) => containers::kill(ctx, a),
        ContainerCommand::Rm(a) => containers::rm(ctx, a),
        ContainerCommand::Logs(a) => containers::logs(ctx, a),
        ContainerCommand::Exec(a) => containers::exec(ctx, a),
        ContainerCommand::Inspect(a) => images::inspect(ctx, a),
        ContainerCommand::Prune(a) => containers::prune(ctx, a),
    }
}

pub fn builder(ctx: &Ctx, c: BuilderCommand) -> Result<i32> {
    match c {
        BuilderCommand::Prune(a) => cache::run(ctx, cache::CacheCommand::Prune(a)),
    }
}

/// Docker's prune question; true when the user said yes (or `-f` was given).
pub(crate) fn confirm(force: bool, warning: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if force {
        return Ok(true);
    }
    eprint!("WARNING! {warning}\nAre you sure you want to continue? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    if std::io::stdin().is_terminal() {
        std::io::stdin().lock().read_line(&mut answer)?;
    }
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        eprintln!("\nnothing removed (pass -f to skip this question)");
    }
    Ok(yes)
}
