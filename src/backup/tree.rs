//! Walks a volume's tree for a capture, in name order as the archive walks it: the root is
//! followed when it is a symlink (as the engine follows it when mounting), nothing below it
//! is; captures and the storage folder are left out, and so is what an archive cannot hold
//! (sockets, fifos, devices), each said in the archive's own words about the original path.
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::copy::CAPTURE_MARK;
use crate::archive::writer::Attrs;
use crate::archive::xattrs::{self, On, Xattrs};
use std::os::fd::AsFd;

/// A folder, a symlink or a regular file of the tree.
pub struct Entry<'a> {
    pub from: &'a Path,
    /// Its path inside the tree (empty: the root).
    pub rel: &'a Path,
    pub meta: fs::Metadata,
    pub attrs: Attrs,
    pub xattrs: Xattrs,
}

/// Calls `visit` on each entry of `src` (a folder or one file) but `exclude` (the storage
/// folder); returns what was left out. Stops with an error as soon as `give_up()` (checked
/// before each entry).
pub fn walk(
    src: &Path,
    exclude: &Path,
    give_up: &dyn Fn() -> bool,
    visit: &mut dyn FnMut(Entry<'_>) -> Result<()>,
) -> Result<Vec<String>> {
    let mut skipped = Vec::new();
    let mut walk = walkdir::WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            !e.file_name()
                .as_bytes()
                .starts_with(CAPTURE_MARK.as_bytes())
        });
    while let Some(e) = walk.next() {
        crate::cancel::check()?;
        if give_up() {
            anyhow::bail!("the capture was given up");
        }
        let e = e.with_context(|| format!("reading {}", src.display()))?;
        if e.file_type().is_dir() && e.path() == exclude {
            skipped.push(format!(
                "skipped {} (the backup storage folder)",
                e.path().display()
            ));
            walk.skip_current_dir();
            continue;
        }
        let meta = if e.depth() == 0 {
            fs::metadata(e.path())
        } else {
            fs::symlink_metadata(e.path())
        }
        .with_context(|| format!("reading {}", e.path().display()))?;
        let ft = meta.file_type();
        if !(ft.is_dir() || ft.is_symlink() || ft.is_file()) {
            skipped.push(format!(
                "skipped {} (a socket, fifo or device cannot be backed up)",
                e.path().display()
            ));
            continue;
        }
        let xattrs = xattrs_of(e.path(), e.depth() == 0).with_context(|| {
            format!("reading the extended attributes of {}", e.path().display())
        })?;
        visit(Entry {
            from: e.path(),
            rel: e.path().strip_prefix(src).unwrap_or(Path::new("")),
            attrs: attrs_of(&meta),
            meta,
            xattrs,
        })?;
    }
    Ok(skipped)
}

/// An entry's own extended attributes (the root's are its target's when it is a symlink).
fn xattrs_of(p: &Path, root: bool) -> std::io::Result<Xattrs> {
    if root {
        return xattrs::read(On::Fd(fs::File::open(p)?.as_fd()));
    }
    xattrs::read(On::Link(p))
}

fn attrs_of(m: &fs::Metadata) -> Attrs {
    Attrs {
        mode: m.mode() & 0o7777,
        uid: u64::from(m.uid()),
        gid: u64::from(m.gid()),
        mtime: m.mtime().max(0) as u64,
    }
}
