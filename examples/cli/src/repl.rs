//! `qpq repl`: interactive chat with line editing and history. Messages from others are printed
//! above the prompt while you type, one line each, with the time. Every error is one line; the
//! REPL never exits on a bad command.
//!
//! The line history on disk (`repl-history` in the store directory, with or without
//! `--data-dir`) keeps only commands, never message text: the messages themselves are in the
//! encrypted store. With a store from an earlier session the REPL starts without the server
//! (history readable, sends queued) and connects in the background.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use qpq_core::{Client, ConversationId, ConversationKind, ErrorCode, Event, EventListener};
use rustyline::error::ReadlineError;
use rustyline::history::History as _;
use rustyline::ExternalPrinter;

use crate::session::{
    body_text, clock, display_name, exit_code, find_conversation, membership_text,
    register_or_login, removal_text, CliError, ConnectArgs,
};

const HELP: &str = "\
commands:
  /dm <user>                     open a direct conversation (and switch to it)
  /create-group <name> [--pq]    create a group (--pq: post-quantum suite); alias /cg
  /invite <user>…                add users (all their devices) to the active group
  /remove <user>                 remove a user from the active group
  /leave                         leave the active group
  /switch <name|@user|number>    change the active conversation
  /list                          list conversations
  /members                       members of the active conversation
  /history [n]                   last n messages (default 20)
  //text                         send a line that starts with a slash (it sends /text)
  /rotate-keys                   update your keys in the active group
  /verify <user>                 show the safety number with a user
  /whoami                        your account and device
  /help                          this text
  /quit                          exit
anything else is sent to the active conversation; times are UTC";

type Active = Arc<Mutex<Option<(ConversationId, String)>>>;

/// What the printing thread prints: an event, or a line of the REPL's own.
enum Out {
    Event(Event),
    Line(String),
}

/// The listener: hands each event to the printing thread and returns at once. It runs on the
/// engine's own thread, where calling back into the client or waiting on the terminal would
/// stall message processing.
struct Forward(Mutex<std::sync::mpsc::Sender<Out>>);

impl EventListener for Forward {
    fn on_event(&self, event: Event) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(Out::Event(event));
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a typed line is a command (kept in the line history) rather than message text.
fn is_command(line: &str) -> bool {
    line.starts_with('/') && !line.starts_with("//")
}

/// Formats events (looking names up in the client) and prints them above the prompt.
struct Printer {
    out: Box<dyn ExternalPrinter + Send>,
    client: Arc<Client>,
    active: Active,
}

impl Printer {
    fn run(mut self, events: std::sync::mpsc::Receiver<Out>) {
        for out in events {
            let body = match out {
                Out::Event(e) => match self.format(e) {
                    Some(l) => l,
                    None => continue,
                },
                Out::Line(l) => l,
            };
            // One line per print, newline included: between two prompts the printer writes
            // straight to the terminal, and two lines without it would run together.
            let line = format!("[{}] {body}\n", clock(now_ms()));
            if self.out.print(line.clone()).is_err() {
                eprint!("{line}");
            }
        }
    }

    /// Makes `id` the active conversation when none is, so the first reply goes somewhere.
    fn adopt(&self, id: ConversationId, name: &str) -> bool {
        match self.active.lock() {
            Ok(mut a) if a.is_none() => {
                *a = Some((id, name.to_string()));
                true
            }
            _ => false,
        }
    }

    fn format(&self, event: Event) -> Option<String> {
        Some(match event {
            Event::Message(m) => {
                let here = self
                    .active
                    .lock()
                    .ok()
                    .and_then(|a| a.as_ref().map(|(id, _)| *id))
                    == Some(m.conversation);
                let conv = self.client.conversation(&m.conversation).ok();
                let name = conv
                    .as_ref()
                    .map(|c| display_name(&self.client, c))
                    .unwrap_or_default();
                let sent = clock(m.sent_at_ms);
                if here {
                    format!("{}: {} (sent {sent})", m.sender, body_text(&m))
                } else if !m.outgoing
                    && conv.is_some_and(|c| c.kind == ConversationKind::Dm)
                    && self.adopt(m.conversation, &name)
                {
                    format!(
                        "[{name}] {}: {} (sent {sent}) · now talking in {name}",
                        m.sender,
                        body_text(&m)
                    )
                } else {
                    format!("[{name}] {}: {} (sent {sent})", m.sender, body_text(&m))
                }
            }
            Event::ConversationJoined(c) => {
                let name = display_name(&self.client, &c);
                if c.kind == ConversationKind::Dm && self.adopt(c.id, &name) {
                    format!("* you were added to {name} · now talking in {name}")
                } else {
                    format!("* you were added to {name} (/switch {name})")
                }
            }
            Event::MembersChanged {
                conversation,
                by,
                added,
                removed,
                left,
                epoch,
            } => {
                let name = self
                    .client
                    .conversation(&conversation)
                    .map(|c| display_name(&self.client, &c))
                    .unwrap_or_default();
                let what = membership_text(by.as_deref(), &added, &removed, &left);
                format!("* [{name}] {what} · epoch {epoch}")
            }
            Event::Removed {
                conversation,
                by,
                left,
            } => {
                let name = self
                    .client
                    .conversation(&conversation)
                    .map(|c| display_name(&self.client, &c))
                    .unwrap_or_default();
                format!("* [{name}] {}", removal_text(by.as_deref(), left))
            }
            Event::ConversationBroken {
                conversation,
                reason,
            } => {
                let name = self
                    .client
                    .conversation(&conversation)
                    .map(|c| display_name(&self.client, &c))
                    .unwrap_or_default();
                format!("* [{name}] this device fell out of step, rejoining: {reason}")
            }
            Event::ConversationRecovered { conversation } => {
                let name = self
                    .client
                    .conversation(&conversation)
                    .map(|c| display_name(&self.client, &c))
                    .unwrap_or_default();
                format!("* [{name}] rejoined; messages sent meanwhile may be missing")
            }
            Event::ConnectionChanged { connected } => if connected {
                "* connected"
            } else {
                "* connection lost, reconnecting…"
            }
            .to_string(),
            // Delivered as usual: nothing to show.
            Event::MessageSent { .. } => return None,
            Event::MessageFailed { message, .. } => format!("* a message was not sent: {message}"),
        })
    }
}

/// Prints `e` and returns the exit status of its code family.
fn fail(e: &CliError) -> ExitCode {
    eprintln!("error: {}", e.message);
    exit_code(e.code)
}

/// One line per conversation with unread messages, from the local store.
fn unread_summary(client: &Client) -> Vec<String> {
    let convs = client.conversations().unwrap_or_default();
    convs
        .iter()
        .filter(|c| c.unread > 0)
        .map(|c| {
            let name = display_name(client, c);
            format!("* {} unread in {name} (/switch {name})", c.unread)
        })
        .collect()
}

/// Runs the REPL.
pub fn run(args: ConnectArgs) -> ExitCode {
    let password = match args.password(args.is_new()) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let client = match args.open(&password) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(&e),
    };
    let active: Active = Arc::new(Mutex::new(None));
    let mut rl = match rustyline::DefaultEditor::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the line editor: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The listener goes in before anything touches the network, so nothing that arrives
    // while the REPL starts is left unseen in the event queue.
    let (tx, rx) = std::sync::mpsc::channel::<Out>();
    match rl.create_external_printer() {
        Ok(p) => {
            let printer = Printer {
                out: Box::new(p),
                client: client.clone(),
                active: active.clone(),
            };
            std::thread::spawn(move || printer.run(rx));
            client.set_listener(Some(Arc::new(Forward(Mutex::new(tx.clone())))));
            while let Ok(Some(e)) = client.next_event(std::time::Duration::ZERO) {
                let _ = tx.send(Out::Event(e));
            }
        }
        Err(e) => eprintln!("warning: messages will show only after each command ({e})"),
    }
    let stored = client
        .account()
        .is_some_and(|a| a.username == args.username);
    if stored {
        // A store from an earlier session: start at once, offline if need be; catch up (and
        // log in again if the stored session expired) in the background.
        println!("opened the store of {} · connecting…", args.username);
        let (c, user, pw, tx) = (
            client.clone(),
            args.username.clone(),
            zeroize::Zeroizing::new(password.clone()),
            tx.clone(),
        );
        std::thread::spawn(move || {
            let r = match c.sync() {
                Err(e) if e.code() == ErrorCode::Unauthorized => {
                    c.login(&user, &pw).and_then(|_| c.sync())
                }
                r => r,
            };
            let line = match r {
                Ok(events) => {
                    for e in events {
                        let _ = tx.send(Out::Event(e));
                    }
                    format!("* logged in as {user}")
                }
                Err(e) => {
                    format!("* offline ({e}); history is readable and messages you send are queued")
                }
            };
            let _ = tx.send(Out::Line(line));
            for line in unread_summary(&c) {
                let _ = tx.send(Out::Line(line));
            }
        });
    } else {
        match register_or_login(&client, &args.username, &password) {
            Ok(true) => println!("registered and logged in as {}", args.username),
            Ok(false) => println!("logged in as {}", args.username),
            Err(e) => return fail(&CliError::from(e)),
        }
        match client.sync() {
            Ok(events) => {
                for e in events {
                    let _ = tx.send(Out::Event(e));
                }
            }
            Err(e) => eprintln!("error: {e}"),
        }
        for line in unread_summary(&client) {
            println!("{line}");
        }
    }
    // Hold the store and serve `qpq send`, `groups` and `history` of other processes.
    let _served = match crate::daemon::serve(client.clone(), &args, &password) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "warning: other qpq commands cannot reach this store: {}",
                e.message
            );
            None
        }
    };
    drop(password);
    println!("type /help for commands");
    // Only commands are kept, so no message text reaches the disk; a history file written by
    // an older version is cleaned of anything else.
    let history = args.data_dir().join("repl-history");
    let _ = rl.load_history(&history);
    let kept: Vec<String> = rl
        .history()
        .iter()
        .filter(|l| is_command(l))
        .cloned()
        .collect();
    if kept.len() != rl.history().len() {
        let _ = rl.clear_history();
        for l in &kept {
            let _ = rl.add_history_entry(l.as_str());
        }
        let _ = rl.save_history(&history);
    }
    loop {
        let prompt = match active.lock().ok().and_then(|a| a.clone()) {
            Some((_, name)) => format!("{name}> "),
            None => "> ".to_string(),
        };
        match rl.readline(&prompt) {
            Ok(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if is_command(line) {
                    let _ = rl.add_history_entry(line);
                }
                match command(&client, &active, line) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Quit) => break,
                    Err(e) => println!("error: {e}"),
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        }
    }
    let _ = rl.save_history(&history);
    client.set_listener(None);
    // Messages typed just before /quit are sent now rather than at the next start: one sync
    // (which sends the outbox), then shutdown. Both wait on the network, so /quit waits at
    // most a few seconds; whatever is cut short is transactional in the store, as after a
    // crash, and what was not sent goes out at the next start.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let closing = client.clone();
    std::thread::spawn(move || {
        let _ = closing.sync();
        closing.shutdown();
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(std::time::Duration::from_secs(10));
    ExitCode::SUCCESS
}

enum Flow {
    Continue,
    Quit,
}

fn need_active(active: &Active) -> Result<(ConversationId, String), String> {
    active.lock().ok().and_then(|a| a.clone()).ok_or_else(|| {
        "no active conversation: /dm <user>, /create-group <name> or /switch <name>".to_string()
    })
}

fn set_active(client: &Client, active: &Active, id: ConversationId) -> Result<String, String> {
    let c = client.conversation(&id).map_err(|e| e.to_string())?;
    let name = display_name(client, &c);
    if let Ok(mut a) = active.lock() {
        *a = Some((id, name.clone()));
    }
    Ok(name)
}

fn command(client: &Client, active: &Active, line: &str) -> Result<Flow, String> {
    let e = |e: qpq_core::Error| e.to_string();
    if !is_command(line) {
        // `//text` sends `/text`.
        let text = line.strip_prefix('/').unwrap_or(line);
        let (id, _) = need_active(active)?;
        client.send_text(&id, text).map_err(e)?;
        return Ok(Flow::Continue);
    }
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let one = |what: &str| -> Result<&str, String> {
        match args.as_slice() {
            [x] => Ok(*x),
            _ => Err(format!("usage: {cmd} <{what}>")),
        }
    };
    match cmd {
        "/help" => println!("{HELP}"),
        "/quit" | "/exit" => return Ok(Flow::Quit),
        "/whoami" => match client.account() {
            Some(a) => println!(
                "{} · identity {} · device {}",
                a.username,
                hex::encode(a.identity_key),
                hex::encode(a.device_key)
            ),
            None => println!("not logged in"),
        },
        "/dm" => {
            let user = one("user")?;
            let id = client.create_dm(user).map_err(e)?;
            let name = set_active(client, active, id)?;
            println!("* now talking in {name}");
        }
        "/create-group" | "/cg" => {
            let pq = args.contains(&"--pq");
            let name: Vec<&str> = args.iter().copied().filter(|a| *a != "--pq").collect();
            if name.is_empty() {
                return Err(format!("usage: {cmd} <name> [--pq]"));
            }
            let id = client.create_group(&name.join(" "), pq).map_err(e)?;
            let c = client.conversation(&id).map_err(e)?;
            set_active(client, active, id)?;
            println!(
                "* created {} · {} · epoch {}",
                c.name, c.ciphersuite, c.epoch
            );
        }
        "/invite" => {
            if args.is_empty() {
                return Err("usage: /invite <user>…".into());
            }
            let (id, name) = need_active(active)?;
            client.invite(&id, &args).map_err(e)?;
            let c = client.conversation(&id).map_err(e)?;
            println!(
                "* invited {} to {name} · epoch {}",
                args.join(", "),
                c.epoch
            );
        }
        "/remove" => {
            let user = one("user")?;
            let (id, name) = need_active(active)?;
            client.remove(&id, user).map_err(e)?;
            println!("* removed {user} from {name}");
        }
        "/leave" => {
            let (id, name) = need_active(active)?;
            client.leave(&id).map_err(e)?;
            if let Ok(mut a) = active.lock() {
                *a = None;
            }
            println!("* left {name}");
        }
        "/switch" => {
            let target = args.join(" ");
            if target.is_empty() {
                return Err("usage: /switch <name|@user|number>".into());
            }
            let id = find_conversation(client, &target).map_err(|e| e.message)?;
            let unread = client.conversation(&id).map_err(e)?.unread;
            let name = set_active(client, active, id)?;
            println!("* now talking in {name}");
            if unread > 0 {
                let n = usize::try_from(unread).unwrap_or(usize::MAX);
                for m in client.messages(&id, n, None).map_err(e)? {
                    print_history_line(&m);
                }
            }
        }
        "/list" => {
            let convs = client.conversations().map_err(e)?;
            if convs.is_empty() {
                println!("no conversations yet");
            }
            let current = active
                .lock()
                .ok()
                .and_then(|a| a.as_ref().map(|(id, _)| *id));
            for (i, c) in convs.iter().enumerate() {
                println!(
                    "{}{:>2}. {} · {} members · epoch {}{}{}{}",
                    if Some(c.id) == current { "*" } else { " " },
                    i + 1,
                    display_name(client, c),
                    c.members.len(),
                    c.epoch,
                    if c.unread > 0 {
                        format!(" · {} unread", c.unread)
                    } else {
                        String::new()
                    },
                    if c.post_quantum { " · PQ" } else { "" },
                    if c.active { "" } else { " · (left)" }
                );
            }
        }
        "/members" => {
            let (id, _) = need_active(active)?;
            for m in client.members(&id).map_err(e)? {
                println!(
                    "{} ({} device{})",
                    m.username,
                    m.devices.len(),
                    if m.devices.len() == 1 { "" } else { "s" }
                );
            }
        }
        "/history" => {
            let n = match args.first() {
                Some(n) => n.parse().map_err(|_| "usage: /history [n]".to_string())?,
                None => 20,
            };
            let (id, _) = need_active(active)?;
            for m in client.messages(&id, n, None).map_err(e)? {
                print_history_line(&m);
            }
        }
        "/rotate-keys" => {
            let (id, _) = need_active(active)?;
            client.rotate_keys(&id).map_err(e)?;
            let c = client.conversation(&id).map_err(e)?;
            println!("* keys rotated · epoch {}", c.epoch);
        }
        "/verify" => {
            let user = one("user")?;
            let n = client.safety_number(user).map_err(e)?;
            println!("safety number with {user}:\n  {n}\ncompare it with theirs over a channel you trust");
        }
        other => return Err(format!("unknown command {other}; /help lists them")),
    }
    Ok(Flow::Continue)
}

/// A stored message as `/history` shows it: sent time, sender ("you" for this account), text.
fn print_history_line(m: &qpq_core::Message) {
    println!(
        "[{}] {}: {}",
        clock(m.sent_at_ms),
        if m.outgoing { "you" } else { &m.sender },
        body_text(m)
    );
}
