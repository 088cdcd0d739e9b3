//! One file per subcommand: arguments in, a domain call, output out.
pub mod create;
pub mod rollback;
pub mod status;
