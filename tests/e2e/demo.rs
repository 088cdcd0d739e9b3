//! `scripts/demo.sh`, README's first command, as root and as a non-root `docker`-group user:
//! it must pass and leave nothing behind.
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::harness::{Project, User};

/// What the engine still holds of project `name`: containers, volumes, networks.
fn leftovers(name: &str) -> String {
    let q = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let label = format!("label=com.docker.compose.project={name}");
    [
        q(&["ps", "-aq", "--filter", &label]),
        q(&["volume", "ls", "-q", "--filter", &label]),
        q(&["network", "ls", "-q", "--filter", &label]),
    ]
    .join(" ")
    .trim()
    .to_string()
}

/// Runs the demo (as `user` when given) with a private plugin folder and TMPDIR.
fn demo(name: &str, user: Option<&str>) {
    let home = tempfile::Builder::new()
        .prefix("nwx-demo-home-")
        .tempdir()
        .unwrap();
    let config = home.path().join("docker");
    let tmp = home.path().join("tmp");
    std::fs::create_dir_all(config.join("cli-plugins")).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_docker-nuwax-backup"),
        config.join("cli-plugins/docker-nuwaxbackup"),
    )
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh");
    let mut cmd = match user {
        None => Command::new("bash"),
        Some(u) => {
            let status = Command::new("chown")
                .args(["-R", u])
                .arg(home.path())
                .status()
                .unwrap();
            assert!(status.success());
            std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "bash"]);
            c
        }
    };
    let out = cmd
        .arg(script)
        .env("HOME", home.path())
        .env("DOCKER_CONFIG", &config)
        .env("TMPDIR", &tmp)
        .env("NUWAX_DEMO_NAME", name)
        .env_remove("NUWAX_BACKUP_CATALOG")
        .current_dir(home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "demo as {user:?} failed:\n{stderr}"
    );
    assert!(stderr.contains("demo passed"), "{stderr}");
    assert_eq!(leftovers(name), "", "the demo left engine objects behind");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the demo left temp folders: {left:?}");
    assert!(
        !config.join("nuwax-backup/catalog.db").exists(),
        "the user's own catalog got rows"
    );
}

#[test]
fn the_demo_passes_and_leaves_nothing_behind_as_root() {
    // Only to learn whether an engine answers (and to fail under CI=true when none does).
    let Some(_p) = Project::new("demoroot", "name: {name}\nservices: {}\n") else {
        return;
    };
    demo(&format!("nwx-demo-root-{}", std::process::id()), None);
}

#[test]
fn the_demo_passes_as_a_docker_group_user() {
    let Some(_p) = Project::new("demouser", "name: {name}\nservices: {}\n") else {
        return;
    };
    let user = User::new("nwxdemo");
    demo(
        &format!("nwx-demo-user-{}", std::process::id()),
        Some(&user.0),
    );
}
