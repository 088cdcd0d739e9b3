//! `rollback`: verify → plan → confirm → stop → safety backup → restore → start; on any
//! failure after the safety backup, put back what was there and start what ran.
pub mod engine;
pub mod host;
pub mod mount;
pub mod plan;
mod space;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::archive::manifest::VolumeRecord;
use crate::archive::reader;
use crate::archive::writer::Attrs;
use crate::archive::Codec;
use crate::backup;
use crate::catalog::{BackupRow, Catalog};
use crate::compose::{Project, Volume};
use crate::exit_codes::{Code, UserError};
use crate::output::{note, warn};
use crate::runs::ActiveRun;
use crate::services::{self, Running};
use crate::Context;

pub struct Options {
    pub id: Option<i64>,
    pub data_only: bool,
    pub excludes: Vec<String>,
    pub no_start: bool,
    pub no_safety_backup: bool,
    pub yes: bool,
}

/// What `--format json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub backup_id: i64,
    pub mode: &'static str,
    pub restored: Vec<String>,
    pub kept: Vec<String>,
    pub safety_backup_id: Option<i64>,
    pub started: Vec<String>,
}

fn user(code: Code, msg: String) -> anyhow::Error {
    UserError::new(code, msg).into()
}

/// Runs a rollback. Fails before any change when the backup does not verify, the user does
/// not confirm, or a volume is in use elsewhere; fails with `RolledBack` when a step after
/// the safety backup failed and the previous state was put back.
pub fn run(ctx: &Context, opts: &Options) -> Result<Report> {
    let project = Project::load(&ctx.docker, &ctx.compose)?;
    let catalog = ctx.catalog()?;
    let row = choose(&catalog, &project, opts.id)?;
    note(format!("verifying backup #{} ({})", row.id, row.file_path));
    let verified =
        reader::verify(Path::new(&row.file_path), row.sha256.as_deref()).map_err(|e| {
            user(
                Code::VerifyFailed,
                format!(
                    "backup #{} failed verification, nothing was changed: {e:#}",
                    row.id
                ),
            )
        })?;
    let manifest = verified.manifest;
    // The decompression threads' buffers are free now; give them back before the safety
    // backup's compressors need theirs (keeps the peak RSS where one phase alone puts it).
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    if manifest.project != project.name {
        bail!(
            "backup #{} is of project {}, not {}",
            row.id,
            manifest.project,
            project.name
        );
    }
    let unknown = plan::unknown_excludes(&manifest, &opts.excludes, &project.dir);
    if !unknown.is_empty() {
        return Err(user(
            Code::Usage,
            format!(
                "--exclude {} matches no volume of backup #{}",
                unknown.join(", "),
                row.id
            ),
        ));
    }
    let sel = plan::select(&manifest, opts.data_only, &opts.excludes, &project.dir);
    if sel.restore.is_empty() {
        return Err(user(
            Code::Usage,
            format!(
                "nothing to restore from backup #{}: {}",
                row.id,
                if manifest.volumes.is_empty() {
                    "it holds no volume"
                } else {
                    "every volume is kept"
                }
            ),
        ));
    }
    let images = preflight(ctx, &project, &manifest.services, &sel.restore)?;
    space::check(&sel.restore)?;
    confirm(&row, &sel, opts.yes)?;
    let (_lock, project) = crate::recover::lock_and_recover(ctx, project, &catalog, "rollback")?;
    let mut record = ActiveRun::begin(&ctx.runs_dir(), &project.name, "rollback")?;
    let running = stop_for_restore(ctx, &project, &sel.restore, &mut record)?;
    let outcome = stopped_rollback(ctx, opts, &project, &catalog, &row, &sel, &images);
    let _ = record.phase("starting");
    let (safety_id, mut removed_services, result) = outcome;
    // Also the services of restored named volumes whose containers an interrupted rollback
    // removed earlier: `create --no-recreate` leaves existing containers alone.
    for v in project.volumes.iter().filter(|v| {
        sel.restore
            .iter()
            .any(|r| r.name.as_deref() == Some(v.label().as_str()))
    }) {
        for m in v.mounts() {
            if !removed_services.contains(&m.service) {
                removed_services.push(m.service.clone());
            }
        }
    }
    recreate_containers(ctx, &removed_services);
    let start = if opts.no_start || running.is_empty() {
        Ok(())
    } else {
        note(format!("starting {}", running.names().join(", ")));
        services::start(&ctx.docker, &ctx.compose, &running)
    };
    result?;
    start.with_context(|| format!("backup #{} was restored, but", row.id))?;
    Ok(Report {
        backup_id: row.id,
        mode: if opts.data_only { "data-only" } else { "full" },
        restored: sel.restore.iter().map(plan::label).collect(),
        kept: sel.kept.iter().map(|k| k.volume.clone()).collect(),
        safety_backup_id: safety_id,
        started: if opts.no_start {
            Vec::new()
        } else {
            running.names()
        },
    })
}

/// Removes what killed runs left, then stops what runs, recording it first in the run record.
fn stop_for_restore(
    ctx: &Context,
    project: &Project,
    restore: &[VolumeRecord],
    record: &mut ActiveRun,
) -> Result<Running> {
    clean_stale_staging(restore);
    if restore.iter().any(|v| v.kind == "volume") {
        engine::clean_stale(&ctx.docker);
    }
    let running = Running::of(project);
    if !running.is_empty() {
        note(format!("stopping {}", running.names().join(", ")));
    }
    record.stopping(&running)?;
    services::stop(&ctx.docker, &ctx.compose, &running)?;
    record.phase("restoring")?;
    crate::fault::point("rollback-restoring");
    Ok(running)
}

/// The backup to restore: by id, else picked on a terminal; it must be a completed backup of
/// this project.
fn choose(catalog: &Catalog, project: &Project, id: Option<i64>) -> Result<BackupRow> {
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
    if row.status != "completed" {
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
        .filter(|r| r.status == "completed")
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

fn confirm(row: &BackupRow, sel: &plan::Selection, yes: bool) -> Result<()> {
    note(format!(
        "rollback to backup #{} of {} (version {}):",
        row.id, row.created_at, row.service_version
    ));
    for v in &sel.restore {
        note(format!(
            "  replace {} ({}, {})",
            plan::label(v),
            v.kind,
            v.role
        ));
    }
    for k in &sel.kept {
        note(format!("  keep    {} ({})", k.volume, k.reason));
    }
    crate::prompt::confirm(yes, "Replace these volumes?", "a rollback replaces data")
}

/// Checks, before anything changes, that every named volume can be recreated: no container of
/// another project uses it, and an image for the helper container is here. Returns the image
/// per volume.
fn preflight(
    ctx: &Context,
    project: &Project,
    services: &[crate::archive::manifest::ServiceRecord],
    restore: &[VolumeRecord],
) -> Result<HashMap<String, String>> {
    let mut images = HashMap::new();
    for v in restore.iter().filter(|v| v.kind == "volume") {
        let name = v
            .name
            .clone()
            .context("a named volume without a name in the manifest")?;
        for u in engine::users(&ctx.docker, &name)? {
            if u.project != project.name {
                return Err(user(
                    Code::Usage,
                    format!("volume {name} is also used by container {} (not of project {}): remove it, or --exclude {name}", u.name, project.name),
                ));
            }
        }
        let image = image_for(project, services, v)
            .with_context(|| format!("no image of the project mounts volume {name}"))?;
        ctx.docker
            .output(&["image", "inspect", "--format", "{{.Id}}", &image])
            .map_err(|_| user(Code::Usage, format!("image {image} (to fill volume {name}) is not on this engine: pull or build it first")))?;
        images.insert(name, image);
    }
    Ok(images)
}

fn image_for(
    project: &Project,
    services: &[crate::archive::manifest::ServiceRecord],
    v: &VolumeRecord,
) -> Option<String> {
    let current = project.volumes.iter().find_map(|d| match d {
        Volume::Volume { name, mounts, .. } if Some(name) == v.name.as_ref() => mounts
            .iter()
            .find_map(|m| project.service(&m.service).and_then(|s| s.image.clone())),
        _ => None,
    });
    current.or_else(|| {
        v.mounts.iter().find_map(|m| {
            let svc = m.split(':').next()?;
            services
                .iter()
                .find(|s| s.name == svc)
                .and_then(|s| s.image.clone())
        })
    })
}

/// Staging paths left by a rollback that was killed (we hold the lock: none is live).
fn clean_stale_staging(restore: &[VolumeRecord]) {
    for parent in restore.iter().filter_map(|v| v.source.as_ref()?.parent()) {
        host::clean_stale(parent);
    }
}

/// Safety backup, restore, and undo on failure; the project is stopped throughout.
/// Returns the safety backup's id, the services whose containers were removed, and the result.
fn stopped_rollback(
    ctx: &Context,
    opts: &Options,
    project: &Project,
    catalog: &Catalog,
    row: &BackupRow,
    sel: &plan::Selection,
    images: &HashMap<String, String>,
) -> (Option<i64>, Vec<String>, Result<()>) {
    let mut progress = Progress::default();
    let safety = if opts.no_safety_backup {
        None
    } else {
        match safety_backup(ctx, project, catalog, &sel.restore) {
            Ok(s) => Some(s),
            Err(e) => {
                return (
                    None,
                    Vec::new(),
                    Err(e.context("taking the safety backup (nothing was changed)")),
                )
            }
        }
    };
    let safety_id = safety.as_ref().map(|s| s.id);
    let result = apply(
        ctx,
        project,
        Path::new(&row.file_path),
        &sel.restore,
        images,
        &mut progress,
    )
    .and_then(|()| progress.swap_all());
    match result {
        Ok(()) => {
            for s in &progress.staged {
                if let Err(e) = s.commit() {
                    warn(format!(
                        "could not remove the previous content of {}: {e:#}",
                        s.target.display()
                    ));
                }
            }
            (safety_id, progress.removed_services, Ok(()))
        }
        Err(err) => {
            let err = if crate::cancel::requested() {
                user(Code::Cancelled, "cancelled".into())
            } else {
                err
            };
            let undo = undo(ctx, project, &mut progress, safety.as_ref(), images);
            let where_safety = match &safety {
                Some(s) => format!("safety backup #{} is {}", s.id, s.file_path),
                None => "no safety backup was taken (--no-safety-backup)".into(),
            };
            let msg = match undo {
                Ok(()) => format!("rollback to backup #{} failed and the previous state was put back ({where_safety}): {err:#}", row.id),
                Err(u) => format!(
                    "rollback to backup #{} failed ({err:#}) and putting back the previous state failed too ({u:#}); {where_safety}",
                    row.id
                ),
            };
            (
                safety_id,
                progress.removed_services,
                Err(user(Code::RolledBack, msg)),
            )
        }
    }
}

fn safety_backup(
    ctx: &Context,
    project: &Project,
    catalog: &Catalog,
    restore: &[VolumeRecord],
) -> Result<BackupRow> {
    let mut subset = project.clone();
    subset.volumes.retain(|v| {
        let label = v.label();
        restore.iter().any(|r| {
            r.name.as_deref() == Some(label.as_str())
                || r.source.as_deref() == Some(Path::new(&label))
        })
    });
    for v in subset.volumes.iter_mut() {
        match v {
            Volume::Volume { excluded, .. } | Volume::Bind { excluded, .. } => *excluded = false,
        }
    }
    let opts = backup::Options {
        backup_type: "pre-rollback".into(),
        service_version: None,
        codec: Codec::Zstd { level: 3 },
        storage: None,
        stop: false,
        include_external_binds: true,
    };
    note("taking a safety backup of the current state");
    let row = backup::create_stopped(ctx, &subset, &opts, catalog)?;
    note(format!("safety backup #{}: {}", row.id, row.file_path));
    Ok(row)
}

/// What a restore changed so far, so that it can be undone.
#[derive(Default)]
struct Progress {
    /// Whether named volumes can be written in place here (probed once, on first need).
    local_volumes: Option<bool>,
    staged: Vec<host::Staged>,
    recreated: Vec<String>,
    removed_services: Vec<String>,
}

impl Progress {
    fn swap_all(&mut self) -> Result<()> {
        for s in self.staged.iter_mut() {
            crate::cancel::check()?;
            s.swap()?;
        }
        Ok(())
    }
}

/// Where one volume's entries are going.
enum Current {
    /// Writes into the staging path of the last entry of `Progress::staged` (a bind, or a
    /// named volume's folder on this machine).
    Host(host::HostWriter),
    Engine(engine::Filler),
}

/// Reads `archive` once and writes the entries of `records`: binds into staging beside their
/// target (swapped in later), named volumes recreated and filled.
fn apply(
    ctx: &Context,
    project: &Project,
    archive: &Path,
    records: &[VolumeRecord],
    images: &HashMap<String, String>,
    progress: &mut Progress,
) -> Result<()> {
    let mut opened = reader::open(archive)?;
    let mut ar = tar::Archive::new(&mut opened.tar);
    let mut current: Option<(Vec<u8>, Current)> = None;
    for entry in ar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        crate::cancel::check()?;
        let path = entry.path_bytes().into_owned();
        let Some(vol) = reader::volume_of(&path).map(<[u8]>::to_vec) else {
            continue;
        };
        if current.as_ref().map(|(v, _)| v != &vol).unwrap_or(true) {
            if let Some((_, c)) = current.take() {
                finish(c)?;
            }
            if let Some(rec) = records
                .iter()
                .find(|r| r.archive_path.as_bytes() == vol.as_slice())
            {
                note(format!("restoring {}", plan::label(rec)));
                current = Some((vol.clone(), begin(ctx, project, rec, images, progress)?));
            }
        }
        let Some((_, target)) = current.as_mut() else {
            continue;
        };
        let rel = path.get(vol.len() + 1..).unwrap_or_default().to_vec();
        let h = entry.header();
        let a = Attrs {
            mode: h.mode()?,
            uid: h.uid()?,
            gid: h.gid()?,
            mtime: h.mtime()?,
        };
        let kind = h.entry_type();
        let size = entry.size();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let link_rel = |l: &[u8]| l.get(vol.len() + 1..).unwrap_or_default().to_vec();
        match target {
            Current::Host(w) => match kind {
                tar::EntryType::Directory => w.dir(&rel, &a)?,
                tar::EntryType::Symlink => {
                    w.symlink(&rel, &a, link.as_deref().unwrap_or_default())?
                }
                tar::EntryType::Link => {
                    w.hardlink(&rel, &link_rel(link.as_deref().unwrap_or_default()))?
                }
                _ => w.file(&rel, &a, &mut entry)?,
            },
            Current::Engine(f) => {
                let link = match kind {
                    tar::EntryType::Link => link.as_deref().map(link_rel),
                    _ => link,
                };
                f.entry(&rel, kind, &a, size, link.as_deref(), &mut entry)?
            }
        }
    }
    if let Some((_, c)) = current.take() {
        finish(c)?;
    }
    Ok(())
}

fn begin(
    ctx: &Context,
    project: &Project,
    rec: &VolumeRecord,
    images: &HashMap<String, String>,
    progress: &mut Progress,
) -> Result<Current> {
    if rec.kind == "bind" {
        let target = rec
            .source
            .clone()
            .context("a bind without a source in the manifest")?;
        return Ok(Current::Host(stage(&target, progress)?));
    }
    let name = rec
        .name
        .clone()
        .context("a named volume without a name in the manifest")?;
    let image = images
        .get(&name)
        .with_context(|| format!("no image to fill {name}"))?;
    if !engine::exists(&ctx.docker, &name) {
        progress.recreated.push(name.clone());
        engine::recreate(&ctx.docker, rec)?;
    }
    // On this machine: staged beside the volume's folder and swapped in atomically, like a
    // bind (the volume object, and Compose's labels on it, stay).
    if progress.local_volumes.is_none() {
        progress.local_volumes = Some(engine::volumes_are_local(&ctx.docker, image)?);
    }
    let local = match progress.local_volumes {
        Some(true) => engine::local_mountpoint(&ctx.docker, &name)?,
        _ => None,
    };
    if let Some(dir) = local {
        return Ok(Current::Host(stage(&dir, progress)?));
    }
    remove_users(ctx, project, &name, progress)?;
    if !progress.recreated.contains(&name) {
        progress.recreated.push(name.clone());
    }
    engine::recreate(&ctx.docker, rec)?;
    Ok(Current::Engine(engine::Filler::start(
        &ctx.docker,
        &name,
        image,
    )?))
}

/// A staging path beside `target` (stale ones from a killed rollback removed first).
fn stage(target: &Path, progress: &mut Progress) -> Result<host::HostWriter> {
    if let Some(parent) = target.parent() {
        host::clean_stale(parent);
    }
    let staged = host::Staged::new(target)?;
    let writer = host::HostWriter::new(&staged.staging);
    progress.staged.push(staged);
    Ok(writer)
}

/// Removes the project's stopped containers that mount `name` (so it can be recreated).
fn remove_users(
    ctx: &Context,
    project: &Project,
    name: &str,
    progress: &mut Progress,
) -> Result<()> {
    let mut remove = Vec::new();
    for u in engine::users(&ctx.docker, name)? {
        if u.project != project.name {
            bail!(
                "volume {name} is in use by container {} of another project",
                u.name
            );
        }
        if !u.service.is_empty() && !progress.removed_services.contains(&u.service) {
            progress.removed_services.push(u.service.clone());
        }
        remove.push(u.name);
    }
    if !remove.is_empty() {
        let mut args = vec!["rm".to_string()];
        args.extend(remove);
        ctx.docker
            .output(&args)
            .with_context(|| format!("removing the stopped containers that use {name}"))?;
    }
    Ok(())
}

fn finish(c: Current) -> Result<()> {
    match c {
        Current::Host(writer) => writer.finish(),
        Current::Engine(f) => f.finish(),
    }
}

/// Puts back what a failed restore changed: binds from their staged previous content, named
/// volumes from the safety backup (or removed again when they did not exist before).
fn undo(
    ctx: &Context,
    project: &Project,
    progress: &mut Progress,
    safety: Option<&BackupRow>,
    images: &HashMap<String, String>,
) -> Result<()> {
    let mut failures = Vec::new();
    for s in progress.staged.iter_mut().rev() {
        if let Err(e) = s.undo() {
            failures.push(format!("{}: {e:#}", s.target.display()));
        }
    }
    if !progress.recreated.is_empty() {
        match safety {
            None => failures.push(format!(
                "volumes {} were recreated and cannot be put back",
                progress.recreated.join(", ")
            )),
            Some(row) => {
                if let Err(e) = refill_from_safety(ctx, project, row, progress, images) {
                    failures.push(format!("{e:#}"));
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

fn refill_from_safety(
    ctx: &Context,
    project: &Project,
    row: &BackupRow,
    progress: &mut Progress,
    images: &HashMap<String, String>,
) -> Result<()> {
    let path = PathBuf::from(&row.file_path);
    let safety =
        reader::verify(&path, row.sha256.as_deref()).context("reading the safety backup")?;
    let records: Vec<VolumeRecord> = safety
        .manifest
        .volumes
        .into_iter()
        .filter(|v| {
            v.kind == "volume"
                && v.name
                    .as_ref()
                    .is_some_and(|n| progress.recreated.contains(n))
        })
        .collect();
    for name in &progress.recreated {
        if !records.iter().any(|r| r.name.as_ref() == Some(name))
            && engine::exists(&ctx.docker, name)
        {
            let _ = ctx.docker.output(&[
                "rm",
                "-f",
                &format!("nuwax-fill-{}-{name}", std::process::id()),
            ]);
            ctx.docker
                .output(&["volume", "rm", name])
                .with_context(|| format!("removing {name}, which did not exist before"))?;
        }
    }
    let mut again = Progress::default();
    apply(ctx, project, &path, &records, images, &mut again)?;
    for s in again.removed_services {
        if !progress.removed_services.contains(&s) {
            progress.removed_services.push(s);
        }
    }
    Ok(())
}

/// Makes the containers removed to recreate volumes again (not started).
fn recreate_containers(ctx: &Context, services: &[String]) {
    if services.is_empty() {
        return;
    }
    let mut args = vec!["create".to_string(), "--no-recreate".to_string()];
    args.extend(services.iter().cloned());
    if let Err(e) = ctx.docker.compose_detached(&ctx.compose, &args) {
        warn(format!(
            "could not create the containers of {} again: {e:#}; run `docker compose create`",
            services.join(", ")
        ));
    }
}
