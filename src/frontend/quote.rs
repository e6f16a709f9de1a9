//! Go's `strconv.Quote`, byte for byte.
//!
//! BuildKit's AST dump (`parser.Node.Dump`) quotes every argument with `strconv.Quote` and the
//! flag list with `%q`; the conformance data compares those dumps byte-exact, and Rust's `{:?}`
//! differs (`\0`, `\u{8}`, escaped `'`). The rules, from Go's `strconv/quote.go`: short escapes
//! for `\a \b \f \n \r \t \v`, `\"` and `\\`; other controls and DEL as `\xNN`; invalid UTF-8
//! bytes as `\xNN`; non-printable runes as `\uNNNN` / `\UNNNNNNNN`; printable runes verbatim.

/// Quotes `s` as Go's `strconv.Quote` does.
pub fn go_quote(s: &str) -> String {
    go_quote_bytes(s.as_bytes())
}

/// Quotes raw bytes, escaping invalid UTF-8 as `\xNN` the way Go does for a `string` holding
/// arbitrary bytes.
pub fn go_quote_bytes(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                quote_str(valid, &mut out);
                break;
            }
            Err(e) => {
                let (good, rest) = bytes.split_at(e.valid_up_to());
                // SAFETY-free: `valid_up_to` marks a valid prefix.
                quote_str(std::str::from_utf8(good).unwrap_or_default(), &mut out);
                let bad = e.error_len().unwrap_or(rest.len()).max(1);
                for b in &rest[..bad] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                bytes = &rest[bad..];
            }
        }
    }
    out.push('"');
    out
}

/// `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

fn quote_str(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_print(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
}

/// An approximation of Go's `unicode.IsPrint` (letters, marks, numbers, punctuation, symbols
/// and the ASCII space): the code points it rejects are controls, separators other than U+0020,
/// format characters (Cf), private use, surrogates and unassigned ones. Rust's std has no
/// general-category table, so this lists the non-printing ranges that occur in practice.
fn is_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x7f {
        return u >= 0x20;
    }
    if (0x7f..=0x9f).contains(&u) {
        return false;
    }
    !matches!(u,
        0x00a0 | 0x00ad | 0x034f | 0x061c | 0x115f | 0x1160 | 0x1680 | 0x180e
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0x3000 | 0x3164
        | 0xd800..=0xdfff | 0xe000..=0xf8ff | 0xfeff | 0xffa0 | 0xfff0..=0xfffb
        | 0xfffe | 0xffff | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a | 0xe0000..=0xe0fff
        | 0xf0000..=0x10ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_go_for_the_cases_in_the_conformance_dumps() {
        assert_eq!(go_quote("a b"), r#""a b""#);
        assert_eq!(
            go_quote("\" \\ / \u{8} \u{c} \n \r \t \0"),
            r#""\" \\ / \b \f \n \r \t \x00""#
        );
        assert_eq!(go_quote("♥ ☃ 'x'"), r#""♥ ☃ 'x'""#);
        assert_eq!(go_quote("\x07\x0b\x7f\x1b"), r#""\a\v\x7f\x1b""#);
        assert_eq!(go_quote("\u{200b}\u{feff}"), r#""\u200b\ufeff""#);
        assert_eq!(go_quote("\u{f0000}"), r#""\U000f0000""#);
        assert_eq!(go_quote_bytes(b"a\xffb\xc3"), r#""a\xffb\xc3""#);
        assert_eq!(
            go_quote_list(&["--user=me".into(), "--doit=true".into()]),
            r#"["--user=me" "--doit=true"]"#
        );
    }
}
