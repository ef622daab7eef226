//! `qpq-server`: the quicproquo delivery server.
//!
//! What it does: accepts QUIC connections (TLS 1.3 only, ALPN `qpq`), authenticates accounts
//! with OPAQUE, stores KeyPackages and hybrid public keys, keeps per-device delivery queues with
//! durable, idempotent enqueue and per-group commit ordering, pushes new messages to connected
//! devices, stores blobs, and exposes health and Prometheus metrics.
//!
//! What it will not do: read messages. Payloads are opaque ciphertext; the server never holds a
//! group key or a password, and MLS membership is the clients' business (the server only keeps
//! the channel membership it routes by).
//!
//! Embedding: [`Server::bind`] then [`Server::run`]; [`Server::shutdown_handle`] stops it with a
//! graceful drain. The binary `qpq-server` does exactly that from [`config::Config::load`].

pub mod config;
pub mod delivery;
pub mod key_package;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod service;
pub mod storage;
/// Only with the `testkit` feature: the protocol test client of the integration tests,
/// benchmarks and fuzz targets. A release server is built without it.
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
pub mod wake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Config;
use crate::limits::ConnectionCap;
use crate::metrics::Metrics;
use crate::service::Service;
use crate::storage::postgres::PostgresStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::Storage;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TLS material or configuration is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// The database could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    /// A socket could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// A configuration value is unusable.
    #[error("config: {0}")]
    Config(String),
}

/// Handshakes in progress from which every unvalidated address gets a Retry
/// (`quic_retry = "load"`).
const RETRY_HANDSHAKES: usize = 64;

/// When handshakes from unvalidated addresses are answered with a QUIC Retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryPolicy {
    Always,
    Load,
    Never,
}

impl RetryPolicy {
    fn parse(s: &str) -> Result<RetryPolicy, String> {
        match s {
            "always" => Ok(RetryPolicy::Always),
            "load" => Ok(RetryPolicy::Load),
            "never" => Ok(RetryPolicy::Never),
            other => Err(format!(
                "quic_retry must be always, load or never, not {other:?}"
            )),
        }
    }
}

/// Stops a running server (graceful drain) from anywhere.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Notify>);

impl ShutdownHandle {
    /// Asks the server to drain and stop; [`Server::run`] returns when it has.
    pub fn shutdown(&self) {
        self.0.notify_one();
    }
}

/// A bound, not yet running server.
pub struct Server {
    endpoint: quinn::Endpoint,
    service: Arc<Service>,
    sqlite: Option<Arc<SqliteStorage>>,
    postgres: Option<Arc<PostgresStorage>>,
    wake: Option<Arc<wake::PgWake>>,
    node_id: String,
    config: Config,
    cert_der: Vec<u8>,
    fingerprint: String,
    shutdown: Arc<Notify>,
    metrics_addr: Option<SocketAddr>,
    metrics_listener: Option<tokio::net::TcpListener>,
}

impl Server {
    /// Opens storage, loads or generates the certificate and binds the UDP socket (and the
    /// metrics TCP socket when configured). Must be called inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let material = tls::load_or_generate(&config).map_err(ServerError::Tls)?;
        let cert_der = material
            .chain
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let fingerprint = material.fingerprint();
        let tls = tls::server_config(material).map_err(ServerError::Tls)?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ServerError::Tls(format!("TLS config unusable for QUIC: {e}")))?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
        sc.transport_config(Arc::new(
            listener::transport_config(&config).map_err(ServerError::Config)?,
        ));

        // Issue 15: `database_url` selects PostgreSQL (several nodes on one database); no
        // setting keeps the embedded SQLite database exactly as before.
        let (store, sqlite, postgres): (Arc<dyn Storage>, _, _) = if config.database_url.is_empty()
        {
            let db_path = config.db_path();
            let max_pages = config.max_db_pages;
            let sqlite = Arc::new(
                tokio::task::spawn_blocking(move || SqliteStorage::open_with(&db_path, max_pages))
                    .await
                    .map_err(|_| ServerError::Config("storage open task failed".into()))??,
            );
            (sqlite.clone(), Some(sqlite), None)
        } else {
            let url = config.database_url.expose().to_string();
            let pg = Arc::new(
                tokio::task::spawn_blocking(move || PostgresStorage::open(&url))
                    .await
                    .map_err(|_| ServerError::Config("storage open task failed".into()))??,
            );
            (pg.clone(), None, Some(pg))
        };
        let cfg = config.clone();
        let service = Arc::new(
            tokio::task::spawn_blocking(move || Service::new(store, cfg))
                .await
                .map_err(|_| ServerError::Config("service init task failed".into()))??,
        );
        let endpoint = quinn::Endpoint::server(sc, config.listen)?;
        let node_id = if config.node_id.is_empty() {
            format!("{}-{}", hostname(), endpoint.local_addr()?.port())
        } else {
            config.node_id.clone()
        };
        let wake = match &postgres {
            Some(pg) if config.cross_node_wake => {
                let sink: Arc<dyn wake::WakeSink> = Arc::new(ServiceSink(Arc::downgrade(&service)));
                let w = Arc::new(
                    wake::PgWake::start(pg.config().clone(), node_id.clone(), sink)
                        .map_err(ServerError::Io)?,
                );
                service.set_wake(w.clone());
                Some(w)
            }
            _ => None,
        };
        tracing::info!(node_id = %node_id, backend = if postgres.is_some() { "postgres" } else { "sqlite" }, "storage open");
        let (metrics_addr, metrics_listener) = if config.metrics_listen.is_empty() {
            (None, None)
        } else {
            let l = tokio::net::TcpListener::bind(&config.metrics_listen).await?;
            (Some(l.local_addr()?), Some(l))
        };
        Ok(Server {
            endpoint,
            service,
            sqlite,
            postgres,
            wake,
            node_id,
            config,
            cert_der,
            fingerprint,
            shutdown: Arc::new(Notify::new()),
            metrics_addr,
            metrics_listener,
        })
    }

    /// The bound UDP address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The bound metrics address, if metrics are enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// DER of the leaf certificate (what a client pins).
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 fingerprint of the leaf certificate, lowercase hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The request handler (for metrics and tests).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// This node's name (`node_id`, or host name and port).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until [`ShutdownHandle::shutdown`], then drains: stops accepting, lets calls in
    /// flight finish for up to the drain timeout, closes connections and the database.
    pub async fn run(mut self) -> Result<(), ServerError> {
        let cap = Arc::new(ConnectionCap::new(self.config.max_connections_per_ip));
        let metrics_task = self.metrics_listener.take().map(|l| {
            let store = self.service.store().clone();
            let svc = self.service.clone();
            let pg = self.postgres.clone();
            let gauges = move || {
                let mut wake_gauges: Vec<(&'static str, &'static str, u64)> = Vec::new();
                if let Some(w) = svc.wake() {
                    let st = w.stats();
                    let get = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    wake_gauges = vec![
                        (
                            "wake_sent_total",
                            "Doorbell NOTIFYs sent to other nodes.",
                            get(&st.sent),
                        ),
                        (
                            "wake_received_total",
                            "Device wake-ups received from other nodes.",
                            get(&st.received),
                        ),
                        (
                            "wake_listener_resyncs_total",
                            "Wake listener reconnections (every waiter re-checked).",
                            get(&st.resyncs),
                        ),
                        (
                            "doorbell_lag_microseconds",
                            "Last delay from an enqueue's commit to its doorbell NOTIFY.",
                            get(&st.doorbell_lag_us),
                        ),
                        (
                            "wake_listener_up",
                            "1 when the wake listener connection is up.",
                            u64::from(st.listener_up.load(std::sync::atomic::Ordering::Relaxed)),
                        ),
                    ];
                }
                if let Some(pg) = &pg {
                    wake_gauges.push((
                        "pg_notification_queue_usage_ppm",
                        "pg_notification_queue_usage(), in parts per million.",
                        pg.notification_queue_usage()
                            .map_or(0, |u| (u * 1e6) as u64),
                    ));
                    wake_gauges.push((
                        "database_up",
                        "1 when the database answers.",
                        u64::from(pg.ping()),
                    ));
                }
                let mut g = vec![
                    (
                        "delivery_queue_depth",
                        "Messages waiting in device queues.",
                        store.queue_depth().unwrap_or(0),
                    ),
                    (
                        "calls_in_flight",
                        "Calls being handled.",
                        svc.calls_in_flight() as u64,
                    ),
                    (
                        "fetch_waits_parked",
                        "FetchWait calls waiting for a message.",
                        svc.fetch_waits_parked() as u64,
                    ),
                ];
                g.extend(wake_gauges);
                g
            };
            tokio::spawn(metrics::serve(
                l,
                self.service.metrics.clone(),
                gauges,
                Arc::from(self.node_id.as_str()),
            ))
        });
        // Item 28: expired sessions, undelivered messages past retention, enqueue ids and
        // abandoned blob uploads are deleted by one periodic job.
        let purge_task = {
            let svc = self.service.clone();
            let every = Duration::from_secs(self.config.purge_interval_secs.max(1));
            tokio::spawn(async move {
                // The first run comes one interval after start.
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    if let Err(e) = svc.purge_expired_sessions_at(now.as_secs()).await {
                        tracing::warn!(error = %e, "session purge failed");
                    }
                    match svc.purge_expired_at(now.as_millis() as u64).await {
                        Ok(r) => tracing::debug!(?r, "purge"),
                        Err(e) => tracing::warn!(error = %e, "purge failed"),
                    }
                }
            })
        };
        // Issue 15: with cross-node wake-ups, a periodic sweep re-checks every locally
        // waiting device, bounding the cost of a lost wake-up.
        let sweep_task = self.wake.as_ref().map(|_| {
            let svc = self.service.clone();
            let every = Duration::from_millis(self.config.wake_sweep_ms.max(100));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    svc.sweep();
                }
            })
        });
        let retry = RetryPolicy::parse(&self.config.quic_retry).map_err(ServerError::Config)?;
        let handshaking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let ip = incoming.remote_address().ip();
                    // Item 29: an address not yet validated gets a QUIC Retry first (always,
                    // or under load), so a forged source address never takes its slot.
                    if !incoming.remote_address_validated() && incoming.may_retry() {
                        let busy = cap.held(ip) > 0
                            || handshaking.load(std::sync::atomic::Ordering::Relaxed) >= RETRY_HANDSHAKES;
                        if retry == RetryPolicy::Always || (retry == RetryPolicy::Load && busy) {
                            Metrics::inc(&self.service.metrics.quic_retry_total);
                            let _ = incoming.retry();
                            continue;
                        }
                    }
                    if self.service.is_draining() || !cap.acquire(ip) {
                        Metrics::inc(&self.service.metrics.connections_refused_total);
                        tracing::debug!(%ip, "connection refused");
                        incoming.refuse();
                        continue;
                    }
                    let svc = self.service.clone();
                    let (cap, handshaking) = (cap.clone(), handshaking.clone());
                    handshaking.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(listener::serve_connection(svc, cap, incoming, ip, handshaking));
                }
                _ = self.shutdown.notified() => break,
            }
        }
        purge_task.abort();
        tracing::info!("draining");
        self.service.begin_drain();
        self.endpoint.set_server_config(None);
        let drained = self
            .service
            .wait_idle(Duration::from_secs(self.config.drain_timeout))
            .await;
        if !drained {
            tracing::warn!("drain timeout reached with calls in flight");
        }
        self.endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        if let Some(t) = metrics_task {
            t.abort();
        }
        purge_task.abort();
        if let Some(t) = sweep_task {
            t.abort();
        }
        if let Some(w) = &self.wake {
            w.stop();
        }
        let (sqlite, postgres) = (self.sqlite.clone(), self.postgres.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(s) = sqlite {
                s.close();
            }
            if let Some(p) = postgres {
                p.close();
            }
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Hands wake-ups from other nodes to the service (without keeping it alive).
struct ServiceSink(std::sync::Weak<Service>);

impl wake::WakeSink for ServiceSink {
    fn wake_devices(&self, devices: &[storage::DeviceId]) {
        if let Some(s) = self.0.upgrade() {
            s.wake_devices(devices);
        }
    }

    fn wake_all(&self) {
        if let Some(s) = self.0.upgrade() {
            s.wake_all_waiters();
        }
    }
}

/// The host name, for the default node id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "qpq".into())
}
