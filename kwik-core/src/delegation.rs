//! Delegations: byte ranges of a logical stream that the primary handed to a
//! path, and the primary's ledger of what the client has acknowledged.
//!
//! The ledger is the source of truth for failover. What a dead path still
//! owed is exactly its delegated ranges minus the client's acknowledged
//! ranges. Acknowledgements may lag, so that set can only be too large,
//! never too small: re-sent bytes are identical and the client drops them,
//! so no byte is ever lost and none is delivered twice.

use std::collections::BTreeMap;
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
}

/// The primary's record of delegations and acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    next_id: u64,
    delegations: BTreeMap<DelegationId, Delegation>,
    received: BTreeMap<StreamId, RangeSet>,
}

impl Ledger {
    pub(crate) fn add(
        &mut self,
        path: PathId,
        stream: StreamId,
        range: Range<u64>,
        fin: bool,
        descriptor: Bytes,
    ) -> Delegation {
        let id = DelegationId(self.next_id);
        self.next_id += 1;
        let d = Delegation {
            id,
            path,
            stream,
            range,
            fin,
            descriptor,
        };
        self.delegations.insert(id, d.clone());
        d
    }

    /// Applies a client acknowledgement; returns the delegations it completed.
    pub(crate) fn on_ack(
        &mut self,
        stream: StreamId,
        contiguous: u64,
        ranges: &[Range<u64>],
    ) -> Vec<Delegation> {
        let got = self.received.entry(stream).or_default();
        got.insert(0..contiguous);
        for r in ranges {
            got.insert(r.clone());
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

    /// The client received all of `stream`: its delegations are settled.
    pub(crate) fn stream_complete(&mut self, stream: StreamId) {
        self.delegations.retain(|_, d| d.stream != stream);
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
        let ids: Vec<DelegationId> = self
            .delegations
            .values()
            .filter(|d| d.path == path)
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
        let a = l.add(PathId(1), s, 0..100, false, Bytes::new());
        let b = l.add(PathId(2), s, 100..200, true, Bytes::new());
        let done = l.on_ack(s, 50, std::slice::from_ref(&(120..150)));
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
        let done = l.on_ack(s, 100, &[]);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id, a.id);
        assert!(l.outstanding().is_empty());
    }
}
