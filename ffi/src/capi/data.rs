//! What the client returns, as opaque objects read through accessors (ADR 0070): accounts,
//! conversations, messages, bodies, members, events, and lists of them. Strings inside are
//! stored NUL-terminated when the object is made, so accessors hand out borrowed pointers.

use std::ffi::c_char;
use std::ptr::null;

use qpq_core::{
    Account, Body, Consent, Conversation, ConversationId, ConversationKind, Delivery, Event, Member, Message, MessageId,
};

use super::{arg, bytes_arg, entry, free, out, owned, read, str_arg};
use crate::error::{qpq_code, qpq_error};

/// A conversation id (the server's channel id and the MLS group id): 16 bytes, by value.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct qpq_conversation_id {
    /// The id's bytes.
    pub bytes: [u8; 16],
}

/// A message id (chosen by the sender, unique): 16 bytes, by value.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct qpq_message_id {
    /// The id's bytes.
    pub bytes: [u8; 16],
}

/// What an event is; `QPQ_EVENT_NONE` only for a NULL event.
#[repr(u32)]
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy)]
pub enum qpq_event_kind {
    /// Not an event (NULL).
    QPQ_EVENT_NONE = 0,
    /// A new message: `qpq_event_message`.
    QPQ_EVENT_MESSAGE = 1,
    /// This account was added to a conversation: `qpq_event_conversation`.
    QPQ_EVENT_CONVERSATION_JOINED = 2,
    /// Members joined, were removed or left (one commit): `qpq_event_member_count`/`_member`
    /// (added, removed), `qpq_event_left_count`/`_left_member`, `qpq_event_by`, `qpq_event_epoch`.
    QPQ_EVENT_MEMBERS_CHANGED = 3,
    /// This account was removed from (or left) `qpq_event_conversation_id`: `qpq_event_by`,
    /// `qpq_event_left`.
    QPQ_EVENT_REMOVED = 4,
    /// The connection went up or down: `qpq_event_connected`.
    QPQ_EVENT_CONNECTION_CHANGED = 5,
    /// The server accepted the message `qpq_event_message_id`.
    QPQ_EVENT_MESSAGE_SENT = 6,
    /// The message `qpq_event_message_id` can never be sent: `qpq_event_error_code`.
    QPQ_EVENT_MESSAGE_FAILED = 7,
    /// This device cannot follow `qpq_event_conversation_id` (a commit it cannot process):
    /// `qpq_event_reason`. The library rejoins by itself and then reports
    /// `QPQ_EVENT_CONVERSATION_RECOVERED`; messages sent in between may never arrive. ABI 0.2.
    QPQ_EVENT_CONVERSATION_BROKEN = 8,
    /// A conversation reported broken works again. ABI 0.2.
    QPQ_EVENT_CONVERSATION_RECOVERED = 9,
}

/// What a body carries. Only text and app bodies can be sent today; the others are delivered.
#[repr(u32)]
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy)]
pub enum qpq_body_kind {
    /// Not a body (NULL), or a kind newer than this library.
    QPQ_BODY_UNKNOWN = 0,
    /// UTF-8 text: `qpq_body_text`.
    QPQ_BODY_TEXT = 1,
    /// An application payload: `qpq_body_content_type`, `qpq_body_bytes`.
    QPQ_BODY_APP = 2,
    /// A reply: `qpq_body_target`, `qpq_body_text`.
    QPQ_BODY_REPLY = 3,
    /// A reaction: `qpq_body_target`, `qpq_body_emoji`, `qpq_body_removed`.
    QPQ_BODY_REACTION = 4,
    /// An edit: `qpq_body_target`, `qpq_body_text`.
    QPQ_BODY_EDIT = 5,
    /// A deletion: `qpq_body_target`.
    QPQ_BODY_DELETE = 6,
    /// A file reference: `qpq_body_file_name`, `qpq_body_mime_type`, ...
    QPQ_BODY_FILE = 7,
}

/// A DM or a group; `QPQ_CONVERSATION_NONE` only for NULL.
#[repr(u32)]
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy)]
pub enum qpq_conversation_kind {
    /// Not a conversation (NULL).
    QPQ_CONVERSATION_NONE = 0,
    /// Two accounts.
    QPQ_CONVERSATION_DM = 1,
    /// Any number of members.
    QPQ_CONVERSATION_GROUP = 2,
}

/// Where a message is on its way; `QPQ_DELIVERY_NONE` only for NULL.
#[repr(u32)]
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy)]
pub enum qpq_delivery {
    /// Not a message (NULL).
    QPQ_DELIVERY_NONE = 0,
    /// Incoming (or outgoing from another device of this account).
    QPQ_DELIVERY_RECEIVED = 1,
    /// Stored and queued here, not yet accepted by the server.
    QPQ_DELIVERY_QUEUED = 2,
    /// Accepted by the server for every member.
    QPQ_DELIVERY_SENT = 3,
    /// Refused for good.
    QPQ_DELIVERY_FAILED = 4,
}

// `repr(transparent)` lets a borrowed `&Message` be handed out as a `*const qpq_message`; it
// is written through `cfg_attr` because cbindgen reads only plain `repr` attributes, so C sees
// these types as opaque (a plain `repr(transparent)` would make them typedefs of Rust types).

/// Whether the user wants a conversation (ADR 0060). It changes nothing about delivery: a
/// requested conversation's messages arrive as usual, the app shows them apart until
/// `qpq_client_accept` or `qpq_client_decline`. `QPQ_CONSENT_NONE` only for NULL.
#[repr(u32)]
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy)]
pub enum qpq_consent {
    /// Not a conversation (NULL).
    QPQ_CONSENT_NONE = 0,
    /// Created here, accepted, written in, or from a contact.
    QPQ_CONSENT_ALLOWED = 1,
    /// Joined by an invitation from someone this account shares no allowed conversation with.
    QPQ_CONSENT_REQUESTED = 2,
    /// Declined: left, and kept only as history.
    QPQ_CONSENT_DENIED = 3,
}

/// This client's account. Owned: `qpq_account_free`.
#[cfg_attr(not(cbindgen), repr(transparent))]
pub struct qpq_account(Account);
/// A conversation. Owned when from an out-param (`qpq_conversation_free`), else borrowed.
#[cfg_attr(not(cbindgen), repr(transparent))]
pub struct qpq_conversation(Conversation);
/// A message; always borrowed from a list or an event.
#[cfg_attr(not(cbindgen), repr(transparent))]
pub struct qpq_message(Message);
/// A member or a resolved user. Owned when from an out-param (`qpq_member_free`).
#[cfg_attr(not(cbindgen), repr(transparent))]
pub struct qpq_member(Member);
/// A message body. Owned when made by `qpq_body_new_*` (`qpq_body_free`), else borrowed.
#[cfg_attr(not(cbindgen), repr(transparent))]
pub struct qpq_body(Body);
/// An event with its cursor. Owned when from an out-param (`qpq_event_free`).
pub struct qpq_event {
    cursor: u64,
    event: Event,
}
/// Conversations, owned: `qpq_conversation_list_free`.
pub struct qpq_conversation_list(Vec<qpq_conversation>);
/// Messages, oldest first, owned: `qpq_message_list_free`.
pub struct qpq_message_list(Vec<qpq_message>);
/// Members, owned: `qpq_member_list_free`.
pub struct qpq_member_list(Vec<qpq_member>);
/// Events, owned: `qpq_event_list_free`.
pub struct qpq_event_list(Vec<qpq_event>);
/// Strings (NUL-terminated UTF-8), owned: `qpq_string_list_free`.
pub struct qpq_string_list(Vec<String>);

fn nul(s: &mut String) {
    s.push('\0');
}

fn unnul(s: &mut String) {
    s.pop();
}

fn body_strings(b: &mut Body, f: fn(&mut String)) {
    match b {
        Body::Text(t) | Body::Reply { text: t, .. } | Body::Edit { text: t, .. } => f(t),
        Body::App { content_type, .. } => f(content_type),
        Body::Reaction { emoji, .. } => f(emoji),
        Body::File { name, mime_type, .. } => {
            f(name);
            f(mime_type)
        }
        _ => {}
    }
}

impl qpq_account {
    pub(crate) fn new(mut a: Account) -> qpq_account {
        nul(&mut a.username);
        qpq_account(a)
    }
}

impl qpq_conversation {
    pub(crate) fn new(mut c: Conversation) -> qpq_conversation {
        nul(&mut c.name);
        nul(&mut c.ciphersuite);
        c.members.iter_mut().for_each(nul);
        c.invited_by.iter_mut().for_each(nul);
        qpq_conversation(c)
    }

    /// The conversation as core knows it (strings without their NUL).
    pub(crate) fn core(&self) -> Conversation {
        let mut c = self.0.clone();
        unnul(&mut c.name);
        unnul(&mut c.ciphersuite);
        c.members.iter_mut().for_each(unnul);
        c.invited_by.iter_mut().for_each(unnul);
        c
    }
}

impl qpq_message {
    fn new(mut m: Message) -> qpq_message {
        nul(&mut m.sender);
        body_strings(&mut m.body, nul);
        qpq_message(m)
    }
}

impl qpq_member {
    pub(crate) fn new(mut m: Member) -> qpq_member {
        nul(&mut m.username);
        qpq_member(m)
    }
}

impl qpq_body {
    fn new(mut b: Body) -> qpq_body {
        body_strings(&mut b, nul);
        qpq_body(b)
    }

    /// The body as core takes it (strings without their NUL).
    pub(crate) fn core(&self) -> Body {
        let mut b = self.0.clone();
        body_strings(&mut b, unnul);
        b
    }
}

impl qpq_event {
    pub(crate) fn new(cursor: u64, mut event: Event) -> qpq_event {
        match &mut event {
            Event::Message(m) => *m = qpq_message::new(m.clone()).0,
            Event::ConversationJoined(c) => *c = qpq_conversation::new(c.clone()).0,
            Event::MembersChanged { by, added, removed, left, .. } => {
                by.iter_mut().chain(added).chain(removed).chain(left).for_each(nul)
            }
            Event::Removed { by, .. } => by.iter_mut().for_each(nul),
            Event::MessageFailed { message, .. } => nul(message),
            Event::ConversationBroken { reason, .. } => nul(reason),
            _ => {}
        }
        qpq_event { cursor, event }
    }
}

impl qpq_conversation_list {
    pub(crate) fn new(v: Vec<Conversation>) -> qpq_conversation_list {
        qpq_conversation_list(v.into_iter().map(qpq_conversation::new).collect())
    }
}
impl qpq_message_list {
    pub(crate) fn new(v: Vec<Message>) -> qpq_message_list {
        qpq_message_list(v.into_iter().map(qpq_message::new).collect())
    }
}
impl qpq_member_list {
    pub(crate) fn new(v: Vec<Member>) -> qpq_member_list {
        qpq_member_list(v.into_iter().map(qpq_member::new).collect())
    }
}
impl qpq_event_list {
    pub(crate) fn new(v: Vec<Event>) -> qpq_event_list {
        qpq_event_list(v.into_iter().map(|e| qpq_event::new(0, e)).collect())
    }
}
impl qpq_string_list {
    pub(crate) fn new(mut v: Vec<String>) -> qpq_string_list {
        v.iter_mut().for_each(nul);
        qpq_string_list(v)
    }
}

/// A prepared (NUL-terminated) string as a C pointer.
fn s(x: &str) -> *const c_char {
    x.as_ptr().cast()
}

/// A prepared string with its length (without the NUL) written to `len` when not NULL.
fn s_len(x: &str, len: *mut usize) -> *const c_char {
    put_len(len, x.len().saturating_sub(1));
    s(x)
}

fn put_len(len: *mut usize, n: usize) {
    // SAFETY: NULL or a writable `size_t` (the header's contract).
    if let Some(l) = unsafe { len.as_mut() } {
        *l = n;
    }
}

fn bytes_len(b: &[u8], len: *mut usize) -> *const u8 {
    put_len(len, b.len());
    b.as_ptr()
}

/// Index `i` of a list, or NULL.
fn at<T>(v: &[T], i: usize) -> *const T {
    v.get(i).map_or(null(), |x| x as *const T)
}

impl From<ConversationId> for qpq_conversation_id {
    fn from(id: ConversationId) -> Self {
        qpq_conversation_id { bytes: id.to_bytes() }
    }
}
impl From<MessageId> for qpq_message_id {
    fn from(id: MessageId) -> Self {
        qpq_message_id { bytes: id.to_bytes() }
    }
}
impl qpq_conversation_id {
    pub(crate) fn core(&self) -> ConversationId {
        ConversationId::from_bytes(self.bytes)
    }
}
impl qpq_message_id {
    pub(crate) fn core(&self) -> MessageId {
        MessageId::from_bytes(self.bytes)
    }
}

fn hex_out<T: std::fmt::Display>(id: *const T, out_hex: *mut *mut c_char) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_hex, "out_hex", std::ptr::null_mut())?;
        *slot = super::c_string(arg(id, "id")?.to_string());
        Ok(())
    })
}

fn hex_in<T: std::str::FromStr<Err = qpq_core::Error>, C: From<T> + Default>(
    hex: *const c_char, out_id: *mut C,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_id, "out_id", C::default())?;
        *slot = str_arg(hex, "hex")?.parse::<T>()?.into();
        Ok(())
    })
}

impl std::fmt::Display for qpq_conversation_id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core().fmt(f)
    }
}
impl std::fmt::Display for qpq_message_id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core().fmt(f)
    }
}

/// The id's stable text form (32 lower-case hex digits), as every SDK writes it. Owned
/// string: `qpq_string_free`.
#[no_mangle]
pub extern "C" fn qpq_conversation_id_to_hex(
    id: *const qpq_conversation_id, out_hex: *mut *mut c_char,
) -> *mut qpq_error {
    hex_out(id, out_hex)
}

/// Parses 32 hex digits (either case) into `*out_id`; `QPQ_ERROR_INVALID_INPUT` otherwise.
#[no_mangle]
pub extern "C" fn qpq_conversation_id_from_hex(hex: *const c_char, out_id: *mut qpq_conversation_id) -> *mut qpq_error {
    hex_in::<ConversationId, _>(hex, out_id)
}

/// The id's stable text form (32 lower-case hex digits). Owned string: `qpq_string_free`.
#[no_mangle]
pub extern "C" fn qpq_message_id_to_hex(id: *const qpq_message_id, out_hex: *mut *mut c_char) -> *mut qpq_error {
    hex_out(id, out_hex)
}

/// Parses 32 hex digits (either case) into `*out_id`; `QPQ_ERROR_INVALID_INPUT` otherwise.
#[no_mangle]
pub extern "C" fn qpq_message_id_from_hex(hex: *const c_char, out_id: *mut qpq_message_id) -> *mut qpq_error {
    hex_in::<MessageId, _>(hex, out_id)
}

/// Number of items in `list`; 0 for NULL.
#[no_mangle]
pub extern "C" fn qpq_conversation_list_len(list: *const qpq_conversation_list) -> usize {
    read(list, 0, |l| l.0.len())
}

/// Item `index` of `list`, borrowed from it; NULL past the end.
#[no_mangle]
pub extern "C" fn qpq_conversation_list_get(
    list: *const qpq_conversation_list, index: usize,
) -> *const qpq_conversation {
    read(list, null(), |l| at(&l.0, index))
}

/// Frees `list` and every item in it; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_conversation_list_free(list: *mut qpq_conversation_list) {
    free(list)
}

/// Number of items in `list`; 0 for NULL.
#[no_mangle]
pub extern "C" fn qpq_message_list_len(list: *const qpq_message_list) -> usize {
    read(list, 0, |l| l.0.len())
}

/// Item `index` of `list`, borrowed from it; NULL past the end.
#[no_mangle]
pub extern "C" fn qpq_message_list_get(list: *const qpq_message_list, index: usize) -> *const qpq_message {
    read(list, null(), |l| at(&l.0, index))
}

/// Frees `list` and every item in it; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_message_list_free(list: *mut qpq_message_list) {
    free(list)
}

/// Number of items in `list`; 0 for NULL.
#[no_mangle]
pub extern "C" fn qpq_member_list_len(list: *const qpq_member_list) -> usize {
    read(list, 0, |l| l.0.len())
}

/// Item `index` of `list`, borrowed from it; NULL past the end.
#[no_mangle]
pub extern "C" fn qpq_member_list_get(list: *const qpq_member_list, index: usize) -> *const qpq_member {
    read(list, null(), |l| at(&l.0, index))
}

/// Frees `list` and every item in it; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_member_list_free(list: *mut qpq_member_list) {
    free(list)
}

/// Number of items in `list`; 0 for NULL.
#[no_mangle]
pub extern "C" fn qpq_event_list_len(list: *const qpq_event_list) -> usize {
    read(list, 0, |l| l.0.len())
}

/// Item `index` of `list`, borrowed from it; NULL past the end.
#[no_mangle]
pub extern "C" fn qpq_event_list_get(list: *const qpq_event_list, index: usize) -> *const qpq_event {
    read(list, null(), |l| at(&l.0, index))
}

/// Frees `list` and every item in it; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_event_list_free(list: *mut qpq_event_list) {
    free(list)
}

/// Number of strings in `list`; 0 for NULL.
#[no_mangle]
pub extern "C" fn qpq_string_list_len(list: *const qpq_string_list) -> usize {
    read(list, 0, |l| l.0.len())
}

/// String `index` of `list` (NUL-terminated UTF-8), borrowed from it; NULL past the end.
#[no_mangle]
pub extern "C" fn qpq_string_list_get(list: *const qpq_string_list, index: usize) -> *const c_char {
    read(list, null(), |l| l.0.get(index).map_or(null(), |x| s(x)))
}

/// Frees `list` and every string in it; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_string_list_free(list: *mut qpq_string_list) {
    free(list)
}

/// The account's username, borrowed from `account`.
#[no_mangle]
pub extern "C" fn qpq_account_username(account: *const qpq_account) -> *const c_char {
    read(account, null(), |a| s(&a.0.username))
}

/// The account's identity key: 32 bytes borrowed from `account`.
#[no_mangle]
pub extern "C" fn qpq_account_identity_key(account: *const qpq_account) -> *const u8 {
    read(account, null(), |a| a.0.identity_key.as_ptr())
}

/// This device's key: 32 bytes borrowed from `account`.
#[no_mangle]
pub extern "C" fn qpq_account_device_key(account: *const qpq_account) -> *const u8 {
    read(account, null(), |a| a.0.device_key.as_ptr())
}

/// Frees an account; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_account_free(account: *mut qpq_account) {
    free(account)
}

/// The conversation's id; all zero for NULL.
#[no_mangle]
pub extern "C" fn qpq_conversation_get_id(conv: *const qpq_conversation) -> qpq_conversation_id {
    read(conv, Default::default(), |c| c.0.id.into())
}

/// DM or group.
#[no_mangle]
pub extern "C" fn qpq_conversation_get_kind(conv: *const qpq_conversation) -> qpq_conversation_kind {
    read(conv, qpq_conversation_kind::QPQ_CONVERSATION_NONE, |c| match c.0.kind {
        ConversationKind::Dm => qpq_conversation_kind::QPQ_CONVERSATION_DM,
        ConversationKind::Group => qpq_conversation_kind::QPQ_CONVERSATION_GROUP,
    })
}

/// The group's name (for a DM: the peer's username), borrowed from `conv`.
#[no_mangle]
pub extern "C" fn qpq_conversation_name(conv: *const qpq_conversation) -> *const c_char {
    read(conv, null(), |c| s(&c.0.name))
}

/// True when the group uses the post-quantum X-Wing (ML-KEM-768 + X25519) ciphersuite.
#[no_mangle]
pub extern "C" fn qpq_conversation_post_quantum(conv: *const qpq_conversation) -> bool {
    read(conv, false, |c| c.0.post_quantum)
}

/// The MLS ciphersuite's name, borrowed from `conv`.
#[no_mangle]
pub extern "C" fn qpq_conversation_ciphersuite(conv: *const qpq_conversation) -> *const c_char {
    read(conv, null(), |c| s(&c.0.ciphersuite))
}

/// The current MLS epoch.
#[no_mangle]
pub extern "C" fn qpq_conversation_epoch(conv: *const qpq_conversation) -> u64 {
    read(conv, 0, |c| c.0.epoch)
}

/// Number of members (usernames, each once).
#[no_mangle]
pub extern "C" fn qpq_conversation_member_count(conv: *const qpq_conversation) -> usize {
    read(conv, 0, |c| c.0.members.len())
}

/// Member `index`'s username (sorted), borrowed from `conv`; NULL past the end.
#[no_mangle]
pub extern "C" fn qpq_conversation_member(conv: *const qpq_conversation, index: usize) -> *const c_char {
    read(conv, null(), |c| c.0.members.get(index).map_or(null(), |m| s(m)))
}

/// False once this account was removed or left.
#[no_mangle]
pub extern "C" fn qpq_conversation_active(conv: *const qpq_conversation) -> bool {
    read(conv, false, |c| c.0.active)
}

/// Received messages not yet read through `qpq_client_messages`.
#[no_mangle]
pub extern "C" fn qpq_conversation_unread(conv: *const qpq_conversation) -> u64 {
    read(conv, 0, |c| c.0.unread)
}

/// Whether the user wants the conversation: `QPQ_CONSENT_REQUESTED` for an invitation from a
/// stranger until `qpq_client_accept` or `qpq_client_decline`. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_conversation_consent(conv: *const qpq_conversation) -> qpq_consent {
    read(conv, qpq_consent::QPQ_CONSENT_NONE, |c| match c.0.consent {
        Consent::Allowed => qpq_consent::QPQ_CONSENT_ALLOWED,
        Consent::Requested => qpq_consent::QPQ_CONSENT_REQUESTED,
        Consent::Denied => qpq_consent::QPQ_CONSENT_DENIED,
    })
}

/// Who invited this account, borrowed from `conv`; NULL for a conversation this device
/// created (or NULL `conv`). ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_conversation_invited_by(conv: *const qpq_conversation) -> *const c_char {
    read(conv, null(), |c| c.0.invited_by.as_deref().map_or(null(), s))
}

/// Frees a conversation from an out-param; NULL is ignored. Never pass a borrowed one.
#[no_mangle]
pub extern "C" fn qpq_conversation_free(conv: *mut qpq_conversation) {
    free(conv)
}

/// The message's id; all zero for NULL.
#[no_mangle]
pub extern "C" fn qpq_message_get_id(message: *const qpq_message) -> qpq_message_id {
    read(message, Default::default(), |m| m.0.id.into())
}

/// The message's conversation; all zero for NULL.
#[no_mangle]
pub extern "C" fn qpq_message_conversation(message: *const qpq_message) -> qpq_conversation_id {
    read(message, Default::default(), |m| m.0.conversation.into())
}

/// The sender's username, borrowed from `message`.
#[no_mangle]
pub extern "C" fn qpq_message_sender(message: *const qpq_message) -> *const c_char {
    read(message, null(), |m| s(&m.0.sender))
}

/// The sender's device key: 32 bytes borrowed from `message`.
#[no_mangle]
pub extern "C" fn qpq_message_sender_device(message: *const qpq_message) -> *const u8 {
    read(message, null(), |m| m.0.sender_device.as_ptr())
}

/// The message's body, borrowed from `message`.
#[no_mangle]
pub extern "C" fn qpq_message_body(message: *const qpq_message) -> *const qpq_body {
    read(message, null(), |m| (&m.0.body as *const Body).cast::<qpq_body>())
}

/// The sender's clock when sent, Unix milliseconds.
#[no_mangle]
pub extern "C" fn qpq_message_sent_at_ms(message: *const qpq_message) -> u64 {
    read(message, 0, |m| m.0.sent_at_ms)
}

/// Local order key and receive time, Unix ms: strictly increasing within one store.
#[no_mangle]
pub extern "C" fn qpq_message_received_at_ms(message: *const qpq_message) -> u64 {
    read(message, 0, |m| m.0.received_at_ms)
}

/// True when sent by this account (from this or another of its devices).
#[no_mangle]
pub extern "C" fn qpq_message_outgoing(message: *const qpq_message) -> bool {
    read(message, false, |m| m.0.outgoing)
}

/// Where an outgoing message is; `QPQ_DELIVERY_RECEIVED` for incoming ones.
#[no_mangle]
pub extern "C" fn qpq_message_delivery(message: *const qpq_message) -> qpq_delivery {
    read(message, qpq_delivery::QPQ_DELIVERY_NONE, |m| match m.0.delivery {
        Delivery::Received => qpq_delivery::QPQ_DELIVERY_RECEIVED,
        Delivery::Queued => qpq_delivery::QPQ_DELIVERY_QUEUED,
        Delivery::Sent => qpq_delivery::QPQ_DELIVERY_SENT,
        Delivery::Failed => qpq_delivery::QPQ_DELIVERY_FAILED,
    })
}

/// The member's username, borrowed from `member`.
#[no_mangle]
pub extern "C" fn qpq_member_username(member: *const qpq_member) -> *const c_char {
    read(member, null(), |m| s(&m.0.username))
}

/// The account identity key (32 bytes, borrowed); NULL when this device does not know it yet.
#[no_mangle]
pub extern "C" fn qpq_member_identity_key(member: *const qpq_member) -> *const u8 {
    read(member, null(), |m| m.0.identity_key.as_ref().map_or(null(), |k| k.as_ptr()))
}

/// Number of device keys.
#[no_mangle]
pub extern "C" fn qpq_member_device_count(member: *const qpq_member) -> usize {
    read(member, 0, |m| m.0.devices.len())
}

/// Device key `index` (32 bytes, borrowed); NULL past the end.
#[no_mangle]
pub extern "C" fn qpq_member_device(member: *const qpq_member, index: usize) -> *const u8 {
    read(member, null(), |m| m.0.devices.get(index).map_or(null(), |k| k.as_ptr()))
}

/// Frees a member from an out-param; NULL is ignored. Never pass a borrowed one.
#[no_mangle]
pub extern "C" fn qpq_member_free(member: *mut qpq_member) {
    free(member)
}

fn new_body(out_body: *mut *mut qpq_body, f: impl FnOnce() -> Result<Body, qpq_core::Error>) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_body, "out_body", std::ptr::null_mut())?;
        *slot = owned(qpq_body::new(f()?));
        Ok(())
    })
}

/// A text body (`text` is copied). Owned: `qpq_body_free`.
#[no_mangle]
pub extern "C" fn qpq_body_new_text(text: *const c_char, out_body: *mut *mut qpq_body) -> *mut qpq_error {
    new_body(out_body, || Ok(Body::Text(str_arg(text, "text")?.into())))
}

/// An application payload: `len` bytes at `bytes` (copied), described by `content_type`
/// (1 to 255 bytes, not interpreted). Owned: `qpq_body_free`.
#[no_mangle]
pub extern "C" fn qpq_body_new_app(
    content_type: *const c_char, bytes: *const u8, len: usize, out_body: *mut *mut qpq_body,
) -> *mut qpq_error {
    new_body(out_body, || {
        Ok(Body::App {
            content_type: str_arg(content_type, "content_type")?.into(),
            bytes: bytes_arg(bytes, len, "bytes")?.to_vec(),
        })
    })
}

/// A reply to message `to` (reserved: sending it gives `QPQ_ERROR_INVALID_INPUT` today).
#[no_mangle]
pub extern "C" fn qpq_body_new_reply(
    to: *const qpq_message_id, text: *const c_char, out_body: *mut *mut qpq_body,
) -> *mut qpq_error {
    new_body(out_body, || Ok(Body::Reply { to: arg(to, "to")?.core(), text: str_arg(text, "text")?.into() }))
}

/// A reaction to message `to`, or its withdrawal when `remove` (reserved, like replies).
#[no_mangle]
pub extern "C" fn qpq_body_new_reaction(
    to: *const qpq_message_id, emoji: *const c_char, remove: bool, out_body: *mut *mut qpq_body,
) -> *mut qpq_error {
    new_body(out_body, || {
        Ok(Body::Reaction { to: arg(to, "to")?.core(), emoji: str_arg(emoji, "emoji")?.into(), remove })
    })
}

/// A new text for the sender's earlier message `of` (reserved, like replies).
#[no_mangle]
pub extern "C" fn qpq_body_new_edit(
    of: *const qpq_message_id, text: *const c_char, out_body: *mut *mut qpq_body,
) -> *mut qpq_error {
    new_body(out_body, || Ok(Body::Edit { of: arg(of, "of")?.core(), text: str_arg(text, "text")?.into() }))
}

/// The sender deletes its earlier message `of` (reserved, like replies).
#[no_mangle]
pub extern "C" fn qpq_body_new_delete(of: *const qpq_message_id, out_body: *mut *mut qpq_body) -> *mut qpq_error {
    new_body(out_body, || Ok(Body::Delete { of: arg(of, "of")?.core() }))
}

/// A file stored elsewhere, encrypted under `key` (reserved, like replies). Buffers are copied.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn qpq_body_new_file(
    name: *const c_char, mime_type: *const c_char, size: u64, sha256: *const u8, sha256_len: usize, key: *const u8,
    key_len: usize, out_body: *mut *mut qpq_body,
) -> *mut qpq_error {
    new_body(out_body, || {
        Ok(Body::File {
            name: str_arg(name, "name")?.into(),
            mime_type: str_arg(mime_type, "mime_type")?.into(),
            size,
            sha256: bytes_arg(sha256, sha256_len, "sha256")?.to_vec(),
            key: bytes_arg(key, key_len, "key")?.to_vec(),
        })
    })
}

/// What the body carries.
#[no_mangle]
pub extern "C" fn qpq_body_get_kind(body: *const qpq_body) -> qpq_body_kind {
    use qpq_body_kind::*;
    read(body, QPQ_BODY_UNKNOWN, |b| match b.0 {
        Body::Text(_) => QPQ_BODY_TEXT,
        Body::App { .. } => QPQ_BODY_APP,
        Body::Reply { .. } => QPQ_BODY_REPLY,
        Body::Reaction { .. } => QPQ_BODY_REACTION,
        Body::Edit { .. } => QPQ_BODY_EDIT,
        Body::Delete { .. } => QPQ_BODY_DELETE,
        Body::File { .. } => QPQ_BODY_FILE,
        _ => QPQ_BODY_UNKNOWN,
    })
}

/// The text of a text, reply or edit body (UTF-8, borrowed; NULL for other kinds). Its length
/// in bytes goes to `len` unless NULL: a received text may contain NUL bytes.
#[no_mangle]
pub extern "C" fn qpq_body_text(body: *const qpq_body, len: *mut usize) -> *const c_char {
    put_len(len, 0);
    read(body, null(), |b| match &b.0 {
        Body::Text(t) | Body::Reply { text: t, .. } | Body::Edit { text: t, .. } => s_len(t, len),
        _ => null(),
    })
}

/// The content type of an app body (borrowed); NULL for other kinds.
#[no_mangle]
pub extern "C" fn qpq_body_content_type(body: *const qpq_body) -> *const c_char {
    read(body, null(), |b| match &b.0 {
        Body::App { content_type, .. } => s(content_type),
        _ => null(),
    })
}

/// The payload of an app body (borrowed), its length to `len` unless NULL; NULL otherwise.
#[no_mangle]
pub extern "C" fn qpq_body_bytes(body: *const qpq_body, len: *mut usize) -> *const u8 {
    put_len(len, 0);
    read(body, null(), |b| match &b.0 {
        Body::App { bytes, .. } => bytes_len(bytes, len),
        _ => null(),
    })
}

/// The message a reply, reaction, edit or delete refers to; all zero for other kinds.
#[no_mangle]
pub extern "C" fn qpq_body_target(body: *const qpq_body) -> qpq_message_id {
    read(body, Default::default(), |b| match &b.0 {
        Body::Reply { to, .. } | Body::Reaction { to, .. } => (*to).into(),
        Body::Edit { of, .. } | Body::Delete { of } => (*of).into(),
        _ => Default::default(),
    })
}

/// The emoji of a reaction (borrowed); NULL for other kinds.
#[no_mangle]
pub extern "C" fn qpq_body_emoji(body: *const qpq_body) -> *const c_char {
    read(body, null(), |b| match &b.0 {
        Body::Reaction { emoji, .. } => s(emoji),
        _ => null(),
    })
}

/// True for a reaction taken back.
#[no_mangle]
pub extern "C" fn qpq_body_removed(body: *const qpq_body) -> bool {
    read(body, false, |b| matches!(b.0, Body::Reaction { remove: true, .. }))
}

/// A file body's name (borrowed); NULL for other kinds.
#[no_mangle]
pub extern "C" fn qpq_body_file_name(body: *const qpq_body) -> *const c_char {
    read(body, null(), |b| match &b.0 {
        Body::File { name, .. } => s(name),
        _ => null(),
    })
}

/// A file body's MIME type (borrowed); NULL for other kinds.
#[no_mangle]
pub extern "C" fn qpq_body_mime_type(body: *const qpq_body) -> *const c_char {
    read(body, null(), |b| match &b.0 {
        Body::File { mime_type, .. } => s(mime_type),
        _ => null(),
    })
}

/// A file body's size in bytes; 0 for other kinds.
#[no_mangle]
pub extern "C" fn qpq_body_file_size(body: *const qpq_body) -> u64 {
    read(body, 0, |b| match &b.0 {
        Body::File { size, .. } => *size,
        _ => 0,
    })
}

/// A file body's SHA-256 of the encrypted file, or its key (`key` true); borrowed, length to
/// `len` unless NULL; NULL for other kinds.
#[no_mangle]
pub extern "C" fn qpq_body_file_hash_or_key(body: *const qpq_body, key: bool, len: *mut usize) -> *const u8 {
    put_len(len, 0);
    read(body, null(), |b| match &b.0 {
        Body::File { sha256, key: k, .. } => bytes_len(if key { k } else { sha256 }, len),
        _ => null(),
    })
}

/// Frees a body made by `qpq_body_new_*`; NULL is ignored. Never pass a borrowed one.
#[no_mangle]
pub extern "C" fn qpq_body_free(body: *mut qpq_body) {
    free(body)
}

/// What the event is.
#[no_mangle]
pub extern "C" fn qpq_event_get_kind(event: *const qpq_event) -> qpq_event_kind {
    use qpq_event_kind::*;
    read(event, QPQ_EVENT_NONE, |e| match e.event {
        Event::Message(_) => QPQ_EVENT_MESSAGE,
        Event::ConversationJoined(_) => QPQ_EVENT_CONVERSATION_JOINED,
        Event::MembersChanged { .. } => QPQ_EVENT_MEMBERS_CHANGED,
        Event::Removed { .. } => QPQ_EVENT_REMOVED,
        Event::ConnectionChanged { .. } => QPQ_EVENT_CONNECTION_CHANGED,
        Event::MessageSent { .. } => QPQ_EVENT_MESSAGE_SENT,
        Event::MessageFailed { .. } => QPQ_EVENT_MESSAGE_FAILED,
        Event::ConversationBroken { .. } => QPQ_EVENT_CONVERSATION_BROKEN,
        Event::ConversationRecovered { .. } => QPQ_EVENT_CONVERSATION_RECOVERED,
    })
}

/// The event's number (from `qpq_client_wait_event_after`); 0 for events not numbered.
#[no_mangle]
pub extern "C" fn qpq_event_cursor(event: *const qpq_event) -> u64 {
    read(event, 0, |e| e.cursor)
}

/// The message of a `QPQ_EVENT_MESSAGE` (borrowed); NULL for other kinds.
#[no_mangle]
pub extern "C" fn qpq_event_message(event: *const qpq_event) -> *const qpq_message {
    read(event, null(), |e| match &e.event {
        Event::Message(m) => (m as *const Message).cast(),
        _ => null(),
    })
}

/// The conversation of a `QPQ_EVENT_CONVERSATION_JOINED` (borrowed); NULL for other kinds.
#[no_mangle]
pub extern "C" fn qpq_event_conversation(event: *const qpq_event) -> *const qpq_conversation {
    read(event, null(), |e| match &e.event {
        Event::ConversationJoined(c) => (c as *const Conversation).cast(),
        _ => null(),
    })
}

/// The conversation the event concerns (every kind but connection changes; else all zero).
#[no_mangle]
pub extern "C" fn qpq_event_conversation_id(event: *const qpq_event) -> qpq_conversation_id {
    read(event, Default::default(), |e| match &e.event {
        Event::Message(m) => m.conversation.into(),
        Event::ConversationJoined(c) => c.id.into(),
        Event::MembersChanged { conversation, .. }
        | Event::Removed { conversation, .. }
        | Event::MessageSent { conversation, .. }
        | Event::MessageFailed { conversation, .. }
        | Event::ConversationBroken { conversation, .. }
        | Event::ConversationRecovered { conversation } => (*conversation).into(),
        Event::ConnectionChanged { .. } => Default::default(),
    })
}

fn names(e: &qpq_event, removed: bool) -> &[String] {
    match &e.event {
        Event::MembersChanged { added, removed: r, .. } => {
            if removed {
                r
            } else {
                added
            }
        }
        _ => &[],
    }
}

/// Number of usernames added (`removed` false) or removed by someone else (`removed` true) by
/// a `QPQ_EVENT_MEMBERS_CHANGED`; 0 for other kinds. Those that left: `qpq_event_left_count`.
#[no_mangle]
pub extern "C" fn qpq_event_member_count(event: *const qpq_event, removed: bool) -> usize {
    read(event, 0, |e| names(e, removed).len())
}

/// Username `index` of those added (or removed), borrowed from `event`; NULL past the end.
#[no_mangle]
pub extern "C" fn qpq_event_member(event: *const qpq_event, removed: bool, index: usize) -> *const c_char {
    read(event, null(), |e| names(e, removed).get(index).map_or(null(), |n| s(n)))
}

fn left_names(e: &qpq_event) -> &[String] {
    match &e.event {
        Event::MembersChanged { left, .. } => left,
        _ => &[],
    }
}

/// Number of usernames that left on their own in a `QPQ_EVENT_MEMBERS_CHANGED` (members
/// removed by someone else are in `qpq_event_member(event, true, i)`); 0 for other kinds.
/// ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_event_left_count(event: *const qpq_event) -> usize {
    read(event, 0, |e| left_names(e).len())
}

/// Username `index` of those that left on their own, borrowed from `event`; NULL past the
/// end. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_event_left_member(event: *const qpq_event, index: usize) -> *const c_char {
    read(event, null(), |e| left_names(e).get(index).map_or(null(), |n| s(n)))
}

/// Who made the change, borrowed from `event`: for `QPQ_EVENT_MEMBERS_CHANGED` the member who
/// committed it, for `QPQ_EVENT_REMOVED` who removed this account (its own username when it
/// left). NULL when this device does not know the username, and for other kinds. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_event_by(event: *const qpq_event) -> *const c_char {
    read(event, null(), |e| match &e.event {
        Event::MembersChanged { by, .. } | Event::Removed { by, .. } => by.as_deref().map_or(null(), s),
        _ => null(),
    })
}

/// True for a `QPQ_EVENT_REMOVED` where this account left on its own rather than being
/// removed; false otherwise. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_event_left(event: *const qpq_event) -> bool {
    read(event, false, |e| matches!(e.event, Event::Removed { left: true, .. }))
}

/// Why a `QPQ_EVENT_CONVERSATION_BROKEN` happened, for humans (borrowed); NULL for other
/// kinds. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_event_reason(event: *const qpq_event) -> *const c_char {
    read(event, null(), |e| match &e.event {
        Event::ConversationBroken { reason, .. } => s(reason),
        _ => null(),
    })
}

/// The epoch after a `QPQ_EVENT_MEMBERS_CHANGED`; 0 for other kinds.
#[no_mangle]
pub extern "C" fn qpq_event_epoch(event: *const qpq_event) -> u64 {
    read(event, 0, |e| match e.event {
        Event::MembersChanged { epoch, .. } => epoch,
        _ => 0,
    })
}

/// True for a `QPQ_EVENT_CONNECTION_CHANGED` that reports the connection up.
#[no_mangle]
pub extern "C" fn qpq_event_connected(event: *const qpq_event) -> bool {
    read(event, false, |e| matches!(e.event, Event::ConnectionChanged { connected: true }))
}

/// The message id of a message, sent or failed event (as `qpq_client_send` returned it).
#[no_mangle]
pub extern "C" fn qpq_event_message_id(event: *const qpq_event) -> qpq_message_id {
    read(event, Default::default(), |e| match &e.event {
        Event::Message(m) => m.id.into(),
        Event::MessageSent { id, .. } | Event::MessageFailed { id, .. } => (*id).into(),
        _ => Default::default(),
    })
}

/// Why a `QPQ_EVENT_MESSAGE_FAILED` failed; `QPQ_OK` for other kinds.
#[no_mangle]
pub extern "C" fn qpq_event_error_code(event: *const qpq_event) -> qpq_code {
    read(event, qpq_code::QPQ_OK, |e| match &e.event {
        Event::MessageFailed { code, .. } => (*code).into(),
        _ => qpq_code::QPQ_OK,
    })
}

/// Why a `QPQ_EVENT_MESSAGE_FAILED` failed, for humans (borrowed); NULL for other kinds.
#[no_mangle]
pub extern "C" fn qpq_event_error_message(event: *const qpq_event) -> *const c_char {
    read(event, null(), |e| match &e.event {
        Event::MessageFailed { message, .. } => s(message),
        _ => null(),
    })
}

/// Frees an event from an out-param; NULL is ignored. Never pass one borrowed from a list.
#[no_mangle]
pub extern "C" fn qpq_event_free(event: *mut qpq_event) {
    free(event)
}
