//! One QUIC connection of a session: its control stream and its lanes.
//!
//! A client session owns one connection per path (the primary and each
//! secondary); a server session owns one. This module moves bytes between
//! quinn-proto's streams and kwik's records and knows nothing of what the
//! records mean — that is the session's business.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{Connection, ConnectionHandle, Dir as QDir, StreamId as QStreamId, VarInt};

use crate::codec::{DataPiece, LaneReader, RecordReader, encode_record};
use crate::error::{ErrorCode, Violation};
use crate::health::HealthMeter;
use crate::lanes::{CONTROL_PRIORITY, Lanes};
use crate::paths::PathId;
use crate::probe_gate::ProbeGate;
use crate::proto::control::{ControlMessage, control_message::Body};
use crate::wire;

/// Most control bytes taken from quinn-proto at a time.
const CONTROL_CHUNK: usize = 16 << 10;

/// Lanes a peer may hold open at first. quinn-proto keeps state for every
/// stream it allows the peer to open, whether opened or not (about 47 bytes
/// each), so allowing `max_lanes` (1 024 by default) up front would cost an
/// idle session more than its whole QUIC connection. The allowance doubles
/// whenever the peer holds half of it open, up to `max_lanes`.
pub(crate) const INITIAL_LANES: u32 = 64;

pub(crate) struct Conn {
    pub path: PathId,
    pub handle: ConnectionHandle,
    pub quic: Connection,
    /// The kwik handshake on this connection completed.
    pub joined: bool,
    /// quinn-proto reported the connection lost or it was closed.
    pub closed: bool,
    /// quinn-proto drained it; its handle may belong to another connection.
    pub drained: bool,
    /// A close waiting for what was in flight to be acknowledged.
    close_after: Option<(Instant, VarInt, Bytes)>,
    control: Option<QStreamId>,
    control_reader: RecordReader,
    /// Why the peer's side of the control stream ended, once it did.
    control_end: Option<&'static str>,
    control_out: VecDeque<Bytes>,
    /// Bytes in `control_out`.
    control_backlog: usize,
    pub lanes: Lanes,
    recv_lanes: BTreeMap<QStreamId, LaneReader>,
    /// Last time an authenticated packet arrived on this connection.
    pub last_rx: Instant,
    /// Last time stream data arrived on one of its lanes.
    pub last_data: Instant,
    /// kwik probes sent since `last_rx` (see `session::liveness`).
    pub probes: u32,
    /// When the next probe is due, once probing started.
    pub next_probe: Option<Instant>,
    /// Frames quinn-proto has taken from authenticated packets so far.
    frames_rx: u64,
    /// Opens the congestion window for a probe (see [`crate::probe_gate`]).
    gate: ProbeGate,
    /// A kwik probe is queued and may leave past the congestion window.
    probe_due: bool,
    /// Smallest smoothed RTT seen: the path's RTT without queueing.
    base_rtt: Option<std::time::Duration>,
    scratch: Vec<Bytes>,
    /// Lanes the peer may hold open now (see [`INITIAL_LANES`]).
    lane_allowance: u32,
    /// This connection's health evaluation (see [`crate::health`]).
    pub health: HealthMeter,
    /// Most lanes the peer may ever hold open (0: none, e.g. a server
    /// before the peer's Hello).
    lane_limit: u32,
}

impl Conn {
    pub(crate) fn new(
        path: PathId,
        handle: ConnectionHandle,
        quic: Connection,
        gate: ProbeGate,
        transport: &crate::TransportConfig,
        now: Instant,
    ) -> Self {
        let max_lanes = transport.max_lanes;
        // A client allows lanes from the start (the transport parameters
        // said `INITIAL_LANES`); a server only once the peer is known.
        let lane_limit = if quic.side().is_client() {
            max_lanes
        } else {
            0
        };
        Self {
            path,
            handle,
            quic,
            joined: false,
            closed: false,
            drained: false,
            close_after: None,
            control: None,
            control_reader: RecordReader::new(transport.max_control_message as usize),
            control_end: None,
            control_out: VecDeque::new(),
            control_backlog: 0,
            lanes: Lanes::new(transport.streams_per_lane),
            recv_lanes: BTreeMap::new(),
            last_rx: now,
            last_data: now,
            probes: 0,
            next_probe: None,
            frames_rx: 0,
            gate,
            probe_due: false,
            base_rtt: None,
            scratch: Vec::new(),
            lane_allowance: lane_limit.min(INITIAL_LANES),
            health: HealthMeter::default(),
            lane_limit,
        }
    }

    /// Lets the peer open lanes, up to `limit` at once: [`INITIAL_LANES`]
    /// now, more as it uses them.
    pub(crate) fn allow_lanes(&mut self, limit: u32) {
        self.lane_limit = limit;
        self.lane_allowance = limit.min(INITIAL_LANES);
        self.quic
            .set_max_concurrent_streams(QDir::Uni, VarInt::from_u32(self.lane_allowance));
    }

    /// Doubles the lane allowance once the peer holds half of it open.
    fn grow_lane_allowance(&mut self) {
        let open = u32::try_from(self.recv_lanes.len()).unwrap_or(u32::MAX);
        if open.saturating_mul(2) < self.lane_allowance || self.lane_allowance >= self.lane_limit {
            return;
        }
        self.lane_allowance = self.lane_allowance.saturating_mul(2).min(self.lane_limit);
        self.quic
            .set_max_concurrent_streams(QDir::Uni, VarInt::from_u32(self.lane_allowance));
    }

    /// The path's RTT without queueing delay (the smallest smoothed RTT
    /// seen once the handshake measured one), so that liveness timeouts do
    /// not stretch when the bottleneck queue fills.
    pub(crate) fn base_rtt(&mut self) -> std::time::Duration {
        let rtt = self.quic.rtt();
        if self.joined {
            let base = self.base_rtt.get_or_insert(rtt);
            *base = (*base).min(rtt);
            *base
        } else {
            rtt
        }
    }

    /// The last value of [`Conn::base_rtt`], without updating it.
    pub(crate) fn known_base_rtt(&self) -> std::time::Duration {
        self.base_rtt.unwrap_or_else(|| self.quic.rtt())
    }

    /// A datagram routed to this connection was handled: it counts as a
    /// sign of life only if quinn-proto took frames from it, i.e. it
    /// decrypted and was not a duplicate. Garbage or replayed packets that
    /// merely carry the connection's id keep no dead path alive.
    pub(crate) fn note_received(&mut self, now: Instant) {
        let f = self.quic.stats().frame_rx;
        let frames = [
            f.acks,
            f.ack_frequency,
            f.crypto,
            f.connection_close,
            f.data_blocked,
            f.datagram,
            u64::from(f.handshake_done),
            f.immediate_ack,
            f.max_data,
            f.max_stream_data,
            f.max_streams_bidi,
            f.max_streams_uni,
            f.new_connection_id,
            f.new_token,
            f.path_challenge,
            f.path_response,
            f.ping,
            f.reset_stream,
            f.retire_connection_id,
            f.stream_data_blocked,
            f.streams_blocked_bidi,
            f.streams_blocked_uni,
            f.stop_sending,
            f.stream,
        ]
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n));
        if frames > self.frames_rx {
            self.frames_rx = frames;
            let silence = now.saturating_duration_since(self.last_rx);
            if silence >= self.revive_after() {
                // Heard again after a silence: our packets of the outage were
                // lost and QUIC has backed its probes off. A ping now earns an
                // acknowledgement that resets the backoff, so traffic resumes
                // within a round trip instead of a backed-off probe timeout.
                self.probe();
            }
            self.last_rx = now;
            self.probes = 0;
            self.next_probe = None;
        }
    }

    /// Queues a PING that leaves even if the congestion window is full
    /// (RFC 9002 §7.5: probes are not congestion controlled).
    pub(crate) fn probe(&mut self) {
        self.quic.ping();
        self.probe_due = true;
    }

    /// quinn-proto's next datagrams; if it sends nothing while a probe is
    /// due, one datagram past the congestion window (see
    /// [`crate::probe_gate`]).
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<quinn_proto::Transmit> {
        let transmit = self.quic.poll_transmit(now, max_datagrams, buf);
        if transmit.is_some() || !self.probe_due {
            // The PING, if any, went with the first packet.
            self.probe_due = false;
            return transmit;
        }
        self.probe_due = false;
        let quic = &mut self.quic;
        self.gate.bypass(|| quic.poll_transmit(now, 1, buf))
    }

    /// Closes the connection with `code` and `reason`. Its lanes are reset
    /// at once, so that nothing more is queued, and the close goes to
    /// quinn-proto a couple of round trips later, once what was in flight
    /// had time to be acknowledged: quinn-proto 0.11 gates a
    /// CONNECTION_CLOSE on the congestion window while stream data is
    /// queued, and stops processing acknowledgements once closed, so a close
    /// issued on a full window would never leave (quinn-rs/quinn#2785).
    pub(crate) fn close_soon(&mut self, now: Instant, code: VarInt, reason: Bytes) {
        if self.closed {
            return;
        }
        self.closed = true;
        if self.quic.is_handshaking() || self.lanes.count() == 0 {
            // No lane ever carried data: nothing can hold the close back.
            self.quic.close(now, code, reason);
            return;
        }
        self.lanes.reset_all(&mut self.quic);
        let delay =
            (self.quic.rtt() * 2 + Duration::from_millis(10)).min(Duration::from_millis(300));
        self.close_after = Some((now + delay, code, reason));
    }

    /// When a deferred close is due.
    pub(crate) fn close_due(&self) -> Option<Instant> {
        self.close_after.as_ref().map(|(t, ..)| *t)
    }

    /// Hands a deferred close to quinn-proto once it is due.
    pub(crate) fn apply_close(&mut self, now: Instant) {
        if self.close_due().is_some_and(|t| t <= now)
            && let Some((_, code, reason)) = self.close_after.take()
        {
            self.quic.close(now, code, reason);
        }
    }

    /// Silence after which hearing from the peer again counts as a revival.
    fn revive_after(&self) -> std::time::Duration {
        (self.known_base_rtt() * 4).max(std::time::Duration::from_millis(250))
    }

    /// True once this side opened or accepted the control stream.
    pub(crate) fn has_control(&self) -> bool {
        self.control.is_some()
    }

    /// Client: the server rejected 0-RTT, and quinn-proto forgot every
    /// stream opened in it (their ids will be used again): the control
    /// stream and the lanes, with whatever was queued on them, are gone.
    pub(crate) fn forget_streams(&mut self) {
        self.control = None;
        self.control_reader = RecordReader::new(self.control_reader.limit());
        self.control_end = None;
        self.control_out.clear();
        self.control_backlog = 0;
        self.lanes.forget();
        self.recv_lanes.clear();
    }

    /// Client side: opens the control stream.
    pub(crate) fn open_control(&mut self) -> Result<(), Violation> {
        let id =
            self.quic.streams().open(QDir::Bi).ok_or_else(|| {
                Violation::new(ErrorCode::Internal, "peer allows no control stream")
            })?;
        let _ = self.quic.send_stream(id).set_priority(CONTROL_PRIORITY);
        self.control = Some(id);
        Ok(())
    }

    /// Accepts peer-opened streams: the control stream (server side) and
    /// lanes. Returns whether a new control stream appeared.
    pub(crate) fn accept_streams(&mut self, may_accept_control: bool) -> Result<bool, Violation> {
        let mut new_control = false;
        while let Some(id) = self.quic.streams().accept(QDir::Bi) {
            if !may_accept_control || self.control.is_some() {
                return Err(Violation::new(
                    ErrorCode::InvalidFrame,
                    "unexpected bidirectional stream",
                ));
            }
            let _ = self.quic.send_stream(id).set_priority(CONTROL_PRIORITY);
            self.control = Some(id);
            new_control = true;
        }
        while let Some(id) = self.quic.streams().accept(QDir::Uni) {
            self.recv_lanes.insert(id, LaneReader::default());
        }
        self.grow_lane_allowance();
        Ok(new_control)
    }

    pub(crate) fn is_control(&self, id: QStreamId) -> bool {
        self.control == Some(id)
    }

    pub(crate) fn is_lane(&self, id: QStreamId) -> bool {
        self.recv_lanes.contains_key(&id)
    }

    pub(crate) fn lane_ids(&self) -> Vec<QStreamId> {
        self.recv_lanes.keys().copied().collect()
    }

    /// Queues a control message.
    pub(crate) fn send(&mut self, body: Body) {
        let record = encode_record(&ControlMessage { body: Some(body) });
        self.control_backlog += record.len();
        self.control_out.push_back(record);
    }

    /// Control bytes queued because the peer's flow control does not take
    /// them: a peer that makes this side answer without reading the
    /// answers grows it.
    pub(crate) fn control_backlog(&self) -> usize {
        self.control_backlog
    }

    /// Pushes queued control messages into the control stream.
    pub(crate) fn flush_control(&mut self) {
        let Some(id) = self.control else { return };
        while !self.control_out.is_empty() {
            match self
                .quic
                .send_stream(id)
                .write_chunks(self.control_out.make_contiguous())
            {
                Ok(written) => {
                    self.control_out.drain(..written.chunks);
                    self.control_backlog -= written.bytes;
                }
                Err(_) => break,
            }
        }
    }

    /// The next complete control message, `Ok(None)` once nothing more
    /// has arrived. Messages are read and decoded one at a time, so a peer
    /// that floods the control stream makes this side hold one chunk, not
    /// everything that arrived.
    pub(crate) fn next_control(&mut self) -> Result<Option<Body>, Violation> {
        let Some(id) = self.control else {
            return Ok(None);
        };
        loop {
            if let Some(record) = self.control_reader.next_record()? {
                return wire::decode_control(record).map(Some);
            }
            if let Some(reason) = self.control_end {
                return Err(Violation::new(ErrorCode::InvalidFrame, reason));
            }
            let mut more = false;
            if let Ok(mut chunks) = self.quic.recv_stream(id).read(true) {
                match chunks.next(CONTROL_CHUNK) {
                    Ok(Some(chunk)) => {
                        self.control_reader.push(&chunk.bytes);
                        more = true;
                    }
                    Ok(None) => self.control_end = Some("peer finished the control stream"),
                    Err(quinn_proto::ReadError::Blocked) => {}
                    Err(quinn_proto::ReadError::Reset(_)) => {
                        self.control_end = Some("peer reset the control stream");
                    }
                }
                let _ = chunks.finalize();
            }
            if !more && self.control_end.is_none() {
                self.control_reader.shrink();
                return Ok(None);
            }
        }
    }

    /// Reads a lane, handing every payload piece to `sink`.
    pub(crate) fn read_lane(
        &mut self,
        id: QStreamId,
        max_payload: u64,
        sink: &mut dyn FnMut(DataPiece) -> Result<(), Violation>,
    ) -> Result<(), Violation> {
        let mut chunks_out = std::mem::take(&mut self.scratch);
        let mut ended = None;
        {
            let mut recv = self.quic.recv_stream(id);
            if let Ok(mut chunks) = recv.read(true) {
                loop {
                    match chunks.next(usize::MAX) {
                        Ok(Some(chunk)) => chunks_out.push(chunk.bytes),
                        Ok(None) => {
                            ended = Some(false);
                            break;
                        }
                        Err(quinn_proto::ReadError::Blocked) => break,
                        Err(quinn_proto::ReadError::Reset(_)) => {
                            ended = Some(true);
                            break;
                        }
                    }
                }
                let _ = chunks.finalize();
            }
        }
        let Some(reader) = self.recv_lanes.get_mut(&id) else {
            chunks_out.clear();
            self.scratch = chunks_out;
            return Ok(());
        };
        let mut result = Ok(());
        for chunk in chunks_out.drain(..) {
            result = reader.feed(chunk, max_payload, &mut *sink);
            if result.is_err() {
                break;
            }
        }
        chunks_out.clear();
        self.scratch = chunks_out;
        result?;
        match ended {
            // A lane may end cleanly between records.
            Some(false) if reader.at_record_boundary() => {
                self.recv_lanes.remove(&id);
                Ok(())
            }
            Some(false) => Err(Violation::new(
                ErrorCode::InvalidFrame,
                "lane ended inside a record",
            )),
            // A closing peer resets its lanes first (see `close_soon`): the
            // lane and its incomplete record are dropped.
            Some(true) => {
                self.recv_lanes.remove(&id);
                Ok(())
            }
            None => Ok(()),
        }
    }
}
