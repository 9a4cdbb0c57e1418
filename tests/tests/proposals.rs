//! Client-proposed paths (PROTOCOL.md §13) in the simulator: a kwik client
//! proposes servers it found itself, a kwik primary approves them by its
//! policy (refusing by default) and answers each exactly once; scripted
//! clients check the bounds a flood of proposals runs into.

use std::net::SocketAddr;
use std::time::Duration;

use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{self as msg};
use kwik_core::{
    ApproveListed, Candidate, ErrorCode, Event, MAX_OUTSTANDING_PROPOSALS,
    MAX_PENDING_PROPOSED_PATHS, PROPOSAL_BURST, PathError, PathFilter, PathId, ProposalId,
    ServerConfig, TokenKey,
};
use kwik_sim::Payload;
use kwik_sim::abuse::{Arena, Ends, ServerRole, TargetServer};
use kwik_sim::hostile::{HostileClient, Step};
use kwik_sim::multi::{MultiOptions, MultiSetup, ServerLink, Start, first_server_stream};
use kwik_sim::setup::{SERVER_NAME, addr};
use kwik_sim::wire::control_record;

// ----- a kwik client, a kwik primary, kwik secondaries -----

/// A client, a primary that adds no path itself (`Start::Manual`) and
/// `secondaries` secondaries (at `addr(2..)`) the client's policy allows,
/// run until the session is up; `tune` adjusts the primary's
/// configuration.
fn setup(seed: u64, secondaries: usize, tune: fn(&mut ServerConfig)) -> MultiSetup {
    let links = vec![ServerLink::new(100, 20); secondaries + 1];
    let mut options = MultiOptions::new(seed, links, 4 << 20);
    options.tune_server = Box::new(move |i, c| {
        if i == 0 {
            tune(c);
        }
    });
    let mut s = MultiSetup::new(options, |p| {
        p.start = Start::Manual;
        p.add_no_paths();
    });
    s.run_until_primary(Duration::from_secs(5), |p| p.session.is_some());
    s.sim.run_for(Duration::from_millis(100));
    s
}

fn propose(s: &mut MultiSetup, candidate: &Candidate) -> Result<ProposalId, PathError> {
    let node = s.client_node();
    let h = node.app.session.expect("connected");
    node.endpoint
        .session(h)
        .expect("live")
        .propose_path(candidate)
}

fn listed(host: u8) -> Candidate {
    Candidate::new(addr(host), SERVER_NAME)
}

/// The client's answers, as (proposal, outcome code or path).
fn client_answers(s: &MultiSetup) -> Vec<(ProposalId, Result<PathId, ErrorCode>)> {
    s.client()
        .proposal_answers
        .iter()
        .map(|e| match e {
            Event::PathProposalAnswered {
                proposal, outcome, ..
            } => (*proposal, outcome.clone().map_err(|f| f.code)),
            other => panic!("not an answer: {other:?}"),
        })
        .collect()
}

/// The primary's view of the proposals, as (proposal, server, outcome).
fn primary_proposals(s: &MultiSetup) -> Vec<(ProposalId, Candidate, Result<PathId, ErrorCode>)> {
    s.primary()
        .proposals
        .iter()
        .map(|e| match e {
            Event::PathProposed {
                proposal,
                candidate,
                outcome,
                ..
            } => (
                *proposal,
                candidate.clone(),
                outcome.clone().map_err(|f| f.code),
            ),
            other => panic!("not a proposal: {other:?}"),
        })
        .collect()
}

fn approve_addr_2(c: &mut ServerConfig) {
    c.proposal_policy = std::sync::Arc::new(ApproveListed(vec![listed(2)]));
}

#[test]
fn an_approved_proposal_joins_and_carries_delegated_data_intact() {
    let mut s = setup(1301, 1, approve_addr_2);
    let id = propose(&mut s, &listed(2)).expect("proposed");
    assert_eq!(id, ProposalId(1));
    s.run_until_primary(Duration::from_secs(5), |p| !p.added.is_empty());
    s.sim.run_for(Duration::from_millis(100));
    let path = *s.primary().added.iter().next().unwrap();
    assert_eq!(
        primary_proposals(&s),
        vec![(id, listed(2), Ok(path))],
        "the primary approved it as the path that joined"
    );
    assert_eq!(client_answers(&s), vec![(id, Ok(path))]);
    assert!(
        s.client()
            .path_events
            .iter()
            .any(|e| matches!(e, Event::PathAdded { path: p, .. } if *p == path)),
        "the client saw the path join: {:?}",
        s.client().path_events
    );
    assert_eq!(s.secondary(0).joined.len(), 1, "the secondary was joined");

    let node = s.primary_node();
    node.app.start_transfer(&mut node.endpoint);
    s.sim
        .run_until_done(Duration::from_secs(30))
        .expect("transfer done");
    let c = s.client();
    assert_eq!(c.corrupt, 0, "every byte identical");
    assert_eq!(c.read.get(&first_server_stream()).copied(), Some(4 << 20));
    assert!(c.finished.contains(&first_server_stream()));
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let info = node
        .endpoint
        .session(h)
        .unwrap()
        .paths(PathFilter::All)
        .into_iter()
        .find(|p| p.id == path)
        .expect("listed");
    assert!(
        info.delegated_bytes > 0,
        "the proposed path carried delegated ranges"
    );
    let node = s.client_node();
    let h = node.app.session.unwrap();
    let info = node
        .endpoint
        .session(h)
        .unwrap()
        .paths(PathFilter::All)
        .into_iter()
        .find(|p| p.id == path)
        .expect("listed");
    assert!(
        info.bytes_received > 100_000,
        "bytes arrived over it: {}",
        info.bytes_received
    );
}

#[test]
fn the_default_policy_refuses_with_a_code_and_adds_no_path() {
    let mut s = setup(1302, 1, |_| {});
    let id = propose(&mut s, &listed(2)).expect("proposed");
    s.run_until_client(Duration::from_secs(2), |c| !c.proposal_answers.is_empty());
    s.sim.run_for(Duration::from_secs(2));
    assert_eq!(
        client_answers(&s),
        vec![(id, Err(ErrorCode::ProposalRefused))]
    );
    match &s.client().proposal_answers[0] {
        Event::PathProposalAnswered {
            outcome: Err(f), ..
        } => assert!(!f.reason.is_empty(), "a reason is given"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        primary_proposals(&s),
        vec![(id, listed(2), Err(ErrorCode::ProposalRefused))]
    );
    assert!(
        s.client().path_events.is_empty(),
        "no AddPath reached the client"
    );
    assert!(s.primary().added.is_empty() && s.primary().failed.is_empty());
    assert!(s.secondary(0).joined.is_empty(), "no token was presented");
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let paths = node.endpoint.session(h).unwrap().paths(PathFilter::All);
    assert_eq!(paths.len(), 1, "no path (and no token) minted: {paths:?}");
    assert_eq!(s.client().closed, None, "the session goes on");
}

#[test]
fn an_allow_list_approves_what_it_lists_and_refuses_the_rest() {
    let mut s = setup(1303, 2, approve_addr_2);
    let unlisted = propose(&mut s, &listed(3)).expect("proposed");
    let wrong_name = propose(&mut s, &Candidate::new(addr(2), "other.test")).expect("proposed");
    let good = propose(&mut s, &listed(2)).expect("proposed");
    assert_eq!(
        (unlisted, wrong_name, good),
        (ProposalId(1), ProposalId(2), ProposalId(3))
    );
    s.run_until_primary(Duration::from_secs(5), |p| !p.added.is_empty());
    s.sim.run_for(Duration::from_millis(100));
    let path = *s.primary().added.iter().next().unwrap();
    assert_eq!(
        client_answers(&s),
        vec![
            (unlisted, Err(ErrorCode::ProposalRefused)),
            (wrong_name, Err(ErrorCode::ProposalRefused)),
            (good, Ok(path)),
        ]
    );
    assert_eq!(s.primary().added.len(), 1);
    assert!(
        s.secondary(1).joined.is_empty(),
        "the unlisted server was never joined"
    );
    // A server that is a path of the session already is not proposed by
    // this client (the primary's own refusal of it is a conformance test).
    assert!(matches!(
        propose(&mut s, &listed(2)),
        Err(PathError::InvalidCandidate(_))
    ));
    s.sim.run_for(Duration::from_millis(200));
    assert_eq!(client_answers(&s).len(), 3);
    assert_eq!(s.primary().added.len(), 1, "no second path to it");
}

#[test]
fn client_api_errors_are_typed() {
    let links = vec![ServerLink::new(100, 20); 2];
    let mut s = MultiSetup::new(MultiOptions::new(1304, links, 1 << 20), |p| {
        p.start = Start::Manual;
        p.add_no_paths();
    });
    s.sim.run_for(Duration::from_millis(1));
    assert_eq!(
        propose(&mut s, &listed(2)),
        Err(PathError::SessionClosed),
        "not established yet"
    );
    s.run_until_primary(Duration::from_secs(5), |p| p.session.is_some());
    s.sim.run_for(Duration::from_millis(100));
    for bad in [
        Candidate::new("10.0.0.2:0".parse().unwrap(), SERVER_NAME),
        Candidate::new("0.0.0.0:4433".parse().unwrap(), SERVER_NAME),
        Candidate::new("224.0.0.9:4433".parse().unwrap(), SERVER_NAME),
        Candidate::new("255.255.255.255:4433".parse().unwrap(), SERVER_NAME),
        Candidate::new(addr(2), ""),
        Candidate::new(addr(2), "n".repeat(256)),
        // Not allowed by the client's own path policy.
        listed(50),
    ] {
        assert!(
            matches!(propose(&mut s, &bad), Err(PathError::InvalidCandidate(_))),
            "{bad:?}"
        );
    }
    for i in 0..MAX_OUTSTANDING_PROPOSALS {
        assert_eq!(propose(&mut s, &listed(2)), Ok(ProposalId(i as u64 + 1)));
    }
    assert_eq!(
        propose(&mut s, &listed(2)),
        Err(PathError::LimitReached {
            limit: MAX_OUTSTANDING_PROPOSALS
        })
    );
    s.run_until_client(Duration::from_secs(2), |c| {
        c.proposal_answers.len() == MAX_OUTSTANDING_PROPOSALS
    });
    assert!(
        client_answers(&s)
            .iter()
            .all(|(_, o)| *o == Err(ErrorCode::ProposalRefused))
    );
    assert_eq!(
        propose(&mut s, &listed(2)),
        Ok(ProposalId(MAX_OUTSTANDING_PROPOSALS as u64 + 1)),
        "answered proposals free their slots; ids go on growing"
    );
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    assert_eq!(
        node.endpoint.session(h).unwrap().propose_path(&listed(2)),
        Err(PathError::WrongRole)
    );
}

// ----- a kwik primary and a scripted client -----

/// A kwik primary (with a token key, `tune`d) and a scripted client that
/// sends a Hello and, once welcomed, `steps`.
fn primary(seed: u64, tune: impl FnOnce(&mut ServerConfig), steps: Vec<Step>) -> Arena {
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

fn proposal(id: u64, address: SocketAddr) -> Step {
    proposal_text(id, &address.to_string(), SERVER_NAME)
}

fn proposal_text(id: u64, address: &str, name: &str) -> Step {
    Step::Control(
        control_record(Body::ProposePath(msg::ProposePath {
            proposal_id: id,
            address: address.into(),
            server_name: name.into(),
        }))
        .into(),
    )
}

/// Runs until the script is done or the connection ended, then `extra`.
fn run_script(a: &mut Arena, limit: Duration, extra: Duration) {
    let id = a.attacker;
    let _ = a.sim.run_while(limit, |sim| {
        let h = sim.node::<HostileClient>(id);
        h.ended_at().is_none() && !h.script_done()
    });
    a.sim.run_for(extra);
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

#[test]
fn a_proposal_flood_is_refused_then_closes_the_session() {
    // A burst, answered before the flood that follows.
    let burst = PROPOSAL_BURST as usize;
    let mut steps: Vec<Step> = (1..=burst as u64).map(|i| proposal(i, addr(10))).collect();
    steps.push(Step::Sleep(Duration::from_millis(100)));
    steps.extend((burst as u64 + 1..=40).map(|i| proposal(i, addr(10))));
    let mut a = primary(1310, |_| {}, steps);
    run_script(&mut a, Duration::from_secs(3), Duration::from_millis(500));
    let answers = answers(&a);
    assert!(
        (burst..=2 * burst).contains(&answers.len()),
        "the burst decided, at most a burst refused for the rate, then no more: {}",
        answers.len()
    );
    let ids: Vec<u64> = answers.iter().map(|m| m.proposal_id).collect();
    assert_eq!(
        ids,
        (1..=answers.len() as u64).collect::<Vec<_>>(),
        "once each, in order"
    );
    for m in &answers[..burst] {
        assert_eq!(m.error_code, ErrorCode::ProposalRefused.wire(), "{m:?}");
    }
    for m in answers.iter().skip(burst) {
        assert_eq!(m.error_code, ErrorCode::ResourceLimit.wire(), "{m:?}");
        assert_eq!(m.path_id, 0);
    }
    assert!(add_paths(&a).is_empty());
    assert_eq!(
        a.hostile().close_code(),
        Some(ErrorCode::ResourceLimit.wire()),
        "a client that goes on past the rate is flooding\n{}",
        a.context()
    );
}

#[test]
fn a_burst_past_the_rate_is_refused_with_resource_limit_and_the_session_goes_on() {
    let n = PROPOSAL_BURST as u64 + 3;
    let steps = (1..=n).map(|i| proposal(i, addr(10))).collect();
    let mut a = primary(1314, |_| {}, steps);
    run_script(&mut a, Duration::from_secs(3), Duration::from_millis(500));
    let codes: Vec<u64> = answers(&a).iter().map(|m| m.error_code).collect();
    let mut expected = vec![ErrorCode::ProposalRefused.wire(); PROPOSAL_BURST as usize];
    expected.extend([ErrorCode::ResourceLimit.wire(); 3]);
    assert_eq!(codes, expected, "{}", a.context());
    assert_eq!(a.hostile().connection_error(), None, "{}", a.context());
}

#[test]
fn proposals_within_the_rate_are_each_answered_once_and_the_session_goes_on() {
    let mut steps = Vec::new();
    for i in 1..=12 {
        steps.push(proposal(i, addr(10)));
        steps.push(Step::Sleep(Duration::from_millis(300)));
    }
    let mut a = primary(1311, |_| {}, steps);
    run_script(&mut a, Duration::from_secs(10), Duration::from_secs(1));
    let answers = answers(&a);
    assert_eq!(answers.len(), 12, "{}", a.context());
    for (i, m) in answers.iter().enumerate() {
        assert_eq!(m.proposal_id, i as u64 + 1);
        assert_eq!(m.error_code, ErrorCode::ProposalRefused.wire());
        assert_eq!(m.path_id, 0);
        assert!(!m.reason.is_empty());
    }
    assert!(
        add_paths(&a).is_empty(),
        "the default policy mints no token"
    );
    assert_eq!(a.hostile().connection_error(), None, "{}", a.context());
}

#[test]
fn approved_paths_still_connecting_are_bounded() {
    let hosts: Vec<u8> = (10..16).collect();
    let list: Vec<Candidate> = hosts.iter().map(|h| listed(*h)).collect();
    let mut steps: Vec<Step> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| proposal(i as u64 + 1, addr(*h)))
        .collect();
    // A server that is a path already (connecting) is refused.
    steps.push(proposal(7, addr(10)));
    let mut a = primary(
        1312,
        move |c| c.proposal_policy = std::sync::Arc::new(ApproveListed(list)),
        steps,
    );
    run_script(&mut a, Duration::from_secs(3), Duration::from_millis(500));
    let answers = answers(&a);
    assert_eq!(answers.len(), 7, "{}", a.context());
    let adds = add_paths(&a);
    let pending = MAX_PENDING_PROPOSED_PATHS;
    assert_eq!(adds.len(), pending, "one AddPath (one token) per approval");
    for (m, add) in answers.iter().zip(&adds) {
        assert_eq!(m.error_code, 0);
        assert_eq!(
            m.path_id, add.path_id,
            "the answer names the AddPath's path"
        );
    }
    for (i, add) in adds.iter().enumerate() {
        assert_eq!(add.address, addr(hosts[i]).to_string());
        assert_eq!(add.server_name, SERVER_NAME);
        assert_eq!(add.token.len(), 32);
    }
    for m in &answers[pending..6] {
        assert_eq!(m.error_code, ErrorCode::ResourceLimit.wire(), "{m:?}");
    }
    assert_eq!(answers[6].error_code, ErrorCode::ProposalRefused.wire());
    assert!(answers[6].reason.contains("already"), "{:?}", answers[6]);
    // The AddPath comes before the answer that names its path.
    let order: Vec<&str> = a
        .hostile()
        .received()
        .iter()
        .filter_map(|b| match b {
            Body::AddPath(_) => Some("add"),
            Body::ProposalAnswer(_) => Some("answer"),
            _ => None,
        })
        .take(2)
        .collect();
    assert_eq!(order, ["add", "answer"]);
    assert_eq!(a.hostile().connection_error(), None);
}

#[test]
fn a_proposal_the_primary_cannot_add_is_refused_with_the_reason() {
    // Approved by the policy, but the primary has no token key.
    let steps = vec![proposal(1, addr(10))];
    let mut a = primary(
        1313,
        |c| {
            c.token_key = None;
            c.proposal_policy = std::sync::Arc::new(ApproveListed(vec![listed(10)]));
        },
        steps,
    );
    run_script(&mut a, Duration::from_secs(3), Duration::from_millis(500));
    let answers = answers(&a);
    assert_eq!(answers.len(), 1, "{}", a.context());
    assert_ne!(answers[0].error_code, 0);
    assert_eq!(answers[0].path_id, 0);
    assert!(
        answers[0].reason.contains("cannot be added"),
        "{:?}",
        answers[0]
    );
    assert!(add_paths(&a).is_empty());
}
