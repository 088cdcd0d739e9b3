//! Files and folders the tool makes are private: folders `0700`, files `0600` (`0640` in a
//! folder shared with a group on purpose). Modes of things it did not make are left alone.
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// Creates `dir` and its missing parents with mode `0700`; existing folders keep their mode.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// The mode for a file the tool writes in `dir`: `0640` when the folder is group-readable and
/// not world-readable (shared with a group on purpose), else `0600`.
pub fn file_mode_in(dir: &Path) -> u32 {
    match fs::metadata(dir) {
        Ok(m) if m.mode() & 0o040 != 0 && m.mode() & 0o004 == 0 => 0o640,
        _ => 0o600,
    }
}

/// Creates `path` (empty) with the private mode for its folder when it does not exist yet.
pub fn create_file(path: &Path) -> Result<()> {
    match open_new(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other
            .map(drop)
            .with_context(|| format!("creating {}", path.display())),
    }
}

/// Opens a new file for writing with the private mode for its folder (fails when it exists).
pub fn create_new(path: &Path) -> Result<File> {
    open_new(path).with_context(|| format!("creating {}", path.display()))
}

fn open_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file_mode_in(path.parent().unwrap_or(Path::new("."))))
        .open(path)
}

/// Replaces `path` with `bytes` whole: written to a private temporary file beside it,
/// fsynced, renamed over it, and the folder synced (a record a crash must not tear).
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f = create_new(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    crate::storage::sync_dir(dir)
}

/// Whether every local user can read `dir` (then backups in it are not private).
pub fn world_readable(dir: &Path) -> bool {
    fs::metadata(dir).is_ok_and(|m| m.mode() & 0o004 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_owner_only_unless_the_folder_is_shared_with_a_group() {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(file_mode_in(d.path()), 0o600);
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(file_mode_in(d.path()), 0o640);
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(file_mode_in(d.path()), 0o600);
    }

    #[test]
    fn created_folders_are_0700_and_existing_ones_keep_their_mode() {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        create_dir_all(&d.path().join("a/b")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&d.path().join("a/b")), 0o700);
        assert_eq!(mode(d.path()), 0o755);
    }
}
