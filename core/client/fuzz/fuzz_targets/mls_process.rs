//! P-3: MLS input through qpq-core's own receive path (`process_one`, the code every fetched
//! message goes through) against a real member's state: the committed fixture store
//! (`fixture/`, made by `core/client/tests/fuzz_fixture.rs`) with a classic and a
//! post-quantum group, copied once per process to a temp dir and opened offline.
//!
//! Input: byte 0 bit 0 picks the conversation (0 classic, 1 post-quantum); the rest is the
//! MLS message. Each input is processed then rolled back, so runs are independent.
//!
//! Checks: nothing panics, and the hash of the whole stored state (every table, MLS state
//! included) is the same after every input as before the first.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qpq_core::{Client, ClientConfig, ConversationId, StoreKey, Trust};

/// The fixture store's raw key (see `core/client/tests/fuzz_fixture.rs`).
const KEY: [u8; 32] = [0x51; 32];

struct Fixture {
    client: Client,
    conversations: [ConversationId; 2],
    baseline: [u8; 32],
    _dir: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixture");
        let base = std::env::var_os("QPQ_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("qpq-core-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::copy(src.join("qpq-client.db"), dir.join("qpq-client.db"))
            .expect("copy the fixture store");
        let ids: Vec<ConversationId> = std::fs::read_to_string(src.join("conversations.txt"))
            .expect("fixture conversations")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.trim().parse().expect("fixture ids are hex"))
            .collect();
        let conversations: [ConversationId; 2] = ids.try_into().expect("two conversations");
        // Offline: nothing listens on port 9, and the fixture is logged out, so the client
        // never syncs.
        let client = Client::open(ClientConfig::new(
            &dir,
            StoreKey::Raw(KEY),
            "127.0.0.1:9",
            Trust::PinnedCertDer(Vec::new()),
        ))
        .expect("open the fixture store");
        let baseline = client.debug_state_hash().expect("hash the fixture");
        Fixture {
            client,
            conversations,
            baseline,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mls)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let conv = f.conversations[usize::from(sel & 1)];
    let _ = f.client.debug_process(&conv, mls);
    let after = f.client.debug_state_hash().expect("hash after input");
    assert_eq!(after, f.baseline, "an input changed the stored state");
});
