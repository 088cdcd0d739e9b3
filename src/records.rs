//! The words manifests, catalog rows and plans share, as types (serde spells them as the
//! archives and the catalog always have, so older archives and catalogs still read).

use serde::{Deserialize, Serialize};

/// What kind of volume a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A named volume of the engine.
    Volume,
    /// A host path mounted into a container.
    Bind,
}

/// What a volume holds: `data` is restored by `rollback --data-only`, `app` is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Data,
    App,
}

/// Who reads or writes a volume: this process on the host, or the engine (`docker cp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    Host,
    Engine,
}

/// Why a backup was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupType {
    Manual,
    PreUpgrade,
    /// Taken by `rollback` of the state it replaces.
    PreRollback,
}

/// The commands that keep a run record (they stop services).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunCommand {
    Create,
    Rollback,
}

/// The outcome of a run, as the catalog records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Completed,
    Failed,
}

/// How a backup's volumes were read: directly while stopped, or (the slowest way any volume
/// took) from a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    Direct,
    Reflink,
    Copy,
    Stream,
}

/// Where a row's off-host copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteStatus {
    Uploaded,
    Failed,
}

/// The outcome of a backup's last restore test (`verify --restore-test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreTest {
    Passed,
    Failed,
}

/// How a create spent its downtime: the capture way, the capture, first stop to last start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub capture: Capture,
    pub capture_ms: u64,
    pub downtime_ms: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            capture: Capture::Direct,
            capture_ms: 0,
            downtime_ms: 0,
        }
    }
}

macro_rules! words {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::str::FromStr for $t {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> anyhow::Result<Self> {
                match s {
                    $($s => Ok(Self::$v),)*
                    other => anyhow::bail!("unknown {} {other:?}", stringify!($t)),
                }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
        impl rusqlite::types::FromSql for $t {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e: anyhow::Error| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }
    };
}

/// `as_str`, `FromStr` and `Display` with the words serde writes, for the enums of plans too.
pub(crate) use words;

words!(BackupType { Manual => "manual", PreUpgrade => "pre-upgrade", PreRollback => "pre-rollback" });
words!(Status { Completed => "completed", Failed => "failed" });
words!(RunCommand { Create => "create", Rollback => "rollback" });
words!(VolumeKind { Volume => "volume", Bind => "bind" });
words!(Role { Data => "data", App => "app" });
words!(Io { Host => "host", Engine => "engine" });
words!(Capture { Direct => "direct", Reflink => "reflink", Copy => "copy", Stream => "stream" });
words!(RemoteStatus { Uploaded => "uploaded", Failed => "failed" });
words!(RestoreTest { Passed => "passed", Failed => "failed" });

/// The last verification of a backup: passed, or what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Ok,
    /// An encrypted archive checked without its key: size and SHA-256 only. Not a passed
    /// verify for prune's "never the newest verified backup" rule.
    ChecksumOnly,
    Failed(String),
}

impl Verification {
    /// As the catalog stores it: `ok`, or the error.
    pub fn to_db(&self) -> &str {
        match self {
            Verification::Ok => "ok",
            Verification::ChecksumOnly => "checksum-only",
            Verification::Failed(why) => why,
        }
    }

    /// Nothing wrong was found (a checksum-only check included).
    pub fn passed_or_checksum(&self) -> bool {
        !matches!(self, Verification::Failed(_))
    }

    pub fn from_db(s: &str) -> Verification {
        match s {
            "ok" => Verification::Ok,
            "checksum-only" => Verification::ChecksumOnly,
            other => Verification::Failed(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_as_stored() {
        for t in [
            BackupType::Manual,
            BackupType::PreUpgrade,
            BackupType::PreRollback,
        ] {
            assert_eq!(t.as_str().parse::<BackupType>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert_eq!("failed".parse::<Status>().unwrap(), Status::Failed);
        assert!("weird".parse::<Status>().is_err());
        assert_eq!(serde_json::to_value(VolumeKind::Bind).unwrap(), "bind");
        assert_eq!(Verification::from_db("ok"), Verification::Ok);
        assert_eq!(Verification::from_db("bad").to_db(), "bad");
    }
}
