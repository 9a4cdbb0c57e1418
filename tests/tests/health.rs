//! Path health in the simulator: the client grades its paths, the primary
//! learns the grades, and a Critical secondary gets no new ranges while
//! the transfer completes intact.

use std::time::Duration;

use kwik_core::{PathFilter, PathHealth, PathId, PathInfo};
use kwik_sim::multi::{MultiOptions, MultiSetup, ServerLink, first_server_stream};

fn primary_path(s: &mut MultiSetup, path: PathId) -> PathInfo {
    let primary = s.primary_node();
    let h = primary.app.session.unwrap();
    let mut view = primary.endpoint.session(h).unwrap();
    view.paths(PathFilter::All)
        .into_iter()
        .find(|p| p.id == path)
        .expect("path known")
}

fn client_path(s: &mut MultiSetup, path: PathId) -> PathInfo {
    let client = s.client_node();
    let h = client.app.session.unwrap();
    let mut view = client.endpoint.session(h).unwrap();
    view.paths(PathFilter::All)
        .into_iter()
        .find(|p| p.id == path)
        .expect("path known")
}

fn critical(grades: &[(std::time::Instant, PathId, PathHealth)], path: PathId) -> bool {
    grades
        .iter()
        .any(|(_, p, h)| *p == path && *h == PathHealth::Critical)
}

#[test]
fn a_lossy_secondary_turns_critical_and_gets_no_new_ranges() {
    let size = 96 << 20;
    let links = vec![ServerLink::new(100, 40); 3];
    let mut s = MultiSetup::new(MultiOptions::new(7, links, size), |_| {});
    let stream = first_server_stream();
    s.run_until_client(Duration::from_secs(60), |c| {
        c.read.get(&stream).copied().unwrap_or(0) >= size / 5
    });
    let victim_addr = s.servers[2];
    let victim = s.primary().path_ids[&victim_addr];
    let clean = s.primary().path_ids[&s.servers[1]];
    // Before the fault every path is healthy.
    assert!(client_path(&mut s, victim).health <= PathHealth::Good);
    // From now on a third of the packets either way are lost.
    s.sim.set_path(
        s.client_addr,
        victim_addr,
        ServerLink::new(100, 40).config().loss(0.4),
    );
    s.run_until_primary(Duration::from_secs(60), |p| critical(&p.health, victim));
    let delegated_at_critical = primary_path(&mut s, victim).delegated_bytes;
    s.sim
        .run_until_done(Duration::from_secs(300))
        .expect("the transfer completes");

    let c = s.client();
    assert_eq!(c.corrupt, 0);
    assert_eq!(c.read.get(&stream).copied(), Some(size), "every byte once");
    assert!(
        critical(&c.health, victim),
        "the client graded it: {:?}",
        c.health
    );
    assert!(
        !c.health
            .iter()
            .any(|(_, p, h)| *p == clean && *h >= PathHealth::Poor),
        "the clean path stayed healthy: {:?}",
        c.health
    );
    let after = primary_path(&mut s, victim);
    assert_eq!(after.health, PathHealth::Critical);
    assert_eq!(
        after.delegated_bytes, delegated_at_critical,
        "nothing new was delegated to the critical path"
    );
    assert!(primary_path(&mut s, clean).delegated_bytes > size / 4);
}

#[test]
fn a_critical_path_recovers_when_its_loss_ends() {
    let size = 160 << 20;
    let links = vec![ServerLink::new(100, 40); 3];
    let mut s = MultiSetup::new(MultiOptions::new(8, links, size), |_| {});
    let stream = first_server_stream();
    s.run_until_client(Duration::from_secs(60), |c| {
        c.read.get(&stream).copied().unwrap_or(0) >= size / 10
    });
    let victim_addr = s.servers[2];
    let victim = s.primary().path_ids[&victim_addr];
    s.sim.set_path(
        s.client_addr,
        victim_addr,
        ServerLink::new(100, 40).config().loss(0.4),
    );
    s.run_until_primary(Duration::from_secs(60), |p| critical(&p.health, victim));
    let starved = primary_path(&mut s, victim).delegated_bytes;
    s.sim.set_path(
        s.client_addr,
        victim_addr,
        ServerLink::new(100, 40).config(),
    );
    s.run_until_primary(Duration::from_secs(60), |p| {
        p.health
            .iter()
            .rev()
            .find(|(_, p, _)| *p == victim)
            .is_some_and(|(_, _, h)| *h <= PathHealth::Fair)
    });
    s.sim
        .run_until_done(Duration::from_secs(300))
        .expect("the transfer completes");
    let c = s.client();
    assert_eq!(c.corrupt, 0);
    assert_eq!(c.read.get(&stream).copied(), Some(size));
    assert!(
        primary_path(&mut s, victim).delegated_bytes > starved,
        "the recovered path is given ranges again"
    );
}

#[test]
fn grading_is_deterministic() {
    let run = || {
        let links = vec![
            ServerLink::new(100, 40),
            ServerLink::new(50, 80),
            ServerLink::new(25, 120),
        ];
        let mut s = MultiSetup::new(MultiOptions::new(9, links, 32 << 20), |_| {});
        s.sim
            .run_until_done(Duration::from_secs(120))
            .expect("completes");
        let start = s.sim.start();
        let rel = |g: &[(std::time::Instant, PathId, PathHealth)]| -> Vec<_> {
            g.iter().map(|(t, p, h)| (*t - start, *p, *h)).collect()
        };
        (rel(&s.client().health), rel(&s.primary().health))
    };
    assert_eq!(run(), run());
}
