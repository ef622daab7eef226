//! SQLite backend: WAL, `synchronous=FULL`, one writer thread with group commit, a small pool
//! of read connections.
//!
//! Group commit: write operations are closures sent to the writer thread. The thread takes
//! every operation that is waiting (up to [`MAX_BATCH`]), runs each inside its own SAVEPOINT
//! (so one failing operation rolls back alone), commits the batch with one fsync, and only
//! then answers the callers. Under load many enqueues share one fsync; alone, an enqueue pays
//! exactly one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use super::*;
use crate::delivery;

/// Most write operations committed together.
pub const MAX_BATCH: usize = 256;
const READERS: usize = 4;
/// Threads serving the `*_async` reads, each with its own connection.
const READ_THREADS: usize = 2;

const MIGRATIONS: &[&str] = &[
    // v1
    "
    CREATE TABLE server_state(name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE accounts(
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        identity_key BLOB NOT NULL UNIQUE,
        opaque_record BLOB NOT NULL,
        created_at INTEGER NOT NULL);
    CREATE TABLE devices(
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        device_key BLOB NOT NULL UNIQUE,
        hybrid_key BLOB,
        next_seq INTEGER NOT NULL DEFAULT 1,
        queue_len INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL);
    CREATE INDEX devices_account ON devices(account_id);
    CREATE TABLE sessions(
        token_hash BLOB PRIMARY KEY,
        device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        expires_at INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX sessions_device ON sessions(device_id);
    CREATE TABLE key_packages(
        id INTEGER PRIMARY KEY,
        device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        suite INTEGER NOT NULL,
        data BLOB NOT NULL);
    CREATE INDEX key_packages_device ON key_packages(device_id, suite, id);
    CREATE TABLE channels(
        id BLOB PRIMARY KEY,
        kind INTEGER NOT NULL,
        dm_key BLOB UNIQUE,
        epoch INTEGER NOT NULL DEFAULT 0,
        metadata BLOB NOT NULL DEFAULT x'',
        created_at INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE channel_members(
        channel_id BLOB NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        PRIMARY KEY(channel_id, account_id)) WITHOUT ROWID;
    CREATE INDEX channel_members_account ON channel_members(account_id);
    CREATE TABLE payloads(
        id INTEGER PRIMARY KEY,
        channel_id BLOB NOT NULL,
        sender_device BLOB NOT NULL,
        message_id BLOB NOT NULL,
        kind INTEGER NOT NULL,
        data BLOB NOT NULL,
        created_ms INTEGER NOT NULL);
    CREATE INDEX payloads_sender ON payloads(sender_device);
    CREATE TABLE queue(
        device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        channel_id BLOB NOT NULL,
        payload_id INTEGER NOT NULL REFERENCES payloads(id),
        PRIMARY KEY(device_id, seq)) WITHOUT ROWID;
    CREATE INDEX queue_payload ON queue(payload_id);
    CREATE TABLE enqueue_ids(
        sender_device INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        message_id BLOB NOT NULL,
        payload_id INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY(sender_device, message_id)) WITHOUT ROWID;
    CREATE TABLE blobs(
        channel_id BLOB NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        sha256 BLOB NOT NULL,
        uploader INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        total_size INTEGER NOT NULL,
        received INTEGER NOT NULL,
        complete INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY(channel_id, sha256)) WITHOUT ROWID;
    CREATE TABLE blob_chunks(
        channel_id BLOB NOT NULL,
        sha256 BLOB NOT NULL,
        offset INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY(channel_id, sha256, offset),
        FOREIGN KEY(channel_id, sha256) REFERENCES blobs(channel_id, sha256) ON DELETE CASCADE) WITHOUT ROWID;
    ",
    // v2 (K-3): SHA-256 of each KeyPackage's init key, unique per device. KeyPackages stored
    // by v1 keep NULL (NULLs never collide in a UNIQUE index) and stay fetchable.
    "
    ALTER TABLE key_packages ADD COLUMN init_key_hash BLOB;
    CREATE UNIQUE INDEX key_packages_init_key ON key_packages(device_id, init_key_hash);
    ",
    // v3 (issue 10 item 8): group roles. A channel's creator is its first admin; admins
    // promote. Members of channels made before roles existed are all admins, so those groups
    // keep working as they did (anyone could remove anyone).
    "
    ALTER TABLE channel_members ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
    UPDATE channel_members SET admin = 1;
    ",
    // v4 (issue 17 items 1, 9, 28): account and device ids are never reused. `id_high` holds
    // the highest id ever handed out per table (what AUTOINCREMENT keeps in sqlite_sequence,
    // without rebuilding the tables); every insert takes the next one. A DM whose key names
    // an account that no longer exists loses its key, so nobody can re-join it. Deleted
    // usernames are reserved for a while; expired sessions are purged by expiry.
    "
    CREATE TABLE id_high(name TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO id_high(name, last) VALUES
        ('accounts', coalesce((SELECT max(id) FROM accounts), 0)),
        ('devices', coalesce((SELECT max(id) FROM devices), 0));
    UPDATE channels SET dm_key = NULL WHERE dm_key IS NOT NULL AND (
        SELECT count(*) FROM accounts WHERE id IN (
            CAST(substr(CAST(channels.dm_key AS TEXT), 1, instr(CAST(channels.dm_key AS TEXT), ':') - 1) AS INTEGER),
            CAST(substr(CAST(channels.dm_key AS TEXT), instr(CAST(channels.dm_key AS TEXT), ':') + 1) AS INTEGER))
        ) < 2;
    CREATE TABLE username_tombstones(username TEXT PRIMARY KEY, until INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX sessions_expiry ON sessions(expires_at);
    ",
    // v5 (issue 17): queued bytes per device and per sender (caps and shares), members that
    // are leaving (they still get commits), devices in each channel's group (a Welcome may
    // only go to a device not yet in it), last-resort KeyPackages, and indexes for the purge
    // jobs and the blob quota.
    "
    ALTER TABLE devices ADD COLUMN queue_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queue ADD COLUMN sender_account INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queue ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX queue_sender ON queue(device_id, sender_account);
    ALTER TABLE channel_members ADD COLUMN leaving INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE channel_devices(
        channel_id BLOB NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        PRIMARY KEY(channel_id, device_id)) WITHOUT ROWID;
    CREATE INDEX channel_devices_device ON channel_devices(device_id);
    INSERT OR IGNORE INTO channel_devices(channel_id, device_id)
        SELECT m.channel_id, d.id FROM channel_members m JOIN devices d ON d.account_id = m.account_id;
    CREATE TABLE last_resort_key_packages(
        device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        suite INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY(device_id, suite)) WITHOUT ROWID;
    CREATE INDEX payloads_age ON payloads(created_ms);
    CREATE INDEX enqueue_ids_age ON enqueue_ids(created_ms);
    CREATE INDEX blobs_incomplete ON blobs(complete, created_ms);
    CREATE INDEX blobs_uploader ON blobs(uploader);
    ",
    // v6 (issue 17 items 17 and 18): each channel's latest GroupInfo (members rejoin by
    // external commit, ADR 0054) and blocks between accounts (ADR 0060).
    "
    CREATE TABLE channel_group_info(
        channel_id BLOB PRIMARY KEY REFERENCES channels(id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL,
        data BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE blocks(
        blocker INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        blocked INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY(blocker, blocked)) WITHOUT ROWID;
    CREATE INDEX blocks_blocked ON blocks(blocked);
    ",
];

/// Takes the next never-used id of `table` (`accounts` or `devices`; see migration v4).
fn next_id(c: &Connection, table: &str) -> StorageResult<i64> {
    Ok(
        c.prepare_cached("UPDATE id_high SET last = last + 1 WHERE name = ?1 RETURNING last")?
            .query_row([table], |r| r.get(0))?,
    )
}

/// Whether `key` is registered anywhere: as an identity key or as a device key (one
/// namespace), other than by `except` (an account that may reuse its own keys).
fn key_taken(c: &Connection, key: &Key32, except: Option<AccountId>) -> StorageResult<bool> {
    let except = except.unwrap_or(-1);
    Ok(c.prepare_cached(
        "SELECT 1 FROM accounts WHERE identity_key = ?1 AND id != ?2
             UNION ALL SELECT 1 FROM devices WHERE device_key = ?1 AND account_id != ?2",
    )?
    .exists(params![&key[..], except])?)
}

/// Schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

type Job = Box<dyn WriteJob>;

trait WriteJob: Send {
    /// Runs inside the batch transaction, keeping its result; returns its error when it
    /// failed. May run more than once (a batch that failed is re-run): the closure is `Fn`.
    fn run(&mut self, conn: &Connection) -> Result<(), StorageError>;
    /// Whether the job leaves every channel's row, members and member devices as they were
    /// (an application-message Enqueue): only then does the writer keep its membership
    /// cache across it.
    fn keeps_membership(&self) -> bool;
    /// Answers the caller once the batch committed (or failed to).
    fn finish(self: Box<Self>, commit: Result<(), StorageError>);
}

/// Where a write's result goes: a blocked thread (the synchronous [`Storage`] methods) or an
/// awaiting task (the `*_async` methods), woken by the writer thread itself.
enum Reply<T> {
    Blocking(mpsc::SyncSender<StorageResult<T>>),
    Async(oneshot::Sender<StorageResult<T>>),
}

impl<T> Reply<T> {
    fn send(self, r: StorageResult<T>) {
        // The caller may have gone away (cancelled request); nothing to do then.
        match self {
            Reply::Blocking(s) => {
                let _ = s.send(r);
            }
            Reply::Async(s) => {
                let _ = s.send(r);
            }
        }
    }
}

struct Pending<T, F> {
    f: F,
    result: Option<StorageResult<T>>,
    reply: Reply<T>,
    keeps_membership: bool,
}

impl<T, F> WriteJob for Pending<T, F>
where
    T: Send,
    F: Fn(&Connection) -> StorageResult<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> Result<(), StorageError> {
        let r = (self.f)(conn);
        let out = match &r {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        self.result = Some(r);
        out
    }

    fn keeps_membership(&self) -> bool {
        self.keeps_membership
    }

    fn finish(self: Box<Self>, commit: Result<(), StorageError>) {
        let r = match (self.result, commit) {
            (Some(Ok(_)), Err(e)) => Err(e),
            (Some(r), _) => r,
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(StorageError::Backend("job did not run".into())),
        };
        self.reply.send(r);
    }
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// What an application-message Enqueue reads of its channel: the row, the members and their
/// devices. Kept by the writer thread between batches (issue 14: per-batch lookups), since a
/// burst of messages to one group reads the same rows each time.
#[derive(Clone)]
struct ChannelFacts {
    channel: Channel,
    members: HashMap<AccountId, delivery::Membership>,
    member_devices: Vec<delivery::MemberDevice>,
}

/// Channels cached at most: past it the cache starts over.
const MEMBERSHIP_CACHE_MAX: usize = 4096;

thread_local! {
    /// The writer thread's membership cache. Correct because every write goes through the
    /// writer: it is emptied before and after any job that may change a channel, a
    /// membership or a device (every job but an application-message Enqueue), and after any
    /// rollback.
    static MEMBERSHIP: std::cell::RefCell<HashMap<ChannelId, ChannelFacts>> =
        std::cell::RefCell::new(HashMap::new());
}

fn forget_membership() {
    MEMBERSHIP.with(|m| m.borrow_mut().clear());
}

/// Runs one job of a batch, emptying the membership cache around any job that may change it.
fn run_job(conn: &Connection, job: &mut Job) -> Result<(), StorageError> {
    let keeps = job.keeps_membership();
    if !keeps {
        forget_membership();
    }
    let r = job.run(conn);
    if !keeps || r.is_err() {
        forget_membership();
    }
    r
}

/// The SQLite storage backend.
pub struct SqliteStorage {
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Reads of the `*_async` methods: served by [`READ_THREADS`] threads of their own, each
    /// with its connection, answering through a oneshot (no blocking-pool hop).
    read_jobs: Mutex<Option<mpsc::Sender<ReadJob>>>,
    read_threads: Mutex<Vec<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    max_pages: u64,
}

fn configure(conn: &Connection, max_pages: u64) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
    )?;
    limit_pages(conn, max_pages)
}

/// Applies the page cap (SQLite `max_page_count` is per connection); 0 = no cap.
fn limit_pages(conn: &Connection, max_pages: u64) -> rusqlite::Result<()> {
    if max_pages > 0 {
        let _: i64 = conn.query_row(&format!("PRAGMA max_page_count = {max_pages}"), [], |r| {
            r.get(0)
        })?;
    }
    Ok(())
}

/// Issue 17 item 10: the database holds every OPAQUE record (and, unless kept apart, the
/// OPAQUE server key), so it and its WAL and SHM files are 0600 in a 0700 directory. SQLite
/// creates the WAL and SHM with the database file's mode; existing files are tightened.
fn restrict_permissions(path: &Path) -> StorageResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let fail = |p: &Path, e: std::io::Error| {
            StorageError::Backend(format!("cannot restrict {}: {e}", p.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(dir, e))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(path, e))?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(&p, e))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn migrate(conn: &mut Connection) -> StorageResult<()> {
    let current: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(StorageError::Backend(format!(
            "database schema v{current} is newer than this server (v{})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let commit = run_batch(&conn, &mut batch);
        for job in batch {
            job.finish(commit.clone());
        }
    }
}

/// Runs one transaction-control statement through the statement cache (compiled once).
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Group commit (ADR 0100). The fast path runs the whole batch in one transaction without
/// savepoints. When a job fails, the batch is rolled back and re-run with each job inside its
/// own savepoint, so the failing job fails alone and every other one still commits, in the
/// same single fsync; a job that succeeded on the first run is simply run again.
fn run_batch(conn: &Connection, batch: &mut [Job]) -> Result<(), StorageError> {
    control(conn, "BEGIN IMMEDIATE")?;
    let mut failed = false;
    for job in batch.iter_mut() {
        if run_job(conn, job).is_err() {
            failed = true;
            break;
        }
    }
    if !failed {
        if let Err(e) = control(conn, "COMMIT") {
            let _ = control(conn, "ROLLBACK");
            forget_membership();
            return Err(e.into());
        }
        return Ok(());
    }
    // SQLite may already have rolled the transaction back (a full disk): then this fails.
    let _ = control(conn, "ROLLBACK");
    forget_membership();
    if batch.len() == 1 {
        // The one job failed: its own error is its answer, nothing was written.
        return Ok(());
    }
    run_batch_isolated(conn, batch)
}

/// The slow path of [`run_batch`]: every job inside its own savepoint.
fn run_batch_isolated(conn: &Connection, batch: &mut [Job]) -> Result<(), StorageError> {
    control(conn, "BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        let step = (|| -> Result<(), StorageError> {
            control(conn, "SAVEPOINT job")?;
            match run_job(conn, job) {
                Ok(()) => control(conn, "RELEASE job")?,
                Err(failed) => {
                    let undo = control(conn, "ROLLBACK TO job")
                        .and_then(|()| control(conn, "RELEASE job"));
                    if let Err(e) = undo {
                        // SQLite may roll the whole transaction back on a full disk; the batch
                        // then fails as "full", which the service reports as Unavailable.
                        return Err(match failed {
                            StorageError::Full => StorageError::Full,
                            _ => e.into(),
                        });
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = step {
            let _ = control(conn, "ROLLBACK");
            forget_membership();
            return Err(e);
        }
    }
    if let Err(e) = control(conn, "COMMIT") {
        let _ = control(conn, "ROLLBACK");
        forget_membership();
        return Err(e.into());
    }
    Ok(())
}

/// A read-only connection to the database.
fn open_reader(path: &Path, max_pages: u64) -> StorageResult<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    limit_pages(&c, max_pages)?;
    Ok(c)
}

fn reader_loop(conn: Connection, rx: std::sync::Arc<Mutex<mpsc::Receiver<ReadJob>>>) {
    loop {
        let job = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        job(&conn);
    }
}

fn key32(v: Vec<u8>) -> rusqlite::Result<Key32> {
    v.try_into().map_err(|_| {
        rusqlite::Error::InvalidColumnType(0, "key32".into(), rusqlite::types::Type::Blob)
    })
}

fn id16(v: Vec<u8>) -> rusqlite::Result<ChannelId> {
    v.try_into().map_err(|_| {
        rusqlite::Error::InvalidColumnType(0, "id16".into(), rusqlite::types::Type::Blob)
    })
}

fn channel_kind(v: i64) -> ChannelKind {
    if v == ChannelKind::Dm as i64 {
        ChannelKind::Dm
    } else {
        ChannelKind::Group
    }
}

impl SqliteStorage {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub fn open(path: &Path) -> StorageResult<SqliteStorage> {
        SqliteStorage::open_with(path, 0)
    }

    /// [`SqliteStorage::open`] with the database capped at `max_pages` pages on every
    /// connection (0 = no cap): writes past it fail with [`StorageError::Full`], exactly as on
    /// a full disk. A test and operations knob (`max_db_pages`).
    pub fn open_with(path: &Path, max_pages: u64) -> StorageResult<SqliteStorage> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        restrict_permissions(path)?;
        let mut conn = Connection::open(path)?;
        configure(&conn, max_pages)?;
        migrate(&mut conn)?;
        let integrity: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if integrity != "ok" {
            return Err(StorageError::Backend(format!(
                "database integrity check failed: {integrity}"
            )));
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("qpq-db-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StorageError::Backend(format!("cannot start writer: {e}")))?;
        let (read_tx, read_rx) = mpsc::channel::<ReadJob>();
        let read_rx = std::sync::Arc::new(Mutex::new(read_rx));
        let mut read_threads = Vec::with_capacity(READ_THREADS);
        for i in 0..READ_THREADS {
            let conn = open_reader(path, max_pages)?;
            let rx = read_rx.clone();
            read_threads.push(
                std::thread::Builder::new()
                    .name(format!("qpq-db-reader-{i}"))
                    .spawn(move || reader_loop(conn, rx))
                    .map_err(|e| StorageError::Backend(format!("cannot start reader: {e}")))?,
            );
        }
        Ok(SqliteStorage {
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            read_jobs: Mutex::new(Some(read_tx)),
            read_threads: Mutex::new(read_threads),
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            max_pages,
        })
    }

    /// Stops the writer after the operations already queued, and waits for it (and for the
    /// reader threads).
    pub fn close(&self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Ok(mut r) = self.read_jobs.lock() {
            r.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        let readers = self
            .read_threads
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for t in readers {
            let _ = t.join();
        }
    }

    fn submit(&self, job: Job) -> StorageResult<()> {
        let w = self
            .writer
            .lock()
            .map_err(|_| StorageError::Backend("writer lock poisoned".into()))?;
        let w = w
            .as_ref()
            .ok_or_else(|| StorageError::Backend("storage is closed".into()))?;
        w.send(job)
            .map_err(|_| StorageError::Backend("writer stopped".into()))
    }

    /// Runs `f` on the writer thread in the next batch and blocks until that batch committed.
    /// `f` may run twice (see [`run_batch`]); only the last run's result counts.
    fn write<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StorageResult<T> + Send + 'static,
    {
        self.write_keeping(f, false)
    }

    /// [`SqliteStorage::write`]; `keeps_membership` says that `f` changes no channel,
    /// membership or device (see [`WriteJob::keeps_membership`]).
    fn write_keeping<T, F>(&self, f: F, keeps_membership: bool) -> StorageResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StorageResult<T> + Send + 'static,
    {
        let (reply, rx) = mpsc::sync_channel(1);
        self.submit(Box::new(Pending {
            f,
            result: None,
            reply: Reply::Blocking(reply),
            keeps_membership,
        }))?;
        rx.recv()
            .map_err(|_| StorageError::Backend("writer stopped".into()))?
    }

    /// [`SqliteStorage::write`] without blocking: the writer thread completes a oneshot the
    /// caller awaits once the batch committed.
    fn write_async<T, F>(&self, f: F) -> StorageFuture<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StorageResult<T> + Send + 'static,
    {
        self.write_async_keeping(f, false)
    }

    /// [`SqliteStorage::write_async`]; `keeps_membership` as in
    /// [`SqliteStorage::write_keeping`].
    fn write_async_keeping<T, F>(&self, f: F, keeps_membership: bool) -> StorageFuture<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> StorageResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let submitted = self.submit(Box::new(Pending {
            f,
            result: None,
            reply: Reply::Async(reply),
            keeps_membership,
        }));
        Box::pin(async move {
            submitted?;
            rx.await
                .map_err(|_| StorageError::Backend("writer stopped".into()))?
        })
    }

    /// Runs `f` on one of the reader threads; the result comes back through a oneshot.
    fn read_async<T, F>(&self, f: F) -> StorageFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StorageResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |c: &Connection| {
            let _ = reply.send(f(c));
        });
        let submitted = match self.read_jobs.lock() {
            Ok(g) => match g.as_ref() {
                Some(tx) => tx
                    .send(job)
                    .map_err(|_| StorageError::Backend("readers stopped".into())),
                None => Err(StorageError::Backend("storage is closed".into())),
            },
            Err(_) => Err(StorageError::Backend("reader lock poisoned".into())),
        };
        Box::pin(async move {
            submitted?;
            rx.await
                .map_err(|_| StorageError::Backend("readers stopped".into()))?
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> StorageResult<T>) -> StorageResult<T> {
        let conn = {
            let mut pool = self
                .readers
                .lock()
                .map_err(|_| StorageError::Backend("reader lock poisoned".into()))?;
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path, self.max_pages)?,
        };
        let r = f(&conn);
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < READERS {
                pool.push(conn);
            }
        }
        r
    }
}

impl Drop for SqliteStorage {
    fn drop(&mut self) {
        self.close();
    }
}

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: r.get(0)?,
        username: r.get(1)?,
        identity_key: key32(r.get(2)?)?,
        opaque_record: r.get(3)?,
    })
}

fn account_id_by_identity(conn: &Connection, key: &Key32) -> StorageResult<AccountId> {
    conn.prepare_cached("SELECT id FROM accounts WHERE identity_key = ?1")?
        .query_row([&key[..]], |r| r.get(0))
        .optional()?
        .ok_or(StorageError::NotFound("user"))
}

/// Whether account `blocker` blocks account `blocked`.
fn blocks(conn: &Connection, blocker: AccountId, blocked: AccountId) -> StorageResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
        .exists(params![blocker, blocked])?)
}

/// Accounts that block `blocked`.
fn blockers_of(conn: &Connection, blocked: AccountId) -> StorageResult<Vec<AccountId>> {
    let mut st = conn.prepare_cached("SELECT blocker FROM blocks WHERE blocked = ?1")?;
    let rows = st.query_map([blocked], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The channel's latest GroupInfo: (epoch, bytes).
fn group_info_row(conn: &Connection, channel: &ChannelId) -> StorageResult<Option<(u64, Bytes)>> {
    Ok(conn
        .prepare_cached("SELECT epoch, data FROM channel_group_info WHERE channel_id = ?1")?
        .query_row([&channel[..]], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                Bytes::from(r.get::<_, Vec<u8>>(1)?),
            ))
        })
        .optional()?)
}

fn member_check(conn: &Connection, channel: &ChannelId, account: AccountId) -> StorageResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM channel_members WHERE channel_id = ?1 AND account_id = ?2 AND leaving = 0")?
        .exists(params![&channel[..], account])?)
}

fn channel_row(conn: &Connection, id: &ChannelId) -> StorageResult<Option<Channel>> {
    Ok(conn
        .prepare_cached("SELECT kind, epoch, metadata FROM channels WHERE id = ?1")?
        .query_row([&id[..]], |r| {
            Ok(Channel {
                id: *id,
                kind: channel_kind(r.get(0)?),
                epoch: r.get::<_, i64>(1)? as u64,
                metadata: r.get(2)?,
            })
        })
        .optional()?)
}

/// What one sender holds of a device's queue (rows, bytes).
const SHARE_SQL: &str =
    "SELECT count(*), coalesce(sum(bytes), 0) FROM queue WHERE device_id = ?1 AND sender_account = ?2";

/// Whether device `d`, its queue at `lvl`, takes one more message of `bytes` from
/// `sender_account` ([`delivery::admit`]); the sender's share is counted (with `share`, a
/// [`SHARE_SQL`] statement) only when the queue is long enough for it to matter.
fn admits(
    share: &mut rusqlite::CachedStatement<'_>,
    caps: &delivery::Caps,
    lvl: delivery::QueueLevel,
    d: DeviceId,
    sender_account: AccountId,
    bytes: u64,
) -> StorageResult<bool> {
    let held = if caps.needs_share(lvl, bytes) {
        let (n, b): (i64, i64) =
            share.query_row(params![d, sender_account], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Some(delivery::QueueLevel {
            len: n.max(0) as u64,
            bytes: b.max(0) as u64,
        })
    } else {
        None
    };
    Ok(delivery::admit(caps, lvl, held, bytes))
}

/// Queues `payload_id` for each device, assigning each its next sequence number. A device
/// whose queue is full, or holds the sender's full share, is skipped (unless exempt) and
/// listed in `skipped` ([`delivery::admit`] decides).
#[allow(clippy::too_many_arguments)]
fn fan_out(
    conn: &Connection,
    devices: &[DeviceId],
    channel: &ChannelId,
    payload_id: i64,
    template: &QueuedMessage,
    sender_account: AccountId,
    caps: &delivery::Caps,
    out: &mut Vec<Delivery>,
    skipped: &mut Vec<DeviceId>,
) -> StorageResult<()> {
    if devices.len() >= FAN_OUT_BATCH_MIN {
        let distinct: std::collections::HashSet<&DeviceId> = devices.iter().collect();
        if distinct.len() == devices.len() {
            return fan_out_batched(
                conn,
                devices,
                channel,
                payload_id,
                template,
                sender_account,
                caps,
                out,
                skipped,
            );
        }
    }
    let bytes = template.payload.len() as u64;
    // The caps are checked on counters (counting rows per insert would make a long queue
    // quadratic); the sender's share is counted on an index, and only when the device's
    // queue is long enough for it to matter.
    let mut level =
        conn.prepare_cached("SELECT queue_len, queue_bytes FROM devices WHERE id = ?1")?;
    let mut share = conn.prepare_cached(SHARE_SQL)?;
    let mut next = conn.prepare_cached(
        "UPDATE devices SET next_seq = next_seq + 1, queue_len = queue_len + 1, queue_bytes = queue_bytes + ?2
         WHERE id = ?1 RETURNING next_seq - 1",
    )?;
    let mut ins = conn.prepare_cached(
        "INSERT INTO queue(device_id, seq, channel_id, payload_id, sender_account, bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for &d in devices {
        if !caps.exempt {
            let (len, qbytes): (i64, i64) = level.query_row([d], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let lvl = delivery::QueueLevel {
                len: len.max(0) as u64,
                bytes: qbytes.max(0) as u64,
            };
            if !admits(&mut share, caps, lvl, d, sender_account, bytes)? {
                skipped.push(d);
                continue;
            }
        }
        let seq: i64 = next.query_row(params![d, bytes as i64], |r| r.get(0))?;
        ins.execute(params![
            d,
            seq,
            &channel[..],
            payload_id,
            sender_account,
            bytes as i64
        ])?;
        let mut m = template.clone();
        m.seq = seq as u64;
        out.push(Delivery {
            device_id: d,
            message: m,
        });
    }
    Ok(())
}

/// Recipients from which [`fan_out`] writes with three statements in all (levels, counters,
/// queue rows: each over a JSON array of device ids) instead of two or three per device.
const FAN_OUT_BATCH_MIN: usize = 3;

/// [`fan_out`] for many distinct devices (issue 14: a multi-row fan-out insert): the same
/// admission rules, counters and rows, in three statements whatever the group's size.
#[allow(clippy::too_many_arguments)]
fn fan_out_batched(
    conn: &Connection,
    devices: &[DeviceId],
    channel: &ChannelId,
    payload_id: i64,
    template: &QueuedMessage,
    sender_account: AccountId,
    caps: &delivery::Caps,
    out: &mut Vec<Delivery>,
    skipped: &mut Vec<DeviceId>,
) -> StorageResult<()> {
    let json =
        |v: &[DeviceId]| serde_json::to_string(v).map_err(|e| StorageError::Backend(e.to_string()));
    let bytes = template.payload.len() as u64;
    let admitted: Vec<DeviceId> = if caps.exempt {
        devices.to_vec()
    } else {
        let levels: HashMap<DeviceId, delivery::QueueLevel> = conn
            .prepare_cached(
                "SELECT id, queue_len, queue_bytes FROM devices WHERE id IN (SELECT value FROM json_each(?1))",
            )?
            .query_map([json(devices)?], |r| {
                Ok((
                    r.get::<_, DeviceId>(0)?,
                    delivery::QueueLevel {
                        len: r.get::<_, i64>(1)?.max(0) as u64,
                        bytes: r.get::<_, i64>(2)?.max(0) as u64,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut share = conn.prepare_cached(SHARE_SQL)?;
        let mut admitted = Vec::with_capacity(devices.len());
        for &d in devices {
            // A device gone since the plan was made has no row: nothing to deliver to.
            let Some(&lvl) = levels.get(&d) else {
                continue;
            };
            if admits(&mut share, caps, lvl, d, sender_account, bytes)? {
                admitted.push(d);
            } else {
                skipped.push(d);
            }
        }
        admitted
    };
    if admitted.is_empty() {
        return Ok(());
    }
    let seqs: HashMap<DeviceId, i64> = conn
        .prepare_cached(
            "UPDATE devices SET next_seq = next_seq + 1, queue_len = queue_len + 1, queue_bytes = queue_bytes + ?2
             WHERE id IN (SELECT value FROM json_each(?1)) RETURNING id, next_seq - 1",
        )?
        .query_map(params![json(&admitted)?, bytes as i64], |r| {
            Ok((r.get::<_, DeviceId>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let rows: Vec<(DeviceId, i64)> = admitted
        .iter()
        .filter_map(|d| seqs.get(d).map(|s| (*d, *s)))
        .collect();
    let pairs = serde_json::to_string(&rows).map_err(|e| StorageError::Backend(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO queue(device_id, seq, channel_id, payload_id, sender_account, bytes)
         SELECT value ->> 0, value ->> 1, ?2, ?3, ?4, ?5 FROM json_each(?1)",
    )?
    .execute(params![
        pairs,
        &channel[..],
        payload_id,
        sender_account,
        bytes as i64
    ])?;
    for (d, seq) in rows {
        let mut m = template.clone();
        m.seq = seq as u64;
        out.push(Delivery {
            device_id: d,
            message: m,
        });
    }
    Ok(())
}

/// Adds a device to an account (see [`Storage::add_device`]).
fn add_device_tx(
    c: &Connection,
    account: AccountId,
    dk: &Key32,
    max: usize,
    now: u64,
) -> StorageResult<DeviceId> {
    let dk = *dk;
    let existing: Option<(DeviceId, AccountId)> = c
        .prepare_cached("SELECT id, account_id FROM devices WHERE device_key = ?1")?
        .query_row([&dk[..]], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match existing {
        Some((id, owner)) if owner == account => return Ok(id),
        Some(_) => {
            return Err(StorageError::Conflict(
                "device key belongs to another account".into(),
            ))
        }
        None => {}
    }
    if key_taken(c, &dk, Some(account))? {
        return Err(StorageError::Conflict(
            "device key belongs to another account".into(),
        ));
    }
    let n: i64 = c.query_row(
        "SELECT count(*) FROM devices WHERE account_id = ?1",
        [account],
        |r| r.get(0),
    )?;
    if n as usize >= max {
        return Err(StorageError::Limit(format!(
            "an account has at most {max} devices"
        )));
    }
    let id = next_id(c, "devices")?;
    c.prepare_cached(
        "INSERT INTO devices(id, account_id, device_key, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, account, &dk[..], now as i64])?;
    Ok(id)
}

/// Stores a session (see [`Storage::create_session`]); returns the evicted token hashes.
fn create_session_tx(
    c: &Connection,
    th: &Key32,
    device: DeviceId,
    expires_at: u64,
    max_per_device: usize,
) -> StorageResult<Vec<Key32>> {
    c.prepare_cached(
        "INSERT INTO sessions(token_hash, device_id, expires_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![&th[..], device, expires_at as i64])?;
    let evicted = c
        .prepare_cached(
            "DELETE FROM sessions WHERE device_id = ?1 AND token_hash NOT IN (
                    SELECT token_hash FROM sessions WHERE device_id = ?1
                    ORDER BY token_hash = ?3 DESC, expires_at DESC LIMIT ?2)
                 RETURNING token_hash",
        )?
        .query_map(
            params![device, max_per_device.max(1) as i64, &th[..]],
            |r| key32(r.get(0)?),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(evicted)
}

/// A page of a device queue (see [`Storage::fetch`]).
fn fetch_rows(
    c: &Connection,
    device: DeviceId,
    after_seq: u64,
    limit: usize,
    max_bytes: usize,
    channel: Option<ChannelId>,
) -> StorageResult<(Vec<QueuedMessage>, bool)> {
    let mut st = c.prepare_cached(
        "SELECT q.seq, q.channel_id, p.sender_device, p.message_id, p.data, p.created_ms, p.kind
             FROM queue q JOIN payloads p ON p.id = q.payload_id
             WHERE q.device_id = ?1 AND q.seq > ?2 AND (?3 IS NULL OR q.channel_id = ?3)
             ORDER BY q.seq LIMIT ?4",
    )?;
    let ch = channel.map(|c| c.to_vec());
    // One row more than asked: it tells whether more are queued.
    let rows = st.query_map(
        params![device, after_seq as i64, ch, limit as i64 + 1],
        |r| {
            Ok(QueuedMessage {
                seq: r.get::<_, i64>(0)? as u64,
                channel_id: id16(r.get(1)?)?,
                sender_device: key32(r.get(2)?)?,
                message_id: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                payload: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                server_time_ms: r.get::<_, i64>(5)? as u64,
                kind: r.get(6)?,
            })
        },
    )?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for m in rows {
        let m = m?;
        bytes += m.payload.len() + FETCH_OVERHEAD;
        if out.len() == limit || (bytes > max_bytes && !out.is_empty()) {
            return Ok((out, true));
        }
        out.push(m);
    }
    Ok((out, false))
}

/// A live session by token hash (see [`Storage::session`]).
fn session_row(c: &Connection, token_hash: &Key32, now: u64) -> StorageResult<Option<Session>> {
    Ok(c.prepare_cached(
            "SELECT d.account_id, d.id, d.device_key, a.identity_key, s.expires_at
             FROM sessions s JOIN devices d ON d.id = s.device_id JOIN accounts a ON a.id = d.account_id
             WHERE s.token_hash = ?1 AND s.expires_at > ?2",
        )?
        .query_row(params![&token_hash[..], now as i64], |r| {
            Ok(Session {
                account_id: r.get(0)?,
                device_id: r.get(1)?,
                device_key: key32(r.get(2)?)?,
                identity_key: key32(r.get(3)?)?,
                expires_at: r.get::<_, i64>(4)? as u64,
            })
        })
        .optional()?)
}

/// An account by username.
fn account_by_username_row(c: &Connection, username: &str) -> StorageResult<Option<Account>> {
    Ok(c.prepare_cached(
        "SELECT id, username, identity_key, opaque_record FROM accounts WHERE username = ?1",
    )?
    .query_row([username], account_row)
    .optional()?)
}

/// Whether an Enqueue is a plain application message: no commit, no membership change, no
/// Welcome, no GroupInfo. Such an Enqueue changes no channel row, membership or device.
fn plain_message(op: &EnqueueOp) -> bool {
    op.commit_epoch.is_none()
        && op.add_members.is_empty()
        && op.remove_members.is_empty()
        && op.promote_members.is_empty()
        && op.welcome.is_empty()
        && op.welcome_devices.is_empty()
        && op.group_info.is_none()
        && !op.external
}

/// Reads a channel's row, members and member devices.
fn channel_facts(conn: &Connection, id: &ChannelId) -> StorageResult<ChannelFacts> {
    let channel = channel_row(conn, id)?.ok_or(StorageError::NotFound("channel"))?;
    let ch = &id[..];
    let members = conn
        .prepare_cached(
            "SELECT account_id, leaving, admin FROM channel_members WHERE channel_id = ?1",
        )?
        .query_map([ch], |r| {
            Ok((
                r.get::<_, AccountId>(0)?,
                delivery::Membership {
                    leaving: r.get::<_, i64>(1)? != 0,
                    admin: r.get::<_, i64>(2)? != 0,
                },
            ))
        })?
        .collect::<rusqlite::Result<HashMap<_, _>>>()?;
    let member_devices = conn
        .prepare_cached(
            "SELECT d.id, d.device_key, d.account_id FROM channel_members m JOIN devices d ON d.account_id = m.account_id
             WHERE m.channel_id = ?1 ORDER BY d.id",
        )?
        .query_map([ch], |r| {
            Ok(delivery::MemberDevice {
                device: r.get(0)?,
                key: key32(r.get(1)?)?,
                account: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ChannelFacts {
        channel,
        members,
        member_devices,
    })
}

/// Reads what [`delivery::plan`] decides an Enqueue on (under the single writer).
fn enqueue_facts(conn: &Connection, op: &EnqueueOp) -> StorageResult<delivery::EnqueueFacts> {
    let plain = plain_message(op);
    let cached = if plain {
        MEMBERSHIP.with(|m| m.borrow().get(&op.channel_id).cloned())
    } else {
        None
    };
    let facts = match cached {
        Some(f) => f,
        None => {
            let f = channel_facts(conn, &op.channel_id)?;
            if plain {
                MEMBERSHIP.with(|m| {
                    let mut m = m.borrow_mut();
                    if m.len() >= MEMBERSHIP_CACHE_MAX {
                        m.clear();
                    }
                    m.insert(op.channel_id, f.clone());
                });
            }
            f
        }
    };
    let ChannelFacts {
        channel,
        members,
        member_devices,
    } = facts;
    let ch = &op.channel_id[..];
    let duplicate = conn
        .prepare_cached("SELECT payload_id, epoch FROM enqueue_ids WHERE sender_device = ?1 AND message_id = ?2")?
        .query_row(params![op.sender_device, &op.message_id[..]], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .optional()?;
    let group_info_epoch = if op.external {
        group_info_row(conn, &op.channel_id)?.map(|(e, _)| e)
    } else {
        None
    };
    let mut named = HashMap::new();
    let mut devs = conn.prepare_cached(
        "SELECT id, device_key, account_id FROM devices WHERE account_id = ?1 ORDER BY id",
    )?;
    for key in op
        .add_members
        .iter()
        .chain(&op.remove_members)
        .chain(&op.promote_members)
    {
        if named.contains_key(key) {
            continue;
        }
        let Some(id) = conn
            .prepare_cached("SELECT id FROM accounts WHERE identity_key = ?1")?
            .query_row([&key[..]], |r| r.get::<_, AccountId>(0))
            .optional()?
        else {
            continue;
        };
        let devices = devs
            .query_map([id], |r| {
                Ok(delivery::MemberDevice {
                    device: r.get(0)?,
                    key: key32(r.get(1)?)?,
                    account: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        named.insert(
            *key,
            delivery::NamedAccount {
                id,
                blocks_sender: blocks(conn, id, op.sender_account)?,
                devices,
            },
        );
    }
    let blockers_of_sender = if op.commit_epoch.is_none() {
        blockers_of(conn, op.sender_account)?
    } else {
        Vec::new()
    };
    let in_group = if op.welcome.is_empty() {
        Vec::new()
    } else {
        conn.prepare_cached("SELECT device_id FROM channel_devices WHERE channel_id = ?1")?
            .query_map([ch], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    Ok(delivery::EnqueueFacts {
        channel,
        duplicate,
        group_info_epoch,
        members,
        member_devices,
        named,
        blockers_of_sender,
        in_group,
    })
}

/// Executes an Enqueue: reads its facts, lets [`delivery::plan`] decide, persists the plan.
fn enqueue_tx(conn: &Connection, op: &EnqueueOp) -> StorageResult<EnqueueOutcome> {
    let facts = enqueue_facts(conn, op)?;
    let plan = match delivery::plan(op, &facts)? {
        delivery::Decision::Duplicate { server_id, epoch } => {
            return Ok(EnqueueOutcome::duplicate(server_id, epoch))
        }
        delivery::Decision::Deliver(p) => p,
    };
    let ch = &op.channel_id[..];
    if let Some(e) = plan.new_epoch {
        let n = conn
            .prepare_cached("UPDATE channels SET epoch = ?2 WHERE id = ?1 AND epoch = ?3")?
            .execute(params![ch, e as i64, plan.epoch_from as i64])?;
        if n != 1 {
            return Err(StorageError::Conflict("the channel's epoch moved".into()));
        }
        if let (true, Some(gi)) = (plan.store_group_info, &op.group_info) {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO channel_group_info(channel_id, epoch, data) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![ch, e as i64, &gi[..]])?;
        }
    }
    for id in &plan.remove_accounts {
        conn.prepare_cached(
            "DELETE FROM channel_members WHERE channel_id = ?1 AND account_id = ?2",
        )?
        .execute(params![ch, id])?;
        conn.prepare_cached(
            "DELETE FROM channel_devices WHERE channel_id = ?1
             AND device_id IN (SELECT id FROM devices WHERE account_id = ?2)",
        )?
        .execute(params![ch, id])?;
    }
    for id in &plan.add_accounts {
        conn.prepare_cached(
            "INSERT INTO channel_members(channel_id, account_id) VALUES (?1, ?2)
             ON CONFLICT(channel_id, account_id) DO UPDATE SET leaving = 0",
        )?
        .execute(params![ch, id])?;
    }
    for id in &plan.promote_accounts {
        conn.prepare_cached(
            "UPDATE channel_members SET admin = 1 WHERE channel_id = ?1 AND account_id = ?2",
        )?
        .execute(params![ch, id])?;
    }
    {
        let mut joined = conn.prepare_cached(
            "INSERT OR IGNORE INTO channel_devices(channel_id, device_id) VALUES (?1, ?2)",
        )?;
        for d in &plan.join_devices {
            joined.execute(params![ch, d])?;
        }
    }

    let mut insert = conn.prepare_cached(
        "INSERT INTO payloads(channel_id, sender_device, message_id, kind, data, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    insert.execute(params![
        ch,
        &op.sender_device_key[..],
        &op.message_id[..],
        op.kind,
        &op.payload[..],
        op.now_ms as i64
    ])?;
    let payload_id = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO enqueue_ids(sender_device, message_id, payload_id, epoch, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![op.sender_device, &op.message_id[..], payload_id, plan.epoch as i64, op.now_ms as i64])?;

    let template = QueuedMessage {
        seq: 0,
        channel_id: op.channel_id,
        sender_device: op.sender_device_key,
        message_id: Bytes::copy_from_slice(&op.message_id),
        payload: op.payload.clone(),
        server_time_ms: op.now_ms,
        kind: op.kind,
    };
    let caps = delivery::Caps::of(op, plan.exempt);
    let mut deliveries = Vec::with_capacity(plan.recipients.len() + plan.welcome_to.len());
    let mut skipped = Vec::new();
    fan_out(
        conn,
        &plan.recipients,
        &op.channel_id,
        payload_id,
        &template,
        op.sender_account,
        &caps,
        &mut deliveries,
        &mut skipped,
    )?;
    if deliveries.is_empty() && !skipped.is_empty() {
        // Nobody could take it: refuse the whole message (rolled back), so a retry later
        // is not a duplicate.
        return Err(delivery::queue_full(op, skipped[0]));
    }
    if !plan.welcome_to.is_empty() {
        // The Welcome is stored once too; its id is derived from the commit's id.
        let wid = delivery::welcome_id(&op.message_id);
        insert.execute(params![
            ch,
            &op.sender_device_key[..],
            &wid[..],
            delivery::WELCOME_KIND,
            &op.welcome[..],
            op.now_ms as i64
        ])?;
        let welcome_id = conn.last_insert_rowid();
        let wt = QueuedMessage {
            message_id: Bytes::copy_from_slice(&wid),
            payload: op.welcome.clone(),
            kind: delivery::WELCOME_KIND,
            ..template
        };
        fan_out(
            conn,
            &plan.welcome_to,
            &op.channel_id,
            welcome_id,
            &wt,
            op.sender_account,
            &delivery::Caps::of(op, true),
            &mut deliveries,
            &mut skipped,
        )?;
    }
    if plan.recipients.is_empty() && plan.welcome_to.is_empty() {
        // Nobody to deliver to: keep only the idempotency record.
        conn.prepare_cached("DELETE FROM payloads WHERE id = ?1")?
            .execute([payload_id])?;
    }
    let undelivered = skipped
        .iter()
        .chain(&plan.blocked)
        .filter_map(|d| plan.device_keys.iter().find(|b| b.0 == *d).map(|b| b.1))
        .collect();
    Ok(EnqueueOutcome {
        server_id: payload_id as u64,
        duplicate: false,
        epoch: plan.epoch,
        deliveries,
        undelivered,
    })
}

fn gc_payloads(conn: &Connection, ids: &[i64]) -> StorageResult<()> {
    let mut del = conn.prepare_cached(
        "DELETE FROM payloads WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM queue WHERE payload_id = ?1)",
    )?;
    for id in ids {
        del.execute([id])?;
    }
    Ok(())
}

fn purge_device(conn: &Connection, device: DeviceId) -> StorageResult<()> {
    let ids: Vec<i64> = conn
        .prepare_cached("DELETE FROM queue WHERE device_id = ?1 RETURNING payload_id")?
        .query_map([device], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    gc_payloads(conn, &ids)?;
    // Payloads this device sent that still wait in other queues.
    let key: Vec<u8> = conn.query_row(
        "SELECT device_key FROM devices WHERE id = ?1",
        [device],
        |r| r.get(0),
    )?;
    let holders: Vec<(DeviceId, i64)> = conn
        .prepare_cached(
            "DELETE FROM queue WHERE payload_id IN (SELECT id FROM payloads WHERE sender_device = ?1)
             RETURNING device_id, bytes",
        )?
        .query_map([&key], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut dec = conn.prepare_cached(
        "UPDATE devices SET queue_len = max(queue_len - 1, 0), queue_bytes = max(queue_bytes - ?2, 0) WHERE id = ?1",
    )?;
    for (d, b) in holders {
        dec.execute(params![d, b])?;
    }
    conn.execute("DELETE FROM payloads WHERE sender_device = ?1", [&key])?;
    conn.execute("DELETE FROM devices WHERE id = ?1", [device])?;
    Ok(())
}

impl Storage for SqliteStorage {
    fn enqueue_async(self: Arc<Self>, op: EnqueueOp) -> StorageFuture<EnqueueOutcome> {
        let keeps = plain_message(&op);
        self.write_async_keeping(move |c| enqueue_tx(c, &op), keeps)
    }

    fn fetch_async(
        self: Arc<Self>,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
        channel: Option<ChannelId>,
    ) -> StorageFuture<(Vec<QueuedMessage>, bool)> {
        self.read_async(move |c| fetch_rows(c, device, after_seq, limit, max_bytes, channel))
    }

    fn session_async(
        self: Arc<Self>,
        token_hash: Key32,
        now: u64,
    ) -> StorageFuture<Option<Session>> {
        self.read_async(move |c| session_row(c, &token_hash, now))
    }

    fn account_by_username_async(
        self: Arc<Self>,
        username: String,
    ) -> StorageFuture<Option<Account>> {
        self.read_async(move |c| account_by_username_row(c, &username))
    }

    fn login_session_async(
        self: Arc<Self>,
        account: AccountId,
        device_key: Key32,
        max_devices: usize,
        now: u64,
        token_hash: Key32,
        expires_at: u64,
        max_per_device: usize,
    ) -> StorageFuture<(DeviceId, Vec<Key32>)> {
        self.write_async(move |c| {
            let device = add_device_tx(c, account, &device_key, max_devices, now)?;
            let evicted = create_session_tx(c, &token_hash, device, expires_at, max_per_device)?;
            Ok((device, evicted))
        })
    }

    fn server_secret(&self, name: &str, init: Vec<u8>) -> StorageResult<Vec<u8>> {
        let name = name.to_owned();
        self.write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO server_state(name, value) VALUES (?1, ?2)",
                params![name, init],
            )?;
            Ok(c.query_row(
                "SELECT value FROM server_state WHERE name = ?1",
                [&name],
                |r| r.get(0),
            )?)
        })
    }

    fn server_secret_peek(&self, name: &str) -> StorageResult<Option<Vec<u8>>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT value FROM server_state WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn delete_server_secret(&self, name: &str) -> StorageResult<()> {
        let name = name.to_owned();
        self.write(move |c| {
            c.execute("DELETE FROM server_state WHERE name = ?1", [&name])?;
            Ok(())
        })
    }

    fn username_taken(&self, username: &str) -> StorageResult<bool> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")?
                    .exists([username])?,
            )
        })
    }

    fn create_account(
        &self,
        username: &str,
        identity_key: &Key32,
        device_key: &Key32,
        opaque_record: &[u8],
        now: u64,
    ) -> StorageResult<AccountId> {
        let (username, ik, dk, rec) = (
            username.to_owned(),
            *identity_key,
            *device_key,
            opaque_record.to_vec(),
        );
        self.write(move |c| {
            let taken = c
                .prepare_cached(
                    "SELECT 1 FROM accounts WHERE username = ?1
                     UNION ALL SELECT 1 FROM username_tombstones WHERE username = ?1 AND until > ?2",
                )?
                .exists(params![username, now as i64])?;
            if taken {
                return Err(StorageError::Conflict("username is taken".into()));
            }
            if key_taken(c, &ik, None)? || key_taken(c, &dk, None)? {
                return Err(StorageError::Conflict("identity or device key already registered".into()));
            }
            let id = next_id(c, "accounts")?;
            c.prepare_cached(
                "INSERT INTO accounts(id, username, identity_key, opaque_record, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, username, &ik[..], rec, now as i64])?;
            let device = next_id(c, "devices")?;
            c.prepare_cached("INSERT INTO devices(id, account_id, device_key, created_at) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![device, id, &dk[..], now as i64])?;
            Ok(id)
        })
    }

    fn account_by_username(&self, username: &str) -> StorageResult<Option<Account>> {
        self.read(|c| account_by_username_row(c, username))
    }

    fn account_by_identity(&self, identity_key: &Key32) -> StorageResult<Option<Account>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT id, username, identity_key, opaque_record FROM accounts WHERE identity_key = ?1",
            )?
            .query_row([&identity_key[..]], account_row)
            .optional()?)
        })
    }

    fn delete_account(
        &self,
        account: AccountId,
        username_reserved_until: u64,
    ) -> StorageResult<()> {
        self.write(move |c| {
            if username_reserved_until > 0 {
                c.execute(
                    "INSERT OR REPLACE INTO username_tombstones(username, until)
                     SELECT username, ?2 FROM accounts WHERE id = ?1",
                    params![account, username_reserved_until as i64],
                )?;
            }
            let devices: Vec<DeviceId> = c
                .prepare("SELECT id FROM devices WHERE account_id = ?1")?
                .query_map([account], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for d in devices {
                purge_device(c, d)?;
            }
            c.execute("DELETE FROM accounts WHERE id = ?1", [account])?;
            // Channels nobody belongs to any more go too (with their blobs).
            c.execute(
                "DELETE FROM channels WHERE NOT EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = channels.id)",
                [],
            )?;
            Ok(())
        })
    }

    fn devices(&self, account: AccountId) -> StorageResult<Vec<Device>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, account_id, device_key, created_at FROM devices WHERE account_id = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([account], |r| {
                Ok(Device {
                    id: r.get(0)?,
                    account_id: r.get(1)?,
                    device_key: key32(r.get(2)?)?,
                    created_at: r.get::<_, i64>(3)? as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn add_device(
        &self,
        account: AccountId,
        device_key: &Key32,
        max: usize,
        now: u64,
    ) -> StorageResult<DeviceId> {
        let dk = *device_key;
        self.write(move |c| add_device_tx(c, account, &dk, max, now))
    }

    fn revoke_device(&self, account: AccountId, device_key: &Key32) -> StorageResult<()> {
        let dk = *device_key;
        self.write(move |c| {
            let id: DeviceId = c
                .prepare_cached("SELECT id FROM devices WHERE device_key = ?1 AND account_id = ?2")?
                .query_row(params![&dk[..], account], |r| r.get(0))
                .optional()?
                .ok_or(StorageError::NotFound("device"))?;
            purge_device(c, id)
        })
    }

    fn create_session(
        &self,
        token_hash: &Key32,
        device: DeviceId,
        expires_at: u64,
        max_per_device: usize,
    ) -> StorageResult<Vec<Key32>> {
        let th = *token_hash;
        self.write(move |c| create_session_tx(c, &th, device, expires_at, max_per_device))
    }

    fn purge_expired_sessions(&self, now: u64) -> StorageResult<u64> {
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
                .execute([now as i64])?;
            c.prepare_cached("DELETE FROM username_tombstones WHERE until <= ?1")?
                .execute([now as i64])?;
            Ok(n as u64)
        })
    }

    fn session(&self, token_hash: &Key32, now: u64) -> StorageResult<Option<Session>> {
        self.read(|c| session_row(c, token_hash, now))
    }

    fn delete_session(&self, token_hash: &Key32) -> StorageResult<()> {
        let th = *token_hash;
        self.write(move |c| {
            c.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                .execute([&th[..]])?;
            Ok(())
        })
    }

    fn add_key_packages(
        &self,
        device: DeviceId,
        suite: u32,
        packages: Vec<NewKeyPackage>,
        cap: u64,
    ) -> StorageResult<u64> {
        self.write(move |c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM key_packages WHERE device_id = ?1 AND suite = ?2",
                )?
                .query_row(params![device, suite], |r| r.get(0))?;
            if n as u64 + packages.len() as u64 > cap {
                return Err(StorageError::Limit(format!(
                    "at most {cap} KeyPackages are stored per device"
                )));
            }
            let mut seen = c.prepare_cached(
                "SELECT 1 FROM key_packages WHERE device_id = ?1 AND init_key_hash = ?2",
            )?;
            let mut ins = c.prepare_cached(
                "INSERT INTO key_packages(device_id, suite, data, init_key_hash) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (i, p) in packages.iter().enumerate() {
                if seen.exists(params![device, &p.init_key_hash[..]])? {
                    // The job's savepoint rolls back the ones inserted before it.
                    return Err(StorageError::Invalid(format!(
                        "KeyPackage {i} refused: its init_key is already stored for this device; nothing of the upload was stored"
                    )));
                }
                ins.execute(params![device, suite, &p.data[..], &p.init_key_hash[..]])?;
            }
            Ok(n as u64 + packages.len() as u64)
        })
    }

    fn pop_key_package(&self, device_key: &Key32, suite: u32) -> StorageResult<Option<Vec<u8>>> {
        let dk = *device_key;
        self.write(move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM key_packages WHERE id = (
                    SELECT k.id FROM key_packages k JOIN devices d ON d.id = k.device_id
                    WHERE d.device_key = ?1 AND k.suite = ?2 ORDER BY k.id LIMIT 1)
                 RETURNING data",
            )?
            .query_row(params![&dk[..], suite], |r| r.get(0))
            .optional()?)
        })
    }

    fn take_key_packages(
        &self,
        targets: &[(Key32, bool)],
        suite: u32,
    ) -> StorageResult<Vec<Option<TakenKeyPackage>>> {
        let targets = targets.to_vec();
        // One write transaction (one commit) for every pop of the request.
        self.write(move |c| {
            let mut pop = c.prepare_cached(
                "DELETE FROM key_packages WHERE id = (
                    SELECT k.id FROM key_packages k JOIN devices d ON d.id = k.device_id
                    WHERE d.device_key = ?1 AND k.suite = ?2 ORDER BY k.id LIMIT 1)
                 RETURNING data",
            )?;
            let mut last = c.prepare_cached(
                "SELECT k.data FROM last_resort_key_packages k JOIN devices d ON d.id = k.device_id
                 WHERE d.device_key = ?1 AND k.suite = ?2",
            )?;
            let mut out = Vec::with_capacity(targets.len());
            for (dk, stock_open) in &targets {
                let popped: Option<Vec<u8>> = if *stock_open {
                    pop.query_row(params![&dk[..], suite], |r| r.get(0))
                        .optional()?
                } else {
                    None
                };
                out.push(match popped {
                    Some(data) => Some(TakenKeyPackage {
                        data,
                        last_resort: false,
                    }),
                    None => last
                        .query_row(params![&dk[..], suite], |r| r.get::<_, Vec<u8>>(0))
                        .optional()?
                        .map(|data| TakenKeyPackage {
                            data,
                            last_resort: true,
                        }),
                });
            }
            Ok(out)
        })
    }

    fn set_hybrid_key(&self, device: DeviceId, key: &[u8]) -> StorageResult<()> {
        let key = key.to_vec();
        self.write(move |c| {
            c.prepare_cached("UPDATE devices SET hybrid_key = ?2 WHERE id = ?1")?
                .execute(params![device, key])?;
            Ok(())
        })
    }

    fn hybrid_keys(&self, device_keys: &[Key32]) -> StorageResult<Vec<(Key32, Vec<u8>)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT hybrid_key FROM devices WHERE device_key = ?1 AND hybrid_key IS NOT NULL",
            )?;
            let mut out = Vec::new();
            for k in device_keys {
                if let Some(h) = st
                    .query_row([&k[..]], |r| r.get::<_, Vec<u8>>(0))
                    .optional()?
                {
                    out.push((*k, h));
                }
            }
            Ok(out)
        })
    }

    fn create_channel(
        &self,
        kind: ChannelKind,
        creator: AccountId,
        members: &[Key32],
        metadata: &[u8],
        now: u64,
    ) -> StorageResult<(Channel, bool)> {
        let (members, metadata) = (members.to_vec(), metadata.to_vec());
        let id: ChannelId = rand::random();
        self.write(move |c| {
            let mut ids = vec![creator];
            for m in &members {
                let a = account_id_by_identity(c, m)?;
                // Item 18 (ADR 0060): nobody makes an account that blocks them a member.
                if blocks(c, a, creator)? {
                    return Err(StorageError::Forbidden(
                        "this user does not accept invitations from you".into(),
                    ));
                }
                if !ids.contains(&a) {
                    ids.push(a);
                }
            }
            let dm_key = match kind {
                ChannelKind::Dm => {
                    if ids.len() != 2 {
                        return Err(StorageError::Invalid("a DM needs exactly one other member".into()));
                    }
                    let (lo, hi) = (ids[0].min(ids[1]), ids[0].max(ids[1]));
                    let key = format!("{lo}:{hi}").into_bytes();
                    let existing: Option<Vec<u8>> = c
                        .prepare_cached("SELECT id FROM channels WHERE dm_key = ?1")?
                        .query_row([&key], |r| r.get(0))
                        .optional()?;
                    if let Some(eid) = existing {
                        let eid = id16(eid)?;
                        let ch = channel_row(c, &eid)?.ok_or(StorageError::NotFound("channel"))?;
                        let mut both = true;
                        for a in &ids {
                            both &= member_check(c, &eid, *a)?;
                        }
                        if both {
                            return Ok((ch, false));
                        }
                        // One side left: its MLS group is gone, and the other side's group
                        // moved on without it. The pair gets a new DM channel (and a new
                        // group); the old one keeps its history and stops being the pair's.
                        c.prepare_cached("UPDATE channels SET dm_key = NULL WHERE id = ?1")?
                            .execute([&eid[..]])?;
                    }
                    Some(key)
                }
                ChannelKind::Group => None,
            };
            c.prepare_cached("INSERT INTO channels(id, kind, dm_key, metadata, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![&id[..], kind as i64, dm_key, &metadata, now as i64])?;
            for a in &ids {
                c.prepare_cached("INSERT INTO channel_members(channel_id, account_id, admin) VALUES (?1, ?2, ?3)")?
                    .execute(params![&id[..], a, i64::from(*a == creator)])?;
            }
            Ok((
                Channel {
                    id,
                    kind,
                    epoch: 0,
                    metadata: metadata.clone(),
                },
                true,
            ))
        })
    }

    fn channel(&self, id: &ChannelId) -> StorageResult<Option<Channel>> {
        self.read(|c| channel_row(c, id))
    }

    fn is_member(&self, channel: &ChannelId, account: AccountId) -> StorageResult<bool> {
        self.read(|c| member_check(c, channel, account))
    }

    fn group_info(&self, channel: &ChannelId) -> StorageResult<Option<(u64, Bytes)>> {
        self.read(|c| group_info_row(c, channel))
    }

    fn set_block(
        &self,
        blocker: AccountId,
        blocked: &Key32,
        on: bool,
        now_ms: u64,
    ) -> StorageResult<()> {
        let blocked = *blocked;
        self.write(move |c| {
            let id = account_id_by_identity(c, &blocked)?;
            if id == blocker {
                return Err(StorageError::Invalid("an account cannot block itself".into()));
            }
            if on {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO blocks(blocker, blocked, created_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![blocker, id, now_ms as i64])?;
            } else {
                c.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
                    .execute(params![blocker, id])?;
            }
            Ok(())
        })
    }

    fn blocked(&self, blocker: AccountId) -> StorageResult<Vec<(Key32, String)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT a.identity_key, a.username FROM blocks b JOIN accounts a ON a.id = b.blocked
                 WHERE b.blocker = ?1 ORDER BY a.username",
            )?;
            let rows = st.query_map([blocker], |r| Ok((key32(r.get(0)?)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn members(&self, channel: &ChannelId) -> StorageResult<Vec<Member>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT a.id, a.identity_key, a.username FROM channel_members m JOIN accounts a ON a.id = m.account_id
                 WHERE m.channel_id = ?1 AND m.leaving = 0 ORDER BY a.username",
            )?;
            let rows: Vec<(AccountId, Key32, String)> = st
                .query_map([&channel[..]], |r| Ok((r.get(0)?, key32(r.get(1)?)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut dev = c.prepare_cached("SELECT device_key FROM devices WHERE account_id = ?1 ORDER BY id")?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, identity_key, username) in rows {
                let device_keys = dev
                    .query_map([id], |r| key32(r.get(0)?))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                out.push(Member {
                    identity_key,
                    username,
                    device_keys,
                });
            }
            Ok(out)
        })
    }

    fn remove_member(
        &self,
        channel: &ChannelId,
        by: AccountId,
        member: &Key32,
    ) -> StorageResult<()> {
        let (ch, m) = (*channel, *member);
        self.write(move |c| {
            channel_row(c, &ch)?.ok_or(StorageError::NotFound("channel"))?;
            if !member_check(c, &ch, by)? {
                return Err(StorageError::Forbidden(
                    "not a member of the channel".into(),
                ));
            }
            let id = account_id_by_identity(c, &m)?;
            if id != by {
                return Err(StorageError::Forbidden(
                    "RemoveMember removes only the caller; others leave a group through a commit".into(),
                ));
            }
            let n = c
                .prepare_cached(
                    "UPDATE channel_members SET leaving = 1 WHERE channel_id = ?1 AND account_id = ?2 AND leaving = 0",
                )?
                .execute(params![&ch[..], id])?;
            if n == 0 {
                return Err(StorageError::NotFound("member"));
            }
            // Application messages already queued for the leaver in this channel stay (it
            // may still read them); nothing new but commits reaches it.
            Ok(())
        })
    }

    fn set_metadata(
        &self,
        channel: &ChannelId,
        by: AccountId,
        metadata: &[u8],
    ) -> StorageResult<()> {
        let (ch, md) = (*channel, metadata.to_vec());
        self.write(move |c| {
            channel_row(c, &ch)?.ok_or(StorageError::NotFound("channel"))?;
            if !member_check(c, &ch, by)? {
                return Err(StorageError::Forbidden(
                    "not a member of the channel".into(),
                ));
            }
            c.prepare_cached("UPDATE channels SET metadata = ?2 WHERE id = ?1")?
                .execute(params![&ch[..], md])?;
            Ok(())
        })
    }

    fn enqueue(&self, op: EnqueueOp) -> StorageResult<EnqueueOutcome> {
        let keeps = plain_message(&op);
        self.write_keeping(move |c| enqueue_tx(c, &op), keeps)
    }

    fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
        channel: Option<ChannelId>,
    ) -> StorageResult<(Vec<QueuedMessage>, bool)> {
        self.read(|c| fetch_rows(c, device, after_seq, limit, max_bytes, channel))
    }

    fn peek(&self, device: DeviceId, channel: Option<ChannelId>) -> StorageResult<(u64, u64)> {
        self.read(|c| {
            let ch = channel.map(|c| c.to_vec());
            Ok(c.prepare_cached(
                "SELECT count(*), coalesce(max(seq), 0) FROM queue WHERE device_id = ?1 AND (?2 IS NULL OR channel_id = ?2)",
            )?
            .query_row(params![device, ch], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))?)
        })
    }

    fn ack(&self, device: DeviceId, up_to_seq: u64, seqs: &[u64]) -> StorageResult<u64> {
        let seqs = seqs.to_vec();
        self.write(move |c| {
            let mut payloads: Vec<i64> = Vec::new();
            let mut bytes = 0i64;
            if up_to_seq > 0 {
                let mut st = c.prepare_cached(
                    "DELETE FROM queue WHERE device_id = ?1 AND seq <= ?2 RETURNING payload_id, bytes",
                )?;
                let ids = st.query_map(params![device, up_to_seq as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })?;
                for row in ids {
                    let (id, b) = row?;
                    payloads.push(id);
                    bytes += b;
                }
            }
            let mut one = c.prepare_cached(
                "DELETE FROM queue WHERE device_id = ?1 AND seq = ?2 RETURNING payload_id, bytes",
            )?;
            for s in &seqs {
                if let Some((id, b)) = one
                    .query_row(params![device, *s as i64], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()?
                {
                    payloads.push(id);
                    bytes += b;
                }
            }
            payloads.sort_unstable();
            payloads.dedup();
            // A device's queue holds a payload at most once, so payloads removed = rows removed.
            let removed = payloads.len() as u64;
            c.prepare_cached(
                "UPDATE devices SET queue_len = max(queue_len - ?2, 0), queue_bytes = max(queue_bytes - ?3, 0) WHERE id = ?1",
            )?
            .execute(params![device, removed as i64, bytes])?;
            gc_payloads(c, &payloads)?;
            Ok(removed)
        })
    }

    fn queue_depth(&self) -> StorageResult<u64> {
        self.read(|c| {
            Ok(c.query_row("SELECT count(*) FROM queue", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    fn put_blob_chunk(&self, chunk: BlobChunk, max_size: u64) -> StorageResult<u64> {
        self.write(move |c| {
            let ch = &chunk.channel_id[..];
            let sha = &chunk.sha256[..];
            channel_row(c, &chunk.channel_id)?.ok_or(StorageError::NotFound("channel"))?;
            if !member_check(c, &chunk.channel_id, chunk.account_id)? {
                return Err(StorageError::Forbidden("not a member of the channel".into()));
            }
            if chunk.total_size > max_size {
                return Err(StorageError::Limit(format!("blobs are limited to {max_size} bytes")));
            }
            let existing: Option<(i64, i64, i64)> = c
                .prepare_cached("SELECT total_size, received, complete FROM blobs WHERE channel_id = ?1 AND sha256 = ?2")?
                .query_row(params![ch, sha], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let received = match existing {
                Some((_, received, 1)) => return Ok(received as u64),
                Some((total, received, _)) => {
                    if total as u64 != chunk.total_size {
                        return Err(StorageError::Invalid("total_size differs from the first chunk".into()));
                    }
                    received as u64
                }
                None => {
                    let used: i64 = c
                        .prepare_cached("SELECT coalesce(sum(total_size), 0) FROM blobs WHERE uploader = ?1")?
                        .query_row([chunk.account_id], |r| r.get(0))?;
                    if (used.max(0) as u64).saturating_add(chunk.total_size) > chunk.quota {
                        return Err(StorageError::Limit(format!(
                            "blob quota reached: {used} of {} bytes in use (incomplete uploads count; they expire)",
                            chunk.quota
                        )));
                    }
                    c.prepare_cached(
                        "INSERT INTO blobs(channel_id, sha256, uploader, total_size, received, complete, created_ms)
                         VALUES (?1, ?2, ?3, ?4, 0, 0, ?5)",
                    )?
                    .execute(params![ch, sha, chunk.account_id, chunk.total_size as i64, chunk.now_ms as i64])?;
                    0
                }
            };
            if chunk.offset != received {
                return Err(StorageError::Invalid(format!("expected offset {received}, got {}", chunk.offset)));
            }
            let new_received = received + chunk.data.len() as u64;
            if new_received > chunk.total_size {
                return Err(StorageError::Invalid("chunk goes past total_size".into()));
            }
            c.prepare_cached("INSERT INTO blob_chunks(channel_id, sha256, offset, data) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![ch, sha, chunk.offset as i64, &chunk.data[..]])?;
            c.prepare_cached("UPDATE blobs SET received = ?3 WHERE channel_id = ?1 AND sha256 = ?2")?
                .execute(params![ch, sha, new_received as i64])?;
            Ok(new_received)
        })
    }

    fn blob_sha256(&self, channel: &ChannelId, sha256: &Key32) -> StorageResult<Key32> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT data FROM blob_chunks WHERE channel_id = ?1 AND sha256 = ?2 ORDER BY offset",
            )?;
            let mut rows = st.query(params![&channel[..], &sha256[..]])?;
            let mut h = Sha256::new();
            while let Some(r) = rows.next()? {
                let d = r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
                h.update(d);
            }
            Ok(h.finalize().into())
        })
    }

    fn finish_blob(&self, channel: &ChannelId, sha256: &Key32, valid: bool) -> StorageResult<()> {
        let (ch, sha) = (*channel, *sha256);
        self.write(move |c| {
            if valid {
                c.execute(
                    "UPDATE blobs SET complete = 1 WHERE channel_id = ?1 AND sha256 = ?2",
                    params![&ch[..], &sha[..]],
                )?;
            } else {
                c.execute(
                    "DELETE FROM blobs WHERE channel_id = ?1 AND sha256 = ?2",
                    params![&ch[..], &sha[..]],
                )?;
            }
            Ok(())
        })
    }

    fn purge_expired(
        &self,
        now_ms: u64,
        message_ttl_ms: u64,
        blob_ttl_ms: u64,
        batch: usize,
    ) -> StorageResult<PurgeReport> {
        self.write(move |c| {
            let mut report = PurgeReport::default();
            let cut = now_ms.saturating_sub(message_ttl_ms) as i64;
            let old: Vec<i64> = c
                .prepare_cached("SELECT id FROM payloads WHERE created_ms < ?1 ORDER BY created_ms LIMIT ?2")?
                .query_map(params![cut, batch as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut del = c.prepare_cached(
                "DELETE FROM queue WHERE payload_id = ?1 RETURNING device_id, bytes",
            )?;
            let mut dec = c.prepare_cached(
                "UPDATE devices SET queue_len = max(queue_len - 1, 0), queue_bytes = max(queue_bytes - ?2, 0) WHERE id = ?1",
            )?;
            let mut gone = c.prepare_cached("DELETE FROM payloads WHERE id = ?1")?;
            for id in &old {
                let rows: Vec<(DeviceId, i64)> = del
                    .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                report.queue_entries += rows.len() as u64;
                for (d, b) in rows {
                    dec.execute(params![d, b])?;
                }
                report.payloads += gone.execute([id])? as u64;
            }
            report.enqueue_ids = c
                .prepare_cached(
                    "DELETE FROM enqueue_ids WHERE (sender_device, message_id) IN
                     (SELECT sender_device, message_id FROM enqueue_ids WHERE created_ms < ?1 LIMIT ?2)",
                )?
                .execute(params![cut, batch as i64])? as u64;
            let blob_cut = now_ms.saturating_sub(blob_ttl_ms) as i64;
            report.incomplete_blobs = c
                .prepare_cached(
                    "DELETE FROM blobs WHERE (channel_id, sha256) IN
                     (SELECT channel_id, sha256 FROM blobs WHERE complete = 0 AND created_ms < ?1 LIMIT ?2)",
                )?
                .execute(params![blob_cut, batch as i64])? as u64;
            Ok(report)
        })
    }

    fn set_last_resort_key_package(
        &self,
        device: DeviceId,
        suite: u32,
        package: NewKeyPackage,
    ) -> StorageResult<()> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO last_resort_key_packages(device_id, suite, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT(device_id, suite) DO UPDATE SET data = excluded.data",
            )?
            .execute(params![device, suite, &package.data[..]])?;
            Ok(())
        })
    }

    fn last_resort_key_package(
        &self,
        device_key: &Key32,
        suite: u32,
    ) -> StorageResult<Option<Vec<u8>>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT k.data FROM last_resort_key_packages k JOIN devices d ON d.id = k.device_id
                 WHERE d.device_key = ?1 AND k.suite = ?2",
            )?
            .query_row(params![&device_key[..], suite], |r| r.get(0))
            .optional()?)
        })
    }

    fn read_blob(
        &self,
        channel: &ChannelId,
        sha256: &Key32,
        offset: u64,
        len: u64,
    ) -> StorageResult<(Vec<u8>, u64)> {
        self.read(|c| {
            let total: i64 = c
                .prepare_cached("SELECT total_size FROM blobs WHERE channel_id = ?1 AND sha256 = ?2 AND complete = 1")?
                .query_row(params![&channel[..], &sha256[..]], |r| r.get(0))
                .optional()?
                .ok_or(StorageError::NotFound("blob"))?;
            let total = total as u64;
            if offset > total {
                return Err(StorageError::Invalid(format!("offset {offset} is past the end ({total})")));
            }
            let end = offset.saturating_add(len).min(total);
            let mut st = c.prepare_cached(
                "SELECT offset, data FROM blob_chunks WHERE channel_id = ?1 AND sha256 = ?2
                 AND offset < ?4 AND offset + length(data) > ?3 ORDER BY offset",
            )?;
            let mut rows = st.query(params![&channel[..], &sha256[..], offset as i64, end as i64])?;
            let mut out = Vec::with_capacity((end - offset) as usize);
            while let Some(r) = rows.next()? {
                let start = r.get::<_, i64>(0)? as u64;
                let d = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
                let from = offset.saturating_sub(start) as usize;
                let to = ((end - start) as usize).min(d.len());
                out.extend_from_slice(&d[from..to]);
            }
            Ok((out, total))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A populated v1 database (before init-key hashes) migrates to the current schema: its
    /// KeyPackage is still handed out, and new uploads get the per-device init-key check.
    #[test]
    fn v1_database_with_key_packages_migrates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qpq.db");
        {
            let c = Connection::open(&path).expect("open v1");
            c.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            c.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO accounts(id, username, identity_key, opaque_record, created_at)
                     VALUES (1, 'old', x'01', x'', 0);
                 INSERT INTO devices(id, account_id, device_key, created_at)
                     VALUES (1, 1, zeroblob(32), 0);
                 INSERT INTO key_packages(device_id, suite, data) VALUES (1, 1, x'6f6c64');",
            )
            .expect("v1 rows");
        }
        let st = SqliteStorage::open(&path).expect("migrates");
        let v: i64 = st
            .read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .expect("version");
        assert_eq!(v as usize, SCHEMA_VERSION);
        let kp = |data: &'static [u8], h: u8| NewKeyPackage {
            data: Bytes::from_static(data),
            init_key_hash: [h; 32],
            last_resort: false,
        };
        assert_eq!(
            st.add_key_packages(1, 1, vec![kp(b"a", 1), kp(b"b", 2)], 100)
                .expect("new ones"),
            3
        );
        let again = st.add_key_packages(1, 1, vec![kp(b"c", 3), kp(b"d", 2)], 100);
        assert!(matches!(again, Err(StorageError::Invalid(_))), "{again:?}");
        let dk = [0u8; 32];
        assert_eq!(
            st.pop_key_package(&dk, 1).expect("pop"),
            Some(b"old".to_vec()),
            "the v1 KeyPackage is still served, oldest first"
        );
        assert_eq!(
            st.pop_key_package(&dk, 1).expect("pop"),
            Some(b"a".to_vec())
        );
        assert_eq!(
            st.pop_key_package(&dk, 1).expect("pop"),
            Some(b"b".to_vec())
        );
        assert_eq!(
            st.pop_key_package(&dk, 1).expect("pop"),
            None,
            "nothing of the refused upload was stored"
        );
        st.close();
    }

    /// A job of a test batch: inserts `name` into server_state, replying on a channel.
    fn insert_job(
        name: &'static str,
        runs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> (Job, mpsc::Receiver<StorageResult<()>>) {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(Pending {
            f: move |c: &Connection| {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                c.prepare_cached("INSERT INTO server_state(name, value) VALUES (?1, x'00')")?
                    .execute([name])?;
                Ok(())
            },
            result: None,
            reply: Reply::Blocking(tx),
            keeps_membership: false,
        });
        (job, rx)
    }

    fn stored(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT name FROM server_state ORDER BY name")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    fn writer_conn(dir: &tempfile::TempDir) -> Connection {
        let mut c = Connection::open(dir.path().join("w.db")).expect("open");
        configure(&c, 0).expect("configure");
        migrate(&mut c).expect("migrate");
        c
    }

    /// ADR 0100: a batch runs without savepoints; when one job fails (here: a duplicate of
    /// the job before it, in the same batch), that job alone gets its error and every other
    /// job of the batch still commits.
    #[test]
    fn failing_job_fails_alone_and_the_batch_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = writer_conn(&dir);
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, ra) = insert_job("a", runs.clone());
        let (dup, rdup) = insert_job("a", runs.clone());
        let (c, rc) = insert_job("c", runs.clone());
        let mut batch = vec![a, dup, c];
        let commit = run_batch(&conn, &mut batch);
        assert!(commit.is_ok(), "{commit:?}");
        for job in batch {
            job.finish(commit.clone());
        }
        assert!(ra.recv().expect("a answered").is_ok());
        let e = rdup.recv().expect("dup answered");
        assert!(matches!(e, Err(StorageError::Backend(_))), "{e:?}");
        assert!(rc.recv().expect("c answered").is_ok());
        assert_eq!(stored(&conn), vec!["a".to_string(), "c".to_string()]);
        // First pass: a, dup (fails, stops the pass); second pass: a, dup, c.
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    /// The fast path: a batch where nothing fails runs each job once, commits all of it.
    #[test]
    fn batch_without_failure_runs_each_job_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = writer_conn(&dir);
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (mut batch, mut replies) = (Vec::new(), Vec::new());
        for name in ["x", "y", "z"] {
            let (j, r) = insert_job(name, runs.clone());
            batch.push(j);
            replies.push(r);
        }
        let commit = run_batch(&conn, &mut batch);
        for job in batch {
            job.finish(commit.clone());
        }
        for r in replies {
            assert!(r.recv().expect("answered").is_ok());
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(stored(&conn), vec!["x", "y", "z"]);
    }

    /// A lone failing job gets its error and leaves nothing behind.
    #[test]
    fn lone_failing_job_gets_its_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = writer_conn(&dir);
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (first, r1) = insert_job("k", runs.clone());
        let mut batch = vec![first];
        let commit = run_batch(&conn, &mut batch);
        batch.pop().expect("job").finish(commit);
        assert!(r1.recv().expect("answered").is_ok());
        let (again, r2) = insert_job("k", runs.clone());
        let mut batch = vec![again];
        let commit = run_batch(&conn, &mut batch);
        assert!(commit.is_ok());
        batch.pop().expect("job").finish(commit);
        assert!(r2.recv().expect("answered").is_err());
        assert_eq!(stored(&conn), vec!["k"]);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
