//! A small protocol client, an in-process server and a child-process server for the
//! integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use qpq_server::config::Config;
use qpq_server::service::Service;
pub use qpq_server::testkit::*;
use qpq_server::{Server, ShutdownHandle};

pub struct TestServer {
    pub addr: SocketAddr,
    pub cert_der: Vec<u8>,
    pub metrics_addr: Option<SocketAddr>,
    pub shutdown: ShutdownHandle,
    pub task: tokio::task::JoinHandle<()>,
    pub dir: tempfile::TempDir,
    /// The data directory actually used (the tempdir unless the tweak changed it).
    pub data_dir: PathBuf,
    /// The running server's request handler (gauges, config).
    pub service: Arc<Service>,
    /// The node's name (`node_id`, or host name and port).
    pub node_id: String,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::ephemeral(dir.path());
        tweak(&mut config);
        let data_dir = config.data_dir.clone();
        let server = Server::bind(config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let cert_der = server.certificate_der().to_vec();
        let metrics_addr = server.metrics_addr();
        let shutdown = server.shutdown_handle();
        let service = server.service().clone();
        let node_id = server.node_id().to_string();
        let task = tokio::spawn(async move {
            server.run().await.unwrap();
        });
        TestServer {
            addr,
            cert_der,
            metrics_addr,
            shutdown,
            task,
            dir,
            data_dir,
            service,
            node_id,
        }
    }

    /// Path of the server's SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("qpq.db")
    }

    /// Drains and stops the server, waiting until it has closed the database.
    pub async fn stop(self) {
        self.shutdown.shutdown();
        self.task.await.unwrap();
    }

    pub async fn connect(&self) -> Conn {
        Conn::connect(self.addr, &self.cert_der).await.unwrap()
    }

    /// A connected client with a fresh registered and logged-in account.
    pub async fn user(&self, name: &str) -> Conn {
        let mut c = self.connect().await;
        c.register(name, "correct horse battery staple")
            .await
            .unwrap();
        c.login(name, "correct horse battery staple").await.unwrap();
        c
    }
}

/// The real `qpq-server` binary as a child process.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub cert: Vec<u8>,
}

impl ChildServer {
    /// Starts the binary on `data` (loopback, ephemeral port) with extra flags; returns once
    /// it logged that it listens.
    pub fn spawn(data: &Path, extra: &[&str]) -> ChildServer {
        Self::spawn_logged(data, extra, "warn,qpq_server=info", None)
    }

    /// [`ChildServer::spawn`] with a log filter, also copying every log line (JSON, from the
    /// first) to `log` when given.
    pub fn spawn_logged(
        data: &Path,
        extra: &[&str],
        log_level: &str,
        log: Option<&Path>,
    ) -> ChildServer {
        use std::io::Write;
        let mut copy = log.map(|p| std::fs::File::create(p).unwrap());
        let mut child = Command::new(env!("CARGO_BIN_EXE_qpq-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log-level",
                log_level,
                "--data-dir",
            ])
            .arg(data)
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(f) = copy.as_mut() {
                writeln!(f, "{line}").unwrap();
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "qpq-server listening" {
                break v["fields"]["listen"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(f) = copy.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let cert = std::fs::read(data.join("server-cert.der")).unwrap();
        ChildServer { child, addr, cert }
    }

    /// SIGKILL, and reap.
    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn connect(&self) -> Conn {
        Conn::connect(self.addr, &self.cert).await.unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `PRAGMA integrity_check` of a database file (opened read-write, so a hot WAL is recovered).
pub fn integrity_check(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Every message queued for `c`'s device after `after`, page by page, asserting that sequence
/// numbers strictly increase (also across server restarts).
pub async fn fetch_all_after(c: &Conn, after: u64) -> Vec<qpq_proto::v1::QueuedMessage> {
    use qpq_proto::{method, v1};
    let mut out = Vec::new();
    let mut last = after;
    loop {
        let r: v1::FetchResponse = c
            .call(
                method::FETCH,
                &v1::FetchRequest {
                    after_seq: last,
                    limit: 1000,
                    channel_id: bytes::Bytes::new(),
                },
            )
            .await
            .unwrap();
        if r.messages.is_empty() {
            return out;
        }
        for m in r.messages {
            assert!(
                m.seq > last,
                "sequence numbers strictly increase across restarts"
            );
            last = m.seq;
            out.push(m);
        }
    }
}
