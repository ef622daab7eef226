//! Writes the seed corpus of the `dispatch` fuzz target (`server/fuzz/corpus/dispatch/`):
//! valid requests of most methods, in the target's input format (flags byte: bit 7 = append
//! the session token, bits 0..6 = index into `method::ALL`; then the payload).
//!
//! `cargo run --manifest-path server/fuzz/Cargo.toml --example gen_corpus`, then commit.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use qpq_crypto::envelope::HybridSecretKey;
use qpq_crypto::opaque::client::{Login, Registration};
use qpq_proto::{method, v1};
use rand::SeedableRng;

fn index(m: u16) -> u8 {
    let i = method::ALL
        .iter()
        .position(|(id, _)| *id == m)
        .expect("method listed");
    u8::try_from(i).expect("fewer than 0x70 methods")
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/dispatch");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let b = |n: usize, v: u8| Bytes::from(vec![v; n]);
    let hybrid = HybridSecretKey::from_seed(&[0x10; 64])
        .public_key()
        .to_bytes();
    let (_, reg) = Registration::start(&mut rng, b"pw").expect("reg");
    let (_, ke1) = Login::start(&mut rng, b"pw").expect("ke1");
    // A real KeyPackage (the server parses every upload), of a fixed key: the fuzzed account's
    // device key is random, so it is refused as someone else's, after the full parse.
    let key_package = qpq_server::testkit::KeyPackageSpec::new(
        &qpq_crypto::identity::IdentityKey::from_bytes(&[0x11; 32]),
        qpq_server::testkit::CLASSIC,
    )
    .build();

    let authed: Vec<(&str, u16, Vec<u8>)> = vec![
        (
            "enqueue",
            method::ENQUEUE,
            v1::EnqueueRequest {
                channel_id: b(16, 1),
                message_id: b(16, 2),
                payload: b(64, 3),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "batch-enqueue",
            method::BATCH_ENQUEUE,
            v1::BatchEnqueueRequest {
                messages: vec![v1::EnqueueRequest {
                    channel_id: b(16, 1),
                    message_id: b(16, 4),
                    payload: b(8, 5),
                    ..Default::default()
                }],
            }
            .encode_to_vec(),
        ),
        (
            "fetch",
            method::FETCH,
            v1::FetchRequest {
                after_seq: 0,
                limit: 10,
                channel_id: Bytes::new(),
            }
            .encode_to_vec(),
        ),
        (
            "fetch-wait",
            method::FETCH_WAIT,
            v1::FetchWaitRequest {
                timeout_ms: 5,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "peek",
            method::PEEK,
            v1::PeekRequest::default().encode_to_vec(),
        ),
        (
            "ack",
            method::ACK,
            v1::AckRequest {
                up_to_seq: 1,
                seqs: vec![1, 2],
            }
            .encode_to_vec(),
        ),
        (
            "upload-key-package",
            method::UPLOAD_KEY_PACKAGE,
            v1::UploadKeyPackageRequest {
                key_packages: vec![key_package.clone()],
                ciphersuite: 1,
            }
            .encode_to_vec(),
        ),
        (
            "fetch-key-package",
            method::FETCH_KEY_PACKAGE,
            v1::FetchKeyPackageRequest {
                device_key: b(32, 7),
                ciphersuite: 1,
            }
            .encode_to_vec(),
        ),
        (
            "upload-hybrid-key",
            method::UPLOAD_HYBRID_KEY,
            v1::UploadHybridKeyRequest {
                hybrid_public_key: Bytes::from(hybrid),
            }
            .encode_to_vec(),
        ),
        (
            "fetch-hybrid-keys",
            method::FETCH_HYBRID_KEYS,
            v1::FetchHybridKeysRequest {
                device_keys: vec![b(32, 7)],
            }
            .encode_to_vec(),
        ),
        (
            "fetch-key-packages",
            method::FETCH_KEY_PACKAGES,
            v1::FetchKeyPackagesRequest {
                device_keys: vec![b(32, 7), b(32, 8)],
                ciphersuite: 1,
                with_hybrid_keys: true,
            }
            .encode_to_vec(),
        ),
        (
            "create-channel",
            method::CREATE_CHANNEL,
            v1::CreateChannelRequest {
                kind: v1::ChannelKind::Group as i32,
                members: vec![],
                metadata: b(8, 8),
            }
            .encode_to_vec(),
        ),
        (
            "list-group-members",
            method::LIST_GROUP_MEMBERS,
            v1::ListGroupMembersRequest {
                channel_id: b(16, 1),
            }
            .encode_to_vec(),
        ),
        (
            "resolve-user",
            method::RESOLVE_USER,
            v1::ResolveUserRequest {
                username: "fuzz0".into(),
            }
            .encode_to_vec(),
        ),
        (
            "resolve-users",
            method::RESOLVE_USERS,
            v1::ResolveUsersRequest {
                usernames: vec!["fuzz0".into(), "fuzz1".into()],
            }
            .encode_to_vec(),
        ),
        (
            "upload-blob",
            method::UPLOAD_BLOB,
            v1::UploadBlobRequest {
                channel_id: b(16, 1),
                sha256: b(32, 9),
                total_size: 4,
                offset: 0,
                chunk: b(4, 10),
            }
            .encode_to_vec(),
        ),
        (
            "download-blob",
            method::DOWNLOAD_BLOB,
            v1::DownloadBlobRequest {
                sha256: b(32, 9),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "list-devices",
            method::LIST_DEVICES,
            v1::ListDevicesRequest {}.encode_to_vec(),
        ),
    ];
    let public: Vec<(&str, u16, Vec<u8>)> = vec![
        ("health", method::HEALTH, Vec::new()),
        (
            "register-start",
            method::OPAQUE_REGISTER_START,
            v1::OpaqueRegisterStartRequest {
                username: "seed".into(),
                registration_request: Bytes::from(reg.clone()),
            }
            .encode_to_vec(),
        ),
        (
            "login-start",
            method::OPAQUE_LOGIN_START,
            v1::OpaqueLoginStartRequest {
                username: "fuzz0".into(),
                ke1: Bytes::from(ke1.clone()),
            }
            .encode_to_vec(),
        ),
    ];
    let mut n = 0;
    for (name, m, payload) in authed {
        let mut input = vec![0x80 | index(m)];
        input.extend_from_slice(&payload);
        std::fs::write(dir.join(format!("{name}-token")), &input).expect("write");
        input[0] &= 0x7f;
        std::fs::write(dir.join(name), &input).expect("write");
        n += 2;
    }
    for (name, m, payload) in public {
        let mut input = vec![index(m)];
        input.extend_from_slice(&payload);
        std::fs::write(dir.join(name), &input).expect("write");
        n += 1;
    }
    // A raw, unknown method id.
    std::fs::write(dir.join("unknown-method"), [0xff, 0xff, 0xfe, 0x08, 0x01]).expect("write");
    println!("wrote {} inputs to {}", n + 1, dir.display());
}
