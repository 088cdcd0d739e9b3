//! `prune`: delete backups outside the retention policy, saying what is kept and why.
use std::io::Write;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::cli::PruneArgs;
use crate::exit_codes::{code_of, Code, UserError};
use crate::output::{note, print, table, warn};
use crate::prune::{decide, Candidate, Policy};
use crate::records::{BackupType, Status, Verification};
use crate::Context;

#[derive(Serialize)]
struct Line {
    id: i64,
    created_at: String,
    backup_type: BackupType,
    keep: bool,
    reasons: Vec<String>,
    file_path: String,
}

pub fn run(ctx: &Context, args: &PruneArgs, out: &mut dyn Write) -> Result<()> {
    let policy = Policy {
        keep_last: args.keep_last,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        prune_recent_safety: args.prune_recent_safety,
    };
    if policy.is_empty() {
        return Err(UserError::new(
            Code::Usage,
            "give a policy: --keep-last N, --keep-daily N, --keep-weekly N or --keep-monthly N",
        )
        .into());
    }
    let project = ctx.project_name()?;
    let catalog = ctx.catalog()?;
    // A real prune decides on rows read under the lock; a dry run only reads.
    let _lock = if args.dry_run {
        None
    } else {
        Some(ctx.lock(&project, "prune")?)
    };
    let lines = decide_lines(&catalog, &project, &policy)?;
    print(out, args.format, &lines, |lines, out| {
        let rows = lines.iter().map(|l| {
            vec![
                l.id.to_string(),
                crate::commands::list::local_time(&l.created_at),
                l.backup_type.to_string(),
                if l.keep { "keep" } else { "delete" }.to_string(),
                l.reasons.join(", "),
            ]
        });
        let headers = ["ID", "CREATED", "TYPE", "ACTION", "WHY"];
        Ok(write!(out, "{}", table(&headers, rows))?)
    })?;
    let doomed: Vec<&Line> = lines.iter().filter(|l| !l.keep).collect();
    if args.dry_run || doomed.is_empty() {
        let dry = if args.dry_run {
            " (dry run: nothing deleted)"
        } else {
            ""
        };
        note(format!("{} to delete{dry}", doomed.len()));
        return Ok(());
    }
    crate::prompt::confirm(
        args.yes,
        &format!("Delete {} backup(s)?", doomed.len()),
        "pruning backups",
    )?;
    let mut rows = Vec::new();
    let mut _pins = Vec::new();
    for l in &doomed {
        let Some(row) = catalog.get(l.id)? else {
            continue;
        };
        // A backup a rollback, verify, push or migrate-storage reads now is kept this time.
        match crate::lock::Pin::removing(&ctx.locks_dir(), row.id)? {
            Ok(pin) => {
                _pins.push(pin);
                rows.push(row);
            }
            Err(holder) => warn(format!("kept backup #{}: it is in use by {holder}", row.id)),
        }
    }
    let removed = crate::remote::transfer::remove_backups(&catalog, &rows, &|_| {});
    if removed.as_ref().is_err_and(|e| code_of(e) != Code::Remote) {
        return removed;
    }
    note(format!("deleted {} backup(s)", rows.len()));
    removed
}

/// The policy's decision on each completed backup of `project`, with the reasons.
fn decide_lines(catalog: &Catalog, project: &str, policy: &Policy) -> Result<Vec<Line>> {
    let rows: Vec<_> = catalog
        .list(Some(project))?
        .into_iter()
        .filter(|r| r.status == Status::Completed)
        .collect();
    let mut cands = Vec::new();
    for r in &rows {
        let created = chrono::DateTime::parse_from_rfc3339(&r.created_at)
            .with_context(|| format!("backup #{} has a bad created_at {}", r.id, r.created_at))?
            .with_timezone(&chrono::Utc);
        cands.push(Candidate {
            id: r.id,
            created,
            backup_type: r.backup_type,
            verified_ok: catalog.verification(r.id)? == Some(Verification::Ok),
            restore_tested: r.restore_test == Some(crate::records::RestoreTest::Passed),
        });
    }
    let decisions = decide(&cands, policy, chrono::Utc::now());
    Ok(decisions
        .iter()
        .filter_map(|d| {
            let r = rows.iter().find(|r| r.id == d.id)?;
            Some(Line {
                id: d.id,
                created_at: r.created_at.clone(),
                backup_type: r.backup_type,
                keep: d.keep,
                reasons: d.reasons.clone(),
                file_path: r.file_path.clone(),
            })
        })
        .collect())
}
