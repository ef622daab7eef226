//! A minimal qpq protocol client, for the integration tests, the benchmarks and the fuzz
//! targets: connect with a pinned certificate, OPAQUE register and login, call any method with
//! the session token attached, read pushes.
//!
//! What it will not do: reconnect, retry, or anything a real client needs. Applications use
//! `qpq-core`; this exists so tests speak the wire protocol directly.
//!
//! It also builds real openmls KeyPackages ([`KeyPackageSpec`]), since the server validates
//! every upload, and can record a transcript of every frame a connection sends and receives
//! ([`Conn::record`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, Extension, ExtensionType,
    Extensions, KeyPackage, Lifetime, SignatureScheme,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use bytes::Bytes;
use prost::Message;
use qpq_crypto::identity::IdentityKey;
use qpq_crypto::opaque;
use qpq_proto::frame::{read_push, read_response, Push, Request, Response};
use qpq_proto::{method, v1, Status, MAX_PAYLOAD};
use rand::rngs::OsRng;
use sha2::Digest as _;
use tokio::sync::{mpsc, Mutex};

/// A failed call: status and the server's error message.
#[derive(Debug, Clone)]
pub struct CallError {
    /// The response status.
    pub status: Status,
    /// `qpq.v1.Error.message`.
    pub message: String,
    /// `qpq.v1.Error.retry_after_ms`.
    pub retry_after_ms: u64,
}

/// One QUIC connection to a server, with an optional session.
pub struct Conn {
    /// The client endpoint.
    pub endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
    next_id: AtomicU32,
    /// Session token, attached to every call when set.
    pub token: Option<Vec<u8>>,
    /// Account identity key used at registration.
    pub identity: IdentityKey,
    /// This device's key.
    pub device: IdentityKey,
    /// Username after register/login.
    pub username: String,
    /// Unix seconds at which the session token expires (0 before login).
    pub expires_at: u64,
    /// Push frames received on unidirectional streams.
    pub pushes: Arc<Mutex<mpsc::Receiver<Push>>>,
    /// Every frame sent and received, in wire encoding, once [`Conn::record`] was called.
    transcript: Transcript,
}

/// Frames of a connection as they crossed the wire (inside QUIC/TLS), when recording.
type Transcript = Arc<std::sync::Mutex<Option<Vec<u8>>>>;

fn append(t: &Transcript, bytes: &[u8]) {
    if let Some(v) = t.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        v.extend_from_slice(bytes);
    }
}

/// A quinn client config trusting exactly `cert_der`, TLS 1.3, ALPN qpq.
pub fn client_config(cert_der: &[u8]) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .expect("testkit setup");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("testkit setup")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![qpq_proto::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("testkit setup");
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(16u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    cc.transport_config(Arc::new(t));
    cc
}

impl Conn {
    /// Connects to `addr`, trusting only `cert_der`, and starts reading pushes.
    pub async fn connect(addr: SocketAddr, cert_der: &[u8]) -> Result<Conn, String> {
        Conn::connect_from(
            "127.0.0.1:0".parse().expect("testkit setup"),
            addr,
            cert_der,
        )
        .await
    }

    /// [`Conn::connect`] from a given local address (e.g. `127.0.0.2:0`, to be another IP).
    pub async fn connect_from(
        local: SocketAddr,
        addr: SocketAddr,
        cert_der: &[u8],
    ) -> Result<Conn, String> {
        Conn::connect_with(local, addr, client_config(cert_der)).await
    }

    /// [`Conn::connect_from`] with a given client configuration (e.g. one that grants the
    /// server no push streams).
    pub async fn connect_with(
        local: SocketAddr,
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<Conn, String> {
        let mut endpoint = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(1024);
        let c2 = conn.clone();
        let transcript = Transcript::default();
        let t2 = transcript.clone();
        tokio::spawn(async move {
            while let Ok(mut s) = c2.accept_uni().await {
                if let Ok(p) = read_push(&mut s, MAX_PAYLOAD, Duration::from_secs(5)).await {
                    if let Ok(bytes) = p.encode() {
                        append(&t2, &bytes);
                    }
                    if tx.send(p).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Conn {
            endpoint,
            conn,
            next_id: AtomicU32::new(1),
            token: None,
            identity: IdentityKey::generate(&mut OsRng),
            device: IdentityKey::generate(&mut OsRng),
            username: String::new(),
            expires_at: 0,
            pushes: Arc::new(Mutex::new(rx)),
            transcript,
        })
    }

    /// Starts recording every request frame sent and every response and push frame received,
    /// byte for byte as on the wire inside QUIC (the plaintext the server sees).
    pub fn record(&self) {
        let mut t = self.transcript.lock().unwrap_or_else(|p| p.into_inner());
        t.get_or_insert_with(Vec::new);
    }

    /// The recorded frames so far, concatenated (empty when not recording).
    pub fn transcript(&self) -> Vec<u8> {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Sends raw bytes on a fresh stream and reads the response. Panics on transport errors.
    pub async fn raw_bytes(&self, bytes: &[u8]) -> Response {
        let (mut send, mut recv) = self.conn.open_bi().await.expect("testkit setup");
        append(&self.transcript, bytes);
        send.write_all(bytes).await.expect("testkit setup");
        send.finish().expect("testkit setup");
        let resp = read_response(&mut recv, MAX_PAYLOAD, Duration::from_secs(30))
            .await
            .expect("testkit setup");
        append(
            &self.transcript,
            &resp.encode().expect("a received response re-encodes"),
        );
        resp
    }

    /// Sends one request frame and reads its response. Panics on transport errors.
    pub async fn raw(&self, method: u16, payload: Vec<u8>) -> Response {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = Request {
            method,
            request_id,
            payload: Bytes::from(payload),
        };
        let resp = self.raw_bytes(&req.encode().expect("testkit setup")).await;
        assert_eq!(
            resp.request_id, request_id,
            "response echoes the request id"
        );
        resp
    }

    /// Encodes a request body, with the session token when there is one.
    pub fn encode<M: Message>(&self, m: &M) -> Vec<u8> {
        match &self.token {
            Some(t) => qpq_proto::encode_with_token(m, t),
            None => m.encode_to_vec(),
        }
    }

    /// Calls a method and decodes the response (or the error).
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: u16,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let resp = self.raw(method, self.encode(req)).await;
        decode_response(resp)
    }

    /// OPAQUE registration with this connection's identity and device keys.
    pub async fn register(&mut self, username: &str, password: &str) -> Result<(), CallError> {
        let (state, request) = opaque::client::Registration::start(&mut OsRng, password.as_bytes())
            .expect("testkit setup");
        let r: v1::OpaqueRegisterStartResponse = self
            .call(
                method::OPAQUE_REGISTER_START,
                &v1::OpaqueRegisterStartRequest {
                    username: username.into(),
                    registration_request: Bytes::from(request),
                },
            )
            .await?;
        let fin = state
            .finish(&mut OsRng, password.as_bytes(), &r.registration_response)
            .expect("testkit setup");
        let upload = fin.message;
        let proof = qpq_proto::key_proof::register(
            username,
            &sha2::Sha256::digest(&upload),
            &self.identity.public_key(),
            &self.device.public_key(),
        );
        let _: v1::OpaqueRegisterFinishResponse = self
            .call(
                method::OPAQUE_REGISTER_FINISH,
                &v1::OpaqueRegisterFinishRequest {
                    username: username.into(),
                    registration_upload: Bytes::from(upload),
                    identity_key: Bytes::copy_from_slice(&self.identity.public_key()),
                    device_key: Bytes::copy_from_slice(&self.device.public_key()),
                    identity_signature: Bytes::copy_from_slice(&self.identity.sign(&proof)),
                    device_signature: Bytes::copy_from_slice(&self.device.sign(&proof)),
                },
            )
            .await?;
        self.username = username.into();
        Ok(())
    }

    /// OPAQUE login; keeps the session token. A wrong password gives `Unauthorized` (the
    /// client-side finish fails, so a garbage KE3 is sent to make the server answer).
    pub async fn login(&mut self, username: &str, password: &str) -> Result<(), CallError> {
        let (state, ke1) =
            opaque::client::Login::start(&mut OsRng, password.as_bytes()).expect("testkit setup");
        let r: v1::OpaqueLoginStartResponse = self
            .call(
                method::OPAQUE_LOGIN_START,
                &v1::OpaqueLoginStartRequest {
                    username: username.into(),
                    ke1: Bytes::from(ke1),
                },
            )
            .await?;
        let ke3 = match state.finish(&mut OsRng, password.as_bytes(), &r.ke2) {
            Ok(f) => f.message,
            Err(_) => vec![0u8; 64],
        };
        let dk = self.device.public_key();
        let proof = qpq_proto::key_proof::login_device(&r.login_id, &dk);
        let fin: v1::OpaqueLoginFinishResponse = self
            .call(
                method::OPAQUE_LOGIN_FINISH,
                &v1::OpaqueLoginFinishRequest {
                    login_id: r.login_id,
                    ke3: Bytes::from(ke3),
                    device_key: Bytes::copy_from_slice(&dk),
                    device_signature: Bytes::copy_from_slice(&self.device.sign(&proof)),
                },
            )
            .await?;
        assert_eq!(fin.session_token.len(), 32);
        self.token = Some(fin.session_token.to_vec());
        self.expires_at = fin.expires_at;
        self.username = username.into();
        Ok(())
    }

    /// A re-authentication proof (issue 17 item 11) for DeleteAccount or RevokeDevice: a
    /// fresh OPAQUE LoginStart for this connection's username, finished into a KE3 that the
    /// destructive call carries. A wrong password gives a garbage KE3 (the server refuses).
    pub async fn reauth(&self, password: &str) -> Result<v1::Reauth, CallError> {
        let (state, ke1) =
            opaque::client::Login::start(&mut OsRng, password.as_bytes()).expect("testkit setup");
        let r: v1::OpaqueLoginStartResponse = self
            .call(
                method::OPAQUE_LOGIN_START,
                &v1::OpaqueLoginStartRequest {
                    username: self.username.clone(),
                    ke1: Bytes::from(ke1),
                },
            )
            .await?;
        let ke3 = match state.finish(&mut OsRng, password.as_bytes(), &r.ke2) {
            Ok(f) => f.message,
            Err(_) => vec![0u8; 64],
        };
        Ok(v1::Reauth {
            login_id: r.login_id,
            ke3: Bytes::from(ke3),
        })
    }

    /// DeleteAccount with a re-authentication proof for `password`.
    pub async fn delete_account(&self, password: &str) -> Result<(), CallError> {
        let reauth = self.reauth(password).await?;
        let _: v1::DeleteAccountResponse = self
            .call(
                method::DELETE_ACCOUNT,
                &v1::DeleteAccountRequest {
                    reauth: Some(reauth),
                },
            )
            .await?;
        Ok(())
    }

    /// RevokeDevice of `device_key`, with a re-authentication proof for `password`.
    pub async fn revoke_device(&self, device_key: &[u8], password: &str) -> Result<(), CallError> {
        let reauth = self.reauth(password).await?;
        let _: v1::RevokeDeviceResponse = self
            .call(
                method::REVOKE_DEVICE,
                &v1::RevokeDeviceRequest {
                    device_key: Bytes::copy_from_slice(device_key),
                    reauth: Some(reauth),
                },
            )
            .await?;
        Ok(())
    }

    /// A RegisterDevice request for `device` with its proof of possession (bound to this
    /// connection's session token).
    pub fn register_device_request(&self, device: &IdentityKey) -> v1::RegisterDeviceRequest {
        let token = self.token.clone().unwrap_or_default();
        let dk = device.public_key();
        let proof = qpq_proto::key_proof::register_device(&sha2::Sha256::digest(&token), &dk);
        v1::RegisterDeviceRequest {
            device_key: Bytes::copy_from_slice(&dk),
            signature: Bytes::copy_from_slice(&device.sign(&proof)),
        }
    }

    /// The account identity public key.
    pub fn identity_key(&self) -> Bytes {
        Bytes::copy_from_slice(&self.identity.public_key())
    }

    /// The device public key.
    pub fn device_key(&self) -> Bytes {
        Bytes::copy_from_slice(&self.device.public_key())
    }

    /// `n` real KeyPackages of `suite` for this device, as `qpq-core` makes them.
    pub fn key_packages(&self, suite: Ciphersuite, n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|_| KeyPackageSpec::new(&self.device, suite).build())
            .collect()
    }

    /// Uploads `n` fresh KeyPackages of `suite`; returns the count the server now stores.
    pub async fn upload_key_packages(
        &self,
        suite: Ciphersuite,
        n: usize,
    ) -> Result<u64, CallError> {
        let r: v1::UploadKeyPackageResponse = self
            .call(
                method::UPLOAD_KEY_PACKAGE,
                &v1::UploadKeyPackageRequest {
                    key_packages: self.key_packages(suite, n),
                    ciphersuite: suite_id(suite),
                },
            )
            .await?;
        Ok(r.stored)
    }

    /// Creates a group channel with the given members.
    pub async fn group(&self, members: &[&Conn]) -> Bytes {
        let r: v1::CreateChannelResponse = self
            .call(
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest {
                    kind: v1::ChannelKind::Group as i32,
                    members: members.iter().map(|m| m.identity_key()).collect(),
                    metadata: Bytes::new(),
                },
            )
            .await
            .expect("testkit setup");
        r.channel_id
    }

    /// Enqueues an application message.
    pub async fn send(
        &self,
        channel: &Bytes,
        id: u8,
        payload: &[u8],
    ) -> Result<v1::EnqueueResponse, CallError> {
        self.call(method::ENQUEUE, &app_message(channel, id, payload))
            .await
    }

    /// Fetches everything queued for this device.
    pub async fn fetch(&self) -> Vec<v1::QueuedMessage> {
        let r: v1::FetchResponse = self
            .call(method::FETCH, &v1::FetchRequest::default())
            .await
            .expect("testkit setup");
        r.messages
    }

    /// The next push frame, or `None` after `timeout`.
    pub async fn next_push(&self, timeout: Duration) -> Option<Push> {
        tokio::time::timeout(timeout, self.pushes.lock().await.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The push reader holds a clone of the connection: close explicitly.
        self.conn.close(0u32.into(), b"client done");
    }
}

/// A fresh 16-byte message id whose first byte is `n`.
pub fn message_id(n: u8) -> Bytes {
    let mut id = [0u8; 16];
    id[0] = n;
    id[1..9].copy_from_slice(&rand::random::<[u8; 8]>());
    Bytes::copy_from_slice(&id)
}

/// The bytes of an MLS PrivateMessage as the server sees them (RFC 9420 §6.3): version
/// mls10, wire format private_message, `group_id`, `epoch`, content type (3 = commit), empty
/// authenticated data, then opaque sender data and ciphertext (`body`). The server checks
/// this framing of every commit; it cannot decrypt the rest.
pub fn private_message(group_id: &[u8], epoch: u64, content_type: u8, body: &[u8]) -> Bytes {
    fn vec(out: &mut Vec<u8>, b: &[u8]) {
        // MLS variable-length integer prefix (RFC 9000 style, 1/2/4 bytes).
        let n = b.len();
        if n < 64 {
            out.push(n as u8);
        } else if n < 16384 {
            out.extend_from_slice(&((n as u16) | 0x4000).to_be_bytes());
        } else {
            out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
        }
        out.extend_from_slice(b);
    }
    let mut out = vec![0, 1, 0, 2];
    vec(&mut out, group_id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(content_type);
    vec(&mut out, b"");
    vec(&mut out, &[0x5a; 32]);
    vec(&mut out, body);
    Bytes::from(out)
}

/// A commit Enqueue request from `epoch` whose payload is framed as a commit of `channel`
/// ([`private_message`]); membership fields empty.
pub fn commit_message(channel: &Bytes, id: u8, epoch: u64, body: &[u8]) -> v1::EnqueueRequest {
    v1::EnqueueRequest {
        channel_id: channel.clone(),
        message_id: message_id(id),
        payload: private_message(channel, epoch, 3, body),
        kind: v1::MessageKind::Commit as i32,
        commit_epoch: Some(epoch),
        ..Default::default()
    }
}

/// An application-message Enqueue request.
pub fn app_message(channel: &Bytes, id: u8, payload: &[u8]) -> v1::EnqueueRequest {
    v1::EnqueueRequest {
        channel_id: channel.clone(),
        message_id: message_id(id),
        payload: Bytes::copy_from_slice(payload),
        kind: v1::MessageKind::Application as i32,
        ..Default::default()
    }
}

/// Decodes a response body, or its `qpq.v1.Error` into a [`CallError`].
pub fn decode_response<Resp: Message + Default>(resp: Response) -> Result<Resp, CallError> {
    if resp.status == Status::Ok {
        Ok(Resp::decode(resp.payload).expect("testkit setup"))
    } else {
        let e = v1::Error::decode(resp.payload).expect("testkit setup");
        assert_eq!(
            e.code,
            u32::from(resp.status.code()),
            "Error.code equals the frame status"
        );
        assert!(!e.message.is_empty(), "every error carries a message");
        Err(CallError {
            status: resp.status,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        })
    }
}

/// The status of a call result (`Ok` for success).
pub fn status_of<T>(r: Result<T, CallError>) -> Status {
    match r {
        Ok(_) => Status::Ok,
        Err(e) => e.status,
    }
}

/// The classic ciphersuite of `qpq-core` ([`qpq_proto::suite::CLASSIC`], 0x0001) as openmls's
/// type.
pub const CLASSIC: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// The post-quantum (X-Wing) ciphersuite of `qpq-core` ([`qpq_proto::suite::XWING`], 0x004f)
/// as openmls's type.
pub const PQ: Ciphersuite = Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;
// The list lives in qpq-proto; these only name openmls's variants for it.
const _: () = assert!(CLASSIC as u16 == qpq_proto::suite::CLASSIC.id);
const _: () = assert!(PQ as u16 == qpq_proto::suite::XWING.id);

/// A ciphersuite as the wire's `ciphersuite` field carries it.
pub fn suite_id(suite: Ciphersuite) -> u32 {
    u32::from(u16::from(suite))
}

/// What a test KeyPackage claims. [`KeyPackageSpec::new`] gives one that the server accepts
/// from `device` (the shape `qpq-core` uploads); change fields to build the ones it must not.
pub struct KeyPackageSpec<'a> {
    /// The KeyPackage's ciphersuite.
    pub suite: Ciphersuite,
    /// The Ed25519 key that signs (the leaf's and the KeyPackage's signature).
    pub signer: &'a IdentityKey,
    /// The leaf's signature key (normally the signer's public key).
    pub signature_key: [u8; 32],
    /// The BasicCredential identity (normally the device's public key).
    pub identity: [u8; 32],
    /// Lifetime; openmls' default (now − 1 h to now + 12 weeks) when `None`.
    pub lifetime: Option<Lifetime>,
    /// Extra KeyPackage extensions (each also listed in the leaf's capabilities).
    pub extensions: Vec<Extension>,
}

/// qpq-core's group roles extension type (its `roles::ROLES_EXTENSION`, ADR 0032): every
/// KeyPackage built here lists it in its capabilities, as qpq-core's do, so a qpq-core group
/// can add the device.
const QPQ_ROLES_EXTENSION: u16 = 0xF0A0;

impl<'a> KeyPackageSpec<'a> {
    /// A valid KeyPackage of `device` for `suite`.
    pub fn new(device: &'a IdentityKey, suite: Ciphersuite) -> KeyPackageSpec<'a> {
        KeyPackageSpec {
            suite,
            signer: device,
            signature_key: device.public_key(),
            identity: device.public_key(),
            lifetime: None,
            extensions: Vec::new(),
        }
    }

    /// Builds and TLS-encodes the KeyPackage (private parts are dropped).
    pub fn build(&self) -> Bytes {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            self.signer.to_bytes().to_vec(),
            self.signer.public_key().to_vec(),
        );
        let mut suites = vec![CLASSIC, PQ];
        if !suites.contains(&self.suite) {
            suites.push(self.suite);
        }
        let mut types: Vec<ExtensionType> =
            self.extensions.iter().map(|e| e.extension_type()).collect();
        // qpq-core's leaves support its group roles extension (required by its groups).
        if !types.contains(&ExtensionType::Unknown(QPQ_ROLES_EXTENSION)) {
            types.push(ExtensionType::Unknown(QPQ_ROLES_EXTENSION));
        }
        let mut builder = KeyPackage::builder().leaf_node_capabilities(Capabilities::new(
            None,
            Some(&suites),
            Some(&types),
            None,
            None,
        ));
        if let Some(l) = self.lifetime {
            builder = builder.key_package_lifetime(l);
        }
        if !self.extensions.is_empty() {
            builder = builder.key_package_extensions(
                Extensions::from_vec(self.extensions.clone()).expect("testkit setup"),
            );
        }
        let credential = CredentialWithKey {
            credential: BasicCredential::new(self.identity.to_vec()).into(),
            signature_key: self.signature_key.to_vec().into(),
        };
        let bundle = builder
            .build(self.suite, &provider, &signer, credential)
            .expect("testkit setup");
        Bytes::from(
            bundle
                .key_package()
                .tls_serialize_detached()
                .expect("testkit setup"),
        )
    }
}
