//! Folders the tool makes beside and inside its targets, and the one rule for acting on them
//! later: a folder is the tool's only when its run record names it, it is reached without
//! following a link, it is owned by this user with mode 0700, and its device and inode are the
//! recorded ones. Anything else that merely looks like the tool's (a container can plant a
//! `.nuwax-restore-*` folder in its own bind) is never acted on. Names carry the project and
//! the pid of the run that made them: `.nuwax-restore-<project>-<pid>`.
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::archive::names::is_component;

/// Marks the folders a rollback stages in.
pub const STAGING_MARK: &str = ".nuwax-restore-";

/// A folder the tool made, as its run record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// `.nuwax-restore-<project>-<pid>`.
pub fn staging_name(project: &str, pid: u32) -> String {
    format!("{STAGING_MARK}{project}-{pid}")
}

/// The project and pid a staging folder's name carries (compose project names have no `.`,
/// and the pid is the digits after the last `-`). `None` for any other name.
pub fn parse_staging_name(name: &[u8]) -> Option<(String, u32)> {
    let rest = std::str::from_utf8(name.strip_prefix(STAGING_MARK.as_bytes())?).ok()?;
    let (project, pid) = rest.rsplit_once('-')?;
    if project.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((project.to_string(), pid.parse().ok()?))
}

const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);
const DIR_NOFOLLOW: OFlags = DIR.union(OFlags::NOFOLLOW);

/// Opens folder `p` by path (a declared target, or the folder holding one).
pub fn open_dir(p: &Path) -> Result<OwnedFd> {
    rustix::fs::open(p, DIR, Mode::empty())
        .map_err(io::Error::from)
        .with_context(|| format!("opening {}", p.display()))
}

/// Opens `name` in `dir` as a folder, never through a link.
pub fn open_child(dir: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    if !is_component(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain name",
        ));
    }
    Ok(rustix::fs::openat(dir, name, DIR_NOFOLLOW, Mode::empty())?)
}

/// Makes (or, when this process made it already, opens) the private folder `name` in
/// `parent`: mode 0700, owned by this user. Returns it with what the run record keeps.
pub fn make_dir(parent: &Path, name: &str) -> Result<(OwnedFd, Made)> {
    let pfd = open_dir(parent)?;
    let path = parent.join(name);
    match rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => {
            return Err(io::Error::from(e)).with_context(|| format!("creating {}", path.display()))
        }
    }
    let fd =
        open_child(&pfd, name.as_bytes()).with_context(|| format!("opening {}", path.display()))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
        .map_err(io::Error::from)
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    drop_default_acl(&fd)
        .with_context(|| format!("clearing the default ACL of {}", path.display()))?;
    let st = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    check_mine(&st, &path)?;
    let made = Made {
        path,
        dev: st.st_dev,
        ino: st.st_ino,
    };
    Ok((fd, made))
}

/// Removes the default ACL a folder made here inherited from its parent, so that what is
/// written below it does not inherit entries the archive does not hold.
fn drop_default_acl(fd: &OwnedFd) -> io::Result<()> {
    use rustix::io::Errno;
    match rustix::fs::fremovexattr(fd, "system.posix_acl_default") {
        Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Opens a folder the run record names, when it is still the one the tool made: reached
/// without a link, owned by this user, mode 0700, with the recorded device and inode.
pub fn open_made(m: &Made) -> Result<OwnedFd> {
    let (parent, name) = split(&m.path)?;
    let fd = open_child(&open_dir(parent)?, name)
        .with_context(|| format!("opening {} (not a folder, or a link)", m.path.display()))?;
    let st = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    check_mine(&st, &m.path)?;
    if (st.st_dev, st.st_ino) != (m.dev, m.ino) {
        bail!(
            "{} is not the folder this tool made (another device or inode than its run record says): left alone",
            m.path.display()
        );
    }
    Ok(fd)
}

/// Whether `st` is what the tool makes: this user's, mode 0700.
fn is_mine(st: &rustix::fs::Stat) -> bool {
    st.st_uid == rustix::process::geteuid().as_raw() && st.st_mode & 0o7777 == 0o700
}

/// Whether `p` is a folder (not a link) the tool could have made: this user's, mode 0700.
pub fn is_private_dir(p: &Path) -> bool {
    rustix::fs::lstat(p).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
            && is_mine(&st)
    })
}

fn check_mine(st: &rustix::fs::Stat, path: &Path) -> Result<()> {
    if !is_mine(st) {
        bail!(
            "{} is not a private folder of this user (owner {}, mode {:o}): left alone",
            path.display(),
            st.st_uid,
            st.st_mode & 0o7777
        );
    }
    Ok(())
}

/// Removes `name` in `dir` and, when it is a folder, everything below it, never following a
/// link (a link is removed, not its target). Missing is fine.
pub fn remove_at(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    use rustix::io::Errno;
    if !is_component(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain name",
        ));
    }
    match rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    empty_dir(&open_child(dir, name)?)?;
    match rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes everything in the folder open as `dir` (which stays), never following a link.
pub fn empty_dir(dir: &OwnedFd) -> io::Result<()> {
    let names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    for n in names {
        remove_at(dir, &n)?;
    }
    Ok(())
}

/// `p`'s parent folder and last name (which must be a plain name).
pub fn split(p: &Path) -> Result<(&Path, &[u8])> {
    let parent = p
        .parent()
        .with_context(|| format!("{} has no parent folder", p.display()))?;
    let name = p.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    if !is_component(name) {
        bail!("{} does not end in a plain name", p.display());
    }
    Ok((parent, name))
}

/// Refuses a record, or a folder holding records, that someone else could have written: it
/// must not be a link, must be owned by this user, and not writable by group or others.
pub fn check_private(p: &Path) -> Result<()> {
    let st = match rustix::fs::lstat(p) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(io::Error::from(e)).with_context(|| format!("reading {}", p.display()))
        }
    };
    let me = rustix::process::geteuid().as_raw();
    let why = if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
        "is a symlink".to_string()
    } else if st.st_uid != me {
        format!("is owned by uid {}, not {me}", st.st_uid)
    } else if st.st_mode & 0o022 != 0 {
        format!(
            "is writable by group or others (mode {:o})",
            st.st_mode & 0o7777
        )
    } else {
        return Ok(());
    };
    bail!(
        "{} {why}, so its run records are not trusted: make it yours and private (chown {me} '{}'; chmod go-w '{}'), or point NUWAX_BACKUP_CATALOG at a private folder",
        p.display(),
        p.display(),
        p.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn names_carry_project_and_pid() {
        assert_eq!(staging_name("my-app_1", 42), ".nuwax-restore-my-app_1-42");
        assert_eq!(
            parse_staging_name(b".nuwax-restore-my-app_1-42"),
            Some(("my-app_1".into(), 42))
        );
        for bad in [
            &b".nuwax-restore-42"[..],
            b".nuwax-restore-p-",
            b".nuwax-restore-p-4x",
            b"other-1",
        ] {
            assert_eq!(parse_staging_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_made_folder_is_opened_again_only_as_made() {
        let d = tempfile::tempdir().unwrap();
        let (_, made) = make_dir(d.path(), ".nuwax-restore-p-1").unwrap();
        assert_eq!(
            fs::metadata(&made.path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        open_made(&made).unwrap();
        // The same name made again (another inode: the old folder still holds its own), a
        // link in its place, a wider mode.
        fs::rename(&made.path, d.path().join("moved")).unwrap();
        fs::create_dir(&made.path).unwrap();
        fs::set_permissions(&made.path, fs::Permissions::from_mode(0o700)).unwrap();
        let e = open_made(&made).unwrap_err().to_string();
        assert!(e.contains("another device or inode"), "{e}");
        fs::remove_dir(&made.path).unwrap();
        std::os::unix::fs::symlink(d.path(), &made.path).unwrap();
        assert!(open_made(&made).is_err());
        fs::remove_file(&made.path).unwrap();
        fs::create_dir(&made.path).unwrap();
        fs::set_permissions(&made.path, fs::Permissions::from_mode(0o755)).unwrap();
        let e = format!("{:#}", open_made(&made).unwrap_err());
        assert!(e.contains("not a private folder"), "{e}");
    }

    #[test]
    fn removal_below_a_descriptor_never_follows_links() {
        let d = tempfile::tempdir().unwrap();
        let keep = d.path().join("keep");
        fs::create_dir_all(keep.join("deep")).unwrap();
        fs::write(keep.join("deep/f"), "f").unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/x"), "x").unwrap();
        std::os::unix::fs::symlink(&keep, t.join("a/ln")).unwrap();
        std::os::unix::fs::symlink(&keep, t.join("top")).unwrap();
        let fd = open_dir(d.path()).unwrap();
        remove_at(&fd, b"t").unwrap();
        assert!(!t.exists());
        assert_eq!(fs::read(keep.join("deep/f")).unwrap(), b"f");
        remove_at(&fd, b"t").unwrap();
        assert!(remove_at(&fd, b"..").is_err());
    }

    #[test]
    fn records_must_be_private() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.json");
        fs::write(&f, "{}").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        check_private(&f).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_private(&f).unwrap_err().to_string();
        assert!(e.contains("writable by group or others (mode 666)"), "{e}");
        let l = d.path().join("l.json");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert!(check_private(&l)
            .unwrap_err()
            .to_string()
            .contains("is a symlink"));
        check_private(&d.path().join("missing")).unwrap();
    }
}
