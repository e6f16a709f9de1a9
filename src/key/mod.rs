//! Step keys: what is hashed, in which encoding.
//!
//! `key = blake3("kiln-step-v1" | parent key | canonical step definition | inputs)`
//!
//! The canonical encoding is explicit: every field is written as a one-byte tag, a u64
//! little-endian length and the bytes, in a fixed order; lists carry their length first; maps
//! are written sorted by key. Nothing depends on `HashMap` order or on JSON. Changing what a
//! key covers means changing [`KEY_VERSION`], so old cache entries can never be mistaken for
//! new ones.
//!
//! [`schema`] is the only place that writes a key's fields: named tags and one function per step
//! kind (definitions) and per input (files, URLs, `--from`, bind mounts, `--link` owners). The
//! planner and the builder call those functions; a field added to a step is added there, and the
//! table below is checked against the schema's names by a test.
//!
//! | step | keyed | not keyed |
//! |---|---|---|
//! | FROM | the base's manifest digest, or `scratch`, or the key of the stage it builds on; the platform | the reference text (two names for one digest share a key) |
//! | RUN | parent key; argv after shell wrapping (heredoc bodies included); every ENV and every declared ARG in scope (sorted); workdir; user; network mode; security mode; each `--mount` definition (fields sorted); what each bind mount exposes (from the context: the selected files' digests as for COPY; `from=`: the stage key or image digest and the source path) | proxy build args not declared with ARG (`HTTP_PROXY`...); cache-mount contents; secret values (`--secret`); the ssh agent behind `--ssh`; LABEL, CMD and other metadata; the Dockerfile line number |
//! | COPY/ADD | parent key; sources and destination after expansion (destination made absolute against WORKDIR); `--chown`, `--chmod`, `--link`, `--parents`, `--exclude`, ADD's `--checksum`/`--unpack`/`--keep-git-dir`; heredoc sources (name, bytes after expansion); the `--from` stage key or image digest; a content digest of exactly the selected files (relative path, type, mode bits, uid/gid, symlink target, blake3 of the bytes); for an ADD URL, the downloaded content's sha256, its file name and Last-Modified (BuildKit's http cache key) | mtime, atime, ctime, inode numbers; files the sources do not select; USER (COPY writes as root unless `--chown`); ENV and ARG (they reach COPY only through the expanded words) |
//! | WORKDIR | parent key; the absolute path; USER when set (the owner of the directories it makes) | the same path set again later |
//! | ENV, ARG, LABEL, CMD, ENTRYPOINT, EXPOSE, VOLUME, USER, STOPSIGNAL, HEALTHCHECK, SHELL, MAINTAINER, ONBUILD | nothing of their own: they change the image config, and key later steps only through what those steps use (ENV/ARG through RUN's env, USER/SHELL through RUN's user/argv, WORKDIR through paths) | |

pub mod schema;

use std::fmt;

/// The version tag hashed into every step key.
pub const KEY_VERSION: &str = "kiln-step-v1";

/// A step key: blake3, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepKey(pub [u8; 32]);

impl StepKey {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<StepKey> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(StepKey(out))
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Debug for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StepKey({})", self.short())
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The canonical writer: tagged, length-prefixed fields.
#[derive(Default, Clone)]
pub struct Canon {
    buf: Vec<u8>,
}

impl Canon {
    /// An empty encoding.
    pub fn new() -> Canon {
        Canon::default()
    }

    /// A byte string field.
    pub fn bytes(&mut self, tag: u8, b: &[u8]) -> &mut Self {
        self.buf.push(tag);
        self.buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(b);
        self
    }

    /// A string field.
    pub fn str(&mut self, tag: u8, s: &str) -> &mut Self {
        self.bytes(tag, s.as_bytes())
    }

    /// An optional string: absent and empty differ.
    pub fn opt(&mut self, tag: u8, s: Option<&str>) -> &mut Self {
        match s {
            None => self.bytes(tag, &[0]),
            Some(s) => {
                let mut v = vec![1];
                v.extend_from_slice(s.as_bytes());
                self.bytes(tag, &v)
            }
        }
    }

    /// A boolean field.
    pub fn flag(&mut self, tag: u8, b: bool) -> &mut Self {
        self.bytes(tag, &[u8::from(b)])
    }

    /// A list of strings, in the given order.
    pub fn list<S: AsRef<str>>(&mut self, tag: u8, items: &[S]) -> &mut Self {
        let mut inner = Canon::new();
        for s in items {
            inner.str(0, s.as_ref());
        }
        self.count(tag, items.len(), inner)
    }

    /// Key/value pairs, sorted by key then value (the caller's order does not matter).
    pub fn pairs(&mut self, tag: u8, items: &[(String, String)]) -> &mut Self {
        let mut sorted: Vec<&(String, String)> = items.iter().collect();
        sorted.sort();
        let mut inner = Canon::new();
        for (k, v) in &sorted {
            inner.str(0, k).str(1, v);
        }
        self.count(tag, sorted.len(), inner)
    }

    /// A nested encoding.
    pub fn nested(&mut self, tag: u8, inner: &Canon) -> &mut Self {
        self.bytes(tag, &inner.buf)
    }

    fn count(&mut self, tag: u8, n: usize, inner: Canon) -> &mut Self {
        let mut v = (n as u64).to_le_bytes().to_vec();
        v.extend_from_slice(&inner.buf);
        self.bytes(tag, &v)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// `blake3(KEY_VERSION | parent | definition | inputs)`, each part length-prefixed.
pub fn step_key(parent: Option<&StepKey>, definition: &Canon, inputs: &Canon) -> StepKey {
    let mut c = Canon::new();
    c.str(0, KEY_VERSION);
    c.bytes(1, parent.map(|p| &p.0[..]).unwrap_or(&[]));
    c.nested(2, definition);
    c.nested(3, inputs);
    StepKey(*blake3::hash(c.as_bytes()).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_unambiguous() {
        // "ab"+"c" and "a"+"bc" must differ, and so must absent vs empty.
        let k = |a: &str, b: &str| {
            let mut c = Canon::new();
            c.str(0, a).str(0, b);
            step_key(None, &c, &Canon::new())
        };
        assert_ne!(k("ab", "c"), k("a", "bc"));
        let mut none = Canon::new();
        none.opt(0, None);
        let mut empty = Canon::new();
        empty.opt(0, Some(""));
        assert_ne!(
            step_key(None, &none, &Canon::new()),
            step_key(None, &empty, &Canon::new())
        );
        let hex = k("a", "b").to_hex();
        assert_eq!(StepKey::from_hex(&hex), Some(k("a", "b")));
    }

    #[test]
    fn pairs_are_order_independent() {
        let a = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string()),
        ];
        let b = vec![a[1].clone(), a[0].clone()];
        let (mut x, mut y) = (Canon::new(), Canon::new());
        x.pairs(0, &a);
        y.pairs(0, &b);
        assert_eq!(x.as_bytes(), y.as_bytes());
    }
}
