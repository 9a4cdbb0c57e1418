//! Review (round 10): hostile clients against path health and PathStatus
//! handling on a primary, and multi-source liveness when every secondary
//! is graded Critical.

use std::time::Duration;

use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{self as msg};
use kwik_core::{PathFilter, PathHealth, PathId, PathInfo};
use kwik_sim::abuse::{Arena, ServerRole};
use kwik_sim::hostile::Step;
use kwik_sim::multi::{MultiOptions, MultiSetup, ServerLink, first_server_stream};
use kwik_sim::wire::control_record;

fn status(path_id: u64, state: msg::PathState, health: i32, throughput: u64) -> Step {
    Step::Control(
        control_record(Body::PathStatus(msg::PathStatus {
            path_id,
            state: state as i32,
            health,
            throughput,
            rtt_us: u64::MAX,
            bytes_received: u64::MAX,
            ..msg::PathStatus::default()
        }))
        .into(),
    )
}

/// A hostile client against a passive primary, running `steps`; returns
/// the arena once they ran (the session may or may not have survived).
fn against_primary(seed: u64, steps: Vec<Step>) -> Arena {
    let mut a = Arena::scripted_client(seed, ServerRole::Passive, false, steps);
    a.sim.run_for(Duration::from_secs(1));
    a
}

fn primary_paths(a: &mut Arena) -> Vec<PathInfo> {
    let h = a.server().session().expect("a session");
    a.server_node()
        .endpoint
        .session(h)
        .expect("session alive")
        .paths(PathFilter::All)
}

/// A PathStatus names a *secondary* path (§10.8): the primary connection
/// is path 0, and its state is this server's own to judge — a client that
/// says "path 0 is Dead" (or Closed, or Failed) must not make the primary
/// record its own connection as dead while it is plainly talking over it.
#[test]
fn a_client_cannot_report_the_primary_connection_dead() {
    let steps = vec![status(0, msg::PathState::Dead, 5, u64::MAX)];
    let mut a = against_primary(41, steps);
    assert!(
        a.server().close_reason().is_none(),
        "{:?}",
        a.server().close_reason()
    );
    let paths = primary_paths(&mut a);
    let own = paths
        .iter()
        .find(|p| p.id == PathId::PRIMARY)
        .expect("path 0 listed");
    assert!(
        !own.state.is_final(),
        "the primary's own connection is reported {:?} on the client's word",
        own.state
    );
    assert_eq!(own.health, PathHealth::Excellent, "graded first-hand only");
}

/// Health in PathStatus for paths the primary does not know, for path 0,
/// out-of-range grades and absurd figures: ignored, no violation, no
/// panic, nothing invented.
#[test]
fn health_for_unknown_paths_and_absurd_figures_is_ignored() {
    let mut steps = Vec::new();
    for (path, health) in [
        (7, 5),
        (u64::MAX, 5),
        (0, 5),
        (3, 99),
        (3, -1),
        (0, i32::MIN),
    ] {
        steps.push(status(path, msg::PathState::Active, health, u64::MAX));
    }
    // Flapping reports for an unknown path: nothing to churn.
    for i in 0..2000u64 {
        let health = if i % 2 == 0 { 5 } else { 1 };
        steps.push(status(9, msg::PathState::Active, health, i));
    }
    let mut a = against_primary(42, steps);
    assert!(
        a.server().close_reason().is_none(),
        "{:?}",
        a.server().close_reason()
    );
    let paths = primary_paths(&mut a);
    assert_eq!(paths.len(), 1, "no path invented: {paths:?}");
    assert_eq!(paths[0].health, PathHealth::Excellent);
    assert_ne!(paths[0].throughput, u64::MAX);
}

/// Every secondary turns lossy (40 %) midway: all of them are graded
/// Critical and get no new ranges. The primary must then carry the rest
/// itself, and whatever the Critical paths still owed must reach the
/// client (hedged from the frontier) — every byte once, no stall.
#[test]
fn when_every_secondary_is_critical_the_primary_finishes_alone() {
    let size = 24 << 20;
    let links = vec![ServerLink::new(100, 40); 3];
    let mut s = MultiSetup::new(MultiOptions::new(43, links, size), |_| {});
    let stream = first_server_stream();
    s.run_until_client(Duration::from_secs(60), |c| {
        c.read.get(&stream).copied().unwrap_or(0) >= size / 5
    });
    let secondaries: Vec<_> = s.servers[1..].to_vec();
    let ids: Vec<PathId> = secondaries
        .iter()
        .map(|addr| s.primary().path_ids[addr])
        .collect();
    for addr in &secondaries {
        s.sim.set_path(
            s.client_addr,
            *addr,
            ServerLink::new(100, 40).config().loss(0.4),
        );
    }
    s.run_until_primary(Duration::from_secs(60), |p| {
        ids.iter().all(|id| {
            p.health
                .iter()
                .rev()
                .find(|(_, path, _)| path == id)
                .is_some_and(|(_, _, h)| *h == PathHealth::Critical)
        })
    });
    s.sim
        .run_until_done(Duration::from_secs(300))
        .expect("the transfer completes with every secondary Critical");
    let c = s.client();
    assert_eq!(c.corrupt, 0);
    assert_eq!(c.read.get(&stream).copied(), Some(size), "every byte once");
}
