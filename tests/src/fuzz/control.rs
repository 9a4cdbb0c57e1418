//! `control_frame`: bytes off the control stream, through the record reader
//! and the decoder.
//!
//! The control stream is the first thing a peer can write to after the QUIC
//! handshake, so its reader must survive any bytes: no panic, no record
//! longer than announced, and a decoder that only passes messages whose
//! numbers were checked. The round trip (decode, re-encode, decode) catches
//! a decoder that accepts something the encoder cannot say, which would
//! let two implementations disagree about one message.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use kwik_core::fuzzing::{ControlReader, decode_control, encode_control};
use kwik_core::proto::common::Limits;
use kwik_core::proto::control::{self as msg, control_message::Body};

use super::{Input, Output, Seed};

/// Largest record the reader accepts (kwik's default `max_control_message`).
pub const MAX_RECORD: usize = 64 << 10;

/// Runs the `control_frame` target on raw control-stream bytes.
///
/// Every record is decoded until the first violation (where a session would
/// close); each decoded message must re-encode to bytes that decode to the
/// same message. Feeding the same bytes one at a time must give the same
/// records: the reader may not depend on how the stream was cut.
pub fn run(data: &[u8]) {
    let whole = records(data, data.len().max(1));
    let split = records(data, 1 + data.first().map_or(0, |b| usize::from(b % 7)));
    assert_eq!(whole, split, "records depend on how the bytes were cut");
    for record in whole.into_iter().flatten() {
        let Ok(body) = decode_control(record) else {
            break;
        };
        let again = encode_control(body.clone());
        let mut reader = ControlReader::new(MAX_RECORD.max(again.len()));
        reader.push(&again);
        let record = reader
            .next_record()
            .expect("re-encoded prefix is valid")
            .expect("re-encoded record is complete");
        let decoded = decode_control(record).expect("re-encoded message decodes");
        assert_eq!(decoded, body, "round trip changed the message");
    }
}

/// The records `data` yields when fed in chunks of `chunk` bytes: each
/// complete record, then `None` if the reader refused the rest.
fn records(data: &[u8], chunk: usize) -> Vec<Option<Bytes>> {
    let mut reader = ControlReader::new(MAX_RECORD);
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_record() {
                Ok(Some(record)) => out.push(Some(record)),
                Ok(None) => break,
                Err(_) => {
                    out.push(None);
                    return out;
                }
            }
        }
    }
    out
}

/// Limits read from the harness format (sometimes absent).
fn arb_limits(inp: &mut Input<'_, '_>) -> Option<Limits> {
    (inp.byte() % 4 != 0).then(|| Limits {
        stream_window: inp.varint(),
        max_bidi_streams: inp.varint(),
        max_uni_streams: inp.varint(),
        max_frame_payload: inp.varint(),
        max_control_message: inp.varint(),
    })
}

fn arb_string(inp: &mut Input<'_, '_>, max: usize) -> String {
    String::from_utf8_lossy(&inp.bytes(max)).into_owned()
}

/// Any control message, its fields read from the harness format: the same
/// reader builds the messages of the property tests and the hostile peers.
pub fn arb_body(inp: &mut Input<'_, '_>) -> Body {
    match inp.byte() % 18 {
        0 => Body::Hello(msg::Hello {
            version: inp.varint() as u32,
            features: inp.varint(),
            required_features: inp.varint(),
            limits: arb_limits(inp),
        }),
        1 => Body::Welcome(msg::Welcome {
            session_id: inp.bytes(24).into(),
            version: inp.varint() as u32,
            features: inp.varint(),
            limits: arb_limits(inp),
        }),
        2 => Body::StreamCredit(msg::StreamCredit {
            stream_id: inp.varint(),
            max_offset: inp.varint(),
        }),
        3 => Body::StreamsCredit(msg::StreamsCredit {
            bidi: inp.byte() & 1 == 1,
            max_streams: inp.varint(),
        }),
        4 => Body::ResetStream(msg::ResetStream {
            stream_id: inp.varint(),
            error_code: inp.varint(),
            final_offset: inp.varint(),
        }),
        5 => Body::StopSending(msg::StopSending {
            stream_id: inp.varint(),
            error_code: inp.varint(),
            received: inp.varint(),
        }),
        6 => Body::StreamComplete(msg::StreamComplete {
            stream_id: inp.varint(),
        }),
        7 => Body::Join(msg::Join {
            session_id: inp.bytes(24).into(),
            path_id: inp.varint(),
            expiry_unix: inp.varint(),
            token: inp.bytes(80).into(),
            limits: arb_limits(inp),
            address: arb_string(inp, 80),
            server_name: arb_string(inp, 300),
        }),
        8 => Body::Joined(msg::Joined {
            limits: arb_limits(inp),
        }),
        9 => Body::AddPath(msg::AddPath {
            path_id: inp.varint(),
            address: arb_string(inp, 80),
            server_name: arb_string(inp, 300),
            expiry_unix: inp.varint(),
            token: inp.bytes(80).into(),
        }),
        10 => Body::PathStatus(msg::PathStatus {
            path_id: inp.varint(),
            state: i32::from(inp.byte() % 8),
            error_code: inp.varint(),
            reason: arb_string(inp, 1100),
            rtt_us: inp.varint(),
            bytes_received: inp.varint(),
            health: i32::from(inp.byte() % 8),
            throughput: inp.varint(),
        }),
        11 => Body::RemovePath(msg::RemovePath {
            path_id: inp.varint(),
        }),
        12 => Body::Delegate(msg::Delegate {
            path_id: inp.varint(),
            delegation_id: inp.varint(),
            stream_id: inp.varint(),
            offset: inp.varint(),
            length: inp.varint(),
            fin: inp.byte() & 1 == 1,
            descriptor: inp.bytes(64).into(),
            credit: inp.varint(),
            urgent: inp.byte() & 1 == 1,
            // Any i32, kwik's own priorities included (clamped on use).
            priority: inp.varint() as i32,
        }),
        13 => {
            let n = inp.upto(70) as usize;
            Body::Ack(msg::Ack {
                stream_id: inp.varint(),
                contiguous: inp.varint(),
                ranges: (0..n)
                    .map(|_| msg::ByteRange {
                        start: inp.varint(),
                        end: inp.varint(),
                    })
                    .collect(),
                returned_by: (0..inp.upto(20)).map(|_| inp.varint()).collect(),
            })
        }
        14 => Body::RawRelay(msg::RawRelay {
            path_id: inp.varint(),
            payload: inp.bytes(2048).into(),
        }),
        16 => Body::ProposePath(msg::ProposePath {
            proposal_id: inp.varint(),
            address: arb_string(inp, 80),
            server_name: arb_string(inp, 300),
        }),
        17 => Body::ProposalAnswer(msg::ProposalAnswer {
            proposal_id: inp.varint(),
            path_id: inp.varint(),
            error_code: inp.varint(),
            reason: arb_string(inp, 1100),
        }),
        _ => Body::Raw(msg::Raw {
            payload: inp.bytes(2048).into(),
        }),
    }
}

/// A control stream for the property tests: well-formed messages, maybe
/// some garbage after them, fed whole.
#[derive(Debug, Clone)]
pub struct ControlScript {
    /// The messages, in order.
    pub messages: Vec<Body>,
    /// Bytes appended after them.
    pub tail: Vec<u8>,
}

impl ControlScript {
    /// The bytes on the stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self
            .messages
            .iter()
            .flat_map(|m| encode_control(m.clone()).to_vec())
            .collect();
        out.extend_from_slice(&self.tail);
        out
    }
}

impl<'a> Arbitrary<'a> for ControlScript {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut inp = Input::new(u);
        let n = inp.upto(24);
        let messages = (0..n).map(|_| arb_body(&mut inp)).collect();
        let tail = if inp.byte() % 4 == 0 {
            inp.bytes(64)
        } else {
            Vec::new()
        };
        Ok(Self { messages, tail })
    }
}

/// Genuine control streams: one of every message a conforming peer sends,
/// a handshake, and a few limit cases.
pub fn seeds() -> Vec<Seed> {
    let limits = || Some(crate::wire::default_limits());
    let every = vec![
        Body::Hello(msg::Hello {
            version: kwik_core::PROTOCOL_VERSION,
            features: 0,
            required_features: 0,
            limits: limits(),
        }),
        Body::Welcome(msg::Welcome {
            session_id: vec![7; 16].into(),
            version: kwik_core::PROTOCOL_VERSION,
            features: 0,
            limits: limits(),
        }),
        Body::StreamCredit(msg::StreamCredit {
            stream_id: 3,
            max_offset: 4 << 20,
        }),
        Body::StreamsCredit(msg::StreamsCredit {
            bidi: true,
            max_streams: 300,
        }),
        Body::ResetStream(msg::ResetStream {
            stream_id: 2,
            error_code: 9,
            final_offset: 1000,
        }),
        Body::StopSending(msg::StopSending {
            stream_id: 5,
            error_code: 1,
            received: 300,
        }),
        Body::StreamComplete(msg::StreamComplete { stream_id: 7 }),
        Body::Join(msg::Join {
            session_id: vec![7; 16].into(),
            path_id: 1,
            expiry_unix: 1_800_000_060,
            token: vec![0xab; 32].into(),
            limits: limits(),
            address: "10.0.0.2:4433".into(),
            server_name: crate::setup::SERVER_NAME.into(),
        }),
        Body::Joined(msg::Joined { limits: limits() }),
        Body::AddPath(msg::AddPath {
            path_id: 1,
            address: "10.0.0.2:4433".into(),
            server_name: crate::setup::SERVER_NAME.into(),
            expiry_unix: 1_800_000_060,
            token: vec![0xab; 32].into(),
        }),
        Body::PathStatus(msg::PathStatus {
            path_id: 1,
            state: msg::PathState::Failed as i32,
            error_code: kwik_core::KWIK_CODE_BASE + 3,
            reason: "refused".into(),
            rtt_us: 20_000,
            bytes_received: 12345,
            health: msg::PathHealth::Critical as i32,
            throughput: 1 << 20,
        }),
        Body::RemovePath(msg::RemovePath { path_id: 1 }),
        Body::Delegate(msg::Delegate {
            path_id: 1,
            delegation_id: 4,
            stream_id: 3,
            offset: 65536,
            length: 65536,
            fin: true,
            descriptor: b"resource-1".to_vec().into(),
            credit: 2 << 20,
            urgent: false,
            priority: 3,
        }),
        Body::Ack(crate::abuse::valid_ack(kwik_core::StreamId(3), 4096, 8)),
        Body::RawRelay(msg::RawRelay {
            path_id: 1,
            payload: b"relay me".to_vec().into(),
        }),
        Body::Raw(msg::Raw {
            payload: b"relayed".to_vec().into(),
        }),
        Body::ProposePath(msg::ProposePath {
            proposal_id: 1,
            address: "10.0.0.2:4433".into(),
            server_name: crate::setup::SERVER_NAME.into(),
        }),
        Body::ProposalAnswer(msg::ProposalAnswer {
            proposal_id: 1,
            path_id: 0,
            error_code: kwik_core::ErrorCode::ProposalRefused.wire(),
            reason: "not on the primary's list".into(),
        }),
    ];
    let stream = |bodies: &[Body]| -> Vec<u8> {
        bodies
            .iter()
            .flat_map(|b| encode_control(b.clone()).to_vec())
            .collect()
    };
    let mut seeds: Vec<Seed> = every
        .iter()
        .enumerate()
        .map(|(i, b)| Seed::new(format!("msg-{i:02}"), stream(std::slice::from_ref(b))))
        .collect();
    seeds.push(Seed::new("all-messages", stream(&every)));
    seeds.push(Seed::new("handshake", stream(&every[..2])));
    let mut truncated = stream(&every[12..13]);
    truncated.truncate(truncated.len() / 2);
    seeds.push(Seed::new("truncated", truncated));
    seeds.push(Seed::new("garbage", crate::wire::garbage_record()));
    let mut empty = Output::default();
    empty.byte(0);
    seeds.push(Seed::new("empty-record", empty.0));
    seeds
}
