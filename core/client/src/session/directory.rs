//! Directory: usernames, identity and device keys of other users, safety numbers.

use std::collections::BTreeSet;

use std::time::Duration;

use bytes::Bytes;
use openmls::prelude::*;
use qpq_proto::{method, v1, Status};

use super::*;
use crate::error::{Error, ErrorCode, NetError};
use crate::mls;
use crate::roles;
use crate::types::{ConversationId, Member};

/// Most entries one ResolveUsers or FetchKeyPackages request may carry (the server's
/// `BATCH_MAX`, ADR 0110); longer lists go in several requests.
pub(super) const BATCH_MAX: usize = 1000;
/// How often a batch refused for the request budget is waited out and sent again.
const BATCH_RATE_WAITS: usize = 3;
/// Longest such wait; a longer one is the caller's to decide.
const BATCH_RATE_WAIT_MAX_MS: u64 = 10_000;

/// The error a batch entry's status stands for: what the single call would have failed with.
pub(super) fn entry_error(status: u32, retry_after_ms: u64, what: String) -> Error {
    let status = u8::try_from(status)
        .ok()
        .and_then(Status::from_code)
        .unwrap_or(Status::Internal);
    Error::from(NetError::Status {
        status,
        message: what,
        retry_after_ms,
    })
}

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

    /// A batched call (ADR 0110); `Ok(None)` when the server predates the method (it answered
    /// UnknownMethod), so the caller falls back on the single calls. A batch costs the
    /// account's request budget one token per entry, so a large one may leave the budget in
    /// debt and the next batch be refused whole (nothing done): that refusal is waited out
    /// a few times when the server says it is short.
    pub(super) async fn call_batch<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        m: u16,
        req: &Req,
    ) -> Result<Option<Resp>, Error> {
        let token = self.engine()?.token().ok_or_else(Error::not_logged_in)?;
        let mut waits = 0;
        loop {
            match self
                .net
                .call(m, req, Some(&token[..]), Duration::ZERO, true)
                .await
            {
                Ok(r) => return Ok(Some(r)),
                Err(e) if e.status() == Some(Status::UnknownMethod) => return Ok(None),
                Err(NetError::Status {
                    status: Status::RateLimited,
                    retry_after_ms,
                    ..
                }) if waits < BATCH_RATE_WAITS
                    && retry_after_ms > 0
                    && retry_after_ms <= BATCH_RATE_WAIT_MAX_MS =>
                {
                    waits += 1;
                    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Looks several users up in one round trip per [`BATCH_MAX`] (ResolveUsers) and
    /// remembers their devices in one store transaction. Fails as [`Session::resolve`] would
    /// for the first username that does not resolve. Falls back on one ResolveUser per user
    /// against a server without ResolveUsers.
    pub(super) async fn resolve_many(&self, usernames: &[&str]) -> Result<Vec<Resolved>, Error> {
        if usernames.len() <= 1 {
            let mut out = Vec::new();
            for u in usernames {
                out.push(self.resolve(u).await?);
            }
            return Ok(out);
        }
        let mut out = Vec::with_capacity(usernames.len());
        for chunk in usernames.chunks(BATCH_MAX) {
            let r: Option<v1::ResolveUsersResponse> = self
                .call_batch(
                    method::RESOLVE_USERS,
                    &v1::ResolveUsersRequest {
                        usernames: chunk.iter().map(|u| u.to_string()).collect(),
                    },
                )
                .await?;
            let Some(r) = r else {
                for u in chunk {
                    out.push(self.resolve(u).await?);
                }
                continue;
            };
            if r.users.len() != chunk.len() {
                return Err(Error::internal(
                    "server answered ResolveUsers with another number of users",
                ));
            }
            for (asked, u) in chunk.iter().zip(r.users) {
                match u.status {
                    0 => {}
                    4 => return Err(Error::not_found(format!("no user named {asked}"))),
                    other => return Err(entry_error(other, 0, format!("cannot look up {asked}"))),
                }
                out.push(Resolved {
                    username: u.username,
                    identity: key32(&u.identity_key, "identity key")?,
                    devices: u
                        .device_keys
                        .iter()
                        .map(|d| key32(d, "device key"))
                        .collect::<Result<Vec<_>, Error>>()?,
                });
            }
        }
        self.engine()?.store.transaction(|s| -> Result<(), Error> {
            for r in &out {
                for d in &r.devices {
                    s.put_device(d, &r.identity, &r.username)?;
                }
            }
            Ok(())
        })?;
        Ok(out)
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
