//! Multi-server scenarios in the simulator: aggregation over heterogeneous
//! paths, failover, path authorisation, raw relay, removal, primary death.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kwik_core::{
    CloseReason, ErrorCode, Event, PathError, PathFilter, PathId, PathInfo, PathState,
};
use kwik_sim::multi::{
    DESCRIPTOR, MultiOptions, MultiPrimary, MultiSetup, PayloadResource, SecondaryApp, ServerLink,
    Start, first_server_stream,
};
use kwik_sim::{KwikNode, Payload};

fn heterogeneous() -> Vec<ServerLink> {
    vec![
        ServerLink::new(100, 40),
        ServerLink::new(50, 80),
        ServerLink::new(200, 20),
        ServerLink::new(25, 120),
    ]
}

fn run(s: &mut MultiSetup, limit: Duration) {
    if let Err(e) = s.sim.run_until_done(limit) {
        let interesting = s.sim.trace().lines().iter().filter(|l| {
            !l.text.starts_with("StreamReadable") && !l.text.starts_with("StreamWritable")
        });
        for l in interesting.take(80) {
            eprintln!("{l}");
        }
        let c = s.client();
        let p = s.primary();
        eprintln!(
            "client read {:?} closed {:?}; primary added {:?} failed {:?} dead {:?} lost {}",
            c.read,
            c.closed,
            p.added,
            p.failed,
            p.dead,
            p.lost.len()
        );
        panic!("{e:?}");
    }
}

fn assert_intact(s: &MultiSetup, size: u64) {
    let c = s.client();
    assert_eq!(c.corrupt, 0, "every byte identical");
    let stream = first_server_stream();
    assert_eq!(
        c.read.get(&stream).copied(),
        Some(size),
        "every byte exactly once"
    );
    assert!(c.finished.contains(&stream), "end of stream seen");
}

fn client_paths(s: &mut MultiSetup) -> Vec<kwik_core::PathInfo> {
    let client = s.client_node();
    let h = client.app.session.unwrap();
    client.endpoint.session(h).unwrap().paths(PathFilter::All)
}

fn primary_paths(s: &mut MultiSetup) -> Vec<kwik_core::PathInfo> {
    let primary = s.primary_node();
    let h = primary.app.session.unwrap();
    primary.endpoint.session(h).unwrap().paths(PathFilter::All)
}

#[test]
fn four_servers_deliver_one_resource_and_each_contributes() {
    let size = 256 << 20;
    let mut s = MultiSetup::new(MultiOptions::new(101, heterogeneous(), size), |_| {});
    run(&mut s, Duration::from_secs(120));
    assert_intact(&s, size);
    let p = s.primary();
    assert_eq!(p.added.len(), 3, "three secondaries joined: {:?}", p.failed);
    assert!(
        p.complete_at.is_some(),
        "the primary learned the transfer completed"
    );
    let paths = client_paths(&mut s);
    assert_eq!(paths.len(), 4);
    for info in &paths {
        assert_eq!(info.state, PathState::Active);
        assert!(
            info.bytes_received > 8 << 20,
            "{} contributed only {} bytes",
            info.id,
            info.bytes_received
        );
    }
}

#[test]
fn a_secondary_blackholed_midway_loses_nothing_and_duplicates_nothing() {
    let size = 64 << 20;
    let links = vec![ServerLink::new(100, 50); 4];
    let mut s = MultiSetup::new(MultiOptions::new(102, links, size), |_| {});
    let stream = first_server_stream();
    s.run_until_client(Duration::from_secs(60), |c| {
        c.read.get(&stream).copied().unwrap_or(0) >= size * 4 / 10
    });
    let victim = s.servers[2];
    s.sim.set_down(victim, true);
    run(&mut s, Duration::from_secs(120));
    assert_intact(&s, size);
    let p = s.primary();
    let dead_path = p.path_ids[&victim];
    assert!(
        p.dead
            .iter()
            .any(|(path, f)| *path == dead_path && f.code == ErrorCode::PathDead),
        "the primary learned the path died: {:?}",
        p.dead
    );
    assert!(!p.lost.is_empty(), "the primary got the missing ranges");
    assert!(p.lost.iter().all(|d| d.path == dead_path));
    assert!(
        s.client().max_stall < Duration::from_secs(2),
        "delivery resumed quickly: {:?}",
        s.client().max_stall
    );
    let paths = client_paths(&mut s);
    let info = paths.iter().find(|p| p.id == dead_path).unwrap();
    assert_eq!(info.state, PathState::Dead);
    // A dead path keeps the figures of what it carried.
    assert!(info.bytes_received > size / 16, "{info:?}");
    assert!(info.delegated_bytes >= info.bytes_received / 2, "{info:?}");
    let primary_view = primary_paths(&mut s);
    let info = primary_view.iter().find(|p| p.id == dead_path).unwrap();
    assert!(info.delegated_bytes > (size / 8), "{info:?}");
}

#[test]
fn the_client_policy_and_the_secondary_trust_refuse_paths() {
    let links = vec![ServerLink::new(100, 20); 4];
    let mut opts = MultiOptions::new(103, links, 4 << 20);
    // The client allows only the first and the third secondary …
    opts.tune_client = Box::new(|c| {
        c.path_policy.allow.remove(1);
    });
    // … the third trusts another key, and the first mints with a zero lifetime? no: the
    // primary's tokens are fine; server 3 simply does not trust them.
    opts.tune_server = Box::new(|i, cfg| {
        if i == 3 {
            cfg.trusted_keys = vec![kwik_core::TokenKey::new([0xee; 32])];
        }
    });
    let mut s = MultiSetup::new(opts, |_| {});
    run(&mut s, Duration::from_secs(60));
    assert_intact(&s, 4 << 20);
    let p = s.primary();
    let refused = p.path_ids[&s.servers[2]];
    let untrusted = p.path_ids[&s.servers[3]];
    let code_of = |path: PathId| {
        p.failed
            .iter()
            .find(|(id, _)| *id == path)
            .map(|(_, f)| f.code)
    };
    assert_eq!(code_of(refused), Some(ErrorCode::Refused), "{:?}", p.failed);
    assert_eq!(
        code_of(untrusted),
        Some(ErrorCode::AuthFailed),
        "{:?}",
        p.failed
    );
    assert_eq!(p.added.len(), 1);
    assert!(
        s.secondary(1).joined.is_empty(),
        "the refused target was never dialled"
    );
    assert!(
        s.secondary(2).joined.is_empty(),
        "nothing kept on an untrusted token"
    );
}

#[test]
fn an_expired_token_is_refused() {
    let links = vec![ServerLink::new(100, 20); 2];
    let mut opts = MultiOptions::new(104, links, 1 << 20);
    opts.tune_server = Box::new(|i, cfg| {
        if i == 0 {
            cfg.token_lifetime = Duration::ZERO;
        }
    });
    let mut s = MultiSetup::new(opts, |_| {});
    run(&mut s, Duration::from_secs(60));
    assert_intact(&s, 1 << 20);
    let p = s.primary();
    assert_eq!(p.failed.len(), 1);
    assert_eq!(p.failed[0].1.code, ErrorCode::AuthFailed);
    assert!(p.failed[0].1.reason.contains("expired"), "{:?}", p.failed);
}

#[test]
fn raw_messages_keep_order_and_boundaries_and_dead_paths_refuse_them() {
    let links = vec![ServerLink::new(100, 20); 2];
    let mut s = MultiSetup::new(MultiOptions::new(105, links, 1 << 20), |p| {
        p.start = Start::Manual
    });
    s.run_until_primary(Duration::from_secs(10), |p| !p.added.is_empty());
    let messages: Vec<Bytes> = (0..50u32)
        .map(|i| Bytes::from(vec![i as u8; 1 + (i as usize * 97) % 3000]))
        .collect();
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let path = *node.app.added.iter().next().unwrap();
    {
        let mut view = node.endpoint.session(h).unwrap();
        for m in &messages {
            view.send_raw(path, m.clone()).expect("relayed");
        }
        let too_big = Bytes::from(vec![0u8; 70_000]);
        assert!(matches!(
            view.send_raw(path, too_big),
            Err(PathError::TooLarge { .. })
        ));
        assert_eq!(
            view.send_raw(PathId(99), Bytes::new()),
            Err(PathError::NotFound(PathId(99)))
        );
    }
    s.sim.touch(s.primary);
    s.sim.run_for(Duration::from_secs(1));
    assert_eq!(
        s.secondary(0).raw,
        messages,
        "in order, boundaries kept, untouched"
    );

    // The path dies; raw messages to it are refused with PATH_DEAD.
    s.sim.set_down(s.servers[1], true);
    s.run_until_primary(Duration::from_secs(10), |p| !p.dead.is_empty());
    let node = s.primary_node();
    let err = node
        .endpoint
        .session(h)
        .unwrap()
        .send_raw(path, Bytes::from_static(b"late"))
        .unwrap_err();
    assert_eq!(err, PathError::Dead(path));
    assert_eq!(err.code(), ErrorCode::PathDead);
}

#[test]
fn remove_path_drains_then_closes_and_the_history_shows_it() {
    let links = vec![ServerLink::new(50, 40); 2];
    let size = 16 << 20;
    let mut s = MultiSetup::new(MultiOptions::new(106, links, size), |_| {});
    let stream = first_server_stream();
    s.run_until_client(Duration::from_secs(60), |c| {
        c.read.get(&stream).copied().unwrap_or(0) >= size / 4
    });
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let path = *node.app.added.iter().next().unwrap();
    node.endpoint
        .session(h)
        .unwrap()
        .remove_path(path)
        .expect("removal starts");
    s.sim.touch(s.primary);
    run(&mut s, Duration::from_secs(120));
    s.sim.run_for(Duration::from_secs(2));
    assert_intact(&s, size);
    let p = s.primary();
    assert_eq!(p.closed_paths, vec![path], "the primary saw the path close");
    assert!(p.dead.is_empty());
    let paths = client_paths(&mut s);
    let info = paths.iter().find(|p| p.id == path).unwrap();
    let states: Vec<PathState> = info.history.iter().map(|(_, st)| *st).collect();
    assert_eq!(
        states,
        [
            PathState::Initializing,
            PathState::Handshaking,
            PathState::Active,
            PathState::Closing,
            PathState::Closed
        ],
        "{states:?}"
    );
    assert!(
        s.client()
            .path_events
            .iter()
            .any(|e| matches!(e, Event::PathClosed { path: p, .. } if *p == path))
    );
}

#[test]
fn the_primary_dying_ends_the_client_session_with_a_reason() {
    // PROTOCOL.md §10.11: the primary is the offset authority. A client
    // configured for it notices its death from unanswered probes (not the
    // 30 s idle timeout),
    // ends the session as PrimaryLost, and closes its secondary paths with
    // KWIK_PATH_DEAD so their servers free the session at once.
    let links = vec![ServerLink::new(100, 20); 2];
    let mut opts = MultiOptions::new(107, links, 256 << 20);
    // Fast detection (the default rides out primary outages until the idle
    // timeout, see `a_primary_outage_shorter_than_the_idle_timeout_is_survived`).
    opts.tune_client = Box::new(|c| c.path_policy.primary_lost_after = Some(Duration::ZERO));
    let mut s = MultiSetup::new(opts, |_| {});
    s.sim.run_for(Duration::from_secs(1));
    assert!(s.client().total() > 0, "data flows");
    let killed = s.sim.elapsed();
    s.sim.set_down(s.servers[0], true);
    let ended = s.run_until_client(Duration::from_secs(30), |c| c.closed.is_some());
    assert_eq!(s.client().closed, Some(CloseReason::PrimaryLost));
    assert!(
        ended - killed <= Duration::from_secs(1),
        "detected within a second: {:?}",
        ended - killed
    );
    let secondary = s.secondaries[0];
    let freed = s
        .sim
        .run_while(Duration::from_secs(5), |sim| {
            sim.node::<KwikNode<SecondaryApp>>(secondary)
                .app
                .closed
                .is_empty()
        })
        .expect("the secondary hears of it");
    assert!(
        freed - ended <= Duration::from_millis(100),
        "within a round trip of the client's verdict: {:?}",
        freed - ended
    );
    assert!(
        s.secondary(0).closed.iter().any(|r| matches!(
            r,
            CloseReason::Protocol {
                code: ErrorCode::PathDead,
                by_peer: true,
                ..
            }
        )),
        "the secondary was closed by the client: {:?}",
        s.secondary(0).closed
    );
}

#[test]
fn a_secondary_whose_client_went_silent_frees_the_session_within_a_few_probe_timeouts() {
    // The client vanishes mid-transfer (no close): each secondary probes,
    // gathers its dead evidence and ends its session, long before QUIC's
    // 30 s idle timeout.
    let links = vec![ServerLink::new(100, 50); 3];
    let mut s = MultiSetup::new(MultiOptions::new(109, links, 256 << 20), |_| {});
    s.sim.run_for(Duration::from_secs(1));
    assert!(s.client().total() > 0, "data flows");
    let killed = s.sim.elapsed();
    s.sim.set_down(s.client_addr, true);
    let secondaries = s.secondaries.clone();
    let freed = s
        .sim
        .run_while(Duration::from_secs(40), |sim| {
            secondaries
                .iter()
                .any(|&n| sim.node::<KwikNode<SecondaryApp>>(n).app.closed.is_empty())
        })
        .expect("every secondary ends its session");
    assert!(
        freed - killed <= Duration::from_millis(1500),
        "freed within a few probe timeouts of a 50 ms path: {:?}",
        freed - killed
    );
    for i in 0..secondaries.len() {
        assert_eq!(s.secondary(i).closed, [CloseReason::TimedOut]);
    }
}

#[test]
fn a_secondary_whose_resource_is_short_gives_the_range_back_and_stays_up() {
    // §10.4: a secondary that cannot serve a delegated range gives it back
    // (ResetStream); the primary re-assigns it and the path stays up.
    let size: u64 = 32 << 20;
    let links = vec![ServerLink::new(100, 20); 3];
    let mut s = MultiSetup::new(MultiOptions::new(110, links, size), |_| {});
    let short = Arc::new(PayloadResource::new(
        Payload::new(110),
        first_server_stream(),
        size / 4,
    ));
    s.sim
        .node_mut::<KwikNode<SecondaryApp>>(s.secondaries[0])
        .endpoint
        .serve_resource(Bytes::from_static(DESCRIPTOR), short);
    run(&mut s, Duration::from_secs(60));
    assert_intact(&s, size);
    let short_path = s.primary().path_ids[&s.servers[1]];
    assert!(
        s.primary().lost.iter().any(|d| d.path == short_path),
        "the primary got ranges back from the short secondary"
    );
    let paths = client_paths(&mut s);
    let info = paths.iter().find(|p| p.id == short_path).unwrap();
    assert_eq!(info.state, PathState::Active, "{info:?}");
    assert!(
        s.secondary(0).closed.is_empty(),
        "{:?}",
        s.secondary(0).closed
    );
}

#[test]
fn lost_manual_delegations_are_reassigned_by_the_built_in_policy() {
    let size: u64 = 24 << 20;
    let links = vec![ServerLink::new(50, 40); 4];
    let mut opts = MultiOptions::new(108, links, size);
    opts.tune_server = Box::new(|i, cfg| {
        if i == 0 {
            cfg.auto_reassign = true;
        }
    });
    let mut s = MultiSetup::new(opts, |p| p.start = Start::Manual);
    s.run_until_primary(Duration::from_secs(10), |p| p.added.len() >= 3);
    // Hand a third of the resource to each secondary by hand.
    let node = s.primary_node();
    let h = node.app.session.unwrap();
    let paths: Vec<PathId> = node.app.added.iter().copied().collect();
    let mut view = node.endpoint.session(h).unwrap();
    let stream = view.open(kwik_core::Dir::Uni).unwrap();
    let third = size / 3;
    for (i, path) in paths.iter().enumerate() {
        let start = i as u64 * third;
        let end = if i == 2 { size } else { start + third };
        view.delegate(
            *path,
            stream,
            start..end,
            i == 2,
            Bytes::from_static(kwik_sim::multi::DESCRIPTOR),
        )
        .expect("delegated");
    }
    assert_eq!(view.outstanding().len(), 3);
    s.sim.touch(s.primary);
    s.run_until_client(Duration::from_secs(30), |c| c.total() >= size / 4);
    s.sim.set_down(s.servers[2], true);
    s.run_until_client(Duration::from_secs(60), |c| c.finished.contains(&stream));
    assert_intact(&s, size);
    let p = s.primary();
    let dead = p.path_ids[&s.servers[2]];
    assert_eq!(
        p.dead.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![dead]
    );
    assert!(
        p.lost.iter().all(|d| d.path == dead) && !p.lost.is_empty(),
        "the primary was told what was lost"
    );
    let node = s.primary_node();
    let view = node.endpoint.session(h).unwrap();
    assert!(
        view.outstanding().iter().all(|d| d.path != dead),
        "nothing is left owed by the dead path"
    );
}

#[test]
fn a_secondary_back_from_an_outage_is_re_added_and_serves_again() {
    // PROTOCOL.md §10.8, path retries: a secondary silent for 3 s dies on
    // the client; the primary re-adds it with backoff (fresh path id and
    // token) until it joins again, and the transfer uses it again.
    let size: u64 = 256 << 20;
    let links = vec![ServerLink::new(50, 20); 3];
    let opts = MultiOptions::new(109, links, size);
    let mut s = MultiSetup::new(opts, |_| {});
    s.sim.run_for(Duration::from_secs(2));
    assert!(s.client().total() > 0, "data flows");
    let target = s.servers[1];
    let first = s.primary().path_ids[&target];
    s.sim.set_down(target, true);
    let primary = s.primary;
    s.sim
        .run_while(Duration::from_secs(5), |sim| {
            !sim.node::<KwikNode<MultiPrimary>>(primary)
                .app
                .dead
                .iter()
                .any(|(p, _)| *p == first)
        })
        .expect("the silent secondary dies");
    s.sim.run_for(Duration::from_secs(2));
    s.sim.set_down(target, false);
    run(&mut s, Duration::from_secs(120));
    assert_intact(&s, size);
    let paths = primary_paths(&mut s);
    let retries: Vec<&PathInfo> = paths
        .iter()
        .filter(|p| p.address == target && p.id != first)
        .collect();
    assert!(!retries.is_empty(), "re-added: {paths:#?}");
    assert!(
        retries
            .iter()
            .all(|p| p.retry_of.is_some() && p.attempt > 0),
        "{retries:#?}"
    );
    let back = retries
        .iter()
        .find(|p| p.state == PathState::Active)
        .unwrap_or_else(|| panic!("one retry joined: {retries:#?}"));
    assert!(
        s.primary().added.contains(&back.id),
        "PathAdded for the retry"
    );
    let client_info = client_paths(&mut s)
        .into_iter()
        .find(|p| p.id == back.id)
        .expect("the client lists the retry");
    assert!(
        client_info.bytes_received > 1 << 20,
        "the secondary served again: {} bytes",
        client_info.bytes_received
    );
}

/// A primary outage of `outage` in the middle of a bulk transfer over
/// `rtt_ms` links: the session stays up (PROTOCOL.md §10.11: by default the
/// client rides out its primary's silence until the idle timeout), the
/// primary is heard again within a round trip and a probe timeout of the
/// outage's end, and the resource arrives intact.
///
/// Both ends come out of the outage with a congestion window full of lost
/// packets and QUIC's probe timeouts backed off to seconds; quinn-proto 0.11
/// sends not even an ACK in that state, so without kwik's probes (which
/// leave past the window, `probe_gate`) each end's next probe meets a peer
/// that cannot answer it and the session dies at the idle timeout.
fn primary_outage_is_survived(rtt_ms: u64, outage: Duration) {
    let size: u64 = 128 << 20;
    let links = vec![ServerLink::new(50, rtt_ms); 2];
    let mut s = MultiSetup::new(MultiOptions::new(110, links, size), |_| {});
    s.sim.run_for(Duration::from_secs(2));
    assert!(s.client().total() > 0, "data flows");
    let primary = s.servers[0];
    s.sim.set_down(primary, true);
    s.sim.run_for(outage);
    assert!(s.client().closed.is_none(), "{:?}", s.client().closed);
    let heard = |s: &mut MultiSetup| {
        client_paths(s)
            .into_iter()
            .find(|p| p.primary)
            .map(|p| p.last_active)
            .expect("the primary path is listed")
    };
    let before = heard(&mut s);
    s.sim.set_down(primary, false);
    let back = s.sim.elapsed();
    let mut resumed = None;
    while s.sim.elapsed() < back + Duration::from_secs(5) {
        assert!(s.sim.step(), "the simulation went idle");
        if heard(&mut s) > before {
            resumed = Some(s.sim.elapsed() - back);
            break;
        }
    }
    let resumed = resumed.expect("the primary is heard again");
    let rtt = Duration::from_millis(rtt_ms);
    let probe_timeout = rtt * 3 / 2 + Duration::from_millis(25);
    assert!(
        resumed <= rtt + probe_timeout,
        "heard {resumed:?} after the outage (RTT {rtt:?})"
    );
    let received = s.client().total();
    s.sim.run_for(Duration::from_secs(2));
    assert!(s.client().total() > received, "data flows again");
    run(&mut s, Duration::from_secs(240));
    assert_intact(&s, size);
    assert!(s.client().closed.is_none(), "{:?}", s.client().closed);
    assert!(s.primary().closed.is_none(), "{:?}", s.primary().closed);
}

#[test]
fn a_primary_outage_shorter_than_the_idle_timeout_is_survived() {
    primary_outage_is_survived(40, Duration::from_secs(6));
}

#[test]
fn a_long_primary_outage_on_a_full_window_is_survived() {
    // Chaos seed 525's shape: 16 s down, 100 ms round trips, both ends'
    // windows full when it starts.
    primary_outage_is_survived(100, Duration::from_secs(16));
}
