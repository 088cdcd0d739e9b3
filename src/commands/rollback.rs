//! `rollback`: restore a backup of the project.
use std::io::Write;

use anyhow::Result;

use crate::cli::{Format, RollbackArgs};
use crate::output::{note, write_json};
use crate::restore::{self, Options};
use crate::Context;

pub fn run(ctx: &Context, args: &RollbackArgs, out: &mut dyn Write) -> Result<()> {
    let opts = Options {
        id: args.id,
        data_only: args.data_only,
        excludes: args.exclude.clone(),
        no_start: args.no_start,
        no_safety_backup: args.no_safety_backup,
        yes: args.yes,
    };
    let report = restore::run(ctx, &opts)?;
    note(format!(
        "rolled back to backup #{} ({}): restored {}{}{}",
        report.backup_id,
        report.mode,
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
