//! The child-process servers: the real qpq-server (`serve-qpq`) and a bare quinn server
//! (`serve-bare`) that speaks the same 10-byte framing with nothing behind it, plus the client
//! side helpers to start them pinned to their own CPU.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use qpq_proto::frame::{read_request, Push, Response};
use qpq_proto::{Status, MAX_PAYLOAD};

/// Bare methods: answer at once.
pub const BARE_ECHO: u16 = 1;
/// Bare methods: insert one row with `synchronous=FULL`, then answer.
pub const BARE_DURABLE: u16 = 2;
/// Bare methods: answer, and push the payload to the registered push target.
pub const BARE_PUSH: u16 = 3;
/// Bare methods: register this connection as the push target.
pub const BARE_SUBSCRIBE: u16 = 4;
/// Bare methods: never answer; the stream and its task stay (an idle client's long-poll).
pub const BARE_HOLD: u16 = 5;

/// CPUs online (not the affinity mask, which pinning narrows).
pub fn cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Pins the calling thread (and threads it spawns afterwards) to one CPU, when it exists.
pub fn pin_to_cpu(cpu: usize) -> bool {
    let n = cpus();
    if n < 2 {
        return false;
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity only read/write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % n, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn announce(addr: SocketAddr, cert: &[u8]) {
    println!(
        "{}",
        serde_json::json!({"addr": addr.to_string(), "cert": hex::encode(cert)})
    );
}

/// A bench configuration of the real server: limits raised so the client is never throttled.
pub fn qpq_config(dir: &Path) -> qpq_server::config::Config {
    let mut c = qpq_server::config::Config::ephemeral(dir);
    c.rate_limit_per_sec = 1e12;
    c.rate_limit_burst = 1e12;
    c.auth_rate_per_sec = 1e12;
    c.auth_rate_burst = 1e12;
    c.max_queue_depth = u64::MAX / 2;
    c.max_queue_bytes = u64::MAX / 2;
    c.max_queue_share_percent = 100;
    c.fanout_per_sec = 1e12;
    c.fanout_burst = 1e12;
    c.write_bytes_per_sec = 1e15;
    c.write_bytes_burst = 1e15;
    c.blob_quota_bytes = u64::MAX / 2;
    c.max_concurrent_streams = 64;
    c.max_connections_per_ip = 1_000_000;
    c.log_level = "warn".into();
    c
}

/// The configuration of the isolation scenarios (D-8, R-3, A-6; `serve-qpq-limits`): the
/// reliability tests' settings: a queue cap of 1,000, a 1.5 s read deadline, no account,
/// authentication or login-attempt limit (the flood meets only the queue cap), 200 connections
/// per IP.
pub fn qpq_limits_config(dir: &Path) -> qpq_server::config::Config {
    let mut c = qpq_server::config::Config::ephemeral(dir);
    c.rate_limit_per_sec = 1e12;
    c.rate_limit_burst = 1e12;
    c.auth_rate_per_sec = 1e12;
    c.auth_rate_burst = 1e12;
    // A-6 sends thousands of LoginStarts it never finishes: no login-attempt limits (issue 17
    // items 4-7 are tested in server/tests/attack_accounts.rs).
    c.login_failures_per_account = 0;
    c.login_failures_per_ip = 0;
    c.login_attempts_account_burst = 0;
    c.max_pending_logins = 100_000;
    c.pending_logins_per_ip = 100_000;
    c.max_queue_depth = 1000;
    // One sender may fill the whole queue (per-sender shares are tested in security_flood.rs).
    c.max_queue_share_percent = 100;
    c.read_deadline_ms = 1500;
    c.max_connections_per_ip = 200;
    c.log_level = "warn".into();
    c
}

/// `serve-qpq DIR` (or `serve-qpq-limits DIR` with `limits`): the real server, pinned to CPU 1.
pub fn serve_qpq(dir: &str, limits: bool) -> ExitCode {
    pin_to_cpu(1);
    let dir = Path::new(dir);
    serve(if limits {
        qpq_limits_config(dir)
    } else {
        qpq_config(dir)
    })
}

/// `serve-qpq-pg DIR URL NODE on|off`: the real server (bench limits) as node `NODE` of the
/// PostgreSQL database `URL`, with cross-node wake-ups on or off (P1–P3). Not pinned: nodes
/// share the CPUs with PostgreSQL.
pub fn serve_qpq_pg(dir: &str, url: &str, node: &str, wake: &str) -> ExitCode {
    let mut config = qpq_config(Path::new(dir));
    config.database_url = url.into();
    config.node_id = node.into();
    config.cross_node_wake = wake == "on";
    serve(config)
}

/// Runs the real server with `config`, announcing its address and certificate on stdout.
fn serve(config: qpq_server::config::Config) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(_) => return ExitCode::FAILURE,
    };
    rt.block_on(async {
        let server = match qpq_server::Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("qpq server: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Ok(addr) = server.local_addr() else {
            return ExitCode::FAILURE;
        };
        announce(addr, server.certificate_der());
        match server.run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }
    })
}

/// `serve-bare DIR`: quinn with the same TLS and transport limits, the same frame codec, and
/// nothing else. Pinned to CPU 1.
pub fn serve_bare(dir: &str) -> ExitCode {
    pin_to_cpu(1);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(_) => return ExitCode::FAILURE,
    };
    rt.block_on(async {
        match bare_server(Path::new(dir)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bare server: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn bare_server(dir: &Path) -> Result<(), String> {
    let config = qpq_config(dir);
    let material = qpq_server::tls::load_or_generate(&config)?;
    let cert = material
        .chain
        .first()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let tls = qpq_server::tls::server_config(material)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(Arc::new(qpq_server::listener::transport_config(&config)?));
    let endpoint = quinn::Endpoint::server(sc, config.listen).map_err(|e| e.to_string())?;
    let db = rusqlite::Connection::open(dir.join("bare.db")).map_err(|e| e.to_string())?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )
    .map_err(|e| e.to_string())?;
    let db = Arc::new(Mutex::new(db));
    let target: Arc<Mutex<Option<quinn::Connection>>> = Arc::new(Mutex::new(None));
    announce(endpoint.local_addr().map_err(|e| e.to_string())?, &cert);
    let max_streams = config.max_concurrent_streams;
    while let Some(incoming) = endpoint.accept().await {
        let (db, target) = (db.clone(), target.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            // The same stream policy as the real server: 16 streams, raised when busy.
            let streams = Arc::new(qpq_server::listener::StreamLimit::new(max_streams));
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let (db, target, conn) = (db.clone(), target.clone(), conn.clone());
                streams.opened(&conn);
                let streams = streams.clone();
                tokio::spawn(async move {
                    let _open = Closed(streams);
                    let Ok(req) =
                        read_request(&mut recv, MAX_PAYLOAD, std::time::Duration::from_secs(10))
                            .await
                    else {
                        return;
                    };
                    match req.method {
                        BARE_HOLD => {
                            let _keep = (send, recv);
                            std::future::pending::<()>().await;
                            return;
                        }
                        BARE_DURABLE => {
                            let payload = req.payload.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                if let Ok(db) = db.lock() {
                                    let _ = db
                                        .execute("INSERT INTO t(data) VALUES (?1)", [&payload[..]]);
                                }
                            })
                            .await;
                        }
                        BARE_SUBSCRIBE => {
                            if let Ok(mut t) = target.lock() {
                                *t = Some(conn.clone());
                            }
                        }
                        BARE_PUSH => {
                            let to = target.lock().ok().and_then(|t| t.clone());
                            if let Some(to) = to {
                                let push = Push {
                                    event: 1000,
                                    payload: req.payload.clone(),
                                };
                                if let (Ok(bytes), Ok(mut s)) = (push.encode(), to.open_uni().await)
                                {
                                    let _ = s.write_all(&bytes).await;
                                    let _ = s.finish();
                                }
                            }
                        }
                        _ => {}
                    }
                    let resp = Response {
                        status: Status::Ok,
                        request_id: req.request_id,
                        payload: Bytes::new(),
                    };
                    if let Ok(bytes) = resp.encode() {
                        let _ = send.write_all(&bytes).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
    Ok(())
}

/// Counts a bare stream closed when dropped.
struct Closed(Arc<qpq_server::listener::StreamLimit>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// A running child server.
pub struct ChildServer {
    child: Child,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Its certificate (DER).
    pub cert: Vec<u8>,
    /// Its data dir, removed when the server is dropped.
    _dir: tempfile::TempDir,
}

impl ChildServer {
    /// Starts `qpq-bench <mode> <tempdir>` and waits for its announcement.
    pub fn start(mode: &str) -> Result<ChildServer, String> {
        ChildServer::start_args(mode, &[])
    }

    /// Starts `qpq-bench <mode> <tempdir> <args…>` and waits for its announcement.
    pub fn start_args(mode: &str, args: &[&str]) -> Result<ChildServer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(mode)
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("{mode} did not start: {e}"))?;
        let addr = v["addr"]
            .as_str()
            .ok_or("no addr")?
            .parse()
            .map_err(|_| "bad addr")?;
        let cert = hex::decode(v["cert"].as_str().ok_or("no cert")?).map_err(|e| e.to_string())?;
        Ok(ChildServer {
            child,
            addr,
            cert,
            _dir: dir,
        })
    }

    /// The real server with [`qpq_limits_config`].
    pub fn start_limits() -> Result<ChildServer, String> {
        ChildServer::start("serve-qpq-limits")
    }

    /// Resident set size of the child, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// CPU time (user + system) the child has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz.max(1.0)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
