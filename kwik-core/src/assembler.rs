//! Reassembly of one logical stream's receive side.
//!
//! Bytes of a logical stream may arrive out of order and more than once
//! (several sources, retransmission after a failover). The assembler keeps the
//! contiguous prefix ready for the reader, parks pieces above it, drops exact
//! duplicates and reports a conflict when different bytes claim an offset it
//! still holds. In-order arrival — the common case — is a push onto a queue.
//!
//! Memory is charged at its real cost, because a peer chooses the record
//! sizes: a megabyte sent as a million one-byte records must not cost a
//! million buffers. Pieces of packet size or more are kept as zero-copy
//! slices of the received datagrams; smaller pieces are copied and appended
//! to an adjacent owned buffer when there is one, so in-order tiny records
//! cost about their payload. What cannot be merged (pieces separated by
//! gaps, or arriving right-to-left) is charged [`PIECE_OVERHEAD`] each, and
//! the stream's owner refuses a peer that drives the charge past its bound.
//! Every lookup is by offset in ordered structures, so checking a duplicate
//! costs O(log n) whatever is held.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, Bytes, BytesMut};

/// Pieces shorter than this are copied into owned buffers (merged with their
/// left neighbour when adjacent) instead of pinning the datagram they came in.
const COALESCE_BELOW: usize = 1024;

/// Largest following piece a piece growing to the right absorbs when it
/// reaches it: a fragment left between gaps is that small.
const ABSORB_AT_MOST: usize = 64;

/// Bookkeeping cost charged per stored piece: a tree node's share, the
/// slice header and the allocation (measured at about 95 bytes for a lone
/// one-byte piece), with a margin.
pub(crate) const PIECE_OVERHEAD: u64 = 128;

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

/// A stored run of bytes: a zero-copy slice, or an owned buffer that small
/// adjacent pieces are appended to.
#[derive(Debug)]
enum Piece {
    Shared(Bytes),
    Owned(BytesMut),
}

impl Piece {
    /// Stores `data`, copying it if it is small.
    fn new(data: Bytes) -> Self {
        if data.len() < COALESCE_BELOW {
            Piece::Owned(BytesMut::from(&data[..]))
        } else {
            Piece::Shared(data)
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Shared(b) => b,
            Piece::Owned(b) => b,
        }
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Appends `data` if it is small and this is an owned buffer.
    fn try_append(&mut self, data: &Bytes) -> bool {
        match self {
            Piece::Owned(b) if data.len() < COALESCE_BELOW => {
                b.extend_from_slice(data);
                true
            }
            _ => false,
        }
    }

    /// Takes the first `n` bytes (at most all of them).
    fn split_front(&mut self, n: usize) -> Bytes {
        match self {
            Piece::Shared(b) => b.split_to(n),
            Piece::Owned(b) => b.split_to(n).freeze(),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Piece::Shared(b) => b,
            Piece::Owned(b) => b.freeze(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Assembler {
    /// Offset of the next byte the reader gets.
    read_offset: u64,
    /// Contiguous data from `read_offset` to `ready_end`, each piece with
    /// the offset of its first byte.
    ready: VecDeque<(u64, Piece)>,
    ready_end: u64,
    /// Non-overlapping pieces above `ready_end`, by start offset.
    pending: BTreeMap<u64, Piece>,
    /// Payload bytes held.
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

    /// Payload bytes held.
    pub(crate) fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Memory charged for what is held: the payload plus
    /// [`PIECE_OVERHEAD`] per stored piece.
    pub(crate) fn charged(&self) -> u64 {
        let pieces = (self.ready.len() + self.pending.len()) as u64;
        self.buffered + pieces * PIECE_OVERHEAD
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
        if let Some((_, back)) = self.ready.back_mut()
            && back.try_append(&data)
        {
            return;
        }
        let start = self.ready_end - data.len() as u64;
        self.ready.push_back((start, Piece::new(data)));
    }

    fn compare_ready(&self, offset: u64, data: &[u8]) -> Result<(), OffsetConflict> {
        let end = offset + data.len() as u64;
        // The first piece that can hold `offset`: the last one starting at
        // or below it.
        let first = self
            .ready
            .partition_point(|(start, _)| *start <= offset)
            .saturating_sub(1);
        for (seg_start, seg) in self.ready.range(first..) {
            let seg_start = *seg_start;
            if seg_start >= end {
                break;
            }
            let seg_end = seg_start + seg.len() as u64;
            if seg_end > offset {
                let from = offset.max(seg_start);
                let to = end.min(seg_end);
                let ours = &seg.bytes()[(from - seg_start) as usize..(to - seg_start) as usize];
                let theirs = &data[(from - offset) as usize..(to - offset) as usize];
                check_same(from, ours, theirs)?;
            }
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
            let ours = &held.bytes()[(from - k) as usize..(to - k) as usize];
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
            self.park(from, piece);
        }
        Ok(())
    }

    /// Stores `piece` at `offset` in the pending tree (the range is free),
    /// appending it to the piece that ends right there when it can; a piece
    /// so growing to the right then absorbs the fragments it reaches. When
    /// bytes fill the gaps between fragments (another source writing the
    /// same range), the fragments collapse into one piece instead of staying
    /// charged one by one. Pieces arriving right to left are not merged
    /// (each merge would copy the run again): they stay charged one by one.
    fn park(&mut self, offset: u64, piece: Bytes) {
        let left = self
            .pending
            .range_mut(..offset)
            .next_back()
            .filter(|(k, held)| **k + held.len() as u64 == offset);
        let Some((&start, held)) = left else {
            self.pending.insert(offset, Piece::new(piece));
            return;
        };
        if !held.try_append(&piece) {
            self.pending.insert(offset, Piece::new(piece));
            return;
        }
        // Filling from the left: absorb the fragments that now touch it.
        loop {
            let Some(Piece::Owned(held)) = self.pending.get(&start) else {
                return;
            };
            let end = start + held.len() as u64;
            if self
                .pending
                .get(&end)
                .is_none_or(|next| next.len() > ABSORB_AT_MOST)
            {
                return;
            }
            let next = self.pending.remove(&end).expect("checked");
            if let Some(Piece::Owned(held)) = self.pending.get_mut(&start) {
                held.extend_from_slice(next.bytes());
            }
        }
    }

    fn promote(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.ready_end {
                break;
            }
            let start = *entry.key();
            let piece = entry.remove();
            self.ready_end += piece.len() as u64;
            self.ready.push_back((start, piece));
        }
    }

    /// Takes up to `max` contiguous bytes (at least one if any are ready).
    pub(crate) fn read(&mut self, max: usize) -> Option<Bytes> {
        let (start, front) = self.ready.front_mut()?;
        let data = if front.len() > max {
            *start += max as u64;
            front.split_front(max)
        } else {
            self.ready.pop_front().expect("front exists").1.into_bytes()
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
    fn tiny_in_order_pieces_cost_about_their_payload() {
        let mut a = Assembler::default();
        let n = 100_000u64;
        for i in 0..n {
            a.insert(i, Bytes::copy_from_slice(&[i as u8])).unwrap();
        }
        assert_eq!(a.buffered(), n);
        assert!(a.charged() < n + 2 * PIECE_OVERHEAD, "{}", a.charged());
        // Above a gap they merge too.
        let mut b = Assembler::default();
        for i in 1..=n {
            b.insert(i, Bytes::copy_from_slice(&[i as u8])).unwrap();
        }
        assert!(b.charged() < n + 2 * PIECE_OVERHEAD, "{}", b.charged());
        b.insert(0, Bytes::from_static(&[0])).unwrap();
        assert_eq!(b.contiguous_end(), n + 1);
        let all = {
            let mut out = Vec::new();
            while let Some(c) = b.read(usize::MAX) {
                out.extend_from_slice(&c);
            }
            out
        };
        assert_eq!(all, (0..=n).map(|i| i as u8).collect::<Vec<_>>());
    }

    #[test]
    fn unmergeable_pieces_are_charged_their_overhead() {
        let mut a = Assembler::default();
        // Every other byte: nothing is adjacent.
        for i in 0..1000u64 {
            a.insert(2 * i + 1, Bytes::from_static(&[1])).unwrap();
        }
        assert_eq!(a.charged(), 1000 * (1 + PIECE_OVERHEAD));
    }

    #[test]
    fn filling_the_gaps_between_fragments_collapses_them() {
        let mut a = Assembler::default();
        // One source leaves 1-byte fragments at odd offsets above a gap …
        for i in 0..500u64 {
            a.insert(10 + 2 * i + 1, Bytes::from_static(&[1])).unwrap();
        }
        assert_eq!(a.charged(), 500 * (1 + PIECE_OVERHEAD));
        // … another writes the same range whole: the fragments are absorbed.
        a.insert(10, Bytes::from(vec![1u8; 1000])).unwrap();
        assert!(a.charged() <= 1000 + 3 * PIECE_OVERHEAD, "{}", a.charged());
        a.insert(0, Bytes::from(vec![1u8; 10])).unwrap();
        assert_eq!(a.contiguous_end(), 1010);
    }

    #[test]
    fn duplicates_high_in_a_long_ready_queue_are_found_by_offset() {
        let mut a = Assembler::default();
        // Alternate big (zero-copy) and small pieces so the queue stays long.
        let mut offset = 0u64;
        let mut expected = Vec::new();
        for i in 0..2000u64 {
            let len = if i % 2 == 0 { 2000 } else { 3 };
            let data: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&data);
            a.insert(offset, Bytes::from(data)).unwrap();
            offset += len;
        }
        assert!(a.ready.len() > 1000);
        let at = offset - 1500;
        let same = Bytes::copy_from_slice(&expected[at as usize..at as usize + 10]);
        assert_eq!(a.insert(at, same), Ok(false));
        let mut wrong = expected[at as usize..at as usize + 10].to_vec();
        wrong[4] ^= 1;
        assert_eq!(
            a.insert(at, Bytes::from(wrong)),
            Err(OffsetConflict { offset: at + 4 })
        );
    }

    #[test]
    fn random_splits_match_a_model() {
        // Deterministic pseudo-random schedule (no external RNG needed).
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..100 {
            let mut a = Assembler::default();
            let mut out = Vec::new();
            // Half the rounds use tiny pieces (copied and merged), half
            // large ones (zero-copy).
            let max_piece = if round % 2 == 0 { 8 } else { 3000 };
            while out.len() < data.len() {
                let from = (next() % data.len() as u64) as usize;
                let to = (from + 1 + (next() % max_piece) as usize).min(data.len());
                a.insert(from as u64, Bytes::copy_from_slice(&data[from..to]))
                    .unwrap();
                assert!(a.buffered() <= (data.len() - out.len()) as u64);
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
            assert_eq!(a.buffered(), 0);
        }
    }
}
