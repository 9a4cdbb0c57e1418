//! [`KwikEndpoint`]: the sans-IO state machine of one UDP socket's worth of
//! kwik sessions.
//!
//! Inputs are datagrams, the passage of time and application calls; outputs
//! come from one method, [`KwikEndpoint::poll_output`], drained until it
//! returns [`Output::Timeout`]. The driver loop is therefore always the same:
//!
//! ```text
//! loop {
//!     match endpoint.poll_output(&mut buf) {
//!         Output::Transmit(t) => socket.send_to(&buf[..t.size], t.destination),
//!         Output::Event(e)    => app.handle(e, &mut endpoint),
//!         Output::Timeout(t)  => { wait for a datagram or t; feed it in; }
//!     }
//! }
//! ```
//!
//! A session may own several QUIC connections (a client's secondary paths);
//! every connection is routed to its session and path. Sessions are kept in
//! ordered maps and served in a fixed order, so the same seed and the same
//! inputs always produce the same outputs.
//!
//! The server side guards itself at the door (see [`crate::defence`] for
//! why): every new connection attempt is checked against the ban list, asked
//! for a Retry when the [`RetryPolicy`](crate::RetryPolicy) says so, and
//! refused beyond the half-open and session limits, all before any state is
//! kept for it; a handshake that does not complete in time is closed; a
//! session this side closes for the peer's protocol fault bans the peer's
//! IP. All of it is counted in [`EndpointStats`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{ConnectionHandle, DatagramEvent, EcnCodepoint, VarInt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::candidate::Candidate;
use crate::config::{ClientConfig, EndpointConfig, ServerConfig, TransportConfig};
use crate::conn::Conn;
use crate::defence::{BanList, EndpointClock, EndpointStats, Handshakes};
use crate::error::{CloseReason, ConnectError, ErrorCode};
use crate::event::{Event, Output, Transmit};
use crate::ids::{IncomingId, SessionHandle, SessionId, Side, StreamId};
use crate::paths::{PathId, PathPolicy};
use crate::probe_gate::ProbeGate;
use crate::seeded::{SeededCids, Seeds};
use crate::session::{Ctx, Phase, PrimarySettings, Request, ScalingPool, Session};
use crate::token::TokenVerifier;
use crate::transfer::SharedResource;
use crate::view::{SessionView, StreamView};

/// Sessions waiting for a step (driving, or sending), first come first
/// served. A flag in the session keeps it from being queued twice; unlike a
/// set keyed by handle, pushing and popping cost nothing per datagram.
#[derive(Debug, Default)]
pub(crate) struct WorkQueue(VecDeque<SessionHandle>);

impl WorkQueue {
    /// Queues `handle` unless its `queued` flag says it is already in.
    pub(crate) fn push(&mut self, queued: &mut bool, handle: SessionHandle) {
        if !std::mem::replace(queued, true) {
            self.0.push_back(handle);
        }
    }

    /// Puts back a session that stays queued (its flag is still set).
    fn requeue(&mut self, handle: SessionHandle) {
        self.0.push_back(handle);
    }

    fn pop(&mut self) -> Option<SessionHandle> {
        self.0.pop_front()
    }
}

/// The incoming attempt is unknown (already decided, or never existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownIncoming;

impl std::fmt::Display for UnknownIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unknown incoming connection")
    }
}
impl std::error::Error for UnknownIncoming {}

/// Error of [`KwikEndpoint::retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryError {
    /// The incoming attempt is unknown (already decided, or never existed).
    UnknownIncoming,
    /// The attempt already came back from a Retry (its address is
    /// validated); QUIC allows one Retry per connection. It is still
    /// pending: accept or refuse it.
    AlreadyRetried,
}

impl std::fmt::Display for RetryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RetryError::UnknownIncoming => "unknown incoming connection",
            RetryError::AlreadyRetried => "the connection attempt was already retried",
        })
    }
}
impl std::error::Error for RetryError {}

/// Reason phrase of the close sent when a handshake times out.
const HANDSHAKE_TIMEOUT_REASON: &[u8] = b"handshake timeout";

/// A sans-IO kwik endpoint: clients and servers of any number of sessions
/// over one UDP socket. It is driven by one loop: feed inputs ([`handle_datagram`](Self::handle_datagram),
/// [`handle_timeout`](Self::handle_timeout), application calls), then drain
/// [`poll_output`](Self::poll_output) until it returns [`Output::Timeout`].
pub struct KwikEndpoint {
    config: EndpointConfig,
    quinn: quinn_proto::Endpoint,
    server: Option<ServerConfig>,
    /// quinn-proto's server settings, the base of each accepted connection's.
    quinn_server: Option<Arc<quinn_proto::ServerConfig>>,
    token_key: [u8; 64],
    sessions: BTreeMap<SessionHandle, Session>,
    /// Connections given a qlog trace so far (numbers their traces).
    #[cfg(feature = "qlog")]
    traced_connections: u64,
    /// Every session's next deadline, earliest first: finding the next
    /// timer and the expired sessions costs O(log n), not a scan of
    /// every session (a server may hold tens of thousands).
    timers: BTreeSet<(Instant, SessionHandle)>,
    /// quinn-proto connection handle (reused after drain) → session and path.
    by_conn: Vec<Option<(SessionHandle, PathId)>>,
    /// Client configurations sessions dial their secondary paths with.
    dial_configs: BTreeMap<SessionHandle, ClientConfig>,
    tokens: TokenVerifier,
    resources: BTreeMap<Bytes, SharedResource>,
    /// Candidates for automatic scaling and the paths it holds.
    scaling: ScalingPool,
    incoming: BTreeMap<IncomingId, quinn_proto::Incoming>,
    next_session: u64,
    next_incoming: u64,
    session_ids: StdRng,
    start: Instant,
    now: Instant,
    events: VecDeque<Event>,
    /// Sessions with input or calls not yet digested.
    dirty: WorkQueue,
    /// Sessions that may have datagrams to send, served round-robin.
    sending: WorkQueue,
    /// Datagrams the endpoint itself must send (refusals, retries, resets).
    responses: VecDeque<(Transmit, Vec<u8>)>,
    scratch: Vec<u8>,
    /// quinn-proto's view of wall-clock time (Retry token expiry).
    clock: Arc<EndpointClock>,
    /// Server sessions whose kwik handshake is under way, with deadlines.
    handshakes: Handshakes,
    /// Server sessions held (any phase, until drained).
    server_sessions: usize,
    bans: BanList,
    stats: EndpointStats,
}

impl std::fmt::Debug for KwikEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KwikEndpoint")
            .field("sessions", &self.sessions.len())
            .field("server", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

fn ecn_bits(ecn: Option<EcnCodepoint>) -> Option<u8> {
    ecn.map(|e| e as u8)
}

fn transmit_of(t: &quinn_proto::Transmit) -> Transmit {
    Transmit {
        destination: t.destination,
        size: t.size,
        segment_size: t.segment_size,
        ecn: ecn_bits(t.ecn),
        src_ip: t.src_ip,
    }
}

impl KwikEndpoint {
    /// Creates an endpoint; with a server configuration it also accepts
    /// sessions. `now` anchors the endpoint's notion of time (and
    /// [`EndpointConfig::unix_time`] is the wall-clock time at `now`).
    pub fn new(config: EndpointConfig, server: Option<ServerConfig>, now: Instant) -> Self {
        let seeds = Seeds::derive(config.seed);
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seeds.reset_key);
        let mut qcfg = quinn_proto::EndpointConfig::new(Arc::new(reset_key));
        let cid_seed = seeds.cids;
        qcfg.cid_generator(move || Box::new(SeededCids::new(cid_seed)));
        qcfg.rng_seed(Some(seeds.quinn));
        let config_unix_time = config.unix_time;
        let mut endpoint = Self {
            quinn: quinn_proto::Endpoint::new(Arc::new(qcfg), None, true, None),
            config,
            server: None,
            quinn_server: None,
            token_key: seeds.token_key,
            sessions: BTreeMap::new(),
            #[cfg(feature = "qlog")]
            traced_connections: 0,
            timers: BTreeSet::new(),
            by_conn: Vec::new(),
            dial_configs: BTreeMap::new(),
            tokens: TokenVerifier::default(),
            resources: BTreeMap::new(),
            scaling: ScalingPool::default(),
            incoming: BTreeMap::new(),
            next_session: 0,
            next_incoming: 0,
            session_ids: StdRng::from_seed(seeds.session_ids),
            start: now,
            now,
            events: VecDeque::new(),
            dirty: WorkQueue::default(),
            sending: WorkQueue::default(),
            responses: VecDeque::new(),
            scratch: Vec::new(),
            clock: EndpointClock::new(config_unix_time),
            handshakes: Handshakes::default(),
            server_sessions: 0,
            bans: BanList::default(),
            stats: EndpointStats::default(),
        };
        endpoint.set_server_config(server);
        endpoint
    }

    /// Replaces the server configuration (`None` stops accepting). Sessions
    /// already accepted keep theirs.
    pub fn set_server_config(&mut self, server: Option<ServerConfig>) {
        let quinn_server = server.as_ref().map(|s| {
            let token_key =
                ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&self.token_key);
            let crypto = if s.early_data {
                s.crypto_early.clone()
            } else {
                s.crypto.clone()
            };
            let mut q = quinn_proto::ServerConfig::new(crypto, Arc::new(token_key));
            // Each accepted connection gets its own transport settings (its
            // own probe gate); these only serve quinn-proto's stateless
            // answers.
            q.transport_config(Arc::new(s.transport.quinn(
                Side::Server,
                &ProbeGate::default(),
                s.early_data,
            )));
            q.validation_token.sent(0);
            q.time_source(self.clock.clone());
            Arc::new(q)
        });
        self.quinn.set_server_config(quinn_server.clone());
        self.quinn_server = quinn_server;
        self.server = server;
    }

    /// Changes the most datagrams returned in one GSO batch (1 disables
    /// batching, e.g. after the socket refused a GSO send).
    pub fn set_max_gso_segments(&mut self, segments: usize) {
        self.config.max_gso_segments = segments.max(1);
    }

    /// The time of the latest input.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Wall-clock time (since the Unix epoch) at the latest input.
    pub fn unix_now(&self) -> Duration {
        self.config.unix_time + self.now.saturating_duration_since(self.start)
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
            self.clock.set(self.unix_now());
            self.bans.purge(now);
        }
    }

    /// Starts a client session to `addr`, validating the server certificate
    /// for `server_name`. Progress is reported by events.
    pub fn connect(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
    ) -> Result<SessionHandle, ConnectError> {
        self.advance(now);
        let (ch, quic, gate) = self.dial(addr, server_name, config, &config.transport)?;
        let handle = self.next_handle();
        let conn = self.wrap_conn(handle, PathId::PRIMARY, ch, quic, gate, &config.transport);
        let mut session = Session::new(
            handle,
            Side::Client,
            conn,
            addr,
            server_name,
            config.transport.clone(),
            0,
            config.path_policy.clone(),
            PrimarySettings {
                token_key: None,
                token_lifetime: Duration::ZERO,
                add_path_timeout: Duration::ZERO,
                auto_reassign: false,
                path_retry: None,
                autoscale: None,
            },
            self.now,
        );
        session.set_remembered(config.remembered.clone());
        self.dial_configs.insert(handle, config.clone());
        self.insert_session(session);
        Ok(handle)
    }

    fn dial(
        &mut self,
        addr: SocketAddr,
        server_name: &str,
        config: &ClientConfig,
        transport: &TransportConfig,
    ) -> Result<(ConnectionHandle, quinn_proto::Connection, ProbeGate), ConnectError> {
        let mut qcfg = quinn_proto::ClientConfig::new(config.crypto.clone());
        let gate = ProbeGate::default();
        let mut quic_transport = transport.quinn(Side::Client, &gate, false);
        self.trace_connection(&mut quic_transport, transport, Side::Client, addr);
        qcfg.transport_config(Arc::new(quic_transport));
        self.quinn
            .connect(self.now, qcfg, addr, server_name)
            .map(|(ch, quic)| (ch, quic, gate))
            .map_err(|e| match e {
                quinn_proto::ConnectError::InvalidServerName(name) => {
                    ConnectError::InvalidServerName(name)
                }
                quinn_proto::ConnectError::InvalidRemoteAddress(a) => {
                    ConnectError::InvalidRemoteAddress(a)
                }
                other => ConnectError::Quic(other.to_string()),
            })
    }

    /// Gives a new connection its qlog trace, if the configuration asks
    /// for one (feature `qlog`).
    #[allow(unused_variables)]
    fn trace_connection(
        &mut self,
        quic: &mut quinn_proto::TransportConfig,
        transport: &TransportConfig,
        side: Side,
        remote: SocketAddr,
    ) {
        #[cfg(feature = "qlog")]
        if let Some(sink) = &transport.qlog {
            self.traced_connections += 1;
            let target = crate::QlogTarget {
                side,
                remote,
                connection: self.traced_connections,
            };
            quic.qlog_stream(sink.stream(&target, self.now));
        }
    }

    fn next_handle(&mut self) -> SessionHandle {
        let handle = SessionHandle(self.next_session);
        self.next_session += 1;
        handle
    }

    fn wrap_conn(
        &mut self,
        session: SessionHandle,
        path: PathId,
        ch: ConnectionHandle,
        quic: quinn_proto::Connection,
        gate: ProbeGate,
        transport: &TransportConfig,
    ) -> Conn {
        if self.by_conn.len() <= ch.0 {
            self.by_conn.resize(ch.0 + 1, None);
        }
        self.by_conn[ch.0] = Some((session, path));
        Conn::new(path, ch, quic, gate, transport, self.now)
    }

    /// Dials the secondary paths a session asked for.
    fn serve_requests(&mut self, handle: SessionHandle) {
        let Some(session) = self.sessions.get_mut(&handle) else {
            return;
        };
        if session.requests.is_empty() {
            return;
        }
        let requests = std::mem::take(&mut session.requests);
        let Some(config) = self.dial_configs.get(&handle).cloned() else {
            return;
        };
        let mut transport = config.transport.clone();
        transport.keep_alive_interval = Some(config.path_policy.keep_alive);
        for request in requests {
            let Request::Dial {
                path,
                address,
                server_name,
            } = request;
            let result = self
                .dial(address, &server_name, &config, &transport)
                .map(|(ch, quic, gate)| self.wrap_conn(handle, path, ch, quic, gate, &transport));
            let Some(session) = self.sessions.get_mut(&handle) else {
                return;
            };
            match result {
                Ok(conn) => session.attach(conn),
                Err(e) => session.note_dial_failure(path, format!("cannot dial {address}: {e}")),
            }
        }
        if let Some(session) = self.sessions.get_mut(&handle) {
            self.dirty.push(&mut session.queued_drive, handle);
        }
    }

    fn insert_session(&mut self, mut session: Session) {
        let handle = session.handle;
        session.start(self.now, &mut self.events);
        self.dirty.push(&mut session.queued_drive, handle);
        self.sessions.insert(handle, session);
    }

    /// Feeds a received UDP datagram.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<u8>,
        data: BytesMut,
    ) {
        self.advance(now);
        let ecn = ecn.and_then(EcnCodepoint::from_bits);
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        match self
            .quinn
            .handle(self.now, remote, local_ip, ecn, data, &mut buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some((handle, path)) = self.by_conn.get(ch.0).copied().flatten()
                    && let Some(session) = self.sessions.get_mut(&handle)
                    && let Some(conn) = session.conns.get_mut(&path)
                {
                    conn.quic.handle_event(event);
                    conn.note_received(self.now);
                    self.dirty.push(&mut session.queued_drive, handle);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.on_incoming(incoming),
            Some(DatagramEvent::Response(t)) => {
                self.responses
                    .push_back((transmit_of(&t), buf[..t.size].to_vec()));
            }
            None => {}
        }
        self.scratch = buf;
    }

    /// Handshakes under way: attempts awaiting the application plus
    /// accepted server sessions not yet established.
    fn half_open(&self) -> usize {
        self.incoming.len() + self.handshakes.len()
    }

    /// The door: bans, Retry, limits, then accept or ask the application.
    fn on_incoming(&mut self, incoming: quinn_proto::Incoming) {
        let Some(server) = &self.server else {
            self.quinn.ignore(incoming);
            return;
        };
        self.stats.incoming += 1;
        let remote = incoming.remote_address();
        let validated = incoming.remote_address_validated();
        let (retry, auto) = (server.retry, server.auto_accept);
        let (max_half_open, max_sessions) = (server.max_half_open, server.max_sessions);
        if self.bans.is_banned(remote.ip(), self.now) {
            tracing::debug!(target: crate::log::ENDPOINT, %remote, "refusing a banned address");
            self.stats.refused_banned += 1;
            self.refuse_now(incoming);
            return;
        }
        let incoming = if !validated && retry.wants_retry(self.half_open()) {
            match self.send_retry(incoming) {
                None => return,
                Some(incoming) => incoming,
            }
        } else {
            incoming
        };
        if self.half_open() >= max_half_open
            || self.server_sessions + self.incoming.len() >= max_sessions
        {
            tracing::debug!(target: crate::log::ENDPOINT, %remote, half_open = self.half_open(), sessions = self.server_sessions, "refusing: limit reached");
            self.stats.refused_limit += 1;
            self.refuse_now(incoming);
            return;
        }
        let id = IncomingId(self.next_incoming);
        self.next_incoming += 1;
        self.incoming.insert(id, incoming);
        if auto {
            let _ = self.accept(id);
        } else {
            self.events.push_back(Event::Incoming {
                incoming: id,
                remote,
                address_validated: validated,
            });
        }
    }

    /// Answers with a Retry and forgets the attempt; gives it back if QUIC
    /// forbids a Retry (it already came back from one).
    fn send_retry(&mut self, incoming: quinn_proto::Incoming) -> Option<quinn_proto::Incoming> {
        let mut buf = Vec::new();
        match self.quinn.retry(incoming, &mut buf) {
            Ok(t) => {
                self.stats.retries_sent += 1;
                self.push_response(t, buf);
                None
            }
            Err(e) => Some(e.into_incoming()),
        }
    }

    fn refuse_now(&mut self, incoming: quinn_proto::Incoming) {
        let mut buf = Vec::new();
        let t = self.quinn.refuse(incoming, &mut buf);
        self.push_response(t, buf);
    }

    /// Asks a pending attempt to prove its address: a QUIC Retry is sent
    /// and the attempt forgotten; a client that really is at its address
    /// comes back as a new attempt whose
    /// [`Event::Incoming`]`.address_validated` is true.
    pub fn retry(&mut self, incoming: IncomingId) -> Result<(), RetryError> {
        let inc = self
            .incoming
            .remove(&incoming)
            .ok_or(RetryError::UnknownIncoming)?;
        match self.send_retry(inc) {
            None => Ok(()),
            Some(inc) => {
                self.incoming.insert(incoming, inc);
                Err(RetryError::AlreadyRetried)
            }
        }
    }

    /// Accepts a pending connection; the session is established once the
    /// kwik handshake completes. Returns `Ok(None)` if quinn-proto rejected
    /// the attempt (the peer is told).
    pub fn accept(
        &mut self,
        incoming: IncomingId,
    ) -> Result<Option<SessionHandle>, UnknownIncoming> {
        let inc = self.incoming.remove(&incoming).ok_or(UnknownIncoming)?;
        let Some(server) = self.server.clone() else {
            self.quinn.ignore(inc);
            return Ok(None);
        };
        let remote = inc.remote_address();
        let mut buf = Vec::new();
        let gate = ProbeGate::default();
        let mut quic_transport = server
            .transport
            .quinn(Side::Server, &gate, server.early_data);
        self.trace_connection(&mut quic_transport, &server.transport, Side::Server, remote);
        let quinn_config = self.quinn_server.as_ref().map(|base| {
            let mut q = (**base).clone();
            q.transport_config(Arc::new(quic_transport));
            Arc::new(q)
        });
        match self.quinn.accept(inc, self.now, &mut buf, quinn_config) {
            Ok((ch, quic)) => {
                let handle = self.next_handle();
                let conn =
                    self.wrap_conn(handle, PathId::PRIMARY, ch, quic, gate, &server.transport);
                let deadline = (!server.handshake_timeout.is_zero())
                    .then(|| self.now + server.handshake_timeout);
                self.handshakes.insert(handle, deadline);
                self.server_sessions += 1;
                self.stats.handshakes_accepted += 1;
                let session = Session::new(
                    handle,
                    Side::Server,
                    conn,
                    remote,
                    "",
                    server.transport.clone(),
                    server.features,
                    PathPolicy::default(),
                    PrimarySettings {
                        token_key: server.token_key.clone(),
                        token_lifetime: server.token_lifetime,
                        add_path_timeout: server.add_path_timeout,
                        auto_reassign: server.auto_reassign,
                        path_retry: server.path_retry.clone(),
                        autoscale: server.autoscale.clone(),
                    },
                    self.now,
                );
                self.insert_session(session);
                Ok(Some(handle))
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.push_response(t, buf);
                }
                Ok(None)
            }
        }
    }

    /// Refuses a pending connection; the client sees a connection refusal.
    pub fn refuse(&mut self, incoming: IncomingId) -> Result<(), UnknownIncoming> {
        let inc = self.incoming.remove(&incoming).ok_or(UnknownIncoming)?;
        self.refuse_now(inc);
        Ok(())
    }

    fn push_response(&mut self, t: quinn_proto::Transmit, mut buf: Vec<u8>) {
        buf.truncate(t.size);
        self.responses.push_back((transmit_of(&t), buf));
    }

    /// Tells the endpoint that time has passed; fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        self.expire_handshakes();
        while let Some(&(at, handle)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(session) = self.sessions.get_mut(&handle) else {
                continue;
            };
            // Re-indexed once the drive settled its connections.
            session.scheduled = None;
            for conn in session.conns.values_mut() {
                if conn.quic.poll_timeout().is_some_and(|d| d <= now) {
                    conn.quic.handle_timeout(now);
                }
            }
            self.dirty.push(&mut session.queued_drive, handle);
        }
    }

    /// The next output. Call after every input until it returns
    /// [`Output::Timeout`]; `buf` receives the bytes of a `Transmit`.
    pub fn poll_output(&mut self, buf: &mut Vec<u8>) -> Output {
        if let Some(event) = self.next_event() {
            return Output::Event(event);
        }
        self.drive_dirty();
        if let Some(event) = self.next_event() {
            return Output::Event(event);
        }
        if let Some((transmit, bytes)) = self.responses.pop_front() {
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Output::Transmit(transmit);
        }
        while let Some(handle) = self.sending.pop() {
            let Some(session) = self.sessions.get_mut(&handle) else {
                continue;
            };
            buf.clear();
            if let Some(t) =
                poll_session_transmit(session, self.now, self.config.max_gso_segments, buf)
            {
                // Sending raises no application event; the deadline is
                // refreshed once the session has nothing more to send.
                self.sending.requeue(handle);
                return Output::Transmit(transmit_of(&t));
            }
            session.queued_send = false;
            // Sending may have produced connection-id requests or a drain.
            self.settle_endpoint_events(handle);
            if let Some(event) = self.next_event() {
                return Output::Event(event);
            }
        }
        let sessions = self.timers.first().map(|&(at, _)| at);
        let handshakes = self.handshakes.next_deadline();
        Output::Timeout(match (sessions, handshakes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The next event for the application; a session's close is counted
    /// here, where every close passes exactly once.
    fn next_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        if let Event::SessionClosed { reason, .. } = &event {
            self.stats.sessions_closed.count(reason.kind());
        }
        Some(event)
    }

    /// Closes the server sessions whose kwik handshake is overdue.
    fn expire_handshakes(&mut self) {
        while let Some(handle) = self.handshakes.pop_expired(self.now) {
            let Some(session) = self.sessions.get_mut(&handle) else {
                continue;
            };
            // A session established by a 0-RTT Hello stays half-open until
            // its QUIC handshake completes: a replayed first flight never
            // completes it (PROTOCOL.md §12.3).
            if session.handshake_complete() || session.close_reason.is_some() {
                continue;
            }
            tracing::debug!(target: crate::log::ENDPOINT, session = %handle, remote = %session.remote_address(), "handshake timeout");
            self.stats.handshakes_timed_out += 1;
            // The session's own close reports `LocallyClosed`; this side did
            // not choose to close, the peer ran out of time.
            let mut local = VecDeque::new();
            let code = VarInt::from_u64(ErrorCode::ResourceLimit.wire()).expect("small");
            session.close(self.now, code, HANDSHAKE_TIMEOUT_REASON, &mut local);
            // Its transitions stand; the close's own SessionClosed does not.
            self.events.extend(
                local
                    .into_iter()
                    .filter(|e| matches!(e, Event::SessionState { .. } | Event::PathState { .. })),
            );
            session.close_reason = Some(CloseReason::TimedOut);
            self.events.push_back(Event::SessionClosed {
                session: handle,
                reason: CloseReason::TimedOut,
            });
            self.dirty.push(&mut session.queued_drive, handle);
        }
    }

    /// Digests pending input of every dirty session.
    fn drive_dirty(&mut self) {
        while let Some(handle) = self.dirty.pop() {
            let Some(session) = self.sessions.get_mut(&handle) else {
                continue;
            };
            session.queued_drive = false;
            let was_open = session.close_reason.is_none();
            let rng = &mut self.session_ids;
            let mut mint = || {
                let mut id = [0u8; SessionId::LEN];
                rng.fill_bytes(&mut id);
                SessionId(id)
            };
            let unix_now = self.config.unix_time + self.now.saturating_duration_since(self.start);
            let mut ctx = Ctx {
                now: self.now,
                unix_now,
                events: &mut self.events,
                mint_id: &mut mint,
                tokens: &mut self.tokens,
                server: self.server.as_ref(),
                resources: &self.resources,
                scaling: &mut self.scaling,
            };
            let span =
                tracing::debug_span!(target: crate::log::SPANS, "kwik_session", session = %handle);
            span.in_scope(|| session.drive(&mut ctx));
            self.after_drive(handle, was_open);
            self.serve_requests(handle);
            if self.settle_endpoint_events(handle)
                && let Some(session) = self.sessions.get_mut(&handle)
            {
                self.sending.push(&mut session.queued_send, handle);
            }
        }
    }

    /// After a session was driven: its handshake may have completed, or this
    /// side may have closed it for the peer's protocol fault (then the
    /// peer's IP is banned).
    fn after_drive(&mut self, handle: SessionHandle, was_open: bool) {
        let Some(session) = self.sessions.get(&handle) else {
            return;
        };
        if session.handshake_complete() || session.phase == Phase::Closed {
            self.handshakes.remove(handle);
        }
        if !was_open || session.side != Side::Server {
            return;
        }
        if !session.confirmed {
            // Nothing proves the peer is at its address before the QUIC
            // handshake completes: a violation in 0-RTT data may come from
            // a forged source, and must not ban its owner (§11.4, §12.3).
            return;
        }
        let Some(CloseReason::Protocol {
            code,
            by_peer: false,
            ..
        }) = &session.close_reason
        else {
            return;
        };
        let Some(server) = &self.server else {
            return;
        };
        if !code.is_peer_fault() || server.ban_duration.is_zero() || server.max_bans == 0 {
            return;
        }
        let ip = session.remote_address().ip();
        if ip.is_loopback() && !server.ban_loopback {
            // Every local client shares this address: one broken one must
            // not lock out the others (and the developer's tests).
            return;
        }
        tracing::debug!(target: crate::log::ENDPOINT, session = %handle, %ip, %code, "banning");
        self.bans
            .ban(ip, self.now + server.ban_duration, server.max_bans);
        self.stats.bans_total += 1;
    }

    /// Forwards the endpoint events of a session's connections to
    /// quinn-proto (and the replies back); removes drained connections and,
    /// once none is left, the session. Returns whether the session lives.
    fn settle_endpoint_events(&mut self, handle: SessionHandle) -> bool {
        let Some(session) = self.sessions.get_mut(&handle) else {
            return false;
        };
        let mut drained = Vec::new();
        for (path, conn) in session.conns.iter_mut().filter(|(_, c)| !c.drained) {
            while let Some(event) = conn.quic.poll_endpoint_events() {
                if event.is_drained() {
                    drained.push((*path, conn.handle));
                }
                if let Some(reply) = self.quinn.handle_event(conn.handle, event) {
                    conn.quic.handle_event(reply);
                }
            }
        }
        for (path, ch) in drained {
            if let Some(slot) = self.by_conn.get_mut(ch.0) {
                *slot = None;
            }
            if session.detach(path) {
                self.remove_session(handle);
                return false;
            }
        }
        session.refresh_deadline();
        if session.scheduled != session.deadline {
            if let Some(old) = session.scheduled.take() {
                self.timers.remove(&(old, handle));
            }
            if let Some(new) = session.deadline {
                self.timers.insert((new, handle));
                session.scheduled = Some(new);
            }
        }
        true
    }

    fn remove_session(&mut self, handle: SessionHandle) {
        let Some(session) = self.sessions.remove(&handle) else {
            return;
        };
        if let Some(at) = session.scheduled {
            self.timers.remove(&(at, handle));
        }
        self.handshakes.remove(handle);
        self.scaling.in_use = self.scaling.in_use.saturating_sub(session.scaled_paths());
        if session.side == Side::Server {
            self.server_sessions -= 1;
        }
        self.dial_configs.remove(&handle);
        for conn in session.conns.values().filter(|c| !c.drained) {
            if let Some(slot) = self.by_conn.get_mut(conn.handle.0) {
                *slot = None;
            }
        }
        if session.close_reason.is_none() {
            self.events.push_back(Event::SessionClosed {
                session: handle,
                reason: crate::CloseReason::EndpointClosed,
            });
        }
        let mut session = session;
        session.end(self.now, &mut self.events);
        self.events.push_back(Event::SessionDrained {
            session: handle,
            stats: session.stats(),
        });
    }

    /// A view of a session (`None` once it has drained).
    pub fn session(&mut self, handle: SessionHandle) -> Option<SessionView<'_>> {
        let session = self.sessions.get_mut(&handle)?;
        Some(SessionView {
            session,
            now: self.now,
            unix_now: self.config.unix_time + self.now.saturating_duration_since(self.start),
            events: &mut self.events,
            dirty: &mut self.dirty,
        })
    }

    /// A view of one stream of a session (`None` once it is gone; a stream
    /// whose 0-RTT data the server rejected still has one, whose operations
    /// report the rejection, until its id is opened again).
    pub fn stream(&mut self, handle: SessionHandle, stream: StreamId) -> Option<StreamView<'_>> {
        let SessionView { session, dirty, .. } = self.session(handle)?;
        if session.streams.get_mut(stream).is_none() && !session.streams.was_rejected(stream) {
            return None;
        }
        Some(StreamView::new(session, stream, dirty))
    }

    /// Secondary: serves every delegation whose descriptor is `descriptor`
    /// from `resource` automatically (no [`Event::Delegated`] is emitted for
    /// them).
    pub fn serve_resource(&mut self, descriptor: Bytes, resource: SharedResource) {
        self.resources.insert(descriptor, resource);
    }

    /// Replaces the servers automatic scaling may add as secondary paths
    /// ([`ServerConfig::autoscale`]); typically what a discovery source
    /// found. Kept deduplicated by address, in SRV-style preference order
    /// (lower priority first, then heavier weight, then address), at most
    /// 1024. Paths already added are not affected. A session never takes
    /// this server itself (the addresses of
    /// [`ServerConfig::path_addresses`]), a server the application added, or
    /// a candidate its client refused (this server under another name,
    /// say): that one is not asked again in the session.
    pub fn set_candidates(&mut self, candidates: Vec<Candidate>) {
        self.scaling.set_candidates(candidates);
    }

    /// The candidates automatic scaling chooses from, in preference order.
    pub fn candidates(&self) -> &[Candidate] {
        &self.scaling.candidates
    }

    /// Paths automatic scaling holds across all sessions (joining or live;
    /// a path that ended is counted until its session's next evaluation).
    pub fn scaled_paths(&self) -> usize {
        self.scaling.in_use
    }

    /// Handles of live sessions, in order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionHandle> + '_ {
        self.sessions.keys().copied()
    }

    /// Closes every session with `code` and `reason`, refuses pending
    /// connections and stops accepting new ones.
    pub fn close(&mut self, code: u64, reason: &[u8]) {
        self.set_server_config(None);
        let pending: Vec<IncomingId> = self.incoming.keys().copied().collect();
        for id in pending {
            let _ = self.refuse(id);
        }
        let handles: Vec<SessionHandle> = self.sessions.keys().copied().collect();
        for handle in handles {
            if let Some(mut view) = self.session(handle)
                && view.close(code, reason).is_err()
            {
                view.close_with(ErrorCode::Internal, reason);
            }
        }
    }

    /// True when no session is left (all have drained).
    pub fn is_idle(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Counters of the server side: sessions, half-open handshakes,
    /// retries, refusals, handshake timeouts and bans; and closes of every
    /// session, by kind of reason.
    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            sessions: self.server_sessions as u64,
            half_open: self.half_open() as u64,
            bans_active: self.bans.active(self.now) as u64,
            ..self.stats
        }
    }

    /// Whether the IP is banned at the time of the latest input (see
    /// [`ServerConfig::ban_duration`](crate::ServerConfig::ban_duration)).
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.bans.is_banned(ip, self.now)
    }

    /// Whether the given session has completed its kwik handshake.
    pub fn is_established(&self, handle: SessionHandle) -> bool {
        self.sessions
            .get(&handle)
            .is_some_and(|s| s.phase == Phase::Active)
    }
}

/// Asks a session's connections for a transmit, starting after the one that
/// sent last, so that no path starves another.
fn poll_session_transmit(
    session: &mut Session,
    now: Instant,
    max_segments: usize,
    buf: &mut Vec<u8>,
) -> Option<quinn_proto::Transmit> {
    let count = session.conns.len().max(1);
    let start = session.tx_cursor % count;
    let found = (0..count).map(|k| (start + k) % count).find_map(|i| {
        let conn = session.conns.values_mut().nth(i)?;
        conn.poll_transmit(now, max_segments, buf).map(|t| (i, t))
    });
    found.map(|(i, t)| {
        session.tx_cursor = i + 1;
        t
    })
}
