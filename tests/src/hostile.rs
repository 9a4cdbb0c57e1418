//! A scripted, misbehaving kwik client built directly on quinn-proto.
//!
//! kwik's own client cannot be made to break the protocol, so to check how a
//! server treats a hostile peer this node speaks the kwik wire by hand: it
//! completes the QUIC handshake with ALPN [`kwik_core::ALPN`], opens the
//! control stream, sends a valid `Hello`, waits for the server's `Welcome`
//! (so the session is active on the server) and then executes one scripted
//! [`Misbehaviour`] and/or a script of [`Step`]s. It records how its
//! connection ended, which is what the tests assert on: a server must close
//! only the offending session, with the code the fault calls for.
//!
//! Messages are encoded and decoded with the prost types kwik-core
//! generates from `proto/*.proto`; the framing (length prefixes, raw lane
//! payloads, the scripted faults) is written out in [`crate::wire`]. A
//! well-behaved run ([`Misbehaviour::None`] with an
//! [`upload`](HostileClient::upload)) proves that this framing matches the
//! server's, so the refusals seen in the misbehaving runs are about the
//! scripted fault and not about a framing slip.
//!
//! With [`join`](HostileClient::join) the client opens with a scripted
//! `Join` instead of the `Hello` (as if it were joining a secondary path),
//! so that token checks of a secondary server can be attacked: forged,
//! expired, replayed or borrowed tokens — and, with a genuine token, a
//! secondary's handling of what its client sends once joined.
//! With [`without_hello`](HostileClient::without_hello) it sends nothing at
//! all on the control stream and runs its script as soon as the QUIC
//! handshake is done (attacks on a server before the kwik handshake).
//!
//! The other hostile nodes are [`HostileSecondary`] (a secondary server
//! that writes what it was not given, see [`crate::hostile_secondary`]) and
//! [`crate::hostile_primary::HostilePrimary`] (a primary that feeds a kwik
//! client what it likes).
//!
//! All of them drive their quinn-proto endpoint through the same
//! [`QuicDriver`] as [`crate::quinn_node`] (see [`crate::quic_driver`]),
//! holding at most one connection, and draw every quinn random choice from
//! a seed (see [`crate::seeding`]).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{Hello, Join, Joined, Welcome};
use kwik_core::proto::data::DataHeader;
use kwik_core::{
    ALPN, Dir as KDir, PROTOCOL_VERSION, PathId, SessionId, Side, StreamId as KStreamId,
};
use prost::Message;
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{
    ConnectionError, Dir, Endpoint, Event, ReadError, StreamEvent, StreamId, TransportConfig,
    VarInt,
};

use crate::certs::DevCert;
use crate::node::{Node, Transmit};
use crate::quic_driver::QuicDriver;
use crate::seeding::{seeded_client_config, seeded_endpoint_config};
use crate::setup::SERVER_NAME;
use crate::trace::Trace;
use crate::wire::{
    RecordBuffer, SendQueue, control_record, decode_control, default_limits, garbage_record,
    length_prefix,
};

pub use crate::hostile_secondary::{
    HostileSecondary, InjectedRecord, Injection, Overshoot, PAST_CREDIT_FILL, PastCreditRecord,
};

/// Payload length an [`Misbehaviour::OversizedFrame`] header claims (at
/// least; more if the server announced a larger frame limit).
pub const OVERSIZED_FRAME_LEN: u64 = (1 << 20) + 1;

/// What the client does once the server has welcomed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Nothing wrong: the client stays connected (apart from an optional
    /// [`upload`](HostileClient::upload) and [`script`](HostileClient::script)).
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

/// One step of a [`HostileClient`] script, run in order once the session is
/// established (after the upload and the [`Misbehaviour`], if any). Bytes
/// are handed to quinn-proto as flow control allows; a step that must wait
/// (no lane credit yet, too few bytes received) holds up the ones after it.
#[derive(Clone)]
pub enum Step {
    /// Bytes for the control stream: one record, a flood of them
    /// ([`crate::wire::control_records`]) or garbage.
    Control(Bytes),
    /// Bytes for the client's lane (data records, see
    /// [`crate::wire::data_record`]), opened on first use.
    Lane(Bytes),
    /// Waits until at least this many bytes arrived on streams the server
    /// opened (its lanes), which this client reads and discards.
    AwaitServerBytes(u64),
    /// Notes the moment the misbehaviour starts
    /// ([`misbehaved_at`](HostileClient::misbehaved_at)).
    Mark,
    /// From now on, opens as many lanes as the server allows (at most
    /// `lanes`) and writes `per_lane` bytes of junk on each as fast as flow
    /// control lets it. Runs in the background; the script goes on.
    FloodLanes {
        /// Most lanes to open.
        lanes: u64,
        /// Junk bytes to write on each.
        per_lane: u64,
    },
    /// Waits this long (virtual time) before the next step, so that a
    /// script can pace its messages.
    Sleep(std::time::Duration),
    /// Once quinn-proto took every queued byte, finishes (QUIC FIN) the
    /// client's lane — opened now if no step wrote to it: an empty lane.
    FinishLane,
    /// Once quinn-proto took every queued byte, finishes the control stream.
    FinishControl,
    /// Asks the server to stop sending (STOP_SENDING, code 0) on every lane
    /// it opened so far.
    StopServerLanes,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Control(b) => write!(f, "Control({} bytes)", b.len()),
            Step::Lane(b) => write!(f, "Lane({} bytes)", b.len()),
            Step::AwaitServerBytes(n) => write!(f, "AwaitServerBytes({n})"),
            Step::Mark => f.write_str("Mark"),
            Step::FloodLanes { lanes, per_lane } => {
                write!(f, "FloodLanes {{ lanes: {lanes}, per_lane: {per_lane} }}")
            }
            Step::Sleep(d) => write!(f, "Sleep({d:?})"),
            Step::FinishLane => f.write_str("FinishLane"),
            Step::FinishControl => f.write_str("FinishControl"),
            Step::StopServerLanes => f.write_str("StopServerLanes"),
        }
    }
}

/// Lanes a [`Step::FloodLanes`] keeps writing to.
#[derive(Debug)]
struct Flood {
    max_lanes: u64,
    per_lane: u64,
    /// Each lane with the junk bytes written to it so far.
    lanes: Vec<(StreamId, u64)>,
    /// Total junk bytes handed to quinn-proto.
    written: u64,
}

/// Junk the lane flood is written from (shared, never copied).
static JUNK: [u8; 64 * 1024] = [0x5a; 64 * 1024];

impl Flood {
    /// Opens what lanes it may and fills them until quinn-proto refuses.
    fn pump(&mut self, conn: &mut quinn_proto::Connection) {
        while (self.lanes.len() as u64) < self.max_lanes {
            match conn.streams().open(Dir::Uni) {
                Some(id) => self.lanes.push((id, 0)),
                None => break,
            }
        }
        let junk = Bytes::from_static(&JUNK);
        for (id, sent) in &mut self.lanes {
            while *sent < self.per_lane {
                let n = (self.per_lane - *sent).min(junk.len() as u64) as usize;
                match conn.send_stream(*id).write_chunks(&mut [junk.slice(..n)]) {
                    Ok(w) if w.bytes > 0 => {
                        *sent += w.bytes as u64;
                        self.written += w.bytes as u64;
                    }
                    _ => break,
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
    /// A TLS configuration shared with other clients (and its tickets),
    /// used instead of `tls`.
    shared_tls: Option<Arc<QuicClientConfig>>,
    /// Send the first message in 0-RTT if a ticket allows it.
    early: bool,
    /// The first message went out in 0-RTT.
    sent_early: bool,
    upload: Option<Bytes>,
    /// Sent instead of the `Hello`, if set.
    join: Option<Join>,
    /// Send neither `Hello` nor `Join`.
    no_hello: bool,
    script: VecDeque<Step>,
    scripted: bool,
    /// A [`Step::Sleep`] in progress: the script resumes at this instant.
    sleep_until: Option<Instant>,
    flood: Option<Flood>,
    quic: QuicDriver,
    control: Option<StreamId>,
    lane: Option<StreamId>,
    outgoing: SendQueue,
    inbox: RecordBuffer,
    welcome: Option<Welcome>,
    joined: Option<Joined>,
    received: Vec<Body>,
    wire_errors: Vec<String>,
    server_bytes: u64,
    /// Streams the server opened (its lanes).
    server_lanes: Vec<StreamId>,
    acted: bool,
    connected_at: Option<Instant>,
    welcomed_at: Option<Instant>,
    joined_at: Option<Instant>,
    misbehaved_at: Option<Instant>,
    ended_at: Option<Instant>,
    vanished: bool,
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
            .field("no_hello", &self.no_hello)
            .field("script_left", &self.script)
            .field("queued_bytes", &self.outgoing.pending_bytes())
            .field("server_bytes", &self.server_bytes)
            .field("flood_bytes", &self.flood_bytes())
            .field("vanished", &self.vanished)
            .field("error", &self.error)
            .finish_non_exhaustive()
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
            shared_tls: None,
            early: false,
            sent_early: false,
            upload: None,
            join: None,
            no_hello: false,
            script: VecDeque::new(),
            scripted: false,
            sleep_until: None,
            flood: None,
            quic: QuicDriver::new(addr, endpoint),
            control: None,
            lane: None,
            outgoing: SendQueue::default(),
            inbox: RecordBuffer::default(),
            welcome: None,
            joined: None,
            received: Vec::new(),
            wire_errors: Vec::new(),
            server_bytes: 0,
            server_lanes: Vec::new(),
            acted: false,
            connected_at: None,
            welcomed_at: None,
            joined_at: None,
            misbehaved_at: None,
            ended_at: None,
            vanished: false,
            error: None,
        }
    }

    /// A client that behaves ([`Misbehaviour::None`]) apart from `script`.
    pub fn scripted(
        addr: SocketAddr,
        server: SocketAddr,
        seed: u64,
        cert: &DevCert,
        script: impl IntoIterator<Item = Step>,
    ) -> Self {
        Self::new(addr, server, seed, cert, Misbehaviour::None).script(script)
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
    /// [`close_code`](Self::close_code)). The misbehaviour, the upload and
    /// the script, if any, follow the `Joined` as they would follow a
    /// `Welcome`.
    pub fn join(mut self, join: Join) -> Self {
        self.join = Some(join);
        self
    }

    /// Dials with `crypto` — shared with other clients, so that a ticket one
    /// of them received lets this one resume — and sends its `Hello` or
    /// `Join` in 0-RTT if the ticket allows it (PROTOCOL.md §12).
    pub fn early(mut self, crypto: Arc<QuicClientConfig>) -> Self {
        self.shared_tls = Some(crypto);
        self.early = true;
        self
    }

    /// Dials with `crypto`, shared with other clients (their tickets are
    /// this one's), without 0-RTT.
    pub fn sharing(mut self, crypto: Arc<QuicClientConfig>) -> Self {
        self.shared_tls = Some(crypto);
        self
    }

    /// Whether the first message went out in 0-RTT.
    pub fn sent_early(&self) -> bool {
        self.sent_early
    }

    /// Sends no `Hello` (nor `Join`): the control stream is opened but stays
    /// silent, and the script runs as soon as the QUIC handshake completed.
    pub fn without_hello(mut self) -> Self {
        self.no_hello = true;
        self
    }

    /// Steps to run, in order, once the session is established (see
    /// [`Step`]). The node is [done](Node::done) once every step ran and
    /// quinn-proto took every byte, or once the connection ended.
    pub fn script(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.script.extend(steps);
        self.scripted = true;
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

    /// True once the script may run: welcomed, joined, or (without a
    /// `Hello`) connected.
    pub fn established(&self) -> bool {
        self.welcomed() || self.joined() || (self.no_hello && self.connected_at.is_some())
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

    /// True once the scripted misbehaviour (or a [`Step::Mark`]) was put on
    /// the wire.
    pub fn misbehaved(&self) -> bool {
        self.misbehaved_at.is_some()
    }

    /// True once every step of the script ran and quinn-proto took every
    /// byte it queued (a lane flood may still be going on).
    pub fn script_done(&self) -> bool {
        self.script.is_empty() && self.outgoing.is_empty()
    }

    /// Steps not run yet.
    pub fn script_left(&self) -> usize {
        self.script.len()
    }

    /// Bytes queued and not yet taken by quinn-proto.
    pub fn queued_bytes(&self) -> u64 {
        self.outgoing.pending_bytes()
    }

    /// Bytes received (and discarded) on streams the server opened.
    pub fn server_bytes(&self) -> u64 {
        self.server_bytes
    }

    /// Lanes a [`Step::FloodLanes`] managed to open.
    pub fn flood_lanes(&self) -> u64 {
        self.flood.as_ref().map_or(0, |f| f.lanes.len() as u64)
    }

    /// Junk bytes a [`Step::FloodLanes`] handed to quinn-proto.
    pub fn flood_bytes(&self) -> u64 {
        self.flood.as_ref().map_or(0, |f| f.written)
    }

    /// When the QUIC handshake completed.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// When the `Welcome` arrived.
    pub fn welcomed_at(&self) -> Option<Instant> {
        self.welcomed_at
    }

    /// When the misbehaviour was written (or the first [`Step::Mark`] ran).
    pub fn misbehaved_at(&self) -> Option<Instant> {
        self.misbehaved_at
    }

    /// When the connection was lost (or [vanished](Self::vanished)).
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// True if the connection disappeared without this node seeing why: it
    /// drained inside one datagram's processing (a stateless reset, say)
    /// and the driver dropped it before its `ConnectionLost` was polled.
    /// [`connection_error`](Self::connection_error) is `None` then.
    pub fn vanished(&self) -> bool {
        self.vanished
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
        let crypto = match self.shared_tls.clone() {
            Some(shared) => shared,
            None => {
                Arc::new(QuicClientConfig::try_from(tls).expect("ring provider has the QUIC suite"))
            }
        };
        let config = seeded_client_config(self.seed, crypto, Arc::new(TransportConfig::default()));
        match self.quic.connect(now, config, self.server, SERVER_NAME) {
            Ok(_) => {
                trace.record(
                    now,
                    format_args!("hostile[{}] connecting", self.misbehaviour),
                );
            }
            Err(e) => panic!("hostile client cannot dial: {e}"),
        }
        if self.early && self.quic.connection_mut().is_some_and(|c| c.has_0rtt()) {
            trace.record(now, "hostile: first message in 0-RTT");
            self.sent_early = true;
            self.send_hello(now, trace);
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
        if self.no_hello {
            trace.record(now, "hostile: control stream open, no Hello");
            return;
        }
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
        self.outgoing.push(id, control_record(Body::Hello(hello)));
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
                    Ok(Some(chunk)) => self.inbox.push(&chunk.bytes),
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
                    self.inbox.clear();
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

    /// Server-opened streams carry nothing this client wants: read and
    /// discard them (counting the bytes), so that the server's data keeps
    /// flowing.
    fn discard(&mut self, id: StreamId) {
        let Some(conn) = self.quic.connection_mut() else {
            return;
        };
        let mut recv = conn.recv_stream(id);
        if let Ok(mut chunks) = recv.read(true) {
            while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                self.server_bytes += chunk.bytes.len() as u64;
            }
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
        if self.no_hello {
            // Nothing to announce limits: straight to the script.
            self.acted = self.connected_at.is_some();
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
                self.outgoing.push(control, garbage_record());
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

    /// Runs the script's steps as far as they can go now.
    fn run_script(&mut self, now: Instant, trace: &mut Trace) {
        if !self.acted || self.ended_at.is_some() || !self.established() {
            return;
        }
        while let Some(step) = self.script.front() {
            match step {
                Step::Control(bytes) => {
                    let Some(control) = self.control else { return };
                    self.outgoing.push(control, bytes.clone());
                }
                Step::Lane(bytes) => {
                    let bytes = bytes.clone();
                    let Some(lane) = self.lane() else { return };
                    self.outgoing.push(lane, bytes);
                }
                Step::AwaitServerBytes(n) => {
                    if self.server_bytes < *n {
                        return;
                    }
                }
                Step::Mark => {
                    trace.record(now, "hostile: misbehaving (scripted)");
                    self.misbehaved_at.get_or_insert(now);
                }
                Step::Sleep(d) => {
                    let until = *self.sleep_until.get_or_insert(now + *d);
                    if now < until {
                        return;
                    }
                    self.sleep_until = None;
                }
                Step::FinishLane | Step::FinishControl => {
                    if !self.outgoing.is_empty() {
                        return;
                    }
                    let finish_lane = matches!(step, Step::FinishLane);
                    let id = if finish_lane {
                        self.lane()
                    } else {
                        self.control
                    };
                    let (Some(id), Some(conn)) = (id, self.quic.connection_mut()) else {
                        return;
                    };
                    let result = conn.send_stream(id).finish();
                    trace.record(now, format_args!("hostile: finishing {id}: {result:?}"));
                }
                Step::StopServerLanes => {
                    let Some(conn) = self.quic.connection_mut() else {
                        return;
                    };
                    for id in &self.server_lanes {
                        let _ = conn.recv_stream(*id).stop(VarInt::from_u32(0));
                    }
                    trace.record(now, "hostile: stopping the server's lanes");
                }
                Step::FloodLanes { lanes, per_lane } => {
                    trace.record(now, format_args!("hostile: flooding up to {lanes} lanes"));
                    self.flood = Some(Flood {
                        max_lanes: *lanes,
                        per_lane: *per_lane,
                        lanes: Vec::new(),
                        written: 0,
                    });
                }
            }
            self.script.pop_front();
        }
    }
}

impl Node for HostileClient {
    fn receive(&mut self, now: Instant, _: SocketAddr, remote: SocketAddr, data: bytes::BytesMut) {
        self.quic.receive(now, remote, data, false);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.quic.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.quic.poll_transmit(now, buf)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        match (self.quic.poll_timeout(), self.sleep_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
                    let rejected = self.sent_early
                        && !self
                            .quic
                            .connection_mut()
                            .is_some_and(|c| c.accepted_0rtt());
                    if rejected {
                        // quinn-proto forgot the 0-RTT streams: start over.
                        trace.record(now, "hostile: 0-RTT rejected");
                        self.outgoing = SendQueue::default();
                        self.control = None;
                    }
                    if self.control.is_none() {
                        self.send_hello(now, trace);
                    }
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
                        self.server_lanes.push(id);
                        self.discard(id);
                    }
                }
                _ => {}
            }
        }
        if self.connected_at.is_some() && self.ended_at.is_none() && self.quic.is_empty() {
            trace.record(now, "hostile: connection vanished (drained unseen)");
            self.vanished = true;
            self.ended_at = Some(now);
        }
        self.act(now, trace);
        self.run_script(now, trace);
        if let Some(conn) = self.quic.connection_mut() {
            self.outgoing.pump(conn, now, trace);
            if let Some(flood) = &mut self.flood
                && self.error.is_none()
            {
                flood.pump(conn);
            }
        }
        self.quic.process_endpoint_events();
    }

    fn done(&self) -> bool {
        if self.error.is_some() || self.vanished {
            return true;
        }
        if self.scripted {
            return self.established()
                && self.acted
                && self.script_done()
                && (self.upload.is_none() || self.upload_confirmed());
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
