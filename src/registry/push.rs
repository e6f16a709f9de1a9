//! Pushing an image: blobs the registry lacks (monolithic or chunked uploads, cross-repository mounts), then the manifest.

#[allow(unused_imports)]
use super::*;

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
        let mut differ = false;
        for l in &layers {
            differ |= store.layer_compression(l)? != Some(want);
        }
        if differ {
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
                d.annotations = store.layer_annotations(l)?;
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
pub(super) fn push_blobs(
    store: &Store,
    c: &Client,
    repo: &str,
    scope: &str,
    blobs: &[Digest],
    known: &HashMap<Digest, String>,
    report: Report<'_>,
) -> Result<Vec<String>> {
    let results = bounded(blobs, PARALLEL_UPLOADS, |d| {
        push_blob(store, c, repo, scope, d, known.get(d), report)
    });
    results.into_iter().collect::<Result<Vec<_>>>()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn push_blob(
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
pub(super) fn location_of(c: &Client, resp: &ureq::Response) -> Result<String> {
    let l = resp.header("Location").ok_or_else(|| {
        RegistryError::Invalid(format!("{}: an upload answer without a Location", c.host))
    })?;
    Ok(if l.starts_with('/') {
        format!("{}{l}", c.base)
    } else {
        l.to_string()
    })
}
