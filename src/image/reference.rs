//! Image references, parsed and normalized as Docker does (distribution/reference,
//! `ParseNormalizedNamed`): `name`, `name:tag`, `name@sha256:...`, `host[:port]/path/name:tag`;
//! a first component is a registry host only if it contains `.` or `:`, is `localhost`, or has
//! upper-case letters; Docker Hub names get `docker.io/` and, with one component, `library/`.

use kiln_store::Digest;
use std::fmt;

pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `localhost:5000`).
    pub domain: String,
    /// Repository path (`library/busybox`, `john/get-started`).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("invalid reference format: {0:?}")]
    Invalid(String),
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
    #[error("invalid reference format: {0:?}: repository name is longer than 255 characters")]
    TooLong(String),
    #[error("invalid tag {tag:?} in {input:?}: a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -")]
    BadTag { input: String, tag: String },
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// host: dot-separated labels of `[A-Za-z0-9-]` not starting or ending in `-`, or `[IPv6]`,
/// optionally `:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.is_empty()
                    || !v6
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                {
                    return false;
                }
                ("", tail.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if d.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `[\w][\w.-]{0,127}`
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl Reference {
    /// Parses and normalizes a reference; no default tag is added (see `with_default_tag`).
    pub fn parse(input: &str) -> Result<Reference, RefError> {
        let invalid = || RefError::Invalid(input.to_string());
        if input.is_empty() {
            return Err(invalid());
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|_| invalid())?)),
            None => (input, None),
        };
        // The tag follows the last ':' after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(RefError::BadTag {
                        input: input.to_string(),
                        tag: t.to_string(),
                    });
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(invalid());
        }
        let (mut domain, mut path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.to_lowercase() != first =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if domain == LEGACY_DEFAULT_DOMAIN {
            domain = DEFAULT_DOMAIN.to_string();
        }
        if !valid_domain(&domain) {
            return Err(invalid());
        }
        if path.to_lowercase() != path {
            return Err(RefError::Uppercase(name.to_string()));
        }
        if domain == DEFAULT_DOMAIN && !path.contains('/') {
            if path.len() == 64 && path.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RefError::HexName(path));
            }
            path = format!("library/{path}");
        }
        if !path.split('/').all(valid_path_component) {
            return Err(invalid());
        }
        if domain.len() + 1 + path.len() > 255 {
            return Err(RefError::TooLong(input.to_string()));
        }
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// Adds `:latest` when there is neither a tag nor a digest (Docker's `TagNameOnly`).
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The name as Docker shows it: `busybox`, `john/app`, `localhost:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix("library/")
                .filter(|p| !p.contains('/'))
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.name()
        }
    }

    /// The whole reference as Docker shows it: `busybox:latest`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        self.push_suffix(&mut s);
        s
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
    }
}

impl fmt::Display for Reference {
    /// The full normalized form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap().with_default_tag().to_string()
    }

    #[test]
    fn normalizes_like_docker() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("john/get-started:part1", "docker.io/john/get-started:part1"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("localhost/app", "localhost/app:latest"),
            (
                "localhost:5000/john/get-started:part1",
                "localhost:5000/john/get-started:part1",
            ),
            (
                "127.0.0.1:5000/a/b/c:v1.0-rc_1",
                "127.0.0.1:5000/a/b/c:v1.0-rc_1",
            ),
            (
                "registry.example.com/team/app",
                "registry.example.com/team/app:latest",
            ),
            ("Registry/app", "Registry/app:latest"),
            ("[::1]:5000/app:1", "[::1]:5000/app:1"),
            ("my_app.v2__x", "docker.io/library/my_app.v2__x:latest"),
            ("a---b", "docker.io/library/a---b:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(full(input), want, "{input}");
        }
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        let r = Reference::parse(&format!("busybox:1@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
    }

    #[test]
    fn familiar_forms() {
        let f = |s: &str| Reference::parse(s).unwrap().with_default_tag().familiar();
        assert_eq!(f("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(f("john/app:1"), "john/app:1");
        assert_eq!(f("localhost:5000/app"), "localhost:5000/app:latest");
    }

    #[test]
    fn rejects_what_docker_rejects() {
        let bad = [
            "",
            ":tag",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox:.x",
            "a/B",
            "a//b",
            "a/b/",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "host:port/a",
            "busybox@sha256:abc",
            "UPPER.example.com/A",
            "a:b:c",
        ];
        for b in bad {
            assert!(Reference::parse(b).is_err(), "{b:?} should be rejected");
        }
        assert!(matches!(
            Reference::parse(&"f".repeat(64)),
            Err(RefError::HexName(_))
        ));
        assert!(matches!(
            Reference::parse(&"a".repeat(300)),
            Err(RefError::TooLong(_))
        ));
        assert!(Reference::parse(&format!("a:{}", "t".repeat(129))).is_err());
    }
}
