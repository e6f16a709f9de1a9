//! Just enough of a tar reader for the chunked writer: the fields of a header block, PAX
//! records and GNU long names, so each entry's metadata reaches the TOC and its content is
//! found in the stream.

use super::toc::TocEntry;
use std::collections::BTreeMap;

pub const BLOCK: usize = 512;

/// What the extended headers before an entry said.
#[derive(Default)]
pub struct Pending {
    pub path: Option<Vec<u8>>,
    pub link: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub mtime: Option<(i64, u32)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// A parsed entry header.
pub struct Parsed {
    pub toc: TocEntry,
    /// The entry's path bytes (tar-split records it; non-UTF-8 names go in `name_raw`).
    pub name: Vec<u8>,
    /// The size field (tar-split records it).
    pub size: u64,
    /// Content bytes that follow the header (0 for header-only types, whatever the size says).
    pub content: u64,
}

fn cstr(f: &[u8]) -> &[u8] {
    let n = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    &f[..n]
}

/// A numeric field: octal text, or base-256 when the top bit of the first byte is set.
pub fn number(f: &[u8]) -> u64 {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(f[0] & 0x3f);
        for &b in &f[1..] {
            v = v.wrapping_shl(8) | u64::from(b);
        }
        return v;
    }
    let mut v: u64 = 0;
    for &b in f {
        match b {
            b'0'..=b'7' => v = v.wrapping_mul(8).wrapping_add(u64::from(b - b'0')),
            b' ' | 0 if v == 0 => {}
            _ => break,
        }
    }
    v
}

/// The type flag of a header block.
pub fn kind(h: &[u8; BLOCK]) -> u8 {
    h[156]
}

/// The size field of a header block.
pub fn size(h: &[u8; BLOCK]) -> u64 {
    number(&h[124..136])
}

/// Applies one extended header's data to `p`: PAX records ('x'; 'g' is global and ignored)
/// or a GNU long name ('L') or link ('K').
pub fn extend(p: &mut Pending, kind: u8, data: &[u8]) {
    match kind {
        b'L' => p.path = Some(cstr(data).to_vec()),
        b'K' => p.link = Some(cstr(data).to_vec()),
        b'x' => {
            let mut rest = data;
            while let Some(sp) = rest.iter().position(|&b| b == b' ') {
                let Some(len) = std::str::from_utf8(&rest[..sp])
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    break;
                };
                if len <= sp + 1 || len > rest.len() {
                    break;
                }
                let rec = &rest[sp + 1..len - 1];
                rest = &rest[len..];
                let Some(eq) = rec.iter().position(|&b| b == b'=') else {
                    continue;
                };
                let (k, v) = (&rec[..eq], &rec[eq + 1..]);
                let text = || std::str::from_utf8(v).ok();
                match k {
                    b"path" => p.path = Some(v.to_vec()),
                    b"linkpath" => p.link = Some(v.to_vec()),
                    b"size" => p.size = text().and_then(|s| s.parse().ok()),
                    b"uid" => p.uid = text().and_then(|s| s.parse().ok()),
                    b"gid" => p.gid = text().and_then(|s| s.parse().ok()),
                    b"mtime" => p.mtime = text().and_then(pax_time),
                    _ => {
                        if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                            p.xattrs
                                .insert(String::from_utf8_lossy(x).into_owned(), v.to_vec());
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn pax_time(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    Some((secs, digits.parse().unwrap_or(0)))
}

/// Parses an entry header (not an extended one) with what the extended headers said.
pub fn parse(h: &[u8; BLOCK], p: Pending) -> Parsed {
    let ustar = &h[257..262] == b"ustar";
    let posix = ustar && h[262] == 0;
    let name = p.path.unwrap_or_else(|| {
        let n = cstr(&h[0..100]);
        let prefix = if posix { cstr(&h[345..500]) } else { &[] };
        if prefix.is_empty() {
            n.to_vec()
        } else {
            [prefix, b"/", n].concat()
        }
    });
    let link = p.link.unwrap_or_else(|| cstr(&h[157..257]).to_vec());
    let size = p.size.unwrap_or_else(|| size(h));
    let typ = kind(h);
    let kind_name = match typ {
        b'0' | 0 | b'7' => "reg",
        b'1' => "hardlink",
        b'2' => "symlink",
        b'3' => "char",
        b'4' => "block",
        b'5' => "dir",
        b'6' => "fifo",
        _ => "reg",
    };
    let header_only = matches!(typ, b'1'..=b'6');
    let (secs, nanos) = p.mtime.unwrap_or((number(&h[136..148]) as i64, 0));
    let b64 = |v: &Vec<u8>| base64_encode(v);
    let toc = TocEntry {
        kind: kind_name.into(),
        name: String::from_utf8_lossy(&name).into_owned(),
        link_name: String::from_utf8_lossy(&link).into_owned(),
        mode: number(&h[100..108]) as i64,
        size: size as i64,
        uid: p.uid.unwrap_or(number(&h[108..116]) as i64),
        gid: p.gid.unwrap_or(number(&h[116..124]) as i64),
        modtime: Some(rfc3339(secs, nanos)),
        dev_major: if ustar {
            number(&h[329..337]) as i64
        } else {
            0
        },
        dev_minor: if ustar {
            number(&h[337..345]) as i64
        } else {
            0
        },
        xattrs: p.xattrs.iter().map(|(k, v)| (k.clone(), b64(v))).collect(),
        ..TocEntry::default()
    };
    Parsed {
        toc,
        name,
        size,
        content: if header_only { 0 } else { size },
    }
}

/// A time as Go's `time.Time` marshals it in UTC (RFC 3339, fraction without trailing zeros).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos > 0 {
        let f = format!("{nanos:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Standard base64 with padding (Go's `encoding/base64.StdEncoding`, and how Go's JSON writes
/// `[]byte`).
pub fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_gos() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, 500_000_000),
            "2023-11-14T22:13:20.5Z"
        );
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(number(b"0000644\0"), 0o644);
        assert_eq!(number(b"   17 \0"), 0o17);
        let mut b = [0u8; 12];
        b[0] = 0x80;
        b[11] = 5;
        b[10] = 1;
        assert_eq!(number(&b), 261);
    }
}
