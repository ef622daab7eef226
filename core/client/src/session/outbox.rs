//! Sending. [`Engine::queue_message`] stores a message and its outbox entry in one transaction
//! and returns: that is all `send` waits for. [`Session::flush_outbox`] (background receive or
//! `sync`) later encrypts each entry in the group's current epoch and sends it, in order,
//! idempotently by message id, and reports `MessageSent` or `MessageFailed`.

use std::collections::BTreeSet;

use bytes::Bytes;
use prost::Message as _;
use qpq_proto::{method, v1};

use super::commit::Change;
use super::*;
use crate::body::Body;
use crate::error::{Error, ErrorCode};
use crate::mls;
use crate::store::OutboxRow;
use crate::types::{ConversationId, Delivery, Event, Message, MessageId};

/// The epoch of an outbox entry that was never encrypted (encrypted when first sent).
const NOT_ENCRYPTED: u64 = u64::MAX;

/// What to do with the next outbox entry.
enum Step {
    /// Send this Enqueue.
    Send(Box<v1::EnqueueRequest>),
    /// The group has proposals to commit before anything can be encrypted.
    CommitFirst,
    /// The entry can never be sent: reported and dropped.
    Failed(Error),
}

impl Session {
    /// Sends every outbox entry in order (the caller holds the operation lock). A network or
    /// rate-limit failure stops the flush and is returned (the rest stays queued, sent later
    /// with the same ids); a permanent refusal fails that one message (`MessageFailed`) and
    /// the flush goes on.
    pub(crate) async fn flush_outbox_locked(&self, events: &mut Vec<Event>) -> Result<(), Error> {
        let rows = {
            let e = self.engine()?;
            let mut rows = e.store.outbox()?;
            // Accepted already; only their bookkeeping waits for a transaction.
            rows.retain(|r| !e.is_unsettled(&r.id));
            rows
        };
        // Conversations whose entries wait (their proposals could not be committed): later
        // entries of the same conversation wait too, to keep the order.
        let mut blocked: BTreeSet<ConversationId> = BTreeSet::new();
        let mut committed: BTreeSet<ConversationId> = BTreeSet::new();
        for row in rows {
            if blocked.contains(&row.conversation) {
                continue;
            }
            let mut step = self.engine()?.outbox_step(&row)?;
            if matches!(step, Step::CommitFirst) && committed.insert(row.conversation) {
                let r = Box::pin(self.commit(&row.conversation, Change::Pending, events)).await;
                if let Err(e) = &r {
                    tracing::debug!("proposals not committed before sending: {e}");
                }
                step = self.engine()?.outbox_step(&row)?;
            }
            let req = match step {
                Step::Send(req) => *req,
                Step::CommitFirst => {
                    blocked.insert(row.conversation);
                    continue;
                }
                Step::Failed(e) => {
                    self.engine()?.fail_outgoing(&row, e, events)?;
                    continue;
                }
            };
            let r: Result<v1::EnqueueResponse, Error> = self.call(method::ENQUEUE, &req).await;
            match r {
                Ok(_) => self.engine()?.sent_outgoing(&row, events)?,
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::Network
                            | ErrorCode::Timeout
                            | ErrorCode::RateLimited
                            | ErrorCode::Unauthorized
                            | ErrorCode::Closed
                    ) =>
                {
                    return Err(e)
                }
                // Permanent refusal (no longer a member, too large): this message fails.
                Err(e) => self.engine()?.fail_outgoing(&row, e, events)?,
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Stores a new outgoing message and queues it, in one transaction; nothing is sent here.
    /// The message is encrypted in the same transaction when the group can encrypt now (no
    /// proposals to commit first), so sending it takes no further commit: this is the one
    /// durable commit before the network call. With `id` given and a message of that id
    /// already in the conversation, nothing is stored and the id is returned (an app's retry
    /// never duplicates).
    pub(crate) fn queue_message(
        &self,
        conv: &ConversationId,
        body: &Body,
        id: Option<MessageId>,
    ) -> Result<MessageId, Error> {
        body.check_sendable()?;
        let provider = self.provider();
        let mut group = mls::load(&provider, conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        if !group.is_active() {
            return Err(Error::not_found("this account is no longer a member"));
        }
        // Issue 10 item 1: a conversation nobody else is in (the others left) refuses sends.
        self.someone_else_in(&group)?;
        // Writing in a requested conversation accepts it (ADR 0060).
        if self.consent(conv)?.0 == crate::types::Consent::Requested {
            self.set_consent(conv, crate::types::Consent::Allowed)?;
        }
        if let Some(id) = id {
            if self.store.message_exists(conv, &id)? {
                group.keep();
                return Ok(id);
            }
        }
        let id: MessageId = id.unwrap_or_else(|| MessageId::from_bytes(rand::random()));
        let sent_at = now_ms();
        let plaintext = v1::AppMessage {
            id: Bytes::copy_from_slice(&id[..]),
            sent_at,
            sender_device: Bytes::copy_from_slice(&self.my_device()),
            kind: Some(body.to_kind()),
        }
        .encode_to_vec();
        let me = self.my_username()?;
        self.store.transaction(|s| -> Result<(), Error> {
            self.settle_sent(s)?;
            s.insert_message(
                &Message {
                    id,
                    conversation: *conv,
                    sender: me,
                    sender_device: self.my_device().into(),
                    body: body.clone(),
                    sent_at_ms: sent_at,
                    received_at_ms: 0,
                    outgoing: true,
                    delivery: Delivery::Queued,
                },
                now_ms(),
            )?;
            let (ciphertext, epoch) = if group.has_pending_proposals() {
                (Vec::new(), NOT_ENCRYPTED)
            } else {
                let m = group
                    .create_message(&provider, &mls::signer(&self.keys.device), &plaintext)
                    .map_err(mls_err)?;
                (mls::encode(&m)?, group.epoch().as_u64())
            };
            s.put_outbox(&OutboxRow {
                id,
                conversation: *conv,
                plaintext,
                ciphertext,
                epoch,
            })?;
            Ok(())
        })?;
        self.forget_settled();
        group.keep();
        Ok(id)
    }

    /// Decides what to do with one outbox entry; (re-)encrypts it in the current epoch when
    /// it was never encrypted or never accepted in its epoch (same id either way).
    fn outbox_step(&self, row: &OutboxRow) -> Result<Step, Error> {
        let provider = self.provider();
        let group = mls::load(&provider, &row.conversation)?;
        let Some(mut group) = group.filter(|g| g.is_active()) else {
            return Ok(Step::Failed(Error::not_found(
                "this account is no longer a member of the conversation",
            )));
        };
        if group.has_pending_proposals() {
            group.keep();
            return Ok(Step::CommitFirst);
        }
        // Everyone else left (their leave was committed after this message was queued).
        if let Err(e) = self.someone_else_in(&group) {
            group.keep();
            return Ok(Step::Failed(e));
        }
        let mut row = row.clone();
        if group.epoch().as_u64() != row.epoch {
            self.store.transaction(|s| -> Result<(), Error> {
                let m = group
                    .create_message(&provider, &mls::signer(&self.keys.device), &row.plaintext)
                    .map_err(mls_err)?;
                row.ciphertext = mls::encode(&m)?;
                row.epoch = group.epoch().as_u64();
                s.put_outbox(&row)?;
                Ok(())
            })?;
        }
        group.keep();
        Ok(Step::Send(Box::new(v1::EnqueueRequest {
            channel_id: Bytes::copy_from_slice(&row.conversation[..]),
            message_id: Bytes::copy_from_slice(&row.id[..]),
            payload: Bytes::from(row.ciphertext),
            kind: v1::MessageKind::Application as i32,
            ..Default::default()
        })))
    }

    /// The server accepted an outbox entry. Its bookkeeping (outbox entry deleted, message
    /// marked sent) joins the next transaction instead of taking a commit of its own
    /// ([`Engine::settle_sent`]); until then the entry is not sent again and reads show the
    /// message as sent. After a crash before that transaction, the entry is sent again with
    /// the same id, which the server de-duplicates.
    fn sent_outgoing(&self, row: &OutboxRow, events: &mut Vec<Event>) -> Result<(), Error> {
        self.sent_unsettled
            .borrow_mut()
            .push((row.conversation, row.id));
        events.push(Event::MessageSent {
            conversation: row.conversation,
            id: row.id,
        });
        Ok(())
    }

    /// Writes the bookkeeping of accepted outbox entries in `s`'s transaction (the caller's).
    /// Forgotten in memory only once that transaction committed: a rollback keeps them for
    /// the next one.
    pub(super) fn settle_sent(
        &self,
        s: &crate::store::Store,
    ) -> Result<(), crate::error::StoreError> {
        let pending = self.sent_unsettled.borrow().clone();
        for (conv, id) in &pending {
            s.delete_outbox(id)?;
            s.set_delivery(conv, id, Delivery::Sent)?;
        }
        Ok(())
    }

    /// After the transaction that ran [`Engine::settle_sent`] committed (the engine lock was
    /// held throughout, so nothing was added meanwhile).
    pub(super) fn forget_settled(&self) {
        self.sent_unsettled.borrow_mut().clear();
    }

    /// Writes the accepted entries' bookkeeping now, in a transaction of its own (when the
    /// loop is idle, and at shutdown). Nothing to do when there is none.
    pub(crate) fn settle_sent_now(&self) -> Result<(), Error> {
        if self.sent_unsettled.borrow().is_empty() {
            return Ok(());
        }
        self.store
            .transaction(|s| -> Result<(), Error> { Ok(self.settle_sent(s)?) })?;
        self.forget_settled();
        Ok(())
    }

    /// Accepted entries whose bookkeeping is not written yet.
    pub(crate) fn unsettled_sent(&self) -> usize {
        self.sent_unsettled.borrow().len()
    }

    /// True when the server accepted this message and its bookkeeping is not written yet.
    pub(super) fn is_unsettled(&self, id: &MessageId) -> bool {
        self.sent_unsettled.borrow().iter().any(|(_, x)| x == id)
    }

    /// An outbox entry can never be sent: dropped, marked failed, reported.
    fn fail_outgoing(
        &self,
        row: &OutboxRow,
        e: Error,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        tracing::debug!("outbox message failed: {e}");
        self.store.transaction(|s| -> Result<(), Error> {
            s.delete_outbox(&row.id)?;
            s.set_delivery(&row.conversation, &row.id, Delivery::Failed)?;
            Ok(())
        })?;
        events.push(Event::MessageFailed {
            conversation: row.conversation,
            id: row.id,
            code: e.code(),
            message: e.message().to_string(),
        });
        Ok(())
    }

    /// Encrypts application bytes in the group's current epoch, loading the group from the
    /// store (the test hook's path; sends go through the group cache).
    #[cfg(feature = "test-hooks")]
    pub(super) fn encrypt(
        &self,
        conv: &ConversationId,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, u64), Error> {
        let provider = self.provider();
        let mut group = mls::load(&provider, conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        let m = group
            .create_message(&provider, &mls::signer(&self.keys.device), plaintext)
            .map_err(mls_err)?;
        let out = (mls::encode(&m)?, group.epoch().as_u64());
        group.keep();
        Ok(out)
    }
}
