//! Execution, per step kind: COPY/ADD and WORKDIR write their change set straight into a fresh
//! snapshot dir; RUN runs in a root the snapshotter prepares ([`super::exec`]).

use super::inputs::{inline_root, Resolved};
use super::stage::StageState;
use super::{copy, exec, step_error, BuildError, Ctx, Event};
use crate::plan::{self, Source, StepKind};
use crate::snapshotter::view::View;
use crate::snapshotter::Active;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What executing a step left: the snapshot dir its changes are in, and for RUN the
/// snapshotter's active root (whose changes the snapshotter reads).
pub(super) struct Executed {
    pub(super) dir: tempfile::TempDir,
    pub(super) active: Option<Active>,
}

/// Executes `step` on `state`. `link_from`: the previous build's snapshot of this COPY, whose
/// unchanged files are hard-linked instead of copied.
pub(super) fn execute(
    ctx: &Ctx<'_>,
    step: &plan::Step,
    state: &StageState,
    resolved: Resolved,
    link_from: Option<PathBuf>,
    n: usize,
) -> Result<Executed, BuildError> {
    let Resolved {
        roots,
        from: from_src,
        binds,
        ..
    } = resolved;
    let dir = ctx.store.prepare_snapshot_dir()?;
    let upper = dir.path().join("fs");
    let view = state.view();
    let active = match &step.kind {
        StepKind::Copy(c) => {
            let roots = match (roots, &from_src) {
                (Some(r), _) => r,
                (None, Some(v)) => {
                    let what = match &c.source {
                        Source::Image(r) => format!("image {r}"),
                        Source::Stage(i) => format!("stage {}", ctx.plan.stages[*i].display_name()),
                        Source::Context => "the context".into(),
                    };
                    let r = copy::select_view(&c.copy.sources, v, &what)
                        .map_err(|e| step_error(ctx, step, e))?;
                    let mut r = copy::apply_parents_exclude(r, c.copy.parents, &c.copy.exclude)
                        .map_err(|e| step_error(ctx, step, e))?;
                    for src in &c.copy.inline {
                        r.push(inline_root(src, ctx.now));
                    }
                    r
                }
                (None, None) => unreachable!("copy sources resolved above"),
            };
            let chown = c
                .copy
                .chown
                .as_deref()
                .map(|s| copy::resolve_chown(s, &view));
            let chmod = c
                .copy
                .chmod
                .as_deref()
                .map(|m| u32::from_str_radix(m, 8))
                .transpose()
                .map_err(|e| step_error(ctx, step, e.to_string()))?;
            let empty = View::default();
            let mut w = copy::Writer::new(
                &upper,
                if c.copy.link { &empty } else { &view },
                copy::WriteOptions {
                    chown,
                    chmod,
                    unpack: c.copy.add && c.copy.unpack != Some(false),
                    now: ctx.now,
                    link_from: link_from.clone(),
                },
            )
            .map_err(|e| step_error(ctx, step, e))?;
            w.copy(&roots, &c.dest)
                .map_err(|e| step_error(ctx, step, e))?;
            w.finish().map_err(|e| step_error(ctx, step, e))?;
            None
        }
        StepKind::Workdir(path, user) => {
            let exists = view.resolve(path, true)?.is_some_and(|f| f.is_dir());
            if !exists {
                let chown = match user.as_str() {
                    u if !u.is_empty() => Some(copy::resolve_chown(u, &view)),
                    _ => None,
                };
                let mut w = copy::Writer::new(
                    &upper,
                    &view,
                    copy::WriteOptions {
                        chown,
                        chmod: None,
                        unpack: false,
                        now: ctx.now,
                        link_from: None,
                    },
                )
                .map_err(|e| step_error(ctx, step, e))?;
                w.ensure_dir(path).map_err(|e| step_error(ctx, step, e))?;
                w.finish().map_err(|e| step_error(ctx, step, e))?;
            }
            None
        }
        StepKind::Run(r) => {
            let network_none = ctx.opts.network_none || r.network == plan::Network::None;
            // Bind sources are copied into the step's scratch files (never into the layer), so
            // the RUN sees exactly what was keyed and `rw` writes are discarded.
            let mut bind_dirs = BTreeMap::new();
            for (i, roots) in &binds {
                let base = dir.path().join("files").join("binds").join(i.to_string());
                std::fs::create_dir_all(&base)?;
                let empty = View::default();
                let mut w = copy::Writer::new(
                    &base,
                    &empty,
                    copy::WriteOptions {
                        chown: None,
                        chmod: None,
                        unpack: false,
                        now: ctx.now,
                        link_from: None,
                    },
                )
                .map_err(|e| step_error(ctx, step, e))?;
                w.copy(roots, "/").map_err(|e| step_error(ctx, step, e))?;
                w.finish().map_err(|e| step_error(ctx, step, e))?;
                let (path, is_dir) = match roots.as_slice() {
                    [r] if !r.is_dir => (base.join(&r.name), false),
                    _ => (base, true),
                };
                bind_dirs.insert(*i, (path, is_dir));
            }
            let out = |line: &str| ctx.progress.event(Event::Output { n, line });
            match exec::run(
                ctx.store,
                &exec::RunRequest {
                    run: r,
                    lowers: &state.lowers,
                    view: &view,
                    snapshot_dir: dir.path(),
                    network_none,
                    snapshotter: ctx.opts.snapshotter.get(),
                    secrets: &ctx.opts.secrets,
                    ssh: &ctx.opts.ssh,
                    binds: &bind_dirs,
                },
                &out,
            ) {
                Ok(active) => Some(active),
                Err(exec::RunError::Exit { code, tail }) => {
                    return Err(BuildError::RunFailed {
                        file: ctx.df.file.clone(),
                        line: step.line,
                        text: step.text.clone(),
                        code,
                        tail,
                    })
                }
                Err(exec::RunError::Setup(m)) => return Err(step_error(ctx, step, m)),
            }
        }
    };
    Ok(Executed { dir, active })
}
