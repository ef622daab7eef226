//! The QUIC shell: accepts connections (with the per-IP cap), reads one request frame per
//! bidirectional stream with a size limit and a read deadline, answers, and writes push events
//! on unidirectional streams.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qpq_proto::frame::{Push, ReadError, Request, REQUEST_HEADER_LEN};
use qpq_proto::{Status, MAX_PAYLOAD};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::limits::ConnectionCap;
use crate::metrics::Metrics;
use crate::service::{status_response, CallContext, Service};

/// How long a drain waits for a client to acknowledge a response.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Push events buffered per connection before new ones are dropped (the client fetches);
/// their bytes are capped too (`max_push_bytes_per_connection`).
const PUSH_QUEUE: usize = 64;

/// Concurrent request streams a connection starts with (M1: quinn keeps state for every
/// stream a peer may open); raised to `max_concurrent_streams` once a connection has this many
/// calls in flight ([`StreamLimit`]).
pub const INITIAL_STREAMS: u32 = 16;

/// Transport limits set explicitly: quinn's defaults buffer far too much per connection. For
/// idle clients (M1): at most [`INITIAL_STREAMS`] streams until a connection needs more, and no
/// path-MTU discovery (its probes and state buy nothing for small requests; 1200-byte packets
/// carry everything). Keep-alive is the clients' (ADR 0030): an idle connection costs the
/// server no timer.
pub fn transport_config(c: &crate::config::Config) -> Result<quinn::TransportConfig, String> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(c.max_concurrent_streams.min(INITIAL_STREAMS).into());
    t.mtu_discovery_config(None);
    // Clients never open unidirectional streams to the server.
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(c.stream_receive_window.into());
    t.receive_window(c.receive_window.into());
    // R-2 / item 24: what a connection buffers for sending is at most this.
    t.send_window(u64::from(
        c.max_buffered_bytes_per_connection.max(64 * 1024),
    ));
    t.max_idle_timeout(Some(
        Duration::from_millis(c.idle_timeout_ms)
            .try_into()
            .map_err(|_| "idle timeout too large".to_string())?,
    ));
    Ok(t)
}

/// Serves one incoming connection until it closes; `handshaking` counts handshakes in
/// progress (decremented when this one ends).
pub async fn serve_connection(
    svc: Arc<Service>,
    cap: Arc<ConnectionCap>,
    incoming: quinn::Incoming,
    ip: IpAddr,
    handshaking: Arc<AtomicUsize>,
) {
    let conn = incoming.await;
    handshaking.fetch_sub(1, Ordering::Relaxed);
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%ip, error = %e, "handshake failed");
            cap.release(ip);
            return;
        }
    };
    // M1: the established connection is served by a task of its own. A task's size is fixed
    // when it is spawned, so serving it here would keep the handshake's state allocated for
    // the whole life of the connection.
    tokio::spawn(serve_established(svc, cap, conn, ip));
}

/// Serves an established connection's streams until it closes, then frees its slot in `cap`.
async fn serve_established(
    svc: Arc<Service>,
    cap: Arc<ConnectionCap>,
    conn: quinn::Connection,
    ip: IpAddr,
) {
    Metrics::inc(&svc.metrics.connections_total);
    let conn_id = svc.next_conn_id();
    // M1: the push queue and its task are made on the first push. The task ends when the
    // queue's senders are gone (the connection closed and its calls ended) or a push fails.
    let push_queued = Arc::new(AtomicUsize::new(0));
    let open_push = {
        let (svc, conn, queued) = (svc.clone(), conn.clone(), push_queued.clone());
        move || {
            let (tx, rx) = mpsc::channel(PUSH_QUEUE);
            svc.push_queues_open.fetch_add(1, Ordering::Relaxed);
            let svc = svc.clone();
            let (conn, queued) = (conn.clone(), queued.clone());
            tokio::spawn(async move {
                push_loop(svc.clone(), conn, rx, queued).await;
                svc.push_queues_open.fetch_sub(1, Ordering::Relaxed);
            });
            tx
        }
    };
    let ctx = Arc::new(CallContext::lazy(
        conn.remote_address(),
        conn_id,
        push_queued,
        open_push,
    ));
    let budgets = Arc::new(Budgets {
        requests: Arc::new(Semaphore::new(
            svc.config().max_request_bytes_per_connection as usize,
        )),
        responses: Arc::new(Semaphore::new(
            svc.config().max_buffered_bytes_per_connection as usize,
        )),
        streams: StreamLimit::new(svc.config().max_concurrent_streams),
    });
    tracing::debug!(conn_id, peer = %ctx.peer, "connection open");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                budgets.streams.opened(&conn);
                tokio::spawn(serve_stream(
                    svc.clone(),
                    ctx.clone(),
                    budgets.clone(),
                    send,
                    recv,
                ));
            }
            Err(e) => {
                tracing::debug!(conn_id, reason = %e, "connection closed");
                break;
            }
        }
    }
    svc.connection_closed(conn_id);
    cap.release(ip);
}

/// Calls in flight at which a connection counts as busy and gets its full stream limit. It
/// sits below [`INITIAL_STREAMS`]: a stream whose call has ended can still hold one of QUIC's
/// slots until the client has read its response, so a busy client may never have all 16
/// calls in flight at once (the limit then stayed unraised).
pub const RAISE_AT: usize = INITIAL_STREAMS as usize * 3 / 4;

/// Raises a connection's stream limit from [`INITIAL_STREAMS`] to the configured maximum the
/// first time it has [`RAISE_AT`] calls in flight (a busy client), once.
pub struct StreamLimit {
    active: AtomicUsize,
    raised: std::sync::atomic::AtomicBool,
    max: u32,
}

impl StreamLimit {
    /// For a connection allowed `max` concurrent streams in all.
    pub fn new(max: u32) -> StreamLimit {
        StreamLimit {
            active: AtomicUsize::new(0),
            raised: std::sync::atomic::AtomicBool::new(max <= INITIAL_STREAMS),
            max,
        }
    }

    /// A stream was accepted: counts it, raising the connection's limit when it is busy.
    pub fn opened(&self, conn: &quinn::Connection) {
        let n = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= RAISE_AT && !self.raised.swap(true, Ordering::Relaxed) {
            conn.set_max_concurrent_bi_streams(self.max.into());
        }
    }

    /// A stream's call ended.
    pub fn closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a stream as open until dropped.
struct StreamOpen<'a>(&'a StreamLimit);

impl Drop for StreamOpen<'_> {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// Per-connection byte budgets (items 24 and 26).
struct Budgets {
    /// Request payload bytes being received.
    requests: Arc<Semaphore>,
    /// Response bytes handed to QUIC and not yet acknowledged.
    responses: Arc<Semaphore>,
    /// Streams in flight, and the stream limit.
    streams: StreamLimit,
}

/// Holds permits of a byte budget and counts them in a service-wide gauge.
struct Held<'a> {
    _permit: OwnedSemaphorePermit,
    n: usize,
    gauge: &'a AtomicUsize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// Reads one request frame like [`qpq_proto::frame::read_request`], but the payload's bytes
/// are first reserved from the connection's request budget (item 26): a client that opens
/// many streams and sends most of a 4 MiB frame on each pins at most the budget.
async fn read_request_within<'a>(
    recv: &mut quinn::RecvStream,
    budget: &Arc<Semaphore>,
    cap: usize,
    gauge: &'a AtomicUsize,
) -> Result<(Request, Option<Held<'a>>), ReadError> {
    let mut h = [0u8; REQUEST_HEADER_LEN];
    let mut got = 0;
    while got < REQUEST_HEADER_LEN {
        match recv.read(&mut h[got..]).await {
            Ok(Some(0)) => {}
            Ok(Some(n)) => got += n,
            Ok(None) if got == 0 => return Err(ReadError::Closed),
            Ok(None) => return Err(ReadError::Truncated),
            Err(e) => return Err(ReadError::Io(std::io::Error::other(e.to_string()))),
        }
    }
    let method = u16::from_be_bytes([h[0], h[1]]);
    let request_id = u32::from_be_bytes([h[2], h[3], h[4], h[5]]);
    let len = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
    if len as usize > MAX_PAYLOAD {
        return Err(ReadError::TooLarge {
            request_id,
            len,
            max: MAX_PAYLOAD,
        });
    }
    let held = if len == 0 {
        None
    } else {
        let n = (len as usize).min(cap).max(1);
        let permit = budget
            .clone()
            .acquire_many_owned(u32::try_from(n).map_err(|_| ReadError::Deadline)?)
            .await
            .map_err(|_| ReadError::Closed)?;
        gauge.fetch_add(n, Ordering::Relaxed);
        Some(Held {
            _permit: permit,
            n,
            gauge,
        })
    };
    let mut payload = Vec::with_capacity((len as usize).min(64 * 1024));
    let read = (&mut *recv)
        .take(u64::from(len))
        .read_to_end(&mut payload)
        .await?;
    if read != len as usize {
        return Err(ReadError::Truncated);
    }
    Ok((
        Request {
            method,
            request_id,
            payload: Bytes::from(payload),
        },
        held,
    ))
}

async fn serve_stream(
    svc: Arc<Service>,
    ctx: Arc<CallContext>,
    budgets: Arc<Budgets>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let _open = StreamOpen(&budgets.streams);
    let deadline = svc.config().read_deadline();
    let request_cap = svc.config().max_request_bytes_per_connection as usize;
    let request = match tokio::time::timeout(
        deadline,
        read_request_within(
            &mut recv,
            &budgets.requests,
            request_cap,
            &svc.request_bytes_in_flight,
        ),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ReadError::Deadline),
    };
    // From here until the answer is written and finished, the call counts as in flight for
    // the drain (which then waits for its acknowledgement too).
    let _guard = svc.call_guard();
    let response = match request {
        Ok((req, held)) => {
            let r = svc.handle(&ctx, req).await;
            drop(held);
            r
        }
        Err(ReadError::Closed) => {
            let _ = send.finish();
            return;
        }
        Err(ReadError::TooLarge {
            request_id,
            len,
            max,
        }) => {
            let _ = recv.stop(0u32.into());
            status_response(
                request_id,
                Status::PayloadTooLarge,
                format!("frame payload of {len} bytes exceeds the limit of {max}"),
            )
        }
        Err(ReadError::Deadline) => {
            let _ = recv.stop(0u32.into());
            status_response(
                0,
                Status::DeadlineExceeded,
                "request frame not received in time",
            )
        }
        Err(ReadError::Truncated) => {
            status_response(0, Status::BadRequest, "stream ended inside a request frame")
        }
        Err(e) => {
            tracing::debug!(error = %e, "stream failed");
            return;
        }
    };
    let bytes = match response.encode() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "response too large to encode");
            let r = status_response(response.request_id, Status::Internal, "response too large");
            match r.encode() {
                Ok(b) => b,
                Err(_) => return,
            }
        }
    };
    drop(response);
    // Item 24: the response waits for room in the connection's buffer and must be taken
    // (and acknowledged) within the write deadline; otherwise the stream is reset and its
    // bytes are dropped.
    let response_cap = svc.config().max_buffered_bytes_per_connection as usize;
    let write = async {
        let n = bytes.len().min(response_cap).max(1);
        let permit = budgets
            .responses
            .clone()
            .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
            .await;
        let Ok(permit) = permit else { return false };
        svc.response_bytes_buffered.fetch_add(n, Ordering::Relaxed);
        let _held = Held {
            _permit: permit,
            n,
            gauge: &svc.response_bytes_buffered,
        };
        if send.write_all(&bytes).await.is_err() || send.finish().is_err() {
            return true;
        }
        // The stream is not held for the client's acknowledgement (ADR 0100): quinn keeps
        // delivering a finished stream on its own. Only the drain waits for it, through this
        // future (resolves once the peer acknowledged every byte or stopped the stream).
        let acked = send.stopped();
        svc.response_finished(async move {
            let _ = tokio::time::timeout(ACK_WAIT, acked).await;
        });
        true
    };
    if tokio::time::timeout(svc.config().write_deadline(), write)
        .await
        .is_err()
    {
        Metrics::inc(&svc.metrics.write_deadline_total);
        let _ = send.reset(0u32.into());
    }
}

async fn push_loop(
    svc: Arc<Service>,
    conn: quinn::Connection,
    mut rx: mpsc::Receiver<Push>,
    queued: Arc<AtomicUsize>,
) {
    let deadline = svc.config().write_deadline();
    let taken = |len: usize| {
        queued.fetch_sub(len, Ordering::Relaxed);
        svc.push_bytes_queued.fetch_sub(len, Ordering::Relaxed);
    };
    while let Some(push) = rx.recv().await {
        let len = push.payload.len();
        let sent = tokio::time::timeout(deadline, async {
            let bytes = push.encode().ok()?;
            let mut s = conn.open_uni().await.ok()?;
            s.write_all(&bytes).await.ok()?;
            s.finish().ok()
        })
        .await;
        taken(len);
        if !matches!(sent, Ok(Some(()))) {
            // No push stream granted (or the write stalled) within the deadline: this
            // connection gets no more pushes (item 25); what is queued is dropped.
            rx.close();
            while let Some(p) = rx.recv().await {
                taken(p.payload.len());
                Metrics::inc(&svc.metrics.push_dropped_total);
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size4<A, B, C, D, F: std::future::Future>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn size5<A, B, C, D, E, F: std::future::Future>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// M1 (issue 14): the task that lives as long as a connection is the small one; the
    /// handshake's (which holds the incoming connection's state) ends with the handshake.
    #[test]
    fn an_established_connection_task_holds_no_handshake_state() {
        let established = size4(serve_established);
        let handshake = size5(serve_connection);
        assert!(
            established <= 256 && established * 2 < handshake,
            "serve_established {established} B, serve_connection {handshake} B"
        );
    }
}
