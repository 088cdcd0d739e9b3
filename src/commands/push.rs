//! `push ID…`: uploads backups to object storage again (idempotent: a copy that is already
//! complete, with its size and sidecar, is left as it is).
use std::io::Write;

use anyhow::Result;

use crate::catalog::{BackupRow, Catalog};
use crate::cli::PushArgs;
use crate::exit_codes::{Code, UserError};
use crate::output::{note, print, table, warn};
use crate::records::RemoteStatus;
use crate::records::Status;
use crate::remote::{self, transfer, RemoteUrl};
use crate::Context;

pub fn run(ctx: &Context, args: &PushArgs, out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    let rows = rows_of(&catalog, &args.ids)?;
    let flag = args
        .remote
        .as_deref()
        .map(RemoteUrl::parse)
        .transpose()
        .map_err(|e| UserError::new(Code::Usage, format!("{e:#}")))?;
    let mut failed = 0;
    let mut done = Vec::new();
    for row in rows {
        let _lock = ctx.lock(&format!("{}.upload", row.project), "upload")?;
        let _pin = ctx.pin(row.id, "push")?;
        transfer::abort_stale(&catalog, Some(&row.project));
        let row = catalog.get(row.id)?.unwrap_or(row);
        if let Err(e) = push_one(ctx, &catalog, &row, flag.as_ref(), args.max_parts) {
            warn(format!("backup #{}: {e:#}", row.id));
            failed += 1;
        }
        done.push(catalog.get(row.id)?.unwrap_or(row));
    }
    print(out, args.format, &done, |rows, out| {
        let lines = rows.iter().map(|r| {
            vec![
                r.id.to_string(),
                r.remote_status.map_or("-".to_string(), |s| s.to_string()),
                r.remote_url.clone().unwrap_or_default(),
            ]
        });
        write!(out, "{}", table(&["ID", "REMOTE", "URL"], lines))?;
        Ok(())
    })?;
    if failed > 0 {
        return Err(UserError::new(
            Code::Remote,
            format!(
                "{failed} of {} uploads failed (see above); the local backups are unchanged",
                done.len()
            ),
        )
        .into());
    }
    Ok(())
}

/// Uploads one backup unless its copy is already complete where it is going.
fn push_one(
    ctx: &Context,
    catalog: &Catalog,
    row: &BackupRow,
    flag: Option<&RemoteUrl>,
    max_parts: u64,
) -> Result<()> {
    let mut row = row.clone();
    let target = match (flag, &row.remote_url) {
        (Some(url), _) => url.clone(),
        (None, Some(url)) => remote::url::remote_of(url)?,
        (None, None) => project_remote(ctx)?,
    };
    let store = remote::open(&target)?;
    let same_bucket = row
        .remote_url
        .as_deref()
        .is_some_and(|u| u.starts_with(&format!("s3://{}/", target.bucket)));
    if flag.is_some() && !same_bucket {
        row.remote_url = None;
    }
    if !std::path::Path::new(&row.file_path).is_file() {
        return finish_streamed(&store, catalog, &row);
    }
    if let Some(url) = row
        .remote_url
        .as_deref()
        .filter(|_| row.remote_status == Some(RemoteStatus::Uploaded))
    {
        let key = remote::url::split_object(url)?.1;
        if transfer::is_there(&store, &row, &key)? {
            note(format!("backup #{} is already at {url}", row.id));
            return Ok(());
        }
    }
    transfer::upload(&store, catalog, &row, max_parts).map(|_| ())
}

/// A `--remote-only` backup (no local file): its object is all there is. When it is complete
/// but its sidecar was never written, writes the sidecar; anything else cannot be sent again.
fn finish_streamed(store: &remote::Store, catalog: &Catalog, row: &BackupRow) -> Result<()> {
    let url = row.remote_url.as_deref().unwrap_or_default();
    let key = remote::url::split_object(url)?.1;
    if transfer::is_there(store, row, &key)? {
        note(format!("backup #{} is already at {url}", row.id));
        return Ok(());
    }
    match store.head(&key)? {
        Some(size) if size == row.size_bytes => transfer::finish_streamed(store, catalog, row),
        _ => Err(UserError::new(
            Code::Remote,
            format!("backup #{} has no local archive and its object {url} is missing or incomplete: it cannot be sent again", row.id),
        )
        .into()),
    }
}

/// `x-nuwax-backup.remote` of the current project, when the row names none.
fn project_remote(ctx: &Context) -> Result<RemoteUrl> {
    let project = crate::compose::Project::load(&ctx.docker, &ctx.compose)?;
    let text = project.extension.remote.ok_or_else(|| {
        UserError::new(
            Code::Usage,
            "no remote to push to: pass --remote s3://BUCKET[/PREFIX] or set x-nuwax-backup.remote",
        )
    })?;
    RemoteUrl::parse(&text).map_err(|e| UserError::new(Code::Usage, format!("{e:#}")).into())
}

/// The completed rows of `ids` with a local archive; fails naming the first that is not.
fn rows_of(catalog: &Catalog, ids: &[i64]) -> Result<Vec<BackupRow>> {
    let mut rows = Vec::new();
    for id in ids {
        let row = catalog.get(*id)?.ok_or_else(|| {
            UserError::new(
                Code::Usage,
                format!("no backup #{id} in the catalog: nothing was uploaded"),
            )
        })?;
        if row.status != Status::Completed {
            return Err(UserError::new(
                Code::Usage,
                format!(
                    "backup #{id} is {}: only completed backups are uploaded",
                    row.status
                ),
            )
            .into());
        }
        if !std::path::Path::new(&row.file_path).is_file() && row.remote_url.is_none() {
            return Err(UserError::new(
                Code::Usage,
                format!(
                    "backup #{id} has no local archive ({}) to upload",
                    row.file_path
                ),
            )
            .into());
        }
        rows.push(row);
    }
    Ok(rows)
}
