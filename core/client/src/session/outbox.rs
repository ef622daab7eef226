//! Sending: application messages are stored and queued in the outbox first, then sent in
//! order, idempotently by message id.

use bytes::Bytes;
use prost::Message as _;
use qpq_proto::{method, v1};

use super::commit::Change;
use super::*;
use crate::error::{Error, ErrorCode};
use crate::mls;
use crate::net::Net;
use crate::store::OutboxRow;
use crate::types::{ConversationId, Event, Message, MessageId};

impl Engine {
    pub(crate) async fn send_text(
        &mut self,
        net: &Net,
        conv: &ConversationId,
        text: &str,
        events: &mut Vec<Event>,
    ) -> Result<MessageId, Error> {
        let group = mls::load(&self.provider(), conv)?
            .ok_or_else(|| Error::not_found("no such active conversation"))?;
        if !group.is_active() {
            return Err(Error::not_found("this account is no longer a member"));
        }
        if group.has_pending_proposals() {
            self.commit(net, conv, Change::Pending, events).await?;
        }
        self.check_someone_else(conv)?;
        let (id, sent_at, plaintext) = self.text_plaintext(text);
        let me = self.my_username()?;
        self.store.begin()?;
        let r = (|| -> Result<(), Error> {
            let (ciphertext, epoch) = self.encrypt(conv, &plaintext)?;
            self.store.insert_message(
                &Message {
                    id,
                    conversation: *conv,
                    sender: me.clone(),
                    sender_device: self.my_device(),
                    text: text.to_string(),
                    sent_at_ms: sent_at,
                    received_at_ms: 0,
                    outgoing: true,
                },
                now_ms(),
            )?;
            self.store.put_outbox(&OutboxRow {
                id,
                conversation: *conv,
                plaintext: plaintext.clone(),
                ciphertext,
                epoch,
            })?;
            Ok(())
        })();
        match r {
            Ok(()) => self.store.commit()?,
            Err(e) => {
                self.store.rollback();
                return Err(e);
            }
        }
        match self.flush_outbox(net).await {
            Ok(()) => Ok(id),
            // Queued locally: sent on reconnect or the next sync.
            Err(e) if matches!(e.code(), ErrorCode::Network | ErrorCode::Timeout) => Ok(id),
            Err(e) => Err(e),
        }
    }

    /// A new text message: its id, send time and the AppMessage bytes MLS encrypts.
    pub(super) fn text_plaintext(&self, text: &str) -> (MessageId, u64, Vec<u8>) {
        let id: MessageId = rand::random();
        let sent_at = now_ms();
        let app = v1::AppMessage {
            id: Bytes::copy_from_slice(&id),
            sent_at,
            sender_device: Bytes::copy_from_slice(&self.my_device()),
            kind: Some(v1::app_message::Kind::Text(v1::Text {
                body: text.to_string(),
            })),
        };
        (id, sent_at, app.encode_to_vec())
    }

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
        Ok((mls::encode(&m)?, group.epoch().as_u64()))
    }

    /// Sends every outbox entry in order, idempotently by message id.
    pub(super) async fn flush_outbox(&mut self, net: &Net) -> Result<(), Error> {
        for mut o in self.store.outbox()? {
            let group = mls::load(&self.provider(), &o.conversation)?;
            let Some(group) = group.filter(|g| g.is_active()) else {
                self.store.delete_outbox(&o.id)?;
                continue;
            };
            if group.epoch().as_u64() != o.epoch {
                // Never accepted in its epoch: encrypt again in the current one, same id.
                self.store.begin()?;
                let r = self
                    .encrypt(&o.conversation, &o.plaintext)
                    .and_then(|(ct, epoch)| {
                        o.ciphertext = ct;
                        o.epoch = epoch;
                        Ok(self.store.put_outbox(&o)?)
                    });
                match r {
                    Ok(()) => self.store.commit()?,
                    Err(e) => {
                        self.store.rollback();
                        return Err(e);
                    }
                }
            }
            let r: Result<v1::EnqueueResponse, Error> = self
                .call(
                    net,
                    method::ENQUEUE,
                    &v1::EnqueueRequest {
                        channel_id: Bytes::copy_from_slice(&o.conversation),
                        message_id: Bytes::copy_from_slice(&o.id),
                        payload: Bytes::from(o.ciphertext.clone()),
                        kind: v1::MessageKind::Application as i32,
                        ..Default::default()
                    },
                )
                .await;
            match r {
                Ok(_) => self.store.delete_outbox(&o.id)?,
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::Network | ErrorCode::Timeout | ErrorCode::RateLimited
                    ) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    // Permanent refusal (no longer a member, too large): drop it.
                    tracing::debug!("outbox message dropped: {e}");
                    self.store.delete_outbox(&o.id)?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
