//! Bind mounts: extract a volume into a staging path beside its target, then swap the two
//! atomically (`renameat2(RENAME_EXCHANGE)`); the old content is removed only at the end.
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::RenameFlags;

use crate::archive::writer::Attrs;
use crate::archive::xattrs::{self, On, Xattrs};
use crate::hostfs::beneath::{set_fd_attrs, Beneath};
use crate::hostfs::owned;
use crate::runs::ActiveRun;

/// Removes the staging folders beside or inside `dir` that a killed rollback of `project`
/// left: only `.nuwax-restore-<project>-<pid>` of a dead pid that is still a private folder
/// of this user (mode 0700). Others (another project's, a live run's, or anything that only
/// looks like one) are left alone; `status` names them.
pub fn clean_stale(dir: &Path, project: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((p, pid)) = owned::parse_staging_name(name.as_bytes()) else {
            continue;
        };
        if p != project || pid == me || !crate::storage::process_gone(&pid.to_string()) {
            continue;
        }
        if !owned::is_private_dir(&e.path()) {
            continue;
        }
        let removed =
            owned::open_dir(dir).and_then(|fd| Ok(owned::remove_at(&fd, name.as_bytes())?));
        match removed {
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
    /// Holds the archived content before the swap, the previous content after it:
    /// `<folder of target>/.nuwax-restore-<project>-<pid>/<name of target>`.
    pub staging: PathBuf,
    /// The private folder holding `staging` (recorded in the run record), and the folder
    /// holding the target: the swap is made between these two descriptors.
    fds: Option<(OwnedFd, OwnedFd)>,
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
    /// Makes the staging of `target` for a rollback of `project`, recording the folders it
    /// makes in `run` (when there is one) before anything is written into them.
    pub fn new(target: &Path, project: &str, run: Option<&mut ActiveRun>) -> Result<Staged> {
        if crate::hostfs::paths::is_mount_point(target) {
            let run = run.context("a mount point is restored only with a run record")?;
            let m = super::mount::InMount::new(target, project, run)?;
            return Ok(Staged {
                target: target.to_path_buf(),
                staging: m.write_root(),
                fds: None,
                existed: true,
                swapped: false,
                in_mount: Some(m),
                by_engine: None,
            });
        }
        let (parent, name) = owned::split(target)?;
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let (wrapper, made) =
            owned::make_dir(parent, &owned::staging_name(project, std::process::id()))?;
        if let Some(run) = run {
            run.made(&made)?;
        }
        owned::remove_at(&wrapper, name)?;
        Ok(Staged {
            target: target.to_path_buf(),
            staging: made.path.join(std::ffi::OsStr::from_bytes(name)),
            fds: Some((wrapper, owned::open_dir(parent)?)),
            existed: false,
            swapped: false,
            in_mount: None,
            by_engine: None,
        })
    }

    /// The writer of the archived tree into the staging.
    pub fn writer(&self) -> Result<HostWriter> {
        match (&self.in_mount, &self.fds) {
            (Some(m), _) => m.writer(),
            (None, Some((wrapper, _))) => {
                let (holder, name) = owned::split(&self.staging)?;
                HostWriter::in_dir(wrapper.try_clone()?, holder, &String::from_utf8_lossy(name))
            }
            (None, None) => anyhow::bail!("no staging folder for {}", self.target.display()),
        }
    }

    /// Puts the staged content in place in one step.
    pub fn swap(&mut self, run: Option<&mut ActiveRun>) -> Result<()> {
        if let Some(m) = self.in_mount.as_mut() {
            return m.swap(run);
        }
        self.existed = fs::symlink_metadata(&self.target).is_ok();
        self.move_staging(self.existed)?;
        self.swapped = true;
        Ok(())
    }

    /// Exchanges the staging and the target (`exchange`), or moves the staging to the target.
    fn move_staging(&self, exchange: bool) -> Result<()> {
        let (wrapper, parent) = self.fds.as_ref().context("no staging folder")?;
        let name = owned::split(&self.target)?.1;
        let flags = if exchange {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(wrapper, name, parent, name, flags)
            .map_err(io::Error::from)
            .with_context(|| {
                format!(
                    "swapping {} and {} (both must be on one filesystem that supports RENAME_EXCHANGE)",
                    self.staging.display(),
                    self.target.display()
                )
            })
    }

    /// Puts the previous content back (after a later step failed) and drops the staged copy.
    pub fn undo(&mut self) -> Result<()> {
        if let Some(m) = self.in_mount.as_mut() {
            return m.undo();
        }
        if self.swapped {
            if self.existed {
                self.move_staging(true)?;
            } else {
                let (wrapper, parent) = self.fds.as_ref().context("no staging folder")?;
                let name = owned::split(&self.target)?.1;
                rustix::fs::renameat(parent, name, wrapper, name).map_err(io::Error::from)?;
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
        if let Some((docker, image)) = &self.by_engine {
            if fs::symlink_metadata(&self.staging).is_ok() {
                crate::volumes::remove_tree(docker, &self.staging, image)?;
            }
        } else if let Some((wrapper, _)) = &self.fds {
            owned::remove_at(wrapper, owned::split(&self.staging)?.1)
                .with_context(|| format!("removing {}", self.staging.display()))?;
        }
        // The private folder goes with its last staging (others of this run may share it).
        if let Some(holder) = self.staging.parent() {
            let _ = fs::remove_dir(holder);
        }
        Ok(())
    }
}

/// A file's content as the archive holds it: plain, or (a sparse entry) with holes to make
/// where its blocks are zeros.
pub enum Body<'a> {
    Dense(&'a mut dyn Read),
    Sparse(&'a mut dyn Read),
}

/// Writes entries below `root` with exact owners, modes, mtimes and extended attributes,
/// every one through [`Beneath`] (the kernel keeps it inside `root`). Folder attributes are
/// applied last (deepest first), so that writing into a folder does not change them (and a
/// default ACL is not inherited by what the archive holds below it).
pub struct HostWriter {
    fs: Beneath,
    dirs: Vec<(Vec<u8>, Attrs, Xattrs)>,
}

impl HostWriter {
    pub fn new(root: &Path) -> Result<HostWriter> {
        Ok(HostWriter {
            fs: Beneath::new(root)?,
            dirs: Vec::new(),
        })
    }

    /// A writer of root `name` inside the folder open as `parent` (at `parent_path`).
    pub fn in_dir(parent: OwnedFd, parent_path: &Path, name: &str) -> Result<HostWriter> {
        Ok(HostWriter {
            fs: Beneath::in_dir(parent, parent_path, name)?,
            dirs: Vec::new(),
        })
    }

    pub fn dir(&mut self, rel: &[u8], (a, x): (&Attrs, &Xattrs)) -> Result<()> {
        self.fs.mkdir(rel)?;
        self.dirs.push((rel.to_vec(), *a, x.clone()));
        Ok(())
    }

    /// A file: its content, then owner, mode and time, then its attributes (after the owner
    /// change, which would clear a capability).
    pub fn file(&mut self, rel: &[u8], (a, x): (&Attrs, &Xattrs), body: Body<'_>) -> Result<()> {
        let mut f = self.fs.create(rel)?;
        let ctx = || format!("writing {}", self.fs.shown(rel));
        match body {
            Body::Dense(data) => io::copy(data, &mut f).map(|_| ()),
            Body::Sparse(data) => crate::archive::sparse::write_with_holes(data, &f).map(|_| ()),
        }
        .with_context(ctx)?;
        set_fd_attrs(&f, a).with_context(ctx)?;
        self.xattrs(rel, On::Fd(f.as_fd()), x)
    }

    pub fn symlink(&mut self, rel: &[u8], (a, x): (&Attrs, &Xattrs), target: &[u8]) -> Result<()> {
        self.fs.symlink(rel, target)?;
        self.fs.link_attrs(rel, a)?;
        if x.is_empty() {
            return Ok(());
        }
        let path = self.fs.link_path(rel)?;
        self.xattrs(rel, On::Link(&path), x)
    }

    /// Sets `x` on `rel`; what the filesystem refuses is a warning naming the file.
    fn xattrs(&self, rel: &[u8], on: On<'_>, x: &Xattrs) -> Result<()> {
        if x.is_empty() {
            return Ok(());
        }
        let refused = xattrs::apply(on, x)
            .with_context(|| format!("setting extended attributes of {}", self.fs.shown(rel)))?;
        for r in refused {
            crate::output::warn(format!(
                "{}: extended attribute {r} could not be set here: restored without it",
                self.fs.shown(rel)
            ));
        }
        Ok(())
    }

    /// A hard link to `target_rel`, written before below the same root.
    pub fn hardlink(&mut self, rel: &[u8], target_rel: &[u8]) -> Result<()> {
        self.fs.hardlink(rel, target_rel)
    }

    /// Applies folder attributes and syncs what was written to disk.
    pub fn finish(mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, ..)| std::cmp::Reverse(p.len()));
        for (rel, a, x) in &dirs {
            let fd = self.fs.open_dir(rel);
            let ctx = || format!("setting owner, mode and time of {}", self.fs.shown(rel));
            let fd = fd.with_context(ctx)?;
            set_fd_attrs(&fd, a).with_context(ctx)?;
            self.xattrs(rel, On::Fd(fd.as_fd()), x)?;
        }
        self.fs.syncfs()
    }
}

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
        let mut s = Staged::new(&target, "p", None).unwrap();
        let mut w = s.writer().unwrap();
        let a = Attrs {
            mode: 0o750,
            uid: 999,
            gid: 998,
            mtime: 1_600_000_000,
        };
        let none = Xattrs::new();
        w.dir(b"", (&a, &none)).unwrap();
        let rw = Attrs { mode: 0o600, ..a };
        w.file(b"new", (&rw, &none), Body::Dense(&mut &b"new"[..]))
            .unwrap();
        w.symlink(b"link", (&a, &none), b"new").unwrap();
        w.hardlink(b"hard", b"new").unwrap();
        w.finish().unwrap();
        s.swap(None).unwrap();
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
        let mut s = Staged::new(&target, "p", None).unwrap();
        let mut w = s.writer().unwrap();
        let a = Attrs {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
        };
        w.file(b"", (&a, &Xattrs::new()), Body::Dense(&mut &b"x=1"[..]))
            .unwrap();
        w.finish().unwrap();
        s.swap(None).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "x=1");
        s.commit().unwrap();
        assert_eq!(fs::read_dir(dir.path().join("gone")).unwrap().count(), 1);
    }
}
