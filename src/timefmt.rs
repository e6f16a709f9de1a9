//! RFC 3339 timestamps (image configs' `created`) and Docker's human forms ("2 hours ago", "4.2MB").

/// Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2024-01-02T03:04:05Z`.
pub fn rfc3339(secs: i64) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// RFC 3339 with nanoseconds (`2006-01-02T15:04:05.000000000Z`), as Docker's json-file log.
pub fn rfc3339_nanos(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let base = rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", base.trim_end_matches('Z'), d.subsec_nanos())
}

/// Parses RFC 3339 (`Z` or `±hh:mm`, optional fraction) to Unix seconds, with the `time`
/// crate: impossible dates and times are refused, and untrusted text never panics.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

/// Parses an HTTP date (RFC 9110: IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, and the
/// obsolete RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`
/// forms) to Unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i as u32 + 1);
    let hms = |t: &str| -> Option<i64> {
        let mut it = t.split(':').map(|p| p.parse::<i64>().ok());
        let (h, m, s) = (it.next()??, it.next()??, it.next()??);
        (h < 24 && m < 60 && s <= 60).then_some(h * 3600 + m * 60 + s)
    };
    let words: Vec<&str> = s.split_whitespace().collect();
    let (y, mo, d, t) = match words.as_slice() {
        // IMF-fixdate
        [_, d, m, y, t, "GMT"] => (
            y.parse::<i64>().ok()?,
            month(m)?,
            d.parse::<u32>().ok()?,
            *t,
        ),
        // RFC 850
        [_, dmy, t, "GMT"] => {
            let mut p = dmy.split('-');
            let (d, m, y) = (p.next()?, p.next()?, p.next()?.parse::<i64>().ok()?);
            let y = if y < 70 {
                2000 + y
            } else if y < 100 {
                1900 + y
            } else {
                y
            };
            (y, month(m)?, d.parse::<u32>().ok()?, *t)
        }
        // asctime
        [_, m, d, t, y] => (
            y.parse::<i64>().ok()?,
            month(m)?,
            d.parse::<u32>().ok()?,
            *t,
        ),
        _ => return None,
    };
    if !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + hms(t)?)
}

/// Formats Unix seconds as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let s = secs.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[mo as usize - 1],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Docker's `units.HumanDuration` followed by " ago".
pub fn ago(secs: i64, now: i64) -> String {
    let d = (now - secs).max(0);
    let human = if d < 1 {
        "Less than a second".to_string()
    } else if d == 1 {
        "1 second".to_string()
    } else if d < 60 {
        format!("{d} seconds")
    } else if d / 60 == 1 {
        "About a minute".to_string()
    } else if d < 3600 {
        format!("{} minutes", d / 60)
    } else if (d as f64 / 3600.0).round() as i64 == 1 {
        "About an hour".to_string()
    } else if d < 48 * 3600 {
        format!("{} hours", (d as f64 / 3600.0).round() as i64)
    } else if d < 7 * 24 * 3600 * 2 {
        format!("{} days", d / 86_400)
    } else if d < 30 * 24 * 3600 * 2 {
        format!("{} weeks", d / (7 * 86_400))
    } else if d < 365 * 24 * 3600 * 2 {
        format!("{} months", d / (30 * 86_400))
    } else {
        format!("{} years", d / (365 * 86_400))
    };
    format!("{human} ago")
}

/// Docker's `units.HumanSize`: decimal units, 3 significant digits (`4.26MB`, `512B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    // %.3g: three significant digits, no trailing zeros.
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

/// Parses a size as Docker's `units.RAMInBytes` does: a number (a fraction allowed), an
/// optional space, an optional binary unit `k m g t p` in any case, then an optional `i` and
/// `b`: `64mb`, `64MiB` and `64 m` are 64 MiB, `1.5g` is 1.5 GiB, `1024` bytes.
pub fn ram_in_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size: {s:?} (e.g. 512m, 1.5g, 64mb)");
    let t = s.trim();
    let n = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(n);
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut r = rest.as_str();
    let mult: u64 = match r.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => {
            r = &r[1..];
            1u64 << (10 * (" kmgtp".find(c).expect("listed") as u32))
        }
        _ => 1,
    };
    let r = r.strip_prefix('i').unwrap_or(r);
    let r = r.strip_prefix('b').unwrap_or(r);
    if !r.is_empty() || num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// SOURCE_DATE_EPOCH (reproducible-builds.org): `value` when given (a build arg), else the
/// environment's; unset or empty is None.
pub fn source_date_epoch(value: Option<&str>) -> Result<Option<i64>, String> {
    let v = match value {
        Some(v) => v.to_string(),
        None => std::env::var("SOURCE_DATE_EPOCH").unwrap_or_default(),
    };
    if v.is_empty() {
        return Ok(None);
    }
    epoch_seconds(&v)
        .map(Some)
        .map_err(|why| format!("SOURCE_DATE_EPOCH={v:?} {why}"))
}

/// A time in seconds since 1970 as a layer can carry it (a tar header's 11 octal digits), or
/// why not (to follow the name of what gave it).
pub fn epoch_seconds(v: &str) -> Result<i64, String> {
    match v.trim().parse::<i64>() {
        Ok(s) if (0..8i64.pow(11)).contains(&s) => Ok(s),
        Ok(_) => Err(format!(
            "is out of range: a layer's times run from 0 to {} seconds",
            8i64.pow(11) - 1
        )),
        Err(_) => Err("is not a number of seconds".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_in_all_three_forms() {
        let t = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example)
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        for x in [0, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_http_date(&http_date(x)), Some(x));
        }
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Sun, 32 Nov 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn sizes_as_docker_ram_in_bytes() {
        for (s, want) in [
            ("1024", 1024),
            ("64mb", 64 << 20),
            ("64MiB", 64 << 20),
            ("64 m", 64 << 20),
            ("256m", 256 << 20),
            ("1.5g", 3 << 29),
            ("2GB", 2 << 30),
            ("10k", 10 << 10),
            ("1b", 1),
            ("1t", 1 << 40),
        ] {
            assert_eq!(ram_in_bytes(s), Ok(want), "{s}");
        }
        for s in ["", "m", "12x", "1.2.3m", "-1m", "1mbb", "nan", "inf"] {
            assert!(ram_in_bytes(s).is_err(), "{s}");
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        for t in [0, 1, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Ok(t), "{t}");
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.123456789Z"),
            Ok(1_709_208_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:00+02:00"),
            Ok(1_709_208_000)
        );
        assert!(parse_rfc3339("yesterday").is_err());
        for bad in [
            "2024-02-31T99:99:99Z",
            "2024-02-30T00:00:00Z",
            "2024-01-01T00:00:00\u{e9}",
            "2024-01-01T00:00:00+\u{e9}\u{e9}:00",
            "\u{e9}\u{e9}\u{e9}\u{e9}-01-01T00:00:00Z",
            "",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_forms_match_docker() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4_261_412), "4.26MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(ago(100, 100), "Less than a second ago");
        assert_eq!(ago(0, 7200), "2 hours ago");
        assert_eq!(ago(0, 90), "About a minute ago");
        assert_eq!(ago(0, 3 * 86_400), "3 days ago");
    }
}
