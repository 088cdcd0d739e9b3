//! What the archive reads each volume from: the volume as it is, a capture already made, or
//! (for the shortest downtime with no extra wall time) the volume itself until the captures
//! being made beside it are handed over (see [`crate::archive::handover`]).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::plan::{How, Plan};
use crate::archive::handover::{Handover, Side, Switch};

/// A volume captured while the services were stopped.
pub enum Captured {
    /// A copy of its tree (reflink clones), and what the copy left out (as reading the
    /// original says it).
    Tree(PathBuf, Vec<String>),
    /// Its tree packed into one tar file (root `.`), and what the pack left out.
    Packed(PathBuf, Vec<String>),
    /// The engine's `docker cp` stream, in a file.
    Stream(PathBuf),
}

impl Captured {
    pub fn path(&self) -> &std::path::Path {
        match self {
            Captured::Tree(p, _) | Captured::Packed(p, _) | Captured::Stream(p) => p,
        }
    }
}

/// Captures by archive folder (`binds/data`).
pub type Captures = HashMap<String, Captured>;

pub struct Reading {
    switch: Arc<Switch>,
    captures: OnceLock<Captures>,
    /// The trees being cloned, by archive folder: read live until the hand-over, then from
    /// the clone. (A pack or a stream is read once it is made.)
    trees: HashMap<String, Handover>,
    /// Set once the archive has read every volume (the captures may go then).
    all_read: (Mutex<bool>, Condvar),
}

/// Where one volume is read from.
pub enum Source<'a> {
    /// As it is now (the services stopped until it is read).
    Live,
    Captured(&'a Captured),
    /// Live until the hand-over, then its capture.
    Handover(&'a Handover),
}

impl Reading {
    /// No capture: every volume as it is.
    pub fn live() -> Reading {
        Reading {
            switch: Switch::new(Side::Live),
            captures: OnceLock::new(),
            trees: HashMap::new(),
            all_read: Default::default(),
        }
    }

    /// Captures already made; volumes not in them are read as they are.
    pub fn captured(captures: Captures) -> Reading {
        Reading {
            switch: Switch::new(Side::Captured),
            captures: OnceLock::from(captures),
            trees: HashMap::new(),
            all_read: Default::default(),
        }
    }

    /// The plan's captures are about to be made at `path_of` each place: volumes are read live
    /// until [`Reading::hand_over`].
    pub fn capturing(plan: &Plan, path_of: impl Fn(&super::plan::Place) -> PathBuf) -> Reading {
        let switch = Switch::new(Side::Capturing);
        let trees = plan
            .capture_places
            .iter()
            .filter(|place| place.how == How::Reflink)
            .map(|place| {
                let h = Handover {
                    switch: switch.clone(),
                    capture: path_of(place),
                    left_out: Arc::default(),
                };
                (place.archive_path.clone(), h)
            })
            .collect();
        Reading {
            switch,
            captures: OnceLock::new(),
            trees,
            all_read: Default::default(),
        }
    }

    /// Every capture is made: reads go to them from now on. Returns once no read of a live
    /// volume runs (then the services may start).
    pub fn hand_over(&self, captures: Captures) {
        for (path, h) in &self.trees {
            if let Some(Captured::Tree(_, skipped)) = captures.get(path) {
                let _ = h.left_out.set(skipped.clone());
            }
        }
        let _ = self.captures.set(captures);
        self.switch.hand_over();
    }

    /// The captures failed: every volume is read as it is, the services stopped meanwhile.
    pub fn stay_live(&self) {
        self.switch.stay_live();
    }

    /// The captures made, once handed over.
    pub fn captures(&self) -> Option<&Captures> {
        self.captures.get()
    }

    /// The archive has read every volume: what follows (the manifest, the final sync) needs
    /// no capture.
    pub fn read_all(&self) {
        *self.all_read.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.all_read.1.notify_all();
    }

    /// Waits until the archive has read every volume, or `gone()` (the archive ended early).
    pub fn wait_all_read(&self, gone: impl Fn() -> bool) {
        let mut done = self.all_read.0.lock().unwrap_or_else(|e| e.into_inner());
        while !*done && !gone() {
            done = self
                .all_read
                .1
                .wait_timeout(done, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Where the volume at `archive_path` is read from. Waits while it can only be read from a
    /// capture not made yet (a stream; a volume with no capture planned, which must be read
    /// before the services start).
    pub fn source(&self, archive_path: &str) -> Source<'_> {
        loop {
            match (self.switch.side(), self.trees.get(archive_path)) {
                (Side::Captured, _) => {
                    return match self.captures().and_then(|c| c.get(archive_path)) {
                        Some(c) => Source::Captured(c),
                        None => Source::Live,
                    }
                }
                (Side::Live, _) => return Source::Live,
                (Side::Capturing, Some(h)) => return Source::Handover(h),
                (Side::Capturing, _) => {
                    self.switch.settled();
                }
            }
        }
    }
}

/// A volume's warnings: what its live walk said (in walk order, a prefix), then what its
/// capture left out and the walk did not reach (the rest, in the same order).
pub fn merge_left_out(said: &mut Vec<String>, left_out: &[String]) {
    let mut rest: Vec<&String> = left_out.iter().collect();
    for w in said.iter() {
        if let Some(i) = rest.iter().position(|r| *r == w) {
            rest.remove(i);
        }
    }
    said.extend(rest.into_iter().cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_said_live_are_not_repeated_from_the_capture() {
        let all: Vec<String> = [
            "skipped /d/a (fifo)",
            "skipped /d/b (the backup storage folder)",
        ]
        .map(String::from)
        .to_vec();
        let mut said = vec![all[0].clone()];
        merge_left_out(&mut said, &all);
        assert_eq!(said, all);
        let mut none = Vec::new();
        merge_left_out(&mut none, &all);
        assert_eq!(none, all);
        let mut every = all.clone();
        merge_left_out(&mut every, &all);
        assert_eq!(every, all);
    }

    #[test]
    fn a_volume_with_a_capture_already_made_is_read_from_it() {
        let mut c = Captures::new();
        c.insert("binds/data".into(), Captured::Stream("/s/x.tar".into()));
        let r = Reading::captured(c);
        assert!(matches!(r.source("binds/data"), Source::Captured(_)));
        assert!(matches!(r.source("volumes/other"), Source::Live));
        assert!(matches!(Reading::live().source("binds/data"), Source::Live));
    }

    /// A tree with what a walk must get right: big files (one read across the hand-over),
    /// many small ones, hard links, a symlink, a fifo and the storage folder (both left out).
    fn seed(root: &std::path::Path) {
        use std::fs;
        fs::create_dir_all(root.join("backups")).unwrap();
        fs::write(root.join("backups/old"), "x").unwrap();
        let big: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(root.join("a-big"), &big).unwrap();
        for d in 0..20 {
            let dir = root.join(format!("d{d:02}"));
            fs::create_dir(&dir).unwrap();
            for f in 0..100 {
                fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}")).unwrap();
            }
            fs::write(dir.join("mid"), vec![d as u8; 100 << 10]).unwrap();
        }
        fs::hard_link(root.join("d00/f000"), root.join("d19/link-to-first")).unwrap();
        fs::hard_link(root.join("d10/f000"), root.join("d19/link-after")).unwrap();
        std::os::unix::fs::symlink("d00/f000", root.join("s")).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, root.join("d05/pipe"), 0o600.into()).unwrap();
    }

    /// What the services do once they run again: every file rewritten (same and new sizes),
    /// files and folders added and removed.
    fn scribble(root: &std::path::Path) {
        use std::io::Write;
        let mut big = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("a-big"))
            .unwrap();
        big.write_all(&vec![0xee; 4 << 20]).unwrap();
        for d in 0..20 {
            let dir = root.join(format!("d{d:02}"));
            for f in 0..100 {
                std::fs::write(dir.join(format!("f{f:03}")), "changed!").unwrap();
            }
            std::fs::write(dir.join("new"), "new").unwrap();
            std::fs::remove_file(dir.join("mid")).unwrap();
        }
        std::fs::create_dir(root.join("d99")).unwrap();
    }

    /// The per-entry manifest lines (paths, owners, modes, sizes, digests) and the warnings.
    fn walk(
        root: &std::path::Path,
        handover: Option<Handover>,
        on_read: &dyn Fn(u64) -> std::io::Result<()>,
    ) -> (Vec<u8>, Vec<String>) {
        use crate::archive::writer::{ArchiveWriter, Codec};
        let out = tempfile::tempfile().unwrap();
        let none = crate::crypto::Recipients::default();
        let mut w = ArchiveWriter::new(Box::new(out), Codec::Zstd { level: 1 }, &none).unwrap();
        let mut lines = Vec::new();
        let mut warnings = Vec::new();
        let mut c =
            crate::archive::collector::Collector::new(&mut w, "binds/x", &mut lines, on_read);
        let mut said = |s: String| warnings.push(s);
        crate::archive::fs_source::collect(
            root,
            &root.join("backups"),
            handover.clone(),
            &mut c,
            &mut said,
        )
        .unwrap();
        if let Some(left_out) = handover.as_ref().and_then(|h| h.left_out.get()) {
            merge_left_out(&mut warnings, left_out);
        }
        w.finish().unwrap();
        (lines, warnings)
    }

    #[test]
    fn a_walk_handed_over_mid_file_archives_the_state_at_the_stop() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("live");
        seed(&live);
        let want = walk(&live, None, &|_| Ok(()));
        let capture = d.path().join(".nuwax-capture-test");
        let copied =
            super::super::copy::copy_tree(&live, &capture, &live.join("backups"), false, &|| false)
                .unwrap();
        let h = Handover {
            switch: Switch::new(Side::Capturing),
            capture,
            left_out: Arc::default(),
        };
        let (read, after) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
        let on_read = |n: u64| {
            read.set(read.get() + n);
            if h.switch.side() == Side::Captured {
                after.set(after.get() + n);
            } else if read.get() >= 1 << 20 {
                // A quarter into the first big file: hand over, then the services write.
                let _ = h.left_out.set(copied.skipped.clone());
                h.switch.hand_over();
                scribble(&live);
            }
            Ok(())
        };
        let got = walk(&live, Some(h.clone()), &on_read);
        assert!(
            after.get() > 4 << 20,
            "most bytes were read after the hand-over"
        );
        assert_eq!(
            String::from_utf8_lossy(&got.0),
            String::from_utf8_lossy(&want.0)
        );
        assert_eq!(got.1, want.1);
        assert_eq!(
            want.1.len(),
            2,
            "the fifo and the storage folder: {:?}",
            want.1
        );
    }
}
