//! Link-model and event-loop behaviour of the simulator, checked with
//! scripted nodes whose send times and sizes are known exactly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kwik_sim::{LinkConfig, Node, Sim, StallReason, Trace, Transmit};

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 4433))
}

const MS: Duration = Duration::from_millis(1);

/// Sends scripted datagrams: `(send time from sim start, size)`, each
/// carrying its index in the first 8 bytes. Optionally as GSO batches.
struct Sender {
    start: Instant,
    src: SocketAddr,
    dst: SocketAddr,
    script: Vec<(Duration, usize)>,
    next: usize,
    gso: Option<usize>,
}

impl Sender {
    fn new(sim: &Sim, src: SocketAddr, dst: SocketAddr, script: Vec<(Duration, usize)>) -> Self {
        Sender {
            start: sim.start(),
            src,
            dst,
            script,
            next: 0,
            gso: None,
        }
    }

    /// `count` datagrams of `size` bytes, the i-th sent at `i × every`.
    fn periodic(sim: &Sim, dst: SocketAddr, count: usize, size: usize, every: Duration) -> Self {
        let script = (0..count).map(|i| (every * i as u32, size)).collect();
        Sender::new(sim, addr(1), dst, script)
    }
}

impl Node for Sender {
    fn receive(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: BytesMut) {}

    fn handle_timeout(&mut self, _: Instant) {}

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (at, size) = *self.script.get(self.next)?;
        if self.start + at > now {
            return None;
        }
        let batch = self.gso.unwrap_or(1);
        let mut segments = 0;
        while segments < batch {
            match self.script.get(self.next) {
                Some(&(at2, size2)) if self.start + at2 <= now && size2 == size => {
                    let mut d = vec![0u8; size];
                    d[..8].copy_from_slice(&(self.next as u64).to_le_bytes());
                    buf.extend_from_slice(&d);
                    self.next += 1;
                    segments += 1;
                }
                _ => break,
            }
        }
        Some(Transmit {
            src: self.src,
            dst: self.dst,
            segment_size: (segments > 1).then_some(size),
        })
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.script.get(self.next).map(|&(at, _)| self.start + at)
    }

    fn done(&self) -> bool {
        self.next == self.script.len()
    }
}

/// Records every arrival: (time from sim start, index, size).
struct Sink {
    start: Instant,
    arrivals: Vec<(Duration, u64, usize)>,
}

impl Sink {
    fn new(sim: &Sim) -> Self {
        Sink {
            start: sim.start(),
            arrivals: Vec::new(),
        }
    }

    fn indices(&self) -> Vec<u64> {
        self.arrivals.iter().map(|a| a.1).collect()
    }
}

impl Node for Sink {
    fn receive(&mut self, now: Instant, _: SocketAddr, _: SocketAddr, d: BytesMut) {
        let idx = u64::from_le_bytes(d[..8].try_into().unwrap());
        self.arrivals.push((now - self.start, idx, d.len()));
    }

    fn handle_timeout(&mut self, _: Instant) {}

    fn poll_transmit(&mut self, _: Instant, _: &mut Vec<u8>) -> Option<Transmit> {
        None
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }

    fn step(&mut self, now: Instant, trace: &mut Trace) {
        if let Some(a) = self.arrivals.last() {
            trace.record(now, format_args!("got {} ({} bytes)", a.1, a.2));
        }
    }
}

/// A sender → sink pair over `cfg`; returns the sim and the sink id.
fn pair(
    seed: u64,
    cfg: LinkConfig,
    sender: impl FnOnce(&Sim) -> Sender,
) -> (Sim, kwik_sim::NodeId) {
    let mut sim = Sim::new(seed);
    sim.set_link(addr(1), addr(2), cfg);
    let s = sender(&sim);
    sim.add_node(&[addr(1)], Box::new(s));
    let sink = Sink::new(&sim);
    let id = sim.add_node(&[addr(2)], Box::new(sink));
    (sim, id)
}

#[test]
fn rate_limited_link_delivers_at_configured_rate() {
    // 10 Mbit/s: a 1250-byte datagram takes exactly 1 ms to serialize.
    let cfg = LinkConfig::new()
        .latency(5 * MS)
        .rate_bps(10_000_000)
        .buffer_bytes(1 << 20);
    let (mut sim, sink) = pair(1, cfg, |sim| {
        Sender::periodic(sim, addr(2), 200, 1250, Duration::ZERO)
    });
    sim.run_until_done(Duration::from_secs(10)).unwrap();
    sim.run_for(Duration::from_secs(1));
    let a = &sim.node::<Sink>(sink).arrivals;
    assert_eq!(a.len(), 200);
    for (i, &(at, idx, size)) in a.iter().enumerate() {
        assert_eq!(idx, i as u64, "FIFO order");
        assert_eq!(size, 1250);
        assert_eq!(at, 5 * MS + MS * (i as u32 + 1), "arrival {i}");
    }
    // Measured rate from first to last arrival.
    let span = a.last().unwrap().0 - a[0].0;
    let bits = 199.0 * 1250.0 * 8.0;
    let rate = bits / span.as_secs_f64();
    assert!((rate - 10e6).abs() < 1.0, "measured {rate} bit/s");
    let st = sim.link_stats(addr(1), addr(2));
    assert_eq!((st.sent, st.delivered, st.dropped()), (200, 200, 0));
    assert_eq!(st.bytes_delivered, 200 * 1250);
}

#[test]
fn unshaped_latency_is_exact() {
    let cfg = LinkConfig::new().latency(Duration::from_micros(7_123));
    let script = vec![
        (Duration::ZERO, 100),
        (3 * MS, 1472),
        (3 * MS, 64),
        (50 * MS, 8),
    ];
    let (mut sim, sink) = pair(1, cfg, |sim| Sender::new(sim, addr(1), addr(2), script));
    sim.run_for(Duration::from_secs(1));
    let lat = Duration::from_micros(7_123);
    assert_eq!(
        sim.node::<Sink>(sink).arrivals,
        vec![
            (lat, 0, 100),
            (3 * MS + lat, 1, 1472),
            (3 * MS + lat, 2, 64),
            (50 * MS + lat, 3, 8),
        ]
    );
    assert_eq!(sim.elapsed(), Duration::from_secs(1));
}

#[test]
fn buffer_overflow_drops_tail() {
    // Buffer of ten 1250-byte datagrams at 10 Mbit/s: a burst of 30 keeps
    // exactly 10 (the backlog counts bytes not yet serialized).
    let cfg = LinkConfig::new()
        .latency(MS)
        .rate_bps(10_000_000)
        .buffer_bytes(10 * 1250);
    let mut script: Vec<_> = (0..30).map(|_| (Duration::ZERO, 1250)).collect();
    // After 4 ms, 4 datagrams have left: room for exactly 4 more.
    script.extend((0..6).map(|_| (4 * MS, 1250)));
    let (mut sim, sink) = pair(1, cfg, |sim| Sender::new(sim, addr(1), addr(2), script));
    sim.run_for(Duration::from_secs(1));
    let st = sim.link_stats(addr(1), addr(2));
    assert_eq!(st.sent, 36);
    assert_eq!(st.dropped_queue, 22);
    assert_eq!(st.delivered, 14);
    let idx = sim.node::<Sink>(sink).indices();
    let expected: Vec<u64> = (0..10).chain(30..34).collect();
    assert_eq!(idx, expected);
    // The queue never exceeded the buffer: the last one left 14 ms in.
    assert_eq!(sim.node::<Sink>(sink).arrivals.last().unwrap().0, 15 * MS);
}

#[test]
fn default_buffer_is_one_bdp_with_floor() {
    let bdp = LinkConfig::new()
        .rate_bps(100_000_000)
        .latency(20 * MS)
        .effective_buffer_bytes();
    assert_eq!(bdp, 500_000);
    let floor = LinkConfig::new()
        .rate_bps(1_000_000)
        .latency(MS)
        .effective_buffer_bytes();
    assert_eq!(floor, 16 * 1500);
}

#[test]
fn blackhole_drops_exactly_inside_window() {
    let cfg = LinkConfig::new()
        .latency(3 * MS)
        .blackhole(100 * MS, 200 * MS)
        .blackhole(250 * MS, 251 * MS);
    let (mut sim, sink) = pair(1, cfg, |sim| Sender::periodic(sim, addr(2), 301, 100, MS));
    sim.run_for(Duration::from_secs(1));
    let idx = sim.node::<Sink>(sink).indices();
    let expected: Vec<u64> = (0..301)
        .filter(|&i| !(100..200).contains(&i) && i != 250)
        .collect();
    assert_eq!(idx, expected);
    let st = sim.link_stats(addr(1), addr(2));
    assert_eq!(st.dropped_blackhole, 101);
    assert_eq!(st.delivered, 200);
}

#[test]
fn duplication_delivers_twice() {
    let cfg = LinkConfig::new().latency(2 * MS).duplicate(1.0);
    let (mut sim, sink) = pair(1, cfg, |sim| Sender::periodic(sim, addr(2), 50, 200, MS));
    sim.run_for(Duration::from_secs(1));
    let idx = sim.node::<Sink>(sink).indices();
    let expected: Vec<u64> = (0..50).flat_map(|i| [i, i]).collect();
    assert_eq!(idx, expected);
    let st = sim.link_stats(addr(1), addr(2));
    assert_eq!((st.sent, st.duplicated, st.delivered), (50, 50, 100));

    // At 10 %, roughly a tenth.
    let cfg = LinkConfig::new().latency(2 * MS).duplicate(0.1);
    let (mut sim, _) = pair(3, cfg, |sim| Sender::periodic(sim, addr(2), 2000, 200, MS));
    sim.run_for(Duration::from_secs(3));
    let st = sim.link_stats(addr(1), addr(2));
    assert!((120..=280).contains(&st.duplicated), "{st:?}");
    assert_eq!(st.delivered, 2000 + st.duplicated);
}

#[test]
fn random_loss_matches_probability() {
    let cfg = LinkConfig::new().latency(MS).loss(0.05);
    let (mut sim, sink) = pair(9, cfg, |sim| {
        Sender::periodic(sim, addr(2), 10_000, 100, Duration::from_micros(100))
    });
    sim.run_for(Duration::from_secs(2));
    let st = sim.link_stats(addr(1), addr(2));
    assert!((400..=600).contains(&st.dropped_loss), "{st:?}");
    assert_eq!(st.delivered + st.dropped_loss, 10_000);
    assert_eq!(sim.node::<Sink>(sink).arrivals.len() as u64, st.delivered);
}

#[test]
fn oversized_datagrams_are_dropped() {
    let cfg = LinkConfig::new().max_datagram(1200);
    let script = vec![(Duration::ZERO, 1200), (MS, 1201), (2 * MS, 1472)];
    let (mut sim, sink) = pair(1, cfg, |sim| Sender::new(sim, addr(1), addr(2), script));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.node::<Sink>(sink).indices(), vec![0]);
    assert_eq!(sim.link_stats(addr(1), addr(2)).dropped_size, 2);
}

#[test]
fn gso_batches_are_split_into_datagrams() {
    let cfg = LinkConfig::new()
        .latency(MS)
        .rate_bps(12_000_000)
        .buffer_bytes(1 << 20)
        .max_datagram(1500);
    let (mut sim, sink) = pair(1, cfg, |sim| {
        let mut s = Sender::periodic(sim, addr(2), 25, 1500, Duration::ZERO);
        s.gso = Some(10);
        s
    });
    sim.run_for(Duration::from_secs(1));
    let a = &sim.node::<Sink>(sink).arrivals;
    assert_eq!(a.len(), 25);
    // 1500 bytes at 12 Mbit/s = 1 ms each, one after the other.
    for (i, &(at, idx, size)) in a.iter().enumerate() {
        assert_eq!((idx, size), (i as u64, 1500));
        assert_eq!(at, MS * (i as u32 + 2));
    }
}

#[test]
fn set_down_drops_in_flight_and_new_datagrams() {
    let cfg = LinkConfig::new().latency(10 * MS);
    let (mut sim, sink) = pair(1, cfg, |sim| Sender::periodic(sim, addr(2), 100, 100, MS));
    sim.run_until(Duration::from_millis(49));
    // Sent at 0..=49 ms, delivered those sent at 0..=39.
    assert_eq!(sim.node::<Sink>(sink).arrivals.len(), 40);
    sim.set_down(addr(2), true);
    sim.run_until(Duration::from_millis(79));
    assert_eq!(sim.node::<Sink>(sink).arrivals.len(), 40);
    sim.set_down(addr(2), false);
    sim.run_for(Duration::from_secs(1));
    let idx = sim.node::<Sink>(sink).indices();
    let expected: Vec<u64> = (0..40).chain(80..100).collect();
    assert_eq!(idx, expected);
    let st = sim.link_stats(addr(1), addr(2));
    assert_eq!(st.dropped_blackhole, 40);
}

#[test]
fn unroutable_datagrams_are_counted() {
    let mut sim = Sim::new(1);
    let s = Sender::periodic(&sim, addr(99), 5, 100, MS);
    sim.add_node(&[addr(1)], Box::new(s));
    assert_eq!(sim.run_until_done(Duration::from_secs(1)), Ok(4 * MS));
    assert_eq!(sim.unroutable(), 5);
    let err = sim.run_until_done(Duration::from_secs(1));
    assert_eq!(err, Ok(4 * MS));
}

#[test]
fn run_until_done_reports_stalls() {
    // A sink never sends and has no deadline: idle immediately.
    struct Waiting;
    impl Node for Waiting {
        fn receive(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: BytesMut) {}
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self, _: Instant, _: &mut Vec<u8>) -> Option<Transmit> {
            None
        }
        fn poll_timeout(&mut self) -> Option<Instant> {
            None
        }
        fn done(&self) -> bool {
            false
        }
    }
    let mut sim = Sim::new(1);
    sim.add_node(&[addr(2)], Box::new(Waiting));
    let err = sim.run_until_done(Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.reason, StallReason::Idle);

    // A sender that is still sending when the limit hits.
    let mut sim = Sim::new(1);
    let s = Sender::periodic(&sim, addr(2), 100, 100, 100 * MS);
    sim.add_node(&[addr(1)], Box::new(s));
    sim.add_node(&[addr(2)], Box::new(Sink::new(&sim)));
    let err = sim.run_until_done(Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.reason, StallReason::TimeLimit);
    assert_eq!(err.elapsed, Duration::from_secs(1));
}

/// A lossy, jittery, duplicating, shaped scenario; returns the trace digest
/// and the order in which the sink saw datagrams.
fn noisy_run(seed: u64) -> (u64, Vec<u64>) {
    let cfg = LinkConfig::new()
        .latency(5 * MS)
        .rate_bps(50_000_000)
        .buffer_bytes(40 * 1000)
        .loss(0.05)
        .jitter(2 * MS)
        .duplicate(0.05);
    let (mut sim, sink) = pair(seed, cfg, |sim| {
        Sender::periodic(sim, addr(2), 2000, 1000, Duration::from_micros(150))
    });
    sim.trace_mut().set_datagrams(true);
    sim.run_for(Duration::from_secs(2));
    (sim.trace().digest(), sim.node::<Sink>(sink).indices())
}

#[test]
fn same_seed_same_trace_different_seed_differs() {
    let (d1, order1) = noisy_run(42);
    let (d2, order2) = noisy_run(42);
    assert_eq!(d1, d2);
    assert_eq!(order1, order2);
    let (d3, order3) = noisy_run(43);
    assert_ne!(d1, d3);
    assert_ne!(order1, order3);
    // Jitter reorders.
    assert!(order1.windows(2).any(|w| w[1] < w[0]), "no reordering");
}

#[test]
fn node_mut_between_runs_is_stepped_and_drained() {
    let mut sim = Sim::new(1);
    sim.set_default_link(LinkConfig::new().latency(MS));
    let s = Sender::new(&sim, addr(1), addr(2), Vec::new());
    let sender = sim.add_node(&[addr(1)], Box::new(s));
    let sink = sim.add_node(&[addr(2)], Box::new(Sink::new(&sim)));
    sim.run_until(10 * MS);
    assert!(sim.node::<Sink>(sink).arrivals.is_empty());
    // Script a datagram "now" from outside: it must leave immediately.
    sim.node_mut::<Sender>(sender).script.push((10 * MS, 64));
    sim.run_until(20 * MS);
    assert_eq!(sim.node::<Sink>(sink).arrivals, vec![(11 * MS, 0, 64)]);
    let lines: Vec<String> = sim.trace().lines().iter().map(|l| l.to_string()).collect();
    assert_eq!(
        lines,
        vec!["    11.000000ms n1 got 0 (64 bytes)".to_string()]
    );
}
