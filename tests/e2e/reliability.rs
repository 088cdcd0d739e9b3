//! Reliability end to end: mount-point binds, killed runs and `recover`, a busy catalog,
//! locks in the catalog commands, nested mounts, and the errors newcomers meet first.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::catalog::BIND_ONLY;
use crate::create::{random_files, start_slow_create, ONE_SERVICE};
use crate::harness::{describe_tree, Project, Tmpfs, IMAGE};

/// One service whose data bind `./data` is a mount point (the test mounts a tmpfs there).
const MOUNTED: &str = r#"
name: {name}
services:
  app:
    image: {image}
    command: {daemon}
    restart: always
    volumes: ["./data:/srv/data"]
"#;

/// A tmpfs on `./data` with a small tree: files, a folder owned by 999 with mode 0700, links.
fn mounted(test: &str, size: &str) -> Option<(Project, Tmpfs)> {
    let p = Project::new(test, MOUNTED)?;
    let t = Tmpfs::mount(p.path("data"), size);
    seed(&p.path("data"));
    Some((p, t))
}

fn seed(d: &Path) {
    std::fs::create_dir_all(d.join("pg/base")).unwrap();
    std::fs::write(d.join("pg/base/t1"), "row1\n").unwrap();
    std::fs::write(d.join("top.txt"), "version one").unwrap();
    std::os::unix::fs::symlink("top.txt", d.join("top.link")).unwrap();
    std::fs::hard_link(d.join("top.txt"), d.join("pg/top.hard")).unwrap();
    std::os::unix::fs::chown(d.join("pg"), Some(999), Some(999)).unwrap();
    std::fs::set_permissions(d.join("pg"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o750)).unwrap();
}

fn damage(d: &Path) {
    std::fs::write(d.join("top.txt"), "version two, longer").unwrap();
    std::fs::write(d.join("added.txt"), "added").unwrap();
    std::fs::remove_dir_all(d.join("pg/base")).unwrap();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
}

fn backup(p: &Project) -> String {
    let run = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success();
    run.json()["id"].as_i64().unwrap().to_string()
}

fn running(p: &Project, service: &str) -> bool {
    p.states(service).iter().all(|s| s.ends_with(" running")) && !p.states(service).is_empty()
}

#[test]
fn a_mount_point_bind_rolls_back_exactly_with_and_without_exchange() {
    let Some((p, _t)) = mounted("mountpoint", "16m") else {
        return;
    };
    p.up();
    let before = describe_tree(&p.path("data"));
    let id = backup(&p);
    for env in [
        ("NUWAX_BACKUP_TEST_NO_EXCHANGE", "0"),
        ("NUWAX_BACKUP_TEST_NO_EXCHANGE", "1"),
    ] {
        damage(&p.path("data"));
        assert_ne!(describe_tree(&p.path("data")), before);
        p.plugin_env(&[env], &["rollback", &id, "--yes", "--no-safety-backup"])
            .success();
        assert_eq!(describe_tree(&p.path("data")), before, "with {env:?}");
        assert!(running(&p, "app"));
    }
}

/// Kills a rollback of the mount point at `point`; then the bind must be as before (or as
/// archived), `recover` must start the service, and the next rollback must succeed.
fn killed_mount_rollback(p: &Project, id: &str, point: &str, via_recover: bool) {
    let damaged = describe_tree(&p.path("data"));
    let run = p.plugin_env(
        &[("NUWAX_BACKUP_TEST_KILL_AT", point)],
        &["rollback", id, "--yes", "--no-safety-backup"],
    );
    assert_ne!(
        run.code, 0,
        "{point}: the kill seam did not fire\n{}",
        run.stderr
    );
    let status = p.plugin(&["status", "--format", "json"]).success().json();
    let rec = &status["interrupted_run"];
    assert_eq!(rec["command"], "rollback", "{point}: {status}");
    assert_eq!(rec["stopped"], serde_json::json!(["app"]), "{point}");
    assert!(
        !running(p, "app"),
        "{point}: a killed rollback leaves app stopped"
    );
    if point.starts_with("mount-step") {
        assert_eq!(
            status["mixed"].as_array().unwrap().len(),
            1,
            "{point}: {status}"
        );
    }
    if via_recover {
        let r = p.plugin(&["recover", "--format", "json"]).success().json();
        assert_eq!(r["interrupted_run"]["phase"], "restoring", "{point}");
        assert_eq!(
            describe_tree(&p.path("data")),
            damaged,
            "{point}: undone exactly"
        );
        assert!(
            running(p, "app"),
            "{point}: recover starts what the run stopped"
        );
        let again = p.plugin(&["status", "--format", "json"]).success().json();
        assert!(again["interrupted_run"].is_null() && again["mixed"] == serde_json::json!([]));
    }
}

#[test]
fn a_killed_mount_point_rollback_is_undone_by_recover_or_the_next_run() {
    let Some((p, _t)) = mounted("killmount", "16m") else {
        return;
    };
    p.up();
    let archived = describe_tree(&p.path("data"));
    let id = backup(&p);
    damage(&p.path("data"));
    for point in ["rollback-restoring", "mount-step-1", "mount-step-3"] {
        killed_mount_rollback(&p, &id, point, true);
    }
    // Killed again, and this time the next rollback recovers first, then does its own work.
    killed_mount_rollback(&p, &id, "mount-step-2", false);
    p.plugin(&["rollback", &id, "--yes", "--no-safety-backup"])
        .success();
    assert_eq!(describe_tree(&p.path("data")), archived);
    assert!(running(&p, "app"));
    assert_eq!(
        std::fs::read_dir(p.path("data")).unwrap().count(),
        3,
        "no staging left"
    );
}

#[test]
fn staging_that_does_not_fit_the_mount_point_refuses_before_stopping() {
    let Some((p, _t)) = mounted("nofit", "1m") else {
        return;
    };
    random_files(&p.path("data/blob"), 6, 100 << 10);
    p.up();
    let id = backup(&p);
    let before = describe_tree(&p.path("data"));
    let run = p.plugin(&["rollback", &id, "--yes"]).failure(10);
    let line = run.error_line();
    let start = format!(
        "not enough space to stage the rollback on the filesystem of {}: ",
        p.path("data").display()
    );
    assert!(
        line.starts_with(&start)
            && line.ends_with(" needed (a copy of the archived content is staged there before the swap); free space there, pass --in-place (empty it, then write; its undo is the safety backup), or --exclude it; nothing was changed"),
        "{line}"
    );
    assert_eq!(describe_tree(&p.path("data")), before);
    assert!(running(&p, "app"), "nothing was stopped");

    // --in-place empties the mount, then writes: it fits, and its undo is the safety backup.
    let refused = p
        .plugin(&["rollback", &id, "--yes", "--in-place", "--no-safety-backup"])
        .failure(2);
    assert!(
        refused
            .stderr
            .contains("--in-place needs the safety backup"),
        "{}",
        refused.stderr
    );
    let plan = p
        .plugin(&[
            "rollback",
            &id,
            "--in-place",
            "--dry-run",
            "--format",
            "json",
        ])
        .success()
        .json();
    assert_eq!(plan["actions"][0]["action"], "in-place", "{plan}");
    damage(&p.path("data"));
    let damaged = describe_tree(&p.path("data"));
    p.plugin(&["rollback", &id, "--yes", "--in-place"])
        .success();
    assert_eq!(describe_tree(&p.path("data")), before);
    assert!(running(&p, "app"));

    // Killed once the mount is emptied: recover puts the previous content back from the
    // safety backup, exactly, and starts the service.
    damage_again(&p.path("data"), &damaged);
    let damaged = describe_tree(&p.path("data"));
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "in-place-emptied")];
    let run = p.plugin_env(&kill, &["rollback", &id, "--yes", "--in-place"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(!running(&p, "app"));
    let s = p.plugin(&["status", "--format", "json"]).success().json();
    assert_eq!(s["interrupted_run"]["command"], "rollback", "{s}");
    let r = p.plugin(&["recover"]).success();
    assert!(r.stderr.contains("from the safety backup"), "{}", r.stderr);
    assert_eq!(describe_tree(&p.path("data")), damaged, "put back exactly");
    assert!(running(&p, "app"));
}

/// Makes the tree differ from the archive again, the way `damage` did the first time.
fn damage_again(d: &Path, damaged_before: &[String]) {
    std::fs::write(d.join("added.txt"), "added again").unwrap();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_ne!(describe_tree(d), damaged_before);
}

#[test]
fn a_killed_create_leaves_a_record_that_recover_and_the_next_create_finish() {
    let Some(p) = Project::new("killcreate", ONE_SERVICE) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/x"), "x").unwrap();
    p.up();
    p.wait_exited("migrate");
    // Killed while archiving with the services stopped (direct), and while capturing.
    for (finish_with, capture, phase) in [
        ("recover", "direct", "archiving"),
        ("create", "auto", "capturing"),
    ] {
        let kill = [("NUWAX_BACKUP_TEST_KILL_AT", format!("create-{phase}"))];
        let kill: Vec<(&str, &str)> = kill.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = p.plugin_env(&kill, &["create", "--stop", "--capture", capture]);
        assert_ne!(run.code, 0);
        assert!(!running(&p, "db"));
        let table = p.plugin(&["status"]).success();
        assert!(
            table.stdout.contains("Interrupted: a create") && table.stdout.contains("recover"),
            "{}",
            table.stdout
        );
        let s = p.plugin(&["status", "--format", "json"]).success().json();
        assert_eq!(s["interrupted_run"]["phase"], phase);
        assert_eq!(s["interrupted_run"]["stopped"], serde_json::json!(["db"]));
        if finish_with == "recover" {
            p.plugin(&["recover"]).success();
        } else {
            let c = p.plugin(&["create", "--stop"]).success();
            assert!(
                c.stderr.contains("found an interrupted create"),
                "{}",
                c.stderr
            );
        }
        assert!(running(&p, "db"), "after {finish_with}");
        let captures: Vec<_> = std::fs::read_dir(p.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".nuwax-capture-")
            })
            .collect();
        assert!(captures.is_empty(), "the capture is removed: {captures:?}");
        assert!(
            p.plugin(&["status", "--format", "json"]).success().json()["interrupted_run"].is_null()
        );
    }
    let list = p.plugin(&["list", "--format", "json"]).success().json();
    let rows = list.as_array().unwrap();
    let failed: Vec<_> = rows.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 2, "{list}");
    assert!(failed.iter().all(|r| r["error"] == "interrupted"));
    assert_eq!(
        rows.iter().filter(|r| r["status"] == "completed").count(),
        1
    );
    let partials = std::fs::read_dir(p.path("backups"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".nuwax-partial")
        })
        .count();
    assert_eq!(partials, 0, "partial archives are removed");
    p.plugin(&["recover"]).success(); // nothing to do: still exit 0
}

#[test]
fn a_rollback_killed_after_the_stop_is_recovered() {
    let Some(p) = Project::new("killroll", ONE_SERVICE) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/x"), "one").unwrap();
    p.up();
    p.wait_exited("migrate");
    let id = backup(&p);
    std::fs::write(p.path("data/x"), "two").unwrap();
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "rollback-restoring")];
    assert_ne!(p.plugin_env(&kill, &["rollback", &id, "--yes"]).code, 0);
    assert!(!running(&p, "db"));
    assert_eq!(std::fs::read_to_string(p.path("data/x")).unwrap(), "two");
    p.plugin(&["recover"]).success();
    assert!(running(&p, "db"));
    p.plugin(&["rollback", &id, "--yes"]).success();
    assert_eq!(std::fs::read_to_string(p.path("data/x")).unwrap(), "one");
}

#[test]
fn recover_refuses_while_the_run_is_alive() {
    let Some(p) = Project::new("alive", ONE_SERVICE) else {
        return;
    };
    random_files(&p.path("data"), 40, 4 << 20);
    let mut first = start_slow_create(&p, &["create", "--compression-level", "9"]);
    signal_tree(first.id(), libc::SIGSTOP);
    let r = p.plugin(&["recover"]).failure(9);
    let busy = format!("project {} is busy: a create (pid ", p.name);
    assert!(r.error_line().starts_with(&busy), "{}", r.stderr);
    signal_tree(first.id(), libc::SIGCONT);
    assert!(first.wait().unwrap().success());
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
}

/// Sends `signal` to process `pid` and every process below it.
fn signal_tree(pid: u32, signal: i32) {
    // Each thread lists the children it started (the docker CLI starts the plugin from any).
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            signal_tree(c, signal);
        }
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}

#[test]
fn delete_of_a_backup_refuses_while_a_create_of_its_project_runs() {
    let Some(p) = Project::new("dellock", ONE_SERVICE) else {
        return;
    };
    random_files(&p.path("data"), 40, 4 << 20);
    p.compose(&["create"]).success();
    p.plugin(&["create", "--compression-level", "1"]).success();
    let mut second = start_slow_create(&p, &["create", "--compression-level", "9"]);
    // Held mid-write (stopped, not killed), so that the refusals below do not race its end.
    signal_tree(second.id(), libc::SIGSTOP);
    let d = p.plugin(&["delete", "1", "--yes"]).failure(9);
    let busy = format!("project {} is busy: a create (pid ", p.name);
    assert!(d.error_line().starts_with(&busy), "{}", d.stderr);
    let pruned = p.plugin(&["prune", "--keep-last", "1", "--yes"]).failure(9);
    assert!(pruned.error_line().starts_with(&busy), "{}", pruned.stderr);
    signal_tree(second.id(), libc::SIGCONT);
    assert!(second.wait().unwrap().success());
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(rows.as_array().unwrap().len(), 2, "nothing was deleted");
}

#[test]
fn six_projects_create_list_and_delete_in_parallel_on_one_fresh_catalog() {
    let projects: Vec<Project> = (0..6)
        .filter_map(|i| Project::new(&format!("par{i}"), BIND_ONLY))
        .collect();
    if projects.len() < 6 {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let catalog = shared.path().join("fresh/catalog.db");
    let catalog = catalog.to_str().unwrap();
    for p in &projects {
        std::fs::create_dir_all(p.path("data")).unwrap();
        std::fs::write(p.path("data/f"), &p.name).unwrap();
    }
    let env = [("NUWAX_BACKUP_CATALOG", catalog)];
    std::thread::scope(|s| {
        for p in &projects {
            s.spawn(move || {
                for _ in 0..5 {
                    let c = p
                        .plugin_env(&env, &["create", "--format", "json"])
                        .success();
                    let id = c.json()["id"].as_i64().unwrap().to_string();
                    p.plugin_env(&env, &["list", "--format", "json"]).success();
                    p.plugin_env(&env, &["delete", &id, "--yes"]).success();
                }
            });
        }
    });
    let rows = projects[0].plugin_env(&env, &["list", "--all-projects", "--format", "json"]);
    assert_eq!(rows.success().json(), serde_json::json!([]));
}

#[test]
fn commands_wait_for_a_catalog_another_process_holds() {
    let Some(p) = Project::new("busycat", BIND_ONLY) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    p.plugin(&["list"]).success(); // makes the catalog
    let script = "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('BEGIN IMMEDIATE')\nprint('held',flush=True)\ntime.sleep(3)\nc.execute('COMMIT')\n";
    let mut holder = Command::new("python3")
        .args(["-c", script])
        .arg(p.catalog())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    p.plugin(&["create"]).success();
    p.plugin(&["list", "--format", "json"]).success();
    assert!(holder.wait().unwrap().success());
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
}

/// A named volume at /data with a bind nested at /data/conf, in one service.
const NESTED: &str = r#"
name: {name}
services:
  app:
    image: {image}
    command: {daemon}
    restart: always
    volumes: ["appdata:/data", "./conf:/data/conf"]
volumes:
  appdata: {}
"#;

#[test]
fn a_volume_with_a_nested_bind_is_archived_alone_and_round_trips() {
    let Some(p) = Project::new("nested", NESTED) else {
        return;
    };
    let vol = format!("{}_appdata", p.name);
    std::fs::create_dir_all(p.path("conf")).unwrap();
    std::fs::write(p.path("conf/bind.txt"), "from the bind").unwrap();
    p.compose(&["create"]).success();
    // A file of the volume under conf/, from before the bind was added (hidden by it now).
    p.in_volume(
        &vol,
        "mkdir -p /v/conf && echo hidden > /v/conf/hidden.txt && echo top > /v/top.txt",
    )
    .success();
    p.up();
    let vol_before = p.volume_tree(&vol);
    let bind_before = describe_tree(&p.path("conf"));
    let c = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json();
    let listing = Command::new("tar")
        .args(["-tzf", c["file_path"].as_str().unwrap()])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with("conf/hidden.txt") && l.starts_with("volumes/")),
        "{listing}"
    );
    assert!(
        !listing
            .lines()
            .any(|l| l.starts_with("volumes/") && l.ends_with("bind.txt")),
        "{listing}"
    );
    p.in_volume(&vol, "rm -rf /v/conf /v/top.txt && echo junk > /v/junk")
        .success();
    std::fs::write(p.path("conf/bind.txt"), "changed").unwrap();
    let id = c["id"].as_i64().unwrap().to_string();
    p.plugin(&["rollback", &id, "--yes"]).success();
    assert_eq!(p.volume_tree(&vol), vol_before);
    assert_eq!(describe_tree(&p.path("conf")), bind_before);
}

#[test]
fn a_docker_cli_without_compose_v2_gets_exit_5_and_the_hint() {
    let Some(p) = Project::new("nocompose", BIND_ONLY) else {
        return;
    };
    let cfg = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cfg.path().join("cli-plugins")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_docker-nuwax-backup"),
        cfg.path().join("cli-plugins/docker-nuwaxbackup"),
    )
    .unwrap();
    let script = r#"for d in /usr/local/lib/docker/cli-plugins /usr/local/libexec/docker/cli-plugins /usr/lib/docker/cli-plugins /usr/libexec/docker/cli-plugins; do [ -d "$d" ] && mount -t tmpfs tmpfs "$d"; done; docker nuwaxbackup status"#;
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .current_dir(p.path(""))
        .env("DOCKER_CONFIG", cfg.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("Compose v2") && stderr.contains("install"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn import_takes_one_archive_file_and_a_non_sqlite_catalog_is_named() {
    let Some(p) = Project::new("importfile", BIND_ONLY) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    let c = p.plugin(&["create", "--format", "json"]).success().json();
    let file = c["file_path"].as_str().unwrap().to_string();
    let other = tempfile::tempdir().unwrap();
    let catalog = other.path().join("c.db");
    let env = [("NUWAX_BACKUP_CATALOG", catalog.to_str().unwrap())];
    let imported = p
        .plugin_env(&env, &["import", &file, "--format", "json"])
        .success()
        .json();
    assert_eq!(imported.as_array().unwrap().len(), 1, "{imported}");
    assert_eq!(imported[0]["file_path"], file.as_str());
    let junk = other.path().join("junk.db");
    let text = "this is not a database, just some text long enough to be read";
    std::fs::write(&junk, text).unwrap();
    let r = p
        .plugin(&["list", "--catalog", junk.to_str().unwrap()])
        .failure(1);
    assert!(
        r.stderr.contains(junk.to_str().unwrap()) && r.stderr.contains("--catalog"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&junk).unwrap(),
        text,
        "left as it was"
    );
}

#[test]
fn archives_and_folders_are_private_and_a_shared_folder_is_warned_about() {
    use std::os::unix::fs::MetadataExt;
    let Some(p) = Project::new("private", BIND_ONLY) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    let mode = |path: &str| std::fs::metadata(path).unwrap().mode() & 0o777;
    let c = p.plugin(&["create", "--format", "json"]).success();
    let file = c.json()["file_path"].as_str().unwrap().to_string();
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(p.path("backups").to_str().unwrap()), 0o700);
    assert_eq!(mode(p.catalog().to_str().unwrap()), 0o600);
    let catalog_dir = p.catalog().parent().unwrap().to_path_buf();
    for sub in ["locks", "runs"] {
        assert_eq!(
            mode(catalog_dir.join(sub).to_str().unwrap()),
            0o700,
            "{sub}"
        );
    }
    let lock = catalog_dir.join("locks").join(format!("{}.lock", p.name));
    assert_eq!(mode(lock.to_str().unwrap()), 0o600);
    for (folder, want_file, warned) in [("open", 0o600, true), ("group", 0o640, false)] {
        let dir = p.path(folder);
        std::fs::create_dir(&dir).unwrap();
        let m = if warned { 0o755 } else { 0o750 };
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m)).unwrap();
        let c = p
            .plugin(&["create", "--storage", folder, "--format", "json"])
            .success();
        assert_eq!(c.stderr.contains("chmod 700"), warned, "{}", c.stderr);
        assert_eq!(mode(c.json()["file_path"].as_str().unwrap()), want_file);
        assert_eq!(
            mode(dir.to_str().unwrap()),
            m,
            "the folder's mode is left alone"
        );
    }
    let _ = IMAGE;
}
