//! Off-host copies on a real S3-compatible server (s3s-fs), checked with an independent
//! client (boto3): upload after the services run again, failures that keep the local
//! backup (exit 14), `push`, `import s3://` and rollback onto a host that lost everything.
use std::path::PathBuf;

use crate::harness::{describe_tree, Project, Run, Tmpfs};
use crate::s3::S3Server;

const YAML: &str = r#"name: {name}
services:
  db:
    image: {image}
    command: {daemon}
    restart: always
    volumes:
      - ./data:/data
      - dbvol:/v
volumes:
  dbvol: {}
"#;

fn project(test: &str) -> Option<Project> {
    let p = Project::new(test, YAML)?;
    std::fs::create_dir_all(p.path("data/db")).unwrap();
    std::fs::write(p.path("data/db/table"), "rows v1\n").unwrap();
    std::fs::write(p.path("data/conf"), "v1").unwrap();
    std::os::unix::fs::symlink("db/table", p.path("data/link")).unwrap();
    p.up();
    p.in_volume(
        &format!("{}_dbvol", p.name),
        "echo v1 > /v/state && mkdir -p /v/d && chown 999:999 /v/d && chmod 0750 /v/d",
    )
    .success();
    Some(p)
}

/// A server with `bucket`, and a project (none: skipped outside CI, see the harness).
fn setup(server: &str, bucket: &str, test: &str) -> Option<(S3Server, Project)> {
    let s3 = S3Server::start(server, &[bucket])?;
    Some((s3, project(test)?))
}

/// `docker nuwaxbackup ARGS…` with the server's AWS_* environment.
fn with_s3(p: &Project, s3: &S3Server, args: &[&str]) -> Run {
    killed_at(p, s3, "", args)
}

/// [`with_s3`], the plugin SIGKILLing itself at fault point `point` (none when empty).
fn killed_at(p: &Project, s3: &S3Server, point: &str, args: &[&str]) -> Run {
    let mut env = s3.env();
    if !point.is_empty() {
        env.push(("NUWAX_BACKUP_TEST_KILL_AT", point.to_string()));
    }
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    p.plugin_env(&pairs, args)
}

/// A killed upload is still open on the server; `recover` aborts it and says so.
fn recover_aborts_the_open_upload(p: &Project, s3: &S3Server) {
    assert!(
        !s3.open_uploads().is_empty(),
        "the killed upload is still open on the server"
    );
    let rec = with_s3(p, s3, &["recover"]).success();
    assert!(
        rec.stderr.contains("aborted the unfinished upload"),
        "{}",
        rec.stderr
    );
    assert_eq!(s3.open_uploads(), Vec::<String>::new());
}

/// `PREFIX/<project>/<name>` of a row's remote URL, in `bucket`.
fn key_of(row: &serde_json::Value, bucket: &str) -> String {
    row["remote_url"]
        .as_str()
        .unwrap()
        .strip_prefix(&format!("s3://{bucket}/"))
        .unwrap()
        .to_string()
}

/// `p-….tar.gz` → `p-…_2.tar.gz`.
fn numbered(name: &str) -> String {
    let i = name.find(".tar.").unwrap();
    format!("{}_2{}", &name[..i], &name[i..])
}

/// Incompressible bytes (xorshift), so the archive is as large as the data.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn create_uploads_after_the_restart_and_boto3_reads_the_same_bytes() {
    let Some((s3, p)) = setup("upload", "bkt", "remote-up") else {
        return;
    };
    let run = with_s3(
        &p,
        &s3,
        &[
            "create",
            "--stop",
            "--remote",
            "s3://bkt/site",
            "--format",
            "json",
        ],
    )
    .success();
    let row = run.json();
    assert_eq!(row["remote_status"], "uploaded", "{}", run.stderr);
    let key = key_of(&row, "bkt");
    let name = PathBuf::from(row["file_path"].as_str().unwrap());
    let name = name.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(key, format!("site/{}/{name}", p.name));
    assert!(
        run.stderr.contains("uploaded to s3://bkt/site/"),
        "{}",
        run.stderr
    );
    assert_eq!(p.states("db"), vec![format!("{}-db-1 running", p.name)]);
    // The independent client reads what we uploaded: same SHA-256, in metadata too.
    assert_eq!(s3.sha256_of("bkt", &key), row["sha256"].as_str().unwrap());
    let meta = s3.boto3(&format!(
        "print(s3.get_object(Bucket='bkt', Key='{key}')['Metadata']['sha256'])"
    ));
    assert_eq!(meta.trim(), row["sha256"].as_str().unwrap());
    let side: serde_json::Value = serde_json::from_str(&s3.boto3(&format!(
        "sys.stdout.write(s3.get_object(Bucket='bkt', Key='{key}.json')['Body'].read().decode())"
    )))
    .unwrap();
    assert_eq!(side["sha256"], row["sha256"]);
    assert_eq!(side["size_bytes"], row["size_bytes"]);
    assert_eq!(side["file_name"], name);
    assert_eq!(side["encrypted"], false);
    assert!(
        side.get("file_path").is_none() && side.get("project_dir").is_none(),
        "{side}"
    );
    // Secrets appear nowhere: output, catalog, sidecars.
    let catalog = std::fs::read(p.catalog()).unwrap();
    for text in [
        run.stdout.as_bytes(),
        run.stderr.as_bytes(),
        &catalog[..],
        side.to_string().as_bytes(),
    ] {
        assert!(!String::from_utf8_lossy(text).contains(&s3.secret_key));
    }
    let listed = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(listed[0]["location"], "both");
    assert_eq!(listed[0]["remote_url"], row["remote_url"]);
    let table = p.plugin(&["list"]).success().stdout;
    assert!(table.contains("WHERE") && table.contains("both"), "{table}");
    let id = row["id"].to_string();
    let v = with_s3(&p, &s3, &["verify", "--remote", &id, "--format", "json"])
        .success()
        .json();
    assert_eq!(v[0]["result"], "size-ok");
    let v = with_s3(
        &p,
        &s3,
        &["verify", "--remote", "--download", &id, "--format", "json"],
    )
    .success()
    .json();
    assert_eq!(v[0]["result"], "ok");
    // push is idempotent: the copy is complete, nothing is sent again.
    let again = with_s3(&p, &s3, &["push", &id]).success();
    assert!(again.stderr.contains("is already at"), "{}", again.stderr);
    // delete removes both copies.
    with_s3(&p, &s3, &["delete", "-y", &id]).success();
    assert_eq!(s3.keys("bkt"), Vec::<String>::new());
    assert!(p
        .plugin(&["list", "--format", "ids"])
        .success()
        .stdout
        .trim()
        .is_empty());
}

#[test]
fn the_host_died_import_from_the_bucket_and_rollback_bring_everything_back() {
    let Some((s3, p)) = setup("dr", "drb", "remote-dr") else {
        return;
    };
    let volume = format!("{}_dbvol", p.name);
    let tree = describe_tree(&p.path("data"));
    let vol = p.volume_tree(&volume);
    // The bucket comes from the compose file this time.
    p.write_compose(&format!("{YAML}x-nuwax-backup:\n  remote: s3://drb/prod\n"));
    let row = with_s3(&p, &s3, &["create", "--stop", "--format", "json"])
        .success()
        .json();
    assert_eq!(row["remote_status"], "uploaded");
    // The host dies: catalog, backups, the bind's folder and the volume are gone.
    p.compose(&["down", "-v"]).success();
    std::fs::remove_dir_all(p.catalog().parent().unwrap()).unwrap();
    std::fs::remove_dir_all(p.path("backups")).unwrap();
    std::fs::remove_dir_all(p.path("data")).unwrap();
    let imported = with_s3(&p, &s3, &["import", "s3://drb/prod", "--format", "json"])
        .success()
        .json();
    assert_eq!(imported.as_array().unwrap().len(), 1, "{imported}");
    let id = imported[0]["id"].to_string();
    assert_eq!(imported[0]["sha256"], row["sha256"]);
    let listed = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(listed[0]["location"], "remote");
    let back = with_s3(&p, &s3, &["rollback", &id, "--yes"]).success();
    assert!(
        back.stderr.contains("downloading backup"),
        "{}",
        back.stderr
    );
    assert_eq!(describe_tree(&p.path("data")), tree);
    assert_eq!(p.volume_tree(&volume), vol);
    // Nothing ran before the rollback, so nothing was started: the operator starts it.
    p.up();
    assert_eq!(p.states("db"), vec![format!("{}-db-1 running", p.name)]);
    assert_eq!(describe_tree(&p.path("data")), tree);
    let listed = p.plugin(&["list", "--format", "json"]).success().json();
    let restored = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == imported[0]["id"])
        .unwrap();
    assert_eq!(restored["location"], "both");
    // Importing again adds nothing.
    let again = with_s3(&p, &s3, &["import", "s3://drb/prod", "--format", "json"])
        .success()
        .json();
    assert_eq!(again.as_array().unwrap().len(), 0);
}

#[test]
fn a_server_killed_mid_upload_keeps_the_local_backup_and_push_finishes_it() {
    let Some((mut s3, p)) = setup("kill", "big", "remote-kill") else {
        return;
    };
    std::fs::write(
        p.path("data/db/blob"),
        noise(320 << 20, 0x9E37_79B9_7F4A_7C15),
    )
    .unwrap();
    // Fewer, larger parts when the provider caps them: --max-parts 10.
    let first = with_s3(
        &p,
        &s3,
        &[
            "create",
            "--stop",
            "--compression",
            "zstd",
            "--remote",
            "s3://big/a",
            "--max-parts",
            "10",
            "--format",
            "json",
        ],
    )
    .success();
    let row = first.json();
    let size = row["size_bytes"].as_u64().unwrap();
    assert!(size > 300 << 20, "{size}");
    let part = (8u64 << 20).max(size.div_ceil(10));
    assert!(
        first.stderr.contains(&format!(
            "({} parts of {} MiB)",
            size.div_ceil(part),
            part >> 20
        )),
        "{}",
        first.stderr
    );
    assert_eq!(
        s3.sha256_of("big", &key_of(&row, "big")),
        row["sha256"].as_str().unwrap()
    );
    // The server dies while the parts of the next backup go up.
    let child = p.plugin_spawn_env(
        &s3.env(),
        &[
            "create",
            "--stop",
            "--compression",
            "zstd",
            "--remote",
            "s3://big/b",
            "--format",
            "json",
        ],
    );
    let t0 = std::time::Instant::now();
    while !s3.open_uploads().iter().any(|n| n.contains(".part-")) {
        assert!(t0.elapsed().as_secs() < 120, "no part was ever uploaded");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    s3.kill();
    let out = Run::from(child.wait_with_output().unwrap()).failure(14);
    let second = out.json();
    let (sid, spath) = (&second["id"], second["file_path"].as_str().unwrap());
    let line = out.error_line();
    assert!(
        line.starts_with(&format!(
            "backup #{sid} is complete on this host ({spath}), but its upload failed: "
        )) && line.ends_with(&format!(
            "; run `docker nuwaxbackup push {sid}` to try again"
        )),
        "{line}"
    );
    assert!(!out.stderr.contains(&s3.secret_key));
    assert_eq!(second["status"], "completed");
    assert_eq!(second["remote_status"], "failed");
    assert!(PathBuf::from(second["file_path"].as_str().unwrap()).is_file());
    assert_eq!(p.states("db"), vec![format!("{}-db-1 running", p.name)]);
    let listed = p.plugin(&["list"]).success().stdout;
    assert!(listed.contains("local (upload failed)"), "{listed}");
    // Back up: push aborts the open upload, sends it again (8 MiB parts), and leaves none open.
    s3.restart();
    let id = second["id"].to_string();
    let pushed = with_s3(&p, &s3, &["push", &id, "--format", "json"]).success();
    assert!(
        pushed.stderr.contains("aborted the unfinished upload"),
        "{}",
        pushed.stderr
    );
    let size2 = second["size_bytes"].as_u64().unwrap();
    assert!(
        pushed
            .stderr
            .contains(&format!("({} parts of 8 MiB)", size2.div_ceil(8 << 20))),
        "{}",
        pushed.stderr
    );
    let row2 = &pushed.json()[0];
    assert_eq!(row2["remote_status"], "uploaded");
    assert_eq!(s3.open_uploads(), Vec::<String>::new());
    assert_eq!(
        s3.sha256_of("big", &key_of(row2, "big")),
        second["sha256"].as_str().unwrap()
    );
}

#[test]
fn wrong_keys_a_missing_bucket_and_a_bad_url_are_clear_errors() {
    let Some((s3, p)) = setup("refuse", "here", "remote-refuse") else {
        return;
    };
    let bad = p
        .plugin(&["create", "--stop", "--remote", "ftp://here"])
        .failure(2);
    assert_eq!(
        bad.error_line(),
        "\"ftp://here\" is not a remote: write s3://BUCKET[/PREFIX]"
    );
    assert!(p
        .plugin(&["list", "--format", "ids"])
        .success()
        .stdout
        .trim()
        .is_empty());
    let wrong = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret-key"),
        ("AWS_ENDPOINT_URL", &s3.endpoint()),
        ("AWS_REGION", "us-east-1"),
    ];
    let refused = p
        .plugin_env(
            &wrong,
            &[
                "create",
                "--stop",
                "--remote",
                "s3://here",
                "--format",
                "json",
            ],
        )
        .failure(14);
    assert_eq!(refused.json()["status"], "completed");
    assert_eq!(refused.json()["remote_status"], "failed");
    assert!(
        !refused.stderr.contains("not-the-secret-key"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        refused
            .stderr
            .trim()
            .lines()
            .last()
            .unwrap()
            .matches("upload failed")
            .count(),
        1
    );
    let missing = with_s3(
        &p,
        &s3,
        &[
            "create",
            "--stop",
            "--remote",
            "s3://nosuchbucket/x",
            "--format",
            "json",
        ],
    )
    .failure(14);
    assert!(
        missing.stderr.contains("nosuchbucket"),
        "{}",
        missing.stderr
    );
    // --remote-only finds out before anything stops: no downtime, no row.
    let only = [
        "create",
        "--stop",
        "--remote",
        "s3://nosuchbucket",
        "--remote-only",
    ];
    let early = with_s3(&p, &s3, &only).failure(14);
    assert!(!early.stderr.contains("stopping"), "{}", early.stderr);
    assert!(early.stderr.contains("does not exist"), "{}", early.stderr);
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "completed" && r["remote_status"] == "failed"));
    assert_eq!(p.states("db"), vec![format!("{}-db-1 running", p.name)]);
    let catalog = std::fs::read(p.catalog()).unwrap();
    assert!(!String::from_utf8_lossy(&catalog).contains("not-the-secret-key"));
}

#[test]
fn an_archive_boto3_uploaded_with_our_sidecar_is_imported_and_verified() {
    let Some((s3, p)) = setup("interop", "ext", "remote-interop") else {
        return;
    };
    let row = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json();
    let file = row["file_path"].as_str().unwrap().to_string();
    let name = PathBuf::from(&file)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let key = format!("copied/{}/{name}", p.name);
    s3.boto3(&format!(
        "s3.upload_file('{file}', 'ext', '{key}')\ns3.upload_file('{file}.json', 'ext', '{key}.json')"
    ));
    // This host pushes there too: the name is taken (by "another host"), so it gets `_2`.
    let id0 = row["id"].to_string();
    let pushed = with_s3(
        &p,
        &s3,
        &[
            "push",
            &id0,
            "--remote",
            "s3://ext/copied",
            "--format",
            "json",
        ],
    )
    .success()
    .json();
    let url = pushed[0]["remote_url"].as_str().unwrap().to_string();
    assert!(url.ends_with(&numbered(&name)), "{url}");
    assert_eq!(s3.sha256_of("ext", &key), row["sha256"].as_str().unwrap());
    with_s3(&p, &s3, &["delete", "-y", &id0]).success();
    // On another host: an empty catalog.
    std::fs::remove_dir_all(p.catalog().parent().unwrap()).unwrap();
    let other = with_s3(
        &p,
        &s3,
        &[
            "import",
            "s3://ext/copied",
            "--project",
            "someone-else",
            "--format",
            "json",
        ],
    )
    .success()
    .json();
    assert_eq!(other.as_array().unwrap().len(), 0);
    let got = with_s3(
        &p,
        &s3,
        &[
            "import",
            "s3://ext/copied",
            "--project",
            &p.name,
            "--format",
            "json",
        ],
    )
    .success()
    .json();
    assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got[0]["sha256"], row["sha256"]);
    assert_eq!(got[0]["remote_url"], format!("s3://ext/{key}"));
    let id = got[0]["id"].to_string();
    let v = with_s3(
        &p,
        &s3,
        &["verify", "--remote", "--download", &id, "--format", "json"],
    )
    .success()
    .json();
    assert_eq!(v[0]["result"], "ok");
    // The server is gone: delete keeps the row and says why (exit 14).
    drop(s3);
    let env = [
        ("AWS_ACCESS_KEY_ID", "x"),
        ("AWS_SECRET_ACCESS_KEY", "y"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_REGION", "us-east-1"),
    ];
    let kept = p.plugin_env(&env, &["delete", "-y", &id]).failure(14);
    let line = kept.error_line();
    assert!(
        line.starts_with(&format!(
            "backup #{id}: the local archive is gone, the copy at s3://"
        )) && line.contains(" is not (the row is kept; delete it again): "),
        "{line}"
    );
    assert_eq!(
        p.plugin(&["list", "--format", "ids"])
            .success()
            .stdout
            .trim(),
        id
    );
}

#[test]
fn remote_only_streams_volumes_larger_than_the_free_disk_and_rolls_back() {
    let Some((mut s3, p)) = setup("only", "str", "remote-only") else {
        return;
    };
    std::fs::write(p.path("data/db/blob"), noise(12 << 20, 7)).unwrap();
    let tree = describe_tree(&p.path("data"));
    let volume = format!("{}_dbvol", p.name);
    let vol = p.volume_tree(&volume);
    // The storage folder has 2 MiB: a local archive of 12 MiB cannot fit there.
    let small = Tmpfs::mount(p.path("small"), "2m");
    let store = small.0.to_string_lossy().into_owned();
    p.plugin(&["create", "--stop", "--storage", &store])
        .failure(10);
    let run = with_s3(
        &p,
        &s3,
        &[
            "create",
            "--stop",
            "--storage",
            &store,
            "--remote",
            "s3://str",
            "--remote-only",
            "--format",
            "json",
        ],
    )
    .success();
    let row = run.json();
    assert_eq!(row["remote_status"], "uploaded", "{}", run.stderr);
    assert!(!PathBuf::from(row["file_path"].as_str().unwrap()).exists());
    let key = key_of(&row, "str");
    assert_eq!(s3.sha256_of("str", &key), row["sha256"].as_str().unwrap());
    let names: Vec<String> = std::fs::read_dir(&small.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.is_empty(),
        "nothing is left in the storage folder: {names:?}"
    );
    assert_eq!(
        p.plugin(&["list", "--format", "json"]).success().json()[0]["location"],
        "remote"
    );
    // Without the flag's bucket it is refused before anything stops.
    let refused = p.plugin(&["create", "--stop", "--remote-only"]).failure(2);
    assert_eq!(
        refused.error_line(),
        "--remote-only needs a bucket: pass --remote s3://BUCKET[/PREFIX] or set x-nuwax-backup.remote"
    );
    drop(small);
    // The data changes; with the server down the rollback cannot download: nothing changes.
    std::fs::write(p.path("data/conf"), "v2").unwrap();
    p.in_volume(&volume, "echo v2 > /v/state").success();
    let changed = describe_tree(&p.path("data"));
    let id = row["id"].to_string();
    s3.kill();
    let down = with_s3(&p, &s3, &["rollback", &id, "--yes", "--no-safety-backup"]).failure(14);
    assert!(down.stderr.contains("downloading"), "{}", down.stderr);
    assert_eq!(describe_tree(&p.path("data")), changed);
    assert_eq!(p.states("db"), vec![format!("{}-db-1 running", p.name)]);
    let left: Vec<_> = std::fs::read_dir(p.path("backups"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no partial download is left: {left:?}");
    // The server is back: the rollback downloads the archive and restores it exactly.
    s3.restart();
    with_s3(&p, &s3, &["rollback", &id, "--yes", "--no-safety-backup"]).success();
    assert_eq!(describe_tree(&p.path("data")), tree);
    assert_eq!(p.volume_tree(&volume), vol);
    assert_eq!(p.states("db"), vec![format!("{}-db-1 running", p.name)]);
}

#[test]
fn kill_9_mid_upload_leaves_a_completed_local_backup_and_recover_aborts_the_upload() {
    let Some((s3, p)) = setup("kill9", "k9b", "remote-kill9") else {
        return;
    };
    std::fs::write(p.path("data/db/blob"), noise(30 << 20, 11)).unwrap();
    let killed = killed_at(
        &p,
        &s3,
        "upload-parts",
        &[
            "create",
            "--stop",
            "--compression",
            "zstd",
            "--remote",
            "s3://k9b",
        ],
    );
    assert_ne!(
        killed.code, 0,
        "the kill seam did not fire\n{}",
        killed.stderr
    );
    assert_eq!(p.states("db"), vec![format!("{}-db-1 running", p.name)]);
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    let row = &rows[0];
    assert_eq!(row["status"], "completed");
    assert_eq!(row["remote_status"], "failed");
    assert_eq!(row["location"], "local");
    recover_aborts_the_open_upload(&p, &s3);
    let id = row["id"].to_string();
    with_s3(&p, &s3, &["push", &id]).success();
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(rows[0]["location"], "both");
    assert_eq!(
        s3.sha256_of("k9b", &key_of(&rows[0], "k9b")),
        row["sha256"].as_str().unwrap()
    );
}

#[test]
fn prune_removes_the_remote_copies_of_what_it_deletes() {
    let Some((s3, p)) = setup("prune", "prn", "remote-prune") else {
        return;
    };
    let mut rows = Vec::new();
    for _ in 0..2 {
        let args = [
            "create", "--stop", "--remote", "s3://prn", "--format", "json",
        ];
        rows.push(with_s3(&p, &s3, &args).success().json());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(s3.keys("prn").len(), 4, "two archives and their sidecars");
    with_s3(&p, &s3, &["prune", "--keep-last", "1", "--yes"]).success();
    let kept = key_of(&rows[1], "prn");
    assert_eq!(s3.keys("prn"), vec![kept.clone(), format!("{kept}.json")]);
    let ids = p.plugin(&["list", "--format", "ids"]).success().stdout;
    assert_eq!(ids.trim(), rows[1]["id"].to_string());
}

#[test]
fn kill_9_while_streaming_remote_only_leaves_no_object_and_recover_aborts_the_upload() {
    let Some((s3, p)) = setup("stream9", "s9b", "remote-stream9") else {
        return;
    };
    std::fs::write(p.path("data/db/blob"), noise(30 << 20, 13)).unwrap();
    let args = [
        "create",
        "--stop",
        "--capture",
        "direct",
        "--remote",
        "s3://s9b",
        "--remote-only",
    ];
    let killed = killed_at(&p, &s3, "upload-parts", &args);
    assert_ne!(
        killed.code, 0,
        "the kill seam did not fire\n{}",
        killed.stderr
    );
    // Killed while the services were stopped: recover starts them and aborts the upload.
    recover_aborts_the_open_upload(&p, &s3);
    assert_eq!(s3.keys("s9b"), Vec::<String>::new());
    assert_eq!(p.states("db"), vec![format!("{}-db-1 running", p.name)]);
    let statuses = p.statuses();
    assert!(statuses.iter().all(|s| s == "failed"), "{statuses:?}");
}

#[test]
fn a_remote_only_backup_whose_sidecar_failed_is_finished_by_push() {
    let Some((s3, p)) = setup("side", "sdb", "remote-side") else {
        return;
    };
    let env = s3.env();
    let mut pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.push(("NUWAX_BACKUP_TEST_FAIL_AT", "upload-sidecar"));
    let args = [
        "create",
        "--stop",
        "--remote",
        "s3://sdb",
        "--remote-only",
        "--format",
        "json",
    ];
    let failed = p.plugin_env(&pairs, &args).failure(14);
    let row = failed.json();
    let (rid, url) = (&row["id"], row["remote_url"].as_str().unwrap());
    let line = failed.error_line();
    assert!(
        line.starts_with(&format!(
            "backup #{rid} was streamed to {url}, but its sidecar was not written: "
        )) && line.ends_with(&format!(
            "; run `docker nuwaxbackup push {rid}` to finish it"
        )),
        "{line}"
    );
    assert_eq!(row["status"], "completed");
    assert_eq!(row["remote_status"], "failed");
    assert_eq!(
        s3.keys("sdb"),
        vec![key_of(&row, "sdb")],
        "the object, no sidecar"
    );
    let id = row["id"].to_string();
    with_s3(&p, &s3, &["push", &id]).success();
    let listed = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(listed[0]["location"], "remote");
    let key = key_of(&row, "sdb");
    assert_eq!(s3.keys("sdb"), vec![key.clone(), format!("{key}.json")]);
    assert_eq!(s3.sha256_of("sdb", &key), row["sha256"].as_str().unwrap());
}
