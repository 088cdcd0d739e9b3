//! `list` (alias `backup list`): the project's backups, newest first, with file warnings.
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::catalog::BackupRow;
use crate::cli::{ListArgs, ListFormat};
use crate::output::{human_bytes, table, warn, write_json};
use crate::records::RemoteStatus;
use crate::records::Status;
use crate::Context;

/// A row as `list --format json` prints it.
#[derive(Serialize)]
pub struct Listed<'a> {
    #[serde(flatten)]
    row: &'a BackupRow,
    file_exists: bool,
    /// `local`, `remote`, `both` or `none`.
    location: &'static str,
}

impl<'a> Listed<'a> {
    pub fn of(row: &'a BackupRow) -> Listed<'a> {
        Listed {
            row,
            file_exists: Path::new(&row.file_path).is_file(),
            location: row.location(),
        }
    }
}

/// What is wrong with a completed backup's file, if anything.
pub fn file_problem(row: &BackupRow) -> Option<&'static str> {
    let remote = row.remote_status == Some(RemoteStatus::Uploaded);
    if row.status != Status::Completed || (remote && !Path::new(&row.file_path).exists()) {
        return None;
    }
    match std::fs::metadata(Path::new(&row.file_path)) {
        Err(_) => Some("file missing"),
        Ok(m) if m.len() != row.size_bytes => Some("size changed"),
        Ok(_) => None,
    }
}

/// `2026-11-26T10:00:00Z` in the local time zone, for people.
pub fn local_time(utc: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(utc)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| utc.to_string())
}

pub fn run(ctx: &Context, args: &ListArgs, out: &mut dyn Write) -> Result<()> {
    let project = if args.all_projects {
        None
    } else {
        Some(ctx.project_name()?)
    };
    let rows = ctx.catalog()?.list(project.as_deref())?;
    for r in &rows {
        if let Some(p) = file_problem(r) {
            warn(format!("backup #{}: {p}: {}", r.id, r.file_path));
        }
    }
    let format = if args.json {
        ListFormat::Json
    } else {
        args.format
    };
    match format {
        ListFormat::Ids => {
            for r in &rows {
                writeln!(out, "{}", r.id)?;
            }
            Ok(())
        }
        ListFormat::Json => {
            let listed: Vec<Listed> = rows.iter().map(Listed::of).collect();
            write_json(out, &listed)
        }
        ListFormat::Table => {
            let mut headers = vec![
                "ID",
                "CREATED",
                "TYPE",
                "VERSION",
                "SIZE",
                "STATUS",
                "WHERE",
                "RESTORE TEST",
                "",
            ];
            if args.all_projects {
                headers.insert(1, "PROJECT");
            }
            let lines = rows.iter().map(|r| {
                let mut cells = vec![
                    r.id.to_string(),
                    local_time(&r.created_at),
                    r.backup_type.to_string(),
                    r.service_version.clone(),
                    human_bytes(r.size_bytes),
                    r.status.to_string(),
                    where_cell(r),
                    restore_test_cell(r),
                    file_problem(r)
                        .map(|p| format!("! {p}"))
                        .unwrap_or_default(),
                ];
                if args.all_projects {
                    cells.insert(1, r.project.clone());
                }
                cells
            });
            write!(out, "{}", table(&headers, lines))?;
            Ok(())
        }
    }
}

/// The RESTORE TEST cell: the last one's outcome and age (`passed 2 h ago`), or `-`.
fn restore_test_cell(r: &BackupRow) -> String {
    match (
        &r.restore_test,
        r.restore_tested_at.as_deref().and_then(crate::output::age),
    ) {
        (Some(t), Some((_, ago))) => format!("{t} {ago}"),
        _ => "-".to_string(),
    }
}

/// The WHERE cell: the location, and a failed upload.
fn where_cell(r: &BackupRow) -> String {
    match (r.location(), r.remote_status) {
        (loc, Some(RemoteStatus::Failed)) => format!("{loc} (upload failed)"),
        (loc, _) => loc.to_string(),
    }
}
