//! Server storage: one trait ([`Storage`]) with the operations the service needs, and the
//! SQLite backend ([`sqlite::SqliteStorage`]).
//!
//! Every method is blocking: the service calls them from `spawn_blocking`, except the few
//! `*_async` methods of the hot path, whose defaults do just that and which a backend may
//! answer without a thread hop (the SQLite one does, ADR 0100). Each write method
//! is one transaction; when it returns `Ok`, the change is on disk (the SQLite backend runs
//! WAL with `synchronous=FULL` and a group-commit writer).

pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// Row id of an account.
pub type AccountId = i64;
/// Row id of a device.
pub type DeviceId = i64;
/// A 32-byte public key (identity or device).
pub type Key32 = [u8; 32];
/// A 16-byte channel id.
pub type ChannelId = [u8; 16];

/// Upper bound of what one queued message adds to an encoded FetchResponse besides its
/// payload bytes: the repeated field's tag and length (5), seq (11), channel id (18), sender
/// device (34), message id (18), payload tag and length (5), server time (11) and kind (2)
/// make 104.
pub const FETCH_OVERHEAD: usize = 128;

/// Why a storage operation failed. Messages are safe to show to clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The change conflicts with what is stored (taken name, stale epoch, ...).
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A configured limit was reached (devices, queue depth, KeyPackages, blob size).
    #[error("{0}")]
    Limit(String),
    /// A recipient's queue is at its cap; retry after it drains.
    #[error("{message}")]
    QueueFull {
        /// The device whose queue is full.
        device: DeviceId,
        /// For the sender.
        message: String,
    },
    /// The request is inconsistent with stored state (wrong blob offset, ...).
    #[error("{0}")]
    Invalid(String),
    /// The disk is full: nothing was written.
    #[error("storage is full")]
    Full,
    /// The database failed; nothing was written.
    #[error("storage failure")]
    Backend(String),
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::DiskFull {
                return StorageError::Full;
            }
        }
        StorageError::Backend(e.to_string())
    }
}

/// Result of a storage call.
pub type StorageResult<T> = Result<T, StorageError>;

/// A storage call answered later, without holding a thread meanwhile (the `*_async` methods
/// of [`Storage`]).
pub type StorageFuture<T> = Pin<Box<dyn Future<Output = StorageResult<T>> + Send + 'static>>;

/// Runs a blocking storage call on tokio's blocking pool: the default of every `*_async`
/// method of [`Storage`], for backends that only have the blocking ones.
pub fn on_blocking_pool<S, T, F>(store: Arc<S>, f: F) -> StorageFuture<T>
where
    S: Storage + ?Sized,
    T: Send + 'static,
    F: FnOnce(&S) -> StorageResult<T> + Send + 'static,
{
    Box::pin(async move {
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|_| StorageError::Backend("storage task failed".into()))?
    })
}

/// A registered account.
#[derive(Clone)]
pub struct Account {
    /// Row id.
    pub id: AccountId,
    /// Unique, lowercase.
    pub username: String,
    /// Ed25519 public key of the account.
    pub identity_key: Key32,
    /// Serialized OPAQUE registration record (`ServerRegistration`).
    pub opaque_record: Vec<u8>,
}

/// A device of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Row id.
    pub id: DeviceId,
    /// Owner.
    pub account_id: AccountId,
    /// The device's Ed25519 public key.
    pub device_key: Key32,
    /// Unix seconds.
    pub created_at: u64,
}

/// A live session, resolved from a token hash.
#[derive(Debug, Clone)]
pub struct Session {
    /// Account of the token.
    pub account_id: AccountId,
    /// Device of the token.
    pub device_id: DeviceId,
    /// Device key of the token's device.
    pub device_key: Key32,
    /// Identity key of the token's account.
    pub identity_key: Key32,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Kind of a channel (the values of `qpq.v1.ChannelKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// A group of any size.
    Group = 0,
    /// A direct conversation between two accounts.
    Dm = 1,
}

/// A channel.
#[derive(Debug, Clone)]
pub struct Channel {
    /// Random 16-byte id.
    pub id: ChannelId,
    /// DM or group.
    pub kind: ChannelKind,
    /// The next commit epoch the server accepts.
    pub epoch: u64,
    /// Opaque to the server.
    pub metadata: Vec<u8>,
}

/// A member of a channel, with its devices.
#[derive(Debug, Clone)]
pub struct Member {
    /// Account identity key.
    pub identity_key: Key32,
    /// Username.
    pub username: String,
    /// Device keys of the account.
    pub device_keys: Vec<Key32>,
}

/// One message in a device queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Per-device sequence number.
    pub seq: u64,
    /// Channel it belongs to.
    pub channel_id: ChannelId,
    /// Sending device key.
    pub sender_device: Key32,
    /// Client-chosen message id.
    pub message_id: Bytes,
    /// Opaque payload.
    pub payload: Bytes,
    /// Unix milliseconds at acceptance.
    pub server_time_ms: u64,
    /// `qpq.v1.MessageKind` value.
    pub kind: i32,
}

/// An Enqueue, validated by the service (sizes, sender binding) and executed atomically.
#[derive(Debug, Clone)]
pub struct EnqueueOp {
    /// Account of the session.
    pub sender_account: AccountId,
    /// Device of the session.
    pub sender_device: DeviceId,
    /// Device key of the session.
    pub sender_device_key: Key32,
    /// Target channel.
    pub channel_id: ChannelId,
    /// Client-chosen id (16 bytes); idempotency key with the sender device.
    pub message_id: [u8; 16],
    /// Opaque payload.
    pub payload: Bytes,
    /// `qpq.v1.MessageKind` value.
    pub kind: i32,
    /// For commits: the epoch committed from.
    pub commit_epoch: Option<u64>,
    /// Identity keys joining the channel with this commit.
    pub add_members: Vec<Key32>,
    /// Identity keys leaving the channel with this commit.
    pub remove_members: Vec<Key32>,
    /// Welcome for new devices (empty when none).
    pub welcome: Bytes,
    /// Devices that get the Welcome; empty means every device of `add_members`.
    pub welcome_devices: Vec<Key32>,
    /// Identity keys made admins with this commit (the sender must be an admin).
    pub promote_members: Vec<Key32>,
    /// For commits: the GroupInfo of the epoch the commit creates (framing checked), kept as
    /// the channel's latest.
    pub group_info: Option<Bytes>,
    /// An external commit (a member's device re-joining): it may name the epoch of the
    /// channel's latest GroupInfo when commits without one came after it (ADR 0054).
    pub external: bool,
    /// Acceptance time, Unix milliseconds.
    pub now_ms: u64,
    /// Per-device queue cap.
    pub max_queue_depth: u64,
    /// Per-device cap on queued payload bytes.
    pub max_queue_bytes: u64,
    /// Entries of one device's queue the sending account may hold at once.
    pub max_share_depth: u64,
    /// Payload bytes of one device's queue the sending account may hold at once.
    pub max_share_bytes: u64,
}

/// A message queued for one device by an Enqueue (used to wake and push to it).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Recipient device.
    pub device_id: DeviceId,
    /// What was queued.
    pub message: QueuedMessage,
}

/// What an Enqueue did.
#[derive(Debug, Clone)]
pub struct EnqueueOutcome {
    /// Row id of the stored payload; stable across retries.
    pub server_id: u64,
    /// True when the message id had been accepted before (nothing new was stored).
    pub duplicate: bool,
    /// The channel's next commit epoch.
    pub epoch: u64,
    /// Messages queued, one per recipient device.
    pub deliveries: Vec<Delivery>,
    /// Recipient devices skipped because their queue (or the sender's share of it) is full:
    /// an application message still reaches everyone else (issue 17 item 20).
    pub undelivered: Vec<Key32>,
}

impl EnqueueOutcome {
    /// The answer to a retry of an accepted message id: as the first time, nothing queued.
    pub fn duplicate(server_id: u64, epoch: u64) -> EnqueueOutcome {
        EnqueueOutcome {
            server_id,
            duplicate: true,
            epoch,
            deliveries: Vec::new(),
            undelivered: Vec::new(),
        }
    }
}

/// What one purge run deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Queue entries older than the message TTL.
    pub queue_entries: u64,
    /// Stored payloads freed by that (or already unreferenced).
    pub payloads: u64,
    /// Idempotency records older than the message TTL.
    pub enqueue_ids: u64,
    /// Incomplete blob uploads older than their TTL.
    pub incomplete_blobs: u64,
}

/// A validated KeyPackage to store.
#[derive(Debug, Clone)]
pub struct NewKeyPackage {
    /// The TLS-encoded KeyPackage, as uploaded.
    pub data: Bytes,
    /// SHA-256 of its HPKE init key (unique per device).
    pub init_key_hash: Key32,
    /// Carries the RFC 9420 last_resort extension.
    pub last_resort: bool,
}

/// One uploaded blob chunk.
#[derive(Debug, Clone)]
pub struct BlobChunk {
    /// Uploading account (must be a member of the channel).
    pub account_id: AccountId,
    /// Channel scope.
    pub channel_id: ChannelId,
    /// Declared SHA-256 of the whole blob.
    pub sha256: Key32,
    /// Declared total size.
    pub total_size: u64,
    /// Must equal the bytes stored so far.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// Unix milliseconds.
    pub now_ms: u64,
    /// Bytes of blobs (by declared size, complete or not) the account may hold; a new
    /// upload past it is refused.
    pub quota: u64,
}

/// A KeyPackage handed out by [`Storage::take_key_packages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenKeyPackage {
    /// The encoded KeyPackage.
    pub data: Vec<u8>,
    /// True for the device's last-resort KeyPackage (read, not deleted).
    pub last_resort: bool,
}

/// The server's persistent state. Implementations must make every write method atomic and
/// durable when it returns `Ok`.
pub trait Storage: Send + Sync + 'static {
    /// Returns the named server secret, creating it with `init` if absent (atomically).
    fn server_secret(&self, name: &str, init: Vec<u8>) -> StorageResult<Vec<u8>>;
    /// The named server secret if stored (never creates it).
    fn server_secret_peek(&self, name: &str) -> StorageResult<Option<Vec<u8>>>;
    /// Deletes the named server secret (it moved elsewhere, e.g. its own file).
    fn delete_server_secret(&self, name: &str) -> StorageResult<()>;

    /// Whether the username is registered.
    fn username_taken(&self, username: &str) -> StorageResult<bool>;
    /// Creates an account with its first device. Conflict when the username is taken or
    /// reserved after a deletion (until its tombstone expires at `now`), or when either key
    /// is already registered as any account's identity key or any device key (one namespace:
    /// the two keys may only equal each other). Account and device ids are never reused.
    fn create_account(
        &self,
        username: &str,
        identity_key: &Key32,
        device_key: &Key32,
        opaque_record: &[u8],
        now: u64,
    ) -> StorageResult<AccountId>;
    /// Looks an account up by username.
    fn account_by_username(&self, username: &str) -> StorageResult<Option<Account>>;
    /// Looks an account up by identity key.
    fn account_by_identity(&self, identity_key: &Key32) -> StorageResult<Option<Account>>;
    /// Deletes the account and everything of it, in one transaction. Its username stays
    /// reserved (a tombstone) until `username_reserved_until` (Unix seconds; 0 = not at all).
    fn delete_account(&self, account: AccountId, username_reserved_until: u64)
        -> StorageResult<()>;

    /// Devices of an account, oldest first.
    fn devices(&self, account: AccountId) -> StorageResult<Vec<Device>>;
    /// Adds a device (idempotent for a key the account already has). Limit when the account
    /// has `max` devices; Conflict when another account uses the key, as a device key or as
    /// its identity key. Device ids are never reused.
    fn add_device(
        &self,
        account: AccountId,
        device_key: &Key32,
        max: usize,
        now: u64,
    ) -> StorageResult<DeviceId>;
    /// Removes a device with its sessions, queue and KeyPackages.
    fn revoke_device(&self, account: AccountId, device_key: &Key32) -> StorageResult<()>;

    /// Stores a session token hash. The device keeps at most `max_per_device` sessions: the
    /// ones that expire first go, and their token hashes are returned (so caches drop them).
    fn create_session(
        &self,
        token_hash: &Key32,
        device: DeviceId,
        expires_at: u64,
        max_per_device: usize,
    ) -> StorageResult<Vec<Key32>>;
    /// Deletes every session expired at `now`; returns how many.
    fn purge_expired_sessions(&self, now: u64) -> StorageResult<u64>;
    /// Resolves a token hash to a live session (None when unknown or expired at `now`).
    fn session(&self, token_hash: &Key32, now: u64) -> StorageResult<Option<Session>>;
    /// Deletes a session.
    fn delete_session(&self, token_hash: &Key32) -> StorageResult<()>;

    /// Stores KeyPackages of one ciphersuite for a device, all or none; returns that suite's
    /// count after. Limit over `cap` per suite; Invalid when an `init_key_hash` is already
    /// stored for the device.
    fn add_key_packages(
        &self,
        device: DeviceId,
        suite: u32,
        packages: Vec<NewKeyPackage>,
        cap: u64,
    ) -> StorageResult<u64>;
    /// Pops the oldest KeyPackage of a device for a ciphersuite, atomically.
    fn pop_key_package(&self, device_key: &Key32, suite: u32) -> StorageResult<Option<Vec<u8>>>;
    /// Sets a device's hybrid public key.
    fn set_hybrid_key(&self, device: DeviceId, key: &[u8]) -> StorageResult<()>;
    /// Hybrid keys of the listed devices that have one.
    fn hybrid_keys(&self, device_keys: &[Key32]) -> StorageResult<Vec<(Key32, Vec<u8>)>>;

    /// Creates a channel; for a DM between the two accounts returns the existing one.
    /// Returns the channel and whether it was created.
    fn create_channel(
        &self,
        kind: ChannelKind,
        creator: AccountId,
        members: &[Key32],
        metadata: &[u8],
        now: u64,
    ) -> StorageResult<(Channel, bool)>;
    /// A channel by id.
    fn channel(&self, id: &ChannelId) -> StorageResult<Option<Channel>>;
    /// Whether the account is a member.
    fn is_member(&self, channel: &ChannelId, account: AccountId) -> StorageResult<bool>;
    /// Members with their devices.
    fn members(&self, channel: &ChannelId) -> StorageResult<Vec<Member>>;
    /// Marks `member` as leaving the channel (only the member itself may call: `by` is its
    /// account and `member` its identity key; Forbidden otherwise). A leaving member no longer
    /// counts as a member (it cannot send, read metadata or blobs, and gets no application
    /// messages) but still gets the next commits, so it sees the commit that removes it; a
    /// commit naming it in `remove_members` ends its membership. NotFound when not a member.
    fn remove_member(
        &self,
        channel: &ChannelId,
        by: AccountId,
        member: &Key32,
    ) -> StorageResult<()>;
    /// Replaces the opaque metadata. Only a member may call.
    fn set_metadata(
        &self,
        channel: &ChannelId,
        by: AccountId,
        metadata: &[u8],
    ) -> StorageResult<()>;

    /// Makes `blocker` block (`on`) or stop blocking the account whose identity key is
    /// `blocked` (ADR 0060). Idempotent.
    fn set_block(
        &self,
        blocker: AccountId,
        blocked: &Key32,
        on: bool,
        now_ms: u64,
    ) -> StorageResult<()>;
    /// The accounts `blocker` blocks: identity key and username.
    fn blocked(&self, blocker: AccountId) -> StorageResult<Vec<(Key32, String)>>;
    /// The channel's latest GroupInfo and the epoch it describes.
    fn group_info(&self, channel: &ChannelId) -> StorageResult<Option<(u64, Bytes)>>;
    /// Executes an Enqueue atomically (see `qpq.v1.EnqueueRequest`).
    fn enqueue(&self, op: EnqueueOp) -> StorageResult<EnqueueOutcome>;
    /// Queued messages of a device after `after_seq`, oldest first, at most `limit` and at
    /// most `max_bytes` counting each message as its payload plus [`FETCH_OVERHEAD`] (a
    /// single larger message is returned alone), and whether more are queued after them.
    fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
        channel: Option<ChannelId>,
    ) -> StorageResult<(Vec<QueuedMessage>, bool)>;
    /// Count and highest sequence number of a device's queue.
    fn peek(&self, device: DeviceId, channel: Option<ChannelId>) -> StorageResult<(u64, u64)>;
    /// Removes acked messages; returns how many were removed.
    fn ack(&self, device: DeviceId, up_to_seq: u64, seqs: &[u64]) -> StorageResult<u64>;
    /// Total queued entries (for the `delivery_queue_depth` gauge).
    fn queue_depth(&self) -> StorageResult<u64>;

    /// Stores a blob chunk; returns bytes received so far.
    fn put_blob_chunk(&self, chunk: BlobChunk, max_size: u64) -> StorageResult<u64>;
    /// Reads a complete or partial blob's bytes in order, for verification.
    fn blob_sha256(&self, channel: &ChannelId, sha256: &Key32) -> StorageResult<Key32>;
    /// Marks a fully received blob complete, or deletes it when `valid` is false.
    fn finish_blob(&self, channel: &ChannelId, sha256: &Key32, valid: bool) -> StorageResult<()>;
    /// Deletes what has expired at `now_ms`: queue entries whose message is older than
    /// `message_ttl_ms` (with the payloads nobody references any more), idempotency records
    /// as old, and incomplete blob uploads older than `blob_ttl_ms`. At most `batch` rows of
    /// each kind per call, so one run never holds the writer long.
    fn purge_expired(
        &self,
        now_ms: u64,
        message_ttl_ms: u64,
        blob_ttl_ms: u64,
        batch: usize,
    ) -> StorageResult<PurgeReport>;
    /// Stores (replacing) the device's last-resort KeyPackage of a suite (RFC 9420 §16.8):
    /// served only when no ordinary KeyPackage is left, never deleted by a fetch.
    fn set_last_resort_key_package(
        &self,
        device: DeviceId,
        suite: u32,
        package: NewKeyPackage,
    ) -> StorageResult<()>;
    /// The device's last-resort KeyPackage of a suite, when it has one (not removed).
    fn last_resort_key_package(
        &self,
        device_key: &Key32,
        suite: u32,
    ) -> StorageResult<Option<Vec<u8>>>;
    /// FetchKeyPackages (ADR 0110): for each `(device key, stock open)` in order, pops the
    /// oldest KeyPackage of the suite when `stock open` and one is left, else reads the
    /// device's last-resort KeyPackage; None when neither exists.
    /// Backends should do all of it in one transaction (one durable commit for the whole
    /// request); this default calls [`Storage::pop_key_package`] and
    /// [`Storage::last_resort_key_package`] per device, which is correct but commits once per
    /// device.
    fn take_key_packages(
        &self,
        targets: &[(Key32, bool)],
        suite: u32,
    ) -> StorageResult<Vec<Option<TakenKeyPackage>>> {
        let mut out = Vec::with_capacity(targets.len());
        for (dk, stock_open) in targets {
            let popped = if *stock_open {
                self.pop_key_package(dk, suite)?
            } else {
                None
            };
            out.push(match popped {
                Some(data) => Some(TakenKeyPackage {
                    data,
                    last_resort: false,
                }),
                None => self
                    .last_resort_key_package(dk, suite)?
                    .map(|data| TakenKeyPackage {
                        data,
                        last_resort: true,
                    }),
            });
        }
        Ok(out)
    }
    /// Reads a range of a complete blob: (bytes, total size). NotFound when absent or incomplete.
    fn read_blob(
        &self,
        channel: &ChannelId,
        sha256: &Key32,
        offset: u64,
        len: u64,
    ) -> StorageResult<(Vec<u8>, u64)>;

    // The hot path, answered without a blocking-pool hop where the backend can (ADR 0100).
    // Each default runs the blocking method on tokio's blocking pool, so a backend that
    // implements only the blocking methods behaves as before.

    /// [`Storage::enqueue`], awaited instead of blocking a thread.
    fn enqueue_async(self: Arc<Self>, op: EnqueueOp) -> StorageFuture<EnqueueOutcome> {
        on_blocking_pool(self, move |s| s.enqueue(op))
    }

    /// [`Storage::fetch`], awaited instead of blocking a thread.
    fn fetch_async(
        self: Arc<Self>,
        device: DeviceId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
        channel: Option<ChannelId>,
    ) -> StorageFuture<(Vec<QueuedMessage>, bool)> {
        on_blocking_pool(self, move |s| {
            s.fetch(device, after_seq, limit, max_bytes, channel)
        })
    }

    /// [`Storage::session`], awaited instead of blocking a thread.
    fn session_async(
        self: Arc<Self>,
        token_hash: Key32,
        now: u64,
    ) -> StorageFuture<Option<Session>> {
        on_blocking_pool(self, move |s| s.session(&token_hash, now))
    }

    /// [`Storage::account_by_username`], awaited instead of blocking a thread.
    fn account_by_username_async(
        self: Arc<Self>,
        username: String,
    ) -> StorageFuture<Option<Account>> {
        on_blocking_pool(self, move |s| s.account_by_username(&username))
    }

    /// A login's writes: [`Storage::add_device`] then [`Storage::create_session`] for that
    /// device; returns the device and the evicted sessions' token hashes. A backend may do
    /// both in one transaction (the SQLite one does: one commit per login); the default runs
    /// the two calls on the blocking pool.
    #[allow(clippy::too_many_arguments)]
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
        on_blocking_pool(self, move |s| {
            let device = s.add_device(account, &device_key, max_devices, now)?;
            let evicted = s.create_session(&token_hash, device, expires_at, max_per_device)?;
            Ok((device, evicted))
        })
    }
}
