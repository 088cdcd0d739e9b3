//! Reads a bind-mounted host path (folder or single file) into a [`Collector`].
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::collector::Collector;
use super::writer::Attrs;

fn attrs(m: &std::fs::Metadata) -> Attrs {
    Attrs {
        mode: m.mode() & 0o7777,
        uid: m.uid() as u64,
        gid: m.gid() as u64,
        mtime: m.mtime().max(0) as u64,
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
    let mut seen_inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    let excluded = std::cell::Cell::new(false);
    let walker = walker.filter_entry(|e| {
        let is_storage = e.path() == exclude;
        excluded.set(excluded.get() || is_storage);
        !is_storage
    });
    for entry in walker {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        crate::cancel::check()?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(Path::new(""))
            .as_os_str()
            .as_bytes()
            .to_vec();
        let meta = entry
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        let a = attrs(&meta);
        let ft = meta.file_type();
        if ft.is_dir() {
            c.dir(&rel, &a)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path)
                .with_context(|| format!("reading link {}", path.display()))?;
            c.symlink(&rel, &a, target.as_os_str().as_bytes())?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = seen_inodes.get(&key) {
                    c.hardlink(&rel, &a, &first.clone())?;
                    continue;
                }
                seen_inodes.insert(key, rel.clone());
            }
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            c.file(&rel, &a, meta.len(), f)
                .with_context(|| format!("reading {}", path.display()))?;
        } else {
            warn(format!(
                "skipped {} (a socket, fifo or device cannot be backed up)",
                path.display()
            ));
        }
    }
    if excluded.get() {
        warn(format!(
            "skipped {} (the backup storage folder)",
            exclude.display()
        ));
    }
    Ok(())
}

/// Bytes of regular files below `root` (for the free-space check and the plan).
pub fn size_of(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
