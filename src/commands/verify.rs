//! `verify`: re-hash, decompress to the end, and check every manifest entry.
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::archive::reader;
use crate::catalog::BackupRow;
use crate::cli::VerifyArgs;
use crate::exit_codes::{Code, UserError};
use crate::output::{print, table};
use crate::records::RemoteStatus;
use crate::records::{Status, Verification};
use crate::Context;

#[derive(Serialize)]
struct Outcome {
    id: i64,
    file_path: String,
    ok: bool,
    result: String,
}

pub fn run(ctx: &Context, args: &VerifyArgs, out: &mut dyn Write) -> Result<()> {
    if args.trial.restore_test {
        return restore_tests(ctx, args, out);
    }
    let catalog = ctx.catalog()?;
    let rows = if args.ids.is_empty() {
        if !args.all {
            return Err(
                UserError::new(Code::Usage, "name backups to verify (IDs), or pass --all").into(),
            );
        }
        let project = if args.all_projects {
            None
        } else {
            Some(ctx.project_name()?)
        };
        catalog
            .list(project.as_deref())?
            .into_iter()
            .filter(|r| r.status == Status::Completed)
            .collect()
    } else {
        let mut rows = Vec::new();
        for id in &args.ids {
            rows.push(catalog.get(*id)?.ok_or_else(|| {
                UserError::new(Code::Usage, format!("no backup #{id} in the catalog"))
            })?);
        }
        rows
    };
    let mut outcomes = Vec::new();
    for r in rows {
        let _pin = ctx.pin(r.id, "verify")?;
        if args.remote {
            if let Some(o) = remote_outcome(ctx, &r, args.download, !args.ids.is_empty())? {
                outcomes.push(o);
            }
            continue;
        }
        let result = if r.status != Status::Completed {
            Verification::Failed(format!("not a completed backup ({})", r.status))
        } else {
            check(ctx, &r, args.full)?
        };
        catalog.record_verification(r.id, &result)?;
        outcomes.push(Outcome {
            id: r.id,
            file_path: r.file_path,
            ok: result.passed_or_checksum(),
            result: result.to_db().to_string(),
        });
    }
    print(out, args.format, &outcomes, |outcomes, out| {
        let rows = outcomes
            .iter()
            .map(|o| vec![o.id.to_string(), o.result.clone(), o.file_path.clone()]);
        Ok(write!(out, "{}", table(&["ID", "RESULT", "FILE"], rows))?)
    })?;
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| format!("#{} ({}: {})", o.id, o.file_path, o.result))
        .collect();
    if !bad.is_empty() {
        return Err(UserError::new(
            Code::VerifyFailed,
            format!("verification failed for {}", bad.join("; ")),
        )
        .into());
    }
    Ok(())
}

/// What `verify --restore-test --format json` prints per backup.
#[derive(Serialize)]
struct Tested {
    id: i64,
    file_path: String,
    restore_test: crate::restore_test::Report,
}

/// `verify ID… --restore-test`: each backup's restore test, in turn; the first that fails
/// ends the run (exit 12 or 18; the catalog has its outcome).
fn restore_tests(ctx: &Context, args: &VerifyArgs, out: &mut dyn Write) -> Result<()> {
    if args.ids.is_empty() || args.remote {
        return Err(UserError::new(
            Code::Usage,
            "--restore-test takes the IDs of local backups (not --all or --remote)",
        )
        .into());
    }
    let catalog = ctx.catalog()?;
    let mut done = Vec::new();
    for id in &args.ids {
        let row = catalog
            .get(*id)?
            .filter(|r| r.status == Status::Completed)
            .ok_or_else(|| {
                UserError::new(
                    Code::Usage,
                    format!("no completed backup #{id} in the catalog"),
                )
            })?;
        let report = crate::restore_test::run(ctx, &row, options(&args.trial))?;
        done.push(Tested {
            id: row.id,
            file_path: row.file_path,
            restore_test: report,
        });
    }
    print(out, args.format, &done, |done, out| {
        let rows = done.iter().map(|t| {
            let secs = t.restore_test.duration_ms as f64 / 1000.0;
            vec![
                t.id.to_string(),
                format!("passed ({secs:.1} s)"),
                t.file_path.clone(),
            ]
        });
        Ok(write!(
            out,
            "{}",
            table(&["ID", "RESTORE TEST", "FILE"], rows)
        )?)
    })
}

/// The restore test's settings from the command line.
pub fn options(a: &crate::cli::RestoreTestArgs) -> crate::restore_test::Options {
    crate::restore_test::Options {
        timeout: a.timeout,
        settle: a.settle,
        keep: a.keep,
    }
}

/// `verify --remote`: the copy's size and sidecar (`size-ok`), or with `download` its whole
/// content (`ok`). Not recorded in the catalog (that records the local file). Rows without
/// a copy are left out unless named.
fn remote_outcome(
    ctx: &Context,
    r: &BackupRow,
    download: bool,
    named: bool,
) -> Result<Option<Outcome>> {
    let Some(url) = r.remote_url.clone() else {
        return Ok(named.then(|| Outcome {
            id: r.id,
            file_path: String::new(),
            ok: false,
            result: "no remote copy".into(),
        }));
    };
    let result = match remote_check(ctx, r, &url, download) {
        Ok(word) => word.to_string(),
        Err(e) if crate::exit_codes::code_of(&e) == Code::Identity => return Err(e),
        Err(e) => format!("{e:#}"),
    };
    Ok(Some(Outcome {
        id: r.id,
        ok: result == "ok" || result == "size-ok" || result == "checksum-only",
        file_path: url,
        result,
    }))
}

fn remote_check(ctx: &Context, r: &BackupRow, url: &str, download: bool) -> Result<&'static str> {
    let (bucket, key) = crate::remote::url::split_object(url)?;
    let store = crate::remote::open(&bucket)?;
    anyhow::ensure!(
        r.remote_status == Some(RemoteStatus::Uploaded),
        "the upload did not complete ({})",
        r.remote_error.as_deref().unwrap_or("failed")
    );
    anyhow::ensure!(
        crate::remote::transfer::is_there(&store, r, &key)?,
        "the object or its sidecar is missing, or their size or SHA-256 differ from the catalog"
    );
    if !download {
        return Ok("size-ok");
    }
    let dir = Path::new(&r.file_path)
        .parent()
        .filter(|d| d.is_dir())
        .map(Path::to_path_buf)
        .unwrap_or(std::env::current_dir()?);
    let tmp = dir.join(format!(".nuwax-verify-{}-{}", std::process::id(), r.id));
    let checked = crate::remote::transfer::download(r, &tmp).and_then(|()| {
        let mut copy = r.clone();
        copy.file_path = tmp.to_string_lossy().into_owned();
        check(ctx, &copy, false)
    });
    let _ = std::fs::remove_file(&tmp);
    match checked? {
        Verification::Ok => Ok("ok"),
        Verification::ChecksumOnly => Ok("checksum-only"),
        Verification::Failed(why) => anyhow::bail!(why),
    }
}

/// Verifies one completed backup whole; an encrypted one without an identity by size and
/// checksum only (`checksum-only`), unless `full` was asked (then exit 15).
fn check(ctx: &Context, r: &BackupRow, full: bool) -> Result<Verification> {
    let path = Path::new(&r.file_path);
    let keys = ctx.keyring()?;
    if r.encrypted && keys.is_none() {
        if full {
            return Err(UserError::new(
                Code::Identity,
                format!("backup #{} is encrypted: verify --full needs --identity FILE (or NUWAX_BACKUP_IDENTITY)", r.id),
            )
            .into());
        }
        return Ok(checksum_only(path, r));
    }
    Ok(match reader::verify(path, r.sha256.as_deref(), keys) {
        Ok(_) => Verification::Ok,
        Err(e) if crate::exit_codes::code_of(&e) == Code::Identity => return Err(e),
        Err(_) if crate::cancel::requested() => {
            crate::cancel::check()?;
            Verification::Ok
        }
        Err(e) => Verification::Failed(format!("{e:#}")),
    })
}

/// Size and SHA-256 of the file against the catalog: all that can be checked without a key.
fn checksum_only(path: &Path, r: &BackupRow) -> Verification {
    match crate::archive::hashing::sha256_file(path) {
        Err(e) => Verification::Failed(format!("reading {}: {e}", path.display())),
        Ok(sum) if Some(sum.as_str()) != r.sha256.as_deref() => Verification::Failed(format!(
            "checksum mismatch: the file's SHA-256 is {sum}, the catalog recorded {}",
            r.sha256.as_deref().unwrap_or("nothing")
        )),
        Ok(_) => match std::fs::metadata(path) {
            Ok(m) if m.len() != r.size_bytes => Verification::Failed(format!(
                "size mismatch: the file has {} bytes, the catalog recorded {}",
                m.len(),
                r.size_bytes
            )),
            _ => Verification::ChecksumOnly,
        },
    }
}
