//! Prometheus metrics (`GET /metrics`, OpenMetrics text), by the
//! `prometheus-client` crate.
//!
//! Two kinds: what this process saw since it started (HTTP requests by
//! route and status and their latency, the agent protocol's calls, power
//! actions and their failures), counted as it happens; and what the
//! database holds (deployments by status and error code, their durations
//! and throughput, bytes written, agents online), read at each scrape, so
//! that it survives restarts and every controller on one database says the
//! same. No label names a server, a URL or a user: they are bounded, and
//! reveal the fleet's shape only.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::db::{Db, DbError};

/// An HTTP request's labels: the route as the router names it (`/1.0`
/// dropped, `unmatched` for the fallback), the method, the status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    /// The route pattern (`/dedicated/server/{serviceName}`).
    pub route: String,
    /// The method.
    pub method: String,
    /// The status code.
    pub status: u16,
}

/// A route's latency labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The route pattern.
    pub route: String,
}

/// An agent protocol call's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentCall {
    /// `hello`, `job`, `progress`, `result`, `heartbeat`, `rescue`.
    pub call: String,
}

/// A power action's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PowerAction {
    /// `manual`, `command`, `ipmi`, `redfish`.
    pub driver: String,
    /// `cycle`, `on`, `off`, `status`, `netboot` (the one-time network boot set before a cycle into the agent).
    pub action: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// A group of deployments' labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Deployments {
    /// `doing`, `done`, `error`.
    pub status: String,
    /// The error code, `""` unless failed.
    pub error_code: String,
}

type Latency = Family<Route, Histogram, fn() -> Histogram>;
type CallLatency = Family<AgentCall, Histogram, fn() -> Histogram>;

/// Seconds, from 1 ms to about 33 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What this process counts as it happens.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<Request, Counter>,
    latency: Latency,
    agent_calls: CallLatency,
    power: Family<PowerAction, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            agent_calls: Family::new_with_constructor(latency_buckets),
            power: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts a request to `route` (the router's pattern) that took
    /// `took`.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let route = crate::routes::without_ovh_prefix(route);
        // Any client may send any method name: one it invents must not
        // make a series of its own.
        let known = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
        let method = known.into_iter().find(|m| *m == method).unwrap_or("other");
        let r = Request { route: route.to_owned(), method: method.to_owned(), status };
        self.requests.get_or_create(&r).inc();
        self.latency.get_or_create(&Route { route: r.route.clone() }).observe(took.as_secs_f64());
        if let Some(call) = route.strip_prefix("/agent/v1/") {
            self.agent_calls.get_or_create(&AgentCall { call: call.to_owned() }).observe(took.as_secs_f64());
        }
    }

    /// Counts a power action and whether it failed.
    pub fn power(&self, driver: &str, action: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.power
            .get_or_create(&PowerAction { driver: driver.into(), action: action.into(), outcome: outcome.into() })
            .inc();
    }

    /// Every metric in OpenMetrics text: this process's, and the
    /// database's as of now (`agent_timeout`: how recent an agent's last
    /// call must be for it to count as online).
    pub async fn render(&self, db: &Db, agent_timeout: Duration) -> Result<String, DbError> {
        let mut r = <Registry>::with_prefix("byoi");
        r.register("http_requests", "HTTP requests answered, by route, method and status", self.requests.clone());
        r.register("http_request_duration_seconds", "Time to answer an HTTP request, by route", self.latency.clone());
        r.register(
            "agent_call_duration_seconds",
            "Time to answer an agent protocol call, by call",
            self.agent_calls.clone(),
        );
        r.register("power_actions", "Power actions run, by driver, action and outcome", self.power.clone());

        let stats = db.deployment_stats(agent_timeout.as_secs() as i64).await?;
        let by_status = Family::<Deployments, Gauge>::default();
        for (status, code, n) in &stats.by_status {
            let labels = Deployments { status: status.clone(), error_code: code.clone().unwrap_or_default() };
            by_status.get_or_create(&labels).set(*n);
        }
        r.register("deployments", "Deployments in the database, by status and error code", by_status);
        let duration = Histogram::new(exponential_buckets(30.0, 2.0, 12));
        let throughput = Histogram::new(exponential_buckets(1_000_000.0, 2.0, 14));
        for d in &stats.done {
            duration.observe(d.seconds as f64);
            if d.seconds > 0 {
                throughput.observe(d.bytes as f64 / d.seconds as f64);
            }
        }
        r.register(
            "deployment_duration_seconds",
            "Time from the request to the end of each successful deployment",
            duration,
        );
        r.register(
            "deployment_throughput_bytes_per_second",
            "Bytes written over the time from the request to the end, of each successful deployment",
            throughput,
        );
        let written = Counter::<u64>::default();
        written.inc_by(stats.bytes_written);
        r.register("bytes_written", "Image bytes the agents received and wrote, every deployment", written);
        let online = Gauge::<i64>::default();
        online.set(stats.agents_online);
        r.register("agents_online", "Servers whose agent called within the agent timeout", online);
        let servers = Gauge::<i64>::default();
        servers.set(stats.servers);
        r.register("servers", "Registered servers", servers);
        let discovered = Gauge::<i64>::default();
        discovered.set(stats.discovered);
        r.register(
            "discovered_machines",
            "Machines no server has that netbooted in discover mode (--enlist)",
            discovered,
        );

        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("writing into a String cannot fail");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded_whatever_the_client_sends() {
        let m = Metrics::default();
        for method in ["GET", "FOO", "BAR", "X-ANYTHING"] {
            m.request("unmatched", method, 405, Duration::from_millis(1));
        }
        m.request("/1.0/dedicated/server", "GET", 200, Duration::from_millis(1));
        let mut r = <Registry>::default();
        r.register("http_requests", "", m.requests.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("http_requests_total")).collect();
        assert_eq!(series.len(), 3, "{text}");
        assert!(text.contains(r#"http_requests_total{route="unmatched",method="other",status="405"} 3"#), "{text}");
        assert!(
            text.contains(r#"http_requests_total{route="/dedicated/server",method="GET",status="200"} 1"#),
            "{text}"
        );
    }
}
