//! Receiving: fetch the queue, process each message in its own transaction (exactly once,
//! by sequence number), Ack only what is durable, commit received proposals. Fetches and Acks
//! run without the engine lock; each message is applied under it, so reads interleave.

use std::collections::BTreeSet;

use bytes::Bytes;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use prost::Message as _;
use qpq_proto::{method, v1};

use super::commit::Change;
use super::*;
use crate::body::Body;
use crate::error::{Error, ErrorCode, MlsError, StoreError};
use crate::mls;
use crate::roles;
use crate::store::ConversationRow;
use crate::types::{ConversationId, Delivery, Event, Message};

/// Why one message's transaction failed.
enum Failed {
    /// Processing refused the message: it is skipped (its sequence number is recorded).
    Processing(Error),
    /// The store failed (e.g. a full disk at commit): nothing is kept; the next sync retries.
    Store(StoreError),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        Failed::Store(e)
    }
}

impl Session {
    /// Everything queued now: pending commits resolved, queue fetched and processed, received
    /// proposals committed, outbox flushed, KeyPackages topped up. Takes the operation lock.
    pub(crate) async fn sync(&self, events: &mut Vec<Event>) -> Result<(), Error> {
        let _ops = self.ops().await;
        self.sync_from(events, None, None).await?;
        self.ack_processed(true).await?;
        self.flush_outbox_locked(events).await?;
        self.engine()?.settle_sent_now()?;
        self.replenish_key_packages_locked(false).await
    }

    /// [`Session::sync`] without flushing the outbox, for a caller that holds the operation
    /// lock already (a commit first catches up with the group).
    pub(super) async fn sync_locked(&self, events: &mut Vec<Event>) -> Result<(), Error> {
        Box::pin(self.sync_from(events, None, None)).await
    }

    /// Catches up (the caller holds the operation lock), starting with messages a FetchWait
    /// or pushes already returned (saving the Fetch that would return them again; the caller
    /// hands only a page that starts right after the last processed sequence number, with
    /// `more` set when the queue may hold more). Messages at or below the last processed
    /// sequence number are skipped as always, so stale prefetched ones are harmless. With a
    /// `sink` (the background loop), events go there as soon as each message is durable
    /// instead of into `events`, and the Ack is left to [`Session::ack_processed`].
    pub(crate) async fn sync_from(
        &self,
        events: &mut Vec<Event>,
        mut prefetched: Option<v1::FetchResponse>,
        sink: Option<&EventSink>,
    ) -> Result<(), Error> {
        /// Most messages asked for per page.
        const PAGE: u32 = 256;
        self.resolve_pending_commits(events).await?;
        let mut proposals = BTreeSet::new();
        loop {
            let page = match prefetched.take() {
                Some(page) => page,
                None => {
                    let after = self.engine()?.store.get_u64(META_LAST_SEQ)?;
                    self.call(
                        method::FETCH,
                        &v1::FetchRequest {
                            after_seq: after,
                            limit: PAGE,
                            channel_id: Bytes::new(),
                        },
                    )
                    .await?
                }
            };
            if page.messages.is_empty() {
                break;
            }
            // Only the server's flag says whether more is queued: a page's size does not (the
            // server caps pages at its per-connection response budget, R-2). A server that
            // never sets it hands the rest to the next FetchWait.
            let more = page.more;
            self.process_batch(page.messages, events, &mut proposals, sink)
                .await?;
            if !more {
                break;
            }
        }
        // Broken conversations (ADR 0054) rejoin once the queue is processed, so a commit
        // already queued that heals them is seen first.
        self.rejoin_broken(events).await?;
        for conv in proposals {
            let mut ev = Vec::new();
            // Boxed: commit() calls sync again.
            let r = Box::pin(self.commit(&conv, Change::Pending, &mut ev)).await;
            events.extend(ev);
            if let Err(e) = r {
                tracing::debug!("could not commit pending proposals: {e}");
            }
        }
        Ok(())
    }

    async fn process_batch(
        &self,
        mut msgs: Vec<v1::QueuedMessage>,
        events: &mut Vec<Event>,
        proposals: &mut BTreeSet<ConversationId>,
        sink: Option<&EventSink>,
    ) -> Result<(), Error> {
        msgs.sort_by_key(|m| m.seq);
        // Learn usernames first (outside any transaction).
        let mut refresh = BTreeSet::new();
        {
            let e = self.engine()?;
            for m in &msgs {
                let unknown = <[u8; 32]>::try_from(&m.sender_device[..])
                    .map(|d| matches!(e.store.device(&d), Ok(None)))
                    .unwrap_or(false);
                if unknown
                    || m.kind == v1::MessageKind::Welcome as i32
                    || m.kind == v1::MessageKind::Commit as i32
                {
                    if let Ok(c) = ConversationId::from_slice(&m.channel_id) {
                        refresh.insert(c);
                    }
                }
            }
        }
        for c in refresh {
            let _ = self.refresh_directory(&c).await;
        }
        let mut last = self.engine()?.store.get_u64(META_LAST_SEQ)?;
        for m in msgs {
            if m.seq <= last {
                continue;
            }
            // One message per lock: reads get in between.
            let e = self.engine()?;
            match e.apply_one(&m, true, proposals)? {
                Ok(local) => events.extend(local),
                Err(err) => {
                    tracing::debug!("queued message {} not processed: {err}", m.seq);
                    e.note_broken_commit(&m, &err, events)?;
                }
            }
            drop(e);
            last = m.seq;
            // Durable now: the app may see it before the Ack (which only lets the server
            // forget it; a lost Ack means a redelivery that is skipped by sequence number).
            if let Some(sink) = sink {
                sink(std::mem::take(events));
            }
        }
        // Ack only what is durably processed. The background loop (with a sink) batches its
        // Acks instead (`ack_processed`): an unacked message stays queued on the server, and a
        // redelivery of it is skipped by sequence number.
        if sink.is_none() {
            self.ack_up_to(last).await?;
        }
        Ok(())
    }

    /// Acks everything processed (the last processed sequence number) when anything is
    /// unacked and `force` is set or at least [`ACK_BATCH`] messages are waiting. One Ack
    /// covers the whole range.
    pub(crate) async fn ack_processed(&self, force: bool) -> Result<(), Error> {
        let last = self.engine()?.last_seq();
        let acked = self.acked.load(std::sync::atomic::Ordering::SeqCst);
        if last > acked && (force || last - acked >= ACK_BATCH) {
            self.ack_up_to(last).await?;
        }
        Ok(())
    }

    /// True when processed messages wait for their Ack.
    pub(crate) fn unacked(&self) -> bool {
        let acked = self.acked.load(std::sync::atomic::Ordering::SeqCst);
        self.engine().map(|e| e.last_seq() > acked).unwrap_or(false)
    }

    async fn ack_up_to(&self, last: u64) -> Result<(), Error> {
        if last == 0 {
            return Ok(());
        }
        let _: v1::AckResponse = self
            .call(
                method::ACK,
                &v1::AckRequest {
                    up_to_seq: last,
                    seqs: vec![],
                },
            )
            .await?;
        self.acked
            .fetch_max(last, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// The background loop Acks once this many processed messages wait (or after
/// `client::ACK_DELAY`, or before a sync returns).
pub(crate) const ACK_BATCH: u64 = 64;

impl Engine {
    /// Processes one queued message in its own transaction. A message that cannot be
    /// processed leaves no trace (its changes are rolled back) and is reported in the inner
    /// result; with `record_seq` its sequence number is stored either way, so it is never
    /// processed twice. The outer error is a storage failure (e.g. a full disk at commit);
    /// then nothing of the message is kept and no transaction stays open, so the next sync
    /// retries it.
    pub(super) fn apply_one(
        &self,
        m: &v1::QueuedMessage,
        record_seq: bool,
        proposals: &mut BTreeSet<ConversationId>,
    ) -> Result<Result<Vec<Event>, Error>, Error> {
        let mut local = Vec::new();
        let mut touched = BTreeSet::new();
        let r = self.store.transaction(|s| -> Result<(), Failed> {
            self.process_one(m, &mut local, &mut touched)
                .map_err(Failed::Processing)?;
            if record_seq {
                s.set_u64(META_LAST_SEQ, m.seq)?;
                // Accepted sends' bookkeeping shares this commit (see `sent_outgoing`).
                self.settle_sent(s)?;
            }
            Ok(())
        });
        match r {
            Ok(()) => {
                if record_seq {
                    self.forget_settled();
                }
                proposals.extend(touched);
                Ok(Ok(local))
            }
            Err(Failed::Store(e)) => Err(e.into()),
            Err(Failed::Processing(e)) => {
                if record_seq {
                    self.store.set_u64(META_LAST_SEQ, m.seq)?;
                }
                Ok(Err(e))
            }
        }
    }

    pub(super) fn process_one(
        &self,
        m: &v1::QueuedMessage,
        events: &mut Vec<Event>,
        proposals: &mut BTreeSet<ConversationId>,
    ) -> Result<(), Error> {
        let conv = id16(&m.channel_id, "channel id")?;
        if m.kind == v1::MessageKind::Welcome as i32 {
            return self.process_welcome(&conv, &m.payload, &m.sender_device, events);
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
        let external = matches!(processed.sender(), Sender::NewMemberCommit);
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let app = v1::AppMessage::decode(&app.into_bytes()[..])
                    .map_err(|e| MlsError::Decrypt(format!("app message: {e}")))?;
                let Some(device) = sender_device else {
                    return Err(
                        MlsError::Decrypt("sender without a device credential".into()).into(),
                    );
                };
                // Receipts and typing notices are not messages; nothing to store.
                let Some(body) = app.kind.and_then(Body::from_kind) else {
                    return Ok(());
                };
                let outgoing = self.identity_of(&device)?
                    == self.keys.identity.as_ref().map(|k| k.public_key());
                let msg = Message {
                    id: id16(&app.id, "message id")
                        .map_err(|_| Error::crypto("app message id is not 16 bytes"))?,
                    conversation: conv,
                    sender: self.username_of(&device)?,
                    sender_device: device.into(),
                    body,
                    sent_at_ms: app.sent_at,
                    received_at_ms: 0,
                    outgoing,
                    delivery: if outgoing {
                        Delivery::Sent
                    } else {
                        Delivery::Received
                    },
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
                // Roles (ADR 0032): a commit that breaks them is refused by every member, so
                // the group does not fork (the server refuses it first).
                let seen = self.removes_seen(&group, &sc, sender_device)?;
                // An external commit only re-joins a device that is in the group already
                // (ADR 0054): it removes that device's old leaf.
                if external && !seen.iter().any(|r| Some(r.removed_device) == sender_device) {
                    return Err(Error::new(
                        ErrorCode::Forbidden,
                        "commit refused: an external commit from a device not in the group",
                    ));
                }
                let committer = match sender_device {
                    Some(d) => self.identity_of(&d)?,
                    None => None,
                };
                if let Err(v) = roles::check_commit(
                    roles::admins(group.extensions()).as_ref(),
                    roles::admins(sc.group_context().extensions()).as_ref(),
                    committer,
                    &seen,
                ) {
                    return Err(Error::new(
                        ErrorCode::Forbidden,
                        format!("commit refused: {v}"),
                    ));
                }
                let actors = self.actors(sender_device, &seen)?;
                let before = self.member_names(&group)?;
                let removed = sc.self_removed();
                group.merge_staged_commit(&provider, *sc).map_err(mls_err)?;
                self.note_healed(&conv, events)?;
                if removed {
                    self.store.set_active(&conv, false)?;
                    let (by, left) = actors.me_removed_by.unwrap_or((None, false));
                    events.push(Event::Removed {
                        conversation: conv,
                        by,
                        left,
                    });
                } else {
                    let after = self.member_names(&group)?;
                    let epoch = group.epoch().as_u64();
                    push_members_changed(events, &conv, &actors, &before, &after, epoch);
                }
            }
            _ => {}
        }
        // Processed: the group matches the store (kept for the next message unless the
        // transaction rolls back).
        group.keep();
        Ok(())
    }

    fn process_welcome(
        &self,
        conv: &ConversationId,
        payload: &[u8],
        inviter_device: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let (kind, name, group) = self.join_from_welcome(conv, payload)?;
        if group.group_id().as_slice() != &conv[..] {
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
        self.consent_on_welcome(conv, inviter_device)?;
        events.push(Event::ConversationJoined(self.conversation(conv)?));
        Ok(())
    }
}
