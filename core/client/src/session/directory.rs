//! Directory: usernames, identity and device keys of other users, safety numbers.

use std::collections::BTreeSet;

use bytes::Bytes;
use openmls::prelude::*;
use qpq_proto::{method, v1};

use super::*;
use crate::error::{Error, ErrorCode};
use crate::mls;
use crate::roles;
use crate::types::{ConversationId, Member};

/// A user as the directory answered: username, identity key and device keys, as raw bytes
/// for the engine; [`Member`] is its public form.
pub(super) struct Resolved {
    pub(super) username: String,
    pub(super) identity: [u8; 32],
    pub(super) devices: Vec<[u8; 32]>,
}

impl From<Resolved> for Member {
    fn from(r: Resolved) -> Member {
        Member {
            username: r.username,
            identity_key: Some(r.identity.into()),
            devices: r.devices.into_iter().map(Into::into).collect(),
        }
    }
}

impl Session {
    /// Looks a user up on the server and remembers its devices.
    pub(crate) async fn resolve_user(&self, username: &str) -> Result<Member, Error> {
        self.resolve(username).await.map(Member::from)
    }

    /// Looks a user up on the server and remembers its devices, for the engine.
    pub(super) async fn resolve(&self, username: &str) -> Result<Resolved, Error> {
        let r: v1::ResolveUserResponse = self
            .call(
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
        let devices = r
            .device_keys
            .iter()
            .map(|d| key32(d, "device key"))
            .collect::<Result<Vec<_>, Error>>()?;
        self.engine()?.store.transaction(|s| -> Result<(), Error> {
            for d in &devices {
                s.put_device(d, &identity, username)?;
            }
            Ok(())
        })?;
        Ok(Resolved {
            username: username.to_string(),
            identity,
            devices,
        })
    }

    /// Learns usernames of every device of a channel's members.
    pub(super) async fn refresh_directory(&self, conv: &ConversationId) -> Result<(), Error> {
        let r: v1::ListGroupMembersResponse = self
            .call(
                method::LIST_GROUP_MEMBERS,
                &v1::ListGroupMembersRequest {
                    channel_id: Bytes::copy_from_slice(&conv[..]),
                },
            )
            .await?;
        self.engine()?.store.transaction(|s| -> Result<(), Error> {
            for m in r.members {
                let id = key32(&m.identity_key, "identity key")?;
                for d in &m.device_keys {
                    s.put_device(&key32(d, "device key")?, &id, &m.username)?;
                }
            }
            Ok(())
        })
    }

    /// The safety number between this account and `username`.
    pub(crate) async fn safety_number(&self, username: &str) -> Result<String, Error> {
        let m = self.resolve(username).await?;
        self.engine()?.safety_number(&m.identity, &m.username)
    }
}

impl Engine {
    /// The username of `device`, when the directory told this device.
    pub(super) fn known_username(&self, device: &[u8; 32]) -> Result<Option<String>, Error> {
        Ok(self.store.device(device)?.map(|(_, name)| name))
    }

    /// The username of `device`, or `device-<first 4 bytes in hex>` when unknown.
    pub(super) fn username_of(&self, device: &[u8; 32]) -> Result<String, Error> {
        Ok(self
            .known_username(device)?
            .unwrap_or_else(|| format!("device-{}", hex::encode(&device[..4]))))
    }

    /// Refuses a send into a conversation where no other account is left (everyone else
    /// left or was removed): it would be stored for nobody and reported as sent.
    /// Refuses a send when nobody but this account is left in `group` (issue 10 item 1).
    pub(super) fn someone_else_in(&self, group: &MlsGroup) -> Result<(), Error> {
        let (mine, me) = (self.my_device(), self.my_identity()?);
        for (_, d) in mls::member_devices(group) {
            if d != mine && self.identity_of(&d)? != Some(me) {
                return Ok(());
            }
        }
        Err(Error::not_found(
            "nobody else is in this conversation (the others left): nothing was sent",
        ))
    }

    pub(super) fn identity_of(&self, device: &[u8; 32]) -> Result<Option<[u8; 32]>, Error> {
        Ok(self.store.device(device)?.map(|(id, _)| id))
    }

    /// Each Remove of a staged commit: proposer and removed, by device and account.
    pub(super) fn removes_seen(
        &self,
        group: &MlsGroup,
        sc: &StagedCommit,
        committer: Option<[u8; 32]>,
    ) -> Result<Vec<roles::RemoveSeen>, Error> {
        let device_at = |leaf: LeafNodeIndex| group.member(leaf).and_then(mls::device_of);
        let mut out = Vec::new();
        for q in sc.remove_proposals() {
            let proposer_device = match q.sender() {
                Sender::Member(l) => device_at(*l),
                // An external commit's Remove is proposed by the joining device itself.
                Sender::NewMemberCommit => committer,
                _ => None,
            };
            let (Some(proposer_device), Some(removed_device)) =
                (proposer_device, device_at(q.remove_proposal().removed()))
            else {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "commit refused: a Remove from or of an unknown leaf",
                ));
            };
            out.push(roles::RemoveSeen {
                proposer_device,
                proposer: self.identity_of(&proposer_device)?,
                removed_device,
                removed: self.identity_of(&removed_device)?,
            });
        }
        Ok(out)
    }

    /// Usernames of the members of a group (sorted, unique).
    pub(super) fn member_names(&self, group: &MlsGroup) -> Result<Vec<String>, Error> {
        let mut names = BTreeSet::new();
        for (_, d) in mls::member_devices(group) {
            names.insert(self.username_of(&d)?);
        }
        Ok(names.into_iter().collect())
    }

    fn safety_number(&self, other_identity: &[u8; 32], other: &str) -> Result<String, Error> {
        Ok(qpq_crypto::safety::safety_number(
            &self.my_identity()?,
            &self.my_username()?,
            other_identity,
            other,
        ))
    }
}
