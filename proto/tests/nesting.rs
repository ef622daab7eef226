//! P-8: deep nesting. 10,000 (and 100,000) levels of length-delimited fields, and of
//! protobuf groups in an unknown field, decoded as message types that contain nested
//! messages: never a stack overflow. qpq's schema nests messages one level deep only, so a
//! deep payload is either an error (the nested type's field 1 is a varint: wire-type
//! mismatch; groups hit prost's recursion limit of 100) or, where the nested type's field 1
//! is `bytes`, decodes with the rest of the nesting as opaque bytes (no recursion happens).

use prost::Message;
use qpq_proto::v1;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `levels` nested copies of field `field` (wire type 2) around an empty innermost message.
fn nested_length_delimited(field: u32, levels: usize) -> Vec<u8> {
    let tag = u64::from(field << 3 | 2);
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..levels {
        let mut outer = Vec::with_capacity(inner.len() + 12);
        varint(tag, &mut outer);
        varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    inner
}

/// `levels` nested start-group tags of field `field`, closed in order.
fn nested_groups(field: u32, levels: usize) -> Vec<u8> {
    let mut start = Vec::new();
    varint(u64::from(field << 3 | 3), &mut start);
    let mut end = Vec::new();
    varint(u64::from(field << 3 | 4), &mut end);
    let mut out = Vec::with_capacity(levels * (start.len() + end.len()));
    for _ in 0..levels {
        out.extend_from_slice(&start);
    }
    for _ in 0..levels {
        out.extend_from_slice(&end);
    }
    out
}

/// Types whose field 1 is a nested message whose own field 1 is a varint.
fn must_fail(payload: &[u8]) {
    assert!(v1::NewMessage::decode(payload).is_err(), "NewMessage");
    assert!(v1::FetchResponse::decode(payload).is_err(), "FetchResponse");
}

/// Types whose field 1 is a nested message whose own field 1 is `bytes`: the nesting below
/// level 2 is just bytes. Returns how many decoded.
fn must_not_overflow(payload: &[u8]) -> usize {
    [
        v1::BatchEnqueueRequest::decode(payload).is_ok(),
        v1::ListGroupMembersResponse::decode(payload).is_ok(),
        v1::FetchHybridKeysResponse::decode(payload).is_ok(),
    ]
    .iter()
    .filter(|ok| **ok)
    .count()
}

#[test]
fn ten_thousand_nested_length_delimited_fields_are_an_error() {
    for levels in [10_000, 100_000] {
        let p = nested_length_delimited(1, levels);
        must_fail(&p);
        assert_eq!(must_not_overflow(&p), 3);
        // AppMessage: field 10 is the Text of its oneof; Text skips the unknown field 10.
        assert!(v1::AppMessage::decode(&nested_length_delimited(10, levels)[..]).is_ok());
    }
}

#[test]
fn ten_thousand_nested_groups_in_an_unknown_field_are_an_error() {
    for levels in [10_000, 100_000] {
        let p = nested_groups(99, levels);
        must_fail(&p);
        assert_eq!(must_not_overflow(&p), 0);
        assert!(v1::EnqueueRequest::decode(&p[..]).is_err());
        assert!(v1::Empty::decode(&p[..]).is_err());
    }
}

#[test]
fn nesting_within_the_limit_of_the_schema_still_decodes() {
    // One level of NewMessage { message: QueuedMessage {} } is fine.
    let one = nested_length_delimited(1, 1);
    assert_eq!(
        v1::NewMessage::decode(&one[..]).expect("decodes"),
        v1::NewMessage {
            message: Some(v1::QueuedMessage::default()),
            payload_omitted: false
        }
    );
}
