//! Paths of a multi-server session: their identity, observable state and
//! history, the client's policy for accepting them, and their errors.
//!
//! Path 0 is the primary connection. Other paths are secondary connections
//! the client dialled on the primary's request. Both the client and the
//! primary keep a [`PathInfo`] per path (the primary from the client's
//! reports), so either can list active, dead and all paths.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::ErrorCode;
use crate::event::Event;
use crate::health::PathHealth;
use crate::ids::SessionHandle;
use crate::state::Machine;

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

/// Where a path stands. Transitions (PROTOCOL.md §15.2): Initializing →
/// Handshaking → Active ⇄ Degraded → Closing → Closed, with Failed for a
/// path that never joined, Dead for one that died, and Closed for every
/// path of a session that ends. Dead, Closed and Failed are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathState {
    /// Created, not dialled yet: the client checking an AddPath against its
    /// policy; the primary holding an AddPath until the handshake of a
    /// session that began in 0-RTT completes.
    Initializing,
    /// Being dialled and joined (QUIC handshake, Join, Joined); the
    /// primary connection during the session's handshake.
    Handshaking,
    /// Joined and healthy.
    Active,
    /// Joined, but nothing heard for a while (past the degraded threshold,
    /// half the dead timeout).
    Degraded,
    /// Being removed gracefully: it takes no new work, what it was given
    /// drains, then it closes.
    Closing,
    /// Declared dead (silent for the dead timeout, or its connection failed).
    Dead,
    /// Removed gracefully, or closed with its session.
    Closed,
    /// Never became active (refused by policy, token refused, dial failed,
    /// timed out).
    Failed,
}

impl PathState {
    /// Every state, in order.
    pub const ALL: [PathState; 8] = [
        PathState::Initializing,
        PathState::Handshaking,
        PathState::Active,
        PathState::Degraded,
        PathState::Closing,
        PathState::Dead,
        PathState::Closed,
        PathState::Failed,
    ];

    /// True for Active and Degraded: joined and taking work. A Closing
    /// path still delivers what it holds but is not live.
    pub fn is_live(self) -> bool {
        matches!(self, PathState::Active | PathState::Degraded)
    }

    /// True once the path can never carry data again (Dead, Closed,
    /// Failed). A Closing path is not final.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PathState::Dead | PathState::Closed | PathState::Failed
        )
    }

    /// True if the table of PROTOCOL.md §15.2 allows moving from `self` to
    /// `next` (never to the same state, never out of a final one).
    pub fn may_become(self, next: PathState) -> bool {
        use PathState::*;
        matches!(
            (self, next),
            (Initializing, Handshaking | Failed | Closed)
                | (Handshaking, Active | Closing | Failed | Closed)
                | (Active, Degraded | Closing | Dead | Closed)
                | (Degraded, Active | Closing | Dead | Closed)
                | (Closing, Closed | Dead | Failed)
        )
    }

    /// The shortest chain of legal transitions from `self` to `target`
    /// (ending with `target`; empty if already there), or `None` if the
    /// table does not lead there.
    pub fn route_to(self, target: PathState) -> Option<Vec<PathState>> {
        crate::state::route(&PathState::ALL, PathState::may_become, self, target)
    }

    /// Its name, as PROTOCOL.md writes it.
    pub fn name(self) -> &'static str {
        match self {
            PathState::Initializing => "Initializing",
            PathState::Handshaking => "Handshaking",
            PathState::Active => "Active",
            PathState::Degraded => "Degraded",
            PathState::Closing => "Closing",
            PathState::Dead => "Dead",
            PathState::Closed => "Closed",
            PathState::Failed => "Failed",
        }
    }
}

impl fmt::Display for PathState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
    /// Current state (changed only through the one checked transition,
    /// PROTOCOL.md §15).
    pub state: PathState,
    /// Every state it has been in, with when (at most
    /// [`MAX_HISTORY`](crate::MAX_HISTORY) entries: the first, then the
    /// newest).
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
            state: PathState::Initializing,
            history: vec![(now, PathState::Initializing)],
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

    /// Moves to `next` — the one place a path's state changes: checks the
    /// transition against [`PathState::may_become`] (a debug build panics
    /// on an illegal one), records it in the history and emits
    /// [`Event::PathState`]. False if it did not move: already there, or
    /// already final (both routine: a session's end closes every path that
    /// is left).
    pub(crate) fn set_state(
        &mut self,
        session: SessionHandle,
        next: PathState,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) -> bool {
        if self.state == next || self.state.is_final() {
            return false;
        }
        let mut machine = Machine {
            state: self.state,
            history: std::mem::take(&mut self.history),
        };
        let (id, current) = (self.id, self.state);
        // Described only if the move is illegal: no formatting per transition.
        let what = format_args!("{session} {id}: {current} -> {next}");
        let moved = machine.step(next, now, PathState::may_become, &what);
        self.state = machine.state;
        self.history = machine.history;
        let Some(from) = moved else {
            return false;
        };
        events.push_back(Event::PathState {
            session,
            path: self.id,
            from,
            to: next,
        });
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
        let mut ev = VecDeque::new();
        let h = SessionHandle(1);
        let mut info = PathInfo::new(PathId(1), "10.0.0.9:1".parse().unwrap(), "n", now);
        assert!(info.set_state(h, PathState::Handshaking, now, &mut ev));
        assert!(info.set_state(h, PathState::Active, now, &mut ev));
        assert!(info.set_state(h, PathState::Dead, now, &mut ev));
        assert!(!info.set_state(h, PathState::Active, now, &mut ev));
        assert!(!info.set_state(h, PathState::Closed, now, &mut ev));
        assert_eq!(info.history.len(), 4);
        assert_eq!(ev.len(), 3);
        assert_eq!(
            ev[2],
            Event::PathState {
                session: h,
                path: PathId(1),
                from: PathState::Active,
                to: PathState::Dead
            }
        );
    }

    #[test]
    fn the_path_table() {
        use PathState::*;
        for s in PathState::ALL {
            assert!(!s.may_become(s), "{s} to itself");
            assert!(!s.may_become(Initializing), "{s} back to the start");
            if s.is_final() {
                for t in PathState::ALL {
                    assert!(!s.may_become(t), "{s} is final");
                }
            } else {
                // Whatever the state, the session's end closes the path.
                assert!(s.may_become(Closed), "{s}");
            }
        }
        // Only a joined path can die; one that never joined fails.
        for s in [Initializing, Handshaking] {
            assert!(!s.may_become(Dead), "{s}");
            assert!(s.may_become(Failed), "{s}");
        }
        for s in [Active, Degraded] {
            assert!(!s.may_become(Failed), "{s}");
            assert!(s.may_become(Dead) && s.may_become(Closing), "{s}");
        }
        // Closing never goes back to work.
        for t in [Handshaking, Active, Degraded] {
            assert!(!Closing.may_become(t), "{t}");
        }
        assert!(
            !Initializing.may_become(Active),
            "joins through Handshaking"
        );
        assert!(!Handshaking.may_become(Degraded), "degrades once Active");
    }

    #[test]
    fn reports_that_skip_states_are_routed_through_legal_steps() {
        use PathState::*;
        assert_eq!(Handshaking.route_to(Active), Some(vec![Active]));
        assert_eq!(
            Initializing.route_to(Degraded),
            Some(vec![Handshaking, Active, Degraded])
        );
        assert_eq!(Handshaking.route_to(Dead), Some(vec![Active, Dead]));
        assert_eq!(Active.route_to(Closed), Some(vec![Closed]));
        assert_eq!(Closed.route_to(Active), None);
        assert_eq!(Active.route_to(Handshaking), None);
        assert_eq!(Closing.route_to(Degraded), None);
        assert_eq!(Active.route_to(Active), Some(vec![]));
        for from in PathState::ALL {
            for to in PathState::ALL {
                if let Some(chain) = from.route_to(to) {
                    let mut at = from;
                    for s in chain {
                        assert!(at.may_become(s), "{from} -> {to}: {at} -> {s}");
                        at = s;
                    }
                    assert_eq!(at, to);
                }
            }
        }
    }
}
