//! The multi-server verbs of a [`Session`]: paths, raw messages,
//! delegation, the multi-source transfer helper, and the secondary side's
//! `write_at`.
//!
//! Each verb is one short critical section calling the core's
//! `SessionView`; the awaiting ones (`add_path`, `remove_path`,
//! `path_event`, `delegated`, `recv_raw`, `write_at`, a [`Transfer`]'s
//! completion) register their waker under the session's key for exactly
//! what they wait for, in the same section that found nothing yet.
//!
//! What the core reports without being asked (path events, delegations,
//! raw messages) is queued per session with a bound: path events drop the
//! oldest when full (the state of every path stays readable through
//! [`Session::paths`]); a secondary that does not take its delegations or
//! raw messages has its session closed instead, so the primary sees the
//! path die and hands its ranges to another server — never a silent loss.

use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::Range;
use std::task::{Context, Poll};

use bytes::Bytes;
use kwik_core::{
    Candidate, CloseReason, Delegation, PathFailure, PathFilter, PathHealth, PathId, PathInfo,
    ProposalId, Role, SharedResource, StreamId, TransferConfig, TransferId,
};

use crate::error::{ConnectionError, WriteError};
use crate::runtime::Adapter;
use crate::session::{Session, SessionRef};
use crate::shared::{Locked, SendOutcome};
use crate::stream::SendStream;

/// Something that happened to one of a session's paths (client and
/// primary), as returned by [`Session::path_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathEvent {
    /// The path joined and carries data.
    Added(PathId),
    /// The path never became active.
    Failed {
        /// The path.
        path: PathId,
        /// Why.
        failure: PathFailure,
    },
    /// The path was active and died.
    Dead {
        /// The path.
        path: PathId,
        /// Why.
        failure: PathFailure,
    },
    /// The path was removed gracefully.
    Closed(PathId),
    /// The path's health grade changed (a primary's multi-source transfers
    /// give a [`PathHealth::Critical`] path no new ranges).
    Health {
        /// The path.
        path: PathId,
        /// The new grade.
        health: PathHealth,
    },
    /// Primary: automatic scaling decided to add the path (`added`;
    /// `Added` or `Failed` follows) or to remove it (`Closed` follows).
    Scaled {
        /// The path.
        path: PathId,
        /// Added (true) or removed (false).
        added: bool,
    },
    /// Client: the primary answered a proposal of
    /// [`Session::propose_path`] with the path it added for it, or why it
    /// refused.
    ProposalAnswered {
        /// The proposal.
        proposal: ProposalId,
        /// The path added, or the refusal.
        outcome: Result<PathId, PathFailure>,
    },
    /// Primary: the client proposed `candidate` and was answered (approved
    /// by the [`ProposalPolicy`](kwik_core::ProposalPolicy) with the path
    /// added, or refused).
    Proposed {
        /// The client's number for the proposal.
        proposal: ProposalId,
        /// The server proposed.
        candidate: Candidate,
        /// The path added, or the refusal.
        outcome: Result<PathId, PathFailure>,
    },
    /// Primary: a path ended while ranges delegated to it with
    /// [`Session::delegate`] were not acknowledged; someone else must write
    /// them. (Ranges of [`Session::serve`] transfers are re-assigned by the
    /// helper and not reported.)
    RangesLost {
        /// The path that ended.
        path: PathId,
        /// The missing ranges, each with its original delegation.
        ranges: Vec<Delegation>,
    },
}

/// A path operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The client could not join the path: refused by its policy, the
    /// secondary refused the token, the dial failed or timed out.
    Failed {
        /// The path the primary had assigned.
        path: PathId,
        /// The client's report.
        failure: PathFailure,
    },
    /// No such path in this session.
    NotFound(PathId),
    /// The path is dead, closed or failed.
    Dead(PathId),
    /// The path has not finished joining yet.
    NotReady(PathId),
    /// This side of the session cannot do that (e.g. `add_path` on a
    /// client, `delegate` on a stream the primary did not open).
    WrongRole,
    /// The message exceeds the peer's control-message limit.
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The primary has no path-token key configured
    /// ([`ServerConfig::token_key`](kwik_core::ServerConfig::token_key)).
    NoTokenKey,
    /// The client stopped reading the stream, with this code.
    Stopped(u64),
    /// A configured limit is reached (delegations outstanding, proposals
    /// unanswered); retry once some of what counts against it has settled.
    LimitReached {
        /// The limit.
        limit: usize,
    },
    /// A proposed server that cannot be a path: an address that cannot be
    /// dialled, a bad server name, or one the client's own
    /// [`PathPolicy`](kwik_core::PathPolicy) refuses.
    InvalidCandidate(String),
    /// The range is inverted or reaches past 2^62.
    OutOfRange,
    /// The session has ended.
    SessionClosed(CloseReason),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Failed { path, failure } => write!(f, "{path} failed: {failure}"),
            PathError::SessionClosed(reason) => write!(f, "session closed: {reason}"),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

impl std::error::Error for PathError {}

impl From<PathError> for std::io::Error {
    fn from(e: PathError) -> Self {
        std::io::Error::other(e)
    }
}

/// The core's error, with the close reason filled in from the adapter's
/// records.
fn path_error(
    state: &Locked<'_>,
    handle: kwik_core::SessionHandle,
    e: kwik_core::PathError,
) -> PathError {
    match e {
        kwik_core::PathError::NotFound(p) => PathError::NotFound(p),
        kwik_core::PathError::Dead(p) => PathError::Dead(p),
        kwik_core::PathError::NotReady(p) => PathError::NotReady(p),
        kwik_core::PathError::WrongRole => PathError::WrongRole,
        kwik_core::PathError::TooLarge { size, limit } => PathError::TooLarge { size, limit },
        kwik_core::PathError::NoTokenKey => PathError::NoTokenKey,
        kwik_core::PathError::Stopped(code) => PathError::Stopped(code),
        kwik_core::PathError::LimitReached { limit } => PathError::LimitReached { limit },
        kwik_core::PathError::InvalidCandidate(why) => PathError::InvalidCandidate(why),
        kwik_core::PathError::OutOfRange => PathError::OutOfRange,
        _ => PathError::SessionClosed(
            state
                .session_closed(handle)
                .unwrap_or(CloseReason::Transport("session not established".into())),
        ),
    }
}

impl SessionRef {
    /// Runs `call` on the core's view of this session; `SessionClosed` if it
    /// has ended. Kicks the driver: every multi-server call sends something.
    fn path_call<T>(
        &self,
        call: impl FnOnce(&mut kwik_core::SessionView<'_>) -> Result<T, kwik_core::PathError>,
    ) -> Result<T, PathError> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.session_closed(self.handle) {
            return Err(PathError::SessionClosed(reason));
        }
        let result = match state.endpoint.session(self.handle) {
            Some(mut view) => call(&mut view),
            None => return Err(PathError::SessionClosed(CloseReason::EndpointClosed)),
        };
        state.kick();
        result.map_err(|e| path_error(&state, self.handle, e))
    }

    fn poll_path_outcome(
        &self,
        cx: &mut Context<'_>,
        path: PathId,
    ) -> Poll<Result<PathId, PathError>> {
        let mut state = self.shared.lock();
        let Some(slot) = state.sessions.get_mut(&self.handle) else {
            return Poll::Ready(Err(PathError::SessionClosed(CloseReason::EndpointClosed)));
        };
        match slot.adding.get(&path) {
            Some(Some(Ok(()))) => return Poll::Ready(Ok(path)),
            Some(Some(Err(failure))) => {
                return Poll::Ready(Err(PathError::Failed {
                    path,
                    failure: failure.clone(),
                }));
            }
            _ => {}
        }
        if let Some(reason) = slot.close.clone() {
            return Poll::Ready(Err(PathError::SessionClosed(reason)));
        }
        slot.path_changed.register(cx.waker());
        Poll::Pending
    }

    fn poll_path_final(&self, cx: &mut Context<'_>, path: PathId) -> Poll<Result<(), PathError>> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.session_closed(self.handle) {
            return Poll::Ready(Err(PathError::SessionClosed(reason)));
        }
        let info = state.endpoint.session(self.handle).and_then(|mut view| {
            view.paths(PathFilter::All)
                .into_iter()
                .find(|p| p.id == path)
        });
        match info {
            None => return Poll::Ready(Err(PathError::NotFound(path))),
            Some(info) if info.state.is_final() => return Poll::Ready(Ok(())),
            Some(_) => {}
        }
        if let Some(slot) = state.sessions.get_mut(&self.handle) {
            slot.path_changed.register(cx.waker());
        }
        Poll::Pending
    }

    /// Takes the next item of one of the session's queues, or registers.
    fn poll_queue<T>(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut crate::shared::SessionSlot, &std::task::Waker) -> Option<T>,
    ) -> Poll<Result<T, ConnectionError>> {
        let mut state = self.shared.lock();
        let Some(slot) = state.sessions.get_mut(&self.handle) else {
            return Poll::Ready(Err(ConnectionError(CloseReason::EndpointClosed)));
        };
        if let Some(item) = take(slot, cx.waker()) {
            return Poll::Ready(Ok(item));
        }
        match slot.close.clone() {
            Some(reason) => Poll::Ready(Err(ConnectionError(reason))),
            None => Poll::Pending,
        }
    }

    fn poll_write_at(
        &self,
        cx: &mut Context<'_>,
        stream: StreamId,
        offset: &mut u64,
        data: &mut Bytes,
        fin: bool,
    ) -> Poll<Result<(), WriteError>> {
        let mut state = self.shared.lock();
        if let Some(reason) = state.session_closed(self.handle) {
            return Poll::Ready(Err(WriteError::SessionClosed(reason)));
        }
        if data.is_empty() && !fin {
            return Poll::Ready(Ok(()));
        }
        let Some(mut view) = state.endpoint.session(self.handle) else {
            return Poll::Ready(Err(WriteError::SessionClosed(CloseReason::EndpointClosed)));
        };
        let mut progress = false;
        let result = loop {
            match view.write_at(stream, *offset, data, fin) {
                Ok(n) => {
                    progress = true;
                    *offset += n as u64;
                    if data.is_empty() {
                        break Ok(());
                    }
                }
                Err(kwik_core::WriteError::Blocked) => {
                    if progress {
                        state.kick();
                    }
                    if let Some(slot) = state.sessions.get_mut(&self.handle) {
                        slot.source_writers
                            .entry(stream)
                            .or_default()
                            .register(cx.waker());
                    }
                    return Poll::Pending;
                }
                Err(kwik_core::WriteError::Stopped(code)) => break Err(WriteError::Stopped(code)),
                Err(kwik_core::WriteError::SessionClosed(reason)) => {
                    break Err(WriteError::SessionClosed(reason));
                }
                Err(_) => break Err(WriteError::ClosedStream),
            }
        };
        state.kick();
        Poll::Ready(result)
    }
}

/// Removes a pending `add_path` record if its future is dropped.
struct Adding<'a> {
    session: &'a SessionRef,
    path: PathId,
}

impl Drop for Adding<'_> {
    fn drop(&mut self) {
        if let Some(mut state) = self.session.shared.lock_for_drop()
            && let Some(slot) = state.sessions.get_mut(&self.session.handle)
        {
            slot.adding.remove(&self.path);
        }
    }
}

impl<A: Adapter> Session<A> {
    /// Primary: serves `resource` over `stream` — a stream this primary
    /// opened and has not written to — from this server and every live
    /// secondary path, whose servers serve the same bytes under
    /// `descriptor` ([`Endpoint::serve_resource`](crate::Endpoint::serve_resource)).
    /// Ranges are sized by each path's measured rate, each path's
    /// outstanding work is bounded, idle paths copy the slowest tail, and
    /// the ranges of a dead path are re-assigned; paths added later join
    /// in. The stream is finished by the transfer; await
    /// [`Transfer::finished`] for the client's acknowledgement of every
    /// byte.
    ///
    /// # Errors
    /// If this is not the primary, the stream is not one it opened, or the
    /// session ended.
    pub fn serve(
        &self,
        stream: A::SendStream,
        resource: SharedResource,
        descriptor: impl Into<Bytes>,
        config: TransferConfig,
    ) -> Result<Transfer, PathError> {
        let mut stream: SendStream = stream.into();
        let id = stream.id();
        let descriptor = descriptor.into();
        let inner = self.inner();
        let transfer = inner.path_call(|view| view.serve(id, resource, descriptor, config))?;
        {
            let mut state = inner.shared.lock();
            if let Some(slot) = state.sessions.get_mut(&inner.handle) {
                slot.transfers.insert(transfer, false);
                slot.served.insert(id);
            }
        }
        stream.hand_over();
        Ok(Transfer {
            stream,
            id: transfer,
        })
    }
}

impl<A> Session<A> {
    /// Primary: asks the client to join the secondary server at `address`,
    /// whose certificate it validates for `server_name`, and waits for the
    /// outcome: the new path's id once it is active, or why it failed
    /// ([`PathError::Failed`], with the client's report).
    ///
    /// # Errors
    /// As described, or at once if this is not a primary, no token key is
    /// configured, or the session ended.
    pub async fn add_path(
        &self,
        address: SocketAddr,
        server_name: &str,
    ) -> Result<PathId, PathError> {
        let inner = self.inner();
        let path = {
            let mut state = inner.shared.lock();
            if let Some(reason) = state.session_closed(inner.handle) {
                return Err(PathError::SessionClosed(reason));
            }
            let added = match state.endpoint.session(inner.handle) {
                Some(mut view) => view.add_path(address, server_name),
                None => return Err(PathError::SessionClosed(CloseReason::EndpointClosed)),
            };
            let path = added.map_err(|e| path_error(&state, inner.handle, e))?;
            if let Some(slot) = state.sessions.get_mut(&inner.handle) {
                slot.adding.insert(path, None);
            }
            state.kick();
            path
        };
        let _pending = Adding {
            session: inner,
            path,
        };
        poll_fn(|cx| inner.poll_path_outcome(cx, path)).await
    }

    /// Client: proposes a server it found itself as a path of this session
    /// (PROTOCOL.md §13). The primary's policy decides; the answer arrives
    /// as [`PathEvent::ProposalAnswered`], and an approved path then joins
    /// like any other ([`PathEvent::Added`] or [`PathEvent::Failed`]).
    ///
    /// # Errors
    /// On a server session ([`PathError::WrongRole`]), with too many
    /// proposals unanswered ([`PathError::LimitReached`]), for a candidate
    /// that cannot be a path ([`PathError::InvalidCandidate`]), or once the
    /// session ended.
    pub fn propose_path(&self, candidate: &Candidate) -> Result<ProposalId, PathError> {
        self.inner().path_call(|view| view.propose_path(candidate))
    }

    /// Removes a secondary path gracefully and waits until it is gone: data
    /// in flight on it drains first. On the primary this asks the client;
    /// on the client it tells the primary.
    ///
    /// # Errors
    /// If the path does not exist or already ended, or the session ended.
    pub async fn remove_path(&self, path: PathId) -> Result<(), PathError> {
        let inner = self.inner();
        inner.path_call(|view| view.remove_path(path))?;
        poll_fn(|cx| inner.poll_path_final(cx, path)).await
    }

    /// The session's paths (client and primary; path 0 is the primary
    /// connection), in id order, with their state, history and counters.
    pub fn paths(&self, filter: PathFilter) -> Vec<PathInfo> {
        let inner = self.inner();
        let mut state = inner.shared.lock();
        state
            .endpoint
            .session(inner.handle)
            .map(|mut view| view.paths(filter))
            .unwrap_or_default()
    }

    /// The next path event (client and primary). Events are queued from the
    /// start of the session; if more than 1024 are left untaken the oldest
    /// are dropped (see [`path_events_dropped`](Self::path_events_dropped)).
    ///
    /// # Errors
    /// Once the session has ended and every queued event was taken.
    pub async fn path_event(&self) -> Result<PathEvent, ConnectionError> {
        let inner = self.inner();
        poll_fn(|cx| {
            inner.poll_queue(cx, |slot, waker| {
                let event = slot.path_events.pop_front();
                if event.is_none() {
                    slot.path_event_waiters.register(waker);
                }
                event
            })
        })
        .await
    }

    /// Path events dropped because the queue was full.
    pub fn path_events_dropped(&self) -> u64 {
        let inner = self.inner();
        let state = inner.shared.lock();
        state
            .sessions
            .get(&inner.handle)
            .map_or(0, |slot| slot.path_events_dropped)
    }

    /// Sends `payload` to the server of `path`, boundaries kept, delivered
    /// untouched to its application ([`recv_raw`](Self::recv_raw)). From
    /// the primary it is relayed through the client.
    ///
    /// # Errors
    /// If the path is not active, the payload exceeds the peer's
    /// control-message limit, or the session ended.
    pub async fn send_raw(&self, path: PathId, payload: impl Into<Bytes>) -> Result<(), PathError> {
        let payload = payload.into();
        self.inner().path_call(|view| view.send_raw(path, payload))
    }

    /// Secondary: the next raw message relayed by the client.
    ///
    /// # Errors
    /// Once the session has ended and every queued message was taken.
    pub async fn recv_raw(&self) -> Result<Bytes, ConnectionError> {
        let inner = self.inner();
        poll_fn(|cx| {
            inner.poll_queue(cx, |slot, waker| {
                let payload = slot.raw.pop_front();
                match &payload {
                    Some(p) => slot.raw_bytes -= p.len(),
                    None => slot.raw_waiters.register(waker),
                }
                payload
            })
        })
        .await
    }

    /// Primary: hands bytes `range` of `stream` (a stream this primary
    /// opened) to the server of `path`, with an opaque `descriptor` for its
    /// application; `fin` if the range ends the stream. The primary must not
    /// write those bytes itself; if the path dies first, what the client
    /// did not receive comes back as [`PathEvent::RangesLost`].
    ///
    /// # Errors
    /// If the path is not active, the stream is not the primary's, or the
    /// session ended.
    pub fn delegate(
        &self,
        path: PathId,
        stream: StreamId,
        range: Range<u64>,
        fin: bool,
        descriptor: impl Into<Bytes>,
    ) -> Result<Delegation, PathError> {
        let descriptor = descriptor.into();
        self.inner()
            .path_call(|view| view.delegate(path, stream, range, fin, descriptor))
    }

    /// Primary: delegated ranges the client has not acknowledged yet.
    pub fn outstanding(&self) -> Vec<Delegation> {
        let inner = self.inner();
        let mut state = inner.shared.lock();
        state
            .endpoint
            .session(inner.handle)
            .map(|view| view.outstanding())
            .unwrap_or_default()
    }

    /// Secondary: the next delegation to write with
    /// [`write_at`](Self::write_at) (those whose descriptor the endpoint
    /// serves itself, see
    /// [`Endpoint::serve_resource`](crate::Endpoint::serve_resource), are
    /// not surfaced). Up to 4096 are queued; past that the session is closed
    /// and the primary re-assigns the ranges.
    ///
    /// # Errors
    /// Once the session has ended and every queued delegation was taken.
    pub async fn delegated(&self) -> Result<Delegation, ConnectionError> {
        let inner = self.inner();
        poll_fn(|cx| {
            inner.poll_queue(cx, |slot, waker| {
                let d = slot.delegations.pop_front();
                if d.is_none() {
                    slot.delegation_waiters.register(waker);
                }
                d
            })
        })
        .await
    }

    /// Secondary (or primary, for its own streams): writes all of `data` at
    /// logical `offset` of `stream`, waiting for the client's credit; `fin`
    /// ends the stream after its last byte.
    ///
    /// # Errors
    /// If the client stopped the stream, it is not writable by this side,
    /// or the session ended.
    pub async fn write_at(
        &self,
        stream: StreamId,
        offset: u64,
        data: impl Into<Bytes>,
        fin: bool,
    ) -> Result<(), WriteError> {
        let mut data = data.into();
        let mut offset = offset;
        let inner = self.inner();
        poll_fn(|cx| inner.poll_write_at(cx, stream, &mut offset, &mut data, fin)).await
    }

    /// Secondary: the path id the primary assigned to this connection
    /// (`None` on clients and primaries).
    pub fn joined_path(&self) -> Option<PathId> {
        let inner = self.inner();
        let state = inner.shared.lock();
        state
            .sessions
            .get(&inner.handle)
            .and_then(|slot| slot.joined)
    }

    /// Which part this session plays: client, primary or secondary.
    pub fn role(&self) -> Role {
        let inner = self.inner();
        let mut state = inner.shared.lock();
        if let Some(view) = state.endpoint.session(inner.handle) {
            return view.role();
        }
        match state.sessions.get(&inner.handle) {
            Some(slot) if slot.joined.is_some() => Role::Secondary,
            Some(slot) if slot.side == kwik_core::Side::Client => Role::Client,
            _ => Role::Primary,
        }
    }
}

/// A running multi-source transfer ([`Session::serve`]). Dropping the
/// handle does not stop the transfer; it keeps the session open until then.
pub struct Transfer {
    stream: SendStream,
    id: TransferId,
}

impl fmt::Debug for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transfer")
            .field("id", &self.id)
            .field("stream", &self.stream.id())
            .finish()
    }
}

impl Transfer {
    /// The transfer's id.
    pub fn id(&self) -> TransferId {
        self.id
    }

    /// The stream it runs on.
    pub fn stream_id(&self) -> StreamId {
        self.stream.id()
    }

    /// Completes once the client has acknowledged every byte.
    ///
    /// # Errors
    /// If the client stopped the stream, or the session ended first.
    pub async fn finished(&self) -> Result<(), WriteError> {
        poll_fn(|cx| self.poll_finished(cx)).await
    }

    /// [`finished`](Self::finished) as a poll function.
    ///
    /// # Errors
    /// As [`finished`](Self::finished).
    pub fn poll_finished(&self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        let session = self.stream.session();
        let mut state = session.shared.lock();
        let key = (session.handle, self.stream.id());
        let outcome = state.streams.get(&key).and_then(|slot| slot.outcome);
        match outcome {
            Some(SendOutcome::Stopped(code)) => return Poll::Ready(Err(WriteError::Stopped(code))),
            Some(SendOutcome::Finished) => return Poll::Ready(Ok(())),
            None => {}
        }
        let done = state
            .sessions
            .get(&session.handle)
            .and_then(|slot| slot.transfers.get(&self.id).copied());
        if done == Some(true) {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = state.session_closed(session.handle) {
            return Poll::Ready(Err(WriteError::SessionClosed(reason)));
        }
        if let Some(slot) = state.streams.get_mut(&key) {
            slot.stopped.register(cx.waker());
        }
        if let Some(slot) = state.sessions.get_mut(&session.handle) {
            slot.transfer_waiters.register(cx.waker());
        }
        Poll::Pending
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let session = self.stream.session();
        if let Some(mut state) = session.shared.lock_for_drop()
            && let Some(slot) = state.sessions.get_mut(&session.handle)
        {
            slot.transfers.remove(&self.id);
        }
    }
}
