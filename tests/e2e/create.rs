//! `create` end to end: the gate, --stop, exact archives, crash safety, the lock.
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{describe_tree, Project, Tmpfs};

pub(crate) const ONE_SERVICE: &str = r#"
name: {name}
services:
  db:
    image: {image}
    command: {daemon}
    restart: always
    volumes: ["dbdata:/var/lib/db", "./data:/srv/data"]
  migrate:
    image: {image}
    command: ["true"]
volumes:
  dbdata: {}
"#;

/// Catalog rows as (status, error).
fn catalog_rows(p: &Project) -> Vec<(String, Option<String>)> {
    let path = p.catalog();
    if !path.exists() {
        return Vec::new();
    }
    let conn = p.catalog_db();
    let mut stmt = conn
        .prepare("SELECT status, error FROM backups ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Files in a folder, sorted by name.
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The archives of `dir` (not their `.json` sidecars).
fn archives_in(dir: &Path) -> Vec<String> {
    files_in(dir)
        .into_iter()
        .filter(|n| n.starts_with("backup_") && !n.ends_with(".json"))
        .collect()
}

#[test]
fn create_refuses_a_running_project_and_names_the_blockers() {
    let Some(p) = Project::new("refuse", ONE_SERVICE) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    p.up();
    let run = p.plugin(&["create"]).failure(8);
    assert_eq!(
        run.error_line(),
        format!(
            "cold backup refused, containers of project {0} are running: {0}-db-1 (persistent service running); stop them with `docker compose stop`, or pass --stop",
            p.name
        )
    );
    assert!(run.stdout.is_empty());
    assert!(archives_in(&p.path("backups")).is_empty());
    assert!(catalog_rows(&p).is_empty(), "a refusal records nothing");
    assert_eq!(
        p.states("db"),
        [format!("{}-db-1 running", p.name)],
        "nothing was stopped"
    );
}

#[test]
fn create_with_stop_backs_up_and_starts_exactly_what_ran() {
    let Some(p) = Project::new("stop", ONE_SERVICE) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/a.txt"), "hello").unwrap();
    p.up();
    p.wait_exited("migrate");
    p.in_volume(&format!("{}_dbdata", p.name), "echo row > /v/table")
        .success();
    assert_eq!(
        p.states("migrate"),
        [format!("{}-migrate-1 exited", p.name)]
    );

    let run = p
        .plugin(&[
            "create",
            "--stop",
            "--service-version",
            "1.2.3",
            "--format",
            "json",
        ])
        .success();
    let row = run.json();
    assert_eq!(row["status"], "completed");
    assert_eq!(row["project"], p.name.as_str());
    assert_eq!(row["service_version"], "1.2.3");
    assert_eq!(row["backup_type"], "manual");
    assert_eq!(row["file_count"], 2);
    let path = PathBuf::from(row["file_path"].as_str().unwrap());
    assert_eq!(path.parent().unwrap(), p.path("backups"));
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("backup_manual_v1.2.3_") && name.ends_with(".tar.gz"),
        "{name}"
    );
    assert_eq!(row["size_bytes"], std::fs::metadata(&path).unwrap().len());
    let sha = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sha.stdout).starts_with(row["sha256"].as_str().unwrap()));
    assert!(
        run.stderr
            .contains(&format!("backup #{} completed", row["id"])),
        "{}",
        run.stderr
    );

    assert_eq!(
        p.states("db"),
        [format!("{}-db-1 running", p.name)],
        "started again"
    );
    assert_eq!(
        p.states("migrate"),
        [format!("{}-migrate-1 exited", p.name)],
        "one-shot not started"
    );

    // A second backup in the same second gets its own name.
    p.compose(&["stop", "-t", "5"]).success();
    let a = p
        .plugin(&["create", "--service-version", "1.2.3", "--format", "json"])
        .success()
        .json();
    let b = p
        .plugin(&["create", "--service-version", "1.2.3", "--format", "json"])
        .success()
        .json();
    assert_ne!(a["file_path"], b["file_path"]);
    assert_eq!(archives_in(&p.path("backups")).len(), 3);
    // Each archive has its sidecar: the row without local paths.
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{}.json", b["file_path"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["sha256"], b["sha256"]);
    assert_eq!(sidecar["service_version"], "1.2.3");
    assert_eq!(sidecar["encrypted"], false);
    assert!(sidecar.get("file_path").is_none() && sidecar.get("project_dir").is_none());
}

/// Fills a tree with everything an exact backup must keep; returns it described.
fn fill_odd_tree(root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(root.join("private/empty")).unwrap();
    std::fs::write(root.join("private/secret"), "s3cret").unwrap();
    std::fs::hard_link(root.join("private/secret"), root.join("hardlink")).unwrap();
    std::os::unix::fs::symlink("private/secret", root.join("symlink")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let long = "l".repeat(120);
    std::fs::create_dir_all(root.join(&long)).unwrap();
    std::fs::write(root.join(&long).join(format!("{long}.txt")), "long").unwrap();
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1")),
        "x",
    )
    .unwrap();
    for p in ["private", "private/secret", "private/empty"] {
        std::os::unix::fs::chown(root.join(p), Some(999), Some(999)).unwrap();
    }
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        root.join("private/secret"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::lchown(root.join("symlink"), Some(999), Some(998)).unwrap();
}

fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plain tar -xzf works: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn archive_keeps_owners_modes_links_and_odd_names_for_binds_and_volumes() {
    let Some(p) = Project::new("exact", ONE_SERVICE) else {
        return;
    };
    fill_odd_tree(&p.path("data"));
    p.compose(&["create"]).success();
    // The same tree in the named volume: copy the bind's content through the engine.
    let volume = format!("{}_dbdata", p.name);
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(p.path("data"))
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let mut cp = std::process::Command::new("docker")
        .args(["cp", "-", &format!("{}-db-1:/var/lib/db", p.name)])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(cp.stdin.as_mut().unwrap(), &tar.stdout).unwrap();
    drop(cp.stdin.take());
    assert!(cp.wait().unwrap().success());
    p.in_volume(&volume, "chown 999:999 /v && chmod 0750 /v")
        .success();

    let row = p.plugin(&["create", "--format", "json"]).success().json();
    let archive = PathBuf::from(row["file_path"].as_str().unwrap());
    let tv = std::process::Command::new("tar")
        .arg("-tvzf")
        .arg(&archive)
        .output()
        .unwrap();
    let tv = String::from_utf8_lossy(&tv.stdout).into_owned();
    assert!(
        tv.contains("drwx------ 999/999") && tv.contains("volumes/dbdata/private\n"),
        "{tv}"
    );
    assert!(tv.contains("binds/data/symlink -> private/secret"), "{tv}");
    assert!(
        tv.contains("binds/data/private/secret link to binds/data/hardlink")
            || tv.contains("binds/data/hardlink link to binds/data/private/secret"),
        "{tv}"
    );

    let out = tempfile::tempdir().unwrap();
    untar(&archive, out.path());
    let original = describe_tree(&p.path("data"));
    let from_bind = describe_tree(&out.path().join("binds/data"));
    assert_eq!(
        from_bind[1..],
        original[1..],
        "bind tree restored by tar equals the original"
    );
    let from_volume = describe_tree(&out.path().join("volumes/dbdata"));
    assert_eq!(
        from_volume[1..],
        original[1..],
        "volume tree read through the engine equals the original"
    );
    let hl = std::fs::metadata(out.path().join("binds/data/hardlink")).unwrap();
    assert_eq!(hl.nlink(), 2, "hard links stay links");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["project"], p.name.as_str());
    assert_eq!(manifest["format_version"], 2);
    let vol = manifest["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "volume")
        .unwrap();
    assert_eq!(vol["name"], volume.as_str());
    assert_eq!(
        vol["root"],
        serde_json::json!({"uid": 999, "gid": 999, "mode": 0o750})
    );
    assert_eq!(vol["labels"]["com.docker.compose.volume"], "dbdata");
    let lines = std::fs::read_to_string(out.path().join("manifest-files.jsonl")).unwrap();
    let line = |volume: &str, path: &str| -> serde_json::Value {
        lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["volume"] == volume && l["path"] == path)
            .unwrap_or_else(|| panic!("{volume}/{path} listed"))
    };
    // Walked in name order: `hardlink` is the file, `private/secret` the link to it.
    let file = line("binds/data", "hardlink");
    assert_eq!(file["type"], "file");
    assert_eq!(file["size"], 6);
    assert_eq!(file["uid"], 999);
    assert_eq!(file["mode"], 0o640);
    assert_eq!(
        file["blake3"].as_str().unwrap(),
        blake3::hash(b"s3cret").to_hex().as_str()
    );
    let link = line("binds/data", "private/secret");
    assert_eq!(
        (link["type"].as_str(), link["link"].as_str()),
        (Some("hardlink"), Some("hardlink"))
    );
    assert_eq!(line("volumes/dbdata", "symlink")["link"], "private/secret");
    assert_eq!(line("volumes/dbdata", "")["mode"], 0o750);
    assert!(out.path().join("compose/compose.yaml").is_file());
}

/// Writes `n` files of `size` random bytes below `dir`.
pub(crate) fn random_files(dir: &Path, n: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..n {
        let mut buf = vec![0u8; size];
        for b in buf.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        std::fs::write(dir.join(format!("f{i:05}")), buf).unwrap();
    }
}

#[test]
fn a_failed_backup_restarts_services_and_records_the_failure() {
    let Some(p) = Project::new("full", ONE_SERVICE) else {
        return;
    };
    random_files(&p.path("data"), 3000, 300);
    p.up();
    p.wait_exited("migrate");
    let small = Tmpfs::mount(p.path("small"), "1m");
    let run = p
        .plugin(&["create", "--stop", "--storage", small.0.to_str().unwrap()])
        .failure(10);
    // Refused by the preflight, or the disk filled while writing: exit 10 either way.
    let line = run.error_line();
    assert!(
        line.starts_with(&format!("not enough space in {}: ", small.0.display()))
            || line.ends_with("No space left on device (os error 28)"),
        "{line}"
    );
    assert_eq!(
        run.stderr.matches("docker-nuwax-backup:").count(),
        1,
        "{}",
        run.stderr
    );
    assert_eq!(
        p.states("db"),
        [format!("{}-db-1 running", p.name)],
        "started again after the failure"
    );
    assert!(
        files_in(&small.0).is_empty(),
        "nothing left in storage: {:?}",
        files_in(&small.0)
    );
    let rows = catalog_rows(&p);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "failed");
    assert!(
        rows[0].1.as_deref().unwrap_or("").contains("space"),
        "{rows:?}"
    );
}

/// Waits until a create started in the background writes its partial archive.
fn wait_until_writing(p: &Project) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !files_in(&p.path("backups"))
        .iter()
        .any(|f| f.starts_with(".nuwax-partial-"))
    {
        assert!(Instant::now() < deadline, "create never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a slow create (much random data at level 9) and waits until it writes its archive.
pub(crate) fn start_slow_create(p: &Project, args: &[&str]) -> std::process::Child {
    let child = p.plugin_spawn(args);
    wait_until_writing(p);
    std::thread::sleep(Duration::from_millis(200));
    child
}

/// Signals a `create --stop` mid-archive: it must exit 130, start the service again, leave
/// no file in storage, and record a failed row.
fn cancel_mid_archive(test: &str, through_docker: bool, signal: i32) {
    let Some(p) = Project::new(test, ONE_SERVICE) else {
        return;
    };
    random_files(&p.path("data"), 40, 4 << 20);
    p.up();
    p.wait_exited("migrate");
    let args = ["create", "--stop", "--compression-level", "9"];
    let mut child = if through_docker {
        p.plugin_spawn(&args)
    } else {
        p.standalone_spawn(&args)
    };
    wait_until_writing(&p);
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert_eq!(
        p.states("db"),
        [format!("{}-db-1 running", p.name)],
        "started again after cancel"
    );
    assert!(
        files_in(&p.path("backups")).is_empty(),
        "{:?}",
        files_in(&p.path("backups"))
    );
    assert_eq!(
        catalog_rows(&p)
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        ["failed"]
    );
}

/// Without a terminal the docker CLI does not pass SIGTERM on: it closes the plugin socket.
#[test]
fn sigterm_to_docker_mid_archive_cancels_cleanly_and_restarts_services() {
    cancel_mid_archive("sigterm", true, libc::SIGTERM);
}

#[test]
fn sigint_to_the_standalone_binary_cancels_cleanly_and_restarts_services() {
    cancel_mid_archive("sigint", false, libc::SIGINT);
}

#[test]
fn kill_9_leaves_no_completed_backup_and_the_next_run_cleans_up() {
    let Some(p) = Project::new("kill9", ONE_SERVICE) else {
        return;
    };
    random_files(&p.path("data"), 40, 4 << 20);
    p.compose(&["create"]).success();
    let mut child = start_slow_create(&p, &["create", "--compression-level", "9"]);
    // SIGKILL the plugin itself (the docker CLI's child), then the CLI.
    for pid in children_of(child.id()) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
    let left = files_in(&p.path("backups"));
    assert!(
        archives_in(&p.path("backups")).is_empty(),
        "no final name: {left:?}"
    );
    assert!(catalog_rows(&p).iter().all(|r| r.0 != "completed"));

    std::fs::remove_dir_all(p.path("data")).unwrap();
    random_files(&p.path("data"), 3, 1000);
    let run = p.plugin(&["create", "--format", "json"]).success();
    assert!(
        run.stderr.contains("left by an interrupted backup") || left.is_empty(),
        "{}",
        run.stderr
    );
    let files = files_in(&p.path("backups"));
    assert_eq!(
        files.len(),
        2,
        "only the new archive and its sidecar: {files:?}"
    );
    assert_eq!(format!("{}.json", files[0]), files[1]);
}

pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(text.split_whitespace().map(|c| c.parse::<u32>().unwrap()));
    }
    out
}

#[test]
fn two_creates_at_once_one_refuses_clearly() {
    let Some(p) = Project::new("lock", ONE_SERVICE) else {
        return;
    };
    random_files(&p.path("data"), 40, 4 << 20);
    p.compose(&["create"]).success();
    let mut first = start_slow_create(&p, &["create", "--compression-level", "9"]);
    let second = p.plugin(&["create"]).failure(9);
    assert!(
        second
            .stderr
            .contains(&format!("project {} is busy", p.name))
            && second.stderr.contains("a create (pid"),
        "{}",
        second.stderr
    );
    assert!(first.wait().unwrap().success());
    assert_eq!(archives_in(&p.path("backups")).len(), 1);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let Some(p) = Project::new("dryrun", ONE_SERVICE) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/x"), "12345").unwrap();
    p.up();
    p.wait_exited("migrate");
    let plan = p
        .plugin(&["create", "--stop", "--dry-run", "--format", "json"])
        .success()
        .json();
    assert_eq!(
        plan["running"],
        serde_json::json!([format!("{}-db-1", p.name)])
    );
    let vols: Vec<&str> = plan["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["archive_path"].as_str().unwrap())
        .collect();
    assert_eq!(vols, ["volumes/dbdata", "binds/data"]);
    assert!(plan["archive_name"]
        .as_str()
        .unwrap()
        .starts_with("backup_manual_v"));
    assert!(!p.path("backups").exists());
    assert_eq!(p.states("db"), [format!("{}-db-1 running", p.name)]);
}

#[test]
fn bad_input_is_refused_before_anything_happens() {
    let Some(p) = Project::new("badinput", ONE_SERVICE) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    p.up();
    p.wait_exited("migrate");
    let run = p
        .plugin(&["create", "--stop", "--compression-level", "12"])
        .failure(2);
    assert_eq!(
        run.error_line(),
        "--compression-level 12 is not a gzip level: use 1-9"
    );
    assert_eq!(p.states("db"), [format!("{}-db-1 running", p.name)]);
    assert!(archives_in(&p.path("backups")).is_empty());
}
