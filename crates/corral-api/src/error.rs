//! The error document every Corral REST endpoint returns on failure, and a typed error for it.
//! Callers branch on [`ErrorKind`], never on the words of a message.

use serde::{Deserialize, Serialize};

/// What kind of failure an error is: the part of an error a program may branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request cannot be understood (malformed JSON, a wrong content type).
    BadRequest,
    /// A value in the request is out of range or malformed: the message names the field.
    Invalid,
    /// No valid API token was given.
    Unauthorized,
    /// The named object does not exist.
    NotFound,
    /// An object of that name exists already.
    AlreadyExists,
    /// The object is in a state that does not allow the request now (busy, running, ...).
    Conflict,
    /// The request came after the point of no return (e.g. cancelling a migration whose VM
    /// already runs at the destination).
    TooLate,
    /// No host has room for what was asked.
    NoCapacity,
    /// The service or a host cannot answer now (unreachable, not the leader, standby): try
    /// again later.
    Unavailable,
    /// A fault of Corral itself or of the machine.
    Internal,
    /// A kind this program does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The HTTP status an error of this kind is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::AlreadyExists | ErrorKind::Conflict | ErrorKind::TooLate => 409,
            ErrorKind::Invalid | ErrorKind::NoCapacity => 422,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal | ErrorKind::Unknown => 500,
        }
    }

    /// The kind an error response without a readable error document stands for.
    pub fn from_status(status: u16) -> Self {
        match status {
            400 | 413 | 415 => ErrorKind::BadRequest,
            401 | 403 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            422 => ErrorKind::Invalid,
            502..=504 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }

    /// The word on the wire (`not_found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLate => "too_late",
            ErrorKind::NoCapacity => "no_capacity",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of an error response: what went wrong, and what to do about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What kind of failure this is: the field a program branches on.
    pub kind: ErrorKind,
    /// A sentence saying what is wrong and what to do.
    pub error: String,
}

/// An API error with its HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    /// An error of `kind`, answered with that kind's status.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { status: kind.status(), kind, message: message.into() }
    }
    /// The error an error document stands for, answered with `status`.
    pub fn from_body(status: u16, body: ErrorBody) -> Self {
        Self { status, kind: body.kind, message: body.error }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    /// An object of that name exists already (HTTP 409).
    pub fn already_exists(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, m)
    }
    /// Past the point of no return (HTTP 409).
    pub fn too_late(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLate, m)
    }
    /// A request whose body, path or query does not parse into valid values (HTTP 422): the
    /// message names the field and what a valid value is.
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, m)
    }
    pub fn no_capacity(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NoCapacity, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody { kind: self.kind, error: self.message.clone() }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_kinds_are_tolerated() {
        for k in [ErrorKind::NotFound, ErrorKind::AlreadyExists, ErrorKind::TooLate, ErrorKind::NoCapacity] {
            let s = serde_json::to_string(&k).expect("serialises");
            assert_eq!(s, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&s).expect("parses"), k);
        }
        let b: ErrorBody = serde_json::from_str(r#"{"kind":"from_the_future","error":"x"}"#).expect("tolerated");
        assert_eq!(b.kind, ErrorKind::Unknown);
        assert_eq!(ApiError::too_late("x").status, 409);
        assert_eq!(ApiError::from_body(404, ApiError::not_found("gone").body()).kind, ErrorKind::NotFound);
    }
}
