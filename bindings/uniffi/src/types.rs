//! Records and enums mirroring `qpq_core`'s public data types, and their conversions.
//!
//! Ids (conversation, message) travel as lower-case hex strings (32 digits); keys as bytes
//! (32 of them). Durations in records are milliseconds; method timeouts are durations.

use std::sync::Arc;

use qpq_core as core;
use zeroize::Zeroize;

use crate::error::QpqError;

/// A conversation id from its hex form (core's `FromStr`: `InvalidInput` when malformed).
pub(crate) fn conv_id(s: &str) -> Result<core::ConversationId, QpqError> {
    Ok(s.parse()?)
}

/// A message id from its hex form (core's `FromStr`: `InvalidInput` when malformed).
pub(crate) fn message_id(s: &str) -> Result<core::MessageId, QpqError> {
    Ok(s.parse()?)
}

/// The largest body `send` accepts, in bytes (`qpq_core::MAX_BODY_BYTES`).
#[uniffi::export]
pub fn max_body_bytes() -> u64 {
    core::MAX_BODY_BYTES as u64
}

/// The longest content type of an application body, in bytes.
#[uniffi::export]
pub fn max_content_type_bytes() -> u64 {
    core::MAX_CONTENT_TYPE_BYTES as u64
}

/// The pinned error codes (`core/client/errors.toml`); the discriminant is the number.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ErrorCode {
    /// The server could not be reached or the connection failed.
    Network = 1,
    /// Not logged in, wrong password, or the session expired or was revoked.
    Unauthorized = 2,
    /// The user, conversation, message or key does not exist.
    NotFound = 3,
    /// Conflicts with current state.
    Conflict = 4,
    /// The caller passed something invalid.
    InvalidInput = 5,
    /// A cryptographic operation failed.
    Crypto = 6,
    /// The local encrypted store failed, is corrupt, or the key is wrong.
    Storage = 7,
    /// The server asks to slow down.
    RateLimited = 8,
    /// The request did not complete in time.
    Timeout = 9,
    /// The client was closed.
    Closed = 10,
    /// A bug or an unexpected server answer.
    Internal = 11,
    /// A wait was interrupted or cancelled.
    Cancelled = 12,
    /// The store is held by another process.
    Busy = 13,
    /// Not allowed.
    Forbidden = 14,
    /// The invited user is already in the conversation.
    AlreadyMember = 15,
}

impl From<core::ErrorCode> for ErrorCode {
    fn from(c: core::ErrorCode) -> ErrorCode {
        match c {
            core::ErrorCode::Network => ErrorCode::Network,
            core::ErrorCode::Unauthorized => ErrorCode::Unauthorized,
            core::ErrorCode::NotFound => ErrorCode::NotFound,
            core::ErrorCode::Conflict => ErrorCode::Conflict,
            core::ErrorCode::InvalidInput => ErrorCode::InvalidInput,
            core::ErrorCode::Crypto => ErrorCode::Crypto,
            core::ErrorCode::Storage => ErrorCode::Storage,
            core::ErrorCode::RateLimited => ErrorCode::RateLimited,
            core::ErrorCode::Timeout => ErrorCode::Timeout,
            core::ErrorCode::Closed => ErrorCode::Closed,
            core::ErrorCode::Internal => ErrorCode::Internal,
            core::ErrorCode::Cancelled => ErrorCode::Cancelled,
            core::ErrorCode::Busy => ErrorCode::Busy,
            core::ErrorCode::Forbidden => ErrorCode::Forbidden,
            core::ErrorCode::AlreadyMember => ErrorCode::AlreadyMember,
        }
    }
}

/// The key of the local encrypted store. The binding's copy of the secret is zeroized once
/// handed to core.
#[derive(uniffi::Enum)]
pub enum StoreKey {
    /// A passphrase stretched with Argon2id and a random salt kept beside the store.
    Passphrase {
        /// The passphrase.
        passphrase: String,
    },
    /// A raw 32-byte key, e.g. from the platform keystore.
    Raw {
        /// Exactly 32 bytes.
        key: Vec<u8>,
    },
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

/// How the client trusts the server's TLS certificate.
#[derive(Debug, Clone, uniffi::Enum)]
pub enum Trust {
    /// Exactly this DER certificate.
    PinnedCertDer {
        /// The certificate, DER.
        der: Vec<u8>,
    },
    /// Exactly the DER certificate in this file (read at connect time).
    PinnedCertFile {
        /// Path of the file.
        path: String,
    },
    /// Any certificate whose leaf DER has this SHA-256 (64 hex digits, `:` allowed).
    Fingerprint {
        /// The fingerprint in hex.
        hex: String,
    },
    /// The WebPKI roots compiled into the library.
    SystemRoots,
}

/// Configuration of one [`crate::Client`]: one account per `data_dir`.
#[derive(Debug, uniffi::Record)]
pub struct ClientConfig {
    /// Per-account directory of the encrypted store.
    pub data_dir: String,
    /// Key of the store.
    pub store_key: StoreKey,
    /// Server address, `"host:port"`.
    pub server_addr: String,
    /// How to trust the server.
    pub trust: Trust,
    /// TLS server name.
    #[uniffi(default = "localhost")]
    pub server_name: String,
    /// Deadline of each request, in milliseconds.
    #[uniffi(default = 15000)]
    pub request_timeout_ms: u64,
    /// How long `open` waits for a store another process holds before `Busy` (0: at once).
    #[uniffi(default = 0)]
    pub lock_timeout_ms: u64,
    /// Tests only: a cheap Argon2id cost for passphrase keys. Never set it in an app.
    #[uniffi(default = false)]
    pub insecure_fast_kdf: bool,
}

impl ClientConfig {
    /// The core config; `InvalidInput` for a malformed key, fingerprint or value.
    pub(crate) fn into_core(self) -> Result<core::ClientConfig, QpqError> {
        let ClientConfig {
            data_dir,
            store_key,
            server_addr,
            trust,
            server_name,
            request_timeout_ms,
            lock_timeout_ms,
            insecure_fast_kdf,
        } = self;
        let mut b = core::ClientConfig::builder(data_dir, server_addr)
            .server_name(server_name)
            .request_timeout_ms(request_timeout_ms)
            .lock_timeout_ms(lock_timeout_ms);
        b = match store_key {
            StoreKey::Passphrase { mut passphrase } => {
                let b = b.passphrase(passphrase.as_str());
                passphrase.zeroize();
                b
            }
            StoreKey::Raw { mut key } => {
                let raw: Result<[u8; 32], _> = key.as_slice().try_into();
                key.zeroize();
                b.raw_key(raw.map_err(|_| QpqError::invalid("a raw store key has 32 bytes"))?)
            }
        };
        b = match trust {
            Trust::PinnedCertDer { der } => b.pinned_cert_der(der),
            Trust::PinnedCertFile { path } => b.pinned_cert_file(path),
            Trust::Fingerprint { hex } => b.fingerprint(&hex),
            Trust::SystemRoots => b.system_roots(),
        };
        let mut config = b.build()?;
        config.insecure_fast_kdf = insecure_fast_kdf;
        Ok(config)
    }
}

/// The account of a client.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Account {
    /// Username.
    pub username: String,
    /// Account identity key (32 bytes, the same on every device).
    pub identity_key: Vec<u8>,
    /// This device's key (32 bytes, its MLS signature key).
    pub device_key: Vec<u8>,
}

impl From<core::Account> for Account {
    fn from(a: core::Account) -> Account {
        Account {
            username: a.username,
            identity_key: a.identity_key.to_bytes().to_vec(),
            device_key: a.device_key.to_bytes().to_vec(),
        }
    }
}

/// What `register_or_login` did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Registration {
    /// The account.
    pub account: Account,
    /// True when it was registered now, false when it logged in.
    pub created: bool,
}

/// Whether a conversation is a DM or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConversationKind {
    /// Two accounts (with all their devices).
    Dm,
    /// Any number of members.
    Group,
}

/// Whether the user wants a conversation (ADR 0060).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Consent {
    /// Created here, accepted, written in, or from a contact.
    Allowed,
    /// Joined by an invitation from someone this account shares no allowed conversation with.
    Requested,
    /// Declined: left, and kept only as history.
    Denied,
}

/// A conversation as stored locally.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Conversation {
    /// Id (hex).
    pub id: String,
    /// DM or group.
    pub kind: ConversationKind,
    /// Group name, or the peer's username for a DM.
    pub name: String,
    /// True for the X-Wing (ML-KEM-768 + X25519) ciphersuite.
    pub post_quantum: bool,
    /// MLS ciphersuite name.
    pub ciphersuite: String,
    /// Current MLS epoch.
    pub epoch: u64,
    /// Usernames of the members, sorted.
    pub members: Vec<String>,
    /// False once this account was removed or left.
    pub active: bool,
    /// Received messages not yet read through `messages`.
    pub unread: u64,
    /// Whether the user wants it: `Requested` until accepted or declined.
    pub consent: Consent,
    /// Who invited this account (None for a conversation this device created).
    pub invited_by: Option<String>,
}

impl From<core::Consent> for Consent {
    fn from(c: core::Consent) -> Consent {
        match c {
            core::Consent::Allowed => Consent::Allowed,
            core::Consent::Requested => Consent::Requested,
            core::Consent::Denied => Consent::Denied,
        }
    }
}

impl From<Consent> for core::Consent {
    fn from(c: Consent) -> core::Consent {
        match c {
            Consent::Allowed => core::Consent::Allowed,
            Consent::Requested => core::Consent::Requested,
            Consent::Denied => core::Consent::Denied,
        }
    }
}

impl From<core::Conversation> for Conversation {
    fn from(c: core::Conversation) -> Conversation {
        Conversation {
            id: c.id.to_string(),
            kind: match c.kind {
                core::ConversationKind::Dm => ConversationKind::Dm,
                core::ConversationKind::Group => ConversationKind::Group,
            },
            name: c.name,
            post_quantum: c.post_quantum,
            ciphersuite: c.ciphersuite,
            epoch: c.epoch,
            members: c.members,
            active: c.active,
            unread: c.unread,
            consent: c.consent.into(),
            invited_by: c.invited_by,
        }
    }
}

impl Conversation {
    /// Back to core's form (for `display_name`); `InvalidInput` for a malformed id.
    pub(crate) fn into_core(self) -> Result<core::Conversation, QpqError> {
        Ok(core::Conversation {
            id: conv_id(&self.id)?,
            kind: match self.kind {
                ConversationKind::Dm => core::ConversationKind::Dm,
                ConversationKind::Group => core::ConversationKind::Group,
            },
            name: self.name,
            post_quantum: self.post_quantum,
            ciphersuite: self.ciphersuite,
            epoch: self.epoch,
            members: self.members,
            active: self.active,
            unread: self.unread,
            consent: self.consent.into(),
            invited_by: self.invited_by,
        })
    }
}

/// What a message carries. Text and application payloads can be sent; the other kinds are
/// reserved (sending one gives `InvalidInput`, received ones are delivered).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Body {
    /// UTF-8 text.
    Text {
        /// The text.
        text: String,
    },
    /// An application's own payload.
    App {
        /// What the bytes are, e.g. `"application/json"` (1 to 255 bytes).
        content_type: String,
        /// The payload.
        bytes: Vec<u8>,
    },
    /// Reserved: a reply quoting another message.
    Reply {
        /// The message replied to (hex id).
        to: String,
        /// The reply text.
        text: String,
    },
    /// Reserved: a reaction to another message.
    Reaction {
        /// The message reacted to (hex id).
        to: String,
        /// The emoji.
        emoji: String,
        /// True when the reaction is taken back.
        remove: bool,
    },
    /// Reserved: a new text for an earlier message of the same sender.
    Edit {
        /// The message edited (hex id).
        of: String,
        /// Its new text.
        text: String,
    },
    /// Reserved: the sender deletes an earlier message of theirs.
    Delete {
        /// The message deleted (hex id).
        of: String,
    },
    /// Reserved: a file stored elsewhere, encrypted under `key`.
    File {
        /// File name.
        name: String,
        /// MIME type.
        mime_type: String,
        /// Size in bytes.
        size: u64,
        /// SHA-256 of the encrypted file.
        sha256: Vec<u8>,
        /// The file's encryption key.
        key: Vec<u8>,
    },
    /// A kind this version of the binding does not know (a newer engine); never sent.
    Unknown,
}

impl From<core::Body> for Body {
    fn from(b: core::Body) -> Body {
        match b {
            core::Body::Text(text) => Body::Text { text },
            core::Body::App {
                content_type,
                bytes,
            } => Body::App {
                content_type,
                bytes,
            },
            core::Body::Reply { to, text } => Body::Reply {
                to: to.to_string(),
                text,
            },
            core::Body::Reaction { to, emoji, remove } => Body::Reaction {
                to: to.to_string(),
                emoji,
                remove,
            },
            core::Body::Edit { of, text } => Body::Edit {
                of: of.to_string(),
                text,
            },
            core::Body::Delete { of } => Body::Delete { of: of.to_string() },
            core::Body::File {
                name,
                mime_type,
                size,
                sha256,
                key,
            } => Body::File {
                name,
                mime_type,
                size,
                sha256,
                key,
            },
            _ => Body::Unknown,
        }
    }
}

impl TryFrom<Body> for core::Body {
    type Error = QpqError;

    fn try_from(b: Body) -> Result<core::Body, QpqError> {
        Ok(match b {
            Body::Text { text } => core::Body::Text(text),
            Body::App {
                content_type,
                bytes,
            } => core::Body::App {
                content_type,
                bytes,
            },
            Body::Reply { to, text } => core::Body::Reply {
                to: message_id(&to)?,
                text,
            },
            Body::Reaction { to, emoji, remove } => core::Body::Reaction {
                to: message_id(&to)?,
                emoji,
                remove,
            },
            Body::Edit { of, text } => core::Body::Edit {
                of: message_id(&of)?,
                text,
            },
            Body::Delete { of } => core::Body::Delete {
                of: message_id(&of)?,
            },
            Body::File {
                name,
                mime_type,
                size,
                sha256,
                key,
            } => core::Body::File {
                name,
                mime_type,
                size,
                sha256,
                key,
            },
            Body::Unknown => return Err(QpqError::invalid("an unknown body kind is not sent")),
        })
    }
}

/// Delivery state of a message in the local history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Delivery {
    /// An incoming message (or an outgoing one from another device of this account).
    Received,
    /// Stored and queued on this device; not yet accepted by the server.
    Queued,
    /// Accepted by the server for every member.
    Sent,
    /// Refused for good; it will not be sent.
    Failed,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    /// Sender-chosen id (hex).
    pub id: String,
    /// Conversation id (hex).
    pub conversation: String,
    /// Sender's username.
    pub sender: String,
    /// Sender's device key (32 bytes).
    pub sender_device: Vec<u8>,
    /// What the message carries.
    pub body: Body,
    /// Sender's clock, Unix ms.
    pub sent_at_ms: u64,
    /// Local order key and receive time, Unix ms; strictly increasing within one store.
    pub received_at_ms: u64,
    /// True when sent by this account.
    pub outgoing: bool,
    /// Where an outgoing message is on its way out; `Received` for incoming ones.
    pub delivery: Delivery,
}

impl From<core::Message> for Message {
    fn from(m: core::Message) -> Message {
        Message {
            id: m.id.to_string(),
            conversation: m.conversation.to_string(),
            sender: m.sender,
            sender_device: m.sender_device.to_bytes().to_vec(),
            body: m.body.into(),
            sent_at_ms: m.sent_at_ms,
            received_at_ms: m.received_at_ms,
            outgoing: m.outgoing,
            delivery: match m.delivery {
                core::Delivery::Received => Delivery::Received,
                core::Delivery::Queued => Delivery::Queued,
                core::Delivery::Sent => Delivery::Sent,
                core::Delivery::Failed => Delivery::Failed,
            },
        }
    }
}

/// A member of a conversation, or a resolved user.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    /// Username.
    pub username: String,
    /// Account identity key (32 bytes); `None` while this device does not know it.
    pub identity_key: Option<Vec<u8>>,
    /// Device keys (32 bytes each).
    pub devices: Vec<Vec<u8>>,
}

impl From<core::Member> for Member {
    fn from(m: core::Member) -> Member {
        Member {
            username: m.username,
            identity_key: m.identity_key.map(|k| k.to_bytes().to_vec()),
            devices: m.devices.iter().map(|d| d.to_bytes().to_vec()).collect(),
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A new message (incoming, or outgoing from another device of this account).
    Message {
        /// The message.
        message: Message,
    },
    /// This account was added to a conversation.
    ConversationJoined {
        /// The conversation.
        conversation: Conversation,
    },
    /// Members joined or left a conversation.
    MembersChanged {
        /// Conversation id (hex).
        conversation: String,
        /// Who made the change; `None` when this device does not know that member's name.
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
    /// This account is no longer in a conversation (removed, or it left); history stays.
    Removed {
        /// Conversation id (hex).
        conversation: String,
        /// Who removed this account (its own name when it left); `None` when unknown.
        by: Option<String>,
        /// True when this account left on its own.
        left: bool,
    },
    /// The connection to the server went up or down.
    ConnectionChanged {
        /// True when connected.
        connected: bool,
    },
    /// The server accepted a message this device sent.
    MessageSent {
        /// Conversation id (hex).
        conversation: String,
        /// The id `send` returned.
        id: String,
    },
    /// A message this device queued can never be sent; it stays in history as `Failed`.
    MessageFailed {
        /// Conversation id (hex).
        conversation: String,
        /// The id `send` returned.
        id: String,
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for humans.
        reason: String,
    },
    /// A conversation can no longer be read or written on this device (its group state is
    /// broken); see `ConversationRecovered`.
    ConversationBroken {
        /// Conversation id (hex).
        conversation: String,
        /// Why, for humans.
        reason: String,
    },
    /// A broken conversation works again.
    ConversationRecovered {
        /// Conversation id (hex).
        conversation: String,
    },
}

impl From<core::Event> for Event {
    fn from(e: core::Event) -> Event {
        match e {
            core::Event::Message(m) => Event::Message { message: m.into() },
            core::Event::ConversationJoined(c) => Event::ConversationJoined {
                conversation: c.into(),
            },
            core::Event::MembersChanged {
                conversation,
                by,
                added,
                removed,
                left,
                epoch,
            } => Event::MembersChanged {
                conversation: conversation.to_string(),
                by,
                added,
                removed,
                left,
                epoch,
            },
            core::Event::Removed {
                conversation,
                by,
                left,
            } => Event::Removed {
                conversation: conversation.to_string(),
                by,
                left,
            },
            core::Event::ConversationBroken {
                conversation,
                reason,
            } => Event::ConversationBroken {
                conversation: conversation.to_string(),
                reason,
            },
            core::Event::ConversationRecovered { conversation } => Event::ConversationRecovered {
                conversation: conversation.to_string(),
            },
            core::Event::ConnectionChanged { connected } => Event::ConnectionChanged { connected },
            core::Event::MessageSent { conversation, id } => Event::MessageSent {
                conversation: conversation.to_string(),
                id: id.to_string(),
            },
            core::Event::MessageFailed {
                conversation,
                id,
                code,
                message,
            } => Event::MessageFailed {
                conversation: conversation.to_string(),
                id: id.to_string(),
                code: code.into(),
                reason: message,
            },
        }
    }
}

/// An event with its number: cursors increase by one per event, from 1, per client.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct EventRecord {
    /// The event's number.
    pub cursor: u64,
    /// The event.
    pub event: Event,
}

impl From<core::EventRecord> for EventRecord {
    fn from(r: core::EventRecord) -> EventRecord {
        EventRecord {
            cursor: r.cursor,
            event: r.event.into(),
        }
    }
}

/// Receives events, implemented in Kotlin or Swift (or Rust). Called on a thread of its own
/// per subscription, one event at a time, in order; it may block and may call back into the
/// client. No Rust lock is held while it runs. A thrown error is logged and the next event
/// is still delivered.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: Event) -> Result<(), QpqError>;
}

/// Adapts a foreign listener to core's listener trait.
pub(crate) struct ListenerAdapter(pub(crate) Arc<dyn EventListener>);

impl core::EventListener for ListenerAdapter {
    fn on_event(&self, event: core::Event) {
        if let Err(e) = self.0.on_event(event.into()) {
            tracing::warn!("an event listener failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_malformed_ones_are_invalid_input() {
        let id = core::ConversationId::from_bytes([0xa5u8; 16]);
        assert_eq!(conv_id(&id.to_string()).expect("valid"), id);
        assert_eq!(
            conv_id(&id.to_string().to_uppercase()).expect("either case"),
            id
        );
        for bad in ["", "abc", "zz".repeat(16).as_str(), "é".repeat(16).as_str()] {
            let e = conv_id(bad).expect_err("malformed");
            assert_eq!(e.code(), core::ErrorCode::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn every_body_kind_round_trips_through_the_binding_form() {
        let id = core::MessageId::from_bytes([7u8; 16]).to_string();
        for b in [
            Body::Text { text: "hé".into() },
            Body::App {
                content_type: "a/b".into(),
                bytes: vec![0, 1, 255],
            },
            Body::Reply {
                to: id.clone(),
                text: "yes".into(),
            },
            Body::Reaction {
                to: id.clone(),
                emoji: "👍".into(),
                remove: true,
            },
            Body::Edit {
                of: id.clone(),
                text: "x".into(),
            },
            Body::Delete { of: id.clone() },
            Body::File {
                name: "f".into(),
                mime_type: "t/p".into(),
                size: 3,
                sha256: vec![1; 32],
                key: vec![2; 32],
            },
        ] {
            let c = core::Body::try_from(b.clone()).expect("converts");
            assert_eq!(Body::from(c), b);
        }
        assert!(core::Body::try_from(Body::Unknown).is_err());
    }
}
