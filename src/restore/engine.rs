//! Filling a volume (or a bind's folder) through the engine: `docker cp` into a never-started
//! helper container that mounts it with `nocopy`, so the image's own files are never copied
//! in and owners come from the archive. The volume itself is made by [`crate::volumes`].
use std::io::{BufWriter, Read, Write};

use anyhow::{bail, Context as _, Result};

use crate::archive::writer::header;
use crate::archive::xattrs;
use crate::docker::{Docker, Sink};
use crate::volumes::{create_helper, split, PARENT_DIR};

/// Where the helper container mounts the volume; entries are written below it, so that the
/// volume's root gets its recorded owner and mode too.
const FILL_DIR: &str = ".nuwax-fill";

/// A tar stream into a helper container that mounts one volume (or a bind's parent folder).
pub struct Filler {
    docker: Docker,
    container: String,
    /// Where entries go inside the container: the volume's mount, or the staging folder.
    root: String,
    /// A host folder whose filesystem is synced once the stream is written (binds).
    sync: Option<std::path::PathBuf>,
    builder: Option<tar::Builder<BufWriter<std::process::ChildStdin>>>,
    sink: Option<Sink>,
}

impl Filler {
    /// Creates (never starts) a helper container from `image` mounting `volume` with `nocopy`.
    pub fn start(docker: &Docker, volume: &str, image: &str) -> Result<Filler> {
        let container = format!("nuwax-fill-{}-{}", std::process::id(), volume);
        create_helper(
            docker,
            &container,
            &format!("{volume}:/{FILL_DIR}:nocopy"),
            image,
        )
        .with_context(|| format!("creating a helper container from {image} to fill {volume}"))?;
        Filler::open(docker, container, FILL_DIR.into(), None)
    }

    /// Writes `staging`, a new folder or file beside a bind, as root through the engine (so
    /// owners this process cannot set are kept): the helper mounts the bind's parent folder.
    pub fn beside(docker: &Docker, staging: &std::path::Path, image: &str) -> Result<Filler> {
        let (parent, name) = split(staging)?;
        let safe: String = name
            .trim_start_matches('.')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let container = format!("nuwax-fill-{}-bind-{safe}", std::process::id());
        let mount = format!("{}:/{PARENT_DIR}", parent.display());
        create_helper(docker, &container, &mount, image).with_context(|| {
            format!(
                "creating a helper container from {image} to write {}",
                staging.display()
            )
        })?;
        let root = format!("{PARENT_DIR}/{name}");
        Filler::open(docker, container, root, Some(parent.to_path_buf()))
    }

    fn open(
        docker: &Docker,
        container: String,
        root: String,
        sync: Option<std::path::PathBuf>,
    ) -> Result<Filler> {
        let mut sink = docker.sink(&["cp", "-", &format!("{container}:/")])?;
        let stdin = sink.take_stdin();
        Ok(Filler {
            docker: docker.clone(),
            container,
            root,
            sync,
            builder: Some(tar::Builder::new(BufWriter::with_capacity(
                256 << 10,
                stdin,
            ))),
            sink: Some(sink),
        })
    }

    fn path(&self, rel: &[u8]) -> Vec<u8> {
        let mut p = self.root.as_bytes().to_vec();
        if !rel.is_empty() {
            p.push(b'/');
            p.extend_from_slice(rel);
        }
        p
    }

    fn builder(&mut self) -> Result<&mut tar::Builder<BufWriter<std::process::ChildStdin>>> {
        self.builder.as_mut().context("the fill stream is closed")
    }

    /// Appends one entry; `data` is read only for regular files.
    /// Extended attributes go as PAX records (the engine sets them; holes are written as zeros).
    pub fn entry(&mut self, e: &super::sink::Entry<'_>, data: &mut dyn Read) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::ffi::OsStrExt;
        let (rel, kind, a, size, link) = (e.rel, e.kind, &e.attrs, e.size, e.link);
        let path = self.path(rel);
        let hard_target =
            (kind == tar::EntryType::Link).then(|| self.path(link.unwrap_or_default()));
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
        let b = self.builder()?;
        if !e.xattrs.is_empty() {
            let block = xattrs::pax_block(&xattrs::pax_records(e.xattrs));
            b.get_mut().write_all(&block)?;
        }
        match kind {
            tar::EntryType::Directory => {
                b.append_data(&mut header(kind, a, 0), p, std::io::empty())?
            }
            tar::EntryType::Symlink => {
                let target = std::ffi::OsStr::from_bytes(link.unwrap_or_default());
                b.append_link(&mut header(kind, a, 0), p, target)?
            }
            tar::EntryType::Link => b.append_link(
                &mut header(kind, a, 0),
                p,
                std::ffi::OsStr::from_bytes(hard_target.as_deref().unwrap_or_default()),
            )?,
            _ => b.append_data(&mut header(tar::EntryType::Regular, a, size), p, data)?,
        }
        Ok(())
    }

    /// Ends the stream, waits for `docker cp`, removes the helper container, and for a bind
    /// flushes the filesystem, so the staged content is on disk before it is swapped in.
    pub fn finish(mut self) -> Result<()> {
        let result = self.close();
        let _ = self.docker.output(&["rm", "-f", &self.container]);
        result?;
        match self.sync.take() {
            Some(dir) => crate::hostfs::paths::syncfs(&dir),
            None => Ok(()),
        }
    }

    fn close(&mut self) -> Result<()> {
        if let Some(b) = self.builder.take() {
            let mut w = b.into_inner().context("ending the fill stream")?;
            w.flush().context("ending the fill stream")?;
        }
        match self.sink.take() {
            Some(s) => s.finish(),
            None => bail!("the fill stream was already closed"),
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if self.sink.is_some() {
            drop(self.builder.take());
            if let Some(s) = self.sink.take() {
                let _ = s.finish();
            }
            let _ = self.docker.output(&["rm", "-f", &self.container]);
        }
    }
}
