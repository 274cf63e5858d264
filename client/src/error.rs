//! The library's one error type.

use std::time::Duration;

/// What can go wrong with a client call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The first connection failed (bad address, refused credentials, ...).
    #[error("could not connect: {0}")]
    Connect(String),
    /// The server refused a request: its error code (`not_found`, `not_authorized`, `invalid`,
    /// `conflict`, `too_large`, `storage`) and message.
    #[error("refused ({code}): {message}")]
    Refused { code: String, message: String },
    /// The server refused a message (v5 PUBACK reason code).
    #[error("message refused by the server (reason 0x{0:02x})")]
    Rejected(u8),
    /// No answer within the request timeout (the request stays queued for the next connection
    /// only until then).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The client was shut down.
    #[error("the client is closed")]
    Closed,
    /// An answer or a file that does not have the shape docs/PROTOCOL.md gives it.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The local history cache.
    #[error("history cache: {0}")]
    Cache(String),
    /// A direct channel.
    #[error("direct channel: {0}")]
    Direct(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The server's error code, for a refused request.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
