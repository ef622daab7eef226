//! Cross-node wake-ups (issue 15 item 4, DESIGN §8). A wake-up is a hint; the database is the
//! truth: a woken FetchWait re-reads its queue, and a periodic sweep re-checks every locally
//! waiting device, so a lost wake-up costs at most one sweep interval.
//!
//! [`Wake`] is the small trait a transport implements (PostgreSQL LISTEN/NOTIFY here; NATS or
//! Redis could replace it without touching correctness). [`PgWake`] has two dedicated
//! connections per node, never the pool's:
//!
//! - the doorbell: after an enqueue committed, its recipient devices are handed to a thread
//!   that coalesces everything pending and sends one `NOTIFY` per batch on its own connection
//!   (never inside the enqueue transaction: a transaction that NOTIFYs takes an instance-wide
//!   lock across its commit flush);
//! - the listener: `LISTEN`s and wakes the local waiters of the devices it hears of; after a
//!   reconnect it wakes every local waiter (notifications sent while it was away are lost).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::{Client, NoTls};

use crate::storage::DeviceId;

/// The NOTIFY channel of the doorbell.
pub const CHANNEL: &str = "qpq_wake";
/// `application_name` of the listener connection.
pub const LISTENER_APP: &str = "qpq-wake-listener";
/// `application_name` of the doorbell connection.
pub const DOORBELL_APP: &str = "qpq-doorbell";
/// Largest NOTIFY payload we send (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7000;

/// Counters of the wake mechanism (exported as metrics).
#[derive(Default, Debug)]
pub struct WakeStats {
    /// NOTIFYs sent by the doorbell.
    pub sent: AtomicU64,
    /// Device wake-ups received from other nodes.
    pub received: AtomicU64,
    /// Listener (re)connections after the first.
    pub resyncs: AtomicU64,
    /// Microseconds from an enqueue's commit to its doorbell NOTIFY, last one.
    pub doorbell_lag_us: AtomicU64,
    /// Whether the listener connection is up.
    pub listener_up: AtomicBool,
}

/// What a node does when told that devices have new messages.
pub trait WakeSink: Send + Sync + 'static {
    /// Wakes the local waiters of these devices (they re-read their queues).
    fn wake_devices(&self, devices: &[DeviceId]);
    /// Wakes every local waiter (after wake-ups may have been lost).
    fn wake_all(&self);
}

/// A cross-node wake-up transport.
pub trait Wake: Send + Sync + 'static {
    /// Tells the other nodes that these devices' queues grew. Called after the commit; never
    /// blocks on the network.
    fn ring(&self, devices: &[DeviceId]);
    /// Counters and state.
    fn stats(&self) -> &WakeStats;
}

/// LISTEN/NOTIFY on PostgreSQL.
pub struct PgWake {
    doorbell: Mutex<mpsc::Sender<(Instant, Vec<DeviceId>)>>,
    stats: Arc<WakeStats>,
    stop: Arc<AtomicBool>,
}

impl PgWake {
    /// Starts the doorbell and listener threads of node `node` on `config`'s database;
    /// wake-ups from other nodes go to `sink`.
    pub fn start(
        config: ::postgres::Config,
        node: String,
        sink: Arc<dyn WakeSink>,
    ) -> std::io::Result<PgWake> {
        let stats = Arc::new(WakeStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        {
            let (mut config, node, stats, stop) =
                (config.clone(), node.clone(), stats.clone(), stop.clone());
            config.application_name(DOORBELL_APP);
            std::thread::Builder::new()
                .name("qpq-doorbell".into())
                .spawn(move || doorbell(config, node, rx, stats, stop))?;
        }
        {
            let (stats, stop) = (stats.clone(), stop.clone());
            let mut config = config;
            // Named, so operators (and the fault tests) can find it in pg_stat_activity.
            config.application_name(LISTENER_APP);
            std::thread::Builder::new()
                .name("qpq-listener".into())
                .spawn(move || listener(config, node, sink, stats, stop))?;
        }
        Ok(PgWake {
            doorbell: Mutex::new(tx),
            stats,
            stop,
        })
    }

    /// Stops both threads (they end within about a second).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for PgWake {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Wake for PgWake {
    fn ring(&self, devices: &[DeviceId]) {
        if devices.is_empty() {
            return;
        }
        if let Ok(tx) = self.doorbell.lock() {
            let _ = tx.send((Instant::now(), devices.to_vec()));
        }
    }

    fn stats(&self) -> &WakeStats {
        &self.stats
    }
}

fn connect(config: &::postgres::Config) -> Option<Client> {
    match config.connect(NoTls) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "wake connection failed; retrying");
            None
        }
    }
}

/// `node:id,id,…` payloads of at most [`MAX_PAYLOAD`] bytes.
fn payloads(node: &str, devices: &BTreeSet<DeviceId>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = format!("{node}:");
    let empty = cur.len();
    for d in devices {
        let s = d.to_string();
        if cur.len() + s.len() + 1 > MAX_PAYLOAD && cur.len() > empty {
            out.push(std::mem::replace(&mut cur, format!("{node}:")));
        }
        if cur.len() > empty {
            cur.push(',');
        }
        cur.push_str(&s);
    }
    if cur.len() > empty {
        out.push(cur);
    }
    out
}

fn doorbell(
    config: ::postgres::Config,
    node: String,
    rx: mpsc::Receiver<(Instant, Vec<DeviceId>)>,
    stats: Arc<WakeStats>,
    stop: Arc<AtomicBool>,
) {
    let mut conn: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(f) => f,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Coalesce everything already waiting into one NOTIFY.
        let oldest = first.0;
        let mut devices: BTreeSet<DeviceId> = first.1.into_iter().collect();
        while let Ok((_, more)) = rx.try_recv() {
            devices.extend(more);
        }
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = connect(&config);
        }
        let Some(c) = conn.as_mut() else {
            // The sweep covers what this batch would have woken.
            continue;
        };
        for p in payloads(&node, &devices) {
            match c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &p]) {
                Ok(_) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "doorbell NOTIFY failed (the sweep covers it)");
                    conn = None;
                    break;
                }
            }
        }
        stats
            .doorbell_lag_us
            .store(oldest.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

fn listener(
    config: ::postgres::Config,
    node: String,
    sink: Arc<dyn WakeSink>,
    stats: Arc<WakeStats>,
    stop: Arc<AtomicBool>,
) {
    let prefix = format!("{node}:");
    let mut connected_before = false;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut c) = connect(&config) else {
            stats.listener_up.store(false, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(250));
            continue;
        };
        if let Err(e) = c.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        stats.listener_up.store(true, Ordering::Relaxed);
        if connected_before {
            // Wake-ups sent while we were away are lost: every local waiter re-reads.
            stats.resyncs.fetch_add(1, Ordering::Relaxed);
            tracing::info!("wake listener reconnected; re-checking every waiting device");
            sink.wake_all();
        }
        connected_before = true;
        'conn: while !stop.load(Ordering::Relaxed) {
            let mut woken: Vec<DeviceId> = Vec::new();
            {
                let mut take = |p: &str| {
                    if p.starts_with(&prefix) {
                        return;
                    }
                    if let Some((_, ids)) = p.split_once(':') {
                        woken.extend(ids.split(',').filter_map(|s| s.parse::<DeviceId>().ok()));
                    }
                };
                let mut n = c.notifications();
                // Wait for one (up to half a second, to notice `stop`), then take whatever
                // else is already buffered without waiting.
                match n.timeout_iter(Duration::from_millis(500)).next() {
                    Ok(Some(m)) => take(m.payload()),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "wake listener lost its connection");
                        break 'conn;
                    }
                }
                let mut it = n.iter();
                while let Ok(Some(m)) = it.next() {
                    take(m.payload());
                }
            }
            if !woken.is_empty() {
                stats
                    .received
                    .fetch_add(woken.len() as u64, Ordering::Relaxed);
                sink.wake_devices(&woken);
            }
            if c.is_closed() {
                break;
            }
        }
        stats.listener_up.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_and_name_the_node() {
        let ids: BTreeSet<DeviceId> = (1..=3).collect();
        assert_eq!(payloads("a", &ids), vec!["a:1,2,3".to_string()]);
        let many: BTreeSet<DeviceId> = (1_000_000..1_002_000).collect();
        let p = payloads("n", &many);
        assert!(p.len() > 1);
        assert!(p
            .iter()
            .all(|s| s.len() <= MAX_PAYLOAD && s.starts_with("n:")));
        let back: usize = p.iter().map(|s| s[2..].split(',').count()).sum();
        assert_eq!(back, 2000);
    }
}
