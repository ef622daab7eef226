//! Scriptable subcommands. With `--json` each prints one JSON object per line (errors too:
//! `{"ok":false,"code":"Unauthorized","message":"…"}`); every failure exits with the status of
//! its code family (see [`crate::session::exit_code`]).
//!
//! `recv` hands out each received message once: a message counts as delivered only after its
//! line was written to stdout, and a cursor in the store directory (`recv-cursor`, the last
//! delivered message's local order key, no content) records it. A reader that goes away
//! (`recv --follow | head -1`) ends `recv` cleanly and leaves the undelivered messages for
//! the next `recv`; `history` re-reads any of them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use qpq_core::{Client, ConversationId, ErrorCode, Event, Message};
use serde_json::json;

use crate::daemon::{self, Held};
use crate::session::{
    body_text, clock, display_name, exit_code, find_conversation, membership_text, removal_text,
    CliError, ConnectArgs, ServerArgs,
};

/// Options of every scripted subcommand.
#[derive(Args, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print JSON, one object per line.
    #[arg(long)]
    json: bool,
}

impl CommonArgs {
    /// The connection options.
    pub fn connect(&self) -> &ConnectArgs {
        &self.connect
    }
}

/// Who a message goes to, or whose history to read: exactly one way of naming it, so a
/// username can never be taken for a conversation number or id.
#[derive(Args, Clone)]
#[group(multiple = false)]
pub struct Target {
    /// A username (`bob` or `@bob`): the direct conversation with that user (created when
    /// needed). Never read as a number or an id.
    #[arg(long)]
    to: Option<String>,
    /// A conversation: its number in `qpq groups` (`2` or `#2`), its id (hex prefix, 4 digits
    /// or more), its group name, or `@user`. Refused when it matches more than one.
    #[arg(long)]
    conversation: Option<String>,
}

impl SendArgs {
    /// The connection options.
    pub fn connect(&self) -> &ConnectArgs {
        &self.common.connect
    }
}

impl HistoryArgs {
    /// The connection options.
    pub fn connect(&self) -> &ConnectArgs {
        &self.common.connect
    }
}

/// `qpq send`.
#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: Target,
    /// The text.
    #[arg(
        long,
        conflicts_with = "msg_file",
        required_unless_present = "msg_file"
    )]
    msg: Option<String>,
    /// Read the text from this file (`-`: standard input), for long messages.
    #[arg(long)]
    msg_file: Option<PathBuf>,
}

/// `qpq recv`.
#[derive(Args)]
pub struct RecvArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Keep receiving until interrupted.
    #[arg(long)]
    follow: bool,
    /// With --follow: stop after this many milliseconds without a message (0 = never).
    #[arg(long, default_value_t = 0)]
    idle_exit_ms: u64,
}

/// `qpq history`.
#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: Target,
    /// How many of the latest messages (per conversation when none is named).
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// `qpq ping`: only the server options; no account, password or store.
#[derive(Args)]
pub struct PingArgs {
    #[command(flatten)]
    net: ServerArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn finish(json: bool, r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            daemon::failed(u8::try_from(10 + f.code.as_u32()).unwrap_or(1));
            if json {
                // Best effort: the reader may be gone.
                let _ = emit(
                    &json!({"ok": false, "code": f.code.name(), "message": f.message}).to_string(),
                );
            } else if !daemon::captured("err", &format!("error: {}", f.message)) {
                eprintln!("error: {}", f.message);
            }
            exit_code(f.code)
        }
    }
}

/// The reader of stdout went away (a closed pipe): stop cleanly, deliver nothing more.
struct Gone;

/// Writes one line and flushes it, so that the line is out before anything counts as done.
fn emit(line: &str) -> Result<(), Gone> {
    if daemon::captured("out", line) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|_| Gone)
}

/// Writes one line; a closed stdout ends the command with success.
pub fn say(line: &str) {
    if emit(line).is_err() {
        std::process::exit(0);
    }
}

/// Opens the store; logs in when no session is stored (or it expired). In a command forwarded
/// to the process holding the store ([`daemon`]), that process's client.
fn session(c: &CommonArgs) -> Result<(Held, String), CliError> {
    if let Some((client, password)) = daemon::shared_client() {
        return Ok((Held::Shared(client), password));
    }
    let password = c.connect.password(false)?;
    let client = c.connect.open(&password)?;
    if client.account().is_none() {
        client.login(&c.connect.username, &password)?;
    }
    Ok((Held::Own(client), password))
}

/// Runs `op`, logging in again once if the stored session was refused.
fn with_login<T>(
    c: &CommonArgs,
    client: &Client,
    password: &str,
    op: impl Fn(&Client) -> Result<T, qpq_core::Error>,
) -> Result<T, CliError> {
    match op(client) {
        Err(e) if e.code() == ErrorCode::Unauthorized => {
            client.login(&c.connect.username, password)?;
            Ok(op(client)?)
        }
        r => Ok(r?),
    }
}

fn account_json(a: &qpq_core::Account) -> serde_json::Value {
    json!({"ok": true, "username": a.username, "identity_key": hex::encode(a.identity_key), "device_key": hex::encode(a.device_key)})
}

/// `qpq register`.
pub fn register(c: CommonArgs) -> ExitCode {
    let r = (|| {
        let password = c.connect.password(true)?;
        let client = c.connect.open(&password)?;
        let a = client.register(&c.connect.username, &password)?;
        if c.json {
            say(&account_json(&a).to_string());
        } else {
            say(&format!("registered {}", a.username));
        }
        Ok(())
    })();
    finish(c.json, r)
}

/// `qpq login`.
pub fn login(c: CommonArgs) -> ExitCode {
    let r = (|| {
        let password = c.connect.password(false)?;
        let client = c.connect.open(&password)?;
        let a = client.login(&c.connect.username, &password)?;
        if c.json {
            say(&account_json(&a).to_string());
        } else {
            say(&format!("logged in as {}", a.username));
        }
        Ok(())
    })();
    finish(c.json, r)
}

/// The DM with `user` (an active one found locally, else created or reused by the engine).
fn dm_with(
    c: &CommonArgs,
    client: &Client,
    pw: &str,
    user: &str,
) -> Result<ConversationId, CliError> {
    let user = user.trim_start_matches('@');
    if user.is_empty() {
        return Err("--to needs a username".into());
    }
    let local = client.conversations()?.into_iter().find(|x| {
        x.active && x.kind == qpq_core::ConversationKind::Dm && x.members.iter().any(|m| m == user)
    });
    match local {
        Some(x) => Ok(x.id),
        None => with_login(c, client, pw, |cl| cl.create_dm(user)),
    }
}

fn read_text(a: &SendArgs) -> Result<String, CliError> {
    match (&a.msg, &a.msg_file) {
        (Some(m), _) => Ok(m.clone()),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            Ok(s)
        }
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()).into()),
        (None, None) => Err("--msg or --msg-file is required".into()),
    }
}

/// `qpq send`.
pub fn send(a: SendArgs) -> ExitCode {
    let c = &a.common;
    let r = (|| {
        let text = read_text(&a)?;
        let (client, pw) = session(c)?;
        with_login(c, &client, &pw, |cl| cl.sync().map(|_| ()))?;
        let conv = match (&a.target.to, &a.target.conversation) {
            (Some(user), _) => dm_with(c, &client, &pw, user)?,
            (None, Some(what)) => find_conversation(&client, what)?,
            (None, None) => {
                return Err("--to <user> or --conversation <N|id|name> is required".into())
            }
        };
        let id = with_login(c, &client, &pw, |cl| cl.send_text(&conv, &text))?;
        // `send` only stores and queues; this sends the outbox now, before the process exits
        // (a network failure leaves it queued for the next run).
        let _ = with_login(c, &client, &pw, |cl| cl.sync().map(|_| ()));
        if c.json {
            say(
                &json!({"ok": true, "conversation": hex::encode(conv), "id": hex::encode(id)})
                    .to_string(),
            );
        } else {
            say("sent");
        }
        Ok(())
    })();
    finish(c.json, r)
}

fn conversation_name(client: &Client, conv: &ConversationId) -> String {
    client
        .conversation(conv)
        .map(|c| display_name(client, &c))
        .unwrap_or_default()
}

fn message_line(json: bool, client: &Client, m: &Message) -> String {
    let name = conversation_name(client, &m.conversation);
    if json {
        json!({"type": "message", "conversation": hex::encode(m.conversation), "conversation_name": name,
               "id": hex::encode(m.id), "sender": m.sender, "outgoing": m.outgoing, "text": m.text(),
               "sent_at_ms": m.sent_at_ms, "received_at_ms": m.received_at_ms})
        .to_string()
    } else {
        format!(
            "[{}] [{name}] {}: {}",
            clock(m.sent_at_ms),
            m.sender,
            body_text(m)
        )
    }
}

/// One line for an event other than a message (messages are read from the store), or `None`.
fn event_line(json: bool, client: &Client, e: &Event) -> Option<String> {
    let (kind, conv, extra, text) = match e {
        Event::Message(_) | Event::MessageSent { .. } => return None,
        Event::MessageFailed {
            conversation,
            message,
            ..
        } => (
            "failed",
            Some(*conversation),
            json!({}),
            format!("a message was not sent: {message}"),
        ),
        Event::ConversationJoined(x) => (
            "joined",
            Some(x.id),
            json!({}),
            "you were added".to_string(),
        ),
        Event::MembersChanged {
            conversation,
            by,
            added,
            removed,
            left,
            epoch,
        } => (
            "members",
            Some(*conversation),
            json!({"by": by, "added": added, "removed": removed, "left": left, "epoch": epoch}),
            format!(
                "{} · epoch {epoch}",
                membership_text(by.as_deref(), added, removed, left)
            ),
        ),
        Event::Removed {
            conversation,
            by,
            left,
        } => (
            "removed",
            Some(*conversation),
            json!({"by": by, "left": left}),
            format!(
                "{}: you are no longer a member",
                removal_text(by.as_deref(), *left)
            ),
        ),
        Event::ConversationBroken {
            conversation,
            reason,
        } => (
            "broken",
            Some(*conversation),
            json!({ "reason": reason }),
            format!("this device fell out of step, rejoining: {reason}"),
        ),
        Event::ConversationRecovered { conversation } => (
            "recovered",
            Some(*conversation),
            json!({}),
            "rejoined; messages sent meanwhile may be missing".to_string(),
        ),
        Event::ConnectionChanged { connected } => (
            "connection",
            None,
            json!({ "connected": connected }),
            if *connected {
                "connected".to_string()
            } else {
                "connection lost".to_string()
            },
        ),
    };
    let name = conv.map(|id| conversation_name(client, &id));
    if json {
        let mut v = json!({"type": kind});
        if let (Some(id), Some(n)) = (conv, &name) {
            v["conversation"] = json!(hex::encode(id));
            v["conversation_name"] = json!(n);
        }
        if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        Some(v.to_string())
    } else {
        match name {
            Some(n) => Some(format!("* [{n}] {text}")),
            None => Some(format!("* {text}")),
        }
    }
}

/// The local order key of the last message `recv` wrote out, kept next to the store.
struct Cursor {
    path: PathBuf,
    at: u64,
}

impl Cursor {
    fn load(dir: PathBuf) -> Cursor {
        let path = dir.join("recv-cursor");
        let at = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Cursor { path, at }
    }

    /// Records `at` as delivered (write a temporary file, then rename it over the cursor).
    fn advance(&mut self, at: u64) -> Result<(), CliError> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, at.to_string())
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| CliError {
                code: ErrorCode::Storage,
                message: format!("cannot write {}: {e}", self.path.display()),
            })?;
        self.at = at;
        Ok(())
    }
}

/// Messages received after the cursor, oldest first, excluding this device's own sends.
fn undelivered(client: &Client, after: u64) -> Result<Vec<Message>, CliError> {
    let me = client.account().map(|a| a.device_key);
    let mut out = Vec::new();
    for conv in client.conversations()? {
        let mut before = None;
        loop {
            let page = client.messages(&conv.id, 256, before)?;
            let Some(first) = page.first() else { break };
            let oldest = first.received_at_ms;
            let done = oldest <= after || page.len() < 256;
            out.extend(
                page.into_iter()
                    .filter(|m| m.received_at_ms > after && Some(m.sender_device) != me),
            );
            if done {
                break;
            }
            before = Some(oldest);
        }
    }
    out.sort_by_key(|m| m.received_at_ms);
    Ok(out)
}

/// Writes out every undelivered message, advancing the cursor after each line is out.
/// `Ok(None)` when stdout was closed (the rest stays undelivered); the count otherwise.
fn deliver(json: bool, client: &Client, cursor: &mut Cursor) -> Result<Option<usize>, CliError> {
    let msgs = undelivered(client, cursor.at)?;
    let n = msgs.len();
    for m in msgs {
        if emit(&message_line(json, client, &m)).is_err() {
            return Ok(None);
        }
        cursor.advance(m.received_at_ms)?;
    }
    Ok(Some(n))
}

/// `qpq recv`.
pub fn recv(a: RecvArgs) -> ExitCode {
    let c = &a.common;
    let r = (|| {
        let (client, pw) = session(c)?;
        let client = client.into_arc();
        let mut cursor = Cursor::load(c.connect.data_dir());
        // `sync` returns what it processed now; background receive may have queued events
        // too. Messages are read back from the store after the cursor instead, so none is
        // missed and none repeated.
        let mut events = with_login(c, &client, &pw, |cl| cl.sync())?;
        while let Some(e) = client.next_event(Duration::ZERO)? {
            events.push(e);
        }
        for e in &events {
            if matches!(e, Event::ConnectionChanged { .. }) {
                continue;
            }
            if let Some(line) = event_line(c.json, &client, e) {
                if emit(&line).is_err() {
                    return Ok(());
                }
            }
        }
        if deliver(c.json, &client, &mut cursor)?.is_none() {
            return Ok(());
        }
        if a.follow {
            // Hold the store and serve `send`, `groups` and `history` of other processes.
            let _served = daemon::serve(client.clone(), &c.connect, &pw)?;
            let mut last = Instant::now();
            // Connection changes are news only once the connection was lost.
            let mut lost = false;
            loop {
                if let Some(e) = client.next_event(Duration::from_millis(250))? {
                    if let Event::ConnectionChanged { connected } = e {
                        if connected && !lost {
                            continue;
                        }
                        lost = !connected;
                    }
                    if let Some(line) = event_line(c.json, &client, &e) {
                        if emit(&line).is_err() {
                            return Ok(());
                        }
                    }
                    match deliver(c.json, &client, &mut cursor)? {
                        None => return Ok(()),
                        Some(0) => {}
                        Some(_) => last = Instant::now(),
                    }
                }
                if a.idle_exit_ms > 0 && last.elapsed() >= Duration::from_millis(a.idle_exit_ms) {
                    break;
                }
            }
        }
        client.shutdown();
        Ok(())
    })();
    finish(c.json, r)
}

/// `qpq history`: reads the local store only (works offline); does not move `recv`'s cursor.
pub fn history(a: HistoryArgs) -> ExitCode {
    let c = &a.common;
    let r = (|| {
        let password = c.connect.password(false)?;
        let client = c.connect.open(&password)?;
        let convs: Vec<ConversationId> = match (&a.target.to, &a.target.conversation) {
            (Some(user), _) => {
                let user = user.trim_start_matches('@');
                let found: Vec<_> = client
                    .conversations()?
                    .into_iter()
                    .filter(|x| {
                        x.kind == qpq_core::ConversationKind::Dm
                            && x.members.iter().any(|m| m == user)
                    })
                    .map(|x| x.id)
                    .collect();
                if found.is_empty() {
                    return Err(CliError {
                        code: ErrorCode::NotFound,
                        message: format!("no conversation with {user}"),
                    });
                }
                found
            }
            (None, Some(what)) => vec![find_conversation(&client, what)?],
            (None, None) => client.conversations()?.into_iter().map(|x| x.id).collect(),
        };
        let mut msgs = Vec::new();
        for id in convs {
            msgs.extend(client.messages(&id, a.limit, None)?);
        }
        msgs.sort_by_key(|m| m.received_at_ms);
        for m in &msgs {
            say(&message_line(c.json, &client, m));
        }
        Ok(())
    })();
    finish(c.json, r)
}

/// `qpq groups`.
pub fn groups(c: CommonArgs) -> ExitCode {
    let r = (|| {
        let (client, pw) = session(&c)?;
        with_login(&c, &client, &pw, |cl| cl.sync().map(|_| ()))?;
        let convs = client.conversations()?;
        if c.json {
            let list: Vec<_> = convs
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    json!({"number": i + 1, "id": hex::encode(x.id), "name": display_name(&client, x), "kind": format!("{:?}", x.kind),
                           "members": x.members, "epoch": x.epoch, "post_quantum": x.post_quantum,
                           "ciphersuite": x.ciphersuite, "active": x.active, "unread": x.unread})
                })
                .collect();
            say(&json!({"ok": true, "conversations": list}).to_string());
        } else {
            for (i, x) in convs.iter().enumerate() {
                say(&format!(
                    "{:>2}. {} · {} members · epoch {} · {} unread · id {}",
                    i + 1,
                    display_name(&client, x),
                    x.members.len(),
                    x.epoch,
                    x.unread,
                    hex::encode(x.id)
                ));
            }
        }
        Ok(())
    })();
    finish(c.json, r)
}

/// `qpq ping`: a throwaway client (random key, temporary directory) measures one Health call.
pub fn ping(p: PingArgs) -> ExitCode {
    let r = (|| {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temporary dir: {e}"))?;
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        let mut config = qpq_core::ClientConfig::new(
            dir.path(),
            qpq_core::StoreKey::Raw(key),
            &p.net.server,
            p.net.trust()?,
        );
        config.server_name = p.net.server_name.clone();
        let client = Client::open(config)?;
        let rtt = client.ping().map_err(|e| CliError {
            code: e.code(),
            message: format!("{} ({})", e.message(), p.net.server),
        })?;
        client.shutdown();
        if p.json {
            say(&json!({"ok": true, "rtt_ms": rtt.as_secs_f64() * 1000.0}).to_string());
        } else {
            say(&format!(
                "rtt {:.2} ms to {}",
                rtt.as_secs_f64() * 1000.0,
                p.net.server
            ));
        }
        Ok(())
    })();
    finish(p.json, r)
}
