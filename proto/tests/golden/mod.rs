//! Golden values shared by the parser tests and the fuzz-corpus generator: valid protobuf
//! messages of several types and valid request, response and push frames carrying them.
#![allow(dead_code)]

use bytes::Bytes;
use prost::Message;
use qpq_proto::frame::{Push, Request, Response};
use qpq_proto::{event, method, v1, Status};

fn b(n: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| seed.wrapping_add(i as u8))
            .collect::<Vec<u8>>(),
    )
}

fn queued(seq: u64) -> v1::QueuedMessage {
    v1::QueuedMessage {
        seq,
        channel_id: b(16, 1),
        sender_device: b(32, 2),
        message_id: b(16, 3),
        payload: b(100, 4),
        server_time_ms: 1_700_000_000_000,
        kind: v1::MessageKind::Application as i32,
    }
}

/// `(message type name, encoding)` of a handful of representative values.
pub fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let enqueue = v1::EnqueueRequest {
        channel_id: b(16, 1),
        message_id: b(16, 2),
        payload: b(300, 3),
        kind: v1::MessageKind::Commit as i32,
        commit_epoch: Some(7),
        add_members: vec![b(32, 4), b(32, 5)],
        remove_members: vec![b(32, 6)],
        welcome: b(64, 7),
        welcome_devices: vec![b(32, 8)],
        promote_members: vec![],
        group_info: Bytes::new(),
    };
    vec![
        ("EnqueueRequest", enqueue.encode_to_vec()),
        (
            "BatchEnqueueRequest",
            v1::BatchEnqueueRequest {
                messages: vec![enqueue.clone(), v1::EnqueueRequest::default()],
            }
            .encode_to_vec(),
        ),
        (
            "FetchRequest",
            v1::FetchRequest {
                after_seq: 41,
                limit: 100,
                channel_id: b(16, 1),
            }
            .encode_to_vec(),
        ),
        (
            "FetchResponse",
            v1::FetchResponse {
                messages: vec![queued(1), queued(2)],
                more: false,
            }
            .encode_to_vec(),
        ),
        (
            "AckRequest",
            v1::AckRequest {
                up_to_seq: 3,
                seqs: vec![1, 2, 300, u64::MAX],
            }
            .encode_to_vec(),
        ),
        (
            "CreateChannelRequest",
            v1::CreateChannelRequest {
                kind: v1::ChannelKind::Group as i32,
                members: vec![b(32, 9), b(32, 10)],
                metadata: b(40, 11),
            }
            .encode_to_vec(),
        ),
        (
            "OpaqueLoginStartRequest",
            v1::OpaqueLoginStartRequest {
                username: "alice".into(),
                ke1: b(96, 12),
            }
            .encode_to_vec(),
        ),
        (
            "UploadBlobRequest",
            v1::UploadBlobRequest {
                channel_id: b(16, 1),
                sha256: b(32, 13),
                total_size: 1 << 20,
                offset: 65_536,
                chunk: b(512, 14),
            }
            .encode_to_vec(),
        ),
        (
            "UploadKeyPackageRequest",
            v1::UploadKeyPackageRequest {
                key_packages: vec![b(200, 15), b(200, 16)],
                ciphersuite: 1,
            }
            .encode_to_vec(),
        ),
        (
            "NewMessage",
            v1::NewMessage {
                message: Some(queued(5)),
                payload_omitted: true,
            }
            .encode_to_vec(),
        ),
        (
            "HealthResponse",
            v1::HealthResponse {
                status: "ok".into(),
                version: "0.1.0".into(),
                uptime_secs: 12,
            }
            .encode_to_vec(),
        ),
        (
            "AppMessage",
            v1::AppMessage {
                id: b(16, 17),
                sent_at: 1_700_000_000_123,
                sender_device: b(32, 18),
                kind: Some(v1::app_message::Kind::Text(v1::Text {
                    body: "héllo, wörld".into(),
                })),
            }
            .encode_to_vec(),
        ),
        (
            "Error",
            v1::Error {
                code: u32::from(Status::RateLimited.code()),
                message: "slow down".into(),
                retry_after_ms: 1000,
            }
            .encode_to_vec(),
        ),
    ]
}

/// A 32-byte stand-in session token.
pub const TOKEN: [u8; 32] = [0x5a; 32];

/// `(kind, frame bytes)` with kind one of "request", "response", "push".
pub fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let m = messages();
    let find = |name: &str| {
        m.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| Bytes::from(e.clone()))
            .expect("golden message exists")
    };
    let with_token = |name: &str| {
        let mut p = find(name).to_vec();
        p.extend_from_slice(&qpq_proto::encode_with_token(&v1::Empty {}, &TOKEN));
        Bytes::from(p)
    };
    let req = |method: u16, id: u32, payload: Bytes| {
        Request {
            method,
            request_id: id,
            payload,
        }
        .encode()
        .expect("small")
    };
    vec![
        (
            "request",
            req(method::ENQUEUE, 1, with_token("EnqueueRequest")),
        ),
        (
            "request",
            req(method::BATCH_ENQUEUE, 2, with_token("BatchEnqueueRequest")),
        ),
        ("request", req(method::FETCH, 3, with_token("FetchRequest"))),
        ("request", req(method::ACK, 4, with_token("AckRequest"))),
        (
            "request",
            req(
                method::CREATE_CHANNEL,
                5,
                with_token("CreateChannelRequest"),
            ),
        ),
        (
            "request",
            req(
                method::OPAQUE_LOGIN_START,
                6,
                find("OpaqueLoginStartRequest"),
            ),
        ),
        (
            "request",
            req(method::UPLOAD_BLOB, 7, with_token("UploadBlobRequest")),
        ),
        (
            "request",
            req(
                method::UPLOAD_KEY_PACKAGE,
                8,
                with_token("UploadKeyPackageRequest"),
            ),
        ),
        ("request", req(method::HEALTH, 9, Bytes::new())),
        (
            "response",
            Response {
                status: Status::Ok,
                request_id: 3,
                payload: find("FetchResponse"),
            }
            .encode()
            .expect("small"),
        ),
        (
            "response",
            Response {
                status: Status::RateLimited,
                request_id: 4,
                payload: find("Error"),
            }
            .encode()
            .expect("small"),
        ),
        (
            "response",
            Response {
                status: Status::Ok,
                request_id: 9,
                payload: find("HealthResponse"),
            }
            .encode()
            .expect("small"),
        ),
        (
            "push",
            Push {
                event: event::NEW_MESSAGE,
                payload: find("NewMessage"),
            }
            .encode()
            .expect("small"),
        ),
    ]
}

/// The message type names listed by `every_message!` in the `message_decode` fuzz target, in
/// order (its selector byte is the index modulo the count).
pub fn fuzz_message_list() -> Vec<String> {
    let src = include_str!("../../fuzz/fuzz_targets/message_decode.rs");
    let start = src.find("every_message!(\n").expect("list start") + "every_message!(\n".len();
    let end = start + src[start..].find(");").expect("list end");
    src[start..end]
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Every `message` declared at the top level of `proto/qpq/v1/*.proto`.
pub fn proto_message_names() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("qpq/v1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("proto dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read proto");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("message ") {
                let name = rest
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next();
                out.push(name.expect("message name").to_string());
            }
        }
    }
    out
}
