//! Read-only views: conversations, history pages and members.

use std::collections::BTreeMap;

use super::*;
use crate::error::Error;
use crate::mls;
use crate::store::ConversationRow;
use crate::types::{Conversation, ConversationId, ConversationKind, Member, Message};

impl Engine {
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

    pub(super) fn to_conversation(&self, row: ConversationRow) -> Result<Conversation, Error> {
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
        let (consent, invited_by) = self.consent(&row.id)?;
        Ok(Conversation {
            consent,
            invited_by,
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
        let mut out = self.store.messages(conv, limit, before)?;
        // Accepted by the server; the row says so once the next transaction commits.
        for m in &mut out {
            if m.delivery == crate::types::Delivery::Queued && self.is_unsettled(&m.id) {
                m.delivery = crate::types::Delivery::Sent;
            }
        }
        if before.is_none() {
            self.store.clear_unread(conv)?;
        }
        Ok(out)
    }
}

impl Session {
    /// Members of a conversation as the MLS group sees them, grouped by account; unknown
    /// devices are looked up on the server first (without the engine lock).
    pub(crate) async fn members(&self, conv: &ConversationId) -> Result<Vec<Member>, Error> {
        let unknown = {
            let e = self.engine()?;
            let group = mls::load(&e.provider(), conv)?
                .ok_or_else(|| Error::not_found("no such active conversation"))?;
            mls::member_devices(&group)
                .iter()
                .any(|(_, d)| matches!(e.store.device(d), Ok(None)))
        };
        if unknown {
            let _ = self.refresh_directory(conv).await;
        }
        let e = self.engine()?;
        let group = mls::load(&e.provider(), conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        let mut by_id: BTreeMap<String, Member> = BTreeMap::new();
        for (_, d) in mls::member_devices(&group) {
            let (identity, name) = match e.store.device(&d)? {
                Some((id, name)) => (Some(id), name),
                None => (None, format!("device-{}", hex::encode(&d[..4]))),
            };
            by_id
                .entry(name.clone())
                .or_insert_with(|| Member {
                    username: name,
                    identity_key: identity.map(Into::into),
                    devices: vec![],
                })
                .devices
                .push(d.into());
        }
        Ok(by_id.into_values().collect())
    }
}
