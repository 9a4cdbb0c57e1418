//! Borrowed views through which the application acts on one session or one
//! stream (`endpoint.session(h)`, `endpoint.stream(h, id)`).
//!
//! A view exists only while the session does, so a stale handle yields
//! `None` rather than acting on something else; creating one marks the
//! session for driving, so whatever the call changed goes out on the next
//! [`KwikEndpoint::poll_output`](crate::KwikEndpoint::poll_output).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::VarInt;

use crate::candidate::Candidate;
use crate::delegation::Delegation;
use crate::endpoint::WorkQueue;
use crate::error::{
    CloseError, ErrorCode, KWIK_CODE_BASE, OpenError, ReadError, StreamError, WriteError,
};
use crate::event::Event;
use crate::ids::{Dir, SessionHandle, SessionId, Side, StreamId};
use crate::paths::{PathError, PathFilter, PathId, PathInfo};
use crate::proposal::ProposalId;
use crate::session::{Phase, Role, Session, SessionStats};
use crate::state::{SessionInfo, SessionState};
use crate::streams::SendState;
use crate::transfer::{SharedResource, TransferConfig, TransferId};
use crate::zero_rtt::ZeroRtt;

/// A session of this endpoint.
pub struct SessionView<'a> {
    pub(crate) session: &'a mut Session,
    pub(crate) now: Instant,
    pub(crate) unix_now: Duration,
    pub(crate) events: &'a mut VecDeque<Event>,
    /// The endpoint's set of sessions to drive; operations that leave
    /// something to send add this session to it.
    pub(crate) dirty: &'a mut WorkQueue,
}

impl SessionView<'_> {
    fn mark(&mut self) {
        self.dirty
            .push(&mut self.session.queued_drive, self.session.handle);
    }

    /// The local handle.
    pub fn handle(&self) -> SessionHandle {
        self.session.handle
    }
    /// The server-assigned id, once established.
    pub fn id(&self) -> Option<SessionId> {
        self.session.id
    }
    /// Which side this endpoint plays.
    pub fn side(&self) -> Side {
        self.session.side
    }
    /// True once the kwik handshake completed and until the session closes.
    pub fn is_established(&self) -> bool {
        self.session.phase == Phase::Active
    }
    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<crate::CloseReason> {
        self.session.close_reason.clone()
    }
    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.session.remote_address()
    }
    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.session.stats()
    }

    /// Opens a logical stream. It becomes visible to the peer with its first
    /// byte or FIN, as in QUIC.
    pub fn open(&mut self, dir: Dir) -> Result<StreamId, OpenError> {
        self.session.open(dir)
    }

    /// Client: sends the Hello now, in 0-RTT (PROTOCOL.md §12), if this
    /// session's connection has 0-RTT keys — the TLS layer resumed a session
    /// with this server whose ticket allows early data — and its handshake
    /// has not completed. Returns whether the session is in 0-RTT; if not,
    /// nothing changed and the Hello goes after the handshake as usual.
    ///
    /// Call it right after [`KwikEndpoint::connect`](crate::KwikEndpoint::connect),
    /// before the first `poll_output`, so that the Hello leaves with the
    /// first flight. Then streams opened with
    /// [`open_idempotent`](Self::open_idempotent) send in 0-RTT too, and
    /// [`Event::ZeroRttSettled`] tells whether the server took it all.
    pub fn start_0rtt(&mut self) -> bool {
        self.mark();
        self.session.start_0rtt()
    }

    /// Where the session stands with 0-RTT (on a server: whether its Hello
    /// came in 0-RTT, and whether the handshake has confirmed it since).
    pub fn zero_rtt(&self) -> ZeroRtt {
        self.session.zero_rtt()
    }

    /// Opens a logical stream whose data the application declares
    /// **idempotent**: harmless if the server receives it twice, because
    /// 0-RTT data can be replayed by whoever captured it (PROTOCOL.md
    /// §12.2). Before the session is established — after
    /// [`start_0rtt`](Self::start_0rtt) returned true and until the server
    /// rejects 0-RTT — the stream's data rides in 0-RTT, within the limits
    /// of the server's last Welcome; once established this is
    /// [`open`](Self::open).
    ///
    /// # Errors
    /// [`OpenError::NotEstablished`] if the session is not established and
    /// not in 0-RTT (or nothing is remembered of the server's limits, or
    /// 0-RTT was rejected: wait for [`Event::SessionEstablished`]);
    /// [`OpenError::Blocked`] if the server's stream limit is reached.
    pub fn open_idempotent(&mut self, dir: Dir) -> Result<StreamId, OpenError> {
        self.session.open_idempotent(dir)
    }

    /// Takes the next stream the peer opened in `dir`.
    pub fn accept(&mut self, dir: Dir) -> Option<StreamId> {
        self.session.streams.accept(dir)
    }

    /// A view of one of this session's streams (`None` if it is gone; see
    /// [`KwikEndpoint::stream`](crate::KwikEndpoint::stream) for streams
    /// whose 0-RTT data was rejected).
    pub fn stream(&mut self, id: StreamId) -> Option<StreamView<'_>> {
        if self.session.streams.get_mut(id).is_none() && !self.session.streams.was_rejected(id) {
            return None;
        }
        Some(StreamView::new(self.session, id, self.dirty))
    }

    /// Bytes buffered for the application on stream `id`.
    pub fn stream_buffered(&self, id: StreamId) -> Option<u64> {
        self.session.streams.stream_buffered(id)
    }

    /// Closes the session: the peer sees `code` and `reason`. Pending data is
    /// abandoned. Codes in kwik's reserved block are refused.
    pub fn close(&mut self, code: u64, reason: &[u8]) -> Result<(), CloseError> {
        let reserved = (KWIK_CODE_BASE..KWIK_CODE_BASE + 0x100).contains(&code);
        let code = VarInt::from_u64(code).map_err(|_| CloseError::ReservedCode(code))?;
        if reserved {
            return Err(CloseError::ReservedCode(code.into_inner()));
        }
        self.mark();
        self.session.close(self.now, code, reason, self.events);
        Ok(())
    }

    /// Which part this session plays (client, primary or secondary).
    pub fn role(&self) -> Role {
        self.session.role
    }

    /// Where the session stands (PROTOCOL.md §15.1).
    pub fn state(&self) -> SessionState {
        self.session.state()
    }

    /// The session's state with its history (bounded like
    /// [`PathInfo::history`]).
    pub fn info(&self) -> SessionInfo {
        self.session.info()
    }

    // ----- multi-server -----

    /// Primary: asks the client to join the secondary server at `address`
    /// (its certificate validated for `server_name`). Returns the path id at
    /// once; [`Event::PathAdded`] or [`Event::PathFailed`] follows.
    pub fn add_path(
        &mut self,
        address: SocketAddr,
        server_name: &str,
    ) -> Result<PathId, PathError> {
        self.mark();
        self.session
            .add_path(self.now, self.unix_now, address, server_name, self.events)
    }

    /// Client: proposes `candidate` — a server this client found itself —
    /// to the primary as a secondary path (PROTOCOL.md §13). Returns the
    /// proposal's id at once; [`Event::PathProposalAnswered`] follows with
    /// the primary's verdict. An approved proposal arrives as an ordinary
    /// AddPath, judged by this client's [`PathPolicy`](crate::PathPolicy)
    /// like any other, and its path then joins as usual
    /// ([`Event::PathAdded`]). Only the address and server name are sent.
    ///
    /// # Errors
    /// [`PathError::WrongRole`] on a server session;
    /// [`PathError::SessionClosed`] before the session is established or
    /// after it ended; [`PathError::LimitReached`] while
    /// [`MAX_OUTSTANDING_PROPOSALS`](crate::MAX_OUTSTANDING_PROPOSALS) are
    /// unanswered; [`PathError::InvalidCandidate`] for an address that
    /// cannot be dialled (port 0, unspecified, multicast, broadcast), an
    /// empty or over-long server name, or a server this client's own path
    /// policy does not allow.
    pub fn propose_path(&mut self, candidate: &Candidate) -> Result<ProposalId, PathError> {
        self.mark();
        self.session.propose_path(candidate)
    }

    /// Removes a secondary path gracefully: it is Closing at once (no new
    /// work), data in flight on it drains, then its connection closes
    /// ([`Event::PathClosed`]). On the
    /// primary this asks the client; on the client it tells the primary.
    pub fn remove_path(&mut self, path: PathId) -> Result<(), PathError> {
        self.mark();
        self.session.remove_path(path, self.now, self.events)
    }

    /// Paths of this session (client and primary), in id order.
    pub fn paths(&mut self, filter: PathFilter) -> Vec<PathInfo> {
        let all = self.session.paths();
        all.into_iter()
            .filter(|p| match filter {
                PathFilter::All => true,
                PathFilter::Live => p.state.is_live(),
                PathFilter::Dead => p.state == crate::PathState::Dead,
            })
            .collect()
    }

    /// Primary: relays `payload` to the server of `path` through the client,
    /// untouched and with its boundaries; client: sends it to that server.
    pub fn send_raw(&mut self, path: PathId, payload: Bytes) -> Result<(), PathError> {
        self.mark();
        self.session.send_raw(path, payload)
    }

    /// Primary: hands bytes `range` of `stream` (a stream this primary
    /// opened) to the server of `path`, with an opaque `descriptor` for its
    /// application; `fin` if the range ends the stream.
    pub fn delegate(
        &mut self,
        path: PathId,
        stream: StreamId,
        range: Range<u64>,
        fin: bool,
        descriptor: Bytes,
    ) -> Result<Delegation, PathError> {
        self.mark();
        self.session
            .delegate(path, stream, range, fin, descriptor, false)
    }

    /// Primary: serves `resource` over `stream` (a stream this primary
    /// opened) from this server and every live secondary path, whose servers
    /// must serve `descriptor` (see
    /// [`KwikEndpoint::serve_resource`](crate::KwikEndpoint::serve_resource)).
    /// Ranges are weighted by each path's measured rate, each path's
    /// outstanding work is bounded, the tail is stolen by idle paths, and the
    /// ranges of dead paths are re-assigned. [`Event::TransferComplete`]
    /// follows once the client acknowledged every byte.
    pub fn serve(
        &mut self,
        stream: StreamId,
        resource: SharedResource,
        descriptor: Bytes,
        config: TransferConfig,
    ) -> Result<TransferId, PathError> {
        self.mark();
        self.session.serve(stream, resource, descriptor, config)
    }

    /// Primary: delegated ranges the client has not acknowledged yet.
    pub fn outstanding(&self) -> Vec<Delegation> {
        self.session.outstanding()
    }

    /// Secondary: the path id the primary assigned to this connection.
    pub fn joined_path(&self) -> Option<PathId> {
        self.session.joined_path()
    }

    /// Primary or secondary: writes `data` at logical `offset` of `stream`
    /// as far as credit and the lane allow, advancing `data` past what was
    /// taken; `fin` ends the stream after the last byte of `data`.
    pub fn write_at(
        &mut self,
        stream: StreamId,
        offset: u64,
        data: &mut Bytes,
        fin: bool,
    ) -> Result<usize, WriteError> {
        self.mark();
        self.session.write_range(stream, offset, data, fin, false)
    }

    /// Like [`write_at`](Self::write_at), on the urgent lane: the bytes go
    /// out ahead of data already queued on the connection. For ranges the
    /// reader is waiting on — a delegation marked
    /// [`urgent`](crate::Delegation::urgent).
    pub fn write_at_urgent(
        &mut self,
        stream: StreamId,
        offset: u64,
        data: &mut Bytes,
        fin: bool,
    ) -> Result<usize, WriteError> {
        self.mark();
        self.session.write_range(stream, offset, data, fin, true)
    }

    /// Closes the session with a kwik protocol code (for kwik's own layers).
    #[doc(hidden)]
    pub fn close_with(&mut self, code: ErrorCode, reason: &[u8]) {
        let code = VarInt::from_u64(code.wire()).expect("small");
        self.mark();
        self.session.close(self.now, code, reason, self.events);
    }
}

/// One logical stream of a session.
pub struct StreamView<'a> {
    session: &'a mut Session,
    id: StreamId,
    dirty: &'a mut WorkQueue,
}

impl<'a> StreamView<'a> {
    pub(crate) fn new(session: &'a mut Session, id: StreamId, dirty: &'a mut WorkQueue) -> Self {
        Self { session, id, dirty }
    }

    fn mark(&mut self) {
        self.dirty
            .push(&mut self.session.queued_drive, self.session.handle);
    }

    /// Reading sends nothing unless it returned credit or released the stream.
    fn mark_if_control(&mut self) {
        if self.session.streams.has_control() {
            self.mark();
        }
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Writes as much of `data` as credit and the lane allow; returns how
    /// much was taken (copied once into a `Bytes`).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        let mut chunk = Bytes::copy_from_slice(data);
        self.mark();
        self.session.write(self.id, &mut chunk)
    }

    /// Writes from `data` without copying; advances it past what was taken.
    pub fn write_chunk(&mut self, data: &mut Bytes) -> Result<usize, WriteError> {
        self.mark();
        self.session.write(self.id, data)
    }

    /// Ends the sending half; the reader sees end of stream after the data.
    /// If the reader stopped the stream, this fails with
    /// [`StreamError::Stopped`] unless the stop found every byte written
    /// delivered (PROTOCOL.md §5.3), in which case it succeeds.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.mark();
        self.session.finish(self.id)
    }

    /// Abandons the sending half; the reader sees `code`.
    pub fn reset(&mut self, code: u64) -> Result<(), StreamError> {
        self.mark();
        self.session.reset(self.id, code)
    }

    /// Next contiguous bytes (at most `max`); `Ok(None)` at end of stream.
    /// Read until `Err(Blocked)` to be woken again by `StreamReadable`.
    pub fn read(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        let result = self.session.read(self.id, max);
        self.mark_if_control();
        result
    }

    /// Copies the next contiguous bytes into `buf` (possibly fewer than fit);
    /// `Ok(None)` at end of stream.
    pub fn read_into(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        let result = self.session.read(self.id, buf.len());
        self.mark_if_control();
        Ok(result?.map(|chunk| {
            buf[..chunk.len()].copy_from_slice(&chunk);
            chunk.len()
        }))
    }

    /// Sets the sending priority of this stream, as QUIC implementations
    /// do: among this session's streams, data of higher priority is sent
    /// first; equal priorities share fairly. The default is 0. Values above
    /// [`MAX_STREAM_PRIORITY`](crate::MAX_STREAM_PRIORITY) are clamped to
    /// it (the two values above belong to kwik's control stream and urgent
    /// lane).
    ///
    /// Priority is honoured when a lane is chosen (a stream shares a real
    /// QUIC stream only with streams of its own priority, and that QUIC
    /// stream carries the priority), when waiting writers are woken and
    /// queued ranges are written, and by
    /// [`SessionView::serve`] (transfers of higher priority get the paths'
    /// budgets first; delegations carry the priority to the secondary). It
    /// is a sender-side hint: the bytes delivered are the same whatever it
    /// is (PROTOCOL.md §14). A stream whose priority changes moves to a lane
    /// of the new priority with its next record.
    ///
    /// # Errors
    /// [`StreamError::ClosedStream`] if this side has no sending half of the
    /// stream (or it is released); [`StreamError::SessionClosed`],
    /// [`StreamError::ZeroRttRejected`] as for the other operations.
    pub fn set_priority(&mut self, priority: i32) -> Result<(), StreamError> {
        self.mark();
        self.session.set_priority(self.id, priority)
    }

    /// The sending priority of this stream (0 unless
    /// [`set_priority`](Self::set_priority) changed it; on a secondary, the
    /// priority its delegations carried).
    ///
    /// # Errors
    /// As [`set_priority`](Self::set_priority).
    pub fn priority(&self) -> Result<i32, StreamError> {
        self.session.priority(self.id)
    }

    /// Where the sending half stands (`None` if this side has none, or it
    /// is released), without changing anything.
    pub fn send_state(&self) -> Option<SendState> {
        self.session.streams.send_state(self.id)
    }

    /// Tells the peer to stop sending; unread data is discarded.
    pub fn stop(&mut self, code: u64) -> Result<(), StreamError> {
        self.mark();
        self.session.stop(self.id, code)
    }
}
