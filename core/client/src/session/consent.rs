//! Consent and block (issue 17 item 18, ADR 0060). A conversation this account joins by a
//! Welcome from someone who is not a contact (no other conversation with them that this
//! account created, accepted or wrote in) arrives as [`Consent::Requested`]: its messages are
//! stored and shown as usual, flagged by the conversation's state, until the user accepts or
//! declines it. A block is a server-side relation: the blocked account's messages skip this
//! account's devices, and it cannot make this account a member of anything.

use bytes::Bytes;
use qpq_proto::{method, v1};

use super::*;
use crate::error::Error;
use crate::mls;
use crate::types::{Consent, ConversationId, Event};

/// Meta key prefix of a conversation's consent (value: state byte, then the inviter's
/// username). No entry means `Allowed` (a conversation this device created).
const META_CONSENT: &str = "consent:";

fn consent_key(conv: &ConversationId) -> String {
    format!("{META_CONSENT}{}", conv.to_hex())
}

fn encode(c: Consent) -> u8 {
    match c {
        Consent::Allowed => b'a',
        Consent::Requested => b'r',
        Consent::Denied => b'd',
    }
}

impl Engine {
    /// A conversation's consent state and who invited this account into it.
    pub(super) fn consent(
        &self,
        conv: &ConversationId,
    ) -> Result<(Consent, Option<String>), Error> {
        let Some(v) = self.store.get_meta(&consent_key(conv))? else {
            return Ok((Consent::Allowed, None));
        };
        let state = match v.first() {
            Some(b'r') => Consent::Requested,
            Some(b'd') => Consent::Denied,
            _ => Consent::Allowed,
        };
        let inviter = v
            .get(1..)
            .filter(|n| !n.is_empty())
            .and_then(|n| String::from_utf8(n.to_vec()).ok());
        Ok((state, inviter))
    }

    /// Sets a conversation's consent state, keeping who invited.
    pub(super) fn set_consent(&self, conv: &ConversationId, state: Consent) -> Result<(), Error> {
        let (_, inviter) = self.consent(conv)?;
        self.put_consent(conv, state, inviter.as_deref())
    }

    fn put_consent(
        &self,
        conv: &ConversationId,
        state: Consent,
        inviter: Option<&str>,
    ) -> Result<(), Error> {
        let mut v = vec![encode(state)];
        v.extend_from_slice(inviter.unwrap_or_default().as_bytes());
        self.store.set_meta(&consent_key(conv), &v)?;
        Ok(())
    }

    /// The consent of a conversation just joined by a Welcome sent from `inviter_device`:
    /// `Allowed` when the inviter is this account (another of its devices) or a contact,
    /// `Requested` otherwise. A conversation joined again keeps its state.
    pub(super) fn consent_on_welcome(
        &self,
        conv: &ConversationId,
        inviter_device: &[u8],
    ) -> Result<(), Error> {
        if self.store.get_meta(&consent_key(conv))?.is_some() {
            return Ok(());
        }
        let Ok(device) = <[u8; 32]>::try_from(inviter_device) else {
            return self.put_consent(conv, Consent::Requested, None);
        };
        let name = self.username_of(&device)?;
        let inviter = self.identity_of(&device)?;
        let contact = match inviter {
            Some(id) if id == self.my_identity()? => true,
            Some(id) => self.is_contact(conv, &id)?,
            None => false,
        };
        let state = if contact {
            Consent::Allowed
        } else {
            Consent::Requested
        };
        self.put_consent(conv, state, Some(&name))
    }

    /// Whether the account `identity` is a member of another active conversation whose
    /// consent is `Allowed`.
    fn is_contact(&self, except: &ConversationId, identity: &[u8; 32]) -> Result<bool, Error> {
        let provider = self.provider();
        for row in self.store.conversations()? {
            if row.id == *except || !row.active {
                continue;
            }
            if self.consent(&row.id)?.0 != Consent::Allowed {
                continue;
            }
            let Some(group) = mls::load(&provider, &row.id)? else {
                continue;
            };
            for (_, d) in mls::member_devices(&group) {
                if self.identity_of(&d)?.as_ref() == Some(identity) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Accepts a requested conversation (also done by sending in it).
    pub(crate) fn accept(&self, conv: &ConversationId) -> Result<(), Error> {
        if self.store.conversation(conv)?.is_none() {
            return Err(Error::not_found("no such conversation"));
        }
        self.set_consent(conv, Consent::Allowed)
    }
}

impl Session {
    /// Declines a conversation: leaves it (when still a member) and marks it `Denied`; with
    /// `block`, also blocks whoever invited this account into it.
    pub(crate) async fn decline(
        &self,
        conv: &ConversationId,
        block: bool,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let (active, inviter) = {
            let e = self.engine()?;
            let row = e
                .store
                .conversation(conv)?
                .ok_or_else(|| Error::not_found("no such conversation"))?;
            (row.active, e.consent(conv)?.1)
        };
        if active {
            self.leave(conv, events).await?;
        }
        self.engine()?.set_consent(conv, Consent::Denied)?;
        if block {
            if let Some(name) = inviter {
                self.block(&name, true).await?;
            }
        }
        Ok(())
    }

    /// Blocks (`on`) or unblocks the account `username` on the server.
    pub(crate) async fn block(&self, username: &str, on: bool) -> Result<(), Error> {
        let who = self.resolve(username).await?;
        let identity_key = Bytes::copy_from_slice(&who.identity);
        if on {
            let _: v1::BlockUserResponse = self
                .call(method::BLOCK_USER, &v1::BlockUserRequest { identity_key })
                .await?;
        } else {
            let _: v1::UnblockUserResponse = self
                .call(
                    method::UNBLOCK_USER,
                    &v1::UnblockUserRequest { identity_key },
                )
                .await?;
        }
        Ok(())
    }

    /// Usernames of the accounts this account blocks.
    pub(crate) async fn blocked(&self) -> Result<Vec<String>, Error> {
        let r: v1::ListBlockedResponse = self
            .call(method::LIST_BLOCKED, &v1::ListBlockedRequest {})
            .await?;
        Ok(r.users.into_iter().map(|u| u.username).collect())
    }
}
