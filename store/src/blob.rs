//! Blob ingest: a write goes to a temp file under `<root>/ingest/`, is fsynced, verified against
//! the expected digest if one is given, renamed to `blobs/sha256/<hex>` and the directory fsynced.
//! A blob that already exists is success. A crash leaves at most a temp file, which GC removes.

use crate::digest::Digest;
use crate::{io_err, Error, Result};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::TempPath;

/// A blob being written. Dropping it without `commit` removes the temp file.
pub struct Ingest {
    writer: BufWriter<File>,
    /// None for an ingest whose writer hashes what it writes itself (a [`crate::LayerEncoder`]
    /// does): `commit` then takes its digest, saving a second sha256 pass over the blob.
    hasher: Option<Sha256>,
    count: u64,
    temp: TempPath,
    blobs_dir: PathBuf,
}

impl Ingest {
    pub(crate) fn new(ingest_dir: &Path, blobs_dir: PathBuf, hashed: bool) -> Result<Ingest> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(ingest_dir)
            .map_err(|e| io_err(format!("create temp file in {}", ingest_dir.display()), e))?;
        let (file, temp) = tmp.into_parts();
        Ok(Ingest {
            writer: BufWriter::with_capacity(1 << 20, file),
            hasher: hashed.then(Sha256::new),
            count: 0,
            temp,
            blobs_dir,
        })
    }

    /// The temp file's path (for tools that need to reopen what was written).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Makes the blob durable under its digest. With `expected`, a different digest is an error
    /// and nothing is stored. An unhashed ingest takes `expected` as the digest (its writer
    /// computed it over exactly these bytes) and needs it.
    pub fn commit(self, expected: Option<Digest>) -> Result<(Digest, u64)> {
        let size = self.count;
        let digest = match (self.hasher, expected) {
            (Some(h), _) => Digest(h.finalize().into()),
            (None, Some(d)) => d,
            (None, None) => {
                return Err(io_err(
                    "commit blob",
                    io::Error::other("an unhashed ingest needs the digest its writer computed"),
                ))
            }
        };
        let file = self
            .writer
            .into_inner()
            .map_err(|e| io_err("flush blob", e.into_error()))?;
        if let Some(exp) = expected {
            if exp != digest {
                return Err(Error::DigestMismatch {
                    expected: exp,
                    actual: digest,
                });
            }
        }
        let dest = self.blobs_dir.join(digest.hex());
        if dest.exists() {
            return Ok((digest, size));
        }
        file.sync_all().map_err(|e| io_err("fsync blob", e))?;
        fs::set_permissions(&self.temp, fs::Permissions::from_mode(0o644))
            .map_err(|e| io_err("chmod blob", e))?;
        drop(file);
        self.temp
            .persist(&dest)
            .map_err(|e| io_err(format!("rename blob into {}", dest.display()), e.error))?;
        sync_dir(&self.blobs_dir)?;
        Ok((digest, size))
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.writer.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// fsync a directory so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(format!("fsync directory {}", dir.display()), e))
}
