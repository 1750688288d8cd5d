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

use std::path::{Path, PathBuf};
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
    /// Any other refusal.
    #[error("controller answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
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

/// A connection to the controller.
pub struct Controller {
    base: String,
    token: String,
    trust: Trust,
    rt: tokio::runtime::Runtime,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("base", &self.base).field("trust", &self.trust).finish()
    }
}

impl Controller {
    /// A client for the controller at `base` (http, or https with a
    /// certificate of the web PKI).
    pub fn new(base: &str, token: &str) -> Result<Controller, ClientError> {
        Controller::with_trust(base, token, Trust::WebPki)
    }

    /// A client for the controller at `base` (http, or https with a
    /// certificate that `trust` accepts).
    pub fn with_trust(base: &str, token: &str, trust: Trust) -> Result<Controller, ClientError> {
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
        Ok(Controller { base: base.trim_end_matches('/').to_owned(), token: token.to_owned(), trust, rt, client })
    }

    /// The private CA file the controller is trusted through, if any;
    /// image downloads trust it too, besides the web PKI.
    pub fn ca_file(&self) -> Option<&Path> {
        match &self.trust {
            Trust::WebPki => None,
            Trust::CaFile(path) => Some(path),
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let url = format!("{}/agent/v1/{path}", self.base);
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("byoi-agent/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
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
