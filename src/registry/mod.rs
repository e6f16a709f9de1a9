//! A blocking OCI distribution client (ureq + rustls, no async runtime): `/v2/` ping, Basic and
//! Bearer-token auth from the `WWW-Authenticate` challenge, pull and push (DESIGN.md "Registry").
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

/// How long a transfer may go without progress: no byte at all, or under 1 KiB/s over the whole
/// period, ends it (`KILN_REGISTRY_STALL_TIMEOUT` seconds, default 60). There is no total
/// timeout: a large layer over a slow link is legitimate.
pub fn stall_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("KILN_REGISTRY_STALL_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(60),
    )
}

/// The slowest rate that counts as progress.
const MIN_RATE: u64 = 1024;

/// Ends a read that makes no progress (see [`stall_timeout`]); each read waits at most that
/// long too (the agent's read timeout).
pub struct Deadline<R> {
    inner: R,
    stall: Duration,
    window: std::time::Instant,
    bytes: u64,
}

impl<R> Deadline<R> {
    pub fn new(inner: R) -> Deadline<R> {
        Deadline {
            inner,
            stall: stall_timeout(),
            window: std::time::Instant::now(),
            bytes: 0,
        }
    }
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stalled = |msg: String| io::Error::new(io::ErrorKind::TimedOut, msg);
        let secs = self.stall.as_secs();
        let n = match self.inner.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(stalled(format!("no data for {secs} s")))
            }
            r => r?,
        };
        self.bytes += n as u64;
        if self.window.elapsed() >= self.stall {
            if self.bytes < MIN_RATE * secs {
                return Err(stalled(format!(
                    "{} bytes in {secs} s, under 1 KiB/s (KILN_REGISTRY_STALL_TIMEOUT sets the period)",
                    self.bytes
                )));
            }
            self.window = std::time::Instant::now();
            self.bytes = 0;
        }
        Ok(n)
    }
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

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b':'
            | b'/'
            | b',' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// Where pull and push report their progress: Docker's lines, and bytes per blob (a terminal
/// shows bars; elsewhere the lines are enough).
pub trait Transfer: Sync {
    /// A line of Docker's wording (`abc123: Pull complete`, `Digest: ...`).
    fn line(&self, line: &str);
    /// A blob transfer of `total` bytes starts (`short` is its digest's first 12 digits).
    fn start(&self, _short: &str, _what: &str, _total: u64) {}
    /// `n` more bytes of it moved.
    fn advance(&self, _short: &str, _n: u64) {}
}

impl<F: Fn(&str) + Sync> Transfer for F {
    fn line(&self, line: &str) {
        self(line)
    }
}

pub type Report<'a> = &'a dyn Transfer;

/// Counts bytes read through it into a transfer's progress.
struct Counting<'a, R> {
    inner: R,
    short: String,
    report: Report<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.report.advance(&self.short, n as u64);
        }
        Ok(n)
    }
}

/// Pulls `reference` into the store and tags it; returns the image.
pub fn pull(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    report: Report<'_>,
) -> Result<ImageRecord> {
    let r = reference.clone().with_default_tag();
    let c = Client::new(&r.domain);
    let repo = r.path.clone();
    let scope = format!("repository:{repo}:pull");
    let tag_or_digest = r
        .digest
        .map(|d| d.to_string())
        .unwrap_or_else(|| r.tag.clone().unwrap_or_default());
    let (mut bytes, mut mt, mut digest) = fetch_manifest(&c, &repo, &tag_or_digest, &scope, None)?;
    // Said once the manifest is there: a pull that fails to find it says only why.
    report.line(&format!(
        "{}: Pulling from {}",
        r.tag.clone().unwrap_or_else(|| tag_or_digest.clone()),
        if r.domain == "docker.io" {
            repo.clone()
        } else {
            r.name()
        }
    ));
    // Indexes may nest (an index entry naming another index); follow them, a bounded depth.
    let mut depth = 0;
    loop {
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                host: c.host.clone(),
                what: format!("manifest {digest}"),
                why: e.to_string(),
            })?;
        if mt.is_empty() {
            mt = doc["mediaType"].as_str().unwrap_or("").to_string();
        }
        if !(oci::is_index(&mt) || (mt.is_empty() && doc.get("manifests").is_some())) {
            break;
        }
        if depth == image::archive::MAX_INDEX_DEPTH {
            return Err(RegistryError::Invalid(format!(
                "{}: indexes nest more than {} deep",
                r.familiar(),
                image::archive::MAX_INDEX_DEPTH
            )));
        }
        depth += 1;
        let index: Index = serde_json::from_value(doc).map_err(|e| RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("index {digest}"),
            why: e.to_string(),
        })?;
        // A platform's entry, or a nested index (whose entries say the platforms).
        let pick = index
            .manifests
            .iter()
            .find(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    p.os == platform.os
                        && p.architecture == platform.architecture
                        && (platform.variant.is_none() || p.variant == platform.variant)
                })
            })
            .or_else(|| {
                index
                    .manifests
                    .iter()
                    .find(|m| m.platform.is_none() && oci::is_index(&m.media_type))
            })
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "{}: no manifest for {}/{} in the index",
                    r.familiar(),
                    platform.os,
                    platform.architecture
                ))
            })?
            .clone();
        (bytes, mt, digest) =
            fetch_manifest(&c, &repo, &pick.digest.to_string(), &scope, Some(pick.size))?;
        if mt.is_empty() {
            mt = pick.media_type.clone();
        }
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("manifest {digest}"),
            why: e.to_string(),
        })?;
    let tag = r.to_string();
    if let Some(existing) = store.image(&digest)? {
        store.set_ref(&tag, &digest)?;
        store.write_index()?;
        report.line(&format!("Digest: {digest}"));
        report.line(&format!("Status: Image is up to date for {}", r.familiar()));
        return Ok(existing);
    }
    // Config.
    let config_bytes = if store.has_blob(&manifest.config.digest) {
        store.read_blob(&manifest.config.digest)?
    } else {
        let resp = c.send(
            "GET",
            &format!("/v2/{repo}/blobs/{}", manifest.config.digest),
            &scope,
            &[],
            Body::Empty,
        )?;
        let resp = c.expect(resp, &[200], &format!("config {}", manifest.config.digest))?;
        let b = read_small(
            &c,
            resp,
            &format!("config {}", manifest.config.digest),
            16 << 20,
            Some(manifest.config.size),
        )?;
        let d = Digest::of(&b);
        if d != manifest.config.digest {
            return Err(RegistryError::Corrupt {
                host: c.host.clone(),
                what: format!("config {}", manifest.config.digest),
                why: format!("its content has digest {d}"),
            });
        }
        b
    };
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("config {}", manifest.config.digest),
            why: e.to_string(),
        })?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("image {digest}"),
            why: format!(
                "{} layers but {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    // Layers, in parallel, each verified before it is recorded.
    let results: Vec<Result<LayerRecord>> = std::thread::scope(|s| {
        let handles: Vec<_> = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, diff_id)| {
                let (c, scope, repo) = (&c, &scope, &repo);
                s.spawn(move || pull_layer(store, c, repo, scope, l, *diff_id, report))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RegistryError::Invalid("a layer download panicked".into()))
                })
            })
            .collect()
    });
    let layers = results.into_iter().collect::<Result<Vec<_>>>()?;
    store.put_blob(&config_bytes, Some(manifest.config.digest))?;
    store.put_blob(&bytes, Some(digest))?;
    let image = image::record_image(
        store,
        BlobRef {
            digest,
            media_type: manifest.media_type.clone().unwrap_or_else(|| {
                if mt.is_empty() {
                    oci::MEDIA_TYPE_OCI_MANIFEST.to_string()
                } else {
                    mt.clone()
                }
            }),
            size: bytes.len() as u64,
        },
        BlobRef {
            digest: manifest.config.digest,
            media_type: manifest.config.media_type.clone(),
            size: config_bytes.len() as u64,
        },
        layers,
        &config,
        &[tag],
    )?;
    report.line(&format!("Digest: {digest}"));
    report.line(&format!(
        "Status: Downloaded newer image for {}",
        r.familiar()
    ));
    Ok(image)
}

fn pull_layer(
    store: &Store,
    c: &Client,
    repo: &str,
    scope: &str,
    l: &Descriptor,
    diff_id: Digest,
    report: Report<'_>,
) -> Result<LayerRecord> {
    let short = &l.digest.hex()[..12];
    if Compression::from_media_type(&l.media_type).is_none() {
        return Err(RegistryError::Invalid(format!(
            "layer {}: unsupported media type {}",
            l.digest, l.media_type
        )));
    }
    if let Some(rec) = store.layer(&l.digest)? {
        report.line(&format!("{short}: Already exists"));
        return Ok(rec);
    }
    let resp = c.send(
        "GET",
        &format!("/v2/{repo}/blobs/{}", l.digest),
        scope,
        &[],
        Body::Empty,
    )?;
    let resp = c.expect(resp, &[200], &format!("layer {}", l.digest))?;
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(l.size);
    report.start(short, "Downloading", total);
    let what = format!("layer {}", l.digest);
    if total > l.size {
        return Err(RegistryError::Corrupt {
            host: c.host.clone(),
            what,
            why: format!(
                "the registry sends {total} bytes, the manifest declares {}",
                l.size
            ),
        });
    }
    let mut ingest = store.ingest()?;
    // Never more than the declared size: one byte past it ends the download.
    let mut reader = Counting {
        inner: Deadline::new(resp.into_reader()),
        short: short.to_string(),
        report,
    }
    .take(l.size + 1);
    let n = io::copy(&mut reader, &mut ingest).map_err(|e| read_error(c, &what, e))?;
    if n != l.size {
        return Err(RegistryError::Corrupt {
            host: c.host.clone(),
            what,
            why: image::archive::size_mismatch(n, l.size),
        });
    }
    let (_, size) = ingest.commit(Some(l.digest)).map_err(|e| match e {
        kiln_store::Error::DigestMismatch { actual, .. } => RegistryError::Corrupt {
            host: c.host.clone(),
            what: format!("layer {}", l.digest),
            why: format!("its content has digest {actual}"),
        },
        e => e.into(),
    })?;
    let rec = image::archive::verify_layer(store, &l.digest, size, &l.media_type, diff_id)
        .map_err(|e| {
            // The blob matched its digest but not the config's DiffID: drop it, record nothing.
            let _ = std::fs::remove_file(store.blob_path(&l.digest));
            RegistryError::Image(e)
        })?;
    report.line(&format!("{short}: Pull complete"));
    Ok(rec)
}

/// Pushes `img` as `reference`; returns the manifest digest and size. With `compression`,
/// layers stored otherwise are pushed converted (the manifest, and so its digest, then differ).
pub fn push(
    store: &Store,
    img: &ImageRecord,
    reference: &Reference,
    compression: Option<Compression>,
    report: Report<'_>,
) -> Result<(Digest, u64)> {
    let r = reference.clone().with_default_tag();
    let c = Client::new(&r.domain);
    let repo = r.path.clone();
    let scope = format!("repository:{repo}:pull,push");
    report.line(&format!("The push refers to repository [{}]", r.name()));
    let mut manifest_bytes = store.read_blob(&img.manifest.digest)?;
    let mut media_type = img.manifest.media_type.clone();
    let mut layers = img.layers.clone();
    if let Some(want) = compression {
        if layers
            .iter()
            .any(|l| Compression::from_media_type(&l.media_type) != Some(want))
        {
            layers = layers
                .iter()
                .map(|l| image::archive::layer_in(store, l, want))
                .collect::<Result<Vec<_>, _>>()?;
            let mut m: Manifest =
                serde_json::from_slice(&manifest_bytes).map_err(|e| ImageError::Corrupt {
                    what: format!("manifest {}", img.manifest.digest),
                    why: e.to_string(),
                })?;
            m.media_type = Some(oci::MEDIA_TYPE_OCI_MANIFEST.into());
            for (d, l) in m.layers.iter_mut().zip(&layers) {
                d.digest = l.digest;
                d.size = l.size;
                d.media_type = l.media_type.clone();
            }
            manifest_bytes = serde_json::to_vec(&m).expect("manifest serializes");
            media_type = oci::MEDIA_TYPE_OCI_MANIFEST.into();
        }
    }
    // Blobs that another repository of the same registry already has (other tags in this
    // store) are mounted from there instead of uploaded again.
    let mut known: HashMap<Digest, String> = HashMap::new();
    for (name, m) in store.refs()? {
        let Ok(other) = Reference::parse(&name) else {
            continue;
        };
        if other.domain != r.domain || other.path == repo {
            continue;
        }
        if let Some(i) = store.image(&m)? {
            for l in &i.layers {
                known.entry(l.digest).or_insert_with(|| other.path.clone());
            }
        }
    }
    let mut blobs: Vec<(Digest, u64)> = layers.iter().map(|l| (l.digest, l.size)).collect();
    blobs.push((
        img.config,
        store
            .open_blob(&img.config)?
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0),
    ));
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let lines = push_blobs(store, &c, &repo, &scope, &digests, &known, report)?;
    // Docker lists the layers only (not the config), the top one first, whatever order the
    // uploads finished in.
    for l in lines[..layers.len()].iter().rev() {
        report.line(l);
    }
    let target = r
        .digest
        .map(|d| d.to_string())
        .unwrap_or_else(|| r.tag.clone().unwrap_or_default());
    let resp = c.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{target}"),
        &scope,
        &[("Content-Type", media_type.clone())],
        Body::Bytes(&manifest_bytes),
    )?;
    c.expect(resp, &[200, 201], &format!("manifest {}", r.familiar()))?;
    let digest = Digest::of(&manifest_bytes);
    report.line(&format!(
        "{}: digest: {digest} size: {}",
        r.tag.clone().unwrap_or(target),
        manifest_bytes.len()
    ));
    Ok((digest, manifest_bytes.len() as u64))
}

/// Uploads `blobs` in parallel (each skipped when the registry has it, mounted from the
/// repository `known` names for it when there is one); returns each blob's status line
/// (`abc123: Pushed`), in the order given, for the caller to print in a stable order.
fn push_blobs(
    store: &Store,
    c: &Client,
    repo: &str,
    scope: &str,
    blobs: &[Digest],
    known: &HashMap<Digest, String>,
    report: Report<'_>,
) -> Result<Vec<String>> {
    let results: Vec<Result<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = blobs
            .iter()
            .map(|d| s.spawn(move || push_blob(store, c, repo, scope, d, known.get(d), report)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RegistryError::Invalid("a blob upload panicked".into()))
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<_>>>()
}

#[allow(clippy::too_many_arguments)]
fn push_blob(
    store: &Store,
    c: &Client,
    repo: &str,
    scope: &str,
    d: &Digest,
    mount_from: Option<&String>,
    report: Report<'_>,
) -> Result<String> {
    let short = &d.hex()[..12];
    let resp = c.send(
        "HEAD",
        &format!("/v2/{repo}/blobs/{d}"),
        scope,
        &[],
        Body::Empty,
    )?;
    if resp.status() == 200 {
        return Ok(format!("{short}: Layer already exists"));
    }
    let start = match mount_from {
        Some(from) => {
            let scope = format!("{scope} repository:{from}:pull");
            let url = format!(
                "/v2/{repo}/blobs/uploads/?mount={}&from={}",
                query_escape(&d.to_string()),
                query_escape(from)
            );
            let resp = c.send("POST", &url, &scope, &[], Body::Empty)?;
            if resp.status() == 201 {
                return Ok(format!("{short}: Mounted from {from}"));
            }
            resp
        }
        None => c.send(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            scope,
            &[],
            Body::Empty,
        )?,
    };
    let resp = c.expect(start, &[202], &format!("start upload of {d}"))?;
    let mut location = location_of(c, &resp)?;
    let path = store.blob_path(d);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    report.start(short, "Pushing", size);
    let chunk = chunk_size();
    let body = if size > chunk {
        // Chunked: PATCH each range to the upload's current location, then PUT the digest.
        let mut offset = 0;
        while offset < size {
            let len = chunk.min(size - offset);
            let resp = c.send(
                "PATCH",
                &location,
                scope,
                &[
                    ("Content-Type", "application/octet-stream".into()),
                    ("Content-Range", format!("{offset}-{}", offset + len - 1)),
                ],
                Body::FileRange(path.clone(), offset, len),
            )?;
            let resp = c.expect(resp, &[202], &format!("upload {d} at {offset}"))?;
            location = location_of(c, &resp)?;
            offset += len;
        }
        Body::Empty
    } else {
        Body::File(path)
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={}", query_escape(&d.to_string()));
    let resp = c.send(
        "PUT",
        &url,
        scope,
        &[("Content-Type", "application/octet-stream".into())],
        body,
    )?;
    c.expect(resp, &[201, 204], &format!("upload {d}"))?;
    Ok(format!("{short}: Pushed"))
}

/// The absolute upload URL from a response's Location header.
fn location_of(c: &Client, resp: &ureq::Response) -> Result<String> {
    let l = resp.header("Location").ok_or_else(|| {
        RegistryError::Invalid(format!("{}: an upload answer without a Location", c.host))
    })?;
    Ok(if l.starts_with('/') {
        format!("{}{l}", c.base)
    } else {
        l.to_string()
    })
}
