//! The key schema: every field a step key covers, by name, and the one function that writes each.
//!
//! A key is `blake3(KEY_VERSION | parent | definition | inputs)` ([`super::step_key`]). The
//! definition comes from the planner (what the Dockerfile says, after expansion); the inputs from
//! the builder (what the step reads: files, downloads, other stages). Tags are the field numbers
//! of the canonical encoding; they never change meaning within a [`super::KEY_VERSION`].

use super::{step_key, Canon, StepKey};

/// FROM: the base (a stage's first key).
pub mod from {
    pub const KIND: u8 = 0;
    pub const IDENTITY: u8 = 1;
    pub const PLATFORM: u8 = 2;
}

/// WORKDIR.
pub mod workdir {
    pub const KIND: u8 = 0;
    pub const PATH: u8 = 1;
    /// Only written when USER is set (the new directories' owner).
    pub const OWNER: u8 = 2;
}

/// RUN.
pub mod run {
    pub const KIND: u8 = 0;
    pub const ARGV: u8 = 1;
    pub const SCRIPT: u8 = 2;
    pub const ENV: u8 = 3;
    pub const WORKDIR: u8 = 4;
    pub const USER: u8 = 5;
    pub const NETWORK: u8 = 6;
    pub const INSECURE: u8 = 7;
    pub const MOUNTS: u8 = 8;
    /// Each `--mount`, inside [`MOUNTS`].
    pub mod mount {
        pub const TYPE: u8 = 0;
        pub const FIELDS: u8 = 1;
    }
}

/// COPY and ADD.
pub mod copy {
    pub const KIND: u8 = 0;
    pub const SOURCES: u8 = 1;
    pub const DEST: u8 = 2;
    pub const CHOWN: u8 = 3;
    pub const CHMOD: u8 = 4;
    pub const LINK: u8 = 5;
    pub const PARENTS: u8 = 6;
    pub const EXCLUDE: u8 = 7;
    pub const CHECKSUM: u8 = 8;
    pub const KEEP_GIT_DIR: u8 = 9;
    pub const UNPACK: u8 = 10;
    pub const HEREDOCS: u8 = 11;
    /// Each heredoc source, inside [`HEREDOCS`].
    pub mod heredoc {
        pub const PATH: u8 = 0;
        pub const DATA: u8 = 1;
    }
}

/// What a step reads, resolved by the builder.
pub mod input {
    /// The selected context files ([`super::SelectedFiles`]).
    pub const FILES: u8 = 0;
    /// A `--from` stage key or image digest.
    pub const FROM: u8 = 1;
    /// A RUN bind mount's source.
    pub const BIND_MOUNT: u8 = 2;
    /// ADD's downloads.
    pub const URLS: u8 = 4;
    /// `COPY --link --chown`: the owner resolved to numbers in the base.
    pub const LINK_OWNER: u8 = 5;
    /// Inside [`BIND_MOUNT`].
    pub mod bind {
        pub const INDEX: u8 = 0;
        pub const FROM: u8 = 1;
        pub const SOURCE: u8 = 2;
        pub const FILES: u8 = 3;
    }
    /// Inside [`URLS`], per download.
    pub mod url {
        pub const URL: u8 = 0;
        pub const SHA256: u8 = 1;
        pub const NAME: u8 = 2;
        pub const LAST_MODIFIED: u8 = 3;
    }
    /// Inside [`FILES`]: per source root, then per file.
    pub mod files {
        pub const ROOT: u8 = 0;
        pub const ROOT_NAME: u8 = 0;
        pub const ROOT_IS_DIR: u8 = 1;
        pub const ROOT_FILE: u8 = 2;
        pub const PATH: u8 = 0;
        pub const TYPE: u8 = 1;
        pub const TARGET: u8 = 2;
        pub const MODE: u8 = 3;
        pub const CONTENT: u8 = 4;
    }
}

/// The key of a stage's base: its identity (an image's manifest digest, `scratch`, or the key of
/// the stage it builds on) and the platform.
pub fn from_key(identity: &str, platform: &str) -> StepKey {
    let mut c = Canon::new();
    c.str(from::KIND, "FROM")
        .str(from::IDENTITY, identity)
        .str(from::PLATFORM, platform);
    step_key(None, &c, &Canon::new())
}

/// WORKDIR's definition: the absolute path, and USER when set.
pub fn workdir_definition(path: &str, user: &str) -> Canon {
    let mut c = Canon::new();
    c.str(workdir::KIND, "WORKDIR").str(workdir::PATH, path);
    if !user.is_empty() {
        c.str(workdir::OWNER, user);
    }
    c
}

/// What RUN's definition covers.
pub struct RunDefinition<'a> {
    pub argv: &'a [String],
    /// A `#!` heredoc's body.
    pub script: Option<&'a str>,
    /// ENV and ARGs in scope, without the unkeyed proxy args.
    pub env: &'a [(String, String)],
    pub workdir: &'a str,
    pub user: &'a str,
    pub network_none: bool,
    pub insecure: bool,
    /// Each `--mount`: its type and its fields as written.
    pub mounts: &'a [(String, Vec<(String, String)>)],
}

/// RUN's definition.
pub fn run_definition(r: &RunDefinition<'_>) -> Canon {
    let mut c = Canon::new();
    c.str(run::KIND, "RUN")
        .list(run::ARGV, r.argv)
        .opt(run::SCRIPT, r.script)
        .pairs(run::ENV, r.env)
        .str(run::WORKDIR, r.workdir)
        .str(run::USER, r.user)
        .str(run::NETWORK, if r.network_none { "none" } else { "host" })
        .flag(run::INSECURE, r.insecure);
    let mut mc = Canon::new();
    for (kind, fields) in r.mounts {
        mc.str(run::mount::TYPE, kind)
            .pairs(run::mount::FIELDS, fields);
    }
    c.nested(run::MOUNTS, &mc);
    c
}

/// What COPY's and ADD's definition covers (everything after expansion).
pub struct CopyDefinition<'a> {
    pub add: bool,
    pub sources: &'a [String],
    /// Absolute, with a trailing slash when the Dockerfile wrote one.
    pub dest: &'a str,
    pub chown: Option<&'a str>,
    pub chmod: Option<&'a str>,
    pub link: bool,
    pub parents: bool,
    pub exclude: &'a [String],
    pub checksum: Option<&'a str>,
    pub keep_git_dir: bool,
    pub unpack: Option<bool>,
    /// Heredoc sources: (name, body after expansion).
    pub heredocs: &'a [(&'a str, &'a str)],
}

/// COPY's or ADD's definition.
pub fn copy_definition(d: &CopyDefinition<'_>) -> Canon {
    let mut c = Canon::new();
    c.str(copy::KIND, if d.add { "ADD" } else { "COPY" })
        .list(copy::SOURCES, d.sources)
        .str(copy::DEST, d.dest)
        .opt(copy::CHOWN, d.chown)
        .opt(copy::CHMOD, d.chmod)
        .flag(copy::LINK, d.link)
        .flag(copy::PARENTS, d.parents)
        .list(copy::EXCLUDE, d.exclude)
        .opt(copy::CHECKSUM, d.checksum)
        .flag(copy::KEEP_GIT_DIR, d.keep_git_dir)
        .opt(
            copy::UNPACK,
            d.unpack.map(|b| if b { "true" } else { "false" }),
        );
    let mut hc = Canon::new();
    for (path, data) in d.heredocs {
        hc.str(copy::heredoc::PATH, path)
            .str(copy::heredoc::DATA, data);
    }
    c.nested(copy::HEREDOCS, &hc);
    c
}

/// A file's type in [`SelectedFiles`].
pub enum FileType<'a> {
    File,
    Dir,
    Symlink(&'a str),
    /// A device or fifo: its type and device number, as text.
    Special(&'a str),
}

/// The digest of exactly the files a source selection picked: per source root its name and
/// whether it is a directory, then per file its relative path, type, link target, mode bits and
/// content hash. Owners are keyed by the definition (`--chown`); mtimes, inodes and ctimes never.
#[derive(Default)]
pub struct SelectedFiles {
    c: Canon,
    /// Where the open root's length goes in `c` (its record is written in place).
    root: Option<usize>,
}

impl SelectedFiles {
    pub fn new() -> SelectedFiles {
        SelectedFiles::default()
    }

    /// Starts a source root; the files that follow belong to it.
    pub fn root(&mut self, name: &str, is_dir: bool) {
        self.end_root();
        self.open_root();
        self.c
            .str(input::files::ROOT_NAME, name)
            .flag(input::files::ROOT_IS_DIR, is_dir);
    }

    /// Opens a root record in place: its tag, then a length filled in by `end_root`.
    fn open_root(&mut self) {
        self.c.buf.push(input::files::ROOT);
        self.c.buf.extend_from_slice(&[0; 8]);
        self.root = Some(self.c.buf.len());
    }

    /// A file of the current root.
    pub fn file(&mut self, rel: &str, kind: FileType<'_>, mode: u32, content: &[u8]) {
        use input::files as f;
        let (t, target) = match kind {
            FileType::File => ("f", ""),
            FileType::Dir => ("d", ""),
            FileType::Symlink(t) => ("l", t),
            FileType::Special(t) => ("s", t),
        };
        if self.root.is_none() {
            self.open_root();
        }
        // The nested file record written in place (the bytes `nested(ROOT_FILE, ..)` of a
        // Canon of these fields would write): no allocation or copy per file.
        let c = &mut self.c;
        let inner = 5 * 9 + rel.len() + t.len() + target.len() + 4 + content.len();
        c.buf.reserve(9 + inner);
        c.buf.push(f::ROOT_FILE);
        c.buf.extend_from_slice(&(inner as u64).to_le_bytes());
        c.str(f::PATH, rel)
            .str(f::TYPE, t)
            .str(f::TARGET, target)
            .bytes(f::MODE, &mode.to_le_bytes())
            .bytes(f::CONTENT, content);
    }

    fn end_root(&mut self) {
        if let Some(start) = self.root.take() {
            let len = (self.c.buf.len() - start) as u64;
            self.c.buf[start - 8..start].copy_from_slice(&len.to_le_bytes());
        }
    }

    /// The encoding.
    pub fn finish(mut self) -> Canon {
        self.end_root();
        self.c
    }
}

/// One ADD download: BuildKit's http cache key (content, file name, Last-Modified).
pub struct Download<'a> {
    pub url: &'a str,
    pub sha256: &'a str,
    pub name: &'a str,
    pub last_modified: i64,
}

/// Where a RUN bind mount's files come from.
pub enum BindSource<'a> {
    /// The context: the selected files.
    Context(&'a Canon),
    /// A stage's key or an image's digest, and the path in it.
    From { identity: &'a str, path: &'a str },
}

/// The inputs of one step, in the order the builder resolves them.
#[derive(Clone, Default)]
pub struct Inputs(Canon);

impl Inputs {
    pub fn new() -> Inputs {
        Inputs::default()
    }

    /// ADD's downloads (before the context files, as they are resolved).
    pub fn downloads(&mut self, d: &[Download<'_>]) -> &mut Self {
        if d.is_empty() {
            return self;
        }
        use input::url as u;
        let mut c = Canon::new();
        for x in d {
            c.str(u::URL, x.url)
                .str(u::SHA256, x.sha256)
                .str(u::NAME, x.name)
                .str(u::LAST_MODIFIED, &x.last_modified.to_string());
        }
        self.0.nested(input::URLS, &c);
        self
    }

    /// The selected context files.
    pub fn files(&mut self, files: &Canon) -> &mut Self {
        self.0.nested(input::FILES, files);
        self
    }

    /// A `--from` source's identity (`stage:<key>` or `image:<digest>`).
    pub fn from_source(&mut self, identity: &str) -> &mut Self {
        self.0.str(input::FROM, identity);
        self
    }

    /// RUN's bind mount number `index` (its position among the step's mounts).
    pub fn bind_mount(&mut self, index: usize, source: BindSource<'_>) -> &mut Self {
        use input::bind as b;
        let mut c = Canon::new();
        c.str(b::INDEX, &index.to_string());
        match source {
            BindSource::Context(files) => c.nested(b::FILES, files),
            BindSource::From { identity, path } => c.str(b::FROM, identity).str(b::SOURCE, path),
        };
        self.0.nested(input::BIND_MOUNT, &c);
        self
    }

    /// `COPY --link --chown`: the owner as numbers, resolved in the base.
    pub fn link_owner(&mut self, uid: u32, gid: u32) -> &mut Self {
        self.0.str(input::LINK_OWNER, &format!("{uid}:{gid}"));
        self
    }

    /// The encoding.
    pub fn as_canon(&self) -> &Canon {
        &self.0
    }
}

#[cfg(test)]
mod tests;
