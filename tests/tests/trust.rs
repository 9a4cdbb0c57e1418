//! Trust boundaries: what a hostile peer of each role must NOT be able to do
//! to a kwik endpoint (PROTOCOL.md §10.10, BRIEF "trust is per range").
//!
//! * **A. Overflowing delegations.** A `Delegate` whose end overflows u64 or
//!   reaches 2^62 is a protocol violation (`KWIK_INVALID_FRAME`), from a
//!   hostile primary to a client and from a hostile client to a secondary,
//!   in debug and release alike — never a panic.
//! * **B. Secondary injection.** A secondary is trusted only for the ranges
//!   delegated to its path, and for a FIN only if its delegation ends the
//!   stream there. Anything else closes that path only
//!   (`KWIK_NOT_DELEGATED`), delivers none of the offending bytes, and the
//!   session goes on.
//! * **C. Memory and CPU bounds.** Floods of tiny records, lanes before the
//!   handshake, credits and stops for streams that never existed, arbitrary
//!   acks, refused AddPaths, delegations and huge stream indices: the
//!   attacked endpoint's heap growth (metered with [`kwik_sim::alloc`]) stays
//!   within its configured windows, or the session is closed with
//!   `KWIK_RESOURCE_LIMIT` / `KWIK_STREAM_LIMIT` first.
//! * **E. Every violation closes the QUIC connection**, promptly, on every
//!   role — also while data is in flight.
//! * **F. Liveness counts only authenticated packets**: replayed datagrams
//!   of a dead secondary do not keep its path alive.
//! * **G. StreamComplete** is accepted only for a stream whose end the
//!   client can know, and releases its lane.
//!
//! Measuring tests take their baseline once the attacked session is
//! established and stop as soon as the bound is passed, so that a failure
//! is quick and says how far the endpoint got. No test asserts on wall time.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{
    self as msg, Ack, ByteRange, Delegate, StreamComplete, StreamCredit,
};
use kwik_core::{
    CloseReason, Dir, ErrorCode, Event, KwikEndpoint, PathFilter, PathId, PathInfo, PathTarget,
    ReadError, SendState, SessionHandle, Side, StreamId, TransferConfig, TransferId, WriteError,
};
use kwik_sim::abuse::{
    self, Arena, DESCRIPTOR, Ends, JOIN_PATH, Options, Outcome, Pattern, Report, ServerRole,
    StopWhen, TargetServer, VALID_UNTIL, arena_endpoint, genuine_join, valid_ack, window,
};
use kwik_sim::alloc::CountingAlloc;
use kwik_sim::hostile::{
    HostileClient, HostileSecondary, InjectedRecord, Injection, PAST_CREDIT_FILL, Step,
};
use kwik_sim::hostile_primary::{HostilePrimary, PrimaryStep, add_path};
use kwik_sim::multi::{
    MultiClient, MultiOptions, MultiPrimary, MultiSetup, PayloadResource, SecondaryApp, ServerLink,
    Start, first_server_stream,
};
use kwik_sim::setup::{SERVER_NAME, addr, configs, dev_cert};
use kwik_sim::spoof::Replayer;
use kwik_sim::wire::{control_record, data_record, garbage_record};
use kwik_sim::{App, KwikNode, LinkConfig, NodeId, Payload, Received, Sim, Trace};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// `2·W + 512 KiB`, the bound for one stream's worth of tiny records.
fn two_windows() -> u64 {
    2 * window() + 512 * KIB
}

fn server_uni(index: u64) -> StreamId {
    StreamId::new(Side::Server, Dir::Uni, index)
}

fn is_protocol(reason: &Option<CloseReason>, code: ErrorCode, peer: bool) -> bool {
    matches!(
        reason,
        Some(CloseReason::Protocol { code: c, by_peer, .. }) if *c == code && *by_peer == peer
    )
}

fn code_name(code: Option<u64>) -> String {
    match code {
        Some(c) => {
            ErrorCode::from_wire(c).map_or_else(|| format!("app code {c}"), |e| e.to_string())
        }
        None => "no application close".into(),
    }
}

// ====================================================================
// Helpers for arenas (one metered kwik endpoint + one hostile node)
// ====================================================================

/// Runs a canned pattern; fails (with context) if the session never got
/// established.
fn run_pattern(pattern: Pattern, opts: &Options) -> (Arena, Report) {
    match abuse::run(pattern, opts) {
        Ok(r) => r,
        Err(e) => panic!("{}: {e}", pattern.name()),
    }
}

/// Stops as soon as the growth passes `bound` (a failure today must be
/// quick, not exhaust the machine).
fn stop_above(bound: u64) -> StopWhen {
    StopWhen {
        growth_above: Some(bound),
        ..StopWhen::default()
    }
}

fn assert_metered(r: &Report) {
    assert!(
        r.metered,
        "the counting allocator must be installed for this test to mean anything"
    );
}

/// The attacked session is still open and the target's heap growth stayed
/// within `bound`.
fn assert_open_within(a: &Arena, r: &Report, bound: u64, what: &str) {
    assert_metered(r);
    assert!(
        r.peak_growth <= bound as i64,
        "{what}: the target's heap grew {} bytes over its baseline, past the bound of {bound} \
         (the run stops at the first crossing); {r}\n{}",
        r.peak_growth,
        a.context()
    );
    assert_eq!(
        r.outcome,
        Outcome::Open,
        "{what}: the session must stay open; {r}\n{}",
        a.context()
    );
}

/// The target closed the attacked session itself with `code` before its
/// heap growth passed `bound`.
fn assert_closed_within(a: &Arena, r: &Report, code: ErrorCode, bound: u64, what: &str) {
    assert_metered(r);
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

/// A hostile client (Hello mode) running `steps` against a kwik server in
/// `role`, established, baseline taken.
fn hello_arena(seed: u64, role: ServerRole, steps: Vec<Step>) -> Arena {
    Arena::scripted_client(seed, role, false, steps)
}

/// The hostile client of `a` was closed with `code` by the target server,
/// which saw a local protocol close with that code. Runs (at most 2 s)
/// until the close reached the hostile.
fn assert_server_closed_hostile(a: &mut Arena, code: ErrorCode, what: &str) {
    run_until_hostile_ends(a, Duration::from_secs(2));
    let h = a.hostile();
    assert!(
        h.misbehaved(),
        "{what}: the hostile never misbehaved\n{}",
        a.context()
    );
    assert_eq!(
        h.close_code(),
        Some(code.wire()),
        "{what}: the hostile connection must end with {code}, ended with {} ({:?})\n{}",
        code_name(h.close_code()),
        h.connection_error(),
        a.context()
    );
    assert!(
        is_protocol(&a.server().close_reason().cloned(), code, false),
        "{what}: the server app must see its own {code} close, saw {:?}\n{}",
        a.server().closed,
        a.context()
    );
}

/// Runs until the hostile client's connection ends (at most `limit`).
fn run_until_hostile_ends(a: &mut Arena, limit: Duration) {
    let id = a.attacker;
    let _ = a.sim.run_while(limit, |sim| {
        sim.node::<HostileClient>(id).ended_at().is_none()
    });
}

// ====================================================================
// A. Overflowing delegations
// ====================================================================

/// A kwik client of a [`HostilePrimary`], joined (genuinely, through the
/// primary's AddPath) to a real kwik secondary at `addr(3)`; then the
/// primary sends `then`. Returns the arena and the secondary's node.
fn client_with_live_path(seed: u64, then: Vec<PrimaryStep>) -> (Arena, NodeId) {
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
            let mut steps = vec![
                PrimaryStep::Control(add_path(1, secondary_addr, SERVER_NAME, VALID_UNTIL, token)),
                PrimaryStep::AwaitPathStatus {
                    path: 1,
                    state: msg::PathState::Active,
                },
            ];
            steps.extend(then);
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
    a.sim
        .set_path(a.ends.target, secondary_addr, abuse::arena_link());
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    (a, secondary)
}

/// A1: the hostile primary delegates `[offset, offset + length)` to the
/// client's live path: the client must close the whole session with
/// `KWIK_INVALID_FRAME` (and must not panic).
fn overflowing_delegate_from_primary(seed: u64, offset: u64, length: u64) {
    let delegate = Body::Delegate(Delegate {
        path_id: 1,
        delegation_id: 1,
        stream_id: server_uni(0).0,
        offset,
        length,
        fin: false,
        descriptor: Bytes::from_static(b"anything"),
        ..Delegate::default()
    });
    let (mut a, secondary) = client_with_live_path(
        seed,
        vec![PrimaryStep::Mark, PrimaryStep::Control(delegate)],
    );
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(5), |sim| {
        sim.node::<HostilePrimary>(id).ended_at().is_none()
    });
    let p = a.hostile_primary();
    let joined = &a.sim.node::<KwikNode<SecondaryApp>>(secondary).app.joined;
    assert_eq!(
        joined.len(),
        1,
        "the path joined the real secondary first\n{}",
        a.context()
    );
    assert!(p.misbehaved(), "the delegation was sent\n{}", a.context());
    assert_eq!(
        p.close_code(),
        Some(ErrorCode::InvalidFrame.wire()),
        "a Delegate of [{offset}, {offset} + {length}) must close the session with \
         KWIK_INVALID_FRAME; the hostile primary saw {} ({:?})\n{}",
        code_name(p.close_code()),
        p.connection_error(),
        a.context()
    );
    assert!(
        is_protocol(&a.client().closed, ErrorCode::InvalidFrame, false),
        "the client app sees its own KWIK_INVALID_FRAME close: {:?}\n{}",
        a.client().closed,
        a.context()
    );
}

/// A1: `offset + length` overflows u64.
#[test]
fn a_primary_delegating_a_range_that_overflows_u64_closes_the_client_session() {
    overflowing_delegate_from_primary(101, u64::MAX - 10, 100);
}

/// A1: `offset + length` reaches 2^62 (no u64 overflow, but past every
/// logical offset).
#[test]
fn a_primary_delegating_a_range_reaching_2_62_closes_the_client_session() {
    overflowing_delegate_from_primary(102, (1 << 62) - 1, 2);
}

/// A2: a client joined to a secondary (genuine token) delegates an
/// overflowing range naming the resource the secondary serves: the
/// secondary closes that session with `KWIK_INVALID_FRAME`, no panic.
fn overflowing_delegate_to_secondary(seed: u64, offset: u64, length: u64) {
    let delegate = control_record(Body::Delegate(Delegate {
        path_id: JOIN_PATH.0,
        delegation_id: 1,
        stream_id: server_uni(0).0,
        offset,
        length,
        fin: false,
        descriptor: Bytes::from_static(DESCRIPTOR),
        ..Delegate::default()
    }));
    let mut a = Arena::joined_secondary(seed, vec![Step::Mark, Step::Control(delegate.into())]);
    run_until_hostile_ends(&mut a, Duration::from_secs(5));
    assert_server_closed_hostile(
        &mut a,
        ErrorCode::InvalidFrame,
        &format!("Delegate of [{offset}, {offset} + {length}) to a secondary"),
    );
}

/// A2: `offset + length` overflows u64.
#[test]
fn a_client_delegating_a_range_that_overflows_u64_to_a_secondary_is_closed() {
    overflowing_delegate_to_secondary(103, u64::MAX - 10, 100);
}

/// A2: `offset + length` reaches 2^62.
#[test]
fn a_client_delegating_a_range_reaching_2_62_to_a_secondary_is_closed() {
    overflowing_delegate_to_secondary(104, (1 << 62) - 1, 2);
}

/// Control: the hand-written primary's framing is what a kwik client
/// expects — its genuine AddPath joins a real secondary (PathStatus ACTIVE)
/// and its data record with a FIN is read byte-exact to the end — so the
/// closes above are about the scripted faults.
#[test]
fn a_well_behaved_hostile_primary_serves_a_kwik_client() {
    let seed = 105;
    let stream = server_uni(0);
    let data = Payload::new(seed).chunk(stream, 0, 100_000);
    let (mut a, _) = client_with_live_path(
        seed,
        vec![PrimaryStep::Record {
            stream,
            offset: 0,
            payload: data,
            fin: true,
        }],
    );
    let target = a.target;
    let _ = a.sim.run_while(Duration::from_secs(5), |sim| {
        sim.node::<KwikNode<abuse::TargetClient>>(target)
            .app
            .finished
            == 0
    });
    let c = a.client();
    assert_eq!(c.read.get(&stream), Some(&100_000), "{}", a.context());
    assert_eq!(
        (c.finished, c.corrupt, c.path_added),
        (1, 0, 1),
        "{}",
        a.context()
    );
    assert!(c.closed.is_none(), "{}", a.context());
    let p = a.hostile_primary();
    assert_eq!(
        p.answers().get(&1).map(|x| x.state),
        Some(msg::PathState::Active as i32)
    );
    assert!(p.wire_errors().is_empty(), "{:?}", p.wire_errors());
    assert!(p.ended_at().is_none(), "{}", a.context());
}

// ====================================================================
// B. Secondary injection
// ====================================================================

/// A download set-up driven by hand: a primary (`addr(1)`), an honest
/// secondary (`addr(2)`) and a [`HostileSecondary`] (`addr(3)`) both joined
/// as paths; the client reads and verifies every stream it is given.
struct InjectionBench {
    s: MultiSetup,
    seed: u64,
    hostile: NodeId,
    bad_path: PathId,
    honest_path: PathId,
}

impl InjectionBench {
    fn new(seed: u64, injection: Injection) -> Self {
        let hostile_addr = addr(kwik_sim::multi::HOSTILE_SECONDARY);
        let opts = MultiOptions::new(seed, vec![ServerLink::new(100, 20); 2], 8 * MIB);
        let (mut s, hostile) = MultiSetup::with_hostile_secondary(opts, injection);
        let primary = s.primary;
        run_multi(
            &mut s,
            "the honest path joins",
            Duration::from_secs(10),
            |sim| {
                let p = primary_of(sim, primary);
                p.added.len() + p.failed.len() < 1
            },
        );
        let honest_path = *s
            .primary()
            .added
            .iter()
            .next()
            .unwrap_or_else(|| panic!("honest path\n{}", multi_context(&s)));
        let bad_path = primary_session(&mut s)
            .add_path(hostile_addr, SERVER_NAME)
            .expect("add_path");
        run_multi(
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
        InjectionBench {
            s,
            seed,
            hostile,
            bad_path,
            honest_path,
        }
    }

    fn hostile(&self) -> &HostileSecondary {
        self.s.sim.node::<HostileSecondary>(self.hostile)
    }

    fn context(&self) -> String {
        format!("hostile: {:?}\n{}", self.hostile(), multi_context(&self.s))
    }

    /// The primary opens a server stream.
    fn open(&mut self) -> StreamId {
        primary_session(&mut self.s).open(Dir::Uni).expect("open")
    }

    /// The primary delegates `range` of `stream` to the hostile path.
    fn delegate_to_hostile(&mut self, stream: StreamId, range: std::ops::Range<u64>, fin: bool) {
        let path = self.bad_path;
        primary_session(&mut self.s)
            .delegate(path, stream, range, fin, Bytes::from_static(b"not-served"))
            .expect("delegate");
    }

    /// Runs until the hostile injected and its connection ended (or 3 s).
    fn run_injection(&mut self) -> InjectedRecord {
        let id = self.hostile;
        let _ = self.s.sim.run_while(Duration::from_secs(3), |sim| {
            let h = sim.node::<HostileSecondary>(id);
            h.injected().is_none() || h.ended_at().is_none()
        });
        // Let the path's failure reach the primary.
        self.s.sim.run_for(Duration::from_millis(200));
        *self
            .hostile()
            .injected()
            .unwrap_or_else(|| panic!("the hostile never injected\n{}", self.context()))
    }

    /// The client closed the hostile path (only) with `code`, told the
    /// primary, and the rest of the session is untouched.
    fn assert_path_closed(&mut self, code: ErrorCode, what: &str) {
        let ctx = self.context();
        let h = self.hostile();
        assert_eq!(
            h.close_code(),
            Some(code.wire()),
            "{what}: the client must close the hostile path's connection with {code}; it ended \
             with {} ({:?})\n{ctx}",
            code_name(h.close_code()),
            h.connection_error()
        );
        let bad = self.bad_path;
        let c = self.s.client();
        assert!(
            c.path_events.iter().any(|e| matches!(
                e,
                Event::PathDead { path, failure, .. } | Event::PathFailed { path, failure, .. }
                    if *path == bad && failure.code == code
            )),
            "{what}: the client reports the path dead with {code}: {:?}\n{ctx}",
            c.path_events
        );
        assert!(
            c.closed.is_none(),
            "{what}: the session stays up: {:?}\n{ctx}",
            c.closed
        );
        let p = self.s.primary();
        assert!(
            p.dead
                .iter()
                .any(|(path, f)| *path == bad && f.code == code),
            "{what}: the primary emits PathDead with {code}: dead {:?} failed {:?}\n{ctx}",
            p.dead,
            p.failed
        );
        assert!(p.closed.is_none(), "{what}: {:?}\n{ctx}", p.closed);
        let honest = self.honest_path;
        let info = client_paths(&mut self.s)
            .into_iter()
            .find(|i| i.id == honest)
            .expect("honest path listed");
        assert!(
            info.state.is_live(),
            "{what}: the honest path goes on: {info:?}"
        );
    }

    /// The primary writes `[from, len)` of `stream` itself (genuine bytes)
    /// and finishes it.
    fn primary_writes(&mut self, stream: StreamId, from: u64, len: u64) {
        let payload = Payload::new(self.seed);
        let mut at = from;
        for _ in 0..2000 {
            if at == len {
                break;
            }
            let mut chunk = payload.chunk(stream, at, (len - at).min(256 * KIB) as usize);
            let node = self.s.primary_node();
            let h = node.app.session.expect("session");
            let mut view = node.endpoint.stream(h, stream).expect("stream");
            match view.write_chunk(&mut chunk) {
                Ok(n) => at += n as u64,
                Err(WriteError::Blocked) => {}
                Err(e) => panic!(
                    "the primary's write at {at} of {stream} must succeed: {e:?}\n{}",
                    self.context()
                ),
            }
            self.s.sim.run_for(Duration::from_millis(5));
        }
        assert_eq!(at, len, "wrote it all");
        let node = self.s.primary_node();
        let h = node.app.session.expect("session");
        node.endpoint
            .stream(h, stream)
            .expect("stream")
            .finish()
            .expect("finish");
    }

    /// The client read `stream` to its end, exactly `len` genuine bytes.
    fn assert_read_intact(&mut self, stream: StreamId, len: u64, what: &str) {
        let client = self.s.client;
        let _ = self.s.sim.run_while(Duration::from_secs(10), |sim| {
            !client_of(sim, client).finished.contains(&stream)
        });
        let ctx = self.context();
        let c = self.s.client();
        assert_eq!(
            c.corrupt, 0,
            "{what}: bytes that are not the stream's reached the application (a run of \
             {PAST_CREDIT_FILL:#x} fill?)\n{ctx}"
        );
        assert_eq!(
            c.read.get(&stream).copied(),
            Some(len),
            "{what}: the client reads exactly the genuine stream\n{ctx}"
        );
        assert!(c.finished.contains(&stream), "{what}: to its end\n{ctx}");
    }
}

fn primary_of(sim: &Sim, id: NodeId) -> &MultiPrimary {
    &sim.node::<KwikNode<MultiPrimary>>(id).app
}

fn client_of(sim: &Sim, id: NodeId) -> &MultiClient {
    &sim.node::<KwikNode<MultiClient>>(id).app
}

fn primary_session(s: &mut MultiSetup) -> kwik_core::SessionView<'_> {
    let node = s.primary_node();
    let h = node.app.session.expect("primary session");
    node.endpoint.session(h).expect("live")
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
    for l in &interesting[interesting.len().saturating_sub(80)..] {
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
        "primary added {:?} failed {:?} dead {:?} lost {} closed {:?} complete {:?}",
        p.added,
        p.failed,
        p.dead,
        p.lost.len(),
        p.closed,
        p.complete_at
    );
    out
}

fn run_multi(s: &mut MultiSetup, what: &str, limit: Duration, cond: impl FnMut(&Sim) -> bool) {
    if let Err(e) = s.sim.run_while(limit, cond) {
        panic!("{what}: {e}\n{}", multi_context(s));
    }
}

/// B1: the primary opens streams 0 and 1 and delegates a range of stream 1
/// to the hostile path, which writes into stream 0 instead: its path is
/// closed with `KWIK_NOT_DELEGATED`, none of its bytes reach the app, and
/// both streams then arrive intact from the primary.
#[test]
fn a_secondary_writing_a_stream_it_was_not_delegated_loses_its_path() {
    let mut b = InjectionBench::new(
        201,
        Injection::Write {
            stream: server_uni(0),
            offset: 0,
            len: 16 * KIB,
        },
    );
    let (s0, s1) = (b.open(), b.open());
    assert_eq!((s0, s1), (server_uni(0), server_uni(1)));
    b.delegate_to_hostile(s1, 0..64 * KIB, false);
    let rec = b.run_injection();
    assert_eq!(rec.stream, s0);
    b.assert_path_closed(ErrorCode::NotDelegated, "B1 undelegated stream");
    b.primary_writes(s0, 0, 256 * KIB);
    b.primary_writes(s1, 0, 64 * KIB);
    b.assert_read_intact(s0, 256 * KIB, "B1 stream 0");
    b.assert_read_intact(s1, 64 * KIB, "B1 stream 1");
}

/// B2: delegated `[0, 64 KiB)`, the hostile writes `[64 KiB, 80 KiB)`: its
/// path is closed with `KWIK_NOT_DELEGATED` and none of those bytes are
/// delivered.
#[test]
fn a_secondary_writing_past_its_delegated_range_loses_its_path() {
    let mut b = InjectionBench::new(202, Injection::PastRange { len: 16 * KIB });
    let s0 = b.open();
    b.delegate_to_hostile(s0, 0..64 * KIB, false);
    let rec = b.run_injection();
    assert_eq!((rec.offset, rec.end()), (64 * KIB, 80 * KIB));
    b.assert_path_closed(ErrorCode::NotDelegated, "B2 past the range");
    b.primary_writes(s0, 0, 128 * KIB);
    b.assert_read_intact(s0, 128 * KIB, "B2");
}

/// B3: the hostile writes server stream index 5, which the primary never
/// opened: its path is closed with `KWIK_NOT_DELEGATED` and the client
/// application never sees streams 1 to 5 opened.
#[test]
fn a_secondary_writing_a_stream_the_primary_never_opened_loses_its_path_and_opens_nothing() {
    let never = server_uni(5);
    let mut b = InjectionBench::new(
        203,
        Injection::Write {
            stream: never,
            offset: 0,
            len: 16 * KIB,
        },
    );
    let s0 = b.open();
    b.delegate_to_hostile(s0, 0..64 * KIB, false);
    b.run_injection();
    b.assert_path_closed(ErrorCode::NotDelegated, "B3 unopened stream");
    b.primary_writes(s0, 0, 64 * KIB);
    b.assert_read_intact(s0, 64 * KIB, "B3");
    let c = b.s.client();
    let seen: Vec<StreamId> = (1..=5)
        .map(server_uni)
        .filter(|id| c.read.contains_key(id))
        .collect();
    assert!(
        seen.is_empty(),
        "the client app was handed streams the primary never opened: {seen:?}\n{}",
        b.context()
    );
    assert!(
        !c.path_events
            .iter()
            .any(|e| matches!(e, Event::StreamReset { stream, .. } if *stream == never)),
        "{}",
        b.context()
    );
}

/// B4: the hostile writes into a bidirectional stream the client opened:
/// its path is closed with `KWIK_NOT_DELEGATED` and the client reads
/// nothing on that stream.
#[test]
fn a_secondary_writing_into_a_client_stream_loses_its_path() {
    let own = StreamId::new(Side::Client, Dir::Bi, 0);
    let mut b = InjectionBench::new(
        204,
        Injection::Write {
            stream: own,
            offset: 0,
            len: 16 * KIB,
        },
    );
    {
        let node = b.s.client_node();
        let h = node.app.session.expect("client session");
        let mut view = node.endpoint.session(h).expect("live");
        assert_eq!(view.open(Dir::Bi), Ok(own));
        let mut stream = node.endpoint.stream(h, own).expect("stream");
        stream.write(b"hello primary").expect("write");
    }
    b.s.sim.run_for(Duration::from_millis(50));
    let s0 = b.open();
    b.delegate_to_hostile(s0, 0..64 * KIB, false);
    b.run_injection();
    b.assert_path_closed(ErrorCode::NotDelegated, "B4 client stream");
    b.primary_writes(s0, 0, 64 * KIB);
    b.assert_read_intact(s0, 64 * KIB, "B4");
    let got = b.s.client().read.get(&own).copied().unwrap_or(0);
    assert_eq!(
        got,
        0,
        "the client read {got} bytes a secondary wrote into its own stream\n{}",
        b.context()
    );
    let node = b.s.client_node();
    let h = node.app.session.expect("client session");
    let mut stream = node
        .endpoint
        .stream(h, own)
        .expect("the client's stream lives");
    assert_eq!(
        stream.read(usize::MAX),
        Err(ReadError::Blocked),
        "nothing to read"
    );
}

/// B5: the primary wrote `[0, 1000)`, the client read it, then a hostile
/// secondary delegated `[1000, 64 KiB)` without FIN writes a bare FIN at
/// 1000: refused with `KWIK_NOT_DELEGATED`; the client reports no end of
/// stream and sends no StreamComplete (the primary's send half stays open),
/// the primary's later writes succeed and the client reads the whole
/// genuine stream.
#[test]
fn a_secondary_fin_without_a_fin_delegation_is_refused_and_the_stream_goes_on() {
    let mut b = InjectionBench::new(205, Injection::BareFin { offset: 1000 });
    let s0 = b.open();
    {
        let payload = Payload::new(b.seed);
        let node = b.s.primary_node();
        let h = node.app.session.expect("session");
        let mut chunk = payload.chunk(s0, 0, 1000);
        let n = node
            .endpoint
            .stream(h, s0)
            .expect("stream")
            .write_chunk(&mut chunk)
            .expect("write");
        assert_eq!(n, 1000);
    }
    let client = b.s.client;
    run_multi(
        &mut b.s,
        "the client reads 1000 bytes",
        Duration::from_secs(5),
        |sim| client_of(sim, client).read.get(&server_uni(0)).copied() != Some(1000),
    );
    b.delegate_to_hostile(s0, 1000..64 * KIB, false);
    let rec = b.run_injection();
    assert_eq!((rec.offset, rec.len, rec.fin), (1000, 0, true));
    let c = b.s.client();
    assert!(
        !c.finished.contains(&s0),
        "the client app saw end of stream at 1000 from a FIN the secondary had no right to \
         write\n{}",
        b.context()
    );
    let state = {
        let node = b.s.primary_node();
        let h = node.app.session.expect("session");
        node.endpoint.stream(h, s0).and_then(|v| v.send_state())
    };
    assert_eq!(
        state,
        Some(SendState::Open),
        "the client sent no StreamComplete: the primary's send half must still be open\n{}",
        b.context()
    );
    b.assert_path_closed(ErrorCode::NotDelegated, "B5 bare FIN");
    b.primary_writes(s0, 1000, 128 * KIB);
    b.assert_read_intact(s0, 128 * KIB, "B5");
}

/// B6 (positive control): a secondary whose delegation `[32 KiB, 96 KiB)`
/// ends the stream (`fin = true`) writes it with its FIN: accepted, the
/// path stays up and the client reads to the end of the stream.
#[test]
fn a_secondary_writing_its_fin_delegation_is_accepted() {
    let seed = 206;
    let stream = server_uni(0);
    let len = 96 * KIB;
    let source = Arc::new(PayloadResource::new(Payload::new(seed), stream, len));
    let mut b = InjectionBench::new(seed, Injection::Honest { source });
    let s0 = b.open();
    assert_eq!(s0, stream);
    {
        let payload = Payload::new(seed);
        let node = b.s.primary_node();
        let h = node.app.session.expect("session");
        let mut chunk = payload.chunk(s0, 0, (32 * KIB) as usize);
        let n = node
            .endpoint
            .stream(h, s0)
            .expect("stream")
            .write_chunk(&mut chunk)
            .expect("write");
        assert_eq!(n as u64, 32 * KIB);
    }
    b.delegate_to_hostile(s0, 32 * KIB..len, true);
    let hostile = b.hostile;
    let _ = b.s.sim.run_while(Duration::from_secs(3), |sim| {
        sim.node::<HostileSecondary>(hostile).injected().is_none()
    });
    b.assert_read_intact(s0, len, "B6 honest FIN delegation");
    let ctx = b.context();
    let h = b.hostile();
    assert!(
        h.ended_at().is_none(),
        "the honest secondary keeps its path: {:?}\n{ctx}",
        h.connection_error()
    );
    let bad = b.bad_path;
    let info = client_paths(&mut b.s)
        .into_iter()
        .find(|i| i.id == bad)
        .expect("listed");
    assert!(info.state.is_live(), "{info:?}");
    assert!(b.s.client().closed.is_none());
}

// ====================================================================
// C. Memory and CPU bounds
// ====================================================================

/// C1: one-byte records in order up to the window, server not reading:
/// the session stays open and the server's heap growth stays within
/// `2·W + 512 KiB` (the records' bytes plus bounded bookkeeping, not a
/// record header per byte).
#[test]
fn in_order_tiny_records_up_to_the_window_stay_within_two_windows() {
    let bound = two_windows();
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(301)
    };
    let (mut a, r) = run_pattern(Pattern::TinyRecords, &opts);
    println!("tiny-records: {r}");
    assert_open_within(&a, &r, bound, "C1 tiny records");
    assert!(r.attack_done, "every record was sent: {r}\n{}", a.context());
    let buffered = {
        let node = a.server_node();
        let h = node.app.session().expect("session");
        node.endpoint
            .session(h)
            .and_then(|v| v.stream_buffered(kwik_sim::hostile::upload_stream()))
    };
    assert_eq!(
        buffered,
        Some(window()),
        "the server holds the whole window of one-byte records\n{}",
        a.context()
    );
}

/// C2: one-byte records at offsets 1, 3, 5, … cannot be coalesced: the
/// server closes the session with `KWIK_RESOURCE_LIMIT` before its growth
/// passes `2·W + 512 KiB`.
#[test]
fn gapped_tiny_records_close_the_session_before_memory_passes_two_windows() {
    let bound = two_windows();
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(302)
    };
    let (mut a, r) = run_pattern(Pattern::GappedTinyRecords, &opts);
    println!("gapped-tiny-records: {r}");
    assert_closed_within(&a, &r, ErrorCode::ResourceLimit, bound, "C2 gapped");
    assert_server_closed_hostile(&mut a, ErrorCode::ResourceLimit, "C2 gapped");
}

/// C2: one-byte records in descending order (every one a new gap until the
/// last): closed with `KWIK_RESOURCE_LIMIT` before `2·W + 512 KiB`.
#[test]
fn descending_tiny_records_close_the_session_before_memory_passes_two_windows() {
    let bound = two_windows();
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(303)
    };
    let (mut a, r) = run_pattern(Pattern::DescendingTinyRecords, &opts);
    println!("descending-tiny-records: {r}");
    assert_closed_within(&a, &r, ErrorCode::ResourceLimit, bound, "C2 descending");
    assert_server_closed_hostile(&mut a, ErrorCode::ResourceLimit, "C2 descending");
}

/// C3: 200 000 one-byte records in order with 20 000 duplicates aimed at
/// the highest offsets held, then a FIN: the session stays open and a
/// reading server reads every byte exactly once, in order, then the end of
/// the stream.
#[test]
fn duplicate_tiny_records_are_delivered_once_in_order() {
    let opts = Options {
        reading: true,
        stop: StopWhen {
            settle: Duration::from_secs(1),
            ..StopWhen::default()
        },
        ..Options::new(304)
    };
    let (a, r) = run_pattern(Pattern::DuplicateTinyRecords, &opts);
    println!("duplicate-tiny-records (reading): {r}");
    assert_eq!(r.outcome, Outcome::Open, "{r}\n{}", a.context());
    let s = a.server();
    assert_eq!(
        s.corrupt,
        0,
        "bytes out of order or not the stream's\n{}",
        a.context()
    );
    assert_eq!(
        s.received.get(&kwik_sim::hostile::upload_stream()),
        Some(&Received {
            bytes: abuse::DUPLICATE_TOTAL,
            fin: true,
            reset: None,
        }),
        "every byte exactly once, then the end\n{}",
        a.context()
    );
}

/// C4: a client that completes the QUIC handshake but never sends `Hello`,
/// and opens lanes and pushes data on them (and a never-ending control
/// record): over 2 s of virtual time the server's heap growth stays within
/// 1 MiB.
#[test]
fn lanes_before_hello_cannot_pin_memory() {
    let bound = MIB;
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(305)
    };
    let (a, r) = run_pattern(Pattern::PreHandshakeLanes, &opts);
    println!(
        "pre-handshake-lanes: {r}; the hostile opened {} lanes and wrote {} bytes",
        a.hostile().flood_lanes(),
        a.hostile().flood_bytes()
    );
    assert_metered(&r);
    assert!(
        r.peak_growth <= bound as i64,
        "the server grew {} bytes over 2 s for a peer that never said Hello (bound {bound}); \
         {r}\n{}",
        r.peak_growth,
        a.context()
    );
    assert!(
        matches!(r.stopped, abuse::Stopped::Window | abuse::Stopped::Closed),
        "{r}"
    );
}

/// C5: a client joined to a secondary sends 20 000 `StreamCredit` and
/// 20 000 `StopSending` naming fresh server streams: ignored — the session
/// stays open, the secondary keeps no stream for them and grows at most
/// 1 MiB.
#[test]
fn credits_and_stops_for_fresh_stream_ids_leave_no_state_on_a_secondary() {
    let bound = MIB;
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(306)
    };
    let (mut a, r) = run_pattern(Pattern::FreshIdCredits, &opts);
    println!("fresh-id-credits: {r}");
    assert_open_within(&a, &r, bound, "C5 fresh ids");
    assert!(
        r.attack_done,
        "every message was sent: {r}\n{}",
        a.context()
    );
    let open = {
        let node = a.server_node();
        let h = node.app.session().expect("session");
        node.endpoint.session(h).map(|v| v.stats().open_streams)
    };
    assert_eq!(
        open,
        Some(0),
        "the secondary keeps no state for streams it never wrote\n{}",
        a.context()
    );
}

/// C6: 100 000 `Ack`s naming arbitrary server streams, 64 valid ranges
/// each. A client acknowledges only the streams the primary delegated or
/// serves (PROTOCOL.md §10.6): an Ack naming a stream the primary never
/// opened is `KWIK_INVALID_FRAME`, so the flood ends at its first message
/// and the primary grows at most 1 MiB.
#[test]
fn acks_for_streams_never_opened_close_the_session() {
    let bound = MIB;
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(307)
    };
    let (mut a, r) = run_pattern(Pattern::ArbitraryAcks, &opts);
    println!("arbitrary-acks: {r}");
    assert_closed_within(&a, &r, ErrorCode::InvalidFrame, bound, "C6 arbitrary acks");
    assert_server_closed_hostile(&mut a, ErrorCode::InvalidFrame, "C6 arbitrary acks");
}

/// C6: 100 000 `Ack`s of 64 ranges each for the stream a primary serves:
/// processed (the ledger keeps at most 256 acknowledged ranges per stream).
/// While the flood lasts QUIC buffers what arrives out of order (up to a
/// congestion window: growth stays within 2 windows); afterwards the
/// primary holds at most 512 KiB more than before, and the session is open.
#[test]
fn an_ack_flood_for_a_served_stream_leaves_no_state() {
    let bound = 2 * abuse::window();
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(315)
    };
    let (a, r) = run_pattern(Pattern::ServedAcks, &opts);
    println!("served-acks: {r}");
    assert_open_within(&a, &r, bound, "C6 served acks");
    assert!(r.attack_done, "every ack was sent: {r}\n{}", a.context());
    assert!(
        r.end_growth <= (512 << 10) as i64,
        "nothing is kept once the flood is over: {r}\n{}",
        a.context()
    );
}

/// C6: an `Ack` for a stream the primary opened and writes but never
/// delegated or served: `KWIK_INVALID_FRAME` (only delegated streams are
/// acknowledged).
#[test]
fn an_ack_for_a_stream_never_delegated_closes_the_session() {
    let steps = vec![
        Step::AwaitServerBytes(1),
        Step::Mark,
        Step::Control(control_record(Body::Ack(valid_ack(server_uni(0), 0, 1))).into()),
    ];
    let mut a = hello_arena(316, ServerRole::Write { len: MIB }, steps);
    run_until_hostile_ends(&mut a, Duration::from_secs(5));
    assert_server_closed_hostile(
        &mut a,
        ErrorCode::InvalidFrame,
        "Ack for an undelegated stream",
    );
}

/// A hostile client sends `ack` for the stream a primary serves (so it is
/// a stream that has a ledger): `KWIK_INVALID_FRAME`.
fn malformed_ack(seed: u64, ack: Ack, what: &str) {
    let steps = vec![
        Step::AwaitServerBytes(1),
        Step::Mark,
        Step::Control(control_record(Body::Ack(ack)).into()),
    ];
    let mut a = hello_arena(seed, ServerRole::Serve { len: MIB }, steps);
    run_until_hostile_ends(&mut a, Duration::from_secs(5));
    assert_server_closed_hostile(&mut a, ErrorCode::InvalidFrame, what);
}

/// C6: an `Ack` listing 65 ranges (one more than allowed).
#[test]
fn an_ack_with_65_ranges_closes_the_session() {
    malformed_ack(
        308,
        valid_ack(server_uni(0), 0, abuse::MAX_ACK_RANGES + 1),
        "Ack with 65 ranges",
    );
}

/// C6: an `Ack` range whose start is not below its end (inverted, and
/// empty).
#[test]
fn an_ack_range_with_start_not_below_end_closes_the_session() {
    for (i, (start, end)) in [(20u64, 10u64), (10, 10)].into_iter().enumerate() {
        let ack = Ack {
            stream_id: server_uni(0).0,
            contiguous: 0,
            ranges: vec![ByteRange { start, end }],
            returned_by: Vec::new(),
        };
        malformed_ack(
            309 + i as u64 * 100,
            ack,
            &format!("Ack range [{start}, {end})"),
        );
    }
}

/// C6: an `Ack` range ending at 2^62 (past every logical offset).
#[test]
fn an_ack_range_reaching_2_62_closes_the_session() {
    let ack = Ack {
        stream_id: server_uni(0).0,
        contiguous: 0,
        ranges: vec![ByteRange {
            start: (1 << 62) - 10,
            end: 1 << 62,
        }],
        returned_by: Vec::new(),
    };
    malformed_ack(310, ack, "Ack range ending at 2^62");
}

/// C7: a primary sends 100 000 AddPaths to addresses the client's policy
/// does not allow. The client answers each it takes with `FAILED` and
/// `KWIK_REFUSED` (refused by its policy, then by its rate limit); once the
/// primary goes on past the rate limit for more than a burst, the client
/// closes the session with `KWIK_RESOURCE_LIMIT` — a flood only makes it
/// answer. It keeps at most 64 final paths and grows at most 1 MiB.
#[test]
fn an_add_path_flood_is_refused_then_closed() {
    let bound = MIB;
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(311)
    };
    let (mut a, r) = run_pattern(Pattern::RefusedAddPaths, &opts);
    println!("refused-addpaths: {r}");
    assert_closed_within(&a, &r, ErrorCode::ResourceLimit, bound, "C7 AddPath flood");
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(5), |sim| {
        sim.node::<HostilePrimary>(id).close_code().is_none()
    });
    let p = a.hostile_primary();
    assert_eq!(
        p.close_code(),
        Some(ErrorCode::ResourceLimit.wire()),
        "the client closed the flood with KWIK_RESOURCE_LIMIT\n{}",
        a.context()
    );
    let burst = u64::from(kwik_core::PathPolicy::default().add_path_burst);
    // The burst and the refusals past the rate limit were answered (the
    // last answers may be cut off by the close).
    assert!(
        p.answers().len() as u64 >= burst,
        "the AddPaths before the close were answered: {} answers\n{}",
        p.answers().len(),
        a.context()
    );
    let failed = msg::PathState::Failed as i32;
    let refused = ErrorCode::Refused.wire();
    let wrong: Vec<(&u64, _)> = p
        .answers()
        .iter()
        .filter(|(_, x)| x.state != failed || x.code != refused)
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "every answer is FAILED with KWIK_REFUSED; counts {:?}, e.g. {wrong:?}",
        p.answer_counts()
    );
    let paths = {
        let node = a.client_node();
        let h = node.app.session.expect("session");
        node.endpoint
            .session(h)
            .map(|mut v| v.paths(PathFilter::All))
            .unwrap_or_default()
    };
    let finals = paths
        .iter()
        .filter(|p| !p.primary && p.state.is_final())
        .count();
    assert!(
        finals <= 64,
        "the client keeps at most 64 final paths, keeps {finals}\n{}",
        a.context()
    );
}

/// C8: a client joined to a secondary that serves a resource sends 100 000
/// `Delegate`s naming it (none of them writable yet): the secondary closes
/// the session with `KWIK_RESOURCE_LIMIT` once more than 4 096 delegations
/// are outstanding, growing at most 4 MiB.
#[test]
fn a_delegate_flood_closes_the_secondary_session_with_resource_limit() {
    let bound = 4 * MIB;
    let opts = Options {
        stop: stop_above(bound),
        ..Options::new(312)
    };
    let (mut a, r) = run_pattern(Pattern::DelegateFlood, &opts);
    println!("delegate-flood: {r}");
    assert_closed_within(&a, &r, ErrorCode::ResourceLimit, bound, "C8 delegate flood");
    assert_server_closed_hostile(&mut a, ErrorCode::ResourceLimit, "C8 delegate flood");
}

/// C8, the other side of the limit: 4 096 outstanding delegations (the
/// most allowed) are accepted — the session stays open.
#[test]
fn four_thousand_ninety_six_outstanding_delegations_are_accepted() {
    let mut a = Arena::joined_secondary(
        315,
        vec![
            Step::Mark,
            Step::Control(abuse::delegate_flood(4096, JOIN_PATH)),
        ],
    );
    let r = a.run_attack(stop_above(4 * MIB));
    println!("4096 delegations: {r}");
    assert_open_within(&a, &r, 4 * MIB, "C8 at the limit");
    assert!(r.attack_done, "{r}\n{}", a.context());
}

/// Environment variable under which the C9 child process runs its
/// scenario.
const C9_CHILD: &str = "KWIK_TRUST_C9_CHILD";

/// A server announcing `max_uni_streams = 2^40` is sent one record for
/// client unidirectional stream `index`; `cap` (over the baseline) makes an
/// allocation past it abort the process. Returns the arena after the
/// attack.
fn huge_index(seed: u64, index: u64, cap: Option<u64>, stop: StopWhen) -> (Arena, Report) {
    let record = data_record(StreamId::new(Side::Client, Dir::Uni, index), 0, b"x", false);
    let app = TargetServer::new(Payload::new(seed), ServerRole::Passive, false);
    let mut a = Arena::against_server(
        seed,
        app,
        |c| c.transport.max_uni_streams = 1 << 40,
        move |e: &Ends| {
            HostileClient::scripted(
                e.hostile,
                e.target,
                e.seed,
                &e.cert,
                [Step::Mark, Step::Lane(record)],
            )
        },
    );
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    if let Some(cap) = cap {
        a.cap_growth(cap);
    }
    let r = a.run_attack(stop);
    (a, r)
}

/// C9 (run by its parent in a child process): stream index 10^12 closes
/// the session with `KWIK_STREAM_LIMIT`, without a loop over the indices
/// below it, growing at most 1 MiB. The meter is capped at 256 MiB so that
/// a loop over the indices aborts the child instead of exhausting the
/// machine.
#[test]
fn c9_child_huge_stream_index() {
    if std::env::var_os(C9_CHILD).is_none() {
        return; // only meaningful in the child process its parent starts
    }
    let (mut a, r) = huge_index(313, 1_000_000_000_000, Some(256 * MIB), stop_above(MIB));
    println!("huge stream index: {r}");
    assert_closed_within(&a, &r, ErrorCode::StreamLimit, MIB, "C9 stream index 10^12");
    assert_server_closed_hostile(&mut a, ErrorCode::StreamLimit, "C9 stream index 10^12");
}

/// C9: a server configured with `max_uni_streams = 2^40` gets a record for
/// client stream index 10^12: closed at once with `KWIK_STREAM_LIMIT`
/// (limits are clamped to 2^14 per direction) — no loop over a trillion
/// indices, growth at most 1 MiB. Run in a child process (see
/// [`c9_child_huge_stream_index`]) whose allocations are capped, because
/// the loop it guards against would otherwise never end.
#[test]
fn a_record_for_stream_index_10_12_closes_with_stream_limit_at_once() {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    if std::env::var_os(C9_CHILD).is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "c9_child_huge_stream_index",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(C9_CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child test");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    // A hang guard, not a timing assertion: the fixed code answers in well
    // under a second of CPU.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    let tail = |s: &str| s[s.len().saturating_sub(6000)..].to_string();
    match status {
        Some(s) if s.success() && out.contains("1 passed") => {}
        Some(s) => panic!(
            "the child running the scenario failed ({s}); a capped allocation failure means the \
             server allocated more than 256 MiB for one record naming stream index 10^12\n\
             --- child stdout ---\n{}\n--- child stderr ---\n{}",
            tail(&out),
            tail(&err)
        ),
        None => panic!(
            "the child running the scenario did not finish within 300 s (a loop over 10^12 \
             stream indices?)\n--- child stdout ---\n{}\n--- child stderr ---\n{}",
            tail(&out),
            tail(&err)
        ),
    }
}

/// C9: a record for client stream index 60 000, with a configured limit
/// above it: the limit is clamped to 2^14, so the record is refused with
/// `KWIK_STREAM_LIMIT` — in any case the server's growth stays within
/// 16 MiB.
#[test]
fn a_record_for_stream_index_60000_stays_within_16_mib() {
    let bound = 16 * MIB;
    let (a, r) = huge_index(314, 60_000, None, stop_above(bound));
    println!("stream index 60 000: {r}");
    assert_metered(&r);
    assert!(
        r.peak_growth <= bound as i64,
        "the server grew {} bytes for one record naming stream index 60 000 (bound {bound}); \
         {r}\n{}",
        r.peak_growth,
        a.context()
    );
}

// ====================================================================
// E. Every violation closes the QUIC connection, promptly
// ====================================================================

/// How long a protocol violation may take to close the connection, in
/// virtual time, measured at the hostile node.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// The link of the E checks: 100 Mbit/s, 20 ms RTT, with up to 8 ms of
/// jitter so that packets are reordered and each seed runs differently (on
/// a perfect link every seed behaves the same).
fn jittery() -> LinkConfig {
    LinkConfig::new()
        .latency(Duration::from_millis(10))
        .jitter(Duration::from_millis(8))
        .rate_mbps(100)
}

/// Runs `check` on every seed; fails listing every seed that failed.
fn on_seeds(what: &str, seeds: std::ops::Range<u64>, check: impl Fn(u64) -> Result<(), String>) {
    let n = seeds.end - seeds.start;
    let failures: Vec<String> = seeds.filter_map(|seed| check(seed).err()).collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of {n} seeds did not close within {CLOSE_WITHIN:?}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Did the hostile node see `code` within [`CLOSE_WITHIN`] of misbehaving?
/// `Err` says what it saw instead, and what the target sent after the
/// violation.
fn closed_promptly(
    seed: u64,
    code: ErrorCode,
    marked: Option<Instant>,
    ended: Option<Instant>,
    close_code: Option<u64>,
    vanished: bool,
    detail: String,
) -> Result<(), String> {
    let on_time = matches!((marked, ended), (Some(b), Some(e)) if e - b <= CLOSE_WITHIN);
    if on_time && close_code == Some(code.wire()) {
        return Ok(());
    }
    let after = match (marked, ended) {
        (Some(b), Some(e)) => format!("{:?} after the violation", e - b),
        (Some(_), None) => "never".to_string(),
        (None, _) => "(never misbehaved)".to_string(),
    };
    Err(format!(
        "seed {seed}: the hostile saw {} {after}{}; {detail}",
        code_name(close_code),
        if vanished {
            " (its connection vanished: a stateless reset after the peer drained, no \
             CONNECTION_CLOSE)"
        } else {
            ""
        }
    ))
}

/// E1: while a primary streams a large resource to a client (data in
/// flight, credit granted far ahead), the client sends garbage on its
/// control stream: it gets `CONNECTION_CLOSE` with `KWIK_INVALID_FRAME`
/// within 1 s of virtual time — on 20 seeds of a jittery link.
#[test]
fn garbage_on_control_while_a_primary_streams_is_closed_within_a_second_on_20_seeds() {
    on_seeds("E1 client -> streaming primary", 400..420, |seed| {
        let credit = control_record(Body::StreamCredit(StreamCredit {
            stream_id: server_uni(0).0,
            max_offset: 1 << 40,
        }));
        let steps = vec![
            Step::Control(credit.into()),
            Step::AwaitServerBytes(MIB),
            Step::Mark,
            Step::Control(garbage_record().into()),
        ];
        let app = TargetServer::new(
            Payload::new(seed),
            ServerRole::Serve { len: 1 << 30 },
            false,
        );
        let mut a = Arena::against_server(
            seed,
            app,
            |_| {},
            move |e: &Ends| HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps),
        );
        a.sim.set_path(a.ends.hostile, a.ends.target, jittery());
        a.establish(false)?;
        wait_for_close(&mut a);
        let h = a.hostile();
        let sent = a.sim.link_stats(a.ends.target, a.ends.hostile).sent;
        closed_promptly(
            seed,
            ErrorCode::InvalidFrame,
            h.misbehaved_at(),
            h.ended_at(),
            h.close_code(),
            h.vanished(),
            format!(
                "server app saw {:?}; {} bytes had arrived; the server sent {sent} datagrams in all",
                a.server().closed.values().next(),
                h.server_bytes()
            ),
        )
    });
}

/// Runs until the hostile client's connection ends, or 2 s after it
/// misbehaved (10 s at most).
fn wait_for_close(a: &mut Arena) {
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(10), |sim| {
        let h = sim.node::<HostileClient>(id);
        h.ended_at().is_none()
            && h.misbehaved_at()
                .is_none_or(|t| sim.now() < t + 2 * CLOSE_WITHIN)
    });
}

/// E2: a client joined to a secondary (which is writing a delegated range
/// to it) sends garbage on its control stream: `KWIK_INVALID_FRAME` within
/// 1 s — on 10 seeds of a jittery link.
#[test]
fn garbage_from_a_joined_client_is_closed_by_the_secondary_within_a_second() {
    on_seeds("E2 client -> secondary", 410..420, |seed| {
        let delegate = control_record(Body::Delegate(Delegate {
            path_id: JOIN_PATH.0,
            delegation_id: 1,
            stream_id: server_uni(0).0,
            offset: 0,
            length: 1 << 30,
            fin: false,
            descriptor: Bytes::from_static(DESCRIPTOR),
            credit: 1 << 40,
            ..Delegate::default()
        }));
        let steps = vec![
            Step::Control(delegate.into()),
            Step::AwaitServerBytes(MIB),
            Step::Mark,
            Step::Control(garbage_record().into()),
        ];
        let app = TargetServer::new(Payload::new(seed), ServerRole::Passive, false);
        let mut a = Arena::against_server(
            seed,
            app,
            |_| {},
            move |e: &Ends| {
                HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps)
                    .join(genuine_join(&e.key, e.target))
            },
        );
        a.sim.set_path(a.ends.hostile, a.ends.target, jittery());
        a.establish(false)?;
        wait_for_close(&mut a);
        let h = a.hostile();
        closed_promptly(
            seed,
            ErrorCode::InvalidFrame,
            h.misbehaved_at(),
            h.ended_at(),
            h.close_code(),
            h.vanished(),
            format!("secondary app saw {:?}", a.server().closed.values().next()),
        )
    });
}

/// E2: a secondary sends garbage on its path's control stream while a
/// transfer runs: the client closes that path's connection with
/// `KWIK_INVALID_FRAME` within 1 s, and the session goes on (the transfer
/// completes byte-exact) — on 5 seeds of a jittery link to the secondary.
#[test]
fn garbage_from_a_secondary_closes_its_path_within_a_second() {
    on_seeds("E2 secondary -> client", 430..435, |seed| {
        let mut b = InjectionBench::new(seed, Injection::GarbageOnControl);
        let hostile_addr = addr(3);
        let client_addr = b.s.client_addr;
        b.s.sim.set_path(client_addr, hostile_addr, jittery());
        {
            let KwikNode { endpoint, app, .. } = b.s.primary_node();
            app.start_transfer(endpoint);
        }
        let rec = b.run_injection();
        let h = b.hostile();
        closed_promptly(
            seed,
            ErrorCode::InvalidFrame,
            Some(rec.at),
            h.ended_at(),
            h.close_code(),
            h.vanished(),
            format!("client path events {:?}", b.s.client().path_events),
        )?;
        b.assert_path_closed(ErrorCode::InvalidFrame, "E2 secondary -> client");
        let primary = b.s.primary;
        run_multi(
            &mut b.s,
            "the transfer completes",
            Duration::from_secs(30),
            |sim| primary_of(sim, primary).complete_at.is_none(),
        );
        b.assert_read_intact(first_server_stream(), 8 * MIB, "E2 transfer");
        Ok(())
    });
}

/// E2: a primary sends garbage on the control stream while its data is in
/// flight to the client (the client already granted more credit): the
/// client closes the session with `KWIK_INVALID_FRAME` within 1 s — on 10
/// seeds of a jittery link.
#[test]
fn garbage_from_a_primary_closes_the_client_session_within_a_second() {
    on_seeds("E2 primary -> client", 440..450, |seed| {
        let stream = server_uni(0);
        let payload = Payload::new(seed);
        let mut steps: Vec<PrimaryStep> = (0..4u64)
            .map(|i| PrimaryStep::Record {
                stream,
                offset: i * 512 * KIB,
                payload: payload.chunk(stream, i * 512 * KIB, (512 * KIB) as usize),
                fin: false,
            })
            .collect();
        // The client's first StreamCredit: it is reading, data flows.
        steps.push(PrimaryStep::AwaitReceived(1));
        steps.push(PrimaryStep::Mark);
        steps.push(PrimaryStep::ControlBytes(garbage_record().into()));
        let mut a = Arena::against_client(
            seed,
            |_| {},
            move |e: &Ends| HostilePrimary::new(e.hostile, e.seed, &e.cert, steps),
        );
        a.sim.set_path(a.ends.hostile, a.ends.target, jittery());
        a.establish(false)?;
        let id = a.attacker;
        let _ = a.sim.run_while(Duration::from_secs(10), |sim| {
            let p = sim.node::<HostilePrimary>(id);
            p.ended_at().is_none()
                && p.misbehaved_at()
                    .is_none_or(|t| sim.now() < t + 2 * CLOSE_WITHIN)
        });
        let p = a.hostile_primary();
        closed_promptly(
            seed,
            ErrorCode::InvalidFrame,
            p.misbehaved_at(),
            p.ended_at(),
            p.close_code(),
            p.vanished(),
            format!("client app saw {:?}", a.client().closed),
        )?;
        if !is_protocol(&a.client().closed, ErrorCode::InvalidFrame, false) {
            return Err(format!(
                "seed {seed}: client app saw {:?}",
                a.client().closed
            ));
        }
        Ok(())
    });
}

// ====================================================================
// F. Liveness counts only authenticated packets
// ====================================================================

/// F: a secondary dies (blackholed) in the middle of a download while an
/// attacker replays genuine datagrams of that secondary, captured earlier,
/// to the client every 20 ms with the secondary's address as source: the
/// path must still be declared dead within 1 s of the death (default
/// policy), and the download completes intact.
#[test]
fn replayed_datagrams_do_not_keep_a_dead_secondary_alive() {
    let seed = 501;
    let size = 64 * MIB;
    let links = vec![ServerLink::new(100, 20); 2];
    let mut s = MultiSetup::new(MultiOptions::new(seed, links, size), |p| {
        p.start = Start::Immediately
    });
    let (client, secondary_addr, client_addr) = (s.client, s.servers[1], s.client_addr);
    s.sim.tap(secondary_addr, client_addr, 64);
    run_multi(
        &mut s,
        "the download runs through the secondary",
        Duration::from_secs(20),
        |sim| {
            client_of(sim, client)
                .read
                .get(&first_server_stream())
                .copied()
                .unwrap_or(0)
                < 16 * MIB
        },
    );
    let path = s.primary().path_ids[&secondary_addr];
    let captured = s.sim.tapped(secondary_addr, client_addr);
    assert_eq!(
        captured.len(),
        64,
        "datagrams of the secondary were captured"
    );
    let killed = s.sim.elapsed();
    s.sim.set_down(secondary_addr, true);
    let attacker_addr = addr(66);
    let replayer = s.sim.add_node(
        &[attacker_addr],
        Box::new(Replayer::new(
            secondary_addr,
            client_addr,
            captured,
            Duration::from_millis(20),
        )),
    );
    let now = s.sim.now();
    s.sim.node_mut::<Replayer>(replayer).start(now);
    let delivered_before = s.sim.link_stats(secondary_addr, client_addr).delivered;
    let dead = |sim: &Sim| {
        client_of(sim, client)
            .path_events
            .iter()
            .any(|e| matches!(e, Event::PathDead { path: p, .. } if *p == path))
    };
    let result = s.sim.run_while(Duration::from_secs(1), |sim| !dead(sim));
    let replays = s.sim.node::<Replayer>(replayer).sent();
    let delivered = s.sim.link_stats(secondary_addr, client_addr).delivered - delivered_before;
    assert!(replays >= 10, "the attacker replayed {replays} datagrams");
    assert!(
        delivered >= replays.saturating_sub(2),
        "the replays reached the client: {delivered} of {replays}"
    );
    if result.is_err() {
        let info = client_paths(&mut s).into_iter().find(|i| i.id == path);
        panic!(
            "the secondary died at {killed:?} but its path was not declared dead within 1 s \
             while {replays} replayed datagrams reached the client; path: {info:?}\n{}",
            multi_context(&s)
        );
    }
    let when = s.sim.elapsed() - killed;
    println!("path declared dead {when:?} after the death, {replays} replays");
    s.sim.node_mut::<Replayer>(replayer).stop();
    run_multi(
        &mut s,
        "the download completes",
        Duration::from_secs(60),
        |sim| {
            !client_of(sim, client)
                .finished
                .contains(&first_server_stream())
        },
    );
    let c = s.client();
    assert_eq!(c.corrupt, 0);
    assert_eq!(c.read.get(&first_server_stream()).copied(), Some(size));
}

// ====================================================================
// G. StreamComplete
// ====================================================================

/// G1: the client sends StreamComplete for a server stream the primary is
/// still writing (open, data written, no FIN anywhere, nothing delegated):
/// the primary closes the session with `KWIK_INVALID_FRAME`, its app sees
/// it, and its later writes fail with `SessionClosed`.
#[test]
fn stream_complete_for_a_stream_still_being_written_closes_the_session() {
    let complete = control_record(Body::StreamComplete(StreamComplete {
        stream_id: server_uni(0).0,
    }));
    let mut a = hello_arena(
        601,
        ServerRole::Write { len: 64 * KIB },
        vec![
            Step::AwaitServerBytes(1),
            Step::Mark,
            Step::Control(complete.into()),
        ],
    );
    run_until_hostile_ends(&mut a, Duration::from_secs(3));
    let s = a.server();
    assert_eq!(
        s.finished,
        0,
        "the primary app was told the stream was delivered while it was still writing it\n{}",
        a.context()
    );
    assert_server_closed_hostile(&mut a, ErrorCode::InvalidFrame, "G1 early StreamComplete");
    let written = a.server().written;
    assert_eq!(written, 64 * KIB);
    let result = {
        let KwikNode { endpoint, app, .. } = a.server_node();
        app.write_more(endpoint, KIB)
    };
    assert!(
        matches!(result, Err(WriteError::SessionClosed(_))),
        "a write after the close fails with SessionClosed, got {result:?}"
    );
}

/// A primary app that serves `total` small resources one after another,
/// each on a fresh stream, starting the next once the client acknowledged
/// the previous one.
struct SerialPrimary {
    payload: Payload,
    size: u64,
    total: usize,
    session: Option<SessionHandle>,
    started: Vec<(StreamId, TransferId)>,
    completed: usize,
    closed: Option<CloseReason>,
}

impl SerialPrimary {
    fn start_next(&mut self, ep: &mut KwikEndpoint) {
        let Some(h) = self.session else { return };
        let mut view = ep.session(h).expect("live");
        let stream = view.open(Dir::Uni).expect("open");
        let resource = Arc::new(PayloadResource::new(
            self.payload.clone(),
            stream,
            self.size,
        ));
        let id = view
            .serve(
                stream,
                resource,
                Bytes::from_static(b"r"),
                TransferConfig::default(),
            )
            .expect("serve");
        self.started.push((stream, id));
    }
}

impl App for SerialPrimary {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _now: Instant, event: &Event, _: &mut Trace) {
        match event {
            Event::SessionEstablished { session, .. } => {
                self.session = Some(*session);
                self.start_next(ep);
            }
            Event::TransferComplete { .. } => {
                self.completed += 1;
                if self.started.len() < self.total {
                    self.start_next(ep);
                }
            }
            Event::SessionClosed { reason, .. } => self.closed = Some(reason.clone()),
            _ => {}
        }
    }
}

/// G2: a primary serving 50 small resources one after another (each on a
/// fresh stream with `serve`, each complete before the next) to a real
/// client reuses its lanes: `lanes_opened` stays at most 2.
#[test]
fn serving_fifty_resources_in_turn_reuses_lanes() {
    let seed = 602;
    let total = 50;
    let size = 4 * KIB;
    let mut sim = Sim::new(seed);
    sim.set_default_link(
        LinkConfig::new()
            .latency(Duration::from_millis(5))
            .rate_mbps(100),
    );
    let cert = dev_cert(seed);
    let (client_cfg, server_cfg) = configs(&cert);
    let payload = Payload::new(seed);
    let now = sim.now();
    let server_addr: SocketAddr = addr(1);
    let primary = sim.add_node(
        &[server_addr],
        Box::new(KwikNode::new(
            server_addr,
            arena_endpoint(seed, Some(server_cfg), now),
            SerialPrimary {
                payload: payload.clone(),
                size,
                total,
                session: None,
                started: Vec::new(),
                completed: 0,
                closed: None,
            },
        )),
    );
    let client = sim.add_node(
        &[addr(2)],
        Box::new(KwikNode::new(
            addr(2),
            arena_endpoint(seed + 1, None, now),
            MultiClient::new(server_addr, client_cfg, payload),
        )),
    );
    let result = sim.run_while(Duration::from_secs(30), |sim| {
        let p = &sim.node::<KwikNode<SerialPrimary>>(primary).app;
        p.completed < total && p.closed.is_none()
    });
    let p = &sim.node::<KwikNode<SerialPrimary>>(primary).app;
    assert!(
        result.is_ok() && p.completed == total,
        "{} of {total} transfers completed ({result:?}), closed {:?}",
        p.completed,
        p.closed
    );
    let c = &sim.node::<KwikNode<MultiClient>>(client).app;
    assert_eq!(c.corrupt, 0);
    assert_eq!(c.finished.len(), total, "every stream read to its end");
    assert!(c.read.values().all(|&n| n == size), "{:?}", c.read);
    let node = sim.node_mut::<KwikNode<SerialPrimary>>(primary);
    let h = node.app.session.expect("session");
    let stats = node.endpoint.session(h).expect("live").stats();
    assert!(
        stats.lanes_opened <= 2,
        "the primary opened {} lanes for {total} streams served one after another (a lane is \
         never released when StreamComplete ends a half whose FIN went out with its data)",
        stats.lanes_opened
    );
}
