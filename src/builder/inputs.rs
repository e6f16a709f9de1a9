//! Input resolution: what a step reads, and its part of the key. COPY/ADD: the selected context
//! files (through the stat cache), downloads, heredocs, or a `--from` stage or image; RUN: what
//! each bind mount exposes.

use super::explain::{file_summary, Summary};
use super::stage::StageState;
use super::{copy, remote, step_error, BuildError, Ctx, Event};
use crate::context::Entry;
use crate::frontend::mount::MountKind;
use crate::image::ImageError;
use crate::key::schema::{self, BindSource, Download};
use crate::plan::{self, Source, StepKind};
use crate::snapshotter::view::View;
use std::path::PathBuf;
use std::sync::Mutex;

/// A step's resolved inputs.
pub(super) struct Resolved {
    /// Its part of the key.
    pub(super) inputs: schema::Inputs,
    /// What the cache row keeps for explaining the next miss.
    pub(super) summary: Summary,
    /// COPY/ADD from the context, downloads or heredocs: the selected sources.
    pub(super) roots: Option<Vec<copy::Root_>>,
    /// COPY --from: the source's view (selected when the step runs).
    pub(super) from: Option<View>,
    /// RUN bind mounts: (mount index, the selected sources).
    pub(super) binds: Vec<(usize, Vec<copy::Root_>)>,
}

/// Resolves `step`'s inputs on top of `state`; `n` is its progress number.
pub(super) fn resolve(
    ctx: &Ctx<'_>,
    step: &plan::Step,
    results: &[Mutex<Option<StageState>>],
    n: usize,
) -> Result<Resolved, BuildError> {
    let mut inputs = schema::Inputs::new();
    let mut summary = Summary {
        definition: blake3::hash(step.definition.as_bytes())
            .to_hex()
            .to_string(),
        ..Default::default()
    };
    let mut roots: Option<Vec<copy::Root_>> = None;
    let mut from_src: Option<View> = None;
    let mut binds: Vec<(usize, Vec<copy::Root_>)> = Vec::new();
    match &step.kind {
        StepKind::Copy(c) => {
            if let Some(g) = c.copy.sources.iter().find(|s| remote::is_git(s)) {
                return Err(step_error(
                    ctx,
                    step,
                    format!("git sources are not supported yet ({g}): clone the repository in a RUN step of an earlier stage and COPY --from it"),
                ));
            }
            let urls: Vec<&String> = c
                .copy
                .sources
                .iter()
                .filter(|s| remote::is_url(s))
                .collect();
            if !urls.is_empty() && (!c.copy.add || !matches!(c.source, Source::Context)) {
                return Err(step_error(
                    ctx,
                    step,
                    "a URL source needs ADD, without --from",
                ));
            }
            if c.copy.checksum.is_some() && urls.len() != c.copy.sources.len() {
                return Err(step_error(ctx, step, "--checksum is only for URL sources"));
            }
            match &c.source {
                Source::Context => {
                    let entries = context_entries(ctx, step)?;
                    let locals: Vec<String> = c
                        .copy
                        .sources
                        .iter()
                        .filter(|s| !remote::is_url(s))
                        .cloned()
                        .collect();
                    let r = if locals.is_empty() {
                        Vec::new()
                    } else {
                        copy::select_context(&locals, entries, &ctx.hasher)
                            .map_err(|e| step_error(ctx, step, e))?
                    };
                    let mut r = copy::apply_parents_exclude(r, c.copy.parents, &c.copy.exclude)
                        .map_err(|e| step_error(ctx, step, e))?;
                    // Downloads: keyed by content, name and Last-Modified (BuildKit's http
                    // cache key), re-validated on every build.
                    let mut fetched = Vec::new();
                    for url in &urls {
                        let say = |line: &str| ctx.progress.event(Event::Output { n, line });
                        let f =
                            remote::fetch(ctx.store.root(), url, c.copy.checksum.as_deref(), &say)
                                .map_err(|e| step_error(ctx, step, e))?;
                        r.push(url_root(&f, c.copy.unpack == Some(true)));
                        fetched.push((url, f));
                    }
                    let downloads: Vec<Download<'_>> = fetched
                        .iter()
                        .map(|(url, f)| Download {
                            url,
                            sha256: &f.sha256,
                            name: &f.name,
                            last_modified: f.mtime,
                        })
                        .collect();
                    inputs.downloads(&downloads);
                    for src in &c.copy.inline {
                        r.push(inline_root(src, ctx.now));
                    }
                    tracing::debug!("context hashed");
                    inputs.files(&copy::inputs_digest(&r));
                    roots = Some(r);
                }
                other => {
                    let (view, identity) = from_view(ctx, other, results)?;
                    inputs.from_source(&identity);
                    summary.from = Some(identity);
                    from_src = Some(view);
                }
            }
        }
        StepKind::Run(r) => {
            // Bind mounts are keyed by what they expose: the selected context files' digests,
            // or a stage's key / an image's digest with the source path. A cache mount's
            // `from` seeds it and is not keyed: cache contents never are.
            let mut from_sources = r.mount_sources.iter();
            for (i, m) in r.mounts.iter().enumerate() {
                let (source, seeds_cache) = match &m.kind {
                    MountKind::Bind { source, .. } => (source.as_str(), false),
                    MountKind::Cache {
                        source,
                        from: Some(_),
                        ..
                    } => (source.as_str(), true),
                    _ => continue,
                };
                let (roots, identity, files) = if let Some(from) = m.from() {
                    let src = from_sources
                        .next()
                        .ok_or_else(|| BuildError::Internal("mount source not resolved".into()))?;
                    let (view, identity) = from_view(ctx, src, results)?;
                    let what = format!("the --mount from={from}");
                    let r = copy::select_view(&[source.to_string()], &view, &what)
                        .map_err(|e| step_error(ctx, step, e))?;
                    (r, Some(identity), None)
                } else {
                    let entries = context_entries(ctx, step)?;
                    let r = copy::select_context(&[source.to_string()], entries, &ctx.hasher)
                        .map_err(|e| step_error(ctx, step, format!("--mount=type=bind: {e}")))?;
                    summary.files.extend(file_summary(&r));
                    let files = copy::inputs_digest(&r);
                    (r, None, Some(files))
                };
                // A cache mount's seed is not keyed: cache contents never are.
                if !seeds_cache {
                    let src = match (&identity, &files) {
                        (Some(identity), _) => BindSource::From {
                            identity,
                            path: source,
                        },
                        (None, Some(files)) => BindSource::Context(files),
                        (None, None) => unreachable!("a bind source is a context or --from"),
                    };
                    inputs.bind_mount(i, src);
                }
                binds.push((i, roots));
            }
            if r.insecure {
                return Err(step_error(
                    ctx,
                    step,
                    "RUN --security=insecure is not supported",
                ));
            }
            for (k, v) in &r.env {
                if !r.unkeyed.contains(k) {
                    summary.env.insert(k.clone(), v.clone());
                }
            }
        }
        StepKind::Workdir(..) => {}
    }
    Ok(Resolved {
        inputs,
        summary,
        roots,
        from: from_src,
        binds,
    })
}

/// The build context's entries (after .dockerignore), walked once for the whole build by
/// whichever step needs them first.
pub(super) fn context_entries<'c>(
    ctx: &'c Ctx<'_>,
    step: &plan::Step,
) -> Result<&'c [Entry], BuildError> {
    ctx.entries
        .get_or_init(|| ctx.context.walk().map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| step_error(ctx, step, e.clone()))
}

/// The view of a `--from` source and its identity.
pub(super) fn from_view(
    ctx: &Ctx<'_>,
    src: &Source,
    results: &[Mutex<Option<StageState>>],
) -> Result<(View, String), BuildError> {
    match src {
        Source::Stage(i) => {
            let s = results[*i]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or_else(|| BuildError::Internal("source stage did not run".into()))?;
            Ok((s.view(), format!("stage:{}", s.key.to_hex())))
        }
        Source::Image(r) => {
            let img = &ctx.images[r];
            let snaps =
                crate::snapshotter::unpack_image(ctx.store, img).map_err(ImageError::from)?;
            let lowers: Vec<PathBuf> = snaps
                .iter()
                .rev()
                .map(|s| ctx.store.snapshot_fs(s))
                .collect();
            Ok((View::new(lowers), format!("image:{}", img.manifest.digest)))
        }
        Source::Context => Ok((View::default(), "context".into())),
    }
}

/// A source that is one regular file owned by root, copied under `name`.
fn file_root(
    name: &str,
    mode: u32,
    mtime: i64,
    data: copy::Data,
    hash: [u8; 32],
    size: u64,
) -> copy::Root_ {
    copy::Root_ {
        name: name.to_string(),
        path: String::new(),
        no_unpack: false,
        is_dir: false,
        items: vec![copy::Item {
            rel: String::new(),
            kind: copy::Kind::File,
            mode,
            uid: 0,
            gid: 0,
            mtime: (mtime, 0),
            data,
            hash,
            size,
            unchanged: false,
        }],
    }
}

/// A download: mode 0600, Last-Modified mtime, unpacked only with `--unpack=true`.
fn url_root(f: &remote::Fetched, unpack: bool) -> copy::Root_ {
    let mut r = file_root(
        &f.name,
        0o600,
        f.mtime,
        copy::Data::Host(f.path.clone()),
        f.blake3_bytes(),
        f.size,
    );
    r.no_unpack = !unpack;
    r
}

pub(super) fn inline_root(
    src: &crate::frontend::instructions::InlineSource,
    now: i64,
) -> copy::Root_ {
    file_root(
        &src.path,
        0o644,
        now,
        copy::Data::Inline(src.data.clone().into_bytes()),
        *blake3::hash(src.data.as_bytes()).as_bytes(),
        src.data.len() as u64,
    )
}
