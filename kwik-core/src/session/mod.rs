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
//! The rules of each role live in their own module — `handshake`,
//! `client_paths`, `primary`, `secondary`, `transfers`, `proposals` — beside the checks
//! that guard them; `drive` ties them together and `app` holds the
//! application's operations.
//!
//! The endpoint drives a session in one step, [`Session::drive`]: digest what
//! quinn-proto reported on every connection, fire kwik's own timers, then send
//! what is due. Application calls come through [`crate::view`].

mod app;
mod client_paths;
mod drive;
mod handshake;
mod liveness;
mod path_health;
mod primary;
mod proposals;
mod scaling;
mod secondary;
mod transfers;

pub(crate) use scaling::ScalingPool;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{Dir as QDir, StreamEvent, StreamId as QStreamId, VarInt};

use crate::codec::{DataPiece, encode_data_header};
use crate::config::{PROTOCOL_VERSION, SUPPORTED_FEATURES, ServerConfig, TransportConfig};
use crate::conn::Conn;
use crate::delegation::{Delegation, DelegationId, Grant, Ledger};
use crate::error::{
    CloseReason, ErrorCode, OpenError, ReadError, StreamError, Violation, WriteError,
};
use crate::event::Event;
use crate::ids::{Dir, SessionHandle, SessionId, Side, StreamId};
use crate::lanes::{LaneBlocked, clamp_priority};
use crate::paths::{
    MAX_FINAL_PATHS, PathError, PathFailure, PathId, PathInfo, PathPolicy, PathRetry, PathState,
};
use crate::proto::common::Limits;
use crate::proto::control::{self as msg, Hello, Welcome, control_message::Body};
use crate::state::{Machine, SessionInfo, SessionState, set_session_state};
use crate::streams::{MAX_STREAMS_PER_DIR, SendState, Streams};
use crate::token::{self, TokenClaims, TokenKey, TokenVerifier};
use crate::transfer::{Job, PathView, SharedResource, Transfer, TransferConfig, TransferId};
use crate::wire::MAX_SERVER_NAME;
use crate::zero_rtt::{RememberedLimits, ZeroRtt};

/// How long the client batches acknowledgements of delegated streams.
const ACK_DELAY: Duration = Duration::from_millis(5);

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
    /// The endpoint's server configuration (keys and identity for path
    /// tokens), if it accepts sessions.
    pub server: Option<&'a ServerConfig>,
    /// Secondary: resources served automatically, by descriptor.
    pub resources: &'a BTreeMap<Bytes, SharedResource>,
    /// Primary: the endpoint's candidates and its count of scaled paths.
    pub scaling: &'a mut ScalingPool,
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
    /// Re-adding secondaries whose paths failed or died (`None`: never).
    pub path_retry: Option<PathRetry>,
    /// Automatic scaling (`None`: off).
    pub autoscale: Option<crate::scaling::AutoscaleConfig>,
}

/// Primary: a secondary the application added, followed across retries.
#[derive(Debug)]
pub(super) struct Target {
    pub address: SocketAddr,
    pub server_name: String,
    /// The path that currently stands for it.
    pub current: PathId,
    /// Retries in a row without becoming active.
    pub attempt: u32,
    /// When the next retry is due, if one is.
    pub due: Option<Instant>,
}

/// Client-side state of a secondary path.
#[derive(Debug)]
struct ClientPath {
    expiry_unix: u64,
    token: Bytes,
    /// The target as the AddPath named it (covered by the token's MAC).
    address: String,
    server_name: String,
    /// What the primary delegated to this path, per stream: the only bytes
    /// and FINs it may write (ranges already read are pruned; the entry
    /// lives as long as the stream).
    grants: BTreeMap<StreamId, Grant>,
    /// Removal requested: close once every granted byte arrived, or at this
    /// deadline.
    closing: Option<Instant>,
    /// The path fails unless it joined by then.
    join_by: Instant,
    /// Largest control message the secondary accepts (from its Joined).
    peer_max_control: u64,
}

pub(crate) struct Session {
    pub handle: SessionHandle,
    pub side: Side,
    pub role: Role,
    pub phase: Phase,
    pub id: Option<SessionId>,
    pub close_reason: Option<CloseReason>,
    pub conns: BTreeMap<PathId, Box<Conn>>,
    pub deadline: Option<Instant>,
    /// The deadline the endpoint's timer index holds for this session.
    pub scheduled: Option<Instant>,
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
    /// Primary: the newest Ack of each stream not yet applied to the ledger.
    stashed_acks: BTreeMap<StreamId, msg::Ack>,
    /// Primary: when stashed Acks are applied next.
    acks_apply_at: Option<Instant>,
    /// Primary: when Acks were last applied.
    acks_applied: Option<Instant>,
    /// Primary: (stream, path) pairs whose path gave the stream back, to
    /// settle once the Acks that reported them are applied.
    returns: BTreeSet<(StreamId, PathId)>,
    dial_failures: Vec<(PathId, String)>,
    transfers: BTreeMap<TransferId, Transfer>,
    next_transfer: u64,
    /// Ranges this side writes from a resource (own share, served delegations).
    jobs: Vec<Job>,
    /// Secondary: what the primary delegated and this side has not written
    /// yet, per stream; a stream's sending half lives as long as its entry.
    serving: BTreeMap<StreamId, Grant>,
    /// Client: the highest path id an AddPath named (ids only grow).
    last_add_path: u64,
    /// Client: AddPaths the rate limit still admits.
    add_budget: RateBudget,
    /// The time of the latest drive (deadlines are computed against it).
    clock: Instant,
    /// Primary: the secondaries the application added, by target.
    targets: Vec<Target>,
    /// Where the session stands with 0-RTT.
    zero_rtt: ZeroRtt,
    /// The QUIC handshake of the primary connection completed (the peer
    /// proved it holds the handshake keys and receives at its address).
    /// Kept here because a connection closed during its handshake no
    /// longer says whether it had.
    pub(crate) confirmed: bool,
    /// Client: what the client configuration remembers of servers'
    /// Welcomes (read for early data, written at every Welcome).
    remembered: Option<RememberedLimits>,
    /// Primary: path messages (AddPath, RemovePath) held until the
    /// handshake of a session that began in 0-RTT completes (§12.3).
    held: Vec<Body>,
    /// Secondary: a Join that arrived before the handshake completed,
    /// acted on once it has (§12.3).
    held_join: Option<Box<msg::Join>>,
    /// Primary: automatic scaling, if configured.
    scaler: Option<Box<scaling::Scaler>>,
    /// Client-proposed paths, both roles' halves (§13).
    proposals: proposals::Proposals,
    /// The observable state machine (PROTOCOL.md §15.1); changed only by
    /// [`Session::set_state`].
    state: Machine<SessionState>,
}

/// A token bucket in thousandths of a token, refilled from the time inputs
/// (deterministic: no clock is read), that counts the requests it refused
/// in a row: a peer that goes on past the limit after a burst of refusals
/// is flooding (it would only make this side answer).
#[derive(Debug)]
pub(super) struct RateBudget {
    millis: u64,
    at: Instant,
    refused: u32,
}

impl RateBudget {
    fn new(burst: u32, now: Instant) -> Self {
        Self {
            millis: u64::from(burst) * 1000,
            at: now,
            refused: 0,
        }
    }

    /// Admits one `what` request if `per_second` refills and a `burst` cap
    /// allow (`Ok(false)`: refused, to be answered as such); more than
    /// `burst` refusals in a row are a flood, a `KWIK_RESOURCE_LIMIT`
    /// violation.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        per_second: u32,
        burst: u32,
        what: &str,
    ) -> Result<bool, Violation> {
        if self.take(now, per_second, burst) {
            self.refused = 0;
            return Ok(true);
        }
        self.refused += 1;
        if self.refused > burst {
            return Err(Violation::new(
                ErrorCode::ResourceLimit,
                format!(
                    "{what} flood: {} refused in a row past the rate limit",
                    self.refused
                ),
            ));
        }
        Ok(false)
    }

    /// Takes one token if `per_second` refills and a `burst` cap allow.
    fn take(&mut self, now: Instant, per_second: u32, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.at);
        let refill = elapsed.as_millis().saturating_mul(u128::from(per_second));
        let cap = u64::from(burst) * 1000;
        self.millis = u64::try_from(u128::from(self.millis).saturating_add(refill))
            .unwrap_or(u64::MAX)
            .min(cap);
        self.at = now;
        if self.millis >= 1000 {
            self.millis -= 1000;
            true
        } else {
            false
        }
    }
}

/// Size of `body` as the receiver's `max_control_message` counts it: the
/// encoded `ControlMessage`, length prefix excluded (PROTOCOL.md §3.1).
pub(super) fn control_size(body: &Body) -> usize {
    prost::Message::encoded_len(&msg::ControlMessage {
        body: Some(body.clone()),
    })
}

/// `Err(TooLarge)` unless `body` fits a peer's `max_control_message`.
pub(super) fn fits(body: &Body, limit: u64) -> Result<(), PathError> {
    let size = control_size(body);
    if size as u64 > limit {
        return Err(PathError::TooLarge {
            size,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        });
    }
    Ok(())
}

pub(super) fn violation(reason: impl Into<String>) -> Violation {
    Violation::new(ErrorCode::InvalidFrame, reason)
}

/// The wire form of a path state (PROTOCOL.md §10.3, §15.3).
pub(super) fn wire_state(state: PathState) -> msg::PathState {
    match state {
        PathState::Initializing => msg::PathState::Initializing,
        PathState::Handshaking => msg::PathState::Handshaking,
        PathState::Active => msg::PathState::Active,
        PathState::Degraded => msg::PathState::Degraded,
        PathState::Closing => msg::PathState::Closing,
        PathState::Dead => msg::PathState::Dead,
        PathState::Closed => msg::PathState::Closed,
        PathState::Failed => msg::PathState::Failed,
    }
}

/// A path state off the wire (`None`: unspecified or unknown).
pub(super) fn state_of_wire(state: i32) -> Option<PathState> {
    Some(match msg::PathState::try_from(state).ok()? {
        msg::PathState::Unspecified => return None,
        msg::PathState::Initializing => PathState::Initializing,
        msg::PathState::Handshaking => PathState::Handshaking,
        msg::PathState::Active => PathState::Active,
        msg::PathState::Degraded => PathState::Degraded,
        msg::PathState::Closing => PathState::Closing,
        msg::PathState::Dead => PathState::Dead,
        msg::PathState::Closed => PathState::Closed,
        msg::PathState::Failed => PathState::Failed,
    })
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
        let policy_burst = policy.add_path_burst;
        let scaler = primary
            .autoscale
            .clone()
            .map(|c| Box::new(scaling::Scaler::new(c, now)));
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
            conns: BTreeMap::from([(PathId::PRIMARY, Box::new(conn))]),
            deadline: None,
            scheduled: None,
            requests: Vec::new(),
            tx_cursor: 0,
            queued_drive: false,
            queued_send: false,
            send_frame_limit: transport.max_frame_payload,
            peer_max_control: crate::wire::MIN_CONTROL_MESSAGE,
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
            stashed_acks: BTreeMap::new(),
            acks_apply_at: None,
            acks_applied: None,
            returns: BTreeSet::new(),
            dial_failures: Vec::new(),
            transfers: BTreeMap::new(),
            next_transfer: 0,
            jobs: Vec::new(),
            serving: BTreeMap::new(),
            last_add_path: 0,
            add_budget: RateBudget::new(policy_burst, now),
            clock: now,
            targets: Vec::new(),
            zero_rtt: ZeroRtt::Off,
            confirmed: false,
            remembered: None,
            held: Vec::new(),
            held_join: None,
            scaler,
            proposals: proposals::Proposals::new(now),
            state: Machine::new(SessionState::Initializing, now),
        }
    }

    /// The endpoint started the session's connection (dialled or accepted
    /// it): the session and its primary connection are handshaking.
    pub(crate) fn start(&mut self, now: Instant, events: &mut VecDeque<Event>) {
        self.set_state(SessionState::Handshaking, now, events);
        // Nothing to settle or report for path 0 yet (and nothing to log:
        // the session's own start says it).
        if let Some(info) = self.paths.get_mut(&PathId::PRIMARY) {
            info.set_state(self.handle, PathState::Handshaking, now, events);
        }
    }

    /// Moves the session to `next` (PROTOCOL.md §15.1) — the one place its
    /// state changes — and emits [`Event::SessionState`]. Returns whether
    /// it moved.
    pub(crate) fn set_state(
        &mut self,
        next: SessionState,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) -> bool {
        set_session_state(&mut self.state, self.handle, next, now, events)
    }

    /// The session's current state.
    pub(crate) fn state(&self) -> SessionState {
        self.state.state
    }

    /// The session's state, its history and who it is.
    pub(crate) fn info(&self) -> SessionInfo {
        SessionInfo {
            handle: self.handle,
            id: self.id,
            role: self.role,
            state: self.state.state,
            history: self.state.history.clone(),
        }
    }

    /// Every connection drained and the session goes: it ends Closed,
    /// through Closing if it was not closing yet (the endpoint removed it),
    /// with every path that had not ended closed.
    pub(crate) fn end(&mut self, now: Instant, events: &mut VecDeque<Event>) {
        let chain = crate::state::route(
            &SessionState::ALL,
            SessionState::may_become,
            self.state(),
            SessionState::Closed,
        )
        .unwrap_or_default();
        for step in chain {
            self.set_state(step, now, events);
        }
        self.close_paths(now, events);
    }

    /// Closes every path that has not ended (the session ends).
    pub(super) fn close_paths(&mut self, now: Instant, events: &mut VecDeque<Event>) {
        let handle = self.handle;
        for info in self.paths.values_mut() {
            info.set_state(handle, PathState::Closed, now, events);
        }
    }

    /// Paths the session's scaler holds (released from the endpoint's
    /// count when the session goes away).
    pub(crate) fn scaled_paths(&self) -> usize {
        self.scaler.as_ref().map_or(0, |s| s.held())
    }

    /// Client: the store of servers' limits this session reads for early
    /// data and updates at the Welcome.
    pub(crate) fn set_remembered(&mut self, remembered: RememberedLimits) {
        self.remembered = Some(remembered);
    }

    /// Where the session stands with 0-RTT.
    pub(crate) fn zero_rtt(&self) -> ZeroRtt {
        self.zero_rtt
    }

    /// True once both the QUIC handshake and the kwik one (Hello or Join
    /// accepted) completed. A server session that began in 0-RTT is
    /// established before its QUIC handshake completes, and stays
    /// half-open until then (§12.3).
    pub(crate) fn handshake_complete(&self) -> bool {
        self.phase == Phase::Active && self.confirmed
    }

    pub(super) fn limits(&self) -> Limits {
        Limits {
            stream_window: self.transport.stream_window,
            max_bidi_streams: self.transport.max_bidi_streams.min(MAX_STREAMS_PER_DIR),
            max_uni_streams: self.transport.max_uni_streams.min(MAX_STREAMS_PER_DIR),
            max_frame_payload: self.transport.max_frame_payload,
            max_control_message: self.transport.max_control_message,
        }
    }

    pub(crate) fn closed_error(&self) -> Option<CloseReason> {
        self.close_reason.clone()
    }

    /// The connection this side sends its data and control on.
    pub(super) fn main_conn(&mut self) -> &mut Conn {
        self.conns
            .get_mut(&PathId::PRIMARY)
            .expect("the primary connection lives as long as the session")
    }

    /// Adds the connection of a secondary path (client side).
    pub(crate) fn attach(&mut self, conn: Conn) {
        self.conns.insert(conn.path, Box::new(conn));
    }

    /// Removes a drained connection; true when none is left.
    pub(crate) fn detach(&mut self, path: PathId) -> bool {
        self.refresh_path_info(path);
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
}

pub(super) fn truncate(reason: &str) -> Bytes {
    Bytes::copy_from_slice(crate::error::bounded_reason(reason).as_bytes())
}
