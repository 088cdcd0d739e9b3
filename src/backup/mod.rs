//! `create`: plan → gate → stop? → read volumes → archive → record → start again.
pub(crate) mod capture;
mod copy;
mod pack;
pub mod plan;
mod priority;
mod reading;
mod tree;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};

use self::reading::Reading;
use crate::catalog::{BackupRow, Catalog, NewBackup};
use crate::compose::{Project, Volume};
use crate::exit_codes::{Code, UserError};
use crate::hooks::run::{Env as HookEnv, Runner};
use crate::hooks::Phase;
use crate::output::{human_bytes, note, warn};
use crate::records::RemoteStatus;
use crate::records::RunCommand;
use crate::runs::{ActiveRun, PendingRow, Phase as RunPhase};
use crate::services::{self, Running};
use crate::survey::{survey, Survey};
use crate::volumes::plain_local_folder;
use crate::{cancel, storage, Context};
pub use plan::{Options, Plan};

/// What `create` ended with: the row, and the error of its upload when that failed (the
/// local backup is complete either way).
pub enum Outcome {
    DryRun(Plan),
    Done(BackupRow, Option<anyhow::Error>),
}

/// `create --remote` / `x-nuwax-backup.remote`.
#[derive(Debug, Clone, Default)]
pub struct RemoteRequest {
    pub flag: Option<String>,
    pub max_parts: u64,
    /// Stream the archive to the bucket; no local file.
    pub only: bool,
}

impl RemoteRequest {
    /// The bucket to copy to: the flag, else the compose file's; a bad URL is a usage error.
    fn resolve(&self, project: &Project) -> Result<Option<crate::remote::RemoteUrl>> {
        let Some(text) = self.flag.as_ref().or(project.extension.remote.as_ref()) else {
            return Ok(None);
        };
        crate::remote::RemoteUrl::parse(text)
            .map(Some)
            .map_err(|e| UserError::new(Code::Usage, format!("{e:#}")).into())
    }
}

/// `--remote-only`: begins the upload before anything stops (a bucket that cannot be
/// written fails here, exit 14, with no downtime) and records it for `recover`.
fn begin_stream(
    store: &crate::remote::Store,
    plan: &Plan,
    max_parts: u64,
    run: &mut ActiveRun,
) -> Result<crate::remote::transfer::PartSink> {
    // Parts sized from the raw size (the archive is no larger, give or take 1%).
    let expected = plan.bytes_needed + plan.bytes_needed / 100 + (1 << 20);
    let sink = crate::remote::transfer::PartSink::begin(
        store,
        &plan.project,
        &plan.archive_name,
        expected,
        max_parts,
    )?;
    run.upload(&sink.url, sink.upload_id())?;
    Ok(sink)
}

/// `--remote-only` needs a remote.
fn check_remote_only(
    remote: &RemoteRequest,
    target: Option<&crate::remote::RemoteUrl>,
) -> Result<()> {
    if remote.only && target.is_none() {
        return Err(UserError::new(
            Code::Usage,
            "--remote-only needs a bucket: pass --remote s3://BUCKET[/PREFIX] or set x-nuwax-backup.remote",
        )
        .into());
    }
    Ok(())
}

/// What takes the project's lock (and recovers a dead run) for a create: the command's part.
pub type LockFn<'a> = dyn Fn(Project, &Catalog) -> Result<(ProjectLock, Project)> + 'a;

/// Runs a backup (or only plans it). Fails with a user error when running containers block
/// it, the project is locked, space is short, or services cannot be started again. With a
/// remote, uploads once the services run again, under the project's upload lock only.
/// `lock` takes the project's lock and recovers a dead run (the command's part: the pipeline
/// knows neither); it is not called for a dry run.
pub fn run(
    ctx: &Context,
    opts: &Options,
    remote: &RemoteRequest,
    dry_run: bool,
    lock: &LockFn<'_>,
) -> Result<Outcome> {
    let project = Project::load(&ctx.docker, &ctx.compose)?;
    let target = remote.resolve(&project)?;
    check_remote_only(remote, target.as_ref())?;
    let store = match (&target, dry_run) {
        (Some(url), false) => Some(crate::remote::open(url)?),
        _ => None,
    };
    let catalog = ctx.catalog()?;
    let (lock, project) = if dry_run {
        (None, project)
    } else {
        let (l, p) = lock(project, &catalog)?;
        (Some(l), p)
    };
    let mut plan = planned(ctx, &project, opts, &catalog, chrono::Utc::now())?;
    plan.remote = target.as_ref().map(|u| u.to_string());
    for s in &plan.skipped {
        warn(format!("not backed up: {}: {}", s.volume, s.reason));
    }
    if dry_run {
        return Ok(Outcome::DryRun(plan));
    }
    gate(&project, opts)?;
    let hooks =
        Runner::new(ctx, &project, opts.no_hooks).check_running(&project, &Phase::CREATE)?;
    storage::prepare(&plan.storage)?;
    for p in storage::remove_stale_partials(&plan.storage, &project.name) {
        note(format!(
            "removed {} left by an interrupted backup",
            p.display()
        ));
    }
    if !remote.only {
        check_space(&plan)?;
    }
    let mut run = ActiveRun::begin(&ctx.runs_dir(), &project.name, RunCommand::Create)?;
    run.hooks(opts.no_hooks, None)?;
    run.pending_row(pending_row(&project, &plan))?;
    if hooks.of(Phase::BeforeBackup).next().is_some() {
        plan = before_backup(ctx, (&project, opts, &catalog), plan, &hooks, &mut run)?;
        if !remote.only {
            check_space(&plan)?;
        }
    }
    let dest = match &store {
        Some(store) if remote.only => {
            let sink = begin_stream(store, &plan, remote.max_parts, &mut run)?;
            write::Destination::Remote(Box::new(sink))
        }
        _ => write::Destination::Storage,
    };
    let row = execute(
        ctx,
        opts,
        (&project, &plan, &hooks),
        &catalog,
        &mut run,
        dest,
    )?;
    // The backup is recorded: a kill from here on leaves nothing for `recover` but the upload.
    drop(run);
    let (row, upload_error) = match store {
        None => (row, None),
        Some(store) => copy_off(ctx, &store, remote, &catalog, row, lock)?,
    };
    if upload_error.is_none() {
        let env = hook_env(&plan, Some(&row));
        hooks
            .phase(Phase::AfterBackup, &env, None)
            .with_context(|| format!("backup #{} completed ({}), but", row.id, row.file_path))?;
    }
    Ok(Outcome::Done(row, upload_error))
}

/// The backup plan: what the engine and the filesystem say now, and the options.
fn planned(
    ctx: &Context,
    project: &Project,
    opts: &Options,
    catalog: &Catalog,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Plan> {
    let mut facts = gather_facts(ctx, project, catalog)?;
    if opts.stop && opts.capture != plan::CaptureMode::Direct {
        capture_facts(project, opts, &mut facts);
    }
    Ok(plan::build(project, opts, &facts, at))
}

/// Runs the before-backup hooks, the services still running. When one fails the run ends
/// with a failed row naming it, before anything stopped; else the plan is made again (a
/// hook may have written a dump into a volume), under the same name.
fn before_backup(
    ctx: &Context,
    (project, opts, catalog): (&Project, &Options, &Catalog),
    plan: Plan,
    hooks: &Runner<'_>,
    run: &mut ActiveRun,
) -> Result<Plan> {
    let env = hook_env(&plan, None);
    if let Err(e) = hooks.phase(Phase::BeforeBackup, &env, Some(run)) {
        record_failure(catalog, project, &plan, 0, &e);
        return Err(e);
    }
    let mut again = planned(ctx, project, opts, catalog, plan.at)?;
    again.remote = plan.remote;
    run.pending_row(pending_row(project, &again))?;
    Ok(again)
}

/// What the hooks of a create are told: its type; once recorded, its row and archive.
fn hook_env(plan: &Plan, row: Option<&BackupRow>) -> HookEnv {
    HookEnv {
        id: row.map(|r| r.id),
        file: row.map(|r| r.file_path.clone()),
        backup_type: Some(plan.backup_type.to_string()),
        error: None,
    }
}

/// Copies the recorded backup to its bucket (or seals the object it was streamed to),
/// under the project's upload lock only. The row as it is then, and the upload's error.
fn copy_off(
    ctx: &Context,
    store: &crate::remote::Store,
    remote: &RemoteRequest,
    catalog: &Catalog,
    row: BackupRow,
    lock: Option<ProjectLock>,
) -> Result<(BackupRow, Option<anyhow::Error>)> {
    if remote.only {
        let sealed = crate::remote::transfer::finish_streamed(store, catalog, &row);
        let row = catalog.get(row.id)?.unwrap_or(row);
        return Ok((row, sealed.err()));
    }
    let upload_lock = ctx.lock(&format!("{}.upload", row.project), "upload");
    drop(lock);
    let pushed = upload_lock.and_then(|_held| {
        crate::remote::transfer::abort_stale(catalog, Some(&row.project));
        crate::remote::transfer::upload(store, catalog, &row, remote.max_parts)
    });
    let row = catalog.get(row.id)?.unwrap_or(row);
    Ok((row, pushed.err()))
}

/// Refuses while containers run, unless `--stop` was given.
fn gate(project: &Project, opts: &Options) -> Result<()> {
    let blockers = project.blockers();
    if blockers.is_empty() || opts.stop {
        return Ok(());
    }
    let list: Vec<String> = blockers
        .iter()
        .map(|b| format!("{} ({})", b.container, b.reason))
        .collect();
    Err(UserError::new(
        Code::NotStopped,
        format!(
            "cold backup refused, containers of project {} are running: {}; stop them with `docker compose stop`, or pass --stop",
            project.name,
            list.join(", ")
        ),
    )
    .into())
}

fn check_space(plan: &Plan) -> Result<()> {
    let free = storage::free_bytes(&plan.storage)?;
    if free < plan.bytes_needed {
        return Err(UserError::new(
            Code::NoSpace,
            format!(
                "not enough space in {}: {} free, up to {} needed (the volumes' size); free space or pass --storage DIR",
                plan.storage.display(),
                human_bytes(free),
                human_bytes(plan.bytes_needed)
            ),
        )
        .into());
    }
    Ok(())
}

use crate::lock::ProjectLock;
use crate::records::Timing;

/// Stops (with `--stop`), archives, starts again, and records the outcome in the catalog.
fn execute(
    ctx: &Context,
    opts: &Options,
    (project, plan, hooks): (&Project, &Plan, &Runner<'_>),
    catalog: &Catalog,
    run: &mut ActiveRun,
    dest: write::Destination,
) -> Result<BackupRow> {
    let running = if opts.stop {
        Running::of(project)
    } else {
        Running::default()
    };
    let s = Stopped {
        ctx,
        project,
        plan,
        running: &running,
        started: Instant::now(),
        hooks,
        after_start: std::cell::RefCell::new(None),
    };
    if !running.is_empty() {
        note(format!("stopping {}", running.names().join(", ")));
    }
    let mut timing = Timing::default();
    let stopped = run
        .stopping(&running, (&ctx.docker, &ctx.compose))
        .and_then(|()| services::stop(&ctx.docker, &ctx.compose, &running))
        .and_then(|()| cancel::check());
    let (work, restart) = match stopped {
        Err(e) => (Err(e), s.restart(run, &mut timing)),
        Ok(()) if plan.capture_places.is_empty() => direct(&s, run, &mut timing, dest),
        Ok(()) => with_capture(&s, run, &mut timing, dest),
    };
    let duration_ms = s.started.elapsed().as_millis() as u64;
    let row = conclude(catalog, project, plan, work, restart, duration_ms, timing)?;
    match s.after_start.into_inner() {
        None => Ok(row),
        Some(e) => Err(e.context(format!(
            "backup #{} completed ({}), but",
            row.id, row.file_path
        ))),
    }
}

/// What a backup works with from the stop on.
struct Stopped<'a> {
    ctx: &'a Context,
    project: &'a Project,
    plan: &'a Plan,
    running: &'a Running,
    started: Instant,
    hooks: &'a Runner<'a>,
    /// The after-start hook's failure: the backup goes on, and the run fails at its end.
    after_start: std::cell::RefCell<Option<anyhow::Error>>,
}

impl Stopped<'_> {
    /// Starts the stopped services again, notes how long they were down, then runs the
    /// after-start hooks (their failure is kept for the end: the archive goes on).
    fn restart(&self, run: &mut ActiveRun, timing: &mut Timing) -> Result<()> {
        // A record that cannot be written never keeps the services down: they start, then
        // the error is reported.
        let phase = run.phase(RunPhase::Starting);
        let started = match self.running.is_empty() {
            true => Ok(()),
            false => {
                note(format!("starting {}", self.running.names().join(", ")));
                let started = services::start(&self.ctx.docker, &self.ctx.compose, self.running);
                timing.downtime_ms = self.started.elapsed().as_millis() as u64;
                started
            }
        };
        started.and(phase)?;
        let env = hook_env(self.plan, None);
        if let Err(e) = self.hooks.phase(Phase::AfterStart, &env, Some(run)) {
            self.after_start.replace(Some(e));
        }
        Ok(())
    }
}

/// Archives the volumes as they are, then starts the services. The archive's outcome, then
/// the restart's.
fn direct(
    s: &Stopped<'_>,
    run: &mut ActiveRun,
    timing: &mut Timing,
    dest: write::Destination,
) -> (Result<Written>, Result<()>) {
    let written = run.phase(RunPhase::Archiving).and_then(|()| {
        crate::fault::point(crate::fault::Fault::CreateArchiving);
        write::archive(s.ctx.into(), s.project, s.plan, &Reading::live(), dest)
    });
    (written, s.restart(run, timing))
}

/// The archive begins at once, reading the volumes while their captures are made beside them;
/// once every capture is made it goes on from them (the hand-over), and the services start
/// meanwhile. When the capture fails the archive reads the volumes to the end, the services
/// stopped. The captures are removed at the end.
fn with_capture(
    s: &Stopped<'_>,
    run: &mut ActiveRun,
    timing: &mut Timing,
    dest: write::Destination,
) -> (Result<Written>, Result<()>) {
    let reading = Reading::capturing(s.plan, |p| capture::path_of(&s.plan.project, p));
    if let Err(e) = run.phase(RunPhase::Capturing) {
        return (Err(e), s.restart(run, timing));
    }
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (reading, project, plan, failed) = (&reading, s.project, s.plan, &failed);
        let engine = write::Engine::from(s.ctx);
        let archiving = scope.spawn(move || {
            priority::while_down();
            let written = write::archive(engine, project, plan, reading, dest);
            failed.store(written.is_err(), std::sync::atomic::Ordering::Relaxed);
            written
        });
        let joined = |h: std::thread::ScopedJoinHandle<'_, Result<Written>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the archive thread panicked")))
        };
        let t0 = Instant::now();
        let archive_failed = || failed.load(std::sync::atomic::Ordering::Relaxed);
        match capture::take(s.ctx, s.project, s.plan, run, &archive_failed) {
            Ok(c) => {
                reading.hand_over(c);
                timing.capture = s.plan.capture;
                timing.capture_ms = t0.elapsed().as_millis() as u64;
            }
            Err(e) => {
                // When the archive failed the capture was given up: its error is the one.
                if !cancel::requested() && !archive_failed() {
                    warn(format!(
                        "{e:#}: archiving directly while the services are stopped"
                    ));
                }
                reading.stay_live();
                let written = joined(archiving);
                return (written, s.restart(run, timing));
            }
        }
        let restart = s.restart(run, timing);
        priority::services_up();
        if let Err(e) = run.phase(RunPhase::Compressing) {
            // Harmless to a recover (it would restart running services and remove the
            // captures of a dead run), but said.
            warn(format!(
                "{e:#}: the run record still says the volumes are being captured"
            ));
        }
        crate::fault::point(crate::fault::Fault::CreateCompressing);
        if !archiving.is_finished() {
            note("the services run again; the archive goes on from the capture");
        }
        // The captures go while the archive writes its manifest and syncs.
        reading.wait_all_read(|| archiving.is_finished());
        if let Some(c) = reading.captures() {
            capture::remove(c);
        }
        (joined(archiving), restart)
    })
}

/// Records the outcome: a completed row (then a failed restart is still an error), or a
/// failed one.
fn conclude(
    catalog: &Catalog,
    project: &Project,
    plan: &Plan,
    work: Result<Written>,
    restart: Result<()>,
    duration_ms: u64,
    timing: Timing,
) -> Result<BackupRow> {
    match (work, restart) {
        (Ok(done), restart) => {
            let row = record_completed(catalog, project, plan, &done, duration_ms, timing)?;
            let id = row.id;
            restart.with_context(|| {
                format!("backup #{id} completed ({}), but", done.path.display())
            })?;
            Ok(row)
        }
        (Err(err), restart) => {
            let err = if cancel::requested() {
                UserError::new(Code::Cancelled, "cancelled").into()
            } else {
                err
            };
            record_failure(catalog, project, plan, duration_ms, &err);
            match restart {
                Ok(()) => Err(err),
                Err(r) => Err(r.context(format!("backup failed ({err:#}), and"))),
            }
        }
    }
}

/// A backup of a project whose containers are already stopped (rollback's safety backup):
/// no gate, no stop, no start. Fails like `create` does, recording a failed row.
pub fn create_stopped(
    ctx: &Context,
    project: &Project,
    opts: &Options,
    catalog: &Catalog,
    previous: &HashMap<PathBuf, PathBuf>,
) -> Result<BackupRow> {
    let started = Instant::now();
    let facts = gather_facts(ctx, project, catalog)?;
    let plan = plan::build(project, opts, &facts, chrono::Utc::now());
    storage::prepare(&plan.storage)?;
    check_space(&plan)?;
    match write::archive(
        ctx.into(),
        project,
        &plan,
        &Reading::captured(moved_away(&plan, previous)),
        write::Destination::Storage,
    ) {
        Ok(done) => record_completed(
            catalog,
            project,
            &plan,
            &done,
            started.elapsed().as_millis() as u64,
            Timing::default(),
        ),
        Err(err) => {
            record_failure(
                catalog,
                project,
                &plan,
                started.elapsed().as_millis() as u64,
                &err,
            );
            Err(err)
        }
    }
}

fn pending_row(project: &Project, plan: &Plan) -> PendingRow {
    PendingRow {
        project_dir: project.dir.clone(),
        storage: plan.storage.clone(),
        service_version: plan.service_version.clone(),
        backup_type: plan.backup_type,
        compression: plan.compression.to_string(),
        created_at: plan.created_at.clone(),
    }
}

fn record_completed(
    catalog: &Catalog,
    project: &Project,
    plan: &Plan,
    done: &Written,
    duration_ms: u64,
    timing: Timing,
) -> Result<BackupRow> {
    let new = NewBackup::completed(
        origin_of(project, plan),
        &done.path,
        (done.size, &done.sha256, done.file_count),
    );
    let id = catalog.insert(&new.took(duration_ms, Some(timing)))?;
    if let Some(url) = &done.remote_url {
        let state = crate::catalog::RemoteState {
            url: Some(url.clone()),
            status: Some(RemoteStatus::Failed),
            error: Some("its sidecar is not written yet".into()),
            upload_id: None,
        };
        catalog.set_remote(id, &state)?;
        return catalog.get(id)?.context("reading back the catalog row");
    }
    let row = catalog.get(id)?.context("reading back the catalog row")?;
    if let Err(e) = crate::sidecar::write(&row) {
        warn(format!(
            "backup #{id} completed, but its sidecar was not written: {e:#}"
        ));
    }
    Ok(row)
}

/// What every row of this plan's backup says of where it comes from.
fn origin_of<'a>(project: &'a Project, plan: &'a Plan) -> crate::catalog::Origin<'a> {
    crate::catalog::Origin {
        project: &project.name,
        project_dir: &project.dir,
        service_version: &plan.service_version,
        backup_type: plan.backup_type,
        created_at: &plan.created_at,
        compression: plan.compression,
        recipients: &plan.recipients,
    }
}

fn record_failure(
    catalog: &Catalog,
    project: &Project,
    plan: &Plan,
    duration_ms: u64,
    err: &anyhow::Error,
) {
    let text = format!("{err:#}");
    let target = plan.storage.join(&plan.archive_name);
    let new = NewBackup::failed(origin_of(project, plan), &target, &text);
    let _ = catalog.insert(&new.took(duration_ms, None));
}

/// The volumes whose content was moved away from their place (a staged rollback's previous
/// content), to be read from there as captures.
fn moved_away(plan: &Plan, previous: &HashMap<PathBuf, PathBuf>) -> reading::Captures {
    let mut out = reading::Captures::new();
    for item in &plan.volumes {
        if let Some(from) = plan.place_of(item).and_then(|p| previous.get(p)) {
            out.insert(
                item.archive_path.clone(),
                reading::Captured::Tree(from.clone(), Vec::new()),
            );
        }
    }
    out
}

/// Asks the engine and the filesystem what the plan needs to know, before anything stops.
/// The bind folders are walked while the engine answers.
fn gather_facts(ctx: &Context, project: &Project, catalog: &Catalog) -> Result<plan::Facts> {
    let binds: Vec<&PathBuf> = project
        .volumes
        .iter()
        .filter_map(|v| match v {
            Volume::Bind { source, .. } => Some(source),
            _ => None,
        })
        .collect();
    let (facts, probes) = std::thread::scope(|s| {
        let probes = s.spawn(|| binds.iter().map(|b| probe(b)).collect::<Vec<_>>());
        (engine_facts(ctx, project, catalog), probes.join())
    });
    let mut facts = facts?;
    let probes = probes.map_err(|_| anyhow::anyhow!("walking the bind folders panicked"))?;
    for (source, (kind, survey)) in binds.into_iter().zip(probes) {
        facts.paths.insert(source.clone(), (kind, survey.bytes));
        facts.entries.insert(source.clone(), survey.entries);
        if !survey.readable {
            warn(format!("{} is not readable by this user: the engine reads it, and the free-space check counts only what this user can see", source.display()));
            facts.unreadable.insert(source.clone());
        }
    }
    Ok(facts)
}

/// What the engine says: image ids, and the named volumes' details, sizes and folders.
fn engine_facts(ctx: &Context, project: &Project, catalog: &Catalog) -> Result<plan::Facts> {
    let mut facts = plan::Facts {
        cwd: std::env::current_dir()?,
        catalog_storage: catalog.storage_dir(&project.name)?,
        recipients: crate::crypto::project_recipients(project)?,
        ..Default::default()
    };
    facts.image_ids = ctx
        .docker
        .image_ids(project.services.iter().filter_map(|s| s.image.as_deref()));
    let named: Vec<&str> = project
        .volumes
        .iter()
        .filter_map(|v| match v {
            Volume::Volume { name, .. } if !v.excluded() => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if named.is_empty() {
        return Ok(facts);
    }
    let ls = ctx
        .docker
        .output(&["volume", "ls", "--format", "{{.Name}}"])?;
    facts.existing_volumes = ls.lines().map(|l| l.trim().to_string()).collect();
    let present: Vec<&str> = named
        .iter()
        .copied()
        .filter(|n| facts.existing_volumes.contains(*n))
        .collect();
    if !present.is_empty() {
        let (details, folders) = volume_details(ctx, &present)?;
        facts.volume_details = details;
        local_volumes(ctx, folders, present.len(), &mut facts)?;
    }
    Ok(facts)
}

/// Named volumes whose host folder this process can read are read from disk, and sized by
/// walking it (while the probe runs); the others are sized by `docker system df -v`, which
/// walks every volume of the engine. `folders`: the plain `local` volumes' folders that
/// exist here. Read from disk only when the engine proves they are its own (a probe, as
/// rollback does: a remote engine, a VM or a rootless engine never passes).
fn local_volumes(
    ctx: &Context,
    folders: HashMap<String, PathBuf>,
    present: usize,
    facts: &mut plan::Facts,
) -> Result<()> {
    let (local, surveys) = std::thread::scope(|s| {
        let surveys = s.spawn(|| {
            let all = folders.iter().map(|(n, d)| (n.clone(), survey(d)));
            all.collect::<HashMap<_, _>>()
        });
        let local = match folders.is_empty() {
            true => Ok(false),
            false => crate::volumes::volumes_are_local(&ctx.docker),
        };
        (local, surveys.join())
    });
    let surveys = surveys.map_err(|_| anyhow::anyhow!("walking the volume folders panicked"))?;
    if local? {
        for (name, dir) in folders {
            match surveys.get(&name) {
                Some(s) if s.readable => {
                    facts.volume_sizes.insert(name.clone(), s.bytes);
                    facts.entries.insert(dir.clone(), s.entries);
                    facts.volume_dirs.insert(name, dir);
                }
                _ => {}
            }
        }
    }
    if facts.volume_dirs.len() < present {
        for (name, size) in volume_sizes(ctx) {
            facts.volume_sizes.entry(name).or_insert(size);
        }
    }
    Ok(())
}

/// The filesystems a capture could go to (beside each volume read from disk, and the storage
/// folder): free space, and whether reflinks work there (tried on a throw-away file).
fn capture_facts(project: &Project, opts: &Options, facts: &mut plan::Facts) {
    let storage = plan::resolve_storage(project, opts.storage.as_deref(), facts);
    let mut folders = vec![storage];
    for v in &project.volumes {
        match v {
            Volume::Bind { source, .. } if !facts.unreadable.contains(source) => {
                if crate::hostfs::paths::is_mount_point(source) {
                    facts.mount_points.insert(source.clone());
                }
                folders.extend(source.parent().map(Path::to_path_buf));
            }
            Volume::Volume { name, .. } => {
                folders.extend(
                    facts
                        .volume_dirs
                        .get(name)
                        .and_then(|d| d.parent())
                        .map(Path::to_path_buf),
                );
            }
            _ => {}
        }
    }
    for f in folders {
        if crate::hostfs::owned::check_private(&f).is_err() {
            facts.shared_folders.insert(f.clone());
        }
        let Some(fs) = storage::filesystem_of(&f) else {
            continue;
        };
        let fs = plan::CaptureFs {
            device: fs.device,
            free_bytes: fs.free_bytes,
            reflink: copy::reflinks_in(&fs.folder),
        };
        facts.capture_fs.insert(f, fs);
    }
}

fn probe(p: &Path) -> (plan::PathKind, Survey) {
    let none = Survey::default();
    match std::fs::symlink_metadata(p).and_then(|m| {
        if m.file_type().is_symlink() {
            std::fs::metadata(p)
        } else {
            Ok(m)
        }
    }) {
        Err(_) => (plan::PathKind::Missing, none),
        Ok(m) if m.is_dir() => (plan::PathKind::Dir, survey(p)),
        Ok(m) if m.is_file() => (plan::PathKind::File, survey(p)),
        Ok(_) => (plan::PathKind::Special, none),
    }
}

/// Each volume's driver, options and labels; and the folders of the plain `local` ones that
/// exist on this machine (see [`plain_local_folder`]).
fn volume_details(
    ctx: &Context,
    names: &[&str],
) -> Result<(
    HashMap<String, plan::VolumeDetails>,
    HashMap<String, PathBuf>,
)> {
    #[derive(serde::Deserialize)]
    struct Inspect {
        #[serde(rename = "Name")]
        name: String,
        #[serde(rename = "Driver", default)]
        driver: String,
        #[serde(rename = "Options", default)]
        options: Option<std::collections::BTreeMap<String, String>>,
        #[serde(rename = "Labels", default)]
        labels: Option<std::collections::BTreeMap<String, String>>,
        #[serde(rename = "Mountpoint", default)]
        mountpoint: PathBuf,
    }
    let mut args = vec!["volume", "inspect"];
    args.extend_from_slice(names);
    let text = ctx.docker.output(&args)?;
    let list: Vec<Inspect> =
        serde_json::from_str(&text).context("reading `docker volume inspect`")?;
    let mut details = HashMap::new();
    let mut folders = HashMap::new();
    for i in list {
        let d = plan::VolumeDetails {
            driver: i.driver,
            options: i.options.unwrap_or_default(),
            labels: i.labels.unwrap_or_default(),
        };
        let no_options = d.options.is_empty();
        if let Some(dir) = plain_local_folder(&d.driver, no_options, i.mountpoint) {
            folders.insert(i.name.clone(), dir);
        }
        details.insert(i.name, d);
    }
    Ok((details, folders))
}

/// Volume sizes from `docker system df -v`; empty when the engine cannot say (the space
/// check then counts binds only, and a warning says so).
fn volume_sizes(ctx: &Context) -> HashMap<String, u64> {
    #[derive(serde::Deserialize)]
    struct Df {
        #[serde(rename = "Name")]
        name: String,
        #[serde(rename = "Size", default)]
        size: String,
    }
    let sizes = ctx
        .docker
        .output(&["system", "df", "-v", "--format", "{{json .Volumes}}"])
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<Df>>(t.trim()).ok());
    match sizes {
        Some(list) => list
            .into_iter()
            .filter_map(|d| Some((d.name, plan::parse_docker_size(&d.size)?)))
            .collect(),
        None => {
            warn("the engine did not report volume sizes; the free-space check counts bind mounts only");
            HashMap::new()
        }
    }
}

/// Where a finished archive went.
pub struct Written {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub file_count: u64,
    /// `--remote-only`: the object it was streamed to (`path` is then where it would be).
    pub remote_url: Option<String>,
}
