//! `kiln build`: builds the image and prints its ID on the last stdout line, with progress on
//! stderr (`--progress tty|plain|quiet`). With `--check`: parse, plan and lint without executing
//! anything, printing each finding as `FILE:LINE: severity: message`; exit 0 when the file would
//! build, 1 otherwise.

use anyhow::{Context as _, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{Ctx, Hint};
use crate::builder::{BuildError, BuildOptions, Event, Progress};
use crate::context::Context;
use crate::frontend::{lint, Dockerfile};
use crate::snapshotter::Kind as Snapshotter;
use kiln_store::Compression;

mod render;
use render::*;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name and optionally a tag (NAME[:TAG]); may be repeated
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads stdin)
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    file: Option<PathBuf>,
    /// A build-time variable (KEY=VALUE, or KEY to take it from the environment)
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    build_args: Vec<String>,
    /// The stage to build (default: the last one)
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// Parse, plan and lint without building; exit 1 if the build would fail
    #[arg(long)]
    check: bool,
    /// Execute every step, ignoring the step cache
    #[arg(long)]
    no_cache: bool,
    /// Network for RUN steps: host (default) or none
    #[arg(long, value_name = "MODE", default_value = "host", value_parser = ["host", "none", "default"])]
    network: String,
    /// Progress output: auto, tty, plain or quiet
    #[arg(long, value_name = "TYPE", default_value = "auto", value_parser = ["auto", "tty", "plain", "quiet"])]
    progress: String,
    /// Print only the image ID
    #[arg(short, long)]
    quiet: bool,
    /// Layer compression: zstd (default; zstd:chunked, a frame per file), zstd:plain (one zstd
    /// stream) or gzip
    #[arg(long, value_name = "ALGO", default_value = "zstd", value_parser = ["zstd", "zstd:chunked", "zstd:plain", "gzip"])]
    compression: String,
    /// Set every time in the image to SECONDS since 1970: each file's, directory's and link's
    /// mtime in the build's layers, the config's created and the history's (buildah's flag).
    /// Without it, SOURCE_DATE_EPOCH sets created and history and clamps newer mtimes
    #[arg(long, value_name = "SECONDS")]
    timestamp: Option<String>,
    /// Set a label on the image (KEY=VALUE); may be repeated
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Pull every base image again, even when the store has it
    #[arg(long)]
    pull: bool,
    /// How RUN gets its filesystem: overlay, or native (copies and a walk differ). Default:
    /// overlay, native when the store itself is on overlayfs (kiln inside a container)
    #[arg(long, env = "KILN_SNAPSHOTTER", value_name = "NAME", value_parser = ["overlay", "native"])]
    snapshotter: Option<String>,
    /// default (namespaces, the snapshotter's root) or none: RUN steps run in the container kiln
    /// itself runs in, kaniko's way (for CI runners and Kubernetes pods without privileges; it
    /// replaces that container's files). Chosen by itself where no namespace can be made
    #[arg(long, env = "KILN_ISOLATION", value_name = "MODE", default_value = "default", value_parser = ["default", "none"])]
    isolation: String,
    /// Push every tag to its registry once built (in the same process: with --isolation=none
    /// the container's own files are the image's by then)
    #[arg(long)]
    push: bool,
    /// With --isolation=none: a path in the container kiln leaves alone (besides mounts, its
    /// store, the context and the Dockerfile); may be repeated
    #[arg(long = "ignore-path", value_name = "PATH")]
    ignore_paths: Vec<PathBuf>,
    /// A secret for RUN --mount=type=secret: id=NAME[,src=FILE | ,env=VAR] (with neither, the
    /// environment variable NAME); may be repeated
    #[arg(long = "secret", value_name = "id=NAME[,src=FILE|,env=VAR]")]
    secrets: Vec<String>,
    /// Forward an SSH agent to RUN --mount=type=ssh: default (the agent at $SSH_AUTH_SOCK) or
    /// ID=SOCKET; may be repeated
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET]")]
    ssh: Vec<String>,
    /// Report every step's key and the inputs that formed it, and for a miss what differs
    /// from the nearest earlier build of the same step
    #[arg(long)]
    explain: bool,
    /// Import the step cache from a registry: type=registry,ref=NAME[:TAG] (or just NAME[:TAG]);
    /// may be repeated
    #[arg(long = "cache-from", value_name = "type=registry,ref=NAME")]
    cache_from: Vec<String>,
    /// Export this build's steps and layers to a registry: type=registry,ref=NAME[:TAG]
    #[arg(long = "cache-to", value_name = "type=registry,ref=NAME")]
    cache_to: Option<String>,
    /// The build context directory
    context: PathBuf,
}

/// Imports every `--cache-from` before the build (a missing cache manifest is an empty cache).
fn remote_caches(
    specs: &[String],
    quiet: bool,
) -> Result<Vec<std::sync::Arc<crate::registry::cache::RemoteCache>>> {
    let mut out = Vec::new();
    for spec in specs {
        let r = crate::registry::cache::parse_spec(spec)
            .map_err(|e| anyhow::anyhow!("--cache-from: {e}"))?;
        // As BuildKit: a cache that cannot be read is a warning, and the build goes on without it.
        match crate::registry::cache::RemoteCache::import(&r) {
            Ok(rc) => {
                if !quiet {
                    eprintln!("importing cache from {}: {} steps", rc.name(), rc.len());
                }
                out.push(std::sync::Arc::new(rc));
            }
            Err(e) => eprintln!(
                "kiln: warning: --cache-from {}: {e}; building without it",
                r.familiar()
            ),
        }
    }
    Ok(out)
}

/// `--ssh ID[=SOCKET]`: each agent socket, checked now (without a path, $SSH_AUTH_SOCK).
fn ssh_map(specs: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = BTreeMap::new();
    for spec in specs {
        let (id, path) = match spec.split_once('=') {
            Some((id, p)) => (id.to_string(), PathBuf::from(p)),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                    anyhow::anyhow!("--ssh {spec}: SSH_AUTH_SOCK is not set (start ssh-agent, or give {spec}=SOCKET)")
                })?;
                (spec.clone(), PathBuf::from(sock))
            }
        };
        if id.is_empty() {
            anyhow::bail!("invalid --ssh {spec:?}: the id is empty");
        }
        let meta =
            std::fs::metadata(&path).with_context(|| format!("--ssh {id}: {}", path.display()))?;
        if !meta.file_type().is_socket() {
            anyhow::bail!("--ssh {id}: {} is not a socket", path.display());
        }
        out.insert(id, path);
    }
    Ok(out)
}

/// Reads every `--secret` value now, so a missing file fails before any work. The values are
/// kept in memory only.
fn secret_map(specs: &[String]) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(v.to_string()),
                Some(("env", v)) => env = Some(v.to_string()),
                Some(("type", v @ ("file" | "env"))) => kind = Some(v.to_string()),
                _ => anyhow::bail!(
                    "invalid --secret {spec:?}: unexpected {field:?} (expected id=NAME[,src=FILE|,env=VAR])"
                ),
            }
        }
        let id = match id {
            Some(id) if !id.is_empty() => id,
            _ => anyhow::bail!("invalid --secret {spec:?}: id=NAME is required"),
        };
        let value = match (src, env) {
            (Some(_), Some(_)) => {
                anyhow::bail!("invalid --secret {spec:?}: give src= or env=, not both")
            }
            (Some(file), None) => {
                std::fs::read(&file).with_context(|| format!("read secret {id:?} from {file}"))?
            }
            (None, env) => {
                let var = env.unwrap_or_else(|| id.clone());
                if kind.as_deref() == Some("file") {
                    std::fs::read(&var).with_context(|| format!("read secret {id:?} from {var}"))?
                } else {
                    std::env::var_os(&var)
                        .map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "secret {id:?}: the environment variable {var} is not set (give src=FILE or env=VAR)"
                            )
                        })?
                }
            }
        };
        out.insert(id, value);
    }
    Ok(out)
}

/// `KEY=VALUE` or `KEY` (from the environment; dropped when unset, as Docker does).
fn build_arg_map(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some(("", _)) => anyhow::bail!("invalid --build-arg {a:?}: the name is empty"),
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// Ctrl-C (or SIGTERM) during a build: says so below the progress and exits 130 (143), as a
/// shell reports a process killed by it. Nothing is left half-written: the store's writes are
/// atomic, a RUN step's helper dies with kiln, and the next build reuses every finished step.
/// The signals are blocked before any thread starts (threads inherit the mask) and taken by
/// one thread.
fn on_interrupt() {
    let sigs = [libc::SIGINT, libc::SIGTERM];
    // Already blocked: the command that runs this build (`compose up`) takes them itself.
    if crate::sys::proc::is_blocked(libc::SIGINT) || crate::sys::proc::block_signals(&sigs).is_err()
    {
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = crate::sys::proc::wait_signal(&sigs) {
            let name = if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            eprintln!("\nkiln: build interrupted ({name}): nothing was tagged; finished steps stay cached");
            std::process::exit(128 + sig);
        }
    });
}

/// The Dockerfile's bytes and the name to report it by.
fn read_dockerfile(
    file: Option<&Path>,
    context: &Path,
) -> Result<(String, Option<PathBuf>, Vec<u8>)> {
    match file {
        Some(p) if p == Path::new("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("read the Dockerfile from stdin")?;
            Ok(("Dockerfile".into(), None, buf))
        }
        _ => {
            let path = file
                .map(Path::to_path_buf)
                .unwrap_or_else(|| context.join("Dockerfile"));
            let name = path.display().to_string();
            let name = name.strip_prefix("./").unwrap_or(&name).to_string();
            let bytes = std::fs::read(&path).map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("read Dockerfile {name}"))
                    .context(Hint("give the Dockerfile with -f PATH, or put one named Dockerfile in the context".into()))
            })?;
            Ok((name, Some(path), bytes))
        }
    }
}

pub fn build(ctx: &Ctx, args: BuildArgs) -> Result<i32> {
    // Tags are checked now so a bad -t fails before any work.
    let tags = crate::image::parse_tags(&args.tags)?;
    // Docker's words for a context that is not there.
    if !args.context.is_dir() {
        anyhow::bail!(
            "unable to prepare context: path {:?} {}",
            args.context.display().to_string(),
            if args.context.exists() {
                "is not a directory"
            } else {
                "not found"
            }
        );
    }
    if !args.check {
        return run_build(ctx, args, tags);
    }
    let build_args = build_arg_map(&args.build_args)?;
    let (name, path, bytes) = read_dockerfile(args.file.as_deref(), &args.context)?;
    let store = if ctx.root.join("kiln.db").exists() {
        ctx.store().ok()
    } else {
        None
    };
    let outcome = lint::check(
        store.as_ref(),
        &name,
        path.as_deref(),
        &bytes,
        &args.context,
        build_args,
        args.target.clone(),
    );
    let mut out = String::new();
    let (warnings, error, fail_on_warnings) = match outcome {
        Ok(c) => (c.warnings, None, c.fail_on_warnings),
        Err(lint::Failure { warnings, error }) => (warnings, Some(error), false),
    };
    for w in &warnings {
        let at = if w.line > 0 {
            format!("{name}:{}", w.line)
        } else {
            name.clone()
        };
        out.push_str(&format!("{at}: warning: {}: {}\n", w.rule, w.message));
    }
    if let Some(e) = &error {
        out.push_str(&format!("{e}\n"));
    }
    let failed = error.is_some() || (fail_on_warnings && !warnings.is_empty());
    out.push_str(&match (failed, warnings.len()) {
        (true, _) => "check failed: the build would not succeed\n".to_string(),
        (false, 0) => "check complete, no warnings found\n".to_string(),
        (false, 1) => "check complete, 1 warning\n".to_string(),
        (false, n) => format!("check complete, {n} warnings\n"),
    });
    print!("{out}");
    Ok(if failed { 1 } else { 0 })
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in labels {
        match l.split_once('=') {
            Some(("", _)) | None => anyhow::bail!("invalid --label {l:?}: want KEY=VALUE"),
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    Ok(out)
}

fn run_build(ctx: &Ctx, args: BuildArgs, tags: Vec<String>) -> Result<i32> {
    on_interrupt();
    let build_args = build_arg_map(&args.build_args)?;
    let labels = parse_labels(&args.labels)?;
    let source_date_epoch =
        crate::timefmt::source_date_epoch(build_args.get("SOURCE_DATE_EPOCH").map(String::as_str))
            .map_err(anyhow::Error::msg)?;
    let times = match (&args.timestamp, source_date_epoch) {
        (Some(t), _) => crate::diff::Times::Set(
            crate::timefmt::epoch_seconds(t)
                .map_err(|why| anyhow::anyhow!("invalid --timestamp {t:?}: it {why}"))?,
        ),
        (None, Some(s)) => crate::diff::Times::Clamp(s),
        (None, None) => crate::diff::Times::Keep,
    };
    let (name, path, bytes) = read_dockerfile(args.file.as_deref(), &args.context)?;
    let df =
        Dockerfile::parse(&name, &bytes).map_err(|e| anyhow::anyhow!(lint::format_error(&e)))?;
    let context = Context::open(&args.context, path.as_deref())
        .with_context(|| format!("open build context {}", args.context.display()))?;
    let store = ctx.store()?;
    let dockerfile_id = match &path {
        Some(p) => std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.clone())
            .display()
            .to_string(),
        None => format!("stdin:{}", args.context.display()),
    };
    let asked = match args.snapshotter.as_deref() {
        Some("native") => Some(Snapshotter::Native),
        Some(_) => Some(Snapshotter::Overlay),
        None => None,
    };
    let (mut snapshotter, mut why) = crate::snapshotter::choose(store.root(), asked);
    let mut keep = vec![store.root().to_path_buf(), args.context.clone()];
    keep.extend(path.iter().cloned());
    keep.extend(args.ignore_paths.iter().cloned());
    let (in_place, note) = crate::snapshotter::select_in_place(args.isolation == "none", &keep)
        .map_err(anyhow::Error::msg)?;
    if in_place {
        snapshotter = Snapshotter::InPlace;
        why = note;
    }
    if let (Some(why), false) = (why, args.quiet) {
        eprintln!("kiln: {why}");
    }
    let opts = BuildOptions {
        secrets: secret_map(&args.secrets)?,
        ssh: ssh_map(&args.ssh)?,
        explain: args.explain,
        remote_caches: remote_caches(&args.cache_from, args.quiet)?,
        tags,
        build_args,
        target: args.target.clone(),
        no_cache: args.no_cache,
        network_none: args.network == "none",
        compression: match args.compression.as_str() {
            "gzip" => Compression::Gzip,
            "zstd:plain" => Compression::Zstd,
            _ => Compression::ZstdChunked,
        },
        labels,
        snapshotter,
        times,
        dockerfile_id,
    };
    let mode = if args.quiet {
        "quiet"
    } else {
        args.progress.as_str()
    };
    let render = match mode {
        "quiet" => Render::Quiet,
        "plain" => Render::Plain(Mutex::new(())),
        "tty" => tty_render(),
        _ if std::io::stderr().is_terminal() => tty_render(),
        _ => Render::Plain(Mutex::new(())),
    };
    for w in &df.warnings {
        if !args.quiet {
            eprintln!("{name}:{}: warning: {}: {}", w.line, w.rule, w.message);
        }
    }
    let cache_to = args
        .cache_to
        .as_deref()
        .map(crate::registry::cache::parse_spec)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--cache-to: {e}"))?;
    let t0 = std::time::Instant::now();
    // Bases and --from images the store lacks are pulled (all of them with --pull).
    let bases = Pulling {
        always: args.pull,
        failed: Mutex::new(None),
    };
    let outcome = match crate::builder::build(&store, &df, &context, &opts, &bases, &render) {
        Ok(o) => o,
        Err(e) => {
            if let Some(pull) = bases.failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
                return Err(pull);
            }
            return Err(build_failure(e));
        }
    };
    if !args.quiet {
        for w in &outcome.warnings {
            eprintln!("{name}:{}: warning: {}: {}", w.line, w.rule, w.message);
        }
        let all = outcome.steps;
        let summary = if all > 0 && outcome.cached == all {
            format!("all {all} steps cached")
        } else {
            format!("{} of {all} steps cached", outcome.cached)
        };
        eprintln!(
            "built {} in {:.2}s ({summary})",
            outcome.image.id().short(),
            t0.elapsed().as_secs_f64()
        );
        for t in &opts.tags {
            let r = crate::image::reference::Reference::parse(t)
                .map(|r| r.familiar())
                .unwrap_or_else(|_| t.clone());
            eprintln!("tagged {r}");
        }
    }
    if let Some(r) = cache_to {
        let t = std::time::Instant::now();
        let quiet = |_: &str| {};
        let (steps, digest) =
            crate::registry::cache::export_keys(&store, &outcome.keys, &r, &quiet)
                .with_context(|| format!("--cache-to {}", r.familiar()))?;
        if !args.quiet {
            eprintln!(
                "exported cache to {}: {} steps, {digest} in {:.2}s",
                r.familiar(),
                steps,
                t.elapsed().as_secs_f64()
            );
        }
    }
    println!("{}", outcome.image.id());
    // `--push` (buildx's flag): in the same process, which matters with --isolation=none, where
    // the build replaced the container's files (kiln's own libraries among them).
    if args.push {
        for t in &opts.tags {
            let push = ["push".to_string(), t.clone()];
            let code = super::run_args(ctx, &push)?;
            if code != 0 {
                return Ok(code);
            }
        }
    }
    Ok(0)
}

/// Pulls what the build names and the store lacks, reporting as `docker build` does; keeps the
/// first failure whole (with its hints) for the error report.
struct Pulling {
    always: bool,
    failed: Mutex<Option<anyhow::Error>>,
}

impl crate::builder::Bases for Pulling {
    fn ensure(
        &self,
        store: &kiln_store::Store,
        reference: &str,
    ) -> std::result::Result<(), String> {
        super::ui::pull::ensure_image(store, reference, self.always).map_err(|e| {
            let text = format!("{e:#}");
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.get_or_insert(e);
            text
        })
    }
}

/// Turns a build error into the CLI's error, with the failing RUN's last output lines.
fn build_failure(e: BuildError) -> anyhow::Error {
    match e {
        BuildError::Dockerfile(d) => anyhow::anyhow!(lint::format_error(&d)),
        BuildError::RunFailed {
            file,
            line,
            text,
            code,
            tail,
        } => {
            let mut msg = format!("{file}:{line}: {text}: the command did not complete successfully: exit code {code}");
            if !tail.is_empty() {
                msg.push_str("\n  last output:");
                for l in &tail {
                    msg.push_str(&format!("\n    > {l}"));
                }
            }
            anyhow::anyhow!(msg)
        }
        BuildError::MissingImage { .. } => anyhow::Error::new(e).context(Hint(
            "`kiln images` lists the local images; bring the base in with `kiln pull`, `kiln import` or `kiln load`".into(),
        )),
        e => anyhow::Error::new(e),
    }
}
