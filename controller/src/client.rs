//! The operator's client of the BYOI API, behind `byoi server add`, `servers`,
//! `deploy`, `status` and `cancel`.
//!
//! The token is sent as `Authorization: Bearer …` and appears in no error
//! and no `Debug` output.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A controller and the API token to call it with.
pub struct Client {
    base: String,
    auth: HeaderValue,
    http: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish_non_exhaustive()
    }
}

/// What can go wrong talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS configuration could not be built.
    #[error("setting up TLS")]
    Tls(#[source] rustls::Error),
    /// The token cannot go into an HTTP header (a control character).
    #[error("the API token is not a valid HTTP header value")]
    BadToken,
    /// The controller URL plus the path is no URL.
    #[error("bad controller URL {url}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// No connection, or a failed TLS handshake, or a broken request.
    #[error("cannot reach the controller at {url}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body broke off.
    #[error("reading the controller's answer from {url}")]
    Body {
        /// The URL called.
        url: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// A success that is not JSON: not a byoi controller.
    #[error("the answer from {url} is not JSON; is this a byoi controller?")]
    NotJson {
        /// The URL called.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The controller refused the request; `message` is the `message` of
    /// its JSON body.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// What the controller said.
        message: String,
        /// The whole body (`Null` if it was not JSON).
        body: Value,
    },
}

impl Client {
    /// A client of the controller at `controller` (`https://byoi.example:8080`),
    /// trusting the web PKI roots.
    pub fn new(controller: &str, token: &str) -> Result<Client, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::BadToken)?;
        auth.set_sensitive(true);
        Ok(Client {
            base: controller.trim_end_matches('/').to_owned(),
            auth,
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https),
        })
    }

    /// `method path` with an optional JSON body; the JSON answer of a 2xx.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url.parse().map_err(|source| Error::BadUrl { url: url.clone(), source })?;
        let mut req = http::Request::new(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        req.headers_mut().insert(http::header::AUTHORIZATION, self.auth.clone());
        req.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let resp = self.http.request(req).await.map_err(|source| Error::Unreachable { url: url.clone(), source })?;
        let status = resp.status();
        let bytes =
            resp.into_body().collect().await.map_err(|source| Error::Body { url: url.clone(), source })?.to_bytes();
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|source| Error::NotJson { url, source });
        }
        // An error page of a proxy in front of the controller is not JSON.
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = body["message"].as_str().map_or_else(|| format!("{method} {url} failed"), str::to_owned);
        Err(Error::Api { status, message, body })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let c = Client::new("http://127.0.0.1:1/", "s3cret-token").unwrap();
        assert_eq!(format!("{c:?}"), r#"Client { base: "http://127.0.0.1:1", .. }"#);
        assert!(matches!(Client::new("http://x", "a\nb"), Err(Error::BadToken)));
    }
}
