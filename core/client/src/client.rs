//! The blocking [`Client`] facade: owns the runtime handle, the background receive task and
//! the event queue. Only this module touches the runtime.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use qpq_proto::{method, v1};
use tokio::runtime::Runtime;

use crate::error::{Error, ErrorCode};
use crate::net::Net;
use crate::session::Engine;
use crate::store::Store;
use crate::types::{
    Account, ClientConfig, Conversation, ConversationId, Event, EventListener, Member, Message,
    MessageId,
};

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

struct Inner {
    net: Net,
    engine: tokio::sync::Mutex<Engine>,
    queue: Mutex<VecDeque<Event>>,
    queue_cv: Condvar,
    /// Where listener events go: the sending side of the listener thread's channel.
    listener: RwLock<Option<std::sync::mpsc::Sender<Event>>>,
    closed: AtomicBool,
    wake: tokio::sync::Notify,
    connected: AtomicBool,
}

impl Inner {
    fn dispatch(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let listener = self.listener.read().ok().and_then(|l| l.clone());
        match listener {
            // The listener runs on its own thread, in order, so it may block or call back
            // into the client without stalling the engine.
            Some(tx) => {
                for e in events {
                    let _ = tx.send(e);
                }
            }
            None => {
                if let Ok(mut q) = self.queue.lock() {
                    q.extend(events);
                    self.queue_cv.notify_all();
                }
            }
        }
    }

    fn set_connected(&self, connected: bool) {
        if self.connected.swap(connected, Ordering::SeqCst) != connected {
            self.dispatch(vec![Event::ConnectionChanged { connected }]);
        }
    }

    /// Background receive: catch up, then long-poll (FetchWait) or wait for a push, forever;
    /// reconnects with backoff when the connection drops.
    async fn receive_loop(self: Arc<Inner>) {
        let mut backoff = Duration::from_millis(100);
        let mut prefetched = Vec::new();
        while !self.closed.load(Ordering::SeqCst) {
            let logged_in = self.engine.lock().await.logged_in();
            if !logged_in {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            let mut events = Vec::new();
            let r = {
                let mut engine = self.engine.lock().await;
                // Weak: an aborted task must not leave a cycle that keeps the store open.
                let me = Arc::downgrade(&self);
                engine.set_sink(Some(Arc::new(move |ev| {
                    if let Some(inner) = me.upgrade() {
                        inner.dispatch(ev);
                    }
                })));
                let r = engine
                    .sync_from(&self.net, &mut events, std::mem::take(&mut prefetched))
                    .await;
                engine.set_sink(None);
                if r.is_ok() {
                    if let Err(e) = engine.replenish_key_packages(&self.net, false).await {
                        tracing::debug!("key package check failed: {e}");
                    }
                }
                r.map(|_| engine.last_seq())
            };
            self.dispatch(events);
            let after = match r {
                Ok(after) => {
                    self.set_connected(true);
                    backoff = Duration::from_millis(100);
                    after
                }
                Err(e) => {
                    if matches!(e.code(), ErrorCode::Network | ErrorCode::Timeout) {
                        self.set_connected(false);
                    }
                    tracing::debug!("background sync failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.wake.notified() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let token = self.engine.lock().await.token();
            let Some(token) = token else { continue };
            let req = v1::FetchWaitRequest {
                after_seq: after,
                limit: 256,
                channel_id: bytes::Bytes::new(),
                timeout_ms: 10_000,
            };
            let wait = self.net.call::<_, v1::FetchResponse>(
                method::FETCH_WAIT,
                &req,
                Some(&token[..]),
                Duration::from_secs(11),
                false,
            );
            tokio::select! {
                r = wait => {
                    if let Ok(resp) = &r {
                        prefetched = resp.messages.clone();
                    }
                    if let Err(e) = r {
                        tracing::debug!("fetch wait failed: {e}");
                        // The long poll's connection died (the idle timeout noticed a silent
                        // server): say so now, not after a reconnect attempt has failed too.
                        if !self.net.connected().await {
                            self.set_connected(false);
                        }
                        if self.net.connected().await {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                _ = self.net.push.notified() => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// The qpq client: one account, one encrypted store, one connection. `Send + Sync`; every
/// method blocks until done. Calling a method from inside an async runtime is refused
/// (`Internal`): use `spawn_blocking`. After [`Client::close`] every call fails with
/// `Closed`.
pub struct Client {
    inner: Arc<Inner>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Client {
    /// Opens or creates the encrypted store in `config.data_dir` and starts background
    /// receive (which stays idle until logged in). Does not need the network. A wrong key
    /// fails with `Storage` and leaves the file untouched.
    pub fn open(config: ClientConfig) -> Result<Client, Error> {
        let rt = runtime()?;
        let store = Store::open_deferred(
            &config.data_dir,
            &config.store_key,
            config.insecure_fast_kdf,
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
            net,
            engine: tokio::sync::Mutex::new(engine),
            queue: Mutex::new(VecDeque::new()),
            queue_cv: Condvar::new(),
            listener: RwLock::new(None),
            closed: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            connected: AtomicBool::new(false),
        });
        let task = rt.spawn(inner.clone().receive_loop());
        Ok(Client {
            inner,
            task: Mutex::new(Some(task)),
        })
    }

    fn run<T, F: Future<Output = Result<T, Error>>>(&self, f: F) -> Result<T, Error> {
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

    /// Runs `op` on the engine with the lock held; events it produces go to the listener or
    /// the queue.
    fn with_engine<T>(
        &self,
        op: impl for<'a> FnOnce(
            &'a mut Engine,
            &'a Net,
            &'a mut Vec<Event>,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>,
    ) -> Result<T, Error> {
        let inner = self.inner.clone();
        let (r, events) = self.run(async move {
            let mut engine = inner.engine.lock().await;
            let mut events = Vec::new();
            let r = op(&mut engine, &inner.net, &mut events).await;
            Ok((r, events))
        })?;
        self.inner.dispatch(events);
        r
    }

    /// Registers `username` with OPAQUE (the password never leaves this device), then logs
    /// in, uploads KeyPackages for both suites and the hybrid key. `Conflict` when taken.
    pub fn register(&self, username: &str, password: &str) -> Result<Account, Error> {
        let (u, p) = (
            username.to_string(),
            zeroize::Zeroizing::new(password.to_string()),
        );
        let r =
            self.with_engine(move |e, n, _| Box::pin(async move { e.register(n, &u, &p).await }));
        self.inner.wake.notify_one();
        r
    }

    /// Logs in with OPAQUE; a wrong password gives `Unauthorized`. The session token is kept
    /// in the store, so a reopened client is still logged in until the token expires.
    pub fn login(&self, username: &str, password: &str) -> Result<Account, Error> {
        let (u, p) = (
            username.to_string(),
            zeroize::Zeroizing::new(password.to_string()),
        );
        let r = self.with_engine(move |e, n, _| Box::pin(async move { e.login(n, &u, &p).await }));
        self.inner.wake.notify_one();
        r
    }

    /// Ends the session on the server (best effort) and forgets the token. Keys, groups and
    /// history stay in the store.
    pub fn logout(&self) -> Result<(), Error> {
        self.with_engine(|e, n, _| Box::pin(async move { e.logout(n).await }))
    }

    /// The account stored in this client's store (logged in or not).
    pub fn account(&self) -> Option<Account> {
        let inner = self.inner.clone();
        self.run(async move { Ok(inner.engine.lock().await.account()) })
            .ok()
            .flatten()
    }

    /// Looks a user up on the server.
    pub fn resolve_user(&self, username: &str) -> Result<Member, Error> {
        let u = username.to_string();
        self.with_engine(move |e, n, _| Box::pin(async move { e.resolve_user(n, &u).await }))
    }

    /// Creates a group (the channel on the server, then the MLS group with the same id) and
    /// adds this account's other devices. `post_quantum` picks the X-Wing suite.
    pub fn create_group(&self, name: &str, post_quantum: bool) -> Result<ConversationId, Error> {
        let name = name.to_string();
        self.with_engine(move |e, n, ev| {
            Box::pin(async move { e.create_group(n, &name, post_quantum, ev).await })
        })
    }

    /// Creates (or reuses) the DM with `username` and invites all of the peer's devices.
    pub fn create_dm(&self, username: &str) -> Result<ConversationId, Error> {
        let u = username.to_string();
        self.with_engine(move |e, n, ev| Box::pin(async move { e.create_dm(n, &u, ev).await }))
    }

    /// Adds every device of every named user in one commit (retried up to 5 times when
    /// another member commits first). Devices without a KeyPackage are skipped.
    pub fn invite(&self, conv: &ConversationId, usernames: &[&str]) -> Result<(), Error> {
        let conv = *conv;
        let names: Vec<String> = usernames.iter().map(|s| s.to_string()).collect();
        self.with_engine(move |e, n, ev| {
            Box::pin(async move {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                e.invite(n, &conv, &refs, ev).await
            })
        })
    }

    /// Removes every device of `username` in one commit; the account leaves the channel.
    pub fn remove(&self, conv: &ConversationId, username: &str) -> Result<(), Error> {
        let (conv, u) = (*conv, username.to_string());
        self.with_engine(move |e, n, ev| Box::pin(async move { e.remove(n, &conv, &u, ev).await }))
    }

    /// Leaves: sends a Remove proposal for each of this account's leaves, leaves the channel
    /// on the server and drops the local group state. A remaining member commits the
    /// proposals when it receives them (so the group stays consistent without us).
    pub fn leave(&self, conv: &ConversationId) -> Result<(), Error> {
        let conv = *conv;
        self.with_engine(move |e, n, ev| Box::pin(async move { e.leave(n, &conv, ev).await }))
    }

    /// Makes `username` an admin of the group (ADR 0032): admins may remove other members
    /// and promote. Only an admin may promote; `Forbidden` otherwise, `AlreadyMember` when
    /// the user already is an admin, `NotFound` when not a member. A DM has no roles.
    pub fn promote(&self, conv: &ConversationId, username: &str) -> Result<(), Error> {
        let (conv, u) = (*conv, username.to_string());
        self.with_engine(move |e, n, ev| Box::pin(async move { e.promote(n, &conv, &u, ev).await }))
    }

    /// A self-update commit: fresh key material for this device's leaf.
    pub fn rotate_keys(&self, conv: &ConversationId) -> Result<(), Error> {
        let conv = *conv;
        self.with_engine(move |e, n, ev| Box::pin(async move { e.rotate_keys(n, &conv, ev).await }))
    }

    /// Encrypts and sends a text message. It is written to the outbox first; when the network
    /// is down the id is still returned and the message goes out on reconnect or the next
    /// [`Client::sync`], with the same id (the server de-duplicates).
    pub fn send_text(&self, conv: &ConversationId, text: &str) -> Result<MessageId, Error> {
        let (conv, t) = (*conv, text.to_string());
        self.with_engine(move |e, n, ev| {
            Box::pin(async move { e.send_text(n, &conv, &t, ev).await })
        })
    }

    /// Every local conversation (active or not).
    pub fn conversations(&self) -> Result<Vec<Conversation>, Error> {
        self.with_engine(|e, _, _| Box::pin(async move { e.conversations() }))
    }

    /// One conversation; `NotFound` when unknown.
    pub fn conversation(&self, conv: &ConversationId) -> Result<Conversation, Error> {
        let conv = *conv;
        self.with_engine(move |e, _, _| Box::pin(async move { e.conversation(&conv) }))
    }

    /// Up to `limit` messages, oldest first. `before` is a `received_at_ms` (a strictly
    /// increasing local order key): only older messages are returned, so passing the first
    /// message's `received_at_ms` pages backwards. Reading the latest page clears `unread`.
    pub fn messages(
        &self,
        conv: &ConversationId,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<Message>, Error> {
        let conv = *conv;
        self.with_engine(move |e, _, _| Box::pin(async move { e.messages(&conv, limit, before) }))
    }

    /// Members of a conversation as the MLS group sees them, grouped by account.
    pub fn members(&self, conv: &ConversationId) -> Result<Vec<Member>, Error> {
        let conv = *conv;
        self.with_engine(move |e, n, _| Box::pin(async move { e.members(n, &conv).await }))
    }

    /// The safety number between this account and `username` (60 digits in 12 groups).
    pub fn safety_number(&self, username: &str) -> Result<String, Error> {
        let u = username.to_string();
        self.with_engine(move |e, n, _| {
            Box::pin(async move {
                let m = e.resolve_user(n, &u).await?;
                e.safety_number(&m)
            })
        })
    }

    /// Fetches and processes everything queued now, flushes the outbox, and returns the
    /// events produced (they are not also delivered to the queue or listener).
    pub fn sync(&self) -> Result<Vec<Event>, Error> {
        let inner = self.inner.clone();
        self.run(async move {
            let mut engine = inner.engine.lock().await;
            let mut events = Vec::new();
            engine.sync(&inner.net, &mut events).await?;
            engine.replenish_key_packages(&inner.net, false).await?;
            Ok(events)
        })
    }

    /// The next event from background receive, waiting up to `timeout`. `Ok(None)` on
    /// timeout. Events go to the listener instead when one is set.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<Event>, Error> {
        let deadline = Instant::now() + timeout;
        let mut q = self
            .inner
            .queue
            .lock()
            .map_err(|_| Error::internal("event queue poisoned"))?;
        loop {
            if let Some(e) = q.pop_front() {
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
                .queue_cv
                .wait_timeout(q, (deadline - now).min(Duration::from_millis(200)))
                .map_err(|_| Error::internal("event queue poisoned"))?;
            q = g;
        }
    }

    /// Sets (or clears) the listener that receives background events instead of the queue.
    ///
    /// The listener is called on a thread of its own, one event at a time, in order. It may
    /// block and may call back into this `Client`; events wait for it meanwhile. Replacing or
    /// clearing the listener lets the previous one finish the events already handed to it.
    pub fn set_listener(&self, listener: Option<Arc<dyn EventListener>>) {
        let tx = listener.and_then(|l| {
            let (tx, rx) = std::sync::mpsc::channel::<Event>();
            std::thread::Builder::new()
                .name("qpq-listener".into())
                .spawn(move || {
                    for e in rx {
                        l.on_event(e);
                    }
                })
                .ok()
                .map(|_| tx)
        });
        if let Ok(mut l) = self.inner.listener.write() {
            *l = tx;
        }
    }

    /// Round-trip time of a Health call.
    pub fn ping(&self) -> Result<Duration, Error> {
        let inner = self.inner.clone();
        self.run(async move {
            let t = Instant::now();
            let _: v1::HealthResponse = inner
                .net
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

    /// Stops background receive and closes the connection; later calls fail with `Closed`.
    /// When it returns (called outside an async runtime) the background task is gone, so
    /// dropping the `Client` then closes the store file at once (unless a call made on another
    /// thread is still running): the files may be copied, moved or deleted after the drop.
    pub fn close(&self) {
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
        self.inner.net.shutdown();
        self.inner.queue_cv.notify_all();
        // Ends the listener thread once it has delivered what it holds.
        if let Ok(mut l) = self.inner.listener.write() {
            l.take();
        }
    }

    /// Test hook: encrypts `text` in `conv` without sending it.
    #[doc(hidden)]
    pub fn debug_encrypt(&self, conv: &ConversationId, text: &str) -> Result<Vec<u8>, Error> {
        let (conv, t) = (*conv, text.to_string());
        self.with_engine(move |e, _, _| Box::pin(async move { e.debug_encrypt(&conv, &t) }))
    }

    /// Test hook: processes raw MLS bytes against this device's (possibly stale) group
    /// state without keeping anything; an undecryptable message gives `Crypto`.
    #[doc(hidden)]
    pub fn debug_process(&self, conv: &ConversationId, mls_bytes: &[u8]) -> Result<(), Error> {
        let (conv, b) = (*conv, mls_bytes.to_vec());
        self.with_engine(move |e, _, _| Box::pin(async move { e.debug_process(&conv, &b) }))
    }

    /// Test hook: delivers each `(conversation, MLS bytes)` through the receive path as if
    /// the server had queued it again under a new sequence number (a redelivery or an
    /// injection). Events are returned, not dispatched; proposals are not committed.
    #[doc(hidden)]
    pub fn debug_inject(
        &self,
        msgs: Vec<(ConversationId, Vec<u8>)>,
    ) -> Result<Vec<crate::DebugInjected>, Error> {
        self.with_engine(move |e, _, _| Box::pin(async move { e.debug_inject(&msgs) }))
    }

    /// Test hook: the MLS bytes of a self-update commit for `conv`, neither sent nor merged.
    #[doc(hidden)]
    pub fn debug_self_update(&self, conv: &ConversationId) -> Result<Vec<u8>, Error> {
        let conv = *conv;
        self.with_engine(move |e, _, _| Box::pin(async move { e.debug_self_update(&conv) }))
    }

    /// Test hook: SHA-256 over everything in the store (MLS state included).
    #[doc(hidden)]
    pub fn debug_state_hash(&self) -> Result<[u8; 32], Error> {
        self.with_engine(move |e, _, _| Box::pin(async move { e.debug_state_hash() }))
    }

    /// Test hook: makes the next commit stop at `at` as if the process died there. Drop the
    /// client afterwards and reopen it from its store to test recovery.
    #[doc(hidden)]
    pub fn debug_failpoint(&self, at: Option<crate::Failpoint>) {
        let _ = self.with_engine(move |e, _, _| {
            Box::pin(async move {
                e.set_failpoint(at);
                Ok(())
            })
        });
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}
