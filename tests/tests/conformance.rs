//! Conformance: one test per MUST of PROTOCOL.md, named after its section.
//!
//! Every test drives real kwik endpoints in the simulator against a
//! scripted peer that speaks the wire by hand ([`HostileClient`],
//! [`HostilePrimary`], [`HostileSecondary`]), and asserts what the text
//! requires: the code the kwik endpoint closes with, what it delivers, what
//! it lets pass. When a MUST changes, its test changes with it.
//!
//! | § | requirement (MUST) | test |
//! |---|---|---|
//! | 2 | refuse a connection without `kwik/1` | `s2_server_refuses_a_connection_without_kwik_alpn` |
//! | 3 | not assume that reads hold whole records | `s3_records_are_read_whatever_the_read_boundaries` |
//! | 3.1 | accept a body of exactly `max_control_message` (prefix excluded) | `s3_1_control_body_of_exactly_max_control_message_is_accepted` |
//! | 3.1 | a length above `max_control_message` is INVALID_FRAME | `s3_1_control_length_above_max_control_message_is_invalid_frame` |
//! | 3.1 | an undecodable body is INVALID_FRAME | `s3_1_undecodable_control_body_is_invalid_frame` |
//! | 3.1 | an empty `body` is INVALID_FRAME | `s3_1_empty_control_body_is_invalid_frame` |
//! | 3.1 | finishing the control stream is INVALID_FRAME | `s3_1_finishing_the_control_stream_is_invalid_frame` |
//! | 3.2 | a header over 64 bytes is INVALID_FRAME | `s3_2_data_header_over_64_bytes_is_invalid_frame` |
//! | 3.2 | a payload above `max_frame_payload` is INVALID_FRAME | `s3_2_payload_above_max_frame_payload_is_invalid_frame` |
//! | 3.2 | `offset + length >= 2^62` is INVALID_FRAME | `s3_2_record_reaching_2_62_is_invalid_frame` |
//! | 3.2 | accept a lane FIN at a record boundary | `s3_2_lane_fin_at_record_boundary_ends_cleanly` |
//! | 3.2 | accept the FIN of an empty lane | `s3_2_empty_lane_fin_ends_cleanly` |
//! | 3.2 | a lane FIN inside a record is INVALID_FRAME | `s3_2_lane_fin_inside_a_record_is_invalid_frame` |
//! | 3.2 | stopping a peer's lane is INVALID_FRAME | `s3_2_stopping_a_peer_lane_is_invalid_frame` |
//! | 3.3 | a credit above 2^62 is INVALID_FRAME | `s3_3_credit_above_2_62_is_invalid_frame` |
//! | 3.3 | a PathStatus reason over 1024 bytes is INVALID_FRAME | `s3_3_path_status_reason_over_1024_bytes_is_invalid_frame` |
//! | 4 | an unknown version is VERSION_MISMATCH | `s4_hello_with_unknown_version_is_version_mismatch` |
//! | 4 | a missing required feature is FEATURE_MISMATCH | `s4_hello_requiring_unknown_feature_is_feature_mismatch` |
//! | 4 | the version is checked before the limits | `s4_hello_version_is_checked_before_its_limits` |
//! | 4, 4.1 | a Hello without `limits` is INVALID_FRAME | `s4_1_hello_without_limits_is_invalid_frame` |
//! | 4.1 | `max_control_message < 4096` is INVALID_FRAME | `s4_1_limits_below_4096_control_bytes_are_invalid_frame` |
//! | 4.1 | `max_frame_payload = 0` is INVALID_FRAME | `s4_1_limits_with_zero_frame_payload_are_invalid_frame` |
//! | 4 | a message before the Hello is INVALID_FRAME | `s4_message_before_hello_is_invalid_frame` |
//! | 4 | a second Hello is INVALID_FRAME | `s4_second_hello_is_invalid_frame` |
//! | 4 | a Welcome without `limits` is INVALID_FRAME | `s4_welcome_without_limits_is_invalid_frame` |
//! | 4 | a Welcome whose session id is not 16 bytes is INVALID_FRAME | `s4_welcome_with_short_session_id_is_invalid_frame` |
//! | 5.2 | a stream beyond the granted limit is STREAM_LIMIT | `s5_2_stream_beyond_granted_limit_is_stream_limit` |
//! | 5.2 | data on an unopened receiver-initiated stream is INVALID_FRAME | `s5_2_data_on_unopened_receiver_stream_is_invalid_frame` |
//! | 5.2 | data on the receiver's own uni stream is INVALID_FRAME | `s5_2_data_on_receivers_own_uni_stream_is_invalid_frame` |
//! | 5.2 | StreamCredit for an unopened receiver-initiated stream is INVALID_FRAME | `s5_2_credit_for_unopened_receiver_stream_is_invalid_frame` |
//! | 5.2 | StreamCredit for the peer's own uni stream is INVALID_FRAME | `s5_2_credit_for_peers_own_uni_stream_is_invalid_frame` |
//! | 5.2 | StreamCredit for a peer-initiated bidi stream opens it | `s5_2_credit_for_peer_bidi_stream_opens_it` |
//! | 6 | a byte beyond the credit is FLOW_CONTROL | `s6_byte_beyond_credit_is_flow_control` |
//! | 9 | different bytes for one held offset are OFFSET_MISMATCH | `s9_conflicting_bytes_are_offset_mismatch` |
//! | 10.3 | an AddPath id not above the last is INVALID_FRAME (session) | `s10_3_add_path_id_not_increasing_is_invalid_frame` |
//! | 10.3 | a malformed address is FAILED, INVALID_FRAME (path) | `s10_3_malformed_address_is_failed_invalid_frame` |
//! | 10.3 | a bracketed IPv6 address is well formed | `s10_3_bracketed_ipv6_address_is_well_formed` |
//! | 10.3 | Join carries the Welcome's session id and the AddPath's text | `s10_3_join_carries_welcome_session_id_and_add_path_text` |
//! | 10.5 | a secondary waits for credit below its delegation | `s10_5_delegate_credit_below_its_offset_waits_for_credit` |
//! | 10.6 | an Ack for a stream never opened is INVALID_FRAME | `s10_6_ack_for_stream_never_opened_is_invalid_frame` |
//! | 10.9 | a removed path is closed with code 0 | `s10_9_removed_path_is_closed_with_code_0` |
//! | 10.10 | a Joined without limits fails the path | `s10_10_joined_without_limits_fails_the_path` |
//! | 10.10 | a secondary may not send AddPath | `s10_10_secondary_may_not_send_add_path` |
//! | 10.10 | a secondary may not send StreamCredit | `s10_10_secondary_may_not_send_stream_credit` |
//! | 10.10 | a secondary writing outside its ranges is NOT_DELEGATED | `s10_10_secondary_writing_outside_its_delegation_is_not_delegated` |
//! | 10.10 | a client may not send a secondary Ack | `s10_10_client_may_not_send_secondary_ack` |
//! | 10.10 | a client may not send a secondary StreamsCredit | `s10_10_client_may_not_send_secondary_streams_credit` |
//! | 10.10 | a client may not send a second Join | `s10_10_client_may_not_send_secondary_a_second_join` |
//! | 10.10 | a client may send a secondary StreamCredit and StopSending | `s10_10_client_may_send_secondary_credit_and_stop` |
//! | 10.10 | a client may not send its primary Raw | `s10_10_client_may_not_send_primary_raw` |
//! | 10.10 | a client may not send its primary Delegate | `s10_10_client_may_not_send_primary_delegate` |
//! | 10.10 | a primary may not send its client Ack | `s10_10_primary_may_not_send_client_ack` |
//! | 10.10 | a primary may not send its client Raw | `s10_10_primary_may_not_send_client_raw` |
//! | 10.10 | a primary may not send its client PathStatus | `s10_10_primary_may_not_send_client_path_status` |
//! | 13.1 | a ProposePath id not above the last is INVALID_FRAME | `s13_1_propose_path_id_not_increasing_is_invalid_frame` |
//! | 13.1, 3.3 | a ProposePath id 0 is INVALID_FRAME | `s13_1_propose_path_id_0_is_invalid_frame` |
//! | 13.1, 3.3 | a proposed server name over 255 bytes is INVALID_FRAME | `s13_1_proposed_server_name_over_255_bytes_is_invalid_frame` |
//! | 13.1, 3.3 | a proposed address over 64 bytes is INVALID_FRAME | `s13_1_proposed_address_over_64_bytes_is_invalid_frame` |
//! | 13.1 | a primary may not send its client ProposePath | `s13_1_primary_may_not_send_client_propose_path` |
//! | 13.1 | a client may not send a secondary ProposePath | `s13_1_client_may_not_send_secondary_propose_path` |
//! | 13.2 | a secondary may not send its client ProposalAnswer (path closed) | `s13_2_secondary_may_not_send_proposal_answer` |
//! | 13.2 | a client may not send its primary ProposalAnswer | `s13_2_client_may_not_send_primary_proposal_answer` |
//! | 13.2 | an answer to no outstanding proposal (a second answer) is INVALID_FRAME | `s13_2_a_second_answer_to_one_proposal_is_invalid_frame` |
//! | 13.2 | an approval naming a path no AddPath announced is INVALID_FRAME | `s13_2_an_approval_naming_no_add_path_is_invalid_frame` |
//! | 13.2 | an approval whose AddPath names another server is INVALID_FRAME | `s13_2_an_approval_whose_add_path_names_another_server_is_invalid_frame` |
//! | 13.3 | an undialable address or empty name is answered INVALID_FRAME, the session goes on | `s13_3_undialable_proposals_are_answered_invalid_frame` |
//! | 13.3 | by default every proposal is refused with PROPOSAL_REFUSED, no AddPath | `s13_3_default_policy_refuses_every_proposal` |
//! | 12.2, 12.3 | a replayed first flight is not confirmed: no second session against single-use tickets | `resume.rs`: `s12_2_a_replayed_first_flight_creates_no_session_and_delivers_nothing` |
//! | 12.3 | an unconfirmed session stays half-open and dies at the deadline (reusable tickets) | `resume.rs`: `s12_3_a_replay_past_a_reusable_ticket_gets_an_unconfirmed_session_that_dies` |
//! | 12.3 | no AddPath before the handshake completes | `resume.rs`: `s12_3_a_0rtt_session_sends_no_addpath_before_its_handshake_completes` |
//! | 12.3 | a Join is not acted on before the handshake completes | `resume.rs`: `s12_3_a_join_in_0rtt_waits_for_the_handshake_and_its_replay_is_never_acted_on` |
//! | 12.3, 12.4 | early data beyond the limits is refused, and bans nobody | `resume.rs`: `s12_4_early_data_beyond_lowered_limits_is_refused_without_a_ban` |
//! | 12.5 | after a rejection the Hello goes again and stream ids start over | `resume.rs`: `s12_5_a_restarted_server_rejects_0rtt_and_the_request_goes_again`, `s12_5_a_server_with_early_data_off_rejects_0rtt` |
//!
//! The tests of §12 (0-RTT) live in `resume.rs`, beside the harness that
//! gives a client a ticket first.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use kwik_core::proto::common::Limits;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{self as msg, Delegate, Hello, StreamCredit};
use kwik_core::{
    Candidate, CloseReason, Dir, ErrorCode, PROTOCOL_VERSION, PathTarget, ProposalId, Side,
    StreamId,
};
use kwik_sim::abuse::{
    Arena, DESCRIPTOR, Ends, JOIN_PATH, ServerRole, TargetServer, VALID_UNTIL, arena_link,
    genuine_join, valid_ack, window,
};
use kwik_sim::hostile::{HostileClient, HostileSecondary, Injection, Step, upload_stream};
use kwik_sim::hostile_primary::{HostilePrimary, PrimaryStep, add_path};
use kwik_sim::setup::{SERVER_NAME, addr};
use kwik_sim::wire::{
    control_record, control_records, data_header, data_record, default_limits, garbage_record,
    length_prefix,
};
use kwik_sim::{NodeId, Payload};
use prost::Message;
use quinn_proto::{ConnectionError, TransportErrorCode};

/// TLS alert `no_application_protocol` (RFC 7301).
const NO_APPLICATION_PROTOCOL: u8 = 120;

fn server_uni(index: u64) -> StreamId {
    StreamId::new(Side::Server, Dir::Uni, index)
}

fn client_bidi(index: u64) -> StreamId {
    StreamId::new(Side::Client, Dir::Bi, index)
}

fn control(body: Body) -> Step {
    Step::Control(control_record(body).into())
}

fn lane(bytes: impl Into<Bytes>) -> Step {
    Step::Lane(bytes.into())
}

fn hello(limits: Option<Limits>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        features: 0,
        required_features: 0,
        limits,
    }
}

fn credit(stream: StreamId, max_offset: u64) -> Body {
    Body::StreamCredit(StreamCredit {
        stream_id: stream.0,
        max_offset,
    })
}

// ----- a kwik server and a scripted client -----

/// A kwik server (`role`, reading what it is sent if `read`) and a
/// [`HostileClient`] that sends a Hello and, once welcomed, `steps`.
fn server_with(seed: u64, role: ServerRole, read: bool, steps: Vec<Step>) -> Arena {
    Arena::scripted_client(seed, role, read, steps)
}

fn server(seed: u64, steps: Vec<Step>) -> Arena {
    server_with(seed, ServerRole::Passive, true, steps)
}

/// A kwik server and a client that sends no Hello: `steps` run once QUIC
/// is up.
fn server_before_hello(seed: u64, steps: Vec<Step>) -> Arena {
    let app = TargetServer::new(Payload::new(seed), ServerRole::Passive, true);
    let mut a = Arena::against_server(
        seed,
        app,
        |_| {},
        move |e: &Ends| {
            HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps).without_hello()
        },
    );
    a.establish(true).unwrap_or_else(|e| panic!("{e}"));
    a
}

fn run_until_client_ends(a: &mut Arena) {
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(3), |sim| {
        sim.node::<HostileClient>(id).ended_at().is_none()
    });
}

/// The kwik server closed the scripted client's connection with `code`.
fn assert_server_closes(mut a: Arena, code: ErrorCode) {
    run_until_client_ends(&mut a);
    let h = a.hostile();
    assert_eq!(
        h.close_code(),
        Some(code.wire()),
        "the server must close with {code}; the connection ended with {:?} ({:?})\n{}",
        h.close_code().and_then(ErrorCode::from_wire),
        h.connection_error(),
        a.context()
    );
    if a.server().established() {
        assert!(
            matches!(
                a.server().close_reason(),
                Some(CloseReason::Protocol { code: c, by_peer: false, .. }) if *c == code
            ),
            "the server application sees its own {code} close: {:?}",
            a.server().close_reason()
        );
    }
}

/// The scripted client ran its whole script and the session is still up
/// a second later.
fn assert_server_stays_open(a: &mut Arena) {
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(3), |sim| {
        let h = sim.node::<HostileClient>(id);
        h.ended_at().is_none() && !h.script_done()
    });
    a.sim.run_for(Duration::from_secs(1));
    let h = a.hostile();
    assert!(h.script_done(), "script stuck\n{}", a.context());
    assert_eq!(
        h.connection_error(),
        None,
        "the session must stay open\n{}",
        a.context()
    );
    assert!(a.server().closed.is_empty(), "{:?}", a.server().closed);
}

// ----- a kwik client and a scripted primary (and secondary) -----

/// Builds the scripted secondary of a [`client_with`] arena.
type SecondaryBuilder = Box<dyn FnOnce(&Ends) -> HostileSecondary>;

/// The address a scripted secondary listens on.
fn secondary_addr() -> SocketAddr {
    addr(3)
}

/// A kwik client (allowing [`secondary_addr`]) of a [`HostilePrimary`]
/// (`tamper` may change the primary before it runs) running `steps`; with
/// `hostile_secondary`, a [`HostileSecondary`] listens at
/// [`secondary_addr`]. Not run yet.
fn client_with(
    seed: u64,
    steps: Vec<PrimaryStep>,
    tamper: impl FnOnce(HostilePrimary) -> HostilePrimary,
    hostile_secondary: Option<SecondaryBuilder>,
) -> (Arena, Option<NodeId>) {
    let mut a = Arena::against_client(
        seed,
        |c| {
            c.path_policy
                .allow
                .push(PathTarget::Address(secondary_addr()))
        },
        move |e: &Ends| tamper(HostilePrimary::new(e.hostile, e.seed, &e.cert, steps)),
    );
    let secondary = hostile_secondary.map(|build| {
        let node = build(&a.ends);
        a.sim
            .set_path(a.ends.target, secondary_addr(), arena_link());
        a.sim.add_node(&[secondary_addr()], Box::new(node))
    });
    (a, secondary)
}

fn client(seed: u64, steps: Vec<PrimaryStep>) -> Arena {
    client_with(seed, steps, |p| p, None).0
}

/// An AddPath for path `path` to [`secondary_addr`] (any token: the
/// scripted secondary checks none).
fn add_secondary(path: u64) -> PrimaryStep {
    PrimaryStep::Control(add_path(
        path,
        secondary_addr(),
        SERVER_NAME,
        VALID_UNTIL,
        Bytes::from_static(&[7; 32]),
    ))
}

fn await_path(path: u64, state: msg::PathState) -> PrimaryStep {
    PrimaryStep::AwaitPathStatus { path, state }
}

/// A Delegate of `[0, 1000)` of the primary's first uni stream to path 1.
fn delegate_to_path_1() -> PrimaryStep {
    PrimaryStep::Control(Body::Delegate(Delegate {
        path_id: 1,
        delegation_id: 1,
        stream_id: server_uni(0).0,
        offset: 0,
        length: 1000,
        descriptor: Bytes::from_static(b"conformance"),
        ..Delegate::default()
    }))
}

/// A kwik client with a path to a [`HostileSecondary`] doing `injection`
/// on its first delegation; the primary adds the path, waits for it and
/// delegates to it.
fn client_with_hostile_path(seed: u64, injection: Injection) -> (Arena, NodeId) {
    let (a, secondary) = client_with(
        seed,
        vec![
            add_secondary(1),
            await_path(1, msg::PathState::Active),
            delegate_to_path_1(),
        ],
        |p| p,
        Some(Box::new(move |e: &Ends| {
            HostileSecondary::injecting(secondary_addr(), e.seed ^ 0x5ec, &e.cert, injection)
        })),
    );
    (a, secondary.expect("added"))
}

fn run_until_primary_ends(a: &mut Arena, limit: Duration) {
    let id = a.attacker;
    let _ = a.sim.run_while(limit, |sim| {
        sim.node::<HostilePrimary>(id).ended_at().is_none()
    });
}

/// The kwik client closed the whole session with `code`.
fn assert_client_closes(mut a: Arena, code: ErrorCode) {
    run_until_primary_ends(&mut a, Duration::from_secs(5));
    let p = a.hostile_primary();
    assert_eq!(
        p.close_code(),
        Some(code.wire()),
        "the client must close the session with {code}; it ended with {:?} ({:?})\n{}",
        p.close_code().and_then(ErrorCode::from_wire),
        p.connection_error(),
        a.context()
    );
    assert!(
        matches!(
            &a.client().closed,
            Some(CloseReason::Protocol { code: c, by_peer: false, .. }) if *c == code
        ),
        "the client application sees its own {code} close: {:?}",
        a.client().closed
    );
}

/// The kwik client reported path 1 in `state` with `code` to the primary
/// and its session is still up.
fn assert_path_ends(a: &mut Arena, state: msg::PathState, code: u64) {
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(5), |sim| {
        let p = sim.node::<HostilePrimary>(id);
        p.ended_at().is_none() && p.answers().get(&1).is_none_or(|s| s.state != state as i32)
    });
    a.sim.run_for(Duration::from_millis(200));
    let answer = a.hostile_primary().answers().get(&1).copied();
    assert!(
        answer.is_some_and(|s| s.state == state as i32 && s.code == code),
        "path 1 must be reported {state:?} with code {code:#x}: {answer:?}\n{}",
        a.context()
    );
    assert_eq!(a.client().closed, None, "the session goes on");
    assert_eq!(a.hostile_primary().connection_error(), None);
}

/// The path's connection was closed with `code` and the client reported
/// it dead with that code.
fn assert_path_closed((mut a, secondary): (Arena, NodeId), code: ErrorCode) {
    assert_path_ends(&mut a, msg::PathState::Dead, code.wire());
    assert_eq!(
        a.sim.node::<HostileSecondary>(secondary).close_code(),
        Some(code.wire()),
        "the client closes the path's connection with {code}\n{}",
        a.context()
    );
}

// ====================================================================
// §2 QUIC and TLS
// ====================================================================

#[test]
fn s2_server_refuses_a_connection_without_kwik_alpn() {
    let seed = 201;
    let app = TargetServer::new(Payload::new(seed), ServerRole::Passive, true);
    let mut a = Arena::against_server(
        seed,
        app,
        |_| {},
        |e: &Ends| HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, []).alpn(b"h3"),
    );
    run_until_client_ends(&mut a);
    match a.hostile().connection_error() {
        Some(ConnectionError::ConnectionClosed(close)) => assert_eq!(
            close.error_code,
            TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL),
            "{close}"
        ),
        other => panic!("expected a TLS refusal, got {other:?}\n{}", a.context()),
    }
    assert!(!a.server().established());
}

// ====================================================================
// §3 Framing
// ====================================================================

#[test]
fn s3_records_are_read_whatever_the_read_boundaries() {
    let seed = 301;
    let payload = Payload::new(seed);
    let stream = upload_stream();
    // A record far larger than a datagram, then a run of tiny records and
    // control records coalesced into single writes.
    let big = payload.chunk(stream, 0, 200_000);
    let mut tiny = bytes::BytesMut::new();
    for at in 0..100u64 {
        let byte = payload.chunk(stream, 200_000 + at, 1);
        kwik_sim::wire::push_data_record(&mut tiny, stream, 200_000 + at, &byte, at == 99);
    }
    let credits = (0..20).map(|i| credit(client_bidi(0), window() + i));
    let a = server(
        seed,
        vec![
            lane(data_record(stream, 0, &big, false)),
            Step::Control(control_records(credits)),
            lane(tiny.freeze()),
        ],
    );
    let mut a = a;
    assert_server_stays_open(&mut a);
    let got = a.server().received.get(&stream).cloned();
    assert!(
        got.as_ref().is_some_and(|r| r.bytes == 200_100 && r.fin),
        "every byte arrives, in order, with the FIN: {got:?}"
    );
    assert_eq!(a.server().corrupt, 0);
}

/// A control record whose body (the encoded `ControlMessage`, prefix
/// excluded) is exactly `size` bytes: `body` padded with an unknown field.
fn padded_record(body: Body, size: usize) -> Bytes {
    let base = msg::ControlMessage { body: Some(body) }.encode_to_vec();
    // Field 100, wire type 2 (length-delimited): a two-byte tag.
    let tag = prost::encoding::key_len(100);
    let mut pad = size - base.len() - tag;
    while tag + prost::length_delimiter_len(pad) + pad + base.len() > size {
        pad -= 1;
    }
    let mut record = length_prefix(size as u64);
    record.extend_from_slice(&base);
    prost::encoding::encode_key(100, prost::encoding::WireType::LengthDelimited, &mut record);
    prost::encode_length_delimiter(pad, &mut record).expect("vec");
    record.resize(record.len() + pad, 0xa5);
    assert_eq!(record.len() - length_prefix(size as u64).len(), size);
    record.into()
}

#[test]
fn s3_1_control_body_of_exactly_max_control_message_is_accepted() {
    let max = default_limits().max_control_message as usize;
    // The credit opens client bidi 0 (§5.2): proof the record was handled.
    let mut a = server(
        311,
        vec![Step::Control(padded_record(credit(client_bidi(0), 1), max))],
    );
    assert_server_stays_open(&mut a);
    assert_eq!(a.server().accepted, 1, "the padded message was applied");
}

#[test]
fn s3_1_control_length_above_max_control_message_is_invalid_frame() {
    let max = default_limits().max_control_message as usize;
    let a = server(
        312,
        vec![Step::Control(padded_record(
            credit(client_bidi(0), 1),
            max + 1,
        ))],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_1_undecodable_control_body_is_invalid_frame() {
    let a = server(313, vec![Step::Control(garbage_record().into())]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_1_empty_control_body_is_invalid_frame() {
    // A zero-length record: a ControlMessage with no body set.
    let a = server(314, vec![Step::Control(length_prefix(0).into())]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_1_finishing_the_control_stream_is_invalid_frame() {
    let a = server(315, vec![Step::FinishControl]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_2_data_header_over_64_bytes_is_invalid_frame() {
    let mut header = length_prefix(65);
    header.extend_from_slice(&[0u8; 65]);
    let a = server(321, vec![lane(header)]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_2_payload_above_max_frame_payload_is_invalid_frame() {
    let max = default_limits().max_frame_payload;
    let a = server(
        322,
        vec![lane(data_header(upload_stream(), 0, max + 1, false))],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_2_record_reaching_2_62_is_invalid_frame() {
    let a = server(
        323,
        vec![lane(data_header(upload_stream(), (1 << 62) - 1, 1, false))],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_2_lane_fin_at_record_boundary_ends_cleanly() {
    let seed = 324;
    let data = Payload::new(seed).chunk(upload_stream(), 0, 5000);
    let mut a = server(
        seed,
        vec![
            lane(data_record(upload_stream(), 0, &data, true)),
            Step::FinishLane,
        ],
    );
    assert_server_stays_open(&mut a);
    let got = a.server().received.get(&upload_stream()).cloned();
    assert!(
        got.as_ref().is_some_and(|r| r.bytes == 5000 && r.fin),
        "{got:?}"
    );
}

#[test]
fn s3_2_empty_lane_fin_ends_cleanly() {
    let mut a = server(325, vec![Step::FinishLane]);
    assert_server_stays_open(&mut a);
}

#[test]
fn s3_2_lane_fin_inside_a_record_is_invalid_frame() {
    let mut record = data_header(upload_stream(), 0, 100, false);
    record.extend_from_slice(&[1; 40]);
    let a = server(326, vec![lane(record), Step::FinishLane]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_2_stopping_a_peer_lane_is_invalid_frame() {
    let a = server_with(
        327,
        ServerRole::Write { len: 64 << 10 },
        false,
        vec![Step::AwaitServerBytes(1), Step::StopServerLanes],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_3_credit_above_2_62_is_invalid_frame() {
    let a = server(331, vec![control(credit(client_bidi(0), (1 << 62) + 1))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s3_3_path_status_reason_over_1024_bytes_is_invalid_frame() {
    let status = Body::PathStatus(msg::PathStatus {
        path_id: 1,
        state: msg::PathState::Dead as i32,
        reason: "r".repeat(1025),
        ..msg::PathStatus::default()
    });
    let a = server(332, vec![control(status)]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

// ====================================================================
// §4 Session handshake
// ====================================================================

#[test]
fn s4_hello_with_unknown_version_is_version_mismatch() {
    let mut h = hello(Some(default_limits()));
    h.version = PROTOCOL_VERSION + 1;
    let a = server_before_hello(401, vec![control(Body::Hello(h))]);
    assert_server_closes(a, ErrorCode::VersionMismatch);
}

#[test]
fn s4_hello_requiring_unknown_feature_is_feature_mismatch() {
    let mut h = hello(Some(default_limits()));
    h.required_features = 1 << 17;
    let a = server_before_hello(402, vec![control(Body::Hello(h))]);
    assert_server_closes(a, ErrorCode::FeatureMismatch);
}

#[test]
fn s4_hello_version_is_checked_before_its_limits() {
    let mut h = hello(Some(Limits {
        max_control_message: 100,
        ..default_limits()
    }));
    h.version = PROTOCOL_VERSION + 1;
    let a = server_before_hello(403, vec![control(Body::Hello(h))]);
    assert_server_closes(a, ErrorCode::VersionMismatch);
}

#[test]
fn s4_1_hello_without_limits_is_invalid_frame() {
    let a = server_before_hello(404, vec![control(Body::Hello(hello(None)))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s4_1_limits_below_4096_control_bytes_are_invalid_frame() {
    let limits = Limits {
        max_control_message: 4095,
        ..default_limits()
    };
    let a = server_before_hello(405, vec![control(Body::Hello(hello(Some(limits))))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s4_1_limits_with_zero_frame_payload_are_invalid_frame() {
    let limits = Limits {
        max_frame_payload: 0,
        ..default_limits()
    };
    let a = server_before_hello(406, vec![control(Body::Hello(hello(Some(limits))))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s4_message_before_hello_is_invalid_frame() {
    let a = server_before_hello(407, vec![control(credit(client_bidi(0), 1))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s4_second_hello_is_invalid_frame() {
    let a = server(
        408,
        vec![control(Body::Hello(hello(Some(default_limits()))))],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s4_welcome_without_limits_is_invalid_frame() {
    let (a, _) = client_with(409, vec![], |p| p.welcome_with(|w| w.limits = None), None);
    assert_client_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s4_welcome_with_short_session_id_is_invalid_frame() {
    let (a, _) = client_with(
        410,
        vec![],
        |p| p.welcome_with(|w| w.session_id = Bytes::from_static(&[1; 15])),
        None,
    );
    assert_client_closes(a, ErrorCode::InvalidFrame);
}

// ====================================================================
// §5 Logical streams, §6 flow control, §9 conflicts
// ====================================================================

#[test]
fn s5_2_stream_beyond_granted_limit_is_stream_limit() {
    let limit = default_limits().max_uni_streams;
    let stream = StreamId::new(Side::Client, Dir::Uni, limit);
    let a = server(521, vec![lane(data_record(stream, 0, b"x", false))]);
    assert_server_closes(a, ErrorCode::StreamLimit);
}

#[test]
fn s5_2_data_on_unopened_receiver_stream_is_invalid_frame() {
    let stream = StreamId::new(Side::Server, Dir::Bi, 0);
    let a = server(522, vec![lane(data_record(stream, 0, b"x", false))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s5_2_data_on_receivers_own_uni_stream_is_invalid_frame() {
    // The server opened its uni stream 0 and writes on it.
    let a = server_with(
        523,
        ServerRole::Write { len: 1000 },
        false,
        vec![lane(data_record(server_uni(0), 0, b"x", false))],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s5_2_credit_for_unopened_receiver_stream_is_invalid_frame() {
    let stream = StreamId::new(Side::Server, Dir::Bi, 0);
    let a = server(524, vec![control(credit(stream, 2 * window()))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s5_2_credit_for_peers_own_uni_stream_is_invalid_frame() {
    let a = server(525, vec![control(credit(upload_stream(), 2 * window()))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s5_2_credit_for_peer_bidi_stream_opens_it() {
    let mut a = server(526, vec![control(credit(client_bidi(1), 2 * window()))]);
    assert_server_stays_open(&mut a);
    // Index 1 opens index 0 too.
    assert_eq!(a.server().accepted, 2, "the credit opened both streams");
}

#[test]
fn s6_byte_beyond_credit_is_flow_control() {
    let a = server(
        601,
        vec![lane(data_record(upload_stream(), window(), b"x", false))],
    );
    assert_server_closes(a, ErrorCode::FlowControl);
}

#[test]
fn s9_conflicting_bytes_are_offset_mismatch() {
    let mut records = data_record(upload_stream(), 0, b"aaaa", false).to_vec();
    records.extend_from_slice(&data_record(upload_stream(), 0, b"abba", false));
    let a = server_with(901, ServerRole::Passive, false, vec![lane(records)]);
    assert_server_closes(a, ErrorCode::OffsetMismatch);
}

// ====================================================================
// §10 Multi-server sessions
// ====================================================================

#[test]
fn s10_3_add_path_id_not_increasing_is_invalid_frame() {
    let refused = |path| {
        // Not allowed by the policy: refused at once, answered FAILED.
        PrimaryStep::Control(add_path(
            path,
            addr(9),
            SERVER_NAME,
            VALID_UNTIL,
            Bytes::from_static(&[1; 32]),
        ))
    };
    let a = client(
        1031,
        vec![
            refused(5),
            await_path(5, msg::PathState::Failed),
            refused(5),
        ],
    );
    assert_client_closes(a, ErrorCode::InvalidFrame);
}

fn add_path_text(path: u64, address: &str) -> PrimaryStep {
    PrimaryStep::Control(Body::AddPath(msg::AddPath {
        path_id: path,
        address: address.to_string(),
        server_name: SERVER_NAME.to_string(),
        expiry_unix: VALID_UNTIL,
        token: Bytes::from_static(&[1; 32]),
    }))
}

#[test]
fn s10_3_malformed_address_is_failed_invalid_frame() {
    let mut a = client(
        1032,
        vec![
            add_path_text(1, "localhost:4433"),
            await_path(1, msg::PathState::Failed),
        ],
    );
    assert_path_ends(
        &mut a,
        msg::PathState::Failed,
        ErrorCode::InvalidFrame.wire(),
    );
}

#[test]
fn s10_3_bracketed_ipv6_address_is_well_formed() {
    // Well formed, so the policy (which allows only `secondary_addr`)
    // decides: KWIK_REFUSED, not KWIK_INVALID_FRAME.
    let mut a = client(
        1033,
        vec![
            add_path_text(1, "[2001:db8::1]:4433"),
            await_path(1, msg::PathState::Failed),
        ],
    );
    assert_path_ends(&mut a, msg::PathState::Failed, ErrorCode::Refused.wire());
}

#[test]
fn s10_3_join_carries_welcome_session_id_and_add_path_text() {
    let (mut a, secondary) = client_with_hostile_path(1034, Injection::GarbageOnControl);
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(5), |sim| {
        !sim.node::<HostilePrimary>(id).script_done()
    });
    let join = a
        .sim
        .node::<HostileSecondary>(secondary)
        .join_received()
        .cloned()
        .unwrap_or_else(|| panic!("no Join\n{}", a.context()));
    let session = HostilePrimary::session_id_for(a.ends.seed);
    assert_eq!(&join.session_id[..], &session.0[..], "the Welcome's id");
    assert_eq!(join.path_id, 1);
    assert_eq!(join.address, secondary_addr().to_string());
    assert_eq!(join.server_name, SERVER_NAME);
    assert_eq!(join.expiry_unix, VALID_UNTIL);
    assert_eq!(&join.token[..], &[7; 32]);
    assert!(join.limits.is_some(), "a Join carries limits");
}

#[test]
fn s10_5_delegate_credit_below_its_offset_waits_for_credit() {
    let stream = server_uni(0);
    let offset = 3 * window();
    let delegate = Body::Delegate(Delegate {
        path_id: JOIN_PATH.0,
        delegation_id: 1,
        stream_id: stream.0,
        offset,
        length: 1000,
        descriptor: Bytes::from_static(DESCRIPTOR),
        credit: 0,
        ..Delegate::default()
    });
    let mut a = Arena::joined_secondary(
        1051,
        vec![
            control(delegate),
            Step::Sleep(Duration::from_millis(500)),
            control(credit(stream, offset + 1000)),
        ],
    );
    assert_eq!(a.hostile().connection_error(), None);
    a.sim.run_for(Duration::from_millis(400));
    assert_eq!(
        a.hostile().server_bytes(),
        0,
        "nothing may be written past the credit\n{}",
        a.context()
    );
    a.sim.run_for(Duration::from_secs(1));
    assert!(
        a.hostile().server_bytes() >= 1000,
        "the range is written once the credit covers it\n{}",
        a.context()
    );
    assert_eq!(a.hostile().connection_error(), None);
}

#[test]
fn s10_6_ack_for_stream_never_opened_is_invalid_frame() {
    let a = server(
        1061,
        vec![control(Body::Ack(valid_ack(server_uni(9), 10, 0)))],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_9_removed_path_is_closed_with_code_0() {
    let (mut a, secondary) = client_with(
        1091,
        vec![
            add_secondary(1),
            await_path(1, msg::PathState::Active),
            PrimaryStep::Control(Body::RemovePath(msg::RemovePath { path_id: 1 })),
            await_path(1, msg::PathState::Closed),
        ],
        |p| p,
        Some(Box::new(|e: &Ends| {
            HostileSecondary::injecting(
                secondary_addr(),
                e.seed ^ 0x5ec,
                &e.cert,
                Injection::GarbageOnControl,
            )
        })),
    );
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(5), |sim| {
        !sim.node::<HostilePrimary>(id).script_done()
    });
    a.sim.run_for(Duration::from_millis(500));
    let secondary = secondary.expect("added");
    assert_eq!(
        a.sim.node::<HostileSecondary>(secondary).close_code(),
        Some(0),
        "a clean close uses application code 0\n{}",
        a.context()
    );
    assert_eq!(a.client().closed, None);
}

#[test]
fn s10_10_joined_without_limits_fails_the_path() {
    let (mut a, secondary) = client_with(
        1101,
        vec![add_secondary(1), await_path(1, msg::PathState::Failed)],
        |p| p,
        Some(Box::new(|e: &Ends| {
            HostileSecondary::injecting(
                secondary_addr(),
                e.seed ^ 0x5ec,
                &e.cert,
                Injection::GarbageOnControl,
            )
            .joined_limits(None)
        })),
    );
    assert_path_ends(
        &mut a,
        msg::PathState::Failed,
        ErrorCode::InvalidFrame.wire(),
    );
    assert_eq!(
        a.sim
            .node::<HostileSecondary>(secondary.expect("added"))
            .close_code(),
        Some(ErrorCode::InvalidFrame.wire())
    );
}

#[test]
fn s10_10_secondary_may_not_send_add_path() {
    let body = add_path(
        2,
        addr(4),
        SERVER_NAME,
        VALID_UNTIL,
        Bytes::from_static(&[1; 32]),
    );
    let a = client_with_hostile_path(1102, Injection::Control(control_record(body).into()));
    assert_path_closed(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_secondary_may_not_send_stream_credit() {
    let body = credit(StreamId::new(Side::Client, Dir::Bi, 0), 1 << 30);
    let a = client_with_hostile_path(1103, Injection::Control(control_record(body).into()));
    assert_path_closed(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_secondary_writing_outside_its_delegation_is_not_delegated() {
    let a = client_with_hostile_path(1104, Injection::PastRange { len: 10 });
    assert_path_closed(a, ErrorCode::NotDelegated);
}

#[test]
fn s10_10_client_may_not_send_secondary_ack() {
    let a = Arena::joined_secondary(
        1105,
        vec![control(Body::Ack(valid_ack(server_uni(0), 10, 0)))],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_client_may_not_send_secondary_streams_credit() {
    let body = Body::StreamsCredit(msg::StreamsCredit {
        bidi: true,
        max_streams: 1000,
    });
    let a = Arena::joined_secondary(1106, vec![control(body)]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_client_may_not_send_secondary_a_second_join() {
    let seed = 1107;
    let app = TargetServer::new(Payload::new(seed), ServerRole::Passive, false);
    let mut a = Arena::against_server(
        seed,
        app,
        |_| {},
        move |e: &Ends| {
            let join = genuine_join(&e.key, e.target);
            let again = control(Body::Join(join.clone()));
            HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, [again]).join(join)
        },
    );
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_client_may_send_secondary_credit_and_stop() {
    let stop = Body::StopSending(msg::StopSending {
        stream_id: server_uni(5).0,
        error_code: 1,
        received: 0,
    });
    let mut a = Arena::joined_secondary(
        1108,
        vec![control(credit(server_uni(5), 1 << 30)), control(stop)],
    );
    assert_server_stays_open(&mut a);
}

#[test]
fn s10_10_client_may_not_send_primary_raw() {
    let raw = Body::Raw(msg::Raw {
        payload: Bytes::from_static(b"hi"),
    });
    let a = server(1109, vec![control(raw)]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_client_may_not_send_primary_delegate() {
    let delegate = Body::Delegate(Delegate {
        path_id: 1,
        stream_id: server_uni(0).0,
        length: 10,
        ..Delegate::default()
    });
    let a = server(1110, vec![control(delegate)]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_primary_may_not_send_client_ack() {
    let ack = Body::Ack(valid_ack(StreamId::new(Side::Client, Dir::Uni, 0), 0, 0));
    let a = client(1111, vec![PrimaryStep::Control(ack)]);
    assert_client_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_primary_may_not_send_client_raw() {
    let raw = Body::Raw(msg::Raw {
        payload: Bytes::from_static(b"hi"),
    });
    let a = client(1112, vec![PrimaryStep::Control(raw)]);
    assert_client_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s10_10_primary_may_not_send_client_path_status() {
    let status = Body::PathStatus(msg::PathStatus {
        path_id: 1,
        state: msg::PathState::Active as i32,
        ..msg::PathStatus::default()
    });
    let a = client(1113, vec![PrimaryStep::Control(status)]);
    assert_client_closes(a, ErrorCode::InvalidFrame);
}

// ====================================================================
// §13 Client-proposed paths
// ====================================================================

fn propose_path(id: u64, address: &str, server_name: &str) -> Body {
    Body::ProposePath(msg::ProposePath {
        proposal_id: id,
        address: address.into(),
        server_name: server_name.into(),
    })
}

fn proposal_answers(a: &Arena) -> Vec<msg::ProposalAnswer> {
    a.hostile()
        .received()
        .iter()
        .filter_map(|b| match b {
            Body::ProposalAnswer(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn s13_1_propose_path_id_not_increasing_is_invalid_frame() {
    let first = control(propose_path(2, "10.0.0.9:4433", SERVER_NAME));
    let again = control(propose_path(2, "10.0.0.9:4433", SERVER_NAME));
    let a = server(1301, vec![first, again]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s13_1_propose_path_id_0_is_invalid_frame() {
    let a = server(
        1302,
        vec![control(propose_path(0, "10.0.0.9:4433", SERVER_NAME))],
    );
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s13_1_proposed_server_name_over_255_bytes_is_invalid_frame() {
    let name = "n".repeat(256);
    let a = server(1303, vec![control(propose_path(1, "10.0.0.9:4433", &name))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s13_1_proposed_address_over_64_bytes_is_invalid_frame() {
    let address = format!("[{}]:4433", "0".repeat(60));
    let a = server(1304, vec![control(propose_path(1, &address, SERVER_NAME))]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s13_1_primary_may_not_send_client_propose_path() {
    let a = client(
        1305,
        vec![PrimaryStep::Control(propose_path(
            1,
            "10.0.0.9:4433",
            SERVER_NAME,
        ))],
    );
    assert_client_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s13_2_client_may_not_send_primary_proposal_answer() {
    let answer = Body::ProposalAnswer(msg::ProposalAnswer {
        proposal_id: 1,
        path_id: 0,
        error_code: ErrorCode::ProposalRefused.wire(),
        reason: "no".into(),
    });
    let a = server(1306, vec![control(answer)]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

/// A kwik client that proposes [`secondary_addr`] (named `server_name`)
/// once its session is up, to a scripted primary that waits for the
/// proposal and then runs `steps`.
fn proposing_client(seed: u64, server_name: &str, steps: Vec<PrimaryStep>) -> Arena {
    let mut script = vec![PrimaryStep::AwaitReceived(1)];
    script.extend(steps);
    let mut a = client(seed, script);
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    let node = a
        .sim
        .node_mut::<kwik_sim::KwikNode<kwik_sim::abuse::TargetClient>>(a.target);
    let h = node.app.session.expect("connected");
    let id = node
        .endpoint
        .session(h)
        .expect("live")
        .propose_path(&Candidate::new(secondary_addr(), server_name))
        .expect("proposed");
    assert_eq!(id, ProposalId(1));
    a
}

fn refusal(id: u64) -> PrimaryStep {
    PrimaryStep::Control(Body::ProposalAnswer(msg::ProposalAnswer {
        proposal_id: id,
        path_id: 0,
        error_code: ErrorCode::ProposalRefused.wire(),
        reason: "no".into(),
    }))
}

fn approval(id: u64, path: u64) -> PrimaryStep {
    PrimaryStep::Control(Body::ProposalAnswer(msg::ProposalAnswer {
        proposal_id: id,
        path_id: path,
        error_code: 0,
        reason: String::new(),
    }))
}

fn assert_client_closes_for(a: Arena, why: &str) {
    let mut a = a;
    run_until_primary_ends(&mut a, Duration::from_secs(5));
    let reason = format!("{:?}", a.client().closed);
    assert!(reason.contains(why), "closed for {why:?}: {reason}");
    assert_client_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s13_2_a_second_answer_to_one_proposal_is_invalid_frame() {
    let a = proposing_client(1307, SERVER_NAME, vec![refusal(1), refusal(1)]);
    assert_client_closes_for(a, "not outstanding");
}

#[test]
fn s13_2_an_approval_naming_no_add_path_is_invalid_frame() {
    let a = proposing_client(1308, SERVER_NAME, vec![approval(1, 1)]);
    assert_client_closes_for(a, "no AddPath named");
}

#[test]
fn s13_2_an_approval_whose_add_path_names_another_server_is_invalid_frame() {
    // The client proposed `other.test`; the AddPath names SERVER_NAME.
    let a = proposing_client(1309, "other.test", vec![add_secondary(1), approval(1, 1)]);
    assert_client_closes_for(a, "not the proposed");
}

#[test]
fn s13_3_undialable_proposals_are_answered_invalid_frame() {
    let bad = [
        ("not-an-address", SERVER_NAME),
        ("10.0.0.9:0", SERVER_NAME),
        ("0.0.0.0:4433", SERVER_NAME),
        ("[::]:4433", SERVER_NAME),
        ("224.0.0.1:4433", SERVER_NAME),
        ("255.255.255.255:4433", SERVER_NAME),
        ("10.0.0.9:4433", ""),
    ];
    let steps = bad
        .iter()
        .enumerate()
        .map(|(i, (address, name))| control(propose_path(i as u64 + 1, address, name)))
        .collect();
    let mut a = server(1310, steps);
    assert_server_stays_open(&mut a);
    let answers = proposal_answers(&a);
    assert_eq!(answers.len(), bad.len(), "{}", a.context());
    for (i, m) in answers.iter().enumerate() {
        assert_eq!(m.proposal_id, i as u64 + 1);
        assert_eq!(
            m.error_code,
            ErrorCode::InvalidFrame.wire(),
            "{:?}: {m:?}",
            bad[i]
        );
        assert_eq!(m.path_id, 0);
    }
}

#[test]
fn s13_3_default_policy_refuses_every_proposal() {
    let steps = vec![
        control(propose_path(1, "10.0.0.9:4433", SERVER_NAME)),
        control(propose_path(5, "10.0.0.10:4433", "cache.test")),
    ];
    let mut a = server(1311, steps);
    assert_server_stays_open(&mut a);
    let answers = proposal_answers(&a);
    let ids: Vec<u64> = answers.iter().map(|m| m.proposal_id).collect();
    assert_eq!(ids, [1, 5], "each answered once; ids need only grow");
    for m in &answers {
        assert_eq!(m.error_code, ErrorCode::ProposalRefused.wire());
        assert_eq!(m.path_id, 0);
        assert!(!m.reason.is_empty());
    }
    assert!(
        !a.hostile()
            .received()
            .iter()
            .any(|b| matches!(b, Body::AddPath(_))),
        "no AddPath, no token"
    );
}

#[test]
fn s13_1_client_may_not_send_secondary_propose_path() {
    let body = propose_path(1, "10.0.0.9:4433", SERVER_NAME);
    let a = Arena::joined_secondary(1312, vec![control(body)]);
    assert_server_closes(a, ErrorCode::InvalidFrame);
}

#[test]
fn s13_2_secondary_may_not_send_proposal_answer() {
    let body = Body::ProposalAnswer(msg::ProposalAnswer {
        proposal_id: 1,
        path_id: 0,
        error_code: ErrorCode::ProposalRefused.wire(),
        reason: "no".into(),
    });
    let a = client_with_hostile_path(1313, Injection::Control(control_record(body).into()));
    assert_path_closed(a, ErrorCode::InvalidFrame);
}
