#![doc = include_str!("../README.md")]

pub mod api;
pub mod db;
pub mod error;
pub mod metrics;
pub mod relay;
pub mod team_state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use db::Db;
pub use error::{Error, Result};
pub use relay::Relay;

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub db_path: PathBuf,
    pub bind: SocketAddr,
    /// PEM certificate chain and private key: serve https.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve plain http on a non-loopback address (behind a TLS proxy).
    pub allow_plain_http: bool,
    /// How long a request's head may take to arrive (an idle connection
    /// is closed after it), and its body may pause between pieces.
    pub read_pause: Duration,
}

/// Serve until SIGINT/SIGTERM, then finish in-flight requests and return.
/// `ready` gets the bound address (useful with port 0).
pub async fn serve(config: ServeConfig, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    if config.tls.is_none() && !config.bind.ip().is_loopback() && !config.allow_plain_http {
        return Err(Error::BadRequest(
            "plain_http",
            "without --tls-cert/--tls-key the relay only binds a loopback address \
             (pass --allow-plain-http when a TLS proxy sits in front)"
                .into(),
        ));
    }
    let db = Db::open(&config.db_path)?;
    let again = db.revoke_again(relay::now_ms())?;
    if again > 0 {
        tracing::warn!(
            devices = again,
            "revoked again: the revocations file lists them, the database did not \
             (restored from a backup?)"
        );
    }
    db.checkpoint_in_background()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = api::App {
        relay: Arc::new(Relay::new(db)),
        metrics: Arc::new(metrics::Metrics::default()),
        shutdown: stop_rx,
        enrol_guard: Arc::default(),
        read_pause: config.read_pause,
    };
    let db = app.relay.db.clone();
    every("checkpoint", Duration::from_millis(500), move || {
        db.checkpoint()
    })?;
    let relay = app.relay.clone();
    every("revocations", Duration::from_secs(1), move || {
        relay.reflect_revocations()
    })?;
    let db = app.relay.db.clone();
    let router = api::router(app);
    let listener = std::net::TcpListener::bind(config.bind)
        .map_err(|e| Error::Storage(format!("cannot bind {}: {e}", config.bind)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Storage(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Storage(e.to_string()))?;
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing requests in flight");
            let _ = stop_tx.send(true);
            handle.graceful_shutdown(Some(std::time::Duration::from_secs(30)));
        });
    }
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    // HTTP/1.1 only (phones speak nothing else), where every request's
    // head must be in within `read_pause` (the body has its own limits,
    // `api::read_body`), and a connection that waits that long for its
    // next request is closed (hyper's header read timeout). Neither a
    // client that sends its head a byte at a time nor one that connects
    // and sends nothing holds a connection (~23 KB of buffers) for as long
    // as it likes. Phones let a connection rest at most 20 s before they
    // stop reusing it, within the default 30 s. (hyper's HTTP/2 bounds a
    // connection's first request only: an HTTP/2 client could keep one
    // open, idle, for good.)
    let tls = match &config.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let read = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    Error::Storage(format!("cannot read the TLS certificate or key: {e}"))
                })?;
            // axum-server offers h2 too: a client offering only that is
            // refused in the handshake.
            let mut tls = (*read.get_inner()).clone();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(axum_server::tls_rustls::RustlsConfig::from_config(
                std::sync::Arc::new(tls),
            ))
        }
        None => None,
    };
    let mut server = axum_server::from_tcp(listener)
        .map_err(|e| Error::Storage(e.to_string()))?
        .http1_only();
    // Half-closed connections allowed: while a request is being answered,
    // hyper no longer posts a read to notice its client leaving. That read
    // reserves a second 8 KiB buffer per connection (the first still holds
    // the request's head): 10,000 waiting long-polls held ~40 MB more, and
    // ~65 MB more at the peak (BENCHMARKS.md). A poll whose client left is
    // answered when its wait ends (at most `MAX_WAIT_SECS`), as one on a
    // phone that lost signal always was, or 5 s after the same phone polls
    // again (`TeamState::wait`).
    server
        .http_builder()
        .http1()
        .header_read_timeout(config.read_pause)
        .half_close(true);
    let server = server
        .first_request_timeout(config.read_pause)
        .handle(handle);
    ready(addr);
    match tls {
        Some(tls) => {
            tracing::info!(%addr, "relay listening (https)");
            server
                .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls))
                .serve(service)
                .await
        }
        None => {
            tracing::info!(%addr, "relay listening (http)");
            server.serve(service).await
        }
    }
    .map_err(|e| Error::Storage(e.to_string()))?;
    // Requests are finished: fold the WAL into the database file and empty
    // it, so no page of a deleted row outlives the relay in it.
    db.checkpoint_truncate()?;
    Ok(())
}

/// Run `work` on its own thread every `period` for the life of the process;
/// a failure is logged and the next tick tries again.
fn every(
    name: &str,
    period: Duration,
    work: impl Fn() -> Result<()> + Send + 'static,
) -> Result<()> {
    let what = name.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            std::thread::sleep(period);
            if let Err(e) = work() {
                tracing::warn!("{what} failed: {e}");
            }
        })
        .map(|_| ())
        .map_err(|e| Error::Storage(format!("cannot start the {name} timer: {e}")))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
