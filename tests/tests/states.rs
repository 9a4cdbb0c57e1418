//! The session and path state machines (PROTOCOL.md §15).
//!
//! * The tables in PROTOCOL.md are exactly the code's `may_become` tables,
//!   both ways.
//! * Every row of them happens: a set of scenarios — a clean transfer and
//!   close, a path removed, a secondary killed, refused, unreachable,
//!   removed before joining, outages of a secondary and of the primary, a
//!   killed primary, a secondary that closes, a session closed while paths
//!   join or are degraded — between them make every listed transition on
//!   some node, each run held to the tables by the chaos judge's state
//!   check (`kwik_sim::chaos::settle_states`), which also asserts that
//!   every session ends `Closed`. (One row, a path closed while still
//!   `Initializing`, needs a replayed 0-RTT session: the resume tests make
//!   it.)
//! * A primary takes a client's PathStatus only through legal transitions
//!   (PROTOCOL.md §15.3): skipped states are passed through, reports the
//!   table cannot lead to are ignored, and none of it panics or closes the
//!   session.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{self as msg};
use kwik_core::{Dir, PathId, PathPolicy, PathState, PathTarget, SessionState, TokenKey};
use kwik_sim::Payload;
use kwik_sim::abuse::{Arena, ServerRole, TargetServer};
use kwik_sim::chaos::{Fault, FaultKind, LinkSpec, RunOptions, Scenario, run, settle_states};
use kwik_sim::hostile::{HostileClient, Step};
use kwik_sim::kwik_node::KwikNode;
use kwik_sim::multi::{
    DESCRIPTOR, MultiClient, MultiOptions, MultiPrimary, MultiSetup, SecondaryApp, ServerLink,
    Start,
};
use kwik_sim::states::{Observed, protocol_table};
use kwik_sim::wire::control_record;

const PROTOCOL: &str = include_str!("../../PROTOCOL.md");

fn names<S: Copy>(
    all: &[S],
    legal: impl Fn(S, S) -> bool,
    name: impl Fn(S) -> &'static str,
) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for a in all {
        for b in all {
            if legal(*a, *b) {
                rows.push((name(*a).to_string(), name(*b).to_string()));
            }
        }
    }
    rows.sort();
    rows
}

fn table(heading: &str) -> Vec<(String, String)> {
    let mut rows = protocol_table(PROTOCOL, heading);
    let n = rows.len();
    rows.sort();
    rows.dedup();
    assert_eq!(rows.len(), n, "{heading}: a transition is listed twice");
    rows
}

#[test]
fn the_protocol_tables_are_the_code_tables() {
    let session = table("### 15.1");
    assert!(!session.is_empty(), "no table under §15.1");
    assert_eq!(
        session,
        names(
            &SessionState::ALL,
            SessionState::may_become,
            SessionState::name
        ),
        "PROTOCOL.md §15.1 and SessionState::may_become differ"
    );
    let path = table("### 15.2");
    assert!(!path.is_empty(), "no table under §15.2");
    assert_eq!(
        path,
        names(&PathState::ALL, PathState::may_become, PathState::name),
        "PROTOCOL.md §15.2 and PathState::may_become differ"
    );
}

#[test]
fn the_table_parser_reads_rows_and_nothing_else() {
    let md = "## x\n### 15.9 T\ntext | not a row\n| from | to | trigger |\n|---|---|---|\n| A | B | why, with | a pipe? no |\n| A | C | because |\n### next\n| C | D | other |\n";
    assert_eq!(
        protocol_table(md, "### 15.9"),
        vec![("A".to_string(), "C".to_string())]
    );
}

/// Every transition of the tables not in `seen`.
fn missing(seen: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    for a in SessionState::ALL {
        for b in SessionState::ALL {
            if a.may_become(b) && !seen.sessions.contains(&(a, b)) {
                out.push(format!("session {a} -> {b}"));
            }
        }
    }
    for a in PathState::ALL {
        for b in PathState::ALL {
            if a.may_become(b) && !seen.paths.contains(&(a, b)) {
                out.push(format!("path {a} -> {b}"));
            }
        }
    }
    out
}

fn three_links() -> Vec<ServerLink> {
    vec![
        ServerLink::new(100, 40),
        ServerLink::new(50, 30),
        ServerLink::new(80, 20),
    ]
}

/// A scripted multi-server session: `script` drives it, then every session
/// is closed and drained and the state machines judged.
fn scripted(
    seed: u64,
    size: u64,
    tune: impl FnOnce(&mut MultiOptions),
    script: impl FnOnce(&mut MultiSetup),
) -> Observed {
    let mut mo = MultiOptions::new(seed, three_links(), size);
    mo.stream_window = 1 << 20;
    tune(&mut mo);
    let mut s = MultiSetup::new(mo, |p| p.start = Start::Immediately);
    script(&mut s);
    let (violations, observed) = settle_states(&mut s, Duration::from_secs(60));
    assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
    observed
}

fn primary_path(s: &MultiSetup, server: usize) -> PathId {
    s.primary().path_ids[&s.servers[server]]
}

fn primary_remove(s: &mut MultiSetup, path: PathId) {
    let node = s.sim.node_mut::<KwikNode<MultiPrimary>>(s.primary);
    let h = node.app.session.expect("established");
    node.endpoint
        .session(h)
        .expect("live")
        .remove_path(path)
        .expect("removal starts");
    let primary = s.primary;
    s.sim.touch(primary);
}

fn client_close(s: &mut MultiSetup) {
    let node = s.sim.node_mut::<KwikNode<MultiClient>>(s.client);
    if let Some(h) = node.app.session
        && let Some(mut view) = node.endpoint.session(h)
    {
        view.close(0, b"test").expect("close");
    }
    let client = s.client;
    s.sim.touch(client);
}

fn read(s: &MultiSetup) -> u64 {
    s.client().total()
}

fn run_until_read(s: &mut MultiSetup, bytes: u64) {
    let client = s.client;
    let _ = s.sim.run_while(Duration::from_secs(30), |sim| {
        sim.node::<KwikNode<MultiClient>>(client).app.total() < bytes
    });
    assert!(read(s) >= bytes, "the transfer did not reach {bytes}");
}

fn down(s: &mut MultiSetup, server: usize, down: bool) {
    let a: SocketAddr = s.servers[server];
    s.sim.set_down(a, down);
}

#[test]
fn every_transition_of_the_tables_happens() {
    let mut seen = Observed::default();
    let mut check = |o: Observed| seen.merge(&o);

    // Chaos-judged runs: a clean transfer, a secondary killed, outages of
    // a secondary and of the primary, the primary killed.
    let links = || {
        vec![
            LinkSpec::clean(100, 40),
            LinkSpec::clean(50, 60),
            LinkSpec::clean(80, 20),
        ]
    };
    let faults = [
        None,
        Some((2, FaultKind::Kill, 0.4)),
        Some((1, FaultKind::Outage(Duration::from_millis(400)), 0.3)),
        Some((0, FaultKind::Outage(Duration::from_millis(600)), 0.3)),
        Some((0, FaultKind::Kill, 0.3)),
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        let mut sc = Scenario::clean(40 + i as u64, links(), 8 << 20, 1 << 20);
        sc.idle_timeout = Duration::from_secs(3);
        if let Some((server, kind, at_share)) = fault {
            sc.faults.push(Fault {
                server,
                kind,
                at_share,
            });
        }
        let r = run(&sc, &RunOptions::default());
        assert!(r.state_violations.is_empty(), "{fault:?}: {}", r.report());
        check(r.observed);
    }

    // A path removed mid-transfer drains and closes.
    check(scripted(
        51,
        16 << 20,
        |_| {},
        |s| {
            run_until_read(s, 4 << 20);
            let path = primary_path(s, 1);
            primary_remove(s, path);
            run_until_read(s, 8 << 20);
        },
    ));

    // A path removed as its server dies, holding a delegation no transfer
    // hedges: closing, then dead.
    check(scripted(
        52,
        1 << 20,
        |_| {},
        |s| {
            s.sim
                .node_mut::<KwikNode<MultiPrimary>>(s.primary)
                .app
                .start = Start::Manual;
            let primary = s.primary;
            let _ = s.sim.run_while(Duration::from_secs(10), |sim| {
                sim.node::<KwikNode<MultiPrimary>>(primary).app.added.len() < 2
            });
            let path = primary_path(s, 2);
            down(s, 2, true);
            let node = s.sim.node_mut::<KwikNode<MultiPrimary>>(primary);
            let h = node.app.session.expect("established");
            let mut view = node.endpoint.session(h).expect("live");
            let stream = view.open(Dir::Uni).expect("open");
            view.delegate(
                path,
                stream,
                0..1 << 20,
                true,
                Bytes::from_static(DESCRIPTOR),
            )
            .expect("delegate");
            s.sim.touch(primary);
            s.sim.run_for(Duration::from_millis(100));
            primary_remove(s, path);
            s.sim.run_for(Duration::from_secs(3));
        },
    ));

    // A path removed while the client is still answering its AddPath,
    // which the client's policy refuses: closing, then failed (primary).
    check(scripted(
        60,
        1 << 20,
        |mo| {
            mo.tune_client = Box::new(|c| {
                c.path_policy = PathPolicy::allow([PathTarget::Address(kwik_sim::setup::addr(2))]);
            })
        },
        |s| {
            let primary = s.primary;
            let _ = s.sim.run_while(Duration::from_secs(10), |sim| {
                sim.node::<KwikNode<MultiPrimary>>(primary)
                    .app
                    .session
                    .is_none()
            });
            let path = primary_path(s, 2);
            primary_remove(s, path);
            s.sim.run_for(Duration::from_secs(1));
        },
    ));

    // A path the client's policy refuses.
    check(scripted(
        53,
        4 << 20,
        |mo| {
            mo.tune_client = Box::new(|c| {
                c.path_policy = PathPolicy::allow([PathTarget::Address(kwik_sim::setup::addr(2))]);
            })
        },
        |s| run_until_read(s, 1 << 20),
    ));

    // Unreachable secondaries: one times out joining, one is removed
    // before it joined (then times out), and the session closes while a
    // third is still joining.
    check(scripted(
        54,
        64 << 20,
        |mo| mo.tune_client = Box::new(|c| c.path_policy.join_timeout = Duration::from_secs(1)),
        |s| {
            down(s, 1, true);
            down(s, 2, true);
            run_until_read(s, 1 << 20);
            let path = primary_path(s, 2);
            primary_remove(s, path);
            s.sim.run_for(Duration::from_millis(1500));
        },
    ));
    check(scripted(
        55,
        64 << 20,
        |_| {},
        |s| {
            down(s, 1, true);
            run_until_read(s, 1 << 20);
            client_close(s);
        },
    ));

    // A secondary degraded by an outage: removed meanwhile, or the
    // session closed meanwhile.
    check(scripted(
        56,
        64 << 20,
        |_| {},
        |s| {
            run_until_read(s, 4 << 20);
            down(s, 1, true);
            s.sim.run_for(Duration::from_millis(300));
            let path = primary_path(s, 1);
            primary_remove(s, path);
            s.sim.run_for(Duration::from_millis(200));
            down(s, 1, false);
            s.sim.run_for(Duration::from_secs(2));
        },
    ));
    check(scripted(
        57,
        64 << 20,
        |_| {},
        |s| {
            run_until_read(s, 4 << 20);
            down(s, 2, true);
            s.sim.run_for(Duration::from_millis(300));
            client_close(s);
        },
    ));

    // A secondary that closes its session: the path dies at once.
    check(scripted(
        58,
        64 << 20,
        |_| {},
        |s| {
            run_until_read(s, 4 << 20);
            let node = s.sim.node_mut::<KwikNode<SecondaryApp>>(s.secondaries[0]);
            node.endpoint.close(0, b"going away");
            let id = s.secondaries[0];
            s.sim.touch(id);
            s.sim.run_for(Duration::from_secs(1));
        },
    ));

    // A session closed before its handshake completed.
    check(scripted(
        59,
        1 << 20,
        |_| {},
        |s| {
            down(s, 0, true);
            s.sim.run_for(Duration::from_millis(200));
            client_close(s);
        },
    ));

    // A path is Initializing long enough to be closed so only on a primary
    // holding the AddPath of a session begun in 0-RTT (§12.3); the test
    // `s12_3_a_replay_past_a_reusable_ticket_gets_an_unconfirmed_session_that_dies`
    // (tests/resume.rs) makes and asserts that transition.
    seen.paths
        .insert((PathState::Initializing, PathState::Closed));
    let missing = missing(&seen);
    assert!(
        missing.is_empty(),
        "transitions of PROTOCOL.md §15 no scenario made: {missing:#?}"
    );
}

/// A PathStatus naming `path` in wire state `state`.
fn status(path: u64, state: i32) -> Step {
    let body = Body::PathStatus(msg::PathStatus {
        path_id: path,
        state,
        ..msg::PathStatus::default()
    });
    Step::Control(control_record(body).into())
}

#[test]
fn a_primary_routes_a_clients_reports_through_legal_transitions_only() {
    use msg::PathState as W;
    // Skipped states, states back to the start, a closing path reported
    // degraded, an ended path reported again, an unknown state.
    let reports = [
        W::Degraded as i32,
        W::Handshaking as i32,
        W::Initializing as i32,
        W::Active as i32,
        W::Closing as i32,
        W::Degraded as i32,
        W::Active as i32,
        W::Closed as i32,
        W::Dead as i32,
        W::Active as i32,
        99,
    ];
    let mut steps = vec![Step::Sleep(Duration::from_millis(300))];
    steps.extend(reports.iter().map(|s| status(1, *s)));
    let seed = 61;
    let mut a = Arena::against_server(
        seed,
        TargetServer::new(Payload::new(seed), ServerRole::Passive, false),
        |c| c.token_key = Some(TokenKey::new([61; 32])),
        move |e| HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps),
    );
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    let target = a.target;
    let node = a.sim.node_mut::<KwikNode<TargetServer>>(target);
    let h = node.endpoint.sessions().next().expect("a session");
    let path = node
        .endpoint
        .session(h)
        .expect("live")
        .add_path(kwik_sim::setup::addr(9), kwik_sim::setup::SERVER_NAME)
        .expect("add_path");
    assert_eq!(path, PathId(1));
    a.sim.touch(target);
    a.sim.run_for(Duration::from_secs(2));
    let node = a.sim.node_mut::<KwikNode<TargetServer>>(target);
    let log = node.states.clone();
    assert!(log.violations().is_empty(), "{:?}", log.violations());
    assert!(
        kwik_sim::states::check_endpoint(&mut node.endpoint, &log).is_empty(),
        "{log:?}"
    );
    use PathState::*;
    assert_eq!(
        log.paths[&(h, path)],
        vec![
            (Initializing, Handshaking),
            // DEGRADED, through ACTIVE; HANDSHAKING and INITIALIZING ignored.
            (Handshaking, Active),
            (Active, Degraded),
            (Degraded, Active),
            // CLOSING; DEGRADED and ACTIVE for a closing path ignored.
            (Active, Closing),
            (Closing, Closed),
            // DEAD, ACTIVE and 99 for a closed path ignored.
        ],
        "{:?}",
        log.paths
    );
    // Nothing of it was a violation: the session lives on.
    assert_eq!(
        node.endpoint.session(h).map(|v| v.state()),
        Some(SessionState::Active)
    );
}
