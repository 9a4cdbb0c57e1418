//! Hostile review (v3) of automatic scaling and stream priorities.
//!
//! Each test states the attack, the behaviour expected of kwik, and — for
//! the ones that fail on the reviewed code — the defect.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use std::time::{Duration, Instant};

use kwik_core::scaling::{
    AutoscaleConfig, ScalingDecision, ScalingInput, ScalingPolicy, UtilisationPolicy,
};
use kwik_core::{
    Candidate, Dir, KwikEndpoint, PathFilter, PathId, PathTarget, SessionHandle, Side, StreamId,
    TransferConfig, WriteError,
};
use kwik_sim::multi::{
    DESCRIPTOR, MultiClient, MultiOptions, MultiSetup, PayloadResource, SecondaryApp, ServerLink,
    Start, first_server_stream,
};
use kwik_sim::node::Node;
use kwik_sim::pair::StreamPair;
use kwik_sim::setup::{SERVER_NAME, addr, configs, dev_cert, endpoint};
use kwik_sim::{KwikNode, LinkConfig, NodeId, Payload};

const MBIT: u64 = 1_000_000 / 8;

// ---------------------------------------------------------------------
// Automatic scaling
// ---------------------------------------------------------------------

/// A constant demand of `mbit` Mbit/s from the start.
fn constant(mbit: u64) -> impl Fn(Duration) -> u64 {
    move |t| (t.as_secs_f64() * (mbit * MBIT) as f64) as u64
}

/// A scripted, deliberately erratic policy (a policy is operator code: the
/// core must stay sound whatever it decides).
#[derive(Debug)]
enum Script {
    /// Add on odd evaluations, remove every scaled path on even ones, for
    /// `flaps` evaluations; then remove every scaled path for good.
    Flap { flaps: u32 },
    /// Add whenever possible; never remove.
    Greedy,
}

#[derive(Debug)]
struct Scripted {
    script: Script,
    evaluations: u32,
}

impl ScalingPolicy for Scripted {
    fn evaluate(&mut self, input: &ScalingInput<'_>) -> ScalingDecision {
        self.evaluations += 1;
        let scaled: Vec<PathId> = input
            .paths
            .iter()
            .filter(|p| p.autoscaled)
            .map(|p| p.id)
            .collect();
        match self.script {
            Script::Flap { flaps } => {
                if self.evaluations <= flaps && self.evaluations % 2 == 1 {
                    ScalingDecision::Add
                } else {
                    ScalingDecision::Remove(scaled)
                }
            }
            Script::Greedy => ScalingDecision::Add,
        }
    }
}

fn scripted(make: fn() -> Script) -> AutoscaleConfig {
    AutoscaleConfig {
        policy: std::sync::Arc::new(move || {
            Box::new(Scripted {
                script: make(),
                evaluations: 0,
            })
        }),
        ..AutoscaleConfig::default()
    }
}

fn quick() -> AutoscaleConfig {
    AutoscaleConfig {
        policy: std::sync::Arc::new(|| {
            let mut p = UtilisationPolicy::default();
            p.remove_after = Duration::from_secs(10);
            Box::new(p)
        }),
        ..AutoscaleConfig::default()
    }
}

/// One autoscaling primary (server 0) and `servers - 1` secondaries, 20
/// Mbit/s each; the client may also be asked to join `extra`.
fn scaling_setup(
    servers: usize,
    config: AutoscaleConfig,
    seed: u64,
    extra: Vec<SocketAddr>,
) -> MultiSetup {
    let links = vec![ServerLink::new(20, 40); servers];
    let mut options = MultiOptions::new(seed, links, 1 << 30);
    options.stream_window = 4 << 20;
    options.tune_client = Box::new(move |c| {
        c.path_policy
            .allow
            .extend(extra.iter().copied().map(PathTarget::Address));
    });
    options.tune_server = Box::new(move |i, cfg| {
        if i == 0 {
            cfg.autoscale = Some(config.clone());
            cfg.path_retry = None;
        }
    });
    MultiSetup::new(options, |p| {
        p.start = Start::Immediately;
        p.add_no_paths();
    })
}

fn pool(s: &MultiSetup, range: std::ops::Range<usize>) -> Vec<Candidate> {
    s.servers[range]
        .iter()
        .map(|a| Candidate::new(*a, SERVER_NAME))
        .collect()
}

fn read(s: &MultiSetup) -> u64 {
    s.client()
        .read
        .get(&first_server_stream())
        .copied()
        .unwrap_or(0)
}

fn live_paths(s: &mut MultiSetup) -> Vec<PathId> {
    let primary = s.primary_node();
    let h = primary.app.session.unwrap();
    let mut view = primary.endpoint.session(h).unwrap();
    view.paths(PathFilter::Live).iter().map(|p| p.id).collect()
}

/// Attack: a policy that adds a path and removes it again at every other
/// evaluation, while a transfer runs over the paths it adds and removes.
/// Expected: every byte arrives once and intact, nothing dies, and once the
/// policy stops the endpoint counts no scaled path and only the primary
/// connection is live.
#[test]
fn a_flapping_policy_corrupts_nothing_and_leaks_no_scaled_path() {
    let mut s = scaling_setup(4, scripted(|| Script::Flap { flaps: 24 }), 31, vec![]);
    let candidates = pool(&s, 1..4);
    s.primary_node().endpoint.set_candidates(candidates);
    // 15 Mbit/s: within the primary's own 20, so the reader can be served
    // exactly, whatever the scaler does.
    let demand = constant(15);
    s.run_paced(
        Duration::from_secs(45),
        Duration::from_millis(10),
        &demand,
        |_, _| {},
    );
    let scaled = &s.primary().scaled;
    let adds = scaled.iter().filter(|d| d.2).count();
    let removes = scaled.iter().filter(|d| !d.2).count();
    assert!(adds >= 6, "the policy flapped: {scaled:?}");
    assert_eq!(adds, removes, "{scaled:?}");
    assert_eq!(s.client().corrupt, 0);
    assert_eq!(read(&s), demand(Duration::from_secs(45)));
    assert!(s.primary().dead.is_empty(), "{:?}", s.primary().dead);
    assert_eq!(live_paths(&mut s), vec![PathId::PRIMARY]);
    assert_eq!(s.primary_node().endpoint.scaled_paths(), 0);
}

/// Attack: the client closes its session while the scaler holds paths,
/// one of them possibly still joining. Expected: once the session has
/// drained, the endpoint counts no scaled path (the count is what bounds
/// every other session's scaling).
#[test]
fn a_session_closed_while_holding_scaled_paths_releases_them() {
    let mut s = scaling_setup(4, scripted(|| Script::Greedy), 32, vec![]);
    let candidates = pool(&s, 1..4);
    s.primary_node().endpoint.set_candidates(candidates);
    let mut closed = false;
    s.run_paced(
        Duration::from_secs(20),
        Duration::from_millis(10),
        constant(80),
        |s, _| {
            // Close right after the second add (its path is joining).
            if !closed && s.primary().scaled.iter().filter(|d| d.2).count() >= 2 {
                closed = true;
                let client = s.client_node();
                let h = client.app.session.unwrap();
                client
                    .endpoint
                    .session(h)
                    .unwrap()
                    .close(0, b"bye")
                    .unwrap();
                let id = s.client;
                s.sim.touch(id);
            }
        },
    );
    assert!(
        closed,
        "the scaler added two paths: {:?}",
        s.primary().scaled
    );
    s.sim.run_for(Duration::from_secs(60));
    let ep = &mut s.primary_node().endpoint;
    assert_eq!(ep.sessions().count(), 0, "the session drained");
    assert_eq!(ep.scaled_paths(), 0);
}

/// Attack: the operator's candidate list names the primary itself (a DNS
/// SRV answer for the service usually lists every server, this one
/// included; `kwik serve --autoscale --discover` passes it through
/// unfiltered). The client's policy allows that address.
///
/// Expected: the primary never dials itself as a secondary of its own
/// session — it knows its own address (the client's primary path goes
/// there) — and takes the real secondary instead.
///
/// Defect (if this fails): `free_candidate` only skips addresses of the
/// session's secondary paths; the primary connection's own server address
/// is not excluded, so the scaler mints a token and sends an AddPath
/// naming the primary, and the candidate only rests after the attempt
/// fails (and is tried again every `candidate_backoff`). Observed: the
/// client refuses it ("a path to 10.0.0.1:4433 exists already"), both
/// applications see a `PathFailed`, and the real secondary is only added
/// one `add_after` (5 s) later, since the failed decision restarted the
/// policy's clock. Suggested fix: `free_candidate` (or `set_candidates`)
/// skips the addresses of the session's primary connection / the
/// endpoint's local addresses; `kwik serve --autoscale` filters its own
/// listen address out of the discovered list.
#[test]
fn the_primary_itself_is_never_taken_from_the_candidates() {
    let own = addr(1);
    let mut s = scaling_setup(2, quick(), 33, vec![own]);
    assert_eq!(s.servers[0], own);
    let mut candidates = vec![Candidate::new(own, SERVER_NAME)];
    candidates.extend(pool(&s, 1..2).into_iter().map(|c| c.with_preference(1, 0)));
    s.primary_node().endpoint.set_candidates(candidates);
    let demand = constant(30);
    s.run_paced(
        Duration::from_secs(30),
        Duration::from_millis(10),
        &demand,
        |_, _| {},
    );
    let primary = s.primary();
    let to_self: Vec<_> = primary
        .scaled
        .iter()
        .filter(|(_, p, added)| *added && primary.path_addrs.get(p) == Some(&own))
        .collect();
    assert!(
        to_self.is_empty(),
        "the primary added itself as a secondary: {to_self:?}; all decisions {:?}",
        primary.scaled
    );
    assert_eq!(s.client().corrupt, 0);
    assert!(s.client().closed.is_none(), "{:?}", s.client().closed);
}

/// Attack: a client that refuses every AddPath (its path policy allows no
/// secondary) under a demand that keeps utilisation high. Expected: each
/// candidate is tried at most once per `candidate_backoff` (30 s by
/// default), so the primary does not mint a token and dial every second.
#[test]
fn a_client_refusing_every_path_is_not_asked_faster_than_the_backoff() {
    let links = vec![ServerLink::new(20, 40); 4];
    let mut options = MultiOptions::new(34, links, 1 << 30);
    options.stream_window = 4 << 20;
    options.tune_client = Box::new(|c| {
        c.path_policy.allow.clear();
    });
    options.tune_server = Box::new(|i, cfg| {
        if i == 0 {
            cfg.autoscale = Some(quick());
            cfg.path_retry = None;
        }
    });
    let mut s = MultiSetup::new(options, |p| {
        p.start = Start::Immediately;
        p.add_no_paths();
    });
    let candidates = pool(&s, 1..4);
    s.primary_node().endpoint.set_candidates(candidates);
    s.run_paced(
        Duration::from_secs(70),
        Duration::from_millis(10),
        constant(60),
        |_, _| {},
    );
    let adds: Vec<_> = s.primary().scaled.iter().filter(|d| d.2).collect();
    // 3 candidates, each at most at t≈0+, 30+, 60+ s.
    assert!(!adds.is_empty());
    assert!(adds.len() <= 9, "{} adds: {adds:?}", adds.len());
    assert!(s.primary().closed.is_none());
    assert_eq!(s.client().corrupt, 0);
}

/// Attack: thousands of candidates, most of them duplicates with other
/// preferences. Expected: at most 1024 kept, one per address, the most
/// preferred entry of each address kept, in preference order.
#[test]
fn thousands_of_duplicate_candidates_are_bounded_and_deduplicated() {
    let cert = dev_cert(35);
    let (_, server_cfg) = configs(&cert);
    let mut ep = endpoint(35, Some(server_cfg), Instant::now());
    let mut list = Vec::new();
    for round in 0..4u16 {
        for i in 0..2000u32 {
            let a: SocketAddr = format!("10.{}.{}.1:443", i / 256, i % 256).parse().unwrap();
            list.push(Candidate::new(a, SERVER_NAME).with_preference(10 - round, round));
        }
    }
    ep.set_candidates(list);
    let kept = ep.candidates();
    assert_eq!(kept.len(), 1024);
    let mut addrs: Vec<_> = kept.iter().map(|c| c.address).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 1024, "one entry per address");
    // The best duplicate (priority 7) of each address survives.
    assert!(kept.iter().all(|c| c.priority == 7), "{:?}", &kept[..3]);
    // An empty list empties the pool (and scaling just stops adding).
    ep.set_candidates(Vec::new());
    assert!(ep.candidates().is_empty());
}

/// Same seed, same scaling decisions at the same virtual instants.
#[test]
fn scaling_decisions_are_deterministic() {
    let run = || {
        let mut s = scaling_setup(4, quick(), 36, vec![]);
        let start = s.sim.now();
        let candidates = pool(&s, 1..4);
        s.primary_node().endpoint.set_candidates(candidates);
        s.run_paced(
            Duration::from_secs(30),
            Duration::from_millis(10),
            |t| {
                let t = t.as_secs_f64();
                ((t.min(20.0) * 50.0 + (t - 20.0).max(0.0) * 2.0) * MBIT as f64) as u64
            },
            |_, _| {},
        );
        s.primary()
            .scaled
            .iter()
            .map(|(at, p, a)| (at.duration_since(start), *p, *a))
            .collect::<Vec<_>>()
    };
    let first = run();
    assert!(!first.is_empty());
    assert_eq!(first, run());
}

/// Attack: replacing the candidates while scaled paths are live (the
/// discovery source no longer lists them). Expected: the paths are not
/// affected, and once idle they are still removed and released.
#[test]
fn candidates_replaced_while_scaled_paths_live_are_still_released() {
    let mut s = scaling_setup(4, quick(), 37, vec![]);
    let candidates = pool(&s, 1..4);
    s.primary_node().endpoint.set_candidates(candidates);
    let mut replaced = false;
    let phases = |t: Duration| {
        let t = t.as_secs_f64();
        ((t.min(25.0) * 50.0 + (t - 25.0).max(0.0) * 1.0) * MBIT as f64) as u64
    };
    s.run_paced(
        Duration::from_secs(60),
        Duration::from_millis(10),
        phases,
        |s, t| {
            if !replaced && t >= Duration::from_secs(20) {
                replaced = true;
                s.primary_node().endpoint.set_candidates(Vec::new());
            }
        },
    );
    let scaled = &s.primary().scaled;
    assert!(scaled.iter().any(|d| d.2), "{scaled:?}");
    assert!(scaled.iter().any(|d| !d.2), "{scaled:?}");
    assert_eq!(s.client().corrupt, 0);
    assert_eq!(live_paths(&mut s), vec![PathId::PRIMARY]);
    assert_eq!(s.primary_node().endpoint.scaled_paths(), 0);
}

// ---------------------------------------------------------------------
// Stream priorities
// ---------------------------------------------------------------------

/// A client and a server on a 20 Mbit/s, 40 ms link; the server lets the
/// client open `max_lanes` lanes.
fn pair(seed: u64, max_lanes: u32) -> StreamPair {
    let link = LinkConfig::new()
        .rate_mbps(20)
        .latency(Duration::from_millis(20));
    StreamPair::new(seed, link, |_, server| {
        server.transport.max_lanes = max_lanes
    })
}

/// Writes 1 KiB on each of three open (unfinished) streams of the given
/// priorities, the server allowing two lanes; whether the third stream's
/// kilobyte is read within 10 s.
fn third_stream_gets_through(priorities: [i32; 3]) -> (Result<u64, WriteError>, u64) {
    let mut p = pair(41, 2);
    let ids: Vec<StreamId> = priorities.iter().map(|&pr| p.open(Some(pr))).collect();
    for id in &ids[..2] {
        assert_eq!(p.try_write(*id, 0, 1024), Ok(1024));
    }
    p.sim.run_for(Duration::from_secs(1));
    let mut third = p.try_write(ids[2], 0, 1024);
    for _ in 0..10 {
        if third == Ok(1024) {
            break;
        }
        p.sim.run_for(Duration::from_secs(1));
        third = p.try_write(ids[2], 0, 1024);
    }
    p.sim.run_for(Duration::from_secs(2));
    assert_eq!(p.corrupt(), 0);
    (third, p.read(ids[2]))
}

/// Attack: more distinct priorities than the peer allows lanes, every
/// stream open (a long-lived request or subscription per priority).
///
/// Expected: as with equal priorities (where the third stream crowds a
/// lane), the third stream's data gets through — priorities are "a
/// sender-side hint: the bytes delivered are the same whatever it is"
/// (`StreamView::set_priority`, PROTOCOL.md §14).
///
/// Defect: `Lanes::assign` never puts a stream on a lane of another
/// priority unless that lane has no user at all (`Fallback::Retune`), so
/// with the lanes held by open streams of other priorities it answers
/// `Fallback::Wait` — for as long as those streams stay open, i.e. forever
/// for an application that finishes them only after the third stream's
/// answer. Merely setting distinct priorities turns a working program into
/// a deadlock. Suggested fix: when no lane of the priority can be had,
/// crowd onto the lane of the nearest priority (a bounded inversion) rather
/// than wait, or document the deadlock and report it (an error instead of
/// `Blocked`, which promises a later wake-up).
#[test]
fn more_priorities_than_lanes_does_not_block_a_stream_forever() {
    // Control: equal priorities share the two lanes.
    let (third, read) = third_stream_gets_through([0, 0, 0]);
    assert_eq!((third, read), (Ok(1024), 1024), "equal priorities");
    let (third, read) = third_stream_gets_through([1, 2, 3]);
    assert_eq!(
        (third, read),
        (Ok(1024), 1024),
        "distinct priorities: the third stream never got a lane"
    );
}

/// Attack: a stream whose priority changes before every write, through
/// hundreds of distinct values, with records left partial in lane tails
/// (a slow link, big writes). Expected: every byte arrives once, in order
/// and intact; the lanes opened stay bounded by the peer's `max_lanes`.
#[test]
fn priority_churn_mid_stream_keeps_data_intact_and_lanes_bounded() {
    let mut p = pair(42, 16);
    let churned = p.open(Some(0));
    let steady = p.open(Some(5));
    let total = 6u64 << 20;
    let (mut at, mut steady_at) = (0u64, 0u64);
    let mut priority = 0i32;
    let mut rounds = 0;
    while (at < total || steady_at < total) && rounds < 20_000 {
        rounds += 1;
        priority = priority.wrapping_mul(31).wrapping_add(7) % 1000 - 500;
        if at < total {
            p.set_priority(churned, priority);
            match p.try_write(churned, at, (at + 96 * 1024).min(total)) {
                Ok(n) => at += n,
                Err(WriteError::Blocked) => {}
                Err(e) => panic!("churned stream: {e:?}"),
            }
        }
        if steady_at < total {
            match p.try_write(steady, steady_at, (steady_at + 64 * 1024).min(total)) {
                Ok(n) => steady_at += n,
                Err(WriteError::Blocked) => {}
                Err(e) => panic!("steady stream: {e:?}"),
            }
        }
        p.sim.run_for(Duration::from_millis(5));
    }
    assert_eq!((at, steady_at), (total, total), "everything written");
    p.sim.run_for(Duration::from_secs(10));
    assert_eq!(p.corrupt(), 0);
    assert_eq!(p.read(churned), total);
    assert_eq!(p.read(steady), total);
    assert!(p.lanes() <= 16, "lanes opened: {}", p.lanes());
}

/// Attack: unequal capacities and a demand just above the primary's
/// `high` threshold: a 20 Mbit/s primary, a 100 Mbit/s candidate, a reader
/// at 17 Mbit/s (85 % of the primary). Adding the fast path drops
/// utilisation far below `low`; the removal must not be judged on
/// capacities that are only what the paced reader let each path show.
///
/// Expected (the policy's own promise: "the two never flap"): one add,
/// and no removal while the demand stays where it is — otherwise the
/// session cycles add → remove → add, each cycle a new token, handshake
/// and QUIC connection to the secondary.
#[test]
fn a_demand_just_above_high_with_a_fast_candidate_does_not_flap() {
    let links = vec![ServerLink::new(20, 40), ServerLink::new(100, 40)];
    let mut options = MultiOptions::new(38, links, 1 << 30);
    options.stream_window = 4 << 20;
    options.tune_server = Box::new(|i, cfg| {
        if i == 0 {
            cfg.autoscale = Some(quick());
            cfg.path_retry = None;
        }
    });
    let mut s = MultiSetup::new(options, |p| {
        p.start = Start::Immediately;
        p.add_no_paths();
    });
    let candidates = pool(&s, 1..2);
    s.primary_node().endpoint.set_candidates(candidates);
    let demand = constant(17);
    s.run_paced(
        Duration::from_secs(120),
        Duration::from_millis(10),
        &demand,
        |_, _| {},
    );
    let scaled = &s.primary().scaled;
    let adds = scaled.iter().filter(|d| d.2).count();
    let removes = scaled.iter().filter(|d| !d.2).count();
    assert_eq!(s.client().corrupt, 0);
    assert!(
        adds == 1 && removes == 0,
        "{adds} adds, {removes} removes under a constant demand: {scaled:?}"
    );
}

/// Attack: flapping while the secondaries carry most of the load (60
/// Mbit/s asked of 20 Mbit/s links), decisions every 300 ms so removals
/// land on paths with ranges in flight. Expected: the ranges a removed
/// path owed are served elsewhere: once the demand stops growing the
/// reader catches up with every byte, intact, nothing reported dead; the
/// endpoint ends holding no scaled path.
#[test]
fn removals_racing_a_heavy_transfer_lose_and_corrupt_nothing() {
    let mut config = scripted(|| Script::Flap { flaps: 60 });
    config.evaluation_interval = Duration::from_millis(300);
    config.sample_interval = Duration::from_millis(50);
    let mut s = scaling_setup(4, config, 39, vec![]);
    let candidates = pool(&s, 1..4);
    s.primary_node().endpoint.set_candidates(candidates);
    let demand = |t: Duration| (t.as_secs_f64().min(20.0) * (60 * MBIT) as f64) as u64;
    s.run_paced(
        Duration::from_secs(90),
        Duration::from_millis(10),
        demand,
        |_, _| {},
    );
    let scaled = &s.primary().scaled;
    assert!(scaled.iter().filter(|d| d.2).count() >= 10, "{scaled:?}");
    assert_eq!(s.client().corrupt, 0);
    assert_eq!(read(&s), demand(Duration::from_secs(90)));
    assert!(s.primary().dead.is_empty(), "{:?}", s.primary().dead);
    assert!(s.client().closed.is_none(), "{:?}", s.client().closed);
    assert_eq!(live_paths(&mut s), vec![PathId::PRIMARY]);
    assert_eq!(s.primary_node().endpoint.scaled_paths(), 0);
}

/// Attack: every lane the peer allows is held by another priority when a
/// stream of a third priority writes, and it then moves to a priority that
/// has a lane.
///
/// Found first (review): such a stream was refused for want of a lane and,
/// after `set_priority`, never told it may write (`reprioritize` woke only
/// streams that left a lane). Now a stream never waits for a lane once one
/// exists (it shares the lane of the nearest priority, a bounded
/// inversion), and a re-prioritised writer that was blocked is woken
/// whether or not it held a lane. Expected: it writes at once, moves, and
/// every byte arrives intact.
#[test]
fn a_stream_without_a_lane_of_its_priority_writes_and_moves() {
    let mut p = pair(43, 2);
    let a = p.open(Some(1));
    let b = p.open(Some(2));
    let c = p.open(Some(3));
    assert_eq!(p.try_write(a, 0, 1024), Ok(1024));
    assert_eq!(p.try_write(b, 0, 1024), Ok(1024));
    p.sim.run_for(Duration::from_secs(1));
    assert_eq!(p.try_write(c, 0, 1024), Ok(1024), "shares the nearest lane");
    p.set_priority(c, 1);
    let client = p.client;
    p.sim.touch(client);
    p.sim.run_for(Duration::from_secs(1));
    assert_eq!(p.try_write(c, 1024, 2048), Ok(1024));
    p.sim.run_for(Duration::from_secs(1));
    assert_eq!(p.read(c), 2048);
    assert_eq!(p.corrupt(), 0);
}

/// Attack: the secondaries the scaler added crash (go silent) in the
/// middle of a heavy transfer. Expected: their paths die, the endpoint
/// stops counting them (at the next evaluation), the dead candidates rest
/// while the remaining one is taken, the ranges they owed are served
/// elsewhere (every byte read, intact), and once the demand falls the
/// endpoint holds no scaled path.
#[test]
fn scaled_secondaries_crashing_mid_transfer_are_released_and_replaced() {
    let mut config = quick();
    config.candidate_backoff = Duration::from_secs(600);
    let mut s = scaling_setup(4, config, 44, vec![]);
    let candidates = pool(&s, 1..4);
    s.primary_node().endpoint.set_candidates(candidates);
    // 30 Mbit/s for 40 s, then 1 Mbit/s.
    let demand = |t: Duration| {
        let t = t.as_secs_f64();
        ((t.min(40.0) * 30.0 + (t - 40.0).max(0.0)) * MBIT as f64) as u64
    };
    let mut crashed: Vec<SocketAddr> = Vec::new();
    let mut peak = 0;
    s.run_paced(
        Duration::from_secs(90),
        Duration::from_millis(10),
        demand,
        |s, t| {
            peak = peak.max(s.primary_node().endpoint.scaled_paths());
            // At 15 s, every secondary the scaler took so far goes down.
            if crashed.is_empty() && t >= Duration::from_secs(15) {
                let p = s.primary();
                let taken: Vec<SocketAddr> = p
                    .scaled
                    .iter()
                    .filter(|d| d.2)
                    .filter_map(|(_, path, _)| p.path_addrs.get(path).copied())
                    .collect();
                for a in &taken {
                    s.sim.set_down(*a, true);
                }
                crashed = taken;
            }
        },
    );
    assert!(!crashed.is_empty(), "a path was added before 15 s");
    let p = s.primary();
    assert!(
        !p.dead.is_empty() || !p.failed.is_empty(),
        "the crash was seen"
    );
    let later: Vec<Option<SocketAddr>> = p
        .scaled
        .iter()
        .filter(|d| d.2 && !crashed.contains(&p.path_addrs[&d.1]))
        .map(|(_, path, _)| p.path_addrs.get(path).copied())
        .collect();
    assert!(
        !later.is_empty(),
        "a live candidate replaced the crashed ones: {:?}",
        p.scaled
    );
    assert!(peak <= 3, "peak {peak}");
    assert_eq!(s.client().corrupt, 0);
    assert_eq!(read(&s), demand(Duration::from_secs(90)));
    assert!(s.client().closed.is_none(), "{:?}", s.client().closed);
    assert_eq!(live_paths(&mut s), vec![PathId::PRIMARY]);
    assert_eq!(s.primary_node().endpoint.scaled_paths(), 0);
}

/// Primary wake-ups over 20 s, starting 60 s after a 48 MiB transfer read
/// as fast as it comes (with `config`, the scaler adds paths during it and
/// removes them once idle).
fn wakeups_after_a_finished_transfer(config: Option<AutoscaleConfig>) -> (u32, usize) {
    let links = vec![ServerLink::new(20, 40); 3];
    let mut options = MultiOptions::new(45, links, 48 << 20);
    options.stream_window = 4 << 20;
    options.tune_server = Box::new(move |i, cfg| {
        if i == 0 {
            cfg.autoscale = config.clone();
            cfg.path_retry = None;
        }
    });
    let mut s = MultiSetup::new(options, |p| {
        p.start = Start::Immediately;
        p.add_no_paths();
    });
    let candidates = pool(&s, 1..3);
    s.primary_node().endpoint.set_candidates(candidates);
    s.run_paced(
        Duration::from_secs(60),
        Duration::from_millis(10),
        |_| u64::MAX,
        |_, _| {},
    );
    assert!(s.primary().complete_at.is_some(), "the transfer completed");
    assert_eq!(live_paths(&mut s), vec![PathId::PRIMARY]);
    let scaled = s.primary().scaled.len();
    let start = s.sim.now();
    let mut wakeups = 0;
    while let Some(d) = s.primary_node().poll_timeout() {
        if d.duration_since(start) > Duration::from_secs(20) {
            break;
        }
        s.sim.run_until(d.duration_since(s.sim.start()));
        wakeups += 1;
    }
    assert_eq!(s.primary_node().endpoint.scaled_paths(), 0);
    (wakeups, scaled)
}

/// Attack: a session that scaled up for a transfer, finished it and had
/// its paths removed must go back to costing no scaling timer. Expected:
/// about as many wake-ups as the same session without autoscaling.
#[test]
fn a_session_that_scaled_and_finished_costs_no_scaling_timers_afterwards() {
    let (without, _) = wakeups_after_a_finished_transfer(None);
    let (with, scaled) = wakeups_after_a_finished_transfer(Some(quick()));
    assert!(
        scaled >= 2,
        "the scaler added and removed a path ({scaled} decisions)"
    );
    assert!(
        with <= without + 2,
        "{with} wake-ups with autoscale, {without} without"
    );
}

/// The primary serves two 16 MiB resources from itself and one secondary
/// (50 Mbit/s each): stream `first` at priority 0, read as it comes, and
/// stream `second` at `second_priority`, whose reader stalls (never reads).
/// Returns when the client had `first` whole (`None`: not within 60 s).
fn low_behind_a_stalled_high(second_priority: i32) -> Option<Duration> {
    const SERVED: u64 = 16 << 20;
    let links = vec![ServerLink::new(50, 20), ServerLink::new(50, 20)];
    let mut s = MultiSetup::new(MultiOptions::new(46, links, SERVED), |p| {
        p.start = Start::Manual
    });
    let second = StreamId::new(Side::Server, Dir::Uni, 1);
    s.client_node().app.paused_streams.insert(second);
    let other = Arc::new(PayloadResource::new(Payload::new(46), second, SERVED));
    s.sim
        .node_mut::<KwikNode<SecondaryApp>>(s.secondaries[0])
        .endpoint
        .serve_resource(Bytes::from_static(b"resource-2"), other.clone());
    s.run_until_primary(Duration::from_secs(10), |p| !p.added.is_empty());
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let first_resource = Arc::new(PayloadResource::new(
        Payload::new(46),
        first_server_stream(),
        SERVED,
    ));
    let mut view = node.endpoint.session(h).unwrap();
    let first = view.open(Dir::Uni).unwrap();
    let opened = view.open(Dir::Uni).unwrap();
    assert_eq!((first, opened), (first_server_stream(), second));
    view.stream(second)
        .unwrap()
        .set_priority(second_priority)
        .unwrap();
    let mut config = TransferConfig::default();
    config.min_chunk = 256 << 10;
    view.serve(
        first,
        first_resource,
        Bytes::from_static(DESCRIPTOR),
        config.clone(),
    )
    .expect("serve");
    view.serve(second, other, Bytes::from_static(b"resource-2"), config)
        .expect("serve");
    s.sim.touch(s.primary);
    let start = s.sim.elapsed();
    let done = s
        .sim
        .run_while(Duration::from_secs(60), |sim| {
            !sim.node::<KwikNode<MultiClient>>(s.client)
                .app
                .finished
                .contains(&first)
        })
        .ok()
        .map(|at| at - start);
    assert_eq!(s.client().corrupt, 0);
    done
}

/// Attack: a higher-priority served stream whose reader stalls (a paused
/// video, a consumer that crashed without closing) next to a lower one
/// read as fast as it comes.
///
/// Expected: the lower stream completes in about the time it takes alone:
/// priority decides who goes first among streams that *can* move; the
/// lanes already promise "a slow reader of one logical stream can never
/// hold up another" (lanes.rs), and a QUIC stream blocked by flow control
/// does not hold back lower-priority streams.
///
/// Suspected defect (if this fails): the multi-source scheduler gives a
/// transfer only what higher-priority transfers leave of each path's
/// budget, measured as the bytes they *owe* (assigned, not acknowledged);
/// a stalled high-priority transfer owes its assignments forever (they are
/// beyond the client's credit), so it holds every path's budget and the
/// lower transfer gets nothing new anywhere. Suggested fix: count against
/// the budget only what a higher transfer owes within its stream credit
/// (or exclude credit-blocked transfers from `above`).
#[test]
fn a_stalled_high_priority_reader_does_not_starve_a_lower_transfer() {
    let equal = low_behind_a_stalled_high(0).expect("equal priorities: the free stream completes");
    let high = low_behind_a_stalled_high(5);
    assert!(
        high.is_some_and(|h| h.as_secs_f64() < 3.0 * equal.as_secs_f64().max(1.0)),
        "the priority-0 stream took {high:?} behind a stalled priority-5 stream, \
         {equal:?} behind a stalled priority-0 one (None: not done in 60 s)"
    );
}

/// Attack: an operator's configuration with zero intervals (e.g. parsed
/// from "0ms"). `AutoscaleConfig` has no validation and the public fields
/// take any `Duration`.
///
/// Expected: a zero interval is rejected or clamped (say to a millisecond
/// or to the sample interval); the endpoint keeps working and time keeps
/// moving.
///
/// Defect (if this fails with "livelock"): `Session::autoscale` sets
/// `next_sample = now + sample_interval` (= now), `Scaler::deadline` hands
/// that instant to the session's deadline, and the endpoint's
/// `handle_timeout` drives the session again at the same instant, forever:
/// in a real runtime, a busy loop at 100 % CPU as soon as one session is
/// served. Suggested fix: validate `AutoscaleConfig` when the
/// `ServerConfig` is installed (or clamp both intervals to a floor).
#[test]
fn zero_scaling_intervals_do_not_livelock_the_endpoint() {
    let mut config = quick();
    config.sample_interval = Duration::ZERO;
    config.evaluation_interval = Duration::ZERO;
    let mut s = scaling_setup(3, config, 47, vec![]);
    let candidates = pool(&s, 1..3);
    s.primary_node().endpoint.set_candidates(candidates);
    let demand = constant(10);
    s.run_paced(
        Duration::from_secs(5),
        Duration::from_millis(10),
        &demand,
        |_, _| {},
    );
    assert_eq!(s.client().corrupt, 0);
    assert_eq!(read(&s), demand(Duration::from_secs(5)));
}

/// Adds a greedy client (reads everything as it comes) at `addr(100 + n)`
/// to `s`, dialling the primary, allowed to join every secondary.
fn add_greedy_client(s: &mut MultiSetup, seed: u64, n: u8) -> NodeId {
    let me = addr(100 + n);
    for server in s.servers.clone() {
        s.sim.set_path(me, server, ServerLink::new(20, 40).config());
    }
    let (mut cfg, _) = configs(&dev_cert(seed));
    cfg.transport.stream_window = 4 << 20;
    cfg.transport.send_window = 32 << 20;
    cfg.transport.max_frame_payload = 256 << 10;
    cfg.path_policy =
        kwik_core::PathPolicy::allow(s.servers[1..].iter().map(|a| PathTarget::Address(*a)));
    let mut ep_cfg = kwik_core::EndpointConfig::new([0xc0 + n; 32]);
    ep_cfg.unix_time = Duration::from_secs(1_800_000_000);
    let now = s.sim.now();
    s.sim.add_node(
        &[me],
        Box::new(KwikNode::new(
            me,
            KwikEndpoint::new(ep_cfg, None, now),
            MultiClient::new(s.servers[0], cfg, Payload::new(seed)),
        )),
    )
}

/// Live secondary paths of every session of the primary.
fn live_secondaries(s: &mut MultiSetup) -> usize {
    let ep = &mut s.primary_node().endpoint;
    let handles: Vec<SessionHandle> = ep.sessions().collect();
    handles
        .into_iter()
        .map(|h| {
            ep.session(h).map_or(0, |mut v| {
                v.paths(PathFilter::Live)
                    .iter()
                    .filter(|p| p.id != PathId::PRIMARY)
                    .count()
            })
        })
        .sum()
}

/// Attack: a crowd of demanding clients at once (four sessions, each
/// reading far more than its primary path carries). Expected: the scaler
/// never holds more than `max_endpoint_paths` across them (counted by the
/// endpoint and by the sessions' live paths); a slot freed by a session
/// that closes is taken by another; and once every client has closed the
/// endpoint counts no scaled path.
#[test]
fn a_crowd_of_sessions_stays_within_the_endpoint_maximum_and_releases_all() {
    let config = AutoscaleConfig {
        max_endpoint_paths: 2,
        ..quick()
    };
    let seed = 48;
    let mut s = scaling_setup(4, config, seed, vec![]);
    let candidates = pool(&s, 1..4);
    s.primary_node().endpoint.set_candidates(candidates);
    let crowd: Vec<NodeId> = (1..4).map(|n| add_greedy_client(&mut s, seed, n)).collect();
    let (mut peak_count, mut peak_live) = (0, 0);
    let mut closed_one = false;
    let mut after_close = 0;
    s.run_paced(
        Duration::from_secs(60),
        Duration::from_millis(10),
        constant(60),
        |s, t| {
            let count = s.primary_node().endpoint.scaled_paths();
            peak_count = peak_count.max(count);
            peak_live = peak_live.max(live_secondaries(s));
            // At 30 s, the first greedy client goes away.
            if !closed_one && t >= Duration::from_secs(30) {
                closed_one = true;
                let node = s.sim.node_mut::<KwikNode<MultiClient>>(crowd[0]);
                let h = node.app.session.expect("connected");
                node.endpoint.session(h).unwrap().close(0, b"bye").unwrap();
                s.sim.touch(crowd[0]);
            }
            if closed_one && t >= Duration::from_secs(45) {
                after_close = after_close.max(count);
            }
        },
    );
    let sessions = s.primary_node().endpoint.sessions().count();
    assert!(sessions >= 3, "the crowd connected: {sessions} sessions");
    assert_eq!(peak_count, 2, "the endpoint's count reached its maximum");
    assert!(peak_live <= 2, "{peak_live} live scaled paths at once");
    assert_eq!(after_close, 2, "a freed slot is taken again");
    // Everyone leaves.
    let mut clients = crowd.clone();
    clients.push(s.client);
    for c in clients {
        let node = s.sim.node_mut::<KwikNode<MultiClient>>(c);
        if let Some(h) = node.app.session
            && let Some(mut v) = node.endpoint.session(h)
        {
            let _ = v.close(0, b"bye");
        }
        s.sim.touch(c);
    }
    s.sim.run_for(Duration::from_secs(60));
    let ep = &mut s.primary_node().endpoint;
    assert_eq!(ep.sessions().count(), 0);
    assert_eq!(ep.scaled_paths(), 0);
}

/// Attack: two served transfers of different priorities (5 and 0) over
/// the primary and two secondaries; one secondary crashes while both
/// transfers have ranges on it. Expected: its ranges, of either priority,
/// are re-assigned (lost ranges go out "whatever the budgets"), both
/// streams complete intact, the higher-priority one first.
#[test]
fn priorities_with_a_secondary_crashing_lose_no_range() {
    const SERVED: u64 = 16 << 20;
    let links = vec![ServerLink::new(50, 20); 3];
    let mut s = MultiSetup::new(MultiOptions::new(49, links, SERVED), |p| {
        p.start = Start::Manual
    });
    let second = StreamId::new(Side::Server, Dir::Uni, 1);
    let other = Arc::new(PayloadResource::new(Payload::new(49), second, SERVED));
    for sec in s.secondaries.clone() {
        s.sim
            .node_mut::<KwikNode<SecondaryApp>>(sec)
            .endpoint
            .serve_resource(Bytes::from_static(b"resource-2"), other.clone());
    }
    s.run_until_primary(Duration::from_secs(10), |p| p.added.len() == 2);
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let first_resource = Arc::new(PayloadResource::new(
        Payload::new(49),
        first_server_stream(),
        SERVED,
    ));
    let mut view = node.endpoint.session(h).unwrap();
    let first = view.open(Dir::Uni).unwrap();
    let opened = view.open(Dir::Uni).unwrap();
    assert_eq!((first, opened), (first_server_stream(), second));
    view.stream(second).unwrap().set_priority(5).unwrap();
    let mut config = TransferConfig::default();
    config.min_chunk = 256 << 10;
    view.serve(
        first,
        first_resource,
        Bytes::from_static(DESCRIPTOR),
        config.clone(),
    )
    .expect("serve");
    view.serve(second, other, Bytes::from_static(b"resource-2"), config)
        .expect("serve");
    s.sim.touch(s.primary);
    s.sim.run_for(Duration::from_millis(700));
    let down = s.servers[1];
    s.sim.set_down(down, true);
    let start = s.sim.elapsed();
    let mut done: [Option<Duration>; 2] = [None; 2];
    let client = s.client;
    for _ in 0..2 {
        let at = s
            .sim
            .run_while(Duration::from_secs(90), |sim| {
                let c = &sim.node::<KwikNode<MultiClient>>(client).app;
                [first, second]
                    .iter()
                    .zip(done)
                    .all(|(id, d)| d.is_some() || !c.finished.contains(id))
            })
            .unwrap_or_else(|_| {
                panic!(
                    "both streams end within 90 s; read {:?}, finished {:?}",
                    s.client().read,
                    s.client().finished
                )
            });
        for (i, id) in [first, second].iter().enumerate() {
            if done[i].is_none() && s.client().finished.contains(id) {
                done[i] = Some(at - start);
            }
        }
    }
    let c = s.client();
    assert_eq!(c.corrupt, 0);
    assert_eq!(c.read.get(&first).copied(), Some(SERVED));
    assert_eq!(c.read.get(&second).copied(), Some(SERVED));
    assert!(done[1] <= done[0], "priority 5 first: {done:?}");
    assert!(c.closed.is_none(), "{:?}", c.closed);
}

/// Feeds `policy` one evaluation a second at `utilisation` for `secs`
/// seconds, a free candidate always available; the decisions.
fn feed(policy: &mut UtilisationPolicy, utilisation: f64, secs: u64) -> Vec<ScalingDecision> {
    use kwik_core::PathHealth;
    use kwik_core::scaling::ScalingPath;
    let start = Instant::now();
    let paths = [ScalingPath {
        id: PathId::PRIMARY,
        primary: true,
        autoscaled: false,
        rate: 1e6,
        capacity: 2e6,
        health: PathHealth::Excellent,
    }];
    (1..=secs)
        .map(|s| {
            policy.evaluate(&ScalingInput {
                now: start + Duration::from_secs(s),
                utilisation,
                rate: 1e6,
                paths: &paths,
                can_add: true,
                joining: false,
            })
        })
        .collect()
}

/// Attack: `UtilisationPolicy::add_after` at zero ("add as soon as
/// utilisation is high"). Its doc: "How long utilisation must stay high:
/// every evaluation in this span." A zero span should mean at once; with
/// the default 5 s, a fully busy session adds after about 5 evaluations.
///
/// Defect: `UtilisationPolicy::window(now, span)` keeps the samples
/// *younger than* `span`: with a zero span it keeps none, `wants_add`
/// requires a non-empty window, so the policy never adds — a silent "off"
/// switch. (`remove_after` at zero likewise: `idle` returns `None` for a
/// zero tenth, so it never removes.) Suggested fix: treat a zero span as
/// "the latest evaluation" (keep samples with age `<= span`), or reject
/// zero in a constructor/validation.
#[test]
fn a_zero_add_after_adds_at_once_rather_than_never() {
    let mut default = UtilisationPolicy::default();
    let decisions = feed(&mut default, 1.0, 10);
    assert!(
        decisions.contains(&ScalingDecision::Add),
        "default policy: {decisions:?}"
    );
    let mut at_once = UtilisationPolicy::default();
    at_once.add_after = Duration::ZERO;
    let decisions = feed(&mut at_once, 1.0, 10);
    assert!(
        decisions.contains(&ScalingDecision::Add),
        "add_after = 0 never adds: {decisions:?}"
    );
}

/// Attack: a client that accepts every AddPath and closes the path as soon
/// as it is live (instead of refusing it, which makes the candidate rest
/// for `candidate_backoff`). Expected: a path the client closed right away
/// is treated like a refused one: its candidate rests, so under a steady
/// high demand the primary asks at most once per candidate per backoff
/// (3 candidates, 60 s, 30 s backoff: at most 9 adds) instead of minting a
/// token and making the client dial a secondary every `add_after`.
///
/// Defect (if this fails): `evaluate_scaling` rests a candidate only when
/// its path ended `Failed` or `Dead`; a `Closed` path frees the candidate
/// at once, and `free_candidate` hands the same server back at the next
/// add.
#[test]
fn a_client_closing_every_scaled_path_is_not_asked_faster_than_the_backoff() {
    let mut s = scaling_setup(4, quick(), 50, vec![]);
    let candidates = pool(&s, 1..4);
    s.primary_node().endpoint.set_candidates(candidates);
    s.run_paced(
        Duration::from_secs(60),
        Duration::from_millis(10),
        constant(60),
        |s, _| {
            let node = s.client_node();
            let Some(h) = node.app.session else { return };
            let Some(mut view) = node.endpoint.session(h) else {
                return;
            };
            let secondaries: Vec<PathId> = view
                .paths(PathFilter::Live)
                .iter()
                .map(|p| p.id)
                .filter(|p| *p != PathId::PRIMARY)
                .collect();
            for p in secondaries {
                let _ = view.remove_path(p);
            }
            let c = s.client;
            s.sim.touch(c);
        },
    );
    let adds: Vec<f64> = s
        .primary()
        .scaled
        .iter()
        .filter(|d| d.2)
        .map(|d| d.0.duration_since(s.sim.start()).as_secs_f64())
        .collect();
    assert!(!adds.is_empty());
    assert!(adds.len() <= 9, "{} adds at {adds:?}", adds.len());
    assert_eq!(s.client().corrupt, 0);
}

/// Attack: a secondary the application added itself (with `path_retry`)
/// is also a scaling candidate, and goes down for a while. Its path dies
/// and the application's retries begin; meanwhile the scaler, seeing the
/// address free (its path is final, and it rests only candidates of *its
/// own* failed paths), takes it.
///
/// Expected: the application's path survives the episode — "only paths the
/// scaler added are ever removed (the application's own paths are the
/// application's)" (scaling.rs), and `path_retry` keeps re-adding it: once
/// the server is back and the demand has fallen (scaled paths removed),
/// a live path to it remains.
///
/// Defect (if this fails): `Session::add_path`, which the scaler calls,
/// first does `self.targets.retain(|t| t.address != address)` — deleting
/// the application's retry target for that address — and the scaler then
/// drops its own target too. The application's path is no longer retried;
/// the server is reached again only as a scaled path, which the scaler
/// later removes as idle. Observed (seed 51): the application's path 1
/// dies at 10.7 s, its retry (path 3) fails at 16 s, the scaler takes the
/// server as path 4 at ~17 s (failing: still down), rests it 30 s, takes
/// it again as path 5 at ~53 s and removes path 5 as idle at 83 s; nothing
/// re-adds the application's path. Suggested fix: the scaler should skip candidates
/// the application targets (`self.targets` addresses), or `add_path` from
/// the scaler should not touch other targets.
#[test]
fn the_scaler_does_not_take_over_an_application_path_being_retried() {
    let links = vec![ServerLink::new(20, 40); 3];
    let mut options = MultiOptions::new(51, links, 1 << 30);
    options.stream_window = 4 << 20;
    options.tune_server = Box::new(|i, cfg| {
        if i == 0 {
            cfg.autoscale = Some(quick());
        }
    });
    let mut s = MultiSetup::new(options, |p| {
        p.start = Start::Immediately;
        p.add_no_paths();
    });
    let app_server = s.servers[1];
    let candidates = pool(&s, 1..3);
    s.primary_node().endpoint.set_candidates(candidates);
    s.run_until_primary(Duration::from_secs(5), |p| p.session.is_some());
    {
        let node = s.primary_node();
        let h = node.app.session.unwrap();
        node.endpoint
            .session(h)
            .unwrap()
            .add_path(app_server, SERVER_NAME)
            .expect("the application's own path");
        let id = s.primary;
        s.sim.touch(id);
    }
    let demand = |t: Duration| {
        let t = t.as_secs_f64();
        ((t.min(50.0) * 60.0 + (t - 50.0).max(0.0)) * MBIT as f64) as u64
    };
    s.run_paced(
        Duration::from_secs(120),
        Duration::from_millis(10),
        demand,
        |s, t| {
            let down = t >= Duration::from_secs(10) && t < Duration::from_secs(30);
            if s.sim.is_down(app_server) != down {
                s.sim.set_down(app_server, down);
            }
        },
    );
    let p = s.primary();
    let scaled_to_app_server: Vec<_> = p
        .scaled
        .iter()
        .filter(|(_, path, _)| p.path_addrs.get(path) == Some(&app_server))
        .cloned()
        .collect();
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let live: Vec<SocketAddr> = node
        .endpoint
        .session(h)
        .unwrap()
        .paths(PathFilter::Live)
        .iter()
        .filter(|p| p.id != PathId::PRIMARY)
        .map(|p| p.address)
        .collect();
    assert!(
        live.contains(&app_server),
        "the application's path to {app_server} is gone: live secondaries {live:?}; \
         scaling decisions on that server {scaled_to_app_server:?}"
    );
}
