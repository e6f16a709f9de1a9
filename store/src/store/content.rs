//! Content: blobs by digest and their ingest (temp file, fsync, verify, rename).

use super::*;

impl Store {
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    pub fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    /// Starts writing a blob.
    pub fn ingest(&self) -> Result<Ingest> {
        Ingest::new(&self.ingest_dir(), self.blobs_dir(), true)
    }

    /// Starts writing a blob through a writer that computes its digest itself (a
    /// `LayerEncoder`): `commit(Some(digest))` takes that digest instead of hashing again.
    pub fn ingest_prehashed(&self) -> Result<Ingest> {
        Ingest::new(&self.ingest_dir(), self.blobs_dir(), false)
    }

    /// Writes a small blob in one call.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<Digest>) -> Result<Digest> {
        let d = Digest::of(bytes);
        if let Some(e) = expected {
            if e != d {
                return Err(Error::DigestMismatch {
                    expected: e,
                    actual: d,
                });
            }
        }
        // Already stored (a rebuild writing the same manifest): nothing to write or fsync.
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.ingest()?;
        w.write_all(bytes).map_err(|e| io_err("write blob", e))?;
        Ok(w.commit(expected)?.0)
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("blob {d}")),
            _ => io_err(format!("open {}", p.display()), e),
        })
    }

    /// Reads a (small) blob whole and checks it against its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("blob {d}")),
            _ => io_err(format!("read {}", p.display()), e),
        })?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(Error::DigestMismatch {
                expected: *d,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Removes a blob nothing refers to (no layer row, no image as manifest or config): for a
    /// download that matched its digest but not what the image says of it. The row goes before
    /// the file. Returns whether it was removed; a blob in use stays.
    pub fn discard_blob(&self, d: &Digest) -> Result<bool> {
        let key = d.to_string();
        let removed = {
            let db = self.db();
            db.execute(
                "DELETE FROM blobs WHERE digest = ?1
                   AND NOT EXISTS (SELECT 1 FROM layers WHERE digest = ?1)
                   AND NOT EXISTS (SELECT 1 FROM images WHERE manifest = ?1 OR config = ?1)",
                params![key],
            )?
        };
        let in_use = removed == 0 && {
            let db = self.db();
            db.query_row(
                "SELECT EXISTS(SELECT 1 FROM layers WHERE digest = ?1)
                     OR EXISTS(SELECT 1 FROM images WHERE manifest = ?1 OR config = ?1)",
                params![key],
                |r| r.get::<_, bool>(0),
            )?
        };
        if in_use {
            return Ok(false);
        }
        match fs::remove_file(self.blob_path(d)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(removed > 0),
            Err(e) => Err(io_err(format!("remove blob {d}"), e)),
        }
    }
}
