//! Prometheus text exposition of the catalog (`metrics`, `--metrics-file`): pure rendering
//! from rows, and the atomic write node_exporter's textfile collector reads.
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::catalog::BackupRow;
use crate::records::{RestoreTest, Status};

/// One project's rows (newest first) and the time of its last verification.
pub struct ProjectRows {
    pub project: String,
    pub rows: Vec<BackupRow>,
    pub last_verified: Option<String>,
}

/// `(name, help)` of every metric family, in the order they are printed.
const FAMILIES: &[(&str, &str)] = &[
    (
        "nuwaxbackup_last_success_timestamp_seconds",
        "When the newest completed backup was made.",
    ),
    (
        "nuwaxbackup_last_run_timestamp_seconds",
        "When the newest backup run (completed or failed) began.",
    ),
    (
        "nuwaxbackup_last_run_success",
        "1 when the newest backup run completed, 0 when it failed.",
    ),
    (
        "nuwaxbackup_last_duration_seconds",
        "How long the newest backup run took.",
    ),
    (
        "nuwaxbackup_last_downtime_seconds",
        "How long the newest backup run kept the services stopped.",
    ),
    (
        "nuwaxbackup_last_archive_bytes",
        "Size of the newest completed backup's archive.",
    ),
    (
        "nuwaxbackup_backups",
        "Backups in the catalog, by status and where their archive is.",
    ),
    (
        "nuwaxbackup_last_verify_timestamp_seconds",
        "When a backup of the project was last verified.",
    ),
    (
        "nuwaxbackup_last_restore_test_passed_timestamp_seconds",
        "When a restore test of a backup of the project last passed.",
    ),
    (
        "nuwaxbackup_last_restore_test_success",
        "1 when the newest restore test passed, 0 when it failed.",
    ),
];

/// The exposition text for `projects` on `host`.
pub fn render(host: &str, projects: &[ProjectRows]) -> String {
    let mut out = String::new();
    for (name, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for p in projects {
            for (labels, value) in samples(name, p) {
                let mut all = vec![("project", p.project.clone()), ("host", host.to_string())];
                all.extend(labels);
                let _ = writeln!(out, "{name}{{{}}} {value}", label_text(&all));
            }
        }
    }
    out
}

/// The samples of family `name` for one project: extra labels and the value.
fn samples(name: &str, p: &ProjectRows) -> Vec<(Vec<(&'static str, String)>, f64)> {
    let newest = p.rows.first();
    let success = p.rows.iter().find(|r| r.status == Status::Completed);
    let one = |v: Option<f64>| v.map(|v| (Vec::new(), v)).into_iter().collect();
    match name {
        "nuwaxbackup_last_success_timestamp_seconds" => {
            one(success.and_then(|r| seconds(&r.created_at)))
        }
        "nuwaxbackup_last_run_timestamp_seconds" => {
            one(newest.and_then(|r| seconds(&r.created_at)))
        }
        "nuwaxbackup_last_run_success" => {
            one(newest.map(|r| f64::from(u8::from(r.status == Status::Completed))))
        }
        "nuwaxbackup_last_duration_seconds" => one(newest.map(|r| r.duration_ms as f64 / 1000.0)),
        "nuwaxbackup_last_downtime_seconds" => one(newest
            .and_then(|r| r.downtime_ms)
            .map(|ms| ms as f64 / 1000.0)),
        "nuwaxbackup_last_archive_bytes" => one(success.map(|r| r.size_bytes as f64)),
        "nuwaxbackup_backups" => counts(&p.rows),
        "nuwaxbackup_last_verify_timestamp_seconds" => {
            one(p.last_verified.as_deref().and_then(seconds))
        }
        "nuwaxbackup_last_restore_test_passed_timestamp_seconds" => {
            one(crate::catalog::last_passed_restore_test(&p.rows)
                .and_then(|r| r.restore_tested_at.as_deref())
                .and_then(seconds))
        }
        "nuwaxbackup_last_restore_test_success" => one(p
            .rows
            .iter()
            .filter(|r| r.restore_test.is_some())
            .max_by(|a, b| a.restore_tested_at.cmp(&b.restore_tested_at))
            .map(|r| f64::from(u8::from(r.restore_test == Some(RestoreTest::Passed))))),
        _ => Vec::new(),
    }
}

/// Rows counted by (status, location), every pair that occurs.
fn counts(rows: &[BackupRow]) -> Vec<(Vec<(&'static str, String)>, f64)> {
    let mut by: std::collections::BTreeMap<(String, &str), f64> = Default::default();
    for r in rows {
        let location = match r.status {
            Status::Completed => r.location(),
            Status::Failed => "none",
        };
        *by.entry((r.status.to_string(), location)).or_default() += 1.0;
    }
    by.into_iter()
        .map(|((status, location), n)| {
            (
                vec![("status", status), ("location", location.to_string())],
                n,
            )
        })
        .collect()
}

fn seconds(utc: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(utc)
        .ok()
        .map(|t| t.timestamp() as f64)
}

/// `a="x",b="y"`, values escaped as the format wants (`\\`, `\"`, `\n`).
fn label_text(labels: &[(&str, String)]) -> String {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// This machine's name, for the `host` label.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Replaces `path` with `text` at once (a temporary file beside it, then a rename), mode
/// 0644 so that node_exporter, another user, can read it.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing the metrics file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::BackupType;

    fn row(id: i64, status: Status, created_at: &str) -> BackupRow {
        BackupRow {
            id,
            project: "p".into(),
            project_dir: "/p".into(),
            file_path: "/nonexistent/a.tar.gz".into(),
            service_version: "1".into(),
            backup_type: BackupType::Manual,
            status,
            created_at: created_at.into(),
            size_bytes: 100 * id as u64,
            sha256: None,
            file_count: 1,
            compression: "gzip".into(),
            duration_ms: 1500,
            error: None,
            encrypted: false,
            recipients: Vec::new(),
            capture: None,
            downtime_ms: Some(250),
            capture_ms: None,
            restore_tested_at: None,
            restore_test: None,
            restore_test_error: None,
            remote_url: None,
            remote_status: None,
            remote_error: None,
            remote_upload_id: None,
        }
    }

    #[test]
    fn the_newest_run_and_the_newest_success_are_told_apart() {
        let p = ProjectRows {
            project: "we\"ird".into(),
            rows: vec![
                row(3, Status::Failed, "2026-01-03T00:00:00Z"),
                row(2, Status::Completed, "2026-01-02T00:00:00Z"),
            ],
            last_verified: None,
        };
        let text = render("h", &[p]);
        let labels = r#"project="we\"ird",host="h""#;
        for line in [
            format!("nuwaxbackup_last_success_timestamp_seconds{{{labels}}} 1767312000"),
            format!("nuwaxbackup_last_run_timestamp_seconds{{{labels}}} 1767398400"),
            format!("nuwaxbackup_last_run_success{{{labels}}} 0"),
            format!("nuwaxbackup_last_duration_seconds{{{labels}}} 1.5"),
            format!("nuwaxbackup_last_downtime_seconds{{{labels}}} 0.25"),
            format!("nuwaxbackup_last_archive_bytes{{{labels}}} 200"),
            format!(r#"nuwaxbackup_backups{{{labels},status="completed",location="none"}} 1"#),
            format!(r#"nuwaxbackup_backups{{{labels},status="failed",location="none"}} 1"#),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("nuwaxbackup_last_verify_timestamp_seconds{"));
    }
}
