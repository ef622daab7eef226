//! Test hooks (`Client::debug_*`): simulated crashes, encryption without sending, injection
//! of raw MLS bytes, state hashes. Not part of the supported API.

use std::collections::BTreeSet;

use bytes::Bytes;
use prost::Message as _;
use qpq_proto::v1;

use super::commit::Change;
use super::*;
use crate::body::Body;
use crate::error::Error;
use crate::types::{ConversationId, DeviceKey, Event};

/// Test hook: what a client has done so far, counted (never timed).
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugCounters {
    /// Calls made to the server, by method id.
    pub calls: std::collections::BTreeMap<u16, u64>,
    /// Commits of this client's store (each an fsync).
    pub commits: u64,
    /// `MlsGroup` loads from this client's store (a group kept in memory is not loaded).
    pub group_loads: u64,
}

impl Session {
    /// Test hook: the counters (see [`DebugCounters`]).
    pub(crate) fn debug_counters(&self) -> Result<DebugCounters, Error> {
        let e = self.engine()?;
        Ok(DebugCounters {
            calls: self.net.calls.snapshot(),
            commits: e.store.commits(),
            group_loads: e.store.group_loads(),
        })
    }
}

impl Engine {
    /// Test hook: encrypts `text` as a text message (as the outbox would) without storing or
    /// sending it. The ratchet step it used is kept, as for a sent message.
    pub(crate) fn debug_encrypt(
        &self,
        conv: &ConversationId,
        text: &str,
    ) -> Result<Vec<u8>, Error> {
        let id: [u8; 16] = rand::random();
        let plaintext = v1::AppMessage {
            id: Bytes::copy_from_slice(&id[..]),
            sent_at: now_ms(),
            sender_device: Bytes::copy_from_slice(&self.my_device()),
            kind: Some(Body::Text(text.to_string()).to_kind()),
        }
        .encode_to_vec();
        self.store.transaction(|_| -> Result<_, Error> {
            Ok(self.encrypt(conv, &plaintext).map(|(ct, _)| ct))
        })?
    }

    /// Test hook: runs raw MLS bytes through the receive path ([`Engine::process_one`])
    /// against this device's group state, then rolls everything back.
    pub(crate) fn debug_process(&self, conv: &ConversationId, bytes: &[u8]) -> Result<(), Error> {
        let m = debug_queued(conv, bytes);
        self.store
            .scratch(|_| self.process_one(&m, &mut Vec::new(), &mut BTreeSet::new()))
    }

    /// Test hook: delivers each `(conversation, MLS bytes)` as if the server had queued it
    /// under a new sequence number, through the same per-message transaction as a fetch
    /// (without touching the stored sequence number, the network or proposals to commit).
    /// Reports, per input, what processing gave and whether any stored state changed.
    pub(crate) fn debug_inject(
        &self,
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
    pub(crate) fn debug_self_update(&self, conv: &ConversationId) -> Result<Vec<u8>, Error> {
        let r = self
            .store
            .scratch(|_| self.build_commit(conv, &Change::Update));
        Ok(r?
            .ok_or_else(|| Error::internal("a self-update always makes a commit"))?
            .payload
            .to_vec())
    }

    /// Test hook: the MLS bytes of a commit removing every leaf of `devices` from `conv`,
    /// built without the role check (as a rule-breaking member would) and neither sent nor
    /// merged.
    pub(crate) fn debug_remove_commit(
        &self,
        conv: &ConversationId,
        devices: &[DeviceKey],
    ) -> Result<Vec<u8>, Error> {
        let change = Change::Remove {
            devices: devices.iter().map(|d| d.to_bytes()).collect(),
            remove_members: Vec::new(),
        };
        let r = self.store.scratch(|_| self.build_commit(conv, &change));
        Ok(r?
            .ok_or_else(|| Error::not_found("none of these devices is in the group"))?
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
        channel_id: Bytes::copy_from_slice(&conv[..]),
        payload: Bytes::copy_from_slice(bytes),
        kind: v1::MessageKind::Application as i32,
        ..Default::default()
    }
}
