//! The test bed shared by the QEMU suites (`tests/`, crate `byoi-e2e`) and
//! `cargo xtask demo`: the QEMU command line of a netbooting server
//! ([`Qemu`], [`Machine`]), QEMU run under `timeout` so that dropping it
//! stops and reaps it ([`TimedChild`]), and the one-file HTTP server that
//! hands images to the guest ([`FileServer`]). The agent's and the
//! controller's HTTPS tests take their private CA from here too
//! ([`private_ca`]).
//!
//! Only std and `nix`: xtask depends on this crate, and xtask keeps its
//! dependencies few. The controller, which the e2e harness also starts, is
//! not here for that reason.

mod pki;
mod postgres;
mod process;
mod qemu;
mod serve;

pub use pki::private_ca;
pub use postgres::{postgres_database, ENV as POSTGRES_ENV};
pub use process::{children, timed, TimedChild, GRACE};
pub use qemu::{Firmware, Machine, Qemu, OVMF_CODE, OVMF_VARS, QEMU};
pub use serve::FileServer;
