//! One `create` or `rollback` per project at a time: an advisory lock on a file per project.
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
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
        let (mut file, path) = open_lock_file(dir, &format!("{project}.lock"))?;
        match try_lock_briefly(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(UserError::new(Code::Locked, busy_message(project, &holder)).into());
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

/// Takes the lock, retrying for half a second: `status` probes it with a shared lock for an
/// instant, which must not make a create fail.
fn try_lock_briefly(file: &File) -> Result<(), TryLockError> {
    for _ in 0..10 {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            other => return other,
        }
    }
    file.try_lock()
}

/// Whether a live process holds `project`'s lock in `dir` now (probed with a shared lock that
/// is released at once; a missing lock file means no).
pub fn is_held(dir: &Path, project: &str) -> bool {
    let Ok(file) = File::open(dir.join(format!("{project}.lock"))) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

/// "project P is busy: a create (pid 12) is running…", from the holder's `what, pid N` line.
fn busy_message(project: &str, holder: &str) -> String {
    let holder = holder.trim();
    let who = match holder.split_once(", pid ") {
        Some((what, pid)) => format!("a {what} (pid {pid})"),
        None if holder.is_empty() => "another run".to_string(),
        None => holder.to_string(),
    };
    format!("project {project} is busy: {who} is running; wait for it to finish and try again")
}

/// A backup in use: commands that read a backup (rollback, verify, push, migrate-storage)
/// hold a shared lock on `backup-<id>.pin` from their first step; `delete` and `prune` take
/// it exclusively, so a backup is never removed under a command that reads it.
#[derive(Debug)]
pub struct Pin {
    _file: File,
}

fn pin_file(dir: &Path, id: i64) -> Result<(File, PathBuf)> {
    open_lock_file(dir, &format!("backup-{id}.pin"))
}

/// Opens (or makes, private) the lock file `name` in `dir`.
fn open_lock_file(dir: &Path, name: &str) -> Result<(File, PathBuf)> {
    crate::private::create_dir_all(dir)?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    Ok((file, path))
}

/// Who reads backup `id` now, as its readers said (`rollback, pid 12`).
fn pin_holder(dir: &Path, id: i64) -> String {
    std::fs::read_to_string(dir.join(format!("backup-{id}.holder")))
        .ok()
        .and_then(|h| {
            let (what, pid) = h.trim().split_once(", pid ")?;
            Some(format!("a {what} (pid {pid})"))
        })
        .unwrap_or_else(|| "another command".into())
}

impl Pin {
    /// Pins backup `id` for reading by `what`; fails at once (exit 9) while it is being
    /// deleted or pruned.
    pub fn reading(dir: &Path, id: i64, what: &str) -> Result<Pin> {
        let (file, path) = pin_file(dir, id)?;
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(UserError::new(
                    Code::Locked,
                    format!("backup #{id} is being deleted: nothing was done"),
                )
                .into())
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        let _ = std::fs::write(
            dir.join(format!("backup-{id}.holder")),
            format!("{what}, pid {}", std::process::id()),
        );
        Ok(Pin { _file: file })
    }

    /// Pins backup `id` for removal; `Ok(Err(holder))` when a command reads it now.
    pub fn removing(dir: &Path, id: i64) -> Result<std::result::Result<Pin, String>> {
        let (file, path) = pin_file(dir, id)?;
        match file.try_lock() {
            Ok(()) => Ok(Ok(Pin { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(Err(pin_holder(dir, id))),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
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
        assert!(err.to_string().contains("a create (pid"), "{err}");
        assert!(ProjectLock::acquire(dir.path(), "other", "create").is_ok());
        assert!(is_held(dir.path(), "p"));
        drop(first);
        assert!(!is_held(dir.path(), "p"));
        assert!(ProjectLock::acquire(dir.path(), "p", "create").is_ok());
    }

    #[test]
    fn a_backup_being_read_is_not_removed_and_one_being_removed_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pin::reading(dir.path(), 1, "rollback").unwrap();
        let b = Pin::reading(dir.path(), 1, "verify").unwrap();
        let holder = Pin::removing(dir.path(), 1).unwrap().unwrap_err();
        assert_eq!(holder, format!("a verify (pid {})", std::process::id()));
        drop((a, b));
        let removing = Pin::removing(dir.path(), 1).unwrap().unwrap();
        let err = Pin::reading(dir.path(), 1, "rollback").unwrap_err();
        assert_eq!(code_of(&err), Code::Locked);
        assert_eq!(
            err.to_string(),
            "backup #1 is being deleted: nothing was done"
        );
        drop(removing);
        assert!(Pin::removing(dir.path(), 2).unwrap().is_ok());
    }
}
