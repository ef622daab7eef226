//! PostgreSQL backend (issue 15, ADR 0120): several stateless server nodes share one database.
//!
//! Explicit SQL over the synchronous `postgres` client (the trait is blocking and the service
//! calls it from `spawn_blocking`), a small pool of connections, every connection with
//! `synchronous_commit = on` (a write that returned `Ok` is flushed). Each write method is one
//! READ COMMITTED transaction that takes the row locks its rules need:
//!
//! - an Enqueue locks its channel row (`FOR UPDATE` for commits, `FOR SHARE` otherwise), so
//!   membership, the epoch and the facts [`crate::delivery::plan`] decides on cannot move under
//!   it; the epoch moves by compare-and-set;
//! - per-device sequence numbers come from `device_queues` counter rows, locked in device-id
//!   order and bumped with `UPDATE … RETURNING` inside the transaction, so a queue's sequence
//!   order is its commit order (never a global sequence read with `id > cursor`);
//! - a payload is stored once; each recipient's queue row points at it.
//!
//! Nothing here NOTIFYs: wake-ups are sent after the commit by the doorbell
//! ([`crate::wake`]), never inside an enqueue transaction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{Client, NoTls, Transaction};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::*;
use crate::delivery;

/// Connections kept idle in the pool at most.
const IDLE: usize = 8;
/// Transactions retried after a deadlock, serialization failure or a racing insert.
const RETRIES: usize = 4;
/// Advisory lock key held while migrating (nodes starting together migrate once).
const MIGRATE_LOCK: i64 = 0x0071_7071_5f6d_6967;

const MIGRATIONS: &[&str] = &[
    // v1: the whole schema of SQLite v6, with per-device queue counters in their own rows.
    r#"
    CREATE TABLE server_state(name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE accounts(
        id BIGSERIAL PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        identity_key BYTEA NOT NULL UNIQUE,
        opaque_record BYTEA NOT NULL,
        created_at BIGINT NOT NULL);
    CREATE TABLE devices(
        id BIGSERIAL PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        device_key BYTEA NOT NULL UNIQUE,
        hybrid_key BYTEA,
        created_at BIGINT NOT NULL);
    CREATE INDEX devices_account ON devices(account_id);
    CREATE TABLE device_queues(
        device_id BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
        next_seq BIGINT NOT NULL DEFAULT 1,
        len BIGINT NOT NULL DEFAULT 0,
        bytes BIGINT NOT NULL DEFAULT 0);
    CREATE TABLE sessions(
        token_hash BYTEA PRIMARY KEY,
        device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        expires_at BIGINT NOT NULL);
    CREATE INDEX sessions_device ON sessions(device_id);
    CREATE INDEX sessions_expiry ON sessions(expires_at);
    CREATE TABLE key_packages(
        id BIGSERIAL PRIMARY KEY,
        device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        suite BIGINT NOT NULL,
        data BYTEA NOT NULL,
        init_key_hash BYTEA,
        UNIQUE(device_id, init_key_hash));
    CREATE INDEX key_packages_device ON key_packages(device_id, suite, id);
    CREATE TABLE last_resort_key_packages(
        device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        suite BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY(device_id, suite));
    CREATE TABLE channels(
        id BYTEA PRIMARY KEY,
        kind SMALLINT NOT NULL,
        dm_key TEXT UNIQUE,
        epoch BIGINT NOT NULL DEFAULT 0,
        metadata BYTEA NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL);
    CREATE TABLE channel_members(
        channel_id BYTEA NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        admin BOOLEAN NOT NULL DEFAULT false,
        leaving BOOLEAN NOT NULL DEFAULT false,
        PRIMARY KEY(channel_id, account_id));
    CREATE INDEX channel_members_account ON channel_members(account_id);
    CREATE TABLE channel_devices(
        channel_id BYTEA NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        PRIMARY KEY(channel_id, device_id));
    CREATE INDEX channel_devices_device ON channel_devices(device_id);
    CREATE TABLE channel_group_info(
        channel_id BYTEA PRIMARY KEY REFERENCES channels(id) ON DELETE CASCADE,
        epoch BIGINT NOT NULL,
        data BYTEA NOT NULL);
    CREATE TABLE blocks(
        blocker BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        blocked BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY(blocker, blocked));
    CREATE INDEX blocks_blocked ON blocks(blocked);
    CREATE TABLE payloads(
        id BIGSERIAL PRIMARY KEY,
        channel_id BYTEA NOT NULL,
        sender_device BYTEA NOT NULL,
        message_id BYTEA NOT NULL,
        kind INTEGER NOT NULL,
        data BYTEA NOT NULL,
        created_ms BIGINT NOT NULL);
    CREATE INDEX payloads_sender ON payloads(sender_device);
    CREATE INDEX payloads_age ON payloads(created_ms);
    CREATE TABLE queue(
        device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        channel_id BYTEA NOT NULL,
        payload_id BIGINT NOT NULL REFERENCES payloads(id),
        sender_account BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        PRIMARY KEY(device_id, seq));
    CREATE INDEX queue_payload ON queue(payload_id);
    CREATE INDEX queue_sender ON queue(device_id, sender_account);
    CREATE TABLE enqueue_ids(
        sender_device BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        message_id BYTEA NOT NULL,
        payload_id BIGINT NOT NULL,
        epoch BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY(sender_device, message_id));
    CREATE INDEX enqueue_ids_age ON enqueue_ids(created_ms);
    CREATE TABLE username_tombstones(username TEXT PRIMARY KEY, until BIGINT NOT NULL);
    CREATE TABLE blobs(
        channel_id BYTEA NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        sha256 BYTEA NOT NULL,
        uploader BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        total_size BIGINT NOT NULL,
        received BIGINT NOT NULL,
        complete BOOLEAN NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY(channel_id, sha256));
    CREATE INDEX blobs_incomplete ON blobs(complete, created_ms);
    CREATE INDEX blobs_uploader ON blobs(uploader);
    CREATE TABLE blob_chunks(
        channel_id BYTEA NOT NULL,
        sha256 BYTEA NOT NULL,
        off BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY(channel_id, sha256, off),
        FOREIGN KEY(channel_id, sha256) REFERENCES blobs(channel_id, sha256) ON DELETE CASCADE);
    "#,
];

/// Schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

fn pg_err(e: ::postgres::Error) -> StorageError {
    if e.code() == Some(&SqlState::DISK_FULL) {
        return StorageError::Full;
    }
    StorageError::Backend(e.to_string())
}

impl From<::postgres::Error> for StorageError {
    fn from(e: ::postgres::Error) -> Self {
        pg_err(e)
    }
}

/// A transaction error worth retrying from the start (another node raced it).
fn retryable(e: &::postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// An operation's error: a database one (maybe retryable) or a rule's.
enum TxError {
    Pg(::postgres::Error),
    Rule(StorageError),
}

impl From<::postgres::Error> for TxError {
    fn from(e: ::postgres::Error) -> Self {
        TxError::Pg(e)
    }
}

impl From<StorageError> for TxError {
    fn from(e: StorageError) -> Self {
        TxError::Rule(e)
    }
}

type TxResult<T> = Result<T, TxError>;

fn key32(v: Vec<u8>) -> TxResult<Key32> {
    v.try_into()
        .map_err(|_| TxError::Rule(StorageError::Backend("stored key is not 32 bytes".into())))
}

fn id16(v: Vec<u8>) -> TxResult<ChannelId> {
    v.try_into().map_err(|_| {
        TxError::Rule(StorageError::Backend(
            "stored channel id is not 16 bytes".into(),
        ))
    })
}

fn channel_kind(v: i16) -> ChannelKind {
    if v == ChannelKind::Dm as i16 {
        ChannelKind::Dm
    } else {
        ChannelKind::Group
    }
}

/// The PostgreSQL storage backend.
pub struct PostgresStorage {
    config: ::postgres::Config,
    idle: Mutex<Vec<Client>>,
}

impl PostgresStorage {
    /// Connects to `url` (`postgres://…`, or key=value with `host=/socket/dir`), creating and
    /// migrating the schema if needed. Nodes starting together migrate once (advisory lock).
    pub fn open(url: &str) -> StorageResult<PostgresStorage> {
        let mut config: ::postgres::Config = url
            .parse()
            .map_err(|e| StorageError::Backend(format!("database url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("qpq-server");
        let st = PostgresStorage {
            config,
            idle: Mutex::new(Vec::new()),
        };
        let mut c = st.connect()?;
        migrate(&mut c)?;
        st.put(c);
        Ok(st)
    }

    fn connect(&self) -> StorageResult<Client> {
        let mut c = self.config.connect(NoTls)?;
        // Durable means flushed: whatever the server's default, our commits wait for the WAL.
        // Notices (such as "already exists, skipping" from the idempotent migrations) are
        // not logged as if they were news.
        c.batch_execute("SET synchronous_commit = on; SET client_min_messages = warning")?;
        Ok(c)
    }

    fn take(&self) -> StorageResult<Client> {
        let pooled = self.idle.lock().ok().and_then(|mut p| p.pop());
        match pooled {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self.connect(),
        }
    }

    fn put(&self, c: Client) {
        if c.is_closed() {
            return;
        }
        if let Ok(mut p) = self.idle.lock() {
            if p.len() < IDLE {
                p.push(c);
            }
        }
    }

    /// Runs `f` in one transaction, committed before returning `Ok`; retried from the start
    /// on a deadlock, serialization failure or racing insert.
    fn tx<T>(&self, mut f: impl FnMut(&mut Transaction<'_>) -> TxResult<T>) -> StorageResult<T> {
        let mut attempt = 0;
        let mut stale = 0;
        loop {
            attempt += 1;
            let mut c = self.take()?;
            let mut t = match c.transaction() {
                Ok(t) => t,
                // A pooled connection broken while idle (e.g. the database restarted): BEGIN
                // failed, nothing ran, so another connection may safely run it.
                Err(e) if stale <= IDLE => {
                    tracing::debug!(error = %e, "stale database connection dropped");
                    stale += 1;
                    attempt -= 1;
                    continue;
                }
                Err(e) => return Err(pg_err(e)),
            };
            let r = (|| -> TxResult<T> {
                let v = f(&mut t)?;
                t.commit()?;
                Ok(v)
            })();
            self.put(c);
            match r {
                Ok(v) => return Ok(v),
                Err(TxError::Rule(e)) => return Err(e),
                Err(TxError::Pg(e)) if retryable(&e) && attempt < RETRIES => continue,
                Err(TxError::Pg(e)) => {
                    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                        return Err(StorageError::Conflict("already exists".into()));
                    }
                    return Err(pg_err(e));
                }
            }
        }
    }

    /// Runs a read on a pooled connection (retried once on a fresh connection when the pooled
    /// one turned out to be closed, e.g. after a database restart).
    fn read<T>(&self, mut f: impl FnMut(&mut Client) -> TxResult<T>) -> StorageResult<T> {
        for attempt in 0..2 {
            let mut c = self.take()?;
            let r = f(&mut c);
            let closed = c.is_closed();
            self.put(c);
            match r {
                Ok(v) => return Ok(v),
                Err(TxError::Rule(e)) => return Err(e),
                Err(TxError::Pg(e)) if closed && attempt == 0 => {
                    tracing::debug!(error = %e, "database connection lost; retrying the read");
                    continue;
                }
                Err(TxError::Pg(e)) => return Err(pg_err(e)),
            }
        }
        Err(StorageError::Backend("database connection lost".into()))
    }

    /// The URL's connection settings (for the listener connection of the same node).
    pub fn config(&self) -> &::postgres::Config {
        &self.config
    }

    /// Whether the database answers (for `/health`).
    pub fn ping(&self) -> bool {
        self.read(|c| Ok(c.simple_query("SELECT 1")?)).is_ok()
    }

    /// `pg_notification_queue_usage()`: the fraction of the NOTIFY queue in use.
    pub fn notification_queue_usage(&self) -> StorageResult<f64> {
        self.read(|c| {
            Ok(c.query_one("SELECT pg_notification_queue_usage()", &[])?
                .get(0))
        })
    }

    /// Drops every pooled connection (they reconnect on next use).
    pub fn close(&self) {
        if let Ok(mut p) = self.idle.lock() {
            p.clear();
        }
    }
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        // A `postgres::Client` blocks on its own runtime when dropped, which panics inside an
        // async context (the last reference may go there): idle connections close on a thread.
        let idle = self.idle.get_mut().map(std::mem::take).unwrap_or_default();
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("qpq-pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}

fn migrate(c: &mut Client) -> StorageResult<()> {
    let mut t = c.transaction()?;
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    t.batch_execute("CREATE TABLE IF NOT EXISTS schema_version(version BIGINT NOT NULL)")?;
    let current: i64 = match t.query_opt("SELECT version FROM schema_version", &[])? {
        Some(r) => r.get(0),
        None => {
            t.execute("INSERT INTO schema_version(version) VALUES (0)", &[])?;
            0
        }
    };
    let current = current.max(0) as usize;
    if current > MIGRATIONS.len() {
        return Err(StorageError::Backend(format!(
            "database schema v{current} is newer than this server (v{})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        t.batch_execute(sql)?;
        t.execute(
            "UPDATE schema_version SET version = $1",
            &[&((i + 1) as i64)],
        )?;
    }
    t.commit()?;
    Ok(())
}

/// The schema version stored in the database at `url` (for tests and operations).
pub fn stored_schema_version(url: &str) -> StorageResult<u64> {
    let config: ::postgres::Config = url
        .parse()
        .map_err(|e| StorageError::Backend(format!("database url: {e}")))?;
    let mut c = config.connect(NoTls)?;
    let v: i64 = c
        .query_one("SELECT version FROM schema_version", &[])?
        .get(0);
    Ok(v.max(0) as u64)
}

fn account_id_by_identity(t: &mut Transaction<'_>, key: &Key32) -> TxResult<AccountId> {
    t.query_opt(
        "SELECT id FROM accounts WHERE identity_key = $1",
        &[&&key[..]],
    )?
    .map(|r| r.get(0))
    .ok_or(TxError::Rule(StorageError::NotFound("user")))
}

fn blocks(t: &mut Transaction<'_>, blocker: AccountId, blocked: AccountId) -> TxResult<bool> {
    Ok(t.query_opt(
        "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2",
        &[&blocker, &blocked],
    )?
    .is_some())
}

fn key_taken(t: &mut Transaction<'_>, key: &Key32, except: Option<AccountId>) -> TxResult<bool> {
    let except = except.unwrap_or(-1);
    Ok(t.query_opt(
        "SELECT 1 FROM accounts WHERE identity_key = $1 AND id <> $2
             UNION ALL SELECT 1 FROM devices WHERE device_key = $1 AND account_id <> $2 LIMIT 1",
        &[&&key[..], &except],
    )?
    .is_some())
}

fn channel_row<C: ::postgres::GenericClient>(
    c: &mut C,
    id: &ChannelId,
    lock: &str,
) -> TxResult<Option<Channel>> {
    let sql = format!("SELECT kind, epoch, metadata FROM channels WHERE id = $1 {lock}");
    match c.query_opt(sql.as_str(), &[&&id[..]])? {
        Some(r) => Ok(Some(Channel {
            id: *id,
            kind: channel_kind(r.get(0)),
            epoch: r.get::<_, i64>(1) as u64,
            metadata: r.get(2),
        })),
        None => Ok(None),
    }
}

fn member_check<C: ::postgres::GenericClient>(
    c: &mut C,
    channel: &ChannelId,
    account: AccountId,
) -> TxResult<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM channel_members WHERE channel_id = $1 AND account_id = $2 AND NOT leaving",
        &[&&channel[..], &account],
    )?
    .is_some())
}

fn group_info_row<C: ::postgres::GenericClient>(
    c: &mut C,
    channel: &ChannelId,
) -> TxResult<Option<(u64, Bytes)>> {
    Ok(c.query_opt(
        "SELECT epoch, data FROM channel_group_info WHERE channel_id = $1",
        &[&&channel[..]],
    )?
    .map(|r| {
        (
            r.get::<_, i64>(0) as u64,
            Bytes::from(r.get::<_, Vec<u8>>(1)),
        )
    }))
}

/// Decrements queue counters of the devices whose entries went, in device-id order (the order
/// every transaction locks counter rows in).
fn release_counters(t: &mut Transaction<'_>, gone: &[(DeviceId, i64)]) -> TxResult<()> {
    let mut per: std::collections::BTreeMap<DeviceId, (i64, i64)> = Default::default();
    for (d, b) in gone {
        let e = per.entry(*d).or_default();
        e.0 += 1;
        e.1 += b;
    }
    for (d, (n, b)) in per {
        t.execute(
            "UPDATE device_queues SET len = greatest(len - $2, 0), bytes = greatest(bytes - $3, 0) WHERE device_id = $1",
            &[&d, &n, &b],
        )?;
    }
    Ok(())
}

fn gc_payloads(t: &mut Transaction<'_>, ids: &[i64]) -> TxResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    t.execute(
        "DELETE FROM payloads p WHERE p.id = ANY($1) AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.payload_id = p.id)",
        &[&ids],
    )?;
    Ok(())
}

fn purge_device(t: &mut Transaction<'_>, device: DeviceId) -> TxResult<()> {
    let ids: Vec<i64> = t
        .query(
            "DELETE FROM queue WHERE device_id = $1 RETURNING payload_id",
            &[&device],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    gc_payloads(t, &ids)?;
    let key: Vec<u8> = t
        .query_one("SELECT device_key FROM devices WHERE id = $1", &[&device])?
        .get(0);
    let holders: Vec<(DeviceId, i64)> = t
        .query(
            "DELETE FROM queue WHERE payload_id IN (SELECT id FROM payloads WHERE sender_device = $1)
             RETURNING device_id, bytes",
            &[&key],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    release_counters(t, &holders)?;
    t.execute("DELETE FROM payloads WHERE sender_device = $1", &[&key])?;
    t.execute("DELETE FROM devices WHERE id = $1", &[&device])?;
    Ok(())
}

fn insert_device(
    t: &mut Transaction<'_>,
    account: AccountId,
    key: &Key32,
    now: u64,
) -> TxResult<DeviceId> {
    let id: DeviceId = t
        .query_one(
            "INSERT INTO devices(account_id, device_key, created_at) VALUES ($1, $2, $3) RETURNING id",
            &[&account, &&key[..], &(now as i64)],
        )?
        .get(0);
    t.execute("INSERT INTO device_queues(device_id) VALUES ($1)", &[&id])?;
    Ok(id)
}

fn enqueue_facts(t: &mut Transaction<'_>, op: &EnqueueOp) -> TxResult<delivery::EnqueueFacts> {
    // The channel row lock orders this Enqueue against membership changes and commits: a
    // commit takes it exclusively, anything else shares it.
    let lock = if op.commit_epoch.is_some() {
        "FOR UPDATE"
    } else {
        "FOR SHARE"
    };
    let channel = channel_row(t, &op.channel_id, lock)?.ok_or(StorageError::NotFound("channel"))?;
    let ch = &op.channel_id[..];
    let members = t
        .query(
            "SELECT account_id, leaving, admin FROM channel_members WHERE channel_id = $1",
            &[&ch],
        )?
        .iter()
        .map(|r| {
            (
                r.get::<_, AccountId>(0),
                delivery::Membership {
                    leaving: r.get(1),
                    admin: r.get(2),
                },
            )
        })
        .collect();
    let duplicate = t
        .query_opt(
            "SELECT payload_id, epoch FROM enqueue_ids WHERE sender_device = $1 AND message_id = $2",
            &[&op.sender_device, &&op.message_id[..]],
        )?
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64));
    let group_info_epoch = if op.external {
        group_info_row(t, &op.channel_id)?.map(|(e, _)| e)
    } else {
        None
    };
    let mut member_devices = Vec::new();
    for r in t.query(
        "SELECT d.id, d.device_key, d.account_id FROM channel_members m JOIN devices d ON d.account_id = m.account_id
         WHERE m.channel_id = $1 ORDER BY d.id",
        &[&ch],
    )? {
        member_devices.push(delivery::MemberDevice {
            device: r.get(0),
            key: key32(r.get(1))?,
            account: r.get(2),
        });
    }
    let mut named = HashMap::new();
    for key in op
        .add_members
        .iter()
        .chain(&op.remove_members)
        .chain(&op.promote_members)
    {
        if named.contains_key(key) {
            continue;
        }
        let Some(id) = t
            .query_opt(
                "SELECT id FROM accounts WHERE identity_key = $1",
                &[&&key[..]],
            )?
            .map(|r| r.get::<_, AccountId>(0))
        else {
            continue;
        };
        let mut devices = Vec::new();
        for r in t.query(
            "SELECT id, device_key, account_id FROM devices WHERE account_id = $1 ORDER BY id",
            &[&id],
        )? {
            devices.push(delivery::MemberDevice {
                device: r.get(0),
                key: key32(r.get(1))?,
                account: r.get(2),
            });
        }
        let blocks_sender = blocks(t, id, op.sender_account)?;
        named.insert(
            *key,
            delivery::NamedAccount {
                id,
                blocks_sender,
                devices,
            },
        );
    }
    let blockers_of_sender = if op.commit_epoch.is_none() {
        t.query(
            "SELECT blocker FROM blocks WHERE blocked = $1",
            &[&op.sender_account],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect()
    } else {
        Vec::new()
    };
    let in_group = if op.welcome.is_empty() {
        Vec::new()
    } else {
        t.query(
            "SELECT device_id FROM channel_devices WHERE channel_id = $1",
            &[&ch],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect()
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

/// Queues one stored payload for each admitted device: counter rows locked in device-id
/// order (`levels`), bumped with `UPDATE … RETURNING` (sequence order = commit order).
#[allow(clippy::too_many_arguments)]
fn fan_out(
    t: &mut Transaction<'_>,
    devices: &[DeviceId],
    levels: &HashMap<DeviceId, delivery::QueueLevel>,
    payload_id: i64,
    template: &QueuedMessage,
    sender_account: AccountId,
    caps: &delivery::Caps,
    out: &mut Vec<Delivery>,
    skipped: &mut Vec<DeviceId>,
) -> TxResult<()> {
    let bytes = template.payload.len() as u64;
    let mut admitted: Vec<DeviceId> = Vec::with_capacity(devices.len());
    for &d in devices {
        let lvl = levels.get(&d).copied().unwrap_or_default();
        let held = if caps.needs_share(lvl, bytes) {
            let r = t.query_one(
                "SELECT count(*), coalesce(sum(bytes), 0)::BIGINT FROM queue WHERE device_id = $1 AND sender_account = $2",
                &[&d, &sender_account],
            )?;
            Some(delivery::QueueLevel {
                len: r.get::<_, i64>(0).max(0) as u64,
                bytes: r.get::<_, i64>(1).max(0) as u64,
            })
        } else {
            None
        };
        if delivery::admit(caps, lvl, held, bytes) {
            admitted.push(d);
        } else {
            skipped.push(d);
        }
    }
    if admitted.is_empty() {
        return Ok(());
    }
    let rows = t.query(
        "UPDATE device_queues SET next_seq = next_seq + 1, len = len + 1, bytes = bytes + $2
         WHERE device_id = ANY($1) RETURNING device_id, next_seq - 1",
        &[&admitted, &(bytes as i64)],
    )?;
    let mut seqs: HashMap<DeviceId, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut ds = Vec::with_capacity(admitted.len());
    let mut ss = Vec::with_capacity(admitted.len());
    for d in &admitted {
        let Some(seq) = seqs.remove(d) else {
            // The device went (revoked in a transaction that committed first).
            continue;
        };
        ds.push(*d);
        ss.push(seq);
        let mut m = template.clone();
        m.seq = seq as u64;
        out.push(Delivery {
            device_id: *d,
            message: m,
        });
    }
    t.execute(
        "INSERT INTO queue(device_id, seq, channel_id, payload_id, sender_account, bytes)
         SELECT d, s, $3, $4, $5, $6 FROM unnest($1::BIGINT[], $2::BIGINT[]) AS x(d, s)",
        &[
            &ds,
            &ss,
            &&template.channel_id[..],
            &payload_id,
            &sender_account,
            &(bytes as i64),
        ],
    )?;
    Ok(())
}

fn enqueue_tx(t: &mut Transaction<'_>, op: &EnqueueOp) -> TxResult<EnqueueOutcome> {
    let facts = enqueue_facts(t, op)?;
    let plan = match delivery::plan(op, &facts)? {
        delivery::Decision::Duplicate { server_id, epoch } => {
            return Ok(EnqueueOutcome::duplicate(server_id, epoch))
        }
        delivery::Decision::Deliver(p) => p,
    };
    let ch = &op.channel_id[..];
    if let Some(e) = plan.new_epoch {
        // Commit order: compare-and-set on the channel's epoch row.
        let n = t.execute(
            "UPDATE channels SET epoch = $2 WHERE id = $1 AND epoch = $3",
            &[&ch, &(e as i64), &(plan.epoch_from as i64)],
        )?;
        if n != 1 {
            return Err(StorageError::Conflict("the channel's epoch moved".into()).into());
        }
        if let (true, Some(gi)) = (plan.store_group_info, &op.group_info) {
            t.execute(
                "INSERT INTO channel_group_info(channel_id, epoch, data) VALUES ($1, $2, $3)
                 ON CONFLICT(channel_id) DO UPDATE SET epoch = excluded.epoch, data = excluded.data",
                &[&ch, &(e as i64), &&gi[..]],
            )?;
        }
    }
    for id in &plan.remove_accounts {
        t.execute(
            "DELETE FROM channel_members WHERE channel_id = $1 AND account_id = $2",
            &[&ch, id],
        )?;
        t.execute(
            "DELETE FROM channel_devices WHERE channel_id = $1
             AND device_id IN (SELECT id FROM devices WHERE account_id = $2)",
            &[&ch, id],
        )?;
    }
    for id in &plan.add_accounts {
        t.execute(
            "INSERT INTO channel_members(channel_id, account_id) VALUES ($1, $2)
             ON CONFLICT(channel_id, account_id) DO UPDATE SET leaving = false",
            &[&ch, id],
        )?;
    }
    for id in &plan.promote_accounts {
        t.execute(
            "UPDATE channel_members SET admin = true WHERE channel_id = $1 AND account_id = $2",
            &[&ch, id],
        )?;
    }
    if !plan.join_devices.is_empty() {
        t.execute(
            "INSERT INTO channel_devices(channel_id, device_id) SELECT $1, unnest($2::BIGINT[])
             ON CONFLICT DO NOTHING",
            &[&ch, &plan.join_devices],
        )?;
    }
    // Every counter row this Enqueue may bump, locked once, in device-id order.
    let mut all: Vec<DeviceId> = plan
        .recipients
        .iter()
        .chain(&plan.welcome_to)
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    let levels: HashMap<DeviceId, delivery::QueueLevel> = t
        .query(
            "SELECT device_id, len, bytes FROM device_queues WHERE device_id = ANY($1)
             ORDER BY device_id FOR UPDATE",
            &[&all],
        )?
        .iter()
        .map(|r| {
            (
                r.get(0),
                delivery::QueueLevel {
                    len: r.get::<_, i64>(1).max(0) as u64,
                    bytes: r.get::<_, i64>(2).max(0) as u64,
                },
            )
        })
        .collect();

    let insert =
        "INSERT INTO payloads(channel_id, sender_device, message_id, kind, data, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
    let payload_id: i64 = t
        .query_one(
            insert,
            &[
                &ch,
                &&op.sender_device_key[..],
                &&op.message_id[..],
                &op.kind,
                &&op.payload[..],
                &(op.now_ms as i64),
            ],
        )?
        .get(0);
    t.execute(
        "INSERT INTO enqueue_ids(sender_device, message_id, payload_id, epoch, created_ms) VALUES ($1, $2, $3, $4, $5)",
        &[&op.sender_device, &&op.message_id[..], &payload_id, &(plan.epoch as i64), &(op.now_ms as i64)],
    )?;
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
        t,
        &plan.recipients,
        &levels,
        payload_id,
        &template,
        op.sender_account,
        &caps,
        &mut deliveries,
        &mut skipped,
    )?;
    if deliveries.is_empty() && !skipped.is_empty() {
        return Err(delivery::queue_full(op, skipped[0]).into());
    }
    if !plan.welcome_to.is_empty() {
        let wid = delivery::welcome_id(&op.message_id);
        let welcome_id: i64 = t
            .query_one(
                insert,
                &[
                    &ch,
                    &&op.sender_device_key[..],
                    &&wid[..],
                    &delivery::WELCOME_KIND,
                    &&op.welcome[..],
                    &(op.now_ms as i64),
                ],
            )?
            .get(0);
        let wt = QueuedMessage {
            message_id: Bytes::copy_from_slice(&wid),
            payload: op.welcome.clone(),
            kind: delivery::WELCOME_KIND,
            ..template
        };
        fan_out(
            t,
            &plan.welcome_to,
            &levels,
            welcome_id,
            &wt,
            op.sender_account,
            &delivery::Caps::of(op, true),
            &mut deliveries,
            &mut skipped,
        )?;
    }
    if plan.recipients.is_empty() && plan.welcome_to.is_empty() {
        t.execute("DELETE FROM payloads WHERE id = $1", &[&payload_id])?;
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

fn account_from_row(r: &::postgres::Row) -> TxResult<Account> {
    Ok(Account {
        id: r.get(0),
        username: r.get(1),
        identity_key: key32(r.get(2))?,
        opaque_record: r.get(3),
    })
}

impl Storage for PostgresStorage {
    fn server_secret(&self, name: &str, init: Vec<u8>) -> StorageResult<Vec<u8>> {
        self.tx(|t| {
            t.execute(
                "INSERT INTO server_state(name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &init],
            )?;
            Ok(
                t.query_one("SELECT value FROM server_state WHERE name = $1", &[&name])?
                    .get(0),
            )
        })
    }

    fn server_secret_peek(&self, name: &str) -> StorageResult<Option<Vec<u8>>> {
        self.read(|c| {
            Ok(
                c.query_opt("SELECT value FROM server_state WHERE name = $1", &[&name])?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn delete_server_secret(&self, name: &str) -> StorageResult<()> {
        self.tx(|t| {
            t.execute("DELETE FROM server_state WHERE name = $1", &[&name])?;
            Ok(())
        })
    }

    fn username_taken(&self, username: &str) -> StorageResult<bool> {
        self.read(|c| {
            Ok(
                c.query_opt("SELECT 1 FROM accounts WHERE username = $1", &[&username])?
                    .is_some(),
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
        self.tx(|t| {
            let taken = t
                .query_opt(
                    "SELECT 1 FROM accounts WHERE username = $1
                     UNION ALL SELECT 1 FROM username_tombstones WHERE username = $1 AND until > $2 LIMIT 1",
                    &[&username, &(now as i64)],
                )?
                .is_some();
            if taken {
                return Err(StorageError::Conflict("username is taken".into()).into());
            }
            if key_taken(t, identity_key, None)? || key_taken(t, device_key, None)? {
                return Err(StorageError::Conflict(
                    "identity or device key already registered".into(),
                )
                .into());
            }
            let id: AccountId = t
                .query_one(
                    "INSERT INTO accounts(username, identity_key, opaque_record, created_at)
                     VALUES ($1, $2, $3, $4) RETURNING id",
                    &[&username, &&identity_key[..], &opaque_record, &(now as i64)],
                )?
                .get(0);
            insert_device(t, id, device_key, now)?;
            Ok(id)
        })
    }

    fn account_by_username(&self, username: &str) -> StorageResult<Option<Account>> {
        self.read(|c| {
            c.query_opt(
                "SELECT id, username, identity_key, opaque_record FROM accounts WHERE username = $1",
                &[&username],
            )?
            .map(|r| account_from_row(&r))
            .transpose()
        })
    }

    fn account_by_identity(&self, identity_key: &Key32) -> StorageResult<Option<Account>> {
        self.read(|c| {
            c.query_opt(
                "SELECT id, username, identity_key, opaque_record FROM accounts WHERE identity_key = $1",
                &[&&identity_key[..]],
            )?
            .map(|r| account_from_row(&r))
            .transpose()
        })
    }

    fn delete_account(
        &self,
        account: AccountId,
        username_reserved_until: u64,
    ) -> StorageResult<()> {
        self.tx(|t| {
            if username_reserved_until > 0 {
                t.execute(
                    "INSERT INTO username_tombstones(username, until)
                     SELECT username, $2 FROM accounts WHERE id = $1
                     ON CONFLICT(username) DO UPDATE SET until = excluded.until",
                    &[&account, &(username_reserved_until as i64)],
                )?;
            }
            // Channels it belonged to, locked as a commit would (membership changes), before
            // any queue counter: the lock order of an Enqueue (channel, then device queues in
            // id order), so the two never deadlock.
            let channels: Vec<Vec<u8>> = t
                .query(
                    "SELECT c.id FROM channels c JOIN channel_members m ON m.channel_id = c.id
                     WHERE m.account_id = $1 ORDER BY c.id FOR UPDATE OF c",
                    &[&account],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let devices: Vec<DeviceId> = t
                .query(
                    "SELECT id FROM devices WHERE account_id = $1 ORDER BY id",
                    &[&account],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for d in devices {
                purge_device(t, d)?;
            }
            t.execute("DELETE FROM accounts WHERE id = $1", &[&account])?;
            // Channels nobody belongs to any more go too (with their blobs).
            t.execute(
                "DELETE FROM channels c WHERE c.id = ANY($1)
                 AND NOT EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id)",
                &[&channels],
            )?;
            Ok(())
        })
    }

    fn devices(&self, account: AccountId) -> StorageResult<Vec<Device>> {
        self.read(|c| {
            let mut out = Vec::new();
            for r in c.query(
                "SELECT id, account_id, device_key, created_at FROM devices WHERE account_id = $1 ORDER BY id",
                &[&account],
            )? {
                out.push(Device {
                    id: r.get(0),
                    account_id: r.get(1),
                    device_key: key32(r.get(2))?,
                    created_at: r.get::<_, i64>(3) as u64,
                });
            }
            Ok(out)
        })
    }

    fn add_device(
        &self,
        account: AccountId,
        device_key: &Key32,
        max: usize,
        now: u64,
    ) -> StorageResult<DeviceId> {
        self.tx(|t| {
            // Devices of one account are added one at a time.
            t.execute(
                "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE",
                &[&account],
            )?;
            let existing = t
                .query_opt(
                    "SELECT id, account_id FROM devices WHERE device_key = $1",
                    &[&&device_key[..]],
                )?
                .map(|r| (r.get::<_, DeviceId>(0), r.get::<_, AccountId>(1)));
            match existing {
                Some((id, owner)) if owner == account => return Ok(id),
                Some(_) => {
                    return Err(StorageError::Conflict(
                        "device key belongs to another account".into(),
                    )
                    .into())
                }
                None => {}
            }
            if key_taken(t, device_key, Some(account))? {
                return Err(
                    StorageError::Conflict("device key belongs to another account".into()).into(),
                );
            }
            let n: i64 = t
                .query_one(
                    "SELECT count(*) FROM devices WHERE account_id = $1",
                    &[&account],
                )?
                .get(0);
            if n as usize >= max {
                return Err(
                    StorageError::Limit(format!("an account has at most {max} devices")).into(),
                );
            }
            insert_device(t, account, device_key, now)
        })
    }

    fn revoke_device(&self, account: AccountId, device_key: &Key32) -> StorageResult<()> {
        self.tx(|t| {
            let id: DeviceId = t
                .query_opt(
                    "SELECT id FROM devices WHERE device_key = $1 AND account_id = $2",
                    &[&&device_key[..], &account],
                )?
                .map(|r| r.get(0))
                .ok_or(StorageError::NotFound("device"))?;
            purge_device(t, id)
        })
    }

    fn create_session(
        &self,
        token_hash: &Key32,
        device: DeviceId,
        expires_at: u64,
        max_per_device: usize,
    ) -> StorageResult<Vec<Key32>> {
        self.tx(|t| {
            t.execute(
                "INSERT INTO sessions(token_hash, device_id, expires_at) VALUES ($1, $2, $3)",
                &[&&token_hash[..], &device, &(expires_at as i64)],
            )?;
            let mut evicted = Vec::new();
            for r in t.query(
                "DELETE FROM sessions WHERE device_id = $1 AND token_hash NOT IN (
                    SELECT token_hash FROM sessions WHERE device_id = $1
                    ORDER BY token_hash = $3 DESC, expires_at DESC LIMIT $2)
                 RETURNING token_hash",
                &[&device, &(max_per_device.max(1) as i64), &&token_hash[..]],
            )? {
                evicted.push(key32(r.get(0))?);
            }
            Ok(evicted)
        })
    }

    fn purge_expired_sessions(&self, now: u64) -> StorageResult<u64> {
        self.tx(|t| {
            let n = t.execute(
                "DELETE FROM sessions WHERE expires_at <= $1",
                &[&(now as i64)],
            )?;
            t.execute(
                "DELETE FROM username_tombstones WHERE until <= $1",
                &[&(now as i64)],
            )?;
            Ok(n)
        })
    }

    fn session(&self, token_hash: &Key32, now: u64) -> StorageResult<Option<Session>> {
        self.read(|c| {
            match c.query_opt(
                "SELECT d.account_id, d.id, d.device_key, a.identity_key, s.expires_at
                 FROM sessions s JOIN devices d ON d.id = s.device_id JOIN accounts a ON a.id = d.account_id
                 WHERE s.token_hash = $1 AND s.expires_at > $2",
                &[&&token_hash[..], &(now as i64)],
            )? {
                Some(r) => Ok(Some(Session {
                    account_id: r.get(0),
                    device_id: r.get(1),
                    device_key: key32(r.get(2))?,
                    identity_key: key32(r.get(3))?,
                    expires_at: r.get::<_, i64>(4) as u64,
                })),
                None => Ok(None),
            }
        })
    }

    fn delete_session(&self, token_hash: &Key32) -> StorageResult<()> {
        self.tx(|t| {
            t.execute(
                "DELETE FROM sessions WHERE token_hash = $1",
                &[&&token_hash[..]],
            )?;
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
        let suite = i64::from(suite);
        self.tx(|t| {
            // One upload per device at a time (the cap holds under concurrency).
            t.execute(
                "SELECT 1 FROM device_queues WHERE device_id = $1 FOR UPDATE",
                &[&device],
            )?;
            let n: i64 = t
                .query_one(
                    "SELECT count(*) FROM key_packages WHERE device_id = $1 AND suite = $2",
                    &[&device, &suite],
                )?
                .get(0);
            if n as u64 + packages.len() as u64 > cap {
                return Err(StorageError::Limit(format!(
                    "at most {cap} KeyPackages are stored per device"
                ))
                .into());
            }
            for (i, p) in packages.iter().enumerate() {
                let seen = t
                    .query_opt(
                        "SELECT 1 FROM key_packages WHERE device_id = $1 AND init_key_hash = $2",
                        &[&device, &&p.init_key_hash[..]],
                    )?
                    .is_some();
                if seen {
                    return Err(StorageError::Invalid(format!(
                        "KeyPackage {i} refused: its init_key is already stored for this device; nothing of the upload was stored"
                    ))
                    .into());
                }
                t.execute(
                    "INSERT INTO key_packages(device_id, suite, data, init_key_hash) VALUES ($1, $2, $3, $4)",
                    &[&device, &suite, &&p.data[..], &&p.init_key_hash[..]],
                )?;
            }
            Ok(n as u64 + packages.len() as u64)
        })
    }

    fn pop_key_package(&self, device_key: &Key32, suite: u32) -> StorageResult<Option<Vec<u8>>> {
        let suite = i64::from(suite);
        self.tx(|t| {
            // SKIP LOCKED: two nodes popping at once take two different KeyPackages.
            Ok(t.query_opt(
                "DELETE FROM key_packages WHERE id = (
                    SELECT k.id FROM key_packages k JOIN devices d ON d.id = k.device_id
                    WHERE d.device_key = $1 AND k.suite = $2 ORDER BY k.id LIMIT 1
                    FOR UPDATE OF k SKIP LOCKED)
                 RETURNING data",
                &[&&device_key[..], &suite],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn set_hybrid_key(&self, device: DeviceId, key: &[u8]) -> StorageResult<()> {
        self.tx(|t| {
            t.execute(
                "UPDATE devices SET hybrid_key = $2 WHERE id = $1",
                &[&device, &key],
            )?;
            Ok(())
        })
    }

    fn hybrid_keys(&self, device_keys: &[Key32]) -> StorageResult<Vec<(Key32, Vec<u8>)>> {
        let keys: Vec<&[u8]> = device_keys.iter().map(|k| &k[..]).collect();
        self.read(|c| {
            let mut found: HashMap<Key32, Vec<u8>> = HashMap::new();
            for r in c.query(
                "SELECT device_key, hybrid_key FROM devices WHERE device_key = ANY($1) AND hybrid_key IS NOT NULL",
                &[&keys],
            )? {
                found.insert(key32(r.get(0))?, r.get(1));
            }
            // In the order asked (as the SQLite backend answers).
            Ok(device_keys
                .iter()
                .filter_map(|k| found.get(k).map(|h| (*k, h.clone())))
                .collect())
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
        let id: ChannelId = rand::random();
        self.tx(|t| {
            let mut ids = vec![creator];
            for m in members {
                let a = account_id_by_identity(t, m)?;
                if blocks(t, a, creator)? {
                    return Err(StorageError::Forbidden(
                        "this user does not accept invitations from you".into(),
                    )
                    .into());
                }
                if !ids.contains(&a) {
                    ids.push(a);
                }
            }
            let dm_key = match kind {
                ChannelKind::Dm => {
                    if ids.len() != 2 {
                        return Err(StorageError::Invalid(
                            "a DM needs exactly one other member".into(),
                        )
                        .into());
                    }
                    let (lo, hi) = (ids[0].min(ids[1]), ids[0].max(ids[1]));
                    let key = format!("{lo}:{hi}");
                    let existing = t
                        .query_opt(
                            "SELECT id FROM channels WHERE dm_key = $1 FOR UPDATE",
                            &[&key],
                        )?
                        .map(|r| r.get::<_, Vec<u8>>(0));
                    if let Some(eid) = existing {
                        let eid = id16(eid)?;
                        let ch = channel_row(t, &eid, "")?.ok_or(StorageError::NotFound("channel"))?;
                        let mut both = true;
                        for a in &ids {
                            both &= member_check(t, &eid, *a)?;
                        }
                        if both {
                            return Ok((ch, false));
                        }
                        t.execute(
                            "UPDATE channels SET dm_key = NULL WHERE id = $1",
                            &[&&eid[..]],
                        )?;
                    }
                    Some(key)
                }
                ChannelKind::Group => None,
            };
            t.execute(
                "INSERT INTO channels(id, kind, dm_key, metadata, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&&id[..], &(kind as i16), &dm_key, &metadata, &(now as i64)],
            )?;
            for a in &ids {
                t.execute(
                    "INSERT INTO channel_members(channel_id, account_id, admin) VALUES ($1, $2, $3)",
                    &[&&id[..], a, &(*a == creator)],
                )?;
            }
            Ok((
                Channel {
                    id,
                    kind,
                    epoch: 0,
                    metadata: metadata.to_vec(),
                },
                true,
            ))
        })
    }

    fn channel(&self, id: &ChannelId) -> StorageResult<Option<Channel>> {
        self.read(|c| channel_row(c, id, ""))
    }

    fn is_member(&self, channel: &ChannelId, account: AccountId) -> StorageResult<bool> {
        self.read(|c| member_check(c, channel, account))
    }

    fn members(&self, channel: &ChannelId) -> StorageResult<Vec<Member>> {
        self.read(|c| {
            let rows = c.query(
                "SELECT a.id, a.identity_key, a.username FROM channel_members m JOIN accounts a ON a.id = m.account_id
                 WHERE m.channel_id = $1 AND NOT m.leaving ORDER BY a.username",
                &[&&channel[..]],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let id: AccountId = r.get(0);
                let mut device_keys = Vec::new();
                for d in c.query(
                    "SELECT device_key FROM devices WHERE account_id = $1 ORDER BY id",
                    &[&id],
                )? {
                    device_keys.push(key32(d.get(0))?);
                }
                out.push(Member {
                    identity_key: key32(r.get(1))?,
                    username: r.get(2),
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
        self.tx(|t| {
            channel_row(t, channel, "FOR UPDATE")?.ok_or(StorageError::NotFound("channel"))?;
            if !member_check(t, channel, by)? {
                return Err(StorageError::Forbidden("not a member of the channel".into()).into());
            }
            let id = account_id_by_identity(t, member)?;
            if id != by {
                return Err(StorageError::Forbidden(
                    "RemoveMember removes only the caller; others leave a group through a commit"
                        .into(),
                )
                .into());
            }
            let n = t.execute(
                "UPDATE channel_members SET leaving = true WHERE channel_id = $1 AND account_id = $2 AND NOT leaving",
                &[&&channel[..], &id],
            )?;
            if n == 0 {
                return Err(StorageError::NotFound("member").into());
            }
            Ok(())
        })
    }

    fn set_metadata(
        &self,
        channel: &ChannelId,
        by: AccountId,
        metadata: &[u8],
    ) -> StorageResult<()> {
        self.tx(|t| {
            channel_row(t, channel, "FOR UPDATE")?.ok_or(StorageError::NotFound("channel"))?;
            if !member_check(t, channel, by)? {
                return Err(StorageError::Forbidden("not a member of the channel".into()).into());
            }
            t.execute(
                "UPDATE channels SET metadata = $2 WHERE id = $1",
                &[&&channel[..], &metadata],
            )?;
            Ok(())
        })
    }

    fn set_block(
        &self,
        blocker: AccountId,
        blocked: &Key32,
        on: bool,
        now_ms: u64,
    ) -> StorageResult<()> {
        self.tx(|t| {
            let id = account_id_by_identity(t, blocked)?;
            if id == blocker {
                return Err(StorageError::Invalid("an account cannot block itself".into()).into());
            }
            if on {
                t.execute(
                    "INSERT INTO blocks(blocker, blocked, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&blocker, &id, &(now_ms as i64)],
                )?;
            } else {
                t.execute(
                    "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2",
                    &[&blocker, &id],
                )?;
            }
            Ok(())
        })
    }

    fn blocked(&self, blocker: AccountId) -> StorageResult<Vec<(Key32, String)>> {
        self.read(|c| {
            let mut out = Vec::new();
            for r in c.query(
                "SELECT a.identity_key, a.username FROM blocks b JOIN accounts a ON a.id = b.blocked
                 WHERE b.blocker = $1 ORDER BY a.username",
                &[&blocker],
            )? {
                out.push((key32(r.get(0))?, r.get(1)));
            }
            Ok(out)
        })
    }

    fn group_info(&self, channel: &ChannelId) -> StorageResult<Option<(u64, Bytes)>> {
        self.read(|c| group_info_row(c, channel))
    }

    fn enqueue(&self, op: EnqueueOp) -> StorageResult<EnqueueOutcome> {
        // A racing duplicate (same sender device and message id through another node) fails
        // on the idempotency key and is retried: the retry answers as a duplicate.
        self.tx(|t| enqueue_tx(t, &op))
    }

    fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
        channel: Option<ChannelId>,
    ) -> StorageResult<(Vec<QueuedMessage>, bool)> {
        let ch: Option<Vec<u8>> = channel.map(|c| c.to_vec());
        self.read(|c| {
            let rows = c.query(
                "SELECT q.seq, q.channel_id, p.sender_device, p.message_id, p.data, p.created_ms, p.kind
                 FROM queue q JOIN payloads p ON p.id = q.payload_id
                 WHERE q.device_id = $1 AND q.seq > $2 AND ($3::BYTEA IS NULL OR q.channel_id = $3)
                 ORDER BY q.seq LIMIT $4",
                &[&device, &(after_seq as i64), &ch, &(limit as i64 + 1)],
            )?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for r in rows {
                let m = QueuedMessage {
                    seq: r.get::<_, i64>(0) as u64,
                    channel_id: id16(r.get(1))?,
                    sender_device: key32(r.get(2))?,
                    message_id: Bytes::from(r.get::<_, Vec<u8>>(3)),
                    payload: Bytes::from(r.get::<_, Vec<u8>>(4)),
                    server_time_ms: r.get::<_, i64>(5) as u64,
                    kind: r.get(6),
                };
                bytes += m.payload.len() + FETCH_OVERHEAD;
                if out.len() == limit || (bytes > max_bytes && !out.is_empty()) {
                    return Ok((out, true));
                }
                out.push(m);
            }
            Ok((out, false))
        })
    }

    fn peek(&self, device: DeviceId, channel: Option<ChannelId>) -> StorageResult<(u64, u64)> {
        let ch: Option<Vec<u8>> = channel.map(|c| c.to_vec());
        self.read(|c| {
            let r = c.query_one(
                "SELECT count(*), coalesce(max(seq), 0)::BIGINT FROM queue WHERE device_id = $1 AND ($2::BYTEA IS NULL OR channel_id = $2)",
                &[&device, &ch],
            )?;
            Ok((r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
        })
    }

    fn ack(&self, device: DeviceId, up_to_seq: u64, seqs: &[u64]) -> StorageResult<u64> {
        let seqs: Vec<i64> = seqs.iter().map(|s| *s as i64).collect();
        self.tx(|t| {
            let mut gone: Vec<(i64, i64)> = Vec::new();
            for r in t.query(
                "DELETE FROM queue WHERE device_id = $1 AND (seq <= $2 OR seq = ANY($3))
                 RETURNING payload_id, bytes",
                &[&device, &(up_to_seq as i64), &seqs],
            )? {
                gone.push((r.get(0), r.get(1)));
            }
            let removed = gone.len() as i64;
            let bytes: i64 = gone.iter().map(|g| g.1).sum();
            if removed > 0 {
                t.execute(
                    "UPDATE device_queues SET len = greatest(len - $2, 0), bytes = greatest(bytes - $3, 0) WHERE device_id = $1",
                    &[&device, &removed, &bytes],
                )?;
            }
            let ids: Vec<i64> = gone.iter().map(|g| g.0).collect();
            gc_payloads(t, &ids)?;
            Ok(removed as u64)
        })
    }

    fn queue_depth(&self) -> StorageResult<u64> {
        self.read(|c| {
            let n: i64 = c
                .query_one(
                    "SELECT coalesce(sum(len), 0)::BIGINT FROM device_queues",
                    &[],
                )?
                .get(0);
            Ok(n.max(0) as u64)
        })
    }

    fn put_blob_chunk(&self, chunk: BlobChunk, max_size: u64) -> StorageResult<u64> {
        let ch = &chunk.channel_id[..];
        let sha = &chunk.sha256[..];
        self.tx(|t| {
            channel_row(t, &chunk.channel_id, "FOR SHARE")?
                .ok_or(StorageError::NotFound("channel"))?;
            if !member_check(t, &chunk.channel_id, chunk.account_id)? {
                return Err(StorageError::Forbidden("not a member of the channel".into()).into());
            }
            if chunk.total_size > max_size {
                return Err(
                    StorageError::Limit(format!("blobs are limited to {max_size} bytes")).into(),
                );
            }
            // One upload step of an account at a time (the quota holds under concurrency).
            t.execute(
                "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE",
                &[&chunk.account_id],
            )?;
            let existing = t
                .query_opt(
                    "SELECT total_size, received, complete FROM blobs WHERE channel_id = $1 AND sha256 = $2 FOR UPDATE",
                    &[&ch, &sha],
                )?
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, bool>(2)));
            let received = match existing {
                Some((_, received, true)) => return Ok(received as u64),
                Some((total, received, false)) => {
                    if total as u64 != chunk.total_size {
                        return Err(StorageError::Invalid(
                            "total_size differs from the first chunk".into(),
                        )
                        .into());
                    }
                    received as u64
                }
                None => {
                    let used: i64 = t
                        .query_one(
                            "SELECT coalesce(sum(total_size), 0)::BIGINT FROM blobs WHERE uploader = $1",
                            &[&chunk.account_id],
                        )?
                        .get(0);
                    if (used.max(0) as u64).saturating_add(chunk.total_size) > chunk.quota {
                        return Err(StorageError::Limit(format!(
                            "blob quota reached: {used} of {} bytes in use (incomplete uploads count; they expire)",
                            chunk.quota
                        ))
                        .into());
                    }
                    t.execute(
                        "INSERT INTO blobs(channel_id, sha256, uploader, total_size, received, complete, created_ms)
                         VALUES ($1, $2, $3, $4, 0, false, $5)",
                        &[&ch, &sha, &chunk.account_id, &(chunk.total_size as i64), &(chunk.now_ms as i64)],
                    )?;
                    0
                }
            };
            if chunk.offset != received {
                return Err(StorageError::Invalid(format!(
                    "expected offset {received}, got {}",
                    chunk.offset
                ))
                .into());
            }
            let new_received = received + chunk.data.len() as u64;
            if new_received > chunk.total_size {
                return Err(StorageError::Invalid("chunk goes past total_size".into()).into());
            }
            t.execute(
                "INSERT INTO blob_chunks(channel_id, sha256, off, data) VALUES ($1, $2, $3, $4)",
                &[&ch, &sha, &(chunk.offset as i64), &&chunk.data[..]],
            )?;
            t.execute(
                "UPDATE blobs SET received = $3 WHERE channel_id = $1 AND sha256 = $2",
                &[&ch, &sha, &(new_received as i64)],
            )?;
            Ok(new_received)
        })
    }

    fn blob_sha256(&self, channel: &ChannelId, sha256: &Key32) -> StorageResult<Key32> {
        self.read(|c| {
            let mut h = Sha256::new();
            let mut from = -1i64;
            // Chunk by chunk in pages, so a large blob is never held whole.
            loop {
                let rows = c.query(
                    "SELECT off, data FROM blob_chunks WHERE channel_id = $1 AND sha256 = $2 AND off > $3
                     ORDER BY off LIMIT 16",
                    &[&&channel[..], &&sha256[..], &from],
                )?;
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    from = r.get(0);
                    h.update(r.get::<_, &[u8]>(1));
                }
            }
            Ok(h.finalize().into())
        })
    }

    fn finish_blob(&self, channel: &ChannelId, sha256: &Key32, valid: bool) -> StorageResult<()> {
        self.tx(|t| {
            if valid {
                t.execute(
                    "UPDATE blobs SET complete = true WHERE channel_id = $1 AND sha256 = $2",
                    &[&&channel[..], &&sha256[..]],
                )?;
            } else {
                t.execute(
                    "DELETE FROM blobs WHERE channel_id = $1 AND sha256 = $2",
                    &[&&channel[..], &&sha256[..]],
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
        self.tx(|t| {
            let mut report = PurgeReport::default();
            let cut = now_ms.saturating_sub(message_ttl_ms) as i64;
            let old: Vec<i64> = t
                .query(
                    "SELECT id FROM payloads WHERE created_ms < $1 ORDER BY created_ms LIMIT $2",
                    &[&cut, &(batch as i64)],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let gone: Vec<(DeviceId, i64)> = t
                .query(
                    "DELETE FROM queue WHERE payload_id = ANY($1) RETURNING device_id, bytes",
                    &[&old],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            report.queue_entries = gone.len() as u64;
            release_counters(t, &gone)?;
            report.payloads = t.execute("DELETE FROM payloads WHERE id = ANY($1)", &[&old])?;
            report.enqueue_ids = t.execute(
                "DELETE FROM enqueue_ids WHERE (sender_device, message_id) IN
                 (SELECT sender_device, message_id FROM enqueue_ids WHERE created_ms < $1 LIMIT $2)",
                &[&cut, &(batch as i64)],
            )?;
            let blob_cut = now_ms.saturating_sub(blob_ttl_ms) as i64;
            report.incomplete_blobs = t.execute(
                "DELETE FROM blobs WHERE (channel_id, sha256) IN
                 (SELECT channel_id, sha256 FROM blobs WHERE NOT complete AND created_ms < $1 LIMIT $2)",
                &[&blob_cut, &(batch as i64)],
            )?;
            Ok(report)
        })
    }

    fn set_last_resort_key_package(
        &self,
        device: DeviceId,
        suite: u32,
        package: NewKeyPackage,
    ) -> StorageResult<()> {
        let suite = i64::from(suite);
        self.tx(|t| {
            t.execute(
                "INSERT INTO last_resort_key_packages(device_id, suite, data) VALUES ($1, $2, $3)
                 ON CONFLICT(device_id, suite) DO UPDATE SET data = excluded.data",
                &[&device, &suite, &&package.data[..]],
            )?;
            Ok(())
        })
    }

    fn last_resort_key_package(
        &self,
        device_key: &Key32,
        suite: u32,
    ) -> StorageResult<Option<Vec<u8>>> {
        let suite = i64::from(suite);
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT k.data FROM last_resort_key_packages k JOIN devices d ON d.id = k.device_id
                 WHERE d.device_key = $1 AND k.suite = $2",
                &[&&device_key[..], &suite],
            )?
            .map(|r| r.get(0)))
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
                .query_opt(
                    "SELECT total_size FROM blobs WHERE channel_id = $1 AND sha256 = $2 AND complete",
                    &[&&channel[..], &&sha256[..]],
                )?
                .map(|r| r.get(0))
                .ok_or(StorageError::NotFound("blob"))?;
            let total = total as u64;
            if offset > total {
                return Err(StorageError::Invalid(format!(
                    "offset {offset} is past the end ({total})"
                ))
                .into());
            }
            let end = offset.saturating_add(len).min(total);
            let rows = c.query(
                "SELECT off, data FROM blob_chunks WHERE channel_id = $1 AND sha256 = $2
                 AND off < $4 AND off + length(data) > $3 ORDER BY off",
                &[&&channel[..], &&sha256[..], &(offset as i64), &(end as i64)],
            )?;
            let mut out = Vec::with_capacity((end - offset) as usize);
            for r in rows {
                let start = r.get::<_, i64>(0) as u64;
                let d: &[u8] = r.get(1);
                let from = offset.saturating_sub(start) as usize;
                let to = ((end - start) as usize).min(d.len());
                out.extend_from_slice(&d[from..to]);
            }
            Ok((out, total))
        })
    }
}
