//! `rollback` end to end: exact round trips, partial rollbacks, verification, undo.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::{describe_tree, wait_for_file, Project, Tmpfs, Tmux};

/// `db` refuses to run with a data folder of the wrong owner or mode, like PostgreSQL does.
const APP: &str = r#"
name: {name}
services:
  db:
    image: {image}
    command:
      - sh
      - -c
      - |
        if [ -e /var/lib/db/pgdata ] && [ "$$(stat -c %u:%a /var/lib/db/pgdata)" != "999:700" ]; then
          echo "pgdata has the wrong owner or mode" >&2; exit 3
        fi
        trap 'exit 0' TERM; while :; do sleep 0.2; done
    restart: always
    volumes: ["dbdata:/var/lib/db", "./data:/srv/data", "./conf:/conf:ro"]
volumes:
  dbdata: {}
"#;

fn volume(p: &Project) -> String {
    format!("{}_dbdata", p.name)
}

/// A project with content in every volume, up and running.
fn seeded(test: &str, yaml: &str) -> Option<Project> {
    let p = Project::new(test, yaml)?;
    std::fs::create_dir_all(p.path("data/sub/empty")).unwrap();
    std::fs::write(p.path("data/a.txt"), "version one").unwrap();
    std::fs::hard_link(p.path("data/a.txt"), p.path("data/sub/a-link")).unwrap();
    std::os::unix::fs::symlink("../a.txt", p.path("data/sub/sym")).unwrap();
    std::os::unix::fs::chown(p.path("data/sub"), Some(999), Some(999)).unwrap();
    std::fs::set_permissions(p.path("data/sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all(p.path("conf")).unwrap();
    std::fs::write(p.path("conf/app.ini"), "debug=false\n").unwrap();
    p.up();
    p.in_volume(
        &volume(&p),
        "mkdir -p /v/pgdata/base && echo row1 > /v/pgdata/base/t1 && ln -s base/t1 /v/pgdata/latest && \
         ln /v/pgdata/base/t1 /v/pgdata/t1.hard && chown -R 999:999 /v/pgdata && chmod 0700 /v/pgdata && \
         chown 999:999 /v && chmod 0750 /v",
    )
    .success();
    Some(p)
}

fn backup(p: &Project) -> i64 {
    p.plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json()["id"]
        .as_i64()
        .unwrap()
}

/// Changes every volume: adds, removes, rewrites, chmods, chowns.
fn damage(p: &Project) {
    std::fs::write(p.path("data/a.txt"), "version two, longer").unwrap();
    std::fs::write(p.path("data/new.txt"), "added").unwrap();
    std::fs::remove_dir_all(p.path("data/sub/empty")).unwrap();
    std::fs::set_permissions(p.path("data/sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(p.path("data/a.txt"), Some(1234), Some(1234)).unwrap();
    std::fs::write(p.path("conf/app.ini"), "debug=true\n").unwrap();
    p.in_volume(
        &volume(p),
        "echo row2 >> /v/pgdata/base/t1 && rm /v/pgdata/latest && touch /v/pgdata/stale && chown -R 0:0 /v/pgdata && chmod 0755 /v",
    )
    .success();
}

/// How often the engine restarted `db` (it exits at once on a bad data folder).
fn restarts(p: &Project) -> u64 {
    let out = p
        .docker(&[
            "inspect",
            "-f",
            "{{.RestartCount}}",
            &format!("{}-db-1", p.name),
        ])
        .success();
    out.stdout.trim().parse().unwrap()
}

fn trees(p: &Project) -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        describe_tree(&p.path("data")),
        describe_tree(&p.path("conf")),
        p.volume_tree(&volume(p)),
    )
}

#[test]
fn rollback_restores_every_volume_bit_for_bit_and_restarts() {
    let Some(p) = seeded("roundtrip", APP) else {
        return;
    };
    let before = trees(&p);
    let id = backup(&p);
    damage(&p);
    let damaged = trees(&p);
    assert_ne!(before, damaged);
    p.compose(&["restart", "-t", "2", "db"]).success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while restarts(&p) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "db refuses the damaged data folder"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let run = p
        .plugin(&["rollback", &id.to_string(), "--yes", "--format", "json"])
        .success();
    let report = run.json();
    assert_eq!(report["backup_id"], id);
    assert_eq!(report["mode"], "full");
    assert_eq!(report["restored"].as_array().unwrap().len(), 3);
    assert_eq!(report["started"], serde_json::json!(["db"]));
    let after = trees(&p);
    assert_eq!(after.0, before.0, "bind restored exactly");
    assert_eq!(after.1, before.1, "read-only bind restored exactly");
    assert_eq!(after.2, before.2, "named volume restored exactly");
    let settled = restarts(&p);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        restarts(&p),
        settled,
        "db accepts the restored data folder and keeps running"
    );
    assert_eq!(p.states("db"), [format!("{}-db-1 running", p.name)]);
    let leftovers: Vec<_> = std::fs::read_dir(p.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".nuwax"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The safety backup holds the state just before the rollback, and restores it.
    let safety = report["safety_backup_id"].as_i64().unwrap();
    p.plugin(&["rollback", &safety.to_string(), "--yes"])
        .success();
    assert_eq!(
        trees(&p),
        damaged,
        "rolling back the rollback gives the damaged state back"
    );

    // Through the engine only (`docker cp`, as on a remote engine): the same exact result.
    let engine = [("NUWAX_BACKUP_VOLUME_IO", "engine")];
    p.plugin_env(
        &engine,
        &["rollback", &id.to_string(), "--yes", "--no-safety-backup"],
    )
    .success();
    assert_eq!(trees(&p), before, "restored through docker cp exactly");
}

#[test]
fn data_only_and_exclude_leave_their_targets_untouched() {
    let Some(p) = seeded("partial", APP) else {
        return;
    };
    let id = backup(&p).to_string();
    damage(&p);
    let damaged = trees(&p);
    let before_conf = damaged.1.clone();
    let report = p
        .plugin(&["rollback", &id, "--data-only", "--yes", "--format", "json"])
        .success()
        .json();
    assert_eq!(report["mode"], "data-only");
    assert_eq!(
        report["kept"],
        serde_json::json!([p.path("conf").to_str().unwrap()])
    );
    assert_eq!(
        describe_tree(&p.path("conf")),
        before_conf,
        "app-role bind untouched"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("data/a.txt")).unwrap(),
        "version one"
    );

    damage(&p);
    let vol_before = p.volume_tree(&volume(&p));
    p.plugin(&[
        "rollback",
        &id,
        "--exclude",
        "dbdata",
        "--exclude",
        "./conf",
        "--yes",
    ])
    .success();
    assert_eq!(
        p.volume_tree(&volume(&p)),
        vol_before,
        "excluded volume untouched"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("conf/app.ini")).unwrap(),
        "debug=true\n"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("data/a.txt")).unwrap(),
        "version one"
    );

    let typo = p
        .plugin(&["rollback", &id, "--exclude", "nosuch", "--yes"])
        .failure(2);
    assert_eq!(
        typo.error_line(),
        format!("--exclude nosuch matches no volume of backup #{id}")
    );
}

#[test]
fn after_down_v_rollback_brings_the_volumes_back_as_compose_made_them() {
    let Some(p) = seeded("downv", APP) else {
        return;
    };
    let before = trees(&p);
    let id = backup(&p).to_string();
    p.compose(&["down", "-v", "-t", "1"]).success();
    p.plugin(&["rollback", &id, "--yes", "--no-start"])
        .success();
    let up = p.compose(&["up", "-d"]).success();
    assert!(
        !up.stderr.contains("not created by Docker Compose"),
        "{}",
        up.stderr
    );
    assert!(!up.stderr.contains("Recreate"), "{}", up.stderr);
    assert_eq!(trees(&p).2, before.2);
}

#[test]
fn without_yes_or_id_and_no_terminal_rollback_refuses() {
    let Some(p) = seeded("noyes", APP) else {
        return;
    };
    let id = backup(&p).to_string();
    damage(&p);
    let damaged = trees(&p);
    let no_yes = p.plugin(&["rollback", &id]).failure(2);
    assert_eq!(
        no_yes.error_line(),
        "a rollback replaces data: confirm on a terminal, or pass --yes"
    );
    let no_id = p.plugin(&["rollback", "--yes"]).failure(2);
    assert_eq!(
        no_id.error_line(),
        "no backup ID given: pass one, e.g. `docker nuwaxbackup rollback 7`"
    );
    let unknown = p.plugin(&["rollback", "9999", "--yes"]).failure(2);
    assert_eq!(
        unknown.error_line(),
        "no backup #9999 in the catalog (see `docker nuwaxbackup list`)"
    );
    assert_eq!(trees(&p), damaged);
}

pub(crate) fn archive_of(p: &Project, id: i64) -> PathBuf {
    let conn = p.catalog_db();
    let path: String = conn
        .query_row("SELECT file_path FROM backups WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    PathBuf::from(path)
}

/// Registers a hand-made archive in the catalog with its true checksum.
pub(crate) fn register(p: &Project, path: &Path) -> i64 {
    use sha2::Digest;
    let sha = crate::hex(&sha2::Sha256::digest(std::fs::read(path).unwrap()));
    let conn = p.catalog_db();
    conn.execute(
        "INSERT INTO backups (project, project_dir, file_path, service_version, backup_type, status, created_at, compression, sha256)
         VALUES (?1, ?2, ?3, '1', 'manual', 'completed', '2026-01-01T00:00:00Z', 'gzip', ?4)",
        rusqlite::params![p.name, p.dir.path().to_str().unwrap(), path.to_str().unwrap(), sha],
    )
    .unwrap();
    conn.last_insert_rowid()
}

/// One hand-made entry: (name, type, link target, data).
type RawEntry<'a> = (String, tar::EntryType, &'a str, &'a [u8]);

/// A gzip tar with raw entries: (name, type, link, data).
fn evil_archive(
    dir: &Path,
    name: &str,
    entries: &[(&str, tar::EntryType, &str, &[u8])],
) -> PathBuf {
    let path = dir.join(name);
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    let mut b = tar::Builder::new(gz);
    for (n, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..n.len()].copy_from_slice(n.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
    path
}

#[test]
fn damaged_or_malicious_archives_are_refused_before_any_change() {
    let Some(p) = seeded("verify", APP) else {
        return;
    };
    let id = backup(&p);
    damage(&p);
    let damaged = trees(&p);
    let good = archive_of(&p, id);
    let bytes = std::fs::read(&good).unwrap();
    let evil_dir = p.path("evil");
    std::fs::create_dir_all(&evil_dir).unwrap();

    let mut cases: Vec<(String, i64, &str)> = Vec::new();
    let truncated = evil_dir.join("truncated.tar.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    cases.push(("truncated".into(), register(&p, &truncated), "damaged"));
    let mut flipped_bytes = bytes.clone();
    let mid = flipped_bytes.len() / 3;
    flipped_bytes[mid] ^= 0x55;
    let flipped = evil_dir.join("flipped.tar.gz");
    std::fs::write(&flipped, &flipped_bytes).unwrap();
    let flipped_id = register(&p, &flipped);
    cases.push(("flipped byte".into(), flipped_id, ""));
    let copy = evil_dir.join("copy.tar.gz");
    std::fs::write(&copy, &bytes).unwrap();
    let mismatch = register(&p, &copy);
    p.catalog_db()
        .execute(
            "UPDATE backups SET sha256 = 'abc' WHERE id = ?1",
            [mismatch],
        )
        .unwrap();
    cases.push(("checksum mismatch".into(), mismatch, "checksum mismatch"));
    let gone = evil_dir.join("gone.tar.gz");
    std::fs::write(&gone, &bytes).unwrap();
    let gone_id = register(&p, &gone);
    std::fs::remove_file(&gone).unwrap();
    cases.push(("missing file".into(), gone_id, "opening"));
    let d = |n: &str| format!("binds/data/{n}");
    let evil: Vec<(&str, Vec<RawEntry>, &str)> = vec![
        (
            "dotdot",
            vec![(
                "binds/data/../../escape".into(),
                tar::EntryType::Regular,
                "",
                b"x",
            )],
            "..",
        ),
        (
            "absolute",
            vec![(
                "/tmp/nuwax-evil-absolute".into(),
                tar::EntryType::Regular,
                "",
                b"x",
            )],
            "absolute",
        ),
        (
            "through-symlink",
            vec![
                (d("l"), tar::EntryType::Symlink, "/etc", b""),
                (d("l/evil"), tar::EntryType::Regular, "", b"x"),
            ],
            "symlink",
        ),
        (
            "hardlink-passwd",
            vec![(d("pw"), tar::EntryType::Link, "/etc/passwd", b"")],
            "hard link",
        ),
        (
            "device",
            vec![(d("dev"), tar::EntryType::Char, "", b"")],
            "devices",
        ),
    ];
    for (name, entries, why) in &evil {
        let refs: Vec<(&str, tar::EntryType, &str, &[u8])> = entries
            .iter()
            .map(|(n, t, l, b)| (n.as_str(), *t, *l, *b))
            .collect();
        let path = evil_archive(&evil_dir, &format!("{name}.tar.gz"), &refs);
        cases.push((name.to_string(), register(&p, &path), why));
    }
    for (case, id, why) in cases {
        let run = p.plugin(&["rollback", &id.to_string(), "--yes"]);
        assert_eq!(run.code, 12, "{case}: {}", run.stderr);
        assert!(
            run.stderr.contains("nothing was changed") && run.stderr.contains(why),
            "{case}: {}",
            run.stderr
        );
        assert_eq!(trees(&p), damaged, "{case}: nothing changed");
        assert_eq!(
            p.states("db"),
            [format!("{}-db-1 running", p.name)],
            "{case}: nothing stopped"
        );
    }
    assert!(!Path::new("/tmp/nuwax-evil-absolute").exists());
    assert!(!p.dir.path().parent().unwrap().join("escape").exists());
    let rows: i64 = p
        .catalog_db()
        .query_row(
            "SELECT COUNT(*) FROM backups WHERE backup_type = 'pre-rollback'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0, "no safety backup was taken for a refused rollback");
}

const SMALL: &str = r#"
name: {name}
services:
  db:
    image: {image}
    command: {daemon}
    restart: always
    volumes: ["dbdata:/var/lib/db", "./small/data:/srv/data"]
volumes:
  dbdata: {}
"#;

#[test]
fn a_failure_mid_restore_puts_everything_back_and_restarts() {
    undo_scenario("undo", &[]);
}

#[test]
fn a_failure_mid_restore_through_the_engine_refills_volumes_from_the_safety_backup() {
    undo_scenario("undoengine", &[("NUWAX_BACKUP_VOLUME_IO", "engine")]);
}

fn undo_scenario(test: &str, env: &[(&str, &str)]) {
    let Some(p) = Project::new(test, SMALL) else {
        return;
    };
    let small = p.path("small");
    std::fs::create_dir_all(&small).unwrap();
    let _umount = Tmpfs::mount(small.clone(), "2m");
    std::fs::create_dir_all(small.join("data")).unwrap();
    std::fs::write(small.join("data/big"), vec![7u8; 1200 << 10]).unwrap();
    p.up();
    p.in_volume(&volume(&p), "echo before > /v/state").success();
    let id = backup(&p).to_string();
    // Now the archived bind no longer fits beside the current one on the small filesystem.
    std::fs::remove_file(small.join("data/big")).unwrap();
    std::fs::write(small.join("data/now"), "current").unwrap();
    std::fs::write(small.join("filler"), vec![1u8; 1500 << 10]).unwrap();
    p.in_volume(&volume(&p), "echo after > /v/state").success();
    let bind_before = describe_tree(&small.join("data"));
    let vol_before = p.volume_tree(&volume(&p));

    let run = p.plugin_env(env, &["rollback", &id, "--yes"]);
    assert_eq!(run.code, 13, "{}", run.stderr);
    if env.is_empty() {
        // Staged first: the disk fills before anything stops.
        let line = run.error_line();
        assert!(
            line.starts_with(&format!(
                "rollback to backup #{id} failed while staging, before anything stopped: "
            )) && line.ends_with("; nothing was changed and the services kept running"),
            "{line}"
        );
    } else {
        let line = run.error_line();
        assert!(
            line.starts_with(&format!(
                "rollback to backup #{id} failed and the previous state was put back (safety backup #"
            )),
            "{line}"
        );
    }
    assert_eq!(
        describe_tree(&small.join("data")),
        bind_before,
        "bind as before"
    );
    assert_eq!(
        p.volume_tree(&volume(&p)),
        vol_before,
        "named volume as before"
    );
    assert_eq!(
        p.states("db"),
        [format!("{}-db-1 running", p.name)],
        "restarted"
    );
    let staging: Vec<_> = std::fs::read_dir(&small)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".nuwax"))
        .collect();
    assert!(staging.is_empty(), "staging removed");
}

#[test]
fn kill_9_during_rollback_never_leaves_a_mixed_volume_and_a_rerun_succeeds() {
    let Some(p) = Project::new("rbkill", APP) else {
        return;
    };
    std::fs::create_dir_all(p.path("conf")).unwrap();
    std::fs::create_dir_all(p.path("data")).unwrap();
    let write_all = |fill: u8, extra: usize| {
        // Host files get `fill` bytes; volume files random bytes of another length.
        for i in 0..200 {
            std::fs::write(
                p.path(&format!("data/f{i:03}")),
                vec![fill; 20_000 + extra * i],
            )
            .unwrap();
        }
        let script = format!(
            "for i in $(seq 1 200); do head -c {} /dev/urandom > /v/f$i; done",
            20_000 + extra
        );
        p.in_volume(&volume(&p), &script).success();
    };
    p.up();
    write_all(b'a', 0);
    let id = backup(&p).to_string();
    let archived = (describe_tree(&p.path("data")), p.volume_tree(&volume(&p)));
    for delay_ms in [150u64, 400, 700, 1000, 1400] {
        write_all(b'b', 1);
        let current = (describe_tree(&p.path("data")), p.volume_tree(&volume(&p)));
        let mut child = p.plugin_spawn(&["rollback", &id, "--yes", "--no-safety-backup"]);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        for pid in crate::create::children_of(child.id()) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        // A `docker compose start` the killed run had begun (in its own process group, so
        // that it survives) may still be finishing.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let bind_now = describe_tree(&p.path("data"));
        assert!(
            bind_now == archived.0 || bind_now == current.0,
            "after kill at {delay_ms} ms the bind is mixed"
        );
        let vol_now = p.volume_tree(&volume(&p));
        assert!(
            vol_now == archived.1 || vol_now == current.1,
            "after kill at {delay_ms} ms the volume is mixed"
        );
        p.plugin(&["rollback", &id, "--yes", "--no-safety-backup", "--no-start"])
            .success();
        assert_eq!(
            describe_tree(&p.path("data")),
            archived.0,
            "a rerun completes the rollback"
        );
        assert_eq!(
            p.volume_tree(&volume(&p)),
            archived.1,
            "a rerun completes the rollback"
        );
        p.compose(&["start"]).success();
    }
    // What the killed runs left (helper containers, probe volumes) is gone after the reruns.
    std::thread::sleep(std::time::Duration::from_secs(2));
    p.plugin(&["rollback", &id, "--yes", "--no-safety-backup"])
        .success();
    let dead = |name: &str, prefix: &str| {
        let pid = name
            .trim_start_matches(prefix)
            .split('-')
            .next()
            .unwrap_or("");
        !Path::new("/proc").join(pid).exists()
    };
    let helpers = p
        .docker(&[
            "ps",
            "-a",
            "--filter",
            "name=nuwax-fill-",
            "--format",
            "{{.Names}}",
        ])
        .success()
        .stdout;
    let stale: Vec<&str> = helpers
        .lines()
        .filter(|n| n.contains(&p.name) || dead(n, "nuwax-fill-"))
        .collect();
    assert!(stale.is_empty(), "{stale:?}");
    let probes = p
        .docker(&["volume", "ls", "-q", "--filter", "name=nuwax-probe-"])
        .success()
        .stdout;
    assert!(probes.lines().all(|n| !dead(n, "nuwax-probe-")), "{probes}");
}

#[test]
fn on_a_terminal_rollback_offers_a_picker_and_asks_before_replacing() {
    let Some(p) = seeded("tty", APP) else {
        return;
    };
    let first = backup(&p);
    std::fs::write(p.path("data/a.txt"), "in between").unwrap();
    let _second = backup(&p);
    damage(&p);
    let exit_file = p.path("exit-code");
    let cmd = format!(
        "cd {} && env DOCKER_CONFIG={} docker nuwaxbackup rollback; echo $? > {}; sleep 60",
        p.dir.path().display(),
        p.catalog().parent().unwrap().parent().unwrap().display(),
        exit_file.display()
    );
    let term = Tmux::start(&p.name, &cmd);
    let picker = term.wait_for("Roll back to which backup?");
    assert!(picker.contains(&format!("#{first}")), "{picker}");
    // Newest first: one step down is the first backup.
    term.send(&["Down", "Enter"]);
    term.wait_for("Replace these volumes?");
    assert_eq!(
        std::fs::read_to_string(p.path("data/a.txt")).unwrap(),
        "version two, longer",
        "nothing before the answer"
    );
    term.send(&["y"]);
    assert_eq!(wait_for_file(&exit_file, 60).trim(), "0");
    assert_eq!(
        std::fs::read_to_string(p.path("data/a.txt")).unwrap(),
        "version one"
    );
}

#[test]
fn dry_run_shows_the_plan_changes_nothing_and_runs_while_a_create_holds_the_lock() {
    let Some(p) = seeded("rbplan", APP) else {
        return;
    };
    let id = backup(&p).to_string();
    // The service now names another image than the one that wrote the data.
    let newer = format!("{}-img:2", p.name);
    p.docker(&["tag", crate::harness::IMAGE, &newer]).success();
    let _untag = Untag(&p, newer.clone());
    let yaml = APP.replace("{image}", &newer);
    p.write_compose(&yaml);
    crate::create::random_files(&p.path("data/big"), 80, 4 << 20);
    // Direct: the services stay stopped while it runs (a capture would start them early).
    let mut create = crate::create::start_slow_create(
        &p,
        &[
            "create",
            "--stop",
            "--capture",
            "direct",
            "--compression-level",
            "9",
        ],
    );
    let trees = (describe_tree(&p.path("data")), p.volume_tree(&volume(&p)));
    let states = p.states("db");
    // What the dry runs could change: the backup's row and the files in storage, less what
    // the running create writes there (it may finish while they run).
    let row_of = |p: &Project| {
        let rows = p.plugin(&["list", "--format", "json"]).success().json();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"].to_string() == id)
            .cloned()
    };
    let stored_of = |p: &Project| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p.path("backups"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".nuwax-partial-") && !n.contains("_v2_"))
            .collect();
        v.sort();
        v
    };
    let rows = row_of(&p);
    let stored = stored_of(&p);

    let plan = p
        .plugin(&["rollback", &id, "--dry-run", "--format", "json"])
        .success()
        .json();
    let table = p.plugin(&["rollback", &id, "--dry-run"]).success().stdout;
    let after = (describe_tree(&p.path("data")), p.volume_tree(&volume(&p)));
    let states_after = p.states("db");
    let rows_after = row_of(&p);
    let stored_after = stored_of(&p);
    assert!(
        create.try_wait().unwrap().is_none(),
        "the create still holds the lock"
    );
    assert_eq!(after, trees);
    assert_eq!(states_after, states);
    assert_eq!(rows_after, rows);
    assert_eq!(stored_after, stored);

    assert_eq!(plan["backup_id"].to_string(), id);
    assert_eq!(plan["mode"], "full");
    let actions: Vec<(String, String, String)> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap().to_string();
            (s("target"), s("action"), s("io"))
        })
        .collect();
    let data = p.path("data").display().to_string();
    assert!(
        actions.contains(&(volume(&p), "swap-volume".into(), "host".into())),
        "{plan}"
    );
    assert!(
        actions.contains(&(data, "swap-bind".into(), "host".into())),
        "{plan}"
    );
    assert_eq!(
        plan["image_changes"],
        serde_json::json!([{"service": "db", "backup_image": crate::harness::IMAGE,
            "current_image": newer, "same_tag": false}])
    );
    assert!(
        plan["space"][0]["needed_bytes"].as_u64().unwrap() > 0,
        "{plan}"
    );
    assert!(
        table.contains("swap-bind") && table.contains("image: service db"),
        "{table}"
    );

    assert!(create.wait().unwrap().success());
}

/// Removes a test's image tag at the end.
struct Untag<'a>(&'a Project, String);

impl Drop for Untag<'_> {
    fn drop(&mut self) {
        let _ = self.0.docker(&["image", "rm", &self.1]);
    }
}

/// The sorted lines of an archive's `manifest-files.jsonl`.
fn listed(archive: &str) -> Vec<String> {
    let out = std::process::Command::new("tar")
        .args(["-xzOf", archive, "manifest-files.jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_named_volume_read_from_disk_archives_exactly_as_read_through_the_engine() {
    let Some(p) = seeded("volread", APP) else {
        return;
    };
    p.compose(&["stop", "-t", "2"]).success();
    let from_disk = p.plugin(&["create", "--format", "json"]).success().json();
    let engine = [("NUWAX_BACKUP_VOLUME_IO", "engine")];
    let through = p
        .plugin_env(&engine, &["create", "--format", "json"])
        .success()
        .json();
    let (a, b) = (
        listed(from_disk["file_path"].as_str().unwrap()),
        listed(through["file_path"].as_str().unwrap()),
    );
    assert!(
        a.iter()
            .any(|l| l.contains("\"volume\":\"volumes/dbdata\"") && l.contains("pgdata/base/t1")),
        "{a:#?}"
    );
    assert_eq!(
        a, b,
        "same entries, owners, modes, times and digests either way"
    );
}
