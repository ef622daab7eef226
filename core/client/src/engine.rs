//! The session engine: account keys, conversations, the MLS decisions (when to commit, how to
//! retry after a lost race), processing of incoming queue messages, the outbox. Runs inside
//! the runtime; the caller holds the engine lock for the whole of each operation, so group
//! state changes one operation at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hkdf::Hkdf;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;
use prost::Message as _;
use qpq_crypto::envelope::{self, HybridPublicKey, HybridSecretKey};
use qpq_crypto::identity::IdentityKey;
use qpq_crypto::opaque::OpaqueSuite;
use qpq_crypto::opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use qpq_proto::{method, v1, Status};
use rand::rngs::OsRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{AuthError, Error, ErrorCode, MlsError, StoreError};
use crate::mls::{self, Provider};
use crate::net::Net;
use crate::store::{ConversationRow, OutboxRow, Store};
use crate::types::{
    Account, Conversation, ConversationId, ConversationKind, Event, Member, Message, MessageId,
};

/// KeyPackages kept on the server per suite.
const KEY_PACKAGE_TARGET: u64 = 20;
/// Replenish below this.
const KEY_PACKAGE_LOW: u64 = 10;
/// Attempts of a commit that keeps losing the epoch race.
const COMMIT_ATTEMPTS: usize = 5;
/// Label of the account identity derivation from the OPAQUE export key.
const IDENTITY_LABEL: &[u8] = b"qpq account identity v1";
/// Version byte of our Welcome wrapper (inside the hybrid envelope).
const WELCOME_WRAPPER_V1: u8 = 1;

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

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn id16(b: &[u8], what: &str) -> Result<[u8; 16], Error> {
    b.try_into()
        .map_err(|_| Error::internal(format!("server sent a {what} that is not 16 bytes")))
}

fn key32(b: &[u8], what: &str) -> Result<[u8; 32], Error> {
    b.try_into()
        .map_err(|_| Error::internal(format!("server sent a {what} that is not 32 bytes")))
}

fn mls_err(e: impl std::fmt::Display) -> Error {
    MlsError::Openmls(e.to_string()).into()
}

/// The change a commit makes.
enum Change {
    /// Add these devices (KeyPackages and hybrid keys fetched), and these accounts on the server.
    Add {
        key_packages: Vec<([u8; 32], KeyPackage, HybridPublicKey)>,
        add_members: Vec<[u8; 32]>,
        kind: ConversationKind,
        name: String,
    },
    /// Remove every leaf of these devices; the accounts leave the channel.
    Remove {
        devices: BTreeSet<[u8; 32]>,
        remove_members: Vec<[u8; 32]>,
    },
    /// Fresh key material for our leaf.
    Update,
    /// Commit the proposals received (a member's leave).
    Pending,
}

/// Loaded account secrets.
struct Keys {
    device: IdentityKey,
    hybrid: HybridSecretKey,
    identity: Option<IdentityKey>,
    username: Option<String>,
    token: Option<Zeroizing<Vec<u8>>>,
}

/// The engine: store, crypto provider and account keys.
pub(crate) struct Engine {
    store: Store,
    crypto: RustCrypto,
    keys: Keys,
    /// Last time KeyPackages were counted.
    kp_checked: Option<std::time::Instant>,
    /// Test hook: where to simulate a crash (see [`Failpoint`]).
    failpoint: Option<Failpoint>,
    /// When set, received-message events go here as soon as each message is committed
    /// locally (before the Ack round trip), instead of waiting for the end of the sync.
    sink: Option<EventSink>,
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

impl Engine {
    /// Sets where events go as soon as they are durable (the background loop's dispatcher).
    pub(crate) fn set_sink(&mut self, sink: Option<EventSink>) {
        self.sink = sink;
    }

    /// Test hook: arms (or disarms) a simulated crash point.
    pub(crate) fn set_failpoint(&mut self, at: Option<Failpoint>) {
        self.failpoint = at;
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
            failpoint: None,
            sink: None,
        })
    }

    fn provider(&self) -> Provider<'_> {
        Provider::new(&self.crypto, &self.store)
    }

    pub(crate) fn account(&self) -> Option<Account> {
        Some(Account {
            username: self.keys.username.clone()?,
            identity_key: self.keys.identity.as_ref()?.public_key(),
            device_key: self.keys.device.public_key(),
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

    /// An authenticated call.
    async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        net: &Net,
        m: u16,
        req: &Req,
    ) -> Result<Resp, Error> {
        let token = self.keys.token.as_ref().ok_or_else(Error::not_logged_in)?;
        Ok(net
            .call(m, req, Some(&token[..]), Duration::ZERO, true)
            .await?)
    }

    // ---------------------------------------------------------------- auth

    pub(crate) async fn register(
        &mut self,
        net: &Net,
        username: &str,
        password: &str,
    ) -> Result<Account, Error> {
        check_username(username)?;
        self.check_store_owner(username)?;
        let start = ClientRegistration::<OpaqueSuite>::start(&mut OsRng, password.as_bytes())
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let r: v1::OpaqueRegisterStartResponse = net
            .call(
                method::OPAQUE_REGISTER_START,
                &v1::OpaqueRegisterStartRequest {
                    username: username.into(),
                    registration_request: Bytes::from(start.message.serialize().to_vec()),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await
            .map_err(|e| match e.status() {
                Some(Status::Conflict) => Error::new(
                    ErrorCode::Conflict,
                    format!("the username {username} is taken"),
                ),
                _ => e.into(),
            })?;
        let resp = RegistrationResponse::<OpaqueSuite>::deserialize(&r.registration_response)
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let fin = start
            .state
            .finish(
                &mut OsRng,
                password.as_bytes(),
                resp,
                ClientRegistrationFinishParameters::default(),
            )
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let identity = identity_from_export_key(&fin.export_key);
        let _: v1::OpaqueRegisterFinishResponse = net
            .call(
                method::OPAQUE_REGISTER_FINISH,
                &v1::OpaqueRegisterFinishRequest {
                    username: username.into(),
                    registration_upload: Bytes::from(fin.message.serialize().to_vec()),
                    identity_key: Bytes::copy_from_slice(&identity.public_key()),
                    device_key: Bytes::copy_from_slice(&self.my_device()),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await?;
        self.login(net, username, password).await
    }

    fn check_store_owner(&self, username: &str) -> Result<(), Error> {
        if let Some(u) = &self.keys.username {
            if !u.eq_ignore_ascii_case(username) {
                return Err(Error::invalid(format!(
                    "this store belongs to {u}; use another data_dir for another account"
                )));
            }
        }
        Ok(())
    }

    pub(crate) async fn login(
        &mut self,
        net: &Net,
        username: &str,
        password: &str,
    ) -> Result<Account, Error> {
        check_username(username)?;
        self.check_store_owner(username)?;
        let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, password.as_bytes())
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let r: v1::OpaqueLoginStartResponse = net
            .call(
                method::OPAQUE_LOGIN_START,
                &v1::OpaqueLoginStartRequest {
                    username: username.into(),
                    ke1: Bytes::from(start.message.serialize().to_vec()),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await?;
        let ke2 = CredentialResponse::<OpaqueSuite>::deserialize(&r.ke2)
            .map_err(|_| AuthError::BadCredentials)?;
        let fin = start
            .state
            .finish(
                &mut OsRng,
                password.as_bytes(),
                ke2,
                ClientLoginFinishParameters::default(),
            )
            .map_err(|_| AuthError::BadCredentials)?;
        let identity = identity_from_export_key(&fin.export_key);
        if let Some(old) = &self.keys.identity {
            if old.public_key() != identity.public_key() {
                return Err(Error::crypto(
                    "the account identity differs from the one in this store",
                ));
            }
        }
        let resp: v1::OpaqueLoginFinishResponse = net
            .call(
                method::OPAQUE_LOGIN_FINISH,
                &v1::OpaqueLoginFinishRequest {
                    login_id: r.login_id,
                    ke3: Bytes::from(fin.message.serialize().to_vec()),
                    device_key: Bytes::copy_from_slice(&self.my_device()),
                },
                None,
                Duration::ZERO,
                false,
            )
            .await
            .map_err(|e| match e.status() {
                Some(Status::Unauthorized) => AuthError::BadCredentials.into(),
                _ => Error::from(e),
            })?;
        let token = Zeroizing::new(resp.session_token.to_vec());
        self.store.set_meta(META_USERNAME, username.as_bytes())?;
        self.store
            .set_meta(META_IDENTITY, &identity.to_bytes()[..])?;
        self.store.set_meta(META_TOKEN, &token)?;
        self.store
            .put_device(&self.my_device(), &identity.public_key(), username)?;
        self.keys.username = Some(username.to_string());
        self.keys.identity = Some(identity);
        self.keys.token = Some(token);
        let _: v1::UploadHybridKeyResponse = self
            .call(
                net,
                method::UPLOAD_HYBRID_KEY,
                &v1::UploadHybridKeyRequest {
                    hybrid_public_key: Bytes::from(self.keys.hybrid.public_key().to_bytes()),
                },
            )
            .await?;
        self.replenish_key_packages(net, true).await?;
        self.account()
            .ok_or_else(|| Error::internal("account missing after login"))
    }

    pub(crate) async fn logout(&mut self, net: &Net) -> Result<(), Error> {
        if self.keys.token.is_some() {
            let r: Result<v1::LogoutResponse, Error> =
                self.call(net, method::LOGOUT, &v1::LogoutRequest {}).await;
            if let Err(e) = r {
                if e.code() != ErrorCode::Unauthorized {
                    tracing::debug!("logout call failed: {e}");
                }
            }
        }
        self.keys.token = None;
        self.store.delete_meta(META_TOKEN)?;
        Ok(())
    }

    /// Keeps ~20 KeyPackages per suite on the server.
    pub(crate) async fn replenish_key_packages(
        &mut self,
        net: &Net,
        force: bool,
    ) -> Result<(), Error> {
        if !force {
            if let Some(t) = self.kp_checked {
                if t.elapsed() < Duration::from_secs(30) {
                    return Ok(());
                }
            }
        }
        self.kp_checked = Some(std::time::Instant::now());
        for cs in mls::SUITES {
            let suite = u32::from(u16::from(cs));
            let count: v1::UploadKeyPackageResponse = self
                .call(
                    net,
                    method::UPLOAD_KEY_PACKAGE,
                    &v1::UploadKeyPackageRequest {
                        key_packages: vec![],
                        ciphersuite: suite,
                    },
                )
                .await?;
            if count.stored >= KEY_PACKAGE_LOW {
                continue;
            }
            let n = (KEY_PACKAGE_TARGET - count.stored) as usize;
            let kps = mls::key_packages(&self.provider(), &self.keys.device, cs, n)?;
            let _: v1::UploadKeyPackageResponse = self
                .call(
                    net,
                    method::UPLOAD_KEY_PACKAGE,
                    &v1::UploadKeyPackageRequest {
                        key_packages: kps.into_iter().map(Bytes::from).collect(),
                        ciphersuite: suite,
                    },
                )
                .await?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- directory

    pub(crate) async fn resolve_user(
        &mut self,
        net: &Net,
        username: &str,
    ) -> Result<Member, Error> {
        let r: v1::ResolveUserResponse = self
            .call(
                net,
                method::RESOLVE_USER,
                &v1::ResolveUserRequest {
                    username: username.into(),
                },
            )
            .await
            .map_err(|e| {
                if e.code() == ErrorCode::NotFound {
                    Error::not_found(format!("no user named {username}"))
                } else {
                    e
                }
            })?;
        let identity = key32(&r.identity_key, "identity key")?;
        let mut devices = Vec::new();
        for d in &r.device_keys {
            let d = key32(d, "device key")?;
            self.store.put_device(&d, &identity, username)?;
            devices.push(d);
        }
        Ok(Member {
            username: username.to_string(),
            identity_key: identity,
            devices,
        })
    }

    /// Learns usernames of every device of a channel's members.
    async fn refresh_directory(&mut self, net: &Net, conv: &ConversationId) -> Result<(), Error> {
        let r: v1::ListGroupMembersResponse = self
            .call(
                net,
                method::LIST_GROUP_MEMBERS,
                &v1::ListGroupMembersRequest {
                    channel_id: Bytes::copy_from_slice(conv),
                },
            )
            .await?;
        for m in r.members {
            let id = key32(&m.identity_key, "identity key")?;
            for d in &m.device_keys {
                self.store
                    .put_device(&key32(d, "device key")?, &id, &m.username)?;
            }
        }
        Ok(())
    }

    fn username_of(&self, device: &[u8; 32]) -> Result<String, Error> {
        Ok(match self.store.device(device)? {
            Some((_, name)) => name,
            None => format!("device-{}", hexs(&device[..4])),
        })
    }

    fn identity_of(&self, device: &[u8; 32]) -> Result<Option<[u8; 32]>, Error> {
        Ok(self.store.device(device)?.map(|(id, _)| id))
    }

    /// Usernames of the members of a group (sorted, unique).
    fn member_names(&self, group: &MlsGroup) -> Result<Vec<String>, Error> {
        let mut names = BTreeSet::new();
        for (_, d) in mls::member_devices(group) {
            names.insert(self.username_of(&d)?);
        }
        Ok(names.into_iter().collect())
    }

    pub(crate) fn safety_number(&self, other: &Member) -> Result<String, Error> {
        Ok(qpq_crypto::safety::safety_number(
            &self.my_identity()?,
            &self.my_username()?,
            &other.identity_key,
            &other.username,
        ))
    }

    // ---------------------------------------------------------------- conversations

    pub(crate) fn conversation(&self, conv: &ConversationId) -> Result<Conversation, Error> {
        let row = self
            .store
            .conversation(conv)?
            .ok_or_else(|| Error::not_found("no such conversation"))?;
        self.to_conversation(row)
    }

    pub(crate) fn conversations(&self) -> Result<Vec<Conversation>, Error> {
        self.store
            .conversations()?
            .into_iter()
            .map(|r| self.to_conversation(r))
            .collect()
    }

    fn to_conversation(&self, row: ConversationRow) -> Result<Conversation, Error> {
        let group = if row.active {
            mls::load(&self.provider(), &row.id)?
        } else {
            None
        };
        let (epoch, members, cs) = match &group {
            Some(g) => (g.epoch().as_u64(), self.member_names(g)?, g.ciphersuite()),
            None => (
                0,
                vec![],
                if row.post_quantum {
                    mls::PQ
                } else {
                    mls::CLASSIC
                },
            ),
        };
        let mut name = row.name.clone();
        if row.kind == ConversationKind::Dm {
            if let Ok(me) = self.my_username() {
                if let Some(peer) = members.iter().find(|m| **m != me) {
                    name = peer.clone();
                }
            }
        }
        Ok(Conversation {
            id: row.id,
            kind: row.kind,
            name,
            post_quantum: row.post_quantum,
            ciphersuite: mls::suite_name(cs),
            epoch,
            members,
            active: row.active && group.is_some(),
            unread: row.unread,
        })
    }

    pub(crate) fn messages(
        &self,
        conv: &ConversationId,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<Message>, Error> {
        if self.store.conversation(conv)?.is_none() {
            return Err(Error::not_found("no such conversation"));
        }
        let out = self.store.messages(conv, limit, before)?;
        if before.is_none() {
            self.store.clear_unread(conv)?;
        }
        Ok(out)
    }

    pub(crate) async fn members(
        &mut self,
        net: &Net,
        conv: &ConversationId,
    ) -> Result<Vec<Member>, Error> {
        let group = mls::load(&self.provider(), conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        let devices = mls::member_devices(&group);
        if devices
            .iter()
            .any(|(_, d)| matches!(self.store.device(d), Ok(None)))
        {
            let _ = self.refresh_directory(net, conv).await;
        }
        let mut by_id: BTreeMap<String, Member> = BTreeMap::new();
        for (_, d) in devices {
            let (identity, name) = match self.store.device(&d)? {
                Some(x) => x,
                None => ([0; 32], format!("device-{}", hexs(&d[..4]))),
            };
            by_id
                .entry(name.clone())
                .or_insert_with(|| Member {
                    username: name,
                    identity_key: identity,
                    devices: vec![],
                })
                .devices
                .push(d);
        }
        Ok(by_id.into_values().collect())
    }

    pub(crate) async fn create_group(
        &mut self,
        net: &Net,
        name: &str,
        pq: bool,
        events: &mut Vec<Event>,
    ) -> Result<ConversationId, Error> {
        let r: v1::CreateChannelResponse = self
            .call(
                net,
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest {
                    kind: v1::ChannelKind::Group as i32,
                    members: vec![],
                    metadata: Bytes::new(),
                },
            )
            .await?;
        let id = id16(&r.channel_id, "channel id")?;
        self.new_group(&id, ConversationKind::Group, name, pq)?;
        self.add_own_devices(net, &id, events).await?;
        Ok(id)
    }

    fn new_group(
        &mut self,
        id: &ConversationId,
        kind: ConversationKind,
        name: &str,
        pq: bool,
    ) -> Result<(), Error> {
        let cs = if pq { mls::PQ } else { mls::CLASSIC };
        let provider = self.provider();
        self.store.begin()?;
        let r = (|| -> Result<(), Error> {
            MlsGroup::new_with_group_id(
                &provider,
                &mls::signer(&self.keys.device),
                &mls::create_config(cs),
                GroupId::from_slice(id),
                mls::credential(&self.keys.device),
            )
            .map_err(mls_err)?;
            self.store.put_conversation(
                &ConversationRow {
                    id: *id,
                    kind,
                    name: name.to_string(),
                    post_quantum: pq,
                    active: true,
                    unread: 0,
                },
                now_ms(),
            )?;
            Ok(())
        })();
        match r {
            Ok(()) => Ok(self.store.commit()?),
            Err(e) => {
                self.store.rollback();
                Err(e)
            }
        }
    }

    async fn add_own_devices(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let me = self.my_username()?;
        let own = self.resolve_user(net, &me).await?;
        let others: Vec<[u8; 32]> = own
            .devices
            .iter()
            .copied()
            .filter(|d| *d != self.my_device())
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        self.add_devices(net, conv, vec![], others, events).await
    }

    pub(crate) async fn create_dm(
        &mut self,
        net: &Net,
        username: &str,
        events: &mut Vec<Event>,
    ) -> Result<ConversationId, Error> {
        let peer = self.resolve_user(net, username).await?;
        if peer.identity_key == self.my_identity()? {
            return Err(Error::invalid("a DM needs another account"));
        }
        let r: v1::CreateChannelResponse = self
            .call(
                net,
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest {
                    kind: v1::ChannelKind::Dm as i32,
                    members: vec![Bytes::copy_from_slice(&peer.identity_key)],
                    metadata: Bytes::new(),
                },
            )
            .await?;
        let id = id16(&r.channel_id, "channel id")?;
        if !r.created {
            // The peer may have set it up already: its Welcome is in our queue.
            self.sync(net, events).await?;
            if mls::load(&self.provider(), &id)?.is_some() {
                return Ok(id);
            }
        }
        self.new_group(&id, ConversationKind::Dm, username, false)?;
        self.add_own_devices(net, &id, events).await?;
        self.add_devices(
            net,
            &id,
            vec![peer.identity_key],
            peer.devices.clone(),
            events,
        )
        .await?;
        Ok(id)
    }

    pub(crate) async fn invite(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        usernames: &[&str],
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let mut identities = Vec::new();
        let mut devices = Vec::new();
        for u in usernames {
            let m = self.resolve_user(net, u).await?;
            identities.push(m.identity_key);
            devices.extend(m.devices);
        }
        self.add_devices(net, conv, identities, devices, events)
            .await
    }

    /// Fetches KeyPackages and hybrid keys of `devices` not yet in the group and commits
    /// adding them all at once.
    async fn add_devices(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        identities: Vec<[u8; 32]>,
        devices: Vec<[u8; 32]>,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let group = mls::load(&self.provider(), conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        let present: BTreeSet<[u8; 32]> = mls::member_devices(&group)
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let suite = u32::from(u16::from(group.ciphersuite()));
        let row = self
            .store
            .conversation(conv)?
            .ok_or_else(|| Error::not_found("no such conversation"))?;
        let wanted: Vec<[u8; 32]> = devices
            .into_iter()
            .filter(|d| !present.contains(d))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let hk: v1::FetchHybridKeysResponse = self
            .call(
                net,
                method::FETCH_HYBRID_KEYS,
                &v1::FetchHybridKeysRequest {
                    device_keys: wanted.iter().map(|d| Bytes::copy_from_slice(d)).collect(),
                },
            )
            .await?;
        let mut hybrid = BTreeMap::new();
        for e in hk.keys {
            hybrid.insert(
                key32(&e.device_key, "device key")?,
                HybridPublicKey::from_bytes(&e.hybrid_public_key)?,
            );
        }
        let mut kps = Vec::new();
        for d in wanted {
            let Some(h) = hybrid.remove(&d) else {
                tracing::debug!("device without hybrid key skipped");
                continue;
            };
            let r: Result<v1::FetchKeyPackageResponse, Error> = self
                .call(
                    net,
                    method::FETCH_KEY_PACKAGE,
                    &v1::FetchKeyPackageRequest {
                        device_key: Bytes::copy_from_slice(&d),
                        ciphersuite: suite,
                    },
                )
                .await;
            let kp = match r {
                Ok(r) => r.key_package,
                Err(e) if e.code() == ErrorCode::NotFound => continue,
                Err(e) => return Err(e),
            };
            let kp = mls::parse_key_package(&self.provider(), &kp)?;
            if mls::device_of(kp.leaf_node().credential()) != Some(d)
                || kp.ciphersuite() != group.ciphersuite()
            {
                return Err(Error::crypto(
                    "a KeyPackage does not match its device or suite",
                ));
            }
            kps.push((d, kp, h));
        }
        if kps.is_empty() {
            return Err(Error::not_found(
                "none of the devices has a KeyPackage and a hybrid key to join with",
            ));
        }
        self.commit(
            net,
            conv,
            Change::Add {
                key_packages: kps,
                add_members: identities,
                kind: row.kind,
                name: row.name,
            },
            events,
        )
        .await
    }

    pub(crate) async fn remove(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        username: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let m = self.resolve_user(net, username).await?;
        let group = mls::load(&self.provider(), conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        let devices: BTreeSet<[u8; 32]> = mls::member_devices(&group)
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| {
                m.devices.contains(d) || self.identity_of(d).ok().flatten() == Some(m.identity_key)
            })
            .collect();
        if devices.is_empty() {
            return Err(Error::not_found(format!("{username} is not a member")));
        }
        if devices.contains(&self.my_device()) {
            return Err(Error::invalid("use leave() to remove yourself"));
        }
        self.commit(
            net,
            conv,
            Change::Remove {
                devices,
                remove_members: vec![m.identity_key],
            },
            events,
        )
        .await
    }

    pub(crate) async fn rotate_keys(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        self.commit(net, conv, Change::Update, events).await
    }

    /// Leave: one Remove proposal per leaf of this account (sent as PROPOSAL), then the
    /// account leaves the channel on the server. A remaining member commits the proposals
    /// when it processes them.
    pub(crate) async fn leave(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        self.sync(net, events).await?;
        let me = self.my_identity()?;
        let proposals = self.leave_proposals(conv, &me)?;
        for p in proposals {
            let _: v1::EnqueueResponse = self
                .call(
                    net,
                    method::ENQUEUE,
                    &v1::EnqueueRequest {
                        channel_id: Bytes::copy_from_slice(conv),
                        message_id: Bytes::copy_from_slice(&rand::random::<[u8; 16]>()),
                        payload: Bytes::from(p),
                        kind: v1::MessageKind::Proposal as i32,
                        ..Default::default()
                    },
                )
                .await?;
        }
        let _: v1::RemoveMemberResponse = self
            .call(
                net,
                method::REMOVE_MEMBER,
                &v1::RemoveMemberRequest {
                    channel_id: Bytes::copy_from_slice(conv),
                    member: Bytes::copy_from_slice(&me),
                },
            )
            .await?;
        self.drop_group(conv)?;
        Ok(())
    }

    fn drop_group(&self, conv: &ConversationId) -> Result<(), Error> {
        let provider = self.provider();
        if let Some(mut g) = mls::load(&provider, conv)? {
            g.delete(provider.storage()).map_err(mls_err)?;
        }
        self.store.set_active(conv, false)?;
        Ok(())
    }

    /// Remove proposals for every leaf of this account in `conv`, own leaf last.
    fn leave_proposals(&self, conv: &ConversationId, me: &[u8; 32]) -> Result<Vec<Vec<u8>>, Error> {
        let provider = self.provider();
        let mut group = mls::load(&provider, conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        let mut proposals = Vec::new();
        if group.members().count() > 1 {
            let signer = mls::signer(&self.keys.device);
            let own_leaf = group.own_leaf_index();
            for (leaf, d) in mls::member_devices(&group) {
                if leaf != own_leaf && self.identity_of(&d)? == Some(*me) {
                    let (m, _) = group
                        .propose_remove_member(&provider, &signer, leaf)
                        .map_err(mls_err)?;
                    proposals.push(mls::encode(&m)?);
                }
            }
            let m = group.leave_group(&provider, &signer).map_err(mls_err)?;
            proposals.push(mls::encode(&m)?);
        }
        Ok(proposals)
    }

    // ---------------------------------------------------------------- commits

    /// Builds, sends and merges one commit; on a lost epoch race processes the winner and
    /// retries. The group never forks: a commit is merged only after the server accepted it.
    async fn commit(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        change: Change,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        for _attempt in 0..COMMIT_ATTEMPTS {
            self.sync(net, events).await?;
            let Some(req) = self.build_commit(conv, &change)? else {
                return Ok(());
            };
            let key = format!("{META_PENDING_COMMIT}{}", hexs(conv));
            self.store.set_meta(&key, &req.encode_to_vec())?;
            if self.failpoint == Some(Failpoint::CommitBuilt) {
                return Err(crashed(Failpoint::CommitBuilt));
            }
            match self.send_pending_commit(net, conv, &req, events).await? {
                true => return Ok(()),
                false => continue,
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            format!(
                "gave up after {COMMIT_ATTEMPTS} attempts: other members kept committing first"
            ),
        ))
    }

    /// Sends a stored pending commit. Ok(true) = merged, Ok(false) = lost the race (cleared).
    async fn send_pending_commit(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        req: &v1::EnqueueRequest,
        events: &mut Vec<Event>,
    ) -> Result<bool, Error> {
        let key = format!("{META_PENDING_COMMIT}{}", hexs(conv));
        let r: Result<v1::EnqueueResponse, Error> = self.call(net, method::ENQUEUE, req).await;
        if r.is_ok() && self.failpoint == Some(Failpoint::CommitSent) {
            return Err(crashed(Failpoint::CommitSent));
        }
        let provider = self.provider();
        let mut group = mls::load(&provider, conv)?;
        match r {
            Ok(_) => {
                if let Some(g) = group.as_mut() {
                    let before = self.member_names(g)?;
                    self.store.begin()?;
                    let merged = g.merge_pending_commit(&provider).map_err(mls_err);
                    if let Err(e) = merged {
                        self.store.rollback();
                        return Err(e);
                    }
                    self.store.delete_meta(&key)?;
                    self.store.commit()?;
                    let after = self.member_names(g)?;
                    push_members_changed(events, conv, &before, &after, g.epoch().as_u64());
                } else {
                    self.store.delete_meta(&key)?;
                }
                Ok(true)
            }
            Err(e) if matches!(e.code(), ErrorCode::Network | ErrorCode::Timeout) => Err(e),
            Err(e) => {
                if let Some(g) = group.as_mut() {
                    g.clear_pending_commit(provider.storage())
                        .map_err(mls_err)?;
                }
                self.store.delete_meta(&key)?;
                if e.code() == ErrorCode::Conflict {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Re-sends commits whose outcome is unknown (crash or network loss after building them).
    async fn resolve_pending_commits(
        &mut self,
        net: &Net,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        for (key, value) in self.store.meta_with_prefix(META_PENDING_COMMIT)? {
            let req = v1::EnqueueRequest::decode(&value[..])
                .map_err(|e| Error::new(ErrorCode::Storage, format!("pending commit: {e}")))?;
            let conv = id16(&req.channel_id, "channel id")?;
            let _ = key;
            self.send_pending_commit(net, &conv, &req, events).await?;
        }
        Ok(())
    }

    /// Stages a commit in the group (pending) and returns the Enqueue that carries it, or
    /// None when there is nothing to do any more.
    fn build_commit(
        &self,
        conv: &ConversationId,
        change: &Change,
    ) -> Result<Option<v1::EnqueueRequest>, Error> {
        let provider = self.provider();
        let mut group = mls::load(&provider, conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        if !group.is_active() {
            return Err(Error::not_found("this account is no longer a member"));
        }
        if group.pending_commit().is_some() {
            group
                .clear_pending_commit(provider.storage())
                .map_err(mls_err)?;
        }
        let signer = mls::signer(&self.keys.device);
        let epoch = group.epoch().as_u64();
        let mut req = v1::EnqueueRequest {
            channel_id: Bytes::copy_from_slice(conv),
            message_id: Bytes::copy_from_slice(&rand::random::<[u8; 16]>()),
            kind: v1::MessageKind::Commit as i32,
            commit_epoch: Some(epoch),
            ..Default::default()
        };
        let present: BTreeSet<[u8; 32]> = mls::member_devices(&group)
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        match change {
            Change::Add {
                key_packages,
                add_members,
                kind,
                name,
            } => {
                let todo: Vec<&([u8; 32], KeyPackage, HybridPublicKey)> = key_packages
                    .iter()
                    .filter(|(d, _, _)| !present.contains(d))
                    .collect();
                if todo.is_empty() {
                    return Ok(None);
                }
                let kps: Vec<KeyPackage> = todo.iter().map(|(_, kp, _)| kp.clone()).collect();
                let (commit, welcome, _) = group
                    .add_members(&provider, &signer, &kps)
                    .map_err(mls_err)?;
                let welcome = mls::encode(&welcome)?;
                let mut wrapped = Vec::with_capacity(welcome.len() + name.len() + 4);
                wrapped.push(WELCOME_WRAPPER_V1);
                wrapped.push(u8::from(*kind == ConversationKind::Dm));
                let name_bytes = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
                wrapped.extend_from_slice(&(name_bytes.len() as u16).to_be_bytes());
                wrapped.extend_from_slice(name_bytes);
                wrapped.extend_from_slice(&welcome);
                let recipients: Vec<&HybridPublicKey> = todo.iter().map(|(_, _, h)| h).collect();
                let sealed = envelope::seal(&mut OsRng, &recipients, conv, &wrapped)?;
                req.payload = Bytes::from(mls::encode(&commit)?);
                req.welcome = Bytes::from(sealed);
                req.welcome_devices = todo
                    .iter()
                    .map(|(d, _, _)| Bytes::copy_from_slice(d))
                    .collect();
                req.add_members = add_members
                    .iter()
                    .map(|k| Bytes::copy_from_slice(k))
                    .collect();
            }
            Change::Remove {
                devices,
                remove_members,
            } => {
                let leaves: Vec<LeafNodeIndex> = mls::member_devices(&group)
                    .into_iter()
                    .filter(|(_, d)| devices.contains(d))
                    .map(|(l, _)| l)
                    .collect();
                if leaves.is_empty() {
                    return Ok(None);
                }
                let (commit, _, _) = group
                    .remove_members(&provider, &signer, &leaves)
                    .map_err(mls_err)?;
                req.payload = Bytes::from(mls::encode(&commit)?);
                req.remove_members = remove_members
                    .iter()
                    .map(|k| Bytes::copy_from_slice(k))
                    .collect();
            }
            Change::Update => {
                let bundle = group
                    .self_update(&provider, &signer, LeafNodeParameters::default())
                    .map_err(mls_err)?;
                req.payload = Bytes::from(mls::encode(bundle.commit())?);
            }
            Change::Pending => {
                if !group.has_pending_proposals() {
                    return Ok(None);
                }
                let own = group.own_leaf_index();
                let removes_me = group.pending_proposals().any(|p| match p.proposal() {
                    Proposal::Remove(r) => r.removed() == own,
                    _ => false,
                });
                if removes_me {
                    // We are being removed (our own account left from another device): let
                    // another member commit it.
                    return Ok(None);
                }
                let (commit, _, _) = group
                    .commit_to_pending_proposals(&provider, &signer)
                    .map_err(mls_err)?;
                req.payload = Bytes::from(mls::encode(&commit)?);
            }
        }
        Ok(Some(req))
    }

    // ---------------------------------------------------------------- sending

    pub(crate) async fn send_text(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        text: &str,
        events: &mut Vec<Event>,
    ) -> Result<MessageId, Error> {
        let group = mls::load(&self.provider(), conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        if !group.is_active() {
            return Err(Error::not_found("this account is no longer a member"));
        }
        if group.has_pending_proposals() {
            self.commit(net, conv, Change::Pending, events).await?;
        }
        let (id, sent_at, plaintext) = self.text_plaintext(text);
        let me = self.my_username()?;
        self.store.begin()?;
        let r = (|| -> Result<(), Error> {
            let (ciphertext, epoch) = self.encrypt(conv, &plaintext)?;
            self.store.insert_message(
                &Message {
                    id,
                    conversation: *conv,
                    sender: me.clone(),
                    sender_device: self.my_device(),
                    text: text.to_string(),
                    sent_at_ms: sent_at,
                    received_at_ms: 0,
                    outgoing: true,
                },
                now_ms(),
            )?;
            self.store.put_outbox(&OutboxRow {
                id,
                conversation: *conv,
                plaintext: plaintext.clone(),
                ciphertext,
                epoch,
            })?;
            Ok(())
        })();
        match r {
            Ok(()) => self.store.commit()?,
            Err(e) => {
                self.store.rollback();
                return Err(e);
            }
        }
        match self.flush_outbox(net).await {
            Ok(()) => Ok(id),
            // Queued locally: sent on reconnect or the next sync.
            Err(e) if matches!(e.code(), ErrorCode::Network | ErrorCode::Timeout) => Ok(id),
            Err(e) => Err(e),
        }
    }

    /// A new text message: its id, send time and the AppMessage bytes MLS encrypts.
    fn text_plaintext(&self, text: &str) -> (MessageId, u64, Vec<u8>) {
        let id: MessageId = rand::random();
        let sent_at = now_ms();
        let app = v1::AppMessage {
            id: Bytes::copy_from_slice(&id),
            sent_at,
            sender_device: Bytes::copy_from_slice(&self.my_device()),
            kind: Some(v1::app_message::Kind::Text(v1::Text {
                body: text.to_string(),
            })),
        };
        (id, sent_at, app.encode_to_vec())
    }

    fn encrypt(&self, conv: &ConversationId, plaintext: &[u8]) -> Result<(Vec<u8>, u64), Error> {
        let provider = self.provider();
        let mut group = mls::load(&provider, conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        let m = group
            .create_message(&provider, &mls::signer(&self.keys.device), plaintext)
            .map_err(mls_err)?;
        Ok((mls::encode(&m)?, group.epoch().as_u64()))
    }

    /// Sends every outbox entry in order, idempotently by message id.
    async fn flush_outbox(&mut self, net: &Net) -> Result<(), Error> {
        for mut o in self.store.outbox()? {
            let group = mls::load(&self.provider(), &o.conversation)?;
            let Some(group) = group.filter(|g| g.is_active()) else {
                self.store.delete_outbox(&o.id)?;
                continue;
            };
            if group.epoch().as_u64() != o.epoch {
                // Never accepted in its epoch: encrypt again in the current one, same id.
                self.store.begin()?;
                let r = self
                    .encrypt(&o.conversation, &o.plaintext)
                    .and_then(|(ct, epoch)| {
                        o.ciphertext = ct;
                        o.epoch = epoch;
                        Ok(self.store.put_outbox(&o)?)
                    });
                match r {
                    Ok(()) => self.store.commit()?,
                    Err(e) => {
                        self.store.rollback();
                        return Err(e);
                    }
                }
            }
            let r: Result<v1::EnqueueResponse, Error> = self
                .call(
                    net,
                    method::ENQUEUE,
                    &v1::EnqueueRequest {
                        channel_id: Bytes::copy_from_slice(&o.conversation),
                        message_id: Bytes::copy_from_slice(&o.id),
                        payload: Bytes::from(o.ciphertext.clone()),
                        kind: v1::MessageKind::Application as i32,
                        ..Default::default()
                    },
                )
                .await;
            match r {
                Ok(_) => self.store.delete_outbox(&o.id)?,
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::Network | ErrorCode::Timeout | ErrorCode::RateLimited
                    ) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    // Permanent refusal (no longer a member, too large): drop it.
                    tracing::debug!("outbox message dropped: {e}");
                    self.store.delete_outbox(&o.id)?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- receiving

    /// Everything queued now: pending commits resolved, queue fetched and processed (acked
    /// after each message is stored), outbox flushed, received proposals committed.
    pub(crate) async fn sync(&mut self, net: &Net, events: &mut Vec<Event>) -> Result<(), Error> {
        self.sync_from(net, events, Vec::new()).await
    }

    /// Like [`Engine::sync`], starting with messages a FetchWait already returned (saving the
    /// Fetch that would return them again). Messages at or below the last processed sequence
    /// number are skipped as always, so stale prefetched ones are harmless.
    pub(crate) async fn sync_from(
        &mut self,
        net: &Net,
        events: &mut Vec<Event>,
        mut prefetched: Vec<v1::QueuedMessage>,
    ) -> Result<(), Error> {
        /// A page this full may have more behind it; a shorter one was the whole queue.
        const PAGE: usize = 256;
        const PAGE_BYTES: usize = 1024 * 1024;
        self.resolve_pending_commits(net, events).await?;
        let mut proposals = BTreeSet::new();
        loop {
            let messages = if prefetched.is_empty() {
                let after = self.store.get_u64(META_LAST_SEQ)?;
                let r: v1::FetchResponse = self
                    .call(
                        net,
                        method::FETCH,
                        &v1::FetchRequest {
                            after_seq: after,
                            limit: PAGE as u32,
                            channel_id: Bytes::new(),
                        },
                    )
                    .await?;
                r.messages
            } else {
                std::mem::take(&mut prefetched)
            };
            if messages.is_empty() {
                break;
            }
            let short = messages.len() < PAGE
                && messages.iter().map(|m| m.payload.len()).sum::<usize>() < PAGE_BYTES;
            self.process_batch(net, messages, events, &mut proposals)
                .await?;
            if short {
                break;
            }
        }
        if let Err(e) = self.flush_outbox(net).await {
            tracing::debug!("outbox not flushed: {e}");
        }
        for conv in proposals {
            let mut ev = Vec::new();
            // Boxed: commit() calls sync() again.
            let r = Box::pin(self.commit(net, &conv, Change::Pending, &mut ev)).await;
            events.extend(ev);
            if let Err(e) = r {
                tracing::debug!("could not commit pending proposals: {e}");
            }
        }
        Ok(())
    }

    async fn process_batch(
        &mut self,
        net: &Net,
        mut msgs: Vec<v1::QueuedMessage>,
        events: &mut Vec<Event>,
        proposals: &mut BTreeSet<ConversationId>,
    ) -> Result<(), Error> {
        msgs.sort_by_key(|m| m.seq);
        // Learn usernames first (outside any transaction).
        let mut refresh = BTreeSet::new();
        for m in &msgs {
            let unknown = <[u8; 32]>::try_from(&m.sender_device[..])
                .map(|d| matches!(self.store.device(&d), Ok(None)))
                .unwrap_or(false);
            if unknown
                || m.kind == v1::MessageKind::Welcome as i32
                || m.kind == v1::MessageKind::Commit as i32
            {
                if let Ok(c) = <[u8; 16]>::try_from(&m.channel_id[..]) {
                    refresh.insert(c);
                }
            }
        }
        for c in refresh {
            let _ = self.refresh_directory(net, &c).await;
        }
        let mut last = self.store.get_u64(META_LAST_SEQ)?;
        for m in msgs {
            if m.seq <= last {
                continue;
            }
            match self.apply_one(&m, true, proposals)? {
                Ok(local) => events.extend(local),
                Err(e) => tracing::debug!("queued message {} not processed: {e}", m.seq),
            }
            last = m.seq;
            // Durable now: the app may see it before the Ack (which only lets the server
            // forget it; a lost Ack means a redelivery that is skipped by sequence number).
            if let Some(sink) = &self.sink {
                sink(std::mem::take(events));
            }
        }
        // Ack only what is durably processed.
        let _: v1::AckResponse = self
            .call(
                net,
                method::ACK,
                &v1::AckRequest {
                    up_to_seq: last,
                    seqs: vec![],
                },
            )
            .await?;
        Ok(())
    }

    /// Processes one queued message in its own transaction. A message that cannot be
    /// processed leaves no trace (its changes are rolled back) and is reported in the inner
    /// result; with `record_seq` its sequence number is stored either way, in the same
    /// transaction, so it is never processed twice. The outer error is a storage failure
    /// (e.g. a full disk at commit); then nothing of the message is kept and no transaction
    /// stays open, so the next sync retries it.
    fn apply_one(
        &mut self,
        m: &v1::QueuedMessage,
        record_seq: bool,
        proposals: &mut BTreeSet<ConversationId>,
    ) -> Result<Result<Vec<Event>, Error>, Error> {
        let mut local = Vec::new();
        self.store.begin()?;
        let r = self.process_one(m, &mut local, proposals);
        if r.is_err() {
            self.store.rollback();
            local.clear();
        }
        let finish = || -> Result<(), StoreError> {
            if r.is_err() {
                self.store.begin()?;
            }
            if record_seq {
                self.store.set_u64(META_LAST_SEQ, m.seq)?;
            }
            self.store.commit()
        };
        if let Err(e) = finish() {
            self.store.rollback();
            return Err(e.into());
        }
        Ok(r.map(|()| local))
    }

    fn process_one(
        &mut self,
        m: &v1::QueuedMessage,
        events: &mut Vec<Event>,
        proposals: &mut BTreeSet<ConversationId>,
    ) -> Result<(), Error> {
        let conv = id16(&m.channel_id, "channel id")?;
        if m.kind == v1::MessageKind::Welcome as i32 {
            return self.process_welcome(&conv, &m.payload, events);
        }
        let provider = self.provider();
        let Some(mut group) = mls::load(&provider, &conv)? else {
            return Err(
                MlsError::Decrypt("message for a group this device is not in".into()).into(),
            );
        };
        if !group.is_active() {
            // Removed: nothing of this group is processed any more (the caller skips it).
            return Err(MlsError::Decrypt(
                "message for a group this device was removed from".into(),
            )
            .into());
        }
        let msg = MlsMessageIn::tls_deserialize_exact(&m.payload[..])
            .map_err(|e| MlsError::Decrypt(e.to_string()))?;
        let pm = msg
            .try_into_protocol_message()
            .map_err(|e| MlsError::Decrypt(e.to_string()))?;
        let processed = group
            .process_message(&provider, pm)
            .map_err(|e| MlsError::Decrypt(e.to_string()))?;
        let sender_device = mls::device_of(processed.credential());
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let app = v1::AppMessage::decode(&app.into_bytes()[..])
                    .map_err(|e| MlsError::Decrypt(format!("app message: {e}")))?;
                let Some(device) = sender_device else {
                    return Err(
                        MlsError::Decrypt("sender without a device credential".into()).into(),
                    );
                };
                let text = match app.kind {
                    Some(v1::app_message::Kind::Text(t)) => t.body,
                    _ => return Ok(()),
                };
                let outgoing = self.identity_of(&device)?
                    == self.keys.identity.as_ref().map(|k| k.public_key());
                let msg = Message {
                    id: id16(&app.id, "message id")
                        .map_err(|_| Error::crypto("app message id is not 16 bytes"))?,
                    conversation: conv,
                    sender: self.username_of(&device)?,
                    sender_device: device,
                    text,
                    sent_at_ms: app.sent_at,
                    received_at_ms: 0,
                    outgoing,
                };
                if let Some(stored) = self.store.insert_message(&msg, now_ms())? {
                    events.push(Event::Message(stored));
                }
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                group
                    .store_pending_proposal(provider.storage(), *p)
                    .map_err(mls_err)?;
                proposals.insert(conv);
            }
            ProcessedMessageContent::StagedCommitMessage(sc) => {
                let before = self.member_names(&group)?;
                let removed = sc.self_removed();
                group.merge_staged_commit(&provider, *sc).map_err(mls_err)?;
                if removed {
                    self.store.set_active(&conv, false)?;
                    events.push(Event::Removed { conversation: conv });
                } else {
                    let after = self.member_names(&group)?;
                    push_members_changed(events, &conv, &before, &after, group.epoch().as_u64());
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn process_welcome(
        &mut self,
        conv: &ConversationId,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let wrapped = envelope::open(&self.keys.hybrid, conv, payload)?;
        if wrapped.len() < 4 || wrapped[0] != WELCOME_WRAPPER_V1 {
            return Err(Error::crypto("unknown Welcome wrapper"));
        }
        let kind = if wrapped[1] == 1 {
            ConversationKind::Dm
        } else {
            ConversationKind::Group
        };
        let name_len = u16::from_be_bytes([wrapped[2], wrapped[3]]) as usize;
        if wrapped.len() < 4 + name_len {
            return Err(Error::crypto("truncated Welcome wrapper"));
        }
        let name = String::from_utf8_lossy(&wrapped[4..4 + name_len]).into_owned();
        let msg = MlsMessageIn::tls_deserialize_exact(&wrapped[4 + name_len..])
            .map_err(|e| MlsError::Decrypt(e.to_string()))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(Error::crypto("the Welcome payload is not an MLS Welcome"));
        };
        let provider = self.provider();
        if let Some(mut old) = mls::load(&provider, conv)? {
            old.delete(provider.storage()).map_err(mls_err)?;
        }
        let staged = StagedWelcome::new_from_welcome(&provider, &mls::join_config(), welcome, None)
            .map_err(|e| MlsError::Decrypt(format!("welcome: {e}")))?;
        let group = staged
            .into_group(&provider)
            .map_err(|e| MlsError::Decrypt(format!("welcome: {e}")))?;
        if group.group_id().as_slice() != conv {
            return Err(Error::crypto("the Welcome is for another group"));
        }
        let pq = group.ciphersuite() == mls::PQ;
        self.store.put_conversation(
            &ConversationRow {
                id: *conv,
                kind,
                name,
                post_quantum: pq,
                active: true,
                unread: 0,
            },
            now_ms(),
        )?;
        events.push(Event::ConversationJoined(self.conversation(conv)?));
        Ok(())
    }

    /// Test hook: encrypts `text` as a text message (exactly as [`Engine::send_text`] would)
    /// without storing or sending it.
    pub(crate) fn debug_encrypt(
        &self,
        conv: &ConversationId,
        text: &str,
    ) -> Result<Vec<u8>, Error> {
        let (_, _, plaintext) = self.text_plaintext(text);
        self.store.begin()?;
        let r = self.encrypt(conv, &plaintext).map(|(ct, _)| ct);
        self.store.commit()?;
        r
    }

    /// Test hook: runs raw MLS bytes through the receive path ([`Engine::process_one`])
    /// against this device's group state, then rolls everything back.
    pub(crate) fn debug_process(
        &mut self,
        conv: &ConversationId,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let m = debug_queued(conv, bytes);
        self.store.begin()?;
        let r = self.process_one(&m, &mut Vec::new(), &mut BTreeSet::new());
        self.store.rollback();
        r
    }

    /// Test hook: delivers each `(conversation, MLS bytes)` as if the server had queued it
    /// under a new sequence number, through the same per-message transaction as a fetch
    /// (without touching the stored sequence number, the network or proposals to commit).
    /// Reports, per input, what processing gave and whether any stored state changed.
    pub(crate) fn debug_inject(
        &mut self,
        msgs: &[(ConversationId, Vec<u8>)],
    ) -> Result<Vec<DebugInjected>, Error> {
        let mut out = Vec::with_capacity(msgs.len());
        for (conv, bytes) in msgs {
            let before = self.store.state_hash()?;
            let result = self.apply_one(&debug_queued(conv, bytes), false, &mut BTreeSet::new())?;
            let state_changed = self.store.state_hash()? != before;
            out.push(DebugInjected {
                result,
                state_changed,
            });
        }
        Ok(out)
    }

    /// Test hook: builds a self-update commit for `conv` and returns its MLS bytes without
    /// sending or merging it (the group stays where it was).
    pub(crate) fn debug_self_update(&mut self, conv: &ConversationId) -> Result<Vec<u8>, Error> {
        self.store.begin()?;
        let r = self.build_commit(conv, &Change::Update);
        self.store.rollback();
        Ok(r?
            .ok_or_else(|| Error::internal("a self-update always makes a commit"))?
            .payload
            .to_vec())
    }

    /// Test hook: SHA-256 over the whole stored state (see [`Store::state_hash`]).
    pub(crate) fn debug_state_hash(&self) -> Result<[u8; 32], Error> {
        Ok(self.store.state_hash()?)
    }
}

/// Outcome of one [`Engine::debug_inject`] input.
#[doc(hidden)]
#[derive(Debug)]
pub struct DebugInjected {
    /// The events processing produced, or why the input was rejected.
    pub result: Result<Vec<Event>, Error>,
    /// Whether the stored state (every table, MLS state included) differs afterwards.
    pub state_changed: bool,
}

/// A queued message as the server would deliver MLS bytes for `conv`.
fn debug_queued(conv: &ConversationId, bytes: &[u8]) -> v1::QueuedMessage {
    v1::QueuedMessage {
        channel_id: Bytes::copy_from_slice(conv),
        payload: Bytes::copy_from_slice(bytes),
        kind: v1::MessageKind::Application as i32,
        ..Default::default()
    }
}

fn push_members_changed(
    events: &mut Vec<Event>,
    conv: &ConversationId,
    before: &[String],
    after: &[String],
    epoch: u64,
) {
    let added: Vec<String> = after
        .iter()
        .filter(|a| !before.contains(a))
        .cloned()
        .collect();
    let removed: Vec<String> = before
        .iter()
        .filter(|b| !after.contains(b))
        .cloned()
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        events.push(Event::MembersChanged {
            conversation: *conv,
            added,
            removed,
            epoch,
        });
    }
}

fn identity_from_export_key(export_key: &[u8]) -> IdentityKey {
    let hk = Hkdf::<Sha256>::new(None, export_key);
    let mut seed = Zeroizing::new([0u8; 32]);
    hk.expand(IDENTITY_LABEL, &mut seed[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    IdentityKey::from_bytes(&seed)
}

fn check_username(u: &str) -> Result<(), Error> {
    if u.is_empty() || u.len() > 64 {
        return Err(Error::invalid("a username has 1 to 64 characters"));
    }
    Ok(())
}
