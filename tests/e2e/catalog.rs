//! Catalog commands end to end: list, delete, verify, import, migrate-storage, prune.
use std::path::{Path, PathBuf};

use crate::harness::{Project, Tmpfs};

pub(crate) const BIND_ONLY: &str = r#"
name: {name}
services:
  app:
    image: {image}
    command: {daemon}
    restart: always
    volumes: ["./data:/data"]
"#;

fn project(test: &str) -> Option<Project> {
    let p = Project::new(test, BIND_ONLY)?;
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/f.txt"), "first").unwrap();
    p.compose(&["create"]).success();
    Some(p)
}

fn create(p: &Project, version: &str) -> serde_json::Value {
    p.plugin(&["create", "--service-version", version, "--format", "json"])
        .success()
        .json()
}

/// Digits become `N`, so ids, times and sizes do not matter.
fn mask(text: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

#[test]
fn list_shows_rows_newest_first_and_warns_about_missing_files() {
    let Some(p) = project("list") else { return };
    let a = create(&p, "1.0");
    let b = create(&p, "2.0");
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], b["id"], "newest first");
    for key in [
        "id",
        "project",
        "file_path",
        "service_version",
        "backup_type",
        "status",
        "created_at",
        "size_bytes",
        "sha256",
        "file_count",
    ] {
        assert_eq!(rows[0][key], b[key], "{key}");
    }
    assert_eq!(rows[0]["file_exists"], true);
    let ids = p.plugin(&["list", "--format", "ids"]).success();
    assert_eq!(ids.stdout, format!("{}\n{}\n", b["id"], a["id"]));
    let alias = p.plugin(&["backup", "list", "--format", "ids"]).success();
    assert_eq!(alias.stdout, ids.stdout);

    std::fs::remove_file(a["file_path"].as_str().unwrap()).unwrap();
    let table = p.plugin(&["list"]).success();
    assert_eq!(
        mask(&table.stdout),
        concat!(
            " ID  CREATED              TYPE    VERSION  SIZE   STATUS     WHERE  RESTORE TEST\n",
            " N   N-N-N N:N:N  manual  N.N      N B  completed  local  -\n",
            " N   N-N-N N:N:N  manual  N.N      N B  completed  none   -             ! file missing\n"
        ),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stderr
            .contains(&format!("backup #{}: file missing", a["id"])),
        "{}",
        table.stderr
    );
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(rows[1]["file_exists"], false);
}

#[test]
fn verify_passes_good_archives_and_fails_damaged_ones() {
    let Some(p) = project("verifycmd") else {
        return;
    };
    let good = create(&p, "1");
    let bad = create(&p, "2");
    let ok = p
        .plugin(&["verify", &good["id"].to_string(), "--format", "json"])
        .success()
        .json();
    assert_eq!(ok[0]["ok"], true);
    let path = PathBuf::from(bad["file_path"].as_str().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let run = p
        .plugin(&["verify", "--all", "--format", "json"])
        .failure(12);
    let results: Vec<(i64, String)> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["id"].as_i64().unwrap(),
                o["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (good_id, bad_id) = (good["id"].as_i64().unwrap(), bad["id"].as_i64().unwrap());
    assert!(
        results.iter().any(|(id, r)| *id == good_id && r == "ok"),
        "{results:?}"
    );
    assert!(
        results.iter().any(|(id, r)| *id == bad_id && r != "ok"),
        "{results:?}"
    );
    assert!(
        run.error_line()
            .starts_with(&format!("verification failed for #{bad_id} (")),
        "{}",
        run.stderr
    );
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    p.plugin(&["verify", &bad["id"].to_string()]).failure(12);
    let conn = p.catalog_db();
    let (at, result): (Option<String>, Option<String>) = conn
        .query_row(
            "SELECT verified_at, verify_result FROM backups WHERE id = ?1",
            [good["id"].as_i64().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(at.is_some());
    assert_eq!(result.as_deref(), Some("ok"));
}

#[test]
fn delete_asks_and_removes_file_and_row() {
    let Some(p) = project("delete") else { return };
    let a = create(&p, "1");
    let id = a["id"].to_string();
    p.plugin(&["delete", &id]).failure(2);
    assert!(
        Path::new(a["file_path"].as_str().unwrap()).exists(),
        "nothing deleted without --yes"
    );
    p.plugin(&["delete", "424242", "--yes"]).failure(2);
    p.plugin(&["delete", &id, "--yes"]).success();
    assert!(!Path::new(a["file_path"].as_str().unwrap()).exists());
    assert_eq!(p.plugin(&["list", "--format", "ids"]).success().stdout, "");
    // A row whose file is already gone can be deleted.
    let b = create(&p, "2");
    std::fs::remove_file(b["file_path"].as_str().unwrap()).unwrap();
    p.plugin(&["delete", &b["id"].to_string(), "--yes"])
        .success();
}

#[test]
fn import_rebuilds_a_lost_catalog_on_which_rollback_works() {
    let Some(p) = project("import") else { return };
    let a = create(&p, "3.1");
    std::fs::write(p.path("backups/notes.txt"), "not an archive").unwrap();
    std::fs::remove_file(p.catalog()).unwrap();
    let run = p
        .plugin(&["import", "backups", "--format", "json"])
        .success();
    assert!(run.stderr.contains("notes.txt"), "{}", run.stderr);
    let rows = run.json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    for key in [
        "project",
        "file_path",
        "service_version",
        "backup_type",
        "sha256",
        "size_bytes",
        "file_count",
        "created_at",
    ] {
        assert_eq!(rows[0][key], a[key], "{key}");
    }
    std::fs::write(p.path("data/f.txt"), "changed").unwrap();
    p.plugin(&["rollback", &rows[0]["id"].to_string(), "--yes"])
        .success();
    assert_eq!(
        std::fs::read_to_string(p.path("data/f.txt")).unwrap(),
        "first"
    );
    let again = p
        .plugin(&["import", "backups", "--format", "json"])
        .success()
        .json();
    assert_eq!(
        again.as_array().unwrap().len(),
        0,
        "known archives (the safety backup too) are not imported twice"
    );
}

fn file_paths(p: &Project) -> Vec<PathBuf> {
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| PathBuf::from(r["file_path"].as_str().unwrap()))
        .collect()
}

#[test]
fn migrate_storage_moves_across_filesystems_and_survives_interruption() {
    let Some(p) = project("migrate") else { return };
    std::fs::write(p.path("data/big"), vec![3u8; 8 << 20]).unwrap();
    for v in ["1", "2", "3"] {
        create(&p, v);
    }
    let target = p.path("elsewhere");
    std::fs::create_dir_all(&target).unwrap();
    let _umount = Tmpfs::mount(target.clone(), "64m");
    let new_dir = target.join("bk");

    for delay_ms in [5u64, 30, 80] {
        let mut child = p.plugin_spawn(&["migrate-storage", new_dir.to_str().unwrap(), "--yes"]);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        for pid in crate::create::children_of(child.id()) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        for f in file_paths(&p) {
            assert!(
                f.is_file(),
                "after a kill at {delay_ms} ms, {} is reachable",
                f.display()
            );
        }
    }
    p.plugin(&["migrate-storage", new_dir.to_str().unwrap(), "--yes"])
        .success();
    let files = file_paths(&p);
    assert_eq!(files.len(), 3);
    assert!(
        files.iter().all(|f| f.starts_with(&new_dir) && f.is_file()),
        "{files:?}"
    );
    let old: Vec<_> = std::fs::read_dir(p.path("backups"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("backup_"))
        .collect();
    assert!(old.is_empty(), "old files removed");
    p.plugin(&["verify", "--all"]).success();
    let next = create(&p, "4");
    assert!(
        next["file_path"]
            .as_str()
            .unwrap()
            .starts_with(new_dir.to_str().unwrap()),
        "later creates use the new folder"
    );
    std::fs::write(p.path("data/f.txt"), "changed").unwrap();
    let first = file_paths(&p).len();
    assert_eq!(first, 4);
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    let oldest = rows.as_array().unwrap().last().unwrap()["id"].to_string();
    p.plugin(&["rollback", &oldest, "--yes", "--no-safety-backup"])
        .success();
    assert_eq!(
        std::fs::read_to_string(p.path("data/f.txt")).unwrap(),
        "first"
    );
}

#[test]
fn prune_keeps_what_the_policy_says() {
    let Some(p) = project("prune") else { return };
    let ids: Vec<i64> = ["1", "2", "3"]
        .iter()
        .map(|v| create(&p, v)["id"].as_i64().unwrap())
        .collect();
    let plan = p
        .plugin(&["prune", "--keep-last", "1", "--dry-run", "--format", "json"])
        .success()
        .json();
    let keep: Vec<bool> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["keep"].as_bool().unwrap())
        .collect();
    assert_eq!(keep, [true, false, false]);
    assert_eq!(file_paths(&p).len(), 3, "dry run deletes nothing");
    p.plugin(&["prune", "--keep-last", "1"]).failure(2);
    p.plugin(&["prune"]).failure(2);
    p.plugin(&["verify", &ids[0].to_string()]).success();
    p.plugin(&["prune", "--keep-last", "1", "--yes"]).success();
    let left: Vec<i64> = p
        .plugin(&["list", "--format", "ids"])
        .success()
        .stdout
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        left,
        [ids[2], ids[0]],
        "the newest, and the newest verified one"
    );
    assert!(file_paths(&p).iter().all(|f| f.is_file()));
}
