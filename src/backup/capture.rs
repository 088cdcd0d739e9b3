//! Capture, for the shortest downtime: while the services are stopped each volume is copied
//! beside itself (a tree of reflink clones where the filesystem has them, else packed into
//! one tar file by the kernel's copy) or its engine stream is saved to a file; the services
//! start again, and the archive is written from the captures, which are then removed. Each
//! capture path is written to the run record before it is made, so `recover` (or the next
//! run) removes what a killed run left.
use std::io::{Read, Write};
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

/// `<folder>/.nuwax-capture-<project>-<pid>-<archive folder, / as _>`: `recover` removes
/// only captures whose name carries the dead run's project and pid.
pub(super) fn path_of(project: &str, place: &Place) -> PathBuf {
    let name = place.archive_path.replace('/', "_");
    let ext = if place.how == How::Reflink {
        ""
    } else {
        ".tar"
    };
    place.folder.join(format!(
        "{}{name}{ext}",
        prefix(project, std::process::id())
    ))
}

/// What the name of every capture of run `pid` of `project` starts with.
pub fn prefix(project: &str, pid: u32) -> String {
    format!("{CAPTURE_MARK}{project}-{pid}-")
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
    let path = path_of(&plan.project, place);
    crate::private::create_dir_all(&place.folder)?;
    host_remove(&path);
    run.capture(&path)?;
    let made = make(ctx, project, plan, (item, place), &path, created, give_up).and_then(|c| {
        crate::fault::point(crate::fault::Fault::CreateCapturing);
        crate::fault::fail(crate::fault::Fault::CreateCapturing).map(|()| c)
    });
    if made.is_err() {
        // Half a capture: the run record that names it goes when this run ends.
        remove_one(&path);
    }
    made
}

/// Makes one volume's capture at `path`.
fn make(
    ctx: &Context,
    project: &Project,
    plan: &Plan,
    (item, place): (&Item, &Place),
    path: &Path,
    created: &mut Vec<String>,
    give_up: &dyn Fn() -> bool,
) -> Result<Captured> {
    if place.how == How::Stream {
        let src = write::engine_source(ctx.into(), project, item, created)?;
        save_stream(ctx, &src, path, give_up)?;
        return Ok(Captured::Stream(path.to_path_buf()));
    }
    let source = plan.needed_host_dir(item)?;
    if place.how == How::Copy {
        let done = super::pack::pack_tree(source, path, &plan.storage, give_up)?;
        return Ok(Captured::Packed(path.to_path_buf(), done.skipped));
    }
    // What the clone leaves out, the archive says (it reads the volume until the hand-over).
    let done = copy::copy_tree(source, path, &plan.storage, true, give_up)?;
    Ok(Captured::Tree(path.to_path_buf(), done.skipped))
}

/// `docker cp SRC -` into a new private file. Stops when `give_up()`. Not synced, like the
/// other captures: it lives only until the archive is read (a crash discards it), and a
/// sync would keep the services down while the disk writes it.
fn save_stream(ctx: &Context, src: &str, path: &Path, give_up: &dyn Fn() -> bool) -> Result<()> {
    let mut file = crate::private::create_new(path)?;
    let mut stream = ctx.docker.stream(&["cp", src, "-"])?;
    match copy_until(&mut stream, &mut file, give_up) {
        Ok(()) => stream.finish(),
        Err(e) => {
            stream.kill();
            Err(e).with_context(|| format!("writing {}", path.display()))
        }
    }
}

/// Copies `from` to its end into `to`, unless `give_up()` (checked before each read).
fn copy_until(
    from: &mut impl Read,
    to: &mut impl Write,
    give_up: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if give_up() {
            return Err(std::io::Error::other("the capture was given up"));
        }
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn host_remove(p: &Path) {
    let _ = crate::hostfs::paths::remove_any(p);
}

/// Removes every capture (a tree this process cannot remove is named in a warning).
pub fn remove(captures: &Captures) {
    for c in captures.values() {
        remove_one(c.path());
    }
}

/// Removes one capture; a failure is named in a warning. Whether it is gone.
pub fn remove_one(path: &Path) -> bool {
    match crate::hostfs::paths::remove_any(path) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_capture_stops_when_given_up() {
        let data = vec![7u8; 5 << 20];
        let mut out = Vec::new();
        copy_until(&mut &data[..], &mut out, &|| false).unwrap();
        assert_eq!(out, data);
        let reads = std::cell::Cell::new(0);
        let after_two = || {
            reads.set(reads.get() + 1);
            reads.get() > 2
        };
        let mut out = Vec::new();
        let e = copy_until(&mut &data[..], &mut out, &after_two).unwrap_err();
        assert_eq!(e.to_string(), "the capture was given up");
        assert_eq!(out.len(), 2 << 20, "two reads of 1 MiB, then it stopped");
    }
}
