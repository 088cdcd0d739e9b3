//! The plugin protocol and invocation, as docker sees it.
use crate::harness::Project;

#[test]
fn metadata_is_the_checked_in_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_docker-nuwax-backup"))
        .arg("docker-cli-plugin-metadata")
        .env("DOCKER_HOST", "unix:///nonexistent/never.sock")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/plugin-metadata/metadata.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(printed, file);
    assert_eq!(printed["Version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn docker_lists_the_plugin_and_shows_its_help() {
    let Some(p) = Project::new("plugin_listed", "services: {}\n") else {
        return;
    };
    let info = p
        .docker(&["info", "--format", "{{json .ClientInfo.Plugins}}"])
        .success();
    let plugins = info.json();
    let ours = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|pl| pl["Name"] == "nuwaxbackup")
        .expect("plugin listed");
    assert!(
        ours.get("Err").is_none() || ours["Err"].is_null(),
        "plugin error: {ours}"
    );
    assert_eq!(ours["Version"], env!("CARGO_PKG_VERSION"));
    let help = p.plugin(&["--help"]).success();
    assert!(help.stdout.contains("create"), "{}", help.stdout);
    assert!(help.stdout.contains("status"));
    // As `docker compose --help` says `Usage: docker compose`.
    assert!(
        help.stdout
            .contains("Usage: docker nuwaxbackup [OPTIONS] <COMMAND>"),
        "{}",
        help.stdout
    );
    let standalone = p.standalone(&["--help"]).success();
    assert!(
        standalone
            .stdout
            .contains("Usage: docker-nuwax-backup [OPTIONS] <COMMAND>"),
        "{}",
        standalone.stdout
    );
}

#[test]
fn completion_into_a_closed_pipe_and_options_before_backup_list_work() {
    let Some(p) = Project::new("small-defects", "services: {}\n") else {
        return;
    };
    // `completion bash | head -1`: the reader is gone before the script is written (a pipe
    // holds the whole script, so it is closed first to be sure the write meets it).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_docker-nuwax-backup"))
        .args(["completion", "bash"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Options before the seed's `backup list`.
    let listed = p
        .plugin(&["-p", &p.name, "backup", "list", "--format", "json"])
        .success();
    assert_eq!(listed.json(), serde_json::json!([]));
}

#[test]
fn errors_have_their_own_exit_codes() {
    let Some(p) = Project::new("errors", "services: {}\n") else {
        return;
    };
    std::fs::remove_file(p.path("compose.yaml")).unwrap();
    let none = p.plugin(&["status"]).failure(3);
    assert_eq!(
        none.error_line(),
        "no compose file found here: run this in a compose project folder or pass -f FILE"
    );
    assert_eq!(
        none.stderr.trim().lines().count(),
        1,
        "one line: {}",
        none.stderr
    );

    p.write_compose("services:\n  a: [\n");
    let bad = p.plugin(&["status"]).failure(4);
    let line = bad.error_line();
    assert!(
        line.starts_with("the compose file is not valid: ")
            && line.ends_with(" (fix it; `docker compose config` shows the same)"),
        "{line}"
    );

    p.write_compose("name: {name}\nservices:\n  a:\n    image: {image}\n");
    let down = p
        .docker(&[
            "-H",
            "unix:///nonexistent/never.sock",
            "nuwaxbackup",
            "status",
        ])
        .failure(6);
    let line = down.error_line();
    assert!(
        line.starts_with("the Docker daemon does not answer: ")
            && line.ends_with(" (start it, or pick another --context/-H)"),
        "{line}"
    );

    let ctx = p
        .standalone(&["--context", "no-such-context", "status"])
        .failure(7);
    let line = ctx.error_line();
    assert!(
        line.starts_with("unknown docker context: ")
            && line.contains("\"no-such-context\"")
            && line.ends_with(" (see `docker context ls`)"),
        "{line}"
    );

    let usage = p.plugin(&["status", "--format", "yaml"]).failure(2);
    assert_eq!(
        usage.stderr.lines().next(),
        Some("error: invalid value 'yaml' for '--format <FORMAT>'")
    );
}
