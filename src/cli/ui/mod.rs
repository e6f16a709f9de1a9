//! What the command modules share: Docker's table layout and error report, the prune question,
//! `--format` templates, pull progress and "pull if missing". Command modules import this and
//! the CLI root, never each other.

pub mod format;
pub mod pull;

use super::Hint;
use anyhow::Result;
use clap::ValueEnum;
use kiln_store::Compression;

/// `--compression` of `save` and `push`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressionArg {
    /// zstd:chunked: a frame per file and a table of contents (readers of zstd read it as zstd)
    Zstd,
    /// zstd as one stream, for consumers that want the old layout
    #[value(name = "zstd:plain")]
    ZstdPlain,
    Gzip,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::Zstd => Compression::ZstdChunked,
            CompressionArg::ZstdPlain => Compression::Zstd,
            CompressionArg::Gzip => Compression::Gzip,
        }
    }
}

/// `s` cut to at most `max` characters, the last one `…` when it was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let t: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{t}…")
    }
}

/// Loads a compose project (`compose` and `stack` both read one), printing its warnings.
pub fn load_compose(
    files: &[std::path::PathBuf],
    project: Option<&str>,
    profiles: &[String],
) -> Result<crate::compose::Loaded> {
    let o = crate::compose::Options {
        files: files.to_vec(),
        project: project.map(str::to_string),
        profiles: profiles.to_vec(),
        dir: std::env::current_dir()?,
    };
    let loaded = crate::compose::load(&o, std::env::vars())?;
    for w in &loaded.warnings {
        eprintln!("kiln: warning: {w}");
    }
    Ok(loaded)
}

/// The `hint:` line an error deserves: its own [`Hint`], or one for a kind of error users meet.
pub fn hint_for(e: &anyhow::Error) -> Option<String> {
    if let Some(h) = e.downcast_ref::<Hint>() {
        return Some(h.0.clone());
    }
    for cause in e.chain() {
        if let Some(crate::image::ImageError::NotFound(_)) =
            cause.downcast_ref::<crate::image::ImageError>()
        {
            return Some("`kiln images` lists what the store has; `kiln import` or `kiln load` brings an image in".into());
        }
        if let Some(kiln_store::Error::TooNew { .. }) = cause.downcast_ref::<kiln_store::Error>() {
            return Some("use a newer kiln, or another --root".into());
        }
    }
    None
}

/// Prints an error Docker-style: the message, each cause on its own line, then a hint.
pub(crate) fn report(e: &anyhow::Error) {
    let hint = e.downcast_ref::<Hint>().map(|h| h.0.clone());
    let mut chain = e.chain().filter(|c| Some(c.to_string()) != hint);
    if let Some(first) = chain.next() {
        eprintln!("kiln: error: {first}");
    }
    let mut last = String::new();
    for c in chain {
        let s = c.to_string();
        if s != last {
            eprintln!("  caused by: {s}");
        }
        last = s;
    }
    if let Some(h) = hint_for(e) {
        eprintln!("hint: {h}");
    }
}

/// Formats rows as Docker's tabwriter does (columns padded by 3 spaces, last column unpadded).
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
/// Docker's prune question; true when the user said yes (or `-f` was given).
pub(crate) fn confirm(force: bool, warning: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if force {
        return Ok(true);
    }
    eprint!("WARNING! {warning}\nAre you sure you want to continue? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    if std::io::stdin().is_terminal() {
        std::io::stdin().lock().read_line(&mut answer)?;
    }
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        eprintln!("\nnothing removed (pass -f to skip this question)");
    }
    Ok(yes)
}
