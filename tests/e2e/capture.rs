//! Downtime: `create --stop` captures the volumes while the services are stopped, starts
//! them, then writes the archive from the capture. Every capture mode must archive exactly
//! what the direct mode does.
use std::path::PathBuf;
use std::process::Command;

use crate::harness::{entries_starting, Project, Run};

const YAML: &str = r#"name: {name}
services:
  app:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; mkdir -p /data/hb; n=$$(cat /data/hb/beat 2>/dev/null || echo 0); while :; do n=$$((n+1)); echo $$n > /data/hb/new; mv /data/hb/new /data/hb/beat; sleep 0.1; done"]
    restart: always
    volumes:
      - ./data:/data
      - appvol:/v
volumes:
  appvol: {}
"#;

/// A bind and a named volume with what an archive must keep: owners, modes, links, an empty
/// folder, a fifo (skipped, and said so), and enough bytes that compressing takes a while.
fn seed(p: &Project, big_mib: usize) {
    let data = p.path("data");
    std::fs::create_dir_all(data.join("db/empty")).unwrap();
    std::fs::write(data.join("db/row"), "row").unwrap();
    std::fs::hard_link(data.join("db/row"), data.join("db/row.link")).unwrap();
    std::os::unix::fs::symlink("db/row", data.join("latest")).unwrap();
    crate::create::random_files(&data.join("big"), 4, (big_mib << 20) / 4);
    let fifo = data.join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("chown")
        .args(["-R", "999:999"])
        .arg(data.join("db"))
        .status()
        .unwrap()
        .success());
    // Single-linked files whose owner and mode the copy must set (not what it creates).
    use std::os::unix::fs::PermissionsExt;
    for (name, mode) in [
        ("db/conf", 0o640),
        ("db/tool", 0o4750),
        ("db/shared", 0o666),
    ] {
        std::fs::write(data.join(name), name).unwrap();
        let owned = Command::new("chown")
            .arg("999:70")
            .arg(data.join(name))
            .status();
        assert!(owned.unwrap().success());
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    p.in_volume(
        &format!("{}_appvol", p.name),
        "mkdir -p /v/d && echo v > /v/d/f && chown -R 70:70 /v/d && chmod 0700 /v/d && ln -s d/f /v/l",
    )
    .success();
}

/// The archive's entries (`tar -tv`, numeric owners), its per-entry manifest, and what its
/// manifest says was skipped.
fn view(file: &str) -> (String, String, serde_json::Value) {
    let (tv, lines, manifest) = if file.ends_with(".zst") {
        ("--zstd", "--zstd", "--zstd")
    } else {
        ("-z", "-z", "-z")
    };
    let run = |args: &[&str]| {
        let out = Command::new("tar").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let m: serde_json::Value =
        serde_json::from_str(&run(&[manifest, "-xOf", file, "manifest.json"])).unwrap();
    (
        run(&["--numeric-owner", tv, "-tvf", file])
            .lines()
            .filter(|l| l.contains(" binds/") || l.contains(" volumes/"))
            .collect::<Vec<_>>()
            .join("\n"),
        run(&[lines, "-xOf", file, "manifest-files.jsonl"]),
        m["skipped"].clone(),
    )
}

/// The heartbeat moves on between runs: the lines of its folder are left out of comparisons.
fn no_heartbeat(listing: &str) -> String {
    listing
        .lines()
        .filter(|l| !l.contains("hb"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Brings the project up, then `create --stop` with `--capture capture` and `env`.
fn create(p: &Project, env: &[(&str, &str)], capture: &str) -> serde_json::Value {
    p.compose(&["up", "-d"]).success();
    let run: Run = p.plugin_env(
        env,
        &["create", "--stop", "--capture", capture, "--format", "json"],
    );
    run.success().json()
}

/// Captures left beside the bind, beside the named volume and in the storage folder.
fn captures_left(p: &Project) -> Vec<PathBuf> {
    let vol_parent = p.volume_parent(&format!("{}_appvol", p.name));
    let dirs = [p.dir.path(), vol_parent.as_path(), &p.path("backups")];
    entries_starting(&dirs, ".nuwax-capture-")
}

#[test]
fn every_capture_mode_archives_exactly_what_direct_mode_does() {
    let Some(p) = Project::new("capture", YAML) else {
        return;
    };
    seed(&p, 8);
    p.up();
    p.compose(&["stop"]).success();
    // Stopped services do not change the data: each run below archives the same state.
    let direct = p
        .plugin(&["create", "--capture", "direct", "--format", "json"])
        .success()
        .json();
    let want = view(direct["file_path"].as_str().unwrap());
    assert!(
        want.2.to_string().contains("pipe"),
        "the fifo is said to be skipped: {}",
        want.2
    );
    let engine = [("NUWAX_BACKUP_VOLUME_IO", "engine")];
    for (env, mode, label) in [
        (&[][..], "copy", "copy"),
        (&[][..], "auto", "copy"),
        (&engine[..], "auto", "copy"),
    ] {
        let row = create(&p, env, mode);
        p.compose(&["stop"]).success();
        assert_eq!(row["capture"], label, "{mode} {env:?}");
        assert!(row["downtime_ms"].as_u64().unwrap() > 0);
        let got = view(row["file_path"].as_str().unwrap());
        assert_eq!(
            no_heartbeat(&got.0),
            no_heartbeat(&want.0),
            "{mode} {env:?}"
        );
        assert_eq!(
            no_heartbeat(&got.1),
            no_heartbeat(&want.1),
            "{mode} {env:?}"
        );
        assert_eq!(got.2, want.2);
    }
    let left = captures_left(&p);
    assert!(left.is_empty(), "captures left behind: {left:?}");
}

/// `docker inspect`'s StartedAt of the service's container, in seconds since the epoch.
fn started_at(p: &Project) -> f64 {
    let out = p
        .docker(&[
            "inspect",
            "--format",
            "{{.State.StartedAt}}",
            &format!("{}-app-1", p.name),
        ])
        .success();
    let t = chrono::DateTime::parse_from_rfc3339(out.stdout.trim()).unwrap();
    t.timestamp_nanos_opt().unwrap() as f64 / 1e9
}

fn mtime(path: &str) -> f64 {
    let m = std::fs::metadata(path).unwrap().modified().unwrap();
    m.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `create --stop`, slow enough (level 9 on random data) that the services run again well
/// before the archive is finished; its row, which says the capture was a copy.
fn slow_capture(p: &Project) -> serde_json::Value {
    let args = [
        "create",
        "--stop",
        "--compression-level",
        "9",
        "--format",
        "json",
    ];
    let row = p.plugin(&args).success().json();
    assert_eq!(row["capture"], "copy");
    row
}

#[test]
fn services_run_again_before_the_archive_is_written() {
    let Some(p) = Project::new("capture-live", YAML) else {
        return;
    };
    seed(&p, 96);
    p.up();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let row = slow_capture(&p);
    let file = row["file_path"].as_str().unwrap();
    let started = started_at(&p);
    assert!(
        started < mtime(file),
        "the service started before the archive was finished"
    );
    // What the heartbeat wrote after the restart is on disk, not in the archive.
    let out = Command::new("tar")
        .args(["-xzOf", file, "binds/data/hb/beat"])
        .output()
        .unwrap();
    let archived: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let now: u64 = std::fs::read_to_string(p.path("data/hb/beat"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(now > archived, "the heartbeat ran on ({archived} → {now})");
    assert!(row["capture_ms"].as_u64().unwrap() <= row["downtime_ms"].as_u64().unwrap());
}

/// A service that, each time it starts again, overwrites the head of every big file at once.
const REWRITES: &str = r#"name: {name}
services:
  app:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; if [ -f /data/started ]; then for f in /data/big/*; do dd if=/dev/zero of=$$f bs=65536 count=64 conv=notrunc 2>/dev/null; done; touch /data/rewrote; fi; touch /data/started; while :; do sleep 0.2; done"]
    restart: always
    volumes:
      - ./data:/data
"#;

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn files_rewritten_as_soon_as_the_services_start_are_archived_as_at_the_stop() {
    let Some(p) = Project::new("capture-rewrite", REWRITES) else {
        return;
    };
    crate::create::random_files(&p.path("data/big"), 4, 24 << 20);
    p.up();
    crate::harness::wait_for_file(&p.path("data/started"), 30);
    let names = ["f00000", "f00001", "f00002", "f00003"];
    let read = |n: &str| std::fs::read(p.path("data/big").join(n)).unwrap();
    let want: Vec<String> = names.iter().map(|n| sha256(&read(n))).collect();
    // The archive begins at the stop and reads these files until the capture is handed over;
    // once the service starts it overwrites them while the archive is still being written.
    let row = slow_capture(&p);
    let file = row["file_path"].as_str().unwrap();
    crate::harness::wait_for_file(&p.path("data/rewrote"), 30);
    assert!(
        mtime(p.path("data/rewrote").to_str().unwrap()) < mtime(file),
        "the service rewrote its files before the archive was finished"
    );
    for (n, want) in names.iter().zip(&want) {
        assert_ne!(&sha256(&read(n)), want, "{n} was rewritten on disk");
        let out = Command::new("tar")
            .args(["-xzOf", file, &format!("binds/data/big/{n}")])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            &sha256(&out.stdout),
            want,
            "{n} in the archive is as at the stop"
        );
    }
    p.plugin(&["verify", &row["id"].to_string()]).success();
}

#[test]
fn a_create_killed_while_compressing_leaves_services_running_and_recover_cleans_up() {
    let Some(p) = Project::new("capture-kill", YAML) else {
        return;
    };
    seed(&p, 4);
    p.up();
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "create-compressing")];
    let run = p.plugin_env(&kill, &["create", "--stop"]);
    assert_ne!(run.code, 0);
    assert_eq!(p.states("app"), [format!("{}-app-1 running", p.name)]);
    let vol_parent = p.volume_parent(&format!("{}_appvol", p.name));
    let made = entries_starting(&[p.dir.path(), &vol_parent], ".nuwax-capture-");
    assert_eq!(
        made.len(),
        2,
        "both captures are there before recover: {made:?}"
    );
    for m in &made {
        // Without reflinks each volume is packed into one private tar file.
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(m).unwrap();
        assert!(
            meta.is_file() && m.to_string_lossy().ends_with(".tar"),
            "{m:?}"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{m:?}");
        let listing = Command::new("tar").arg("-tf").arg(m).output().unwrap();
        assert!(listing.status.success(), "{m:?} is a tar any tool reads");
    }
    let rec = p.plugin(&["recover"]).success();
    assert!(rec.stderr.contains("removed the capture"), "{}", rec.stderr);
    assert!(captures_left(&p).is_empty());
    let statuses = p.statuses();
    assert!(statuses.iter().all(|s| s == "failed"), "{statuses:?}");
    assert_eq!(p.states("app"), [format!("{}-app-1 running", p.name)]);
}

#[test]
fn an_archive_that_fails_while_capturing_ends_the_capture_and_starts_the_services() {
    let Some(p) = Project::new("capture-fail", YAML) else {
        return;
    };
    seed(&p, 64);
    p.up();
    let fail = [("NUWAX_BACKUP_TEST_FAIL_AT", "create-writing")];
    let run = p.plugin_env(&fail, &["create", "--stop"]).failure(10);
    assert!(
        run.error_line()
            .ends_with("No space left on device (os error 28)"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("archiving directly"),
        "the capture was given up, not failed: {}",
        run.stderr
    );
    assert_eq!(p.states("app"), [format!("{}-app-1 running", p.name)]);
    let left = captures_left(&p);
    assert!(left.is_empty(), "captures left behind: {left:?}");
    let partials = entries_starting(&[&p.path("backups")], ".nuwax-partial-");
    assert!(partials.is_empty(), "{partials:?}");
    assert_eq!(p.statuses(), ["failed"]);
}

#[test]
fn a_capture_that_fails_is_removed_and_the_backup_is_made_directly() {
    let Some(p) = Project::new("capture-broken", YAML) else {
        return;
    };
    seed(&p, 4);
    p.up();
    // The first volume's capture is whole when the (injected) disk full comes.
    let fail = [("NUWAX_BACKUP_TEST_FAIL_AT", "create-capturing")];
    let run = p
        .plugin_env(&fail, &["create", "--stop", "--format", "json"])
        .success();
    assert!(
        run.stderr
            .contains("archiving directly while the services are stopped"),
        "{}",
        run.stderr
    );
    let row = run.json();
    assert_eq!(row["capture"], "direct");
    assert_eq!(p.states("app"), [format!("{}-app-1 running", p.name)]);
    let left = captures_left(&p);
    assert!(left.is_empty(), "captures left behind: {left:?}");
    let got = view(row["file_path"].as_str().unwrap());
    assert!(
        got.0.contains("db/tool") && got.0.contains("big/"),
        "{}",
        got.0
    );
    p.plugin(&["verify", &row["id"].to_string()]).success();
}

/// A loop-mounted XFS with reflinks, unmounted and removed on drop.
struct Xfs {
    dir: PathBuf,
    image: PathBuf,
}

impl Xfs {
    fn mount() -> Option<Xfs> {
        if Command::new("mkfs.xfs").arg("-V").output().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but no mkfs.xfs: run scripts/ensure-engine.sh"
            );
            eprintln!("skipped: no mkfs.xfs (apt-get install xfsprogs)");
            return None;
        }
        let base = tempfile::Builder::new()
            .prefix("nwx-xfs-")
            .tempdir()
            .unwrap()
            .keep();
        let image = base.join("fs.img");
        let dir = base.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("truncate").args(["-s", "1G"]).arg(&image));
        ok(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image));
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir));
        Some(Xfs { dir, image })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(self.image.parent().unwrap());
    }
}

#[test]
fn on_xfs_the_capture_is_a_reflink_and_archives_the_same() {
    let Some(xfs) = Xfs::mount() else {
        return;
    };
    let name = format!("nwx-capture-xfs-{}", std::process::id());
    let yaml = YAML
        .replace("      - appvol:/v\n", "")
        .replace("volumes:\n  appvol: {}\n", "");
    let Some(p) = Project::at(&name, xfs.dir.join("proj"), &yaml) else {
        return;
    };
    let data = p.path("data");
    std::fs::create_dir_all(data.join("db")).unwrap();
    crate::create::random_files(&data.join("db"), 8, 8 << 20);
    std::os::unix::fs::symlink("db", data.join("link")).unwrap();
    p.up();
    archives_as_direct_does(&p, "reflink");
    let left = entries_starting(&[p.dir.path(), &p.path("backups")], ".nuwax-capture-");
    assert!(left.is_empty(), "{left:?}");
    drop(p);
}

/// A direct backup with the services stopped, then `create --stop` of the running services:
/// its capture is `capture`, and its archive is the direct one's. Its row.
fn archives_as_direct_does(p: &Project, capture: &str) -> serde_json::Value {
    p.compose(&["stop"]).success();
    let direct = p
        .plugin(&["create", "--capture", "direct", "--format", "json"])
        .success()
        .json();
    p.compose(&["start"]).success();
    let row = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success()
        .json();
    assert_eq!(row["capture"], capture);
    let (want, got) = (
        view(direct["file_path"].as_str().unwrap()),
        view(row["file_path"].as_str().unwrap()),
    );
    assert_eq!(no_heartbeat(&got.0), no_heartbeat(&want.0));
    assert_eq!(no_heartbeat(&got.1), no_heartbeat(&want.1));
    assert_eq!(got.2, want.2);
    row
}

#[test]
fn a_mount_point_bind_is_packed_into_the_storage_folder_across_filesystems() {
    let Some(p) = Project::new("capture-mounted", YAML) else {
        return;
    };
    // The bind is a tmpfs: its capture cannot go beside it (the container would see it), so
    // it goes to the storage folder, on another filesystem (the kernel cannot copy across).
    let tmpfs = crate::harness::Tmpfs::mount(p.path("data"), "64m");
    // Dropped together, the project first (its containers use the mount).
    let both = (p, tmpfs);
    let p = &both.0;
    seed(p, 8);
    p.up();
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "create-compressing")];
    assert_ne!(p.plugin_env(&kill, &["create", "--stop"]).code, 0);
    let in_storage = entries_starting(&[&p.path("backups")], ".nuwax-capture-");
    assert!(
        in_storage
            .iter()
            .any(|c| c.to_string_lossy().ends_with("binds_data.tar")),
        "{in_storage:?}"
    );
    let beside = entries_starting(&[p.dir.path(), &p.path("data")], ".nuwax-capture-");
    assert!(
        beside.is_empty(),
        "nothing beside or inside the mount point: {beside:?}"
    );
    p.plugin(&["recover"]).success();
    assert!(captures_left(p).is_empty());
    let row = archives_as_direct_does(p, "copy");
    assert!(captures_left(p).is_empty());
    p.plugin(&["verify", &row["id"].to_string()]).success();
    p.compose(&["down", "-v", "-t", "1"]).success();
}
