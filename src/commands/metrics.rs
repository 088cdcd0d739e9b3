//! `metrics`: the catalog as Prometheus text, on stdout or (`--metrics-file`) in a file.
use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::cli::MetricsArgs;
use crate::metrics::{self, ProjectRows};
use crate::Context;

pub fn run(ctx: &Context, args: &MetricsArgs, out: &mut dyn Write) -> Result<()> {
    let project = match args.all_projects {
        true => None,
        false => Some(ctx.project_name()?),
    };
    out.write_all(text(ctx, project.as_deref())?.as_bytes())?;
    Ok(())
}

/// Every project's metrics, written whole into `path` (see [`metrics::write_file`]).
pub fn write_file(ctx: &Context, path: &Path) -> Result<()> {
    metrics::write_file(path, &text(ctx, None)?)
}

/// The exposition of `project` (or every project), from the catalog.
fn text(ctx: &Context, project: Option<&str>) -> Result<String> {
    let catalog = ctx.catalog()?;
    let mut projects: Vec<ProjectRows> = Vec::new();
    for row in catalog.list(project)? {
        match projects.iter_mut().find(|p| p.project == row.project) {
            Some(p) => p.rows.push(row),
            None => projects.push(ProjectRows {
                project: row.project.clone(),
                rows: vec![row],
                last_verified: None,
            }),
        }
    }
    for p in &mut projects {
        p.last_verified = catalog.last_verified(&p.project)?;
    }
    projects.sort_by(|a, b| a.project.cmp(&b.project));
    Ok(metrics::render(&metrics::host_name(), &projects))
}
