//! Pure decisions on the compose model: restart policies, service kinds, volume roles, blockers.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::model::{ConfigJson, PsEntry, Role, ServiceJson};

/// Persistent services must be stopped for a cold backup; one-shot ones run and exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Persistent,
    OneShot,
}

#[derive(Debug, Clone, Serialize)]
pub struct Container {
    pub name: String,
    pub state: String,
    #[serde(skip)]
    pub service: String,
    #[serde(skip)]
    pub oneoff: bool,
}

impl Container {
    /// Running in the sense that matters for a cold backup: its processes may write.
    pub fn is_live(&self) -> bool {
        matches!(
            self.state.as_str(),
            "running" | "restarting" | "paused" | "removing"
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub restart_policy: String,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Built from source (`build:`): its image is the build's result, not a pulled one.
    #[serde(skip)]
    pub built: bool,
    pub containers: Vec<Container>,
}

/// Where a mount sits in a service.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mount {
    pub service: String,
    pub target: String,
    pub read_only: bool,
}

/// A declared volume: a named volume of the engine or a bind-mounted host path.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Volume {
    Volume {
        /// The engine's volume name (e.g. `proj_dbdata`).
        name: String,
        /// The key under top-level `volumes:` in the compose file.
        key: String,
        external: bool,
        driver: Option<String>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        driver_opts: BTreeMap<String, String>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
        role: Role,
        excluded: bool,
        used_by: Vec<String>,
        mounts: Vec<Mount>,
    },
    Bind {
        source: PathBuf,
        is_file: bool,
        inside_project: bool,
        role: Role,
        excluded: bool,
        used_by: Vec<String>,
        mounts: Vec<Mount>,
    },
}

impl Volume {
    pub fn role(&self) -> Role {
        match self {
            Volume::Volume { role, .. } | Volume::Bind { role, .. } => *role,
        }
    }
    pub fn excluded(&self) -> bool {
        match self {
            Volume::Volume { excluded, .. } | Volume::Bind { excluded, .. } => *excluded,
        }
    }
    pub fn mounts(&self) -> &[Mount] {
        match self {
            Volume::Volume { mounts, .. } | Volume::Bind { mounts, .. } => mounts,
        }
    }
    /// Where its content lives on this host: a bind's source; a named volume's folder, as
    /// `local_folder` knows it from the engine (only a plain `local` volume has one here).
    /// The one place this is decided.
    pub fn host_path<'a>(
        &'a self,
        local_folder: impl FnOnce(&'a str) -> Option<&'a std::path::Path>,
    ) -> Option<&'a std::path::Path> {
        match self {
            Volume::Bind { source, .. } => Some(source),
            Volume::Volume { name, .. } => local_folder(name),
        }
    }

    /// How a user names it: the engine name, or the host path.
    pub fn label(&self) -> String {
        match self {
            Volume::Volume { name, .. } => name.clone(),
            Volume::Bind { source, .. } => source.display().to_string(),
        }
    }
}

impl std::fmt::Display for Mount {
    /// `service:target`, with `:ro` when read-only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}{}",
            self.service,
            self.target,
            if self.read_only { ":ro" } else { "" }
        )
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Persistent => "persistent",
            Kind::OneShot => "one-shot",
        }
    }
}

/// A container that keeps a cold backup from running now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Blocker {
    pub container: String,
    pub service: String,
    pub reason: String,
}

/// The restart policy the engine gets, computed as Compose v2 does (`pkg/compose/create.go`):
/// `deploy.restart_policy` overrides `restart`; a policy without a condition means no restart.
pub fn effective_restart_policy(svc: &ServiceJson) -> String {
    if let Some(policy) = svc.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()) {
        return match policy.condition.as_deref() {
            None | Some("") | Some("none") | Some("no") => "no".into(),
            Some("any") | Some("always") => "always".into(),
            Some("on-failure") => match policy.max_attempts {
                Some(n) if n > 0 => format!("on-failure:{n}"),
                _ => "on-failure".into(),
            },
            Some(other) => other.into(),
        };
    }
    match svc.restart.as_deref() {
        None | Some("") => "no".into(),
        Some(r) => r.into(),
    }
}

/// `always`/`unless-stopped` are persistent, `no` one-shot; `on-failure` is persistent while one
/// of its containers runs (a daemon) and one-shot otherwise (a retrying job).
pub fn kind_of(policy: &str, containers: &[Container]) -> Kind {
    match policy.split(':').next().unwrap_or("") {
        "always" | "unless-stopped" => Kind::Persistent,
        "on-failure" if containers.iter().any(Container::is_live) => Kind::Persistent,
        _ => Kind::OneShot,
    }
}

/// The default role: named volumes and read-write bind-mounted folders hold data; read-only
/// binds and single bind-mounted files are application files.
pub fn default_role(is_bind: bool, is_file: bool, mounts: &[Mount]) -> Role {
    if !is_bind {
        return Role::Data;
    }
    if is_file || mounts.iter().all(|m| m.read_only) {
        Role::App
    } else {
        Role::Data
    }
}

/// Containers per service, and the project's containers that no current service owns.
pub fn containers_by_service(
    ps: &[PsEntry],
    services: &BTreeMap<String, ServiceJson>,
) -> (BTreeMap<String, Vec<Container>>, Vec<Container>) {
    let mut by_service: BTreeMap<String, Vec<Container>> = BTreeMap::new();
    let mut others = Vec::new();
    for p in ps {
        let c = Container {
            name: p.name.clone(),
            state: p.state.clone(),
            service: p.service.clone(),
            oneoff: p.is_oneoff(),
        };
        if !c.oneoff && services.contains_key(&p.service) {
            by_service.entry(p.service.clone()).or_default().push(c);
        } else {
            others.push(c);
        }
    }
    for list in by_service.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    (by_service, others)
}

/// The services of the model, each with its policy, kind and containers.
pub fn services(cfg: &ConfigJson, by_service: &BTreeMap<String, Vec<Container>>) -> Vec<Service> {
    cfg.services
        .iter()
        .map(|(name, svc)| {
            let containers = by_service.get(name).cloned().unwrap_or_default();
            let restart_policy = effective_restart_policy(svc);
            Service {
                name: name.clone(),
                kind: kind_of(&restart_policy, &containers),
                restart_policy,
                image: svc.image.clone(),
                built: svc.build.is_some(),
                containers,
            }
        })
        .collect()
}

/// Every running container that blocks a cold backup, with the reason.
pub fn blockers(services: &[Service], others: &[Container]) -> Vec<Blocker> {
    let mut out = Vec::new();
    for s in services {
        for c in s.containers.iter().filter(|c| c.is_live()) {
            let reason = match s.kind {
                Kind::Persistent => "persistent service running",
                Kind::OneShot => "one-shot service still running",
            };
            out.push(Blocker {
                container: c.name.clone(),
                service: s.name.clone(),
                reason: reason.into(),
            });
        }
    }
    for c in others.iter().filter(|c| c.is_live()) {
        let reason = if c.oneoff {
            "one-off container (`docker compose run`) running"
        } else {
            "container of a service not in the current config (another profile?) running"
        };
        out.push(Blocker {
            container: c.name.clone(),
            service: c.service.clone(),
            reason: reason.into(),
        });
    }
    out
}

/// The declared volumes, with mounts, roles and `x-nuwax-backup` overrides applied.
/// `is_file` tells whether a host path is a regular file (a seam for tests).
pub fn volumes(
    cfg: &ConfigJson,
    project_dir: &Path,
    is_file: &dyn Fn(&Path) -> bool,
) -> Vec<Volume> {
    let mut named: BTreeMap<String, Vec<Mount>> = BTreeMap::new();
    let mut binds: BTreeMap<PathBuf, Vec<Mount>> = BTreeMap::new();
    for (svc_name, svc) in &cfg.services {
        for v in &svc.volumes {
            let mount = Mount {
                service: svc_name.clone(),
                target: v.target.clone(),
                read_only: v.read_only,
            };
            match (v.kind.as_str(), &v.source) {
                ("volume", Some(src)) if !src.is_empty() => {
                    named.entry(src.clone()).or_default().push(mount)
                }
                ("bind", Some(src)) => binds.entry(PathBuf::from(src)).or_default().push(mount),
                _ => {} // tmpfs, anonymous volumes, npipe, cluster: nothing to keep
            }
        }
    }
    let mut out = Vec::new();
    for (key, mounts) in named {
        let decl = cfg.volumes.get(&key).cloned().unwrap_or_default();
        let ov = cfg.extension.volumes.get(&key);
        out.push(Volume::Volume {
            name: decl
                .name
                .clone()
                .unwrap_or_else(|| format!("{}_{}", cfg.name, key)),
            key,
            external: decl.external,
            driver: decl.driver.clone(),
            driver_opts: decl.driver_opts.clone(),
            labels: decl.labels.clone(),
            role: ov.and_then(|o| o.role).unwrap_or(Role::Data),
            excluded: ov.is_some_and(|o| o.exclude),
            used_by: used_by(&mounts),
            mounts,
        });
    }
    for (source, mounts) in binds {
        let file = is_file(&source);
        let ov = bind_override(cfg, project_dir, &source);
        out.push(Volume::Bind {
            inside_project: source.starts_with(project_dir),
            role: ov
                .and_then(|o| o.role)
                .unwrap_or_else(|| default_role(true, file, &mounts)),
            excluded: ov.is_some_and(|o| o.exclude),
            used_by: used_by(&mounts),
            is_file: file,
            source,
            mounts,
        });
    }
    out
}

fn used_by(mounts: &[Mount]) -> Vec<String> {
    let mut names: Vec<String> = mounts.iter().map(|m| m.service.clone()).collect();
    names.sort();
    names.dedup();
    names
}

fn bind_override<'a>(
    cfg: &'a ConfigJson,
    project_dir: &Path,
    source: &Path,
) -> Option<&'a super::model::VolumeOverride> {
    cfg.extension.volumes.iter().find_map(|(k, v)| {
        let p = Path::new(k);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            project_dir.join(p)
        };
        (normalize(&abs) == normalize(source)).then_some(v)
    })
}

/// Lexical normalization (`.` and `..` folded), enough to compare configured paths.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::model::{parse_ps, Deploy, RestartPolicyJson};

    fn svc(
        restart: Option<&str>,
        condition: Option<Option<&str>>,
        max: Option<u64>,
    ) -> ServiceJson {
        ServiceJson {
            restart: restart.map(String::from),
            deploy: condition.map(|c| Deploy {
                restart_policy: Some(RestartPolicyJson {
                    condition: c.map(String::from),
                    max_attempts: max,
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn restart_policy_follows_compose_v2() {
        let cases: &[(ServiceJson, &str)] = &[
            (svc(None, None, None), "no"),
            (svc(Some("no"), None, None), "no"),
            (svc(Some("always"), None, None), "always"),
            (svc(Some("unless-stopped"), None, None), "unless-stopped"),
            (svc(Some("on-failure"), None, None), "on-failure"),
            (svc(Some("on-failure:3"), None, None), "on-failure:3"),
            (svc(None, Some(Some("none")), None), "no"),
            (svc(None, Some(Some("no")), None), "no"),
            (svc(None, Some(Some("any")), None), "always"),
            (svc(None, Some(Some("always")), None), "always"),
            (svc(None, Some(Some("on-failure")), Some(5)), "on-failure:5"),
            (svc(None, Some(Some("on-failure")), None), "on-failure"),
            (
                svc(None, Some(Some("unless-stopped")), None),
                "unless-stopped",
            ),
            // a restart_policy with no condition: Compose gives an empty policy, no restart
            (svc(None, Some(None), None), "no"),
            // deploy.restart_policy overrides restart
            (svc(Some("always"), Some(Some("none")), None), "no"),
            (svc(Some("no"), Some(Some("any")), None), "always"),
        ];
        for (s, want) in cases {
            assert_eq!(effective_restart_policy(s), *want, "{s:?}");
        }
    }

    fn ctr(state: &str) -> Container {
        Container {
            name: "c".into(),
            state: state.into(),
            service: "s".into(),
            oneoff: false,
        }
    }

    #[test]
    fn kinds_follow_the_policy_and_on_failure_follows_running() {
        assert_eq!(kind_of("always", &[]), Kind::Persistent);
        assert_eq!(
            kind_of("unless-stopped", &[ctr("exited")]),
            Kind::Persistent
        );
        assert_eq!(kind_of("no", &[ctr("running")]), Kind::OneShot);
        assert_eq!(kind_of("on-failure:3", &[ctr("running")]), Kind::Persistent);
        assert_eq!(kind_of("on-failure:3", &[ctr("exited")]), Kind::OneShot);
        assert_eq!(kind_of("on-failure", &[]), Kind::OneShot);
    }

    #[test]
    fn roles_default_by_mount_shape() {
        let rw = Mount {
            service: "a".into(),
            target: "/x".into(),
            read_only: false,
        };
        let ro = Mount {
            read_only: true,
            ..rw.clone()
        };
        assert_eq!(
            default_role(false, false, std::slice::from_ref(&ro)),
            Role::Data
        );
        assert_eq!(
            default_role(true, false, std::slice::from_ref(&rw)),
            Role::Data
        );
        assert_eq!(
            default_role(true, false, std::slice::from_ref(&ro)),
            Role::App
        );
        assert_eq!(
            default_role(true, false, &[ro.clone(), rw.clone()]),
            Role::Data
        );
        assert_eq!(default_role(true, true, &[rw]), Role::App);
    }

    const CONFIG: &str = r#"{
      "name": "p",
      "services": {
        "db": {"image": "pg:15", "restart": "always", "volumes": [
          {"type": "volume", "source": "dbdata", "target": "/data"},
          {"type": "bind", "source": "/proj/data", "target": "/d"},
          {"type": "bind", "source": "/proj/conf", "target": "/c", "read_only": true},
          {"type": "bind", "source": "/proj/app.conf", "target": "/etc/app.conf"},
          {"type": "bind", "source": "/elsewhere/x", "target": "/x"},
          {"type": "tmpfs", "target": "/tmp"}]},
        "job": {"deploy": {"restart_policy": {}}, "volumes": [
          {"type": "volume", "source": "dbdata", "target": "/ro", "read_only": true},
          {"type": "volume", "source": "ext", "target": "/ext"}]}
      },
      "volumes": {"dbdata": {"name": "p_dbdata"}, "ext": {"name": "shared", "external": true}},
      "x-nuwax-backup": {"volumes": {"ext": {"exclude": true}, "./conf": {"role": "data"}}}
    }"#;

    #[test]
    fn volumes_get_kinds_roles_users_and_overrides() {
        let cfg: ConfigJson = serde_json::from_str(CONFIG).unwrap();
        let vols = volumes(&cfg, Path::new("/proj"), &|p: &Path| {
            p.ends_with("app.conf")
        });
        let labels: Vec<String> = vols.iter().map(Volume::label).collect();
        assert_eq!(
            labels,
            [
                "p_dbdata",
                "shared",
                "/elsewhere/x",
                "/proj/app.conf",
                "/proj/conf",
                "/proj/data"
            ]
        );
        match &vols[0] {
            Volume::Volume {
                key,
                used_by,
                role,
                excluded,
                external,
                ..
            } => {
                assert_eq!(key, "dbdata");
                assert_eq!(used_by, &["db", "job"]);
                assert_eq!(*role, Role::Data);
                assert!(!excluded && !external);
            }
            _ => panic!("named volume first"),
        }
        assert!(vols[1].excluded());
        assert!(matches!(
            &vols[2],
            Volume::Bind {
                inside_project: false,
                ..
            }
        ));
        assert_eq!(vols[3].role(), Role::App, "a bind-mounted file is app");
        assert_eq!(
            vols[4].role(),
            Role::Data,
            "override turns a ro bind into data"
        );
        assert_eq!(vols[5].role(), Role::Data);
    }

    #[test]
    fn blockers_name_every_running_container() {
        let cfg: ConfigJson = serde_json::from_str(CONFIG).unwrap();
        let ps = parse_ps(concat!(
            r#"{"Name":"p-db-1","Service":"db","State":"running","Labels":"com.docker.compose.oneoff=False"}"#, "\n",
            r#"{"Name":"p-job-1","Service":"job","State":"exited","Labels":"com.docker.compose.oneoff=False"}"#, "\n",
            r#"{"Name":"p-job-run-1","Service":"job","State":"running","Labels":"com.docker.compose.oneoff=True"}"#, "\n",
            r#"{"Name":"p-old-1","Service":"old","State":"exited","Labels":""}"#
        ))
        .unwrap();
        let (by, others) = containers_by_service(&ps, &cfg.services);
        let svcs = services(&cfg, &by);
        assert_eq!(svcs[0].kind, Kind::Persistent);
        assert_eq!(svcs[1].restart_policy, "no");
        let b = blockers(&svcs, &others);
        assert_eq!(
            b.iter().map(|b| b.container.as_str()).collect::<Vec<_>>(),
            ["p-db-1", "p-job-run-1"]
        );
        assert_eq!(b[0].reason, "persistent service running");
    }
}
