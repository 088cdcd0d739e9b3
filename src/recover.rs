//! Finishing a run that died (kill -9, the OOM killer, a power cut): its partial and staging
//! files removed, a half-moved mount point undone, what it stopped started again, and a dead
//! `create` recorded as a `failed` row with error `interrupted`.
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::catalog::{Catalog, NewBackup};
use crate::compose::{Project, Volume};
use crate::hostfs::owned::{self, Made};
use crate::output::{note, warn};
use crate::records::RunCommand;
use crate::restore::{host, mount};
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

/// Recovers the dead run of `project`, if it left its record. Call while holding the
/// project's lock (then no live run owns what is found). Acts only on what the record names
/// and the tool made: the project's current targets, and its own private folders beside and
/// inside them (checked: no link, this user's, mode 0700, the recorded device and inode).
/// Fails with `RestartFailed` when starting what it stopped fails; the record is then kept,
/// so the next `recover` tries again. Fails, naming it, when the record is not private.
pub fn dead_run(ctx: &Context, project: &Project, catalog: &Catalog) -> Result<Recovered> {
    let dir = ctx.runs_dir();
    let Some(rec) = runs::read(&dir, &project.name)? else {
        return Ok(Recovered {
            interrupted_run: None,
            mount_points: Vec::new(),
            started: Vec::new(),
        });
    };
    warn(format!(
        "found an interrupted {} of project {} (pid {}, started {}, phase {}): recovering it",
        rec.command, project.name, rec.pid, rec.started_at, rec.phase
    ));
    let targets = Targets::of(ctx, project);
    let mut mount_points = Vec::new();
    let mut failed_row = None;
    if rec.command == RunCommand::Create {
        remove_captures(&rec, &project.name, &targets);
        abort_upload(&rec);
        failed_row = record_interrupted_create(catalog, project, &rec)?;
    } else {
        remove_partials(project, catalog);
        mount_points = recover_mounts(&rec, &targets)?;
        finish_staged(ctx, project, catalog, &rec, &targets)?;
        clean_rollback(ctx, project, &rec, &targets);
        refill_in_place(ctx, project, &rec, &targets)?;
    }
    start_again(ctx, &rec)?;
    runs::remove(&dir, &project.name, &rec)?;
    on_error_hooks(ctx, project, &rec, failed_row);
    Ok(Recovered {
        started: rec.stopped.clone(),
        interrupted_run: Some(rec),
        mount_points,
    })
}

/// The dead run failed: its on-error hooks run once, now that its services run again (never
/// a `before-*` hook again; none when it was run with `--no-hooks`).
fn on_error_hooks(ctx: &Context, project: &Project, rec: &RunRecord, failed_row: Option<i64>) {
    if rec.no_hooks {
        return;
    }
    let ran: Vec<&str> = rec.hooks_ran.iter().map(|p| p.as_str()).collect();
    if !ran.is_empty() {
        note(format!(
            "hooks the interrupted run had run: {}",
            ran.join(", ")
        ));
    }
    let env = crate::hooks::run::Env {
        id: rec.backup_id.or(failed_row),
        backup_type: rec.pending_row.as_ref().map(|p| p.backup_type.to_string()),
        error: Some(format!(
            "the {} was interrupted in phase {} (pid {})",
            rec.command, rec.phase, rec.pid
        )),
        ..Default::default()
    };
    crate::hooks::run::Runner::new(ctx, project, false).on_error(&env);
}

/// Where the project's volumes are on this host now (bind sources and local volume folders),
/// each with the volume's label; looked up once per recovery.
struct Targets(Vec<(String, PathBuf)>);

impl Targets {
    fn of(ctx: &Context, project: &Project) -> Targets {
        Targets(
            project
                .volumes
                .iter()
                .filter_map(|v| Some((v.label(), target_of(ctx, v)?)))
                .collect(),
        )
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter().map(|(_, p)| p.as_path())
    }

    fn contains(&self, p: &Path) -> bool {
        self.paths().any(|t| t == p)
    }

    /// Whether `p` is a target, a folder holding one, or `storage`.
    fn is_near(&self, p: &Path, storage: Option<&Path>) -> bool {
        storage == Some(p) || self.paths().any(|t| t == p || t.parent() == Some(p))
    }

    /// The labels of the volumes whose targets `keep` accepts.
    fn labels(&self, keep: impl Fn(&Path) -> bool) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, p)| keep(p))
            .map(|(l, _)| l.clone())
            .collect()
    }
}

/// Removes the partial files (a safety backup being written) a dead rollback of the project
/// left in its storage folder.
fn remove_partials(project: &Project, catalog: &Catalog) {
    let Ok(storage) = crate::safety::storage_of(project, catalog) else {
        return;
    };
    for path in storage::remove_stale_partials(&storage, &project.name) {
        note(format!(
            "removed {} left by an interrupted rollback",
            path.display()
        ));
    }
}

/// Says that the record names something this recovery will not touch.
fn ignored(what: &str, p: &Path) {
    warn(format!(
        "the run record names {what} {}, which is not this project's nor the tool's own: left alone",
        p.display()
    ));
}

/// The staging folder the record says this run made at `path` (not yet checked on disk).
fn made_at<'a>(rec: &'a RunRecord, path: &Path) -> Option<&'a Made> {
    rec.made.iter().find(|m| m.path == path)
}

/// Descriptors of a recorded swap's private folder and of the folder holding its target, when
/// the record and the disk agree that the tool made it beside `s.target`, a current target.
fn swap_staging(
    rec: &RunRecord,
    project: &str,
    s: &runs::SwapRecord,
    targets: &Targets,
) -> Option<(OwnedFd, OwnedFd)> {
    let (parent, name) = owned::split(&s.target).ok()?;
    let holder = parent.join(owned::staging_name(project, rec.pid));
    let agrees = targets.contains(&s.target)
        && s.staging.parent() == Some(holder.as_path())
        && s.staging.file_name().map(|n| n.as_bytes()) == Some(name);
    if !agrees {
        ignored("the swap", &s.staging);
        return None;
    }
    let made = made_at(rec, &holder)?;
    match (owned::open_made(made), owned::open_dir(parent)) {
        (Ok(h), Ok(p)) => Some((h, p)),
        (Err(e), _) | (_, Err(e)) => {
            warn(format!("{e:#}"));
            None
        }
    }
}

/// Undoes or finishes what the dead run left inside bind mount points, as its record says.
fn recover_mounts(rec: &RunRecord, targets: &Targets) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for m in &rec.mounts {
        let made = made_at(rec, &m.staging).filter(|_| {
            targets.contains(&m.target) && m.staging.parent() == Some(m.target.as_path())
        });
        let Some(made) = made else {
            ignored("the mount point staging", &m.staging);
            continue;
        };
        note(mount::recover(m, made)?);
        done.push(m.target.display().to_string());
    }
    Ok(done)
}

/// Removes the captures a killed `create` made (listed before each was made): only names
/// that carry the dead run's project and pid, beside or inside a current target or in the
/// storage folder, and never through a link.
fn remove_captures(rec: &RunRecord, project: &str, targets: &Targets) {
    let prefix = crate::backup::capture::prefix(project, rec.pid);
    let storage = rec.pending_row.as_ref().map(|p| p.storage.as_path());
    for p in &rec.captures {
        let Ok((parent, name)) = owned::split(p) else {
            ignored("the capture", p);
            continue;
        };
        if !name.starts_with(prefix.as_bytes()) || !targets.is_near(parent, storage) {
            ignored("the capture", p);
            continue;
        }
        if p.symlink_metadata().is_err() {
            continue;
        }
        match owned::open_dir(parent).and_then(|fd| Ok(owned::remove_at(&fd, name)?)) {
            Ok(()) => note(format!(
                "removed the capture {} left by an interrupted backup",
                p.display()
            )),
            Err(e) => warn(format!(
                "could not remove the capture {} ({e:#}): remove it by hand",
                p.display()
            )),
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
    dead_run(ctx, &project, catalog)?;
    // Read again under the lock, always: what ran when `project` was loaded may have been
    // stopped or started since by the run that held the lock.
    Ok((lock, Project::load(&ctx.docker, &ctx.compose)?))
}

impl Recovered {
    pub fn is_empty(&self) -> bool {
        self.interrupted_run.is_none() && self.mount_points.is_empty()
    }
}

/// Records the dead create's row as failed (`interrupted`); its id.
fn record_interrupted_create(
    catalog: &Catalog,
    project: &Project,
    rec: &RunRecord,
) -> Result<Option<i64>> {
    let Some(p) = &rec.pending_row else {
        return Ok(None);
    };
    for path in storage::remove_stale_partials(&p.storage, &project.name) {
        note(format!(
            "removed {} left by an interrupted backup",
            path.display()
        ));
    }
    let origin = crate::catalog::Origin {
        project: &project.name,
        project_dir: &p.project_dir,
        service_version: &p.service_version,
        backup_type: p.backup_type,
        created_at: &p.created_at,
        compression: &p.compression,
        recipients: &[],
    };
    let id = catalog.insert(&NewBackup::failed(origin, &p.storage, "interrupted"))?;
    note(format!("recorded the interrupted backup as failed (#{id})"));
    Ok(Some(id))
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
    targets: &Targets,
) -> Result<()> {
    let swapped: Vec<(&runs::SwapRecord, OwnedFd, OwnedFd)> = rec
        .swaps
        .iter()
        .filter(|s| s.swapped())
        .filter_map(|s| swap_staging(rec, &project.name, s, targets).map(|(h, p)| (s, h, p)))
        .collect();
    if swapped.is_empty() {
        return Ok(());
    }
    let started = matches!(
        rec.phase,
        Phase::Starting | Phase::SafetyAfter | Phase::RemovingPrevious
    );
    if !started {
        for (s, holder, parent) in &swapped {
            let name = owned::split(&s.target)?.1;
            rustix::fs::renameat_with(
                holder,
                name,
                parent,
                name,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(std::io::Error::from)
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
        .map(|(s, _, _)| (s.target.clone(), s.staging.clone()))
        .collect();
    let labels = targets.labels(|t| previous.contains_key(t));
    crate::safety::safety_of(
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
fn target_of(ctx: &Context, v: &Volume) -> Option<PathBuf> {
    // A named volume's folder is asked of the engine (an owned path); a bind's is its source.
    let mut asked = None;
    let source = v.host_path(|name| {
        asked = crate::volumes::local_mountpoint(&ctx.docker, name)
            .ok()
            .flatten();
        None
    });
    source.map(Path::to_path_buf).or(asked)
}

/// The staging folders the dead rollback made (as its record names them, and only while they
/// are still the private folders it made), stale ones of this project's dead runs, and helper
/// containers. Each target was swapped whole or not at all, so removing them leaves every one
/// either as before or as archived.
fn clean_rollback(ctx: &Context, project: &Project, rec: &RunRecord, targets: &Targets) {
    for m in &rec.made {
        let Ok((parent, name)) = owned::split(&m.path) else {
            continue;
        };
        if !targets.is_near(parent, None) || m.path.symlink_metadata().is_err() {
            continue;
        }
        let removed = owned::open_made(m)
            .and_then(|_| owned::open_dir(parent))
            .and_then(|fd| Ok(owned::remove_at(&fd, name)?));
        match removed {
            Ok(()) => note(format!(
                "removed {} left by an interrupted rollback",
                m.path.display()
            )),
            Err(e) => warn(format!("{e:#}")),
        }
    }
    for parent in targets.paths().filter_map(Path::parent) {
        host::clean_stale(parent, &project.name);
    }
    crate::volumes::clean_stale(&ctx.docker);
}

/// Writes the targets a dead `rollback --in-place` had emptied, and not written whole, back
/// from its safety backup (the record is kept when that fails, so the next run tries again).
fn refill_in_place(
    ctx: &Context,
    project: &Project,
    rec: &RunRecord,
    targets: &Targets,
) -> Result<()> {
    for p in rec.in_place.iter().filter(|p| !targets.contains(p)) {
        ignored("the emptied target", p);
    }
    let in_place: Vec<PathBuf> = rec
        .in_place
        .iter()
        .filter(|p| targets.contains(p))
        .cloned()
        .collect();
    if in_place.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = in_place.iter().map(|p| p.display().to_string()).collect();
    let Some(safety) = &rec.safety_backup else {
        anyhow::bail!("{} were emptied by the interrupted rollback and no safety backup is recorded: roll back again", shown.join(", "));
    };
    note(format!(
        "putting back {} from the safety backup {}",
        shown.join(", "),
        safety.display()
    ));
    crate::restore::refill_in_place(ctx, project, safety, &in_place).with_context(|| {
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
    if rec.command == RunCommand::Rollback {
        // A failure here shows as the start's own error just below.
        let _ = services::create_missing(&ctx.docker, &ctx.compose, &running.services);
    }
    note(format!("starting {}", running.names().join(", ")));
    services::start(&ctx.docker, &ctx.compose, &running)
        .context("the interrupted run was cleaned up, but")
}
