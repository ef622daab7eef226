//! `qpq-uniffi`: the UniFFI exports of [`qpq_core`] for Kotlin and Swift.
//!
//! What it does: exposes the whole public `qpq_core::Client` API (the `debug_*` test hooks
//! excepted) as a UniFFI object, the plain data types as records and enums, the error as a
//! typed enum with one variant per pinned code (`core/client/errors.toml`), and events both
//! as a blocking pull (`next_event`, `wait_event_after`) and as a foreign listener trait.
//!
//! What it will not do: hold any logic. Every function converts its arguments, calls core
//! and converts the answer; a behaviour a binding needs goes into `qpq-core` (DESIGN.md §1).
//! The Kotlin and Swift sources are generated from this library by
//! `bindings/uniffi/generate.sh` and checked in (ADR 0090).

uniffi::setup_scaffolding!();

mod client;
mod error;
mod types;

pub use client::{Client, Subscription};
pub use error::{error_for_code, QpqError};
pub use types::{
    max_body_bytes, max_content_type_bytes, Account, Body, ClientConfig, Consent, Conversation,
    ConversationKind, Delivery, ErrorCode, Event, EventListener, EventRecord, Member, Message,
    Registration, StoreKey, Trust,
};
