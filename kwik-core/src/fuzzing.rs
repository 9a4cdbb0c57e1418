//! Internals exposed for the fuzz targets and property tests. **Not API.**
//!
//! The record readers, the control-message decoder and the receive side of
//! the logical-stream table are where bytes from an untrusted peer are
//! parsed first; fuzzing them directly reaches far more inputs per second
//! than going through QUIC and TLS. This module gives `kwik-sim`'s
//! harnesses (and so `fuzz/`) just enough of them, as thin wrappers that
//! run the very code paths a session runs. It is hidden from the docs,
//! follows no semver promise and may change with any release.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::codec::{LaneReader, RecordReader, encode_data_header, encode_record};
use crate::error::ReadError;
use crate::error::Violation;
use crate::ids::{Dir, SessionHandle, Side, StreamId};
use crate::proto::control::{ControlMessage, control_message::Body};
use crate::streams::Streams;

fn describe(v: Violation) -> String {
    format!("{:?}: {}", v.code, v.reason)
}

/// The control stream's record reader: length-prefixed records of at most
/// `max_record` bytes, fed in chunks of any size.
#[derive(Debug)]
pub struct ControlReader(RecordReader);

impl ControlReader {
    /// A reader refusing records longer than `max_record`.
    pub fn new(max_record: usize) -> Self {
        Self(RecordReader::new(max_record))
    }

    /// Appends bytes received on the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.0.push(chunk);
    }

    /// The next complete record body; `Err` (a protocol violation, as the
    /// session would close with) for an oversized or malformed prefix.
    pub fn next_record(&mut self) -> Result<Option<Bytes>, String> {
        self.0.next_record().map_err(describe)
    }
}

/// Decodes and checks one control record body exactly as the session does.
pub fn decode_control(record: Bytes) -> Result<Body, String> {
    crate::wire::decode_control(record).map_err(describe)
}

/// Encodes a control message body with its length prefix.
pub fn encode_control(body: Body) -> Bytes {
    encode_record(&ControlMessage { body: Some(body) })
}

/// Encodes a data record: header with its length prefix, then the payload.
pub fn encode_data_record(stream: StreamId, offset: u64, payload: &[u8], fin: bool) -> Vec<u8> {
    let header = encode_data_header(stream, offset, payload.len() as u64, fin);
    let mut out = Vec::with_capacity(header.len() + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out
}

/// Sees each payload piece the stream table took: stream, offset, bytes,
/// whether the stream ends right after it.
pub type AcceptedPiece<'a> = dyn FnMut(StreamId, u64, &[u8], bool) + 'a;

/// The receive side of one lane: its record reader feeding a session's
/// logical-stream table (credit, FIN rules, reassembly), with no QUIC
/// underneath.
#[derive(Debug)]
pub struct LaneReceiver {
    lane: LaneReader,
    streams: Streams,
    events: VecDeque<crate::Event>,
    max_payload: u64,
    window: u64,
}

impl LaneReceiver {
    /// A receiver on side `side` granting `window` bytes of credit per
    /// stream, accepting `max_streams` peer streams of each direction and
    /// records of at most `max_payload` bytes.
    pub fn new(side: Side, window: u64, max_streams: u64, max_payload: u64) -> Self {
        let mut streams = Streams::new(SessionHandle(0), side, window, max_streams, max_streams);
        streams.set_peer_limits(window, max_streams, max_streams);
        Self {
            lane: LaneReader::default(),
            streams,
            events: VecDeque::new(),
            max_payload,
            window,
        }
    }

    /// The per-stream window this receiver grants.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Feeds lane bytes. `accepted` sees every payload piece the stream
    /// table took (stream, offset, bytes, fin). `Err` is the violation that
    /// would close the connection; the receiver must not be fed after it.
    pub fn feed(&mut self, chunk: &[u8], accepted: &mut AcceptedPiece<'_>) -> Result<(), String> {
        let streams = &mut self.streams;
        let events = &mut self.events;
        self.lane
            .feed(
                Bytes::copy_from_slice(chunk),
                self.max_payload,
                &mut |piece| {
                    let (stream, offset, fin) = (piece.stream, piece.offset, piece.fin);
                    let data = piece.data.clone();
                    streams.on_data(piece, events)?;
                    accepted(stream, offset, &data, fin);
                    Ok(())
                },
            )
            .map_err(describe)
    }

    /// Streams the peer opened, in order (as `accept` hands them out).
    pub fn accept(&mut self, dir: Dir) -> Option<StreamId> {
        self.streams.accept(dir)
    }

    /// Reads up to `max` bytes of `id`, as the application would.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, ReadError> {
        self.streams.read(id, max)
    }

    /// Payload bytes held for the application, all streams.
    pub fn buffered(&self) -> u64 {
        self.streams.buffered()
    }

    /// Payload bytes held for `id`, if it is open.
    pub fn stream_buffered(&self, id: StreamId) -> Option<u64> {
        self.streams.stream_buffered(id)
    }

    /// True if the lane stopped between records.
    pub fn at_record_boundary(&self) -> bool {
        self.lane.at_record_boundary()
    }
}
