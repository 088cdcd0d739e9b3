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
    apply::clean_stale(ctx, &steps);
    record.phase(Phase::Staging)?;
    note("staging the backup beside its targets while the services run");
    let mut txn = Transaction::new(None);
    let archive = plan.archive.clone().context("the plan has no verified archive")?;
    let staged = apply::extract(ctx, project, &archive, &steps, &mut txn)
        .and_then(|()| txn.swap_records())
        .and_then(|swaps| record.swaps(swaps, &plan.safety_recipients, opts.no_safety_backup));
    if let Err(e) = staged {
        let undo = txn.undo(ctx, project, &steps, None);
        let undo = undo
            .err()
            .map(|u| format!(" (and removing the staging: {u:#})"))
            .unwrap_or_default();
        return Err(UserError::new(
            Code::RolledBack,
            format!(
                "rollback to backup #{} failed while staging, before anything stopped: {e:#}{undo}; nothing was changed and the services kept running",
                row.id
            ),
        )
        .into());
    }
    crate::fault::point("rollback-staged");
    let started = std::time::Instant::now();
    swap_while_stopped(ctx, row, &plan, &mut record, &mut txn, &steps, project)?;
    let downtime_ms = started.elapsed().as_millis() as u64;
    note(format!(
        "services down {:.1} s",
        downtime_ms as f64 / 1000.0
    ));
    record.phase(Phase::SafetyAfter)?;
    crate::fault::point("rollback-safety-after");
    let safety = if opts.no_safety_backup {
        None
    } else {
        let labels = super::restored_labels(&plan);
        let previous = txn.previous();
        let safety = crate::fault::fail("rollback-safety").and_then(|()| {
            let recipients = &plan.safety_recipients;
            super::safety_of(ctx, project, catalog, &labels, recipients, &previous)
        });
        match safety {
            Ok(s) => Some(s),
            Err(e) => return Err(kept(row, txn, record, e)),
        }
    };
    // From here the previous content is wanted no more: a run killed while removing it must
    // not back up what is left of it. (A record that cannot be written: removed anyway.)
    let _ = record.phase(Phase::RemovingPrevious);
    let _ = txn.commit();
    let mut out = report(plan, safety.map(|s| s.id), opts.no_start);
    out.downtime_ms = Some(downtime_ms);
    Ok(out)
}

/// Stops what runs, swaps every staged target in, starts again. On a failed swap, swaps back
/// what was swapped, removes the staging, starts, and fails with `RolledBack`.
fn swap_while_stopped(
    ctx: &Context,
    row: &BackupRow,
    plan: &RollbackPlan,
    record: &mut ActiveRun,
    txn: &mut Transaction<'_>,
    steps: &[&Step],
    project: &Project,
) -> Result<()> {
    if !plan.running.is_empty() {
        note(format!("stopping {}", plan.running.names().join(", ")));
    }
    let swapped = record
        .stopping(&plan.running)
        .and_then(|()| services::stop(&ctx.docker, &ctx.compose, &plan.running))
        .and_then(|()| record.phase(Phase::Swapping))
        .and_then(|()| {
            crate::fault::point("rollback-restoring");
            txn.swap_all()
        });
    let undone = match &swapped {
        Ok(()) => Ok(()),
        Err(_) => txn.undo(ctx, project, steps, None),
    };
    let _ = record.phase(Phase::Starting);
    let start = if plan.start.is_empty() {
        Ok(())
    } else {
        note(format!("starting {}", plan.running.names().join(", ")));
        services::start(&ctx.docker, &ctx.compose, &plan.running)
    };
    match swapped {
        Err(e) => Err(super::rolled_back(row, None, e, undone)),
        Ok(()) => start.with_context(|| format!("backup #{} was restored, but", row.id)),
    }
}

/// The safety backup failed after the services started: the previous content is kept where
/// the swap put it, named, and the run record stays for `recover` to finish (exit 16).
fn kept(
    row: &BackupRow,
    txn: Transaction<'_>,
    record: ActiveRun,
    e: anyhow::Error,
) -> anyhow::Error {
    record.keep();
    super::safety_pending(
        &format!("rolled back to backup #{} and the services run", row.id),
        &txn.keep_previous(),
        e,
    )
}
