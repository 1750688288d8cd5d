//! The netbooted agent's `tracing` output: printed on the console (PID 1
//! has no other reader), and INFO and above, with the console lines of
//! [`super::jobs::say`], kept in a small queue that the next report carries
//! to the controller ([`take`]), which keeps them per deployment for
//! `byoi logs`. The library never installs a subscriber; [`install`] is for
//! PID 1 only.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use byoi_wire::agent::{LogLevel, LogRecord, MAX_LOGS};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Records waiting for the next report, and how many fell out of it.
#[derive(Debug, Default)]
struct Queue {
    records: VecDeque<LogRecord>,
    dropped: u64,
}

/// A bounded queue of forwarded records: the newest [`MAX_LOGS`] are kept.
#[derive(Debug, Default)]
pub struct Forward {
    queue: Mutex<Queue>,
}

impl Forward {
    /// A new, empty queue.
    pub const fn new() -> Forward {
        Forward { queue: Mutex::new(Queue { records: VecDeque::new(), dropped: 0 }) }
    }

    /// Queues a record, dropping the oldest past [`MAX_LOGS`].
    pub fn push(&self, record: LogRecord) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.records.push_back(record);
        while q.records.len() > MAX_LOGS {
            q.records.pop_front();
            q.dropped += 1;
        }
    }

    /// Everything queued, oldest first; when records were dropped, the
    /// first says how many (and one more is dropped to make room for it).
    pub fn take(&self) -> Vec<LogRecord> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<LogRecord> = q.records.drain(..).collect();
        if q.dropped > 0 {
            if out.len() >= MAX_LOGS {
                out.remove(0);
                q.dropped += 1;
            }
            out.insert(
                0,
                LogRecord {
                    level: LogLevel::Warn,
                    target: module_path!().into(),
                    message: format!("{} earlier log lines were dropped", q.dropped),
                },
            );
            q.dropped = 0;
        }
        out
    }
}

/// The queue PID 1's subscriber fills and the job loop empties.
pub static FORWARD: Forward = Forward::new();

/// Everything logged at INFO and above, and every console line, since the
/// last call.
pub fn take() -> Vec<LogRecord> {
    FORWARD.take()
}

/// A `tracing` layer that queues INFO, WARN and ERROR events into a
/// [`Forward`].
#[derive(Debug)]
pub struct ForwardLayer(pub &'static Forward);

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            _ => return,
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        message.push_str(&fields.rest);
        self.0.push(LogRecord { level, target: event.metadata().target().to_owned(), message }.bounded());
    }
}

/// An event's message, then its other fields as ` name=value`.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

/// Installs PID 1's subscriber: INFO and above on the console (stderr,
/// the serial console), and into [`FORWARD`].
pub fn install() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer as _;
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::registry().with(console).with(ForwardLayer(&FORWARD)).try_init();
}

#[cfg(test)]
mod tests {
    use byoi_wire::agent::MAX_LOG_MESSAGE;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn notes_warnings_and_errors_are_queued_with_their_fields() {
        static Q: Forward = Forward::new();
        let subscriber = tracing_subscriber::registry().with(ForwardLayer(&Q));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("not forwarded");
            tracing::info!(disk = "nvme0n1", "deploying");
            tracing::warn!(offset = 7u64, reason = "reset", "download broke; resuming");
            tracing::error!("{}", "é".repeat(MAX_LOG_MESSAGE));
        });
        let got = Q.take();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].level, got[0].message.as_str()), (LogLevel::Info, "deploying disk=nvme0n1"));
        assert_eq!(got[1].level, LogLevel::Warn);
        assert_eq!(got[1].message, "download broke; resuming offset=7 reason=reset");
        assert!(got[1].target.ends_with("logs::tests"), "{}", got[1].target);
        assert_eq!(got[2].level, LogLevel::Error);
        assert!(got[2].message.len() <= MAX_LOG_MESSAGE);
        assert!(Q.take().is_empty(), "taken once");
    }

    #[test]
    fn the_queue_keeps_the_newest_and_says_how_many_fell_out() {
        let q = Forward::new();
        let rec = |i: usize| LogRecord { level: LogLevel::Warn, target: "t".into(), message: i.to_string() };
        for i in 0..MAX_LOGS + 3 {
            q.push(rec(i));
        }
        let got = q.take();
        assert_eq!(got.len(), MAX_LOGS);
        assert_eq!(got[0].message, "4 earlier log lines were dropped");
        assert_eq!(got[1].message, "4");
        assert_eq!(got.last().map(|r| r.message.as_str()), Some(&*(MAX_LOGS + 2).to_string()));
    }
}
