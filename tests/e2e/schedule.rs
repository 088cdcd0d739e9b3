//! `schedule` (issue 30, part 1): systemd units that `systemd-analyze verify` accepts, as root
//! and as a user, whose `ExecStart=` makes a backup; a cron line whose command does; `remove`
//! leaves nothing; `create --wait-lock` waits for a held project lock instead of exit 9.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{app_running, running_app, Project, User};

fn rows(p: &Project) -> usize {
    p.plugin(&["list", "--format", "json"])
        .success()
        .json()
        .as_array()
        .unwrap()
        .len()
}

/// The words of an `ExecStart=` line, unquoted as systemd reads them (this tool quotes every
/// word in double quotes, `%` and `$` doubled).
fn exec_words(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut w = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => w.push(chars.next().unwrap()),
                '"' => break,
                '%' | '$' => {
                    chars.next();
                    w.push(c);
                }
                _ => w.push(c),
            }
        }
        words.push(w);
    }
    words
}

/// Runs `c`; it must succeed.
#[track_caller]
fn succeeds(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[track_caller]
fn verify_units(files: &[PathBuf]) {
    succeeds(Command::new("systemd-analyze").arg("verify").args(files));
}

/// Runs the unit's `ExecStart=` as written: it makes a backup.
#[track_caller]
fn run_exec_start(count: &dyn Fn() -> usize, service: &Path, as_user: Option<&User>) {
    let words = exec_words(&std::fs::read_to_string(service).unwrap());
    assert!(words.contains(&"--wait-lock".to_string()), "{words:?}");
    let before = count();
    let mut c = match as_user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", &u.0, "--"]).args(&words);
            c
        }
        None => {
            let mut c = Command::new(&words[0]);
            c.args(&words[1..]);
            c
        }
    };
    succeeds(c.env_remove("NUWAX_BACKUP_CATALOG"));
    assert_eq!(count(), before + 1);
}

#[test]
fn systemd_units_as_root_verify_make_a_backup_and_remove_leaves_nothing() {
    let Some(p) = running_app("sched-root") else {
        return;
    };
    let dir = Path::new("/etc/systemd/system");
    let name = format!("nuwaxbackup-{}", p.name);
    let files = [
        dir.join(format!("{name}.service")),
        dir.join(format!("{name}.timer")),
    ];
    let printed = p
        .plugin(&[
            "schedule",
            "install",
            "--systemd",
            "--print",
            "--",
            "--stop",
        ])
        .success();
    assert!(
        printed.stdout.contains("Persistent=true"),
        "{}",
        printed.stdout
    );
    assert!(files.iter().all(|f| !f.exists()), "--print writes nothing");
    p.plugin(&[
        "schedule",
        "install",
        "--systemd",
        "--randomized-delay",
        "10m",
        "--",
        "--stop",
    ])
    .success();
    verify_units(&files);
    let timer = std::fs::read_to_string(&files[1]).unwrap();
    assert!(
        timer.contains("OnCalendar=daily\nPersistent=true\nRandomizedDelaySec=10m\n"),
        "{timer}"
    );
    run_exec_start(&|| rows(&p), &files[0], None);
    let listed = p
        .plugin(&["schedule", "list", "--format", "json"])
        .success()
        .json();
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["project"] == p.name.as_str())
        .unwrap();
    assert_eq!(mine["kind"], "systemd");
    assert_eq!(mine["last_result"], "completed");
    assert!(mine["next_run"].is_string(), "{mine}");
    let again = p.plugin(&["schedule", "install", "--systemd"]).failure(2);
    assert!(again
        .error_line()
        .ends_with("already has a schedule: `schedule remove` it first"));
    p.plugin(&["schedule", "remove"]).success();
    assert!(files.iter().all(|f| !f.exists()));
    p.plugin(&["schedule", "remove"]).failure(2);
    let bad = p
        .plugin(&[
            "schedule",
            "install",
            "--systemd",
            "--on-calendar",
            "every full moon",
        ])
        .failure(2);
    assert!(
        bad.error_line().contains("is not a systemd calendar spec"),
        "{}",
        bad.stderr
    );
    let bad_args = p
        .plugin(&["schedule", "install", "--systemd", "--", "--no-such-flag"])
        .failure(2);
    assert!(
        bad_args
            .error_line()
            .contains("the create arguments are refused"),
        "{}",
        bad_args.stderr
    );
    app_running(&p);
}

#[test]
fn user_units_go_to_the_users_config_and_verify() {
    let Some(p) = running_app("sched-user") else {
        return;
    };
    let user = User::new("nwxsched");
    p.lend_to(&user);
    let home = tempfile::tempdir().unwrap();
    Command::new("chown")
        .arg(&user.0)
        .arg(home.path())
        .status()
        .unwrap();
    let env = [("XDG_CONFIG_HOME", home.path().display().to_string())];
    p.plugin_as_env(
        &user,
        &env,
        &["schedule", "install", "--systemd", "--", "--stop"],
    )
    .success();
    let dir = home.path().join("systemd/user");
    let name = format!("nuwaxbackup-{}", p.name);
    let files = [
        dir.join(format!("{name}.service")),
        dir.join(format!("{name}.timer")),
    ];
    verify_units(&files);
    let count = || {
        let listed = p
            .plugin_as(&user, &["list", "--format", "json"])
            .success()
            .json();
        listed.as_array().unwrap().len()
    };
    run_exec_start(&count, &files[0], Some(&user));
    p.plugin_as_env(&user, &env, &["schedule", "remove"])
        .success();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    app_running(&p);
}

#[test]
fn a_cron_line_makes_a_backup_and_remove_takes_only_it() {
    let Some(p) = running_app("sched-cron") else {
        return;
    };
    let file = PathBuf::from(format!("/etc/cron.d/nuwaxbackup-{}", p.name));
    p.plugin(&[
        "schedule",
        "install",
        "--cron",
        "--cron-expr",
        "17 3 * * *",
        "--",
        "--stop",
    ])
    .success();
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("17 3 * * * root "))
        .unwrap();
    let marker = format!(" # nuwaxbackup:{}", p.name);
    let command = line
        .strip_prefix("17 3 * * * root ")
        .unwrap()
        .strip_suffix(&marker)
        .unwrap()
        .replace("\\%", "%");
    let before = rows(&p);
    succeeds(
        Command::new("sh")
            .args(["-c", &command])
            .env_remove("NUWAX_BACKUP_CATALOG"),
    );
    assert_eq!(rows(&p), before + 1);
    p.plugin(&["schedule", "remove"]).success();
    assert!(!file.exists());
    app_running(&p);
}

#[test]
fn create_waits_for_a_held_project_lock_with_wait_lock() {
    let Some(p) = running_app("wait-lock") else {
        return;
    };
    p.plugin(&["status"]).success();
    let locks = p.catalog().parent().unwrap().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let lock = locks.join(format!("{}.lock", p.name));
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "4"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let busy = p.plugin(&["create", "--stop"]).failure(9);
    assert!(
        busy.error_line()
            .starts_with(&format!("project {} is busy", p.name)),
        "{}",
        busy.stderr
    );
    p.plugin(&["create", "--stop", "--wait-lock", "2m"])
        .success();
    holder.wait().unwrap();
    app_running(&p);
}
