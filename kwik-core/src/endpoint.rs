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
//! Sessions are kept in ordered maps and served in a fixed order, so the same
//! seed and the same inputs always produce the same outputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{ConnectionHandle, DatagramEvent, EcnCodepoint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{ClientConfig, EndpointConfig, ServerConfig};
use crate::error::{ConnectError, ErrorCode};
use crate::event::{Event, Output, Transmit};
use crate::ids::{IncomingId, SessionHandle, SessionId, Side, StreamId};
use crate::seeded::{SeededCids, Seeds, no_wall_clock};
use crate::session::{Ctx, Phase, Session};
use crate::view::{SessionView, StreamView};

/// The incoming attempt is unknown (already decided, or never existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownIncoming;

impl std::fmt::Display for UnknownIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unknown incoming connection")
    }
}
impl std::error::Error for UnknownIncoming {}

/// A sans-IO kwik endpoint: clients and servers of any number of sessions
/// over one UDP socket. See the [module docs](self) for the driver loop.
pub struct KwikEndpoint {
    config: EndpointConfig,
    quinn: quinn_proto::Endpoint,
    server: Option<ServerConfig>,
    quinn_server: Option<Arc<quinn_proto::ServerConfig>>,
    token_key: [u8; 64],
    sessions: BTreeMap<SessionHandle, Session>,
    /// quinn-proto connection handle (reused after drain) → session.
    by_conn: Vec<Option<SessionHandle>>,
    incoming: BTreeMap<IncomingId, quinn_proto::Incoming>,
    next_session: u64,
    next_incoming: u64,
    session_ids: StdRng,
    now: Instant,
    events: VecDeque<Event>,
    /// Sessions with input or calls not yet digested.
    dirty: BTreeSet<SessionHandle>,
    /// Sessions that may have datagrams to send, served round-robin.
    sending: VecDeque<SessionHandle>,
    in_sending: BTreeSet<SessionHandle>,
    /// Datagrams the endpoint itself must send (refusals, resets).
    responses: VecDeque<(Transmit, Vec<u8>)>,
    scratch: Vec<u8>,
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

impl KwikEndpoint {
    /// Creates an endpoint; with a server configuration it also accepts
    /// sessions. `now` anchors the endpoint's notion of time.
    pub fn new(config: EndpointConfig, server: Option<ServerConfig>, now: Instant) -> Self {
        let seeds = Seeds::derive(config.seed);
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seeds.reset_key);
        let mut qcfg = quinn_proto::EndpointConfig::new(Arc::new(reset_key));
        let cid_seed = seeds.cids;
        qcfg.cid_generator(move || Box::new(SeededCids::new(cid_seed)));
        qcfg.rng_seed(Some(seeds.quinn));
        let mut endpoint = Self {
            quinn: quinn_proto::Endpoint::new(Arc::new(qcfg), None, true, None),
            config,
            server: None,
            quinn_server: None,
            token_key: seeds.token_key,
            sessions: BTreeMap::new(),
            by_conn: Vec::new(),
            incoming: BTreeMap::new(),
            next_session: 0,
            next_incoming: 0,
            session_ids: StdRng::from_seed(seeds.session_ids),
            now,
            events: VecDeque::new(),
            dirty: BTreeSet::new(),
            sending: VecDeque::new(),
            in_sending: BTreeSet::new(),
            responses: VecDeque::new(),
            scratch: Vec::new(),
        };
        endpoint.set_server_config(server);
        endpoint
    }

    /// Replaces the server configuration (`None` stops accepting). Sessions
    /// already accepted keep theirs.
    pub fn set_server_config(&mut self, server: Option<ServerConfig>) {
        self.quinn_server = server.as_ref().map(|s| {
            let token_key =
                ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&self.token_key);
            let mut q = quinn_proto::ServerConfig::new(s.crypto.clone(), Arc::new(token_key));
            q.transport_config(Arc::new(s.transport.quinn()));
            q.validation_token.sent(0);
            q.time_source(no_wall_clock());
            Arc::new(q)
        });
        self.quinn.set_server_config(self.quinn_server.clone());
        self.server = server;
    }

    /// The time of the latest input.
    pub fn now(&self) -> Instant {
        self.now
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
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
        let mut qcfg = quinn_proto::ClientConfig::new(config.crypto.clone());
        qcfg.transport_config(Arc::new(config.transport.quinn()));
        let (ch, conn) = self
            .quinn
            .connect(self.now, qcfg, addr, server_name)
            .map_err(|e| match e {
                quinn_proto::ConnectError::InvalidServerName(name) => {
                    ConnectError::InvalidServerName(name)
                }
                quinn_proto::ConnectError::InvalidRemoteAddress(a) => {
                    ConnectError::InvalidRemoteAddress(a)
                }
                other => ConnectError::Quic(other.to_string()),
            })?;
        Ok(self.insert_session(ch, conn, Side::Client, config.transport.clone(), 0))
    }

    fn insert_session(
        &mut self,
        ch: ConnectionHandle,
        conn: quinn_proto::Connection,
        side: Side,
        transport: crate::TransportConfig,
        features: u64,
    ) -> SessionHandle {
        let handle = SessionHandle(self.next_session);
        self.next_session += 1;
        if self.by_conn.len() <= ch.0 {
            self.by_conn.resize(ch.0 + 1, None);
        }
        self.by_conn[ch.0] = Some(handle);
        let session = Session::new(handle, ch, conn, side, transport, features);
        self.sessions.insert(handle, session);
        self.dirty.insert(handle);
        handle
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
                if let Some(handle) = self.by_conn.get(ch.0).copied().flatten()
                    && let Some(session) = self.sessions.get_mut(&handle)
                {
                    session.conn.handle_event(event);
                    self.dirty.insert(handle);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.on_incoming(incoming),
            Some(DatagramEvent::Response(t)) => {
                let transmit = Transmit {
                    destination: t.destination,
                    size: t.size,
                    segment_size: t.segment_size,
                    ecn: ecn_bits(t.ecn),
                    src_ip: t.src_ip,
                };
                self.responses.push_back((transmit, buf[..t.size].to_vec()));
            }
            None => {}
        }
        self.scratch = buf;
    }

    fn on_incoming(&mut self, incoming: quinn_proto::Incoming) {
        let Some(server) = &self.server else {
            self.quinn.ignore(incoming);
            return;
        };
        let id = IncomingId(self.next_incoming);
        self.next_incoming += 1;
        let remote = incoming.remote_address();
        let auto = server.auto_accept;
        self.incoming.insert(id, incoming);
        if auto {
            let _ = self.accept(id);
        } else {
            self.events.push_back(Event::Incoming {
                incoming: id,
                remote,
            });
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
        let (transport, features) = match &self.server {
            Some(s) => (s.transport.clone(), s.features),
            None => {
                self.quinn.ignore(inc);
                return Ok(None);
            }
        };
        let mut buf = Vec::new();
        match self.quinn.accept(inc, self.now, &mut buf, None) {
            Ok((ch, conn)) => Ok(Some(self.insert_session(
                ch,
                conn,
                Side::Server,
                transport,
                features,
            ))),
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
        let mut buf = Vec::new();
        let t = self.quinn.refuse(inc, &mut buf);
        self.push_response(t, buf);
        Ok(())
    }

    fn push_response(&mut self, t: quinn_proto::Transmit, mut buf: Vec<u8>) {
        buf.truncate(t.size);
        let transmit = Transmit {
            destination: t.destination,
            size: t.size,
            segment_size: t.segment_size,
            ecn: ecn_bits(t.ecn),
            src_ip: t.src_ip,
        };
        self.responses.push_back((transmit, buf));
    }

    /// Tells the endpoint that time has passed; fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        for (handle, session) in &mut self.sessions {
            if session.deadline.is_some_and(|d| d <= now) {
                session.conn.handle_timeout(now);
                self.dirty.insert(*handle);
            }
        }
    }

    /// The next output. Call after every input until it returns
    /// [`Output::Timeout`]; `buf` receives the bytes of a `Transmit`.
    pub fn poll_output(&mut self, buf: &mut Vec<u8>) -> Output {
        if let Some(event) = self.events.pop_front() {
            return Output::Event(event);
        }
        self.drive_dirty();
        if let Some(event) = self.events.pop_front() {
            return Output::Event(event);
        }
        if let Some((transmit, bytes)) = self.responses.pop_front() {
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Output::Transmit(transmit);
        }
        while let Some(handle) = self.sending.pop_front() {
            let Some(session) = self.sessions.get_mut(&handle) else {
                self.in_sending.remove(&handle);
                continue;
            };
            buf.clear();
            let max = self.config.max_gso_segments;
            if let Some(t) = session.conn.poll_transmit(self.now, max, buf) {
                self.sending.push_back(handle);
                self.dirty.insert(handle);
                return Output::Transmit(Transmit {
                    destination: t.destination,
                    size: t.size,
                    segment_size: t.segment_size,
                    ecn: ecn_bits(t.ecn),
                    src_ip: t.src_ip,
                });
            }
            self.in_sending.remove(&handle);
            // Sending may have produced connection-id requests or a drain.
            self.settle_endpoint_events(handle);
            if let Some(event) = self.events.pop_front() {
                return Output::Event(event);
            }
        }
        Output::Timeout(self.sessions.values().filter_map(|s| s.deadline).min())
    }

    /// Digests pending input of every dirty session.
    fn drive_dirty(&mut self) {
        while let Some(handle) = self.dirty.pop_first() {
            let Some(session) = self.sessions.get_mut(&handle) else {
                continue;
            };
            let rng = &mut self.session_ids;
            let mut mint = || {
                let mut id = [0u8; SessionId::LEN];
                rng.fill_bytes(&mut id);
                SessionId(id)
            };
            let mut ctx = Ctx {
                now: self.now,
                events: &mut self.events,
                mint_id: &mut mint,
            };
            session.drive(&mut ctx);
            if self.settle_endpoint_events(handle) && self.in_sending.insert(handle) {
                self.sending.push_back(handle);
            }
        }
    }

    /// Forwards a session's endpoint events to quinn-proto (and the replies
    /// back); removes the session once drained. Returns whether it lives.
    fn settle_endpoint_events(&mut self, handle: SessionHandle) -> bool {
        let Some(session) = self.sessions.get_mut(&handle) else {
            return false;
        };
        let mut drained = false;
        while let Some(event) = session.conn.poll_endpoint_events() {
            drained |= event.is_drained();
            if let Some(reply) = self.quinn.handle_event(session.conn_handle, event) {
                session.conn.handle_event(reply);
            }
        }
        if drained {
            self.remove_session(handle);
            return false;
        }
        session.deadline = session.conn.poll_timeout();
        true
    }

    fn remove_session(&mut self, handle: SessionHandle) {
        let Some(session) = self.sessions.remove(&handle) else {
            return;
        };
        if let Some(slot) = self.by_conn.get_mut(session.conn_handle.0) {
            *slot = None;
        }
        if session.close_reason.is_none() {
            self.events.push_back(Event::SessionClosed {
                session: handle,
                reason: crate::CloseReason::EndpointClosed,
            });
        }
        self.events
            .push_back(Event::SessionDrained { session: handle });
    }

    /// A view of a session (`None` once it has drained).
    pub fn session(&mut self, handle: SessionHandle) -> Option<SessionView<'_>> {
        let session = self.sessions.get_mut(&handle)?;
        self.dirty.insert(handle);
        Some(SessionView {
            session,
            now: self.now,
            events: &mut self.events,
        })
    }

    /// A view of one stream of a session.
    pub fn stream(&mut self, handle: SessionHandle, stream: StreamId) -> Option<StreamView<'_>> {
        let view = self.session(handle)?;
        let SessionView { session, .. } = view;
        session.streams.get_mut(stream)?;
        Some(StreamView::new(session, stream))
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

    /// Whether the given session has completed its kwik handshake.
    pub fn is_established(&self, handle: SessionHandle) -> bool {
        self.sessions
            .get(&handle)
            .is_some_and(|s| s.phase == Phase::Active)
    }
}
