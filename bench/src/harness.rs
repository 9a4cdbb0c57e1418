//! Set-up shared by the scenarios: the two contenders — a kwik session and a
//! bare quinn-proto connection — each as a client/server pair in a fresh
//! simulation, plus the checks that every byte arrived.
//!
//! Both contenders get the same link (set on both directions, so ACKs see
//! the same loss as data), the same congestion controller and QUIC windows
//! at least as large as [`sim_transport_config`]'s, so that differences in
//! the numbers come from the stacks and not from their configuration.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kwik_core::{CongestionControl, Dir, TransportConfig};
use kwik_sim::setup::{SERVER_NAME, addr, configs, dev_cert, endpoint};
use kwik_sim::{
    App, BulkClient, BulkServer, Congestion, KwikNode, LinkConfig, NodeId, Payload, QuinnBulkNode,
    Sim, sim_transport_config,
};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// Bytes the applications hand to their stack per write call (both stacks).
pub const WRITE_CHUNK: usize = 256 << 10;

/// Per-logical-stream receive window of kwik in the bulk scenarios: the
/// same as quinn's per-stream receive window in [`sim_transport_config`].
pub const KWIK_STREAM_WINDOW: u64 = 16 * MIB;

/// quinn-proto send window of kwik's connection in the bulk scenarios: the
/// same as [`sim_transport_config`]'s.
pub const KWIK_SEND_WINDOW: u64 = 32 * MIB;

/// Address of the server (both contenders).
pub fn server_addr() -> SocketAddr {
    addr(1)
}

/// Address of the client (both contenders).
pub fn client_addr() -> SocketAddr {
    addr(2)
}

/// Congestion controller, named the same way in every JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cc {
    /// CUBIC (quinn's default, no HyStart).
    Cubic,
    /// quinn's experimental BBR.
    Bbr,
}

impl Cc {
    /// Lower-case name used in output and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Cc::Cubic => "cubic",
            Cc::Bbr => "bbr",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Cc> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Some(Cc::Cubic),
            "bbr" => Some(Cc::Bbr),
            _ => None,
        }
    }

    /// kwik's name for it.
    pub fn kwik(self) -> CongestionControl {
        match self {
            Cc::Cubic => CongestionControl::Cubic,
            Cc::Bbr => CongestionControl::Bbr,
        }
    }

    fn quinn(self) -> Congestion {
        match self {
            Cc::Cubic => Congestion::Cubic,
            Cc::Bbr => Congestion::Bbr,
        }
    }
}

/// kwik's transport knobs for a bulk transfer: windows as large as the bare
/// quinn contender's, the given controller, everything else default unless
/// overridden (`max_frame`: largest data-record payload, bytes).
pub fn bulk_transport(cc: Cc, max_frame: Option<u64>) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_window = KWIK_STREAM_WINDOW;
    t.send_window = KWIK_SEND_WINDOW;
    t.congestion = cc.kwik();
    if let Some(max) = max_frame {
        t.max_frame_payload = max;
    }
    t
}

/// A simulation with one link configuration on both directions between the
/// client and the server; traces keep no lines (only the digest).
pub fn new_sim(seed: u64, link: &LinkConfig) -> Sim {
    let mut sim = Sim::new(seed);
    sim.set_path(client_addr(), server_addr(), link.clone());
    sim.trace_mut().set_keep_lines(false);
    sim.trace_mut().set_datagrams(false);
    sim
}

/// A kwik client/server pair in a fresh simulation: the client uploads one
/// logical uni stream per entry of `lens`; the server runs `server_app`.
pub struct KwikPair {
    /// The simulation.
    pub sim: Sim,
    /// The server node (a `KwikNode<S>`).
    pub server: NodeId,
    /// The client node (a `KwikNode<BulkClient>`).
    pub client: NodeId,
}

impl KwikPair {
    /// Builds the pair; `server_app` gets the payload the client sends.
    pub fn new<S: App>(
        seed: u64,
        link: &LinkConfig,
        transport: &TransportConfig,
        lens: &[u64],
        server_app: impl FnOnce(Payload) -> S,
    ) -> Self {
        let mut sim = new_sim(seed, link);
        let cert = dev_cert(seed);
        let (mut client_cfg, mut server_cfg) = configs(&cert);
        client_cfg.transport = transport.clone();
        server_cfg.transport = transport.clone();
        let payload = Payload::new(seed ^ 0x5eed);
        let now = sim.now();
        let mut server_node = KwikNode::new(
            server_addr(),
            endpoint(seed, Some(server_cfg), now),
            server_app(payload.clone()),
        );
        server_node.trace_events = false;
        let mut client_app = BulkClient::new(
            server_addr(),
            SERVER_NAME,
            client_cfg,
            payload,
            Dir::Uni,
            lens,
        );
        client_app.chunk = WRITE_CHUNK;
        let mut client_node = KwikNode::new(
            client_addr(),
            endpoint(seed.wrapping_add(1), None, now),
            client_app,
        );
        client_node.trace_events = false;
        let server = sim.add_node(&[server_addr()], Box::new(server_node));
        let client = sim.add_node(&[client_addr()], Box::new(client_node));
        KwikPair {
            sim,
            server,
            client,
        }
    }

    /// The server's application.
    pub fn server_app<S: App>(&self) -> &S {
        &self.sim.node::<KwikNode<S>>(self.server).app
    }

    /// The client's node (endpoint and application).
    pub fn client_node(&mut self) -> &mut KwikNode<BulkClient> {
        self.sim.node_mut::<KwikNode<BulkClient>>(self.client)
    }

    /// Lanes the client opened (0 if its session is gone).
    pub fn client_lanes(&mut self) -> u64 {
        let node = self.client_node();
        let Some(h) = node.app.session else { return 0 };
        node.endpoint
            .session(h)
            .map_or(0, |view| view.stats().lanes_opened)
    }
}

/// Runs `sim` until every node is done (or `limit` of virtual time passes);
/// returns the wall-clock time spent inside `run_until_done`, and only that.
pub fn run(sim: &mut Sim, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let result = sim.run_until_done(limit);
    let wall = started.elapsed();
    match result {
        Ok(_) => Ok(wall),
        Err(stalled) => Err(format!(
            "{stalled}; link counters {:?}",
            sim.total_link_stats()
        )),
    }
}

/// Checks that a kwik server received exactly `total` verified bytes on
/// `streams` finished streams; returns the virtual time (since connect) at
/// which it read the last byte.
pub fn check_kwik(
    sim: &Sim,
    server: &BulkServer,
    total: u64,
    streams: usize,
) -> Result<Duration, String> {
    if server.corrupt != 0 {
        return Err(format!("kwik: {} corrupt bytes", server.corrupt));
    }
    if let Some((_, reason)) = server.closed.iter().next() {
        return Err(format!("kwik: server session closed: {reason:?}"));
    }
    if server.total_bytes() != total || server.finished_streams() != streams {
        return Err(format!(
            "kwik: server read {} of {total} bytes, {} of {streams} streams finished",
            server.total_bytes(),
            server.finished_streams()
        ));
    }
    let done = server
        .done_at
        .ok_or_else(|| "kwik: server never completed".to_string())?;
    Ok(done.saturating_duration_since(sim.start()))
}

/// A bare quinn-proto client/server pair in a fresh simulation: one uni
/// stream of `total` bytes, the same controller and [`sim_transport_config`].
pub struct QuinnPair {
    /// The simulation.
    pub sim: Sim,
    /// The server node.
    pub server: NodeId,
    /// The client node.
    pub client: NodeId,
    total: u64,
}

impl QuinnPair {
    /// Builds the pair; the client writes clones of `chunk` until `total`.
    pub fn new(seed: u64, link: &LinkConfig, cc: Cc, total: u64, chunk: Bytes) -> Self {
        let mut sim = new_sim(seed, link);
        let server = sim.add_node(
            &[server_addr()],
            Box::new(QuinnBulkNode::server(
                server_addr(),
                seed,
                sim_transport_config(cc.quinn()),
            )),
        );
        let client = sim.add_node(
            &[client_addr()],
            Box::new(QuinnBulkNode::client(
                client_addr(),
                server_addr(),
                seed.wrapping_add(1),
                sim_transport_config(cc.quinn()),
                total,
                chunk,
            )),
        );
        QuinnPair {
            sim,
            server,
            client,
            total,
        }
    }

    /// Checks that the server read every byte intact (checksum); returns the
    /// virtual time (since connect) at which it read the FIN.
    pub fn check(&self) -> Result<Duration, String> {
        let server = self.sim.node::<QuinnBulkNode>(self.server);
        let client = self.sim.node::<QuinnBulkNode>(self.client);
        if let Some(e) = server.error().or(client.error()) {
            return Err(format!("quinn-proto: connection error: {e}"));
        }
        if server.received() != self.total || client.sent() != self.total {
            return Err(format!(
                "quinn-proto: server read {} of {} bytes (client sent {})",
                server.received(),
                self.total,
                client.sent()
            ));
        }
        if Some(server.checksum()) != client.expected_checksum() {
            return Err("quinn-proto: checksum mismatch".to_string());
        }
        let fin = server
            .finished_at()
            .ok_or_else(|| "quinn-proto: FIN never read".to_string())?;
        Ok(fin.saturating_duration_since(self.sim.start()))
    }
}

/// A pseudo-random chunk for the quinn contender's writes.
pub fn quinn_chunk(seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(WRITE_CHUNK);
    while out.len() < WRITE_CHUNK {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(WRITE_CHUNK);
    Bytes::from(out)
}

/// Payload megabits per second for `bytes` in `time`.
pub fn mbit_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 * 8.0 / 1e6 / time.as_secs_f64()
}

/// Payload mebibytes per second for `bytes` in `time`.
pub fn mib_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / MIB as f64 / time.as_secs_f64()
}
