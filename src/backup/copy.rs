//! Copies a volume's tree exactly (owners, modes, mtimes, symlinks, hard links, empty
//! folders) and fast: each file is a reflink clone where the filesystem has them (`FICLONE`:
//! no data copied), else `copy_file_range` (the kernel copies, no bytes through this process).
//! What the archive would skip (sockets, fifos, devices, the storage folder) is skipped here
//! with the same words about the original path, so an archive of the copy says what an
//! archive of the original would.
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::archive::sparse;
use crate::archive::writer::Attrs;
use crate::archive::xattrs::{self, On, Xattrs};
use crate::hostfs::beneath::times_of;
use crate::hostfs::paths::set_attrs;
use std::os::fd::AsFd;

pub use crate::archive::handover::CAPTURE_MARK;

/// What a copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Files cloned by reflink, and files whose bytes were copied.
    pub cloned: u64,
    pub copied: u64,
    pub bytes: u64,
    /// What was left out, as the archive would say it.
    pub skipped: Vec<String>,
}

/// Copies `src` (a folder or one file) to `dst` (which must not exist), leaving out
/// `exclude` (the storage folder). `reflink: false` never clones (to measure a plain copy).
/// Stops with an error as soon as `give_up()` (checked before each entry).
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    exclude: &Path,
    reflink: bool,
    give_up: &dyn Fn() -> bool,
) -> Result<Copied> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1024);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                scope.spawn(move || worker(&rx, reflink))
            })
            .collect();
        let mut c = Copier {
            reflink,
            out: Copied::default(),
            inodes: HashMap::new(),
            dirs: Vec::new(),
            jobs: Some(tx),
        };
        let walked = super::tree::walk(src, exclude, give_up, &mut |e| {
            let to = match e.rel.as_os_str().is_empty() {
                true => dst.to_path_buf(),
                false => dst.join(e.rel),
            };
            c.entry(&e, &to)
        });
        c.jobs = None;
        let mut done = Counts::default();
        let mut failed = None;
        for h in handles {
            match h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a copy thread panicked")))
            {
                Ok(n) => done.add(&n),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        // A copy thread's own error says more than the walk's "the copy threads stopped".
        let skipped = match (failed, walked) {
            (Some(e), _) | (None, Err(e)) => return Err(e),
            (None, Ok(skipped)) => skipped,
        };
        c.out.skipped = skipped;
        c.out.cloned += done.cloned;
        c.out.copied += done.copied;
        c.out.bytes += done.bytes;
        c.finish()
    })
}

/// One regular file for a copy thread.
struct Job {
    from: PathBuf,
    to: PathBuf,
    len: u64,
    attrs: Attrs,
    xattrs: Xattrs,
}

#[derive(Default)]
struct Counts {
    cloned: u64,
    copied: u64,
    bytes: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.cloned += o.cloned;
        self.copied += o.copied;
        self.bytes += o.bytes;
    }
}

/// Copies files until the walk ends (or the first error, which ends this thread).
fn worker(rx: &std::sync::Mutex<std::sync::mpsc::Receiver<Job>>, reflink: bool) -> Result<Counts> {
    let mut n = Counts::default();
    loop {
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return Ok(n),
        };
        let Ok(job) = job else {
            return Ok(n);
        };
        if copy_file(
            &job.from,
            &job.to,
            job.len,
            (&job.attrs, &job.xattrs),
            reflink,
        )? {
            n.cloned += 1;
        } else {
            n.copied += 1;
        }
        n.bytes += job.len;
    }
}

/// Copies one file's bytes (a reflink clone when `reflink` and the filesystem allows it:
/// `true`; else the kernel's copy, holes kept), then its owner, mode and time, then its
/// extended attributes (after the owner change, which clears a capability), on the open file.
fn copy_file(
    from: &Path,
    to: &Path,
    len: u64,
    (attrs, x): (&Attrs, &Xattrs),
    reflink: bool,
) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let input = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    // Made with its permission bits (less the umask), so that often no chmod is needed.
    let output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(attrs.mode & 0o777)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let cloned = reflink && rustix::fs::ioctl_ficlone(&output, &input).is_ok();
    if !cloned {
        copy_bytes(&input, &output, len)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    set_open_attrs(&output, attrs)
        .with_context(|| format!("setting owner, mode and time of {}", to.display()))?;
    set_xattrs(On::Fd(output.as_fd()), x, to)?;
    Ok(cloned)
}

/// Owner, then mode (a chown would clear set-id bits), then mtime, on an open regular file, as
/// [`set_attrs`] does by path. The owner and the mode are changed only where the new file's
/// differ (each change is a transaction of the filesystem's: a third of a reflink capture).
fn set_open_attrs(f: &File, a: &Attrs) -> io::Result<()> {
    use rustix::fs::{Gid, Mode, Uid};
    let st = rustix::fs::fstat(f)?;
    let (uid, gid) = (Uid::from_raw(a.uid as u32), Gid::from_raw(a.gid as u32));
    let chowned = (u64::from(st.st_uid), u64::from(st.st_gid)) != (a.uid, a.gid);
    if chowned {
        rustix::fs::fchown(f, Some(uid), Some(gid))?;
    }
    // Made without set-id bits, so the chown leaves the mode as it was read.
    if st.st_mode & 0o7777 != a.mode & 0o7777 {
        rustix::fs::fchmod(f, Mode::from_raw_mode(a.mode & 0o7777))?;
    }
    rustix::fs::futimens(f, &times_of(a.mtime))?;
    Ok(())
}

/// A capture is exact or fails: an attribute this filesystem refuses is an error.
fn set_xattrs(on: On<'_>, x: &Xattrs, to: &Path) -> Result<()> {
    if x.is_empty() {
        return Ok(());
    }
    let refused = xattrs::apply(on, x)
        .with_context(|| format!("setting the extended attributes of {}", to.display()))?;
    match refused.first() {
        Some(r) => anyhow::bail!("{}: the capture's filesystem refused {r}", to.display()),
        None => Ok(()),
    }
}

struct Copier {
    reflink: bool,
    out: Copied,
    /// The copy of each multiply-linked file, by (device, inode) of the original.
    inodes: HashMap<(u64, u64), PathBuf>,
    /// Folders and their attributes, applied last (writing into a folder changes its mtime).
    dirs: Vec<(PathBuf, Attrs, Xattrs)>,
    /// Where single-linked files go (the copy threads); `None` once the walk is over.
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
}

impl Copier {
    /// Makes folders and links here; sends files to [`Copier::file`].
    fn entry(&mut self, e: &super::tree::Entry<'_>, to: &Path) -> Result<()> {
        let ft = e.meta.file_type();
        if ft.is_dir() {
            fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
            // What a new folder inherits from its parent's default ACL is not the original's.
            for acl in ["system.posix_acl_default", "system.posix_acl_access"] {
                let _ = rustix::fs::lremovexattr(to, acl);
            }
            self.dirs
                .push((to.to_path_buf(), e.attrs, e.xattrs.clone()));
        } else if ft.is_symlink() {
            let target = fs::read_link(e.from)?;
            std::os::unix::fs::symlink(&target, to)
                .with_context(|| format!("creating link {}", to.display()))?;
            set_attrs(to, &e.attrs, true)?;
            set_xattrs(On::Link(to), &e.xattrs, to)?;
        } else {
            self.file(e.from, to, &e.meta, (&e.attrs, &e.xattrs))?;
        }
        Ok(())
    }

    fn file(
        &mut self,
        from: &Path,
        to: &Path,
        m: &fs::Metadata,
        (a, x): (&Attrs, &Xattrs),
    ) -> Result<()> {
        if m.nlink() == 1 {
            if let Some(jobs) = &self.jobs {
                let job = Job {
                    from: from.to_path_buf(),
                    to: to.to_path_buf(),
                    len: m.len(),
                    attrs: *a,
                    xattrs: x.clone(),
                };
                // A closed channel means every copy thread failed: its error is reported.
                return jobs
                    .send(job)
                    .map_err(|_| anyhow::anyhow!("the copy threads stopped"));
            }
        }
        let key = (m.dev(), m.ino());
        if let Some(first) = self.inodes.get(&key) {
            return fs::hard_link(first, to)
                .with_context(|| format!("creating hard link {}", to.display()));
        }
        self.inodes.insert(key, to.to_path_buf());
        if copy_file(from, to, m.len(), (a, x), self.reflink)? {
            self.out.cloned += 1;
        } else {
            self.out.copied += 1;
        }
        self.out.bytes += m.len();
        Ok(())
    }

    fn finish(mut self) -> Result<Copied> {
        self.dirs
            .sort_by_key(|(p, ..)| std::cmp::Reverse(p.as_os_str().len()));
        for (p, a, x) in &self.dirs {
            set_attrs(p, a, false)?;
            set_xattrs(On::Link(p), x, p)?;
        }
        Ok(self.out)
    }
}

/// The kernel copies (`copy_file_range`), only the data of a file with holes (the holes
/// stay holes); a plain read/write loop where it cannot.
fn copy_bytes(input: &File, output: &File, len: u64) -> io::Result<()> {
    let holes = rustix::fs::fstat(input)?.st_blocks as u64 * 512 < len;
    let map = match holes {
        true => sparse::map_of(input, len)?,
        false => None,
    };
    let mut buf = Vec::new();
    let Some(map) = map else {
        return copy_range(input, 0, output, 0, len, &mut buf);
    };
    for &(at, n) in &map.data {
        copy_range(input, at, output, at, n, &mut buf)?;
    }
    output.set_len(len)
}

/// `len` bytes of `input` at `from` into `output` at `to`: by the kernel where it can (same
/// filesystem), else through `buf`. A file that ends early is an error. Both captures (a
/// tree's files, a pack's) copy through this.
pub(super) fn copy_range(
    input: &File,
    from: u64,
    output: &File,
    to: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let chunk = (len - done).min(1 << 30) as usize;
        let (mut f, mut t) = (from + done, to + done);
        match rustix::fs::copy_file_range(input, Some(&mut f), output, Some(&mut t), chunk) {
            Ok(0) => return Err(shrank()),
            Ok(n) => done += n as u64,
            Err(_) if done == 0 => return copy_through(input, from, output, to, len, buf),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn shrank() -> io::Error {
    io::Error::other("it shrank while it was captured")
}

/// The plain copy, where `copy_file_range` cannot (another filesystem).
pub(super) fn copy_through(
    input: &File,
    from: u64,
    output: &File,
    to: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.resize(1 << 20, 0);
    let mut done = 0;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = input.read_at(&mut buf[..want], from + done)?;
        if n == 0 {
            return Err(shrank());
        }
        output.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Whether files can be cloned by reflink in folder `dir` (tried on a throw-away file).
pub fn reflinks_in(dir: &Path) -> bool {
    let a = dir.join(format!("{CAPTURE_MARK}probe-{}-a", std::process::id()));
    let b = dir.join(format!("{CAPTURE_MARK}probe-{}-b", std::process::id()));
    let ok = (|| -> io::Result<bool> {
        fs::write(&a, b"probe")?;
        let src = File::open(&a)?;
        let dst = File::create(&b)?;
        Ok(rustix::fs::ioctl_ficlone(&dst, &src).is_ok())
    })()
    .unwrap_or(false);
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_links_modes_times_and_skips_what_the_archive_skips() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("sub/empty")).unwrap();
        fs::create_dir_all(src.join("backups")).unwrap();
        fs::write(src.join("sub/f"), "data").unwrap();
        fs::hard_link(src.join("sub/f"), src.join("hard")).unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("link")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            src.join("fifo"),
            rustix::fs::Mode::from(0o600),
        )
        .unwrap();
        fs::create_dir(src.join(format!("{CAPTURE_MARK}x"))).unwrap();
        let a = Attrs {
            mode: 0o750,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
        };
        set_attrs(&src.join("sub"), &a, false).unwrap();
        let dst = d.path().join("dst");
        let out = copy_tree(&src, &dst, &src.join("backups"), true, &|| false).unwrap();
        assert_eq!(out.cloned + out.copied, 1, "one file, linked once");
        assert_eq!(out.skipped.len(), 2, "{:?}", out.skipped);
        assert!(out.skipped[0].contains("backup storage folder"));
        assert!(
            out.skipped[1].contains("fifo") && out.skipped[1].contains(&src.display().to_string())
        );
        assert_eq!(fs::read_to_string(dst.join("hard")).unwrap(), "data");
        assert_eq!(
            fs::metadata(dst.join("hard")).unwrap().ino(),
            fs::metadata(dst.join("sub/f")).unwrap().ino()
        );
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("sub/f"));
        let m = fs::metadata(dst.join("sub")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o750, 1_600_000_000));
        assert!(dst.join("sub/empty").is_dir());
        assert!(!dst.join("backups").exists() && !dst.join(format!("{CAPTURE_MARK}x")).exists());
    }

    #[test]
    fn each_copied_file_has_its_owner_and_every_mode_bit_whatever_the_umask() {
        // Runs as root (CI and the build machine): the owners need chown.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        let cases = [
            (0o644, 0, 0),
            (0o600, 999, 999),
            (0o666, 0, 0),
            (0o777, 1000, 0),
            (0o4755, 1000, 1000),
            (0o2750, 0, 50),
            (0o1644, 0, 0),
            (0o000, 65534, 65534),
        ];
        for (i, (mode, uid, gid)) in cases.iter().enumerate() {
            let f = src.join(format!("f{i}"));
            fs::write(&f, format!("file {i}")).unwrap();
            let a = Attrs {
                mode: *mode,
                uid: *uid,
                gid: *gid,
                mtime: 1_500_000_000 + i as u64,
            };
            set_attrs(&f, &a, false).unwrap();
        }
        let dst = d.path().join("dst");
        copy_tree(&src, &dst, &d.path().join("none"), true, &|| false).unwrap();
        for (i, (mode, uid, gid)) in cases.iter().enumerate() {
            let m = fs::metadata(dst.join(format!("f{i}"))).unwrap();
            let got = (m.mode() & 0o7777, u64::from(m.uid()), u64::from(m.gid()));
            assert_eq!(got, (*mode, *uid, *gid), "f{i}");
            assert_eq!(m.mtime(), 1_500_000_000 + i as i64, "f{i}");
            let bytes = fs::read_to_string(dst.join(format!("f{i}"))).unwrap();
            assert_eq!(bytes, format!("file {i}"));
        }
    }
}
