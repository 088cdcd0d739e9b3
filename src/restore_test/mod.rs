//! `verify --restore-test`: proves a backup restores by starting a throw-away copy of the
//! project from it. Verify → restore into scratch volumes and folders → the copy's model
//! (pure, [`model`]) → up → wait for health → the operator's checks → tear down, whatever
//! happened. The live project is never stopped, changed or reached.
mod copy;
pub mod model;
mod scratch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::catalog::BackupRow;
use crate::exit_codes::{Code, UserError};
use crate::hostfs::owned::{self, Made};
use crate::output::{note, warn};
use crate::Context;

/// `--timeout`, `--settle`, `--keep`.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub timeout: Duration,
    pub settle: Duration,
    pub keep: bool,
}

/// Where a restore test failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The archive did not verify.
    Verify,
    /// Writing the scratch copies of the volumes.
    Restore,
    /// Reading the archived compose files.
    Model,
    /// `up`, or a service that exited or restarted.
    Start,
    /// A healthcheck failed, or did not pass in time.
    Health,
    /// A check of `x-nuwax-backup.restore-test` or `nuwaxbackup.restore-test` failed.
    Test,
}

crate::records::words!(Step {
    Verify => "verify",
    Restore => "restore",
    Model => "model",
    Start => "start",
    Health => "health",
    Test => "test"
});

/// Why a step failed: the service, and the last line of what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub service: Option<String>,
    pub line: String,
}

impl Failure {
    fn new(step: Step, service: Option<&str>, line: impl Into<String>) -> Failure {
        Failure {
            step,
            service: service.map(String::from),
            line: line.into(),
        }
    }

    /// The failure of `step` that error `e` is (no service named).
    fn at(step: Step) -> impl Fn(anyhow::Error) -> Failure {
        move |e| Failure::new(step, None, format!("{e:#}"))
    }

    /// `health (service db): <line>`: what the catalog keeps and the error says.
    pub fn text(&self) -> String {
        match &self.service {
            Some(s) => format!("{} (service {s}): {}", self.step, self.line),
            None => format!("{}: {}", self.step, self.line),
        }
    }
}

/// What `--format json` prints of a restore test.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    /// The copy's compose project.
    pub project: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// `--keep`: the copy is left running.
    pub kept: bool,
}

/// A restore test in progress, `<catalog dir>/runs/<project>.restoretest.json`: what `recover`
/// removes when the test was killed (the copy's project, by its labels; the scratch folder,
/// when it is still the one the test made).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    pid: u32,
    started_at: String,
    backup_id: i64,
    copy: String,
    scratch: Made,
}

/// The copy's compose project name.
pub fn copy_name(project: &str, id: i64) -> String {
    format!("{project}-restoretest-{id}")
}

/// The record's name among the run records: `<project>.restoretest` (a project name has no
/// `.`, so it is no project's).
fn record_name(project: &str) -> String {
    format!("{project}.restoretest")
}

fn record_path(ctx: &Context, project: &str) -> PathBuf {
    crate::runs::path_of(&ctx.runs_dir(), &record_name(project))
}

/// Runs the restore test of `row` and records its outcome in the catalog. Fails with exit 12
/// when the archive does not verify, 18 when the copy did not start, turn healthy or pass.
pub fn run(ctx: &Context, row: &BackupRow, opts: Options) -> Result<Report> {
    let _lock = ctx.lock(&record_name(&row.project), "restore-test")?;
    recover(ctx, &row.project)?;
    let _pin = ctx.pin(row.id, "restore-test")?;
    let started = Instant::now();
    let copy = copy_name(&row.project, row.id);
    note(format!(
        "restore test of backup #{}: the copy is project {copy}",
        row.id
    ));
    let verified = match crate::restore::verify_row(ctx, row) {
        Ok(v) => v,
        Err(e) => {
            let f = Failure::new(Step::Verify, None, format!("{e:#}"));
            ctx.catalog()?
                .record_restore_test(row.id, Some(&f.text()))?;
            return Err(e);
        }
    };
    let rec = begin(ctx, row, &copy)?;
    let tested = attempt(ctx, row, &verified, &rec, opts);
    if opts.keep {
        kept_note(&rec);
    } else {
        teardown(ctx, &rec);
    }
    let _ = std::fs::remove_file(record_path(ctx, &row.project));
    crate::cancel::check()?;
    let failure = tested.err();
    ctx.catalog()?
        .record_restore_test(row.id, failure.as_ref().map(Failure::text).as_deref())?;
    let report = Report {
        passed: failure.is_none(),
        project: copy,
        step: failure.as_ref().map(|f| f.step),
        service: failure.as_ref().and_then(|f| f.service.clone()),
        error: failure.as_ref().map(|f| f.line.clone()),
        duration_ms: started.elapsed().as_millis() as u64,
        kept: opts.keep,
    };
    match failure {
        None => {
            note(format!("restore test of backup #{} passed", row.id));
            Ok(report)
        }
        Some(f) => Err(UserError::new(
            Code::RestoreTest,
            format!("restore test of backup #{} failed at {}", row.id, f.text()),
        )
        .into()),
    }
}

/// Makes the private scratch folder beside the archive and records the test before anything
/// of the copy exists.
fn begin(ctx: &Context, row: &BackupRow, copy: &str) -> Result<Record> {
    let storage = Path::new(&row.file_path)
        .parent()
        .context("the archive has no folder")?;
    let name = format!(".nuwax-restoretest-{}-{}", row.id, std::process::id());
    let (_, scratch) = owned::make_dir(storage, &name)?;
    let rec = Record {
        pid: std::process::id(),
        started_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        backup_id: row.id,
        copy: copy.to_string(),
        scratch,
    };
    crate::private::create_dir_all(&ctx.runs_dir())?;
    crate::private::replace(
        &record_path(ctx, &row.project),
        &serde_json::to_vec_pretty(&rec)?,
    )?;
    Ok(rec)
}

/// The steps after verify; the first failure ends them.
fn attempt(
    ctx: &Context,
    row: &BackupRow,
    verified: &crate::archive::reader::Verified,
    rec: &Record,
    opts: Options,
) -> std::result::Result<(), Failure> {
    let deadline = Instant::now() + opts.timeout;
    let restored = scratch::restore(ctx, verified, &rec.scratch.path, &rec.copy)
        .map_err(Failure::at(Step::Restore))?;
    let live = copy::Copy::model(ctx, row, verified, &restored, &rec.copy)
        .map_err(Failure::at(Step::Model))?;
    live.up(deadline)?;
    live.wait_ready(&verified.manifest, opts.settle, deadline)?;
    live.checks(deadline)
}

fn kept_note(rec: &Record) {
    note(format!(
        "kept: the copy runs as project {0}; remove it with `docker compose -p {0} down -v` and `rm -rf {1}`",
        rec.copy,
        rec.scratch.path.display()
    ));
}

/// Removes the copy (its containers, networks and volumes, found by its project label) and
/// the scratch folder, when it is still the one the test made.
fn teardown(ctx: &Context, rec: &Record) {
    copy::remove_project(&ctx.docker, &rec.copy);
    match owned::open_made(&rec.scratch) {
        Ok(_) => {
            if let Err(e) = std::fs::remove_dir_all(&rec.scratch.path) {
                warn(format!("removing {}: {e}", rec.scratch.path.display()));
            }
        }
        Err(e) => warn(format!("{e:#}")),
    }
}

/// Removes what a killed restore test of `project` left (its record names it), unless the
/// test is alive. Called by `recover` and before each restore test.
pub fn recover(ctx: &Context, project: &str) -> Result<()> {
    let Some(rec) = crate::runs::read_named::<Record>(&ctx.runs_dir(), &record_name(project))?
    else {
        return Ok(());
    };
    let path = record_path(ctx, project);
    if rec.pid != std::process::id() {
        warn(format!(
            "found an interrupted restore test of backup #{} (pid {}, started {}): removing its copy {}",
            rec.backup_id, rec.pid, rec.started_at, rec.copy
        ));
    }
    teardown(ctx, &rec);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// `recover`'s part: the restore test's lock is free (no test runs), then [`recover`].
pub fn recover_unlocked(ctx: &Context, project: &str) -> Result<()> {
    match ctx.lock(&record_name(project), "recover") {
        Ok(_lock) => recover(ctx, project),
        Err(_) => Ok(()),
    }
}
