//! Capture, for the shortest downtime: while the services are stopped each volume is copied
//! beside itself (reflink clones where the filesystem has them, else a kernel copy) or its
//! engine stream is saved to a file; the services start again, and the archive is written
//! from the captures, which are then removed. Each capture path is written to the run record
//! before it is made, so `recover` (or the next run) removes what a killed run left.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::copy::{self, CAPTURE_MARK};
use super::plan::{How, Item, Place, Plan};
use super::reading::{Captured, Captures};
use super::write;
use crate::compose::Project;
use crate::output::warn;
use crate::runs::ActiveRun;
use crate::Context;

/// Captures every volume of the plan's capture. On any failure, removes what it made and
/// fails (the caller then archives directly, the services still stopped). Gives up as soon as
/// `give_up()` (the archive failed: no capture is needed any more).
pub fn take(
    ctx: &Context,
    project: &Project,
    plan: &Plan,
    run: &mut ActiveRun,
    give_up: &dyn Fn() -> bool,
) -> Result<Captures> {
    let mut captures = Captures::new();
    let mut created = Vec::new();
    let mut result = Ok(());
    for place in &plan.capture_places {
        let Some(item) = plan
            .volumes
            .iter()
            .find(|i| i.archive_path == place.archive_path)
        else {
            continue;
        };
        result = one(
            ctx,
            project,
            plan,
            (item, place),
            run,
            &mut created,
            give_up,
        )
        .map(|c| {
            captures.insert(item.archive_path.clone(), c);
        })
        .with_context(|| format!("capturing {}", item.volume));
        if result.is_err() {
            break;
        }
    }
    if !created.is_empty() {
        let mut args = vec!["rm".to_string(), "-f".to_string()];
        args.extend(created);
        let _ = ctx.docker.output(&args);
    }
    match result {
        Ok(()) => Ok(captures),
        Err(e) => {
            remove(&captures);
            Err(e)
        }
    }
}

/// `<folder>/.nuwax-capture-<pid>-<archive folder, / as _>`.
pub(super) fn path_of(place: &Place) -> PathBuf {
    let name = place.archive_path.replace('/', "_");
    let ext = if place.how == How::Stream { ".tar" } else { "" };
    place
        .folder
        .join(format!("{CAPTURE_MARK}{}-{name}{ext}", std::process::id()))
}

fn one(
    ctx: &Context,
    project: &Project,
    plan: &Plan,
    (item, place): (&Item, &Place),
    run: &mut ActiveRun,
    created: &mut Vec<String>,
    give_up: &dyn Fn() -> bool,
) -> Result<Captured> {
    let path = path_of(place);
    crate::private::create_dir_all(&place.folder)?;
    host_remove(&path);
    run.capture(&path)?;
    if place.how == How::Stream {
        let src = write::engine_source(ctx.into(), project, item, created)?;
        save_stream(ctx, &src, &path)?;
        return Ok(Captured::Stream(path));
    }
    let source = plan.needed_host_dir(item)?;
    // What the copy leaves out, the archive says (it reads the volume until the hand-over).
    let reflink = place.how == How::Reflink;
    let done = copy::copy_tree(source, &path, &plan.storage, reflink, give_up)?;
    crate::fault::point("create-capturing");
    Ok(Captured::Tree(path, done.skipped))
}

/// `docker cp SRC -` into a new private file, synced.
fn save_stream(ctx: &Context, src: &str, path: &Path) -> Result<()> {
    let mut file = crate::private::create_new(path)?;
    let mut stream = ctx.docker.stream(&["cp", src, "-"])?;
    match std::io::copy(&mut stream, &mut file) {
        Ok(_) => stream.finish()?,
        Err(e) => {
            stream.kill();
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

fn host_remove(p: &Path) {
    let _ = crate::restore::host::remove_any(p);
}

/// Removes every capture (a tree this process cannot remove is named in a warning).
pub fn remove(captures: &Captures) {
    for c in captures.values() {
        remove_one(c.path());
    }
}

/// Removes one capture; a failure is named in a warning. Whether it is gone.
pub fn remove_one(path: &Path) -> bool {
    match crate::restore::host::remove_any(path) {
        Ok(()) => true,
        Err(e) => {
            warn(format!(
                "could not remove the capture {} ({e:#}): remove it by hand",
                path.display()
            ));
            false
        }
    }
}
