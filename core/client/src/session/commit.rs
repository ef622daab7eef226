//! The pending-commit protocol: a commit is built and stored before it is sent, merged only
//! after the server accepted it, resent after a crash or a lost connection, and rebuilt when
//! another member won the epoch race. The caller holds the operation lock; the engine lock is
//! taken to build, and again to merge, never across the Enqueue.

use std::collections::BTreeSet;

use bytes::Bytes;
use openmls::prelude::*;
use openmls_traits::types::AeadType;
use prost::Message as _;
use qpq_crypto::envelope::{self, HybridPublicKey};
use qpq_proto::{method, v1};
use rand::rngs::OsRng;

use super::*;
use crate::error::{Error, ErrorCode};
use crate::mls;
use crate::roles;
use crate::types::{ConversationId, ConversationKind, Event};

/// The change a commit makes.
pub(super) enum Change {
    /// Add these devices (KeyPackages and hybrid keys fetched), and these accounts on the server.
    Add {
        /// Each device's KeyPackage and, for a classic group, its hybrid key (ADR 0111:
        /// an X-Wing group's Welcome is not sealed, so it needs none).
        key_packages: Vec<([u8; 32], KeyPackage, Option<HybridPublicKey>)>,
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
    /// Make `promote` admins: the group's admin list becomes `admins`.
    Promote {
        admins: BTreeSet<[u8; 32]>,
        promote: Vec<[u8; 32]>,
    },
    /// Commit the proposals received (a member's leave).
    Pending,
}

impl Session {
    /// Builds, sends and merges one commit; on a lost epoch race processes the winner and
    /// retries. The group never forks: a commit is merged only after the server accepted it.
    pub(super) async fn commit(
        &self,
        conv: &ConversationId,
        change: Change,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        for _attempt in 0..COMMIT_ATTEMPTS {
            self.sync_locked(events).await?;
            let req = {
                let e = self.engine()?;
                let built = e.store.transaction(|s| -> Result<_, Error> {
                    let Some(req) = e.build_commit(conv, &change)? else {
                        return Ok(None);
                    };
                    s.set_meta(&pending_key(conv), &req.encode_to_vec())?;
                    Ok(Some(req))
                })?;
                let Some(req) = built else {
                    return Ok(());
                };
                if e.failpoint_at(Failpoint::CommitBuilt) {
                    return Err(crashed(Failpoint::CommitBuilt));
                }
                req
            };
            match self.send_pending_commit(conv, &req, events).await? {
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
    pub(super) async fn send_pending_commit(
        &self,
        conv: &ConversationId,
        req: &v1::EnqueueRequest,
        events: &mut Vec<Event>,
    ) -> Result<bool, Error> {
        let r: Result<v1::EnqueueResponse, Error> = self.call(method::ENQUEUE, req).await;
        self.engine()?.finish_pending_commit(conv, r, events)
    }

    /// Re-sends commits whose outcome is unknown (crash or network loss after building them).
    pub(super) async fn resolve_pending_commits(
        &self,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let pending = self.engine()?.store.meta_with_prefix(META_PENDING_COMMIT)?;
        for (_, value) in pending {
            let req = v1::EnqueueRequest::decode(&value[..])
                .map_err(|e| Error::new(ErrorCode::Storage, format!("pending commit: {e}")))?;
            let conv = id16(&req.channel_id, "channel id")?;
            self.send_pending_commit(&conv, &req, events).await?;
        }
        Ok(())
    }
}

/// The GroupInfo a commit makes (our groups use the ratchet tree extension, so openmls makes
/// one with the tree and the external public key), encoded for the Enqueue: members that
/// cannot process the commit rejoin from it (ADR 0054).
fn group_info(info: Option<MlsMessageOut>) -> Result<Bytes, Error> {
    let info = info.ok_or_else(|| Error::internal("the commit made no GroupInfo"))?;
    Ok(Bytes::from(mls::encode(&info)?))
}

/// The meta key of a conversation's pending commit.
fn pending_key(conv: &ConversationId) -> String {
    format!("{META_PENDING_COMMIT}{}", hex::encode(conv))
}

impl Engine {
    /// Applies the server's answer to a pending commit: merge it (Ok), drop it (refused), or
    /// keep it for a resend (network failure: outcome unknown).
    fn finish_pending_commit(
        &self,
        conv: &ConversationId,
        r: Result<v1::EnqueueResponse, Error>,
        events: &mut Vec<Event>,
    ) -> Result<bool, Error> {
        if r.is_ok() && self.failpoint_at(Failpoint::CommitSent) {
            return Err(crashed(Failpoint::CommitSent));
        }
        let key = pending_key(conv);
        let provider = self.provider();
        let mut group = mls::load(&provider, conv)?;
        match r {
            Ok(_) => {
                if let Some(g) = group.as_mut() {
                    let seen = match g.pending_commit() {
                        Some(sc) => self.removes_seen(g, sc, Some(self.my_device()))?,
                        None => Vec::new(),
                    };
                    let actors = self.actors(Some(self.my_device()), &seen)?;
                    let before = self.member_names(g)?;
                    self.store.transaction(|s| -> Result<(), Error> {
                        g.merge_pending_commit(&provider).map_err(mls_err)?;
                        s.delete_meta(&key)?;
                        Ok(())
                    })?;
                    let after = self.member_names(g)?;
                    let epoch = g.epoch().as_u64();
                    push_members_changed(events, conv, &actors, &before, &after, epoch);
                } else {
                    self.store.delete_meta(&key)?;
                }
                Ok(true)
            }
            Err(e) if matches!(e.code(), ErrorCode::Network | ErrorCode::Timeout) => Err(e),
            Err(e) => {
                self.store.transaction(|s| -> Result<(), Error> {
                    if let Some(g) = group.as_mut() {
                        g.clear_pending_commit(provider.storage())
                            .map_err(mls_err)?;
                    }
                    s.delete_meta(&key)?;
                    Ok(())
                })?;
                if e.code() == ErrorCode::Conflict {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Stages a commit in the group (pending) and returns the Enqueue that carries it, or
    /// None when there is nothing to do any more.
    pub(super) fn build_commit(
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
            channel_id: Bytes::copy_from_slice(&conv[..]),
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
                let todo: Vec<&([u8; 32], KeyPackage, Option<HybridPublicKey>)> = key_packages
                    .iter()
                    .filter(|(d, _, _)| !present.contains(d))
                    .collect();
                if todo.is_empty() {
                    return Ok(None);
                }
                let kps: Vec<KeyPackage> = todo.iter().map(|(_, kp, _)| kp.clone()).collect();
                let (commit, welcome, info) = group
                    .add_members(&provider, &signer, &kps)
                    .map_err(mls_err)?;
                req.group_info = group_info(info.map(MlsMessageOut::from))?;
                let welcome_bytes = mls::encode(&welcome)?;
                req.welcome = Bytes::from(if group.ciphersuite() == mls::PQ {
                    // ADR 0111: X-Wing HPKE already protects the Welcome's secrets; only the
                    // header is encrypted, under a key of the epoch the Welcome joins.
                    let sc = group
                        .pending_commit()
                        .ok_or_else(|| Error::internal("add_members staged no commit"))?;
                    let key = zeroize::Zeroizing::new(
                        sc.export_secret(
                            provider.crypto(),
                            welcome::HEADER_EXPORTER_LABEL,
                            &conv[..],
                            welcome::HEADER_KEY_LEN,
                        )
                        .map_err(mls_err)?,
                    );
                    let nonce: [u8; welcome::HEADER_NONCE_LEN] = rand::random();
                    let sealed_header = provider
                        .crypto()
                        .aead_encrypt(
                            AeadType::Aes128Gcm,
                            &key,
                            &welcome::header(*kind, name),
                            &nonce,
                            &welcome::header_aad(&conv[..]),
                        )
                        .map_err(mls_err)?;
                    welcome::mls_protected(&welcome_bytes, &nonce, &sealed_header)
                } else {
                    let wrapped = welcome::wrap(*kind, name, &welcome_bytes);
                    let recipients = todo
                        .iter()
                        .map(|(_, _, h)| {
                            h.as_ref().ok_or_else(|| {
                                Error::internal("a classic group's Welcome needs hybrid keys")
                            })
                        })
                        .collect::<Result<Vec<&HybridPublicKey>, Error>>()?;
                    envelope::seal(&mut OsRng, &recipients, &conv[..], &wrapped)?
                });
                req.payload = Bytes::from(mls::encode(&commit)?);
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
                let (commit, _, info) = group
                    .remove_members(&provider, &signer, &leaves)
                    .map_err(mls_err)?;
                req.group_info = group_info(info.map(MlsMessageOut::from))?;
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
                req.group_info = group_info(bundle.into_group_info_msg())?;
            }
            Change::Promote { admins, promote } => {
                let (commit, _, info) = group
                    .update_group_context_extensions(&provider, roles::extensions(admins)?, &signer)
                    .map_err(mls_err)?;
                req.group_info = group_info(info.map(MlsMessageOut::from))?;
                req.payload = Bytes::from(mls::encode(&commit)?);
                req.promote_members = promote.iter().map(|k| Bytes::copy_from_slice(k)).collect();
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
                let (commit, _, info) = group
                    .commit_to_pending_proposals(&provider, &signer)
                    .map_err(mls_err)?;
                req.group_info = group_info(info.map(MlsMessageOut::from))?;
                req.payload = Bytes::from(mls::encode(&commit)?);
            }
        }
        Ok(Some(req))
    }
}
