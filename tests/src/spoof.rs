//! An off-path attacker that replays captured datagrams under a forged
//! source address.
//!
//! Nobody may trust an unauthenticated datagram: a copy of a genuine packet
//! sent again, with the genuine sender's address as its source, must not
//! count as a sign of life of that sender. [`Replayer`] is that attacker. It
//! is given datagrams captured earlier (see [`Sim::tap`](crate::Sim::tap)),
//! the address to forge and a destination, and once started it sends one of
//! them, in turn, every `interval` of virtual time, until stopped.
//!
//! The simulator lets a node put another node's address in
//! [`Transmit::src`]: such a spoofed datagram is dropped only if the
//! *sending* node is down, so it still flows after the forged host died.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::node::{Node, Transmit};

/// Replays captured datagrams with a forged source. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Replayer {
    forged_src: SocketAddr,
    dst: SocketAddr,
    datagrams: Vec<Bytes>,
    interval: Duration,
    next: Option<Instant>,
    due: bool,
    index: usize,
    sent: u64,
}

impl Replayer {
    /// An idle attacker that will send `datagrams` (in order, round and
    /// round) to `dst` as if from `forged_src`, one every `interval`.
    ///
    /// # Panics
    /// If `datagrams` is empty or `interval` is zero.
    pub fn new(
        forged_src: SocketAddr,
        dst: SocketAddr,
        datagrams: Vec<Bytes>,
        interval: Duration,
    ) -> Self {
        assert!(!datagrams.is_empty(), "nothing to replay");
        assert!(
            !interval.is_zero(),
            "a zero interval would never let time move"
        );
        Replayer {
            forged_src,
            dst,
            datagrams,
            interval,
            next: None,
            due: false,
            index: 0,
            sent: 0,
        }
    }

    /// Starts replaying at `at` (the node must be touched for the deadline
    /// to be seen; `Sim::node_mut` does that).
    pub fn start(&mut self, at: Instant) {
        self.next = Some(at);
    }

    /// Stops replaying.
    pub fn stop(&mut self) {
        self.next = None;
        self.due = false;
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

impl Node for Replayer {
    fn receive(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: BytesMut) {}

    fn handle_timeout(&mut self, now: Instant) {
        if self.next.is_some_and(|t| t <= now) {
            self.due = true;
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !std::mem::take(&mut self.due) {
            return None;
        }
        let datagram = &self.datagrams[self.index % self.datagrams.len()];
        buf.extend_from_slice(datagram);
        self.index += 1;
        self.sent += 1;
        self.next = self.next.map(|t| t.max(now) + self.interval);
        Some(Transmit {
            src: self.forged_src,
            dst: self.dst,
            segment_size: None,
        })
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::addr;
    use crate::sim::Sim;
    use crate::trace::Trace;

    /// Records what reaches it; sends one datagram of its own when asked.
    #[derive(Default)]
    struct Host {
        got: Vec<(SocketAddr, Bytes)>,
        send: Option<SocketAddr>,
    }

    impl Node for Host {
        fn receive(&mut self, _: Instant, _: SocketAddr, remote: SocketAddr, d: BytesMut) {
            self.got.push((remote, d.freeze()));
        }
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self, _: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
            let dst = self.send.take()?;
            buf.extend_from_slice(b"own");
            Some(Transmit {
                src: addr(2),
                dst,
                segment_size: None,
            })
        }
        fn poll_timeout(&mut self) -> Option<Instant> {
            None
        }
        fn step(&mut self, _: Instant, _: &mut Trace) {}
    }

    #[test]
    fn spoofed_datagrams_outlive_the_forged_host_and_taps_keep_the_latest() {
        let mut sim = Sim::new(1);
        let victim = sim.add_node(&[addr(1)], Box::new(Host::default()));
        let dead = sim.add_node(&[addr(2)], Box::new(Host::default()));
        let captured: Vec<Bytes> = (0u8..3).map(|i| Bytes::from(vec![i; 8])).collect();
        let attacker = sim.add_node(
            &[addr(3)],
            Box::new(Replayer::new(
                addr(2),
                addr(1),
                captured,
                Duration::from_millis(20),
            )),
        );
        sim.tap(addr(2), addr(1), 2);
        sim.set_down(addr(2), true);
        // The dead host's own datagram is dropped …
        sim.node_mut::<Host>(dead).send = Some(addr(1));
        // … the forged ones are not.
        let now = sim.now();
        sim.node_mut::<Replayer>(attacker).start(now);
        sim.run_for(Duration::from_millis(95));
        let got = &sim.node::<Host>(victim).got;
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got.iter().all(|(src, _)| *src == addr(2)));
        let firsts: Vec<u8> = got.iter().map(|(_, d)| d[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1], "replayed in turn");
        assert_eq!(sim.node::<Replayer>(attacker).sent(), 5);
        // The tap saw all six sends from addr(2) and kept the latest two.
        assert_eq!(sim.tapped_count(addr(2), addr(1)), 6);
        let kept: Vec<u8> = sim.tapped(addr(2), addr(1)).iter().map(|d| d[0]).collect();
        assert_eq!(kept, [0, 1]);
        sim.node_mut::<Replayer>(attacker).stop();
        sim.run_for(Duration::from_millis(100));
        assert_eq!(sim.node::<Host>(victim).got.len(), 5, "stopped");
        assert_eq!(sim.untap(addr(2), addr(1)).len(), 2);
        assert!(sim.tapped(addr(2), addr(1)).is_empty());
    }
}
