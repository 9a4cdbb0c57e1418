//! Failure semantics of stream shutdown (PROTOCOL.md §5.3, §10.4).
//!
//! * A writer's `finish` after the reader stopped succeeds when every byte
//!   written had reached the reader (as in QUIC), and fails with the stop
//!   code when something was lost.
//! * A client's stop of a multi-server stream reaches every source of it:
//!   each secondary stops writing, and every path stays up.
//! * A secondary that resets (gives back) its delegation loses neither its
//!   path nor any byte: the primary re-delegates what it still owed, to
//!   another path.
//! * A hostile secondary's resets close only what they must: one of a
//!   stream it was never delegated closes its path (and nothing else); one
//!   of its own delegation with a final offset inside what it sent is a
//!   give-back like any other and truncates nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kwik_core::{
    ClientConfig, Dir, ErrorCode, Event, KwikEndpoint, PathFilter, PathId, PathState, ReadError,
    SessionHandle, StreamError, StreamId, WriteError,
};
use kwik_sim::hostile::{HostileSecondary, Injection};
use kwik_sim::multi::{
    MultiOptions, MultiSetup, PayloadResource, SecondaryApp, ServerLink, first_server_stream,
};
use kwik_sim::setup::{SERVER_NAME, addr, configs, dev_cert, endpoint};
use kwik_sim::{App, KwikNode, LinkConfig, Payload, Sim, Trace};

const MIB: u64 = 1 << 20;

// ----- single server: finish after a stop -----

/// Client: opens a bidirectional stream, writes `total` bytes of the
/// payload without finishing, and calls `finish` once the peer stops it.
struct Writer {
    config: Option<ClientConfig>,
    payload: Payload,
    total: u64,
    session: Option<SessionHandle>,
    stream: Option<StreamId>,
    written: u64,
    stopped: Option<u64>,
    finish: Option<Result<(), StreamError>>,
}

impl Writer {
    fn pump(&mut self, ep: &mut KwikEndpoint) {
        let (Some(h), Some(id)) = (self.session, self.stream) else {
            return;
        };
        let Some(mut st) = ep.stream(h, id) else {
            return;
        };
        while self.written < self.total {
            let want = (self.total - self.written).min(64 << 10) as usize;
            let chunk = self.payload.chunk(id, self.written, want);
            match st.write(&chunk) {
                Ok(n) => self.written += n as u64,
                Err(WriteError::Blocked) => return,
                Err(_) => return,
            }
        }
    }
}

impl App for Writer {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _now: Instant, event: &Event, _t: &mut Trace) {
        match *event {
            Event::SessionEstablished { session, .. } => {
                let id = ep.session(session).unwrap().open(Dir::Bi).unwrap();
                self.stream = Some(id);
                self.pump(ep);
            }
            Event::StreamWritable { .. } => self.pump(ep),
            Event::StreamStopped {
                session,
                stream,
                code,
            } => {
                self.stopped = Some(code);
                self.finish = Some(ep.stream(session, stream).unwrap().finish());
            }
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _t: &mut Trace) -> bool {
        if self.session.is_none() {
            let cfg = self.config.take().unwrap();
            self.session = Some(ep.connect(now, addr(1), SERVER_NAME, &cfg).unwrap());
            return true;
        }
        false
    }

    fn done(&self) -> bool {
        self.finish.is_some()
    }
}

/// Server: reads the client's stream and stops it (code 5) once it has
/// read at least `stop_after` bytes.
struct Stopper {
    stop_after: u64,
    read: u64,
    stopped_at: Option<u64>,
}

impl App for Stopper {
    fn on_event(&mut self, ep: &mut KwikEndpoint, _now: Instant, event: &Event, _t: &mut Trace) {
        let (session, stream) = match *event {
            Event::StreamOpened { session, .. } => {
                let Some(id) = ep.session(session).unwrap().accept(Dir::Bi) else {
                    return;
                };
                (session, id)
            }
            Event::StreamReadable { session, stream } => (session, stream),
            _ => return,
        };
        if self.stopped_at.is_some() {
            return;
        }
        let Some(mut st) = ep.stream(session, stream) else {
            return;
        };
        loop {
            match st.read(usize::MAX) {
                Ok(Some(data)) => self.read += data.len() as u64,
                Ok(None) | Err(ReadError::Blocked) => break,
                Err(e) => panic!("read failed: {e:?}"),
            }
        }
        if self.read >= self.stop_after {
            st.stop(5).unwrap();
            self.stopped_at = Some(self.read);
        }
    }
}

/// Runs a [`Writer`] of `total` bytes against a [`Stopper`] that stops
/// after `stop_after`; returns both apps' records once `finish` was called.
fn finish_after_stop(seed: u64, total: u64, stop_after: u64) -> (Writer, u64) {
    let mut sim = Sim::new(seed);
    sim.set_default_link(
        LinkConfig::new()
            .latency(Duration::from_millis(10))
            .rate_mbps(100),
    );
    let cert = dev_cert(seed);
    let (client_cfg, server_cfg) = configs(&cert);
    let now = sim.now();
    let server = sim.add_node(
        &[addr(1)],
        Box::new(KwikNode::new(
            addr(1),
            endpoint(seed, Some(server_cfg), now),
            Stopper {
                stop_after,
                read: 0,
                stopped_at: None,
            },
        )),
    );
    let writer = Writer {
        config: Some(client_cfg),
        payload: Payload::new(seed),
        total,
        session: None,
        stream: None,
        written: 0,
        stopped: None,
        finish: None,
    };
    let client = sim.add_node(
        &[addr(2)],
        Box::new(KwikNode::new(
            addr(2),
            endpoint(seed + 1, None, now),
            writer,
        )),
    );
    sim.run_while(Duration::from_secs(10), |sim| {
        sim.node::<KwikNode<Writer>>(client).app.finish.is_none()
    })
    .expect("the writer learns of the stop");
    let stopped_at = sim
        .node::<KwikNode<Stopper>>(server)
        .app
        .stopped_at
        .expect("the server stopped");
    let app = std::mem::replace(
        &mut sim.node_mut::<KwikNode<Writer>>(client).app,
        Writer {
            config: None,
            payload: Payload::new(seed),
            total: 0,
            session: None,
            stream: None,
            written: 0,
            stopped: None,
            finish: None,
        },
    );
    (app, stopped_at)
}

#[test]
fn finish_succeeds_after_a_stop_that_found_everything_delivered() {
    let total = 200 * 1024;
    let (w, read) = finish_after_stop(61, total, total);
    assert_eq!(w.written, total, "everything was written");
    assert_eq!(read, total, "the reader had everything when it stopped");
    assert_eq!(w.stopped, Some(5), "the stop still reaches the writer");
    assert_eq!(w.finish, Some(Ok(())), "nothing was lost: finish succeeds");
}

#[test]
fn a_stop_before_everything_arrived_fails_finish_with_its_code() {
    let total = 600 * 1024;
    let (w, read) = finish_after_stop(62, total, 1);
    assert!(
        read < w.written,
        "the reader stopped early ({read} of {})",
        w.written
    );
    assert_eq!(w.stopped, Some(5));
    assert_eq!(
        w.finish,
        Some(Err(StreamError::Stopped(5))),
        "bytes were lost: the stop surfaces"
    );
}

// ----- multi-server -----

fn secondary_node(s: &mut MultiSetup, i: usize) -> &mut KwikNode<SecondaryApp> {
    let id = s.secondaries[i];
    s.sim.node_mut::<KwikNode<SecondaryApp>>(id)
}

/// Bytes secondary `i` wrote into its session (0 before it joined).
fn secondary_sent(s: &mut MultiSetup, i: usize) -> u64 {
    let node = secondary_node(s, i);
    let Some(&(h, _)) = node.app.joined.first() else {
        return 0;
    };
    node.endpoint.session(h).map_or(0, |v| v.stats().bytes_sent)
}

/// The client's view of every path, by id.
fn client_path_states(s: &mut MultiSetup) -> Vec<(PathId, PathState)> {
    let node = s.client_node();
    let h = node.app.session.expect("client session");
    node.endpoint
        .session(h)
        .expect("client session lives")
        .paths(PathFilter::All)
        .into_iter()
        .filter(|p| p.id != PathId::PRIMARY)
        .map(|p| (p.id, p.state))
        .collect()
}

fn assert_no_path_died(s: &mut MultiSetup) {
    let dead: Vec<&Event> = s
        .client()
        .path_events
        .iter()
        .filter(|e| matches!(e, Event::PathDead { .. } | Event::PathFailed { .. }))
        .collect();
    assert!(dead.is_empty(), "client saw paths end: {dead:?}");
    assert!(
        s.primary().dead.is_empty(),
        "primary: {:?}",
        s.primary().dead
    );
    assert!(s.client().closed.is_none(), "{:?}", s.client().closed);
    for i in 0..s.secondaries.len() {
        assert!(
            s.secondary(i).closed.is_empty(),
            "secondary {i}: {:?}",
            s.secondary(i).closed
        );
    }
    for (path, state) in client_path_states(s) {
        assert_eq!(state, PathState::Active, "{path}");
    }
}

/// A primary and two secondaries on equal links. Small logical-stream
/// windows and QUIC send buffers keep each secondary holding delegated
/// bytes it has yet to write (it writes only as the reader's credit and
/// its connection allow), so that it is a live source at any moment.
fn three_servers(seed: u64, size: u64) -> MultiSetup {
    let links = vec![ServerLink::new(100, 20); 3];
    let mut opts = MultiOptions::new(seed, links, size);
    opts.stream_window = 2 * MIB;
    opts.tune_server = Box::new(|i, cfg| {
        if i > 0 {
            cfg.transport.send_window = 256 * 1024;
        }
    });
    MultiSetup::new(opts, |_| {})
}

/// True if secondary `i` holds delegated bytes of `stream` not yet written.
fn holds(s: &mut MultiSetup, i: usize, stream: StreamId) -> bool {
    let node = secondary_node(s, i);
    let Some(&(h, _)) = node.app.joined.first() else {
        return false;
    };
    node.endpoint
        .stream(h, stream)
        .is_some_and(|st| st.send_state() == Some(kwik_core::SendState::Open))
}

fn assert_intact(s: &MultiSetup, size: u64) {
    let c = s.client();
    let stream = first_server_stream();
    assert_eq!(c.corrupt, 0, "every byte identical");
    assert_eq!(c.read.get(&stream).copied(), Some(size), "every byte once");
    assert!(c.finished.contains(&stream), "end of stream seen");
}

#[test]
fn a_client_stop_reaches_every_secondary_and_keeps_the_paths() {
    let size = 256 * MIB;
    let mut s = three_servers(63, size);
    let stream = first_server_stream();
    // Mid-transfer, at a moment when both secondaries hold work.
    let deadline = Duration::from_secs(20);
    loop {
        assert!(
            s.sim.elapsed() < deadline,
            "the secondaries never held work"
        );
        assert!(s.sim.step(), "simulation idle");
        let read = s.client().read.get(&stream).copied().unwrap_or(0);
        if read >= 16 * MIB && holds(&mut s, 0, stream) && holds(&mut s, 1, stream) {
            break;
        }
    }
    assert_eq!(s.primary().added.len(), 2, "both secondaries joined");
    for i in 0..2 {
        assert!(secondary_sent(&mut s, i) > 0, "secondary {i} is a source");
    }
    {
        let node = s.client_node();
        node.app.paused = true;
        let h = node.app.session.unwrap();
        node.endpoint.stream(h, stream).unwrap().stop(9).unwrap();
    }
    s.sim.run_for(Duration::from_millis(500));
    let sent: Vec<u64> = (0..2).map(|i| secondary_sent(&mut s, i)).collect();
    s.sim.run_for(Duration::from_secs(1));
    for (i, before) in sent.into_iter().enumerate() {
        assert_eq!(
            s.secondary(i).stopped,
            vec![(stream, 9)],
            "secondary {i} was told to stop"
        );
        assert_eq!(
            secondary_sent(&mut s, i),
            before,
            "secondary {i} wrote nothing more"
        );
    }
    {
        let node = s.primary_node();
        let h = node.app.session.unwrap();
        let view = node.endpoint.session(h).unwrap();
        assert!(view.outstanding().is_empty(), "nothing is owed any more");
    }
    assert!(s.client().read[&stream] < size, "stopped mid-transfer");
    assert_no_path_died(&mut s);
}

#[test]
fn a_secondary_giving_its_delegation_back_keeps_its_path_and_loses_no_byte() {
    let size = 96 * MIB;
    let mut s = three_servers(64, size);
    let stream = first_server_stream();
    // Once secondary 0 has written a good part of its share, its
    // application resets the stream while delegated bytes are left.
    let deadline = Duration::from_secs(20);
    loop {
        assert!(
            s.sim.elapsed() < deadline,
            "secondary 0 never held work: sent {} {}, read {:?}",
            secondary_sent(&mut s, 0),
            secondary_sent(&mut s, 1),
            s.client().read
        );
        assert!(s.sim.step(), "simulation idle");
        if secondary_sent(&mut s, 0) < 4 * MIB {
            continue;
        }
        let node = secondary_node(&mut s, 0);
        let (h, _) = node.app.joined[0];
        if node
            .endpoint
            .stream(h, stream)
            .is_some_and(|mut st| st.reset(3).is_ok())
        {
            break;
        }
    }
    let gave_back = s.secondary(0).joined[0].1;
    s.sim.run_for(Duration::from_millis(500));
    let settled = secondary_sent(&mut s, 0);
    let primary = s.primary;
    s.sim
        .run_while(Duration::from_secs(30), |sim| {
            sim.node::<KwikNode<kwik_sim::multi::MultiPrimary>>(primary)
                .app
                .complete_at
                .is_none()
        })
        .expect("the transfer completes");
    s.sim.run_for(Duration::from_millis(200));
    assert_intact(&s, size);
    assert_no_path_died(&mut s);
    let lost: Vec<_> = s
        .primary()
        .lost
        .iter()
        .filter(|d| d.path == gave_back)
        .collect();
    assert!(
        !lost.is_empty(),
        "the primary learned what the path gave back"
    );
    assert_eq!(
        secondary_sent(&mut s, 0),
        settled,
        "the stream is not given back to the path that returned it"
    );
}

// ----- hostile secondaries -----

/// A primary (`addr(1)`) and an honest secondary (`addr(2)`) serving
/// `size` bytes, with a [`HostileSecondary`] at `addr(3)` that answers its
/// first delegation with `injection`. Returns the setup, the hostile node
/// and its path, once the transfer started (and `after_start` ran).
fn hostile(
    seed: u64,
    size: u64,
    injection: Injection,
    after_start: impl FnOnce(&mut MultiSetup),
) -> (MultiSetup, kwik_sim::NodeId, PathId) {
    let hostile_addr = addr(kwik_sim::multi::HOSTILE_SECONDARY);
    let opts = MultiOptions::new(seed, vec![ServerLink::new(100, 20); 2], size);
    let (mut s, node) = MultiSetup::with_hostile_secondary(opts, injection);
    let primary = s.primary;
    let added = |sim: &Sim, n: usize| {
        sim.node::<KwikNode<kwik_sim::multi::MultiPrimary>>(primary)
            .app
            .added
            .len()
            >= n
    };
    s.sim
        .run_while(Duration::from_secs(10), |sim| !added(sim, 1))
        .expect("the honest path joins");
    let path = {
        let node = s.primary_node();
        let h = node.app.session.unwrap();
        node.endpoint
            .session(h)
            .unwrap()
            .add_path(hostile_addr, SERVER_NAME)
            .unwrap()
    };
    s.sim
        .run_while(Duration::from_secs(10), |sim| !added(sim, 2))
        .expect("the hostile path joins");
    let KwikNode { endpoint, app, .. } = s.primary_node();
    app.start_transfer(endpoint);
    after_start(&mut s);
    (s, node, path)
}

fn run_to_completion(s: &mut MultiSetup) {
    let primary = s.primary;
    s.sim
        .run_while(Duration::from_secs(30), |sim| {
            sim.node::<KwikNode<kwik_sim::multi::MultiPrimary>>(primary)
                .app
                .complete_at
                .is_none()
        })
        .expect("the transfer completes");
    s.sim.run_for(Duration::from_millis(200));
}

#[test]
fn a_reset_with_a_final_offset_inside_what_was_sent_is_a_give_back() {
    let seed = 65;
    let size = 16 * MIB;
    let source = Arc::new(PayloadResource::new(
        Payload::new(seed),
        first_server_stream(),
        size,
    ));
    // `final_offset` 1 lies inside (or below) whatever it was delegated and
    // wrote: taken as a final size, it would truncate or break the stream.
    let injection = Injection::PartThenReset {
        source,
        len: 16 * 1024,
        final_offset: 1,
    };
    let (mut s, node, path) = hostile(seed, size, injection, |_| {});
    run_to_completion(&mut s);
    let h = s.sim.node::<HostileSecondary>(node);
    assert!(h.injected().is_some(), "the hostile path was delegated");
    assert!(
        h.connection_error().is_none(),
        "its connection stays up: {:?}",
        h.connection_error()
    );
    assert_intact(&s, size);
    assert!(
        s.primary().lost.iter().any(|d| d.path == path),
        "what it owed was re-delegated"
    );
    let resets: Vec<&Event> = s
        .client()
        .path_events
        .iter()
        .filter(|e| matches!(e, Event::StreamReset { .. }))
        .collect();
    assert!(resets.is_empty(), "the stream was not reset: {resets:?}");
    assert_no_path_died(&mut s);
}

#[test]
fn a_reset_of_a_stream_never_delegated_closes_that_path_only() {
    let seed = 66;
    let size = 16 * MIB;
    let payload = Payload::new(seed);
    let other = StreamId::new(kwik_core::Side::Server, Dir::Uni, 1);
    let held = 1000u64;
    let injection = Injection::ResetOther { stream: other };
    let (mut s, node, path) = hostile(seed, size, injection, |s| {
        // A second stream the client reads, delegated to nobody: the
        // primary writes its start and leaves it open.
        let node = s.primary_node();
        let h = node.app.session.unwrap();
        let mut view = node.endpoint.session(h).unwrap();
        let id = view.open(Dir::Uni).unwrap();
        assert_eq!(id, other);
        let data = payload.chunk(other, 0, held as usize);
        assert_eq!(
            view.stream(id).unwrap().write(&data).unwrap(),
            held as usize
        );
    });
    let _ = node;
    run_to_completion(&mut s);
    // The hostile path broke its trust: it is closed, with the code.
    let dead: Vec<_> = s.primary().dead.clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, path);
    assert_eq!(dead[0].1.code, ErrorCode::NotDelegated);
    // Nothing else is: the session, the honest path, both streams.
    let c = s.client();
    assert!(c.closed.is_none(), "{:?}", c.closed);
    assert_eq!(c.corrupt, 0);
    assert_eq!(c.read.get(&other).copied(), Some(held), "{:?}", c.read);
    assert!(
        !c.path_events
            .iter()
            .any(|e| matches!(e, Event::StreamReset { stream, .. } if *stream == other)),
        "the other stream was not reset"
    );
    let honest = s.primary().added.iter().copied().find(|p| *p != path);
    let states = client_path_states(&mut s);
    assert!(
        states
            .iter()
            .any(|(p, st)| Some(*p) == honest && *st == PathState::Active),
        "{states:?}"
    );
}
