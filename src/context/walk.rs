//! The context walk: every path a build may see, depth first with names sorted, each with its
//! stat tuple.
//!
//! It is the first cost of every build that uses the context, paid per file: with 80,000 files
//! a no-op rebuild is mostly this walk. So each directory is read with raw `getdents64` into one
//! buffer, its names kept in one byte buffer, each entry stat'ed with `statx` relative to the
//! directory's descriptor by its own bytes (no path lookup from the root, only the fields the
//! stat tuple needs), and the only allocation per entry is its path. Subdirectories are walked in
//! parallel, each into a list of its own, and the lists are joined once at the end (each entry
//! moved once).
//! Symlinks are never followed. An excluded directory is entered only when an exception could
//! re-include something below it, and is listed (marked `implied`) only when something was.

use super::{Context, ContextError, Entry, EntryKind};
use rayon::prelude::*;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, RawDir, StatxFlags};
use std::mem::MaybeUninit;

/// One directory's entries, each with its subtree when it is a directory walked into.
struct Walked {
    entries: Vec<(Entry, Option<Walked>)>,
}

pub(super) fn walk(ctx: &Context) -> Result<Vec<Entry>, ContextError> {
    let fd = rustix::fs::open(
        ctx.root(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(ctx, "", e))?;
    let tree = walk_dir(ctx, &fd, "")?;
    let mut out = Vec::with_capacity(count(&tree));
    flatten(tree, &mut out);
    Ok(out)
}

fn err(ctx: &Context, rel: &str, e: rustix::io::Errno) -> ContextError {
    ContextError::Io {
        path: if rel.is_empty() {
            ctx.root().to_path_buf()
        } else {
            ctx.root().join(rel)
        },
        source: e.into(),
    }
}

fn walk_dir(ctx: &Context, fd: &OwnedFd, rel: &str) -> Result<Walked, ContextError> {
    // The names as the directory has them (bytes: a name need not be UTF-8), in one buffer;
    // (start, end) of each. Paths are their lossy UTF-8 form, as they always were.
    let mut names: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 << 10];
    let mut dir = RawDir::new(fd.as_fd(), &mut buf);
    while let Some(e) = dir.next() {
        let e = e.map_err(|e| err(ctx, rel, e))?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let start = names.len();
        names.extend_from_slice(name);
        spans.push((start, names.len()));
    }
    let lossy = |&(a, b): &(usize, usize)| String::from_utf8_lossy(&names[a..b]);
    spans.sort_unstable_by(|x, y| lossy(x).cmp(&lossy(y)));
    let filter = !ctx.matcher().is_empty();
    // Each entry, whether to walk into it, and its name's bytes.
    let mut entries: Vec<(Entry, bool, (usize, usize))> = Vec::with_capacity(spans.len());
    for span in &spans {
        let name = lossy(span);
        let mut path = String::with_capacity(rel.len() + 1 + name.len());
        if !rel.is_empty() {
            path.push_str(rel);
            path.push('/');
        }
        path.push_str(&name);
        let st = rustix::fs::statx(
            fd,
            &names[span.0..span.1],
            AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC,
            StatxFlags::TYPE
                | StatxFlags::MODE
                | StatxFlags::INO
                | StatxFlags::SIZE
                | StatxFlags::MTIME
                | StatxFlags::CTIME,
        )
        .map_err(|e| err(ctx, &path, e))?;
        let mode = u32::from(st.stx_mode);
        let kind = match mode & libc::S_IFMT {
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            libc::S_IFREG => EntryKind::File,
            _ => EntryKind::Other,
        };
        let excluded = filter && ctx.matcher().excludes(&path);
        let descend =
            kind == EntryKind::Dir && (!excluded || ctx.matcher().may_include_below(&path));
        if excluded && !descend {
            continue;
        }
        let ns = |t: rustix::fs::StatxTimestamp| t.tv_sec * 1_000_000_000 + i64::from(t.tv_nsec);
        let stat = kiln_store::StatTuple {
            size: st.stx_size,
            mtime_ns: ns(st.stx_mtime),
            ctime_ns: ns(st.stx_ctime),
            ino: st.stx_ino,
            mode,
        };
        entries.push((
            Entry {
                path,
                kind,
                implied: excluded,
                stat,
            },
            descend,
            *span,
        ));
    }
    drop(buf);
    // Subdirectories in parallel, each opened relative to this one (never following a link).
    let dirs: Vec<(&Entry, (usize, usize))> = entries
        .iter()
        .filter(|(_, d, _)| *d)
        .map(|(e, _, span)| (e, *span))
        .collect();
    let below: Vec<Result<Walked, ContextError>> = dirs
        .par_iter()
        .with_max_len(1)
        .map(|&(e, (a, b))| {
            let sub = rustix::fs::openat(
                fd,
                &names[a..b],
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|er| err(ctx, &e.path, er))?;
            walk_dir(ctx, &sub, &e.path)
        })
        .collect();
    let mut below = below.into_iter();
    let mut out = Vec::with_capacity(entries.len());
    for (e, descend, _) in entries {
        let b = if descend {
            Some(below.next().expect("one walk per directory")?)
        } else {
            None
        };
        out.push((e, b));
    }
    Ok(Walked { entries: out })
}

/// How many entries `flatten` will give (an upper bound: implied directories may be dropped).
fn count(w: &Walked) -> usize {
    w.entries
        .iter()
        .map(|(_, b)| 1 + b.as_ref().map_or(0, count))
        .sum()
}

fn flatten(w: Walked, out: &mut Vec<Entry>) {
    for (e, below) in w.entries {
        let implied = e.implied;
        let at = out.len();
        out.push(e);
        if let Some(b) = below {
            flatten(b, out);
        }
        // An excluded directory is listed only as the parent of something re-included.
        if implied && out.len() == at + 1 {
            out.pop();
        }
    }
}
