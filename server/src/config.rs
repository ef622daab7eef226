//! Server configuration.
//!
//! Precedence, highest first: command-line flags, `QPQ_*` environment variables, the TOML file
//! given by `--config` (or `QPQ_CONFIG`; `./qpq-server.toml` is read when it exists), built-in
//! defaults. With nothing set the server listens on `0.0.0.0:5001` with SQLite under `./data`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;

macro_rules! options {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $env:literal, $default:expr; )*) => {
        /// Every setting as given by one source (flags and env, or the TOML file); `None` = not set.
        #[derive(Parser, Deserialize, Default, Debug, Clone)]
        #[command(name = "qpq-server", version, about = "quicproquo delivery server: stores and forwards end-to-end encrypted messages over QUIC")]
        #[serde(deny_unknown_fields, default)]
        pub struct Options {
            /// TOML configuration file (default: ./qpq-server.toml if it exists).
            #[arg(long, env = "QPQ_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env)]
                pub $name: Option<$ty>,
            )*
        }

        impl Options {
            /// Fills every unset field from `lower`.
            pub fn or(self, lower: Options) -> Options {
                Options { config: self.config.or(lower.config), $( $name: self.$name.or(lower.$name), )* }
            }
        }

        /// The effective configuration.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }

        impl Config {
            /// Each setting's name and its built-in default, as `--help` shows it.
            pub fn defaults() -> Vec<(&'static str, String)> {
                let d = Config::default();
                vec![ $( (stringify!($name), ShowDefault::show(&d.$name)), )* ]
            }

            /// Applies the set fields of `o` over the defaults.
            pub fn from_options(o: Options) -> Config {
                let d = Config::default();
                Config { $( $name: o.$name.unwrap_or(d.$name), )* }
            }
        }
    };
}

options! {
    /// UDP address to listen on.
    listen: SocketAddr = "QPQ_LISTEN", SocketAddr::from(([0, 0, 0, 0], 5001));
    /// PostgreSQL connection string (`postgres://user@host/db`, or key=value with
    /// `host=/socket/dir`): several server nodes share one database (issue 15, docs/SCALING.md).
    /// Empty = the embedded SQLite database under `data_dir`, exactly as without it.
    database_url: DatabaseUrl = "QPQ_DATABASE_URL", DatabaseUrl::default();
    /// This node's name in logs, metrics and /health (default: the host name and listen port).
    node_id: String = "QPQ_NODE_ID", String::new();
    /// Milliseconds between sweeps that re-check every locally waiting device (PostgreSQL
    /// only): bounds the delay of a lost cross-node wake-up.
    wake_sweep_ms: u64 = "QPQ_WAKE_SWEEP_MS", 1500;
    /// Cross-node wake-ups (PostgreSQL only): the doorbell NOTIFY after each commit, the
    /// LISTEN connection and the sweep. Turn off only for a single node: with it off, a
    /// FetchWait parked on another node sees a new message only when its wait times out.
    cross_node_wake: bool = "QPQ_CROSS_NODE_WAKE", true;
    /// Directory for the database, certificate and key.
    data_dir: PathBuf = "QPQ_DATA_DIR", PathBuf::from("data");
    /// TLS certificate (PEM or DER); a self-signed one is generated when unset.
    tls_cert: PathBuf = "QPQ_TLS_CERT", PathBuf::new();
    /// TLS private key (PEM or DER), with --tls-cert.
    tls_key: PathBuf = "QPQ_TLS_KEY", PathBuf::new();
    /// Log format: text or json (anything else is refused).
    log_format: String = "QPQ_LOG_FORMAT", "text".into();
    /// Log filter (tracing env-filter syntax).
    log_level: String = "QPQ_LOG", "info".into();
    /// Address for the Prometheus metrics endpoint (disabled when unset).
    metrics_listen: String = "QPQ_METRICS_LISTEN", String::new();
    /// Seconds to let in-flight requests finish on SIGTERM/SIGINT.
    drain_timeout: u64 = "QPQ_DRAIN_TIMEOUT", 10;
    /// Session token lifetime in seconds.
    session_ttl: u64 = "QPQ_SESSION_TTL", 7 * 24 * 3600;
    /// Concurrent connections allowed from one IP address.
    max_connections_per_ip: usize = "QPQ_MAX_CONNECTIONS_PER_IP", 20;
    /// Concurrent bidirectional streams (calls) per connection.
    max_concurrent_streams: u32 = "QPQ_MAX_CONCURRENT_STREAMS", 16;
    /// Per-stream receive window in bytes.
    stream_receive_window: u32 = "QPQ_STREAM_RECEIVE_WINDOW", 256 * 1024;
    /// Per-connection receive window in bytes.
    receive_window: u32 = "QPQ_RECEIVE_WINDOW", 1024 * 1024;
    /// Idle timeout of a connection in milliseconds.
    idle_timeout_ms: u64 = "QPQ_IDLE_TIMEOUT_MS", 30_000;
    /// Time a client has to send a whole request frame, in milliseconds.
    read_deadline_ms: u64 = "QPQ_READ_DEADLINE_MS", 10_000;
    /// Largest message payload (and Welcome) accepted by Enqueue, in bytes.
    max_message_bytes: usize = "QPQ_MAX_MESSAGE_BYTES", 3 * 1024 * 1024;
    /// Largest blob, in bytes.
    max_blob_bytes: u64 = "QPQ_MAX_BLOB_BYTES", 50 * 1024 * 1024;
    /// Messages queued per device before Enqueue to it answers RateLimited.
    max_queue_depth: u64 = "QPQ_MAX_QUEUE_DEPTH", 10_000;
    /// KeyPackages stored per device.
    max_key_packages: u64 = "QPQ_MAX_KEY_PACKAGES", 100;
    /// KeyPackages one device may fetch of one other device in a burst (K-2: a token bucket
    /// per (requester device, target device), like Signal's PRE_KEYS limit); past it
    /// FetchKeyPackage answers RateLimited with retry_after_ms (0 = no limit). Every call
    /// takes a token, also one that finds no KeyPackage. 20, not Signal's 6: every MLS group
    /// add consumes a KeyPackage (ADR 0008).
    key_package_fetch_burst: u32 = "QPQ_KEY_PACKAGE_FETCH_BURST", 20;
    /// Milliseconds to refill one token of that bucket (default 1 minute): an attacker
    /// drains at most burst + elapsed / refill KeyPackages of one device per device it holds.
    key_package_fetch_refill_ms: u64 = "QPQ_KEY_PACKAGE_FETCH_REFILL_MS", 60 * 1000;
    /// Devices per account.
    max_devices: usize = "QPQ_MAX_DEVICES", 5;
    /// Sustained requests per second per account.
    rate_limit_per_sec: f64 = "QPQ_RATE_LIMIT_PER_SEC", 200.0;
    /// Burst of requests per account.
    rate_limit_burst: f64 = "QPQ_RATE_LIMIT_BURST", 400.0;
    /// Sustained unauthenticated (OPAQUE) requests per second per IP address.
    auth_rate_per_sec: f64 = "QPQ_AUTH_RATE_PER_SEC", 20.0;
    /// Burst of unauthenticated requests per IP address.
    auth_rate_burst: f64 = "QPQ_AUTH_RATE_BURST", 200.0;
    /// Longest FetchWait, in milliseconds.
    max_fetch_wait_ms: u64 = "QPQ_MAX_FETCH_WAIT_MS", 60_000;
    /// Login attempts per (username, IP address) within `login_failure_window_secs`; past it
    /// LoginStart for that username from that address answers RateLimited with retry_after_ms
    /// (0 = no limit). Every LoginStart counts until its LoginFinish succeeds (a guess checked
    /// offline and never finished still counts). Counted for unknown usernames too, so the
    /// limit reveals nothing about which names exist. Other addresses are not affected, so a
    /// stranger cannot lock the owner out this way (ADR 0040).
    login_failures_per_account: u32 = "QPQ_LOGIN_FAILURES_PER_ACCOUNT", 5;
    /// Login attempts per IP address within `login_failure_window_secs`, over all usernames,
    /// counted like the per-(username, address) limit (0 = no limit).
    login_failures_per_ip: u32 = "QPQ_LOGIN_FAILURES_PER_IP", 100;
    /// Login attempts per username from all addresses together, as a token bucket: this many
    /// at once (0 = no limit). It bounds guessing from many addresses; a LoginStart carrying a
    /// valid session token of the account (a device already logged in) is exempt (ADR 0040).
    login_attempts_account_burst: u32 = "QPQ_LOGIN_ATTEMPTS_ACCOUNT_BURST", 30;
    /// Seconds to refill one attempt of that per-username bucket (default 120: about 720
    /// guesses a day from any number of addresses).
    login_attempts_account_refill_secs: u64 = "QPQ_LOGIN_ATTEMPTS_ACCOUNT_REFILL_SECS", 120;
    /// Logins started and not yet finished, kept at most (all addresses together).
    max_pending_logins: usize = "QPQ_MAX_PENDING_LOGINS", 10_000;
    /// Logins started and not yet finished one IP address may hold at once (its share of
    /// `max_pending_logins`, so a few addresses cannot fill the table for everyone).
    pending_logins_per_ip: usize = "QPQ_PENDING_LOGINS_PER_IP", 32;
    /// Sustained requests per second per IP address, every method, checked before the
    /// session lookup (0 = no limit).
    ip_rate_per_sec: f64 = "QPQ_IP_RATE_PER_SEC", 2000.0;
    /// Burst of requests per IP address (every method).
    ip_rate_burst: f64 = "QPQ_IP_RATE_BURST", 4000.0;
    /// Sustained Health requests per second per IP address (0 = no limit).
    health_rate_per_sec: f64 = "QPQ_HEALTH_RATE_PER_SEC", 10.0;
    /// Burst of Health requests per IP address.
    health_rate_burst: f64 = "QPQ_HEALTH_RATE_BURST", 20.0;
    /// Sessions kept per device: a login past it ends that device's oldest session.
    max_sessions_per_device: usize = "QPQ_MAX_SESSIONS_PER_DEVICE", 10;
    /// Seconds a deleted account's username stays reserved, so nobody else can take it and
    /// pose as the deleted contact (0 = free at once).
    username_tombstone_secs: u64 = "QPQ_USERNAME_TOMBSTONE_SECS", 30 * 24 * 3600;
    /// File holding the OPAQUE server setup (its private key), apart from the database;
    /// created 0600 when missing (and moved out of the database if it was there). Empty =
    /// kept in the database.
    opaque_setup_file: PathBuf = "QPQ_OPAQUE_SETUP_FILE", PathBuf::new();
    /// Whether RegisterFinish, LoginFinish and RegisterDevice must carry a signature proving
    /// the client holds the private key of each key it registers (ADR 0041).
    require_key_proof: bool = "QPQ_REQUIRE_KEY_PROOF", true;
    /// Sliding window of the failed-login limits, in seconds.
    login_failure_window_secs: u64 = "QPQ_LOGIN_FAILURE_WINDOW_SECS", 15 * 60;
    /// Accounts one IP address may register within `registration_window_secs`; excess
    /// registrations answer RateLimited (0 = no limit).
    registrations_per_ip: u32 = "QPQ_REGISTRATIONS_PER_IP", 10;
    /// Sliding window of the registration limit, in seconds.
    registration_window_secs: u64 = "QPQ_REGISTRATION_WINDOW_SECS", 3600;
    /// Test and operations knob: caps the database file at this many pages (SQLite
    /// `max_page_count`, 4 KiB pages by default), applied to every connection. Writes past the
    /// cap fail as on a full disk (Enqueue answers Unavailable, nothing is acknowledged).
    /// 0 = no cap.
    max_db_pages: u64 = "QPQ_MAX_DB_PAGES", 0;
    /// Payload bytes queued per device (messages referenced by its queue) before deliveries
    /// to it are refused, like `max_queue_depth` (issue 17 item 21).
    max_queue_bytes: u64 = "QPQ_MAX_QUEUE_BYTES", 128 * 1024 * 1024;
    /// Share of one device's queue (entries and bytes, in percent of `max_queue_depth` and
    /// `max_queue_bytes`) that one sending account may hold; past it that sender's messages
    /// skip the device and are reported undelivered, while others still reach it (item 20).
    max_queue_share_percent: u64 = "QPQ_MAX_QUEUE_SHARE_PERCENT", 25;
    /// Queue entries (messages x recipient devices) one account may create per second,
    /// sustained (item 19: a BatchEnqueue to a group costs what it fans out to).
    fanout_per_sec: f64 = "QPQ_FANOUT_PER_SEC", 1000.0;
    /// Burst of queue entries per account (a message to a group of 10,000 fits).
    fanout_burst: f64 = "QPQ_FANOUT_BURST", 20_000.0;
    /// Bytes one account may write (message payloads, Welcomes, blob chunks) per second,
    /// sustained (item 21).
    write_bytes_per_sec: f64 = "QPQ_WRITE_BYTES_PER_SEC", 1024.0 * 1024.0;
    /// Burst of written bytes per account (at least one largest blob).
    write_bytes_burst: f64 = "QPQ_WRITE_BYTES_BURST", 64.0 * 1024.0 * 1024.0;
    /// Free bytes the data directory's file system must keep: below it, writes that store
    /// new data (Enqueue, blobs, KeyPackages, registrations) answer Unavailable, while acks,
    /// deletions and reads go on (item 21). 0 = off.
    min_free_disk_bytes: u64 = "QPQ_MIN_FREE_DISK_BYTES", 256 * 1024 * 1024;
    /// Largest size of the database (file plus WAL), in bytes: past it the same writes answer
    /// Unavailable (a watermark below `max_db_pages`, which fails like a full disk). 0 = off.
    /// SQLite only: on PostgreSQL the database's size is the operator's to cap (docs/SCALING.md).
    max_store_bytes: u64 = "QPQ_MAX_STORE_BYTES", 0;
    /// Bytes of blobs (complete or being uploaded, by declared size) one account may store
    /// (item 27).
    blob_quota_bytes: u64 = "QPQ_BLOB_QUOTA_BYTES", 1024 * 1024 * 1024;
    /// Seconds after which an incomplete blob upload is deleted by the purge job.
    blob_incomplete_ttl_secs: u64 = "QPQ_BLOB_INCOMPLETE_TTL_SECS", 24 * 3600;
    /// Seconds an undelivered message stays queued before the purge job deletes it (D-10);
    /// idempotency records (`enqueue_ids`) are kept as long.
    message_ttl_secs: u64 = "QPQ_MESSAGE_TTL_SECS", 30 * 24 * 3600;
    /// Seconds between purge runs.
    purge_interval_secs: u64 = "QPQ_PURGE_INTERVAL_SECS", 600;
    /// Time the server gives a client to take a response (and its acknowledgement), in
    /// milliseconds; past it the stream is reset and its bytes dropped (item 24).
    write_deadline_ms: u64 = "QPQ_WRITE_DEADLINE_MS", 10_000;
    /// Response bytes buffered per connection (R-2: 1 MiB); a response waits for room, within
    /// the write deadline (item 24). A single message larger than this still goes out alone.
    max_buffered_bytes_per_connection: u32 = "QPQ_MAX_BUFFERED_BYTES_PER_CONNECTION", 1024 * 1024;
    /// Request payload bytes being received per connection at once; a frame waits for room
    /// within its read deadline (item 26). At least one largest frame (4 MiB).
    max_request_bytes_per_connection: u32 = "QPQ_MAX_REQUEST_BYTES_PER_CONNECTION", 4 * 1024 * 1024 + 64 * 1024;
    /// Push bytes queued per connection; pushes past it are dropped (the queue is the
    /// truth, the client fetches), and a connection that takes no push stream within the
    /// write deadline gets none (item 25).
    max_push_bytes_per_connection: u32 = "QPQ_MAX_PUSH_BYTES_PER_CONNECTION", 256 * 1024;
    /// When to answer a handshake from an unvalidated address with a QUIC Retry, so a
    /// forged source address never takes a per-IP connection slot (item 29): "always",
    /// "load" (when the address already holds a slot, or 64 handshakes are pending) or "never".
    quic_retry: String = "QPQ_QUIC_RETRY", "load".into();
}

impl Config {
    /// Reads flags and environment, then the TOML file, then defaults.
    pub fn load() -> Result<Config, String> {
        let cli = Options::from_arg_matches(&Options::command_with_defaults().get_matches())
            .map_err(|e| e.to_string())?;
        let file = match &cli.config {
            Some(p) => Some(read_file(p)?),
            None if Path::new("qpq-server.toml").exists() => {
                Some(read_file(Path::new("qpq-server.toml"))?)
            }
            None => None,
        };
        let config = Config::from_options(match file {
            Some(f) => cli.or(f),
            None => cli,
        });
        config.validate()?;
        Ok(config)
    }

    /// Checks what a setting's type cannot: `log_format` is `text` or `json`.
    pub fn validate(&self) -> Result<(), String> {
        match self.log_format.as_str() {
            "text" | "json" => Ok(()),
            other => Err(format!(
                "--log-format (QPQ_LOG_FORMAT) must be text or json, not {other:?}"
            )),
        }
    }

    /// A configuration for tests and embedding: loopback, ephemeral port, the given data dir.
    /// Every default applies except the per-IP registration and request limits, which are
    /// off (a loopback server's clients all come from 127.0.0.1, and tests and demos register
    /// many accounts and load the server from that one address), and the free-disk watermark,
    /// which is off (a test machine's disk is shared and small; tests that need it set it).
    pub fn ephemeral(data_dir: &Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            registrations_per_ip: 0,
            ip_rate_per_sec: 0.0,
            health_rate_per_sec: 0.0,
            min_free_disk_bytes: 0,
            ..Config::default()
        }
    }

    /// The failed-login window as a duration.
    pub fn login_failure_window(&self) -> Duration {
        Duration::from_secs(self.login_failure_window_secs)
    }

    /// The KeyPackage fetch bucket's refill rate, in tokens per second.
    pub fn key_package_fetch_per_sec(&self) -> f64 {
        1000.0 / self.key_package_fetch_refill_ms.max(1) as f64
    }

    /// The per-username login bucket's refill rate, in attempts per second.
    pub fn login_attempts_account_per_sec(&self) -> f64 {
        1.0 / self.login_attempts_account_refill_secs.max(1) as f64
    }

    /// The registration window as a duration.
    pub fn registration_window(&self) -> Duration {
        Duration::from_secs(self.registration_window_secs)
    }

    /// Path of the SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("qpq.db")
    }

    /// Read deadline as a duration.
    pub fn read_deadline(&self) -> Duration {
        Duration::from_millis(self.read_deadline_ms)
    }

    /// Write deadline as a duration.
    pub fn write_deadline(&self) -> Duration {
        Duration::from_millis(self.write_deadline_ms)
    }
}

impl Options {
    /// The flag parser with each setting's built-in default appended to its help text. The
    /// defaults are not clap defaults: an unset flag must stay unset so the file and the
    /// environment can fill it.
    pub fn command_with_defaults() -> clap::Command {
        let mut cmd = Options::command();
        for (name, value) in Config::defaults() {
            cmd = cmd.mut_arg(name, |a| {
                let tail = format!(" [default: {value}]");
                let help = a.get_help().map(|h| format!("{h}{tail}"));
                let long = a.get_long_help().map(|h| format!("{h}{tail}"));
                let a = match help {
                    Some(h) => a.help(h),
                    None => a,
                };
                match long {
                    Some(h) => a.long_help(h),
                    None => a,
                }
            });
        }
        cmd
    }
}

/// How a default reads in `--help`.
/// A PostgreSQL connection string. It may hold a password, so its `Debug` shows only whether
/// it is set, and `--help` never prints it; [`DatabaseUrl::expose`] gives the text to the
/// database driver, the one place that needs it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// True when unset: the server uses its embedded SQLite database.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The connection string itself, for the driver. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for DatabaseUrl {
    fn from(s: &str) -> Self {
        DatabaseUrl(s.to_string())
    }
}

impl From<String> for DatabaseUrl {
    fn from(s: String) -> Self {
        DatabaseUrl(s)
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_string()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_empty() {
            "unset"
        } else {
            "<redacted>"
        })
    }
}

impl ShowDefault for DatabaseUrl {
    fn show(&self) -> String {
        format!("{self:?}")
    }
}

trait ShowDefault {
    fn show(&self) -> String;
}

impl ShowDefault for String {
    fn show(&self) -> String {
        if self.is_empty() {
            "unset".into()
        } else {
            self.clone()
        }
    }
}

impl ShowDefault for PathBuf {
    fn show(&self) -> String {
        if self.as_os_str().is_empty() {
            "unset".into()
        } else {
            self.display().to_string()
        }
    }
}

macro_rules! show_display {
    ($($t:ty),*) => { $( impl ShowDefault for $t { fn show(&self) -> String { self.to_string() } } )* };
}
show_display!(SocketAddr, u64, u32, usize, f64, bool);

fn read_file(p: &Path) -> Result<Options, String> {
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let file: Options =
            toml::from_str("listen = \"127.0.0.1:7000\"\nmax_devices = 3\n").expect("valid toml");
        let cli =
            Options::try_parse_from(["qpq-server", "--max-devices", "4"]).expect("valid flags");
        let c = Config::from_options(cli.or(file));
        assert_eq!(c.listen, "127.0.0.1:7000".parse().expect("addr"));
        assert_eq!(c.max_devices, 4);
        assert_eq!(c.max_blob_bytes, 50 * 1024 * 1024);
        assert!(toml::from_str::<Options>("no_such_option = 1").is_err());
    }

    #[test]
    fn help_shows_defaults_and_log_format_is_checked() {
        let help = Options::command_with_defaults()
            .render_long_help()
            .to_string();
        assert!(help.contains("[default: 0.0.0.0:5001]"), "{help}");
        assert!(help.contains("[default: data]"), "{help}");
        assert!(help.contains("[default: 30000]"), "{help}");
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.log_format = "yaml".into();
        assert!(c.validate().expect_err("yaml is refused").contains("yaml"));
    }

    #[test]
    fn database_url_comes_from_flag_or_file_and_defaults_to_sqlite() {
        assert!(
            Config::default().database_url.is_empty(),
            "no setting keeps SQLite"
        );
        let file: Options =
            toml::from_str("database_url = \"host=/run/pg dbname=qpq\"\n").expect("valid toml");
        let none = Options::try_parse_from(["qpq-server"]).expect("valid flags");
        assert_eq!(
            Config::from_options(none.or(file.clone()))
                .database_url
                .expose(),
            "host=/run/pg dbname=qpq"
        );
        let cli = Options::try_parse_from(["qpq-server", "--database-url", "postgres://a@b/c"])
            .expect("valid flags");
        let c = Config::from_options(cli.or(file));
        assert_eq!(c.database_url.expose(), "postgres://a@b/c");
        // Its password never shows in a printed configuration.
        let shown = format!("{c:?}");
        assert!(!shown.contains("postgres://a@b/c"), "{shown}");
        assert!(shown.contains("database_url: <redacted>"), "{shown}");
        assert_eq!(c.wake_sweep_ms, 1500);
    }

    #[test]
    fn defaults_serve_on_5001_under_data() {
        let c = Config::default();
        assert_eq!(c.listen.port(), 5001);
        assert_eq!(c.db_path(), PathBuf::from("data/qpq.db"));
        assert_eq!(c.key_package_fetch_burst, 20);
        assert_eq!(c.key_package_fetch_refill_ms, 60_000);
        assert_eq!(c.key_package_fetch_per_sec(), 1.0 / 60.0);
    }
}
