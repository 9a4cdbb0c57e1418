//! The multi-source transfer helper: serve one resource of known length over
//! one logical stream from the primary and every live secondary at once.
//!
//! The primary's scheduler hands out consecutive chunks of the resource. Each
//! path gets a chunk sized to about `chunk_time` of its measured rate, and
//! new work only while what it owes stays below its budget (≈ rate × the
//! time an assignment takes to be confirmed): a slow server can never hoard
//! work and become the head of line.
//!
//! The in-order frontier always makes progress. Ranges lost with a dead
//! path are re-assigned at once, ahead of any budget, as *urgent* work that
//! jumps the queue of the path that takes it. And the frontier is *hedged*:
//! when the path that owes the first missing byte shows no progress for
//! longer than its own round-trip statistics allow, a copy of that range
//! goes urgently to another path — long before the silent path could be
//! declared dead. When nothing is left to assign, an idle path takes a copy
//! of the oldest range a slower path still owes (tail stealing), so all
//! paths finish together. The client keeps the first copy of any byte and
//! drops identical later ones.
//!
//! Several transfers of one session are scheduled by their streams'
//! priorities (PROTOCOL.md §14): higher first, and a transfer only gives a
//! path what the transfers of higher priority leave of that path's budget,
//! so a path's capacity goes to the most important stream first. Transfers
//! of equal priority do not limit each other.
//!
//! The scheduler is a pure function of what it is told (acknowledged ranges,
//! path rates and RTTs, time), so it is unit-tested without a network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::StreamId;
use crate::paths::PathId;
use crate::ranges::RangeSet;

/// Bytes a server can serve: the whole resource or any range of it.
///
/// `read` should be cheap (slices of memory already held are ideal): the
/// feeder may read a range again when a write was only partly accepted.
pub trait Resource: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// True if the resource is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Up to `len` bytes from `offset` (fewer only at the end).
    fn read(&self, offset: u64, len: usize) -> Bytes;
}

impl Resource for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }
    fn read(&self, offset: u64, len: usize) -> Bytes {
        let start = (offset as usize).min(Bytes::len(self));
        let end = start.saturating_add(len).min(Bytes::len(self));
        self.slice(start..end)
    }
}

/// A shared, thread-safe resource.
pub type SharedResource = Arc<dyn Resource>;

/// Identity of a transfer within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub u64);

/// Tuning of the multi-source scheduler.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransferConfig {
    /// A chunk lasts about this long at its path's measured rate.
    pub chunk_time: Duration,
    /// Smallest chunk.
    pub min_chunk: u64,
    /// Largest chunk.
    pub max_chunk: u64,
    /// Duplicate the tail onto idle faster paths.
    pub steal_tail: bool,
    /// Work a path may owe, in time at its measured rate. Long enough that
    /// a path is never starved while its rate ramps up (a path that owes
    /// `rate × backlog` can still grow by `backlog ÷ round trip` per round
    /// trip), short enough that a slow path never holds much.
    pub backlog: Duration,
    /// Work any path may owe regardless of its rate (the start of a ramp).
    pub min_backlog: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            chunk_time: Duration::from_millis(100),
            min_chunk: 128 << 10,
            max_chunk: 8 << 20,
            steal_tail: true,
            backlog: Duration::from_millis(150),
            min_backlog: 1 << 20,
        }
    }
}

/// What the scheduler knows of one live path when it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathView {
    pub id: PathId,
    pub rtt: Duration,
}

/// One range given to one path.
#[derive(Debug, Clone)]
struct Assignment {
    range: Range<u64>,
    at: Instant,
    /// It is a copy of another path's range, or was copied already: never
    /// copy it (again).
    no_steal: bool,
}

/// How long a path that owes the frontier may show no progress before the
/// frontier range is hedged elsewhere: a round trip (the acknowledgement
/// loop) plus half of one and the client's acknowledgement delay — well
/// under the three probe timeouts after which a silent path is declared
/// dead.
fn overdue_after(rtt: Duration) -> Duration {
    rtt + (rtt / 2).max(Duration::from_millis(25)) + Duration::from_millis(10)
}

/// The first byte the client has not acknowledged.
fn frontier(received: &RangeSet) -> u64 {
    received
        .iter()
        .next()
        .filter(|r| r.start == 0)
        .map_or(0, |r| r.end)
}

/// Window over which a path's delivery rate is measured.
const RATE_WINDOW: Duration = Duration::from_millis(300);

#[derive(Debug, Default)]
struct PathLoad {
    assigned: Vec<Assignment>,
    /// Bytes of fully acknowledged assignments already pruned.
    delivered_pruned: u64,
    /// Bytes per second delivered over the last [`RATE_WINDOW`].
    rate: f64,
    /// (time, bytes delivered so far), oldest first.
    samples: VecDeque<(Instant, u64)>,
    /// Last time this path's deliveries grew (or it was handed work while
    /// owing nothing).
    progress_at: Option<Instant>,
    /// Bytes delivered at `progress_at`.
    progress_mark: u64,
}

impl PathLoad {
    fn owed(&self, received: &RangeSet) -> u64 {
        self.assigned
            .iter()
            .flat_map(|a| received.gaps(a.range.clone()))
            .map(|g| g.end - g.start)
            .sum()
    }

    fn delivered(&self, received: &RangeSet) -> u64 {
        let assigned: u64 = self
            .assigned
            .iter()
            .map(|a| a.range.end - a.range.start)
            .sum();
        self.delivered_pruned + assigned - self.owed(received)
    }
}

/// A new assignment the session must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assign {
    pub path: PathId,
    pub range: Range<u64>,
    pub fin: bool,
    /// Overdue elsewhere: to be written ahead of queued work.
    pub urgent: bool,
}

/// The primary's state of one multi-source transfer.
pub(crate) struct Transfer {
    pub stream: StreamId,
    pub len: u64,
    pub descriptor: Bytes,
    pub resource: SharedResource,
    config: TransferConfig,
    next: u64,
    /// Lost ranges waiting for a new owner, lowest first.
    reassign: VecDeque<Range<u64>>,
    loads: BTreeMap<PathId, PathLoad>,
    /// The frontier offset last hedged, and when (a frontier is hedged
    /// again only if that hedge also stays overdue).
    hedged: Option<(u64, Instant)>,
    /// Bytes handed out a second time (hedges and tail steals).
    pub duplicated: u64,
    /// Paths that gave this stream back: never given work of it again.
    excluded: BTreeSet<PathId>,
}

impl Transfer {
    pub(crate) fn new(
        stream: StreamId,
        descriptor: Bytes,
        resource: SharedResource,
        config: TransferConfig,
    ) -> Self {
        Self {
            stream,
            len: resource.len(),
            descriptor,
            resource,
            config,
            next: 0,
            reassign: VecDeque::new(),
            loads: BTreeMap::new(),
            hedged: None,
            duplicated: 0,
            excluded: BTreeSet::new(),
        }
    }

    /// True once the client acknowledged every byte.
    pub(crate) fn complete(&self, received: &RangeSet) -> bool {
        received.contains(0..self.len)
    }

    /// `path` ended: its unacknowledged ranges go back into the pool.
    pub(crate) fn path_lost(&mut self, path: PathId, received: &RangeSet) {
        let Some(load) = self.loads.remove(&path) else {
            return;
        };
        let mut gaps: Vec<Range<u64>> = load
            .assigned
            .iter()
            .flat_map(|a| received.gaps(a.range.clone()))
            .collect();
        gaps.extend(self.reassign.drain(..));
        gaps.sort_by_key(|r| r.start);
        self.reassign = gaps.into();
    }

    /// `path` gave the stream back (its server reset it): like a lost
    /// path for this transfer, and it is given no more of it. Ignored for
    /// a path the transfer never scheduled (it names nothing kept here).
    pub(crate) fn path_returned(&mut self, path: PathId, received: &RangeSet) {
        if self.loads.contains_key(&path) {
            self.path_lost(path, received);
            self.excluded.insert(path);
        }
    }

    /// Bytes per second `path` delivered of this transfer lately.
    pub(crate) fn path_rate(&self, path: PathId) -> f64 {
        self.rate(path)
    }

    fn rate(&self, path: PathId) -> f64 {
        self.loads.get(&path).map_or(0.0, |l| l.rate)
    }

    fn chunk_for(&self, path: PathId) -> u64 {
        let by_rate = (self.rate(path) * self.config.chunk_time.as_secs_f64()) as u64;
        by_rate.clamp(self.config.min_chunk, self.config.max_chunk)
    }

    /// Most bytes `path` may owe: its measured rate over the configured
    /// backlog time (at least the floor), plus one chunk.
    fn budget(&self, path: PathId) -> u64 {
        let by_rate = (self.rate(path) * self.config.backlog.as_secs_f64()) as u64;
        by_rate.max(self.config.min_backlog) + self.chunk_for(path)
    }

    /// Next new range to hand out, at most `max` long.
    fn take_new(&mut self, max: u64) -> Option<Range<u64>> {
        let end = self.len.min(self.next + max);
        if self.next >= end {
            return None;
        }
        let range = self.next..end;
        self.next = end;
        Some(range)
    }

    /// Takes up to `max` bytes of the lowest lost range.
    fn take_lost(&mut self, max: u64) -> Option<Range<u64>> {
        let front = self.reassign.front_mut()?;
        let end = front.end.min(front.start + max);
        let range = front.start..end;
        front.start = end;
        if front.start >= front.end {
            self.reassign.pop_front();
        }
        Some(range)
    }

    fn assign(
        &mut self,
        out: &mut Vec<Assign>,
        path: PathId,
        range: Range<u64>,
        now: Instant,
        copy: bool,
        urgent: bool,
    ) {
        let load = self.loads.entry(path).or_default();
        if load.assigned.is_empty() {
            // Owing nothing until now: the wait for progress starts here.
            load.progress_at = Some(now);
        }
        load.assigned.push(Assignment {
            range: range.clone(),
            at: now,
            no_steal: copy,
        });
        if copy {
            self.duplicated += range.end - range.start;
        }
        out.push(Assign {
            path,
            fin: range.end == self.len,
            range,
            urgent,
        });
    }

    /// Bytes `path` still owes of this transfer.
    pub(crate) fn owed_on(&self, path: PathId, received: &RangeSet) -> u64 {
        self.loads.get(&path).map_or(0, |l| l.owed(received))
    }

    /// Updates rate estimates and returns the new assignments due now.
    /// `paths` are the live paths (the primary included), `received` what
    /// the client acknowledged of the stream, `taken` what transfers of
    /// higher priority owe on each path: that much of the path's budget is
    /// theirs, and this transfer gets only the rest. (Lost and hedged
    /// ranges go out whatever the budgets.)
    pub(crate) fn schedule(
        &mut self,
        now: Instant,
        paths: &[PathView],
        received: &RangeSet,
        taken: &BTreeMap<PathId, u64>,
    ) -> Vec<Assign> {
        for p in paths.iter().filter(|p| !self.excluded.contains(&p.id)) {
            let load = self.loads.entry(p.id).or_default();
            // Prune fully acknowledged assignments.
            let mut pruned = 0;
            load.assigned.retain(|a| {
                let done = received.contains(a.range.clone());
                if done {
                    pruned += a.range.end - a.range.start;
                }
                !done
            });
            load.delivered_pruned += pruned;
            let delivered = load.delivered(received);
            if delivered > load.progress_mark {
                load.progress_mark = delivered;
                load.progress_at = Some(now);
            }
            load.samples.push_back((now, delivered));
            while load.samples.len() > 2
                && now.saturating_duration_since(load.samples[1].0) >= RATE_WINDOW
            {
                load.samples.pop_front();
            }
            let (t0, d0) = load.samples[0];
            let dt = now.saturating_duration_since(t0);
            if dt >= RATE_WINDOW / 4 {
                // The client's acknowledged set can shrink (the ledger keeps a
                // bounded number of ranges): never a negative rate.
                load.rate = delivered.saturating_sub(d0) as f64 / dt.as_secs_f64();
            }
        }

        // Fastest first, so that scarce work goes where it finishes soonest.
        let mut order: Vec<PathView> = paths
            .iter()
            .filter(|p| !self.excluded.contains(&p.id))
            .copied()
            .collect();
        order.sort_by(|a, b| {
            self.rate(b.id)
                .partial_cmp(&self.rate(a.id))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.id.cmp(&b.id))
        });
        let mut out = Vec::new();
        self.hedge_frontier(now, &order, received, &mut out);
        // Lost ranges go out at once, whatever the budgets: they hold the
        // frontier back. Each piece to the path that would deliver it first.
        while !self.reassign.is_empty() {
            let Some(best) = self.quickest(&order, None, received) else {
                break;
            };
            let chunk = self.chunk_for(best);
            let range = self.take_lost(chunk).expect("not empty");
            self.assign(&mut out, best, range, now, false, true);
        }
        for p in order {
            let budget = self
                .budget(p.id)
                .saturating_sub(taken.get(&p.id).copied().unwrap_or(0));
            let chunk = self.chunk_for(p.id);
            loop {
                let owed = self.loads.get(&p.id).map_or(0, |l| l.owed(received));
                if owed >= budget {
                    break;
                }
                let (range, copy) = match self.take_new(chunk) {
                    Some(r) => (r, false),
                    None if self.next >= self.len && self.config.steal_tail && owed < chunk => {
                        match self.steal_for(p, received, now, chunk) {
                            Some(r) => (r, true),
                            None => break,
                        }
                    }
                    None => break,
                };
                self.assign(&mut out, p.id, range, now, copy, false);
            }
        }
        out
    }

    /// The live path (other than `except`) that would deliver urgent bytes
    /// to the client first: an urgent range jumps its queue, so what counts
    /// is how far the work travels (a secondary hears of it through the
    /// client) and the path's rate, plus whatever urgent work it still owes.
    fn quickest(
        &self,
        order: &[PathView],
        except: Option<PathId>,
        received: &RangeSet,
    ) -> Option<PathId> {
        let primary_rtt = order
            .iter()
            .find(|p| p.id == PathId::PRIMARY)
            .map_or(Duration::ZERO, |p| p.rtt);
        let cost = |p: &PathView| {
            let reach = if p.id == PathId::PRIMARY {
                primary_rtt / 2
            } else {
                primary_rtt / 2 + p.rtt
            };
            let rate = self.rate(p.id).max(1.0);
            let urgent_owed: u64 = self.loads.get(&p.id).map_or(0, |l| {
                l.assigned
                    .iter()
                    .filter(|a| a.no_steal)
                    .flat_map(|a| received.gaps(a.range.clone()))
                    .map(|g| g.end - g.start)
                    .sum()
            });
            reach.as_secs_f64() + (self.chunk_for(p.id) + urgent_owed) as f64 / rate
        };
        order
            .iter()
            .filter(|p| Some(p.id) != except)
            .min_by(|a, b| {
                cost(a)
                    .partial_cmp(&cost(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|p| p.id)
    }

    /// If the path that owes the first missing byte has shown no progress
    /// for longer than its round trip allows, copies the range it owes there
    /// to the path that would deliver it first, urgently. A frontier is
    /// hedged again only if the hedge itself stays overdue.
    fn hedge_frontier(
        &mut self,
        now: Instant,
        order: &[PathView],
        received: &RangeSet,
        out: &mut Vec<Assign>,
    ) {
        let frontier = frontier(received);
        if frontier >= self.len {
            return;
        }
        let slowest_rtt = order.iter().map(|p| p.rtt).max().unwrap_or_default();
        if let Some((at, when)) = self.hedged
            && at == frontier
            && now.saturating_duration_since(when) < overdue_after(slowest_rtt) * 2
        {
            return;
        }
        // Who owes it, and since when has it been quiet?
        let owner = self.loads.iter().find_map(|(id, load)| {
            load.assigned
                .iter()
                .find(|a| a.range.contains(&frontier))
                .map(|a| (*id, a.range.end, load.progress_at.unwrap_or(a.at)))
        });
        let Some((owner, end, quiet_since)) = owner else {
            return;
        };
        let overdue = match order.iter().find(|p| p.id == owner) {
            Some(p) => now.saturating_duration_since(quiet_since) >= overdue_after(p.rtt),
            // The owner is no longer live (degraded, or on its way out).
            None => true,
        };
        if !overdue {
            return;
        }
        // Not to a path that already owes it (an earlier hedge): that copy
        // is as late as the first.
        let owing: Vec<PathId> = self
            .loads
            .iter()
            .filter(|(_, l)| l.assigned.iter().any(|a| a.range.contains(&frontier)))
            .map(|(id, _)| *id)
            .collect();
        let candidates: Vec<PathView> = order
            .iter()
            .filter(|p| !owing.contains(&p.id))
            .copied()
            .collect();
        let Some(helper) = self.quickest(&candidates, Some(owner), received) else {
            return;
        };
        let missing = received
            .gaps(frontier..end)
            .into_iter()
            .next()
            .unwrap_or(frontier..end);
        let len = self.chunk_for(helper);
        let range = missing.start..missing.end.min(missing.start + len);
        self.hedged = Some((frontier, now));
        if let Some(load) = self.loads.get_mut(&owner) {
            for a in load
                .assigned
                .iter_mut()
                .filter(|a| a.range.contains(&frontier))
            {
                a.no_steal = true;
            }
        }
        self.assign(out, helper, range, now, true, true);
    }

    /// The lowest range a slower path still owes that `thief` would finish
    /// sooner; marks it so it is copied only once. A range is only copied
    /// once its owner had time to show progress on it.
    fn steal_for(
        &mut self,
        thief: PathView,
        received: &RangeSet,
        now: Instant,
        max: u64,
    ) -> Option<Range<u64>> {
        let patience = thief.rtt * 2 + Duration::from_millis(50);
        let thief_rate = self.rate(thief.id).max(1.0);
        let mut best: Option<(u64, PathId, usize, Range<u64>)> = None;
        for (owner, load) in &self.loads {
            if *owner == thief.id {
                continue;
            }
            let owner_rate = load.rate.max(1.0);
            let owner_backlog = load.owed(received) as f64 / owner_rate;
            for (i, a) in load.assigned.iter().enumerate() {
                if a.no_steal || now.saturating_duration_since(a.at) < patience {
                    continue;
                }
                let Some(gap) = received.gaps(a.range.clone()).into_iter().next() else {
                    continue;
                };
                let missing = a.range.end - gap.start;
                let thief_time = thief.rtt.as_secs_f64() + missing as f64 / thief_rate;
                if thief_time < owner_backlog && best.as_ref().is_none_or(|b| gap.start < b.0) {
                    let end = a.range.end.min(gap.start + max);
                    best = Some((gap.start, *owner, i, gap.start..end));
                }
            }
        }
        let (_, owner, i, range) = best?;
        self.loads.get_mut(&owner).expect("listed").assigned[i].no_steal = true;
        Some(range)
    }
}

/// A range a server writes from a resource.
pub(crate) struct Job {
    pub stream: StreamId,
    pub range: Range<u64>,
    pub fin: bool,
    pub resource: SharedResource,
    /// Written ahead of other queued data (on the urgent lane).
    pub urgent: bool,
    /// The stream's priority: among jobs equally urgent, higher ones are
    /// written first.
    pub priority: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(len: usize) -> SharedResource {
        Arc::new(Bytes::from(vec![7u8; len]))
    }

    fn transfer(len: usize) -> Transfer {
        let config = TransferConfig {
            min_chunk: 100,
            max_chunk: 1000,
            min_backlog: 200,
            ..TransferConfig::default()
        };
        Transfer::new(StreamId(3), Bytes::new(), resource(len), config)
    }

    /// Nothing taken by transfers of higher priority.
    fn none() -> BTreeMap<PathId, u64> {
        BTreeMap::new()
    }

    fn view(id: u64, rtt_ms: u64) -> PathView {
        PathView {
            id: PathId(id),
            rtt: Duration::from_millis(rtt_ms),
        }
    }

    #[test]
    fn hands_out_every_byte_once_and_marks_the_end() {
        let mut t = transfer(1000);
        let now = Instant::now();
        let paths = [view(0, 10), view(1, 10)];
        let mut got = RangeSet::new();
        let mut fins = 0;
        let mut received = RangeSet::new();
        for step in 0..50 {
            for a in t.schedule(
                now + Duration::from_millis(step * 60),
                &paths,
                &received,
                &none(),
            ) {
                assert!(
                    !got.contains(a.range.clone()) || a.range.is_empty(),
                    "{a:?} twice"
                );
                got.insert(a.range.clone());
                fins += a.fin as u32;
                received.insert(a.range.clone());
            }
        }
        assert!(got.contains(0..1000));
        assert!(t.complete(&received));
        assert_eq!(fins, 1);
    }

    #[test]
    fn bounded_outstanding_per_path() {
        let mut t = transfer(1_000_000);
        let received = RangeSet::new();
        let out = t.schedule(
            Instant::now(),
            &[view(0, 10), view(1, 10)],
            &received,
            &none(),
        );
        for p in [0, 1] {
            let owed: u64 = out
                .iter()
                .filter(|a| a.path == PathId(p))
                .map(|a| a.range.end - a.range.start)
                .sum();
            assert!(owed <= 200 + 100, "path {p} owes {owed}");
        }
    }

    #[test]
    fn lost_ranges_are_reassigned_first() {
        let mut t = transfer(10_000);
        let now = Instant::now();
        let mut received = RangeSet::new();
        let out = t.schedule(now, &[view(0, 10), view(1, 10)], &received, &none());
        let of_1: Vec<Range<u64>> = out
            .iter()
            .filter(|a| a.path == PathId(1))
            .map(|a| a.range.clone())
            .collect();
        assert!(!of_1.is_empty());
        // Path 1 delivered half of its first range, then died.
        received.insert(of_1[0].start..of_1[0].start + 50);
        t.path_lost(PathId(1), &received);
        for a in &out {
            if a.path == PathId::PRIMARY {
                received.insert(a.range.clone());
            }
        }
        let next = t.schedule(
            now + Duration::from_millis(100),
            &[view(0, 10)],
            &received,
            &none(),
        );
        assert_eq!(
            next[0].range.start,
            of_1[0].start + 50,
            "the lost remainder comes first"
        );
    }

    #[test]
    fn an_idle_fast_path_copies_a_slow_tail() {
        let mut t = transfer(400);
        let start = Instant::now();
        let mut received = RangeSet::new();
        let paths = [view(0, 10), view(1, 10)];
        let first = t.schedule(start, &paths, &received, &none());
        // The primary delivers everything it got; path 1 delivers nothing.
        for a in first.iter().filter(|a| a.path == PathId::PRIMARY) {
            received.insert(a.range.clone());
        }
        t.loads.get_mut(&PathId::PRIMARY).unwrap().rate = 10_000.0;
        t.loads.get_mut(&PathId(1)).unwrap().rate = 10.0;
        let later = t.schedule(
            start + Duration::from_millis(200),
            &paths,
            &received,
            &none(),
        );
        let copies: Vec<&Assign> = later.iter().filter(|a| a.path == PathId::PRIMARY).collect();
        let owed_by_1: Vec<Range<u64>> = first
            .iter()
            .filter(|a| a.path == PathId(1))
            .map(|a| a.range.clone())
            .collect();
        assert!(
            copies.iter().any(|c| owed_by_1.contains(&c.range)),
            "{later:?} vs {owed_by_1:?}"
        );
    }

    #[test]
    fn lost_ranges_go_out_at_once_whatever_the_budgets() {
        let mut t = transfer(100_000);
        let now = Instant::now();
        let received = RangeSet::new();
        let paths = [view(0, 10), view(1, 10), view(2, 10)];
        let first = t.schedule(now, &paths, &received, &none());
        let of_2: Vec<Range<u64>> = first
            .iter()
            .filter(|a| a.path == PathId(2))
            .map(|a| a.range.clone())
            .collect();
        assert!(!of_2.is_empty());
        // Path 2 dies; every other path is at its budget (nothing delivered).
        t.path_lost(PathId(2), &received);
        let next = t.schedule(
            now + Duration::from_millis(10),
            &paths[..2],
            &received,
            &none(),
        );
        let redone: Vec<&Assign> = next.iter().filter(|a| a.urgent).collect();
        let covered: u64 = redone.iter().map(|a| a.range.end - a.range.start).sum();
        let lost: u64 = of_2.iter().map(|r| r.end - r.start).sum();
        assert_eq!(covered, lost, "every lost byte re-assigned: {next:?}");
        assert!(redone.iter().all(|a| a.path != PathId(2)));
    }

    #[test]
    fn a_quiet_frontier_owner_is_hedged_urgently_before_it_could_be_dead() {
        let mut t = transfer(100_000);
        let start = Instant::now();
        let mut received = RangeSet::new();
        let paths = [view(0, 20), view(1, 40)];
        let first = t.schedule(start, &paths, &received, &none());
        // Everything below path 1's lowest range arrived: path 1 owes the
        // frontier, and delivers nothing.
        let owed_by_1: Vec<Range<u64>> = first
            .iter()
            .filter(|a| a.path == PathId(1))
            .map(|a| a.range.clone())
            .collect();
        let low = owed_by_1.iter().map(|r| r.start).min().unwrap();
        received.insert(0..low);
        // Not overdue yet: no hedge.
        let soon = t.schedule(
            start + Duration::from_millis(30),
            &paths,
            &received,
            &none(),
        );
        assert!(soon.iter().all(|a| !a.urgent), "{soon:?}");
        // Overdue by path 1's own round trip (40 ms → 40 + 25 + 10 ms).
        let late = t.schedule(
            start + Duration::from_millis(80),
            &paths,
            &received,
            &none(),
        );
        let hedges: Vec<&Assign> = late.iter().filter(|a| a.urgent).collect();
        assert_eq!(hedges.len(), 1, "{late:?}");
        assert_eq!(hedges[0].path, PathId::PRIMARY);
        assert_eq!(hedges[0].range.start, low);
        assert!(t.duplicated > 0);
        // Hedged once per frontier while the hedge is young.
        let again = t.schedule(
            start + Duration::from_millis(90),
            &paths,
            &received,
            &none(),
        );
        assert!(again.iter().all(|a| !a.urgent), "{again:?}");
    }

    #[test]
    fn a_path_budget_goes_to_higher_priorities_first() {
        let paths = [view(0, 10), view(1, 10)];
        let received = RangeSet::new();
        let now = Instant::now();
        // Alone, a transfer fills each path up to its budget.
        let mut alone = transfer(1_000_000);
        let out = alone.schedule(now, &paths, &received, &none());
        let owed = |t: &Transfer, p: u64| t.owed_on(PathId(p), &received);
        assert!(owed(&alone, 0) > 0 && owed(&alone, 1) > 0, "{out:?}");
        // Below a transfer of higher priority that owes a path its whole
        // budget, it gets nothing new there, and the rest elsewhere.
        let mut low = transfer(1_000_000);
        let taken = BTreeMap::from([(PathId(0), owed(&alone, 0))]);
        let out = low.schedule(now, &paths, &received, &taken);
        assert!(out.iter().all(|a| a.path == PathId(1)), "{out:?}");
        assert_eq!(owed(&low, 1), owed(&alone, 1));
        // What is left of a budget is still given.
        let mut partial = transfer(1_000_000);
        let taken = BTreeMap::from([(PathId(0), 150)]);
        partial.schedule(now, &paths, &received, &taken);
        let left = owed(&partial, 0);
        assert!(left > 0 && left + 150 <= owed(&alone, 0) + 100, "{left}");
    }
}
