//! Reads a bind-mounted host path (folder or single file) into a [`Collector`].
//!
//! A walker thread goes through the tree in a fixed order (depth first, names sorted by
//! bytes), looks at each entry relative to its folder's descriptor (`statat`, `openat`: no
//! path walked again per file) and reads small files ahead, while this thread writes the
//! archive. Entries go over in batches (one wake-up per batch, not per file: on 200,000
//! small files that removed a million futex calls). The queue between them is bounded (at
//! most [`QUEUE`] batches, each of at most [`BATCH_ENTRIES`] entries, [`BATCH_BYTES`] bytes
//! read ahead and [`BATCH_OPEN`] open files), so memory stays flat however many files there
//! are.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};

use super::collector::Collector;
use super::writer::Attrs;

/// Files up to this size are read by the walker thread.
const SMALL: u64 = 64 << 10;
/// Batches the walker may be ahead.
const QUEUE: usize = 4;
/// A batch is sent when it holds this many entries…
const BATCH_ENTRIES: usize = 256;
/// …or this many bytes read ahead…
const BATCH_BYTES: usize = 1 << 20;
/// …or this many open files (large files are opened by the walker and read by the writer).
const BATCH_OPEN: usize = 16;

/// One entry, as the walker found it.
enum Found {
    Dir(Vec<u8>, Attrs),
    Symlink(Vec<u8>, Attrs, Vec<u8>),
    /// A hard link to a file of the same walk, by its path.
    Hardlink(Vec<u8>, Attrs, Vec<u8>),
    File(Vec<u8>, Attrs, u64, Content),
    Skipped(String),
}

enum Content {
    Read(Vec<u8>),
    Open(ReadAhead),
}

/// How far ahead of the writer the kernel is asked to read a large file, in steps of this.
const AHEAD: u64 = 16 << 20;

/// A large file, read while the kernel is asked to read the next [`AHEAD`] bytes in the
/// background (`POSIX_FADV_WILLNEED`): when its pages are not cached (a capture's reflink
/// clones are new files; a cold cache) the writer rarely waits for the disk, and compression
/// goes on meanwhile. The first step is asked when the walker opens it, ahead of its turn.
struct ReadAhead {
    file: File,
    pos: u64,
    asked: u64,
    size: u64,
}

impl ReadAhead {
    fn open(file: File, size: u64) -> ReadAhead {
        let mut r = ReadAhead {
            file,
            pos: 0,
            asked: 0,
            size,
        };
        r.ask();
        r
    }

    /// Asks for the next step; advice only, so a failure changes nothing.
    fn ask(&mut self) {
        let _ = rustix::fs::fadvise(
            &self.file,
            self.asked,
            std::num::NonZeroU64::new(AHEAD),
            rustix::fs::Advice::WillNeed,
        );
        self.asked += AHEAD;
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos + AHEAD / 2 >= self.asked && self.asked < self.size {
            self.ask();
        }
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn attrs(st: &Stat) -> Attrs {
    Attrs {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid as u64,
        gid: st.st_gid as u64,
        mtime: st.st_mtime.max(0) as u64,
    }
}

/// Archives `root` exactly: owners, modes, mtimes, symlinks as links, hard links as links.
/// Sockets, fifos and devices are skipped and reported through `warn`; so is `exclude` (the
/// storage folder, when it lies inside the bind). Fails on the first unreadable entry, naming it.
pub fn collect(
    root: &Path,
    exclude: &Path,
    c: &mut Collector<'_>,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let (tx, rx) = sync_channel::<Result<Vec<Found>>>(QUEUE);
    let walker = Walker {
        tx,
        exclude: exclude.to_path_buf(),
        inodes: HashMap::new(),
        batch: Batch::default(),
    };
    let root = root.to_path_buf();
    let handle = std::thread::spawn(move || walker.run(&root));
    for batch in rx {
        for found in batch? {
            crate::cancel::check()?;
            take(found, c, warn)?;
        }
    }
    let _ = handle.join();
    Ok(())
}

/// Appends one found entry to the archive.
fn take(found: Found, c: &mut Collector<'_>, warn: &mut dyn FnMut(String)) -> Result<()> {
    match found {
        Found::Dir(rel, a) => c.dir(&rel, &a),
        Found::Symlink(rel, a, target) => c.symlink(&rel, &a, &target),
        Found::Hardlink(rel, a, first) => c.hardlink(&rel, &a, &first),
        Found::File(rel, a, size, content) => match content {
            Content::Read(bytes) => c.file(&rel, &a, size, bytes.as_slice()),
            Content::Open(f) => c.file(&rel, &a, size, f),
        }
        .with_context(|| format!("reading {}", String::from_utf8_lossy(&rel))),
        Found::Skipped(why) => {
            warn(why);
            Ok(())
        }
    }
}

/// Entries found and not sent yet.
#[derive(Default)]
struct Batch {
    entries: Vec<Found>,
    bytes: usize,
    open: usize,
}

struct Walker {
    tx: SyncSender<Result<Vec<Found>>>,
    exclude: PathBuf,
    /// First path of each multiply-linked file, by (device, inode).
    inodes: HashMap<(u64, u64), Vec<u8>>,
    batch: Batch,
}

impl Walker {
    fn run(mut self, root: &Path) {
        // The root is followed when it is a symlink, as the engine follows it when mounting.
        let result = match rustix::fs::stat(root) {
            Ok(st) => self.entry(At::Path(root), root, Vec::new(), &st),
            Err(e) => Err(anyhow::Error::from(std::io::Error::from(e)))
                .with_context(|| format!("reading {}", root.display())),
        };
        // What was found before an error is archived first, so the error names the right entry.
        if self.flush() {
            if let Err(e) = result {
                let _ = self.tx.send(Err(e));
            }
        }
    }

    /// Sends one entry (a folder: with everything below it). `false` when the reader is gone.
    fn entry(&mut self, at: At<'_>, path: &Path, rel: Vec<u8>, st: &Stat) -> Result<bool> {
        let a = attrs(st);
        let found = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                if path == self.exclude {
                    let why = format!("skipped {} (the backup storage folder)", path.display());
                    return Ok(self.send(Found::Skipped(why)));
                }
                return self.folder(at, path, rel, a);
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(at.fd(), at.name(), Vec::new())
                    .map_err(std::io::Error::from)
                    .with_context(|| format!("reading link {}", path.display()))?;
                Found::Symlink(rel, a, target.into_bytes())
            }
            FileType::RegularFile => self.file(at, path, rel, a, st)?,
            _ => Found::Skipped(format!(
                "skipped {} (a socket, fifo or device cannot be backed up)",
                path.display()
            )),
        };
        Ok(self.send(found))
    }

    fn file(
        &mut self,
        at: At<'_>,
        path: &Path,
        rel: Vec<u8>,
        a: Attrs,
        st: &Stat,
    ) -> Result<Found> {
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.inodes.get(&key) {
                return Ok(Found::Hardlink(rel, a, first.clone()));
            }
            self.inodes.insert(key, rel.clone());
        }
        let fd = rustix::fs::openat(
            at.fd(),
            at.name(),
            OFlags::RDONLY | at.no_follow() | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening {}", path.display()))?;
        let mut f = File::from(fd);
        let size = st.st_size as u64;
        if size > SMALL {
            return Ok(Found::File(
                rel,
                a,
                size,
                Content::Open(ReadAhead::open(f, size)),
            ));
        }
        let bytes = read_small(&mut f, size as usize)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Found::File(rel, a, size, Content::Read(bytes)))
    }

    /// A folder, then its entries sorted by name.
    fn folder(&mut self, at: At<'_>, path: &Path, rel: Vec<u8>, a: Attrs) -> Result<bool> {
        if !self.send(Found::Dir(rel.clone(), a)) {
            return Ok(false);
        }
        let dir = open_dir(at).with_context(|| format!("reading {}", path.display()))?;
        for name in names(&dir).with_context(|| format!("reading {}", path.display()))? {
            let child = path.join(OsStr::from_bytes(&name));
            let st = rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(std::io::Error::from)
                .with_context(|| format!("reading {}", child.display()))?;
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(&name);
            if !self.entry(At::In(&dir, &name), &child, child_rel, &st)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Adds `f` to the batch, sending the batch when it is full. `false` when the reader is gone.
    fn send(&mut self, f: Found) -> bool {
        match &f {
            Found::File(.., Content::Read(bytes)) => self.batch.bytes += bytes.len(),
            Found::File(.., Content::Open(_)) => self.batch.open += 1,
            _ => {}
        }
        self.batch.entries.push(f);
        let full = self.batch.entries.len() >= BATCH_ENTRIES
            || self.batch.bytes >= BATCH_BYTES
            || self.batch.open >= BATCH_OPEN;
        !full || self.flush()
    }

    /// Sends what the batch holds. `false` when the reader is gone.
    fn flush(&mut self) -> bool {
        let batch = std::mem::take(&mut self.batch);
        batch.entries.is_empty() || self.tx.send(Ok(batch.entries)).is_ok()
    }
}

/// Up to `size` bytes of a small file: one read when it still has that size (a file that
/// grew is cut at `size`, as tar does; one that shrank ends early, and the writer says so).
fn read_small(f: &mut File, size: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; size];
    let mut got = 0;
    while got < size {
        match f.read(&mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(got);
    Ok(bytes)
}

/// Where an entry is: the root, by its path; or a name in a folder.
#[derive(Clone, Copy)]
enum At<'a> {
    Path(&'a Path),
    In(&'a OwnedFd, &'a [u8]),
}

impl<'a> At<'a> {
    fn fd(self) -> rustix::fd::BorrowedFd<'a> {
        use rustix::fd::AsFd;
        match self {
            At::Path(_) => CWD,
            At::In(fd, _) => fd.as_fd(),
        }
    }

    /// Entries inside the tree are never followed; the root (a path) is.
    fn no_follow(self) -> OFlags {
        match self {
            At::Path(_) => OFlags::empty(),
            At::In(..) => OFlags::NOFOLLOW,
        }
    }

    fn name(self) -> &'a [u8] {
        match self {
            At::Path(p) => p.as_os_str().as_bytes(),
            At::In(_, n) => n,
        }
    }
}

fn open_dir(at: At<'_>) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | at.no_follow() | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(at.fd(), at.name(), flags, Mode::empty())
        .map_err(std::io::Error::from)?)
}

/// The names in a folder, sorted by bytes (`.` and `..` left out).
fn names(dir: &OwnedFd) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir).map_err(std::io::Error::from)? {
        let e = e.map_err(std::io::Error::from)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    out.sort_unstable();
    Ok(out)
}
