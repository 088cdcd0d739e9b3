//! `migrate-storage NEW_DIR`: copy, fsync, verify, switch the catalog in one transaction, then
//! remove the old files. Interrupted anywhere, every backup stays reachable; run it again to
//! finish.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::archive::hashing::sha256_file;
use crate::cli::MigrateArgs;
use crate::output::{note, warn};
use crate::records::Status;
use crate::{storage, Context};

pub fn run(ctx: &Context, args: &MigrateArgs, _out: &mut dyn Write) -> Result<()> {
    let project = ctx.project_name()?;
    let mut catalog = ctx.catalog()?;
    let new_dir = std::env::current_dir()?.join(&args.new_dir);
    storage::prepare(&new_dir)?;
    let new_dir = new_dir.canonicalize()?;
    let completed = |c: &crate::catalog::Catalog| -> Result<Vec<_>> {
        Ok(c.list(Some(&project))?
            .into_iter()
            .filter(|r| r.status == Status::Completed)
            .collect())
    };
    note(format!(
        "move {} backup(s) of {project} to {}",
        completed(&catalog)?.len(),
        new_dir.display()
    ));
    crate::prompt::confirm(args.yes, "Move them?", "moving backups")?;
    let _lock = ctx.lock(&project, "migrate-storage")?;
    for p in storage::remove_stale_partials(&new_dir, &project) {
        note(format!(
            "removed {} left by an interrupted run",
            p.display()
        ));
    }
    // Decide on rows read under the lock: a create may have finished meanwhile.
    let rows = completed(&catalog)?;

    let mut moves: Vec<(i64, PathBuf)> = Vec::new();
    let mut old_files: Vec<PathBuf> = Vec::new();
    let mut _pins = Vec::new();
    for r in &rows {
        crate::cancel::check()?;
        _pins.push(ctx.pin(r.id, "migrate-storage")?);
        let src = PathBuf::from(&r.file_path);
        if src.parent() == Some(new_dir.as_path()) {
            continue;
        }
        let name = src
            .file_name()
            .context("an archive path without a file name")?;
        let dest = new_dir.join(name);
        let want = r.sha256.as_deref().unwrap_or_default();
        if dest.exists() {
            if sha256_file(&dest)? != want {
                bail!(
                    "{} exists and is not backup #{}: move it away first",
                    dest.display(),
                    r.id
                );
            }
        } else if !src.is_file() {
            warn(format!(
                "backup #{}: {} is missing, left as it is",
                r.id,
                src.display()
            ));
            continue;
        } else {
            copy_verified(&src, &project, &new_dir, &dest, want)
                .with_context(|| format!("copying backup #{}", r.id))?;
        }
        moves.push((r.id, dest));
        old_files.push(src);
    }
    catalog.move_files(&project, &new_dir, &moves)?;
    write_sidecars(&catalog, &moves)?;
    for old in &old_files {
        if let Err(e) = crate::storage::remove_archive(old) {
            warn(format!("could not remove {}: {e:#}", old.display()));
        }
    }
    note(format!(
        "moved {} backup(s); {} is the storage folder of {project} from now on",
        moves.len(),
        new_dir.display()
    ));
    Ok(())
}

/// The moved archives' sidecars, written anew beside them (their old ones go with the old files).
fn write_sidecars(catalog: &crate::catalog::Catalog, moves: &[(i64, PathBuf)]) -> Result<()> {
    for (id, _) in moves {
        if let Some(row) = catalog.get(*id)? {
            if let Err(e) = crate::sidecar::write(&row) {
                warn(format!("backup #{id}: its sidecar was not written: {e:#}"));
            }
        }
    }
    Ok(())
}

/// Copies `src` to a partial name in `dir`, syncs it, checks its SHA-256, then names it `dest`.
fn copy_verified(src: &Path, project: &str, dir: &Path, dest: &Path, sha256: &str) -> Result<()> {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    // Named like create's partials, so the next run of the project removes it when killed.
    let tmp = storage::partial_path(dir, project, &name);
    {
        let mut to = crate::private::create_new(&tmp)?;
        let mut from =
            std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
        std::io::copy(&mut from, &mut to)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    let got = sha256_file(&tmp)?;
    if got != sha256 {
        let _ = std::fs::remove_file(&tmp);
        bail!("the copy of {} does not match the catalog's SHA-256 (the original may be damaged: run verify)", src.display());
    }
    std::fs::rename(&tmp, dest)?;
    storage::sync_dir(dir)
}
