//! Data safety in an incident: an archive that rotted on disk is refused in seconds, never a
//! hang; a signal ends a long verify; a rollback begun while a create had the services down
//! stops them itself before it swaps.
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::create::random_files;
use crate::harness::{app_running, app_with, wait_for_file, Project};

/// `app` with the bind `./data`, holding 3 MiB of data that does not compress (so a gzip
/// archive has several members), running.
fn project(test: &str) -> Option<Project> {
    let p = Project::new(test, &app_with("\"./data:/data\""))?;
    random_files(&p.path("data"), 3, 1 << 20);
    std::fs::write(p.path("data/f"), "version one").unwrap();
    p.up();
    Some(p)
}

fn backup(p: &Project, compression: &str) -> (String, PathBuf) {
    let run = p
        .plugin(&[
            "create",
            "--stop",
            "--compression",
            compression,
            "--format",
            "json",
        ])
        .success();
    let id = run.json()["id"].as_i64().unwrap();
    let file: String = p
        .catalog_db()
        .query_row("SELECT file_path FROM backups WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    (id.to_string(), PathBuf::from(file))
}

/// Overwrites 4 bytes at `at` (as a failing disk does); returns what was there.
fn rot(file: &Path, at: u64) -> [u8; 4] {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut was = [0u8; 4];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut was).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&was.map(|b| !b)).unwrap();
    was
}

fn heal(file: &Path, at: u64, was: [u8; 4]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&was).unwrap();
}

/// Waits for `child` at most `secs`; kills it (and fails) when it takes longer.
#[track_caller]
fn exit_within(mut child: Child, secs: u64) -> (i32, String, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err, started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {secs} s: it hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn started_at(p: &Project) -> String {
    p.docker(&[
        "inspect",
        "-f",
        "{{.State.StartedAt}}",
        &format!("{}-app-1", p.name),
    ])
    .success()
    .stdout
}

#[test]
fn a_bit_rotted_archive_is_refused_in_seconds_and_nothing_stops() {
    for codec in ["gzip", "zstd"] {
        let Some(p) = project(&format!("rot-{codec}")) else {
            return;
        };
        let (id, file) = backup(&p, codec);
        let len = std::fs::metadata(&file).unwrap().len();
        let since = started_at(&p);
        // The header, the middle of the data, a member boundary's neighbourhood, the trailer.
        for at in [2, len / 3, len / 2, len - 12, len - 6] {
            let was = rot(&file, at);
            let mut commands: Vec<Vec<&str>> = vec![vec!["verify", &id]];
            if at == len / 2 {
                commands.push(vec!["verify", "--all"]);
                commands.push(vec!["rollback", &id, "--dry-run"]);
                commands.push(vec!["rollback", &id, "--yes"]);
            }
            for args in commands {
                let (code, err, took) = exit_within(p.plugin_spawn(&args), 30);
                assert_eq!(
                    code, 12,
                    "{codec} damaged at {at} of {len}, {args:?}: {err}"
                );
                assert!(took < Duration::from_secs(30));
                if args[0] == "rollback" {
                    assert!(
                        err.contains(&format!("backup #{id} failed verification")),
                        "{err}"
                    );
                    assert!(err.contains("nothing was changed"), "{err}");
                }
                if codec == "gzip" && at == len / 2 && args[0] == "verify" {
                    assert!(err.contains("at byte"), "names no offset: {err}");
                }
            }
            heal(&file, at, was);
        }
        // Nothing stopped, nothing changed, and the healed archive verifies again.
        app_running(&p);
        assert_eq!(started_at(&p), since, "{codec}: the service was restarted");
        assert_eq!(std::fs::read(p.path("data/f")).unwrap(), b"version one");
        p.plugin(&["verify", &id]).success();
    }
}

#[test]
fn sigterm_ends_the_verify_of_a_large_archive_within_seconds() {
    let Some(p) = Project::new("rot-sigterm", &app_with("\"./data:/data\"")) else {
        return;
    };
    random_files(&p.path("data"), 48, 16 << 20);
    let run = p
        .plugin(&["create", "--compression-level", "1", "--format", "json"])
        .success();
    let id = run.json()["id"].as_i64().unwrap().to_string();
    let child = p.standalone_spawn(&["verify", &id]);
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: kill(2) on a child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, err, took) = exit_within(child, 20);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(code, 130, "{err}");
}

/// The environment that pauses a run at `point` until `file` exists.
fn paused_at(point: &str, file: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("NUWAX_BACKUP_TEST_PAUSE_AT", point.to_string()),
        (
            "NUWAX_BACKUP_TEST_PAUSE_FILE",
            file.to_string_lossy().into_owned(),
        ),
    ]
}

fn reached(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.reached", file.display()))
}

#[test]
fn a_rollback_begun_while_a_create_has_the_services_down_stops_them_before_the_swap() {
    let Some(p) = project("race-create") else {
        return;
    };
    let (id, _) = backup(&p, "zstd");
    std::fs::write(p.path("data/f"), "version two").unwrap();
    let gates = tempfile::tempdir().unwrap();
    let (create_gate, rollback_gate) = (gates.path().join("c"), gates.path().join("r"));
    // A nightly create holds the services down (its capture is paused)…
    let create = p.plugin_spawn_env(
        &paused_at("create-capturing", &create_gate),
        &["create", "--stop"],
    );
    wait_for_file(&reached(&create_gate), 60);
    assert!(p.states("app").iter().all(|s| !s.ends_with(" running")));
    // …when a rollback verifies and plans: nothing runs as it plans.
    let rollback = p.plugin_spawn_env(
        &paused_at("rollback-planned", &rollback_gate),
        &["rollback", &id, "--yes", "--format", "json"],
    );
    wait_for_file(&reached(&rollback_gate), 60);
    // The create ends: the services run again, the lock is free.
    std::fs::write(&create_gate, "go").unwrap();
    let (code, err, _) = exit_within(create, 120);
    assert_eq!(code, 0, "{err}");
    app_running(&p);
    let before = started_at(&p);
    // The rollback goes on: it must see the service running and stop it for the swap.
    std::fs::write(&rollback_gate, "go").unwrap();
    let out = rollback.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the project changed while the rollback was prepared"),
        "{err}"
    );
    assert!(err.contains("stopping app"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stop"], serde_json::json!(["app"]));
    assert_eq!(report["started"], serde_json::json!(["app"]));
    // The data is the backup's, whole, and the container was stopped and started around it.
    assert_eq!(std::fs::read(p.path("data/f")).unwrap(), b"version one");
    app_running(&p);
    assert_ne!(
        started_at(&p),
        before,
        "the swap happened under the running container"
    );
}
