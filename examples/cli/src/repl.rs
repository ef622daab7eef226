//! `qpq repl`: interactive chat with line editing and history. Messages from others are printed
//! above the prompt while you type. Every error is one line; the REPL never exits on a bad
//! command.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use qpq_core::{Client, ConversationId, Event, EventListener};
use rustyline::error::ReadlineError;
use rustyline::ExternalPrinter;

use crate::session::{body_text, display_name, find_conversation, register_or_login, ConnectArgs};

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
  /rotate-keys                   update your keys in the active group
  /verify <user>                 show the safety number with a user
  /whoami                        your account and device
  /help                          this text
  /quit                          exit
anything else is sent to the active conversation";

type Active = Arc<Mutex<Option<(ConversationId, String)>>>;

/// The listener: hands each event to the printing thread and returns at once. It runs on the
/// engine's own thread, where calling back into the client or waiting on the terminal would
/// stall message processing.
struct Forward(Mutex<std::sync::mpsc::Sender<Event>>);

impl EventListener for Forward {
    fn on_event(&self, event: Event) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(event);
        }
    }
}

/// Formats events (looking names up in the client) and prints them above the prompt.
struct Printer {
    out: Box<dyn ExternalPrinter + Send>,
    client: Arc<Client>,
    active: Active,
}

impl Printer {
    fn run(mut self, events: std::sync::mpsc::Receiver<Event>) {
        for event in events {
            let Some(line) = self.format(event) else {
                continue;
            };
            if self.out.print(line.clone()).is_err() {
                eprintln!("{line}");
            }
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
                let name = self
                    .client
                    .conversation(&m.conversation)
                    .map(|c| display_name(&self.client, &c))
                    .unwrap_or_default();
                if here {
                    format!("{}: {}", m.sender, body_text(&m))
                } else {
                    format!("[{name}] {}: {}", m.sender, body_text(&m))
                }
            }
            Event::ConversationJoined(c) => {
                format!(
                    "* you were added to {} (/switch {})",
                    display_name(&self.client, &c),
                    display_name(&self.client, &c)
                )
            }
            Event::MembersChanged {
                conversation,
                added,
                removed,
                epoch,
            } => {
                let name = self
                    .client
                    .conversation(&conversation)
                    .map(|c| display_name(&self.client, &c))
                    .unwrap_or_default();
                let mut parts = Vec::new();
                if !added.is_empty() {
                    parts.push(format!("added {}", added.join(", ")));
                }
                if !removed.is_empty() {
                    parts.push(format!("removed {}", removed.join(", ")));
                }
                if parts.is_empty() {
                    parts.push("keys updated".into());
                }
                format!("* [{name}] {} · epoch {epoch}", parts.join("; "))
            }
            Event::Removed { conversation } => {
                let name = self
                    .client
                    .conversation(&conversation)
                    .map(|c| display_name(&self.client, &c))
                    .unwrap_or_default();
                format!("* you were removed from {name}")
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

/// Runs the REPL.
pub fn run(args: ConnectArgs) -> ExitCode {
    let password = match args.password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = match args.open(&password) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match register_or_login(&client, &args.username, &password) {
        Ok(true) => println!("registered and logged in as {}", args.username),
        Ok(false) => println!("logged in as {}", args.username),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("type /help for commands");
    let mut rl = match rustyline::DefaultEditor::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the line editor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let active: Active = Arc::new(Mutex::new(None));
    match rl.create_external_printer() {
        Ok(p) => {
            let printer = Printer {
                out: Box::new(p),
                client: client.clone(),
                active: active.clone(),
            };
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || printer.run(rx));
            client.set_listener(Some(Arc::new(Forward(Mutex::new(tx)))));
        }
        Err(e) => eprintln!("warning: messages will show only after each command ({e})"),
    }
    if let Err(e) = client.sync() {
        eprintln!("error: {e}");
    }
    let history = args.data_dir.clone().map(|d| d.join("repl-history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
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
                let _ = rl.add_history_entry(line);
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
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    client.set_listener(None);
    client.shutdown();
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
    if !line.starts_with('/') {
        let (id, _) = need_active(active)?;
        client.send_text(&id, line).map_err(e)?;
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
            let id = find_conversation(client, &target)?;
            let name = set_active(client, active, id)?;
            println!("* now talking in {name}");
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
                    "{}{:>2}. {} · {} members · epoch {}{}{}",
                    if Some(c.id) == current { "*" } else { " " },
                    i + 1,
                    display_name(client, c),
                    c.members.len(),
                    c.epoch,
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
                println!(
                    "{}: {}",
                    if m.outgoing { "you" } else { &m.sender },
                    body_text(&m)
                );
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
