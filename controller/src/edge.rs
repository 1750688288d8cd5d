//! The connection edge of `byoi serve`: what a client on the provisioning
//! network may cost the controller before and while it is served.
//!
//! [`Limits`] holds the timeouts and caps (`byoi serve` flags);
//! [`Admission`] counts open connections, in total and per source, and
//! refuses those over a cap ([`RefusalLog`] says so without flooding the
//! log); [`serve_connection`] serves one admitted connection under the idle,
//! header and body timeouts.
//!
//! One timeout per phase of a connection, so that a slow client is cut off
//! whatever it holds back:
//! - **idle**: from accept, or from the end of the last response, to the
//!   first byte of the next request (an idle keep-alive connection);
//! - **header**: from that first byte to the end of the request's head
//!   (slowloris: half a header, then silence or a byte now and then);
//! - **body**: from the end of the head to the end of the body, a total and
//!   not a gap between reads, so a client trickling a byte a second is cut
//!   off all the same ([`DeadlineBody`]; the route reading the body answers
//!   408 and the connection closes);
//! - **TLS handshake**: from accept to the end of the handshake.
//!
//! The idle and header timeouts close the connection (nothing is owed to a
//! client that has not sent a request); each is logged at debug with the
//! peer and the flag that sets it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Default of `--header-timeout`: iPXE, the agent and `curl` send a head in
/// one packet; ten seconds is a slow LAN's worth of retransmissions.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--body-timeout`: the largest body (a 24 MiB BYOI POST) at
/// about 3 Mbit/s; agents' bodies are a few KiB.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `--idle-timeout`: longer than the agent's gap between reports,
/// so its connection is reused, and short enough that 1,000 idle agents
/// release their connections soon.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `--tls-handshake-timeout`.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--max-connections`: 1,000+ agents with a connection or two
/// each, iPXE fetches and operators, with room; each costs a file
/// descriptor and a few KiB.
pub const MAX_CONNECTIONS: usize = 4096;
/// Default of `--max-connections-per-source`: one host needs a handful (an
/// agent, its iPXE before it, an operator's CLI and `status --follow`); 64
/// leaves room for a NATed rack or a busy operator's host, and keeps one
/// attacker from holding more than 1/64 of the total.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;

/// How long a client may take, and how many connections it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// From a request's first byte to the end of its head.
    pub header_timeout: Duration,
    /// From the end of a request's head to the end of its body.
    pub body_timeout: Duration,
    /// From accept or the end of a response to the next request's first byte.
    pub idle_timeout: Duration,
    /// From accept to the end of the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Open connections, in total.
    pub max_connections: usize,
    /// Open connections from one source (an IPv4 address, an IPv6 /64).
    pub max_connections_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_source: MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

/// Where connections come from, for the per-source cap: an IPv4 address, or
/// the /64 of an IPv6 one (a host picks any address of its /64 at will).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address (an IPv4-mapped IPv6 address is IPv4).
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => Source(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (!0u128 << 64)))),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The total cap is reached.
    #[error("{max} connections are open, the most allowed (--max-connections)")]
    Total {
        /// The cap.
        max: usize,
    },
    /// The source's cap is reached.
    #[error("{from} has {max} connections open, the most allowed (--max-connections-per-source)")]
    PerSource {
        /// The source.
        from: Source,
        /// The cap.
        max: usize,
    },
}

/// The open connections, counted against [`Limits::max_connections`] and
/// [`Limits::max_connections_per_source`].
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_source: usize,
    open: Mutex<Open>,
}

/// The counts behind [`Admission`].
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<Source, usize>,
}

/// An admitted connection; dropping it (when the connection ends, however
/// it ends) gives its place back.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    source: Source,
}

impl Admission {
    /// Counts against `limits`' caps.
    pub fn new(limits: &Limits) -> Arc<Admission> {
        Arc::new(Admission {
            max_total: limits.max_connections,
            max_per_source: limits.max_connections_per_source,
            open: Mutex::new(Open::default()),
        })
    }

    /// Admits a connection from `peer`, or says which cap it would pass.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refused> {
        let source = Source::of(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_total {
            return Err(Refused::Total { max: self.max_total });
        }
        let from_source = open.by_source.entry(source).or_default();
        if *from_source >= self.max_per_source {
            return Err(Refused::PerSource { from: source, max: self.max_per_source });
        }
        *from_source += 1;
        open.total += 1;
        Ok(Admitted { admission: self.clone(), source })
    }

    /// Connections open now: in total, and from `peer`'s source.
    #[cfg(test)]
    pub fn open(&self, peer: IpAddr) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        (open.total, open.by_source.get(&Source::of(peer)).copied().unwrap_or(0))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // The map holds only sources with open connections.
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// How often a refusal is logged at warn; the others go to debug.
pub const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(60);

/// Logs refused connections: each at debug, and at most one a minute at
/// warn with the number refused since, so that a flood of connections does
/// not become a flood of log lines.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last_warned: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    /// Records that the connection from `peer` was refused and closed.
    pub fn refused(&mut self, peer: SocketAddr, why: &Refused) {
        tracing::debug!(%peer, "refused a connection and closed it: {why}");
        let now = Instant::now();
        if self.last_warned.is_some_and(|t| now.duration_since(t) < REFUSAL_WARN_EVERY) {
            self.since += 1;
            return;
        }
        tracing::warn!(
            %peer,
            refused_since_last_warning = self.since,
            "refused a connection and closed it: {why}; more refusals within {}s are logged at debug",
            REFUSAL_WARN_EVERY.as_secs()
        );
        self.last_warned = Some(now);
        self.since = 0;
    }
}

/// Where a connection is, for the idle and header timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in progress since then.
    Idle(Instant),
    /// A request's head is arriving; its first byte came then.
    Head(Instant),
    /// A request is being served: its body read, its handler run, its
    /// response written. The body timeout is [`DeadlineBody`]'s.
    Busy,
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Expired {
    #[error("no request within {0:?} (--idle-timeout)")]
    Idle(Duration),
    #[error("no complete request head within {0:?} of its first byte (--header-timeout)")]
    Header(Duration),
}

impl Limits {
    /// When a connection in `phase` is closed, and why.
    fn deadline(&self, phase: Phase) -> Option<(Instant, Expired)> {
        match phase {
            Phase::Idle(since) => Some((since + self.idle_timeout, Expired::Idle(self.idle_timeout))),
            Phase::Head(since) => Some((since + self.header_timeout, Expired::Header(self.header_timeout))),
            Phase::Busy => None,
        }
    }
}

/// A connection's phase, shared by its I/O, its service and its watchdog.
type Activity = Arc<watch::Sender<Phase>>;

/// A connection's I/O: the first byte read while idle starts a request's
/// head.
#[derive(Debug)]
struct TrackedIo<I> {
    io: I,
    activity: Activity,
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.send_if_modified(|phase| match phase {
                Phase::Idle(_) => {
                    *phase = Phase::Head(Instant::now());
                    true
                }
                Phase::Head(_) | Phase::Busy => false,
            });
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request in progress: the connection is busy until its response has
/// been written (or abandoned), then idle.
#[derive(Debug)]
struct InProgress(Activity);

impl InProgress {
    fn start(activity: &Activity) -> InProgress {
        activity.send_replace(Phase::Busy);
        InProgress(activity.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.send_replace(Phase::Idle(Instant::now()));
    }
}

/// A response body that keeps its request [`InProgress`] until hyper has
/// written it and dropped it.
#[derive(Debug)]
struct ResponseBody {
    body: Body,
    _request: InProgress,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body of a request that arrived late: the client did not send it in
/// full within `--body-timeout` of the end of its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (--body-timeout)")]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] once its deadline has
/// passed, however steadily bytes trickle in (tower-http's
/// `RequestBodyTimeout` restarts its clock at every frame, which a trickle
/// defeats).
#[derive(Debug)]
pub struct DeadlineBody<B> {
    body: B,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl<B> DeadlineBody<B> {
    /// `body`, due within `limit` from now.
    pub fn new(body: B, limit: Duration) -> Self {
        DeadlineBody { body, deadline: Box::pin(tokio::time::sleep(limit)), limit }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.limit)))));
        }
        Pin::new(&mut this.body).poll_frame(cx).map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The service hyper calls for each request of one connection: marks the
/// connection busy, puts the body under its deadline, and calls `inner`.
#[derive(Debug, Clone)]
struct Tracked<S> {
    inner: S,
    activity: Activity,
    body_timeout: Duration,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let request = InProgress::start(&self.activity);
        let req = if req.body().is_end_stream() {
            req.map(Body::new)
        } else {
            let limit = self.body_timeout;
            req.map(|body| Body::new(DeadlineBody::new(body, limit)))
        };
        let inner = self.inner.clone();
        Box::pin(async move {
            let Ok(response) = inner.oneshot(req).await;
            Ok(response.map(|body| ResponseBody { body, _request: request }))
        })
    }
}

/// Serves one admitted connection (plain TCP, or TLS after the handshake)
/// with `service` until the client closes it, a timeout of `limits` closes
/// it, or a graceful shutdown (`watcher`) has let its request finish.
pub async fn serve_connection<I, S>(io: I, peer: SocketAddr, service: S, limits: &Limits, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    let (phase, mut phases) = watch::channel(Phase::Idle(Instant::now()));
    let activity = Arc::new(phase);
    let io = TokioIo::new(TrackedIo { io, activity: activity.clone() });
    let service = Tracked { inner: service, activity, body_timeout: limits.body_timeout };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The idle and header timeouts are ours: hyper's header-read timeout
    // runs from the end of the previous response, so it is both at once.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    let connection = watcher.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
    let mut connection = std::pin::pin!(connection);
    loop {
        let deadline = limits.deadline(*phases.borrow_and_update());
        let expiry = async {
            match deadline {
                Some((at, why)) => {
                    tokio::time::sleep_until(at).await;
                    why
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            // The sender lives in `connection`'s I/O and service: it
            // changes, it does not go away while `connection` runs.
            _ = phases.changed() => {}
            why = expiry => {
                // A phase change at the same instant wins.
                if !phases.has_changed().unwrap_or(false) {
                    tracing::debug!(%peer, "closed a connection: {why}");
                    return;
                }
            }
        }
    }
}

/// Warns when the open-files limit is below what `max_connections` needs:
/// past it, `accept` fails for everyone (EMFILE) instead of the cap refusing
/// the excess. Reads `/proc/self/limits`; silent where there is none.
pub fn check_open_files(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return };
    let Some(soft) = open_files_soft_limit(&limits) else { return };
    // The database, the listener, the log and tokio's own descriptors.
    let needed = max_connections as u64 + 64;
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            needed,
            "the open-files limit is below --max-connections plus room: raise it (systemd: LimitNOFILE=) \
             or lower --max-connections, else new connections fail for everyone once it is reached"
        );
    }
}

/// The soft "Max open files" of a `/proc/PID/limits` text (`None` if
/// absent or "unlimited").
fn open_files_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http_body_util::BodyExt;

    fn limits(total: usize, per_source: usize) -> Limits {
        Limits { max_connections: total, max_connections_per_source: per_source, ..Limits::default() }
    }

    #[test]
    fn admission_caps_each_source_and_the_total_and_releases_on_drop() {
        let a = Admission::new(&limits(3, 2));
        let (x, y, z): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        let source = Source::of(x);
        assert_eq!(a.admit(x).unwrap_err(), Refused::PerSource { from: source, max: 2 });
        let _y1 = a.admit(y).unwrap();
        assert_eq!(a.admit(z).unwrap_err(), Refused::Total { max: 3 });
        assert_eq!(a.open(x), (3, 2));
        drop(x1);
        assert_eq!(a.open(x), (2, 1));
        let _z1 = a.admit(z).unwrap();
        assert_eq!(a.open(z), (3, 1));
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_64() {
        let s = |a: &str| Source::of(a.parse().unwrap());
        assert_eq!(s("::ffff:10.0.0.1"), s("10.0.0.1"));
        assert_eq!(s("fd00:1:2:3::1"), s("fd00:1:2:3:ffff::9"));
        assert_ne!(s("fd00:1:2:3::1"), s("fd00:1:2:4::1"));
        assert_eq!(s("fd00:1:2:3::1").to_string(), "fd00:1:2:3::/64");
        assert_eq!(s("10.0.0.1").to_string(), "10.0.0.1");
    }

    #[test]
    fn each_phase_has_its_own_deadline() {
        let l = Limits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(7),
            ..Limits::default()
        };
        let t = Instant::now();
        assert_eq!(l.deadline(Phase::Idle(t)), Some((t + Duration::from_secs(7), Expired::Idle(l.idle_timeout))));
        assert_eq!(l.deadline(Phase::Head(t)), Some((t + Duration::from_secs(1), Expired::Header(l.header_timeout))));
        assert_eq!(l.deadline(Phase::Busy), None);
    }

    /// A body of `left` bytes, one every `gap`.
    struct Trickle {
        left: usize,
        gap: Duration,
        next: Pin<Box<Sleep>>,
    }

    fn trickle(left: usize, gap: Duration) -> Trickle {
        Trickle { left, gap, next: Box::pin(tokio::time::sleep(gap)) }
    }

    impl HttpBody for Trickle {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let this = self.get_mut();
            if this.left == 0 {
                return Poll::Ready(None);
            }
            std::task::ready!(this.next.as_mut().poll(cx));
            this.left -= 1;
            this.next.as_mut().reset(Instant::now() + this.gap);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test]
    async fn a_trickled_body_fails_at_its_deadline_though_every_gap_is_short() {
        let body = DeadlineBody::new(trickle(100, Duration::from_millis(50)), Duration::from_millis(500));
        let err = body.collect().await.unwrap_err();
        assert_eq!(err.downcast_ref::<BodyTimedOut>(), Some(&BodyTimedOut(Duration::from_millis(500))));
        assert_eq!(err.to_string(), "the request body did not arrive within 500ms (--body-timeout)");
    }

    #[tokio::test]
    async fn a_body_within_its_deadline_arrives_whole() {
        let body = DeadlineBody::new(trickle(5, Duration::from_millis(10)), Duration::from_secs(20));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "xxxxx");
    }

    #[test]
    fn the_open_files_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63459                63459                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_soft_limit(limits), Some(1024));
        assert_eq!(open_files_soft_limit("Max open files  unlimited  unlimited  files"), None);
        assert_eq!(open_files_soft_limit(""), None);
    }
}
