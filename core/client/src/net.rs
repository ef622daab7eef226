//! QUIC transport: one reused connection, one bidirectional stream per call, request
//! deadlines, reconnect, and the server's push streams. Only this module touches quinn.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use qpq_proto::frame::{read_push, read_response, Request};
use qpq_proto::{v1, Status, MAX_PAYLOAD};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Notify};

use crate::error::NetError;
use crate::types::Trust;

/// Verifies the server by the SHA-256 of its leaf certificate, and still checks the TLS 1.3
/// handshake signature with the provider's algorithms.
#[derive(Debug)]
struct FingerprintVerifier {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "server certificate fingerprint does not match the pin".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let roots_from = |ders: Vec<Vec<u8>>| -> Result<rustls::RootCertStore, NetError> {
        let mut roots = rustls::RootCertStore::empty();
        for d in ders {
            roots
                .add(CertificateDer::from(d))
                .map_err(|e| NetError::Tls(format!("pinned certificate: {e}")))?;
        }
        Ok(roots)
    };
    let mut tls = match trust {
        Trust::PinnedCertDer(der) => builder
            .with_root_certificates(roots_from(vec![der.clone()])?)
            .with_no_client_auth(),
        Trust::PinnedCertFile(path) => {
            let der = std::fs::read(path).map_err(|e| {
                NetError::Tls(format!("cannot read certificate {}: {e}", path.display()))
            })?;
            builder
                .with_root_certificates(roots_from(vec![der])?)
                .with_no_client_auth()
        }
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                fingerprint: *fp,
                provider: provider.clone(),
            }))
            .with_no_client_auth(),
        Trust::SystemRoots => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![qpq_proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(64u32.into());
    t.max_concurrent_bidi_streams(16u32.into());
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .map_err(|_| NetError::Tls("idle timeout".into()))?,
    ));
    cc.transport_config(Arc::new(t));
    Ok(cc)
}

/// The connection to one server.
/// A PING every second keeps the path warm and lets a silent server be noticed (ADR 0030).
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection that hears nothing (not even an ACK of a keep-alive) for this long is dead:
/// three missed keep-alives and then some. The client's value wins over the server's 30 s
/// (QUIC uses the smaller of the two).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest wait for a new connection's handshake: a dead or wrong address fails this fast.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// Most pushed messages kept for the receive loop; past it they are dropped and the loop
/// fetches instead.
const PUSHED_MAX: usize = 1024;

/// Messages pushed by the server since the receive loop last took them.
#[derive(Default)]
pub(crate) struct Pushed {
    /// The pushed messages with their payloads, in arrival order.
    pub(crate) messages: Vec<v1::QueuedMessage>,
    /// Something was missed or left out (a payload too large to push, a full buffer, an
    /// unreadable push, a new connection): the loop must fetch.
    pub(crate) must_fetch: bool,
}

/// Calls made, by method id (test hooks count RPCs per message with it).
#[derive(Default)]
pub(crate) struct CallCounts(std::sync::Mutex<std::collections::BTreeMap<u16, u64>>);

impl CallCounts {
    fn add(&self, method: u16) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(method).or_default() += 1;
        }
    }

    /// A copy of the counts.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn snapshot(&self) -> std::collections::BTreeMap<u16, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

pub(crate) struct Net {
    endpoint: quinn::Endpoint,
    server_addr: String,
    server_name: String,
    trust: Trust,
    timeout: Duration,
    conn: Mutex<Option<quinn::Connection>>,
    next_id: AtomicU32,
    /// Notified on every push frame and on every new connection.
    pub(crate) push: Arc<Notify>,
    /// What the pushes carried, for the receive loop (no Fetch for a pushed message).
    pushed: Arc<std::sync::Mutex<Pushed>>,
    /// Calls made, by method.
    pub(crate) calls: CallCounts,
}

impl Net {
    /// Creates the endpoint; does not connect. Must run inside the runtime.
    pub(crate) fn new(
        server_addr: &str,
        server_name: &str,
        trust: Trust,
        timeout: Duration,
    ) -> Result<Net, NetError> {
        let bind: SocketAddr = "0.0.0.0:0"
            .parse()
            .map_err(|_| NetError::Connect("bind address".into()))?;
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|e| NetError::Connect(e.to_string()))?;
        Ok(Net {
            endpoint,
            server_addr: server_addr.to_string(),
            server_name: server_name.to_string(),
            trust,
            timeout,
            conn: Mutex::new(None),
            next_id: AtomicU32::new(1),
            push: Arc::new(Notify::new()),
            pushed: Arc::new(std::sync::Mutex::new(Pushed::default())),
            calls: CallCounts::default(),
        })
    }

    /// True when a live connection exists.
    pub(crate) async fn connected(&self) -> bool {
        matches!(&*self.conn.lock().await, Some(c) if c.close_reason().is_none())
    }

    /// Returns the live connection, connecting when there is none.
    pub(crate) async fn connection(&self) -> Result<quinn::Connection, NetError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = &*guard {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let addr = self
            .server_addr
            .to_socket_addrs()
            .map_err(|e| NetError::Connect(format!("cannot resolve {}: {e}", self.server_addr)))?
            .next()
            .ok_or_else(|| NetError::Connect(format!("no address for {}", self.server_addr)))?;
        let cfg = client_config(&self.trust)?;
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, &self.server_name)
            .map_err(|e| NetError::Connect(e.to_string()))?;
        let conn = tokio::time::timeout(self.timeout.min(CONNECT_TIMEOUT), connecting)
            .await
            .map_err(|_| {
                NetError::Connect(format!(
                    "no answer from {} ({addr}) within {} s",
                    self.server_addr,
                    self.timeout.min(CONNECT_TIMEOUT).as_secs()
                ))
            })?
            .map_err(|e| NetError::Connect(format!("{} ({addr}): {e}", self.server_addr)))?;
        // Push frames: each hands its message to the receive loop and wakes it (one permit;
        // the loop takes every message pushed so far at once).
        let c2 = conn.clone();
        let push = self.push.clone();
        let pushed = self.pushed.clone();
        tokio::spawn(async move {
            while let Ok(mut s) = c2.accept_uni().await {
                let Ok(frame) = read_push(&mut s, MAX_PAYLOAD, Duration::from_secs(10)).await
                else {
                    continue;
                };
                if let Ok(mut p) = pushed.lock() {
                    take_push(&mut p, &frame);
                }
                push.notify_one();
            }
        });
        *guard = Some(conn.clone());
        // A new connection may have missed pushes: the loop fetches.
        if let Ok(mut p) = self.pushed.lock() {
            p.must_fetch = true;
        }
        self.push.notify_one();
        Ok(conn)
    }

    /// Takes what was pushed since the last call.
    pub(crate) fn take_pushed(&self) -> Pushed {
        self.pushed
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or(Pushed {
                messages: Vec::new(),
                must_fetch: true,
            })
    }

    /// Closes the connection (a later call reconnects).
    pub(crate) async fn disconnect(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            c.close(0u32.into(), b"bye");
        }
    }

    /// Closes everything for good.
    pub(crate) fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"closed");
    }

    /// One call: writes the request on a new stream and reads the response, within the
    /// request deadline (`extra` is added for long polls). A transport failure before the
    /// request was answered is retried once on a fresh connection when `idempotent`.
    pub(crate) async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: u16,
        req: &Req,
        token: Option<&[u8]>,
        extra: Duration,
        idempotent: bool,
    ) -> Result<Resp, NetError> {
        let payload = match token {
            Some(t) => qpq_proto::encode_with_token(req, t),
            None => req.encode_to_vec(),
        };
        let payload = Bytes::from(payload);
        self.calls.add(method);
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.call_once(method, payload.clone(), extra).await;
            // Method number, outcome and time only: never a payload or a token.
            tracing::debug!(
                method,
                attempt,
                ok = r.is_ok(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "call"
            );
            match r {
                // Only a connection that died under the call is worth one retry; a fresh
                // connection that just failed would fail again, twice as slowly.
                Err(NetError::Transport(e)) if idempotent && attempt < 2 => {
                    tracing::debug!("call {method} failed ({e}); retrying on a new connection");
                    self.disconnect().await;
                    continue;
                }
                Err(e @ NetError::Transport(_)) => {
                    self.disconnect().await;
                    return Err(e);
                }
                Err(e) => return Err(e),
                Ok(resp) => return decode(resp),
            }
        }
    }

    async fn call_once(
        &self,
        method: u16,
        payload: Bytes,
        extra: Duration,
    ) -> Result<qpq_proto::frame::Response, NetError> {
        let conn = self.connection().await?;
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Request {
            method,
            request_id,
            payload,
        }
        .encode()
        .map_err(|e| NetError::Protocol(e.to_string()))?;
        let deadline = self.timeout + extra;
        let fut = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| NetError::Transport(e.to_string()))?;
            send.write_all(&frame)
                .await
                .map_err(|e| NetError::Transport(e.to_string()))?;
            send.finish()
                .map_err(|e| NetError::Transport(e.to_string()))?;
            read_response(&mut recv, MAX_PAYLOAD, deadline)
                .await
                .map_err(|e| match e {
                    qpq_proto::frame::ReadError::Deadline => NetError::Timeout,
                    other => NetError::Transport(other.to_string()),
                })
        };
        let resp = tokio::time::timeout(deadline, fut)
            .await
            .map_err(|_| NetError::Timeout)??;
        if resp.request_id != request_id {
            return Err(NetError::Protocol(
                "response id does not match the request".into(),
            ));
        }
        Ok(resp)
    }
}

/// Keeps the message a push frame carries; anything else makes the loop fetch.
fn take_push(p: &mut Pushed, frame: &qpq_proto::frame::Push) {
    if frame.event != qpq_proto::event::NEW_MESSAGE {
        // Other events (membership changes) are read from the queue, as before.
        p.must_fetch = true;
        return;
    }
    match v1::NewMessage::decode(frame.payload.clone()) {
        Ok(v1::NewMessage {
            message: Some(m),
            payload_omitted: false,
        }) if p.messages.len() < PUSHED_MAX => p.messages.push(m),
        _ => p.must_fetch = true,
    }
}

fn decode<Resp: prost::Message + Default>(
    resp: qpq_proto::frame::Response,
) -> Result<Resp, NetError> {
    if resp.status == Status::Ok {
        Resp::decode(resp.payload).map_err(|e| NetError::Protocol(e.to_string()))
    } else {
        let e = v1::Error::decode(resp.payload).unwrap_or_default();
        Err(NetError::Status {
            status: resp.status,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        })
    }
}
