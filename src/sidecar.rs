//! The JSON sidecar beside each archive (`<archive>.json`): what the catalog knows of it,
//! without local paths, driver options or secrets, so `import` learns an archive's facts
//! without opening it (an encrypted archive needs no key for that). Written after the
//! archive is published; the archive stays the truth.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::catalog::BackupRow;
use crate::records::BackupType;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The archive format (manifest `format_version`).
    pub format: u32,
    pub tool_version: String,
    pub project: String,
    /// The archive's file name (the sidecar sits beside it).
    pub file_name: String,
    pub service_version: String,
    pub backup_type: BackupType,
    pub created_at: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub file_count: u64,
    pub compression: String,
    pub duration_ms: u64,
    pub encrypted: bool,
    /// The public keys that open it (public: they say which private key is needed).
    pub recipients: Vec<String>,
}

/// `<archive>.json`.
pub fn path_of(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

impl Sidecar {
    pub fn of(row: &BackupRow) -> Sidecar {
        Sidecar {
            format: crate::archive::manifest::FORMAT_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            project: row.project.clone(),
            file_name: Path::new(&row.file_path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            service_version: row.service_version.clone(),
            backup_type: row.backup_type,
            created_at: row.created_at.clone(),
            size_bytes: row.size_bytes,
            sha256: row.sha256.clone().unwrap_or_default(),
            file_count: row.file_count,
            compression: row.compression.clone(),
            duration_ms: row.duration_ms,
            encrypted: row.encrypted,
            recipients: row.recipients.clone(),
        }
    }
}

/// Writes the sidecar of `row`'s archive (private mode, complete or not at all).
pub fn write(row: &BackupRow) -> Result<()> {
    let target = path_of(Path::new(&row.file_path));
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".nuwax-sidecar-{}-{}",
        std::process::id(),
        target.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = crate::private::create_new(&tmp)?;
    let json = serde_json::to_vec_pretty(&Sidecar::of(row))?;
    let written = f
        .write_all(&json)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", target.display()))?;
    crate::storage::sync_dir(dir)
}

/// The sidecar beside `archive`, if there is one.
pub fn read(archive: &Path) -> Result<Option<Sidecar>> {
    let p = path_of(archive);
    match std::fs::read(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not a valid sidecar", p.display())
            })?))
        }
    }
}

/// Removes the sidecar beside `archive` (none is fine).
pub fn remove(archive: &Path) -> Result<()> {
    let p = path_of(archive);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}
