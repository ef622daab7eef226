//! Connection options shared by the REPL and the scripted subcommands, turning them into an
//! open `Client`, the CLI's error type and its exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use qpq_core::{Client, ClientConfig, ConversationId, Error, ErrorCode, StoreKey, Trust};

/// A failure as the CLI reports it: a qpq-core error code (or `InvalidInput` for what the CLI
/// itself refuses) and a message.
#[derive(Debug)]
pub struct CliError {
    /// The code family; it also picks the exit status.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        CliError {
            code: e.code(),
            message: e.message().to_string(),
        }
    }
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError {
            code: ErrorCode::InvalidInput,
            message,
        }
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError::from(message.to_string())
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

/// Exit status for a command-line usage error (clap's convention).
pub const EXIT_USAGE: u8 = 2;

/// Exit status of a failure with `code`: 10 + the code's number (Network 11, Unauthorized 12,
/// NotFound 13, Conflict 14, InvalidInput 15, Crypto 16, Storage 17, RateLimited 18,
/// Timeout 19, Closed 20, Internal 21, and so on for later codes). 1 is never used for an
/// error the CLI understood.
pub fn exit_code(code: ErrorCode) -> ExitCode {
    ExitCode::from(u8::try_from(10 + code.as_u32()).unwrap_or(1))
}

/// Where the server is and how to trust it: all `qpq ping` needs.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Server address, HOST:PORT.
    #[arg(long, env = "QPQ_SERVER", default_value = "127.0.0.1:5001")]
    pub server: String,
    /// Pin the server certificate (DER or PEM file), e.g. the server's data/server-cert.der.
    #[arg(long, env = "QPQ_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Pin the server certificate by its SHA-256 fingerprint (hex), as the server logs it.
    #[arg(long, env = "QPQ_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// TLS server name to verify.
    #[arg(long, env = "QPQ_SERVER_NAME", default_value = "localhost")]
    pub server_name: String,
}

impl ServerArgs {
    /// How to trust the server, from the flags.
    pub fn trust(&self) -> Result<Trust, String> {
        match (&self.ca_cert, &self.fingerprint) {
            (Some(p), _) => Ok(Trust::PinnedCertFile(p.clone())),
            (None, Some(f)) => {
                let bytes = hex::decode(f.trim().replace(':', ""))
                    .map_err(|_| "--fingerprint is not hex".to_string())?;
                let fp: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| "--fingerprint must be 32 bytes (64 hex digits)".to_string())?;
                Ok(Trust::Fingerprint(fp))
            }
            (None, None) => Ok(Trust::SystemRoots),
        }
    }
}

/// Where the server is, how to trust it, and who we are.
#[derive(Args, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub net: ServerArgs,
    /// Username.
    #[arg(long, env = "QPQ_USERNAME")]
    pub username: String,
    /// Password (else QPQ_PASSWORD, else a prompt). It also unlocks the local store.
    #[arg(long, env = "QPQ_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Local store directory (default: the platform data dir, per server and user). The
    /// server's QPQ_DATA_DIR is deliberately not read here.
    #[arg(long, env = "QPQ_CLIENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long to wait for a store another qpq process holds and does not serve, in ms
    /// (one process at a time opens a store; ADR 0021).
    #[arg(long, env = "QPQ_LOCK_WAIT_MS", default_value_t = 10_000)]
    pub lock_wait_ms: u64,
}

impl ConnectArgs {
    /// The password from the flag, the environment, or a prompt (asked twice when `confirm`,
    /// as on a first registration). An empty password is refused.
    pub fn password(&self, confirm: bool) -> Result<String, CliError> {
        let p = match &self.password {
            Some(p) => p.clone(),
            None => {
                let p = rpassword::prompt_password(format!("password for {}: ", self.username))
                    .map_err(|e| format!("cannot read the password: {e}"))?;
                if confirm && !p.is_empty() {
                    let again = rpassword::prompt_password("the same password again: ")
                        .map_err(|e| format!("cannot read the password: {e}"))?;
                    if again != p {
                        return Err("the two passwords differ".into());
                    }
                }
                p
            }
        };
        if p.is_empty() {
            return Err("an empty password is refused".into());
        }
        Ok(p)
    }

    /// The local store directory: `--data-dir`, else `QPQ_CLIENT_DATA_DIR`, else
    /// `$XDG_DATA_HOME/qpq/<server>/<user>` (or `~/.local/share/…`).
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        let server = self.net.server.replace([':', '/', '[', ']'], "_");
        base.join("qpq").join(server).join(&self.username)
    }

    /// True when this account has no store on this machine yet (a first use here).
    pub fn is_new(&self) -> bool {
        !self.data_dir().join("qpq-client.db").exists()
    }

    /// Opens the local store (unlocked by the password) and returns the client.
    pub fn open(&self, password: &str) -> Result<Client, CliError> {
        // qpq-core creates the directory once the server accepted the account: a failed first
        // attempt leaves nothing behind.
        let dir = self.data_dir();
        let mut config = ClientConfig::new(
            &dir,
            StoreKey::Passphrase(password.to_string()),
            &self.net.server,
            self.net.trust()?,
        );
        config.server_name = self.net.server_name.clone();
        config.lock_timeout = std::time::Duration::from_millis(self.lock_wait_ms);
        Ok(Client::open(config)?)
    }
}

/// Registers on first use, logs in otherwise ([`Client::register_or_login`]).
pub fn register_or_login(client: &Client, username: &str, password: &str) -> Result<bool, Error> {
    client
        .register_or_login(username, password)
        .map(|(_, created)| created)
}

/// A conversation's display name ([`Client::display_name`]).
pub fn display_name(client: &Client, c: &qpq_core::Conversation) -> String {
    client.display_name(c)
}

/// Finds a conversation by its number in `conversations()` (`#2` or `2`), id (hex prefix of
/// at least 4 digits), group name, or `@user` (DM). A text that matches more than one
/// conversation, in any of these ways, is an error naming the candidates: a message never
/// goes to a guess.
pub fn find_conversation(client: &Client, what: &str) -> Result<ConversationId, CliError> {
    // The rule lives in qpq-core (`Client::find_conversation`); its message is shown as is.
    client
        .find_conversation(what)
        .map(|c| c.id)
        .map_err(|e| e.message().to_string().into())
}

/// A membership change as words: who added or removed whom, and who left
/// ("alice added carol; bob left"); "alice updated keys" when no one joined or went.
pub fn membership_text(
    by: Option<&str>,
    added: &[String],
    removed: &[String],
    left: &[String],
) -> String {
    let by = by.unwrap_or("someone");
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("{by} added {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("{by} removed {}", removed.join(", ")));
    }
    if !left.is_empty() {
        parts.push(format!("{} left", left.join(", ")));
    }
    if parts.is_empty() {
        parts.push(format!("{by} updated keys"));
    }
    parts.join("; ")
}

/// This account's own removal as words: "you left" or "alice removed you".
pub fn removal_text(by: Option<&str>, left: bool) -> String {
    if left {
        "you left".to_string()
    } else {
        format!("{} removed you", by.unwrap_or("someone"))
    }
}

/// A message body as one line of text: the text, or a short description of other kinds.
pub fn body_text(m: &qpq_core::Message) -> String {
    match &m.body {
        qpq_core::Body::Text(t) => t.clone(),
        qpq_core::Body::App {
            content_type,
            bytes,
        } => format!("[{content_type}, {} bytes]", bytes.len()),
        other => format!("[{other:?}]"),
    }
}

/// Formats a Unix-ms time as UTC `HH:MM`, or `YYYY-MM-DD HH:MM` when not today.
pub fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    if days == today {
        return format!("{h:02}:{m:02}");
    }
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}

#[cfg(test)]
mod tests {
    use super::clock;

    #[test]
    fn clock_formats_old_dates() {
        // 2021-03-04 05:06 UTC
        assert_eq!(clock(1_614_834_360_000), "2021-03-04 05:06");
        assert_eq!(clock(951_782_400_000), "2000-02-29 00:00");
    }
}
