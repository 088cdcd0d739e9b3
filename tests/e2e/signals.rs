//! Signals and closed streams never leave production down: SIGHUP cancels as SIGTERM does, a
//! closed stderr is no panic, on-error runs once for a run that began and failed (and is not
//! cancelled by the cancel that caused it), never for a refusal; hook output is bounded.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{app_running, wait_for_file, Project, DAEMON};

/// `app` on the bind `./data`, with a host on-error hook that appends to `log`, and
/// `before` as the host before-backup hook.
fn hooked(before: &str) -> String {
    format!(
        r#"name: {{name}}
services:
  app:
    image: {{image}}
    command: {DAEMON}
    restart: always
    volumes: ["./data:/data"]
x-nuwax-backup:
  hooks:
    before-backup: ['{before}']
    on-error: ['sleep 0.3; echo "on-error $$NUWAX_BACKUP_STATUS" >> on-error.log']
"#
    )
}

fn project(test: &str, before: &str) -> Option<Project> {
    let p = Project::new(test, &hooked(before))?;
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/f"), "one").unwrap();
    p.up();
    Some(p)
}

fn on_error_log(p: &Project) -> Vec<String> {
    std::fs::read_to_string(p.path("on-error.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn gate(dir: &Path) -> (Vec<(&'static str, String)>, PathBuf) {
    let file = dir.join("gate");
    let env = vec![
        ("NUWAX_BACKUP_TEST_PAUSE_AT", "create-capturing".to_string()),
        (
            "NUWAX_BACKUP_TEST_PAUSE_FILE",
            file.to_string_lossy().into_owned(),
        ),
    ];
    (env, PathBuf::from(format!("{}.reached", file.display())))
}

fn completed_rows(p: &Project) -> i64 {
    p.catalog_db()
        .query_row(
            "SELECT count(*) FROM backups WHERE status = 'completed'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn sighup_sigterm_and_sigint_while_the_services_are_down_start_them_again_and_run_on_error_once() {
    for (sig, name) in [
        (libc::SIGHUP, "hup"),
        (libc::SIGTERM, "term"),
        (libc::SIGINT, "int"),
    ] {
        let Some(p) = project(&format!("sig-{name}"), "true") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (env, reached) = gate(dir.path());
        let child = p.standalone_spawn_with(&env, &["create", "--stop"], Stdio::piped());
        wait_for_file(&reached, 60);
        assert!(p.states("app").iter().all(|s| !s.ends_with(" running")));
        // SAFETY: kill(2) on a child we started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "SIG{name}: {err}");
        // Running again with no recover; on-error ran once, whole (not cancelled).
        app_running(&p);
        assert_eq!(on_error_log(&p), ["on-error failed"], "SIG{name}: {err}");
        assert!(!err.contains("did not run"), "SIG{name}: {err}");
        // Nothing left for recover: its next run says so.
        let r = p.plugin(&["recover"]).success();
        assert!(r.stderr.contains("nothing to recover"), "{}", r.stderr);
        assert_eq!(on_error_log(&p).len(), 1);
    }
}

#[test]
fn a_closed_stderr_is_no_panic_the_backup_completes_and_the_services_run() {
    let Some(p) = project("sig-stderr", "true") else {
        return;
    };
    let mut child = p.standalone_spawn_with(&[], &["create", "--stop"], Stdio::piped());
    drop(child.stderr.take()); // as `2>&1 | head -0` would
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    app_running(&p);
    assert_eq!(completed_rows(&p), 1);
}

#[test]
fn a_refused_create_runs_no_on_error_hook() {
    let Some(p) = project("sig-refused", "true") else {
        return;
    };
    // Running services without --stop: exit 8, refused before the run began.
    p.plugin(&["create"]).failure(8);
    // Busy: another create holds the project (paused while its services are down).
    let dir = tempfile::tempdir().unwrap();
    let (env, reached) = gate(dir.path());
    let holder = p.standalone_spawn_with(&env, &["create", "--stop"], Stdio::piped());
    wait_for_file(&reached, 60);
    p.plugin(&["create", "--stop"]).failure(9);
    std::fs::write(dir.path().join("gate"), "go").unwrap();
    assert_eq!(holder.wait_with_output().unwrap().status.code(), Some(0));
    assert_eq!(on_error_log(&p), Vec::<String>::new());
    app_running(&p);
}

#[test]
fn a_hook_that_prints_a_30_mb_line_fails_with_a_short_message() {
    let Some(p) = project(
        "sig-longline",
        "head -c 31457280 /dev/zero | tr \\\\000 x; exit 3",
    ) else {
        return;
    };
    let started = Instant::now();
    let run = p.plugin(&["create", "--stop"]).failure(17);
    assert!(started.elapsed() < Duration::from_secs(120));
    let line = run.error_line();
    assert!(line.len() < 8192, "{} bytes", line.len());
    assert!(line.contains("more bytes of this line not shown"), "{line}");
    assert!(
        run.stderr.len() < 64 << 10,
        "{} bytes on stderr",
        run.stderr.len()
    );
    // The run began (before-backup is part of it): on-error ran, once.
    assert_eq!(on_error_log(&p), ["on-error failed"]);
    app_running(&p);
}
