//! `session_ops`: arbitrary sequences of application and network operations
//! on a whole multi-server session in the simulator.
//!
//! A client, a primary and two secondaries run genuine kwik endpoints; the
//! input decides what their applications do (open, write, read, finish,
//! reset and stop streams; add, remove and kill paths; delegate ranges;
//! relay raw messages; close) and what the network does (loss,
//! duplication, corruption, reordering, outages, time passing). Whatever
//! the order, after every step: every byte an application read is the byte
//! its writer wrote (or had delegated) at that offset, in order, once; no
//! stream holds more than its window; and once everything is closed the
//! run goes idle within a bounded number of steps with nothing left held.
//! Errors the operations provoke (a write refused, a session closed for a
//! misuse) are fine: the invariants are about what kwik may never do.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use kwik_core::{
    Dir, Event, KwikEndpoint, PathId, PathPolicy, PathTarget, RangeSet, SessionHandle, Side,
    StreamId, TokenKey,
};

use super::{Input, Output as Writer, Seed};
use crate::apps::Payload;
use crate::kwik_node::{App, KwikNode};
use crate::link::LinkConfig;
use crate::multi::PayloadResource;
use crate::setup::{SERVER_NAME, addr, configs, dev_cert};
use crate::sim::{NodeId, Sim};
use crate::trace::Trace;

/// Most operations run from one input.
const MAX_OPS: usize = 64;

/// Per-stream window of every endpoint (small, so flow control matters).
pub const WINDOW: u64 = 64 << 10;

/// Most bytes one write op writes.
const MAX_WRITE: u64 = 96 << 10;

/// Server streams (per direction) whose bytes secondaries can serve.
const SERVED_STREAMS: u64 = 8;

/// Steps the final drain may take before the run counts as not settling.
const MAX_DRAIN_STEPS: u64 = 400_000;

/// Who acts: the client or the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The client application.
    Client,
    /// The primary's application.
    Primary,
}

/// One operation of a [`SessionScript`]. Selectors pick among what exists
/// at that moment (modulo its count); an operation with nothing to act on
/// does nothing.
#[derive(Debug, Clone)]
pub enum SessionOp {
    /// Opens a stream.
    Open(Actor, Dir),
    /// Writes up to `len` bytes on a stream the actor sends on.
    Write(Actor, u64, u64),
    /// Reads up to `max` bytes from a stream the actor receives on.
    Read(Actor, u64, u64),
    /// Finishes a stream.
    Finish(Actor, u64),
    /// Resets a stream with a code.
    Reset(Actor, u64, u64),
    /// Stops a stream with a code.
    Stop(Actor, u64, u64),
    /// The primary adds secondary 0 or 1.
    AddPath(u8),
    /// The primary removes a path.
    RemovePath(u64),
    /// A secondary's host goes down (or comes back).
    Kill(u8, bool),
    /// The primary delegates `len` bytes of one of its streams to a path,
    /// from where its own writing stands.
    Delegate(u64, u64, u64),
    /// The primary relays a raw message of `len` bytes to a path.
    Raw(u64, u64),
    /// Impairs the client's link to server `server` (0 primary): loss,
    /// duplication, corruption (each in 1/256), jitter in ms.
    Link {
        /// 0 the primary, 1 and 2 the secondaries.
        server: u8,
        /// Loss probability × 256.
        loss: u8,
        /// Duplication probability × 256.
        duplicate: u8,
        /// Corruption probability × 256.
        corrupt: u8,
        /// Jitter (reordering) in ms.
        jitter: u8,
    },
    /// Lets virtual time pass.
    Advance(u16),
    /// The actor closes its session.
    Close(Actor, u64),
}

/// A run of [`SessionOp`]s.
#[derive(Debug, Clone, Default)]
pub struct SessionScript {
    /// The operations, in order.
    pub ops: Vec<SessionOp>,
}

fn actor_byte(a: Actor) -> u8 {
    match a {
        Actor::Client => 0,
        Actor::Primary => 1,
    }
}

impl SessionScript {
    /// The input bytes that parse back to this script.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for op in &self.ops {
            let dir = |d: Dir| u8::from(d == Dir::Uni);
            match *op {
                SessionOp::Open(a, d) => w.byte(0).byte(actor_byte(a) | dir(d) << 1),
                SessionOp::Write(a, s, n) => w.byte(1).byte(actor_byte(a)).varint(s).varint(n),
                SessionOp::Read(a, s, n) => w.byte(2).byte(actor_byte(a)).varint(s).varint(n),
                SessionOp::Finish(a, s) => w.byte(3).byte(actor_byte(a)).varint(s),
                SessionOp::Reset(a, s, c) => w.byte(4).byte(actor_byte(a)).varint(s).varint(c),
                SessionOp::Stop(a, s, c) => w.byte(5).byte(actor_byte(a)).varint(s).varint(c),
                SessionOp::AddPath(i) => w.byte(6).byte(i),
                SessionOp::RemovePath(p) => w.byte(7).varint(p),
                SessionOp::Kill(i, down) => w.byte(8).byte(i).byte(u8::from(down)),
                SessionOp::Delegate(p, s, n) => w.byte(9).varint(p).varint(s).varint(n),
                SessionOp::Raw(p, n) => w.byte(10).varint(p).varint(n),
                SessionOp::Link {
                    server,
                    loss,
                    duplicate,
                    corrupt,
                    jitter,
                } => w
                    .byte(11)
                    .byte(server)
                    .byte(loss)
                    .byte(duplicate)
                    .byte(corrupt)
                    .byte(jitter),
                SessionOp::Advance(ms) => w.byte(12).varint(u64::from(ms)),
                SessionOp::Close(a, c) => w.byte(13).byte(actor_byte(a)).varint(c),
            };
        }
        w.0
    }
}

impl<'a> Arbitrary<'a> for SessionScript {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut inp = Input::new(u);
        let actor = |b: u8| {
            if b & 1 == 0 {
                Actor::Client
            } else {
                Actor::Primary
            }
        };
        let mut ops = Vec::new();
        while !inp.is_empty() && ops.len() < MAX_OPS {
            ops.push(match inp.byte() % 14 {
                0 => {
                    let b = inp.byte();
                    let d = if b & 2 == 0 { Dir::Bi } else { Dir::Uni };
                    SessionOp::Open(actor(b), d)
                }
                1 => SessionOp::Write(actor(inp.byte()), inp.varint(), inp.upto(MAX_WRITE)),
                2 => SessionOp::Read(actor(inp.byte()), inp.varint(), inp.varint()),
                3 => SessionOp::Finish(actor(inp.byte()), inp.varint()),
                4 => SessionOp::Reset(actor(inp.byte()), inp.varint(), inp.varint()),
                5 => SessionOp::Stop(actor(inp.byte()), inp.varint(), inp.varint()),
                6 => SessionOp::AddPath(inp.byte() % 2),
                7 => SessionOp::RemovePath(inp.varint()),
                8 => SessionOp::Kill(inp.byte() % 2, inp.byte() & 1 == 1),
                9 => SessionOp::Delegate(inp.varint(), inp.varint(), inp.upto(MAX_WRITE)),
                10 => SessionOp::Raw(inp.varint(), inp.upto(4096)),
                11 => SessionOp::Link {
                    server: inp.byte() % 3,
                    loss: inp.byte(),
                    duplicate: inp.byte(),
                    corrupt: inp.byte(),
                    jitter: inp.byte(),
                },
                12 => SessionOp::Advance(inp.upto(5000) as u16),
                _ => SessionOp::Close(actor(inp.byte()), inp.varint()),
            });
        }
        Ok(Self { ops })
    }
}

/// What every application may legitimately receive: per writer side and
/// stream, the ranges written or delegated, and the raw messages relayed.
#[derive(Default)]
struct Ledger {
    written: BTreeMap<(Side, StreamId), RangeSet>,
    raw: BTreeSet<Vec<u8>>,
    raw_received: u64,
    violations: Vec<String>,
}

type Shared = Rc<RefCell<Ledger>>;

/// The application of every node: remembers its session, the streams it
/// can act on and how far it read each; checks every byte it reads.
struct OpsApp {
    side: Side,
    payload: Payload,
    ledger: Shared,
    session: Option<SessionHandle>,
    /// Streams this side sends on, with the next offset it writes.
    sending: BTreeMap<StreamId, u64>,
    /// Streams this side receives on, with the offset read so far.
    receiving: BTreeMap<StreamId, u64>,
    /// Paths the primary learned of (added or not yet answered).
    paths: Vec<PathId>,
}

impl OpsApp {
    fn new(side: Side, payload: Payload, ledger: Shared) -> Self {
        Self {
            side,
            payload,
            ledger,
            session: None,
            sending: BTreeMap::new(),
            receiving: BTreeMap::new(),
            paths: Vec::new(),
        }
    }

    /// Reads `id` up to `max` bytes (once, or to exhaustion if `all`),
    /// checking each byte against what its writer put there.
    fn read(&mut self, ep: &mut KwikEndpoint, id: StreamId, max: usize, all: bool) {
        let Some(h) = self.session else { return };
        let Some(mut stream) = ep.stream(h, id) else {
            return;
        };
        let writer = match self.side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        loop {
            let at = self.receiving.entry(id).or_default();
            match stream.read(max) {
                Ok(Some(data)) => {
                    let end = *at + data.len() as u64;
                    let mut ledger = self.ledger.borrow_mut();
                    let legit = ledger
                        .written
                        .get(&(writer, id))
                        .is_some_and(|r| r.contains(*at..end));
                    if !legit || !self.payload.verify(id, *at, &data) {
                        ledger.violations.push(format!(
                            "{:?} read {id} [{}, {end}) that its writer never wrote there",
                            self.side, *at
                        ));
                    }
                    *at = end;
                    if !all {
                        return;
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}

impl App for OpsApp {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _now: Instant, event: &Event, _: &mut Trace) {
        match event {
            Event::SessionEstablished { session, .. } => self.session = Some(*session),
            Event::StreamOpened { session, dir } => {
                if let Some(mut view) = ep.session(*session) {
                    while let Some(id) = view.accept(*dir) {
                        self.receiving.insert(id, 0);
                        if *dir == Dir::Bi {
                            self.sending.insert(id, 0);
                        }
                    }
                }
            }
            Event::PathAdded { path, .. } if !self.paths.contains(path) => self.paths.push(*path),
            Event::RawReceived { payload, .. } => {
                let mut ledger = self.ledger.borrow_mut();
                ledger.raw_received += 1;
                if !ledger.raw.contains(&payload[..]) {
                    ledger.violations.push(format!(
                        "a secondary received a raw message never relayed ({} bytes)",
                        payload.len()
                    ));
                }
            }
            _ => {}
        }
    }
}

/// The nodes of a run.
struct World {
    sim: Sim,
    client: NodeId,
    primary: NodeId,
    secondaries: [NodeId; 2],
    servers: [SocketAddr; 3],
    client_addr: SocketAddr,
    ledger: Shared,
    payload: Payload,
}

fn tune(t: &mut kwik_core::TransportConfig) {
    t.stream_window = WINDOW;
    t.max_bidi_streams = 8;
    t.max_uni_streams = 8;
    t.idle_timeout = Duration::from_secs(10);
}

impl World {
    fn new() -> Self {
        let seed = 5;
        let mut sim = Sim::new(seed);
        let cert = dev_cert(seed);
        let (mut client_cfg, server_cfg) = configs(&cert);
        let key = TokenKey::new([0x5a; 32]);
        let client_addr = addr(100);
        let servers = [addr(1), addr(2), addr(3)];
        for s in servers {
            sim.set_path(
                client_addr,
                s,
                LinkConfig::new().latency(Duration::from_millis(5)),
            );
        }
        tune(&mut client_cfg.transport);
        client_cfg.path_policy =
            PathPolicy::allow(servers[1..].iter().map(|a| PathTarget::Address(*a)));
        let payload = Payload::new(seed);
        let ledger: Shared = Rc::default();
        let now = sim.now();
        let unix = Duration::from_secs(1_800_000_000);
        let mut ids = Vec::new();
        for (i, a) in servers.iter().enumerate() {
            let mut cfg = server_cfg.clone();
            tune(&mut cfg.transport);
            if i == 0 {
                cfg.token_key = Some(key.clone());
            } else {
                cfg.trusted_keys = vec![key.clone()];
                cfg.path_addresses = vec![*a];
                cfg.path_server_name = Some(SERVER_NAME.to_string());
            }
            let mut ep_cfg = kwik_core::EndpointConfig::new([i as u8 + 1; 32]);
            ep_cfg.unix_time = unix;
            let mut ep = KwikEndpoint::new(ep_cfg, Some(cfg), now);
            if i > 0 {
                // Delegated ranges are served from the same content the
                // primary writes, one descriptor per stream.
                for dir in [Dir::Bi, Dir::Uni] {
                    for k in 0..SERVED_STREAMS {
                        let s = StreamId::new(Side::Server, dir, k);
                        let r = Arc::new(PayloadResource::new(payload.clone(), s, 1 << 30));
                        ep.serve_resource(Bytes::copy_from_slice(&s.0.to_le_bytes()), r);
                    }
                }
            }
            let app = OpsApp::new(Side::Server, payload.clone(), ledger.clone());
            ids.push(sim.add_node(&[*a], Box::new(KwikNode::new(*a, ep, app))));
        }
        let mut client_ep_cfg = kwik_core::EndpointConfig::new([0xc1; 32]);
        client_ep_cfg.unix_time = unix;
        let mut client_ep = KwikEndpoint::new(client_ep_cfg, None, now);
        let h = client_ep
            .connect(now, servers[0], SERVER_NAME, &client_cfg)
            .expect("connect");
        let mut app = OpsApp::new(Side::Client, payload.clone(), ledger.clone());
        app.session = Some(h);
        let client = sim.add_node(
            &[client_addr],
            Box::new(KwikNode::new(client_addr, client_ep, app)),
        );
        Self {
            sim,
            client,
            primary: ids[0],
            secondaries: [ids[1], ids[2]],
            servers,
            client_addr,
            ledger,
            payload,
        }
    }

    fn node(&mut self, a: Actor) -> &mut KwikNode<OpsApp> {
        let id = match a {
            Actor::Client => self.client,
            Actor::Primary => self.primary,
        };
        self.sim.node_mut::<KwikNode<OpsApp>>(id)
    }

    fn nodes(&self) -> [NodeId; 4] {
        [
            self.client,
            self.primary,
            self.secondaries[0],
            self.secondaries[1],
        ]
    }

    fn apply(&mut self, op: &SessionOp) {
        let pick = |set: &BTreeMap<StreamId, u64>, sel: u64| -> Option<StreamId> {
            let n = set.len() as u64;
            (n > 0).then(|| *set.keys().nth((sel % n) as usize).expect("in range"))
        };
        match *op {
            SessionOp::Open(a, dir) => {
                let node = self.node(a);
                let Some(h) = node.app.session else { return };
                if let Some(mut view) = node.endpoint.session(h)
                    && let Ok(id) = view.open(dir)
                {
                    node.app.sending.insert(id, 0);
                    if dir == Dir::Bi {
                        node.app.receiving.insert(id, 0);
                    }
                }
            }
            SessionOp::Write(a, sel, len) => {
                let payload = self.payload.clone();
                let ledger = self.ledger.clone();
                let side = side_of(a);
                let node = self.node(a);
                let (Some(h), Some(id)) = (node.app.session, pick(&node.app.sending, sel)) else {
                    return;
                };
                let at = node.app.sending[&id];
                let data = payload.chunk(id, at, len as usize);
                // The bytes count as written before kwik sees them: a
                // reader may get them within this very call.
                ledger
                    .borrow_mut()
                    .written
                    .entry((side, id))
                    .or_default()
                    .insert(at..at + data.len() as u64);
                if let Some(mut s) = node.endpoint.stream(h, id)
                    && let Ok(n) = s.write(&data)
                {
                    *node.app.sending.get_mut(&id).expect("picked") += n as u64;
                }
            }
            SessionOp::Read(a, sel, max) => {
                let node = self.node(a);
                if let Some(id) = pick(&node.app.receiving, sel) {
                    let max = (max as usize).clamp(1, 1 << 20);
                    node.app.read(&mut node.endpoint, id, max, false);
                }
            }
            SessionOp::Finish(a, sel) => {
                let delegated = self.delegated_end();
                let node = self.node(a);
                let (Some(h), Some(id)) = (node.app.session, pick(&node.app.sending, sel)) else {
                    return;
                };
                // A FIN below a delegated range would be the application's
                // own contradiction, not kwik's: skip it.
                if delegated
                    .get(&id)
                    .is_some_and(|&end| end > node.app.sending[&id])
                {
                    return;
                }
                if let Some(mut s) = node.endpoint.stream(h, id) {
                    let _ = s.finish();
                }
            }
            SessionOp::Reset(a, sel, code) => {
                let node = self.node(a);
                if let (Some(h), Some(id)) = (node.app.session, pick(&node.app.sending, sel))
                    && let Some(mut s) = node.endpoint.stream(h, id)
                {
                    let _ = s.reset(code);
                }
            }
            SessionOp::Stop(a, sel, code) => {
                let node = self.node(a);
                if let (Some(h), Some(id)) = (node.app.session, pick(&node.app.receiving, sel))
                    && let Some(mut s) = node.endpoint.stream(h, id)
                {
                    let _ = s.stop(code);
                }
            }
            SessionOp::AddPath(i) => {
                let target = self.servers[1 + usize::from(i % 2)];
                let node = self.node(Actor::Primary);
                if let Some(h) = node.app.session
                    && let Some(mut view) = node.endpoint.session(h)
                    && let Ok(p) = view.add_path(target, SERVER_NAME)
                {
                    node.app.paths.push(p);
                }
            }
            SessionOp::RemovePath(sel) => {
                let node = self.node(Actor::Primary);
                if let Some(h) = node.app.session
                    && !node.app.paths.is_empty()
                {
                    let p = node.app.paths[(sel % node.app.paths.len() as u64) as usize];
                    if let Some(mut view) = node.endpoint.session(h) {
                        let _ = view.remove_path(p);
                    }
                }
            }
            SessionOp::Kill(i, down) => {
                self.sim
                    .set_down(self.servers[1 + usize::from(i % 2)], down);
            }
            SessionOp::Delegate(psel, ssel, len) => {
                let node = self.node(Actor::Primary);
                let (Some(h), Some(id)) = (node.app.session, pick(&node.app.sending, ssel)) else {
                    return;
                };
                if node.app.paths.is_empty() || id.initiator() != Side::Server {
                    return;
                }
                let p = node.app.paths[(psel % node.app.paths.len() as u64) as usize];
                let at = node.app.sending[&id];
                let range = at..at + len;
                let descriptor = Bytes::copy_from_slice(&id.0.to_le_bytes());
                if let Some(mut view) = node.endpoint.session(h)
                    && view
                        .delegate(p, id, range.clone(), false, descriptor)
                        .is_ok()
                {
                    self.ledger
                        .borrow_mut()
                        .written
                        .entry((Side::Server, id))
                        .or_default()
                        .insert(range);
                }
            }
            SessionOp::Raw(psel, len) => {
                let payload: Vec<u8> = self
                    .payload
                    .chunk(StreamId(psel), len, len as usize)
                    .to_vec();
                let ledger = self.ledger.clone();
                let node = self.node(Actor::Primary);
                if let Some(h) = node.app.session
                    && !node.app.paths.is_empty()
                {
                    let p = node.app.paths[(psel % node.app.paths.len() as u64) as usize];
                    ledger.borrow_mut().raw.insert(payload.clone());
                    if let Some(mut view) = node.endpoint.session(h) {
                        let _ = view.send_raw(p, Bytes::from(payload));
                    }
                }
            }
            SessionOp::Link {
                server,
                loss,
                duplicate,
                corrupt,
                jitter,
            } => {
                let p = |b: u8| f64::from(b) / 256.0 * 0.5;
                let cfg = LinkConfig::new()
                    .latency(Duration::from_millis(5))
                    .loss(p(loss))
                    .duplicate(p(duplicate))
                    .corrupt(p(corrupt))
                    .jitter(Duration::from_millis(u64::from(jitter % 50)));
                let s = self.servers[usize::from(server % 3)];
                self.sim.set_path(self.client_addr, s, cfg);
            }
            SessionOp::Advance(ms) => self.sim.run_for(Duration::from_millis(u64::from(ms))),
            SessionOp::Close(a, code) => {
                let node = self.node(a);
                if let Some(h) = node.app.session
                    && let Some(mut view) = node.endpoint.session(h)
                {
                    let _ = view.close(code % (1 << 20), b"fuzz");
                }
            }
        }
    }

    /// End of the delegated ranges of each primary stream.
    fn delegated_end(&self) -> BTreeMap<StreamId, u64> {
        let ledger = self.ledger.borrow();
        ledger
            .written
            .iter()
            .filter(|((side, _), _)| *side == Side::Server)
            .filter_map(|((_, id), r)| Some((*id, r.last()?.end)))
            .collect()
    }

    /// The invariants that hold after every step.
    fn check(&mut self) {
        let violations = std::mem::take(&mut self.ledger.borrow_mut().violations);
        assert!(violations.is_empty(), "{violations:#?}");
        for id in self.nodes() {
            let node = self.sim.node_mut::<KwikNode<OpsApp>>(id);
            let handles: Vec<SessionHandle> = node.endpoint.sessions().collect();
            for h in handles {
                let Some(view) = node.endpoint.session(h) else {
                    continue;
                };
                let streams: Vec<StreamId> = node.app.receiving.keys().copied().collect();
                for s in streams {
                    let held = view.stream_buffered(s).unwrap_or(0);
                    assert!(held <= WINDOW, "{s} holds {held} bytes, window {WINDOW}");
                }
                let total = view.stats().buffered;
                assert!(total <= WINDOW * 32, "session holds {total} bytes");
            }
        }
    }

    /// Closes everything, heals the network and runs to idle.
    fn finish(&mut self) {
        for i in 0..2 {
            self.sim.set_down(self.servers[1 + i], false);
        }
        for s in self.servers {
            self.sim.set_path(
                self.client_addr,
                s,
                LinkConfig::new().latency(Duration::from_millis(5)),
            );
        }
        // Let what is in flight settle, read it all, then close.
        self.sim.run_for(Duration::from_millis(200));
        for a in [Actor::Client, Actor::Primary] {
            let node = self.node(a);
            let ids: Vec<StreamId> = node.app.receiving.keys().copied().collect();
            for id in ids {
                node.app.read(&mut node.endpoint, id, usize::MAX, true);
            }
            if let Some(h) = node.app.session
                && let Some(mut view) = node.endpoint.session(h)
            {
                let _ = view.close(0, b"done");
            }
        }
        self.check();
        let mut steps = 0;
        while !self.all_idle() {
            assert!(
                steps < MAX_DRAIN_STEPS,
                "not idle after {MAX_DRAIN_STEPS} steps ({:?})",
                self.sim.elapsed()
            );
            if !self.sim.step() {
                break;
            }
            steps += 1;
        }
        assert!(
            self.all_idle(),
            "the simulation went quiet with sessions held"
        );
        for id in self.nodes() {
            let stats = self.sim.node::<KwikNode<OpsApp>>(id).endpoint.stats();
            assert_eq!(stats.sessions, 0, "{stats:?}");
            assert_eq!(stats.half_open, 0, "{stats:?}");
        }
    }

    fn all_idle(&self) -> bool {
        self.nodes()
            .iter()
            .all(|&id| self.sim.node::<KwikNode<OpsApp>>(id).endpoint.is_idle())
    }
}

fn side_of(a: Actor) -> Side {
    match a {
        Actor::Client => Side::Client,
        Actor::Primary => Side::Server,
    }
}

/// What a run achieved (for the tests to check that seeds reach deep).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Bytes the client application read.
    pub client_read: u64,
    /// Bytes the primary's application read.
    pub primary_read: u64,
    /// Paths the primary saw added.
    pub paths: usize,
    /// Raw messages the secondaries received.
    pub raw: u64,
}

/// Runs the `session_ops` target.
pub fn run(script: &SessionScript) -> Summary {
    let mut w = World::new();
    w.sim.run_for(Duration::from_millis(50));
    w.check();
    for op in &script.ops {
        w.apply(op);
        w.sim.run_for(Duration::from_millis(2));
        w.check();
    }
    let read = |w: &World, id: NodeId| -> u64 {
        w.sim
            .node::<KwikNode<OpsApp>>(id)
            .app
            .receiving
            .values()
            .sum()
    };
    let mut summary = Summary {
        client_read: read(&w, w.client),
        primary_read: read(&w, w.primary),
        paths: w.sim.node::<KwikNode<OpsApp>>(w.primary).app.paths.len(),
        raw: w.ledger.borrow().raw_received,
    };
    w.finish();
    summary.client_read = read(&w, w.client);
    summary.primary_read = read(&w, w.primary);
    summary
}

/// Seeds: a plain two-way exchange, a delegated transfer over both
/// secondaries, a raw relay, a path that dies, a lossy link, resets.
pub fn seeds() -> Vec<Seed> {
    use Actor::*;
    use SessionOp::*;
    let scripts: Vec<(&str, Vec<SessionOp>)> = vec![
        (
            "echo",
            vec![
                Open(Client, Dir::Bi),
                Write(Client, 0, 20_000),
                Finish(Client, 0),
                Advance(100),
                Read(Primary, 0, 1 << 20),
                Write(Primary, 0, 5000),
                Finish(Primary, 0),
                Advance(100),
                Read(Client, 0, 1 << 20),
            ],
        ),
        (
            "delegate",
            vec![
                AddPath(0),
                AddPath(1),
                Advance(300),
                Open(Primary, Dir::Uni),
                Write(Primary, 0, 10_000),
                Delegate(0, 0, 30_000),
                Delegate(1, 0, 30_000),
                Advance(200),
                Read(Client, 0, 1 << 20),
                Advance(200),
                Read(Client, 0, 1 << 20),
            ],
        ),
        (
            "raw-relay",
            vec![
                AddPath(0),
                Advance(300),
                Raw(0, 100),
                Raw(0, 3000),
                Advance(100),
                RemovePath(0),
                Advance(300),
            ],
        ),
        (
            "path-dies",
            vec![
                AddPath(1),
                Advance(300),
                Open(Primary, Dir::Uni),
                Delegate(0, 0, 60_000),
                Kill(1, true),
                Advance(3000),
                Read(Client, 0, 1 << 20),
                Kill(1, false),
                Advance(500),
            ],
        ),
        (
            "lossy",
            vec![
                Link {
                    server: 0,
                    loss: 20,
                    duplicate: 20,
                    corrupt: 10,
                    jitter: 20,
                },
                Open(Client, Dir::Uni),
                Write(Client, 0, 90_000),
                Advance(300),
                Read(Primary, 0, 1 << 20),
                Write(Client, 0, 50_000),
                Advance(300),
                Read(Primary, 0, 1 << 20),
            ],
        ),
        (
            "reset-and-stop",
            vec![
                Open(Client, Dir::Bi),
                Open(Primary, Dir::Bi),
                Write(Client, 0, 70_000),
                Write(Primary, 0, 70_000),
                Reset(Client, 0, 7),
                Stop(Client, 1, 9),
                Advance(200),
                Read(Primary, 0, 1000),
                Close(Primary, 3),
            ],
        ),
    ];
    scripts
        .into_iter()
        .map(|(name, ops)| Seed::new(name, SessionScript { ops }.encode()))
        .collect()
}
