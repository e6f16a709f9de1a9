//! Compose's interpolation of values: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty),
//! `${VAR-default}` (unset), `${VAR:?message}` / `${VAR?message}` (an error), `${VAR:+other}` /
//! `${VAR+other}` (when set), `$$` for a literal `$`; defaults may hold interpolations
//! themselves. Values come from the environment, then the project's `.env` file.

use std::collections::HashMap;

/// Where variables come from: the process's environment first, then `.env`.
pub struct Vars {
    env: HashMap<String, String>,
}

impl Vars {
    pub fn new(process: impl IntoIterator<Item = (String, String)>, dotenv: &str) -> Vars {
        let mut env: HashMap<String, String> = parse_env_file(dotenv).into_iter().collect();
        env.extend(process);
        Vars { env }
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.env.get(k).map(String::as_str)
    }
}

/// `KEY=VALUE` lines (`export ` allowed, `#` comments, values in single or double quotes
/// unquoted), as docker compose reads `.env` and `env_file`. A bare `KEY` has no value.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l);
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            v[1..v.len() - 1].to_string()
        } else {
            // An unquoted value ends at a comment.
            v.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        out.push((k.trim().to_string(), v));
    }
    out
}

/// Interpolates `s`; the error is the message of a `${VAR:?message}` or says what is malformed.
pub fn interpolate(s: &str, vars: &Vars) -> Result<String, String> {
    nested(s, vars, 0)
}

/// How deep `${A:-${B:-...}}` may nest (a file is untrusted input; each level is a call).
const MAX_NESTING: usize = 32;

fn nested(s: &str, vars: &Vars, depth: usize) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "invalid interpolation format for {s:?}: nested more than {MAX_NESTING} levels deep"
        ));
    }
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let next = s[i..].find('$').map_or(s.len(), |n| i + n);
            out.push_str(&s[i..next]);
            i = next;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end = closing_brace(s, i + 2).ok_or_else(|| {
                    format!("invalid interpolation format for {s:?}: a ${{ is not closed")
                })?;
                out.push_str(&expand(&s[i + 2..end], s, vars, depth)?);
                i = end + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let len = s[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(s.len() - i - 1);
                out.push_str(vars.get(&s[i + 1..i + 1 + len]).unwrap_or(""));
                i += 1 + len;
            }
            _ => {
                return Err(format!(
                    "invalid interpolation format for {s:?}: write $$ for a literal $"
                ))
            }
        }
    }
    Ok(out)
}

/// The index of the `}` closing a `${` whose body starts at `from` (nested `${...}` skipped).
fn closing_brace(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// One `${...}` body.
fn expand(body: &str, whole: &str, vars: &Vars, depth: usize) -> Result<String, String> {
    let name_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (name, rest) = body.split_at(name_len);
    if name.is_empty() {
        return Err(format!(
            "invalid interpolation format for {whole:?}: no variable name in ${{{body}}}"
        ));
    }
    let val = vars.get(name);
    let (colon, rest) = match rest.strip_prefix(':') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // With a colon, an empty value counts as unset.
    let set = val.is_some_and(|v| !colon || !v.is_empty());
    let Some(op) = rest.chars().next() else {
        if colon {
            return Err(format!(
                "invalid interpolation format for {whole:?}: ${{{body}}}"
            ));
        }
        return Ok(val.unwrap_or("").to_string());
    };
    let arg = &rest[1..];
    match op {
        '-' if set => Ok(val.unwrap_or("").to_string()),
        '-' => nested(arg, vars, depth + 1),
        '?' if set => Ok(val.unwrap_or("").to_string()),
        '?' => Err(format!(
            "required variable {name} is missing a value: {}",
            nested(arg, vars, depth + 1)?
        )),
        '+' if set => nested(arg, vars, depth + 1),
        '+' => Ok(String::new()),
        _ => Err(format!(
            "invalid interpolation format for {whole:?}: ${{{body}}}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars::new(
            [
                ("SET".to_string(), "yes".to_string()),
                ("EMPTY".to_string(), String::new()),
            ],
            "# a comment\nFROM_FILE=\"file value\"\nexport PORT=4000 # the port\nSET=overridden\n",
        )
    }

    #[test]
    fn compose_forms() {
        let v = vars();
        let i = |s: &str| interpolate(s, &v);
        assert_eq!(i("$SET ${SET} $$SET").unwrap(), "yes yes $SET");
        assert_eq!(i("${FROM_FILE}:${PORT}").unwrap(), "file value:4000");
        assert_eq!(
            i("${NONE:-d} ${EMPTY:-d} ${EMPTY-d} ${NONE-d}").unwrap(),
            "d d  d"
        );
        assert_eq!(
            i("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${NONE+alt}").unwrap(),
            "alt||alt|"
        );
        assert_eq!(i("${NONE:-${SET}-x}").unwrap(), "yes-x");
        assert_eq!(i("$NONE.").unwrap(), ".");
        let e = i("${NONE:?set NONE first}").unwrap_err();
        assert_eq!(
            e,
            "required variable NONE is missing a value: set NONE first"
        );
        assert!(i("${EMPTY?x}").is_ok());
        assert!(i("${SET").unwrap_err().contains("not closed"));
        assert!(i("${}").is_err());
        assert!(i("100$").unwrap_err().contains("$$"));
        let deep = format!("{}x{}", "${NONE:-".repeat(1000), "}".repeat(1000));
        assert!(i(&deep).unwrap_err().contains("nested more than 32"));
        let ok = format!("{}x{}", "${NONE:-".repeat(30), "}".repeat(30));
        assert_eq!(i(&ok).unwrap(), "x");
    }
}
