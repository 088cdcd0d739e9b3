//! Fault seams for the end-to-end tests, compiled in only with the `fault-injection` feature
//! (`scripts/test.sh` builds with it): `NUWAX_BACKUP_TEST_KILL_AT=<point>` makes the process
//! SIGKILL itself at that point, exactly as `kill -9` or the OOM killer would end it there;
//! `NUWAX_BACKUP_TEST_FAIL_AT=<point>` injects a full disk there;
//! `NUWAX_BACKUP_TEST_PAUSE_AT=<point>` with `NUWAX_BACKUP_TEST_PAUSE_FILE=<path>` writes
//! `<path>.reached` there and waits until `<path>` exists (two runs interleaved exactly, for
//! the tests of what one run does while another holds the project). A release build reads no
//! such variable: every seam is a no-op. Points are an enum, so a typo does not compile.

/// Where a test can make a run die or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    CreateArchiving,
    CreateCapturing,
    CreateCompressing,
    CreateWriting,
    InPlaceEmptied,
    RollbackRemovingPrevious,
    RollbackRestoring,
    /// A rollback verified and planned, before it takes the project's lock.
    RollbackPlanned,
    RollbackSafety,
    RollbackSafetyAfter,
    RollbackStaged,
    UploadCompleting,
    UploadParts,
    UploadSidecar,
    /// After the n-th journaled move into a mount point (from 1).
    MountStep(usize),
}

impl Fault {
    /// The name the tests give the point.
    pub fn name(self) -> String {
        let word = match self {
            Fault::CreateArchiving => "create-archiving",
            Fault::CreateCapturing => "create-capturing",
            Fault::CreateCompressing => "create-compressing",
            Fault::CreateWriting => "create-writing",
            Fault::InPlaceEmptied => "in-place-emptied",
            Fault::RollbackRemovingPrevious => "rollback-removing-previous",
            Fault::RollbackRestoring => "rollback-restoring",
            Fault::RollbackPlanned => "rollback-planned",
            Fault::RollbackSafety => "rollback-safety",
            Fault::RollbackSafetyAfter => "rollback-safety-after",
            Fault::RollbackStaged => "rollback-staged",
            Fault::UploadCompleting => "upload-completing",
            Fault::UploadParts => "upload-parts",
            Fault::UploadSidecar => "upload-sidecar",
            Fault::MountStep(n) => return format!("mount-step-{n}"),
        };
        word.to_string()
    }
}

/// Whether the test variable `var` names `at` (always false without the feature).
fn asked(var: &str, at: Fault) -> bool {
    cfg!(feature = "fault-injection") && std::env::var(var).is_ok_and(|v| v == at.name())
}

/// Dies by SIGKILL when `NUWAX_BACKUP_TEST_KILL_AT` names `at`; pauses there when
/// `NUWAX_BACKUP_TEST_PAUSE_AT` does (a cancel ends the pause).
pub fn point(at: Fault) {
    if asked("NUWAX_BACKUP_TEST_PAUSE_AT", at) {
        pause();
    }
    if asked("NUWAX_BACKUP_TEST_KILL_AT", at) {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

fn pause() {
    let Some(file) = std::env::var_os("NUWAX_BACKUP_TEST_PAUSE_FILE") else {
        return;
    };
    let file = std::path::PathBuf::from(file);
    let mut reached = file.clone().into_os_string();
    reached.push(".reached");
    let _ = std::fs::write(&reached, std::process::id().to_string());
    while !file.exists() && !crate::cancel::requested() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Fails when `NUWAX_BACKUP_TEST_FAIL_AT` names `at`: a full disk the preflight could not
/// foresee (another process filled it), for the tests of what follows one.
pub fn fail(at: Fault) -> anyhow::Result<()> {
    if asked("NUWAX_BACKUP_TEST_FAIL_AT", at) {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let name = at.name();
        return Err(anyhow::Error::new(full).context(format!("writing [injected at {name}]")));
    }
    Ok(())
}

/// Whether the tests asked to act as a filesystem without `RENAME_EXCHANGE` (NFS, older ZFS).
pub fn no_exchange() -> bool {
    cfg!(feature = "fault-injection")
        && std::env::var("NUWAX_BACKUP_TEST_NO_EXCHANGE").as_deref() == Ok("1")
}

/// Whether the tests asked to resolve names as on a kernel without `openat2` (before 5.6).
pub fn no_openat2() -> bool {
    cfg!(any(test, feature = "fault-injection"))
        && std::env::var_os("NUWAX_BACKUP_TEST_NO_OPENAT2").is_some()
}

#[cfg(test)]
mod tests {
    use super::Fault;

    #[test]
    fn points_are_named_as_the_tests_name_them() {
        assert_eq!(Fault::RollbackSafetyAfter.name(), "rollback-safety-after");
        assert_eq!(Fault::MountStep(2).name(), "mount-step-2");
    }
}
