//! Parser directives (`# syntax=`, `# escape=`, `# check=`) at the top of a Dockerfile, as BuildKit's DirectiveParser reads them.

#[allow(unused_imports)]
use super::*;

/// Parses and collects parser directives (`# name=value` at the top of the file), as
/// BuildKit's `DirectiveParser`.
#[derive(Debug, Clone)]
pub struct DirectiveParser {
    prefix: &'static str,
    line: usize,
    seen: Vec<String>,
    done: bool,
}

impl Default for DirectiveParser {
    fn default() -> Self {
        DirectiveParser::with_prefix("#")
    }
}

impl DirectiveParser {
    /// A parser for directives behind `prefix` (`#`, or `//` when detecting `syntax`).
    pub fn with_prefix(prefix: &'static str) -> DirectiveParser {
        DirectiveParser {
            prefix,
            line: 0,
            seen: Vec::new(),
            done: false,
        }
    }

    /// Looks at one line; returns the directive it holds, if any. The first line that is not a
    /// known directive ends the scan for good.
    pub fn parse_line(&mut self, line: &str) -> Result<Option<Directive>, String> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        let Some((k, v)) = match_directive(line, self.prefix) else {
            self.done = true;
            return Ok(None);
        };
        let k = k.to_ascii_lowercase();
        if !matches!(k.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&k) {
            return Err(format!("only one {k} parser directive can be used"));
        }
        self.seen.push(k.clone());
        Ok(Some(Directive {
            name: k,
            value: v,
            line: self.line,
        }))
    }

    /// Every directive at the top of `text`.
    pub fn parse_all(&mut self, text: &str) -> Result<Vec<Directive>, String> {
        let mut out = Vec::new();
        for line in text.split('\n') {
            if self.done {
                break;
            }
            if let Some(d) = self.parse_line(line.strip_suffix('\r').unwrap_or(line))? {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// `^PREFIX\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` with Go's ASCII `\s`.
pub(super) fn match_directive(line: &str, prefix: &str) -> Option<(String, String)> {
    let go_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r');
    let rest = line.strip_prefix(prefix)?.trim_start_matches(go_space);
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    if !name.chars().next()?.is_ascii_alphabetic() {
        return None;
    }
    let rest = rest[name_len..]
        .trim_start_matches(go_space)
        .strip_prefix('=')?;
    let value = rest.trim_matches(go_space);
    if value.is_empty() {
        return None;
    }
    Some((name.to_string(), value.to_string()))
}

/// The outcome of looking for a directive with [`detect_directive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDirective {
    /// The value up to its first space (for `syntax`, the frontend reference).
    pub value: String,
    /// The whole value.
    pub cmdline: String,
    /// 1-based line.
    pub line: usize,
}

/// BuildKit's `ParseDirective(key)` (and `DetectSyntax` for `syntax`): the BOM and a `#!`
/// first line are skipped; `syntax` is also found behind `//` or as a whole-file JSON object.
pub fn detect_directive(key: &str, text: &str) -> Option<FoundDirective> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (text, base) = match text.strip_prefix("#!") {
        Some(_) => (text.split_once('\n').map_or("", |(_, r)| r), 1),
        None => (text, 0),
    };
    let from = |mut p: DirectiveParser| {
        p.line = base;
        let ds = p.parse_all(text).unwrap_or_default();
        ds.into_iter()
            .find(|d| d.name == key)
            .map(|d| FoundDirective {
                value: d.value.split(' ').next().unwrap_or_default().to_string(),
                cmdline: d.value,
                line: d.line,
            })
    };
    if let Some(f) = from(DirectiveParser::with_prefix("#")) {
        return Some(f);
    }
    if key != "syntax" {
        return None;
    }
    if let Some(f) = from(DirectiveParser::with_prefix("//")) {
        return Some(f);
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let s = v.as_object()?.get(key)?.as_str()?.to_string();
    Some(FoundDirective {
        value: s.clone(),
        cmdline: s,
        line: base + 1,
    })
}
