//! Registry commands: login, logout, push, pull (Docker's flags and output).

use super::ui::pull::{registry_failure, Bars};
use super::Ctx;
use crate::image::oci::{host_platform, Platform};
use crate::image::reference::Reference;
use crate::registry::{self, auth, Client, RegistryError};
use anyhow::{Context as _, Result};
use clap::Args;
use std::io::{BufRead, Write};

/// The registry host a user named (`docker.io` by default; Docker's Hub aliases map to it).
fn registry_host(arg: Option<&str>) -> String {
    let h = arg.unwrap_or("docker.io");
    let h = h
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(h);
    match h {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long)]
    username: Option<String>,
    /// Password (prefer --password-stdin)
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from standard input
    #[arg(long)]
    password_stdin: bool,
    /// The registry (default: Docker Hub)
    registry: Option<String>,
}

pub fn login(_ctx: &Ctx, a: LoginArgs) -> Result<i32> {
    let host = registry_host(a.registry.as_deref());
    let user = match a.username {
        Some(u) => u,
        None => {
            eprint!("Username: ");
            let _ = std::io::stderr().flush();
            let mut l = String::new();
            std::io::stdin().lock().read_line(&mut l)?;
            l.trim().to_string()
        }
    };
    let pass = match (a.password, a.password_stdin) {
        (Some(_), true) => anyhow::bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, _) => {
            use std::os::fd::AsFd;
            // At a terminal the password is typed with echo off, as docker does.
            let saved = if !a.password_stdin {
                eprint!("Password: ");
                let _ = std::io::stderr().flush();
                crate::sys::proc::echo_off(std::io::stdin().as_fd()).ok()
            } else {
                None
            };
            let mut l = String::new();
            let read = std::io::stdin().lock().read_line(&mut l);
            if let Some(t) = saved {
                crate::sys::proc::restore_terminal(std::io::stdin().as_fd(), &t);
            }
            read?;
            l.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if user.is_empty() {
        anyhow::bail!("a username is required: kiln login -u USER {host}");
    }
    let client = Client::with_credentials(&host, Some((user.clone(), pass.clone())));
    client.ping().map_err(|e| match e {
        // Someone logging in needs no hint to log in: say what was refused.
        RegistryError::Unauthorized { .. } => anyhow::anyhow!(
            "login to {host} as {user:?} failed: the registry rejected the credentials ({e})"
        ),
        e => registry_failure(e),
    })?;
    auth::store_credentials(&host, &user, &pass)
        .with_context(|| format!("store credentials in {}", auth::auth_file().display()))?;
    println!("Login Succeeded");
    Ok(0)
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry (default: Docker Hub)
    registry: Option<String>,
}

pub fn logout(_ctx: &Ctx, a: LogoutArgs) -> Result<i32> {
    let host = registry_host(a.registry.as_deref());
    if auth::remove_credentials(&host)? {
        println!("Removing login credentials for {}", auth::key_for(&host));
    } else {
        println!("Not logged in to {}", auth::key_for(&host));
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Push layers in this compression (converting those stored otherwise; the manifest
    /// digest then differs from the local one)
    #[arg(long, value_enum)]
    compression: Option<super::ui::CompressionArg>,
    /// NAME[:TAG]
    name: String,
}

pub fn push(ctx: &Ctx, a: PushArgs) -> Result<i32> {
    let store = ctx.store()?;
    let reference = Reference::parse(&a.name)?.with_default_tag();
    let img = crate::image::resolve(&store, &a.name)?.image;
    let report = |l: &str| println!("{l}");
    registry::push(
        &store,
        &img,
        &reference,
        a.compression.map(Into::into),
        &report,
    )
    .map_err(registry_failure)?;
    Ok(0)
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Platform to pull from a multi-platform image (default: this machine's, linux/amd64)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// NAME[:TAG|@DIGEST]
    name: String,
}

/// Parses `os/arch[/variant]`.
pub(crate) fn parse_platform(p: Option<&str>) -> Result<Platform> {
    let Some(p) = p else {
        return Ok(host_platform());
    };
    let parts: Vec<&str> = p.split('/').collect();
    match parts.as_slice() {
        [os, arch] => Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: None,
        }),
        [os, arch, v] => Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: Some(v.to_string()),
        }),
        _ => anyhow::bail!("invalid --platform {p:?}: want OS/ARCH[/VARIANT]"),
    }
}

pub fn pull(ctx: &Ctx, a: PullArgs) -> Result<i32> {
    let store = ctx.store()?;
    let reference = Reference::parse(&a.name)?;
    let platform = parse_platform(a.platform.as_deref())?;
    let bars = Bars::new(false);
    registry::pull(&store, &reference, &platform, &bars).map_err(registry_failure)?;
    println!("{}", reference.with_default_tag());
    Ok(0)
}
