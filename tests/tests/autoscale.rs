//! Automatic scaling in the simulator: a primary adds paths from its
//! candidate pool when the client's demand outgrows the live paths, removes
//! them once idle, keeps within its maxima, never touches the
//! application's own paths, and rests a candidate that failed.
//!
//! The client application reads at a pace (`MultiSetup::run_paced`): the
//! demand. Links are 20 Mbit/s each, so demand above 20 needs a secondary.

use std::time::{Duration, Instant};

use kwik_core::scaling::{AutoscaleConfig, UtilisationPolicy};
use kwik_core::{Candidate, Event, PathFilter, PathId, PathTarget};
use kwik_sim::multi::{MultiOptions, MultiSetup, ServerLink, Start, first_server_stream};
use kwik_sim::setup::{SERVER_NAME, addr};

const MBIT: u64 = 1_000_000 / 8;

/// Demand phases: (until second, Mbit/s).
type Phases = &'static [(u64, u64)];

fn demanded(phases: Phases, t: Duration) -> u64 {
    let t = t.as_secs_f64();
    let mut bytes = 0.0;
    let mut from = 0.0;
    for (until, mbit) in phases {
        let until = *until as f64;
        bytes += (t.min(until) - from).max(0.0) * (*mbit * MBIT) as f64;
        from = until;
    }
    bytes as u64
}

/// A policy that waits 10 s of idleness instead of 60 (the add side keeps
/// its default 5 s).
fn quick_config() -> AutoscaleConfig {
    AutoscaleConfig {
        policy: std::sync::Arc::new(|| {
            let mut p = UtilisationPolicy::default();
            p.remove_after = Duration::from_secs(10);
            Box::new(p)
        }),
        ..AutoscaleConfig::default()
    }
}

struct Run {
    s: MultiSetup,
    start: Instant,
}

/// A session whose primary adds no path itself (unless `app_paths`), with
/// autoscaling per `config` and the secondaries `1..servers` as candidates.
fn setup(servers: usize, config: AutoscaleConfig, app_paths: bool, seed: u64) -> Run {
    setup_allowing(servers, config, app_paths, seed, None)
}

/// [`setup`], with the client also allowing a path to `extra`.
fn setup_allowing(
    servers: usize,
    config: AutoscaleConfig,
    app_paths: bool,
    seed: u64,
    extra: Option<std::net::SocketAddr>,
) -> Run {
    let links = vec![ServerLink::new(20, 40); servers];
    let mut options = MultiOptions::new(seed, links, 1 << 30);
    options.stream_window = 4 << 20;
    options.tune_client = Box::new(move |c| {
        c.path_policy.allow.extend(extra.map(PathTarget::Address));
    });
    options.tune_server = Box::new(move |i, cfg| {
        if i == 0 {
            cfg.autoscale = Some(config.clone());
            cfg.path_retry = None;
        }
    });
    let s = MultiSetup::new(options, |p| {
        p.start = Start::Immediately;
        if !app_paths {
            p.add_no_paths();
        }
    });
    let start = s.sim.now();
    Run { s, start }
}

impl Run {
    fn candidates(&mut self, candidates: Vec<Candidate>) {
        self.s.primary_node().endpoint.set_candidates(candidates);
    }

    fn pace(&mut self, phases: Phases) {
        let until = Duration::from_secs(phases.last().unwrap().0);
        self.s.run_paced(
            until,
            Duration::from_millis(10),
            |t| demanded(phases, t),
            |_, _| {},
        );
    }

    /// Scaling decisions: (seconds since the start, path, added).
    fn decisions(&self) -> Vec<(f64, PathId, bool)> {
        self.s
            .primary()
            .scaled
            .iter()
            .map(|(at, p, a)| (at.duration_since(self.start).as_secs_f64(), *p, *a))
            .collect()
    }

    fn live_paths(&mut self) -> Vec<PathId> {
        let primary = self.s.primary_node();
        let h = primary.app.session.unwrap();
        let mut view = primary.endpoint.session(h).unwrap();
        view.paths(PathFilter::Live).iter().map(|p| p.id).collect()
    }

    fn read(&self) -> u64 {
        self.s
            .client()
            .read
            .get(&first_server_stream())
            .copied()
            .unwrap_or(0)
    }
}

fn candidates_of(run: &Run, range: std::ops::Range<usize>) -> Vec<Candidate> {
    run.s.servers[range]
        .iter()
        .map(|a| Candidate::new(*a, SERVER_NAME))
        .collect()
}

#[test]
fn demand_beyond_the_primary_adds_paths_and_idle_ones_are_removed() {
    const PHASES: Phases = &[(5, 5), (45, 50), (70, 2)];
    let mut run = setup(4, quick_config(), false, 11);
    let pool = candidates_of(&run, 1..4);
    run.candidates(pool);
    run.pace(PHASES);

    let decisions = run.decisions();
    let adds: Vec<f64> = decisions.iter().filter(|d| d.2).map(|d| d.0).collect();
    let removes: Vec<f64> = decisions.iter().filter(|d| !d.2).map(|d| d.0).collect();
    // Nothing while the primary alone meets 5 Mbit/s; the first add within
    // 10 s of the rise; at most the three candidates.
    assert!(!adds.is_empty(), "{decisions:?}");
    assert!(adds[0] > 5.0 && adds[0] <= 15.0, "{decisions:?}");
    assert!(adds.len() <= 3);
    // Every removal after the fall (the reader caught up well before), the
    // first within the idle span and a few evaluations; no add after it.
    assert!(!removes.is_empty(), "{decisions:?}");
    assert!(removes.iter().all(|t| *t > 45.0), "{decisions:?}");
    assert!(removes[0] <= 45.0 + 10.0 + 3.0, "{decisions:?}");
    assert!(adds.iter().all(|t| *t < 45.0), "{decisions:?}");
    // The added paths joined on the client, and the removed ones closed.
    let client_log = &run.s.client().log;
    let joined = client_log
        .iter()
        .filter(|(_, e)| matches!(e, Event::PathAdded { .. }))
        .count();
    assert_eq!(joined, adds.len());
    assert_eq!(run.s.primary().closed_paths.len(), removes.len());
    assert_eq!(run.live_paths(), vec![PathId::PRIMARY]);
    // The reader got every byte it asked for, intact.
    assert_eq!(run.s.client().corrupt, 0);
    assert_eq!(run.read(), demanded(PHASES, Duration::from_secs(70)));
    assert!(run.s.primary().dead.is_empty());
    // The endpoint holds no scaled path any more.
    assert_eq!(run.s.primary_node().endpoint.scaled_paths(), 0);
}

#[test]
fn the_session_and_endpoint_maxima_hold_however_high_the_demand() {
    for (max_paths, max_endpoint_paths) in [(1, 256), (4, 1)] {
        let config = AutoscaleConfig {
            max_paths,
            max_endpoint_paths,
            ..quick_config()
        };
        let mut run = setup(4, config, false, 12);
        let pool = candidates_of(&run, 1..4);
        run.candidates(pool);
        run.pace(&[(30, 200)]);
        let adds = run.decisions().iter().filter(|d| d.2).count();
        assert_eq!(
            adds, 1,
            "max_paths {max_paths}, endpoint {max_endpoint_paths}"
        );
        assert_eq!(run.live_paths().len(), 2);
        assert_eq!(run.s.primary_node().endpoint.scaled_paths(), 1);
    }
}

#[test]
fn paths_the_application_added_are_never_removed() {
    // Both secondaries are the application's (and in the pool too).
    let mut run = setup(3, quick_config(), true, 13);
    let pool = candidates_of(&run, 1..3);
    run.candidates(pool);
    // Idle (1 Mbit/s) for long enough that the scaler would act.
    run.pace(&[(30, 1)]);
    assert!(run.decisions().is_empty(), "{:?}", run.decisions());
    let app_paths: Vec<PathId> = run.s.servers[1..]
        .iter()
        .map(|a| run.s.primary().path_ids[a])
        .collect();
    let mut live = run.live_paths();
    live.retain(|p| *p != PathId::PRIMARY);
    assert_eq!(live, app_paths);
}

#[test]
fn a_candidate_that_fails_rests_and_the_next_one_is_taken() {
    // addr(9) is preferred but nobody answers there.
    let mut config = quick_config();
    config.candidate_backoff = Duration::from_secs(600);
    let dead_end = addr(9);
    // The client may dial it, and gets no answer.
    let mut run = setup_allowing(2, config, false, 14, Some(dead_end));
    let mut pool = vec![Candidate::new(dead_end, SERVER_NAME)];
    pool.extend(
        candidates_of(&run, 1..2)
            .into_iter()
            .map(|c| c.with_preference(1, 0)),
    );
    run.candidates(pool);
    run.pace(&[(40, 60)]);
    let primary = run.s.primary();
    let by_address: Vec<_> = primary
        .scaled
        .iter()
        .filter(|(_, _, added)| *added)
        .map(|(_, p, _)| primary.path_addrs.get(p).copied())
        .collect();
    // The dead end first (it failed), then the real secondary, never the
    // dead end again within its rest.
    assert!(by_address.len() >= 2, "{by_address:?}");
    assert_eq!(by_address[0], Some(dead_end));
    assert!(
        by_address[1..].iter().all(|a| *a == Some(run.s.servers[1])),
        "{by_address:?}"
    );
    assert!(!primary.failed.is_empty());
    let live = run.live_paths();
    assert_eq!(live.len(), 2, "{live:?}");
}

/// How many distinct deadlines the primary's endpoint sets over `span` of
/// an idle session (established, nothing served).
fn idle_wakeups(config: Option<AutoscaleConfig>) -> u32 {
    use kwik_sim::node::Node;
    let mut options = MultiOptions::new(15, vec![ServerLink::new(20, 40); 2], 1 << 20);
    options.tune_server = Box::new(move |i, cfg| {
        if i == 0 {
            cfg.autoscale = config.clone();
        }
    });
    let mut s = MultiSetup::new(options, |p| {
        p.start = Start::Manual;
        p.add_no_paths();
    });
    let pool = s.servers[1..]
        .iter()
        .map(|a| Candidate::new(*a, SERVER_NAME))
        .collect();
    s.primary_node().endpoint.set_candidates(pool);
    s.run_until_primary(Duration::from_secs(5), |p| p.session.is_some());
    s.sim.run_for(Duration::from_secs(1));
    let start = s.sim.now();
    let mut wakeups = 0;
    while let Some(d) = s.primary_node().poll_timeout() {
        if d.duration_since(start) > Duration::from_secs(20) {
            break;
        }
        s.sim.run_until(d.duration_since(s.sim.start()));
        wakeups += 1;
    }
    wakeups
}

#[test]
fn an_idle_session_costs_no_scaling_timers() {
    let without = idle_wakeups(None);
    let with = idle_wakeups(Some(AutoscaleConfig::default()));
    assert_eq!(with, without, "autoscale added wake-ups to an idle session");
}
