//! How the engine reports a failure to its caller: a kind (which the server maps
//! to a gRPC code) and a message. A [`Failure`] crosses process boundaries as
//! JSON (a helper's ready line, a monitor's control-socket answer), so it holds
//! plain data only; the constructors here are the one place that words it.

use serde::{Deserialize, Serialize};
use std::fmt::Display;

/// Kinds of failure the engine reports back; the server maps them to gRPC codes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    NotFound,
    InvalidArgument,
    PermissionDenied,
    FailedPrecondition,
    Internal,
}

/// One failure, as the engine reports it to its caller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// `what` failed because of `cause`, as "`what`: `cause`".
    pub fn caused(kind: FailureKind, what: impl Display, cause: impl Display) -> Self {
        Failure::new(kind, format!("{what}: {cause}"))
    }

    /// A step of ours failed (a system call, a file we own): the caller's
    /// request was fine.
    pub fn internal(what: impl Display, cause: impl Display) -> Self {
        Failure::caused(FailureKind::Internal, what, cause)
    }

    /// The request itself is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(FailureKind::InvalidArgument, message)
    }

    /// Something the request names does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Failure::new(FailureKind::NotFound, message)
    }

    /// The request is fine but the state it meets does not allow it.
    pub fn precondition(message: impl Into<String>) -> Self {
        Failure::new(FailureKind::FailedPrecondition, message)
    }

    /// The request is refused for lack of permission.
    pub fn permission(message: impl Into<String>) -> Self {
        Failure::new(FailureKind::PermissionDenied, message)
    }
}

impl Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_kind_and_words() {
        let f = Failure::internal("mount /x", "EPERM");
        assert_eq!(f.kind, FailureKind::Internal);
        assert_eq!(f.to_string(), "mount /x: EPERM");
        assert_eq!(Failure::invalid("bad").kind, FailureKind::InvalidArgument);
        assert_eq!(Failure::not_found("gone").kind, FailureKind::NotFound);
        assert_eq!(
            Failure::precondition("later").kind,
            FailureKind::FailedPrecondition
        );
        assert_eq!(
            Failure::permission("no").kind,
            FailureKind::PermissionDenied
        );
        let c = Failure::caused(FailureKind::NotFound, "open ns", "ENOENT");
        assert_eq!(
            (c.kind, c.message.as_str()),
            (FailureKind::NotFound, "open ns: ENOENT")
        );
    }

    #[test]
    fn wire_form_is_stable() {
        // The server and older monitors read this JSON: the field and kind
        // names are part of the helper protocol.
        let f = Failure::precondition("already started");
        assert_eq!(
            serde_json::to_string(&f).expect("serialize"),
            r#"{"kind":"failed_precondition","message":"already started"}"#
        );
        let back: Failure =
            serde_json::from_str(r#"{"kind":"not_found","message":"x"}"#).expect("parse");
        assert_eq!(back, Failure::not_found("x"));
    }
}
