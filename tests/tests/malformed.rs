//! A hostile peer next to a well-behaved one on the same kwik server.
//!
//! Each scenario runs one kwik server, one [`BulkClient`] uploading 8 MiB on
//! its own session, and one [`HostileClient`] on another address that is
//! welcomed and then breaks the protocol. The server must close exactly the
//! hostile session with `KWIK_INVALID_FRAME` (an application close the
//! hostile client sees, a local protocol close the server application sees)
//! while the good upload completes byte-exact.

use std::fmt::Write as _;
use std::time::Duration;

use kwik_core::{CloseReason, Dir, ErrorCode, SessionHandle};
use kwik_sim::hostile::{HostileClient, Misbehaviour, upload_stream};
use kwik_sim::setup::{SERVER_NAME, addr, configs, dev_cert, endpoint};
use kwik_sim::{BulkClient, BulkServer, KwikNode, LinkConfig, NodeId, Payload, Received, Sim};
use quinn_proto::{ConnectionError, TransportErrorCode};

const MIB: u64 = 1 << 20;
/// What the good client uploads.
const GOOD_BYTES: u64 = 8 * MIB;
/// TLS alert `no_application_protocol` (RFC 7301).
const NO_APPLICATION_PROTOCOL: u8 = 120;

struct Scenario {
    sim: Sim,
    server: NodeId,
    good: NodeId,
    hostile: NodeId,
}

impl Scenario {
    /// Server at `addr(1)`, good client at `addr(2)`, `hostile` (built for
    /// `addr(3)`) on a 100 Mbit/s, 10 ms link; runs until every node is
    /// done, then one more second so late closes and events land.
    fn run(seed: u64, hostile: impl FnOnce(&kwik_sim::DevCert, &Payload) -> HostileClient) -> Self {
        let mut sim = Sim::new(seed);
        sim.set_default_link(
            LinkConfig::new()
                .latency(Duration::from_millis(10))
                .rate_mbps(100),
        );
        let cert = dev_cert(seed);
        let (client_cfg, server_cfg) = configs(&cert);
        let payload = Payload::new(seed);
        let now = sim.now();
        let server = sim.add_node(
            &[addr(1)],
            Box::new(KwikNode::new(
                addr(1),
                endpoint(seed, Some(server_cfg), now),
                BulkServer::new(payload.clone(), 1),
            )),
        );
        let good = sim.add_node(
            &[addr(2)],
            Box::new(KwikNode::new(
                addr(2),
                endpoint(seed + 1, None, now),
                BulkClient::new(
                    addr(1),
                    SERVER_NAME,
                    client_cfg,
                    payload.clone(),
                    Dir::Uni,
                    &[GOOD_BYTES],
                ),
            )),
        );
        let hostile = sim.add_node(&[addr(3)], Box::new(hostile(&cert, &payload)));
        let mut scenario = Scenario {
            sim,
            server,
            good,
            hostile,
        };
        if let Err(e) = scenario.sim.run_until_done(Duration::from_secs(60)) {
            panic!("{e}\n{}", scenario.context());
        }
        scenario.sim.run_for(Duration::from_secs(1));
        scenario
    }

    fn server(&self) -> &BulkServer {
        &self.sim.node::<KwikNode<BulkServer>>(self.server).app
    }

    fn good(&self) -> &BulkClient {
        &self.sim.node::<KwikNode<BulkClient>>(self.good).app
    }

    fn hostile(&self) -> &HostileClient {
        self.sim.node::<HostileClient>(self.hostile)
    }

    /// The server's handle of the session whose id the client was given.
    fn server_session(&self, id: Option<kwik_core::SessionId>) -> Option<SessionHandle> {
        let id = id?;
        self.server()
            .sessions
            .iter()
            .find_map(|(&h, &sid)| (sid == id).then_some(h))
    }

    /// What to print when an assertion fails: the hostile node's lines and
    /// every session-level line, not the per-stream chatter of 8 MiB.
    fn context(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "hostile: {:?}", self.hostile());
        let _ = writeln!(
            out,
            "hostile close reason: {:?}",
            self.hostile().close_reason()
        );
        let _ = writeln!(out, "server closed: {:?}", self.server().closed);
        let _ = writeln!(out, "server sessions: {:?}", self.server().sessions);
        for line in self.sim.trace().lines() {
            if line.node == self.hostile.index()
                || line.text.starts_with("Session")
                || line.text.starts_with("Incoming")
            {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// The good client finished its upload byte-exact and its session is
    /// untouched.
    fn assert_good_client_unharmed(&self) {
        let ctx = || self.context();
        let good = self.good();
        assert!(good.all_complete(), "good upload incomplete\n{}", ctx());
        assert_eq!(good.closed, None, "good session closed\n{}", ctx());
        let server = self.server();
        assert_eq!(server.corrupt, 0, "corrupt bytes\n{}", ctx());
        let handle = self
            .server_session(good.session_id)
            .unwrap_or_else(|| panic!("server never established the good session\n{}", ctx()));
        assert!(
            !server.closed.contains_key(&handle),
            "server closed the good session\n{}",
            ctx()
        );
        let streams = &server.received[&handle];
        assert_eq!(streams.len(), 1, "{streams:?}");
        let got = streams.values().next().expect("one stream");
        assert_eq!(
            *got,
            Received {
                bytes: GOOD_BYTES,
                fin: true,
                reset: None,
            }
        );
    }

    /// The hostile session was closed by the server with
    /// `KWIK_INVALID_FRAME`, seen from both ends.
    fn assert_hostile_closed_invalid_frame(&self) {
        let ctx = || self.context();
        let hostile = self.hostile();
        assert!(
            hostile.welcomed(),
            "hostile client never welcomed\n{}",
            ctx()
        );
        assert!(
            hostile.misbehaved(),
            "hostile client never misbehaved\n{}",
            ctx()
        );
        assert!(
            hostile.wire_errors().is_empty(),
            "{:?}",
            hostile.wire_errors()
        );
        assert_eq!(
            hostile.close_code(),
            Some(ErrorCode::InvalidFrame.wire()),
            "hostile connection ended with {:?}\n{}",
            hostile.connection_error(),
            ctx()
        );
        let handle = self
            .server_session(hostile.session_id())
            .unwrap_or_else(|| panic!("server never established the hostile session\n{}", ctx()));
        match self.server().closed.get(&handle) {
            Some(CloseReason::Protocol {
                code: ErrorCode::InvalidFrame,
                by_peer: false,
                ..
            }) => {}
            other => panic!(
                "server app saw {other:?} for the hostile session {handle}\n{}",
                ctx()
            ),
        }
        assert!(
            self.server()
                .received
                .get(&handle)
                .is_none_or(|m| m.values().all(|r| r.bytes == 0)),
            "server delivered hostile bytes: {:?}",
            self.server().received.get(&handle)
        );
        // The hostile session ended while the good upload was still running:
        // the scenario really had both sessions live on the endpoint at once.
        let (ended, completed) = (hostile.ended_at(), self.good().completed_at);
        assert!(
            matches!((ended, completed), (Some(e), Some(c)) if e < c),
            "hostile ended at {ended:?}, good completed at {completed:?}"
        );
    }
}

fn misbehaving(seed: u64, misbehaviour: Misbehaviour) -> Scenario {
    let s = Scenario::run(seed, |cert, _| {
        HostileClient::new(addr(3), addr(1), seed + 2, cert, misbehaviour)
    });
    println!(
        "{misbehaviour}: hostile closed with {:?} ({:?}); server saw {:?}",
        s.hostile().close_code(),
        s.hostile().close_reason(),
        s.server().closed
    );
    s
}

#[test]
fn garbage_on_control_closes_only_that_session() {
    let s = misbehaving(11, Misbehaviour::GarbageOnControl);
    s.assert_hostile_closed_invalid_frame();
    s.assert_good_client_unharmed();
}

#[test]
fn oversized_frame_closes_only_that_session() {
    let s = misbehaving(12, Misbehaviour::OversizedFrame);
    s.assert_hostile_closed_invalid_frame();
    s.assert_good_client_unharmed();
}

#[test]
fn frame_for_unopened_stream_closes_only_that_session() {
    let s = misbehaving(13, Misbehaviour::FrameForUnopenedStream);
    s.assert_hostile_closed_invalid_frame();
    s.assert_good_client_unharmed();
}

#[test]
fn oversized_control_message_closes_only_that_session() {
    let s = misbehaving(14, Misbehaviour::OversizedControlMessage);
    s.assert_hostile_closed_invalid_frame();
    s.assert_good_client_unharmed();
}

/// Control: the same hand-rolled client, behaving, is welcomed, gets its
/// upload accepted byte-exact and confirmed, and is never closed. This also
/// shows that its wire encoding is right, so the closes above are about the
/// scripted faults.
#[test]
fn well_behaved_hostile_client_is_not_closed() {
    const UPLOAD: usize = 150_000; // three records at the default 64 KiB limit
    let s =
        Scenario::run(15, |cert, payload| {
            HostileClient::new(addr(3), addr(1), 17, cert, Misbehaviour::None)
                .upload(payload.chunk(upload_stream(), 0, UPLOAD))
        });
    s.assert_good_client_unharmed();
    let ctx = || s.context();
    let hostile = s.hostile();
    assert!(hostile.welcomed(), "{}", ctx());
    assert!(hostile.upload_confirmed(), "{}", ctx());
    assert!(
        hostile.wire_errors().is_empty(),
        "{:?}",
        hostile.wire_errors()
    );
    assert!(hostile.connection_error().is_none(), "{}", ctx());
    assert_eq!(hostile.close_code(), None);
    let handle = s
        .server_session(hostile.session_id())
        .expect("hostile session on the server");
    assert!(!s.server().closed.contains_key(&handle), "{}", ctx());
    assert_eq!(
        s.server().received[&handle].get(&upload_stream()),
        Some(&Received {
            bytes: UPLOAD as u64,
            fin: true,
            reset: None,
        })
    );
    // Still fine a while later (keep-alives flow, nobody objects).
    let mut s = s;
    s.sim.run_for(Duration::from_secs(10));
    assert!(s.hostile().connection_error().is_none(), "{}", s.context());
    assert!(!s.server().closed.contains_key(&handle), "{}", s.context());
}

/// A plain QUIC client offering `h3` is refused in the TLS handshake (no
/// session, no kwik close) and the good client is unaffected.
#[test]
fn wrong_alpn_is_refused_at_tls() {
    let s = Scenario::run(16, |cert, _| {
        HostileClient::new(addr(3), addr(1), 18, cert, Misbehaviour::None).alpn(b"h3")
    });
    s.assert_good_client_unharmed();
    let ctx = || s.context();
    let hostile = s.hostile();
    assert!(!hostile.welcomed());
    assert_eq!(
        hostile.connected_at(),
        None,
        "QUIC handshake completed\n{}",
        ctx()
    );
    match hostile.connection_error() {
        Some(ConnectionError::ConnectionClosed(close)) => assert_eq!(
            close.error_code,
            TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL),
            "{close}"
        ),
        other => panic!("expected a TLS refusal, got {other:?}\n{}", ctx()),
    }
    assert_eq!(hostile.close_code(), None);
    // The server never established a session for it.
    assert_eq!(s.server().sessions.len(), 1, "{}", ctx());
}
