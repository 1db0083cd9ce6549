//! The link's two errors: [`LinkError`], the endpoint cannot start (fatal, at startup), and
//! [`LinkFailure`], a message did not get through to a peer, classified by what the caller should
//! do about it.
//!
//! Errors from quinn, [`wire`] and [`crate::transfer`] become a [`LinkFailure`] here, once; the
//! link's callers `match` on its variants.

use thiserror::Error;

use crate::transfer::TransferError;
use crate::wire::{self, Code, FrameError};

/// The endpoint could not be set up.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The TLS configuration was refused (a bad key or certificate).
    #[error("cannot use this node's certificate and key for TLS: {0}")]
    Tls(String),
    /// The socket could not be used.
    #[error("cannot use the link socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Why a message did not get through to a peer, by what the caller should do. Each variant's
/// text is the plain words for the operator.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LinkFailure {
    /// No connection to the peer could be made (unknown address, no answer, its certificate or
    /// ours refused): nothing was sent; try again later.
    #[error("{0}")]
    Unreachable(String),
    /// The connection or stream broke under way with no word from the peer: try again later; what
    /// was sent may or may not have arrived.
    #[error("{0}")]
    Interrupted(String),
    /// The peer reset the stream with one of the protocol's codes: [`Code::Done`] when it could
    /// not take the message now (its store failed, it is stopping, the same file is arriving on
    /// another stream), another code when it found fault with what it read. Try again later;
    /// [`Code::VersionMismatch`] calls for an upgrade first.
    #[error("{}", reset_text(*.code))]
    Reset {
        /// The code the peer reset the stream with.
        code: Code,
    },
    /// The peer's node refused the message or could not complete it: do not send it again as it
    /// is.
    #[error("{}", .0.message)]
    Refused(wire::Refusal),
    /// The peer broke the protocol (a bad frame, an unexpected message, a forged receipt): sending
    /// the same again is not expected to help.
    #[error("{0}")]
    Noncompliant(String),
    /// This node's own failure (its store, a file of a host, encoding a message): no peer is to
    /// blame.
    #[error("{0}")]
    Local(String),
}

/// The words for a stream the peer reset with `code`.
fn reset_text(code: Code) -> String {
    match code {
        Code::VersionMismatch => "the peer speaks another protocol version; upgrade the older node".into(),
        code => format!("the peer reset the stream: {code:?}"),
    }
}

impl LinkFailure {
    /// The failure for a stream reset or stopped by the peer with the QUIC error `code`: one of
    /// the protocol's codes, or else a peer that does not speak the protocol.
    fn reset(code: quinn::VarInt, text: impl FnOnce() -> String) -> LinkFailure {
        match Code::from_varint(code) {
            Some(code) => LinkFailure::Reset { code },
            None => LinkFailure::Noncompliant(text()),
        }
    }

    /// A message this node could not encode (over the frame limit): its own failure.
    pub(super) fn encoding(e: FrameError) -> LinkFailure {
        LinkFailure::Local(e.to_string())
    }
}

/// A connection lost while a stream was opened.
impl From<quinn::ConnectionError> for LinkFailure {
    fn from(e: quinn::ConnectionError) -> Self {
        LinkFailure::Interrupted(e.to_string())
    }
}

/// Writing a stream failed: the peer stopped it with a code, or the connection went.
impl From<quinn::WriteError> for LinkFailure {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => LinkFailure::reset(code, || e.to_string()),
            e => LinkFailure::Interrupted(e.to_string()),
        }
    }
}

/// Reading a stream failed: the peer reset it with a code, or the connection went.
impl From<quinn::ReadError> for LinkFailure {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => LinkFailure::reset(code, || e.to_string()),
            e => LinkFailure::Interrupted(e.to_string()),
        }
    }
}

/// Reading a frame failed: the stream broke underneath, or the peer sent what is not a frame of
/// the protocol or not the one expected there.
impl From<FrameError> for LinkFailure {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(ref io) => match e.read_error() {
                Some(read) => read.clone().into(),
                None => LinkFailure::Interrupted(io.to_string()),
            },
            e => LinkFailure::Noncompliant(e.to_string()),
        }
    }
}

/// A file that did not go through: the peer refused it, the stream broke, or this node could not
/// read its own file.
impl From<TransferError> for LinkFailure {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Refused(refusal) => LinkFailure::Refused(refusal),
            e @ TransferError::Interrupted(_) => LinkFailure::Interrupted(e.to_string()),
            e @ TransferError::Source { .. } => LinkFailure::Local(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_keep_their_code_and_say_what_to_do() {
        let read = |code: Code| FrameError::Io(quinn::ReadError::Reset(code.varint()).into());
        let version = LinkFailure::from(read(Code::VersionMismatch));
        assert_eq!(version, LinkFailure::Reset { code: Code::VersionMismatch });
        assert!(version.to_string().contains("upgrade the older node"), "{version}");
        assert_eq!(LinkFailure::from(read(Code::Done)).to_string(), "the peer reset the stream: Done");
        let stopped = LinkFailure::from(quinn::WriteError::Stopped(Code::Stalled.varint()));
        assert_eq!(stopped, LinkFailure::Reset { code: Code::Stalled });
        let foreign = LinkFailure::from(quinn::ReadError::Reset(quinn::VarInt::from_u32(999)));
        assert!(matches!(foreign, LinkFailure::Noncompliant(_)), "{foreign:?}");
    }

    #[test]
    fn bad_frames_are_the_peers_and_broken_streams_are_interruptions() {
        assert!(matches!(LinkFailure::from(FrameError::TooLarge(1 << 30)), LinkFailure::Noncompliant(_)));
        assert!(matches!(LinkFailure::from(FrameError::Finished), LinkFailure::Noncompliant(_)));
        let lost = FrameError::Io(quinn::ReadError::ClosedStream.into());
        assert_eq!(LinkFailure::from(lost), LinkFailure::Interrupted("closed stream".into()));
        let eof = FrameError::Io(std::io::ErrorKind::UnexpectedEof.into());
        assert!(matches!(LinkFailure::from(eof), LinkFailure::Interrupted(_)));
    }
}
