//! Registry commands: login, logout, push, pull (Docker's flags and output).

use super::{Ctx, Hint};
use crate::image::oci::{host_platform, Platform};
use crate::image::reference::Reference;
use crate::registry::{self, auth, Client, RegistryError};
use anyhow::{Context as _, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Mutex;

/// Renders a pull or push: on a terminal a bar per blob, above which Docker's lines print;
/// otherwise the lines alone, on stdout (or stderr, for the pulls `run` and `build` make).
struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    to_stderr: bool,
}

impl Bars {
    fn new(to_stderr: bool) -> Bars {
        let tty = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let multi = tty.then(|| {
            MultiProgress::with_draw_target(if to_stderr {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::stdout()
            })
        });
        Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
            to_stderr,
        }
    }
}

impl registry::Transfer for Bars {
    fn line(&self, line: &str) {
        if let Some(m) = &self.multi {
            let short = line.split(": ").next().unwrap_or("");
            if let Some(pb) = self
                .bars
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(short)
            {
                pb.set_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                pb.finish_with_message(line.to_string());
                return;
            }
            let _ = m.println(line);
        } else if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    fn start(&self, short: &str, what: &str, total: u64) {
        let Some(m) = &self.multi else { return };
        let pb = m.add(ProgressBar::new(total));
        pb.set_style(
            ProgressStyle::with_template("{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_prefix(short.to_string());
        pb.set_message(what.to_string());
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(short.to_string(), pb);
    }
    fn advance(&self, short: &str, n: u64) {
        if let Some(pb) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(short)
        {
            pb.inc(n);
        }
    }
}

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

/// Adds the hint a user needs for a registry error.
pub(crate) fn registry_failure(e: RegistryError) -> anyhow::Error {
    with_hint(e, None)
}

/// The registry error with its hint, and `extra` after it.
fn with_hint(e: RegistryError, extra: Option<String>) -> anyhow::Error {
    let hint = match &e {
        RegistryError::Unauthorized { host, .. } => Some(format!(
            "log in first: kiln login {}",
            if host == "docker.io" { "" } else { host }
        )),
        RegistryError::Network { host, .. } => Some(format!(
            "is {host} up and reachable? (plain HTTP is used only for localhost, 127.0.0.0/8 and KILN_INSECURE_REGISTRIES); without a registry, `kiln import` or `kiln load` bring an image in"
        )),
        RegistryError::NotFound(_) => Some(
            "check the name and tag; `kiln images` lists what the store has".into(),
        ),
        _ => None,
    };
    let hint = match (hint, extra) {
        (Some(h), Some(x)) => Some(format!("{h}\nhint: {x}")),
        (h, x) => h.or(x),
    };
    let err = anyhow::Error::new(e);
    match hint {
        Some(h) => err.context(Hint(h)),
        None => err,
    }
}

/// For a base that is not local and could not be pulled: the local images of the same
/// repository, and for the demo's Python base the script that makes it.
fn local_alternatives(store: &kiln_store::Store, wanted: &Reference) -> Option<String> {
    let mut same: Vec<String> = store
        .refs()
        .ok()?
        .into_iter()
        .filter_map(|(name, _)| Reference::parse(&name).ok())
        .filter(|r| r.name() == wanted.name())
        .map(|r| r.familiar())
        .collect();
    same.sort();
    let mut parts = Vec::new();
    if !same.is_empty() {
        parts.push(format!(
            "the store has {} of the same repository: use it in FROM, or `kiln tag {} {}`",
            same.join(", "),
            same[0],
            wanted.clone().with_default_tag().familiar()
        ));
    }
    if wanted.name() == "docker.io/library/python" {
        parts.push(
            "fixtures/python-base.sh in kiln's repository makes a python:3.11-slim base from Debian packages"
                .into(),
        );
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Pulls `name` when the store lacks it (as `docker run` and `docker build` do), reporting on
/// stderr; with `always`, pulls even when it is present (`kiln build --pull`).
pub(crate) fn ensure_image(store: &kiln_store::Store, name: &str, always: bool) -> Result<()> {
    let present = match crate::image::resolve(store, name) {
        Ok(_) => true,
        Err(crate::image::ImageError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if present && !always {
        return Ok(());
    }
    // An image ID (or a prefix of one) is never pulled.
    let Ok(reference) = Reference::parse(name) else {
        return Ok(());
    };
    if !present {
        eprintln!(
            "Unable to find image '{}' locally",
            reference.clone().with_default_tag().familiar()
        );
    }
    let bars = Bars::new(true);
    registry::pull(store, &reference, &host_platform(), &bars)
        .map_err(|e| {
            let extra = (!present)
                .then(|| local_alternatives(store, &reference))
                .flatten();
            with_hint(e, extra)
        })
        .with_context(|| format!("pull {}", reference.familiar()))?;
    Ok(())
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
    compression: Option<super::images::CompressionArg>,
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
