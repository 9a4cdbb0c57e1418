//! [`Session`]: the application's handle on one kwik session.
//!
//! A `Session` is a cheap clone of one shared [`SessionRef`]; streams hold
//! the same reference, so the session stays open while any of them is in
//! use, and closes (code 0) when the last one is dropped. Each method is one
//! short critical section on the endpoint state calling the core's
//! `SessionView`; the multi-server verbs (paths, raw data, delegation,
//! transfers) are added the same way in `multi.rs`.

use std::fmt;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use kwik_core::{CloseError, CloseReason, Dir, OpenError, SessionHandle, SessionId, SessionStats};

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
}

impl SessionRef {
    pub(crate) fn new(shared: Arc<Shared>, handle: SessionHandle, remote: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            shared,
            handle,
            remote,
        })
    }

    fn poll_open(&self, cx: &mut Context<'_>, dir: Dir) -> Poll<Result<StreamId, ConnectionError>> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.session_closed(self.handle) {
            return Poll::Ready(Err(ConnectionError(reason)));
        }
        let opened = match state.endpoint.session(self.handle) {
            Some(mut view) => view.open(dir),
            None => Err(OpenError::SessionClosed(CloseReason::EndpointClosed)),
        };
        match opened {
            Ok(id) => {
                state.stream_handed_out(self.handle, id);
                Poll::Ready(Ok(id))
            }
            Err(OpenError::Blocked) => {
                if let Some(slot) = state.sessions.get_mut(&self.handle) {
                    slot.open[dir_index(dir)].register(cx.waker());
                }
                Poll::Pending
            }
            Err(OpenError::SessionClosed(reason)) => Poll::Ready(Err(ConnectionError(reason))),
            // Sessions are handed out only once established.
            Err(other) => Poll::Ready(Err(ConnectionError(CloseReason::Transport(format!(
                "cannot open a stream: {other}"
            ))))),
        }
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
    id: SessionId,
    _adapter: PhantomData<fn() -> A>,
}

impl<A> Clone for Session<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            id: self.id,
            _adapter: PhantomData,
        }
    }
}

impl<A> fmt::Debug for Session<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("handle", &self.inner.handle)
            .finish_non_exhaustive()
    }
}

impl<A: Adapter> Session<A> {
    pub(crate) fn new(inner: Arc<SessionRef>, id: SessionId) -> Self {
        Self {
            inner,
            id,
            _adapter: PhantomData,
        }
    }

    /// Opens a bidirectional stream, waiting while the peer's stream limit
    /// is reached. The peer learns of it with its first byte or FIN.
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn open_bi(&self) -> Result<(A::SendStream, A::RecvStream), ConnectionError> {
        let id = poll_fn(|cx| self.inner.poll_open(cx, Dir::Bi)).await?;
        Ok(self.bi_pair(id))
    }

    /// Opens a unidirectional stream (see [`open_bi`](Self::open_bi)).
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn open_uni(&self) -> Result<A::SendStream, ConnectionError> {
        let id = poll_fn(|cx| self.inner.poll_open(cx, Dir::Uni)).await?;
        Ok(SendStream::new(self.inner.clone(), id).into())
    }

    /// The next bidirectional stream the peer opened.
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn accept_bi(&self) -> Result<(A::SendStream, A::RecvStream), ConnectionError> {
        let id = poll_fn(|cx| self.inner.poll_accept(cx, Dir::Bi)).await?;
        Ok(self.bi_pair(id))
    }

    /// The next unidirectional stream the peer opened.
    ///
    /// # Errors
    /// If the session has ended.
    pub async fn accept_uni(&self) -> Result<A::RecvStream, ConnectionError> {
        let id = poll_fn(|cx| self.inner.poll_accept(cx, Dir::Uni)).await?;
        Ok(RecvStream::new(self.inner.clone(), id).into())
    }

    fn bi_pair(&self, id: StreamId) -> (A::SendStream, A::RecvStream) {
        (
            SendStream::new(self.inner.clone(), id).into(),
            RecvStream::new(self.inner.clone(), id).into(),
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
    pub fn id(&self) -> SessionId {
        self.id
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
