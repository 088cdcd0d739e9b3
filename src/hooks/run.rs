//! Runs a phase's hooks: host hooks with `sh -c` in the project folder, service hooks with
//! `docker compose exec -T` in the service's running container; each under its timeout, its
//! output on stderr behind `<phase> <service> |`.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::exec::{self, Ran};
use super::{Hook, Hooks, OnError, Phase};
use crate::cli::ComposeArgs;
use crate::compose::Project;
use crate::docker::Docker;
use crate::exit_codes::{Code, UserError};
use crate::output::{note, warn};
use crate::runs::ActiveRun;
use crate::Context;

/// What a hook is told about the run, beyond its phase and project (`NUWAX_BACKUP_*`).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// The backup made or restored, once it has an id.
    pub id: Option<i64>,
    /// Its archive, once it is complete.
    pub file: Option<String>,
    /// `manual`, `pre-upgrade`, `pre-rollback`.
    pub backup_type: Option<String>,
    /// The failure (on-error only).
    pub error: Option<String>,
}

impl Env {
    /// The variables, for `phase` of `project`. `NUWAX_BACKUP_STATUS` is `running` before and
    /// during the work, `completed` after it, `failed` on error.
    pub fn vars(&self, project: &str, phase: Phase) -> Vec<(&'static str, String)> {
        let status = match phase {
            Phase::BeforeBackup | Phase::AfterStart | Phase::BeforeRollback => "running",
            Phase::AfterBackup | Phase::AfterRollback => "completed",
            Phase::OnError => "failed",
        };
        let mut out = vec![
            ("NUWAX_BACKUP_PHASE", phase.as_str().to_string()),
            ("NUWAX_BACKUP_PROJECT", project.to_string()),
            ("NUWAX_BACKUP_STATUS", status.to_string()),
        ];
        let optional = [
            ("NUWAX_BACKUP_ID", self.id.map(|i| i.to_string())),
            ("NUWAX_BACKUP_FILE", self.file.clone()),
            ("NUWAX_BACKUP_TYPE", self.backup_type.clone()),
            (
                "NUWAX_BACKUP_ERROR",
                self.error.as_deref().map(bounded_error),
            ),
        ];
        out.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
        out
    }
}

/// `NUWAX_BACKUP_ERROR`: at most 4 KiB, cut at a character boundary, no NUL (an environment
/// value past the kernel's limits, or with a NUL, would keep the on-error hooks from starting).
fn bounded_error(error: &str) -> String {
    let limit = super::exec::MAX_LINE;
    let mut end = error.len().min(limit);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = error[..end].replace('\0', "\u{fffd}");
    if end < error.len() {
        out.push('…');
    }
    out
}

/// The hooks of one run of one project, and how to run them.
pub struct Runner<'a> {
    docker: &'a Docker,
    compose: &'a ComposeArgs,
    dir: PathBuf,
    project: String,
    hooks: Hooks,
}

/// Exit 17 with `message`.
fn failed(message: String) -> anyhow::Error {
    UserError::new(Code::Hook, message).into()
}

impl<'a> Runner<'a> {
    /// The project's hooks; none with `--no-hooks`.
    pub fn new(ctx: &'a Context, project: &Project, no_hooks: bool) -> Runner<'a> {
        Runner::for_project(
            ctx,
            &project.name,
            project.dir.clone(),
            &project.hooks,
            no_hooks,
        )
    }

    pub fn for_project(
        ctx: &'a Context,
        project: &str,
        dir: PathBuf,
        hooks: &Hooks,
        no: bool,
    ) -> Runner<'a> {
        Runner {
            docker: &ctx.docker,
            compose: &ctx.compose,
            dir,
            project: project.to_string(),
            hooks: if no { Hooks::default() } else { hooks.clone() },
        }
    }

    /// The hooks of `phase` this run will run.
    pub fn of(&self, phase: Phase) -> impl Iterator<Item = &Hook> {
        self.hooks.of(phase)
    }

    /// Before anything stops: a service hook of `phases` needs its service running. One that
    /// would fail the run is exit 17 now; one set to `continue` is left out, with a warning.
    pub fn check_running(mut self, project: &Project, phases: &[Phase]) -> Result<Self> {
        let running = crate::services::Running::of(project).services;
        let runs = |s: &str| running.iter().any(|r| r == s);
        let idle =
            |h: &Hook| phases.contains(&h.phase) && h.service.as_deref().is_some_and(|s| !runs(s));
        for h in self.hooks.listed(phases).iter().filter(|h| idle(h)) {
            let service = h.service.as_deref().unwrap_or_default();
            let what = format!(
                "the {} cannot run: service {service} is not running",
                h.name()
            );
            match h.on_error {
                OnError::Fail => {
                    return Err(failed(format!(
                        "{what}; start it, or pass --no-hooks (nothing was stopped or changed)"
                    )))
                }
                OnError::Continue => warn(format!("{what}: skipped (on-error=continue)")),
            }
        }
        self.hooks = self.hooks.without(idle);
        Ok(self)
    }

    /// Runs the hooks of `phase` in order (recorded first in `record`). A failing hook set to
    /// `fail` ends the phase with exit 17, naming it, its exit and its last line; one set to
    /// `continue` is a warning.
    pub fn phase(&self, phase: Phase, env: &Env, record: Option<&mut ActiveRun>) -> Result<()> {
        let hooks: Vec<&Hook> = self.hooks.of(phase).collect();
        if hooks.is_empty() {
            return Ok(());
        }
        if let Some(r) = record {
            r.hook_phase(phase)?;
        }
        for h in hooks {
            let ran = self.one(h, env)?;
            if ran.succeeded() {
                continue;
            }
            let message = format!("the {} {}", h.name(), ran.describe(h.timeout));
            let before = matches!(phase, Phase::BeforeBackup | Phase::BeforeRollback);
            match h.on_error {
                OnError::Fail if before => {
                    return Err(failed(format!("{message}; nothing was stopped or changed")))
                }
                OnError::Fail => return Err(failed(message)),
                OnError::Continue => warn(format!("{message} (on-error=continue: going on)")),
            }
        }
        Ok(())
    }

    /// Runs the on-error hooks: every one, whatever the others do; their failures are
    /// warnings (the run's own error is the one reported).
    pub fn on_error(&self, env: &Env) {
        // The cancel that ended the run does not stop its on-error hooks; another one does
        // (and each hook's own timeout applies).
        crate::cancel::forgive();
        for h in self.hooks.of(Phase::OnError) {
            match self.one(h, env) {
                Ok(ran) if ran.succeeded() => {}
                Ok(ran) => warn(format!("the {} {}", h.name(), ran.describe(h.timeout))),
                Err(e) => warn(format!("the {} did not run: {e:#}", h.name())),
            }
        }
    }

    fn one(&self, h: &Hook, env: &Env) -> Result<Ran> {
        note(format!("running the {}", h.name()));
        let vars = env.vars(&self.project, h.phase);
        let Some(service) = h.service.as_deref() else {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(&h.command)
                .current_dir(&self.dir)
                .envs(vars);
            return exec::run(cmd, &h.prefix(), h.timeout, &|_| {});
        };
        let exec = InService {
            docker: self.docker,
            compose: self.compose,
            service,
            user: h.user.as_deref(),
        };
        exec.run(&h.command, &vars, &h.prefix(), h.timeout)
    }
}

/// A command run in a service's running container (`docker compose exec -T … sh -c`), under
/// a timeout that kills its process group in the container too: hooks, and the restore
/// test's checks in the throw-away copy.
pub struct InService<'a> {
    pub docker: &'a Docker,
    pub compose: &'a ComposeArgs,
    pub service: &'a str,
    pub user: Option<&'a str>,
}

impl InService<'_> {
    pub fn run(
        &self,
        command: &str,
        vars: &[(&str, String)],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Ran> {
        let mut sub = exec_words(self.service, self.user);
        for (k, v) in vars {
            sub.splice(2..2, ["-e".to_string(), format!("{k}={v}")]);
        }
        sub.push(exec::in_container(command));
        let cmd = self.docker.compose_command(self.compose, &sub);
        exec::run(cmd, prefix, timeout, &|pid| self.kill_inside(pid))
    }

    /// Kills the process group a timed-out command leads in its container.
    fn kill_inside(&self, pid: u32) {
        let mut sub = exec_words(self.service, self.user);
        sub.push(format!(
            "kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid}"
        ));
        let cmd = self.docker.compose_command(self.compose, &sub);
        let _ = exec::run(cmd, "kill |", Duration::from_secs(15), &|_| {});
    }
}

/// `exec -T [--user U] SERVICE sh -c` (the script follows).
fn exec_words(service: &str, user: Option<&str>) -> Vec<String> {
    let mut out = vec!["exec".to_string(), "-T".to_string()];
    if let Some(u) = user {
        out.extend(["--user".to_string(), u.to_string()]);
    }
    out.extend([service.to_string(), "sh".into(), "-c".into()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_phase_and_what_is_known() {
        let env = Env {
            id: Some(7),
            backup_type: Some("manual".into()),
            ..Env::default()
        };
        let vars = env.vars("shop", Phase::AfterBackup);
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("NUWAX_BACKUP_PHASE"), Some("after-backup"));
        assert_eq!(get("NUWAX_BACKUP_PROJECT"), Some("shop"));
        assert_eq!(get("NUWAX_BACKUP_STATUS"), Some("completed"));
        assert_eq!(get("NUWAX_BACKUP_ID"), Some("7"));
        assert_eq!(get("NUWAX_BACKUP_FILE"), None);
        assert_eq!(get("NUWAX_BACKUP_ERROR"), None);
    }

    #[test]
    fn exec_words_put_the_user_before_the_service() {
        assert_eq!(
            exec_words("db", Some("postgres")),
            ["exec", "-T", "--user", "postgres", "db", "sh", "-c"]
        );
    }
}
