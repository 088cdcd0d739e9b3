//! The safety backup a rollback takes of what it replaces, and the storage folder it goes
//! to: a `create` made for `rollback` and `recover`, so that the restore pipeline does not
//! depend on the backup pipeline.
use std::path::PathBuf;

use anyhow::Result;

use crate::archive::Codec;
use crate::backup;
use crate::catalog::{BackupRow, Catalog};
use crate::compose::{Project, Volume};
use crate::crypto::Recipients;
use crate::output::note;
use crate::records::BackupType;
use crate::Context;

/// The project's storage folder, as `create` resolves it without `--storage`.
pub fn storage_of(project: &Project, catalog: &Catalog) -> Result<PathBuf> {
    let facts = backup::plan::Facts {
        cwd: std::env::current_dir()?,
        catalog_storage: catalog.storage_dir(&project.name)?,
        ..Default::default()
    };
    Ok(backup::plan::resolve_storage(project, None, &facts))
}

/// A `pre-rollback` backup of the volumes named by `labels`, encrypted to `recipients`; a
/// target whose previous content was moved away (a staged rollback) is read from `previous`.
pub fn safety_of(
    ctx: &Context,
    project: &Project,
    catalog: &Catalog,
    labels: &[String],
    recipients: &[String],
    previous: &std::collections::HashMap<PathBuf, PathBuf>,
) -> Result<BackupRow> {
    let mut subset = project.clone();
    subset.volumes.retain(|v| labels.contains(&v.label()));
    for v in subset.volumes.iter_mut() {
        match v {
            Volume::Volume { excluded, .. } | Volume::Bind { excluded, .. } => *excluded = false,
        }
    }
    let opts = backup::Options {
        backup_type: BackupType::PreRollback,
        service_version: None,
        codec: Codec::Zstd { level: 3 },
        storage: None,
        stop: false,
        include_external_binds: true,
        recipients: Some(Recipients(recipients.to_vec())),
        capture: backup::plan::CaptureMode::Direct,
        no_hooks: true,
    };
    note("taking a safety backup of the previous state");
    let row = backup::create_stopped(ctx, &subset, &opts, catalog, previous)?;
    note(format!("safety backup #{}: {}", row.id, row.file_path));
    Ok(row)
}
