//! [`Endpoint`]: one UDP socket's worth of kwik sessions, plus the pending
//! connection attempts ([`Incoming`]) and handshakes ([`Connecting`]).

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use kwik_core::{
    Candidate, ClientConfig, CloseReason, EndpointStats, IncomingId, ServerConfig, SharedResource,
    Side,
};

use crate::error::{ConnectError, ConnectionError, RetryError};
use crate::runtime::{Adapter, Runtime};
use crate::session::{Session, SessionRef, ZeroRttAccepted};
use crate::shared::{SessionSlot, Shared, register};

/// Adapts a server configuration to the adapter: every attempt surfaces as
/// an [`Incoming`] for the application to decide on, so the core must not
/// accept on its own; and since path tokens name their secondary, a
/// secondary answers to the address it is bound to unless told otherwise
/// (an unspecified IP matches any IP on that port).
pub(crate) fn adapt_server_config(mut config: ServerConfig, local: SocketAddr) -> ServerConfig {
    config.auto_accept = false;
    if config.path_addresses.is_empty() {
        config.path_addresses.push(local);
    }
    config
}

/// A UDP socket with the kwik sessions running over it: dials out, and with
/// a server configuration also accepts.
///
/// Cloning gives another handle to the same endpoint. The driver task keeps
/// running while any handle or any session lives; once every handle is
/// dropped the endpoint stops accepting, and it ends when its sessions have.
pub struct Endpoint<A> {
    inner: Arc<EndpointRef>,
    _adapter: PhantomData<fn() -> A>,
}

/// Tells the driver when the last `Endpoint` handle goes.
struct EndpointRef(Arc<Shared>);

impl Drop for EndpointRef {
    fn drop(&mut self) {
        let Some(mut state) = self.0.lock_for_drop() else {
            return;
        };
        state.handles_gone = true;
        let mut wake = Vec::new();
        state.stop_accepting(&mut wake);
        state.kick();
        drop(state);
        wake.into_iter().for_each(|w| w.wake());
    }
}

impl<A> Clone for Endpoint<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _adapter: PhantomData,
        }
    }
}

impl<A> fmt::Debug for Endpoint<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.inner.0.local_addr)
            .finish_non_exhaustive()
    }
}

impl<A: Adapter> Endpoint<A> {
    /// Binds a server endpoint to `addr` (port 0 picks a free port).
    ///
    /// Every connection attempt surfaces through [`accept`](Self::accept);
    /// `config.auto_accept` is ignored.
    ///
    /// # Errors
    /// If the socket cannot be bound or registered, or no runtime is running.
    pub fn server(config: ServerConfig, addr: SocketAddr) -> io::Result<Self> {
        Self::new(std::net::UdpSocket::bind(addr)?, Some(config))
    }

    /// Binds a client-only endpoint to `addr` (usually `127.0.0.1:0` or
    /// `[::]:0`).
    ///
    /// # Errors
    /// As [`server`](Self::server).
    pub fn client(addr: SocketAddr) -> io::Result<Self> {
        Self::new(std::net::UdpSocket::bind(addr)?, None)
    }

    /// Runs an endpoint over an already bound socket on the adapter's runtime.
    ///
    /// # Errors
    /// As [`server`](Self::server).
    pub fn new(socket: std::net::UdpSocket, server: Option<ServerConfig>) -> io::Result<Self> {
        Self::with_runtime(A::runtime()?, socket, server)
    }

    /// Runs an endpoint over `socket` on the adapter's runtime, sending at
    /// most `bits_per_second` of UDP payload (see
    /// [`rate_limited`](crate::rate_limited)): for demonstrations and
    /// benchmarks of aggregation on loopback.
    ///
    /// # Errors
    /// As [`server`](Self::server).
    ///
    /// # Panics
    /// If `bits_per_second` is 0.
    pub fn with_send_rate(
        socket: std::net::UdpSocket,
        server: Option<ServerConfig>,
        bits_per_second: u64,
    ) -> io::Result<Self> {
        let runtime = crate::throttle::rate_limited(A::runtime()?, bits_per_second);
        Self::with_runtime(runtime, socket, server)
    }

    /// Runs an endpoint over `socket` on an explicitly given runtime.
    ///
    /// # Errors
    /// If the socket cannot be configured or registered with the runtime.
    pub fn with_runtime(
        runtime: Arc<dyn Runtime>,
        socket: std::net::UdpSocket,
        server: Option<ServerConfig>,
    ) -> io::Result<Self> {
        let shared = crate::driver::start(runtime, socket, server)?;
        Ok(Self {
            inner: Arc::new(EndpointRef(shared)),
            _adapter: PhantomData,
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.0
    }

    /// The runtime the endpoint's driver runs on.
    pub(crate) fn runtime(&self) -> Arc<dyn Runtime> {
        self.shared().runtime.clone()
    }

    /// Starts a session with the server at `addr`, whose certificate must be
    /// valid for `server_name`. Await the returned [`Connecting`].
    ///
    /// # Errors
    /// If the endpoint is closed or the address or name are unusable.
    pub fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
    ) -> Result<Connecting<A>, ConnectError> {
        let shared = self.shared();
        let mut state = shared.lock();
        if state.closed {
            return Err(ConnectError::EndpointClosed);
        }
        let now = shared.runtime.now();
        let handle = state.endpoint.connect(now, addr, server_name, config)?;
        let span = tracing::debug_span!(target: kwik_core::log::SPANS, parent: &shared.span, "kwik_session", session = handle.0, remote = %addr);
        span.in_scope(
            || tracing::debug!(target: kwik_core::log::DRIVER, server_name, "connecting"),
        );
        state
            .sessions
            .insert(handle, SessionSlot::new(Side::Client, span));
        state.kick();
        Ok(Connecting::new(
            SessionRef::new(shared.clone(), handle, addr),
            addr,
        ))
    }

    /// The next connection attempt; `None` once the endpoint is closed (a
    /// client-only endpoint never yields one).
    pub async fn accept(&self) -> Option<Incoming<A>> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Option<Incoming<A>>> {
        let mut state = self.shared().lock();
        if let Some(pending) = state.incoming.pop_front() {
            return Poll::Ready(Some(Incoming {
                shared: self.shared().clone(),
                id: pending.id,
                remote: pending.remote,
                address_validated: pending.address_validated,
                decided: false,
                _adapter: PhantomData,
            }));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        state.accept.register(cx.waker());
        Poll::Pending
    }

    /// Closes every session with `code` and `reason`, refuses pending and
    /// future connection attempts, and fails later [`connect`](Self::connect)s.
    /// Await [`wait_idle`](Self::wait_idle) to let the peers hear of it.
    pub fn close(&self, code: u64, reason: &[u8]) {
        let mut state = self.shared().lock();
        state.endpoint.close(code, reason);
        let mut wake = Vec::new();
        state.stop_accepting(&mut wake);
        state.kick();
        drop(state);
        wake.into_iter().for_each(|w| w.wake());
    }

    /// Completes once no session is left (all closed and drained).
    pub async fn wait_idle(&self) {
        poll_fn(|cx| {
            let mut state = self.shared().lock();
            if state.endpoint.is_idle() || state.driver_gone {
                return Poll::Ready(());
            }
            state.idle.register(cx.waker());
            Poll::Pending
        })
        .await;
    }

    /// Secondary: serves every delegation whose descriptor is `descriptor`
    /// from `resource`, without involving the application (such
    /// delegations are not surfaced by
    /// [`Session::delegated`](crate::Session::delegated)). Replaces what was
    /// registered under the same descriptor.
    pub fn serve_resource(&self, descriptor: impl Into<Bytes>, resource: SharedResource) {
        let mut state = self.shared().lock();
        state.endpoint.serve_resource(descriptor.into(), resource);
    }

    /// Primary: replaces the servers automatic scaling
    /// ([`ServerConfig::autoscale`](kwik_core::ServerConfig::autoscale)) may
    /// add as secondary paths — typically what a discovery source found.
    /// This endpoint's own address (its `path_addresses`, the bound socket
    /// address by default) is never taken.
    pub fn set_candidates(&self, candidates: Vec<Candidate>) {
        self.shared().lock().endpoint.set_candidates(candidates);
    }

    /// Replaces the server configuration; `None` stops accepting new
    /// sessions (existing ones keep theirs).
    pub fn set_server_config(&self, config: Option<ServerConfig>) {
        let mut state = self.shared().lock();
        if !state.closed {
            let local = self.shared().local_addr;
            state
                .endpoint
                .set_server_config(config.map(|c| adapt_server_config(c, local)));
        }
    }

    /// Counters of the server side: sessions, half-open handshakes,
    /// retries, refusals, handshake timeouts and bans (see
    /// [`kwik_core::EndpointStats`]).
    pub fn stats(&self) -> EndpointStats {
        self.shared().lock().endpoint.stats()
    }

    /// The local address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared().local_addr
    }

    /// Stops the endpoint at once as if its process had died: nothing more
    /// is sent (no close), its socket is released, its sessions end locally.
    #[cfg(feature = "testing")]
    pub fn abort(&self) {
        let mut state = self.shared().lock();
        state.aborted = true;
        state.kick();
    }

    /// How many sessions and streams the adapter still keeps records of
    /// (for leak checks in tests).
    #[cfg(feature = "testing")]
    pub fn tracked(&self) -> (usize, usize) {
        let state = self.shared().lock();
        (state.sessions.len(), state.streams.len())
    }
}

/// A connection attempt waiting for the application's decision. Dropping it
/// refuses it.
///
/// Attempts the endpoint's own defences turned away (banned addresses, the
/// Retry policy, the half-open and session limits of the
/// [`ServerConfig`]) never get here.
pub struct Incoming<A> {
    shared: Arc<Shared>,
    id: IncomingId,
    remote: SocketAddr,
    address_validated: bool,
    decided: bool,
    _adapter: PhantomData<fn() -> A>,
}

impl<A> fmt::Debug for Incoming<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("remote", &self.remote)
            .field("address_validated", &self.address_validated)
            .finish_non_exhaustive()
    }
}

impl<A: Adapter> Incoming<A> {
    /// Where the attempt comes from.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// True if the client proved it receives at
    /// [`remote_address`](Self::remote_address): it came back with the token
    /// of a [`retry`](Self::retry). Otherwise the address may be forged.
    pub fn remote_address_validated(&self) -> bool {
        self.address_validated
    }

    /// Asks the client to prove its address: a QUIC Retry is sent and this
    /// attempt ends. A client that really is at its address comes back as a
    /// new [`Incoming`] (from [`Endpoint::accept`]) whose address is
    /// validated; one with a forged address never does.
    ///
    /// # Errors
    /// If the attempt already came back from a Retry (QUIC allows one);
    /// the error gives the attempt back to accept or refuse.
    pub fn retry(mut self) -> Result<(), RetryError<A>> {
        let mut state = self.shared.lock();
        let result = state.endpoint.retry(self.id);
        state.kick();
        drop(state);
        match result {
            Ok(()) => {
                self.decided = true;
                Ok(())
            }
            Err(kwik_core::RetryError::AlreadyRetried) => Err(RetryError(self)),
            // The endpoint closed and refused the attempt meanwhile: it has
            // ended, as a retry would have ended it.
            Err(_) => {
                self.decided = true;
                Ok(())
            }
        }
    }

    /// Accepts the attempt; await the [`Connecting`] for the session.
    pub fn accept(mut self) -> Connecting<A> {
        self.decided = true;
        let mut state = self.shared.lock();
        let accepted = state.endpoint.accept(self.id);
        state.kick();
        match accepted {
            Ok(Some(handle)) => {
                let span = tracing::debug_span!(target: kwik_core::log::SPANS, parent: &self.shared.span, "kwik_session", session = handle.0, remote = %self.remote);
                span.in_scope(|| tracing::debug!(target: kwik_core::log::DRIVER, "accepted"));
                state
                    .sessions
                    .insert(handle, SessionSlot::new(Side::Server, span));
                drop(state);
                let session = SessionRef::new(self.shared.clone(), handle, self.remote);
                Connecting::new(session, self.remote)
            }
            // quinn-proto rejected the attempt (and told the peer), or the
            // endpoint closed and refused it meanwhile.
            Ok(None) | Err(_) => Connecting::failed(
                CloseReason::Transport("connection attempt rejected".into()),
                self.remote,
            ),
        }
    }

    /// Refuses the attempt; the client sees a connection refusal.
    pub fn refuse(self) {
        // Dropping an undecided attempt refuses it.
    }
}

impl<A> Drop for Incoming<A> {
    fn drop(&mut self) {
        if !self.decided
            && let Some(mut state) = self.shared.lock_for_drop()
        {
            let _ = state.endpoint.refuse(self.id);
            state.kick();
        }
    }
}

/// A session whose handshake is under way; resolves to the [`Session`] once
/// the kwik handshake completes — or, on a secondary server, once the client
/// joined it as a path of a session (then
/// [`Session::joined_path`](crate::Session::joined_path) is set and the
/// application serves [`Session::delegated`](crate::Session::delegated) and
/// [`Session::recv_raw`](crate::Session::recv_raw)). Dropping it abandons
/// the session.
pub struct Connecting<A> {
    session: Option<Arc<SessionRef>>,
    failed: Option<CloseReason>,
    remote: SocketAddr,
    _adapter: PhantomData<fn() -> A>,
}

impl<A> fmt::Debug for Connecting<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connecting")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl<A> Connecting<A> {
    fn new(session: Arc<SessionRef>, remote: SocketAddr) -> Self {
        Self {
            session: Some(session),
            failed: None,
            remote,
            _adapter: PhantomData,
        }
    }

    fn failed(reason: CloseReason, remote: SocketAddr) -> Self {
        Self {
            session: None,
            failed: Some(reason),
            remote,
            _adapter: PhantomData,
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }
}

impl<A: Adapter> Connecting<A> {
    /// Client: sends the Hello in 0-RTT (PROTOCOL.md §12) and hands the
    /// session out at once, before its handshake completed, as quinn's
    /// `Connecting::into_0rtt` does. This works if the client configuration
    /// holds a ticket from an earlier session with this server (same server
    /// name) that allows early data, and the handshake has not completed yet
    /// (call it right after [`Endpoint::connect`]); otherwise the
    /// `Connecting` comes back unchanged, to be awaited — also when the
    /// handshake won the race, in which case awaiting it is immediate and
    /// nothing is lost by sending normally.
    ///
    /// On the session, streams opened with
    /// [`open_bi_idempotent`](Session::open_bi_idempotent) or
    /// [`open_uni_idempotent`](Session::open_uni_idempotent) send in 0-RTT:
    /// the application declares their data harmless if replayed. Other
    /// opens wait until the session is established. The answer comes in
    /// 0.5-RTT, a round trip after dialling. [`ZeroRttAccepted`] tells
    /// whether the server took the 0-RTT data: if it did not, the session
    /// goes on (the Hello is sent again), and the streams opened in 0-RTT
    /// fail with `ZeroRttRejected` — nothing of them reached the server.
    ///
    /// On a server this always gives the `Connecting` back: with
    /// [`ServerConfig::early_data`](kwik_core::ServerConfig::early_data) on,
    /// awaiting it already yields the session as soon as a 0-RTT Hello is
    /// accepted (see [`Session::zero_rtt`]).
    ///
    /// # Errors
    /// The `Connecting` itself, when 0-RTT is not possible.
    pub fn into_0rtt(self) -> Result<(Session<A>, ZeroRttAccepted), Self> {
        let Some(session) = self.session.as_ref() else {
            return Err(self);
        };
        let mut state = session.shared.lock();
        let started = state
            .endpoint
            .session(session.handle)
            .is_some_and(|mut view| view.side() == Side::Client && view.start_0rtt());
        if !started {
            drop(state);
            return Err(self);
        }
        state.kick();
        drop(state);
        let mut this = self;
        let inner = this.session.take().expect("checked above");
        Ok((Session::early(inner.clone()), ZeroRttAccepted::new(inner)))
    }
}

impl<A: Adapter> Future for Connecting<A> {
    type Output = Result<Session<A>, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(reason) = self.failed.take() {
            return Poll::Ready(Err(ConnectionError(reason)));
        }
        let session = self
            .session
            .as_ref()
            .expect("Connecting polled after completion");
        let mut state = session.shared.lock();
        let Some(slot) = state.sessions.get_mut(&session.handle) else {
            return Poll::Ready(Err(ConnectionError(CloseReason::EndpointClosed)));
        };
        if let Some(id) = slot.id {
            drop(state);
            let session = self.session.take().expect("checked above");
            return Poll::Ready(Ok(Session::new(session, id)));
        }
        if let Some(reason) = slot.close.clone() {
            return Poll::Ready(Err(ConnectionError(reason)));
        }
        register(&mut slot.connecting, cx.waker());
        Poll::Pending
    }
}
