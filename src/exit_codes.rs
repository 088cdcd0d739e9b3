//! The exit codes a user or a script can rely on, and the error that carries one.
use std::fmt;

/// Every non-zero exit this tool makes on purpose. README.md lists them; keep both in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Something failed that has no code of its own.
    Failure = 1,
    /// The command line was wrong (clap's own code).
    Usage = 2,
    /// No compose file was found.
    NoComposeFile = 3,
    /// The compose file is not valid.
    InvalidComposeFile = 4,
    /// `docker compose` (Compose v2) is missing.
    ComposeMissing = 5,
    /// The Docker daemon does not answer.
    DaemonUnreachable = 6,
    /// The Docker context does not exist.
    UnknownContext = 7,
    /// Running containers block a cold backup or rollback.
    NotStopped = 8,
    /// Another create or rollback holds the project's lock.
    Locked = 9,
    /// Not enough free space for the archive.
    NoSpace = 10,
    /// The work ended but services could not be started again.
    RestartFailed = 11,
    /// A backup archive failed verification.
    VerifyFailed = 12,
    /// A rollback failed and what was there before was put back.
    RolledBack = 13,
    /// The local backup is complete, but its copy on object storage failed (or the remote
    /// could not be reached for a remote-only operation).
    Remote = 14,
    /// A missing, wrong or locked decryption identity.
    Identity = 15,
    /// Rolled back, but the safety backup of the previous state could not be written (the
    /// previous content is kept; `recover` finishes it).
    SafetyPending = 16,
    /// A hook failed (or could not run): a `before-*` one stops the run before anything
    /// stops or changes.
    Hook = 17,
    /// A restore test failed: the copy did not start, turn healthy or pass its checks.
    RestoreTest = 18,
    /// The user cancelled (Ctrl-C, SIGTERM, or the docker CLI went away).
    Cancelled = 130,
}

impl Code {
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// An error whose exit code and one-line message are meant for the user as they are.
#[derive(Debug)]
pub struct UserError {
    pub code: Code,
    pub message: String,
    /// The lower-level error it sums up (kept for `--debug`-style inspection, not printed).
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl UserError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        UserError {
            code,
            message: message.into(),
            source: None,
        }
    }

    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Shorthand: `bail_user!(Code::Locked, "…{}", x)` returns a [`UserError`].
#[macro_export]
macro_rules! bail_user {
    ($code:expr, $($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::exit_codes::UserError::new($code, format!($($arg)*))))
    };
}

/// A [`UserError`] that is `e`, or that an io::Error `e` carries.
pub fn user_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a UserError> {
    e.downcast_ref::<UserError>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|i| i.downcast_ref::<UserError>())
    })
}

/// The exit code for an error chain: the first [`UserError`] in it, else `Failure`.
/// A disk that filled (`ENOSPC`, `EDQUOT`) anywhere in the chain is `NoSpace`.
pub fn code_of(err: &anyhow::Error) -> Code {
    let full = || {
        err.chain().any(|e| {
            e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                .is_some_and(|c| c == libc::ENOSPC || c == libc::EDQUOT)
        })
    };
    // An io::Error that carries one (a read cancelled inside a decoder) hides it from
    // `source()`: look inside.
    err.downcast_ref::<UserError>()
        .or_else(|| err.chain().find_map(user_error_in))
        .map(|u| u.code)
        .unwrap_or_else(|| if full() { Code::NoSpace } else { Code::Failure })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code, by an exhaustive match: a new variant does not compile until it is here.
    fn all() -> Vec<Code> {
        let mut out = Vec::new();
        for n in 0..=255u8 {
            let c = match n {
                1 => Code::Failure,
                2 => Code::Usage,
                3 => Code::NoComposeFile,
                4 => Code::InvalidComposeFile,
                5 => Code::ComposeMissing,
                6 => Code::DaemonUnreachable,
                7 => Code::UnknownContext,
                8 => Code::NotStopped,
                9 => Code::Locked,
                10 => Code::NoSpace,
                11 => Code::RestartFailed,
                12 => Code::VerifyFailed,
                13 => Code::RolledBack,
                14 => Code::Remote,
                15 => Code::Identity,
                16 => Code::SafetyPending,
                17 => Code::Hook,
                18 => Code::RestoreTest,
                130 => Code::Cancelled,
                _ => continue,
            };
            // The reverse match is the exhaustive one.
            let back = match c {
                Code::Failure
                | Code::Usage
                | Code::NoComposeFile
                | Code::InvalidComposeFile
                | Code::ComposeMissing
                | Code::DaemonUnreachable
                | Code::UnknownContext
                | Code::NotStopped
                | Code::Locked
                | Code::NoSpace
                | Code::RestartFailed
                | Code::VerifyFailed
                | Code::RolledBack
                | Code::Remote
                | Code::Identity
                | Code::SafetyPending
                | Code::Hook
                | Code::RestoreTest
                | Code::Cancelled => c.as_u8(),
            };
            assert_eq!(back, n);
            out.push(c);
        }
        out
    }

    #[test]
    fn the_readme_table_lists_every_exit_code_and_no_other() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("## Exit codes")
            .nth(1)
            .expect("README has an exit code table");
        let listed: Vec<u8> = table
            .lines()
            .skip_while(|l| !l.starts_with("| 0 |"))
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.split('|').nth(1).unwrap().trim().parse().unwrap())
            .collect();
        let mut want: Vec<u8> = std::iter::once(0)
            .chain(all().into_iter().map(Code::as_u8))
            .collect();
        want.sort();
        assert_eq!(listed, want);
    }

    #[test]
    fn code_is_found_under_context() {
        let err =
            anyhow::Error::new(UserError::new(Code::Locked, "busy")).context("creating backup");
        assert_eq!(code_of(&err), Code::Locked);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), Code::Failure);
    }
}
