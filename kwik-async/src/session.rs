//! [`Session`]: the application's handle on one kwik session.
//!
//! A `Session` is a cheap clone of one shared [`SessionRef`]; streams hold
//! the same reference, so the session stays open while any of them is in
//! use, and closes (code 0) when the last one is dropped. Each method is one
//! short critical section on the endpoint state calling the core's
//! `SessionView`; the multi-server verbs (paths, raw data, delegation,
//! transfers) are added the same way in `multi.rs`.

use std::fmt;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use kwik_core::{
    CloseError, CloseReason, Dir, OpenError, SessionHandle, SessionId, SessionStats, ZeroRtt,
};

use crate::error::ConnectionError;
use crate::runtime::Adapter;
use crate::shared::{Shared, dir_index};
use crate::stream::{RecvStream, SendStream};
use kwik_core::StreamId;

/// The reference every handle of one session shares; its drop releases the
/// session.
pub(crate) struct SessionRef {
    pub(crate) shared: Arc<Shared>,
    pub(crate) handle: SessionHandle,
    /// The peer's address when the session started.
    remote: SocketAddr,
    /// The server-assigned id, once known (a session handed out by
    /// `Connecting::into_0rtt` learns it with the Welcome).
    id: OnceLock<SessionId>,
}

impl SessionRef {
    pub(crate) fn new(shared: Arc<Shared>, handle: SessionHandle, remote: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            shared,
            handle,
            remote,
            id: OnceLock::new(),
        })
    }

    /// Opens a stream; `idempotent` lets it ride in 0-RTT. Before the kwik
    /// handshake completed (a session from `into_0rtt`), an open that the
    /// core cannot do yet waits for it. Returns the id and whether the
    /// stream was opened in 0-RTT.
    fn poll_open(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
        idempotent: bool,
    ) -> Poll<Result<(StreamId, bool), ConnectionError>> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.session_closed(self.handle) {
            return Poll::Ready(Err(ConnectionError(reason)));
        }
        let opened = match state.endpoint.session(self.handle) {
            Some(mut view) => {
                let early = !view.is_established();
                let opened = if idempotent {
                    view.open_idempotent(dir)
                } else {
                    view.open(dir)
                };
                opened.map(|id| (id, early))
            }
            None => Err(OpenError::SessionClosed(CloseReason::EndpointClosed)),
        };
        match opened {
            Ok((id, early)) => {
                state.stream_handed_out(self.handle, id);
                if early {
                    // Sent in 0-RTT: have the driver send it now.
                    state.kick();
                }
                Poll::Ready(Ok((id, early)))
            }
            Err(OpenError::Blocked) => {
                if let Some(slot) = state.sessions.get_mut(&self.handle) {
                    slot.open[dir_index(dir)].register(cx.waker());
                }
                Poll::Pending
            }
            Err(OpenError::NotEstablished) => {
                if let Some(slot) = state.sessions.get_mut(&self.handle) {
                    slot.established.register(cx.waker());
                }
                Poll::Pending
            }
            Err(OpenError::SessionClosed(reason)) => Poll::Ready(Err(ConnectionError(reason))),
            Err(other) => Poll::Ready(Err(ConnectionError(CloseReason::Transport(format!(
                "cannot open a stream: {other}"
            ))))),
        }
    }

    /// The server-assigned id, if the kwik handshake has told it.
    fn id(&self) -> Option<SessionId> {
        if let Some(id) = self.id.get() {
            return Some(*id);
        }
        let id = self.shared.lock().sessions.get(&self.handle)?.id?;
        Some(*self.id.get_or_init(|| id))
    }

    fn poll_established(&self, cx: &mut Context<'_>) -> Poll<Result<SessionId, ConnectionError>> {
        let mut state = self.shared.lock();
        let Some(slot) = state.sessions.get_mut(&self.handle) else {
            return Poll::Ready(Err(ConnectionError(CloseReason::EndpointClosed)));
        };
        if let Some(id) = slot.id {
            return Poll::Ready(Ok(*self.id.get_or_init(|| id)));
        }
        if let Some(reason) = slot.close.clone() {
            return Poll::Ready(Err(ConnectionError(reason)));
        }
        slot.established.register(cx.waker());
        Poll::Pending
    }

    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<StreamId, ConnectionError>> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.session_closed(self.handle) {
            return Poll::Ready(Err(ConnectionError(reason)));
        }
        let accepted = match state.endpoint.session(self.handle) {
            Some(mut view) => view.accept(dir),
            None => return Poll::Ready(Err(ConnectionError(CloseReason::EndpointClosed))),
        };
        match accepted {
            Some(id) => {
                state.stream_handed_out(self.handle, id);
                Poll::Ready(Ok(id))
            }
            None => {
                if let Some(slot) = state.sessions.get_mut(&self.handle) {
                    slot.accept[dir_index(dir)].register(cx.waker());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for SessionRef {
    fn drop(&mut self) {
        if let Some(mut state) = self.shared.lock_for_drop() {
            state.release_session(self.handle);
            state.kick();
        }
    }
}

/// One kwik session: looks like one QUIC connection (open and accept
/// streams, close) while its streams may later be served by several servers.
///
/// Cloning gives another handle to the same session. The session is closed
/// with code 0 when the last handle (sessions and streams) is dropped.
pub struct Session<A> {
    inner: Arc<SessionRef>,
    _adapter: PhantomData<fn() -> A>,
}

impl<A> Clone for Session<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _adapter: PhantomData,
        }
    }
}

impl<A> fmt::Debug for Session<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id())
            .field("handle", &self.inner.handle)
            .finish_non_exhaustive()
    }
}

impl<A: Adapter> Session<A> {
    /// A session whose kwik handshake completed with `id`.
    pub(crate) fn new(inner: Arc<SessionRef>, id: SessionId) -> Self {
        let _ = inner.id.set(id);
        Self::early(inner)
    }

    /// A session handed out before its kwik handshake completed (0-RTT).
    pub(crate) fn early(inner: Arc<SessionRef>) -> Self {
        Self {
            inner,
            _adapter: PhantomData,
        }
    }

    /// Opens a bidirectional stream, waiting while the peer's stream limit
    /// is reached (and, for a session from
    /// [`Connecting::into_0rtt`](crate::Connecting::into_0rtt), until it is
    /// established: only idempotent streams ride in 0-RTT). The peer learns
    /// of it with its first byte or FIN.
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn open_bi(&self) -> Result<(A::SendStream, A::RecvStream), ConnectionError> {
        let (id, early) = poll_fn(|cx| self.inner.poll_open(cx, Dir::Bi, false)).await?;
        Ok(self.bi_pair(id, early))
    }

    /// Opens a unidirectional stream (see [`open_bi`](Self::open_bi)).
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn open_uni(&self) -> Result<A::SendStream, ConnectionError> {
        let (id, early) = poll_fn(|cx| self.inner.poll_open(cx, Dir::Uni, false)).await?;
        Ok(SendStream::new(self.inner.clone(), id, early).into())
    }

    /// Opens a bidirectional stream whose data the application declares
    /// **idempotent** — harmless if the server receives it twice — so that
    /// it may ride in 0-RTT, where an attacker who captured it can replay
    /// it (PROTOCOL.md §12.2). On a session from
    /// [`Connecting::into_0rtt`](crate::Connecting::into_0rtt) the stream
    /// opens at once and what is written to it leaves in 0-RTT; if the
    /// server then rejects 0-RTT, every call on the stream fails with
    /// `ZeroRttRejected` (the server saw none of it: open a new stream to
    /// send it again). Otherwise, or once established, the same as
    /// [`open_bi`](Self::open_bi).
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn open_bi_idempotent(
        &self,
    ) -> Result<(A::SendStream, A::RecvStream), ConnectionError> {
        let (id, early) = poll_fn(|cx| self.inner.poll_open(cx, Dir::Bi, true)).await?;
        Ok(self.bi_pair(id, early))
    }

    /// Opens a unidirectional stream whose data may ride in 0-RTT (see
    /// [`open_bi_idempotent`](Self::open_bi_idempotent)).
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn open_uni_idempotent(&self) -> Result<A::SendStream, ConnectionError> {
        let (id, early) = poll_fn(|cx| self.inner.poll_open(cx, Dir::Uni, true)).await?;
        Ok(SendStream::new(self.inner.clone(), id, early).into())
    }

    /// The next bidirectional stream the peer opened.
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn accept_bi(&self) -> Result<(A::SendStream, A::RecvStream), ConnectionError> {
        let id = poll_fn(|cx| self.inner.poll_accept(cx, Dir::Bi)).await?;
        Ok(self.bi_pair(id, false))
    }

    /// The next unidirectional stream the peer opened.
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn accept_uni(&self) -> Result<A::RecvStream, ConnectionError> {
        let id = poll_fn(|cx| self.inner.poll_accept(cx, Dir::Uni)).await?;
        Ok(RecvStream::new(self.inner.clone(), id, false).into())
    }

    fn bi_pair(&self, id: StreamId, early: bool) -> (A::SendStream, A::RecvStream) {
        (
            SendStream::new(self.inner.clone(), id, early).into(),
            RecvStream::new(self.inner.clone(), id, early).into(),
        )
    }
}

impl<A> Session<A> {
    pub(crate) fn inner(&self) -> &SessionRef {
        &self.inner
    }

    /// Closes the session at once: the peer sees `code` and `reason`, data
    /// not yet delivered is abandoned. Closing a closed session does nothing.
    ///
    /// # Errors
    /// If `code` lies in kwik's reserved block or does not fit a varint.
    pub fn close(&self, code: u64, reason: &[u8]) -> Result<(), CloseError> {
        let mut state = self.inner.shared.lock();
        if let Some(mut view) = state.endpoint.session(self.inner.handle) {
            view.close(code, reason)?;
            state.kick();
        }
        Ok(())
    }

    /// Completes when the session ends, with the reason.
    pub async fn closed(&self) -> CloseReason {
        poll_fn(|cx| {
            let mut state = self.inner.shared.lock();
            if let Some(reason) = state.session_closed(self.inner.handle) {
                return Poll::Ready(reason);
            }
            if let Some(slot) = state.sessions.get_mut(&self.inner.handle) {
                slot.closed.register(cx.waker());
            }
            Poll::Pending
        })
        .await
    }

    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.shared.lock().session_closed(self.inner.handle)
    }

    /// Where the session stands (PROTOCOL.md §15.1): `Closed` once it has
    /// drained.
    pub fn state(&self) -> kwik_core::SessionState {
        let mut state = self.inner.shared.lock();
        state
            .endpoint
            .session(self.inner.handle)
            .map_or(kwik_core::SessionState::Closed, |view| view.state())
    }

    /// The session's state with its history, while the endpoint holds it
    /// (`None` once it has drained).
    pub fn info(&self) -> Option<kwik_core::SessionInfo> {
        let mut state = self.inner.shared.lock();
        state
            .endpoint
            .session(self.inner.handle)
            .map(|view| view.info())
    }

    /// Counters (as they were at the end, once the session has ended).
    pub fn stats(&self) -> SessionStats {
        let mut state = self.inner.shared.lock();
        let handle = self.inner.handle;
        if let Some(view) = state.endpoint.session(handle) {
            return view.stats();
        }
        state
            .sessions
            .get(&handle)
            .and_then(|slot| slot.final_stats)
            .unwrap_or_default()
    }

    /// The server-assigned session id, shared by both ends.
    ///
    /// A session from [`Connecting::into_0rtt`](crate::Connecting::into_0rtt)
    /// learns it with the server's Welcome: until then this is the all-zero
    /// id (await [`established`](Self::established) for the real one).
    pub fn id(&self) -> SessionId {
        self.inner.id().unwrap_or(SessionId([0; SessionId::LEN]))
    }

    /// Completes once the kwik handshake completed, with the session id:
    /// at once for a session from awaiting [`Connecting`](crate::Connecting),
    /// when the Welcome arrives for one from
    /// [`Connecting::into_0rtt`](crate::Connecting::into_0rtt).
    ///
    /// # Errors
    /// If the session ended first.
    pub async fn established(&self) -> Result<SessionId, ConnectionError> {
        poll_fn(|cx| self.inner.poll_established(cx)).await
    }

    /// Where the session stands with 0-RTT (PROTOCOL.md §12). On a server,
    /// [`ZeroRtt::Pending`] means the Hello came in 0-RTT and the handshake
    /// has not confirmed the client yet: what arrived so far could be a
    /// replay of another client's first flight.
    pub fn zero_rtt(&self) -> ZeroRtt {
        let mut state = self.inner.shared.lock();
        let handle = self.inner.handle;
        if let Some(view) = state.endpoint.session(handle) {
            return view.zero_rtt();
        }
        match state.sessions.get(&handle).and_then(|slot| slot.zero_rtt) {
            Some(true) => ZeroRtt::Accepted,
            Some(false) => ZeroRtt::Rejected,
            None => ZeroRtt::Off,
        }
    }

    /// Completes once the fate of the session's 0-RTT data is known (see
    /// [`ZeroRttAccepted`]).
    pub fn zero_rtt_accepted(&self) -> ZeroRttAccepted {
        ZeroRttAccepted {
            inner: self.inner.clone(),
        }
    }

    /// The peer's address (the last known one once the session is gone).
    pub fn remote_address(&self) -> SocketAddr {
        let mut state = self.inner.shared.lock();
        state
            .endpoint
            .session(self.inner.handle)
            .map_or(self.inner.remote, |view| view.remote_address())
    }

    /// The endpoint-local handle of the session (for logs and the core).
    pub fn handle(&self) -> SessionHandle {
        self.inner.handle
    }
}

/// Completes with whether the session's 0-RTT data was accepted, as quinn's
/// `ZeroRttAccepted` does.
///
/// On a client (from [`Connecting::into_0rtt`](crate::Connecting::into_0rtt)),
/// when its handshake completes: `true` if the server took the Hello and the
/// idempotent streams, `false` if it rejected them — it then saw none of
/// them, the Hello has gone again, and the streams opened in 0-RTT fail with
/// `ZeroRttRejected`. On a server whose session began with a 0-RTT Hello,
/// `true` once the handshake has confirmed the client (nothing received was
/// a replay). `false` at once for a session that is not in 0-RTT, and if the
/// session ends before the fate is known.
pub struct ZeroRttAccepted {
    inner: Arc<SessionRef>,
}

impl fmt::Debug for ZeroRttAccepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZeroRttAccepted")
            .field("session", &self.inner.handle)
            .finish()
    }
}

impl ZeroRttAccepted {
    pub(crate) fn new(inner: Arc<SessionRef>) -> Self {
        Self { inner }
    }
}

impl Future for ZeroRttAccepted {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let handle = self.inner.handle;
        let mut state = self.inner.shared.lock();
        // The core knows first; the event that tells the slot may still be
        // on its way to the driver.
        let now = state.endpoint.session(handle).map(|view| view.zero_rtt());
        let Some(slot) = state.sessions.get_mut(&handle) else {
            return Poll::Ready(false);
        };
        if let Some(accepted) = slot.zero_rtt {
            return Poll::Ready(accepted);
        }
        match now {
            Some(ZeroRtt::Pending) if slot.close.is_none() => {
                slot.zero_rtt_waiters.register(cx.waker());
                Poll::Pending
            }
            Some(ZeroRtt::Accepted) => Poll::Ready(true),
            _ => Poll::Ready(false),
        }
    }
}
