//! `kiln image diff A B`: why two images differ. The config fields that differ (the run config
//! key by key, the top-level fields, history entry by entry), then the files of the merged
//! trees. Layers of the common ChainID prefix are the same in both, so only the layers above it
//! are read; the common ones are read (headers, and the contents of the paths in question) only
//! when a path one side's own layers leave alone could differ.

pub mod tree;

use super::archive::load_path;
use super::oci::ImageConfig;
use super::{io_err, read_config, resolve, ImageError, Result};
use kiln_store::{chain_ids, codec, Digest, ImageRecord, LayerRecord, Store};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use tree::{FileChange, Tree};

/// One side of the comparison.
#[derive(Debug, Serialize)]
pub struct SideInfo {
    /// As the user named it.
    pub name: String,
    /// The image ID (config digest).
    pub id: Digest,
    pub layers: usize,
    /// How many of its layers were read.
    pub layers_read: usize,
}

/// A config field whose value differs (`Value::Null` where a side has none).
#[derive(Debug, Serialize)]
pub struct ConfigChange {
    /// `Env`, `Cmd`, `Labels`... as the config's JSON names them, `created`, or `history[N]`.
    pub field: String,
    pub a: Value,
    pub b: Value,
}

#[derive(Debug, Serialize)]
pub struct ImageDiff {
    pub a: SideInfo,
    pub b: SideInfo,
    /// Layers both images start with (the same ChainID), not walked.
    pub common_layers: usize,
    pub config: Vec<ConfigChange>,
    pub files: Vec<FileChange>,
}

/// An image to compare: from the store, or loaded from an archive into a store of its own
/// that lives as long as this.
pub struct Opened {
    name: String,
    image: ImageRecord,
    config: ImageConfig,
    own: Option<(Store, tempfile::TempDir)>,
}

/// Opens what the user named: a name or ID in `store`, or `oci-archive:PATH` /
/// `docker-archive:PATH` (read into a temporary store; `store` is not changed).
pub fn open(store: &Store, input: &str) -> Result<Opened> {
    let archive = input
        .strip_prefix("oci-archive:")
        .or_else(|| input.strip_prefix("docker-archive:"));
    let Some(path) = archive else {
        let image = resolve(store, input)?.image;
        let config = read_config(store, &image)?;
        return Ok(Opened {
            name: input.to_string(),
            image,
            config,
            own: None,
        });
    };
    let dir = tempfile::Builder::new()
        .prefix("kiln-diff-")
        .tempdir()
        .map_err(io_err("create a temporary store"))?;
    let own = Store::open(dir.path())?;
    let mut loaded = load_path(&own, Path::new(path))?;
    if loaded.len() != 1 {
        return Err(ImageError::Invalid(format!(
            "{path} holds {} images; image diff compares one image with another",
            loaded.len()
        )));
    }
    let image = loaded.remove(0).image;
    let config = read_config(&own, &image)?;
    Ok(Opened {
        name: input.to_string(),
        image,
        config,
        own: Some((own, dir)),
    })
}

impl Opened {
    fn store<'a>(&'a self, main: &'a Store) -> &'a Store {
        self.own.as_ref().map(|(s, _)| s).unwrap_or(main)
    }
}

/// Applies `layers` of `store` in order onto a tree.
fn read_layers(
    store: &Store,
    layers: &[LayerRecord],
    tree: &mut Tree,
    want: &dyn Fn(&str) -> bool,
) -> Result<()> {
    for l in layers {
        let what = format!("layer {}", l.digest);
        let r = codec::decompress(store.open_blob(&l.digest)?)
            .map_err(io_err(format!("read {what}")))?;
        tree.apply(r, want)
            .map_err(io_err(format!("read {what}")))?;
    }
    Ok(())
}

/// Compares `a` and `b`.
pub fn diff(store: &Store, a: &Opened, b: &Opened) -> Result<ImageDiff> {
    let (sa, sb) = (a.store(store), b.store(store));
    let chain =
        |i: &ImageRecord| chain_ids(&i.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>());
    let (ca, cb) = (chain(&a.image), chain(&b.image));
    let common = ca.iter().zip(&cb).take_while(|(x, y)| x == y).count();
    let all = |_: &str| true;
    let (ta, tb) = rayon::join(
        || -> Result<Tree> {
            let mut t = Tree::default();
            read_layers(sa, &a.image.layers[common..], &mut t, &all)?;
            Ok(t)
        },
        || -> Result<Tree> {
            let mut t = Tree::default();
            read_layers(sb, &b.image.layers[common..], &mut t, &all)?;
            Ok(t)
        },
    );
    let (ta, tb) = (ta?, tb?);
    let mut below = Tree::default();
    let mut common_read = 0;
    if common > 0 && tree::needs_common(&ta, &tb) {
        let want = tree::wanted_in_common(&ta, &tb);
        read_layers(sa, &a.image.layers[..common], &mut below, &want)?;
        common_read = common;
    }
    let files = tree::compare(&ta, &tb, &below);
    let side = |o: &Opened| SideInfo {
        name: o.name.clone(),
        id: o.image.config,
        layers: o.image.layers.len(),
        layers_read: o.image.layers.len() - common + common_read,
    };
    Ok(ImageDiff {
        a: side(a),
        b: side(b),
        common_layers: common,
        config: config_changes(&a.config, &b.config),
        files,
    })
}

/// Each key of `a` or `b` (but `skip`) whose value differs, in key order.
fn changed_keys(
    a: &serde_json::Map<String, Value>,
    b: &serde_json::Map<String, Value>,
    skip: &[&str],
    out: &mut Vec<ConfigChange>,
) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys.into_iter().filter(|k| !skip.contains(&k.as_str())) {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            out.push(ConfigChange {
                field: k.clone(),
                a: x.cloned().unwrap_or(Value::Null),
                b: y.cloned().unwrap_or(Value::Null),
            });
        }
    }
}

/// The config fields that differ: the run config's keys (`Env`, `Cmd`, `Entrypoint`,
/// `WorkingDir`, `User`, `Labels`, `ExposedPorts`, `Volumes`, `Healthcheck`...), the top-level
/// fields but the layers' DiffIDs (the files say what those change), and each history entry.
pub fn config_changes(a: &ImageConfig, b: &ImageConfig) -> Vec<ConfigChange> {
    let (ja, jb) = (
        serde_json::to_value(a).unwrap_or(Value::Null),
        serde_json::to_value(b).unwrap_or(Value::Null),
    );
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let obj = |v: &Value, k: &str| v.get(k).and_then(Value::as_object).cloned();
    let (ra, rb) = (
        obj(&ja, "config").unwrap_or_default(),
        obj(&jb, "config").unwrap_or_default(),
    );
    changed_keys(&ra, &rb, &[], &mut out);
    let (ta, tb) = (
        ja.as_object().unwrap_or(&empty),
        jb.as_object().unwrap_or(&empty),
    );
    changed_keys(ta, tb, &["config", "rootfs", "history"], &mut out);
    let (ha, hb) = (&a.history, &b.history);
    for i in 0..ha.len().max(hb.len()) {
        let (x, y) = (ha.get(i), hb.get(i));
        if x != y {
            let v = |h: Option<&super::oci::History>| {
                h.map(|h| serde_json::to_value(h).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null)
            };
            out.push(ConfigChange {
                field: format!("history[{i}]"),
                a: v(x),
                b: v(y),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
