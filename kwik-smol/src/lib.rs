//! kwik-smol: kwik sessions on smol / async-io.
//!
//! The driver, the session API and its semantics live in [`kwik_async`];
//! this crate supplies async-io's socket readiness and timer, spawns on
//! smol's global executor, and provides stream types implementing
//! futures-io's [`AsyncRead`]/[`AsyncWrite`]. It does not depend on tokio.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kwik_smol::{Endpoint, dev};
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
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use async_io::Async;
use futures_io::{AsyncRead, AsyncWrite};
use kwik_async::{AsyncTimer, AsyncUdpSocket, Interest, Runtime, UdpSockRef};

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

/// Marker selecting smol / async-io for the [`kwik_async`] API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// An endpoint running on smol.
pub type Endpoint = kwik_async::Endpoint<Smol>;
/// A session running on smol.
pub type Session = kwik_async::Session<Smol>;
/// Keeps a session to one server on smol, reconnecting per a policy.
pub type Reconnector = kwik_async::Reconnector<Smol>;
/// A handshake under way.
pub type Connecting = kwik_async::Connecting<Smol>;
/// A connection attempt waiting for a decision.
pub type Incoming = kwik_async::Incoming<Smol>;
/// [`Incoming::retry`](kwik_async::Incoming::retry) was refused; holds the
/// attempt.
pub type RetryError = kwik_async::RetryError<Smol>;

kwik_async::adapter_streams!();

impl kwik_async::Adapter for Smol {
    type SendStream = SendStream;
    type RecvStream = RecvStream;

    fn runtime() -> io::Result<Arc<dyn Runtime>> {
        Ok(Arc::new(SmolRuntime))
    }
}

/// smol as a [`Runtime`]: async-io's reactor for sockets and timers, smol's
/// global executor for the driver tasks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    fn new_timer(&self, deadline: Instant) -> Box<dyn AsyncTimer> {
        Box::new(Timer(async_io::Timer::at(deadline)))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        smol::spawn(future).detach();
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Box<dyn AsyncUdpSocket>> {
        Ok(Box::new(UdpSocket {
            io: Async::new(socket)?,
            readable: true,
            writable: true,
        }))
    }
}

#[derive(Debug)]
struct Timer(async_io::Timer);

impl AsyncTimer for Timer {
    fn reset(&mut self, deadline: Instant) {
        self.0.set_at(deadline);
    }

    fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// async-io reports readiness once per reactor event, so the last known
/// readiness is cached here: operations run directly until one would block,
/// and only then does the task wait for the reactor.
#[derive(Debug)]
struct UdpSocket {
    io: Async<std::net::UdpSocket>,
    readable: bool,
    writable: bool,
}

impl AsyncUdpSocket for UdpSocket {
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        interest: Interest,
        op: &mut dyn FnMut(UdpSockRef<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let ready = match interest {
                Interest::Readable => &mut self.readable,
                Interest::Writable => &mut self.writable,
            };
            if !*ready {
                match interest {
                    Interest::Readable => ready!(self.io.poll_readable(cx))?,
                    Interest::Writable => ready!(self.io.poll_writable(cx))?,
                }
                match interest {
                    Interest::Readable => self.readable = true,
                    Interest::Writable => self.writable = true,
                }
                continue;
            }
            match op(self.io.get_ref().into()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *ready = false,
                result => return Poll::Ready(result),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
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

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().0.ensure_finished().map_err(Into::into))
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match ready!(self.get_mut().0.poll_read(cx, buf)) {
            Ok(n) => Poll::Ready(Ok(n.unwrap_or(0))),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}
