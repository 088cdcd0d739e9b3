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
use std::cell::OnceCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};

use super::collector::Collector;
use super::handover::{Handover, CAPTURE_MARK};
use super::sparse::{self, DataMap};
use super::writer::Attrs;
use super::xattrs::{self, On, Xattrs};

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
    Dir(Vec<u8>, Attrs, Xattrs),
    Symlink(Vec<u8>, Attrs, Xattrs, Vec<u8>),
    /// A hard link to a file of the same walk, by its path.
    Hardlink(Vec<u8>, Attrs, Vec<u8>),
    File(Vec<u8>, Attrs, Xattrs, u64, Content),
    Skipped(String),
}

enum Content {
    Read(Vec<u8>),
    /// A large file, and where its data is when it has holes.
    Open(ReadAhead, Option<DataMap>),
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
    /// Opened in a live volume: its hand-over and the file's path inside the volume, to go on
    /// from the same place in the capture once the hand-over is made.
    reopen: Option<(Handover, Vec<u8>)>,
}

impl ReadAhead {
    fn open(file: File, size: u64, reopen: Option<(Handover, Vec<u8>)>) -> ReadAhead {
        let mut r = ReadAhead {
            file,
            pos: 0,
            asked: 0,
            size,
            reopen,
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

    /// Goes on reading at `offset` (a sparse file's next data range).
    fn jump(&mut self, offset: u64) -> io::Result<()> {
        self.file.seek(io::SeekFrom::Start(offset))?;
        self.pos = offset;
        self.asked = offset;
        self.ask();
        Ok(())
    }

    fn step(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos + AHEAD / 2 >= self.asked && self.asked < self.size {
            self.ask();
        }
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    /// After the hand-over: the same file in the capture, from where the reading is.
    fn reopen_in_capture(&mut self, h: &Handover, rel: &[u8]) -> io::Result<()> {
        let path = h.path(rel);
        let mut f = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        f.seek(io::SeekFrom::Start(self.pos))?;
        self.file = f;
        self.asked = self.pos;
        Ok(())
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((h, rel)) = self.reopen.take() else {
            return self.step(buf);
        };
        match h.switch.live(|| self.step(buf)) {
            Some(read) => {
                self.reopen = Some((h, rel));
                read
            }
            None => {
                self.reopen_in_capture(&h, &rel)?;
                self.step(buf)
            }
        }
    }
}

/// The data ranges of a sparse file, one after the other (holes are never read).
struct DataRanges<'a> {
    inner: ReadAhead,
    ranges: std::slice::Iter<'a, (u64, u64)>,
    left: u64,
}

impl Read for DataRanges<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            let Some(&(offset, len)) = self.ranges.next() else {
                return Ok(0);
            };
            self.inner.jump(offset)?;
            self.left = len;
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was read",
            ));
        }
        self.left -= n as u64;
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
/// With a `handover`, `root` is read until the hand-over and its capture after (see
/// [`super::handover`]); what the capture left out is not reported here (the capture says it).
pub fn collect(
    root: &Path,
    exclude: &Path,
    handover: Option<Handover>,
    c: &mut Collector<'_>,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let (tx, rx) = sync_channel::<Result<Vec<Found>>>(QUEUE);
    let walker = Walker {
        tx,
        exclude: exclude.to_path_buf(),
        inodes: HashMap::new(),
        batch: Batch::default(),
        root: root.to_path_buf(),
        handover,
        handed: false,
    };
    let handle = std::thread::spawn(move || walker.run());
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
        Found::Dir(rel, a, x) => c.dir(&rel, &a, &x),
        Found::Symlink(rel, a, x, target) => c.symlink(&rel, (&a, &x), &target),
        Found::Hardlink(rel, a, first) => c.hardlink(&rel, &a, &first),
        Found::File(rel, a, x, size, content) => match content {
            Content::Read(bytes) => c.file(&rel, (&a, &x), size, None, bytes.as_slice()),
            Content::Open(f, None) => c.file(&rel, (&a, &x), size, None, f),
            Content::Open(f, Some(map)) => {
                let ranges = DataRanges {
                    inner: f,
                    ranges: map.data.iter(),
                    left: 0,
                };
                c.file(&rel, (&a, &x), size, Some(&map), ranges)
            }
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
    /// The live root (followed when it is a symlink, as the engine follows it when mounting).
    root: PathBuf,
    handover: Option<Handover>,
    /// Whether the walk has met the hand-over (and moved `inodes` to the capture's).
    handed: bool,
}

/// A large file opened, or a small one read.
enum Opened {
    Large(File, Option<DataMap>),
    Small(Vec<u8>),
}

impl Walker {
    fn run(mut self) {
        let stat = |s: Spot<'_>| rustix::fs::statat(s.dir, s.name, s.at_flags());
        let result = match self.on(At::Root, |s| Ok(stat(s)?)) {
            Ok(st) => {
                let root = self.root.clone();
                self.entry(At::Root, &root, Vec::new(), &st)
            }
            Err(e) => Err(anyhow::Error::from(e))
                .with_context(|| format!("reading {}", self.root.display())),
        };
        // What was found before an error is archived first, so the error names the right entry.
        if self.flush() {
            if let Err(e) = result {
                let _ = self.tx.send(Err(e));
            }
        }
    }

    /// Runs `op` where the entry may be read now (see [`reach`]); on meeting the hand-over,
    /// moves the hard-link table to the capture's inodes.
    fn on<T>(&mut self, at: At<'_>, op: impl Fn(Spot<'_>) -> io::Result<T>) -> io::Result<T> {
        let (result, live) = reach(&self.root, self.handover.as_ref(), at, op);
        if !live && !self.handed {
            self.handed = true;
            self.rekey()?;
        }
        result
    }

    /// The capture links the same paths as the volume, with its own inodes: each first path
    /// is looked up again there.
    fn rekey(&mut self) -> io::Result<()> {
        let Some(h) = &self.handover else {
            return Ok(());
        };
        let mut moved = HashMap::with_capacity(self.inodes.len());
        for first in self.inodes.values() {
            let st = rustix::fs::statat(CWD, h.path(first), AtFlags::SYMLINK_NOFOLLOW)?;
            moved.insert((st.st_dev, st.st_ino), first.clone());
        }
        self.inodes = moved;
        Ok(())
    }

    /// Whether the capture left out `path` on purpose (a fifo, the storage folder): it says so.
    fn left_out(&self, path: &Path) -> bool {
        let said = format!("skipped {} (", path.display());
        self.handed
            && self
                .handover
                .as_ref()
                .and_then(|h| h.left_out.get())
                .is_some_and(|l| l.iter().any(|w| w.starts_with(&said)))
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
                let (target, x) = self
                    .on(at, |s| {
                        let target = rustix::fs::readlinkat(s.dir, s.name, Vec::new())?;
                        Ok((target, xattrs::read(On::Link(&s.path()))?))
                    })
                    .with_context(|| format!("reading link {}", path.display()))?;
                Found::Symlink(rel, a, x, target.into_bytes())
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
        let size = st.st_size as u64;
        // Blocks for fewer bytes than the size: there may be holes, asked of the filesystem.
        let holes = (st.st_blocks as u64) * 512 < size;
        // Opened and (when small) read at once: a live file is never read after the hand-over.
        let (opened, x, live) = self
            .on(at, |s| {
                let flags = OFlags::RDONLY | s.no_follow() | OFlags::CLOEXEC;
                let mut f = File::from(rustix::fs::openat(s.dir, s.name, flags, Mode::empty())?);
                let x = xattrs::read(On::Fd(f.as_fd()))?;
                match size > SMALL {
                    true => {
                        let map = holes.then(|| sparse::map_of(&f, size)).transpose()?;
                        Ok((Opened::Large(f, map.flatten()), x, s.live))
                    }
                    false => Ok((Opened::Small(read_small(&mut f, size as usize)?), x, s.live)),
                }
            })
            .with_context(|| format!("reading {}", path.display()))?;
        let content = match opened {
            Opened::Small(bytes) => Content::Read(bytes),
            Opened::Large(f, map) => {
                let reopen = self
                    .handover
                    .clone()
                    .filter(|_| live)
                    .map(|h| (h, rel.clone()));
                Content::Open(ReadAhead::open(f, size, reopen), map)
            }
        };
        Ok(Found::File(rel, a, x, size, content))
    }

    /// A folder, then its entries sorted by name.
    fn folder(&mut self, at: At<'_>, path: &Path, rel: Vec<u8>, a: Attrs) -> Result<bool> {
        // Opened and listed at once, for the same reason as a file.
        let (fd, listed, x, live) = self
            .on(at, |s| {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | s.no_follow() | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(s.dir, s.name, flags, Mode::empty())?;
                let listed = names(&fd)?;
                let x = xattrs::read(On::Fd(fd.as_fd()))?;
                Ok((fd, listed, x, s.live))
            })
            .with_context(|| format!("reading {}", path.display()))?;
        if !self.send(Found::Dir(rel.clone(), a, x)) {
            return Ok(false);
        }
        let folder = Folder {
            fd,
            live,
            rel,
            capture: OnceCell::new(),
        };
        for name in listed {
            let child = path.join(OsStr::from_bytes(&name));
            let here = At::In(&folder, &name);
            let st = match self.on(here, |s| {
                Ok(rustix::fs::statat(s.dir, s.name, s.at_flags())?)
            }) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound && self.left_out(&child) => continue,
                Err(e) => {
                    return Err(anyhow::Error::from(e))
                        .with_context(|| format!("reading {}", child.display()))
                }
            };
            let mut child_rel = folder.rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(&name);
            if !self.entry(here, &child, child_rel, &st)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Adds `f` to the batch, sending the batch when it is full. `false` when the reader is gone.
    fn send(&mut self, f: Found) -> bool {
        match &f {
            Found::File(.., Content::Read(bytes)) => self.batch.bytes += bytes.len(),
            Found::File(.., Content::Open(..)) => self.batch.open += 1,
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

/// A folder being walked: its descriptor where it was opened (the live volume or the
/// capture), and, once the walk meets the hand-over, its descriptor in the capture.
struct Folder {
    fd: OwnedFd,
    live: bool,
    rel: Vec<u8>,
    capture: OnceCell<OwnedFd>,
}

impl Folder {
    fn in_capture(&self, h: &Handover) -> io::Result<BorrowedFd<'_>> {
        if !self.live {
            return Ok(self.fd.as_fd());
        }
        if self.capture.get().is_none() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let _ = self.capture.set(rustix::fs::openat(
                CWD,
                h.path(&self.rel),
                flags,
                Mode::empty(),
            )?);
        }
        Ok(self.capture.get().expect("set above").as_fd())
    }
}

/// Where an entry is: the root; or a name in a folder.
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    In(&'a Folder, &'a [u8]),
}

/// Where an operation acts: a folder's descriptor (the working folder for the root) and a
/// name in it, and whether that is the live volume.
#[derive(Clone, Copy)]
struct Spot<'a> {
    dir: BorrowedFd<'a>,
    name: &'a [u8],
    /// Only the root is followed when it is a symlink.
    root: bool,
    live: bool,
}

impl Spot<'_> {
    /// A path to the entry that names it through its folder's descriptor (for calls that
    /// take only a path, with the last name not followed).
    fn path(self) -> PathBuf {
        if self.root {
            return PathBuf::from(OsStr::from_bytes(self.name));
        }
        use std::os::fd::AsRawFd;
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        p.push(OsStr::from_bytes(self.name));
        p
    }

    fn no_follow(self) -> OFlags {
        match self.root {
            true => OFlags::empty(),
            false => OFlags::NOFOLLOW,
        }
    }

    fn at_flags(self) -> AtFlags {
        match self.root {
            true => AtFlags::empty(),
            false => AtFlags::SYMLINK_NOFOLLOW,
        }
    }
}

/// Runs `op` where the entry may be read now: in the live volume until the hand-over (holding
/// the switch while `op` runs), in the capture after. Returns whether it ran on the live one.
fn reach<T>(
    root: &Path,
    handover: Option<&Handover>,
    at: At<'_>,
    op: impl Fn(Spot<'_>) -> io::Result<T>,
) -> (io::Result<T>, bool) {
    let here = |at: At<'_>| match at {
        At::Root => op(Spot {
            dir: CWD,
            name: root.as_os_str().as_bytes(),
            root: true,
            live: true,
        }),
        At::In(f, name) => op(Spot {
            dir: f.fd.as_fd(),
            name,
            root: false,
            live: f.live,
        }),
    };
    let Some(h) = handover else {
        return (here(at), true);
    };
    if let At::In(f, _) = at {
        if !f.live {
            return (here(at), false);
        }
    }
    if let Some(result) = h.switch.live(|| here(at)) {
        return (result, true);
    }
    let capture = h.capture.as_os_str().as_bytes();
    let spot = match at {
        At::Root => Spot {
            dir: CWD,
            name: capture,
            root: true,
            live: false,
        },
        At::In(f, name) => match f.in_capture(h) {
            Ok(dir) => Spot {
                dir,
                name,
                root: false,
                live: false,
            },
            Err(e) => return (Err(e), false),
        },
    };
    (op(spot), false)
}

/// The names in a folder, sorted by bytes (`.`, `..` and captures left out).
fn names(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." && !n.starts_with(CAPTURE_MARK.as_bytes()) {
            out.push(n.to_vec());
        }
    }
    out.sort_unstable();
    Ok(out)
}
