//! Rollback staged first: the archive is extracted beside each target while the services
//! run; they stop only for the swap; the safety backup is made from the previous content
//! afterwards. Killed at each of those moments, nothing is lost and `recover` finishes.
use std::path::PathBuf;
use std::process::Command;

use crate::harness::{describe_tree, entries_starting, Project, Tmpfs};

const YAML: &str = r#"name: {name}
services:
  db:
    image: {image}
    command: {daemon}
    restart: always
    volumes: ["./data:/data", "dbvol:/v"]
volumes:
  dbvol: {}
"#;

fn vol(p: &Project) -> String {
    format!("{}_dbvol", p.name)
}

/// A project with a backup of "v1", then changed to "v2"; returns the backup id.
fn backed_up_then_changed(p: &Project) -> String {
    std::fs::create_dir_all(p.path("data/db")).unwrap();
    std::fs::write(p.path("data/db/state"), "v1").unwrap();
    crate::create::random_files(&p.path("data/blob"), 4, 2 << 20);
    p.up();
    p.in_volume(&vol(p), "echo v1 > /v/state").success();
    let id = p
        .plugin(&["create", "--stop", "--storage", "kept", "--format", "json"])
        .success()
        .json()["id"]
        .to_string();
    std::fs::write(p.path("data/db/state"), "v2").unwrap();
    std::fs::write(p.path("data/added"), "new since").unwrap();
    p.in_volume(&vol(p), "echo v2 > /v/state").success();
    id
}

type State = (Vec<String>, Vec<String>);

fn state(p: &Project) -> State {
    (describe_tree(&p.path("data")), p.volume_tree(&vol(p)))
}

fn staging_left(p: &Project) -> Vec<PathBuf> {
    let vol_parent = p.volume_parent(&vol(p));
    entries_starting(&[p.dir.path(), &vol_parent], ".nuwax-restore-")
}

fn running(p: &Project) {
    assert_eq!(p.states("db"), [format!("{}-db-1 running", p.name)]);
}

/// Completed pre-rollback (safety) backups in the catalog, newest first.
fn safeties(p: &Project) -> Vec<serde_json::Value> {
    let list = p.plugin(&["list", "--format", "json"]).success().json();
    let rows = list.as_array().unwrap().iter();
    rows.filter(|r| r["backup_type"] == "pre-rollback" && r["status"] == "completed")
        .cloned()
        .collect()
}

/// The file `inner` of the newest pre-rollback backup.
fn safety_file(p: &Project, inner: &str) -> String {
    let row = safeties(p).into_iter().next().expect("a safety backup");
    let out = Command::new("tar")
        .args(["--zstd", "-xOf", row["file_path"].as_str().unwrap(), inner])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_staged_rollback_stops_the_services_only_for_the_swap() {
    let Some(p) = Project::new("staged", YAML) else {
        return;
    };
    let id = backed_up_then_changed(&p);
    let changed = state(&p);
    // Killed once staged: the services never stopped (the container was not restarted),
    // nothing changed; recover cleans up.
    let started_at = || {
        let c = format!("{}-db-1", p.name);
        p.docker(&["inspect", "--format", "{{.State.StartedAt}}", &c])
            .success()
            .stdout
    };
    let before = started_at();
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "rollback-staged")];
    let run = p.plugin_env(&kill, &["rollback", &id, "--yes"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("while the services run"),
        "{}",
        run.stderr
    );
    running(&p);
    assert_eq!(
        started_at(),
        before,
        "the service ran on through the staging"
    );
    assert_eq!(state(&p), changed);
    assert!(
        !staging_left(&p).is_empty(),
        "the staging was there when it died"
    );
    p.plugin(&["recover"]).success();
    assert!(staging_left(&p).is_empty());
    assert_eq!(state(&p), changed);

    let out = p
        .plugin(&["rollback", &id, "--yes", "--format", "json"])
        .success()
        .json();
    assert_eq!(out["order"], "stage-first");
    assert!(out["downtime_ms"].as_u64().is_some());
    assert_eq!(
        std::fs::read_to_string(p.path("data/db/state")).unwrap(),
        "v1"
    );
    assert!(!p.path("data/added").exists());
    running(&p);
    assert!(staging_left(&p).is_empty());
    // The safety backup holds the state at the stop.
    assert_eq!(safety_file(&p, "binds/data/db/state"), "v2");
    assert_eq!(safety_file(&p, "volumes/dbvol/state"), "v2\n");
}

#[test]
fn killed_after_the_start_recover_finishes_the_safety_backup_from_the_previous_content() {
    let Some(p) = Project::new("staged-kill", YAML) else {
        return;
    };
    let id = backed_up_then_changed(&p);
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "rollback-safety-after")];
    let run = p.plugin_env(&kill, &["rollback", &id, "--yes"]);
    assert_ne!(run.code, 0);
    running(&p);
    assert_eq!(
        std::fs::read_to_string(p.path("data/db/state")).unwrap(),
        "v1",
        "rolled back"
    );
    let kept = staging_left(&p);
    assert_eq!(kept.len(), 2, "the previous content is kept: {kept:?}");
    let s = p.plugin(&["status", "--format", "json"]).success().json();
    assert_eq!(s["interrupted_run"]["phase"], "safety-after");
    p.plugin(&["recover"]).success();
    assert_eq!(safety_file(&p, "binds/data/db/state"), "v2");
    assert_eq!(safety_file(&p, "volumes/dbvol/state"), "v2\n");
    assert!(staging_left(&p).is_empty());
    assert_eq!(
        std::fs::read_to_string(p.path("data/db/state")).unwrap(),
        "v1"
    );
    running(&p);
}

#[test]
fn killed_while_removing_the_previous_content_recover_only_cleans_up() {
    let Some(p) = Project::new("staged-commit", YAML) else {
        return;
    };
    let id = backed_up_then_changed(&p);
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "rollback-removing-previous")];
    // With a safety backup (made before the kill), then without one: either way the kill
    // comes once the first target's previous content is removed and the other's is not.
    for extra in [None, Some("--no-safety-backup")] {
        let before = safeties(&p).len();
        let mut args = vec!["rollback", id.as_str(), "--yes"];
        args.extend(extra);
        let run = p.plugin_env(&kill, &args);
        assert_ne!(run.code, 0, "{extra:?}");
        running(&p);
        assert_eq!(staging_left(&p).len(), 1, "{extra:?}: half removed");
        let s = p.plugin(&["status", "--format", "json"]).success().json();
        assert_eq!(s["interrupted_run"]["phase"], "removing-previous");
        let rec = p.plugin(&["recover"]).success();
        assert!(!rec.stderr.contains("safety backup"), "{}", rec.stderr);
        assert!(staging_left(&p).is_empty(), "{extra:?}");
        assert_eq!(safeties(&p).len(), before + usize::from(extra.is_none()));
        assert_eq!(
            std::fs::read_to_string(p.path("data/db/state")).unwrap(),
            "v1",
            "{extra:?}: rolled back"
        );
        running(&p);
        // Changed again for the next round.
        std::fs::write(p.path("data/db/state"), "v2").unwrap();
        p.in_volume(&vol(&p), "echo v2 > /v/state").success();
    }
    assert_eq!(safety_file(&p, "binds/data/db/state"), "v2");
}

#[test]
fn when_the_safety_backup_might_not_fit_the_rollback_stops_first() {
    let Some(p) = Project::new("staged-space", YAML) else {
        return;
    };
    let id = backed_up_then_changed(&p);
    let _small = Tmpfs::mount(p.path("backups"), "256k");
    let plan = p
        .plugin(&["rollback", &id, "--dry-run", "--format", "json"])
        .success()
        .json();
    assert_eq!(plan["order"], "stop-first", "{plan}");
    assert!(plan["order_reason"]
        .as_str()
        .unwrap()
        .contains("might not fit"));
    let unsafe_ok = p
        .plugin(&[
            "rollback",
            &id,
            "--dry-run",
            "--no-safety-backup",
            "--format",
            "json",
        ])
        .success()
        .json();
    assert_eq!(unsafe_ok["order"], "stage-first");
    // Then the safety backup fails first, before anything is changed.
    let changed = state(&p);
    p.plugin(&["rollback", &id, "--yes"]).failure(10);
    assert_eq!(state(&p), changed);
    running(&p);
}

#[test]
fn killed_after_the_stop_recover_swaps_back_and_starts() {
    let Some(p) = Project::new("staged-stop", YAML) else {
        return;
    };
    let id = backed_up_then_changed(&p);
    let changed = state(&p);
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "rollback-restoring")];
    let run = p.plugin_env(&kill, &["rollback", &id, "--yes"]);
    assert_ne!(run.code, 0);
    p.plugin(&["recover"]).success();
    assert_eq!(state(&p), changed, "every target as before");
    assert!(staging_left(&p).is_empty());
    running(&p);
}

#[test]
fn a_safety_backup_that_cannot_be_written_keeps_the_previous_content_and_exits_16() {
    let Some(p) = Project::new("staged-full", YAML) else {
        return;
    };
    let id = backed_up_then_changed(&p);
    // A full disk the preflight could not foresee (another process filled it meanwhile).
    let full = [("NUWAX_BACKUP_TEST_FAIL_AT", "rollback-safety")];
    let run = p.plugin_env(&full, &["rollback", &id, "--yes"]);
    assert_eq!(run.code, 16, "{}", run.stderr);
    let line = run.error_line().to_string();
    assert!(
        line.contains(", but the safety backup of the previous state could not be written (")
            && line.ends_with(": free space, then run `recover` to finish the safety backup"),
        "{line}"
    );
    running(&p);
    assert_eq!(
        std::fs::read_to_string(p.path("data/db/state")).unwrap(),
        "v1"
    );
    let kept = staging_left(&p);
    assert_eq!(kept.len(), 2, "{kept:?}");
    let named = line
        .split("; the previous content is kept in ")
        .nth(1)
        .and_then(|rest| {
            rest.strip_suffix(": free space, then run `recover` to finish the safety backup")
        })
        .unwrap_or_default();
    // Each is the previous content inside a staging folder the run left.
    let mut named: Vec<String> = named
        .split(", ")
        .map(|n| {
            std::path::Path::new(n)
                .parent()
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let mut want: Vec<String> = kept.iter().map(|k| k.display().to_string()).collect();
    named.sort();
    want.sort();
    assert_eq!(named, want, "{line}");
    let previous = kept.iter().find(|k| k.starts_with(p.dir.path())).unwrap();
    // The previous content is in the run's private staging folder, under the target's name.
    assert_eq!(
        std::fs::read_to_string(previous.join("data/db/state")).unwrap(),
        "v2"
    );
    p.plugin(&["recover"]).success();
    assert_eq!(safety_file(&p, "binds/data/db/state"), "v2");
    assert!(staging_left(&p).is_empty());
}
