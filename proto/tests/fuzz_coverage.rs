//! P-2 bookkeeping: the `message_decode` fuzz target must cover every message type of
//! package qpq.v1. Fails when a `.proto` gains a message that the target's list lacks.

mod golden;

#[test]
fn message_decode_target_lists_every_message_type() {
    let declared = golden::proto_message_names();
    let listed = golden::fuzz_message_list();
    assert!(declared.len() > 100, "parsed {} messages", declared.len());
    let missing: Vec<_> = declared.iter().filter(|n| !listed.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "add to proto/fuzz/fuzz_targets/message_decode.rs: {missing:?}"
    );
    assert!(listed.len() <= 256, "the selector is one byte");
}
