//! kiln's integration tests: one binary, a module per area. Tests that need root or an external
//! tool skip with a printed reason when it is missing, and fail instead when
//! KILN_REQUIRE_PRIVILEGED=1 (as .ci/run sets), so CI runs them all.

mod common;

mod build;
mod buildkit;
mod check;
mod cli;
mod compose;
mod conformance;
mod crash;
mod demo;
mod health;
mod hostile;
mod in_container;
mod interop;
mod layout;
mod network;
mod registry;
mod restart;
mod rootless;
mod run;
mod scale;
mod security;
mod snapshot;
mod stack;
mod volumes;
