//! Issue 17 item 13, the client half: every device uploads an RFC 9420 last-resort
//! KeyPackage at login, so it stays invitable after its ordinary KeyPackages are drained (the
//! server serves the last resort only then, and never deletes it).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use common::*;
use qpq_core::{Body, Client};

/// bob is offline while carol's groups use up his 20 ordinary classic KeyPackages; alice can
/// still take him into a group (with his last-resort KeyPackage), and when bob comes back he
/// joins every group and reads alice's message.
#[test]
fn a_drained_device_stays_invitable_through_its_last_resort_key_package() {
    let s = TestServer::start();
    let alice = s.user("alice");
    let carol = s.user("carol");
    let User { client: bob, dir } = s.user("bob");
    bob.shutdown();
    drop(bob);
    for i in 0..20 {
        let conv = carol.create_group(&format!("c{i}"), false).unwrap();
        carol
            .invite(&conv, &["bob"])
            .unwrap_or_else(|e| panic!("carol's invite {i}: {e}"));
    }
    let conv = alice.create_group("after the drain", false).unwrap();
    alice
        .invite(&conv, &["bob"])
        .expect("bob stays invitable through his last-resort KeyPackage");
    alice
        .send(&conv, Body::Text("after the stock ran out".into()))
        .unwrap();
    let bob = Client::open(s.config(dir.path())).unwrap();
    let m = wait_text(&bob, "after the stock ran out");
    assert_eq!(m.conversation, conv);
    assert_eq!(bob.conversations().unwrap().len(), 21);
}
