//! `delete ID…`: removes each archive file and its catalog row.
use std::io::Write;

use anyhow::Result;

use crate::catalog::BackupRow;
use crate::cli::DeleteArgs;
use crate::exit_codes::{Code, UserError};
use crate::output::note;
use crate::Context;

pub fn run(ctx: &Context, args: &DeleteArgs, _out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    let mut projects: Vec<String> = rows_of(&catalog, &args.ids)?
        .into_iter()
        .map(|r| r.project)
        .collect();
    projects.sort();
    projects.dedup();
    // Sorted order, so two commands spanning the same projects never wait on each other.
    let _locks = projects
        .iter()
        .map(|p| ctx.lock(p, "delete"))
        .collect::<Result<Vec<_>>>()?;
    // Decide on rows read under the locks; none may be in use by a rollback, verify, push or
    // migrate-storage (pinned from its first step).
    let rows = rows_of(&catalog, &args.ids)?;
    let mut _pins = Vec::new();
    for r in &rows {
        match crate::lock::Pin::removing(&ctx.locks_dir(), r.id)? {
            Ok(pin) => _pins.push(pin),
            Err(holder) => {
                return Err(UserError::new(
                    Code::Locked,
                    format!(
                        "backup #{} is in use by {holder}: nothing was deleted; wait for it to finish and try again",
                        r.id
                    ),
                )
                .into())
            }
        }
    }
    for r in &rows {
        let places: Vec<&str> = [Some(r.file_path.as_str()), r.remote_url.as_deref()]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect();
        note(format!(
            "delete #{} {} ({})",
            r.id,
            places.join(" and "),
            r.status
        ));
    }
    crate::prompt::confirm(args.yes, "Delete these backups?", "deleting backups")?;
    crate::remote::transfer::remove_backups(&catalog, &rows, &|r| {
        note(format!("deleted backup #{}", r.id))
    })
}

/// The rows of `ids`; fails naming the first id that is not in the catalog.
fn rows_of(catalog: &crate::catalog::Catalog, ids: &[i64]) -> Result<Vec<BackupRow>> {
    let mut rows = Vec::new();
    for id in ids {
        let row = catalog.get(*id)?.ok_or_else(|| {
            UserError::new(
                Code::Usage,
                format!("no backup #{id} in the catalog: nothing was deleted"),
            )
        })?;
        rows.push(row);
    }
    Ok(rows)
}
