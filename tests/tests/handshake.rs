//! The server's door under load, in the simulator: address validation with
//! Retry (always, automatic above a half-open threshold, or on the
//! application's request), the half-open and session limits, the handshake
//! deadline (and the memory it frees), the expiring ban list and its bound,
//! and a flood of forged Initials against the default configuration.
//!
//! Every scenario checks what a client sees (established, refused, closed
//! with which code) *and* the server's [`EndpointStats`], so a defence that
//! silently stops working, or one that works but is not counted, fails.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use kwik_core::{
    ClientConfig, CloseReason, DisconnectKind, EndpointStats, ErrorCode, Event, KwikEndpoint,
    RetryError, RetryPolicy, ServerConfig,
};
use kwik_sim::alloc::{CountingAlloc, Meter, installed};
use kwik_sim::handshakes::{Dialer, InitialFlood, MuteClient};
use kwik_sim::hostile::{HostileClient, Misbehaviour};
use kwik_sim::setup::{addr, configs, dev_cert, endpoint};
use kwik_sim::{App, BulkServer, DevCert, KwikNode, LinkConfig, Node, NodeId, Payload, Sim, Trace};
use quinn_proto::{ConnectionError, TransportErrorCode};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// One-way latency of every link.
const LATENCY: Duration = Duration::from_millis(10);
/// Round-trip time of every link.
const RTT: Duration = Duration::from_millis(20);
/// Virtual-time limit of each wait.
const LIMIT: Duration = Duration::from_secs(120);

/// A kwik server at `addr(1)` and whatever clients a test adds.
struct Door<A: App> {
    sim: Sim,
    server: NodeId,
    cert: DevCert,
    client: ClientConfig,
    next_seed: u64,
    _app: std::marker::PhantomData<A>,
}

impl Door<BulkServer> {
    /// A server that accepts every attempt its defences let through.
    fn new(seed: u64, tune: impl FnOnce(&mut ServerConfig)) -> Self {
        Door::with_app(seed, tune, BulkServer::new(Payload::new(seed), 0))
    }

    /// How server sessions ended.
    fn closed(&self) -> Vec<CloseReason> {
        self.app().closed.values().cloned().collect()
    }
}

impl<A: App> Door<A> {
    fn with_app(seed: u64, tune: impl FnOnce(&mut ServerConfig), app: A) -> Self {
        let mut sim = Sim::new(seed);
        sim.set_default_link(LinkConfig::new().latency(LATENCY).rate_mbps(100));
        let cert = dev_cert(seed);
        let (client, mut server_cfg) = configs(&cert);
        tune(&mut server_cfg);
        let now = sim.now();
        let server = sim.add_node(
            &[addr(1)],
            Box::new(KwikNode::new(
                addr(1),
                endpoint(seed, Some(server_cfg), now),
                app,
            )),
        );
        Door {
            sim,
            server,
            cert,
            client,
            next_seed: seed + 100,
            _app: std::marker::PhantomData,
        }
    }

    fn fresh_seed(&mut self) -> u64 {
        self.next_seed += 1;
        self.next_seed
    }

    fn endpoint(&self) -> &KwikEndpoint {
        &self.sim.node::<KwikNode<A>>(self.server).endpoint
    }

    fn app(&self) -> &A {
        &self.sim.node::<KwikNode<A>>(self.server).app
    }

    fn stats(&self) -> EndpointStats {
        self.endpoint().stats()
    }

    /// Starts a kwik client at `at` that only connects.
    fn dial(&mut self, at: SocketAddr) -> NodeId {
        let seed = self.fresh_seed();
        let ep = endpoint(seed, None, self.sim.now());
        let app = Dialer::new(addr(1), self.client.clone());
        self.sim
            .add_node(&[at], Box::new(KwikNode::new(at, ep, app)))
    }

    fn dialer(&self, id: NodeId) -> &Dialer {
        &self.sim.node::<KwikNode<Dialer>>(id).app
    }

    /// Runs until the dialer at `id` is established or closed.
    fn settle_dialer(&mut self, id: NodeId) -> &Dialer {
        self.sim
            .run_while(LIMIT, |sim| !sim.node::<KwikNode<Dialer>>(id).app.done())
            .unwrap_or_else(|e| panic!("{e}"));
        self.dialer(id)
    }

    /// Starts a client at `at` that completes the QUIC handshake and says
    /// nothing; runs until its handshake completed.
    fn mute(&mut self, at: SocketAddr) -> NodeId {
        let seed = self.fresh_seed();
        let node = MuteClient::new(at, addr(1), &self.cert, seed);
        let id = self.sim.add_node(&[at], Box::new(node));
        self.sim
            .run_while(LIMIT, |sim| {
                let m = sim.node::<MuteClient>(id);
                m.connected_at().is_none() && m.connection_error().is_none()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            self.sim.node::<MuteClient>(id).connected_at().is_some(),
            "mute client at {at} did not complete its QUIC handshake: {:?}",
            self.sim.node::<MuteClient>(id)
        );
        id
    }

    /// Starts a scripted hostile kwik client at `at`; runs until it was
    /// welcomed or its connection ended.
    fn hostile(&mut self, at: SocketAddr, misbehaviour: Misbehaviour) -> NodeId {
        let seed = self.fresh_seed();
        let node = HostileClient::new(at, addr(1), seed, &self.cert, misbehaviour);
        let id = self.sim.add_node(&[at], Box::new(node));
        self.sim
            .run_while(LIMIT, |sim| {
                let h = sim.node::<HostileClient>(id);
                h.connection_error().is_none()
                    && !(misbehaviour == Misbehaviour::None && h.welcomed())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        id
    }

    /// Runs until `cond` holds on the server's stats.
    fn wait_stats(&mut self, what: &str, cond: impl Fn(&EndpointStats) -> bool) {
        let server = self.server;
        let result = self.sim.run_while(LIMIT, |sim| {
            !cond(&sim.node::<KwikNode<A>>(server).endpoint.stats())
        });
        if let Err(e) = result {
            panic!("waiting for {what}: {e}; stats {:?}", self.stats());
        }
    }
}

fn ip(host: u8) -> IpAddr {
    addr(host).ip()
}

/// `addr(host)`'s IP with another port: the same peer, another socket.
fn other_port(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(host), port)
}

fn refused(err: Option<&ConnectionError>) -> bool {
    matches!(err, Some(ConnectionError::ConnectionClosed(c))
        if c.error_code == TransportErrorCode::CONNECTION_REFUSED)
}

// ----- Retry ---------------------------------------------------------------

/// Connect time of one client under `retry`, and the server's stats after.
fn connect_once(seed: u64, retry: RetryPolicy) -> (Duration, EndpointStats) {
    let mut door = Door::new(seed, |s| s.retry = retry);
    let client = door.dial(addr(2));
    let dialer = door.settle_dialer(client);
    assert!(
        dialer.closed.is_none(),
        "{retry:?}: client closed: {:?}",
        dialer.closed
    );
    let took = dialer.connect_time().expect("established");
    (took, door.stats())
}

#[test]
fn retry_always_still_connects_with_one_more_round_trip_and_is_counted() {
    let (direct, never) = connect_once(1, RetryPolicy::Never);
    let (retried, always) = connect_once(1, RetryPolicy::Always);
    assert_eq!((never.retries_sent, never.incoming), (0, 1), "{never:?}");
    assert_eq!(
        (
            always.retries_sent,
            always.incoming,
            always.handshakes_accepted
        ),
        (1, 2, 1),
        "one Retry, then the validated attempt is accepted: {always:?}"
    );
    assert_eq!((always.sessions, always.half_open), (1, 0));
    let extra = retried.saturating_sub(direct);
    assert!(
        extra >= RTT && extra < 2 * RTT,
        "Retry should cost one round trip ({RTT:?}): {direct:?} without, {retried:?} with"
    );
}

#[test]
fn auto_retry_starts_at_the_half_open_threshold() {
    let mut door = Door::new(2, |s| s.retry = RetryPolicy::Auto { above_half_open: 2 });
    door.mute(addr(2));
    door.mute(addr(3));
    let s = door.stats();
    assert_eq!(
        (s.retries_sent, s.half_open, s.handshakes_accepted),
        (0, 2, 2),
        "below the threshold nobody is retried: {s:?}"
    );
    let client = door.dial(addr(4));
    let dialer = door.settle_dialer(client);
    assert!(dialer.established_at.is_some(), "{:?}", dialer.closed);
    let s = door.stats();
    assert_eq!(
        (s.retries_sent, s.handshakes_accepted),
        (1, 3),
        "at the threshold the next attempt is retried, then accepted: {s:?}"
    );
    // Still two half-open (the mute ones): the next one is retried too.
    door.mute(addr(5));
    let s = door.stats();
    assert_eq!((s.retries_sent, s.half_open), (2, 3), "{s:?}");
}

/// A server application that asks every unvalidated attempt for a Retry and
/// accepts validated ones.
#[derive(Default)]
struct Retrier {
    /// `address_validated` of every Incoming seen, in order.
    seen: Vec<bool>,
    /// What retrying a validated attempt answered.
    second_retry: Option<Result<(), RetryError>>,
}

impl App for Retrier {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _: Instant, event: &Event, _: &mut Trace) {
        if let Event::Incoming {
            incoming,
            address_validated,
            ..
        } = *event
        {
            self.seen.push(address_validated);
            if address_validated {
                self.second_retry = Some(ep.retry(incoming));
                ep.accept(incoming)
                    .expect("still pending after a refused retry");
            } else {
                ep.retry(incoming)
                    .expect("an unvalidated attempt may be retried");
            }
        }
    }
}

#[test]
fn the_application_can_ask_for_a_retry() {
    let mut door = Door::with_app(
        3,
        |s| {
            s.auto_accept = false;
            s.retry = RetryPolicy::Never;
        },
        Retrier::default(),
    );
    let client = door.dial(addr(2));
    let dialer = door.settle_dialer(client);
    assert!(dialer.established_at.is_some(), "{:?}", dialer.closed);
    assert_eq!(door.app().seen, [false, true]);
    assert_eq!(
        door.app().second_retry,
        Some(Err(RetryError::AlreadyRetried))
    );
    let s = door.stats();
    assert_eq!((s.retries_sent, s.handshakes_accepted), (1, 1), "{s:?}");
}

// ----- Limits --------------------------------------------------------------

#[test]
fn half_open_limit_refuses_then_admits_once_handshakes_expire() {
    let timeout = Duration::from_secs(2);
    let mut door = Door::new(4, |s| {
        s.retry = RetryPolicy::Never;
        s.max_half_open = 2;
        s.handshake_timeout = timeout;
    });
    let mutes = [door.mute(addr(2)), door.mute(addr(3))];
    let first = door.dial(addr(4));
    let dialer = door.settle_dialer(first);
    assert!(
        matches!(dialer.closed, Some(CloseReason::Refused)),
        "a full half-open table refuses: {:?}",
        dialer.closed
    );
    let s = door.stats();
    assert_eq!((s.refused_limit, s.half_open), (1, 2), "{s:?}");
    // The mute handshakes expire; a genuine client then gets in.
    door.wait_stats("the handshakes to expire", |s| s.half_open == 0);
    door.sim
        .run_while(LIMIT, |sim| {
            mutes
                .iter()
                .any(|&id| sim.node::<MuteClient>(id).connection_error().is_none())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    for id in mutes {
        let m = door.sim.node::<MuteClient>(id);
        assert_eq!(
            m.close_code(),
            Some(ErrorCode::ResourceLimit.wire()),
            "{m:?}"
        );
    }
    let second = door.dial(addr(5));
    let dialer = door.settle_dialer(second);
    assert!(dialer.established_at.is_some(), "{:?}", dialer.closed);
    let s = door.stats();
    assert_eq!((s.handshakes_timed_out, s.refused_limit), (2, 1), "{s:?}");
    // The two expired handshakes are counted as closed for a timeout.
    assert_eq!(s.sessions_closed.get(DisconnectKind::Timeout), 2, "{s:?}");
}

#[test]
fn session_limit_refuses_then_admits_once_a_session_is_gone() {
    let mut door = Door::new(5, |s| s.max_sessions = 2);
    let a = door.dial(addr(2));
    let b = door.dial(addr(3));
    for id in [a, b] {
        let d = door.settle_dialer(id);
        assert!(d.established_at.is_some(), "{:?}", d.closed);
    }
    let c = door.dial(addr(4));
    let d = door.settle_dialer(c);
    assert!(
        matches!(d.closed, Some(CloseReason::Refused)),
        "beyond max_sessions: {:?}",
        d.closed
    );
    let s = door.stats();
    assert_eq!((s.sessions, s.refused_limit), (2, 1), "{s:?}");
    // One client leaves; once its session drained, there is room again.
    let node = door.sim.node_mut::<KwikNode<Dialer>>(a);
    let handle = node.app.session.expect("started");
    node.endpoint
        .session(handle)
        .expect("live")
        .close(0, b"bye")
        .expect("application code");
    door.wait_stats("the closed session to drain", |s| s.sessions == 1);
    let e = door.dial(addr(5));
    let d = door.settle_dialer(e);
    assert!(d.established_at.is_some(), "{:?}", d.closed);
    assert_eq!(door.stats().sessions, 2);
}

// ----- Handshake deadline --------------------------------------------------

/// A server with handshake deadline `timeout`, its heap charged to meter
/// `meter`, after 100 ms of idling.
fn deadline_door(timeout: Duration, meter: Meter) -> Door<BulkServer> {
    let mut door = Door::new(6, |s| s.handshake_timeout = timeout);
    door.sim.meter(door.server, meter);
    door.sim.run_for(Duration::from_millis(100));
    door
}

#[test]
fn a_silent_client_is_closed_at_the_handshake_timeout_and_its_memory_freed() {
    let timeout = Duration::from_secs(3);
    let meter = Meter(1);
    let mut door = deadline_door(timeout, meter);
    // Two rounds: the first shows what a silent client pins and that the
    // deadline frees it; the second, that nothing accumulates per round
    // (what the first leaves behind is the endpoint's reusable capacity).
    let mut rounds = Vec::new();
    for (round, host) in [2u8, 3].into_iter().enumerate() {
        let before = meter.current();
        let mute = door.mute(addr(host));
        let pinned = meter.current() - before;
        let s = door.stats();
        assert_eq!((s.half_open, s.sessions), (1, 1), "{s:?}");
        door.sim
            .run_while(LIMIT, |sim| {
                sim.node::<MuteClient>(mute).connection_error().is_none()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let m = door.sim.node::<MuteClient>(mute);
        assert_eq!(
            m.close_code(),
            Some(ErrorCode::ResourceLimit.wire()),
            "{m:?}"
        );
        assert_eq!(m.close_reason().as_deref(), Some("handshake timeout"));
        // The deadline runs from the accept, about one round trip before
        // the client saw its handshake complete.
        let lived = m.ended_at().unwrap() - m.connected_at().unwrap();
        assert!(
            lived + RTT >= timeout && lived <= timeout + RTT,
            "closed after {lived:?}, deadline {timeout:?}"
        );
        door.wait_stats("the session to drain", |s| s.sessions == 0);
        let s = door.stats();
        assert_eq!(
            (s.handshakes_timed_out, s.half_open),
            (round as u64 + 1, 0),
            "{s:?}"
        );
        rounds.push((pinned, meter.current() - before));
    }
    assert!(installed());
    assert_eq!(
        door.closed(),
        [CloseReason::TimedOut, CloseReason::TimedOut]
    );
    let [(pinned, left), (pinned_again, left_again)] = rounds[..] else {
        unreachable!("two rounds")
    };
    eprintln!(
        "silent client: pinned {pinned} B, {left} B left; again {pinned_again} B, {left_again} B left"
    );
    assert!(
        pinned > 0 && pinned_again > 0,
        "a half-open session holds memory"
    );
    // The first round also grows the endpoint's reusable tables (quinn's
    // connection slab and indexes, scratch buffers); the second round shows
    // that nothing is kept per session.
    assert!(
        left < pinned,
        "the {pinned} bytes the handshake held must be freed; {left} remain"
    );
    assert!(
        left_again * 10 <= pinned_again,
        "a second silent client must leave (almost) nothing behind: {left_again} of {pinned_again} bytes remain"
    );
}

#[test]
fn without_a_handshake_deadline_the_silent_client_stays() {
    let mut door = deadline_door(Duration::ZERO, Meter(2));
    let mute = door.mute(addr(2));
    door.sim.run_for(Duration::from_secs(15));
    let s = door.stats();
    assert_eq!((s.half_open, s.handshakes_timed_out), (1, 0), "{s:?}");
    assert!(
        door.sim
            .node::<MuteClient>(mute)
            .connection_error()
            .is_none()
    );
}

// ----- Bans ----------------------------------------------------------------

#[test]
fn a_protocol_violation_bans_the_ip_until_the_ban_expires() {
    let ban = Duration::from_secs(5);
    let mut door = Door::new(7, |s| s.ban_duration = ban);
    let bad = door.hostile(addr(3), Misbehaviour::GarbageOnControl);
    let banned_at = door.sim.elapsed();
    let h = door.sim.node::<HostileClient>(bad);
    assert_eq!(
        h.close_code(),
        Some(ErrorCode::InvalidFrame.wire()),
        "{h:?}"
    );
    let s = door.stats();
    assert_eq!((s.bans_total, s.bans_active), (1, 1), "{s:?}");
    assert!(door.endpoint().is_banned(ip(3)));

    // Same IP, another port: refused before any state is kept.
    let again = door.hostile(other_port(3, 5000), Misbehaviour::None);
    let h = door.sim.node::<HostileClient>(again);
    assert!(
        refused(h.connection_error()) && !h.welcomed(),
        "a banned IP is refused: {h:?}"
    );
    assert_eq!(door.stats().refused_banned, 1);
    // Another address is served meanwhile.
    let other = door.hostile(addr(4), Misbehaviour::None);
    assert!(door.sim.node::<HostileClient>(other).welcomed());

    // After the ban expires the IP is served again.
    door.sim.run_until(banned_at + ban + RTT);
    let later = door.hostile(other_port(3, 5001), Misbehaviour::None);
    let h = door.sim.node::<HostileClient>(later);
    assert!(h.welcomed(), "the ban expired: {h:?}");
    assert!(!door.endpoint().is_banned(ip(3)));
    let s = door.stats();
    assert_eq!(
        (s.bans_active, s.bans_total, s.refused_banned),
        (0, 1, 1),
        "{s:?}"
    );
}

#[test]
fn the_ban_list_keeps_within_max_bans_evicting_the_soonest_expiry() {
    let mut door = Door::new(8, |s| s.max_bans = 2);
    for host in [3, 4, 5] {
        door.hostile(addr(host), Misbehaviour::GarbageOnControl);
        door.sim.run_for(Duration::from_millis(100));
        assert!(door.stats().bans_active <= 2, "{:?}", door.stats());
    }
    let s = door.stats();
    assert_eq!((s.bans_total, s.bans_active), (3, 2), "{s:?}");
    assert!(
        !door.endpoint().is_banned(ip(3)),
        "the oldest ban was evicted"
    );
    assert!(door.endpoint().is_banned(ip(4)) && door.endpoint().is_banned(ip(5)));
    // ... so that IP is served again, the others are not.
    let h = door.hostile(other_port(3, 6000), Misbehaviour::None);
    assert!(door.sim.node::<HostileClient>(h).welcomed());
    let h = door.hostile(other_port(5, 6000), Misbehaviour::None);
    assert!(refused(
        door.sim.node::<HostileClient>(h).connection_error()
    ));
}

#[test]
fn a_zero_ban_duration_bans_nobody() {
    let mut door = Door::new(9, |s| s.ban_duration = Duration::ZERO);
    door.hostile(addr(3), Misbehaviour::GarbageOnControl);
    let h = door.hostile(other_port(3, 5000), Misbehaviour::None);
    assert!(door.sim.node::<HostileClient>(h).welcomed());
    assert_eq!(door.stats().bans_total, 0);
}

// ----- Flood ---------------------------------------------------------------

/// Forged Initials sent by [`flood`].
const FLOOD: u64 = 400;

/// `FLOOD` forged Initials at one per millisecond with three genuine clients
/// in the middle, against a server tuned by `tune` and metered by `meter`.
/// Returns the server's peak heap growth, its peak half-open count, its
/// final stats, and how many genuine clients got in.
fn flood(
    seed: u64,
    meter: usize,
    tune: impl FnOnce(&mut ServerConfig),
) -> (i64, u64, EndpointStats, usize) {
    let mut door = Door::new(seed, tune);
    let meter = Meter(meter);
    door.sim.meter(door.server, meter);
    door.sim.run_for(Duration::from_millis(100));
    let before = meter.current();
    meter.reset_peak();
    let node = InitialFlood::new(
        addr(1),
        &door.cert,
        seed,
        FLOOD,
        Duration::from_millis(1),
        0,
    );
    let flooder = door.sim.add_node(&[], Box::new(node));
    let mut peak_half_open = 0;
    let mut clients = Vec::new();
    for (i, host) in [2u8, 3, 4].into_iter().enumerate() {
        let at = Duration::from_millis(150 + 100 * i as u64);
        door.sim.run_until(at);
        clients.push(door.dial(addr(host)));
    }
    let server = door.server;
    let mut observe = |sim: &Sim| {
        let s = sim.node::<KwikNode<BulkServer>>(server).endpoint.stats();
        peak_half_open = peak_half_open.max(s.half_open);
    };
    door.sim
        .run_while(LIMIT, |sim| {
            observe(sim);
            !(sim.node::<InitialFlood>(flooder).done()
                && clients
                    .iter()
                    .all(|&c| sim.node::<KwikNode<Dialer>>(c).app.done()))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Let the last Initials arrive.
    let end = door.sim.elapsed() + 10 * RTT;
    let _ = door.sim.run_while(LIMIT, |sim| {
        observe(sim);
        sim.elapsed() < end
    });
    let ok = clients
        .iter()
        .filter(|&&c| door.dialer(c).established_at.is_some())
        .count();
    (meter.peak() - before, peak_half_open, door.stats(), ok)
}

#[test]
fn forged_initials_are_retried_and_pin_far_less_than_without_retry() {
    let (default_peak, default_half_open, s, ok) = flood(10, 3, |_| {});
    assert_eq!(ok, 3, "every genuine client gets in: {s:?}");
    let RetryPolicy::Auto { above_half_open } = ServerConfig::new(dev_cert(10).server_config(&[]))
        .expect("config")
        .retry
    else {
        panic!("the default policy is Auto");
    };
    let threshold = above_half_open as u64;
    assert!(
        default_half_open <= threshold + 3,
        "half-open stays at the threshold (+ the genuine clients): {default_half_open}"
    );
    assert!(
        s.retries_sent >= FLOOD - threshold,
        "every forged Initial past the threshold is retried: {s:?}"
    );
    assert_eq!(
        s.incoming - s.retries_sent,
        s.handshakes_accepted,
        "every attempt was retried or accepted, none refused: {s:?}"
    );
    assert!(s.handshakes_accepted <= threshold + 3, "{s:?}");

    let (never_peak, never_half_open, s, _) = flood(10, 4, |c| {
        c.retry = RetryPolicy::Never;
        c.max_half_open = usize::MAX;
    });
    assert_eq!(s.retries_sent, 0);
    assert!(never_half_open >= FLOOD, "{never_half_open}");
    eprintln!(
        "flood of {FLOOD}: server heap peak {default_peak} B with the defaults, {never_peak} B without Retry"
    );
    assert!(
        default_peak * 4 < never_peak,
        "Retry must bound the heap: {default_peak} bytes with the defaults, {never_peak} without Retry"
    );
}
