//! A scripted, hostile *primary* server built directly on quinn-proto.
//!
//! The client trusts its primary for the session's content and offsets, but
//! not blindly: every number a primary sends is still validated before
//! arithmetic, AddPath requests go through the client's own policy and rate
//! limit, and whatever a primary can make the client keep has a bound. To
//! test that, [`HostilePrimary`] accepts a real kwik client's connection
//! (ALPN [`kwik_core::ALPN`], exactly one bidirectional stream allowed: the
//! control stream), reads its `Hello`, answers a `Welcome` (a 16-byte
//! session id, [`kwik_core::PROTOCOL_VERSION`], kwik's default limits) and
//! then runs a script of [`PrimaryStep`]s: control messages, raw bytes on
//! the control stream, data records on its lane, and waits for the client's
//! `PathStatus` answers.
//!
//! It reads and discards the client's lanes, parses the client's control
//! messages (counting `PathStatus` answers per path and per state and code,
//! which is what AddPath floods are judged on) and records how its
//! connection ended, like the other hostile nodes.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{self as msg, AddPath, Hello, Welcome};
use kwik_core::{ALPN, PROTOCOL_VERSION, SessionId, StreamId as KStreamId};
use quinn_proto::{
    ConnectionError, Dir, Endpoint, Event, StreamEvent, StreamId, TransportConfig, VarInt,
};

use crate::certs::DevCert;
use crate::node::{Node, Transmit};
use crate::quic_driver::{Incoming, QuicDriver};
use crate::seeding::{derive_key, seeded_endpoint_config, seeded_server_config};
use crate::trace::Trace;
use crate::wire::{
    RecordBuffer, SendQueue, control_record, data_record, decode_control, default_limits,
};

/// Most non-`PathStatus` control messages a [`HostilePrimary`] keeps (the
/// rest are only counted).
const KEEP_RECEIVED: usize = 10_000;

/// One step of a [`HostilePrimary`] script, run in order once the client's
/// `Hello` was answered.
#[derive(Clone)]
pub enum PrimaryStep {
    /// One control message.
    Control(Body),
    /// Raw bytes on the control stream: a flood of records
    /// ([`crate::wire::control_records`]) or garbage.
    ControlBytes(Bytes),
    /// One data record on the primary's lane (opened on first use).
    Record {
        /// The logical stream.
        stream: KStreamId,
        /// Offset of the first payload byte.
        offset: u64,
        /// The payload.
        payload: Bytes,
        /// The record ends the stream.
        fin: bool,
    },
    /// Waits until the client reported path `path` in state `state`.
    AwaitPathStatus {
        /// The path id.
        path: u64,
        /// The state to wait for.
        state: msg::PathState,
    },
    /// Waits until at least this many bytes arrived on the client's lanes.
    AwaitClientBytes(u64),
    /// Waits until at least this many control messages other than
    /// `PathStatus` arrived (e.g. the client's first `StreamCredit`, which
    /// shows that data is flowing).
    AwaitReceived(u64),
    /// Notes the moment the misbehaviour starts
    /// ([`misbehaved_at`](HostilePrimary::misbehaved_at)).
    Mark,
}

impl fmt::Debug for PrimaryStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrimaryStep::Control(b) => write!(f, "Control({b:?})"),
            PrimaryStep::ControlBytes(b) => write!(f, "ControlBytes({} bytes)", b.len()),
            PrimaryStep::Record {
                stream,
                offset,
                payload,
                fin,
            } => write!(
                f,
                "Record({stream} at {offset}, {} bytes, fin {fin})",
                payload.len()
            ),
            PrimaryStep::AwaitPathStatus { path, state } => {
                write!(f, "AwaitPathStatus(path {path} {state:?})")
            }
            PrimaryStep::AwaitClientBytes(n) => write!(f, "AwaitClientBytes({n})"),
            PrimaryStep::AwaitReceived(n) => write!(f, "AwaitReceived({n})"),
            PrimaryStep::Mark => f.write_str("Mark"),
        }
    }
}

/// An `AddPath` for `path` to `address`, validated for `server_name`, with
/// `token` valid until `expiry_unix` (see [`kwik_core::TokenKey::mint`] for
/// a genuine one).
pub fn add_path(
    path: u64,
    address: SocketAddr,
    server_name: &str,
    expiry_unix: u64,
    token: Bytes,
) -> Body {
    Body::AddPath(AddPath {
        path_id: path,
        address: address.to_string(),
        server_name: server_name.to_string(),
        expiry_unix,
        token,
    })
}

/// The latest `PathStatus` the client sent for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathAnswer {
    /// The state (`msg::PathState` as its wire value).
    pub state: i32,
    /// The kwik error code (full wire value), 0 if none.
    pub code: u64,
    /// How many `PathStatus` messages named this path.
    pub messages: u64,
}

/// Changes a `Welcome` before a [`HostilePrimary`] sends it.
type WelcomeTamper = Box<dyn Fn(&mut Welcome)>;

/// A hostile primary server. See the [module docs](self).
pub struct HostilePrimary {
    quic: QuicDriver,
    session_id: SessionId,
    script: VecDeque<PrimaryStep>,
    /// Changes the `Welcome` before it is sent.
    tamper_welcome: Option<WelcomeTamper>,
    control: Option<StreamId>,
    lane: Option<StreamId>,
    outgoing: SendQueue,
    inbox: RecordBuffer,
    hello: Option<Hello>,
    welcomed_at: Option<Instant>,
    answers: BTreeMap<u64, PathAnswer>,
    answer_counts: BTreeMap<(i32, u64), u64>,
    received: Vec<Body>,
    received_count: u64,
    client_bytes: u64,
    wire_errors: Vec<String>,
    refused_connections: u64,
    misbehaved_at: Option<Instant>,
    ended_at: Option<Instant>,
    had_connection: bool,
    vanished: bool,
    error: Option<ConnectionError>,
}

impl fmt::Debug for HostilePrimary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostilePrimary")
            .field("addr", &self.quic.addr())
            .field("welcomed", &self.welcomed_at.is_some())
            .field("script_left", &self.script)
            .field("queued_bytes", &self.outgoing.pending_bytes())
            .field("path_answers", &self.answers.len())
            .field("answer_counts", &self.answer_counts)
            .field("received", &self.received_count)
            .field("client_bytes", &self.client_bytes)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl HostilePrimary {
    /// A hostile primary at `addr` presenting `cert` that runs `script`
    /// once it welcomed its client. Every quinn random choice and the
    /// session id derive from `seed`.
    pub fn new(
        addr: SocketAddr,
        seed: u64,
        cert: &DevCert,
        script: impl IntoIterator<Item = PrimaryStep>,
    ) -> Self {
        let mut transport = TransportConfig::default();
        // PROTOCOL.md §1: exactly one bidirectional stream, the control stream.
        transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
        transport.max_concurrent_uni_streams(VarInt::from_u32(1024));
        let crypto = Arc::new(cert.quic_server_config(&[ALPN]));
        let server = seeded_server_config(seed, crypto, Arc::new(transport));
        let endpoint = Endpoint::new(
            Arc::new(seeded_endpoint_config(seed)),
            Some(Arc::new(server)),
            true,
            None,
        );
        HostilePrimary {
            quic: QuicDriver::new(addr, endpoint),
            session_id: Self::session_id_for(seed),
            script: script.into_iter().collect(),
            tamper_welcome: None,
            control: None,
            lane: None,
            outgoing: SendQueue::default(),
            inbox: RecordBuffer::default(),
            hello: None,
            welcomed_at: None,
            answers: BTreeMap::new(),
            answer_counts: BTreeMap::new(),
            received: Vec::new(),
            received_count: 0,
            client_bytes: 0,
            wire_errors: Vec::new(),
            refused_connections: 0,
            misbehaved_at: None,
            ended_at: None,
            had_connection: false,
            vanished: false,
            error: None,
        }
    }

    /// Sends the `Welcome` as `tamper` leaves it (a malformed one, say).
    pub fn welcome_with(mut self, tamper: impl Fn(&mut Welcome) + 'static) -> Self {
        self.tamper_welcome = Some(Box::new(tamper));
        self
    }

    /// The session id this primary assigns, derived from `seed` as
    /// [`new`](Self::new) does (for minting path tokens before the node
    /// exists).
    pub fn session_id_for(seed: u64) -> SessionId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&derive_key(seed, "hostile primary session id")[..16]);
        SessionId(id)
    }

    /// The session id this primary assigns in its `Welcome`.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The client's `Hello`, once read.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// When the `Welcome` was queued.
    pub fn welcomed_at(&self) -> Option<Instant> {
        self.welcomed_at
    }

    /// True once every step ran and quinn-proto took every byte.
    pub fn script_done(&self) -> bool {
        self.script.is_empty() && self.outgoing.is_empty()
    }

    /// Steps not run yet.
    pub fn script_left(&self) -> usize {
        self.script.len()
    }

    /// The latest `PathStatus` per path id.
    pub fn answers(&self) -> &BTreeMap<u64, PathAnswer> {
        &self.answers
    }

    /// `PathStatus` messages received, per (state, code).
    pub fn answer_counts(&self) -> &BTreeMap<(i32, u64), u64> {
        &self.answer_counts
    }

    /// Control messages other than `PathStatus` (the first
    /// 10 000 kept, in order).
    pub fn received(&self) -> &[Body] {
        &self.received
    }

    /// How many control messages other than `PathStatus` arrived.
    pub fn received_count(&self) -> u64 {
        self.received_count
    }

    /// Bytes received (and discarded) on the client's lanes.
    pub fn client_bytes(&self) -> u64 {
        self.client_bytes
    }

    /// Bytes from the client this node could not parse (must stay empty).
    pub fn wire_errors(&self) -> &[String] {
        &self.wire_errors
    }

    /// Connections after the first (ignored).
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections
    }

    /// True once a [`PrimaryStep::Mark`] ran.
    pub fn misbehaved(&self) -> bool {
        self.misbehaved_at.is_some()
    }

    /// When the first [`PrimaryStep::Mark`] ran.
    pub fn misbehaved_at(&self) -> Option<Instant> {
        self.misbehaved_at
    }

    /// When the connection was lost (or [vanished](Self::vanished)).
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// True if the connection disappeared without this node seeing why (it
    /// drained inside one datagram's processing, e.g. on a stateless reset,
    /// and the driver dropped it before its `ConnectionLost` was polled).
    pub fn vanished(&self) -> bool {
        self.vanished
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

    /// The reason text of the client's close (application or transport).
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

    fn accept_streams(&mut self, now: Instant, trace: &mut Trace) {
        let Some(conn) = self.quic.connection_mut() else {
            return;
        };
        while let Some(id) = conn.streams().accept(Dir::Bi) {
            if self.control.is_none() {
                self.control = Some(id);
            } else {
                trace.record(now, format_args!("hostile-primary: extra bi stream {id}"));
            }
        }
        let mut lanes = Vec::new();
        while let Some(id) = conn.streams().accept(Dir::Uni) {
            lanes.push(id);
        }
        for id in lanes {
            self.discard(id);
        }
    }

    fn discard(&mut self, id: StreamId) {
        let Some(conn) = self.quic.connection_mut() else {
            return;
        };
        let mut recv = conn.recv_stream(id);
        if let Ok(mut chunks) = recv.read(true) {
            while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                self.client_bytes += chunk.bytes.len() as u64;
            }
            let _ = chunks.finalize();
        }
    }

    fn read_control(&mut self, now: Instant, trace: &mut Trace) {
        let (Some(conn), Some(id)) = (self.quic.connection_mut(), self.control) else {
            return;
        };
        let mut recv = conn.recv_stream(id);
        if let Ok(mut chunks) = recv.read(true) {
            while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                self.inbox.push(&chunk.bytes);
            }
            let _ = chunks.finalize();
        }
        loop {
            let record = match self.inbox.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    self.wire_errors.push(e);
                    self.inbox.clear();
                    break;
                }
            };
            match decode_control(record) {
                Ok(Body::Hello(hello)) if self.hello.is_none() => {
                    trace.record(
                        now,
                        format_args!("hostile-primary: hello (version {})", hello.version),
                    );
                    self.hello = Some(hello);
                    let mut welcome = Welcome {
                        session_id: Bytes::copy_from_slice(&self.session_id.0),
                        version: PROTOCOL_VERSION,
                        features: 0,
                        limits: Some(default_limits()),
                    };
                    if let Some(tamper) = &self.tamper_welcome {
                        tamper(&mut welcome);
                    }
                    self.outgoing
                        .push(id, control_record(Body::Welcome(welcome)));
                    self.welcomed_at = Some(now);
                }
                Ok(Body::PathStatus(s)) => {
                    let answer = self.answers.entry(s.path_id).or_insert(PathAnswer {
                        state: s.state,
                        code: s.error_code,
                        messages: 0,
                    });
                    answer.state = s.state;
                    answer.code = s.error_code;
                    answer.messages += 1;
                    *self
                        .answer_counts
                        .entry((s.state, s.error_code))
                        .or_default() += 1;
                }
                Ok(body) => {
                    self.received_count += 1;
                    if self.received.len() < KEEP_RECEIVED {
                        self.received.push(body);
                    }
                }
                Err(e) => {
                    trace.record(now, format_args!("hostile-primary: bad record: {e}"));
                    self.wire_errors.push(e);
                }
            }
        }
    }

    /// Runs the script's steps as far as they can go now.
    fn run_script(&mut self, now: Instant, trace: &mut Trace) {
        if self.welcomed_at.is_none() || self.ended_at.is_some() {
            return;
        }
        let Some(control) = self.control else { return };
        while let Some(step) = self.script.front() {
            match step {
                PrimaryStep::Control(body) => {
                    self.outgoing.push(control, control_record(body.clone()));
                }
                PrimaryStep::ControlBytes(bytes) => self.outgoing.push(control, bytes.clone()),
                PrimaryStep::Record {
                    stream,
                    offset,
                    payload,
                    fin,
                } => {
                    let record = data_record(*stream, *offset, payload, *fin);
                    if self.lane.is_none() {
                        self.lane = self
                            .quic
                            .connection_mut()
                            .and_then(|c| c.streams().open(Dir::Uni));
                    }
                    let Some(lane) = self.lane else { return };
                    self.outgoing.push(lane, record);
                }
                PrimaryStep::AwaitPathStatus { path, state } => {
                    let reached = self
                        .answers
                        .get(path)
                        .is_some_and(|a| a.state == *state as i32);
                    if !reached {
                        return;
                    }
                }
                PrimaryStep::AwaitClientBytes(n) => {
                    if self.client_bytes < *n {
                        return;
                    }
                }
                PrimaryStep::AwaitReceived(n) => {
                    if self.received_count < *n {
                        return;
                    }
                }
                PrimaryStep::Mark => {
                    trace.record(now, "hostile-primary: misbehaving");
                    self.misbehaved_at.get_or_insert(now);
                }
            }
            self.script.pop_front();
        }
    }
}

impl Node for HostilePrimary {
    fn receive(&mut self, now: Instant, _: SocketAddr, remote: SocketAddr, data: BytesMut) {
        // Only the first connection is served.
        let accept = self.quic.is_empty() && self.ended_at.is_none();
        match self.quic.receive(now, remote, data, accept) {
            Incoming::Ignored | Incoming::Failed(_) => self.refused_connections += 1,
            Incoming::Accepted(_) => self.had_connection = true,
            Incoming::None => {}
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
                Event::Connected => trace.record(now, "hostile-primary: connected"),
                Event::ConnectionLost { reason } => {
                    trace.record(
                        now,
                        format_args!("hostile-primary: connection lost: {reason}"),
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
                    } else {
                        self.discard(id);
                    }
                }
                _ => {}
            }
        }
        self.run_script(now, trace);
        if self.had_connection && self.ended_at.is_none() && self.quic.is_empty() {
            trace.record(now, "hostile-primary: connection vanished (drained unseen)");
            self.vanished = true;
            self.ended_at = Some(now);
        }
        if let Some(conn) = self.quic.connection_mut() {
            self.outgoing.pump(conn, now, trace);
        }
        self.quic.process_endpoint_events();
    }

    fn done(&self) -> bool {
        self.error.is_some() || self.vanished || (self.welcomed_at.is_some() && self.script_done())
    }
}
