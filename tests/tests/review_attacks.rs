//! Hostile review of the trust boundaries (round 1): attacks that break a
//! rule of PROTOCOL.md §3.3, §5, §6.1, §10 or §10.10 today.
//!
//! Every test here is a finding: it fails on the code it was written
//! against and passes once the fault is fixed. Each one says, in its doc
//! comment, the attack, the rule it breaks, and what was observed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{Ack, ByteRange, Delegate};
use kwik_core::{
    CloseReason, Dir, ErrorCode, Event, PathFilter, PathId, PathInfo, PathTarget, Side, StreamId,
    WriteError,
};
use kwik_sim::abuse::{Arena, Ends, JOIN_PATH, Outcome, Report, ServerRole, StopWhen};
use kwik_sim::alloc::CountingAlloc;
use kwik_sim::hostile::{HostileSecondary, Injection, Step};
use kwik_sim::multi::{
    MultiClient, MultiOptions, MultiPrimary, MultiSetup, PayloadResource, SecondaryApp, ServerLink,
    Start,
};
use kwik_sim::setup::{SERVER_NAME, addr};
use kwik_sim::wire::{control_record, control_records, push_data_record};
use kwik_sim::{KwikNode, NodeId, Payload, Sim};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn server_uni(index: u64) -> StreamId {
    StreamId::new(Side::Server, Dir::Uni, index)
}

fn stop_above(bound: u64) -> StopWhen {
    StopWhen {
        growth_above: Some(bound),
        ..StopWhen::default()
    }
}

/// A hostile client (Hello mode) running `steps` against a kwik primary in
/// `role`, established, baseline taken.
fn hello_arena(seed: u64, role: ServerRole, steps: Vec<Step>) -> Arena {
    Arena::scripted_client(seed, role, false, steps)
}

fn assert_closed_within(a: &Arena, r: &Report, code: ErrorCode, bound: u64, what: &str) {
    assert!(r.metered, "the counting allocator must be installed");
    assert!(
        r.peak_growth <= bound as i64,
        "{what}: the target's heap grew {} bytes over its baseline, past the bound of {bound}, \
         without closing the session (the run stops at the first crossing); {r}\n{}",
        r.peak_growth,
        a.context()
    );
    assert!(
        matches!(&r.outcome, Outcome::Closed(CloseReason::Protocol { code: c, by_peer: false, .. }) if *c == code),
        "{what}: the target must close the session with {code}; {r}\n{}",
        a.context()
    );
}

// ====================================================================
// R1. FIN-only delegations escape the secondary's delegation bound
// ====================================================================

/// `n` `Delegate`s for path [`JOIN_PATH`], each of an empty range with
/// `fin` (the FIN of stream `i` at offset 0), under a descriptor the
/// secondary does not serve, each naming a fresh server stream.
fn fin_only_delegates(n: u64) -> Bytes {
    control_records((0..n).map(|i| {
        Body::Delegate(Delegate {
            path_id: JOIN_PATH.0,
            delegation_id: i,
            stream_id: server_uni(i).0,
            offset: 0,
            length: 0,
            fin: true,
            descriptor: Bytes::from_static(b"not-served"),
            ..Delegate::default()
        })
    }))
}

/// **Attack** (client → secondary): a joined client sends 100 000
/// `Delegate`s with `length = 0, fin = true`, each for a fresh server
/// stream, under a descriptor the secondary does not serve.
///
/// **Rule**: §10.5 — "a secondary closes with `KWIK_RESOURCE_LIMIT` when it
/// is handed more than [max_delegations, 4 096] to write"; §10.10 "every
/// structure a client can grow is bounded".
///
/// **Observed**: the bound in `session/secondary.rs` (`on_delegated`)
/// counts `jobs.len()` and the *byte ranges* in `serving`; an empty range
/// adds no range (`RangeSet::insert` ignores it) but its FIN creates a
/// `serving` entry (a `Grant` with `fin: Some(0)`) and a send half
/// (`streams.source_half`), and hands the application a `Delegated` event.
/// Neither is counted, so the secondary never closes: its heap grows
/// without bound (past 4 MiB here; ~200 bytes per message).
#[test]
fn fin_only_delegations_are_bounded_on_a_secondary() {
    let bound = 4 * MIB;
    let mut a = Arena::joined_secondary(
        9101,
        vec![Step::Mark, Step::Control(fin_only_delegates(100_000))],
    );
    let r = a.run_attack(stop_above(bound));
    println!("fin-only delegate flood: {r}");
    assert_closed_within(
        &a,
        &r,
        ErrorCode::ResourceLimit,
        bound,
        "FIN-only delegate flood",
    );
}

// ====================================================================
// R2. A client's data records are taken by a secondary
// ====================================================================

/// **Attack** (client → secondary): a joined client opens a lane and
/// writes data records on 8 of its own unidirectional logical streams,
/// 1 MiB each, to the secondary.
///
/// **Rule**: §10.10 — "What a client may send a secondary: Join (first),
/// then Delegate, Raw, StreamCredit and StopSending"; §10.5 "A secondary
/// holds state for a stream only while it has delegated bytes of it to
/// write"; data records from a client are not in the list, so they are a
/// violation (`KWIK_INVALID_FRAME`), as everything else a peer may not send.
///
/// **Observed**: the secondary reads client lanes like a primary
/// (`drive.rs` `lanes_readable` only asks for `joined`; `Streams::on_data`
/// opens client streams with `open_remote`): it creates the streams,
/// surfaces them to the secondary application (`StreamOpened`), and
/// buffers their bytes — up to the stream window per stream, 2 MiB × 256
/// uni + 2 MiB × 256 bidi streams per session with the defaults. Here its
/// application was handed the client's stream and its heap grew past
/// 1 MiB (where the run stops) with the session open.
#[test]
fn a_secondary_refuses_data_records_from_its_client() {
    let stream_count = 8u64;
    let mut lane = BytesMut::new();
    let payload = vec![0x42u8; MIB as usize];
    for i in 0..stream_count {
        let stream = StreamId::new(Side::Client, Dir::Uni, i);
        push_data_record(&mut lane, stream, 0, &payload, false);
    }
    let mut a = Arena::joined_secondary(9102, vec![Step::Mark, Step::Lane(lane.freeze())]);
    let bound = MIB;
    let r = a.run_attack(stop_above(bound));
    println!(
        "client data to a secondary: {r}; streams accepted by the secondary app: {}",
        a.server().accepted
    );
    assert!(r.metered, "the counting allocator must be installed");
    // Fixed either way: the secondary refuses the records (closing with
    // KWIK_INVALID_FRAME), or at least neither holds them nor surfaces the
    // client's streams.
    let refused = matches!(
        &r.outcome,
        Outcome::Closed(CloseReason::Protocol {
            code: ErrorCode::InvalidFrame,
            by_peer: false,
            ..
        })
    );
    assert!(
        r.peak_growth <= bound as i64 && (refused || r.outcome == Outcome::Open),
        "client data records to a secondary: refused (KWIK_INVALID_FRAME) or at least not held; \
         {r}\n{}",
        a.context()
    );
    assert_eq!(
        a.server().accepted,
        0,
        "a secondary's application never sees client streams\n{}",
        a.context()
    );
}

// ====================================================================
// R3. A legitimate StopSending kills the secondary path
// ====================================================================

fn primary_of(sim: &Sim, id: NodeId) -> &MultiPrimary {
    &sim.node::<KwikNode<MultiPrimary>>(id).app
}

fn client_of(sim: &Sim, id: NodeId) -> &MultiClient {
    &sim.node::<KwikNode<MultiClient>>(id).app
}

fn secondary_of(sim: &Sim, id: NodeId) -> &SecondaryApp {
    &sim.node::<KwikNode<SecondaryApp>>(id).app
}

fn client_paths(s: &mut MultiSetup) -> Vec<PathInfo> {
    let node = s.client_node();
    let h = node.app.session.expect("client session");
    node.endpoint
        .session(h)
        .expect("client session lives")
        .paths(PathFilter::All)
}

fn multi_context(s: &MultiSetup) -> String {
    let mut out = String::new();
    let lines = s.sim.trace().lines();
    let interesting: Vec<_> = lines
        .iter()
        .filter(|l| {
            !l.text.starts_with("StreamReadable")
                && !l.text.starts_with("StreamWritable")
                && !l.text.starts_with("StreamOpened")
        })
        .collect();
    for l in &interesting[interesting.len().saturating_sub(60)..] {
        let _ = writeln!(out, "{l}");
    }
    let c = s.client();
    let _ = writeln!(
        out,
        "client read {:?} corrupt {} finished {:?} closed {:?} path events {:?}",
        c.read, c.corrupt, c.finished, c.closed, c.path_events
    );
    let p = s.primary();
    let _ = writeln!(
        out,
        "primary added {:?} failed {:?} dead {:?} lost {} closed {:?}",
        p.added,
        p.failed,
        p.dead,
        p.lost.len(),
        p.closed,
    );
    out
}

fn run_while(s: &mut MultiSetup, what: &str, limit: Duration, cond: impl FnMut(&Sim) -> bool) {
    if let Err(e) = s.sim.run_while(limit, cond) {
        panic!("{what}: {e}\n{}", multi_context(s));
    }
}

/// A primary driven by hand and one honest kwik secondary joined as a path;
/// returns the setup, a stream the primary opened and the path.
fn manual_setup(seed: u64) -> (MultiSetup, StreamId, PathId) {
    let links = vec![ServerLink::new(100, 20); 2];
    let mut s = MultiSetup::new(MultiOptions::new(seed, links, MIB), |p| {
        p.start = Start::Manual
    });
    let (primary, secondary) = (s.primary, s.secondaries[0]);
    run_while(&mut s, "the path joins", Duration::from_secs(10), |sim| {
        primary_of(sim, primary).added.is_empty() || secondary_of(sim, secondary).joined.is_empty()
    });
    let node = s.primary_node();
    let h = node.app.session.expect("primary session");
    let path = *node.app.added.iter().next().expect("joined");
    let stream = node
        .endpoint
        .session(h)
        .expect("live")
        .open(Dir::Uni)
        .expect("stream");
    (s, stream, path)
}

/// **Attack**: none — a legitimate client application stops reading a
/// stream part of which the primary delegated to an honest kwik secondary
/// (`StreamView::stop`, §5.3 StopSending).
///
/// **Rule**: §10.4/§10.10 — the client sends StopSending to every path that
/// was delegated the stream ("What a client may send a secondary: … and
/// StopSending"); "What a secondary may send a client: Joined, then data
/// records inside its delegations". A path dies only for a violation, a
/// lost connection or silence (§10.8).
///
/// **Observed**: the secondary treats the StopSending like any sender
/// (`streams.rs` `on_control`, StopSending arm) and answers with a
/// `ResetStream` on its control stream; the client takes any control
/// message from a secondary other than `Joined` as a violation
/// (`drive.rs` `on_control`, "unexpected message from a secondary server")
/// and kills the honest path with `KWIK_INVALID_FRAME` — the primary sees
/// it DEAD (and does not retry a path that "misbehaved").
#[test]
fn stopping_a_stream_does_not_kill_the_honest_secondary_that_serves_it() {
    let seed = 9103;
    let (mut s, stream, path) = manual_setup(seed);
    // The primary delegates [0, 512 KiB) of the stream to the secondary,
    // under a descriptor it does not serve: its app holds the delegation.
    {
        let node = s.primary_node();
        let h = node.app.session.expect("primary session");
        node.endpoint
            .session(h)
            .expect("live")
            .delegate(
                path,
                stream,
                0..512 * KIB,
                false,
                Bytes::from_static(b"not-served"),
            )
            .expect("delegate");
    }
    let secondary = s.secondaries[0];
    run_while(
        &mut s,
        "the delegation arrives",
        Duration::from_secs(5),
        |sim| secondary_of(sim, secondary).delegated.is_empty(),
    );
    // The client application stops the stream.
    {
        let node = s.client_node();
        let h = node.app.session.expect("client session");
        node.endpoint
            .stream(h, stream)
            .expect("the delegation opened the stream at the client")
            .stop(7)
            .expect("stop");
    }
    s.sim.run_for(Duration::from_secs(1));
    let ctx = multi_context(&s);
    let c = s.client();
    let killed: Vec<&Event> = c
        .path_events
        .iter()
        .filter(|e| matches!(e, Event::PathDead { path: p, .. } | Event::PathFailed { path: p, .. } if *p == path))
        .collect();
    assert!(
        killed.is_empty(),
        "a StopSending from the client's own application must not kill the honest path: {killed:?}\n{ctx}"
    );
    assert!(c.closed.is_none(), "{ctx}");
    let info = client_paths(&mut s)
        .into_iter()
        .find(|i| i.id == path)
        .expect("listed");
    assert!(info.state.is_live(), "{info:?}\n{ctx}");
    assert!(
        s.secondary(0).closed.is_empty(),
        "the secondary's session goes on: {:?}\n{ctx}",
        s.secondary(0).closed
    );
}

// ====================================================================
// R4. Acks that make the ledger forget ranges crash the primary
// ====================================================================

/// An `Ack` of server stream 0 with `contiguous = 0` and `ranges`.
fn ack(ranges: impl IntoIterator<Item = (u64, u64)>) -> Bytes {
    control_record(Body::Ack(Ack {
        stream_id: server_uni(0).0,
        contiguous: 0,
        ranges: ranges
            .into_iter()
            .map(|(start, end)| ByteRange { start, end })
            .collect(),
        returned_by: Vec::new(),
    }))
    .into()
}

/// **Attack** (client → primary): while the primary serves a resource with
/// `serve` (a multi-source transfer, own share only), the client
/// acknowledges `[100 000, 200 000)`, waits half a second, then sends four
/// Acks of 64 one-byte ranges each below 100 000 (10 ms apart, so that each
/// is applied).
///
/// **Rule**: §10.10 "what a client reports about itself (Acks …) can only
/// hurt its own session"; brief "every number off the wire is validated
/// before arithmetic"; a server must never panic on peer input.
///
/// **Observed**: the ledger keeps at most 256 acknowledged ranges per stream
/// and forgets the highest (`delegation.rs` `on_ack`, `pop_last`), so the
/// client can make the primary's view of what arrived *shrink*. The
/// transfer scheduler assumes it only grows: `transfer.rs`
/// `Transfer::schedule` computes the path's rate as `delivered - d0` (u64)
/// with `d0` an older, larger sample — "attempt to subtract with overflow",
/// a panic of the server process in debug builds (in release the rate
/// wraps to ~10^19 B/s and the budget arithmetic goes with it, so this
/// test fails in debug builds only).
#[test]
fn acks_that_shrink_the_ledger_do_not_crash_the_primary() {
    let mut steps = vec![
        Step::AwaitServerBytes(1),
        Step::Mark,
        Step::Control(ack([(100_000, 200_000)])),
        Step::Sleep(Duration::from_millis(500)),
    ];
    for j in 0..4u64 {
        let ranges = (0..64u64).map(|k| {
            let at = 4 * (64 * j + k) + 1;
            (at, at + 1)
        });
        steps.push(Step::Control(ack(ranges)));
        steps.push(Step::Sleep(Duration::from_millis(10)));
    }
    steps.push(Step::Sleep(Duration::from_millis(200)));
    let mut a = hello_arena(9104, ServerRole::Serve { len: 4 * MIB }, steps);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.run_attack(StopWhen {
            limit: Duration::from_secs(5),
            ..StopWhen::default()
        })
    }));
    let r = match run {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("the primary panicked on the client's Acks: {msg}");
        }
    };
    println!("shrinking acks: {r}");
}

// ====================================================================
// R5. A secondary's fragments close the whole session
// ====================================================================

/// A client, a primary driven by hand (no honest secondary) and a
/// [`HostileSecondary`] at `addr(3)` joined as a path; every stream window
/// is `window`.
struct HostileBench {
    s: MultiSetup,
    hostile: NodeId,
    bad_path: PathId,
}

impl HostileBench {
    fn new(seed: u64, window: u64, injection: Injection) -> Self {
        let hostile_addr = addr(kwik_sim::multi::HOSTILE_SECONDARY);
        let mut opts = MultiOptions::new(seed, vec![ServerLink::new(100, 20)], 8 * MIB);
        opts.stream_window = window;
        let (mut s, hostile) = MultiSetup::with_hostile_secondary(opts, injection);
        let primary = s.primary;
        run_while(
            &mut s,
            "the session starts",
            Duration::from_secs(10),
            |sim| primary_of(sim, primary).session.is_none(),
        );
        let bad_path = primary_session(&mut s)
            .add_path(hostile_addr, SERVER_NAME)
            .expect("add_path");
        run_while(
            &mut s,
            "the hostile path joins",
            Duration::from_secs(10),
            |sim| {
                let p = primary_of(sim, primary);
                !p.added.contains(&bad_path) && p.failed.is_empty()
            },
        );
        assert!(
            s.primary().added.contains(&bad_path),
            "{}",
            multi_context(&s)
        );
        HostileBench {
            s,
            hostile,
            bad_path,
        }
    }

    fn hostile(&self) -> &HostileSecondary {
        self.s.sim.node::<HostileSecondary>(self.hostile)
    }

    fn context(&self) -> String {
        format!("hostile: {:?}\n{}", self.hostile(), multi_context(&self.s))
    }
}

fn primary_session(s: &mut MultiSetup) -> kwik_core::SessionView<'_> {
    let node = s.primary_node();
    let h = node.app.session.expect("primary session");
    node.endpoint.session(h).expect("live")
}

/// **Attack** (secondary → client): a hostile secondary delegated
/// `[0, 16 KiB)` of a stream writes the *genuine* bytes of its own range as
/// one-byte records at offsets 1, 3, 5, … — every byte inside its
/// delegation, none adjacent. The client's memory charge for the stream
/// passes twice the window (256 KiB here) and it closes the path with
/// `KWIK_RESOURCE_LIMIT`, as it should. The primary then writes the stream
/// `[0, 64 KiB)` itself and finishes it.
///
/// **Rule**: §10.10 — "Other violations by a secondary … likewise close
/// that path only; the session and its other paths go on" (only
/// `KWIK_OFFSET_MISMATCH` poisons the session); §6.1.
///
/// **Observed**: the fragments the secondary parked (and the record that
/// crossed the limit: `Streams::on_data` checks the charge *after* the
/// insert) stay in the stream's assembler after its path is closed, so the
/// stream's charge stays above the limit. The primary's very next record on
/// that stream is charged on top and fails the same check — on the primary
/// path, which closes the whole session with `KWIK_RESOURCE_LIMIT`. A
/// secondary trusted for 16 KiB kills the session.
#[test]
fn a_secondary_fragmenting_its_range_loses_only_its_path() {
    let seed = 9105;
    let window = 256 * KIB;
    let stream = server_uni(0);
    let len = 64 * KIB;
    let source = Arc::new(PayloadResource::new(Payload::new(seed), stream, len));
    let mut b = HostileBench::new(seed, window, Injection::GappedTiny { source });
    let s0 = primary_session(&mut b.s).open(Dir::Uni).expect("open");
    assert_eq!(s0, stream);
    let bad = b.bad_path;
    primary_session(&mut b.s)
        .delegate(
            bad,
            s0,
            0..16 * KIB,
            false,
            Bytes::from_static(b"not-served"),
        )
        .expect("delegate");
    let (client, hostile) = (b.s.client, b.hostile);
    let _ = b.s.sim.run_while(Duration::from_secs(3), |sim| {
        sim.node::<HostileSecondary>(hostile).ended_at().is_none()
    });
    b.s.sim.run_for(Duration::from_millis(200));
    let ctx = b.context();
    assert_eq!(
        b.hostile().close_code(),
        Some(ErrorCode::ResourceLimit.wire()),
        "precondition: the client closes the fragmenting path with KWIK_RESOURCE_LIMIT\n{ctx}"
    );
    assert!(
        b.s.client().closed.is_none(),
        "precondition: the session is up\n{ctx}"
    );
    // The primary now writes the whole stream itself and finishes it.
    let payload = Payload::new(seed);
    let mut at = 0;
    for _ in 0..400 {
        if at == len || b.s.client().closed.is_some() {
            break;
        }
        let mut chunk = payload.chunk(s0, at, (len - at) as usize);
        let node = b.s.primary_node();
        let h = node.app.session.expect("session");
        let Some(mut view) = node.endpoint.stream(h, s0) else {
            break;
        };
        match view.write_chunk(&mut chunk) {
            Ok(n) => at += n as u64,
            Err(WriteError::Blocked) => {}
            Err(_) => break,
        }
        b.s.sim.run_for(Duration::from_millis(5));
    }
    if at == len {
        let node = b.s.primary_node();
        let h = node.app.session.expect("session");
        if let Some(mut v) = node.endpoint.stream(h, s0) {
            let _ = v.finish();
        }
    }
    let _ = b.s.sim.run_while(Duration::from_secs(5), |sim| {
        let c = client_of(sim, client);
        !c.finished.contains(&stream) && c.closed.is_none()
    });
    let ctx = b.context();
    let c = b.s.client();
    assert!(
        c.closed.is_none(),
        "the session must survive a secondary's violation (only its path goes): closed with \
         {:?}\n{ctx}",
        c.closed
    );
    assert_eq!(c.corrupt, 0, "{ctx}");
    assert!(
        c.finished.contains(&stream) && c.read.get(&stream) == Some(&len),
        "the client reads the genuine stream to its end\n{ctx}"
    );
}

// ====================================================================
// R6. A primary aims a ban at its own client
// ====================================================================

/// **Attack** (primary → client → honest secondary): a hostile primary
/// sends its client an `AddPath` to an honest kwik secondary the client's
/// policy allows, with a made-up token. The client dials and joins; the
/// secondary refuses the token (`KWIK_AUTH_FAILED`) — and bans the
/// client's IP for 60 s (§11.4 counts `KWIK_AUTH_FAILED` as the peer's
/// fault). The primary then sends a *genuine* `AddPath` (a token minted with
/// the secondary's key for that session, path and secondary).
///
/// **Rule**: §11.4 "Bans cannot be aimed at a third party"; §10.10 "the
/// client … dials, enforces its own policy"; a client cannot check a token
/// (it never learns the key), so a refused token is not its fault. A
/// primary — hostile, or merely one with a stale key or a wrong clock — can
/// thus lock its client, and everyone behind the client's NAT, out of
/// every secondary it names, for every session with any primary.
///
/// **Observed**: the genuine second path fails: the secondary refuses the
/// client's connection statelessly (banned), the client reports `FAILED`.
/// Fault: `endpoint.rs` `after_drive` bans on every `is_peer_fault()` code
/// (`error.rs`), `KWIK_AUTH_FAILED` included, although the token comes
/// from the primary and the client cannot vet it.
#[test]
fn a_refused_token_does_not_ban_the_client_from_the_secondary() {
    use kwik_core::proto::control::{self as msg};
    use kwik_sim::abuse::{VALID_UNTIL, arena_endpoint, arena_link};
    use kwik_sim::hostile_primary::{HostilePrimary, PrimaryStep, add_path};
    use kwik_sim::setup::configs;

    let seed = 9106;
    let secondary_addr = addr(3);
    let mut a = Arena::against_client(
        seed,
        |c| {
            c.path_policy
                .allow
                .push(PathTarget::Address(secondary_addr))
        },
        move |e: &Ends| {
            let session = HostilePrimary::session_id_for(e.seed);
            let genuine = e.key.mint(
                session,
                PathId(2),
                VALID_UNTIL,
                &secondary_addr.to_string(),
                SERVER_NAME,
            );
            let steps = vec![
                PrimaryStep::Mark,
                PrimaryStep::Control(add_path(
                    1,
                    secondary_addr,
                    SERVER_NAME,
                    VALID_UNTIL,
                    Bytes::from_static(&[0x42; 32]),
                )),
                PrimaryStep::AwaitPathStatus {
                    path: 1,
                    state: msg::PathState::Failed,
                },
                PrimaryStep::Control(add_path(
                    2,
                    secondary_addr,
                    SERVER_NAME,
                    VALID_UNTIL,
                    genuine,
                )),
                PrimaryStep::AwaitPathStatus {
                    path: 2,
                    state: msg::PathState::Active,
                },
            ];
            HostilePrimary::new(e.hostile, e.seed, &e.cert, steps)
        },
    );
    let (_, mut server_cfg) = configs(&a.ends.cert);
    server_cfg.trusted_keys = vec![a.ends.key.clone()];
    server_cfg.path_addresses = vec![secondary_addr];
    server_cfg.path_server_name = Some(SERVER_NAME.to_string());
    let now = a.sim.now();
    let ep = arena_endpoint(seed ^ 0x5ec, Some(server_cfg), now);
    let secondary = a.sim.add_node(
        &[secondary_addr],
        Box::new(KwikNode::new(secondary_addr, ep, SecondaryApp::default())),
    );
    a.sim.set_path(a.ends.target, secondary_addr, arena_link());
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(10), |sim| {
        let answers = sim.node::<HostilePrimary>(id).answers();
        !answers.get(&2).is_some_and(|x| {
            x.state == msg::PathState::Active as i32 || x.state == msg::PathState::Failed as i32
        })
    });
    let p = a.hostile_primary();
    let first = p.answers().get(&1).copied();
    assert_eq!(
        first.map(|x| (x.state, x.code)),
        Some((msg::PathState::Failed as i32, ErrorCode::AuthFailed.wire())),
        "precondition: the made-up token is refused\n{}",
        a.context()
    );
    let second = p.answers().get(&2).copied();
    let banned = a
        .sim
        .node::<KwikNode<SecondaryApp>>(secondary)
        .endpoint
        .stats();
    assert_eq!(
        second.map(|x| x.state),
        Some(msg::PathState::Active as i32),
        "a genuine token must join after a refused one the client was handed: answer \
         {second:?}; secondary stats {banned:?}\n{}",
        a.context()
    );
}

// ====================================================================
// R7. The client forwards a Delegate larger than the secondary accepts
// ====================================================================

/// **Attack** (primary → client → honest secondary): a hostile primary, its
/// client joined to an honest kwik secondary (genuine token), sends a
/// `Delegate` for that path whose body is exactly the client's
/// `max_control_message` (64 KiB, the default on every role): its opaque
/// `descriptor` fills it. The client accepts it (it fits its own limit) and
/// forwards it with `credit` set to the stream's credit — a field the
/// primary's message did not carry — so the forwarded body is 5 bytes over
/// the secondary's announced `max_control_message`.
///
/// **Rule**: §3.1/§4.1 — `max_control_message` is what the receiver
/// accepts; a sender must not exceed it (the client checks its `Raw`s,
/// §10.7, but not the `Delegate`s it forwards). §11.4 "Bans cannot be aimed
/// at a third party".
///
/// **Observed**: the secondary closes the path with `KWIK_INVALID_FRAME`
/// ("control message of 65541 bytes exceeds 65536") and, since that code
/// blames the peer, bans the client's IP. Fault: `client_paths.rs`
/// `forward_delegate` sends the grown message without checking it against
/// the path's limits (`on_joined` even discards the `Joined` limits).
#[test]
fn a_forwarded_delegate_never_exceeds_the_secondarys_control_limit() {
    use kwik_core::proto::control::{self as msg, ControlMessage};
    use kwik_sim::abuse::{VALID_UNTIL, arena_endpoint, arena_link};
    use kwik_sim::hostile_primary::{HostilePrimary, PrimaryStep, add_path};
    use kwik_sim::setup::configs;
    use prost::Message as _;

    let limit = kwik_core::TransportConfig::default().max_control_message as usize;
    // A Delegate whose encoded body is exactly `limit` bytes.
    let big = |descriptor_len: usize| ControlMessage {
        body: Some(Body::Delegate(Delegate {
            path_id: 1,
            delegation_id: 1,
            stream_id: server_uni(0).0,
            offset: 0,
            length: 1000,
            fin: false,
            descriptor: Bytes::from(vec![b'd'; descriptor_len]),
            ..Delegate::default()
        })),
    };
    let mut descriptor_len = limit - 32;
    while big(descriptor_len).encoded_len() < limit {
        descriptor_len += 1;
    }
    let message = big(descriptor_len);
    assert_eq!(message.encoded_len(), limit, "the Delegate fills the limit");
    let delegate = message.body.expect("set");

    let seed = 9107;
    let secondary_addr = addr(3);
    let mut a = Arena::against_client(
        seed,
        |c| {
            c.path_policy
                .allow
                .push(PathTarget::Address(secondary_addr))
        },
        move |e: &Ends| {
            let session = HostilePrimary::session_id_for(e.seed);
            let token = e.key.mint(
                session,
                PathId(1),
                VALID_UNTIL,
                &secondary_addr.to_string(),
                SERVER_NAME,
            );
            let steps = vec![
                PrimaryStep::Control(add_path(1, secondary_addr, SERVER_NAME, VALID_UNTIL, token)),
                PrimaryStep::AwaitPathStatus {
                    path: 1,
                    state: msg::PathState::Active,
                },
                PrimaryStep::Mark,
                PrimaryStep::Control(delegate),
            ];
            HostilePrimary::new(e.hostile, e.seed, &e.cert, steps)
        },
    );
    let (_, mut server_cfg) = configs(&a.ends.cert);
    server_cfg.trusted_keys = vec![a.ends.key.clone()];
    server_cfg.path_addresses = vec![secondary_addr];
    server_cfg.path_server_name = Some(SERVER_NAME.to_string());
    let now = a.sim.now();
    let ep = arena_endpoint(seed ^ 0x5ec, Some(server_cfg), now);
    let secondary = a.sim.add_node(
        &[secondary_addr],
        Box::new(KwikNode::new(secondary_addr, ep, SecondaryApp::default())),
    );
    a.sim.set_path(a.ends.target, secondary_addr, arena_link());
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(5), |sim| {
        !sim.node::<HostilePrimary>(id).script_done()
    });
    a.sim.run_for(Duration::from_secs(1));
    let node = a.sim.node::<KwikNode<SecondaryApp>>(secondary);
    let (closed, stats) = (node.app.closed.clone(), node.endpoint.stats());
    assert!(
        !closed.iter().any(|r| matches!(
            r,
            CloseReason::Protocol {
                code: ErrorCode::InvalidFrame,
                by_peer: false,
                ..
            }
        )),
        "the client sent the honest secondary a control message over its limit: it closed \
         {closed:?}, bans {}\n{}",
        stats.bans_total,
        a.context()
    );
    assert_eq!(stats.bans_total, 0, "{}", a.context());
}

// ====================================================================
// R8. A secondary's close reason closes the whole session
// ====================================================================

/// **Attack** (secondary → client → primary): a hostile secondary, once
/// delegated a range, closes its connection with `KWIK_PATH_DEAD` and a
/// 1 100-byte reason phrase (QUIC carries that much in one datagram).
///
/// **Rule**: §10.10 — a secondary's misbehaviour closes *its path only*;
/// §10.8 — the client reports the dead path to the primary with PathStatus
/// `DEAD`, "the code and reason"; §3.3 — a PathStatus reason is at most
/// 1 024 bytes, so the client must not send a longer one.
///
/// **Observed**: the client copies the peer's reason verbatim
/// (`error.rs` `CloseReason::from_quinn` → `client_paths.rs`
/// `on_conn_lost` → `report_path`, no `truncate`) into its PathStatus; the
/// primary refuses it at the edge (`wire.rs`, "reason of 1100 bytes exceeds
/// 1024") and closes the whole session with `KWIK_INVALID_FRAME` — and bans
/// the client's IP. One hostile secondary ends every session it is added
/// to.
#[test]
fn a_secondarys_long_close_reason_does_not_close_the_session() {
    let seed = 9108;
    let injection = Injection::Close {
        code: ErrorCode::PathDead.wire(),
        reason_len: 1100,
    };
    let mut b = HostileBench::new(seed, 2 * MIB, injection);
    let s0 = primary_session(&mut b.s).open(Dir::Uni).expect("open");
    let bad = b.bad_path;
    primary_session(&mut b.s)
        .delegate(
            bad,
            s0,
            0..64 * KIB,
            false,
            Bytes::from_static(b"not-served"),
        )
        .expect("delegate");
    let hostile = b.hostile;
    let _ = b.s.sim.run_while(Duration::from_secs(3), |sim| {
        sim.node::<HostileSecondary>(hostile).injected().is_none()
    });
    b.s.sim.run_for(Duration::from_secs(1));
    let ctx = b.context();
    let c = b.s.client();
    assert!(
        c.path_events
            .iter()
            .any(|e| matches!(e, Event::PathDead { path, .. } if *path == bad)),
        "precondition: the client saw the path die: {:?}\n{ctx}",
        c.path_events
    );
    assert!(
        c.closed.is_none(),
        "the session must survive a secondary closing its path: {:?}\n{ctx}",
        c.closed
    );
    let p = b.s.primary();
    assert!(
        p.closed.is_none(),
        "the primary must not close the session: {:?}\n{ctx}",
        p.closed
    );
}
