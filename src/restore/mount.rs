//! Binds that are mount points (a disk at `./data`, NFS, a ZFS or btrfs subvolume, a tmpfs):
//! a mount point cannot be renamed or exchanged (EBUSY), so the archive is staged inside it
//! (`<target>/.nuwax-restore-<pid>/new`) and its top-level entries are moved in and the
//! previous ones out one by one, under an fsynced journal: a killed rollback is undone (or,
//! once the journal says `done`, finished) by `recover` or the next run. Not one atomic swap.
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::host::{exchange, remove_any, set_attrs, STAGING_MARK};
use crate::archive::writer::Attrs;
use crate::storage::sync_dir;

/// Whether `p` is a folder with a filesystem mounted on it (another device than its parent, or
/// listed as a mount point, which also catches bind mounts of the same device).
pub fn is_mount_point(p: &Path) -> bool {
    let (Ok(m), Some(parent)) = (fs::symlink_metadata(p), p.parent()) else {
        return false;
    };
    if !m.is_dir() {
        return false;
    }
    if fs::metadata(parent).is_ok_and(|pm| pm.dev() != m.dev()) {
        return true;
    }
    let Ok(canon) = p.canonicalize() else {
        return false;
    };
    mount_points().iter().any(|mp| mp == &canon)
}

/// Mount points of this process's namespace (`/proc/self/mountinfo`, field 5, octal escapes).
fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|f| PathBuf::from(std::ffi::OsString::from_vec(unescape(f))))
        .collect()
}

fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        let oct = f
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (f[i], oct) {
            (b'\\', Some(o)) => {
                out.push(o.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

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

/// A bind mount point being restored from a staging folder inside it.
#[derive(Debug)]
pub struct InMount {
    pub target: PathBuf,
    /// `<target>/.nuwax-restore-<pid>`: holds `new/`, `old/` and `journal`.
    pub staging: PathBuf,
    pub swapped: bool,
    /// Move out, then in, even where the filesystem exchanges names (tests of that path).
    pub no_exchange: bool,
}

impl InMount {
    /// Makes the staging folder (mode 0700) inside `target`, recording the target root's
    /// owner, mode and times first (in `root`), since making the folder changes them.
    pub fn new(target: &Path) -> Result<InMount> {
        let staging = target.join(format!("{STAGING_MARK}{}", std::process::id()));
        remove_any(&staging)?;
        let root = attrs_of(target)?;
        crate::private::create_dir_all(&staging.join("old"))?;
        write_synced(&staging.join("root"), &root_line(&root))?;
        set_attrs(target, &root, false)?;
        Ok(InMount {
            target: target.to_path_buf(),
            staging,
            swapped: false,
            no_exchange: crate::fault::no_exchange(),
        })
    }

    /// Where the archive's tree is written before it is moved in.
    pub fn write_root(&self) -> PathBuf {
        self.staging.join("new")
    }

    /// Moves the staged entries in and the previous ones out, journaling each step first;
    /// the root folder's owner, mode and time come last.
    pub fn swap(&mut self) -> Result<()> {
        let cur = entries(&self.target, &self.staging)?;
        let new: Vec<Vec<u8>> = entries(&self.write_root(), Path::new(""))?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let can = !self.no_exchange && exchange_works(&self.staging);
        // The archived root's attributes, read before moving entries out of `new/` changes
        // its times; given to the target when the staging folder goes.
        write_synced(
            &self.staging.join("new-root"),
            &root_line(&attrs_of(&self.write_root())?),
        )?;
        let mut journal = Journal::create(&self.staging)?;
        self.swapped = true;
        for (i, step) in plan_steps(&cur, &new, can).iter().enumerate() {
            journal.append(&step.line())?;
            self.apply(step)?;
            crate::fault::point(&format!("mount-step-{}", i + 1));
        }
        journal.append("done")
    }

    fn apply(&self, step: &Step) -> Result<()> {
        let (t, n, o) = (
            self.target.as_path(),
            self.write_root(),
            self.staging.join("old"),
        );
        match step {
            Step::Exchange { name, .. } => exchange(&at(&n, name), &at(t, name)),
            Step::Out { name } => rename(&at(t, name), &at(&o, name)),
            Step::In { name } => rename(&at(&n, name), &at(t, name)),
        }
    }

    /// Puts the previous content back and removes the staging folder.
    pub fn undo(&mut self) -> Result<()> {
        undo_journal(&self.target, &self.staging)?;
        self.swapped = false;
        drop_staging(&self.target, &self.staging, false)
    }

    /// Drops the previous content (after the whole rollback succeeded); the root gets the
    /// archived owner, mode and times.
    pub fn commit(&self) -> Result<()> {
        drop_staging(&self.target, &self.staging, true)
    }
}

/// Removes the staging folder, then gives the target root the attributes it ends with: the
/// archived root's (`new/`) after a finished swap, else those recorded before staging.
/// Last, since removing the folder changes the root's times.
fn drop_staging(target: &Path, staging: &Path, finished: bool) -> Result<()> {
    let file = if finished { "new-root" } else { "root" };
    let attrs = fs::read_to_string(staging.join(file))
        .ok()
        .and_then(|l| parse_root(l.trim()));
    remove_any(staging)?;
    if let Some(a) = attrs {
        set_attrs(target, &a, false)?;
    }
    sync_dir(target)
}

/// Finishes or undoes what a killed rollback left inside mount point `target`: a staging
/// folder whose journal says `done` is removed (the target is fully restored), any other is
/// undone step by step. Returns what it did, for messages.
pub fn recover(target: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for staging in stale_stagings(target) {
        if journal_done(&staging) {
            drop_staging(target, &staging, true)?;
            done.push(format!(
                "{}: finished the interrupted rollback",
                target.display()
            ));
        } else {
            undo_journal(target, &staging)?;
            drop_staging(target, &staging, false)?;
            done.push(format!(
                "{}: undid the interrupted rollback",
                target.display()
            ));
        }
    }
    Ok(done)
}

/// Whether `target` holds a half-moved rollback (a journal without `done`): "mixed".
pub fn is_mixed(target: &Path) -> bool {
    stale_stagings(target)
        .iter()
        .any(|s| s.join("journal").exists() && !journal_done(s))
}

fn stale_stagings(target: &Path) -> Vec<PathBuf> {
    let mine = format!("{STAGING_MARK}{}", std::process::id());
    let Ok(rd) = fs::read_dir(target) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(STAGING_MARK) && n != mine && e.path().is_dir()
        })
        .map(|e| e.path())
        .collect()
}

fn journal_done(staging: &Path) -> bool {
    fs::read_to_string(staging.join("journal")).is_ok_and(|t| t.lines().any(|l| l == "done"))
}

/// Reverses the journaled steps, last first; each is checked against what is on disk, so a
/// step the kill came before (or a second recovery) is skipped.
fn undo_journal(target: &Path, staging: &Path) -> Result<()> {
    let Ok(f) = File::open(staging.join("journal")) else {
        return Ok(()); // killed before the first move: the target is untouched
    };
    let steps: Vec<Step> = BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| Step::parse(&l))
        .collect();
    let (n, o) = (staging.join("new"), staging.join("old"));
    for step in steps.iter().rev() {
        match step {
            Step::Exchange { name, ino } => {
                if fs::symlink_metadata(at(target, name)).is_ok_and(|m| m.ino() != *ino) {
                    exchange(&at(&n, name), &at(target, name))?;
                }
            }
            Step::Out { name } => {
                if fs::symlink_metadata(at(&o, name)).is_ok() {
                    rename(&at(&o, name), &at(target, name))?;
                }
            }
            Step::In { name } => {
                if fs::symlink_metadata(at(&n, name)).is_err()
                    && fs::symlink_metadata(at(target, name)).is_ok()
                {
                    rename(&at(target, name), &at(&n, name))?;
                }
            }
        }
    }
    sync_dir(target)
}

/// The top-level entries of `dir` with their inodes, leaving out `skip`.
fn entries(dir: &Path, skip: &Path) -> Result<Vec<(Vec<u8>, u64)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if e.path() == skip {
            continue;
        }
        out.push((e.file_name().into_vec(), e.metadata()?.ino()));
    }
    out.sort();
    Ok(out)
}

/// Whether this filesystem exchanges names (NFS and older ZFS answer EINVAL): tried on two
/// probe files inside the staging folder.
fn exchange_works(staging: &Path) -> bool {
    let (a, b) = (staging.join("probe-a"), staging.join("probe-b"));
    let ok = fs::write(&a, "a").is_ok() && fs::write(&b, "b").is_ok() && exchange(&a, &b).is_ok();
    let _ = fs::remove_file(a);
    let _ = fs::remove_file(b);
    ok
}

fn at(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(std::ffi::OsStr::from_bytes(name))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

fn attrs_of(p: &Path) -> Result<Attrs> {
    let m = fs::symlink_metadata(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Attrs {
        mode: m.mode(),
        uid: m.uid() as u64,
        gid: m.gid() as u64,
        mtime: m.mtime() as u64,
    })
}

fn root_line(a: &Attrs) -> String {
    format!("root {} {} {} {}", a.mode, a.uid, a.gid, a.mtime)
}

fn parse_root(line: &str) -> Option<Attrs> {
    let f: Vec<u64> = line
        .strip_prefix("root ")?
        .split(' ')
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    match f[..] {
        [mode, uid, gid, mtime] => Some(Attrs {
            mode: mode as u32,
            uid,
            gid,
            mtime,
        }),
        _ => None,
    }
}

/// A small private file, fsynced with its folder.
fn write_synced(path: &Path, line: &str) -> Result<()> {
    let mut f = crate::private::create_new(path)?;
    writeln!(f, "{line}")?;
    f.sync_all()?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The append-only, fsynced journal of one restore into a mount point.
struct Journal(File);

impl Journal {
    fn create(staging: &Path) -> Result<Journal> {
        let path = staging.join("journal");
        let f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        sync_dir(staging)?;
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

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(b"/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape(b"/plain"), b"/plain");
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

    fn staged(target: &Path) -> InMount {
        let m = InMount::new(target).unwrap();
        let n = m.write_root();
        fs::create_dir_all(n.join("keep")).unwrap();
        fs::write(n.join("keep/f"), "new").unwrap();
        fs::write(n.join("added"), "added").unwrap();
        m
    }

    fn with_old(target: &Path) {
        fs::create_dir_all(target.join("keep")).unwrap();
        fs::write(target.join("keep/f"), "old").unwrap();
        fs::write(target.join("gone"), "gone").unwrap();
    }

    #[test]
    fn swap_then_undo_restores_the_previous_tree_both_ways() {
        for exchange in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let t = d.path().join("t");
            with_old(&t);
            let before = tree(&t);
            let mut m = staged(&t);
            m.no_exchange = !exchange;
            m.swap().unwrap();
            assert!(tree(&t).contains(&"keep/f=new".to_string()));
            m.undo().unwrap();
            assert_eq!(tree(&t), before);
        }
    }

    #[test]
    fn recovery_undoes_a_partial_journal_and_finishes_a_done_one() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        with_old(&t);
        let before = tree(&t);
        let m = staged(&t);
        // A run killed after its first two steps, as its journal shows.
        let cur = entries(&t, &m.staging).unwrap();
        let new: Vec<Vec<u8>> = entries(&m.write_root(), Path::new(""))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut j = Journal::create(&m.staging).unwrap();
        for step in plan_steps(&cur, &new, true).iter().take(2) {
            j.append(&step.line()).unwrap();
            m.apply(step).unwrap();
        }
        // Recovery runs in another process: rename the staging folder to a dead pid's.
        let dead = t.join(format!("{STAGING_MARK}999999999"));
        fs::rename(&m.staging, &dead).unwrap();
        assert!(is_mixed(&t));
        recover(&t).unwrap();
        assert_eq!(tree(&t), before);
        assert!(!is_mixed(&t));
    }
}
