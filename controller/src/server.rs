//! `byoi serve`: the data directory, the API token, and the HTTP(S)
//! listeners around the routers of [`routes`]: connection caps and timeouts
//! ([`edge`], shared by the listeners), TLS, graceful shutdown on
//! SIGTERM/SIGINT. One listener serves every route; with `--netboot-listen`,
//! a second, plain-HTTP listener serves the netboot routes and the main one
//! the API and agent protocol.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::Extension;
use axum::Router;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Layer;

use crate::datadir;
use crate::db::{Database, Db};
use crate::edge::{self, Admission, Limits, RefusalLog};
use crate::power::PowerConfig;
use crate::routes::discovered::Enlistment;
use crate::routes::netboot::{BootLimiter, BootRate};
use crate::routes::{self, App, Config, Listeners, Surface};

/// How `byoi serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on: every route, or with `netboot_listen` the API
    /// and the agent protocol.
    pub listen: SocketAddr,
    /// Address of a plain-HTTP listener of its own for the netboot routes.
    pub netboot_listen: Option<SocketAddr>,
    /// Data directory (SQLite, api-token).
    pub data_dir: PathBuf,
    /// Where the state is: `None`, the SQLite file in the data directory.
    pub database: Option<Database>,
    /// Explicit API token.
    pub api_token: Option<String>,
    /// Artifacts directory.
    pub artifacts: Option<PathBuf>,
    /// Public URL of the API and agent protocol, named in iPXE scripts.
    pub public_url: Option<String>,
    /// Public URL of the netboot listener, named in iPXE scripts.
    pub netboot_public_url: Option<String>,
    /// Every URL the agent may reach a controller at (the replicas), in
    /// the order it tries them; empty: the public URL.
    pub agent_urls: Vec<String>,
    /// TLS certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Agent silence before a deployment fails.
    pub agent_timeout: Duration,
    /// Time for a server to netboot into the agent after a POST.
    pub boot_timeout: Duration,
    /// Time a running deployment may go without moving.
    pub stall_timeout: Duration,
    /// How long a controller holds a power job before another may take it
    /// over ([`crate::db::POWER_LEASE`]).
    pub power_lease: Duration,
    /// How often `/boot/{mac}` may be fetched.
    pub boot_rate: BootRate,
    /// Connection timeouts and caps.
    pub limits: Limits,
    /// The power commands and the ipmitool the API may refer to.
    pub power: PowerConfig,
    /// `--metrics-token`: reads `/metrics` and nothing else.
    pub metrics_token: Option<String>,
    /// `--enlist`: how machines no server has may enlist, if they may.
    pub enlist: Option<Enlistment>,
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
            let t = crate::db::new_secret();
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

/// The TLS acceptor of `--tls-cert` and `--tls-key` (also what
/// `byoi serve --check-config` checks them with).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
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

/// Where the controller listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The main listener: every route, or the API and agent protocol.
    pub addr: SocketAddr,
    /// The netboot listener, if netboot has its own.
    pub netboot: Option<SocketAddr>,
}

/// Starts the controller; returns where it listens and a future that
/// serves until SIGTERM or SIGINT, then finishes in-flight requests,
/// checkpoints the database and resolves.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<(Bound, impl std::future::Future<Output = ()>)> {
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

/// Binds `addr`, naming the listener in the error.
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))
}

/// [`serve`], stopping when `shutdown` resolves.
pub async fn serve_until(
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Bound, impl std::future::Future<Output = ()>)> {
    // Before anything is written: the database and the token are private
    // from their creation, and older ones are made so.
    datadir::private_umask();
    datadir::prepare(&opts.data_dir)?;
    let token = api_token(&opts.data_dir, opts.api_token.clone())?;
    let database =
        opts.database.clone().unwrap_or_else(|| Database::Sqlite(opts.data_dir.join(crate::db::backup::FILE_NAME)));
    let db = Db::open_database(&database, opts.boot_timeout)
        .await
        .with_context(|| format!("opening the database {database}"))?
        .with_power_lease(opts.power_lease);
    let artifacts = opts.artifacts.clone().unwrap_or_else(|| opts.data_dir.join("artifacts"));
    let tls = opts.tls.as_ref().map(|(c, k)| tls_acceptor(c, k)).transpose()?;
    let listener = bind(opts.listen, "--listen").await?;
    let addr = listener.local_addr()?;
    let netboot_listener = match opts.netboot_listen {
        Some(a) => Some(bind(a, "--netboot-listen").await?),
        None => None,
    };
    let netboot_addr = netboot_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let listeners = match netboot_addr {
        None => Listeners::One,
        Some(_) => Listeners::Split { api_port: addr.port(), netboot_public_url: opts.netboot_public_url.clone() },
    };
    let cfg = Config {
        api_token: token,
        artifacts,
        public_url: opts.public_url.clone(),
        agent_urls: opts.agent_urls.clone(),
        scheme: if opts.tls.is_some() { "https" } else { "http" },
        listeners,
        agent_timeout: opts.agent_timeout,
        boot_timeout: opts.boot_timeout,
        stall_timeout: opts.stall_timeout,
        boot_limiter: Arc::new(BootLimiter::new(opts.boot_rate)),
        power: opts.power.clone(),
        metrics_token: opts.metrics_token.clone(),
        enlist: opts.enlist.clone(),
    };
    let app = Arc::new(App::new(db.clone(), cfg));
    let (main_surface, netboot) = match netboot_listener {
        None => (Surface::All, None),
        Some(l) => (Surface::Api, Some((l, routes::router_for(app.clone(), Surface::Netboot)))),
    };
    let router = routes::router_for(app.clone(), main_surface);
    // One budget for both listeners: the caps count every connection.
    let limits = Arc::new(opts.limits.clone());
    edge::check_open_files(limits.max_connections);
    let admission = Admission::new(&limits);

    let power_jobs = tokio::spawn({
        let app = app.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                app.take_over_power_jobs().await;
            }
        }
    });
    let watchdog = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            app.watch(WATCHDOG_LEASE).await;
            app.cfg.boot_limiter.forget_idle();
        }
    });

    let fut = async move {
        let graceful = GracefulShutdown::new();
        let (stop_tx, stop) = watch::channel(());
        let stopper = async move {
            shutdown.await;
            drop(stop_tx);
        };
        let edge = Edge { limits, admission, graceful: &graceful };
        let main = accept_loop(listener, router, tls, &edge, stop.clone());
        let netboot = async {
            if let Some((l, r)) = netboot {
                accept_loop(l, r, None, &edge, stop).await;
            }
        };
        tokio::join!(stopper, main, netboot);
        watchdog.abort();
        power_jobs.abort();
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            tracing::warn!("requests still running after {}s; stopping anyway", DRAIN_TIMEOUT.as_secs());
        }
        match db.checkpoint().await {
            Ok(()) => tracing::info!("database checkpointed; stopped"),
            Err(e) => tracing::error!(error = %e, "checkpointing the database"),
        }
    };
    Ok((Bound { addr, netboot: netboot_addr }, fut))
}

/// Seconds the watchdog's lease lasts: three of its 5-second ticks.
const WATCHDOG_LEASE: i64 = 15;

/// What the listeners share: the caps and timeouts, the connections
/// admitted so far, and the graceful shutdown.
struct Edge<'a> {
    limits: Arc<Limits>,
    admission: Arc<Admission>,
    graceful: &'a GracefulShutdown,
}

/// Accepts connections on `listener`, admits each through the shared caps
/// (a refused one is closed at once: no handshake, no bytes read or
/// written) and serves `router` on it, over TLS when `tls` is given, until
/// `stop`'s sender is dropped; then closes the listener. In-flight
/// connections are left to the graceful shutdown.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    edge: &Edge<'_>,
    mut stop: watch::Receiver<()>,
) {
    let mut refusals = RefusalLog::default();
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
            _ = stop.changed() => break,
        };
        let admitted = match edge.admission.admit(peer.ip()) {
            Ok(a) => a,
            Err(refused) => {
                refusals.refused(peer, &refused);
                drop(stream);
                continue;
            }
        };
        // Handlers that bind an agent to its address read it as
        // `ConnectInfo<SocketAddr>`.
        let service = Extension(ConnectInfo(peer)).layer(router.clone());
        let watcher = edge.graceful.watcher();
        let tls = tls.clone();
        let limits = edge.limits.clone();
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
}
