//! The store's lease: one process at a time opens a store (ADR 0021).
//!
//! An exclusive `flock` on `qpq.lock` in the store directory, taken before the store file is
//! read and held until the [`Lease`] is dropped. The kernel releases it when the process dies,
//! so a crash never leaves the store locked. It is per open file, so two `Client`s of one
//! process on one directory exclude each other as two processes do.
//!
//! What it will not do: lock on targets without `flock` (Windows: no lease is taken), or
//! delete the lock file of a store that exists (a deleted and recreated file would let two
//! processes lock two different files). The one exception: a lease that created the store
//! directory, released before any store reached the disk (a failed first login), removes the
//! lock file and the directory, so a failed first attempt leaves nothing behind (issue 10
//! item 5). Two openers racing on a store that does not exist yet are the only ones exposed.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode};

/// The lock file's name in the store directory.
pub(crate) const LOCK_FILE: &str = "qpq.lock";

/// How often a waiting opener retries.
const RETRY: Duration = Duration::from_millis(25);

/// A held lease; released on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    _file: File,
    /// The directory this lease created (it did not exist before).
    created: Option<std::path::PathBuf>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Still locked here (the file closes after this body): nobody else holds it.
        if let Some(dir) = &self.created {
            if !dir.join(crate::store::DB_FILE).exists() {
                let _ = std::fs::remove_file(dir.join(LOCK_FILE));
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl Lease {
    /// Takes the lease of the store in `dir`: at once, or retrying until `wait` has passed.
    /// Another holder gives `Busy`; a filesystem failure gives `Storage`.
    pub(crate) fn acquire(dir: &Path, wait: Duration) -> Result<Lease, Error> {
        let created = (!dir.exists()).then(|| dir.to_path_buf());
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::new(
                ErrorCode::Storage,
                format!("cannot create the store directory: {e}"),
            )
        })?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::new(ErrorCode::Storage, format!("cannot open {LOCK_FILE}: {e}")))?;
        let deadline = Instant::now() + wait;
        loop {
            match try_lock(&file) {
                Ok(true) => {
                    return Ok(Lease {
                        _file: file,
                        created,
                    })
                }
                Ok(false) if Instant::now() < deadline => std::thread::sleep(RETRY),
                Ok(false) => {
                    return Err(Error::new(
                        ErrorCode::Busy,
                        "the store is open in another process (or another Client); close it, or \
                         open with a lock timeout to wait for it",
                    ))
                }
                Err(e) => {
                    return Err(Error::new(
                        ErrorCode::Storage,
                        format!("cannot lock {LOCK_FILE}: {e}"),
                    ))
                }
            }
        }
    }
}

/// `Ok(true)` when locked, `Ok(false)` when someone else holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lease_is_busy_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Lease::acquire(dir.path(), Duration::ZERO).expect("first");
        let e = Lease::acquire(dir.path(), Duration::ZERO).expect_err("second");
        assert_eq!(e.code(), ErrorCode::Busy);
        // Waiting does not help while it is held; it returns Busy after the wait.
        let t = Instant::now();
        let e = Lease::acquire(dir.path(), Duration::from_millis(100)).expect_err("waited");
        assert_eq!(e.code(), ErrorCode::Busy);
        assert!(t.elapsed() >= Duration::from_millis(100));
        drop(first);
        let _again = Lease::acquire(dir.path(), Duration::ZERO).expect("free again");
        assert!(dir.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn a_waiting_opener_gets_the_lease_when_it_is_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Lease::acquire(dir.path(), Duration::ZERO).expect("first");
        let path = dir.path().to_path_buf();
        let waiter =
            std::thread::spawn(move || Lease::acquire(&path, Duration::from_secs(30)).map(|_| ()));
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
        waiter.join().expect("thread").expect("got the lease");
    }
}
