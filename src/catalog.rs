//! The SQLite catalog of backups: an index of the archives, which remain the truth.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::exit_codes::{Code, UserError};
use crate::records::{BackupType, Capture, RemoteStatus, Status, Verification};

/// Append-only: each step moves the schema from version N to N+1 (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[
    // 1: backups and per-project settings
    "CREATE TABLE backups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        project_dir TEXT NOT NULL,
        file_path TEXT NOT NULL,
        service_version TEXT NOT NULL,
        backup_type TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('completed', 'failed')),
        created_at TEXT NOT NULL,
        size_bytes INTEGER NOT NULL DEFAULT 0,
        sha256 TEXT,
        file_count INTEGER NOT NULL DEFAULT 0,
        compression TEXT NOT NULL,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        verified_at TEXT,
        verify_result TEXT
    );
    CREATE INDEX backups_by_project ON backups (project, created_at);
    CREATE TABLE projects (
        name TEXT PRIMARY KEY,
        storage_dir TEXT
    );",
    // 2: encryption (age): the recipients' public keys, as a JSON array
    "ALTER TABLE backups ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE backups ADD COLUMN recipients TEXT;",
    // 3: downtime: how the volumes were read while the services were stopped, and for how long
    "ALTER TABLE backups ADD COLUMN capture TEXT;
    ALTER TABLE backups ADD COLUMN downtime_ms INTEGER;
    ALTER TABLE backups ADD COLUMN capture_ms INTEGER;",
    // 4: the off-host copy: its object URL, whether it is complete, and an unfinished
    // multipart upload to abort
    "ALTER TABLE backups ADD COLUMN remote_url TEXT;
    ALTER TABLE backups ADD COLUMN remote_status TEXT CHECK (remote_status IN ('uploaded', 'failed'));
    ALTER TABLE backups ADD COLUMN remote_error TEXT;
    ALTER TABLE backups ADD COLUMN remote_upload_id TEXT;",
    // 5: the last restore test: when, passed or failed, and the failing step's line
    "ALTER TABLE backups ADD COLUMN restore_tested_at TEXT;
    ALTER TABLE backups ADD COLUMN restore_test TEXT CHECK (restore_test IN ('passed', 'failed'));
    ALTER TABLE backups ADD COLUMN restore_test_error TEXT;",
];

/// One catalog row, as `--format json` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupRow {
    pub id: i64,
    pub project: String,
    pub project_dir: String,
    pub file_path: String,
    pub service_version: String,
    pub backup_type: BackupType,
    pub status: Status,
    pub created_at: String,
    pub size_bytes: u64,
    pub sha256: Option<String>,
    pub file_count: u64,
    pub compression: String,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// Encrypted with age; `recipients` are the public keys that open it.
    pub encrypted: bool,
    pub recipients: Vec<String>,
    /// How the volumes were read (none: made before this was recorded).
    pub capture: Option<Capture>,
    /// First stop to last start; and the capture itself.
    pub downtime_ms: Option<u64>,
    pub capture_ms: Option<u64>,
    /// The off-host copy (`s3://bucket/key`), and whether it is `uploaded` or `failed`.
    pub remote_url: Option<String>,
    pub remote_status: Option<RemoteStatus>,
    pub remote_error: Option<String>,
    /// An unfinished multipart upload of that copy, aborted by the next push/create/recover.
    #[serde(skip)]
    pub remote_upload_id: Option<String>,
    /// The last restore test (`verify --restore-test`): when, `passed` or `failed`, and the
    /// failing step with its service and last output line.
    pub restore_tested_at: Option<String>,
    pub restore_test: Option<crate::records::RestoreTest>,
    pub restore_test_error: Option<String>,
}

impl BackupRow {
    /// Where the archive is: `local` (its file is here), `remote` (only its uploaded copy),
    /// `both`, or `none`.
    pub fn location(&self) -> &'static str {
        let local = Path::new(&self.file_path).is_file();
        let remote = self.remote_status == Some(RemoteStatus::Uploaded);
        match (local, remote) {
            (true, true) => "both",
            (true, false) => "local",
            (false, true) => "remote",
            (false, false) => "none",
        }
    }
}

/// The row whose restore test passed most recently (prune keeps it; status and metrics tell
/// its age).
pub fn last_passed_restore_test(rows: &[BackupRow]) -> Option<&BackupRow> {
    rows.iter()
        .filter(|r| r.restore_test == Some(crate::records::RestoreTest::Passed))
        .max_by(|a, b| a.restore_tested_at.cmp(&b.restore_tested_at))
}

/// What is known of a row's off-host copy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteState {
    pub url: Option<String>,
    pub status: Option<RemoteStatus>,
    pub error: Option<String>,
    pub upload_id: Option<String>,
}

/// A row to insert (the id comes from the database).
#[derive(Debug, Clone)]
pub struct NewBackup<'a> {
    pub project: &'a str,
    pub project_dir: &'a Path,
    pub file_path: &'a Path,
    pub service_version: &'a str,
    pub backup_type: BackupType,
    pub status: Status,
    pub created_at: &'a str,
    pub size_bytes: u64,
    pub sha256: Option<&'a str>,
    pub file_count: u64,
    pub compression: &'a str,
    pub duration_ms: u64,
    pub error: Option<&'a str>,
    /// Public keys the archive is encrypted to (none: not encrypted).
    pub recipients: &'a [String],
    pub timing: Option<crate::records::Timing>,
}

/// Where a backup comes from: what every row says, whatever became of the backup.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub project: &'a str,
    pub project_dir: &'a Path,
    pub service_version: &'a str,
    pub backup_type: BackupType,
    pub created_at: &'a str,
    pub compression: &'a str,
    /// Public keys the archive is encrypted to (none: not encrypted).
    pub recipients: &'a [String],
}

impl<'a> NewBackup<'a> {
    /// A completed backup: its file, and that file's size, SHA-256 and entry count.
    pub fn completed(
        o: Origin<'a>,
        file_path: &'a Path,
        (size_bytes, sha256, file_count): (u64, &'a str, u64),
    ) -> Self {
        NewBackup {
            status: Status::Completed,
            size_bytes,
            sha256: Some(sha256),
            file_count,
            error: None,
            ..NewBackup::failed(o, file_path, "")
        }
    }

    /// A failed backup, with the error that ended it (the file it was to be).
    pub fn failed(o: Origin<'a>, file_path: &'a Path, error: &'a str) -> Self {
        NewBackup {
            project: o.project,
            project_dir: o.project_dir,
            file_path,
            service_version: o.service_version,
            backup_type: o.backup_type,
            status: Status::Failed,
            created_at: o.created_at,
            size_bytes: 0,
            sha256: None,
            file_count: 0,
            compression: o.compression,
            duration_ms: 0,
            error: Some(error),
            recipients: o.recipients,
            timing: None,
        }
    }

    /// How long it took, and (a create) its downtime.
    pub fn took(self, duration_ms: u64, timing: Option<crate::records::Timing>) -> Self {
        NewBackup {
            duration_ms,
            timing,
            ..self
        }
    }
}

pub struct Catalog {
    conn: Connection,
}

/// How long a command waits for another process's write to the catalog before giving up.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether SQLite gave up waiting for another process's lock.
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn busy_error(what: &str) -> anyhow::Error {
    anyhow::Error::new(UserError::new(
        Code::Locked,
        format!(
            "catalog busy: {what} stayed locked by another process for {} s; try again",
            BUSY_TIMEOUT.as_secs()
        ),
    ))
}

/// Turns a busy catalog into `Locked` and "not a database" into a message that names the
/// file and what to do.
fn explain(err: anyhow::Error, path: &Path) -> anyhow::Error {
    let sqlite = err
        .chain()
        .find_map(|e| e.downcast_ref::<rusqlite::Error>());
    if sqlite.is_some_and(is_busy) {
        return busy_error(&path.display().to_string());
    }
    if sqlite.and_then(|e| e.sqlite_error_code()) == Some(rusqlite::ErrorCode::NotADatabase) {
        return anyhow::Error::new(UserError::new(
            Code::Failure,
            format!(
                "{} is not an SQLite catalog: pass --catalog PATH (or NUWAX_BACKUP_CATALOG) for another one, or move that file away",
                path.display()
            ),
        ));
    }
    err.context(format!("opening catalog {}", path.display()))
}

/// Maps a busy catalog to `Locked` on any statement after opening.
fn busy(err: rusqlite::Error) -> anyhow::Error {
    if is_busy(&err) {
        return busy_error("it");
    }
    err.into()
}

/// The rows of `project`, newest first, read without creating, migrating, locking or waiting
/// on the catalog (for shell completion).
pub fn completions(path: &Path, project: &str) -> Result<Vec<BackupRow>> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::ZERO)?;
    let sql = format!("{SELECT} WHERE project = ?1 ORDER BY created_at DESC, id DESC");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([project], row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `--catalog`/`NUWAX_BACKUP_CATALOG`, else `${DOCKER_CONFIG:-~/.docker}/nuwax-backup/catalog.db`.
pub fn default_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    config_dir().join("nuwax-backup").join("catalog.db")
}

/// `$DOCKER_CONFIG`, else `~/.docker`.
pub fn config_dir() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".docker"),
    }
}

impl Catalog {
    /// Opens (creating when missing) the catalog at `path` and brings its schema up to date.
    /// Waits up to [`BUSY_TIMEOUT`] for other processes; fails with `Locked` past it, and
    /// with a user error naming the file when it is not an SQLite database.
    pub fn open(path: &Path) -> Result<Catalog> {
        if let Some(dir) = path.parent() {
            crate::private::create_dir_all(dir)?;
        }
        crate::private::create_file(path)?;
        let conn = Connection::open(path)
            .with_context(|| format!("opening catalog {}", path.display()))?;
        // Before the first statement: even switching to WAL must wait for a busy catalog.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let setup = conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(anyhow::Error::from)
            .and_then(|()| Self::from_connection(conn));
        setup.map_err(|e| explain(e, path))
    }

    /// An in-memory catalog (tests).
    pub fn in_memory() -> Result<Catalog> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> Result<Catalog> {
        migrate(&mut conn)?;
        Ok(Catalog { conn })
    }

    pub fn insert(&self, b: &NewBackup<'_>) -> Result<i64> {
        self.conn
            .execute(
            "INSERT INTO backups (project, project_dir, file_path, service_version, backup_type,
                status, created_at, size_bytes, sha256, file_count, compression, duration_ms, error,
                encrypted, recipients, capture, downtime_ms, capture_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            params![
                b.project,
                b.project_dir.to_string_lossy(),
                b.file_path.to_string_lossy(),
                b.service_version,
                b.backup_type,
                b.status,
                b.created_at,
                b.size_bytes as i64,
                b.sha256,
                b.file_count as i64,
                b.compression,
                b.duration_ms as i64,
                b.error,
                !b.recipients.is_empty(),
                (!b.recipients.is_empty())
                    .then(|| serde_json::to_string(b.recipients).unwrap_or_default()),
                b.timing.map(|t| t.capture),
                b.timing.map(|t| t.downtime_ms as i64),
                b.timing.map(|t| t.capture_ms as i64),
            ],
        )
            .map_err(busy)?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn get(&self, id: i64) -> Result<Option<BackupRow>> {
        Ok(self
            .conn
            .query_row(&format!("{SELECT} WHERE id = ?1"), [id], row)
            .optional()?)
    }

    /// A project's backups, newest first.
    pub fn list(&self, project: Option<&str>) -> Result<Vec<BackupRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "{SELECT} WHERE (?1 IS NULL OR project = ?1) ORDER BY created_at DESC, id DESC"
        ))?;
        let rows = stmt
            .query_map([project], row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// When a backup of `project` was last verified (none: never).
    pub fn last_verified(&self, project: &str) -> Result<Option<String>> {
        let at = self.conn.query_row(
            "SELECT MAX(verified_at) FROM backups WHERE project = ?1",
            [project],
            |r| r.get(0),
        )?;
        Ok(at)
    }

    /// Removes a row. Fails when there is no such row.
    pub fn delete(&self, id: i64) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM backups WHERE id = ?1", [id])
            .map_err(busy)?;
        anyhow::ensure!(n == 1, "no backup #{id} in the catalog");
        Ok(())
    }

    /// Records the outcome of a verification (`ok`, or what is wrong).
    pub fn record_verification(&self, id: i64, result: &Verification) -> Result<()> {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        self.conn
            .execute(
                "UPDATE backups SET verified_at = ?2, verify_result = ?3 WHERE id = ?1",
                params![id, now, result.to_db()],
            )
            .map_err(busy)?;
        Ok(())
    }

    /// Records the outcome of a restore test: passed, or failed with `error`.
    pub fn record_restore_test(&self, id: i64, error: Option<&str>) -> Result<()> {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let outcome = match error {
            None => crate::records::RestoreTest::Passed,
            Some(_) => crate::records::RestoreTest::Failed,
        };
        self.conn
            .execute(
                "UPDATE backups SET restore_tested_at = ?2, restore_test = ?3, restore_test_error = ?4 WHERE id = ?1",
                params![id, now, outcome, error],
            )
            .map_err(busy)?;
        Ok(())
    }

    /// The last verification result of a row, if it was ever verified.
    pub fn verification(&self, id: i64) -> Result<Option<Verification>> {
        Ok(self
            .conn
            .query_row(
                "SELECT verify_result FROM backups WHERE id = ?1",
                [id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten()
            .map(|s| Verification::from_db(&s)))
    }

    /// Points rows at new files and makes `dir` the project's storage folder, all at once.
    pub fn move_files(
        &mut self,
        project: &str,
        dir: &Path,
        moves: &[(i64, PathBuf)],
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(busy)?;
        for (id, path) in moves {
            tx.execute(
                "UPDATE backups SET file_path = ?2 WHERE id = ?1",
                params![id, path.to_string_lossy()],
            )?;
        }
        tx.execute(
            "INSERT INTO projects (name, storage_dir) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET storage_dir = excluded.storage_dir",
            params![project, dir.to_string_lossy()],
        )?;
        tx.commit().map_err(busy)?;
        Ok(())
    }

    /// Records what is known of a row's off-host copy.
    pub fn set_remote(&self, id: i64, r: &RemoteState) -> Result<()> {
        self.conn
            .execute(
                "UPDATE backups SET remote_url = ?2, remote_status = ?3, remote_error = ?4,
                 remote_upload_id = ?5 WHERE id = ?1",
                params![id, r.url, r.status, r.error, r.upload_id],
            )
            .map_err(busy)?;
        Ok(())
    }

    /// Points a row at a local file (a download, an import).
    pub fn set_file_path(&self, id: i64, path: &Path) -> Result<()> {
        self.conn
            .execute(
                "UPDATE backups SET file_path = ?2 WHERE id = ?1",
                params![id, path.to_string_lossy()],
            )
            .map_err(busy)?;
        Ok(())
    }

    /// The storage folder `migrate-storage` set for a project, if any.
    pub fn storage_dir(&self, project: &str) -> Result<Option<PathBuf>> {
        let dir: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT storage_dir FROM projects WHERE name = ?1",
                [project],
                |r| r.get(0),
            )
            .optional()?;
        Ok(dir.flatten().map(PathBuf::from))
    }
}

const SELECT: &str =
    "SELECT id, project, project_dir, file_path, service_version, backup_type, status,
    created_at, size_bytes, sha256, file_count, compression, duration_ms, error, encrypted,
    recipients, capture, downtime_ms, capture_ms, remote_url, remote_status, remote_error,
    remote_upload_id, restore_tested_at, restore_test, restore_test_error FROM backups";

fn row(r: &Row<'_>) -> rusqlite::Result<BackupRow> {
    Ok(BackupRow {
        id: r.get(0)?,
        project: r.get(1)?,
        project_dir: r.get(2)?,
        file_path: r.get(3)?,
        service_version: r.get(4)?,
        backup_type: r.get(5)?,
        status: r.get(6)?,
        created_at: r.get(7)?,
        size_bytes: r.get::<_, i64>(8)? as u64,
        sha256: r.get(9)?,
        file_count: r.get::<_, i64>(10)? as u64,
        compression: r.get(11)?,
        duration_ms: r.get::<_, i64>(12)? as u64,
        error: r.get(13)?,
        encrypted: r.get(14)?,
        recipients: r
            .get::<_, Option<String>>(15)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        capture: r.get(16)?,
        downtime_ms: r.get::<_, Option<i64>>(17)?.map(|v| v as u64),
        capture_ms: r.get::<_, Option<i64>>(18)?.map(|v| v as u64),
        remote_url: r.get(19)?,
        remote_status: r.get(20)?,
        remote_error: r.get(21)?,
        remote_upload_id: r.get(22)?,
        restore_tested_at: r.get(23)?,
        restore_test: r.get(24)?,
        restore_test_error: r.get(25)?,
    })
}

/// Applies missing migrations inside one `BEGIN IMMEDIATE` transaction, re-reading the
/// version there, so two processes creating a brand-new catalog at once both succeed.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(busy)?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    anyhow::ensure!(
        version <= MIGRATIONS.len(),
        "the catalog was written by a newer docker-nuwax-backup (schema {version}); upgrade this tool"
    );
    if version == MIGRATIONS.len() {
        return Ok(());
    }
    for sql in &MIGRATIONS[version..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit().map_err(busy)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_row<'a>(project: &'a str, created_at: &'a str) -> NewBackup<'a> {
        let origin = Origin {
            project,
            project_dir: Path::new("/p"),
            service_version: "1.0",
            backup_type: BackupType::Manual,
            created_at,
            compression: "gzip",
            recipients: &[],
        };
        NewBackup::completed(origin, Path::new("/p/backups/a.tar.gz"), (10, "ab", 2)).took(5, None)
    }

    #[test]
    fn the_documented_json_fields_are_the_serialized_row() {
        let doc = include_str!("../docs/create.md");
        let listed = doc
            .split("prints the catalog row on stdout:")
            .nth(1)
            .and_then(|rest| rest.split('`').nth(1))
            .expect("docs/create.md lists the row's fields");
        let documented: Vec<&str> = listed
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|f| f.trim().trim_matches('"'))
            .collect();
        let c = Catalog::in_memory().unwrap();
        let id = c.insert(&new_row("p", "2026-01-01T00:00:00Z")).unwrap();
        let row = serde_json::to_value(c.get(id).unwrap().unwrap()).unwrap();
        let serialized: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = documented.clone();
        want.sort();
        let mut got = serialized.clone();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn rows_round_trip_and_list_newest_first() {
        let c = Catalog::in_memory().unwrap();
        let a = c.insert(&new_row("p", "2026-01-01T00:00:00Z")).unwrap();
        let b = c.insert(&new_row("p", "2026-02-01T00:00:00Z")).unwrap();
        c.insert(&new_row("q", "2026-03-01T00:00:00Z")).unwrap();
        let rows = c.list(Some("p")).unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [b, a]);
        assert_eq!(rows[0].size_bytes, 10);
        assert_eq!(c.list(None).unwrap().len(), 3);
        assert_eq!(
            c.get(a).unwrap().unwrap().created_at,
            "2026-01-01T00:00:00Z"
        );
        assert!(c.get(999).unwrap().is_none());
    }

    #[test]
    fn migrations_are_applied_once_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        Catalog::open(&path)
            .unwrap()
            .insert(&new_row("p", "t"))
            .unwrap();
        let again = Catalog::open(&path).unwrap();
        assert_eq!(again.list(None).unwrap().len(), 1);
        let v: i64 = again
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(err.to_string().contains("newer"));
    }
}
