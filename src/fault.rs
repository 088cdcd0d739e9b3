//! Fault seams for the end-to-end tests: `NUWAX_BACKUP_TEST_KILL_AT=<point>` makes the process
//! SIGKILL itself at that point, exactly as `kill -9` or the OOM killer would end it there.
//! Unset (always, outside tests), every point is a no-op.

/// Dies by SIGKILL when `NUWAX_BACKUP_TEST_KILL_AT` names `point`.
pub fn point(point: &str) {
    if std::env::var("NUWAX_BACKUP_TEST_KILL_AT").as_deref() == Ok(point) {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Fails when `NUWAX_BACKUP_TEST_FAIL_AT` names `point`: an error the preflight could not
/// foresee (a disk another process fills, an I/O error), for the tests of what follows one.
pub fn fail(point: &str) -> anyhow::Result<()> {
    if std::env::var("NUWAX_BACKUP_TEST_FAIL_AT").as_deref() == Ok(point) {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        return Err(anyhow::Error::new(full).context(format!("writing [injected at {point}]")));
    }
    Ok(())
}

/// Whether the tests asked to act as a filesystem without `RENAME_EXCHANGE` (NFS, older ZFS).
pub fn no_exchange() -> bool {
    std::env::var("NUWAX_BACKUP_TEST_NO_EXCHANGE").as_deref() == Ok("1")
}
