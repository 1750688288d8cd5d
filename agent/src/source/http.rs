//! HTTP and HTTPS images: hyper on a small tokio runtime of its own, rustls
//! with the `ring` provider (no C toolchain for the static build), web PKI
//! roots plus `--ca-file`. Follows redirects, retries with exponential
//! back-off, and resumes a broken body with a `Range` request guarded by
//! `If-Range`, so a file that changed on the server is never spliced.
//!
//! The image server is not trusted: the operator's headers never follow a
//! redirect to another origin, HTTPS is never downgraded to HTTP by a
//! redirect, a server slower than [`SourceOptions::min_rate`] counts as
//! broken, and the whole download ends by [`SourceOptions::deadline`].
//! URLs appear in messages only as [`RedactedUrl`]s.

use std::error::Error as StdError;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};

use super::{ChannelReader, Item, Opened, RangeFetch, RedactedUrl, SourceInfo, SourceOptions, DATA_QUEUE_CHUNKS};
use crate::checksum::HashFeeder;
use crate::error::{DeployError, Result};
use crate::progress::Progress;

/// Redirects followed before giving up, as curl's default `--max-redirs`
/// would be far too many for an installer.
const MAX_REDIRECTS: usize = 5;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Why one attempt failed.
enum Failure {
    /// Worth retrying: connection errors, timeouts, 408, 429, 5xx.
    Transient(String),
    /// Retrying cannot help.
    Fatal(DeployError),
}

/// What identifies the version of the file being downloaded.
#[derive(Debug, Clone, Default)]
struct Validators {
    /// A strong ETag (weak ones cannot guard a range).
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

impl Validators {
    fn from_headers(h: &HeaderMap) -> Self {
        let etag = h.get(header::ETAG).filter(|v| !v.as_bytes().starts_with(b"W/")).cloned();
        Validators { etag, last_modified: h.get(header::LAST_MODIFIED).cloned() }
    }

    fn any(&self) -> Option<&HeaderValue> {
        self.etag.as_ref().or(self.last_modified.as_ref())
    }
}

/// The private runtime. Dropping it does not wait for blocking tasks (a
/// resolver stuck in `getaddrinfo` must not delay reporting a failure).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.0 {
            Some(rt) => rt.block_on(f),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        if let Some(rt) = &self.0 {
            rt.spawn(f);
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Everything a request needs; shared by the body pump and the ranger.
struct Ctx {
    client: HttpClient,
    opts: SourceOptions,
    /// The operator's headers (`httpHeader`): sent to [`Ctx::origin`] only.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The URL as the operator gave it, for messages and logs.
    url: RedactedUrl,
    /// The origin of that URL.
    origin: Origin,
    /// When the download must have ended ([`SourceOptions::deadline`]).
    deadline: Instant,
}

/// Scheme, host and port (RFC 6454 §4): a redirect elsewhere is
/// cross-origin, and the operator's headers stay behind.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute `http(s)://` URI, default ports made explicit.
    fn of(u: &Uri) -> Option<Origin> {
        let scheme = u.scheme_str()?.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = u.host()?.to_ascii_lowercase();
        Some(Origin { scheme, host, port: u.port_u16().unwrap_or(default) })
    }
}

/// Whether a redirect from `from` to `to` may be followed: only to HTTP(S),
/// and never from HTTPS down to plain HTTP (the operator's headers, and the
/// image's integrity, would travel in the clear). The refusal says why.
fn check_redirect(from: &Uri, to: &Uri) -> std::result::Result<(), String> {
    let scheme = |u: &Uri| u.scheme_str().map(str::to_ascii_lowercase);
    match (scheme(from).as_deref(), scheme(to).as_deref()) {
        (_, Some("https")) | (Some("http"), Some("http")) => Ok(()),
        (Some("https"), Some("http")) => {
            Err(format!("refusing a redirect from HTTPS to plain HTTP ({})", RedactedUrl::new(&to.to_string())))
        }
        _ => Err("redirected to a URL that is not HTTP(S)".to_owned()),
    }
}

/// Opens an `http://` or `https://` image and starts streaming it.
pub(crate) fn open(
    url: &str,
    opts: &SourceOptions,
    hash: Option<HashFeeder>,
    progress: Arc<Progress>,
) -> Result<Opened> {
    let redacted = RedactedUrl::new(url);
    let uri: Uri = url.parse().map_err(|e| DeployError::InvalidRequest(format!("invalid URL {redacted}: {e}")))?;
    let origin = Origin::of(&uri)
        .ok_or_else(|| DeployError::InvalidRequest(format!("invalid URL {redacted}: no http(s) scheme or host")))?;
    let headers = parse_headers(&opts.headers)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("byoi-http")
        .enable_all()
        .build()
        .map_err(|e| DeployError::Internal(format!("starting the HTTP runtime: {e}")))?;
    let rt = Arc::new(Runtime(Some(rt)));
    let client = rt.block_on(async { build_client(opts) })?;
    // Capped so that "forever" (a huge --deadline) cannot overflow.
    let deadline = Instant::now() + opts.deadline.min(std::time::Duration::from_secs(u64::from(u32::MAX)));
    let ctx = Arc::new(Ctx { client, opts: opts.clone(), headers, url: redacted, origin, deadline });

    let (resp, final_uri) = rt.block_on(ctx.request_with_retries(&uri, None))?;
    if resp.status() != StatusCode::OK {
        return Err(ctx.download_error(format!("unexpected HTTP {} to a plain GET", resp.status())));
    }
    let len = content_length(resp.headers());
    let validators = Validators::from_headers(resp.headers());
    // Ranges are only trusted with a validator to pin the file's version.
    let ranges = resp.headers().get(header::ACCEPT_RANGES).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"))
        && validators.any().is_some();
    tracing::info!(url = %ctx.url, len, ranges, etag = ?validators.etag, "image found");
    progress.set_total(len);

    let (tx, rx) = mpsc::channel(DATA_QUEUE_CHUNKS);
    let pump = Pump {
        ctx: ctx.clone(),
        uri: final_uri.clone(),
        validators: validators.clone(),
        len,
        ranges,
        tx,
        hash,
        progress,
    };
    rt.spawn(pump.run(resp.into_body()));

    let ranger: Option<Box<dyn RangeFetch>> =
        if ranges { Some(Box::new(HttpRanger { rt: rt.clone(), ctx, uri: final_uri, validators })) } else { None };
    Ok(Opened { reader: ChannelReader::new(rx, Some(rt)), info: SourceInfo { len }, ranger })
}

/// The operator's headers, checked by the rule the controller applies at
/// POST ([`byoi_wire::spec::header`]): the transfer itself manages `Range`,
/// `Host` and the like, and a value is never shown.
fn parse_headers(raw: &[(String, String)]) -> Result<Vec<(HeaderName, HeaderValue)>> {
    raw.iter().map(|(k, v)| byoi_wire::spec::header(k, v).map_err(|e| DeployError::InvalidRequest(e.0))).collect()
}

fn build_client(opts: &SourceOptions) -> Result<HttpClient> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &opts.ca_file {
        let bad = |e: &dyn std::fmt::Display| {
            DeployError::InvalidRequest(format!("cannot use CA file {}: {e}", path.display()))
        };
        let certs = byoi_wire::tls::ca_certificates(path).map_err(|e| match e {
            byoi_wire::tls::CaFileError::Unreadable(e) => bad(&e),
            byoi_wire::tls::CaFileError::NotPem(e) => bad(&e),
            byoi_wire::tls::CaFileError::Empty => bad(&"no PEM certificate in it"),
        })?;
        for cert in certs {
            roots.add(cert).map_err(|e| bad(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DeployError::Internal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(opts.connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Parses `Content-Range: bytes START-END/TOTAL` into (START, TOTAL).
fn content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// The error and its sources, as one line.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

/// Whether a connection error is a TLS verdict (bad certificate…), which
/// retrying cannot change.
fn is_tls_rejection(e: &(dyn StdError + 'static)) -> bool {
    byoi_wire::tls::rustls_error(e).is_some()
}

/// Whether a URI reference starts with a scheme (RFC 3986 §3.1).
fn has_scheme(r: &str) -> bool {
    match r.find(':') {
        Some(i) if i > 0 => {
            let scheme = &r[..i];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        _ => false,
    }
}

/// Resolves a `Location` header against the URL that returned it
/// (RFC 3986 §5.2, without dot-segment removal).
fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    let location = location.split('#').next().unwrap_or_default();
    if has_scheme(location) {
        return location.parse().ok();
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let path = base.path();
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().ok();
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}").parse().ok();
    }
    if location.is_empty() {
        return Some(base.clone());
    }
    if location.starts_with('?') {
        return format!("{scheme}://{authority}{path}{location}").parse().ok();
    }
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{authority}{dir}{location}").parse().ok()
}

/// Whether a 206 answer is for the same version of the file.
fn same_version(v: &Validators, h: &HeaderMap) -> bool {
    match (&v.etag, &v.last_modified) {
        (Some(etag), _) => h.get(header::ETAG) == Some(etag),
        (None, Some(lm)) => h.get(header::LAST_MODIFIED).is_none_or(|got| got == lm),
        (None, None) => true,
    }
}

impl Ctx {
    fn download_error(&self, reason: impl Into<String>) -> DeployError {
        DeployError::Download { url: self.url.clone(), reason: reason.into() }
    }

    /// Time left before the deadline.
    fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The failure once the deadline has passed.
    fn deadline_error(&self) -> DeployError {
        self.download_error(format!(
            "the download did not finish within its deadline of {:?}, retries included",
            self.opts.deadline
        ))
    }

    /// Sleeps `d`, or until the deadline if that comes first.
    async fn back_off(&self, d: std::time::Duration) {
        sleep(d.min(self.remaining())).await;
    }

    /// One GET, following redirects. The operator's headers go to the
    /// origin of the operator's URL only (curl drops just `Authorization`
    /// and `Cookie`; here every one of them may be a secret).
    async fn request(
        &self,
        start: &Uri,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<(Response<Incoming>, Uri), Failure> {
        let mut uri = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            if self.remaining().is_zero() {
                return Err(Failure::Fatal(self.deadline_error()));
            }
            let same_origin = Origin::of(&uri).as_ref() == Some(&self.origin);
            let mut req =
                Request::get(uri.clone()).header(header::USER_AGENT, concat!("byoi-agent/", env!("CARGO_PKG_VERSION")));
            if same_origin {
                for (k, v) in &self.headers {
                    req = req.header(k, v);
                }
            }
            for (k, v) in extra {
                req = req.header(k, v);
            }
            let req = req.body(Empty::new()).map_err(|e| Failure::Fatal(self.download_error(e.to_string())))?;
            let wait = (self.opts.connect_timeout + self.opts.read_timeout).min(self.remaining());
            let resp = match timeout(wait, self.client.request(req)).await {
                Err(_) if self.remaining().is_zero() => return Err(Failure::Fatal(self.deadline_error())),
                Err(_) => return Err(Failure::Transient(format!("no response within {wait:?}"))),
                Ok(Err(e)) if is_tls_rejection(&e) => return Err(Failure::Fatal(self.download_error(chain(&e)))),
                Ok(Err(e)) => return Err(Failure::Transient(chain(&e))),
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            if status.is_redirection() {
                let loc = resp.headers().get(header::LOCATION).and_then(|l| l.to_str().ok());
                let next = loc.and_then(|l| resolve(&uri, l)).ok_or_else(|| {
                    Failure::Fatal(self.download_error(format!("HTTP {status} without a usable Location")))
                })?;
                check_redirect(&uri, &next).map_err(|e| Failure::Fatal(self.download_error(e)))?;
                tracing::debug!(
                    from = %RedactedUrl::new(&uri.to_string()),
                    to = %RedactedUrl::new(&next.to_string()),
                    "following redirect"
                );
                uri = next;
                continue;
            }
            // 416 is an answer, not a failure, to a Range request past the
            // end (a body without a length that had in fact ended).
            if status.is_success() || status == StatusCode::RANGE_NOT_SATISFIABLE {
                return Ok((resp, uri));
            }
            let reason = format!("HTTP {status}");
            return Err(
                if status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS
                {
                    Failure::Transient(reason)
                } else {
                    Failure::Fatal(self.download_error(reason))
                },
            );
        }
        Err(Failure::Fatal(self.download_error(format!("more than {MAX_REDIRECTS} redirects"))))
    }

    /// [`Ctx::request`] with retries and back-off on transient failures.
    async fn request_with_retries(
        &self,
        uri: &Uri,
        extra: Option<&[(HeaderName, HeaderValue)]>,
    ) -> Result<(Response<Incoming>, Uri)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.request(uri, extra.unwrap_or_default()).await {
                Ok(r) => return Ok(r),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(reason)) if attempt >= self.opts.attempts => {
                    return Err(self.download_error(format!("{reason}, after {attempt} attempts")))
                }
                Err(Failure::Transient(reason)) => {
                    tracing::warn!(url = %self.url, attempt, %reason, "request failed; retrying");
                    self.back_off(self.opts.backoff(attempt)).await;
                }
            }
        }
    }
}

/// Moves the body into the decoder's channel, resuming when it breaks.
struct Pump {
    ctx: Arc<Ctx>,
    uri: Uri,
    validators: Validators,
    len: Option<u64>,
    /// The server honours Range requests for this file.
    ranges: bool,
    tx: mpsc::Sender<Item>,
    hash: Option<HashFeeder>,
    progress: Arc<Progress>,
}

/// The minimum-throughput rule ([`SourceOptions::min_rate`]) for one
/// response. Only time spent waiting for the server counts: while the disk
/// or the hasher holds the pump back, the server is not to blame.
#[derive(Debug)]
struct RateWatch {
    /// Least bytes per window; 0 disables the rule.
    min: u64,
    window: std::time::Duration,
    /// Waiting time and bytes in the current window.
    waited: std::time::Duration,
    got: u64,
    /// Bytes of this response so far.
    total: u64,
}

impl RateWatch {
    fn new(opts: &SourceOptions) -> RateWatch {
        let min = (opts.min_rate as f64 * opts.rate_window.as_secs_f64()) as u64;
        RateWatch { min, window: opts.rate_window, waited: Default::default(), got: 0, total: 0 }
    }

    /// How long the next wait may last before the window closes.
    fn left(&self) -> std::time::Duration {
        if self.min == 0 {
            return std::time::Duration::MAX;
        }
        self.window.saturating_sub(self.waited)
    }

    /// Counts a wait that brought `bytes`; when it closes a window below the
    /// minimum, says so.
    fn add(&mut self, waited: std::time::Duration, bytes: u64) -> std::result::Result<(), String> {
        self.got += bytes;
        self.total += bytes;
        if self.min == 0 {
            return Ok(());
        }
        self.waited += waited;
        if self.waited < self.window {
            return Ok(());
        }
        let got = std::mem::take(&mut self.got);
        self.waited = Default::default();
        if got < self.min {
            return Err(format!(
                "the image server sent {got} bytes in the last {:?}, less than the minimum of {} bytes per second",
                self.window,
                self.min as f64 / self.window.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Whether this response has brought a window's worth of bytes: then
    /// it has proven itself, and a new failure streak may start.
    fn proven(&self) -> bool {
        self.total >= self.min.max(1)
    }
}

/// What waiting for the next piece of the body gave.
enum Next {
    Data(Bytes),
    /// The body ended (cleanly or not: the caller knows the length).
    End,
    /// Worth resuming: silence, a broken connection, too slow.
    Broken(String),
    /// The deadline passed.
    Fatal(DeployError),
}

impl Pump {
    /// Waits for the next data frame of `body`, enforcing the read timeout,
    /// the minimum throughput and the deadline.
    async fn next(&self, body: &mut Incoming, watch: &mut RateWatch) -> Next {
        let read_timeout = self.ctx.opts.read_timeout;
        let silent_since = Instant::now();
        loop {
            let silence = silent_since.elapsed();
            let wait = read_timeout.saturating_sub(silence).min(watch.left()).min(self.ctx.remaining());
            let started = Instant::now();
            let got = timeout(wait, body.frame()).await;
            let waited = started.elapsed();
            let data = match got {
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) if !d.is_empty() => Some(d),
                    _ => None,
                },
                Ok(None) => return Next::End,
                Ok(Some(Err(e))) => return Next::Broken(chain(&e)),
                Err(_) if self.ctx.remaining().is_zero() => return Next::Fatal(self.ctx.deadline_error()),
                Err(_) => None,
            };
            let n = data.as_ref().map_or(0, |d| d.len() as u64);
            if let Err(slow) = watch.add(waited, n) {
                return Next::Broken(slow);
            }
            match data {
                Some(d) => return Next::Data(d),
                None if silent_since.elapsed() >= read_timeout => {
                    return Next::Broken(format!("no data for {read_timeout:?}"))
                }
                None => {}
            }
        }
    }

    async fn run(self, mut body: Incoming) {
        let mut offset = 0u64;
        let mut streak = 0u32;
        let mut watch = RateWatch::new(&self.ctx.opts);
        loop {
            let mut broken = match self.next(&mut body, &mut watch).await {
                Next::Data(data) => {
                    if watch.proven() {
                        streak = 0;
                    }
                    offset += data.len() as u64;
                    if let Some(h) = &self.hash {
                        h.feed(data.clone()).await;
                    }
                    self.progress.add_done(data.len() as u64);
                    if self.tx.send(Item::Chunk(data)).await.is_err() {
                        return; // the decoder has stopped
                    }
                    continue;
                }
                Next::End => match self.len {
                    Some(len) if offset < len => format!("connection closed after {offset} of {len} bytes"),
                    Some(_) => {
                        let _ = self.tx.send(Item::End).await;
                        return;
                    }
                    None if !self.ranges => {
                        tracing::warn!(
                            offset,
                            "the server sent no length: taking the end of the body as the end of the image"
                        );
                        let _ = self.tx.send(Item::End).await;
                        return;
                    }
                    // A body without a length ends when the connection
                    // closes, which a cut looks like too: ask for more.
                    None => match self.resume(offset).await {
                        Ok(Some(b)) => {
                            body = b;
                            watch = RateWatch::new(&self.ctx.opts);
                            continue;
                        }
                        Ok(None) => {
                            let _ = self.tx.send(Item::End).await;
                            return;
                        }
                        Err(Failure::Transient(r)) => r,
                        Err(Failure::Fatal(e)) => return self.fail(e).await,
                    },
                },
                Next::Broken(reason) => reason,
                Next::Fatal(e) => return self.fail(e).await,
            };
            // Resume: back off, then ask for the rest.
            loop {
                streak += 1;
                if streak > self.ctx.opts.attempts {
                    let reason = format!("{} attempts to resume failed, the last with: {broken}", streak - 1);
                    return self.fail(DeployError::Resume { url: self.ctx.url.clone(), offset, reason }).await;
                }
                tracing::warn!(url = %self.ctx.url, offset, attempt = streak, reason = %broken, "download broke; resuming");
                self.ctx.back_off(self.ctx.opts.backoff(streak)).await;
                match self.resume(offset).await {
                    Ok(Some(b)) => {
                        body = b;
                        watch = RateWatch::new(&self.ctx.opts);
                        break;
                    }
                    Ok(None) => {
                        let _ = self.tx.send(Item::End).await;
                        return;
                    }
                    Err(Failure::Transient(r)) => broken = r,
                    // Say why it had to resume: "too slow" matters more
                    // than "and the server has no Range support".
                    Err(Failure::Fatal(DeployError::Resume { url, offset, reason })) => {
                        let reason = format!("{reason} (it broke with: {broken})");
                        return self.fail(DeployError::Resume { url, offset, reason }).await;
                    }
                    Err(Failure::Fatal(e)) => return self.fail(e).await,
                }
            }
        }
    }

    async fn fail(&self, e: DeployError) {
        tracing::error!(error = %e, "download failed");
        let _ = self.tx.send(Item::Fail(e)).await;
    }

    /// Asks for the bytes from `offset` on, making sure they belong to the
    /// same file. `None`: there are none (a body without a length ended).
    async fn resume(&self, offset: u64) -> Result<Option<Incoming>, Failure> {
        let resume_err = |reason: &str| {
            Failure::Fatal(DeployError::Resume { url: self.ctx.url.clone(), offset, reason: reason.to_owned() })
        };
        if offset == 0 {
            // Nothing has been passed on yet: starting over is safe.
            let (resp, _) = self.ctx.request(&self.uri, &[]).await?;
            if resp.status() != StatusCode::OK {
                return Err(resume_err(&format!("the server answered HTTP {} when starting over", resp.status())));
            }
            return Ok(Some(resp.into_body()));
        }
        let mut extra = vec![(
            header::RANGE,
            HeaderValue::try_from(format!("bytes={offset}-")).map_err(|_| resume_err("bad range"))?,
        )];
        match self.validators.any() {
            Some(v) => extra.push((header::IF_RANGE, v.clone())),
            None if self.ctx.opts.verified => {}
            None => {
                return Err(resume_err(
                    "the server sent no ETag or Last-Modified to resume safely and no checksum was given",
                ))
            }
        }
        let (resp, _) = self.ctx.request(&self.uri, &extra).await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE && self.len.is_none() {
            return Ok(None);
        }
        if resp.status() != StatusCode::PARTIAL_CONTENT || !same_version(&self.validators, resp.headers()) {
            return Err(resume_err(
                "the server does not support Range requests or the image changed on the server, and data was already written",
            ));
        }
        match content_range(resp.headers()) {
            Some((start, total)) if start == offset && (total.is_none() || self.len.is_none() || total == self.len) => {
                Ok(Some(resp.into_body()))
            }
            other => Err(resume_err(&format!("the server answered with the wrong range ({other:?})"))),
        }
    }
}

/// Range requests on the side, for metadata and out-of-order data. Each
/// request is guarded by `If-Match` / `If-Unmodified-Since`.
struct HttpRanger {
    rt: Arc<Runtime>,
    ctx: Arc<Ctx>,
    uri: Uri,
    validators: Validators,
}

impl HttpRanger {
    async fn fetch_once(&self, offset: u64, len: u64) -> Result<Vec<u8>, Failure> {
        let last = offset + len - 1;
        let mut extra = vec![(
            header::RANGE,
            HeaderValue::try_from(format!("bytes={offset}-{last}"))
                .map_err(|_| Failure::Transient("bad range".into()))?,
        )];
        if let Some(etag) = &self.validators.etag {
            extra.push((header::IF_MATCH, etag.clone()));
        } else if let Some(lm) = &self.validators.last_modified {
            extra.push((header::IF_UNMODIFIED_SINCE, lm.clone()));
        }
        let (resp, _) = self.ctx.request(&self.uri, &extra).await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(Failure::Fatal(self.ctx.download_error(format!(
                "HTTP {} to a Range request (the image changed on the server, or Range is not supported)",
                resp.status()
            ))));
        }
        if !same_version(&self.validators, resp.headers()) {
            return Err(Failure::Fatal(
                self.ctx.download_error("the image changed on the server during the deployment"),
            ));
        }
        let expected = match content_range(resp.headers()) {
            Some((start, total)) if start == offset => total.map_or(len, |t| len.min(t.saturating_sub(offset))),
            _ => {
                return Err(Failure::Fatal(
                    self.ctx.download_error("the server answered a Range request with the wrong range"),
                ))
            }
        };
        let mut body = resp.into_body();
        let mut out = Vec::with_capacity(len as usize);
        let mut watch = RateWatch::new(&self.ctx.opts);
        loop {
            let wait = self.ctx.opts.read_timeout.min(watch.left()).min(self.ctx.remaining());
            let started = Instant::now();
            let got = timeout(wait, body.frame()).await;
            let waited = started.elapsed();
            match got {
                Ok(Some(Ok(frame))) => {
                    let n = match frame.into_data() {
                        Ok(data) => {
                            out.extend_from_slice(&data);
                            data.len() as u64
                        }
                        Err(_) => 0,
                    };
                    if out.len() as u64 > len {
                        return Err(Failure::Fatal(
                            self.ctx.download_error("the server sent more than the range asked for"),
                        ));
                    }
                    watch.add(waited, n).map_err(Failure::Transient)?;
                }
                Ok(None) if out.len() as u64 == expected => return Ok(out),
                Ok(None) => {
                    return Err(Failure::Transient(format!(
                        "range response ended after {} of {expected} bytes",
                        out.len()
                    )))
                }
                Ok(Some(Err(e))) => return Err(Failure::Transient(chain(&e))),
                Err(_) if self.ctx.remaining().is_zero() => return Err(Failure::Fatal(self.ctx.deadline_error())),
                Err(_) if waited >= self.ctx.opts.read_timeout => {
                    return Err(Failure::Transient("range request timed out".into()))
                }
                Err(_) => watch.add(waited, 0).map_err(Failure::Transient)?,
            }
        }
    }
}

impl RangeFetch for HttpRanger {
    fn fetch(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.rt.block_on(async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.fetch_once(offset, len).await {
                    Ok(v) => return Ok(v),
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(Failure::Transient(r)) if attempt >= self.ctx.opts.attempts => {
                        return Err(self.ctx.download_error(format!("range request failed: {r}")))
                    }
                    Err(Failure::Transient(r)) => {
                        tracing::warn!(offset, len, attempt, reason = %r, "range request failed; retrying");
                        self.ctx.back_off(self.ctx.opts.backoff(attempt)).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn resolves_locations() {
        let base: Uri = "http://a.example:8080/dir/img.qcow2?x=1".parse().unwrap();
        let cases = [
            ("https://b.example/z", "https://b.example/z"),
            ("//c.example/y", "http://c.example/y"),
            ("/abs/path", "http://a.example:8080/abs/path"),
            ("rel.raw", "http://a.example:8080/dir/rel.raw"),
            ("?v=2", "http://a.example:8080/dir/img.qcow2?v=2"),
            ("/real?next=http://x/y", "http://a.example:8080/real?next=http://x/y"),
            ("other#frag", "http://a.example:8080/dir/other"),
        ];
        for (loc, want) in cases {
            assert_eq!(resolve(&base, loc).unwrap().to_string(), want, "{loc}");
        }
    }

    #[test]
    fn parses_content_range() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/1000"));
        assert_eq!(content_range(&h), Some((100, Some(1000))));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 5-9/*"));
        assert_eq!(content_range(&h), Some((5, None)));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("items 1-2/3"));
        assert_eq!(content_range(&h), None);
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = |u: &str| Origin::of(&u.parse().unwrap()).unwrap();
        assert_eq!(o("http://Host.example/a"), o("http://host.example:80/b?q"));
        assert_eq!(o("https://u:p@host.example/a"), o("https://host.example:443/"));
        assert_ne!(o("http://host.example/a"), o("https://host.example/a"));
        assert_ne!(o("http://host.example/a"), o("http://host.example:8080/a"));
        assert_ne!(o("http://127.0.0.1/a"), o("http://127.0.0.2/a"));
        assert!(Origin::of(&"ftp://host/x".parse().unwrap()).is_none());
    }

    #[test]
    fn https_is_never_redirected_down_to_http() {
        let u = |s: &str| -> Uri { s.parse().unwrap() };
        assert!(check_redirect(&u("http://a/x"), &u("http://b/y")).is_ok());
        assert!(check_redirect(&u("http://a/x"), &u("https://b/y")).is_ok());
        assert!(check_redirect(&u("https://a/x"), &u("https://b/y")).is_ok());
        let e = check_redirect(&u("https://a/x"), &u("HTTP://u:p@a/y?sig=s3cret")).unwrap_err();
        assert_eq!(e, "refusing a redirect from HTTPS to plain HTTP (http://a/y?…)");
        let e = check_redirect(&u("http://a/x"), &u("ftp://a/y")).unwrap_err();
        assert_eq!(e, "redirected to a URL that is not HTTP(S)");
    }

    #[test]
    fn the_rate_rule_counts_waiting_time_per_window() {
        let opts = SourceOptions { min_rate: 1000, rate_window: Duration::from_secs(10), ..Default::default() };
        let mut w = RateWatch::new(&opts);
        assert_eq!(w.left(), Duration::from_secs(10));
        w.add(Duration::from_secs(4), 6_000).unwrap();
        assert!(!w.proven());
        assert_eq!(w.left(), Duration::from_secs(6));
        w.add(Duration::from_secs(6), 4_000).unwrap();
        assert!(w.proven(), "10 000 bytes: a window's worth");
        assert_eq!(w.left(), Duration::from_secs(10), "a new window");
        w.add(Duration::from_secs(9), 9_000).unwrap();
        let e = w.add(Duration::from_secs(2), 0).unwrap_err();
        assert_eq!(
            e,
            "the image server sent 9000 bytes in the last 10s, less than the minimum of 1000 bytes per second"
        );
        let off = RateWatch::new(&SourceOptions { min_rate: 0, ..opts });
        assert_eq!(off.left(), Duration::MAX);
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("W/\"abc\""));
        assert!(Validators::from_headers(&h).any().is_none());
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        assert_eq!(Validators::from_headers(&h).any().unwrap(), "\"abc\"");
    }
}
