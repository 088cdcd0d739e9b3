//! `import DIR|FILE`: register the archives found in a folder (or one archive), from their
//! own manifests.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::archive::reader;
use crate::catalog::{BackupRow, NewBackup};
use crate::cli::ImportArgs;
use crate::exit_codes::{Code, UserError};
use crate::output::{note, print, table, warn};
use crate::records::Status;
use crate::Context;

pub fn run(ctx: &Context, args: &ImportArgs, out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    let given = std::env::current_dir()?.join(&args.dir);
    let given = given
        .canonicalize()
        .with_context(|| format!("reading {}", given.display()))?;
    let one_file = given.is_file();
    let files = if one_file {
        vec![given.clone()]
    } else {
        archives_in(&given)?
    };
    let known: Vec<String> = catalog
        .list(None)?
        .into_iter()
        .map(|r| r.file_path)
        .collect();
    let mut imported: Vec<BackupRow> = Vec::new();
    for path in files {
        crate::cancel::check()?;
        if known.iter().any(|k| std::path::Path::new(k) == path) {
            continue;
        }
        let v = match reader::verify(&path, None) {
            Ok(v) => v,
            Err(e) if one_file => {
                return Err(UserError::new(
                    Code::Failure,
                    format!(
                        "{} is not a docker-nuwax-backup archive, or it is damaged: {e:#}",
                        path.display()
                    ),
                )
                .into())
            }
            Err(e) => {
                warn(format!(
                    "skipped {}: not a docker-nuwax-backup archive, or damaged ({e:#})",
                    path.display()
                ));
                continue;
            }
        };
        let m = &v.manifest;
        let id = catalog.insert(&NewBackup {
            project: &m.project,
            project_dir: &m.project_dir,
            file_path: &path,
            service_version: &m.service_version,
            backup_type: m.backup_type,
            status: Status::Completed,
            created_at: &m.created_at,
            size_bytes: v.size,
            sha256: Some(&v.sha256),
            file_count: m.volumes.iter().map(|v| v.file_count).sum(),
            compression: &m.compression,
            duration_ms: 0,
            error: None,
        })?;
        imported.push(catalog.get(id)?.context("reading back the catalog row")?);
    }
    note(format!(
        "imported {} archive(s) from {}",
        imported.len(),
        given.display()
    ));
    print(out, args.format, &imported, |imported, out| {
        let rows = imported.iter().map(|r| {
            vec![
                r.id.to_string(),
                r.project.clone(),
                r.backup_type.to_string(),
                r.service_version.clone(),
                r.file_path.clone(),
            ]
        });
        let headers = ["ID", "PROJECT", "TYPE", "VERSION", "FILE"];
        Ok(write!(out, "{}", table(&headers, rows))?)
    })
}

/// The visible files of `dir`, sorted (each is tried as an archive).
fn archives_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .starts_with('.')
        })
        .collect();
    files.sort();
    Ok(files)
}
