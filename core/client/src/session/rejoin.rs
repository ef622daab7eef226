//! Broken conversations (issue 17 item 17, ADR 0054): a device that cannot process the commit
//! the server accepted for its epoch reports the conversation as broken and rejoins it by an
//! MLS external commit (RFC 9420 §12.4.3.2) from the GroupInfo the last good committer
//! uploaded. The conversation keeps its id, history and members; only the stuck device pays.

use bytes::Bytes;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use prost::Message as _;
use qpq_proto::{method, v1};

use super::*;
use crate::error::{Error, ErrorCode};
use crate::mls;
use crate::types::{ConversationId, Event};

/// Meta key prefix of a broken conversation (value: the reason, UTF-8).
const META_BROKEN: &str = "broken:";
/// Meta key prefix of a built, unanswered rejoin (value: the encoded EnqueueRequest).
const META_PENDING_REJOIN: &str = "pending_rejoin:";

fn broken_key(conv: &ConversationId) -> String {
    format!("{META_BROKEN}{}", conv.to_hex())
}

fn rejoin_key(conv: &ConversationId) -> String {
    format!("{META_PENDING_REJOIN}{}", conv.to_hex())
}

fn conv_of(key: &str, prefix: &str) -> Option<ConversationId> {
    key.strip_prefix(prefix)?.parse().ok()
}

impl Session {
    /// Rejoins every broken conversation by external commit (the caller holds the operation
    /// lock). A conversation whose rejoin fails stays broken and is tried again at the next
    /// sync; only a network failure is returned.
    pub(super) async fn rejoin_broken(&self, events: &mut Vec<Event>) -> Result<(), Error> {
        let broken = self.engine()?.store.meta_with_prefix(META_BROKEN)?;
        for (key, _) in broken {
            let Some(conv) = conv_of(&key, META_BROKEN) else {
                continue;
            };
            match self.rejoin(&conv, events).await {
                Ok(()) => {}
                Err(e) if matches!(e.code(), ErrorCode::Network | ErrorCode::Timeout) => {
                    return Err(e)
                }
                Err(e) => tracing::warn!("could not rejoin a broken conversation yet: {e}"),
            }
        }
        Ok(())
    }

    async fn rejoin(&self, conv: &ConversationId, events: &mut Vec<Event>) -> Result<(), Error> {
        // A rejoin built before a crash or a lost connection is resent first.
        let stored = self.engine()?.store.get_meta(&rejoin_key(conv))?;
        let req = match stored {
            Some(bytes) => v1::EnqueueRequest::decode(&bytes[..])
                .map_err(|e| Error::new(ErrorCode::Storage, format!("pending rejoin: {e}")))?,
            None => {
                let gi: v1::FetchGroupInfoResponse = self
                    .call(
                        method::FETCH_GROUP_INFO,
                        &v1::FetchGroupInfoRequest {
                            channel_id: Bytes::copy_from_slice(&conv[..]),
                        },
                    )
                    .await?;
                let e = self.engine()?;
                e.store.transaction(|s| -> Result<_, Error> {
                    let req = e.build_external_commit(conv, &gi)?;
                    s.set_meta(&rejoin_key(conv), &req.encode_to_vec())?;
                    Ok(req)
                })?
            }
        };
        let r: Result<v1::EnqueueResponse, Error> = self.call(method::ENQUEUE, &req).await;
        self.engine()?.finish_rejoin(conv, r, events)
    }
}

impl Engine {
    /// Records that `conv` cannot process the commit the server accepted after its epoch:
    /// queued message `m` was a commit framed for this device's epoch or a later one, and
    /// processing it failed with `why`. Pushes [`Event::ConversationBroken`] the first time.
    pub(super) fn note_broken_commit(
        &self,
        m: &v1::QueuedMessage,
        why: &Error,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        if m.kind != v1::MessageKind::Commit as i32 {
            return Ok(());
        }
        let Ok(conv) = ConversationId::from_slice(&m.channel_id[..]) else {
            return Ok(());
        };
        let provider = self.provider();
        let Some(group) = mls::load(&provider, &conv)? else {
            return Ok(());
        };
        if !group.is_active() {
            return Ok(());
        }
        let framed = MlsMessageIn::tls_deserialize_exact(&m.payload[..])
            .ok()
            .and_then(|x| x.try_into_protocol_message().ok())
            .map(|p| p.epoch().as_u64());
        // A commit of an earlier epoch is one this device already has (a redelivery).
        if framed.is_none_or(|f| f < group.epoch().as_u64()) {
            return Ok(());
        }
        let key = broken_key(&conv);
        if self.store.get_meta(&key)?.is_some() {
            return Ok(());
        }
        let reason = format!(
            "the commit accepted for epoch {} cannot be processed: {why}",
            framed.unwrap_or_default()
        );
        tracing::warn!("conversation broken: {reason}");
        self.store.set_meta(&key, reason.as_bytes())?;
        events.push(Event::ConversationBroken {
            conversation: conv,
            reason,
        });
        Ok(())
    }

    /// A commit of `conv` was processed: if it was broken, it works again.
    pub(super) fn note_healed(
        &self,
        conv: &ConversationId,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let key = broken_key(conv);
        if self.store.get_meta(&key)?.is_some() {
            self.store.delete_meta(&key)?;
            self.store.delete_meta(&rejoin_key(conv))?;
            events.push(Event::ConversationRecovered {
                conversation: *conv,
            });
        }
        Ok(())
    }

    /// Replaces this device's state of `conv` by a new one joined by external commit from
    /// the server's GroupInfo, and returns the Enqueue carrying that commit. The old state
    /// is gone either way: it could not follow the group any more.
    fn build_external_commit(
        &self,
        conv: &ConversationId,
        gi: &v1::FetchGroupInfoResponse,
    ) -> Result<v1::EnqueueRequest, Error> {
        let provider = self.provider();
        let msg = MlsMessageIn::tls_deserialize_exact(&gi.group_info[..])
            .map_err(|e| Error::crypto(format!("group info: {e}")))?;
        let MlsMessageBodyIn::GroupInfo(info) = msg.extract() else {
            return Err(Error::crypto(
                "the server's group info is not an MLS GroupInfo",
            ));
        };
        if info.group_id().as_slice() != &conv[..] {
            return Err(Error::crypto(
                "the server's group info is for another group",
            ));
        }
        let epoch = info.epoch().as_u64();
        if let Some(mut old) = mls::load(&provider, conv)? {
            old.delete(provider.storage()).map_err(mls_err)?;
        }
        let signer = mls::signer(&self.keys.device);
        let (_group, bundle) = MlsGroup::external_commit_builder()
            .with_config(mls::join_config())
            .build_group(&provider, info, mls::credential(&self.keys.device))
            .map_err(|e| Error::crypto(format!("external commit: {e}")))?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(mls::capabilities())
                    .build(),
            )
            .load_psks(provider.storage())
            .map_err(mls_err)?
            .build(provider.rand(), provider.crypto(), &signer, |_| true)
            .map_err(mls_err)?
            .finalize(&provider)
            .map_err(mls_err)?;
        let (commit, _, group_info) = bundle.into_messages();
        let group_info =
            group_info.ok_or_else(|| Error::internal("the external commit made no GroupInfo"))?;
        Ok(v1::EnqueueRequest {
            channel_id: Bytes::copy_from_slice(&conv[..]),
            message_id: Bytes::copy_from_slice(&rand::random::<[u8; 16]>()),
            payload: Bytes::from(mls::encode(&commit)?),
            kind: v1::MessageKind::Commit as i32,
            commit_epoch: Some(epoch),
            group_info: Bytes::from(mls::encode(&group_info)?),
            ..Default::default()
        })
    }

    /// Applies the server's answer to a rejoin: accepted, the conversation works again;
    /// refused, this device's state of it is dropped and it stays broken (the next sync
    /// rejoins from the newer GroupInfo); a network failure keeps it for a resend.
    fn finish_rejoin(
        &self,
        conv: &ConversationId,
        r: Result<v1::EnqueueResponse, Error>,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        match r {
            Ok(_) => {
                self.store.set_active(conv, true)?;
                self.note_healed(conv, events)
            }
            Err(e) if matches!(e.code(), ErrorCode::Network | ErrorCode::Timeout) => Err(e),
            Err(e) => {
                let provider = self.provider();
                self.store.transaction(|s| -> Result<(), Error> {
                    if let Some(mut g) = mls::load(&provider, conv)? {
                        g.delete(provider.storage()).map_err(mls_err)?;
                    }
                    s.delete_meta(&rejoin_key(conv))?;
                    Ok(())
                })?;
                Err(e)
            }
        }
    }
}
