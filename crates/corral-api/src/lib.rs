//! Corral's API types: the JSON documents exchanged between the CLI, the controller and the
//! agents. Everything on the wire is defined here, so the three sides cannot drift apart.
//!
//! Conventions: names of states and enums are lower-case on the wire; sizes are MiB unless the
//! field name says otherwise; times are milliseconds since the Unix epoch (`*_ms` fields).

#[macro_use]
mod words;

pub mod agent;
pub mod cloud_config;
pub mod cluster;
pub mod drs;
pub mod error;
mod ha;
mod host;
pub mod image;
pub mod migration;
pub mod names;
pub mod size;
pub mod template_dir;
pub mod tunnel;
pub mod types;
mod vm;

pub use error::{ApiError, ErrorBody, ErrorKind};
pub use ha::*;
pub use host::*;
pub use vm::*;

/// The version prefix of every REST path.
pub const API_PREFIX: &str = "/v1";

/// The header a standby controller's 503 answers carry: the URL of the controller that leads,
/// which agents and the CLI follow.
pub const LEADER_HEADER: &str = "x-corral-leader";

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
