//! `status`: services, volumes, and whether a cold backup can run now.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::compose::{Blocker, Container, Project, Service, Volume};
use crate::output::{print, table};
use crate::Context;

#[derive(Serialize)]
struct StatusJson<'a> {
    project: &'a str,
    project_dir: &'a std::path::Path,
    compose_files: &'a [std::path::PathBuf],
    services: &'a [Service],
    volumes: &'a [Volume],
    other_containers: &'a [Container],
    cold_backup_ready: bool,
    blockers: Vec<Blocker>,
    interrupted_run: Option<Interrupted>,
    /// Bind mount points a killed rollback left half-moved (run `recover`).
    mixed: Vec<String>,
    /// Folders in or beside the project's binds that look like the tool's staging but that no
    /// run record of this project names: never acted on (check them, remove them by hand).
    unknown_staging: Vec<String>,
    /// Set when the storage folder is readable by every local user.
    storage_warning: Option<String>,
    /// The backup whose restore test passed most recently (none: never).
    last_passed_restore_test: Option<Tested>,
}

/// A passed restore test: of which backup, when, and how long ago (seconds).
#[derive(Clone, Serialize)]
struct Tested {
    id: i64,
    tested_at: String,
    age_s: u64,
}

/// A run whose record exists while nobody holds the project's lock: it died.
#[derive(Clone, Serialize)]
struct Interrupted {
    command: String,
    pid: u32,
    started_at: String,
    phase: crate::runs::Phase,
    stopped: Vec<String>,
}

/// What `status` learns beyond the compose model: dead runs and half-done rollbacks.
struct Health {
    interrupted: Option<Interrupted>,
    mixed: Vec<String>,
    unknown_staging: Vec<String>,
    storage_warning: Option<String>,
    tested: Option<Tested>,
}

fn health(ctx: &Context, p: &Project) -> Result<Health> {
    let live = crate::lock::is_held(&ctx.locks_dir(), &p.name);
    // A record that is not private is not trusted: said, and shown as no record.
    let record = crate::runs::read(&ctx.runs_dir(), &p.name).unwrap_or_else(|e| {
        crate::output::warn(format!("{e:#}"));
        None
    });
    let known: Vec<std::path::PathBuf> = record
        .iter()
        .flat_map(|r| r.made.iter().map(|m| m.path.clone()))
        .collect();
    let unknown_staging = if live {
        Vec::new()
    } else {
        unknown_staging(p, &known)
    };
    let record = record.filter(|_| !live);
    let mixed = record
        .iter()
        .flat_map(|r| r.mounts.iter())
        .filter(|m| crate::restore::mount::is_mixed(m))
        .map(|m| m.target.display().to_string())
        .collect();
    let catalog = match ctx.catalog_path().exists() {
        true => Some(ctx.catalog()?),
        false => None,
    };
    let rows = match &catalog {
        Some(c) => c.list(Some(&p.name))?,
        None => Vec::new(),
    };
    let tested = crate::catalog::last_passed_restore_test(&rows).and_then(|r| {
        let at = r.restore_tested_at.clone()?;
        let (age_s, _) = crate::output::age(&at)?;
        Some(Tested {
            id: r.id,
            tested_at: at,
            age_s,
        })
    });
    let facts = crate::backup::plan::Facts {
        catalog_storage: match &catalog {
            Some(c) => c.storage_dir(&p.name)?,
            None => None,
        },
        ..Default::default()
    };
    let storage = crate::backup::plan::resolve_storage(p, None, &facts);
    Ok(Health {
        interrupted: record.map(|r| Interrupted {
            command: r.command.to_string(),
            pid: r.pid,
            started_at: r.started_at,
            phase: r.phase,
            stopped: r.stopped,
        }),
        mixed,
        unknown_staging,
        storage_warning: storage
            .is_dir()
            .then(|| crate::storage::world_readable_warning(&storage))
            .flatten(),
        tested,
    })
}

pub fn run(ctx: &Context, args: &StatusArgs, out: &mut dyn Write) -> Result<()> {
    let project = Project::load(&ctx.docker, &ctx.compose)?;
    let blockers = project.blockers();
    let health = health(ctx, &project)?;
    if let Some(w) = &health.storage_warning {
        crate::output::warn(w.clone());
    }
    let json = StatusJson {
        project: &project.name,
        project_dir: &project.dir,
        compose_files: &project.compose_files,
        services: &project.services,
        volumes: &project.volumes,
        other_containers: &project.others,
        cold_backup_ready: blockers.is_empty() && health.interrupted.is_none(),
        blockers: blockers.clone(),
        interrupted_run: health.interrupted.clone(),
        mixed: health.mixed.clone(),
        unknown_staging: health.unknown_staging.clone(),
        storage_warning: health.storage_warning.clone(),
        last_passed_restore_test: health.tested.clone(),
    };
    print(out, args.format, &json, |_, out| {
        write_table(&project, &blockers, out)?;
        write_health(&health, out)
    })
}

fn write_health(h: &Health, out: &mut dyn Write) -> Result<()> {
    match &h.tested {
        Some(t) => writeln!(
            out,
            "Restore test: last passed for backup #{}, {}",
            t.id,
            crate::output::age(&t.tested_at)
                .map(|a| a.1)
                .unwrap_or_default()
        )?,
        None => writeln!(
            out,
            "Restore test: none passed yet (`docker nuwaxbackup verify ID --restore-test`)"
        )?,
    }
    if let Some(r) = &h.interrupted {
        writeln!(
            out,
            "Interrupted: a {} (pid {}, started {}) died in phase {}{}; run `docker nuwaxbackup recover`",
            r.command,
            r.pid,
            r.started_at,
            r.phase,
            if r.stopped.is_empty() {
                String::new()
            } else {
                format!(", leaving stopped: {}", r.stopped.join(", "))
            }
        )?;
    }
    for m in &h.mixed {
        writeln!(out, "Bind {m}: mixed: run `recover`")?;
    }
    for u in &h.unknown_staging {
        writeln!(
            out,
            "Unknown staging {u}: no run record of this project names it, so it is never acted on; check it and remove it by hand"
        )?;
    }
    Ok(())
}

/// Paths inside the project's binds, or in the folders holding its binds, named like the
/// tool's staging (`.nuwax-restore-*`) that the run record does not name (`known`).
fn unknown_staging(p: &Project, known: &[std::path::PathBuf]) -> Vec<String> {
    let mut dirs: Vec<&std::path::Path> = Vec::new();
    for v in &p.volumes {
        if let Volume::Bind { source, .. } = v {
            dirs.push(source);
            dirs.extend(source.parent());
        }
    }
    dirs.sort();
    dirs.dedup();
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let marked = e
                .file_name()
                .to_string_lossy()
                .starts_with(crate::hostfs::owned::STAGING_MARK);
            if marked && !known.contains(&e.path()) {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn write_table(p: &Project, blockers: &[Blocker], out: &mut dyn Write) -> Result<()> {
    writeln!(out, "Project {} in {}", p.name, p.dir.display())?;
    writeln!(out)?;
    let services = p.services.iter().map(|s| {
        let states: Vec<String> = s
            .containers
            .iter()
            .map(|c| format!("{} {}", c.name, c.state))
            .collect();
        let states = if states.is_empty() {
            "no containers".to_string()
        } else {
            states.join(", ")
        };
        vec![
            s.name.clone(),
            s.restart_policy.clone(),
            s.kind.as_str().to_string(),
            states,
        ]
    });
    write!(
        out,
        "{}",
        table(&["SERVICE", "RESTART", "KIND", "CONTAINERS"], services)
    )?;
    writeln!(out)?;
    let volumes = p.volumes.iter().map(|v| {
        let kind = match v {
            Volume::Volume { external: true, .. } => "volume (external)",
            Volume::Volume { .. } => "volume",
            Volume::Bind { is_file: true, .. } => "bind (file)",
            Volume::Bind { .. } => "bind",
        };
        let role = if v.excluded() {
            "excluded"
        } else {
            v.role().as_str()
        };
        let used: Vec<String> = v.mounts().iter().map(ToString::to_string).collect();
        vec![
            v.label(),
            kind.to_string(),
            role.to_string(),
            used.join(", "),
        ]
    });
    write!(
        out,
        "{}",
        table(&["VOLUME", "KIND", "ROLE", "USED BY"], volumes)
    )?;
    writeln!(out)?;
    if blockers.is_empty() {
        writeln!(
            out,
            "Cold backup: ready (no container of the project is running)"
        )?;
    } else {
        writeln!(
            out,
            "Cold backup: blocked by {} running container(s):",
            blockers.len()
        )?;
        for b in blockers {
            writeln!(out, "  {} ({}): {}", b.container, b.service, b.reason)?;
        }
        writeln!(
            out,
            "Stop them (`docker compose stop`) or use `create --stop`."
        )?;
    }
    Ok(())
}
