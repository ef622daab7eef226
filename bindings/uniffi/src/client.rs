//! The exported `Client` object and its `Subscription` handle: one method per public method
//! of `qpq_core::Client`, with the same name (the surface test in `tests/surface.rs` keeps it
//! so). Each converts arguments, calls core and converts the answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qpq_core as core;

use crate::error::QpqError;
use crate::types::{
    conv_id, message_id, Account, Body, ClientConfig, Conversation, Event, EventListener,
    EventRecord, ListenerAdapter, Member, Message, Registration,
};

/// Result of every fallible export.
type Res<T> = Result<T, QpqError>;

/// The qpq client: one account, one encrypted store, one connection. Thread-safe; every
/// method blocks until done, so call it off the UI thread (the Kotlin and Swift layers do).
/// After `shutdown` every call fails with `Closed`; the language's close idiom (Kotlin
/// `close()`, Swift `deinit`) also shuts it down. No method is named `close` (ADR 0011).
#[derive(uniffi::Object)]
pub struct Client {
    inner: core::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

#[uniffi::export]
impl Client {
    /// Opens or creates the encrypted store in `config.data_dir`; needs no network. A wrong
    /// key gives `Storage`, a store another process holds `Busy`.
    #[uniffi::constructor]
    pub fn open(config: ClientConfig) -> Res<Arc<Client>> {
        let inner = core::Client::open(config.into_core()?)?;
        Ok(Arc::new(Client { inner }))
    }

    /// Registers `username` with OPAQUE, then logs in. `Conflict` when the name is taken.
    pub fn register(&self, username: String, password: String) -> Res<Account> {
        let password = zeroize::Zeroizing::new(password);
        Ok(self.inner.register(&username, &password)?.into())
    }

    /// Logs in with OPAQUE; a wrong password gives `Unauthorized`.
    pub fn login(&self, username: String, password: String) -> Res<Account> {
        let password = zeroize::Zeroizing::new(password);
        Ok(self.inner.login(&username, &password)?.into())
    }

    /// Registers on first use, logs in when the name is taken.
    pub fn register_or_login(&self, username: String, password: String) -> Res<Registration> {
        let password = zeroize::Zeroizing::new(password);
        let (account, created) = self.inner.register_or_login(&username, &password)?;
        Ok(Registration {
            account: account.into(),
            created,
        })
    }

    /// Ends the session on the server (best effort) and forgets the token.
    pub fn logout(&self) -> Res<()> {
        Ok(self.inner.logout()?)
    }

    /// The account stored in this client's store (logged in or not); `None` before the first
    /// successful registration or login.
    pub fn account(&self) -> Option<Account> {
        self.inner.account().map(Into::into)
    }

    /// Looks a user up on the server.
    pub fn resolve_user(&self, username: String) -> Res<Member> {
        Ok(self.inner.resolve_user(&username)?.into())
    }

    /// Creates a group; `post_quantum` picks the X-Wing suite. Returns its id (hex).
    pub fn create_group(&self, name: String, post_quantum: bool) -> Res<String> {
        Ok(self.inner.create_group(&name, post_quantum)?.to_string())
    }

    /// Creates (or reuses) the DM with `username`. Returns its id (hex).
    pub fn create_dm(&self, username: String) -> Res<String> {
        Ok(self.inner.create_dm(&username)?.to_string())
    }

    /// Adds every device of every named user in one commit.
    pub fn invite(&self, conversation: String, usernames: Vec<String>) -> Res<()> {
        let names: Vec<&str> = usernames.iter().map(String::as_str).collect();
        Ok(self.inner.invite(&conv_id(&conversation)?, &names)?)
    }

    /// Removes every device of `username` in one commit.
    pub fn remove(&self, conversation: String, username: String) -> Res<()> {
        Ok(self.inner.remove(&conv_id(&conversation)?, &username)?)
    }

    /// Leaves the conversation.
    pub fn leave(&self, conversation: String) -> Res<()> {
        Ok(self.inner.leave(&conv_id(&conversation)?)?)
    }

    /// Accepts a conversation whose consent is `Requested` (ADR 0060). Local only.
    pub fn accept(&self, conversation: String) -> Res<()> {
        Ok(self.inner.accept(&conv_id(&conversation)?)?)
    }

    /// Declines a conversation: leaves it and marks it `Denied`; with `block`, also blocks
    /// the account that invited this one.
    pub fn decline(&self, conversation: String, block: bool) -> Res<()> {
        Ok(self.inner.decline(&conv_id(&conversation)?, block)?)
    }

    /// Blocks `username` on the server (ADR 0060). Idempotent.
    pub fn block(&self, username: String) -> Res<()> {
        Ok(self.inner.block(&username)?)
    }

    /// Ends a block. Idempotent.
    pub fn unblock(&self, username: String) -> Res<()> {
        Ok(self.inner.unblock(&username)?)
    }

    /// Usernames this account blocks, as the server stores them.
    pub fn blocked(&self) -> Res<Vec<String>> {
        Ok(self.inner.blocked()?)
    }

    /// Makes `username` an admin of the group.
    pub fn promote(&self, conversation: String, username: String) -> Res<()> {
        Ok(self.inner.promote(&conv_id(&conversation)?, &username)?)
    }

    /// A self-update commit: fresh key material for this device's leaf.
    pub fn rotate_keys(&self, conversation: String) -> Res<()> {
        Ok(self.inner.rotate_keys(&conv_id(&conversation)?)?)
    }

    /// Stores and queues a message, returns its id (hex). Delivery is reported by the
    /// `MessageSent` / `MessageFailed` events, never as an error here.
    pub fn send(&self, conversation: String, body: Body) -> Res<String> {
        let body = core::Body::try_from(body)?;
        Ok(self.inner.send(&conv_id(&conversation)?, body)?.to_string())
    }

    /// `send` with an id chosen by the caller (32 hex digits): a retry never duplicates.
    pub fn send_with_id(&self, conversation: String, id: String, body: Body) -> Res<String> {
        let body = core::Body::try_from(body)?;
        let id = message_id(&id)?;
        let conversation = conv_id(&conversation)?;
        Ok(self
            .inner
            .send_with_id(&conversation, id, body)?
            .to_string())
    }

    /// `send` of a text body.
    pub fn send_text(&self, conversation: String, text: String) -> Res<String> {
        let conversation = conv_id(&conversation)?;
        Ok(self.inner.send_text(&conversation, &text)?.to_string())
    }

    /// Every local conversation. Local only.
    pub fn conversations(&self) -> Res<Vec<Conversation>> {
        Ok(self
            .inner
            .conversations()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// One conversation; `NotFound` when unknown. Local only.
    pub fn conversation(&self, conversation: String) -> Res<Conversation> {
        Ok(self.inner.conversation(&conv_id(&conversation)?)?.into())
    }

    /// The name to show for a conversation: its group name, or `@peer` for a DM.
    pub fn display_name(&self, conversation: Conversation) -> Res<String> {
        Ok(self.inner.display_name(&conversation.into_core()?))
    }

    /// Finds a conversation by position (`"#2"`), hex id prefix, display name or `@user`.
    pub fn find_conversation(&self, what: String) -> Res<Conversation> {
        Ok(self.inner.find_conversation(&what)?.into())
    }

    /// Up to `limit` messages, oldest first, older than `before` (a `received_at_ms`).
    pub fn messages(
        &self,
        conversation: String,
        limit: u32,
        before: Option<u64>,
    ) -> Res<Vec<Message>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(self
            .inner
            .messages(&conv_id(&conversation)?, limit, before)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Members of a conversation as the MLS group sees them.
    pub fn members(&self, conversation: String) -> Res<Vec<Member>> {
        Ok(self
            .inner
            .members(&conv_id(&conversation)?)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The safety number between this account and `username` (60 digits in 12 groups).
    pub fn safety_number(&self, username: String) -> Res<String> {
        Ok(self.inner.safety_number(&username)?)
    }

    /// Fetches and processes everything queued now; returns the events produced.
    pub fn sync(&self) -> Res<Vec<Event>> {
        Ok(self.inner.sync()?.into_iter().map(Into::into).collect())
    }

    /// The next event, waiting up to `timeout`; `None` on timeout, `Cancelled` when
    /// `interrupt` is called meanwhile.
    pub fn next_event(&self, timeout: Duration) -> Res<Option<Event>> {
        Ok(self.inner.next_event(timeout)?.map(Into::into))
    }

    /// The first event numbered after `cursor`, waiting up to `timeout`; readers do not
    /// consume, so a stream resumes from its last cursor without gaps.
    pub fn wait_event_after(&self, cursor: u64, timeout: Duration) -> Res<Option<EventRecord>> {
        Ok(self
            .inner
            .wait_event_after(cursor, timeout)?
            .map(Into::into))
    }

    /// Cursor of the newest event so far (0 = none yet).
    pub fn event_cursor(&self) -> u64 {
        self.inner.event_cursor()
    }

    /// Wakes every blocked `next_event` / `wait_event_after` now: they fail with `Cancelled`.
    pub fn interrupt(&self) {
        self.inner.interrupt()
    }

    /// Delivers every later event to `listener` until the returned subscription is
    /// cancelled or released (Kotlin `close()`, Swift `deinit`).
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) -> Res<Arc<Subscription>> {
        let sub = self.inner.subscribe(Arc::new(ListenerAdapter(listener)))?;
        Ok(Arc::new(Subscription {
            inner: Mutex::new(Some(sub)),
        }))
    }

    /// Sets (or clears, with `None`) the one listener the client manages itself.
    pub fn set_listener(&self, listener: Option<Arc<dyn EventListener>>) {
        self.inner.set_listener(
            listener.map(|l| Arc::new(ListenerAdapter(l)) as Arc<dyn core::EventListener>),
        )
    }

    /// Round-trip time of a Health call.
    pub fn ping(&self) -> Res<Duration> {
        Ok(self.inner.ping()?)
    }

    /// Stops background receive, closes the connection and gives up the store; idempotent.
    /// Later calls fail with `Closed`.
    pub fn shutdown(&self) {
        self.inner.shutdown()
    }
}

/// A listener's subscription: deliveries stop once it is cancelled or released.
#[derive(uniffi::Object)]
pub struct Subscription {
    inner: Mutex<Option<core::Subscription>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

#[uniffi::export]
impl Subscription {
    /// Stops deliveries to this subscription's listener; idempotent. Events already handed
    /// to the listener are still delivered.
    pub fn cancel(&self) {
        let sub = self.inner.lock().ok().and_then(|mut s| s.take());
        if let Some(sub) = sub {
            sub.cancel();
        }
    }
}
