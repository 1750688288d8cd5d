//! The test bed shared by the QEMU suites (`tests/`, crate `byoi-e2e`) and
//! `cargo xtask demo`: QEMU run under `timeout` so that dropping it stops
//! and reaps it ([`TimedChild`]).
//!
//! Only std and `nix`: xtask depends on this crate, and xtask keeps its
//! dependencies few. The controller, which the e2e harness also starts, is
//! not here for that reason.

mod process;

pub use process::{children, timed, TimedChild, GRACE};
