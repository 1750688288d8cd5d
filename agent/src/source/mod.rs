//! Where image bytes come from. A source delivers the bytes served, in
//! order, to the decoder through a blocking [`Read`]; feeds the same chunks
//! to the hasher on its own thread; counts them for progress; and, when the
//! server allows, fetches byte ranges on the side (for qcow2 metadata).

pub mod file;
pub mod http;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use crate::checksum::HashFeeder;
use crate::error::{DeployError, Result};
use crate::progress::Progress;

/// Chunks in flight between the download and the decoder. With hyper's
/// frames of at most a few hundred KiB, this bounds memory to a few MiB.
/// When the decoder is the slower (a compressed qcow2, inflated on every
/// core), the queue stays full: at 32 chunks it added 10–15 MiB to the
/// peak RSS; 12 was as fast for raw, qcow2 and compressed qcow2 (`cargo
/// xtask bench`).
pub(crate) const DATA_QUEUE_CHUNKS: usize = 12;

/// What flows from a source's producer to its [`ChannelReader`].
#[derive(Debug)]
pub(crate) enum Item {
    /// The next bytes of the image.
    Chunk(Bytes),
    /// The image ended normally.
    End,
    /// The download failed for good.
    Fail(DeployError),
}

/// A URL as messages and logs may show it: without credentials
/// (`user:pass@`), query (presigned URLs carry their signature there) or
/// fragment, as [`byoi_wire::spec::redact_url`] cuts it. The only form in
/// which the agent names an image URL in an error, a log line or a report
/// to the controller (which stores and shows them).
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Redacts `url`.
    pub fn new(url: &str) -> RedactedUrl {
        RedactedUrl(byoi_wire::spec::redact_url(url))
    }
}

impl std::fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// How to reach the image.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Extra request headers (OVH's `httpHeader`).
    pub headers: Vec<(String, String)>,
    /// Extra PEM trust roots, added to the built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Time to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest silence while waiting for response headers or body bytes.
    pub read_timeout: Duration,
    /// Attempts per failure streak (a successful read resets the streak).
    pub attempts: u32,
    /// First back-off delay; doubles per attempt up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest back-off delay.
    pub max_backoff: Duration,
    /// The least average speed, in bytes per second, over each `rate_window`
    /// of waiting for the server; slower counts as a broken connection
    /// (resumed, then failed when resuming does not help). 0: no minimum.
    pub min_rate: u64,
    /// How long the speed is averaged over.
    pub rate_window: Duration,
    /// How long the whole download may take, retries and resumes included.
    pub deadline: Duration,
    /// Whether a checksum will be verified: then a resume is allowed even
    /// when the server gives no validator (ETag, Last-Modified), since a
    /// spliced file would fail the checksum.
    pub verified: bool,
}

/// The default least speed: 1 KiB/s, far below any working image server,
/// far above one that trickles to keep a deployment `doing` forever.
pub const DEFAULT_MIN_RATE: u64 = 1024;
/// The default window the speed is averaged over.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);
/// The default deadline of a whole download: a day.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(24 * 3600);

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            headers: Vec::new(),
            ca_file: None,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            min_rate: DEFAULT_MIN_RATE,
            rate_window: DEFAULT_RATE_WINDOW,
            deadline: DEFAULT_DEADLINE,
            verified: false,
        }
    }
}

impl SourceOptions {
    /// The delay before retry number `attempt` (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What the source learnt about the image before streaming it.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Size of the file as served, when the server said.
    pub len: Option<u64>,
}

/// Fetches byte ranges of the same image, out of band.
pub trait RangeFetch: Send {
    /// Returns bytes `[offset, offset + len)`, fewer only at end of file.
    fn fetch(&self, offset: u64, len: u64) -> Result<Vec<u8>>;
}

/// An opened image.
pub struct Opened {
    /// The bytes served, in order.
    pub reader: ChannelReader,
    /// What the server said about it.
    pub info: SourceInfo,
    /// Random access to the same image, when the server supports Range.
    pub ranger: Option<Box<dyn RangeFetch>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("info", &self.info).field("ranger", &self.ranger.is_some()).finish()
    }
}

/// Opens `url` (`http://`, `https://` or `file://`).
pub fn open(url: &str, opts: &SourceOptions, hash: Option<HashFeeder>, progress: Arc<Progress>) -> Result<Opened> {
    if let Some(path) = url.strip_prefix("file://") {
        return file::open(url, PathBuf::from(path), hash, progress);
    }
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http" | "https") => http::open(url, opts, hash, progress),
        Some(other) if other.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) => {
            Err(DeployError::InvalidRequest(format!(
                "unsupported URL scheme {other}: expected http://, https:// or file://"
            )))
        }
        // Without a scheme there is no telling credentials from a host:
        // name nothing of it.
        _ => Err(DeployError::InvalidRequest(
            "the image URL has no valid scheme: expected http://, https:// or file://".into(),
        )),
    }
}

/// The consuming end: a blocking `Read` over the chunks a producer sends.
/// Errors from the producer come out as `io::Error`s wrapping a
/// [`DeployError`] (see [`DeployError::from_read`]).
pub struct ChannelReader {
    rx: mpsc::Receiver<Item>,
    current: Bytes,
    ended: bool,
    /// Keeps whatever drives the producer (an async runtime) alive.
    _keepalive: Option<Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReader").field("ended", &self.ended).finish()
    }
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Item>, keepalive: Option<Arc<dyn Send + Sync>>) -> Self {
        ChannelReader { rx, current: Bytes::new(), ended: false, _keepalive: keepalive }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Item::Chunk(c)) => self.current = c,
                Some(Item::End) => self.ended = true,
                Some(Item::Fail(e)) => return Err(e.into_io()),
                None => return Err(DeployError::Internal("the download stopped without saying why".into()).into_io()),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let o = SourceOptions {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..Default::default()
        };
        let got: Vec<_> = (1..=5).map(|a| o.backoff(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        assert_eq!(o.backoff(200), Duration::from_millis(500));
    }

    #[test]
    fn errors_show_urls_redacted_in_display_and_debug() {
        let secret = "https://alice:pa55word@s3.example:8443/b/img.qcow2?X-Amz-Signature=5ecret#fr4g";
        let url = RedactedUrl::new(secret);
        assert_eq!(url.to_string(), "https://s3.example:8443/b/img.qcow2?…");
        let errors = [
            DeployError::Download { url: url.clone(), reason: "HTTP 404 Not Found".into() },
            DeployError::Resume { url: url.clone(), offset: 7, reason: "no Range".into() },
        ];
        for e in errors {
            let shown = format!("{e} {e:?}");
            assert!(shown.contains("https://s3.example:8443/b/img.qcow2"), "{shown}");
            for s in ["alice", "pa55word", "5ecret", "X-Amz", "fr4g"] {
                assert!(!shown.contains(s), "{s} in {shown}");
            }
        }
        let progress = Arc::new(Progress::default());
        for bad in ["ftp://alice:pa55word@h/x?X-Amz-Signature=5ecret", "alice:pa55word@h/x", "x?://pa55word"] {
            let e = open(bad, &SourceOptions::default(), None, progress.clone()).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("pa55word") && !shown.contains("5ecret"), "{shown}");
            assert_eq!(e.code(), byoi_wire::ErrorCode::InvalidRequest);
        }
    }

    #[test]
    fn reader_reports_a_silent_producer_death() {
        let (tx, rx) = mpsc::channel(4);
        tx.blocking_send(Item::Chunk(Bytes::from_static(b"ab"))).unwrap();
        drop(tx);
        let mut r = ChannelReader::new(rx, None);
        let mut buf = Vec::new();
        let e = r.read_to_end(&mut buf).unwrap_err();
        assert_eq!(buf, b"ab");
        let e = DeployError::from_read(e, |e| DeployError::Internal(e.to_string()));
        assert!(matches!(e, DeployError::Internal(_)), "{e}");
    }
}
