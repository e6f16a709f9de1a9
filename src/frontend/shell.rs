//! Word expansion as BuildKit's shell lexer does it (`frontend/dockerfile/shell/lex.go`).
//!
//! A word is read once, left to right: quotes are removed (`'...'` fully literal; `"..."`
//! where the escape token escapes only `"`, `$` and itself), the escape token escapes one
//! character, and `$name`, `${name}` and the `${name<modifier>word}` forms expand from the
//! environment. Expansion happens before word splitting: unquoted expansion results split on
//! whitespace, quoted ones do not. Positional (`$1`) and special (`$@ $* $# $? $- $$ $! $0`)
//! parameters are never set. Patterns in `#`, `%` and `/` modifiers know `*` and `?` (no
//! bracket classes) and are matched with the leftmost-first semantics of Go's regexp, which
//! BuildKit compiles them to; `.` there does not match a newline, and neither do the wildcards.
//!
//! Nothing here does I/O: the environment is a [`Lookup`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

mod pattern;
use pattern::*;

/// Where `$name` looks names up.
pub trait Lookup {
    /// The value of `name`, if it is set (an empty value is set).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Lookup for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Lookup for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// An ordered list of `(name, value)`; the last definition of a name wins, as with BuildKit's
/// `BuildEnvs`.
impl Lookup for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Lookup for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// No variable is set.
pub struct NoEnv;

impl Lookup for NoEnv {
    fn lookup(&self, _: &str) -> Option<&str> {
        None
    }
}

/// `KEY=VALUE` strings to a map, as BuildKit's `BuildEnvs`: a string without `=` sets an empty
/// value, and a later definition overrides an earlier one.
pub fn env_from_strings<S: AsRef<str>>(env: &[S]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for e in env {
        let e = e.as_ref();
        match e.split_once('=') {
            Some((k, v)) => map.insert(k.to_string(), v.to_string()),
            None => map.insert(e.to_string(), String::new()),
        };
    }
    map
}

/// A failed expansion; `Display` gives BuildKit's wording, `failed to process "WORD": why`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {source_word:?}: {message}")]
pub struct ShellError {
    /// The word being processed.
    pub source_word: String,
    /// What went wrong (`syntax error: bad substitution`, `NAME: is not allowed to be unset`).
    pub message: String,
}

/// The outcome of processing one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The whole word, quotes removed, inner whitespace kept (BuildKit's `ProcessWord`).
    pub word: String,
    /// The word split after expansion (BuildKit's `ProcessWords`).
    pub words: Vec<String>,
    /// Names that were looked up and found.
    pub matched: BTreeSet<String>,
    /// Names that were looked up and not found.
    pub unmatched: BTreeSet<String>,
}

/// A configured lexer. `Lexer::new('\\')` is the default one.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    /// The escape token: `\` or `` ` `` (the `escape` directive).
    pub escape: char,
    /// Keep quote characters in the output.
    pub raw_quotes: bool,
    /// Keep escape tokens in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters (heredoc bodies).
    pub skip_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset: bool,
}

impl Lexer {
    /// A lexer with the given escape token and no raw modes.
    pub fn new(escape: char) -> Lexer {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_quotes: false,
            skip_unset: false,
        }
    }

    /// Processes `word` against `env`.
    pub fn process(&self, word: &str, env: &dyn Lookup) -> Result<Expansion, ShellError> {
        let mut st = State {
            lx: *self,
            chars: word.chars().collect(),
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        match st.process_stop_on(None, self.raw_escapes) {
            Ok((w, words)) => Ok(Expansion {
                word: w,
                words,
                matched: st.matched,
                unmatched: st.unmatched,
            }),
            Err(message) => Err(ShellError {
                source_word: word.to_string(),
                message,
            }),
        }
    }

    /// `ProcessWord`: the single expanded word.
    pub fn process_word(&self, word: &str, env: &dyn Lookup) -> Result<String, ShellError> {
        self.process(word, env).map(|e| e.word)
    }

    /// `ProcessWords`: the expanded words after splitting.
    pub fn process_words(&self, word: &str, env: &dyn Lookup) -> Result<Vec<String>, ShellError> {
        self.process(word, env).map(|e| e.words)
    }
}

/// Go's `unicode.IsSpace`.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if is_space(c) {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }
    fn add_raw_char(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

struct State<'a> {
    lx: Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Lookup,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

type Res<T> = Result<T, String>;

impl State<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    /// Reads until `stop` (consumed) or the end of the word; `stop` = None reads to the end.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Res<(String, Vec<String>)> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Res<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            let special = c == '$' || (!self.lx.skip_quotes && (c == '\'' || c == '"'));
            if special {
                let s = match c {
                    '$' => self.process_dollar()?,
                    '\'' => self.process_single_quote()?,
                    _ => self.process_double_quote()?,
                };
                result.push_str(&s);
                if c == '$' {
                    words.add_string(&s);
                } else {
                    words.add_raw_string(&s);
                }
                continue;
            }
            let mut c = self.next().unwrap_or_default();
            if c == self.lx.escape {
                if self.raw_escapes {
                    words.add_raw_char(c);
                    result.push(c);
                }
                match self.next() {
                    // A lone escape at the end of the word is dropped.
                    None => break,
                    Some(n) => c = n,
                }
                words.add_raw_char(c);
            } else {
                words.add_char(c);
            }
            result.push(c);
        }
        if let Some(s) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {s}"
            ));
        }
        Ok((result, words.finish()))
    }

    /// A modifier's word up to `stop`; running out of input reports `missing` (BuildKit's
    /// wording), any other failure inside the word is passed on.
    fn word_until(&mut self, stop: char, raw_escapes: bool, missing: &str) -> Res<String> {
        self.process_stop_on(Some(stop), raw_escapes)
            .map(|(w, _)| w)
            .map_err(|e| {
                if self.peek().is_none() {
                    missing.to_string()
                } else {
                    e
                }
            })
    }

    fn process_single_quote(&mut self) -> Res<String> {
        let mut out = String::new();
        let open = self.next().unwrap_or('\'');
        if self.lx.raw_quotes {
            out.push(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.lx.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Res<String> {
        let mut out = String::new();
        let open = self.next().unwrap_or('"');
        if self.lx.raw_quotes {
            out.push(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.next();
                    if self.lx.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    out.push_str(&v);
                }
                Some(_) => {
                    let mut c = self.next().unwrap_or_default();
                    if c == self.lx.escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lx.escape => {
                                c = n;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && is_digit(c) {
                while let Some(d) = self.peek().filter(|d| is_digit(*d)) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return c.to_string();
            }
            if !(c.is_alphabetic() || is_digit(c) || c == '_') {
                break;
            }
            name.push(c);
            self.next();
        }
        name
    }

    fn process_dollar(&mut self) -> Res<String> {
        self.next(); // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lx.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.next(); // '{'
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{') | Some('}') | Some(':') => {
                return Err("syntax error: bad substitution".into())
            }
            _ => {}
        }
        let name = self.process_name();
        let c = self.next();
        let mut modifier = c.map(String::from).unwrap_or_default();
        match c {
            Some('}') => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lx.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') | Some('+') | Some('-') | Some('?') | Some('#') | Some('%') => {
                let mut op = c;
                let null_is_unset = op == Some(':');
                if null_is_unset {
                    op = self.next();
                    if let Some(o) = op {
                        modifier.push(o);
                    }
                }
                let raw = matches!(op, Some('#') | Some('%'));
                let word = self.word_until('}', raw, "syntax error: missing '}'")?;
                if !matches!(op, Some('-') | Some('+') | Some('?'))
                    && (null_is_unset || !matches!(op, Some('#') | Some('%')))
                {
                    return Err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                let value = self.get_env(&name);
                if self.lx.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let empty_or_unset = value
                    .as_deref()
                    .is_none_or(|v| null_is_unset && v.is_empty());
                match op {
                    Some('-') => Ok(if empty_or_unset {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if empty_or_unset { String::new() } else { word }),
                    Some('?') => match value {
                        None => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        )),
                        Some(v) if null_is_unset && v.is_empty() => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        )),
                        Some(v) => Ok(v),
                    },
                    Some(o) => {
                        let value = value.unwrap_or_default();
                        let (greedy, pat) = match word.strip_prefix(o) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        if o == '%' {
                            trim_suffix(&pat, &value, greedy)
                        } else {
                            trim_prefix(&pat, &value, greedy)
                        }
                    }
                    None => Err(format!("unsupported modifier ({modifier}) in substitution")),
                }
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = self.word_until('/', true, "syntax error: missing '/' in ${}")?;
                let replacement = self.word_until('}', true, "syntax error: missing '}'")?;
                let value = self.get_env(&name);
                if self.lx.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let value = value.unwrap_or_default();
                let pat = Pattern::compile(&pattern, true)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                let v: Vec<char> = value.chars().collect();
                if all {
                    Ok(replace_all(&pat, &v, &replacement))
                } else {
                    Ok(match pat.find(&v) {
                        Some((s, e)) => {
                            let mut out: String = v[..s].iter().collect();
                            out.push_str(&replacement);
                            out.extend(&v[e..]);
                            out
                        }
                        None => value,
                    })
                }
            }
            _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_the_common_forms() {
        let e = env(&[("A", "x y"), ("E", "")]);
        let lx = Lexer::new('\\');
        assert_eq!(
            lx.process_word("$A-${A}-${B:-d}-${E:+s}-${A:+s}", &e)
                .unwrap(),
            "x y-x y-d--s"
        );
        assert_eq!(
            lx.process_words("a $A \"$A\"", &e).unwrap(),
            vec!["a", "x", "y", "x y"]
        );
        assert_eq!(lx.process_word("${A/ /_}", &e).unwrap(), "x_y");
        assert!(lx
            .process_word("${B:?must be set}", &e)
            .unwrap_err()
            .to_string()
            .contains("B: must be set"));
    }

    #[test]
    fn replace_all_follows_go_for_empty_matches() {
        let e = env(&[("V", "ab")]);
        let lx = Lexer::new('\\');
        assert_eq!(lx.process_word("${V//$X/-}", &e).unwrap(), "-a-b-");
        assert_eq!(lx.process_word("${V//*/-}", &e).unwrap(), "-");
    }

    #[test]
    fn backtick_escape_token() {
        let lx = Lexer::new('`');
        assert_eq!(lx.process_word("a`$b\\c", &NoEnv).unwrap(), "a$b\\c");
    }
}
