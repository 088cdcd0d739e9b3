//! End-to-end tests through the real docker CLI, Compose v2 and engine.

#[cfg(not(feature = "fault-injection"))]
compile_error!(
    "the end-to-end tests kill runs at fault points: run them with scripts/test.sh (cargo test --features fault-injection)"
);
mod capture;
mod catalog;
mod complete;
mod create;
mod demo;
mod edges;
mod encrypt;
mod fidelity;
mod fixture;
mod harness;
mod hooks;
mod hostile;
mod metrics;
mod nonroot;
mod notify;
mod planted;
mod plugin;
mod reliability;
mod remote;
mod restore_test;
mod rollback;
mod s3;
mod safety;
mod schedule;
mod signals;
mod staged;
mod status;

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
