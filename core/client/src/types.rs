//! Plain data types of the public API.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A conversation id: equal to the server channel id and the MLS group id.
pub type ConversationId = [u8; 16];
/// A message id, chosen by the sender, unique per message.
pub type MessageId = [u8; 16];

/// The key of the local encrypted store. Zeroized on drop; its `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub enum StoreKey {
    /// A passphrase stretched with Argon2id (t=3, p=4, m=64 MiB) and a random salt kept in
    /// `data_dir/qpq-client.salt`.
    Passphrase(String),
    /// A raw 32-byte key, e.g. from the platform keystore. No salt file is used.
    Raw([u8; 32]),
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreKey::Passphrase(_) => f.write_str("StoreKey::Passphrase(..)"),
            StoreKey::Raw(_) => f.write_str("StoreKey::Raw(..)"),
        }
    }
}

/// How the client decides to trust the server's TLS certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Trust exactly this (self-signed) certificate, DER-encoded.
    PinnedCertDer(Vec<u8>),
    /// Trust exactly the DER certificate in this file (read at connect time).
    PinnedCertFile(PathBuf),
    /// Trust any certificate whose leaf DER has this SHA-256; the TLS 1.3 handshake signature
    /// is still verified.
    Fingerprint([u8; 32]),
    /// The WebPKI root store (Mozilla's roots, compiled in).
    SystemRoots,
}

/// Configuration of one [`crate::Client`]: one account per `data_dir`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Per-account directory; the store is `data_dir/qpq-client.db`.
    pub data_dir: PathBuf,
    /// Key of the encrypted store.
    pub store_key: StoreKey,
    /// Server address, `"host:port"`.
    pub server_addr: String,
    /// TLS server name (default `"localhost"`).
    pub server_name: String,
    /// How to trust the server.
    pub trust: Trust,
    /// Deadline of each request (default 15 s).
    pub request_timeout: Duration,
    /// How long [`crate::Client::open`] waits for a store another process (or `Client`) holds:
    /// zero (the default) fails with `Busy` at once. One process at a time opens a store
    /// (ADR 0021).
    pub lock_timeout: Duration,
    /// Test-only: a cheap Argon2id cost for passphrase keys. Never set it in production.
    #[doc(hidden)]
    pub insecure_fast_kdf: bool,
}

impl ClientConfig {
    /// A config with defaults: server name `"localhost"`, 15 s request timeout.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        store_key: StoreKey,
        server_addr: impl Into<String>,
        trust: Trust,
    ) -> ClientConfig {
        ClientConfig {
            data_dir: data_dir.into(),
            store_key,
            server_addr: server_addr.into(),
            server_name: "localhost".into(),
            trust,
            request_timeout: Duration::from_secs(15),
            lock_timeout: Duration::ZERO,
            insecure_fast_kdf: false,
        }
    }
}

/// Whether a conversation is a 1:1 DM or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    /// Two accounts (with all their devices).
    Dm,
    /// Any number of members.
    Group,
}

/// A conversation as stored locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Id (channel id = MLS group id).
    pub id: ConversationId,
    /// DM or group.
    pub kind: ConversationKind,
    /// Display name (the group name, or the peer's username for a DM).
    pub name: String,
    /// True when the group uses the X-Wing (ML-KEM-768 + X25519) ciphersuite.
    pub post_quantum: bool,
    /// MLS ciphersuite name.
    pub ciphersuite: String,
    /// Current MLS epoch.
    pub epoch: u64,
    /// Usernames of the members (sorted, each once).
    pub members: Vec<String>,
    /// False once this account was removed or left.
    pub active: bool,
    /// Received messages not yet read through [`crate::Client::messages`].
    pub unread: u64,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender-chosen id; unique.
    pub id: MessageId,
    /// Conversation.
    pub conversation: ConversationId,
    /// Sender's username.
    pub sender: String,
    /// Sender's device key.
    pub sender_device: [u8; 32],
    /// Text.
    pub text: String,
    /// Sender's clock, Unix ms.
    pub sent_at_ms: u64,
    /// Local order key and receive time, Unix ms; strictly increasing within one store.
    pub received_at_ms: u64,
    /// True when sent by this account (from this or another of its devices).
    pub outgoing: bool,
}

/// A member of a conversation, or a resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Username.
    pub username: String,
    /// Account identity key.
    pub identity_key: [u8; 32],
    /// Device keys (in the conversation: the devices in the MLS group).
    pub devices: Vec<[u8; 32]>,
}

/// The account of this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Username.
    pub username: String,
    /// Account identity key (the same on every device).
    pub identity_key: [u8; 32],
    /// This device's key (its MLS signature key).
    pub device_key: [u8; 32],
}

/// Something that happened, delivered by [`crate::Client::sync`], [`crate::Client::next_event`]
/// or a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new message (incoming, or outgoing from another device of this account).
    Message(Message),
    /// This account was added to a conversation.
    ConversationJoined(Conversation),
    /// Members joined or left a conversation.
    MembersChanged {
        /// Conversation.
        conversation: ConversationId,
        /// Usernames added.
        added: Vec<String>,
        /// Usernames removed.
        removed: Vec<String>,
        /// Epoch after the change.
        epoch: u64,
    },
    /// This account was removed from (or left) a conversation.
    Removed {
        /// Conversation.
        conversation: ConversationId,
    },
    /// The connection to the server went up or down.
    ConnectionChanged {
        /// True when connected.
        connected: bool,
    },
}

/// Receives events from background receive. Called on a runtime thread: return quickly and
/// never call back into the [`crate::Client`] synchronously from inside it.
pub trait EventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: Event);
}
