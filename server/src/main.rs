//! `qpq-server`: run the quicproquo delivery server. See `qpq-server --help`.

use qpq_server::config::Config;
use qpq_server::Server;

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qpq-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&config);
    let server = match Server::bind(config.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = server
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // The default listens on every interface; the line says so, so an operator who wanted
    // loopback only sees it at once.
    let interfaces = match server.local_addr() {
        Ok(a) if a.ip().is_unspecified() => {
            "all interfaces (set --listen 127.0.0.1:PORT for local only)"
        }
        Ok(a) if a.ip().is_loopback() => "loopback only",
        _ => "one interface",
    };
    tracing::info!(
        listen = %addr,
        node_id = %server.node_id(),
        backend = if config.database_url.is_empty() { "sqlite" } else { "postgres" },
        interfaces,
        data_dir = %config.data_dir.display(),
        cert_sha256 = %server.fingerprint(),
        metrics = ?server.metrics_addr(),
        version = env!("CARGO_PKG_VERSION"),
        "qpq-server listening"
    );
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        stop.shutdown();
    });
    let span = tracing::info_span!("node", node_id = %server.node_id());
    match tracing::Instrument::instrument(server.run(), span).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
