//! Hostile review (v3): client-proposed paths (PROTOCOL.md §13) and the
//! observable path state machine (PROTOCOL.md §15).

use std::time::Duration;

use bytes::BytesMut;

use kwik_core::{Event, PathId};
use kwik_sim::kwik_node::KwikNode;
use kwik_sim::link::LinkConfig;
use kwik_sim::multi::{MultiClient, MultiOptions, MultiPrimary, MultiSetup, ServerLink, Start};

const PRIMARY_LATENCY: Duration = Duration::from_millis(10);
const SECONDARY_LATENCY: Duration = Duration::from_millis(25);

/// A client, a primary and one secondary on unshaped links (no queue, so a
/// datagram arrives exactly one latency after it left).
fn exact_setup(seed: u64) -> MultiSetup {
    let links = vec![ServerLink::new(100, 20), ServerLink::new(100, 50)];
    let mut s = MultiSetup::new(MultiOptions::new(seed, links, 1 << 16), |p| {
        p.start = Start::Manual
    });
    let (c, p, q) = (s.client_addr, s.servers[0], s.servers[1]);
    s.sim
        .set_path(c, p, LinkConfig::new().latency(PRIMARY_LATENCY));
    s.sim
        .set_path(c, q, LinkConfig::new().latency(SECONDARY_LATENCY));
    s
}

/// When the client saw its secondary path join (its `PathAdded`), as time
/// since the start.
fn joined_at(s: &MultiSetup) -> Option<Duration> {
    let start = s.sim.start();
    s.client().log.iter().find_map(|(t, e)| match e {
        Event::PathAdded { .. } => Some(t.saturating_duration_since(start)),
        _ => None,
    })
}

/// FINDING (high: a remote peer crashes a debug build; a release build
/// leaves a path "Active" the session believes it removed).
///
/// The client's path goes `Handshaking -> Closing` when a RemovePath for
/// it arrives before its secondary answered the Join (`begin_remove`).
/// If the secondary's `Joined` is read in the same drive — the primary
/// connection is polled first, then the secondary's — `on_joined` sets the
/// path `Active` unconditionally: `Closing -> Active` is not in the table
/// of §15.2, and `Machine::step` hits `debug_assert!(false, "illegal
/// transition ...")`. An honest primary triggers it (an application's
/// `remove_path`, or its own AddPath timeout, which sends RemovePath) and
/// a hostile one can time it at will.
///
/// Expected: a `Joined` for a path that is `Closing` leaves it `Closing`
/// (the connection is marked joined, and the path drains and closes).
#[test]
fn a_removal_read_with_the_joined_in_one_drive_is_no_illegal_transition() {
    // Where the join lands, undisturbed.
    let mut probe = exact_setup(7);
    let client = probe.client;
    let _ = probe.sim.run_while(Duration::from_secs(5), |sim| {
        !sim.node::<KwikNode<MultiClient>>(client)
            .app
            .log
            .iter()
            .any(|(_, e)| matches!(e, Event::PathAdded { .. }))
    });
    let t_join = joined_at(&probe).expect("the secondary joined");

    // The same run. The datagrams the secondary sends from just before its
    // Joined leaves, and the primary's RemovePath, are held back (captured
    // and dropped on the wire) and then handed to the client together, the
    // RemovePath first, as a batch of received datagrams is.
    let mut s = exact_setup(7);
    let (c, p, q) = (s.client_addr, s.servers[0], s.servers[1]);
    let sent = t_join - SECONDARY_LATENCY;
    let hold_from = sent - Duration::from_millis(1);
    s.sim.run_until(hold_from - Duration::from_micros(1));
    assert!(
        joined_at(&s).is_none(),
        "the same run must not have joined yet"
    );
    let hold = |latency| {
        LinkConfig::new()
            .latency(latency)
            .blackhole(hold_from, hold_from + Duration::from_secs(1))
    };
    s.sim.set_link(q, c, hold(SECONDARY_LATENCY));
    s.sim.set_link(p, c, hold(PRIMARY_LATENCY));
    s.sim.tap(q, c, 64);
    s.sim.tap(p, c, 64);
    s.sim.run_until(sent);
    let path: PathId = s.primary().path_ids[&q];
    let primary = s.primary;
    {
        let node = s.sim.node_mut::<KwikNode<MultiPrimary>>(primary);
        let h = node.app.session.expect("established");
        node.endpoint
            .session(h)
            .expect("live")
            .remove_path(path)
            .expect("removal starts");
    }
    s.sim.touch(primary);
    s.sim.run_for(Duration::from_millis(1));
    let from_primary = s.sim.untap(p, c);
    let from_secondary = s.sim.untap(q, c);
    assert!(!from_primary.is_empty() && !from_secondary.is_empty());
    s.sim
        .set_link(q, c, LinkConfig::new().latency(SECONDARY_LATENCY));
    s.sim
        .set_link(p, c, LinkConfig::new().latency(PRIMARY_LATENCY));
    let now = s.sim.now();
    let client = s.client;
    {
        let node = s.sim.node_mut::<KwikNode<MultiClient>>(client);
        for d in &from_primary {
            node.endpoint
                .handle_datagram(now, p, None, None, BytesMut::from(&d[..]));
        }
        for d in &from_secondary {
            node.endpoint
                .handle_datagram(now, q, None, None, BytesMut::from(&d[..]));
        }
    }
    s.sim.touch(client);
    s.sim.run_for(Duration::from_secs(3));
    let events = &s.client().path_events;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PathClosed { path: p, .. } if *p == path)),
        "the removed path never closed on the client: {events:?}"
    );
}
