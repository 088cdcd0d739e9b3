//! `recover`: finish a create or rollback of the project that was killed.
use std::io::Write;

use anyhow::Result;

use crate::catalog::Catalog;
use crate::cli::StatusArgs;
use crate::compose::Project;
use crate::output::{note, print};
use crate::Context;

/// Exits 0 (done, or nothing to do), 9 (the run is alive: its lock is held), 11 (starting
/// the services failed).
pub fn run(ctx: &Context, args: &StatusArgs, out: &mut dyn Write) -> Result<()> {
    let name = Project::load(&ctx.docker, &ctx.compose)?.name;
    let _lock = ctx.lock(&name, "recover")?;
    // What runs is read under the lock: the run that held it may have changed it.
    let project = Project::load(&ctx.docker, &ctx.compose)?;
    let catalog: Catalog = ctx.catalog()?;
    let done = crate::recover::dead_run(ctx, &project, &catalog)?;
    crate::restore_test::recover_unlocked(ctx, &project.name)?;
    if let Ok(_upload) = ctx.lock(&format!("{}.upload", project.name), "recover") {
        crate::remote::transfer::abort_stale(&catalog, Some(&project.name));
    }
    if done.is_empty() {
        note(format!("project {}: nothing to recover", project.name));
    }
    print(out, args.format, &done, |done, out| {
        if let Some(r) = &done.interrupted_run {
            writeln!(
                out,
                "recovered the interrupted {} (pid {}, phase {}); started: {}",
                r.command,
                r.pid,
                r.phase,
                if done.started.is_empty() {
                    "nothing".into()
                } else {
                    done.started.join(", ")
                }
            )?;
        }
        Ok(())
    })
}
