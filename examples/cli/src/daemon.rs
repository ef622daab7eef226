//! One process holds a store; the others reach it through that process.
//!
//! `qpq-core` lets one process at a time open a store (the lease, ADR 0021). While `qpq repl` or
//! `qpq recv --follow` holds it, this module serves a Unix socket `qpq.sock` in the store
//! directory (mode 0600, like signal-cli's daemon mode), and `qpq send`, `groups` and `history`
//! first try that socket: the holder runs the command with its open client and sends back
//! what the command printed and its exit status. Without a holder they open the store
//! themselves, as before.
//!
//! The protocol is private to this binary (both ends are the same `qpq`): the caller writes one
//! JSON line `{"argv": [...], "password": "..."}` (its command line, with the connection
//! options it resolved from flags and environment appended) and reads JSON lines
//! `{"out": "..."}` / `{"err": "..."}` and a last `{"exit": 0|1}`. The holder refuses a request
//! whose password is not its own (the store's passphrase: the socket's mode already limits it
//! to the same user) and any command other than the ones above.
//!
//! What it will not do: serve another user, serve over the network, or run `register`,
//! `login` or `recv` (they need the store to themselves).

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use qpq_core::{Client, ErrorCode};
use serde_json::{json, Value};

use crate::session::ConnectArgs;

/// A scripted command's client: the store it opened, or the holder's (forwarded command).
pub enum Held {
    /// Opened by this process (it holds the lease).
    Own(Client),
    /// The client of the process that holds the store, running a forwarded command.
    Shared(Arc<Client>),
}

impl std::ops::Deref for Held {
    type Target = Client;

    fn deref(&self) -> &Client {
        match self {
            Held::Own(c) => c,
            Held::Shared(c) => c,
        }
    }
}

impl Held {
    /// The client behind an `Arc`, to serve it.
    pub fn into_arc(self) -> Arc<Client> {
        match self {
            Held::Own(c) => Arc::new(c),
            Held::Shared(c) => c,
        }
    }
}

/// The socket's file name in the store directory.
pub const SOCKET: &str = "qpq.sock";

/// How long a forwarded command may take before the caller gives up.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

struct Context {
    client: Arc<Client>,
    password: String,
    out: Vec<Value>,
    status: u8,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// The client and password of the holder when the current thread runs a forwarded command.
pub fn shared_client() -> Option<(Arc<Client>, String)> {
    CONTEXT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|c| (c.client.clone(), c.password.clone()))
    })
}

/// In a forwarded command, keeps `line` for the caller (`stream` "out" or "err") and returns
/// true; otherwise returns false and the command prints it itself.
pub fn captured(stream: &str, line: &str) -> bool {
    CONTEXT.with(|c| match c.borrow_mut().as_mut() {
        Some(ctx) => {
            ctx.out.push(json!({ stream: line }));
            true
        }
        None => false,
    })
}

/// In a forwarded command, records its exit status (the caller exits with it).
pub fn failed(status: u8) {
    CONTEXT.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.status = status;
        }
    });
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// The holder's side: serves the socket while it lives; removes it when dropped.
pub struct Served {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag, then remove the socket file.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves forwarded commands with `client` (which holds the store's lease) until the returned
/// value is dropped. Call it only after the store is open: the lease guarantees no other live
/// process serves the same socket, so a leftover file is stale and is replaced.
pub fn serve(
    client: Arc<Client>,
    connect: &ConnectArgs,
    password: &str,
) -> Result<Served, crate::session::CliError> {
    let path = socket_path(&connect.data_dir());
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("cannot serve {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Served {
        path,
        stop: stop.clone(),
    };
    let password = password.to_string();
    std::thread::Builder::new()
        .name("qpq-daemon".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (client, password) = (client.clone(), password.clone());
                let _ = std::thread::Builder::new()
                    .name("qpq-daemon-call".into())
                    .spawn(move || handle(conn, client, password));
            }
        })
        .map_err(|e| format!("cannot start the socket thread: {e}"))?;
    Ok(served)
}

fn reply(conn: &mut UnixStream, lines: &[Value], exit: u8) {
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    text.push_str(&json!({ "exit": exit }).to_string());
    text.push('\n');
    let _ = conn.write_all(text.as_bytes());
}

fn handle(mut conn: UnixStream, client: Arc<Client>, password: String) {
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).is_err() {
        return;
    }
    let Ok(req) = serde_json::from_str::<Value>(&line) else {
        reply(&mut conn, &[json!({"err": "error: malformed request"})], 1);
        return;
    };
    if req["password"].as_str() != Some(password.as_str()) {
        reply(
            &mut conn,
            &[json!({"err": "error: the password does not unlock this store"})],
            1,
        );
        return;
    }
    let argv: Vec<String> = req["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let cli = match crate::Cli::try_parse_from(std::iter::once("qpq".to_string()).chain(argv)) {
        Ok(c) => c,
        Err(e) => {
            reply(&mut conn, &[json!({"err": e.to_string()})], 1);
            return;
        }
    };
    CONTEXT.with(|c| {
        *c.borrow_mut() = Some(Context {
            client,
            password,
            out: Vec::new(),
            status: 0,
        })
    });
    let code = match cli.command {
        crate::Command::Send(a) => crate::scripted::send(a),
        crate::Command::Groups(a) => crate::scripted::groups(a),
        crate::Command::History(a) => crate::scripted::history(a),
        _ => {
            captured(
                "err",
                "error: the store is in use by another qpq process, which serves only send, \
                 groups and history",
            );
            failed(10 + ErrorCode::Busy.as_u32() as u8);
            ExitCode::FAILURE
        }
    };
    let (out, status) = CONTEXT
        .with(|c| c.borrow_mut().take())
        .map(|c| (c.out, c.status))
        .unwrap_or_default();
    let status = match (code == ExitCode::SUCCESS, status) {
        (true, _) => 0,
        (false, 0) => 1,
        (false, s) => s,
    };
    reply(&mut conn, &out, status);
}

/// The caller's side: when a process serves this store's socket, runs the command there,
/// prints what it printed and returns its exit status; `None` when nothing serves it (the
/// caller then opens the store itself).
pub fn forward(connect: &ConnectArgs) -> Option<ExitCode> {
    let path = socket_path(&connect.data_dir());
    let mut conn = UnixStream::connect(&path).ok()?;
    let password = match connect.password(false) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", e.message);
            return Some(crate::session::exit_code(e.code));
        }
    };
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    // The options this process resolved from flags and its environment, so the holder runs the
    // command for the same store whatever its own environment (later flags win).
    argv.extend([
        "--server".to_string(),
        connect.net.server.clone(),
        "--server-name".to_string(),
        connect.net.server_name.clone(),
        "--username".to_string(),
        connect.username.clone(),
        "--data-dir".to_string(),
        connect.data_dir().display().to_string(),
    ]);
    let req = json!({"argv": argv, "password": password}).to_string() + "\n";
    let _ = conn.set_read_timeout(Some(FORWARD_TIMEOUT));
    if conn.write_all(req.as_bytes()).is_err() {
        return None;
    }
    let mut exit = None;
    for line in BufReader::new(&conn).lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(s) = v["out"].as_str() {
            println!("{s}");
        } else if let Some(s) = v["err"].as_str() {
            eprintln!("{s}");
        } else if let Some(code) = v["exit"].as_u64() {
            exit = Some(u8::try_from(code).unwrap_or(1));
            break;
        }
    }
    match exit {
        Some(code) => Some(ExitCode::from(code)),
        None => {
            eprintln!("error: the qpq process holding the store did not answer");
            Some(ExitCode::FAILURE)
        }
    }
}
