//! One kwik session over one QUIC connection: the handshake, the control
//! stream, and moving logical-stream payload between the application, the
//! stream table and the lanes.
//!
//! The session is driven in phases by the endpoint: `drive` digests whatever
//! quinn-proto reported, then sends what the stream table asks for. All
//! application calls go through [`crate::view`], which marks the session for
//! driving, so no change is left unsent.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use quinn_proto::{
    Connection, ConnectionHandle, Dir as QDir, StreamEvent, StreamId as QStreamId, VarInt,
};

use crate::codec::{LaneReader, RecordReader, encode_data_header, encode_record};
use crate::config::{PROTOCOL_VERSION, SUPPORTED_FEATURES, TransportConfig};
use crate::error::{
    CloseReason, ErrorCode, OpenError, ReadError, StreamError, Violation, WriteError,
};
use crate::event::Event;
use crate::ids::{Dir, SessionHandle, SessionId, Side, StreamId};
use crate::lanes::{LaneBlocked, Lanes};
use crate::proto::common::Limits;
use crate::proto::control::{ControlMessage, Hello, Welcome, control_message::Body};
use crate::streams::{SendState, Streams};

/// Priority of the control stream over the lanes.
const CONTROL_PRIORITY: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// QUIC or kwik handshake under way.
    Handshaking,
    /// Welcome exchanged; streams may flow.
    Active,
    /// Closed; waiting for quinn-proto to drain.
    Closed,
}

/// What the endpoint provides while a session runs.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub events: &'a mut VecDeque<Event>,
    /// Mints session ids (server side).
    pub mint_id: &'a mut dyn FnMut() -> SessionId,
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Logical-stream payload bytes written by the application.
    pub bytes_sent: u64,
    /// Logical-stream payload bytes received from the peer.
    pub bytes_received: u64,
    /// Lanes (real QUIC streams) this side opened.
    pub lanes_opened: u64,
    /// Payload bytes buffered for the application right now.
    pub buffered: u64,
    /// Live logical streams.
    pub open_streams: u64,
    /// Smoothed RTT of the connection, in microseconds.
    pub rtt_us: u64,
    /// UDP datagrams sent.
    pub datagrams_sent: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Congestion window in bytes.
    pub cwnd: u64,
}

pub(crate) struct Session {
    pub handle: SessionHandle,
    pub conn_handle: ConnectionHandle,
    pub conn: Connection,
    pub side: Side,
    pub phase: Phase,
    pub id: Option<SessionId>,
    pub close_reason: Option<CloseReason>,
    /// Next deadline of the connection, cached for the endpoint's timer.
    pub deadline: Option<Instant>,
    transport: TransportConfig,
    server_features: u64,
    /// Frame payload limit agreed with the peer for sending.
    send_frame_limit: u64,
    control: Option<QStreamId>,
    control_reader: RecordReader,
    control_out: VecDeque<Bytes>,
    lanes: Lanes,
    /// Peer lanes and their parsers, in stream-id order.
    recv_lanes: std::collections::BTreeMap<QStreamId, LaneReader>,
    pub(crate) streams: Streams,
    scratch: Vec<Bytes>,
    stats: SessionStats,
}

impl Session {
    pub(crate) fn new(
        handle: SessionHandle,
        conn_handle: ConnectionHandle,
        conn: Connection,
        side: Side,
        transport: TransportConfig,
        server_features: u64,
    ) -> Self {
        let streams = Streams::new(
            handle,
            side,
            transport.stream_window,
            transport.max_bidi_streams,
            transport.max_uni_streams,
        );
        Self {
            handle,
            conn_handle,
            conn,
            side,
            phase: Phase::Handshaking,
            id: None,
            close_reason: None,
            deadline: None,
            control_reader: RecordReader::new(transport.max_control_message as usize),
            lanes: Lanes::new(transport.streams_per_lane),
            send_frame_limit: transport.max_frame_payload,
            transport,
            server_features,
            control: None,
            control_out: VecDeque::new(),
            recv_lanes: Default::default(),
            streams,
            scratch: Vec::new(),
            stats: SessionStats::default(),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            stream_window: self.transport.stream_window,
            max_bidi_streams: self.transport.max_bidi_streams,
            max_uni_streams: self.transport.max_uni_streams,
            max_frame_payload: self.transport.max_frame_payload,
            max_control_message: self.transport.max_control_message,
        }
    }

    pub(crate) fn closed_error(&self) -> Option<CloseReason> {
        self.close_reason.clone()
    }

    /// Digests everything quinn-proto has reported, then sends what is due.
    pub(crate) fn drive(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(event) = self.conn.poll() {
            if let Err(v) = self.on_quinn_event(event, ctx) {
                self.fail(v, ctx);
            }
        }
        if self.phase != Phase::Closed {
            self.flush_control();
        }
        self.deadline = self.conn.poll_timeout();
    }

    fn on_quinn_event(
        &mut self,
        event: quinn_proto::Event,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        use quinn_proto::Event as E;
        match event {
            E::Connected => {
                if self.side == Side::Client {
                    self.open_control()?;
                }
            }
            E::ConnectionLost { reason } => {
                if self.close_reason.is_none() {
                    let reason = CloseReason::from_quinn(reason);
                    self.close_reason = Some(reason.clone());
                    ctx.events.push_back(Event::SessionClosed {
                        session: self.handle,
                        reason,
                    });
                }
                self.phase = Phase::Closed;
            }
            E::Stream(ev) => self.on_stream_event(ev, ctx)?,
            E::HandshakeDataReady | E::DatagramReceived | E::DatagramsUnblocked => {}
        }
        Ok(())
    }

    fn open_control(&mut self) -> Result<(), Violation> {
        let id = self.conn.streams().open(QDir::Bi).ok_or_else(|| {
            Violation::new(ErrorCode::Internal, "server allows no control stream")
        })?;
        let _ = self.conn.send_stream(id).set_priority(CONTROL_PRIORITY);
        self.control = Some(id);
        self.send_control(Body::Hello(Hello {
            version: PROTOCOL_VERSION,
            features: SUPPORTED_FEATURES,
            required_features: self.transport.required_features,
            limits: Some(self.limits()),
        }));
        Ok(())
    }

    fn on_stream_event(&mut self, ev: StreamEvent, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        match ev {
            StreamEvent::Opened { dir: QDir::Bi } => {
                while let Some(id) = self.conn.streams().accept(QDir::Bi) {
                    if self.side == Side::Client || self.control.is_some() {
                        return Err(Violation::new(
                            ErrorCode::InvalidFrame,
                            "unexpected bidirectional stream",
                        ));
                    }
                    let _ = self.conn.send_stream(id).set_priority(CONTROL_PRIORITY);
                    self.control = Some(id);
                    self.read_control(ctx)?;
                }
            }
            StreamEvent::Opened { dir: QDir::Uni } => {
                while let Some(id) = self.conn.streams().accept(QDir::Uni) {
                    self.recv_lanes.insert(id, LaneReader::default());
                    if self.phase == Phase::Active {
                        self.read_lane(id, ctx)?;
                    }
                }
            }
            StreamEvent::Readable { id } => {
                if Some(id) == self.control {
                    self.read_control(ctx)?;
                } else if self.phase == Phase::Active && self.recv_lanes.contains_key(&id) {
                    self.read_lane(id, ctx)?;
                }
            }
            StreamEvent::Writable { id } => {
                if Some(id) == self.control {
                    self.flush_control();
                } else {
                    let woken = self.lanes.on_writable(&mut self.conn, id);
                    self.wake_writers(woken, ctx);
                }
            }
            StreamEvent::Available { dir: QDir::Uni } => {
                let woken = self.lanes.on_lane_available();
                self.wake_writers(woken, ctx);
            }
            StreamEvent::Stopped { id, .. } => {
                return Err(Violation::new(
                    ErrorCode::InvalidFrame,
                    format!("peer stopped QUIC stream {id}"),
                ));
            }
            StreamEvent::Finished { .. } | StreamEvent::Available { dir: QDir::Bi } => {}
        }
        Ok(())
    }

    /// Logical streams that waited on a lane: finish pending FINs, announce
    /// writability to the rest.
    fn wake_writers(&mut self, woken: Vec<StreamId>, ctx: &mut Ctx<'_>) {
        for stream in woken {
            let Some(send) = self.streams.send_mut(stream) else {
                continue;
            };
            match send.state {
                SendState::FinPending => self.try_send_fin(stream),
                SendState::Open if send.want_writable => {
                    send.want_writable = false;
                    ctx.events.push_back(Event::StreamWritable {
                        session: self.handle,
                        stream,
                    });
                }
                _ => {}
            }
        }
    }

    fn read_control(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let Some(id) = self.control else {
            return Ok(());
        };
        let mut ended = None;
        {
            let mut recv = self.conn.recv_stream(id);
            let mut chunks = match recv.read(true) {
                Ok(chunks) => chunks,
                Err(_) => return Ok(()),
            };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => self.control_reader.push(&chunk.bytes),
                    Ok(None) => {
                        ended = Some("peer finished the control stream");
                        break;
                    }
                    Err(quinn_proto::ReadError::Blocked) => break,
                    Err(quinn_proto::ReadError::Reset(_)) => {
                        ended = Some("peer reset the control stream");
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        while let Some(record) = self.control_reader.next_record()? {
            let message = ControlMessage::decode(record).map_err(|e| {
                Violation::new(ErrorCode::InvalidFrame, format!("bad control message: {e}"))
            })?;
            let body = message
                .body
                .ok_or_else(|| Violation::new(ErrorCode::InvalidFrame, "empty control message"))?;
            self.on_control(body, ctx)?;
            if self.phase == Phase::Closed {
                return Ok(());
            }
        }
        match ended {
            Some(reason) => Err(Violation::new(ErrorCode::InvalidFrame, reason)),
            None => Ok(()),
        }
    }

    fn on_control(&mut self, body: Body, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        match (self.phase, self.side, body) {
            (Phase::Handshaking, Side::Server, Body::Hello(hello)) => self.on_hello(hello, ctx),
            (Phase::Handshaking, Side::Client, Body::Welcome(welcome)) => {
                self.on_welcome(welcome, ctx)
            }
            (Phase::Handshaking, _, _) => Err(Violation::new(
                ErrorCode::InvalidFrame,
                "control message before the handshake completed",
            )),
            (_, _, body) => {
                let mut released = Vec::new();
                self.streams.on_control(body, ctx.events, &mut released)?;
                for lane in released {
                    self.lanes.release(lane);
                }
                Ok(())
            }
        }
    }

    fn on_hello(&mut self, hello: Hello, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let limits = negotiate(&hello, self.server_features)?;
        let id = (ctx.mint_id)();
        self.send_control(Body::Welcome(Welcome {
            session_id: Bytes::copy_from_slice(&id.0),
            version: PROTOCOL_VERSION,
            features: hello.features & self.server_features,
            limits: Some(self.limits()),
        }));
        self.activate(id, limits, ctx)
    }

    fn on_welcome(&mut self, welcome: Welcome, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        if welcome.version != PROTOCOL_VERSION {
            return Err(Violation::new(
                ErrorCode::VersionMismatch,
                "server answered another version",
            ));
        }
        let id = SessionId::from_slice(&welcome.session_id)
            .ok_or_else(|| Violation::new(ErrorCode::InvalidFrame, "session id is not 16 bytes"))?;
        let limits = welcome
            .limits
            .ok_or_else(|| Violation::new(ErrorCode::InvalidFrame, "welcome without limits"))?;
        self.activate(id, limits, ctx)
    }

    fn activate(
        &mut self,
        id: SessionId,
        peer: Limits,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        if peer.max_frame_payload == 0 || peer.max_control_message < 64 {
            return Err(Violation::new(ErrorCode::InvalidFrame, "unusable limits"));
        }
        self.send_frame_limit = self.transport.max_frame_payload.min(peer.max_frame_payload);
        self.streams.set_peer_limits(
            peer.stream_window,
            peer.max_bidi_streams,
            peer.max_uni_streams,
        );
        self.id = Some(id);
        self.phase = Phase::Active;
        ctx.events.push_back(Event::SessionEstablished {
            session: self.handle,
            id,
        });
        // Lanes that arrived before the handshake completed.
        let waiting: Vec<QStreamId> = self.recv_lanes.keys().copied().collect();
        for lane in waiting {
            self.read_lane(lane, ctx)?;
        }
        Ok(())
    }

    fn read_lane(&mut self, id: QStreamId, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let mut chunks_out = std::mem::take(&mut self.scratch);
        let mut ended = None;
        {
            let mut recv = self.conn.recv_stream(id);
            if let Ok(mut chunks) = recv.read(true) {
                loop {
                    match chunks.next(usize::MAX) {
                        Ok(Some(chunk)) => chunks_out.push(chunk.bytes),
                        Ok(None) => {
                            ended = Some("peer finished a lane");
                            break;
                        }
                        Err(quinn_proto::ReadError::Blocked) => break,
                        Err(quinn_proto::ReadError::Reset(_)) => {
                            ended = Some("peer reset a lane");
                            break;
                        }
                    }
                }
                let _ = chunks.finalize();
            }
        }
        let max_payload = self.transport.max_frame_payload;
        let reader = self.recv_lanes.get_mut(&id).expect("lane known");
        let streams = &mut self.streams;
        let stats = &mut self.stats;
        let mut result = Ok(());
        for chunk in chunks_out.drain(..) {
            result = reader.feed(chunk, max_payload, &mut |piece| {
                stats.bytes_received += piece.data.len() as u64;
                streams.on_data(piece, ctx.events)
            });
            if result.is_err() {
                break;
            }
        }
        chunks_out.clear();
        self.scratch = chunks_out;
        result?;
        match ended {
            Some(reason) => Err(Violation::new(ErrorCode::InvalidFrame, reason)),
            None => Ok(()),
        }
    }

    fn send_control(&mut self, body: Body) {
        self.control_out
            .push_back(encode_record(&ControlMessage { body: Some(body) }));
    }

    /// Encodes what the stream table wants sent and pushes the control queue
    /// into the control stream.
    fn flush_control(&mut self) {
        if self.phase == Phase::Active {
            let mut bodies = Vec::new();
            self.streams.drain_control(&mut bodies);
            for body in bodies {
                self.send_control(body);
            }
        }
        let Some(id) = self.control else {
            return;
        };
        while !self.control_out.is_empty() {
            match self
                .conn
                .send_stream(id)
                .write_chunks(self.control_out.make_contiguous())
            {
                Ok(written) => {
                    self.control_out.drain(..written.chunks);
                    if written.bytes == 0 {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }

    /// Closes the session on a protocol violation detected here.
    pub(crate) fn fail(&mut self, v: Violation, ctx: &mut Ctx<'_>) {
        if self.close_reason.is_some() {
            return;
        }
        tracing::debug!(session = %self.handle, code = %v.code, reason = %v.reason, "closing session");
        let reason = truncate(&v.reason);
        self.conn.close(
            ctx.now,
            VarInt::from_u64(v.code.wire()).expect("small"),
            reason,
        );
        self.phase = Phase::Closed;
        let reason = CloseReason::Protocol {
            code: v.code,
            reason: v.reason,
            by_peer: false,
        };
        self.close_reason = Some(reason.clone());
        ctx.events.push_back(Event::SessionClosed {
            session: self.handle,
            reason,
        });
        self.deadline = self.conn.poll_timeout();
    }

    /// Closes the session at the application's request.
    pub(crate) fn close(
        &mut self,
        now: Instant,
        code: VarInt,
        reason: &[u8],
        events: &mut VecDeque<Event>,
    ) {
        if self.close_reason.is_some() {
            return;
        }
        self.conn.close(now, code, Bytes::copy_from_slice(reason));
        self.phase = Phase::Closed;
        self.close_reason = Some(CloseReason::LocallyClosed);
        events.push_back(Event::SessionClosed {
            session: self.handle,
            reason: CloseReason::LocallyClosed,
        });
    }

    // ----- application operations (called through the views) -----

    pub(crate) fn open(&mut self, dir: Dir) -> Result<StreamId, OpenError> {
        if let Some(reason) = self.closed_error() {
            return Err(OpenError::SessionClosed(reason));
        }
        if self.phase != Phase::Active {
            return Err(OpenError::NotEstablished);
        }
        self.streams.open(dir).ok_or(OpenError::Blocked)
    }

    pub(crate) fn write(
        &mut self,
        stream: StreamId,
        data: &mut Bytes,
    ) -> Result<usize, WriteError> {
        if let Some(reason) = self.closed_error() {
            return Err(WriteError::SessionClosed(reason));
        }
        let frame_limit = self.send_frame_limit;
        let Some(send) = self.streams.send_mut(stream) else {
            return Err(WriteError::ClosedStream);
        };
        match send.state {
            SendState::Open => {}
            SendState::Stopped(code) => {
                self.streams.free_send(stream);
                return Err(WriteError::Stopped(code));
            }
            SendState::FinPending | SendState::Finished => return Err(WriteError::ClosedStream),
        }
        if data.is_empty() {
            return Ok(0);
        }
        let lane = match send.lane {
            Some(lane) => lane,
            None => match self.lanes.assign(&mut self.conn, stream) {
                Some(lane) => {
                    send.lane = Some(lane);
                    lane
                }
                None => {
                    send.want_writable = true;
                    return Err(WriteError::Blocked);
                }
            },
        };
        let mut written = 0;
        while !data.is_empty() {
            let room = send.credit - send.offset;
            if room == 0 || !self.lanes.ready(lane, stream) {
                break;
            }
            let n = (data.len() as u64).min(room).min(frame_limit) as usize;
            let header = encode_data_header(stream, send.offset, n as u64, false);
            let payload = data.slice(..n);
            match self
                .lanes
                .write_record(&mut self.conn, lane, stream, header, payload)
            {
                Ok(()) => {
                    bytes::Buf::advance(data, n);
                    send.offset += n as u64;
                    written += n;
                }
                Err(LaneBlocked::Full) => break,
                Err(LaneBlocked::Broken) => {
                    if written > 0 {
                        break;
                    }
                    return Err(WriteError::ClosedStream);
                }
            }
        }
        self.stats.bytes_sent += written as u64;
        if written == 0 {
            send.want_writable = true;
            return Err(WriteError::Blocked);
        }
        Ok(written)
    }

    pub(crate) fn finish(&mut self, stream: StreamId) -> Result<(), StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        let Some(send) = self.streams.send_mut(stream) else {
            return Err(StreamError::ClosedStream);
        };
        match send.state {
            SendState::Open => send.state = SendState::FinPending,
            SendState::Stopped(code) => {
                self.streams.free_send(stream);
                return Err(StreamError::Stopped(code));
            }
            SendState::FinPending | SendState::Finished => return Err(StreamError::ClosedStream),
        }
        self.try_send_fin(stream);
        Ok(())
    }

    fn try_send_fin(&mut self, stream: StreamId) {
        let Some(send) = self.streams.send_mut(stream) else {
            return;
        };
        let lane = match send.lane {
            Some(lane) => lane,
            None => match self.lanes.assign(&mut self.conn, stream) {
                Some(lane) => {
                    send.lane = Some(lane);
                    lane
                }
                None => return,
            },
        };
        if !self.lanes.ready(lane, stream) {
            return;
        }
        let header = encode_data_header(stream, send.offset, 0, true);
        if self
            .lanes
            .write_record(&mut self.conn, lane, stream, header, Bytes::new())
            .is_ok()
        {
            let released = self.streams.fin_written(stream);
            if let Some(lane) = released.lane {
                self.lanes.release(lane);
            }
        }
    }

    pub(crate) fn reset(&mut self, stream: StreamId, code: u64) -> Result<(), StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        let released = self.streams.reset(stream, code)?;
        if let Some(lane) = released.lane {
            self.lanes.release(lane);
        }
        Ok(())
    }

    pub(crate) fn read(
        &mut self,
        stream: StreamId,
        max: usize,
    ) -> Result<Option<Bytes>, ReadError> {
        if let Some(reason) = self.closed_error() {
            return Err(ReadError::SessionClosed(reason));
        }
        self.streams.read(stream, max)
    }

    pub(crate) fn stop(&mut self, stream: StreamId, code: u64) -> Result<(), StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        self.streams.stop(stream, code)
    }

    pub(crate) fn stats(&self) -> SessionStats {
        let q = self.conn.stats();
        SessionStats {
            buffered: self.streams.buffered(),
            open_streams: self.streams.len() as u64,
            lanes_opened: self.lanes.count() as u64,
            rtt_us: self.conn.rtt().as_micros() as u64,
            datagrams_sent: q.udp_tx.datagrams,
            lost_packets: q.path.lost_packets,
            cwnd: q.path.cwnd,
            ..self.stats
        }
    }
}

/// Checks a client's Hello against what this server supports; returns the
/// client's limits or the refusal.
pub(crate) fn negotiate(hello: &Hello, server_features: u64) -> Result<Limits, Violation> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Violation::new(
            ErrorCode::VersionMismatch,
            format!(
                "client speaks version {}, server speaks {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    let missing = hello.required_features & !server_features;
    if missing != 0 {
        return Err(Violation::new(
            ErrorCode::FeatureMismatch,
            format!("server lacks required features {missing:#x}"),
        ));
    }
    hello
        .limits
        .ok_or_else(|| Violation::new(ErrorCode::InvalidFrame, "hello without limits"))
}

fn truncate(reason: &str) -> Bytes {
    let mut end = reason.len().min(512);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Bytes::copy_from_slice(&reason.as_bytes()[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32, required: u64) -> Hello {
        Hello {
            version,
            features: 0,
            required_features: required,
            limits: Some(Limits::default()),
        }
    }

    #[test]
    fn negotiation_refuses_other_versions_and_missing_features() {
        assert!(negotiate(&hello(PROTOCOL_VERSION, 0), 0).is_ok());
        assert_eq!(
            negotiate(&hello(PROTOCOL_VERSION + 1, 0), 0)
                .unwrap_err()
                .code,
            ErrorCode::VersionMismatch
        );
        assert_eq!(
            negotiate(&hello(PROTOCOL_VERSION, 0b100), 0b011)
                .unwrap_err()
                .code,
            ErrorCode::FeatureMismatch
        );
        assert!(negotiate(&hello(PROTOCOL_VERSION, 0b01), 0b011).is_ok());
    }
}
