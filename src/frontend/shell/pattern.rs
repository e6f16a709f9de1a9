//! Shell patterns for `${VAR#pat}`, `${VAR%pat}` and `${VAR/pat/rep}`: globs matched against a variable's value.

#[allow(unused_imports)]
use super::*;

pub(super) fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Tok {
    Lit(char),
    /// `?`: one character other than a newline.
    Any,
    /// `*`: any run of characters other than a newline.
    Star,
}

/// A shell pattern compiled the way BuildKit's `convertShellPatternToRegex` would, and matched
/// with the same leftmost-first (backtracking order) semantics.
pub(super) struct Pattern {
    toks: Vec<Tok>,
    greedy: bool,
}

impl Pattern {
    pub(super) fn compile(pattern: &str, greedy: bool) -> Result<Pattern, String> {
        let mut toks = Vec::new();
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::Any),
                '\\' => {
                    // `\}` and `\/` only protect the delimiter; the escape is not part of it.
                    if matches!(chars.get(i), Some('}') | Some('/')) {
                        continue;
                    }
                    match chars.get(i) {
                        Some(&n) if n == '*' || n == '?' || n == '\\' => {
                            toks.push(Tok::Lit(n));
                            i += 1;
                        }
                        Some(&n) => return Err(format!("invalid escape '\\{n}'")),
                        None => return Err("invalid escape '\\'".into()),
                    }
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Pattern { toks, greedy })
    }

    /// The end of the first match anchored at `start`, in backtracking order.
    pub(super) fn match_at(&self, s: &[char], start: usize) -> Option<usize> {
        let mut memo = HashMap::new();
        self.m(0, start, s, &mut memo)
    }

    pub(super) fn m(
        &self,
        ti: usize,
        si: usize,
        s: &[char],
        memo: &mut HashMap<(usize, usize), Option<usize>>,
    ) -> Option<usize> {
        if ti == self.toks.len() {
            return Some(si);
        }
        if let Some(r) = memo.get(&(ti, si)) {
            return *r;
        }
        let r = match self.toks[ti] {
            Tok::Lit(c) => (s.get(si) == Some(&c))
                .then(|| self.m(ti + 1, si + 1, s, memo))
                .flatten(),
            Tok::Any => s
                .get(si)
                .filter(|c| **c != '\n')
                .and_then(|_| self.m(ti + 1, si + 1, s, memo)),
            Tok::Star => {
                let mut max = si;
                while max < s.len() && s[max] != '\n' {
                    max += 1;
                }
                if self.greedy {
                    (si..=max).rev().find_map(|e| self.m(ti + 1, e, s, memo))
                } else {
                    (si..=max).find_map(|e| self.m(ti + 1, e, s, memo))
                }
            }
        };
        memo.insert((ti, si), r);
        r
    }

    /// The leftmost match at or after `from`.
    pub(super) fn find_from(&self, s: &[char], from: usize) -> Option<(usize, usize)> {
        (from..=s.len()).find_map(|st| self.match_at(s, st).map(|e| (st, e)))
    }

    pub(super) fn find(&self, s: &[char]) -> Option<(usize, usize)> {
        self.find_from(s, 0)
    }
}

pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Res<String> {
    let pat = Pattern::compile(pattern, greedy)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    let v: Vec<char> = value.chars().collect();
    Ok(match pat.match_at(&v, 0) {
        Some(end) => v[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// Suffix trimming reverses pattern and value so the shortest/longest rightmost match becomes
/// a leftmost one, as BuildKit does; an escape pair stays in order (`a\*c` -> `c\*a`).
pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Res<String> {
    let p: Vec<char> = pattern.chars().collect();
    let mut rev = vec!['\0'; p.len()];
    let last = p.len().saturating_sub(1);
    let mut i = 0;
    while i < p.len() {
        let out = last - i;
        if p[i] == '\\' && i != last {
            rev[out - 1] = '\\';
            rev[out] = p[i + 1];
            i += 2;
        } else {
            rev[out] = p[i];
            i += 1;
        }
    }
    let rp: String = rev.into_iter().collect();
    let rv: String = value.chars().rev().collect();
    Ok(trim_prefix(&rp, &rv, greedy)?.chars().rev().collect())
}

/// Go's `Regexp.ReplaceAllString`: successive non-overlapping matches; an empty match right
/// after a previous match is skipped; `$0`/`${0}` in the replacement is the match, `$$` a
/// dollar, any other group reference empty (the compiled pattern has no groups).
pub(super) fn replace_all(pat: &Pattern, s: &[char], replacement: &str) -> String {
    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= s.len() {
        let Some((a, b)) = pat.find_from(s, search) else {
            break;
        };
        out.extend(&s[last_end..a]);
        if b > last_end || a == 0 {
            expand_template(replacement, &s[a..b], &mut out);
        }
        last_end = b;
        search = if search + 1 > b { search + 1 } else { b };
    }
    if last_end <= s.len() {
        out.extend(&s[last_end..]);
    }
    out
}

pub(super) fn expand_template(template: &str, matched: &[char], out: &mut String) {
    let t: Vec<char> = template.chars().collect();
    let mut i = 0;
    while i < t.len() {
        if t[i] != '$' || i + 1 >= t.len() {
            out.push(t[i]);
            i += 1;
            continue;
        }
        if t[i + 1] == '$' {
            out.push('$');
            i += 2;
            continue;
        }
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let (name, next) = if t[i + 1] == '{' {
            match t[i + 2..].iter().position(|c| *c == '}') {
                Some(p) if p > 0 && t[i + 2..i + 2 + p].iter().all(|c| is_name(*c)) => {
                    (t[i + 2..i + 2 + p].iter().collect::<String>(), i + 3 + p)
                }
                _ => {
                    out.push('$');
                    i += 1;
                    continue;
                }
            }
        } else {
            let n = t[i + 1..].iter().take_while(|c| is_name(**c)).count();
            if n == 0 {
                out.push('$');
                i += 1;
                continue;
            }
            (t[i + 1..i + 1 + n].iter().collect::<String>(), i + 1 + n)
        };
        if name.parse::<u64>() == Ok(0) {
            out.extend(matched);
        }
        i = next;
    }
}
