//! The session engine: account keys, conversations, the MLS decisions (when to commit, how to
//! retry after a lost race), processing of incoming queue messages, the outbox.
//!
//! Two locks, so that reads never wait on the network (ADR 0010):
//! - [`Engine`] (store, keys) sits behind a `std::sync::Mutex`, taken only for local work: a
//!   read, an MLS step, a transaction. It is never held across an `.await` (its guard is not
//!   `Send`, so the compiler refuses that in the spawned receive loop and in `Client::run`).
//! - [`Session::ops`] is an async mutex that operations changing group state over the network
//!   (commits, sync, login) hold for their whole run, so group state still changes one
//!   operation at a time. Reads (`conversations`, `messages`, `account`) never take it.
//!
//! Each operation decides under the engine lock, does its I/O without it, and applies the
//! result under it again (as `build_commit` → Enqueue → merge always did).
//!
//! [`Session`] and [`Engine`] methods are split by concern (as openmls splits `MlsGroup`):
//! - [`account`]: OPAQUE registration and login, the session token, KeyPackage top-up;
//! - [`directory`]: usernames and keys of users and devices, safety numbers;
//! - [`queries`]: read-only views (conversations, history, members);
//! - [`groups`]: creating groups and DMs, invite, remove, leave, key rotation;
//! - [`consent`]: consent states of conversations, and blocks;
//! - [`commit`]: the pending-commit protocol (stored before sending, merged after the Ok);
//! - [`outbox`]: sending application messages, idempotently by message id;
//! - [`receive`]: fetch, per-message transactions, Ack;
//! - [`rejoin`]: broken conversations, rejoined by external commit;
//! - [`welcome`]: the pure byte format of our Welcome wrapper;
//! - [`hooks`]: test hooks (crash points, injection, state hashes).

mod account;
mod commit;
mod consent;
mod directory;
mod groups;
#[cfg(feature = "test-hooks")]
mod hooks;
mod outbox;
mod queries;
mod receive;
mod rejoin;
mod welcome;

#[cfg(feature = "test-hooks")]
pub use hooks::{DebugCounters, DebugInjected};

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openmls_rust_crypto::RustCrypto;
use qpq_crypto::envelope::HybridSecretKey;
use qpq_crypto::identity::IdentityKey;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorCode, MlsError};
use crate::mls::Provider;
use crate::net::Net;
use crate::roles;
use crate::store::Store;
use crate::types::{Account, ConversationId, Event};

/// KeyPackages kept on the server per suite.
const KEY_PACKAGE_TARGET: u64 = 20;
/// Replenish below this.
const KEY_PACKAGE_LOW: u64 = 10;
/// Attempts of a commit that keeps losing the epoch race.
const COMMIT_ATTEMPTS: usize = 5;
/// Label of the account identity derivation from the OPAQUE export key.
const IDENTITY_LABEL: &[u8] = b"qpq account identity v1";

const META_DEVICE: &str = "device_seed";
const META_HYBRID: &str = "hybrid_sk";
const META_USERNAME: &str = "username";
const META_IDENTITY: &str = "identity_seed";
const META_TOKEN: &str = "session_token";
const META_LAST_SEQ: &str = "last_seq";
const META_PENDING_COMMIT: &str = "pending_commit:";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn id16<T: From<[u8; 16]>>(b: &[u8], what: &str) -> Result<T, Error> {
    <[u8; 16]>::try_from(b)
        .map(T::from)
        .map_err(|_| Error::internal(format!("server sent a {what} that is not 16 bytes")))
}

fn key32(b: &[u8], what: &str) -> Result<[u8; 32], Error> {
    b.try_into()
        .map_err(|_| Error::internal(format!("server sent a {what} that is not 32 bytes")))
}

fn mls_err(e: impl std::fmt::Display) -> Error {
    MlsError::Openmls(e.to_string()).into()
}

/// Loaded account secrets.
struct Keys {
    device: IdentityKey,
    hybrid: HybridSecretKey,
    identity: Option<IdentityKey>,
    username: Option<String>,
    token: Option<Zeroizing<Vec<u8>>>,
}

/// The engine: store, crypto provider and account keys. Only local work: no method of it
/// touches the network.
pub(crate) struct Engine {
    store: Store,
    crypto: RustCrypto,
    keys: Keys,
    /// Last time KeyPackages were counted.
    kp_checked: Option<std::time::Instant>,
    /// Outbox entries the server accepted whose bookkeeping waits for the next transaction
    /// (see `outbox::sent_outgoing`).
    sent_unsettled: std::cell::RefCell<Vec<(ConversationId, crate::types::MessageId)>>,
    /// Test hook: where to simulate a crash (see [`Failpoint`]).
    #[cfg(feature = "test-hooks")]
    failpoint: Option<Failpoint>,
}

/// The engine behind its lock, the operation lock and the connection.
pub(crate) struct Session {
    engine: std::sync::Mutex<Engine>,
    /// Held by every operation that changes group state across network round trips.
    ops: tokio::sync::Mutex<()>,
    net: Net,
    /// Highest sequence number this session acked to the server.
    acked: std::sync::atomic::AtomicU64,
}

/// Receives events as soon as they are durable.
pub(crate) type EventSink = std::sync::Arc<dyn Fn(Vec<Event>) + Send + Sync>;

/// Points where a test can make the engine stop as if the process died there: nothing after
/// the point is done, in memory or on disk.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// The pending commit is stored, nothing was sent.
    CommitBuilt,
    /// The server accepted the commit; the group has not merged it.
    CommitSent,
}

fn crashed(at: Failpoint) -> Error {
    Error::internal(format!("failpoint {at:?}: simulated crash"))
}

impl Session {
    /// A session over an opened engine and a (not yet connected) network client.
    pub(crate) fn new(engine: Engine, net: Net) -> Session {
        Session {
            engine: std::sync::Mutex::new(engine),
            ops: tokio::sync::Mutex::new(()),
            net,
            acked: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The connection.
    pub(crate) fn net(&self) -> &Net {
        &self.net
    }

    /// The engine, locked for local work. Never hold the guard across an `.await`.
    pub(crate) fn engine(&self) -> Result<std::sync::MutexGuard<'_, Engine>, Error> {
        self.engine
            .lock()
            .map_err(|_| Error::internal("the engine lock is poisoned (a panic happened)"))
    }

    /// Waits for the operation lock (see the module documentation).
    pub(crate) async fn ops(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ops.lock().await
    }

    /// An authenticated call, made without the engine lock.
    async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        m: u16,
        req: &Req,
    ) -> Result<Resp, Error> {
        let token = self.engine()?.token().ok_or_else(Error::not_logged_in)?;
        Ok(self
            .net
            .call(m, req, Some(&token[..]), Duration::ZERO, true)
            .await?)
    }
}

impl Engine {
    /// Test hook: arms (or disarms) a simulated crash point.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn set_failpoint(&mut self, at: Option<Failpoint>) {
        self.failpoint = at;
    }

    /// Whether a test armed the simulated crash at `at` (never, without `test-hooks`).
    fn failpoint_at(&self, at: Failpoint) -> bool {
        #[cfg(feature = "test-hooks")]
        {
            self.failpoint == Some(at)
        }
        #[cfg(not(feature = "test-hooks"))]
        {
            let _ = at;
            false
        }
    }

    pub(crate) fn new(store: Store) -> Result<Engine, Error> {
        let device = match store.get_meta(META_DEVICE)? {
            Some(b) => IdentityKey::from_bytes(&Zeroizing::new(key32(&b, "device seed")?)),
            None => {
                let k = IdentityKey::generate(&mut OsRng);
                store.set_meta(META_DEVICE, &k.to_bytes()[..])?;
                k
            }
        };
        let hybrid = match store.get_meta(META_HYBRID)? {
            Some(b) => HybridSecretKey::from_bytes(&Zeroizing::new(b))?,
            None => {
                let k = HybridSecretKey::generate(&mut OsRng);
                store.set_meta(META_HYBRID, &k.to_bytes())?;
                k
            }
        };
        let identity = match store.get_meta(META_IDENTITY)? {
            Some(b) => Some(IdentityKey::from_bytes(&Zeroizing::new(key32(
                &b,
                "identity seed",
            )?))),
            None => None,
        };
        let username = match store.get_meta(META_USERNAME)? {
            Some(b) => Some(
                String::from_utf8(b)
                    .map_err(|_| Error::new(ErrorCode::Storage, "stored username is not UTF-8"))?,
            ),
            None => None,
        };
        let token = store.get_meta(META_TOKEN)?.map(Zeroizing::new);
        Ok(Engine {
            store,
            crypto: RustCrypto::default(),
            keys: Keys {
                device,
                hybrid,
                identity,
                username,
                token,
            },
            kp_checked: None,
            sent_unsettled: Default::default(),
            #[cfg(feature = "test-hooks")]
            failpoint: None,
        })
    }

    fn provider(&self) -> Provider<'_> {
        Provider::new(&self.crypto, &self.store)
    }

    pub(crate) fn account(&self) -> Option<Account> {
        Some(Account {
            username: self.keys.username.clone()?,
            identity_key: self.keys.identity.as_ref()?.public_key().into(),
            device_key: self.keys.device.public_key().into(),
        })
    }

    /// Highest queue sequence number processed.
    pub(crate) fn last_seq(&self) -> u64 {
        self.store.get_u64(META_LAST_SEQ).unwrap_or(0)
    }

    /// A copy of the session token.
    pub(crate) fn token(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.keys.token.clone()
    }

    pub(crate) fn logged_in(&self) -> bool {
        self.keys.token.is_some()
    }

    fn my_identity(&self) -> Result<[u8; 32], Error> {
        self.keys
            .identity
            .as_ref()
            .map(|k| k.public_key())
            .ok_or_else(Error::not_logged_in)
    }

    fn my_username(&self) -> Result<String, Error> {
        self.keys.username.clone().ok_or_else(Error::not_logged_in)
    }

    fn my_device(&self) -> [u8; 32] {
        self.keys.device.public_key()
    }
}

/// Who did a commit's membership changes, as the events name them.
pub(super) struct Actors {
    /// The committer's username (`None` when this device does not know it).
    pub(super) by: Option<String>,
    /// Usernames whose removal was their own proposal: they left.
    pub(super) left: BTreeSet<String>,
    /// For this device's own removal: the proposer's username, and whether it was this
    /// account's own proposal (a leave from another of its devices).
    pub(super) me_removed_by: Option<(Option<String>, bool)>,
}

impl Engine {
    /// The actors of `sc` in `group`: `committer` is the committing device (`None` when
    /// unknown). A removal is a leave when its proposer is the removed account (or device).
    pub(super) fn actors(
        &self,
        committer: Option<[u8; 32]>,
        seen: &[roles::RemoveSeen],
    ) -> Result<Actors, Error> {
        let by = match committer {
            Some(d) => self.known_username(&d)?,
            None => None,
        };
        let mine = self.my_device();
        let mut left = BTreeSet::new();
        let mut me_removed_by = None;
        for r in seen {
            let own = r.proposer_device == r.removed_device
                || (r.proposer.is_some() && r.proposer == r.removed);
            if own {
                left.insert(self.username_of(&r.removed_device)?);
            }
            if r.removed_device == mine {
                me_removed_by = Some((self.known_username(&r.proposer_device)?, own));
            }
        }
        Ok(Actors {
            by,
            left,
            me_removed_by,
        })
    }
}

/// Pushes a `MembersChanged` for the difference between `before` and `after` (usernames),
/// unless nothing changed.
fn push_members_changed(
    events: &mut Vec<Event>,
    conv: &ConversationId,
    actors: &Actors,
    before: &[String],
    after: &[String],
    epoch: u64,
) {
    let added: Vec<String> = after
        .iter()
        .filter(|a| !before.contains(a))
        .cloned()
        .collect();
    let (left, removed): (Vec<String>, Vec<String>) = before
        .iter()
        .filter(|b| !after.contains(b))
        .cloned()
        .partition(|name| actors.left.contains(name));
    if !added.is_empty() || !removed.is_empty() || !left.is_empty() {
        events.push(Event::MembersChanged {
            conversation: *conv,
            by: actors.by.clone(),
            added,
            removed,
            left,
            epoch,
        });
    }
}
