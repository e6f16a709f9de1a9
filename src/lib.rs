//! kiln: builds container images from Dockerfiles and runs them.
//!
//! The library holds every capability; `main.rs` only hands argv to [`cli::run`]. See
//! DESIGN.md for the architecture. Module map: [`image`] (references, OCI documents, import,
//! archives), [`snapshot`] (unpacked layers), [`diff`] (layer tars: write and apply),
//! [`rootfs`] (in-root path resolution), [`sys`] (every unsafe syscall wrapper), [`cli`]
//! (the only code that prints). The store itself is the `kiln-store` crate.

pub mod builder;
pub mod cli;
pub mod container;
pub mod context;
pub mod diff;
pub mod frontend;
pub mod image;
pub mod key;
pub mod plan;
pub mod registry;
pub mod rootfs;
pub mod runtime;
pub mod snapshotter;
pub mod sys;
pub mod timefmt;

pub use kiln_store as store;
