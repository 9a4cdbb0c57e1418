//! The errors of each async operation.
//!
//! Each operation gets a small enum listing what can really happen to it;
//! "would block" never appears because the futures wait instead. A session
//! that ended carries its [`CloseReason`], a stream the peer abandoned carries
//! the peer's code. `From<..> for io::Error` exists so the adapters'
//! `AsyncRead`/`AsyncWrite` impls can report them; the typed error stays
//! reachable through [`io::Error::get_ref`].

use std::fmt;
use std::io;
use std::net::SocketAddr;

use kwik_core::CloseReason;

/// The session could not be established, or has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError(pub CloseReason);

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session closed: {}", self.0)
    }
}
impl std::error::Error for ConnectionError {}

/// A session could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint was closed, or its driver has stopped.
    EndpointClosed,
    /// The server name is not a valid DNS name or IP address.
    InvalidServerName(String),
    /// The remote address cannot be dialled (port 0, unspecified IP).
    InvalidRemoteAddress(SocketAddr),
    /// The QUIC layer refused the attempt.
    Quic(String),
}

impl From<kwik_core::ConnectError> for ConnectError {
    fn from(e: kwik_core::ConnectError) -> Self {
        match e {
            kwik_core::ConnectError::InvalidServerName(name) => Self::InvalidServerName(name),
            kwik_core::ConnectError::InvalidRemoteAddress(addr) => Self::InvalidRemoteAddress(addr),
            kwik_core::ConnectError::Quic(e) => Self::Quic(e),
            other => Self::Quic(format!("{other:?}")),
        }
    }
}

/// [`Incoming::retry`](crate::Incoming::retry) was refused: the attempt
/// already came back from a Retry. Holds the attempt, still pending.
pub struct RetryError<A>(pub(crate) crate::Incoming<A>);

impl<A> RetryError<A> {
    /// The attempt, to accept or refuse instead.
    pub fn into_incoming(self) -> crate::Incoming<A> {
        self.0
    }
}

impl<A> fmt::Debug for RetryError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RetryError").field(&self.0).finish()
    }
}

impl<A> fmt::Display for RetryError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the connection attempt was already retried")
    }
}

impl<A> std::error::Error for RetryError<A> {}

/// Writing to a stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// The peer asked to stop sending with this code; the stream was reset.
    Stopped(u64),
    /// The stream was already finished or reset by this side.
    ClosedStream,
    /// The stream was opened in 0-RTT and the server rejected 0-RTT: it
    /// never saw the stream, nothing written on it was delivered. Open a
    /// stream once the session is established and send again.
    ZeroRttRejected,
    /// The session has ended.
    SessionClosed(CloseReason),
}

/// Reading from a stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// The peer reset the stream with this code.
    Reset(u64),
    /// The stream was stopped by this side, or already read to its end.
    ClosedStream,
    /// The stream was opened in 0-RTT and the server rejected 0-RTT (see
    /// [`WriteError::ZeroRttRejected`]).
    ZeroRttRejected,
    /// The session has ended.
    SessionClosed(CloseReason),
}

/// [`RecvStream::read_to_end`](crate::RecvStream::read_to_end) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadToEndError {
    /// Reading failed.
    Read(ReadError),
    /// The stream held more than the given limit.
    TooLong,
}

/// Finishing, resetting or stopping a stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer asked to stop sending with this code; the stream was reset.
    Stopped(u64),
    /// This half of the stream is already closed.
    ClosedStream,
    /// The stream was opened in 0-RTT and the server rejected 0-RTT (see
    /// [`WriteError::ZeroRttRejected`]).
    ZeroRttRejected,
    /// The session has ended.
    SessionClosed(CloseReason),
}

/// [`SendStream::stopped`](crate::SendStream::stopped) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoppedError {
    /// The stream was opened in 0-RTT and the server rejected 0-RTT (see
    /// [`WriteError::ZeroRttRejected`]).
    ZeroRttRejected,
    /// The session ended before the stream's fate was known.
    SessionClosed(CloseReason),
}

impl From<kwik_core::StreamError> for StreamError {
    fn from(e: kwik_core::StreamError) -> Self {
        match e {
            kwik_core::StreamError::Stopped(code) => Self::Stopped(code),
            kwik_core::StreamError::SessionClosed(reason) => Self::SessionClosed(reason),
            kwik_core::StreamError::ZeroRttRejected => Self::ZeroRttRejected,
            _ => Self::ClosedStream,
        }
    }
}

impl From<ReadError> for ReadToEndError {
    fn from(e: ReadError) -> Self {
        Self::Read(e)
    }
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
    WriteError,
    ReadError,
    ReadToEndError,
    StreamError,
    StoppedError
);

fn io_kind_of_close(reason: &CloseReason) -> io::ErrorKind {
    match reason {
        CloseReason::TimedOut => io::ErrorKind::TimedOut,
        CloseReason::Reset => io::ErrorKind::ConnectionReset,
        CloseReason::Refused => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::ConnectionAborted,
    }
}

impl From<ConnectionError> for io::Error {
    fn from(e: ConnectionError) -> Self {
        io::Error::new(io_kind_of_close(&e.0), e)
    }
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        let kind = match &e {
            WriteError::Stopped(_) => io::ErrorKind::ConnectionReset,
            WriteError::ClosedStream => io::ErrorKind::NotConnected,
            WriteError::ZeroRttRejected => io::ErrorKind::ConnectionRefused,
            WriteError::SessionClosed(reason) => io_kind_of_close(reason),
        };
        io::Error::new(kind, e)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> Self {
        let kind = match &e {
            ReadError::Reset(_) => io::ErrorKind::ConnectionReset,
            ReadError::ClosedStream => io::ErrorKind::NotConnected,
            ReadError::ZeroRttRejected => io::ErrorKind::ConnectionRefused,
            ReadError::SessionClosed(reason) => io_kind_of_close(reason),
        };
        io::Error::new(kind, e)
    }
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        let kind = match &e {
            StreamError::Stopped(_) => io::ErrorKind::ConnectionReset,
            StreamError::ClosedStream => io::ErrorKind::NotConnected,
            StreamError::ZeroRttRejected => io::ErrorKind::ConnectionRefused,
            StreamError::SessionClosed(reason) => io_kind_of_close(reason),
        };
        io::Error::new(kind, e)
    }
}
