//! End-to-end tests through the real docker CLI, Compose v2 and engine.
mod create;
mod harness;
mod plugin;
mod status;
