//! Appends one volume's entries under its folder in the archive and records each in the manifest.
use std::io::{self, Read, Write};

use anyhow::{bail, Result};

use super::hashing::HashingReader;
use super::manifest::{path_text, EntryKind, FileEntry, FileLine, RootAttrs};
use super::sparse::DataMap;
use super::writer::{ArchiveWriter, Attrs};
use super::xattrs::{manifest_map, Xattrs};

/// Called with the byte count of every read: progress, and `Err` to cancel.
pub type OnRead<'a> = &'a dyn Fn(u64) -> io::Result<()>;

pub struct Collector<'a> {
    writer: &'a mut ArchiveWriter,
    prefix: Vec<u8>,
    on_read: OnRead<'a>,
    /// Where each entry's [`FileLine`] goes (a spill file, appended to the archive at the end).
    lines: &'a mut dyn Write,
    pub file_count: u64,
    pub bytes: u64,
    pub root: Option<RootAttrs>,
}

impl<'a> Collector<'a> {
    /// Entries go below `prefix` (e.g. `volumes/dbdata`); the entry with an empty path is
    /// the volume's root and is stored at `prefix` itself. Each entry is described on `lines`.
    pub fn new(
        writer: &'a mut ArchiveWriter,
        prefix: &str,
        lines: &'a mut dyn Write,
        on_read: OnRead<'a>,
    ) -> Self {
        Collector {
            writer,
            prefix: prefix.as_bytes().to_vec(),
            on_read,
            lines,
            file_count: 0,
            bytes: 0,
            root: None,
        }
    }

    fn archive_path(&self, rel: &[u8]) -> Vec<u8> {
        let mut p = self.prefix.clone();
        if !rel.is_empty() {
            p.push(b'/');
            p.extend_from_slice(rel);
        }
        p
    }

    fn record(
        &mut self,
        rel: &[u8],
        kind: EntryKind,
        (a, x): (&Attrs, &Xattrs),
        size: u64,
        blake3: Option<String>,
        link: Option<&[u8]>,
    ) -> Result<()> {
        if rel.is_empty() {
            self.root = Some(RootAttrs {
                uid: a.uid,
                gid: a.gid,
                mode: a.mode & 0o7777,
            });
        }
        let (path, path_hex) = path_text(rel);
        let entry = FileEntry {
            path,
            path_hex,
            kind,
            mode: a.mode & 0o7777,
            uid: a.uid,
            gid: a.gid,
            mtime: a.mtime,
            size,
            blake3,
            link: link.map(|l| String::from_utf8_lossy(l).into_owned()),
            xattrs: manifest_map(x),
        };
        let line = FileLine {
            volume: String::from_utf8_lossy(&self.prefix).into_owned(),
            entry,
        };
        serde_json::to_writer(&mut *self.lines, &line)?;
        self.lines.write_all(b"\n")?;
        Ok(())
    }

    pub fn dir(&mut self, rel: &[u8], a: &Attrs, x: &Xattrs) -> Result<()> {
        self.writer.append_dir(&self.archive_path(rel), a, x)?;
        self.record(rel, EntryKind::Dir, (a, x), 0, None, None)
    }

    /// A regular file of `size` bytes; fails if `data` does not yield exactly that many. With
    /// a `map` (a file with holes), `data` yields only the map's data ranges.
    pub fn file<R: Read>(
        &mut self,
        rel: &[u8],
        (a, x): (&Attrs, &Xattrs),
        size: u64,
        map: Option<&DataMap>,
        data: R,
    ) -> Result<()> {
        let (stored, gaps) = match map {
            Some(m) => (m.stored(), m.gaps()),
            None => (size, Vec::new()),
        };
        let mut hashing = HashingReader::new(data.take(stored), self.on_read).with_gaps(gaps);
        let path = self.archive_path(rel);
        self.writer
            .append_file(&path, (a, x), size, map, &mut hashing)?;
        let (read, sha) = hashing.finish();
        if read != stored {
            bail!(
                "{} changed size while it was read ({stored} bytes expected, {read} read)",
                String::from_utf8_lossy(rel)
            );
        }
        self.file_count += 1;
        self.bytes += size;
        self.record(rel, EntryKind::File, (a, x), size, Some(sha), None)
    }

    pub fn symlink(&mut self, rel: &[u8], (a, x): (&Attrs, &Xattrs), target: &[u8]) -> Result<()> {
        self.writer
            .append_symlink(&self.archive_path(rel), (a, x), target)?;
        self.record(rel, EntryKind::Symlink, (a, x), 0, None, Some(target))
    }

    /// A hard link to `target_rel`, a path of this volume appended before.
    pub fn hardlink(&mut self, rel: &[u8], a: &Attrs, target_rel: &[u8]) -> Result<()> {
        let target = self.archive_path(target_rel);
        self.writer
            .append_hardlink(&self.archive_path(rel), a, &target)?;
        self.record(
            rel,
            EntryKind::Hardlink,
            (a, &Xattrs::new()),
            0,
            None,
            Some(target_rel),
        )
    }
}
