//! Pulls the commands make on the user's behalf (`run` and `build` of a missing image, `pull`,
//! `push`): progress bars on a terminal, Docker's lines otherwise, and hints for failures.

use crate::cli::Hint;
use crate::image::oci::host_platform;
use crate::image::reference::Reference;
use crate::registry::{self, RegistryError};
use anyhow::{Context as _, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

/// Renders a pull or push: on a terminal a bar per blob, above which Docker's lines print;
/// otherwise the lines alone, on stdout (or stderr, for the pulls `run` and `build` make).
pub struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    to_stderr: bool,
}

impl Bars {
    pub fn new(to_stderr: bool) -> Bars {
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

/// Adds the hint a user needs for a registry error.
pub fn registry_failure(e: RegistryError) -> anyhow::Error {
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
pub fn ensure_image(store: &kiln_store::Store, name: &str, always: bool) -> Result<()> {
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
