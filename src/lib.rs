//! docker-nuwax-backup: cold backups and rollbacks of a Docker Compose project's volumes.
mod access;
mod archive;
mod backup;
mod cancel;
mod catalog;
mod cli;
mod commands;
mod complete;
mod compose;
mod crypto;
mod docker;
mod exit_codes;
mod fault;
mod hooks;
mod hostfs;
mod lock;
mod metrics;
mod notify;
mod output;
mod plugin;
mod private;
mod prompt;
mod prune;
mod records;
mod recover;
mod remote;
mod restore;
mod restore_test;
mod runs;
mod safety;
mod schedule;
mod services;
mod sidecar;
mod storage;
mod survey;
mod volumes;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use crate::cli::{Cli, Command, ComposeArgs};
use crate::docker::Docker;
use crate::exit_codes::{code_of, Code, UserError};

/// What every command gets: how to run docker, and which compose project.
pub struct Context {
    pub docker: Docker,
    pub compose: ComposeArgs,
    /// The identity, once read (see [`Context::keyring`]).
    keys: std::cell::OnceCell<crypto::Keyring>,
}

impl Context {
    pub fn catalog_path(&self) -> std::path::PathBuf {
        catalog::default_path(self.compose.catalog.as_deref())
    }

    /// The identity given with `--identity` / `NUWAX_BACKUP_IDENTITY`, read once.
    pub fn keyring(&self) -> anyhow::Result<Option<&crypto::Keyring>> {
        let Some(file) = &self.compose.identity else {
            return Ok(None);
        };
        if let Some(r) = self.keys.get() {
            return Ok(Some(r));
        }
        let ring = crypto::Keyring::load(file)?;
        Ok(Some(self.keys.get_or_init(|| ring)))
    }

    /// Opens the catalog (creating it when missing).
    pub fn catalog(&self) -> anyhow::Result<catalog::Catalog> {
        catalog::Catalog::open(&self.catalog_path())
    }

    /// Takes the project's lock for `what` (one create/rollback/prune/migrate at a time).
    pub fn lock(&self, project: &str, what: &str) -> anyhow::Result<lock::ProjectLock> {
        lock::ProjectLock::acquire(&self.locks_dir(), project, what)
    }

    /// Pins backup `id` for reading by `what` (see [`lock::Pin`]).
    pub fn pin(&self, id: i64, what: &str) -> anyhow::Result<lock::Pin> {
        lock::Pin::reading(&self.locks_dir(), id, what)
    }

    /// Where the projects' lock files are (beside the catalog: per user, like the catalog).
    pub fn locks_dir(&self) -> std::path::PathBuf {
        self.catalog_path()
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("locks")
    }

    /// Where the run records of this catalog are.
    pub fn runs_dir(&self) -> std::path::PathBuf {
        runs::dir_for(&self.catalog_path())
    }

    /// The current compose project's name (no daemon needed).
    pub fn project_name(&self) -> anyhow::Result<String> {
        compose::Project::name_only(&self.docker, &self.compose)
    }
}

/// Runs the whole program on `argv` (program name first) and returns the exit code.
pub fn run(argv: Vec<OsString>) -> ExitCode {
    if argv
        .get(1)
        .is_some_and(|a| a == "__complete" || a == "__completeNoDesc")
    {
        return complete::run(&argv[2..]);
    }
    let split = cli::split_argv(&argv);
    if split.metadata {
        println!("{}", plugin::metadata_line());
        return ExitCode::SUCCESS;
    }
    let cli = match parse(split.rest, split.plugin) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Code::Usage.as_u8()
            } else {
                0
            });
        }
    };
    match execute(cli, split.docker_globals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            crate::output::stderr_line(format_args!("docker-nuwax-backup: {}", one_line(&err)));
            ExitCode::from(code_of(&err).as_u8())
        }
    }
}

/// Parses our own arguments; as the docker CLI's plugin, help and usage say
/// `docker nuwaxbackup`, as `docker compose --help` says `docker compose`.
fn parse(rest: Vec<OsString>, plugin: bool) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    if plugin {
        cmd = cmd.bin_name("docker nuwaxbackup");
    }
    let matches = cmd.try_get_matches_from_mut(cli::backup_list_alias(rest))?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

fn execute(cli: Cli, docker_globals: Vec<OsString>) -> anyhow::Result<()> {
    if let Command::Completion(a) = &cli.command {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        // Written whole, then to stdout: a reader that closes early (`| head -1`) is a
        // broken pipe, exit 0, never a panic.
        let mut script = Vec::new();
        clap_complete::generate(a.shell, &mut cmd, "docker-nuwax-backup", &mut script);
        std::io::stdout().lock().write_all(&script)?;
        return Ok(());
    }
    cancel::install()?;
    let ctx = Context {
        docker: Docker::new(docker_globals)?,
        compose: cli.compose.clone(),
        keys: std::cell::OnceCell::new(),
    };
    let started = std::time::Instant::now();
    let around = Around::of(&ctx, &cli)?;
    if let Some(n) = around.as_ref().and_then(|a| a.notifier.as_ref()) {
        n.started();
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let ran = dispatch(&ctx, &cli.command, &mut out);
    if let Some(a) = &around {
        a.finished(&ctx, &ran, started);
    }
    if let Some(path) = cli
        .metrics_file
        .as_deref()
        .filter(|_| cli.command.changes_catalog())
    {
        // A run that failed changed the catalog too (a failed row): the file says so.
        if let Err(e) = commands::metrics::write_file(&ctx, path) {
            output::warn(format!("{e:#}"));
        }
    }
    ran?;
    out.flush()?;
    Ok(())
}

/// What a run does once its command ended, from one outcome: tell it (`--notify`,
/// `x-nuwax-backup.notify`, `NUWAX_BACKUP_NOTIFY`), and, when it failed, run the project's
/// on-error hooks first (after the command's own cleanup and restart).
struct Around {
    notifier: Option<notify::Notifier>,
    command: &'static str,
    settings: compose::Settings,
    /// The newest row before the run: a create's own row is newer.
    newest_before: Option<i64>,
    /// `Some` when a failure runs the on-error hooks: with the backup a rollback restores.
    on_error: Option<Option<i64>>,
}

impl Around {
    fn of(ctx: &Context, cli: &Cli) -> anyhow::Result<Option<Around>> {
        let Some(command) = cli.command.notifies() else {
            if !cli.notify.is_empty() {
                return Err(UserError::new(
                    Code::Usage,
                    "--notify applies to create, rollback, prune, push and recover",
                )
                .into());
            }
            return Ok(None);
        };
        let env = std::env::var("NUWAX_BACKUP_NOTIFY").unwrap_or_default();
        let mut urls: Vec<String> = cli.notify.clone();
        urls.extend(env.split_whitespace().map(String::from));
        // A compose file that cannot be read fails the command itself, with its own message.
        let settings = compose::Project::settings(&ctx.docker, &ctx.compose).unwrap_or_default();
        urls.extend(settings.notify.iter().cloned());
        let on_error = cli
            .command
            .on_error_hooks()
            .filter(|_| settings.hooks.of(hooks::Phase::OnError).next().is_some());
        if urls.is_empty() && on_error.is_none() {
            return Ok(None);
        }
        let targets = urls
            .iter()
            .map(|u| notify::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let newest_before = ctx
            .catalog()
            .ok()
            .and_then(|c| c.list(Some(&settings.name)).ok())
            .and_then(|rows| rows.first().map(|r| r.id));
        Ok(Some(Around {
            notifier: (!targets.is_empty()).then(|| notify::Notifier::new(targets, cli.notify_on)),
            command,
            settings,
            newest_before,
            on_error,
        }))
    }

    fn finished(&self, ctx: &Context, ran: &anyhow::Result<()>, started: std::time::Instant) {
        // Read once: the notification shows it, the on-error hooks are told its id.
        let made = match self.command {
            "create" => self.new_row(ctx),
            _ => None,
        };
        let outcome = self.outcome(made.as_ref(), ran, started);
        if let (Some(restored), Err(e)) = (self.on_error, ran) {
            // on-error is for a run that began and failed: a refusal before its run record
            // (busy, no space, running services, a usage mistake) ran nothing to undo.
            if code_of(e) != Code::Usage && runs::began() {
                self.run_on_error(ctx, &outcome, restored, made);
            }
        }
        if let Some(n) = &self.notifier {
            n.finished(&outcome);
        }
    }

    /// Runs the on-error hooks, told of the backup a rollback restored or a create `made`.
    fn run_on_error(
        &self,
        ctx: &Context,
        o: &notify::Outcome,
        restored: Option<i64>,
        made: Option<catalog::BackupRow>,
    ) {
        let s = &self.settings;
        let row = match restored {
            Some(id) => ctx.catalog().ok().and_then(|c| c.get(id).ok().flatten()),
            None => made,
        };
        let env = hooks::run::Env {
            id: row.as_ref().map(|r| r.id).or(restored),
            file: row
                .as_ref()
                .filter(|r| r.status == records::Status::Completed)
                .map(|r| r.file_path.clone()),
            backup_type: row.as_ref().map(|r| r.backup_type.to_string()),
            error: o.error.clone(),
        };
        hooks::run::Runner::for_project(ctx, &s.name, s.dir.clone(), &s.hooks, false)
            .on_error(&env);
    }

    /// The row this create made, if any.
    fn new_row(&self, ctx: &Context) -> Option<catalog::BackupRow> {
        ctx.catalog()
            .ok()
            .and_then(|c| c.list(Some(&self.settings.name)).ok())
            .and_then(|rows| rows.into_iter().next())
            .filter(|r| Some(r.id) > self.newest_before)
    }

    fn outcome(
        &self,
        row: Option<&catalog::BackupRow>,
        ran: &anyhow::Result<()>,
        started: std::time::Instant,
    ) -> notify::Outcome {
        notify::Outcome {
            command: self.command.to_string(),
            project: self.settings.name.clone(),
            host: metrics::host_name(),
            status: if ran.is_ok() { "succeeded" } else { "failed" },
            exit_code: ran.as_ref().err().map_or(0, |e| code_of(e).as_u8()),
            error: ran.as_ref().err().map(one_line),
            downtime_ms: row.and_then(|r| r.downtime_ms),
            backup: row.and_then(|r| serde_json::to_value(commands::list::Listed::of(r)).ok()),
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

fn dispatch(ctx: &Context, command: &Command, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        Command::Status(a) => commands::status::run(ctx, a, out)?,
        Command::Create(a) => commands::create::run(ctx, a, out)?,
        Command::Rollback(a) => commands::rollback::run(ctx, a, out)?,
        Command::List(a) => commands::list::run(ctx, a, out)?,
        Command::Delete(a) => commands::delete::run(ctx, a, out)?,
        Command::Verify(a) => commands::verify::run(ctx, a, out)?,
        Command::MigrateStorage(a) => commands::migrate_storage::run(ctx, a, out)?,
        Command::Prune(a) => commands::prune::run(ctx, a, out)?,
        Command::Import(a) => commands::import::run(ctx, a, out)?,
        Command::Push(a) => commands::push::run(ctx, a, out)?,
        Command::Recover(a) => commands::recover::run(ctx, a, out)?,
        Command::Metrics(a) => commands::metrics::run(ctx, a, out)?,
        Command::Schedule(a) => commands::schedule::run(ctx, a, out)?,
        Command::Completion(_) => unreachable!("answered before the context is made"),
    }
    Ok(())
}

/// The error chain on one line; a user error ends it (what lies below is docker's own text,
/// already summed up in the user message).
fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in err.chain() {
        let text = e.to_string();
        // A cause once: io errors often repeat their own text as their source's.
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        if e.downcast_ref::<UserError>().is_some() {
            break;
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        let io_kind = e.downcast_ref::<std::io::Error>().map(|io| io.kind());
        let json_kind = e
            .downcast_ref::<serde_json::Error>()
            .and_then(|j| j.io_error_kind());
        io_kind.or(json_kind) == Some(std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_cause_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(13);
        let err = anyhow::Error::new(std::io::Error::new(io.kind(), io.to_string()))
            .context(io.to_string())
            .context("reading ./data/pg");
        assert_eq!(
            one_line(&err),
            "reading ./data/pg: Permission denied (os error 13)"
        );
    }
}
