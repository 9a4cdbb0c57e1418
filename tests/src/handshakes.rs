//! Nodes and apps that load a kwik server's door: forged client Initials,
//! clients that complete the QUIC handshake and then say nothing, and a
//! genuine kwik client that only connects.
//!
//! * [`InitialFlood`] sends genuine-looking client Initials — real
//!   quinn-proto client Initials offering kwik's ALPN, one per new
//!   connection — each from a distinct forged source address
//!   ([`spoofed_source`]), at a fixed interval, and never answers anything
//!   (the server's replies go to addresses no node owns). This is the
//!   cheapest attack on a server's memory: each accepted Initial costs the
//!   server a connection and a session.
//! * [`MuteClient`] completes the QUIC handshake with kwik's ALPN from a
//!   real address and then sends nothing: no control stream, no `Hello`.
//!   It is what a server's handshake deadline is for. It follows a Retry,
//!   as any QUIC client does.
//! * [`Dialer`] is a kwik client application that opens one session and
//!   records when it was established or why it ended, for latency and
//!   admission checks.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kwik_core::{ALPN, ClientConfig, CloseReason, Event, KwikEndpoint, SessionHandle};
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{ConnectionError, Endpoint, Event as QEvent, TransportConfig};

use crate::certs::DevCert;
use crate::kwik_node::App;
use crate::node::{Node, Transmit};
use crate::quic_driver::QuicDriver;
use crate::seeding::{seeded_client_config, seeded_endpoint_config};
use crate::setup::SERVER_NAME;
use crate::trace::Trace;

/// The `i`-th forged source address: `198.18.0.0/15` (RFC 2544's
/// benchmarking range, never routed), one IP per index for the first
/// 131 070 indices, port 443.
pub fn spoofed_source(i: u64) -> SocketAddr {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 1));
    let offset = u32::try_from(i % 131_070).expect("below 2^17");
    SocketAddr::from((Ipv4Addr::from(base + offset), 443))
}

/// A quinn-proto client configuration offering kwik's ALPN, trusting
/// `cert`, with its random choices drawn from `seed`.
fn kwik_quic_client(cert: &DevCert, seed: u64) -> quinn_proto::ClientConfig {
    let tls = cert.client_config(&[ALPN]);
    let crypto = QuicClientConfig::try_from(tls).expect("ring provider has the QUIC suite");
    seeded_client_config(seed, Arc::new(crypto), Arc::new(TransportConfig::default()))
}

/// Sends `count` client Initials to a server, one every `interval`, each
/// from its own forged source address; never answers. See the
/// [module docs](self).
pub struct InitialFlood {
    server: SocketAddr,
    endpoint: Endpoint,
    config: quinn_proto::ClientConfig,
    count: u64,
    interval: Duration,
    first_source: u64,
    start: Option<Instant>,
    sent: u64,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl std::fmt::Debug for InitialFlood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitialFlood")
            .field("server", &self.server)
            .field("count", &self.count)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl InitialFlood {
    /// `count` Initials to `server` (which presents `cert` for
    /// [`SERVER_NAME`]), the first when the node is added, then one every
    /// `interval`; sources are [`spoofed_source`]`(first_source + k)`.
    pub fn new(
        server: SocketAddr,
        cert: &DevCert,
        seed: u64,
        count: u64,
        interval: Duration,
        first_source: u64,
    ) -> Self {
        Self {
            server,
            endpoint: Endpoint::new(Arc::new(seeded_endpoint_config(seed)), None, true, None),
            config: kwik_quic_client(cert, seed),
            count,
            interval,
            first_source,
            start: None,
            sent: 0,
            queue: VecDeque::new(),
        }
    }

    /// Initials sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn due(&self, k: u64) -> Option<Instant> {
        let start = self.start?;
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        Some(start + self.interval * k)
    }

    /// One fresh client connection's first datagram: its padded Initial.
    fn initial(&mut self, now: Instant) -> Vec<u8> {
        let (_, mut conn) = self
            .endpoint
            .connect(now, self.config.clone(), self.server, SERVER_NAME)
            .expect("a client can always dial");
        let mut buf = Vec::with_capacity(1500);
        let t = conn
            .poll_transmit(now, 1, &mut buf)
            .expect("a new client connection sends its Initial at once");
        buf.truncate(t.size);
        // The connection is dropped: nothing ever answers a forged source.
        buf
    }
}

impl Node for InitialFlood {
    fn receive(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: BytesMut) {}

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, _now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (src, data) = self.queue.pop_front()?;
        buf.extend_from_slice(&data);
        Some(Transmit {
            src,
            dst: self.server,
            segment_size: None,
        })
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        if self.sent < self.count {
            self.due(self.sent)
        } else {
            None
        }
    }

    fn step(&mut self, now: Instant, _trace: &mut Trace) {
        self.start.get_or_insert(now);
        while self.sent < self.count && self.due(self.sent).is_some_and(|t| t <= now) {
            let initial = self.initial(now);
            let src = spoofed_source(self.first_source + self.sent);
            self.queue.push_back((src, initial));
            self.sent += 1;
        }
    }

    fn done(&self) -> bool {
        self.sent == self.count
    }
}

/// Completes the QUIC handshake with kwik's ALPN and then sends nothing.
/// See the [module docs](self).
pub struct MuteClient {
    server: SocketAddr,
    config: Option<quinn_proto::ClientConfig>,
    quic: QuicDriver,
    connected_at: Option<Instant>,
    ended_at: Option<Instant>,
    error: Option<ConnectionError>,
}

impl std::fmt::Debug for MuteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuteClient")
            .field("addr", &self.quic.addr())
            .field("connected_at", &self.connected_at)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl MuteClient {
    /// A client at `addr` dialling the kwik server at `server` (which
    /// presents `cert` for [`SERVER_NAME`]) when the node is added.
    pub fn new(addr: SocketAddr, server: SocketAddr, cert: &DevCert, seed: u64) -> Self {
        let endpoint = Endpoint::new(Arc::new(seeded_endpoint_config(seed)), None, true, None);
        Self {
            server,
            config: Some(kwik_quic_client(cert, seed)),
            quic: QuicDriver::new(addr, endpoint),
            connected_at: None,
            ended_at: None,
            error: None,
        }
    }

    /// When the QUIC handshake completed.
    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// When the connection ended.
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// How the connection ended, if it did.
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    /// The code of the server's application close, if it ended with one.
    pub fn close_code(&self) -> Option<u64> {
        match &self.error {
            Some(ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }

    /// The reason text of the server's close.
    pub fn close_reason(&self) -> Option<String> {
        match &self.error {
            Some(ConnectionError::ApplicationClosed(c)) => {
                Some(String::from_utf8_lossy(&c.reason).into_owned())
            }
            Some(ConnectionError::ConnectionClosed(c)) => {
                Some(String::from_utf8_lossy(&c.reason).into_owned())
            }
            _ => None,
        }
    }
}

impl Node for MuteClient {
    fn receive(&mut self, now: Instant, _: SocketAddr, remote: SocketAddr, data: BytesMut) {
        self.quic.receive(now, remote, data, false);
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
        if let Some(config) = self.config.take() {
            self.quic
                .connect(now, config, self.server, SERVER_NAME)
                .expect("a client can always dial");
        }
        while let Some(ev) = self.quic.connection_mut().and_then(|c| c.poll()) {
            match ev {
                QEvent::Connected => {
                    trace.record(now, "mute: connected, saying nothing");
                    self.connected_at = Some(now);
                }
                QEvent::ConnectionLost { reason } => {
                    trace.record(now, format_args!("mute: connection lost: {reason}"));
                    self.ended_at = Some(now);
                    self.error = Some(reason);
                }
                _ => {}
            }
        }
        self.quic.process_endpoint_events();
    }

    fn done(&self) -> bool {
        self.error.is_some()
    }
}

/// A kwik client application that opens one session when its node is first
/// stepped and records how that went. See the [module docs](self).
pub struct Dialer {
    server: SocketAddr,
    config: ClientConfig,
    /// The session, once started.
    pub session: Option<SessionHandle>,
    /// When the session was started.
    pub started_at: Option<Instant>,
    /// When the kwik handshake completed.
    pub established_at: Option<Instant>,
    /// Why the session ended, if it did.
    pub closed: Option<CloseReason>,
}

impl Dialer {
    /// A client that will connect to `server` (presenting a certificate
    /// for [`SERVER_NAME`]) with `config`.
    pub fn new(server: SocketAddr, config: ClientConfig) -> Self {
        Self {
            server,
            config,
            session: None,
            started_at: None,
            established_at: None,
            closed: None,
        }
    }

    /// Time from starting the session to its establishment.
    pub fn connect_time(&self) -> Option<Duration> {
        Some(self.established_at? - self.started_at?)
    }
}

impl App for Dialer {
    fn on_event(&mut self, _: &mut KwikEndpoint, now: Instant, event: &Event, _: &mut Trace) {
        match event {
            Event::SessionEstablished { .. } => self.established_at = Some(now),
            Event::SessionClosed { reason, .. } => self.closed = Some(reason.clone()),
            _ => {}
        }
    }

    fn poll(&mut self, ep: &mut KwikEndpoint, now: Instant, _: &mut Trace) -> bool {
        if self.session.is_some() {
            return false;
        }
        let handle = ep
            .connect(now, self.server, SERVER_NAME, &self.config)
            .expect("connect");
        self.session = Some(handle);
        self.started_at = Some(now);
        true
    }

    fn done(&self) -> bool {
        self.established_at.is_some() || self.closed.is_some()
    }
}
