//! Dockerfile text -> AST, with BuildKit's line rules (`frontend/dockerfile/parser`).
//!
//! The AST is BuildKit's shape, so its dump can be compared byte-for-byte with upstream's:
//! one [`Node`] per instruction with the keyword as written, the leading `--flags`, the
//! argument strings the instruction's line parser produced, heredoc bodies, and its 1-based
//! start and end lines. Nothing is validated or expanded here beyond what BuildKit's parser
//! itself does (non-string JSON arrays, `ENV` without a value, unterminated heredocs, too-long
//! lines, empty files); instruction-level checks are in [`super::instructions`].
//!
//! Line rules, in order: split on `\n` (a trailing `\r` is dropped), drop a BOM on line 1,
//! parser directives at the very top, comment lines (first non-blank character `#`, also
//! inside a continuation), the first physical line of an instruction left-trimmed but
//! continuation lines kept as they are, continuation when the escape token ends the line
//! (`([^E])E[ \t]*$|^E[ \t]*$`), blank lines inside a continuation skipped with a warning, and
//! heredoc bodies read after the instruction line for RUN/COPY/ADD (also under ONBUILD).

use super::quote::{go_quote, go_quote_list};
use super::shell::{is_space, Lexer, NoEnv};

/// Go's `bufio.MaxScanTokenSize`: a physical line (with its newline) must be shorter.
pub const MAX_LINE: usize = 64 * 1024;

/// One instruction, or (for ONBUILD) the instruction inside it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The keyword as written (`run`, `RUN`, `Run`...); compare with [`Node::keyword`].
    pub value: String,
    /// Leading `--flag[=value]` words, quotes removed.
    pub flags: Vec<String>,
    /// The argument nodes the line parser produced.
    pub args: Vec<String>,
    /// ONBUILD's wrapped instruction.
    pub sub: Option<Box<Node>>,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    /// The logical line (continuations joined), as BuildKit's `Original`.
    pub original: String,
    /// Heredoc bodies attached to this instruction, in order.
    pub heredocs: Vec<Heredoc>,
    /// Comment lines right above the instruction.
    pub comments: Vec<String>,
    /// 1-based first line.
    pub start_line: usize,
    /// 1-based last line (inclusive; includes heredoc bodies).
    pub end_line: usize,
}

/// A heredoc body attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heredoc {
    /// The terminator word (quotes removed), also the file name for COPY/ADD.
    pub name: String,
    /// `3<<EOF` gives 3; 0 when absent.
    pub fd: u32,
    /// False when any part of the terminator was quoted: the body is not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body (by the consumer) and the terminator.
    pub chomp: bool,
    /// The raw body, line endings included.
    pub content: String,
}

/// A non-fatal finding, reported with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The rule, as BuildKit names it (`NoEmptyContinuation`, `LegacyKeyValueFormat`...).
    pub rule: &'static str,
    /// What is wrong.
    pub message: String,
    /// Why it matters, or what to do.
    pub detail: String,
    /// 1-based line.
    pub line: usize,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    /// The instructions, in order.
    pub children: Vec<Node>,
    /// The active escape token.
    pub escape: char,
    /// Parser directives found at the top (`syntax`, `escape`, `check`), lower-cased names.
    pub directives: Vec<Directive>,
    /// Parser warnings.
    pub warnings: Vec<Warning>,
}

/// A parser directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name.
    pub name: String,
    /// The value as written (trimmed).
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// A parse failure at a line (or a range of lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// 1-based first line; 0 when the whole file is at fault.
    pub line: usize,
    /// 1-based last line.
    pub end_line: usize,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Node {
    /// The keyword lower-cased.
    pub fn keyword(&self) -> String {
        self.value.to_ascii_lowercase()
    }

    /// BuildKit's `Node.Dump()`.
    pub fn dump(&self) -> String {
        let mut s = self.value.to_lowercase();
        if !self.flags.is_empty() {
            s.push(' ');
            s.push_str(&go_quote_list(&self.flags));
        }
        for a in &self.args {
            s.push(' ');
            s.push_str(&go_quote(a));
        }
        if let Some(sub) = &self.sub {
            s.push_str(" (");
            s.push_str(&sub.dump());
            s.push(')');
        }
        s.trim_matches(is_space).to_string()
    }
}

impl Ast {
    /// The whole-file dump, one `(instruction ...)` line each, as upstream's `result` files.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for c in &self.children {
            s.push('(');
            s.push_str(&c.dump());
            s.push_str(")\n");
        }
        s
    }

    /// The first and last line of the instructions.
    pub fn span(&self) -> (usize, usize) {
        (
            self.children.first().map_or(0, |c| c.start_line),
            self.children.last().map_or(0, |c| c.end_line),
        )
    }
}

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
fn match_directive(line: &str, prefix: &str) -> Option<(String, String)> {
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

struct Lines<'a> {
    lines: Vec<&'a str>,
    next: usize,
}

impl<'a> Lines<'a> {
    /// The next physical line with its line ending, as BuildKit's `scanLines`; a line longer
    /// than Go's scanner buffer is an error there, so it is one here.
    fn scan(&mut self) -> Result<Option<&'a str>, ParseError> {
        let l = self.lines.get(self.next).copied();
        self.next += 1;
        match l {
            Some(l) if trim_newline(l).len() >= MAX_LINE => Err(ParseError {
                message: format!(
                    "dockerfile line greater than max allowed size of {}",
                    MAX_LINE - 1
                ),
                line: self.next,
                end_line: self.next,
            }),
            l => Ok(l),
        }
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

/// Removes a trailing continuation token; returns whether the line ends the instruction.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    if let Some(before) = body.strip_suffix(escape) {
        // `([^E])E[ \t]*$` keeps the character before; `^E[ \t]*$` is a lone token.
        match before.chars().last() {
            None => return (String::new(), false),
            Some(c) if c != escape => return (before.to_string(), false),
            Some(_) => {}
        }
    }
    (line.to_string(), true)
}

/// Parses a Dockerfile. `text` is the whole file; invalid UTF-8 must be replaced by the caller.
pub fn parse(text: &str) -> Result<Ast, ParseError> {
    let mut lines = Lines {
        lines: text.split_inclusive('\n').collect(),
        next: 0,
    };
    let mut escape = '\\';
    let mut dparser = DirectiveParser::default();
    let mut directives = Vec::new();
    let mut warnings = Vec::new();
    let mut children: Vec<Node> = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut current = 0usize;
    let err = |message: String, line: usize, end_line: usize| ParseError {
        message,
        line,
        end_line,
    };

    while let Some(physical) = lines.scan()? {
        let mut bytes = physical;
        if current == 0 {
            bytes = bytes.strip_prefix('\u{feff}').unwrap_or(bytes);
        }
        let mut line = trim_newline(bytes).trim_start_matches(is_space);
        let directive = dparser
            .parse_line(line)
            .map_err(|m| err(m, current + 1, current + 1))?;
        if is_comment(bytes) && directive.is_none() {
            let c = bytes.trim_start_matches(is_space)[1..]
                .trim_matches(is_space)
                .to_string();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c);
            }
        }
        current += 1;
        if let Some(d) = directive {
            if d.name == "escape" {
                escape = match d.value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    v => {
                        return Err(err(
                            format!("invalid escape token '{v}' does not match ` or \\"),
                            current,
                            current,
                        ))
                    }
                };
            }
            directives.push(d);
        }
        if is_comment(line) {
            line = "";
        }
        let start = current;
        let (first, mut end_of_line) = trim_continuation(line, escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut logical = first;
        let mut empty_continuation = false;
        while !end_of_line {
            let Some(next) = lines.scan()? else { break };
            // Directive scanning is over by now; BuildKit still feeds it the line.
            let _ = dparser.parse_line(trim_newline(next));
            current += 1;
            if is_comment(next) {
                continue;
            }
            let content = trim_newline(next);
            if content.trim_start_matches(is_space).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, eol) = trim_continuation(content, escape);
            logical.push_str(&part);
            end_of_line = eol;
        }
        if empty_continuation {
            warnings.push(Warning {
                rule: "NoEmptyContinuation",
                message: format!("Empty continuation line found in: {logical}"),
                detail: "Empty continuation lines will become errors in a future release".into(),
                line: current,
            });
        }
        let mut node = node_from_line(&logical, escape).map_err(|m| err(m, start, current))?;
        node.comments = std::mem::take(&mut comments);
        if can_contain_heredoc(&node) && logical.contains("<<") {
            let docs = heredocs_from_line(&logical).map_err(|m| err(m, start, current))?;
            for mut doc in docs {
                let mut terminated = false;
                while let Some(body) = lines.scan()? {
                    current += 1;
                    let mut candidate = trim_newline(body);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(body);
                }
                if !terminated {
                    return Err(err(
                        format!("unterminated heredoc {:?}", doc.name),
                        start,
                        current,
                    ));
                }
                node.heredocs.push(doc);
            }
        }
        node.start_line = start;
        node.end_line = current;
        if let Some(sub) = node.sub.as_mut() {
            sub.start_line = start;
            sub.end_line = current;
        }
        children.push(node);
    }
    if children.is_empty() {
        return Err(err("file with no instructions".into(), 0, 0));
    }
    Ok(Ast {
        children,
        escape,
        directives,
        warnings,
    })
}

fn can_contain_heredoc(node: &Node) -> bool {
    let n = match (node.keyword().as_str(), &node.sub) {
        ("onbuild", Some(sub)) => sub,
        _ => node,
    };
    matches!(n.keyword().as_str(), "run" | "copy" | "add") && !n.json
}

/// `[\t\v\f\r ]+`, the separator of BuildKit's `reWhitespace`.
fn is_ws_sep(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

fn split_ws(s: &str) -> Vec<String> {
    // regexp.Split(s, -1): empty leading/trailing pieces are kept, runs collapse.
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if is_ws_sep(c) {
            while chars.peek().is_some_and(|c| is_ws_sep(*c)) {
                chars.next();
            }
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn split_ws2(s: &str) -> (String, Option<String>) {
    match s.find(is_ws_sep) {
        Some(i) => {
            let rest = s[i..].trim_start_matches(is_ws_sep);
            (s[..i].to_string(), Some(rest.to_string()))
        }
        None => (s.to_string(), None),
    }
}

fn node_from_line(line: &str, escape: char) -> Result<Node, String> {
    let (cmd, flags, args) = split_command(line);
    let mut node = Node {
        value: cmd.clone(),
        flags,
        original: line.to_string(),
        ..Node::default()
    };
    match cmd.to_ascii_lowercase().as_str() {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(&args, &mut node)?,
        "run" | "cmd" | "entrypoint" | "shell" => parse_maybe_json(&args, &mut node)?,
        "from" | "expose" => {
            if !args.is_empty() {
                node.args = split_ws(&args);
            }
        }
        "env" => parse_name_val(&args, "ENV", escape, &mut node)?,
        "label" => parse_name_val(&args, "LABEL", escape, &mut node)?,
        "arg" => node.args = parse_words(&args, escape),
        "healthcheck" => {
            let sep = args.find(is_space).unwrap_or(args.len());
            if sep > 0 {
                let rest = args[sep..].trim_start_matches(is_space);
                node.args.push(args[..sep].to_string());
                parse_maybe_json(rest, &mut node)?;
            }
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if !args.is_empty() {
                node.args.push(args);
            }
        }
        "onbuild" if args.is_empty() => {}
        "onbuild" => {
            let sub = node_from_line(&args, escape)?;
            node.sub = Some(Box::new(sub));
        }
        _ => node.args.push(String::new()),
    }
    Ok(node)
}

/// BuildKit's `splitCommand`: keyword, leading flags, the rest.
fn split_command(line: &str) -> (String, Vec<String>, String) {
    let (cmd, rest) = split_ws2(line.trim_matches(is_space));
    let (args, flags) = match rest {
        Some(r) => extract_flags(&r),
        None => (String::new(), Vec::new()),
    };
    (cmd, flags, args.trim_matches(is_space).to_string())
}

/// BuildKit's `extractBuilderFlags`: the leading `--name[=value]` words, quotes removed and
/// escapes applied; a bare `--` ends them. BuildKit walks bytes and tests each byte with
/// `unicode.IsSpace`, which splits some multi-byte UTF-8 characters (their 0x85 and 0xA0
/// bytes); kiln tests only ASCII bytes for space and keeps flag values valid UTF-8.
fn extract_flags(line: &str) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let b = line.as_bytes();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word: Vec<u8> = Vec::new();
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = 0;
    let space = |c: u8| c.is_ascii() && is_space(c as char);
    let text = |w: &[u8]| String::from_utf8_lossy(w).into_owned();
    while pos <= b.len() {
        let ch = if pos < b.len() { b[pos] } else { 0 };
        if phase == Phase::Spaces {
            if pos == b.len() {
                break;
            }
            if space(ch) {
                pos += 1;
                continue;
            }
            if ch != b'-' || pos + 1 == b.len() || b[pos + 1] != b'-' {
                return (text(&b[pos..]), words);
            }
            phase = Phase::Word;
        }
        if pos == b.len() {
            if word != b"--" && (blank_ok || !word.is_empty()) {
                words.push(text(&word));
            }
            break;
        }
        if phase == Phase::Word {
            if space(ch) {
                phase = Phase::Spaces;
                if word == b"--" {
                    return (text(&b[pos..]), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(text(&word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
        } else if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut c = ch;
        if c == b'\\' {
            if pos + 1 == b.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            c = b[pos];
        }
        word.push(c);
        pos += 1;
    }
    (String::new(), words)
}

/// BuildKit's `parseWords`: split on whitespace, keeping quotes and escapes.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut w = String::new();
    let mut pos = 0;
    while pos <= chars.len() {
        let ch = chars.get(pos).copied().unwrap_or('\0');
        if phase == Phase::Spaces {
            if pos == chars.len() {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if pos == chars.len() {
            // The end of the input ends the word, even inside an unterminated quote.
            if blank_ok || !w.is_empty() {
                words.push(std::mem::take(&mut w));
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !w.is_empty() {
                    words.push(std::mem::take(&mut w));
                }
                w.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            let mut c = ch;
            if c == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                w.push(c);
                pos += 1;
                c = chars[pos];
            }
            w.push(c);
            pos += 1;
            continue;
        }
        let mut c = ch;
        if c == quote {
            phase = Phase::Word;
        }
        if c == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            w.push(c);
            c = chars[pos];
        }
        w.push(c);
        pos += 1;
    }
    words
}

fn parse_name_val(rest: &str, key: &str, escape: char, node: &mut Node) -> Result<(), String> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(());
    }
    if !words[0].contains('=') {
        let (k, v) = split_ws2(rest);
        match v {
            Some(v) => node.args.extend([k, v, String::new()]),
            None => return Err(format!("{key} must have two arguments")),
        }
        return Ok(());
    }
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                go_quote(&w)
            ));
        };
        node.args
            .extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(())
}

/// Why exec-form JSON was not used.
#[derive(Debug, PartialEq, Eq)]
pub enum JsonForm {
    /// Not a JSON array (or not valid JSON): shell form.
    NotJson,
    /// A JSON array with a non-string element: a hard error.
    NotStrings,
}

/// Exec-form JSON: an array of strings, else [`JsonForm`].
pub fn parse_json_array(rest: &str) -> Result<Vec<String>, JsonForm> {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return Err(JsonForm::NotJson);
    }
    let v: Vec<serde_json::Value> = serde_json::from_str(rest).map_err(|_| JsonForm::NotJson)?;
    v.into_iter()
        .map(|e| match e {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(JsonForm::NotStrings),
        })
        .collect()
}

const NOT_STRINGS: &str = "when using JSON array syntax, arrays must be comprised of strings only";

fn parse_maybe_json(rest: &str, node: &mut Node) -> Result<(), String> {
    if rest.is_empty() {
        return Ok(());
    }
    match parse_json_array(rest) {
        Ok(items) => {
            node.args.extend(items);
            node.json = true;
        }
        Err(JsonForm::NotStrings) => return Err(NOT_STRINGS.into()),
        Err(JsonForm::NotJson) => node.args.push(rest.to_string()),
    }
    Ok(())
}

fn parse_maybe_json_to_list(rest: &str, node: &mut Node) -> Result<(), String> {
    match parse_json_array(rest) {
        Ok(items) => {
            node.args.extend(items);
            node.json = true;
        }
        Err(JsonForm::NotStrings) => return Err(NOT_STRINGS.into()),
        Err(JsonForm::NotJson) => {
            if !rest.is_empty() {
                node.args = split_ws(rest);
            }
        }
    }
    Ok(())
}

/// BuildKit's `ParseHeredoc`: `^(\d*)<<(-?)([^<]*)$`, the rest lexed as exactly one word.
/// `Ok(None)` when `word` is not a heredoc.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    let digits = word.bytes().take_while(u8::is_ascii_digit).count();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match after.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, after),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let fd = word[..digits].parse::<u32>().unwrap_or(0);
    let mut lx = Lexer::new('\\');
    lx.skip_unset = true;
    let words = lx.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if words.len() != 1 {
        return Ok(None);
    }
    lx.raw_quotes = true;
    let raw = lx.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = quotes(&words[0]) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        fd,
        expand,
        chomp,
        content: String::new(),
    }))
}

/// The heredocs a logical line opens, in order. A bare `<<` or `<<-` word joins the word
/// after it (`RUN << EOF`).
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let lx = Lexer {
        escape: '\\',
        raw_quotes: true,
        raw_escapes: true,
        skip_quotes: false,
        skip_unset: true,
    };
    let words = lx.process_words(line, &NoEnv).unwrap_or_default();
    let mut docs = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let mut word = words[i].clone();
        let bare = word.trim_start_matches(|c: char| c.is_ascii_digit());
        if (bare == "<<" || bare == "<<-") && i + 1 < words.len() {
            word = format!("{word} {}", words[i + 1]);
            i += 1;
        }
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
        i += 1;
    }
    Ok(docs)
}

/// Strips leading tabs from every line (`<<-`).
pub fn chomp_heredoc(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_flags() {
        let ast = parse("FROM a AS b\nRUN --mount=type=cache,target=/x \\\n  echo hi\n").unwrap();
        assert_eq!(
            ast.dump(),
            "(from \"a\" \"AS\" \"b\")\n(run [\"--mount=type=cache,target=/x\"] \"echo hi\")\n"
        );
        assert_eq!(
            (ast.children[1].start_line, ast.children[1].end_line),
            (2, 3)
        );
    }

    #[test]
    fn heredoc_without_terminator_is_an_error() {
        let e = parse("FROM a\nRUN <<EOF\necho\n").unwrap_err();
        assert!(e.message.contains("unterminated heredoc"), "{e:?}");
        assert_eq!(e.line, 2);
    }
}
