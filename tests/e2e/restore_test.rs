//! `verify --restore-test` (issue 32) on the real engine: a throw-away copy of the project is
//! started from the backup; a good backup passes, one whose table was corrupted in the
//! archive (checksums recorded again, so verify alone passes) fails at the healthcheck; the
//! live project is never touched; nothing of the copy is left, also after a kill -9.
use std::io::{Read, Write};
use std::path::Path;

use crate::harness::{Project, Run, DAEMON};

/// A database-like service: healthy while `/data/table` says `ok`; a named volume with rows
/// and a check that counts them.
fn db_yaml(extra: &str) -> String {
    format!(
        "name: {{name}}\nservices:\n  db:\n    image: {{image}}\n    command: {DAEMON}\n    restart: always\n    volumes: [\"./data:/data\", \"rows:/var/db\"]\n    healthcheck:\n      test: [\"CMD\", \"grep\", \"-qx\", \"ok\", \"/data/table\"]\n      interval: 1s\n      retries: 2\n    labels:\n      nuwaxbackup.restore-test: 'test \"$$(cat /var/db/rows)\" = 3'\n{extra}volumes:\n  rows: {{}}\n"
    )
}

fn copy_of(p: &Project, id: i64) -> String {
    format!("{}-restoretest-{id}", p.name)
}

/// What of the copy `copy` is left: containers, volumes, networks; and scratch folders.
#[track_caller]
fn nothing_left(p: &Project, copy: &str) {
    let filter = format!("label=com.docker.compose.project={copy}");
    for what in [
        &["ps", "-aq"][..],
        &["volume", "ls", "-q"],
        &["network", "ls", "-q"],
    ] {
        let mut args = what.to_vec();
        args.extend(["--filter", &filter]);
        let r = p.docker(&args).success();
        assert_eq!(r.stdout.trim(), "", "{what:?} of {copy} left");
    }
    let scratch: Vec<_> = std::fs::read_dir(p.path("backups"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".nuwax-restoretest-")
        })
        .collect();
    assert!(scratch.is_empty(), "scratch folders left: {scratch:?}");
}

fn started_at(p: &Project, container: &str) -> String {
    let r = p.docker(&["inspect", "--format", "{{.State.StartedAt}}", container]);
    r.success().stdout.trim().to_string()
}

/// A copy of archive `good` at `out` whose bind file `rel` holds `data` instead, with its
/// manifest line (size, BLAKE3) written again so that verify passes.
fn corrupt(good: &Path, out: &Path, rel: &str, data: &[u8]) {
    let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(good).unwrap());
    let mut ar = tar::Archive::new(gz);
    let mut entries: Vec<(tar::Header, Vec<u8>, Vec<u8>)> = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path_bytes().into_owned();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        entries.push((e.header().clone(), name, body));
    }
    for (h, name, body) in entries.iter_mut() {
        if name.ends_with(format!("/{rel}").as_bytes()) && name.starts_with(b"binds/") {
            *body = data.to_vec();
            h.set_size(data.len() as u64);
            h.set_cksum();
        }
        if name == b"manifest-files.jsonl" {
            let text = String::from_utf8(body.clone()).unwrap();
            let lines: Vec<String> = text
                .lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    if v["path"] == rel && v["volume"].as_str().unwrap().starts_with("binds/") {
                        v["size"] = data.len().into();
                        v["blake3"] = blake3::hash(data).to_hex().to_string().into();
                    }
                    v.to_string()
                })
                .collect();
            *body = format!("{}\n", lines.join("\n")).into_bytes();
            h.set_size(body.len() as u64);
            h.set_cksum();
        }
    }
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(out).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    for (h, _, body) in &entries {
        b.append(h, &body[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

#[test]
fn a_good_backup_passes_and_a_corrupted_table_fails_at_the_healthcheck() {
    let Some(p) = Project::new("rtest", &db_yaml("")) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/table"), "ok\n").unwrap();
    p.up();
    p.compose(&["exec", "-T", "db", "sh", "-c", "echo 3 > /var/db/rows"])
        .success();
    p.plugin(&["create", "--stop"]).success();
    let live = format!("{}-db-1", p.name);
    let before = started_at(&p, &live);

    let run = p
        .plugin(&["verify", "1", "--restore-test", "--format", "json"])
        .success();
    let report = &run.json()[0]["restore_test"];
    assert_eq!(report["passed"], true, "{}", run.stderr);
    assert_eq!(report["project"], copy_of(&p, 1));
    assert!(
        run.stderr.contains("restore test: checking db"),
        "{}",
        run.stderr
    );
    nothing_left(&p, &copy_of(&p, 1));
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    assert_eq!(rows[0]["restore_test"], "passed");
    assert!(rows[0]["restore_tested_at"].is_string());
    let table = p.plugin(&["list"]).success().stdout;
    assert!(
        table.contains("RESTORE TEST") && table.contains("passed "),
        "{table}"
    );
    let status = p.plugin(&["status"]).success().stdout;
    assert!(
        status.contains("Restore test: last passed for backup #1, "),
        "{status}"
    );
    let status = p.plugin(&["status", "--format", "json"]).success().json();
    assert_eq!(status["last_passed_restore_test"]["id"], 1);
    let metrics = p.plugin(&["metrics"]).success().stdout;
    assert!(
        metrics.contains(&format!(
            "nuwaxbackup_last_restore_test_success{{project=\"{}\"",
            p.name
        )),
        "{metrics}"
    );

    // The table corrupted inside the archive, checksums recorded again: verify passes, the
    // restore test fails at the healthcheck, naming the service.
    let good = crate::rollback::archive_of(&p, 1);
    let bad = p.path("backups/corrupted.tar.gz");
    corrupt(&good, &bad, "table", b"torn page\n");
    let id = crate::rollback::register(&p, &bad);
    p.plugin(&["verify", &id.to_string()]).success();
    let run: Run = p
        .plugin(&[
            "verify",
            &id.to_string(),
            "--restore-test",
            "--timeout",
            "40s",
        ])
        .failure(18);
    assert_eq!(
        run.error_line(),
        format!("restore test of backup #{id} failed at health (service db): healthcheck exit 1 (no output)")
    );
    nothing_left(&p, &copy_of(&p, id));
    let rows = p.plugin(&["list", "--format", "json"]).success().json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(row["restore_test"], "failed");
    assert_eq!(
        row["restore_test_error"],
        "health (service db): healthcheck exit 1 (no output)"
    );

    // The live project: never stopped, its data as it was.
    assert_eq!(started_at(&p, &live), before);
    assert_eq!(
        std::fs::read_to_string(p.path("data/table")).unwrap(),
        "ok\n"
    );
    let rows_now = p
        .compose(&["exec", "-T", "db", "cat", "/var/db/rows"])
        .success();
    assert_eq!(rows_now.stdout, "3\n");

    // prune keeps the newest backup whose restore test passed.
    p.plugin(&["create", "--stop"]).success();
    let plan = p
        .plugin(&["prune", "--keep-last", "1", "--dry-run"])
        .success();
    assert!(
        plan.stdout
            .contains("newest backup whose restore test passed"),
        "{}",
        plan.stdout
    );
}

/// A fixed container name and a published port: the copy has neither, so both run at once,
/// and the port keeps answering the live service (which now serves other bytes than the
/// archived ones).
#[test]
fn a_fixed_container_name_and_a_published_port_do_not_collide() {
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let yaml = format!(
        "name: {{name}}\nservices:\n  web:\n    image: {{image}}\n    container_name: {{name}}-fixed\n    command: [\"busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n    restart: always\n    ports: [\"127.0.0.1:{port}:8080\"]\n    volumes: [\"./www:/www\"]\n"
    );
    let Some(p) = Project::new("rtport", &yaml) else {
        return;
    };
    std::fs::create_dir_all(p.path("www")).unwrap();
    std::fs::write(p.path("www/index.html"), "archived").unwrap();
    p.up();
    p.plugin(&["create", "--stop"]).success();
    std::fs::write(p.path("www/index.html"), "live").unwrap();
    let fixed = format!("{}-fixed", p.name);
    let before = started_at(&p, &fixed);
    let child = p.standalone_spawn(&["verify", "1", "--restore-test", "--settle", "8"]);
    let copy = copy_of(&p, 1);
    let filter = format!("label=com.docker.compose.project={copy}");
    let mut seen = String::new();
    for _ in 0..120 {
        seen = p
            .docker(&[
                "ps",
                "--filter",
                &filter,
                "--format",
                "{{.Names}} {{.Ports}}",
            ])
            .success()
            .stdout;
        if !seen.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(
        seen.starts_with(&format!("{copy}-web-1")),
        "the copy runs under its own name: {seen:?}"
    );
    assert!(!seen.contains("->"), "the copy publishes no port: {seen}");
    assert_eq!(http_get(port), "live");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(started_at(&p, &fixed), before);
    assert_eq!(http_get(port), "live");
    nothing_left(&p, &copy);

    // create --restore-test: the new backup is made, then tested; its row says so.
    let run = p
        .plugin(&[
            "create",
            "--stop",
            "--restore-test",
            "--settle",
            "1",
            "--format",
            "json",
        ])
        .success();
    let row = run.json();
    assert_eq!(row["restore_test"], "passed", "{}", run.stderr);
    nothing_left(&p, &copy_of(&p, row["id"].as_i64().unwrap()));
    assert_eq!(http_get(port), "live");
}

fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_restore_test_killed_midway_is_removed_by_recover() {
    // No healthcheck: the copy must run for --settle, long enough to be killed meanwhile.
    let yaml = format!(
        "name: {{name}}\nservices:\n  db:\n    image: {{image}}\n    command: {DAEMON}\n    restart: always\n    volumes: [\"./data:/data\", \"rows:/var/db\"]\nvolumes:\n  rows: {{}}\n"
    );
    let Some(p) = Project::new("rtkill", &yaml) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/table"), "ok\n").unwrap();
    p.up();
    p.plugin(&["create", "--stop"]).success();
    let mut child = p.standalone_spawn(&["verify", "1", "--restore-test", "--settle", "120"]);
    let copy = copy_of(&p, 1);
    let filter = format!("label=com.docker.compose.project={copy}");
    // Killed once the copy's container exists (its healthcheck is still going).
    let mut up = false;
    for _ in 0..120 {
        up = !p
            .docker(&["ps", "-q", "--filter", &filter])
            .success()
            .stdout
            .trim()
            .is_empty();
        if up {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "the copy started");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!p
        .docker(&["ps", "-aq", "--filter", &filter])
        .success()
        .stdout
        .trim()
        .is_empty());
    let r = p.plugin(&["recover"]).success();
    assert!(
        r.stderr
            .contains("found an interrupted restore test of backup #1"),
        "{}",
        r.stderr
    );
    nothing_left(&p, &copy);
    // The next test runs.
    p.plugin(&["verify", "1", "--restore-test", "--settle", "1"])
        .success();
    nothing_left(&p, &copy);

    // --keep leaves the copy running and says how to remove it; those commands remove it.
    let kept = p
        .plugin(&["verify", "1", "--restore-test", "--settle", "1", "--keep"])
        .success();
    let line = kept
        .stderr
        .lines()
        .find(|l| l.contains("kept: "))
        .unwrap()
        .to_string();
    let running = p
        .docker(&["ps", "-q", "--filter", &filter])
        .success()
        .stdout;
    assert!(!running.trim().is_empty(), "the kept copy runs");
    let down = format!("docker compose -p {copy} down -v");
    assert!(line.contains(&format!("`{down}`")), "{line}");
    let scratch = line
        .rsplit("`rm -rf ")
        .next()
        .unwrap()
        .trim_end_matches('`');
    p.compose(&["-p", &copy, "down", "-v"]).success();
    std::fs::remove_dir_all(scratch).unwrap();
    nothing_left(&p, &copy);
}
