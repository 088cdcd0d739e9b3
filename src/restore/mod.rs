//! `rollback`: verify → facts → pure plan → confirm → lock → stop → safety backup → execute
//! the plan in a transaction → commit, or undo on failure → start.
pub mod apply;
mod changed;
mod choose;
pub mod engine;
mod facts;
pub mod host;
pub mod mount;
pub mod plan;
pub mod sink;
mod staged;
mod targets;
mod transaction;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::archive::reader;
use crate::catalog::{BackupRow, Catalog};
use crate::compose::Project;
use crate::crypto::Recipients;
use crate::exit_codes::{Code, UserError};
use crate::hooks::run::{Env as HookEnv, Runner};
use crate::hooks::Phase as HookPhase;
use crate::output::{human_bytes, note, warn};
use crate::records::RemoteStatus;
use crate::records::RunCommand;
use crate::runs::{ActiveRun, Phase};
use crate::safety::{safety_of, storage_of};
use crate::services;
use crate::Context;
use plan::{Action, RollbackPlan, Step};
use transaction::Transaction;

pub struct Options {
    pub id: Option<i64>,
    pub data_only: bool,
    pub excludes: Vec<String>,
    pub in_place: bool,
    pub no_start: bool,
    pub no_safety_backup: bool,
    pub yes: bool,
    /// Download the archive from its remote copy even when the local file is there.
    pub from_remote: bool,
    /// `--recipient` / `--recipients-file`: whom the safety backup is encrypted to.
    pub recipients: Vec<String>,
    pub recipients_files: Vec<PathBuf>,
    /// `--no-hooks`.
    pub no_hooks: bool,
}

/// What `--format json` prints: the plan, and what was done.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub plan: RollbackPlan,
    pub restored: Vec<String>,
    pub kept: Vec<String>,
    pub safety_backup_id: Option<i64>,
    pub started: Vec<String>,
    /// First stop to last start, for a rollback staged first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
}

fn user(code: Code, msg: String) -> anyhow::Error {
    UserError::new(code, msg).into()
}

/// Verifies the backup and plans its rollback; writes nothing, takes no lock.
pub fn plan(ctx: &Context, opts: &Options) -> Result<Prepared> {
    if opts.in_place && opts.no_safety_backup {
        return Err(user(
            Code::Usage,
            "--in-place needs the safety backup (it is its undo): drop --no-safety-backup".into(),
        ));
    }
    // Pinned from the first step: no delete or prune removes it while it is read.
    let early = opts.id.map(|id| ctx.pin(id, "rollback")).transpose()?;
    let project = Project::load(&ctx.docker, &ctx.compose)?;
    let catalog = ctx.catalog()?;
    let row = choose::choose(&catalog, &project, opts.id)?;
    let pin = match early {
        Some(p) => p,
        None => ctx.pin(row.id, "rollback")?,
    };
    let storage = storage_of(&project, &catalog)?;
    let row = fetch(&catalog, row, &storage, opts.from_remote)?;
    let verified = verified(ctx, &row, &project)?;
    let mut plan = plan_for(ctx, opts, (&project, &catalog), &row, &verified)?;
    plan.pin = Some(std::sync::Arc::new(pin));
    Ok(Prepared {
        project,
        catalog,
        row,
        plan,
        verified,
    })
}

/// The plan for the verified backup on `project` as it is now: its current targets, what
/// runs, which volumes exist, the free space. Reads the live state; changes nothing.
fn plan_for(
    ctx: &Context,
    opts: &Options,
    (project, catalog): (&Project, &Catalog),
    row: &BackupRow,
    verified: &reader::Verified,
) -> Result<RollbackPlan> {
    let mut verified = verified.clone();
    let req = plan::Request {
        backup_id: row.id,
        data_only: opts.data_only,
        excludes: opts.excludes.clone(),
        in_place: opts.in_place,
        no_start: opts.no_start,
        no_safety_backup: opts.no_safety_backup,
    };
    let warnings = bind_to_project(&mut verified, project, &req)?;
    let safety_recipients = if opts.no_safety_backup {
        Recipients::default()
    } else {
        let r = safety_recipients(project, row, opts)?;
        check_safety_key(ctx, &r)?;
        r
    };
    let storage = storage_of(project, catalog)?;
    let facts = facts::gather(ctx, project, &verified, &req, storage)?;
    let mut plan = plan::build(&verified.manifest, &req, &facts)?;
    plan.safety_recipients = safety_recipients.0;
    plan.warnings = warnings;
    if !opts.no_hooks {
        plan.hooks = project.hooks.listed(&crate::hooks::Phase::ROLLBACK);
    }
    plan.archive = Some(verified.file);
    Ok(plan)
}

/// Makes the plan again from `project` as it is once the project's lock is held: what runs,
/// which volumes exist and the free space were read before the lock, and a create or another
/// rollback may have stopped or started services, or removed volumes, in the meantime. Says
/// what changed; when what is replaced or kept changed, asks again (`--yes`: goes on).
/// Fails as `prepare` does, before anything changes.
pub fn replan(
    ctx: &Context,
    opts: &Options,
    prepared: Prepared,
    project: Project,
) -> Result<Prepared> {
    let (row, verified) = (&prepared.row, &prepared.verified);
    let mut plan = plan_for(ctx, opts, (&project, &prepared.catalog), row, verified)?;
    plan.pin = prepared.plan.pin.clone();
    let changes = changed::changes(&prepared.plan, &plan);
    if !changes.is_empty() {
        note(format!(
            "the project changed while the rollback was prepared ({}): the plan was made again from it as it is now",
            changes.join("; ")
        ));
        check_space(&plan)?;
        if changed::actions_differ(&prepared.plan, &plan) {
            confirm(&prepared.row, &plan, opts.yes)?;
        }
    }
    Ok(Prepared {
        project,
        plan,
        ..prepared
    })
}

/// Rewrites the verified manifest's volumes to the project's current targets (where each is
/// restored comes from the compose file, never from the archive). Returns the differences
/// the archive showed, as warnings for the plan.
fn bind_to_project(
    verified: &mut reader::Verified,
    project: &Project,
    req: &plan::Request,
) -> Result<Vec<String>> {
    let (volumes, warnings) = targets::rebind(
        &verified.manifest,
        &project.name,
        &project.dir,
        &project.volumes,
        req,
        &verified.counted,
    )?;
    verified.manifest.volumes = volumes;
    Ok(warnings)
}

/// The row with a local archive: downloaded from its remote copy into the storage folder
/// when the file is missing (or `--from-remote`). A failed download changes nothing.
fn fetch(
    catalog: &Catalog,
    mut row: BackupRow,
    storage: &Path,
    from_remote: bool,
) -> Result<BackupRow> {
    let local = !row.file_path.is_empty() && Path::new(&row.file_path).is_file();
    if local && !from_remote {
        return Ok(row);
    }
    let Some(url) = row
        .remote_url
        .clone()
        .filter(|_| row.remote_status == Some(RemoteStatus::Uploaded))
    else {
        if from_remote {
            return Err(user(
                Code::Usage,
                format!("backup #{} has no remote copy: drop --from-remote", row.id),
            ));
        }
        return Ok(row);
    };
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    let target = if local {
        PathBuf::from(&row.file_path)
    } else {
        storage.join(name)
    };
    crate::remote::transfer::download(&row, &target)?;
    catalog.set_file_path(row.id, &target)?;
    row.file_path = target.to_string_lossy().into_owned();
    if let Err(e) = crate::sidecar::write(&row) {
        warn(format!(
            "backup #{}: its sidecar was not written: {e:#}",
            row.id
        ));
    }
    Ok(row)
}

/// Whom the safety backup is encrypted to: `--recipient`, else the project's recipients
/// (`x-nuwax-backup.encrypt`) — only keys the operator configured, never those that came
/// with the backup (an imported one's came from a sidecar anyone with bucket access wrote).
/// An encrypted backup restored into a project that names none is refused (exit 2): its
/// safety backup must not be written in plain text, nor to keys nobody chose.
fn safety_recipients(project: &Project, row: &BackupRow, opts: &Options) -> Result<Recipients> {
    let current = if opts.recipients.is_empty() && opts.recipients_files.is_empty() {
        crate::crypto::project_recipients(project)?
    } else {
        Recipients::parse(&opts.recipients, &opts.recipients_files)?
    };
    if current.is_empty() && !row.recipients.is_empty() {
        return Err(user(
            Code::Usage,
            format!(
                "backup #{} is encrypted and the project names no recipients for the safety backup: pass --recipient KEY (or set x-nuwax-backup.encrypt), or --no-safety-backup",
                row.id
            ),
        ));
    }
    Ok(current)
}

/// Undo must read the safety backup: refuses (exit 15) before anything changes when the
/// identity could not open what is encrypted to `recipients`.
fn check_safety_key(ctx: &Context, recipients: &Recipients) -> Result<()> {
    if recipients.is_empty() {
        return Ok(());
    }
    let why = match ctx.keyring()? {
        None => "no identity was given".to_string(),
        Some(k) if !k.opens(recipients)? => {
            format!("the identity in {} is not among them", k.file.display())
        }
        Some(_) => return Ok(()),
    };
    Err(user(
        Code::Identity,
        format!(
            "the safety backup will be encrypted to {} and undo must read it, but {why}: pass --identity with one of their keys, or --no-safety-backup",
            recipients.0.join(", ")
        ),
    ))
}

/// The backup, verified whole and of `project`.
fn verified(ctx: &Context, row: &BackupRow, project: &Project) -> Result<reader::Verified> {
    let verified = verify_row(ctx, row)?;
    if verified.manifest.project != project.name {
        bail!(
            "backup #{} is of project {}, not {}",
            row.id,
            verified.manifest.project,
            project.name
        );
    }
    Ok(verified)
}

/// The backup, verified whole (decrypted with the identity when it is encrypted), before
/// anything is changed (a rollback, a restore test). A missing or wrong identity keeps its
/// own exit code (15), a cancel is 130; anything else is a failed verification (12).
pub fn verify_row(ctx: &Context, row: &BackupRow) -> Result<reader::Verified> {
    note(format!("verifying backup #{} ({})", row.id, row.file_path));
    let keys = ctx.keyring()?;
    reader::verify(Path::new(&row.file_path), row.sha256.as_deref(), keys).map_err(|e| {
        if crate::exit_codes::code_of(&e) == Code::Identity {
            return e;
        }
        if crate::cancel::requested() {
            return user(
                Code::Cancelled,
                "cancelled while verifying, nothing was changed".into(),
            );
        }
        user(
            Code::VerifyFailed,
            format!(
                "backup #{} failed verification, nothing was changed: {e:#} (archive {})",
                row.id, row.file_path
            ),
        )
    })
}

/// What a rollback will do, checked and confirmed: nothing has changed yet.
pub struct Prepared {
    pub project: Project,
    pub catalog: Catalog,
    pub row: BackupRow,
    pub plan: RollbackPlan,
    /// The verified archive as read, before it was bound to the project's targets: the plan
    /// made again under the lock starts from it.
    verified: reader::Verified,
}

/// Plans a rollback and has it confirmed. Fails before any change when the backup does not
/// verify, the plan is refused, the user does not confirm, or staging does not fit.
pub fn prepare(ctx: &Context, opts: &Options) -> Result<Prepared> {
    let prepared = plan(ctx, opts)?;
    check_space(&prepared.plan)?;
    warn_image_changes(&prepared.plan);
    for w in &prepared.plan.warnings {
        warn(w.clone());
    }
    confirm(&prepared.row, &prepared.plan, opts.yes)?;
    Ok(prepared)
}

/// Runs a prepared rollback on `project` as it is under the project's lock (the command
/// holds it), between its before-rollback and after-rollback hooks. Fails with `RolledBack`
/// when a step after the safety backup failed and the previous state was put back, and with
/// `Hook` when a hook failed (before-rollback: nothing changed).
pub fn execute(
    ctx: &Context,
    opts: &Options,
    prepared: Prepared,
    project: Project,
) -> Result<Report> {
    let hooks =
        Runner::new(ctx, &project, opts.no_hooks).check_running(&project, &HookPhase::ROLLBACK)?;
    let row = &prepared.row;
    let env = HookEnv {
        id: Some(row.id),
        file: Some(row.file_path.clone()),
        backup_type: Some(row.backup_type.to_string()),
        error: None,
    };
    let id = row.id;
    let report = restore(ctx, opts, prepared, project, (&hooks, &env))?;
    hooks
        .phase(HookPhase::AfterRollback, &env, None)
        .with_context(|| format!("rolled back to backup #{id}, but"))?;
    Ok(report)
}

fn restore(
    ctx: &Context,
    opts: &Options,
    prepared: Prepared,
    project: Project,
    (hooks, env): (&Runner<'_>, &HookEnv),
) -> Result<Report> {
    let Prepared {
        catalog, row, plan, ..
    } = prepared;
    let mut record = ActiveRun::begin(&ctx.runs_dir(), &project.name, RunCommand::Rollback)?;
    record.hooks(opts.no_hooks, Some(row.id))?;
    hooks.phase(HookPhase::BeforeRollback, env, Some(&mut record))?;
    if plan.order == plan::Order::StageFirst {
        return staged::run(ctx, opts, &project, &catalog, &row, plan, record);
    }
    stop_for_restore(ctx, &project.name, &plan, &mut record)?;
    let outcome = stopped_rollback(ctx, opts, &project, &catalog, &row, &plan, &mut record);
    let phase = record.phase(Phase::Starting);
    let (safety_id, removed, result) = outcome;
    recreate_containers(ctx, &services_to_create(&project, &plan, removed));
    let start = if opts.no_start || plan.running.is_empty() {
        Ok(())
    } else {
        note(format!("starting {}", plan.running.names().join(", ")));
        services::start(&ctx.docker, &ctx.compose, &plan.running)
    };
    result?;
    start.with_context(|| format!("backup #{} was restored, but", row.id))?;
    phase?;
    Ok(report(plan, safety_id, opts.no_start))
}

pub(crate) fn report(plan: RollbackPlan, safety_backup_id: Option<i64>, no_start: bool) -> Report {
    let (restored, kept): (Vec<&Step>, Vec<&Step>) =
        plan.actions.iter().partition(|s| s.action != Action::Keep);
    Report {
        restored: restored.iter().map(|s| s.target.clone()).collect(),
        kept: kept.iter().map(|s| s.target.clone()).collect(),
        safety_backup_id,
        started: if no_start {
            Vec::new()
        } else {
            plan.running.names()
        },
        plan,
        downtime_ms: None,
    }
}

/// The services whose containers the rollback removed, and those of restored named volumes
/// whose containers an interrupted rollback removed earlier (`create --no-recreate` leaves
/// existing containers alone).
fn services_to_create(project: &Project, plan: &RollbackPlan, mut out: Vec<String>) -> Vec<String> {
    for v in project.volumes.iter().filter(|v| {
        plan.restoring()
            .any(|s| s.record.name.as_deref() == Some(v.label().as_str()))
    }) {
        for m in v.mounts() {
            if !out.contains(&m.service) {
                out.push(m.service.clone());
            }
        }
    }
    out
}

/// Fails with `NoSpace` (exit 10), naming the filesystem, when staging inside a mount
/// point does not fit there.
fn check_space(plan: &RollbackPlan) -> Result<()> {
    for s in plan.space.iter().filter(|s| s.required) {
        if s.in_place && s.free_bytes < s.needed_bytes {
            return Err(user(
                Code::NoSpace,
                format!(
                    "backup #{} does not fit in the mount point {}: {} archived, {} once emptied; make it larger, or --exclude it; nothing was changed",
                    plan.backup_id,
                    s.filesystem.display(),
                    human_bytes(s.needed_bytes),
                    human_bytes(s.free_bytes)
                ),
            ));
        }
        if s.free_bytes < s.needed_bytes {
            return Err(user(
                Code::NoSpace,
                format!(
                    "not enough space to stage the rollback on the filesystem of {}: {} free, {} needed (a copy of the archived content is staged there before the swap); free space there, pass --in-place (empty it, then write; its undo is the safety backup), or --exclude it; nothing was changed",
                    s.filesystem.display(),
                    human_bytes(s.free_bytes),
                    human_bytes(s.needed_bytes)
                ),
            ));
        }
    }
    Ok(())
}

fn warn_image_changes(plan: &RollbackPlan) {
    for c in &plan.image_changes {
        let what = if c.same_tag {
            format!(
                "{} now names another image than the one that wrote the data",
                c.current_image
            )
        } else {
            format!(
                "the data was written by {}, the service now runs {}",
                c.backup_image, c.current_image
            )
        };
        warn(format!(
            "service {}: {what}: a database may refuse or upgrade it; change the image back in the compose file to run the old version",
            c.service
        ));
    }
}

fn confirm(row: &BackupRow, plan: &RollbackPlan, yes: bool) -> Result<()> {
    note(format!(
        "rollback to backup #{} of {} (version {}):",
        row.id, row.created_at, row.service_version
    ));
    for s in &plan.actions {
        let verb = if s.action == Action::Keep {
            "keep   "
        } else {
            "replace"
        };
        note(format!(
            "  {verb} {} ({}, {}): {}",
            s.target, s.kind, s.role, s.reason
        ));
    }
    crate::prompt::confirm(yes, "Replace these volumes?", "a rollback replaces data")
}

/// Removes what killed runs left, then stops what runs, recording it first in the run record.
fn stop_for_restore(
    ctx: &Context,
    project: &str,
    plan: &RollbackPlan,
    record: &mut ActiveRun,
) -> Result<()> {
    let steps: Vec<&Step> = plan.restoring().collect();
    apply::clean_stale(ctx, project, &steps);
    if !plan.running.is_empty() {
        note(format!("stopping {}", plan.running.names().join(", ")));
    }
    record.stopping(&plan.running, (&ctx.docker, &ctx.compose))?;
    services::stop(&ctx.docker, &ctx.compose, &plan.running)?;
    record.phase(Phase::Restoring)?;
    crate::fault::point(crate::fault::Fault::RollbackRestoring);
    Ok(())
}

/// Safety backup, restore, and undo on failure; the project is stopped throughout.
/// Returns the safety backup's id, the services whose containers were removed, and the result.
fn stopped_rollback(
    ctx: &Context,
    opts: &Options,
    project: &Project,
    catalog: &Catalog,
    row: &BackupRow,
    plan: &RollbackPlan,
    record: &mut ActiveRun,
) -> (Option<i64>, Vec<String>, Result<()>) {
    let safety = if opts.no_safety_backup {
        None
    } else {
        let made = record
            .phase(Phase::SafetyBefore)
            .and_then(|()| safety_backup(ctx, project, catalog, plan, record))
            .and_then(|row| record.phase(Phase::Restoring).map(|()| row));
        match made {
            Ok(s) => Some(s),
            Err(e) => {
                let e = e.context("taking the safety backup (nothing was changed)");
                return (None, Vec::new(), Err(e));
            }
        }
    };
    let safety_id = safety.as_ref().map(|s| s.id);
    let steps: Vec<&Step> = plan.restoring().collect();
    let mut txn = Transaction::new(Some(record));
    let Some(archive) = plan.archive.as_ref() else {
        return (
            safety_id,
            Vec::new(),
            Err(anyhow::anyhow!("the plan has no verified archive")),
        );
    };
    let result =
        apply::extract(ctx, project, archive, &steps, &mut txn).and_then(|()| txn.swap_all());
    match result {
        Ok(()) => (safety_id, txn.commit(), Ok(())),
        Err(err) => {
            let err = if crate::cancel::requested() {
                user(Code::Cancelled, "cancelled".into())
            } else {
                err
            };
            let undo = txn.undo(ctx, project, &steps, safety.as_ref());
            let removed = txn.removed_services().to_vec();
            (
                safety_id,
                removed,
                Err(rolled_back(row, safety.as_ref(), err, undo)),
            )
        }
    }
}

fn rolled_back(
    row: &BackupRow,
    safety: Option<&BackupRow>,
    err: anyhow::Error,
    undo: Result<()>,
) -> anyhow::Error {
    let where_safety = match safety {
        Some(s) => format!("safety backup #{} is {}", s.id, s.file_path),
        None => "no safety backup was taken (--no-safety-backup)".into(),
    };
    // Cancelled is 130 everywhere, whatever step the signal came in.
    let code = if crate::cancel::requested() {
        Code::Cancelled
    } else {
        Code::RolledBack
    };
    let msg = match undo {
        Ok(()) => format!("rollback to backup #{} failed and the previous state was put back ({where_safety}): {err:#}", row.id),
        Err(u) => format!(
            "rollback to backup #{} failed ({err:#}) and putting back the previous state failed too ({u:#}); {where_safety}",
            row.id
        ),
    };
    user(code, msg)
}

fn safety_backup(
    ctx: &Context,
    project: &Project,
    catalog: &Catalog,
    plan: &RollbackPlan,
    record: &mut ActiveRun,
) -> Result<BackupRow> {
    let row = safety_of(
        ctx,
        project,
        catalog,
        &restored_labels(plan),
        &plan.safety_recipients,
        &Default::default(),
    )?;
    record.safety_backup(Path::new(&row.file_path))?;
    Ok(row)
}

/// Exit 16: the targets hold the restored content and the services run, but the safety
/// backup of the previous content, `kept` where the swap put it, could not be written.
pub(crate) fn safety_pending(done: &str, kept: &[PathBuf], e: anyhow::Error) -> anyhow::Error {
    let kept: Vec<String> = kept.iter().map(|p| p.display().to_string()).collect();
    user(
        Code::SafetyPending,
        format!(
            "{done}, but the safety backup of the previous state could not be written ({e:#}); the previous content is kept in {}: free space, then run `recover` to finish the safety backup",
            kept.join(", ")
        ),
    )
}

/// The labels (volume names, bind paths) a plan restores.
fn restored_labels(plan: &RollbackPlan) -> Vec<String> {
    plan.restoring().map(|s| plan::label(&s.record)).collect()
}

/// Writes the targets a killed `rollback --in-place` had emptied and not finished again
/// from its safety backup (bound, like any archive, to the project's current targets).
pub fn refill_in_place(
    ctx: &Context,
    project: &Project,
    safety: &Path,
    targets: &[PathBuf],
) -> Result<()> {
    let mut verified =
        reader::verify(safety, None, ctx.keyring()?).context("reading the safety backup")?;
    let req = plan::Request::default();
    bind_to_project(&mut verified, project, &req)?;
    let steps: Vec<Step> = verified
        .manifest
        .volumes
        .iter()
        .filter(|v| v.source.as_ref().is_some_and(|s| targets.contains(s)))
        .map(plan::in_place_step)
        .collect();
    let refs: Vec<&Step> = steps.iter().collect();
    let mut txn = Transaction::new(None);
    apply::extract(ctx, project, &verified.file, &refs, &mut txn)?;
    txn.commit();
    Ok(())
}

/// Makes the containers removed to recreate volumes again (not started).
fn recreate_containers(ctx: &Context, services: &[String]) {
    if let Err(e) = services::create_missing(&ctx.docker, &ctx.compose, services) {
        warn(format!(
            "could not create the containers of {} again: {e:#}; run `docker compose create`",
            services.join(", ")
        ));
    }
}
