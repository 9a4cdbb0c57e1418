//! Hostile review (v3): client-proposed paths (PROTOCOL.md §13) and the
//! observable path state machine (PROTOCOL.md §15).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{self as msg};
use kwik_core::{
    ApproveListed, Candidate, ErrorCode, Event, PathError, PathFilter, PathId, PathRetry,
    PathTarget, ProposalId, ServerConfig, TokenKey,
};
use kwik_sim::Payload;
use kwik_sim::abuse::{Arena, Ends, ServerRole, TargetServer};
use kwik_sim::hostile::{HostileClient, Step};
use kwik_sim::kwik_node::KwikNode;
use kwik_sim::link::LinkConfig;
use kwik_sim::multi::{MultiClient, MultiOptions, MultiPrimary, MultiSetup, ServerLink, Start};
use kwik_sim::setup::{SERVER_NAME, addr};
use kwik_sim::wire::control_record;

const PRIMARY_LATENCY: Duration = Duration::from_millis(10);
const SECONDARY_LATENCY: Duration = Duration::from_millis(25);

/// A client, a primary and one secondary on unshaped links (no queue, so a
/// datagram arrives exactly one latency after it left).
fn exact_setup(seed: u64) -> MultiSetup {
    exact_setup_with(seed, None)
}

/// [`exact_setup`], the primary's AddPath answer timeout set to `timeout`.
fn exact_setup_with(seed: u64, timeout: Option<Duration>) -> MultiSetup {
    let links = vec![ServerLink::new(100, 20), ServerLink::new(100, 50)];
    let mut options = MultiOptions::new(seed, links, 1 << 16);
    if let Some(t) = timeout {
        options.tune_server = Box::new(move |i, c| {
            if i == 0 {
                c.add_path_timeout = t;
                c.path_retry = None;
            }
        });
    }
    let mut s = MultiSetup::new(options, |p| p.start = Start::Manual);
    let (c, p, q) = (s.client_addr, s.servers[0], s.servers[1]);
    s.sim
        .set_path(c, p, LinkConfig::new().latency(PRIMARY_LATENCY));
    s.sim
        .set_path(c, q, LinkConfig::new().latency(SECONDARY_LATENCY));
    s
}

/// When the client saw its secondary path join (its `PathAdded`), as time
/// since the start.
fn joined_at(s: &MultiSetup) -> Option<Duration> {
    let start = s.sim.start();
    s.client().log.iter().find_map(|(t, e)| match e {
        Event::PathAdded { .. } => Some(t.saturating_duration_since(start)),
        _ => None,
    })
}

/// FINDING (high: a remote peer crashes a debug build; a release build
/// leaves a path "Active" the session believes it removed).
///
/// The client's path goes `Handshaking -> Closing` when a RemovePath for
/// it arrives before its secondary answered the Join (`begin_remove`).
/// If the secondary's `Joined` is read in the same drive — the primary
/// connection is polled first, then the secondary's — `on_joined` sets the
/// path `Active` unconditionally: `Closing -> Active` is not in the table
/// of §15.2, and `Machine::step` hits `debug_assert!(false, "illegal
/// transition ...")`. An honest primary triggers it (an application's
/// `remove_path`, or its own AddPath timeout, which sends RemovePath) and
/// a hostile one can time it at will.
///
/// Expected: a `Joined` for a path that is `Closing` leaves it `Closing`
/// (the connection is marked joined, and the path drains and closes).
#[test]
fn a_removal_read_with_the_joined_in_one_drive_is_no_illegal_transition() {
    // Where the join lands, undisturbed.
    let mut probe = exact_setup(7);
    let client = probe.client;
    let _ = probe.sim.run_while(Duration::from_secs(5), |sim| {
        !sim.node::<KwikNode<MultiClient>>(client)
            .app
            .log
            .iter()
            .any(|(_, e)| matches!(e, Event::PathAdded { .. }))
    });
    let t_join = joined_at(&probe).expect("the secondary joined");

    // The same run. The datagrams the secondary sends from just before its
    // Joined leaves, and the primary's RemovePath, are held back (captured
    // and dropped on the wire) and then handed to the client together, the
    // RemovePath first, as a batch of received datagrams is.
    let mut s = exact_setup(7);
    let (c, p, q) = (s.client_addr, s.servers[0], s.servers[1]);
    let sent = t_join - SECONDARY_LATENCY;
    let hold_from = sent - Duration::from_millis(1);
    s.sim.run_until(hold_from - Duration::from_micros(1));
    assert!(
        joined_at(&s).is_none(),
        "the same run must not have joined yet"
    );
    let hold = |latency| {
        LinkConfig::new()
            .latency(latency)
            .blackhole(hold_from, hold_from + Duration::from_secs(1))
    };
    s.sim.set_link(q, c, hold(SECONDARY_LATENCY));
    s.sim.set_link(p, c, hold(PRIMARY_LATENCY));
    s.sim.tap(q, c, 64);
    s.sim.tap(p, c, 64);
    s.sim.run_until(sent);
    let path: PathId = s.primary().path_ids[&q];
    let primary = s.primary;
    {
        let node = s.sim.node_mut::<KwikNode<MultiPrimary>>(primary);
        let h = node.app.session.expect("established");
        node.endpoint
            .session(h)
            .expect("live")
            .remove_path(path)
            .expect("removal starts");
    }
    s.sim.touch(primary);
    s.sim.run_for(Duration::from_millis(1));
    let from_primary = s.sim.untap(p, c);
    let from_secondary = s.sim.untap(q, c);
    assert!(!from_primary.is_empty() && !from_secondary.is_empty());
    s.sim
        .set_link(q, c, LinkConfig::new().latency(SECONDARY_LATENCY));
    s.sim
        .set_link(p, c, LinkConfig::new().latency(PRIMARY_LATENCY));
    let now = s.sim.now();
    let client = s.client;
    {
        let node = s.sim.node_mut::<KwikNode<MultiClient>>(client);
        for d in &from_primary {
            node.endpoint
                .handle_datagram(now, p, None, None, BytesMut::from(&d[..]));
        }
        for d in &from_secondary {
            node.endpoint
                .handle_datagram(now, q, None, None, BytesMut::from(&d[..]));
        }
    }
    s.sim.touch(client);
    s.sim.run_for(Duration::from_secs(3));
    let events = &s.client().path_events;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PathClosed { path: p, .. } if *p == path)),
        "the removed path never closed on the client: {events:?}"
    );
}

// ----- client-proposed paths (PROTOCOL.md §13) -----

/// A kwik primary (with a token key, `tune`d) and a scripted client that
/// sends a Hello and, once welcomed, `steps`.
fn scripted_primary(seed: u64, tune: impl FnOnce(&mut ServerConfig), steps: Vec<Step>) -> Arena {
    let app = TargetServer::new(Payload::new(seed), ServerRole::Passive, true);
    let mut a = Arena::against_server(
        seed,
        app,
        |c| {
            c.token_key = Some(TokenKey::new([0x42; 32]));
            tune(c);
        },
        move |e: &Ends| HostileClient::scripted(e.hostile, e.target, e.seed, &e.cert, steps),
    );
    a.establish(false).unwrap_or_else(|e| panic!("{e}"));
    a
}

fn propose_text(id: u64, address: &str, name: &str) -> Step {
    Step::Control(
        control_record(Body::ProposePath(msg::ProposePath {
            proposal_id: id,
            address: address.into(),
            server_name: name.into(),
        }))
        .into(),
    )
}

fn run_script(a: &mut Arena) {
    let id = a.attacker;
    let _ = a.sim.run_while(Duration::from_secs(3), |sim| {
        let h = sim.node::<HostileClient>(id);
        h.ended_at().is_none() && !h.script_done()
    });
    a.sim.run_for(Duration::from_millis(500));
}

fn answers(a: &Arena) -> Vec<msg::ProposalAnswer> {
    a.hostile()
        .received()
        .iter()
        .filter_map(|b| match b {
            Body::ProposalAnswer(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn add_paths(a: &Arena) -> Vec<msg::AddPath> {
    a.hostile()
        .received()
        .iter()
        .filter_map(|b| match b {
            Body::AddPath(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// FINDING (low): §13.3 step 3 answers `KWIK_INVALID_FRAME` for an address
/// that is unspecified, multicast or the IPv4 broadcast address, but
/// `proposal::undialable` looks at the IPv6 form only: the IPv4-mapped
/// spellings `[::ffff:0.0.0.0]`, `[::ffff:224.0.0.1]` and
/// `[::ffff:255.255.255.255]` (which a dual-stack socket sends to exactly
/// those IPv4 addresses) pass the check and reach the policy. The same
/// function guards the client's `propose_path`.
///
/// Expected: each answered `KWIK_INVALID_FRAME`, like its IPv4 spelling.
#[test]
fn ipv4_mapped_undialable_proposals_are_answered_invalid_frame() {
    let bad = [
        "[::ffff:0.0.0.0]:4433",
        "[::ffff:224.0.0.1]:4433",
        "[::ffff:255.255.255.255]:4433",
    ];
    let steps = bad
        .iter()
        .enumerate()
        .map(|(i, address)| propose_text(i as u64 + 1, address, SERVER_NAME))
        .collect();
    let mut a = scripted_primary(3301, |_| {}, steps);
    run_script(&mut a);
    let answers = answers(&a);
    assert_eq!(answers.len(), bad.len(), "{}", a.context());
    for (m, address) in answers.iter().zip(bad) {
        assert_eq!(
            m.error_code,
            ErrorCode::InvalidFrame.wire(),
            "{address} was judged dialable: {m:?}"
        );
    }
}

/// Holds: `ApproveListed` matches the socket address exactly — the
/// IPv4-mapped spelling of a listed address, another port, another case or
/// a trailing dot on the server name are all refused, and no AddPath (no
/// token) leaves for them.
#[test]
fn the_allow_list_matches_exactly() {
    let listed = Candidate::new("10.0.0.10:4433".parse().unwrap(), "cache.test");
    let probes = [
        ("[::ffff:10.0.0.10]:4433", "cache.test"),
        ("10.0.0.10:4434", "cache.test"),
        ("10.0.0.10:4433", "CACHE.test"),
        ("10.0.0.10:4433", "cache.test."),
        ("10.0.0.10:4433", "cache.test\0"),
    ];
    let steps = probes
        .iter()
        .enumerate()
        .map(|(i, (address, name))| propose_text(i as u64 + 1, address, name))
        .collect();
    let mut a = scripted_primary(
        3302,
        move |c| c.proposal_policy = Arc::new(ApproveListed(vec![listed])),
        steps,
    );
    run_script(&mut a);
    let answers = answers(&a);
    assert_eq!(answers.len(), probes.len(), "{}", a.context());
    for (m, probe) in answers.iter().zip(probes) {
        assert_ne!(m.error_code, 0, "{probe:?} approved: {m:?}");
        assert_eq!(m.path_id, 0);
    }
    assert!(add_paths(&a).is_empty(), "a token was minted");
}

/// Holds: a proposal id of `u64::MAX` is taken once; nothing can follow it
/// (a later id cannot be higher), and a repeat is a violation, not a
/// second answer.
#[test]
fn a_proposal_id_of_u64_max_is_answered_once_and_ends_the_sequence() {
    let steps = vec![
        propose_text(u64::MAX, "10.0.0.9:4433", SERVER_NAME),
        Step::Sleep(Duration::from_millis(100)),
        propose_text(u64::MAX, "10.0.0.9:4433", SERVER_NAME),
    ];
    let mut a = scripted_primary(3303, |_| {}, steps);
    run_script(&mut a);
    let answers = answers(&a);
    assert_eq!(answers.len(), 1, "{}", a.context());
    assert_eq!(answers[0].proposal_id, u64::MAX);
    assert_eq!(
        a.hostile().close_code(),
        Some(ErrorCode::InvalidFrame.wire()),
        "{}",
        a.context()
    );
}

/// A client and a primary that adds no path itself, the primary's
/// `ApproveListed` listing `list`, the client's policy tuned by `client`;
/// run until the session is up.
fn proposal_setup(
    seed: u64,
    list: Vec<Candidate>,
    client: impl Fn(&mut kwik_core::ClientConfig) + 'static,
) -> MultiSetup {
    let links = vec![ServerLink::new(100, 20); 3];
    let mut options = MultiOptions::new(seed, links, 1 << 20);
    options.tune_server = Box::new(move |i, c| {
        if i == 0 {
            c.proposal_policy = Arc::new(ApproveListed(list.clone()));
        }
    });
    options.tune_client = Box::new(client);
    let mut s = MultiSetup::new(options, |p| {
        p.start = Start::Manual;
        p.add_no_paths();
    });
    s.run_until_primary(Duration::from_secs(5), |p| p.session.is_some());
    s.sim.run_for(Duration::from_millis(100));
    s
}

fn client_propose(s: &mut MultiSetup, c: &Candidate) -> Result<ProposalId, PathError> {
    let node = s.client_node();
    let h = node.app.session.expect("connected");
    node.endpoint.session(h).expect("live").propose_path(c)
}

/// FINDING (low): §13.1 says the reference proposes only what its own
/// AddPath check (§10.3 step 2) would accept, and step 2 refuses a path
/// with the primary's own address. `Session::propose_path` checks the
/// policy's allow list only: a client whose policy allows its primary's
/// address (an allow-all policy does) proposes the primary itself; a
/// primary whose list holds every server of its fleet — itself included —
/// approves it, mints a token and an AddPath for itself, and the client
/// then refuses that AddPath ("a path to ... exists already").
///
/// Expected: `propose_path` refuses locally (`InvalidCandidate`), and the
/// primary mints no token for its own address.
#[test]
fn a_client_does_not_propose_its_own_primary() {
    let primary = Candidate::new(addr(1), SERVER_NAME);
    let mut s = proposal_setup(3304, vec![primary.clone()], |c| {
        c.path_policy.allow.push(PathTarget::Address(addr(1)));
    });
    let result = client_propose(&mut s, &primary);
    s.sim.run_for(Duration::from_secs(1));
    let minted: Vec<(PathId, std::net::SocketAddr)> = s
        .primary()
        .path_addrs
        .iter()
        .map(|(p, a)| (*p, *a))
        .collect();
    assert!(
        matches!(result, Err(PathError::InvalidCandidate(_))),
        "the client proposed its own primary ({result:?}); the primary then \
         added paths {minted:?} and the client answered {:?}",
        s.client().path_events
    );
}

/// FINDING (low): the same gap for the path limit (§10.3 step 2: "the
/// number of secondary paths that are connecting or live must stay under
/// its maximum"): at its `max_paths`, a client still proposes, the primary
/// approves and mints a token, and the client refuses the AddPath
/// ("path limit of 1 reached").
///
/// Expected: `propose_path` refuses while the client is at its path limit.
#[test]
fn a_client_at_its_path_limit_does_not_propose() {
    let list = vec![
        Candidate::new(addr(2), SERVER_NAME),
        Candidate::new(addr(3), SERVER_NAME),
    ];
    let mut s = proposal_setup(3305, list.clone(), |c| c.path_policy.max_paths = 1);
    assert!(client_propose(&mut s, &list[0]).is_ok());
    s.run_until_primary(Duration::from_secs(5), |p| !p.added.is_empty());
    s.sim.run_for(Duration::from_millis(200));
    let result = client_propose(&mut s, &list[1]);
    s.sim.run_for(Duration::from_secs(1));
    assert!(
        result.is_err(),
        "proposed past max_paths ({result:?}); the client then answered {:?}",
        s.client().path_events
    );
}

fn primary_live_paths_to(s: &mut MultiSetup, server: std::net::SocketAddr) -> Vec<PathId> {
    let node = s.primary_node();
    let h = node.app.session.expect("established");
    node.endpoint
        .session(h)
        .expect("live")
        .paths(PathFilter::Live)
        .into_iter()
        .filter(|p| p.address == server)
        .map(|p| p.id)
        .collect()
}

/// FINDING (medium): a client can cancel its primary's `path_retry` for a
/// server. The application's path to S dies; its retry is scheduled. The
/// client proposes S meanwhile; the "already a path" check (§13.3 step 4)
/// looks only at paths that have not ended, so the primary approves and
/// adds a second, proposal path to S. When the retry falls due, the
/// primary sends another AddPath for S, which the client must refuse (a
/// live path to S exists: §10.3 step 2) with `KWIK_REFUSED` — and a
/// refused path is "not worth retrying", so `follow_target` forgets the
/// application's target. Proposed paths are never retried (§13.3 step 7),
/// so once S's proposal path dies in turn, nothing re-adds S: the
/// application asked for S to be kept and lost it for good.
///
/// Expected: a pending retry of a target and a proposal for the same
/// server do not cancel each other — e.g. the retry skips a server that a
/// live path already reaches and stays scheduled, or the target adopts the
/// approved path — so S is re-added after its second outage.
#[test]
fn a_proposal_does_not_cancel_the_applications_path_retry() {
    let links = vec![ServerLink::new(100, 20); 2];
    let mut options = MultiOptions::new(3306, links, 1 << 20);
    options.tune_server = Box::new(|i, c| {
        if i == 0 {
            let mut retry = PathRetry::default();
            retry.initial = Duration::from_secs(2);
            retry.max = Duration::from_secs(2);
            c.path_retry = Some(retry);
            c.proposal_policy = Arc::new(ApproveListed(vec![Candidate::new(addr(2), SERVER_NAME)]));
        }
    });
    let mut s = MultiSetup::new(options, |p| p.start = Start::Manual);
    let server = addr(2);
    s.run_until_primary(Duration::from_secs(5), |p| !p.added.is_empty());
    // The application's path dies.
    s.sim.set_down(server, true);
    s.run_until_primary(Duration::from_secs(20), |p| {
        !p.dead.is_empty() || !p.failed.is_empty()
    });
    s.sim.set_down(server, false);
    // The client proposes the same server before the retry is due.
    client_propose(&mut s, &Candidate::new(server, SERVER_NAME)).expect("proposed");
    s.sim.run_for(Duration::from_secs(5));
    assert_eq!(
        primary_live_paths_to(&mut s, server).len(),
        1,
        "one live path to the server after the retry fell due"
    );
    // That path dies too; the server comes back.
    s.sim.set_down(server, true);
    let dead_before = s.primary().dead.len() + s.primary().failed.len();
    s.run_until_primary(Duration::from_secs(20), |p| {
        p.dead.len() + p.failed.len() > dead_before
    });
    s.sim.set_down(server, false);
    s.sim.run_for(Duration::from_secs(10));
    assert!(
        !primary_live_paths_to(&mut s, server).is_empty(),
        "path_retry gave up on {server}: dead {:?}, failed {:?}",
        s.primary().dead,
        s.primary().failed
    );
}

/// Holds: an approved proposal whose AddPath the client never answers
/// times out like any AddPath — the primary sends RemovePath, frees the
/// pending slot, does not re-add it by itself — and the same server can be
/// proposed again, approved as a new path with a new token; each proposal
/// answered exactly once.
#[test]
fn an_approved_proposal_whose_addpath_times_out_can_be_proposed_again() {
    let listed = Candidate::new("10.0.0.10:4433".parse().unwrap(), SERVER_NAME);
    let steps = vec![
        propose_text(1, "10.0.0.10:4433", SERVER_NAME),
        Step::Sleep(Duration::from_millis(1500)),
        propose_text(2, "10.0.0.10:4433", SERVER_NAME),
    ];
    let mut a = scripted_primary(
        3307,
        move |c| {
            c.proposal_policy = Arc::new(ApproveListed(vec![listed]));
            c.add_path_timeout = Duration::from_secs(1);
            c.path_retry = Some(PathRetry::default());
        },
        steps,
    );
    run_script(&mut a);
    a.sim.run_for(Duration::from_secs(3));
    let answers = answers(&a);
    assert_eq!(answers.len(), 2, "{}", a.context());
    assert!(answers.iter().all(|m| m.error_code == 0), "{answers:?}");
    let adds = add_paths(&a);
    assert_eq!(adds.len(), 2, "no retry of a proposed path: {adds:?}");
    assert_ne!(adds[0].path_id, adds[1].path_id);
    assert_ne!(adds[0].token, adds[1].token);
    let removed: Vec<u64> = a
        .hostile()
        .received()
        .iter()
        .filter_map(|b| match b {
            Body::RemovePath(m) => Some(m.path_id),
            _ => None,
        })
        .collect();
    assert!(removed.contains(&adds[0].path_id), "{removed:?}");
    assert_eq!(a.hostile().connection_error(), None, "{}", a.context());
}

/// The same defect as
/// `a_removal_read_with_the_joined_in_one_drive_is_no_illegal_transition`,
/// with no application involved: an honest primary whose AddPath answer
/// timeout (`ServerConfig::add_path_timeout`) expires while the Joined is
/// in flight sends RemovePath on its own (drive.rs, "the client did not
/// answer AddPath in time"). When the client reads that RemovePath and the
/// Joined in one batch, it panics in a debug build
/// (`illegal transition ... Closing -> Active`). The sweep tries answer
/// timeouts a quarter millisecond apart so that one of them expires inside
/// the window in which the two are read together.
#[test]
fn an_addpath_timeout_racing_the_joined_is_no_illegal_transition() {
    let mut probe = exact_setup(7);
    let client = probe.client;
    let _ = probe.sim.run_while(Duration::from_secs(5), |sim| {
        !sim.node::<KwikNode<MultiClient>>(client)
            .app
            .log
            .iter()
            .any(|(_, e)| matches!(e, Event::PathAdded { .. }))
    });
    let t_join = joined_at(&probe).expect("the secondary joined");
    let sent = t_join - SECONDARY_LATENCY;
    let hold_from = sent - Duration::from_millis(1);
    // The AddPath left after the primary's handshake; the timeout must
    // expire in [hold_from, sent + 1 ms].
    for quarter_ms in 0..(t_join.as_micros() as u64 / 250) {
        let timeout = Duration::from_micros(250 * quarter_ms + 1);
        let mut s = exact_setup_with(7, Some(timeout));
        let (c, p, q) = (s.client_addr, s.servers[0], s.servers[1]);
        s.sim.run_until(hold_from - Duration::from_micros(1));
        if joined_at(&s).is_some() || !s.primary().failed.is_empty() {
            continue; // expired too early for this sweep point
        }
        let hold = |latency| {
            LinkConfig::new()
                .latency(latency)
                .blackhole(hold_from, hold_from + Duration::from_secs(1))
        };
        s.sim.set_link(q, c, hold(SECONDARY_LATENCY));
        s.sim.set_link(p, c, hold(PRIMARY_LATENCY));
        s.sim.tap(q, c, 64);
        s.sim.tap(p, c, 64);
        s.sim.run_until(sent + Duration::from_millis(1));
        if s.primary().failed.is_empty() {
            continue; // not expired yet: no RemovePath in the batch
        }
        let from_primary = s.sim.untap(p, c);
        let from_secondary = s.sim.untap(q, c);
        s.sim
            .set_link(q, c, LinkConfig::new().latency(SECONDARY_LATENCY));
        s.sim
            .set_link(p, c, LinkConfig::new().latency(PRIMARY_LATENCY));
        let now = s.sim.now();
        let client = s.client;
        {
            let node = s.sim.node_mut::<KwikNode<MultiClient>>(client);
            for d in &from_primary {
                node.endpoint
                    .handle_datagram(now, p, None, None, BytesMut::from(&d[..]));
            }
            for d in &from_secondary {
                node.endpoint
                    .handle_datagram(now, q, None, None, BytesMut::from(&d[..]));
            }
        }
        s.sim.touch(client);
        s.sim.run_for(Duration::from_secs(1));
    }
}
