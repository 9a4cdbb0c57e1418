//! A set of half-open `u64` ranges, kept merged and ordered.
//!
//! Used wherever kwik reasons about which bytes of a logical stream have been
//! delegated, received or lost: the primary subtracts what the client
//! acknowledged from what it handed out, and what remains is exactly what a
//! dead path still owed.

use std::collections::BTreeMap;
use std::ops::Range;

/// Merged, non-overlapping, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// True if no byte is in the set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of bytes in the set.
    pub fn len(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    /// Number of disjoint ranges.
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    /// Adds `range`, merging with neighbours.
    pub fn insert(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        let mut start = range.start;
        let mut end = range.end;
        // A range starting before `start` may overlap or touch it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back()
            && e >= start
        {
            if e >= end {
                return; // already held
            }
            start = s;
            end = end.max(e);
        }
        // Absorb every range that starts inside the new one.
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            self.map.remove(&s);
            end = end.max(e);
        }
        self.map.insert(start, end);
    }

    /// Removes `range` from the set.
    pub fn remove(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        let touched: Vec<(u64, u64)> = self
            .map
            .range(..range.end)
            .rev()
            .take_while(|(_, e)| **e > range.start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touched {
            self.map.remove(&s);
            if s < range.start {
                self.map.insert(s, range.start);
            }
            if e > range.end {
                self.map.insert(range.end, e);
            }
        }
    }

    /// True if every byte of `range` is in the set.
    pub fn contains(&self, range: Range<u64>) -> bool {
        if range.start >= range.end {
            return true;
        }
        self.map
            .range(..=range.start)
            .next_back()
            .is_some_and(|(_, &e)| e >= range.end)
    }

    /// The parts of `range` that are NOT in the set.
    pub fn gaps(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut cursor = range.start;
        let first = self
            .map
            .range(..=range.start)
            .next_back()
            .map_or(range.start, |(&s, _)| s);
        for (&s, &e) in self.map.range(first..range.end) {
            if e <= cursor {
                continue;
            }
            if s > cursor {
                out.push(cursor..s);
            }
            cursor = e;
            if cursor >= range.end {
                break;
            }
        }
        if cursor < range.end {
            out.push(cursor..range.end);
        }
        out
    }

    /// The highest range.
    pub fn last(&self) -> Option<Range<u64>> {
        self.map.last_key_value().map(|(&s, &e)| s..e)
    }

    /// Removes and returns the highest range.
    pub fn pop_last(&mut self) -> Option<Range<u64>> {
        self.map.pop_last().map(|(s, e)| s..e)
    }

    /// The ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut r = RangeSet::new();
        r.insert(10..20);
        r.insert(30..40);
        r.insert(20..25);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![10..25, 30..40]);
        r.insert(5..35);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![5..40]);
        r.remove(12..14);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![5..12, 14..40]);
        assert_eq!(r.len(), 33);
        assert!(r.contains(15..40));
        assert!(!r.contains(11..13));
        assert_eq!(r.gaps(0..50), vec![0..5, 12..14, 40..50]);
        assert_eq!(r.gaps(15..20), Vec::<Range<u64>>::new());
    }

    #[test]
    fn matches_a_bitmap_model() {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut set = RangeSet::new();
        let mut model = [false; 200];
        for _ in 0..2000 {
            let a = next() % 200;
            let b = (a + 1 + next() % 30).min(200);
            if next() % 3 == 0 {
                set.remove(a..b);
                model[a as usize..b as usize].fill(false);
            } else {
                set.insert(a..b);
                model[a as usize..b as usize].fill(true);
            }
            let from_set: Vec<bool> = (0..200).map(|i| set.contains(i..i + 1)).collect();
            assert_eq!(from_set, model);
            let gaps: u64 = set.gaps(0..200).iter().map(|g| g.end - g.start).sum();
            assert_eq!(gaps + set.len(), 200);
        }
    }
}
