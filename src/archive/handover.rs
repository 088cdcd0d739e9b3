//! The hand-over from the live volumes to their captures, for the shortest downtime with no
//! extra wall time: the archive begins as soon as the services stop, reading the volumes
//! themselves, while the captures are made beside them. Once every capture is made, the switch
//! hands over: from then on every read goes to the capture (the same tree, as it was at the
//! stop), and the services may start again. A read of a live volume holds the switch for the
//! moment it runs, so the hand-over waits for it and no read of a live volume happens after.
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// Marks capture folders and files: neither copied into another capture nor archived.
pub const CAPTURE_MARK: &str = ".nuwax-capture-";

/// Which tree the archive reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The live volumes (the services stopped), while the captures are made.
    Capturing,
    /// The captures: the services may run again.
    Captured,
    /// The live volumes, with no capture coming (none planned, or it failed): the services
    /// stay stopped until the archive is written.
    Live,
}

pub struct Switch {
    side: RwLock<Side>,
}

impl Switch {
    pub fn new(side: Side) -> Arc<Switch> {
        Arc::new(Switch {
            side: RwLock::new(side),
        })
    }

    /// Runs `op` on a live volume, unless the captures replaced them (then `None`, and `op` is
    /// not run). The hand-over waits while `op` runs, so keep it to one system call or a few.
    pub fn live<T>(&self, op: impl FnOnce() -> T) -> Option<T> {
        let side = self.side.read().unwrap_or_else(|e| e.into_inner());
        match *side {
            Side::Captured => None,
            Side::Capturing | Side::Live => Some(op()),
        }
    }

    /// From now on, reads go to the captures. Returns once no read of a live volume runs.
    pub fn hand_over(&self) {
        *self.side.write().unwrap_or_else(|e| e.into_inner()) = Side::Captured;
    }

    /// No capture is coming: reads stay on the live volumes.
    pub fn stay_live(&self) {
        *self.side.write().unwrap_or_else(|e| e.into_inner()) = Side::Live;
    }

    pub fn side(&self) -> Side {
        *self.side.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the captures are made or abandoned; the side they ended on. (A rare wait,
    /// for a volume that can only be read from its capture: a short poll serves.)
    pub fn settled(&self) -> Side {
        loop {
            match self.side() {
                Side::Capturing => std::thread::sleep(Duration::from_millis(5)),
                side => return side,
            }
        }
    }
}

/// One volume read live until the hand-over, then from its capture (a tree at `capture`).
#[derive(Clone)]
pub struct Handover {
    pub switch: Arc<Switch>,
    pub capture: PathBuf,
    /// What the capture left out, as the archive says it (a fifo, the storage folder): set
    /// before the hand-over; an entry missing from the capture must be one of these.
    pub left_out: Arc<OnceLock<Vec<String>>>,
}

impl Handover {
    /// Where the entry at `rel` (a path inside the volume; empty: its root) is in the capture.
    pub fn path(&self, rel: &[u8]) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        if rel.is_empty() {
            self.capture.clone()
        } else {
            self.capture.join(std::ffi::OsStr::from_bytes(rel))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_read_runs_until_the_hand_over_and_never_after() {
        let s = Switch::new(Side::Capturing);
        assert_eq!(s.live(|| 1), Some(1));
        s.hand_over();
        let mut ran = false;
        assert_eq!(s.live(|| ran = true), None);
        assert!(!ran);
        assert_eq!(s.settled(), Side::Captured);
    }

    #[test]
    fn the_hand_over_waits_for_a_live_read_under_way() {
        let s = Switch::new(Side::Capturing);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || {
                s.live(|| {
                    tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    std::time::Instant::now()
                })
            })
        };
        rx.recv().unwrap();
        s.hand_over();
        let handed = std::time::Instant::now();
        let read_done = reader.join().unwrap().unwrap();
        assert!(
            read_done <= handed,
            "the hand-over returned while a live read ran"
        );
    }

    #[test]
    fn a_capture_given_up_keeps_reads_live() {
        let s = Switch::new(Side::Capturing);
        s.stay_live();
        assert_eq!(s.settled(), Side::Live);
        assert_eq!(s.live(|| 2), Some(2));
    }

    #[test]
    fn the_root_is_the_capture_itself() {
        let h = Handover {
            switch: Switch::new(Side::Capturing),
            capture: PathBuf::from("/srv/.nuwax-capture-1-binds_data"),
            left_out: Arc::default(),
        };
        assert_eq!(
            h.path(b""),
            PathBuf::from("/srv/.nuwax-capture-1-binds_data")
        );
        assert_eq!(
            h.path(b"db/row"),
            PathBuf::from("/srv/.nuwax-capture-1-binds_data/db/row")
        );
    }
}
