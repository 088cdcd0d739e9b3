//! Which backup a rollback restores: the one given by id, else one picked on a terminal.
use std::io::IsTerminal;

use anyhow::Result;

use crate::catalog::{BackupRow, Catalog};
use crate::compose::Project;
use crate::exit_codes::{Code, UserError};
use crate::records::Status;

fn user(code: Code, msg: String) -> anyhow::Error {
    UserError::new(code, msg).into()
}

/// The backup to restore: by id, else picked on a terminal; it must be a completed backup of
/// this project.
pub fn choose(catalog: &Catalog, project: &Project, id: Option<i64>) -> Result<BackupRow> {
    let id = match id {
        Some(id) => id,
        None => pick(catalog, project)?,
    };
    let row = catalog.get(id)?.ok_or_else(|| {
        user(
            Code::Usage,
            format!("no backup #{id} in the catalog (see `docker nuwaxbackup list`)"),
        )
    })?;
    if row.project != project.name {
        return Err(user(
            Code::Usage,
            format!(
                "backup #{id} is of project {}, not {}",
                row.project, project.name
            ),
        ));
    }
    if row.status != Status::Completed {
        return Err(user(
            Code::Usage,
            format!(
                "backup #{id} is {}, not completed: it cannot be restored",
                row.status
            ),
        ));
    }
    Ok(row)
}

fn pick(catalog: &Catalog, project: &Project) -> Result<i64> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(user(
            Code::Usage,
            "no backup ID given: pass one, e.g. `docker nuwaxbackup rollback 7`".into(),
        ));
    }
    let rows: Vec<BackupRow> = catalog
        .list(Some(&project.name))?
        .into_iter()
        .filter(|r| r.status == Status::Completed)
        .collect();
    if rows.is_empty() {
        return Err(user(
            Code::Usage,
            format!(
                "project {} has no completed backup to roll back to",
                project.name
            ),
        ));
    }
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "#{:<4} {}  {:<12} v{:<10} {:>10}",
                r.id,
                r.created_at,
                r.backup_type,
                r.service_version,
                crate::output::human_bytes(r.size_bytes)
            )
        })
        .collect();
    let choice = dialoguer::Select::new()
        .with_prompt("Roll back to which backup?")
        .items(&items)
        .default(0)
        .interact_opt()?;
    choice.map(|i| rows[i].id).ok_or_else(|| {
        user(
            Code::Cancelled,
            "no backup chosen: nothing was changed".into(),
        )
    })
}
