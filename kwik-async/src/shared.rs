//! State shared by an endpoint's driver task and every application handle:
//! the sans-IO [`KwikEndpoint`] plus the wakers of the futures waiting on it.
//!
//! One mutex guards it all because the core is one state machine; what keeps
//! the lock cheap is that nothing slow happens under it: no socket call, no
//! `await`, no waking (wakers are collected and woken after unlocking). Every
//! waiting future is registered under a key naming exactly what it waits for
//! — a stream's read or write side, a session's accept or open of one
//! direction — so each core event wakes only futures that can progress.
//!
//! Application calls that change the endpoint "kick" the driver (wake it once
//! the lock is released) so the change is sent; calls that only find nothing
//! to do do not.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use std::task::Waker;

use kwik_core::{
    CloseReason, Delegation, Dir, ErrorCode, Event, IncomingId, KwikEndpoint, PathFailure, PathId,
    SessionHandle, SessionId, SessionStats, Side, StreamId, TransferId,
};
use tracing::Span;

use crate::multi::PathEvent;
use crate::runtime::Runtime;

/// Connection attempts queued for [`Endpoint::accept`](crate::Endpoint::accept)
/// beyond which new ones are refused, so an application that stops accepting
/// cannot make the queue grow without bound.
const MAX_PENDING_INCOMING: usize = 1024;

/// Path events kept per session for [`Session::path_event`]; beyond it the
/// oldest is dropped (and counted): path states stay readable through
/// `paths()`, so an application that never asks loses nothing it needs.
///
/// [`Session::path_event`]: crate::Session::path_event
pub(crate) const MAX_PATH_EVENTS: usize = 1024;
/// Delegations queued per secondary session for
/// [`Session::delegated`](crate::Session::delegated). Past it the session
/// is closed: a delegation dropped silently would stall the client, a closed
/// path is noticed by the primary, which hands the ranges to another.
pub(crate) const MAX_DELEGATIONS: usize = 4096;
/// Raw messages queued per secondary session for
/// [`Session::recv_raw`](crate::Session::recv_raw), by count and by bytes;
/// past either the session is closed, as for delegations.
pub(crate) const MAX_RAW_MESSAGES: usize = 1024;
/// See [`MAX_RAW_MESSAGES`].
pub(crate) const MAX_RAW_BYTES: usize = 16 << 20;

/// What an endpoint's handles and its driver share.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) span: Span,
}

impl Shared {
    pub(crate) fn new(
        endpoint: KwikEndpoint,
        runtime: Arc<dyn Runtime>,
        local_addr: SocketAddr,
        span: Span,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                endpoint,
                sessions: BTreeMap::new(),
                streams: BTreeMap::new(),
                incoming: VecDeque::new(),
                accept: Wakers::default(),
                idle: Wakers::default(),
                closed: false,
                handles_gone: false,
                driver_gone: false,
                aborted: false,
                driver: None,
            }),
            runtime,
            local_addr,
            span,
        }
    }

    /// Locks the state.
    ///
    /// # Panics
    /// If an earlier panic happened while the lock was held (the endpoint's
    /// state can no longer be trusted).
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked {
            guard: Some(self.state.lock().expect("kwik endpoint state poisoned")),
            kick: false,
        }
    }

    /// Locks the state from a destructor: `None` instead of panicking if the
    /// lock is poisoned (a panic while unwinding would abort).
    pub(crate) fn lock_for_drop(&self) -> Option<Locked<'_>> {
        self.lock_unless_poisoned()
    }

    /// Locks the state, or `None` if an earlier panic poisoned the lock:
    /// for callers that must not panic (destructors, metric scrapes).
    pub(crate) fn lock_unless_poisoned(&self) -> Option<Locked<'_>> {
        Some(Locked {
            guard: Some(self.state.lock().ok()?),
            kick: false,
        })
    }
}

/// The locked state. Dropping it unlocks, then wakes the driver if
/// [`kick`](Locked::kick) was called.
pub(crate) struct Locked<'a> {
    guard: Option<MutexGuard<'a, State>>,
    kick: bool,
}

impl Locked<'_> {
    /// The call changed the endpoint: have the driver send what it must.
    pub(crate) fn kick(&mut self) {
        self.kick = true;
    }
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("locked")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("locked")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let mut guard = self.guard.take().expect("locked");
        let driver = if self.kick { guard.driver.take() } else { None };
        drop(guard);
        if let Some(driver) = driver {
            driver.wake();
        }
    }
}

/// Wakers of futures waiting for the same thing (deduplicated by task).
#[derive(Debug, Default)]
pub(crate) struct Wakers(Vec<Waker>);

impl Wakers {
    pub(crate) fn register(&mut self, waker: &Waker) {
        if !self.0.iter().any(|w| w.will_wake(waker)) {
            self.0.push(waker.clone());
        }
    }

    fn drain_into(&mut self, out: &mut Vec<Waker>) {
        out.append(&mut self.0);
    }
}

/// Stores `waker` in a single-waiter slot (keeps the old one if equivalent).
pub(crate) fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(old) if old.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

pub(crate) fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

/// The application-side record of one session.
pub(crate) struct SessionSlot {
    pub(crate) span: Span,
    pub(crate) side: Side,
    /// Set once the kwik handshake completed.
    pub(crate) id: Option<SessionId>,
    /// Set once the session ended.
    pub(crate) close: Option<CloseReason>,
    /// Counters as they were when the session ended.
    pub(crate) final_stats: Option<SessionStats>,
    /// The core has forgotten the session.
    pub(crate) drained: bool,
    /// Application handles (session, streams, connecting) still exist.
    pub(crate) handles: bool,
    pub(crate) connecting: Option<Waker>,
    /// Futures waiting for the kwik handshake of a session handed out
    /// before it (by `Connecting::into_0rtt`): opens, `established`.
    pub(crate) established: Wakers,
    /// The fate of the session's 0-RTT data, once known (`ZeroRttSettled`).
    pub(crate) zero_rtt: Option<bool>,
    pub(crate) zero_rtt_waiters: Wakers,
    pub(crate) accept: [Wakers; 2],
    pub(crate) open: [Wakers; 2],
    pub(crate) closed: Wakers,
    /// Peer-initiated streams handed to the application so far, per
    /// direction (the core hands them out in index order).
    pub(crate) accepted: [u64; 2],
    /// Secondary: the path this session is, once joined.
    pub(crate) joined: Option<PathId>,
    /// Outcomes of `add_path` calls still awaited: `None` while pending.
    pub(crate) adding: BTreeMap<PathId, Option<Result<(), PathFailure>>>,
    /// Futures waiting for a path to change state (`add_path`, `remove_path`).
    pub(crate) path_changed: Wakers,
    /// Path events not yet taken by `path_event` (bounded).
    pub(crate) path_events: VecDeque<PathEvent>,
    /// Path events dropped because the queue was full.
    pub(crate) path_events_dropped: u64,
    pub(crate) path_event_waiters: Wakers,
    /// Secondary: delegations not yet taken by `delegated` (bounded).
    pub(crate) delegations: VecDeque<Delegation>,
    pub(crate) delegation_waiters: Wakers,
    /// Secondary: raw messages not yet taken by `recv_raw` (bounded).
    pub(crate) raw: VecDeque<Bytes>,
    pub(crate) raw_bytes: usize,
    pub(crate) raw_waiters: Wakers,
    /// `write_at` calls waiting for a stream to become writable.
    pub(crate) source_writers: BTreeMap<StreamId, Wakers>,
    /// Transfers with a live handle: true once complete.
    pub(crate) transfers: BTreeMap<TransferId, bool>,
    pub(crate) transfer_waiters: Wakers,
    /// Streams served by the transfer helper, which re-assigns their lost
    /// ranges itself (so they are not reported as `RangesLost`).
    pub(crate) served: std::collections::BTreeSet<StreamId>,
}

impl SessionSlot {
    pub(crate) fn new(side: Side, span: Span) -> Self {
        Self {
            span,
            side,
            id: None,
            close: None,
            final_stats: None,
            drained: false,
            handles: true,
            connecting: None,
            established: Wakers::default(),
            zero_rtt: None,
            zero_rtt_waiters: Wakers::default(),
            accept: Default::default(),
            open: Default::default(),
            closed: Wakers::default(),
            accepted: [0; 2],
            joined: None,
            adding: BTreeMap::new(),
            path_changed: Wakers::default(),
            path_events: VecDeque::new(),
            path_events_dropped: 0,
            path_event_waiters: Wakers::default(),
            delegations: VecDeque::new(),
            delegation_waiters: Wakers::default(),
            raw: VecDeque::new(),
            raw_bytes: 0,
            raw_waiters: Wakers::default(),
            source_writers: BTreeMap::new(),
            transfers: BTreeMap::new(),
            transfer_waiters: Wakers::default(),
            served: std::collections::BTreeSet::new(),
        }
    }

    fn wake_all(&mut self, out: &mut Vec<Waker>) {
        out.extend(self.connecting.take());
        self.established.drain_into(out);
        self.zero_rtt_waiters.drain_into(out);
        for w in self.accept.iter_mut().chain(self.open.iter_mut()) {
            w.drain_into(out);
        }
        self.closed.drain_into(out);
        self.path_changed.drain_into(out);
        self.path_event_waiters.drain_into(out);
        self.delegation_waiters.drain_into(out);
        self.raw_waiters.drain_into(out);
        for w in self.source_writers.values_mut() {
            w.drain_into(out);
        }
        self.source_writers.clear();
        self.transfer_waiters.drain_into(out);
    }

    /// Queues a path event, dropping the oldest beyond the bound.
    fn push_path_event(&mut self, event: PathEvent, wake: &mut Vec<Waker>) {
        if self.path_events.len() >= MAX_PATH_EVENTS {
            self.path_events.pop_front();
            self.path_events_dropped += 1;
        }
        self.path_events.push_back(event);
        self.path_event_waiters.drain_into(wake);
        self.path_changed.drain_into(wake);
    }
}

/// How the sending half of a stream ended, as reported by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendOutcome {
    /// The peer received everything up to the end.
    Finished,
    /// The peer asked to stop with this code.
    Stopped(u64),
}

/// The application-side record of one stream: who waits on it and which of
/// its handles are alive.
#[derive(Debug, Default)]
pub(crate) struct StreamSlot {
    pub(crate) read: Option<Waker>,
    pub(crate) write: Option<Waker>,
    pub(crate) stopped: Wakers,
    pub(crate) outcome: Option<SendOutcome>,
    pub(crate) send_handle: bool,
    pub(crate) recv_handle: bool,
}

impl StreamSlot {
    fn wake_all(&mut self, out: &mut Vec<Waker>) {
        out.extend(self.read.take());
        out.extend(self.write.take());
        self.stopped.drain_into(out);
    }
}

/// A connection attempt queued for [`Endpoint::accept`](crate::Endpoint::accept).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingIncoming {
    pub(crate) id: IncomingId,
    pub(crate) remote: SocketAddr,
    pub(crate) address_validated: bool,
}

/// Everything behind the lock.
pub(crate) struct State {
    pub(crate) endpoint: KwikEndpoint,
    pub(crate) sessions: BTreeMap<SessionHandle, SessionSlot>,
    pub(crate) streams: BTreeMap<(SessionHandle, StreamId), StreamSlot>,
    /// Connection attempts waiting for the application's decision.
    pub(crate) incoming: VecDeque<PendingIncoming>,
    pub(crate) accept: Wakers,
    pub(crate) idle: Wakers,
    /// No new sessions: the endpoint was closed or all its handles dropped.
    pub(crate) closed: bool,
    /// Every `Endpoint` handle is gone; the driver ends once idle.
    pub(crate) handles_gone: bool,
    /// The driver task has ended; nothing will progress any more.
    pub(crate) driver_gone: bool,
    /// The driver must stop at once, sending nothing more (a simulated
    /// crash, for tests).
    pub(crate) aborted: bool,
    /// The driver's waker while it sleeps (taken by whoever kicks it).
    pub(crate) driver: Option<Waker>,
}

fn stream_range(session: SessionHandle) -> std::ops::RangeInclusive<(SessionHandle, StreamId)> {
    (session, StreamId(0))..=(session, StreamId(u64::MAX))
}

impl State {
    /// Why the session ended, if it has (a forgotten session counts as
    /// ended with the endpoint).
    pub(crate) fn session_closed(&self, session: SessionHandle) -> Option<CloseReason> {
        match self.sessions.get(&session) {
            Some(slot) => slot.close.clone(),
            None => Some(CloseReason::EndpointClosed),
        }
    }

    /// True when the driver may stop: no handle can start anything new and
    /// every session has drained.
    pub(crate) fn should_exit(&self) -> bool {
        self.handles_gone && self.endpoint.is_idle()
    }

    /// Records what a core event means and collects the wakers of the futures
    /// it lets progress.
    pub(crate) fn dispatch(&mut self, event: Event, wake: &mut Vec<Waker>) {
        tracing::trace!(target: kwik_core::log::DRIVER, ?event);
        match event {
            Event::Incoming {
                incoming,
                remote,
                address_validated,
            } => {
                if self.closed || self.incoming.len() >= MAX_PENDING_INCOMING {
                    tracing::debug!(target: kwik_core::log::DRIVER, %remote, "refusing connection attempt (not accepting)");
                    let _ = self.endpoint.refuse(incoming);
                    return;
                }
                self.incoming.push_back(PendingIncoming {
                    id: incoming,
                    remote,
                    address_validated,
                });
                self.accept.drain_into(wake);
            }
            Event::SessionEstablished { session, id } => {
                if let Some(slot) = self.sessions.get_mut(&session) {
                    tracing::trace!(target: kwik_core::log::DRIVER, parent: &slot.span, %id, "session established");
                    slot.id = Some(id);
                    wake.extend(slot.connecting.take());
                    slot.established.drain_into(wake);
                }
            }
            Event::ZeroRttSettled { session, accepted } => {
                self.on_zero_rtt_settled(session, accepted, wake)
            }
            Event::SessionClosed { session, reason } => {
                self.on_session_closed(session, reason, wake)
            }
            Event::SessionDrained { session, stats } => {
                if let Some(slot) = self.sessions.get_mut(&session) {
                    tracing::debug!(target: kwik_core::log::DRIVER, parent: &slot.span, "session drained");
                    slot.drained = true;
                    slot.final_stats = Some(stats);
                    if !slot.handles {
                        self.remove_session(session);
                    }
                }
                if self.endpoint.is_idle() {
                    self.idle.drain_into(wake);
                }
            }
            Event::StreamOpened { session, dir } => {
                if let Some(slot) = self.sessions.get_mut(&session) {
                    slot.accept[dir_index(dir)].drain_into(wake);
                }
            }
            Event::StreamsAvailable { session, dir } => {
                if let Some(slot) = self.sessions.get_mut(&session) {
                    slot.open[dir_index(dir)].drain_into(wake);
                }
            }
            Event::StreamReadable { session, stream }
            | Event::StreamReset {
                session, stream, ..
            } => {
                if let Some(slot) = self.streams.get_mut(&(session, stream)) {
                    wake.extend(slot.read.take());
                }
            }
            Event::StreamWritable { session, stream } => {
                if let Some(slot) = self.streams.get_mut(&(session, stream)) {
                    wake.extend(slot.write.take());
                }
                if let Some(slot) = self.sessions.get_mut(&session)
                    && let Some(mut writers) = slot.source_writers.remove(&stream)
                {
                    writers.drain_into(wake);
                }
            }
            Event::StreamFinished { session, stream } => {
                if let Some(slot) = self.streams.get_mut(&(session, stream)) {
                    slot.outcome = Some(SendOutcome::Finished);
                    slot.stopped.drain_into(wake);
                }
            }
            Event::StreamStopped {
                session,
                stream,
                code,
            } => self.on_stream_stopped(session, stream, code, wake),
            Event::PathJoined { session, id, path } => {
                if let Some(slot) = self.sessions.get_mut(&session) {
                    tracing::trace!(target: kwik_core::log::DRIVER, parent: &slot.span, %id, %path, "secondary path joined");
                    slot.id = Some(id);
                    slot.joined = Some(path);
                    wake.extend(slot.connecting.take());
                }
            }
            Event::PathAdded { session, path } => {
                self.on_path_event(session, path, Ok(()), PathEvent::Added(path), wake)
            }
            Event::PathFailed {
                session,
                path,
                failure,
            } => {
                let event = PathEvent::Failed {
                    path,
                    failure: failure.clone(),
                };
                self.on_path_event(session, path, Err(failure), event, wake)
            }
            Event::PathDead {
                session,
                path,
                failure,
            } => {
                let event = PathEvent::Dead {
                    path,
                    failure: failure.clone(),
                };
                self.on_path_event(session, path, Err(failure), event, wake)
            }
            Event::PathClosed { session, path } => {
                let failure = PathFailure {
                    code: ErrorCode::PathDead,
                    reason: "path closed before it was added".into(),
                };
                let event = PathEvent::Closed(path);
                self.on_path_event(session, path, Err(failure), event, wake)
            }
            Event::PathHealth {
                session,
                path,
                health,
            } => self.queue_path_event(session, PathEvent::Health { path, health }, wake),
            Event::PathProposalAnswered {
                session,
                proposal,
                outcome,
            } => {
                let event = PathEvent::ProposalAnswered { proposal, outcome };
                self.queue_path_event(session, event, wake);
            }
            Event::PathProposed {
                session,
                proposal,
                candidate,
                outcome,
            } => {
                let event = PathEvent::Proposed {
                    proposal,
                    candidate,
                    outcome,
                };
                self.queue_path_event(session, event, wake);
            }
            Event::PathScaled {
                session,
                path,
                added,
            } => self.queue_path_event(session, PathEvent::Scaled { path, added }, wake),
            Event::RangesLost {
                session,
                path,
                mut ranges,
            } => {
                if let Some(slot) = self.sessions.get_mut(&session) {
                    // The transfer helper re-assigns its own ranges.
                    ranges.retain(|d| !slot.served.contains(&d.stream));
                    if !ranges.is_empty() {
                        slot.push_path_event(PathEvent::RangesLost { path, ranges }, wake);
                    }
                }
            }
            Event::Delegated {
                session,
                delegation,
            } => {
                let Some(slot) = self.sessions.get_mut(&session) else {
                    return;
                };
                if slot.delegations.len() >= MAX_DELEGATIONS {
                    self.overflow(session, "delegation queue full");
                    return;
                }
                slot.delegations.push_back(delegation);
                slot.delegation_waiters.drain_into(wake);
            }
            Event::RawReceived { session, payload } => {
                let Some(slot) = self.sessions.get_mut(&session) else {
                    return;
                };
                if slot.raw.len() >= MAX_RAW_MESSAGES
                    || slot.raw_bytes + payload.len() > MAX_RAW_BYTES
                {
                    self.overflow(session, "raw message queue full");
                    return;
                }
                slot.raw_bytes += payload.len();
                slot.raw.push_back(payload);
                slot.raw_waiters.drain_into(wake);
            }
            Event::TransferComplete {
                session, transfer, ..
            } => {
                if let Some(slot) = self.sessions.get_mut(&session)
                    && let Some(done) = slot.transfers.get_mut(&transfer)
                {
                    *done = true;
                    slot.transfer_waiters.drain_into(wake);
                }
            }
            _ => {}
        }
    }

    /// The fate of a session's 0-RTT data is known. On a rejection (client),
    /// the core forgot every stream opened in 0-RTT and will hand their ids
    /// out again: their records here go, their handles (which remember they
    /// were opened early) fail with `ZeroRttRejected` from now on and never
    /// touch the core again, and whoever waits on them is woken to see it.
    fn on_zero_rtt_settled(
        &mut self,
        session: SessionHandle,
        accepted: bool,
        wake: &mut Vec<Waker>,
    ) {
        let Some(slot) = self.sessions.get_mut(&session) else {
            return;
        };
        tracing::debug!(parent: &slot.span, accepted, "0-RTT settled");
        slot.zero_rtt = Some(accepted);
        slot.zero_rtt_waiters.drain_into(wake);
        if accepted {
            return;
        }
        let side = slot.side;
        let early: Vec<_> = self
            .streams
            .range(stream_range(session))
            .filter(|((_, id), _)| id.initiator() == side)
            .map(|(key, _)| *key)
            .collect();
        for key in early {
            if let Some(mut stream) = self.streams.remove(&key) {
                stream.wake_all(wake);
            }
        }
    }

    /// True if the session's 0-RTT data was rejected: handles of streams
    /// opened in 0-RTT are dead.
    pub(crate) fn zero_rtt_rejected(&mut self, session: SessionHandle) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|slot| slot.zero_rtt == Some(false))
            || self
                .endpoint
                .session(session)
                .is_some_and(|view| view.zero_rtt() == kwik_core::ZeroRtt::Rejected)
    }

    /// A path changed state: settles a pending `add_path` (the first outcome
    /// wins), queues the event and wakes who waits on paths.
    /// Queues `event` for `session`'s application, if the session is known.
    fn queue_path_event(
        &mut self,
        session: SessionHandle,
        event: PathEvent,
        wake: &mut Vec<Waker>,
    ) {
        if let Some(slot) = self.sessions.get_mut(&session) {
            slot.push_path_event(event, wake);
        }
    }

    fn on_path_event(
        &mut self,
        session: SessionHandle,
        path: PathId,
        outcome: Result<(), PathFailure>,
        event: PathEvent,
        wake: &mut Vec<Waker>,
    ) {
        let Some(slot) = self.sessions.get_mut(&session) else {
            return;
        };
        tracing::trace!(target: kwik_core::log::DRIVER, parent: &slot.span, ?event, "path event");
        if let Some(pending) = slot.adding.get_mut(&path) {
            pending.get_or_insert(outcome);
        }
        slot.push_path_event(event, wake);
    }

    /// The application does not take what a secondary session receives:
    /// close the session rather than grow without bound or drop silently.
    /// A per-session queue overflowed: the session is closed, once (events
    /// already queued for it in the same batch find it closing). Logged at
    /// debug: the peer's traffic caused it (`kwik_core::log`).
    fn overflow(&mut self, session: SessionHandle, reason: &str) {
        let Some(mut view) = self.endpoint.session(session) else {
            return;
        };
        if view.close_reason().is_some() {
            return;
        }
        if let Some(slot) = self.sessions.get(&session) {
            tracing::debug!(target: kwik_core::log::DRIVER, parent: &slot.span, reason, "queue overflow: closing the session");
        }
        view.close_with(ErrorCode::Internal, reason.as_bytes());
    }

    fn on_session_closed(
        &mut self,
        session: SessionHandle,
        reason: CloseReason,
        wake: &mut Vec<Waker>,
    ) {
        let stats = self.endpoint.session(session).map(|view| view.stats());
        let Some(slot) = self.sessions.get_mut(&session) else {
            return;
        };
        tracing::trace!(target: kwik_core::log::DRIVER, parent: &slot.span, %reason, "session closed");
        slot.close.get_or_insert(reason);
        slot.final_stats = stats;
        slot.wake_all(wake);
        for (_, stream) in self.streams.range_mut(stream_range(session)) {
            stream.wake_all(wake);
        }
    }

    /// The peer stopped a stream we send on. Wakes its writer; if no handle
    /// will ever look at that sending half again, lets the core free it.
    fn on_stream_stopped(
        &mut self,
        session: SessionHandle,
        stream: StreamId,
        code: u64,
        wake: &mut Vec<Waker>,
    ) {
        let key = (session, stream);
        if !self.streams.contains_key(&key) && self.unaccepted(session, stream) {
            let slot = StreamSlot {
                outcome: Some(SendOutcome::Stopped(code)),
                ..StreamSlot::default()
            };
            self.streams.insert(key, slot);
            return;
        }
        if let Some(slot) = self.streams.get_mut(&key) {
            slot.outcome = Some(SendOutcome::Stopped(code));
            wake.extend(slot.write.take());
            slot.stopped.drain_into(wake);
            // A live sending handle, or a stream not accepted yet (no handle
            // at all): the application will see the code.
            if slot.send_handle || !slot.recv_handle {
                return;
            }
        }
        if let Some(mut view) = self.endpoint.stream(session, stream) {
            let _ = view.reset(code);
        }
    }

    /// A peer-initiated stream the application has not accepted yet.
    fn unaccepted(&self, session: SessionHandle, stream: StreamId) -> bool {
        self.sessions.get(&session).is_some_and(|slot| {
            stream.initiator() != slot.side
                && stream.index() >= slot.accepted[dir_index(stream.dir())]
        })
    }

    /// Registers application handles for a stream the application just got.
    pub(crate) fn stream_handed_out(&mut self, session: SessionHandle, stream: StreamId) {
        let slot = self.streams.entry((session, stream)).or_default();
        let ours = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.side == stream.initiator());
        slot.send_handle = stream.dir() == Dir::Bi || ours;
        slot.recv_handle = stream.dir() == Dir::Bi || !ours;
        if !ours && let Some(s) = self.sessions.get_mut(&session) {
            let next = &mut s.accepted[dir_index(stream.dir())];
            *next = (*next).max(stream.index() + 1);
        }
    }

    /// One half's handle of a stream was dropped.
    pub(crate) fn release_stream(&mut self, session: SessionHandle, stream: StreamId, send: bool) {
        let key = (session, stream);
        if let Some(slot) = self.streams.get_mut(&key) {
            if send {
                slot.send_handle = false;
                slot.write = None;
                slot.stopped = Wakers::default();
            } else {
                slot.recv_handle = false;
                slot.read = None;
            }
            if !slot.send_handle && !slot.recv_handle {
                self.streams.remove(&key);
            }
        }
    }

    /// The last application handle of a session was dropped: close it (code
    /// 0, as quinn does) and forget it once drained.
    pub(crate) fn release_session(&mut self, session: SessionHandle) {
        let Some(slot) = self.sessions.get_mut(&session) else {
            return;
        };
        slot.handles = false;
        if slot.drained {
            self.remove_session(session);
        } else if slot.close.is_none()
            && let Some(mut view) = self.endpoint.session(session)
        {
            let _ = view.close(0, b"");
        }
    }

    fn remove_session(&mut self, session: SessionHandle) {
        self.sessions.remove(&session);
        let keys: Vec<_> = self
            .streams
            .range(stream_range(session))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.streams.remove(&key);
        }
    }

    /// The driver has ended: every session counts as ended with the
    /// endpoint, and every waiting future is woken to see it.
    pub(crate) fn shut_down(&mut self, wake: &mut Vec<Waker>) {
        self.driver_gone = true;
        self.closed = true;
        for slot in self.sessions.values_mut() {
            slot.close.get_or_insert(CloseReason::EndpointClosed);
            slot.wake_all(wake);
        }
        for slot in self.streams.values_mut() {
            slot.wake_all(wake);
        }
        self.accept.drain_into(wake);
        self.idle.drain_into(wake);
    }

    /// Stops accepting: refuses every queued attempt and wakes `accept`ers.
    pub(crate) fn stop_accepting(&mut self, wake: &mut Vec<Waker>) {
        self.closed = true;
        for pending in std::mem::take(&mut self.incoming) {
            let _ = self.endpoint.refuse(pending.id);
        }
        self.endpoint.set_server_config(None);
        self.accept.drain_into(wake);
    }
}
