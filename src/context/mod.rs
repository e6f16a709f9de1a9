//! The build context: its directory, its `.dockerignore`, and the walk that lists what a build
//! may see.
//!
//! The ignore file is `<Dockerfile>.dockerignore` beside the Dockerfile when it exists (so
//! `-f app.Dockerfile` reads `app.Dockerfile.dockerignore`), else `.dockerignore` at the
//! context root, as BuildKit does. The walk never follows symlinks, lists entries sorted by
//! path, and does not descend into an excluded directory unless an exception could re-include
//! something below it; the parents of a re-included path are listed (marked `implied`) so a
//! copy can recreate them.

pub mod dockerignore;
pub mod hash;
pub mod select;
mod walk;

use std::fs;
use std::path::{Path, PathBuf};

pub use dockerignore::Matcher;

/// A context problem, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context directory or a file in it could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A bad pattern in the ignore file.
    #[error("{file}: {source}")]
    Pattern {
        /// The ignore file.
        file: PathBuf,
        /// The cause.
        source: dockerignore::PatternError,
    },
    /// The context is not a directory.
    #[error("build context {0} is not a directory")]
    NotADirectory(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, fifo or socket.
    Other,
}

/// One listed path.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Relative, slash-separated path.
    pub path: String,
    /// The type.
    pub kind: EntryKind,
    /// Excluded itself, listed only as the parent of a re-included path.
    pub implied: bool,
    /// Its stat tuple, taken during the walk (the one stat a file costs).
    pub stat: kiln_store::StatTuple,
}

/// An opened build context.
#[derive(Debug, Clone)]
pub struct Context {
    root: PathBuf,
    matcher: Matcher,
    ignore_file: Option<PathBuf>,
}

impl Context {
    /// Opens `root`, reading the ignore file that applies to `dockerfile`.
    pub fn open(root: &Path, dockerfile: Option<&Path>) -> Result<Context, ContextError> {
        let meta = fs::metadata(root).map_err(io(root))?;
        if !meta.is_dir() {
            return Err(ContextError::NotADirectory(root.to_path_buf()));
        }
        let mut candidates = Vec::new();
        if let Some(df) = dockerfile {
            let mut name = df.as_os_str().to_os_string();
            name.push(".dockerignore");
            candidates.push(PathBuf::from(name));
        }
        candidates.push(root.join(".dockerignore"));
        for c in candidates {
            match fs::read(&c) {
                Ok(bytes) => {
                    let matcher = Matcher::from_dockerignore(&String::from_utf8_lossy(&bytes))
                        .map_err(|source| ContextError::Pattern {
                            file: c.clone(),
                            source,
                        })?;
                    return Ok(Context {
                        root: root.to_path_buf(),
                        matcher,
                        ignore_file: Some(c),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ContextError::Io { path: c, source: e }),
            }
        }
        Ok(Context {
            root: root.to_path_buf(),
            matcher: Matcher::default(),
            ignore_file: None,
        })
    }

    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ignore file in force, if any.
    pub fn ignore_file(&self) -> Option<&Path> {
        self.ignore_file.as_deref()
    }

    /// The patterns in force.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Whether `path` (relative) is excluded by the ignore file.
    pub fn excludes(&self, path: &str) -> bool {
        self.matcher.excludes(path)
    }

    /// Lists every path the build may see, depth first with names sorted (a directory's
    /// subtree follows it directly), each with its stat tuple. See `walk.rs`.
    pub fn walk(&self) -> Result<Vec<Entry>, ContextError> {
        walk::walk(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_honours_ignore_and_reincludes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for f in [
            "a.txt",
            "b.log",
            "build/out.bin",
            "build/keep/k.txt",
            "src/main.rs",
            "src/x.log",
        ] {
            let p = r.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        fs::write(
            r.join(".dockerignore"),
            "*.log\nbuild\n!build/keep\n**/*.log\n",
        )
        .unwrap();
        let ctx = Context::open(r, None).unwrap();
        let got: Vec<(String, bool)> = ctx
            .walk()
            .unwrap()
            .into_iter()
            .map(|e| (e.path, e.implied))
            .collect();
        let want: Vec<(String, bool)> = [
            (".dockerignore", false),
            ("a.txt", false),
            ("build", true),
            ("build/keep", false),
            ("build/keep/k.txt", false),
            ("src", false),
            ("src/main.rs", false),
        ]
        .iter()
        .map(|(p, i)| (p.to_string(), *i))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn walk_lists_every_entry_in_path_order_with_its_stat() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for f in ["a/x", "a.b/y", "a-", "b/c/d/e", "z"] {
            let p = r.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        std::os::unix::fs::symlink("a", r.join("l")).unwrap();
        let got = Context::open(r, None).unwrap().walk().unwrap();
        let paths: Vec<&str> = got.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["a", "a/x", "a-", "a.b", "a.b/y", "b", "b/c", "b/c/d", "b/c/d/e", "l", "z"]
        );
        // The stat cache's order is the walk's.
        assert!(paths.windows(2).all(|w| kiln_store::statfile::path_order(
            w[0].as_bytes(),
            w[1].as_bytes()
        )
        .is_lt()));
        for e in &got {
            let m = fs::symlink_metadata(r.join(&e.path)).unwrap();
            assert_eq!(e.stat, hash::stat_tuple(&m), "{}", e.path);
        }
        assert_eq!(
            got[9].kind,
            EntryKind::Symlink,
            "a link to a directory is not followed"
        );
        // A name that is not UTF-8 is stat'ed by its own bytes and listed by its lossy form.
        use std::os::unix::ffi::OsStrExt;
        fs::write(r.join(std::ffi::OsStr::from_bytes(b"b/c/\xffx")), "x").unwrap();
        let got = Context::open(r, None).unwrap().walk().unwrap();
        let odd = got
            .iter()
            .find(|e| e.path == "b/c/\u{fffd}x")
            .expect("listed");
        assert_eq!((odd.kind, odd.stat.size), (EntryKind::File, 1));
        // A directory that cannot be read is named.
        let err = Context::open(&r.join("nope"), None).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::write(r.join(".dockerignore"), "a\n").unwrap();
        fs::write(r.join("app.Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(r.join("app.Dockerfile.dockerignore"), "b\n").unwrap();
        let ctx = Context::open(r, Some(&r.join("app.Dockerfile"))).unwrap();
        assert!(ctx.excludes("b") && !ctx.excludes("a"));
        let ctx = Context::open(r, Some(&r.join("Dockerfile"))).unwrap();
        assert!(ctx.excludes("a") && !ctx.excludes("b"));
    }
}
