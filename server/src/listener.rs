//! The QUIC shell: accepts connections (with the per-IP cap), reads one request frame per
//! bidirectional stream with a size limit and a read deadline, answers, and writes push events
//! on unidirectional streams.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use qpq_proto::frame::{read_request, Push, ReadError};
use qpq_proto::{Status, MAX_PAYLOAD};
use tokio::sync::mpsc;

use crate::limits::ConnectionCap;
use crate::metrics::Metrics;
use crate::service::{status_response, CallContext, Service};

/// How long a call waits for the client to acknowledge its response before it stops
/// counting as in flight.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Push events buffered per connection before new ones are dropped (the client fetches).
const PUSH_QUEUE: usize = 256;

/// Transport limits set explicitly: quinn's defaults buffer far too much per connection.
pub fn transport_config(c: &crate::config::Config) -> Result<quinn::TransportConfig, String> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(c.max_concurrent_streams.into());
    // Clients never open unidirectional streams to the server.
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(c.stream_receive_window.into());
    t.receive_window(c.receive_window.into());
    t.send_window(8 * 1024 * 1024);
    t.max_idle_timeout(Some(
        Duration::from_millis(c.idle_timeout_ms)
            .try_into()
            .map_err(|_| "idle timeout too large".to_string())?,
    ));
    Ok(t)
}

/// Serves one incoming connection until it closes.
pub async fn serve_connection(
    svc: Arc<Service>,
    cap: Arc<ConnectionCap>,
    incoming: quinn::Incoming,
    ip: IpAddr,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%ip, error = %e, "handshake failed");
            cap.release(ip);
            return;
        }
    };
    Metrics::inc(&svc.metrics.connections_total);
    let conn_id = svc.next_conn_id();
    let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE);
    let pusher = tokio::spawn(push_loop(conn.clone(), push_rx));
    let ctx = Arc::new(CallContext {
        peer: conn.remote_address(),
        conn_id,
        push: push_tx,
    });
    tracing::debug!(conn_id, peer = %ctx.peer, "connection open");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(svc.clone(), ctx.clone(), send, recv));
            }
            Err(e) => {
                tracing::debug!(conn_id, reason = %e, "connection closed");
                break;
            }
        }
    }
    svc.connection_closed(conn_id);
    pusher.abort();
    cap.release(ip);
}

async fn serve_stream(
    svc: Arc<Service>,
    ctx: Arc<CallContext>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let deadline = svc.config().read_deadline();
    let request = read_request(&mut recv, MAX_PAYLOAD, deadline).await;
    // From here until the answer is acknowledged, the call counts as in flight for the drain.
    let _guard = svc.call_guard();
    let response = match request {
        Ok(req) => svc.handle(&ctx, req).await,
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
    match response.encode() {
        Ok(bytes) => {
            if send.write_all(&bytes).await.is_ok() && send.finish().is_ok() {
                // Resolves once the peer acknowledged every byte (or stopped the stream);
                // bounded, so a vanished client cannot hold a drain.
                let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "response too large to encode");
            let r = status_response(response.request_id, Status::Internal, "response too large");
            if let Ok(bytes) = r.encode() {
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
            }
        }
    }
}

async fn push_loop(conn: quinn::Connection, mut rx: mpsc::Receiver<Push>) {
    while let Some(push) = rx.recv().await {
        let Ok(bytes) = push.encode() else { continue };
        let Ok(mut s) = conn.open_uni().await else {
            break;
        };
        if s.write_all(&bytes).await.is_err() {
            break;
        }
        let _ = s.finish();
    }
}
