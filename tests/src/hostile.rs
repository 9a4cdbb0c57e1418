//! A scripted, misbehaving kwik client built directly on quinn-proto.
//!
//! kwik's own client cannot be made to break the protocol, so to check how a
//! server treats a hostile peer this node speaks the kwik wire by hand: it
//! completes the QUIC handshake with ALPN [`kwik_core::ALPN`], opens the
//! control stream, sends a valid `Hello`, waits for the server's `Welcome`
//! (so the session is active on the server) and then executes one scripted
//! [`Misbehaviour`]. It records how its connection ended, which is what the
//! tests assert on: a server must close only the offending session, with
//! `KWIK_INVALID_FRAME`.
//!
//! Messages are encoded and decoded with the prost types kwik-core
//! generates from `proto/*.proto`; the framing (length prefixes, raw lane
//! payloads, the scripted faults) is written out here. A well-behaved run
//! ([`Misbehaviour::None`] with an [`upload`](HostileClient::upload)) proves
//! that this framing matches the server's, so the refusals seen in the
//! misbehaving runs are about the scripted fault and not about a framing
//! slip.
//!
//! The node drives its quinn-proto endpoint the way [`crate::quinn_node`]
//! does (endpoint events forwarded both ways, drained connections dropped)
//! and draws every quinn random choice from a seed (see [`crate::seeding`]).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kwik_core::proto::common::Limits;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{ControlMessage, Hello, Welcome};
use kwik_core::proto::data::DataHeader;
use kwik_core::{ALPN, Dir as KDir, PROTOCOL_VERSION, SessionId, Side, StreamId as KStreamId};
use prost::Message;
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{
    ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, ReadError, StreamEvent,
    StreamId, TransportConfig, WriteError,
};

use crate::certs::DevCert;
use crate::node::{Node, Transmit};
use crate::seeding::{seeded_client_config, seeded_endpoint_config};
use crate::setup::SERVER_NAME;
use crate::trace::Trace;

/// Datagrams per `poll_transmit` batch.
const MAX_GSO_SEGMENTS: usize = 10;

/// Payload length an [`Misbehaviour::OversizedFrame`] header claims (at
/// least; more if the server announced a larger frame limit).
pub const OVERSIZED_FRAME_LEN: u64 = (1 << 20) + 1;

/// What the client does once the server has welcomed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Nothing wrong: the client stays connected (apart from an optional
    /// [`upload`](HostileClient::upload)).
    None,
    /// Raw bytes on the control stream that are no protobuf: a varint
    /// length of 16 followed by sixteen `0xff` bytes.
    GarbageOnControl,
    /// A lane record for a client stream whose header claims a payload of
    /// [`OVERSIZED_FRAME_LEN`] bytes, followed by some of those bytes.
    OversizedFrame,
    /// A lane record for logical stream 1, a server-initiated bidirectional
    /// stream the server never opened.
    FrameForUnopenedStream,
    /// A control-stream length prefix one above the `max_control_message`
    /// the server announced in its `Welcome`, then a few bytes.
    OversizedControlMessage,
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `len` as a record length prefix (a protobuf varint).
fn length_prefix(len: u64) -> Vec<u8> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(prost::length_delimiter_len(len));
    prost::encode_length_delimiter(len, &mut out).expect("a Vec grows");
    out
}

/// A whole control record: length prefix + `ControlMessage { hello }`.
fn hello_record(hello: Hello) -> Vec<u8> {
    ControlMessage {
        body: Some(Body::Hello(hello)),
    }
    .encode_length_delimited_to_vec()
}

/// Decodes a control record (without its length prefix). `Err` if it does
/// not parse or carries no known body.
fn decode_control(record: Bytes) -> Result<Body, String> {
    ControlMessage::decode(record)
        .map_err(|e| e.to_string())?
        .body
        .ok_or_else(|| "control message without a body".into())
}

/// Accumulates the control stream and yields whole records.
#[derive(Debug, Default)]
struct RecordBuffer {
    buf: BytesMut,
}

impl RecordBuffer {
    fn next_record(&mut self) -> Result<Option<Bytes>, String> {
        let mut rest = &self.buf[..];
        let len = match prost::decode_length_delimiter(&mut rest) {
            Ok(len) => len,
            // Under ten bytes the prefix can only be incomplete.
            Err(_) if self.buf.len() < 10 => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if rest.len() < len {
            return Ok(None);
        }
        let prefix = self.buf.len() - rest.len();
        let mut record = self.buf.split_to(prefix + len);
        let _ = record.split_to(prefix);
        Ok(Some(record.freeze()))
    }
}

/// One QUIC stream's bytes waiting for quinn-proto to take them.
struct Outgoing {
    id: StreamId,
    queue: VecDeque<Bytes>,
}

/// A kwik client that completes the handshake and then breaks the protocol
/// as scripted. See the [module docs](self).
pub struct HostileClient {
    addr: SocketAddr,
    server: SocketAddr,
    seed: u64,
    misbehaviour: Misbehaviour,
    tls: Option<rustls::ClientConfig>,
    upload: Option<Bytes>,
    endpoint: Endpoint,
    conn: Option<(ConnectionHandle, quinn_proto::Connection)>,
    /// Datagrams generated by the endpoint itself (stateless responses).
    responses: VecDeque<(Vec<u8>, SocketAddr, Option<usize>)>,
    scratch: Vec<u8>,
    control: Option<StreamId>,
    lane: Option<StreamId>,
    outgoing: Vec<Outgoing>,
    inbox: RecordBuffer,
    welcome: Option<Welcome>,
    received: Vec<Body>,
    wire_errors: Vec<String>,
    acted: bool,
    connected_at: Option<Instant>,
    welcomed_at: Option<Instant>,
    misbehaved_at: Option<Instant>,
    ended_at: Option<Instant>,
    error: Option<ConnectionError>,
}

impl fmt::Debug for HostileClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostileClient")
            .field("addr", &self.addr)
            .field("misbehaviour", &self.misbehaviour)
            .field("welcomed", &self.welcomed())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// The limits of kwik's default [`kwik_core::TransportConfig`].
fn default_limits() -> Limits {
    let t = kwik_core::TransportConfig::default();
    Limits {
        stream_window: t.stream_window,
        max_bidi_streams: t.max_bidi_streams,
        max_uni_streams: t.max_uni_streams,
        max_frame_payload: t.max_frame_payload,
        max_control_message: t.max_control_message,
    }
}

/// Logical stream the client uploads on: its first unidirectional stream.
pub fn upload_stream() -> KStreamId {
    KStreamId::new(Side::Client, KDir::Uni, 0)
}

impl HostileClient {
    /// A client at `addr` that dials the kwik server at `server` (which
    /// presents `cert` for [`SERVER_NAME`]) and then does `misbehaviour`.
    /// Every quinn random choice derives from `seed`.
    pub fn new(
        addr: SocketAddr,
        server: SocketAddr,
        seed: u64,
        cert: &DevCert,
        misbehaviour: Misbehaviour,
    ) -> Self {
        let endpoint = Endpoint::new(Arc::new(seeded_endpoint_config(seed)), None, true, None);
        HostileClient {
            addr,
            server,
            seed,
            misbehaviour,
            tls: Some(cert.client_config(&[ALPN])),
            upload: None,
            endpoint,
            conn: None,
            responses: VecDeque::new(),
            scratch: Vec::new(),
            control: None,
            lane: None,
            outgoing: Vec::new(),
            inbox: RecordBuffer::default(),
            welcome: None,
            received: Vec::new(),
            wire_errors: Vec::new(),
            acted: false,
            connected_at: None,
            welcomed_at: None,
            misbehaved_at: None,
            ended_at: None,
            error: None,
        }
    }

    /// Offers `alpn` in the TLS handshake instead of kwik's.
    pub fn alpn(mut self, alpn: &[u8]) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.alpn_protocols = vec![alpn.to_vec()];
        }
        self
    }

    /// Once welcomed (and before misbehaving), sends `data` on logical
    /// stream [`upload_stream`] with a FIN, as well-formed lane records no
    /// larger than the server's frame limit. `data` must fit the server's
    /// initial stream window. The node then counts as done only once the
    /// server confirmed the stream with `StreamComplete`.
    pub fn upload(mut self, data: Bytes) -> Self {
        self.upload = Some(data);
        self
    }

    /// The scripted misbehaviour.
    pub fn misbehaviour(&self) -> Misbehaviour {
        self.misbehaviour
    }

    /// True once the server's `Welcome` arrived (the session was active on
    /// the server before the client misbehaved).
    pub fn welcomed(&self) -> bool {
        self.welcome.is_some()
    }

    /// The `Welcome` the server sent.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The session id the server assigned, if welcomed.
    pub fn session_id(&self) -> Option<SessionId> {
        SessionId::from_slice(&self.welcome.as_ref()?.session_id)
    }

    /// Control messages received after the `Welcome`, in order.
    pub fn received(&self) -> &[Body] {
        &self.received
    }

    /// True if the server confirmed the upload stream complete.
    pub fn upload_confirmed(&self) -> bool {
        let id = upload_stream().0;
        self.received
            .iter()
            .any(|b| matches!(b, Body::StreamComplete(c) if c.stream_id == id))
    }

    /// Bytes from the server this client could not parse (must stay empty).
    pub fn wire_errors(&self) -> &[String] {
        &self.wire_errors
    }

    /// True once the scripted misbehaviour was put on the wire.
    pub fn misbehaved(&self) -> bool {
        self.misbehaved_at.is_some()
    }

    /// When the QUIC handshake completed.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// When the `Welcome` arrived.
    pub fn welcomed_at(&self) -> Option<Instant> {
        self.welcomed_at
    }

    /// When the misbehaviour was written.
    pub fn misbehaved_at(&self) -> Option<Instant> {
        self.misbehaved_at
    }

    /// When the connection was lost.
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// How the connection ended, if it did.
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    /// The code of the peer's application close, if the connection ended
    /// with one (kwik closes sessions on protocol errors that way).
    pub fn close_code(&self) -> Option<u64> {
        match &self.error {
            Some(ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
            _ => None,
        }
    }

    /// The reason text of the peer's close (application or transport).
    pub fn close_reason(&self) -> Option<String> {
        match &self.error {
            Some(ConnectionError::ApplicationClosed(c)) => {
                Some(String::from_utf8_lossy(&c.reason).into_owned())
            }
            Some(ConnectionError::ConnectionClosed(c)) => {
                Some(String::from_utf8_lossy(&c.reason).into_owned())
            }
            _ => None,
        }
    }

    /// Forwards endpoint events both ways; drops the connection once drained.
    fn process_endpoint_events(&mut self) {
        let Some((ch, conn)) = &mut self.conn else {
            return;
        };
        let mut drained = false;
        while let Some(ev) = conn.poll_endpoint_events() {
            drained |= ev.is_drained();
            if let Some(back) = self.endpoint.handle_event(*ch, ev) {
                conn.handle_event(back);
            }
        }
        if drained {
            self.conn = None;
        }
    }

    fn connect(&mut self, now: Instant, trace: &mut Trace) {
        let Some(tls) = self.tls.take() else {
            return;
        };
        let crypto = QuicClientConfig::try_from(tls).expect("ring provider has the QUIC suite");
        let config = seeded_client_config(
            self.seed,
            Arc::new(crypto),
            Arc::new(TransportConfig::default()),
        );
        match self.endpoint.connect(now, config, self.server, SERVER_NAME) {
            Ok((ch, conn)) => {
                self.conn = Some((ch, conn));
                trace.record(
                    now,
                    format_args!("hostile[{}] connecting", self.misbehaviour),
                );
            }
            Err(e) => panic!("hostile client cannot dial: {e}"),
        }
    }

    fn queue(&mut self, id: StreamId, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        match self.outgoing.iter_mut().find(|o| o.id == id) {
            Some(o) => o.queue.push_back(bytes),
            None => self.outgoing.push(Outgoing {
                id,
                queue: VecDeque::from([bytes]),
            }),
        }
    }

    /// Hands queued bytes to quinn-proto until it refuses more.
    fn pump(&mut self, now: Instant, trace: &mut Trace) {
        let Some((_, conn)) = &mut self.conn else {
            return;
        };
        for out in &mut self.outgoing {
            while !out.queue.is_empty() {
                match conn
                    .send_stream(out.id)
                    .write_chunks(out.queue.make_contiguous())
                {
                    Ok(written) => {
                        out.queue.drain(..written.chunks);
                        if written.bytes == 0 {
                            break;
                        }
                    }
                    Err(WriteError::Blocked) => break,
                    Err(e) => {
                        trace.record(now, format_args!("hostile write on {} failed: {e}", out.id));
                        out.queue.clear();
                    }
                }
            }
        }
    }

    fn send_hello(&mut self, now: Instant, trace: &mut Trace) {
        let Some((_, conn)) = &mut self.conn else {
            return;
        };
        let Some(id) = conn.streams().open(Dir::Bi) else {
            trace.record(now, "hostile: server allows no control stream");
            return;
        };
        self.control = Some(id);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            features: 0,
            required_features: 0,
            limits: Some(default_limits()),
        };
        self.queue(id, hello_record(hello));
    }

    /// Reads whatever arrived on the control stream and parses it.
    fn read_control(&mut self, now: Instant, trace: &mut Trace) {
        let (Some((_, conn)), Some(id)) = (&mut self.conn, self.control) else {
            return;
        };
        let mut recv = conn.recv_stream(id);
        if let Ok(mut chunks) = recv.read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => self.inbox.buf.extend_from_slice(&chunk.bytes),
                    Ok(None) => {
                        trace.record(now, "hostile: server finished the control stream");
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(ReadError::Reset(code)) => {
                        trace.record(now, format_args!("hostile: control stream reset {code}"));
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        loop {
            let record = match self.inbox.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.wire_errors.push(e);
                    self.inbox.buf.clear();
                    break;
                }
            };
            match decode_control(record) {
                Ok(Body::Welcome(w)) if self.welcome.is_none() => {
                    trace.record(
                        now,
                        format_args!(
                            "hostile[{}] welcomed: version {} limits {:?}",
                            self.misbehaviour, w.version, w.limits
                        ),
                    );
                    self.welcome = Some(w);
                    self.welcomed_at = Some(now);
                }
                Ok(body) => self.received.push(body),
                Err(e) => {
                    trace.record(now, format_args!("hostile: unparsable control record: {e}"));
                    self.wire_errors.push(e);
                }
            }
        }
    }

    /// Server-opened streams are not expected; read and discard them.
    fn discard(&mut self, id: StreamId) {
        let Some((_, conn)) = &mut self.conn else {
            return;
        };
        let mut recv = conn.recv_stream(id);
        if let Ok(mut chunks) = recv.read(true) {
            while let Ok(Some(_)) = chunks.next(usize::MAX) {}
            let _ = chunks.finalize();
        }
    }

    /// The lane this client writes records on, opened on first use.
    fn lane(&mut self) -> Option<StreamId> {
        if self.lane.is_none() {
            let (_, conn) = self.conn.as_mut()?;
            self.lane = conn.streams().open(Dir::Uni);
        }
        self.lane
    }

    /// After the `Welcome`: the optional upload, then the misbehaviour.
    fn act(&mut self, now: Instant, trace: &mut Trace) {
        if self.acted || self.error.is_some() {
            return;
        }
        let (Some(welcome), Some(control)) = (self.welcome.clone(), self.control) else {
            return;
        };
        let needs_lane = self.upload.is_some()
            || matches!(
                self.misbehaviour,
                Misbehaviour::OversizedFrame | Misbehaviour::FrameForUnopenedStream
            );
        let lane = if needs_lane {
            match self.lane() {
                Some(lane) => Some(lane),
                None => return, // no uni stream credit yet: retry on the next step
            }
        } else {
            None
        };
        self.acted = true;
        // The server always announces its limits; kwik's defaults otherwise.
        let limits = welcome.limits.unwrap_or_else(default_limits);
        if let (Some(data), Some(lane)) = (self.upload.clone(), lane) {
            let max = usize::try_from(limits.max_frame_payload.max(1)).unwrap_or(usize::MAX);
            let mut offset = 0;
            while offset < data.len() {
                let n = (data.len() - offset).min(max);
                let header = DataHeader {
                    stream_id: upload_stream().0,
                    offset: offset as u64,
                    length: n as u64,
                    fin: offset + n == data.len(),
                };
                self.queue(lane, header.encode_length_delimited_to_vec());
                self.queue(lane, data.slice(offset..offset + n));
                offset += n;
            }
            if data.is_empty() {
                let header = DataHeader {
                    stream_id: upload_stream().0,
                    fin: true,
                    ..DataHeader::default()
                };
                self.queue(lane, header.encode_length_delimited_to_vec());
            }
            trace.record(now, format_args!("hostile: uploading {} bytes", data.len()));
        }
        match self.misbehaviour {
            Misbehaviour::None => return,
            Misbehaviour::GarbageOnControl => {
                let mut garbage = length_prefix(16);
                garbage.extend_from_slice(&[0xff; 16]);
                self.queue(control, garbage);
            }
            Misbehaviour::OversizedControlMessage => {
                let mut prefix = length_prefix(limits.max_control_message.saturating_add(1));
                prefix.extend_from_slice(&[0u8; 32]);
                self.queue(control, prefix);
            }
            Misbehaviour::OversizedFrame => {
                let lane = lane.expect("lane opened above");
                let header = DataHeader {
                    stream_id: upload_stream().0,
                    offset: 0,
                    length: OVERSIZED_FRAME_LEN.max(limits.max_frame_payload + 1),
                    fin: false,
                };
                self.queue(lane, header.encode_length_delimited_to_vec());
                self.queue(lane, vec![0xab; 4096]);
            }
            Misbehaviour::FrameForUnopenedStream => {
                let lane = lane.expect("lane opened above");
                let stream = KStreamId::new(Side::Server, KDir::Bi, 0);
                let header = DataHeader {
                    stream_id: stream.0,
                    offset: 0,
                    length: 16,
                    fin: false,
                };
                self.queue(lane, header.encode_length_delimited_to_vec());
                self.queue(lane, vec![0xcd; 16]);
            }
        }
        self.misbehaved_at = Some(now);
        trace.record(
            now,
            format_args!("hostile: misbehaving: {}", self.misbehaviour),
        );
    }
}

impl Node for HostileClient {
    fn receive(
        &mut self,
        now: Instant,
        _local: SocketAddr,
        remote: SocketAddr,
        datagram: BytesMut,
    ) {
        self.scratch.clear();
        match self
            .endpoint
            .handle(now, remote, None, None, datagram, &mut self.scratch)
        {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some((h, conn)) = &mut self.conn
                    && *h == ch
                {
                    conn.handle_event(ev);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.endpoint.ignore(incoming),
            Some(DatagramEvent::Response(t)) => {
                let data = self.scratch[..t.size].to_vec();
                self.responses
                    .push_back((data, t.destination, t.segment_size));
            }
            None => {}
        }
        self.process_endpoint_events();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, conn)) = &mut self.conn
            && conn.poll_timeout().is_some_and(|t| t <= now)
        {
            conn.handle_timeout(now);
        }
        self.process_endpoint_events();
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.process_endpoint_events();
        if let Some((data, dst, segment_size)) = self.responses.pop_front() {
            buf.extend_from_slice(&data);
            return Some(Transmit {
                src: self.addr,
                dst,
                segment_size,
            });
        }
        let (_, conn) = self.conn.as_mut()?;
        let t = conn.poll_transmit(now, MAX_GSO_SEGMENTS, buf)?;
        buf.truncate(t.size);
        Some(Transmit {
            src: self.addr,
            dst: t.destination,
            segment_size: t.segment_size,
        })
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.process_endpoint_events();
        self.conn.as_mut()?.1.poll_timeout()
    }

    fn step(&mut self, now: Instant, trace: &mut Trace) {
        if self.tls.is_some() {
            self.connect(now, trace);
        }
        while let Some(ev) = self.conn.as_mut().and_then(|(_, c)| c.poll()) {
            match ev {
                Event::Connected => {
                    self.connected_at = Some(now);
                    trace.record(now, "hostile: connected");
                    self.send_hello(now, trace);
                }
                Event::ConnectionLost { reason } => {
                    trace.record(
                        now,
                        format_args!("hostile[{}] connection lost: {reason}", self.misbehaviour),
                    );
                    self.ended_at = Some(now);
                    self.error = Some(reason);
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    if Some(id) == self.control {
                        self.read_control(now, trace);
                    } else {
                        self.discard(id);
                    }
                }
                Event::Stream(StreamEvent::Opened { dir }) => {
                    while let Some(id) = self
                        .conn
                        .as_mut()
                        .and_then(|(_, c)| c.streams().accept(dir))
                    {
                        trace.record(now, format_args!("hostile: server opened QUIC stream {id}"));
                        self.discard(id);
                    }
                }
                _ => {}
            }
        }
        self.act(now, trace);
        self.pump(now, trace);
        self.process_endpoint_events();
    }

    fn done(&self) -> bool {
        if self.error.is_some() {
            return true;
        }
        match self.misbehaviour {
            Misbehaviour::None => {
                self.welcomed() && (self.upload.is_none() || self.upload_confirmed())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwik_core::proto::control::StreamComplete;

    #[test]
    fn record_buffer_waits_for_whole_records() {
        let complete = StreamComplete { stream_id: 5 };
        let record = ControlMessage {
            body: Some(Body::StreamComplete(complete)),
        }
        .encode_length_delimited_to_vec();
        let mut inbox = RecordBuffer::default();
        // A long prefix split mid-varint, then a record split mid-body.
        inbox.buf.extend_from_slice(&length_prefix(300)[..1]);
        assert_eq!(inbox.next_record(), Ok(None));
        inbox.buf.clear();
        for &b in &record {
            assert_eq!(inbox.next_record(), Ok(None));
            inbox.buf.extend_from_slice(&[b]);
        }
        let got = inbox.next_record().unwrap().unwrap();
        assert_eq!(decode_control(got), Ok(Body::StreamComplete(complete)));
        assert!(inbox.buf.is_empty());
        // An over-long prefix is an error, not a wait.
        inbox.buf.extend_from_slice(&[0xff; 10]);
        assert!(inbox.next_record().is_err());
    }
}
