//! Finishing a run that died (kill -9, the OOM killer, a power cut): its partial and staging
//! files removed, a half-moved mount point undone, what it stopped started again, and a dead
//! `create` recorded as a `failed` row with error `interrupted`.
use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::catalog::{Catalog, NewBackup};
use crate::compose::{Project, Volume};
use crate::output::{note, warn};
use crate::records::{RunCommand, Status};
use crate::restore::{engine, host, mount};
use crate::runs::{self, Phase, RunRecord};
use crate::{services, storage, Context};

/// What a recovery found and did (`recover --format json`).
#[derive(Debug, Serialize)]
pub struct Recovered {
    pub interrupted_run: Option<RunRecord>,
    /// Bind mount points whose half-done rollback was finished or undone.
    pub mount_points: Vec<String>,
    pub started: Vec<String>,
}

/// Recovers the dead run of `project`, if one left its record or a half-moved mount point.
/// Call while holding the project's lock (then no live run owns what is found). Fails with
/// `RestartFailed` when starting what it stopped fails; the record is then kept, so the next
/// `recover` tries again.
pub fn dead_run(ctx: &Context, project: &Project, catalog: &Catalog) -> Result<Recovered> {
    let mount_points = undo_mount_points(project)?;
    let dir = ctx.runs_dir();
    let Some(rec) = runs::read(&dir, &project.name)? else {
        return Ok(Recovered {
            interrupted_run: None,
            mount_points,
            started: Vec::new(),
        });
    };
    warn(format!(
        "found an interrupted {} of project {} (pid {}, started {}, phase {}): recovering it",
        rec.command, project.name, rec.pid, rec.started_at, rec.phase
    ));
    if rec.command == RunCommand::Create {
        remove_captures(&rec);
        abort_upload(&rec);
        record_interrupted_create(catalog, project, &rec)?;
    } else {
        finish_staged(ctx, project, catalog, &rec)?;
        clean_rollback(ctx, project);
        refill_in_place(ctx, project, &rec)?;
    }
    start_again(ctx, &rec)?;
    runs::remove(&dir, &project.name)?;
    Ok(Recovered {
        started: rec.stopped.clone(),
        interrupted_run: Some(rec),
        mount_points,
    })
}

/// Removes the captures a killed `create` made (listed before each was made).
fn remove_captures(rec: &RunRecord) {
    for p in rec.captures.iter().filter(|p| p.symlink_metadata().is_ok()) {
        if crate::backup::capture::remove_one(p) {
            note(format!(
                "removed the capture {} left by an interrupted backup",
                p.display()
            ));
        }
    }
}

/// Aborts the multipart upload a killed `create --remote-only` left open (when the server
/// answers; else says so: the bucket's lifecycle rule is the last resort).
fn abort_upload(rec: &RunRecord) {
    let Some(up) = &rec.upload else { return };
    match crate::remote::transfer::abort_at(&up.url, &up.id) {
        Ok(()) => note(format!("aborted the unfinished upload of {}", up.url)),
        Err(e) => warn(format!(
            "the unfinished upload of {} is still open: {e:#}",
            up.url
        )),
    }
}

/// Takes the project's lock for `what`, then finishes a dead run of the project first (it
/// may have left services down). Returns the lock and the project as it is now.
pub fn lock_and_recover(
    ctx: &Context,
    project: Project,
    catalog: &Catalog,
    what: RunCommand,
) -> Result<(crate::lock::ProjectLock, Project)> {
    let lock = ctx.lock(&project.name, what.as_str())?;
    if dead_run(ctx, &project, catalog)?.is_empty() {
        return Ok((lock, project));
    }
    Ok((lock, Project::load(&ctx.docker, &ctx.compose)?))
}

impl Recovered {
    pub fn is_empty(&self) -> bool {
        self.interrupted_run.is_none() && self.mount_points.is_empty()
    }
}

/// Undoes (or finishes, when its journal says done) what a killed rollback left inside bind
/// mount points.
fn undo_mount_points(project: &Project) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for v in &project.volumes {
        if let Volume::Bind { source, .. } = v {
            for what in mount::recover(source)? {
                note(what);
                done.push(source.display().to_string());
            }
        }
    }
    Ok(done)
}

fn record_interrupted_create(catalog: &Catalog, project: &Project, rec: &RunRecord) -> Result<()> {
    let Some(p) = &rec.pending_row else {
        return Ok(());
    };
    for path in storage::remove_stale_partials(&p.storage, &project.name) {
        note(format!(
            "removed {} left by an interrupted backup",
            path.display()
        ));
    }
    let id = catalog.insert(&NewBackup {
        project: &project.name,
        project_dir: &p.project_dir,
        file_path: &p.storage,
        service_version: &p.service_version,
        backup_type: p.backup_type,
        status: Status::Failed,
        created_at: &p.created_at,
        size_bytes: 0,
        sha256: None,
        file_count: 0,
        compression: &p.compression,
        duration_ms: 0,
        error: Some("interrupted"),
        recipients: &[],
        timing: None,
    })?;
    note(format!("recorded the interrupted backup as failed (#{id})"));
    Ok(())
}

/// A rollback staged first and killed: before its services started again, the targets it
/// swapped are swapped back (every target is then as before); after, the safety backup is
/// made from the previous content the swap moved aside, unless it was made already or none
/// was asked for. When that fails, the previous content and the run record stay (exit 16),
/// so nothing of it is removed.
fn finish_staged(
    ctx: &Context,
    project: &Project,
    catalog: &Catalog,
    rec: &RunRecord,
) -> Result<()> {
    let swapped: Vec<&runs::SwapRecord> = rec.swaps.iter().filter(|s| s.swapped()).collect();
    if swapped.is_empty() {
        return Ok(());
    }
    let started = matches!(
        rec.phase,
        Phase::Starting | Phase::SafetyAfter | Phase::RemovingPrevious
    );
    if !started {
        for s in &swapped {
            host::exchange(&s.staging, &s.target)
                .with_context(|| format!("swapping {} back", s.target.display()))?;
            note(format!(
                "put back the previous content of {}",
                s.target.display()
            ));
        }
        return Ok(());
    }
    // The previous content is wanted no more (its safety backup is made, or none was asked
    // for): what is left of it goes with the rest of the staging (`clean_rollback`).
    if rec.phase == Phase::RemovingPrevious || rec.no_safety_backup {
        return Ok(());
    }
    let previous: std::collections::HashMap<_, _> = swapped
        .iter()
        .map(|s| (s.target.clone(), s.staging.clone()))
        .collect();
    let labels: Vec<String> = project
        .volumes
        .iter()
        .filter(|v| target_of(ctx, v).is_some_and(|t| previous.contains_key(&t)))
        .map(|v| v.label())
        .collect();
    crate::restore::safety_of(
        ctx,
        project,
        catalog,
        &labels,
        &rec.safety_recipients,
        &previous,
    )
    .map_err(|e| {
        let kept: Vec<_> = previous.values().cloned().collect();
        crate::restore::safety_pending(
            "the interrupted rollback had swapped its targets in",
            &kept,
            e,
        )
    })?;
    Ok(())
}

/// Where a volume's content is on this host: a bind's source, a local volume's folder.
fn target_of(ctx: &Context, v: &Volume) -> Option<std::path::PathBuf> {
    match v {
        Volume::Bind { source, .. } => Some(source.clone()),
        Volume::Volume { name, .. } => engine::local_mountpoint(&ctx.docker, name).ok().flatten(),
    }
}

/// Staging folders beside binds and named volumes, and helper containers of a dead rollback.
/// Each target was swapped whole or not at all, so removing them leaves every one either as
/// before or as archived.
fn clean_rollback(ctx: &Context, project: &Project) {
    for v in &project.volumes {
        let folder = match v {
            Volume::Bind { source, .. } => Some(source.clone()),
            Volume::Volume { name, .. } => {
                engine::local_mountpoint(&ctx.docker, name).ok().flatten()
            }
        };
        if let Some(parent) = folder.as_deref().and_then(|f| f.parent()) {
            host::clean_stale(parent);
        }
    }
    engine::clean_stale(&ctx.docker);
}

/// Writes the targets a dead `rollback --in-place` had emptied, and not written whole, back
/// from its safety backup (the record is kept when that fails, so the next run tries again).
fn refill_in_place(ctx: &Context, project: &Project, rec: &RunRecord) -> Result<()> {
    if rec.in_place.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = rec
        .in_place
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let Some(safety) = &rec.safety_backup else {
        anyhow::bail!("{} were emptied by the interrupted rollback and no safety backup is recorded: roll back again", shown.join(", "));
    };
    note(format!(
        "putting back {} from the safety backup {}",
        shown.join(", "),
        safety.display()
    ));
    crate::restore::refill_in_place(ctx, project, safety, &rec.in_place).with_context(|| {
        format!(
            "putting back {} from {}",
            shown.join(", "),
            safety.display()
        )
    })
}

/// Makes the containers a rollback may have removed, then starts what the run stopped.
fn start_again(ctx: &Context, rec: &RunRecord) -> Result<()> {
    let running = rec.running();
    if running.is_empty() {
        return Ok(());
    }
    if rec.command == RunCommand::Rollback && !running.services.is_empty() {
        let mut args = vec!["create".to_string(), "--no-recreate".to_string()];
        args.extend(running.services.iter().cloned());
        let _ = ctx.docker.compose_detached(&ctx.compose, &args);
    }
    note(format!("starting {}", running.names().join(", ")));
    services::start(&ctx.docker, &ctx.compose, &running)
        .context("the interrupted run was cleaned up, but")
}
