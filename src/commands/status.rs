//! `status`: services, volumes, and whether a cold backup can run now.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::cli::{Format, StatusArgs};
use crate::compose::{Blocker, Container, Project, Service, Volume};
use crate::output::{table, write_json};
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
}

pub fn run(ctx: &Context, args: &StatusArgs, out: &mut dyn Write) -> Result<()> {
    let project = Project::load(&ctx.docker, &ctx.compose)?;
    let blockers = project.blockers();
    match args.format {
        Format::Json => write_json(
            out,
            &StatusJson {
                project: &project.name,
                project_dir: &project.dir,
                compose_files: &project.compose_files,
                services: &project.services,
                volumes: &project.volumes,
                other_containers: &project.others,
                cold_backup_ready: blockers.is_empty(),
                blockers,
            },
        ),
        Format::Table => write_table(&project, &blockers, out),
    }
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
