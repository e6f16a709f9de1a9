//! Image commands: import, load, save, images, tag, rmi, inspect.

use super::ui::{table, CompressionArg};
use super::{Ctx, Hint};
use crate::image::archive::{self, ArchiveFormat, SaveItem};
use crate::image::import::{import_tarball, ImportOptions};
use crate::image::reference::Reference;
use crate::image::{familiar_tags, parse_tags, read_config, read_manifest, resolve};
use crate::timefmt;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use kiln_store::{Compression, GcOptions, ImageSummary, Store};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

mod archives;
mod diff;
pub use archives::*;
pub use diff::*;

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Show only images of this REPOSITORY[:TAG]
    reference: Option<String>,
    /// Only show image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Show untagged images too (kiln always lists them; accepted for Docker compatibility)
    #[arg(short, long)]
    all: bool,
    /// Filter: dangling=true|false, reference=PATTERN (`busybox`, `*/app:v*`); repeatable
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// Output format: table (default), json (one object per line), or a Go template
    /// (`{{.Repository}}:{{.Tag}}`, `table {{.ID}}\t{{.Size}}`)
    #[arg(long, default_value = "table")]
    format: String,
}

struct Row {
    repository: String,
    tag: String,
    image: ImageSummary,
}

pub fn images(ctx: &Ctx, a: ImagesArgs) -> Result<i32> {
    let store = ctx.store()?;
    let filter = match &a.reference {
        Some(f) => {
            let r = Reference::parse(f)?;
            Some((r.name(), r.tag.clone()))
        }
        None => None,
    };
    let mut rows = Vec::new();
    for mut image in store.image_list()? {
        let tags = std::mem::take(&mut image.tags);
        if tags.is_empty() {
            if filter.is_none() {
                rows.push(Row {
                    repository: "<none>".into(),
                    tag: "<none>".into(),
                    image: image.clone(),
                });
            }
            continue;
        }
        for t in tags {
            let Ok(r) = Reference::parse(&t) else {
                continue;
            };
            if let Some((name, tag)) = &filter {
                if r.name() != *name || tag.as_ref().is_some_and(|t| r.tag.as_ref() != Some(t)) {
                    continue;
                }
            }
            rows.push(Row {
                repository: r.familiar_name(),
                tag: r.tag.clone().unwrap_or_default(),
                image: image.clone(),
            });
        }
    }
    // --filter: dangling (untagged) and reference patterns (Docker's path.Match on the name,
    // with or without the tag).
    let mut dangling: Option<bool> = None;
    let mut patterns: Vec<String> = Vec::new();
    for f in &a.filter {
        match f.split_once('=') {
            Some(("dangling", v)) => {
                dangling = Some(match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("invalid filter 'dangling={v}': use true or false"),
                })
            }
            Some(("reference", v)) => patterns.push(v.to_string()),
            _ => {
                bail!("invalid filter {f:?}: kiln knows dangling=true|false and reference=PATTERN")
            }
        }
    }
    rows.retain(|r| {
        let untagged = r.repository == "<none>";
        dangling.is_none_or(|d| d == untagged)
            && (patterns.is_empty()
                || (!untagged
                    && patterns.iter().any(|p| {
                        glob_match(p, &r.repository)
                            || glob_match(p, &format!("{}:{}", r.repository, r.tag))
                    })))
    });
    rows.sort_by(|x, y| {
        y.image
            .created
            .cmp(&x.image.created)
            .then(x.repository.cmp(&y.repository))
            .then(x.tag.cmp(&y.tag))
    });
    let id = |i: &ImageSummary| {
        if a.no_trunc {
            i.id().to_string()
        } else {
            i.id().short()
        }
    };
    let mut out = String::new();
    let now = kiln_store::store::now();
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            if seen.insert(r.image.id()) {
                out.push_str(&id(&r.image));
                out.push('\n');
            }
        }
    } else if a.format != "table" {
        let mut items = Vec::new();
        for r in &rows {
            items.push(serde_json::json!({
                "ID": id(&r.image),
                "Repository": r.repository,
                "Tag": r.tag,
                "Digest": r.image.manifest.to_string(),
                "CreatedAt": r.image.created.map(timefmt::rfc3339).unwrap_or_default(),
                "CreatedSince": r.image.created.map(|c| timefmt::ago(c, now)).unwrap_or_else(|| "N/A".into()),
                "Size": timefmt::human_size(r.image.size),
            }));
        }
        if a.format == "json" {
            for v in &items {
                out.push_str(&v.to_string());
                out.push('\n');
            }
        } else {
            let headers = serde_json::json!({
                "ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
                "CreatedAt": "CREATED AT", "CreatedSince": "CREATED", "Size": "SIZE",
            });
            out = super::ui::format::render(&a.format, &items, &headers)?;
        }
    } else {
        let mut t = vec![vec![
            "REPOSITORY".into(),
            "TAG".into(),
            "IMAGE ID".into(),
            "CREATED".into(),
            "SIZE".into(),
        ]];
        for r in &rows {
            t.push(vec![
                r.repository.clone(),
                r.tag.clone(),
                id(&r.image),
                r.image
                    .created
                    .map(|c| timefmt::ago(c, now))
                    .unwrap_or_else(|| "N/A".into()),
                timefmt::human_size(r.image.size),
            ]);
        }
        out = table(&t);
    }
    print!("{out}");
    Ok(0)
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// SOURCE_IMAGE[:TAG] or image ID
    source: String,
    /// TARGET_IMAGE[:TAG]
    target: String,
}

pub fn tag(ctx: &Ctx, a: TagArgs) -> Result<i32> {
    let target = parse_tags(std::slice::from_ref(&a.target))?.remove(0);
    let store = ctx.store()?;
    let src = resolve(&store, &a.source)?;
    store.set_ref(&target, &src.image.manifest.digest)?;
    Ok(0)
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Images to remove (name, name:tag or ID)
    #[arg(required = true)]
    images: Vec<String>,
    /// Untag an image with several tags by ID, and untag one that containers use
    #[arg(short, long)]
    force: bool,
}

pub fn rmi(ctx: &Ctx, a: RmiArgs) -> Result<i32> {
    let store = ctx.store()?;
    let mut failed = false;
    let mut deleted = false;
    for name in &a.images {
        match rmi_one(&store, name, a.force) {
            Ok(d) => deleted |= d,
            Err(e) => {
                super::ui::report(&e);
                failed = true;
            }
        }
    }
    // Reclaim the space now if an image went and no build or import is in flight; `system
    // prune` does it otherwise. Removing a tag alone frees nothing.
    if deleted {
        store.gc(GcOptions {
            prune_dangling: false,
            wait: false,
        })?;
    }
    Ok(if failed { 1 } else { 0 })
}

/// Removes one image or tag; true if an image was deleted.
fn rmi_one(store: &Store, name: &str, force: bool) -> Result<bool> {
    let removed = crate::image::remove(store, name, force)?;
    for t in &removed.untagged {
        let shown = Reference::parse(t)
            .map(|r| r.familiar())
            .unwrap_or_else(|_| t.clone());
        println!("Untagged: {shown}");
    }
    if let Some(id) = removed.deleted {
        println!("Deleted: {id}");
    }
    Ok(removed.deleted.is_some())
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Format the output with a Go template (`{{.State.Status}}`, `{{json .Config}}`)
    #[arg(short, long)]
    format: Option<String>,
    /// Containers or images to inspect
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn inspect(ctx: &Ctx, a: InspectArgs) -> Result<i32> {
    let store = ctx.store()?;
    let mut out = Vec::new();
    let mut failed = false;
    for name in &a.images {
        // A container's name or ID first, as Docker does; then an image.
        if let Ok(row) = crate::container::resolve(&store, name) {
            out.push(crate::container::inspect::inspect(&store, row)?);
            continue;
        }
        match inspect_one(&store, name) {
            Ok(v) => out.push(v),
            Err(e) => {
                super::ui::report(&e);
                failed = true;
            }
        }
    }
    match &a.format {
        Some(f) => print!(
            "{}",
            super::ui::format::render(f, &out, &serde_json::json!({}))?
        ),
        None => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(if failed { 1 } else { 0 })
}

fn inspect_one(store: &Store, name: &str) -> Result<serde_json::Value> {
    let r = resolve(store, name)?;
    let img = &r.image;
    let config = read_config(store, img)?;
    let manifest = read_manifest(store, img)?;
    let repo_digests: Vec<String> = store
        .refs_of(&img.manifest.digest)?
        .iter()
        .filter_map(|t| Reference::parse(t).ok())
        .map(|r| format!("{}@{}", r.familiar_name(), img.manifest.digest))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok(serde_json::json!({
        "Id": img.id().to_string(),
        "RepoTags": familiar_tags(store, img)?,
        "RepoDigests": repo_digests,
        "Created": config.created,
        "Author": config.author.clone().unwrap_or_default(),
        "Architecture": config.architecture,
        "Os": config.os,
        "Variant": config.variant,
        "Size": img.size(),
        "Config": config.config,
        "RootFS": {"Type": config.rootfs.kind, "Layers": config.rootfs.diff_ids},
        "History": config.history,
        "Manifest": {
            "Digest": img.manifest.digest.to_string(),
            "MediaType": img.manifest.media_type,
            "Size": img.manifest.size,
            "Config": manifest.config,
            "Layers": manifest.layers,
        },
    }))
}

/// Go's `path.Match` for the patterns `images --filter reference=` takes: `*` any run of
/// characters but `/`, `?` one such character, everything else literal.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len())
                .take_while(|i| *i == 0 || n[i - 1] != '/')
                .any(|i| go(&p[1..], &n[i..])),
            Some('?') => n.first().is_some_and(|c| *c != '/') && go(&p[1..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Do not truncate the output
    #[arg(long)]
    no_trunc: bool,
    /// Only the image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Sizes and dates in a machine-readable form (bytes, RFC 3339)
    #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set)]
    human: bool,
    image: String,
}

/// `kiln history`: the image's history entries, newest first, with each layer's size, as
/// `docker history` shows them (`<missing>` for the entries below the image itself).
pub fn history(ctx: &Ctx, a: HistoryArgs) -> Result<i32> {
    let store = ctx.store()?;
    let r = resolve(&store, &a.image)?;
    let config = read_config(&store, &r.image)?;
    let mut layers = r.image.layers.iter();
    let now = kiln_store::store::now();
    let mut rows = Vec::new();
    for h in &config.history {
        let size = if h.empty_layer {
            0
        } else {
            layers.next().map_or(0, |l| l.uncompressed_size)
        };
        let created = h
            .created
            .as_deref()
            .and_then(|c| timefmt::parse_rfc3339(c).ok());
        rows.push((
            created,
            h.created_by.clone().unwrap_or_default(),
            size,
            h.comment.clone(),
        ));
    }
    rows.reverse();
    let id = r.image.id();
    if a.quiet {
        for (i, _) in rows.iter().enumerate() {
            println!(
                "{}",
                if i == 0 {
                    id.short()
                } else {
                    "<missing>".into()
                }
            );
        }
        return Ok(0);
    }
    let mut out = vec![vec![
        "IMAGE".to_string(),
        "CREATED".into(),
        "CREATED BY".into(),
        "SIZE".into(),
        "COMMENT".into(),
    ]];
    for (i, (created, by, size, comment)) in rows.into_iter().enumerate() {
        let image = match (i, a.no_trunc) {
            (0, true) => id.to_string(),
            (0, false) => id.short(),
            _ => "<missing>".into(),
        };
        let by = if a.no_trunc || by.chars().count() <= 45 {
            by
        } else {
            format!("{}…", by.chars().take(44).collect::<String>())
        };
        let (created, size) = if a.human {
            (
                created.map_or("N/A".into(), |c| timefmt::ago(c, now)),
                timefmt::human_size(size),
            )
        } else {
            (
                created.map_or("N/A".into(), timefmt::rfc3339),
                size.to_string(),
            )
        };
        out.push(vec![image, created, by, size, comment.unwrap_or_default()]);
    }
    print!("{}", table(&out));
    Ok(0)
}

#[derive(Args, Debug)]
pub struct ImagePruneArgs {
    /// Remove every image no container uses, not only untagged ones
    #[arg(short, long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

/// `kiln image prune`: removes untagged images (with `-a`, every image) that no container
/// uses, then reclaims their space, as `docker image prune`.
pub fn prune(ctx: &Ctx, a: ImagePruneArgs) -> Result<i32> {
    let warning = if a.all {
        "This will remove all images without at least one container associated to them."
    } else {
        "This will remove all dangling images."
    };
    if !super::ui::confirm(a.force, warning)? {
        return Ok(1);
    }
    let store = ctx.store()?;
    let mut deleted = Vec::new();
    for image in store.images()? {
        let m = image.manifest.digest;
        let tags = store.refs_of(&m)?;
        if (!tags.is_empty() && !a.all) || !store.containers().using(&m)?.is_empty() {
            continue;
        }
        for t in &tags {
            store.remove_ref(t)?;
            deleted.push(format!(
                "untagged: {}",
                Reference::parse(t)
                    .map(|r| r.familiar())
                    .unwrap_or_else(|_| t.clone())
            ));
        }
        store.delete_image(&m)?;
        deleted.push(format!("deleted: {}", image.id()));
    }
    let report = store.gc(GcOptions {
        prune_dangling: false,
        wait: true,
    })?;
    if !deleted.is_empty() {
        println!("Deleted Images:");
        for d in &deleted {
            println!("{d}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        timefmt::human_size(report.map_or(0, |r| r.bytes_reclaimed))
    );
    Ok(0)
}
