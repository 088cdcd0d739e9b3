//! Hooks: commands the operator declares to run on the host (`x-nuwax-backup.hooks.<phase>`)
//! and in running services (`nuwaxbackup.<phase>` labels) around a backup and a rollback.
//! This module is the plan, read from the compose model and pure; [`run`] runs a phase and
//! [`exec`] runs one command under a timeout (the restore test uses it too).
pub mod exec;
pub mod run;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The services still run; nothing stopped yet (maintenance mode on, a dump into a bind).
    BeforeBackup,
    /// The services run again after the capture (the archive may still be written).
    AfterStart,
    /// The backup's row is written (and its upload done).
    AfterBackup,
    /// Before a rollback stops or changes anything.
    BeforeRollback,
    /// After a rollback, the services started again.
    AfterRollback,
    /// Any failure, after the tool's own cleanup and restart.
    OnError,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::BeforeBackup,
        Phase::AfterStart,
        Phase::AfterBackup,
        Phase::BeforeRollback,
        Phase::AfterRollback,
        Phase::OnError,
    ];
    /// What a create runs, in order.
    pub const CREATE: [Phase; 4] = [
        Phase::BeforeBackup,
        Phase::AfterStart,
        Phase::AfterBackup,
        Phase::OnError,
    ];
    /// What a rollback runs, in order.
    pub const ROLLBACK: [Phase; 3] = [Phase::BeforeRollback, Phase::AfterRollback, Phase::OnError];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::BeforeBackup => "before-backup",
            Phase::AfterStart => "after-start",
            Phase::AfterBackup => "after-backup",
            Phase::BeforeRollback => "before-rollback",
            Phase::AfterRollback => "after-rollback",
            Phase::OnError => "on-error",
        }
    }

    fn parse(word: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == word)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failing hook does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// The run fails (exit 17); later phases do not run.
    Fail,
    /// A warning; the run goes on.
    Continue,
}

/// How long a hook may run unless it says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One command to run in one phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub phase: Phase,
    /// The service it runs in (`docker compose exec`); none: on the host, in the project folder.
    pub service: Option<String>,
    pub command: String,
    /// `nuwaxbackup.<phase>.user`: the user it runs as in the container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "timeout_s", serialize_with = "as_secs")]
    pub timeout: Duration,
    pub on_error: OnError,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Hook {
    /// `before-backup hook (service db)` / `before-backup hook (host)`.
    pub fn name(&self) -> String {
        match &self.service {
            Some(s) => format!("{} hook (service {s})", self.phase),
            None => format!("{} hook (host)", self.phase),
        }
    }

    /// The prefix of its output lines on stderr: `before-backup db |`.
    pub fn prefix(&self) -> String {
        format!(
            "{} {} |",
            self.phase,
            self.service.as_deref().unwrap_or("host")
        )
    }
}

/// `x-nuwax-backup.hooks.<phase>` entries: a command, or a command with its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HostHook {
    Command(String),
    Full {
        run: String,
        #[serde(default)]
        timeout: Option<String>,
        #[serde(default, rename = "on-error")]
        on_error: Option<String>,
    },
}

/// Every hook of a project, in the order they run within a phase: host hooks as listed, then
/// service hooks in the compose file's service order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    list: Vec<Hook>,
}

/// The label namespace, and its one key that is not a hook (the restore test's command).
const LABEL_PREFIX: &str = "nuwaxbackup.";
pub const RESTORE_TEST_LABEL: &str = "nuwaxbackup.restore-test";

impl Hooks {
    /// Reads the hooks of a compose model: `host` from `x-nuwax-backup.hooks`, `services` as
    /// (name, labels) in the order hooks run. Fails with a message naming the key for an
    /// unknown phase or setting, a bad timeout, or a setting without its command.
    pub fn plan(
        host: &BTreeMap<String, Vec<HostHook>>,
        services: &[(&str, &BTreeMap<String, String>)],
    ) -> Result<Hooks, String> {
        let mut by_phase: BTreeMap<Phase, Vec<Hook>> = BTreeMap::new();
        for (word, entries) in host {
            let phase =
                Phase::parse(word).ok_or_else(|| unknown_phase("x-nuwax-backup.hooks.", word))?;
            for e in entries {
                by_phase
                    .entry(phase)
                    .or_default()
                    .push(host_hook(phase, e)?);
            }
        }
        for (service, labels) in services {
            for hook in service_hooks(service, labels)? {
                by_phase.entry(hook.phase).or_default().push(hook);
            }
        }
        Ok(Hooks {
            list: by_phase.into_values().flatten().collect(),
        })
    }

    /// The hooks of `phase`, in order.
    pub fn of(&self, phase: Phase) -> impl Iterator<Item = &Hook> {
        self.list.iter().filter(move |h| h.phase == phase)
    }

    /// The hooks of these phases (what a dry run lists).
    pub fn listed(&self, phases: &[Phase]) -> Vec<Hook> {
        self.list
            .iter()
            .filter(|h| phases.contains(&h.phase))
            .cloned()
            .collect()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Leaves out the hooks `drop` says (service hooks whose service does not run).
    pub fn without(&self, drop: impl Fn(&Hook) -> bool) -> Hooks {
        Hooks {
            list: self.list.iter().filter(|h| !drop(h)).cloned().collect(),
        }
    }
}

/// The lines a dry run prints for `hooks`: one per phase, `before-backup: host `cmd`, db `cmd``.
pub fn describe(hooks: &[Hook]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for phase in Phase::ALL {
        let each: Vec<String> = hooks
            .iter()
            .filter(|h| h.phase == phase)
            .map(|h| format!("{} `{}`", h.service.as_deref().unwrap_or("host"), h.command))
            .collect();
        if !each.is_empty() {
            out.push(format!("{phase}: {}", each.join(", ")));
        }
    }
    out
}

/// Whether a label is in the hooks' namespace (`nuwaxbackup.`, the restore test's aside).
pub fn is_hook_label(key: &str) -> bool {
    key.starts_with(LABEL_PREFIX) && key != RESTORE_TEST_LABEL
}

fn unknown_phase(prefix: &str, word: &str) -> String {
    let all: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    format!(
        "{prefix}{word}: unknown hook phase `{word}`; the phases are {}",
        all.join(", ")
    )
}

fn host_hook(phase: Phase, e: &HostHook) -> Result<Hook, String> {
    let key = format!("x-nuwax-backup.hooks.{phase}");
    let (command, timeout, on_error) = match e {
        HostHook::Command(c) => (unescape(c), None, None),
        HostHook::Full {
            run,
            timeout,
            on_error,
        } => (unescape(run), timeout.as_deref(), on_error.as_deref()),
    };
    if command.trim().is_empty() {
        return Err(format!("{key}: a hook's command is empty"));
    }
    Ok(Hook {
        phase,
        service: None,
        command,
        user: None,
        timeout: parse_timeout(&key, timeout)?,
        on_error: parse_on_error(&key, on_error)?,
    })
}

/// The hooks in one service's labels (`nuwaxbackup.<phase>[.user|.timeout|.on-error]`).
fn service_hooks(service: &str, labels: &BTreeMap<String, String>) -> Result<Vec<Hook>, String> {
    let mut commands: BTreeMap<Phase, &str> = BTreeMap::new();
    let mut settings: BTreeMap<(Phase, &str), &str> = BTreeMap::new();
    for (key, value) in labels {
        if !is_hook_label(key) {
            continue;
        }
        let rest = &key[LABEL_PREFIX.len()..];
        let (word, setting) = match rest.split_once('.') {
            Some((w, s)) => (w, Some(s)),
            None => (rest, None),
        };
        let where_ = format!("service {service}: label ");
        let phase = Phase::parse(word)
            .ok_or_else(|| unknown_phase(&format!("{where_}{LABEL_PREFIX}"), word))?;
        match setting {
            None => {
                commands.insert(phase, value);
            }
            Some(s @ ("user" | "timeout" | "on-error")) => {
                settings.insert((phase, s), value);
            }
            Some(s) => {
                return Err(format!(
                    "{where_}{key}: unknown hook setting `{s}`; the settings are user, timeout and on-error"
                ))
            }
        }
    }
    if let Some(((phase, s), _)) = settings
        .iter()
        .find(|((p, _), _)| !commands.contains_key(p))
    {
        return Err(format!(
            "service {service}: label {LABEL_PREFIX}{phase}.{s} is set but {LABEL_PREFIX}{phase} (the command) is not"
        ));
    }
    commands
        .into_iter()
        .map(|(phase, command)| {
            let key = format!("service {service}: label {LABEL_PREFIX}{phase}");
            if command.trim().is_empty() {
                return Err(format!("{key}: the command is empty"));
            }
            let get = |s: &str| settings.get(&(phase, s)).copied();
            Ok(Hook {
                phase,
                service: Some(service.to_string()),
                command: unescape(command),
                user: get("user").map(String::from),
                timeout: parse_timeout(&format!("{key}.timeout"), get("timeout"))?,
                on_error: parse_on_error(&format!("{key}.on-error"), get("on-error"))?,
            })
        })
        .collect()
}

/// `docker compose config` prints every `$` of a value as `$$` (its output is a compose file
/// again); a command is run as the file's author wrote it after interpolation.
pub fn unescape(text: &str) -> String {
    text.replace("$$", "$")
}

fn parse_timeout(key: &str, text: Option<&str>) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(DEFAULT_TIMEOUT);
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{key}: `{text}` is not a duration; write it as 30s, 5m or 1h"
        )),
    }
}

fn parse_on_error(key: &str, text: Option<&str>) -> Result<OnError, String> {
    match text.map(str::trim) {
        None | Some("fail") => Ok(OnError::Fail),
        Some("continue") => Ok(OnError::Continue),
        Some(other) => Err(format!("{key}: `{other}` is not fail or continue")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn host_hooks_come_first_then_services_in_the_given_order() {
        let host: BTreeMap<String, Vec<HostHook>> = serde_json::from_str(
            r#"{"before-backup":["echo one",{"run":"echo two","timeout":"10s","on-error":"continue"}]}"#,
        )
        .unwrap();
        let zeta = labels(&[("nuwaxbackup.before-backup", "z"), ("other", "x")]);
        let alpha = labels(&[
            ("nuwaxbackup.before-backup", "a"),
            ("nuwaxbackup.before-backup.user", "postgres"),
            ("nuwaxbackup.on-error", "e"),
        ]);
        let hooks = Hooks::plan(&host, &[("zeta", &zeta), ("alpha", &alpha)]).unwrap();
        let order: Vec<(Option<&str>, &str)> = hooks
            .of(Phase::BeforeBackup)
            .map(|h| (h.service.as_deref(), h.command.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                (None, "echo one"),
                (None, "echo two"),
                (Some("zeta"), "z"),
                (Some("alpha"), "a")
            ]
        );
        let two = hooks.of(Phase::BeforeBackup).nth(1).unwrap();
        assert_eq!(
            (two.timeout, two.on_error),
            (Duration::from_secs(10), OnError::Continue)
        );
        let a = hooks.of(Phase::BeforeBackup).nth(3).unwrap();
        assert_eq!(
            (a.user.as_deref(), a.timeout),
            (Some("postgres"), DEFAULT_TIMEOUT)
        );
        assert_eq!(hooks.of(Phase::OnError).count(), 1);
    }

    #[test]
    fn mistakes_are_refused_naming_the_key() {
        let none = BTreeMap::new();
        let cases = [
            (labels(&[("nuwaxbackup.before-bakup", "x")]), "unknown hook phase `before-bakup`"),
            (
                labels(&[("nuwaxbackup.after-start", "x"), ("nuwaxbackup.after-start.timout", "1s")]),
                "unknown hook setting `timout`",
            ),
            (
                labels(&[("nuwaxbackup.after-start", "x"), ("nuwaxbackup.after-start.timeout", "soon")]),
                "label nuwaxbackup.after-start.timeout: `soon` is not a duration",
            ),
            (
                labels(&[("nuwaxbackup.on-error.on-error", "continue")]),
                "nuwaxbackup.on-error.on-error is set but nuwaxbackup.on-error (the command) is not",
            ),
            (
                labels(&[("nuwaxbackup.on-error", "x"), ("nuwaxbackup.on-error.on-error", "ignore")]),
                "`ignore` is not fail or continue",
            ),
        ];
        for (l, want) in cases {
            let err = Hooks::plan(&none, &[("db", &l)]).unwrap_err();
            assert!(
                err.contains(want) && err.starts_with("service db: "),
                "{err}"
            );
        }
        let host: BTreeMap<String, Vec<HostHook>> =
            serde_json::from_str(r#"{"after-backups":["x"]}"#).unwrap();
        let err = Hooks::plan(&host, &[]).unwrap_err();
        assert!(
            err.starts_with("x-nuwax-backup.hooks.after-backups: unknown hook phase"),
            "{err}"
        );
    }

    #[test]
    fn the_restore_test_label_is_not_a_hook() {
        let l = labels(&[(RESTORE_TEST_LABEL, "pg_isready")]);
        assert!(Hooks::plan(&BTreeMap::new(), &[("db", &l)])
            .unwrap()
            .is_empty());
    }
}
