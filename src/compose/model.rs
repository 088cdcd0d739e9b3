//! Serde types for `docker compose config --format json` and `docker compose ps --format json`.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

/// The normalized compose model, as much of it as a backup needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigJson {
    pub name: String,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceJson>,
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeJson>,
    #[serde(rename = "x-nuwax-backup", default)]
    pub extension: Extension,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceJson {
    pub image: Option<String>,
    #[serde(default)]
    pub build: Option<serde_json::Value>,
    pub restart: Option<String>,
    pub deploy: Option<Deploy>,
    #[serde(default)]
    pub volumes: Vec<ServiceVolume>,
    /// Compose prints labels as a map, whichever form the file used.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Deploy {
    pub restart_policy: Option<RestartPolicyJson>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RestartPolicyJson {
    pub condition: Option<String>,
    pub max_attempts: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceVolume {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: Option<String>,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct VolumeJson {
    pub name: Option<String>,
    #[serde(default)]
    pub external: bool,
    pub driver: Option<String>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The top-level `x-nuwax-backup:` extension of a compose file (documented in docs/operating.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Folder for archives, relative to the project directory or absolute.
    pub storage: Option<String>,
    /// The version recorded with each backup.
    pub version: Option<String>,
    /// Per volume: a named volume's key, or a bind path (relative to the project dir or absolute).
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeOverride>,
    /// Encrypt archives to these age public keys (`create --recipient` replaces them).
    pub encrypt: Option<EncryptConfig>,
    /// Copy each archive to this bucket (`s3://BUCKET[/PREFIX]`; `create --remote` wins).
    pub remote: Option<String>,
    /// Where to tell the outcome of create, rollback, prune, push and recover (`--notify`);
    /// read by `Project::settings`.
    #[serde(default)]
    pub notify: Vec<String>,
    /// Host hooks by phase (`before-backup: [COMMAND…]`; see `crate::hooks`).
    #[serde(default)]
    pub hooks: BTreeMap<String, Vec<crate::hooks::HostHook>>,
    /// What a restore test runs in the throw-away copy once it is up (read from the archived
    /// model by `restore_test`; declared here so that the file is accepted).
    #[serde(rename = "restore-test", default)]
    #[allow(dead_code)]
    pub restore_test: Vec<RestoreTestCommand>,
}

/// `x-nuwax-backup.restore-test: [{service, command}]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestoreTestCommand {
    pub service: String,
    pub command: String,
}

/// `x-nuwax-backup.encrypt`: public keys, listed and/or in a file (relative to the project).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptConfig {
    #[serde(default)]
    pub recipients: Vec<String>,
    pub recipients_file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOverride {
    pub role: Option<Role>,
    #[serde(default)]
    pub exclude: bool,
}

pub use crate::records::Role;

/// One container as `docker compose ps -a --format json` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct PsEntry {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Service", default)]
    pub service: String,
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "Labels", default)]
    pub labels: String,
    /// `healthy`, `unhealthy`, `starting`, or empty (no healthcheck).
    #[serde(rename = "Health", default)]
    pub health: String,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i64,
}

impl PsEntry {
    /// A label's value from the `k=v,k=v` string compose prints.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .split(',')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// A `docker compose run` container.
    pub fn is_oneoff(&self) -> bool {
        self.label("com.docker.compose.oneoff")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// Parses `ps --format json` output in both forms: one JSON array (Compose before v2.21) or one
/// object per line (v2.21 and later); empty output is no containers.
pub fn parse_ps(text: &str) -> Result<Vec<PsEntry>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if text.starts_with('[') {
        return serde_json::from_str(text).context("reading `docker compose ps` JSON array");
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("reading `docker compose ps` line {l:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE_A: &str = r#"{"Name":"p-db-1","Service":"db","State":"running","ExitCode":0,"Image":"img","Project":"p","Labels":"com.docker.compose.oneoff=False,com.docker.compose.project=p"}"#;
    const LINE_B: &str = r#"{"Name":"p-web-run-1","Service":"web","State":"exited","ExitCode":1,"Image":"img","Project":"p","Labels":"com.docker.compose.project=p,com.docker.compose.oneoff=True"}"#;

    #[test]
    fn ps_reads_one_object_per_line() {
        let ps = parse_ps(&format!("{LINE_A}\n{LINE_B}\n")).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].name, "p-db-1");
        assert_eq!(ps[1].state, "exited");
        assert!(!ps[0].is_oneoff());
        assert!(ps[1].is_oneoff());
    }

    #[test]
    fn ps_reads_a_json_array() {
        let ps = parse_ps(&format!("[{LINE_A},{LINE_B}]")).unwrap();
        assert_eq!(
            ps.iter().map(|p| p.service.as_str()).collect::<Vec<_>>(),
            ["db", "web"]
        );
    }

    #[test]
    fn ps_reads_empty_output_as_no_containers() {
        assert!(parse_ps("").unwrap().is_empty());
        assert!(parse_ps("\n").unwrap().is_empty());
        assert!(parse_ps("[]").unwrap().is_empty());
    }

    #[test]
    fn labels_are_looked_up_by_exact_key() {
        let ps = parse_ps(LINE_A).unwrap();
        assert_eq!(ps[0].label("com.docker.compose.project"), Some("p"));
        assert_eq!(ps[0].label("com.docker.compose.proj"), None);
    }

    #[test]
    fn extension_keys_are_read_and_unknown_ones_refused() {
        let cfg: ConfigJson = serde_json::from_str(
            r#"{"name":"p","x-nuwax-backup":{"storage":"./bk","version":"2","volumes":{"cache":{"exclude":true},"./conf":{"role":"data"}}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.extension.storage.as_deref(), Some("./bk"));
        assert!(cfg.extension.volumes["cache"].exclude);
        assert_eq!(cfg.extension.volumes["./conf"].role, Some(Role::Data));
        let bad =
            serde_json::from_str::<ConfigJson>(r#"{"name":"p","x-nuwax-backup":{"stroage":"x"}}"#);
        assert!(bad.is_err());
    }
}
