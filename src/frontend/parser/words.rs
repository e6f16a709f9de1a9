//! Words of an instruction line: whitespace splitting, flags, JSON arrays, name=value pairs and heredoc markers, as BuildKit's parser splits them.

#[allow(unused_imports)]
use super::*;

pub(super) fn can_contain_heredoc(node: &Node) -> bool {
    let n = match (node.keyword().as_str(), &node.sub) {
        ("onbuild", Some(sub)) => sub,
        _ => node,
    };
    matches!(n.keyword().as_str(), "run" | "copy" | "add") && !n.json
}

/// `[\t\v\f\r ]+`, the separator of BuildKit's `reWhitespace`.
pub(super) fn is_ws_sep(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

pub(super) fn split_ws(s: &str) -> Vec<String> {
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

pub(super) fn split_ws2(s: &str) -> (String, Option<String>) {
    match s.find(is_ws_sep) {
        Some(i) => {
            let rest = s[i..].trim_start_matches(is_ws_sep);
            (s[..i].to_string(), Some(rest.to_string()))
        }
        None => (s.to_string(), None),
    }
}

pub(super) fn node_from_line(line: &str, escape: char) -> Result<Node, String> {
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
pub(super) fn split_command(line: &str) -> (String, Vec<String>, String) {
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
pub(super) fn extract_flags(line: &str) -> (String, Vec<String>) {
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

pub(super) fn parse_name_val(
    rest: &str,
    key: &str,
    escape: char,
    node: &mut Node,
) -> Result<(), String> {
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

pub(super) const NOT_STRINGS: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

pub(super) fn parse_maybe_json(rest: &str, node: &mut Node) -> Result<(), String> {
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

pub(super) fn parse_maybe_json_to_list(rest: &str, node: &mut Node) -> Result<(), String> {
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
