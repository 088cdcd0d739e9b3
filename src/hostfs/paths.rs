//! Path-level primitives both pipelines use: removal, owner/mode/time by path, a filesystem
//! flush, and whether a folder is a mount point.
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::beneath::times_of;
use crate::archive::writer::Attrs;

/// Removes a file, a symlink or a whole folder; nothing when `p` does not exist.
pub fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
        }
        Ok(_) => fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
    }
}

/// Flushes the filesystem holding `p` (one call for every file written, instead of an fsync
/// per file): the staged content is on disk before it is swapped in.
pub fn syncfs(p: &Path) -> Result<()> {
    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    rustix::fs::syncfs(&f)
        .map_err(io::Error::from)
        .with_context(|| format!("syncing {}", p.display()))
}

/// Owner, then mode (a chown clears set-id bits), then mtime; symlinks keep their own mode.
pub fn set_attrs(p: &Path, a: &Attrs, is_link: bool) -> Result<()> {
    let ctx = || format!("setting owner, mode and time of {}", p.display());
    std::os::unix::fs::lchown(p, Some(a.uid as u32), Some(a.gid as u32)).with_context(ctx)?;
    if !is_link {
        fs::set_permissions(p, fs::Permissions::from_mode(a.mode & 0o7777)).with_context(ctx)?;
    }
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &times_of(a.mtime),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
    .with_context(ctx)
}

/// Whether `p` is a folder with a filesystem mounted on it (another device than its parent, or
/// listed as a mount point, which also catches bind mounts of the same device).
pub fn is_mount_point(p: &Path) -> bool {
    let (Ok(m), Some(parent)) = (fs::symlink_metadata(p), p.parent()) else {
        return false;
    };
    if !m.is_dir() {
        return false;
    }
    if fs::metadata(parent).is_ok_and(|pm| pm.dev() != m.dev()) {
        return true;
    }
    let Ok(canon) = p.canonicalize() else {
        return false;
    };
    mount_points().iter().any(|mp| mp == &canon)
}

/// Mount points of this process's namespace (`/proc/self/mountinfo`, field 5, octal escapes).
fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|f| PathBuf::from(std::ffi::OsString::from_vec(unescape(f))))
        .collect()
}

fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        let oct = f
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (f[i], oct) {
            (b'\\', Some(o)) => {
                out.push(o.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(b"/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape(b"/plain"), b"/plain");
    }
}
