//! `sessions`: what does an idle session cost a server, next to the bare
//! QUIC connection under it?
//!
//! A server holding many mostly idle clients (a push service, a game
//! lobby) pays for each one in memory; kwik's promise is that a session
//! costs little more than its QUIC connection. Here `--count` clients
//! (default 10 000) each open a session to one server endpoint in the
//! simulator, echo 64 bytes over one bidirectional stream, and then stay
//! connected without traffic. The same is done with bare quinn-proto
//! connections (quinn's default transport, the same certificate and
//! crypto) in the same run. At most [`IN_FLIGHT`] handshakes are under way
//! at once, each on a 2 ms RTT link, so the server is never flooded and
//! never sends Retry.
//!
//! The server node's heap is metered with the counting allocator
//! ([`kwik_sim::alloc`]): everything allocated inside its calls (endpoint,
//! sessions, application) and not freed. One JSON line:
//!
//! * `kwik_bytes_per_idle_session`, `quinn_bytes_per_idle_session` — the
//!   server's heap growth once every client echoed and went idle, divided
//!   by `count`; `memory_ratio` is kwik's over quinn's;
//! * `kwik_handshakes_per_s`, `quinn_handshakes_per_s` — `count` divided
//!   by the server's CPU time from the first dial to the last echo
//!   (handshakes dominate it);
//! * `freed_after_close` — after every client closed and the server
//!   drained, what the server still holds is at most [`FREED_SLACK`] of its
//!   idle footprint, for both contenders;
//! * `kwik_left_after_close`, `quinn_left_after_close` — what stayed.
//!
//! A run in which a client fails to echo exits with status 1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kwik_core::{ClientConfig, Dir, Event, KwikEndpoint, SessionHandle};
use kwik_sim::alloc::{Meter, installed};
use kwik_sim::quic_driver::QuicDriver;
use kwik_sim::setup::{addr, configs, dev_cert, endpoint};
use kwik_sim::{
    App, DevCert, KwikNode, LinkConfig, Node, NodeId, Sim, Trace, Transmit, seeded_client_config,
    seeded_endpoint_config, seeded_server_config,
};
use quinn_proto::{ConnectionHandle, Endpoint, StreamEvent, StreamId, TransportConfig};

use crate::report::Line;

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Concurrent sessions (and, separately, quinn connections).
    pub count: usize,
    /// Seed of the simulations.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            count: 10_000,
            seed: 1,
        }
    }
}

/// Bytes each client echoes.
const ECHO: &[u8] = &[0x5a; 64];
/// Handshakes under way at once.
pub const IN_FLIGHT: usize = 64;
/// Share of the idle footprint the server may keep after every session
/// drained: capacity its tables keep for reuse (a connection slab, maps),
/// not per-session state.
pub const FREED_SLACK: f64 = 0.05;
/// Virtual-time limit of each phase.
const LIMIT: Duration = Duration::from_secs(600);
/// One-way latency of the link.
const LATENCY: Duration = Duration::from_millis(1);
/// ALPN of the quinn contenders.
const QUINN_ALPN: &[u8] = b"kwik-bench-sessions";
/// Server name of the quinn contenders' certificate.
const QUINN_NAME: &str = "sessions.kwik.test";

/// What one contender measured.
struct Outcome {
    per_session: f64,
    handshakes_per_s: f64,
    idle: i64,
    left: i64,
}

impl Outcome {
    fn freed(&self) -> bool {
        self.left as f64 <= self.idle as f64 * FREED_SLACK
    }
}

/// The client side of a contender: dials, echoes, idles, closes.
trait Clients: Node + Sized {
    fn echoed(&self) -> usize;
    fn failed(&self) -> Option<String>;
    fn close_all(&mut self, now: Instant);
}

/// The server side of a contender.
trait Server: Node + Sized {
    fn sessions(&self) -> usize;
}

/// Runs one contender: `server` at `addr(1)`, `clients` at `addr(2)`.
fn measure<S: Server, C: Clients>(
    seed: u64,
    count: usize,
    server: impl FnOnce(Instant) -> S,
    clients: impl FnOnce(Instant) -> C,
) -> Result<Outcome, String> {
    let meter = Meter(0);
    let mut sim = Sim::new(seed);
    sim.set_default_link(LinkConfig::new().latency(LATENCY).rate_mbps(10_000));
    let now = sim.now();
    let before = meter.current();
    let server = sim.add_node(&[addr(1)], Box::new(meter.run(|| server(now))));
    sim.meter(server, meter);
    sim.run_for(Duration::from_millis(1));
    let cpu_before = meter.cpu();
    let client: NodeId = sim.add_node(&[addr(2)], Box::new(clients(sim.now())));
    sim.run_while(LIMIT, |sim| {
        let c = sim.node::<C>(client);
        c.echoed() < count && c.failed().is_none()
    })
    .map_err(|e| format!("sessions: {e}"))?;
    if let Some(e) = sim.node::<C>(client).failed() {
        return Err(format!("sessions: a client failed: {e}"));
    }
    let cpu = (meter.cpu() - cpu_before).as_secs_f64();
    // Everyone idle: acknowledgements settle, nothing is in flight.
    sim.run_for(Duration::from_secs(1));
    let held = sim.node::<S>(server).sessions();
    if held != count {
        return Err(format!("sessions: the server holds {held} of {count}"));
    }
    let idle = meter.current() - before;
    let at = sim.now();
    sim.node_mut::<C>(client).close_all(at);
    sim.run_while(LIMIT, |sim| sim.node::<S>(server).sessions() > 0)
        .map_err(|e| format!("sessions: draining: {e}"))?;
    let left = meter.current() - before;
    Ok(Outcome {
        per_session: idle as f64 / count as f64,
        handshakes_per_s: count as f64 / cpu.max(1e-9),
        idle,
        left,
    })
}

/// Runs the scenario and prints its line.
pub fn run(o: &Options) -> Result<(), String> {
    if !installed() {
        return Err("sessions: the counting allocator is not installed".into());
    }
    let started = Instant::now();
    let (seed, count) = (o.seed, o.count);
    let cert = dev_cert(seed);
    let (client_cfg, mut server_cfg) = configs(&cert);
    server_cfg.max_sessions = server_cfg.max_sessions.max(count);
    let kwik = measure(
        seed,
        count,
        |now| {
            let mut node =
                KwikNode::new(addr(1), endpoint(seed, Some(server_cfg), now), EchoServer);
            node.trace_events = false;
            node
        },
        |now| {
            let mut node = KwikNode::new(
                addr(2),
                endpoint(seed + 1, None, now),
                KwikClients::new(count, client_cfg),
            );
            node.trace_events = false;
            node
        },
    )?;
    eprintln!(
        "  kwik:  {:.0} B per idle session, {:.0} handshakes/s, {} B left after close",
        kwik.per_session, kwik.handshakes_per_s, kwik.left
    );
    let quinn_cert = DevCert::with_seed(&[QUINN_NAME], seed);
    let quinn = measure(
        seed,
        count,
        |_| QuinnEchoServer::new(seed, &quinn_cert),
        |_| QuinnClients::new(seed + 1, &quinn_cert, count),
    )?;
    eprintln!(
        "  quinn: {:.0} B per idle connection, {:.0} handshakes/s, {} B left after close",
        quinn.per_session, quinn.handshakes_per_s, quinn.left
    );
    let freed = kwik.freed() && quinn.freed();
    Line::new("sessions")
        .int("count", count as u64)
        .num("kwik_bytes_per_idle_session", kwik.per_session, 0)
        .num("quinn_bytes_per_idle_session", quinn.per_session, 0)
        .num("memory_ratio", kwik.per_session / quinn.per_session, 3)
        .num("kwik_handshakes_per_s", kwik.handshakes_per_s, 0)
        .num("quinn_handshakes_per_s", quinn.handshakes_per_s, 0)
        .bool("freed_after_close", freed)
        .int("kwik_left_after_close", kwik.left.max(0) as u64)
        .int("quinn_left_after_close", quinn.left.max(0) as u64)
        .num("wall_s", started.elapsed().as_secs_f64(), 2)
        .emit();
    Ok(())
}

/// kwik server application: accepts every session and echoes every bidi
/// stream back. It keeps no per-session state of its own, so that the
/// meter sees kwik's.
struct EchoServer;

impl EchoServer {
    fn echo(ep: &mut KwikEndpoint, session: SessionHandle, stream: kwik_core::StreamId) {
        let Some(mut view) = ep.session(session) else {
            return;
        };
        let Some(mut s) = view.stream(stream) else {
            return;
        };
        loop {
            match s.read(usize::MAX) {
                Ok(Some(chunk)) => {
                    // 64 bytes always fit the fresh stream's credit.
                    let _ = s.write(&chunk);
                }
                Ok(None) => {
                    let _ = s.finish();
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl App for EchoServer {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _: Instant, event: &Event, _: &mut Trace) {
        match *event {
            Event::Incoming { incoming, .. } => {
                let _ = ep.accept(incoming);
            }
            Event::StreamOpened { session, dir } => {
                let mut opened = Vec::new();
                if let Some(mut view) = ep.session(session) {
                    while let Some(id) = view.accept(dir) {
                        opened.push(id);
                    }
                }
                for id in opened {
                    Self::echo(ep, session, id);
                }
            }
            Event::StreamReadable { session, stream } => Self::echo(ep, session, stream),
            _ => {}
        }
    }
}

/// Server of the kwik contender: the sessions its endpoint holds.
impl Server for KwikNode<EchoServer> {
    fn sessions(&self) -> usize {
        self.endpoint.stats().sessions as usize
    }
}

/// kwik clients: `count` sessions from one endpoint, at most
/// [`IN_FLIGHT`] connecting at once, each echoing [`ECHO`] once.
struct KwikClients {
    count: usize,
    config: ClientConfig,
    /// Sessions not yet echoed, by handle, with their stream and the bytes
    /// back so far.
    pending: BTreeMap<SessionHandle, (Option<kwik_core::StreamId>, usize)>,
    all: Vec<SessionHandle>,
    echoed: usize,
    failed: Option<String>,
}

impl KwikClients {
    fn new(count: usize, config: ClientConfig) -> Self {
        Self {
            count,
            config,
            pending: BTreeMap::new(),
            all: Vec::new(),
            echoed: 0,
            failed: None,
        }
    }

    fn on_readable(&mut self, ep: &mut KwikEndpoint, session: SessionHandle) {
        let Some((Some(stream), got)) = self.pending.get_mut(&session) else {
            return;
        };
        let Some(mut view) = ep.session(session) else {
            return;
        };
        let Some(mut s) = view.stream(*stream) else {
            return;
        };
        loop {
            match s.read(usize::MAX) {
                Ok(Some(chunk)) => *got += chunk.len(),
                Ok(None) => {
                    if *got != ECHO.len() {
                        self.failed = Some(format!("echo of {got} bytes"));
                    }
                    self.pending.remove(&session);
                    self.echoed += 1;
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl App for KwikClients {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _: Instant, event: &Event, _: &mut Trace) {
        match *event {
            Event::SessionEstablished { session, .. } => {
                let Some(mut view) = ep.session(session) else {
                    return;
                };
                let opened = view.open(Dir::Bi).ok().and_then(|id| {
                    let mut s = view.stream(id)?;
                    (s.write(ECHO).ok()? == ECHO.len() && s.finish().is_ok()).then_some(id)
                });
                match opened {
                    Some(id) => {
                        self.pending.insert(session, (Some(id), 0));
                    }
                    None => self.failed = Some("could not write the echo".into()),
                }
            }
            Event::StreamReadable { session, .. } => self.on_readable(ep, session),
            Event::SessionClosed { ref reason, .. } if self.echoed < self.count => {
                self.failed = Some(format!("session closed early: {reason}"));
            }
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _: &mut Trace) -> bool {
        let mut acted = false;
        while self.all.len() < self.count && self.pending.len() < IN_FLIGHT {
            match ep.connect(now, addr(1), "kwik.test", &self.config) {
                Ok(h) => {
                    self.pending.insert(h, (None, 0));
                    self.all.push(h);
                    acted = true;
                }
                Err(e) => {
                    self.failed = Some(format!("connect: {e}"));
                    break;
                }
            }
        }
        acted
    }

    fn done(&self) -> bool {
        self.echoed == self.count || self.failed.is_some()
    }
}

impl Clients for KwikNode<KwikClients> {
    fn echoed(&self) -> usize {
        self.app.echoed
    }
    fn failed(&self) -> Option<String> {
        self.app.failed.clone()
    }
    fn close_all(&mut self, _: Instant) {
        for &h in &self.app.all {
            if let Some(mut view) = self.endpoint.session(h) {
                let _ = view.close(0, b"");
            }
        }
    }
}

/// Bare quinn server: accepts every connection and echoes every bidi
/// stream back.
struct QuinnEchoServer {
    quic: QuicDriver,
}

impl QuinnEchoServer {
    fn new(seed: u64, cert: &DevCert) -> Self {
        let crypto = Arc::new(cert.quic_server_config(&[QUINN_ALPN]));
        let config = seeded_server_config(seed, crypto, Arc::new(TransportConfig::default()));
        let endpoint = Endpoint::new(
            Arc::new(seeded_endpoint_config(seed)),
            Some(Arc::new(config)),
            true,
            None,
        );
        let mut quic = QuicDriver::new(addr(1), endpoint);
        quic.track();
        Self { quic }
    }

    fn echo(conn: &mut quinn_proto::Connection, id: StreamId) {
        let mut back = Vec::new();
        let mut fin = false;
        {
            let mut recv = conn.recv_stream(id);
            let Ok(mut chunks) = recv.read(true) else {
                return;
            };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => back.push(chunk.bytes),
                    Ok(None) => {
                        fin = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = chunks.finalize();
        }
        let mut send = conn.send_stream(id);
        for chunk in back {
            let _ = send.write(&chunk);
        }
        if fin {
            let _ = send.finish();
        }
    }
}

impl Node for QuinnEchoServer {
    fn receive(&mut self, now: Instant, _: SocketAddr, remote: SocketAddr, data: BytesMut) {
        self.quic.receive(now, remote, data, true);
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
    fn step(&mut self, _: Instant, _: &mut Trace) {
        // Only connections that got input can have events: polling all of
        // them every step would charge quinn for this harness (the driver
        // tracks them, and indexes their timers).
        for ch in self.quic.touched() {
            let Some(conn) = self.quic.connection_by_handle(ch) else {
                continue;
            };
            while let Some(ev) = conn.poll() {
                match ev {
                    quinn_proto::Event::Stream(StreamEvent::Opened { dir }) => {
                        while let Some(id) = conn.streams().accept(dir) {
                            Self::echo(conn, id);
                        }
                    }
                    quinn_proto::Event::Stream(StreamEvent::Readable { id }) => {
                        Self::echo(conn, id)
                    }
                    _ => {}
                }
            }
        }
    }
}

impl Server for QuinnEchoServer {
    fn sessions(&self) -> usize {
        self.quic.len()
    }
}

/// Bare quinn clients, dialing and echoing as [`KwikClients`] do.
struct QuinnClients {
    quic: QuicDriver,
    config: quinn_proto::ClientConfig,
    count: usize,
    dialed: usize,
    /// Connections not yet echoed, with their stream and the bytes back.
    pending: BTreeMap<ConnectionHandle, (Option<StreamId>, usize)>,
    echoed: usize,
    failed: Option<String>,
}

impl QuinnClients {
    fn new(seed: u64, cert: &DevCert, count: usize) -> Self {
        let crypto = Arc::new(cert.quic_client_config(&[QUINN_ALPN]));
        let config = seeded_client_config(seed, crypto, Arc::new(TransportConfig::default()));
        let endpoint = Endpoint::new(Arc::new(seeded_endpoint_config(seed)), None, true, None);
        let mut quic = QuicDriver::new(addr(2), endpoint);
        quic.track();
        Self {
            quic,
            config,
            count,
            dialed: 0,
            pending: BTreeMap::new(),
            echoed: 0,
            failed: None,
        }
    }
}

impl Node for QuinnClients {
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
    fn step(&mut self, now: Instant, _: &mut Trace) {
        while self.dialed < self.count && self.pending.len() < IN_FLIGHT {
            match self
                .quic
                .connect(now, self.config.clone(), addr(1), QUINN_NAME)
            {
                Ok(ch) => {
                    self.pending.insert(ch, (None, 0));
                    self.dialed += 1;
                }
                Err(e) => {
                    self.failed = Some(format!("connect: {e}"));
                    return;
                }
            }
        }
        let handles: Vec<ConnectionHandle> = self.pending.keys().copied().collect();
        for ch in handles {
            let Some(conn) = self.quic.connection_by_handle(ch) else {
                continue;
            };
            let entry = self.pending.get_mut(&ch).expect("listed");
            let mut done = false;
            while let Some(ev) = conn.poll() {
                match ev {
                    quinn_proto::Event::Connected => {
                        let Some(id) = conn.streams().open(quinn_proto::Dir::Bi) else {
                            self.failed = Some("no bidi stream credit".into());
                            return;
                        };
                        let mut send = conn.send_stream(id);
                        if send.write(ECHO) != Ok(ECHO.len()) || send.finish().is_err() {
                            self.failed = Some("could not write the echo".into());
                            return;
                        }
                        entry.0 = Some(id);
                    }
                    quinn_proto::Event::Stream(StreamEvent::Readable { id }) => {
                        let mut recv = conn.recv_stream(id);
                        let Ok(mut chunks) = recv.read(true) else {
                            continue;
                        };
                        loop {
                            match chunks.next(usize::MAX) {
                                Ok(Some(chunk)) => entry.1 += chunk.bytes.len(),
                                Ok(None) => {
                                    done = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        let _ = chunks.finalize();
                    }
                    quinn_proto::Event::ConnectionLost { reason } => {
                        self.failed = Some(format!("connection lost: {reason}"));
                        return;
                    }
                    _ => {}
                }
            }
            if done {
                if entry.1 != ECHO.len() {
                    self.failed = Some(format!("echo of {} bytes", entry.1));
                }
                self.pending.remove(&ch);
                self.echoed += 1;
            }
        }
    }
    fn done(&self) -> bool {
        self.echoed == self.count || self.failed.is_some()
    }
}

impl Clients for QuinnClients {
    fn echoed(&self) -> usize {
        self.echoed
    }
    fn failed(&self) -> Option<String> {
        self.failed.clone()
    }
    fn close_all(&mut self, now: Instant) {
        for conn in self.quic.connections_mut() {
            conn.close(now, 0u32.into(), Bytes::new());
        }
    }
}
