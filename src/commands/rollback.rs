//! `rollback`: restore a backup of the project (or, with `--dry-run`, show how it would).
use std::io::Write;

use anyhow::Result;

use crate::cli::{Format, RollbackArgs};
use crate::output::{human_bytes, note, print, table, write_json};
use crate::records::RunCommand;
use crate::restore::plan::RollbackPlan;
use crate::restore::{self, Options};
use crate::Context;

pub fn run(ctx: &Context, args: &RollbackArgs, out: &mut dyn Write) -> Result<()> {
    let opts = Options {
        id: args.id,
        data_only: args.data_only,
        excludes: args.exclude.clone(),
        in_place: args.in_place,
        no_start: args.no_start,
        no_safety_backup: args.no_safety_backup,
        yes: args.yes,
        from_remote: args.from_remote,
        recipients: args.recipient.clone(),
        recipients_files: args.recipients_file.clone(),
        no_hooks: args.no_hooks,
    };
    if args.dry_run {
        let prepared = restore::plan(ctx, &opts)?;
        return print(out, args.format, &prepared.plan, print_plan);
    }
    let prepared = restore::prepare(ctx, &opts)?;
    crate::fault::point(crate::fault::Fault::RollbackPlanned);
    let (_lock, project) = crate::recover::lock_and_recover(
        ctx,
        prepared.project.clone(),
        &prepared.catalog,
        RunCommand::Rollback,
    )?;
    // What runs and what exists is read again under the lock: a create that had the services
    // stopped while this rollback verified has started them again by now.
    let prepared = restore::replan(ctx, &opts, prepared, project)?;
    let project = prepared.project.clone();
    let report = restore::execute(ctx, &opts, prepared, project)?;
    note(format!(
        "rolled back to backup #{} ({}): restored {}{}{}",
        report.plan.backup_id,
        report.plan.mode.as_str(),
        report.restored.join(", "),
        if report.kept.is_empty() {
            String::new()
        } else {
            format!("; kept {}", report.kept.join(", "))
        },
        match report.safety_backup_id {
            Some(id) => format!("; safety backup #{id}"),
            None => String::new(),
        }
    ));
    if args.format == Format::Json {
        write_json(out, &report)?;
    }
    Ok(())
}

fn print_plan(plan: &RollbackPlan, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "rollback to backup #{} ({}), nothing changed yet:",
        plan.backup_id,
        plan.mode.as_str()
    )?;
    let rows = plan.actions.iter().map(|s| {
        vec![
            s.target.clone(),
            s.kind.to_string(),
            s.role.to_string(),
            s.action.to_string(),
            s.io.to_string(),
            s.reason.clone(),
        ]
    });
    write!(
        out,
        "{}",
        table(&["TARGET", "KIND", "ROLE", "ACTION", "IO", "REASON"], rows)
    )?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "nothing".to_string()
        } else {
            v.join(", ")
        }
    };
    writeln!(out, "stop:  {}", list(&plan.stop))?;
    writeln!(out, "start: {}", list(&plan.start))?;
    writeln!(out, "order: {}: {}", plan.order.as_str(), plan.order_reason)?;
    for line in crate::hooks::describe(&plan.hooks) {
        writeln!(out, "hook {line}")?;
    }
    for s in &plan.space {
        writeln!(
            out,
            "space: {} needed on the filesystem of {} ({} free)",
            human_bytes(s.needed_bytes),
            s.filesystem.display(),
            human_bytes(s.free_bytes)
        )?;
    }
    for c in &plan.image_changes {
        writeln!(
            out,
            "image: service {} was backed up with {}, now runs {}{}",
            c.service,
            c.backup_image,
            c.current_image,
            if c.same_tag {
                " (same tag, another image)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}
