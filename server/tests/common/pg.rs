//! A real PostgreSQL for the tests that need one: one cluster per test binary (initdb once,
//! on a Unix socket in a temp dir, no TCP listener, fsync and `synchronous_commit` on), and a
//! fresh database per test ([`database`]).
//!
//! PostgreSQL refuses to run as root, and CI runs as root: the cluster then runs as the
//! `postgres` user. The binaries come from `QPQ_PG_BIN`, `/usr/local/bin`, or Debian's
//! `/usr/lib/postgresql/<v>/bin` (`.ci/pg-setup` installs them when absent). No PostgreSQL is
//! a test failure, never a skip.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The running cluster of this test binary.
pub struct Cluster {
    /// Socket directory (also the cluster's parent directory).
    pub dir: PathBuf,
    /// Data directory.
    pub data: PathBuf,
    bin: PathBuf,
    ids: Option<(u32, u32)>,
    child: Mutex<Option<Child>>,
}

fn bin_dir() -> PathBuf {
    if let Ok(p) = std::env::var("QPQ_PG_BIN") {
        return PathBuf::from(p);
    }
    if Path::new("/usr/local/bin/initdb").exists() {
        return PathBuf::from("/usr/local/bin");
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "PostgreSQL is not installed: run .ci/pg-setup (apt-get install -y postgresql) or set QPQ_PG_BIN",
    )
}

/// uid/gid of the `postgres` user when running as root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam gets a valid C string; the result is read at once (tests run it once).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root needs the `postgres` user to run PostgreSQL"
    );
    // SAFETY: pw is non-null and points at libc's static passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn command(bin: &Path, name: &str, ids: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin.join(name));
    if let Some((uid, gid)) = ids {
        c.uid(uid).gid(gid);
    }
    c
}

impl Cluster {
    /// Starts a new cluster (for a test that restarts it; others share [`cluster`]).
    pub fn start() -> Cluster {
        let bin = bin_dir();
        let ids = run_as();
        let dir = tempfile::Builder::new()
            .prefix("qpq-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if let Some((uid, gid)) = ids {
            let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: c is a valid path string.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, gid) }, 0, "chown");
        }
        register_cleanup(&dir);
        let data = dir.join("data");
        let out = command(&bin, "initdb", ids)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Cluster {
            dir,
            data,
            bin,
            ids,
            child: Mutex::new(None),
        };
        c.launch();
        c
    }

    /// Starts (or restarts) the postmaster and waits until it accepts connections.
    pub fn launch(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (bin, ids, data, dir) = (
            self.bin.clone(),
            self.ids,
            self.data.clone(),
            self.dir.clone(),
        );
        // The postmaster dies with this test binary: PR_SET_PDEATHSIG follows the spawning
        // thread, so a thread that never ends spawns it.
        std::thread::spawn(move || {
            let mut cmd = command(&bin, "postgres", ids);
            cmd.arg("-D")
                .arg(&data)
                .args(["-c", "listen_addresses="])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.display()))
                .args([
                    "-c",
                    "fsync=on",
                    "-c",
                    "synchronous_commit=on",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    "log_min_messages=fatal",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; it runs after the uid change, which would
            // otherwise clear it.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("postgres starts");
            tx.send(child).unwrap();
            loop {
                std::thread::park();
            }
        });
        let child = rx.recv().unwrap();
        PIDS.lock().unwrap().push(child.id() as i32);
        *self.child.lock().unwrap() = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(mut c) = postgres::Client::connect(&self.url("postgres"), postgres::NoTls) {
                if c.simple_query("SELECT 1").is_ok() {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "postgres did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the postmaster at once (SIGQUIT: immediate shutdown, crash recovery on start).
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            // SAFETY: the pid is our child's.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGQUIT);
            }
            let _ = c.wait();
        }
    }

    /// Connection string of database `db` (Unix socket, key=value form).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} user=postgres dbname={db} connect_timeout=5",
            self.dir.display()
        )
    }
}

/// This binary's cluster (started on first use).
pub fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(Cluster::start)
}

/// A fresh, empty database of this binary's cluster; returns its connection string.
pub fn database() -> String {
    database_on(cluster())
}

/// A fresh, empty database of cluster `c`; returns its connection string.
pub fn database_on(c: &Cluster) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "qpq_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = postgres::Client::connect(&c.url("postgres"), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    c.url(&name)
}

/// Cluster directories and postmaster pids of this binary, removed and killed at exit.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

extern "C" fn cleanup_at_exit() {
    if let Ok(pids) = PIDS.lock() {
        for pid in pids.iter() {
            // SAFETY: signalling our own children.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
    }
    if let Ok(dirs) = DIRS.lock() {
        for d in dirs.iter() {
            // Backends may still be exiting: try again once.
            if std::fs::remove_dir_all(d).is_err() {
                std::thread::sleep(Duration::from_millis(200));
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

/// Removes the cluster directory when the test binary exits (data dirs are ~40 MB each).
fn register_cleanup(dir: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
    DIRS.lock().unwrap().push(dir.to_path_buf());
}
