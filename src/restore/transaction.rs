//! Everything a rollback changed so far, so that it can be kept (`commit`) or put back
//! (`undo`): binds and local volumes staged and swapped, named volumes recreated, targets
//! emptied in place, containers removed.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use super::plan::{Action, Step};
use super::{apply, engine, host};
use crate::archive::reader;
use crate::catalog::BackupRow;
use crate::compose::Project;
use crate::output::warn;
use crate::runs::ActiveRun;
use crate::Context;

#[derive(Default)]
pub struct Transaction<'r> {
    /// The run record: targets emptied in place are written to it before they are touched.
    record: Option<&'r mut ActiveRun>,
    staged: Vec<host::Staged>,
    /// Targets emptied in place and not yet written whole.
    in_place: Vec<PathBuf>,
    recreated: Vec<String>,
    removed_services: Vec<String>,
}

impl<'r> Transaction<'r> {
    pub fn new(record: Option<&'r mut ActiveRun>) -> Transaction<'r> {
        Transaction {
            record,
            ..Default::default()
        }
    }

    /// The run record, when this transaction keeps one.
    pub fn run(&mut self) -> Option<&mut ActiveRun> {
        self.record.as_deref_mut()
    }

    /// A staging path beside (or inside, for a mount point) `target`, for a rollback of
    /// `project` (the folders it makes are recorded in the run record first).
    pub fn stage(&mut self, target: &Path, project: &str) -> Result<host::HostWriter> {
        if let Some(parent) = target.parent() {
            host::clean_stale(parent, project);
        }
        let staged = host::Staged::new(target, project, self.record.as_deref_mut())?;
        let writer = staged.writer()?;
        self.staged.push(staged);
        Ok(writer)
    }

    /// A staging path beside `target`, written and later removed by the engine (for files of
    /// other users); this process swaps it in.
    pub fn stage_by_engine(
        &mut self,
        target: &Path,
        project: &str,
        docker: &crate::docker::Docker,
        image: &str,
    ) -> Result<engine::Filler> {
        if let Some(parent) = target.parent() {
            host::clean_stale(parent, project);
        }
        let mut staged = host::Staged::new(target, project, self.record.as_deref_mut())?;
        staged.by_engine = Some((docker.clone(), image.to_string()));
        let filler = engine::Filler::beside(docker, &staged.staging, image)?;
        self.staged.push(staged);
        Ok(filler)
    }

    /// Empties `target` (keeping the folder itself) to be written directly; recorded first.
    pub fn empty_in_place(&mut self, step: &Step, target: &Path) -> Result<host::HostWriter> {
        if let Some(r) = self.record.as_deref_mut() {
            r.in_place(target, false)?;
        }
        if !self.in_place.iter().any(|t| t == target) {
            self.in_place.push(target.to_path_buf());
        }
        let dir = crate::hostfs::owned::open_dir(target)
            .with_context(|| format!("opening {} ({})", target.display(), step.target))?;
        crate::hostfs::owned::empty_dir(&dir)
            .with_context(|| format!("emptying {} ({})", target.display(), step.target))?;
        crate::fault::point(crate::fault::Fault::InPlaceEmptied);
        host::HostWriter::new(target)
    }

    /// `step`'s target now holds the archived content whole.
    pub fn in_place_written(&mut self, step: &Step) -> Result<()> {
        let Some(target) = step.record.source.as_deref() else {
            return Ok(());
        };
        if let Some(r) = self.record.as_deref_mut() {
            r.in_place(target, true)?;
        }
        Ok(())
    }

    pub fn recreated(&mut self, volume: &str) {
        if !self.recreated.iter().any(|v| v == volume) {
            self.recreated.push(volume.to_string());
        }
    }

    pub fn removed_service(&mut self, service: &str) {
        if !service.is_empty() && !self.removed_services.iter().any(|s| s == service) {
            self.removed_services.push(service.to_string());
        }
    }

    /// What the run record needs to tell, after a kill, which targets were swapped.
    pub fn swap_records(&self) -> Result<Vec<crate::runs::SwapRecord>> {
        use std::os::unix::fs::MetadataExt;
        self.staged
            .iter()
            .map(|s| {
                let ino = std::fs::symlink_metadata(&s.staging)
                    .with_context(|| format!("reading {}", s.staging.display()))?
                    .ino();
                Ok(crate::runs::SwapRecord {
                    target: s.target.clone(),
                    staging: s.staging.clone(),
                    staged_ino: ino,
                })
            })
            .collect()
    }

    /// After the swap: where each target's previous content now is, by target.
    pub fn previous(&self) -> std::collections::HashMap<PathBuf, PathBuf> {
        self.staged
            .iter()
            .filter(|s| s.swapped && s.existed)
            .map(|s| (s.target.clone(), s.staging.clone()))
            .collect()
    }

    /// Where the previous content of every staged target is (after the swap).
    pub fn previous_paths(&self) -> Vec<PathBuf> {
        self.staged.iter().map(|s| s.staging.clone()).collect()
    }

    /// Puts every staged target in place.
    pub fn swap_all(&mut self) -> Result<()> {
        for s in self.staged.iter_mut() {
            crate::cancel::check()?;
            s.swap(self.record.as_deref_mut())?;
        }
        Ok(())
    }

    /// Keeps the new state: drops the previous content. Returns the services whose
    /// containers were removed (to create again).
    pub fn commit(self) -> Vec<String> {
        for s in &self.staged {
            if let Err(e) = s.commit() {
                warn(format!(
                    "could not remove the previous content of {}: {e:#}",
                    s.target.display()
                ));
            }
            crate::fault::point(crate::fault::Fault::RollbackRemovingPrevious);
        }
        self.removed_services
    }

    pub fn removed_services(&self) -> &[String] {
        &self.removed_services
    }

    /// Puts back what was changed: staged targets from their previous content, recreated
    /// volumes and emptied targets from the safety backup.
    pub fn undo(
        &mut self,
        ctx: &Context,
        project: &Project,
        steps: &[&Step],
        safety: Option<&BackupRow>,
    ) -> Result<()> {
        let mut failures = Vec::new();
        for s in self.staged.iter_mut().rev() {
            if let Err(e) = s.undo() {
                failures.push(format!("{}: {e:#}", s.target.display()));
            }
        }
        let lost = !self.recreated.is_empty() || !self.in_place.is_empty();
        match safety {
            _ if !lost => {}
            None => failures.push(format!(
                "{} were emptied and cannot be put back",
                self.lost_names().join(", ")
            )),
            Some(row) => {
                if let Err(e) = self.refill_from_safety(ctx, project, steps, row) {
                    failures.push(format!("{e:#}"));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("{}", failures.join("; "))
        }
    }

    fn lost_names(&self) -> Vec<String> {
        let paths = self.in_place.iter().map(|p| p.display().to_string());
        self.recreated.iter().cloned().chain(paths).collect()
    }

    /// Writes the recreated volumes and emptied targets again from the safety backup; a
    /// volume that did not exist before is removed again.
    fn refill_from_safety(
        &mut self,
        ctx: &Context,
        project: &Project,
        steps: &[&Step],
        row: &BackupRow,
    ) -> Result<()> {
        let path = PathBuf::from(&row.file_path);
        let safety = reader::verify(&path, row.sha256.as_deref(), ctx.keyring()?)
            .context("reading the safety backup")?;
        let again_steps = safety_steps(steps, &safety.manifest.volumes, self);
        for name in &self.recreated {
            let archived = again_steps
                .iter()
                .any(|s| s.record.name.as_ref() == Some(name));
            if !archived && crate::volumes::exists(&ctx.docker, name) {
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
        let refs: Vec<&Step> = again_steps.iter().collect();
        let mut again = Transaction::new(self.record.as_deref_mut());
        apply::extract(ctx, project, &safety.file, &refs, &mut again)?;
        again.swap_all()?;
        let removed = again.commit();
        for s in removed {
            self.removed_service(&s);
        }
        Ok(())
    }
}

/// The steps that write the safety backup's copy of every recreated volume and emptied
/// target, with the same actions as the rollback used.
fn safety_steps(
    steps: &[&Step],
    safety: &[crate::archive::VolumeRecord],
    txn: &Transaction<'_>,
) -> Vec<Step> {
    let mut out = Vec::new();
    for s in steps {
        let lost = match s.action {
            Action::InPlace => s
                .record
                .source
                .as_ref()
                .is_some_and(|p| txn.in_place.contains(p)),
            Action::SwapVolume | Action::EngineRefill => s
                .record
                .name
                .as_ref()
                .is_some_and(|n| txn.recreated.contains(n)),
            _ => false,
        };
        let same = |r: &&crate::archive::VolumeRecord| {
            r.kind == s.record.kind && r.name == s.record.name && r.source == s.record.source
        };
        if let Some(rec) = safety.iter().find(same).filter(|_| lost) {
            // Where it goes stays the rollback's (the project's target); only where it is in
            // the safety archive, and its root, come from that archive.
            let mut again = (*s).clone();
            again.record.archive_path = rec.archive_path.clone();
            again.record.root = rec.root;
            out.push(again);
        }
    }
    out
}
