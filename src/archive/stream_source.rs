//! Re-files a tar stream into a [`Collector`]: `docker cp CTR:/path/. -`, or a pack (see
//! `backup::pack`).
use std::io::Read;

use anyhow::{Context, Result};

use super::collector::Collector;
use super::sparse::{self, DataMap};
use super::writer::Attrs;
use super::xattrs::{self, Xattrs};

/// `./a/b` → `a/b`; `./` and `.` → `` (the root).
fn relative(p: &[u8]) -> Vec<u8> {
    let mut p = p;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    if p == b"." {
        p = b"";
    }
    p.strip_suffix(b"/").unwrap_or(p).to_vec()
}

/// What a `docker cp` stream holds.
pub enum Scope {
    /// A folder's content (`CTR:/path/.`), less a sub-folder when given (the storage folder).
    Tree(Option<Vec<u8>>),
    /// One file (`CTR:/path/name`): its single entry is the volume's root.
    File(Vec<u8>),
}

impl Scope {
    /// The entry's path relative to the volume's root, or `None` to leave it out.
    fn place(&self, p: &[u8]) -> Option<Vec<u8>> {
        let rel = relative(p);
        match self {
            Scope::File(name) if rel == *name => Some(Vec::new()),
            Scope::File(_) => None,
            Scope::Tree(Some(skip))
                if rel.starts_with(skip)
                    && (rel.len() == skip.len() || rel[skip.len()] == b'/') =>
            {
                None
            }
            Scope::Tree(_) => Some(rel),
        }
    }
}

/// Where a tar stream comes from: a pack this tool wrote (names exact), or the engine's
/// `docker cp` (which drops the bytes that are not UTF-8 from a name with a newline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Pack,
    Engine,
}

/// Why `rel` cannot be archived exactly from a stream of `origin`, or `None`. A name seen
/// twice, or (from the engine) a name with a newline: never archived under another name.
fn inexact(rel: &[u8], origin: Origin, seen: &mut Seen) -> Option<String> {
    use std::hash::BuildHasher as _;
    let shown = format!("{:?}", String::from_utf8_lossy(rel));
    let fix =
        "rename it, or read the volume from disk (as root, without NUWAX_BACKUP_VOLUME_IO=engine)";
    if origin == Origin::Engine && rel.contains(&b'\n') {
        return Some(format!(
            "{shown} has a newline in its name, which the engine's copy stream does not carry exactly: {fix}"
        ));
    }
    if !seen.0.insert(seen.1.hash_one(rel)) {
        return Some(format!(
            "{shown} appears twice in the stream (a name it could not carry exactly): {fix}"
        ));
    }
    None
}

/// The names read so far, as 64-bit hashes.
struct Seen(std::collections::HashSet<u64>, std::hash::RandomState);

/// Reads every entry of `stream` within `scope`; devices and fifos are skipped through `warn`.
/// Fails, naming the path, on a name it cannot archive exactly (see [`Origin`]).
pub fn collect<R: Read>(
    stream: R,
    scope: &Scope,
    origin: Origin,
    c: &mut Collector<'_>,
    warn: &mut dyn FnMut(String),
) -> Result<()> {
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, stream));
    let mut seen = Seen(Default::default(), Default::default());
    for entry in archive.entries().context("reading the tar stream")? {
        let mut entry = entry.context("reading the tar stream")?;
        crate::cancel::check()?;
        let (x, map) = extended(&mut entry, origin)?;
        let h = entry.header();
        let Some(rel) = scope.place(&entry.path_bytes()) else {
            continue;
        };
        if let Some(why) = inexact(&rel, origin, &mut seen) {
            anyhow::bail!(why);
        }
        let a = Attrs {
            mode: h.mode().unwrap_or(0o644),
            uid: h.uid().unwrap_or(0),
            gid: h.gid().unwrap_or(0),
            mtime: h.mtime().unwrap_or(0),
        };
        match h.entry_type() {
            tar::EntryType::Directory => c.dir(&rel, &a, &x)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = map.as_ref().map_or(entry.size(), |m| m.size);
                c.file(&rel, (&a, &x), size, map.as_ref(), entry)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                c.symlink(&rel, (&a, &x), &target)?;
            }
            tar::EntryType::Link => {
                let target = relative(&entry.link_name_bytes().unwrap_or_default());
                c.hardlink(&rel, &a, &target)?;
            }
            other => warn(format!(
                "skipped {} ({other:?} entries cannot be backed up)",
                String::from_utf8_lossy(&rel)
            )),
        }
    }
    Ok(())
}

/// An entry's extended attributes, and (in a pack) the map of a file stored sparse.
fn extended<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    origin: Origin,
) -> Result<(Xattrs, Option<DataMap>)> {
    let mut map = None;
    if origin == Origin::Pack {
        for r in entry.pax_extensions()?.into_iter().flatten() {
            let r = r?;
            if r.key() == Ok(sparse::PACK_KEY) {
                map = Some(
                    DataMap::from_record(r.value_bytes())
                        .context("a bad sparse map in the pack")?,
                );
            }
        }
    }
    Ok((xattrs::of_entry(entry)?, map))
}

#[cfg(test)]
mod tests {
    use super::{relative, Scope};

    #[test]
    fn docker_cp_prefixes_are_removed() {
        assert_eq!(relative(b"./"), b"");
        assert_eq!(relative(b"."), b"");
        assert_eq!(relative(b"./sub/"), b"sub");
        assert_eq!(relative(b"./sub/f"), b"sub/f");
    }

    #[test]
    fn scopes_place_entries_and_leave_the_storage_folder_out() {
        let tree = Scope::Tree(Some(b"backups".to_vec()));
        assert_eq!(tree.place(b"./"), Some(Vec::new()));
        assert_eq!(tree.place(b"./backups"), None);
        assert_eq!(tree.place(b"./backups/x.tar.gz"), None);
        assert_eq!(tree.place(b"./backups2/x"), Some(b"backups2/x".to_vec()));
        let file = Scope::File(b"f.conf".to_vec());
        assert_eq!(file.place(b"f.conf"), Some(Vec::new()));
        assert_eq!(file.place(b"other"), None);
    }

    #[test]
    fn names_the_engine_cannot_carry_are_refused_by_name() {
        use super::{inexact, Origin, Seen};
        let mut seen = Seen(Default::default(), Default::default());
        assert_eq!(inexact(b"a/b", Origin::Engine, &mut seen), None);
        let twice = inexact(b"a/b", Origin::Pack, &mut seen).unwrap();
        assert!(
            twice.starts_with("\"a/b\" appears twice in the stream"),
            "{twice}"
        );
        let nl = inexact(b"nl\ndir/qz", Origin::Engine, &mut seen).unwrap();
        assert!(
            nl.starts_with("\"nl\\ndir/qz\" has a newline in its name"),
            "{nl}"
        );
        assert_eq!(inexact(b"nl\ndir/qz", Origin::Pack, &mut seen), None);
    }
}
