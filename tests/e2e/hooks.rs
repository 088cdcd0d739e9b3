//! Hooks (issue 31) on the real engine: host hooks (`x-nuwax-backup.hooks`) and service hooks
//! (`nuwaxbackup.<phase>` labels) around create, `create --stop`, rollback and failures;
//! timeouts, a killed run and `recover`, and the PostgreSQL recipe of docs/hooks.md.
use crate::harness::{app_running, Project, Run, DAEMON};

const PHASES: [&str; 6] = [
    "before-backup",
    "after-start",
    "after-backup",
    "before-rollback",
    "after-rollback",
    "on-error",
];

/// A hook that appends what it was told to `<dir>/hooks.log` (compose's `$$` is a `$`).
fn logging(who: &str, dir: &str) -> String {
    format!(
        r#"echo "{who} $$NUWAX_BACKUP_PHASE $$NUWAX_BACKUP_STATUS project=$$NUWAX_BACKUP_PROJECT id=$${{NUWAX_BACKUP_ID:-}} type=$${{NUWAX_BACKUP_TYPE:-}} file=$${{NUWAX_BACKUP_FILE:-}} error=$${{NUWAX_BACKUP_ERROR:+set}}" >> {dir}/hooks.log"#
    )
}

/// `app` with the bind `./data` (backed up) and `./log` (excluded: the hooks' log), every
/// phase hooked on the host and, when `labels`, in `app`; `extra` more labels.
fn hooked(labels: bool, extra: &str) -> String {
    let mut yaml = format!(
        "name: {{name}}\nservices:\n  app:\n    image: {{image}}\n    command: {DAEMON}\n    restart: always\n    volumes: [\"./data:/data\", \"./log:/log\"]\n    labels:\n      other.label: x\n"
    );
    if labels {
        for phase in PHASES {
            yaml += &format!("      nuwaxbackup.{phase}: '{}'\n", logging("app", "/log"));
        }
    }
    yaml += extra;
    yaml += "x-nuwax-backup:\n  volumes:\n    ./log: {exclude: true}\n  hooks:\n";
    for phase in PHASES {
        yaml += &format!("    {phase}: ['{}']\n", logging("host", "log"));
    }
    yaml
}

fn project(test: &str, yaml: &str) -> Option<Project> {
    let p = Project::new(test, yaml)?;
    for d in ["data", "log"] {
        std::fs::create_dir_all(p.path(d)).unwrap();
    }
    std::fs::write(p.path("data/f"), "one").unwrap();
    Some(p)
}

/// The log, emptied.
fn take_log(p: &Project) -> Vec<String> {
    let path = p.path("log/hooks.log");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    text.lines().map(String::from).collect()
}

fn started_at(p: &Project) -> String {
    let c = format!("{}-app-1", p.name);
    let r = p
        .docker(&["inspect", "--format", "{{.State.StartedAt}}", &c])
        .success();
    r.stdout.trim().to_string()
}

fn rows(p: &Project) -> Vec<serde_json::Value> {
    let list = p.plugin(&["list", "--format", "json"]).success().json();
    list.as_array().unwrap().clone()
}

/// What each hook line should say: `who phase status project=… id=… type=… file=… error=…`.
fn expect(
    p: &Project,
    whos: &[&str],
    phase: &str,
    status: &str,
    id: &str,
    file: &str,
    err: &str,
) -> Vec<String> {
    whos.iter()
        .map(|who| {
            format!(
                "{who} {phase} {status} project={} id={id} type=manual file={file} error={err}",
                p.name
            )
        })
        .collect()
}

#[test]
fn every_phase_runs_once_in_order_with_its_environment() {
    let Some(p) = project("hookphases", &hooked(true, "")) else {
        return;
    };
    p.up();
    let both = ["host", "app"];
    // create --stop: before-backup (running), after-start (back up), after-backup (recorded).
    let run = p.plugin(&["create", "--stop"]).success();
    let row = &rows(&p)[0];
    let (id, file) = (
        row["id"].to_string(),
        row["file_path"].as_str().unwrap().to_string(),
    );
    let mut want = expect(&p, &both, "before-backup", "running", "", "", "");
    want.extend(expect(&p, &both, "after-start", "running", "", "", ""));
    want.extend(expect(
        &p,
        &both,
        "after-backup",
        "completed",
        &id,
        &file,
        "",
    ));
    assert_eq!(take_log(&p), want, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("running the before-backup hook (service app)"),
        "{}",
        run.stderr
    );

    // rollback: before-rollback, then after-rollback once the service runs again.
    std::fs::write(p.path("data/f"), "two").unwrap();
    let plan = p.plugin(&["rollback", &id, "--dry-run"]).success();
    assert!(
        plan.stdout.contains("hook before-rollback: host `echo"),
        "{}",
        plan.stdout
    );
    assert!(take_log(&p).is_empty(), "a dry run runs no hook");
    p.plugin(&["rollback", &id, "--yes"]).success();
    assert_eq!(std::fs::read_to_string(p.path("data/f")).unwrap(), "one");
    let mut want = expect(&p, &both, "before-rollback", "running", &id, &file, "");
    want.extend(expect(
        &p,
        &both,
        "after-rollback",
        "completed",
        &id,
        &file,
        "",
    ));
    assert_eq!(take_log(&p), want);
    app_running(&p);

    // A failure (the disk fills while archiving): after-start (the services are back), then
    // on-error with the error; no after-backup.
    let full = [("NUWAX_BACKUP_TEST_FAIL_AT", "create-writing")];
    p.plugin_env(&full, &["create", "--stop"]).failure(10);
    let failed = &rows(&p)[0];
    assert_eq!(failed["status"], "failed");
    let fid = failed["id"].to_string();
    let mut want = expect(&p, &both, "before-backup", "running", "", "", "");
    want.extend(expect(&p, &both, "after-start", "running", "", "", ""));
    want.extend(expect(&p, &both, "on-error", "failed", &fid, "", "set"));
    assert_eq!(take_log(&p), want);
    app_running(&p);

    // A plain create of the stopped project: service hooks cannot run (exit 17, nothing
    // done); with only host hooks every create phase runs.
    p.compose(&["stop"]).success();
    let refused = p.plugin(&["create"]).failure(17);
    assert_eq!(
        refused.error_line(),
        "the before-backup hook (service app) cannot run: service app is not running; start it, or pass --no-hooks (nothing was stopped or changed)"
    );
    // Refused before the run began: nothing to undo, so no on-error hook runs.
    assert_eq!(take_log(&p), Vec::<String>::new());
    p.write_compose(&hooked(false, ""));
    p.plugin(&["create"]).success();
    let row = &rows(&p)[0];
    let (id, file) = (
        row["id"].to_string(),
        row["file_path"].as_str().unwrap().to_string(),
    );
    let mut want = expect(&p, &["host"], "before-backup", "running", "", "", "");
    want.extend(expect(&p, &["host"], "after-start", "running", "", "", ""));
    want.extend(expect(
        &p,
        &["host"],
        "after-backup",
        "completed",
        &id,
        &file,
        "",
    ));
    assert_eq!(take_log(&p), want);
    // --no-hooks: none runs.
    p.plugin(&["create", "--no-hooks"]).success();
    assert!(take_log(&p).is_empty());
}

#[test]
fn a_failing_before_backup_hook_stops_nothing_and_continue_only_warns() {
    let labels = "      nuwaxbackup.before-backup: 'echo dumping; echo \"pg_dump: connection refused\" >&2; exit 3'\n";
    let Some(p) = project("hookfail", &format!("{}{labels}", hooked_app())) else {
        return;
    };
    p.up();
    let before = started_at(&p);
    let run = p.plugin(&["create", "--stop"]).failure(17);
    assert_eq!(
        run.error_line(),
        "the before-backup hook (service app) failed: exit 3: pg_dump: connection refused; nothing was stopped or changed"
    );
    assert!(
        run.stderr.contains("before-backup app | dumping"),
        "{}",
        run.stderr
    );
    assert_eq!(started_at(&p), before, "app was never stopped");
    app_running(&p);
    let rows = rows(&p);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "failed");
    assert!(rows[0]["error"]
        .as_str()
        .unwrap()
        .contains("the before-backup hook (service app) failed: exit 3"));
    let left: Vec<_> = std::fs::read_dir(p.path("backups"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no file is left: {left:?}");
    // --dry-run lists it; --no-hooks skips it.
    let plan = p.plugin(&["create", "--stop", "--dry-run"]).success();
    assert!(
        plan.stdout
            .contains("Hook before-backup: app `echo dumping;"),
        "{}",
        plan.stdout
    );
    let json = p
        .plugin(&["create", "--dry-run", "--format", "json"])
        .success()
        .json();
    assert_eq!(json["hooks"][0]["phase"], "before-backup");
    assert_eq!(json["hooks"][0]["service"], "app");
    assert_eq!(json["hooks"][0]["timeout_s"], 300);
    assert_eq!(json["hooks"][0]["on_error"], "fail");
    p.plugin(&["create", "--stop", "--no-hooks"]).success();

    // A failing after-start hook set to continue: the backup completes, with a warning.
    let labels = "      nuwaxbackup.after-start: 'echo cache warm-up failed >&2; exit 1'\n      nuwaxbackup.after-start.on-error: continue\n";
    p.write_compose(&format!("{}{labels}", hooked_app()));
    let run = p.plugin(&["create", "--stop"]).success();
    assert!(
        run.stderr.contains("warning: the after-start hook (service app) failed: exit 1: cache warm-up failed (on-error=continue: going on)"),
        "{}",
        run.stderr
    );
    assert_eq!(self::rows(&p)[0]["status"], "completed");
    app_running(&p);

    // Set to fail, after the stop: the backup is complete and recorded, the service runs,
    // and the run says so with exit 17.
    let labels = "      nuwaxbackup.after-start: 'echo cache warm-up failed >&2; exit 1'\n";
    p.write_compose(&format!("{}{labels}", hooked_app()));
    let run = p.plugin(&["create", "--stop"]).failure(17);
    let row = &self::rows(&p)[0];
    assert_eq!(row["status"], "completed");
    assert_eq!(
        run.error_line(),
        format!(
            "backup #{} completed ({}), but: the after-start hook (service app) failed: exit 1: cache warm-up failed",
            row["id"],
            row["file_path"].as_str().unwrap()
        )
    );
    app_running(&p);
}

/// `app` with the binds `./data` and `./log` (excluded) and an open `labels:` map.
fn hooked_app() -> String {
    format!(
        "x-nuwax-backup:\n  volumes:\n    ./log: {{exclude: true}}\nname: {{name}}\nservices:\n  app:\n    image: {{image}}\n    command: {DAEMON}\n    restart: always\n    volumes: [\"./data:/data\", \"./log:/log\"]\n    labels:\n"
    )
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_its_children() {
    // On the host: the background sleep is in the hook's process group.
    let host = "x-nuwax-backup:\n  hooks:\n    before-backup:\n      - run: 'sleep 300 & echo $$! > log/child.pid; wait'\n        timeout: 1s\nname: {name}\nservices:\n  app:\n    image: {image}\n    command: sleep 3600\n    volumes: [\"./data:/data\", \"./log:/log\"]\n";
    let Some(p) = project("hooktimeout", host) else {
        return;
    };
    let t0 = std::time::Instant::now();
    let run = p.plugin(&["create"]).failure(17);
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(
        run.error_line(),
        "the before-backup hook (host) timed out after 1s and was killed; nothing was stopped or changed"
    );
    let pid = std::fs::read_to_string(p.path("log/child.pid")).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the child sleeps on: {stat}"
    );

    // In a service: its shell and children inside the container are killed too.
    let labels = format!(
        "{}      nuwaxbackup.before-backup: 'sleep 301 & sleep 302'\n      nuwaxbackup.before-backup.timeout: 2s\n",
        hooked_app()
    );
    p.write_compose(&labels);
    p.up();
    let run = p.plugin(&["create", "--stop"]).failure(17);
    assert_eq!(
        run.error_line(),
        "the before-backup hook (service app) timed out after 2s and was killed; nothing was stopped or changed"
    );
    let top = p.docker(&["top", &format!("{}-app-1", p.name)]).success();
    assert!(!top.stdout.contains("sleep 30"), "{}", top.stdout);
    app_running(&p);
}

#[test]
fn a_run_killed_after_before_backup_runs_on_error_once_in_recover() {
    let Some(p) = project("hookkill", &hooked(true, "")) else {
        return;
    };
    p.up();
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "create-archiving")];
    let run = p.plugin_env(&kill, &["create", "--stop", "--capture", "direct"]);
    assert_ne!(run.code, 0);
    assert_eq!(
        take_log(&p),
        expect(&p, &["host", "app"], "before-backup", "running", "", "", "")
    );
    let status = p.plugin(&["status", "--format", "json"]).success().json();
    assert_eq!(status["interrupted_run"]["phase"], "archiving");
    let rec = p.plugin(&["recover"]).success();
    assert!(
        rec.stderr
            .contains("hooks the interrupted run had run: before-backup"),
        "{}",
        rec.stderr
    );
    app_running(&p);
    // on-error once (host, then app: running again), with the error; before-backup not again.
    assert_eq!(
        take_log(&p),
        expect(
            &p,
            &["host", "app"],
            "on-error",
            "failed",
            &rows(&p)[0]["id"].to_string(),
            "",
            "set"
        )
    );
    p.plugin(&["recover"]).success();
    assert!(take_log(&p).is_empty(), "nothing runs twice");
}

#[test]
fn bad_hook_labels_are_refused_naming_the_key() {
    let yaml = format!("{}      nuwaxbackup.before-bakup: 'true'\n", hooked_app());
    let Some(p) = project("hookbad", &yaml) else {
        return;
    };
    let run: Run = p.plugin(&["create"]).failure(4);
    assert!(
        run.error_line().starts_with(
            "service app: label nuwaxbackup.before-bakup: unknown hook phase `before-bakup`; the phases are before-backup, after-start"
        ),
        "{}",
        run.stderr
    );
}

/// A running project of a database image built by scripts/ensure-engine.sh, with a bind
/// `./dumps` its server user (uid 999) writes; `None` (skipped) without an engine, or without
/// the image outside CI.
fn database(test: &str, yaml: &str, image: &str) -> Option<Project> {
    let p = Project::new(test, yaml)?;
    if p.docker(&["image", "inspect", image]).code != 0 {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        assert!(
            !ci,
            "CI=true but {image} is missing: run scripts/ensure-engine.sh"
        );
        return None;
    }
    std::fs::create_dir_all(p.path("dumps")).unwrap();
    std::os::unix::fs::chown(p.path("dumps"), Some(999), Some(999)).unwrap();
    p.up();
    Some(p)
}

/// `tar -tzf` of archive `file` lists an entry ending in `suffix`.
#[track_caller]
fn assert_archive_holds(file: &str, suffix: &str) {
    let listed = std::process::Command::new("tar")
        .args(["-tzf", file])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.lines().any(|l| l.ends_with(suffix)), "{listed}");
}

/// The PostgreSQL recipe of docs/hooks.md: `pg_dumpall` into a bind before the backup, as
/// `postgres` in the running service; the dump is archived and a rollback brings it back.
#[test]
fn a_pg_dumpall_written_before_the_backup_is_archived_and_restored() {
    const PG: &str = "nuwax-test-postgres:15";
    let yaml = "name: {name}\nservices:\n  db:\n    image: nuwax-test-postgres:15\n    restart: always\n    volumes: [\"pgdata:/var/lib/postgresql/data\", \"./dumps:/dumps\"]\n    labels:\n      nuwaxbackup.before-backup: 'pg_dumpall -U postgres --clean --if-exists > /dumps/all.sql'\n      nuwaxbackup.before-backup.user: postgres\nvolumes:\n  pgdata: {}\n";
    let Some(p) = database("hookpg", yaml, PG) else {
        return;
    };
    let psql = |sql: &str| -> Run {
        let mut wait = 0;
        loop {
            let r = p.compose(&["exec", "-T", "db", "psql", "-U", "postgres", "-tAc", sql]);
            if r.code == 0 || wait > 60 {
                return r;
            }
            wait += 1;
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };
    psql("create table orders(id int); insert into orders values (1), (2), (3);").success();
    p.plugin(&["create", "--stop"]).success();
    let row = &rows(&p)[0];
    let file = row["file_path"].as_str().unwrap();
    assert_archive_holds(file, "dumps/all.sql");
    let dump = std::fs::read_to_string(p.path("dumps/all.sql")).unwrap();
    assert!(dump.contains("CREATE TABLE public.orders"), "{dump}");

    psql("drop table orders;").success();
    std::fs::remove_file(p.path("dumps/all.sql")).unwrap();
    p.plugin(&["rollback", &row["id"].to_string(), "--yes"])
        .success();
    assert_eq!(
        std::fs::read_to_string(p.path("dumps/all.sql")).unwrap(),
        dump
    );
    assert_eq!(
        psql("select count(*) from orders;").success().stdout.trim(),
        "3"
    );
}

/// The maintenance recipe of docs/hooks.md: the flag is on once `before-backup` ran (seen in
/// the stopped container of a killed run), off after a backup, and off after `recover`.
#[test]
fn the_maintenance_flag_recipe_is_off_after_a_backup_and_after_a_recovered_kill() {
    let labels = "      nuwaxbackup.before-backup: 'touch /tmp/maintenance'\n      nuwaxbackup.after-start: 'rm -f /tmp/maintenance'\n      nuwaxbackup.on-error: 'rm -f /tmp/maintenance'\n";
    let Some(p) = project("hookmaint", &format!("{}{labels}", hooked_app())) else {
        return;
    };
    p.up();
    let container = format!("{}-app-1", p.name);
    let flag = || {
        p.docker(&["cp", &format!("{container}:/tmp/maintenance"), "-"])
            .code
            == 0
    };
    p.plugin(&["create", "--stop"]).success();
    assert!(!flag(), "off after the backup");
    let kill = [("NUWAX_BACKUP_TEST_KILL_AT", "create-archiving")];
    assert_ne!(
        p.plugin_env(&kill, &["create", "--stop", "--capture", "direct"])
            .code,
        0
    );
    assert!(flag(), "on while the killed run had the service stopped");
    p.plugin(&["recover"]).success();
    app_running(&p);
    assert!(!flag(), "off after recover ran on-error");
}

/// The MariaDB recipe of docs/hooks.md, as written there: `mariadb-dump` with the password
/// from the container's own environment, which appears in no output and no row.
#[test]
fn a_mariadb_dump_written_before_the_backup_is_archived() {
    const IMAGE: &str = "nuwax-test-mariadb:10";
    const SECRET: &str = "s3cr3t-Pa55";
    let yaml = format!(
        "name: {{name}}\nservices:\n  db:\n    image: {IMAGE}\n    restart: always\n    environment:\n      MARIADB_ROOT_PASSWORD: {SECRET}\n    volumes: [dbdata:/var/lib/mysql, ./dumps:/dumps]\n    labels:\n      nuwaxbackup.before-backup: 'mariadb-dump --all-databases --single-transaction -uroot -p\"$$MARIADB_ROOT_PASSWORD\" > /dumps/all.sql'\nvolumes:\n  dbdata: {{}}\n"
    );
    let Some(p) = database("hookmaria", &yaml, IMAGE) else {
        return;
    };
    let sql = "create database shop; create table shop.orders(id int); insert into shop.orders values (1),(2);";
    let mut ok = false;
    for _ in 0..60 {
        let script = format!("mariadb -uroot -p\"$MARIADB_ROOT_PASSWORD\" -e '{sql}'");
        if p.compose(&["exec", "-T", "db", "sh", "-c", &script]).code == 0 {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(ok, "the server answered");
    let run = p
        .plugin(&["create", "--stop", "--format", "json"])
        .success();
    let dump = std::fs::read_to_string(p.path("dumps/all.sql")).unwrap();
    assert!(dump.contains("CREATE TABLE `orders`"), "{dump}");
    let row = run.json();
    let file = row["file_path"].as_str().unwrap();
    assert_archive_holds(file, "dumps/all.sql");
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(SECRET), "the password leaked: {text}");
    }
    let manifest = std::process::Command::new("tar")
        .args(["-xzOf", file, "manifest.json"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&manifest.stdout).contains(SECRET));
}
