//! Reads what the rollback plan depends on, before anything changes: which binds are mount
//! points, whether named volumes can be written on this host, free space where staging
//! goes, who else uses each volume, which images are here, what runs.
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::plan::{self, CurrentImage, Facts, Fs, Request};
use crate::access::{self, Me};
use crate::archive::manifest::{ServiceRecord, VolumeRecord};
use crate::archive::reader::Verified;
use crate::compose::{Project, Volume};
use crate::records::VolumeKind;
use crate::services::Running;
use crate::Context;

pub fn gather(
    ctx: &Context,
    project: &Project,
    verified: &Verified,
    req: &Request,
    storage: PathBuf,
) -> Result<Facts> {
    let m = &verified.manifest;
    let mut f = Facts {
        project_dir: project.dir.clone(),
        running: Running::of(project),
        storage_free: crate::storage::filesystem_of(&storage).map_or(0, |fs| fs.free_bytes),
        storage,
        ..Default::default()
    };
    let restored: Vec<&VolumeRecord> = m
        .volumes
        .iter()
        .filter(|v| plan::kept_reason(v, req, &project.dir).is_none())
        .collect();
    let refs = project
        .services
        .iter()
        .filter_map(|s| s.image.as_deref())
        .chain(m.services.iter().filter_map(|s| s.image.as_deref()));
    let ids = ctx.docker.image_ids(refs);
    for v in &restored {
        match v.kind {
            VolumeKind::Bind => {
                bind_facts(v, &mut f);
                bind_access(project, &m.services, v, verified, &ids, &mut f);
            }
            VolumeKind::Volume => volume_facts(ctx, project, &m.services, v, &ids, &mut f)?,
        }
    }
    if !f.helper_images.is_empty() {
        f.volumes_local = crate::volumes::volumes_are_local(&ctx.docker)?;
    }
    for s in &project.services {
        let reference = s.image.clone();
        let id = reference.as_ref().and_then(|r| ids.get(r).cloned());
        f.current_images.insert(
            s.name.clone(),
            CurrentImage {
                reference,
                id,
                built: s.built,
            },
        );
    }
    Ok(f)
}

fn bind_facts(v: &VolumeRecord, f: &mut Facts) {
    let Some(source) = &v.source else { return };
    let mount_point = crate::hostfs::paths::is_mount_point(source);
    if mount_point {
        f.mount_points.insert(source.clone());
        if let Ok(room) = crate::storage::room_once_emptied(source) {
            f.mount_room.insert(source.clone(), room);
        }
    }
    let Some(folder) = plan::bind_staging_folder(source, mount_point) else {
        return;
    };
    if let Some(fs) = filesystem_of(&folder) {
        f.filesystems.insert(folder, fs);
    }
}

/// For a user who is not root: whether the bind's archived owners can be set by this process,
/// whether its parent folder lets it swap, and an image whose helper container can write it.
fn bind_access(
    project: &Project,
    services: &[ServiceRecord],
    v: &VolumeRecord,
    verified: &Verified,
    ids: &std::collections::HashMap<String, String>,
    f: &mut Facts,
) {
    let me = Me::current();
    let Some(source) = &v.source else { return };
    if me.is_root() {
        return;
    }
    let foreign = verified
        .owners
        .get(&v.archive_path)
        .is_some_and(|set| set.iter().any(|(u, g)| !me.can_own(*u, *g)));
    if !foreign {
        return;
    }
    f.foreign_owned.insert(source.clone());
    if source.parent().is_some_and(|p| !access::can_write_dir(p)) {
        f.parent_closed.insert(source.clone());
    }
    if let Some(image) = helper_image(project, services, v).filter(|i| ids.contains_key(i)) {
        f.helper_images.insert(plan::label(v), image);
    }
}

/// The filesystem a folder is (or would be, once made) on.
fn filesystem_of(folder: &Path) -> Option<Fs> {
    crate::storage::filesystem_of(folder).map(|f| Fs {
        device: f.device,
        free_bytes: f.free_bytes,
    })
}

fn volume_facts(
    ctx: &Context,
    project: &Project,
    services: &[ServiceRecord],
    v: &VolumeRecord,
    ids: &std::collections::HashMap<String, String>,
    f: &mut Facts,
) -> Result<()> {
    let Some(name) = v.name.clone() else {
        return Ok(());
    };
    if !crate::volumes::exists(&ctx.docker, &name) {
        f.missing_volumes.insert(name.clone());
    }
    if let Some(u) = crate::volumes::users(&ctx.docker, &name)?
        .into_iter()
        .find(|u| u.project != project.name)
    {
        f.foreign_users.insert(name.clone(), u.name);
    }
    if let Some(image) = helper_image(project, services, v).filter(|i| ids.contains_key(i)) {
        f.helper_images.insert(name, image);
    }
    Ok(())
}

/// An image to fill a named volume with: one of a current service that mounts it, else one
/// of a service that mounted it when the backup was made.
fn helper_image(project: &Project, services: &[ServiceRecord], v: &VolumeRecord) -> Option<String> {
    let current = project.volumes.iter().find_map(|d| {
        let same = match d {
            Volume::Volume { name, .. } => Some(name) == v.name.as_ref(),
            Volume::Bind { source, .. } => Some(source) == v.source.as_ref(),
        };
        same.then(|| {
            d.mounts()
                .iter()
                .find_map(|m| project.service(&m.service).and_then(|s| s.image.clone()))
        })
        .flatten()
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
