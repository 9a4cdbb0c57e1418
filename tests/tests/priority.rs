//! Stream priorities (PROTOCOL.md §14) in the simulator: a high-priority
//! message overtakes bulk data queued before it, streams of different
//! priority never share a lane, a delegation carries the priority to the
//! secondary which writes the range at it, the multi-source scheduler
//! serves the higher-priority transfer first, and equal priorities behave
//! exactly as before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kwik_core::{
    Dir, MAX_STREAM_PRIORITY, Side, StreamError, StreamId, TransferConfig, WriteError,
};
use kwik_sim::multi::{
    DESCRIPTOR, MultiOptions, MultiSetup, PayloadResource, SecondaryApp, ServerLink, Start,
    first_server_stream,
};
use kwik_sim::pair::StreamPair;
use kwik_sim::{KwikNode, LinkConfig, Payload};

/// A client and a server on `link`, the session established; every
/// logical stream may hold `window` bytes of credit.
fn pair(seed: u64, link: LinkConfig, window: u64) -> StreamPair {
    StreamPair::new(seed, link, |client, server| {
        for t in [&mut client.transport, &mut server.transport] {
            t.stream_window = window;
            t.send_window = window * 4;
        }
    })
}

const BULK: u64 = 4 << 20;
const MESSAGE: u64 = 1024;

/// 4 MiB of bulk data is queued (20 Mbit/s: 1.7 s of it), then a 1 KiB
/// message is written on a second stream: when is it read, and how much of
/// the bulk data had been read by then?
fn message_behind_bulk(message_priority: Option<i32>) -> (Duration, u64) {
    let link = LinkConfig::new()
        .rate_mbps(20)
        .latency(Duration::from_millis(20));
    let mut p = pair(71, link, 8 << 20);
    let bulk = p.open(None);
    p.write(bulk, 0, BULK, true);
    p.sim.run_for(Duration::from_millis(300));
    let message = p.open(message_priority);
    p.write(message, 0, MESSAGE, true);
    let latency = p.run_until_read(message, MESSAGE, Duration::from_secs(30));
    let bulk_then = p.read(bulk);
    p.run_until_read(bulk, BULK, Duration::from_secs(30));
    assert_eq!(p.server().corrupt, 0);
    assert_eq!(p.server().finished_streams(), 2);
    (latency, bulk_then)
}

#[test]
fn a_high_priority_message_overtakes_bulk_data_queued_before_it() {
    let (latency, bulk_then) = message_behind_bulk(Some(10));
    // One way (20 ms) plus at most a full one-BDP bottleneck queue (40 ms)
    // and a packet's serialisation: it passed everything queued at kwik
    // and quinn-proto.
    assert!(
        latency <= Duration::from_millis(80),
        "the message took {latency:?}"
    );
    assert!(
        bulk_then < BULK / 2,
        "{bulk_then} bulk bytes read before the message"
    );
    // At equal priority it shares the bulk stream's lane and waits for
    // everything queued before it: the same run, deterministically later.
    let (equal_latency, equal_bulk_then) = message_behind_bulk(None);
    assert_eq!(equal_bulk_then, BULK, "FIFO behind the bulk data");
    assert!(equal_latency > latency * 10, "{equal_latency:?}");
}

#[test]
fn streams_of_different_priority_never_share_a_lane() {
    let link = LinkConfig::new()
        .rate_mbps(50)
        .latency(Duration::from_millis(5));
    let mut p = pair(72, link, 1 << 20);
    // Four streams of priority 0 fit one lane (4 per lane by default).
    let zeros: Vec<StreamId> = (0..4).map(|_| p.open(None)).collect();
    for id in &zeros {
        p.write(*id, 0, 1000, false);
    }
    assert_eq!(p.lanes(), 1);
    // Each other priority gets a lane of its own, even with room left.
    let one = p.open(Some(1));
    p.write(one, 0, 1000, false);
    assert_eq!(p.lanes(), 2);
    let minus = p.open(Some(-5));
    p.write(minus, 0, 1000, false);
    assert_eq!(p.lanes(), 3);
    let other_one = p.open(Some(1));
    p.write(other_one, 0, 1000, false);
    assert_eq!(p.lanes(), 3, "same priority: the lane of priority 1");
    // A stream whose priority changes moves, between two records, to a
    // lane of its new priority (priority 1's has room): no lane is mixed,
    // and every byte arrives in order.
    let mover = zeros[0];
    {
        let h = p.session();
        let mut view = p.endpoint().stream(h, mover).unwrap();
        assert_eq!(view.priority(), Ok(0));
        view.set_priority(1).unwrap();
        assert_eq!(view.priority(), Ok(1));
    }
    p.write(mover, 1000, 300_000, true);
    assert_eq!(p.lanes(), 3);
    // Clamped below kwik's own streams.
    let top = p.open(Some(i32::MAX));
    {
        let h = p.session();
        let view = p.endpoint().stream(h, top).unwrap();
        assert_eq!(view.priority(), Ok(MAX_STREAM_PRIORITY));
    }
    p.write(top, 0, 1000, true);
    assert_eq!(p.lanes(), 4);
    for id in zeros[1..].iter().chain([&one, &minus, &other_one]) {
        p.write(*id, 1000, 2000, true);
    }
    p.run_until_read(mover, 300_000, Duration::from_secs(10));
    for id in zeros[1..].iter().chain([&one, &minus, &other_one]) {
        p.run_until_read(*id, 2000, Duration::from_secs(10));
    }
    p.sim.run_for(Duration::from_millis(200));
    assert_eq!(p.server().corrupt, 0);
    assert_eq!(p.server().finished_streams(), 8);
    // A released stream has no priority to set.
    let h = p.session();
    let closed = p.endpoint().session(h).unwrap().stream(mover).is_none();
    assert!(closed, "a finished and delivered stream is released");
}

/// Every event the client and the server saw and every datagram, as one
/// digest, for streams opened at `priority` (three at once, 512 KiB each).
fn equal_priority_trace(priority: Option<i32>) -> (u64, Duration) {
    let link = LinkConfig::new()
        .rate_mbps(20)
        .latency(Duration::from_millis(10))
        .loss(0.01);
    let mut p = pair(73, link, 1 << 20);
    p.sim.trace_mut().set_datagrams(true);
    let ids: Vec<StreamId> = (0..3).map(|_| p.open(priority)).collect();
    for id in &ids {
        p.write(*id, 0, 512 << 10, true);
    }
    let mut done = Duration::ZERO;
    for id in &ids {
        done = done.max(p.run_until_read(*id, 512 << 10, Duration::from_secs(30)));
    }
    assert_eq!(p.server().corrupt, 0);
    (p.sim.trace().digest(), done)
}

#[test]
fn equal_priorities_behave_exactly_as_the_default() {
    // Streams all at priority 4 are scheduled like streams all at the
    // default 0: the same lanes, the same packets, the same events.
    let (default, done) = equal_priority_trace(None);
    let (four, done_four) = equal_priority_trace(Some(4));
    assert_eq!(done, done_four);
    assert_eq!(default, four, "the runs differ");
}

#[test]
fn a_delegation_carries_the_priority_and_the_secondary_writes_at_it() {
    // The secondary serves an 8 MiB bulk range at priority 0 over 10 Mbit/s
    // (6.7 s of it, all queued in its QUIC connection at once); then the
    // primary delegates a small range of another stream at priority 9,
    // which the secondary's application writes by hand.
    let (priority_seen, bulk_then, took) = delegated_behind_bulk(9);
    assert_eq!(priority_seen, (9, Ok(9)));
    assert!(took <= Duration::from_millis(400), "took {took:?}");
    assert!(
        bulk_then < BULK_DELEGATED / 2,
        "{bulk_then} bulk bytes first"
    );
    // At the bulk's priority it waits behind the bulk data on their
    // shared lane.
    let (priority_seen, equal_bulk_then, equal_took) = delegated_behind_bulk(0);
    assert_eq!(priority_seen, (0, Ok(0)));
    assert_eq!(equal_bulk_then, BULK_DELEGATED, "FIFO behind the bulk");
    assert!(equal_took > took * 5, "{equal_took:?} vs {took:?}");
}

const BULK_DELEGATED: u64 = 8 << 20;
const SMALL: u64 = 16 << 10;

/// Returns the priority the secondary learnt (in its Delegated event and
/// on its stream), the bulk bytes the client had when the small range was
/// complete, and how long the small range took from its delegation.
fn delegated_behind_bulk(priority: i32) -> ((i32, Result<i32, StreamError>), u64, Duration) {
    let links = vec![ServerLink::new(100, 20), ServerLink::new(10, 20)];
    let mut s = MultiSetup::new(MultiOptions::new(74, links, BULK_DELEGATED), |p| {
        p.start = Start::Manual
    });
    s.run_until_primary(Duration::from_secs(10), |p| !p.added.is_empty());
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let path = *node.app.added.iter().next().unwrap();
    let mut view = node.endpoint.session(h).unwrap();
    let bulk = view.open(Dir::Uni).unwrap();
    assert_eq!(bulk, first_server_stream());
    let small = view.open(Dir::Uni).unwrap();
    view.stream(small).unwrap().set_priority(priority).unwrap();
    view.delegate(
        path,
        bulk,
        0..BULK_DELEGATED,
        true,
        Bytes::from_static(DESCRIPTOR),
    )
    .expect("delegated");
    s.sim.touch(s.primary);
    s.sim.run_for(Duration::from_millis(500));
    let node = s.primary_node();
    let mut view = node.endpoint.session(h).unwrap();
    view.delegate(path, small, 0..SMALL, true, Bytes::from_static(b"by-hand"))
        .expect("delegated");
    let delegated_at = s.sim.elapsed();
    s.sim.touch(s.primary);
    let secondary = s.secondaries[0];
    s.sim
        .run_while(Duration::from_secs(5), |sim| {
            sim.node::<KwikNode<SecondaryApp>>(secondary)
                .app
                .delegated
                .is_empty()
        })
        .expect("the secondary is delegated the small range");
    // The secondary's application writes it.
    let payload = Payload::new(74);
    let node = s.sim.node_mut::<KwikNode<SecondaryApp>>(secondary);
    let d = node.app.delegated[0].clone();
    assert_eq!((d.stream, d.range.clone()), (small, 0..SMALL));
    let session = node.app.joined[0].0;
    let on_stream = node
        .endpoint
        .stream(session, small)
        .expect("delegated stream")
        .priority();
    let mut data = payload.chunk(small, 0, SMALL as usize);
    let mut view = node.endpoint.session(session).unwrap();
    let mut at = 0;
    while !data.is_empty() {
        match view.write_at(small, at, &mut data, true) {
            Ok(n) => at += n as u64,
            Err(WriteError::Blocked) => panic!("credit covers the range"),
            Err(e) => panic!("write_at: {e:?}"),
        }
    }
    s.sim.touch(secondary);
    let done = s.run_until_client(Duration::from_secs(30), |c| c.finished.contains(&small));
    let bulk_then = s.client().read.get(&bulk).copied().unwrap_or(0);
    s.run_until_client(Duration::from_secs(30), |c| c.finished.contains(&bulk));
    assert_eq!(s.client().corrupt, 0);
    ((d.priority, on_stream), bulk_then, done - delegated_at)
}

const SERVED: u64 = 16 << 20;

/// The primary serves two 16 MiB resources at once, on two streams, from
/// itself and one secondary (50 Mbit/s each); the second stream at
/// `second_priority`, the first at 0. Returns when the client had each.
fn two_transfers(second_priority: i32) -> (Duration, Duration) {
    let links = vec![ServerLink::new(50, 20), ServerLink::new(50, 20)];
    let mut s = MultiSetup::new(MultiOptions::new(75, links, SERVED), |p| {
        p.start = Start::Manual
    });
    let second = StreamId::new(Side::Server, Dir::Uni, 1);
    let other = Arc::new(PayloadResource::new(Payload::new(75), second, SERVED));
    s.sim
        .node_mut::<KwikNode<SecondaryApp>>(s.secondaries[0])
        .endpoint
        .serve_resource(Bytes::from_static(b"resource-2"), other.clone());
    s.run_until_primary(Duration::from_secs(10), |p| !p.added.is_empty());
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let first_resource = Arc::new(PayloadResource::new(
        Payload::new(75),
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
    // When the client had each stream whole: the earlier one first.
    let mut done = [None; 2];
    for _ in 0..2 {
        let at = s.run_until_client(Duration::from_secs(60), |c| {
            [first, second]
                .iter()
                .zip(done)
                .any(|(id, d)| d.is_none() && c.finished.contains(id))
        }) - start;
        for (i, id) in [first, second].iter().enumerate() {
            if done[i].is_none() && s.client().finished.contains(id) {
                done[i] = Some(at);
            }
        }
    }
    let [Some(first_done), Some(second_done)] = done else {
        panic!("both streams end: {done:?}");
    };
    let c = s.client();
    assert_eq!(c.corrupt, 0, "every byte identical");
    assert_eq!(c.read.get(&first).copied(), Some(SERVED));
    assert_eq!(c.read.get(&second).copied(), Some(SERVED));
    (first_done, second_done)
}

#[test]
fn the_paths_serve_the_higher_priority_transfer_first() {
    // At equal priority the two transfers share the paths and end together.
    let (a, b) = two_transfers(0);
    let (early, late) = (a.min(b), a.max(b));
    assert!(
        early.as_secs_f64() > 0.8 * late.as_secs_f64(),
        "equal priorities: {a:?} and {b:?}"
    );
    // The second stream at priority 5 gets the paths' budgets first (from
    // the primary and the secondary alike) and ends well before the first,
    // which still ends no later than the pair did.
    let (low, high) = two_transfers(5);
    assert!(
        high.as_secs_f64() < 0.65 * low.as_secs_f64(),
        "priority 5 at {high:?}, priority 0 at {low:?}"
    );
    assert!(
        low.as_secs_f64() < 1.15 * late.as_secs_f64(),
        "{low:?} vs {late:?}"
    );
}
