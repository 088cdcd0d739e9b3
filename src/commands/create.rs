//! `create` (alias `backup`): a cold backup of every declared volume.
use std::io::Write;

use anyhow::Result;

use crate::archive::Codec;
use crate::backup::plan::CaptureMode;
use crate::backup::plan::Plan;
use crate::backup::{self, Options, Outcome};
use crate::cli::{Compression, CreateArgs, Format};
use crate::output::{human_bytes, note, print, table, write_json};
use crate::records::RunCommand;
use crate::Context;

pub fn run(ctx: &Context, args: &CreateArgs, out: &mut dyn Write) -> Result<()> {
    let opts = options(args)?;
    let remote = backup::RemoteRequest {
        flag: args.remote.clone(),
        max_parts: args.max_parts,
        only: args.remote_only,
    };
    if args.dry_run && args.trial.restore_test {
        return Err(crate::exit_codes::UserError::new(
            crate::exit_codes::Code::Usage,
            "--restore-test needs a backup: drop --dry-run",
        )
        .into());
    }
    let lock = |project, catalog: &_| lock_waiting(ctx, project, catalog, args.wait_lock);
    match backup::run(ctx, &opts, &remote, args.dry_run, &lock)? {
        Outcome::DryRun(plan) => print(out, args.format, &plan, |plan, out| {
            print_plan(plan, args.stop, out)
        }),
        Outcome::Done(row, upload_error) => {
            let place = match &row.remote_url {
                Some(url) if !std::path::Path::new(&row.file_path).exists() => url,
                _ => &row.file_path,
            };
            note(format!(
                "backup #{} completed: {} ({}, {} files, {:.1} s)",
                row.id,
                place,
                human_bytes(row.size_bytes),
                row.file_count,
                row.duration_ms as f64 / 1000.0
            ));
            if let (Some(down), Some(how)) = (row.downtime_ms.filter(|d| *d > 0), &row.capture) {
                note(format!(
                    "services down {:.1} s (capture: {how}, {:.1} s)",
                    down as f64 / 1000.0,
                    row.capture_ms.unwrap_or(0) as f64 / 1000.0
                ));
            }
            let (row, tested) = match args.trial.restore_test {
                true => restore_test(ctx, row, args),
                false => (row, Ok(())),
            };
            if args.format == Format::Json {
                write_json(out, &row)?;
            }
            tested?;
            match upload_error {
                None => Ok(()),
                Some(e) => Err(upload_failed(&row, e)),
            }
        }
    }
}

/// `create --restore-test`: the new backup's restore test; the row as it is after it.
fn restore_test(
    ctx: &Context,
    row: crate::catalog::BackupRow,
    args: &CreateArgs,
) -> (crate::catalog::BackupRow, Result<()>) {
    let opts = super::verify::options(&args.trial);
    let tested = crate::restore_test::run(ctx, &row, opts).map(drop);
    let tested = tested.map_err(|e| {
        e.context(format!(
            "backup #{} completed ({}), but",
            row.id, row.file_path
        ))
    });
    let again = ctx.catalog().and_then(|c| c.get(row.id)).ok().flatten();
    (again.unwrap_or(row), tested)
}

/// The backup's options from the command line (a bad compression level is exit 2).
fn options(args: &CreateArgs) -> Result<Options> {
    let codec = match args.compression {
        Compression::Gzip => Codec::Gzip {
            level: args.compression_level.unwrap_or(6),
        },
        Compression::Zstd => Codec::Zstd {
            level: args.compression_level.unwrap_or(3) as i32,
        },
    };
    codec.validate().map_err(|e| {
        crate::exit_codes::UserError::new(crate::exit_codes::Code::Usage, format!("{e:#}"))
    })?;
    let opts = Options {
        backup_type: args.backup_type.into(),
        service_version: args.service_version.clone(),
        codec,
        storage: args.storage.clone(),
        stop: args.stop,
        include_external_binds: args.include_external_binds,
        capture: match args.capture {
            crate::cli::Capture::Auto => CaptureMode::Auto,
            crate::cli::Capture::Copy => CaptureMode::Copy,
            crate::cli::Capture::Direct => CaptureMode::Direct,
        },
        no_hooks: args.no_hooks,
        recipients: if args.recipient.is_empty() && args.recipients_file.is_empty() {
            None
        } else {
            Some(crate::crypto::Recipients::parse(
                &args.recipient,
                &args.recipients_file,
            )?)
        },
    };
    Ok(opts)
}

/// Takes the project's lock and recovers a dead run; with `wait`, a lock another run holds
/// is tried again each second until then (Ctrl-C still cancels), instead of exit 9.
fn lock_waiting(
    ctx: &Context,
    project: crate::compose::Project,
    catalog: &crate::catalog::Catalog,
    wait: Option<std::time::Duration>,
) -> Result<(crate::lock::ProjectLock, crate::compose::Project)> {
    use crate::exit_codes::{code_of, Code};
    let deadline = wait.map(|d| std::time::Instant::now() + d);
    loop {
        let taken =
            crate::recover::lock_and_recover(ctx, project.clone(), catalog, RunCommand::Create);
        match (&taken, deadline) {
            (Err(e), Some(end))
                if code_of(e) == Code::Locked && std::time::Instant::now() < end =>
            {
                crate::cancel::check()?;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            _ => return taken,
        }
    }
}

/// Exit 14: the local backup is complete, its remote copy is not (or, `--remote-only`, the
/// object is complete and its sidecar is not).
fn upload_failed(row: &crate::catalog::BackupRow, e: anyhow::Error) -> anyhow::Error {
    let (id, url) = (row.id, row.remote_url.as_deref().unwrap_or_default());
    let message = if std::path::Path::new(&row.file_path).is_file() {
        format!(
            "backup #{id} is complete on this host ({}), but its upload failed: {e:#}; run `docker nuwaxbackup push {id}` to try again",
            row.file_path
        )
    } else {
        format!(
            "backup #{id} was streamed to {url}, but its sidecar was not written: {e:#}; run `docker nuwaxbackup push {id}` to finish it"
        )
    };
    crate::exit_codes::UserError::new(crate::exit_codes::Code::Remote, message).into()
}

fn print_plan(plan: &Plan, stop: bool, out: &mut dyn Write) -> Result<()> {
    let target = plan.storage.join(&plan.archive_name);
    writeln!(out, "Would write {}", target.display())?;
    let running = plan.running.join(", ");
    if plan.running.is_empty() {
        writeln!(out, "Nothing is running: no service stops.")?;
    } else if stop {
        writeln!(out, "Would stop, then start again: {running}")?;
    } else {
        writeln!(
            out,
            "Refused as things stand, running: {running} (stop them or pass --stop)"
        )?;
    }
    if !plan.capture_places.is_empty() {
        writeln!(
            out,
            "While stopped: capture ({}), then start, then compress",
            plan.capture
        )?;
    } else if let Some(why) = &plan.capture_note {
        writeln!(out, "No capture: {why}")?;
    }
    if let Some(remote) = &plan.remote {
        writeln!(out, "Then upload to {remote}")?;
    }
    for line in crate::hooks::describe(&plan.hooks) {
        writeln!(out, "Hook {line}")?;
    }
    let rows = plan.volumes.iter().map(|v| {
        vec![
            v.volume.clone(),
            v.kind.to_string(),
            v.role.as_str().to_string(),
            human_bytes(v.size_bytes),
            v.archive_path.clone(),
            v.io.to_string(),
        ]
    });
    let headers = ["VOLUME", "KIND", "ROLE", "SIZE", "IN ARCHIVE", "READ BY"];
    write!(out, "{}", table(&headers, rows))?;
    for s in &plan.skipped {
        writeln!(out, "skipped {}: {}", s.volume, s.reason)?;
    }
    writeln!(
        out,
        "Space needed: up to {}",
        human_bytes(plan.bytes_needed)
    )?;
    Ok(())
}
