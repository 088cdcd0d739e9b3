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
use crate::Context;

pub fn run(ctx: &Context, args: &ImportArgs, out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    if let Some(url) = args.dir.to_str().filter(|d| d.starts_with("s3://")) {
        let url = crate::remote::RemoteUrl::parse(url)
            .map_err(|e| UserError::new(Code::Usage, format!("{e:#}")))?;
        let imported = super::import_remote::run(&catalog, &url, args.project.as_deref())?;
        note(format!("imported {} backup(s) from {url}", imported.len()));
        return print_imported(out, args.format, &imported);
    }
    if args.project.is_some() {
        return Err(UserError::new(Code::Usage, "--project only applies to import s3://…").into());
    }
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
        let row = match read_archive(ctx, &path) {
            Ok(row) => row,
            Err(e) if one_file => return Err(e),
            Err(e) => {
                warn(format!("skipped {}: {e:#}", path.display()));
                continue;
            }
        };
        let id = catalog.insert(&row.as_new(&path))?;
        let row = catalog.get(id)?.context("reading back the catalog row")?;
        if crate::sidecar::read(&path).ok().flatten().is_none() {
            if let Err(e) = crate::sidecar::write(&row) {
                warn(format!("backup #{}: no sidecar written: {e:#}", row.id));
            }
        }
        imported.push(row);
    }
    note(format!(
        "imported {} archive(s) from {}",
        imported.len(),
        given.display()
    ));
    print_imported(out, args.format, &imported)
}

fn print_imported(
    out: &mut dyn Write,
    format: crate::cli::Format,
    imported: &[BackupRow],
) -> Result<()> {
    print(out, format, imported, |imported, out| {
        let rows = imported.iter().map(|r| {
            vec![
                r.id.to_string(),
                r.project.clone(),
                r.backup_type.to_string(),
                r.service_version.clone(),
                r.remote_url.clone().unwrap_or_else(|| r.file_path.clone()),
            ]
        });
        let headers = ["ID", "PROJECT", "TYPE", "VERSION", "FROM"];
        Ok(write!(out, "{}", table(&headers, rows))?)
    })
}

/// What an archive says of itself: its manifest (verified whole), or for an encrypted archive
/// read without an identity, its sidecar (checked against the file's size and SHA-256).
struct Found {
    project: String,
    project_dir: PathBuf,
    service_version: String,
    backup_type: crate::records::BackupType,
    created_at: String,
    size: u64,
    sha256: String,
    file_count: u64,
    compression: String,
    recipients: Vec<String>,
}

impl Found {
    fn as_new<'a>(&'a self, path: &'a Path) -> NewBackup<'a> {
        let origin = crate::catalog::Origin {
            project: &self.project,
            project_dir: &self.project_dir,
            service_version: &self.service_version,
            backup_type: self.backup_type,
            created_at: &self.created_at,
            compression: &self.compression,
            recipients: &self.recipients,
        };
        NewBackup::completed(origin, path, (self.size, &self.sha256, self.file_count))
    }
}

/// An archive that does not verify: exit 12, like every failed verification.
fn not_ours(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    UserError::new(
        Code::VerifyFailed,
        format!(
            "{} is not a docker-nuwax-backup archive, or it is damaged: {e}",
            path.display()
        ),
    )
    .into()
}

fn read_archive(ctx: &Context, path: &Path) -> Result<Found> {
    let encrypted = crate::crypto::file_is_encrypted(path)?;
    if encrypted && ctx.keyring()?.is_none() {
        return from_sidecar(path);
    }
    let v = reader::verify(path, None, ctx.keyring()?).map_err(|e| {
        if crate::exit_codes::code_of(&e) == Code::Identity {
            e
        } else {
            not_ours(path, format!("{e:#}"))
        }
    })?;
    let m = v.manifest;
    Ok(Found {
        file_count: m.volumes.iter().map(|v| v.file_count).sum(),
        project: m.project,
        project_dir: m.project_dir,
        service_version: m.service_version,
        backup_type: m.backup_type,
        created_at: m.created_at,
        size: v.size,
        sha256: v.sha256,
        compression: m.compression,
        recipients: m.recipients,
    })
}

/// An encrypted archive's facts from its sidecar; no key needed, the file must match it.
fn from_sidecar(path: &Path) -> Result<Found> {
    let s = crate::sidecar::read(path)?.ok_or_else(|| {
        UserError::new(
            Code::Identity,
            format!(
                "{} is encrypted and has no sidecar ({}): pass --identity FILE to read its manifest",
                path.display(),
                crate::sidecar::path_of(path).display()
            ),
        )
    })?;
    let sum = crate::archive::hashing::sha256_file(path)?;
    let size = std::fs::metadata(path)?.len();
    if sum != s.sha256 || size != s.size_bytes {
        return Err(not_ours(
            path,
            format!("it does not match its sidecar (SHA-256 {sum}, {size} bytes)"),
        ));
    }
    Ok(Found {
        project: s.project,
        project_dir: PathBuf::new(),
        service_version: s.service_version,
        backup_type: s.backup_type,
        created_at: s.created_at,
        size,
        sha256: sum,
        file_count: s.file_count,
        compression: s.compression,
        recipients: s.recipients,
    })
}

/// The visible files of `dir`, sorted (each is tried as an archive).
fn archives_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            p.is_file() && !name.starts_with('.') && !name.ends_with(".json")
        })
        .collect();
    files.sort();
    Ok(files)
}
