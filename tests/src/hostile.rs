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
//! With [`join`](HostileClient::join) the client opens with a scripted
//! `Join` instead of the `Hello` (as if it were joining a secondary path),
//! so that token checks of a secondary server can be attacked: forged,
//! expired, replayed or borrowed tokens.
//!
//! [`HostileSecondary`] is the other way round: a secondary *server* that
//! accepts a kwik client's path connection, answers its `Join` with `Joined`
//! and then breaks the protocol on the first delegation it is handed.
//!
//! Both nodes drive their quinn-proto endpoint through the same
//! [`QuicDriver`] as [`crate::quinn_node`] (see [`crate::quic_driver`]),
//! holding at most one connection, and draw every quinn random choice from
//! a seed (see [`crate::seeding`]).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kwik_core::proto::common::Limits;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{
    ControlMessage, Delegate, Hello, Join, Joined, StreamCredit, Welcome,
};
use kwik_core::proto::data::DataHeader;
use kwik_core::{
    ALPN, Dir as KDir, PROTOCOL_VERSION, PathId, SessionId, SharedResource, Side,
    StreamId as KStreamId,
};
use prost::Message;
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{
    ConnectionError, Dir, Endpoint, Event, ReadError, StreamEvent, StreamId, TransportConfig,
    VarInt, WriteError,
};

use crate::certs::DevCert;
use crate::node::{Node, Transmit};
use crate::quic_driver::{Incoming, QuicDriver};
use crate::seeding::{seeded_client_config, seeded_endpoint_config, seeded_server_config};
use crate::setup::SERVER_NAME;
use crate::trace::Trace;

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

/// A whole control record: length prefix + `ControlMessage { body }`.
fn control_record(body: Body) -> Vec<u8> {
    ControlMessage { body: Some(body) }.encode_length_delimited_to_vec()
}

/// A whole control record: length prefix + `ControlMessage { hello }`.
fn hello_record(hello: Hello) -> Vec<u8> {
    control_record(Body::Hello(hello))
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

/// Bytes waiting for quinn-proto, per QUIC stream, in order: the hostile
/// nodes script whole records and hand them over as flow control allows.
#[derive(Default)]
struct SendQueue(Vec<Outgoing>);

impl SendQueue {
    fn push(&mut self, id: StreamId, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        match self.0.iter_mut().find(|o| o.id == id) {
            Some(o) => o.queue.push_back(bytes),
            None => self.0.push(Outgoing {
                id,
                queue: VecDeque::from([bytes]),
            }),
        }
    }

    /// Hands queued bytes to quinn-proto until it refuses more.
    fn pump(&mut self, conn: &mut quinn_proto::Connection, now: Instant, trace: &mut Trace) {
        for out in &mut self.0 {
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
}

/// A kwik client that completes the handshake and then breaks the protocol
/// as scripted. See the [module docs](self).
pub struct HostileClient {
    server: SocketAddr,
    seed: u64,
    misbehaviour: Misbehaviour,
    tls: Option<rustls::ClientConfig>,
    upload: Option<Bytes>,
    /// Sent instead of the `Hello`, if set.
    join: Option<Join>,
    quic: QuicDriver,
    control: Option<StreamId>,
    lane: Option<StreamId>,
    outgoing: SendQueue,
    inbox: RecordBuffer,
    welcome: Option<Welcome>,
    joined: Option<Joined>,
    received: Vec<Body>,
    wire_errors: Vec<String>,
    acted: bool,
    connected_at: Option<Instant>,
    welcomed_at: Option<Instant>,
    joined_at: Option<Instant>,
    misbehaved_at: Option<Instant>,
    ended_at: Option<Instant>,
    error: Option<ConnectionError>,
}

impl fmt::Debug for HostileClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostileClient")
            .field("addr", &self.quic.addr())
            .field("misbehaviour", &self.misbehaviour)
            .field("welcomed", &self.welcomed())
            .field("joining", &self.join.is_some())
            .field("joined", &self.joined())
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

/// A `Join` claiming path `path` of the session whose id is `session_id`
/// (normally 16 bytes; any length can be scripted), valid until
/// `expiry_unix`, carrying `token`, and announcing kwik's default limits.
/// It names no secondary (empty address and server name): set
/// `address` / `server_name` to name one, as a token minted for it expects.
pub fn join_request(session_id: &[u8], path: PathId, expiry_unix: u64, token: Bytes) -> Join {
    Join {
        session_id: Bytes::copy_from_slice(session_id),
        path_id: path.0,
        expiry_unix,
        token,
        limits: Some(default_limits()),
        address: String::new(),
        server_name: String::new(),
    }
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
            server,
            seed,
            misbehaviour,
            tls: Some(cert.client_config(&[ALPN])),
            upload: None,
            join: None,
            quic: QuicDriver::new(addr, endpoint),
            control: None,
            lane: None,
            outgoing: SendQueue::default(),
            inbox: RecordBuffer::default(),
            welcome: None,
            joined: None,
            received: Vec::new(),
            wire_errors: Vec::new(),
            acted: false,
            connected_at: None,
            welcomed_at: None,
            joined_at: None,
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

    /// Opens the control stream with `join` instead of a `Hello`: the
    /// client tries to join a secondary path with whatever session id, path
    /// id, expiry and token the script chose (see [`join_request`]). A
    /// server that accepts it answers `Joined` ([`joined`](Self::joined));
    /// one that refuses closes the connection (see
    /// [`close_code`](Self::close_code)). The misbehaviour and the upload,
    /// if any, follow the `Joined` as they would follow a `Welcome`.
    pub fn join(mut self, join: Join) -> Self {
        self.join = Some(join);
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

    /// True once the server answered the scripted `Join` with `Joined`.
    pub fn joined(&self) -> bool {
        self.joined.is_some()
    }

    /// The `Joined` the server sent.
    pub fn joined_message(&self) -> Option<&Joined> {
        self.joined.as_ref()
    }

    /// When the `Joined` arrived.
    pub fn joined_at(&self) -> Option<Instant> {
        self.joined_at
    }

    /// Closes the connection with application code `code` (as a client
    /// that is done would). The node must be touched for the close to be
    /// sent (`Sim::node_mut` does that).
    pub fn close(&mut self, now: Instant, code: u32, reason: &[u8]) {
        if let Some(conn) = self.quic.connection_mut() {
            conn.close(now, VarInt::from_u32(code), Bytes::copy_from_slice(reason));
        }
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
        match self.quic.connect(now, config, self.server, SERVER_NAME) {
            Ok(_) => {
                trace.record(
                    now,
                    format_args!("hostile[{}] connecting", self.misbehaviour),
                );
            }
            Err(e) => panic!("hostile client cannot dial: {e}"),
        }
    }

    fn send_hello(&mut self, now: Instant, trace: &mut Trace) {
        let Some(conn) = self.quic.connection_mut() else {
            return;
        };
        let Some(id) = conn.streams().open(Dir::Bi) else {
            trace.record(now, "hostile: server allows no control stream");
            return;
        };
        self.control = Some(id);
        if let Some(join) = self.join.clone() {
            trace.record(
                now,
                format_args!(
                    "hostile: joining path {} with a {}-byte token",
                    join.path_id,
                    join.token.len()
                ),
            );
            self.outgoing.push(id, control_record(Body::Join(join)));
            return;
        }
        let hello = Hello {
            version: PROTOCOL_VERSION,
            features: 0,
            required_features: 0,
            limits: Some(default_limits()),
        };
        self.outgoing.push(id, hello_record(hello));
    }

    /// Reads whatever arrived on the control stream and parses it.
    fn read_control(&mut self, now: Instant, trace: &mut Trace) {
        let (Some(conn), Some(id)) = (self.quic.connection_mut(), self.control) else {
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
                Ok(Body::Joined(j)) if self.join.is_some() && self.joined.is_none() => {
                    trace.record(
                        now,
                        format_args!(
                            "hostile[{}] joined: limits {:?}",
                            self.misbehaviour, j.limits
                        ),
                    );
                    self.joined = Some(j);
                    self.joined_at = Some(now);
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
        let Some(conn) = self.quic.connection_mut() else {
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
            let conn = self.quic.connection_mut()?;
            self.lane = conn.streams().open(Dir::Uni);
        }
        self.lane
    }

    /// After the `Welcome`: the optional upload, then the misbehaviour.
    fn act(&mut self, now: Instant, trace: &mut Trace) {
        if self.acted || self.error.is_some() {
            return;
        }
        // The server's limits: from its Welcome, or its Joined in join mode.
        let announced = match (&self.welcome, &self.joined) {
            (Some(w), _) => w.limits,
            (None, Some(j)) => j.limits,
            (None, None) => return,
        };
        let Some(control) = self.control else {
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
        let limits = announced.unwrap_or_else(default_limits);
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
                self.outgoing
                    .push(lane, header.encode_length_delimited_to_vec());
                self.outgoing.push(lane, data.slice(offset..offset + n));
                offset += n;
            }
            if data.is_empty() {
                let header = DataHeader {
                    stream_id: upload_stream().0,
                    fin: true,
                    ..DataHeader::default()
                };
                self.outgoing
                    .push(lane, header.encode_length_delimited_to_vec());
            }
            trace.record(now, format_args!("hostile: uploading {} bytes", data.len()));
        }
        match self.misbehaviour {
            Misbehaviour::None => return,
            Misbehaviour::GarbageOnControl => {
                let mut garbage = length_prefix(16);
                garbage.extend_from_slice(&[0xff; 16]);
                self.outgoing.push(control, garbage);
            }
            Misbehaviour::OversizedControlMessage => {
                let mut prefix = length_prefix(limits.max_control_message.saturating_add(1));
                prefix.extend_from_slice(&[0u8; 32]);
                self.outgoing.push(control, prefix);
            }
            Misbehaviour::OversizedFrame => {
                let lane = lane.expect("lane opened above");
                let header = DataHeader {
                    stream_id: upload_stream().0,
                    offset: 0,
                    length: OVERSIZED_FRAME_LEN.max(limits.max_frame_payload + 1),
                    fin: false,
                };
                self.outgoing
                    .push(lane, header.encode_length_delimited_to_vec());
                self.outgoing.push(lane, vec![0xab; 4096]);
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
                self.outgoing
                    .push(lane, header.encode_length_delimited_to_vec());
                self.outgoing.push(lane, vec![0xcd; 16]);
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
    fn receive(&mut self, now: Instant, _: SocketAddr, remote: SocketAddr, data: BytesMut) {
        self.quic.receive(now, remote, data, false);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.quic.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.quic.poll_transmit(now, buf)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.quic.poll_timeout()
    }

    fn step(&mut self, now: Instant, trace: &mut Trace) {
        if self.tls.is_some() {
            self.connect(now, trace);
        }
        while let Some(ev) = self.quic.connection_mut().and_then(|c| c.poll()) {
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
                        .quic
                        .connection_mut()
                        .and_then(|c| c.streams().accept(dir))
                    {
                        trace.record(now, format_args!("hostile: server opened QUIC stream {id}"));
                        self.discard(id);
                    }
                }
                _ => {}
            }
        }
        self.act(now, trace);
        if let Some(conn) = self.quic.connection_mut() {
            self.outgoing.pump(conn, now, trace);
        }
        self.quic.process_endpoint_events();
    }

    fn done(&self) -> bool {
        if self.error.is_some() {
            return true;
        }
        match self.misbehaviour {
            Misbehaviour::None => {
                let established = if self.join.is_some() {
                    self.joined()
                } else {
                    self.welcomed()
                };
                established && (self.upload.is_none() || self.upload_confirmed())
            }
            _ => false,
        }
    }
}

/// Where a [`HostileSecondary`] puts its record past the credit.
#[derive(Clone)]
pub enum Overshoot {
    /// `len` bytes of [`PAST_CREDIT_FILL`] at offset `max(c, a + window)`
    /// (see [`HostileSecondary`]): past the credit the client granted when
    /// it forwarded the delegation *and* past any credit it can have granted
    /// by the time the record arrives, however far its reader got.
    Far {
        /// Payload length.
        len: u64,
    },
    /// A record of `len` bytes ending exactly one byte past the credit `c`:
    /// bytes `[c + 1 - len, c)` copied from `source` (the genuine bytes, so
    /// within the credit they are harmless duplicates) and one byte of
    /// [`PAST_CREDIT_FILL`] at offset `c`. Only certain to be refused when
    /// the client's credit cannot have grown since it forwarded the
    /// delegation, i.e. while its reader is paused.
    OneByte {
        /// Payload length (at least 1).
        len: u64,
        /// The genuine bytes of the stream.
        source: SharedResource,
    },
}

impl fmt::Debug for Overshoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overshoot::Far { len } => write!(f, "Far {{ len: {len} }}"),
            Overshoot::OneByte { len, .. } => write!(f, "OneByte {{ len: {len} }}"),
        }
    }
}

/// The record a [`HostileSecondary`] wrote past the client's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastCreditRecord {
    /// The logical stream it names.
    pub stream: KStreamId,
    /// The delegated range it answered.
    pub delegated: (u64, u64),
    /// The credit the client passed along with the delegation.
    pub credit: u64,
    /// The client's stream window (from its `Join`).
    pub window: u64,
    /// First logical offset of the record.
    pub offset: u64,
    /// Its payload length.
    pub len: u64,
    /// Offset of its first [`PAST_CREDIT_FILL`] byte (every byte from there
    /// to its end is one).
    pub fill_from: u64,
    /// When it was written.
    pub at: Instant,
}

impl PastCreditRecord {
    /// One past the record's last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Byte the made-up part of a [`PastCreditRecord`] is made of (a delivered
/// run of it would fail the tests' payload verification).
pub const PAST_CREDIT_FILL: u8 = 0xee;

/// A secondary server built directly on quinn-proto that joins a kwik
/// client's path and then writes past the flow-control credit.
///
/// It accepts the first QUIC connection (ALPN [`kwik_core::ALPN`], one
/// bidirectional stream allowed: the control stream), reads the client's
/// `Join` (the token is not checked: the node is hostile, not careful),
/// answers `Joined` with kwik's default limits, and waits for a `Delegate`.
/// On the first one with a non-empty range `[a, b)` of stream `s` and
/// credit `c` it opens a lane and writes one data record for `s` placed as
/// the [`Overshoot`] says.
///
/// Why [`Overshoot::Far`] is refused whatever the timing: the client's
/// credit for a stream never exceeds what its application read plus one
/// window, and its application cannot read past `a` before somebody writes
/// `[a, b)`, which only this node was asked to do. So `a + window` lies past
/// the credit the client granted when it forwarded the delegation
/// (`c ≤ a + window`) and past any it may have granted since.
///
/// Everything else the client sends (credit updates, further delegations,
/// raw messages) is recorded and ignored.
pub struct HostileSecondary {
    overshoot: Overshoot,
    quic: QuicDriver,
    control: Option<StreamId>,
    outgoing: SendQueue,
    inbox: RecordBuffer,
    join: Option<Join>,
    joined_at: Option<Instant>,
    delegates: Vec<Delegate>,
    credits: Vec<StreamCredit>,
    received: Vec<Body>,
    wire_errors: Vec<String>,
    record: Option<PastCreditRecord>,
    refused_connections: u64,
    ended_at: Option<Instant>,
    error: Option<ConnectionError>,
}

impl fmt::Debug for HostileSecondary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostileSecondary")
            .field("addr", &self.quic.addr())
            .field("joined", &self.joined_at.is_some())
            .field("delegates", &self.delegates.len())
            .field("record", &self.record)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl HostileSecondary {
    /// A hostile secondary at `addr` presenting `cert` that answers its
    /// first delegation with a record past the credit, placed as
    /// `overshoot` says (its length clamped to the client's frame limit).
    /// Every quinn random choice derives from `seed`.
    pub fn past_credit(addr: SocketAddr, seed: u64, cert: &DevCert, overshoot: Overshoot) -> Self {
        let mut transport = TransportConfig::default();
        // PROTOCOL.md §1: exactly one bidirectional stream, the control stream.
        transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
        transport.max_concurrent_uni_streams(VarInt::from_u32(16));
        let crypto = Arc::new(cert.quic_server_config(&[ALPN]));
        let server = seeded_server_config(seed, crypto, Arc::new(transport));
        let endpoint = Endpoint::new(
            Arc::new(seeded_endpoint_config(seed)),
            Some(Arc::new(server)),
            true,
            None,
        );
        HostileSecondary {
            overshoot,
            quic: QuicDriver::new(addr, endpoint),
            control: None,
            outgoing: SendQueue::default(),
            inbox: RecordBuffer::default(),
            join: None,
            joined_at: None,
            delegates: Vec::new(),
            credits: Vec::new(),
            received: Vec::new(),
            wire_errors: Vec::new(),
            record: None,
            refused_connections: 0,
            ended_at: None,
            error: None,
        }
    }

    /// The client's `Join`, once read.
    pub fn join_received(&self) -> Option<&Join> {
        self.join.as_ref()
    }

    /// When `Joined` was sent.
    pub fn joined_at(&self) -> Option<Instant> {
        self.joined_at
    }

    /// Every `Delegate` the client forwarded, in order.
    pub fn delegates(&self) -> &[Delegate] {
        &self.delegates
    }

    /// Every `StreamCredit` the client sent this source, in order.
    pub fn credits(&self) -> &[StreamCredit] {
        &self.credits
    }

    /// Other control messages received, in order.
    pub fn received(&self) -> &[Body] {
        &self.received
    }

    /// Bytes from the client this node could not parse (must stay empty).
    pub fn wire_errors(&self) -> &[String] {
        &self.wire_errors
    }

    /// The offending record, once written.
    pub fn record(&self) -> Option<&PastCreditRecord> {
        self.record.as_ref()
    }

    /// Connections after the first (ignored).
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections
    }

    /// When the connection was lost.
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// How the connection ended, if it did.
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    /// The code of the client's application close, if the connection ended
    /// with one.
    pub fn close_code(&self) -> Option<u64> {
        match &self.error {
            Some(ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
            _ => None,
        }
    }

    /// The reason text of the client's application close.
    pub fn close_reason(&self) -> Option<String> {
        match &self.error {
            Some(ConnectionError::ApplicationClosed(c)) => {
                Some(String::from_utf8_lossy(&c.reason).into_owned())
            }
            _ => None,
        }
    }

    fn accept_streams(&mut self, now: Instant, trace: &mut Trace) {
        let Some(conn) = self.quic.connection_mut() else {
            return;
        };
        while let Some(id) = conn.streams().accept(Dir::Bi) {
            if self.control.is_none() {
                self.control = Some(id);
            } else {
                trace.record(now, format_args!("hostile-secondary: extra bi stream {id}"));
            }
        }
        while let Some(id) = conn.streams().accept(Dir::Uni) {
            trace.record(now, format_args!("hostile-secondary: client lane {id}"));
            discard_stream(conn, id);
        }
    }

    fn read_control(&mut self, now: Instant, trace: &mut Trace) {
        let (Some(conn), Some(id)) = (self.quic.connection_mut(), self.control) else {
            return;
        };
        let mut recv = conn.recv_stream(id);
        if let Ok(mut chunks) = recv.read(true) {
            // End, reset or nothing more for now: whatever arrived is parsed.
            while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                self.inbox.buf.extend_from_slice(&chunk.bytes);
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
                Ok(Body::Join(join)) if self.join.is_none() => {
                    trace.record(
                        now,
                        format_args!(
                            "hostile-secondary: join of path {} (window {:?})",
                            join.path_id,
                            join.limits.map(|l| l.stream_window)
                        ),
                    );
                    self.join = Some(join);
                    let joined = Joined {
                        limits: Some(default_limits()),
                    };
                    self.outgoing.push(id, control_record(Body::Joined(joined)));
                    self.joined_at = Some(now);
                }
                Ok(Body::Delegate(d)) => {
                    trace.record(
                        now,
                        format_args!(
                            "hostile-secondary: delegated {}..{} of stream {} (credit {})",
                            d.offset,
                            d.offset + d.length,
                            d.stream_id,
                            d.credit
                        ),
                    );
                    self.delegates.push(d.clone());
                    self.overshoot_credit(d, now, trace);
                }
                Ok(Body::StreamCredit(c)) => self.credits.push(c),
                Ok(body) => self.received.push(body),
                Err(e) => {
                    trace.record(now, format_args!("hostile-secondary: bad record: {e}"));
                    self.wire_errors.push(e);
                }
            }
        }
    }

    /// On the first non-empty delegation: the record past the credit.
    fn overshoot_credit(&mut self, d: Delegate, now: Instant, trace: &mut Trace) {
        if self.record.is_some() || d.length == 0 {
            return;
        }
        let Some(limits) = self.join.as_ref().and_then(|j| j.limits) else {
            return;
        };
        let Some(conn) = self.quic.connection_mut() else {
            return;
        };
        let Some(lane) = conn.streams().open(Dir::Uni) else {
            trace.record(now, "hostile-secondary: the client allows no lane");
            return;
        };
        let window = limits.stream_window;
        let max_len = limits.max_frame_payload.max(1);
        let (offset, fill_from, payload) = match &self.overshoot {
            Overshoot::Far { len } => {
                let offset = d.credit.max(d.offset + window);
                let len = (*len).clamp(1, max_len);
                (offset, offset, vec![PAST_CREDIT_FILL; len as usize])
            }
            Overshoot::OneByte { len, source } => {
                let genuine = (*len).clamp(1, max_len).min(d.credit + 1) - 1;
                let offset = d.credit - genuine;
                let mut payload = source.read(offset, genuine as usize).to_vec();
                payload.resize(genuine as usize, PAST_CREDIT_FILL);
                payload.push(PAST_CREDIT_FILL);
                (offset, d.credit, payload)
            }
        };
        let len = payload.len() as u64;
        let header = DataHeader {
            stream_id: d.stream_id,
            offset,
            length: len,
            fin: false,
        };
        self.outgoing
            .push(lane, header.encode_length_delimited_to_vec());
        self.outgoing.push(lane, payload);
        let record = PastCreditRecord {
            stream: KStreamId(d.stream_id),
            delegated: (d.offset, d.offset + d.length),
            credit: d.credit,
            window,
            offset,
            len,
            fill_from,
            at: now,
        };
        trace.record(
            now,
            format_args!(
                "hostile-secondary: writing {}..{} past credit {}",
                record.offset,
                record.end(),
                record.credit
            ),
        );
        self.record = Some(record);
    }
}

/// Reads and drops whatever `id` holds.
fn discard_stream(conn: &mut quinn_proto::Connection, id: StreamId) {
    let mut recv = conn.recv_stream(id);
    if let Ok(mut chunks) = recv.read(true) {
        while let Ok(Some(_)) = chunks.next(usize::MAX) {}
        let _ = chunks.finalize();
    }
}

impl Node for HostileSecondary {
    fn receive(&mut self, now: Instant, _: SocketAddr, remote: SocketAddr, data: BytesMut) {
        // Only the first connection is served.
        let accept = self.quic.is_empty() && self.ended_at.is_none();
        match self.quic.receive(now, remote, data, accept) {
            Incoming::Ignored | Incoming::Failed(_) => self.refused_connections += 1,
            Incoming::None | Incoming::Accepted(_) => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.quic.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.quic.poll_transmit(now, buf)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.quic.poll_timeout()
    }

    fn step(&mut self, now: Instant, trace: &mut Trace) {
        while let Some(ev) = self.quic.connection_mut().and_then(|c| c.poll()) {
            match ev {
                Event::Connected => trace.record(now, "hostile-secondary: connected"),
                Event::ConnectionLost { reason } => {
                    trace.record(
                        now,
                        format_args!("hostile-secondary: connection lost: {reason}"),
                    );
                    self.ended_at = Some(now);
                    self.error = Some(reason);
                }
                Event::Stream(StreamEvent::Opened { .. }) => {
                    self.accept_streams(now, trace);
                    self.read_control(now, trace);
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    if Some(id) == self.control {
                        self.read_control(now, trace);
                    } else if let Some(conn) = self.quic.connection_mut() {
                        discard_stream(conn, id);
                    }
                }
                _ => {}
            }
        }
        if let Some(conn) = self.quic.connection_mut() {
            self.outgoing.pump(conn, now, trace);
        }
        self.quic.process_endpoint_events();
    }

    fn done(&self) -> bool {
        self.error.is_some() || self.record.is_some()
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
