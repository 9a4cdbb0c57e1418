//! `data_records`: bytes off a lane, cut into arbitrary chunks, through the
//! lane's record reader into the logical-stream table and its assembler.
//!
//! Lanes carry the bulk of every session, from peers and (on a client)
//! from secondaries, so the reader must hold whatever is thrown at it: any
//! header, any split, overlapping and duplicate records. The invariants are
//! the ones that bound a receiver's memory and keep its reads honest: a
//! stream never holds more than its window, and what the application reads
//! is, byte for byte, what accepted records said, in order, once.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use kwik_core::fuzzing::{LaneReceiver, encode_data_record};
use kwik_core::{Dir, ReadError, Side, StreamId};

use super::{Input, Output, Seed};

/// Bytes of the input before the lane bytes: window, chunking, reads.
pub const HEADER: usize = 4;

/// Largest record payload the receiver accepts.
const MAX_PAYLOAD: u64 = 16 << 10;

/// Peer streams the receiver allows per direction.
const MAX_STREAMS: u64 = 8;

/// The byte at `offset` of `stream` in genuine seeds and property inputs.
pub fn content(stream: StreamId, offset: u64) -> u8 {
    let x = (offset ^ stream.0.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

/// What the receiver accepted and the application read, per stream.
#[derive(Default)]
struct Model {
    /// Byte at each offset, as the first accepted piece gave it.
    bytes: Vec<Option<u8>>,
    /// Next offset the application reads.
    read: u64,
    fin: Option<u64>,
}

/// Runs the `data_records` target: `data` is [`HEADER`] bytes of knobs, then
/// the lane. Returns how many bytes the application read.
pub fn run(data: &[u8]) -> u64 {
    let (header, lane) = data.split_at(data.len().min(HEADER));
    let knob = |i: usize| header.get(i).copied().unwrap_or(0);
    let window = 1024u64 << (knob(0) % 8);
    let max_chunk = 1usize << (knob(1) % 12);
    let read_every = 1 + knob(2) % 4;
    let read_max = 1usize << (knob(2) / 4 % 16);
    let mut rx = LaneReceiver::new(Side::Server, window, MAX_STREAMS, MAX_PAYLOAD);
    let mut models: BTreeMap<StreamId, Model> = BTreeMap::new();
    let mut rng = u64::from_le_bytes([knob(0), knob(1), knob(2), knob(3), 1, 2, 3, 4]);
    let mut rest = lane;
    let mut round = 0u8;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = (1 + (rng as usize) % max_chunk).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut pieces = Vec::new();
        let fed = rx.feed(chunk, &mut |stream, offset, bytes, fin| {
            pieces.push((stream, offset, bytes.to_vec(), fin));
        });
        for (stream, offset, bytes, fin) in pieces {
            if rx.stream_buffered(stream).is_none() {
                continue; // released: late bytes are dropped unchecked
            }
            let m = models.entry(stream).or_default();
            let end = (offset + bytes.len() as u64) as usize;
            assert!(end as u64 <= m.read + window, "accepted past the credit");
            if m.bytes.len() < end {
                m.bytes.resize(end, None);
            }
            for (i, &b) in bytes.iter().enumerate() {
                m.bytes[offset as usize + i].get_or_insert(b);
            }
            if fin {
                m.fin = Some(end as u64);
            }
        }
        check_bounds(&rx, &models, window);
        if fed.is_err() {
            // The session closes here: nothing more is read.
            return models.values().map(|m| m.read).sum();
        }
        round = round.wrapping_add(1);
        if round % read_every == 0 {
            read_all(&mut rx, &mut models, read_max);
            check_bounds(&rx, &models, window);
        }
    }
    read_all(&mut rx, &mut models, usize::MAX);
    check_bounds(&rx, &models, window);
    models.values().map(|m| m.read).sum()
}

fn check_bounds(rx: &LaneReceiver, models: &BTreeMap<StreamId, Model>, window: u64) {
    for &id in models.keys() {
        let held = rx.stream_buffered(id).unwrap_or(0);
        assert!(held <= window, "{id} holds {held} bytes, window {window}");
    }
    assert!(rx.buffered() <= window * 2 * MAX_STREAMS);
}

/// Reads every stream the peer opened, checking each byte against the model.
fn read_all(rx: &mut LaneReceiver, models: &mut BTreeMap<StreamId, Model>, max: usize) {
    for dir in [Dir::Bi, Dir::Uni] {
        while let Some(id) = rx.accept(dir) {
            models.entry(id).or_default();
        }
    }
    for (&id, m) in models.iter_mut() {
        loop {
            match rx.read(id, max) {
                Ok(Some(data)) => {
                    for (i, &b) in data.iter().enumerate() {
                        let at = m.read as usize + i;
                        assert_eq!(
                            m.bytes.get(at).copied().flatten(),
                            Some(b),
                            "{id}: byte {at} read differs from what was accepted"
                        );
                    }
                    m.read += data.len() as u64;
                    if max != usize::MAX {
                        break;
                    }
                }
                Ok(None) => {
                    assert_eq!(m.fin, Some(m.read), "{id}: end of stream before its FIN");
                    break;
                }
                Err(ReadError::Blocked | ReadError::ClosedStream) => break,
                Err(e) => panic!("{id}: unexpected read error {e:?}"),
            }
        }
    }
}

/// One record of a [`LaneScript`].
#[derive(Debug, Clone)]
pub struct RecordSpec {
    /// Client stream index selector (bi/uni, index).
    pub stream: StreamId,
    /// First offset.
    pub offset: u64,
    /// Payload length.
    pub len: u64,
    /// Carries the FIN.
    pub fin: bool,
    /// Flip one payload byte (a conflicting duplicate).
    pub corrupt: bool,
}

/// A lane for the property tests: genuine records (overlapping, out of
/// order, some corrupted) plus the knobs, encoded into a target input.
#[derive(Debug, Clone)]
pub struct LaneScript {
    /// The [`HEADER`] knob bytes.
    pub knobs: [u8; HEADER],
    /// The records, in lane order.
    pub records: Vec<RecordSpec>,
}

impl LaneScript {
    /// The target input: knobs, then the encoded records.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.knobs.to_vec();
        for r in &self.records {
            let mut payload: Vec<u8> = (r.offset..r.offset + r.len)
                .map(|o| content(r.stream, o))
                .collect();
            if r.corrupt
                && let Some(b) = payload.last_mut()
            {
                *b ^= 0x55;
            }
            out.extend(encode_data_record(r.stream, r.offset, &payload, r.fin));
        }
        out
    }
}

impl<'a> Arbitrary<'a> for LaneScript {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut inp = Input::new(u);
        let knobs = [inp.byte(), inp.byte(), inp.byte(), inp.byte()];
        let n = inp.upto(40);
        // Mostly each stream's next bytes, sometimes a jump back or ahead.
        let mut next = BTreeMap::<StreamId, u64>::new();
        let records = (0..n)
            .map(|_| {
                let sel = inp.byte();
                let dir = if sel & 1 == 0 { Dir::Bi } else { Dir::Uni };
                let stream = StreamId::new(Side::Client, dir, u64::from(sel >> 1) % 3);
                let at = next.entry(stream).or_default();
                let offset = if sel & 0xc0 == 0xc0 {
                    inp.upto(8192)
                } else {
                    *at
                };
                let len = inp.upto(2048);
                *at = offset + len;
                RecordSpec {
                    stream,
                    offset,
                    len,
                    fin: inp.byte() % 8 == 0,
                    corrupt: inp.byte() % 16 == 0,
                }
            })
            .collect();
        Ok(Self { knobs, records })
    }
}

/// Genuine lanes: in-order streams, interleaved streams, a retransmission,
/// FINs, empty records.
pub fn seeds() -> Vec<Seed> {
    let record = |s: StreamId, off: u64, len: u64, fin: bool| RecordSpec {
        stream: s,
        offset: off,
        len,
        fin,
        corrupt: false,
    };
    let bi0 = StreamId::new(Side::Client, Dir::Bi, 0);
    let uni0 = StreamId::new(Side::Client, Dir::Uni, 0);
    let uni3 = StreamId::new(Side::Client, Dir::Uni, 3);
    let scripts = [
        (
            "in-order",
            [3, 6, 0x41, 0],
            vec![
                record(bi0, 0, 1000, false),
                record(bi0, 1000, 1000, false),
                record(bi0, 2000, 500, true),
            ],
        ),
        (
            "interleaved",
            [2, 3, 0x22, 1],
            vec![
                record(uni0, 0, 300, false),
                record(bi0, 0, 200, false),
                record(uni3, 0, 0, false),
                record(uni0, 300, 300, true),
                record(bi0, 200, 100, true),
            ],
        ),
        (
            "out-of-order-and-duplicate",
            [1, 9, 0x13, 2],
            vec![
                record(uni0, 500, 500, true),
                record(uni0, 0, 600, false),
                record(uni0, 100, 300, false),
                record(uni0, 600, 400, true),
            ],
        ),
        (
            "tiny-records",
            [0, 1, 0x04, 3],
            (0..200).map(|i| record(bi0, i, 1, i == 199)).collect(),
        ),
        (
            "fill-the-window",
            [0, 11, 0xfc, 4],
            vec![record(uni0, 0, 1024, false), record(uni0, 1024, 1, false)],
        ),
    ];
    let mut seeds: Vec<Seed> = scripts
        .into_iter()
        .map(|(name, knobs, records)| Seed::new(name, LaneScript { knobs, records }.encode()))
        .collect();
    let mut conflict = LaneScript {
        knobs: [2, 5, 0x80, 5],
        records: vec![record(bi0, 0, 100, false), record(bi0, 50, 100, false)],
    };
    conflict.records[1].corrupt = true;
    seeds.push(Seed::new("conflicting-bytes", conflict.encode()));
    let mut header_only = Output::default();
    header_only.raw(&[1, 2, 3, 4]);
    header_only.raw(&encode_data_record(uni0, 0, &[], true));
    seeds.push(Seed::new("empty-fin", header_only.0));
    seeds
}
