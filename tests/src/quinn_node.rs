//! A bare quinn-proto bulk-transfer pair.
//!
//! Two jobs: it validates the simulator against a transport we did not write
//! (if quinn moves data at link rate through the simulator, the link model
//! and the event loop are plausible), and it is the baseline contender in
//! benchmarks — kwik is measured against plain QUIC over the same links.
//!
//! The client opens one unidirectional stream and writes `total_bytes` by
//! handing quinn clones of one pre-made `Bytes` chunk (a reference-count
//! bump, no per-write allocation or copy), then finishes the stream. The
//! server accepts every connection and stream, reads in order chunk by
//! chunk, counts bytes, keeps a [`StreamChecksum`] and records when the FIN
//! arrived.
//!
//! quinn-proto is driven by a [`QuicDriver`] the way its docs require
//! (see [`crate::quic_driver`]): every `Incoming` is accepted (server) or
//! ignored (client), and `poll_transmit` is asked for GSO batches of up to
//! [`MAX_GSO_SEGMENTS`] datagrams. All randomness is seeded (see
//! [`crate::seeding`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, ConnectionStats, Dir, Endpoint, Event, ReadError,
    StreamEvent, StreamId, TransportConfig, VarInt, WriteError,
};

use crate::certs::DevCert;
use crate::node::{Node, Transmit};
use crate::quic_driver::{Incoming, QuicDriver};
use crate::seeding::{seeded_client_config, seeded_endpoint_config, seeded_server_config};
use crate::trace::Trace;

pub use crate::quic_driver::MAX_GSO_SEGMENTS;

/// Server name in the bulk pair's certificate.
pub const SERVER_NAME: &str = "bulk.kwik.test";

/// ALPN protocol of the bulk pair.
pub const ALPN: &[u8] = b"kwik-sim-bulk";

/// Congestion controller choice for [`sim_transport_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// quinn's Cubic (its default; no HyStart).
    Cubic,
    /// quinn's NewReno.
    NewReno,
    /// quinn's BBR (v1-like; holds up under random loss).
    Bbr,
}

/// A transport config for simulated high-BDP paths: windows sized well
/// above 100 Mbit/s × 40 ms (stream receive window 16 MiB, connection
/// receive window 32 MiB, send window 32 MiB) and the given congestion
/// controller. Everything else is quinn's default.
pub fn sim_transport_config(cc: Congestion) -> TransportConfig {
    const MIB: u32 = 1 << 20;
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(16 * MIB))
        .receive_window(VarInt::from_u32(32 * MIB))
        .send_window(32 * u64::from(MIB));
    match cc {
        Congestion::Cubic => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
        Congestion::NewReno => t.congestion_controller_factory(Arc::new(NewRenoConfig::default())),
        Congestion::Bbr => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
    };
    t
}

/// A position-sensitive 64-bit checksum over a byte stream that does not
/// depend on how the stream is cut into chunks. Cheap: one multiply per
/// 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamChecksum {
    hash: u64,
    carry: [u8; 8],
    carry_len: usize,
    len: u64,
}

impl Default for StreamChecksum {
    fn default() -> Self {
        StreamChecksum {
            hash: 0xcbf2_9ce4_8422_2325,
            carry: [0; 8],
            carry_len: 0,
            len: 0,
        }
    }
}

impl StreamChecksum {
    /// A checksum of the empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn mix(&mut self, word: u64) {
        self.hash = (self.hash ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(31);
    }

    /// Appends `data` to the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.carry_len > 0 {
            let n = (8 - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + n].copy_from_slice(&data[..n]);
            self.carry_len += n;
            data = &data[n..];
            if self.carry_len < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.carry));
            self.carry_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if no byte was seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum of the stream so far.
    pub fn value(&self) -> u64 {
        let mut c = *self;
        if c.carry_len > 0 {
            let mut last = [0u8; 8];
            last[..c.carry_len].copy_from_slice(&c.carry[..c.carry_len]);
            c.mix(u64::from_le_bytes(last));
        }
        c.mix(c.len);
        c.hash
    }

    /// Checksum of `total` bytes made of `chunk` repeated (the last copy
    /// truncated) — what a [`QuinnBulkNode`] client sends.
    pub fn of_repeated(chunk: &[u8], total: u64) -> u64 {
        let mut c = StreamChecksum::new();
        let mut left = total;
        while left > 0 {
            let n = (chunk.len() as u64).min(left) as usize;
            c.update(&chunk[..n]);
            left -= n as u64;
        }
        c.value()
    }
}

struct ClientState {
    server: SocketAddr,
    config: Option<ClientConfig>,
    handle: Option<ConnectionHandle>,
    stream: Option<StreamId>,
    total: u64,
    chunk: Bytes,
    /// Bytes handed to quinn so far.
    written: u64,
    /// Bytes sliced off the pattern so far (`written` + pending).
    queued: u64,
    /// A chunk quinn only partly accepted.
    pending: Option<Bytes>,
    finished: bool,
}

enum Role {
    Server,
    Client(Box<ClientState>),
}

/// One side of a bare quinn-proto bulk transfer. See the module docs.
pub struct QuinnBulkNode {
    quic: QuicDriver,
    role: Role,
    connected_at: Option<Instant>,
    error: Option<String>,
    received: u64,
    checksum: StreamChecksum,
    finished_at: Option<Instant>,
}

impl std::fmt::Debug for QuinnBulkNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuinnBulkNode")
            .field("addr", &self.quic.addr())
            .field("server", &matches!(self.role, Role::Server))
            .field("connections", &self.quic.len())
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

fn dev_cert() -> DevCert {
    DevCert::new(&[SERVER_NAME])
}

impl QuinnBulkNode {
    /// A server at `addr` accepting every connection and uni stream.
    pub fn server(addr: SocketAddr, seed: u64, transport: TransportConfig) -> Self {
        let crypto = Arc::new(dev_cert().quic_server_config(&[ALPN]));
        let server_config = seeded_server_config(seed, crypto, Arc::new(transport));
        let endpoint = Endpoint::new(
            Arc::new(seeded_endpoint_config(seed)),
            Some(Arc::new(server_config)),
            true,
            None,
        );
        Self::with_endpoint(addr, endpoint, Role::Server)
    }

    /// A client at `addr` that connects to `server_addr` and sends
    /// `total_bytes` made of `chunk` repeated on one uni stream.
    ///
    /// # Panics
    /// If `chunk` is empty while `total_bytes > 0`.
    pub fn client(
        addr: SocketAddr,
        server_addr: SocketAddr,
        seed: u64,
        transport: TransportConfig,
        total_bytes: u64,
        chunk: Bytes,
    ) -> Self {
        assert!(total_bytes == 0 || !chunk.is_empty(), "empty chunk");
        let crypto = Arc::new(dev_cert().quic_client_config(&[ALPN]));
        let config = seeded_client_config(seed, crypto, Arc::new(transport));
        let endpoint = Endpoint::new(Arc::new(seeded_endpoint_config(seed)), None, true, None);
        Self::with_endpoint(
            addr,
            endpoint,
            Role::Client(Box::new(ClientState {
                server: server_addr,
                config: Some(config),
                handle: None,
                stream: None,
                total: total_bytes,
                chunk,
                written: 0,
                queued: 0,
                pending: None,
                finished: false,
            })),
        )
    }

    fn with_endpoint(addr: SocketAddr, endpoint: Endpoint, role: Role) -> Self {
        QuinnBulkNode {
            quic: QuicDriver::new(addr, endpoint),
            role,
            connected_at: None,
            error: None,
            received: 0,
            checksum: StreamChecksum::new(),
            finished_at: None,
        }
    }

    /// Stream bytes received (server).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// When the stream's FIN was read (server).
    pub fn finished_at(&self) -> Option<Instant> {
        self.finished_at
    }

    /// Checksum of the bytes received so far (server).
    pub fn checksum(&self) -> u64 {
        self.checksum.value()
    }

    /// Checksum of what the client sends in total (client), to compare
    /// with the server's [`checksum`](Self::checksum).
    pub fn expected_checksum(&self) -> Option<u64> {
        match &self.role {
            Role::Client(c) => Some(StreamChecksum::of_repeated(&c.chunk, c.total)),
            Role::Server => None,
        }
    }

    /// Bytes accepted by quinn for sending so far (client).
    pub fn sent(&self) -> u64 {
        match &self.role {
            Role::Client(c) => c.written,
            Role::Server => 0,
        }
    }

    /// When the (first) connection completed its handshake.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// Why the (last) connection was lost, if it was.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Stats of the first live connection, or the last ones captured
    /// before a connection was dropped.
    pub fn connection_stats(&self) -> Option<ConnectionStats> {
        self.quic
            .connections()
            .next()
            .map(|c| c.stats())
            .or(self.quic.last_stats())
    }

    fn connect(&mut self, now: Instant, trace: &mut Trace) {
        let Role::Client(c) = &mut self.role else {
            return;
        };
        let Some(config) = c.config.take() else {
            return;
        };
        match self.quic.connect(now, config, c.server, SERVER_NAME) {
            Ok(ch) => {
                c.handle = Some(ch);
                trace.record(now, "connecting");
            }
            Err(e) => {
                trace.record(now, format_args!("connect failed: {e}"));
                self.error = Some(e.to_string());
            }
        }
    }

    /// Client: hands as much of the pattern to quinn as it takes; finishes
    /// the stream once everything is in.
    fn pump(conn: &mut Connection, c: &mut ClientState, now: Instant, trace: &mut Trace) {
        let Some(id) = c.stream else {
            return;
        };
        if c.finished {
            return;
        }
        loop {
            let chunk = match c.pending.take() {
                Some(p) => p,
                None if c.queued < c.total => {
                    let n = (c.chunk.len() as u64).min(c.total - c.queued) as usize;
                    c.queued += n as u64;
                    if n == c.chunk.len() {
                        c.chunk.clone()
                    } else {
                        c.chunk.slice(..n)
                    }
                }
                None => break,
            };
            let mut one = [chunk];
            match conn.send_stream(id).write_chunks(&mut one) {
                Ok(w) => {
                    c.written += w.bytes as u64;
                    if !one[0].is_empty() {
                        c.pending = Some(std::mem::take(&mut one[0]));
                        break;
                    }
                }
                Err(WriteError::Blocked) => {
                    c.pending = Some(std::mem::take(&mut one[0]));
                    break;
                }
                Err(e) => {
                    trace.record(now, format_args!("write failed: {e}"));
                    c.finished = true;
                    return;
                }
            }
        }
        if c.queued >= c.total && c.pending.is_none() {
            match conn.send_stream(id).finish() {
                Ok(()) => trace.record(now, format_args!("finish sent after {} bytes", c.written)),
                Err(e) => trace.record(now, format_args!("finish failed: {e}")),
            }
            c.finished = true;
        }
    }

    /// Server: reads everything readable on `id`.
    fn read(
        conn: &mut Connection,
        id: StreamId,
        now: Instant,
        trace: &mut Trace,
        received: &mut u64,
        checksum: &mut StreamChecksum,
        finished_at: &mut Option<Instant>,
    ) {
        let mut recv = conn.recv_stream(id);
        let Ok(mut chunks) = recv.read(true) else {
            return;
        };
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    *received += chunk.bytes.len() as u64;
                    checksum.update(&chunk.bytes);
                }
                Ok(None) => {
                    *finished_at = Some(now);
                    trace.record(now, format_args!("fin after {received} bytes"));
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(e) => {
                    trace.record(now, format_args!("read failed: {e}"));
                    break;
                }
            }
        }
        let _ = chunks.finalize();
    }
}

impl Node for QuinnBulkNode {
    fn receive(&mut self, now: Instant, _: SocketAddr, remote: SocketAddr, data: BytesMut) {
        let accept = matches!(self.role, Role::Server);
        if let Incoming::Failed(e) = self.quic.receive(now, remote, data, accept) {
            self.error = Some(e.to_string());
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.quic.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.quic.poll_transmit(now, buf)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.quic.poll_timeout()
    }

    fn step(&mut self, now: Instant, trace: &mut Trace) {
        if matches!(&self.role, Role::Client(c) if c.config.is_some()) {
            self.connect(now, trace);
        }
        let Self {
            quic,
            role,
            connected_at,
            error,
            received,
            checksum,
            finished_at,
            ..
        } = self;
        for conn in quic.connections_mut() {
            while let Some(ev) = conn.poll() {
                match ev {
                    Event::Connected => {
                        trace.record(now, "connected");
                        connected_at.get_or_insert(now);
                        if let Role::Client(c) = role {
                            c.stream = conn.streams().open(Dir::Uni);
                            if c.stream.is_none() {
                                trace.record(now, "no uni stream credit");
                            }
                        }
                    }
                    Event::ConnectionLost { reason } => {
                        trace.record(now, format_args!("connection lost: {reason}"));
                        *error = Some(reason.to_string());
                    }
                    Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                        while let Some(id) = conn.streams().accept(Dir::Uni) {
                            trace.record(now, format_args!("accepted stream {id}"));
                            Self::read(conn, id, now, trace, received, checksum, finished_at);
                        }
                    }
                    Event::Stream(StreamEvent::Readable { id }) => {
                        Self::read(conn, id, now, trace, received, checksum, finished_at);
                    }
                    Event::Stream(StreamEvent::Finished { id }) => {
                        trace.record(now, format_args!("stream {id} acknowledged"));
                    }
                    Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                        if let Role::Client(c) = role
                            && c.stream.is_none()
                        {
                            c.stream = conn.streams().open(Dir::Uni);
                        }
                    }
                    _ => {}
                }
            }
            if let Role::Client(c) = role {
                Self::pump(conn, c, now, trace);
            }
        }
    }

    fn done(&self) -> bool {
        match &self.role {
            Role::Server => self.finished_at.is_some(),
            Role::Client(c) => c.finished || self.error.is_some(),
        }
    }
}
