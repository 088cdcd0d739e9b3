//! Binds that are mount points (a disk at `./data`, NFS, a ZFS or btrfs subvolume, a tmpfs):
//! a mount point cannot be renamed or exchanged (EBUSY), so the archive is staged inside it
//! (`<target>/.nuwax-restore-<project>-<pid>/new`) and its top-level entries are moved in and
//! the previous ones out one by one, under an fsynced journal kept beside the run record: a
//! killed rollback is undone (or, once the journal says `done`, finished) by `recover` or the
//! next run, which act only on the staging folder the record names. Not one atomic swap.
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::host::HostWriter;
use crate::archive::writer::Attrs;
use crate::hostfs::beneath::set_fd_attrs;
use crate::hostfs::owned;
use crate::hostfs::paths::remove_any;
use crate::runs::{ActiveRun, MountRecord, RootAttrs};
use crate::storage::sync_dir;

/// One journal line: what is about to happen to a top-level name of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// The old entry (inode `ino`) and the new one trade places in one exchange.
    Exchange { name: Vec<u8>, ino: u64 },
    /// The old entry moves out to `old/`.
    Out { name: Vec<u8> },
    /// The new entry moves in from `new/`.
    In { name: Vec<u8> },
}

impl Step {
    fn name(&self) -> &[u8] {
        match self {
            Step::Exchange { name, .. } | Step::Out { name } | Step::In { name } => name,
        }
    }

    fn line(&self) -> String {
        match self {
            Step::Exchange { name, ino } => format!("x {ino} {}", hex::encode(name)),
            Step::Out { name } => format!("o {}", hex::encode(name)),
            Step::In { name } => format!("i {}", hex::encode(name)),
        }
    }

    fn parse(line: &str) -> Option<Step> {
        let mut f = line.split(' ');
        match (f.next()?, f.next()?, f.next()) {
            ("x", ino, Some(name)) => Some(Step::Exchange {
                name: hex::decode(name).ok()?,
                ino: ino.parse().ok()?,
            }),
            ("o", name, None) => Some(Step::Out {
                name: hex::decode(name).ok()?,
            }),
            ("i", name, None) => Some(Step::In {
                name: hex::decode(name).ok()?,
            }),
            _ => None,
        }
    }
}

/// The steps that put `new` in place of `cur` (pure): a name in both is exchanged (or moved
/// out, then in, without exchange), a name only in `cur` moves out, one only in `new` moves in.
fn plan_steps(cur: &[(Vec<u8>, u64)], new: &[Vec<u8>], can_exchange: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    for n in new {
        match cur.iter().find(|(c, _)| c == n) {
            Some((_, ino)) if can_exchange => steps.push(Step::Exchange {
                name: n.clone(),
                ino: *ino,
            }),
            Some(_) => {
                steps.push(Step::Out { name: n.clone() });
                steps.push(Step::In { name: n.clone() });
            }
            None => steps.push(Step::In { name: n.clone() }),
        }
    }
    for (c, _) in cur.iter().filter(|(c, _)| !new.contains(c)) {
        steps.push(Step::Out { name: c.clone() });
    }
    steps
}

/// A bind mount point being restored from a staging folder inside it. Every move is made
/// between descriptors of the target, the staging folder and its `new/` and `old/` folders
/// (opened without following links); the journal and the root's attributes are kept in the
/// run record's private folder, never inside the bind.
#[derive(Debug)]
pub struct InMount {
    pub target: PathBuf,
    /// `<target>/.nuwax-restore-<project>-<pid>`: holds `new/` and `old/`.
    pub staging: PathBuf,
    dirs: Dirs,
    journal_path: PathBuf,
    root: RootAttrs,
    new_root: Option<RootAttrs>,
    pub swapped: bool,
    /// Move out, then in, even where the filesystem exchanges names (tests of that path).
    pub no_exchange: bool,
}

/// Descriptors of a mount point and of its staging folder.
#[derive(Debug)]
struct Dirs {
    target: OwnedFd,
    staging: OwnedFd,
}

impl Dirs {
    fn child(&self, name: &str) -> io::Result<OwnedFd> {
        owned::open_child(&self.staging, name.as_bytes())
    }
}

impl InMount {
    /// Makes the staging folder (mode 0700) inside `target` and records it, its journal's
    /// path and the target root's owner, mode and times (before making the folder changes
    /// them) in the run record, before anything is written into it.
    pub fn new(target: &Path, project: &str, run: &mut ActiveRun) -> Result<InMount> {
        let target_fd = owned::open_dir(target)?;
        let root = root_of(&target_fd)?;
        let name = owned::staging_name(project, run.pid());
        let (staging_fd, made) = owned::make_dir(target, &name)?;
        run.made(&made)?;
        let old = made.path.join("old");
        rustix::fs::mkdirat(&staging_fd, "old", Mode::from_raw_mode(0o700))
            .map_err(io::Error::from)
            .with_context(|| format!("creating {}", old.display()))?;
        let journal_path = run.journal_path(run.mount_count());
        run.mount(MountRecord {
            target: target.to_path_buf(),
            staging: made.path.clone(),
            root,
            new_root: None,
            journal: journal_path.clone(),
        })?;
        set_fd_attrs(&target_fd, &attrs(root))?;
        Ok(InMount {
            target: target.to_path_buf(),
            staging: made.path,
            dirs: Dirs {
                target: target_fd,
                staging: staging_fd,
            },
            journal_path,
            root,
            new_root: None,
            swapped: false,
            no_exchange: crate::fault::no_exchange(),
        })
    }

    /// Where the archive's tree is written before it is moved in.
    pub fn write_root(&self) -> PathBuf {
        self.staging.join("new")
    }

    /// A writer of the archive's tree into `new/`, below the staging folder's descriptor.
    pub fn writer(&self) -> Result<HostWriter> {
        let fd = self.dirs.staging.try_clone()?;
        HostWriter::in_dir(fd, &self.staging, "new")
    }

    /// Moves the staged entries in and the previous ones out, journaling each step first;
    /// the root folder's owner, mode and time come last.
    pub fn swap(&mut self, run: Option<&mut ActiveRun>) -> Result<()> {
        let name = self.staging.file_name().map(|n| n.as_bytes().to_vec());
        let cur = entries(&self.dirs.target, name.as_deref())?;
        let new_fd = self.dirs.child("new").context("opening the staged tree")?;
        let new: Vec<Vec<u8>> = entries(&new_fd, None)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let can = !self.no_exchange && exchange_works(&self.dirs.staging);
        // The archived root's attributes, read before moving entries out of `new/` changes
        // its times; given to the target when the staging folder goes.
        let new_root = root_of(&new_fd)?;
        if let Some(run) = run {
            run.mount_new_root(&self.target, new_root)?;
        }
        self.new_root = Some(new_root);
        let old_fd = self.dirs.child("old")?;
        let mut journal = Journal::create(&self.journal_path)?;
        self.swapped = true;
        for (i, step) in plan_steps(&cur, &new, can).iter().enumerate() {
            journal.append(&step.line())?;
            apply(step, &self.dirs.target, &new_fd, &old_fd)?;
            crate::fault::point(crate::fault::Fault::MountStep(i + 1));
        }
        journal.append("done")
    }

    /// Puts the previous content back and removes the staging folder.
    pub fn undo(&mut self) -> Result<()> {
        undo_journal(&self.dirs, &self.journal_path)?;
        self.swapped = false;
        drop_staging(&self.dirs.target, &self.staging, self.root)
    }

    /// Drops the previous content (after the whole rollback succeeded); the root gets the
    /// archived owner, mode and times.
    pub fn commit(&self) -> Result<()> {
        drop_staging(
            &self.dirs.target,
            &self.staging,
            self.new_root.unwrap_or(self.root),
        )
    }
}

fn apply(step: &Step, target: &OwnedFd, new: &OwnedFd, old: &OwnedFd) -> Result<()> {
    moved(step, true, target, new, old).with_context(|| {
        format!(
            "moving {:?} ({})",
            String::from_utf8_lossy(step.name()),
            step.line()
        )
    })
}

/// Puts back what `step` did: an exchange again, an entry moved out back in from `old/`, an
/// entry moved in back to `new/`.
fn unapply(step: &Step, target: &OwnedFd, new: &OwnedFd, old: &OwnedFd) -> Result<()> {
    moved(step, false, target, new, old).with_context(|| format!("undoing {}", step.line()))
}

/// Makes `step` (`forward`) or its reverse, between the folders' descriptors.
fn moved(step: &Step, forward: bool, t: &OwnedFd, new: &OwnedFd, old: &OwnedFd) -> Result<()> {
    let name = plain(step.name())?;
    let (from, to) = match (step, forward) {
        (Step::Exchange { .. }, _) => {
            let r = rustix::fs::renameat_with(new, name, t, name, RenameFlags::EXCHANGE);
            return Ok(r.map_err(io::Error::from)?);
        }
        (Step::Out { .. }, true) => (t, old),
        (Step::Out { .. }, false) => (old, t),
        (Step::In { .. }, true) => (new, t),
        (Step::In { .. }, false) => (t, new),
    };
    Ok(rustix::fs::renameat(from, name, to, name).map_err(io::Error::from)?)
}

/// `name`, when it is one plain path component (journal lines are checked again here).
fn plain(name: &[u8]) -> Result<&[u8]> {
    if !crate::archive::names::is_component(name) {
        anyhow::bail!(
            "refusing to move {:?}: not a plain name",
            String::from_utf8_lossy(name)
        );
    }
    Ok(name)
}

/// Removes the staging folder, then gives the target root `root` (the archived root's after
/// a finished swap, else the one recorded before staging). Last, since removing the folder
/// changes the root's times.
fn drop_staging(target: &OwnedFd, staging: &Path, root: RootAttrs) -> Result<()> {
    remove_any(staging)?;
    set_fd_attrs(target, &attrs(root))?;
    rustix::fs::fsync(target)
        .map_err(io::Error::from)
        .context("syncing the mount point")
}

/// Finishes or undoes what a killed rollback left inside a mount point, as its run record
/// says: a journal that says `done` is finished (the staging folder removed, the root given
/// the archived attributes), any other is undone step by step. Acts only on the staging
/// folder the record names, when it is still the private folder the run made (`made`).
pub fn recover(m: &MountRecord, made: &owned::Made) -> Result<String> {
    let dirs = Dirs {
        target: owned::open_dir(&m.target)?,
        staging: owned::open_made(made)?,
    };
    crate::hostfs::owned::check_private(&m.journal)?;
    let lines = journal_lines(&m.journal);
    if lines.iter().any(|l| l == "done") {
        drop_staging(&dirs.target, &made.path, m.new_root.unwrap_or(m.root))?;
        return Ok(format!(
            "{}: finished the interrupted rollback",
            m.target.display()
        ));
    }
    undo_journal(&dirs, &m.journal)?;
    drop_staging(&dirs.target, &made.path, m.root)?;
    Ok(format!(
        "{}: undid the interrupted rollback",
        m.target.display()
    ))
}

/// Whether a dead run's record shows a half-moved mount point (a journal without `done`).
pub fn is_mixed(m: &MountRecord) -> bool {
    let lines = journal_lines(&m.journal);
    !lines.is_empty() && !lines.iter().any(|l| l == "done")
}

fn journal_lines(path: &Path) -> Vec<String> {
    match File::open(path) {
        Ok(f) => BufReader::new(f).lines().map_while(|l| l.ok()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Reverses the journaled steps, last first; each is checked against what is on disk, so a
/// step the kill came before (or a second recovery) is skipped.
fn undo_journal(dirs: &Dirs, journal: &Path) -> Result<()> {
    let steps: Vec<Step> = journal_lines(journal)
        .iter()
        .filter_map(|l| Step::parse(l))
        .collect();
    if steps.is_empty() {
        return Ok(()); // killed before the first move: the target is untouched
    }
    let (new, old) = (dirs.child("new")?, dirs.child("old")?);
    let t = &dirs.target;
    for step in steps.iter().rev() {
        let undo = match step {
            Step::Exchange { name, ino } => ino_of(t, name).is_some_and(|i| i != *ino),
            Step::Out { name } => ino_of(&old, name).is_some(),
            Step::In { name } => ino_of(&new, name).is_none() && ino_of(t, name).is_some(),
        };
        if undo {
            unapply(step, t, &new, &old)?;
        }
    }
    rustix::fs::fsync(t)
        .map_err(io::Error::from)
        .context("syncing the mount point")
}

fn ino_of(dir: &OwnedFd, name: &[u8]) -> Option<u64> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| st.st_ino)
}

/// The entries of folder `dir` with their inodes, leaving out `skip`.
fn entries(dir: &OwnedFd, skip: Option<&[u8]>) -> Result<Vec<(Vec<u8>, u64)>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir).map_err(io::Error::from)? {
        let e = e.map_err(io::Error::from)?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." || Some(name) == skip {
            continue;
        }
        out.push((name.to_vec(), e.ino()));
    }
    out.sort();
    Ok(out)
}

/// Whether this filesystem exchanges names (NFS and older ZFS answer EINVAL): tried on two
/// probe files inside the staging folder.
fn exchange_works(staging: &OwnedFd) -> bool {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o600);
    let made = rustix::fs::openat(staging, "probe-a", flags, mode).is_ok()
        && rustix::fs::openat(staging, "probe-b", flags, mode).is_ok();
    let ok = made
        && rustix::fs::renameat_with(
            staging,
            "probe-a",
            staging,
            "probe-b",
            RenameFlags::EXCHANGE,
        )
        .is_ok();
    let _ = rustix::fs::unlinkat(staging, "probe-a", AtFlags::empty());
    let _ = rustix::fs::unlinkat(staging, "probe-b", AtFlags::empty());
    ok
}

fn root_of(fd: &OwnedFd) -> Result<RootAttrs> {
    let st = rustix::fs::fstat(fd).map_err(io::Error::from)?;
    Ok(RootAttrs {
        mode: st.st_mode,
        uid: st.st_uid as u64,
        gid: st.st_gid as u64,
        mtime: st.st_mtime as u64,
    })
}

fn attrs(r: RootAttrs) -> Attrs {
    Attrs {
        mode: r.mode,
        uid: r.uid,
        gid: r.gid,
        mtime: r.mtime,
    }
}

/// The append-only, fsynced journal of one restore into a mount point.
struct Journal(File);

impl Journal {
    /// Creates the journal at `path` (beside the run record, in its private folder).
    fn create(path: &Path) -> Result<Journal> {
        let f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Journal(f))
    }

    fn append(&mut self, line: &str) -> Result<()> {
        writeln!(self.0, "{line}")?;
        self.0.sync_data().context("syncing the restore journal")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn names(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn steps_exchange_shared_names_and_move_the_rest() {
        let cur = vec![(b"a".to_vec(), 1), (b"old".to_vec(), 2)];
        let new = names(&["a", "new"]);
        assert_eq!(
            plan_steps(&cur, &new, true),
            vec![
                Step::Exchange {
                    name: b"a".to_vec(),
                    ino: 1
                },
                Step::In {
                    name: b"new".to_vec()
                },
                Step::Out {
                    name: b"old".to_vec()
                },
            ]
        );
        assert_eq!(
            plan_steps(&cur, &new, false)[..2],
            [
                Step::Out {
                    name: b"a".to_vec()
                },
                Step::In {
                    name: b"a".to_vec()
                }
            ]
        );
    }

    #[test]
    fn journal_lines_round_trip_odd_names() {
        for s in [
            Step::Exchange {
                name: b"a b\n\xff".to_vec(),
                ino: 42,
            },
            Step::Out {
                name: b"x".to_vec(),
            },
            Step::In {
                name: b"y z".to_vec(),
            },
        ] {
            assert_eq!(Step::parse(&s.line()), Some(s));
        }
        assert_eq!(Step::parse("garbage"), None);
    }

    fn tree(p: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(p)
            .min_depth(1)
            .into_iter()
            .flatten()
            .map(|e| {
                let rel = e.path().strip_prefix(p).unwrap().display().to_string();
                let body = fs::read_to_string(e.path()).unwrap_or_default();
                format!("{rel}={body}")
            })
            .collect();
        v.sort();
        v
    }

    fn with_old(target: &Path) {
        fs::create_dir_all(target.join("keep")).unwrap();
        fs::write(target.join("keep/f"), "old").unwrap();
        fs::write(target.join("gone"), "gone").unwrap();
    }

    fn staged(target: &Path, run: &mut ActiveRun) -> InMount {
        let m = InMount::new(target, "p", run).unwrap();
        let n = m.write_root();
        fs::create_dir_all(n.join("keep")).unwrap();
        fs::write(n.join("keep/f"), "new").unwrap();
        fs::write(n.join("added"), "added").unwrap();
        m
    }

    #[test]
    fn swap_then_undo_restores_the_previous_tree_both_ways() {
        for exchange in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let t = d.path().join("t");
            with_old(&t);
            let before = tree(&t);
            let mut run = ActiveRun::begin(
                &d.path().join("runs"),
                "p",
                crate::records::RunCommand::Rollback,
            )
            .unwrap();
            let mut m = staged(&t, &mut run);
            m.no_exchange = !exchange;
            m.swap(Some(&mut run)).unwrap();
            assert!(tree(&t).contains(&"keep/f=new".to_string()));
            m.undo().unwrap();
            assert_eq!(tree(&t), before);
        }
    }

    #[test]
    fn recovery_undoes_a_partial_journal_and_finishes_a_done_one_as_recorded() {
        let d = tempfile::tempdir().unwrap();
        let runs = d.path().join("runs");
        let t = d.path().join("t");
        with_old(&t);
        let before = tree(&t);
        let mut run = ActiveRun::begin(&runs, "p", crate::records::RunCommand::Rollback).unwrap();
        let m = staged(&t, &mut run);
        // A run killed after its first two steps, as its journal shows.
        let name = m.staging.file_name().unwrap().as_bytes().to_vec();
        let cur = entries(&m.dirs.target, Some(&name)).unwrap();
        let new_fd = m.dirs.child("new").unwrap();
        let new: Vec<Vec<u8>> = entries(&new_fd, None)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let old_fd = m.dirs.child("old").unwrap();
        let mut j = Journal::create(&m.journal_path).unwrap();
        for step in plan_steps(&cur, &new, true).iter().take(2) {
            j.append(&step.line()).unwrap();
            apply(step, &m.dirs.target, &new_fd, &old_fd).unwrap();
        }
        run.keep();
        let rec = crate::runs::read(&runs, "p").unwrap().unwrap();
        assert!(is_mixed(&rec.mounts[0]));
        let said = recover(&rec.mounts[0], &rec.made[0]).unwrap();
        assert!(said.ends_with("undid the interrupted rollback"), "{said}");
        assert_eq!(tree(&t), before);
    }

    #[test]
    fn recovery_leaves_a_staging_folder_that_is_not_the_one_recorded() {
        let d = tempfile::tempdir().unwrap();
        let runs = d.path().join("runs");
        let t = d.path().join("t");
        with_old(&t);
        let mut run = ActiveRun::begin(&runs, "p", crate::records::RunCommand::Rollback).unwrap();
        let m = staged(&t, &mut run);
        run.keep();
        let rec = crate::runs::read(&runs, "p").unwrap().unwrap();
        // Something inside the bind replaced the staging folder with a link to a host folder.
        let host = d.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::remove_dir_all(&m.staging).unwrap();
        std::os::unix::fs::symlink(&host, &m.staging).unwrap();
        assert!(recover(&rec.mounts[0], &rec.made[0]).is_err());
        assert_eq!(fs::read_dir(&host).unwrap().count(), 0);
        assert!(fs::symlink_metadata(&m.staging)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
