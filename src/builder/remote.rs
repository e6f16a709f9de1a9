//! `ADD https://...`: downloads kept in `<store>/http-cache/<blake3(url)>/`, re-validated with
//! `If-None-Match` on every build, as BuildKit does.
//!
//! A download is written to a temp file beside the cache entry while its sha256 and blake3 are
//! taken, checked against `--checksum` before anything else sees it, and then renamed to
//! `data-<sha256 hex>`; `meta.json` (ETag, Last-Modified, digests, name) is renamed in last, so a
//! reader sees either the old entry or the new one. The file's name comes from the
//! Content-Disposition header or the URL path, its mtime from Last-Modified (else the epoch), its
//! mode is 0600: BuildKit's rules.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What a URL resolved to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fetched {
    /// The file's name (Content-Disposition, else the URL's last path segment).
    pub name: String,
    /// `sha256:<hex>` of the content.
    pub sha256: String,
    /// blake3 of the content (what the step key uses, as for context files).
    pub blake3: String,
    pub size: u64,
    /// Last-Modified as Unix seconds; 0 when the server sent none.
    pub mtime: i64,
    #[serde(default)]
    pub etag: Option<String>,
    /// Where the content is (not serialized: derived from the entry dir).
    #[serde(skip)]
    pub path: PathBuf,
}

impl Fetched {
    pub fn blake3_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(self.blake3.get(2 * i..2 * i + 2).unwrap_or("00"), 16)
                .unwrap_or(0);
        }
        out
    }
}

pub use crate::context::select::{is_git, is_url};

/// The cache directory of one URL.
fn entry_dir(root: &Path, url: &str) -> PathBuf {
    root.join("http-cache")
        .join(blake3::hash(url.as_bytes()).to_hex().as_str())
}

fn load(dir: &Path) -> Option<Fetched> {
    let meta: Fetched = serde_json::from_slice(&fs::read(dir.join("meta.json")).ok()?).ok()?;
    let path = dir.join(format!(
        "data-{}",
        meta.sha256.trim_start_matches("sha256:")
    ));
    let len = fs::metadata(&path).ok()?.len();
    (len == meta.size).then_some(Fetched { path, ..meta })
}

/// BuildKit's file name rule: Content-Disposition's filename, else the URL path's last segment,
/// else `__unnamed__`.
fn file_name(url: &str, disposition: Option<&str>) -> String {
    let safe = |n: &str| {
        let base = n.rsplit('/').next().unwrap_or("");
        match base {
            "" | "." | ".." => "__unnamed__".to_string(),
            b => b.to_string(),
        }
    };
    if let Some(d) = disposition {
        for part in d.split(';').skip(1) {
            if let Some((k, v)) = part.trim().split_once('=') {
                if k.eq_ignore_ascii_case("filename") {
                    let v = v.trim().trim_matches('"');
                    if !v.is_empty() && !v.ends_with('/') {
                        return safe(v);
                    }
                }
            }
        }
    }
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let path = after_scheme
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split_once('/')
        .map_or("", |(_, p)| p);
    safe(path.trim_end_matches('/'))
}

/// Resolves `url` to content in the cache: re-validates a cached copy with its ETag, else
/// downloads. `checksum` (`sha256:<hex>`) is checked before the content is used or cached.
pub fn fetch(
    store_root: &Path,
    url: &str,
    checksum: Option<&str>,
    say: &dyn Fn(&str),
) -> Result<Fetched, String> {
    if let Some(c) = checksum {
        let hex = c
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("--checksum={c}: only sha256:<hex> is supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "--checksum={c}: expected sha256: and 64 hex digits"
            ));
        }
    }
    let dir = entry_dir(store_root, url);
    let cached = load(&dir);
    let agent = crate::registry::http_agent(10);
    let mut req = agent.get(url);
    if let Some(etag) = cached.as_ref().and_then(|c| c.etag.as_deref()) {
        req = req.set("If-None-Match", etag);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            return Err(format!(
                "ADD {url}: the server answered {code} {}",
                r.status_text()
            ))
        }
        Err(e) => return Err(format!("ADD {url}: {e}")),
    };
    let check = |got: &str| -> Result<(), String> {
        match checksum {
            Some(want) if !want.eq_ignore_ascii_case(got) => Err(format!(
                "ADD {url}: checksum mismatch: got {got}, --checksum expects {want}"
            )),
            _ => Ok(()),
        }
    };
    if resp.status() == 304 {
        if let Some(c) = cached {
            check(&c.sha256)?;
            say(&format!(
                "{url}: not modified (ETag {})",
                c.etag.as_deref().unwrap_or("")
            ));
            return Ok(c);
        }
        return Err(format!(
            "ADD {url}: 304 Not Modified for a request without an ETag"
        ));
    }
    if !(200..300).contains(&resp.status()) {
        return Err(format!(
            "ADD {url}: unexpected status {} {}",
            resp.status(),
            resp.status_text()
        ));
    }
    let etag = resp
        .header("ETag")
        .map(|e| e.trim_start_matches("W/").to_string());
    let mtime = resp
        .header("Last-Modified")
        .and_then(crate::timefmt::parse_http_date)
        .unwrap_or(0);
    let name = file_name(url, resp.header("Content-Disposition"));
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(&dir)
        .map_err(|e| format!("create a temp file in {}: {e}", dir.display()))?;
    let (mut sha, mut b3) = (sha2::Sha256::new(), blake3::Hasher::new());
    let mut body = crate::registry::Deadline::new(resp.into_reader());
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| format!("ADD {url}: reading the body: {e}"))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        b3.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| format!("ADD {url}: writing the download: {e}"))?;
        size += n as u64;
    }
    let hex: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let sha256 = format!("sha256:{hex}");
    check(&sha256)?;
    say(&format!("{url}: downloaded {size} bytes ({sha256})"));
    tmp.as_file()
        .sync_all()
        .map_err(|e| format!("sync the download: {e}"))?;
    let path = dir.join(format!("data-{hex}"));
    tmp.persist(&path)
        .map_err(|e| format!("keep the download: {e}"))?;
    let fetched = Fetched {
        name,
        sha256,
        blake3: b3.finalize().to_hex().to_string(),
        size,
        mtime,
        etag,
        path,
    };
    let meta = serde_json::to_vec(&fetched).map_err(|e| e.to_string())?;
    let mut m = tempfile::Builder::new()
        .prefix(".meta-")
        .tempfile_in(&dir)
        .map_err(|e| format!("write the cache entry: {e}"))?;
    m.write_all(&meta)
        .map_err(|e| format!("write the cache entry: {e}"))?;
    m.persist(dir.join("meta.json"))
        .map_err(|e| format!("write the cache entry: {e}"))?;
    // Older downloads of this URL are no longer referenced.
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with("data-") && e.path() != fetched.path {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_buildkit() {
        assert_eq!(
            file_name("https://h/a/b/tool.tar.gz?x=1", None),
            "tool.tar.gz"
        );
        assert_eq!(file_name("https://h/", None), "__unnamed__");
        assert_eq!(file_name("https://h", None), "__unnamed__");
        assert_eq!(
            file_name(
                "https://h/dl?id=3",
                Some("attachment; filename=\"report.pdf\"")
            ),
            "report.pdf"
        );
        assert_eq!(
            file_name("https://h/x", Some("attachment; filename=../../etc/passwd")),
            "passwd"
        );
        assert!(is_git("git@git.example:team/app.git"));
        assert!(is_git("https://git.example/team/app.git#v1"));
        assert!(!is_git("https://example.invalid/file.tar.gz"));
    }
}
