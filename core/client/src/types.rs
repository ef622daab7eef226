//! Plain data types of the public API.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::body::Body;
use crate::error::ErrorCode;

pub use crate::ids::{ConversationId, DeviceKey, IdentityKey, MessageId};

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
    /// Test-only: a cheap Argon2id cost for passphrase keys. It has an effect only in builds
    /// with the `test-hooks` feature; release builds ignore it.
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

impl ClientConfig {
    /// A builder taking plain strings and paths (what a binding passes), for a store in
    /// `data_dir` and a server at `server_addr` (`"host:port"`). Defaults: server name
    /// `"localhost"`, 15 s request timeout, the WebPKI roots.
    pub fn builder(
        data_dir: impl Into<PathBuf>,
        server_addr: impl Into<String>,
    ) -> ClientConfigBuilder {
        ClientConfigBuilder {
            data_dir: data_dir.into(),
            server_addr: server_addr.into(),
            store_key: None,
            server_name: "localhost".into(),
            trust: Trust::SystemRoots,
            request_timeout: Duration::from_secs(15),
            lock_timeout: Duration::ZERO,
            fingerprint_error: None,
        }
    }
}

/// Builds a [`ClientConfig`] from plain values; see [`ClientConfig::builder`]. Nothing is
/// checked until [`ClientConfigBuilder::build`].
#[derive(Debug, Clone)]
pub struct ClientConfigBuilder {
    data_dir: PathBuf,
    server_addr: String,
    store_key: Option<StoreKey>,
    server_name: String,
    trust: Trust,
    request_timeout: Duration,
    lock_timeout: Duration,
    fingerprint_error: Option<String>,
}

impl ClientConfigBuilder {
    /// The store is unlocked by this passphrase (Argon2id-stretched).
    pub fn passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.store_key = Some(StoreKey::Passphrase(passphrase.into()));
        self
    }

    /// The store is unlocked by this raw 32-byte key (e.g. from the platform keystore).
    pub fn raw_key(mut self, key: [u8; 32]) -> Self {
        self.store_key = Some(StoreKey::Raw(key));
        self
    }

    /// The TLS server name to verify (default `"localhost"`).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// Trust exactly the DER certificate in this file.
    pub fn pinned_cert_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust = Trust::PinnedCertFile(path.into());
        self
    }

    /// Trust exactly this DER certificate.
    pub fn pinned_cert_der(mut self, der: Vec<u8>) -> Self {
        self.trust = Trust::PinnedCertDer(der);
        self
    }

    /// Trust the certificate with this SHA-256 fingerprint: 64 hex digits, `:` allowed.
    pub fn fingerprint(mut self, hex: &str) -> Self {
        match crate::ids::parse_hex::<32>(&hex.replace(':', "")) {
            Some(fp) => {
                self.trust = Trust::Fingerprint(fp);
                self.fingerprint_error = None;
            }
            None => {
                self.fingerprint_error =
                    Some("a fingerprint is 64 hex digits (SHA-256 of the certificate)".into())
            }
        }
        self
    }

    /// Trust the WebPKI roots (the default).
    pub fn system_roots(mut self) -> Self {
        self.trust = Trust::SystemRoots;
        self
    }

    /// Deadline of each request, in milliseconds (default 15,000).
    pub fn request_timeout_ms(mut self, ms: u64) -> Self {
        self.request_timeout = Duration::from_millis(ms);
        self
    }

    /// How long `Client::open` waits for a store another process holds before answering
    /// `Busy` (default 0: at once). See ADR 0021.
    pub fn lock_timeout_ms(mut self, ms: u64) -> Self {
        self.lock_timeout = Duration::from_millis(ms);
        self
    }

    /// The config; `InvalidInput` when no store key was given or a value is malformed.
    pub fn build(self) -> Result<ClientConfig, crate::Error> {
        if let Some(e) = self.fingerprint_error {
            return Err(crate::Error::invalid(e));
        }
        let store_key = self.store_key.ok_or_else(|| {
            crate::Error::invalid("a store key is needed: passphrase() or raw_key()")
        })?;
        if self.server_addr.is_empty() {
            return Err(crate::Error::invalid("the server address is empty"));
        }
        if self.request_timeout.is_zero() {
            return Err(crate::Error::invalid("the request timeout is zero"));
        }
        Ok(ClientConfig {
            data_dir: self.data_dir,
            store_key,
            server_addr: self.server_addr,
            server_name: self.server_name,
            trust: self.trust,
            request_timeout: self.request_timeout,
            lock_timeout: self.lock_timeout,
            insecure_fast_kdf: false,
        })
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
    /// Whether the user wants this conversation (ADR 0060): one joined by an invitation from
    /// someone who is not a contact is [`Consent::Requested`] until accepted or declined.
    pub consent: Consent,
    /// Who invited this account (None for a conversation this device created).
    pub invited_by: Option<String>,
}

/// Whether the user wants a conversation (issue 17 item 18, ADR 0060; libxmtp's consent
/// states). It changes nothing about delivery or storage: a `Requested` conversation's
/// messages are stored and reported as usual, and the app shows them apart (a "requests"
/// list) until [`crate::Client::accept`] or [`crate::Client::decline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consent {
    /// Created here, accepted, written in, or from a contact.
    Allowed,
    /// Joined by an invitation from someone this account shares no allowed conversation with.
    Requested,
    /// Declined: left, and kept only as history.
    Denied,
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
    pub sender_device: DeviceKey,
    /// What the message carries.
    pub body: Body,
    /// Sender's clock, Unix ms.
    pub sent_at_ms: u64,
    /// Local order key and receive time, Unix ms; strictly increasing within one store.
    pub received_at_ms: u64,
    /// True when sent by this account (from this or another of its devices).
    pub outgoing: bool,
    /// Where an outgoing message is on its way out; `Received` for incoming ones.
    pub delivery: Delivery,
}

impl Message {
    /// The text of a text message, `None` for other bodies.
    pub fn text(&self) -> Option<&str> {
        self.body.as_text()
    }
}

/// Delivery state of a message in the local history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// An incoming message (or an outgoing one from another device of this account).
    Received,
    /// Stored and queued on this device; not yet accepted by the server.
    Queued,
    /// Accepted by the server for every member ([`Event::MessageSent`]).
    Sent,
    /// Refused for good; it will not be sent ([`Event::MessageFailed`]).
    Failed,
}

/// A member of a conversation, or a resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Username.
    pub username: String,
    /// Account identity key; `None` when this device does not know it yet (a member whose
    /// devices the directory has not answered for).
    pub identity_key: Option<IdentityKey>,
    /// Device keys (in the conversation: the devices in the MLS group).
    pub devices: Vec<DeviceKey>,
}

impl Conversation {
    /// The name to show: the group's name, or `@peer` (the other members, comma-separated)
    /// for a DM or an unnamed group. `me` is this account's username.
    pub fn display_name(&self, me: &str) -> String {
        if self.kind == ConversationKind::Dm || self.name.is_empty() {
            let others: Vec<&str> = self
                .members
                .iter()
                .map(String::as_str)
                .filter(|m| *m != me)
                .collect();
            if !others.is_empty() {
                return format!("@{}", others.join(","));
            }
        }
        self.name.clone()
    }
}

/// Finds a conversation by its number in the list (`#2` or `2`, 1-based), its id (a hex
/// prefix of at least 4 digits), its display name, or `@user` / `user` for a DM. A text that
/// matches more than one conversation, in any of these ways, is refused naming the
/// candidates: a message never goes to a guess.
pub(crate) fn find_conversation(
    convs: Vec<Conversation>,
    me: &str,
    what: &str,
) -> Result<Conversation, crate::Error> {
    let lower = what.to_ascii_lowercase();
    let number = what.trim_start_matches('#').parse::<usize>().ok();
    let is_hex = what.len() >= 4 && what.chars().all(|c| c.is_ascii_hexdigit());
    let mut matches: Vec<(Conversation, String)> = Vec::new();
    for (i, c) in convs.into_iter().enumerate() {
        let name = c.display_name(me);
        let hit = number == Some(i + 1)
            || (is_hex && c.id.to_hex().starts_with(&lower))
            || name == what
            || name == format!("@{}", what.trim_start_matches('@'));
        if hit {
            matches.push((c, name));
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0).0),
        0 => Err(crate::Error::not_found(format!(
            "no conversation matches {what:?} (see the list of conversations)"
        ))),
        n => Err(crate::Error::invalid(format!(
            "{what:?} matches {n} conversations ({}); use its id",
            matches
                .iter()
                .map(|(c, name)| format!("{name} = {}", c.id.to_hex()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// An event with its number: cursors increase by one per event, from 1, per `Client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The event's number.
    pub cursor: u64,
    /// The event.
    pub event: Event,
}

/// The account of this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Username.
    pub username: String,
    /// Account identity key (the same on every device).
    pub identity_key: IdentityKey,
    /// This device's key (its MLS signature key).
    pub device_key: DeviceKey,
}

/// Something that happened, delivered by [`crate::Client::sync`], [`crate::Client::next_event`]
/// or a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new message (incoming, or outgoing from another device of this account).
    Message(Message),
    /// This account was added to a conversation.
    ConversationJoined(Conversation),
    /// Members joined, were removed from, or left a conversation (one commit's changes).
    MembersChanged {
        /// Conversation.
        conversation: ConversationId,
        /// Who made the change: the member who committed it (the one who added, or removed
        /// others). `None` when this device does not know that member's username.
        by: Option<String>,
        /// Usernames added.
        added: Vec<String>,
        /// Usernames removed by someone else.
        removed: Vec<String>,
        /// Usernames that left on their own.
        left: Vec<String>,
        /// Epoch after the change.
        epoch: u64,
    },
    /// This account is no longer in a conversation: removed by another member, or it left
    /// (from this device or another of its devices). The conversation and its history stay,
    /// inactive.
    Removed {
        /// Conversation.
        conversation: ConversationId,
        /// Who removed this account (its own username when it left); `None` when unknown.
        by: Option<String>,
        /// True when this account left on its own rather than being removed.
        left: bool,
    },
    /// The connection to the server went up or down.
    ConnectionChanged {
        /// True when connected.
        connected: bool,
    },
    /// The server accepted a message this device sent: it will reach every member.
    MessageSent {
        /// Conversation.
        conversation: ConversationId,
        /// The id [`crate::Client::send`] returned.
        id: MessageId,
    },
    /// A message this device queued can never be sent (e.g. this account left the
    /// conversation, or the server refused it for good). It stays in history as `Failed`.
    MessageFailed {
        /// Conversation.
        conversation: ConversationId,
        /// The id [`crate::Client::send`] returned.
        id: MessageId,
        /// Why, as an error code.
        code: ErrorCode,
        /// Why, for humans.
        message: String,
    },
    /// This device cannot process the commit the server accepted for a conversation's
    /// epoch (it does not decrypt, or it breaks the group's rules), so it would follow the
    /// conversation no further. qpq-core rejoins it by itself (an MLS external commit, ADR
    /// 0054) and then reports [`Event::ConversationRecovered`]; messages others sent
    /// between the two may never reach this device.
    ConversationBroken {
        /// Conversation.
        conversation: ConversationId,
        /// What could not be processed, for humans.
        reason: String,
    },
    /// A conversation reported broken works again: this device rejoined it by external
    /// commit, or processed a later commit of it.
    ConversationRecovered {
        /// Conversation.
        conversation: ConversationId,
    },
}

/// Receives events from background receive. Each listener is called on a thread of its own
/// (not a runtime thread), one event at a time, in order: it may block, and it may call back
/// into the [`crate::Client`] (ADR 0005).
pub trait EventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: Event);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn conv(id: u8, kind: ConversationKind, name: &str, members: &[&str]) -> Conversation {
        Conversation {
            id: ConversationId::from_bytes([id; 16]),
            kind,
            name: name.into(),
            post_quantum: false,
            ciphersuite: String::new(),
            epoch: 1,
            members: members.iter().map(|m| m.to_string()).collect(),
            active: true,
            unread: 0,
            consent: Consent::Allowed,
            invited_by: None,
        }
    }

    #[test]
    fn display_names_and_lookup_by_name_position_or_id() {
        let all = vec![
            conv(0xab, ConversationKind::Group, "friends", &["alice", "bob"]),
            conv(0xcd, ConversationKind::Dm, "whatever", &["alice", "bob"]),
        ];
        assert_eq!(all[0].display_name("alice"), "friends");
        assert_eq!(all[1].display_name("alice"), "@bob");
        let find = |w: &str| find_conversation(all.clone(), "alice", w).map(|c| c.id.as_bytes()[0]);
        assert_eq!(find("friends").unwrap(), 0xab);
        assert_eq!(find("@bob").unwrap(), 0xcd);
        assert_eq!(find("bob").unwrap(), 0xcd, "a DM by its peer's name");
        assert_eq!(find("#1").unwrap(), 0xab);
        assert_eq!(find("2").unwrap(), 0xcd);
        assert_eq!(find("abab").unwrap(), 0xab);
        assert_eq!(
            find("nobody").unwrap_err().code(),
            crate::ErrorCode::NotFound
        );
    }

    #[test]
    fn config_builder_takes_plain_values_and_checks_them() {
        let c = ClientConfig::builder("/tmp/x", "example.org:5001")
            .passphrase("p")
            .server_name("example.org")
            .fingerprint(&["ab"; 32].join(":"))
            .request_timeout_ms(5000)
            .build()
            .expect("valid");
        assert_eq!(c.server_name, "example.org");
        assert!(matches!(c.trust, Trust::Fingerprint(f) if f == [0xab; 32]));
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        let bad = ClientConfig::builder("/tmp/x", "h:1")
            .passphrase("p")
            .fingerprint("zz");
        assert_eq!(
            bad.build().unwrap_err().code(),
            crate::ErrorCode::InvalidInput
        );
        let no_key = ClientConfig::builder("/tmp/x", "h:1").build();
        assert_eq!(no_key.unwrap_err().code(), crate::ErrorCode::InvalidInput);
    }
}
