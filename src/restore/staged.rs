//! A rollback staged first, for the shortest downtime: the archive is extracted beside every
//! target while the services still run; they stop only for the swap (the same atomic
//! exchange), start again, and the safety backup is then made from the previous content the
//! swap moved aside, which is removed last. The run record holds every target, its staging
//! and the staged tree's inode before anything stops, so after a kill `recover` can tell
//! what was swapped: before the start it swaps back, after it finishes the safety backup.
use anyhow::{Context as _, Result};

use super::plan::{RollbackPlan, Step};
use super::transaction::Transaction;
use super::{apply, report, Options, Report};
use crate::catalog::{BackupRow, Catalog};
use crate::compose::Project;
use crate::exit_codes::{Code, UserError};
use crate::output::note;
use crate::runs::{ActiveRun, Phase};
use crate::services;
use crate::Context;

pub fn run(
    ctx: &Context,
    opts: &Options,
    project: &Project,
    catalog: &Catalog,
    row: &BackupRow,
    plan: RollbackPlan,
    mut record: ActiveRun,
) -> Result<Report> {
    let steps: Vec<&Step> = plan.restoring().collect();
    apply::clean_stale(ctx, &project.name, &steps);
    record.phase(Phase::Staging)?;
    note("staging the backup beside its targets while the services run");
    let mut txn = Transaction::new(Some(&mut record));
    if let Err(e) = stage(ctx, project, &plan, opts, &steps, &mut txn) {
        let undo = txn.undo(ctx, project, &steps, None);
        let undo = undo
            .err()
            .map(|u| format!(" (and removing the staging: {u:#})"))
            .unwrap_or_default();
        let code = if crate::cancel::requested() {
            Code::Cancelled
        } else {
            Code::RolledBack
        };
        return Err(UserError::new(
            code,
            format!(
                "rollback to backup #{} failed while staging, before anything stopped: {e:#}{undo}; nothing was changed and the services kept running",
                row.id
            ),
        )
        .into());
    }
    crate::fault::point(crate::fault::Fault::RollbackStaged);
    let started = std::time::Instant::now();
    swap_while_stopped(ctx, row, &plan, &mut txn, &steps, project)?;
    let downtime_ms = started.elapsed().as_millis() as u64;
    note(format!(
        "services down {:.1} s",
        downtime_ms as f64 / 1000.0
    ));
    run_of(&mut txn)?.phase(Phase::SafetyAfter)?;
    crate::fault::point(crate::fault::Fault::RollbackSafetyAfter);
    let safety = if opts.no_safety_backup {
        None
    } else {
        let labels = super::restored_labels(&plan);
        let previous = txn.previous();
        let safety = crate::fault::fail(crate::fault::Fault::RollbackSafety).and_then(|()| {
            let recipients = &plan.safety_recipients;
            crate::safety::safety_of(ctx, project, catalog, &labels, recipients, &previous)
        });
        match safety {
            Ok(s) => Some(s),
            Err(e) => {
                let err = kept(row, &txn, e);
                drop(txn);
                record.keep();
                return Err(err);
            }
        }
    };
    // From here the previous content is wanted no more: a run killed while removing it must
    // not back up what is left of it.
    run_of(&mut txn)?.phase(Phase::RemovingPrevious)?;
    let _ = txn.commit();
    let mut out = report(plan, safety.map(|s| s.id), opts.no_start);
    out.downtime_ms = Some(downtime_ms);
    Ok(out)
}

fn run_of<'a>(txn: &'a mut Transaction<'_>) -> Result<&'a mut ActiveRun> {
    txn.run().context("a staged rollback keeps a run record")
}

/// Extracts the archive beside every target and records each target, its staging and the
/// staged tree's inode, before anything stops.
fn stage(
    ctx: &Context,
    project: &Project,
    plan: &RollbackPlan,
    opts: &Options,
    steps: &[&Step],
    txn: &mut Transaction<'_>,
) -> Result<()> {
    let archive = plan
        .archive
        .clone()
        .context("the plan has no verified archive")?;
    apply::extract(ctx, project, &archive, steps, txn)?;
    let swaps = txn.swap_records()?;
    run_of(txn)?.swaps(swaps, &plan.safety_recipients, opts.no_safety_backup)
}

/// Stops what runs, swaps every staged target in, starts again. On a failed swap, swaps back
/// what was swapped, removes the staging, starts, and fails with `RolledBack`.
fn swap_while_stopped(
    ctx: &Context,
    row: &BackupRow,
    plan: &RollbackPlan,
    txn: &mut Transaction<'_>,
    steps: &[&Step],
    project: &Project,
) -> Result<()> {
    if !plan.running.is_empty() {
        note(format!("stopping {}", plan.running.names().join(", ")));
    }
    let swapped = run_of(txn)
        .and_then(|r| r.stopping(&plan.running, (&ctx.docker, &ctx.compose)))
        .and_then(|()| services::stop(&ctx.docker, &ctx.compose, &plan.running))
        .and_then(|()| run_of(txn)?.phase(Phase::Swapping))
        .and_then(|()| {
            crate::fault::point(crate::fault::Fault::RollbackRestoring);
            txn.swap_all()
        });
    let undone = match &swapped {
        Ok(()) => Ok(()),
        Err(_) => txn.undo(ctx, project, steps, None),
    };
    let phase = run_of(txn).and_then(|r| r.phase(Phase::Starting));
    let start = if plan.start.is_empty() {
        Ok(())
    } else {
        note(format!("starting {}", plan.running.names().join(", ")));
        services::start(&ctx.docker, &ctx.compose, &plan.running)
    };
    match swapped {
        Err(e) => Err(super::rolled_back(row, None, e, undone)),
        Ok(()) => {
            phase?;
            start.with_context(|| format!("backup #{} was restored, but", row.id))
        }
    }
}

/// The safety backup failed after the services started: the previous content is kept where
/// the swap put it, named, and the run record stays for `recover` to finish (exit 16).
fn kept(row: &BackupRow, txn: &Transaction<'_>, e: anyhow::Error) -> anyhow::Error {
    super::safety_pending(
        &format!("rolled back to backup #{} and the services run", row.id),
        &txn.previous_paths(),
        e,
    )
}
