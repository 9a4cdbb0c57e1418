//! Adversaries on the multi-server paths of a session.
//!
//! * **Token attacks on a secondary.** A [`HostileClient`] in join mode
//!   presents a scripted `Join` to a real kwik secondary (the one a
//!   [`MultiSetup`] client is joined to and downloading through): forged
//!   tokens, an expired one, a replayed one and one minted for another
//!   session. Each must be refused with `KWIK_AUTH_FAILED`, leave no
//!   `PathJoined` and no session behind on the secondary, and the real
//!   transfer through that secondary must complete byte-exact.
//! * **Conflicting bytes.** A secondary writes different bytes at offsets
//!   the client still holds: the client must close the whole session with
//!   `KWIK_OFFSET_MISMATCH`, and the primary must learn it (below the read
//!   offset they are dropped unchecked instead). The closed client session
//!   must stay inspectable through its view until all its connections
//!   drained.
//! * **Writing past the credit.** A [`HostileSecondary`] (quinn-proto, not
//!   kwik) joins and answers its first delegation with a record past the
//!   stream's credit: the client must close that path only
//!   (`KWIK_FLOW_CONTROL`, or `KWIK_NOT_DELEGATED` when the record also lies
//!   outside its delegation; reported to the primary), deliver none of the
//!   refused bytes, keep its buffer within the window, and the primary must
//!   re-assign the lost ranges so that the transfer still completes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kwik_core::proto::control::Join;
use kwik_core::{
    CloseReason, Dir, ErrorCode, Event, PathFilter, PathId, PathInfo, PathState, PathTarget,
    SessionHandle, SessionId, StreamId, TokenKey,
};
use kwik_sim::hostile::{HostileClient, HostileSecondary, Misbehaviour, Overshoot, join_request};
use kwik_sim::multi::{
    MultiClient, MultiOptions, MultiPrimary, MultiSetup, PayloadResource, SecondaryApp, ServerLink,
    Start, first_server_stream,
};
use kwik_sim::seeding::derive_key;
use kwik_sim::setup::{SERVER_NAME, addr, dev_cert};
use kwik_sim::{DevCert, KwikNode, LinkConfig, NodeId, Sim};

const MIB: u64 = 1 << 20;
/// Wall-clock time every endpoint of a [`MultiSetup`] starts at.
const UNIX_START: u64 = 1_800_000_000;
/// A comfortable token lifetime for tokens the tests mint.
const VALID_UNTIL: u64 = UNIX_START + 3600;

// ----- shared helpers -----

/// The token key [`MultiSetup`] shares between its primary and secondaries.
fn setup_key(seed: u64) -> TokenKey {
    TokenKey::new([seed as u8 ^ 0x5a; 32])
}

/// What to print when something fails: session- and path-level trace lines
/// (not the per-stream chatter) and the apps' records.
fn context(s: &MultiSetup) -> String {
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
    let skip = interesting.len().saturating_sub(120);
    for l in &interesting[skip..] {
        let _ = writeln!(out, "{l}");
    }
    let c = s.client();
    let p = s.primary();
    let _ = writeln!(
        out,
        "client read {:?} corrupt {} closed {:?} path events {:?}",
        c.read, c.corrupt, c.closed, c.path_events
    );
    let _ = writeln!(
        out,
        "primary added {:?} failed {:?} dead {:?} lost {} closed {:?}",
        p.added,
        p.failed,
        p.dead,
        p.lost.len(),
        p.closed
    );
    for i in 0..s.secondaries.len() {
        let a = s.secondary(i);
        let _ = writeln!(
            out,
            "secondary {i}: joined {:?} delegated {} closed {:?}",
            a.joined,
            a.delegated.len(),
            a.closed
        );
    }
    out
}

fn run_while(s: &mut MultiSetup, what: &str, limit: Duration, cond: impl FnMut(&Sim) -> bool) {
    if let Err(e) = s.sim.run_while(limit, cond) {
        panic!("{what}: {e}\n{}", context(s));
    }
}

fn client_of(sim: &Sim, id: NodeId) -> &MultiClient {
    &sim.node::<KwikNode<MultiClient>>(id).app
}

fn primary_of(sim: &Sim, id: NodeId) -> &MultiPrimary {
    &sim.node::<KwikNode<MultiPrimary>>(id).app
}

fn secondary_of(sim: &Sim, id: NodeId) -> &SecondaryApp {
    &sim.node::<KwikNode<SecondaryApp>>(id).app
}

/// Every byte of the resource arrived exactly once, verified.
fn assert_intact(s: &MultiSetup, size: u64) {
    let c = s.client();
    let stream = first_server_stream();
    assert_eq!(c.corrupt, 0, "every byte identical\n{}", context(s));
    assert_eq!(
        c.read.get(&stream).copied(),
        Some(size),
        "every byte exactly once\n{}",
        context(s)
    );
    assert!(c.finished.contains(&stream), "end of stream seen");
}

fn client_paths(s: &mut MultiSetup) -> Vec<PathInfo> {
    let node = s.client_node();
    let h = node.app.session.expect("client session");
    node.endpoint
        .session(h)
        .expect("client session lives")
        .paths(PathFilter::All)
}

fn client_session_id(s: &mut MultiSetup) -> SessionId {
    let node = s.client_node();
    let h = node.app.session.expect("client session");
    node.endpoint
        .session(h)
        .and_then(|v| v.id())
        .expect("established")
}

/// Sessions alive on secondary `i`'s endpoint.
fn secondary_sessions(s: &mut MultiSetup, i: usize) -> Vec<SessionHandle> {
    let id = s.secondaries[i];
    s.sim
        .node_mut::<KwikNode<SecondaryApp>>(id)
        .endpoint
        .sessions()
        .collect()
}

// ----- 1. token attacks on a secondary -----

/// A two-server download (primary `addr(1)`, secondary `addr(2)`) that is
/// under way through the secondary, plus hostile clients joining that
/// secondary from `addr(50..)`.
struct TokenBench {
    s: MultiSetup,
    seed: u64,
    size: u64,
    key: TokenKey,
    cert: DevCert,
    next_host: u8,
    hostiles: Vec<NodeId>,
    /// The real client's path to the secondary.
    legit_path: PathId,
    /// The secondary's handle of the real client's path.
    legit_handle: SessionHandle,
}

impl TokenBench {
    fn new(seed: u64) -> Self {
        Self::with_servers(seed, 2)
    }

    /// A primary and `servers - 1` secondaries sharing one token key.
    fn with_servers(seed: u64, servers: usize) -> Self {
        // Long enough (about 2.7 s at 2 × 100 Mbit/s) for every attack
        // sequence to run while it is under way.
        let size = 64 * MIB;
        let links = vec![ServerLink::new(100, 20); servers];
        let mut s = MultiSetup::new(MultiOptions::new(seed, links, size), |_| {});
        let (client, secondary) = (s.client, s.secondaries[0]);
        let stream = first_server_stream();
        // The real client joined the secondary and the download is flowing.
        run_while(
            &mut s,
            "the download starts",
            Duration::from_secs(10),
            |sim| {
                secondary_of(sim, secondary).joined.is_empty()
                    || client_of(sim, client)
                        .read
                        .get(&stream)
                        .copied()
                        .unwrap_or(0)
                        < MIB
            },
        );
        let legit_path = s.primary().path_ids[&s.servers[1]];
        let joined = s.secondary(0).joined.clone();
        for i in 1..s.secondaries.len() {
            let other = s.secondaries[i];
            run_while(
                &mut s,
                "every secondary joins",
                Duration::from_secs(10),
                |sim| secondary_of(sim, other).joined.is_empty(),
            );
        }
        assert_eq!(joined.len(), 1, "{}", context(&s));
        assert_eq!(joined[0].1, legit_path);
        TokenBench {
            s,
            seed,
            size,
            key: setup_key(seed),
            cert: dev_cert(seed),
            next_host: 50,
            hostiles: Vec::new(),
            legit_path,
            legit_handle: joined[0].0,
        }
    }

    fn secondary_addr(&self) -> SocketAddr {
        self.s.servers[1]
    }

    /// The secondary as tokens name it (the address text of an AddPath).
    fn target(&self) -> String {
        self.secondary_addr().to_string()
    }

    /// A hostile client on its own address presenting `join` to the
    /// secondary; it connects right away.
    fn attack(&mut self, join: Join) -> NodeId {
        let secondary = self.secondary_addr();
        self.attack_at(join, secondary)
    }

    /// Like [`attack`](Self::attack), at the server at `secondary`.
    fn attack_at(&mut self, mut join: Join, secondary: SocketAddr) -> NodeId {
        // Scripted Joins name this bench's secondary unless they say otherwise.
        if join.address.is_empty() && join.server_name.is_empty() {
            join.address = self.target();
            join.server_name = SERVER_NAME.to_string();
        }
        let host = self.next_host;
        self.next_host += 1;
        let a = addr(host);
        self.s.sim.set_path(
            a,
            secondary,
            LinkConfig::new()
                .latency(Duration::from_millis(5))
                .rate_mbps(100),
        );
        let seed = self.seed.wrapping_mul(1000).wrapping_add(u64::from(host));
        let node =
            HostileClient::new(a, secondary, seed, &self.cert, Misbehaviour::None).join(join);
        let id = self.s.sim.add_node(&[a], Box::new(node));
        self.hostiles.push(id);
        id
    }

    fn hostile(&self, id: NodeId) -> &HostileClient {
        self.s.sim.node::<HostileClient>(id)
    }

    /// Runs until each of `ids` was either answered `Joined` or lost its
    /// connection.
    fn settle(&mut self, ids: &[NodeId]) {
        let ids = ids.to_vec();
        let what = format!("hostiles {ids:?} get an answer");
        run_while(&mut self.s, &what, Duration::from_secs(10), |sim| {
            ids.iter().any(|&id| {
                let h = sim.node::<HostileClient>(id);
                h.connection_error().is_none() && !h.joined()
            })
        });
    }

    /// The hostile `id` was refused with `KWIK_AUTH_FAILED` (and a reason
    /// containing `why`), without ever being told it joined.
    fn assert_refused(&self, id: NodeId, why: &str) {
        let h = self.hostile(id);
        let ctx = || format!("{h:?}: {:?}\n{}", h.close_reason(), context(&self.s));
        assert!(h.connected_at().is_some(), "QUIC handshake done: {}", ctx());
        assert!(!h.joined(), "never joined: {}", ctx());
        assert_eq!(
            h.close_code(),
            Some(ErrorCode::AuthFailed.wire()),
            "closed with KWIK_AUTH_FAILED: {}",
            ctx()
        );
        let reason = h.close_reason().unwrap_or_default();
        assert!(reason.contains(why), "reason {reason:?} names {why:?}");
        assert!(
            h.received().is_empty(),
            "nothing but the close: {:?}",
            h.received()
        );
        assert!(h.wire_errors().is_empty(), "{:?}", h.wire_errors());
    }

    /// The attacks happened while the real download was still running.
    fn assert_download_running(&self) {
        let c = self.s.client();
        let stream = first_server_stream();
        assert!(
            !c.finished.contains(&stream) && c.closed.is_none(),
            "the attacks overlapped the download (read {:?} of {})",
            c.read.get(&stream),
            self.size
        );
    }

    /// Lets closed connections drain, then checks that the secondary keeps
    /// only the real client's session (plus `extra_sessions`), that `refused`
    /// sessions were closed by it with `KWIK_AUTH_FAILED`, and that it saw
    /// no `PathJoined` but the real one (plus `extra_joins`).
    fn assert_secondary_clean(
        &mut self,
        refused: usize,
        extra_joins: &[PathId],
        extra_sessions: usize,
    ) {
        self.s.sim.run_for(Duration::from_millis(300));
        let sessions = secondary_sessions(&mut self.s, 0);
        assert_eq!(
            sessions.len(),
            1 + extra_sessions,
            "the secondary keeps no session of a refused attempt: {sessions:?}\n\
             hostiles: {:?}\n{}",
            self.hostiles
                .iter()
                .map(|&id| self.hostile(id))
                .collect::<Vec<_>>(),
            context(&self.s)
        );
        assert!(sessions.contains(&self.legit_handle));
        let app = self.s.secondary(0);
        let joined: Vec<PathId> = app.joined.iter().map(|(_, p)| *p).collect();
        let mut expected = vec![self.legit_path];
        expected.extend_from_slice(extra_joins);
        assert_eq!(joined, expected, "PathJoined only for accepted tokens");
        let auth_failed = app
            .closed
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    CloseReason::Protocol {
                        code: ErrorCode::AuthFailed,
                        by_peer: false,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(
            auth_failed, refused,
            "the secondary closed each refused attempt itself: {:?}",
            app.closed
        );
    }

    /// Lets the real download finish and checks it was not hurt; then the
    /// client closes its session and the secondary ends up with no session
    /// at all.
    fn finish(mut self) {
        if let Err(e) = self.s.sim.run_until_done(Duration::from_secs(60)) {
            panic!("the download completes: {e}\n{}", context(&self.s));
        }
        assert_intact(&self.s, self.size);
        let p = self.s.primary();
        assert!(
            p.complete_at.is_some(),
            "the primary saw the transfer complete"
        );
        assert!(
            p.failed.is_empty() && p.dead.is_empty(),
            "{}",
            context(&self.s)
        );
        assert!(self.s.client().closed.is_none());
        let legit = self.legit_path;
        let info = client_paths(&mut self.s)
            .into_iter()
            .find(|i| i.id == legit)
            .expect("the real path");
        assert_eq!(info.state, PathState::Active);
        assert!(
            info.bytes_received > 4 * MIB,
            "the secondary served its share: {} bytes",
            info.bytes_received
        );
        // Everything ends: the secondary must hold nothing afterwards.
        let node = self.s.client_node();
        let h = node.app.session.expect("client session");
        node.endpoint
            .session(h)
            .expect("live")
            .close(0, b"done")
            .expect("application code");
        self.s.sim.run_for(Duration::from_secs(3));
        let left = secondary_sessions(&mut self.s, 0);
        assert!(
            left.is_empty(),
            "the secondary's sessions() is empty after draining: {left:?}"
        );
    }
}

#[test]
fn forged_tokens_are_refused_and_do_not_burn_the_path() {
    let mut b = TokenBench::new(301);
    let session = SessionId([0x11; 16]);
    let path = PathId(7);
    let genuine = b
        .key
        .mint(session, path, VALID_UNTIL, &b.target(), SERVER_NAME);
    let random = Bytes::copy_from_slice(&derive_key(b.seed, "forged path token"));
    let other_key =
        TokenKey::new([0xee; 32]).mint(session, path, VALID_UNTIL, &b.target(), SERVER_NAME);
    let mut flipped = genuine.to_vec();
    flipped[13] ^= 0x01;
    let attempts: Vec<(Join, &str)> = vec![
        (
            join_request(&session.0, path, VALID_UNTIL, random),
            "does not verify",
        ),
        (
            join_request(&session.0, path, VALID_UNTIL, other_key),
            "does not verify",
        ),
        (
            join_request(&session.0, path, VALID_UNTIL, Bytes::from(flipped)),
            "does not verify",
        ),
        (
            join_request(&session.0, path, VALID_UNTIL, genuine.slice(..16)),
            "does not verify",
        ),
        (
            join_request(&session.0, path, VALID_UNTIL, Bytes::new()),
            "does not verify",
        ),
        // The genuine MAC, but claiming a later expiry than it was minted for.
        (
            join_request(&session.0, path, VALID_UNTIL + 1, genuine.clone()),
            "does not verify",
        ),
        // The genuine MAC with a session id cut to 15 bytes.
        (
            join_request(&session.0[..15], path, VALID_UNTIL, genuine.clone()),
            "16 bytes",
        ),
    ];
    let ids: Vec<(NodeId, &str)> = attempts
        .into_iter()
        .map(|(join, why)| (b.attack(join), why))
        .collect();
    let nodes: Vec<NodeId> = ids.iter().map(|(id, _)| *id).collect();
    b.settle(&nodes);
    for (id, why) in &ids {
        b.assert_refused(*id, why);
    }
    b.assert_download_running();
    b.assert_secondary_clean(ids.len(), &[], 0);

    // None of the refusals used up the (session, path) slot: the genuine
    // token still joins.
    let good = b.attack(join_request(&session.0, path, VALID_UNTIL, genuine));
    b.settle(&[good]);
    let h = b.hostile(good);
    assert!(
        h.joined(),
        "the genuine token joins: {h:?} {:?}",
        h.close_reason()
    );
    assert!(h.joined_message().and_then(|j| j.limits).is_some());
    b.assert_secondary_clean(ids.len(), &[path], 1);
    let now = b.s.sim.now();
    b.s.sim
        .node_mut::<HostileClient>(good)
        .close(now, 0, b"bye");
    b.finish();
}

#[test]
fn expired_tokens_are_refused() {
    let mut b = TokenBench::new(302);
    let session = SessionId([0x33; 16]);
    let path = PathId(3);
    // Expired an hour before the simulation began …
    let long_ago = UNIX_START - 3600;
    let stale = b.attack(join_request(
        &session.0,
        path,
        long_ago,
        b.key
            .mint(session, path, long_ago, &b.target(), SERVER_NAME),
    ));
    // … and expiring exactly now by the secondary's clock (a token is void
    // from its expiry second on).
    let secondary = b.s.secondaries[0];
    let now_unix =
        b.s.sim
            .node_mut::<KwikNode<SecondaryApp>>(secondary)
            .endpoint
            .unix_now()
            .as_secs();
    assert!(now_unix >= UNIX_START);
    let boundary = b.attack(join_request(
        &session.0,
        PathId(4),
        now_unix,
        b.key
            .mint(session, PathId(4), now_unix, &b.target(), SERVER_NAME),
    ));
    b.settle(&[stale, boundary]);
    b.assert_refused(stale, "expired");
    b.assert_refused(boundary, "expired");
    b.assert_download_running();
    b.assert_secondary_clean(2, &[], 0);
    b.finish();
}

#[test]
fn a_replayed_token_is_refused_while_and_after_its_first_use() {
    let mut b = TokenBench::new(303);
    let session = SessionId([0x44; 16]);
    let path = PathId(5);
    let join = join_request(
        &session.0,
        path,
        VALID_UNTIL,
        b.key
            .mint(session, path, VALID_UNTIL, &b.target(), SERVER_NAME),
    );
    let first = b.attack(join.clone());
    b.settle(&[first]);
    assert!(
        b.hostile(first).joined(),
        "the first use joins: {:?}",
        b.hostile(first)
    );
    // Replayed while the first connection is still up …
    let concurrent = b.attack(join.clone());
    b.settle(&[concurrent]);
    b.assert_refused(concurrent, "already used");
    assert!(
        b.hostile(first).connection_error().is_none(),
        "the replay did not hurt the first connection"
    );
    b.assert_secondary_clean(1, &[path], 1);
    // … and after it closed and its session drained.
    let now = b.s.sim.now();
    b.s.sim
        .node_mut::<HostileClient>(first)
        .close(now, 0, b"bye");
    b.s.sim.run_for(Duration::from_millis(300));
    b.assert_secondary_clean(1, &[path], 0);
    let later = b.attack(join);
    b.settle(&[later]);
    b.assert_refused(later, "already used");
    b.assert_download_running();
    b.assert_secondary_clean(2, &[path], 0);
    b.finish();
}

#[test]
fn a_token_for_another_session_or_path_is_refused() {
    let mut b = TokenBench::new(304);
    let victim = client_session_id(&mut b.s);
    let other = SessionId([0x55; 16]);
    assert_ne!(victim, other);
    let legit = b.legit_path;
    let fresh = PathId(9);
    let attempts = vec![
        // Minted for session A, claiming the live session B on a new path …
        join_request(
            &victim.0,
            fresh,
            VALID_UNTIL,
            b.key
                .mint(other, fresh, VALID_UNTIL, &b.target(), SERVER_NAME),
        ),
        // … or on the very path the real client uses.
        join_request(
            &victim.0,
            legit,
            VALID_UNTIL,
            b.key
                .mint(other, legit, VALID_UNTIL, &b.target(), SERVER_NAME),
        ),
        // Minted for the right session but another path.
        join_request(
            &victim.0,
            PathId(fresh.0 + 1),
            VALID_UNTIL,
            b.key
                .mint(victim, fresh, VALID_UNTIL, &b.target(), SERVER_NAME),
        ),
    ];
    let ids: Vec<NodeId> = attempts.into_iter().map(|j| b.attack(j)).collect();
    b.settle(&ids);
    for id in &ids {
        b.assert_refused(*id, "does not verify");
    }
    b.assert_download_running();
    b.assert_secondary_clean(ids.len(), &[], 0);
    b.finish();
}

#[test]
fn a_token_minted_for_one_secondary_is_refused_by_another_sharing_the_key() {
    // Two secondaries trust the same key. A token is single-use per
    // secondary, so without the target in the MAC it would be good once at
    // each of them; it names its secondary, so only that one accepts it.
    let mut b = TokenBench::with_servers(305, 3);
    let (a_addr, b_addr) = (b.s.servers[1], b.s.servers[2]);
    let session = SessionId([0x66; 16]);
    let path = PathId(11);
    let for_a = b
        .key
        .mint(session, path, VALID_UNTIL, &a_addr.to_string(), SERVER_NAME);
    let join = join_request(&session.0, path, VALID_UNTIL, for_a.clone());
    let at_b = b.attack_at(
        Join {
            address: a_addr.to_string(),
            server_name: SERVER_NAME.to_string(),
            ..join.clone()
        },
        b_addr,
    );
    // Claiming B as the target breaks the MAC instead.
    let claims_b = b.attack_at(
        Join {
            address: b_addr.to_string(),
            server_name: SERVER_NAME.to_string(),
            ..join.clone()
        },
        b_addr,
    );
    // Another certificate name: refused by the name check.
    let renamed_mac = b.key.mint(
        session,
        path,
        VALID_UNTIL,
        &b_addr.to_string(),
        "other.test",
    );
    let renamed = b.attack_at(
        Join {
            address: b_addr.to_string(),
            server_name: "other.test".to_string(),
            token: renamed_mac,
            ..join.clone()
        },
        b_addr,
    );
    b.settle(&[at_b, claims_b, renamed]);
    b.assert_refused(at_b, "names another secondary");
    b.assert_refused(claims_b, "does not verify");
    b.assert_refused(renamed, "names another secondary");
    // At A, the token is good.
    let at_a = b.attack(Join {
        address: a_addr.to_string(),
        server_name: SERVER_NAME.to_string(),
        ..join
    });
    b.settle(&[at_a]);
    assert!(
        b.hostile(at_a).joined(),
        "{:?}",
        b.hostile(at_a).close_reason()
    );
    b.assert_download_running();
    let now = b.s.sim.now();
    b.s.sim
        .node_mut::<HostileClient>(at_a)
        .close(now, 0, b"bye");
    b.finish();
}

// ----- 2. conflicting bytes from a secondary -----

/// Primary and one secondary; the primary is driven by hand, the secondary
/// gets delegations under a descriptor it does not serve (so they surface
/// as `Delegated` events for the test to answer). Returns the setup, the
/// stream the primary opened and the path.
fn manual_setup(seed: u64, paused: bool, links: Vec<ServerLink>) -> (MultiSetup, StreamId, PathId) {
    let mut s = MultiSetup::new(MultiOptions::new(seed, links, MIB), |p| {
        p.start = Start::Manual
    });
    s.client_node().app.paused = paused;
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

/// Writes all of `data` at `offset` of `stream` from the given server
/// session, running the simulation while quinn's buffers are full.
fn write_all_at<A: kwik_sim::App>(
    s: &mut MultiSetup,
    node: NodeId,
    h: SessionHandle,
    stream: StreamId,
    offset: u64,
    data: Bytes,
) {
    let mut rest = data;
    let mut at = offset;
    for _ in 0..1000 {
        if rest.is_empty() {
            return;
        }
        let n = {
            let ep = &mut s.sim.node_mut::<KwikNode<A>>(node).endpoint;
            let mut view = ep.session(h).expect("server session lives");
            match view.write_at(stream, at, &mut rest, false) {
                Ok(n) => n,
                Err(kwik_core::WriteError::Blocked) => 0,
                Err(e) => panic!("write_at {at}: {e:?}"),
            }
        };
        at += n as u64;
        s.sim.run_for(Duration::from_millis(5));
    }
    panic!("could not write {} bytes at {at}", rest.len());
}

/// The bytes the primary writes: the payload the client verifies against.
fn held_bytes(seed: u64, stream: StreamId, len: usize) -> Bytes {
    kwik_sim::Payload::new(seed).chunk(stream, 0, len)
}

fn buffered(s: &mut MultiSetup, stream: StreamId) -> Option<u64> {
    let node = s.client_node();
    let h = node.app.session?;
    node.endpoint.session(h)?.stream_buffered(stream)
}

/// The primary delegates `[0, len)` of `stream` to `path` and runs until
/// the secondary's app was handed it; returns the secondary's session.
fn delegate_to_secondary(
    s: &mut MultiSetup,
    stream: StreamId,
    path: PathId,
    len: u64,
) -> SessionHandle {
    {
        let node = s.primary_node();
        let h = node.app.session.expect("primary session");
        let d = node
            .endpoint
            .session(h)
            .expect("live")
            .delegate(
                path,
                stream,
                0..len,
                false,
                Bytes::from_static(b"not-served"),
            )
            .expect("delegate");
        assert_eq!(d.range, 0..len);
    }
    let secondary = s.secondaries[0];
    run_while(s, "the delegation arrives", Duration::from_secs(5), |sim| {
        secondary_of(sim, secondary).delegated.is_empty()
    });
    let app = s.secondary(0);
    let d = &app.delegated[0];
    assert_eq!((d.stream, d.range.clone(), d.path), (stream, 0..len, path));
    app.joined[0].0
}

/// The primary writes `[0, 64 KiB)` of a stream, the paused client holds
/// it, the primary delegates the same range to the secondary, and the
/// secondary answers with the same bytes but one. Runs until the client and
/// the primary both saw the session close.
fn provoke_offset_mismatch(seed: u64, links: Vec<ServerLink>) -> (MultiSetup, StreamId) {
    let len = 64 * 1024usize;
    let (mut s, stream, path) = manual_setup(seed, true, links);
    let primary_h = s.primary().session.unwrap();
    let data = held_bytes(seed, stream, len);
    let (primary, secondary) = (s.primary, s.secondaries[0]);
    write_all_at::<MultiPrimary>(&mut s, primary, primary_h, stream, 0, data.clone());
    // The client holds all of [0, len) unread.
    for _ in 0..200 {
        if buffered(&mut s, stream) == Some(len as u64) {
            break;
        }
        s.sim.run_for(Duration::from_millis(5));
    }
    assert_eq!(
        buffered(&mut s, stream),
        Some(len as u64),
        "{}",
        context(&s)
    );
    let secondary_h = delegate_to_secondary(&mut s, stream, path, len as u64);
    // The secondary answers with the same bytes but one, deep inside.
    let mut wrong = data.to_vec();
    wrong[len / 2 + 7] ^= 0x5a;
    write_all_at::<SecondaryApp>(
        &mut s,
        secondary,
        secondary_h,
        stream,
        0,
        Bytes::from(wrong),
    );
    let client = s.client;
    run_while(
        &mut s,
        "both ends see the close",
        Duration::from_secs(5),
        |sim| client_of(sim, client).closed.is_none() || primary_of(sim, primary).closed.is_none(),
    );
    (s, stream)
}

#[test]
fn different_bytes_at_a_held_offset_close_the_session_with_offset_mismatch() {
    let links = vec![ServerLink::new(100, 20); 2];
    let (mut s, _) = provoke_offset_mismatch(311, links);
    s.sim.run_for(Duration::from_millis(500));
    let c = s.client();
    assert!(
        matches!(
            c.closed,
            Some(CloseReason::Protocol {
                code: ErrorCode::OffsetMismatch,
                by_peer: false,
                ..
            })
        ),
        "the client closed the session itself: {:?}\n{}",
        c.closed,
        context(&s)
    );
    assert_eq!(c.total(), 0, "the paused client read nothing");
    assert_eq!(c.corrupt, 0);
    let p = s.primary();
    assert!(
        matches!(
            p.closed,
            Some(CloseReason::Protocol {
                code: ErrorCode::OffsetMismatch,
                by_peer: true,
                ..
            })
        ),
        "the primary learned why: {:?}",
        p.closed
    );
    assert!(
        s.secondary(0).closed.iter().any(|r| matches!(
            r,
            CloseReason::Protocol {
                code: ErrorCode::OffsetMismatch,
                by_peer: true,
                ..
            }
        )),
        "the secondary's connection was closed with the code too: {:?}",
        s.secondary(0).closed
    );
}

#[test]
fn the_closed_client_session_can_be_inspected_until_its_paths_drained() {
    // After the OFFSET_MISMATCH close every connection of the client
    // session drains on its own schedule; with a far secondary (300 ms RTT)
    // the primary connection is gone well before the secondary's. The
    // session is still listed until both are, and its view must stay
    // usable (read-only calls must not panic) until it is gone.
    let links = vec![ServerLink::new(100, 20), ServerLink::new(100, 300)];
    let (mut s, stream) = provoke_offset_mismatch(313, links);
    let h = s.client().session.expect("client session");
    let mut inspected = 0u64;
    for _ in 0..1_000_000 {
        let at = s.sim.elapsed();
        let node = s.client_node();
        let Some(view) = node.endpoint.session(h) else {
            break;
        };
        let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = view.close_reason();
            let _ = view.stream_buffered(stream);
            let stats = view.stats();
            let remote = view.remote_address();
            (stats, remote)
        }));
        if probe.is_err() {
            panic!(
                "inspecting the closed session panicked at {at:?} \
                 ({inspected} inspections before)\n{}",
                context(&s)
            );
        }
        inspected += 1;
        assert!(s.sim.step(), "the session never drained");
    }
    assert!(
        s.client_node().endpoint.session(h).is_none(),
        "the session drained"
    );
    assert!(inspected > 0);
}

#[test]
fn different_bytes_below_the_read_offset_are_dropped_unchecked() {
    // PROTOCOL.md §9: bytes below what the application already read are
    // dropped without comparison; the session goes on.
    let seed = 312;
    let len = 64 * 1024usize;
    let (mut s, stream, path) = manual_setup(seed, false, vec![ServerLink::new(100, 20); 2]);
    let primary_h = s.primary().session.unwrap();
    let data = held_bytes(seed, stream, len);
    let (primary, secondary) = (s.primary, s.secondaries[0]);
    write_all_at::<MultiPrimary>(&mut s, primary, primary_h, stream, 0, data.clone());
    let client = s.client;
    run_while(
        &mut s,
        "the client reads it all",
        Duration::from_secs(5),
        |sim| client_of(sim, client).read.get(&stream).copied() != Some(len as u64),
    );
    let secondary_h = delegate_to_secondary(&mut s, stream, path, len as u64);
    let mut wrong = data.to_vec();
    wrong[len / 2 + 7] ^= 0x5a;
    write_all_at::<SecondaryApp>(
        &mut s,
        secondary,
        secondary_h,
        stream,
        0,
        Bytes::from(wrong),
    );
    s.sim.run_for(Duration::from_secs(1));
    let c = s.client();
    assert!(c.closed.is_none(), "{:?}\n{}", c.closed, context(&s));
    assert_eq!(c.read.get(&stream).copied(), Some(len as u64));
    assert_eq!(c.corrupt, 0);
    assert!(s.primary().closed.is_none());
    assert_eq!(
        buffered(&mut s, stream),
        Some(0),
        "nothing new was buffered"
    );
}

// ----- 3. a secondary writing past the credit -----

/// Buffered amounts the client showed, sampled after every instant.
#[derive(Debug, Default)]
struct Buffered {
    /// Largest of the stream's.
    stream: u64,
    /// Largest of the whole session's.
    total: u64,
    /// The stream's at the latest sample.
    last: u64,
    samples: u64,
}

fn sample(s: &mut MultiSetup, max: &mut Buffered) {
    let node = s.client_node();
    let Some(h) = node.app.session else { return };
    let Some(view) = node.endpoint.session(h) else {
        return;
    };
    let stream = view.stream_buffered(first_server_stream()).unwrap_or(0);
    let total = view.stats().buffered;
    max.stream = max.stream.max(stream);
    max.total = max.total.max(total);
    max.last = stream;
    max.samples += 1;
}

/// Steps the simulation one instant at a time, sampling the client's
/// buffers after each, until `until` holds.
fn run_sampled(
    s: &mut MultiSetup,
    what: &str,
    limit: Duration,
    max: &mut Buffered,
    until: impl Fn(&MultiSetup, &Buffered) -> bool,
) {
    let end = s.sim.elapsed() + limit;
    while !until(s, max) {
        assert!(s.sim.elapsed() <= end, "{what}: time limit\n{}", context(s));
        assert!(s.sim.step(), "{what}: simulation idle\n{}", context(s));
        sample(s, max);
    }
}

/// A download from a primary and an honest secondary (`addr(2)`) with a
/// 256 KiB stream window, joined by a [`HostileSecondary`] (`addr(3)`).
///
/// Reading client: the hostile path joins before the transfer starts and
/// overshoots far ([`Overshoot::Far`]). Paused client: the transfer starts,
/// the client's window fills up, and only then the hostile path joins and
/// writes a record ending one byte past the credit ([`Overshoot::OneByte`]);
/// the client resumes reading once the path is dead.
fn past_credit(seed: u64, pause: bool) {
    let window = 256 * 1024;
    let size = 16 * MIB;
    let stream = first_server_stream();
    let hostile_addr = addr(3);
    let links = vec![ServerLink::new(100, 20); 2];
    let mut opts = MultiOptions::new(seed, links, size);
    opts.stream_window = window;
    opts.tune_client =
        Box::new(move |c| c.path_policy.allow.push(PathTarget::Address(hostile_addr)));
    let mut s = MultiSetup::new(opts, |p| p.start = Start::Manual);
    s.sim.set_path(
        s.client_addr,
        hostile_addr,
        ServerLink::new(100, 20).config(),
    );
    let overshoot = if pause {
        let genuine = PayloadResource::new(kwik_sim::Payload::new(seed), stream, size);
        Overshoot::OneByte {
            len: 16 * 1024,
            source: Arc::new(genuine),
        }
    } else {
        Overshoot::Far { len: 16 * 1024 }
    };
    let hostile = s.sim.add_node(
        &[hostile_addr],
        Box::new(HostileSecondary::past_credit(
            hostile_addr,
            seed ^ 0xbad,
            &dev_cert(seed),
            overshoot,
        )),
    );
    s.client_node().app.paused = pause;
    let primary = s.primary;
    run_while(
        &mut s,
        "the honest path joins",
        Duration::from_secs(10),
        |sim| {
            let p = primary_of(sim, primary);
            p.added.len() + p.failed.len() < 1
        },
    );
    assert_eq!(s.primary().added.len(), 1, "{}", context(&s));
    let add_hostile = |s: &mut MultiSetup| -> PathId {
        let node = s.primary_node();
        let h = node.app.session.expect("session");
        let path = node
            .endpoint
            .session(h)
            .expect("live")
            .add_path(hostile_addr, SERVER_NAME)
            .expect("add_path");
        run_while(
            s,
            "the hostile path joins",
            Duration::from_secs(10),
            |sim| {
                let p = primary_of(sim, primary);
                !p.added.contains(&path) && p.failed.is_empty()
            },
        );
        assert!(s.primary().added.contains(&path), "{}", context(s));
        path
    };
    let start = |s: &mut MultiSetup| {
        let KwikNode { endpoint, app, .. } = s.primary_node();
        app.start_transfer(endpoint);
    };
    let mut max = Buffered::default();
    let bad_path = if pause {
        start(&mut s);
        run_sampled(
            &mut s,
            "the paused client's window fills",
            Duration::from_secs(10),
            &mut max,
            |_, b| b.last < window,
        );
        add_hostile(&mut s)
    } else {
        let path = add_hostile(&mut s);
        start(&mut s);
        path
    };
    let dead = |s: &MultiSetup, _: &Buffered| s.primary().dead.iter().any(|(p, _)| *p == bad_path);
    run_sampled(
        &mut s,
        "the hostile path dies",
        Duration::from_secs(10),
        &mut max,
        dead,
    );
    if pause {
        assert_eq!(s.client().total(), 0, "paused");
        assert_eq!(
            max.stream, window,
            "a full window and not one byte more while paused"
        );
        let now = s.sim.now();
        let KwikNode { endpoint, app, .. } = s.client_node();
        app.paused = false;
        app.drain(endpoint, now, stream);
    }
    let done = |s: &MultiSetup, _: &Buffered| {
        s.client().finished.contains(&stream) && s.primary().complete_at.is_some()
    };
    run_sampled(
        &mut s,
        "the download completes",
        Duration::from_secs(60),
        &mut max,
        done,
    );

    let ctx = context(&s);
    let h = s.sim.node::<HostileSecondary>(hostile);
    // A paused reader's credit lies below the range the scheduler delegated
    // to the hostile path, so a record ending just past the credit is also
    // outside its delegation: the trust check refuses it first. Reading, the
    // far overshoot lands inside its delegation and only the credit is
    // broken.
    let expected = if pause {
        ErrorCode::NotDelegated
    } else {
        ErrorCode::FlowControl
    };
    let record = *h
        .record()
        .unwrap_or_else(|| panic!("the hostile wrote: {h:?}\n{ctx}"));
    assert_eq!(record.stream, stream);
    assert_eq!(record.window, window, "the client announced its window");
    assert!(
        record.end() > record.credit,
        "the record ends past the credit it was given: {record:?}"
    );
    if pause {
        assert_eq!(record.credit, window, "nothing was read: {record:?}");
        assert_eq!(record.end(), record.credit + 1, "{record:?}");
    } else {
        assert!(record.offset >= record.delegated.0 + window, "{record:?}");
    }
    assert!(h.wire_errors().is_empty(), "{:?}", h.wire_errors());
    assert_eq!(
        h.close_code(),
        Some(expected.wire()),
        "the client closed the hostile connection with {expected}: {:?} {:?}\n{ctx}",
        h.connection_error(),
        h.close_reason()
    );

    // The client dropped that path only, and said why.
    let c = s.client();
    assert!(c.closed.is_none(), "the session stays up: {:?}", c.closed);
    assert!(
        c.path_events.iter().any(|e| matches!(
            e,
            Event::PathDead { path, failure, .. }
                if *path == bad_path && failure.code == expected
        )),
        "client path events: {:?}",
        c.path_events
    );
    let p = s.primary();
    let (_, failure) = p
        .dead
        .iter()
        .find(|(path, _)| *path == bad_path)
        .expect("reported");
    assert_eq!(failure.code, expected, "{failure}");
    assert_eq!(p.dead.len(), 1, "only the hostile path: {:?}", p.dead);
    assert!(p.failed.is_empty(), "{:?}", p.failed);
    assert!(!p.lost.is_empty(), "its ranges came back to the primary");
    assert!(p.lost.iter().all(|d| d.path == bad_path));
    assert!(
        p.lost.iter().any(|d| d.range.start == record.delegated.0),
        "the answered delegation was lost: {:?}",
        p.lost
    );

    // None of the refused bytes was delivered: the client read exactly the
    // resource (the fill bytes would fail verification).
    assert_intact(&s, size);

    // Memory stayed within the window the client granted.
    assert!(max.samples > 100, "{max:?}");
    assert!(
        max.stream <= window,
        "the stream never buffered more than its window: {max:?}"
    );
    assert!(max.total <= window, "{max:?}");

    let paths = client_paths(&mut s);
    let info = paths.iter().find(|i| i.id == bad_path).expect("listed");
    assert_eq!(info.state, PathState::Dead);
    assert_eq!(info.failure.as_ref().map(|f| f.code), Some(expected));
    let honest = paths
        .iter()
        .find(|i| !i.primary && i.id != bad_path)
        .expect("honest path");
    assert_eq!(honest.state, PathState::Active);
    assert!(
        honest.bytes_received > MIB,
        "the honest secondary served: {}",
        honest.bytes_received
    );
}

#[test]
fn a_secondary_writing_past_the_credit_loses_its_path_and_nothing_else() {
    past_credit(321, false);
}

#[test]
fn past_the_credit_while_the_reader_is_paused_memory_stays_within_the_window() {
    past_credit(322, true);
}
