//! The compose project as a backup sees it: built from `docker compose config` and `ps -a`.
pub mod classify;
pub mod model;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::ComposeArgs;
use crate::docker::Docker;
pub use classify::{Blocker, Container, Kind, Service, Volume};
pub use model::{ConfigJson, Extension, Role};

/// Everything known about one compose project at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub name: String,
    pub dir: PathBuf,
    pub compose_files: Vec<PathBuf>,
    pub services: Vec<Service>,
    pub volumes: Vec<Volume>,
    /// Containers of the project that no service of the current config owns.
    pub others: Vec<Container>,
    #[serde(skip)]
    pub extension: Extension,
    /// Its hooks (`x-nuwax-backup.hooks` and `nuwaxbackup.*` labels), checked at load.
    #[serde(skip)]
    pub hooks: crate::hooks::Hooks,
}

/// What a run reads before it starts (one `compose config`, no daemon needed): the project's
/// name and folder, where to tell the outcome, and its hooks.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub name: String,
    pub dir: PathBuf,
    pub notify: Vec<String>,
    pub hooks: crate::hooks::Hooks,
}

impl Project {
    /// Reads the project through `docker compose config` and `docker compose ps -a`.
    ///
    /// Fails with a user error when there is no compose file, it is invalid, Compose v2 is
    /// missing, or the daemon does not answer.
    pub fn load(docker: &Docker, args: &ComposeArgs) -> Result<Project> {
        // The two calls are independent: asked at once, they cost the time of one.
        let (config_text, ps_text) = std::thread::scope(|s| {
            let ps = s.spawn(|| docker.compose(args, &["ps", "-a", "--format", "json"]));
            let config = docker.compose(args, &["config", "--format", "json"]);
            (config, ps.join())
        });
        let cfg: ConfigJson = serde_json::from_str(&config_text?)
            .context("reading `docker compose config` output")?;
        let ps_text = ps_text.map_err(|_| anyhow::anyhow!("`docker compose ps` panicked"))??;
        let ps = model::parse_ps(&ps_text)?;
        let compose_files = compose_files(args)?;
        let dir = project_dir(args, &compose_files)?;
        let (by_service, others) = classify::containers_by_service(&ps, &cfg.services);
        let services = classify::services(&cfg, &by_service);
        let volumes = classify::volumes(&cfg, &dir, &|p: &Path| p.is_file());
        let hooks = hooks_of(&cfg, &compose_files)?;
        Ok(Project {
            hooks,
            name: cfg.name.clone(),
            dir,
            compose_files,
            services,
            volumes,
            others,
            extension: cfg.extension,
        })
    }

    /// Only the project's name, from `docker compose config` (no daemon needed).
    pub fn name_only(docker: &Docker, args: &ComposeArgs) -> Result<String> {
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
        }
        let text = docker.compose(args, &["config", "--format", "json"])?;
        Ok(serde_json::from_str::<Named>(&text)
            .context("reading `docker compose config` output")?
            .name)
    }

    /// The project's [`Settings`] (one `compose config`, no daemon needed).
    pub fn settings(docker: &Docker, args: &ComposeArgs) -> Result<Settings> {
        let text = docker.compose(args, &["config", "--format", "json"])?;
        let cfg: ConfigJson =
            serde_json::from_str(&text).context("reading `docker compose config` output")?;
        let files = compose_files(args)?;
        Ok(Settings {
            dir: project_dir(args, &files)?,
            hooks: hooks_of(&cfg, &files)?,
            name: cfg.name,
            notify: cfg.extension.notify,
        })
    }

    /// The containers that keep a cold backup from running now.
    pub fn blockers(&self) -> Vec<Blocker> {
        classify::blockers(&self.services, &self.others)
    }

    /// Every container of the project, in services and outside them.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.services
            .iter()
            .flat_map(|s| s.containers.iter())
            .chain(self.others.iter())
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Whether another declared mount of `service` sits below `target` (reading `target`
    /// through that service's container would then read the nested mount's files too).
    pub fn has_nested_mount(&self, service: &str, target: &str) -> bool {
        nested_below(
            self.volumes
                .iter()
                .flat_map(|v| v.mounts())
                .filter(|m| m.service == service)
                .map(|m| m.target.as_str()),
            target,
        )
    }
}

/// Whether one of `targets` is strictly below `target` (`/data/conf` is below `/data`,
/// `/database` is not).
pub fn nested_below<'a>(targets: impl IntoIterator<Item = &'a str>, target: &str) -> bool {
    let base = target.trim_end_matches('/');
    targets.into_iter().any(|t| {
        t.trim_end_matches('/')
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
            || (base.is_empty() && t != "/")
    })
}

/// The project's hooks, service hooks in the compose files' service order; a mistake in them
/// makes the compose file invalid for this tool (exit 4, naming the key).
fn hooks_of(cfg: &ConfigJson, files: &[PathBuf]) -> Result<crate::hooks::Hooks> {
    let names = cfg.services.keys().map(String::as_str);
    // The files are read for the order only when a service has a hook label (every
    // command loads the project; most projects have none).
    let labelled = cfg.services.values().flat_map(|s| s.labels.keys());
    let order: Vec<String> = match labelled.into_iter().any(|k| crate::hooks::is_hook_label(k)) {
        true => declared_order(files, names),
        false => names.map(String::from).collect(),
    };
    let services: Vec<(&str, &std::collections::BTreeMap<String, String>)> = order
        .iter()
        .filter_map(|n| cfg.services.get_key_value(n.as_str()))
        .map(|(n, s)| (n.as_str(), &s.labels))
        .collect();
    crate::hooks::Hooks::plan(&cfg.extension.hooks, &services).map_err(|e| {
        crate::exit_codes::UserError::new(crate::exit_codes::Code::InvalidComposeFile, e).into()
    })
}

/// The service names in the order the compose files declare them (first appearance over the
/// files, in `-f` order; Compose's JSON sorts them), then those no file shows (from `include`
/// or `extends`) in Compose's order.
pub fn declared_order<'a>(
    files: &[PathBuf],
    services: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
            continue;
        };
        let Some(map) = doc.get("services").and_then(|s| s.as_mapping()) else {
            continue;
        };
        for name in map.keys().filter_map(|k| k.as_str()) {
            if !out.iter().any(|o| o == name) {
                out.push(name.to_string());
            }
        }
    }
    let known: Vec<&str> = services.collect();
    out.retain(|n| known.contains(&n.as_str()));
    for n in known {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    }
    out
}

const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];
const OVERRIDE_FILES: &[&str] = &[
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

/// The compose files in use, as absolute paths, found the way Compose finds them:
/// `-f`, else `COMPOSE_FILE`, else the first default name in the working folder or a parent.
pub fn compose_files(args: &ComposeArgs) -> Result<Vec<PathBuf>> {
    let cwd = std::env::current_dir().context("reading the current folder")?;
    let base = args
        .project_directory
        .as_ref()
        .map(|d| cwd.join(d))
        .unwrap_or(cwd.clone());
    if !args.files.is_empty() {
        return Ok(args
            .files
            .iter()
            .filter(|f| f.as_os_str() != "-")
            .map(|f| cwd.join(f))
            .collect());
    }
    if let Some(list) = std::env::var_os("COMPOSE_FILE").filter(|v| !v.is_empty()) {
        let sep = std::env::var("COMPOSE_PATH_SEPARATOR").unwrap_or_else(|_| ":".into());
        return Ok(list
            .to_string_lossy()
            .split(sep.as_str())
            .map(|f| base.join(f))
            .collect());
    }
    let mut dir: Option<&Path> = Some(&base);
    while let Some(d) = dir {
        if let Some(main) = DEFAULT_FILES
            .iter()
            .map(|n| d.join(n))
            .find(|p| p.is_file())
        {
            let mut files = vec![main];
            files.extend(
                OVERRIDE_FILES
                    .iter()
                    .map(|n| d.join(n))
                    .find(|p| p.is_file()),
            );
            return Ok(files);
        }
        dir = d.parent();
    }
    Ok(Vec::new())
}

/// `--project-directory`, else the folder of the first compose file, else the current folder.
fn project_dir(args: &ComposeArgs, files: &[PathBuf]) -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current folder")?;
    let dir = match (&args.project_directory, files.first()) {
        (Some(d), _) => cwd.join(d),
        (None, Some(f)) => f.parent().map(Path::to_path_buf).unwrap_or(cwd),
        (None, None) => cwd,
    };
    Ok(classify::normalize(&dir))
}

#[cfg(test)]
mod nested_tests {
    use super::nested_below;

    #[test]
    fn only_mounts_strictly_below_count() {
        assert!(nested_below(["/data", "/data/conf"], "/data"));
        assert!(nested_below(["/data/conf/x"], "/data/"));
        assert!(!nested_below(["/data", "/database", "/other"], "/data"));
        assert!(!nested_below(["/data"], "/data"));
    }
}
