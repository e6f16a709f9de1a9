//! Credentials and authentication challenges.
//!
//! Credentials are kept Docker's way: `{"auths": {"HOST": {"auth": base64("user:pass")}}}`, in
//! `$XDG_CONFIG_HOME/kiln/auth.json` (else `~/.config/kiln/auth.json`), mode 0600, written
//! atomically; Docker's `~/.docker/config.json` is read too. Docker Hub's key is Docker's,
//! `https://index.docker.io/v1/`.

use serde_json::{json, Map, Value};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// The credentials key Docker uses for Docker Hub.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes standard base64 (padding optional); `None` when malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// kiln's credentials file.
pub fn auth_file() -> PathBuf {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".config"),
    };
    base.join("kiln").join("auth.json")
}

fn docker_config() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
        .join(".docker/config.json")
}

/// The credentials key of a registry host (as Docker keys them).
pub fn key_for(host: &str) -> String {
    if host == "docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

fn read_json(p: &PathBuf) -> Value {
    fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({}))
}

/// The stored user and password for `host`, from kiln's file, then Docker's.
pub fn credentials(host: &str) -> Option<(String, String)> {
    let key = key_for(host);
    for file in [auth_file(), docker_config()] {
        let v = read_json(&file);
        let entry = &v["auths"][&key];
        if let Some(a) = entry["auth"].as_str() {
            let raw = base64_decode(a)?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            return Some((u.to_string(), p.to_string()));
        }
    }
    None
}

fn write_auths(auths: Map<String, Value>) -> io::Result<()> {
    let p = auth_file();
    let dir = p.parent().expect("auth file has a parent");
    fs::create_dir_all(dir)?;
    let mut v = read_json(&p);
    if !v.is_object() {
        v = json!({});
    }
    v["auths"] = Value::Object(auths);
    let tmp = dir.join(".auth.json.tmp");
    {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&v).expect("json serializes"))?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &p)
}

/// Stores credentials for `host`.
pub fn store_credentials(host: &str, user: &str, pass: &str) -> io::Result<()> {
    let v = read_json(&auth_file());
    let mut auths = v["auths"].as_object().cloned().unwrap_or_default();
    auths.insert(
        key_for(host),
        json!({ "auth": base64_encode(format!("{user}:{pass}").as_bytes()) }),
    );
    write_auths(auths)
}

/// Forgets the credentials for `host`; returns whether there were any.
pub fn remove_credentials(host: &str) -> io::Result<bool> {
    let v = read_json(&auth_file());
    let mut auths = v["auths"].as_object().cloned().unwrap_or_default();
    let had = auths.remove(&key_for(host)).is_some();
    if had {
        write_auths(auths)?;
    }
    Ok(had)
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="..."` or `Bearer realm="...",service="...",scope="..."`.
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = std::collections::HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(k, v);
        rest = next.trim_start_matches([',', ' ']);
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "user:pa:ss", "ünïcode"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge("Basic realm=\"Registry Realm\""),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:a/b:pull,push\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }
}
