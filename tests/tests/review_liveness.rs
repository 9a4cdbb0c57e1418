//! Hostile review of the liveness change (probes past the congestion
//! window, slower probes after `dead_probes`, RACK-like loss detection by
//! default, a secondary queueing a re-delegated range once, hedges not sent
//! to a path that already owes the frontier).
//!
//! Tests marked `#[ignore = "review: ..."]` are findings: they fail on the
//! code they were written against. The others hold and stay as regression
//! guards.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use bytes::Bytes;
use kwik_core::proto::control::Delegate;
use kwik_core::proto::control::control_message::Body;
use kwik_core::{CongestionControl, Dir, LossDetection, Side, StreamId, TransportConfig};
use kwik_sim::Payload;
use kwik_sim::abuse::{
    Arena, DESCRIPTOR as ARENA_DESCRIPTOR, Ends, JOIN_PATH, Outcome as ArenaOutcome, ServerRole,
    StopWhen, TargetServer, genuine_join,
};
use kwik_sim::alloc::CountingAlloc;
use kwik_sim::chaos::{
    ChaosConfig, Fault, FaultKind, LinkSpec, Outcome, RunOptions, RunResult, Scenario, run,
};
use kwik_sim::hostile::{HostileClient, Step};
use kwik_sim::multi::{MultiOptions, MultiSetup, ServerLink, Start};
use kwik_sim::wire::control_records;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn report(r: &RunResult) -> String {
    format!(
        "seed {}: {}\n{}\nreplay with: {}",
        r.scenario.seed,
        r.violations().join("; "),
        r.report(),
        r.scenario.replay
    )
}

// ====================================================================
// Loss detection settings off the config
// ====================================================================

/// One transfer of `size` bytes from a lone primary over a 50 Mbit/s,
/// 40 ms link with `loss`, every endpoint using `tune` on its transport
/// settings. Returns the virtual time to deliver it all, or the panic.
fn transfer_with(
    seed: u64,
    size: u64,
    loss: f64,
    jitter: Duration,
    tune: fn(&mut TransportConfig),
) -> Result<Duration, String> {
    catch_unwind(AssertUnwindSafe(|| {
        let mut mo = MultiOptions::new(seed, vec![ServerLink::new(50, 40)], size);
        mo.congestion = CongestionControl::Cubic;
        mo.tune_client = Box::new(move |c| tune(&mut c.transport));
        mo.tune_server = Box::new(move |_, c| tune(&mut c.transport));
        let mut s = MultiSetup::new(mo, |p| p.start = Start::Immediately);
        let link = ServerLink::new(50, 40).config().loss(loss).jitter(jitter);
        s.sim.set_path(s.client_addr, s.servers[0], link);
        s.run_until_client(Duration::from_secs(120), |c| c.total() == size)
    }))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// **Attack** (local configuration): `LossDetection::time_threshold` set to
/// a large *finite* value (1e30, `f32::MAX`).
///
/// **Found**: such a value went to quinn-proto unchanged, which multiplies
/// the RTT by it (`Duration::mul_f32`) and panicked on overflow. Fixed: the
/// threshold is clamped to `MAX_TIME_THRESHOLD`. NaN, ±inf, 0, negative and
/// `packet_threshold: 0` are
/// handled (see the guard below).
#[test]
fn a_huge_finite_time_threshold_neither_panics_nor_hangs() {
    for (name, tune) in [
        (
            "1e30",
            (|t: &mut TransportConfig| t.loss_detection.time_threshold = 1e30) as fn(&mut _),
        ),
        ("f32::MAX", |t| t.loss_detection.time_threshold = f32::MAX),
        ("1e12", |t| t.loss_detection.time_threshold = 1e12),
    ] {
        let r = transfer_with(7101, 2 * MIB, 0.02, Duration::ZERO, tune);
        assert!(
            r.is_ok(),
            "time_threshold {name}: the transfer must complete (or the config be refused), got \
             {r:?}"
        );
    }
}

/// A change to an endpoint's transport settings.
type Tune = fn(&mut TransportConfig);

/// Guard: degenerate loss-detection values are clamped, not trusted.
#[test]
fn degenerate_loss_detection_values_are_clamped() {
    let cases: [(&str, Tune); 7] = [
        ("NaN", |t| t.loss_detection.time_threshold = f32::NAN),
        ("+inf", |t| t.loss_detection.time_threshold = f32::INFINITY),
        ("-inf", |t| {
            t.loss_detection.time_threshold = f32::NEG_INFINITY
        }),
        ("0", |t| t.loss_detection.time_threshold = 0.0),
        ("-3", |t| t.loss_detection.time_threshold = -3.0),
        ("packet 0", |t| t.loss_detection.packet_threshold = 0),
        ("packet 1", |t| {
            t.loss_detection = LossDetection::RFC9002;
            t.loss_detection.packet_threshold = 1;
        }),
    ];
    for (name, tune) in cases {
        let r = transfer_with(7102, 2 * MIB, 0.02, Duration::ZERO, tune);
        assert!(r.is_ok(), "{name}: {r:?}");
    }
}

// ====================================================================
// Probes past the congestion window
// ====================================================================

/// **Attack**: the primary goes dark (every datagram to and from it
/// dropped) for 20 s in the middle of a transfer whose congestion window
/// is full; nobody ever acknowledges anything. Every kwik probe may leave
/// past the window. Counts what the client sends the primary.
///
/// **Bound** (PROTOCOL.md §10.8): `dead_probes` (12) probes at the probe
/// interval (the 50 ms keep-alive, or RTT/2), then one per probe timeout
/// (`1.5 × RTT + 25 ms` = 85 ms at 40 ms RTT), plus QUIC's own backed-off
/// probe timeouts: under 20 datagrams a second over the outage.
#[test]
fn probes_past_the_window_are_bounded_while_the_primary_is_dark() {
    let size = 256 * MIB;
    let mut mo = MultiOptions::new(7201, vec![ServerLink::new(50, 40)], size);
    mo.tune_client = Box::new(|c| c.transport.idle_timeout = Duration::from_secs(60));
    mo.tune_server = Box::new(|_, c| c.transport.idle_timeout = Duration::from_secs(60));
    let mut s = MultiSetup::new(mo, |p| p.start = Start::Immediately);
    s.run_until_client(Duration::from_secs(30), |c| c.total() >= 4 * MIB);
    let (client, primary) = (s.client_addr, s.servers[0]);
    let before = s.sim.link_stats(client, primary).sent;
    s.sim.set_down(primary, true);
    let outage = Duration::from_secs(20);
    s.sim.run_for(outage);
    let sent = s.sim.link_stats(client, primary).sent - before;
    s.sim.set_down(primary, false);
    let per_s = sent as f64 / outage.as_secs_f64();
    println!("client → dark primary: {sent} datagrams in 20 s ({per_s:.1}/s)");
    assert!(
        per_s <= 20.0,
        "{sent} datagrams in 20 s ({per_s:.1}/s) to a primary that never answers"
    );
    // And the session survives it (outage < idle timeout).
    s.run_until_client(Duration::from_secs(120), |c| {
        c.total() >= 8 * MIB || c.closed.is_some()
    });
    assert!(s.client().closed.is_none(), "{:?}", s.client().closed);
}

/// The same for a secondary path that goes dark until it is declared dead:
/// the probes before the verdict, each one past the window, are bounded by
/// the dead rule (`dead_probes` plus QUIC's probes), not by the outage.
#[test]
fn probes_to_a_dark_secondary_are_bounded_by_the_dead_rule() {
    let size = 256 * MIB;
    let links = vec![ServerLink::new(20, 40), ServerLink::new(100, 20)];
    let mut s = MultiSetup::new(MultiOptions::new(7202, links, size), |_| {});
    s.run_until_client(Duration::from_secs(30), |c| c.total() >= 8 * MIB);
    let (client, sec) = (s.client_addr, s.servers[1]);
    s.sim.set_down(sec, true);
    // What was in flight from the secondary still arrives and is
    // acknowledged; count from 100 ms into the outage.
    s.sim.run_for(Duration::from_millis(100));
    let before = s.sim.link_stats(client, sec).sent;
    let mut marks = Vec::new();
    for _ in 0..20 {
        s.sim.run_for(Duration::from_millis(500));
        marks.push(s.sim.link_stats(client, sec).sent - before);
    }
    let sent = s.sim.link_stats(client, sec).sent - before;
    println!(
        "client → dark secondary: {sent} datagrams in 10 s, cumulative per 500 ms {marks:?}; \
         primary saw dead {:?} failed {:?}",
        s.primary().dead,
        s.primary().failed
    );
    assert!(
        !s.primary().dead.is_empty(),
        "the dark secondary is declared dead"
    );
    assert!(sent <= 40, "{sent} datagrams to a dark secondary");
}

// ====================================================================
// Primary outages
// ====================================================================

fn three_links() -> Vec<LinkSpec> {
    vec![
        LinkSpec::clean(100, 40),
        LinkSpec::clean(50, 60),
        LinkSpec::clean(80, 20),
    ]
}

/// A primary outage of exactly the idle timeout (and just under, and just
/// over): the session either survives with every byte, or ends with a
/// typed error within the idle timeout plus a few seconds; never a hang.
#[test]
fn a_primary_outage_of_exactly_the_idle_timeout_does_not_hang() {
    let idle = ChaosConfig::test().idle_timeout;
    for (i, d) in [
        idle - Duration::from_millis(100),
        idle,
        idle + Duration::from_millis(100),
    ]
    .into_iter()
    .enumerate()
    {
        let mut sc = Scenario::clean(7300 + i as u64, three_links(), 16 * MIB, 2 * MIB);
        sc.faults.push(Fault {
            server: 0,
            kind: FaultKind::Outage(d),
            at_share: 0.3,
        });
        let r = run(&sc, &RunOptions::default());
        println!(
            "outage {:?}: {} ({:?})",
            d,
            r.outcome.name(),
            r.close_reason
        );
        assert!(r.passed(), "outage {d:?}: {}", report(&r));
        assert_ne!(r.outcome, Outcome::Hung, "{}", report(&r));
    }
}

// ====================================================================
// Hedging
// ====================================================================

/// **Attack**: a secondary that is slow but alive (1 Mbit/s, 400 ms RTT)
/// next to a fast primary (100 Mbit/s, 20 ms). Every range it is given is
/// late at the frontier and gets hedged. Duplicate payload on the wire must
/// stay bounded: the client receives at most 1.5× the resource.
#[test]
fn a_slow_but_live_secondary_does_not_cause_endless_hedging() {
    let size = 16 * MIB;
    let links = vec![ServerLink::new(100, 20), ServerLink::new(1, 400)];
    let mut s = MultiSetup::new(MultiOptions::new(7401, links, size), |_| {});
    let t = s.run_until_client(Duration::from_secs(120), |c| c.total() == size);
    let from: Vec<u64> = s
        .servers
        .iter()
        .map(|a| s.sim.link_stats(*a, s.client_addr).bytes_delivered)
        .collect();
    let total: u64 = from.iter().sum();
    let ratio = total as f64 / size as f64;
    println!("slow secondary: {t:?}, bytes delivered per server {from:?}, ratio {ratio:.3}");
    assert_eq!(s.client().corrupt, 0);
    assert!(ratio <= 1.5, "client received {ratio:.2}× the resource");
    // And the slow path costs nothing over the primary alone (~1.4 s).
    assert!(t <= Duration::from_secs(4), "{t:?}");
}

/// **Attack**: every live path already owes the frontier (two secondaries
/// and the primary), and the owners go dark one after the other without
/// dying for long (outages shorter than the dead timeout, repeatedly). The
/// hedge has no candidate left; the transfer must still complete.
#[test]
fn hedge_exclusion_does_not_hang_when_every_path_owes_the_frontier() {
    let mut sc = Scenario::clean(
        7402,
        vec![
            LinkSpec::clean(20, 40),
            LinkSpec {
                loss: 0.2,
                ..LinkSpec::clean(100, 30)
            },
            LinkSpec {
                loss: 0.2,
                ..LinkSpec::clean(100, 50)
            },
        ],
        24 * MIB,
        256 * KIB,
    );
    for (server, at) in [(1, 0.2), (2, 0.25), (0, 0.3), (1, 0.5), (2, 0.55)] {
        sc.faults.push(Fault {
            server,
            kind: FaultKind::Outage(Duration::from_millis(120)),
            at_share: at,
        });
    }
    let r = run(&sc, &RunOptions::default());
    assert!(r.passed(), "{}", report(&r));
    assert_eq!(r.outcome, Outcome::Delivered, "{}", report(&r));
}

// ====================================================================
// Loss detection under reordering
// ====================================================================

/// **Attack**: a clean (lossless) 50 Mbit/s, 40 ms link whose jitter
/// (15 ms, uniform) reorders packets by more than the default reordering
/// window (a quarter round trip, 10 ms). Within the chaos sweep's range
/// (jitter up to min(20 ms, RTT/2)).
///
/// **Observed**: 16 MiB (2.7 s at line rate) take 75.2 s with the default
/// `LossDetection` (1.8 Mbit/s, 3.6 % of the link), and RFC 9002's values
/// do not finish within 120 s. The default's fixed `time_threshold` of
/// 1.25 RTT (kwik-core/src/config.rs:70-76, handed to quinn-proto at
/// config.rs:207-213) does not adapt to the reordering it sees (RFC 8985
/// grows its window on spurious retransmissions; quinn-proto 0.11 neither
/// adapts nor undoes the congestion response), so every reordering beyond
/// RTT/4 is a loss and a window cut: the "stops jittery links from
/// collapsing" claim holds only while jitter stays under RTT/4.
#[test]
#[ignore = "review: jitter beyond RTT/4 on a clean link collapses goodput with the default loss detection"]
fn a_clean_link_reordering_past_a_quarter_rtt_keeps_a_quarter_of_its_rate() {
    let size = 16 * MIB;
    let jitter = Duration::from_millis(15);
    let default = transfer_with(7501, size, 0.0, jitter, |_| {});
    println!("jitter 15 ms, clean 50 Mbit/s 40 ms: default {default:?}");
    let t = default.expect("the default completes within 120 s");
    // Line rate: 2.7 s; a quarter of it: 10.7 s.
    assert!(t <= Duration::from_millis(10_700), "{t:?}");
}

/// Guard: on the same link RFC 9002's values are no better than the
/// default (they do not finish in 120 s).
#[test]
fn default_loss_detection_is_not_slower_than_rfc9002_on_a_jittery_clean_link() {
    let size = 4 * MIB;
    let jitter = Duration::from_millis(15);
    let default = transfer_with(7501, size, 0.0, jitter, |_| {});
    let rfc = transfer_with(7501, size, 0.0, jitter, |t| {
        t.loss_detection = LossDetection::RFC9002;
    });
    println!("jitter 15 ms, clean: default {default:?}, RFC 9002 {rfc:?}");
    let default = default.expect("the default completes within 120 s");
    if let Ok(rfc) = rfc {
        assert!(
            default.as_secs_f64() <= rfc.as_secs_f64() * 1.1,
            "default {default:?} vs RFC 9002 {rfc:?}"
        );
    }
}

/// Random loss without reordering: the default (no packet threshold) must
/// not regress much against RFC 9002 where its later loss declaration is
/// all cost and no benefit.
#[test]
fn default_loss_detection_holds_against_rfc9002_on_a_lossy_link_without_jitter() {
    let size = 8 * MIB;
    let default = transfer_with(7502, size, 0.01, Duration::ZERO, |_| {}).expect("default");
    let rfc = transfer_with(7502, size, 0.01, Duration::ZERO, |t| {
        t.loss_detection = LossDetection::RFC9002;
    })
    .expect("rfc9002");
    println!("loss 1 %, no jitter: default {default:?}, RFC 9002 {rfc:?}");
    assert!(
        default.as_secs_f64() <= rfc.as_secs_f64() * 1.25,
        "default {default:?} vs RFC 9002 {rfc:?}"
    );
}

// ====================================================================
// Re-delegation on a secondary
// ====================================================================

fn server_uni(index: u64) -> StreamId {
    StreamId::new(Side::Server, Dir::Uni, index)
}

/// A joined hostile client (standing in for a hostile primary, whose
/// Delegates the client forwards unchanged) sends `delegates` to a kwik
/// secondary that serves [`ARENA_DESCRIPTOR`].
fn redelegation_arena(seed: u64, delegates: Vec<Delegate>) -> Arena {
    let bytes = control_records(delegates.into_iter().map(Body::Delegate));
    let steps = vec![Step::Mark, Step::Control(bytes)];
    let app = TargetServer::new(Payload::new(seed), ServerRole::Passive, false);
    let mut a = Arena::against_server(
        seed,
        app,
        |_| {},
        move |e: &Ends| {
            HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps)
                .join(genuine_join(&e.key, e.target))
        },
    );
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    a
}

fn delegate(id: u64, offset: u64, length: u64, fin: bool, urgent: bool) -> Delegate {
    Delegate {
        path_id: JOIN_PATH.0,
        delegation_id: id,
        stream_id: server_uni(0).0,
        offset,
        length,
        fin,
        urgent,
        descriptor: Bytes::from_static(ARENA_DESCRIPTOR),
        ..Delegate::default()
    }
}

/// **Attack**: the same 1 MiB range (past the client's credit, so it stays
/// queued) delegated 20 000 times, alternating urgent and not, with and
/// without FIN, plus zero-length FIN ranges at its end. A secondary queues
/// it once: the session stays open and its heap does not grow with the
/// number of messages.
#[test]
fn one_range_redelegated_thousands_of_times_stays_one_job() {
    let base = 4 * MIB;
    let mut ds = vec![delegate(0, base, MIB, true, false)];
    for i in 1..20_000u64 {
        let d = match i % 4 {
            0 => delegate(i, base, MIB, true, false),
            1 => delegate(i, base, MIB, false, true),
            2 => delegate(i, base + MIB, 0, true, true),
            _ => delegate(i, base, MIB, true, true),
        };
        ds.push(d);
    }
    let mut a = redelegation_arena(7601, ds);
    let r = a.run_attack(StopWhen {
        growth_above: Some(MIB),
        ..StopWhen::default()
    });
    println!("re-delegation flood: {r}");
    assert!(r.metered);
    assert!(matches!(r.outcome, ArenaOutcome::Open), "{r}");
    assert!(r.peak_growth <= MIB as i64, "{r}");
}

/// Urgent sub-ranges of one queued job split it (urgent part first, rest in
/// line): a flood of them is bounded by `max_delegations` (the session
/// closes with `KWIK_RESOURCE_LIMIT`, it does not grow without bound).
#[test]
fn urgent_splits_of_one_queued_job_are_bounded() {
    let base = 4 * MIB;
    let mut ds = vec![delegate(0, base, 64 * MIB, true, false)];
    for i in 1..20_000u64 {
        ds.push(delegate(i, base + i * 2048, 1024, false, true));
    }
    let mut a = redelegation_arena(7602, ds);
    let r = a.run_attack(StopWhen {
        growth_above: Some(4 * MIB),
        ..StopWhen::default()
    });
    println!("urgent split flood: {r}");
    assert!(r.metered);
    assert!(r.peak_growth <= 4 * MIB as i64, "{r}");
}

// ====================================================================
// Chaos at 30 % loss
// ====================================================================

/// `kwik-bench chaos --seeds 300 --max-loss 0.3`: 277 delivered, 22 primary
/// dead errors, 0 hung, 1 primary-alive failure (seed 85).
///
/// **Observed** (seed 85: primary link 22 % loss, never faulted): the QUIC
/// handshake loses its first flights; the client's handshake probe timeout
/// backs off (an RTT sample of ~1 s from the lossy exchange), so after its
/// datagram at 2.01 s it next sends at 8.36 s (lost) and 20.54 s; the
/// primary, anti-amplification limited after 3 datagrams, drops the
/// unfinished connection at 11.0 s (`ServerConfig::handshake_timeout`,
/// 10 s, kwik-core/src/config.rs:482), and the client, whose datagram at
/// 20.54 s reaches a server that forgot it, waits for its own 30 s idle
/// timeout: the session ends at 38.4 s with 0 bytes read although the
/// primary was reachable throughout. kwik's probes (which now leave past
/// the window) do not run before the handshake completes, and the client
/// has no handshake deadline matched to the server's.
#[test]
#[ignore = "review: a lossy (22 %) primary link loses the session in the handshake (server handshake_timeout vs client PTO backoff)"]
fn chaos_seed_85_at_30_percent_loss_keeps_its_session() {
    let sc = Scenario::generate(85, &ChaosConfig::bench(0.3));
    let r = run(&sc, &RunOptions::default());
    println!("{}", sc.summary());
    assert!(r.passed(), "{}", report(&r));
}
