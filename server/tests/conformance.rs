//! One conformance suite for both storage backends (issue 15 item 2): every test below runs
//! against SQLite (a real file) and PostgreSQL (a real cluster, a fresh database per test),
//! through the `Storage` trait the service uses: delivery and fan-out, idempotency, acks,
//! commit Conflict, limits, blobs, account deletion, KeyPackages, blocks, migrations, and 64
//! concurrent writers to one device queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/pg.rs"]
mod pg;

use std::sync::Arc;

use bytes::Bytes;
use qpq_server::storage::postgres::PostgresStorage;
use qpq_server::storage::sqlite::SqliteStorage;
use qpq_server::storage::*;
use sha2::{Digest, Sha256};

struct Backend {
    store: Arc<dyn Storage>,
    url: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStorage::open(&dir.path().join("qpq.db")).unwrap();
    Backend {
        store: Arc::new(store),
        url: None,
        _dir: Some(dir),
    }
}

fn postgres() -> Backend {
    let url = pg::database();
    Backend {
        store: Arc::new(PostgresStorage::open(&url).unwrap()),
        url: Some(url),
        _dir: None,
    }
}

struct User {
    account: AccountId,
    device: DeviceId,
    identity: Key32,
    device_key: Key32,
}

fn user(s: &dyn Storage, name: &str, n: u8) -> User {
    let identity = [n; 32];
    let device_key = [n.wrapping_add(100); 32];
    let account = s
        .create_account(name, &identity, &device_key, b"record", 1)
        .unwrap();
    let device = s.devices(account).unwrap()[0].id;
    User {
        account,
        device,
        identity,
        device_key,
    }
}

fn op(from: &User, channel: ChannelId, id: u8, payload: &[u8]) -> EnqueueOp {
    let mut message_id = [0u8; 16];
    message_id[0] = id;
    message_id[1] = from.device as u8;
    EnqueueOp {
        sender_account: from.account,
        sender_device: from.device,
        sender_device_key: from.device_key,
        channel_id: channel,
        message_id,
        payload: Bytes::copy_from_slice(payload),
        kind: 1,
        commit_epoch: None,
        add_members: vec![],
        remove_members: vec![],
        welcome: Bytes::new(),
        welcome_devices: vec![],
        promote_members: vec![],
        group_info: None,
        external: false,
        now_ms: 1_000,
        max_queue_depth: 1_000,
        max_queue_bytes: 1 << 20,
        max_share_depth: 1_000,
        max_share_bytes: 1 << 20,
    }
}

fn group(s: &dyn Storage, creator: &User, others: &[&User]) -> ChannelId {
    let keys: Vec<Key32> = others.iter().map(|u| u.identity).collect();
    s.create_channel(ChannelKind::Group, creator.account, &keys, b"meta", 1)
        .unwrap()
        .0
        .id
}

fn fetch_all(s: &dyn Storage, device: DeviceId) -> Vec<QueuedMessage> {
    s.fetch(device, 0, 1000, usize::MAX, None).unwrap().0
}

fn delivery_fans_out_in_order(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bo, c) = (user(s, "alice", 1), user(s, "bob", 2), user(s, "carol", 3));
    let a2 = s.add_device(a.account, &[42; 32], 5, 1).unwrap();
    let ch = group(s, &a, &[&bo, &c]);
    for i in 0..5u8 {
        let out = s.enqueue(op(&a, ch, i, &[i; 10])).unwrap();
        assert!(!out.duplicate);
        let mut to: Vec<DeviceId> = out.deliveries.iter().map(|d| d.device_id).collect();
        to.sort_unstable();
        assert_eq!(
            to,
            vec![bo.device, c.device, a2]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
    }
    for d in [bo.device, c.device, a2] {
        let got = fetch_all(s, d);
        assert_eq!(got.len(), 5);
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "per-device sequence numbers");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(&m.payload[..], &[i as u8; 10]);
            assert_eq!(m.sender_device, a.device_key);
            assert_eq!(m.channel_id, ch);
        }
    }
    assert!(fetch_all(s, a.device).is_empty(), "never to the sender");
    // Paging: limit and byte budget.
    let (page, more) = s.fetch(bo.device, 0, 2, usize::MAX, None).unwrap();
    assert_eq!((page.len(), more), (2, true));
    let (page, more) = s.fetch(bo.device, 3, 10, usize::MAX, Some(ch)).unwrap();
    assert_eq!((page.len(), more), (2, false));
    assert_eq!(s.peek(bo.device, None).unwrap(), (5, 5));
    assert_eq!(s.queue_depth().unwrap(), 15);
}

fn enqueue_is_idempotent(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bo) = (user(s, "alice", 1), user(s, "bob", 2));
    let ch = group(s, &a, &[&bo]);
    let first = s.enqueue(op(&a, ch, 7, b"hello")).unwrap();
    let again = s.enqueue(op(&a, ch, 7, b"hello")).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.server_id, first.server_id);
    assert!(again.deliveries.is_empty());
    assert_eq!(fetch_all(s, bo.device).len(), 1);
}

fn acks_remove_and_free(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bo) = (user(s, "alice", 1), user(s, "bob", 2));
    let ch = group(s, &a, &[&bo]);
    for i in 0..6u8 {
        s.enqueue(op(&a, ch, i, b"x")).unwrap();
    }
    assert_eq!(s.ack(bo.device, 2, &[5]).unwrap(), 3);
    let left: Vec<u64> = fetch_all(s, bo.device).iter().map(|m| m.seq).collect();
    assert_eq!(left, vec![3, 4, 6]);
    assert_eq!(s.ack(bo.device, 2, &[5]).unwrap(), 0, "acks are idempotent");
    assert_eq!(s.ack(bo.device, 6, &[]).unwrap(), 3);
    assert_eq!(s.queue_depth().unwrap(), 0);
    // The next message continues the sequence.
    let out = s.enqueue(op(&a, ch, 9, b"y")).unwrap();
    assert_eq!(out.deliveries[0].message.seq, 7);
}

fn commits_are_ordered_by_epoch(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bo, c) = (user(s, "alice", 1), user(s, "bob", 2), user(s, "carol", 3));
    let ch = group(s, &a, &[&bo]);
    let mut commit = op(&a, ch, 1, b"commit");
    commit.commit_epoch = Some(0);
    commit.add_members = vec![c.identity];
    commit.welcome = Bytes::from_static(b"welcome");
    commit.group_info = Some(Bytes::from_static(b"gi"));
    let out = s.enqueue(commit).unwrap();
    assert_eq!(out.epoch, 1);
    assert_eq!(s.channel(&ch).unwrap().unwrap().epoch, 1);
    assert_eq!(s.group_info(&ch).unwrap().unwrap().0, 1);
    let cq = fetch_all(s, c.device);
    assert_eq!(cq.len(), 1);
    assert_eq!(cq[0].kind, 2, "the added device gets the Welcome");
    assert_eq!(&cq[0].payload[..], b"welcome");
    assert_eq!(&fetch_all(s, bo.device)[0].payload[..], b"commit");
    // A second commit from the old epoch loses.
    let mut stale = op(&bo, ch, 2, b"stale");
    stale.commit_epoch = Some(0);
    assert!(matches!(s.enqueue(stale), Err(StorageError::Conflict(_))));
    assert!(s.is_member(&ch, c.account).unwrap());
    // A Welcome to a device already in the group is refused.
    let mut w = op(&a, ch, 3, b"c2");
    w.commit_epoch = Some(1);
    w.welcome = Bytes::from_static(b"w");
    w.welcome_devices = vec![c.device_key];
    assert!(matches!(s.enqueue(w), Err(StorageError::Invalid(_))));
    // A non-admin cannot remove the admin; the admin removes bob.
    let mut rm = op(&c, ch, 4, b"rm");
    rm.commit_epoch = Some(1);
    rm.remove_members = vec![a.identity];
    assert!(matches!(s.enqueue(rm), Err(StorageError::Forbidden(_))));
    let mut rm = op(&a, ch, 5, b"rm");
    rm.commit_epoch = Some(1);
    rm.remove_members = vec![bo.identity];
    let out = s.enqueue(rm).unwrap();
    assert!(
        out.deliveries.iter().any(|d| d.device_id == bo.device),
        "the removed member learns of it"
    );
    assert!(!s.is_member(&ch, bo.account).unwrap());
    assert!(matches!(
        s.enqueue(op(&bo, ch, 6, b"late")),
        Err(StorageError::Forbidden(_))
    ));
}

/// Every message goes to the membership of its moment: after a removal, a new device, an
/// addition and an account deletion, each next message reaches exactly the devices then in
/// the group (SQLite's writer caches membership between messages: this is what it must
/// forget).
fn each_message_sees_the_membership_of_its_moment(b: &Backend) {
    use std::collections::BTreeSet;
    let s = b.store.as_ref();
    let (a, bo, c, d) = (
        user(s, "alice", 1),
        user(s, "bob", 2),
        user(s, "carol", 3),
        user(s, "dave", 4),
    );
    let ch = group(s, &a, &[&bo, &c]);
    let to = |id: u8| -> BTreeSet<DeviceId> {
        s.enqueue(op(&a, ch, id, b"m"))
            .unwrap()
            .deliveries
            .iter()
            .map(|x| x.device_id)
            .collect()
    };
    assert_eq!(to(1), BTreeSet::from([bo.device, c.device]));
    assert_eq!(to(2), BTreeSet::from([bo.device, c.device]));
    let mut rm = op(&a, ch, 3, b"rm");
    rm.commit_epoch = Some(0);
    rm.remove_members = vec![c.identity];
    s.enqueue(rm).unwrap();
    assert_eq!(to(4), BTreeSet::from([bo.device]), "carol was removed");
    let b2 = s.add_device(bo.account, &[77; 32], 5, 1).unwrap();
    assert_eq!(to(5), BTreeSet::from([bo.device, b2]), "bob's new device");
    let mut add = op(&a, ch, 6, b"add");
    add.commit_epoch = Some(1);
    add.add_members = vec![d.identity];
    add.welcome = Bytes::from_static(b"welcome");
    s.enqueue(add).unwrap();
    assert_eq!(
        to(7),
        BTreeSet::from([bo.device, b2, d.device]),
        "dave joined"
    );
    s.delete_account(bo.account, 0).unwrap();
    assert_eq!(to(8), BTreeSet::from([d.device]), "bob's account is gone");
}

fn limits_hold(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bo) = (user(s, "alice", 1), user(s, "bob", 2));
    let ch = group(s, &a, &[&bo]);
    for i in 0..3u8 {
        let mut o = op(&a, ch, i, b"x");
        o.max_queue_depth = 3;
        s.enqueue(o).unwrap();
    }
    let mut o = op(&a, ch, 9, b"x");
    o.max_queue_depth = 3;
    assert!(matches!(s.enqueue(o), Err(StorageError::QueueFull { .. })));
    // Refused whole: the same id is not a duplicate later.
    let o = op(&a, ch, 9, b"x");
    assert!(!s.enqueue(o).unwrap().duplicate);
    // Commits are exempt from the caps.
    let mut c = op(&a, ch, 10, b"c");
    c.commit_epoch = Some(0);
    c.max_queue_depth = 1;
    assert_eq!(s.enqueue(c).unwrap().deliveries.len(), 1);
    // Device cap.
    for i in 0..4u8 {
        s.add_device(a.account, &[200 + i; 32], 5, 1).unwrap();
    }
    assert!(matches!(
        s.add_device(a.account, &[250; 32], 5, 1),
        Err(StorageError::Limit(_))
    ));
    assert!(matches!(
        s.add_device(a.account, &bo.device_key, 9, 1),
        Err(StorageError::Conflict(_))
    ));
    assert!(matches!(
        s.create_account("alice", &[77; 32], &[78; 32], b"r", 1),
        Err(StorageError::Conflict(_))
    ));
}

/// In a fan-out to many devices (SQLite writes those in three statements), a full queue
/// skips only its device: the others get the message, and their sequence numbers go on.
fn a_full_queue_in_a_large_fan_out_skips_only_that_device(b: &Backend) {
    let s = b.store.as_ref();
    let a = user(s, "alice", 1);
    let others: Vec<User> = (0..4u8)
        .map(|i| user(s, &format!("u{i}"), 10 + i))
        .collect();
    let ch = group(s, &a, &others.iter().collect::<Vec<_>>());
    let send = |id: u8| {
        let mut o = op(&a, ch, id, b"x");
        o.max_queue_depth = 2;
        s.enqueue(o).unwrap()
    };
    for i in 0..2u8 {
        assert_eq!(send(i).deliveries.len(), 4);
    }
    // Only u0 reads its queue.
    assert_eq!(s.ack(others[0].device, 2, &[]).unwrap(), 2);
    let out = send(2);
    let to: Vec<DeviceId> = out.deliveries.iter().map(|d| d.device_id).collect();
    assert_eq!(to, vec![others[0].device]);
    assert_eq!(out.deliveries[0].message.seq, 3);
    let mut skipped = out.undelivered.clone();
    skipped.sort_unstable();
    let mut expect: Vec<Key32> = others[1..].iter().map(|u| u.device_key).collect();
    expect.sort_unstable();
    assert_eq!(skipped, expect);
    for u in &others[1..] {
        let seqs: Vec<u64> = fetch_all(s, u.device).iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2], "nothing past the cap, no gap");
    }
}

fn blobs_round_trip(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bo) = (user(s, "alice", 1), user(s, "bob", 2));
    let ch = group(s, &a, &[&bo]);
    let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let sha: Key32 = Sha256::digest(&data).into();
    let chunk = |off: usize, len: usize| BlobChunk {
        account_id: a.account,
        channel_id: ch,
        sha256: sha,
        total_size: data.len() as u64,
        offset: off as u64,
        data: Bytes::copy_from_slice(&data[off..off + len]),
        now_ms: 1,
        quota: 10_000,
    };
    assert_eq!(s.put_blob_chunk(chunk(0, 1000), 1 << 20).unwrap(), 1000);
    assert!(matches!(
        s.put_blob_chunk(chunk(2000, 1000), 1 << 20),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        s.read_blob(&ch, &sha, 0, 10),
        Err(StorageError::NotFound(_))
    ));
    assert_eq!(s.put_blob_chunk(chunk(1000, 2000), 1 << 20).unwrap(), 3000);
    assert_eq!(s.blob_sha256(&ch, &sha).unwrap(), sha);
    s.finish_blob(&ch, &sha, true).unwrap();
    let (got, total) = s.read_blob(&ch, &sha, 900, 1200).unwrap();
    assert_eq!(total, 3000);
    assert_eq!(got, data[900..2100].to_vec());
    // Quota counts declared sizes.
    let big = BlobChunk {
        sha256: [9; 32],
        total_size: 8000,
        offset: 0,
        data: Bytes::from_static(b"a"),
        ..chunk(0, 1)
    };
    assert!(matches!(
        s.put_blob_chunk(big, 1 << 20),
        Err(StorageError::Limit(_))
    ));
    let outsider = user(s, "eve", 5);
    let eve = BlobChunk {
        account_id: outsider.account,
        sha256: [8; 32],
        ..chunk(0, 10)
    };
    assert!(matches!(
        s.put_blob_chunk(eve, 1 << 20),
        Err(StorageError::Forbidden(_))
    ));
}

fn account_deletion_removes_everything(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bo) = (user(s, "alice", 1), user(s, "bob", 2));
    let ch = group(s, &a, &[&bo]);
    s.enqueue(op(&bo, ch, 1, b"from bob")).unwrap();
    s.enqueue(op(&a, ch, 2, b"to bob")).unwrap();
    s.create_session(&[7; 32], bo.device, 100, 5).unwrap();
    s.delete_account(bo.account, 50).unwrap();
    assert!(s.account_by_username("bob").unwrap().is_none());
    assert!(s.session(&[7; 32], 1).unwrap().is_none());
    assert!(
        fetch_all(s, a.device).is_empty(),
        "bob's queued messages went too"
    );
    assert_eq!(s.queue_depth().unwrap(), 0);
    assert!(!s.is_member(&ch, bo.account).unwrap());
    assert!(matches!(
        s.create_account("bob", &[80; 32], &[81; 32], b"r", 10),
        Err(StorageError::Conflict(_))
    ));
    s.create_account("bob", &[80; 32], &[81; 32], b"r", 60)
        .unwrap();
    // The last member leaving deletes the channel.
    s.delete_account(a.account, 0).unwrap();
    assert!(s.channel(&ch).unwrap().is_none());
}

fn key_packages_pop_oldest(b: &Backend) {
    let s = b.store.as_ref();
    let a = user(s, "alice", 1);
    let kp = |d: &'static [u8], h: u8| NewKeyPackage {
        data: Bytes::from_static(d),
        init_key_hash: [h; 32],
        last_resort: false,
    };
    assert_eq!(
        s.add_key_packages(a.device, 1, vec![kp(b"a", 1), kp(b"b", 2)], 3)
            .unwrap(),
        2
    );
    assert!(matches!(
        s.add_key_packages(a.device, 1, vec![kp(b"c", 3), kp(b"d", 4)], 3),
        Err(StorageError::Limit(_))
    ));
    assert!(matches!(
        s.add_key_packages(a.device, 1, vec![kp(b"c", 3), kp(b"d", 1)], 9),
        Err(StorageError::Invalid(_))
    ));
    s.set_last_resort_key_package(a.device, 1, kp(b"last", 9))
        .unwrap();
    assert_eq!(
        s.pop_key_package(&a.device_key, 1).unwrap(),
        Some(b"a".to_vec())
    );
    assert_eq!(
        s.pop_key_package(&a.device_key, 1).unwrap(),
        Some(b"b".to_vec())
    );
    assert_eq!(
        s.pop_key_package(&a.device_key, 1).unwrap(),
        None,
        "nothing of the refused upload"
    );
    assert_eq!(
        s.last_resort_key_package(&a.device_key, 1).unwrap(),
        Some(b"last".to_vec())
    );
    s.set_hybrid_key(a.device, b"hybrid").unwrap();
    assert_eq!(
        s.hybrid_keys(&[a.device_key, [0; 32]]).unwrap(),
        vec![(a.device_key, b"hybrid".to_vec())]
    );
}

fn blocks_skip_blockers(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bo, c) = (user(s, "alice", 1), user(s, "bob", 2), user(s, "carol", 3));
    let ch = group(s, &a, &[&bo, &c]);
    s.set_block(c.account, &a.identity, true, 1).unwrap();
    let out = s.enqueue(op(&a, ch, 1, b"hi")).unwrap();
    assert_eq!(out.deliveries.len(), 1);
    assert_eq!(out.undelivered, vec![c.device_key]);
    assert_eq!(s.blocked(c.account).unwrap().len(), 1);
    assert!(matches!(
        s.create_channel(ChannelKind::Dm, a.account, &[c.identity], b"", 1),
        Err(StorageError::Forbidden(_))
    ));
}

fn migrations_reopen(b: &Backend) {
    let s = b.store.as_ref();
    let a = user(s, "alice", 1);
    assert_eq!(s.server_secret("k", b"v1".to_vec()).unwrap(), b"v1");
    assert_eq!(s.server_secret("k", b"v2".to_vec()).unwrap(), b"v1");
    match &b.url {
        Some(url) => {
            // A second node on the same database migrates nothing and sees the same rows.
            let other = PostgresStorage::open(url).unwrap();
            assert_eq!(
                qpq_server::storage::postgres::stored_schema_version(url).unwrap(),
                qpq_server::storage::postgres::SCHEMA_VERSION as u64
            );
            assert_eq!(
                other.account_by_username("alice").unwrap().unwrap().id,
                a.account
            );
        }
        None => {
            assert!(s.username_taken("alice").unwrap());
        }
    }
}

/// 64 writers at once to one device: its queue's sequence numbers have no gaps and follow
/// commit order (each writer's own messages stay in its order).
fn concurrent_writers_leave_no_gaps(b: &Backend) {
    let s = b.store.clone();
    let target = user(s.as_ref(), "target", 1);
    let mut writers = Vec::new();
    for w in 0..64u8 {
        let u = user(s.as_ref(), &format!("w{w}"), w + 2);
        let ch = group(s.as_ref(), &u, &[&target]);
        writers.push((u, ch));
    }
    let per = 5u8;
    std::thread::scope(|scope| {
        for (u, ch) in &writers {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..per {
                    s.enqueue(op(u, *ch, i, &[i])).unwrap();
                }
            });
        }
    });
    let got = fetch_all(s.as_ref(), target.device);
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    let want: Vec<u64> = (1..=64 * u64::from(per)).collect();
    assert_eq!(seqs, want, "no gaps, no duplicates");
    for (u, _) in &writers {
        let mine: Vec<u8> = got
            .iter()
            .filter(|m| m.sender_device == u.device_key)
            .map(|m| m.payload[0])
            .collect();
        assert_eq!(
            mine,
            (0..per).collect::<Vec<_>>(),
            "each writer's order kept"
        );
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $( #[test] fn $name() { super::$name(&super::sqlite()) } )*
        }
        mod postgres_backend {
            $( #[test] fn $name() { super::$name(&super::postgres()) } )*
        }
    };
}

both!(
    delivery_fans_out_in_order,
    each_message_sees_the_membership_of_its_moment,
    a_full_queue_in_a_large_fan_out_skips_only_that_device,
    enqueue_is_idempotent,
    acks_remove_and_free,
    commits_are_ordered_by_epoch,
    limits_hold,
    blobs_round_trip,
    account_deletion_removes_everything,
    key_packages_pop_oldest,
    blocks_skip_blockers,
    migrations_reopen,
    concurrent_writers_leave_no_gaps,
);

/// No storage method NOTIFYs: the doorbell rings after the commit on its own connection
/// (a NOTIFY inside the enqueue transaction would serialize commits instance-wide). A
/// listener on the doorbell channel hears nothing from enqueues, commits or acks.
/// Notifications heard within `ms` (after the first one, only what is already buffered).
fn drain(l: &mut ::postgres::Client, ms: u64) -> Vec<String> {
    use ::postgres::fallible_iterator::FallibleIterator;
    let mut n = l.notifications();
    let mut out: Vec<String> = Vec::new();
    let mut it = n.timeout_iter(std::time::Duration::from_millis(ms));
    while let Some(m) = it.next().unwrap() {
        out.push(m.payload().to_string());
    }
    out
}

#[test]
fn postgres_enqueue_never_notifies_inside_its_transaction() {
    let b = postgres();
    let mut l = ::postgres::Client::connect(b.url.as_ref().unwrap(), ::postgres::NoTls).unwrap();
    l.batch_execute(&format!("LISTEN {}", qpq_server::wake::CHANNEL))
        .unwrap();
    // The listener hears a NOTIFY sent on the channel (the test can fail).
    let mut other =
        ::postgres::Client::connect(b.url.as_ref().unwrap(), ::postgres::NoTls).unwrap();
    other
        .batch_execute(&format!("NOTIFY {}, 'probe'", qpq_server::wake::CHANNEL))
        .unwrap();
    let heard = drain(&mut l, 2000);
    assert_eq!(heard, vec!["probe".to_string()]);
    let s = b.store.as_ref();
    let (a, bo) = (user(s, "alice", 1), user(s, "bob", 2));
    let ch = group(s, &a, &[&bo]);
    s.enqueue(op(&a, ch, 1, b"x")).unwrap();
    let mut c = op(&a, ch, 2, b"c");
    c.commit_epoch = Some(0);
    s.enqueue(c).unwrap();
    s.ack(bo.device, 1, &[]).unwrap();
    let heard = drain(&mut l, 300).len();
    assert_eq!(heard, 0, "a storage call sent NOTIFY");
}
