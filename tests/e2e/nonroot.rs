//! A `docker`-group user who is not root backs up and rolls back a bind holding another
//! user's private folder (a database's data folder): the engine reads and writes what the
//! user cannot, and the result is what root would get.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::harness::{describe_tree, Project, User};

const YAML: &str = r#"name: {name}
services:
  db:
    image: {image}
    command: {daemon}
    restart: always
    volumes:
      - ./data:/var/lib/db
      - dbvol:/v
volumes:
  dbvol: {}
"#;

fn chown(p: &Path, owner: &str) {
    assert!(Command::new("chown")
        .args(["-h", owner])
        .arg(p)
        .status()
        .unwrap()
        .success());
}

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// `./data`: the user's own folder holding `pg/` (999:999, 0700) with a private file, a
/// nested folder and a link, and a file of the user's.
fn seed(p: &Project, user: &User) {
    let data = p.path("data");
    std::fs::create_dir_all(data.join("pg/base")).unwrap();
    std::fs::write(data.join("pg/PG_VERSION"), "16\n").unwrap();
    std::fs::write(data.join("pg/base/1"), vec![7u8; 70_000]).unwrap();
    std::os::unix::fs::symlink("base/1", data.join("pg/latest")).unwrap();
    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    for rel in ["pg", "pg/PG_VERSION", "pg/base", "pg/base/1", "pg/latest"] {
        chown(&data.join(rel), "999:999");
    }
    mode(&data.join("pg/PG_VERSION"), 0o600);
    mode(&data.join("pg/base"), 0o700);
    mode(&data.join("pg"), 0o700);
    for rel in ["", "notes.txt"] {
        chown(&data.join(rel), &user.0);
    }
    p.in_volume(
        &format!("{}_dbvol", p.name),
        "echo v1 > /v/state && mkdir /v/d && chown -R 70:70 /v/d && chmod 0700 /v/d",
    )
    .success();
}

/// `binds/` and `volumes/` entries of an archive as `tar -tv` shows them (numeric owners),
/// and its `manifest-files.jsonl`.
fn archive_view(path: &str) -> (String, String) {
    let tv = Command::new("tar")
        .args(["--numeric-owner", "-tvzf", path, "binds", "volumes"])
        .output()
        .unwrap();
    let lines = Command::new("tar")
        .args(["-xzOf", path, "manifest-files.jsonl"])
        .output()
        .unwrap();
    assert!(tv.status.success() && lines.status.success());
    (
        String::from_utf8_lossy(&tv.stdout).into_owned(),
        String::from_utf8_lossy(&lines.stdout).into_owned(),
    )
}

#[test]
fn a_docker_group_user_backs_up_and_rolls_back_another_users_private_folder() {
    let Some(p) = Project::new("nonroot", YAML) else {
        return;
    };
    let user = User::new("nwxnr");
    seed(&p, &user);
    p.lend_to(&user);
    p.up();
    let before = describe_tree(&p.path("data"));
    let volume = format!("{}_dbvol", p.name);
    let volume_before = p.volume_tree(&volume);

    // The plan says, before anything stops, that the engine reads the bind.
    let dry = p
        .plugin_as(&user, &["create", "--dry-run", "--format", "json"])
        .success();
    let bind = dry.json()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "bind")
        .cloned()
        .unwrap();
    assert_eq!(bind["io"], "engine", "{bind}");
    assert!(
        dry.stderr.contains("not readable by this user"),
        "{}",
        dry.stderr
    );

    let made = p
        .plugin_as(&user, &["create", "--stop", "--format", "json"])
        .success();
    let row = made.json();
    let archive = row["file_path"].as_str().unwrap().to_string();
    let meta = std::fs::metadata(&archive).unwrap();
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "the archive is the user's alone"
    );
    assert_eq!(meta.uid(), user.uid());
    let storage = std::fs::metadata(p.path("backups")).unwrap();
    assert_eq!(storage.mode() & 0o777, 0o700);

    // The same archive as root's, who reads the bind from disk. Root does not trust run
    // records in the user's folders (as under `sudo -E`): it keeps its own catalog.
    p.compose(&["stop"]).success();
    let catalog_dir = p.catalog().parent().unwrap().to_path_buf();
    let refused = p
        .plugin(&["create", "--storage", "root-backups"])
        .failure(1);
    assert_eq!(
        refused.error_line(),
        format!(
            "{} is owned by uid {uid}, not 0, so its run records are not trusted: make it yours and private (chown 0 '{}'; chmod go-w '{}'), or point NUWAX_BACKUP_CATALOG at a private folder",
            catalog_dir.display(),
            catalog_dir.display(),
            catalog_dir.display(),
            uid = user.uid()
        )
    );
    let root_catalog = tempfile::tempdir().unwrap();
    let root_catalog = root_catalog.path().join("catalog.db");
    let by_root = p
        .plugin_env(
            &[("NUWAX_BACKUP_CATALOG", root_catalog.to_str().unwrap())],
            &["create", "--storage", "root-backups", "--format", "json"],
        )
        .success();
    p.compose(&["start"]).success();
    let (user_tv, user_lines) = archive_view(&archive);
    let (root_tv, root_lines) = archive_view(by_root.json()["file_path"].as_str().unwrap());
    assert_eq!(user_tv, root_tv);
    assert_eq!(user_lines, root_lines);
    assert!(user_tv.contains("drwx------ 999/999"), "{user_tv}");

    // Changes the user could not have made, then the user's rollback.
    std::fs::write(p.path("data/pg/PG_VERSION"), "17\n").unwrap();
    std::fs::write(p.path("data/pg/base/2"), "new").unwrap();
    p.in_volume(&volume, "echo v2 > /v/state").success();
    let id = row["id"].to_string();
    let back = p.plugin_as(&user, &["rollback", &id, "--yes"]).success();
    assert_eq!(describe_tree(&p.path("data")), before, "{}", back.stderr);
    assert_eq!(
        std::fs::read_to_string(p.path("data/pg/PG_VERSION")).unwrap(),
        "16\n"
    );
    assert_eq!(p.volume_tree(&volume), volume_before);
    assert_eq!(p.states("db"), [format!("{}-db-1 running", p.name)]);

    // The state it replaced is in the safety backup; nothing is left beside the bind.
    let list = p
        .plugin_as(&user, &["list", "--format", "json"])
        .success()
        .json();
    let safety = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["backup_type"] == "pre-rollback")
        .cloned()
        .expect("a safety backup row");
    let out = Command::new("tar")
        .args([
            "--zstd",
            "-xOf",
            safety["file_path"].as_str().unwrap(),
            "binds/data/pg/PG_VERSION",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "17\n");
    let left: Vec<String> = std::fs::read_dir(p.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nuwax"))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}
