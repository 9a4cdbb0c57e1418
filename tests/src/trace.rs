//! The simulation's event trace.
//!
//! Determinism is only useful if it can be checked cheaply: two runs with the
//! same seed must produce the same trace, and comparing two 64-bit digests is
//! enough to tell. The trace therefore only ever holds deterministic data —
//! virtual time elapsed since the simulation start (never a wall clock), the
//! index of the node that recorded the line, and text the node produced —
//! and the digest is a hand-written FNV-1a so it is stable across Rust
//! versions and platforms (unlike `std`'s `DefaultHasher`).
//!
//! Applications record their own lines from [`Node::step`](crate::Node::step).
//! The simulator can additionally record every datagram send, drop and
//! delivery; that is off by default because benchmarks move hundreds of
//! thousands of datagrams.

use std::fmt::{self, Display, Write as _};
use std::time::{Duration, Instant};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Feeds `bytes` into a running 64-bit FNV-1a hash.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// One recorded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    /// Virtual time elapsed since the simulation start.
    pub at: Duration,
    /// Index of the node the line belongs to (see [`NodeId`](crate::NodeId)).
    pub node: usize,
    /// The text.
    pub text: String,
}

impl Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.at.as_nanos();
        write!(
            f,
            "{:>6}.{:06}ms n{} {}",
            ns / 1_000_000,
            ns % 1_000_000,
            self.node,
            self.text
        )
    }
}

/// A deterministic record of what happened in a simulation.
#[derive(Debug, Clone)]
pub struct Trace {
    start: Instant,
    /// Node whose `step` is currently running.
    current: usize,
    datagrams: bool,
    keep_lines: bool,
    lines: Vec<TraceLine>,
    count: u64,
    digest: u64,
    scratch: String,
}

impl Trace {
    /// A trace for a simulation that started at `start`.
    pub(crate) fn new(start: Instant) -> Self {
        Trace {
            start,
            current: 0,
            datagrams: false,
            keep_lines: true,
            lines: Vec::new(),
            count: 0,
            digest: FNV_OFFSET,
            scratch: String::new(),
        }
    }

    pub(crate) fn set_current(&mut self, node: usize) {
        self.current = node;
    }

    /// Whether datagram-level events (send / drop / deliver) are recorded.
    pub fn datagrams_enabled(&self) -> bool {
        self.datagrams
    }

    /// Switches datagram-level recording on or off (off by default).
    pub fn set_datagrams(&mut self, on: bool) {
        self.datagrams = on;
    }

    /// Whether lines are kept in memory (the digest is always updated).
    /// On by default; turn off for huge runs that only need the digest.
    pub fn set_keep_lines(&mut self, keep: bool) {
        self.keep_lines = keep;
    }

    /// Records a line for the node whose `step` is running, at `now`.
    ///
    /// `text` can be anything displayable, e.g. `format_args!(..)`, which
    /// avoids an intermediate allocation when lines are not kept.
    pub fn record(&mut self, now: Instant, text: impl Display) {
        let at = now.saturating_duration_since(self.start);
        self.record_at(at, self.current, text);
    }

    /// Records a line at an explicit virtual time and node index.
    pub fn record_at(&mut self, at: Duration, node: usize, text: impl Display) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{text}");
        let mut h = self.digest;
        h = fnv1a(h, &at.as_nanos().to_le_bytes());
        h = fnv1a(h, &(node as u64).to_le_bytes());
        h = fnv1a(h, scratch.as_bytes());
        h = fnv1a(h, &[0xff]);
        self.digest = h;
        self.count += 1;
        // Interleaved with the endpoints' own logs when a subscriber listens
        // (RUST_LOG=kwik_sim=trace), stamped with virtual time.
        tracing::trace!(target: "kwik_sim", at = ?at, node, "{scratch}");
        if self.keep_lines {
            self.lines.push(TraceLine {
                at,
                node,
                text: scratch.clone(),
            });
        }
        self.scratch = scratch;
    }

    /// Stable 64-bit FNV-1a digest over every line recorded so far (time in
    /// nanoseconds, node index, text).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The lines kept so far.
    pub fn lines(&self) -> &[TraceLine] {
        &self.lines
    }

    /// Number of lines recorded (including ones not kept).
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Kept lines whose text contains `needle`.
    pub fn grep<'a>(&'a self, needle: &'a str) -> impl Iterator<Item = &'a TraceLine> + 'a {
        self.lines.iter().filter(move |l| l.text.contains(needle))
    }

    /// All kept lines, one per text line, for dumping on failure.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}
