//! An in-process qpq-server on 127.0.0.1:0 and helpers for blocking clients.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use qpq_core::{Client, ClientConfig, ConversationId, Event, StoreKey, Trust};
use qpq_server::config::Config;
use qpq_server::Server;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub const PW: &str = "correct horse battery staple";

pub struct TestServer {
    pub addr: SocketAddr,
    pub cert_der: Vec<u8>,
    pub dir: tempfile::TempDir,
    /// The running server's request handler (its metrics count requests per method).
    pub service: Arc<qpq_server::service::Service>,
    rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::ephemeral(dir.path());
        tweak(&mut config);
        let (addr, cert_der, service) = rt.block_on(async {
            let server = Server::bind(config).await.unwrap();
            let addr = server.local_addr().unwrap();
            let cert = server.certificate_der().to_vec();
            let service = server.service().clone();
            tokio::spawn(async move {
                server.run().await.unwrap();
            });
            (addr, cert, service)
        });
        TestServer {
            addr,
            cert_der,
            dir,
            service,
            rt,
        }
    }

    /// Runs `f` on the server's runtime (for raw protocol clients of `qpq_server::testkit`).
    #[allow(dead_code)] // not every test file uses it
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn config(&self, data_dir: &Path) -> ClientConfig {
        let mut c = ClientConfig::new(
            data_dir,
            StoreKey::Passphrase("store passphrase".into()),
            self.addr.to_string(),
            Trust::PinnedCertDer(self.cert_der.clone()),
        );
        c.insecure_fast_kdf = true;
        c
    }

    pub fn open(&self, data_dir: &Path) -> Client {
        Client::open(self.config(data_dir)).unwrap()
    }

    /// A client over `data_dir` that cannot reach any server (nothing listens on port 9), so
    /// its background receiver learns and writes nothing: for tests on a copied store.
    pub fn open_offline(&self, data_dir: &Path) -> Client {
        let mut config = self.config(data_dir);
        config.server_addr = "127.0.0.1:9".into();
        config.request_timeout = Duration::from_millis(200);
        Client::open(config).unwrap()
    }

    /// A fresh client with a registered, logged-in account.
    pub fn user(&self, name: &str) -> User {
        let dir = tempfile::tempdir().unwrap();
        let client = self.open(dir.path());
        client.register(name, PW).unwrap();
        User { client, dir }
    }

    /// A second device of an existing account.
    pub fn device(&self, name: &str) -> User {
        let dir = tempfile::tempdir().unwrap();
        let client = self.open(dir.path());
        client.login(name, PW).unwrap();
        User { client, dir }
    }
}

pub struct User {
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for User {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Collects background events until `done` says so, or panics at the deadline.
pub fn wait_until(c: &Client, what: &str, mut done: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}; saw {seen:?}"
        );
        if let Some(e) = c.next_event(left.min(Duration::from_millis(500))).unwrap() {
            let stop = done(&e);
            seen.push(e);
            if stop {
                return seen;
            }
        }
    }
}

/// Waits for a text message with this body.
pub fn wait_text(c: &Client, text: &str) -> qpq_core::Message {
    let mut found = None;
    wait_until(c, text, |e| match e {
        Event::Message(m) if m.text() == Some(text) => {
            found = Some(m.clone());
            true
        }
        _ => false,
    });
    found.unwrap()
}

/// Waits until the client has joined `conv`.
pub fn wait_joined(c: &Client, conv: &ConversationId) {
    if c.conversation(conv).map(|x| x.active).unwrap_or(false) {
        return;
    }
    wait_until(
        c,
        "ConversationJoined",
        |e| matches!(e, Event::ConversationJoined(x) if x.id == *conv),
    );
}

/// Waits until `conv` is at `epoch` at least (by polling state, events go unobserved).
pub fn wait_epoch(c: &Client, conv: &ConversationId, epoch: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(x) = c.conversation(conv) {
            if x.epoch >= epoch {
                return;
            }
        }
        assert!(Instant::now() < deadline, "epoch {epoch} not reached");
        let _ = c.next_event(Duration::from_millis(100));
    }
}

pub fn texts(c: &Client, conv: &ConversationId) -> Vec<String> {
    c.messages(conv, 1000, None)
        .unwrap()
        .into_iter()
        .map(|m| m.text().unwrap_or_default().to_string())
        .collect()
}

/// Copies every file of a (closed) client's data dir into a new temp dir: a snapshot of that
/// device's state to open later with [`TestServer::open_offline`].
pub fn copy_store(data_dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(data_dir).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
    }
    copy
}

/// A UDP relay between one client and the server that can be paused: while paused it drops
/// every datagram both ways, so the server seems not to answer (a blackholed network).
pub struct Relay {
    pub addr: SocketAddr,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        back.connect(server).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let up = {
            let (front, back, paused, stop, client) = (
                front.clone(),
                back.clone(),
                paused.clone(),
                stop.clone(),
                client.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        if !paused.load(Ordering::SeqCst) {
                            let _ = back.send(&buf[..n]);
                        }
                    }
                }
            })
        };
        let down = {
            let (paused, stop) = (paused.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = back.recv(&mut buf) {
                        let to = *client.lock().unwrap();
                        if let (false, Some(to)) = (paused.load(Ordering::SeqCst), to) {
                            let _ = front.send_to(&buf[..n], to);
                        }
                    }
                }
            })
        };
        Relay {
            addr,
            paused,
            stop,
            threads: vec![up, down],
        }
    }

    /// Drops everything from now on.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Relays again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl TestServer {
    /// A fresh registered user whose traffic goes through `relay` (started here).
    pub fn user_via_relay(&self, name: &str, request_timeout: Duration) -> (User, Relay) {
        let relay = Relay::start(self.addr);
        let dir = tempfile::tempdir().unwrap();
        let mut config = self.config(dir.path());
        config.server_addr = relay.addr.to_string();
        config.request_timeout = request_timeout;
        let client = Client::open(config).unwrap();
        client.register(name, PW).unwrap();
        (User { client, dir }, relay)
    }
}
