//! The throw-away copy: its model written beside the scratch copies, `up`, the wait for its
//! services, the operator's checks run in it, and its removal by its project label.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::model::{self, BindFate, Image, Mapping};
use super::scratch::Restored;
use super::{Failure, Step};
use crate::archive::manifest::Manifest;
use crate::archive::reader::Verified;
use crate::catalog::BackupRow;
use crate::cli::ComposeArgs;
use crate::compose::model::PsEntry;
use crate::compose::Kind;
use crate::docker::Docker;
use crate::hooks::exec::Ran;
use crate::hooks::run::InService;
use crate::output::note;
use crate::Context;

/// The copy, ready to start.
pub struct Copy<'a> {
    docker: &'a Docker,
    args: ComposeArgs,
    /// Its model (after the rules of [`model::throwaway`]).
    model: Value,
}

impl<'a> Copy<'a> {
    /// Reads the archived compose files as compose resolves them (in the live project's folder
    /// when it is still there: its `.env` and relative paths), and writes the copy's model.
    pub fn model(
        ctx: &'a Context,
        row: &BackupRow,
        verified: &Verified,
        restored: &Restored,
        copy: &str,
    ) -> Result<Copy<'a>> {
        let m = &verified.manifest;
        let scratch = restored
            .compose_files
            .first()
            .and_then(|f| f.parent()?.parent())
            .context("the archive holds no compose file")?
            .to_path_buf();
        let dir = match m.project_dir.is_dir() {
            true => m.project_dir.clone(),
            false => PathBuf::from(&row.project_dir),
        };
        let archived = ComposeArgs {
            files: restored.compose_files.clone(),
            project_name: Some(copy.to_string()),
            project_directory: Some(if dir.is_dir() {
                dir
            } else {
                scratch.join("compose")
            }),
            ..ctx.compose.clone()
        };
        let text = ctx
            .docker
            .compose(&archived, &["config", "--format", "json"])?;
        let live: Value = serde_json::from_str(&text).context("reading the archived model")?;
        let mapping = mapping(ctx, m, restored, &live, copy, &scratch)?;
        let (model, said) = model::throwaway(&live, &mapping);
        for line in said {
            note(format!("restore test: {line}"));
        }
        let file = scratch.join("compose.json");
        crate::private::replace(&file, &serde_json::to_vec_pretty(&model)?)?;
        let args = ComposeArgs {
            files: vec![file],
            project_name: Some(copy.to_string()),
            project_directory: Some(scratch),
            env_file: Vec::new(),
            profile: Vec::new(),
            ..ctx.compose.clone()
        };
        Ok(Copy {
            docker: &ctx.docker,
            args,
            model,
        })
    }

    /// `up -d` (no build; images by the IDs the backup recorded), within the time left.
    pub fn up(&self, deadline: Instant) -> Result<(), Failure> {
        let cmd = self
            .docker
            .compose_command(&self.args, &["up", "-d", "--no-build", "--quiet-pull"]);
        let ran = crate::hooks::exec::run(cmd, "restore-test up |", left(deadline), &|_| {})
            .map_err(Failure::at(Step::Start))?;
        match ran.succeeded() {
            true => Ok(()),
            false => Err(Failure::new(
                Step::Start,
                None,
                ran.describe(left(deadline)),
            )),
        }
    }

    /// Waits until every persistent service is healthy (those with a healthcheck) or has run
    /// for `settle` (those without). A service that exits or restarts fails the start.
    pub fn wait_ready(
        &self,
        m: &Manifest,
        settle: Duration,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let persistent: Vec<&str> = m
            .services
            .iter()
            .filter(|s| s.kind == Kind::Persistent)
            .map(|s| s.name.as_str())
            .collect();
        let mut since: HashMap<String, Instant> = HashMap::new();
        loop {
            crate::cancel::check().map_err(Failure::at(Step::Start))?;
            let states = self.states().map_err(Failure::at(Step::Start))?;
            let mut pending: Option<(Step, &str, String)> = None;
            for s in &persistent {
                match self.readiness(s, states.get(*s), settle, &mut since)? {
                    None => {}
                    Some(p) => pending = pending.or(Some((p.0, s, p.1))),
                }
            }
            let Some((step, service, why)) = pending else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(Failure::new(step, Some(service), why));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `None` when `service` is ready; else the step it waits in and why. Fails when it
    /// stopped or turned unhealthy.
    fn readiness(
        &self,
        service: &str,
        state: Option<&PsEntry>,
        settle: Duration,
        since: &mut HashMap<String, Instant>,
    ) -> Result<Option<(Step, String)>, Failure> {
        let Some(st) = state else {
            return Ok(Some((Step::Start, "its container was not created".into())));
        };
        if st.state != "running" {
            let line = self.last_log_line(&st.name);
            let how = format!("{} (exit {}): {line}", st.state, st.exit_code);
            return Err(Failure::new(Step::Start, Some(service), how));
        }
        match st.health.as_str() {
            "healthy" => Ok(None),
            "unhealthy" => Err(Failure::new(
                Step::Health,
                Some(service),
                self.health_line(&st.name),
            )),
            "" => {
                let first = *since
                    .entry(service.to_string())
                    .or_insert_with(Instant::now);
                Ok((first.elapsed() < settle).then(|| {
                    (
                        Step::Start,
                        format!("not running for {} yet", humantime::format_duration(settle)),
                    )
                }))
            }
            _ => Ok(Some((
                Step::Health,
                format!("not healthy in time: {}", self.health_line(&st.name)),
            ))),
        }
    }

    /// Runs the checks of the archived model (`x-nuwax-backup.restore-test`, then each
    /// service's `nuwaxbackup.restore-test` label) in the copy's containers.
    pub fn checks(&self, deadline: Instant) -> Result<(), Failure> {
        for (service, command) in checks_of(&self.model) {
            note(format!("restore test: checking {service}"));
            let exec = InService {
                docker: self.docker,
                compose: &self.args,
                service: &service,
                user: None,
            };
            let prefix = format!("restore-test {service} |");
            let ran: Ran = exec
                .run(&command, &[], &prefix, left(deadline))
                .map_err(|e| Failure::new(Step::Test, Some(&service), format!("{e:#}")))?;
            if !ran.succeeded() {
                return Err(Failure::new(
                    Step::Test,
                    Some(&service),
                    ran.describe(left(deadline)),
                ));
            }
        }
        Ok(())
    }

    /// Each service's container (its state and health) now.
    fn states(&self) -> Result<BTreeMap<String, PsEntry>> {
        let text = self
            .docker
            .compose(&self.args, &["ps", "-a", "--format", "json"])?;
        let all = crate::compose::model::parse_ps(&text)?;
        Ok(all.into_iter().map(|e| (e.service.clone(), e)).collect())
    }

    fn last_log_line(&self, container: &str) -> String {
        let out = self
            .docker
            .output(&["logs", "--tail", "20", container])
            .unwrap_or_default();
        last_line(&out)
    }

    /// The last line of the last healthcheck's output.
    fn health_line(&self, container: &str) -> String {
        let fmt = "{{json .State.Health}}";
        let text = self
            .docker
            .output(&["inspect", "--format", fmt, container])
            .unwrap_or_default();
        let health: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        let log = health["Log"]
            .as_array()
            .and_then(|l| l.last())
            .cloned()
            .unwrap_or(Value::Null);
        match (
            log["ExitCode"].as_i64(),
            log["Output"].as_str().map(last_line),
        ) {
            (Some(code), Some(l)) if !l.is_empty() => format!("healthcheck exit {code}: {l}"),
            (Some(code), _) => format!("healthcheck exit {code} (no output)"),
            _ => format!(
                "healthcheck {}",
                health["Status"].as_str().unwrap_or("not run yet")
            ),
        }
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1))
}

/// The checks the archived model declares, in order: the extension's, then the labels'.
pub fn checks_of(model: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let ext = &model["x-nuwax-backup"]["restore-test"];
    for c in ext.as_array().into_iter().flatten() {
        if let (Some(s), Some(cmd)) = (c["service"].as_str(), c["command"].as_str()) {
            out.push((s.to_string(), crate::hooks::unescape(cmd)));
        }
    }
    for (name, svc) in model["services"].as_object().into_iter().flatten() {
        if let Some(cmd) = svc["labels"][crate::hooks::RESTORE_TEST_LABEL].as_str() {
            out.push((name.clone(), crate::hooks::unescape(cmd)));
        }
    }
    out
}

/// How the live project maps onto the copy: scratch volumes and binds, images by ID.
fn mapping(
    ctx: &Context,
    m: &Manifest,
    restored: &Restored,
    live: &Value,
    copy: &str,
    scratch: &Path,
) -> Result<Mapping> {
    let mut binds = BTreeMap::new();
    for (i, (source, read_only)) in model::bind_sources(live).into_iter().enumerate() {
        let fate = match restored.binds.get(&source) {
            Some(p) => BindFate::Scratch(p.clone()),
            None => unarchived_bind(&source, read_only, &scratch.join(format!("other-{i}")))?,
        };
        binds.entry(source).or_insert(fate);
    }
    let mut images = BTreeMap::new();
    for s in &m.services {
        let id = s
            .image_id
            .as_deref()
            .filter(|id| image_exists(&ctx.docker, id));
        let image = match (id, &s.image) {
            (Some(id), _) => Image::Id(id.to_string()),
            (None, Some(r)) => {
                crate::output::warn(format!(
                    "restore test: service {}: the image the backup recorded is gone; using {r} as it is now",
                    s.name
                ));
                Image::Ref(r.clone())
            }
            (None, None) => Image::Ref(format!("{}-{}", m.project, s.name)),
        };
        images.insert(s.name.clone(), image);
    }
    Ok(Mapping {
        project: copy.to_string(),
        volumes: restored.volumes.clone(),
        binds,
        images,
    })
}

/// A bind the backup did not hold: a read-only file or folder is kept (it cannot be
/// changed through the copy); a writable folder gets an empty scratch one, a writable file a
/// scratch copy; anything else (a socket such as docker.sock, a device) is left out.
fn unarchived_bind(source: &Path, read_only: bool, scratch: &Path) -> Result<BindFate> {
    let Ok(meta) = std::fs::metadata(source) else {
        return Ok(BindFate::Drop);
    };
    Ok(match (meta.is_dir(), meta.is_file(), read_only) {
        (true, _, true) | (_, true, true) => BindFate::Keep,
        (true, _, false) => {
            crate::private::create_dir_all(scratch)?;
            BindFate::Scratch(scratch.to_path_buf())
        }
        (_, true, false) => {
            std::fs::copy(source, scratch)
                .with_context(|| format!("copying {}", source.display()))?;
            BindFate::Scratch(scratch.to_path_buf())
        }
        _ => BindFate::Drop,
    })
}

fn image_exists(docker: &Docker, id: &str) -> bool {
    docker
        .output(&["image", "inspect", "--format", "{{.Id}}", id])
        .is_ok()
}

/// Removes every container, network and volume labelled as project `copy`'s.
pub fn remove_project(docker: &Docker, copy: &str) {
    let filter = format!("label=com.docker.compose.project={copy}");
    let list = |what: &[&str]| -> Vec<String> {
        let mut args: Vec<&str> = what.to_vec();
        args.extend(["-q", "--filter", &filter]);
        docker
            .output(&args)
            .map(|t| {
                t.lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (listing, removing) in [
        (&["ps", "-a"][..], &["rm", "-f", "-v"][..]),
        (&["network", "ls"][..], &["network", "rm"][..]),
        (&["volume", "ls"][..], &["volume", "rm", "-f"][..]),
    ] {
        let found = list(listing);
        if found.is_empty() {
            continue;
        }
        let mut args: Vec<&str> = removing.to_vec();
        args.extend(found.iter().map(String::as_str));
        if let Err(e) = docker.output(&args) {
            crate::output::warn(format!("removing the restore test's copy {copy}: {e:#}"));
        }
    }
}
