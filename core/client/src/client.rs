//! The blocking [`Client`] facade: owns the runtime handle, the background receive task and
//! the event delivery (queue, numbered log, subscriptions). Only this module touches the
//! runtime.
//!
//! Longer than the ~700-line guide on purpose: it is the whole public `Client` surface that
//! bindings copy, and most of its lines are the doc comments of that contract; the logic is
//! in `session`.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use qpq_proto::{method, v1};
use tokio::runtime::Runtime;

use crate::body::Body;
use crate::error::{Error, ErrorCode};
use crate::lease::Lease;
use crate::net::Net;
use crate::session::{Engine, Session};
use crate::store::Store;
use crate::types::{
    Account, ClientConfig, Conversation, ConversationId, Event, EventListener, EventRecord, Member,
    Message, MessageId,
};

/// Events kept for [`Client::wait_event_after`]; an older cursor resumes at the oldest kept.
const EVENT_LOG: usize = 4096;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static Runtime, Error> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("qpq-core")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))
}

/// Event delivery state, behind one mutex with one condvar.
#[derive(Default)]
struct Events {
    /// For [`Client::next_event`] while no subscription exists.
    queue: VecDeque<Event>,
    /// The last [`EVENT_LOG`] events with their cursors.
    log: VecDeque<EventRecord>,
    /// Cursor of the last event (0 = none yet).
    last: u64,
    /// Subscriptions: id → the sending side of its thread's channel.
    subscribers: BTreeMap<u64, std::sync::mpsc::Sender<Event>>,
    next_subscriber: u64,
    /// Bumped by [`Client::interrupt`]: waits that started before return `Cancelled`.
    interrupts: u64,
}

struct Inner {
    session: Session,
    events: Mutex<Events>,
    events_cv: Condvar,
    /// The subscription [`Client::set_listener`] manages.
    default_listener: Mutex<Option<Subscription>>,
    closed: AtomicBool,
    wake: tokio::sync::Notify,
    connected: AtomicBool,
    /// The store's lease (ADR 0021): held from `open` until `close` or drop.
    lease: Mutex<Option<Lease>>,
}

impl Inner {
    fn dispatch(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let Ok(mut st) = self.events.lock() else {
            return;
        };
        for e in events {
            st.last += 1;
            let cursor = st.last;
            st.log.push_back(EventRecord {
                cursor,
                event: e.clone(),
            });
            if st.log.len() > EVENT_LOG {
                st.log.pop_front();
            }
            if st.subscribers.is_empty() {
                st.queue.push_back(e);
            } else {
                // Each subscription runs on its own thread, in order, so it may block or call
                // back into the client without stalling the engine.
                for tx in st.subscribers.values() {
                    let _ = tx.send(e.clone());
                }
            }
        }
        drop(st);
        self.events_cv.notify_all();
    }

    fn set_connected(&self, connected: bool) {
        if self.connected.swap(connected, Ordering::SeqCst) != connected {
            self.dispatch(vec![Event::ConnectionChanged { connected }]);
        }
    }

    /// Background receive: catch up, flush the outbox, then long-poll (FetchWait) or wait for
    /// a push or a `send`, forever; reconnects with backoff when the connection drops.
    ///
    /// At most one FetchWait is outstanding: a push or a `send` does not cancel it (a
    /// cancelled FetchWait stays parked on the server until its timeout and holds one of the
    /// connection's streams; 16 of them stalled every call for seconds). A `send` only
    /// flushes the outbox; pushed messages are processed from the push when they follow the
    /// last processed one, without a Fetch; Acks are batched (`Session::ack_processed`).
    async fn receive_loop(self: Arc<Inner>) {
        let mut backoff = Duration::from_millis(100);
        let mut next = Work::Catchup;
        let mut wait: Option<FetchWait> = None;
        let mut unacked_since: Option<Instant> = None;
        while !self.closed.load(Ordering::SeqCst) {
            let logged_in = self
                .session
                .engine()
                .map(|e| e.logged_in())
                .unwrap_or(false);
            if !logged_in {
                wait = None;
                next = Work::Catchup;
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            let mut events = Vec::new();
            let r = {
                let _ops = self.session.ops().await;
                // Weak: an aborted task must not leave a cycle that keeps the store open.
                let me = Arc::downgrade(&self);
                let sink: crate::session::EventSink = Arc::new(move |ev| {
                    if let Some(inner) = me.upgrade() {
                        inner.dispatch(ev);
                    }
                });
                // Some(None): catch up with a Fetch; Some(Some(page)): process this page
                // first; None: nothing to receive.
                let page = match std::mem::replace(&mut next, Work::Nothing) {
                    Work::Catchup => Some(None),
                    Work::Page(p) => Some(Some(p)),
                    Work::Pushed => match self.pushed_page() {
                        None => Some(None),
                        // Everything pushed was processed already.
                        Some(p) if p.messages.is_empty() => None,
                        Some(p) => Some(Some(p)),
                    },
                    Work::Send | Work::Nothing => None,
                };
                let mut r = match page {
                    Some(prefetched) => {
                        self.session
                            .sync_from(&mut events, prefetched, Some(&sink))
                            .await
                    }
                    None => Ok(()),
                };
                if r.is_ok() {
                    r = self.session.flush_outbox_locked(&mut events).await;
                }
                if r.is_ok() {
                    if let Err(e) = self.session.replenish_key_packages_locked(false).await {
                        tracing::debug!("key package check failed: {e}");
                    }
                }
                r
            };
            self.dispatch(events);
            match r {
                Ok(()) => {
                    self.set_connected(true);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    if matches!(e.code(), ErrorCode::Network | ErrorCode::Timeout) {
                        self.set_connected(false);
                    }
                    tracing::debug!("background sync failed: {e}");
                    wait = None;
                    next = Work::Catchup;
                    let wait = backoff.max(e.retry_after().unwrap_or_default());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.wake.notified() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            // Batched Acks, and the bookkeeping of accepted sends when no transaction took it
            // along: once many wait, or ACK_DELAY after the first.
            let unsettled = self
                .session
                .engine()
                .map(|e| e.unsettled_sent())
                .unwrap_or(0);
            if self.session.unacked() || unsettled > 0 {
                let since = *unacked_since.get_or_insert_with(Instant::now);
                let due = since.elapsed() >= ACK_DELAY;
                if let Err(e) = self.session.ack_processed(due).await {
                    tracing::debug!("ack failed: {e}");
                }
                if due || unsettled >= SETTLE_BATCH {
                    if let Err(e) = self.session.engine().and_then(|e| e.settle_sent_now()) {
                        tracing::debug!("sent bookkeeping failed: {e}");
                    }
                }
                let unsettled = self
                    .session
                    .engine()
                    .map(|e| e.unsettled_sent())
                    .unwrap_or(0);
                if !self.session.unacked() && unsettled == 0 {
                    unacked_since = None;
                }
            } else {
                unacked_since = None;
            }
            if wait.is_none() {
                match self.fetch_wait() {
                    Some(w) => wait = Some(w),
                    None => continue,
                }
            }
            let ack_in = unacked_since
                .map(|s| ACK_DELAY.saturating_sub(s.elapsed()))
                .unwrap_or(Duration::from_secs(3600));
            let net = self.session.net();
            let Some(w) = wait.as_mut() else { continue };
            tokio::select! {
                r = w => {
                    wait = None;
                    match r {
                        Ok(resp) => next = Work::Page(resp),
                        Err(e) => {
                            tracing::debug!("fetch wait failed: {e}");
                            // The long poll's connection died (the idle timeout noticed a
                            // silent server): say so now, not after a reconnect has failed too.
                            if !net.connected().await {
                                self.set_connected(false);
                            }
                            if net.connected().await {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            next = Work::Catchup;
                        }
                    }
                }
                _ = net.push.notified() => next = Work::Pushed,
                _ = self.wake.notified() => next = Work::Send,
                _ = tokio::time::sleep(ack_in) => {}
            }
        }
    }

    /// The page the pushes make: the pushed messages after the last processed one, when
    /// they follow it without a gap. `None` when a Fetch is needed (a gap, a payload left
    /// out, a new connection).
    fn pushed_page(&self) -> Option<v1::FetchResponse> {
        let pushed = self.session.net().take_pushed();
        if pushed.must_fetch {
            return None;
        }
        let last = self.session.engine().ok()?.last_seq();
        let mut msgs: Vec<v1::QueuedMessage> = pushed
            .messages
            .into_iter()
            .filter(|m| m.seq > last)
            .collect();
        msgs.sort_by_key(|m| m.seq);
        msgs.dedup_by_key(|m| m.seq);
        let contiguous = msgs
            .iter()
            .enumerate()
            .all(|(i, m)| m.seq == last + 1 + i as u64);
        if !contiguous {
            return None;
        }
        Some(v1::FetchResponse {
            messages: msgs,
            more: false,
        })
    }

    /// A FetchWait after the last processed message, owned so that it can outlive one turn
    /// of the loop. `None` when logged out.
    fn fetch_wait(self: &Arc<Self>) -> Option<FetchWait> {
        let after = self.session.engine().ok()?.last_seq();
        let token = self.session.engine().ok()?.token()?;
        let me = self.clone();
        Some(Box::pin(async move {
            let req = v1::FetchWaitRequest {
                after_seq: after,
                limit: 256,
                channel_id: bytes::Bytes::new(),
                timeout_ms: 10_000,
            };
            me.session
                .net()
                .call::<_, v1::FetchResponse>(
                    method::FETCH_WAIT,
                    &req,
                    Some(&token[..]),
                    Duration::from_secs(11),
                    false,
                )
                .await
                .map_err(Error::from)
        }))
    }
}

/// An outstanding FetchWait.
type FetchWait =
    std::pin::Pin<Box<dyn Future<Output = Result<v1::FetchResponse, Error>> + Send + 'static>>;

/// Longest an Ack of processed messages (or the bookkeeping of accepted sends) waits for
/// more to join it.
const ACK_DELAY: Duration = Duration::from_secs(1);
/// Accepted sends whose bookkeeping is written at once, without waiting for ACK_DELAY.
const SETTLE_BATCH: usize = 256;

/// What woke the receive loop, so it does only that.
enum Work {
    /// Catch up from the queue (start, reconnect, after an error or a gap).
    Catchup,
    /// A FetchWait returned this page.
    Page(v1::FetchResponse),
    /// Pushes arrived.
    Pushed,
    /// A `send` queued a message: flush the outbox.
    Send,
    /// A timer (the Ack delay): nothing to process.
    Nothing,
}

/// Stops one subscription's deliveries when dropped or cancelled. Events already handed to
/// its listener are still delivered; none after.
pub struct Subscription {
    inner: Weak<Inner>,
    id: u64,
}

impl Subscription {
    /// Stops deliveries to this subscription's listener (also done on drop).
    pub fn cancel(&self) {
        if let Some(inner) = self.inner.upgrade() {
            if let Ok(mut st) = inner.events.lock() {
                st.subscribers.remove(&self.id);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

/// The qpq client: one account, one encrypted store, one connection. `Send + Sync`; every
/// method blocks until done. Reads (`conversations`, `messages`, `account`, ...) never wait
/// for the network, not even behind another thread's `invite` (ADR 0010). Calling a method
/// from inside an async runtime is refused (`Internal`): use `spawn_blocking`. After
/// [`Client::shutdown`] every call fails with `Closed`.
pub struct Client {
    inner: Arc<Inner>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client>();
    assert_send_sync::<Subscription>();
};

impl Client {
    /// Opens or creates the encrypted store in `config.data_dir` and starts background
    /// receive (which stays idle until logged in). Does not need the network. A wrong key
    /// fails with `Storage` and leaves the file untouched. Takes the store's lease first: while
    /// another process (or `Client`) has the store open, fails with `Busy` at once or after
    /// waiting `config.lock_timeout` (ADR 0021).
    pub fn open(config: ClientConfig) -> Result<Client, Error> {
        let rt = runtime()?;
        // Before the store is read: another holder means Busy (or waiting for it).
        let lease = Lease::acquire(&config.data_dir, config.lock_timeout)?;
        // A new store reaches the disk only once the server accepted a login (issue 10 item 5).
        let store = Store::open_deferred(
            &config.data_dir,
            &config.store_key,
            cfg!(feature = "test-hooks") && config.insecure_fast_kdf,
        )?;
        let engine = Engine::new(store)?;
        let net = {
            let _guard = rt.enter();
            Net::new(
                &config.server_addr,
                &config.server_name,
                config.trust.clone(),
                config.request_timeout,
            )?
        };
        let inner = Arc::new(Inner {
            session: Session::new(engine, net),
            events: Mutex::new(Events::default()),
            events_cv: Condvar::new(),
            default_listener: Mutex::new(None),
            closed: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            connected: AtomicBool::new(false),
            lease: Mutex::new(Some(lease)),
        });
        let task = rt.spawn(inner.clone().receive_loop());
        Ok(Client {
            inner,
            task: Mutex::new(Some(task)),
        })
    }

    /// Runs `f` on the runtime and blocks until it is done. `Send` is required so that no
    /// engine lock guard can be held across an `.await` inside (it is not `Send`).
    fn run<T, F: Future<Output = Result<T, Error>> + Send>(&self, f: F) -> Result<T, Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::closed());
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::internal(
                "blocking qpq call made from inside an async runtime; use spawn_blocking",
            ));
        }
        runtime()?.block_on(f)
    }

    /// Runs an operation that produces events; they go to subscribers or the queue.
    fn op<T: Send, F>(&self, f: impl FnOnce(Arc<Inner>) -> F + Send) -> Result<T, Error>
    where
        F: Future<Output = (Result<T, Error>, Vec<Event>)> + Send,
    {
        let (r, events) = self.run(async { Ok(f(self.inner.clone()).await) })?;
        self.inner.dispatch(events);
        r
    }

    /// Local work on the engine (no network): never waits behind another thread's network
    /// round trip.
    fn local<T>(&self, f: impl FnOnce(&Engine) -> Result<T, Error>) -> Result<T, Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::closed());
        }
        let engine = self.inner.session.engine()?;
        f(&engine)
    }

    /// Registers `username` with OPAQUE (the password never leaves this device), then logs
    /// in, uploads KeyPackages for both suites and the hybrid key. `Conflict` when taken.
    pub fn register(&self, username: &str, password: &str) -> Result<Account, Error> {
        let p = zeroize::Zeroizing::new(password.to_string());
        let r = self.run(async { self.inner.session.register(username, &p).await });
        self.inner.wake.notify_one();
        r
    }

    /// Logs in with OPAQUE; a wrong password gives `Unauthorized`. The session token is kept
    /// in the store, so a reopened client is still logged in until the token expires.
    pub fn login(&self, username: &str, password: &str) -> Result<Account, Error> {
        let p = zeroize::Zeroizing::new(password.to_string());
        let r = self.run(async { self.inner.session.login(username, &p).await });
        self.inner.wake.notify_one();
        r
    }

    /// Registers on first use, logs in when the name is taken (by this account, one hopes:
    /// a wrong password then gives `Unauthorized`). Returns the account and whether it was
    /// created now.
    pub fn register_or_login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(Account, bool), Error> {
        match self.register(username, password) {
            Ok(a) => Ok((a, true)),
            Err(e) if e.code() == ErrorCode::Conflict => {
                self.login(username, password).map(|a| (a, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Ends the session on the server (best effort) and forgets the token. Keys, groups and
    /// history stay in the store.
    pub fn logout(&self) -> Result<(), Error> {
        self.run(async { self.inner.session.logout().await })
    }

    /// The account stored in this client's store (logged in or not).
    pub fn account(&self) -> Option<Account> {
        self.local(|e| Ok(e.account())).ok().flatten()
    }

    /// Looks a user up on the server.
    pub fn resolve_user(&self, username: &str) -> Result<Member, Error> {
        self.run(async { self.inner.session.resolve_user(username).await })
    }

    /// Creates a group (the channel on the server, then the MLS group with the same id) and
    /// adds this account's other devices. `post_quantum` picks the X-Wing suite.
    pub fn create_group(&self, name: &str, post_quantum: bool) -> Result<ConversationId, Error> {
        self.op(|i| async move {
            let mut ev = Vec::new();
            let r = i.session.create_group(name, post_quantum, &mut ev).await;
            (r, ev)
        })
    }

    /// Creates (or reuses) the DM with `username` and invites all of the peer's devices.
    pub fn create_dm(&self, username: &str) -> Result<ConversationId, Error> {
        self.op(|i| async move {
            let mut ev = Vec::new();
            let r = i.session.create_dm(username, &mut ev).await;
            (r, ev)
        })
    }

    /// Adds every device of every named user in one commit (retried up to 5 times when
    /// another member commits first). Devices without a KeyPackage are skipped.
    pub fn invite(&self, conv: &ConversationId, usernames: &[&str]) -> Result<(), Error> {
        self.op(|i| async move {
            let mut ev = Vec::new();
            let r = i.session.invite(conv, usernames, &mut ev).await;
            (r, ev)
        })
    }

    /// Removes every device of `username` in one commit; the account leaves the channel.
    pub fn remove(&self, conv: &ConversationId, username: &str) -> Result<(), Error> {
        self.op(|i| async move {
            let mut ev = Vec::new();
            let r = i.session.remove(conv, username, &mut ev).await;
            (r, ev)
        })
    }

    /// Leaves: sends a Remove proposal for each of this account's leaves, leaves the channel
    /// on the server and drops the local group state. A remaining member commits the
    /// proposals when it receives them (so the group stays consistent without us).
    pub fn leave(&self, conv: &ConversationId) -> Result<(), Error> {
        self.op(|i| async move {
            let mut ev = Vec::new();
            let r = i.session.leave(conv, &mut ev).await;
            (r, ev)
        })
    }

    /// Accepts a conversation whose [`crate::Conversation::consent`] is `Requested` (ADR
    /// 0060): it becomes `Allowed`, and its members count as contacts. Local only; sending
    /// in the conversation accepts it too. `NotFound` for an unknown conversation.
    pub fn accept(&self, conv: &ConversationId) -> Result<(), Error> {
        self.local(|e| e.accept(conv))
    }

    /// Declines a conversation (ADR 0060): leaves it if still a member (as
    /// [`Client::leave`]) and marks it `Denied`; its history stays. With `block`, also blocks
    /// the account that invited this one (see [`Client::block`]). `NotFound` for an unknown
    /// conversation.
    pub fn decline(&self, conv: &ConversationId, block: bool) -> Result<(), Error> {
        self.op(|i| async move {
            let mut ev = Vec::new();
            let r = i.session.decline(conv, block, &mut ev).await;
            (r, ev)
        })
    }

    /// Blocks `username` on the server (ADR 0060): that account's messages no longer reach
    /// any device of this account (its sends report them undelivered) and it cannot add this
    /// account to a group or DM (`Forbidden`). Commits of groups both are in still arrive,
    /// so shared groups keep working; leave them to see nothing more. Idempotent; `NotFound`
    /// for an unknown user. It does not leave or decline anything by itself.
    pub fn block(&self, username: &str) -> Result<(), Error> {
        self.run(async { self.inner.session.block(username, true).await })
    }

    /// Ends a block made by [`Client::block`]. Idempotent.
    pub fn unblock(&self, username: &str) -> Result<(), Error> {
        self.run(async { self.inner.session.block(username, false).await })
    }

    /// Usernames of the accounts this account blocks, as the server stores them.
    pub fn blocked(&self) -> Result<Vec<String>, Error> {
        self.run(async { self.inner.session.blocked().await })
    }

    /// Makes `username` an admin of the group (ADR 0032): admins may remove other members
    /// and promote. Only an admin may promote; `Forbidden` otherwise, `AlreadyMember` when
    /// the user already is an admin, `NotFound` when not a member. A DM has no roles.
    pub fn promote(&self, conv: &ConversationId, username: &str) -> Result<(), Error> {
        self.op(|i| async move {
            let mut ev = Vec::new();
            let r = i.session.promote(conv, username, &mut ev).await;
            (r, ev)
        })
    }

    /// A self-update commit: fresh key material for this device's leaf.
    pub fn rotate_keys(&self, conv: &ConversationId) -> Result<(), Error> {
        self.op(|i| async move {
            let mut ev = Vec::new();
            let r = i.session.rotate_keys(conv, &mut ev).await;
            (r, ev)
        })
    }

    /// Sends a message: stores it in the history (as `Queued`) and in the outbox, in one
    /// transaction, and returns its id. Nothing else is waited for: the background task
    /// encrypts and sends it, then reports [`Event::MessageSent`] or [`Event::MessageFailed`].
    /// A network outage or rate limit is therefore never an error here; the message goes out
    /// on reconnect, with the same id (the server de-duplicates).
    ///
    /// Errors (`InvalidInput`: empty, too large or reserved body; `NotFound`: no such active
    /// conversation; `Storage`; `Closed`) all mean nothing was stored, so retrying `send`
    /// after an error never duplicates. To make a retry after a crash safe too, pass your own
    /// id to [`Client::send_with_id`].
    pub fn send(&self, conv: &ConversationId, body: Body) -> Result<MessageId, Error> {
        self.queue(conv, body, None)
    }

    /// [`Client::send`] with an id chosen by the caller (16 random bytes, e.g. kept by the app
    /// before calling): when a message with this id is already in the conversation, nothing
    /// is stored or sent again and the id is returned.
    pub fn send_with_id(
        &self,
        conv: &ConversationId,
        id: MessageId,
        body: Body,
    ) -> Result<MessageId, Error> {
        self.queue(conv, body, Some(id))
    }

    /// [`Client::send`] of a text body.
    pub fn send_text(&self, conv: &ConversationId, text: &str) -> Result<MessageId, Error> {
        self.send(conv, Body::Text(text.to_string()))
    }

    fn queue(
        &self,
        conv: &ConversationId,
        body: Body,
        id: Option<MessageId>,
    ) -> Result<MessageId, Error> {
        let id = self.local(|e| e.queue_message(conv, &body, id))?;
        self.inner.wake.notify_one();
        Ok(id)
    }

    /// Every local conversation (active or not). Local only.
    pub fn conversations(&self) -> Result<Vec<Conversation>, Error> {
        self.local(|e| e.conversations())
    }

    /// One conversation; `NotFound` when unknown. Local only.
    pub fn conversation(&self, conv: &ConversationId) -> Result<Conversation, Error> {
        self.local(|e| e.conversation(conv))
    }

    /// A conversation's display name: the group's name, or `@peer` (the other members) for a
    /// DM or an unnamed group.
    pub fn display_name(&self, conv: &Conversation) -> String {
        let me = self.account().map(|a| a.username).unwrap_or_default();
        conv.display_name(&me)
    }

    /// Finds a conversation by its position in [`Client::conversations`] (`"#2"` or `"2"`,
    /// 1-based), its id in hex (a prefix of at least 4 digits), its display name
    /// (`"friends"`), or `"@bob"`/`"bob"` for a DM. `NotFound` when nothing matches,
    /// `InvalidInput` naming the candidates when several do (never a guess).
    pub fn find_conversation(&self, what: &str) -> Result<Conversation, Error> {
        let me = self.account().map(|a| a.username).unwrap_or_default();
        let convs = self.conversations()?;
        crate::types::find_conversation(convs, &me, what)
    }

    /// Up to `limit` messages, oldest first. `before` is a `received_at_ms` (a strictly
    /// increasing local order key): only older messages are returned, so passing the first
    /// message's `received_at_ms` pages backwards. Reading the latest page clears `unread`.
    /// Local only.
    pub fn messages(
        &self,
        conv: &ConversationId,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<Message>, Error> {
        self.local(|e| e.messages(conv, limit, before))
    }

    /// Members of a conversation as the MLS group sees them, grouped by account.
    pub fn members(&self, conv: &ConversationId) -> Result<Vec<Member>, Error> {
        self.run(async { self.inner.session.members(conv).await })
    }

    /// The safety number between this account and `username` (60 digits in 12 groups).
    pub fn safety_number(&self, username: &str) -> Result<String, Error> {
        self.run(async { self.inner.session.safety_number(username).await })
    }

    /// Fetches and processes everything queued now, sends the outbox, and returns the events
    /// produced (they are not also delivered to the queue or subscribers).
    pub fn sync(&self) -> Result<Vec<Event>, Error> {
        self.run(async {
            let mut events = Vec::new();
            self.inner.session.sync(&mut events).await?;
            Ok(events)
        })
    }

    /// The next event from background receive, waiting up to `timeout`. `Ok(None)` on
    /// timeout; `Cancelled` when [`Client::interrupt`] is called meanwhile. Events go to the
    /// subscriptions instead while any exists.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<Event>, Error> {
        self.wait_events(timeout, |st| st.queue.pop_front())
    }

    /// The first event numbered after `cursor` (0 = from the oldest kept), waiting up to
    /// `timeout`; `Cancelled` when [`Client::interrupt`] is called meanwhile. Every event is
    /// numbered, whoever else receives it, and the last 4,096 are kept: a stream that stores
    /// the last cursor it handled resumes without gaps (a returned cursor more than one past
    /// yours means the ones between were dropped from the log). Readers do not consume.
    pub fn wait_event_after(
        &self,
        cursor: u64,
        timeout: Duration,
    ) -> Result<Option<EventRecord>, Error> {
        self.wait_events(timeout, |st| {
            st.log.iter().find(|r| r.cursor > cursor).cloned()
        })
    }

    /// Cursor of the newest event so far (0 = none yet).
    pub fn event_cursor(&self) -> u64 {
        self.inner.events.lock().map(|st| st.last).unwrap_or(0)
    }

    fn wait_events<T>(
        &self,
        timeout: Duration,
        mut take: impl FnMut(&mut Events) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        let deadline = Instant::now() + timeout;
        let mut st = self
            .inner
            .events
            .lock()
            .map_err(|_| Error::internal("event queue poisoned"))?;
        let started = st.interrupts;
        loop {
            if st.interrupts != started {
                return Err(Error::new(ErrorCode::Cancelled, "the wait was interrupted"));
            }
            if let Some(e) = take(&mut st) {
                return Ok(Some(e));
            }
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(Error::closed());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let (g, _) = self
                .inner
                .events_cv
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(200)))
                .map_err(|_| Error::internal("event queue poisoned"))?;
            st = g;
        }
    }

    /// Wakes every thread blocked in [`Client::next_event`] or [`Client::wait_event_after`]
    /// now: they return `Cancelled`. Waits that start later are not affected.
    pub fn interrupt(&self) {
        if let Ok(mut st) = self.inner.events.lock() {
            st.interrupts += 1;
        }
        self.inner.events_cv.notify_all();
    }

    /// Delivers every later background event to `listener` until the returned
    /// [`Subscription`] is dropped or cancelled. Several subscriptions may coexist; each gets
    /// every event. While any exists, events skip the [`Client::next_event`] queue.
    ///
    /// Each listener is called on a thread of its own, one event at a time, in order. It may
    /// block and may call back into this `Client`; its events wait for it meanwhile.
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) -> Result<Subscription, Error> {
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        std::thread::Builder::new()
            .name("qpq-listener".into())
            .spawn(move || {
                for e in rx {
                    listener.on_event(e);
                }
            })
            .map_err(|e| Error::internal(format!("cannot start a listener thread: {e}")))?;
        let mut st = self
            .inner
            .events
            .lock()
            .map_err(|_| Error::internal("event queue poisoned"))?;
        st.next_subscriber += 1;
        let id = st.next_subscriber;
        st.subscribers.insert(id, tx);
        Ok(Subscription {
            inner: Arc::downgrade(&self.inner),
            id,
        })
    }

    /// Sets (or clears) one listener, managed by the client: [`Client::subscribe`] with the
    /// subscription kept inside. Replacing or clearing it lets the previous one finish the
    /// events already handed to it.
    pub fn set_listener(&self, listener: Option<Arc<dyn EventListener>>) {
        let sub = listener.and_then(|l| self.subscribe(l).ok());
        if let Ok(mut d) = self.inner.default_listener.lock() {
            *d = sub;
        }
    }

    /// Round-trip time of a Health call.
    pub fn ping(&self) -> Result<Duration, Error> {
        self.run(async {
            let t = Instant::now();
            let _: v1::HealthResponse = self
                .inner
                .session
                .net()
                .call(
                    method::HEALTH,
                    &v1::HealthRequest {},
                    None,
                    Duration::ZERO,
                    true,
                )
                .await?;
            Ok(t.elapsed())
        })
    }

    /// Stops background receive and closes the connection; later calls fail with `Closed`
    /// and blocked waits return `Closed`. It also gives up the store's lease, so another
    /// process may open the store (ADR 0021). When it returns (called outside an async
    /// runtime) the background task is gone, so dropping the `Client` then closes the store
    /// file at once (unless a call made on another thread is still running): the files may be
    /// copied, moved or deleted after the drop. Dropping the client shuts it down too.
    /// Bindings expose it as their language's close idiom (ADR 0011).
    pub fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            t.abort();
            // Wait until the aborted task has dropped what it holds (its `Arc<Inner>`, hence
            // the engine and the store). Not possible from inside a runtime: there the store
            // closes a moment later, when the runtime drops the task.
            if tokio::runtime::Handle::try_current().is_err() {
                if let Ok(rt) = runtime() {
                    let _ = rt.block_on(t);
                }
            }
        }
        self.inner.session.net().shutdown();
        self.inner.events_cv.notify_all();
        // Ends the listener threads once they have delivered what they hold.
        if let Ok(mut d) = self.inner.default_listener.lock() {
            d.take();
        }
        if let Ok(mut st) = self.inner.events.lock() {
            st.subscribers.clear();
        }
        // Release the lease once no call is inside the engine (later calls fail: closed).
        let release = || {
            if let Ok(mut l) = self.inner.lease.lock() {
                l.take();
            }
        };
        match runtime() {
            Ok(rt) if tokio::runtime::Handle::try_current().is_err() => {
                rt.block_on(async {
                    // No group operation is between its round trips, and no call holds the
                    // engine, when the lease goes.
                    let _ops = self.inner.session.ops().await;
                    let engine = self.inner.session.engine();
                    // Accepted sends' bookkeeping, so a clean close leaves nothing to resend.
                    if let Ok(e) = &engine {
                        if let Err(err) = e.settle_sent_now() {
                            tracing::debug!("sent bookkeeping at shutdown failed: {err}");
                        }
                    }
                    release();
                });
            }
            _ => release(),
        }
    }

    /// Test hook: calls, store commits and group loads so far (counts, never times).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn debug_counters(&self) -> Result<crate::DebugCounters, Error> {
        self.inner.session.debug_counters()
    }

    /// Test hook: encrypts `text` in `conv` without sending it.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn debug_encrypt(&self, conv: &ConversationId, text: &str) -> Result<Vec<u8>, Error> {
        self.local(|e| e.debug_encrypt(conv, text))
    }

    /// Test hook: processes raw MLS bytes against this device's (possibly stale) group
    /// state without keeping anything; an undecryptable message gives `Crypto`.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn debug_process(&self, conv: &ConversationId, mls_bytes: &[u8]) -> Result<(), Error> {
        self.local(|e| e.debug_process(conv, mls_bytes))
    }

    /// Test hook: delivers each `(conversation, MLS bytes)` through the receive path as if
    /// the server had queued it again under a new sequence number (a redelivery or an
    /// injection). Events are returned, not dispatched; proposals are not committed.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn debug_inject(
        &self,
        msgs: Vec<(ConversationId, Vec<u8>)>,
    ) -> Result<Vec<crate::DebugInjected>, Error> {
        self.local(|e| e.debug_inject(&msgs))
    }

    /// Test hook: the MLS bytes of a self-update commit for `conv`, neither sent nor merged.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn debug_self_update(&self, conv: &ConversationId) -> Result<Vec<u8>, Error> {
        self.local(|e| e.debug_self_update(conv))
    }

    /// Test hook: the MLS bytes of a commit removing `devices` from `conv`, built without the
    /// role check (as a rule-breaking member would), neither sent nor merged.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn debug_remove_commit(
        &self,
        conv: &ConversationId,
        devices: &[crate::DeviceKey],
    ) -> Result<Vec<u8>, Error> {
        self.local(|e| e.debug_remove_commit(conv, devices))
    }

    /// Test hook: SHA-256 over everything in the store (MLS state included).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn debug_state_hash(&self) -> Result<[u8; 32], Error> {
        self.local(|e| e.debug_state_hash())
    }

    /// Test hook: makes the next commit stop at `at` as if the process died there. Drop the
    /// client afterwards and reopen it from its store to test recovery.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn debug_failpoint(&self, at: Option<crate::Failpoint>) {
        if let Ok(mut e) = self.inner.session.engine() {
            e.set_failpoint(at);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}
