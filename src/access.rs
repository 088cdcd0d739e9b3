//! Who this process is, and what it can read and own: a `docker`-group user who is not root
//! cannot read another user's `0700` folder nor give files away, but the engine (root) can.
use std::path::Path;

/// The process's effective user and its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub uid: u32,
    pub groups: Vec<u32>,
}

impl Me {
    /// This process (read once).
    pub fn current() -> &'static Me {
        static ME: std::sync::OnceLock<Me> = std::sync::OnceLock::new();
        ME.get_or_init(|| {
            use rustix::process::{getegid, geteuid, getgroups};
            let mut groups: Vec<u32> = getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.as_raw())
                .collect();
            groups.push(getegid().as_raw());
            Me {
                uid: geteuid().as_raw(),
                groups,
            }
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether files this process writes can be given owner `uid` and group `gid`.
    pub fn can_own(&self, uid: u64, gid: u64) -> bool {
        self.is_root()
            || (uid == u64::from(self.uid) && self.groups.iter().any(|g| u64::from(*g) == gid))
    }

    /// Whether the permission bits let this process read an entry with `mode`, `uid`, `gid`
    /// (folders must also be searchable; symlinks are always readable).
    pub fn can_read(&self, mode: u32, uid: u32, gid: u32, is_dir: bool) -> bool {
        if self.is_root() {
            return true;
        }
        let shift = if uid == self.uid {
            6
        } else if self.groups.contains(&gid) {
            3
        } else {
            0
        };
        let bits = (mode >> shift) & 0o7;
        bits & 0o4 != 0 && (!is_dir || bits & 0o1 != 0)
    }
}

/// Whether this process may create and rename entries in folder `dir`.
pub fn can_write_dir(dir: &Path) -> bool {
    use rustix::fs::{access, Access};
    access(dir, Access::WRITE_OK | Access::EXEC_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_bits_decide_for_a_user_who_is_not_root() {
        let me = Me {
            uid: 1000,
            groups: vec![100, 999],
        };
        assert!(me.can_read(0o700, 1000, 5, true));
        assert!(!me.can_read(0o600, 1000, 5, true), "a folder needs x");
        assert!(
            !me.can_read(0o700, 999, 999, true),
            "another user's private folder"
        );
        assert!(me.can_read(0o750, 5, 999, true), "through a group of mine");
        assert!(me.can_read(0o604, 5, 5, false), "readable by all");
        assert!(!me.can_read(0o640, 5, 5, false));
        assert!(me.can_own(1000, 100));
        assert!(!me.can_own(999, 999));
        assert!(!me.can_own(1000, 5), "a group I am not in");
        let root = Me {
            uid: 0,
            groups: vec![0],
        };
        assert!(root.can_read(0o000, 999, 999, true));
        assert!(root.can_own(999, 999));
    }
}
