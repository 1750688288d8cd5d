//! `byoi serve`: the data directory, the API token, and the HTTP(S)
//! listener around the [`routes::router`]: connection caps and timeouts
//! ([`edge`]), TLS, graceful shutdown on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Extension;
use tokio::net::TcpListener;
use tower::Layer;

use crate::datadir;
use crate::db::Db;
use crate::edge::{self, Admission, Limits, RefusalLog};
use crate::power::PowerConfig;
use crate::routes::netboot::{BootLimiter, BootRate};
use crate::routes::{self, App, Config};

/// How `byoi serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (SQLite, api-token).
    pub data_dir: PathBuf,
    /// Explicit API token.
    pub api_token: Option<String>,
    /// Artifacts directory.
    pub artifacts: Option<PathBuf>,
    /// Public URL for iPXE scripts.
    pub public_url: Option<String>,
    /// TLS certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Agent silence before a deployment fails.
    pub agent_timeout: Duration,
    /// Time for a server to netboot into the agent after a POST.
    pub boot_timeout: Duration,
    /// Time a running deployment may go without moving.
    pub stall_timeout: Duration,
    /// How often `/boot/{mac}` may be fetched.
    pub boot_rate: BootRate,
    /// Connection timeouts and caps.
    pub limits: Limits,
    /// The power commands and the ipmitool the API may refer to.
    pub power: PowerConfig,
}

/// The API token: given, or read from (or generated into) `DIR/api-token`.
pub fn api_token(data_dir: &Path, given: Option<String>) -> anyhow::Result<String> {
    if let Some(t) = given.filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    let path = data_dir.join("api-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => {
            let t = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
            write_private(&path, &t)?;
            tracing::info!(path = %path.display(), "generated a new API token");
            Ok(t)
        }
    }
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// How long in-flight requests may take to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the controller; returns the bound address and a future that
/// serves until SIGTERM or SIGINT, then finishes in-flight requests,
/// checkpoints the database and resolves.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    serve_until(opts, shutdown_signal()).await
}

/// Resolves at the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT: stop the controller with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
}

/// [`serve`], stopping when `shutdown` resolves.
pub async fn serve_until(
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    // Before anything is written: the database and the token are private
    // from their creation, and older ones are made so.
    datadir::private_umask();
    datadir::prepare(&opts.data_dir)?;
    let token = api_token(&opts.data_dir, opts.api_token.clone())?;
    let db = Db::open(&opts.data_dir.join("byoi.sqlite"), opts.boot_timeout).await?;
    // Agents could not report while we were down: give them a full timeout.
    db.refresh_running().await?;
    let artifacts = opts.artifacts.clone().unwrap_or_else(|| opts.data_dir.join("artifacts"));
    let cfg = Config {
        api_token: token,
        artifacts,
        public_url: opts.public_url.clone(),
        scheme: if opts.tls.is_some() { "https" } else { "http" },
        agent_timeout: opts.agent_timeout,
        boot_timeout: opts.boot_timeout,
        stall_timeout: opts.stall_timeout,
        boot_limiter: Arc::new(BootLimiter::new(opts.boot_rate)),
        power: opts.power.clone(),
    };
    let app = Arc::new(App { db: db.clone(), cfg });
    let router = routes::router(app.clone());
    let tls = opts.tls.as_ref().map(|(c, k)| tls_acceptor(c, k)).transpose()?;
    let listener = TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    let limits = Arc::new(opts.limits.clone());
    edge::check_open_files(limits.max_connections);
    let admission = Admission::new(&limits);
    let mut refusals = RefusalLog::default();

    let watchdog = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            app.expire_silent_agents().await;
            app.cfg.boot_limiter.forget_idle();
        }
    });

    let fut = async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let admitted = match admission.admit(peer.ip()) {
                Ok(a) => a,
                Err(refused) => {
                    // Closed at once: no handshake, no bytes read or written.
                    refusals.refused(peer, &refused);
                    drop(stream);
                    continue;
                }
            };
            // Handlers that bind an agent to its address read it as
            // `ConnectInfo<SocketAddr>`.
            let service = Extension(ConnectInfo(peer)).layer(router.clone());
            let watcher = graceful.watcher();
            let tls = tls.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let _admitted = admitted;
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => edge::serve_connection(s, peer, service, &limits, watcher).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(
                                %peer,
                                "closed a connection: no TLS handshake within {:?} (--tls-handshake-timeout)",
                                limits.tls_handshake_timeout
                            ),
                        }
                    }
                    None => edge::serve_connection(stream, peer, service, &limits, watcher).await,
                }
            });
        }
        drop(listener);
        watchdog.abort();
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            tracing::warn!("requests still running after {}s; stopping anyway", DRAIN_TIMEOUT.as_secs());
        }
        match db.checkpoint().await {
            Ok(()) => tracing::info!("database checkpointed; stopped"),
            Err(e) => tracing::error!(error = %e, "checkpointing the database"),
        }
    };
    Ok((addr, fut))
}
