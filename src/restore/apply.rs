//! Executes a plan's steps: reads the archive once and sends each volume's entries to the
//! sink its action names, recording in the transaction everything it changes.
use anyhow::{Context as _, Result};

use super::plan::{label, Action, Io, Step};
use super::sink::{Sink, VolumeOut};
use super::transaction::Transaction;
use super::{engine, host};
use crate::archive::reader::{self, VerifiedFile};
use crate::compose::Project;
use crate::output::note;
use crate::Context;

/// Reads the verified `archive` once, from the descriptor verify read, and writes the volumes
/// of `steps` (archive folders matched by the steps' records) as their actions say. Fails
/// (and the caller undoes what was written) when the bytes differ from what verify read.
pub fn extract(
    ctx: &Context,
    project: &Project,
    archive: &VerifiedFile,
    steps: &[&Step],
    txn: &mut Transaction<'_>,
) -> Result<()> {
    let mut router = Steps {
        ctx,
        project,
        steps,
        txn,
        current: None,
    };
    extract_routed(ctx, archive, &mut router)
}

/// Where the entries of a verified archive go, volume folder by volume folder.
pub trait Router {
    /// The sink of volume folder `folder` (`binds/data`); none: its entries are skipped.
    fn open(&mut self, folder: &[u8]) -> Result<Option<Box<dyn Sink>>>;
    /// The volume's sink was finished.
    fn done(&mut self, _folder: &[u8]) -> Result<()> {
        Ok(())
    }
    /// An entry outside the volume folders (the manifest, the compose files).
    fn other(&mut self, _path: &[u8], _data: &mut dyn std::io::Read) -> Result<()> {
        Ok(())
    }
}

/// Reads the verified `archive` once, sending its entries where `router` says, then checks
/// that the bytes read are the ones verify read.
pub fn extract_routed(
    ctx: &Context,
    archive: &VerifiedFile,
    router: &mut dyn Router,
) -> Result<()> {
    let mut opened = archive.open(ctx.keyring()?)?;
    route(&mut opened.tar, router)?;
    std::io::copy(&mut opened.tar, &mut std::io::sink()).context("reading the archive")?;
    let (sha256, _) = opened.file_digest();
    if sha256 != archive.sha256 {
        anyhow::bail!(
            "{} changed after it was verified (SHA-256 {sha256}, verified {})",
            archive.path.display(),
            archive.sha256
        );
    }
    Ok(())
}

fn route(tar: &mut dyn std::io::Read, router: &mut dyn Router) -> Result<()> {
    let mut ar = tar::Archive::new(tar);
    let mut current: Option<VolumeOut> = None;
    let mut skipping: Option<Vec<u8>> = None;
    for entry in ar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        crate::cancel::check()?;
        let path = entry.path_bytes().into_owned();
        let Some(folder) = reader::volume_of(&path) else {
            router.other(&path, &mut entry)?;
            continue;
        };
        let same = |f: &Option<Vec<u8>>| f.as_deref() == Some(folder);
        if current.as_ref().is_none_or(|o| o.folder != folder) && !same(&skipping) {
            if let Some(out) = current.take() {
                let done = out.folder.clone();
                out.finish()?;
                router.done(&done)?;
            }
            match router.open(folder)? {
                Some(sink) => current = Some(VolumeOut::new(folder, sink)),
                None => skipping = Some(folder.to_vec()),
            }
        }
        if let Some(out) = current.as_mut() {
            out.write(&mut entry)?;
        }
    }
    if let Some(out) = current.take() {
        let done = out.folder.clone();
        out.finish()?;
        router.done(&done)?;
    }
    Ok(())
}

/// A rollback's steps as a [`Router`]: each restored volume to its step's sink.
struct Steps<'a, 'r, 't> {
    ctx: &'a Context,
    project: &'a Project,
    steps: &'a [&'a Step],
    txn: &'t mut Transaction<'r>,
    current: Option<&'a Step>,
}

impl Router for Steps<'_, '_, '_> {
    fn open(&mut self, folder: &[u8]) -> Result<Option<Box<dyn Sink>>> {
        let Some(step) = self
            .steps
            .iter()
            .find(|s| s.record.archive_path.as_bytes() == folder)
        else {
            return Ok(None);
        };
        note(format!("restoring {}", label(&step.record)));
        self.current = Some(step);
        Ok(Some(open(self.ctx, self.project, step, self.txn)?))
    }

    fn done(&mut self, _folder: &[u8]) -> Result<()> {
        match self.current.take() {
            Some(step) if step.action == Action::InPlace => self.txn.in_place_written(step),
            _ => Ok(()),
        }
    }
}

/// The sink for one step: staging beside or inside its target, the emptied target itself, or
/// a helper container of the engine.
fn open(
    ctx: &Context,
    project: &Project,
    step: &Step,
    txn: &mut Transaction<'_>,
) -> Result<Box<dyn Sink>> {
    let name = || {
        step.record
            .name
            .clone()
            .context("a named volume without a name in the manifest")
    };
    let source = || {
        step.record
            .source
            .clone()
            .context("a bind without a source in the manifest")
    };
    let image = || step.image.clone().context("no image to fill the volume");
    Ok(match step.action {
        Action::SwapBind if step.io == Io::Engine => {
            Box::new(txn.stage_by_engine(&source()?, &project.name, &ctx.docker, &image()?)?)
        }
        Action::SwapBind | Action::StageInMount => Box::new(txn.stage(&source()?, &project.name)?),
        Action::InPlace => Box::new(txn.empty_in_place(step, &source()?)?),
        Action::SwapVolume => {
            let name = name()?;
            if !crate::volumes::exists(&ctx.docker, &name) {
                txn.recreated(&name);
                crate::volumes::recreate(&ctx.docker, &step.record)?;
            }
            let dir = crate::volumes::local_mountpoint(&ctx.docker, &name)?
                .with_context(|| format!("the folder of volume {name} is not on this host"))?;
            Box::new(txn.stage(&dir, &project.name)?)
        }
        Action::EngineRefill => {
            let name = name()?;
            remove_users(ctx, project, &name, txn)?;
            txn.recreated(&name);
            crate::volumes::recreate(&ctx.docker, &step.record)?;
            Box::new(engine::Filler::start(&ctx.docker, &name, &image()?)?)
        }
        Action::Keep => anyhow::bail!("{} is kept, not restored", step.target),
    })
}

/// Removes the project's stopped containers that mount `name` (so it can be recreated).
fn remove_users(
    ctx: &Context,
    project: &Project,
    name: &str,
    txn: &mut Transaction<'_>,
) -> Result<()> {
    let mut remove = Vec::new();
    for u in crate::volumes::users(&ctx.docker, name)? {
        if u.project != project.name {
            anyhow::bail!(
                "volume {name} is in use by container {} of another project",
                u.name
            );
        }
        txn.removed_service(&u.service);
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

/// Removes what killed rollbacks of `project` left beside the host-written targets of `steps`.
pub fn clean_stale(ctx: &Context, project: &str, steps: &[&Step]) {
    for parent in steps
        .iter()
        .filter_map(|s| s.record.source.as_ref()?.parent())
    {
        host::clean_stale(parent, project);
    }
    if steps.iter().any(|s| s.record.name.is_some()) {
        crate::volumes::clean_stale(&ctx.docker);
    }
}
