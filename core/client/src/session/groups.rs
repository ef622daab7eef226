//! Groups and DMs: creating them, inviting and removing members, leaving, key rotation.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use openmls::prelude::*;
use qpq_crypto::envelope::HybridPublicKey;
use qpq_proto::{method, v1};

use super::commit::Change;
use super::*;
use crate::error::{Error, ErrorCode};
use crate::mls;
use crate::net::Net;
use crate::roles;
use crate::store::ConversationRow;
use crate::types::{ConversationId, ConversationKind, Event};

impl Engine {
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

    pub(super) fn new_group(
        &mut self,
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
        let provider = self.provider();
        self.store.begin()?;
        let r = (|| -> Result<(), Error> {
            MlsGroup::new_with_group_id(
                &provider,
                &mls::signer(&self.keys.device),
                &mls::create_config(cs, group_extensions)?,
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

    pub(super) async fn add_own_devices(
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
        let row = self
            .store
            .conversation(conv)?
            .ok_or_else(|| Error::not_found("no such conversation"))?;
        if row.kind == ConversationKind::Dm {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "a DM is between two accounts: create a group to talk with more people",
            ));
        }
        let present: BTreeSet<[u8; 32]> = match mls::load(&self.provider(), conv)? {
            Some(g) => mls::member_devices(&g)
                .into_iter()
                .map(|(_, d)| d)
                .collect(),
            None => return Err(Error::not_found("no such active conversation")),
        };
        let mut identities = Vec::new();
        let mut devices = Vec::new();
        for u in usernames {
            let m = self.resolve_user(net, u).await?;
            if m.devices.iter().any(|d| present.contains(d)) {
                return Err(Error::new(
                    ErrorCode::AlreadyMember,
                    format!("{u} is already a member; nothing was changed"),
                ));
            }
            identities.push(m.identity_key);
            devices.extend(m.devices);
        }
        self.add_devices(net, conv, identities, devices, events)
            .await
    }

    /// Fetches KeyPackages and hybrid keys of `devices` not yet in the group and commits
    /// adding them all at once.
    pub(super) async fn add_devices(
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
        if self.store.conversation(conv)?.map(|r| r.kind) == Some(ConversationKind::Dm) {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "nobody is removed from a DM: leave it instead",
            ));
        }
        if let Some(admins) = roles::admins(group.extensions()) {
            if !admins.contains(&self.my_identity()?) && m.identity_key != self.my_identity()? {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    roles::Violation::RemoveByNonAdmin.to_string(),
                ));
            }
        }
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

    /// Makes `username` an admin of the group (ADR 0032). Only an admin may; `AlreadyMember`
    /// when they already are one.
    pub(crate) async fn promote(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        username: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let m = self.resolve_user(net, username).await?;
        let group = mls::load(&self.provider(), conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        let Some(mut admins) = roles::admins(group.extensions()) else {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "this conversation has no roles (a DM, or a group made before roles)",
            ));
        };
        if !admins.contains(&self.my_identity()?) {
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
        if !admins.insert(m.identity_key) {
            return Err(Error::new(
                ErrorCode::AlreadyMember,
                format!("{username} is already an admin; nothing was changed"),
            ));
        }
        self.commit(
            net,
            conv,
            Change::Promote {
                admins,
                promote: vec![m.identity_key],
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

    pub(super) fn drop_group(&self, conv: &ConversationId) -> Result<(), Error> {
        let provider = self.provider();
        if let Some(mut g) = mls::load(&provider, conv)? {
            g.delete(provider.storage()).map_err(mls_err)?;
        }
        self.store.set_active(conv, false)?;
        Ok(())
    }

    /// Remove proposals for every leaf of this account in `conv`, own leaf last.
    pub(super) fn leave_proposals(
        &self,
        conv: &ConversationId,
        me: &[u8; 32],
    ) -> Result<Vec<Vec<u8>>, Error> {
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
