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

mod directive;
pub use directive::*;
mod words;
pub use words::*;

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
