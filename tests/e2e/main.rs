//! End-to-end tests through the real docker CLI, Compose v2 and engine.
mod capture;
mod catalog;
mod complete;
mod create;
mod demo;
mod edges;
mod encrypt;
mod fixture;
mod hostile;
mod harness;
mod nonroot;
mod planted;
mod plugin;
mod reliability;
mod remote;
mod rollback;
mod s3;
mod staged;
mod status;

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
