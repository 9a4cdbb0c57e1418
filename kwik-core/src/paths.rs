//! Paths of a multi-server session: their identity, observable state and
//! history, the client's policy for accepting them, and their errors.
//!
//! Path 0 is the primary connection. Other paths are secondary connections
//! the client dialled on the primary's request. Both the client and the
//! primary keep a [`PathInfo`] per path (the primary from the client's
//! reports), so either can list active, dead and all paths.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::ErrorCode;
use crate::health::PathHealth;

/// Identity of a path within a session, assigned by the primary (0 is the
/// primary connection itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u64);

impl PathId {
    /// The primary connection.
    pub const PRIMARY: PathId = PathId(0);
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path{}", self.0)
    }
}

/// Where a path stands. Transitions: Connecting → Active ⇄ Degraded →
/// Dead | Closed, or Connecting → Failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathState {
    /// Being dialled and joined.
    Connecting,
    /// Joined and healthy.
    Active,
    /// Joined, but nothing heard for a while (more than a third of the dead
    /// timeout).
    Degraded,
    /// Declared dead (silent for the dead timeout, or its connection failed).
    Dead,
    /// Removed gracefully.
    Closed,
    /// Never became active (refused by policy, token refused, dial failed,
    /// timed out).
    Failed,
}

impl PathState {
    /// True for Active and Degraded.
    pub fn is_live(self) -> bool {
        matches!(self, PathState::Active | PathState::Degraded)
    }

    /// True once the path can never carry data again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PathState::Dead | PathState::Closed | PathState::Failed
        )
    }
}

/// Why a path failed or died: a kwik code and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathFailure {
    /// The kwik code (`KWIK_AUTH_FAILED`, `KWIK_PATH_DEAD`, …).
    pub code: ErrorCode,
    /// Detail.
    pub reason: String,
}

impl fmt::Display for PathFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

/// Most paths that ended (dead, closed, failed) a session keeps listing;
/// older ones are forgotten.
pub const MAX_FINAL_PATHS: usize = 64;

/// Most state transitions a path's history keeps (the first is kept always).
const MAX_HISTORY: usize = 64;

/// Everything known about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// Its id.
    pub id: PathId,
    /// The server's address.
    pub address: SocketAddr,
    /// The name its certificate is validated for.
    pub server_name: String,
    /// True for the primary connection.
    pub primary: bool,
    /// Current state.
    pub state: PathState,
    /// Every state it has been in, with when.
    pub history: Vec<(Instant, PathState)>,
    /// When it was created.
    pub created: Instant,
    /// Last time anything was heard on it.
    pub last_active: Instant,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Bytes sent on it (QUIC payload).
    pub bytes_sent: u64,
    /// Bytes received on it (QUIC payload).
    pub bytes_received: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Congestion window of its connection, in bytes (0 where this side
    /// does not hold the connection: a primary's secondary paths).
    pub cwnd: u64,
    /// Bytes per second it carried lately, both directions (an EWMA over
    /// the intervals that carried data; see [`PathHealth`]). A primary
    /// knows a secondary path's from the client's last report.
    pub throughput: u64,
    /// Its health grade. A primary knows a secondary path's from the
    /// client's reports and gives a [`PathHealth::Critical`] path no new
    /// ranges.
    pub health: PathHealth,
    /// Stream bytes delegated to its server (primary: handed out; client:
    /// forwarded to it), re-delegations and hedged copies included.
    pub delegated_bytes: u64,
    /// Why it failed or died.
    pub failure: Option<PathFailure>,
    /// Primary: the earlier path to the same secondary this one retries
    /// (its history holds the attempts before).
    pub retry_of: Option<PathId>,
    /// Primary: how many retries in a row led to this path (0: the
    /// application's own `add_path`).
    pub attempt: u32,
}

impl PathInfo {
    pub(crate) fn new(id: PathId, address: SocketAddr, server_name: &str, now: Instant) -> Self {
        Self {
            id,
            address,
            server_name: server_name.to_string(),
            primary: id == PathId::PRIMARY,
            state: PathState::Connecting,
            history: vec![(now, PathState::Connecting)],
            created: now,
            last_active: now,
            rtt: Duration::ZERO,
            bytes_sent: 0,
            bytes_received: 0,
            lost_packets: 0,
            cwnd: 0,
            throughput: 0,
            health: PathHealth::default(),
            delegated_bytes: 0,
            failure: None,
            retry_of: None,
            attempt: 0,
        }
    }

    /// A secondary path a primary may give new ranges to: active and not
    /// graded [`PathHealth::Critical`].
    pub(crate) fn takes_new_ranges(&self) -> bool {
        !self.primary && self.state == PathState::Active && self.health != PathHealth::Critical
    }

    /// Moves to `state`, recording the transition; false if already there
    /// or if the path already reached a final state.
    pub(crate) fn set_state(&mut self, state: PathState, now: Instant) -> bool {
        if self.state == state || self.state.is_final() {
            return false;
        }
        self.state = state;
        if self.history.len() >= MAX_HISTORY {
            // Keep the creation; forget the oldest transitions after it.
            self.history.remove(1);
        }
        self.history.push((now, state));
        true
    }
}

/// How a primary re-adds a secondary whose path failed or died: after
/// `initial`, doubling up to `max`, each delay drawn within ±25 % so that
/// the sessions of a primary do not retry in step. A fresh AddPath (new path
/// id, fresh token) each time; the attempts are linked by
/// [`PathInfo::retry_of`]. A path refused on purpose — by the client's
/// policy, a token check, or for misbehaving — is not retried.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathRetry {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between retries.
    pub max: Duration,
    /// Most retries in a row without the path becoming active (0: no limit
    /// while the session lives).
    pub max_attempts: u32,
}

impl Default for PathRetry {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_attempts: 0,
        }
    }
}

impl PathRetry {
    /// The delay before retry number `attempt` (1 for the first), with
    /// `jitter` in [0, 1) spreading it within ±25 %.
    pub(crate) fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        base.mul_f64(0.75 + jitter * 0.5)
    }

    /// True if a path that ended with `code` is worth trying again (it
    /// could not be reached or went silent; not a deliberate refusal).
    pub(crate) fn retries(code: ErrorCode) -> bool {
        code == ErrorCode::PathDead
    }
}

/// Which paths to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathFilter {
    /// Active or degraded.
    Live,
    /// Dead.
    Dead,
    /// Every path ever created, in id order.
    All,
}

/// A target the client's policy allows a path to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathTarget {
    /// Exactly this address.
    Address(SocketAddr),
    /// Any address, if the certificate is validated for this name.
    ServerName(String),
    /// Anything the primary names (use only with a trusted primary).
    Any,
}

/// The client's rules for secondary paths.
///
/// The default allows nothing: a primary can only make the client dial
/// targets the application listed, so a compromised or hostile primary cannot
/// turn clients into a traffic cannon.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PathPolicy {
    /// Allowed targets (empty: every AddPath is refused).
    pub allow: Vec<PathTarget>,
    /// Most secondary paths live at once.
    pub max_paths: usize,
    /// A path silent for this long is dead. `None`: three probe timeouts
    /// derived from the path's RTT without queueing (the smallest smoothed
    /// RTT seen), at least `min_dead_after`.
    pub dead_after: Option<Duration>,
    /// Floor of the derived dead timeout.
    pub min_dead_after: Duration,
    /// Keep-alive interval on secondary connections, so that a silent path
    /// is noticed even when no data is due.
    pub keep_alive: Duration,
    /// A path that has not joined (QUIC handshake, Join, Joined) this long
    /// after its AddPath fails with `KWIK_PATH_DEAD`, well before the
    /// primary's own AddPath timeout, so that it can retry.
    pub join_timeout: Duration,
    /// Probes (sent once a path has been silent for a probe interval, every
    /// interval) that must go unanswered before a path is declared dead,
    /// on top of the dead timeout: random loss does not silence a dozen
    /// probes in a row, a dead server does. Ignored when `dead_after` is set.
    pub dead_probes: u32,
    /// When the client gives up on a silent primary — the session's offset
    /// authority, without which it cannot go on. `None` (the default): the
    /// session survives an outage of its primary for as long as QUIC's idle
    /// timeout, and traffic resumes when it ends. `Some(d)`: once the primary
    /// has been silent for `d` and the evidence that kills a secondary path
    /// is there (probes unanswered over three probe timeouts), the session
    /// ends as [`CloseReason::PrimaryLost`](crate::CloseReason::PrimaryLost)
    /// and the client closes its secondary paths, so their servers free the
    /// session at once. `Some(Duration::ZERO)` detects a dead primary as
    /// fast as a dead secondary (under a second at 50 ms RTT), at the price
    /// of ending the session on any outage that long.
    pub primary_lost_after: Option<Duration>,
    /// AddPaths accepted per second on average; more are refused with
    /// `KWIK_REFUSED` (a primary cannot make the client dial at any rate).
    pub add_path_rate: u32,
    /// AddPaths accepted in a burst before the rate applies.
    pub add_path_burst: u32,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_paths: 8,
            dead_after: None,
            min_dead_after: Duration::from_millis(150),
            keep_alive: Duration::from_millis(50),
            dead_probes: 12,
            primary_lost_after: None,
            join_timeout: Duration::from_secs(5),
            add_path_rate: 8,
            add_path_burst: 16,
        }
    }
}

impl PathPolicy {
    /// A policy that allows exactly these targets.
    pub fn allow(targets: impl IntoIterator<Item = PathTarget>) -> Self {
        Self {
            allow: targets.into_iter().collect(),
            ..Self::default()
        }
    }

    pub(crate) fn permits(&self, address: SocketAddr, server_name: &str) -> bool {
        self.allow.iter().any(|t| match t {
            PathTarget::Address(a) => *a == address,
            PathTarget::ServerName(n) => n == server_name,
            PathTarget::Any => true,
        })
    }

    /// Silence after which a path counts as degraded: half the dead
    /// timeout, but never before two keep-alives (plus an ACK delay) could
    /// have been answered, so that an idle healthy path does not flap.
    pub(crate) fn degraded_after(&self, dead_after: Duration) -> Duration {
        (dead_after / 2)
            .max(self.keep_alive * 2 + Duration::from_millis(25))
            .min(dead_after * 9 / 10)
    }

    /// How often a silent watched path is probed, `sent` probes into its
    /// silence: the keep-alive interval, or half its round trip if that is
    /// longer, while gathering the evidence of death; then once a probe
    /// timeout. Each probe may leave past the congestion window (see
    /// `probe_gate`), so a long outage is not flooded, yet a probe reaches
    /// the peer within a probe timeout of its return.
    pub(crate) fn probe_interval(&self, rtt: Duration, sent: u32) -> Duration {
        let quick = self.keep_alive.max(rtt / 2);
        if sent < self.dead_probes {
            quick
        } else {
            quick.max(probe_timeout(rtt))
        }
    }

    /// The dead timeout for a path with smoothed RTT `rtt`.
    pub(crate) fn dead_after(&self, rtt: Duration) -> Duration {
        self.dead_after
            .unwrap_or_else(|| (probe_timeout(rtt) * 3).max(self.min_dead_after))
    }
}

/// One probe timeout of a path with RTT `rtt`: about 1.5 RTT plus the
/// peer's maximum ACK delay.
fn probe_timeout(rtt: Duration) -> Duration {
    rtt * 3 / 2 + Duration::from_millis(25)
}

/// Error of a path operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// No such path in this session (`KWIK_PATH_NOT_FOUND`).
    NotFound(PathId),
    /// The path is dead, closed or failed (`KWIK_PATH_DEAD`).
    Dead(PathId),
    /// The path has not finished joining yet.
    NotReady(PathId),
    /// This side of the session cannot do that (e.g. `add_path` on a client).
    WrongRole,
    /// The message exceeds the peer's control-message limit
    /// (`KWIK_PACKET_TOO_LARGE`).
    TooLarge {
        /// Its size: the encoded control message that would carry it
        /// (PROTOCOL.md §3.1), or the text's length for a server name.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The primary has no path-token key configured.
    NoTokenKey,
    /// The range is inverted or reaches past 2^62.
    OutOfRange,
    /// A configured limit (such as `TransportConfig::max_delegations`) is
    /// reached; retry once some of what counts against it has settled.
    LimitReached {
        /// The limit.
        limit: usize,
    },
    /// The client stopped reading the stream, with this code: nothing more
    /// of it is written or delegated.
    Stopped(u64),
    /// The session is not established or has ended.
    SessionClosed,
    /// The server cannot be proposed as a path (PROTOCOL.md §13): an
    /// address that cannot be dialled, a bad server name, or one the
    /// client's own [`PathPolicy`] would refuse.
    InvalidCandidate(String),
}

impl PathError {
    /// The kwik code this error corresponds to.
    pub fn code(&self) -> ErrorCode {
        match self {
            PathError::NotFound(_) => ErrorCode::PathNotFound,
            PathError::Dead(_) | PathError::NotReady(_) => ErrorCode::PathDead,
            PathError::TooLarge { .. } => ErrorCode::PacketTooLarge,
            PathError::LimitReached { .. } => ErrorCode::ResourceLimit,
            PathError::InvalidCandidate(_) => ErrorCode::InvalidFrame,
            PathError::WrongRole
            | PathError::Stopped(_)
            | PathError::NoTokenKey
            | PathError::SessionClosed
            | PathError::OutOfRange => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.code(), self)
    }
}

impl std::error::Error for PathError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_denies_by_default_and_allows_listed_targets() {
        let a: SocketAddr = "10.0.0.9:4433".parse().unwrap();
        assert!(!PathPolicy::default().permits(a, "x"));
        let p = PathPolicy::allow([PathTarget::ServerName("cdn".into())]);
        assert!(p.permits(a, "cdn"));
        assert!(!p.permits(a, "other"));
        assert!(PathPolicy::allow([PathTarget::Address(a)]).permits(a, "other"));
    }

    #[test]
    fn final_states_stick() {
        let now = Instant::now();
        let mut info = PathInfo::new(PathId(1), "10.0.0.9:1".parse().unwrap(), "n", now);
        assert!(info.set_state(PathState::Active, now));
        assert!(info.set_state(PathState::Dead, now));
        assert!(!info.set_state(PathState::Active, now));
        assert_eq!(info.history.len(), 3);
    }
}
