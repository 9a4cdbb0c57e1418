//! 0-RTT resumption in the simulator (PROTOCOL.md §12).
//!
//! A client that talked to a server before resumes with its ticket and sends
//! its Hello — and a request it declares idempotent — in 0-RTT; the server
//! answers in 0.5-RTT. The tests measure that the first byte of the answer
//! arrives at least one round trip sooner than after a full handshake on the
//! same network, that a rejection (restarted server, early data turned off,
//! no ticket) falls back with every byte delivered once and the rejection
//! reported on the early stream, and that a replayed first flight gets no
//! further than PROTOCOL.md §12.2 allows: nothing at all against kwik's
//! single-use tickets, and against a ticket store that is not single-use
//! (several servers sharing tickets) one more copy of the idempotent request
//! in a session that is never confirmed and dies at the handshake deadline.
//!
//! Every link has a 50 ms round trip and 100 Mbit/s; responses are 4 KiB,
//! derived from the request, and checked byte for byte. Tests of a MUST of
//! PROTOCOL.md §12 are named after their section and listed in the table
//! of `conformance.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kwik_core::proto::control as msg;
use kwik_core::{
    ALPN, CloseReason, Dir, ErrorCode, Event, KwikEndpoint, PathId, PathState, ReadError,
    RetryPolicy, ServerConfig, Side, StreamId, TokenKey, WriteError, ZeroRtt,
};
use kwik_sim::abuse::{JOIN_SESSION, VALID_UNTIL, arena_endpoint};
use kwik_sim::hostile::{HostileClient, Misbehaviour, join_request};
use kwik_sim::resume::{LIMIT, Mode, ResumeNet};
use kwik_sim::setup::{SERVER_NAME, addr, dev_cert};
use kwik_sim::spoof::Replayer;
use kwik_sim::{App, KwikNode, LinkConfig, NodeId, Sim, Trace};
use quinn_proto::crypto::rustls::QuicClientConfig;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};

const RTT: Duration = Duration::from_millis(50);
/// How long a client keeps its session after the response: the server's
/// session tickets arrive a round trip after its handshake completed.
const LINGER: Duration = Duration::from_millis(300);

/// A network with one finished full-handshake exchange behind it: the
/// shared client configuration holds tickets and the server's limits.
fn warmed(seed: u64, tune: impl FnOnce(&mut ServerConfig)) -> ResumeNet {
    let mut net = ResumeNet::new(seed, RTT, tune);
    let warm = net.client.clone();
    let id = net.exchange(&warm, Mode::Full, b"GET /warm-up", LINGER);
    assert!(net.requester(id).response_ok());
    assert!(!net.requester(id).in_0rtt);
    net
}

/// The one request the server application received from the session of
/// client `id`, asserting there is exactly one.
fn delivered_once(net: &ResumeNet, request: &[u8]) -> kwik_sim::resume::Delivered {
    let copies: Vec<_> = net
        .responder()
        .requests
        .iter()
        .filter(|d| d.bytes == request)
        .cloned()
        .collect();
    assert_eq!(copies.len(), 1, "{:#?}", net.responder().requests);
    copies[0].clone()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn a_resumed_session_gets_its_answer_a_round_trip_sooner() {
    let mut net = warmed(1, |_| {});
    let fresh = net.fresh_client();
    let full = net.exchange(&fresh, Mode::Full, b"GET /full", LINGER);
    let warm = net.client.clone();
    let early = net.exchange(&warm, Mode::ZeroRtt, b"GET /early", LINGER);

    let full = net.requester(full);
    assert!(full.response_ok() && !full.in_0rtt && full.settled.is_none());
    let t_full = full.first_byte().expect("full: first byte");
    let r = net.requester(early);
    assert!(r.in_0rtt, "the warm configuration holds a ticket");
    assert_eq!(r.settled, Some(true));
    assert_eq!(r.zero_rtt, ZeroRtt::Accepted);
    assert_eq!(r.requests_sent, 1);
    assert!(r.response_ok(), "every byte of the answer, once");
    let t_early = r.first_byte().expect("0-RTT: first byte");
    eprintln!(
        "first byte: full handshake {:.1} ms, 0-RTT {:.1} ms",
        ms(t_full),
        ms(t_early)
    );
    // The acceptance rule, and what the timeline says: a full handshake
    // takes three round trips to the first byte (QUIC, Hello/Welcome,
    // request/response), 0-RTT one.
    assert!(
        t_early + RTT <= t_full,
        "{t_early:?} + {RTT:?} > {t_full:?}"
    );
    assert!(t_full >= 3 * RTT, "{t_full:?}");
    assert!(t_early < RTT + RTT / 2, "{t_early:?}");

    // The server acted on the request before the handshake confirmed the
    // client, and said so; then the handshake confirmed it.
    let d = delivered_once(&net, b"GET /early");
    assert_eq!(d.zero_rtt, ZeroRtt::Pending);
    let server = net.responder();
    assert!(
        server
            .established
            .iter()
            .any(|(s, _, z)| *s == d.session && *z == ZeroRtt::Pending)
    );
    assert_eq!(
        server
            .settled
            .iter()
            .map(|(s, a, _)| (*s, *a))
            .collect::<Vec<_>>(),
        vec![(d.session, true)]
    );
    // The warm-up and the full handshake never were in 0-RTT.
    assert_eq!(
        server
            .requests
            .iter()
            .filter(|d| d.zero_rtt == ZeroRtt::Off)
            .count(),
        2
    );
}

#[test]
fn a_hello_in_0rtt_alone_saves_one_round_trip() {
    let mut net = warmed(2, |_| {});
    let warm = net.client.clone();
    let id = net.exchange(&warm, Mode::HelloOnly, b"POST /not-idempotent", LINGER);
    let r = net.requester(id);
    assert!(r.in_0rtt && r.settled == Some(true) && r.response_ok());
    assert!(r.early_stream.is_none());
    let t = r.first_byte().unwrap();
    assert!(t >= 2 * RTT && t < 2 * RTT + RTT / 2, "{t:?}");
    // The request went after the Welcome, in 1-RTT: the server read it
    // only once the handshake had confirmed the client.
    let d = delivered_once(&net, b"POST /not-idempotent");
    assert_eq!(d.zero_rtt, ZeroRtt::Accepted);
}

/// After a rejection the request goes again in 1-RTT: the server sees it
/// once, on the first client stream (the rejected stream's id is used
/// again, so the server sees no gap), and the client's early stream
/// reports the rejection.
fn check_rejected(net: &ResumeNet, id: NodeId, request: &[u8]) {
    let r = net.requester(id);
    assert!(r.in_0rtt);
    assert_eq!(r.settled, Some(false));
    assert_eq!(r.zero_rtt, ZeroRtt::Rejected);
    assert_eq!(r.rejected_write, Some(WriteError::ZeroRttRejected));
    assert_eq!(r.rejected_read, Some(ReadError::ZeroRttRejected));
    assert_eq!(r.requests_sent, 2, "written in 0-RTT, then again");
    assert!(r.response_ok(), "every byte of the answer, once");
    assert!(r.first_byte().unwrap() >= 3 * RTT, "a full round trip more");
    let d = delivered_once(net, request);
    assert_eq!(d.zero_rtt, ZeroRtt::Off);
    assert_eq!(d.stream, StreamId::new(Side::Client, Dir::Bi, 0));
    assert!(
        !net.responder()
            .settled
            .iter()
            .any(|(s, ..)| *s == d.session),
        "the server never saw 0-RTT from this session"
    );
}

#[test]
fn s12_5_a_restarted_server_rejects_0rtt_and_the_request_goes_again() {
    let mut net = warmed(3, |_| {});
    // A new TLS session store: the client's tickets are unknown there.
    let restarted = net.fresh_server_config();
    net.server_endpoint().set_server_config(Some(restarted));
    let warm = net.client.clone();
    let id = net.exchange(&warm, Mode::ZeroRtt, b"GET /after-restart", LINGER);
    check_rejected(&net, id, b"GET /after-restart");
}

#[test]
fn s12_5_a_server_with_early_data_off_rejects_0rtt() {
    let mut net = warmed(4, |_| {});
    // Same session store (the ticket is known), early data turned off.
    let mut off = net.server_config.clone();
    off.early_data = false;
    net.server_endpoint().set_server_config(Some(off));
    let warm = net.client.clone();
    let id = net.exchange(&warm, Mode::ZeroRtt, b"GET /no-early-data", LINGER);
    check_rejected(&net, id, b"GET /no-early-data");
}

#[test]
fn without_a_ticket_the_hello_waits_for_the_handshake() {
    let mut net = ResumeNet::new(5, RTT, |_| {});
    let fresh = net.fresh_client();
    let id = net.exchange(&fresh, Mode::ZeroRtt, b"GET /cold", LINGER);
    let r = net.requester(id);
    assert!(!r.in_0rtt && r.settled.is_none() && r.early_stream.is_none());
    assert_eq!(r.requests_sent, 1);
    assert!(r.response_ok());
    assert!(r.first_byte().unwrap() >= 3 * RTT);
    assert_eq!(delivered_once(&net, b"GET /cold").zero_rtt, ZeroRtt::Off);
}

/// Sends `flight` to the server once, as if from `forged`.
fn replay(net: &mut ResumeNet, forged: std::net::SocketAddr, flight: Vec<Bytes>, host: u8) {
    let n = flight.len() as u64;
    let attacker = net.sim.add_node(
        &[addr(host)],
        Box::new(Replayer::new(
            forged,
            addr(1),
            flight,
            Duration::from_millis(1),
        )),
    );
    let now = net.sim.now();
    net.sim.node_mut::<Replayer>(attacker).start(now);
    net.sim
        .run_while(Duration::from_secs(1), |s| {
            s.node::<Replayer>(attacker).sent() < n
        })
        .expect("replayed");
    net.sim.node_mut::<Replayer>(attacker).stop();
}

/// A warmed network and a 0-RTT exchange whose first flight was captured:
/// the client's node, its address and the flight.
fn captured_exchange(
    net: &mut ResumeNet,
    request: &[u8],
) -> (NodeId, std::net::SocketAddr, Vec<Bytes>) {
    let warm = net.client.clone();
    let (id, at) = net.add_client(&warm, Mode::ZeroRtt, request);
    net.sim.tap(at, addr(1), 64);
    // The first flight leaves in the first instant.
    net.sim
        .run_while(Duration::from_secs(1), |s| s.tapped_count(at, addr(1)) == 0)
        .expect("the client sends");
    let flight = net.sim.untap(at, addr(1));
    assert!(!flight.is_empty());
    net.run_client(id);
    assert!(net.requester(id).response_ok() && net.requester(id).settled == Some(true));
    (id, at, flight)
}

#[test]
fn s12_2_a_replayed_first_flight_creates_no_session_and_delivers_nothing() {
    let mut net = warmed(6, |_| {});
    let (id, at, flight) = captured_exchange(&mut net, b"GET /once");
    let established = net.responder().established.len();
    // Replayed while the session lives: the datagram belongs to that
    // connection and is a duplicate there.
    replay(&mut net, at, flight.clone(), 98);
    net.sim.run_for(Duration::from_secs(1));
    assert_eq!(net.responder().established.len(), established);
    net.close_client(id, LINGER);
    // Replayed once the session is gone: a new connection attempt whose
    // ticket was used up, so 0-RTT is refused and its data dropped; the
    // handshake can never complete, and the deadline frees it.
    net.sim.run_for(Duration::from_secs(5));
    let before = net.server_endpoint().stats();
    replay(&mut net, at, flight, 99);
    net.sim.run_for(Duration::from_secs(15));
    let after = net.server_endpoint().stats();
    assert_eq!(after.handshakes_accepted, before.handshakes_accepted + 1);
    assert_eq!(after.handshakes_timed_out, before.handshakes_timed_out + 1);
    assert_eq!((after.sessions, after.half_open), (0, 0), "{after:?}");
    assert_eq!(net.responder().established.len(), established);
    delivered_once(&net, b"GET /once");
    assert!(!net.server_endpoint().is_banned(at.ip()));
}

/// A session store whose tickets can be used more than once, as when
/// several servers share tickets without a shared single-use record.
#[derive(Debug)]
struct NotSingleUse(Arc<ServerSessionMemoryCache>);

impl StoresServerSessions for NotSingleUse {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }
    fn can_cache(&self) -> bool {
        true
    }
}

#[test]
fn s12_3_a_replay_past_a_reusable_ticket_gets_an_unconfirmed_session_that_dies() {
    let seed = 7;
    let cert = dev_cert(seed);
    let mut tls = cert.server_config(&[]);
    tls.session_storage = Arc::new(NotSingleUse(ServerSessionMemoryCache::new(256)));
    let mut server = ServerConfig::new(tls).expect("server config");
    server.auto_accept = true;
    server.early_data = true;
    server.handshake_timeout = Duration::from_secs(2);
    // The primary asks every session to join a secondary: the replayed
    // session's AddPath is held (§12.3), its path never dialled.
    server.token_key = Some(TokenKey::new([7; 32]));
    let mut net = ResumeNet::with_server(seed, RTT, cert, server);
    net.sim
        .node_mut::<KwikNode<kwik_sim::resume::Responder>>(net.server)
        .app
        .add_path = Some(addr(50));
    let warm = net.client.clone();
    net.exchange(&warm, Mode::Full, b"GET /warm-up", LINGER);
    let (id, at, flight) = captured_exchange(&mut net, b"GET /idempotent");
    net.close_client(id, LINGER);
    let genuine = delivered_once(&net, b"GET /idempotent").session;

    replay(&mut net, at, flight, 99);
    net.sim.run_for(Duration::from_secs(10));
    // PROTOCOL.md §12.2: the replay may be taken for a 0-RTT session — it
    // gets the Hello and the idempotent request again — but that session
    // is never confirmed, reads as such, and the handshake deadline ends it.
    let server = net.responder();
    let copies: Vec<_> = server
        .requests
        .iter()
        .filter(|d| d.bytes == b"GET /idempotent"[..])
        .collect();
    assert_eq!(copies.len(), 2, "the genuine request and one replayed copy");
    let replayed = copies[1];
    assert_ne!(replayed.session, genuine);
    let replayed_session = replayed.session;
    assert_eq!(replayed.zero_rtt, ZeroRtt::Pending, "delivered unconfirmed");
    assert!(
        !server.settled.iter().any(|(s, ..)| *s == replayed.session),
        "never confirmed"
    );
    assert_eq!(
        server.closed.get(&replayed.session),
        Some(&CloseReason::TimedOut)
    );
    let stats = net.server_endpoint().stats();
    assert_eq!((stats.sessions, stats.half_open), (0, 0), "{stats:?}");
    assert_eq!(stats.handshakes_timed_out, 1);
    // PROTOCOL.md §15: its held path went from Initializing straight to
    // Closed with the session, which closed from Active and drained.
    let states = &net
        .sim
        .node::<KwikNode<kwik_sim::resume::Responder>>(net.server)
        .states;
    assert!(states.violations().is_empty(), "{:?}", states.violations());
    assert!(states.undrained().is_empty());
    let held: Vec<_> = states
        .paths
        .iter()
        .filter(|((session, path), _)| *session == replayed_session && path.0 > 0)
        .map(|(_, steps)| steps.clone())
        .collect();
    assert_eq!(
        held,
        vec![vec![(PathState::Initializing, PathState::Closed)]],
        "{:?}",
        states.paths
    );
}

#[test]
fn s12_3_a_0rtt_session_sends_no_addpath_before_its_handshake_completes() {
    let mut net = warmed(8, |c| c.token_key = Some(TokenKey::new([8; 32])));
    // The server adds a path as soon as a session is established; the
    // client's policy refuses it (its default allows no secondary) and
    // says so at once.
    net.sim
        .node_mut::<KwikNode<kwik_sim::resume::Responder>>(net.server)
        .app
        .add_path = Some(addr(50));
    let warm = net.client.clone();
    let id = net.exchange(&warm, Mode::ZeroRtt, b"GET /with-a-path", LINGER);
    let r = net.requester(id);
    assert!(r.settled == Some(true) && r.response_ok());
    let start = r.started_at.unwrap();
    let t_first = r.first_byte().unwrap();
    let session = delivered_once(&net, b"GET /with-a-path").session;
    let server = net.responder();
    let (_, _, settled_at) = *server.settled.iter().find(|(s, ..)| *s == session).unwrap();
    let (_, _, failed_at) = *server
        .path_failed
        .iter()
        .find(|(s, ..)| *s == session)
        .expect("the client answered the AddPath");
    // The answer left in 0.5-RTT (first byte after one round trip), the
    // AddPath only once the handshake completed (1.5 round trips): the
    // refusal is back a round trip after that, not after 1.5.
    assert!(t_first < RTT + RTT / 2);
    assert!(settled_at - start >= RTT + RTT / 2);
    let t_failed = failed_at - start;
    assert!(t_failed >= 2 * RTT + RTT / 2, "{t_failed:?}");
}

#[test]
fn s12_4_early_data_beyond_lowered_limits_is_refused_without_a_ban() {
    let mut net = warmed(9, |_| {});
    // Same tickets, smaller stream window than the client remembers: its
    // 0-RTT request overruns the new credit (PROTOCOL.md §12.4).
    let mut lowered = net.server_config.clone();
    lowered.transport.stream_window = 1024;
    net.server_endpoint().set_server_config(Some(lowered));
    let warm = net.client.clone();
    let big = vec![b'x'; 8192];
    let (id, at) = net.add_client(&warm, Mode::ZeroRtt, &big);
    net.run_client(id);
    let r = net.requester(id);
    assert!(r.in_0rtt && r.closed.is_some() && r.finished_at.is_none());
    let server = net.responder();
    assert!(server.closed.values().any(|reason| matches!(
        reason,
        CloseReason::Protocol {
            code: ErrorCode::FlowControl,
            by_peer: false,
            ..
        }
    )));
    // The violation came before the handshake proved the client's address:
    // it may be forged, so nobody is banned.
    let stats = net.server_endpoint().stats();
    assert_eq!(stats.bans_total, 0);
    assert!(!net.server_endpoint().is_banned(at.ip()));
}

#[test]
fn same_seed_same_trace() {
    let run = || {
        let mut net = warmed(10, |_| {});
        let warm = net.client.clone();
        net.exchange(&warm, Mode::ZeroRtt, b"GET /a", LINGER);
        let restarted = net.fresh_server_config();
        net.server_endpoint().set_server_config(Some(restarted));
        net.exchange(&warm, Mode::ZeroRtt, b"GET /b", LINGER);
        (net.sim.trace().digest(), net.sim.trace().len())
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    assert!(a.1 > 20, "the trace recorded the events");
}

/// A secondary's application: when paths joined, and how sessions ended.
#[derive(Default)]
struct JoinLog {
    joined: Vec<(PathId, Instant)>,
    closed: Vec<CloseReason>,
}

impl App for JoinLog {
    fn on_event(&mut self, _: &mut KwikEndpoint, now: Instant, event: &Event, _: &mut Trace) {
        match event {
            Event::PathJoined { path, .. } => self.joined.push((*path, now)),
            Event::SessionClosed { reason, .. } => self.closed.push(reason.clone()),
            _ => {}
        }
    }
}

/// A genuine Join for `path` of the arena's session on `secondary`.
fn join_for(key: &TokenKey, secondary: SocketAddr, path: PathId) -> msg::Join {
    let address = secondary.to_string();
    let token = key.mint(JOIN_SESSION, path, VALID_UNTIL, &address, SERVER_NAME);
    let mut join = join_request(&JOIN_SESSION.0, path, VALID_UNTIL, token);
    join.address = address;
    join.server_name = SERVER_NAME.to_string();
    join
}

#[test]
fn s12_3_a_join_in_0rtt_waits_for_the_handshake_and_its_replay_is_never_acted_on() {
    let seed = 11;
    let cert = dev_cert(seed);
    let key = TokenKey::new([11; 32]);
    // Tickets that can be used twice, so that the replay below is taken in
    // 0-RTT: only the rule that a Join waits for the handshake stands
    // between it and the token check.
    let mut tls = cert.server_config(&[]);
    tls.session_storage = Arc::new(NotSingleUse(ServerSessionMemoryCache::new(256)));
    let mut server = ServerConfig::new(tls).expect("server config");
    server.auto_accept = true;
    server.early_data = true;
    server.trusted_keys = vec![key.clone()];
    server.handshake_timeout = Duration::from_secs(2);
    let mut sim = Sim::new(seed);
    sim.set_default_link(LinkConfig::new().latency(RTT / 2).rate_mbps(100));
    let now = sim.now();
    let secondary = sim.add_node(
        &[addr(1)],
        Box::new(KwikNode::new(
            addr(1),
            arena_endpoint(seed, Some(server), now),
            JoinLog::default(),
        )),
    );
    let mut client_tls = cert.client_config(&[ALPN]);
    client_tls.enable_early_data = true;
    let crypto = Arc::new(QuicClientConfig::try_from(client_tls).expect("QUIC client config"));

    // A first path joins the usual way; its connection brings tickets.
    let first = HostileClient::new(addr(10), addr(1), seed, &cert, Misbehaviour::None)
        .join(join_for(&key, addr(1), PathId(1)))
        .sharing(crypto.clone());
    let first = sim.add_node(&[addr(10)], Box::new(first));
    sim.run_while(LIMIT, |s| !s.node::<HostileClient>(first).joined())
        .expect("the first path joins");
    sim.run_for(LINGER);

    // The second sends its Join in 0-RTT.
    let early = HostileClient::new(addr(11), addr(1), seed + 1, &cert, Misbehaviour::None)
        .join(join_for(&key, addr(1), PathId(2)))
        .early(crypto);
    sim.tap(addr(11), addr(1), 64);
    let start = sim.now();
    let early = sim.add_node(&[addr(11)], Box::new(early));
    sim.run_while(LIMIT, |s| !s.node::<HostileClient>(early).joined())
        .expect("the second path joins");
    let flight = sim.untap(addr(11), addr(1));
    assert!(sim.node::<HostileClient>(early).sent_early());
    let log = &sim.node::<KwikNode<JoinLog>>(secondary).app;
    let &(_, joined_at) = log
        .joined
        .iter()
        .find(|(p, _)| *p == PathId(2))
        .expect("path 2 joined");
    // The Join arrived after half a round trip; it was acted on once the
    // client's Finished arrived, a round trip later.
    assert!(
        joined_at - start >= RTT + RTT / 2,
        "{:?}",
        joined_at - start
    );
    let now = sim.now();
    sim.node_mut::<HostileClient>(early).close(now, 0, b"done");
    sim.run_for(Duration::from_secs(5));

    // The replay is taken in 0-RTT, its Join is held, the handshake never
    // completes: the token is never even checked (no KWIK_AUTH_FAILED),
    // nothing joins, and the deadline frees the session.
    let n = flight.len() as u64;
    let attacker = sim.add_node(
        &[addr(99)],
        Box::new(Replayer::new(
            addr(11),
            addr(1),
            flight,
            Duration::from_millis(1),
        )),
    );
    let now = sim.now();
    sim.node_mut::<Replayer>(attacker).start(now);
    sim.run_while(Duration::from_secs(1), |s| {
        s.node::<Replayer>(attacker).sent() < n
    })
    .expect("replayed");
    sim.node_mut::<Replayer>(attacker).stop();
    sim.run_for(Duration::from_secs(10));
    let log = &sim.node::<KwikNode<JoinLog>>(secondary).app;
    assert_eq!(log.joined.len(), 2, "{:?}", log.joined);
    assert_eq!(
        log.closed.last(),
        Some(&CloseReason::TimedOut),
        "{:?}",
        log.closed
    );
    assert!(!log.closed.iter().any(|r| matches!(
        r,
        CloseReason::Protocol {
            code: ErrorCode::AuthFailed,
            ..
        }
    )));
    let stats = sim.node::<KwikNode<JoinLog>>(secondary).endpoint.stats();
    assert_eq!(stats.handshakes_timed_out, 1, "{stats:?}");
}

#[test]
fn a_retry_costs_a_round_trip_and_the_0rtt_data_goes_again_after_it() {
    // Every attempt must first prove its address: the Retry discards the
    // first flight, and the client sends it again, 0-RTT data included.
    let mut net = warmed(12, |c| c.retry = RetryPolicy::Always);
    let warm = net.client.clone();
    let id = net.exchange(&warm, Mode::ZeroRtt, b"GET /after-a-retry", LINGER);
    let r = net.requester(id);
    assert!(r.in_0rtt && r.settled == Some(true) && r.response_ok());
    assert_eq!(r.requests_sent, 1);
    let t = r.first_byte().unwrap();
    assert!(t >= 2 * RTT && t < 2 * RTT + RTT / 2, "{t:?}");
    let d = delivered_once(&net, b"GET /after-a-retry");
    assert_eq!(d.zero_rtt, ZeroRtt::Pending);
    assert_eq!(net.server_endpoint().stats().retries_sent, 2);
}
