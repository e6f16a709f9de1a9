//! Step-cache export and import through a registry (`kiln build --cache-to/--cache-from
//! type=registry,ref=...`).
//!
//! The cache is an OCI image manifest whose config (media type [`CONFIG_MEDIA_TYPE`]) lists the
//! step records (key, parent key, layer, instruction, creation time, the input summary without
//! its env and build-arg values), and whose
//! layers are those steps' layer blobs, unchanged. Any distribution registry stores it like an
//! image. Another store imports the records on demand: a step whose key is in the imported
//! records becomes a hit, and its layer blob is downloaded (and checked against its digest and
//! DiffID) only then.

use super::{fetch_manifest, pull_layer, push_blobs, Body, Client, RegistryError, Report, Result};
use crate::image::oci::{self, Descriptor, Manifest};
use crate::image::reference::Reference;
use kiln_store::{Digest, LayerRecord, StepRecord, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The config media type of a kiln cache manifest.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Layer {
    digest: Digest,
    diff_id: Digest,
    media_type: String,
    size: u64,
    uncompressed_size: u64,
}

/// One exported step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub parent: String,
    #[serde(default)]
    layer: Option<Layer>,
    pub instruction: String,
    #[serde(default)]
    pub inputs: String,
    pub created: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Config {
    version: u32,
    records: Vec<Record>,
}

/// What `--cache-to` / `--cache-from` take: `type=registry,ref=NAME[,mode=max]`, or a bare
/// reference (as `docker build --cache-from NAME`).
pub fn parse_spec(spec: &str) -> std::result::Result<Reference, String> {
    if !spec.contains('=') {
        return Reference::parse(spec).map_err(|e| format!("cache reference {spec:?}: {e}"));
    }
    let mut fields = BTreeMap::new();
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid cache option {part:?} in {spec:?}"))?;
        fields.insert(k.trim(), v.trim());
    }
    match fields.get("type").copied().unwrap_or("registry") {
        "registry" => {}
        other => {
            return Err(format!(
                "cache type {other:?} is not supported (type=registry is)"
            ))
        }
    }
    if let Some(m) = fields.get("mode") {
        if *m != "max" {
            return Err(format!(
                "cache mode={m} is not supported: kiln exports every step of the build (mode=max)"
            ));
        }
    }
    for k in fields.keys() {
        if !matches!(*k, "type" | "ref" | "mode") {
            return Err(format!("unknown cache option {k:?} in {spec:?}"));
        }
    }
    let r = fields
        .get("ref")
        .ok_or_else(|| format!("{spec:?}: ref=NAME[:TAG] is required"))?;
    Reference::parse(r).map_err(|e| format!("cache reference {r:?}: {e}"))
}

/// Exports the steps a build used or made (its [`crate::builder::Outcome::keys`], in order,
/// duplicates skipped) to `reference`; returns how many steps went and the manifest digest.
pub fn export_keys(
    store: &Store,
    keys: &[String],
    reference: &Reference,
    report: Report<'_>,
) -> Result<(usize, Digest)> {
    let mut seen = std::collections::HashSet::new();
    let mut records = Vec::new();
    for k in keys {
        if seen.insert(k.as_str()) {
            if let Some(rec) = store.steps().get(k)? {
                records.push(rec);
            }
        }
    }
    let digest = export(store, &records, reference, report)?;
    Ok((records.len(), digest))
}

/// Pushes `records` (and their layers) as the cache manifest `reference`; returns its digest.
pub fn export(
    store: &Store,
    records: &[StepRecord],
    reference: &Reference,
    report: Report<'_>,
) -> Result<Digest> {
    let r = reference.clone().with_default_tag();
    let c = Client::new(&r.domain);
    let repo = r.path.clone();
    let scope = format!("repository:{repo}:pull,push");
    let mut layers: Vec<LayerRecord> = Vec::new();
    let mut out = Vec::new();
    for rec in records {
        if let Some(l) = &rec.layer {
            if !layers.iter().any(|x| x.digest == l.digest) {
                layers.push(l.clone());
            }
        }
        out.push(Record {
            key: rec.key.clone(),
            parent: rec.parent.clone(),
            layer: rec.layer.as_ref().map(|l| Layer {
                digest: l.digest,
                diff_id: l.diff_id,
                media_type: l.media_type.clone(),
                size: l.size,
                uncompressed_size: l.uncompressed_size,
            }),
            instruction: rec.instruction.clone(),
            // The input summary goes without its env and build-arg values, which stay on this
            // machine (file digests and the instruction still explain the next miss).
            inputs: crate::builder::inputs_for_export(&rec.inputs),
            created: rec.created,
        });
    }
    let config = serde_json::to_vec(&Config {
        version: 1,
        records: out,
    })
    .expect("cache config serializes");
    let config_digest = store.put_blob(&config, None)?;
    let mut blobs: Vec<Digest> = layers.iter().map(|l| l.digest).collect();
    blobs.push(config_digest);
    for l in push_blobs(store, &c, &repo, &scope, &blobs, &HashMap::new(), report)? {
        report.line(&l);
    }
    let manifest = Manifest::oci(
        store,
        CONFIG_MEDIA_TYPE,
        config_digest,
        config.len() as u64,
        &layers,
    )?;
    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let target = r.tag.clone().unwrap_or_else(|| "latest".into());
    let resp = c.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{target}"),
        &scope,
        &[("Content-Type", oci::MEDIA_TYPE_OCI_MANIFEST.into())],
        Body::Bytes(&bytes),
    )?;
    c.expect(
        resp,
        &[200, 201],
        &format!("cache manifest {}", r.familiar()),
    )?;
    Ok(Digest::of(&bytes))
}

/// Step records imported from a registry, their layers fetched on first use.
pub struct RemoteCache {
    client: Client,
    repo: String,
    scope: String,
    name: String,
    records: HashMap<String, Record>,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RemoteCache({}, {} records)",
            self.name,
            self.records.len()
        )
    }
}

impl RemoteCache {
    /// Reads the cache manifest `reference` and its records. A missing manifest is an empty
    /// cache (as BuildKit: the first build of a branch has nothing to import).
    pub fn import(reference: &Reference) -> Result<RemoteCache> {
        let r = reference.clone().with_default_tag();
        let client = Client::new(&r.domain);
        let repo = r.path.clone();
        let scope = format!("repository:{repo}:pull");
        let target = r.tag.clone().unwrap_or_else(|| "latest".into());
        let mut out = RemoteCache {
            client,
            repo,
            scope,
            name: r.familiar(),
            records: HashMap::new(),
        };
        let (bytes, _, digest) =
            match fetch_manifest(&out.client, &out.repo, &target, &out.scope, None) {
                Ok(m) => m,
                Err(RegistryError::NotFound(_)) => return Ok(out),
                Err(e) => return Err(e),
            };
        let corrupt = |why: String| RegistryError::Corrupt {
            host: out.client.host.clone(),
            what: format!("cache manifest {digest}"),
            why,
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if m.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(corrupt(format!(
                "its config is {}, not a kiln cache ({CONFIG_MEDIA_TYPE})",
                m.config.media_type
            )));
        }
        let resp = out.client.send(
            "GET",
            &format!("/v2/{}/blobs/{}", out.repo, m.config.digest),
            &out.scope,
            &[],
            Body::Empty,
        )?;
        let resp = out
            .client
            .expect(resp, &[200], &format!("cache config {}", m.config.digest))?;
        let cfg = super::read_small(
            &out.client,
            resp,
            &format!("cache config {}", m.config.digest),
            64 << 20,
            Some(m.config.size),
        )?;
        if Digest::of(&cfg) != m.config.digest {
            return Err(corrupt("the config blob does not match its digest".into()));
        }
        let cfg: Config = serde_json::from_slice(&cfg).map_err(|e| corrupt(e.to_string()))?;
        out.records = cfg
            .records
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect();
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step `key`, if the imported cache has it: its layer is downloaded into `store` (when
    /// missing there) and verified, and the record is added to the store's step cache under
    /// `slot`, so it is a local hit from now on.
    pub fn materialize(
        &self,
        store: &Store,
        key: &str,
        slot: &str,
        report: Report<'_>,
    ) -> Result<Option<StepRecord>> {
        let Some(r) = self.records.get(key) else {
            return Ok(None);
        };
        let layer = match &r.layer {
            None => None,
            Some(l) => Some(if store.has_blob(&l.digest) {
                match store.layer(&l.digest)? {
                    Some(rec) => rec,
                    None => LayerRecord {
                        digest: l.digest,
                        diff_id: l.diff_id,
                        media_type: l.media_type.clone(),
                        size: l.size,
                        uncompressed_size: l.uncompressed_size,
                    },
                }
            } else {
                let d = Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest,
                    size: l.size,
                    platform: None,
                    annotations: BTreeMap::new(),
                };
                pull_layer(
                    store,
                    &self.client,
                    &self.repo,
                    &self.scope,
                    &d,
                    l.diff_id,
                    report,
                )?
            }),
        };
        let now = kiln_store::store::now();
        let rec = StepRecord {
            key: r.key.clone(),
            slot: slot.to_string(),
            parent: r.parent.clone(),
            layer,
            chain_id: None,
            instruction: r.instruction.clone(),
            inputs: r.inputs.clone(),
            created: r.created,
            last_used: now,
            hits: 0,
        };
        store.steps().record(&rec)?;
        Ok(Some(rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_specs() {
        let r = parse_spec("type=registry,ref=localhost:5000/app:cache").unwrap();
        assert_eq!(r.to_string(), "localhost:5000/app:cache");
        assert_eq!(
            parse_spec("localhost:5000/app:cache").unwrap().to_string(),
            "localhost:5000/app:cache"
        );
        assert!(parse_spec("type=local,dest=/tmp/x")
            .unwrap_err()
            .contains("type=registry"));
        assert!(parse_spec("type=registry").unwrap_err().contains("ref="));
        assert!(parse_spec("type=registry,ref=a/b,mode=min")
            .unwrap_err()
            .contains("mode=max"));
        assert!(parse_spec("type=registry,ref=a/b,oops=1")
            .unwrap_err()
            .contains("oops"));
    }
}
