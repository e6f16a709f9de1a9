//! kiln: builds container images from Dockerfiles and runs them.
//!
//! The library holds every capability; `main.rs` only hands argv to [`cli::run`], and the CLI is
//! the only code that prints. docs/ARCHITECTURE.md describes the pipeline and its seams. In
//! pipeline order: [`frontend`] (Dockerfile parser, lexer, linter), [`plan`] (stages and steps
//! with canonical definitions), [`key`] (the step key and its schema), [`builder`] (runs a plan:
//! inputs, cache lookup, miss explanation, execution, commit), [`snapshotter`] (root filesystems
//! and committed snapshots), [`diff`] (layer tars: write and apply), the store (the `kiln-store`
//! crate, re-exported as [`store`]), [`image`] (references, OCI documents, archives),
//! [`registry`] (pull, push, remote cache), [`container`] (create, run, stop, exec),
//! [`network`] (bridge networks: definitions, addresses, netavark), [`runtime`] (namespaces,
//! mounts, cgroups, seccomp), [`cli`]. Beside them: [`context`] (the
//! build context and its stat cache), [`rootfs`] (in-root path resolution), [`sys`] (the
//! syscall wrappers), [`timefmt`].

pub mod builder;
pub mod cli;
pub mod compose;
pub mod container;
pub mod context;
pub mod diff;
pub mod frontend;
pub mod image;
pub mod key;
pub mod network;
pub mod plan;
pub mod registry;
pub mod rootfs;
pub mod rootless;
pub mod runtime;
pub mod service;
pub mod snapshotter;
pub mod stack;
pub mod sys;
pub mod timefmt;

pub use kiln_store as store;
