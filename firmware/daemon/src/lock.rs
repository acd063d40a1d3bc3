//! One qualmd per spool: an exclusive advisory lock on `<spool>/.lock`, held for the whole run.
//!
//! Two daemons on one spool would evict each other's records and finalize each other's pending
//! ones. The lock is the operating system's (`flock` on Linux), so it goes away with the
//! process however it ends, SIGKILL included; the pid written into the file only names the
//! holder in the error message. The file starts with '.', so spool scans, the uplink and
//! `qualm export` pass it by.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, bail};

/// Name of the lock file inside the spool folder.
pub const LOCK_FILE: &str = ".lock";

/// The held lock; dropping it releases the spool.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

/// Why the spool could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("spool {spool} is in use by another qualmd (pid {pid})")]
    InUse {
        /// The spool folder.
        spool: String,
        /// The holder's pid as its lock file says, or `unknown`.
        pid: String,
    },
    /// The folder or lock file could not be created or locked (a read-only or missing disk).
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

impl SpoolLock {
    /// Creates the spool folder if needed and takes the lock without waiting.
    ///
    /// # Errors
    /// [`LockError::InUse`] when another process holds it; [`LockError::Io`] when the folder
    /// or file cannot be created, written or locked.
    pub fn acquire(spool: &Path) -> Result<Self, LockError> {
        let path = spool.join(LOCK_FILE);
        fs::create_dir_all(spool)
            .with_context(|| format!("cannot create spool folder {}", spool.display()))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;

        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                // The holder wrote its pid after locking; an empty file means it is just
                // starting.
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let pid = if pid.is_empty() { "unknown".into() } else { pid.to_owned() };
                return Err(LockError::InUse { spool: spool.display().to_string(), pid });
            }
            Err(TryLockError::Error(error)) => {
                let error = anyhow::Error::new(error);
                return Err(error.context(format!("cannot lock {}", path.display())).into());
            }
        }

        // Locked: the pid is for the message a second qualmd prints.
        let write_pid = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_data()
        };
        write_pid(&mut file).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

/// Takes the spool's lock for qualmd: another holder stops it; a spool that cannot be locked
/// at all (read-only, missing mount) is logged and qualmd runs on without the lock, since
/// frames are still scored and ledgered without a spool.
///
/// # Errors
/// When another process holds the lock.
pub fn lock_spool(spool: &Path) -> anyhow::Result<Option<SpoolLock>> {
    match SpoolLock::acquire(spool) {
        Ok(lock) => Ok(Some(lock)),
        Err(error @ LockError::InUse { .. }) => bail!(error),
        Err(LockError::Io(error)) => {
            tracing::error!("running without the spool lock: {error:#}");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_spool_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let first = SpoolLock::acquire(&spool).unwrap();
        let pid = std::process::id();
        assert_eq!(fs::read_to_string(spool.join(LOCK_FILE)).unwrap(), format!("{pid}\n"));

        let message = SpoolLock::acquire(&spool).unwrap_err().to_string();
        let expected = format!("spool {} is in use by another qualmd (pid {pid})", spool.display());
        assert_eq!(message, expected);

        drop(first);
        assert!(SpoolLock::acquire(&spool).is_ok());
    }
}
