//! The error document every Corral REST endpoint returns on failure, and a typed error for it.

use serde::{Deserialize, Serialize};

/// The JSON body of an error response: what went wrong, and what to do about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A machine-readable kind: `bad_request`, `invalid`, `not_found`, `conflict`, `no_capacity`,
    /// `unavailable`, `internal`.
    pub kind: String,
    /// A sentence saying what is wrong and what to do.
    pub error: String,
}

/// An API error with its HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, "bad_request", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(404, "not_found", m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(409, "conflict", m)
    }
    /// A request whose body, path or query does not parse into valid values (HTTP 422): the
    /// message names the field and what a valid value is.
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(422, "invalid", m)
    }
    pub fn no_capacity(m: impl Into<String>) -> Self {
        Self::new(422, "no_capacity", m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(503, "unavailable", m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(500, "internal", m)
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody { kind: self.kind.to_string(), error: self.message.clone() }
    }
}
