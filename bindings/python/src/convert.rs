//! Conversions between qpq-core's types and the `quicproquo.types` dataclasses.
//!
//! The dataclasses are built positionally: the argument order here is the field order in
//! `sdks/python/python/quicproquo/types.py`.

use pyo3::call::PyCallArgs;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyModule, PyString, PyTuple};
use qpq_core::{
    Account, Body, Consent, Conversation, ConversationId, ConversationKind, Delivery, Event,
    EventRecord, Member, Message, MessageId,
};

use crate::error::{invalid, CoreError};

static TYPES: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `quicproquo.types.<name>(*args)`.
fn build<'py>(
    py: Python<'py>,
    name: &str,
    args: impl PyCallArgs<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let types = TYPES.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("quicproquo.types")?.unbind())
    })?;
    types.bind(py).getattr(name)?.call1(args)
}

/// A class attribute of `quicproquo.types`, e.g. an enum member.
fn member<'py>(py: Python<'py>, class: &str, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let types = TYPES.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("quicproquo.types")?.unbind())
    })?;
    types.bind(py).getattr(class)?.getattr(name)
}

/// An id from its bytes (any bytes-like) or its hex text; core checks both forms.
fn id_from<T>(
    obj: &Bound<'_, PyAny>,
    what: &str,
    from_slice: impl Fn(&[u8]) -> Result<T, qpq_core::Error>,
    from_hex: impl Fn(&str) -> Result<T, qpq_core::Error>,
) -> PyResult<T> {
    let parsed = if let Ok(s) = obj.cast::<PyString>() {
        from_hex(&s.to_cow()?)
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        from_slice(b.as_bytes())
    } else {
        let bytes: Vec<u8> = obj
            .extract()
            .map_err(|_| invalid(format!("a {what} is 16 bytes or 32 hex digits")))?;
        from_slice(&bytes)
    };
    Ok(parsed.map_err(CoreError)?)
}

/// A conversation id from a `ConversationId`, any 16 bytes, or 32 hex digits.
pub fn conversation_id(obj: &Bound<'_, PyAny>) -> PyResult<ConversationId> {
    id_from(
        obj,
        "conversation id",
        ConversationId::from_slice,
        str::parse,
    )
}

/// A message id from a `MessageId`, any 16 bytes, or 32 hex digits.
pub fn message_id(obj: &Bound<'_, PyAny>) -> PyResult<MessageId> {
    id_from(obj, "message id", MessageId::from_slice, str::parse)
}

/// A body from one of the body dataclasses (`Text`, `AppData`, ...), told apart by `_KIND`.
pub fn body(obj: &Bound<'_, PyAny>) -> PyResult<Body> {
    let kind: String = obj
        .getattr("_KIND")
        .and_then(|k| k.extract())
        .map_err(|_| invalid("a body is str, bytes or one of Text, AppData, Reply, ..."))?;
    let s = |name: &str| -> PyResult<String> { obj.getattr(name)?.extract() };
    let b = |name: &str| -> PyResult<Vec<u8>> { obj.getattr(name)?.extract() };
    let id = |name: &str| -> PyResult<MessageId> { message_id(&obj.getattr(name)?) };
    Ok(match kind.as_str() {
        "text" => Body::Text(s("text")?),
        "app" => Body::App {
            content_type: s("content_type")?,
            bytes: b("data")?,
        },
        "reply" => Body::Reply {
            to: id("to")?,
            text: s("text")?,
        },
        "reaction" => Body::Reaction {
            to: id("to")?,
            emoji: s("emoji")?,
            remove: obj.getattr("remove")?.extract()?,
        },
        "edit" => Body::Edit {
            of: id("of")?,
            text: s("text")?,
        },
        "delete" => Body::Delete { of: id("of")? },
        "file" => Body::File {
            name: s("name")?,
            mime_type: s("mime_type")?,
            size: obj.getattr("size")?.extract()?,
            sha256: b("sha256")?,
            key: b("key")?,
        },
        other => return Err(invalid(format!("unknown body kind {other:?}"))),
    })
}

pub fn conversation_id_py<'py>(
    py: Python<'py>,
    id: &ConversationId,
) -> PyResult<Bound<'py, PyAny>> {
    build(py, "ConversationId", (PyBytes::new(py, &id[..]),))
}

pub fn message_id_py<'py>(py: Python<'py>, id: &MessageId) -> PyResult<Bound<'py, PyAny>> {
    build(py, "MessageId", (PyBytes::new(py, &id[..]),))
}

/// A `quicproquo.types.IdentityKey` or `DeviceKey` (32 bytes).
fn key_py<'py>(py: Python<'py>, class: &str, key: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    build(py, class, (PyBytes::new(py, key),))
}

fn strings<'py>(py: Python<'py>, v: Vec<String>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, v)
}

/// `quicproquo.types.Account`.
pub fn account<'py>(py: Python<'py>, a: Account) -> PyResult<Bound<'py, PyAny>> {
    build(
        py,
        "Account",
        (
            a.username,
            key_py(py, "IdentityKey", a.identity_key.as_bytes())?,
            key_py(py, "DeviceKey", a.device_key.as_bytes())?,
        ),
    )
}

/// `quicproquo.types.Member`.
pub fn member_of<'py>(py: Python<'py>, m: Member) -> PyResult<Bound<'py, PyAny>> {
    let devices = m
        .devices
        .iter()
        .map(|d| key_py(py, "DeviceKey", d.as_bytes()))
        .collect::<PyResult<Vec<_>>>()?;
    let devices = PyTuple::new(py, devices)?;
    build(
        py,
        "Member",
        (
            m.username,
            m.identity_key
                .map(|k| key_py(py, "IdentityKey", k.as_bytes()))
                .transpose()?,
            devices,
        ),
    )
}

/// `quicproquo.types.Conversation`.
pub fn conversation<'py>(py: Python<'py>, c: Conversation) -> PyResult<Bound<'py, PyAny>> {
    let kind = match c.kind {
        ConversationKind::Dm => "DM",
        ConversationKind::Group => "GROUP",
    };
    let consent = match c.consent {
        Consent::Allowed => "ALLOWED",
        Consent::Requested => "REQUESTED",
        Consent::Denied => "DENIED",
    };
    build(
        py,
        "Conversation",
        (
            conversation_id_py(py, &c.id)?,
            member(py, "ConversationKind", kind)?,
            c.name,
            c.post_quantum,
            c.ciphersuite,
            c.epoch,
            strings(py, c.members)?,
            c.active,
            c.unread,
            member(py, "Consent", consent)?,
            c.invited_by,
        ),
    )
}

fn body_py<'py>(py: Python<'py>, b: Body) -> PyResult<Bound<'py, PyAny>> {
    match b {
        Body::Text(t) => build(py, "Text", (t,)),
        Body::App {
            content_type,
            bytes,
        } => build(py, "AppData", (content_type, PyBytes::new(py, &bytes))),
        Body::Reply { to, text } => build(py, "Reply", (message_id_py(py, &to)?, text)),
        Body::Reaction { to, emoji, remove } => {
            build(py, "Reaction", (message_id_py(py, &to)?, emoji, remove))
        }
        Body::Edit { of, text } => build(py, "Edit", (message_id_py(py, &of)?, text)),
        Body::Delete { of } => build(py, "Delete", (message_id_py(py, &of)?,)),
        Body::File {
            name,
            mime_type,
            size,
            sha256,
            key,
        } => build(
            py,
            "File",
            (
                name,
                mime_type,
                size,
                PyBytes::new(py, &sha256),
                PyBytes::new(py, &key),
            ),
        ),
        other => Err(unknown_body(&other)),
    }
}

/// `Internal` for a body kind this binding was not built to show (a newer core).
fn unknown_body(b: &Body) -> PyErr {
    let shown = format!("{b:?}");
    let kind = shown.split(['(', ' ', '{']).next().unwrap_or("?");
    crate::error::CoreError(qpq_core::Error::new(
        qpq_core::ErrorCode::Internal,
        format!("this binding cannot show a {kind} body yet"),
    ))
    .into()
}

/// `quicproquo.types.Message`.
pub fn message<'py>(py: Python<'py>, m: Message) -> PyResult<Bound<'py, PyAny>> {
    let delivery = match m.delivery {
        Delivery::Received => "RECEIVED",
        Delivery::Queued => "QUEUED",
        Delivery::Sent => "SENT",
        Delivery::Failed => "FAILED",
    };
    build(
        py,
        "Message",
        (
            message_id_py(py, &m.id)?,
            conversation_id_py(py, &m.conversation)?,
            m.sender,
            key_py(py, "DeviceKey", m.sender_device.as_bytes())?,
            body_py(py, m.body)?,
            m.sent_at_ms,
            m.received_at_ms,
            m.outgoing,
            member(py, "Delivery", delivery)?,
        ),
    )
}

/// One of the event dataclasses of `quicproquo.types`.
pub fn event<'py>(py: Python<'py>, e: Event) -> PyResult<Bound<'py, PyAny>> {
    match e {
        Event::Message(m) => build(py, "MessageReceived", (message(py, m)?,)),
        Event::ConversationJoined(c) => build(py, "ConversationJoined", (conversation(py, c)?,)),
        Event::MembersChanged {
            conversation,
            by,
            added,
            removed,
            left,
            epoch,
        } => build(
            py,
            "MembersChanged",
            (
                conversation_id_py(py, &conversation)?,
                by,
                strings(py, added)?,
                strings(py, removed)?,
                strings(py, left)?,
                epoch,
            ),
        ),
        Event::Removed {
            conversation,
            by,
            left,
        } => build(
            py,
            "Removed",
            (conversation_id_py(py, &conversation)?, by, left),
        ),
        Event::ConversationBroken {
            conversation,
            reason,
        } => build(
            py,
            "ConversationBroken",
            (conversation_id_py(py, &conversation)?, reason),
        ),
        Event::ConversationRecovered { conversation } => build(
            py,
            "ConversationRecovered",
            (conversation_id_py(py, &conversation)?,),
        ),
        Event::ConnectionChanged { connected } => build(py, "ConnectionChanged", (connected,)),
        Event::MessageSent { conversation, id } => build(
            py,
            "MessageSent",
            (
                conversation_id_py(py, &conversation)?,
                message_id_py(py, &id)?,
            ),
        ),
        Event::MessageFailed {
            conversation,
            id,
            code,
            message,
        } => build(
            py,
            "MessageFailed",
            (
                conversation_id_py(py, &conversation)?,
                message_id_py(py, &id)?,
                code.as_u32(),
                message,
            ),
        ),
    }
}

/// `quicproquo.types.EventRecord`.
pub fn event_record<'py>(py: Python<'py>, r: EventRecord) -> PyResult<Bound<'py, PyAny>> {
    build(py, "EventRecord", (r.cursor, event(py, r.event)?))
}
