//! What is found on disk is not trusted: a container that plants look-alike staging in its
//! own bind, a run record edited to name host files, records in folders others can write,
//! and two projects whose binds share a parent folder. The tool acts only on the project's
//! declared targets and on the folders its own private run records name.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::harness::{app_running, app_with, describe_tree, entries_starting, Project};
use crate::hostile::Sentinel;

/// What a compromised container writes into its bind (mounted at /data): a staging folder
/// of each spelling, a journal that moves `payload` in, `new`/`old` links to a host folder,
/// and a `root` file giving the bind root another owner and mode.
fn plant(p: &Project, host: &Path) {
    let h = host.display();
    let script = format!(
        "for d in .nuwax-restore-1 .nuwax-restore-{name}-1; do mkdir -p /data/$d && \
         printf 'i 7061796c6f6164\\n' > /data/$d/journal && ln -sfn {h} /data/$d/new && \
         ln -sfn {h} /data/$d/old && echo 'root 511 4321 4321 0' > /data/$d/root && \
         echo 'root 511 4321 4321 0' > /data/$d/new-root; done && echo planted > /data/payload",
        name = p.name
    );
    p.compose(&["exec", "-T", "app", "sh", "-c", &script])
        .success();
}

fn root_attrs(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[test]
fn staging_planted_by_a_container_is_reported_and_never_acted_on() {
    let Some(p) = Project::new("planted", &app_with("\"./data:/data\"")) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/a.txt"), "a").unwrap();
    p.up();
    let id = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json()["id"]
        .to_string();
    let host = Sentinel::new("planted");
    let before = host.snapshot();
    let root = root_attrs(&p.path("data"));
    let planted = [
        p.path("data/.nuwax-restore-1").display().to_string(),
        p.path(&format!("data/.nuwax-restore-{}-1", p.name))
            .display()
            .to_string(),
    ];
    let check = |what: &str| {
        assert_eq!(host.snapshot(), before, "{what}: the host folder changed");
        assert_eq!(
            root_attrs(&p.path("data")),
            root,
            "{what}: the bind root changed"
        );
        app_running(&p);
    };

    plant(&p, &host.0);
    for args in [&["create", "--stop"][..], &["recover"]] {
        p.plugin(args).success();
        check(args[0]);
        assert_eq!(
            std::fs::read_to_string(p.path("data/payload")).unwrap(),
            "planted\n"
        );
    }
    p.compose(&["stop"]).success();
    p.plugin(&["create"]).success();
    p.compose(&["start"]).success();
    check("create");
    let status = p.plugin(&["status", "--format", "json"]).success().json();
    assert_eq!(
        status["unknown_staging"],
        serde_json::json!(planted),
        "{status}"
    );
    let table = p.plugin(&["status"]).success();
    assert!(
        table.stdout.contains(&format!("Unknown staging {}: no run record of this project names it, so it is never acted on; check it and remove it by hand", planted[0])),
        "{}",
        table.stdout
    );

    // A rollback replaces the bind's content (the planted folders were not in the backup).
    p.plugin(&["rollback", &id, "--yes"]).success();
    check("rollback");
    assert!(!p.path("data/payload").exists());
    assert_eq!(
        p.plugin(&["status", "--format", "json"]).success().json()["unknown_staging"],
        serde_json::json!([])
    );
}

fn runs_dir(p: &Project) -> PathBuf {
    p.catalog().parent().unwrap().join("runs")
}

fn write_record(p: &Project, record: serde_json::Value) {
    let dir = runs_dir(p);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = dir.join(format!("{}.json", p.name));
    std::fs::write(&file, serde_json::to_vec(&record).unwrap()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_run_record_that_names_host_files_or_that_others_could_write_is_not_obeyed() {
    let Some(p) = Project::new("record", &app_with("\"./data:/data\"")) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    p.up();
    p.plugin(&["status"]).success();
    let host = Sentinel::new("record");
    let before = host.snapshot();
    let secret = host.0.join("secret");
    let ino = std::fs::metadata(&secret).unwrap().ino();
    let dead = 999_999_999u32;
    let base = serde_json::json!({
        "pid": dead, "started_at": "2026-01-01T00:00:00Z", "phase": "safety-after",
        "stopped": [], "stopped_services": [], "stopped_containers": [],
    });
    // A create whose captures are host files; a rollback whose swap, staging and emptied
    // target are host files.
    let mut create = base.clone();
    create["command"] = "create".into();
    create["captures"] = serde_json::json!([
        secret,
        host.0.join(format!(".nuwax-capture-{}-{dead}-x", p.name))
    ]);
    let mut rollback = base.clone();
    rollback["command"] = "rollback".into();
    rollback["swaps"] =
        serde_json::json!([{"target": secret, "staging": host.0.join("sub"), "staged_ino": ino}]);
    rollback["in_place"] = serde_json::json!([host.0]);
    rollback["made"] = serde_json::json!([{"path": host.0.join("sub"), "dev": 0, "ino": 0}]);
    for record in [create, rollback] {
        write_record(&p, record);
        let run = p.plugin(&["recover"]).success();
        assert!(
            run.stderr.contains(&format!("warning: the run record names the capture {}, which is not this project's nor the tool's own: left alone", secret.display()))
                || run.stderr.contains(&format!("warning: the run record names the swap {}, which is not this project's nor the tool's own: left alone", host.0.join("sub").display())),
            "{}",
            run.stderr
        );
        assert_eq!(host.snapshot(), before);
        app_running(&p);
    }

    // A record in a folder others can write is refused, naming it and the fix.
    write_record(&p, {
        let mut r = base.clone();
        r["command"] = "create".into();
        r
    });
    let dir = runs_dir(&p);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["recover"][..], &["create", "--stop"]] {
        let refused = p.plugin(args).failure(1);
        assert_eq!(
            refused.error_line(),
            format!(
                "{} is writable by group or others (mode 777), so its run records are not trusted: make it yours and private (chown 0 '{}'; chmod go-w '{}'), or point NUWAX_BACKUP_CATALOG at a private folder",
                dir.display(),
                dir.display(),
                dir.display()
            )
        );
    }
    app_running(&p);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    p.plugin(&["recover"]).success();
}

#[test]
fn projects_whose_binds_share_a_folder_never_remove_each_others_staging() {
    let shared = tempfile::Builder::new()
        .prefix("nwx-shared-")
        .tempdir()
        .unwrap();
    let bind = |n: &str| format!("\"{}:/data\"", shared.path().join(n).display());
    let Some(a) = Project::new("shared-a", &app_with(&bind("a"))) else {
        return;
    };
    let Some(b) = Project::new("shared-b", &app_with(&bind("b"))) else {
        return;
    };
    for (p, n) in [(&a, "a"), (&b, "b")] {
        std::fs::create_dir_all(shared.path().join(n)).unwrap();
        std::fs::write(shared.path().join(n).join("state"), "v1").unwrap();
        p.up();
    }
    let backup = |p: &Project| {
        p.plugin(&[
            "create",
            "--stop",
            "--include-external-binds",
            "--format",
            "json",
        ])
        .success()
        .json()["id"]
            .to_string()
    };
    let (ida, idb) = (backup(&a), backup(&b));
    for n in ["a", "b"] {
        std::fs::write(shared.path().join(n).join("state"), "v2").unwrap();
    }
    // A's staged rollback is killed after its swap, once its services run again: its
    // previous content ("v2") waits beside the bind for its safety backup.
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "rollback-safety-after")];
    assert_ne!(a.plugin_env(&kill, &["rollback", &ida, "--yes"]).code, 0);
    let waiting = entries_starting(&[shared.path()], &format!(".nuwax-restore-{}-", a.name));
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let kept = describe_tree(&waiting[0]);
    // B rolls back and recovers in the same folder: A's staging stays as it is.
    b.plugin(&["rollback", &idb, "--yes"]).success();
    b.plugin(&["recover"]).success();
    assert_eq!(describe_tree(&waiting[0]), kept);
    // A's recover then finishes its safety backup of "v2": nothing lost.
    a.plugin(&["recover"]).success();
    let list = a.plugin(&["list", "--format", "json"]).success().json();
    let safety = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["backup_type"] == "pre-rollback" && r["status"] == "completed")
        .unwrap()["file_path"]
        .as_str()
        .unwrap()
        .to_string();
    let out = std::process::Command::new("tar")
        .args(["--zstd", "-xOf", &safety, "--wildcards", "*/state"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v2");
    assert!(entries_starting(&[shared.path()], ".nuwax-restore-").is_empty());
    for n in ["a", "b"] {
        assert_eq!(
            std::fs::read_to_string(shared.path().join(n).join("state")).unwrap(),
            "v1"
        );
    }
    app_running(&a);
    app_running(&b);
}
