//! Configuration of endpoints and sessions.
//!
//! Transport knobs live in one [`TransportConfig`] shared by clients and
//! servers; kwik derives quinn-proto's own transport settings from it so the
//! two layers of flow control cannot contradict each other (kwik's per-stream
//! credit is the real limit; QUIC's windows are sized never to block first).

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::congestion::ControllerFactory;
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{IdleTimeout, VarInt};

use crate::ids::Side;
use crate::paths::{PathPolicy, PathRetry};
use crate::probe_gate::{GatedFactory, ProbeGate};
use crate::proposal::{ProposalPolicy, RefuseAll};
use crate::token::TokenKey;
use crate::zero_rtt::{EARLY_LANES, RememberedLimits};

/// ALPN protocol id of kwik version 1.
pub const ALPN: &[u8] = b"kwik/1";

/// The kwik protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Feature bits this implementation supports (none defined yet in version 1).
pub const SUPPORTED_FEATURES: u64 = 0;

/// Congestion controller of a session's QUIC connection.
///
/// Loss-based controllers (Cubic, NewReno) collapse under random loss; BBR
/// holds its rate there. quinn-proto's BBR draws from an unseeded RNG, so
/// runs that must be bit-for-bit reproducible should use Cubic or NewReno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// CUBIC (RFC 9438), quinn's default.
    #[default]
    Cubic,
    /// NewReno (RFC 9002).
    NewReno,
    /// quinn-proto's experimental BBR.
    Bbr,
}

/// When QUIC's loss detection declares a packet lost (RFC 9002 §6.1): once
/// a packet sent after it was acknowledged, and either `packet_threshold`
/// later packets were, or it was sent more than `time_threshold` round
/// trips ago.
///
/// RFC 9002 starts from 3 packets and 9/8 of a round trip, expecting an
/// implementation to adapt when it sees reordering; quinn-proto 0.11 does
/// not adapt, and does not undo a congestion response to a loss that proved
/// spurious. A link that reorders by a few milliseconds (jitter on a fast
/// link reorders dozens of packets) then has its congestion window cut on
/// every reordering, and crawls. kwik's default follows RACK (RFC 8985): no
/// packet threshold, and a reordering window of a quarter round trip. A
/// real loss is declared about a quarter of a round trip later than with
/// the RFC 9002 defaults. In the chaos sweep (jitter up to 20 ms on 10–200
/// Mbit/s links, 0–20 % loss) this doubles the median goodput.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LossDetection {
    /// Later packets acknowledged before a packet is lost (at least 3;
    /// `u32::MAX` turns the packet threshold off).
    pub packet_threshold: u32,
    /// Round trips after which an unacknowledged packet is lost once a later
    /// one was acknowledged (clamped to 1.0 ..= [`MAX_TIME_THRESHOLD`]; a
    /// value that is not finite means 1.25).
    pub time_threshold: f32,
}

impl Default for LossDetection {
    fn default() -> Self {
        Self {
            packet_threshold: u32::MAX,
            time_threshold: 1.25,
        }
    }
}

impl LossDetection {
    /// RFC 9002's recommended values: 3 packets, 9/8 of a round trip.
    pub const RFC9002: Self = Self {
        packet_threshold: 3,
        time_threshold: 9.0 / 8.0,
    };
}

/// Transport knobs of a session, used by both sides.
///
/// # What a peer can make a session hold
///
/// Every bound below is enforced against the peer, never trusted to it:
///
/// * per logical stream, the bytes buffered for the application are at
///   most `stream_window` (its credit), and their memory at most twice
///   that — a peer that fragments a stream past it is closed with
///   `KWIK_RESOURCE_LIMIT`;
/// * per session, therefore, kwik's buffers are at most
///   `(max_bidi_streams + max_uni_streams) × 2 × stream_window` (the stream
///   limits are clamped to 16 384 each); lower the limits or the window to
///   lower it — there is no separate session budget, so a slow reader of one
///   stream never blocks the others;
/// * per connection, QUIC buffers at most `receive_window` (out-of-order
///   data in flight; kwik drains every lane as data arrives), and before a
///   server accepted the peer's Hello or Join, 128 KiB and no lane;
/// * control messages are at most `max_control_message` each, read one at
///   a time; answers a peer leaves unread are bounded (16 of them, at least
///   1 MiB);
/// * delegations outstanding are at most `max_delegations`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Receive window of each logical stream (bytes): the most the peer may
    /// send beyond what the application has read. Bounds memory per stream.
    pub stream_window: u64,
    /// Concurrent bidirectional logical streams the peer may open.
    pub max_bidi_streams: u64,
    /// Concurrent unidirectional logical streams the peer may open.
    pub max_uni_streams: u64,
    /// Logical streams carried by one real QUIC stream ("lane") before a new
    /// lane is opened; 1 gives every logical stream a QUIC stream of its own.
    pub streams_per_lane: usize,
    /// Most lanes (real unidirectional QUIC streams) the peer may open.
    pub max_lanes: u32,
    /// Largest data-frame payload accepted, and the largest sent.
    pub max_frame_payload: u64,
    /// Largest control message accepted.
    pub max_control_message: u64,
    /// Bytes quinn-proto may hold unacknowledged per connection.
    pub send_window: u64,
    /// Interval of keep-alive probes; `None` sends none.
    pub keep_alive_interval: Option<Duration>,
    /// A session with a silent peer ends after this long.
    pub idle_timeout: Duration,
    /// Congestion controller.
    pub congestion: CongestionControl,
    /// When QUIC's loss detection declares a packet lost.
    pub loss_detection: LossDetection,
    /// Feature bits the peer must support (client side), else the session is
    /// refused with `KWIK_FEATURE_MISMATCH`.
    pub required_features: u64,
    /// Most delegated ranges outstanding in a session: on a primary, what
    /// `delegate` may hand out; on a client, what it forwards to its paths;
    /// on a secondary, what it holds to write. A peer that exceeds it is
    /// closed with `KWIK_RESOURCE_LIMIT`.
    pub max_delegations: usize,
    /// QUIC connection-level receive window (bytes) once the kwik handshake
    /// is done. kwik drains every lane as data arrives, so this only has to
    /// cover data in flight; it bounds what QUIC buffers per connection.
    /// Before a server accepted the peer's Hello or Join, the window is
    /// [`PRE_HANDSHAKE_WINDOW`](crate::PRE_HANDSHAKE_WINDOW) and no lane may
    /// be opened.
    pub receive_window: u64,
    /// Where each connection's qlog trace goes (`None`: no traces).
    #[cfg(feature = "qlog")]
    pub qlog: Option<crate::QlogSink>,
}

/// Largest [`LossDetection::time_threshold`] used (larger values are
/// clamped): quinn-proto multiplies round-trip times by it, and past a few
/// round trips a lost packet is merely found late.
pub const MAX_TIME_THRESHOLD: f32 = 16.0;

/// QUIC connection receive window of a server connection before the peer's
/// Hello or Join was accepted: room for the handshake message, nothing more.
pub const PRE_HANDSHAKE_WINDOW: u64 = 128 << 10;

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            stream_window: 2 << 20,
            max_bidi_streams: 256,
            max_uni_streams: 256,
            streams_per_lane: 4,
            max_lanes: 1024,
            max_frame_payload: 1 << 20,
            max_control_message: 64 << 10,
            send_window: 16 << 20,
            keep_alive_interval: Some(Duration::from_secs(5)),
            idle_timeout: Duration::from_secs(30),
            congestion: CongestionControl::Cubic,
            loss_detection: LossDetection::default(),
            required_features: 0,
            max_delegations: 4096,
            receive_window: 32 << 20,
            #[cfg(feature = "qlog")]
            qlog: None,
        }
    }
}

impl TransportConfig {
    /// quinn-proto's settings for a connection carrying this session, on
    /// `side`. A server starts a connection with no lanes allowed and a
    /// small connection window; both are raised once the peer's Hello or
    /// Join is accepted, so nothing is buffered for an unauthenticated peer.
    /// The congestion controller answers to `gate` (see [`crate::probe_gate`]).
    ///
    /// A server that accepts 0-RTT (`early_data`) allows
    /// [`EARLY_LANES`] lanes from the start instead of none: clients
    /// remember these initial transport parameters and send their early
    /// data within them, before any MAX_STREAMS of this server can reach
    /// them. The small window still bounds what they can make it buffer.
    pub(crate) fn quinn(
        &self,
        side: Side,
        gate: &ProbeGate,
        early_data: bool,
    ) -> quinn_proto::TransportConfig {
        let mut t = quinn_proto::TransportConfig::default();
        // Only the control stream is bidirectional.
        t.max_concurrent_bidi_streams(VarInt::from_u32(1));
        let (lanes, window) = match side {
            Side::Client => (
                self.max_lanes.min(crate::conn::INITIAL_LANES),
                self.receive_window,
            ),
            Side::Server if early_data => (EARLY_LANES.min(self.max_lanes), PRE_HANDSHAKE_WINDOW),
            Side::Server => (0, PRE_HANDSHAKE_WINDOW),
        };
        t.max_concurrent_uni_streams(VarInt::from_u32(lanes));
        // kwik credit bounds what a lane carries; QUIC's stream windows must
        // never stop a lane first (that would couple the logical streams on
        // it). The connection window bounds the total.
        let lane_window = self
            .stream_window
            .saturating_mul(self.streams_per_lane.max(1) as u64 * 2)
            .max(self.max_control_message * 4);
        t.stream_receive_window(varint(lane_window));
        t.receive_window(varint(window));
        t.send_window(self.send_window);
        t.packet_threshold(self.loss_detection.packet_threshold.max(3));
        let time = self.loss_detection.time_threshold;
        t.time_threshold(if time.is_finite() {
            time.clamp(1.0, MAX_TIME_THRESHOLD)
        } else {
            1.25
        });
        t.keep_alive_interval(self.keep_alive_interval);
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| IdleTimeout::from(VarInt::from_u32(u32::MAX)));
        t.max_idle_timeout(Some(idle));
        let inner: Arc<dyn ControllerFactory + Send + Sync> = match self.congestion {
            CongestionControl::Cubic => Arc::new(quinn_proto::congestion::CubicConfig::default()),
            CongestionControl::NewReno => {
                Arc::new(quinn_proto::congestion::NewRenoConfig::default())
            }
            CongestionControl::Bbr => Arc::new(quinn_proto::congestion::BbrConfig::default()),
        };
        t.congestion_controller_factory(Arc::new(GatedFactory {
            inner,
            gate: gate.clone(),
        }));
        t
    }
}

fn varint(v: u64) -> VarInt {
    VarInt::from_u64(v.min(VarInt::MAX.into_inner())).expect("clamped")
}

/// The TLS configuration is not usable for QUIC (it must offer TLS 1.3 with
/// an AES-128-GCM-SHA256 suite for the initial packets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unusable TLS configuration: {}", self.0)
    }
}
impl std::error::Error for ConfigError {}

/// Settings of one endpoint (one UDP socket's worth of sessions).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Seed of every random choice the endpoint makes: QUIC's RNG, connection
    /// ids, the stateless-reset key, session ids. Same seed and same inputs
    /// give the same outputs. Production adapters fill it from the OS RNG;
    /// session ids are only as unguessable as this seed is secret.
    pub seed: [u8; 32],
    /// Most datagrams returned in one GSO batch.
    pub max_gso_segments: usize,
    /// Wall-clock time (since the Unix epoch) at the `now` the endpoint is
    /// created with. Path tokens carry expiries in wall-clock time; the core
    /// never reads a clock, so the driver supplies it (adapters read the
    /// system clock once, simulations pick a fixed epoch).
    pub unix_time: Duration,
}

impl EndpointConfig {
    /// A configuration with the given seed and default limits.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            max_gso_segments: 10,
            unix_time: Duration::ZERO,
        }
    }
}

/// How a client dials: TLS plus transport knobs.
///
/// # Resumption and 0-RTT
///
/// A client configuration remembers the servers it talked to: the TLS
/// session tickets (in the rustls configuration's session store — rustls'
/// default keeps eight tickets for each of 32 servers in memory — so
/// resumption is on unless that configuration turned it off) and the limits of each server's last
/// Welcome. Clones share both, so dialling again with a clone of the same
/// configuration resumes. A resumed session may send its Hello, and the
/// streams the application declares idempotent, in 0-RTT when asked per
/// session ([`SessionView::start_0rtt`](crate::SessionView::start_0rtt);
/// PROTOCOL.md §12).
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) crypto: Arc<QuicClientConfig>,
    /// Limits of the servers' last Welcomes, for early data.
    pub(crate) remembered: RememberedLimits,
    /// Transport knobs of sessions started with this configuration.
    pub transport: TransportConfig,
    /// Which secondary paths a primary may make this client join.
    pub path_policy: PathPolicy,
}

impl ClientConfig {
    /// Wraps a rustls client configuration; kwik sets the ALPN itself, and
    /// enables early data (it is only used for sessions that ask for 0-RTT).
    pub fn new(mut tls: rustls::ClientConfig) -> Result<Self, ConfigError> {
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.enable_early_data = true;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| ConfigError(e.to_string()))?;
        Ok(Self {
            crypto: Arc::new(crypto),
            remembered: RememberedLimits::default(),
            transport: TransportConfig::default(),
            path_policy: PathPolicy::default(),
        })
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// When a server asks a connecting client to prove its address with a QUIC
/// Retry before keeping any state for it (RFC 9000 §8.1.2).
///
/// A Retry costs a genuine client one round trip; it costs a forged source
/// address everything, since the token comes back only from a client that
/// receives at that address. See [`ServerConfig::retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Retry every attempt whose address is not validated yet.
    Always,
    /// Never retry (the application may still, with
    /// [`KwikEndpoint::retry`](crate::KwikEndpoint::retry)).
    Never,
    /// Retry unvalidated attempts while at least `above_half_open`
    /// handshakes are half-open (see
    /// [`EndpointStats::half_open`](crate::EndpointStats::half_open)), so
    /// that at most that many handshakes ever run for unproven addresses.
    /// `Auto { above_half_open: 0 }` is `Always`.
    Auto {
        /// Half-open handshakes from which on unvalidated attempts are
        /// retried.
        above_half_open: usize,
    },
}

impl Default for RetryPolicy {
    /// `Auto { above_half_open: 64 }`: see [`ServerConfig::retry`].
    fn default() -> Self {
        RetryPolicy::Auto {
            above_half_open: 64,
        }
    }
}

impl RetryPolicy {
    /// Whether an unvalidated attempt arriving while `half_open` handshakes
    /// are under way should be retried.
    pub(crate) fn wants_retry(self, half_open: usize) -> bool {
        match self {
            RetryPolicy::Always => true,
            RetryPolicy::Never => false,
            RetryPolicy::Auto { above_half_open } => half_open >= above_half_open,
        }
    }
}

/// How a server accepts sessions: TLS plus transport knobs, and the limits
/// that protect it from clients it cannot trust.
///
/// The defaults of the limits are sized for a server that otherwise runs
/// with kwik's default [`TransportConfig`]: one half-open handshake holds
/// about 145 KB (a QUIC connection with its TLS state and buffered flights,
/// plus the session; measured by the `handshake-flood` benchmark), so the
/// defaults cap what unproven addresses can pin at about 9 MB and what
/// half-open handshakes can pin at all at about 37 MB (see PROTOCOL.md §11).
#[derive(Clone)]
pub struct ServerConfig {
    pub(crate) crypto: Arc<QuicServerConfig>,
    /// The same TLS configuration with early data allowed (sharing its
    /// session store), used when [`early_data`](Self::early_data) is on.
    pub(crate) crypto_early: Arc<QuicServerConfig>,
    /// Accept 0-RTT: a resuming client's Hello and idempotent early data
    /// are acted on before the handshake completes, and the answer leaves
    /// in 0.5-RTT, one round trip sooner (PROTOCOL.md §12).
    ///
    /// Default **off**: with it, a session is established — and its
    /// application may read client streams and answer — before the client
    /// has proven it is live; that early data can be a replay of an earlier
    /// client's first flight. kwik limits what a replay can do (only the
    /// Hello and streams the client declared idempotent ride in 0-RTT;
    /// tickets are single-use within this server's session store; no path
    /// is added and nobody banned before the handshake completes), but
    /// whether repeating a client's idempotent requests is harmless is the
    /// application's to judge, so the application opts in. A session that
    /// began in 0-RTT reports [`ZeroRtt::Pending`](crate::ZeroRtt::Pending)
    /// until its handshake completes.
    pub early_data: bool,
    /// Transport knobs of accepted sessions.
    pub transport: TransportConfig,
    /// Accept every incoming connection without asking the application
    /// (otherwise each one surfaces as [`Event::Incoming`](crate::Event::Incoming)).
    pub auto_accept: bool,
    /// Feature bits this server offers (a subset of [`SUPPORTED_FEATURES`]).
    pub features: u64,
    /// Primary: the key path tokens are minted with (`None`: this server
    /// cannot add paths).
    pub token_key: Option<TokenKey>,
    /// Secondary: keys of the primaries whose path tokens this server
    /// accepts (empty: it accepts no paths).
    pub trusted_keys: Vec<TokenKey>,
    /// Lifetime of minted path tokens.
    pub token_lifetime: Duration,
    /// Primary: how long to wait for the client's answer to AddPath.
    pub add_path_timeout: Duration,
    /// Primary: when a path ends, re-delegate its unacknowledged ranges to
    /// the live secondary paths in turn (ranges of transfers started with
    /// `serve` are always re-assigned by their scheduler). Off: the
    /// application handles [`Event::RangesLost`](crate::Event::RangesLost).
    pub auto_reassign: bool,
    /// Secondary: the addresses primaries name this server by in their
    /// AddPaths. A path token names its secondary, so a Join whose token was
    /// minted for an address not listed here is refused even when the MAC
    /// verifies (another secondary sharing the key). An entry with an
    /// unspecified IP (`0.0.0.0:port`, `[::]:port`) matches any IP on that
    /// port. Empty: the address is not checked — only the MAC, expiry and
    /// replay are (the sans-IO core cannot know where it is reachable; the
    /// async adapters fill in the bound socket address when this is empty).
    pub path_addresses: Vec<std::net::SocketAddr>,
    /// Secondary: the certificate name primaries name this server by; a
    /// Join whose token names another is refused. `None`: not checked.
    pub path_server_name: Option<String>,
    /// When to ask clients to prove their address with a QUIC Retry.
    ///
    /// Default `Auto { above_half_open: 64 }`: a handshake lasts a couple of
    /// round trips, so 64 concurrent ones is several hundred new sessions a
    /// second before any genuine client pays the extra round trip, while
    /// forged source addresses can pin at most 64 handshakes (about 9 MB)
    /// however fast they arrive.
    pub retry: RetryPolicy,
    /// Most half-open handshakes (attempts awaiting the application's
    /// decision plus accepted sessions whose kwik handshake has not
    /// completed); attempts beyond it are refused statelessly.
    ///
    /// Default 256 (about 37 MB of handshake state): four times the Retry
    /// threshold, so validated clients still get in while unvalidated ones
    /// are being retried, and a burst of validated attempts stays bounded.
    pub max_half_open: usize,
    /// Most server sessions this endpoint holds (handshaking, established
    /// or draining); attempts beyond it are refused statelessly.
    ///
    /// Default 10 000: with the default configuration an idle session holds
    /// about 140 KB, so the cap is around 1.4 GB before any stream data;
    /// set it from the memory the server may spend and what its sessions
    /// carry (each logical stream may buffer up to its window).
    pub max_sessions: usize,
    /// A server session whose kwik handshake (the QUIC handshake, then the
    /// client's `Hello` or `Join`) has not completed this long after it was
    /// accepted is closed (locally [`CloseReason::TimedOut`](crate::CloseReason::TimedOut),
    /// on the wire `KWIK_RESOURCE_LIMIT` "handshake timeout") and its memory
    /// freed. Zero disables the deadline.
    ///
    /// Default 10 s: a genuine handshake takes two or three round trips
    /// (one more after a Retry), and 10 s leaves room for several of
    /// QUIC's initial 1 s probe timeouts on a lossy path, while freeing a
    /// stalled handshake three times sooner than the 30 s idle timeout would.
    pub handshake_timeout: Duration,
    /// How long the IP of a peer is banned after this server closed its
    /// session for a protocol violation that is the peer's fault (see
    /// [`ErrorCode::is_peer_fault`](crate::ErrorCode::is_peer_fault)).
    /// Attempts from a banned IP are refused statelessly. Zero disables
    /// banning.
    ///
    /// Default 60 s: long enough that a client looping on a broken
    /// implementation costs one session a minute, short enough that the
    /// other users behind a shared (NAT) address are not locked out for
    /// long.
    pub ban_duration: Duration,
    /// Most IPs banned at once; a new ban beyond it evicts the ban that
    /// expires soonest. Zero disables banning.
    ///
    /// Default 4096 (some 400 KB of ban list).
    pub max_bans: usize,
    /// Also ban loopback addresses. Off by default: every local client
    /// shares one, so a single broken one would lock out the others.
    pub ban_loopback: bool,
    /// Primary: re-add a secondary whose path failed to join or died, with
    /// backoff, while the session lives (`None`: never; the application
    /// may call `add_path` itself).
    pub path_retry: Option<PathRetry>,
    /// Primary: add paths from the endpoint's candidates
    /// ([`KwikEndpoint::set_candidates`](crate::KwikEndpoint::set_candidates))
    /// to sessions whose demand the live paths do not meet, and remove them
    /// once idle (see [`crate::scaling`]). `None` (the default): off.
    pub autoscale: Option<crate::scaling::AutoscaleConfig>,
    /// Primary: which servers a client may propose as paths of its session
    /// (PROTOCOL.md §13). Default [`RefuseAll`]: a client must not be able
    /// to make this primary mint path tokens for, and hand work to,
    /// machines of its choosing. [`ApproveListed`](crate::ApproveListed)
    /// approves the servers it lists. Approved proposals need a
    /// [`token_key`](Self::token_key) like any `add_path`.
    pub proposal_policy: Arc<dyn ProposalPolicy>,
}

impl ServerConfig {
    /// Wraps a rustls server configuration; kwik sets the ALPN itself, and
    /// the early-data size (0, or unlimited when
    /// [`early_data`](Self::early_data) is on: QUIC requires one of the two
    /// and bounds 0-RTT data by its own flow control).
    ///
    /// rustls accepts early data only with stateful resumption (tickets in
    /// its session store, taken out on first use: RFC 8446 §8.1), which is
    /// its default; a configuration with a stateless ticketer never
    /// accepts 0-RTT.
    pub fn new(mut tls: rustls::ServerConfig) -> Result<Self, ConfigError> {
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut early = tls.clone();
        tls.max_early_data_size = 0;
        early.max_early_data_size = u32::MAX;
        let quic = |tls: rustls::ServerConfig| {
            QuicServerConfig::try_from(tls).map_err(|e| ConfigError(e.to_string()))
        };
        let crypto = quic(tls)?;
        let crypto_early = quic(early)?;
        Ok(Self {
            crypto: Arc::new(crypto),
            crypto_early: Arc::new(crypto_early),
            early_data: false,
            transport: TransportConfig::default(),
            auto_accept: false,
            features: SUPPORTED_FEATURES,
            token_key: None,
            trusted_keys: Vec::new(),
            token_lifetime: Duration::from_secs(60),
            add_path_timeout: Duration::from_secs(10),
            auto_reassign: false,
            path_addresses: Vec::new(),
            path_server_name: None,
            retry: RetryPolicy::default(),
            max_half_open: 256,
            max_sessions: 10_000,
            handshake_timeout: Duration::from_secs(10),
            ban_duration: Duration::from_secs(60),
            max_bans: 4096,
            ban_loopback: false,
            path_retry: Some(PathRetry::default()),
            autoscale: None,
            proposal_policy: Arc::new(RefuseAll),
        })
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("transport", &self.transport)
            .field("auto_accept", &self.auto_accept)
            .field("early_data", &self.early_data)
            .field("retry", &self.retry)
            .field("max_half_open", &self.max_half_open)
            .field("max_sessions", &self.max_sessions)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("ban_duration", &self.ban_duration)
            .field("max_bans", &self.max_bans)
            .finish_non_exhaustive()
    }
}
