//! The linter behind `kiln build --check`: parse, plan and check the sources a build would read,
//! without executing anything. Findings are [`Warning`]s (BuildKit's rule names) and at most one
//! error, in the words a build would fail with.

use super::{Dockerfile, DockerfileError, Warning};
use crate::context::dockerignore::Pattern;
use crate::context::{Context, ContextError};
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
    let opts = PlanOptions {
        build_args,
        target,
        ..PlanOptions::default()
    };
    // Bases the local store has give planning their env, workdir and ONBUILD triggers.
    let (plan, missing) = plan::plan_with_bases(&df, &opts, |r, _| {
        let found = store.and_then(|s| {
            let img = crate::image::resolve(s, r).ok()?;
            crate::image::read_config(s, &img.image).ok()
        });
        Ok::<_, DockerfileError>(found.map(|cfg| plan::Config::from(&cfg.config)))
    })
    .map_err(|e| fail(df.warnings.clone(), format_error(&e)))?;
    let mut extra = plan.warnings.clone();
    for r in &missing {
        let line = plan.line_naming(r).unwrap_or(0);
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

/// Every COPY/ADD source from the context must select something the context sends.
/// Every COPY/ADD source from the context must select what a build would: the same rule as the
/// builder's (`context::select::pick`), with the reason said in a linter's words.
fn check_sources(df: &Dockerfile, plan: &Plan, ctx: &Context) -> Result<(), DockerfileError> {
    use crate::context::select::{clean_source, has_wildcard, is_git, is_url, pick};
    let mut entries: Option<Vec<crate::context::Entry>> = None;
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
                if (c.copy.add && is_url(src)) || is_git(src) {
                    continue;
                }
                let Some(rel) = clean_source(src) else {
                    return Err(df.error_at(
                        step.line,
                        format!("{what} source {src:?} is outside the build context"),
                    ));
                };
                if has_wildcard(&rel) {
                    // A bad pattern is an error even where it would match nothing.
                    Pattern::new(&rel).map_err(|e| {
                        df.error_at(step.line, format!("{what} source {src:?}: {e}"))
                    })?;
                }
                let list = match &entries {
                    Some(l) => l,
                    None => entries.get_or_insert(
                        ctx.walk()
                            .map_err(|e| df.error_at(step.line, e.to_string()))?,
                    ),
                };
                let Err(e) = pick(std::slice::from_ref(src), list, ctx.root()) else {
                    continue;
                };
                let why = if ctx.excludes(&rel) {
                    format!(
                        "{what} source {src:?} is excluded by {}",
                        ctx.ignore_file()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| ".dockerignore".into())
                    )
                } else if e.contains("not found in the build context") {
                    format!(
                        "{what} source {src:?} matches no file in the build context {}",
                        ctx.root().display()
                    )
                } else {
                    format!("{what} source {src:?}: {e}")
                };
                return Err(df.error_at(step.line, why));
            }
        }
    }
    Ok(())
}
