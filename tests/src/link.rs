//! The link model: one direction of a path between two addresses.
//!
//! Each direction is a FIFO drop-tail bottleneck followed by a wire. This is
//! the smallest model that reproduces what matters to a transport under
//! test: a fixed propagation delay, a serialization rate that paces packets
//! and builds a queue, a finite buffer that punishes overshoot (so slow-start
//! overshoot really costs), plus the adversities we want to test against —
//! random loss, reordering through jitter, duplication, and outages.
//!
//! Model, for a datagram of `size` bytes handed to the link at time `t`:
//!
//! 1. dropped (`size`) if `size > max_datagram`;
//! 2. dropped (`blackhole`) if `t` lies in a blackhole window `[t1, t2)`
//!    (measured from the start of the simulation);
//! 3. if the link is shaped (`rate_bps` set): the backlog is the number of
//!    bytes not yet serialized at `t`; dropped (`queue`) if
//!    `backlog + size > buffer`; otherwise serialization starts at
//!    `max(t, busy_until)` and finishes `size · 8 / rate` later. Unshaped
//!    links finish at `t`;
//! 4. dropped (`loss`) with probability `loss` — on the wire, after having
//!    used the bottleneck;
//! 5. otherwise it arrives at `finish + latency + U[0, jitter)`; with
//!    probability `duplicate` a second copy arrives at
//!    `finish + latency + U[0, jitter)` (an independent draw). The copy is
//!    made past the bottleneck, so it does not use link capacity;
//! 6. with probability `corrupt` the first copy arrives with one to three of
//!    its bytes flipped (each a uniform position and a non-zero XOR mask);
//!    then the same, independently, for the duplicate if there is one. A
//!    corrupted datagram keeps its length and timing.
//!
//! Random draws happen in exactly that order and only for features that are
//! switched on, from the simulator's single seeded generator, so the outcome
//! depends only on the seed and the sequence of sends.

use std::time::Duration;

use rand::RngExt;
use rand::rngs::StdRng;

/// Configuration of one direction of a link. Builder-style: start from
/// [`LinkConfig::default`] (10 ms, unshaped, lossless) and chain setters.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Bottleneck rate in bits per second; `None` = unshaped (no queue).
    pub rate_bps: Option<u64>,
    /// Drop-tail buffer in bytes; `None` = one BDP (rate × 2 × latency),
    /// at least 16 × 1500 bytes. Ignored on unshaped links.
    pub buffer_bytes: Option<usize>,
    /// Probability that a datagram is lost on the wire.
    pub loss: f64,
    /// Extra uniform random delay in `[0, jitter)` per datagram; reorders.
    pub jitter: Duration,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a delivered copy of a datagram has bytes flipped.
    pub corrupt: f64,
    /// Windows `[t1, t2)`, measured from the start of the simulation, during
    /// which every datagram sent on the link is dropped.
    pub blackholes: Vec<(Duration, Duration)>,
    /// Largest datagram carried; bigger ones are dropped.
    pub max_datagram: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            rate_bps: None,
            buffer_bytes: None,
            loss: 0.0,
            jitter: Duration::ZERO,
            duplicate: 0.0,
            corrupt: 0.0,
            blackholes: Vec::new(),
            max_datagram: 1472,
        }
    }
}

impl LinkConfig {
    /// Same as [`LinkConfig::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the one-way propagation delay.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Shapes the link to `bps` bits per second.
    pub fn rate_bps(mut self, bps: u64) -> Self {
        self.rate_bps = Some(bps);
        self
    }

    /// Shapes the link to `mbps` megabits (10⁶ bits) per second.
    pub fn rate_mbps(self, mbps: u64) -> Self {
        self.rate_bps(mbps * 1_000_000)
    }

    /// Sets the drop-tail buffer size in bytes.
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = Some(bytes);
        self
    }

    /// Sets the random loss probability.
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }

    /// Sets the maximum extra uniform random delay.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the duplication probability.
    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// Sets the probability that a delivered copy is corrupted (one to
    /// three bytes flipped).
    pub fn corrupt(mut self, p: f64) -> Self {
        self.corrupt = p;
        self
    }

    /// Adds an outage window `[from, to)` measured from the simulation start.
    pub fn blackhole(mut self, from: Duration, to: Duration) -> Self {
        self.blackholes.push((from, to));
        self
    }

    /// Sets the largest datagram the link carries.
    pub fn max_datagram(mut self, bytes: usize) -> Self {
        self.max_datagram = bytes;
        self
    }

    /// The buffer actually used: the configured one, or one BDP
    /// (rate × 2 × latency) with a floor of 16 × 1500 bytes.
    pub fn effective_buffer_bytes(&self) -> usize {
        if let Some(b) = self.buffer_bytes {
            return b;
        }
        let bdp = match self.rate_bps {
            Some(rate) => {
                (u128::from(rate) * 2 * self.latency.as_nanos() / 8 / 1_000_000_000) as usize
            }
            None => 0,
        };
        bdp.max(16 * 1500)
    }
}

/// Per-direction counters. Counts are datagrams unless named `bytes_*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams handed to the link.
    pub sent: u64,
    /// Datagrams handed to the receiving node (duplicates included).
    pub delivered: u64,
    /// Extra copies created by duplication.
    pub duplicated: u64,
    /// Copies delivered with flipped bytes (counted in `delivered` too).
    pub corrupted: u64,
    /// Dropped by random loss.
    pub dropped_loss: u64,
    /// Dropped because the bottleneck buffer was full.
    pub dropped_queue: u64,
    /// Dropped by a blackhole window or because an end was set down.
    pub dropped_blackhole: u64,
    /// Dropped for exceeding `max_datagram`.
    pub dropped_size: u64,
    /// Bytes handed to the link.
    pub bytes_sent: u64,
    /// Bytes handed to the receiving node (duplicates included).
    pub bytes_delivered: u64,
}

impl LinkStats {
    /// All drops, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_queue + self.dropped_blackhole + self.dropped_size
    }

    /// Adds `other` into `self` field by field.
    pub fn accumulate(&mut self, other: &LinkStats) {
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.duplicated += other.duplicated;
        self.corrupted += other.corrupted;
        self.dropped_loss += other.dropped_loss;
        self.dropped_queue += other.dropped_queue;
        self.dropped_blackhole += other.dropped_blackhole;
        self.dropped_size += other.dropped_size;
        self.bytes_sent += other.bytes_sent;
        self.bytes_delivered += other.bytes_delivered;
    }
}

/// Why a link dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    Size,
    Blackhole,
    Queue,
    Loss,
}

impl DropReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::Size => "size",
            DropReason::Blackhole => "blackhole",
            DropReason::Queue => "queue",
            DropReason::Loss => "loss",
        }
    }
}

/// Most bytes one corruption flips.
const MAX_FLIPS: usize = 3;

/// Bytes to flip in one delivered copy: `(position, XOR mask)` pairs, the
/// mask never zero. Positions lie inside the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Corruption {
    count: u8,
    flips: [(u32, u8); MAX_FLIPS],
}

impl Corruption {
    /// True if nothing is flipped.
    pub(crate) fn is_none(&self) -> bool {
        self.count == 0
    }

    /// Flips the chosen bytes of `data`.
    pub(crate) fn apply(&self, data: &mut [u8]) {
        for &(at, mask) in &self.flips[..usize::from(self.count)] {
            if let Some(b) = data.get_mut(at as usize) {
                *b ^= mask;
            }
        }
    }
}

/// Outcome of handing a datagram to a link (times in ns since sim start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Drop(DropReason),
    Deliver {
        at: u64,
        duplicate_at: Option<u64>,
        /// Bytes flipped in the first copy.
        corrupt: Corruption,
        /// Bytes flipped in the duplicate.
        duplicate_corrupt: Corruption,
    },
}

/// State of one direction of a link.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) cfg: LinkConfig,
    /// Set by `Sim::set_link`: the default link config no longer applies.
    pub(crate) explicit: bool,
    pub(crate) stats: LinkStats,
    /// Virtual time (ns) at which the serializer becomes idle.
    busy_until: u64,
    buffer: usize,
    latency_ns: u64,
    jitter_ns: u64,
    blackholes_ns: Vec<(u64, u64)>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Link {
    pub(crate) fn new(cfg: LinkConfig, explicit: bool) -> Self {
        let mut link = Link {
            cfg: LinkConfig::default(),
            explicit,
            stats: LinkStats::default(),
            busy_until: 0,
            buffer: 0,
            latency_ns: 0,
            jitter_ns: 0,
            blackholes_ns: Vec::new(),
        };
        link.reconfigure(cfg);
        link
    }

    /// Replaces the configuration, keeping counters and the serializer state.
    pub(crate) fn reconfigure(&mut self, cfg: LinkConfig) {
        self.buffer = cfg.effective_buffer_bytes();
        self.latency_ns = nanos(cfg.latency);
        self.jitter_ns = nanos(cfg.jitter);
        self.blackholes_ns = cfg
            .blackholes
            .iter()
            .map(|&(a, b)| (nanos(a), nanos(b)))
            .collect();
        self.cfg = cfg;
    }

    /// Hands a datagram of `size` bytes to the link at `now` (ns since sim
    /// start) and decides its fate. Updates every counter except
    /// `delivered`, which the simulator counts on actual delivery.
    pub(crate) fn send(&mut self, now: u64, size: usize, rng: &mut StdRng) -> Verdict {
        self.stats.sent += 1;
        self.stats.bytes_sent += size as u64;
        if size > self.cfg.max_datagram {
            self.stats.dropped_size += 1;
            return Verdict::Drop(DropReason::Size);
        }
        if self
            .blackholes_ns
            .iter()
            .any(|&(from, to)| from <= now && now < to)
        {
            self.stats.dropped_blackhole += 1;
            return Verdict::Drop(DropReason::Blackhole);
        }
        let finish = match self.cfg.rate_bps {
            Some(rate) => {
                let backlog_ns = self.busy_until.saturating_sub(now);
                let backlog_bytes = u128::from(backlog_ns) * u128::from(rate) / 8_000_000_000;
                if backlog_bytes + size as u128 > self.buffer as u128 {
                    self.stats.dropped_queue += 1;
                    return Verdict::Drop(DropReason::Queue);
                }
                let start = now.max(self.busy_until);
                let tx_ns = (size as u128 * 8_000_000_000).div_ceil(u128::from(rate.max(1)));
                self.busy_until = start + tx_ns as u64;
                self.busy_until
            }
            None => now,
        };
        if self.cfg.loss > 0.0 && rng.random_bool(self.cfg.loss.min(1.0)) {
            self.stats.dropped_loss += 1;
            return Verdict::Drop(DropReason::Loss);
        }
        let at = finish + self.latency_ns + self.jitter(rng);
        let duplicate_at =
            if self.cfg.duplicate > 0.0 && rng.random_bool(self.cfg.duplicate.min(1.0)) {
                self.stats.duplicated += 1;
                Some(finish + self.latency_ns + self.jitter(rng))
            } else {
                None
            };
        let corrupt = self.corruption(size, rng);
        let duplicate_corrupt = match duplicate_at {
            Some(_) => self.corruption(size, rng),
            None => Corruption::default(),
        };
        Verdict::Deliver {
            at,
            duplicate_at,
            corrupt,
            duplicate_corrupt,
        }
    }

    /// Draws whether one delivered copy of `size` bytes is corrupted, and
    /// how (no draw at all when corruption is off).
    fn corruption(&mut self, size: usize, rng: &mut StdRng) -> Corruption {
        let mut c = Corruption::default();
        if self.cfg.corrupt <= 0.0 || size == 0 || !rng.random_bool(self.cfg.corrupt.min(1.0)) {
            return c;
        }
        self.stats.corrupted += 1;
        let n = rng.random_range(1..=MAX_FLIPS);
        for flip in &mut c.flips[..n] {
            *flip = (
                rng.random_range(0..size) as u32,
                rng.random_range(1..=u8::MAX),
            );
        }
        c.count = n as u8;
        c
    }

    fn jitter(&self, rng: &mut StdRng) -> u64 {
        if self.jitter_ns == 0 {
            0
        } else {
            rng.random_range(0..self.jitter_ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn deliver(link: &mut Link, rng: &mut StdRng) -> (Corruption, Corruption) {
        match link.send(0, 1200, rng) {
            Verdict::Deliver {
                corrupt,
                duplicate_corrupt,
                ..
            } => (corrupt, duplicate_corrupt),
            Verdict::Drop(r) => panic!("dropped: {r:?}"),
        }
    }

    #[test]
    fn corruption_flips_one_to_three_bytes_inside_the_datagram() {
        let mut link = Link::new(LinkConfig::new().corrupt(1.0).duplicate(1.0), true);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let (a, b) = deliver(&mut link, &mut rng);
            for c in [a, b] {
                assert!((1..=MAX_FLIPS as u8).contains(&c.count));
                for &(at, mask) in &c.flips[..usize::from(c.count)] {
                    assert!(at < 1200 && mask != 0);
                }
                let mut data = vec![0u8; 1200];
                c.apply(&mut data);
                let changed = data.iter().filter(|&&b| b != 0).count();
                assert!(changed >= 1 && changed <= usize::from(c.count));
            }
        }
        assert_eq!(link.stats.corrupted, 400);
    }

    #[test]
    fn without_corruption_no_random_draw_is_made() {
        // Same draws as before corruption existed: loss and jitter only.
        let cfg = LinkConfig::new().loss(0.1).jitter(Duration::from_millis(3));
        let mut a = Link::new(cfg.clone(), true);
        let mut b = Link::new(cfg.corrupt(0.0), true);
        let mut ra = StdRng::seed_from_u64(9);
        let mut rb = StdRng::seed_from_u64(9);
        for t in 0..500 {
            assert_eq!(a.send(t, 1000, &mut ra), b.send(t, 1000, &mut rb));
        }
        // A clean link draws nothing at all.
        let mut c = Link::new(LinkConfig::new(), true);
        let (x, y) = deliver(&mut c, &mut ra);
        assert!(x.is_none() && y.is_none());
        assert_eq!(ra.random::<u64>(), rb.random::<u64>());
    }
}
