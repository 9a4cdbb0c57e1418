//! Delegations: byte ranges of a logical stream that the primary handed to a
//! path, and the primary's ledger of what the client has acknowledged.
//!
//! The ledger is the source of truth for failover. What a dead path still
//! owed is exactly its delegated ranges minus the client's acknowledged
//! ranges. Acknowledgements may lag, so that set can only be too large,
//! never too small: re-sent bytes are identical and the client drops them,
//! so no byte is ever lost and none is delivered twice.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use bytes::Bytes;

use crate::ids::StreamId;
use crate::paths::PathId;
use crate::ranges::RangeSet;

/// Identity of a delegation within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DelegationId(pub u64);

/// A range of a logical stream assigned to one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// Its id.
    pub id: DelegationId,
    /// The path that must write it.
    pub path: PathId,
    /// The (server-initiated) logical stream.
    pub stream: StreamId,
    /// The bytes `[start, end)` of the stream.
    pub range: Range<u64>,
    /// The range ends the stream.
    pub fin: bool,
    /// Opaque resource descriptor for the serving application.
    pub descriptor: Bytes,
    /// The range is overdue elsewhere (re-assigned from a dead path, or a
    /// hedge for a stalled one): write it ahead of other queued data
    /// ([`SessionView::write_at_urgent`](crate::SessionView::write_at_urgent)).
    pub urgent: bool,
    /// The stream's priority on the primary when the range was delegated
    /// (higher first, default 0; PROTOCOL.md §14). A secondary writes the
    /// range on a lane of this priority: kwik sets it as the stream's
    /// priority there before the application hears of the delegation.
    pub priority: i32,
}

/// The bytes (and the FIN) of one stream that one writer may send: on the
/// client, what a secondary path was delegated (§10.10); on a secondary,
/// what it was asked to write and has not written yet.
#[derive(Debug, Default)]
pub(crate) struct Grant {
    /// Delegated ranges.
    pub ranges: RangeSet,
    /// The final size, if a delegation ended the stream.
    pub fin: Option<u64>,
    /// Client: the path gave its delegations of the stream back (reset
    /// it); its records for the stream are dropped until it is delegated
    /// the stream again. Its ranges stay granted: a record it wrote before
    /// the reset may still arrive after a new delegation, and is no breach.
    pub returned: bool,
}

impl Grant {
    /// Adds a delegated range (which ends the stream if `fin`).
    pub(crate) fn allow(&mut self, range: Range<u64>, fin: bool) {
        self.returned = false;
        if fin {
            self.fin = Some(range.end);
        }
        self.ranges.insert(range);
    }

    /// True if a record `[from, end)` (ending the stream if `fin`) lies
    /// within the grant.
    pub(crate) fn permits(&self, from: u64, end: u64, fin: bool) -> bool {
        (from >= end || self.ranges.contains(from..end)) && (!fin || self.fin == Some(end))
    }

    /// Client: the path gave the stream back; its records are dropped until
    /// a delegation of the stream grants it again.
    pub(crate) fn give_back(&mut self) {
        self.returned = true;
    }

    /// Forgets ranges below `offset` (already read: nothing to check).
    pub(crate) fn prune_below(&mut self, offset: u64) {
        self.ranges.remove(0..offset);
    }

    /// True once nothing is left to write (secondary side).
    pub(crate) fn is_done(&self) -> bool {
        self.ranges.is_empty() && self.fin.is_none()
    }
}

/// Most disjoint acknowledged ranges kept per stream. A client's Acks are
/// snapshots of at most 64 ranges, but a hostile one could name new ones in
/// every Ack; beyond this the highest are forgotten, which only makes the
/// primary re-send more, never less.
const MAX_ACKED_RANGES: usize = 256;

/// The primary's record of delegations and acknowledgements.
///
/// Only streams the primary delegated or serves are tracked: an Ack for any
/// other stream creates nothing, and a stream's entries go when it completes
/// or is abandoned.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    next_id: u64,
    delegations: BTreeMap<DelegationId, Delegation>,
    received: BTreeMap<StreamId, RangeSet>,
}

impl Ledger {
    /// Starts tracking the client's acknowledgements of `stream`.
    pub(crate) fn track(&mut self, stream: StreamId) {
        self.received.entry(stream).or_default();
    }

    /// True if the client's acknowledgements of `stream` are tracked.
    pub(crate) fn tracks(&self, stream: StreamId) -> bool {
        self.received.contains_key(&stream)
    }

    /// Delegations not yet settled.
    pub(crate) fn len(&self) -> usize {
        self.delegations.len()
    }

    /// Forgets everything about `stream` (completed or abandoned).
    pub(crate) fn forget(&mut self, stream: StreamId) {
        self.delegations.retain(|_, d| d.stream != stream);
        self.received.remove(&stream);
    }

    /// Records the delegation `make` builds with the next id, and starts
    /// tracking its stream.
    pub(crate) fn add(&mut self, make: impl FnOnce(DelegationId) -> Delegation) -> Delegation {
        let id = DelegationId(self.next_id);
        self.next_id += 1;
        let d = make(id);
        debug_assert_eq!(d.id, id);
        self.track(d.stream);
        self.delegations.insert(id, d.clone());
        d
    }

    /// Applies a client acknowledgement; returns the delegations it completed.
    pub(crate) fn on_ack(
        &mut self,
        stream: StreamId,
        contiguous: u64,
        ranges: impl IntoIterator<Item = Range<u64>>,
    ) -> Vec<Delegation> {
        let Some(got) = self.received.get_mut(&stream) else {
            return Vec::new(); // not a stream this primary tracks
        };
        got.insert(0..contiguous);
        for r in ranges {
            // Past the cap, a range above the highest kept would be dropped
            // again at once: skip the work.
            let beyond = got.range_count() >= MAX_ACKED_RANGES
                && got.last().is_some_and(|last| r.start > last.end);
            if !beyond {
                got.insert(r);
            }
        }
        while got.range_count() > MAX_ACKED_RANGES {
            got.pop_last();
        }
        let done: Vec<DelegationId> = self
            .delegations
            .values()
            .filter(|d| d.stream == stream && got.contains(d.range.clone()))
            .map(|d| d.id)
            .collect();
        done.iter()
            .filter_map(|id| self.delegations.remove(id))
            .collect()
    }

    /// Bytes of `stream` the client acknowledged.
    pub(crate) fn received(&self, stream: StreamId) -> Option<&RangeSet> {
        self.received.get(&stream)
    }

    /// Parts of `d` the client has not acknowledged.
    fn missing(&self, d: &Delegation) -> Vec<Delegation> {
        let gaps = match self.received.get(&d.stream) {
            Some(got) => got.gaps(d.range.clone()),
            None => vec![d.range.clone()],
        };
        gaps.into_iter()
            .map(|r| Delegation {
                fin: d.fin && r.end == d.range.end,
                range: r,
                ..d.clone()
            })
            .collect()
    }

    /// Every delegated range not yet acknowledged, by delegation id.
    pub(crate) fn outstanding(&self) -> Vec<Delegation> {
        self.delegations
            .values()
            .flat_map(|d| self.missing(d))
            .collect()
    }

    /// Forgets `path`'s delegations, returning what they still owed.
    pub(crate) fn take_path(&mut self, path: PathId) -> Vec<Delegation> {
        self.take_where(|d| d.path == path)
    }

    /// Forgets the delegations of every (stream, path) in `returned` — the
    /// path gave the stream back — returning what they still owed.
    pub(crate) fn take_returned(
        &mut self,
        returned: &BTreeSet<(StreamId, PathId)>,
    ) -> Vec<Delegation> {
        self.take_where(|d| returned.contains(&(d.stream, d.path)))
    }

    /// Forgets the delegations `which` selects (one pass), returning what
    /// they still owed, by delegation id.
    fn take_where(&mut self, which: impl Fn(&Delegation) -> bool) -> Vec<Delegation> {
        let ids: Vec<DelegationId> = self
            .delegations
            .values()
            .filter(|d| which(d))
            .map(|d| d.id)
            .collect();
        let mut lost = Vec::new();
        for id in ids {
            let d = self.delegations.remove(&id).expect("listed");
            lost.extend(self.missing(&d));
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_path_owes_exactly_its_unacknowledged_ranges() {
        let s = StreamId(3);
        let mut l = Ledger::default();
        let delegation = |path: u64, range: Range<u64>, fin: bool| {
            move |id| Delegation {
                id,
                path: PathId(path),
                stream: s,
                range,
                fin,
                descriptor: Bytes::new(),
                urgent: false,
                priority: 0,
            }
        };
        let a = l.add(delegation(1, 0..100, false));
        let b = l.add(delegation(2, 100..200, true));
        let done = l.on_ack(s, 50, std::iter::once(120..150));
        assert!(done.is_empty());
        let lost = l.take_path(PathId(2));
        let ranges: Vec<_> = lost
            .iter()
            .map(|d| (d.range.clone(), d.fin, d.id))
            .collect();
        assert_eq!(
            ranges,
            vec![(100..120, false, b.id), (150..200, true, b.id)]
        );
        let done = l.on_ack(s, 100, []);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id, a.id);
        assert!(l.outstanding().is_empty());
    }
}
