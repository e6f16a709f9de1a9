//! The Dockerfile frontend: text in, typed instructions out. Pure: no I/O.
//!
//! - [`parser`]: BuildKit's line rules (directives, comments, continuations, heredocs) and its
//!   AST, whose dump matches upstream's byte for byte.
//! - [`shell`]: BuildKit's word expansion (`$v`, `${v:-w}`, `${v#p}`, ...), quoting and word
//!   splitting.
//! - [`instructions`]: typed instructions with BuildKit's per-instruction checks.
//! - [`quote`]: Go's `strconv.Quote`, for the dump.
//!
//! [`Dockerfile::parse`] ties them together and attaches the file name, line and an excerpt to
//! every error, and collects lint warnings (which a `# check=` directive can skip or make
//! fatal).

#[cfg(test)]
mod fuzz;
pub mod instructions;
pub mod lint;
pub mod mount;
pub mod parser;
pub mod quote;
pub mod shell;

pub use instructions::{Command, Copy, Healthcheck, Instruction, Run};
pub use parser::{Ast, Heredoc, Node};

/// A warning with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The lint rule (BuildKit's names: `JSONArgsRecommended`, `LegacyKeyValueFormat`...).
    pub rule: &'static str,
    /// What is wrong.
    pub message: String,
    /// 1-based line.
    pub line: usize,
}

/// A Dockerfile error: where, what, and the line as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct DockerfileError {
    /// The file name as the user gave it.
    pub file: String,
    /// 1-based line (0 when the whole file is at fault).
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// The offending source line, trimmed and shortened.
    pub excerpt: String,
}

/// One instruction with its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The instruction.
    pub instruction: Instruction,
    /// 1-based first line.
    pub line: usize,
    /// 1-based last line.
    pub end_line: usize,
    /// The logical line as written (continuations joined).
    pub original: String,
}

/// What the `# check=` directive asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// Rules to skip (`all` skips every rule).
    pub skip: Vec<String>,
    /// Warnings fail the check.
    pub error: bool,
}

impl CheckConfig {
    /// Parses `skip=A,B;error=true`.
    pub fn parse(v: &str) -> Result<CheckConfig, String> {
        let mut c = CheckConfig::default();
        for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("skip", rules)) => {
                    c.skip = rules.split(',').map(|r| r.trim().to_string()).collect()
                }
                Some(("error", b)) => {
                    c.error = b
                        .parse()
                        .map_err(|_| format!("invalid check directive error value {b:?}"))?
                }
                _ => {
                    return Err(format!(
                        "invalid check directive {part:?} (want skip=RULES or error=BOOL)"
                    ))
                }
            }
        }
        Ok(c)
    }

    /// Whether `rule` is reported.
    pub fn enabled(&self, rule: &str) -> bool {
        !self
            .skip
            .iter()
            .any(|s| s.eq_ignore_ascii_case(rule) || s == "all")
    }
}

/// A parsed, checked Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The file name for messages.
    pub file: String,
    /// The AST.
    pub ast: Ast,
    /// The typed instructions, in order.
    pub instructions: Vec<Located>,
    /// Lint warnings, in line order.
    pub warnings: Vec<Warning>,
    /// The `# check=` directive.
    pub check: CheckConfig,
    /// The `# syntax=` directive, if any.
    pub syntax: Option<String>,
    source_lines: Vec<String>,
}

fn excerpt_of(lines: &[String], line: usize) -> String {
    let l = lines
        .get(line.wrapping_sub(1))
        .map(|s| s.trim())
        .unwrap_or("");
    if l.chars().count() > 80 {
        format!("{}...", l.chars().take(77).collect::<String>())
    } else {
        l.to_string()
    }
}

impl Dockerfile {
    /// Parses `bytes` (invalid UTF-8 is replaced) as the file `file`.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Dockerfile, DockerfileError> {
        let text = String::from_utf8_lossy(bytes);
        let source_lines: Vec<String> = text
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        let mk = |line: usize, message: String| DockerfileError {
            file: file.to_string(),
            line,
            excerpt: excerpt_of(&source_lines, line),
            message,
        };
        let ast = parser::parse(&text).map_err(|e| mk(e.line, e.message))?;
        let mut check = CheckConfig::default();
        let mut syntax = None;
        for d in &ast.directives {
            match d.name.as_str() {
                "check" => check = CheckConfig::parse(&d.value).map_err(|m| mk(d.line, m))?,
                "syntax" => syntax = Some(d.value.clone()),
                _ => {}
            }
        }
        let mut instructions = Vec::new();
        let mut warnings: Vec<Warning> = ast
            .warnings
            .iter()
            .map(|w| Warning {
                rule: w.rule,
                message: format!("{}; {}", w.message, w.detail),
                line: w.line,
            })
            .collect();
        for node in &ast.children {
            let instruction = instructions::from_node(node).map_err(|m| mk(node.start_line, m))?;
            lint_node(node, &instruction, &mut warnings);
            instructions.push(Located {
                instruction,
                line: node.start_line,
                end_line: node.end_line,
                original: node.original.clone(),
            });
        }
        lint_casing(&ast, &mut warnings);
        if let Some(s) = &syntax {
            let frontend = s.split(' ').next().unwrap_or_default();
            if !frontend.contains("docker/dockerfile") && !frontend.starts_with("dockerfile") {
                warnings.push(Warning {
                    rule: "UnsupportedFrontend",
                    message: format!(
                        "syntax directive {frontend:?} is ignored: kiln reads Dockerfiles itself"
                    ),
                    line: ast
                        .directives
                        .iter()
                        .find(|d| d.name == "syntax")
                        .map_or(1, |d| d.line),
                });
            }
        }
        let mut df = Dockerfile {
            file: file.to_string(),
            ast,
            instructions,
            warnings: Vec::new(),
            check,
            syntax,
            source_lines,
        };
        df.add_warnings(warnings);
        Ok(df)
    }

    /// Adds warnings (from later stages, such as planning), honouring `# check=skip`.
    pub fn add_warnings(&mut self, ws: Vec<Warning>) {
        self.warnings
            .extend(ws.into_iter().filter(|w| self.check.enabled(w.rule)));
        self.warnings.sort_by_key(|w| w.line);
    }

    /// An error at `line` of this file.
    pub fn error_at(&self, line: usize, message: impl Into<String>) -> DockerfileError {
        DockerfileError {
            file: self.file.clone(),
            line,
            message: message.into(),
            excerpt: excerpt_of(&self.source_lines, line),
        }
    }

    /// The escape token in force.
    pub fn escape(&self) -> char {
        self.ast.escape
    }
}

fn lint_node(node: &Node, ins: &Instruction, out: &mut Vec<Warning>) {
    let line = node.start_line;
    let mut warn = |rule: &'static str, message: String| {
        out.push(Warning {
            rule,
            message,
            line,
        })
    };
    match ins {
        Instruction::Env(_) | Instruction::Label(_) if node.args.get(2).is_some_and(|s| s.is_empty()) => warn(
            "LegacyKeyValueFormat",
            format!(
                "\"{} key=value\" should be used instead of legacy \"{} key value\" format",
                node.value.to_uppercase(),
                node.value.to_uppercase()
            ),
        ),
        Instruction::Maintainer(_) => {
            warn("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label".into())
        }
        Instruction::Cmd(Command::Shell(_)) | Instruction::Entrypoint(Command::Shell(_)) => warn(
            "JSONArgsRecommended",
            format!(
                "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                node.value.to_uppercase()
            ),
        ),
        Instruction::From { name: Some(_), .. } => {
            let as_word = &node.args[1];
            let kw_upper = node.value.chars().any(|c| c.is_ascii_uppercase());
            let as_upper = as_word.chars().any(|c| c.is_ascii_uppercase());
            if kw_upper != as_upper {
                warn("FromAsCasing", format!("'{as_word}' and '{}' keywords' casing do not match", node.value));
            }
            let raw_name = &node.args[2];
            if raw_name.chars().any(|c| c.is_ascii_uppercase()) {
                warn("StageNameCasing", format!("Stage name '{raw_name}' should be lowercase"));
            }
        }
        Instruction::Workdir(p) if !p.starts_with('/') && !p.starts_with('$') => warn(
            "WorkdirRelativePath",
            format!("Relative workdir {p:?} can have unexpected results if the base image changes"),
        ),
        _ => {}
    }
}

/// ConsistentInstructionCasing: keywords should be all upper or all lower case, as the
/// majority of the file is.
fn lint_casing(ast: &Ast, out: &mut Vec<Warning>) {
    let upper = ast
        .children
        .iter()
        .filter(|n| n.value == n.value.to_uppercase())
        .count();
    let lower = ast
        .children
        .iter()
        .filter(|n| n.value == n.value.to_lowercase())
        .count();
    let want_upper = upper >= lower;
    for n in &ast.children {
        let ok = if want_upper {
            n.value == n.value.to_uppercase()
        } else {
            n.value == n.value.to_lowercase()
        };
        if !ok {
            out.push(Warning {
                rule: "ConsistentInstructionCasing",
                message: format!(
                    "Command '{}' should match the case of the command majority ({})",
                    n.value,
                    if want_upper { "uppercase" } else { "lowercase" }
                ),
                line: n.start_line,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_line_and_excerpt() {
        let e = Dockerfile::parse("Dockerfile", b"FROM a\n\nRUNN echo hi\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:3: unknown instruction \"RUNN\" (did you mean RUN?)"
        );
        assert_eq!(e.excerpt, "RUNN echo hi");
    }

    #[test]
    fn check_directive_skips_rules() {
        let df = Dockerfile::parse(
            "D",
            b"# check=skip=JSONArgsRecommended\nFROM a\nCMD x\nMAINTAINER me\n",
        )
        .unwrap();
        let rules: Vec<_> = df.warnings.iter().map(|w| w.rule).collect();
        assert_eq!(rules, vec!["MaintainerDeprecated"]);
    }
}
