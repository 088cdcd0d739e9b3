//! Stopping a project's running containers for cold work, and starting exactly those again.
use anyhow::Result;

use crate::cli::ComposeArgs;
use crate::compose::Project;
use crate::docker::Docker;
use crate::exit_codes::{Code, UserError};

/// What was running before a cold step, so that exactly that is started again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// Services with at least one live container.
    pub services: Vec<String>,
    /// Live containers no current service owns (one-offs, other profiles).
    pub containers: Vec<String>,
}

impl Running {
    pub fn of(project: &Project) -> Running {
        let services = project
            .services
            .iter()
            .filter(|s| s.containers.iter().any(|c| c.is_live()))
            .map(|s| s.name.clone())
            .collect();
        let containers = project
            .others
            .iter()
            .filter(|c| c.is_live())
            .map(|c| c.name.clone())
            .collect();
        Running {
            services,
            containers,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.containers.is_empty()
    }

    /// Everything, for messages.
    pub fn names(&self) -> Vec<String> {
        self.services
            .iter()
            .chain(self.containers.iter())
            .cloned()
            .collect()
    }
}

/// Stops the project (`docker compose stop`, which follows `depends_on`) and the other live
/// containers. Fails when docker does.
pub fn stop(docker: &Docker, compose: &ComposeArgs, running: &Running) -> Result<()> {
    if !running.services.is_empty() {
        docker.compose(compose, &["stop"])?;
    }
    if !running.containers.is_empty() {
        let mut args = vec!["stop".to_string()];
        args.extend(running.containers.iter().cloned());
        docker.output(&args)?;
    }
    Ok(())
}

/// Makes the containers of `services` that do not exist (`compose create --no-recreate`:
/// never one replaced, none started), in a process group of its own as [`start`] is.
pub fn create_missing(docker: &Docker, compose: &ComposeArgs, services: &[String]) -> Result<()> {
    if services.is_empty() {
        return Ok(());
    }
    let mut args = vec!["create".to_string(), "--no-recreate".to_string()];
    args.extend(services.iter().cloned());
    docker.compose_detached(compose, &args).map(|_| ())
}

/// Starts again what was running, in a process group of its own so that the Ctrl-C that
/// cancelled the work does not also kill this step. Fails with `RestartFailed`, naming what
/// is left down.
pub fn start(docker: &Docker, compose: &ComposeArgs, running: &Running) -> Result<()> {
    let mut down = Vec::new();
    let mut detail = String::new();
    if !running.services.is_empty() {
        let mut args = vec!["start".to_string()];
        args.extend(running.services.iter().cloned());
        if let Err(e) = docker.compose_detached(compose, &args) {
            down.extend(running.services.iter().cloned());
            detail = format!("{e:#}");
        }
    }
    for c in &running.containers {
        if let Err(e) = docker.output_detached(&["start", c.as_str()]) {
            down.push(c.clone());
            detail = format!("{e:#}");
        }
    }
    if down.is_empty() {
        return Ok(());
    }
    Err(UserError::new(
        Code::RestartFailed,
        format!(
            "could not start again: {} ({detail}); start them with `docker compose start`",
            down.join(", ")
        ),
    )
    .into())
}
