//! A small protocol client and an in-process server for the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use qpq_server::config::Config;
pub use qpq_server::testkit::*;
use qpq_server::{Server, ShutdownHandle};

pub struct TestServer {
    pub addr: SocketAddr,
    pub cert_der: Vec<u8>,
    pub metrics_addr: Option<SocketAddr>,
    pub shutdown: ShutdownHandle,
    pub task: tokio::task::JoinHandle<()>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::ephemeral(dir.path());
        tweak(&mut config);
        let server = Server::bind(config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let cert_der = server.certificate_der().to_vec();
        let metrics_addr = server.metrics_addr();
        let shutdown = server.shutdown_handle();
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
        }
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
