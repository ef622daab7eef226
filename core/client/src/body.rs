//! Message bodies: what a message carries, its wire form inside MLS (`qpq.v1.AppMessage`'s
//! `kind`) and the checks applied before sending.

use bytes::Bytes;
use prost::Message as _;
use qpq_proto::v1;

use crate::error::Error;
use crate::types::MessageId;

/// The largest body [`crate::Client::send`] accepts, in bytes (text as UTF-8, application
/// payloads as given, plus the content type): the server's default message limit (3 MiB)
/// less room for the MLS and protobuf framing. A larger body is refused with `InvalidInput`.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024 - 16 * 1024;

/// Longest content type of an application payload, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;

/// What a message carries. Text and application payloads can be sent today; the other kinds
/// are reserved: their shape is fixed so that supporting them later adds no function to any
/// binding. Sending a reserved kind gives `InvalidInput`; a received one is delivered as is.
///
/// An empty body (empty text, or an application payload of zero bytes) is refused with
/// `InvalidInput`, for every kind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// UTF-8 text.
    Text(String),
    /// An application's own payload (JSON, an image, a protocol of its own), binary-safe.
    App {
        /// What the bytes are, e.g. `"application/json"` (1 to 255 bytes; not interpreted).
        content_type: String,
        /// The payload.
        bytes: Vec<u8>,
    },
    /// Reserved: a reply quoting another message.
    Reply {
        /// The message replied to.
        to: MessageId,
        /// The reply text.
        text: String,
    },
    /// Reserved: a reaction to another message (received ones are delivered).
    Reaction {
        /// The message reacted to.
        to: MessageId,
        /// The emoji.
        emoji: String,
        /// True when the reaction is taken back.
        remove: bool,
    },
    /// Reserved: a new text for an earlier message of the same sender.
    Edit {
        /// The message edited.
        of: MessageId,
        /// Its new text.
        text: String,
    },
    /// Reserved: the sender deletes an earlier message of theirs.
    Delete {
        /// The message deleted.
        of: MessageId,
    },
    /// Reserved: a file stored elsewhere, encrypted under `key`.
    File {
        /// File name.
        name: String,
        /// MIME type.
        mime_type: String,
        /// Size in bytes.
        size: u64,
        /// SHA-256 of the encrypted file.
        sha256: Vec<u8>,
        /// The file's encryption key.
        key: Vec<u8>,
    },
}

impl Body {
    /// The text of a `Text` body, `None` for every other kind.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Body::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Checks a body before it is sent: not empty, not too large, a kind that can be sent.
    pub(crate) fn check_sendable(&self) -> Result<(), Error> {
        match self {
            Body::Text(t) => {
                if t.is_empty() {
                    return Err(Error::invalid("an empty body is not sent"));
                }
                if t.len() > MAX_BODY_BYTES {
                    return Err(too_large(t.len()));
                }
            }
            Body::App {
                content_type,
                bytes,
            } => {
                if bytes.is_empty() {
                    return Err(Error::invalid("an empty body is not sent"));
                }
                if content_type.is_empty() || content_type.len() > MAX_CONTENT_TYPE_BYTES {
                    return Err(Error::invalid(format!(
                        "a content type has 1 to {MAX_CONTENT_TYPE_BYTES} bytes"
                    )));
                }
                let n = bytes.len() + content_type.len();
                if n > MAX_BODY_BYTES {
                    return Err(too_large(n));
                }
            }
            _ => {
                return Err(Error::invalid(
                    "this body kind is reserved and cannot be sent yet",
                ))
            }
        }
        Ok(())
    }

    /// The wire form inside `AppMessage`.
    pub(crate) fn to_kind(&self) -> v1::app_message::Kind {
        use v1::app_message::Kind;
        match self {
            Body::Text(t) => Kind::Text(v1::Text { body: t.clone() }),
            Body::App {
                content_type,
                bytes,
            } => Kind::App(v1::AppData {
                content_type: content_type.clone(),
                data: Bytes::copy_from_slice(bytes),
            }),
            Body::Reply { to, text } => Kind::Reply(v1::Reply {
                target_id: Bytes::copy_from_slice(&to[..]),
                body: text.clone(),
            }),
            Body::Reaction { to, emoji, remove } => Kind::Reaction(v1::Reaction {
                target_id: Bytes::copy_from_slice(&to[..]),
                emoji: emoji.clone(),
                remove: *remove,
            }),
            Body::Edit { of, text } => Kind::Edit(v1::Edit {
                target_id: Bytes::copy_from_slice(&of[..]),
                body: text.clone(),
            }),
            Body::Delete { of } => Kind::Delete(v1::Delete {
                target_id: Bytes::copy_from_slice(&of[..]),
            }),
            Body::File {
                name,
                mime_type,
                size,
                sha256,
                key,
            } => Kind::File(v1::FileRef {
                sha256: Bytes::copy_from_slice(sha256),
                size: *size,
                name: name.clone(),
                mime_type: mime_type.clone(),
                key: Bytes::copy_from_slice(key),
            }),
        }
    }

    /// The body of a received `AppMessage` kind; `None` for kinds that are not stored as
    /// messages (receipts, typing notices) and for malformed target ids.
    pub(crate) fn from_kind(kind: v1::app_message::Kind) -> Option<Body> {
        use v1::app_message::Kind;
        let id = |b: &Bytes| MessageId::try_from(&b[..]).ok();
        Some(match kind {
            Kind::Text(t) => Body::Text(t.body),
            Kind::App(a) => Body::App {
                content_type: a.content_type,
                bytes: a.data.to_vec(),
            },
            Kind::Reply(r) => Body::Reply {
                to: id(&r.target_id)?,
                text: r.body,
            },
            Kind::Reaction(r) => Body::Reaction {
                to: id(&r.target_id)?,
                emoji: r.emoji,
                remove: r.remove,
            },
            Kind::Edit(e) => Body::Edit {
                of: id(&e.target_id)?,
                text: e.body,
            },
            Kind::Delete(d) => Body::Delete {
                of: id(&d.target_id)?,
            },
            Kind::File(f) => Body::File {
                name: f.name,
                mime_type: f.mime_type,
                size: f.size,
                sha256: f.sha256.to_vec(),
                key: f.key.to_vec(),
            },
            Kind::Receipt(_) | Kind::Typing(_) => return None,
        })
    }

    /// The stored form: the encoded `AppMessage` carrying only this kind.
    pub(crate) fn encode(&self) -> Vec<u8> {
        v1::AppMessage {
            kind: Some(self.to_kind()),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Reads the stored form back.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Body> {
        v1::AppMessage::decode(bytes)
            .ok()
            .and_then(|m| m.kind)
            .and_then(Body::from_kind)
    }
}

fn too_large(n: usize) -> Error {
    Error::invalid(format!(
        "the body has {n} bytes; at most {MAX_BODY_BYTES} can be sent"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_the_stored_form() {
        let id = MessageId::from_bytes([7u8; 16]);
        let all = [
            Body::Text("hé".into()),
            Body::App {
                content_type: "application/octet-stream".into(),
                bytes: (0..=255u8).collect(),
            },
            Body::Reply {
                to: id,
                text: "yes".into(),
            },
            Body::Reaction {
                to: id,
                emoji: "👍".into(),
                remove: false,
            },
            Body::Edit {
                of: id,
                text: "fixed".into(),
            },
            Body::Delete { of: id },
            Body::File {
                name: "a.txt".into(),
                mime_type: "text/plain".into(),
                size: 3,
                sha256: vec![1; 32],
                key: vec![2; 32],
            },
        ];
        for b in all {
            assert_eq!(Body::decode(&b.encode()), Some(b.clone()), "{b:?}");
        }
    }

    #[test]
    fn empty_large_and_reserved_bodies_are_refused() {
        let app = |n: usize| Body::App {
            content_type: "x/y".into(),
            bytes: vec![0; n],
        };
        assert!(app(1).check_sendable().is_ok());
        assert!(app(MAX_BODY_BYTES - 3).check_sendable().is_ok());
        for bad in [
            Body::Text(String::new()),
            app(0),
            app(MAX_BODY_BYTES - 2),
            Body::Text("x".repeat(MAX_BODY_BYTES + 1)),
            Body::App {
                content_type: String::new(),
                bytes: vec![1],
            },
            Body::Delete {
                of: MessageId::from_bytes([1; 16]),
            },
        ] {
            let e = bad.check_sendable().expect_err("refused");
            assert_eq!(e.code(), crate::ErrorCode::InvalidInput);
        }
    }
}
