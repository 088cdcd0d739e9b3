//! Reliability edges: a backup deleted under its own rollback, a signal during verify, a disk
//! that fills during the write, partial safety backups of a killed rollback, a mount point
//! too small for `--in-place`, and `prune --keep-last` after a rollback.
use std::process::Command;
use std::time::{Duration, Instant};

use crate::create::random_files;
use crate::harness::{app_running, app_with, describe_tree, entries_starting, Project, Tmpfs};

/// One service `app` with the bind `./data`.
fn yaml() -> String {
    app_with("\"./data:/data\"")
}

fn create(p: &Project) -> String {
    p.plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json()["id"]
        .to_string()
}

/// A project whose bind holds `mib` MiB of random data (so verifying its backup takes a
/// moment), up and running, with one backup of it; the data then changed.
fn big(test: &str, mib: usize) -> Option<(Project, String)> {
    let p = Project::new(test, &yaml())?;
    random_files(&p.path("data"), mib / 4, 4 << 20);
    p.up();
    let id = create(&p);
    std::fs::write(p.path("data/changed"), "since").unwrap();
    Some((p, id))
}

/// Waits (20 s at most) until a command pins backup `id` for reading (its holder file says
/// `what`): from then on it reads that backup.
fn wait_pinned(p: &Project, id: &str, what: &str) {
    let holder = p
        .catalog()
        .parent()
        .unwrap()
        .join(format!("locks/backup-{id}.holder"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&holder).is_ok_and(|h| h.starts_with(what)) {
        assert!(
            Instant::now() < deadline,
            "backup #{id} was never pinned by {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ids(p: &Project) -> Vec<String> {
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].to_string())
        .collect()
}

#[test]
fn delete_and_prune_during_a_rollback_of_that_backup_leave_it_and_the_rollback_completes() {
    let Some((p, id)) = big("pinned", 96) else {
        return;
    };
    let newer = create(&p);
    let child = p.plugin_spawn(&["rollback", &id, "--yes"]);
    wait_pinned(&p, &id, "rollback");
    // Refused while it is read (or while the rollback holds the project): exit 9, named.
    let deleted = p.plugin(&["delete", &id, "--yes"]).failure(9);
    let line = deleted.error_line();
    assert!(
        line.starts_with(&format!("backup #{id} is in use by a rollback (pid "))
            || line.starts_with(&format!("project {} is busy: a rollback (pid ", p.name)),
        "{line}"
    );
    let pruned = p.plugin(&["prune", "--keep-last", "1", "--yes"]);
    match pruned.code {
        0 => assert!(
            pruned.stderr.contains(&format!(
                "kept backup #{id}: it is in use by a rollback (pid "
            )),
            "{}",
            pruned.stderr
        ),
        9 => assert!(
            pruned.error_line().contains("is busy: a rollback (pid "),
            "{}",
            pruned.stderr
        ),
        other => panic!("prune exit {other}: {}", pruned.stderr),
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!p.path("data/changed").exists(), "rolled back");
    let left = ids(&p);
    assert!(left.contains(&id) && left.contains(&newer), "{left:?}");
    app_running(&p);
}

#[test]
fn sigterm_during_a_rollbacks_verify_exits_130_and_changes_nothing() {
    let Some((p, id)) = big("verify-term", 128) else {
        return;
    };
    let before = describe_tree(&p.path("data"));
    let mut child = p.standalone_spawn(&["rollback", &id, "--yes"]);
    wait_pinned(&p, &id, "rollback");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("docker-nuwax-backup: cancelled while verifying, nothing was changed"),
        "{stderr}"
    );
    assert_eq!(describe_tree(&p.path("data")), before);
    app_running(&p);
}

#[test]
fn a_storage_folder_that_fills_during_the_write_is_exit_10_and_leaves_nothing() {
    let Some(p) = Project::new("disk-full", &yaml()) else {
        return;
    };
    random_files(&p.path("data"), 4, 1 << 20);
    p.up();
    let full = [("NUWAX_BACKUP_TEST_FAIL_AT", "create-writing")];
    let run = p.plugin_env(&full, &["create", "--stop"]).failure(10);
    assert!(
        run.error_line()
            .ends_with("No space left on device (os error 28)"),
        "{}",
        run.stderr
    );
    assert!(entries_starting(&[&p.path("backups")], ".nuwax-partial-").is_empty());
    assert_eq!(p.statuses(), ["failed"]);
    app_running(&p);
}

fn remount(t: &Tmpfs, size: &str) {
    let ok = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(&t.0)
        .status()
        .unwrap();
    assert!(ok.success(), "remount {size}");
}

#[test]
fn a_rollback_killed_while_writing_its_safety_backup_leaves_no_partial_after_recover() {
    let Some(p) = Project::new("safety-kill", &yaml()) else {
        return;
    };
    let _t = Tmpfs::mount(p.path("data"), "32m");
    random_files(&p.path("data/blob"), 2, 1 << 20);
    p.up();
    let id = create(&p);
    std::fs::write(p.path("data/changed"), "since").unwrap();
    let before = describe_tree(&p.path("data"));
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "create-writing")];
    let run = p.plugin_env(&kill, &["rollback", &id, "--yes"]);
    assert_ne!(run.code, 0, "the kill seam did not fire: {}", run.stderr);
    let status = p.plugin(&["status", "--format", "json"]).success().json();
    assert_eq!(
        status["interrupted_run"]["phase"], "safety-before",
        "{status}"
    );
    assert!(!entries_starting(&[&p.path("backups")], ".nuwax-partial-").is_empty());
    p.plugin(&["recover"]).success();
    let left = entries_starting(&[&p.path("backups")], ".nuwax-partial-");
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(describe_tree(&p.path("data")), before, "nothing changed");
    app_running(&p);
}

#[test]
fn in_place_larger_than_the_mount_is_refused_before_anything_stops() {
    let Some(p) = Project::new("inplace-fit", &yaml()) else {
        return;
    };
    let t = Tmpfs::mount(p.path("data"), "40m");
    random_files(&p.path("data/blob"), 5, 4 << 20);
    p.up();
    let id = create(&p);
    std::fs::remove_dir_all(p.path("data/blob")).unwrap();
    std::fs::write(p.path("data/small"), "small").unwrap();
    remount(&t, "15m");
    let before = describe_tree(&p.path("data"));
    let started = |p: &Project| {
        p.docker(&[
            "inspect",
            "--format",
            "{{.State.StartedAt}}",
            &format!("{}-app-1", p.name),
        ])
        .success()
        .stdout
    };
    let at = started(&p);
    let run = p
        .plugin(&["rollback", &id, "--yes", "--in-place"])
        .failure(10);
    let line = run.error_line();
    assert!(
        line.starts_with(&format!(
            "backup #{id} does not fit in the mount point {}: 20.0 MiB archived, ",
            p.path("data").display()
        )) && line.ends_with("make it larger, or --exclude it; nothing was changed"),
        "{line}"
    );
    assert_eq!(describe_tree(&p.path("data")), before);
    assert_eq!(started(&p), at, "never stopped");
}

#[test]
fn prune_keep_last_keeps_the_newest_manual_backup_after_a_rollback() {
    let Some(p) = Project::new("prune-types", &yaml()) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/v"), "1").unwrap();
    p.up();
    let _first = create(&p);
    std::fs::write(p.path("data/v"), "2").unwrap();
    let second = create(&p);
    std::fs::write(p.path("data/v"), "3").unwrap();
    let rolled = p
        .plugin(&["rollback", &second, "--yes", "--format", "json"])
        .success()
        .json();
    let safety = rolled["safety_backup_id"].to_string();
    let dry = p
        .plugin(&["prune", "--keep-last", "1", "--dry-run", "--format", "json"])
        .success()
        .json();
    let reasons = |id: &str| -> Vec<String> {
        let row = dry
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"].to_string() == id)
            .unwrap();
        row["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(reasons(&second), ["last 1 manual"], "{dry}");
    assert_eq!(reasons(&safety)[0], "last 1 pre-rollback", "{dry}");
    p.plugin(&["prune", "--keep-last", "1", "--yes"]).success();
    let mut left = ids(&p);
    left.sort();
    let mut want = vec![second.clone(), safety.clone()];
    want.sort();
    assert_eq!(
        left, want,
        "the first manual backup goes, the newest manual one stays"
    );
    assert_eq!(std::fs::read_to_string(p.path("data/v")).unwrap(), "2");
}

#[test]
fn a_name_the_engine_cannot_carry_exactly_fails_the_backup_naming_it() {
    let yaml = app_with("\"vol:/vol\"") + "volumes:\n  vol: {}\n";
    let Some(p) = Project::new("engine-names", &yaml) else {
        return;
    };
    p.up();
    let volume = format!("{}_vol", p.name);
    // `nl\ndir/q\xffz` and its ASCII twin `nl\ndir/qz`: the engine's stream would carry both
    // as `nl\ndir/qz`, and one file would be lost on rollback.
    p.in_volume(
        &volume,
        r#"d="/v/$(printf 'nl\ndir')"; mkdir -p "$d" && printf x > "$d/$(printf 'q\377z')" && printf y > "$d/qz""#,
    )
    .success();
    let engine = [("NUWAX_BACKUP_VOLUME_IO", "engine")];
    let run = p.plugin_env(&engine, &["create", "--stop"]).failure(1);
    assert!(
        run.error_line().contains(r#""nl\ndir" has a newline in its name, which the engine's copy stream does not carry exactly: rename it, or read the volume from disk (as root, without NUWAX_BACKUP_VOLUME_IO=engine)"#),
        "{}",
        run.stderr
    );
    assert_eq!(p.statuses(), ["failed"]);
    assert!(entries_starting(&[&p.path("backups")], ".nuwax-partial-").is_empty());
    app_running(&p);
    // Read from disk, the same volume is archived exactly: both files, by their own names.
    let row = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json();
    let listing = Command::new("tar")
        .args(["-tzf", row["file_path"].as_str().unwrap()])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(names.contains("volumes/vol/nl\\ndir/qz\n"), "{names}");
    assert!(names.contains("volumes/vol/nl\\ndir/q\\377z\n"), "{names}");
}
