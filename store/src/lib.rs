//! kiln-store: kiln's content-addressed store.
//!
//! It knows blobs, digests, SQLite and compression, and nothing about Dockerfiles or namespaces.
//! The store is itself a valid OCI image layout (see [`store`] for the on-disk layout and its
//! crash-safety invariants). Split as containerd splits its own: content (blobs and their
//! ingest, `store/content.rs`; [`codec`] writes and reads layer blobs), metadata (leases, images,
//! refs, layers, snapshots: `store/metadata.rs`), and typed tables with handles of their own:
//! [`Store::steps`] (the build step cache), [`Store::stat_cache`] (the context stat cache),
//! [`Store::containers`] (the runner's containers, with [`ContainerState`]), [`Store::networks`]
//! (networks and the addresses containers hold on them). [`gc`] collects
//! garbage.

pub mod blob;
pub mod chunked;
pub mod codec;
pub mod containers;
pub mod digest;
pub mod gc;
pub mod networks;
pub mod statfile;
pub mod steps;
pub mod store;

pub use blob::Ingest;
pub use codec::{Compression, LayerDigests, LayerEncoder};
pub use containers::{ContainerRow, ContainerState, Containers};
pub use digest::Digest;
pub use gc::{GcOptions, GcReport, Usage};
pub use networks::{EndpointRow, NetworkRecord, Networks};
pub use statfile::{StatCache, StatFile};
pub use steps::{StatRow, StatTuple, StepCache, StepListing, StepRecord};
pub use store::{
    chain_ids, BlobRef, ContainerRecord, ImageRecord, ImageSummary, LayerRecord, Lease, NewImage,
    SnapshotRecord, Store,
};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store database")]
    Db(#[from] rusqlite::Error),
    #[error("digest mismatch: expected {expected}, content has {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} is in use")]
    InUse(String),
    #[error("corrupt {what}: {why}")]
    Corrupt { what: String, why: String },
    #[error(
        "store {root} has format version {found}, newer than this kiln's {known}: upgrade kiln"
    )]
    TooNew {
        root: PathBuf,
        found: u32,
        known: u32,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>, source: std::io::Error) -> Error {
    Error::Io {
        context: context.into(),
        source,
    }
}

impl Error {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
}

#[cfg(test)]
mod tests;
