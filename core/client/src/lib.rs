//! `qpq-core`: the quicproquo client engine.
//!
//! What it does: one blocking, `Send + Sync` [`Client`] per account that registers and logs
//! in with OPAQUE, keeps an encrypted local store (SQLCipher), runs MLS groups (classic and
//! X-Wing post-quantum) through openmls, talks to a `qpq-server` over QUIC, and delivers
//! incoming messages exactly once, in order, as [`Event`]s — acked to the server only after
//! they are stored.
//!
//! What it will not do: render anything, hold a UI thread, or expose async APIs (bindings wrap
//! the blocking calls), talk to more than one server, or trust the server with any key.
//!
//! Layers (DESIGN.md §1): `net` (only it touches quinn), `store` (only it touches rusqlite),
//! `mls` (openmls glue), `session` (the engine: account, directory, groups, the commit
//! protocol, outbox, receive) and the `client` facade (only it touches the runtime).

mod body;
mod client;
mod error;
mod ids;
mod lease;
mod mls;
mod net;
#[cfg(test)]
mod passive_vectors;
mod roles;
mod session;
mod store;
mod types;

pub use body::{Body, MAX_BODY_BYTES, MAX_CONTENT_TYPE_BYTES};
pub use client::{Client, Subscription};
pub use error::{Error, ErrorCode};
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use session::{DebugCounters, DebugInjected, Failpoint};
pub use types::{
    Account, ClientConfig, ClientConfigBuilder, Consent, Conversation, ConversationId,
    ConversationKind, Delivery, DeviceKey, Event, EventListener, EventRecord, IdentityKey, Member,
    Message, MessageId, StoreKey, Trust,
};
