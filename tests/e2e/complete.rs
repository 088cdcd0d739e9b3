//! Shell completion through the real docker CLI (`docker __complete nuwaxbackup …`, what
//! docker's own bash/zsh/fish completion runs), and the names users of nuwax-cli type.
use crate::create::ONE_SERVICE;
use crate::harness::{Project, Run};

/// `docker __complete nuwaxbackup WORDS…` in the project folder: candidates and directive.
fn complete(p: &Project, words: &[&str]) -> (Vec<String>, String) {
    let mut args = vec!["__complete", "nuwaxbackup"];
    args.extend_from_slice(words);
    let run = p.docker(&args).success();
    split(&run)
}

fn split(run: &Run) -> (Vec<String>, String) {
    let mut lines: Vec<String> = run.stdout.lines().map(String::from).collect();
    let directive = lines.pop().unwrap_or_default();
    (lines, directive)
}

/// The plugin binary answering `__complete nuwaxbackup WORDS…` in `dir`, with the project's
/// docker config (so its catalog), as docker runs it.
fn complete_in(p: &Project, dir: &std::path::Path, words: &[&str]) -> Run {
    let config = p
        .catalog()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    Run::from(
        std::process::Command::new(env!("CARGO_BIN_EXE_docker-nuwax-backup"))
            .args(["__complete", "nuwaxbackup"])
            .args(words)
            .current_dir(dir)
            .env("DOCKER_CONFIG", config)
            .output()
            .unwrap(),
    )
}

fn cli_is_23_or_later(p: &Project) -> bool {
    let v = p
        .docker(&["version", "--format", "{{.Client.Version}}"])
        .success();
    let major: u32 = v
        .stdout
        .trim()
        .split('.')
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    if major < 23 {
        eprintln!(
            "skipped: docker CLI {} forwards no completion to plugins",
            v.stdout.trim()
        );
    }
    major >= 23
}

fn project(test: &str) -> Option<Project> {
    let p = Project::new(test, ONE_SERVICE)?;
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/f"), "x").unwrap();
    p.compose(&["create"]).success();
    Some(p)
}

#[test]
fn docker_completes_subcommands_flags_values_and_backup_ids() {
    let Some(p) = project("complete") else { return };
    if !cli_is_23_or_later(&p) {
        return;
    }
    let (subs, d) = complete(&p, &[""]);
    assert_eq!(d, ":4");
    assert!(
        subs.iter()
            .any(|l| l.starts_with("create\tMake a cold backup")),
        "{subs:?}"
    );
    assert!(subs.iter().any(|l| l.starts_with("rollback\t")), "{subs:?}");
    assert!(
        !subs.iter().any(|l| l.starts_with("__complete")),
        "{subs:?}"
    );

    let (values, d) = complete(&p, &["create", "--format", ""]);
    assert_eq!(
        (values, d.as_str()),
        (vec!["table".to_string(), "json".to_string()], ":4")
    );
    let (flags, _) = complete(&p, &["rollback", "--d"]);
    let names: Vec<&str> = flags
        .iter()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["--data-only", "--dry-run"],
        "hidden aliases are not offered"
    );
    let (_, d) = complete(&p, &["create", "--storage", ""]);
    assert_eq!(d, ":16", "folders only");

    for v in ["1.0", "2.0"] {
        p.plugin(&["create", "--service-version", v]).success();
    }
    let (ids, d) = complete(&p, &["rollback", ""]);
    assert_eq!(d, ":36", "no files, keep order");
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids[0].starts_with("2\t") && ids[0].contains(" manual v2.0 "),
        "{ids:?}"
    );
    assert!(
        ids[1].starts_with("1\t") && ids[1].contains(" manual v1.0 "),
        "{ids:?}"
    );
    let (ids, _) = complete(&p, &["delete", "1", ""]);
    assert_eq!(ids.len(), 2, "{ids:?}");

    let (vols, d) = complete(&p, &["rollback", "--exclude", ""]);
    assert_eq!(d, ":4");
    assert!(vols.contains(&"dbdata".to_string()), "{vols:?}");
    assert!(
        vols.contains(&p.path("data").display().to_string()),
        "{vols:?}"
    );
}

#[test]
fn completion_honours_p_and_answers_quietly_anywhere_even_on_a_locked_catalog() {
    let Some(p) = project("complete2") else {
        return;
    };
    if !cli_is_23_or_later(&p) {
        return;
    }
    p.plugin(&["create"]).success();
    // Elsewhere, with no compose file: no candidates, exit 0, nothing on the plugin's stderr.
    let elsewhere = tempfile::tempdir().unwrap();
    let run = complete_in(&p, elsewhere.path(), &["rollback", ""]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, ":4\n", "")
    );
    // `-p` typed on the line names the project: its IDs come without a compose file.
    let with_p = complete_in(&p, elsewhere.path(), &["-p", &p.name, "rollback", ""]);
    assert!(with_p.stdout.starts_with("1\t"), "{}", with_p.stdout);
    // Another process holds the catalog's write lock: completion still answers at once.
    let conn = p.catalog_db();
    conn.execute_batch("BEGIN EXCLUSIVE; UPDATE backups SET error = NULL;")
        .unwrap();
    let start = std::time::Instant::now();
    let (ids, _) = complete(&p, &["verify", ""]);
    assert!(ids[0].starts_with("1\t"), "{ids:?}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "it did not wait on the lock"
    );
    conn.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn the_names_nuwax_cli_users_type_still_work() {
    let Some(p) = project("aliases") else { return };
    std::fs::write(p.path("data/f"), "first").unwrap();
    let id = p.plugin(&["backup", "--format", "json"]).success().json()["id"].to_string();
    let listed = p.plugin(&["list", "--format", "json"]).success().stdout;
    assert_eq!(p.plugin(&["list", "--json"]).success().stdout, listed);
    let both = p
        .plugin(&["list", "--json", "--format", "table"])
        .failure(2);
    assert!(both.stderr.contains("--json"), "{}", both.stderr);
    std::fs::write(p.path("data/f"), "second").unwrap();
    let plan = p
        .plugin(&[
            "rollback",
            &id,
            "--rollback-data",
            "--dry-run",
            "--format",
            "json",
        ])
        .success()
        .json();
    assert_eq!(plan["mode"], "data-only");
    p.plugin(&["rollback", &id, "--rollback-data", "--yes"])
        .success();
    assert_eq!(std::fs::read_to_string(p.path("data/f")).unwrap(), "first");
    let script = p.standalone(&["completion", "bash"]).success();
    assert!(
        script.stdout.contains("docker-nuwax-backup"),
        "{}",
        script.stdout
    );
}
