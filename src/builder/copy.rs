//! COPY and ADD: selecting sources, the content digest that keys them, and writing them straight
//! into the step's upper directory.
//!
//! Selection follows Docker: a source is a path relative to the context (or the `--from` root),
//! wildcards (`*`, `?`, `[...]`, as Go's filepath.Match, never crossing `/`) may match nothing;
//! a directory source copies its *contents*; a file goes to `DEST/NAME` when DEST ends in `/`,
//! names an existing directory, or there are several sources, else to DEST itself. Context
//! files become root-owned (BuildKit resets ownership), `--from` files keep theirs; `--chown`
//! and `--chmod` override. Missing parents of the destination are created 0755; existing ones
//! are resolved through the parent's merged view (symlinks followed in-root) and copied up with
//! their metadata, as overlayfs would. ADD unpacks local tar archives (plain, gzip, zstd,
//! bzip2, xz) into the destination directory.

use crate::context::dockerignore::Pattern;
use crate::context::hash::Hasher;
use crate::context::{Entry, EntryKind};
use crate::plan::Canon;
use crate::rootfs::{clean, InPath, Root};
use crate::snapshotter::view::{Found, View};
use crate::sys;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

mod select;
pub use select::*;
mod write;
pub use write::*;

/// What a copied item is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(PathBuf),
    /// Device or fifo (from a stage or image).
    Special(u32, u64),
}

/// Where an item's data comes from.
#[derive(Clone, Debug)]
pub enum Data {
    Host(PathBuf),
    Inline(Vec<u8>),
}

/// One item to copy, relative to its source root.
#[derive(Clone, Debug)]
pub struct Item {
    /// Path below the root ("" for a file root itself).
    pub rel: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub data: Data,
    /// blake3 of the content (context files only; the key uses it).
    pub hash: [u8; 32],
    /// Size in bytes (regular files).
    pub size: u64,
    /// Same type, mode and content as in the previous build of this step (see
    /// [`WriteOptions::link_from`]).
    pub unchanged: bool,
}

/// A matched source: a file (copied under its name) or a directory (its contents).
#[derive(Clone, Debug)]
pub struct Root_ {
    pub name: String,
    /// The source's path as selected, relative to its root ("" for the whole context or an
    /// inline heredoc): what `--parents` keeps.
    pub path: String,
    pub is_dir: bool,
    /// Never unpacked, even by ADD (a download without `--unpack=true`, as BuildKit).
    pub no_unpack: bool,
    pub items: Vec<Item>,
}
