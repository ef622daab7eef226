//! Groups and DMs: creating them, inviting and removing members, leaving, key rotation.
//! Each public operation holds the operation lock for its whole run and the engine lock only
//! for local steps.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_traits::types::AeadType;
use qpq_crypto::envelope::{self, HybridPublicKey};
use qpq_proto::{method, v1};

use super::commit::Change;
use super::directory::{entry_error, BATCH_MAX};
use super::welcome;
use super::*;
use crate::error::{Error, ErrorCode, MlsError};
use crate::mls;
use crate::roles;
use crate::store::ConversationRow;
use crate::types::{ConversationId, ConversationKind, Event};

/// A device, its KeyPackage (encoded, not yet checked) and its hybrid public key (asked for
/// only when the group's Welcome is sealed: classic groups, ADR 0111).
type FetchedKeyPackage = ([u8; 32], Vec<u8>, Option<HybridPublicKey>);

impl Session {
    pub(crate) async fn create_group(
        &self,
        name: &str,
        pq: bool,
        events: &mut Vec<Event>,
    ) -> Result<ConversationId, Error> {
        let _ops = self.ops().await;
        let r: v1::CreateChannelResponse = self
            .call(
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest {
                    kind: v1::ChannelKind::Group as i32,
                    members: vec![],
                    metadata: Bytes::new(),
                },
            )
            .await?;
        let id: ConversationId = id16(&r.channel_id, "channel id")?;
        self.engine()?
            .new_group(&id, ConversationKind::Group, name, pq)?;
        self.add_own_devices(&id, events).await?;
        Ok(id)
    }

    async fn add_own_devices(
        &self,
        conv: &ConversationId,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let (me, my_device) = {
            let e = self.engine()?;
            (e.my_username()?, e.my_device())
        };
        let own = self.resolve(&me).await?;
        let others: Vec<[u8; 32]> = own
            .devices
            .iter()
            .copied()
            .filter(|d| *d != my_device)
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        self.add_devices(conv, vec![], others, events).await
    }

    pub(crate) async fn create_dm(
        &self,
        username: &str,
        events: &mut Vec<Event>,
    ) -> Result<ConversationId, Error> {
        let _ops = self.ops().await;
        let peer = self.resolve(username).await?;
        let peer_id = peer.identity;
        if peer_id == self.engine()?.my_identity()? {
            return Err(Error::invalid("a DM needs another account"));
        }
        let r: v1::CreateChannelResponse = self
            .call(
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest {
                    kind: v1::ChannelKind::Dm as i32,
                    members: vec![Bytes::copy_from_slice(&peer_id)],
                    metadata: Bytes::new(),
                },
            )
            .await?;
        let id: ConversationId = id16(&r.channel_id, "channel id")?;
        if !r.created {
            // The peer may have set it up already: its Welcome is in our queue.
            self.sync_locked(events).await?;
            let e = self.engine()?;
            if mls::load(&e.provider(), &id)?.is_some() {
                return Ok(id);
            }
        }
        self.engine()?
            .new_group(&id, ConversationKind::Dm, username, false)?;
        self.add_own_devices(&id, events).await?;
        self.add_devices(&id, vec![peer_id], peer.devices.clone(), events)
            .await?;
        Ok(id)
    }

    pub(crate) async fn invite(
        &self,
        conv: &ConversationId,
        usernames: &[&str],
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let _ops = self.ops().await;
        let present: BTreeSet<[u8; 32]> = {
            let e = self.engine()?;
            let row = e
                .store
                .conversation(conv)?
                .ok_or_else(|| Error::not_found("no such conversation"))?;
            if row.kind == ConversationKind::Dm {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "a DM is between two accounts: create a group to talk with more people",
                ));
            }
            let present = match mls::load(&e.provider(), conv)? {
                Some(g) => mls::member_devices(&g)
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect(),
                None => return Err(Error::not_found("no such active conversation")),
            };
            present
        };
        let mut identities = Vec::new();
        let mut devices = Vec::new();
        // One ResolveUsers round trip for all of them (ADR 0110).
        for (u, m) in usernames.iter().zip(self.resolve_many(usernames).await?) {
            let id = m.identity;
            if m.devices.iter().any(|d| present.contains(d)) {
                return Err(Error::new(
                    ErrorCode::AlreadyMember,
                    format!("{u} is already a member; nothing was changed"),
                ));
            }
            identities.push(id);
            devices.extend(m.devices);
        }
        self.add_devices(conv, identities, devices, events).await
    }

    /// Fetches KeyPackages and hybrid keys of `devices` not yet in the group and commits
    /// adding them all at once.
    async fn add_devices(
        &self,
        conv: &ConversationId,
        identities: Vec<[u8; 32]>,
        devices: Vec<[u8; 32]>,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let (cs, row, wanted) = {
            let e = self.engine()?;
            let group = mls::load(&e.provider(), conv)?
                .ok_or_else(|| Error::not_found("no such active conversation"))?;
            let present: BTreeSet<[u8; 32]> = mls::member_devices(&group)
                .into_iter()
                .map(|(_, d)| d)
                .collect();
            let row = e
                .store
                .conversation(conv)?
                .ok_or_else(|| Error::not_found("no such conversation"))?;
            let wanted: Vec<[u8; 32]> = devices
                .into_iter()
                .filter(|d| !present.contains(d))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            (group.ciphersuite(), row, wanted)
        };
        let suite = u32::from(u16::from(cs));
        if wanted.is_empty() {
            return Ok(());
        }
        // Only a classic group's Welcome is sealed to hybrid keys (ADR 0111).
        let sealed = cs != mls::PQ;
        let fetched = match self.fetch_key_packages(&wanted, suite, sealed).await? {
            Some(f) => f,
            None => {
                self.fetch_key_packages_one_by_one(&wanted, suite, sealed)
                    .await?
            }
        };
        let mut kps = Vec::new();
        for (d, kp, h) in fetched {
            let kp = {
                let e = self.engine()?;
                mls::parse_key_package(&e.provider(), &kp)?
            };
            if mls::device_of(kp.leaf_node().credential()) != Some(d) || kp.ciphersuite() != cs {
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

    /// A KeyPackage and the hybrid key of each of `devices`, in one FetchKeyPackages round
    /// trip per [`BATCH_MAX`] (ADR 0110). Devices without either are left out, as is a device
    /// the server answers NotFound for; any other refusal fails the call. `Ok(None)` when the
    /// server predates FetchKeyPackages.
    async fn fetch_key_packages(
        &self,
        devices: &[[u8; 32]],
        suite: u32,
        with_hybrid_keys: bool,
    ) -> Result<Option<Vec<FetchedKeyPackage>>, Error> {
        let mut out = Vec::with_capacity(devices.len());
        for chunk in devices.chunks(BATCH_MAX) {
            let r: Option<v1::FetchKeyPackagesResponse> = self
                .call_batch(
                    method::FETCH_KEY_PACKAGES,
                    &v1::FetchKeyPackagesRequest {
                        device_keys: chunk.iter().map(|d| Bytes::copy_from_slice(d)).collect(),
                        ciphersuite: suite,
                        with_hybrid_keys,
                    },
                )
                .await?;
            let Some(r) = r else {
                return Ok(None);
            };
            if r.entries.len() != chunk.len() {
                return Err(Error::internal(
                    "server answered FetchKeyPackages with another number of devices",
                ));
            }
            for (d, e) in chunk.iter().zip(r.entries) {
                match e.status {
                    0 => {}
                    4 => {
                        tracing::debug!("device without KeyPackage or hybrid key skipped");
                        continue;
                    }
                    other => {
                        return Err(entry_error(
                            other,
                            e.retry_after_ms,
                            "cannot fetch a KeyPackage of a device".into(),
                        ))
                    }
                }
                if e.device_key[..] != d[..] {
                    return Err(Error::internal(
                        "server answered FetchKeyPackages out of order",
                    ));
                }
                let h = if with_hybrid_keys {
                    Some(HybridPublicKey::from_bytes(&e.hybrid_public_key)?)
                } else {
                    None
                };
                out.push((*d, e.key_package.to_vec(), h));
            }
        }
        Ok(Some(out))
    }

    /// What [`Session::fetch_key_packages`] does, for a server without FetchKeyPackages: the
    /// hybrid keys in one call, then one FetchKeyPackage per device.
    async fn fetch_key_packages_one_by_one(
        &self,
        devices: &[[u8; 32]],
        suite: u32,
        with_hybrid_keys: bool,
    ) -> Result<Vec<FetchedKeyPackage>, Error> {
        let mut hybrid = BTreeMap::new();
        if with_hybrid_keys {
            let hk: v1::FetchHybridKeysResponse = self
                .call(
                    method::FETCH_HYBRID_KEYS,
                    &v1::FetchHybridKeysRequest {
                        device_keys: devices.iter().map(|d| Bytes::copy_from_slice(d)).collect(),
                    },
                )
                .await?;
            for e in hk.keys {
                hybrid.insert(
                    key32(&e.device_key, "device key")?,
                    HybridPublicKey::from_bytes(&e.hybrid_public_key)?,
                );
            }
        }
        let mut out = Vec::new();
        for d in devices {
            let h = hybrid.remove(d);
            if with_hybrid_keys && h.is_none() {
                tracing::debug!("device without hybrid key skipped");
                continue;
            }
            let r: Result<v1::FetchKeyPackageResponse, Error> = self
                .call(
                    method::FETCH_KEY_PACKAGE,
                    &v1::FetchKeyPackageRequest {
                        device_key: Bytes::copy_from_slice(d),
                        ciphersuite: suite,
                    },
                )
                .await;
            match r {
                Ok(r) => out.push((*d, r.key_package.to_vec(), h)),
                Err(e) if e.code() == ErrorCode::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub(crate) async fn remove(
        &self,
        conv: &ConversationId,
        username: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let _ops = self.ops().await;
        let m = self.resolve(username).await?;
        let m_id = m.identity;
        let devices: BTreeSet<[u8; 32]> = {
            let e = self.engine()?;
            let group = mls::load(&e.provider(), conv)?
                .ok_or_else(|| Error::not_found("no such active conversation"))?;
            if e.store.conversation(conv)?.map(|r| r.kind) == Some(ConversationKind::Dm) {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "nobody is removed from a DM: leave it instead",
                ));
            }
            let me = e.my_identity()?;
            if let Some(admins) = roles::admins(group.extensions()) {
                if !admins.contains(&me) && m_id != me {
                    return Err(Error::new(
                        ErrorCode::Forbidden,
                        roles::Violation::RemoveByNonAdmin.to_string(),
                    ));
                }
            }
            let devices: BTreeSet<[u8; 32]> = mls::member_devices(&group)
                .into_iter()
                .map(|(_, d)| d)
                .filter(|d| m.devices.contains(d) || e.identity_of(d).ok().flatten() == Some(m_id))
                .collect();
            if devices.is_empty() {
                return Err(Error::not_found(format!("{username} is not a member")));
            }
            if devices.contains(&e.my_device()) {
                return Err(Error::invalid("use leave() to remove yourself"));
            }
            devices
        };
        self.commit(
            conv,
            Change::Remove {
                devices,
                remove_members: vec![m_id],
            },
            events,
        )
        .await
    }

    /// Makes `username` an admin of the group (ADR 0032). Only an admin may; `AlreadyMember`
    /// when they already are one.
    pub(crate) async fn promote(
        &self,
        conv: &ConversationId,
        username: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let _ops = self.ops().await;
        let m = self.resolve(username).await?;
        let m_id = m.identity;
        let admins = {
            let e = self.engine()?;
            let group = mls::load(&e.provider(), conv)?
                .ok_or_else(|| Error::not_found("no such active conversation"))?;
            let Some(mut admins) = roles::admins(group.extensions()) else {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "this conversation has no roles (a DM, or a group made before roles)",
                ));
            };
            if !admins.contains(&e.my_identity()?) {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    roles::Violation::PromoteByNonAdmin.to_string(),
                ));
            }
            let member = mls::member_devices(&group)
                .iter()
                .any(|(_, d)| m.devices.contains(d));
            if !member {
                return Err(Error::not_found(format!("{username} is not a member")));
            }
            if !admins.insert(m_id) {
                return Err(Error::new(
                    ErrorCode::AlreadyMember,
                    format!("{username} is already an admin; nothing was changed"),
                ));
            }
            admins
        };
        self.commit(
            conv,
            Change::Promote {
                admins,
                promote: vec![m_id],
            },
            events,
        )
        .await
    }

    pub(crate) async fn rotate_keys(
        &self,
        conv: &ConversationId,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let _ops = self.ops().await;
        self.commit(conv, Change::Update, events).await
    }

    /// Leave: one Remove proposal per leaf of this account (sent as PROPOSAL), then the
    /// account leaves the channel on the server. A remaining member commits the proposals
    /// when it processes them.
    pub(crate) async fn leave(
        &self,
        conv: &ConversationId,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let _ops = self.ops().await;
        self.sync_locked(events).await?;
        // What was queued for this conversation goes out before we leave.
        if let Err(e) = self.flush_outbox_locked(events).await {
            tracing::debug!("outbox not flushed before leaving: {e}");
        }
        let (me, proposals) = {
            let e = self.engine()?;
            let me = e.my_identity()?;
            (me, e.leave_proposals(conv, &me)?)
        };
        for p in proposals {
            let _: v1::EnqueueResponse = self
                .call(
                    method::ENQUEUE,
                    &v1::EnqueueRequest {
                        channel_id: Bytes::copy_from_slice(&conv[..]),
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
                method::REMOVE_MEMBER,
                &v1::RemoveMemberRequest {
                    channel_id: Bytes::copy_from_slice(&conv[..]),
                    member: Bytes::copy_from_slice(&me),
                },
            )
            .await?;
        let e = self.engine()?;
        e.drop_group(conv)?;
        events.push(Event::Removed {
            conversation: *conv,
            by: Some(e.my_username()?),
            left: true,
        });
        Ok(())
    }
}

/// The group a staged Welcome joins, stored.
fn into_group(staged: StagedWelcome, provider: &mls::Provider<'_>) -> Result<MlsGroup, Error> {
    staged
        .into_group(provider)
        .map_err(|e| MlsError::Decrypt(format!("welcome: {e}")).into())
}

impl Engine {
    fn new_group(
        &self,
        id: &ConversationId,
        kind: ConversationKind,
        name: &str,
        pq: bool,
    ) -> Result<(), Error> {
        let cs = if pq { mls::PQ } else { mls::CLASSIC };
        // A group's creator is its first admin (ADR 0032); a DM has no roles.
        let group_extensions = match kind {
            ConversationKind::Group => Some(roles::extensions(&[self.my_identity()?].into())?),
            ConversationKind::Dm => None,
        };
        let config = mls::create_config(cs, group_extensions)?;
        let provider = self.provider();
        self.store.transaction(|s| -> Result<(), Error> {
            MlsGroup::new_with_group_id(
                &provider,
                &mls::signer(&self.keys.device),
                &config,
                GroupId::from_slice(&id[..]),
                mls::credential(&self.keys.device),
            )
            .map_err(mls_err)?;
            s.put_conversation(
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
        })
    }

    fn drop_group(&self, conv: &ConversationId) -> Result<(), Error> {
        let provider = self.provider();
        self.store.transaction(|s| -> Result<(), Error> {
            if let Some(mut g) = mls::load(&provider, conv)? {
                g.delete(provider.storage()).map_err(mls_err)?;
            }
            s.set_active(conv, false)?;
            Ok(())
        })
    }

    /// Joins the group of a Welcome payload (either format of [`super::welcome`], ADR 0111):
    /// a classic group's is opened from the hybrid envelope; an X-Wing group's is the MLS
    /// Welcome itself, whose header is decrypted with the key of the epoch it joins. A
    /// classic-suite Welcome that comes unsealed is refused (its secrets would have been
    /// exposed to a quantum adversary). Replaces any stored state of the group.
    pub(super) fn join_from_welcome(
        &self,
        conv: &ConversationId,
        payload: &[u8],
    ) -> Result<(ConversationKind, String, MlsGroup), Error> {
        let provider = self.provider();
        if payload.first() != Some(&welcome::MLS_PROTECTED_V1) {
            let opened = envelope::open(&self.keys.hybrid, &conv[..], payload)?;
            let (kind, name, welcome_bytes) = welcome::unwrap(&opened)?;
            let staged = self.stage_welcome(conv, welcome_bytes, false)?;
            return Ok((kind, name, into_group(staged, &provider)?));
        }
        let welcome::MlsProtected {
            welcome: welcome_bytes,
            nonce,
            sealed_header,
        } = welcome::split_mls_protected(payload)?;
        let staged = self.stage_welcome(conv, welcome_bytes, true)?;
        let key = zeroize::Zeroizing::new(
            staged
                .export_secret(
                    provider.crypto(),
                    welcome::HEADER_EXPORTER_LABEL,
                    &conv[..],
                    welcome::HEADER_KEY_LEN,
                )
                .map_err(mls_err)?,
        );
        let plain = provider
            .crypto()
            .aead_decrypt(
                AeadType::Aes128Gcm,
                &key,
                sealed_header,
                &nonce,
                &welcome::header_aad(&conv[..]),
            )
            .map_err(|_| Error::crypto("the Welcome's header does not decrypt"))?;
        let (kind, name, rest) = welcome::parse_header(&plain)?;
        if !rest.is_empty() {
            return Err(Error::crypto("trailing bytes after the Welcome's header"));
        }
        Ok((kind, name, into_group(staged, &provider)?))
    }

    /// Parses and stages an MLS Welcome (after dropping any stored state of the group);
    /// `unsealed` Welcomes must be of the X-Wing suite.
    fn stage_welcome(
        &self,
        conv: &ConversationId,
        welcome_bytes: &[u8],
        unsealed: bool,
    ) -> Result<StagedWelcome, Error> {
        let msg = MlsMessageIn::tls_deserialize_exact(welcome_bytes)
            .map_err(|e| MlsError::Decrypt(e.to_string()))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(Error::crypto("the Welcome payload is not an MLS Welcome"));
        };
        if unsealed && welcome.ciphersuite() != mls::PQ {
            return Err(Error::crypto(
                "an unsealed Welcome must be of the post-quantum suite",
            ));
        }
        let provider = self.provider();
        if let Some(mut old) = mls::load(&provider, conv)? {
            old.delete(provider.storage()).map_err(mls_err)?;
        }
        StagedWelcome::new_from_welcome(&provider, &mls::join_config(), welcome, None)
            .map_err(|e| MlsError::Decrypt(format!("welcome: {e}")).into())
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
}
