//! `import s3://BUCKET[/PREFIX]`: registers every backup found in a bucket from its sidecar
//! (recovery onto a new host); `rollback` downloads the archive when it needs it.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::catalog::{BackupRow, Catalog, NewBackup, RemoteState};
use crate::output::warn;
use crate::records::RemoteStatus;
use crate::remote::RemoteUrl;
use crate::sidecar::Sidecar;

/// Imports the backups under `url` (of `project` only, when given) not yet in the catalog.
pub fn run(catalog: &Catalog, url: &RemoteUrl, project: Option<&str>) -> Result<Vec<BackupRow>> {
    let store = crate::remote::open(url)?;
    let listed: HashMap<String, u64> = store.list(&url.prefix)?.into_iter().collect();
    let known: Vec<String> = catalog
        .list(None)?
        .into_iter()
        .filter_map(|r| r.remote_url)
        .collect();
    let mut sidecars: Vec<&String> = listed.keys().filter(|k| k.ends_with(".json")).collect();
    sidecars.sort();
    let mut imported = Vec::new();
    for side_key in sidecars {
        crate::cancel::check()?;
        let key = side_key.trim_end_matches(".json");
        let object_url = store.url.object_url(key);
        if known.contains(&object_url) {
            continue;
        }
        let Some(&size) = listed.get(key) else {
            warn(format!(
                "skipped {object_url}.json: the archive beside it is missing"
            ));
            continue;
        };
        let side = match read_sidecar(&store, side_key) {
            Ok(s) => s,
            Err(e) => {
                warn(format!("skipped {object_url}: {e:#}"));
                continue;
            }
        };
        if project.is_some_and(|p| p != side.project) {
            continue;
        }
        if size != side.size_bytes {
            warn(format!(
                "skipped {object_url}: {size} bytes there, its sidecar says {}",
                side.size_bytes
            ));
            continue;
        }
        imported.push(register(catalog, &side, &object_url)?);
    }
    Ok(imported)
}

fn read_sidecar(store: &crate::remote::Store, key: &str) -> Result<Sidecar> {
    let bytes = store.get_small(key)?.context("it vanished while listing")?;
    serde_json::from_slice(&bytes).context("not a docker-nuwax-backup sidecar")
}

/// One row for a remote copy: its local file is where the project's storage folder would
/// hold it, once downloaded (none known yet: empty).
fn register(catalog: &Catalog, side: &Sidecar, object_url: &str) -> Result<BackupRow> {
    let file_path = catalog
        .storage_dir(&side.project)?
        .map(|d| d.join(object_url.rsplit('/').next().unwrap_or_default()))
        .unwrap_or_default();
    let origin = crate::catalog::Origin {
        project: &side.project,
        project_dir: Path::new(""),
        service_version: &side.service_version,
        backup_type: side.backup_type,
        created_at: &side.created_at,
        compression: &side.compression,
        recipients: &side.recipients,
    };
    let new = NewBackup::completed(
        origin,
        &file_path,
        (side.size_bytes, &side.sha256, side.file_count),
    );
    let id = catalog.insert(&new.took(side.duration_ms, None))?;
    catalog.set_remote(
        id,
        &RemoteState {
            url: Some(object_url.to_string()),
            status: Some(RemoteStatus::Uploaded),
            error: None,
            upload_id: None,
        },
    )?;
    catalog.get(id)?.context("reading back the catalog row")
}
