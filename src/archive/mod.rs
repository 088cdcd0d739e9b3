//! The archive: a tar stream (gzip in parallel blocks, or zstd) with a manifest. Knows nothing
//! of docker or the catalog: sources hand it entries, it writes them and describes them.
pub mod collector;
pub mod fs_source;
pub mod gunzip;
pub mod handover;
pub mod hashing;
pub mod manifest;
pub mod names;
pub mod reader;
pub mod safety;
pub mod sparse;
pub mod stream_source;
mod verify;
pub mod writer;
pub mod xattrs;

pub use manifest::VolumeRecord;
pub use writer::{ArchiveWriter, Codec};
