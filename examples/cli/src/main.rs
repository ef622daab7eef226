//! `qpq`: the quicproquo command line.
//!
//! - `qpq demo`: an embedded server and three users in a post-quantum group, with a transcript.
//! - `qpq repl`: an interactive chat client (registers on first use, logs in otherwise).
//! - `qpq register|login|send|recv|history|groups|ping`: scriptable subcommands (`--json`).
//!
//! Exit status: 0 success, 2 usage error, 10 + the qpq-core error code for every other failure
//! (11 Network, 12 Unauthorized, 13 NotFound, 14 Conflict, 15 InvalidInput, 16 Crypto,
//! 17 Storage, 18 RateLimited, 19 Timeout, 20 Closed, 21 Internal, …).
//!
//! It holds no messaging logic: everything goes through `qpq_core::Client`.

// A terminal program: printing to stdout is its purpose.
#![allow(clippy::print_stdout)]

/// `println!` that ends the program with success once stdout is closed (`qpq demo | head`),
/// instead of panicking on the broken pipe.
macro_rules! outln {
    () => {
        $crate::scripted::say("")
    };
    ($($t:tt)*) => {
        $crate::scripted::say(&format!($($t)*))
    };
}

mod daemon;
mod demo;
mod repl;
mod scripted;
mod session;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// quicproquo command line.
#[derive(Parser)]
#[command(
    name = "qpq",
    version,
    about = "quicproquo: end-to-end encrypted group messaging over QUIC with MLS",
    after_help = "Exit status: 0 success, 2 usage error, otherwise 10 + the error code: 11 Network, \
12 Unauthorized, 13 NotFound, 14 Conflict, 15 InvalidInput, 16 Crypto, 17 Storage, 18 RateLimited, \
19 Timeout, 20 Closed, 21 Internal (see README.md).",
    // A command forwarded to the process holding the store appends the connection options it
    // resolved (daemon.rs); the last occurrence wins.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo: an embedded server, alice, bob and carol in a post-quantum group.
    Demo,
    /// Interactive chat.
    Repl(session::ConnectArgs),
    /// Register an account (and log in).
    Register(scripted::CommonArgs),
    /// Log in and keep the session in the local store.
    Login(scripted::CommonArgs),
    /// Send a text message to a user (--to, a DM) or a conversation (--conversation).
    Send(scripted::SendArgs),
    /// Print messages not printed before (and keep receiving with --follow).
    Recv(scripted::RecvArgs),
    /// Print stored messages again, from the local store (no network needed).
    History(scripted::HistoryArgs),
    /// List conversations.
    Groups(scripted::CommonArgs),
    /// Measure the round trip to the server (needs no account).
    Ping(scripted::PingArgs),
}

/// Diagnostics for bug reports: with `QPQ_LOG` set (a tracing filter such as `debug` or
/// `qpq_core=debug`), the engine's log goes to the file `QPQ_LOG_FILE` (appended) or, without
/// it, to stderr. Off by default. The log carries call methods, outcomes and times, never
/// message text, passwords or keys. In the REPL, use a file: stderr shares the terminal.
fn init_logging() {
    let Ok(filter) = std::env::var("QPQ_LOG") else {
        return;
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("warning: QPQ_LOG={filter:?} is not a log filter ({e}); logging is off");
            return;
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let r = match std::env::var_os("QPQ_LOG_FILE") {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init(),
            Err(e) => {
                eprintln!("warning: cannot open QPQ_LOG_FILE ({e}); logging is off");
                return;
            }
        },
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    if let Err(e) = r {
        eprintln!("warning: logging is off ({e})");
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Demo => demo::run(),
        Command::Repl(args) => repl::run(args),
        Command::Register(a) => scripted::register(a),
        Command::Login(a) => scripted::login(a),
        // While `repl` or `recv --follow` holds the store, these run in that process.
        Command::Send(a) => daemon::forward(a.connect()).unwrap_or_else(|| scripted::send(a)),
        Command::Recv(a) => scripted::recv(a),
        Command::History(a) => daemon::forward(a.connect()).unwrap_or_else(|| scripted::history(a)),
        Command::Groups(a) => daemon::forward(a.connect()).unwrap_or_else(|| scripted::groups(a)),
        Command::Ping(a) => scripted::ping(a),
    }
}

/// A command-line usage error: clap's text, or with `--json` anywhere on the line one JSON
/// object (`code` InvalidInput); exit status 2 either way. `--help`/`--version` print as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    if std::env::args().any(|a| a == "--json") {
        let message = e.kind().as_str().map(str::to_string).unwrap_or_default();
        let detail = e.to_string();
        let first = detail
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        println!(
            "{}",
            serde_json::json!({"ok": false, "code": "InvalidInput", "message": if first.is_empty() { message } else { first }})
        );
        return ExitCode::from(session::EXIT_USAGE);
    }
    let _ = e.print();
    ExitCode::from(session::EXIT_USAGE)
}
