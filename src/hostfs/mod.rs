//! Host-filesystem primitives below both pipelines: writing below a root through
//! descriptors the kernel keeps inside it (`beneath`), and folders the tool makes and trusts
//! only as its private records say (`owned`), and path-level removal, attributes, flushes and
//! mount points (`paths`).
pub mod beneath;
pub mod owned;
pub mod paths;
