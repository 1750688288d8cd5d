//! The operator's client of the BYOI API, behind `byoi server add`, `servers`,
//! `deploy`, `status` and `cancel`: an HTTP(S) client that trusts the web PKI
//! plus an optional private CA, the power settings `server add` sends, and how
//! the answers to `POST`/`DELETE …/bringYourOwnImage` say what happened to
//! the server's power.
//!
//! The token is sent as `Authorization: Bearer …` and appears in no error
//! and no `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byoi_wire::tls::unknown_issuer;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::CertificateDer;
use serde_json::{json, Map, Value};

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
    /// The `--ca-file` cannot be read.
    #[error("reading the CA file {path}")]
    CaFileUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `--ca-file` has a PEM section that does not decode.
    #[error("the CA file {path} is not valid PEM")]
    CaFileNotPem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The `--ca-file` has no `BEGIN CERTIFICATE` section.
    #[error("the CA file {path} holds no certificate (no PEM `BEGIN CERTIFICATE` section)")]
    CaFileEmpty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the `--ca-file` is not one rustls can trust.
    #[error("the CA file {path} holds a certificate that cannot be a trust root")]
    CaFileBadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
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
    /// The controller's certificate is signed by no trusted root.
    #[error(
        "the controller at {url} presented a certificate signed by no trusted root; \
         pass --ca-file with the CA that signed it"
    )]
    UntrustedCertificate {
        /// The URL called.
        url: String,
        /// The connection error.
        #[source]
        source: hyper_util::client::legacy::Error,
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
    /// An event line of the controller's stream longer than the client
    /// reads.
    #[error("an event from {url} is longer than 1 MiB")]
    EventTooLong {
        /// The URL called.
        url: String,
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
    /// trusting the web PKI roots and, if given, the certificates of the PEM
    /// file `ca_file`.
    pub fn new(controller: &str, token: &str, ca_file: Option<&Path>) -> Result<Client, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            for cert in ca_certificates(path)? {
                roots.add(cert).map_err(|source| Error::CaFileBadCertificate { path: path.to_owned(), source })?;
            }
        }
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

    /// Sends `method path` with an optional JSON body; the answer's head
    /// and body, unread.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        accept: &'static str,
    ) -> Result<(String, http::Response<hyper::body::Incoming>), Error> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url.parse().map_err(|source| Error::BadUrl { url: url.clone(), source })?;
        let mut req = http::Request::new(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        req.headers_mut().insert(http::header::AUTHORIZATION, self.auth.clone());
        req.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req.headers_mut().insert(http::header::ACCEPT, HeaderValue::from_static(accept));
        let resp = self.http.request(req).await.map_err(|source| {
            if unknown_issuer(&source) {
                Error::UntrustedCertificate { url: url.clone(), source }
            } else {
                Error::Unreachable { url: url.clone(), source }
            }
        })?;
        Ok((url, resp))
    }

    /// The error of a refused request: the controller's `message`, or the
    /// method and URL when the body is not its JSON (a proxy's page).
    fn refused(method: &Method, url: &str, status: StatusCode, bytes: &[u8]) -> Error {
        let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let message = body["message"].as_str().map_or_else(|| format!("{method} {url} failed"), str::to_owned);
        Error::Api { status, message, body }
    }

    /// Reads the server-sent events of `GET path` until the stream ends or
    /// `on_event(event, data)` returns false.
    pub async fn events(&self, path: &str, mut on_event: impl FnMut(&str, &str) -> bool) -> Result<(), Error> {
        let (url, resp) = self.send(&Method::GET, path, None, "text/event-stream").await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|source| Error::Body { url: url.clone(), source })?.to_bytes();
            return Err(Client::refused(&Method::GET, &url, status, &bytes));
        }
        let mut parser = Sse::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| Error::Body { url: url.clone(), source })?;
            let Ok(data) = frame.into_data() else { continue };
            for (event, data) in parser.push(&data).map_err(|()| Error::EventTooLong { url: url.clone() })? {
                if !on_event(&event, &data) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// `method path` with an optional JSON body; the JSON answer of a 2xx.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let (url, resp) = self.send(&method, path, body, "application/json").await?;
        let status = resp.status();
        let bytes =
            resp.into_body().collect().await.map_err(|source| Error::Body { url: url.clone(), source })?.to_bytes();
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|source| Error::NotJson { url, source });
        }
        Err(Client::refused(&method, &url, status, &bytes))
    }
}

/// Longest server-sent event line the client reads.
const MAX_EVENT_LINE: usize = 1 << 20;

/// A server-sent event stream's parser: bytes in, `(event, data)` out.
/// Hand-written: twenty lines, and bounded (a line over
/// [`MAX_EVENT_LINE`] is an error, not a growing buffer).
#[derive(Debug, Default)]
pub struct Sse {
    line: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl Sse {
    /// Feeds `bytes`; returns the events they complete.
    #[allow(clippy::result_unit_err)]
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<(String, String)>, ()> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() >= MAX_EVENT_LINE {
                    return Err(());
                }
                self.line.push(b);
                continue;
            }
            let line = String::from_utf8_lossy(&self.line).trim_end_matches('\r').to_owned();
            self.line.clear();
            if line.is_empty() {
                if !self.data.is_empty() {
                    let event =
                        if self.event.is_empty() { "message".to_owned() } else { std::mem::take(&mut self.event) };
                    out.push((event, self.data.join("\n")));
                }
                self.event.clear();
                self.data.clear();
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                _ => {} // id, retry, comments (keep-alives)
            }
        }
        Ok(out)
    }
}

impl Error {
    /// For a refused request that runs `server`'s power driver (a deploy,
    /// `…/power`, `…/inspect`): the message to show if the driver failed.
    /// Such an answer is 502 Bad Gateway with the controller's `message`;
    /// a deploy's may carry `powerError` or `"powerCycle": "failed"` too.
    pub fn power_failure(&self, server: &str) -> Option<String> {
        let Error::Api { status, message, body } = self else { return None };
        let reason = body["powerError"].as_str();
        let says_so = reason.is_some() || body["powerCycle"] == "failed";
        let older = *status == StatusCode::BAD_GATEWAY && body["message"].is_string();
        if !(says_so || older) {
            return None;
        }
        let message =
            if body["message"].is_string() { message.clone() } else { format!("could not power-cycle {server}") };
        Some(match reason {
            Some(r) if !message.contains(r) => format!("{message}: {r}"),
            _ => message,
        })
    }
}

/// The certificates of a PEM file; other sections (keys) are skipped.
fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    use byoi_wire::tls::CaFileError;
    let path_buf = || path.to_owned();
    byoi_wire::tls::ca_certificates(path).map_err(|e| match e {
        CaFileError::Unreadable(source) => Error::CaFileUnreadable { path: path_buf(), source },
        CaFileError::NotPem(source) => Error::CaFileNotPem { path: path_buf(), source },
        CaFileError::Empty => Error::CaFileEmpty { path: path_buf() },
    })
}

/// What the controller did about a server's power after a `POST` or
/// `DELETE` of `…/bringYourOwnImage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerCycle {
    /// The power driver cycled it.
    Done,
    /// Manual power: the operator has to reboot it.
    Manual,
    /// The agent was up and waiting: no reboot needed (controllers before
    /// agent trust; every deployment now starts with a power cycle).
    Skipped,
    /// The driver failed, with its error.
    Failed(String),
}

impl PowerCycle {
    /// Reads `powerCycle` (`done`, `manual`, `skipped`, `failed`) and
    /// `powerError` of an answer. `None` when the answer says neither, as
    /// older controllers do unless the cycle failed.
    pub fn of_answer(body: &Value) -> Option<PowerCycle> {
        if let Some(e) = body["powerError"].as_str() {
            return Some(PowerCycle::Failed(e.to_owned()));
        }
        match body["powerCycle"].as_str()? {
            "done" => Some(PowerCycle::Done),
            "manual" => Some(PowerCycle::Manual),
            "skipped" => Some(PowerCycle::Skipped),
            "failed" => Some(PowerCycle::Failed("the controller gave no reason".to_owned())),
            _ => None,
        }
    }
}

/// A `--power`/`--power-arg` combination `server add` refuses. Messages name
/// keys, never values: a value may be a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowerArgError {
    /// Not one of the drivers.
    #[error("unknown power driver {0:?} (manual, command, ipmi, redfish)")]
    UnknownDriver(String),
    /// `manual` with arguments.
    #[error("--power manual takes no --power-arg")]
    ManualTakesNone,
    /// An argument without `=`; `index` counts from 1.
    #[error("--power-arg {index} is not KEY=VALUE (--power {driver} takes {keys})")]
    NotKeyValue {
        /// Which `--power-arg`.
        index: usize,
        /// The driver.
        driver: &'static str,
        /// What it takes.
        keys: String,
    },
    /// A key the driver does not know.
    #[error("--power {driver} takes no --power-arg {key} (it takes {keys})")]
    UnknownKey {
        /// The driver.
        driver: &'static str,
        /// The key given.
        key: String,
        /// What it takes.
        keys: String,
    },
    /// A key given twice.
    #[error("--power-arg {0} is given twice")]
    Duplicate(&'static str),
    /// A required key missing.
    #[error("--power {driver} needs --power-arg {key}=…")]
    Missing {
        /// The driver.
        driver: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A boolean key with another value.
    #[error("--power-arg {0} is true or false")]
    NotBool(&'static str),
    /// A numeric key with another value.
    #[error("--power-arg {key} is a number from {min} to {max}")]
    NotNumber {
        /// The key.
        key: &'static str,
        /// The least.
        min: u32,
        /// The most.
        max: u32,
    },
}

/// What a `--power-arg` value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgType {
    /// Text, as given.
    Text,
    /// `true` or `false`; `false` when not given.
    Bool,
    /// A whole number in `min..=max`.
    Number {
        /// The least.
        min: u32,
        /// The most.
        max: u32,
    },
}

/// A driver's `--power-arg KEY=VALUE` keys: (name, required, type).
type Keys = &'static [(&'static str, bool, ArgType)];

/// A command of the controller's `--power-commands` file, by name.
const COMMAND: Keys = &[("name", true, ArgType::Text)];
/// `ipmitool -I lanplus` (the controller's `--ipmitool`); `port` defaults
/// to 623, `cipher` (the RMCP+ cipher suite, `-C`) to the best the BMC
/// lists.
const IPMI: Keys = &[
    ("host", true, ArgType::Text),
    ("port", false, ArgType::Number { min: 1, max: 65535 }),
    ("cipher", false, ArgType::Number { min: 0, max: 255 }),
    ("user", true, ArgType::Text),
    ("password", true, ArgType::Text),
];
/// Redfish `ComputerSystem.Reset`; `system` defaults to the BMC's first,
/// `insecure` accepts a self-signed BMC certificate.
const REDFISH: Keys = &[
    ("url", true, ArgType::Text),
    ("user", true, ArgType::Text),
    ("password", true, ArgType::Text),
    ("system", false, ArgType::Text),
    ("insecure", false, ArgType::Bool),
];

/// The `power` object of `POST /dedicated/server` for `--power driver` with
/// `--power-arg args`: `{"kind": "manual"}`, `{"kind": "command", "name"}`,
/// `{"kind": "ipmi", "host", "user", "password"}`,
/// `{"kind": "redfish", "url", "user", "password", "system"?, "insecure"}`.
pub fn power_settings(driver: &str, args: &[String]) -> Result<Value, PowerArgError> {
    let (driver, keys): (&'static str, Keys) = match driver {
        "manual" if args.is_empty() => return Ok(json!({"kind": "manual"})),
        "manual" => return Err(PowerArgError::ManualTakesNone),
        "command" => ("command", COMMAND),
        "ipmi" => ("ipmi", IPMI),
        "redfish" => ("redfish", REDFISH),
        other => return Err(PowerArgError::UnknownDriver(other.to_owned())),
    };
    let list = || {
        keys.iter()
            .map(|&(k, required, _)| if required { k.to_owned() } else { format!("[{k}]") })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Map::new();
    out.insert("kind".into(), json!(driver));
    for (i, arg) in args.iter().enumerate() {
        let (key, value) =
            arg.split_once('=').ok_or_else(|| PowerArgError::NotKeyValue { index: i + 1, driver, keys: list() })?;
        let &(key, _, kind) = keys.iter().find(|(k, ..)| *k == key).ok_or_else(|| PowerArgError::UnknownKey {
            driver,
            key: key.to_owned(),
            keys: list(),
        })?;
        if out.contains_key(key) {
            return Err(PowerArgError::Duplicate(key));
        }
        let value = match kind {
            ArgType::Text => json!(value),
            ArgType::Bool => match value {
                "true" => json!(true),
                "false" => json!(false),
                _ => return Err(PowerArgError::NotBool(key)),
            },
            ArgType::Number { min, max } => match value.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => json!(n),
                _ => return Err(PowerArgError::NotNumber { key, min, max }),
            },
        };
        out.insert(key.into(), value);
    }
    if let Some(&(key, ..)) = keys.iter().find(|(k, required, _)| *required && !out.contains_key(*k)) {
        return Err(PowerArgError::Missing { driver, key });
    }
    for &(key, _, kind) in keys {
        if kind == ArgType::Bool && !out.contains_key(key) {
            out.insert(key.into(), json!(false));
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(driver: &str, args: &[&str]) -> Result<Value, PowerArgError> {
        power_settings(driver, &args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn server_sent_events_split_anywhere() {
        let stream = b": keep-alive\n\nevent: log\nid: 7\ndata: {\"message\": \"a\"}\n\nevent: deployment\r\ndata: one\r\ndata: two\r\n\r\ndata: plain\n\n";
        for cut in 0..stream.len() {
            let mut p = Sse::default();
            let mut got = p.push(&stream[..cut]).unwrap();
            got.extend(p.push(&stream[cut..]).unwrap());
            assert_eq!(
                got,
                [
                    ("log".to_owned(), "{\"message\": \"a\"}".to_owned()),
                    ("deployment".to_owned(), "one\ntwo".to_owned()),
                    ("message".to_owned(), "plain".to_owned()),
                ],
                "cut at {cut}"
            );
        }
        assert!(Sse::default().push(&vec![b'x'; MAX_EVENT_LINE + 1]).is_err());
    }

    #[test]
    fn power_arguments_to_settings() {
        let ok: &[(&str, &[&str], Value)] = &[
            ("manual", &[], json!({"kind": "manual"})),
            ("command", &["name=lab-pdu"], json!({"kind": "command", "name": "lab-pdu"})),
            // Only the first '=' splits: passwords may hold one.
            (
                "ipmi",
                &["host=10.0.0.9", "user=admin", "password=a=b"],
                json!({"kind": "ipmi", "host": "10.0.0.9", "user": "admin", "password": "a=b"}),
            ),
            (
                "ipmi",
                &["password=", "user=u", "host=h"],
                json!({"kind": "ipmi", "host": "h", "user": "u", "password": ""}),
            ),
            (
                "ipmi",
                &["host=h", "port=6230", "cipher=17", "user=u", "password=p"],
                json!({"kind": "ipmi", "host": "h", "port": 6230, "cipher": 17, "user": "u", "password": "p"}),
            ),
            (
                "redfish",
                &["url=https://bmc", "user=root", "password=pw"],
                json!({"kind": "redfish", "url": "https://bmc", "user": "root", "password": "pw", "insecure": false}),
            ),
            (
                "redfish",
                &["url=https://bmc", "user=root", "password=pw", "system=1", "insecure=true"],
                json!({"kind": "redfish", "url": "https://bmc", "user": "root", "password": "pw", "system": "1", "insecure": true}),
            ),
        ];
        for (driver, args, want) in ok {
            assert_eq!(settings(driver, args).as_ref(), Ok(want), "{driver} {args:?}");
        }
        let refused: &[(&str, &[&str], &str)] = &[
            ("telepathy", &[], "unknown power driver \"telepathy\" (manual, command, ipmi, redfish)"),
            ("manual", &["host=h"], "--power manual takes no --power-arg"),
            ("command", &[], "--power command needs --power-arg name=…"),
            ("command", &["sh", "-c", "id"], "--power-arg 1 is not KEY=VALUE (--power command takes name)"),
            ("ipmi", &["user=u", "password=p"], "--power ipmi needs --power-arg host=…"),
            (
                "ipmi",
                &["host=h", "user=u", "secret"],
                "--power-arg 3 is not KEY=VALUE (--power ipmi takes host, [port], [cipher], user, password)",
            ),
            (
                "ipmi",
                &["host=h", "user=u", "password=p", "tool=/bin/sh"],
                "--power ipmi takes no --power-arg tool (it takes host, [port], [cipher], user, password)",
            ),
            ("ipmi", &["host=h", "port=0"], "--power-arg port is a number from 1 to 65535"),
            ("ipmi", &["host=h", "port=ipmi"], "--power-arg port is a number from 1 to 65535"),
            ("ipmi", &["host=h", "cipher=256"], "--power-arg cipher is a number from 0 to 255"),
            ("redfish", &["url=https://bmc", "user=u"], "--power redfish needs --power-arg password=…"),
            ("redfish", &["user=u", "user=v"], "--power-arg user is given twice"),
            ("redfish", &["insecure=1"], "--power-arg insecure is true or false"),
            (
                "redfish",
                &["url=https://bmc", "pass=secret"],
                "--power redfish takes no --power-arg pass (it takes url, user, password, [system], [insecure])",
            ),
        ];
        for (driver, args, want) in refused {
            let e = settings(driver, args).unwrap_err().to_string();
            assert_eq!(e, *want);
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn what_the_controller_did_about_the_power() {
        let cases = [
            (json!({"message": "deployment erased", "deploymentId": 1}), None),
            (json!({"deploymentId": 1, "powerError": "false failed"}), Some(PowerCycle::Failed("false failed".into()))),
            (
                json!({"powerCycle": "failed", "powerError": "BMC said no"}),
                Some(PowerCycle::Failed("BMC said no".into())),
            ),
            (json!({"powerCycle": "failed"}), Some(PowerCycle::Failed("the controller gave no reason".into()))),
            (json!({"powerCycle": "done"}), Some(PowerCycle::Done)),
            (json!({"powerCycle": "manual"}), Some(PowerCycle::Manual)),
            (json!({"powerCycle": "skipped"}), Some(PowerCycle::Skipped)),
            (json!({"powerCycle": "later"}), None),
        ];
        for (body, want) in cases {
            assert_eq!(PowerCycle::of_answer(&body), want, "{body}");
        }
    }

    #[test]
    fn a_refused_post_that_is_a_power_failure() {
        let api = |status: u16, body: Value| Error::Api {
            status: StatusCode::from_u16(status).unwrap(),
            message: body["message"].as_str().unwrap_or("POST … failed").to_owned(),
            body,
        };
        let cases = [
            // Today's controller: 502 and its message.
            (
                api(502, json!({"message": "could not power-cycle s1: false failed"})),
                Some("could not power-cycle s1: false failed"),
            ),
            // A proxy's own 502 is no power failure.
            (api(502, Value::Null), None),
            (api(409, json!({"message": "A deployment is already in progress on s1"})), None),
            (
                api(
                    502,
                    json!({"message": "could not power-cycle s1: BMC said no", "powerCycle": "failed", "powerError": "BMC said no"}),
                ),
                Some("could not power-cycle s1: BMC said no"),
            ),
            (
                api(500, json!({"message": "power failed", "powerError": "BMC said no"})),
                Some("power failed: BMC said no"),
            ),
            (api(500, json!({"powerCycle": "failed"})), Some("could not power-cycle s1")),
            (Error::BadToken, None),
        ];
        for (e, want) in cases {
            assert_eq!(e.power_failure("s1").as_deref(), want, "{e:?}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let c = Client::new("http://127.0.0.1:1/", "s3cret-token", None).unwrap();
        assert_eq!(format!("{c:?}"), r#"Client { base: "http://127.0.0.1:1", .. }"#);
        assert!(matches!(Client::new("http://x", "a\nb", None), Err(Error::BadToken)));
    }
}
