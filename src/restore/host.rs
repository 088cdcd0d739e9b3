//! Bind mounts: extract a volume into a staging path beside its target, then swap the two
//! atomically (`renameat2(RENAME_EXCHANGE)`); the old content is removed only at the end.
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::archive::writer::Attrs;
use crate::hostfs::beneath::{set_fd_attrs, Beneath};

/// Marks staging paths; a rollback that was killed leaves them beside the target.
pub const STAGING_MARK: &str = ".nuwax-restore-";

/// Removes staging paths in `dir` left by a rollback that was killed (call while holding
/// the project's lock: then none of them is live).
pub fn clean_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mine = format!("{STAGING_MARK}{}-", std::process::id());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(STAGING_MARK) || name.starts_with(&mine) {
            continue;
        }
        match remove_any(&e.path()) {
            Ok(()) => crate::output::note(format!(
                "removed {} left by an interrupted rollback",
                e.path().display()
            )),
            Err(err) => crate::output::warn(format!(
                "could not remove {} left by an interrupted rollback ({err:#}); remove it as root: sudo rm -rf '{}'",
                e.path().display(),
                e.path().display()
            )),
        }
    }
}

/// One target (a bind, or a named volume's folder) being restored.
#[derive(Debug)]
pub struct Staged {
    pub target: PathBuf,
    /// Holds the archived content before the swap, the previous content after it.
    pub staging: PathBuf,
    /// The target existed before the swap (so the swap was an exchange).
    pub existed: bool,
    pub swapped: bool,
    /// Set when the target is a mount point: staged inside it, moved in step by step.
    pub in_mount: Option<super::mount::InMount>,
    /// Set when the engine wrote the staging (files of other users): it removes it too,
    /// in a container of this image.
    pub by_engine: Option<(crate::docker::Docker, String)>,
}

impl Staged {
    pub fn new(target: &Path) -> Result<Staged> {
        if super::mount::is_mount_point(target) {
            let m = super::mount::InMount::new(target)?;
            return Ok(Staged {
                target: target.to_path_buf(),
                staging: m.write_root(),
                existed: true,
                swapped: false,
                in_mount: Some(m),
                by_engine: None,
            });
        }
        let parent = target
            .parent()
            .context("a bind target has no parent folder")?;
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!("{STAGING_MARK}{}-{name}", std::process::id()));
        remove_any(&staging)?;
        Ok(Staged {
            target: target.to_path_buf(),
            staging,
            existed: false,
            swapped: false,
            in_mount: None,
            by_engine: None,
        })
    }

    /// Puts the staged content in place in one step.
    pub fn swap(&mut self) -> Result<()> {
        if let Some(m) = self.in_mount.as_mut() {
            return m.swap();
        }
        self.existed = fs::symlink_metadata(&self.target).is_ok();
        if self.existed {
            exchange(&self.staging, &self.target)?;
        } else {
            fs::rename(&self.staging, &self.target).with_context(|| {
                format!(
                    "moving {} to {}",
                    self.staging.display(),
                    self.target.display()
                )
            })?;
        }
        self.swapped = true;
        Ok(())
    }

    /// Puts the previous content back (after a later step failed) and drops the staged copy.
    pub fn undo(&mut self) -> Result<()> {
        if let Some(m) = self.in_mount.as_mut() {
            return m.undo();
        }
        if self.swapped {
            if self.existed {
                exchange(&self.staging, &self.target)?;
            } else {
                fs::rename(&self.target, &self.staging)?;
            }
            self.swapped = false;
        }
        self.remove_staging()
    }

    /// Drops the previous content (after the whole rollback succeeded).
    pub fn commit(&self) -> Result<()> {
        if let Some(m) = &self.in_mount {
            return m.commit();
        }
        self.remove_staging()
    }

    fn remove_staging(&self) -> Result<()> {
        match &self.by_engine {
            Some((docker, image)) if fs::symlink_metadata(&self.staging).is_ok() => {
                super::engine::remove_tree(docker, &self.staging, image)
            }
            _ => remove_any(&self.staging),
        }
    }
}

pub(crate) fn exchange(a: &Path, b: &Path) -> Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    if let Err(e) = renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        return Err(io::Error::from(e)).with_context(|| {
            format!(
                "swapping {} and {} (both must be on one filesystem that supports RENAME_EXCHANGE)",
                a.display(),
                b.display()
            )
        });
    }
    Ok(())
}

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

/// Writes entries below `root` with exact owners, modes and mtimes, every one through
/// [`Beneath`] (the kernel keeps it inside `root`). Folder attributes are applied last
/// (deepest first), so that writing into a folder does not change them.
pub struct HostWriter {
    fs: Beneath,
    dirs: Vec<(Vec<u8>, Attrs)>,
}

impl HostWriter {
    pub fn new(root: &Path) -> Result<HostWriter> {
        Ok(HostWriter {
            fs: Beneath::new(root)?,
            dirs: Vec::new(),
        })
    }

    pub fn dir(&mut self, rel: &[u8], a: &Attrs) -> Result<()> {
        self.fs.mkdir(rel)?;
        self.dirs.push((rel.to_vec(), *a));
        Ok(())
    }

    pub fn file(&mut self, rel: &[u8], a: &Attrs, data: &mut dyn Read) -> Result<()> {
        let mut f = self.fs.create(rel)?;
        let ctx = || format!("writing {}", self.fs.shown(rel));
        io::copy(data, &mut f).with_context(ctx)?;
        set_fd_attrs(&f, a).with_context(ctx)
    }

    pub fn symlink(&mut self, rel: &[u8], a: &Attrs, target: &[u8]) -> Result<()> {
        self.fs.symlink(rel, target)?;
        self.fs.link_attrs(rel, a)
    }

    /// A hard link to `target_rel`, written before below the same root.
    pub fn hardlink(&mut self, rel: &[u8], target_rel: &[u8]) -> Result<()> {
        self.fs.hardlink(rel, target_rel)
    }

    /// Applies folder attributes and syncs what was written to disk.
    pub fn finish(mut self) -> Result<()> {
        self.dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (rel, a) in &self.dirs {
            let fd = self.fs.open_dir(rel);
            let ctx = || format!("setting owner, mode and time of {}", self.fs.shown(rel));
            set_fd_attrs(&fd.with_context(ctx)?, a).with_context(ctx)?;
        }
        self.fs.syncfs()
    }
}

/// Flushes the filesystem holding `p` (one call for every file written, instead of an fsync
/// per file): the staged content is on disk before it is swapped in.
pub(super) fn syncfs(p: &Path) -> Result<()> {
    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    rustix::fs::syncfs(&f)
        .map_err(io::Error::from)
        .with_context(|| format!("syncing {}", p.display()))
}

/// Owner, then mode (a chown clears set-id bits), then mtime; symlinks keep their own mode.
pub(crate) fn set_attrs(p: &Path, a: &Attrs, is_link: bool) -> Result<()> {
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

pub(crate) use crate::hostfs::beneath::times_of;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn staged_content_swaps_in_and_undo_puts_the_old_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("old"), "old").unwrap();
        let mut s = Staged::new(&target).unwrap();
        let mut w = HostWriter::new(&s.staging).unwrap();
        let a = Attrs {
            mode: 0o750,
            uid: 999,
            gid: 998,
            mtime: 1_600_000_000,
        };
        w.dir(b"", &a).unwrap();
        w.file(b"new", &Attrs { mode: 0o600, ..a }, &mut &b"new"[..])
            .unwrap();
        w.symlink(b"link", &a, b"new").unwrap();
        w.hardlink(b"hard", b"new").unwrap();
        w.finish().unwrap();
        s.swap().unwrap();
        assert!(target.join("new").exists() && !target.join("old").exists());
        let m = fs::metadata(&target).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
            (999, 998, 0o750, 1_600_000_000)
        );
        assert_eq!(fs::metadata(target.join("hard")).unwrap().nlink(), 2);
        assert_eq!(
            fs::symlink_metadata(target.join("link")).unwrap().mtime(),
            1_600_000_000
        );
        s.undo().unwrap();
        assert!(target.join("old").exists() && !target.join("new").exists());
        assert!(!s.staging.exists());
    }

    #[test]
    fn a_missing_target_is_created_and_commit_removes_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("gone/app.conf");
        let mut s = Staged::new(&target).unwrap();
        let mut w = HostWriter::new(&s.staging).unwrap();
        w.file(
            b"",
            &Attrs {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 1,
            },
            &mut &b"x=1"[..],
        )
        .unwrap();
        w.finish().unwrap();
        s.swap().unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "x=1");
        s.commit().unwrap();
        assert_eq!(fs::read_dir(dir.path().join("gone")).unwrap().count(), 1);
    }
}
