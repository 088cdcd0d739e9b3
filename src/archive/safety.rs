//! Which archive entries may be written: one checker for the verify pass and for the moment
//! of writing (defence in depth; the kernel is the last check, see `hostfs::beneath`). Every
//! name must be canonical (`names`), may not repeat an earlier entry's path, and may not lie
//! below an earlier symlink; a hard link must name a file written earlier in its own volume.
//! Linear in the entries: each entry looks up its own ancestors in a table of 64-bit hashes
//! of the paths seen (8 bytes and a kind each, whatever the paths' length): a collision could
//! only refuse a sound archive, never pass a bad one.
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use super::names::{key, noncanonical};

/// What an earlier entry made at a path; `Implied` is a folder an earlier entry lies below
/// (no entry of its own yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Dir,
    File,
    Symlink,
    Implied,
}

/// Entries checked so far (in archive order); rejects what could write outside a volume.
#[derive(Default)]
pub struct PathChecker {
    seen: HashMap<u64, Made>,
    keys: RandomState,
}

impl PathChecker {
    /// Why the entry may not be extracted, or `None` when it is safe. Records the entry: no
    /// later entry may repeat its path or be written through it when it is a symlink.
    pub fn check(
        &mut self,
        path: &[u8],
        kind: tar::EntryType,
        link: Option<&[u8]>,
    ) -> Option<String> {
        let shown = String::from_utf8_lossy(path);
        let made = match kind {
            tar::EntryType::Directory => Made::Dir,
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Link => Made::File,
            tar::EntryType::Symlink => Made::Symlink,
            other => {
                return Some(format!(
                    "{shown}: {other:?} entries (devices, fifos) are refused"
                ))
            }
        };
        if let Some(why) = noncanonical(path, made == Made::Dir) {
            return Some(format!("{shown}: {why}"));
        }
        if let Some(s) = self.through_symlink(path) {
            return Some(format!(
                "{shown}: written through the symlink {}",
                String::from_utf8_lossy(s)
            ));
        }
        if kind == tar::EntryType::Link {
            if let Some(why) = self.link_target(path, link.unwrap_or_default()) {
                return Some(format!("{shown}: hard link to {why}"));
            }
        }
        let k = self.key(key(path));
        match (self.seen.get(&k).copied(), made) {
            (None, _) | (Some(Made::Implied), Made::Dir) => {
                self.seen.insert(k, made);
            }
            (Some(Made::Implied), _) => {
                return Some(format!("{shown}: a folder that earlier entries lie below"))
            }
            (Some(_), _) => return Some(format!("{shown}: repeats the path of an earlier entry")),
        }
        self.imply_parents(key(path));
        None
    }

    /// Records the folders `path` lies below, up to the first one already known: a later
    /// entry may not make any of them a symlink or a file.
    fn imply_parents(&mut self, path: &[u8]) {
        let mut p = path;
        while let Some(i) = p.iter().rposition(|b| *b == b'/') {
            p = &p[..i];
            let k = self.key(p);
            if self.seen.contains_key(&k) {
                return;
            }
            self.seen.insert(k, Made::Implied);
        }
    }

    /// Why a hard link at `path` may not point at `target`: it must name, canonically, a file
    /// an earlier entry of the same volume wrote.
    fn link_target(&self, path: &[u8], target: &[u8]) -> Option<String> {
        let t = String::from_utf8_lossy(target);
        if let Some(why) = noncanonical(target, false) {
            return Some(format!("{t}: {why}"));
        }
        if volume_of(target).is_none() || volume_of(target) != volume_of(path) {
            return Some(format!("{t}, which leaves its volume"));
        }
        match self.seen.get(&self.key(target)) {
            Some(Made::File) => None,
            Some(_) => Some(format!("{t}, which is not a file")),
            None => Some(format!("{t}, which no earlier entry wrote")),
        }
    }

    fn key(&self, path: &[u8]) -> u64 {
        self.keys.hash_one(path)
    }

    /// The first ancestor of `path` that an earlier entry made a symlink. A parent already
    /// known as a folder was checked with its own ancestors, which can no longer change (they
    /// are recorded): one look-up suffices then.
    fn through_symlink<'a>(&self, path: &'a [u8]) -> Option<&'a [u8]> {
        let path = key(path);
        let parent = path.iter().rposition(|b| *b == b'/').map(|i| &path[..i]);
        let known = parent.and_then(|p| self.seen.get(&self.key(p)));
        if matches!(known, Some(Made::Dir | Made::Implied)) {
            return None;
        }
        path.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(|(i, _)| &path[..i])
            .find(|prefix| self.seen.get(&self.key(prefix)) == Some(&Made::Symlink))
    }
}

/// `volumes/<key>` or `binds/<slug>` of an archive path.
pub fn volume_of(p: &[u8]) -> Option<&[u8]> {
    let mut parts = p.splitn(3, |b| *b == b'/');
    let top = parts.next()?;
    let name = parts.next()?;
    if (top == b"volumes" || top == b"binds") && !name.is_empty() {
        Some(&p[..top.len() + 1 + name.len()])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType::{Directory, Link, Regular, Symlink};

    #[test]
    fn refuses_what_leaves_the_volume() {
        let mut c = PathChecker::default();
        assert_eq!(c.check(b"binds/d/a", Regular, None), None);
        assert!(c.check(b"/etc/passwd", Regular, None).is_some());
        assert!(c.check(b"binds/d/../../x", Regular, None).is_some());
        assert!(c.check(b"binds/d/h", Link, Some(b"volumes/v/a")).is_some());
        assert!(c
            .check(b"binds/d/fifo", tar::EntryType::Fifo, None)
            .is_some());
        let dev = c.check(b"binds/d/dev", tar::EntryType::Char, None).unwrap();
        assert!(dev.contains("devices"), "{dev}");
        let abs = c.check(b"/etc/passwd", Regular, None).unwrap();
        assert!(abs.contains("absolute"), "{abs}");
        assert_eq!(c.check(b"binds/d/h", Link, Some(b"binds/d/a")), None);
    }

    #[test]
    fn nothing_is_written_through_a_symlink_seen_before() {
        let mut c = PathChecker::default();
        assert_eq!(c.check(b"binds/d/ln", Symlink, Some(b"/etc")), None);
        let why = c.check(b"binds/d/ln/passwd", Regular, None).unwrap();
        assert!(why.contains("through the symlink binds/d/ln"), "{why}");
        assert!(c.check(b"binds/d/ln/sub/", Directory, None).is_some());
        assert!(c
            .check(b"binds/d/h", Link, Some(b"binds/d/ln/passwd"))
            .is_some());
        assert_eq!(c.check(b"binds/d/lnx/f", Regular, None), None);
    }

    #[test]
    fn a_dot_spelling_cannot_hide_a_symlink() {
        let mut c = PathChecker::default();
        assert_eq!(c.check(b"binds/d/ln", Symlink, Some(b"/etc")), None);
        let why = c.check(b"binds/d/./ln/file", Regular, None).unwrap();
        assert!(why.contains("`.` component"), "{why}");
        let why = c
            .check(b"binds/d/h", Link, Some(b"binds/d/./ln/passwd"))
            .unwrap();
        assert!(why.contains("`.` component"), "{why}");
        assert!(c.check(b"binds/d//ln/x", Regular, None).is_some());
    }

    #[test]
    fn a_path_is_written_once() {
        let mut c = PathChecker::default();
        assert_eq!(c.check(b"binds/d/f", Symlink, Some(b"/etc/shadow")), None);
        let why = c.check(b"binds/d/f", Regular, None).unwrap();
        assert!(why.contains("repeats the path"), "{why}");
        assert_eq!(c.check(b"binds/d/sub", Directory, None), None);
        assert!(c.check(b"binds/d/sub/", Directory, None).is_some());
        assert_eq!(c.check(b"binds/d/q", Regular, None), None);
        assert!(c.check(b"binds/d/q", Regular, None).is_some());
    }

    #[test]
    fn a_folder_below_which_entries_were_written_cannot_become_a_symlink() {
        let mut c = PathChecker::default();
        assert_eq!(c.check(b"binds/d/a/b", Directory, None), None);
        let why = c.check(b"binds/d/a", Symlink, Some(b"/etc")).unwrap();
        assert!(
            why.contains("a folder that earlier entries lie below"),
            "{why}"
        );
        assert_eq!(c.check(b"binds/d/a/b/f", Regular, None), None);
        assert!(c.check(b"binds/d/a/b", Regular, None).is_some());
        // Its own folder entry may still come after what lies below it.
        assert_eq!(c.check(b"binds/d/a", Directory, None), None);
        assert!(c.check(b"binds/d/a", Directory, None).is_some());
    }

    #[test]
    fn hard_links_name_an_earlier_file_of_their_volume() {
        let mut c = PathChecker::default();
        let why = c.check(b"binds/d/h", Link, Some(b"binds/d/later")).unwrap();
        assert!(why.contains("no earlier entry wrote"), "{why}");
        assert_eq!(c.check(b"binds/d/dir", Directory, None), None);
        assert_eq!(c.check(b"binds/d/sl", Symlink, Some(b"x")), None);
        assert!(c.check(b"binds/d/h2", Link, Some(b"binds/d/dir")).is_some());
        assert!(c.check(b"binds/d/h3", Link, Some(b"binds/d/sl")).is_some());
        assert_eq!(c.check(b"binds/d/f", Regular, None), None);
        assert_eq!(c.check(b"binds/d/h4", Link, Some(b"binds/d/f")), None);
        assert_eq!(c.check(b"binds/d/h5", Link, Some(b"binds/d/h4")), None);
    }

    #[test]
    fn symlinks_at_any_depth() {
        let mut c = PathChecker::default();
        assert_eq!(c.check(b"volumes/v/a/b/c/deep", Symlink, Some(b"/")), None);
        assert!(c
            .check(b"volumes/v/a/b/c/deep/x/y", Regular, None)
            .is_some());
        assert_eq!(c.check(b"volumes/v/a/b/c/deep2/x", Regular, None), None);
        assert!(c
            .check(b"volumes/v/a/b/c/deep/l2", Symlink, Some(b"x"))
            .is_some());
        assert_eq!(c.check(b"volumes/v/l1", Symlink, Some(b"a/b/c/deep")), None);
        assert!(c.check(b"volumes/v/l1/f", Regular, None).is_some());
        assert_eq!(c.check(b"volumes/v/a/link", Symlink, Some(b"/etc")), None);
        assert_eq!(c.check(b"volumes/v/a/link2/x", Regular, None), None);
        assert_eq!(c.check(b"volumes/v/a/lin/x", Regular, None), None);
        assert_eq!(
            c.check(b"volumes/v/h", Link, Some(b"volumes/v/a/lin/x")),
            None
        );
        assert!(c
            .check(b"volumes/v/h2", Link, Some(b"volumes/v/a/link/passwd"))
            .is_some());
        assert!(c.check(b"volumes/v/h3", Link, Some(b"binds/b/x")).is_some());
    }
}
