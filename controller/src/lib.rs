//! byoi controller: the BYOI API, the agent protocol, iPXE scripts and
//! power control, on embedded SQLite (see `ARCHITECTURE.md`).
//!
//! [`routes`] is the HTTP surface (axum), by audience; [`lifecycle`] the
//! deployment state machine, pure; [`db`] persists it; [`model`] holds the
//! OVH-shaped API bodies; [`power`] drives BMCs; [`server`] runs it all,
//! [`edge`] bounding what each connection may cost and [`datadir`] keeping
//! the data directory private;
//! [`metrics`] counts for Prometheus;
//! [`client`] is the operator's side of the API, for the `byoi` commands.
//! The OpenAPI document is [`routes::openapi`], generated from the handlers
//! and types.

pub mod auth;
pub mod client;
pub mod config;
pub mod datadir;
pub mod db;
pub mod edge;
pub mod ipxe;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod power;
pub mod routes;
pub mod server;
