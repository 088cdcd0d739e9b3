//! Packs a volume's tree into one uncompressed tar file: the capture where the filesystem has
//! no reflinks. A tree copy creates an inode per file (and its removal frees them all), while
//! the pack writes one file: on the 1 GiB data set on ext4, 0.8 CPU-s against 1.1-1.6 for
//! the tree, a fifth of its removal, and none of the slowdown an ext4 without a journal shows
//! when many inodes were freed in the last minutes (it skips them when allocating: a tree
//! copy right after the last one's removal took 10 CPU-s; see `scripts/bench-downtime.sh`).
//!
//! The walk (name order, as the archive walks) writes each entry's header at its offset; a
//! copy thread puts the files' bytes after their headers (`copy_file_range`: the kernel
//! copies; a read and write loop across filesystems). One copy thread, not one per core:
//! every write to the pack takes its inode's lock, so more threads only wait for it (spinning:
//! 2-4 threads took 0.70 s and 1.3 CPU-s, one 0.62 s and 0.8 CPU-s). What the archive would
//! skip (sockets, fifos, devices, the storage folder) is skipped with the same words about
//! the original. The root is the entry `.`; hard links are link entries to the first name;
//! names and link targets longer than a header holds get GNU long-name entries.
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{Context as _, Result};

use crate::archive::sparse;
use crate::archive::writer::Attrs;
use crate::archive::xattrs;

const BLOCK: u64 = 512;

/// What a pack holds, and what it left out (as the archive would say it).
#[derive(Debug, Default)]
pub struct Packed {
    pub files: u64,
    pub bytes: u64,
    pub skipped: Vec<String>,
}

/// One file's bytes, for the copy thread: `len` bytes of `from` from `src_at` to `at` in
/// the pack (a file with holes is one job per data range).
struct Job {
    from: PathBuf,
    src_at: u64,
    at: u64,
    len: u64,
}

/// Packs `src` (a folder or one file) into the new file `dst`, leaving out `exclude` (the
/// storage folder). Stops with an error as soon as `give_up()` (checked before each entry).
/// A file that shrinks while it is packed is an error (the services are stopped: something
/// else writes there).
pub fn pack_tree(
    src: &Path,
    dst: &Path,
    exclude: &Path,
    give_up: &dyn Fn() -> bool,
) -> Result<Packed> {
    let out = crate::private::create_new(dst)?;
    let (tx, rx) = mpsc::sync_channel::<Job>(1024);
    std::thread::scope(|scope| {
        let copier = scope.spawn(|| copier(rx, &out));
        let mut p = Packer {
            out: &out,
            at: 0,
            inodes: HashMap::new(),
            jobs: Some(tx),
            done: Packed::default(),
        };
        let walked = super::tree::walk(src, exclude, give_up, &mut |e| p.entry(&e));
        p.jobs = None;
        let copied = copier.join();
        let copied = copied.unwrap_or_else(|_| Err(anyhow::anyhow!("the copy thread panicked")));
        // The copy thread's own error says more than the walk's "the copy thread stopped".
        p.done.skipped = copied.and(walked)?;
        p.finish()
    })
    .with_context(|| format!("packing {} into {}", src.display(), dst.display()))
}

/// Copies files' bytes into the pack until the walk ends (or the first error).
fn copier(jobs: mpsc::Receiver<Job>, out: &File) -> Result<()> {
    let mut buf = Vec::new();
    for job in jobs {
        copy_into(&job, out, &mut buf)
            .with_context(|| format!("copying {}", job.from.display()))?;
    }
    Ok(())
}

/// `job.len` bytes of its file into `out` at `job.at`.
fn copy_into(job: &Job, out: &File, buf: &mut Vec<u8>) -> io::Result<()> {
    let input = File::open(&job.from)?;
    super::copy::copy_range(&input, job.src_at, out, job.at, job.len, buf)
}

struct Packer<'a> {
    out: &'a File,
    /// Where the next header goes.
    at: u64,
    /// The name of each multiply-linked file's first entry, by (device, inode).
    inodes: HashMap<(u64, u64), Vec<u8>>,
    /// Where files' bytes go (the copy thread); `None` once the walk is over.
    jobs: Option<mpsc::SyncSender<Job>>,
    done: Packed,
}

impl Packer<'_> {
    fn entry(&mut self, e: &super::tree::Entry<'_>) -> Result<()> {
        let name = match e.rel.as_os_str().as_bytes() {
            b"" => b".".to_vec(),
            r => r.to_vec(),
        };
        let ft = e.meta.file_type();
        let pax = xattrs::pax_records(&e.xattrs);
        if ft.is_dir() {
            self.header(&name, (tar::EntryType::Directory, &pax), &e.attrs, 0, b"")
        } else if ft.is_symlink() {
            let target = fs::read_link(e.from)?;
            let target = target.as_os_str().as_bytes();
            self.header(&name, (tar::EntryType::Symlink, &pax), &e.attrs, 0, target)
        } else {
            self.file(e.from, name, &e.meta, (&e.attrs, pax))
        }
    }

    /// A file's header, then its bytes by the copy thread: of a file with holes, only its
    /// data ranges, their map in a record of the header (see [`sparse::PACK_KEY`]).
    fn file(
        &mut self,
        from: &Path,
        name: Vec<u8>,
        m: &fs::Metadata,
        (a, mut pax): (&Attrs, Vec<u8>),
    ) -> Result<()> {
        if m.nlink() > 1 {
            if let Some(first) = self.inodes.get(&(m.dev(), m.ino())) {
                let first = first.clone();
                return self.header(&name, (tar::EntryType::Link, &[]), a, 0, &first);
            }
            self.inodes.insert((m.dev(), m.ino()), name.clone());
        }
        let map = match m.blocks() * 512 < m.len() {
            true => sparse::map_of(&File::open(from)?, m.len())?,
            false => None,
        };
        let ranges = match &map {
            Some(map) => {
                xattrs::record(&mut pax, sparse::PACK_KEY, map.to_record().as_bytes());
                map.data.clone()
            }
            None => vec![(0, m.len())],
        };
        let stored: u64 = ranges.iter().map(|(_, n)| n).sum();
        self.header(&name, (tar::EntryType::Regular, &pax), a, stored, b"")?;
        let jobs = self.jobs.as_ref().expect("the walk is under way");
        let mut at = self.at;
        for (src_at, len) in ranges {
            let job = Job {
                from: from.to_path_buf(),
                src_at,
                at,
                len,
            };
            at += len;
            // A closed channel means the copy thread failed: its error is reported.
            jobs.send(job)
                .map_err(|_| anyhow::anyhow!("the copy thread stopped"))?;
        }
        self.at += stored.div_ceil(BLOCK) * BLOCK;
        self.done.files += 1;
        self.done.bytes += m.len();
        Ok(())
    }

    /// Writes an entry's header (after the long-name entries it needs) at the next offset.
    fn header(
        &mut self,
        name: &[u8],
        (kind, pax): (tar::EntryType, &[u8]),
        a: &Attrs,
        size: u64,
        link: &[u8],
    ) -> Result<()> {
        let mut bytes = match pax.is_empty() {
            true => Vec::new(),
            false => xattrs::pax_block(pax),
        };
        bytes.extend(header_bytes(name, kind, a, size, link));
        self.out
            .write_all_at(&bytes, self.at)
            .context("writing the capture")?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// Ends the pack with the two zero blocks of a tar's end (the gaps between entries were
    /// never written: they read as zeros).
    fn finish(self) -> Result<Packed> {
        self.out
            .write_all_at(&[0u8; 2 * BLOCK as usize], self.at)
            .context("writing the capture")?;
        Ok(self.done)
    }
}

/// One entry's header blocks: a GNU long-name entry first for a name, and one for a link
/// target, too long for the header's 100 bytes.
fn header_bytes(name: &[u8], kind: tar::EntryType, a: &Attrs, size: u64, link: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK as usize);
    if link.len() > 100 {
        long_name(&mut out, tar::EntryType::GNULongLink, link);
    }
    if name.len() > 100 {
        long_name(&mut out, tar::EntryType::GNULongName, name);
    }
    let mut h = crate::archive::writer::header(kind, a, size);
    put(&mut h.as_old_mut().name, name);
    put(&mut h.as_old_mut().linkname, link);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out
}

/// A GNU long-name (or long-link) entry holding `value`, NUL-ended, padded to a block.
fn long_name(out: &mut Vec<u8>, kind: tar::EntryType, value: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(value.len() as u64 + 1);
    put(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let start = out.len();
    out.extend_from_slice(value);
    out.push(0);
    let padded = start + (value.len() as u64 + 1).div_ceil(BLOCK) as usize * BLOCK as usize;
    out.resize(padded, 0);
}

/// As much of `value` as `field` holds (the rest is in a long-name entry).
fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

#[cfg(test)]
mod tests {
    use super::super::copy::{copy_through, CAPTURE_MARK};
    use super::*;
    use crate::archive::collector::Collector;
    use crate::archive::stream_source::{self, Scope};
    use crate::archive::writer::{ArchiveWriter, Codec};
    use crate::hostfs::paths::set_attrs;

    /// The per-entry manifest lines and the warnings of one volume, as `read` collects them.
    fn archived(
        read: impl FnOnce(&mut Collector<'_>, &mut dyn FnMut(String)),
    ) -> (String, Vec<String>) {
        let none = crate::crypto::Recipients::default();
        let out = Box::new(tempfile::tempfile().unwrap());
        let mut w = ArchiveWriter::new(out, Codec::Zstd { level: 1 }, &none).unwrap();
        let (mut lines, mut warnings) = (Vec::new(), Vec::new());
        let on_read = |_: u64| Ok(());
        let mut c = Collector::new(&mut w, "binds/x", &mut lines, &on_read);
        read(&mut c, &mut |s| warnings.push(s));
        drop(c);
        w.finish().unwrap();
        (String::from_utf8(lines).unwrap(), warnings)
    }

    /// What archiving `root` directly gives, and what archiving its pack gives.
    fn direct_and_packed(root: &Path) -> ((String, Vec<String>), (String, Vec<String>)) {
        let storage = root.join("backups");
        let direct = archived(|c, said| {
            crate::archive::fs_source::collect(root, &storage, None, c, said).unwrap()
        });
        let pack = root.with_extension("pack.tar");
        let done = pack_tree(root, &pack, &storage, &|| false).unwrap();
        let packed = archived(|c, said| {
            let file = File::open(&pack).unwrap();
            stream_source::collect(
                file,
                &Scope::Tree(None),
                stream_source::Origin::Pack,
                c,
                said,
            )
            .unwrap();
            done.skipped.iter().for_each(|s| said(s.clone()));
        });
        (direct, packed)
    }

    fn attrs(mode: u32, uid: u64, mtime: u64) -> Attrs {
        Attrs {
            mode,
            uid,
            gid: uid,
            mtime,
        }
    }

    #[test]
    fn a_pack_archives_exactly_what_the_tree_does() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("vol");
        // Names and link targets past the header's 100 bytes, and a path past 255.
        let deep = root.join("d".repeat(120)).join("e".repeat(150));
        fs::create_dir_all(&deep).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::create_dir_all(root.join("backups")).unwrap();
        fs::write(root.join("backups/old.tar.gz"), "old").unwrap();
        fs::create_dir(root.join(format!("{CAPTURE_MARK}1-x"))).unwrap();
        for (name, len) in [("zero", 0), ("one-block", 512), ("past-a-block", 513)] {
            fs::write(root.join(name), vec![b'z'; len]).unwrap();
        }
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i * 13 % 251) as u8).collect();
        fs::write(deep.join("f".repeat(200)), &big).unwrap();
        fs::hard_link(deep.join("f".repeat(200)), root.join("link-to-long")).unwrap();
        fs::write(root.join("a"), "a").unwrap();
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        let target = format!("{}/{}", "d".repeat(120), "e".repeat(150));
        std::os::unix::fs::symlink(&target, root.join("long-link")).unwrap();
        std::os::unix::fs::symlink("a", root.join("short-link")).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, root.join("pipe"), 0o600.into()).unwrap();
        // Runs as root (CI and the build machine): owners past the octal field, set-id bits.
        set_attrs(
            &root.join("a"),
            &attrs(0o4750, 3_000_000_000, 1_700_000_000),
            false,
        )
        .unwrap();
        set_attrs(&root.join("zero"), &attrs(0o1600, 999, 0), false).unwrap();
        set_attrs(
            &root.join("empty"),
            &attrs(0o2700, 70, 1_600_000_000),
            false,
        )
        .unwrap();
        let (direct, packed) = direct_and_packed(&root);
        assert_eq!(packed.0, direct.0);
        assert_eq!(packed.1, direct.1);
        assert_eq!(
            direct.1.len(),
            2,
            "the fifo and the storage folder: {:?}",
            direct.1
        );
        let set_id = format!("\"mode\":{}", 0o4750);
        for want in [&set_id, "3000000000", "link-to-long", &"f".repeat(200)] {
            assert!(direct.0.contains(want), "{want} in {}", direct.0);
        }
    }

    #[test]
    fn a_pack_of_one_file_is_that_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("app.conf");
        fs::write(&file, "setting = 1\n").unwrap();
        set_attrs(&file, &attrs(0o640, 33, 1_650_000_000), false).unwrap();
        let (direct, packed) = direct_and_packed(&file);
        assert_eq!(packed, direct);
        assert!(
            direct.0.contains(&format!("\"mode\":{}", 0o640)),
            "{}",
            direct.0
        );
    }

    #[test]
    fn a_file_that_shrinks_while_packed_fails_the_pack() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "short").unwrap();
        let out = File::create(d.path().join("out")).unwrap();
        let job = |len| Job {
            src_at: 0,
            from: d.path().join("f"),
            at: 512,
            len,
        };
        let e = copy_into(&job(10), &out, &mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "it shrank while it was captured");
        let through = |out: &File, len| {
            let input = File::open(d.path().join("f")).unwrap();
            copy_through(&input, 0, out, 512, len, &mut Vec::new())
        };
        let e = through(&out, 10);
        assert_eq!(
            e.unwrap_err().to_string(),
            "it shrank while it was captured"
        );
        // Across filesystems the bytes go through a buffer, to the same place.
        let out = File::create(d.path().join("out2")).unwrap();
        through(&out, 5).unwrap();
        let got = fs::read(d.path().join("out2")).unwrap();
        assert_eq!((&got[..512], &got[512..]), (&[0u8; 512][..], &b"short"[..]));
    }

    #[test]
    fn sizes_past_8_gib_and_long_names_survive_a_header() {
        let name = "n".repeat(300);
        let a = attrs(0o600, 1 << 40, 4_000_000_000);
        let bytes = header_bytes(name.as_bytes(), tar::EntryType::Regular, &a, 9 << 30, b"");
        assert_eq!(
            bytes.len(),
            512 + 512 + 512,
            "a long-name entry, its name, the header"
        );
        let mut tar_bytes = bytes;
        tar_bytes.resize(tar_bytes.len() + 1024, 0);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut entries = archive.entries().unwrap();
        let e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), name.as_bytes());
        let h = e.header();
        assert_eq!((h.size().unwrap(), h.uid().unwrap()), (9 << 30, 1 << 40));
        assert_eq!(
            (h.mode().unwrap(), h.mtime().unwrap()),
            (0o600, 4_000_000_000)
        );
    }

    #[test]
    fn a_pack_given_up_stops_with_an_error() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("vol")).unwrap();
        fs::write(d.path().join("vol/f"), "x").unwrap();
        let dst = d.path().join("pack.tar");
        let e = pack_tree(&d.path().join("vol"), &dst, Path::new("/none"), &|| true).unwrap_err();
        assert!(
            format!("{e:#}").contains("the capture was given up"),
            "{e:#}"
        );
    }
}
