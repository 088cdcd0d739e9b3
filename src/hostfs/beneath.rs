//! Writes below one root folder where the kernel, not a path check, keeps every write inside:
//! each name is resolved from a descriptor of the root's parent folder with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or, on kernels before 5.6, a walk of
//! `O_NOFOLLOW | O_DIRECTORY` components), so no symlink, `..` or odd spelling can lead out;
//! files are created `O_CREAT | O_EXCL | O_NOFOLLOW` and get their attributes on the open
//! descriptor; symlinks and hard links are made relative to their folder's descriptor.
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use crate::archive::names::is_component;
use crate::archive::writer::Attrs;

/// The root `base` inside the folder `dirs.parent`.
pub struct Beneath {
    root: PathBuf,
    base: Vec<u8>,
    dirs: Dirs,
}

/// The descriptor of the root's parent folder, and the last folder opened below it.
struct Dirs {
    parent: OwnedFd,
    parent_path: PathBuf,
    /// (path below `parent`, descriptor): entries come folder by folder, so one is enough.
    cache: Option<(Vec<u8>, OwnedFd)>,
    /// The kernel has no `openat2` (before 5.6): walk component by component.
    walk: bool,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

impl Beneath {
    /// The root `root` (which need not exist yet): its parent folder is opened now, by path
    /// (a declared target's own path, or one the tool made); nothing below it ever is.
    pub fn new(root: &Path) -> Result<Beneath> {
        let parent_path = root
            .parent()
            .context("a restore root has no parent folder")?;
        let base = root.file_name().context("a restore root has no name")?;
        let parent = super::owned::open_dir(parent_path)?;
        Ok(Beneath {
            root: root.to_path_buf(),
            base: base.as_bytes().to_vec(),
            dirs: Dirs::new(parent, parent_path),
        })
    }

    /// The root `name` inside the folder open as `parent` (found at `parent_path`).
    pub fn in_dir(parent: OwnedFd, parent_path: &Path, name: &str) -> Result<Beneath> {
        if !is_component(name.as_bytes()) {
            bail!("{name:?} is not a plain name");
        }
        Ok(Beneath {
            root: parent_path.join(name),
            base: name.as_bytes().to_vec(),
            dirs: Dirs::new(parent, parent_path),
        })
    }

    /// The root's path, and `rel` below it, for messages.
    pub fn shown(&self, rel: &[u8]) -> String {
        show(&self.root, rel)
    }

    /// `rel` below the root, as a path below `parent`.
    fn full(&self, rel: &[u8]) -> Vec<u8> {
        let mut p = self.base.clone();
        if !rel.is_empty() {
            p.push(b'/');
            p.extend_from_slice(rel);
        }
        p
    }

    /// Makes folder `rel` (mode 0700 until its attributes are set). The root may exist
    /// already as a real folder (a target emptied in place).
    pub fn mkdir(&mut self, rel: &[u8]) -> Result<()> {
        let shown = || format!("creating {}", show(&self.root, rel));
        let (dir, name) = self.dirs.at(self.full(rel)).with_context(shown)?;
        match rustix::fs::mkdirat(dir, name.as_slice(), Mode::from_raw_mode(0o700)) {
            Err(rustix::io::Errno::EXIST) if rel.is_empty() => {
                let full = self.full(rel);
                self.dirs
                    .open_dir_below(&full)
                    .map(drop)
                    .with_context(shown)
            }
            r => r.map_err(io::Error::from).with_context(shown),
        }
    }

    /// Creates file `rel`, which must not exist (not even as a symlink).
    pub fn create(&mut self, rel: &[u8]) -> Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let shown = || format!("creating {}", show(&self.root, rel));
        let (dir, name) = self.dirs.at(self.full(rel)).with_context(shown)?;
        let fd = rustix::fs::openat(dir, name.as_slice(), flags, Mode::from_raw_mode(0o600))
            .map_err(io::Error::from)
            .with_context(shown)?;
        Ok(File::from(fd))
    }

    /// Makes symlink `rel` pointing at `target` (stored as is; never followed here).
    pub fn symlink(&mut self, rel: &[u8], target: &[u8]) -> Result<()> {
        let shown = || format!("creating link {}", show(&self.root, rel));
        let (dir, name) = self.dirs.at(self.full(rel)).with_context(shown)?;
        rustix::fs::symlinkat(target, dir, name.as_slice())
            .map_err(io::Error::from)
            .with_context(shown)
    }

    /// Makes `rel` a hard link to `target_rel`, a file written earlier below the same root.
    pub fn hardlink(&mut self, rel: &[u8], target_rel: &[u8]) -> Result<()> {
        let shown = || format!("creating hard link {}", show(&self.root, rel));
        let full = self.full(target_rel);
        let (tdir, tname) = match full.iter().rposition(|b| *b == b'/') {
            Some(i) => (full[..i].to_vec(), full[i + 1..].to_vec()),
            None => bail!("{}: a hard link to the root", shown()),
        };
        let tfd = self.dirs.open_dir_below(&tdir).with_context(shown)?;
        if !is_component(&tname) {
            bail!("{}: not a plain name", shown());
        }
        let (dir, name) = self.dirs.at(self.full(rel)).with_context(shown)?;
        rustix::fs::linkat(
            &tfd,
            tname.as_slice(),
            dir,
            name.as_slice(),
            AtFlags::empty(),
        )
        .map_err(io::Error::from)
        .with_context(shown)
    }

    /// Opens folder `rel` (the root when empty) without following any link.
    pub fn open_dir(&mut self, rel: &[u8]) -> io::Result<OwnedFd> {
        let full = self.full(rel);
        self.dirs.open_dir_below(&full)
    }

    /// Owner and time of symlink `rel` (its own, not its target's).
    pub fn link_attrs(&mut self, rel: &[u8], a: &Attrs) -> Result<()> {
        let shown = || format!("setting owner and time of {}", show(&self.root, rel));
        let (dir, name) = self.dirs.at(self.full(rel)).with_context(shown)?;
        let (uid, gid) = ids(a);
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        rustix::fs::chownat(dir, name.as_slice(), Some(uid), Some(gid), nofollow)
            .and_then(|()| {
                rustix::fs::utimensat(dir, name.as_slice(), &times_of(a.mtime), nofollow)
            })
            .map_err(io::Error::from)
            .with_context(shown)
    }

    /// A path naming `rel` through its folder's open descriptor (for the calls that take only
    /// a path: a symlink's own attributes); its folders are opened as every other write's.
    pub fn link_path(&mut self, rel: &[u8]) -> Result<std::path::PathBuf> {
        use std::os::fd::AsRawFd;
        let shown = || format!("opening the folder of {}", show(&self.root, rel));
        let (dir, name) = self.dirs.at(self.full(rel)).with_context(shown)?;
        let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        p.push(OsStr::from_bytes(&name));
        Ok(p)
    }

    /// Flushes the filesystem the root is on.
    pub fn syncfs(&self) -> Result<()> {
        rustix::fs::syncfs(&self.dirs.parent)
            .map_err(io::Error::from)
            .with_context(|| format!("syncing {}", self.dirs.parent_path.display()))
    }
}

fn show(root: &Path, rel: &[u8]) -> String {
    if rel.is_empty() {
        return root.display().to_string();
    }
    root.join(OsStr::from_bytes(rel)).display().to_string()
}

impl Dirs {
    fn new(parent: OwnedFd, parent_path: &Path) -> Dirs {
        Dirs {
            parent,
            parent_path: parent_path.to_path_buf(),
            cache: None,
            // Tests of kernels before 5.6: the component walk instead of openat2.
            walk: crate::fault::no_openat2(),
        }
    }

    /// Opens folder `p` (below `parent`; empty: `parent` itself) without following any link.
    fn open_dir_below(&self, p: &[u8]) -> io::Result<OwnedFd> {
        if p.is_empty() {
            return rustix::fs::openat(&self.parent, ".", DIR_FLAGS, Mode::empty())
                .map_err(Into::into);
        }
        if !p.split(|b| *b == b'/').all(is_component) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain relative name",
            ));
        }
        if !self.walk {
            match rustix::fs::openat2(&self.parent, p, DIR_FLAGS, Mode::empty(), resolve()) {
                Err(rustix::io::Errno::NOSYS) => {}
                other => return other.map_err(Into::into),
            }
        }
        let mut cur = rustix::fs::openat(&self.parent, ".", DIR_FLAGS, Mode::empty())?;
        for c in p.split(|b| *b == b'/') {
            cur = super::owned::open_child(&cur, c)?;
        }
        Ok(cur)
    }

    /// The folder holding `rel` and `rel`'s last name. Fails when a folder on the way is
    /// missing, not a folder, or a symlink.
    fn at(&mut self, full: Vec<u8>) -> io::Result<(BorrowedFd<'_>, Vec<u8>)> {
        let (dir, name) = match full.iter().rposition(|b| *b == b'/') {
            Some(i) => (full[..i].to_vec(), full[i + 1..].to_vec()),
            None => (Vec::new(), full),
        };
        if !is_component(&name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain name",
            ));
        }
        if dir.is_empty() {
            return Ok((self.parent.as_fd(), name));
        }
        if self.cache.as_ref().map(|(p, _)| p != &dir).unwrap_or(true) {
            let fd = self.open_dir_below(&dir)?;
            self.cache = Some((dir, fd));
        }
        let fd = self
            .cache
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .expect("cached");
        Ok((fd, name))
    }
}

fn ids(a: &Attrs) -> (rustix::fs::Uid, rustix::fs::Gid) {
    (
        rustix::fs::Uid::from_raw(a.uid as u32),
        rustix::fs::Gid::from_raw(a.gid as u32),
    )
}

/// Owner, then mode (a chown clears set-id bits), then time, all on the open descriptor.
pub fn set_fd_attrs(fd: impl AsFd, a: &Attrs) -> io::Result<()> {
    let (uid, gid) = ids(a);
    rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(a.mode & 0o7777))?;
    rustix::fs::futimens(&fd, &times_of(a.mtime))?;
    Ok(())
}

/// Access and modification time both at `mtime` (whole seconds), as archives keep them.
pub fn times_of(mtime: u64) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}
