//! Reassembly of one logical stream's receive side.
//!
//! Bytes of a logical stream may arrive out of order and more than once
//! (several sources, retransmission after a failover). The assembler keeps the
//! contiguous prefix ready for the reader in arrival-sized zero-copy slices,
//! parks pieces above it, drops exact duplicates and reports a conflict when
//! different bytes claim an offset it still holds. In-order arrival — the
//! common case — is a push onto a queue.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, Bytes};

/// Different bytes arrived for an offset already held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetConflict {
    pub offset: u64,
}

/// Compares two views of the bytes starting at `offset`.
fn check_same(offset: u64, ours: &[u8], theirs: &[u8]) -> Result<(), OffsetConflict> {
    match ours.iter().zip(theirs).position(|(a, b)| a != b) {
        Some(i) => Err(OffsetConflict {
            offset: offset + i as u64,
        }),
        None => Ok(()),
    }
}

#[derive(Debug, Default)]
pub(crate) struct Assembler {
    /// Offset of the next byte the reader gets.
    read_offset: u64,
    /// Contiguous data from `read_offset` to `ready_end`.
    ready: VecDeque<Bytes>,
    ready_end: u64,
    /// Non-overlapping pieces above `ready_end`, by start offset.
    pending: BTreeMap<u64, Bytes>,
    buffered: u64,
}

impl Assembler {
    /// Offset of the next byte to read.
    pub(crate) fn read_offset(&self) -> u64 {
        self.read_offset
    }

    /// Every byte below this offset has arrived.
    pub(crate) fn contiguous_end(&self) -> u64 {
        self.ready_end
    }

    /// Bytes held in memory.
    pub(crate) fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Adds a piece. Returns whether new bytes became readable.
    pub(crate) fn insert(&mut self, offset: u64, mut data: Bytes) -> Result<bool, OffsetConflict> {
        let before = self.ready_end;
        let mut offset = offset;
        // Already read: nothing to compare against any more.
        if offset < self.read_offset {
            let skip = (self.read_offset - offset).min(data.len() as u64);
            data.advance(skip as usize);
            offset += skip;
        }
        if offset < self.ready_end && !data.is_empty() {
            let overlap = (self.ready_end - offset).min(data.len() as u64) as usize;
            self.compare_ready(offset, &data[..overlap])?;
            data.advance(overlap);
            offset += overlap as u64;
        }
        if data.is_empty() {
            return Ok(false);
        }
        let end = offset + data.len() as u64;
        if offset == self.ready_end
            && self
                .pending
                .first_key_value()
                .is_none_or(|(&k, _)| k >= end)
        {
            self.push_ready(data);
        } else {
            self.insert_pending(offset, data)?;
        }
        self.promote();
        Ok(self.ready_end > before)
    }

    fn push_ready(&mut self, data: Bytes) {
        self.ready_end += data.len() as u64;
        self.buffered += data.len() as u64;
        self.ready.push_back(data);
    }

    fn compare_ready(&self, offset: u64, data: &[u8]) -> Result<(), OffsetConflict> {
        let mut seg_start = self.read_offset;
        let end = offset + data.len() as u64;
        for seg in &self.ready {
            let seg_end = seg_start + seg.len() as u64;
            if seg_end > offset && seg_start < end {
                let from = offset.max(seg_start);
                let to = end.min(seg_end);
                let ours = &seg[(from - seg_start) as usize..(to - seg_start) as usize];
                let theirs = &data[(from - offset) as usize..(to - offset) as usize];
                check_same(from, ours, theirs)?;
            }
            if seg_end >= end {
                break;
            }
            seg_start = seg_end;
        }
        Ok(())
    }

    fn insert_pending(&mut self, offset: u64, data: Bytes) -> Result<(), OffsetConflict> {
        let end = offset + data.len() as u64;
        let first = self
            .pending
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&k, _)| k);
        let mut cursor = offset;
        let mut gaps = Vec::new();
        for (&k, held) in self.pending.range(first..end) {
            let held_end = k + held.len() as u64;
            if held_end <= cursor {
                continue;
            }
            if k > cursor {
                gaps.push((cursor, k));
            }
            let from = k.max(cursor);
            let to = held_end.min(end);
            let ours = &held[(from - k) as usize..(to - k) as usize];
            let theirs = &data[(from - offset) as usize..(to - offset) as usize];
            check_same(from, ours, theirs)?;
            cursor = to;
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        for (from, to) in gaps {
            let piece = data.slice((from - offset) as usize..(to - offset) as usize);
            self.buffered += piece.len() as u64;
            self.pending.insert(from, piece);
        }
        Ok(())
    }

    fn promote(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.ready_end {
                break;
            }
            let data = entry.remove();
            self.buffered -= data.len() as u64;
            self.push_ready(data);
        }
    }

    /// Takes up to `max` contiguous bytes (at least one if any are ready).
    pub(crate) fn read(&mut self, max: usize) -> Option<Bytes> {
        let front = self.ready.front_mut()?;
        let data = if front.len() > max {
            front.split_to(max)
        } else {
            self.ready.pop_front().expect("front exists")
        };
        self.read_offset += data.len() as u64;
        self.buffered -= data.len() as u64;
        Some(data)
    }

    /// Received ranges above the contiguous end, in order, adjacent pieces
    /// merged.
    pub(crate) fn pending_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut pieces = self
            .pending
            .iter()
            .map(|(&k, v)| (k, k + v.len() as u64))
            .peekable();
        std::iter::from_fn(move || {
            let (start, mut end) = pieces.next()?;
            while let Some(&(s, e)) = pieces.peek() {
                if s != end {
                    break;
                }
                end = e;
                pieces.next();
            }
            Some((start, end))
        })
    }

    /// Drops everything held (after a reset or stop).
    pub(crate) fn clear(&mut self) {
        self.ready.clear();
        self.pending.clear();
        self.buffered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(a: &mut Assembler) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = a.read(3) {
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn out_of_order_overlapping_pieces_reassemble_once() {
        let text = b"the quick brown fox jumps over the lazy dog";
        let mut a = Assembler::default();
        let piece = |from: usize, to: usize| Bytes::copy_from_slice(&text[from..to]);
        assert!(!a.insert(10, piece(10, 20)).unwrap());
        assert!(!a.insert(15, piece(15, 30)).unwrap());
        assert!(!a.insert(35, piece(35, text.len())).unwrap());
        assert!(a.insert(0, piece(0, 12)).unwrap());
        assert_eq!(a.contiguous_end(), 30);
        assert!(a.insert(28, piece(28, 40)).unwrap());
        assert_eq!(a.contiguous_end(), text.len() as u64);
        assert!(!a.insert(5, piece(5, 25)).unwrap());
        assert_eq!(a.buffered(), text.len() as u64);
        assert_eq!(read_all(&mut a), text);
        assert_eq!(a.buffered(), 0);
        assert!(!a.insert(0, piece(0, 10)).unwrap());
    }

    #[test]
    fn pending_ranges_merge_adjacent_pieces() {
        let mut a = Assembler::default();
        for off in [10u64, 12, 14, 20, 22] {
            a.insert(off, Bytes::from_static(b"xx")).unwrap();
        }
        assert_eq!(
            a.pending_ranges().collect::<Vec<_>>(),
            vec![(10, 16), (20, 24)]
        );
    }

    #[test]
    fn conflicting_bytes_are_reported_where_they_differ() {
        let mut a = Assembler::default();
        a.insert(0, Bytes::from_static(b"abcdef")).unwrap();
        a.insert(10, Bytes::from_static(b"klmnop")).unwrap();
        assert_eq!(
            a.insert(2, Bytes::from_static(b"cdXf")),
            Err(OffsetConflict { offset: 4 })
        );
        assert_eq!(
            a.insert(8, Bytes::from_static(b"ijkZ")),
            Err(OffsetConflict { offset: 11 })
        );
        assert_eq!(a.insert(2, Bytes::from_static(b"cdef")), Ok(false));
    }

    #[test]
    fn random_splits_match_a_model() {
        // Deterministic pseudo-random schedule (no external RNG needed).
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50 {
            let mut a = Assembler::default();
            let mut out = Vec::new();
            while out.len() < data.len() {
                let from = (next() % data.len() as u64) as usize;
                let to = (from + 1 + (next() % 300) as usize).min(data.len());
                a.insert(from as u64, Bytes::copy_from_slice(&data[from..to]))
                    .unwrap();
                if next() % 3 == 0 {
                    while let Some(b) = a.read(100) {
                        out.extend_from_slice(&b);
                    }
                }
                if next() % 50 == 0 {
                    let from = out.len();
                    a.insert(from as u64, Bytes::copy_from_slice(&data[from..]))
                        .unwrap();
                }
            }
            assert_eq!(out, data);
        }
    }
}
