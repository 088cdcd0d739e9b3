//! `metrics` and `--metrics-file` (issue 30, metrics): Prometheus text parsed by the reference
//! parser (Python's `prometheus_client.parser`), its values those `list --format json` shows.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::harness::{app_running, app_with, Project};

/// `(name, labels as JSON, value)` of every sample, as the reference parser reads the text.
fn parsed(text: &str) -> Vec<(String, serde_json::Value, f64)> {
    let script = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families as f\nfor fam in f(sys.stdin.read()):\n    for s in fam.samples:\n        print(json.dumps([s.name, s.labels, s.value]))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v[0].as_str().unwrap().to_string(),
                v[1].clone(),
                v[2].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The value of sample `name` of project `project` (and `extra` labels), if there is one.
fn value(
    samples: &[(String, serde_json::Value, f64)],
    name: &str,
    project: &str,
    extra: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name && l["project"] == project && extra.iter().all(|(k, v)| l[*k] == *v)
        })
        .map(|s| s.2)
}

fn seconds(utc: &serde_json::Value) -> f64 {
    chrono::DateTime::parse_from_rfc3339(utc.as_str().unwrap())
        .unwrap()
        .timestamp() as f64
}

#[test]
fn metrics_and_the_textfile_parse_and_match_the_catalog() {
    let Some(p) = Project::new("metrics", &app_with("\"./data:/data\"")) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/f"), "x").unwrap();
    p.up();
    let first = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json();
    let ok = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json();
    let textfile = p.path("metrics.prom");
    let file_arg = textfile.to_str().unwrap();
    // A run that fails is the newest run: its row is failed, the last success stays.
    let full = [("NUWAX_BACKUP_TEST_FAIL_AT", "create-writing")];
    p.plugin_env(&full, &["create", "--stop", "--metrics-file", file_arg])
        .failure(10);
    app_running(&p);
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    let newest = &rows[0];
    assert_eq!(newest["status"], "failed");
    let text = p.plugin(&["metrics"]).success().stdout;
    let s = parsed(&text);
    let name = p.name.as_str();
    assert_eq!(
        value(&s, "nuwaxbackup_last_run_success", name, &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "nuwaxbackup_last_run_timestamp_seconds", name, &[]),
        Some(seconds(&newest["created_at"]))
    );
    assert_eq!(
        value(&s, "nuwaxbackup_last_success_timestamp_seconds", name, &[]),
        Some(seconds(&ok["created_at"]))
    );
    assert_eq!(
        value(&s, "nuwaxbackup_last_archive_bytes", name, &[]),
        ok["size_bytes"].as_f64()
    );
    assert_eq!(
        value(&s, "nuwaxbackup_last_duration_seconds", name, &[]),
        Some(newest["duration_ms"].as_f64().unwrap() / 1000.0)
    );
    assert_eq!(
        value(
            &s,
            "nuwaxbackup_backups",
            name,
            &[("status", "completed"), ("location", "local")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "nuwaxbackup_backups",
            name,
            &[("status", "failed"), ("location", "none")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "nuwaxbackup_last_verify_timestamp_seconds", name, &[]),
        None
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(s.iter().all(|(_, l, _)| l["host"] == host.trim()), "{text}");
    // The failed create rewrote the textfile: the same text, readable by others.
    assert_textfile(&textfile, &text);
    // verify changes the catalog: the file now has its time; a successful run's too.
    let id = first["id"].to_string();
    p.plugin(&["verify", &id, "--metrics-file", file_arg])
        .success();
    let after = parsed(&std::fs::read_to_string(&textfile).unwrap());
    let verified = value(
        &after,
        "nuwaxbackup_last_verify_timestamp_seconds",
        name,
        &[],
    )
    .unwrap();
    assert!(
        (verified - chrono::Utc::now().timestamp() as f64).abs() < 120.0,
        "{verified}"
    );
    // Commands that change nothing leave the file as it is.
    std::fs::write(&textfile, "kept").unwrap();
    p.plugin(&["list", "--metrics-file", file_arg]).success();
    assert_eq!(std::fs::read_to_string(&textfile).unwrap(), "kept");
    let all = p.plugin(&["metrics", "--all-projects"]).success().stdout;
    assert!(parsed(&all).iter().any(|(_, l, _)| l["project"] == name));
}

#[track_caller]
fn assert_textfile(path: &Path, want: &str) {
    let meta = std::fs::metadata(path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(std::fs::read_to_string(path).unwrap(), want);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_metrics_file_that_cannot_be_written_is_a_warning_and_the_exit_code_is_the_runs() {
    let Some(p) = Project::new("metrics-bad", &app_with("\"./data:/data\"")) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    p.up();
    let run = p
        .plugin(&[
            "create",
            "--stop",
            "--metrics-file",
            "/nonexistent-dir/m.prom",
        ])
        .success();
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("warning: writing the metrics file /nonexistent-dir/m.prom: ")),
        "{}",
        run.stderr
    );
    app_running(&p);
}
