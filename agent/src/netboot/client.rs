//! The agent's side of `/agent/v1`: blocking JSON calls to the controller,
//! over hyper on a private runtime (the pipeline's own threads stay
//! blocking and simple).
//!
//! Which certificates an HTTPS controller may present is [`Trust`]: the
//! operator's private CA when the initramfs carries one (`cargo xtask
//! initramfs --ca-file`, at [`byoi_initramfs::CA_FILE`]), and then only
//! that CA, else the web PKI. A plain `http://` controller is allowed (a
//! lab), but then the agent token, the job and its secrets cross the
//! network in clear.
//!
//! The agent may know several controllers (`byoi.controller=URL1,URL2`,
//! replicas sharing one database): a call goes to the one that answered
//! last, and on to the next when that one is unreachable, busy or
//! untrusted. A name with several addresses fails over too: the connector
//! tries each address in turn.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use byoi_wire::agent::{
    Action, ActionResponse, Heartbeat, Hello, JobResponse, ProgressReport, RescueResponse, ResultReport,
};
use byoi_wire::tls::unknown_issuer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `Retry-After` the agent reads; longer is read as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: network down, controller down, timeout.
    #[error("controller unreachable: {0}")]
    Unreachable(String),
    /// The token or the call was refused (401: stale boot, server removed;
    /// 403: another agent claimed the boot).
    #[error("the controller refused this agent ({status}): {message}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The controller's message.
        message: String,
    },
    /// The controller's certificate is not signed by a CA we trust: the
    /// wrong CA baked in, or someone else answering.
    #[error("{url}: the controller's certificate is not signed by a trusted CA (trusting {trust})")]
    Untrusted {
        /// What was called.
        url: String,
        /// What we trust.
        trust: Trust,
    },
    /// The CA file cannot be used.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The controller is overloaded or not ready (429, 503): try again
    /// later, no sooner than it asked.
    #[error("controller busy ({status}){}", busy_detail(message, retry_after))]
    Busy {
        /// 429 or 503.
        status: u16,
        /// The controller's message, if any.
        message: String,
        /// Its `Retry-After`, in seconds.
        retry_after: Option<Duration>,
    },
    /// Any other refusal.
    #[error("controller answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
}

impl ClientError {
    /// Worth calling again after a wait (or another controller now): the
    /// controller was not reached, was busy, or was not the one we trust.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unreachable(_) | ClientError::Busy { .. } | ClientError::Untrusted { .. })
    }

    /// How long a busy controller asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Busy { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn busy_detail(message: &str, retry_after: &Option<Duration>) -> String {
    let mut s = String::new();
    if !message.is_empty() {
        s.push_str(": ");
        s.push_str(message);
    }
    if let Some(r) = retry_after {
        s.push_str(&format!("; asks to retry in {}s", r.as_secs()));
    }
    s
}

/// `Retry-After` in delta-seconds (the form a controller sends; an HTTP
/// date is ignored), capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Which certificates an HTTPS controller may present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Those the web PKI's roots vouch for.
    WebPki,
    /// Only those the CAs of this PEM file vouch for (a private CA).
    CaFile(PathBuf),
}

impl Trust {
    /// The private CA of the initramfs mounted at `root` if it has one,
    /// else the web PKI.
    pub fn of_initramfs(root: &Path) -> Trust {
        let baked = root.join(byoi_initramfs::CA_FILE);
        if baked.is_file() {
            Trust::CaFile(baked)
        } else {
            Trust::WebPki
        }
    }

    /// The trust roots.
    fn roots(&self) -> Result<rustls::RootCertStore, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        let path = match self {
            Trust::WebPki => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                return Ok(roots);
            }
            Trust::CaFile(path) => path,
        };
        use byoi_wire::tls::CaFileError;
        let bad = |reason: String| ClientError::CaFile { path: path.clone(), reason };
        let certs = byoi_wire::tls::ca_certificates(path).map_err(|e| {
            bad(match e {
                CaFileError::Unreadable(e) => e.to_string(),
                CaFileError::NotPem(e) => format!("not valid PEM: {e}"),
                CaFileError::Empty => "no PEM `BEGIN CERTIFICATE` section".to_owned(),
            })
        })?;
        for cert in certs {
            roots.add(cert).map_err(|e| bad(format!("a certificate cannot be a trust root: {e}")))?;
        }
        Ok(roots)
    }
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::WebPki => f.write_str("the web PKI"),
            Trust::CaFile(path) => write!(f, "the CAs of {}", path.display()),
        }
    }
}

/// A connection to the controller (or its replicas).
pub struct Controller {
    /// The controllers' base URLs, in the order the command line gave.
    bases: Vec<String>,
    /// The one that answered last: the next call goes there first.
    current: AtomicUsize,
    token: String,
    trust: Trust,
    rt: tokio::runtime::Runtime,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("bases", &self.bases).field("trust", &self.trust).finish()
    }
}

impl Controller {
    /// A client for the controller at `base` (http, or https with a
    /// certificate of the web PKI).
    pub fn new(base: &str, token: &str) -> Result<Controller, ClientError> {
        Controller::with_trust(&[base.to_owned()], token, Trust::WebPki)
    }

    /// A client for the controllers at `bases`, tried in turn (http, or
    /// https with a certificate that `trust` accepts).
    pub fn with_trust(bases: &[String], token: &str, trust: Trust) -> Result<Controller, ClientError> {
        if bases.is_empty() {
            return Err(ClientError::Unreachable("no controller URL".into()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Unreachable(format!("runtime: {e}")))?;
        let roots = trust.roots()?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Unreachable(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = rt.block_on(async { Client::builder(TokioExecutor::new()).build(https) });
        let bases = bases.iter().map(|b| b.trim_end_matches('/').to_owned()).collect();
        Ok(Controller { bases, current: AtomicUsize::new(0), token: token.to_owned(), trust, rt, client })
    }

    /// The private CA file the controller is trusted through, if any;
    /// image downloads trust it too, besides the web PKI.
    pub fn ca_file(&self) -> Option<&Path> {
        match &self.trust {
            Trust::WebPki => None,
            Trust::CaFile(path) => Some(path),
        }
    }

    /// The controller the next call goes to first.
    pub fn current(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// One call, to the controller that answered last and then to each
    /// other in turn while they fail transiently; the last failure if all
    /// do (the next call then starts with the next controller).
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = Bytes::from(body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default());
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut failed = None;
        for i in 0..n {
            let at = (first + i) % n;
            match self.call_one(&self.bases[at], method, path, body.clone()) {
                Err(e) if e.is_transient() => {
                    if n > 1 {
                        tracing::warn!(controller = %self.bases[at], "{path}: {e}");
                    }
                    failed = Some(e);
                }
                answered => {
                    if at != first {
                        tracing::warn!(from = %self.bases[first], to = %self.bases[at], "failed over to another controller");
                    }
                    self.current.store(at, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        self.current.store((first + 1) % n, Ordering::Relaxed);
        Err(failed.expect("at least one controller"))
    }

    fn call_one<T: DeserializeOwned>(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let url = format!("{base}/agent/v1/{path}");
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("byoi-agent/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        self.rt.block_on(async {
            let resp = tokio::time::timeout(CALL_TIMEOUT, self.client.request(req))
                .await
                .map_err(|_| ClientError::Unreachable(format!("{url}: no answer within {CALL_TIMEOUT:?}")))?
                .map_err(|e| {
                    if unknown_issuer(&e) {
                        ClientError::Untrusted { url: url.clone(), trust: self.trust.clone() }
                    } else {
                        ClientError::Unreachable(format!("{url}: {e}"))
                    }
                })?;
            let status = resp.status();
            let retry_after = retry_after(resp.headers());
            let bytes = tokio::time::timeout(CALL_TIMEOUT, resp.into_body().collect())
                .await
                .map_err(|_| ClientError::Unreachable(format!("{url}: body timed out")))?
                .map_err(|e| ClientError::Unreachable(format!("{url}: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let message = v["message"].as_str().unwrap_or("").to_owned();
                if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
                    return Err(ClientError::Unauthorized { status: status.as_u16(), message });
                }
                if status == http::StatusCode::SERVICE_UNAVAILABLE || status == http::StatusCode::TOO_MANY_REQUESTS {
                    return Err(ClientError::Busy { status: status.as_u16(), message, retry_after });
                }
                return Err(ClientError::Refused { status: status.as_u16(), message });
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Refused { status: status.as_u16(), message: format!("bad answer: {e}") })
        })
    }

    /// Says hello with the inventory.
    pub fn hello(&self, hello: &Hello) -> Result<Action, ClientError> {
        self.call::<ActionResponse>("POST", "hello", Some(hello)).map(|r| r.action)
    }

    /// Heartbeat, naming the deployment being worked on, if any.
    pub fn heartbeat(&self, beat: &Heartbeat) -> Result<Action, ClientError> {
        self.call::<ActionResponse>("POST", "heartbeat", Some(beat)).map(|r| r.action)
    }

    /// Asks for a job.
    pub fn job(&self) -> Result<JobResponse, ClientError> {
        self.call::<JobResponse>("GET", "job", None::<&()>)
    }

    /// Reports progress.
    pub fn progress(&self, p: &ProgressReport) -> Result<Action, ClientError> {
        self.call::<ActionResponse>("POST", "progress", Some(p)).map(|r| r.action)
    }

    /// Rescue mode: the SSH keys to accept.
    pub fn rescue(&self) -> Result<RescueResponse, ClientError> {
        self.call::<RescueResponse>("GET", "rescue", None::<&()>)
    }

    /// Reports the result.
    pub fn result(&self, r: &ResultReport) -> Result<Action, ClientError> {
        self.call::<ActionResponse>("POST", "result", Some(r)).map(|r| r.action)
    }
}
