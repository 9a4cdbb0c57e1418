//! Error codes on the wire and the typed errors of each operation.
//!
//! kwik closes a session with a QUIC application close whose code is taken
//! from one table ([`ErrorCode`]) in a reserved block, so that a peer can tell
//! kwik's own verdicts from the application's codes. Each operation has its
//! own small error enum, so callers match only what can actually happen.

use std::fmt;

use bytes::Bytes;

/// First code of the block reserved for kwik on the QUIC application-error
/// space (`0x6b77` is "kw"). Applications must not close with codes in
/// `KWIK_CODE_BASE..KWIK_CODE_BASE + 0x100`.
pub const KWIK_CODE_BASE: u64 = 0x6b77_0000;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $text:literal; )*) => {
        /// kwik's protocol error codes; the wire value is
        /// [`KWIK_CODE_BASE`] + the listed offset (see PROTOCOL.md).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The value carried in a QUIC application close.
            pub fn wire(self) -> u64 {
                KWIK_CODE_BASE + match self { $(ErrorCode::$name => $value,)* }
            }

            /// The code a wire value names, if it is one of kwik's.
            pub fn from_wire(code: u64) -> Option<Self> {
                match code.checked_sub(KWIK_CODE_BASE)? {
                    $($value => Some(ErrorCode::$name),)*
                    _ => None,
                }
            }

            /// Stable upper-case name, as used in logs and PROTOCOL.md.
            pub fn name(self) -> &'static str {
                match self { $(ErrorCode::$name => $text,)* }
            }
        }
    };
}

error_codes! {
    /// An implementation fault on the closing side.
    Internal = 0x01, "KWIK_INTERNAL";
    /// A control message or data frame could not be parsed, was oversized,
    /// or referred to a stream that cannot exist.
    InvalidFrame = 0x02, "KWIK_INVALID_FRAME";
    /// The peers share no protocol version.
    VersionMismatch = 0x03, "KWIK_VERSION_MISMATCH";
    /// The peer requires a feature this side does not support.
    FeatureMismatch = 0x04, "KWIK_FEATURE_MISMATCH";
    /// The peer sent past the flow-control credit of a logical stream.
    FlowControl = 0x05, "KWIK_FLOW_CONTROL";
    /// The peer opened more logical streams than it was allowed.
    StreamLimit = 0x06, "KWIK_STREAM_LIMIT";
    /// A message exceeded a size limit.
    PacketTooLarge = 0x07, "KWIK_PACKET_TOO_LARGE";
    /// Different bytes arrived for one offset of a logical stream.
    OffsetMismatch = 0x08, "KWIK_OFFSET_MISMATCH";
    /// A path token was forged, expired, replayed or for another session.
    AuthFailed = 0x09, "KWIK_AUTH_FAILED";
    /// An operation named a path the session does not have.
    PathNotFound = 0x0a, "KWIK_PATH_NOT_FOUND";
    /// An operation named a path that is dead.
    PathDead = 0x0b, "KWIK_PATH_DEAD";
    /// A logical stream could not be created.
    StreamCreateFailed = 0x0c, "KWIK_STREAM_CREATE_FAILED";
    /// The server application refused the session, or the client's path
    /// policy refused an AddPath.
    Refused = 0x0d, "KWIK_REFUSED";
    /// A secondary wrote bytes (or a FIN) outside the ranges delegated to
    /// its path.
    NotDelegated = 0x0e, "KWIK_NOT_DELEGATED";
    /// The peer made this side exceed a configured resource limit (memory
    /// charged to a stream, tables, queues, delegations, rates).
    ResourceLimit = 0x0f, "KWIK_RESOURCE_LIMIT";
    /// The peer's address is banned for an earlier protocol violation.
    Banned = 0x10, "KWIK_BANNED";
    /// The primary refused a path the client proposed (PROTOCOL.md §13);
    /// carried in a ProposalAnswer, never a close code.
    ProposalRefused = 0x11, "KWIK_PROPOSAL_REFUSED";
}

impl ErrorCode {
    /// True for the codes that blame the peer: a connection closed with one
    /// of them ended because the peer broke the protocol or a limit (the
    /// endpoint may ban its address for a while). `KWIK_AUTH_FAILED` is not
    /// one: a client cannot check the token its primary gave it, so a
    /// refused token says nothing about the client.
    pub fn is_peer_fault(self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidFrame
                | ErrorCode::FlowControl
                | ErrorCode::StreamLimit
                | ErrorCode::PacketTooLarge
                | ErrorCode::OffsetMismatch
                | ErrorCode::NotDelegated
                | ErrorCode::ResourceLimit
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This application closed the session.
    LocallyClosed,
    /// The peer application closed the session with its own code.
    ApplicationClosed {
        /// The application's code.
        code: u64,
        /// The application's reason bytes.
        reason: Bytes,
    },
    /// A kwik protocol error ended the session.
    Protocol {
        /// The kwik code.
        code: ErrorCode,
        /// Human-readable detail.
        reason: String,
        /// True if the peer detected the error, false if this side did.
        by_peer: bool,
    },
    /// Nothing was heard from the peer within the idle timeout.
    TimedOut,
    /// The QUIC or TLS layer failed (handshake refused, wrong ALPN,
    /// certificate rejected, …).
    Transport(String),
    /// The peer reset the connection statelessly.
    Reset,
    /// The server refused the connection attempt statelessly (QUIC
    /// `CONNECTION_REFUSED`): it was at its handshake or session limit, or
    /// this address is banned (the two look the same from here,
    /// PROTOCOL.md §11.4).
    Refused,
    /// The local endpoint shut down.
    EndpointClosed,
    /// Client: the primary went silent — probes unanswered for several
    /// probe timeouts (PROTOCOL.md §10.8). The primary is the session's
    /// offset authority, so the session cannot go on without it.
    PrimaryLost,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::LocallyClosed => f.write_str("closed locally"),
            CloseReason::ApplicationClosed { code, reason } => {
                write!(f, "closed by peer application: code {code}")?;
                if !reason.is_empty() {
                    write!(f, " ({})", String::from_utf8_lossy(reason))?;
                }
                Ok(())
            }
            CloseReason::Protocol {
                code,
                reason,
                by_peer,
            } => {
                let who = if *by_peer { "peer" } else { "local" };
                write!(f, "{code} ({who}): {reason}")
            }
            CloseReason::TimedOut => f.write_str("timed out: the peer went silent"),
            CloseReason::Transport(e) => write!(f, "transport error: {e}"),
            CloseReason::Reset => f.write_str("reset by peer"),
            CloseReason::Refused => f.write_str("connection refused by the server"),
            CloseReason::EndpointClosed => f.write_str("endpoint closed"),
            CloseReason::PrimaryLost => f.write_str("primary lost: it stopped answering"),
        }
    }
}

impl std::error::Error for CloseReason {}

/// The broad class of a [`CloseReason`], for logs, metrics and reconnect
/// policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DisconnectKind {
    /// Closed on purpose by an application or the endpoint.
    Normal,
    /// The peer went silent (idle timeout) or reset the connection.
    Timeout,
    /// One side broke the kwik or QUIC protocol.
    ProtocolViolation,
    /// One side exceeded a configured resource limit.
    ResourceLimit,
    /// The peer's address is banned.
    Banned,
    /// The server refused the attempt statelessly: at its limits, or a
    /// ban (see [`CloseReason::Refused`]).
    Refused,
    /// The QUIC or TLS layer failed (handshake, certificate, ALPN,
    /// version), or the server application refused the session.
    Transport,
}

impl DisconnectKind {
    /// Every kind, in declaration order.
    pub const ALL: [DisconnectKind; 7] = [
        DisconnectKind::Normal,
        DisconnectKind::Timeout,
        DisconnectKind::ProtocolViolation,
        DisconnectKind::ResourceLimit,
        DisconnectKind::Banned,
        DisconnectKind::Refused,
        DisconnectKind::Transport,
    ];

    /// A stable snake_case name (`normal`, `timeout`,
    /// `protocol_violation`, `resource_limit`, `banned`, `refused`,
    /// `transport`), for
    /// logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectKind::Normal => "normal",
            DisconnectKind::Timeout => "timeout",
            DisconnectKind::ProtocolViolation => "protocol_violation",
            DisconnectKind::ResourceLimit => "resource_limit",
            DisconnectKind::Banned => "banned",
            DisconnectKind::Refused => "refused",
            DisconnectKind::Transport => "transport",
        }
    }
}

impl fmt::Display for DisconnectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CloseReason {
    /// The broad class of this reason.
    pub fn kind(&self) -> DisconnectKind {
        match self {
            CloseReason::LocallyClosed
            | CloseReason::ApplicationClosed { .. }
            | CloseReason::EndpointClosed => DisconnectKind::Normal,
            CloseReason::TimedOut | CloseReason::Reset | CloseReason::PrimaryLost => {
                DisconnectKind::Timeout
            }
            CloseReason::Protocol { code, .. } => match code {
                ErrorCode::ResourceLimit => DisconnectKind::ResourceLimit,
                ErrorCode::Banned => DisconnectKind::Banned,
                ErrorCode::Refused
                | ErrorCode::ProposalRefused
                | ErrorCode::VersionMismatch
                | ErrorCode::FeatureMismatch => DisconnectKind::Transport,
                _ => DisconnectKind::ProtocolViolation,
            },
            CloseReason::Refused => DisconnectKind::Refused,
            CloseReason::Transport(_) => DisconnectKind::Transport,
        }
    }

    /// The kwik code, if the session ended on a kwik protocol error.
    pub fn protocol_code(&self) -> Option<ErrorCode> {
        match self {
            CloseReason::Protocol { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Maps quinn-proto's verdict onto kwik's.
    pub(crate) fn from_quinn(err: quinn_proto::ConnectionError) -> Self {
        use quinn_proto::ConnectionError as E;
        match err {
            E::ApplicationClosed(close) => {
                let code = close.error_code.into_inner();
                match ErrorCode::from_wire(code) {
                    Some(code) => CloseReason::Protocol {
                        code,
                        reason: bounded_reason(&String::from_utf8_lossy(&close.reason)).into(),
                        by_peer: true,
                    },
                    None => CloseReason::ApplicationClosed {
                        code,
                        reason: close.reason,
                    },
                }
            }
            E::TimedOut => CloseReason::TimedOut,
            E::ConnectionClosed(c)
                if c.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED =>
            {
                CloseReason::Refused
            }
            E::Reset => CloseReason::Reset,
            E::LocallyClosed => CloseReason::LocallyClosed,
            other => CloseReason::Transport(other.to_string()),
        }
    }
}

/// Longest reason phrase kwik sends or keeps from a peer (bytes).
pub(crate) const MAX_REASON: usize = 512;

/// `reason` cut to at most [`MAX_REASON`] bytes, at a character boundary:
/// a peer's close reason is relayed (PathStatus) and must not grow anything.
pub(crate) fn bounded_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Error of starting a client session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server name is not a valid DNS name or IP address.
    InvalidServerName(String),
    /// The remote address cannot be dialled (port 0, unspecified IP).
    InvalidRemoteAddress(std::net::SocketAddr),
    /// quinn-proto refused the attempt (for instance, no connection ids left).
    Quic(String),
}

/// Error of opening a logical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// The session is not established yet.
    NotEstablished,
    /// The peer's stream limit is reached; wait for
    /// [`Event::StreamsAvailable`](crate::Event::StreamsAvailable).
    Blocked,
    /// The session has ended.
    SessionClosed(CloseReason),
}

/// Error of writing to a logical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// Nothing can be written now; a
    /// [`Event::StreamWritable`](crate::Event::StreamWritable) follows when it can.
    Blocked,
    /// The peer asked to stop with this code; the stream has been reset.
    Stopped(u64),
    /// The stream was finished or reset locally, or is not writable by this side.
    ClosedStream,
    /// The write would reach past 2^62 or past the stream's final size (a
    /// FIN already written or delegated), or put a FIN elsewhere.
    OutOfRange,
    /// Secondary: the bytes (or the FIN) were not delegated to this path;
    /// the client would refuse them and drop the path.
    NotDelegated,
    /// The stream was opened for 0-RTT and the server rejected 0-RTT: it
    /// never saw the stream, and nothing written on it was delivered. Open
    /// a new stream to send it again (see [`crate::ZeroRtt::Rejected`]).
    ZeroRttRejected,
    /// The session has ended.
    SessionClosed(CloseReason),
}

/// Error of reading from a logical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// No data is available now; a
    /// [`Event::StreamReadable`](crate::Event::StreamReadable) follows when it is.
    Blocked,
    /// The peer reset the stream with this code.
    Reset(u64),
    /// The stream was stopped locally, already read to its end, or is not
    /// readable by this side.
    ClosedStream,
    /// The stream was opened for 0-RTT and the server rejected 0-RTT (see
    /// [`WriteError::ZeroRttRejected`]).
    ZeroRttRejected,
    /// The session has ended.
    SessionClosed(CloseReason),
}

/// Error of finishing, resetting or stopping a logical stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer asked to stop with this code; the stream has been reset.
    Stopped(u64),
    /// The stream half is already closed, or does not exist on this side.
    ClosedStream,
    /// The stream was opened for 0-RTT and the server rejected 0-RTT (see
    /// [`WriteError::ZeroRttRejected`]).
    ZeroRttRejected,
    /// The session has ended.
    SessionClosed(CloseReason),
}

/// Error of closing a session with an application code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseError {
    /// The code lies in kwik's reserved block (see [`KWIK_CODE_BASE`]) or
    /// does not fit a QUIC varint.
    ReservedCode(u64),
}

macro_rules! display_via_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
        impl std::error::Error for $t {}
    )*};
}
display_via_debug!(
    ConnectError,
    OpenError,
    WriteError,
    ReadError,
    StreamError,
    CloseError
);

/// A protocol violation detected locally: closes the session with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub code: ErrorCode,
    pub reason: String,
}

impl Violation {
    pub(crate) fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.wire()));
            assert_eq!(ErrorCode::from_wire(code.wire()), Some(code));
            assert!(code.name().starts_with("KWIK_"));
        }
        assert_eq!(ErrorCode::from_wire(7), None);
        assert_eq!(ErrorCode::from_wire(KWIK_CODE_BASE + 0xff), None);
    }
}
