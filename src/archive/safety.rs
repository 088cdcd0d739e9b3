//! Which archive entries may be written: one checker for the verify pass and for the moment
//! of writing (defence in depth). Linear in the entries: symlinks are kept in a set and each
//! entry looks up its own ancestors, so the cost is the path's depth, not the links seen.
//! The set holds 64-bit hashes of the symlinks' paths (8 bytes each, whatever the paths'
//! length): a collision could only refuse a sound archive, never pass a bad one.
use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::path::{Component, Path};

/// Entries checked so far (in archive order); rejects what could write outside a volume.
#[derive(Default)]
pub struct PathChecker {
    symlinks: HashSet<u64>,
    keys: RandomState,
}

impl PathChecker {
    /// Why the entry may not be extracted, or `None` when it is safe. Records symlinks: no
    /// later entry may be written through one.
    pub fn check(
        &mut self,
        path: &[u8],
        kind: tar::EntryType,
        link: Option<&[u8]>,
    ) -> Option<String> {
        let shown = String::from_utf8_lossy(path);
        if !is_plain_relative(path) {
            return Some(format!("{shown}: absolute path or `..` in the archive"));
        }
        match kind {
            tar::EntryType::Directory | tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink => {}
            tar::EntryType::Link => {
                let target = link.unwrap_or_default();
                if !is_plain_relative(target)
                    || volume_of(target) != volume_of(path)
                    || volume_of(path).is_none()
                    || self.through_symlink(target).is_some()
                {
                    return Some(format!(
                        "{shown}: hard link to {} leaves its volume",
                        String::from_utf8_lossy(target)
                    ));
                }
            }
            other => {
                return Some(format!(
                    "{shown}: {other:?} entries (devices, fifos) are refused"
                ))
            }
        }
        if let Some(s) = self.through_symlink(path) {
            return Some(format!(
                "{shown}: written through the symlink {}",
                String::from_utf8_lossy(s)
            ));
        }
        if kind == tar::EntryType::Symlink {
            self.symlinks.insert(self.key(trim_slashes(path)));
        }
        None
    }

    fn key(&self, path: &[u8]) -> u64 {
        self.keys.hash_one(path)
    }

    /// The first ancestor of `path` that is a symlink seen earlier.
    fn through_symlink<'a>(&self, path: &'a [u8]) -> Option<&'a [u8]> {
        if self.symlinks.is_empty() {
            return None;
        }
        let path = trim_slashes(path);
        path.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(|(i, _)| &path[..i])
            .find(|prefix| self.symlinks.contains(&self.key(prefix)))
    }
}

fn trim_slashes(p: &[u8]) -> &[u8] {
    let mut p = p;
    while let [rest @ .., b'/'] = p {
        p = rest;
    }
    p
}

fn is_plain_relative(p: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(p));
    !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
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
        assert_eq!(c.check(b"binds/d/ln", Regular, None), None);
    }

    #[test]
    fn symlinks_at_any_depth_and_links_to_links() {
        let mut c = PathChecker::default();
        assert_eq!(c.check(b"volumes/v/a/b/c/deep", Symlink, Some(b"/")), None);
        assert!(c
            .check(b"volumes/v/a/b/c/deep/x/y", Regular, None)
            .is_some());
        assert_eq!(c.check(b"volumes/v/a/b/c/deep2/x", Regular, None), None);
        // A symlink below a symlink is itself written through the first one.
        assert!(c
            .check(b"volumes/v/a/b/c/deep/l2", Symlink, Some(b"x"))
            .is_some());
        // A symlink to a symlink is fine as an entry; writing below either is not.
        assert_eq!(c.check(b"volumes/v/l1", Symlink, Some(b"a/b/c/deep")), None);
        assert!(c.check(b"volumes/v/l1/f", Regular, None).is_some());
        // Names that share a prefix with a symlink without being below it.
        assert_eq!(c.check(b"volumes/v/a/link", Symlink, Some(b"/etc")), None);
        assert_eq!(c.check(b"volumes/v/a/link2/x", Regular, None), None);
        assert_eq!(c.check(b"volumes/v/a/lin/x", Regular, None), None);
        // Hard links within their volume pass, through a symlink or out of it do not.
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
