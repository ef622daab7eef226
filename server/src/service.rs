//! Request handling: authentication, rate limits, validation and every implemented method.
//! Transport-free: the listener hands it decoded frames and a push channel per connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use qpq_crypto::opaque::OpaqueSuite;
use qpq_crypto::opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use qpq_proto::frame::{Push, Request, Response};
use qpq_proto::{method, v1, Status};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};

use crate::config::Config;
use crate::key_package::{self, KeyPackageError};
use crate::limits::{FailureWindow, RateLimiter};
use crate::metrics::Metrics;
mod batch;

pub use batch::BATCH_MAX;

use crate::storage::{
    AccountId, BlobChunk, ChannelId, ChannelKind, DeviceId, EnqueueOp, Key32, NewKeyPackage,
    PurgeReport, QueuedMessage, Session, Storage, StorageError,
};

/// Payloads up to this size travel inside the push event; larger ones are fetched.
const PUSH_INLINE_MAX: usize = 64 * 1024;
/// Most messages one Fetch returns.
const FETCH_MAX: usize = 1000;
/// What a Fetch response frame adds besides its messages: the response header (9) and the
/// `more` flag (2), rounded up.
const FETCH_FRAME_OVERHEAD: usize = 64;
/// Largest DownloadBlob chunk.
const BLOB_CHUNK_MAX: u64 = 1024 * 1024;
/// (requester device, target device) pairs whose KeyPackage fetch bucket is remembered at
/// most (about 16 MiB); see [`RateLimiter`] for what is forgotten first.
const KEY_PACKAGE_FETCH_PAIRS_MAX: usize = 250_000;
/// Largest channel metadata.
const METADATA_MAX: usize = 64 * 1024;
/// How long a LoginStart state waits for its LoginFinish.
const LOGIN_TTL: Duration = Duration::from_secs(60);
/// How long a sender refused for a full queue is told to wait (and is refused in memory,
/// without a storage transaction, unless the full device acks first).
const QUEUE_FULL_RETRY: Duration = Duration::from_secs(1);
/// Sessions cached at most (a shortcut, never the truth: a miss reads the database).
const SESSION_CACHE_MAX: usize = 100_000;
/// Token hashes the database did not know, remembered at most (item 22: a flood of random
/// tokens costs one database read per token, not per request).
const UNKNOWN_TOKENS_MAX: usize = 100_000;
/// How long an unknown token hash is answered from memory.
const UNKNOWN_TOKEN_TTL: Duration = Duration::from_secs(60);
/// How often expired sessions (and username tombstones) are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(600);
/// How long a storage-room check (free disk, store size) is reused.
const ROOM_CHECK_EVERY: Duration = Duration::from_millis(200);
/// Rows of each kind one purge transaction deletes at most.
const PURGE_BATCH: usize = 5_000;
/// KeyPackages all requesters together may take of one device in a burst before only its
/// last-resort KeyPackage is served (refill: `key_package_fetch_refill_ms` per token).
const KEY_PACKAGE_TARGET_BURST: f64 = 40.0;

/// A failed request: the status and a message for the client (never a secret).
#[derive(Debug)]
pub struct Fail {
    status: Status,
    message: String,
    retry_after_ms: u64,
}

impl Fail {
    fn new(status: Status, message: impl Into<String>) -> Fail {
        Fail {
            status,
            message: message.into(),
            retry_after_ms: 0,
        }
    }
    fn bad(message: impl Into<String>) -> Fail {
        Fail::new(Status::BadRequest, message)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Fail {
        if let StorageError::QueueFull { message, .. } = &e {
            return Fail {
                status: Status::RateLimited,
                message: message.clone(),
                retry_after_ms: QUEUE_FULL_RETRY.as_millis() as u64,
            };
        }
        let status = match &e {
            StorageError::QueueFull { .. } => Status::RateLimited,
            StorageError::NotFound(_) => Status::NotFound,
            StorageError::Conflict(_) => Status::Conflict,
            StorageError::Forbidden(_) | StorageError::Limit(_) => Status::Forbidden,
            StorageError::Invalid(_) => Status::BadRequest,
            StorageError::Full => Status::Unavailable,
            StorageError::Backend(detail) => {
                tracing::error!(error = %detail, "storage failure");
                Status::Internal
            }
        };
        Fail::new(status, e.to_string())
    }
}

impl From<prost::DecodeError> for Fail {
    fn from(e: prost::DecodeError) -> Fail {
        Fail::bad(format!("malformed request: {e}"))
    }
}

type Reply = Result<Vec<u8>, Fail>;

fn ok<M: Message>(m: M) -> Reply {
    Ok(m.encode_to_vec())
}

/// Keeps one call counted as in flight; dropping it ends the call.
pub struct CallGuard(Arc<Service>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Opens a connection's push queue (and whatever writes it); called at most once.
type OpenPush = Box<dyn Fn() -> mpsc::Sender<Push> + Send + Sync>;

/// Where a connection's push events go. The queue (and the listener's task that writes it)
/// is made on the first push, so a connection that never gets one pays for neither (M1).
pub struct PushSink {
    tx: std::sync::OnceLock<mpsc::Sender<Push>>,
    open: Option<OpenPush>,
}

impl PushSink {
    /// The queue, opened now if this is the first push; None if it cannot be opened.
    fn sender(&self) -> Option<&mpsc::Sender<Push>> {
        match &self.open {
            Some(open) => Some(self.tx.get_or_init(open)),
            None => self.tx.get(),
        }
    }

    /// Whether the queue has been opened (a test and metrics aid).
    pub fn is_open(&self) -> bool {
        self.tx.get().is_some()
    }
}

/// What the service knows of the connection a call arrived on.
pub struct CallContext {
    /// Remote address.
    pub peer: SocketAddr,
    /// Unique per connection.
    pub conn_id: u64,
    /// Where push events for this connection go.
    pub push: Arc<PushSink>,
    /// Push payload bytes queued on `push` and not yet written (item 25: capped per
    /// connection; pushes past the cap are dropped, the client fetches).
    pub push_queued: Arc<AtomicUsize>,
}

impl CallContext {
    /// A context for a connection from `peer` whose pushes go to `push` (a queue made up
    /// front).
    pub fn new(peer: SocketAddr, conn_id: u64, push: mpsc::Sender<Push>) -> CallContext {
        let tx = std::sync::OnceLock::new();
        let _ = tx.set(push);
        CallContext {
            peer,
            conn_id,
            push: Arc::new(PushSink { tx, open: None }),
            push_queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A context whose push queue is made by `open` on the first push (the listener's).
    pub fn lazy(
        peer: SocketAddr,
        conn_id: u64,
        push_queued: Arc<AtomicUsize>,
        open: impl Fn() -> mpsc::Sender<Push> + Send + Sync + 'static,
    ) -> CallContext {
        CallContext {
            peer,
            conn_id,
            push: Arc::new(PushSink {
                tx: std::sync::OnceLock::new(),
                open: Some(Box::new(open)),
            }),
            push_queued,
        }
    }
}

/// A connection that made a call with a session token: pushes for the token's device go to
/// it until the connection closes or that session ends; `queued` counts the bytes waiting in
/// its push queue (shared by every session of the connection).
struct Pusher {
    conn_id: u64,
    token_hash: Key32,
    sink: Arc<PushSink>,
    queued: Arc<AtomicUsize>,
}

/// Push channels of each logged-in device, one per (connection, session).
type PushRegistry = HashMap<DeviceId, Vec<Pusher>>;

struct PendingLogin {
    state: ServerLogin<OpaqueSuite>,
    account: Option<AccountId>,
    username: String,
    ip: IpAddr,
    /// Exempt from the per-username limits (started by a device holding a session).
    exempt: bool,
    created: Instant,
}

/// A pending login taken out of the table by its finish: `account` is set when the KE3
/// verified (the password was right).
struct FinishedLogin {
    account: Option<AccountId>,
    username: String,
    ip: IpAddr,
    exempt: bool,
}

/// Sessions resolved recently (a shortcut, never the truth), token hashes the database did
/// not know, and a generation bumped by every change to the sessions table.
///
/// Item 2 (revocation race): a lookup that missed reads the database and may cache what it
/// read only if the generation did not move meanwhile. Every path that ends sessions commits
/// to the database first, then (under this lock) drops matching entries and bumps the
/// generation. So an entry read before the commit is either dropped by that step or never
/// inserted, and a call arriving after the answer reads the committed state.
#[derive(Default)]
struct SessionCache {
    live: HashMap<Key32, Session>,
    unknown: HashMap<Key32, Instant>,
    generation: u64,
}

/// The server's request handler and shared state.
pub struct Service {
    store: Arc<dyn Storage>,
    config: Config,
    opaque: ServerSetup<OpaqueSuite>,
    /// A well-formed, unusable credential record: LoginStart for an unknown username parses it
    /// so both paths do the same work (A-6: no timing difference to enumerate usernames by).
    decoy_record: Vec<u8>,
    logins: Mutex<HashMap<[u8; 16], PendingLogin>>,
    /// Senders refused because a recipient's queue is full, by (sender account, channel): the
    /// full device and until when the refusal stands. Cleared for a device when it acks.
    queue_full: Mutex<HashMap<(AccountId, ChannelId), (DeviceId, Instant)>>,
    /// Sessions resolved recently, by token hash. This process is the only writer of the
    /// sessions table, and every path that ends a session also drops it here.
    sessions: Mutex<SessionCache>,
    waiters: Mutex<HashMap<DeviceId, Arc<Waiter>>>,
    /// Sweeps so far: a FetchWait woken by a sweep alone tells a lost wake-up apart.
    sweeps: AtomicU64,
    /// Cross-node wake-ups (PostgreSQL deployments): rung after each enqueue's commit.
    wake: std::sync::OnceLock<Arc<dyn crate::wake::Wake>>,
    pushers: Mutex<PushRegistry>,
    /// Counters for the metrics endpoint.
    pub metrics: Arc<Metrics>,
    account_limiter: RateLimiter<AccountId>,
    ip_limiter: RateLimiter<IpAddr>,
    /// Item 22: every request per IP address, before the session lookup.
    request_ip_limiter: RateLimiter<IpAddr>,
    /// Item 23: Health per IP address.
    health_ip_limiter: RateLimiter<IpAddr>,
    /// Items 4-5: login attempts (LoginStarts not yet followed by a successful finish) per
    /// (username, address), per address, and per username from everywhere (a token bucket).
    login_attempts_pair: FailureWindow<(String, IpAddr)>,
    login_failures_ip: FailureWindow<IpAddr>,
    login_attempts_account: RateLimiter<String>,
    registrations_ip: FailureWindow<IpAddr>,
    /// K-2: FetchKeyPackage tokens per (requester account, target device key): an account's
    /// devices share one bucket, so device churn gains nothing (item 13).
    key_package_fetches: RateLimiter<(AccountId, Key32)>,
    /// Item 13: ordinary KeyPackages all requesters together take of one device; when spent,
    /// only the last-resort KeyPackage is served, so the device stays invitable.
    key_package_target: RateLimiter<Key32>,
    /// Item 19: queue entries (messages x recipient devices) per sending account.
    fanout: RateLimiter<AccountId>,
    /// Item 21: bytes written (payloads, Welcomes, blob chunks) per account.
    write_bytes: RateLimiter<AccountId>,
    /// Item 21: the last storage-room check: (when, refusal message if no room).
    room: Mutex<(Option<Instant>, Option<String>)>,
    /// Item 24: response bytes handed to connections and not yet acknowledged, all
    /// connections together (a gauge for metrics and tests).
    pub response_bytes_buffered: AtomicUsize,
    /// Item 26: request payload bytes being received, all connections together (a gauge).
    pub request_bytes_in_flight: AtomicUsize,
    /// Item 25: push payload bytes queued for connections, all together (a gauge).
    pub push_bytes_queued: Arc<AtomicUsize>,
    fetch_waits: AtomicUsize,
    /// Connections whose push queue (and push task) exists right now (M1: made on the first
    /// push only).
    pub push_queues_open: AtomicUsize,
    /// Session lookups that reached the database (item 22's cost measure).
    session_db_reads: AtomicU64,
    started: Instant,
    draining: AtomicBool,
    shutdown: Notify,
    inflight: AtomicUsize,
    idle: Notify,
    /// Responses written and finished whose acknowledgement no task waits for (ADR 0100):
    /// the drain waits for them before the connections close.
    unacked: Mutex<Unacked>,
    next_conn: AtomicU64,
}

/// A finished response stream's acknowledgement (quinn's `SendStream::stopped`).
type AckWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The acknowledgements the drain will wait for; pruned (polled once, without a waker) when
/// the list doubled since the last prune, so each response costs O(1) amortised and no task.
#[derive(Default)]
struct Unacked {
    waits: Vec<AckWait>,
    prune_at: usize,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn key32(b: &[u8], what: &str) -> Result<Key32, Fail> {
    b.try_into()
        .map_err(|_| Fail::bad(format!("{what} must be 32 bytes, got {}", b.len())))
}

fn id16(b: &[u8], what: &str) -> Result<[u8; 16], Fail> {
    b.try_into()
        .map_err(|_| Fail::bad(format!("{what} must be 16 bytes, got {}", b.len())))
}

fn keys32(v: &[Bytes], what: &str) -> Result<Vec<Key32>, Fail> {
    v.iter().map(|b| key32(b, what)).collect()
}

/// Normalises and checks a username by the one rule client and server share
/// ([`qpq_proto::username`]: 1 to 32 of `a-z 0-9 _ . -`, case-insensitive).
fn normalize_username(u: &str) -> Result<String, Fail> {
    qpq_proto::username::normalize(u).map_err(|e| Fail::bad(e.to_string()))
}

fn token_hash(token: &[u8]) -> Key32 {
    Sha256::digest(token).into()
}

fn to_wire(m: &QueuedMessage) -> v1::QueuedMessage {
    v1::QueuedMessage {
        seq: m.seq,
        channel_id: Bytes::copy_from_slice(&m.channel_id),
        sender_device: Bytes::copy_from_slice(&m.sender_device),
        message_id: m.message_id.clone(),
        payload: m.payload.clone(),
        server_time_ms: m.server_time_ms,
        kind: m.kind,
    }
}

impl Service {
    /// Builds the service over a storage backend; loads or creates the OPAQUE server setup.
    pub fn new(store: Arc<dyn Storage>, config: Config) -> Result<Service, StorageError> {
        let stored = load_opaque_setup(store.as_ref(), &config.opaque_setup_file)?;
        let opaque = ServerSetup::<OpaqueSuite>::deserialize(&stored)
            .map_err(|_| StorageError::Backend("stored OPAQUE server setup is invalid".into()))?;
        // client public key || masking key || envelope (nonce, MAC), as ServerRegistration
        // serializes; the key is a valid point, the rest random.
        let mut decoy_record = opaque.keypair().public().serialize().to_vec();
        let mut rest = [0u8; 64 + 32 + 64];
        OsRng.fill_bytes(&mut rest);
        decoy_record.extend_from_slice(&rest);
        ServerRegistration::<OpaqueSuite>::deserialize(&decoy_record)
            .map_err(|_| StorageError::Backend("decoy credential record is invalid".into()))?;
        Ok(Service {
            decoy_record,
            account_limiter: RateLimiter::new(config.rate_limit_per_sec, config.rate_limit_burst),
            ip_limiter: RateLimiter::new(config.auth_rate_per_sec, config.auth_rate_burst),
            request_ip_limiter: RateLimiter::new(config.ip_rate_per_sec, config.ip_rate_burst),
            health_ip_limiter: RateLimiter::new(
                config.health_rate_per_sec,
                config.health_rate_burst,
            ),
            login_attempts_pair: FailureWindow::new(
                config.login_failures_per_account,
                config.login_failure_window(),
            ),
            login_attempts_account: RateLimiter::new(
                config.login_attempts_account_per_sec(),
                f64::from(config.login_attempts_account_burst),
            ),
            login_failures_ip: FailureWindow::new(
                config.login_failures_per_ip,
                config.login_failure_window(),
            ),
            registrations_ip: FailureWindow::new(
                config.registrations_per_ip,
                config.registration_window(),
            ),
            key_package_fetches: RateLimiter::bounded(
                config.key_package_fetch_per_sec(),
                f64::from(config.key_package_fetch_burst),
                KEY_PACKAGE_FETCH_PAIRS_MAX,
            ),
            key_package_target: RateLimiter::new(
                config.key_package_fetch_per_sec(),
                KEY_PACKAGE_TARGET_BURST.max(f64::from(config.key_package_fetch_burst)),
            ),
            fanout: RateLimiter::new(config.fanout_per_sec, config.fanout_burst),
            write_bytes: RateLimiter::new(config.write_bytes_per_sec, config.write_bytes_burst),
            room: Mutex::new((None, None)),
            response_bytes_buffered: AtomicUsize::new(0),
            request_bytes_in_flight: AtomicUsize::new(0),
            push_bytes_queued: Arc::new(AtomicUsize::new(0)),
            fetch_waits: AtomicUsize::new(0),
            push_queues_open: AtomicUsize::new(0),
            session_db_reads: AtomicU64::new(0),
            store,
            config,
            opaque,
            logins: Mutex::new(HashMap::new()),
            queue_full: Mutex::new(HashMap::new()),
            sessions: Mutex::new(SessionCache::default()),
            waiters: Mutex::new(HashMap::new()),
            sweeps: AtomicU64::new(0),
            wake: std::sync::OnceLock::new(),
            pushers: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            shutdown: Notify::new(),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            unacked: Mutex::new(Unacked::default()),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Installs the cross-node wake-up transport (once; later calls are ignored).
    pub fn set_wake(&self, wake: Arc<dyn crate::wake::Wake>) {
        let _ = self.wake.set(wake);
    }

    /// The cross-node wake-up transport, when one is installed.
    pub fn wake(&self) -> Option<&Arc<dyn crate::wake::Wake>> {
        self.wake.get()
    }

    /// Wakes the parked FetchWaits of these devices (they re-read their queues): what another
    /// node's doorbell asks for, and what an ended session needs.
    pub fn wake_devices(&self, devices: &[DeviceId]) {
        let w = self.lock_waiters();
        for d in devices {
            if let Some(n) = w.get(d) {
                n.wake();
            }
        }
    }

    /// Wakes every parked FetchWait (after the wake listener reconnected, at a sweep, when
    /// draining). It does not count as a wake-up aimed at a device (see [`Service::sweep`]).
    pub fn wake_all_waiters(&self) {
        let waiters: Vec<_> = self.lock_waiters().values().cloned().collect();
        for w in waiters {
            w.notify.notify_waiters();
        }
    }

    /// The periodic sweep (cross-node wake-ups on): wakes every parked FetchWait. One that
    /// then finds messages without any wake-up of its own counts in
    /// `wake_sweep_catches_total`: a doorbell lost or later than the sweep.
    pub fn sweep(&self) {
        Metrics::inc(&self.metrics.wake_sweeps_total);
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        self.wake_all_waiters();
    }

    /// The storage backend.
    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    /// Calls being handled right now (every method, every connection).
    pub fn calls_in_flight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// FetchWait calls parked waiting for a message right now.
    pub fn fetch_waits_parked(&self) -> usize {
        self.fetch_waits.load(Ordering::SeqCst)
    }

    /// Session lookups that reached the database since start (a cache or negative-cache hit
    /// does not count).
    pub fn session_db_reads(&self) -> u64 {
        self.session_db_reads.load(Ordering::Relaxed)
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the server is draining (new calls answer Unavailable).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts draining: new calls answer Unavailable and FetchWaits return at once.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.notify_waiters();
        self.wake_all_waiters();
    }

    /// Waits until no call is in flight and every response written so far is acknowledged
    /// by its client, or `timeout` passed; returns whether it got idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                if self.inflight.load(Ordering::SeqCst) != 0 {
                    return false;
                }
                break;
            }
        }
        // Calls answered Unavailable meanwhile add theirs: until none is left.
        loop {
            let waits = std::mem::take(&mut self.lock_unacked().waits);
            if waits.is_empty() {
                return true;
            }
            let all = async {
                for w in waits {
                    w.await;
                }
            };
            if tokio::time::timeout_at(deadline, all).await.is_err() {
                return false;
            }
        }
    }

    /// Records a response stream written and finished: the call is over (it no longer counts
    /// as in flight), and the drain waits for `acked` (the stream's acknowledgement) before
    /// closing connections. Nothing waits for it otherwise (ADR 0100).
    pub fn response_finished(&self, acked: impl Future<Output = ()> + Send + 'static) {
        let mut u = self.lock_unacked();
        u.waits.push(Box::pin(acked));
        if u.waits.len() >= u.prune_at {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            u.waits
                .retain_mut(|w| w.as_mut().poll(&mut cx).is_pending());
            u.prune_at = (u.waits.len() * 2).max(64);
        }
    }

    /// Response acknowledgements the drain would wait for right now (a gauge for tests;
    /// includes some already acknowledged and not yet pruned).
    pub fn responses_unacked(&self) -> usize {
        self.lock_unacked().waits.len()
    }

    fn lock_unacked(&self) -> std::sync::MutexGuard<'_, Unacked> {
        self.unacked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a closed connection's push channel.
    pub fn connection_closed(&self, conn_id: u64) {
        let mut p = self.lock_pushers();
        p.retain(|_, v| {
            v.retain(|x| x.conn_id != conn_id);
            !v.is_empty()
        });
    }

    /// Deletes what expired at `now_ms` (an injected clock in tests; the purge task passes
    /// the wall clock): undelivered messages older than `message_ttl_secs`, idempotency
    /// records as old, incomplete blob uploads older than `blob_incomplete_ttl_secs`
    /// (issue 17 items 27 and 28, D-10). Runs batches until nothing is left.
    pub async fn purge_expired_at(&self, now_ms: u64) -> Result<PurgeReport, StorageError> {
        let ttl = self.config.message_ttl_secs.saturating_mul(1000);
        let blob_ttl = self.config.blob_incomplete_ttl_secs.saturating_mul(1000);
        let mut total = PurgeReport::default();
        loop {
            let store = self.store.clone();
            let r = tokio::task::spawn_blocking(move || {
                store.purge_expired(now_ms, ttl, blob_ttl, PURGE_BATCH)
            })
            .await
            .map_err(|_| StorageError::Backend("purge task failed".into()))??;
            total.queue_entries += r.queue_entries;
            total.payloads += r.payloads;
            total.enqueue_ids += r.enqueue_ids;
            total.incomplete_blobs += r.incomplete_blobs;
            if r.queue_entries > 0 {
                // Queues shrank: senders refused for a full queue may retry at once.
                self.lock_queue_full().clear();
            }
            let rows = r.queue_entries + r.payloads + r.enqueue_ids + r.incomplete_blobs;
            self.metrics.purged_total.fetch_add(rows, Ordering::Relaxed);
            if rows == 0 {
                return Ok(total);
            }
        }
    }

    /// Answers Unavailable when storing more would cross the free-disk watermark or the
    /// store-size cap (item 21): refused cleanly, before any transaction. Checked at most
    /// every [`ROOM_CHECK_EVERY`].
    fn check_room(&self) -> Result<(), Fail> {
        let (min_free, max_store) = (self.config.min_free_disk_bytes, self.config.max_store_bytes);
        if min_free == 0 && max_store == 0 {
            return Ok(());
        }
        let mut room = self.room.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if room
            .0
            .is_none_or(|at| now.duration_since(at) >= ROOM_CHECK_EVERY)
        {
            let mut refusal = None;
            if min_free > 0 {
                if let Some(free) = free_disk_bytes(&self.config.data_dir) {
                    if free < min_free {
                        refusal = Some(format!(
                            "the server's disk is nearly full ({free} bytes free, {min_free} kept); try later"
                        ));
                    }
                }
            }
            if max_store > 0 {
                let db = self.config.db_path();
                let mut wal = db.clone().into_os_string();
                wal.push("-wal");
                let size = std::fs::metadata(&db).map_or(0, |m| m.len())
                    + std::fs::metadata(&wal).map_or(0, |m| m.len());
                if size >= max_store {
                    refusal = Some(format!(
                        "the server's store is full ({size} of {max_store} bytes); try later"
                    ));
                }
            }
            *room = (Some(now), refusal);
        }
        match &room.1 {
            None => Ok(()),
            Some(m) => Err(Fail {
                status: Status::Unavailable,
                message: m.clone(),
                retry_after_ms: 60_000,
            }),
        }
    }

    /// Takes `bytes` from the account's write budget (item 21).
    fn spend_write_bytes(&self, account: AccountId, bytes: usize) -> Result<(), Fail> {
        self.write_bytes
            .take(&account, bytes as f64)
            .map_err(|wait| {
                let mut f = self.rate_limited(wait);
                f.message = "too many bytes written; try later".into();
                f
            })
    }

    fn lock_queue_full(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(AccountId, ChannelId), (DeviceId, Instant)>> {
        self.queue_full.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, SessionCache> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that sessions changed in the database (already committed): drops cached
    /// sessions that match and bumps the generation, in one step (see [`SessionCache`]).
    /// Every path that ends (or creates) sessions calls it after its commit.
    fn sessions_changed(&self, ended: impl Fn(&Key32, &Session) -> bool) {
        let mut c = self.lock_sessions();
        c.live.retain(|h, s| !ended(h, s));
        c.generation = c.generation.wrapping_add(1);
    }

    /// Ends what sessions started besides themselves (item 3): their push registrations, and
    /// parked FetchWaits of their devices are woken to notice the session is gone.
    fn sessions_ended(&self, devices: &[DeviceId], ended: impl Fn(&Key32) -> bool) {
        {
            let mut p = self.lock_pushers();
            for d in devices {
                if let Some(v) = p.get_mut(d) {
                    v.retain(|x| !ended(&x.token_hash));
                    if v.is_empty() {
                        p.remove(d);
                    }
                }
            }
        }
        self.wake_devices(devices);
    }

    /// Item 1: a device row is gone; nothing in memory keyed by its id may outlive it (ids
    /// are never reused, and this keeps memory from holding dead devices' state).
    fn device_gone(&self, device: DeviceId) {
        self.sessions_changed(|_, s| s.device_id == device);
        self.lock_pushers().remove(&device);
        if let Some(n) = self.lock_waiters().remove(&device) {
            n.wake();
        }
        self.key_package_fetches.forget(|(d, _)| *d == device);
        self.lock_queue_full().retain(|_, (d, _)| *d != device);
    }

    /// Item 1: an account row is gone, with its devices.
    fn account_gone(&self, account: AccountId, devices: &[DeviceId]) {
        self.sessions_changed(|_, s| s.account_id == account);
        for d in devices {
            self.device_gone(*d);
        }
        self.account_limiter.forget(|a| *a == account);
        self.lock_queue_full().retain(|(a, _), _| *a != account);
        self.lock_logins().retain(|_, l| l.account != Some(account));
    }

    fn lock_logins(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], PendingLogin>> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes expired sessions (and expired username tombstones) as of `now` (Unix seconds);
    /// the server runs it every [`PURGE_INTERVAL`]. Tests pass a future `now` (an injected
    /// clock). Returns how many sessions went.
    pub async fn purge_expired_sessions_at(&self, now: u64) -> Result<u64, StorageError> {
        let store = self.store.clone();
        let n = tokio::task::spawn_blocking(move || store.purge_expired_sessions(now))
            .await
            .map_err(|_| StorageError::Backend("purge task failed".into()))??;
        // Expired entries are refused by their expiry already; dropping them from the cache
        // is only housekeeping (no generation bump: nothing live changed).
        self.lock_sessions().live.retain(|_, s| s.expires_at > now);
        Ok(n)
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Arc<Waiter>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pushers(&self) -> std::sync::MutexGuard<'_, PushRegistry> {
        self.pushers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiter(&self, device: DeviceId) -> Arc<Waiter> {
        self.lock_waiters().entry(device).or_default().clone()
    }

    /// Drops a device's waiter entry when `n` (the caller's) is the last user besides the map.
    fn release_waiter(&self, device: DeviceId, n: &Arc<Waiter>) {
        let mut w = self.lock_waiters();
        if w.get(&device).is_some_and(|m| Arc::ptr_eq(m, n)) && Arc::strong_count(n) <= 2 {
            w.remove(&device);
        }
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, Fail> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|_| Fail::new(Status::Internal, "storage task failed"))?
            .map_err(Fail::from)
    }

    /// Counts a call as in flight until the returned guard drops. The listener holds it from
    /// the first byte of a request until its response is written and finished; the drain then
    /// also waits for the response's acknowledgement ([`Service::response_finished`]), so
    /// answers reach clients, not just get computed.
    pub fn call_guard(self: &Arc<Self>) -> CallGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// Handles one request and returns its response. Never panics on bad input.
    /// (In flight accounting is the caller's: see [`Service::call_guard`].)
    pub async fn handle(&self, ctx: &CallContext, req: Request) -> Response {
        Metrics::inc(&self.metrics.requests_total);
        self.metrics.count_method(req.method);
        let request_id = req.request_id;
        let result = if self.is_draining() {
            Err(Fail::new(Status::Unavailable, "server is shutting down"))
        } else {
            self.dispatch(ctx, req).await
        };
        match result {
            Ok(payload) => Response {
                status: Status::Ok,
                request_id,
                payload: Bytes::from(payload),
            },
            Err(f) => error_response(request_id, f),
        }
    }

    async fn dispatch(&self, ctx: &CallContext, req: Request) -> Reply {
        let p = &req.payload[..];
        let ip = ctx.peer.ip();
        // Items 22-23: per-address budgets before anything costs a lookup. Health has its own
        // (small) one; every other method shares the address's request budget.
        let (limiter, per_sec) = if req.method == method::HEALTH {
            (&self.health_ip_limiter, self.config.health_rate_per_sec)
        } else {
            (&self.request_ip_limiter, self.config.ip_rate_per_sec)
        };
        if per_sec > 0.0 {
            if let Err(wait) = limiter.check(&ip) {
                return Err(self.rate_limited(wait));
            }
        }
        match req.method {
            method::HEALTH => {
                v1::HealthRequest::decode(p)?;
                return ok(v1::HealthResponse {
                    status: if self.is_draining() { "draining" } else { "ok" }.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    uptime_secs: self.started.elapsed().as_secs(),
                });
            }
            method::OPAQUE_REGISTER_START
            | method::OPAQUE_REGISTER_FINISH
            | method::OPAQUE_LOGIN_START
            | method::OPAQUE_LOGIN_FINISH => {
                if let Err(wait) = self.ip_limiter.check(&ip) {
                    return Err(self.rate_limited(wait));
                }
                // Boxed: the OPAQUE handlers' states would size every call's future (M1).
                return Box::pin(self.opaque(ip, req.method, p)).await;
            }
            m if !IMPLEMENTED.contains(&m) => {
                return Err(Fail::new(
                    Status::UnknownMethod,
                    match method::name(m) {
                        Some(n) => format!("method {m} ({n}) is not implemented by this server"),
                        None => format!("unknown method {m}"),
                    },
                ))
            }
            _ => {}
        }
        let (s, hash) = self.authenticate(ctx, p).await?;
        if let Err(wait) = self.account_limiter.check(&s.account_id) {
            return Err(self.rate_limited(wait));
        }
        if req.method == method::FETCH_WAIT {
            // Inline: a parked FetchWait is what an idle connection holds (M1), so only its
            // state is part of every call's future; the other methods' are boxed.
            Metrics::inc(&self.metrics.fetch_wait_total);
            return self
                .fetch_wait(&s, hash, v1::FetchWaitRequest::decode(p)?)
                .await;
        }
        Box::pin(self.authenticated(s, hash, &req)).await
    }

    /// The OPAQUE registration and login calls (before any session exists).
    async fn opaque(&self, ip: IpAddr, m: u16, p: &[u8]) -> Reply {
        match m {
            method::OPAQUE_REGISTER_START => {
                self.register_start(ip, v1::OpaqueRegisterStartRequest::decode(p)?)
                    .await
            }
            method::OPAQUE_REGISTER_FINISH => {
                self.register_finish(ip, v1::OpaqueRegisterFinishRequest::decode(p)?)
                    .await
            }
            method::OPAQUE_LOGIN_START => {
                let token = qpq_proto::session_token(p)?;
                self.login_start(ip, v1::OpaqueLoginStartRequest::decode(p)?, &token)
                    .await
            }
            _ => {
                self.login_finish(ip, v1::OpaqueLoginFinishRequest::decode(p)?)
                    .await
            }
        }
    }

    /// Every authenticated method but FetchWait, for session `s` (token hash `hash`).
    async fn authenticated(&self, s: Session, hash: Key32, req: &Request) -> Reply {
        let p = &req.payload[..];
        match req.method {
            method::LOGOUT => {
                self.db(move |st| st.delete_session(&hash)).await?;
                self.sessions_changed(|h, _| *h == hash);
                self.sessions_ended(&[s.device_id], |h| *h == hash);
                ok(v1::LogoutResponse {})
            }
            method::DELETE_ACCOUNT => {
                let r = v1::DeleteAccountRequest::decode(p)?;
                self.reauth(&s, r.reauth).await?;
                let devices = self.db(move |st| st.devices(s.account_id)).await?;
                let until = match self.config.username_tombstone_secs {
                    0 => 0,
                    t => now_secs().saturating_add(t),
                };
                self.db(move |st| st.delete_account(s.account_id, until))
                    .await?;
                let ids: Vec<DeviceId> = devices.iter().map(|d| d.id).collect();
                self.account_gone(s.account_id, &ids);
                ok(v1::DeleteAccountResponse {})
            }
            method::ENQUEUE => ok(self.enqueue(&s, v1::EnqueueRequest::decode(p)?).await?),
            method::BATCH_ENQUEUE => {
                self.batch_enqueue(&s, v1::BatchEnqueueRequest::decode(p)?)
                    .await
            }
            method::FETCH => {
                Metrics::inc(&self.metrics.fetch_total);
                let r = v1::FetchRequest::decode(p)?;
                let (messages, more) = self.fetch(&s, r.after_seq, r.limit, &r.channel_id).await?;
                ok(v1::FetchResponse { messages, more })
            }
            method::PEEK => {
                let r = v1::PeekRequest::decode(p)?;
                let ch = optional_channel(&r.channel_id)?;
                let (count, last_seq) = self.db(move |st| st.peek(s.device_id, ch)).await?;
                ok(v1::PeekResponse { count, last_seq })
            }
            method::ACK => {
                let r = v1::AckRequest::decode(p)?;
                if r.up_to_seq == 0 && r.seqs.is_empty() {
                    return Err(Fail::bad("nothing to ack: set up_to_seq or seqs"));
                }
                if r.seqs.len() > FETCH_MAX {
                    return Err(Fail::new(
                        Status::PayloadTooLarge,
                        format!("at most {FETCH_MAX} seqs per Ack"),
                    ));
                }
                let removed = self
                    .db(move |st| st.ack(s.device_id, r.up_to_seq, &r.seqs))
                    .await?;
                if removed > 0 {
                    self.lock_queue_full().retain(|_, (d, _)| *d != s.device_id);
                }
                ok(v1::AckResponse { removed })
            }
            method::UPLOAD_KEY_PACKAGE => {
                let r = v1::UploadKeyPackageRequest::decode(p)?;
                let n = r.key_packages.len() as u64;
                let cap = self.config.max_key_packages;
                let suite = r.ciphersuite;
                if !r.key_packages.is_empty() {
                    self.check_room()?;
                }
                let mut packages = validate_key_packages(r, &s.device_key).await?;
                // A KeyPackage with the last_resort extension replaces the device's
                // last-resort KeyPackage instead of joining the stock (item 13).
                let mut last: Vec<NewKeyPackage> = Vec::new();
                packages.retain(|p| {
                    if p.last_resort {
                        last.push(p.clone());
                    }
                    !p.last_resort
                });
                if last.len() > 1 {
                    return Err(Fail::bad("at most one last-resort KeyPackage per upload"));
                }
                if let Some(kp) = last.pop() {
                    self.db(move |st| st.set_last_resort_key_package(s.device_id, suite, kp))
                        .await?;
                }
                let stored = self
                    .db(move |st| st.add_key_packages(s.device_id, suite, packages, cap))
                    .await?;
                self.metrics
                    .key_package_upload_total
                    .fetch_add(n, Ordering::Relaxed);
                ok(v1::UploadKeyPackageResponse { stored })
            }
            method::FETCH_KEY_PACKAGE => {
                let r = v1::FetchKeyPackageRequest::decode(p)?;
                let dk = key32(&r.device_key, "device_key")?;
                let limited = self.config.key_package_fetch_burst > 0;
                if limited {
                    if let Err(wait) = self.key_package_fetches.check(&(s.account_id, dk)) {
                        let mut f = self.rate_limited(wait);
                        f.message = "too many KeyPackages fetched of that device; try later".into();
                        return Err(f);
                    }
                }
                let suite = r.ciphersuite;
                // Past the target's own budget only its last-resort KeyPackage is served, so
                // many requesters together cannot empty its stock (item 13).
                let stock_open = !limited || self.key_package_target.check(&dk).is_ok();
                let kp = if stock_open {
                    self.db(move |st| st.pop_key_package(&dk, suite)).await?
                } else {
                    None
                };
                let (kp, last_resort) = match kp {
                    Some(kp) => (kp, false),
                    None => {
                        let lr = self
                            .db(move |st| st.last_resort_key_package(&dk, suite))
                            .await?;
                        (
                            lr.ok_or_else(|| {
                                Fail::new(
                                    Status::NotFound,
                                    "no KeyPackage available for that device",
                                )
                            })?,
                            true,
                        )
                    }
                };
                ok(v1::FetchKeyPackageResponse {
                    key_package: Bytes::from(kp),
                    last_resort,
                })
            }
            method::FETCH_KEY_PACKAGES => ok(self
                .fetch_key_packages(&s, v1::FetchKeyPackagesRequest::decode(p)?)
                .await?),
            method::UPLOAD_HYBRID_KEY => {
                let r = v1::UploadHybridKeyRequest::decode(p)?;
                qpq_crypto::envelope::HybridPublicKey::from_bytes(&r.hybrid_public_key)
                    .map_err(|e| Fail::bad(format!("invalid hybrid public key: {e}")))?;
                self.db(move |st| st.set_hybrid_key(s.device_id, &r.hybrid_public_key))
                    .await?;
                ok(v1::UploadHybridKeyResponse {})
            }
            method::FETCH_HYBRID_KEY => {
                let r = v1::FetchHybridKeyRequest::decode(p)?;
                let dk = key32(&r.device_key, "device_key")?;
                let mut keys = self.db(move |st| st.hybrid_keys(&[dk])).await?;
                let (_, k) = keys
                    .pop()
                    .ok_or_else(|| Fail::new(Status::NotFound, "no hybrid key for that device"))?;
                ok(v1::FetchHybridKeyResponse {
                    hybrid_public_key: Bytes::from(k),
                })
            }
            method::FETCH_HYBRID_KEYS => {
                let r = v1::FetchHybridKeysRequest::decode(p)?;
                if r.device_keys.len() > 5000 {
                    return Err(Fail::new(
                        Status::PayloadTooLarge,
                        "at most 5000 device keys per call",
                    ));
                }
                let dks = keys32(&r.device_keys, "device_key")?;
                let keys = self.db(move |st| st.hybrid_keys(&dks)).await?;
                ok(v1::FetchHybridKeysResponse {
                    keys: keys
                        .into_iter()
                        .map(|(d, k)| v1::HybridKeyEntry {
                            device_key: Bytes::copy_from_slice(&d),
                            hybrid_public_key: Bytes::from(k),
                        })
                        .collect(),
                })
            }
            method::CREATE_CHANNEL => {
                self.create_channel(&s, v1::CreateChannelRequest::decode(p)?)
                    .await
            }
            method::REMOVE_MEMBER => {
                let r = v1::RemoveMemberRequest::decode(p)?;
                let ch = id16(&r.channel_id, "channel_id")?;
                let m = key32(&r.member, "member")?;
                if m != s.identity_key {
                    return Err(Fail::new(
                        Status::Forbidden,
                        "RemoveMember removes only the caller; others are removed by a commit",
                    ));
                }
                self.db(move |st| st.remove_member(&ch, s.account_id, &m))
                    .await?;
                ok(v1::RemoveMemberResponse {})
            }
            method::UPDATE_GROUP_METADATA => {
                let r = v1::UpdateGroupMetadataRequest::decode(p)?;
                let ch = id16(&r.channel_id, "channel_id")?;
                if r.metadata.len() > METADATA_MAX {
                    return Err(Fail::new(
                        Status::PayloadTooLarge,
                        "metadata is at most 64 KiB",
                    ));
                }
                self.db(move |st| st.set_metadata(&ch, s.account_id, &r.metadata))
                    .await?;
                ok(v1::UpdateGroupMetadataResponse {})
            }
            method::LIST_GROUP_MEMBERS => {
                let r = v1::ListGroupMembersRequest::decode(p)?;
                let ch = id16(&r.channel_id, "channel_id")?;
                let (channel, members) = self
                    .db(move |st| {
                        let c = st.channel(&ch)?.ok_or(StorageError::NotFound("channel"))?;
                        if !st.is_member(&ch, s.account_id)? {
                            return Err(StorageError::Forbidden(
                                "not a member of the channel".into(),
                            ));
                        }
                        Ok((c, st.members(&ch)?))
                    })
                    .await?;
                ok(v1::ListGroupMembersResponse {
                    members: members
                        .into_iter()
                        .map(|m| v1::GroupMember {
                            identity_key: Bytes::copy_from_slice(&m.identity_key),
                            username: m.username,
                            device_keys: m
                                .device_keys
                                .iter()
                                .map(|k| Bytes::copy_from_slice(k))
                                .collect(),
                        })
                        .collect(),
                    metadata: Bytes::from(channel.metadata),
                    epoch: channel.epoch,
                    kind: channel.kind as i32,
                })
            }
            method::BLOCK_USER | method::UNBLOCK_USER => {
                let (key, on) = if req.method == method::BLOCK_USER {
                    (v1::BlockUserRequest::decode(p)?.identity_key, true)
                } else {
                    (v1::UnblockUserRequest::decode(p)?.identity_key, false)
                };
                let key = key32(&key, "identity_key")?;
                let now = now_ms();
                self.db(move |st| st.set_block(s.account_id, &key, on, now))
                    .await?;
                if on {
                    ok(v1::BlockUserResponse {})
                } else {
                    ok(v1::UnblockUserResponse {})
                }
            }
            method::LIST_BLOCKED => {
                let users = self.db(move |st| st.blocked(s.account_id)).await?;
                ok(v1::ListBlockedResponse {
                    users: users
                        .into_iter()
                        .map(|(k, username)| v1::BlockedUser {
                            identity_key: Bytes::copy_from_slice(&k),
                            username,
                        })
                        .collect(),
                })
            }
            method::FETCH_GROUP_INFO => {
                let r = v1::FetchGroupInfoRequest::decode(p)?;
                let ch = id16(&r.channel_id, "channel_id")?;
                let (epoch, group_info) = self
                    .db(move |st| {
                        if !st.is_member(&ch, s.account_id)? {
                            return Err(StorageError::Forbidden(
                                "not a member of the channel".into(),
                            ));
                        }
                        st.group_info(&ch)?
                            .ok_or(StorageError::NotFound("group info"))
                    })
                    .await?;
                ok(v1::FetchGroupInfoResponse { group_info, epoch })
            }
            method::RESOLVE_USER => {
                let r = v1::ResolveUserRequest::decode(p)?;
                let u = normalize_username(&r.username)?;
                let (a, devices) = self
                    .db(move |st| {
                        let a = st
                            .account_by_username(&u)?
                            .ok_or(StorageError::NotFound("user"))?;
                        let d = st.devices(a.id)?;
                        Ok((a, d))
                    })
                    .await?;
                ok(v1::ResolveUserResponse {
                    identity_key: Bytes::copy_from_slice(&a.identity_key),
                    device_keys: devices
                        .iter()
                        .map(|d| Bytes::copy_from_slice(&d.device_key))
                        .collect(),
                })
            }
            method::RESOLVE_USERS => ok(self
                .resolve_users(&s, v1::ResolveUsersRequest::decode(p)?)
                .await?),
            method::RESOLVE_IDENTITY => {
                let r = v1::ResolveIdentityRequest::decode(p)?;
                let ik = key32(&r.identity_key, "identity_key")?;
                let (a, devices) = self
                    .db(move |st| {
                        let a = st
                            .account_by_identity(&ik)?
                            .ok_or(StorageError::NotFound("user"))?;
                        let d = st.devices(a.id)?;
                        Ok((a, d))
                    })
                    .await?;
                ok(v1::ResolveIdentityResponse {
                    username: a.username,
                    device_keys: devices
                        .iter()
                        .map(|d| Bytes::copy_from_slice(&d.device_key))
                        .collect(),
                })
            }
            method::UPLOAD_BLOB => {
                self.upload_blob(&s, v1::UploadBlobRequest::decode(p)?)
                    .await
            }
            method::DOWNLOAD_BLOB => {
                let r = v1::DownloadBlobRequest::decode(p)?;
                let ch = id16(&r.channel_id, "channel_id")?;
                let sha = key32(&r.sha256, "sha256")?;
                let len = if r.length == 0 {
                    BLOB_CHUNK_MAX
                } else {
                    r.length.min(BLOB_CHUNK_MAX)
                };
                let (chunk, total_size) = self
                    .db(move |st| {
                        // Absent and forbidden answer the same, so ids leak nothing.
                        if !st.is_member(&ch, s.account_id)? {
                            return Err(StorageError::NotFound("blob"));
                        }
                        st.read_blob(&ch, &sha, r.offset, len)
                    })
                    .await?;
                ok(v1::DownloadBlobResponse {
                    chunk: Bytes::from(chunk),
                    total_size,
                })
            }
            method::REGISTER_DEVICE => {
                let r = v1::RegisterDeviceRequest::decode(p)?;
                let dk = key32(&r.device_key, "device_key")?;
                self.check_key_proof(
                    &dk,
                    &qpq_proto::key_proof::register_device(&hash, &dk),
                    &r.signature,
                )?;
                let max = self.config.max_devices;
                self.db(move |st| st.add_device(s.account_id, &dk, max, now_secs()))
                    .await?;
                ok(v1::RegisterDeviceResponse {})
            }
            method::LIST_DEVICES => {
                let devices = self.db(move |st| st.devices(s.account_id)).await?;
                ok(v1::ListDevicesResponse {
                    devices: devices
                        .iter()
                        .map(|d| v1::DeviceInfo {
                            device_key: Bytes::copy_from_slice(&d.device_key),
                            created_at: d.created_at,
                            current: d.id == s.device_id,
                        })
                        .collect(),
                })
            }
            method::REVOKE_DEVICE => {
                let r = v1::RevokeDeviceRequest::decode(p)?;
                let dk = key32(&r.device_key, "device_key")?;
                if dk != s.device_key {
                    // Item 11: cutting off another device needs the password, not a token.
                    self.reauth(&s, r.reauth).await?;
                }
                let devices = self.db(move |st| st.devices(s.account_id)).await?;
                self.db(move |st| st.revoke_device(s.account_id, &dk))
                    .await?;
                self.sessions_changed(|_, x| x.device_key == dk);
                if let Some(d) = devices.iter().find(|d| d.device_key == dk) {
                    self.device_gone(d.id);
                }
                ok(v1::RevokeDeviceResponse {})
            }
            m => Err(Fail::new(
                Status::UnknownMethod,
                format!("method {m} is not implemented"),
            )),
        }
    }

    fn rate_limited(&self, wait: Duration) -> Fail {
        Metrics::inc(&self.metrics.rate_limit_hit_total);
        Fail {
            status: Status::RateLimited,
            message: "too many requests".into(),
            retry_after_ms: (wait.as_millis() as u64).max(1),
        }
    }

    async fn authenticate(
        &self,
        ctx: &CallContext,
        payload: &[u8],
    ) -> Result<(Session, Key32), Fail> {
        let token = qpq_proto::session_token(payload)?;
        if token.is_empty() {
            return Err(Fail::new(
                Status::Unauthorized,
                "this method needs a session token",
            ));
        }
        if token.len() != 32 {
            return Err(Fail::new(Status::Unauthorized, "invalid session token"));
        }
        let hash = token_hash(&token);
        let s = self.resolve_session(&hash).await?;
        self.register_pusher(s.device_id, hash, ctx);
        // Item 3: a registration made just after the session ended would outlive it. An
        // ending drops the cache entry before it drops registrations, so while the entry is
        // cached ours is covered; otherwise ask the database (after registering).
        if !self.lock_sessions().live.contains_key(&hash) {
            let now = now_secs();
            self.session_db_reads.fetch_add(1, Ordering::Relaxed);
            if self.store.clone().session_async(hash, now).await?.is_none() {
                if let Some(v) = self.lock_pushers().get_mut(&s.device_id) {
                    v.retain(|x| !(x.conn_id == ctx.conn_id && x.token_hash == hash));
                }
                return Err(Fail::new(
                    Status::Unauthorized,
                    "session expired or invalid; log in again",
                ));
            }
        }
        Ok((s, hash))
    }

    /// The live session of a token hash, from the cache or the database (see
    /// [`SessionCache`] for why a revoked token can never be cached back).
    async fn resolve_session(&self, hash: &Key32) -> Result<Session, Fail> {
        let refused = || {
            Fail::new(
                Status::Unauthorized,
                "session expired or invalid; log in again",
            )
        };
        let now = now_secs();
        let generation = {
            let c = self.lock_sessions();
            if let Some(s) = c.live.get(hash).filter(|s| s.expires_at > now) {
                return Ok(s.clone());
            }
            if c.unknown
                .get(hash)
                .is_some_and(|t| t.elapsed() < UNKNOWN_TOKEN_TTL)
            {
                return Err(refused());
            }
            c.generation
        };
        let h = *hash;
        self.session_db_reads.fetch_add(1, Ordering::Relaxed);
        let found = self.store.clone().session_async(h, now).await?;
        let mut c = self.lock_sessions();
        // Sessions changed while we read: use what we read for this call (it was read after
        // the call arrived), but do not cache it.
        let cache = c.generation == generation;
        match found {
            Some(s) => {
                if cache {
                    if c.live.len() >= SESSION_CACHE_MAX {
                        c.live.retain(|_, s| s.expires_at > now);
                        if c.live.len() >= SESSION_CACHE_MAX {
                            c.live.clear();
                        }
                    }
                    c.live.insert(*hash, s.clone());
                }
                Ok(s)
            }
            None => {
                if cache {
                    if c.unknown.len() >= UNKNOWN_TOKENS_MAX {
                        c.unknown.retain(|_, t| t.elapsed() < UNKNOWN_TOKEN_TTL);
                        if c.unknown.len() >= UNKNOWN_TOKENS_MAX {
                            c.unknown.clear();
                        }
                    }
                    c.unknown.insert(*hash, Instant::now());
                }
                Err(refused())
            }
        }
    }

    fn register_pusher(&self, device: DeviceId, token_hash: Key32, ctx: &CallContext) {
        let mut p = self.lock_pushers();
        let v = p.entry(device).or_default();
        if !v
            .iter()
            .any(|x| x.conn_id == ctx.conn_id && x.token_hash == token_hash)
        {
            v.push(Pusher {
                conn_id: ctx.conn_id,
                token_hash,
                sink: ctx.push.clone(),
                queued: ctx.push_queued.clone(),
            });
        }
    }

    /// Item 12: verifies a proof of possession (an Ed25519 signature by `key` over `message`).
    /// Without a signature it passes only when the server does not require proofs.
    fn check_key_proof(&self, key: &Key32, message: &[u8], signature: &[u8]) -> Result<(), Fail> {
        if signature.is_empty() && !self.config.require_key_proof {
            return Ok(());
        }
        if signature.is_empty() {
            return Err(Fail::bad(
                "a signature proving possession of the key is required (update the client)",
            ));
        }
        qpq_crypto::identity::verify(key, message, signature)
            .map_err(|_| Fail::bad("the key's proof of possession does not verify"))
    }

    /// Answers RateLimited when `ip` registered its quota of accounts within the window;
    /// otherwise counts this registration (check and record are one step: item 6).
    fn take_registration(&self, ip: IpAddr) -> Result<(), Fail> {
        self.registrations_ip.try_record(ip).map_err(|wait| {
            let mut f = self.rate_limited(wait);
            f.message = "too many registrations from this address; try later".into();
            f
        })
    }

    /// Items 4-5: counts a login attempt against the address, the (username, address) pair
    /// and the username's bucket (the last two unless `exempt`), all or none. It stays
    /// counted until a LoginFinish succeeds ([`Service::give_back_attempt`]).
    fn take_login_attempt(&self, ip: IpAddr, username: &str, exempt: bool) -> Result<(), Fail> {
        let limited = |this: &Self, wait: Duration| {
            let mut f = this.rate_limited(wait);
            f.message = "too many login attempts; try later".into();
            f
        };
        self.login_failures_ip
            .try_record(ip)
            .map_err(|w| limited(self, w))?;
        if exempt {
            return Ok(());
        }
        let pair = (username.to_owned(), ip);
        if let Err(w) = self.login_attempts_pair.try_record(pair.clone()) {
            self.login_failures_ip.unrecord(&ip);
            return Err(limited(self, w));
        }
        if self.config.login_attempts_account_burst > 0 {
            if let Err(w) = self.login_attempts_account.check(&pair.0) {
                self.login_failures_ip.unrecord(&ip);
                self.login_attempts_pair.unrecord(&pair);
                return Err(limited(self, w));
            }
        }
        Ok(())
    }

    /// Undoes [`Service::take_login_attempt`]: the attempt was honest.
    fn give_back_attempt(&self, ip: IpAddr, username: &str, exempt: bool) {
        self.login_failures_ip.unrecord(&ip);
        if !exempt {
            let username = username.to_owned();
            self.login_attempts_pair.unrecord(&(username.clone(), ip));
            self.login_attempts_account.refund(&username);
        }
    }

    /// Counts a failed (or abandoned) login in the metrics and logs it at the default level,
    /// so an operator watching the log sees guessing as it happens. The rate-limit budgets are
    /// charged elsewhere (at LoginStart).
    fn login_failed(&self, ip: IpAddr, username: Option<&str>) -> Fail {
        Metrics::inc(&self.metrics.auth_login_failure_total);
        tracing::warn!(%ip, username = username.unwrap_or("?"), "login failed");
        Fail::new(Status::Unauthorized, "login failed")
    }

    /// Takes a pending login (None when unknown or expired) and checks its KE3.
    fn finish_pending(&self, id: &[u8; 16], ke3: &[u8]) -> Option<FinishedLogin> {
        let pending = self.lock_logins().remove(id);
        let PendingLogin {
            state,
            account,
            username,
            ip,
            exempt,
            created,
        } = pending?;
        if created.elapsed() >= LOGIN_TTL {
            return None;
        }
        let verified = CredentialFinalization::<OpaqueSuite>::deserialize(ke3)
            .ok()
            .and_then(|ke3| state.finish(ke3, ServerLoginParameters::default()).ok())
            .is_some();
        Some(FinishedLogin {
            account: account.filter(|_| verified),
            username,
            ip,
            exempt,
        })
    }

    /// Item 11: a destructive call proves the password again with a fresh OPAQUE login of the
    /// session's account (LoginStart, then its login id and KE3 here). Answers Forbidden when
    /// the proof is missing or fails; a failed proof counts as a failed login.
    async fn reauth(&self, s: &Session, r: Option<v1::Reauth>) -> Result<(), Fail> {
        let Some(r) = r else {
            return Err(Fail::new(
                Status::Forbidden,
                "this call needs re-authentication (reauth: a fresh OPAQUE login proof)",
            ));
        };
        let id = id16(&r.login_id, "reauth.login_id")?;
        match self.finish_pending(&id, &r.ke3) {
            Some(p) if p.account == Some(s.account_id) => {
                self.give_back_attempt(p.ip, &p.username, p.exempt);
                Ok(())
            }
            Some(p) => {
                let _ = self.login_failed(p.ip, Some(&p.username));
                Err(Fail::new(Status::Forbidden, "re-authentication failed"))
            }
            None => {
                Metrics::inc(&self.metrics.auth_login_failure_total);
                Err(Fail::new(Status::Forbidden, "re-authentication failed"))
            }
        }
    }

    async fn register_start(&self, ip: IpAddr, r: v1::OpaqueRegisterStartRequest) -> Reply {
        let username = normalize_username(&r.username)?;
        self.registrations_ip.check(&ip).map_err(|wait| {
            let mut f = self.rate_limited(wait);
            f.message = "too many registrations from this address; try later".into();
            f
        })?;
        let request = RegistrationRequest::<OpaqueSuite>::deserialize(&r.registration_request)
            .map_err(|_| Fail::bad("invalid OPAQUE registration request"))?;
        // Item 8: the same answer whether or not the username is taken; a taken name fails
        // at RegisterFinish, which counts against the address's registrations.
        let start = qpq_crypto::opaque_ke::ServerRegistration::<OpaqueSuite>::start(
            &self.opaque,
            request,
            username.as_bytes(),
        )
        .map_err(|_| Fail::bad("invalid OPAQUE registration request"))?;
        ok(v1::OpaqueRegisterStartResponse {
            registration_response: Bytes::from(start.message.serialize().to_vec()),
        })
    }

    async fn register_finish(&self, ip: IpAddr, r: v1::OpaqueRegisterFinishRequest) -> Reply {
        let username = normalize_username(&r.username)?;
        let upload = RegistrationUpload::<OpaqueSuite>::deserialize(&r.registration_upload)
            .map_err(|_| Fail::bad("invalid OPAQUE registration upload"))?;
        let ik = key32(&r.identity_key, "identity_key")?;
        let dk = key32(&r.device_key, "device_key")?;
        let proof = qpq_proto::key_proof::register(
            &r.username,
            &Sha256::digest(&r.registration_upload),
            &ik,
            &dk,
        );
        self.check_key_proof(&ik, &proof, &r.identity_signature)?;
        self.check_key_proof(&dk, &proof, &r.device_signature)?;
        self.take_registration(ip)?;
        let record = ServerRegistration::<OpaqueSuite>::finish(upload)
            .serialize()
            .to_vec();
        let created = self
            .db(move |st| st.create_account(&username, &ik, &dk, &record, now_secs()))
            .await;
        if let Err(f) = created {
            // A taken name or key keeps counting (it is what enumeration would cost); a
            // failure of ours does not.
            if f.status != Status::Conflict {
                self.registrations_ip.unrecord(&ip);
            }
            return Err(f);
        }
        ok(v1::OpaqueRegisterFinishResponse {})
    }

    async fn login_start(&self, ip: IpAddr, r: v1::OpaqueLoginStartRequest, token: &[u8]) -> Reply {
        let username = normalize_username(&r.username)?;
        let ke1 = CredentialRequest::<OpaqueSuite>::deserialize(&r.ke1)
            .map_err(|_| Fail::bad("invalid OPAQUE KE1"))?;
        // A device already logged in to this account (a valid session token beside the
        // request) is exempt from the per-username limits: strangers cannot lock it out.
        let holder = if token.len() == 32 {
            self.resolve_session(&token_hash(token)).await.ok()
        } else {
            None
        };
        let account = self
            .store
            .clone()
            .account_by_username_async(username.clone())
            .await?;
        let exempt = matches!((&holder, &account), (Some(s), Some(a)) if s.account_id == a.id);
        self.take_login_attempt(ip, &username, exempt)?;
        let (password_file, account_id) = match account {
            Some(a) => (
                Some(
                    ServerRegistration::<OpaqueSuite>::deserialize(&a.opaque_record).map_err(
                        |_| Fail::new(Status::Internal, "stored credential is unreadable"),
                    )?,
                ),
                Some(a.id),
            ),
            // Unknown users get a fake, indistinguishable KE2 (RFC 9807 §10.9), after the same
            // parsing work as a real record.
            None => {
                let _ = std::hint::black_box(ServerRegistration::<OpaqueSuite>::deserialize(
                    &self.decoy_record,
                ));
                (None, None)
            }
        };
        let start = match ServerLogin::start(
            &mut OsRng,
            &self.opaque,
            password_file,
            ke1,
            username.as_bytes(),
            ServerLoginParameters::default(),
        ) {
            Ok(s) => s,
            Err(_) => {
                self.give_back_attempt(ip, &username, exempt);
                return Err(Fail::bad("invalid OPAQUE KE1"));
            }
        };
        let mut login_id = [0u8; 16];
        OsRng.fill_bytes(&mut login_id);
        {
            let mut logins = self.lock_logins();
            // A client whose password is wrong fails OPAQUE locally and may never send
            // LoginFinish: an attempt that expires unfinished is reported as a failed login
            // (its budget was already charged at LoginStart).
            let expired: Vec<(IpAddr, String)> = logins
                .values()
                .filter(|l| l.created.elapsed() >= LOGIN_TTL)
                .map(|l| (l.ip, l.username.clone()))
                .collect();
            logins.retain(|_, l| l.created.elapsed() < LOGIN_TTL);
            for (ip, username) in &expired {
                let _ = self.login_failed(*ip, Some(username));
            }
            // Item 7: each address holds at most its share of the table.
            let mine = logins.values().filter(|l| l.ip == ip).count();
            if logins.len() >= self.config.max_pending_logins
                || mine >= self.config.pending_logins_per_ip
            {
                drop(logins);
                self.give_back_attempt(ip, &username, exempt);
                return Err(Fail {
                    status: Status::RateLimited,
                    message: "too many logins in progress".into(),
                    retry_after_ms: 1000,
                });
            }
            logins.insert(
                login_id,
                PendingLogin {
                    state: start.state,
                    account: account_id,
                    username,
                    ip,
                    exempt,
                    created: Instant::now(),
                },
            );
        }
        ok(v1::OpaqueLoginStartResponse {
            login_id: Bytes::copy_from_slice(&login_id),
            ke2: Bytes::from(start.message.serialize().to_vec()),
        })
    }

    async fn login_finish(&self, ip: IpAddr, r: v1::OpaqueLoginFinishRequest) -> Reply {
        let id = id16(&r.login_id, "login_id")?;
        let dk = key32(&r.device_key, "device_key")?;
        let Some(pending) = self.finish_pending(&id, &r.ke3) else {
            // An unknown or expired login id: counts against the address.
            let _ = self.login_failures_ip.try_record(ip);
            return Err(self.login_failed(ip, None));
        };
        let Some(account) = pending.account else {
            // The attempt stays counted (LoginStart recorded it).
            return Err(self.login_failed(ip, Some(&pending.username)));
        };
        self.check_key_proof(
            &dk,
            &qpq_proto::key_proof::login_device(&id, &dk),
            &r.device_signature,
        )?;
        self.give_back_attempt(pending.ip, &pending.username, pending.exempt);
        let max = self.config.max_devices;
        let mut token = [0u8; 32];
        OsRng.fill_bytes(&mut token);
        let hash = token_hash(&token);
        let expires_at = now_secs() + self.config.session_ttl;
        let per_device = self.config.max_sessions_per_device;
        // The device and its session in one transaction (one commit per login).
        let (device, evicted) = self
            .store
            .clone()
            .login_session_async(account, dk, max, now_secs(), hash, expires_at, per_device)
            .await?;
        // Item 28: a device keeps at most max_sessions_per_device sessions.
        self.sessions_changed(|h, _| evicted.contains(h));
        self.lock_sessions().unknown.remove(&hash);
        self.sessions_ended(&[device], |h| evicted.contains(h));
        Metrics::inc(&self.metrics.auth_login_success_total);
        ok(v1::OpaqueLoginFinishResponse {
            session_token: Bytes::copy_from_slice(&token),
            expires_at,
        })
    }

    async fn enqueue(
        &self,
        s: &Session,
        r: v1::EnqueueRequest,
    ) -> Result<v1::EnqueueResponse, Fail> {
        let channel_id = id16(&r.channel_id, "channel_id")?;
        let message_id = id16(&r.message_id, "message_id")?;
        if r.payload.is_empty() {
            return Err(Fail::bad("payload is empty"));
        }
        let max = self.config.max_message_bytes;
        if r.payload.len() > max || r.welcome.len() > max {
            return Err(Fail::new(
                Status::PayloadTooLarge,
                format!("messages are limited to {max} bytes"),
            ));
        }
        let kind =
            v1::MessageKind::try_from(r.kind).map_err(|_| Fail::bad("unknown message kind"))?;
        let is_commit = kind == v1::MessageKind::Commit;
        if is_commit != r.commit_epoch.is_some() {
            return Err(Fail::bad(
                "commit_epoch is required for commits and only for commits",
            ));
        }
        if !is_commit
            && (!r.add_members.is_empty()
                || !r.remove_members.is_empty()
                || !r.promote_members.is_empty()
                || !r.welcome.is_empty()
                || !r.group_info.is_empty())
        {
            return Err(Fail::bad(
                "membership changes, Welcomes and GroupInfos travel only with commits",
            ));
        }
        let mut external = false;
        let mut group_info = None;
        if is_commit {
            let epoch = r.commit_epoch.unwrap_or(0);
            external = check_commit_framing(&r.payload, &channel_id, epoch)?;
            if !r.group_info.is_empty() {
                check_group_info(&r.group_info, &channel_id, epoch.saturating_add(1))?;
                group_info = Some(r.group_info.clone());
            }
            if external
                && (group_info.is_none()
                    || !r.add_members.is_empty()
                    || !r.remove_members.is_empty()
                    || !r.promote_members.is_empty()
                    || !r.welcome.is_empty())
            {
                return Err(Fail::bad(
                    "an external commit carries its GroupInfo and no membership change",
                ));
            }
        }
        self.check_room()?;
        // Item 19: a message fans out to many queues; it passes only while the sender's
        // fan-out budget is not in debt, and pays for every queue entry it made.
        if let Err(wait) = self.fanout.take(&s.account_id, 1.0) {
            let mut f = self.rate_limited(wait);
            f.message = "too many messages x recipients; try later".into();
            return Err(f);
        }
        self.spend_write_bytes(s.account_id, r.payload.len() + r.welcome.len())?;
        let bytes = r.payload.len() as u64;
        let share = self.config.max_queue_share_percent.clamp(1, 100);
        let op = EnqueueOp {
            sender_account: s.account_id,
            sender_device: s.device_id,
            sender_device_key: s.device_key,
            channel_id,
            message_id,
            payload: r.payload,
            kind: r.kind,
            commit_epoch: r.commit_epoch,
            add_members: keys32(&r.add_members, "add_members entry")?,
            remove_members: keys32(&r.remove_members, "remove_members entry")?,
            welcome: r.welcome,
            welcome_devices: keys32(&r.welcome_devices, "welcome_devices entry")?,
            promote_members: keys32(&r.promote_members, "promote_members entry")?,
            group_info,
            external,
            now_ms: now_ms(),
            max_queue_depth: self.config.max_queue_depth,
            max_queue_bytes: self.config.max_queue_bytes,
            max_share_depth: (self.config.max_queue_depth.saturating_mul(share) / 100).max(1),
            max_share_bytes: self.config.max_queue_bytes.saturating_mul(share) / 100,
        };
        // A sender just refused for a full queue is refused again without a transaction,
        // until the retry time or until that queue's device acks.
        let key = (s.account_id, channel_id);
        let now = Instant::now();
        if let Some((_, until)) = self.lock_queue_full().get(&key).filter(|(_, u)| *u > now) {
            return Err(Fail {
                status: Status::RateLimited,
                message: "a recipient's queue is full".into(),
                retry_after_ms: (until.duration_since(now).as_millis() as u64).max(1),
            });
        }
        let out = self.store.clone().enqueue_async(op).await;
        let out = match out {
            Err(StorageError::QueueFull { device, message }) => {
                self.lock_queue_full()
                    .insert(key, (device, now + QUEUE_FULL_RETRY));
                return Err(StorageError::QueueFull { device, message }.into());
            }
            other => other?,
        };
        if !out.duplicate {
            Metrics::inc(&self.metrics.enqueue_total);
            self.metrics
                .enqueue_bytes_total
                .fetch_add(bytes, Ordering::Relaxed);
            self.metrics
                .undelivered_total
                .fetch_add(out.undelivered.len() as u64, Ordering::Relaxed);
            // The first entry was paid for up front.
            self.fanout
                .charge(&s.account_id, out.deliveries.len().saturating_sub(1) as f64);
        }
        self.deliver(&out.deliveries);
        Ok(v1::EnqueueResponse {
            server_id: out.server_id,
            duplicate: out.duplicate,
            epoch: out.epoch,
            undelivered: out
                .undelivered
                .iter()
                .map(|k| Bytes::copy_from_slice(k))
                .collect(),
        })
    }

    /// Wakes FetchWaits and pushes `NewMessage` to connected devices.
    fn deliver(&self, deliveries: &[crate::storage::Delivery]) {
        if deliveries.is_empty() {
            return;
        }
        {
            let w = self.lock_waiters();
            for d in deliveries {
                if let Some(n) = w.get(&d.device_id) {
                    n.wake();
                }
            }
        }
        // Other nodes: the doorbell, after the commit (never inside the transaction).
        if let Some(wake) = self.wake.get() {
            let devices: Vec<DeviceId> = deliveries.iter().map(|d| d.device_id).collect();
            wake.ring(&devices);
        }
        let p = self.lock_pushers();
        let cap = self.config.max_push_bytes_per_connection as usize;
        for d in deliveries {
            let Some(conns) = p.get(&d.device_id) else {
                continue;
            };
            let mut m = to_wire(&d.message);
            let omitted = m.payload.len() > PUSH_INLINE_MAX;
            if omitted {
                m.payload = Bytes::new();
            }
            // Encoded once and shared by every connection of the device (item 25).
            let payload = Bytes::from(
                v1::NewMessage {
                    message: Some(m),
                    payload_omitted: omitted,
                }
                .encode_to_vec(),
            );
            let len = payload.len();
            let mut seen = Vec::with_capacity(conns.len());
            for t in conns {
                // One push per connection, however many of the device's sessions it used.
                if seen.contains(&t.conn_id) {
                    continue;
                }
                seen.push(t.conn_id);
                // Past the connection's push bytes, or a full or closed push queue (a slow
                // client, or one that takes no push stream): dropped; the queue is the
                // truth and the client fetches.
                if t.queued.load(Ordering::Relaxed) + len > cap {
                    Metrics::inc(&self.metrics.push_dropped_total);
                    continue;
                }
                t.queued.fetch_add(len, Ordering::Relaxed);
                self.push_bytes_queued.fetch_add(len, Ordering::Relaxed);
                let push = Push {
                    event: qpq_proto::event::NEW_MESSAGE,
                    payload: payload.clone(),
                };
                if t.sink.sender().is_some_and(|tx| tx.try_send(push).is_ok()) {
                    Metrics::inc(&self.metrics.push_total);
                } else {
                    t.queued.fetch_sub(len, Ordering::Relaxed);
                    self.push_bytes_queued.fetch_sub(len, Ordering::Relaxed);
                    Metrics::inc(&self.metrics.push_dropped_total);
                }
            }
        }
    }

    async fn batch_enqueue(&self, s: &Session, r: v1::BatchEnqueueRequest) -> Reply {
        if r.messages.len() > 256 {
            return Err(Fail::new(
                Status::PayloadTooLarge,
                "at most 256 messages per batch",
            ));
        }
        let mut results = Vec::with_capacity(r.messages.len());
        for (i, m) in r.messages.into_iter().enumerate() {
            // Item 19: every message of a batch is a request against the account's rate
            // (the call itself paid for the first).
            let outcome = match i {
                0 => self.enqueue(s, m).await,
                _ => match self.account_limiter.check(&s.account_id) {
                    Ok(()) => self.enqueue(s, m).await,
                    Err(wait) => Err(self.rate_limited(wait)),
                },
            };
            results.push(match outcome {
                Ok(resp) => v1::BatchEnqueueResult {
                    status: 0,
                    response: Some(resp),
                    error: None,
                },
                Err(f) => v1::BatchEnqueueResult {
                    status: u32::from(f.status.code()),
                    response: None,
                    error: Some(v1::Error {
                        code: u32::from(f.status.code()),
                        message: f.message,
                        retry_after_ms: f.retry_after_ms,
                    }),
                },
            });
        }
        ok(v1::BatchEnqueueResponse { results })
    }

    async fn fetch(
        &self,
        s: &Session,
        after: u64,
        limit: u32,
        channel: &[u8],
    ) -> Result<(Vec<v1::QueuedMessage>, bool), Fail> {
        let ch = optional_channel(channel)?;
        let limit = if limit == 0 {
            100
        } else {
            (limit as usize).min(FETCH_MAX)
        };
        let device = s.device_id;
        // Item 24: a page fits the connection's response budget (R-2), so a connection that
        // stops reading pins at most that; `more` tells the client to fetch the rest.
        let max_bytes = (self.config.max_buffered_bytes_per_connection as usize)
            .saturating_sub(FETCH_FRAME_OVERHEAD)
            .max(1);
        let (msgs, more) = self
            .store
            .clone()
            .fetch_async(device, after, limit, max_bytes, ch)
            .await?;
        Ok((msgs.iter().map(to_wire).collect(), more))
    }

    async fn fetch_wait(&self, s: &Session, hash: Key32, r: v1::FetchWaitRequest) -> Reply {
        let timeout =
            Duration::from_millis(u64::from(r.timeout_ms).min(self.config.max_fetch_wait_ms));
        let deadline = tokio::time::Instant::now() + timeout;
        let waiter = WaiterGuard {
            service: self,
            device: s.device_id,
            waiter: self.waiter(s.device_id),
        };
        // (targeted wake-ups, sweeps) when this wait last parked.
        let mut parked_at: Option<(u64, u64)> = None;
        loop {
            let woken = waiter.waiter.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let marks = (
                waiter.waiter.targeted.load(Ordering::SeqCst),
                self.sweeps.load(Ordering::SeqCst),
            );
            // Item 3: a wait outlives its session by no more than a wake-up. Every path that
            // ends sessions wakes the device's waiters after dropping them from the cache, so
            // this check (after enabling the wake-up) sees the end or is woken by it.
            self.resolve_session(&hash).await?;
            let (messages, more) = self.fetch(s, r.after_seq, r.limit, &r.channel_id).await?;
            if !messages.is_empty() || tokio::time::Instant::now() >= deadline || self.is_draining()
            {
                if let Some((targeted, sweeps)) = parked_at {
                    if !messages.is_empty() && marks.0 == targeted && marks.1 != sweeps {
                        Metrics::inc(&self.metrics.wake_sweep_catches_total);
                    }
                }
                return ok(v1::FetchResponse { messages, more });
            }
            parked_at = Some(marks);
            let _parked = Parked::new(&self.fetch_waits);
            tokio::select! {
                _ = &mut woken => {}
                _ = self.shutdown.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn create_channel(&self, s: &Session, r: v1::CreateChannelRequest) -> Reply {
        let kind = match v1::ChannelKind::try_from(r.kind) {
            Ok(v1::ChannelKind::Dm) => ChannelKind::Dm,
            Ok(v1::ChannelKind::Group) => ChannelKind::Group,
            Err(_) => return Err(Fail::bad("unknown channel kind")),
        };
        let members = keys32(&r.members, "member")?;
        if kind == ChannelKind::Dm && (members.len() != 1 || members[0] == s.identity_key) {
            return Err(Fail::bad("a DM names exactly one other member"));
        }
        if members.len() > 10_000 {
            return Err(Fail::new(
                Status::PayloadTooLarge,
                "at most 10000 initial members",
            ));
        }
        if r.metadata.len() > METADATA_MAX {
            return Err(Fail::new(
                Status::PayloadTooLarge,
                "metadata is at most 64 KiB",
            ));
        }
        self.check_room()?;
        let account = s.account_id;
        let (ch, created) = self
            .db(move |st| st.create_channel(kind, account, &members, &r.metadata, now_secs()))
            .await?;
        ok(v1::CreateChannelResponse {
            channel_id: Bytes::copy_from_slice(&ch.id),
            created,
            epoch: ch.epoch,
        })
    }

    async fn upload_blob(&self, s: &Session, r: v1::UploadBlobRequest) -> Reply {
        let ch = id16(&r.channel_id, "channel_id")?;
        let sha = key32(&r.sha256, "sha256")?;
        if r.total_size == 0 || r.chunk.is_empty() {
            return Err(Fail::bad("blobs and chunks are never empty"));
        }
        let max = self.config.max_blob_bytes;
        if r.total_size > max {
            return Err(Fail::new(
                Status::PayloadTooLarge,
                format!("blobs are limited to {max} bytes"),
            ));
        }
        self.check_room()?;
        self.spend_write_bytes(s.account_id, r.chunk.len())?;
        let chunk = BlobChunk {
            account_id: s.account_id,
            channel_id: ch,
            sha256: sha,
            total_size: r.total_size,
            offset: r.offset,
            data: r.chunk,
            now_ms: now_ms(),
            quota: self.config.blob_quota_bytes,
        };
        let total = r.total_size;
        let received = self.db(move |st| st.put_blob_chunk(chunk, max)).await?;
        let mut complete = false;
        if received == total {
            let actual = self.db(move |st| st.blob_sha256(&ch, &sha)).await?;
            let valid = actual == sha;
            self.db(move |st| st.finish_blob(&ch, &sha, valid)).await?;
            if !valid {
                return Err(Fail::bad(
                    "SHA-256 of the uploaded bytes does not match; the upload was discarded",
                ));
            }
            complete = true;
        }
        ok(v1::UploadBlobResponse { received, complete })
    }
}

/// Name of the OPAQUE server setup in the database's `server_state`.
const OPAQUE_SETUP: &str = "opaque_server_setup";

/// Item 10: the OPAQUE server setup (its private key permits offline dictionary attacks on
/// every stored record) lives in the database unless `file` is set. With a file: read it when
/// it exists (tightened to 0600); otherwise move the database's copy there, or create one,
/// written 0600 and synced before the database copy is deleted.
fn load_opaque_setup(store: &dyn Storage, file: &std::path::Path) -> Result<Vec<u8>, StorageError> {
    let fresh = || {
        ServerSetup::<OpaqueSuite>::new(&mut OsRng)
            .serialize()
            .to_vec()
    };
    if file.as_os_str().is_empty() {
        return store.server_secret(OPAQUE_SETUP, fresh());
    }
    let io = |e: std::io::Error| {
        StorageError::Backend(format!("OPAQUE setup file {}: {e}", file.display()))
    };
    if file.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        let bytes = std::fs::read(file).map_err(io)?;
        if store.server_secret_peek(OPAQUE_SETUP)?.is_some() {
            store.delete_server_secret(OPAQUE_SETUP)?;
        }
        return Ok(bytes);
    }
    let bytes = store
        .server_secret_peek(OPAQUE_SETUP)?
        .unwrap_or_else(fresh);
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(file).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    store.delete_server_secret(OPAQUE_SETUP)?;
    Ok(bytes)
}

/// K-3: parses and checks every KeyPackage of an upload (off the async threads: signature
/// checks of 100 KeyPackages take milliseconds); one bad KeyPackage refuses the whole upload.
async fn validate_key_packages(
    r: v1::UploadKeyPackageRequest,
    device_key: &Key32,
) -> Result<Vec<NewKeyPackage>, Fail> {
    if r.key_packages.is_empty() {
        return Ok(Vec::new());
    }
    let dk = *device_key;
    let checked = tokio::task::spawn_blocking(move || {
        key_package::validate_upload(&r.key_packages, r.ciphersuite, &dk, SystemTime::now()).map(
            |valid| {
                r.key_packages
                    .into_iter()
                    .zip(valid)
                    .map(|(data, v)| NewKeyPackage {
                        data,
                        init_key_hash: v.init_key_hash,
                        last_resort: v.last_resort,
                    })
                    .collect()
            },
        )
    })
    .await
    .map_err(|_| Fail::new(Status::Internal, "validation task failed"))?;
    checked.map_err(|(i, e)| {
        let status = match e {
            KeyPackageError::TooLarge { .. } => Status::PayloadTooLarge,
            _ => Status::BadRequest,
        };
        Fail::new(
            status,
            format!("KeyPackage {i} refused: {e}; nothing of the upload was stored"),
        )
    })
}

/// Holds a FetchWait's waiter; dropping it (also when the call is cancelled) removes the
/// device's entry when no other wait uses it, so the map holds only devices being waited on.
struct WaiterGuard<'a> {
    service: &'a Service,
    device: DeviceId,
    waiter: Arc<Waiter>,
}

/// The parked FetchWaits of one device: woken together, each re-reads the queue.
#[derive(Default)]
struct Waiter {
    notify: Notify,
    /// Wake-ups aimed at this device (an enqueue here or on another node, a session ended),
    /// as opposed to the sweep's and the listener resync's, which wake every device.
    targeted: AtomicU64,
}

impl Waiter {
    /// Wakes this device's waiters for a reason of its own.
    fn wake(&self) {
        self.targeted.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.service.release_waiter(self.device, &self.waiter);
    }
}

/// Item 17: what the server can check of a commit without keys. It must be one MLS
/// PrivateMessage (qpq groups take only encrypted handshakes) of this channel's group, from
/// the epoch the Enqueue names, with content type commit. Anything else would be accepted as
/// the epoch's commit and then dropped by every member, wedging the group.
/// Checks what a commit's MLS framing shows without keys (ADR 0054): this channel's group
/// id, the epoch named, content type commit, and either a PrivateMessage (a member's commit)
/// or a PublicMessage from `new_member_commit` (an external commit). Returns whether it is an
/// external commit.
fn check_commit_framing(payload: &[u8], channel: &ChannelId, epoch: u64) -> Result<bool, Fail> {
    use openmls::prelude::tls_codec::Deserialize as _;
    use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn, Sender};
    let msg = MlsMessageIn::tls_deserialize_exact(payload)
        .map_err(|_| Fail::bad("a commit must be one MLS message"))?;
    let pm = match msg.extract() {
        MlsMessageBodyIn::PrivateMessage(pm) => pm,
        MlsMessageBodyIn::PublicMessage(pm) if matches!(pm.sender(), Sender::NewMemberCommit) => {
            if pm.group_id().as_slice() != channel.as_slice() {
                return Err(Fail::bad("the commit belongs to another MLS group"));
            }
            if pm.epoch().as_u64() != epoch {
                return Err(Fail::bad(format!(
                    "the commit is framed for epoch {}, not the commit_epoch {epoch}",
                    pm.epoch().as_u64()
                )));
            }
            if pm.content_type() != ContentType::Commit {
                return Err(Fail::bad("the message's content type is not commit"));
            }
            return Ok(true);
        }
        _ => {
            return Err(Fail::bad(
                "a commit must be an MLS PrivateMessage (this server's groups encrypt handshakes) or an external commit",
            ))
        }
    };
    if pm.group_id().as_slice() != channel.as_slice() {
        return Err(Fail::bad("the commit belongs to another MLS group"));
    }
    if pm.epoch().as_u64() != epoch {
        return Err(Fail::bad(format!(
            "the commit is framed for epoch {}, not the commit_epoch {epoch}",
            pm.epoch().as_u64()
        )));
    }
    if pm.content_type() != ContentType::Commit {
        return Err(Fail::bad("the message's content type is not commit"));
    }
    Ok(false)
}

/// Checks a GroupInfo's visible framing: one MLS GroupInfo of this channel's group at `epoch`
/// carrying the ratchet tree and the external public key an external commit needs. Its
/// signature is checked by the member that uses it.
fn check_group_info(bytes: &[u8], channel: &ChannelId, epoch: u64) -> Result<(), Fail> {
    use openmls::prelude::tls_codec::Deserialize as _;
    use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn};
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| Fail::bad("group_info must be one MLS message"))?;
    let MlsMessageBodyIn::GroupInfo(gi) = msg.extract() else {
        return Err(Fail::bad("group_info is not an MLS GroupInfo"));
    };
    if gi.group_id().as_slice() != channel.as_slice() {
        return Err(Fail::bad("the GroupInfo belongs to another MLS group"));
    }
    if gi.epoch().as_u64() != epoch {
        return Err(Fail::bad(format!(
            "the GroupInfo describes epoch {}, not {epoch} (the commit's)",
            gi.epoch().as_u64()
        )));
    }
    if gi.extensions().ratchet_tree().is_none() || gi.extensions().external_pub().is_none() {
        return Err(Fail::bad(
            "the GroupInfo lacks the ratchet_tree or external_pub extension",
        ));
    }
    Ok(())
}

/// Free bytes for unprivileged users on the file system holding `dir` (None when unknown).
#[allow(clippy::unnecessary_cast)] // the field types differ between platforms
fn free_disk_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Counts a parked FetchWait for as long as it lives (also when the call is cancelled).
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Parked(n)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn optional_channel(b: &[u8]) -> Result<Option<ChannelId>, Fail> {
    if b.is_empty() {
        Ok(None)
    } else {
        id16(b, "channel_id").map(Some)
    }
}

/// Methods this server implements beyond Health and the four OPAQUE steps: each needs a
/// session token. Tests iterate over it, so a new method is covered by them at once.
pub const IMPLEMENTED: &[u16] = &[
    method::LOGOUT,
    method::ENQUEUE,
    method::FETCH,
    method::FETCH_WAIT,
    method::PEEK,
    method::ACK,
    method::BATCH_ENQUEUE,
    method::UPLOAD_KEY_PACKAGE,
    method::FETCH_KEY_PACKAGE,
    method::FETCH_KEY_PACKAGES,
    method::UPLOAD_HYBRID_KEY,
    method::FETCH_HYBRID_KEY,
    method::FETCH_HYBRID_KEYS,
    method::CREATE_CHANNEL,
    method::REMOVE_MEMBER,
    method::UPDATE_GROUP_METADATA,
    method::LIST_GROUP_MEMBERS,
    method::FETCH_GROUP_INFO,
    method::BLOCK_USER,
    method::UNBLOCK_USER,
    method::LIST_BLOCKED,
    method::RESOLVE_USER,
    method::RESOLVE_USERS,
    method::RESOLVE_IDENTITY,
    method::UPLOAD_BLOB,
    method::DOWNLOAD_BLOB,
    method::REGISTER_DEVICE,
    method::LIST_DEVICES,
    method::REVOKE_DEVICE,
    method::DELETE_ACCOUNT,
];

/// Builds an error response carrying `qpq.v1.Error`.
pub fn error_response(request_id: u32, f: Fail) -> Response {
    let code = u32::from(f.status.code());
    Response {
        status: f.status,
        request_id,
        payload: Bytes::from(
            v1::Error {
                code,
                message: f.message,
                retry_after_ms: f.retry_after_ms,
            }
            .encode_to_vec(),
        ),
    }
}

/// An error response from a status and message (for frame-level failures).
pub fn status_response(request_id: u32, status: Status, message: impl Into<String>) -> Response {
    error_response(request_id, Fail::new(status, message))
}

impl Service {
    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// M1 (issue 14): what an idle connection holds is a parked FetchWait, whose task is as
    /// large as the call future `handle` makes. Every other method's state is boxed, so that
    /// future is FetchWait's (plus the session and request around it), not the largest
    /// handler's: it stays within FetchWait's own plus 1 KiB (inline, it was 1,888 B against
    /// FetchWait's 592 B in release).
    #[test]
    fn a_call_future_is_sized_by_fetch_wait_not_the_largest_handler() {
        let dir = tempfile::tempdir().expect("dir");
        let st = crate::storage::sqlite::SqliteStorage::open(&dir.path().join("db")).expect("db");
        let svc = Service::new(Arc::new(st), Config::default()).expect("service");
        let (tx, _rx) = mpsc::channel(1);
        let ctx = CallContext::new("127.0.0.1:1".parse().expect("addr"), 1, tx);
        let s = Session {
            account_id: 1,
            device_id: 1,
            device_key: [0; 32],
            identity_key: [0; 32],
            expires_at: 0,
        };
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let req = Request {
            method: 0,
            request_id: 0,
            payload: Bytes::new(),
        };
        let handle = std::mem::size_of_val(&svc.handle(&ctx, req));
        let fetch_wait = std::mem::size_of_val(&svc.fetch_wait(&s, [0; 32], Default::default()));
        let largest = [
            std::mem::size_of_val(&svc.enqueue(&s, Default::default())),
            std::mem::size_of_val(&svc.batch_enqueue(&s, Default::default())),
            std::mem::size_of_val(&svc.login_start(ip, Default::default(), &[])),
            std::mem::size_of_val(&svc.register_finish(ip, Default::default())),
        ]
        .into_iter()
        .max()
        .expect("four sizes");
        assert!(
            handle <= fetch_wait + 1024 && handle < largest + fetch_wait,
            "handle {handle} B, fetch_wait {fetch_wait} B, largest handler {largest} B"
        );
    }
}
