//! `status` on a project with every restart-policy shape and every volume shape.
use serde_json::{json, Value};

use crate::harness::Project;

const COMPOSE: &str = r#"
name: {name}
x-svc: &svc
  image: {image}
  command: {daemon}
services:
  plain: *svc
  never: {<<: *svc, restart: "no"}
  always:
    <<: *svc
    restart: always
    volumes:
      - dbdata:/data
      - ./data:/srv/data
      - ./conf:/conf:ro
      - ./app.conf:/etc/app.conf
      - {type: tmpfs, target: /tmp/t}
  unless: {<<: *svc, restart: unless-stopped}
  onfail: {<<: *svc, restart: "on-failure:3", volumes: ["ext:/ext"]}
  any: {<<: *svc, deploy: {restart_policy: {condition: any}}}
  none: {<<: *svc, deploy: {restart_policy: {condition: none}}}
  nocond: {<<: *svc, deploy: {restart_policy: {max_attempts: 2}}}
  replicated: {<<: *svc, restart: always, deploy: {replicas: 2}}
volumes:
  dbdata: {}
  ext: {external: true, name: "{name}-ext"}
"#;

fn service<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name}"))
}

fn policies_and_kinds(status: &Value) -> Vec<(String, String, String)> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["restart_policy"].as_str().unwrap().into(),
                s["kind"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn t(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

#[test]
fn status_reports_policies_kinds_volumes_and_blockers() {
    let Some(mut p) = Project::new("status", COMPOSE) else {
        return;
    };
    p.external_volume("ext");
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::create_dir_all(p.path("conf")).unwrap();
    std::fs::write(p.path("app.conf"), "x=1\n").unwrap();
    p.up();

    let running = p.plugin(&["status", "--format", "json"]).success().json();
    let dir = p.dir.path().to_str().unwrap().to_string();
    assert_eq!(running["project"], p.name.as_str());
    assert_eq!(running["project_dir"], dir.as_str());
    assert_eq!(
        running["compose_files"],
        json!([format!("{dir}/compose.yaml")])
    );
    assert_eq!(
        policies_and_kinds(&running),
        vec![
            t("always", "always", "persistent"),
            t("any", "always", "persistent"),
            t("never", "no", "one-shot"),
            t("nocond", "no", "one-shot"),
            t("none", "no", "one-shot"),
            t("onfail", "on-failure:3", "persistent"),
            t("plain", "no", "one-shot"),
            t("replicated", "always", "persistent"),
            t("unless", "unless-stopped", "persistent"),
        ]
    );
    let replicas = &service(&running, "replicated")["containers"];
    assert_eq!(
        replicas,
        &json!([{"name": format!("{}-replicated-1", p.name), "state": "running"},
                {"name": format!("{}-replicated-2", p.name), "state": "running"}])
    );
    assert_eq!(running["cold_backup_ready"], false);
    let blockers = running["blockers"].as_array().unwrap();
    assert_eq!(
        blockers.len(),
        10,
        "every running container blocks: {blockers:?}"
    );
    let db = blockers.iter().find(|b| b["service"] == "always").unwrap();
    assert_eq!(db["container"], format!("{}-always-1", p.name).as_str());
    assert_eq!(db["reason"], "persistent service running");

    let vols = running["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 5, "tmpfs is not a volume to keep: {vols:?}");
    let named = vols.iter().find(|v| v["key"] == "dbdata").unwrap();
    assert_eq!(named["kind"], "volume");
    assert_eq!(named["name"], format!("{}_dbdata", p.name).as_str());
    assert_eq!(named["external"], false);
    assert_eq!(named["role"], "data");
    assert_eq!(named["used_by"], json!(["always"]));
    let ext = vols.iter().find(|v| v["key"] == "ext").unwrap();
    assert_eq!(ext["external"], true);
    assert_eq!(ext["name"], format!("{}-ext", p.name).as_str());
    assert_eq!(ext["used_by"], json!(["onfail"]));
    let bind = |rel: &str| {
        vols.iter()
            .find(|v| v["source"] == format!("{dir}/{rel}").as_str())
            .unwrap_or_else(|| panic!("{rel}"))
    };
    assert_eq!(bind("data")["kind"], "bind");
    assert_eq!(bind("data")["role"], "data");
    assert_eq!(bind("conf")["role"], "app", "read-only bind");
    assert_eq!(bind("app.conf")["role"], "app", "bind-mounted file");
    assert_eq!(bind("app.conf")["is_file"], true);

    let table = p.plugin(&["status"]).success();
    assert!(
        table
            .stdout
            .contains("Cold backup: blocked by 10 running container(s)"),
        "{}",
        table.stdout
    );

    p.compose(&["stop", "-t", "5"]).success();
    let stopped = p.plugin(&["status", "--format", "json"]).success().json();
    assert_eq!(stopped["cold_backup_ready"], true);
    assert_eq!(stopped["blockers"], json!([]));
    assert_eq!(
        service(&stopped, "onfail")["kind"],
        "one-shot",
        "on-failure is one-shot when not running"
    );
    assert_eq!(
        service(&stopped, "always")["containers"][0]["state"],
        "exited"
    );
}

#[test]
fn docker_global_options_reach_every_docker_call() {
    let Some(p) = Project::new(
        "globals",
        "name: {name}\nservices:\n  a: {image: {image}, command: {daemon}, restart: always}\n",
    ) else {
        return;
    };
    p.up();
    let host = p
        .docker(&[
            "-H",
            "unix:///var/run/docker.sock",
            "nuwaxbackup",
            "status",
            "--format",
            "json",
        ])
        .success();
    assert_eq!(host.json()["blockers"][0]["service"], "a");
    let host_eq = p
        .docker(&[
            "--host=unix:///var/run/docker.sock",
            "--log-level",
            "error",
            "nuwaxbackup",
            "status",
            "--format",
            "json",
        ])
        .success();
    assert_eq!(host_eq.json()["project"], p.name.as_str());
    let ctx = p
        .docker(&[
            "--context",
            "default",
            "nuwaxbackup",
            "status",
            "--format",
            "json",
        ])
        .success();
    assert_eq!(ctx.json()["cold_backup_ready"], false);
    let standalone = p
        .standalone(&[
            "-H",
            "unix:///var/run/docker.sock",
            "status",
            "--format",
            "json",
        ])
        .success();
    assert_eq!(standalone.json()["project"], p.name.as_str());
}

/// A `docker` on PATH that logs each call's arguments, then runs the real one.
fn logging_docker(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v docker"])
        .output()
        .unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_string();
    let log = dir.join("calls.log");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{real}' \"$@\"\n",
        log.display()
    );
    let wrapper = dir.join("docker");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    (path, log)
}

#[test]
fn docker_global_options_reach_every_docker_call_of_create_and_rollback() {
    let yaml = crate::harness::app_with("\"./data:/data\", \"vol:/vol\"") + "volumes:\n  vol: {}\n";
    let Some(p) = Project::new("globals-all", &yaml) else {
        return;
    };
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/f"), "v1").unwrap();
    p.up();
    let wrap = tempfile::tempdir().unwrap();
    let (path, log) = logging_docker(wrap.path());
    let env = [("PATH", path)];
    let host = ["-H", "unix:///var/run/docker.sock"];
    let created = p
        .standalone_env(
            &env,
            &[&host[..], &["create", "--stop", "--format", "json"]].concat(),
        )
        .success();
    let id = created.json()["id"].to_string();
    std::fs::write(p.path("data/f"), "v2").unwrap();
    p.standalone_env(&env, &[&host[..], &["rollback", &id, "--yes"]].concat())
        .success();
    assert_eq!(std::fs::read_to_string(p.path("data/f")).unwrap(), "v1");
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert!(lines.len() >= 10, "{calls}");
    for needed in ["compose", "volume inspect", "stop", "start"] {
        assert!(
            lines.iter().any(|l| l.contains(needed)),
            "no {needed} call: {calls}"
        );
    }
    for l in &lines {
        assert!(l.starts_with("-H unix:///var/run/docker.sock "), "{l}");
    }
}
