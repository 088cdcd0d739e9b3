//! `manifest.json`, the last entry of every archive: what was backed up, and how to check it.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::records::{BackupType, Role, VolumeKind};

/// Bumped when a reader of an older tool could misread an archive.
/// 2: entries may carry extended attributes (PAX `SCHILY.xattr.`, listed in the files'
/// lines) and files may be stored sparse (GNU sparse headers).
pub const FORMAT_VERSION: u32 = 2;
/// The manifest's name inside the archive (the last entry).
pub const MANIFEST_PATH: &str = "manifest.json";
/// One JSON object per archived entry (a [`FileLine`]), just before the manifest. Kept out of
/// `manifest.json` so that memory stays flat however many files a volume holds.
pub const FILES_PATH: &str = "manifest-files.jsonl";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub created_at: String,
    pub project: String,
    pub project_dir: PathBuf,
    pub backup_type: BackupType,
    pub service_version: String,
    pub compression: String,
    /// SHA-256 over the compose files in order (each file's bytes).
    pub compose_sha256: String,
    pub compose_files: Vec<StoredFile>,
    pub services: Vec<ServiceRecord>,
    pub volumes: Vec<VolumeRecord>,
    /// Volumes declared but not archived, with the reason.
    pub skipped: Vec<Skipped>,
    /// The age public keys the archive was encrypted to (none: not encrypted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFile {
    pub source: PathBuf,
    pub archive_path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub kind: crate::compose::Kind,
    pub restart_policy: String,
    pub image: Option<String>,
    /// The local image ID of `image` when the backup was made (archives before 0.2 lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skipped {
    pub volume: String,
    pub reason: String,
}

/// One archived volume: where it came from, where it sits in the archive, and its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub kind: VolumeKind,
    /// Engine volume name (named volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Key under the compose file's top-level `volumes:` (named volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Host path (binds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    #[serde(default)]
    pub external: bool,
    #[serde(default)]
    pub is_file: bool,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `service:target[:ro]` for each mount.
    pub mounts: Vec<String>,
    /// The folder (or file) in the archive holding the volume's content.
    pub archive_path: String,
    /// Owner and mode of the volume's root, numeric.
    pub root: RootAttrs,
    pub file_count: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RootAttrs {
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Hardlink,
}

/// One entry of a volume, by its path below the volume's root ("" for the root itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    /// The path's bytes in hex, when they are not UTF-8 (then `path` is a lossy rendering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// BLAKE3 of a regular file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Symlink target, or the hardlink's first path (relative to the volume root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Extended attributes by name, values in hex (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<BTreeMap<String, String>>,
}

/// A line of [`FILES_PATH`]: an entry and the archive folder of its volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileLine {
    pub volume: String,
    #[serde(flatten)]
    pub entry: FileEntry,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `(lossy text, hex when not UTF-8)` for a path given as bytes.
pub fn path_text(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(hex::encode(bytes)),
        ),
    }
}
