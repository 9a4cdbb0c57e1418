//! Framing of records on QUIC streams.
//!
//! A QUIC stream is a byte pipe: one read never equals one write. Every kwik
//! record therefore carries its own length (a protobuf varint prefix), and the
//! readers here are incremental: they accept chunks of any size and yield
//! whole records, however the bytes were split or coalesced on the way.
//!
//! Data records are a small protobuf header followed by raw payload bytes, so
//! the payload is handed on as slices of the received buffers, never copied.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use crate::error::{ErrorCode, Violation};
use crate::ids::StreamId;
use crate::proto::data::DataHeader;

/// Largest encoded data header accepted (four varint fields fit in 31 bytes).
const MAX_DATA_HEADER: usize = 64;

/// Encodes `msg` with its varint length prefix.
pub(crate) fn encode_record<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(len + prost::length_delimiter_len(len));
    msg.encode_length_delimited(&mut buf)
        .expect("BytesMut grows on demand");
    buf.freeze()
}

/// Reads a varint prefix: `Ok(None)` if more bytes are needed.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, Violation> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(Violation::new(
            ErrorCode::InvalidFrame,
            "malformed length prefix",
        ));
    }
    Ok(None)
}

/// Accumulates a stream of length-prefixed records and yields each record's
/// body once it is complete.
#[derive(Debug)]
pub(crate) struct RecordReader {
    buf: BytesMut,
    max_record: usize,
}

impl RecordReader {
    pub(crate) fn new(max_record: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_record,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The largest record body accepted.
    pub(crate) fn limit(&self) -> usize {
        self.max_record
    }

    /// Gives back a large buffer once it is empty (a burst of messages
    /// must not pin its peak).
    pub(crate) fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 64 << 10 {
            self.buf = BytesMut::new();
        }
    }

    /// The next complete record body, `Ok(None)` if incomplete.
    pub(crate) fn next_record(&mut self) -> Result<Option<Bytes>, Violation> {
        let Some((len, prefix)) = peek_varint(&self.buf)? else {
            return Ok(None);
        };
        if len > self.max_record as u64 {
            return Err(Violation::new(
                ErrorCode::InvalidFrame,
                format!("control message of {len} bytes exceeds {}", self.max_record),
            ));
        }
        let total = prefix + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let mut record = self.buf.split_to(total).freeze();
        record.advance(prefix);
        Ok(Some(record))
    }
}

/// A piece of a logical stream's payload taken from a data record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataPiece {
    pub stream: StreamId,
    pub offset: u64,
    pub data: Bytes,
    /// The stream ends right after this piece.
    pub fin: bool,
    /// End of the whole record this piece belongs to, and whether the record
    /// carries the FIN: a receiver that checks the record's range on its
    /// first piece refuses all of it or none.
    pub record_end: u64,
    pub record_fin: bool,
}

#[derive(Debug)]
enum LaneState {
    Header,
    Payload {
        stream: StreamId,
        offset: u64,
        remaining: u64,
        fin: bool,
    },
}

/// Incremental parser of the data records on one lane.
///
/// Payload bytes are emitted as soon as they arrive (a record may span many
/// chunks), as zero-copy slices of the chunks.
#[derive(Debug)]
pub(crate) struct LaneReader {
    state: LaneState,
    header_buf: BytesMut,
}

impl Default for LaneReader {
    fn default() -> Self {
        Self {
            state: LaneState::Header,
            header_buf: BytesMut::new(),
        }
    }
}

/// Encodes a data record header; the payload follows it on the lane.
pub(crate) fn encode_data_header(stream: StreamId, offset: u64, length: u64, fin: bool) -> Bytes {
    encode_record(&DataHeader {
        stream_id: stream.0,
        offset,
        length,
        fin,
    })
}

fn parse_header(buf: &[u8]) -> Result<Option<(DataHeader, usize)>, Violation> {
    let Some((len, prefix)) = peek_varint(buf)? else {
        return Ok(None);
    };
    if len as usize > MAX_DATA_HEADER {
        return Err(Violation::new(
            ErrorCode::InvalidFrame,
            "oversized data header",
        ));
    }
    let total = prefix + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let header = DataHeader::decode(&buf[prefix..total])
        .map_err(|e| Violation::new(ErrorCode::InvalidFrame, format!("bad data header: {e}")))?;
    Ok(Some((header, total)))
}

impl LaneReader {
    /// Parses `chunk`, passing every payload piece to `sink` in order.
    ///
    /// `max_payload` is the largest record payload this side accepts.
    pub(crate) fn feed(
        &mut self,
        mut chunk: Bytes,
        max_payload: u64,
        sink: &mut dyn FnMut(DataPiece) -> Result<(), Violation>,
    ) -> Result<(), Violation> {
        while !chunk.is_empty() {
            match self.state {
                LaneState::Header => {
                    let parsed = if self.header_buf.is_empty() {
                        let parsed = parse_header(&chunk)?;
                        if let Some((_, used)) = parsed {
                            chunk.advance(used);
                        }
                        parsed
                    } else {
                        let before = self.header_buf.len();
                        self.header_buf.extend_from_slice(&chunk);
                        let parsed = parse_header(&self.header_buf)?;
                        if let Some((_, used)) = parsed {
                            chunk.advance(used - before);
                            self.header_buf.clear();
                        }
                        parsed
                    };
                    match parsed {
                        Some((header, _)) => self.begin(header, max_payload, sink)?,
                        None => {
                            if self.header_buf.is_empty() {
                                self.header_buf.extend_from_slice(&chunk);
                            }
                            chunk.clear();
                            if self.header_buf.len() > MAX_DATA_HEADER + 10 {
                                return Err(Violation::new(
                                    ErrorCode::InvalidFrame,
                                    "oversized data header",
                                ));
                            }
                        }
                    }
                }
                LaneState::Payload {
                    stream,
                    offset,
                    remaining,
                    fin,
                } => {
                    let take = remaining.min(chunk.len() as u64);
                    let data = chunk.split_to(take as usize);
                    let record_end = offset + remaining;
                    let remaining = remaining - take;
                    self.state = if remaining == 0 {
                        LaneState::Header
                    } else {
                        LaneState::Payload {
                            stream,
                            offset: offset + take,
                            remaining,
                            fin,
                        }
                    };
                    sink(DataPiece {
                        stream,
                        offset,
                        data,
                        fin: fin && remaining == 0,
                        record_end,
                        record_fin: fin,
                    })?;
                }
            }
        }
        Ok(())
    }

    fn begin(
        &mut self,
        header: DataHeader,
        max_payload: u64,
        sink: &mut dyn FnMut(DataPiece) -> Result<(), Violation>,
    ) -> Result<(), Violation> {
        if header.length > max_payload {
            return Err(Violation::new(
                ErrorCode::InvalidFrame,
                format!(
                    "data frame of {} bytes exceeds {max_payload}",
                    header.length
                ),
            ));
        }
        if header
            .offset
            .checked_add(header.length)
            .is_none_or(|end| end >= 1 << 62)
        {
            return Err(Violation::new(ErrorCode::InvalidFrame, "offset overflow"));
        }
        let stream = StreamId(header.stream_id);
        if header.length == 0 {
            return sink(DataPiece {
                stream,
                offset: header.offset,
                data: Bytes::new(),
                fin: header.fin,
                record_end: header.offset,
                record_fin: header.fin,
            });
        }
        self.state = LaneState::Payload {
            stream,
            offset: header.offset,
            remaining: header.length,
            fin: header.fin,
        };
        Ok(())
    }

    /// True if the lane stopped between records (a clean place to end).
    pub(crate) fn at_record_boundary(&self) -> bool {
        matches!(self.state, LaneState::Header) && self.header_buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(reader: &mut LaneReader, chunks: &[Bytes]) -> Result<Vec<DataPiece>, Violation> {
        let mut out = Vec::new();
        for c in chunks {
            reader.feed(c.clone(), 1 << 20, &mut |p| {
                out.push(p);
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn records() -> Bytes {
        let mut wire = BytesMut::new();
        for (id, off, data, fin) in [
            (0u64, 0u64, &b"hello"[..], false),
            (4, 0, b"", false),
            (0, 5, b" world", true),
        ] {
            wire.extend_from_slice(&encode_data_header(
                StreamId(id),
                off,
                data.len() as u64,
                fin,
            ));
            wire.extend_from_slice(data);
        }
        wire.freeze()
    }

    fn reassemble(pieces: &[DataPiece], stream: u64) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut fin = false;
        for p in pieces.iter().filter(|p| p.stream.0 == stream) {
            assert_eq!(p.offset as usize, out.len());
            out.extend_from_slice(&p.data);
            fin |= p.fin;
        }
        (out, fin)
    }

    #[test]
    fn any_split_of_the_wire_yields_the_same_streams() {
        let wire = records();
        for split in 1..wire.len() {
            let chunks: Vec<Bytes> = wire.chunks(split).map(Bytes::copy_from_slice).collect();
            let mut reader = LaneReader::default();
            let pieces = collect(&mut reader, &chunks).unwrap();
            assert_eq!(
                reassemble(&pieces, 0),
                (b"hello world".to_vec(), true),
                "split {split}"
            );
            assert!(pieces.iter().any(|p| p.stream.0 == 4 && p.data.is_empty()));
            assert!(reader.at_record_boundary());
            // Every piece names its whole record: [0, 5), [5, 11) with FIN.
            for p in pieces.iter().filter(|p| p.stream.0 == 0) {
                let (end, fin) = if p.offset < 5 { (5, false) } else { (11, true) };
                assert_eq!((p.record_end, p.record_fin), (end, fin), "split {split}");
            }
        }
    }

    #[test]
    fn oversized_and_garbage_records_are_invalid_frames() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&encode_data_header(StreamId(0), 0, 2 << 20, false));
        let err = collect(&mut LaneReader::default(), &[wire.freeze()]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidFrame);

        let garbage = Bytes::from_static(&[0xff; 32]);
        let err = collect(&mut LaneReader::default(), &[garbage]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidFrame);

        let bad_body = Bytes::from_static(&[3, 0xff, 0xff, 0xff]);
        let err = collect(&mut LaneReader::default(), &[bad_body]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn record_reader_handles_partial_and_coalesced_records() {
        use crate::proto::control::{ControlMessage, StreamCredit, control_message::Body};
        let msgs: Vec<ControlMessage> = (0..5)
            .map(|i| ControlMessage {
                body: Some(Body::StreamCredit(StreamCredit {
                    stream_id: i,
                    max_offset: i * 1000,
                })),
            })
            .collect();
        let wire: Vec<u8> = msgs
            .iter()
            .flat_map(|m| encode_record(m).to_vec())
            .collect();
        for split in 1..wire.len() {
            let mut reader = RecordReader::new(1024);
            let mut got = Vec::new();
            for c in wire.chunks(split) {
                reader.push(c);
                while let Some(rec) = reader.next_record().unwrap() {
                    got.push(ControlMessage::decode(rec).unwrap());
                }
            }
            assert_eq!(got, msgs);
        }
        let mut reader = RecordReader::new(8);
        reader.push(&[100]);
        assert_eq!(
            reader.next_record().unwrap_err().code,
            ErrorCode::InvalidFrame
        );
    }
}
