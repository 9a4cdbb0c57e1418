//! 0-RTT resumption scenarios (PROTOCOL.md §12), shared by the `resume`
//! tests and the `resume` benchmark.
//!
//! One server answers requests: a client opens a bidirectional stream,
//! writes a request and finishes; the server reads it to its end and writes
//! back a response derived from it ([`response_for`]), so that the client can
//! check every byte. A [`Requester`] dials, sends one request and measures
//! when the first byte of the response arrives, in one of three ways
//! ([`Mode`]): a full handshake (Hello after the QUIC handshake, request
//! after the Welcome), the Hello in 0-RTT with the request after the
//! Welcome, or both in 0-RTT (the request declared idempotent).
//!
//! [`ResumeNet`] puts the server and any number of successive clients on one
//! simulated network; clients that share a [`ClientConfig`] share its TLS
//! tickets and remembered limits, as one client process dialling again
//! would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kwik_core::{
    ClientConfig, CloseReason, Dir, Event, KwikEndpoint, OpenError, PathId, ReadError,
    ServerConfig, SessionHandle, StreamId, WriteError, ZeroRtt,
};

use crate::certs::DevCert;
use crate::kwik_node::{App, KwikNode};
use crate::link::LinkConfig;
use crate::setup::{SERVER_NAME, addr, configs, dev_cert, endpoint};
use crate::sim::{NodeId, Sim};
use crate::trace::Trace;

/// The response to `request`: `len` bytes that depend on every byte of the
/// request and on their position, so a response to another request, or
/// bytes out of place, do not pass.
pub fn response_for(request: &[u8], len: usize) -> Bytes {
    let sum = request
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_mul(31).wrapping_add(*b));
    (0..len)
        .map(|i| request[i % request.len().max(1)] ^ (i as u8) ^ sum)
        .collect::<Vec<u8>>()
        .into()
}

/// A request the server application received (read to its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The server session.
    pub session: SessionHandle,
    /// The stream it came on.
    pub stream: StreamId,
    /// Its bytes.
    pub bytes: Bytes,
    /// The session's 0-RTT state when the request was complete:
    /// [`ZeroRtt::Pending`] means it came before the handshake confirmed
    /// the client, and could have been a replay.
    pub zero_rtt: ZeroRtt,
}

/// Server application: answers every request with [`response_for`] of
/// [`response_len`](Self::response_len) bytes, and records what it saw.
#[derive(Debug, Default)]
pub struct Responder {
    /// Size of every response.
    pub response_len: usize,
    /// On establishment, ask the client to join this secondary (to see when
    /// the AddPath leaves: PROTOCOL.md §12.3).
    pub add_path: Option<SocketAddr>,
    /// Sessions established, with when and their 0-RTT state then.
    pub established: Vec<(SessionHandle, Instant, ZeroRtt)>,
    /// Requests read to their end, in order.
    pub requests: Vec<Delivered>,
    /// `ZeroRttSettled` events: session, accepted, when.
    pub settled: Vec<(SessionHandle, bool, Instant)>,
    /// Path events of the `add_path` paths: session, path, when.
    pub path_failed: Vec<(SessionHandle, PathId, Instant)>,
    /// Sessions that ended, and why.
    pub closed: BTreeMap<SessionHandle, CloseReason>,
    reading: BTreeMap<(SessionHandle, StreamId), Vec<u8>>,
    writing: BTreeMap<(SessionHandle, StreamId), Bytes>,
}

impl Responder {
    /// Answers with `response_len`-byte responses.
    pub fn new(response_len: usize) -> Self {
        Self {
            response_len,
            ..Self::default()
        }
    }

    fn read(&mut self, ep: &mut KwikEndpoint, session: SessionHandle, id: StreamId) {
        let zero_rtt = ep
            .session(session)
            .map_or(ZeroRtt::Off, |view| view.zero_rtt());
        let Some(mut stream) = ep.stream(session, id) else {
            return;
        };
        let buf = self.reading.entry((session, id)).or_default();
        loop {
            match stream.read(64 << 10) {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                Ok(None) => {
                    let bytes =
                        Bytes::from(self.reading.remove(&(session, id)).unwrap_or_default());
                    self.writing
                        .insert((session, id), response_for(&bytes, self.response_len));
                    self.requests.push(Delivered {
                        session,
                        stream: id,
                        bytes,
                        zero_rtt,
                    });
                    self.write(ep, session, id);
                    return;
                }
                Err(ReadError::Blocked) => return,
                Err(_) => {
                    self.reading.remove(&(session, id));
                    return;
                }
            }
        }
    }

    fn write(&mut self, ep: &mut KwikEndpoint, session: SessionHandle, id: StreamId) {
        let Some(rest) = self.writing.get_mut(&(session, id)) else {
            return;
        };
        let Some(mut stream) = ep.stream(session, id) else {
            self.writing.remove(&(session, id));
            return;
        };
        while !rest.is_empty() {
            match stream.write_chunk(rest) {
                Ok(_) => {}
                Err(WriteError::Blocked) => return,
                Err(_) => {
                    self.writing.remove(&(session, id));
                    return;
                }
            }
        }
        let _ = stream.finish();
        self.writing.remove(&(session, id));
    }
}

impl App for Responder {
    fn on_event(&mut self, ep: &mut KwikEndpoint, now: Instant, event: &Event, _: &mut Trace) {
        match event {
            Event::SessionEstablished { session, .. } => {
                let Some(mut view) = ep.session(*session) else {
                    return;
                };
                self.established.push((*session, now, view.zero_rtt()));
                if let Some(target) = self.add_path {
                    let _ = view.add_path(target, SERVER_NAME);
                }
            }
            Event::StreamOpened { session, dir } => {
                let Some(mut view) = ep.session(*session) else {
                    return;
                };
                let mut opened = Vec::new();
                while let Some(id) = view.accept(*dir) {
                    opened.push(id);
                }
                for id in opened {
                    self.read(ep, *session, id);
                }
            }
            Event::StreamReadable { session, stream } => self.read(ep, *session, *stream),
            Event::StreamWritable { session, stream } => self.write(ep, *session, *stream),
            Event::ZeroRttSettled { session, accepted } => {
                self.settled.push((*session, *accepted, now));
            }
            Event::PathFailed { session, path, .. } => {
                self.path_failed.push((*session, *path, now));
            }
            Event::SessionClosed { session, reason } => {
                self.closed.insert(*session, reason.clone());
            }
            _ => {}
        }
    }
}

/// How a [`Requester`] dials and sends its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No 0-RTT: the Hello after the QUIC handshake, the request after the
    /// Welcome (three round trips to the first byte of the response).
    Full,
    /// The Hello in 0-RTT; the request, not idempotent, after the Welcome
    /// (two round trips).
    HelloOnly,
    /// The Hello and the request (declared idempotent) in 0-RTT (one
    /// round trip).
    ZeroRtt,
}

/// Client application: one session, one request, the response checked.
pub struct Requester {
    server: SocketAddr,
    config: ClientConfig,
    mode: Mode,
    request: Bytes,
    expected: Bytes,
    /// The session, once dialled.
    pub session: Option<SessionHandle>,
    /// When it dialled.
    pub started_at: Option<Instant>,
    /// `start_0rtt` said the session is in 0-RTT.
    pub in_0rtt: bool,
    /// The stream the request went on in 0-RTT, if it did.
    pub early_stream: Option<StreamId>,
    /// The `ZeroRttSettled` verdict.
    pub settled: Option<bool>,
    /// The session's 0-RTT state when the verdict came.
    pub zero_rtt: ZeroRtt,
    /// What writing to the early stream reported after a rejection.
    pub rejected_write: Option<WriteError>,
    /// What reading the early stream reported after a rejection.
    pub rejected_read: Option<ReadError>,
    /// The stream the current request is on.
    pub stream: Option<StreamId>,
    /// Requests written (a rejected 0-RTT request is written again).
    pub requests_sent: u32,
    /// When the Welcome arrived.
    pub established_at: Option<Instant>,
    /// When the first byte of the response arrived.
    pub first_byte_at: Option<Instant>,
    /// The response so far.
    pub response: Vec<u8>,
    /// When the response ended (its FIN was read).
    pub finished_at: Option<Instant>,
    /// Why the session ended, if it did.
    pub closed: Option<CloseReason>,
}

impl Requester {
    /// A client that dials `server` with `config` and sends `request` in
    /// `mode`, expecting a `response_len`-byte answer.
    pub fn new(
        server: SocketAddr,
        config: ClientConfig,
        mode: Mode,
        request: &[u8],
        response_len: usize,
    ) -> Self {
        Self {
            server,
            config,
            mode,
            request: Bytes::copy_from_slice(request),
            expected: response_for(request, response_len),
            session: None,
            started_at: None,
            in_0rtt: false,
            early_stream: None,
            settled: None,
            zero_rtt: ZeroRtt::Off,
            rejected_write: None,
            rejected_read: None,
            stream: None,
            requests_sent: 0,
            established_at: None,
            first_byte_at: None,
            response: Vec::new(),
            finished_at: None,
            closed: None,
        }
    }

    /// True if the response arrived complete and byte for byte right.
    pub fn response_ok(&self) -> bool {
        self.finished_at.is_some() && self.response == self.expected
    }

    /// Time from dialling to the first byte of the response.
    pub fn first_byte(&self) -> Option<Duration> {
        Some(
            self.first_byte_at?
                .saturating_duration_since(self.started_at?),
        )
    }

    fn send_request(&mut self, ep: &mut KwikEndpoint, idempotent: bool) -> Result<(), OpenError> {
        let h = self.session.expect("dialled");
        let mut view = ep.session(h).expect("live session");
        let id = if idempotent {
            view.open_idempotent(Dir::Bi)?
        } else {
            view.open(Dir::Bi)?
        };
        let mut stream = ep.stream(h, id).expect("just opened");
        let mut rest = self.request.clone();
        while !rest.is_empty() {
            stream
                .write_chunk(&mut rest)
                .expect("a small request fits the credit");
        }
        stream.finish().expect("finish");
        self.stream = Some(id);
        self.requests_sent += 1;
        Ok(())
    }

    fn read(&mut self, ep: &mut KwikEndpoint, now: Instant) {
        let (Some(h), Some(id)) = (self.session, self.stream) else {
            return;
        };
        let Some(mut stream) = ep.stream(h, id) else {
            return;
        };
        loop {
            match stream.read(64 << 10) {
                Ok(Some(chunk)) => {
                    if !chunk.is_empty() {
                        self.first_byte_at.get_or_insert(now);
                    }
                    self.response.extend_from_slice(&chunk);
                }
                Ok(None) => {
                    self.finished_at.get_or_insert(now);
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl App for Requester {
    fn on_event(&mut self, ep: &mut KwikEndpoint, now: Instant, event: &Event, _: &mut Trace) {
        match event {
            Event::ZeroRttSettled { session, accepted } => {
                self.settled = Some(*accepted);
                if let Some(view) = ep.session(*session) {
                    self.zero_rtt = view.zero_rtt();
                }
                if !*accepted && let Some(id) = self.early_stream {
                    // The server never saw the request: the stream says so,
                    // and the request goes again once established.
                    let h = self.session.expect("dialled");
                    let mut stream = ep.stream(h, id).expect("a rejected stream still answers");
                    self.rejected_write = stream.write(b"more").err();
                    self.rejected_read = stream.read(1).err();
                    self.stream = None;
                }
            }
            Event::SessionEstablished { .. } => {
                self.established_at = Some(now);
                if self.stream.is_none() {
                    self.send_request(ep, false)
                        .expect("open after the Welcome");
                }
            }
            Event::StreamReadable { stream, .. } if Some(*stream) == self.stream => {
                self.read(ep, now);
            }
            Event::SessionClosed { reason, .. } => self.closed = Some(reason.clone()),
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _: &mut Trace) -> bool {
        if self.session.is_some() {
            return false;
        }
        let h = ep
            .connect(now, self.server, SERVER_NAME, &self.config)
            .expect("connect");
        self.session = Some(h);
        self.started_at = Some(now);
        if self.mode != Mode::Full {
            self.in_0rtt = ep.session(h).expect("just dialled").start_0rtt();
        }
        if self.mode == Mode::ZeroRtt && self.in_0rtt {
            match self.send_request(ep, true) {
                Ok(()) => self.early_stream = self.stream,
                // Nothing remembered of the server's limits: after the Welcome.
                Err(OpenError::NotEstablished) => {}
                Err(e) => panic!("open_idempotent: {e:?}"),
            }
        }
        true
    }

    fn done(&self) -> bool {
        self.finished_at.is_some() || self.closed.is_some()
    }
}

/// Virtual-time limit of each wait.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A server at `addr(1)` on links of a given round trip, and successive
/// clients at `addr(10)`, `addr(11)`, …
pub struct ResumeNet {
    /// The simulation.
    pub sim: Sim,
    /// The server node.
    pub server: NodeId,
    /// The server's certificate.
    pub cert: DevCert,
    /// A client configuration trusting it (its clones share tickets and
    /// remembered limits).
    pub client: ClientConfig,
    /// The configuration the server started with (its clones share its TLS
    /// session store).
    pub server_config: ServerConfig,
    /// Size of the server's responses.
    pub response_len: usize,
    next_host: u8,
}

impl ResumeNet {
    /// A network whose every link has round trip `rtt` and 100 Mbit/s,
    /// and a server with 0-RTT enabled, tuned by `tune`.
    pub fn new(seed: u64, rtt: Duration, tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let cert = dev_cert(seed);
        let mut server_config = configs(&cert).1;
        server_config.early_data = true;
        tune(&mut server_config);
        Self::with_server(seed, rtt, cert, server_config)
    }

    /// A network whose every link has round trip `rtt` and 100 Mbit/s, and
    /// a server presenting `cert` with `server_config`.
    pub fn with_server(
        seed: u64,
        rtt: Duration,
        cert: DevCert,
        server_config: ServerConfig,
    ) -> Self {
        let mut sim = Sim::new(seed);
        sim.set_default_link(LinkConfig::new().latency(rtt / 2).rate_mbps(100));
        let client = configs(&cert).0;
        let response_len = 4096;
        let now = sim.now();
        let server = sim.add_node(
            &[addr(1)],
            Box::new(KwikNode::new(
                addr(1),
                endpoint(seed, Some(server_config.clone()), now),
                Responder::new(response_len),
            )),
        );
        Self {
            sim,
            server,
            cert,
            client,
            server_config,
            response_len,
            next_host: 10,
        }
    }

    /// A fresh client configuration trusting the server: no ticket, nothing
    /// remembered.
    pub fn fresh_client(&self) -> ClientConfig {
        configs(&self.cert).0
    }

    /// A server configuration like the one the server started with (0-RTT
    /// on) but with a TLS session store of its own: as after a restart.
    pub fn fresh_server_config(&self) -> ServerConfig {
        let mut cfg = configs(&self.cert).1;
        cfg.early_data = true;
        cfg
    }

    /// The server's application.
    pub fn responder(&self) -> &Responder {
        &self.sim.node::<KwikNode<Responder>>(self.server).app
    }

    /// The server's endpoint, mutably.
    pub fn server_endpoint(&mut self) -> &mut KwikEndpoint {
        &mut self
            .sim
            .node_mut::<KwikNode<Responder>>(self.server)
            .endpoint
    }

    /// The client node `id`'s application.
    pub fn requester(&self, id: NodeId) -> &Requester {
        &self.sim.node::<KwikNode<Requester>>(id).app
    }

    /// Adds a client that dials with `config` in `mode` and sends
    /// `request`; returns its node and its address.
    pub fn add_client(
        &mut self,
        config: &ClientConfig,
        mode: Mode,
        request: &[u8],
    ) -> (NodeId, SocketAddr) {
        let host = addr(self.next_host);
        let seed = 1000 + u64::from(self.next_host);
        self.next_host += 1;
        let app = Requester::new(addr(1), config.clone(), mode, request, self.response_len);
        let ep = endpoint(seed, None, self.sim.now());
        let id = self
            .sim
            .add_node(&[host], Box::new(KwikNode::new(host, ep, app)));
        (id, host)
    }

    /// Runs until the client `id` has its response (or its session ended).
    ///
    /// # Panics
    /// If the simulation stalls first.
    pub fn run_client(&mut self, id: NodeId) -> &Requester {
        self.sim
            .run_while(LIMIT, |sim| !sim.node::<KwikNode<Requester>>(id).app.done())
            .unwrap_or_else(|e| panic!("client did not finish: {e}"));
        self.requester(id)
    }

    /// Closes client `id`'s session (code 0) after `linger` (time for the
    /// server's session tickets to arrive), and lets it drain.
    pub fn close_client(&mut self, id: NodeId, linger: Duration) {
        self.sim.run_for(linger);
        let node = self.sim.node_mut::<KwikNode<Requester>>(id);
        if let Some(h) = node.app.session
            && let Some(mut view) = node.endpoint.session(h)
        {
            let _ = view.close(0, b"done");
        }
        self.sim.run_for(Duration::from_secs(1));
    }

    /// One client session from dial to response, closed after `linger`:
    /// its node and what it measured.
    pub fn exchange(
        &mut self,
        config: &ClientConfig,
        mode: Mode,
        request: &[u8],
        linger: Duration,
    ) -> NodeId {
        let (id, _) = self.add_client(config, mode, request);
        self.run_client(id);
        self.close_client(id, linger);
        id
    }
}
