//! Logical streams of one session: their state machines, the stream-count
//! limits of both sides, and the per-stream flow-control credit.
//!
//! Nothing here touches QUIC: the session moves payload between lanes and
//! this table, and sends the control messages this table asks for. Keeping
//! the bookkeeping pure makes the rules (who may send what, when a stream is
//! gone, when credit is returned) testable on their own.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::assembler::{Assembler, PIECE_OVERHEAD};
use crate::codec::DataPiece;
use crate::error::{ErrorCode, ReadError, StreamError, Violation};
use crate::event::Event;
use crate::ids::{Dir, SessionHandle, Side, StreamId};
use crate::proto::control::{
    Ack, ByteRange, ResetStream, StopSending, StreamComplete, StreamCredit, StreamsCredit,
    control_message::Body,
};
use crate::wire::MAX_ACK_RANGES;

fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

const DIRS: [Dir; 2] = [Dir::Bi, Dir::Uni];

/// Where the sending half of a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    /// Accepting writes.
    Open,
    /// `finish` was called; the FIN record waits for its lane.
    FinPending,
    /// The FIN record is on its lane; waiting for the peer's StreamComplete.
    Finished,
    /// The peer asked to stop with this code; reported to the application
    /// on its next call (unless everything written had been delivered and
    /// that call is `finish`, which then succeeds: PROTOCOL.md §5.3).
    Stopped(u64),
}

#[derive(Debug)]
pub(crate) struct SendHalf {
    /// Next logical offset to send.
    pub offset: u64,
    /// Absolute offset limit granted by the peer.
    pub credit: u64,
    /// Lane index, once assigned.
    pub lane: Option<usize>,
    pub state: SendState,
    /// A write was refused; announce `StreamWritable` when that changes.
    pub want_writable: bool,
    /// The stream's final size, once a FIN record was written (by
    /// `write_at`) or handed to a secondary in a delegation: the reader may
    /// then report the stream complete while this half is still open.
    pub final_size: Option<u64>,
    /// One past the highest byte this side wrote (by `write` or `write_at`).
    pub high: u64,
    /// The peer stopped the stream after every byte written (and every byte
    /// below the final size) had reached it: nothing the application sent
    /// was lost, so finishing the stream succeeds (§5.3).
    pub stop_delivered: bool,
    /// Sending priority (higher first; already clamped, see
    /// `lanes::clamp_priority`): which lanes it may share, and the
    /// order of its writes, jobs and transfers (PROTOCOL.md §14).
    pub priority: i32,
}

impl SendHalf {
    /// How far this side's writing reached: the offset a reset names, and
    /// what a stopping reader must have received for the stop to find
    /// everything delivered.
    pub(crate) fn reached(&self) -> u64 {
        self.offset.max(self.high)
    }

    fn new(credit: u64) -> Self {
        Self {
            offset: 0,
            credit,
            lane: None,
            state: SendState::Open,
            want_writable: false,
            final_size: None,
            high: 0,
            stop_delivered: false,
            priority: 0,
        }
    }
}

#[derive(Debug)]
enum RecvState {
    Open,
    /// Reset by the peer; the code is handed out on the next read.
    Reset(u64),
}

#[derive(Debug)]
pub(crate) struct RecvHalf {
    asm: Assembler,
    /// Absolute offset limit granted to the peer.
    granted: u64,
    window: u64,
    final_offset: Option<u64>,
    /// Highest offset any byte has reached.
    max_seen: u64,
    state: RecvState,
    /// `StreamReadable` was announced and the reader has not hit `Blocked` since.
    readable_announced: bool,
    complete_sent: bool,
    /// Ranges of this stream were delegated: acknowledge receipt to the primary.
    delegated: bool,
    /// New bytes arrived since the last acknowledgement.
    ack_pending: bool,
}

impl RecvHalf {
    fn new(window: u64) -> Self {
        Self {
            asm: Assembler::default(),
            granted: window,
            window,
            final_offset: None,
            max_seen: 0,
            state: RecvState::Open,
            readable_announced: false,
            complete_sent: false,
            delegated: false,
            ack_pending: false,
        }
    }

    /// Bytes held for the application.
    pub(crate) fn buffered(&self) -> u64 {
        self.asm.buffered()
    }

    /// Most memory the stream may be charged (payload plus per-piece
    /// overhead) before the peer counts as abusive: twice the window, and
    /// some slack for tiny windows.
    fn charge_limit(&self) -> u64 {
        self.window
            .saturating_mul(2)
            .saturating_add(64 * PIECE_OVERHEAD)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub send: Option<SendHalf>,
    pub recv: Option<RecvHalf>,
}

/// What the session must do after the table changed a send half.
#[derive(Debug, Default)]
pub(crate) struct Released {
    /// Lane whose user count dropped.
    pub lane: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct Streams {
    session: SessionHandle,
    side: Side,
    map: BTreeMap<StreamId, Stream>,
    next_local: [u64; 2],
    /// Cumulative count of local streams the peer allows.
    local_limit: [u64; 2],
    next_remote: [u64; 2],
    /// Cumulative count of remote streams this side allows.
    remote_limit: [u64; 2],
    accept_queue: [VecDeque<StreamId>; 2],
    open_blocked: [bool; 2],
    /// Credit the peer grants each stream this side sends on.
    peer_window: u64,
    /// Credit this side grants each stream it receives on.
    window: u64,
    pending_credit: BTreeSet<StreamId>,
    pending_streams_credit: [bool; 2],
    control: VecDeque<Body>,
    /// Secondary-server role: writes into streams the client's primary opened.
    secondary: bool,
    /// The peer's limits are known (its handshake message, or what a
    /// client remembers of it for 0-RTT).
    peer_limits_known: bool,
    /// Client: local streams of each direction whose 0-RTT data the server
    /// rejected; their ids are free again (see [`Streams::zero_rtt_rejected`]).
    rejected: [u64; 2],
    /// Some delegated stream has arrivals not yet acknowledged.
    acks_due: bool,
}

fn violation(reason: impl Into<String>) -> Violation {
    Violation::new(ErrorCode::InvalidFrame, reason)
}

/// Most concurrent logical streams per direction a side may allow: stream
/// state is created for every index below the limit a peer names, so the
/// configured limits are clamped to a size whose tables stay small.
pub(crate) const MAX_STREAMS_PER_DIR: u64 = 1 << 14;

impl Streams {
    pub(crate) fn new(
        session: SessionHandle,
        side: Side,
        window: u64,
        max_bidi: u64,
        max_uni: u64,
    ) -> Self {
        let max_bidi = max_bidi.min(MAX_STREAMS_PER_DIR);
        let max_uni = max_uni.min(MAX_STREAMS_PER_DIR);
        Self {
            session,
            side,
            map: BTreeMap::new(),
            next_local: [0; 2],
            local_limit: [0; 2],
            next_remote: [0; 2],
            remote_limit: [max_bidi, max_uni],
            accept_queue: Default::default(),
            open_blocked: [false; 2],
            peer_window: 0,
            window,
            pending_credit: BTreeSet::new(),
            pending_streams_credit: [false; 2],
            control: VecDeque::new(),
            secondary: false,
            peer_limits_known: false,
            rejected: [0; 2],
            acks_due: false,
        }
    }

    /// Switches to the secondary-server role: send halves are created on
    /// demand for the streams the client names.
    pub(crate) fn set_secondary(&mut self) {
        self.secondary = true;
    }

    /// The sending half a secondary writes `id` through, created on demand.
    pub(crate) fn source_half(&mut self, id: StreamId) -> &mut SendHalf {
        let window = self.peer_window;
        self.map
            .entry(id)
            .or_default()
            .send
            .get_or_insert_with(|| SendHalf::new(window))
    }

    /// Applies the peer's handshake limits. Streams opened before (in
    /// 0-RTT, with the limits a client remembered) get at least the new
    /// window as credit: it is every stream's initial credit.
    pub(crate) fn set_peer_limits(&mut self, window: u64, max_bidi: u64, max_uni: u64) {
        self.peer_window = window;
        self.local_limit = [max_bidi, max_uni];
        self.peer_limits_known = true;
        let side = self.side;
        for (id, stream) in &mut self.map {
            if id.initiator() == side
                && let Some(send) = stream.send.as_mut()
            {
                send.credit = send.credit.max(window);
            }
        }
    }

    /// The per-stream window the peer grants (its initial credit).
    pub(crate) fn peer_window(&self) -> u64 {
        self.peer_window
    }

    /// The credit the peer granted on `id`'s sending half.
    pub(crate) fn send_credit(&self, id: StreamId) -> Option<u64> {
        self.map.get(&id)?.send.as_ref().map(|s| s.credit)
    }

    /// True once the peer's limits are known (or remembered).
    pub(crate) fn peer_limits_known(&self) -> bool {
        self.peer_limits_known
    }

    /// Client: the server rejected 0-RTT and never saw the streams opened
    /// in it. As quinn-proto does with QUIC streams, they are forgotten and
    /// their ids used again from index 0 — the server must not see a gap of
    /// streams that will never carry anything. Until an id is opened again,
    /// operations on it report the rejection ([`Streams::was_rejected`]).
    /// The remembered limits go too; the Welcome brings the real ones.
    pub(crate) fn zero_rtt_rejected(&mut self) {
        let side = self.side;
        self.map.retain(|id, _| id.initiator() != side);
        self.rejected = self.next_local;
        self.next_local = [0; 2];
        self.local_limit = [0; 2];
        self.peer_window = 0;
        self.peer_limits_known = false;
        self.open_blocked = [false; 2];
        self.pending_credit.retain(|id| id.initiator() != side);
        self.control.clear();
    }

    /// True if `id` is a stream opened in 0-RTT that the server rejected,
    /// and its id has not been opened again since.
    pub(crate) fn was_rejected(&self, id: StreamId) -> bool {
        let d = dir_index(id.dir());
        id.initiator() == self.side
            && id.index() < self.rejected[d]
            && id.index() >= self.next_local[d]
    }

    pub(crate) fn get_mut(&mut self, id: StreamId) -> Option<&mut Stream> {
        self.map.get_mut(&id)
    }

    pub(crate) fn send_state(&self, id: StreamId) -> Option<SendState> {
        Some(self.map.get(&id)?.send.as_ref()?.state)
    }

    /// The sending priority of `id` (`None` if this side has no sending half).
    pub(crate) fn priority(&self, id: StreamId) -> Option<i32> {
        Some(self.map.get(&id)?.send.as_ref()?.priority)
    }

    pub(crate) fn send_mut(&mut self, id: StreamId) -> Option<&mut SendHalf> {
        self.map.get_mut(&id)?.send.as_mut()
    }

    /// Total bytes buffered for the application across all streams.
    pub(crate) fn buffered(&self) -> u64 {
        self.map
            .values()
            .filter_map(|s| s.recv.as_ref())
            .map(RecvHalf::buffered)
            .sum()
    }

    /// Bytes buffered for one stream.
    pub(crate) fn stream_buffered(&self, id: StreamId) -> Option<u64> {
        Some(self.map.get(&id)?.recv.as_ref()?.buffered())
    }

    /// Number of live streams.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn open(&mut self, dir: Dir) -> Option<StreamId> {
        let d = dir_index(dir);
        if self.next_local[d] >= self.local_limit[d] {
            self.open_blocked[d] = true;
            return None;
        }
        let id = StreamId::new(self.side, dir, self.next_local[d]);
        self.next_local[d] += 1;
        tracing::trace!(target: crate::log::DATA, session = %self.session, stream = %id, "opened");
        let stream = Stream {
            send: Some(SendHalf::new(self.peer_window)),
            recv: (dir == Dir::Bi).then(|| RecvHalf::new(self.window)),
        };
        self.map.insert(id, stream);
        Some(id)
    }

    pub(crate) fn accept(&mut self, dir: Dir) -> Option<StreamId> {
        self.accept_queue[dir_index(dir)].pop_front()
    }

    /// Makes sure a peer-initiated stream exists (opening every lower one of
    /// its kind, as QUIC does). Errors if the peer exceeded its allowance.
    fn open_remote(&mut self, id: StreamId, events: &mut VecDeque<Event>) -> Result<(), Violation> {
        let d = dir_index(id.dir());
        if id.index() < self.next_remote[d] {
            return Ok(());
        }
        if id.index() >= self.remote_limit[d] {
            return Err(Violation::new(
                ErrorCode::StreamLimit,
                format!(
                    "peer opened {id} beyond its limit of {}",
                    self.remote_limit[d]
                ),
            ));
        }
        for index in self.next_remote[d]..=id.index() {
            let id = StreamId::new(self.side.peer(), id.dir(), index);
            let stream = Stream {
                send: (id.dir() == Dir::Bi).then(|| SendHalf::new(self.peer_window)),
                recv: Some(RecvHalf::new(self.window)),
            };
            self.map.insert(id, stream);
            self.accept_queue[d].push_back(id);
        }
        self.next_remote[d] = id.index() + 1;
        tracing::trace!(target: crate::log::DATA, session = %self.session, stream = %id, "opened by the peer");
        events.push_back(Event::StreamOpened {
            session: self.session,
            dir: id.dir(),
        });
        Ok(())
    }

    /// Checks that the peer may send on `id` and opens it if new.
    fn peer_sends_on(
        &mut self,
        id: StreamId,
        events: &mut VecDeque<Event>,
    ) -> Result<(), Violation> {
        if id.initiator() == self.side {
            if id.dir() == Dir::Uni {
                return Err(violation(format!(
                    "peer sent on {id}, our unidirectional stream"
                )));
            }
            if id.index() >= self.next_local[0] {
                return Err(violation(format!("peer sent on unopened stream {id}")));
            }
            Ok(())
        } else {
            self.open_remote(id, events)
        }
    }

    /// Checks that the peer may receive on `id` (it names our sending half).
    fn peer_receives_on(
        &mut self,
        id: StreamId,
        events: &mut VecDeque<Event>,
    ) -> Result<(), Violation> {
        if self.secondary {
            // A secondary holds state only for streams it was delegated;
            // messages about others are ignored by the caller.
            if id.initiator() != self.side {
                return Err(violation(format!("{id} is not a server stream")));
            }
            return Ok(());
        }
        if id.initiator() == self.side {
            let d = dir_index(id.dir());
            if id.index() >= self.next_local[d] {
                return Err(violation(format!("peer named unopened stream {id}")));
            }
            Ok(())
        } else {
            if id.dir() == Dir::Uni {
                return Err(violation(format!(
                    "peer named {id}, its own unidirectional stream"
                )));
            }
            self.open_remote(id, events)
        }
    }

    /// Payload from a lane.
    pub(crate) fn on_data(
        &mut self,
        piece: DataPiece,
        events: &mut VecDeque<Event>,
    ) -> Result<(), Violation> {
        self.peer_sends_on(piece.stream, events)?;
        let session = self.session;
        let Some(recv) = self
            .map
            .get_mut(&piece.stream)
            .and_then(|s| s.recv.as_mut())
        else {
            return Ok(()); // closed stream: late bytes are dropped
        };
        let end = piece.offset + piece.data.len() as u64;
        if end > recv.granted {
            return Err(Violation::new(
                ErrorCode::FlowControl,
                format!(
                    "{} sent to {end}, beyond credit {}",
                    piece.stream, recv.granted
                ),
            ));
        }
        if let Some(fin) = recv.final_offset {
            if end > fin || (piece.fin && end != fin) {
                return Err(violation(format!("{}: final size changed", piece.stream)));
            }
        } else if piece.fin {
            if recv.max_seen > end {
                return Err(violation(format!(
                    "{}: FIN below received data",
                    piece.stream
                )));
            }
            recv.final_offset = Some(end);
        }
        recv.max_seen = recv.max_seen.max(end);
        if !matches!(recv.state, RecvState::Open) {
            return Ok(());
        }
        recv.ack_pending |= recv.delegated;
        self.acks_due |= recv.delegated;
        let became_readable = recv.asm.insert(piece.offset, piece.data).map_err(|c| {
            Violation::new(
                ErrorCode::OffsetMismatch,
                format!("{}: different bytes at offset {}", piece.stream, c.offset),
            )
        })?;
        if recv.asm.charged() > recv.charge_limit() {
            return Err(Violation::new(
                ErrorCode::ResourceLimit,
                format!(
                    "{}: {} bytes held in fragments cost {}, over twice the window",
                    piece.stream,
                    recv.asm.buffered(),
                    recv.asm.charged()
                ),
            ));
        }
        let at_end = recv.final_offset == Some(recv.asm.contiguous_end());
        if (became_readable || (piece.fin && at_end)) && !recv.readable_announced {
            recv.readable_announced = true;
            events.push_back(Event::StreamReadable {
                session,
                stream: piece.stream,
            });
        }
        if at_end && !recv.complete_sent {
            recv.complete_sent = true;
            self.control.push_back(Body::StreamComplete(StreamComplete {
                stream_id: piece.stream.0,
            }));
        }
        Ok(())
    }

    pub(crate) fn read(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, ReadError> {
        let Some(recv) = self.map.get_mut(&id).and_then(|s| s.recv.as_mut()) else {
            return Err(ReadError::ClosedStream);
        };
        if let RecvState::Reset(code) = recv.state {
            self.free_recv(id);
            return Err(ReadError::Reset(code));
        }
        if let Some(data) = recv.asm.read(max.max(1)) {
            let read = recv.asm.read_offset();
            if recv.final_offset.is_none() && recv.granted - read <= recv.window / 2 {
                recv.granted = read + recv.window;
                self.pending_credit.insert(id);
            }
            return Ok(Some(data));
        }
        if recv.final_offset == Some(recv.asm.read_offset()) {
            self.free_recv(id);
            return Ok(None);
        }
        recv.readable_announced = false;
        Err(ReadError::Blocked)
    }

    /// The application no longer wants to read `id`: frees the receiving
    /// half and returns the StopSending its sources must be sent, if any
    /// (none once everything arrived or after a reset). The caller routes
    /// it: the sources of a stream are known to the session, not here.
    pub(crate) fn stop(&mut self, id: StreamId, code: u64) -> Result<Option<Body>, StreamError> {
        let Some(recv) = self.map.get_mut(&id).and_then(|s| s.recv.as_mut()) else {
            return Err(StreamError::ClosedStream);
        };
        let received = recv.asm.contiguous_end();
        let done = recv.final_offset.is_some_and(|f| f == received);
        tracing::debug!(target: crate::log::DATA, session = %self.session, stream = %id, code, received, "stopped");
        let stop = (!done && matches!(recv.state, RecvState::Open)).then(|| {
            Body::StopSending(StopSending {
                stream_id: id.0,
                error_code: code,
                received,
            })
        });
        self.free_recv(id);
        Ok(stop)
    }

    /// The application abandons its sending half; returns the lane to release.
    pub(crate) fn reset(&mut self, id: StreamId, code: u64) -> Result<Released, StreamError> {
        let Some(send) = self.send_mut(id) else {
            return Err(StreamError::ClosedStream);
        };
        if let SendState::Stopped(code) = send.state {
            self.free_send(id);
            return Err(StreamError::Stopped(code));
        }
        let offset = send.reached();
        let lane_held = matches!(send.state, SendState::Open | SendState::FinPending);
        let lane = send.lane.filter(|_| lane_held);
        tracing::debug!(target: crate::log::DATA, session = %self.session, stream = %id, code, final_offset = offset, "reset");
        self.control.push_back(Body::ResetStream(ResetStream {
            stream_id: id.0,
            error_code: code,
            final_offset: offset,
        }));
        self.free_send(id);
        Ok(Released { lane })
    }

    /// Marks the FIN record of `id` as written to its lane.
    pub(crate) fn fin_written(&mut self, id: StreamId) -> Released {
        let Some(send) = self.send_mut(id) else {
            return Released::default();
        };
        send.state = SendState::Finished;
        Released { lane: send.lane }
    }

    /// Forgets the sending half (after the application saw it was stopped).
    pub(crate) fn free_send(&mut self, id: StreamId) {
        if let Some(stream) = self.map.get_mut(&id) {
            stream.send = None;
            self.maybe_remove(id);
        }
    }

    fn free_recv(&mut self, id: StreamId) {
        if let Some(stream) = self.map.get_mut(&id) {
            stream.recv = None;
        }
        self.pending_credit.remove(&id);
        self.maybe_remove(id);
    }

    fn maybe_remove(&mut self, id: StreamId) {
        let Some(stream) = self.map.get(&id) else {
            return;
        };
        if stream.send.is_some() || stream.recv.is_some() {
            return;
        }
        self.map.remove(&id);
        if id.initiator() != self.side {
            let d = dir_index(id.dir());
            self.remote_limit[d] += 1;
            self.pending_streams_credit[d] = true;
        }
    }

    /// Applies a control message about streams.
    pub(crate) fn on_control(
        &mut self,
        body: Body,
        events: &mut VecDeque<Event>,
        released: &mut Vec<usize>,
    ) -> Result<(), Violation> {
        let session = self.session;
        match body {
            Body::StreamCredit(StreamCredit {
                stream_id,
                max_offset,
            }) => {
                let id = StreamId(stream_id);
                self.peer_receives_on(id, events)?;
                if let Some(send) = self.send_mut(id)
                    && max_offset > send.credit
                {
                    send.credit = max_offset;
                    if send.want_writable && send.state == SendState::Open {
                        send.want_writable = false;
                        events.push_back(Event::StreamWritable {
                            session,
                            stream: id,
                        });
                    }
                }
            }
            Body::StreamsCredit(StreamsCredit { bidi, max_streams }) => {
                let d = if bidi { 0 } else { 1 };
                if max_streams > self.local_limit[d] {
                    self.local_limit[d] = max_streams;
                    if std::mem::take(&mut self.open_blocked[d]) {
                        events.push_back(Event::StreamsAvailable {
                            session,
                            dir: DIRS[d],
                        });
                    }
                }
            }
            Body::ResetStream(ResetStream {
                stream_id,
                error_code,
                final_offset,
            }) => {
                let id = StreamId(stream_id);
                self.peer_sends_on(id, events)?;
                let Some(recv) = self.map.get_mut(&id).and_then(|s| s.recv.as_mut()) else {
                    return Ok(());
                };
                if final_offset < recv.max_seen
                    || recv.final_offset.is_some_and(|f| f != final_offset)
                {
                    return Err(violation(format!("{id}: reset changes the final size")));
                }
                if final_offset > recv.granted {
                    return Err(Violation::new(
                        ErrorCode::FlowControl,
                        format!("{id}: reset beyond credit"),
                    ));
                }
                recv.final_offset = Some(final_offset);
                if matches!(recv.state, RecvState::Open) {
                    recv.state = RecvState::Reset(error_code);
                    recv.asm.clear();
                    self.pending_credit.remove(&id);
                    tracing::debug!(target: crate::log::DATA, %session, stream = %id, code = error_code, final_offset, "reset by the peer");
                    events.push_back(Event::StreamReset {
                        session,
                        stream: id,
                        code: error_code,
                    });
                }
            }
            Body::StopSending(StopSending {
                stream_id,
                error_code,
                received,
            }) => {
                let id = StreamId(stream_id);
                self.peer_receives_on(id, events)?;
                let Some(send) = self.send_mut(id) else {
                    return Ok(());
                };
                if matches!(send.state, SendState::Stopped(_)) {
                    return Ok(());
                }
                let holds_lane = matches!(send.state, SendState::Open | SendState::FinPending);
                if holds_lane && let Some(lane) = send.lane {
                    released.push(lane);
                }
                let offset = send.reached();
                let app_done = matches!(send.state, SendState::FinPending | SendState::Finished);
                // Writes fail from now on, so what was written stays what
                // it is: delivered or not is settled here, once.
                let delivered = received >= offset.max(send.final_size.unwrap_or(0));
                send.state = SendState::Stopped(error_code);
                send.stop_delivered = delivered;
                // A secondary just stops: the stream's final size is the
                // primary's to tell, and the reader has already let go.
                if !self.secondary {
                    self.control.push_back(Body::ResetStream(ResetStream {
                        stream_id,
                        error_code,
                        final_offset: offset,
                    }));
                }
                if app_done && delivered {
                    // Finished, and every byte up to the end arrived: the
                    // reader only let go of a FIN it had no use for.
                    events.push_back(Event::StreamFinished {
                        session,
                        stream: id,
                    });
                } else {
                    tracing::debug!(target: crate::log::DATA, %session, stream = %id, code = error_code, "stopped by the peer");
                    events.push_back(Event::StreamStopped {
                        session,
                        stream: id,
                        code: error_code,
                    });
                }
                if app_done {
                    // The application finished and will not write again:
                    // nothing is left to report to it.
                    self.free_send(id);
                }
            }
            Body::StreamComplete(StreamComplete { stream_id }) => {
                let id = StreamId(stream_id);
                if self.secondary {
                    // Only the primary is told (§10.4); nothing to do here.
                    return Ok(());
                }
                self.peer_receives_on(id, events)?;
                let Some(send) = self.send_mut(id) else {
                    return Ok(()); // released already
                };
                let end_sent = send.state == SendState::Finished || send.final_size.is_some();
                if !end_sent {
                    if matches!(send.state, SendState::Stopped(_)) {
                        return Ok(()); // crossed our reset
                    }
                    return Err(violation(format!(
                        "StreamComplete for {id}, whose end was never sent"
                    )));
                }
                if matches!(send.state, SendState::Open | SendState::FinPending)
                    && let Some(lane) = send.lane
                {
                    released.push(lane);
                }
                self.free_send(id);
                events.push_back(Event::StreamFinished {
                    session,
                    stream: id,
                });
            }
            Body::Hello(_) | Body::Welcome(_) => {
                return Err(violation("handshake message after the handshake"));
            }
            _ => return Err(violation("unexpected control message")),
        }
        Ok(())
    }

    /// Control messages this table wants sent, oldest first. `Some(stream)`
    /// routes a message to the primary and every source of that stream (a
    /// reader's credit concerns every writer), `None` to the primary only.
    /// (A StopSending is routed by the session when the application stops:
    /// see [`Streams::stop`].)
    pub(crate) fn drain_control(&mut self, out: &mut Vec<(Option<StreamId>, Body)>) {
        if self.control.is_empty()
            && self.pending_credit.is_empty()
            && self.pending_streams_credit == [false; 2]
        {
            return;
        }
        for body in self.control.drain(..) {
            out.push((None, body));
        }
        for id in std::mem::take(&mut self.pending_credit) {
            if let Some(recv) = self.map.get(&id).and_then(|s| s.recv.as_ref()) {
                let credit = Body::StreamCredit(StreamCredit {
                    stream_id: id.0,
                    max_offset: recv.granted,
                });
                out.push((Some(id), credit));
            }
        }
        for (d, dir) in DIRS.iter().enumerate() {
            if std::mem::take(&mut self.pending_streams_credit[d]) {
                out.push((
                    None,
                    Body::StreamsCredit(StreamsCredit {
                        bidi: *dir == Dir::Bi,
                        max_streams: self.remote_limit[d],
                    }),
                ));
            }
        }
    }

    /// Offset of the next byte the application reads from `id` (`None` if
    /// this side has no receiving half of it).
    pub(crate) fn read_offset(&self, id: StreamId) -> Option<u64> {
        Some(self.map.get(&id)?.recv.as_ref()?.asm.read_offset())
    }

    /// True if `id` is a stream this side initiated and has opened (it may
    /// be released since).
    pub(crate) fn opened_locally(&self, id: StreamId) -> bool {
        id.initiator() == self.side && id.index() < self.next_local[dir_index(id.dir())]
    }

    /// True if `id` is a peer-initiated stream that was opened and has been
    /// released since (late records for it are dropped).
    pub(crate) fn was_released(&self, id: StreamId) -> bool {
        id.initiator() != self.side
            && id.index() < self.next_remote[dir_index(id.dir())]
            && !self.map.contains_key(&id)
    }

    /// Client: a delegation of `id` passes through. Opens the stream if
    /// needed, marks it for acknowledgements, and returns the credit to hand
    /// the path (0 if the stream is no longer read).
    pub(crate) fn delegated(
        &mut self,
        id: StreamId,
        events: &mut VecDeque<Event>,
    ) -> Result<u64, Violation> {
        if id.initiator() == self.side {
            return Err(violation(format!("delegation of client stream {id}")));
        }
        self.peer_sends_on(id, events)?;
        let Some(recv) = self.map.get_mut(&id).and_then(|s| s.recv.as_mut()) else {
            return Ok(0);
        };
        recv.delegated = true;
        Ok(recv.granted)
    }

    /// True if every byte of `range` of `id` has arrived (or the stream is
    /// released, which happens only once everything arrived or was given up).
    pub(crate) fn received(&self, id: StreamId, range: std::ops::Range<u64>) -> bool {
        let Some(recv) = self.map.get(&id).and_then(|s| s.recv.as_ref()) else {
            return true;
        };
        if !matches!(recv.state, RecvState::Open) {
            return true;
        }
        let from = range.start.max(recv.asm.contiguous_end());
        from >= range.end
            || recv
                .asm
                .pending_ranges()
                .any(|(s, e)| s <= from && e >= range.end)
    }

    /// Acknowledgements due for delegated streams.
    pub(crate) fn take_acks(&mut self, out: &mut Vec<Body>) {
        if !std::mem::take(&mut self.acks_due) {
            return;
        }
        for (id, stream) in self.map.iter_mut() {
            let Some(recv) = stream.recv.as_mut() else {
                continue;
            };
            if std::mem::take(&mut recv.ack_pending) {
                out.push(Body::Ack(ack_of(*id, recv)));
            }
        }
    }

    /// An acknowledgement of `id` as it stands now (`None` if this side no
    /// longer reads it).
    pub(crate) fn ack_now(&mut self, id: StreamId) -> Option<Ack> {
        let recv = self.map.get_mut(&id)?.recv.as_mut()?;
        recv.ack_pending = false;
        Some(ack_of(id, recv))
    }

    /// True if some delegated stream has unacknowledged arrivals.
    pub(crate) fn acks_pending(&self) -> bool {
        self.acks_due
    }

    /// True if control messages wait to be sent.
    pub(crate) fn has_control(&self) -> bool {
        !self.control.is_empty()
            || !self.pending_credit.is_empty()
            || self.pending_streams_credit != [false; 2]
    }
}

fn ack_of(id: StreamId, recv: &RecvHalf) -> Ack {
    let ranges = recv
        .asm
        .pending_ranges()
        .take(MAX_ACK_RANGES)
        .map(|(start, end)| ByteRange { start, end })
        .collect();
    Ack {
        stream_id: id.0,
        contiguous: recv.asm.contiguous_end(),
        ranges,
        returned_by: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(side: Side) -> Streams {
        let mut t = Streams::new(SessionHandle(1), side, 100, 2, 2);
        t.set_peer_limits(100, 2, 2);
        t
    }

    fn piece(stream: StreamId, offset: u64, data: &'static [u8], fin: bool) -> DataPiece {
        DataPiece {
            stream,
            offset,
            data: Bytes::from_static(data),
            fin,
            record_end: offset + data.len() as u64,
            record_fin: fin,
        }
    }

    #[test]
    fn remote_streams_open_implicitly_and_within_limits() {
        let mut t = table(Side::Server);
        let mut ev = VecDeque::new();
        let second = StreamId::new(Side::Client, Dir::Uni, 1);
        t.on_data(piece(second, 0, b"x", false), &mut ev).unwrap();
        assert_eq!(
            t.accept(Dir::Uni),
            Some(StreamId::new(Side::Client, Dir::Uni, 0))
        );
        assert_eq!(t.accept(Dir::Uni), Some(second));
        let third = StreamId::new(Side::Client, Dir::Uni, 2);
        let err = t
            .on_data(piece(third, 0, b"x", false), &mut ev)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::StreamLimit);
        let ours = StreamId::new(Side::Server, Dir::Bi, 0);
        let err = t.on_data(piece(ours, 0, b"x", false), &mut ev).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn credit_is_enforced_and_returned_after_reads() {
        let mut t = table(Side::Server);
        let mut ev = VecDeque::new();
        let id = StreamId::new(Side::Client, Dir::Uni, 0);
        let data: &'static [u8] = &[7; 100];
        t.on_data(piece(id, 0, data, false), &mut ev).unwrap();
        let err = t.on_data(piece(id, 100, b"!", false), &mut ev).unwrap_err();
        assert_eq!(err.code, ErrorCode::FlowControl);
        assert_eq!(t.read(id, 60).unwrap().unwrap().len(), 60);
        let mut out = Vec::new();
        t.drain_control(&mut out);
        assert_eq!(
            out,
            vec![(
                Some(id),
                Body::StreamCredit(StreamCredit {
                    stream_id: id.0,
                    max_offset: 160
                })
            )]
        );
        t.on_data(piece(id, 100, b"!", true), &mut ev).unwrap();
    }

    #[test]
    fn finished_stream_is_freed_and_its_slot_returned() {
        let mut t = table(Side::Server);
        let mut ev = VecDeque::new();
        let id = StreamId::new(Side::Client, Dir::Uni, 0);
        t.on_data(piece(id, 0, b"hi", true), &mut ev).unwrap();
        assert_eq!(t.read(id, 10).unwrap().unwrap(), Bytes::from_static(b"hi"));
        assert_eq!(t.read(id, 10).unwrap(), None);
        assert_eq!(t.read(id, 10), Err(ReadError::ClosedStream));
        let mut out = Vec::new();
        t.drain_control(&mut out);
        let bodies: Vec<Body> = out.into_iter().map(|(_, b)| b).collect();
        assert!(bodies.contains(&Body::StreamComplete(StreamComplete { stream_id: id.0 })));
        assert!(bodies.contains(&Body::StreamsCredit(StreamsCredit {
            bidi: false,
            max_streams: 3
        })));
        // Late duplicates for the closed stream are ignored.
        t.on_data(piece(id, 0, b"hi", true), &mut ev).unwrap();
    }

    #[test]
    fn stream_complete_is_honoured_only_once_the_end_was_sent() {
        let mut t = table(Side::Server);
        let mut ev = VecDeque::new();
        let mut released = Vec::new();
        let id = t.open(Dir::Uni).unwrap();
        t.send_mut(id).unwrap().lane = Some(3);
        let complete = Body::StreamComplete(StreamComplete { stream_id: id.0 });
        // Still open, no FIN anywhere: the peer cannot know the end.
        let err = t
            .on_control(complete.clone(), &mut ev, &mut released)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidFrame);
        assert!(t.send_mut(id).is_some());
        // A FIN written at 10 (by `write_at`, or delegated): honoured, and the
        // lane the open half held is released.
        t.send_mut(id).unwrap().final_size = Some(10);
        t.on_control(complete.clone(), &mut ev, &mut released)
            .unwrap();
        assert_eq!(released, vec![3]);
        assert!(t.send_mut(id).is_none());
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::StreamFinished { stream, .. } if *stream == id))
        );
        // Late duplicates are ignored.
        t.on_control(complete, &mut ev, &mut released).unwrap();
    }

    #[test]
    fn fragments_past_twice_the_window_are_a_resource_limit() {
        let window = 100_000;
        let mut t = Streams::new(SessionHandle(1), Side::Server, window, 2, 2);
        t.set_peer_limits(window, 2, 2);
        let mut ev = VecDeque::new();
        let id = StreamId::new(Side::Client, Dir::Uni, 0);
        // Every other byte: a piece each, 65 bytes charged per byte held.
        let mut result = Ok(());
        let mut sent = 0;
        for i in 0..window / 2 {
            sent = i;
            result = t.on_data(piece(id, 2 * i + 1, b"x", false), &mut ev);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.unwrap_err().code, ErrorCode::ResourceLimit);
        let limit = 2 * window + 64 * PIECE_OVERHEAD;
        assert!(sent * (1 + PIECE_OVERHEAD) <= limit + 1 + PIECE_OVERHEAD);
        assert!(sent * (1 + PIECE_OVERHEAD) > limit - 1 - PIECE_OVERHEAD);
        // In order, tiny records merge and stay within bounds.
        let mut t = table(Side::Server);
        for i in 0..100u64 {
            t.on_data(piece(id, i, b"y", false), &mut ev).unwrap();
        }
        assert_eq!(t.stream_buffered(id), Some(100));
    }

    #[test]
    fn streams_of_a_rejected_0rtt_are_forgotten_and_their_ids_used_again() {
        let mut t = Streams::new(SessionHandle(1), Side::Client, 100, 2, 2);
        // Before the Welcome, with the limits remembered of the last one.
        t.set_peer_limits(50, 2, 2);
        let bi = t.open(Dir::Bi).unwrap();
        let uni = t.open(Dir::Uni).unwrap();
        t.send_mut(bi).unwrap().offset = 10;
        t.zero_rtt_rejected();
        assert!(t.was_rejected(bi) && t.was_rejected(uni));
        assert!(t.get_mut(bi).is_none() && t.get_mut(uni).is_none());
        // Nothing is known of the server's limits until its Welcome.
        assert!(!t.peer_limits_known());
        assert_eq!(t.open(Dir::Bi), None);
        t.set_peer_limits(100, 2, 2);
        // The ids start over: the server never saw the rejected streams,
        // and must not see a gap.
        let again = t.open(Dir::Bi).unwrap();
        assert_eq!(again, bi);
        assert!(!t.was_rejected(bi), "a new stream, not the rejected one");
        assert_eq!(t.send_mut(bi).unwrap().offset, 0);
        assert!(t.was_rejected(uni));
        // Server streams are never "rejected".
        assert!(!t.was_rejected(StreamId::new(Side::Server, Dir::Bi, 0)));
    }

    #[test]
    fn the_welcome_gives_streams_opened_in_0rtt_at_least_its_window() {
        let mut t = Streams::new(SessionHandle(1), Side::Client, 100, 4, 4);
        t.set_peer_limits(50, 4, 4);
        let id = t.open(Dir::Uni).unwrap();
        assert_eq!(t.send_mut(id).unwrap().credit, 50);
        t.set_peer_limits(80, 4, 4);
        assert_eq!(t.send_mut(id).unwrap().credit, 80);
        // Credit never shrinks: a smaller window leaves it where it is (a
        // server that lowered its limits refuses what went beyond).
        t.set_peer_limits(10, 4, 4);
        assert_eq!(t.send_mut(id).unwrap().credit, 80);
        assert_eq!(
            t.open(Dir::Uni).map(|id| t.send_mut(id).unwrap().credit),
            Some(10)
        );
    }

    #[test]
    fn a_secondary_keeps_no_state_for_streams_it_was_not_delegated() {
        let mut t = table(Side::Server);
        t.set_secondary();
        let mut ev = VecDeque::new();
        let mut released = Vec::new();
        for i in 0..1000 {
            let id = StreamId::new(Side::Server, Dir::Uni, i);
            let credit = Body::StreamCredit(StreamCredit {
                stream_id: id.0,
                max_offset: 1 << 30,
            });
            t.on_control(credit, &mut ev, &mut released).unwrap();
            let stop = Body::StopSending(StopSending {
                stream_id: id.0,
                error_code: 1,
                received: 0,
            });
            t.on_control(stop, &mut ev, &mut released).unwrap();
        }
        assert_eq!(t.len(), 0);
        assert!(ev.is_empty());
    }
}
