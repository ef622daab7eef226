//! Connection options shared by the REPL and the scripted subcommands, and turning them into
//! an open `Client`.

use std::path::PathBuf;

use clap::Args;
use qpq_core::{Client, ClientConfig, ConversationId, Error, ErrorCode, StoreKey, Trust};

/// Where the server is, how to trust it, and who we are.
#[derive(Args, Clone)]
pub struct ConnectArgs {
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
    /// Username.
    #[arg(long, env = "QPQ_USERNAME")]
    pub username: String,
    /// Password (else QPQ_PASSWORD, else a prompt). It also unlocks the local store.
    #[arg(long, env = "QPQ_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Local store directory (default: the platform data dir, per server and user).
    #[arg(long, env = "QPQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl ConnectArgs {
    /// The password from the flag, the environment, or a prompt.
    pub fn password(&self) -> Result<String, String> {
        match &self.password {
            Some(p) => Ok(p.clone()),
            None => rpassword::prompt_password(format!("password for {}: ", self.username))
                .map_err(|e| format!("cannot read the password: {e}")),
        }
    }

    fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        let server = self.server.replace([':', '/', '[', ']'], "_");
        base.join("qpq").join(server).join(&self.username)
    }

    fn trust(&self) -> Result<Trust, String> {
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

    /// Opens the local store (unlocked by the password) and returns the client.
    pub fn open(&self, password: &str) -> Result<Client, String> {
        let dir = self.data_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut config = ClientConfig::new(
            &dir,
            StoreKey::Passphrase(password.to_string()),
            &self.server,
            self.trust()?,
        );
        config.server_name = self.server_name.clone();
        Client::open(config).map_err(|e| e.to_string())
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

/// Finds a conversation by name, `@user` (DM), index in `conversations()`, or id (hex prefix)
/// ([`Client::find_conversation`]).
pub fn find_conversation(client: &Client, what: &str) -> Result<ConversationId, String> {
    match client.find_conversation(what) {
        Ok(c) => Ok(c.id),
        Err(e) if e.code() == ErrorCode::NotFound => {
            Err(format!("no conversation matches {what:?} (see /list)"))
        }
        Err(e) => Err(e.message().to_string()),
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
