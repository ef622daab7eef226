//! P-5: round-trip property tests for a representative set of qpq.v1 message types (nested
//! messages, repeated and packed fields, enums with unknown values, oneofs, optional fields,
//! strings) and for frames carrying them: `decode(encode(x)) == x` and re-encoding the
//! decoded value is byte-identical (the encoding is canonical).
//!
//! Cases: proptest's default (256 per property). The plan's figure (100,000) is a long run:
//! `PROPTEST_CASES=100000 cargo test -p qpq-proto --release --test message_roundtrip`.
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use qpq_proto::frame::{Request, Response};
use qpq_proto::{v1, Message, Status, MAX_PAYLOAD};

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn queued() -> impl Strategy<Value = v1::QueuedMessage> {
    (
        any::<u64>(),
        bytes(20),
        bytes(40),
        bytes(20),
        bytes(300),
        any::<u64>(),
        any::<i32>(),
    )
        .prop_map(
            |(seq, channel_id, sender_device, message_id, payload, server_time_ms, kind)| {
                v1::QueuedMessage {
                    seq,
                    channel_id,
                    sender_device,
                    message_id,
                    payload,
                    server_time_ms,
                    kind,
                }
            },
        )
}

fn enqueue() -> impl Strategy<Value = v1::EnqueueRequest> {
    (
        (bytes(20), bytes(20), bytes(300), any::<i32>()),
        option::of(any::<u64>()),
        vec(bytes(40), 0..4),
        vec(bytes(40), 0..4),
        bytes(100),
        vec(bytes(40), 0..4),
    )
        .prop_map(
            |(
                (channel_id, message_id, payload, kind),
                commit_epoch,
                add_members,
                remove_members,
                welcome,
                welcome_devices,
            )| v1::EnqueueRequest {
                channel_id,
                message_id,
                payload,
                kind,
                commit_epoch,
                add_members,
                remove_members,
                group_info: welcome.clone(),
                welcome,
                promote_members: welcome_devices.clone(),
                welcome_devices,
            },
        )
}

fn app_message() -> impl Strategy<Value = v1::AppMessage> {
    use v1::app_message::Kind;
    let kind = prop_oneof![
        Just(None),
        ".{0,40}".prop_map(|body| Some(Kind::Text(v1::Text { body }))),
        (bytes(20), ".{0,8}", any::<bool>()).prop_map(|(target_id, emoji, remove)| Some(
            Kind::Reaction(v1::Reaction {
                target_id,
                emoji,
                remove
            })
        )),
        (vec(bytes(20), 0..5), any::<bool>())
            .prop_map(|(message_ids, read)| Some(Kind::Receipt(v1::Receipt { message_ids, read }))),
        any::<bool>().prop_map(|started| Some(Kind::Typing(v1::TypingNotice { started }))),
        (bytes(32), any::<u64>(), ".{0,20}", ".{0,20}", bytes(32)).prop_map(
            |(sha256, size, name, mime_type, key)| Some(Kind::File(v1::FileRef {
                sha256,
                size,
                name,
                mime_type,
                key
            }))
        ),
        (".{0,20}", bytes(64))
            .prop_map(|(content_type, data)| Some(Kind::App(v1::AppData { content_type, data }))),
        (bytes(16), ".{0,40}")
            .prop_map(|(target_id, body)| Some(Kind::Reply(v1::Reply { target_id, body }))),
    ];
    (bytes(20), any::<u64>(), bytes(40), kind).prop_map(|(id, sent_at, sender_device, kind)| {
        v1::AppMessage {
            id,
            sent_at,
            sender_device,
            kind,
        }
    })
}

fn check<M: Message + Default + PartialEq + Debug>(x: &M) -> Result<(), TestCaseError> {
    let encoded = x.encode_to_vec();
    prop_assert_eq!(encoded.len(), x.encoded_len());
    let decoded = M::decode(&encoded[..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decoded, x);
    prop_assert_eq!(decoded.encode_to_vec(), encoded.clone(), "not canonical");
    // Through a request frame and back.
    let frame = Request {
        method: 200,
        request_id: 7,
        payload: Bytes::from(encoded.clone()),
    }
    .encode()
    .unwrap();
    let (req, used) = Request::decode(&frame, MAX_PAYLOAD).unwrap();
    prop_assert_eq!(used, frame.len());
    prop_assert_eq!(&M::decode(req.payload).unwrap(), x);
    // And beside a session token, as authenticated requests travel.
    let with_token = qpq_proto::encode_with_token(x, &[9u8; 32]);
    prop_assert_eq!(&M::decode(&with_token[..]).unwrap(), x);
    prop_assert_eq!(
        &qpq_proto::session_token(&with_token).unwrap()[..],
        &[9u8; 32][..]
    );
    Ok(())
}

proptest! {
    #[test]
    fn enqueue_request(x in enqueue()) { check(&x)?; }

    #[test]
    fn batch_enqueue_request(messages in vec(enqueue(), 0..4)) {
        check(&v1::BatchEnqueueRequest { messages })?;
    }

    #[test]
    fn fetch_response(messages in vec(queued(), 0..5), more in any::<bool>()) {
        check(&v1::FetchResponse { messages, more })?;
    }

    #[test]
    fn new_message(message in option::of(queued()), payload_omitted: bool) {
        check(&v1::NewMessage { message, payload_omitted })?;
    }

    #[test]
    fn ack_request(up_to_seq: u64, seqs in vec(any::<u64>(), 0..50)) {
        check(&v1::AckRequest { up_to_seq, seqs })?;
    }

    #[test]
    fn create_channel_request(kind: i32, members in vec(bytes(40), 0..6), metadata in bytes(100)) {
        check(&v1::CreateChannelRequest { kind, members, metadata })?;
    }

    #[test]
    fn opaque_login_start_request(username in ".{0,40}", ke1 in bytes(200)) {
        check(&v1::OpaqueLoginStartRequest { username, ke1 })?;
    }

    #[test]
    fn upload_blob_request(
        channel_id in bytes(20), sha256 in bytes(40), total_size: u64, offset: u64, chunk in bytes(2048)
    ) {
        check(&v1::UploadBlobRequest { channel_id, sha256, total_size, offset, chunk })?;
    }

    #[test]
    fn list_group_members_response(
        members in vec((bytes(40), ".{0,20}", vec(bytes(40), 0..3)), 0..4), metadata in bytes(64), epoch: u64, kind: i32
    ) {
        let members = members
            .into_iter()
            .map(|(identity_key, username, device_keys)| v1::GroupMember { identity_key, username, device_keys })
            .collect();
        check(&v1::ListGroupMembersResponse { members, metadata, epoch, kind })?;
    }

    #[test]
    fn app_message_all_kinds(x in app_message()) { check(&x)?; }

    #[test]
    fn error(code: u32, message in ".{0,60}", retry_after_ms: u64) {
        check(&v1::Error { code, message, retry_after_ms })?;
        let frame = Response { status: Status::from_code((code % 12) as u8).unwrap(), request_id: code, payload: Bytes::new() }
            .encode()
            .unwrap();
        prop_assert_eq!(Response::decode(&frame, MAX_PAYLOAD).unwrap().1, frame.len());
    }
}
