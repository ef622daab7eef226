//! A real qpq-server in-process for the CLI tests.
#![allow(dead_code, clippy::unwrap_used)]

pub struct Server {
    pub addr: String,
    pub cert: std::path::PathBuf,
    pub cert_der: Vec<u8>,
    stop: qpq_server::ShutdownHandle,
    rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

pub fn server() -> Server {
    server_with(|_| {})
}

/// A server with some settings changed.
pub fn server_with(tweak: impl FnOnce(&mut qpq_server::config::Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = qpq_server::config::Config::ephemeral(&dir.path().join("server"));
    tweak(&mut config);
    let (addr, stop) = rt.block_on(async {
        let s = qpq_server::Server::bind(config).await.unwrap();
        let addr = s.local_addr().unwrap().to_string();
        let stop = s.shutdown_handle();
        tokio::spawn(s.run());
        (addr, stop)
    });
    // The server writes its self-signed certificate into its data dir, as a real deployment.
    let cert = dir.path().join("server").join("server-cert.der");
    assert!(cert.exists());
    let cert_der = std::fs::read(&cert).unwrap();
    Server {
        addr,
        cert,
        cert_der,
        stop,
        rt,
        dir,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.shutdown();
        let _ = &self.rt;
    }
}
