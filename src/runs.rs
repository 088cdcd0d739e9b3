//! Run records: what a `create` or `rollback` in progress has stopped and which phase it is
//! in, written and fsynced at each phase and removed when the run ends. A record left behind
//! (kill -9, the OOM killer, a power cut) is how `status` and `recover` find a dead run: it is
//! dead exactly when its record exists and the project's lock can be taken.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::hostfs::owned::Made;
use crate::records::RunCommand;
use crate::services::Running;

/// What a create would have recorded as its catalog row, kept so that a dead create can be
/// recorded as `failed` with error `interrupted`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingRow {
    pub project_dir: PathBuf,
    pub storage: PathBuf,
    pub service_version: String,
    pub backup_type: crate::records::BackupType,
    pub compression: String,
    pub created_at: String,
}

/// Where a run is: written (and fsynced) before the phase's work starts. Spelled in the
/// record and in `status` as kebab-case words (`safety-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Begun: nothing stopped yet.
    Begun,
    /// The services are being started again.
    Starting,
    Stopping,
    /// `create`: archiving with the services stopped (no capture).
    Archiving,
    /// `create`: capturing the volumes, the services stopped.
    Capturing,
    /// `create`: the services run again; the archive is written from the captures.
    Compressing,
    /// `rollback`: writing the targets, the services stopped.
    Restoring,
    /// `rollback` stopped first: writing the safety backup, before any target changes
    /// (`recover` removes its partial files).
    SafetyBefore,
    /// `rollback` staged: extracting beside the targets while the services run.
    Staging,
    /// `rollback` staged: swapping the staged trees in, the services stopped.
    Swapping,
    /// `rollback` staged: the services run again; the safety backup is made from the
    /// previous content.
    SafetyAfter,
    /// `rollback` staged: the previous content is being removed (backed up, or not wanted).
    RemovingPrevious,
    /// Written by another version of this tool.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = serde_json::to_value(self).ok();
        f.write_str(word.as_ref().and_then(|w| w.as_str()).unwrap_or("unknown"))
    }
}

/// `<catalog dir>/runs/<project>.json`. `status --format json` prints the first five fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub command: RunCommand,
    pub pid: u32,
    pub started_at: String,
    pub phase: Phase,
    /// Everything it stopped (services and other containers), for messages.
    pub stopped: Vec<String>,
    #[serde(default)]
    pub stopped_services: Vec<String>,
    #[serde(default)]
    pub stopped_containers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_row: Option<PendingRow>,
    /// `rollback --in-place`: targets emptied and not yet completely written, and the safety
    /// backup that puts them back when the run dies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_place: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_backup: Option<PathBuf>,
    /// `create`: captures made (each written here before it is made), removed by recover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captures: Vec<PathBuf>,
    /// `rollback` staged while the services ran: each target and its staging, recorded before
    /// the stop. After a swap the staging holds the previous content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swaps: Vec<SwapRecord>,
    /// `create --remote-only`: the multipart upload being written (`recover` aborts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadRecord>,
    /// The public keys the safety backup is encrypted to (for `recover` to finish it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safety_recipients: Vec<String>,
    /// `rollback --no-safety-backup` staged: the previous content is not wanted (`recover`
    /// removes it instead of backing it up).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_safety_backup: bool,
    /// Staging folders this run made beside or inside its targets, with their device and
    /// inode, recorded before anything is written into them: the only ones `recover` touches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub made: Vec<Made>,
    /// Mount points being restored entry by entry (their staging folder is in `made`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountRecord>,
    /// The hook phases that ran (or were running), so that `recover` runs `on-error` and
    /// never a `before-*` one again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks_ran: Vec<crate::hooks::Phase>,
    /// `--no-hooks`: `recover` runs none either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_hooks: bool,
    /// The backup a rollback restores (for the hooks `recover` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<i64>,
}

/// A bind mount point restored from a staging folder inside it: the root's attributes before
/// and (once staged) as archived, and the journal of the moves, kept beside this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub target: PathBuf,
    pub staging: PathBuf,
    pub root: RootAttrs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_root: Option<RootAttrs>,
    pub journal: PathBuf,
}

/// Owner, mode and time of a target's root folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootAttrs {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// A multipart upload a run has open: the object's URL and the upload's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub url: String,
    pub id: String,
}

/// One target of a rollback staged beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapRecord {
    pub target: PathBuf,
    pub staging: PathBuf,
    /// The inode of the staged root: the target has it once the swap was made.
    pub staged_ino: u64,
}

impl SwapRecord {
    /// Whether the swap was made (the target is the staged tree).
    pub fn swapped(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&self.target).is_ok_and(|m| m.ino() == self.staged_ino)
    }
}

impl RunRecord {
    /// Removes the journals of its mount points (kept beside the record, private).
    fn remove_journals(&self) {
        for m in &self.mounts {
            let _ = std::fs::remove_file(&m.journal);
        }
    }

    /// What the dead run left stopped, to start again.
    pub fn running(&self) -> Running {
        Running {
            services: self.stopped_services.clone(),
            containers: self.stopped_containers.clone(),
        }
    }
}

/// The record of the run this process is making; removed when dropped (the run ended, well
/// or not). A process that dies without unwinding leaves it behind, which is the point.
pub struct ActiveRun {
    path: PathBuf,
    record: RunRecord,
    /// How to start what [`ActiveRun::stopping`] recorded when a panic unwinds through here:
    /// the one restart guard of every run that stops services.
    restart: Option<(crate::docker::Docker, crate::cli::ComposeArgs)>,
}

/// Where the records of catalog `catalog` live.
pub fn dir_for(catalog: &Path) -> PathBuf {
    catalog.parent().unwrap_or(Path::new(".")).join("runs")
}

pub fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// The record a previous run of `project` left, if any (callers decide whether it is dead).
/// Fails, naming the path and the fix, when the record or a folder holding it is not private
/// (a link, another user's, or writable by group or others): it is then not trusted.
pub fn read(dir: &Path, project: &str) -> Result<Option<RunRecord>> {
    read_named(dir, project)
}

/// The private record `<dir>/<name>.json` (a run's, a restore test's), trusted as [`read`]
/// says.
pub fn read_named<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>> {
    let path = path_of(dir, name);
    if let Some(catalog_dir) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::hostfs::owned::check_private(catalog_dir)?;
    }
    crate::hostfs::owned::check_private(dir)?;
    crate::hostfs::owned::check_private(&path)?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "run record {} is damaged: remove it after checking the project",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Removes a dead run's record `rec` (after it was recovered), and its journals.
pub fn remove(dir: &Path, project: &str, rec: &RunRecord) -> Result<()> {
    let path = path_of(dir, project);
    rec.remove_journals();
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => crate::storage::sync_dir(dir),
    }
}

/// Set once this process begins a run record: a run that failed after that is one the
/// on-error hooks are for; a refusal before it (busy, no space, running services) is not.
static BEGAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process began a run (wrote its run record).
pub fn began() -> bool {
    BEGAN.load(std::sync::atomic::Ordering::SeqCst)
}

impl ActiveRun {
    /// Starts the record of `command` on `project` (call while holding the project's lock).
    pub fn begin(dir: &Path, project: &str, command: RunCommand) -> Result<ActiveRun> {
        crate::private::create_dir_all(dir)?;
        BEGAN.store(true, std::sync::atomic::Ordering::SeqCst);
        let run = ActiveRun {
            restart: None,
            path: path_of(dir, project),
            record: RunRecord {
                command,
                pid: std::process::id(),
                started_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                phase: Phase::Begun,
                stopped: Vec::new(),
                stopped_services: Vec::new(),
                stopped_containers: Vec::new(),
                pending_row: None,
                in_place: Vec::new(),
                safety_backup: None,
                captures: Vec::new(),
                swaps: Vec::new(),
                upload: None,
                safety_recipients: Vec::new(),
                no_safety_backup: false,
                made: Vec::new(),
                mounts: Vec::new(),
                hooks_ran: Vec::new(),
                no_hooks: false,
                backup_id: None,
            },
        };
        run.write()?;
        Ok(run)
    }

    /// Moves to `phase` (written and fsynced before the phase's work starts).
    pub fn phase(&mut self, phase: Phase) -> Result<()> {
        self.record.phase = phase;
        self.write()
    }

    /// Records the staged targets of a rollback, before anything is stopped or swapped, and
    /// what becomes of the previous content: a safety backup to these recipients, or none.
    pub fn swaps(
        &mut self,
        swaps: Vec<SwapRecord>,
        safety_recipients: &[String],
        no_safety_backup: bool,
    ) -> Result<()> {
        self.record.swaps = swaps;
        self.record.safety_recipients = safety_recipients.to_vec();
        self.record.no_safety_backup = no_safety_backup;
        self.write()
    }

    /// Leaves the record in place when the run ends (what it left is for `recover` to finish).
    pub fn keep(self) {
        std::mem::forget(self);
    }

    /// Records how hooks go with this run: skipped (`--no-hooks`), and the backup it restores.
    pub fn hooks(&mut self, no_hooks: bool, backup_id: Option<i64>) -> Result<()> {
        self.record.no_hooks = no_hooks;
        self.record.backup_id = backup_id;
        self.write()
    }

    /// Records that the hooks of `phase` are about to run.
    pub fn hook_phase(&mut self, phase: crate::hooks::Phase) -> Result<()> {
        if !self.record.hooks_ran.contains(&phase) {
            self.record.hooks_ran.push(phase);
        }
        self.write()
    }

    /// Records a capture about to be made.
    pub fn capture(&mut self, path: &Path) -> Result<()> {
        self.record.captures.push(path.to_path_buf());
        self.write()
    }

    /// Records what is about to be stopped, before stopping it; from now on a panic starts
    /// it again on its way out (the record stays for `recover` too).
    pub fn stopping(
        &mut self,
        running: &Running,
        (docker, compose): (&crate::docker::Docker, &crate::cli::ComposeArgs),
    ) -> Result<()> {
        self.restart = Some((docker.clone(), compose.clone()));
        self.record.stopped = running.names();
        self.record.stopped_services = running.services.clone();
        self.record.stopped_containers = running.containers.clone();
        self.phase(Phase::Stopping)
    }

    /// Records the safety backup that can put emptied targets back.
    pub fn safety_backup(&mut self, file: &Path) -> Result<()> {
        self.record.safety_backup = Some(file.to_path_buf());
        self.write()
    }

    /// Records that `target` is about to be emptied (`done == false`) or was written whole.
    pub fn in_place(&mut self, target: &Path, done: bool) -> Result<()> {
        self.record.in_place.retain(|t| t != target);
        if !done {
            self.record.in_place.push(target.to_path_buf());
        }
        self.write()
    }

    /// Records a staging folder just made, before anything is written into it.
    pub fn made(&mut self, m: &Made) -> Result<()> {
        if self.record.made.contains(m) {
            return Ok(());
        }
        self.record.made.push(m.clone());
        self.write()
    }

    /// Records a mount point about to be restored through a staging folder inside it.
    pub fn mount(&mut self, m: MountRecord) -> Result<()> {
        self.record.mounts.retain(|r| r.target != m.target);
        self.record.mounts.push(m);
        self.write()
    }

    /// Records the archived root attributes of the mount point `target`, before its swap.
    pub fn mount_new_root(&mut self, target: &Path, a: RootAttrs) -> Result<()> {
        if let Some(m) = self.record.mounts.iter_mut().find(|m| m.target == target) {
            m.new_root = Some(a);
        }
        self.write()
    }

    /// A private file beside this record for the journal of mount point number `n`.
    pub fn journal_path(&self, n: usize) -> PathBuf {
        self.path
            .with_extension(format!("{}.journal-{n}", self.record.pid))
    }

    /// The mount points recorded so far.
    pub fn mount_count(&self) -> usize {
        self.record.mounts.len()
    }

    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    /// Records a multipart upload as soon as the server gave its id.
    pub fn upload(&mut self, url: &str, id: &str) -> Result<()> {
        self.record.upload = Some(UploadRecord {
            url: url.to_string(),
            id: id.to_string(),
        });
        self.write()
    }

    pub fn pending_row(&mut self, row: PendingRow) -> Result<()> {
        self.record.pending_row = Some(row);
        self.write()
    }

    /// Write to a temporary file, fsync, rename, fsync the folder: never a half record.
    fn write(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.record)?;
        crate::private::replace(&self.path, &bytes)
            .with_context(|| format!("writing run record {}", self.path.display()))
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        // A panic unwinds through here while services may be down: they are started again,
        // and the record stays, so `recover` (or the next run) finishes what the run left.
        if std::thread::panicking() {
            if let Some((docker, compose)) = &self.restart {
                let _ = crate::services::start(docker, compose, &self.record.running());
            }
            return;
        }
        self.record.remove_journals();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn phases_are_spelled_as_records_spell_them_and_an_unknown_one_still_reads() {
        for (phase, word) in [
            (Phase::Starting, "starting"),
            (Phase::Capturing, "capturing"),
            (Phase::SafetyAfter, "safety-after"),
            (Phase::RemovingPrevious, "removing-previous"),
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), word);
            assert_eq!(phase.to_string(), word);
            assert_eq!(serde_json::from_value::<Phase>(word.into()).unwrap(), phase);
        }
        let later: Phase = serde_json::from_value("checking-twice".into()).unwrap();
        assert_eq!(later, Phase::Unknown);
    }

    #[test]
    fn a_record_lives_while_the_run_does_and_is_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("runs");
        let mut run = ActiveRun::begin(&dir, "p", RunCommand::Create).unwrap();
        let docker = crate::docker::Docker::at("/bin/true".into());
        let running = Running {
            services: vec!["db".into()],
            containers: vec!["p-x-1".into()],
        };
        run.stopping(&running, (&docker, &Default::default()))
            .unwrap();
        run.phase(Phase::Archiving).unwrap();
        let rec = read(&dir, "p").unwrap().unwrap();
        assert_eq!(rec.phase, Phase::Archiving);
        assert_eq!(rec.stopped, ["db", "p-x-1"]);
        assert_eq!(rec.running().services, ["db"]);
        let meta = std::fs::metadata(dir.join("p.json")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        drop(run);
        assert!(read(&dir, "p").unwrap().is_none());
    }

    #[test]
    fn a_panic_while_services_are_down_starts_them_again_and_keeps_the_record() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("runs");
        let log = d.path().join("calls");
        let fake = d.path().join("docker");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$*\" >> '{}'\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let docker = crate::docker::Docker::at(fake);
        let running = Running {
            services: vec!["db".into()],
            containers: vec!["p-x-1".into()],
        };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut run = ActiveRun::begin(&dir, "p", RunCommand::Create).unwrap();
            run.stopping(&running, (&docker, &Default::default()))
                .unwrap();
            panic!("a bug while the services are down");
        }));
        assert!(panicked.is_err());
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(calls.contains("compose start db\n"), "{calls}");
        assert!(calls.contains("start p-x-1\n"), "{calls}");
        assert_eq!(read(&dir, "p").unwrap().unwrap().stopped, ["db", "p-x-1"]);
    }

    #[test]
    fn a_forgotten_record_stays_for_recovery() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("runs");
        let run = ActiveRun::begin(&dir, "p", RunCommand::Rollback).unwrap();
        std::mem::forget(run);
        let rec = read(&dir, "p").unwrap().unwrap();
        assert_eq!(rec.command, RunCommand::Rollback);
        remove(&dir, "p", &rec).unwrap();
        assert!(read(&dir, "p").unwrap().is_none());
    }

    #[test]
    fn a_panic_leaves_the_record_for_recovery() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("runs");
        let inner = dir.clone();
        let died = std::thread::spawn(move || {
            let _run = ActiveRun::begin(&inner, "p", RunCommand::Create).unwrap();
            panic!("a bug while the services are down");
        })
        .join();
        assert!(died.is_err());
        assert_eq!(
            read(&dir, "p").unwrap().unwrap().command,
            RunCommand::Create
        );
    }

    #[test]
    fn a_record_others_could_write_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("runs");
        ActiveRun::begin(&dir, "p", RunCommand::Rollback)
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = read(&dir, "p").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{} is writable by group or others (mode 777)",
                dir.display()
            )),
            "{e}"
        );
    }
}
