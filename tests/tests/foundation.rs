//! Scenario tests of single-server sessions in the simulator: handshake,
//! bulk integrity under loss / reordering / duplication, many streams, the
//! slow-reader isolation guarantee, stream and session closing, liveness and
//! determinism. Each asserts the behaviour an application relies on.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kwik_core::{
    ClientConfig, CloseReason, CongestionControl, Dir, Event, KwikEndpoint, ReadError,
    ServerConfig, SessionHandle, StreamId, WriteError,
};
use kwik_sim::setup::{SERVER_NAME, addr, configs, dev_cert, endpoint};
use kwik_sim::{App, BulkClient, BulkServer, KwikNode, LinkConfig, NodeId, Payload, Sim, Trace};

type Server = KwikNode<BulkServer>;
type Client = KwikNode<BulkClient>;

struct Setup {
    sim: Sim,
    server: NodeId,
    clients: Vec<NodeId>,
}

/// One server at addr(1) and one BulkClient per entry of `plans` at addr(2..).
fn bulk(
    seed: u64,
    link: LinkConfig,
    tune: impl Fn(&mut ClientConfig, &mut ServerConfig),
    dir: Dir,
    plans: &[Vec<u64>],
) -> Setup {
    let mut sim = Sim::new(seed);
    sim.set_default_link(link);
    let cert = dev_cert(seed);
    let (mut client_cfg, mut server_cfg) = configs(&cert);
    tune(&mut client_cfg, &mut server_cfg);
    let payload = Payload::new(seed);
    let now = sim.now();
    let expect: usize = plans.iter().map(Vec::len).sum();
    let server = sim.add_node(
        &[addr(1)],
        Box::new(KwikNode::new(
            addr(1),
            endpoint(seed, Some(server_cfg), now),
            BulkServer::new(payload.clone(), expect),
        )),
    );
    let clients = plans
        .iter()
        .enumerate()
        .map(|(i, lens)| {
            let a = addr(2 + i as u8);
            let app = BulkClient::new(
                addr(1),
                SERVER_NAME,
                client_cfg.clone(),
                payload.clone(),
                dir,
                lens,
            );
            sim.add_node(
                &[a],
                Box::new(KwikNode::new(
                    a,
                    endpoint(seed + 100 + i as u64, None, now),
                    app,
                )),
            )
        })
        .collect();
    Setup {
        sim,
        server,
        clients,
    }
}

fn link_100m() -> LinkConfig {
    LinkConfig::new()
        .latency(Duration::from_millis(10))
        .rate_mbps(100)
}

fn big_windows(c: &mut ClientConfig, s: &mut ServerConfig) {
    for t in [&mut c.transport, &mut s.transport] {
        t.stream_window = 8 << 20;
        t.send_window = 16 << 20;
    }
}

#[test]
fn handshake_assigns_a_distinct_server_id_to_every_session() {
    let mut s = bulk(
        11,
        link_100m(),
        |_, _| {},
        Dir::Uni,
        &[vec![10], vec![10], vec![10]],
    );
    s.sim
        .run_until_done(Duration::from_secs(10))
        .expect("all sessions complete");
    let server = &s.sim.node::<Server>(s.server).app;
    let server_ids: BTreeSet<_> = server.sessions.values().copied().collect();
    assert_eq!(server_ids.len(), 3, "three sessions, three distinct ids");
    for &c in &s.clients {
        let client = &s.sim.node::<Client>(c).app;
        let id = client.session_id.expect("client learned its id");
        assert!(
            server_ids.contains(&id),
            "client id {id} was assigned by the server"
        );
        assert!(client.established_at.is_some());
    }
}

fn transfer_64mib(seed: u64, link: LinkConfig, cc: CongestionControl) -> Setup {
    let mut s = bulk(
        seed,
        link,
        |c, sv| {
            big_windows(c, sv);
            c.transport.congestion = cc;
            sv.transport.congestion = cc;
        },
        Dir::Uni,
        &[vec![64 << 20]],
    );
    s.sim
        .run_until_done(Duration::from_secs(3600))
        .expect("64 MiB completes");
    let server = &s.sim.node::<Server>(s.server).app;
    assert_eq!(server.corrupt, 0, "every byte identical");
    assert_eq!(server.total_bytes(), 64 << 20);
    assert_eq!(server.finished_streams(), 1, "FIN delivered");
    assert!(s.sim.node::<Client>(s.clients[0]).app.all_complete());
    s
}

#[test]
fn sixty_four_mib_arrive_intact_on_a_clean_link() {
    let s = transfer_64mib(21, link_100m(), CongestionControl::Cubic);
    // A clean link leaves no excuse for a slow transfer: >= 80 Mbit/s.
    let secs = s.sim.elapsed().as_secs_f64();
    assert!(secs < 64.0 * 8.0 * 1.048_576 / 80.0, "took {secs:.2} s");
}

#[test]
fn sixty_four_mib_arrive_intact_with_five_percent_loss() {
    let s = transfer_64mib(22, link_100m().loss(0.05), CongestionControl::Bbr);
    assert!(
        s.sim.total_link_stats().dropped_loss > 1000,
        "loss really happened"
    );
}

#[test]
fn sixty_four_mib_arrive_intact_with_reordering_and_duplication() {
    let link = link_100m().jitter(Duration::from_millis(2)).duplicate(0.02);
    let s = transfer_64mib(23, link, CongestionControl::Bbr);
    assert!(
        s.sim.total_link_stats().duplicated > 1000,
        "duplication really happened"
    );
}

#[test]
fn a_thousand_concurrent_streams_each_arrive_intact() {
    let lens: Vec<u64> = (0..1000u64).map(|i| 1 + (i * 7919) % (48 << 10)).collect();
    let mut s = bulk(
        31,
        link_100m(),
        |c, sv| {
            sv.transport.max_uni_streams = 1000;
            c.transport.max_uni_streams = 1000;
        },
        Dir::Uni,
        std::slice::from_ref(&lens),
    );
    s.sim
        .run_until_done(Duration::from_secs(120))
        .expect("all streams complete");
    let server = &s.sim.node::<Server>(s.server).app;
    assert_eq!(server.corrupt, 0);
    let per_stream = server.received.values().next().expect("one session");
    assert_eq!(per_stream.len(), 1000);
    for (i, (id, got)) in per_stream.iter().enumerate() {
        assert_eq!(id.index(), i as u64);
        assert!(got.fin, "{id} finished");
        assert_eq!(got.bytes, lens[i], "{id} length");
    }
    let client = s.sim.node_mut::<Client>(s.clients[0]);
    let h = client.app.session.unwrap();
    let lanes = client.endpoint.session(h).unwrap().stats().lanes_opened;
    assert!(
        (2..=250).contains(&lanes),
        "at most four logical streams per real stream, lanes reused: {lanes}"
    );
}

/// A server allows 64 lanes at first (quinn-proto keeps state for every
/// stream it allows, opened or not) and more once the client holds half of
/// them: streams opened after the first 64 lanes filled get lanes of their
/// own, up to `max_lanes`.
#[test]
fn the_lane_allowance_grows_with_use_up_to_max_lanes() {
    let mut s = bulk(
        33,
        link_100m(),
        |c, sv| {
            for t in [&mut c.transport, &mut sv.transport] {
                t.streams_per_lane = 1;
                t.max_uni_streams = 300;
            }
            sv.transport.max_lanes = 150;
        },
        Dir::Uni,
        &[vec![]],
    );
    s.sim.run_for(Duration::from_secs(1));
    let client = s.clients[0];
    let wave = |s: &mut Setup, n: usize| {
        let node = s.sim.node_mut::<Client>(client);
        let h = node.app.session.unwrap();
        let mut view = node.endpoint.session(h).unwrap();
        for _ in 0..n {
            let id = view.open(Dir::Uni).expect("credit");
            assert_eq!(view.stream(id).unwrap().write(b"x"), Ok(1));
        }
        s.sim.run_for(Duration::from_secs(1));
        let node = s.sim.node_mut::<Client>(client);
        node.endpoint.session(h).unwrap().stats().lanes_opened
    };
    assert_eq!(wave(&mut s, 64), 64, "the initial allowance");
    assert_eq!(wave(&mut s, 36), 100, "the allowance grew");
    assert_eq!(wave(&mut s, 100), 150, "up to max_lanes, then shared");
}

#[test]
fn streams_beyond_the_peer_limit_wait_for_credit_and_complete() {
    let lens = vec![4096u64; 300];
    let mut s = bulk(
        32,
        link_100m(),
        |_, sv| sv.transport.max_uni_streams = 16,
        Dir::Uni,
        std::slice::from_ref(&lens),
    );
    s.sim
        .run_until_done(Duration::from_secs(120))
        .expect("all streams complete");
    let server = &s.sim.node::<Server>(s.server).app;
    assert_eq!(server.finished_streams(), 300);
    assert_eq!(server.corrupt, 0);
}

#[test]
fn a_slow_reader_never_blocks_a_stream_sharing_its_lane() {
    const WINDOW: u64 = 256 << 10;
    let mut s = bulk(
        41,
        link_100m(),
        |c, sv| {
            for t in [&mut c.transport, &mut sv.transport] {
                t.stream_window = WINDOW;
                t.streams_per_lane = 4;
            }
        },
        Dir::Uni,
        &[vec![8 << 20, 8 << 20]],
    );
    let slow = StreamId::new(kwik_core::Side::Client, Dir::Uni, 0);
    let fast = StreamId::new(kwik_core::Side::Client, Dir::Uni, 1);
    s.sim.node_mut::<Server>(s.server).app.paused.insert(slow);
    let server = s.server;
    s.sim
        .run_while(Duration::from_secs(60), |sim| {
            let app = &sim.node::<Server>(server).app;
            !app.received
                .values()
                .any(|m| m.get(&fast).is_some_and(|r| r.fin))
        })
        .expect("the fast stream completes while the slow one is not read");
    let app = &s.sim.node::<Server>(s.server).app;
    let session = *app.received.keys().next().unwrap();
    assert_eq!(app.received[&session][&fast].bytes, 8 << 20);
    assert_eq!(
        app.received[&session][&slow].bytes, 0,
        "slow stream untouched"
    );
    assert!(
        app.max_paused_buffered > 0,
        "the slow stream did receive data"
    );
    assert!(
        app.max_paused_buffered <= WINDOW,
        "memory of the unread stream is bounded by its window: {}",
        app.max_paused_buffered
    );
    let client = s.sim.node_mut::<Client>(s.clients[0]);
    let h = client.app.session.unwrap();
    let lanes = client.endpoint.session(h).unwrap().stats().lanes_opened;
    assert_eq!(lanes, 1, "both logical streams shared one real stream");

    // Resume: the slow stream then completes too.
    let now = s.sim.now();
    let node = s.sim.node_mut::<Server>(s.server);
    node.app.resume(&mut node.endpoint, now, session, slow);
    s.sim
        .run_until_done(Duration::from_secs(60))
        .expect("both complete");
    let app = &s.sim.node::<Server>(s.server).app;
    assert_eq!(app.received[&session][&slow].bytes, 8 << 20);
    assert_eq!(app.corrupt, 0);
}

/// Scripted client for the closing semantics: FIN, reset, stop, close.
#[derive(Default)]
struct Closer {
    session: Option<SessionHandle>,
    client_cfg: Option<ClientConfig>,
    finished: BTreeSet<StreamId>,
    stopped: Vec<(StreamId, u64)>,
    write_after_stop: Option<WriteError>,
    bidi: Option<StreamId>,
    closed_session: bool,
}

impl App for Closer {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _now: Instant, event: &Event, _t: &mut Trace) {
        match *event {
            Event::SessionEstablished { session, .. } => {
                let mut s = ep.session(session).unwrap();
                let fin = s.open(Dir::Uni).unwrap();
                let reset = s.open(Dir::Uni).unwrap();
                let bidi = s.open(Dir::Bi).unwrap();
                self.bidi = Some(bidi);
                let mut st = s.stream(fin).unwrap();
                assert_eq!(st.write(b"hello").unwrap(), 5);
                st.finish().unwrap();
                assert_eq!(st.write(b"more"), Err(WriteError::ClosedStream));
                let mut st = s.stream(reset).unwrap();
                st.write(b"doomed").unwrap();
                st.reset(42).unwrap();
                let mut st = s.stream(bidi).unwrap();
                st.write(b"please stop me").unwrap();
            }
            Event::StreamFinished { stream, .. } => {
                self.finished.insert(stream);
            }
            Event::StreamStopped {
                session,
                stream,
                code,
            } => {
                self.stopped.push((stream, code));
                let err = ep.stream(session, stream).unwrap().write(b"x").unwrap_err();
                self.write_after_stop = Some(err);
                ep.session(session).unwrap().close(99, b"bye").unwrap();
                self.closed_session = true;
            }
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _t: &mut Trace) -> bool {
        if self.session.is_none() {
            let cfg = self.client_cfg.take().unwrap();
            self.session = Some(ep.connect(now, addr(1), SERVER_NAME, &cfg).unwrap());
            return true;
        }
        false
    }

    fn done(&self) -> bool {
        self.closed_session
    }
}

/// Server side of the closing test: reads, stops the bidi stream.
#[derive(Default)]
struct CloseWatcher {
    text: Vec<u8>,
    eof: bool,
    reset: Option<u64>,
    closed: Option<CloseReason>,
}

impl App for CloseWatcher {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _now: Instant, event: &Event, _t: &mut Trace) {
        match *event {
            Event::StreamOpened { session, .. } => {
                let mut s = ep.session(session).unwrap();
                while let Some(id) = s.accept(Dir::Bi) {
                    s.stream(id).unwrap().stop(7).unwrap();
                    assert_eq!(
                        s.stream(id).map(|mut st| st.read(10)),
                        Some(Err(ReadError::ClosedStream))
                    );
                }
                let uni: Vec<StreamId> = std::iter::from_fn(|| s.accept(Dir::Uni)).collect();
                for id in uni {
                    self.read(ep, session, id);
                }
            }
            Event::StreamReadable { session, stream }
            | Event::StreamReset {
                session, stream, ..
            } => self.read(ep, session, stream),
            Event::SessionClosed { ref reason, .. } => self.closed = Some(reason.clone()),
            _ => {}
        }
    }
}

impl CloseWatcher {
    fn read(&mut self, ep: &mut KwikEndpoint, session: SessionHandle, id: StreamId) {
        let Some(mut st) = ep.stream(session, id) else {
            return;
        };
        loop {
            match st.read(usize::MAX) {
                Ok(Some(b)) => self.text.extend_from_slice(&b),
                Ok(None) => {
                    self.eof = true;
                    return;
                }
                Err(ReadError::Reset(code)) => {
                    self.reset = Some(code);
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

#[test]
fn fin_reset_stop_and_close_reach_the_other_side() {
    let mut sim = Sim::new(51);
    sim.set_default_link(link_100m());
    let cert = dev_cert(51);
    let (client_cfg, server_cfg) = configs(&cert);
    let now = sim.now();
    let server = sim.add_node(
        &[addr(1)],
        Box::new(KwikNode::new(
            addr(1),
            endpoint(1, Some(server_cfg), now),
            CloseWatcher::default(),
        )),
    );
    let closer = Closer {
        client_cfg: Some(client_cfg),
        ..Closer::default()
    };
    let client = sim.add_node(
        &[addr(2)],
        Box::new(KwikNode::new(addr(2), endpoint(2, None, now), closer)),
    );
    sim.run_until_done(Duration::from_secs(10))
        .expect("script completes");
    sim.run_for(Duration::from_secs(1));

    let c = &sim.node::<KwikNode<Closer>>(client).app;
    let fin = StreamId::new(kwik_core::Side::Client, Dir::Uni, 0);
    assert!(
        c.finished.contains(&fin),
        "sender learned its FIN was received"
    );
    assert_eq!(
        c.stopped,
        vec![(c.bidi.unwrap(), 7)],
        "stop code reached the sender"
    );
    assert_eq!(c.write_after_stop, Some(WriteError::Stopped(7)));

    let w = &sim.node::<KwikNode<CloseWatcher>>(server).app;
    assert!(
        w.text.starts_with(b"hello"),
        "data before FIN arrived: {:?}",
        w.text
    );
    assert!(w.eof, "FIN reached the reader as end of stream");
    assert_eq!(w.reset, Some(42), "reset code reached the reader");
    match &w.closed {
        Some(CloseReason::ApplicationClosed { code, reason }) => {
            assert_eq!((*code, &reason[..]), (99, &b"bye"[..]));
        }
        other => panic!("expected the application close, got {other:?}"),
    }
}

/// Cuts the server off `at` into a session whose client uploads `plan`
/// (with `primary_lost_after` in its path policy), and returns how the
/// client's session ended and how long after the cut.
fn vanish(
    at: Duration,
    plan: Vec<u64>,
    idle: Duration,
    primary_lost_after: Option<Duration>,
) -> (Option<CloseReason>, Duration) {
    let mut s = bulk(
        61,
        link_100m(),
        |c, sv| {
            c.path_policy.primary_lost_after = primary_lost_after;
            for t in [&mut c.transport, &mut sv.transport] {
                t.idle_timeout = idle;
                t.keep_alive_interval = Some(Duration::from_millis(500));
            }
        },
        Dir::Uni,
        &[plan],
    );
    s.sim.run_for(at);
    assert!(
        s.sim
            .node::<Client>(s.clients[0])
            .app
            .established_at
            .is_some()
    );
    let cut = s.sim.elapsed();
    s.sim.set_down(addr(1), true);
    let client = s.clients[0];
    let ended = s
        .sim
        .run_while(Duration::from_secs(60), |sim| {
            sim.node::<Client>(client).app.closed.is_none()
        })
        .expect("the client notices");
    let closed = s.sim.node::<Client>(client).app.closed.clone();
    (closed, ended - cut)
}

#[test]
fn a_primary_that_vanishes_mid_transfer_is_lost_within_a_second() {
    // A client that asked for fast detection watches its primary while
    // data flows: a dozen probes go unanswered, and the session ends as
    // PrimaryLost long before the idle timeout (PROTOCOL.md §10.11).
    let idle = Duration::from_secs(30);
    let fast = Some(Duration::ZERO);
    let (closed, waited) = vanish(Duration::from_millis(500), vec![1 << 30], idle, fast);
    assert_eq!(closed, Some(CloseReason::PrimaryLost));
    assert!(
        waited >= Duration::from_millis(500) && waited <= Duration::from_secs(1),
        "after a dozen probes, within a second: {waited:?}"
    );
}

#[test]
fn an_idle_session_whose_server_vanishes_ends_at_the_idle_timeout() {
    // No stream ever carried data: nothing is probed, QUIC's idle timeout
    // decides.
    let idle = Duration::from_secs(3);
    let (closed, waited) = vanish(
        Duration::from_secs(3),
        Vec::new(),
        idle,
        Some(Duration::ZERO),
    );
    assert_eq!(closed, Some(CloseReason::TimedOut));
    assert!(
        waited >= idle - Duration::from_millis(100),
        "not before the idle timeout: {waited:?}"
    );
    assert!(
        waited <= idle + Duration::from_secs(1),
        "within the idle timeout: {waited:?}"
    );
}

fn traced_run(seed: u64) -> (u64, u64) {
    let mut s = bulk(
        seed,
        link_100m()
            .loss(0.02)
            .jitter(Duration::from_micros(300))
            .duplicate(0.01),
        |_, _| {},
        Dir::Uni,
        &[vec![1 << 20, 3 << 20, 17], vec![2 << 20]],
    );
    s.sim.trace_mut().set_datagrams(true);
    s.sim
        .run_until_done(Duration::from_secs(600))
        .expect("completes");
    assert_eq!(s.sim.node::<Server>(s.server).app.corrupt, 0);
    (s.sim.trace().digest(), s.sim.trace().len())
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let first = traced_run(81);
    let second = traced_run(81);
    assert!(first.1 > 1000, "the trace records datagrams and events");
    assert_eq!(first, second, "identical traces for one seed");
    assert_ne!(traced_run(82).0, first.0, "another seed, another trace");
}
