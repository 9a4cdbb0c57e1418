//! One kwik session: the handshake, the logical streams, and — for
//! multi-server sessions — its paths.
//!
//! A session plays one of three roles. A **client** owns the primary
//! connection (path 0) and one connection per secondary path it joined; it
//! reassembles every logical stream from all of them. A **primary** server
//! owns its connection to the client, decides which paths exist and who
//! writes which ranges, and keeps the ledger of what the client
//! acknowledged. A **secondary** server owns the one connection the client
//! joined with a path token and writes the ranges it is given.
//!
//! The endpoint drives a session in one step, [`Session::drive`]: digest what
//! quinn-proto reported on every connection, fire kwik's own timers, then send
//! what is due. Application calls come through [`crate::view`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{Dir as QDir, StreamEvent, StreamId as QStreamId, VarInt};

use crate::codec::encode_data_header;
use crate::config::{PROTOCOL_VERSION, SUPPORTED_FEATURES, TransportConfig};
use crate::conn::Conn;
use crate::delegation::{Delegation, DelegationId, Ledger};
use crate::error::{
    CloseReason, ErrorCode, OpenError, ReadError, StreamError, Violation, WriteError,
};
use crate::event::Event;
use crate::ids::{Dir, SessionHandle, SessionId, Side, StreamId};
use crate::lanes::LaneBlocked;
use crate::paths::{PathError, PathFailure, PathId, PathInfo, PathPolicy, PathState};
use crate::proto::common::Limits;
use crate::proto::control::{self as msg, Hello, Welcome, control_message::Body};
use crate::streams::{SendState, Streams};
use crate::token::{self, TokenClaims, TokenKey, TokenVerifier};
use crate::transfer::{Job, PathView, SharedResource, Transfer, TransferConfig, TransferId};

/// How long the client batches acknowledgements of delegated streams.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// Bytes a control record may add around a relayed payload.
const RELAY_OVERHEAD: usize = 32;

/// Most bytes a feeder job reads from its resource per write attempt.
const FEED_CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// QUIC or kwik handshake under way.
    Handshaking,
    /// Handshake done; streams may flow.
    Active,
    /// Closed; waiting for quinn-proto to drain.
    Closed,
}

/// Which part a session plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialled the primary.
    Client,
    /// A server the client dialled itself.
    Primary,
    /// A server the client joined with a path token.
    Secondary,
    /// A server session before the client's first message.
    Undecided,
}

/// Something the endpoint must do for a session.
#[derive(Debug)]
pub(crate) enum Request {
    /// Dial a secondary server for `path`.
    Dial {
        path: PathId,
        address: SocketAddr,
        server_name: String,
    },
}

/// What the endpoint provides while a session runs.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    /// Wall-clock time (since the Unix epoch) matching `now`.
    pub unix_now: Duration,
    pub events: &'a mut VecDeque<Event>,
    /// Mints session ids (server side).
    pub mint_id: &'a mut dyn FnMut() -> SessionId,
    pub tokens: &'a mut TokenVerifier,
    /// Keys this server accepts path tokens from.
    pub trusted: &'a [TokenKey],
    /// Secondary: resources served automatically, by descriptor.
    pub resources: &'a BTreeMap<Bytes, SharedResource>,
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Logical-stream payload bytes written by the application.
    pub bytes_sent: u64,
    /// Logical-stream payload bytes received, from every path.
    pub bytes_received: u64,
    /// Lanes (real QUIC streams) this side opened on its sending connection.
    pub lanes_opened: u64,
    /// Payload bytes buffered for the application right now.
    pub buffered: u64,
    /// Live logical streams.
    pub open_streams: u64,
    /// Smoothed RTT of the primary connection, in microseconds.
    pub rtt_us: u64,
    /// UDP datagrams sent on the primary connection.
    pub datagrams_sent: u64,
    /// Packets of the primary connection declared lost.
    pub lost_packets: u64,
    /// Congestion window of the primary connection, in bytes.
    pub cwnd: u64,
}

/// Primary-side settings for minting paths.
#[derive(Debug, Clone)]
pub(crate) struct PrimarySettings {
    pub token_key: Option<TokenKey>,
    pub token_lifetime: Duration,
    pub add_path_timeout: Duration,
    pub auto_reassign: bool,
}

/// Client-side state of a secondary path.
#[derive(Debug)]
struct ClientPath {
    expiry_unix: u64,
    token: Bytes,
    /// Ranges forwarded to this path and not known to have arrived.
    owed: Vec<(StreamId, Range<u64>)>,
    /// Removal requested: close once `owed` arrived, or at this deadline.
    closing: Option<Instant>,
}

pub(crate) struct Session {
    pub handle: SessionHandle,
    pub side: Side,
    pub role: Role,
    pub phase: Phase,
    pub id: Option<SessionId>,
    pub close_reason: Option<CloseReason>,
    pub conns: BTreeMap<PathId, Conn>,
    pub deadline: Option<Instant>,
    pub requests: Vec<Request>,
    /// Next connection to ask for a transmit (round-robin).
    pub tx_cursor: usize,
    /// Queued for driving by the endpoint.
    pub queued_drive: bool,
    /// Queued for sending by the endpoint.
    pub queued_send: bool,
    transport: TransportConfig,
    server_features: u64,
    send_frame_limit: u64,
    peer_max_control: u64,
    pub(crate) streams: Streams,
    stats: SessionStats,
    paths: BTreeMap<PathId, PathInfo>,
    client_paths: BTreeMap<PathId, ClientPath>,
    policy: PathPolicy,
    primary: PrimarySettings,
    ledger: Ledger,
    next_path: u64,
    /// Primary: answer deadlines of AddPath requests.
    add_deadlines: BTreeMap<PathId, Instant>,
    /// Secondary: the path id the primary assigned.
    joined_path: PathId,
    ack_due: Option<Instant>,
    dial_failures: Vec<(PathId, String)>,
    transfers: BTreeMap<TransferId, Transfer>,
    next_transfer: u64,
    /// Ranges this side writes from a resource (own share, served delegations).
    jobs: Vec<Job>,
}

fn violation(reason: impl Into<String>) -> Violation {
    Violation::new(ErrorCode::InvalidFrame, reason)
}

fn wire_state(state: PathState) -> msg::PathState {
    match state {
        PathState::Connecting => msg::PathState::Connecting,
        PathState::Active => msg::PathState::Active,
        PathState::Degraded => msg::PathState::Degraded,
        PathState::Dead => msg::PathState::Dead,
        PathState::Closed => msg::PathState::Closed,
        PathState::Failed => msg::PathState::Failed,
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        handle: SessionHandle,
        side: Side,
        conn: Conn,
        remote: SocketAddr,
        server_name: &str,
        transport: TransportConfig,
        server_features: u64,
        policy: PathPolicy,
        primary: PrimarySettings,
        now: Instant,
    ) -> Self {
        let streams = Streams::new(
            handle,
            side,
            transport.stream_window,
            transport.max_bidi_streams,
            transport.max_uni_streams,
        );
        let mut primary_path = PathInfo::new(PathId::PRIMARY, remote, server_name, now);
        primary_path.primary = true;
        Self {
            handle,
            side,
            role: match side {
                Side::Client => Role::Client,
                Side::Server => Role::Undecided,
            },
            phase: Phase::Handshaking,
            id: None,
            close_reason: None,
            conns: BTreeMap::from([(PathId::PRIMARY, conn)]),
            deadline: None,
            requests: Vec::new(),
            tx_cursor: 0,
            queued_drive: false,
            queued_send: false,
            send_frame_limit: transport.max_frame_payload,
            peer_max_control: 64,
            transport,
            server_features,
            streams,
            stats: SessionStats::default(),
            paths: BTreeMap::from([(PathId::PRIMARY, primary_path)]),
            client_paths: BTreeMap::new(),
            policy,
            primary,
            ledger: Ledger::default(),
            next_path: 1,
            add_deadlines: BTreeMap::new(),
            joined_path: PathId::PRIMARY,
            ack_due: None,
            dial_failures: Vec::new(),
            transfers: BTreeMap::new(),
            next_transfer: 0,
            jobs: Vec::new(),
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

    /// The connection this side sends its data and control on.
    fn main_conn(&mut self) -> &mut Conn {
        self.conns
            .get_mut(&PathId::PRIMARY)
            .expect("the primary connection lives as long as the session")
    }

    /// Adds the connection of a secondary path (client side).
    pub(crate) fn attach(&mut self, conn: Conn) {
        self.conns.insert(conn.path, conn);
    }

    /// Removes a drained connection; true when none is left.
    pub(crate) fn detach(&mut self, path: PathId) -> bool {
        if path == PathId::PRIMARY {
            // Kept (inert) for the views until the session goes: its stats
            // and address stay readable while secondaries drain.
            if let Some(conn) = self.conns.get_mut(&path) {
                conn.drained = true;
                conn.closed = true;
            }
        } else {
            self.conns.remove(&path);
        }
        self.conns.values().all(|c| c.drained)
    }

    // ----- driving -----

    /// Digests everything quinn-proto reported, fires timers, sends what is due.
    pub(crate) fn drive(&mut self, ctx: &mut Ctx<'_>) {
        for (path, reason) in std::mem::take(&mut self.dial_failures) {
            let failure = PathFailure {
                code: ErrorCode::PathDead,
                reason,
            };
            self.set_path_state(path, PathState::Failed, Some(failure), ctx);
        }
        for i in 0..self.conns.len() {
            let Some(&path) = self.conns.keys().nth(i) else {
                break;
            };
            while let Some(event) = self.conns.get_mut(&path).and_then(|c| c.quic.poll()) {
                if let Err(v) = self.on_quinn_event(path, event, ctx) {
                    self.fail_path(path, v, ctx);
                }
            }
        }
        self.on_timers(ctx);
        self.run_transfers(ctx);
        self.pump_jobs();
        self.flush(ctx);
        // The endpoint refreshes the deadline once it settled the
        // connections' endpoint events.
    }

    /// Recomputes the next deadline after the connections changed.
    pub(crate) fn refresh_deadline(&mut self) {
        self.update_deadline();
    }

    fn update_deadline(&mut self) {
        let quic = self
            .conns
            .values_mut()
            .filter_map(|c| c.quic.poll_timeout())
            .min();
        let kwik = self.kwik_deadline();
        self.deadline = match (quic, kwik) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The earliest of kwik's own timers.
    fn kwik_deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        let mut next = self.ack_due;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for d in self.add_deadlines.values() {
            consider(*d);
        }
        for (path, conn) in &self.conns {
            if *path == PathId::PRIMARY || !conn.joined || conn.closed {
                continue;
            }
            let dead_after = self.policy.dead_after(conn.known_base_rtt());
            if self
                .paths
                .get(path)
                .is_some_and(|p| p.state == PathState::Active)
            {
                consider(conn.last_rx + self.policy.degraded_after(dead_after));
            }
            consider(conn.last_rx + dead_after);
        }
        for cp in self.client_paths.values() {
            if let Some(t) = cp.closing {
                consider(t);
            }
        }
        next
    }

    fn on_quinn_event(
        &mut self,
        path: PathId,
        event: quinn_proto::Event,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        use quinn_proto::Event as E;
        match event {
            E::Connected => {
                if self.side == Side::Client {
                    self.on_connected(path)?;
                }
            }
            E::ConnectionLost { reason } => {
                self.on_conn_lost(path, CloseReason::from_quinn(reason), ctx)
            }
            E::Stream(ev) => self.on_stream_event(path, ev, ctx)?,
            E::HandshakeDataReady | E::DatagramReceived | E::DatagramsUnblocked => {}
        }
        Ok(())
    }

    /// Client: the QUIC handshake of `path` completed; open its control stream.
    fn on_connected(&mut self, path: PathId) -> Result<(), Violation> {
        let first = if path == PathId::PRIMARY {
            Body::Hello(Hello {
                version: PROTOCOL_VERSION,
                features: SUPPORTED_FEATURES,
                required_features: self.transport.required_features,
                limits: Some(self.limits()),
            })
        } else {
            let Some(ticket) = self.client_paths.get(&path) else {
                return Ok(());
            };
            Body::Join(msg::Join {
                session_id: Bytes::copy_from_slice(&self.id.expect("active").0),
                path_id: path.0,
                expiry_unix: ticket.expiry_unix,
                token: ticket.token.clone(),
                limits: Some(self.limits()),
            })
        };
        let conn = self.conns.get_mut(&path).expect("event source");
        conn.open_control()?;
        conn.send(first);
        Ok(())
    }

    fn lanes_readable(&self, path: PathId) -> bool {
        self.phase == Phase::Active && self.conns.get(&path).is_some_and(|c| c.joined)
    }

    fn on_stream_event(
        &mut self,
        path: PathId,
        ev: StreamEvent,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let conn = self.conns.get_mut(&path).expect("event source");
        match ev {
            StreamEvent::Opened { .. } => {
                let new_control = conn.accept_streams(self.side == Side::Server)?;
                if new_control {
                    self.read_control(path, ctx)?;
                }
                self.read_all_lanes(path, ctx)?;
            }
            StreamEvent::Readable { id } => {
                if conn.is_control(id) {
                    self.read_control(path, ctx)?;
                } else if conn.is_lane(id) && self.lanes_readable(path) {
                    self.read_lane(path, id, ctx)?;
                }
            }
            StreamEvent::Writable { id } => {
                if conn.is_control(id) {
                    conn.flush_control();
                } else {
                    let woken = conn.lanes.on_writable(&mut conn.quic, id);
                    self.wake_writers(woken, ctx);
                }
            }
            StreamEvent::Available { dir: QDir::Uni } => {
                let woken = conn.lanes.on_lane_available();
                self.wake_writers(woken, ctx);
            }
            StreamEvent::Stopped { id, .. } => {
                return Err(violation(format!("peer stopped QUIC stream {id}")));
            }
            StreamEvent::Finished { .. } | StreamEvent::Available { dir: QDir::Bi } => {}
        }
        Ok(())
    }

    fn read_all_lanes(&mut self, path: PathId, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        if !self.lanes_readable(path) {
            return Ok(());
        }
        let lanes = self
            .conns
            .get(&path)
            .map(Conn::lane_ids)
            .unwrap_or_default();
        for lane in lanes {
            self.read_lane(path, lane, ctx)?;
        }
        Ok(())
    }

    fn read_lane(
        &mut self,
        path: PathId,
        lane: QStreamId,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let max_payload = self.transport.max_frame_payload;
        let Self {
            conns,
            streams,
            stats,
            ..
        } = self;
        let Some(conn) = conns.get_mut(&path) else {
            return Ok(());
        };
        let events = &mut *ctx.events;
        conn.read_lane(lane, max_payload, &mut |piece| {
            stats.bytes_received += piece.data.len() as u64;
            streams.on_data(piece, path, events)
        })?;
        if self.ack_due.is_none() && self.streams.acks_pending() {
            self.ack_due = Some(ctx.now + ACK_DELAY);
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

    fn read_control(&mut self, path: PathId, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let Some(conn) = self.conns.get_mut(&path) else {
            return Ok(());
        };
        let bodies = conn.read_control()?;
        for body in bodies {
            self.on_control(path, body, ctx)?;
            if self.phase == Phase::Closed {
                break;
            }
        }
        Ok(())
    }

    fn on_control(&mut self, path: PathId, body: Body, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        match self.role {
            Role::Undecided => match body {
                Body::Hello(hello) => self.on_hello(hello, ctx),
                Body::Join(join) => self.on_join(join, ctx),
                _ => Err(violation("control message before the handshake completed")),
            },
            Role::Client if path != PathId::PRIMARY => match body {
                Body::Joined(_) if !self.conns[&path].joined => self.on_joined(path, ctx),
                _ => Err(violation("unexpected message from a secondary server")),
            },
            Role::Client if self.phase == Phase::Handshaking => match body {
                Body::Welcome(welcome) => self.on_welcome(welcome, ctx),
                _ => Err(violation("control message before the handshake completed")),
            },
            Role::Client => match body {
                Body::AddPath(m) => self.on_add_path(m, ctx),
                Body::RemovePath(m) => {
                    self.begin_remove(PathId(m.path_id), ctx.now);
                    Ok(())
                }
                Body::Delegate(m) => self.forward_delegate(m, ctx),
                Body::RawRelay(m) => {
                    self.forward_raw(PathId(m.path_id), m.payload);
                    Ok(())
                }
                body => self.stream_control(body, ctx),
            },
            Role::Primary => match body {
                Body::PathStatus(m) => {
                    self.on_path_status(m, ctx);
                    Ok(())
                }
                Body::Ack(m) => {
                    let ranges: Vec<Range<u64>> = m.ranges.iter().map(|r| r.start..r.end).collect();
                    self.ledger
                        .on_ack(StreamId(m.stream_id), m.contiguous, &ranges);
                    Ok(())
                }
                body => self.stream_control(body, ctx),
            },
            Role::Secondary => match body {
                Body::Delegate(m) => {
                    self.on_delegated(m, ctx);
                    Ok(())
                }
                Body::Raw(m) => {
                    ctx.events.push_back(Event::RawReceived {
                        session: self.handle,
                        payload: m.payload,
                    });
                    Ok(())
                }
                body => self.stream_control(body, ctx),
            },
        }
    }

    fn stream_control(&mut self, body: Body, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        if let Body::StreamComplete(m) = &body
            && self.role == Role::Primary
        {
            // The client has every byte: nothing delegated on it is owed.
            self.ledger.stream_complete(StreamId(m.stream_id));
        }
        let mut released = Vec::new();
        self.streams.on_control(body, ctx.events, &mut released)?;
        let conn = self.main_conn();
        for lane in released {
            conn.lanes.release(lane);
        }
        Ok(())
    }

    // ----- handshakes -----

    fn on_hello(&mut self, hello: Hello, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let limits = negotiate(&hello, self.server_features)?;
        let id = (ctx.mint_id)();
        let welcome = Body::Welcome(Welcome {
            session_id: Bytes::copy_from_slice(&id.0),
            version: PROTOCOL_VERSION,
            features: hello.features & self.server_features,
            limits: Some(self.limits()),
        });
        self.main_conn().send(welcome);
        self.role = Role::Primary;
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
            .ok_or_else(|| violation("session id is not 16 bytes"))?;
        let limits = welcome
            .limits
            .ok_or_else(|| violation("welcome without limits"))?;
        self.activate(id, limits, ctx)
    }

    fn on_join(&mut self, join: msg::Join, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        if ctx.trusted.is_empty() {
            return Err(Violation::new(
                ErrorCode::AuthFailed,
                "this server accepts no paths",
            ));
        }
        let session_id = SessionId::from_slice(&join.session_id)
            .ok_or_else(|| Violation::new(ErrorCode::AuthFailed, "session id is not 16 bytes"))?;
        // Reject a malformed Join before the token is spent on it.
        let limits = join
            .limits
            .ok_or_else(|| violation("join without limits"))?;
        check_limits(&limits)?;
        let claims = TokenClaims {
            session_id,
            path_id: join.path_id,
            expiry_unix: join.expiry_unix,
        };
        ctx.tokens
            .verify(ctx.trusted, &claims, &join.token, ctx.unix_now)
            .map_err(|r| Violation::new(ErrorCode::AuthFailed, r.reason()))?;
        self.role = Role::Secondary;
        self.joined_path = PathId(join.path_id);
        self.streams.set_secondary();
        let joined = Body::Joined(msg::Joined {
            limits: Some(self.limits()),
        });
        self.main_conn().send(joined);
        self.activate(session_id, limits, ctx)?;
        ctx.events.push_back(Event::PathJoined {
            session: self.handle,
            id: session_id,
            path: self.joined_path,
        });
        Ok(())
    }

    fn activate(
        &mut self,
        id: SessionId,
        peer: Limits,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        check_limits(&peer)?;
        self.send_frame_limit = self.transport.max_frame_payload.min(peer.max_frame_payload);
        self.peer_max_control = peer.max_control_message;
        self.streams.set_peer_limits(
            peer.stream_window,
            peer.max_bidi_streams,
            peer.max_uni_streams,
        );
        self.id = Some(id);
        self.phase = Phase::Active;
        self.main_conn().joined = true;
        let now = ctx.now;
        if let Some(p) = self.paths.get_mut(&PathId::PRIMARY) {
            p.set_state(PathState::Active, now);
        }
        if self.role != Role::Secondary {
            ctx.events.push_back(Event::SessionEstablished {
                session: self.handle,
                id,
            });
        }
        self.read_all_lanes(PathId::PRIMARY, ctx)
    }

    /// Client: a secondary accepted the token.
    fn on_joined(&mut self, path: PathId, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        self.conns.get_mut(&path).expect("event source").joined = true;
        self.set_path_state(path, PathState::Active, None, ctx);
        self.read_all_lanes(path, ctx)
    }

    // ----- paths: client side -----

    fn on_add_path(&mut self, m: msg::AddPath, ctx: &mut Ctx<'_>) -> Result<(), Violation> {
        let path = PathId(m.path_id);
        if path == PathId::PRIMARY || self.paths.contains_key(&path) {
            return Err(violation(format!("AddPath reuses {path}")));
        }
        let address: Option<SocketAddr> = m.address.parse().ok();
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        self.paths.insert(
            path,
            PathInfo::new(
                path,
                address.unwrap_or(unspecified),
                &m.server_name,
                ctx.now,
            ),
        );
        let refusal = match address {
            None => Some((
                ErrorCode::InvalidFrame,
                format!("bad address {:?}", m.address),
            )),
            Some(a) if !self.policy.permits(a, &m.server_name) => Some((
                ErrorCode::Refused,
                format!(
                    "{a} ({}) is not allowed by the client's path policy",
                    m.server_name
                ),
            )),
            Some(a) => {
                let live: Vec<&PathInfo> = self
                    .paths
                    .values()
                    .filter(|p| !p.primary && p.id != path && !p.state.is_final())
                    .collect();
                if live.len() >= self.policy.max_paths {
                    Some((
                        ErrorCode::Refused,
                        format!("path limit of {} reached", self.policy.max_paths),
                    ))
                } else if live.iter().any(|p| p.address == a)
                    || self.paths[&PathId::PRIMARY].address == a
                {
                    Some((ErrorCode::Refused, format!("a path to {a} exists already")))
                } else {
                    None
                }
            }
        };
        if let Some((code, reason)) = refusal {
            self.set_path_state(
                path,
                PathState::Failed,
                Some(PathFailure { code, reason }),
                ctx,
            );
            return Ok(());
        }
        self.client_paths.insert(
            path,
            ClientPath {
                expiry_unix: m.expiry_unix,
                token: m.token,
                owed: Vec::new(),
                closing: None,
            },
        );
        self.requests.push(Request::Dial {
            path,
            address: address.expect("checked"),
            server_name: m.server_name,
        });
        Ok(())
    }

    /// Client: the endpoint could not start a connection for `path`; the
    /// failure is reported on the next drive.
    pub(crate) fn note_dial_failure(&mut self, path: PathId, reason: String) {
        self.dial_failures.push((path, reason));
    }

    /// Records a path's new state (both roles), tells the primary (client),
    /// emits the event, and settles what the path owed.
    fn set_path_state(
        &mut self,
        path: PathId,
        state: PathState,
        failure: Option<PathFailure>,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(info) = self.paths.get_mut(&path) else {
            return;
        };
        if !info.set_state(state, ctx.now) {
            return;
        }
        if failure.is_some() {
            info.failure = failure.clone();
        }
        let session = self.handle;
        let event = match state {
            PathState::Active if !info.history.iter().any(|(_, s)| *s == PathState::Degraded) => {
                Some(Event::PathAdded { session, path })
            }
            PathState::Failed => Some(Event::PathFailed {
                session,
                path,
                failure: failure.clone().unwrap_or(PathFailure {
                    code: ErrorCode::PathDead,
                    reason: "failed".into(),
                }),
            }),
            PathState::Dead => Some(Event::PathDead {
                session,
                path,
                failure: failure.clone().unwrap_or(PathFailure {
                    code: ErrorCode::PathDead,
                    reason: "dead".into(),
                }),
            }),
            PathState::Closed => Some(Event::PathClosed { session, path }),
            _ => None,
        };
        ctx.events.extend(event);
        if self.role == Role::Client {
            if state.is_final() {
                // The primary must know what arrived before it learns what is lost.
                self.send_acks();
                self.client_paths.remove(&path);
                if let Some(conn) = self.conns.get_mut(&path)
                    && !conn.closed
                {
                    let code = failure.as_ref().map_or(0, |f| f.code.wire());
                    let reason = failure
                        .as_ref()
                        .map_or("path closed", |f| f.reason.as_str());
                    conn.quic.close(
                        ctx.now,
                        VarInt::from_u64(code).expect("small"),
                        truncate(reason),
                    );
                    conn.closed = true;
                }
            }
            self.report_path(path);
        } else if self.role == Role::Primary && state.is_final() {
            self.add_deadlines.remove(&path);
            for t in self.transfers.values_mut() {
                let received = self.ledger.received(t.stream).cloned().unwrap_or_default();
                t.path_lost(path, &received);
            }
            let lost = self.ledger.take_path(path);
            if !lost.is_empty() {
                ctx.events.push_back(Event::RangesLost {
                    session,
                    path,
                    ranges: lost.clone(),
                });
                if self.primary.auto_reassign {
                    self.reassign(lost);
                }
            }
        }
    }

    /// Primary: hands lost delegations to the live secondary paths in turn
    /// (ranges of running transfers are re-assigned by their scheduler).
    fn reassign(&mut self, lost: Vec<Delegation>) {
        let live: Vec<PathId> = self
            .paths
            .values()
            .filter(|p| !p.primary && p.state == PathState::Active)
            .map(|p| p.id)
            .collect();
        let transfer_streams: Vec<StreamId> = self.transfers.values().map(|t| t.stream).collect();
        let mut next = live.iter().cycle();
        for d in lost {
            if transfer_streams.contains(&d.stream) {
                continue;
            }
            let Some(&path) = next.next() else { return };
            let _ = self.delegate(path, d.stream, d.range, d.fin, d.descriptor);
        }
    }

    /// Client: tells the primary where `path` stands.
    fn report_path(&mut self, path: PathId) {
        if self.phase == Phase::Closed {
            return;
        }
        let Some(info) = self.paths.get(&path) else {
            return;
        };
        let (code, reason) = info
            .failure
            .as_ref()
            .map_or((0, String::new()), |f| (f.code.wire(), f.reason.clone()));
        let (rtt, bytes) = self.conns.get(&path).map_or((0, 0), |c| {
            (c.quic.rtt().as_micros() as u64, c.quic.stats().udp_rx.bytes)
        });
        let status = Body::PathStatus(msg::PathStatus {
            path_id: path.0,
            state: wire_state(info.state) as i32,
            error_code: code,
            reason,
            rtt_us: rtt,
            bytes_received: bytes,
        });
        self.main_conn().send(status);
    }

    fn on_conn_lost(&mut self, path: PathId, reason: CloseReason, ctx: &mut Ctx<'_>) {
        if let Some(conn) = self.conns.get_mut(&path) {
            conn.closed = true;
        }
        if path == PathId::PRIMARY || self.role != Role::Client {
            if self.close_reason.is_none() {
                self.close_reason = Some(reason.clone());
                ctx.events.push_back(Event::SessionClosed {
                    session: self.handle,
                    reason,
                });
            }
            self.shut_down(0, b"primary connection lost", ctx);
            return;
        }
        let joined = self.conns.get(&path).is_some_and(|c| c.joined);
        let failure = match reason {
            CloseReason::Protocol { code, reason, .. } => PathFailure { code, reason },
            CloseReason::TimedOut => PathFailure {
                code: ErrorCode::PathDead,
                reason: "idle timeout".into(),
            },
            CloseReason::LocallyClosed => return,
            other => PathFailure {
                code: ErrorCode::PathDead,
                reason: other.to_string(),
            },
        };
        let state = if joined {
            PathState::Dead
        } else {
            PathState::Failed
        };
        self.set_path_state(path, state, Some(failure), ctx);
    }

    /// Client: removal of `path` requested (by the primary or locally).
    fn begin_remove(&mut self, path: PathId, now: Instant) {
        let rtt = self
            .conns
            .get(&path)
            .map_or(Duration::ZERO, |c| c.quic.rtt());
        let grace = (self.policy.dead_after(rtt) * 10).max(Duration::from_secs(1));
        if let Some(cp) = self.client_paths.get_mut(&path) {
            cp.closing.get_or_insert(now + grace);
        }
    }

    fn forward_delegate(
        &mut self,
        mut m: msg::Delegate,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let path = PathId(m.path_id);
        let stream = StreamId(m.stream_id);
        let credit = self.streams.delegated(stream, path, ctx.events)?;
        if path == PathId::PRIMARY {
            // The primary serves this range itself; only the acks matter.
            return Ok(());
        }
        let live = self.paths.get(&path).is_some_and(|p| p.state.is_live());
        let Some(cp) = self.client_paths.get_mut(&path) else {
            return Ok(());
        };
        let Some(conn) = self.conns.get_mut(&path) else {
            return Ok(());
        };
        if !live || !conn.joined || conn.closed {
            return Ok(());
        }
        cp.owed.push((stream, m.offset..m.offset + m.length));
        m.credit = credit;
        conn.send(Body::Delegate(m));
        Ok(())
    }

    fn forward_raw(&mut self, path: PathId, payload: Bytes) {
        if let Some(conn) = self.conns.get_mut(&path)
            && conn.joined
            && !conn.closed
        {
            conn.send(Body::Raw(msg::Raw { payload }));
        }
    }

    fn send_acks(&mut self) {
        self.ack_due = None;
        if self.phase != Phase::Active {
            return;
        }
        let mut acks = Vec::new();
        self.streams.take_acks(&mut acks);
        let conn = self.main_conn();
        for ack in acks {
            conn.send(ack);
        }
    }

    // ----- paths: primary side -----

    fn on_path_status(&mut self, m: msg::PathStatus, ctx: &mut Ctx<'_>) {
        let path = PathId(m.path_id);
        let state = match msg::PathState::try_from(m.state) {
            Ok(msg::PathState::Connecting) => PathState::Connecting,
            Ok(msg::PathState::Active) => PathState::Active,
            Ok(msg::PathState::Degraded) => PathState::Degraded,
            Ok(msg::PathState::Dead) => PathState::Dead,
            Ok(msg::PathState::Closed) => PathState::Closed,
            Ok(msg::PathState::Failed) => PathState::Failed,
            _ => return,
        };
        let failure = (m.error_code != 0).then(|| PathFailure {
            code: ErrorCode::from_wire(m.error_code).unwrap_or(ErrorCode::Internal),
            reason: m.reason.clone(),
        });
        if let Some(info) = self.paths.get_mut(&path) {
            info.rtt = Duration::from_micros(m.rtt_us);
            info.bytes_received = m.bytes_received;
            info.last_active = ctx.now;
        }
        if state == PathState::Active {
            self.add_deadlines.remove(&path);
        }
        self.set_path_state(path, state, failure, ctx);
    }

    // ----- paths: secondary side -----

    fn on_delegated(&mut self, m: msg::Delegate, ctx: &mut Ctx<'_>) {
        let stream = StreamId(m.stream_id);
        let half = self.streams.source_half(stream);
        half.credit = half.credit.max(m.credit);
        if let Some(resource) = ctx.resources.get(&m.descriptor) {
            self.jobs.push(Job {
                stream,
                range: m.offset..m.offset + m.length,
                fin: m.fin,
                resource: resource.clone(),
            });
            return;
        }
        ctx.events.push_back(Event::Delegated {
            session: self.handle,
            delegation: Delegation {
                id: DelegationId(m.delegation_id),
                path: self.joined_path,
                stream,
                range: m.offset..m.offset + m.length,
                fin: m.fin,
                descriptor: m.descriptor,
            },
        });
    }

    // ----- multi-source transfers -----

    /// Primary: runs every transfer's scheduler and carries out what it
    /// assigns.
    fn run_transfers(&mut self, ctx: &mut Ctx<'_>) {
        if self.role != Role::Primary || self.phase != Phase::Active || self.transfers.is_empty() {
            return;
        }
        let mut live = vec![PathView {
            id: PathId::PRIMARY,
            rtt: self.conns[&PathId::PRIMARY].quic.rtt(),
        }];
        live.extend(
            self.paths
                .values()
                .filter(|p| !p.primary && p.state == PathState::Active)
                .map(|p| PathView {
                    id: p.id,
                    rtt: p.rtt,
                }),
        );
        let mut work = Vec::new();
        let mut finished = Vec::new();
        for (id, t) in &mut self.transfers {
            let received = self.ledger.received(t.stream).cloned().unwrap_or_default();
            // StreamComplete releases the send half: the client has it all.
            let released = self.streams.send_mut(t.stream).is_none();
            if released || t.complete(&received) {
                finished.push((*id, t.stream));
                continue;
            }
            for assign in t.schedule(ctx.now, &live, &received) {
                work.push((t.stream, t.descriptor.clone(), t.resource.clone(), assign));
            }
        }
        for (stream, descriptor, resource, a) in work {
            let own = a.path == PathId::PRIMARY
                // The path went away since scheduling: serve it here.
                || self.delegate(a.path, stream, a.range.clone(), a.fin, descriptor).is_err();
            if own {
                self.jobs.push(Job {
                    stream,
                    range: a.range,
                    fin: a.fin,
                    resource,
                });
            }
        }
        for (id, stream) in finished {
            self.transfers.remove(&id);
            ctx.events.push_back(Event::TransferComplete {
                session: self.handle,
                transfer: id,
                stream,
            });
        }
    }

    /// Writes what the jobs owe, as far as credit and lanes allow.
    fn pump_jobs(&mut self) {
        if self.jobs.is_empty() || self.phase != Phase::Active {
            return;
        }
        let mut jobs = std::mem::take(&mut self.jobs);
        jobs.retain_mut(|job| {
            loop {
                let remaining = job.range.end - job.range.start;
                let want = remaining.min(FEED_CHUNK);
                let mut data = job.resource.read(job.range.start, want as usize);
                if (data.len() as u64) < want {
                    return false; // the resource is shorter than the range
                }
                let last = want == remaining;
                match self.write_at(job.stream, job.range.start, &mut data, job.fin && last) {
                    Ok(n) => {
                        job.range.start += n as u64;
                        if job.range.is_empty() && (last || !job.fin) {
                            return false;
                        }
                    }
                    Err(WriteError::Blocked) => return true,
                    Err(_) => return false,
                }
            }
        });
        jobs.append(&mut self.jobs);
        self.jobs = jobs;
    }

    /// Primary: serves `resource` over `stream` (opened by this primary)
    /// from this server and every live secondary that holds `descriptor`.
    pub(crate) fn serve(
        &mut self,
        stream: StreamId,
        resource: SharedResource,
        descriptor: Bytes,
        config: TransferConfig,
    ) -> Result<TransferId, PathError> {
        if self.role != Role::Primary {
            return Err(PathError::WrongRole);
        }
        if self.phase != Phase::Active {
            return Err(PathError::SessionClosed);
        }
        if stream.initiator() != Side::Server || self.streams.send_mut(stream).is_none() {
            return Err(PathError::WrongRole);
        }
        let id = TransferId(self.next_transfer);
        self.next_transfer += 1;
        if resource.is_empty() {
            // Only the FIN to send; the transfer completes at once.
            self.jobs.push(Job {
                stream,
                range: 0..0,
                fin: true,
                resource: resource.clone(),
            });
            self.transfers
                .insert(id, Transfer::new(stream, descriptor, resource, config));
            return Ok(id);
        }
        // Tell the client to acknowledge this stream's progress.
        self.main_conn().send(Body::Delegate(msg::Delegate {
            path_id: PathId::PRIMARY.0,
            stream_id: stream.0,
            ..Default::default()
        }));
        self.transfers
            .insert(id, Transfer::new(stream, descriptor, resource, config));
        Ok(id)
    }

    // ----- timers and sending -----

    fn on_timers(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Closed {
            return;
        }
        let now = ctx.now;
        if self.ack_due.is_some_and(|t| t <= now) {
            self.send_acks();
        }
        // Primary: AddPath requests the client never answered.
        let expired: Vec<PathId> = self
            .add_deadlines
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for path in expired {
            self.add_deadlines.remove(&path);
            let failure = PathFailure {
                code: ErrorCode::PathDead,
                reason: "the client did not answer AddPath in time".into(),
            };
            self.set_path_state(path, PathState::Failed, Some(failure), ctx);
        }
        if self.role != Role::Client {
            return;
        }
        // Client: liveness of secondary paths, and graceful removals.
        let paths: Vec<PathId> = self.client_paths.keys().copied().collect();
        for path in paths {
            let Some(base_rtt) = self.conns.get_mut(&path).map(Conn::base_rtt) else {
                continue;
            };
            let Some(conn) = self.conns.get(&path) else {
                continue;
            };
            if conn.closed {
                continue;
            }
            let cp = &self.client_paths[&path];
            if let Some(deadline) = cp.closing {
                let streams = &self.streams;
                let drained = cp.owed.iter().all(|(s, r)| streams.received(*s, r.clone()));
                if drained || deadline <= now {
                    self.set_path_state(path, PathState::Closed, None, ctx);
                    continue;
                }
            }
            if !conn.joined {
                continue;
            }
            let dead_after = self.policy.dead_after(base_rtt);
            let silent = now.saturating_duration_since(conn.last_rx);
            if silent >= dead_after {
                let failure = PathFailure {
                    code: ErrorCode::PathDead,
                    reason: format!("nothing heard for {} ms", silent.as_millis()),
                };
                self.set_path_state(path, PathState::Dead, Some(failure), ctx);
            } else if silent >= self.policy.degraded_after(dead_after) {
                self.set_path_state(path, PathState::Degraded, None, ctx);
            } else if self.paths[&path].state == PathState::Degraded {
                self.set_path_state(path, PathState::Active, None, ctx);
            }
        }
    }

    /// Encodes what the stream table wants sent, routes it, and pushes every
    /// connection's control queue into its control stream.
    fn flush(&mut self, _ctx: &mut Ctx<'_>) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Active {
            let mut out = Vec::new();
            self.streams.drain_control(&mut out);
            for (route, body) in out {
                if let Some(stream) = route {
                    for source in self.streams.sources(stream).to_vec() {
                        if let Some(conn) = self.conns.get_mut(&source)
                            && conn.joined
                            && !conn.closed
                        {
                            conn.send(body.clone());
                        }
                    }
                }
                self.main_conn().send(body);
            }
        }
        for conn in self.conns.values_mut() {
            if !conn.closed {
                conn.flush_control();
            }
        }
    }

    /// Closes the session on a protocol violation detected on `path`. A
    /// client closes only a misbehaving secondary path (except for
    /// conflicting bytes, which poison the session).
    pub(crate) fn fail_path(&mut self, path: PathId, v: Violation, ctx: &mut Ctx<'_>) {
        if self.role == Role::Client
            && path != PathId::PRIMARY
            && v.code != ErrorCode::OffsetMismatch
        {
            tracing::debug!(session = %self.handle, %path, code = %v.code, reason = %v.reason, "closing path");
            let joined = self.conns.get(&path).is_some_and(|c| c.joined);
            let state = if joined {
                PathState::Dead
            } else {
                PathState::Failed
            };
            let failure = PathFailure {
                code: v.code,
                reason: v.reason,
            };
            self.set_path_state(path, state, Some(failure), ctx);
            return;
        }
        self.fail(v, ctx);
    }

    /// Closes the whole session on a protocol violation.
    pub(crate) fn fail(&mut self, v: Violation, ctx: &mut Ctx<'_>) {
        if self.close_reason.is_some() {
            return;
        }
        tracing::debug!(session = %self.handle, code = %v.code, reason = %v.reason, "closing session");
        let reason = CloseReason::Protocol {
            code: v.code,
            reason: v.reason.clone(),
            by_peer: false,
        };
        self.close_reason = Some(reason.clone());
        ctx.events.push_back(Event::SessionClosed {
            session: self.handle,
            reason,
        });
        self.shut_down(v.code.wire(), v.reason.as_bytes(), ctx);
    }

    /// Closes every connection with `code` and marks every path closed.
    fn shut_down(&mut self, code: u64, reason: &[u8], ctx: &mut Ctx<'_>) {
        self.phase = Phase::Closed;
        let code = VarInt::from_u64(code).expect("small");
        let reason = truncate(&String::from_utf8_lossy(reason));
        for conn in self.conns.values_mut() {
            if !conn.closed {
                conn.quic.close(ctx.now, code, reason.clone());
                conn.closed = true;
            }
        }
        let now = ctx.now;
        for info in self.paths.values_mut() {
            info.set_state(PathState::Closed, now);
        }
        self.client_paths.clear();
        self.add_deadlines.clear();
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
        self.close_reason = Some(CloseReason::LocallyClosed);
        events.push_back(Event::SessionClosed {
            session: self.handle,
            reason: CloseReason::LocallyClosed,
        });
        self.phase = Phase::Closed;
        let reason = Bytes::copy_from_slice(reason);
        for conn in self.conns.values_mut() {
            if !conn.closed {
                conn.quic.close(now, code, reason.clone());
                conn.closed = true;
            }
        }
        for info in self.paths.values_mut() {
            info.set_state(PathState::Closed, now);
        }
    }

    // ----- application operations (called through the views) -----

    pub(crate) fn open(&mut self, dir: Dir) -> Result<StreamId, OpenError> {
        if let Some(reason) = self.closed_error() {
            return Err(OpenError::SessionClosed(reason));
        }
        if self.phase != Phase::Active || self.role == Role::Secondary {
            return Err(OpenError::NotEstablished);
        }
        self.streams.open(dir).ok_or(OpenError::Blocked)
    }

    pub(crate) fn write(
        &mut self,
        stream: StreamId,
        data: &mut Bytes,
    ) -> Result<usize, WriteError> {
        let Some(send) = self.streams.send_mut(stream) else {
            return Err(self.closed_write_error());
        };
        let offset = send.offset;
        let written = self.write_at(stream, offset, data, false)?;
        if let Some(send) = self.streams.send_mut(stream) {
            send.offset = offset + written as u64;
        }
        Ok(written)
    }

    fn closed_write_error(&self) -> WriteError {
        match self.closed_error() {
            Some(reason) => WriteError::SessionClosed(reason),
            None => WriteError::ClosedStream,
        }
    }

    /// Writes `data` at logical `offset` of `stream` as far as credit and
    /// the lane allow; `fin` ends the stream after the last byte of `data`.
    pub(crate) fn write_at(
        &mut self,
        stream: StreamId,
        offset: u64,
        data: &mut Bytes,
        fin: bool,
    ) -> Result<usize, WriteError> {
        if let Some(reason) = self.closed_error() {
            return Err(WriteError::SessionClosed(reason));
        }
        if self.phase != Phase::Active {
            return Err(WriteError::Blocked);
        }
        let frame_limit = self.send_frame_limit;
        let secondary = self.role == Role::Secondary;
        let send = if secondary {
            self.streams.source_half(stream)
        } else {
            self.streams
                .send_mut(stream)
                .ok_or(WriteError::ClosedStream)?
        };
        match send.state {
            SendState::Open => {}
            SendState::Stopped(code) => {
                if !secondary {
                    self.streams.free_send(stream);
                }
                return Err(WriteError::Stopped(code));
            }
            SendState::FinPending | SendState::Finished => return Err(WriteError::ClosedStream),
        }
        if data.is_empty() && !fin {
            return Ok(0);
        }
        let conn = self
            .conns
            .get_mut(&PathId::PRIMARY)
            .expect("the primary connection lives as long as the session");
        let lane = match send.lane {
            Some(lane) => lane,
            None => match conn.lanes.assign(&mut conn.quic, stream) {
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
        let mut offset = offset;
        let mut fin_sent = false;
        loop {
            let room = send.credit.saturating_sub(offset);
            if (room == 0 && !data.is_empty()) || !conn.lanes.ready(lane, stream) {
                break;
            }
            let n = (data.len() as u64).min(room).min(frame_limit) as usize;
            let last = n == data.len();
            let header = encode_data_header(stream, offset, n as u64, fin && last);
            let payload = data.slice(..n);
            match conn
                .lanes
                .write_record(&mut conn.quic, lane, stream, header, payload)
            {
                Ok(()) => {
                    bytes::Buf::advance(data, n);
                    offset += n as u64;
                    written += n;
                    if last {
                        fin_sent = fin;
                        break;
                    }
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
        if written == 0 && !fin_sent {
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
        let conn = self
            .conns
            .get_mut(&PathId::PRIMARY)
            .expect("the primary connection lives as long as the session");
        let lane = match send.lane {
            Some(lane) => lane,
            None => match conn.lanes.assign(&mut conn.quic, stream) {
                Some(lane) => {
                    send.lane = Some(lane);
                    lane
                }
                None => return,
            },
        };
        if !conn.lanes.ready(lane, stream) {
            return;
        }
        let header = encode_data_header(stream, send.offset, 0, true);
        if conn
            .lanes
            .write_record(&mut conn.quic, lane, stream, header, Bytes::new())
            .is_ok()
        {
            let released = self.streams.fin_written(stream);
            if let Some(lane) = released.lane {
                self.main_conn().lanes.release(lane);
            }
        }
    }

    pub(crate) fn reset(&mut self, stream: StreamId, code: u64) -> Result<(), StreamError> {
        if let Some(reason) = self.closed_error() {
            return Err(StreamError::SessionClosed(reason));
        }
        let released = self.streams.reset(stream, code)?;
        if let Some(lane) = released.lane {
            self.main_conn().lanes.release(lane);
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

    // ----- multi-server operations -----

    fn path_usable(&self, path: PathId) -> Result<(), PathError> {
        if self.phase != Phase::Active {
            return Err(PathError::SessionClosed);
        }
        let info = self.paths.get(&path).ok_or(PathError::NotFound(path))?;
        match info.state {
            PathState::Active | PathState::Degraded => Ok(()),
            PathState::Connecting => Err(PathError::NotReady(path)),
            PathState::Dead | PathState::Closed | PathState::Failed => Err(PathError::Dead(path)),
        }
    }

    /// Primary: asks the client to join `address` as a new path.
    pub(crate) fn add_path(
        &mut self,
        now: Instant,
        unix_now: Duration,
        address: SocketAddr,
        server_name: &str,
    ) -> Result<PathId, PathError> {
        if self.role != Role::Primary {
            return Err(PathError::WrongRole);
        }
        if self.phase != Phase::Active {
            return Err(PathError::SessionClosed);
        }
        let key = self
            .primary
            .token_key
            .clone()
            .ok_or(PathError::NoTokenKey)?;
        let path = PathId(self.next_path);
        self.next_path += 1;
        let claims = TokenClaims {
            session_id: self.id.expect("active"),
            path_id: path.0,
            expiry_unix: (unix_now + self.primary.token_lifetime).as_secs(),
        };
        let mac = token::mint(&key, &claims);
        self.paths
            .insert(path, PathInfo::new(path, address, server_name, now));
        self.add_deadlines
            .insert(path, now + self.primary.add_path_timeout);
        self.main_conn().send(Body::AddPath(msg::AddPath {
            path_id: path.0,
            address: address.to_string(),
            server_name: server_name.to_string(),
            expiry_unix: claims.expiry_unix,
            token: Bytes::from(mac),
        }));
        Ok(path)
    }

    /// Primary asks the client to drop `path` gracefully; a client drops it
    /// itself (and tells the primary).
    pub(crate) fn remove_path(&mut self, path: PathId, now: Instant) -> Result<(), PathError> {
        if path == PathId::PRIMARY {
            return Err(PathError::WrongRole);
        }
        self.path_usable(path).or_else(|e| match e {
            PathError::NotReady(_) => Ok(()),
            e => Err(e),
        })?;
        match self.role {
            Role::Primary => {
                self.main_conn()
                    .send(Body::RemovePath(msg::RemovePath { path_id: path.0 }));
                Ok(())
            }
            Role::Client => {
                self.begin_remove(path, now);
                Ok(())
            }
            _ => Err(PathError::WrongRole),
        }
    }

    /// Primary: hands `[range)` of `stream` to `path`.
    pub(crate) fn delegate(
        &mut self,
        path: PathId,
        stream: StreamId,
        range: Range<u64>,
        fin: bool,
        descriptor: Bytes,
    ) -> Result<Delegation, PathError> {
        if self.role != Role::Primary {
            return Err(PathError::WrongRole);
        }
        if path == PathId::PRIMARY {
            return Err(PathError::NotFound(path));
        }
        self.path_usable(path)?;
        if stream.initiator() != Side::Server || self.streams.send_mut(stream).is_none() {
            return Err(PathError::WrongRole);
        }
        let d = self
            .ledger
            .add(path, stream, range.clone(), fin, descriptor.clone());
        self.main_conn().send(Body::Delegate(msg::Delegate {
            path_id: path.0,
            delegation_id: d.id.0,
            stream_id: stream.0,
            offset: range.start,
            length: range.end - range.start,
            fin,
            descriptor,
            credit: 0,
        }));
        Ok(d)
    }

    /// Primary: delegated ranges the client has not acknowledged.
    pub(crate) fn outstanding(&self) -> Vec<Delegation> {
        self.ledger.outstanding()
    }

    /// Primary: relays `payload` to `path`'s server through the client;
    /// client: sends it to `path`'s server directly.
    pub(crate) fn send_raw(&mut self, path: PathId, payload: Bytes) -> Result<(), PathError> {
        if path == PathId::PRIMARY {
            return Err(PathError::NotFound(path));
        }
        self.path_usable(path)?;
        let limit = (self.peer_max_control as usize).saturating_sub(RELAY_OVERHEAD);
        if payload.len() > limit {
            return Err(PathError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        match self.role {
            Role::Primary => {
                self.main_conn().send(Body::RawRelay(msg::RawRelay {
                    path_id: path.0,
                    payload,
                }));
                Ok(())
            }
            Role::Client => {
                self.forward_raw(path, payload);
                Ok(())
            }
            _ => Err(PathError::WrongRole),
        }
    }

    /// Paths known to this side, refreshed from the live connections.
    pub(crate) fn paths(&mut self) -> Vec<PathInfo> {
        for (path, conn) in &self.conns {
            if let Some(info) = self.paths.get_mut(path) {
                let stats = conn.quic.stats();
                info.rtt = conn.quic.rtt();
                info.bytes_sent = stats.udp_tx.bytes;
                info.bytes_received = stats.udp_rx.bytes;
                info.lost_packets = stats.path.lost_packets;
                info.last_active = info.last_active.max(conn.last_rx);
            }
        }
        self.paths.values().cloned().collect()
    }

    /// The peer's address on the primary connection.
    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.conns[&PathId::PRIMARY].quic.remote_address()
    }

    /// Secondary: the path id the primary assigned to this connection.
    pub(crate) fn joined_path(&self) -> Option<PathId> {
        (self.role == Role::Secondary).then_some(self.joined_path)
    }

    pub(crate) fn stats(&self) -> SessionStats {
        let conn = &self.conns[&PathId::PRIMARY];
        let q = conn.quic.stats();
        SessionStats {
            buffered: self.streams.buffered(),
            open_streams: self.streams.len() as u64,
            lanes_opened: conn.lanes.count() as u64,
            rtt_us: conn.quic.rtt().as_micros() as u64,
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
        .ok_or_else(|| violation("hello without limits"))
}

/// A peer's limits must leave room for data and control messages.
fn check_limits(limits: &Limits) -> Result<(), Violation> {
    if limits.max_frame_payload == 0 || limits.max_control_message < 64 {
        return Err(violation("unusable limits"));
    }
    Ok(())
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
