//! `qpq`: the quicproquo command line.
//!
//! - `qpq demo`: an embedded server and three users in a post-quantum group, with a transcript.
//! - `qpq repl`: an interactive chat client (registers on first use, logs in otherwise).
//! - `qpq register|login|send|recv|groups|ping`: scriptable subcommands (`--json`).
//!
//! It holds no messaging logic: everything goes through `qpq_core::Client`.

// A terminal program: printing to stdout is its purpose.
#![allow(clippy::print_stdout)]

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
    about = "quicproquo: end-to-end encrypted group messaging over QUIC with MLS"
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
    /// Send a text message to a user (DM) or a conversation (name or id).
    Send(scripted::SendArgs),
    /// Receive pending messages (and keep receiving with --follow).
    Recv(scripted::RecvArgs),
    /// List conversations.
    Groups(scripted::CommonArgs),
    /// Measure the round trip to the server.
    Ping(scripted::CommonArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => demo::run(),
        Command::Repl(args) => repl::run(args),
        Command::Register(a) => scripted::register(a),
        Command::Login(a) => scripted::login(a),
        Command::Send(a) => scripted::send(a),
        Command::Recv(a) => scripted::recv(a),
        Command::Groups(a) => scripted::groups(a),
        Command::Ping(a) => scripted::ping(a),
    }
}
