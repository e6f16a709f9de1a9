//! `kiln build`. With `--check`: parse, plan and lint without executing anything, printing each
//! finding as `FILE:LINE: severity: message`; exit 0 when the file would build, 1 otherwise.

use anyhow::{Context as _, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Ctx, Hint};
use crate::context::dockerignore::{clean, Pattern};
use crate::context::{Context, ContextError, EntryKind};
use crate::dockerfile::{Dockerfile, DockerfileError, Warning};
use crate::plan::{self, Plan, PlanOptions, Source, StepKind};

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
    /// The build context directory
    context: PathBuf,
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
    if !args.check {
        return Err(anyhow::anyhow!("executing builds is not available yet").context(Hint(
            "`kiln build --check CONTEXT` parses, plans and lints a Dockerfile without building".into(),
        )));
    }
    // Tags are checked now so a bad -t fails before any work.
    crate::image::parse_tags(&args.tags)?;
    let build_args = build_arg_map(&args.build_args)?;
    let (name, path, bytes) = read_dockerfile(args.file.as_deref(), &args.context)?;
    let outcome = check(
        ctx,
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
        Err(Failure { warnings, error }) => (warnings, Some(error), false),
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

struct Checked {
    warnings: Vec<Warning>,
    fail_on_warnings: bool,
}

struct Failure {
    warnings: Vec<Warning>,
    /// Already formatted: `FILE:LINE: error: message` and the excerpt.
    error: String,
}

fn fmt_df_error(e: &DockerfileError) -> String {
    let at = if e.line > 0 {
        format!("{}:{}", e.file, e.line)
    } else {
        e.file.clone()
    };
    let mut s = format!("{at}: error: {}", e.message);
    if !e.excerpt.is_empty() && e.line > 0 {
        s.push_str(&format!("\n  {:>4} | {}", e.line, e.excerpt));
    }
    s
}

fn check(
    ctx: &Ctx,
    name: &str,
    path: Option<&Path>,
    bytes: &[u8],
    context: &Path,
    build_args: BTreeMap<String, String>,
    target: Option<String>,
) -> Result<Checked, Failure> {
    let fail = |warnings: Vec<Warning>, error: String| Failure { warnings, error };
    let mut df = Dockerfile::parse(name, bytes).map_err(|e| fail(vec![], fmt_df_error(&e)))?;
    let ctxdir = Context::open(context, path).map_err(|e| {
        let msg = match &e {
            ContextError::Pattern { .. } => format!("{name}: error: {e}"),
            _ => format!("{}: error: {e}", context.display()),
        };
        fail(df.warnings.clone(), msg)
    })?;
    let mut opts = PlanOptions {
        build_args,
        target,
        ..PlanOptions::default()
    };
    let first = plan::plan(&df, &opts).map_err(|e| fail(df.warnings.clone(), fmt_df_error(&e)))?;
    // Bases the local store has give planning their env, workdir and ONBUILD triggers.
    let mut missing = Vec::new();
    let store = if ctx.root.join("kiln.db").exists() {
        ctx.store().ok()
    } else {
        None
    };
    for r in first.image_refs() {
        let found = store.as_ref().and_then(|s| {
            let img = crate::image::resolve(s, &r).ok()?;
            crate::image::read_config(s, &img.image).ok()
        });
        match found {
            Some(cfg) => {
                opts.bases
                    .insert(r.clone(), plan::Config::from(&cfg.config));
            }
            None => missing.push(r),
        }
    }
    let plan = if opts.bases.is_empty() {
        first
    } else {
        plan::plan(&df, &opts).map_err(|e| fail(df.warnings.clone(), fmt_df_error(&e)))?
    };
    let mut extra = plan.warnings.clone();
    for r in &missing {
        let line = from_line(&plan, r).unwrap_or(0);
        extra.push(Warning {
            rule: "BaseImageNotLocal",
            message: format!(
                "image {r:?} is not in the local store; the build will need it (kiln pull, kiln import or kiln load)"
            ),
            line,
        });
    }
    df.add_warnings(extra);
    if let Err(e) = check_sources(&df, &plan, &ctxdir) {
        return Err(fail(df.warnings.clone(), fmt_df_error(&e)));
    }
    Ok(Checked {
        warnings: df.warnings.clone(),
        fail_on_warnings: df.check.error,
    })
}

fn from_line(plan: &Plan, r: &str) -> Option<usize> {
    plan.stages.iter().find_map(|s| match &s.base {
        plan::Base::Image(i) if i == r => Some(s.line),
        _ => s.steps.iter().find_map(|st| match &st.kind {
            StepKind::Copy(c) if c.source == Source::Image(r.to_string()) => Some(st.line),
            _ => None,
        }),
    })
}

/// Every COPY/ADD source from the context must select something the context sends.
fn check_sources(df: &Dockerfile, plan: &Plan, ctx: &Context) -> Result<(), DockerfileError> {
    let mut entries: Option<Vec<(String, EntryKind)>> = None;
    for stage in &plan.stages {
        for step in &stage.steps {
            let StepKind::Copy(c) = &step.kind else {
                continue;
            };
            if c.source != Source::Context {
                continue;
            }
            let what = if c.copy.add { "ADD" } else { "COPY" };
            for src in &c.copy.sources {
                if c.copy.add && (src.contains("://") || src.starts_with("git@")) {
                    continue;
                }
                let rel = clean(src.trim_start_matches('/'));
                if rel == ".." || rel.starts_with("../") {
                    return Err(df.error_at(
                        step.line,
                        format!("{what} source {src:?} is outside the build context"),
                    ));
                }
                if rel == "." {
                    continue;
                }
                let list = match &entries {
                    Some(l) => l,
                    None => {
                        let walked = ctx
                            .walk()
                            .map_err(|e| df.error_at(step.line, e.to_string()))?;
                        entries
                            .get_or_insert(walked.into_iter().map(|e| (e.path, e.kind)).collect())
                    }
                };
                let wildcard = rel.contains(['*', '?', '[']);
                let found = if wildcard {
                    let p = Pattern::new(&rel).map_err(|e| {
                        df.error_at(step.line, format!("{what} source {src:?}: {e}"))
                    })?;
                    p.is_some_and(|p| list.iter().any(|(path, _)| p.matches(path)))
                } else {
                    list.iter().any(|(path, _)| *path == rel)
                };
                if !found {
                    let why = if ctx.excludes(&rel) {
                        format!(
                            "{what} source {src:?} is excluded by {}",
                            ctx.ignore_file()
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|| ".dockerignore".into())
                        )
                    } else {
                        format!(
                            "{what} source {src:?} matches no file in the build context {}",
                            ctx.root().display()
                        )
                    };
                    return Err(df.error_at(step.line, why));
                }
            }
        }
    }
    Ok(())
}
