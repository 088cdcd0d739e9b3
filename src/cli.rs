//! Command-line types (clap) and the split of docker's own global options off argv. No I/O.
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum, ValueHint};

/// The name docker knows the plugin by (`docker nuwaxbackup …`).
pub const PLUGIN_NAME: &str = "nuwaxbackup";

/// Cold backups and rollbacks of a Docker Compose project's declared volumes.
#[derive(Debug, Parser)]
#[command(name = "docker nuwaxbackup", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub compose: ComposeArgs,
    /// After a command that changes the catalog, rewrite this file with `metrics
    /// --all-projects` (atomically, mode 0644): for node_exporter's textfile collector.
    #[arg(long, global = true, env = "NUWAX_BACKUP_METRICS_FILE", value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub metrics_file: Option<PathBuf>,
    /// Tell this URL the outcome of create, rollback, prune, push or recover (repeatable;
    /// also x-nuwax-backup.notify and NUWAX_BACKUP_NOTIFY): https://… (JSON POST),
    /// hc+https://HOST/ping/UUID (Healthchecks), ntfy+https://HOST/TOPIC (ntfy).
    #[arg(long, global = true, value_name = "URL")]
    pub notify: Vec<String>,
    /// Tell only failures (default), or every outcome.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub notify_on: crate::notify::When,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show services, volumes, and whether a cold backup can run now.
    Status(StatusArgs),
    /// Make a cold backup of every declared volume of the project.
    #[command(alias = "backup")]
    Create(CreateArgs),
    /// Restore a backup: verified first, transactional, full or --data-only.
    Rollback(RollbackArgs),
    /// List the project's backups, newest first.
    List(ListArgs),
    /// Delete backups: the archive file and the catalog row.
    Delete(DeleteArgs),
    /// Check archives against the catalog and their manifests.
    Verify(VerifyArgs),
    /// Move every archive of the project to another folder, and use it from now on.
    MigrateStorage(MigrateArgs),
    /// Delete backups outside a retention policy (restic's keep flags).
    Prune(PruneArgs),
    /// Register archives found in a folder, one archive, or every backup in a bucket
    /// (s3://BUCKET/PREFIX: recovery onto a new host, or after the catalog was lost).
    Import(ImportArgs),
    /// Upload backups to object storage again (their copy failed, or was never made).
    Push(PushArgs),
    /// Finish a create or rollback that was killed: clean its leftovers, undo a half-moved
    /// mount point, start what it stopped, record a dead create as failed.
    Recover(StatusArgs),
    /// Schedule this project's backups: a systemd timer, or a cron line where systemd does
    /// not run; list and remove them.
    Schedule(ScheduleArgs),
    /// Print Prometheus metrics of the catalog (text exposition format).
    Metrics(MetricsArgs),
    /// Print a shell completion script for the standalone binary (`docker nuwaxbackup <TAB>`
    /// needs none: docker's own completion asks the plugin).
    Completion(CompletionArgs),
}

impl Command {
    /// The name a notification gives the command, when it notifies.
    pub fn notifies(&self) -> Option<&'static str> {
        match self {
            Command::Create(_) => Some("create"),
            Command::Rollback(_) => Some("rollback"),
            Command::Prune(_) => Some("prune"),
            Command::Push(_) => Some("push"),
            Command::Recover(_) => Some("recover"),
            _ => None,
        }
    }

    /// Whether a failed run of this command runs the project's on-error hooks (create and
    /// rollback, unless `--dry-run` or `--no-hooks`), and the backup a rollback restores.
    pub fn on_error_hooks(&self) -> Option<Option<i64>> {
        match self {
            Command::Create(a) if !a.dry_run && !a.no_hooks => Some(None),
            Command::Rollback(a) if !a.dry_run && !a.no_hooks => Some(a.id),
            _ => None,
        }
    }

    /// Whether the command may change the catalog (then `--metrics-file` is rewritten).
    pub fn changes_catalog(&self) -> bool {
        !matches!(
            self,
            Command::Status(_)
                | Command::List(_)
                | Command::Metrics(_)
                | Command::Schedule(_)
                | Command::Completion(_)
        )
    }
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub action: ScheduleAction,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Write a systemd service and timer (system units as root, user units otherwise) or a
    /// cron line that runs `create` with CREATE-ARGS.
    Install(ScheduleInstallArgs),
    /// Each project's schedule, next run and last result.
    List(StatusArgs),
    /// Remove what `schedule install` wrote for this project, and nothing else.
    Remove,
}

#[derive(Debug, Args)]
pub struct ScheduleInstallArgs {
    /// When, in systemd's calendar syntax (`daily`, `Mon..Fri 02:30`).
    #[arg(long, default_value = "daily", value_name = "SPEC")]
    pub on_calendar: String,
    /// Spread the start by up to this long (systemd's RandomizedDelaySec=, e.g. `30m`).
    #[arg(long, value_name = "DUR")]
    pub randomized_delay: Option<String>,
    /// A cron line instead of systemd units (chosen anyway where systemd is not PID 1).
    #[arg(long, conflicts_with = "systemd")]
    pub cron: bool,
    /// systemd units even where systemd does not run here (they are written, not started).
    #[arg(long)]
    pub systemd: bool,
    /// The cron expression (5 fields); by default from --on-calendar's hourly, daily, weekly
    /// or monthly.
    #[arg(long, value_name = "EXPR")]
    pub cron_expr: Option<String>,
    /// Print what would be written, and write nothing.
    #[arg(long)]
    pub print: bool,
    /// Arguments of `create` (after `--`), e.g. `-- --stop --remote s3://bucket`.
    #[arg(last = true, value_name = "CREATE-ARGS")]
    pub create_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Every project of the catalog, not only this one.
    #[arg(long)]
    pub all_projects: bool,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ListFormat {
    #[default]
    Table,
    Json,
    /// One id a line.
    Ids,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: ListFormat,
    /// `--format json`, as the original nuwax-cli spelled it.
    #[arg(long, hide = true, conflicts_with = "format")]
    pub json: bool,
    /// Every project in the catalog, not only the current one.
    #[arg(long)]
    pub all_projects: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Catalog ids of the backups to delete.
    #[arg(required = true)]
    pub ids: Vec<i64>,
    /// Do not ask (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Catalog ids to verify (default: every completed backup of the project with --all).
    pub ids: Vec<i64>,
    /// Verify every completed backup of the project.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// With --all: of every project.
    #[arg(long)]
    pub all_projects: bool,
    /// Encrypted backups: decrypt and check every entry (needs --identity); without an
    /// identity only size and checksum are checked.
    #[arg(long)]
    pub full: bool,
    /// Check the remote copies instead: size and sidecar (`size-ok`), or with --download
    /// their whole content (`ok`).
    #[arg(long)]
    pub remote: bool,
    /// With --remote: download each copy to a temporary file and verify it completely.
    #[arg(long, requires = "remote")]
    pub download: bool,
    #[command(flatten)]
    pub trial: RestoreTestArgs,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `--restore-test` and its settings (verify and create).
#[derive(Debug, Clone, Args)]
pub struct RestoreTestArgs {
    /// Prove the backup restores: restore it into scratch volumes and folders, start a
    /// throw-away copy of the project from it, wait for its healthchecks, run its checks,
    /// remove it all. The live project is never stopped or changed.
    #[arg(long)]
    pub restore_test: bool,
    /// With --restore-test: how long the copy may take to start, turn healthy and pass.
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = duration_or_secs, requires = "restore_test")]
    pub timeout: std::time::Duration,
    /// With --restore-test: how long services without a healthcheck must keep running
    /// (seconds, or `30s`, `2m`).
    #[arg(long, value_name = "DUR", default_value = "10", value_parser = duration_or_secs, requires = "restore_test")]
    pub settle: std::time::Duration,
    /// With --restore-test: leave the copy (containers, volumes, scratch folder) for a look;
    /// the commands that remove it are printed.
    #[arg(long, requires = "restore_test")]
    pub keep: bool,
}

/// `30` (seconds), or a duration with its unit (`30s`, `5m`).
fn duration_or_secs(text: &str) -> Result<std::time::Duration, String> {
    if let Ok(n) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(n));
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Catalog ids of the backups to upload.
    #[arg(required = true)]
    pub ids: Vec<i64>,
    /// Where to (default: where each was meant to go, else x-nuwax-backup.remote).
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    pub remote: Option<String>,
    /// The provider's cap on parts per upload (parts are max(8 MiB, size / N)).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_parts: u64,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The new storage folder (created when missing; any filesystem).
    #[arg(value_hint = ValueHint::DirPath)]
    pub new_dir: PathBuf,
    /// Do not ask (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep the newest backup of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<usize>,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<usize>,
    /// Keep the newest backup of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<usize>,
    /// Also delete pre-rollback safety backups younger than a day.
    #[arg(long)]
    pub prune_recent_safety: bool,
    /// Print what would be kept and deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Folder to look for archives in, one archive file, or s3://BUCKET[/PREFIX].
    #[arg(value_hint = ValueHint::AnyPath)]
    pub dir: PathBuf,
    /// From a bucket: only this project's backups.
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Compose's own project options, passed identically to every `docker compose` call.
#[derive(Debug, Clone, Default, Args)]
pub struct ComposeArgs {
    /// Compose configuration file (repeatable), as `docker compose -f`.
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub files: Vec<PathBuf>,
    /// Project name, as `docker compose -p`.
    #[arg(short = 'p', long = "project-name", global = true, value_name = "NAME")]
    pub project_name: Option<String>,
    /// Project working directory, as `docker compose --project-directory`.
    #[arg(long, global = true, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub project_directory: Option<PathBuf>,
    /// Environment file (repeatable), as `docker compose --env-file`.
    #[arg(long, global = true, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub env_file: Vec<PathBuf>,
    /// Compose profile to enable (repeatable), as `docker compose --profile`.
    #[arg(long, global = true, value_name = "PROFILE")]
    pub profile: Vec<String>,
    /// Backup catalog (SQLite); default ${DOCKER_CONFIG:-~/.docker}/nuwax-backup/catalog.db.
    #[arg(long, global = true, env = "NUWAX_BACKUP_CATALOG", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub catalog: Option<PathBuf>,
    /// age identity file or ssh private key that opens encrypted backups (rollback, verify,
    /// recover); keep it off the backup host.
    #[arg(long, global = true, env = "NUWAX_BACKUP_IDENTITY", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub identity: Option<PathBuf>,
}

impl ComposeArgs {
    /// The flags to put before every `docker compose` subcommand.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        for f in &self.files {
            out.push("-f".into());
            out.push(f.into());
        }
        if let Some(p) = &self.project_name {
            out.push("-p".into());
            out.push(p.into());
        }
        if let Some(d) = &self.project_directory {
            out.push("--project-directory".into());
            out.push(d.into());
        }
        for e in &self.env_file {
            out.push("--env-file".into());
            out.push(e.into());
        }
        for p in &self.profile {
            out.push("--profile".into());
            out.push(p.into());
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BackupType {
    #[default]
    Manual,
    PreUpgrade,
}

impl From<BackupType> for crate::records::BackupType {
    fn from(t: BackupType) -> Self {
        match t {
            BackupType::Manual => crate::records::BackupType::Manual,
            BackupType::PreUpgrade => crate::records::BackupType::PreUpgrade,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Capture {
    #[default]
    Auto,
    Copy,
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// When another run holds the project, wait up to this long for it (`90s`, `30m`, `6h`)
    /// instead of failing with exit 9 (a scheduled run behind a long manual one).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub wait_lock: Option<std::time::Duration>,
    /// Why this backup is made.
    #[arg(long = "type", value_enum, default_value_t)]
    pub backup_type: BackupType,
    /// Version recorded with the backup (default: x-nuwax-backup.version, else the image tag
    /// of the first persistent service, else "unknown").
    #[arg(long, value_name = "V")]
    pub service_version: Option<String>,
    /// Compression of the archive.
    #[arg(long, value_enum, default_value_t)]
    pub compression: Compression,
    /// Compression level (gzip 1-9, default 6; zstd 1-19, default 3).
    #[arg(long, value_name = "N")]
    pub compression_level: Option<u32>,
    /// Folder for the archive (default: x-nuwax-backup.storage, else <project dir>/backups).
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub storage: Option<PathBuf>,
    /// Stop running containers for the backup and start them again afterwards.
    #[arg(long)]
    pub stop: bool,
    /// Also archive bind mounts outside the project directory.
    #[arg(long)]
    pub include_external_binds: bool,
    /// With --stop: copy the volumes while stopped (reflink clones where the filesystem has
    /// them), start the services, then compress; `direct` archives while stopped.
    #[arg(long, value_enum, default_value_t)]
    pub capture: Capture,
    /// Encrypt the archive to this age public key (age1…, ssh-ed25519, ssh-rsa; repeatable).
    /// Replaces x-nuwax-backup.encrypt.
    #[arg(long, value_name = "KEY")]
    pub recipient: Vec<String>,
    /// Encrypt to the public keys in this file, one per line (repeatable).
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub recipients_file: Vec<PathBuf>,
    /// Copy the archive to this bucket once the services run again (S3 API; endpoint and
    /// credentials from AWS_* and ~/.aws). Replaces x-nuwax-backup.remote.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    pub remote: Option<String>,
    /// Write no local archive: stream it straight to the bucket (for volumes larger than
    /// the free disk).
    #[arg(long)]
    pub remote_only: bool,
    /// The provider's cap on parts per upload (parts are max(8 MiB, size / N)).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_parts: u64,
    /// Run no hook (x-nuwax-backup.hooks, nuwaxbackup.* labels), not even on error.
    #[arg(long)]
    pub no_hooks: bool,
    /// `--restore-test`: then prove the new backup restores (as `verify --restore-test`;
    /// exit 18 when it does not, the backup is kept).
    #[command(flatten)]
    pub trial: RestoreTestArgs,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The backup to restore (its catalog id); without it, a picker on a terminal.
    pub id: Option<i64>,
    /// Restore only volumes with role `data` (keeps app files such as config binds).
    #[arg(long, alias = "rollback-data")]
    pub data_only: bool,
    /// Leave this volume untouched: engine name, compose key, or bind path (repeatable).
    #[arg(long = "exclude", value_name = "NAME_OR_PATH")]
    pub exclude: Vec<String>,
    /// Do not start the services that were running before.
    #[arg(long)]
    pub no_start: bool,
    /// Skip the backup of the current state taken before anything is replaced.
    #[arg(long)]
    pub no_safety_backup: bool,
    /// For binds that are mount points too small for a staged copy: empty them, then write
    /// the backup straight in (undone from the safety backup, not by an atomic swap).
    #[arg(long)]
    pub in_place: bool,
    /// Download the archive from its remote copy even when the local file is there (it is
    /// downloaded anyway when the local file is missing).
    #[arg(long)]
    pub from_remote: bool,
    /// Encrypt the safety backup to this age public key (repeatable; replaces
    /// x-nuwax-backup.encrypt). Needed for an encrypted backup when the project names none.
    #[arg(long, value_name = "KEY")]
    pub recipient: Vec<String>,
    /// Encrypt the safety backup to the public keys in this file (repeatable).
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub recipients_file: Vec<PathBuf>,
    /// Run no hook (x-nuwax-backup.hooks, nuwaxbackup.* labels), not even on error.
    #[arg(long)]
    pub no_hooks: bool,
    /// Verify the backup and print the plan: what each volume gets, what stops and starts,
    /// space needed, images changed since the backup. Changes nothing, takes no lock.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Argv after docker's global options and the plugin name have been taken off.
#[derive(Debug, PartialEq, Eq)]
pub struct SplitArgs {
    /// Docker's global options exactly as given, to pass in front of every docker call.
    pub docker_globals: Vec<OsString>,
    /// What is left for our own parser, starting with a program name.
    pub rest: Vec<OsString>,
    /// `docker-cli-plugin-metadata` was asked for.
    pub metadata: bool,
    /// Run by the docker CLI as its plugin (help then says `docker nuwaxbackup`).
    pub plugin: bool,
}

const GLOBALS_WITH_VALUE: &[&str] = &[
    "--config",
    "-c",
    "--context",
    "-H",
    "--host",
    "-l",
    "--log-level",
    "--tlscacert",
    "--tlscert",
    "--tlskey",
];
const GLOBAL_FLAGS: &[&str] = &["-D", "--debug", "--tls", "--tlsverify"];

/// Splits argv (program name first) into docker's global options and our own arguments.
///
/// As a plugin the CLI passes `[prog, <docker globals…>, nuwaxbackup, <ours…>]`; standalone
/// it is `[prog, <ours…>]`, and docker globals are accepted in front there too.
pub fn split_argv(argv: &[OsString]) -> SplitArgs {
    let prog = argv
        .first()
        .cloned()
        .unwrap_or_else(|| "docker-nuwax-backup".into());
    let mut globals = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].to_string_lossy();
        let (name, has_inline_value) = match arg.split_once('=') {
            Some((n, _)) if n.starts_with('-') => (n.to_string(), true),
            _ => (arg.to_string(), false),
        };
        if GLOBALS_WITH_VALUE.contains(&name.as_str()) {
            globals.push(argv[i].clone());
            if !has_inline_value && i + 1 < argv.len() {
                globals.push(argv[i + 1].clone());
                i += 1;
            }
        } else if GLOBAL_FLAGS.contains(&name.as_str()) {
            globals.push(argv[i].clone());
        } else {
            break;
        }
        i += 1;
    }
    let metadata = argv
        .get(i)
        .is_some_and(|a| a == "docker-cli-plugin-metadata");
    let plugin = argv.get(i).is_some_and(|a| a == PLUGIN_NAME);
    if plugin {
        i += 1;
    }
    let mut rest = vec![prog];
    rest.extend(argv[i.min(argv.len())..].iter().cloned());
    SplitArgs {
        docker_globals: globals,
        rest,
        metadata,
        plugin,
    }
}

/// `backup list` (the seed's words) is `list`, after any options (`-p NAME backup list`);
/// `backup` alone stays `create`. A `backup` right after an option is that option's value.
pub fn backup_list_alias(mut rest: Vec<OsString>) -> Vec<OsString> {
    let after_value = |prev: &OsString| {
        let p = prev.to_string_lossy();
        !p.starts_with('-') || p.contains('=')
    };
    let at = (1..rest.len().saturating_sub(1)).find(|&i| {
        rest[i] == "backup" && rest[i + 1] == "list" && (i == 1 || after_value(&rest[i - 1]))
    });
    if let Some(i) = at {
        rest.remove(i);
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (a flag named twice, a `requires` of nothing), which a
    /// release build does not run.
    #[test]
    fn the_command_line_model_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn backup_list_is_list() {
        assert_eq!(
            backup_list_alias(os(&["x", "backup", "list", "--format", "ids"])),
            os(&["x", "list", "--format", "ids"])
        );
        assert_eq!(
            backup_list_alias(os(&["x", "backup", "--stop"])),
            os(&["x", "backup", "--stop"])
        );
        assert_eq!(
            backup_list_alias(os(&["x", "-p", "app", "backup", "list"])),
            os(&["x", "-p", "app", "list"])
        );
        assert_eq!(
            backup_list_alias(os(&["x", "-p", "backup", "list"])),
            os(&["x", "-p", "backup", "list"]),
            "a project named backup"
        );
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn plugin_invocation_drops_the_plugin_name() {
        let s = split_argv(&os(&[
            "/p/docker-nuwaxbackup",
            "nuwaxbackup",
            "create",
            "--stop",
        ]));
        assert!(s.docker_globals.is_empty());
        assert_eq!(s.rest, os(&["/p/docker-nuwaxbackup", "create", "--stop"]));
    }

    #[test]
    fn docker_globals_are_kept_unchanged_in_order() {
        let s = split_argv(&os(&[
            "x",
            "--context",
            "c",
            "-H",
            "unix:///a.sock",
            "--host=tcp://h:1",
            "--log-level",
            "debug",
            "-D",
            "--tlsverify",
            "--config=/cfg",
            "-c=ctx",
            "nuwaxbackup",
            "status",
        ]));
        assert_eq!(
            s.docker_globals,
            os(&[
                "--context",
                "c",
                "-H",
                "unix:///a.sock",
                "--host=tcp://h:1",
                "--log-level",
                "debug",
                "-D",
                "--tlsverify",
                "--config=/cfg",
                "-c=ctx",
            ])
        );
        assert_eq!(s.rest, os(&["x", "status"]));
    }

    #[test]
    fn standalone_invocation_keeps_everything() {
        let s = split_argv(&os(&["docker-nuwax-backup", "create", "-p", "x"]));
        assert!(s.docker_globals.is_empty());
        assert_eq!(s.rest, os(&["docker-nuwax-backup", "create", "-p", "x"]));
    }

    #[test]
    fn our_own_short_options_after_the_command_are_not_taken() {
        // `-f` is ours (compose file), `-c` after the subcommand is not docker's.
        let s = split_argv(&os(&["x", "nuwaxbackup", "status", "-f", "a.yml"]));
        assert_eq!(s.rest, os(&["x", "status", "-f", "a.yml"]));
    }

    #[test]
    fn metadata_is_recognised() {
        assert!(split_argv(&os(&["x", "docker-cli-plugin-metadata"])).metadata);
        assert!(!split_argv(&os(&["x", "status"])).metadata);
    }

    #[test]
    fn compose_args_render_in_compose_spelling() {
        let c = ComposeArgs {
            files: vec!["a.yml".into(), "b.yml".into()],
            project_name: Some("p".into()),
            project_directory: Some("/d".into()),
            env_file: vec![".env2".into()],
            profile: vec!["dev".into()],
            catalog: None,
            identity: None,
        };
        assert_eq!(
            c.to_args(),
            os(&[
                "-f",
                "a.yml",
                "-f",
                "b.yml",
                "-p",
                "p",
                "--project-directory",
                "/d",
                "--env-file",
                ".env2",
                "--profile",
                "dev",
            ])
        );
    }
}
