//! `byoi serve`: the data directory, the API token, and the HTTP(S)
//! listener around [`App`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::api::{self, App, Config};
use crate::db::Db;

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

/// Largest body of any request but a BYOI POST.
const SMALL_BODY: usize = 1 << 20;

/// Turns a hyper request into an [`api::Request`], bounding the body: only
/// an operator's BYOI POST may be large (user data), and requests without
/// any credentials are answered before their body is read.
async fn to_request(req: hyper::Request<Incoming>) -> Result<api::Request, api::Response> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let needs_token = path.starts_with("/dedicated/") || path.starts_with("/agent/");
    if needs_token && !parts.headers.contains_key(http::header::AUTHORIZATION) {
        return Ok(api::Request {
            method: parts.method,
            path: path.to_owned(),
            headers: parts.headers,
            body: Bytes::new(),
        });
    }
    let limit = if parts.method == http::Method::POST && path.ends_with("/bringYourOwnImage") {
        api::MAX_BODY
    } else {
        SMALL_BODY
    };
    let body = Limited::new(body, limit).collect().await.map_err(|e| {
        let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
        let (status, msg) = if too_big {
            (http::StatusCode::PAYLOAD_TOO_LARGE, format!("Request body larger than {} MiB", limit >> 20))
        } else {
            (http::StatusCode::BAD_REQUEST, format!("Could not read the request body: {e}"))
        };
        api::Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::to_vec(&serde_json::json!({ "message": msg })).unwrap_or_default().into(),
        }
    })?;
    Ok(api::Request {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: body.to_bytes(),
    })
}

fn to_hyper(r: api::Response) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder().status(r.status).header(http::header::CONTENT_TYPE, r.content_type);
    for (k, v) in r.headers {
        b = b.header(k, v);
    }
    b.body(Full::new(r.body)).unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// Starts the controller; returns the bound address and a future that
/// serves until the process ends.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    std::fs::create_dir_all(&opts.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", opts.data_dir.display()))?;
    let token = api_token(&opts.data_dir, opts.api_token.clone())?;
    let db = Db::open(&opts.data_dir.join("byoi.sqlite"))?;
    // Agents could not report while we were down: give them a full timeout.
    db.refresh_running()?;
    let artifacts = opts.artifacts.clone().unwrap_or_else(|| opts.data_dir.join("artifacts"));
    let cfg = Config {
        api_token: token,
        artifacts,
        public_url: opts.public_url.clone(),
        scheme: if opts.tls.is_some() { "https" } else { "http" },
        agent_timeout: opts.agent_timeout,
        boot_timeout: opts.boot_timeout,
    };
    let app = Arc::new(App::new(db, cfg));
    let tls = opts.tls.as_ref().map(|(c, k)| tls_acceptor(c, k)).transpose()?;
    let listener = TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;

    let watchdog = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            watchdog.expire_silent_agents();
        }
    });

    let fut = async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let app = app.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let app = app.clone();
                    async move {
                        let resp = match to_request(req).await {
                            Ok(r) => app.handle(r).await,
                            Err(e) => e,
                        };
                        Ok::<_, std::convert::Infallible>(to_hyper(resp))
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let result = match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => builder.serve_connection(TokioIo::new(s), service).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                    None => builder.serve_connection(TokioIo::new(stream), service).await,
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    };
    Ok((addr, fut))
}
