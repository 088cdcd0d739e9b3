//! The storage folder: archive names, temporary files, no-clobber publishing, free space.
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

/// Prefix of in-progress archives; `list`, `import` and `verify` never treat them as backups.
pub const PARTIAL_PREFIX: &str = ".nuwax-partial-";

/// `backup_{type}_v{version}_{YYYY-MM-DD_HH-MM-SS}.{ext}`, the version made safe for a file name.
pub fn archive_name(backup_type: &str, version: &str, at: DateTime<Utc>, ext: &str) -> String {
    let safe: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "backup_{backup_type}_v{safe}_{}.{ext}",
        at.format("%Y-%m-%d_%H-%M-%S")
    )
}

/// Creates the storage folder (`0700`) when missing, and warns once when an existing one is
/// readable by every local user (its mode is never changed: the tool did not make it).
pub fn prepare(dir: &Path) -> Result<()> {
    if !dir.exists() {
        crate::private::create_dir_all(dir)
            .with_context(|| format!("creating storage folder {}", dir.display()))?;
    }
    if let Some(w) = world_readable_warning(dir) {
        crate::output::warn(w);
    }
    Ok(())
}

/// The warning for a storage folder that every local user can read, if it is one.
pub fn world_readable_warning(dir: &Path) -> Option<String> {
    crate::private::world_readable(dir).then(|| {
        format!(
            "storage folder {} is readable by every local user, and backups hold your data: run `chmod 700 {}` (or 750 to share with a group)",
            dir.display(),
            dir.display()
        )
    })
}

/// The temporary name an archive is written under in `dir` (hidden, marked as partial).
pub fn partial_path(dir: &Path, project: &str, final_name: &str) -> PathBuf {
    dir.join(format!(
        "{PARTIAL_PREFIX}{project}-{}-{final_name}",
        std::process::id()
    ))
}

/// Removes partial archives of `project` left by runs that were killed. Only call while
/// holding the project's lock (then no live run of this project owns one).
pub fn remove_stale_partials(dir: &Path, project: &str) -> Vec<PathBuf> {
    let prefix = format!("{PARTIAL_PREFIX}{project}-");
    // Also `migrate-<pid>-…`, the name earlier versions gave migrate-storage's copies.
    let legacy = format!("{PARTIAL_PREFIX}migrate-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix).or_else(|| n.strip_prefix(&legacy)))
        else {
            continue;
        };
        // `<pid>-backup_…`: the project name may itself contain dashes, so require the pid
        // shape. A live process's partial is not stale (a rollback downloading its archive
        // before it takes the lock).
        let owned = rest
            .split_once('-')
            .is_some_and(|(pid, tail)| tail.starts_with("backup_") && process_gone(pid));
        if owned && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Whether `pid` is a process id (digits, as in the names we give partial files and helpers)
/// that no live process has: none by that number, or only its zombie (killed, not yet
/// reaped by its new parent). Anything else is not a pid: `false`.
pub fn process_gone(pid: &str) -> bool {
    if pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")) else {
        return true;
    };
    // `pid (comm) S …`: the state follows the last parenthesis (comm may hold any).
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X'))
}

/// Gives `partial` its final name in `dir` without ever replacing a file: when the name is
/// taken (a second backup in the same second), `_2`, `_3`, … is added before the extension.
/// Fails only on I/O errors.
pub fn publish(partial: &Path, dir: &Path, name: &str, ext: &str) -> Result<PathBuf> {
    let stem = name.strip_suffix(&format!(".{ext}")).unwrap_or(name);
    for n in 1..10_000 {
        let candidate = if n == 1 {
            dir.join(name)
        } else {
            dir.join(format!("{stem}_{n}.{ext}"))
        };
        match std::fs::hard_link(partial, &candidate) {
            Ok(()) => {
                std::fs::remove_file(partial)
                    .with_context(|| format!("removing {}", partial.display()))?;
                sync_dir(dir)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(_) => {
                // A filesystem without hard links: rename, after checking the name is free.
                if candidate.exists() {
                    continue;
                }
                std::fs::rename(partial, &candidate).with_context(|| {
                    format!("renaming {} to {}", partial.display(), candidate.display())
                })?;
                sync_dir(dir)?;
                return Ok(candidate);
            }
        }
    }
    anyhow::bail!("no free archive name for {name} in {}", dir.display())
}

/// fsync a folder so that a rename in it survives a crash.
/// Removes an archive and its sidecar (either already gone is fine).
pub fn remove_archive(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Ok(()); // a remote copy never downloaded
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => {}
    }
    crate::sidecar::remove(path)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Bytes available to this user in the filesystem holding `dir`.
/// A filesystem, named by its folder nearest to the one asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// The folder asked about, or its nearest existing ancestor.
    pub folder: PathBuf,
    pub device: u64,
    pub free_bytes: u64,
}

/// The filesystem a folder is (or would be, once made) on: its nearest existing ancestor's.
pub fn filesystem_of(folder: &Path) -> Option<Filesystem> {
    use std::os::unix::fs::MetadataExt;
    let existing = folder.ancestors().find(|a| a.is_dir())?;
    Some(Filesystem {
        device: std::fs::metadata(existing).ok()?.dev(),
        free_bytes: free_bytes(existing).ok()?,
        folder: existing.to_path_buf(),
    })
}

/// The bytes a mount point could hold once emptied: what is free plus what is used there.
pub fn room_once_emptied(mount: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(mount)
        .map_err(std::io::Error::from)
        .with_context(|| format!("reading the size of {}", mount.display()))?;
    Ok((st.f_bavail + st.f_blocks.saturating_sub(st.f_bfree)) * st.f_frsize)
}

pub fn free_bytes(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir)
        .map_err(std::io::Error::from)
        .with_context(|| format!("reading free space of {}", dir.display()))?;
    Ok(st.f_bavail * st.f_frsize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_follow_the_pattern_and_are_safe() {
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap();
        assert_eq!(
            archive_name("manual", "1.2.3", at, "tar.gz"),
            "backup_manual_v1.2.3_2026-11-26_10-00-00.tar.gz"
        );
        assert_eq!(
            archive_name("pre-upgrade", "a/b c", at, "tar.zst"),
            "backup_pre-upgrade_va-b-c_2026-11-26_10-00-00.tar.zst"
        );
    }

    #[test]
    fn publishing_never_replaces_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut finals = Vec::new();
        for i in 0..3 {
            let p = partial_path(dir.path(), "proj", "b.tar.gz");
            std::fs::write(&p, format!("{i}")).unwrap();
            finals.push(publish(&p, dir.path(), "b.tar.gz", "tar.gz").unwrap());
            assert!(!p.exists());
        }
        let names: Vec<String> = finals
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["b.tar.gz", "b_2.tar.gz", "b_3.tar.gz"]);
        assert_eq!(std::fs::read_to_string(&finals[0]).unwrap(), "0");
    }

    #[test]
    fn stale_partials_of_the_project_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above any pid_max (2^22): that process is dead.
        let dead = |project: &str| {
            dir.path()
                .join(format!("{PARTIAL_PREFIX}{project}-4194999-backup_b.tar.gz"))
        };
        let (stale, other) = (dead("proj"), dead("proj-1"));
        let live = partial_path(dir.path(), "proj", "backup_b.tar.gz");
        let archive = dir.path().join("backup_manual_v1_x.tar.gz");
        for p in [&stale, &other, &live, &archive] {
            std::fs::write(p, "x").unwrap();
        }
        assert_eq!(
            remove_stale_partials(dir.path(), "proj"),
            vec![stale.clone()]
        );
        assert!(other.exists() && archive.exists() && live.exists() && !stale.exists());
    }

    #[test]
    fn a_killed_process_not_yet_reaped_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        assert!(!process_gone(&pid), "a running process");
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        // Not reaped yet: /proc still has it, as a zombie.
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") Z")
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(process_gone(&pid), "a zombie");
        child.wait().unwrap();
        assert!(process_gone(&pid), "reaped");
        assert!(process_gone("4194999"), "never there");
        assert!(!process_gone("") && !process_gone("12a"), "not a pid");
    }

    #[test]
    fn free_space_is_read() {
        assert!(free_bytes(Path::new("/")).unwrap() > 0);
        assert!(free_bytes(Path::new("/no/such/dir")).is_err());
    }
}
