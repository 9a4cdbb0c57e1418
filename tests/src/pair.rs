//! One client and one server over one link, the session established, the
//! test driving the client's logical streams by hand: what the stream-level
//! tests (priorities, lanes) need. The server is a [`BulkServer`] that
//! verifies every byte it reads.

use std::time::{Duration, Instant};

use kwik_core::{
    ClientConfig, Dir, Event, KwikEndpoint, ServerConfig, SessionHandle, StreamId, WriteError,
};

use crate::apps::{BulkServer, Payload};
use crate::kwik_node::{App, KwikNode};
use crate::link::LinkConfig;
use crate::setup::{SERVER_NAME, addr, configs, dev_cert, endpoint};
use crate::sim::{NodeId, Sim};
use crate::trace::Trace;

/// A client application that only connects; the test drives its streams.
pub struct Connector {
    config: ClientConfig,
    /// The session, once dialled.
    pub session: Option<SessionHandle>,
    /// The handshake completed.
    pub established: bool,
}

impl App for Connector {
    fn on_event(&mut self, _ep: &mut KwikEndpoint, _now: Instant, event: &Event, _: &mut Trace) {
        if let Event::SessionEstablished { .. } = event {
            self.established = true;
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _trace: &mut Trace) -> bool {
        if self.session.is_some() {
            return false;
        }
        let h = ep
            .connect(now, addr(1), SERVER_NAME, &self.config)
            .expect("connect");
        self.session = Some(h);
        true
    }
}

/// The client (at `addr(2)`) and the server (at `addr(1)`).
pub struct StreamPair {
    /// The simulation.
    pub sim: Sim,
    /// The server node.
    pub server: NodeId,
    /// The client node.
    pub client: NodeId,
    /// What every stream carries.
    pub payload: Payload,
}

impl StreamPair {
    /// A client and a server on `link`, configured by `tune`, the session
    /// established.
    pub fn new(
        seed: u64,
        link: LinkConfig,
        tune: impl FnOnce(&mut ClientConfig, &mut ServerConfig),
    ) -> Self {
        let mut sim = Sim::new(seed);
        sim.set_path(addr(1), addr(2), link);
        let cert = dev_cert(seed);
        let (mut client_cfg, mut server_cfg) = configs(&cert);
        tune(&mut client_cfg, &mut server_cfg);
        let payload = Payload::new(seed);
        let now = sim.now();
        let server = sim.add_node(
            &[addr(1)],
            Box::new(KwikNode::new(
                addr(1),
                endpoint(seed, Some(server_cfg), now),
                BulkServer::new(payload.clone(), 0),
            )),
        );
        let client = sim.add_node(
            &[addr(2)],
            Box::new(KwikNode::new(
                addr(2),
                endpoint(seed + 1, None, now),
                Connector {
                    config: client_cfg,
                    session: None,
                    established: false,
                },
            )),
        );
        let mut p = StreamPair {
            sim,
            server,
            client,
            payload,
        };
        p.sim
            .run_while(Duration::from_secs(5), |sim| {
                !sim.node::<KwikNode<Connector>>(client).app.established
            })
            .expect("the session is established");
        p
    }

    /// The client's session.
    pub fn session(&self) -> SessionHandle {
        self.sim
            .node::<KwikNode<Connector>>(self.client)
            .app
            .session
            .expect("connected")
    }

    /// The client's endpoint.
    pub fn endpoint(&mut self) -> &mut KwikEndpoint {
        &mut self
            .sim
            .node_mut::<KwikNode<Connector>>(self.client)
            .endpoint
    }

    /// Opens a uni stream at `priority` (left at the default if `None`).
    pub fn open(&mut self, priority: Option<i32>) -> StreamId {
        let h = self.session();
        let mut session = self.endpoint().session(h).expect("live");
        let id = session.open(Dir::Uni).expect("open");
        if let Some(p) = priority {
            session.stream(id).unwrap().set_priority(p).unwrap();
        }
        id
    }

    /// Sets `id`'s priority.
    pub fn set_priority(&mut self, id: StreamId, priority: i32) {
        let h = self.session();
        self.endpoint()
            .stream(h, id)
            .expect("live")
            .set_priority(priority)
            .unwrap();
    }

    /// Writes as much of bytes `[from, to)` of `id`'s payload as is taken
    /// now (stopping at the first refusal after some progress); how many.
    ///
    /// # Errors
    /// The first write's error.
    pub fn try_write(&mut self, id: StreamId, from: u64, to: u64) -> Result<u64, WriteError> {
        let h = self.session();
        let payload = self.payload.clone();
        let mut stream = self.endpoint().stream(h, id).expect("live");
        let mut at = from;
        while at < to {
            let mut chunk = payload.chunk(id, at, (to - at).min(256 << 10) as usize);
            match stream.write_chunk(&mut chunk) {
                Ok(n) => at += n as u64,
                Err(WriteError::Blocked) if at > from => break,
                Err(e) => return Err(e),
            }
        }
        let client = self.client;
        self.sim.touch(client);
        Ok(at - from)
    }

    /// Writes all of bytes `[from, to)` of `id`'s payload (the stream's
    /// credit must cover them); `fin` ends the stream after them.
    pub fn write(&mut self, id: StreamId, from: u64, to: u64, fin: bool) {
        let written = self
            .try_write(id, from, to)
            .unwrap_or_else(|e| panic!("write on {id} at {from}: {e:?}"));
        assert_eq!(written, to - from, "write on {id}: credit ran out");
        if fin {
            let h = self.session();
            self.endpoint()
                .stream(h, id)
                .expect("live")
                .finish()
                .expect("finish");
            let client = self.client;
            self.sim.touch(client);
        }
    }

    /// Lanes the client opened.
    pub fn lanes(&mut self) -> u64 {
        let h = self.session();
        self.endpoint().session(h).unwrap().stats().lanes_opened
    }

    /// The server application.
    pub fn server(&self) -> &BulkServer {
        &self.sim.node::<KwikNode<BulkServer>>(self.server).app
    }

    /// Verified bytes the server read of `id`.
    pub fn read(&self, id: StreamId) -> u64 {
        received(self.server(), id)
    }

    /// Bytes the server read that failed verification.
    pub fn corrupt(&self) -> u64 {
        self.server().corrupt
    }

    /// Runs until the server read `len` bytes of `id`; the time it took.
    pub fn run_until_read(&mut self, id: StreamId, len: u64, limit: Duration) -> Duration {
        let start = self.sim.elapsed();
        let server = self.server;
        self.sim
            .run_while(limit, |sim| {
                received(&sim.node::<KwikNode<BulkServer>>(server).app, id) < len
            })
            .expect("read in time")
            - start
    }
}

fn received(server: &BulkServer, id: StreamId) -> u64 {
    server
        .received
        .values()
        .filter_map(|s| s.get(&id))
        .map(|r| r.bytes)
        .sum()
}
