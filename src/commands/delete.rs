//! `delete ID…`: removes each archive file and its catalog row.
use std::io::Write;

use anyhow::{Context as _, Result};

use crate::cli::DeleteArgs;
use crate::exit_codes::{Code, UserError};
use crate::output::note;
use crate::Context;

pub fn run(ctx: &Context, args: &DeleteArgs, _out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    let mut rows = Vec::new();
    for id in &args.ids {
        let row = catalog.get(*id)?.ok_or_else(|| {
            UserError::new(
                Code::Usage,
                format!("no backup #{id} in the catalog: nothing was deleted"),
            )
        })?;
        rows.push(row);
    }
    for r in &rows {
        note(format!("delete #{} {} ({})", r.id, r.file_path, r.status));
    }
    crate::prompt::confirm(args.yes, "Delete these backups?", "deleting backups")?;
    for r in &rows {
        match std::fs::remove_file(&r.file_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", r.file_path)),
        }
        catalog.delete(r.id)?;
        note(format!("deleted backup #{}", r.id));
    }
    Ok(())
}
