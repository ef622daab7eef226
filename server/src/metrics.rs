//! Prometheus metrics: counters kept in atomics, served as text on `--metrics-listen`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// Server counters.
        #[derive(Default)]
        pub struct Metrics {
            $( #[doc = $help] pub $name: AtomicU64, )*
            /// Requests handled per assigned method id, in [`qpq_proto::method::ALL`] order.
            by_method: MethodCounters,
        }

        impl Metrics {
            /// Prometheus text exposition of the counters plus the given gauges.
            pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
                let mut out = String::new();
                $(
                    out.push_str(concat!("# HELP qpq_", stringify!($name), " ", $help, "\n# TYPE qpq_", stringify!($name), " counter\n"));
                    out.push_str(&format!(concat!("qpq_", stringify!($name), " {}\n"), self.$name.load(Ordering::Relaxed)));
                )*
                out.push_str("# HELP qpq_requests_by_method_total Requests handled, by method.\n# TYPE qpq_requests_by_method_total counter\n");
                for ((_, label), n) in qpq_proto::method::ALL.iter().zip(self.by_method.0.iter()) {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        out.push_str(&format!("qpq_requests_by_method_total{{method=\"{label}\"}} {n}\n"));
                    }
                }
                for (name, help, v) in gauges {
                    // Prometheus convention: a `_total` name is a counter.
                    let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
                    out.push_str(&format!("# HELP qpq_{name} {help}\n# TYPE qpq_{name} {kind}\nqpq_{name} {v}\n"));
                }
                out
            }
        }
    };
}

counters! {
    enqueue_total: "Messages accepted by Enqueue.",
    enqueue_bytes_total: "Payload bytes accepted by Enqueue.",
    fetch_total: "Fetch calls.",
    fetch_wait_total: "FetchWait calls.",
    key_package_upload_total: "KeyPackages uploaded.",
    auth_login_success_total: "Successful OPAQUE logins.",
    auth_login_failure_total: "Failed OPAQUE logins.",
    rate_limit_hit_total: "Requests answered RateLimited.",
    requests_total: "Requests handled.",
    push_total: "Push events sent.",
    connections_total: "Connections accepted.",
    connections_refused_total: "Connections refused by the per-IP cap or while draining.",
    push_dropped_total: "Push events dropped (connection's push bytes full, or it takes no push stream).",
    undelivered_total: "Recipient devices an Enqueue skipped because their queue (or the sender's share) was full.",
    quic_retry_total: "Handshakes answered with a QUIC Retry (address validation).",
    write_deadline_total: "Responses dropped because the client did not take them within the write deadline.",
    wake_sweeps_total: "Sweeps that re-checked every locally waiting device (cross-node wake-ups on).",
    wake_sweep_catches_total: "FetchWaits that found messages after only a sweep woke them: wake-ups that were lost or late.",
    purged_total: "Rows deleted by the retention purge (queue entries, idempotency records, incomplete blobs).",
}

/// One counter per assigned method id.
struct MethodCounters(Box<[AtomicU64]>);

impl Default for MethodCounters {
    fn default() -> Self {
        MethodCounters(
            qpq_proto::method::ALL
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request of `method` (an unassigned id is not counted here).
    pub fn count_method(&self, method: u16) {
        if let Ok(i) = qpq_proto::method::ALL.binary_search_by_key(&method, |(m, _)| *m) {
            self.by_method.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests of `method` handled since start (what tests count round trips by).
    pub fn method_count(&self, method: u16) -> u64 {
        qpq_proto::method::ALL
            .binary_search_by_key(&method, |(m, _)| *m)
            .map_or(0, |i| self.by_method.0[i].load(Ordering::Relaxed))
    }
}

/// The `qpq_node_info` sample: which node these metrics come from (its `node_id`), so
/// dashboards can tell the nodes of one deployment apart beyond the scrape address.
fn node_info(node_id: &str) -> String {
    let mut label = String::with_capacity(node_id.len());
    for c in node_id.chars() {
        match c {
            '\\' => label.push_str("\\\\"),
            '"' => label.push_str("\\\""),
            '\n' => label.push_str("\\n"),
            c => label.push(c),
        }
    }
    format!(
        "# HELP qpq_node_info This node; always 1.\n# TYPE qpq_node_info gauge\nqpq_node_info{{node_id=\"{label}\"}} 1\n"
    )
}

/// Serves `GET /health` (a JSON object: status, node id, and whether the database and the
/// wake listener are up, from the `database_up` and `wake_listener_up` gauges when present;
/// 503 when one is down) and `GET /metrics` (any other path) until the task is dropped.
/// `gauges` is called per request.
pub async fn serve<G>(listener: TcpListener, metrics: Arc<Metrics>, gauges: G, node_id: Arc<str>)
where
    G: Fn() -> Vec<(&'static str, &'static str, u64)> + Send + Sync + Clone + 'static,
{
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, gauges, node_id) = (metrics.clone(), gauges.clone(), node_id.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf)).await;
            let health = buf.starts_with(b"GET /health");
            let g = tokio::task::spawn_blocking(gauges)
                .await
                .unwrap_or_default();
            let (code, kind, body) = if health {
                let up = |name: &str| g.iter().find(|x| x.0 == name).map(|x| x.2 == 1);
                let (db, listener) = (up("database_up"), up("wake_listener_up"));
                let ok = db != Some(false) && listener != Some(false);
                let show = |v: Option<bool>| match v {
                    Some(true) => "\"up\"",
                    Some(false) => "\"down\"",
                    None => "null",
                };
                let body = format!(
                    "{{\"status\":\"{}\",\"node_id\":{},\"database\":{},\"wake_listener\":{}}}\n",
                    if ok { "ok" } else { "degraded" },
                    serde_json::Value::from(node_id.as_ref()),
                    show(db),
                    show(listener)
                );
                (
                    if ok {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    },
                    "application/json",
                    body,
                )
            } else {
                let mut text = metrics.render(&g);
                text.push_str(&node_info(&node_id));
                ("200 OK", "text/plain; version=0.0.4", text)
            };
            let head = format!(
                "HTTP/1.1 {code}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::node_info;

    #[test]
    fn node_info_escapes_its_label() {
        assert!(node_info("a").ends_with("qpq_node_info{node_id=\"a\"} 1\n"));
        assert!(node_info("x\"y\\z\nw").contains("node_id=\"x\\\"y\\\\z\\nw\""));
    }
}
