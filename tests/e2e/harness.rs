//! The end-to-end harness: a real docker CLI, Compose v2 and engine, with the plugin installed
//! in a temporary DOCKER_CONFIG, one compose project per test, removed when the test ends.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The local image `scripts/ensure-engine.sh` builds (busybox, no registry needed).
pub const IMAGE: &str = "nuwax-test-busybox:latest";

/// A service command that runs until stopped and exits quickly on SIGTERM.
pub const DAEMON: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]"#;

/// A project of one persistent service `app` with the volume list `volumes`
/// (`"./data:/data"`, …).
pub fn app_with(volumes: &str) -> String {
    format!(
        "name: {{name}}\nservices:\n  app:\n    image: {{image}}\n    command: {DAEMON}\n    restart: always\n    volumes: [{volumes}]\n"
    )
}

/// A running project of [`app_with`] the bind `./data`, which holds one file `f`.
pub fn running_app(test: &str) -> Option<Project> {
    let p = Project::new(test, &app_with("\"./data:/data\""))?;
    std::fs::create_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("data/f"), "x").unwrap();
    p.up();
    Some(p)
}

/// `app` of [`app_with`] runs, in its one container.
#[track_caller]
pub fn app_running(p: &Project) {
    assert_eq!(p.states("app"), [format!("{}-app-1 running", p.name)]);
}

fn engine_answers() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let ok = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let image = ok
            && Command::new("docker")
                .args(["image", "inspect", IMAGE])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !(ok && image) && std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI=true but no Docker engine with {IMAGE} answers: run scripts/ensure-engine.sh"
            );
        }
        ok && image
    })
}

/// The outcome of one command, with what a user would look at.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn success(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn failure(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The one error line the tool printed (`docker-nuwax-backup: …`), without the prefix.
    #[track_caller]
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter_map(|l| l.strip_prefix("docker-nuwax-backup: "))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line\nstderr:\n{}",
            self.stderr
        );
        lines[0]
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// One compose project in a temporary folder, with its own DOCKER_CONFIG and catalog.
pub struct Project {
    pub name: String,
    pub dir: Dir,
    config: tempfile::TempDir,
    external_volumes: Vec<String>,
}

impl Project {
    /// A project named `nwx-<test>-<pid>` whose compose file is `yaml` with `{name}`,
    /// `{image}` and `{daemon}` filled in; `None` (test skipped) when no engine answers
    /// outside CI.
    pub fn new(test: &str, yaml: &str) -> Option<Project> {
        let name = format!("nwx-{}-{}", test.replace('_', "-"), std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("nwx-proj-")
            .tempdir()
            .unwrap()
            .keep();
        Project::at(&name, dir, yaml)
    }

    /// A project with a fixed name in a fixed folder (made empty first, removed at the end):
    /// for archives whose manifest names their paths.
    pub fn at(name: &str, dir: PathBuf, yaml: &str) -> Option<Project> {
        if !engine_answers() {
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!("skipped {name}: no Docker engine (run scripts/ensure-engine.sh)");
            return None;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Dir(dir);
        let name = name.to_string();
        let config = tempfile::Builder::new()
            .prefix("nwx-cfg-")
            .tempdir()
            .unwrap();
        let plugins = config.path().join("cli-plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_docker-nuwax-backup"),
            plugins.join("docker-nuwaxbackup"),
        )
        .unwrap();
        let p = Project {
            name,
            dir,
            config,
            external_volumes: Vec::new(),
        };
        p.write_compose(yaml);
        Some(p)
    }

    pub fn write_compose(&self, yaml: &str) {
        let text = yaml
            .replace("{name}", &self.name)
            .replace("{image}", IMAGE)
            .replace("{daemon}", DAEMON);
        std::fs::write(self.dir.path().join("compose.yaml"), text).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The project's catalog, opened: every test reads and writes catalog rows through this.
    pub fn catalog_db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.catalog()).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
        c
    }

    pub fn catalog(&self) -> PathBuf {
        self.config.path().join("nuwax-backup").join("catalog.db")
    }

    /// A volume made outside compose (for `external: true`), removed at the end of the test.
    pub fn external_volume(&mut self, suffix: &str) -> String {
        let name = format!("{}-{}", self.name, suffix);
        self.docker(&["volume", "create", &name]).success();
        self.external_volumes.push(name.clone());
        name
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.dir.path())
            .env("DOCKER_CONFIG", self.config.path())
            .env_remove("NUWAX_BACKUP_CATALOG")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .stdin(Stdio::null());
        c
    }

    /// `docker ARGS…` in the project folder, as a user would type it.
    pub fn docker(&self, args: &[&str]) -> Run {
        Run::from(self.command("docker").args(args).output().unwrap())
    }

    /// `docker nuwaxbackup ARGS…`.
    pub fn plugin(&self, args: &[&str]) -> Run {
        let mut all = vec!["nuwaxbackup"];
        all.extend_from_slice(args);
        self.docker(&all)
    }

    /// `docker nuwaxbackup ARGS…` with extra environment variables.
    pub fn plugin_env(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut c = self.command("docker");
        c.arg("nuwaxbackup").args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().unwrap())
    }

    /// `docker nuwaxbackup ARGS…` as `user` (see [`Project::lend_to`]).
    pub fn plugin_as(&self, user: &User, args: &[&str]) -> Run {
        let mut c = self.command("runuser");
        c.args(["-u", &user.0, "--", "docker", "nuwaxbackup"])
            .args(args);
        Run::from(c.output().unwrap())
    }

    /// `docker nuwaxbackup ARGS…` as `user`, with extra environment variables.
    pub fn plugin_as_env(&self, user: &User, env: &[(&str, String)], args: &[&str]) -> Run {
        let mut c = self.command("runuser");
        c.args(["-u", &user.0, "--", "env"]);
        c.args(env.iter().map(|(k, v)| format!("{k}={v}")));
        c.args(["docker", "nuwaxbackup"]).args(args);
        Run::from(c.output().unwrap())
    }

    /// Gives `user` this project's folder and DOCKER_CONFIG (its catalog, locks and runs),
    /// so it can run the plugin here; what the test puts in the folder keeps its owners.
    pub fn lend_to(&self, user: &User) {
        for p in [self.config.path(), self.dir.path()] {
            let ok = Command::new("chown").arg(&user.0).arg(p).status().unwrap();
            assert!(ok.success());
        }
        let ok = Command::new("chown")
            .args(["-R", &user.0])
            .arg(self.config.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// The plugin started in the background (for signals and concurrency tests).
    pub fn plugin_spawn(&self, args: &[&str]) -> std::process::Child {
        self.command("docker")
            .arg("nuwaxbackup")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The plugin started in the background with extra environment variables.
    pub fn plugin_spawn_env(&self, env: &[(&str, String)], args: &[&str]) -> std::process::Child {
        self.command("docker")
            .arg("nuwaxbackup")
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The binary started standalone in the background (signals go straight to it).
    pub fn standalone_spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(env!("CARGO_BIN_EXE_docker-nuwax-backup"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The binary started standalone in the background with extra environment variables,
    /// stderr as `stderr` says (a pipe the test may close early, say).
    pub fn standalone_spawn_with(
        &self,
        env: &[(&str, String)],
        args: &[&str],
        stderr: Stdio,
    ) -> std::process::Child {
        self.command(env!("CARGO_BIN_EXE_docker-nuwax-backup"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// The binary run standalone, as `docker-nuwax-backup ARGS…`.
    pub fn standalone(&self, args: &[&str]) -> Run {
        Run::from(
            self.command(env!("CARGO_BIN_EXE_docker-nuwax-backup"))
                .args(args)
                .output()
                .unwrap(),
        )
    }

    /// The standalone binary with extra environment variables.
    pub fn standalone_env(&self, env: &[(&str, String)], args: &[&str]) -> Run {
        let mut c = self.command(env!("CARGO_BIN_EXE_docker-nuwax-backup"));
        c.args(args).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        Run::from(c.output().unwrap())
    }

    pub fn compose(&self, args: &[&str]) -> Run {
        let mut all = vec!["compose"];
        all.extend_from_slice(args);
        self.docker(&all)
    }

    pub fn up(&self) {
        self.compose(&["up", "-d", "--quiet-pull"]).success();
    }

    /// The status of every backup `list --format json` shows, in its order.
    pub fn statuses(&self) -> Vec<String> {
        let rows = self.plugin(&["list", "--format", "json"]).success().json();
        let rows = rows
            .as_array()
            .expect("list --format json is an array")
            .iter();
        rows.map(|r| r["status"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits (up to 20 s) until every container of the one-shot `service` has exited: `up -d`
    /// returns while a one-shot may still run for a moment, and then it rightly blocks a backup.
    pub fn wait_exited(&self, service: &str) {
        for _ in 0..400 {
            if self.states(service).iter().all(|l| l.ends_with(" exited")) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{service} still runs: {:?}", self.states(service));
    }

    /// Runs a shell command in a one-off container that mounts the named volume at /v.
    pub fn in_volume(&self, volume: &str, script: &str) -> Run {
        self.docker(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/v"),
            IMAGE,
            "sh",
            "-c",
            script,
        ])
    }

    /// A named volume's tree as `path|type|mode|uid:gid|size|mtime|link` lines plus content
    /// digests, read through a one-off container.
    pub fn volume_tree(&self, volume: &str) -> Vec<String> {
        let script = r#"cd /v && find . | sort | while read f; do stat -c '%n|%F|%a|%u:%g|%s|%Y|%N' "$f"; if [ -f "$f" ] && [ ! -L "$f" ]; then sha256sum "$f"; fi; done"#;
        let out = self.in_volume(volume, script).success();
        out.stdout.lines().map(String::from).collect()
    }

    /// The folder that holds a named volume's folder on this host (where captures and
    /// staging folders of that volume go).
    pub fn volume_parent(&self, volume: &str) -> PathBuf {
        let out = self
            .docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume])
            .success();
        PathBuf::from(out.stdout.trim())
            .parent()
            .unwrap()
            .to_path_buf()
    }

    /// State of each container of a service, sorted by name.
    pub fn states(&self, service: &str) -> Vec<String> {
        let out = self
            .compose(&["ps", "-a", "--format", "{{.Name}} {{.State}}", service])
            .success();
        let mut lines: Vec<String> = out.stdout.lines().map(String::from).collect();
        lines.sort();
        lines
    }
}

/// A throw-away user in the `docker` group (not root), removed on drop.
pub struct User(pub String);

impl User {
    pub fn new(prefix: &str) -> User {
        let name = format!("{prefix}{}", std::process::id());
        let made = Command::new("useradd")
            .args(["-M", "-N", "-G", "docker", "-s", "/bin/sh", &name])
            .status()
            .unwrap();
        assert!(made.success(), "useradd needs root and a docker group");
        User(name)
    }

    /// The user's uid.
    pub fn uid(&self) -> u32 {
        let out = Command::new("id").args(["-u", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// A test's project folder, removed with everything in it at the end.
pub struct Dir(PathBuf);

impl Dir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "0"]);
        for v in &self.external_volumes {
            let _ = self.docker(&["volume", "rm", "-f", v]);
        }
    }
}

/// Recursively lists a host tree as `path type mode uid:gid size/target` lines.
pub fn describe_tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let what = if m.file_type().is_symlink() {
            format!("link->{}", std::fs::read_link(e.path()).unwrap().display())
        } else if m.is_dir() {
            "dir".to_string()
        } else {
            format!("file {} bytes", m.len())
        };
        out.push(format!(
            "{rel} {what} {:o} {}:{} {}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            m.mtime()
        ));
    }
    out
}

/// A small tmpfs mounted for one test (to fill a filesystem on purpose); unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs needs root");
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The entries of `dirs` whose names start with `prefix` (what a run left behind).
pub fn entries_starting(dirs: &[&Path], prefix: &str) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

/// A command on a terminal (a detached tmux session), killed on drop.
pub struct Tmux(pub String);

impl Tmux {
    /// Runs `cmd` (a shell line) in session `name`, 160x40.
    pub fn start(name: &str, cmd: &str) -> Tmux {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "160",
                "-y",
                "40",
                cmd,
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "tmux could not start a session");
        Tmux(name.to_string())
    }

    /// Waits (30 s at most) until the screen shows `text`; returns the screen.
    pub fn wait_for(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = Command::new("tmux")
                .args(["capture-pane", "-p", "-t", &self.0])
                .output()
                .unwrap();
            let screen = String::from_utf8_lossy(&out.stdout).into_owned();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never saw {text:?} on:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.0];
        args.extend_from_slice(keys);
        Command::new("tmux").args(&args).status().unwrap();
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// Waits (`secs` at most) for a file a background command writes when it ends; its text.
pub fn wait_for_file(path: &Path, secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::read_to_string(path).unwrap()
}
