//! One `create` or `rollback` per project at a time: an advisory lock on a file per project.
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::exit_codes::{Code, UserError};

/// Held for the whole command; the kernel releases it when the process ends, even on kill -9.
#[derive(Debug)]
pub struct ProjectLock {
    _file: File,
    pub path: PathBuf,
}

impl ProjectLock {
    /// Takes the lock of `project` in `dir`, or fails at once (exit code `Locked`) naming the
    /// process that holds it.
    pub fn acquire(dir: &Path, project: &str, what: &str) -> Result<ProjectLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{project}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(UserError::new(
                    Code::Locked,
                    format!(
                        "another create or rollback of project {project} is running ({}): wait for it to finish",
                        if holder.is_empty() { "unknown process".to_string() } else { holder.to_string() }
                    ),
                )
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{what}, pid {}", std::process::id())?;
        file.flush()?;
        Ok(ProjectLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit_codes::code_of;

    #[test]
    fn a_second_lock_on_the_same_project_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProjectLock::acquire(dir.path(), "p", "create").unwrap();
        let err = ProjectLock::acquire(dir.path(), "p", "create").unwrap_err();
        assert_eq!(code_of(&err), Code::Locked);
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(ProjectLock::acquire(dir.path(), "other", "create").is_ok());
        drop(first);
        assert!(ProjectLock::acquire(dir.path(), "p", "create").is_ok());
    }
}
