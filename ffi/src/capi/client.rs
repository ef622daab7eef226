//! `qpq_client`: one account, one encrypted store, one connection (core's `Client`). Every
//! function may be called from any thread at the same time, except `qpq_client_free`, which
//! must be the last call on a handle.

use std::ffi::c_char;
use std::ptr::null_mut;
use std::time::Duration;

use qpq_core::{Client, ConversationId, Error, MessageId};

use super::config::qpq_config;
use super::data::*;
use super::{arg, c_string, call, entry, free, out, owned, str_arg, strs_arg};
use crate::error::qpq_error;

/// A client handle. Thread-safe. Close it with `qpq_client_close` (idempotent), free it with
/// `qpq_client_free` once no other thread uses it.
pub struct qpq_client(Client);

fn cl<'a>(client: *const qpq_client) -> Result<&'a Client, Error> {
    Ok(&arg(client, "client")?.0)
}

fn conv(id: *const qpq_conversation_id) -> Result<ConversationId, Error> {
    Ok(arg(id, "conversation")?.core())
}

/// Opens (or creates) the encrypted store of `config` and starts background receive. Needs
/// no network. Errors: `QPQ_ERROR_STORAGE` (wrong key; the file is untouched),
/// `QPQ_ERROR_BUSY` (another process holds the store), `QPQ_ERROR_INVALID_INPUT` (config).
/// `config` is only read: free it when convenient. Owned: `qpq_client_free`.
#[no_mangle]
pub extern "C" fn qpq_client_open(config: *const qpq_config, out_client: *mut *mut qpq_client) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_client, "out_client", null_mut())?;
        *slot = owned(qpq_client(Client::open(arg(config, "config")?.build()?)?));
        Ok(())
    })
}

/// Closes the client: stops background receive, releases the store; blocked waits return
/// `QPQ_ERROR_CLOSED` and later calls fail with it. Idempotent; NULL is ignored.
#[no_mangle]
pub extern "C" fn qpq_client_close(client: *const qpq_client) {
    if let Ok(c) = cl(client) {
        let _ = call(|| Ok(c.shutdown()));
    }
}

/// Closes (if needed) and frees the client; NULL is ignored. No other thread may be inside a
/// call on it: call `qpq_client_close` first to make blocked calls return.
#[no_mangle]
pub extern "C" fn qpq_client_free(client: *mut qpq_client) {
    free(client)
}

fn account_call(
    out_account: *mut *mut qpq_account, client: *const qpq_client,
    f: impl FnOnce(&Client) -> Result<qpq_core::Account, Error>,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_account, "out_account", null_mut())?;
        *slot = owned(qpq_account::new(f(cl(client)?)?));
        Ok(())
    })
}

/// Registers `username` (OPAQUE: the password never leaves this device), logs in and
/// publishes this device's keys. `QPQ_ERROR_CONFLICT` when the name is taken. Owned account.
#[no_mangle]
pub extern "C" fn qpq_client_register(
    client: *const qpq_client, username: *const c_char, password: *const c_char, out_account: *mut *mut qpq_account,
) -> *mut qpq_error {
    account_call(out_account, client, |c| c.register(str_arg(username, "username")?, str_arg(password, "password")?))
}

/// Logs in; a wrong password or unknown user gives `QPQ_ERROR_UNAUTHORIZED`. Owned account.
#[no_mangle]
pub extern "C" fn qpq_client_login(
    client: *const qpq_client, username: *const c_char, password: *const c_char, out_account: *mut *mut qpq_account,
) -> *mut qpq_error {
    account_call(out_account, client, |c| c.login(str_arg(username, "username")?, str_arg(password, "password")?))
}

/// Registers on first use, logs in when the name is taken; `*out_created` tells which.
#[no_mangle]
pub extern "C" fn qpq_client_register_or_login(
    client: *const qpq_client, username: *const c_char, password: *const c_char, out_account: *mut *mut qpq_account,
    out_created: *mut bool,
) -> *mut qpq_error {
    account_call(out_account, client, |c| {
        let created = out(out_created, "out_created", false)?;
        let (a, new) = c.register_or_login(str_arg(username, "username")?, str_arg(password, "password")?)?;
        *created = new;
        Ok(a)
    })
}

/// Ends the session on the server (best effort) and forgets the token; the store stays.
#[no_mangle]
pub extern "C" fn qpq_client_logout(client: *const qpq_client) -> *mut qpq_error {
    entry(|| cl(client)?.logout())
}

/// The account in this client's store, logged in or not; `*out_account` is NULL when there
/// is none. Owned account. Local only.
#[no_mangle]
pub extern "C" fn qpq_client_account(client: *const qpq_client, out_account: *mut *mut qpq_account) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_account, "out_account", null_mut())?;
        *slot = cl(client)?.account().map_or(null_mut(), |a| owned(qpq_account::new(a)));
        Ok(())
    })
}

/// Looks a user up on the server; `QPQ_ERROR_NOT_FOUND` when unknown. Owned member.
#[no_mangle]
pub extern "C" fn qpq_client_resolve_user(
    client: *const qpq_client, username: *const c_char, out_member: *mut *mut qpq_member,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_member, "out_member", null_mut())?;
        let m = cl(client)?.resolve_user(str_arg(username, "username")?)?;
        *slot = owned(qpq_member::new(m));
        Ok(())
    })
}

fn id_call(out_id: *mut qpq_conversation_id, f: impl FnOnce() -> Result<ConversationId, Error>) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_id, "out_id", Default::default())?;
        *slot = f()?.into();
        Ok(())
    })
}

/// Creates a group named `name` (this account its admin); `post_quantum` picks the X-Wing
/// ciphersuite. Its id goes to `*out_id`.
#[no_mangle]
pub extern "C" fn qpq_client_create_group(
    client: *const qpq_client, name: *const c_char, post_quantum: bool, out_id: *mut qpq_conversation_id,
) -> *mut qpq_error {
    id_call(out_id, || cl(client)?.create_group(str_arg(name, "name")?, post_quantum))
}

/// Creates (or reuses) the DM with `username`. Its id goes to `*out_id`.
#[no_mangle]
pub extern "C" fn qpq_client_create_dm(
    client: *const qpq_client, username: *const c_char, out_id: *mut qpq_conversation_id,
) -> *mut qpq_error {
    id_call(out_id, || cl(client)?.create_dm(str_arg(username, "username")?))
}

/// Adds every device of the `count` users named in `usernames` in one commit.
/// `QPQ_ERROR_NOT_FOUND` for an unknown user, `QPQ_ERROR_ALREADY_MEMBER`, `QPQ_ERROR_FORBIDDEN`.
#[no_mangle]
pub extern "C" fn qpq_client_invite(
    client: *const qpq_client, conversation: *const qpq_conversation_id, usernames: *const *const c_char, count: usize,
) -> *mut qpq_error {
    entry(|| cl(client)?.invite(&conv(conversation)?, &strs_arg(usernames, count, "usernames")?))
}

/// Removes every device of `username` in one commit (admins only in a group).
#[no_mangle]
pub extern "C" fn qpq_client_remove(
    client: *const qpq_client, conversation: *const qpq_conversation_id, username: *const c_char,
) -> *mut qpq_error {
    entry(|| cl(client)?.remove(&conv(conversation)?, str_arg(username, "username")?))
}

/// Leaves the conversation; its history stays readable.
#[no_mangle]
pub extern "C" fn qpq_client_leave(
    client: *const qpq_client, conversation: *const qpq_conversation_id,
) -> *mut qpq_error {
    entry(|| cl(client)?.leave(&conv(conversation)?))
}

/// Accepts a conversation whose consent is `QPQ_CONSENT_REQUESTED`: it becomes
/// `QPQ_CONSENT_ALLOWED` and its members count as contacts. Sending in it accepts it too.
/// `QPQ_ERROR_NOT_FOUND` for an unknown conversation. Local only. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_client_accept(
    client: *const qpq_client, conversation: *const qpq_conversation_id,
) -> *mut qpq_error {
    entry(|| cl(client)?.accept(&conv(conversation)?))
}

/// Declines a conversation: leaves it if still a member (as `qpq_client_leave`) and marks it
/// `QPQ_CONSENT_DENIED`; its history stays. With `block`, also blocks the account that
/// invited this one (`qpq_client_block`). `QPQ_ERROR_NOT_FOUND` for an unknown conversation.
/// ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_client_decline(
    client: *const qpq_client, conversation: *const qpq_conversation_id, block: bool,
) -> *mut qpq_error {
    entry(|| cl(client)?.decline(&conv(conversation)?, block))
}

/// Blocks `username` on the server: its messages no longer reach this account and it cannot
/// add this account to a conversation (`QPQ_ERROR_FORBIDDEN`). Shared groups keep working; it
/// leaves or declines nothing by itself. Idempotent; `QPQ_ERROR_NOT_FOUND` for an unknown
/// user. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_client_block(client: *const qpq_client, username: *const c_char) -> *mut qpq_error {
    entry(|| cl(client)?.block(str_arg(username, "username")?))
}

/// Ends a block made by `qpq_client_block`. Idempotent. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_client_unblock(client: *const qpq_client, username: *const c_char) -> *mut qpq_error {
    entry(|| cl(client)?.unblock(str_arg(username, "username")?))
}

/// Usernames this account blocks, as the server stores them. Owned list:
/// `qpq_string_list_free`. ABI 0.2.
#[no_mangle]
pub extern "C" fn qpq_client_blocked(client: *const qpq_client, out_list: *mut *mut qpq_string_list) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_list, "out_list", null_mut())?;
        *slot = owned(qpq_string_list::new(cl(client)?.blocked()?));
        Ok(())
    })
}

/// Makes member `username` an admin of the group (only an admin may).
#[no_mangle]
pub extern "C" fn qpq_client_promote(
    client: *const qpq_client, conversation: *const qpq_conversation_id, username: *const c_char,
) -> *mut qpq_error {
    entry(|| cl(client)?.promote(&conv(conversation)?, str_arg(username, "username")?))
}

/// Fresh key material for this device in the conversation (a self-update commit).
#[no_mangle]
pub extern "C" fn qpq_client_rotate_keys(
    client: *const qpq_client, conversation: *const qpq_conversation_id,
) -> *mut qpq_error {
    entry(|| cl(client)?.rotate_keys(&conv(conversation)?))
}

fn send_call(out_id: *mut qpq_message_id, f: impl FnOnce() -> Result<MessageId, Error>) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_id, "out_id", Default::default())?;
        *slot = f()?.into();
        Ok(())
    })
}

/// Stores `body` (copied) in the history and the outbox and returns its id at once; delivery
/// is reported by `QPQ_EVENT_MESSAGE_SENT` or `QPQ_EVENT_MESSAGE_FAILED`, never as an error
/// here. An error means nothing was stored.
#[no_mangle]
pub extern "C" fn qpq_client_send(
    client: *const qpq_client, conversation: *const qpq_conversation_id, body: *const qpq_body,
    out_id: *mut qpq_message_id,
) -> *mut qpq_error {
    send_call(out_id, || cl(client)?.send(&conv(conversation)?, arg(body, "body")?.core()))
}

/// `qpq_client_send` with the caller's id: a message already stored with it is not sent again.
#[no_mangle]
pub extern "C" fn qpq_client_send_with_id(
    client: *const qpq_client, conversation: *const qpq_conversation_id, id: *const qpq_message_id,
    body: *const qpq_body, out_id: *mut qpq_message_id,
) -> *mut qpq_error {
    send_call(out_id, || {
        let id = arg(id, "id")?.core();
        cl(client)?.send_with_id(&conv(conversation)?, id, arg(body, "body")?.core())
    })
}

/// `qpq_client_send` of a text body.
#[no_mangle]
pub extern "C" fn qpq_client_send_text(
    client: *const qpq_client, conversation: *const qpq_conversation_id, text: *const c_char,
    out_id: *mut qpq_message_id,
) -> *mut qpq_error {
    send_call(out_id, || cl(client)?.send_text(&conv(conversation)?, str_arg(text, "text")?))
}

/// Every local conversation (active or not). Owned list. Local only.
#[no_mangle]
pub extern "C" fn qpq_client_conversations(
    client: *const qpq_client, out_list: *mut *mut qpq_conversation_list,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_list, "out_list", null_mut())?;
        *slot = owned(qpq_conversation_list::new(cl(client)?.conversations()?));
        Ok(())
    })
}

/// One conversation; `QPQ_ERROR_NOT_FOUND` when unknown. Owned. Local only.
#[no_mangle]
pub extern "C" fn qpq_client_conversation(
    client: *const qpq_client, conversation: *const qpq_conversation_id, out_conversation: *mut *mut qpq_conversation,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_conversation, "out_conversation", null_mut())?;
        let c = cl(client)?.conversation(&conv(conversation)?)?;
        *slot = owned(qpq_conversation::new(c));
        Ok(())
    })
}

/// The name to show for `conversation`: the group's name, or "@peer" for a DM. Owned string:
/// `qpq_string_free`.
#[no_mangle]
pub extern "C" fn qpq_client_display_name(
    client: *const qpq_client, conversation: *const qpq_conversation, out_name: *mut *mut c_char,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_name, "out_name", null_mut())?;
        let c = arg(conversation, "conversation")?.core();
        *slot = c_string(cl(client)?.display_name(&c));
        Ok(())
    })
}

/// Finds a conversation by "#2"/"2" (position), a hex id prefix (4+ digits), its display name
/// or "@bob"; `QPQ_ERROR_INVALID_INPUT` when several match. Owned. Local only.
#[no_mangle]
pub extern "C" fn qpq_client_find_conversation(
    client: *const qpq_client, what: *const c_char, out_conversation: *mut *mut qpq_conversation,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_conversation, "out_conversation", null_mut())?;
        let c = cl(client)?.find_conversation(str_arg(what, "what")?)?;
        *slot = owned(qpq_conversation::new(c));
        Ok(())
    })
}

/// Up to `limit` messages, oldest first, received before `before` (a `received_at_ms`; 0 =
/// the latest page, which clears `unread`). Owned list. Local only.
#[no_mangle]
pub extern "C" fn qpq_client_messages(
    client: *const qpq_client, conversation: *const qpq_conversation_id, limit: usize, before: u64,
    out_list: *mut *mut qpq_message_list,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_list, "out_list", null_mut())?;
        let before = (before != 0).then_some(before);
        let m = cl(client)?.messages(&conv(conversation)?, limit, before)?;
        *slot = owned(qpq_message_list::new(m));
        Ok(())
    })
}

/// Members as the MLS group sees them, one per account. Owned list. Local only.
#[no_mangle]
pub extern "C" fn qpq_client_members(
    client: *const qpq_client, conversation: *const qpq_conversation_id, out_list: *mut *mut qpq_member_list,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_list, "out_list", null_mut())?;
        *slot = owned(qpq_member_list::new(cl(client)?.members(&conv(conversation)?)?));
        Ok(())
    })
}

/// The safety number between this account and `username` (60 digits in 12 groups). Owned
/// string: `qpq_string_free`.
#[no_mangle]
pub extern "C" fn qpq_client_safety_number(
    client: *const qpq_client, username: *const c_char, out_number: *mut *mut c_char,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_number, "out_number", null_mut())?;
        *slot = c_string(cl(client)?.safety_number(str_arg(username, "username")?)?);
        Ok(())
    })
}

/// Fetches and processes everything queued now, sends the outbox and returns the events
/// produced (not also given to `qpq_client_next_event`). Owned list.
#[no_mangle]
pub extern "C" fn qpq_client_sync(client: *const qpq_client, out_list: *mut *mut qpq_event_list) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_list, "out_list", null_mut())?;
        *slot = owned(qpq_event_list::new(cl(client)?.sync()?));
        Ok(())
    })
}

/// Takes the next event from background receive, waiting up to `timeout_ms`; `*out_event`
/// is NULL on timeout. `QPQ_ERROR_CANCELLED` when `qpq_client_interrupt` is called meanwhile
/// (from any thread), `QPQ_ERROR_CLOSED` when the client is closed. Owned event.
#[no_mangle]
pub extern "C" fn qpq_client_next_event(
    client: *const qpq_client, timeout_ms: u64, out_event: *mut *mut qpq_event,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_event, "out_event", null_mut())?;
        let e = cl(client)?.next_event(Duration::from_millis(timeout_ms))?;
        *slot = e.map_or(null_mut(), |e| owned(qpq_event::new(0, e)));
        Ok(())
    })
}

/// The first event numbered after `cursor` (0 = the oldest kept), waiting up to `timeout_ms`;
/// NULL on timeout. Does not consume: each reader resumes from its own last
/// `qpq_event_cursor`. Interrupted like `qpq_client_next_event`. Owned event.
#[no_mangle]
pub extern "C" fn qpq_client_wait_event_after(
    client: *const qpq_client, cursor: u64, timeout_ms: u64, out_event: *mut *mut qpq_event,
) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_event, "out_event", null_mut())?;
        let r = cl(client)?.wait_event_after(cursor, Duration::from_millis(timeout_ms))?;
        *slot = r.map_or(null_mut(), |r| owned(qpq_event::new(r.cursor, r.event)));
        Ok(())
    })
}

/// The cursor of the newest event so far (0 = none yet).
#[no_mangle]
pub extern "C" fn qpq_client_event_cursor(client: *const qpq_client, out_cursor: *mut u64) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_cursor, "out_cursor", 0)?;
        *slot = cl(client)?.event_cursor();
        Ok(())
    })
}

/// Makes every call blocked now in `qpq_client_next_event` or `qpq_client_wait_event_after`
/// return `QPQ_ERROR_CANCELLED`; waits that start later are not affected. Any thread.
#[no_mangle]
pub extern "C" fn qpq_client_interrupt(client: *const qpq_client) -> *mut qpq_error {
    entry(|| Ok(cl(client)?.interrupt()))
}

/// Round-trip time of a health call to the server, in microseconds.
#[no_mangle]
pub extern "C" fn qpq_client_ping(client: *const qpq_client, out_rtt_us: *mut u64) -> *mut qpq_error {
    entry(|| {
        let slot = out(out_rtt_us, "out_rtt_us", 0)?;
        *slot = u64::try_from(cl(client)?.ping()?.as_micros()).unwrap_or(u64::MAX);
        Ok(())
    })
}
