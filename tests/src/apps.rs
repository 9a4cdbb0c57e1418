//! Reusable applications for scenario tests and benchmarks: a client that
//! uploads planned logical streams and a server that drains and verifies
//! them against a deterministic payload.
//!
//! Payload bytes are a pure function of (stream id, offset), so the receiver
//! verifies every byte without keeping a copy, and the sender writes
//! zero-copy slices of one pre-generated block.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use kwik_core::{
    ClientConfig, CloseReason, Dir, Event, KwikEndpoint, OpenError, ReadError, SessionHandle,
    SessionId, StreamId, WriteError,
};

use crate::kwik_node::App;
use crate::trace::Trace;

const BLOCK: usize = 1 << 20;

/// Deterministic content: the byte at `offset` of stream `stream`.
#[derive(Clone)]
pub struct Payload {
    /// Two copies of one random block, so any window of `BLOCK` bytes is a slice.
    block: Bytes,
}

impl Payload {
    /// Generates the block from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut state = seed | 1;
        let mut block = Vec::with_capacity(2 * BLOCK);
        while block.len() < BLOCK {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            block.extend_from_slice(&state.to_le_bytes());
        }
        block.extend_from_within(..BLOCK);
        Self {
            block: Bytes::from(block),
        }
    }

    fn start(stream: StreamId, offset: u64) -> usize {
        ((offset + stream.0.wrapping_mul(104_729)) % BLOCK as u64) as usize
    }

    /// Up to `max` bytes of `stream` from `offset`, without copying.
    pub fn chunk(&self, stream: StreamId, offset: u64, max: usize) -> Bytes {
        let start = Self::start(stream, offset);
        self.block.slice(start..start + max.min(BLOCK))
    }

    /// True if `data` is what `stream` holds at `offset`.
    pub fn verify(&self, stream: StreamId, offset: u64, mut data: &[u8]) -> bool {
        let mut offset = offset;
        while !data.is_empty() {
            let expected = self.chunk(stream, offset, data.len());
            let n = expected.len();
            if data[..n] != expected[..] {
                return false;
            }
            data = &data[n..];
            offset += n as u64;
        }
        true
    }
}

struct Outgoing {
    id: StreamId,
    len: u64,
    sent: u64,
    finished: bool,
}

/// A client that opens one session to a server and uploads planned logical
/// streams (each of a given length, then FIN).
pub struct BulkClient {
    server: SocketAddr,
    server_name: String,
    config: ClientConfig,
    payload: Payload,
    dir: Dir,
    /// Lengths of the streams still to open.
    to_open: VecDeque<u64>,
    streams: Vec<Outgoing>,
    by_id: BTreeMap<StreamId, usize>,
    writable: VecDeque<usize>,
    /// Write chunk size.
    pub chunk: usize,
    /// The session, once started.
    pub session: Option<SessionHandle>,
    /// Server-assigned id, once established.
    pub session_id: Option<SessionId>,
    /// Streams the peer confirmed complete.
    pub completed: usize,
    /// When the last stream was confirmed.
    pub completed_at: Option<Instant>,
    /// When the session was established.
    pub established_at: Option<Instant>,
    /// Why the session ended, if it did.
    pub closed: Option<CloseReason>,
}

impl BulkClient {
    /// Plans streams of the given lengths in direction `dir`.
    pub fn new(
        server: SocketAddr,
        server_name: &str,
        config: ClientConfig,
        payload: Payload,
        dir: Dir,
        lens: &[u64],
    ) -> Self {
        Self {
            server,
            server_name: server_name.to_string(),
            config,
            payload,
            dir,
            to_open: lens.iter().copied().collect(),
            streams: Vec::new(),
            by_id: BTreeMap::new(),
            writable: VecDeque::new(),
            chunk: 256 << 10,
            session: None,
            session_id: None,
            completed: 0,
            completed_at: None,
            established_at: None,
            closed: None,
        }
    }

    /// Number of streams planned.
    pub fn planned(&self) -> usize {
        self.streams.len() + self.to_open.len()
    }

    fn open_more(&mut self, ep: &mut KwikEndpoint) {
        let Some(h) = self.session else { return };
        let Some(mut session) = ep.session(h) else {
            return;
        };
        while let Some(&len) = self.to_open.front() {
            match session.open(self.dir) {
                Ok(id) => {
                    self.to_open.pop_front();
                    self.by_id.insert(id, self.streams.len());
                    self.writable.push_back(self.streams.len());
                    self.streams.push(Outgoing {
                        id,
                        len,
                        sent: 0,
                        finished: false,
                    });
                }
                Err(OpenError::Blocked) => break,
                Err(e) => panic!("open failed: {e:?}"),
            }
        }
    }

    fn pump(&mut self, ep: &mut KwikEndpoint) -> bool {
        let Some(h) = self.session else { return false };
        let mut acted = false;
        while let Some(i) = self.writable.pop_front() {
            let s = &mut self.streams[i];
            if s.finished {
                continue;
            }
            let Some(mut stream) = ep.stream(h, s.id) else {
                continue;
            };
            acted = true;
            loop {
                if s.sent == s.len {
                    stream.finish().expect("finish");
                    s.finished = true;
                    break;
                }
                let want = (s.len - s.sent).min(self.chunk as u64) as usize;
                let mut chunk = self.payload.chunk(s.id, s.sent, want);
                match stream.write_chunk(&mut chunk) {
                    Ok(n) => s.sent += n as u64,
                    Err(WriteError::Blocked) => break,
                    Err(e) => panic!("write on {} failed: {e:?}", s.id),
                }
            }
        }
        acted
    }

    /// True once every planned stream was confirmed by the peer.
    pub fn all_complete(&self) -> bool {
        self.to_open.is_empty() && self.completed == self.streams.len()
    }
}

impl App for BulkClient {
    fn on_event(&mut self, ep: &mut KwikEndpoint, now: Instant, event: &Event, _trace: &mut Trace) {
        match *event {
            Event::SessionEstablished { id, .. } => {
                self.session_id = Some(id);
                self.established_at = Some(now);
                self.open_more(ep);
            }
            Event::StreamsAvailable { .. } => self.open_more(ep),
            Event::StreamWritable { stream, .. } => {
                if let Some(&i) = self.by_id.get(&stream) {
                    self.writable.push_back(i);
                }
            }
            Event::StreamFinished { .. } => {
                self.completed += 1;
                if self.all_complete() {
                    self.completed_at = Some(now);
                }
            }
            Event::SessionClosed { ref reason, .. } => self.closed = Some(reason.clone()),
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _trace: &mut Trace) -> bool {
        if self.session.is_none() {
            let h = ep
                .connect(now, self.server, &self.server_name, &self.config)
                .expect("connect");
            self.session = Some(h);
            return true;
        }
        self.pump(ep)
    }

    fn done(&self) -> bool {
        self.all_complete() || self.closed.is_some()
    }
}

/// What a [`BulkServer`] saw of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Bytes read, all verified.
    pub bytes: u64,
    /// End of stream reached.
    pub fin: bool,
    /// Reset code, if the peer reset it.
    pub reset: Option<u64>,
}

/// A server that accepts every session and drains every stream, verifying
/// each byte against the payload.
pub struct BulkServer {
    payload: Payload,
    /// Per session, per stream.
    pub received: BTreeMap<SessionHandle, BTreeMap<StreamId, Received>>,
    /// Sessions established, with their ids.
    pub sessions: BTreeMap<SessionHandle, SessionId>,
    /// Sessions that closed, with why.
    pub closed: BTreeMap<SessionHandle, CloseReason>,
    /// Streams not to read for now (slow reader).
    pub paused: BTreeSet<StreamId>,
    /// Streams expected to finish before the server counts as done.
    pub expect_streams: usize,
    /// Time the last expected stream finished.
    pub done_at: Option<Instant>,
    /// Bytes that failed verification (must stay zero).
    pub corrupt: u64,
    /// Largest buffered byte count seen on any paused stream.
    pub max_paused_buffered: u64,
}

impl BulkServer {
    /// A server expecting `expect_streams` finished streams in total.
    pub fn new(payload: Payload, expect_streams: usize) -> Self {
        Self {
            payload,
            received: BTreeMap::new(),
            sessions: BTreeMap::new(),
            closed: BTreeMap::new(),
            paused: BTreeSet::new(),
            expect_streams,
            done_at: None,
            corrupt: 0,
            max_paused_buffered: 0,
        }
    }

    /// Streams that reached their end, over all sessions.
    pub fn finished_streams(&self) -> usize {
        self.received
            .values()
            .flat_map(|m| m.values())
            .filter(|r| r.fin)
            .count()
    }

    /// Total verified bytes.
    pub fn total_bytes(&self) -> u64 {
        self.received
            .values()
            .flat_map(|m| m.values())
            .map(|r| r.bytes)
            .sum()
    }

    /// Reads `stream` until it blocks.
    pub fn drain_stream(
        &mut self,
        ep: &mut KwikEndpoint,
        now: Instant,
        session: SessionHandle,
        id: StreamId,
    ) {
        if self.paused.contains(&id) {
            if let Some(view) = ep.session(session)
                && let Some(b) = view.stream_buffered(id)
            {
                self.max_paused_buffered = self.max_paused_buffered.max(b);
            }
            return;
        }
        let entry = self
            .received
            .entry(session)
            .or_default()
            .entry(id)
            .or_default();
        let Some(mut stream) = ep.stream(session, id) else {
            return;
        };
        loop {
            match stream.read(usize::MAX) {
                Ok(Some(data)) => {
                    if !self.payload.verify(id, entry.bytes, &data) {
                        self.corrupt += data.len() as u64;
                    }
                    entry.bytes += data.len() as u64;
                }
                Ok(None) => {
                    entry.fin = true;
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(ReadError::Reset(code)) => {
                    entry.reset = Some(code);
                    break;
                }
                Err(e) => panic!("read on {id} failed: {e:?}"),
            }
        }
        if self.done_at.is_none()
            && self.expect_streams > 0
            && self.finished_streams() >= self.expect_streams
        {
            self.done_at = Some(now);
        }
    }

    /// Resumes reading a paused stream.
    pub fn resume(
        &mut self,
        ep: &mut KwikEndpoint,
        now: Instant,
        session: SessionHandle,
        id: StreamId,
    ) {
        self.paused.remove(&id);
        self.drain_stream(ep, now, session, id);
    }
}

impl App for BulkServer {
    fn on_event(&mut self, ep: &mut KwikEndpoint, now: Instant, event: &Event, _trace: &mut Trace) {
        match *event {
            Event::Incoming { incoming, .. } => {
                ep.accept(incoming).expect("known incoming");
            }
            Event::SessionEstablished { session, id } => {
                self.sessions.insert(session, id);
            }
            Event::StreamOpened { session, dir } => {
                let Some(mut view) = ep.session(session) else {
                    return;
                };
                let mut opened = Vec::new();
                while let Some(id) = view.accept(dir) {
                    opened.push(id);
                }
                for id in opened {
                    self.received
                        .entry(session)
                        .or_default()
                        .entry(id)
                        .or_default();
                    self.drain_stream(ep, now, session, id);
                }
            }
            Event::StreamReadable { session, stream } => {
                self.drain_stream(ep, now, session, stream)
            }
            Event::StreamReset {
                session, stream, ..
            } => self.drain_stream(ep, now, session, stream),
            Event::SessionClosed {
                session,
                ref reason,
            } => {
                self.closed.insert(session, reason.clone());
            }
            _ => {}
        }
    }

    fn done(&self) -> bool {
        self.done_at.is_some()
    }
}
