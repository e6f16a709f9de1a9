//! The linter behind `kiln build --check`: parse, plan and check the sources a build would read,
//! without executing anything. Findings are [`Warning`]s (BuildKit's rule names) and at most one
//! error, in the words a build would fail with.

use super::{Dockerfile, DockerfileError, Warning};
use crate::context::dockerignore::{clean, Pattern};
use crate::context::{Context, ContextError, EntryKind};
use crate::plan::{self, Plan, PlanOptions, Source, StepKind};
use kiln_store::Store;
use std::collections::BTreeMap;
use std::path::Path;

pub struct Checked {
    pub warnings: Vec<Warning>,
    pub fail_on_warnings: bool,
}

pub struct Failure {
    pub warnings: Vec<Warning>,
    /// Already formatted: `FILE:LINE: error: message` and the excerpt.
    pub error: String,
}

/// `FILE:LINE: error: message` and the line's excerpt.
pub fn format_error(e: &DockerfileError) -> String {
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

/// Parses, plans and lints the Dockerfile `bytes` (named `name`, at `path`) against `context`,
/// without executing anything. Bases the store holds give planning their config; the others are
/// a `BaseImageNotLocal` warning.
pub fn check(
    store: Option<&Store>,
    name: &str,
    path: Option<&Path>,
    bytes: &[u8],
    context: &Path,
    build_args: BTreeMap<String, String>,
    target: Option<String>,
) -> Result<Checked, Failure> {
    let fail = |warnings: Vec<Warning>, error: String| Failure { warnings, error };
    let mut df = Dockerfile::parse(name, bytes).map_err(|e| fail(vec![], format_error(&e)))?;
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
    let first = plan::plan(&df, &opts).map_err(|e| fail(df.warnings.clone(), format_error(&e)))?;
    // Bases the local store has give planning their env, workdir and ONBUILD triggers.
    let mut missing = Vec::new();
    for r in first.image_refs() {
        let found = store.and_then(|s| {
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
        plan::plan(&df, &opts).map_err(|e| fail(df.warnings.clone(), format_error(&e)))?
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
        return Err(fail(df.warnings.clone(), format_error(&e)));
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
                    // A wildcard may match nothing: BuildKit copies with AllowEmptyWildcard.
                    Pattern::new(&rel).map_err(|e| {
                        df.error_at(step.line, format!("{what} source {src:?}: {e}"))
                    })?;
                    true
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
