//! Resource-exhaustion attacks on one kwik endpoint, with its heap use and
//! CPU time metered.
//!
//! Every structure a peer can grow must have a bound (BRIEF: "trust is per
//! range"). To check that from the outside, an [`Arena`] puts one kwik
//! endpoint — the *target*: a server (primary or secondary) or a client —
//! next to one hostile node (a [`HostileClient`] or a [`HostilePrimary`])
//! in a simulation, charges every heap allocation made inside the target's
//! calls to a leased [`Meter`](crate::alloc::Meter), and measures growth
//! from a baseline taken once the attacked session is established. The attack then runs until the
//! target closes the session, the attacker is done and things settled, a
//! fixed window passed, or the growth or CPU passed an abort threshold
//! (so that a test fails fast on today's code instead of exhausting the
//! machine).
//!
//! [`Pattern`] names the canned attacks, each with kwik's DEFAULT
//! configuration on the target; [`run`] runs one and reports. The trust
//! tests assert on the report and inspect the nodes; the `abuse` benchmark
//! prints it. Measuring needs the counting allocator installed in the
//! binary (see [`crate::alloc`]); without it every growth reads zero
//! ([`Report::metered`] says which).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{Ack, ByteRange, Delegate, Join, StopSending, StreamCredit};
use kwik_core::{
    ClientConfig, CloseReason, Dir, ErrorCode, Event, KwikEndpoint, PathId, ReadError,
    ServerConfig, SessionHandle, SessionId, Side, StreamId, TokenKey, TransferConfig, WriteError,
};

use crate::alloc::{self, MeterLease};
use crate::apps::{Payload, Received};
use crate::certs::DevCert;
use crate::hostile::{HostileClient, Step, join_request, upload_stream};
use crate::hostile_primary::{HostilePrimary, PrimaryStep, add_path};
use crate::kwik_node::{App, KwikNode};
use crate::link::LinkConfig;
use crate::multi::PayloadResource;
use crate::setup::{SERVER_NAME, addr, configs, dev_cert};
use crate::sim::{NodeId, Sim};
use crate::trace::Trace;
use crate::wire::{control_records, length_prefix, push_data_record};

/// Wall-clock time (seconds since the Unix epoch) every arena endpoint
/// starts at (path tokens carry expiries in it).
pub const UNIX_START: u64 = 1_800_000_000;

/// A token lifetime comfortably past any arena run.
pub const VALID_UNTIL: u64 = UNIX_START + 3600;

/// Descriptor under which an arena secondary serves its resource.
pub const DESCRIPTOR: &[u8] = b"abuse-resource";

/// Length of the resource an arena secondary serves (nothing is written
/// past what the client grants, so it may be large).
pub const RESOURCE_LEN: u64 = 1 << 40;

/// Session id an arena's hostile client claims when it joins a secondary.
pub const JOIN_SESSION: SessionId = SessionId([0x77; 16]);

/// Path id an arena's hostile client claims when it joins a secondary.
pub const JOIN_PATH: PathId = PathId(1);

/// kwik's default per-stream window `W`, the yardstick of every bound.
pub fn window() -> u64 {
    kwik_core::TransportConfig::default().stream_window
}

/// The token key an arena secondary trusts (derived from the seed).
pub fn arena_key(seed: u64) -> TokenKey {
    TokenKey::new(crate::seeding::derive_key(seed, "abuse token key"))
}

/// A `Join` for path [`JOIN_PATH`] of [`JOIN_SESSION`] on the secondary at
/// `secondary` (certificate name [`SERVER_NAME`]) with a genuine token minted
/// with `key` for that secondary.
pub fn genuine_join(key: &TokenKey, secondary: SocketAddr) -> Join {
    let address = secondary.to_string();
    let token = key.mint(JOIN_SESSION, JOIN_PATH, VALID_UNTIL, &address, SERVER_NAME);
    let mut join = join_request(&JOIN_SESSION.0, JOIN_PATH, VALID_UNTIL, token);
    join.address = address;
    join.server_name = SERVER_NAME.to_string();
    join
}

// ----- record builders -----

/// One-byte data records of stream `stream` at `offsets`, each carrying the
/// byte `payload` holds there (so a reader can verify them).
pub fn tiny_records(
    stream: StreamId,
    offsets: impl IntoIterator<Item = u64>,
    payload: &Payload,
) -> Bytes {
    let mut out = BytesMut::new();
    for offset in offsets {
        let byte = payload.chunk(stream, offset, 1);
        push_data_record(&mut out, stream, offset, &byte, false);
    }
    out.freeze()
}

/// `total` one-byte records of `stream` in order from offset 0, with a
/// duplicate after every `total / dups`-th of them aimed at the highest
/// offset written so far (walking back over the last 64), then an empty
/// record with a FIN at `total`.
pub fn duplicate_tiny_records(stream: StreamId, total: u64, dups: u64, payload: &Payload) -> Bytes {
    let every = (total / dups.max(1)).max(1);
    let mut out = BytesMut::new();
    let mut sent_dups = 0;
    for offset in 0..total {
        let byte = payload.chunk(stream, offset, 1);
        push_data_record(&mut out, stream, offset, &byte, false);
        if (offset + 1) % every == 0 && sent_dups < dups {
            let again = offset.saturating_sub(sent_dups % 64);
            let byte = payload.chunk(stream, again, 1);
            push_data_record(&mut out, stream, again, &byte, false);
            sent_dups += 1;
        }
    }
    push_data_record(&mut out, stream, total, &[], true);
    out.freeze()
}

/// A deterministic xorshift sequence (no RNG crate needed, stable forever).
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// `n` `StreamCredit`s and `n` `StopSending`s, interleaved, each naming a
/// server stream (uni and bidi in turn) no one ever opened.
pub fn fresh_id_credits(n: u64) -> Bytes {
    control_records((0..n).flat_map(|i| {
        let dir = if i % 2 == 0 { Dir::Uni } else { Dir::Bi };
        let credited = StreamId::new(Side::Server, dir, 1_000 + i);
        let stopped = StreamId::new(Side::Server, dir, 1_000_000 + i);
        [
            Body::StreamCredit(StreamCredit {
                stream_id: credited.0,
                max_offset: 1 << 30,
            }),
            Body::StopSending(StopSending {
                stream_id: stopped.0,
                error_code: 7,
                received: 0,
            }),
        ]
    }))
}

/// Most ranges an `Ack` may list (PROTOCOL.md §10.6).
pub const MAX_ACK_RANGES: usize = 64;

/// An `Ack` of `stream` with `contiguous` and `count` well-formed ranges
/// above it: `[c + 1 + 4k, c + 3 + 4k)`.
pub fn valid_ack(stream: StreamId, contiguous: u64, count: usize) -> Ack {
    Ack {
        stream_id: stream.0,
        contiguous,
        ranges: (0..count as u64)
            .map(|k| ByteRange {
                start: contiguous + 1 + 4 * k,
                end: contiguous + 3 + 4 * k,
            })
            .collect(),
        returned_by: Vec::new(),
    }
}

/// `n` `Ack`s, each naming an arbitrary server stream (pseudo-random index
/// and direction, drawn from `seed`) with [`MAX_ACK_RANGES`] valid ranges.
pub fn arbitrary_acks(n: u64, seed: u64) -> Bytes {
    let mut next = xorshift(seed ^ 0xac4);
    control_records((0..n).map(|_| {
        let r = next();
        let dir = if r & 1 == 0 { Dir::Uni } else { Dir::Bi };
        let stream = StreamId::new(Side::Server, dir, (r >> 1) % (1 << 40));
        let contiguous = next() % (1 << 20);
        Body::Ack(valid_ack(stream, contiguous, MAX_ACK_RANGES))
    }))
}

/// `n` `Ack`s of `stream`, each listing 64 valid ranges.
pub fn served_acks(n: u64, stream: StreamId) -> Bytes {
    control_records((0..n).map(|i| Body::Ack(valid_ack(stream, i % (1 << 20), MAX_ACK_RANGES))))
}

/// `n` `AddPath`s with path ids `1..=n`, each to a fresh address in
/// `10.128.0.0/9` (which no arena client policy allows).
pub fn refused_add_paths(n: u64) -> Bytes {
    control_records((1..=n).map(|path| {
        let a = path.to_be_bytes();
        let address = SocketAddr::from(([10, 128 | (a[5] & 0x7f), a[6], a[7]], 4433));
        add_path(
            path,
            address,
            SERVER_NAME,
            VALID_UNTIL,
            Bytes::from_static(&[0x42; 32]),
        )
    }))
}

/// `n` `Delegate`s of 1 KiB ranges of server stream 0 for path `path`,
/// naming [`DESCRIPTOR`], placed from 4 MiB on (past the client's initial
/// credit, so none of them can be written yet: all stay outstanding).
pub fn delegate_flood(n: u64, path: PathId) -> Bytes {
    let stream = StreamId::new(Side::Server, Dir::Uni, 0);
    control_records((0..n).map(|i| {
        Body::Delegate(Delegate {
            path_id: path.0,
            delegation_id: i,
            stream_id: stream.0,
            offset: (4 << 20) + i * 1024,
            length: 1024,
            fin: false,
            descriptor: Bytes::from_static(DESCRIPTOR),
            ..Delegate::default()
        })
    }))
}

/// A control record that never completes: a length prefix of `claimed`
/// bytes followed by all of them but one.
pub fn partial_control_record(claimed: u64) -> Bytes {
    let mut out = length_prefix(claimed);
    out.resize(out.len() + claimed.saturating_sub(1) as usize, 0);
    Bytes::from(out)
}

// ----- target applications -----

/// What a [`TargetServer`] does when a session is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// Nothing but accepting (and, if asked, reading).
    Passive,
    /// Open a unidirectional stream and serve `len` bytes of the payload on
    /// it with [`kwik_core::SessionView::serve`].
    Serve {
        /// Resource length.
        len: u64,
    },
    /// Open a unidirectional stream and write `len` bytes of the payload on
    /// it, without finishing it.
    Write {
        /// Bytes to write.
        len: u64,
    },
}

/// A server application for arenas: accepts every session, records how
/// sessions end, optionally reads and verifies what the peer sends, and
/// keeps no state per event (its heap use is charged to the target's
/// meter).
pub struct TargetServer {
    payload: Payload,
    /// Read (and verify) every stream the peer opens.
    pub read: bool,
    /// What to do on establishment.
    pub role: ServerRole,
    /// Sessions established (primary role), with their ids.
    pub sessions: BTreeMap<SessionHandle, SessionId>,
    /// Secondary sessions joined.
    pub joined: Vec<(SessionHandle, PathId)>,
    /// Sessions that ended, with why.
    pub closed: BTreeMap<SessionHandle, CloseReason>,
    /// Per stream read (only when reading).
    pub received: BTreeMap<StreamId, Received>,
    /// Streams the peer opened (accepted and, unless reading, dropped).
    pub accepted: u64,
    /// Bytes that failed verification (must stay 0).
    pub corrupt: u64,
    /// The stream this server opened on establishment.
    pub stream: Option<StreamId>,
    /// Bytes written on it (Write role).
    pub written: u64,
    /// Events seen.
    pub events: u64,
    /// `StreamFinished` events.
    pub finished: u64,
}

impl TargetServer {
    /// A server in `role`, verifying against `payload` if it reads.
    pub fn new(payload: Payload, role: ServerRole, read: bool) -> Self {
        TargetServer {
            payload,
            read,
            role,
            sessions: BTreeMap::new(),
            joined: Vec::new(),
            closed: BTreeMap::new(),
            received: BTreeMap::new(),
            accepted: 0,
            corrupt: 0,
            stream: None,
            written: 0,
            events: 0,
            finished: 0,
        }
    }

    /// The one session this server has (established or joined).
    pub fn session(&self) -> Option<SessionHandle> {
        self.sessions
            .keys()
            .next()
            .copied()
            .or_else(|| self.joined.first().map(|(h, _)| *h))
    }

    /// True once a session was established or joined.
    pub fn established(&self) -> bool {
        !self.sessions.is_empty() || !self.joined.is_empty()
    }

    /// Why the (first) session that ended ended.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.values().next()
    }

    /// Writes up to `len` more payload bytes on [`stream`](Self::stream)
    /// (Write role); returns what the write call said.
    pub fn write_more(&mut self, ep: &mut KwikEndpoint, len: u64) -> Result<usize, WriteError> {
        let (Some(h), Some(id)) = (self.session(), self.stream) else {
            return Err(WriteError::ClosedStream);
        };
        let Some(mut stream) = ep.stream(h, id) else {
            return match ep.session(h).and_then(|v| v.close_reason()) {
                Some(reason) => Err(WriteError::SessionClosed(reason)),
                None => Err(WriteError::ClosedStream),
            };
        };
        let mut chunk = self.payload.chunk(id, self.written, len as usize);
        let n = stream.write_chunk(&mut chunk)?;
        self.written += n as u64;
        Ok(n)
    }

    fn drain(&mut self, ep: &mut KwikEndpoint, session: SessionHandle, id: StreamId) {
        let entry = self.received.entry(id).or_default();
        let Some(mut stream) = ep.stream(session, id) else {
            return;
        };
        loop {
            match stream.read(usize::MAX) {
                Ok(Some(data)) => {
                    if !self.payload.verify(id, entry.bytes, &data) {
                        self.corrupt += data.len() as u64;
                    }
                    entry.bytes += data.len() as u64;
                }
                Ok(None) => {
                    entry.fin = true;
                    return;
                }
                Err(ReadError::Reset(code)) => {
                    entry.reset = Some(code);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn on_established(&mut self, ep: &mut KwikEndpoint, session: SessionHandle) {
        let Some(mut view) = ep.session(session) else {
            return;
        };
        match self.role {
            ServerRole::Passive => {}
            ServerRole::Serve { len } => {
                let Ok(stream) = view.open(Dir::Uni) else {
                    return;
                };
                self.stream = Some(stream);
                let resource = Arc::new(PayloadResource::new(self.payload.clone(), stream, len));
                let _ = view.serve(
                    stream,
                    resource,
                    Bytes::from_static(DESCRIPTOR),
                    TransferConfig::default(),
                );
            }
            ServerRole::Write { len } => {
                let Ok(stream) = view.open(Dir::Uni) else {
                    return;
                };
                self.stream = Some(stream);
                let _ = self.write_more(ep, len);
            }
        }
    }
}

impl App for TargetServer {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _now: Instant, event: &Event, _: &mut Trace) {
        self.events += 1;
        match *event {
            Event::Incoming { incoming, .. } => {
                let _ = ep.accept(incoming);
            }
            Event::SessionEstablished { session, id } => {
                self.sessions.insert(session, id);
                self.on_established(ep, session);
            }
            Event::PathJoined { session, path, .. } => self.joined.push((session, path)),
            Event::StreamOpened { session, dir } => {
                let Some(mut view) = ep.session(session) else {
                    return;
                };
                let mut opened = Vec::new();
                while let Some(id) = view.accept(dir) {
                    self.accepted += 1;
                    if self.read {
                        opened.push(id);
                    }
                }
                for id in opened {
                    self.drain(ep, session, id);
                }
            }
            Event::StreamReadable { session, stream }
            | Event::StreamReset {
                session, stream, ..
            } if self.read => self.drain(ep, session, stream),
            Event::StreamFinished { .. } => self.finished += 1,
            Event::SessionClosed {
                session,
                ref reason,
            } => {
                self.closed.insert(session, reason.clone());
            }
            _ => {}
        }
    }
}

/// A client application for arenas: dials the (hostile) primary, reads and
/// verifies whatever it is sent, counts path events instead of keeping them
/// (its heap use is charged to the target's meter).
pub struct TargetClient {
    primary: SocketAddr,
    config: ClientConfig,
    payload: Payload,
    /// The session.
    pub session: Option<SessionHandle>,
    /// Established.
    pub established: bool,
    /// Why the session ended.
    pub closed: Option<CloseReason>,
    /// Bytes read per stream.
    pub read: BTreeMap<StreamId, u64>,
    /// Streams read to their end.
    pub finished: u64,
    /// Bytes that failed verification.
    pub corrupt: u64,
    /// `PathAdded` events.
    pub path_added: u64,
    /// `PathFailed` events, per code.
    pub path_failed: BTreeMap<ErrorCode, u64>,
    /// `PathDead` events, per code.
    pub path_dead: BTreeMap<ErrorCode, u64>,
    /// `StreamOpened` events.
    pub streams_opened: u64,
    /// Events seen.
    pub events: u64,
}

impl TargetClient {
    /// A client of the primary at `primary`, verifying against `payload`.
    pub fn new(primary: SocketAddr, config: ClientConfig, payload: Payload) -> Self {
        TargetClient {
            primary,
            config,
            payload,
            session: None,
            established: false,
            closed: None,
            read: BTreeMap::new(),
            finished: 0,
            corrupt: 0,
            path_added: 0,
            path_failed: BTreeMap::new(),
            path_dead: BTreeMap::new(),
            streams_opened: 0,
            events: 0,
        }
    }

    fn drain(&mut self, ep: &mut KwikEndpoint, id: StreamId) {
        let Some(h) = self.session else { return };
        let at = self.read.entry(id).or_default();
        let Some(mut stream) = ep.stream(h, id) else {
            return;
        };
        loop {
            match stream.read(usize::MAX) {
                Ok(Some(data)) => {
                    if !self.payload.verify(id, *at, &data) {
                        self.corrupt += data.len() as u64;
                    }
                    *at += data.len() as u64;
                }
                Ok(None) => {
                    self.finished += 1;
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl App for TargetClient {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _now: Instant, event: &Event, _: &mut Trace) {
        self.events += 1;
        match event {
            Event::SessionEstablished { .. } => self.established = true,
            Event::SessionClosed { reason, .. } => self.closed = Some(reason.clone()),
            Event::StreamOpened { session, dir } => {
                self.streams_opened += 1;
                let Some(mut view) = ep.session(*session) else {
                    return;
                };
                let ids: Vec<StreamId> = std::iter::from_fn(|| view.accept(*dir)).collect();
                for id in ids {
                    self.drain(ep, id);
                }
            }
            Event::StreamReadable { stream, .. } => self.drain(ep, *stream),
            Event::PathAdded { .. } => self.path_added += 1,
            Event::PathFailed { failure, .. } => {
                *self.path_failed.entry(failure.code).or_default() += 1
            }
            Event::PathDead { failure, .. } => {
                *self.path_dead.entry(failure.code).or_default() += 1
            }
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _: &mut Trace) -> bool {
        if self.session.is_none() {
            self.session = Some(
                ep.connect(now, self.primary, SERVER_NAME, &self.config)
                    .expect("connect"),
            );
            return true;
        }
        false
    }
}

// ----- the arena -----

/// Addresses and credentials of an arena, handed to the code that builds
/// the hostile node.
pub struct Ends {
    /// The hostile node's address.
    pub hostile: SocketAddr,
    /// The target's address.
    pub target: SocketAddr,
    /// The hostile node's seed.
    pub seed: u64,
    /// The certificate every server presents.
    pub cert: DevCert,
    /// The token key a target secondary trusts.
    pub key: TokenKey,
}

enum Attacker {
    Client,
    Primary,
}

enum Target {
    Server,
    Client,
}

/// Why an attack run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The target closed the attacked session.
    Closed,
    /// The attacker finished and the settle time passed.
    Settled,
    /// The fixed observation window passed.
    Window,
    /// The target's growth passed the abort threshold.
    Growth,
    /// The target's CPU time passed the abort threshold.
    Cpu,
    /// The virtual-time limit passed.
    TimeLimit,
    /// Nothing could happen any more.
    Idle,
}

/// How the attacked session stood at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still open.
    Open,
    /// Closed by the target (or its peer), for this reason.
    Closed(CloseReason),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Open => f.write_str("open"),
            Outcome::Closed(CloseReason::Protocol { code, .. }) => write!(f, "closed {code}"),
            Outcome::Closed(reason) => write!(f, "closed ({reason})"),
        }
    }
}

/// When an attack run stops (besides the target closing the session).
#[derive(Debug, Clone, Copy)]
pub struct StopWhen {
    /// Stop once the target's heap growth over its baseline passes this.
    pub growth_above: Option<u64>,
    /// Stop once the target's CPU time since the baseline passes this.
    pub cpu_above: Option<Duration>,
    /// After the attacker is done, go on this long (virtual) for the target
    /// to digest what is in flight.
    pub settle: Duration,
    /// Observe exactly this long (virtual) from the baseline instead of
    /// waiting for the attacker.
    pub window: Option<Duration>,
    /// Give up after this long (virtual) from the baseline.
    pub limit: Duration,
}

impl Default for StopWhen {
    fn default() -> Self {
        StopWhen {
            growth_above: None,
            cpu_above: None,
            settle: Duration::from_millis(500),
            window: None,
            limit: Duration::from_secs(60),
        }
    }
}

/// What an attack run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Highest heap growth of the target over its baseline (bytes).
    pub peak_growth: i64,
    /// Heap growth at the end of the run.
    pub end_growth: i64,
    /// Wall-clock time spent inside the target's calls since the baseline.
    pub cpu: Duration,
    /// The attacked session at the end.
    pub outcome: Outcome,
    /// Why the run stopped.
    pub stopped: Stopped,
    /// Whether the attacker had finished its script.
    pub attack_done: bool,
    /// Virtual time from the baseline to the end.
    pub elapsed: Duration,
    /// False if the counting allocator is not installed (growths are 0).
    pub metered: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "outcome {} after {:?} (stopped: {:?}, attack done: {}); peak growth {} bytes, \
             end growth {} bytes, target CPU {:.1} ms{}",
            self.outcome,
            self.elapsed,
            self.stopped,
            self.attack_done,
            self.peak_growth,
            self.end_growth,
            self.cpu.as_secs_f64() * 1e3,
            if self.metered {
                ""
            } else {
                " (NOT METERED: install kwik_sim::alloc::CountingAlloc)"
            }
        )
    }
}

/// One metered kwik endpoint under attack. See the [module docs](self).
pub struct Arena {
    /// The simulation.
    pub sim: Sim,
    /// The attacked kwik node.
    pub target: NodeId,
    /// The hostile node.
    pub attacker: NodeId,
    /// Addresses and credentials.
    pub ends: Ends,
    attacker_kind: Attacker,
    target_kind: Target,
    meter: MeterLease,
    base: Option<(i64, Duration, Duration)>,
}

/// The link between the two nodes of an arena: 1 Gbit/s, 10 ms RTT.
pub fn arena_link() -> LinkConfig {
    LinkConfig::new()
        .latency(Duration::from_millis(5))
        .rate_mbps(1000)
}

/// A kwik endpoint seeded from `seed` whose wall clock starts at
/// [`UNIX_START`] (so that tokens valid until [`VALID_UNTIL`] verify).
pub fn arena_endpoint(seed: u64, server: Option<ServerConfig>, now: Instant) -> KwikEndpoint {
    let mut cfg =
        kwik_core::EndpointConfig::new(crate::seeding::derive_key(seed, "abuse endpoint"));
    cfg.unix_time = Duration::from_secs(UNIX_START);
    KwikEndpoint::new(cfg, server, now)
}

impl Arena {
    fn ends(seed: u64) -> Ends {
        Ends {
            hostile: addr(2),
            target: addr(1),
            seed: seed.wrapping_mul(31).wrapping_add(7),
            cert: dev_cert(seed),
            key: arena_key(seed),
        }
    }

    /// A hostile client joined with a genuine token to a kwik secondary
    /// (a passive [`TargetServer`] serving [`DESCRIPTOR`]), running `steps`;
    /// established, baseline taken.
    ///
    /// # Panics
    /// If the join does not complete.
    pub fn joined_secondary(seed: u64, steps: Vec<Step>) -> Arena {
        let app = TargetServer::new(Payload::new(seed), ServerRole::Passive, false);
        let mut a = Arena::against_server(
            seed,
            app,
            |_| {},
            move |e: &Ends| {
                HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps)
                    .join(genuine_join(&e.key, e.target))
            },
        );
        a.establish(false).unwrap_or_else(|e| panic!("{e}"));
        a
    }

    /// A kwik server in `role` (reading what it is sent if `read`) and a
    /// [`HostileClient`] that sends a Hello and, once welcomed, `steps`;
    /// returned established.
    pub fn scripted_client(seed: u64, role: ServerRole, read: bool, steps: Vec<Step>) -> Arena {
        let app = TargetServer::new(Payload::new(seed), role, read);
        let mut a = Arena::against_server(
            seed,
            app,
            |_| {},
            move |e: &Ends| HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps),
        );
        a.establish(false).unwrap_or_else(|e| panic!("{e}"));
        a
    }

    /// A kwik server at `addr(1)` running `app` with kwik's default
    /// configuration (adjusted by `tune`; the server also trusts
    /// [`arena_key`] for joins naming it and serves [`DESCRIPTOR`]),
    /// attacked by the [`HostileClient`] `hostile` builds, at `addr(2)`.
    pub fn against_server(
        seed: u64,
        app: TargetServer,
        tune: impl FnOnce(&mut ServerConfig),
        hostile: impl FnOnce(&Ends) -> HostileClient,
    ) -> Arena {
        let ends = Self::ends(seed);
        let mut sim = Sim::new(seed);
        sim.set_path(ends.hostile, ends.target, arena_link());
        let (_, mut server_cfg) = configs(&ends.cert);
        server_cfg.trusted_keys = vec![ends.key.clone()];
        // Tokens name their secondary: this one answers to its own address
        // and the certificate name.
        server_cfg.path_addresses = vec![ends.target];
        server_cfg.path_server_name = Some(SERVER_NAME.to_string());
        tune(&mut server_cfg);
        let now = sim.now();
        let mut ep = arena_endpoint(seed, Some(server_cfg), now);
        let resource = Arc::new(PayloadResource::new(
            Payload::new(seed),
            StreamId::new(Side::Server, Dir::Uni, 0),
            RESOURCE_LEN,
        ));
        ep.serve_resource(Bytes::from_static(DESCRIPTOR), resource);
        let mut node = KwikNode::new(ends.target, ep, app);
        node.trace_events = false;
        let target = sim.add_node(&[ends.target], Box::new(node));
        let attacker = sim.add_node(&[ends.hostile], Box::new(hostile(&ends)));
        let meter = alloc::Meter::lease();
        sim.meter(target, meter.meter());
        Arena {
            sim,
            target,
            attacker,
            ends,
            attacker_kind: Attacker::Client,
            target_kind: Target::Server,
            meter,
            base: None,
        }
    }

    /// A kwik client at `addr(1)` with kwik's default configuration
    /// (adjusted by `tune`; its path policy allows nothing by default)
    /// dialling the [`HostilePrimary`] `primary` builds, at `addr(2)`.
    pub fn against_client(
        seed: u64,
        tune: impl FnOnce(&mut ClientConfig),
        primary: impl FnOnce(&Ends) -> HostilePrimary,
    ) -> Arena {
        let ends = Self::ends(seed);
        let mut sim = Sim::new(seed);
        sim.set_path(ends.hostile, ends.target, arena_link());
        let (mut client_cfg, _) = configs(&ends.cert);
        tune(&mut client_cfg);
        let now = sim.now();
        let ep = arena_endpoint(seed, None, now);
        let app = TargetClient::new(ends.hostile, client_cfg, Payload::new(seed));
        let mut node = KwikNode::new(ends.target, ep, app);
        node.trace_events = false;
        let attacker = sim.add_node(&[ends.hostile], Box::new(primary(&ends)));
        let target = sim.add_node(&[ends.target], Box::new(node));
        let meter = alloc::Meter::lease();
        sim.meter(target, meter.meter());
        Arena {
            sim,
            target,
            attacker,
            ends,
            attacker_kind: Attacker::Primary,
            target_kind: Target::Client,
            meter,
            base: None,
        }
    }

    /// The target server's app.
    ///
    /// # Panics
    /// If the target is a client.
    pub fn server(&self) -> &TargetServer {
        &self.sim.node::<KwikNode<TargetServer>>(self.target).app
    }

    /// The target server node, mutably (touches it).
    pub fn server_node(&mut self) -> &mut KwikNode<TargetServer> {
        self.sim.node_mut::<KwikNode<TargetServer>>(self.target)
    }

    /// The target client's app.
    ///
    /// # Panics
    /// If the target is a server.
    pub fn client(&self) -> &TargetClient {
        &self.sim.node::<KwikNode<TargetClient>>(self.target).app
    }

    /// The target client node, mutably (touches it).
    pub fn client_node(&mut self) -> &mut KwikNode<TargetClient> {
        self.sim.node_mut::<KwikNode<TargetClient>>(self.target)
    }

    /// The hostile client.
    pub fn hostile(&self) -> &HostileClient {
        self.sim.node::<HostileClient>(self.attacker)
    }

    /// The hostile primary.
    pub fn hostile_primary(&self) -> &HostilePrimary {
        self.sim.node::<HostilePrimary>(self.attacker)
    }

    fn target_established(sim: &Sim, target: NodeId, kind: &Target) -> bool {
        match kind {
            Target::Server => sim.node::<KwikNode<TargetServer>>(target).app.established(),
            Target::Client => sim.node::<KwikNode<TargetClient>>(target).app.established,
        }
    }

    fn target_closed(sim: &Sim, target: NodeId, kind: &Target) -> Option<CloseReason> {
        match kind {
            Target::Server => sim
                .node::<KwikNode<TargetServer>>(target)
                .app
                .close_reason()
                .cloned(),
            Target::Client => sim
                .node::<KwikNode<TargetClient>>(target)
                .app
                .closed
                .clone(),
        }
    }

    fn attacker_done(sim: &Sim, attacker: NodeId, kind: &Attacker) -> bool {
        match kind {
            Attacker::Client => {
                let h = sim.node::<HostileClient>(attacker);
                h.ended_at().is_some() || (h.established() && h.script_done())
            }
            Attacker::Primary => {
                let p = sim.node::<HostilePrimary>(attacker);
                p.ended_at().is_some() || (p.welcomed_at().is_some() && p.script_done())
            }
        }
    }

    fn attacker_connected(sim: &Sim, attacker: NodeId, kind: &Attacker) -> bool {
        match kind {
            Attacker::Client => sim.node::<HostileClient>(attacker).connected_at().is_some(),
            Attacker::Primary => sim.node::<HostilePrimary>(attacker).welcomed_at().is_some(),
        }
    }

    /// Runs until the attacked session is established on the target (or,
    /// with `connected_only`, until the hostile node completed the QUIC
    /// handshake), then takes the baseline of the target's heap use and
    /// CPU time.
    pub fn establish(&mut self, connected_only: bool) -> Result<(), String> {
        let (target, attacker) = (self.target, self.attacker);
        let (tk, ak) = (&self.target_kind, &self.attacker_kind);
        let result = self.sim.run_while(Duration::from_secs(10), |sim| {
            if connected_only {
                !Self::attacker_connected(sim, attacker, ak)
            } else {
                !Self::target_established(sim, target, tk)
                    && Self::target_closed(sim, target, tk).is_none()
            }
        });
        if let Err(e) = result {
            return Err(format!(
                "the session was never established: {e}\n{}",
                self.context()
            ));
        }
        let established = connected_only || Self::target_established(&self.sim, target, tk);
        if !established && let Some(reason) = Self::target_closed(&self.sim, target, tk) {
            return Err(format!(
                "the session closed before it was established: {reason}\n{}",
                self.context()
            ));
        }
        self.take_baseline();
        Ok(())
    }

    /// Takes the baseline now (growth and CPU are measured from here).
    pub fn take_baseline(&mut self) {
        self.meter.reset_peak();
        self.base = Some((self.meter.current(), self.meter.cpu(), self.sim.elapsed()));
    }

    /// Caps the target's heap growth over the baseline at `bytes`: past
    /// it, an allocation in the target fails and the process aborts (a
    /// safety net for runs in a child process; see
    /// [`Meter::set_limit`](crate::alloc::Meter::set_limit)).
    pub fn cap_growth(&self, bytes: u64) {
        let (base, _, _) = self.base.expect("baseline taken");
        self.meter
            .set_limit(Some(u64::try_from(base).unwrap_or(0).saturating_add(bytes)));
    }

    /// Highest heap growth of the target since the baseline.
    pub fn peak_growth(&self) -> i64 {
        let (base, _, _) = self.base.expect("baseline taken");
        self.meter.peak() - base
    }

    /// Heap growth of the target now.
    pub fn growth(&self) -> i64 {
        let (base, _, _) = self.base.expect("baseline taken");
        self.meter.current() - base
    }

    /// CPU time spent in the target since the baseline.
    pub fn cpu(&self) -> Duration {
        let (_, cpu, _) = self.base.expect("baseline taken");
        self.meter.cpu().saturating_sub(cpu)
    }

    /// Why the attacked session ended, if it did.
    pub fn closed(&self) -> Option<CloseReason> {
        Self::target_closed(&self.sim, self.target, &self.target_kind)
    }

    /// Runs the attack until `stop` says so (or the session closes) and
    /// reports.
    pub fn run_attack(&mut self, stop: StopWhen) -> Report {
        if self.base.is_none() {
            self.take_baseline();
        }
        let (base, cpu_base, start) = self.base.expect("set above");
        let meter = self.meter.meter();
        let (target, attacker) = (self.target, self.attacker);
        let (tk, ak) = (&self.target_kind, &self.attacker_kind);
        // Phase 1 runs until the attacker is done (or for the window);
        // phase 2 lets the target digest what is in flight for `settle`.
        // Both stop early on a close or an abort threshold.
        let mut stopped = Stopped::TimeLimit;
        let mut attacker_finished = false;
        let mut phases = 0;
        loop {
            let (limit, watch_attacker) = match (stop.window, attacker_finished) {
                (Some(w), _) => (w.saturating_sub(self.sim.elapsed() - start), false),
                (None, false) => (stop.limit.saturating_sub(self.sim.elapsed() - start), true),
                (None, true) => (stop.settle, false),
            };
            let mut why = None;
            let result = self.sim.run_while(limit, |sim| {
                if Self::target_closed(sim, target, tk).is_some() {
                    why = Some(Stopped::Closed);
                } else if stop
                    .growth_above
                    .is_some_and(|g| meter.peak() - base > g as i64)
                {
                    why = Some(Stopped::Growth);
                } else if stop
                    .cpu_above
                    .is_some_and(|c| meter.cpu().saturating_sub(cpu_base) > c)
                {
                    why = Some(Stopped::Cpu);
                } else if watch_attacker && Self::attacker_done(sim, attacker, ak) {
                    attacker_finished = true;
                    return false;
                }
                why.is_none()
            });
            phases += 1;
            match (why, result) {
                (Some(w), _) => {
                    stopped = w;
                    break;
                }
                (None, Err(e)) if e.reason == crate::sim::StallReason::Idle => {
                    stopped = Stopped::Idle;
                    break;
                }
                (None, Err(_)) => {
                    stopped = if stop.window.is_some() {
                        Stopped::Window
                    } else if attacker_finished {
                        Stopped::Settled
                    } else {
                        Stopped::TimeLimit
                    };
                    break;
                }
                // The attacker is done: settle.
                (None, Ok(_)) if phases < 2 => {}
                (None, Ok(_)) => break,
            }
        }
        let outcome = match self.closed() {
            Some(reason) => Outcome::Closed(reason),
            None => Outcome::Open,
        };
        Report {
            peak_growth: self.peak_growth(),
            end_growth: self.growth(),
            cpu: self.cpu(),
            outcome,
            stopped,
            attack_done: Self::attacker_done(&self.sim, attacker, ak),
            elapsed: self.sim.elapsed() - start,
            metered: alloc::installed(),
        }
    }

    /// What to print when a check fails: the hostile node, the target app's
    /// records and the trace's last lines.
    pub fn context(&self) -> String {
        let mut out = String::new();
        match self.attacker_kind {
            Attacker::Client => {
                let h = self.hostile();
                let _ = writeln!(out, "hostile: {h:?}");
                let _ = writeln!(
                    out,
                    "hostile close: {:?} ({:?})",
                    h.close_code().and_then(ErrorCode::from_wire),
                    h.close_reason()
                );
            }
            Attacker::Primary => {
                let p = self.hostile_primary();
                let _ = writeln!(out, "hostile primary: {p:?}");
                let _ = writeln!(
                    out,
                    "hostile close: {:?} ({:?})",
                    p.close_code().and_then(ErrorCode::from_wire),
                    p.close_reason()
                );
            }
        }
        match self.target_kind {
            Target::Server => {
                let s = self.server();
                let _ = writeln!(
                    out,
                    "target server: sessions {:?} joined {:?} closed {:?} accepted {} \
                     received {:?} corrupt {} events {}",
                    s.sessions, s.joined, s.closed, s.accepted, s.received, s.corrupt, s.events
                );
            }
            Target::Client => {
                let c = self.client();
                let _ = writeln!(
                    out,
                    "target client: established {} closed {:?} read {:?} corrupt {} \
                     path failed {:?} dead {:?} added {} events {}",
                    c.established,
                    c.closed,
                    c.read,
                    c.corrupt,
                    c.path_failed,
                    c.path_dead,
                    c.path_added,
                    c.events
                );
            }
        }
        if self.base.is_some() {
            let _ = writeln!(
                out,
                "target heap growth: peak {} now {}; CPU {:?}",
                self.peak_growth(),
                self.growth(),
                self.cpu()
            );
        }
        let lines = self.sim.trace().lines();
        for l in &lines[lines.len().saturating_sub(60)..] {
            let _ = writeln!(out, "{l}");
        }
        out
    }
}

// ----- the canned patterns -----

/// A canned abuse pattern, run against one session of a target with kwik's
/// default configuration (see [`run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pattern {
    /// After the `Welcome`, one-byte records in order on one client stream
    /// up to the stream window; the server does not read.
    TinyRecords,
    /// One-byte records at offsets 1, 3, 5, … up to the window.
    GappedTinyRecords,
    /// One-byte records from the window's last offset down to 0.
    DescendingTinyRecords,
    /// 200 000 one-byte records in order plus 20 000 duplicates aimed at
    /// the highest held offsets, then a FIN; the server does not read
    /// (unless [`Options::reading`]).
    DuplicateTinyRecords,
    /// A client that completes the QUIC handshake, never sends `Hello`, and
    /// opens lanes and pushes data on them for 2 s.
    PreHandshakeLanes,
    /// A client joined to a secondary (genuine token) sends 20 000
    /// `StreamCredit` and 20 000 `StopSending` naming fresh server streams.
    FreshIdCredits,
    /// A client of a primary sends 100 000 `Ack`s naming arbitrary streams
    /// with 64 valid ranges each.
    ArbitraryAcks,
    /// A client sends a primary 100 000 `Ack`s (64 valid ranges each) for
    /// the stream the primary serves (legitimate-looking acknowledgements
    /// that the ledger must process).
    ServedAcks,
    /// A primary sends its client 100 000 `AddPath`s to addresses the
    /// client's policy does not allow.
    RefusedAddPaths,
    /// A client joined to a secondary that serves a resource sends 100 000
    /// `Delegate`s naming it.
    DelegateFlood,
}

impl Pattern {
    /// Every pattern, in the order the benchmark runs them.
    pub const ALL: [Pattern; 10] = [
        Pattern::TinyRecords,
        Pattern::GappedTinyRecords,
        Pattern::DescendingTinyRecords,
        Pattern::DuplicateTinyRecords,
        Pattern::PreHandshakeLanes,
        Pattern::FreshIdCredits,
        Pattern::ArbitraryAcks,
        Pattern::ServedAcks,
        Pattern::RefusedAddPaths,
        Pattern::DelegateFlood,
    ];

    /// The pattern's name in benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::TinyRecords => "tiny-records",
            Pattern::GappedTinyRecords => "gapped-tiny-records",
            Pattern::DescendingTinyRecords => "descending-tiny-records",
            Pattern::DuplicateTinyRecords => "duplicate-tiny-records",
            Pattern::PreHandshakeLanes => "pre-handshake-lanes",
            Pattern::FreshIdCredits => "fresh-id-credits",
            Pattern::ArbitraryAcks => "arbitrary-acks",
            Pattern::ServedAcks => "served-acks",
            Pattern::RefusedAddPaths => "refused-addpaths",
            Pattern::DelegateFlood => "delegate-flood",
        }
    }

    /// The pattern called `name`, if any.
    pub fn from_name(name: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// In-order one-byte records of the duplicate pattern.
pub const DUPLICATE_TOTAL: u64 = 200_000;
/// Duplicates of the duplicate pattern.
pub const DUPLICATE_COPIES: u64 = 20_000;
/// Messages of each kind in the fresh-id pattern.
pub const FRESH_IDS: u64 = 20_000;
/// Acks of the arbitrary-ack pattern.
pub const ARBITRARY_ACKS: u64 = 100_000;
/// Acks of the served-ack pattern: 64 ranges each, about 11 MB on the wire,
/// the order of the tiny-record pattern's 14 MB. Every one is processed
/// (they name a stream the primary serves), so the CPU it costs grows with
/// the bytes the peer sends — about 5 µs per Ack.
pub const SERVED_ACKS: u64 = 10_000;
/// AddPaths of the refused-AddPath pattern.
pub const REFUSED_ADD_PATHS: u64 = 100_000;
/// Delegates of the delegate-flood pattern.
pub const DELEGATES: u64 = 100_000;
/// Lanes the pre-handshake pattern tries to open.
pub const PRE_HANDSHAKE_LANES: u64 = 1024;
/// How long the pre-handshake pattern is observed.
pub const PRE_HANDSHAKE_WINDOW: Duration = Duration::from_secs(2);

/// Knobs of [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Simulation seed.
    pub seed: u64,
    /// The server reads what it is sent (only [`Pattern::DuplicateTinyRecords`]
    /// and the tiny-record patterns look at it).
    pub reading: bool,
    /// When to stop early.
    pub stop: StopWhen,
}

impl Options {
    /// Defaults for `seed`: the server does not read, no abort threshold.
    pub fn new(seed: u64) -> Self {
        Options {
            seed,
            reading: false,
            stop: StopWhen::default(),
        }
    }
}

/// Builds the arena of `pattern` (not yet established).
pub fn arena(pattern: Pattern, opts: &Options) -> Arena {
    let seed = opts.seed;
    let payload = Payload::new(seed);
    let w = window();
    let stream = upload_stream();
    let server = |role| TargetServer::new(Payload::new(seed), role, opts.reading);
    let hello = |steps: Vec<Step>| {
        move |e: &Ends| HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps)
    };
    let join = |steps: Vec<Step>| {
        move |e: &Ends| {
            HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps)
                .join(genuine_join(&e.key, e.target))
        }
    };
    match pattern {
        Pattern::TinyRecords => {
            let records = tiny_records(stream, 0..w, &payload);
            Arena::against_server(
                seed,
                server(ServerRole::Passive),
                |_| {},
                hello(vec![Step::Mark, Step::Lane(records)]),
            )
        }
        Pattern::GappedTinyRecords => {
            let records = tiny_records(stream, (1..w).step_by(2), &payload);
            Arena::against_server(
                seed,
                server(ServerRole::Passive),
                |_| {},
                hello(vec![Step::Mark, Step::Lane(records)]),
            )
        }
        Pattern::DescendingTinyRecords => {
            let records = tiny_records(stream, (0..w).rev(), &payload);
            Arena::against_server(
                seed,
                server(ServerRole::Passive),
                |_| {},
                hello(vec![Step::Mark, Step::Lane(records)]),
            )
        }
        Pattern::DuplicateTinyRecords => {
            let records =
                duplicate_tiny_records(stream, DUPLICATE_TOTAL, DUPLICATE_COPIES, &payload);
            Arena::against_server(
                seed,
                server(ServerRole::Passive),
                |_| {},
                hello(vec![Step::Mark, Step::Lane(records)]),
            )
        }
        Pattern::PreHandshakeLanes => Arena::against_server(
            seed,
            server(ServerRole::Passive),
            |_| {},
            |e| {
                HostileClient::scripted(
                    e.hostile,
                    e.target,
                    e.seed,
                    &e.cert,
                    [
                        Step::Mark,
                        Step::Control(partial_control_record(60_000)),
                        Step::FloodLanes {
                            lanes: PRE_HANDSHAKE_LANES,
                            per_lane: 1 << 30,
                        },
                    ],
                )
                .without_hello()
            },
        ),
        Pattern::FreshIdCredits => Arena::against_server(
            seed,
            server(ServerRole::Passive),
            |_| {},
            join(vec![Step::Mark, Step::Control(fresh_id_credits(FRESH_IDS))]),
        ),
        Pattern::ArbitraryAcks => Arena::against_server(
            seed,
            server(ServerRole::Passive),
            |_| {},
            hello(vec![
                Step::Mark,
                Step::Control(arbitrary_acks(ARBITRARY_ACKS, seed)),
            ]),
        ),
        Pattern::ServedAcks => Arena::against_server(
            seed,
            server(ServerRole::Serve { len: 64 << 10 }),
            |_| {},
            hello(vec![
                Step::AwaitServerBytes(1),
                Step::Mark,
                Step::Control(served_acks(
                    SERVED_ACKS,
                    StreamId::new(Side::Server, Dir::Uni, 0),
                )),
            ]),
        ),
        Pattern::RefusedAddPaths => Arena::against_client(
            seed,
            |_| {},
            |e| {
                HostilePrimary::new(
                    e.hostile,
                    e.seed,
                    &e.cert,
                    [
                        PrimaryStep::Mark,
                        PrimaryStep::ControlBytes(refused_add_paths(REFUSED_ADD_PATHS)),
                    ],
                )
            },
        ),
        Pattern::DelegateFlood => Arena::against_server(
            seed,
            server(ServerRole::Passive),
            |_| {},
            join(vec![
                Step::Mark,
                Step::Control(delegate_flood(DELEGATES, JOIN_PATH)),
            ]),
        ),
    }
}

/// Runs `pattern` (establishes the session, takes the baseline, attacks)
/// and returns the arena, for inspection, with its report.
pub fn run(pattern: Pattern, opts: &Options) -> Result<(Arena, Report), String> {
    let mut a = arena(pattern, opts);
    let pre_handshake = pattern == Pattern::PreHandshakeLanes;
    a.establish(pre_handshake)?;
    let mut stop = opts.stop;
    if pre_handshake {
        stop.window = Some(PRE_HANDSHAKE_WINDOW);
    }
    let report = a.run_attack(stop);
    Ok((a, report))
}
