//! `autoscale`: does a primary add paths when a session's demand outgrows
//! them, and let them go once it falls — promptly, without flapping?
//!
//! One client session served by a primary with automatic scaling on
//! ([`ServerConfig::autoscale`](kwik_core::ServerConfig::autoscale), the
//! default [`UtilisationPolicy`](kwik_core::scaling::UtilisationPolicy)) and
//! three candidate secondaries in its pool; the primary adds none itself.
//! Every server reaches the client over its own 40 Mbit/s link (RTT 40, 30,
//! 50 and 60 ms, one-BDP drop-tail buffers), so the primary alone carries
//! 40 Mbit/s and all four 160.
//!
//! The **demand** is the client application's reading pace: it may have
//! read `∫ demand dt` bytes by time `t` and reads no more (a consumer with
//! a playback buffer: when it is behind, it reads as fast as bytes come).
//! The demand is 10 Mbit/s for 20 s, 100 Mbit/s for 90 s, then 10 Mbit/s for
//! 90 s; the primary serves one large resource over one logical stream with
//! the multi-source scheduler, through an 8 MiB per-stream window.
//!
//! Reported: `add_decision_s`, seconds from the rise to the first add
//! decision ([`Event::PathScaled`](kwik_core::Event::PathScaled));
//! `remove_decision_s`, seconds from the fall to the first removal;
//! `paths_max`, most live paths at once (primary included);
//! `goodput_vs_demand`, the lowest ratio of bytes read to bytes demanded at
//! the end of each phase (capacity allows the demand in every phase);
//! `flaps`, decisions that reverse the previous one within one demand phase
//! (an add after a removal while demand is low, a removal while it is high).
//! Also `behind_max_mb`, the most the reader fell behind its demand (while
//! the scaler reacts and the added paths ramp up), and `caught_up_s`, when
//! it last was more than a sixteenth of the window behind, counted from the
//! rise. A corrupt byte or a path that died exits with status 1.

use std::time::Duration;

use kwik_core::scaling::AutoscaleConfig;
use kwik_core::{Candidate, PathFilter, PathId};
use kwik_sim::multi::{MultiOptions, MultiSetup, ServerLink};
use kwik_sim::setup::SERVER_NAME;

use crate::multi_harness::{BACKLOG, client_read, primary_setup, quiet};
use crate::report::Line;

/// Links of the primary and the three candidates: (Mbit/s, RTT ms).
const LINKS: [(u64, u64); 4] = [(40, 40), (40, 30), (40, 50), (40, 60)];

/// Demand phases: (until second, Mbit/s).
const PHASES: [(u64, u64); 3] = [(20, 10), (110, 100), (200, 10)];

/// Per-logical-stream window.
const WINDOW: u64 = 8 << 20;

/// Virtual time between two steps of the paced reader.
const STEP: Duration = Duration::from_millis(10);

/// Bytes the demand asks for by `t` (seconds).
fn demanded(t: f64) -> u64 {
    let mut bytes = 0.0;
    let mut from = 0.0;
    for (until, mbit) in PHASES {
        let until = until as f64;
        let span = (t.min(until) - from).max(0.0);
        bytes += span * mbit as f64 * 1e6 / 8.0;
        from = until;
    }
    bytes as u64
}

/// The phase a time falls in.
fn phase_of(t: f64) -> usize {
    PHASES
        .iter()
        .position(|(until, _)| t < *until as f64)
        .unwrap_or(PHASES.len() - 1)
}

/// Runs the scenario; `Err` on a failed check.
pub fn run(seed: u64) -> Result<(), String> {
    let total_s = PHASES[PHASES.len() - 1].0;
    let size = demanded(total_s as f64) + (64 << 20);
    let links = LINKS
        .iter()
        .map(|(mbit, rtt)| ServerLink::new(*mbit, *rtt))
        .collect();
    let mut options = MultiOptions::new(seed, links, size);
    options.stream_window = WINDOW;
    options.tune_server = Box::new(|i, cfg| {
        if i == 0 {
            cfg.autoscale = Some(AutoscaleConfig::default());
            cfg.path_retry = None;
        }
    });
    let setup = primary_setup(BACKLOG);
    let mut s = MultiSetup::new(options, |p| {
        setup(p);
        p.add_no_paths();
    });
    quiet(&mut s);
    let candidates = s.servers[1..]
        .iter()
        .map(|a| Candidate::new(*a, SERVER_NAME))
        .collect();
    s.primary_node().endpoint.set_candidates(candidates);

    let start = s.sim.now();
    let mut phase_ratio = [f64::NAN; PHASES.len()];
    let mut paths_max = 1;
    // Most bytes the reader was behind its demand, and when it last was.
    let mut behind_max = 0u64;
    let mut behind_at = Duration::ZERO;
    let demand = |t: Duration| demanded(t.as_secs_f64());
    s.run_paced(Duration::from_secs(total_s), STEP, demand, |s, t| {
        let secs = t.as_secs_f64();
        let read = client_read(s.client());
        let behind = demanded(secs).saturating_sub(read);
        behind_max = behind_max.max(behind);
        if behind > WINDOW / 8 {
            behind_at = t;
        }
        if t.as_millis() % 1000 == 0 {
            let live = live_paths(s);
            paths_max = paths_max.max(live);
            eprintln!(
                "t={secs:5.0}s demand={:3} Mbit/s read {:7.1} of {:7.1} MB, live paths {live}",
                PHASES[phase_of(secs - 0.5)].1,
                read as f64 / 1e6,
                demanded(secs) as f64 / 1e6,
            );
        }
        for (i, (until, _)) in PHASES.iter().enumerate() {
            if t == Duration::from_secs(*until) {
                phase_ratio[i] = read as f64 / demanded(secs) as f64;
            }
        }
    });

    let client = s.client();
    if client.corrupt > 0 {
        return Err(format!("{} corrupt bytes", client.corrupt));
    }
    let primary = s.primary();
    if let Some((_, f)) = primary.dead.first() {
        return Err(format!("a path died: {f}"));
    }
    let decisions: Vec<(f64, PathId, bool)> = primary
        .scaled
        .iter()
        .map(|(at, p, added)| {
            (
                at.saturating_duration_since(start).as_secs_f64(),
                *p,
                *added,
            )
        })
        .collect();
    for (at, path, added) in &decisions {
        eprintln!(
            "  {at:6.1} s: {} {path}",
            if *added { "add" } else { "remove" }
        );
    }
    let rise = PHASES[0].0 as f64;
    let fall = PHASES[1].0 as f64;
    let add_decision = decisions
        .iter()
        .find(|(at, _, added)| *added && *at >= rise)
        .map(|(at, _, _)| at - rise);
    let remove_decision = decisions
        .iter()
        .find(|(at, _, added)| !*added && *at >= fall)
        .map(|(at, _, _)| at - fall);
    let mut flaps = 0;
    for pair in decisions.windows(2) {
        let ((a, _, a_add), (b, _, b_add)) = (pair[0], pair[1]);
        if a_add != b_add && phase_of(a) == phase_of(b) {
            flaps += 1;
        }
    }
    // A removal while demand is high, an add while it is low, is a flap too.
    flaps += decisions
        .iter()
        .filter(|(at, _, added)| {
            let high = PHASES[phase_of(*at)].1 > PHASES[0].1;
            *added != high
        })
        .count();
    let goodput = phase_ratio.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!(
        "autoscale: phase ratios {:?}, add after {add_decision:?} s, remove after {remove_decision:?} s",
        phase_ratio
    );
    Line::new("autoscale")
        .num("add_decision_s", add_decision.unwrap_or(f64::INFINITY), 1)
        .num(
            "remove_decision_s",
            remove_decision.unwrap_or(f64::INFINITY),
            1,
        )
        .int("paths_max", paths_max as u64)
        .num("goodput_vs_demand", goodput, 3)
        .int("flaps", flaps as u64)
        .num("behind_max_mb", behind_max as f64 / 1e6, 1)
        .num(
            "caught_up_s",
            behind_at.as_secs_f64() - PHASES[0].0 as f64,
            1,
        )
        .int("decisions", decisions.len() as u64)
        .emit();
    Ok(())
}

fn live_paths(s: &mut MultiSetup) -> usize {
    let primary = s.primary_node();
    primary
        .app
        .session
        .and_then(|h| primary.endpoint.session(h))
        .map_or(0, |mut v| v.paths(PathFilter::Live).len())
}
