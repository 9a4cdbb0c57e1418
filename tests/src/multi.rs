//! Multi-server scenarios: a client, a primary and secondaries in one
//! simulation, serving one resource over one logical stream.
//!
//! [`MultiSetup`] wires the hosts (client at `addr(100)`, primary at
//! `addr(1)`, secondaries at `addr(2..)`) with one link per server, a shared
//! path-token key, and a client policy that allows exactly the configured
//! secondaries. The apps record what a test asserts on: every byte verified
//! at the client, the longest stall of in-order delivery, and every path
//! event on both sides.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kwik_core::{
    ClientConfig, CloseReason, Delegation, Dir, Event, KwikEndpoint, PathFailure, PathFilter,
    PathHealth, PathId, PathPolicy, PathTarget, ReadError, Resource, ServerConfig, SessionHandle,
    StreamId, TokenKey, TransferConfig, TransferId,
};

use crate::apps::Payload;
use crate::kwik_node::{App, KwikNode};
use crate::link::LinkConfig;
use crate::setup::{SERVER_NAME, addr, configs, dev_cert};
use crate::sim::{NodeId, Sim};
use crate::trace::Trace;

/// Descriptor under which every server serves the test resource.
pub const DESCRIPTOR: &[u8] = b"resource-1";

/// The resource: `len` bytes of the deterministic payload of stream `key`.
pub struct PayloadResource {
    payload: Payload,
    key: StreamId,
    len: u64,
}

impl PayloadResource {
    /// The first `len` bytes of `payload` as stream `key` would carry them.
    pub fn new(payload: Payload, key: StreamId, len: u64) -> Self {
        Self { payload, key, len }
    }
}

impl Resource for PayloadResource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, len: usize) -> Bytes {
        let len = (len as u64).min(self.len.saturating_sub(offset)) as usize;
        self.payload.chunk(self.key, offset, len)
    }
}

/// The stream a primary's first unidirectional stream gets.
pub fn first_server_stream() -> StreamId {
    StreamId::new(kwik_core::Side::Server, Dir::Uni, 0)
}

/// A client that reads every stream the primary opens and verifies it.
pub struct MultiClient {
    primary: SocketAddr,
    config: ClientConfig,
    payload: Payload,
    /// The session.
    pub session: Option<SessionHandle>,
    /// Why it ended.
    pub closed: Option<CloseReason>,
    /// Bytes read per stream.
    pub read: BTreeMap<StreamId, u64>,
    /// Streams read to their end.
    pub finished: BTreeSet<StreamId>,
    /// Bytes that failed verification (must stay 0).
    pub corrupt: u64,
    /// When the first and the latest byte were read.
    pub first_byte: Option<Instant>,
    /// When the latest byte was read.
    pub last_byte: Option<Instant>,
    /// Longest time without in-order progress between the first and the
    /// latest byte.
    pub max_stall: Duration,
    /// Path events seen.
    pub path_events: Vec<Event>,
    /// Path events and the session's end, with when they happened.
    pub log: Vec<(Instant, Event)>,
    /// Health grades the client gave its paths, in order.
    pub health: Vec<(Instant, PathId, PathHealth)>,
    /// Server address of every path a path event named.
    pub path_addrs: BTreeMap<PathId, SocketAddr>,
    /// When the session ended.
    pub closed_at: Option<Instant>,
    /// Don't read (so that data stays buffered).
    pub paused: bool,
    /// Streams not to read for now (a stalled reader of those only).
    pub paused_streams: BTreeSet<StreamId>,
    /// Read no more than this many bytes in all (a paced reader); `None`:
    /// read everything that arrives.
    pub read_limit: Option<u64>,
    /// Answers to this client's path proposals
    /// ([`Event::PathProposalAnswered`]), in order.
    pub proposal_answers: Vec<Event>,
}

impl MultiClient {
    /// A client of the primary at `primary`.
    pub fn new(primary: SocketAddr, config: ClientConfig, payload: Payload) -> Self {
        Self {
            primary,
            config,
            payload,
            session: None,
            closed: None,
            read: BTreeMap::new(),
            finished: BTreeSet::new(),
            corrupt: 0,
            first_byte: None,
            last_byte: None,
            max_stall: Duration::ZERO,
            path_events: Vec::new(),
            log: Vec::new(),
            health: Vec::new(),
            path_addrs: BTreeMap::new(),
            closed_at: None,
            paused: false,
            paused_streams: BTreeSet::new(),
            read_limit: None,
            proposal_answers: Vec::new(),
        }
    }

    /// Total bytes read.
    pub fn total(&self) -> u64 {
        self.read.values().sum()
    }

    /// Reads `id` until it blocks.
    pub fn drain(&mut self, ep: &mut KwikEndpoint, now: Instant, id: StreamId) {
        if self.paused || self.paused_streams.contains(&id) {
            return;
        }
        let Some(h) = self.session else { return };
        let Some(mut stream) = ep.stream(h, id) else {
            return;
        };
        loop {
            let allowed = self.read_limit.map_or(usize::MAX, |l| {
                l.saturating_sub(self.read.values().sum()) as usize
            });
            if allowed == 0 {
                return;
            }
            match stream.read(allowed) {
                Ok(Some(data)) => {
                    let at = self.read.entry(id).or_default();
                    if !self.payload.verify(id, *at, &data) {
                        self.corrupt += data.len() as u64;
                    }
                    *at += data.len() as u64;
                    if let Some(last) = self.last_byte {
                        self.max_stall = self.max_stall.max(now - last);
                    }
                    self.first_byte.get_or_insert(now);
                    self.last_byte = Some(now);
                }
                Ok(None) => {
                    self.finished.insert(id);
                    return;
                }
                Err(ReadError::Blocked) => return,
                Err(e) => {
                    self.path_events.push(Event::StreamReset {
                        session: h,
                        stream: id,
                        code: match e {
                            ReadError::Reset(c) => c,
                            _ => u64::MAX,
                        },
                    });
                    return;
                }
            }
        }
    }
}

impl App for MultiClient {
    fn on_event(&mut self, ep: &mut KwikEndpoint, now: Instant, event: &Event, _trace: &mut Trace) {
        match event {
            Event::StreamOpened { session, dir } => {
                let Some(mut view) = ep.session(*session) else {
                    return;
                };
                let ids: Vec<StreamId> = std::iter::from_fn(|| view.accept(*dir)).collect();
                for id in ids {
                    self.read.entry(id).or_default();
                    self.drain(ep, now, id);
                }
            }
            Event::StreamReadable { stream, .. } => self.drain(ep, now, *stream),
            Event::SessionClosed { reason, .. } => {
                self.closed = Some(reason.clone());
                self.closed_at = Some(now);
                self.log.push((now, event.clone()));
            }
            Event::PathAdded { session, path }
            | Event::PathFailed { session, path, .. }
            | Event::PathDead { session, path, .. }
            | Event::PathClosed { session, path } => {
                self.path_events.push(event.clone());
                self.log.push((now, event.clone()));
                note_address(ep, *session, *path, &mut self.path_addrs);
            }
            Event::PathHealth { path, health, .. } => self.health.push((now, *path, *health)),
            Event::PathProposalAnswered { .. } => self.proposal_answers.push(event.clone()),
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _trace: &mut Trace) -> bool {
        if self.session.is_none() {
            self.session = Some(
                ep.connect(now, self.primary, SERVER_NAME, &self.config)
                    .expect("connect"),
            );
            return true;
        }
        false
    }

    fn done(&self) -> bool {
        self.closed.is_some() || !self.finished.is_empty()
    }
}

/// Records the server address of `path` (looked up in the session's path
/// list) unless it is known already.
fn note_address(
    ep: &mut KwikEndpoint,
    session: SessionHandle,
    path: PathId,
    addrs: &mut BTreeMap<PathId, SocketAddr>,
) {
    if addrs.contains_key(&path) {
        return;
    }
    if let Some(info) = ep.session(session).and_then(|mut v| {
        v.paths(PathFilter::All)
            .into_iter()
            .find(|info| info.id == path)
    }) {
        addrs.insert(path, info.address);
    }
}

/// When the primary starts serving the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Once every AddPath was answered (added or failed).
    AfterPaths,
    /// Right away, from the primary alone; paths join as they come.
    Immediately,
    /// Never (the test drives the primary itself).
    Manual,
}

/// The primary: adds the configured secondaries, then serves the resource.
pub struct MultiPrimary {
    secondaries: Vec<SocketAddr>,
    resource: Arc<PayloadResource>,
    /// Scheduler tuning.
    pub transfer_config: TransferConfig,
    /// When to start.
    pub start: Start,
    /// The session.
    pub session: Option<SessionHandle>,
    /// Path ids by secondary address.
    pub path_ids: BTreeMap<SocketAddr, PathId>,
    /// Paths that joined.
    pub added: BTreeSet<PathId>,
    /// Paths that failed, with why.
    pub failed: Vec<(PathId, PathFailure)>,
    /// Paths that died, with why.
    pub dead: Vec<(PathId, PathFailure)>,
    /// Paths removed gracefully.
    pub closed_paths: Vec<PathId>,
    /// Ranges lost with dead paths.
    pub lost: Vec<Delegation>,
    /// The transfer, once started.
    pub transfer: Option<TransferId>,
    /// The stream it runs on.
    pub stream: Option<StreamId>,
    /// When the client acknowledged every byte.
    pub complete_at: Option<Instant>,
    /// Why the session ended.
    pub closed: Option<CloseReason>,
    /// Path events and the session's end, with when they happened.
    pub log: Vec<(Instant, Event)>,
    /// Health grades learned for the paths, in order.
    pub health: Vec<(Instant, PathId, PathHealth)>,
    /// Server address of every path a path event named.
    pub path_addrs: BTreeMap<PathId, SocketAddr>,
    /// Automatic scaling's decisions: when, which path, added or removed.
    pub scaled: Vec<(Instant, PathId, bool)>,
    /// Proposals clients made and how they were answered
    /// ([`Event::PathProposed`]), in order.
    pub proposals: Vec<Event>,
}

impl MultiPrimary {
    /// Adds no secondary itself: paths come from automatic scaling, the
    /// client's proposals or the test.
    pub fn add_no_paths(&mut self) {
        self.secondaries.clear();
    }

    /// A primary that will add `secondaries` and serve `resource`.
    pub fn new(secondaries: Vec<SocketAddr>, resource: Arc<PayloadResource>) -> Self {
        Self {
            secondaries,
            resource,
            transfer_config: TransferConfig::default(),
            start: Start::AfterPaths,
            session: None,
            path_ids: BTreeMap::new(),
            added: BTreeSet::new(),
            failed: Vec::new(),
            dead: Vec::new(),
            closed_paths: Vec::new(),
            lost: Vec::new(),
            transfer: None,
            stream: None,
            complete_at: None,
            closed: None,
            log: Vec::new(),
            health: Vec::new(),
            path_addrs: BTreeMap::new(),
            scaled: Vec::new(),
            proposals: Vec::new(),
        }
    }

    /// Opens the stream and starts serving.
    pub fn start_transfer(&mut self, ep: &mut KwikEndpoint) {
        let Some(h) = self.session else { return };
        let Some(mut view) = ep.session(h) else {
            return;
        };
        let stream = view.open(Dir::Uni).expect("open");
        self.stream = Some(stream);
        let resource: kwik_core::SharedResource = self.resource.clone();
        let id = view
            .serve(
                stream,
                resource,
                Bytes::from_static(DESCRIPTOR),
                self.transfer_config.clone(),
            )
            .expect("serve");
        self.transfer = Some(id);
    }

    fn maybe_start(&mut self, ep: &mut KwikEndpoint) {
        if self.transfer.is_none()
            && self.start == Start::AfterPaths
            && self.added.len() + self.failed.len() >= self.secondaries.len()
        {
            self.start_transfer(ep);
        }
    }
}

impl App for MultiPrimary {
    fn on_event(&mut self, ep: &mut KwikEndpoint, now: Instant, event: &Event, _trace: &mut Trace) {
        match event {
            Event::SessionEstablished { session, .. } => {
                self.session = Some(*session);
                for a in self.secondaries.clone() {
                    let mut view = ep.session(*session).expect("live");
                    let id = view.add_path(a, SERVER_NAME).expect("add_path");
                    self.path_ids.insert(a, id);
                }
                if self.start == Start::Immediately {
                    self.start_transfer(ep);
                }
                self.maybe_start(ep);
            }
            Event::PathAdded { path, .. } => {
                self.added.insert(*path);
                self.maybe_start(ep);
            }
            Event::PathFailed { path, failure, .. } => {
                self.failed.push((*path, failure.clone()));
                self.maybe_start(ep);
            }
            Event::PathDead { path, failure, .. } => self.dead.push((*path, failure.clone())),
            Event::PathClosed { path, .. } => self.closed_paths.push(*path),
            Event::RangesLost { ranges, .. } => self.lost.extend(ranges.iter().cloned()),
            Event::TransferComplete { .. } => self.complete_at = Some(now),
            Event::SessionClosed { reason, .. } => self.closed = Some(reason.clone()),
            Event::PathHealth { path, health, .. } => self.health.push((now, *path, *health)),
            Event::PathScaled { path, added, .. } => self.scaled.push((now, *path, *added)),
            Event::PathProposed { .. } => self.proposals.push(event.clone()),
            _ => {}
        }
        match event {
            Event::PathAdded { session, path }
            | Event::PathFailed { session, path, .. }
            | Event::PathDead { session, path, .. }
            | Event::PathClosed { session, path } => {
                self.log.push((now, event.clone()));
                note_address(ep, *session, *path, &mut self.path_addrs);
            }
            Event::SessionClosed { .. }
            | Event::TransferComplete { .. }
            | Event::RangesLost { .. } => {
                self.log.push((now, event.clone()));
            }
            _ => {}
        }
    }

    fn done(&self) -> bool {
        self.complete_at.is_some() || self.closed.is_some()
    }
}

/// A secondary server: serves the resource for every delegation, records
/// what else reaches it.
#[derive(Default)]
pub struct SecondaryApp {
    /// Paths joined: (local session, path id).
    pub joined: Vec<(SessionHandle, PathId)>,
    /// Delegations not served automatically.
    pub delegated: Vec<Delegation>,
    /// Raw messages, in arrival order.
    pub raw: Vec<Bytes>,
    /// Sessions that ended, with why.
    pub closed: Vec<CloseReason>,
    /// Streams the client stopped, with the code.
    pub stopped: Vec<(StreamId, u64)>,
}

impl App for SecondaryApp {
    fn on_event(
        &mut self,
        _ep: &mut KwikEndpoint,
        _now: Instant,
        event: &Event,
        _trace: &mut Trace,
    ) {
        match event {
            Event::PathJoined { session, path, .. } => self.joined.push((*session, *path)),
            Event::Delegated { delegation, .. } => self.delegated.push(delegation.clone()),
            Event::RawReceived { payload, .. } => self.raw.push(payload.clone()),
            Event::SessionClosed { reason, .. } => self.closed.push(reason.clone()),
            Event::StreamStopped { stream, code, .. } => self.stopped.push((*stream, *code)),
            _ => {}
        }
    }
}

/// How one server is reached from the client.
#[derive(Debug, Clone)]
pub struct ServerLink {
    /// One-way latency.
    pub latency: Duration,
    /// Rate in Mbit/s.
    pub mbit: u64,
}

impl ServerLink {
    /// A link of `mbit` Mbit/s with `rtt_ms` round trip.
    pub fn new(mbit: u64, rtt_ms: u64) -> Self {
        Self {
            latency: Duration::from_millis(rtt_ms / 2),
            mbit,
        }
    }

    /// The simulator's link for it (one-BDP buffer).
    pub fn config(&self) -> LinkConfig {
        LinkConfig::new().latency(self.latency).rate_mbps(self.mbit)
    }
}

/// A client, a primary and secondaries wired together.
pub struct MultiSetup {
    /// The simulation.
    pub sim: Sim,
    /// The client.
    pub client: NodeId,
    /// The primary.
    pub primary: NodeId,
    /// The secondaries, in order.
    pub secondaries: Vec<NodeId>,
    /// Every server's address (primary first).
    pub servers: Vec<SocketAddr>,
    /// The client's address.
    pub client_addr: SocketAddr,
}

/// Adjusts the configuration of server `i` (0 is the primary).
pub type ServerTuner = Box<dyn Fn(usize, &mut ServerConfig)>;

/// Knobs of a [`MultiSetup`].
pub struct MultiOptions {
    /// Simulation seed.
    pub seed: u64,
    /// Links of the primary (first) and each secondary.
    pub links: Vec<ServerLink>,
    /// Resource size.
    pub size: u64,
    /// Per-logical-stream window (bytes).
    pub stream_window: u64,
    /// Congestion controller of every connection.
    pub congestion: kwik_core::CongestionControl,
    /// Adjusts the client configuration.
    pub tune_client: Box<dyn Fn(&mut ClientConfig)>,
    /// Adjusts every server configuration (index 0 = primary).
    pub tune_server: ServerTuner,
}

impl MultiOptions {
    /// Defaults for a transfer of `size` bytes over `links`.
    pub fn new(seed: u64, links: Vec<ServerLink>, size: u64) -> Self {
        Self {
            seed,
            links,
            size,
            stream_window: 64 << 20,
            congestion: kwik_core::CongestionControl::Cubic,
            tune_client: Box::new(|_| {}),
            tune_server: Box::new(|_, _| {}),
        }
    }
}

/// Address of the hostile secondary [`MultiSetup::with_hostile_secondary`]
/// adds (the honest servers are `addr(1)` and `addr(2)`).
pub const HOSTILE_SECONDARY: u8 = 3;

impl MultiSetup {
    /// A session started by hand (`Start::Manual`) with at most two honest
    /// servers, and a [`HostileSecondary`](crate::hostile_secondary::HostileSecondary)
    /// at `addr(HOSTILE_SECONDARY)` that answers its first delegation with
    /// `injection`; the client allows it, behind a 100 Mbit/s, 20 ms link.
    /// Returns the setup and the hostile node; the caller adds its path.
    ///
    /// # Panics
    /// With more than two honest servers (their addresses would collide).
    pub fn with_hostile_secondary(
        mut options: MultiOptions,
        injection: crate::hostile_secondary::Injection,
    ) -> (Self, NodeId) {
        assert!(options.links.len() <= 2, "addr(3) is the hostile one");
        let seed = options.seed;
        let hostile_addr = addr(HOSTILE_SECONDARY);
        let tune = std::mem::replace(&mut options.tune_client, Box::new(|_| {}));
        options.tune_client = Box::new(move |c| {
            tune(c);
            c.path_policy
                .allow
                .push(kwik_core::PathTarget::Address(hostile_addr));
        });
        let mut s = Self::new(options, |p| p.start = Start::Manual);
        s.sim.set_path(
            s.client_addr,
            hostile_addr,
            ServerLink::new(100, 20).config(),
        );
        let node = s.sim.add_node(
            &[hostile_addr],
            Box::new(crate::hostile_secondary::HostileSecondary::injecting(
                hostile_addr,
                seed ^ 0xbad,
                &dev_cert(seed),
                injection,
            )),
        );
        (s, node)
    }

    /// Builds the hosts; `primary_app` adjusts the primary app before it runs.
    pub fn new(options: MultiOptions, primary_app: impl FnOnce(&mut MultiPrimary)) -> Self {
        let seed = options.seed;
        let mut sim = Sim::new(seed);
        let cert = dev_cert(seed);
        let (mut client_cfg, server_cfg) = configs(&cert);
        let key = TokenKey::new([seed as u8 ^ 0x5a; 32]);
        let client_addr = addr(100);
        let servers: Vec<SocketAddr> = (0..options.links.len())
            .map(|i| addr(1 + i as u8))
            .collect();
        for (a, link) in servers.iter().zip(&options.links) {
            sim.set_path(client_addr, *a, link.config());
        }
        let window = |t: &mut kwik_core::TransportConfig| {
            t.congestion = options.congestion;
            t.stream_window = options.stream_window;
            t.send_window = options.stream_window.max(32 << 20);
            t.max_frame_payload = 256 << 10;
        };
        window(&mut client_cfg.transport);
        client_cfg.path_policy =
            PathPolicy::allow(servers[1..].iter().map(|a| PathTarget::Address(*a)));
        (options.tune_client)(&mut client_cfg);
        let payload = Payload::new(seed);
        let resource = Arc::new(PayloadResource::new(
            payload.clone(),
            first_server_stream(),
            options.size,
        ));
        let now = sim.now();
        let unix = Duration::from_secs(1_800_000_000);
        let mut server_nodes = Vec::new();
        for (i, a) in servers.iter().enumerate() {
            let mut cfg = server_cfg.clone();
            window(&mut cfg.transport);
            // The addresses a server is known by (the async adapters fill in
            // the bound address): a primary never scales onto itself.
            cfg.path_addresses = vec![*a];
            if i == 0 {
                cfg.token_key = Some(key.clone());
            } else {
                cfg.trusted_keys = vec![key.clone()];
                // Tokens name their secondary: this one answers to its own
                // address and the certificate name only.
                cfg.path_server_name = Some(crate::setup::SERVER_NAME.to_string());
            }
            (options.tune_server)(i, &mut cfg);
            let mut ep_cfg = kwik_core::EndpointConfig::new([i as u8 + 1; 32]);
            ep_cfg.unix_time = unix;
            let mut ep = KwikEndpoint::new(ep_cfg, Some(cfg), now);
            let node: Box<dyn crate::node::Node> = if i == 0 {
                let mut app = MultiPrimary::new(servers[1..].to_vec(), resource.clone());
                app.transfer_config.min_chunk = 256 << 10;
                Box::new(KwikNode::new(*a, ep, app))
            } else {
                ep.serve_resource(Bytes::from_static(DESCRIPTOR), resource.clone());
                Box::new(KwikNode::new(*a, ep, SecondaryApp::default()))
            };
            server_nodes.push(sim.add_node(&[*a], node));
        }
        let mut client_ep_cfg = kwik_core::EndpointConfig::new([0xc1; 32]);
        client_ep_cfg.unix_time = unix;
        let client = sim.add_node(
            &[client_addr],
            Box::new(KwikNode::new(
                client_addr,
                KwikEndpoint::new(client_ep_cfg, None, now),
                MultiClient::new(servers[0], client_cfg, payload),
            )),
        );
        let primary = server_nodes[0];
        primary_app(&mut sim.node_mut::<KwikNode<MultiPrimary>>(primary).app);
        Self {
            sim,
            client,
            primary,
            secondaries: server_nodes[1..].to_vec(),
            servers,
            client_addr,
        }
    }

    /// The client app.
    pub fn client(&self) -> &MultiClient {
        &self.sim.node::<KwikNode<MultiClient>>(self.client).app
    }

    /// The primary app.
    pub fn primary(&self) -> &MultiPrimary {
        &self.sim.node::<KwikNode<MultiPrimary>>(self.primary).app
    }

    /// Secondary `i`'s app.
    pub fn secondary(&self, i: usize) -> &SecondaryApp {
        &self
            .sim
            .node::<KwikNode<SecondaryApp>>(self.secondaries[i])
            .app
    }

    /// Runs until `done(client app)` holds; panics after `limit` of virtual
    /// time. Returns the time elapsed since the start.
    pub fn run_until_client(
        &mut self,
        limit: Duration,
        done: impl Fn(&MultiClient) -> bool,
    ) -> Duration {
        let id = self.client;
        self.sim
            .run_while(limit, |sim| {
                !done(&sim.node::<KwikNode<MultiClient>>(id).app)
            })
            .expect("the client reached the expected state in time")
    }

    /// Runs until `done(primary app)` holds; panics after `limit`.
    pub fn run_until_primary(
        &mut self,
        limit: Duration,
        done: impl Fn(&MultiPrimary) -> bool,
    ) -> Duration {
        let id = self.primary;
        self.sim
            .run_while(limit, |sim| {
                !done(&sim.node::<KwikNode<MultiPrimary>>(id).app)
            })
            .expect("the primary reached the expected state in time")
    }

    /// Runs until `until` (virtual time since the start) with the client
    /// application reading the first server stream at a pace: by time `t`
    /// it has read at most `demanded(t)` bytes (fewer only when they have
    /// not arrived; then it reads as fast as they come). The reader acts
    /// every `step`; `each` runs after every step.
    pub fn run_paced(
        &mut self,
        until: Duration,
        step: Duration,
        demanded: impl Fn(Duration) -> u64,
        mut each: impl FnMut(&mut Self, Duration),
    ) {
        let stream = first_server_stream();
        let mut t = self.sim.elapsed();
        while t < until {
            t = (t + step).min(until);
            self.sim.run_until(t);
            let now = self.sim.now();
            let node = self.client_node();
            node.app.read_limit = Some(demanded(t));
            node.app.drain(&mut node.endpoint, now, stream);
            let client = self.client;
            self.sim.touch(client);
            each(self, t);
        }
    }

    /// The client node (endpoint + app), mutable.
    pub fn client_node(&mut self) -> &mut KwikNode<MultiClient> {
        self.sim.node_mut::<KwikNode<MultiClient>>(self.client)
    }

    /// The primary node, mutable.
    pub fn primary_node(&mut self) -> &mut KwikNode<MultiPrimary> {
        self.sim.node_mut::<KwikNode<MultiPrimary>>(self.primary)
    }
}
