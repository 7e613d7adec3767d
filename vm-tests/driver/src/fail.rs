//! The one error a VM test returns: what went wrong, in words, for the report.

use std::fmt;

/// A failed check or a failed call, with the context that says which.
#[derive(Debug)]
pub struct Fail(pub String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Fail {
        Fail(format!("gRPC {:?}: {}", s.code(), s.message()))
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail(format!("I/O: {e}"))
    }
}

pub type Result<T, E = Fail> = std::result::Result<T, E>;

/// Adds what was being done to an error.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Fail>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Fail(format!("{what}: {}", e.into())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Fail(format!("{what}: missing")))
    }
}

/// `check!(condition, "message {}", args)`: fails the test with the message
/// when the condition does not hold.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err($crate::fail::Fail(format!($($msg)+)));
        }
    };
}

/// `check_eq!(left, right, "what")`: fails with both values when they differ.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err($crate::fail::Fail(format!(
                "{}: got {:?}, want {:?}",
                format!($($msg)+),
                l,
                r
            )));
        }
    }};
}
