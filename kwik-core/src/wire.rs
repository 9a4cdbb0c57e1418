//! Checks of every number a peer sends, made once where a control message
//! enters (the control stream reader), before any arithmetic uses it.
//!
//! Offsets live below 2^62 (QUIC's varint range, and the data records'
//! rule), stream indices below 2^60, and every list and string has a
//! bound. A message that passes [`check`] can therefore be added, compared
//! and indexed with plain arithmetic by the role logic behind it, in debug
//! and release builds alike; one that fails is `KWIK_INVALID_FRAME`.

#![deny(clippy::arithmetic_side_effects)]

use std::ops::Range;

use crate::error::{ErrorCode, Violation};
use crate::proto::common::Limits;
use crate::proto::control::control_message::Body;
use crate::proto::control::{Ack, Delegate};

/// Every logical offset (and every end of a range) is below this.
pub(crate) const OFFSET_LIMIT: u64 = 1 << 62;

/// Stream ids are 62-bit (index below 2^60, two type bits).
const STREAM_ID_LIMIT: u64 = 1 << 62;

/// Smallest `max_control_message` a peer may announce: room for the largest
/// message a conforming peer sends unprompted (an Ack of 64 ranges, a
/// PathStatus with its reason).
pub(crate) const MIN_CONTROL_MESSAGE: u64 = 4096;

/// Most received ranges an Ack may list above its contiguous prefix.
pub(crate) const MAX_ACK_RANGES: usize = 64;

/// Most paths an Ack may name as having given its stream back (a client
/// names one per Ack).
pub(crate) const MAX_ACK_RETURNS: usize = 16;

/// Longest path token accepted (an HMAC-SHA256 is 32 bytes).
const MAX_TOKEN: usize = 64;

/// Longest server name (DNS names are at most 253 characters).
pub(crate) const MAX_SERVER_NAME: usize = 255;

/// Longest textual socket address (`[v6%scope]:port`).
const MAX_ADDRESS: usize = 64;

/// Longest reason phrase in a PathStatus.
const MAX_REASON: usize = 1024;

fn invalid(reason: impl Into<String>) -> Violation {
    Violation::new(ErrorCode::InvalidFrame, reason)
}

/// `[offset, offset + length)`, if it lies below [`OFFSET_LIMIT`].
pub(crate) fn range(offset: u64, length: u64) -> Result<Range<u64>, Violation> {
    match offset.checked_add(length) {
        Some(end) if end < OFFSET_LIMIT => Ok(offset..end),
        _ => Err(invalid(format!(
            "range {offset}+{length} reaches past 2^62"
        ))),
    }
}

fn offset(what: &str, value: u64) -> Result<(), Violation> {
    if value < OFFSET_LIMIT {
        Ok(())
    } else {
        Err(invalid(format!("{what} {value} is not below 2^62")))
    }
}

/// A credit is an offset limit: at most 2^62.
fn credit(what: &str, value: u64) -> Result<(), Violation> {
    if value <= OFFSET_LIMIT {
        Ok(())
    } else {
        Err(invalid(format!("{what} {value} exceeds 2^62")))
    }
}

fn stream(value: u64) -> Result<(), Violation> {
    if value < STREAM_ID_LIMIT {
        Ok(())
    } else {
        Err(invalid(format!("stream id {value} is not a 62-bit value")))
    }
}

fn length(what: &str, len: usize, max: usize) -> Result<(), Violation> {
    if len <= max {
        Ok(())
    } else {
        Err(invalid(format!("{what} of {len} bytes exceeds {max}")))
    }
}

/// Limits a peer announces must leave room for data and control messages
/// and stay within the ranges the protocol can express.
pub(crate) fn limits(limits: &Limits) -> Result<(), Violation> {
    if limits.max_frame_payload == 0 || limits.max_control_message < MIN_CONTROL_MESSAGE {
        return Err(invalid("unusable limits"));
    }
    credit("stream window", limits.stream_window)?;
    credit("max frame payload", limits.max_frame_payload)?;
    credit("max control message", limits.max_control_message)?;
    let streams = 1 << 60;
    if limits.max_bidi_streams > streams || limits.max_uni_streams > streams {
        return Err(invalid("stream limit above 2^60"));
    }
    Ok(())
}

fn delegate(m: &Delegate) -> Result<(), Violation> {
    stream(m.stream_id)?;
    range(m.offset, m.length)?;
    credit("delegation credit", m.credit)
}

fn ack(m: &Ack) -> Result<(), Violation> {
    stream(m.stream_id)?;
    offset("acknowledged offset", m.contiguous)?;
    if m.ranges.len() > MAX_ACK_RANGES {
        return Err(invalid(format!(
            "ack lists {} ranges, at most {MAX_ACK_RANGES} allowed",
            m.ranges.len()
        )));
    }
    if m.returned_by.len() > MAX_ACK_RETURNS {
        return Err(invalid(format!(
            "ack names {} returning paths, at most {MAX_ACK_RETURNS} allowed",
            m.returned_by.len()
        )));
    }
    for r in &m.ranges {
        if r.start >= r.end || r.end >= OFFSET_LIMIT {
            return Err(invalid(format!(
                "acknowledged range {}..{} is empty or past 2^62",
                r.start, r.end
            )));
        }
    }
    Ok(())
}

/// Decodes one control record body and checks it: what the control-stream
/// reader hands the session. Every number is checked once, here, before
/// anything uses it.
pub(crate) fn decode_control(record: bytes::Bytes) -> Result<Body, Violation> {
    use prost::Message;
    let message = crate::proto::control::ControlMessage::decode(record)
        .map_err(|e| invalid(format!("bad control message: {e}")))?;
    let body = message
        .body
        .ok_or_else(|| invalid("empty control message"))?;
    check(&body)?;
    Ok(body)
}

/// Checks the numbers, lengths and lists of a decoded control message.
pub(crate) fn check(body: &Body) -> Result<(), Violation> {
    match body {
        // A Hello's limits are checked after its version and features
        // (PROTOCOL.md §4), by the handshake.
        Body::Hello(_) => Ok(()),
        Body::Welcome(m) => m.limits.as_ref().map_or(Ok(()), limits),
        Body::Joined(m) => m.limits.as_ref().map_or(Ok(()), limits),
        Body::Join(m) => {
            length("path token", m.token.len(), MAX_TOKEN)?;
            length("server name", m.server_name.len(), MAX_SERVER_NAME)?;
            length("address", m.address.len(), MAX_ADDRESS)?;
            m.limits.as_ref().map_or(Ok(()), limits)
        }
        Body::StreamCredit(m) => {
            stream(m.stream_id)?;
            credit("stream credit", m.max_offset)
        }
        Body::StreamsCredit(m) => {
            if m.max_streams > 1 << 60 {
                return Err(invalid("stream count above 2^60"));
            }
            Ok(())
        }
        Body::ResetStream(m) => {
            stream(m.stream_id)?;
            offset("final offset", m.final_offset)
        }
        Body::StopSending(m) => {
            stream(m.stream_id)?;
            offset("received offset", m.received)
        }
        Body::StreamComplete(m) => stream(m.stream_id),
        Body::AddPath(m) => {
            if m.path_id == 0 {
                return Err(invalid("AddPath names path 0 (the primary)"));
            }
            length("path token", m.token.len(), MAX_TOKEN)?;
            length("server name", m.server_name.len(), MAX_SERVER_NAME)?;
            length("address", m.address.len(), MAX_ADDRESS)
        }
        Body::PathStatus(m) => length("reason", m.reason.len(), MAX_REASON),
        Body::Delegate(m) => delegate(m),
        Body::Ack(m) => ack(m),
        Body::RemovePath(_) | Body::RawRelay(_) | Body::Raw(_) => Ok(()),
        Body::ProposePath(m) => {
            if m.proposal_id == 0 {
                return Err(invalid("ProposePath with proposal id 0"));
            }
            length("server name", m.server_name.len(), MAX_SERVER_NAME)?;
            length("address", m.address.len(), MAX_ADDRESS)
        }
        Body::ProposalAnswer(m) => {
            if m.proposal_id == 0 {
                return Err(invalid("ProposalAnswer with proposal id 0"));
            }
            // Approved names the path it added; refused names none.
            if (m.error_code == 0) != (m.path_id != 0) {
                return Err(invalid(format!(
                    "ProposalAnswer with code {:#x} and path {}",
                    m.error_code, m.path_id
                )));
            }
            if m.error_code == 0 && !m.reason.is_empty() {
                return Err(invalid("ProposalAnswer approving with a reason"));
            }
            length("reason", m.reason.len(), MAX_REASON)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::control::ByteRange;

    #[test]
    fn ranges_and_offsets_stay_below_2_62() {
        assert_eq!(range(10, 5).unwrap(), 10..15);
        assert!(range(u64::MAX - 10, 100).is_err());
        assert!(range(OFFSET_LIMIT - 1, 1).is_err());
        assert!(range(OFFSET_LIMIT - 2, 1).is_ok());
        let overflow = Delegate {
            offset: u64::MAX - 10,
            length: 100,
            ..Default::default()
        };
        assert_eq!(
            check(&Body::Delegate(overflow)).unwrap_err().code,
            ErrorCode::InvalidFrame
        );
    }

    #[test]
    fn proposals_and_answers_are_checked() {
        use crate::proto::control::{ProposalAnswer, ProposePath};
        let propose = ProposePath {
            proposal_id: 1,
            address: "10.0.0.7:4433".into(),
            server_name: "n".repeat(MAX_SERVER_NAME),
        };
        assert!(check(&Body::ProposePath(propose.clone())).is_ok());
        let mut zero = propose.clone();
        zero.proposal_id = 0;
        assert!(check(&Body::ProposePath(zero)).is_err());
        let mut long = propose.clone();
        long.server_name.push('n');
        assert!(check(&Body::ProposePath(long)).is_err());
        let mut address = propose;
        address.address = "1".repeat(MAX_ADDRESS + 1);
        assert!(check(&Body::ProposePath(address)).is_err());
        let approved = ProposalAnswer {
            proposal_id: 1,
            path_id: 3,
            error_code: 0,
            reason: String::new(),
        };
        assert!(check(&Body::ProposalAnswer(approved.clone())).is_ok());
        let refused = ProposalAnswer {
            path_id: 0,
            error_code: ErrorCode::ProposalRefused.wire(),
            reason: "r".repeat(MAX_REASON),
            ..approved.clone()
        };
        assert!(check(&Body::ProposalAnswer(refused.clone())).is_ok());
        for bad in [
            ProposalAnswer {
                path_id: 0,
                ..approved.clone()
            },
            ProposalAnswer {
                path_id: 3,
                ..refused.clone()
            },
            ProposalAnswer {
                proposal_id: 0,
                ..approved
            },
            ProposalAnswer {
                reason: "r".repeat(MAX_REASON + 1),
                ..refused
            },
        ] {
            assert!(check(&Body::ProposalAnswer(bad)).is_err());
        }
    }

    #[test]
    fn acks_are_bounded_and_well_formed() {
        let ok = Ack {
            stream_id: 3,
            contiguous: 10,
            ranges: vec![ByteRange { start: 20, end: 30 }; MAX_ACK_RANGES],
            returned_by: vec![1; MAX_ACK_RETURNS],
        };
        assert!(check(&Body::Ack(ok.clone())).is_ok());
        let mut long = ok.clone();
        long.ranges.push(ByteRange { start: 40, end: 50 });
        assert!(check(&Body::Ack(long)).is_err());
        let mut returns = ok.clone();
        returns.returned_by.push(2);
        assert!(check(&Body::Ack(returns)).is_err());
        let mut empty = ok.clone();
        empty.ranges[0] = ByteRange { start: 5, end: 5 };
        assert!(check(&Body::Ack(empty)).is_err());
        let mut far = ok;
        far.ranges[0] = ByteRange {
            start: 5,
            end: OFFSET_LIMIT,
        };
        assert!(check(&Body::Ack(far)).is_err());
    }
}
