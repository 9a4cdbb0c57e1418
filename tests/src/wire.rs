//! The kwik wire, written out by hand for the hostile nodes.
//!
//! kwik-core's own codec is private and, more to the point, only ever
//! writes well-formed records. The hostile nodes ([`crate::hostile`],
//! [`crate::hostile_primary`]) must be able to write anything — floods of
//! tiny records, overflowing ranges, garbage — so they build their bytes
//! here from the prost types kwik-core generates from `proto/*.proto`, and
//! parse what a kwik peer sends them with the small incremental reader
//! below. A well-behaved run of each hostile node (an upload confirmed, a
//! path joined) checks that this framing matches kwik's, so that the
//! refusals seen in the misbehaving runs are about the scripted fault and not
//! about a framing slip.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kwik_core::StreamId as KStreamId;
use kwik_core::proto::common::Limits;
use kwik_core::proto::control::ControlMessage;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::data::DataHeader;
use prost::Message;
use quinn_proto::{StreamId, WriteError};

use crate::trace::Trace;

/// `len` as a record length prefix (a protobuf varint).
pub fn length_prefix(len: u64) -> Vec<u8> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(prost::length_delimiter_len(len));
    prost::encode_length_delimiter(len, &mut out).expect("a Vec grows");
    out
}

/// A whole control record: length prefix + `ControlMessage { body }`.
pub fn control_record(body: Body) -> Vec<u8> {
    ControlMessage { body: Some(body) }.encode_length_delimited_to_vec()
}

/// Many control records back to back, as one buffer.
pub fn control_records(bodies: impl IntoIterator<Item = Body>) -> Bytes {
    let mut out = BytesMut::new();
    for body in bodies {
        ControlMessage { body: Some(body) }
            .encode_length_delimited(&mut out)
            .expect("BytesMut grows");
    }
    out.freeze()
}

/// A control record whose body is no protobuf: a length of 16 followed by
/// sixteen `0xff` bytes (a field tag that cannot be decoded).
pub fn garbage_record() -> Vec<u8> {
    let mut garbage = length_prefix(16);
    garbage.extend_from_slice(&[0xff; 16]);
    garbage
}

/// The header of a data record (length prefix + `DataHeader`); `length`
/// payload bytes must follow it on the lane.
pub fn data_header(stream: KStreamId, offset: u64, length: u64, fin: bool) -> Vec<u8> {
    DataHeader {
        stream_id: stream.0,
        offset,
        length,
        fin,
    }
    .encode_length_delimited_to_vec()
}

/// Appends a whole data record (header and `payload`) to `out`.
pub fn push_data_record(
    out: &mut BytesMut,
    stream: KStreamId,
    offset: u64,
    payload: &[u8],
    fin: bool,
) {
    DataHeader {
        stream_id: stream.0,
        offset,
        length: payload.len() as u64,
        fin,
    }
    .encode_length_delimited(out)
    .expect("BytesMut grows");
    out.extend_from_slice(payload);
}

/// One whole data record as a buffer.
pub fn data_record(stream: KStreamId, offset: u64, payload: &[u8], fin: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 32);
    push_data_record(&mut out, stream, offset, payload, fin);
    out.freeze()
}

/// Decodes a control record (without its length prefix). `Err` if it does
/// not parse or carries no known body.
pub fn decode_control(record: Bytes) -> Result<Body, String> {
    ControlMessage::decode(record)
        .map_err(|e| e.to_string())?
        .body
        .ok_or_else(|| "control message without a body".into())
}

/// The limits of kwik's default [`kwik_core::TransportConfig`].
pub fn default_limits() -> Limits {
    let t = kwik_core::TransportConfig::default();
    Limits {
        stream_window: t.stream_window,
        max_bidi_streams: t.max_bidi_streams,
        max_uni_streams: t.max_uni_streams,
        max_frame_payload: t.max_frame_payload,
        max_control_message: t.max_control_message,
    }
}

/// Accumulates a control stream and yields whole records.
#[derive(Debug, Default)]
pub struct RecordBuffer {
    buf: BytesMut,
}

impl RecordBuffer {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets everything buffered (after a parse error).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The next whole record body, `Ok(None)` if it is not complete yet,
    /// `Err` if the length prefix is malformed.
    pub fn next_record(&mut self) -> Result<Option<Bytes>, String> {
        let mut rest = &self.buf[..];
        let len = match prost::decode_length_delimiter(&mut rest) {
            Ok(len) => len,
            // Under ten bytes the prefix can only be incomplete.
            Err(_) if self.buf.len() < 10 => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if rest.len() < len {
            return Ok(None);
        }
        let prefix = self.buf.len() - rest.len();
        let mut record = self.buf.split_to(prefix + len);
        let _ = record.split_to(prefix);
        Ok(Some(record.freeze()))
    }
}

/// One QUIC stream's bytes waiting for quinn-proto to take them.
struct Outgoing {
    id: StreamId,
    queue: VecDeque<Bytes>,
}

/// Bytes waiting for quinn-proto, per QUIC stream, in order: the hostile
/// nodes script whole records (or floods of them) and hand them over as
/// flow control allows.
#[derive(Default)]
pub struct SendQueue(Vec<Outgoing>);

impl SendQueue {
    /// Queues `bytes` for stream `id`, after what is queued for it already.
    pub fn push(&mut self, id: StreamId, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return;
        }
        match self.0.iter_mut().find(|o| o.id == id) {
            Some(o) => o.queue.push_back(bytes),
            None => self.0.push(Outgoing {
                id,
                queue: VecDeque::from([bytes]),
            }),
        }
    }

    /// True if quinn-proto took everything queued.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|o| o.queue.is_empty())
    }

    /// Bytes still waiting for quinn-proto.
    pub fn pending_bytes(&self) -> u64 {
        self.0
            .iter()
            .flat_map(|o| o.queue.iter())
            .map(|b| b.len() as u64)
            .sum()
    }

    /// Hands queued bytes to quinn-proto until it refuses more.
    pub fn pump(&mut self, conn: &mut quinn_proto::Connection, now: Instant, trace: &mut Trace) {
        for out in &mut self.0 {
            while !out.queue.is_empty() {
                match conn
                    .send_stream(out.id)
                    .write_chunks(out.queue.make_contiguous())
                {
                    Ok(written) => {
                        out.queue.drain(..written.chunks);
                        if written.bytes == 0 {
                            break;
                        }
                    }
                    Err(WriteError::Blocked) => break,
                    Err(e) => {
                        trace.record(now, format_args!("hostile write on {} failed: {e}", out.id));
                        out.queue.clear();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwik_core::proto::control::StreamComplete;

    #[test]
    fn record_buffer_waits_for_whole_records() {
        let complete = StreamComplete { stream_id: 5 };
        let record = control_record(Body::StreamComplete(complete));
        let mut inbox = RecordBuffer::default();
        // A long prefix split mid-varint, then a record split mid-body.
        inbox.push(&length_prefix(300)[..1]);
        assert_eq!(inbox.next_record(), Ok(None));
        inbox.clear();
        for &b in &record {
            assert_eq!(inbox.next_record(), Ok(None));
            inbox.push(&[b]);
        }
        let got = inbox.next_record().unwrap().unwrap();
        assert_eq!(decode_control(got), Ok(Body::StreamComplete(complete)));
        assert!(inbox.buf.is_empty());
        // An over-long prefix is an error, not a wait.
        inbox.push(&[0xff; 10]);
        assert!(inbox.next_record().is_err());
    }

    #[test]
    fn data_records_frame_header_and_payload() {
        let stream = KStreamId(2);
        let record = data_record(stream, 7, b"abc", true);
        let mut rest = &record[..];
        let header = DataHeader::decode_length_delimited(&mut rest).unwrap();
        assert_eq!(
            header,
            DataHeader {
                stream_id: 2,
                offset: 7,
                length: 3,
                fin: true
            }
        );
        assert_eq!(rest, b"abc");
        let two = control_records([
            Body::StreamComplete(StreamComplete { stream_id: 1 }),
            Body::StreamComplete(StreamComplete { stream_id: 2 }),
        ]);
        let mut inbox = RecordBuffer::default();
        inbox.push(&two);
        assert!(inbox.next_record().unwrap().is_some());
        assert!(inbox.next_record().unwrap().is_some());
        assert_eq!(inbox.next_record(), Ok(None));
    }
}
