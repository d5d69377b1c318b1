//! The admin web server: the page, the REST API, `/metrics` and `/healthz`, over HTTP or
//! HTTPS, on one listener. It talks to the rest of mohd only through [`backend::Backend`].
//!
//! - `api`: the axum router, authentication (session cookie + CSRF token, or bearer token),
//!   the handlers and the OpenAPI document.
//! - `auth`: the admin password, API tokens, sessions and the login rate limiter.
//! - `backend`: the trait the server implements and the JSON shapes of the API.
//! - `assets/`: the page (plain HTML, CSS and one JavaScript module), embedded in the binary.
//!
//! The listener is bound here (not by axum-server) so a bind error is returned to the caller at
//! once and port 0 yields the real port; axum-server then serves it, with rustls when a
//! certificate is configured, and stops gracefully when the shutdown signal flips.

pub mod api;
pub mod auth;
pub mod backend;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

use crate::tls::ReloadableTls;
use tokio::sync::watch;

use self::auth::AuthStore;
use self::backend::Backend;

/// How long requests in flight (an upload, a preview) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A connection must send its first request within this (slow-loris guard).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Address to listen on; port 0 picks a free port (see [`WebHandle::addr`]).
    pub listen: SocketAddr,
    /// `(certificate chain PEM, private key PEM)`: serve HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve `/metrics` without authentication.
    pub metrics_public: bool,
    /// Largest upload accepted, bytes (413 beyond).
    pub max_upload_bytes: u64,
    /// What `POST /api/tls/reload` reloads (the server's SIP and web certificates); the web's
    /// own is added to it. `None`: the route answers 404.
    pub tls_reloader: Option<Arc<crate::tls::TlsReloader>>,
}

/// Why the web server did not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The certificate or key file could not be read or parsed.
    #[error("TLS {what} {}: {reason}", path.display())]
    TlsFile {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS certificate and key refused: {0}")]
    Tls(String),
}

/// A running web server.
#[derive(Debug)]
pub struct WebHandle {
    /// The address actually bound.
    pub addr: SocketAddr,
    /// Whether it serves HTTPS.
    pub https: bool,
    task: tokio::task::JoinHandle<()>,
}

impl WebHandle {
    /// Waits until the server has stopped (after the shutdown signal and the grace period).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Binds `config.listen` and serves the page and API until `shutdown` becomes true (or its
/// sender is dropped). Returns once listening.
pub async fn serve(
    config: WebConfig,
    backend: Arc<dyn Backend>,
    auth: AuthStore,
    shutdown: watch::Receiver<bool>,
) -> Result<WebHandle, WebError> {
    let listener = bind(config.listen)?;
    serve_on(listener, config, backend, auth, shutdown).await
}

/// Serves the page and API on a listener bound with [`bind`] (`config.listen` names it in
/// errors) until `shutdown` becomes true (or its sender is dropped).
pub async fn serve_on(
    listener: std::net::TcpListener,
    config: WebConfig,
    backend: Arc<dyn Backend>,
    auth: AuthStore,
    mut shutdown: watch::Receiver<bool>,
) -> Result<WebHandle, WebError> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    if let (Some(tls), Some(reloader)) = (&tls, &config.tls_reloader) {
        reloader.add("web", Arc::clone(tls));
    }
    let https = tls.is_some();
    let addr = listener.local_addr().map_err(|source| WebError::Bind {
        addr: config.listen,
        source,
    })?;
    let state = api::AppState::new(
        backend,
        auth,
        api::Options {
            metrics_public: config.metrics_public,
            max_upload_bytes: config.max_upload_bytes,
            https,
            tls_reloader: config.tls_reloader.clone(),
        },
    );
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let bind_err = |source| WebError::Bind {
        addr: config.listen,
        source,
    };
    let server: Pin<Box<dyn Future<Output = io::Result<()>> + Send>> = match tls {
        Some(tls) => Box::pin(
            axum_server::from_tcp_rustls(listener, rustls_config(&tls))
                .map_err(bind_err)?
                .handle(handle.clone())
                .first_request_timeout(FIRST_REQUEST_TIMEOUT)
                .http1_only()
                .serve(app),
        ),
        None => Box::pin(
            axum_server::from_tcp(listener)
                .map_err(bind_err)?
                .handle(handle.clone())
                .first_request_timeout(FIRST_REQUEST_TIMEOUT)
                .http1_only()
                .serve(app),
        ),
    };
    let task = tokio::spawn(async move {
        let mut server = server;
        let result = tokio::select! {
            r = &mut server => r,
            () = shutdown_requested(&mut shutdown) => {
                handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                server.await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "web server stopped");
        }
    });
    tracing::info!(%addr, https, "web admin listening");
    Ok(WebHandle { addr, https, task })
}

async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    // A dropped sender means the server is going away too.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Binds the web listener; port 0 picks a free port.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, WebError> {
    bind_reusable(addr).map_err(|source| WebError::Bind { addr, source })
}

/// SO_REUSEADDR, so a restart does not fail on connections in TIME_WAIT.
fn bind_reusable(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// The certificate pair as a reloadable configuration (HTTP/1.1 by ALPN).
fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ReloadableTls>, WebError> {
    use crate::tls::TlsSetupError;
    let files = crate::config::TlsConfig {
        certificate: cert.to_owned(),
        key: key.to_owned(),
        client_ca: None,
        client_names: Vec::new(),
    };
    ReloadableTls::load(&files, &[b"http/1.1"]).map_err(|e| match e {
        TlsSetupError::Pem { what, path, source } => WebError::TlsFile {
            what,
            path,
            reason: source.to_string(),
        },
        TlsSetupError::NoCertificate(path) => WebError::TlsFile {
            what: "certificate",
            path,
            reason: "no PEM certificate in it".into(),
        },
        other => WebError::Tls(other.to_string()),
    })
}

/// axum-server's holder of the configuration, kept in step with every reload.
fn rustls_config(tls: &Arc<ReloadableTls>) -> RustlsConfig {
    let holder = RustlsConfig::from_config(tls.current());
    let follows = holder.clone();
    tls.on_reload(move |config| follows.reload_from_config(config));
    holder
}
