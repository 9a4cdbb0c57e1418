//! kwik-tokio: kwik sessions on the tokio runtime.
//!
//! The driver, the session API and its semantics live in [`kwik_async`];
//! this crate supplies tokio's socket readiness, timer and `spawn`, and
//! stream types implementing tokio's [`AsyncRead`]/[`AsyncWrite`].
//! Endpoints must be created inside a tokio runtime (with the `net` and
//! `time` drivers enabled); they run on it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kwik_tokio::{Endpoint, dev};
//!
//! let (server_config, client_config) = dev::self_signed(["localhost"]);
//! let server = Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
//! let client = Endpoint::client("127.0.0.1:0".parse()?)?;
//! let connecting = client.connect(server.local_addr(), "localhost", &client_config)?;
//! let session = connecting.await?;
//! let (mut send, mut recv) = session.open_bi().await?;
//! send.write_all(b"hello").await?;
//! send.finish()?;
//! let reply = recv.read_to_end(1 << 20).await?;
//! # Ok(()) }
//! ```
//!
//! Multi-server sessions (a primary adding secondary servers as paths, the
//! multi-source transfer helper, delegation, raw messages, and the
//! secondary side) use the same types; see [`kwik_async`] and the `demo`
//! and `multi` examples:
//!
//! ```text
//! cargo run --release --example demo                  # primary + 2 secondaries + client, one process
//! cargo run --release -p kwik-tokio --example multi -- secondary --listen 127.0.0.1:4434
//! cargo run --release -p kwik-tokio --example multi -- primary --listen 127.0.0.1:4433 --secondary 127.0.0.1:4434
//! cargo run --release -p kwik-tokio --example multi -- client --primary 127.0.0.1:4433 --allow 127.0.0.1:4434
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use kwik_async::{AsyncTimer, AsyncUdpSocket, Interest, Runtime, UdpSockRef};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use kwik_async::Side;
pub use kwik_async::{
    ALPN, ApproveListed, Bytes, Candidate, ClientConfig, CloseError, CloseReason, ConfigError,
    CongestionControl, ConnectError, ConnectionError, Delegation, DelegationId, DisconnectKind,
    EndpointStats, ErrorCode, MAX_STREAM_PRIORITY, MetricsOptions, PathError, PathEvent,
    PathFailure, PathFilter, PathHealth, PathId, PathInfo, PathPolicy, PathState, PathTarget,
    ProposalContext, ProposalDecision, ProposalId, ProposalPolicy, ReadError, ReadToEndError,
    ReconnectError, ReconnectPolicy, RefuseAll, Resource, RetryPolicy, Role, ServerConfig,
    SessionId, SessionStats, SessionsClosed, SharedResource, StoppedError, StreamError, StreamId,
    TokenKey, Transfer, TransferConfig, TransferId, TransportConfig, WriteError, ZeroRtt,
    ZeroRttAccepted, client_config, client_config_trusting, dev, metrics, prometheus_client,
    rustls, scaling, server_config,
};
#[cfg(feature = "qlog")]
pub use kwik_async::{QlogSink, QlogTarget};

/// Marker selecting tokio for the [`kwik_async`] API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

/// An endpoint running on tokio.
pub type Endpoint = kwik_async::Endpoint<Tokio>;
/// A session running on tokio.
pub type Session = kwik_async::Session<Tokio>;
/// Keeps a session to one server on tokio, reconnecting per a policy.
pub type Reconnector = kwik_async::Reconnector<Tokio>;
/// A handshake under way.
pub type Connecting = kwik_async::Connecting<Tokio>;
/// A connection attempt waiting for a decision.
pub type Incoming = kwik_async::Incoming<Tokio>;
/// [`Incoming::retry`](kwik_async::Incoming::retry) was refused; holds the
/// attempt.
pub type RetryError = kwik_async::RetryError<Tokio>;

kwik_async::adapter_streams!();

impl kwik_async::Adapter for Tokio {
    type SendStream = SendStream;
    type RecvStream = RecvStream;

    fn runtime() -> io::Result<Arc<dyn Runtime>> {
        let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        Ok(Arc::new(TokioRuntime(handle)))
    }
}

/// tokio as a [`Runtime`]: spawns on, and registers sockets and timers with,
/// the runtime whose handle it holds.
#[derive(Debug, Clone)]
pub struct TokioRuntime(pub tokio::runtime::Handle);

impl Runtime for TokioRuntime {
    fn new_timer(&self, deadline: Instant) -> Box<dyn AsyncTimer> {
        let _guard = self.0.enter();
        Box::new(Timer(Box::pin(tokio::time::sleep_until(deadline.into()))))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Box<dyn AsyncUdpSocket>> {
        let _guard = self.0.enter();
        Ok(Box::new(UdpSocket(tokio::net::UdpSocket::from_std(
            socket,
        )?)))
    }

    fn now(&self) -> Instant {
        // tokio's clock, so that paused-time tests see consistent deadlines.
        tokio::time::Instant::now().into_std()
    }
}

#[derive(Debug)]
struct Timer(Pin<Box<tokio::time::Sleep>>);

impl AsyncTimer for Timer {
    fn reset(&mut self, deadline: Instant) {
        self.0.as_mut().reset(deadline.into());
    }

    fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

#[derive(Debug)]
struct UdpSocket(tokio::net::UdpSocket);

impl AsyncUdpSocket for UdpSocket {
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        interest: Interest,
        op: &mut dyn FnMut(UdpSockRef<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let socket = &self.0;
        loop {
            let tokio_interest = match interest {
                Interest::Readable => {
                    ready!(socket.poll_recv_ready(cx))?;
                    tokio::io::Interest::READABLE
                }
                Interest::Writable => {
                    ready!(socket.poll_send_ready(cx))?;
                    tokio::io::Interest::WRITABLE
                }
            };
            // try_io clears tokio's cached readiness on WouldBlock, so the
            // next poll_*_ready waits for the reactor.
            match socket.try_io(tokio_interest, || op(socket.into())) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().0.poll_write(cx, buf).map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already in the core; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().0.ensure_finished().map_err(Into::into))
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let max = buf.remaining();
        if max == 0 {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.get_mut().0.poll_read_chunk(cx, max)) {
            Ok(Some(chunk)) => buf.put_slice(&chunk),
            Ok(None) => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
        Poll::Ready(Ok(()))
    }
}

/// The README's example, compiled as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
