//! `.dockerignore` with moby/patternmatcher semantics, as BuildKit applies it.
//!
//! Reading (`ignorefile.ReadAll`): a BOM on line 1 is dropped; lines starting with `#` in
//! column 1 are comments; lines are trimmed; a leading `!` marks an exception; the pattern is
//! path-cleaned and a leading `/` removed (patterns are relative to the context root).
//!
//! Matching (`PatternMatcher.MatchesOrParentMatches`): patterns are evaluated in order and the
//! last one that matches decides (`!` re-includes); a pattern matches a path if it matches the
//! path itself or any of its parent directories. Each pattern compiles the way upstream does:
//! `*` is any run without `/`, `?` one character other than `/`, `[...]` a class, `\x` a
//! literal `x`, `**` any number of directories (`**/` eats the slash), a trailing `**`
//! everything below. Upstream's shortcuts are kept, quirks included: a pattern without
//! wildcards is an exact match, `dir/**` a prefix match, and a pattern that *starts* with `**`
//! and has no other wildcard a suffix match (`**foo` matches `xfoo`).

use std::collections::HashMap;

/// A bad pattern, with the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid .dockerignore pattern {pattern:?}: {why}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong.
    pub why: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    /// `?`: `[^/]`.
    One,
    /// `*`: `[^/]*`.
    Star,
    /// `**/` or inner `**`: `(.*/)?`.
    Dirs,
    /// Trailing `**` after a wildcard: `.*`.
    Rest,
    /// `[...]`: ranges, possibly negated.
    Class(bool, Vec<(char, char)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(Vec<Tok>),
}

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    text: String,
    exclusion: bool,
    kind: Kind,
}

/// Go's `path.Clean` for slash paths.
pub fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Reads `.dockerignore` text into patterns, as BuildKit's `ignorefile.ReadAll`.
pub fn read_patterns(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let mut line = line.strip_suffix('\r').unwrap_or(line);
        if i == 0 {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.starts_with('#') {
            continue;
        }
        let mut p = line.trim();
        if p.is_empty() {
            continue;
        }
        let invert = p.starts_with('!');
        if invert {
            p = p[1..].trim();
        }
        let mut pat = String::new();
        if !p.is_empty() {
            pat = clean(p);
            if pat.len() > 1 && pat.starts_with('/') {
                pat.remove(0);
            }
        }
        out.push(if invert { format!("!{pat}") } else { pat });
    }
    out
}

impl Pattern {
    /// Compiles one pattern; `Ok(None)` for a blank one.
    pub fn new(raw: &str) -> Result<Option<Pattern>, PatternError> {
        let p = raw.trim();
        if p.is_empty() {
            return Ok(None);
        }
        let bad = |why: &str| PatternError {
            pattern: raw.to_string(),
            why: why.to_string(),
        };
        let mut p = clean(p);
        let exclusion = p.starts_with('!');
        if exclusion {
            if p.len() == 1 {
                return Err(bad("illegal exclusion pattern: \"!\""));
            }
            p.remove(0);
        }
        validate(&p).map_err(|w| bad(&w))?;
        let chars: Vec<char> = p.chars().collect();
        let mut toks = Vec::new();
        let mut kind_is = "exact";
        let mut i = 0;
        let mut first = true;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i == chars.len() {
                        if kind_is == "exact" {
                            kind_is = "prefix";
                        } else {
                            toks.push(Tok::Rest);
                            kind_is = "regex";
                        }
                    } else {
                        toks.push(Tok::Dirs);
                        kind_is = "regex";
                    }
                    if first {
                        kind_is = "suffix";
                    }
                }
                '*' => {
                    toks.push(Tok::Star);
                    kind_is = "regex";
                }
                '?' => {
                    toks.push(Tok::One);
                    kind_is = "regex";
                }
                '\\' => match chars.get(i) {
                    Some(&n) => {
                        toks.push(Tok::Lit(n));
                        i += 1;
                        kind_is = "regex";
                    }
                    None => toks.push(Tok::Lit('\\')),
                },
                '[' => {
                    let (tok, next) = parse_class(&chars, i).map_err(|w| bad(&w))?;
                    toks.push(tok);
                    i = next;
                    kind_is = "regex";
                }
                c => toks.push(Tok::Lit(c)),
            }
            first = false;
        }
        let kind = match kind_is {
            "exact" => Kind::Exact,
            "prefix" => Kind::Prefix,
            "suffix" => Kind::Suffix,
            _ => Kind::Regex(toks),
        };
        Ok(Some(Pattern {
            text: p,
            exclusion,
            kind,
        }))
    }

    /// The cleaned pattern, without `!`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// A `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether the pattern matches exactly `path` (no parent rule).
    pub fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.text[2..];
                path.ends_with(suffix) || (suffix.starts_with('/') && path == &suffix[1..])
            }
            Kind::Regex(toks) => {
                let s: Vec<char> = path.chars().collect();
                full_match(toks, &s, 0, 0, &mut HashMap::new())
            }
        }
    }
}

/// The checks Go's `filepath.Match(p, ".")` makes: classes must be closed and well formed, and
/// the pattern must not end in a lone escape.
fn validate(p: &str) -> Result<(), String> {
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 == chars.len() {
                    return Err("trailing escape".into());
                }
                i += 2;
            }
            '[' => {
                let (_, next) = parse_class(&chars, i + 1)?;
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn parse_class(chars: &[char], mut i: usize) -> Result<(Tok, usize), String> {
    let negate = chars.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut ranges = Vec::new();
    let esc = |i: &mut usize| -> Result<char, String> {
        match chars.get(*i) {
            None | Some('-') | Some(']') => Err("malformed character class".into()),
            Some('\\') => {
                let c = *chars.get(*i + 1).ok_or("malformed character class")?;
                *i += 2;
                Ok(c)
            }
            Some(&c) => {
                *i += 1;
                Ok(c)
            }
        }
    };
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((Tok::Class(negate, ranges), i + 1));
        }
        let lo = esc(&mut i)?;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            i += 1;
            hi = esc(&mut i)?;
            if hi < lo {
                return Err("bad range in character class".into());
            }
        }
        ranges.push((lo, hi));
    }
}

fn full_match(
    toks: &[Tok],
    s: &[char],
    ti: usize,
    si: usize,
    memo: &mut HashMap<(usize, usize), bool>,
) -> bool {
    if ti == toks.len() {
        return si == s.len();
    }
    if let Some(r) = memo.get(&(ti, si)) {
        return *r;
    }
    let r = match &toks[ti] {
        Tok::Lit(c) => s.get(si) == Some(c) && full_match(toks, s, ti + 1, si + 1, memo),
        Tok::One => {
            s.get(si).is_some_and(|c| *c != '/') && full_match(toks, s, ti + 1, si + 1, memo)
        }
        Tok::Class(neg, ranges) => {
            s.get(si)
                .is_some_and(|c| ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *neg)
                && full_match(toks, s, ti + 1, si + 1, memo)
        }
        Tok::Star => {
            let mut e = si;
            loop {
                if full_match(toks, s, ti + 1, e, memo) {
                    break true;
                }
                if e < s.len() && s[e] != '/' {
                    e += 1;
                } else {
                    break false;
                }
            }
        }
        Tok::Rest => (si..=s.len()).any(|e| full_match(toks, s, ti + 1, e, memo)),
        // `(.*/)?`: nothing, or anything ending in a slash.
        Tok::Dirs => {
            full_match(toks, s, ti + 1, si, memo)
                || (si..s.len()).any(|e| s[e] == '/' && full_match(toks, s, ti + 1, e + 1, memo))
        }
    };
    memo.insert((ti, si), r);
    r
}

/// An ordered list of patterns.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Compiles patterns (as [`read_patterns`] returns them).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Matcher, PatternError> {
        let mut out = Vec::new();
        for p in patterns {
            if let Some(p) = Pattern::new(p.as_ref())? {
                out.push(p);
            }
        }
        Ok(Matcher { patterns: out })
    }

    /// Parses `.dockerignore` text.
    pub fn from_dockerignore(text: &str) -> Result<Matcher, PatternError> {
        Matcher::new(&read_patterns(text))
    }

    /// No patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// The patterns.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether the context path `path` (relative, slash-separated) is excluded.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        if path == "." {
            return false;
        }
        // The parent directories `a`, `a/b`, ... as slices of the path, made once per path
        // rather than joined again for every pattern.
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let m = p.matches(&path) || parents.iter().any(|d| p.matches(d));
            if m {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Whether a walk must look inside the excluded directory `dir`: true when some exception
    /// could re-include a path below it.
    pub fn may_include_below(&self, dir: &str) -> bool {
        let dir = clean(dir);
        let comps: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            let pdirs: Vec<&str> = p.text.split('/').collect();
            for (pd, dc) in pdirs.iter().zip(&comps) {
                if pd.contains("**") {
                    return true;
                }
                match Pattern::new(pd) {
                    Ok(Some(cp)) if cp.matches(dc) => {}
                    _ => return false,
                }
            }
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (patterns, path, excluded?) rows.
    const TABLE: &[(&[&str], &str, bool)] = &[
        // Plain names, exact and parent matches.
        (&["foo"], "foo", true),
        (&["foo"], "foo/bar", true),
        (&["foo"], "foo/bar/baz", true),
        (&["foo"], "foobar", false),
        (&["foo"], "bar/foo", false),
        (&["foo/bar"], "foo/bar", true),
        (&["foo/bar"], "foo/bar/x", true),
        (&["foo/bar"], "foo", false),
        (&["foo/bar"], "foo/barx", false),
        // Cleaning and the leading slash.
        (&["/foo"], "foo", true),
        (&["./foo"], "foo", true),
        (&["foo/"], "foo/x", true),
        (&["foo/../bar"], "bar", true),
        (&["foo//bar"], "foo/bar", true),
        (&["  foo  "], "foo", true),
        // `*` within one component.
        (&["*.md"], "README.md", true),
        (&["*.md"], "docs/README.md", false),
        (&["*/*.md"], "docs/README.md", true),
        (&["*"], "anything", true),
        (&["*"], "dir/file", true),
        (&["a*b"], "aXXb", true),
        (&["a*b"], "a/b", false),
        (&["docs/*"], "docs/a/b", true),
        // `?`.
        (&["?.txt"], "a.txt", true),
        (&["?.txt"], "ab.txt", false),
        (&["a?c"], "a/c", false),
        // Character classes.
        (&["[abc].txt"], "b.txt", true),
        (&["[abc].txt"], "d.txt", false),
        (&["[a-c]x"], "cx", true),
        (&["[^a-c]x"], "dx", true),
        (&["[^a-c]x"], "ax", false),
        (&["[\\]]"], "]", true),
        // Escapes.
        (&["\\*"], "*", true),
        (&["\\*"], "a", false),
        (&["a\\?b"], "a?b", true),
        (&["a\\?b"], "axb", false),
        // Regexp metacharacters are literal.
        (&["a.b"], "axb", false),
        (&["a.b"], "a.b", true),
        (&["f(o)+"], "f(o)+", true),
        (&["$x{1}|y"], "$x{1}|y", true),
        // `**`.
        (&["**/foo"], "foo", true),
        (&["**/foo"], "a/b/foo", true),
        (&["**/foo"], "a/foo/c", true),
        (&["**/*.go"], "main.go", true),
        (&["**/*.go"], "a/b/c.go", true),
        (&["**/*.go"], "a/b/c.rs", false),
        (&["a/**/b"], "a/b", true),
        (&["a/**/b"], "a/x/y/b", true),
        (&["a/**/b"], "a/x/y/c", false),
        (&["a/**"], "a/x/y", true),
        (&["a/**"], "ab", false),
        (&["*/a/**"], "x/a/b/c", true),
        (&["**"], "anything/at/all", true),
        // Upstream's suffix shortcut: `**foo` matches any path ending in foo.
        (&["**foo"], "xfoo", true),
        (&["**foo"], "a/b/xfoo", true),
        // Last match wins; exceptions.
        (&["*.md", "!README.md"], "README.md", false),
        (&["*.md", "!README.md"], "CHANGES.md", true),
        (&["!README.md", "*.md"], "README.md", true),
        (&["docs", "!docs/keep.md"], "docs/keep.md", false),
        (&["docs", "!docs/keep.md"], "docs/other.md", true),
        (
            &["docs", "!docs/keep.md", "docs/keep.md"],
            "docs/keep.md",
            true,
        ),
        (&["*", "!src"], "src/main.rs", false),
        (&["*", "!src", "src/target"], "src/target/x", true),
        (&["**/*.log", "!important.log"], "important.log", false),
        (&["**/*.log", "!important.log"], "a/important.log", true),
        (&["**/*.log", "!**/important.log"], "a/important.log", false),
        // A pattern matching a parent directory matches the path.
        (&["a/b"], "a/b/c/d", true),
        (&["*/b"], "a/b/c", true),
        (&["node_modules"], "node_modules/x/y/z.js", true),
        // The context root itself is never excluded.
        (&["*"], ".", false),
        (&["**"], ".", false),
        // `#` is a comment only in column 1 (checked through read_patterns below).
        (&[" #notcomment"], "#notcomment", true),
        (&["#comment", "x"], "#comment", false),
    ];

    #[test]
    fn pattern_table() {
        let mut failures = Vec::new();
        for (i, (pats, path, want)) in TABLE.iter().enumerate() {
            // Through the file reader, as a real .dockerignore would be read.
            let m = Matcher::from_dockerignore(&pats.join("\n")).unwrap();
            if m.excludes(path) != *want {
                failures.push(format!(
                    "row {i}: {pats:?} on {path:?}: want excluded={want}"
                ));
            }
        }
        assert!(TABLE.len() >= 60);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn reading_the_file() {
        let text = "\u{feff}# comment\n #not a comment\n\n  /abs/path  \n! keep\nsub/../x\n";
        assert_eq!(
            read_patterns(text),
            vec!["#not a comment", "abs/path", "!keep", "x"]
        );
        let m = Matcher::from_dockerignore("*\n!keep\n").unwrap();
        assert!(m.excludes("other") && !m.excludes("keep"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for p in ["[", "[a", "[]", "[z-a]", "a\\", "!"] {
            assert!(Matcher::new(&[p]).is_err(), "{p:?} must be rejected");
        }
    }

    #[test]
    fn walk_descends_only_where_an_exception_may_reinclude() {
        let m = Matcher::new(&["node_modules", "build", "!build/keep/**", "!**/*.keep"]).unwrap();
        assert!(m.may_include_below("build"));
        assert!(m.may_include_below("build/keep"));
        assert!(
            m.may_include_below("node_modules"),
            "**/*.keep can match anywhere"
        );
        let m = Matcher::new(&["node_modules", "build", "!build/keep"]).unwrap();
        assert!(!m.may_include_below("node_modules"));
        assert!(!m.may_include_below("build/other"));
        assert!(m.may_include_below("build"));
    }
}
