//! One file per subcommand: arguments in, a domain call, output out.
pub mod create;
pub mod delete;
pub mod import;
pub mod import_remote;
pub mod list;
pub mod metrics;
pub mod migrate_storage;
pub mod prune;
pub mod push;
pub mod recover;
pub mod rollback;
pub mod schedule;
pub mod status;
pub mod verify;
