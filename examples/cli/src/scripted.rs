//! Scriptable subcommands. With `--json` each prints one JSON object per line (errors too:
//! `{"ok":false,"code":"Unauthorized","message":"…"}`) and exits non-zero on failure.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use qpq_core::{Client, ErrorCode, Event, Message};
use serde_json::json;

use crate::session::{body_text, display_name, find_conversation, ConnectArgs};

/// Options of every scripted subcommand.
#[derive(Args, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print JSON, one object per line.
    #[arg(long)]
    json: bool,
}

/// `qpq send`.
#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// A username (direct message) or a conversation (name, number or id).
    #[arg(long)]
    to: String,
    /// The text.
    #[arg(long)]
    msg: String,
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

struct Failure {
    code: &'static str,
    message: String,
}

impl From<qpq_core::Error> for Failure {
    fn from(e: qpq_core::Error) -> Failure {
        Failure {
            code: e.code().name(),
            message: e.message().to_string(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            code: "InvalidInput",
            message,
        }
    }
}

fn finish(json: bool, r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "code": f.code, "message": f.message})
                );
            } else {
                eprintln!("error: {}", f.message);
            }
            ExitCode::FAILURE
        }
    }
}

/// Opens the store; logs in when no session is stored (or it expired).
fn session(c: &CommonArgs) -> Result<(Client, String), Failure> {
    let password = c.connect.password()?;
    let client = c.connect.open(&password)?;
    if client.account().is_none() {
        client.login(&c.connect.username, &password)?;
    }
    Ok((client, password))
}

/// Runs `op`, logging in again once if the stored session was refused.
fn with_login<T>(
    c: &CommonArgs,
    client: &Client,
    password: &str,
    op: impl Fn(&Client) -> Result<T, qpq_core::Error>,
) -> Result<T, Failure> {
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
        let password = c.connect.password()?;
        let client = c.connect.open(&password)?;
        let a = client.register(&c.connect.username, &password)?;
        if c.json {
            println!("{}", account_json(&a));
        } else {
            println!("registered {}", a.username);
        }
        Ok(())
    })();
    finish(c.json, r)
}

/// `qpq login`.
pub fn login(c: CommonArgs) -> ExitCode {
    let r = (|| {
        let password = c.connect.password()?;
        let client = c.connect.open(&password)?;
        let a = client.login(&c.connect.username, &password)?;
        if c.json {
            println!("{}", account_json(&a));
        } else {
            println!("logged in as {}", a.username);
        }
        Ok(())
    })();
    finish(c.json, r)
}

/// `qpq send`.
pub fn send(a: SendArgs) -> ExitCode {
    let c = &a.common;
    let r = (|| {
        let (client, pw) = session(c)?;
        with_login(c, &client, &pw, |cl| cl.sync().map(|_| ()))?;
        let conv = match find_conversation(&client, &a.to) {
            Ok(id) => id,
            Err(_) => with_login(c, &client, &pw, |cl| {
                cl.create_dm(a.to.trim_start_matches('@'))
            })?,
        };
        let id = with_login(c, &client, &pw, |cl| cl.send_text(&conv, &a.msg))?;
        // `send` only stores and queues; this sends the outbox now, before the process exits
        // (a network failure leaves it queued for the next run).
        let _ = with_login(c, &client, &pw, |cl| cl.sync().map(|_| ()));
        if c.json {
            println!(
                "{}",
                json!({"ok": true, "conversation": hex::encode(conv), "message_id": hex::encode(id)})
            );
        } else {
            println!("sent");
        }
        Ok(())
    })();
    finish(c.json, r)
}

fn print_message(json: bool, client: &Client, m: &Message) {
    if json {
        println!(
            "{}",
            json!({"conversation": hex::encode(m.conversation), "id": hex::encode(m.id), "sender": m.sender, "text": m.text(), "sent_at_ms": m.sent_at_ms})
        );
    } else {
        let name = client
            .conversation(&m.conversation)
            .map(|c| display_name(client, &c))
            .unwrap_or_default();
        println!("[{name}] {}: {}", m.sender, body_text(m));
    }
}

/// `qpq recv`.
pub fn recv(a: RecvArgs) -> ExitCode {
    let c = &a.common;
    let r = (|| {
        let (client, pw) = session(c)?;
        // `sync` returns what it processed now; the background receiver may already have
        // processed some messages into the event queue: print those too.
        let mut events = with_login(c, &client, &pw, |cl| cl.sync())?;
        while let Some(e) = client.next_event(Duration::ZERO)? {
            events.push(e);
        }
        events.sort_by_key(|e| match e {
            Event::Message(m) => m.received_at_ms,
            _ => 0,
        });
        for e in events {
            if let Event::Message(m) = e {
                print_message(c.json, &client, &m);
            }
        }
        if a.follow {
            let mut last = Instant::now();
            loop {
                if let Some(Event::Message(m)) = client.next_event(Duration::from_millis(250))? {
                    print_message(c.json, &client, &m);
                    last = Instant::now();
                }
                if a.idle_exit_ms > 0 && last.elapsed() >= Duration::from_millis(a.idle_exit_ms) {
                    break;
                }
            }
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
                .map(|x| {
                    json!({"id": hex::encode(x.id), "name": display_name(&client, x), "kind": format!("{:?}", x.kind),
                           "members": x.members, "epoch": x.epoch, "post_quantum": x.post_quantum,
                           "ciphersuite": x.ciphersuite, "active": x.active})
                })
                .collect();
            println!("{}", json!({"ok": true, "conversations": list}));
        } else {
            for x in &convs {
                println!(
                    "{} · {} members · epoch {}",
                    display_name(&client, x),
                    x.members.len(),
                    x.epoch
                );
            }
        }
        Ok(())
    })();
    finish(c.json, r)
}

/// `qpq ping`.
pub fn ping(c: CommonArgs) -> ExitCode {
    let r = (|| {
        let password = c.connect.password()?;
        let client = c.connect.open(&password)?;
        let rtt = client.ping()?;
        if c.json {
            println!(
                "{}",
                json!({"ok": true, "rtt_ms": rtt.as_secs_f64() * 1000.0})
            );
        } else {
            println!("rtt {:.2} ms", rtt.as_secs_f64() * 1000.0);
        }
        Ok(())
    })();
    finish(c.json, r)
}
