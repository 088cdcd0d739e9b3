//! The one place that starts processes: the docker CLI, with docker's global options in front.
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::ComposeArgs;
use crate::exit_codes::{Code, UserError};

/// A docker command that ran and failed, with what it wrote on stderr.
#[derive(Debug)]
pub struct DockerError {
    pub command: String,
    pub code: Option<i32>,
    pub stderr: String,
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = self.stderr.trim();
        let detail = detail.lines().last().unwrap_or("");
        match self.code {
            Some(c) => write!(f, "`{}` failed (exit {c}): {detail}", self.command),
            None => write!(f, "`{}` was killed by a signal: {detail}", self.command),
        }
    }
}

impl std::error::Error for DockerError {}

/// How to run docker: which binary, and the global options the user gave docker.
#[derive(Debug, Clone)]
pub struct Docker {
    bin: PathBuf,
    globals: Vec<OsString>,
}

impl Docker {
    /// The docker binary the user ran (`DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND`), else `docker` on
    /// PATH. Fails when neither exists.
    pub fn new(globals: Vec<OsString>) -> Result<Self> {
        // The CLI passes its own argv[0]: a path, or a bare name to look up on PATH. When it
        // asks for completions (`docker __complete`), CLI 28 passes the plugin's own path
        // instead: that one is not docker.
        let is_plugin = |b: &OsString| {
            Path::new(b)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("docker-"))
        };
        let wanted = std::env::var_os("DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND")
            .filter(|b| !b.is_empty() && !is_plugin(b))
            .unwrap_or_else(|| "docker".into());
        let bin = match PathBuf::from(&wanted) {
            p if p.components().count() > 1 => p,
            _ => which::which(&wanted).map_err(|_| {
                UserError::new(
                    Code::DaemonUnreachable,
                    "the docker CLI was not found on PATH: install Docker, then run this again",
                )
            })?,
        };
        Ok(Docker { bin, globals })
    }

    /// A given binary (tests: a stand-in that logs its calls).
    #[cfg(test)]
    pub fn at(bin: PathBuf) -> Docker {
        Docker {
            bin,
            globals: Vec::new(),
        }
    }

    fn full_args<S: AsRef<OsStr>>(&self, args: &[S]) -> Vec<OsString> {
        let mut all = self.globals.clone();
        all.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        all
    }

    fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
        let words: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        format!("docker {}", words.join(" "))
    }

    /// Runs `docker ARGS…` and returns its stdout. Fails with a [`DockerError`] (mapped to a
    /// user error where the cause is known) when docker exits non-zero.
    /// The local image ID of each reference the engine has (missing ones are left out); each
    /// reference is asked about once, however often it is given.
    pub fn image_ids<'a>(
        &self,
        refs: impl IntoIterator<Item = &'a str>,
    ) -> std::collections::HashMap<String, String> {
        let refs: std::collections::BTreeSet<&str> = refs.into_iter().collect();
        refs.into_iter()
            .filter_map(|r| {
                let id = self
                    .output(&["image", "inspect", "--format", "{{.Id}}", r])
                    .ok()?;
                Some((r.to_string(), id.trim().to_string()))
            })
            .collect()
    }

    pub fn output<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        self.output_in_group(args, false)
    }

    /// Like [`Docker::output`], in a process group of its own so that a Ctrl-C meant for us
    /// does not also kill this step (used to start services again).
    pub fn output_detached<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        self.output_in_group(args, true)
    }

    fn output_in_group<S: AsRef<OsStr>>(&self, args: &[S], own_group: bool) -> Result<String> {
        let mut expr = duct::cmd(&self.bin, self.full_args(args))
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .unchecked();
        if own_group {
            expr = expr.before_spawn(|cmd| {
                cmd.process_group(0);
                Ok(())
            });
        }
        let out = expr
            .run()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(classify(DockerError {
            command: Self::describe(args),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }))
    }

    /// Runs `docker ARGS…` with stderr discarded, killed after `limit`: stdout when it
    /// succeeded in time, else `None` (for shell completion, which must stay quick and quiet).
    pub fn output_within<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        limit: std::time::Duration,
    ) -> Option<String> {
        let handle = duct::cmd(&self.bin, self.full_args(args))
            .stdin_null()
            .stdout_capture()
            .stderr_null()
            .unchecked()
            .start()
            .ok()?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(out) = handle.try_wait().ok()? {
                let ok = out.status.success();
                return ok.then(|| String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if std::time::Instant::now() >= deadline {
                let _ = handle.kill();
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Runs `docker compose <project flags> SUB…` and returns its stdout.
    /// A failure that has no code of its own is checked against `docker compose version`: a
    /// docker CLI without the Compose v2 plugin answers `compose` with odd errors (`unknown
    /// flag: --format`), which must read as "Compose v2 is missing" (exit 5).
    pub fn compose<S: AsRef<OsStr>>(&self, project: &ComposeArgs, sub: &[S]) -> Result<String> {
        self.output(&compose_args(project, sub))
            .map_err(|e| self.unless_compose_missing(e))
    }

    fn unless_compose_missing(&self, err: anyhow::Error) -> anyhow::Error {
        if crate::exit_codes::code_of(&err) != Code::Failure {
            return err;
        }
        let version = self.output(&["compose", "version", "--short"]);
        match version {
            Ok(v)
                if v.trim()
                    .starts_with(|c: char| c.is_ascii_digit() && c != '1') =>
            {
                err
            }
            Ok(v) if v.trim().starts_with('v') && !v.trim().starts_with("v1") => err,
            _ => anyhow::Error::new(UserError::new(
                Code::ComposeMissing,
                compose_missing_message(),
            )),
        }
    }

    /// Like [`Docker::compose`], in its own process group (see [`Docker::output_detached`]).
    pub fn compose_detached<S: AsRef<OsStr>>(
        &self,
        project: &ComposeArgs,
        sub: &[S],
    ) -> Result<String> {
        self.output_detached(&compose_args(project, sub))
            .map_err(|e| self.unless_compose_missing(e))
    }

    /// A `docker compose <project flags> SUB…` process to run by hand (a hook's command, with
    /// its own output handling and timeout).
    pub fn compose_command<S: AsRef<OsStr>>(
        &self,
        project: &ComposeArgs,
        sub: &[S],
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.args(self.full_args(&compose_args(project, sub)));
        cmd
    }

    /// Starts `docker ARGS…` and returns a reader of its stdout. Read it to the end, then call
    /// [`Stream::finish`] to learn whether docker succeeded.
    pub fn stream<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Stream> {
        let handle = duct::cmd(&self.bin, self.full_args(args))
            .stdin_null()
            .stderr_capture()
            .unchecked()
            .reader()
            .with_context(|| format!("starting {}", Self::describe(args)))?;
        Ok(Stream {
            handle,
            command: Self::describe(args),
        })
    }

    /// Starts `docker ARGS…` with a pipe to its stdin (e.g. `docker cp - CTR:/path`).
    pub fn sink<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Sink> {
        let child = std::process::Command::new(&self.bin)
            .args(self.full_args(args))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", Self::describe(args)))?;
        Ok(Sink {
            child,
            command: Self::describe(args),
        })
    }
}

fn compose_args<S: AsRef<OsStr>>(project: &ComposeArgs, sub: &[S]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["compose".into()];
    args.extend(project.to_args());
    args.extend(sub.iter().map(|s| s.as_ref().to_os_string()));
    args
}

/// The stdout of a running docker command.
pub struct Stream {
    handle: duct::ReaderHandle,
    command: String,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.handle.read(buf)
    }
}

impl Stream {
    /// Drains what is left, waits for docker, and fails when it exited non-zero.
    pub fn finish(mut self) -> Result<()> {
        std::io::copy(&mut self.handle, &mut std::io::sink())?;
        let out = self.handle.try_wait()?.context("docker did not exit")?;
        if out.status.success() {
            return Ok(());
        }
        Err(classify(DockerError {
            command: self.command.clone(),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }))
    }

    /// Stops the command early (used on error or cancel).
    pub fn kill(self) {
        let _ = self.handle.kill();
    }
}

/// The stdin of a running docker command.
pub struct Sink {
    child: std::process::Child,
    command: String,
}

impl Sink {
    /// The pipe to docker's stdin, to be written and dropped before [`Sink::finish`].
    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.child
            .stdin
            .take()
            .expect("stdin is piped and taken once")
    }

    /// Closes stdin, waits for docker, and fails when it exited non-zero.
    pub fn finish(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = self.child.wait()?;
        if status.success() {
            return Ok(());
        }
        Err(classify(DockerError {
            command: self.command.clone(),
            code: status.code(),
            stderr,
        }))
    }
}

/// Turns the docker failures users meet most into one-line errors that say what to do.
pub fn classify(err: DockerError) -> anyhow::Error {
    let text = err.stderr.as_str();
    let line = |s: &str| s.trim().lines().last().unwrap_or("").to_string();
    let user = if text.contains("no configuration file provided") {
        Some((
            Code::NoComposeFile,
            "no compose file found here: run this in a compose project folder or pass -f FILE"
                .to_string(),
        ))
    } else if text.contains("context not found")
        || text.contains("does not exist") && text.contains("context")
    {
        Some((
            Code::UnknownContext,
            format!(
                "unknown docker context: {} (see `docker context ls`)",
                line(text)
            ),
        ))
    } else if text.contains("Cannot connect to the Docker daemon")
        || text.contains("Is the docker daemon running")
    {
        Some((
            Code::DaemonUnreachable,
            format!(
                "the Docker daemon does not answer: {} (start it, or pick another --context/-H)",
                line(text)
            ),
        ))
    } else if (text.contains("'compose' is not a docker command")
        || text.contains("unknown command") && text.contains("compose"))
        && err.command.starts_with("docker compose")
    {
        Some((Code::ComposeMissing, compose_missing_message()))
    } else if err.command.contains(" config ")
        && (text.contains("yaml:")
            || text.contains("invalid compose project")
            || text.contains("validating"))
    {
        Some((Code::InvalidComposeFile, format!("the compose file is not valid: {} (fix it; `docker compose config` shows the same)", line(text))))
    } else {
        None
    };
    match user {
        Some((code, message)) => anyhow::Error::new(UserError::new(code, message).caused_by(err)),
        None => anyhow::Error::new(err),
    }
}

fn compose_missing_message() -> String {
    if which::which("docker-compose").is_ok() {
        "only Compose v1 (`docker-compose`) is installed: install the Compose v2 plugin (`docker compose`)".into()
    } else {
        "`docker compose` (Compose v2) is not installed: install the docker-compose-plugin".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit_codes::code_of;

    fn err(command: &str, stderr: &str) -> anyhow::Error {
        classify(DockerError {
            command: command.into(),
            code: Some(1),
            stderr: stderr.into(),
        })
    }

    #[test]
    fn known_failures_get_their_codes_and_one_line() {
        let cases = [
            ("docker compose config --format json", "no configuration file provided: not found", Code::NoComposeFile),
            ("docker compose config --format json", "yaml: line 2: did not find expected node content", Code::InvalidComposeFile),
            ("docker compose ps -a", "Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?", Code::DaemonUnreachable),
            ("docker compose ps -a", "Failed to initialize: unable to resolve docker endpoint: context \"nope\": context not found: open …", Code::UnknownContext),
            ("docker compose config --format json", "docker: 'compose' is not a docker command.\nSee 'docker --help'", Code::ComposeMissing),
            ("docker compose version", "docker: unknown command: docker compose", Code::ComposeMissing),
        ];
        for (cmd, stderr, code) in cases {
            let e = err(cmd, stderr);
            assert_eq!(code_of(&e), code, "{stderr}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert_eq!(
            code_of(&err("docker volume rm x", "volume is in use")),
            Code::Failure
        );
    }
}
