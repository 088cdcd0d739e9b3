//! Where a volume's entries are written: a host folder, or a helper container of the engine.
//! Every entry passes the archive's path checker at the moment of writing, on top of the
//! verify pass before (defence in depth: a verified archive could be swapped underneath).
use std::io::Read;

use anyhow::{bail, Result};

use super::engine::Filler;
use super::host::HostWriter;
use crate::archive::safety::PathChecker;
use crate::archive::writer::Attrs;

/// One archive entry, by its path below the volume's root.
pub struct Entry<'a> {
    pub rel: &'a [u8],
    pub kind: tar::EntryType,
    pub attrs: Attrs,
    pub size: u64,
    /// A symlink's target as stored, or a hard link's target below the volume's root.
    pub link: Option<&'a [u8]>,
}

/// Writes the entries of one volume.
pub trait Sink {
    fn write(&mut self, e: &Entry<'_>, data: &mut dyn Read) -> Result<()>;
    /// Applies what must come last (folder attributes) and flushes.
    fn finish(self: Box<Self>) -> Result<()>;
}

impl Sink for HostWriter {
    fn write(&mut self, e: &Entry<'_>, data: &mut dyn Read) -> Result<()> {
        let link = e.link.unwrap_or_default();
        match e.kind {
            tar::EntryType::Directory => self.dir(e.rel, &e.attrs),
            tar::EntryType::Symlink => self.symlink(e.rel, &e.attrs, link),
            tar::EntryType::Link => self.hardlink(e.rel, link),
            _ => self.file(e.rel, &e.attrs, data),
        }
    }

    fn finish(self: Box<Self>) -> Result<()> {
        HostWriter::finish(*self)
    }
}

impl Sink for Filler {
    fn write(&mut self, e: &Entry<'_>, data: &mut dyn Read) -> Result<()> {
        self.entry(e.rel, e.kind, &e.attrs, e.size, e.link, data)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Filler::finish(*self)
    }
}

/// One volume's folder in the archive (`binds/data`) and the sink its entries go to.
pub struct VolumeOut {
    pub folder: Vec<u8>,
    checker: PathChecker,
    sink: Box<dyn Sink>,
}

impl VolumeOut {
    pub fn new(folder: &[u8], sink: Box<dyn Sink>) -> VolumeOut {
        VolumeOut {
            folder: folder.to_vec(),
            checker: PathChecker::default(),
            sink,
        }
    }

    /// Checks and writes one archive entry of this volume.
    pub fn write<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let path = entry.path_bytes().into_owned();
        let h = entry.header();
        let kind = h.entry_type();
        let attrs = Attrs {
            mode: h.mode()?,
            uid: h.uid()?,
            gid: h.gid()?,
            mtime: h.mtime()?,
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        if let Some(why) = self.checker.check(&path, kind, link.as_deref()) {
            bail!("refusing to write unsafe entry {why}");
        }
        let below = |p: &[u8]| p.get(self.folder.len() + 1..).unwrap_or_default().to_vec();
        let link = match kind {
            tar::EntryType::Link => link.as_deref().map(below),
            _ => link,
        };
        let e = Entry {
            rel: &below(&path),
            kind,
            attrs,
            size: entry.size(),
            link: link.as_deref(),
        };
        self.sink.write(&e, entry)
    }

    pub fn finish(self) -> Result<()> {
        self.sink.finish()
    }
}
