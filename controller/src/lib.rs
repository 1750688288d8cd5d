//! byoi controller: the BYOI API, the agent protocol, iPXE scripts and
//! power control, on embedded SQLite (see `ARCHITECTURE.md`).

pub mod api;
pub mod client;
pub mod db;
pub mod ipxe;
pub mod model;
pub mod power;
pub mod server;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");
