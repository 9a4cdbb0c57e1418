//! `priority`: does a small, urgent logical stream get through while a bulk
//! stream of the same session fills the path?
//!
//! One client session uploads over the `sim-link` link (100 Mbit/s, 40 ms
//! RTT, one-BDP drop-tail buffer of 500 kB, no random loss): a bulk logical
//! stream writes as fast as kwik takes it, and a second logical stream
//! writes a 1 KiB message every 50 ms. A message's latency is the virtual
//! time from the application's write on the client to the server's
//! application having read its last byte. The run is made twice: both
//! streams at priority 0, then the message stream at priority 10
//! ([`StreamView::set_priority`](kwik_core::StreamView::set_priority)).
//!
//! Where a message can wait, and what bounds it:
//!
//! * **kwik's lanes.** At equal priority the two streams share a lane (up to
//!   4 logical streams per real QUIC stream), so a message waits for the
//!   bulk record in the lane's tail and for every bulk byte already handed
//!   to quinn-proto on that QUIC stream. With priorities the message stream
//!   gets a lane of its own whose QUIC stream has the higher priority:
//!   quinn-proto puts its bytes in the next packet.
//! * **quinn-proto's send buffer.** The bulk stream's unsent bytes in
//!   quinn-proto are bounded by its kwik credit (`stream_window`, 2 MiB by
//!   default: the server reads at once, so the credit returns a round trip
//!   later), far below the connection's `send_window` (16 MiB): the message
//!   write always finds room. (Were the send window full, the message would
//!   wait for acknowledgements to free room like any other write.)
//! * **The congestion window and the bottleneck queue.** These are not kwik's
//!   to reorder: a message packet waits for the next packet the window
//!   allows (ack-clocked, well under a millisecond at this rate) and then
//!   behind whatever fills the 500 kB buffer (up to 40 ms), plus the 20 ms
//!   one-way delay.
//!
//! Latencies are taken over the messages written in the measurement window
//! (after `WARMUP`, once Cubic's slow start — which overshoots to several
//! BDPs and drops hundreds of packets — is over); the line also gives the
//! p99 over every message. `bulk_efficiency` is the bulk stream's goodput
//! (bytes read by the server's application) over the same window divided by
//! the link rate. Cubic (kwik's default) is used; kwik's transport knobs are
//! its defaults.
//!
//! Lines: without priorities, then with priorities (the last line).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kwik_core::{
    ClientConfig, CloseReason, Dir, Event, KwikEndpoint, SessionHandle, Side, StreamId,
    TransportConfig, WriteError,
};
use kwik_sim::setup::{SERVER_NAME, configs, dev_cert, endpoint};
use kwik_sim::{App, BulkServer, KwikNode, LinkConfig, NodeId, Payload, Sim, Trace};

use crate::harness::{Cc, client_addr, new_sim, server_addr};
use crate::report::Line;

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Congestion controller.
    pub cc: Cc,
    /// Seed of the simulations.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cc: Cc::Cubic,
            seed: 1,
        }
    }
}

/// Bottleneck rate.
const RATE_MBIT: u64 = 100;
/// One-way latency (each direction).
const ONE_WAY: Duration = Duration::from_millis(20);
/// Size of one message.
const MESSAGE: u64 = 1024;
/// Interval between messages.
const INTERVAL: Duration = Duration::from_millis(50);
/// First message, once the session is up and the bulk stream started.
const FIRST_MESSAGE: Duration = Duration::from_millis(500);
/// Start of the measurement window: slow start is over.
const WARMUP: Duration = Duration::from_secs(5);
/// End of the measurement window: the bulk stream finishes, and the last
/// message is written before it.
const END: Duration = Duration::from_secs(25);
/// Priority of the message stream in the second run.
const HIGH: i32 = 10;
/// Time allowed after `END` for everything to arrive.
const DRAIN: Duration = Duration::from_secs(30);

/// The client: a bulk stream written as fast as kwik takes it until `END`,
/// and a message stream written every `INTERVAL`.
struct PriorityClient {
    server: SocketAddr,
    config: ClientConfig,
    payload: Payload,
    priorities: bool,
    start: Instant,
    session: Option<SessionHandle>,
    bulk: Option<StreamId>,
    messages: Option<StreamId>,
    bulk_sent: u64,
    bulk_finished: bool,
    /// When the application wrote each message (its first attempt).
    written_at: Vec<Instant>,
    /// Bytes of the message stream taken by kwik.
    message_sent: u64,
    messages_finished: bool,
    closed: Option<CloseReason>,
}

impl PriorityClient {
    fn message_due(&self, index: usize) -> Instant {
        self.start + FIRST_MESSAGE + INTERVAL * index as u32
    }

    /// Opens both streams once the session is up.
    fn open(&mut self, ep: &mut KwikEndpoint) {
        let Some(h) = self.session else { return };
        let Some(mut session) = ep.session(h) else {
            return;
        };
        let bulk = session.open(Dir::Uni).expect("bulk stream");
        let messages = session.open(Dir::Uni).expect("message stream");
        if self.priorities {
            session
                .stream(messages)
                .expect("just opened")
                .set_priority(HIGH)
                .expect("set_priority");
        }
        self.bulk = Some(bulk);
        self.messages = Some(messages);
    }

    /// Writes what is due: messages first, then bulk until it blocks.
    fn pump(&mut self, ep: &mut KwikEndpoint, now: Instant) -> bool {
        let (Some(h), Some(bulk), Some(messages)) = (self.session, self.bulk, self.messages) else {
            return false;
        };
        let mut acted = false;
        let end = self.start + END;
        while self.message_due(self.written_at.len()) <= now
            && self.message_due(self.written_at.len()) < end
        {
            self.written_at.push(now);
        }
        if let Some(mut stream) = ep.stream(h, messages) {
            let target = self.written_at.len() as u64 * MESSAGE;
            while self.message_sent < target {
                let want = (target - self.message_sent) as usize;
                let mut chunk = self.payload.chunk(messages, self.message_sent, want);
                match stream.write_chunk(&mut chunk) {
                    Ok(n) => {
                        self.message_sent += n as u64;
                        acted = true;
                    }
                    Err(WriteError::Blocked) => break,
                    Err(e) => panic!("message write failed: {e:?}"),
                }
            }
            if now >= end && !self.messages_finished && self.message_sent == target {
                stream.finish().expect("finish messages");
                self.messages_finished = true;
                acted = true;
            }
        }
        if let Some(mut stream) = ep.stream(h, bulk)
            && !self.bulk_finished
        {
            if now >= end {
                stream.finish().expect("finish bulk");
                self.bulk_finished = true;
                return true;
            }
            loop {
                let mut chunk = self.payload.chunk(bulk, self.bulk_sent, 256 << 10);
                match stream.write_chunk(&mut chunk) {
                    Ok(n) => {
                        self.bulk_sent += n as u64;
                        acted = true;
                    }
                    Err(WriteError::Blocked) => break,
                    Err(e) => panic!("bulk write failed: {e:?}"),
                }
            }
        }
        acted
    }
}

impl App for PriorityClient {
    fn on_event(
        &mut self,
        ep: &mut KwikEndpoint,
        _now: Instant,
        event: &Event,
        _trace: &mut Trace,
    ) {
        match *event {
            Event::SessionEstablished { .. } => self.open(ep),
            Event::SessionClosed { ref reason, .. } => self.closed = Some(reason.clone()),
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _trace: &mut Trace) -> bool {
        if self.session.is_none() {
            let h = ep
                .connect(now, self.server, SERVER_NAME, &self.config)
                .expect("connect");
            self.session = Some(h);
            return true;
        }
        self.pump(ep, now)
    }

    fn done(&self) -> bool {
        (self.bulk_finished && self.messages_finished) || self.closed.is_some()
    }
}

/// The server: a [`BulkServer`] (which reads and verifies every byte) that
/// also notes when each message was read to its last byte.
struct PriorityServer {
    inner: BulkServer,
    /// When the application had read each message.
    read_at: Vec<Instant>,
}

impl PriorityServer {
    fn messages() -> StreamId {
        StreamId::new(Side::Client, Dir::Uni, 1)
    }

    fn bulk() -> StreamId {
        StreamId::new(Side::Client, Dir::Uni, 0)
    }

    fn stream_bytes(&self, id: StreamId) -> u64 {
        self.inner
            .received
            .values()
            .filter_map(|streams| streams.get(&id))
            .map(|r| r.bytes)
            .sum()
    }
}

impl App for PriorityServer {
    fn on_event(&mut self, ep: &mut KwikEndpoint, now: Instant, event: &Event, trace: &mut Trace) {
        self.inner.on_event(ep, now, event, trace);
        let complete = (self.stream_bytes(Self::messages()) / MESSAGE) as usize;
        while self.read_at.len() < complete {
            self.read_at.push(now);
        }
    }

    fn done(&self) -> bool {
        self.inner.done()
    }
}

struct Outcome {
    /// Per message written in the measurement window, its latency (ms).
    window: Vec<f64>,
    /// Every message's latency (ms).
    all: Vec<f64>,
    efficiency: f64,
    bulk_mbit: f64,
    wall: Duration,
}

fn transport(cc: Cc) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.congestion = cc.kwik();
    t
}

fn run_case(opts: &Options, priorities: bool) -> Result<Outcome, String> {
    let link = LinkConfig::new().rate_mbps(RATE_MBIT).latency(ONE_WAY);
    let mut sim: Sim = new_sim(opts.seed, &link);
    let cert = dev_cert(opts.seed);
    let (mut client_cfg, mut server_cfg) = configs(&cert);
    client_cfg.transport = transport(opts.cc);
    server_cfg.transport = transport(opts.cc);
    let payload = Payload::new(opts.seed ^ 0x5eed);
    let now = sim.now();
    let mut server_node = KwikNode::new(
        server_addr(),
        endpoint(opts.seed, Some(server_cfg), now),
        PriorityServer {
            inner: BulkServer::new(payload.clone(), 2),
            read_at: Vec::new(),
        },
    );
    server_node.trace_events = false;
    let mut client_node = KwikNode::new(
        client_addr(),
        endpoint(opts.seed.wrapping_add(1), None, now),
        PriorityClient {
            server: server_addr(),
            config: client_cfg,
            payload,
            priorities,
            start: sim.start(),
            session: None,
            bulk: None,
            messages: None,
            bulk_sent: 0,
            bulk_finished: false,
            written_at: Vec::new(),
            message_sent: 0,
            messages_finished: false,
            closed: None,
        },
    );
    client_node.trace_events = false;
    let server: NodeId = sim.add_node(&[server_addr()], Box::new(server_node));
    let client: NodeId = sim.add_node(&[client_addr()], Box::new(client_node));

    let started = Instant::now();
    // Step the clock to every message's due time, so the client writes it
    // then; note the bulk bytes read at both ends of the window.
    let mut at = Duration::ZERO;
    let mut bulk_at_warmup = None;
    while at <= END {
        sim.run_until(at);
        sim.touch(client);
        if at == WARMUP {
            sim.run_until(at);
            bulk_at_warmup = Some(
                sim.node::<KwikNode<PriorityServer>>(server)
                    .app
                    .stream_bytes(PriorityServer::bulk()),
            );
        }
        at += INTERVAL.min(FIRST_MESSAGE);
    }
    sim.run_until(END);
    let bulk_at_end = sim
        .node::<KwikNode<PriorityServer>>(server)
        .app
        .stream_bytes(PriorityServer::bulk());
    if let Err(stalled) = sim.run_until_done(DRAIN) {
        return Err(format!("priority: {stalled}"));
    }
    let wall = started.elapsed();

    // Integrity: every byte of both streams read, verified, and finished.
    let srv = &sim.node::<KwikNode<PriorityServer>>(server).app;
    let cli = &sim.node::<KwikNode<PriorityClient>>(client).app;
    if let Some(reason) = &cli.closed {
        return Err(format!("priority: client session closed: {reason:?}"));
    }
    if let Some((_, reason)) = srv.inner.closed.iter().next() {
        return Err(format!("priority: server session closed: {reason:?}"));
    }
    if srv.inner.corrupt != 0 {
        return Err(format!("priority: {} corrupt bytes", srv.inner.corrupt));
    }
    let bulk_read = srv.stream_bytes(PriorityServer::bulk());
    let message_read = srv.stream_bytes(PriorityServer::messages());
    if bulk_read != cli.bulk_sent
        || message_read != cli.message_sent
        || cli.message_sent != cli.written_at.len() as u64 * MESSAGE
        || srv.inner.finished_streams() != 2
        || srv.read_at.len() != cli.written_at.len()
    {
        return Err(format!(
            "priority: server read {bulk_read} of {} bulk bytes and {message_read} of {} message \
             bytes ({} of {} messages), {} of 2 streams finished",
            cli.bulk_sent,
            cli.message_sent,
            srv.read_at.len(),
            cli.written_at.len(),
            srv.inner.finished_streams()
        ));
    }
    let warmup_at = sim.start() + WARMUP;
    let mut window = Vec::new();
    let mut all = Vec::new();
    for (written, read) in cli.written_at.iter().zip(&srv.read_at) {
        let ms = read.saturating_duration_since(*written).as_secs_f64() * 1e3;
        all.push(ms);
        if *written >= warmup_at {
            window.push(ms);
        }
    }
    let bulk_at_warmup = bulk_at_warmup.ok_or("priority: no sample at the warm-up")?;
    let span = (END - WARMUP).as_secs_f64();
    let bulk_mbit = bulk_at_end.saturating_sub(bulk_at_warmup) as f64 * 8.0 / 1e6 / span;
    Ok(Outcome {
        window,
        all,
        efficiency: bulk_mbit / RATE_MBIT as f64,
        bulk_mbit,
        wall,
    })
}

/// The `q`-quantile (0..=1) of `values` by the nearest-rank method.
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Runs the scenario; the last line printed is the run with priorities.
pub fn main(opts: &Options) -> Result<(), String> {
    eprintln!(
        "priority: bulk upload + a {MESSAGE}-byte message every {} ms on one session, \
         {RATE_MBIT} Mbit/s, 40 ms RTT, one-BDP drop-tail buffer, {}; window {}-{} s",
        INTERVAL.as_millis(),
        opts.cc.name(),
        WARMUP.as_secs(),
        END.as_secs()
    );
    for priorities in [false, true] {
        let o = run_case(opts, priorities)?;
        let (p50, p99) = (percentile(&o.window, 0.5), percentile(&o.window, 0.99));
        let p99_all = percentile(&o.all, 0.99);
        let max = percentile(&o.window, 1.0);
        eprintln!(
            "  priorities {priorities:<5}: message latency p50 {p50:.1} ms, p99 {p99:.1} ms, \
             max {max:.1} ms ({} messages in the window; p99 over all {} messages {p99_all:.1} ms); \
             bulk {:.2} Mbit/s (efficiency {:.3}); {:.1} s wall",
            o.window.len(),
            o.all.len(),
            o.bulk_mbit,
            o.efficiency,
            o.wall.as_secs_f64()
        );
        Line::new("priority")
            .bool("priorities", priorities)
            .num("p50_ms", p50, 2)
            .num("p99_ms", p99, 2)
            .num("max_ms", max, 2)
            .num("p99_all_ms", p99_all, 2)
            .num("bulk_efficiency", o.efficiency, 4)
            .num("bulk_mbit", o.bulk_mbit, 3)
            .int("messages", o.window.len() as u64)
            .int("messages_all", o.all.len() as u64)
            .str("cc", opts.cc.name())
            .int("rate_mbit", RATE_MBIT)
            .int("rtt_ms", 40)
            .num("wall_s", o.wall.as_secs_f64(), 2)
            .emit();
    }
    Ok(())
}
