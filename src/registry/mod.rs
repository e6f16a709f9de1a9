//! A blocking OCI distribution client (ureq + rustls, no async runtime): `/v2/` ping, Basic and
//! Bearer-token auth from the `WWW-Authenticate` challenge, pull and push (docs/ARCHITECTURE.md "Registry").
//!
//! Names follow Docker: `docker.io` is reached at its API host, `localhost`, `127.0.0.0/8` and
//! `::1` over plain HTTP (Docker's default insecure list), plus the hosts in
//! `KILN_INSECURE_REGISTRIES` (comma-separated); everything else over HTTPS with the system's
//! CA certificates. Pulled blobs go through the store's ingest and are checked against their
//! digests before anything is recorded: a registry that serves other bytes changes nothing.

pub mod auth;
pub mod cache;

use crate::image::oci::{self, Descriptor, ImageConfig, Index, Manifest, Platform};
use crate::image::reference::Reference;
use crate::image::{self, ImageError};
use auth::Challenge;
use kiln_store::{BlobRef, Compression, Digest, ImageRecord, LayerRecord, Store};
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;
use std::time::Duration;

mod partial;
pub use partial::Moved;
mod pull;
pub use pull::*;
mod push;
pub use push::*;

mod transfer;
pub use transfer::*;

/// Docker Hub's API host for the `docker.io` domain.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// What a registry operation ran into, named for the user to act on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unauthorized: {host}: {detail}")]
    Unauthorized { host: String, detail: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("cannot reach registry {host}: {detail}")]
    Network { host: String, detail: String },
    #[error("registry {host} answered {status}: {detail}")]
    Server {
        host: String,
        status: u16,
        detail: String,
    },
    #[error("{what} from {host} is corrupt: {why}")]
    Corrupt {
        host: String,
        what: String,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} from {host} is too large: {why}")]
    TooLarge {
        host: String,
        what: String,
        why: String,
    },
    #[error("{what} from {host} stalled: {why}")]
    Stalled {
        host: String,
        what: String,
        why: String,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Whether `host` (with an optional port) is reached over plain HTTP.
pub fn insecure(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p))
            if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']') || h.starts_with('[') =>
        {
            h
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name == "localhost" || name == "::1" || name.starts_with("127.") {
        return true;
    }
    std::env::var("KILN_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .any(|h| !h.is_empty() && (h == host || h == name))
}

/// A request body.
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    File(std::path::PathBuf),
    /// `len` bytes of a file from `offset` (one chunk of a chunked upload).
    FileRange(std::path::PathBuf, u64, u64),
}

/// Blobs above this size are uploaded in chunks of this size (PATCH, then PUT);
/// `KILN_UPLOAD_CHUNK` (bytes) overrides it.
fn chunk_size() -> u64 {
    std::env::var("KILN_UPLOAD_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1024)
        .unwrap_or(64 << 20)
}

/// A client for one registry host.
pub struct Client {
    host: String,
    base: String,
    agent: ureq::Agent,
    creds: Option<(String, String)>,
    /// Authorization header values by scope.
    tokens: Mutex<HashMap<String, String>>,
}

/// kiln's HTTP client: rustls with the system's CAs, 30 s to connect, at most the stall timeout
/// per read, kiln's User-Agent, following up to `redirects` redirects.
pub fn http_agent(redirects: u32) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(stall_timeout())
        .redirects(redirects)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Client {
    /// A client for `host` (a reference's domain), with the stored credentials.
    pub fn new(host: &str) -> Client {
        Self::with_credentials(host, auth::credentials(host))
    }

    pub fn with_credentials(host: &str, creds: Option<(String, String)>) -> Client {
        let api = if host == "docker.io" {
            DOCKER_HUB_API
        } else {
            host
        };
        let scheme = if insecure(host) { "http" } else { "https" };
        let agent = http_agent(5);
        Client {
            host: host.to_string(),
            base: format!("{scheme}://{api}"),
            agent,
            creds,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn network(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Network {
            host: self.host.clone(),
            detail: e.to_string(),
        }
    }

    fn raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &Body<'_>,
    ) -> Result<ureq::Response> {
        let mut req = self.agent.request(method, url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let r = match body {
            Body::Empty => req.call(),
            Body::Bytes(b) => req.send_bytes(b),
            Body::File(p) => {
                let f = std::fs::File::open(p)
                    .map_err(|e| RegistryError::Invalid(format!("{}: {e}", p.display())))?;
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                req.set("Content-Length", &len.to_string()).send(f)
            }
            Body::FileRange(p, offset, len) => {
                use std::io::{Seek, SeekFrom};
                let bad = |e: io::Error| RegistryError::Invalid(format!("{}: {e}", p.display()));
                let mut f = std::fs::File::open(p).map_err(bad)?;
                f.seek(SeekFrom::Start(*offset)).map_err(bad)?;
                req.set("Content-Length", &len.to_string())
                    .send(f.take(*len))
            }
        };
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(_, resp)) => Ok(resp),
            Err(ureq::Error::Transport(t)) => Err(self.network(t)),
        }
    }

    /// Gets an Authorization value for `scope` answering `challenge`.
    fn authorize(&self, challenge: &Challenge, scope: &str) -> Result<String> {
        match challenge {
            Challenge::Basic => match &self.creds {
                Some((u, p)) => Ok(format!(
                    "Basic {}",
                    auth::base64_encode(format!("{u}:{p}").as_bytes())
                )),
                None => Err(RegistryError::Unauthorized {
                    host: self.host.clone(),
                    detail: "authentication required".into(),
                }),
            },
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let scope = if scope.is_empty() {
                    asked.clone().unwrap_or_default()
                } else {
                    scope.to_string()
                };
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                // One `scope` parameter per scope, as Docker sends them.
                let params = service.iter().map(|v| ("service", v.as_str())).chain(
                    scope
                        .split(' ')
                        .filter(|s| !s.is_empty())
                        .map(|v| ("scope", v)),
                );
                for (k, v) in params {
                    url.push(sep);
                    url.push_str(&format!("{k}={}", query_escape(v)));
                    sep = '&';
                }
                let mut headers = Vec::new();
                if let Some((u, p)) = &self.creds {
                    headers.push((
                        "Authorization",
                        format!(
                            "Basic {}",
                            auth::base64_encode(format!("{u}:{p}").as_bytes())
                        ),
                    ));
                }
                let resp = self.raw("GET", &url, &headers, &Body::Empty)?;
                if resp.status() == 401 || resp.status() == 403 {
                    return Err(RegistryError::Unauthorized {
                        host: self.host.clone(),
                        detail: error_detail(resp, "the token service refused the credentials"),
                    });
                }
                if resp.status() != 200 {
                    return Err(RegistryError::Server {
                        host: self.host.clone(),
                        status: resp.status(),
                        detail: error_detail(resp, "token request failed"),
                    });
                }
                let body = read_small(self, resp, "token", 1 << 20, None)?;
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    RegistryError::Invalid(format!(
                        "the token service of {} answered badly: {e}",
                        self.host
                    ))
                })?;
                let token = v["token"]
                    .as_str()
                    .or_else(|| v["access_token"].as_str())
                    .ok_or_else(|| {
                        RegistryError::Invalid(format!(
                            "the token service of {} returned no token",
                            self.host
                        ))
                    })?;
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// Sends a request for `path` (or an absolute URL) in `scope`, answering one auth challenge.
    fn send(
        &self,
        method: &str,
        path: &str,
        scope: &str,
        headers: &[(&str, String)],
        body: Body<'_>,
    ) -> Result<ureq::Response> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .cloned();
        let mut hs: Vec<(&str, String)> = headers.to_vec();
        if let Some(a) = &cached {
            hs.push(("Authorization", a.clone()));
        }
        let resp = self.raw(method, &url, &hs, &body)?;
        if resp.status() != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .header("WWW-Authenticate")
            .and_then(auth::parse_challenge)
            .ok_or_else(|| RegistryError::Unauthorized {
                host: self.host.clone(),
                detail: "the registry asks for an authentication kiln does not know".into(),
            })?;
        let authz = self.authorize(&challenge, scope)?;
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.to_string(), authz.clone());
        let mut hs: Vec<(&str, String)> = headers.to_vec();
        hs.push(("Authorization", authz));
        let resp = self.raw(method, &url, &hs, &body)?;
        if resp.status() == 401 || resp.status() == 403 {
            return Err(RegistryError::Unauthorized {
                host: self.host.clone(),
                detail: error_detail(
                    resp,
                    if self.creds.is_some() {
                        "incorrect username or password, or no access"
                    } else {
                        "authentication required"
                    },
                ),
            });
        }
        Ok(resp)
    }

    /// Checks that the registry answers and accepts the credentials (`kiln login`).
    pub fn ping(&self) -> Result<()> {
        let resp = self.send("GET", "/v2/", "", &[], Body::Empty)?;
        match resp.status() {
            200 => Ok(()),
            s => Err(RegistryError::Server {
                host: self.host.clone(),
                status: s,
                detail: error_detail(resp, "/v2/ did not answer 200"),
            }),
        }
    }

    fn expect(&self, resp: ureq::Response, ok: &[u16], what: &str) -> Result<ureq::Response> {
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        Err(match resp.status() {
            404 => RegistryError::NotFound(format!(
                "{what} on {}: {}",
                self.host,
                error_detail(resp, "not found")
            )),
            s => RegistryError::Server {
                host: self.host.clone(),
                status: s,
                detail: format!("{what}: {}", error_detail(resp, "")),
            },
        })
    }
}

/// Escapes a query value: every byte but letters, digits and `-_.~:/,` as `%XX`.
fn query_escape(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    const QUERY: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b':')
        .remove(b'/')
        .remove(b',');
    utf8_percent_encode(s, QUERY).to_string()
}

/// The registry's error message from a response body (`{"errors":[{"code","message"}]}`).
fn error_detail(resp: ureq::Response, fallback: &str) -> String {
    let mut body = String::new();
    let _ = resp.into_reader().take(64 * 1024).read_to_string(&mut body);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
        if let Some(errs) = v["errors"].as_array() {
            let msgs: Vec<String> = errs
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["code"].as_str().unwrap_or("ERROR"),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect();
            if !msgs.is_empty() {
                return msgs.join("; ");
            }
        }
    }
    let body = body.trim();
    if body.is_empty() {
        fallback.to_string()
    } else {
        body.chars().take(300).collect()
    }
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Reads a small document (manifest, config) whole: at most `max` bytes, and exactly `declared`
/// when a descriptor gave its size.
fn read_small(
    c: &Client,
    resp: ureq::Response,
    what: &str,
    max: u64,
    declared: Option<u64>,
) -> Result<Vec<u8>> {
    let too_large = |why: String| RegistryError::TooLarge {
        host: c.host.clone(),
        what: what.to_string(),
        why,
    };
    if let Some(d) = declared.filter(|d| *d > max) {
        return Err(too_large(format!(
            "its descriptor declares {d} bytes; kiln reads at most {max}"
        )));
    }
    if let Some(len) = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|l| *l > max)
    {
        return Err(too_large(format!(
            "the registry sends {len} bytes; kiln reads at most {max}"
        )));
    }
    let limit = declared.unwrap_or(max);
    let mut v = Vec::new();
    Deadline::new(resp.into_reader())
        .take(limit + 1)
        .read_to_end(&mut v)
        .map_err(|e| read_error(c, what, e))?;
    if v.len() as u64 > limit && declared.is_none() {
        return Err(too_large(format!("more than {max} bytes")));
    }
    if let Some(d) = declared.filter(|d| *d != v.len() as u64) {
        return Err(RegistryError::Corrupt {
            host: c.host.clone(),
            what: what.to_string(),
            why: image::archive::size_mismatch(v.len() as u64, d),
        });
    }
    Ok(v)
}

/// A failed read of `what`: a stall says so, anything else is the network's.
fn read_error(c: &Client, what: &str, e: io::Error) -> RegistryError {
    if e.kind() == io::ErrorKind::TimedOut {
        RegistryError::Stalled {
            host: c.host.clone(),
            what: what.to_string(),
            why: e.to_string(),
        }
    } else {
        c.network(format!("read {what}: {e}"))
    }
}

/// The largest manifest or index read (the distribution spec's suggested limit).
const MAX_MANIFEST: u64 = 4 << 20;

fn fetch_manifest(
    c: &Client,
    repo: &str,
    reference: &str,
    scope: &str,
    declared: Option<u64>,
) -> Result<(Vec<u8>, String, Digest)> {
    let resp = c.send(
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        scope,
        &[("Accept", MANIFEST_ACCEPT.into())],
        Body::Empty,
    )?;
    let resp = c.expect(resp, &[200], &format!("manifest {repo}:{reference}"))?;
    let mt = resp
        .header("Content-Type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let bytes = read_small(
        c,
        resp,
        &format!("manifest {repo}:{reference}"),
        MAX_MANIFEST,
        declared,
    )?;
    let digest = Digest::of(&bytes);
    if let Ok(want) = reference.parse::<Digest>() {
        if want != digest {
            return Err(RegistryError::Corrupt {
                host: c.host.clone(),
                what: format!("manifest {want}"),
                why: format!("its content has digest {digest}"),
            });
        }
    }
    Ok((bytes, mt, digest))
}

#[cfg(test)]
mod tests;
