//! The endpoint's defences against clients it cannot trust: address
//! validation with QUIC Retry, limits on half-open handshakes and sessions,
//! a handshake deadline, an expiring ban list, and the counters that show
//! them at work ([`EndpointStats`]).
//!
//! # Why these exist
//!
//! A QUIC client Initial is about 1.2 KB and its source address can be
//! forged. Accepting one costs a server a connection (TLS state, packet
//! spaces, buffers) plus a kwik session, some 145 KB, held until the
//! handshake fails; without limits, a stream of forged Initials grows the
//! server's heap by that much per datagram. Each defence takes away one
//! lever:
//!
//! * **Retry** ([`RetryPolicy`](crate::RetryPolicy)) answers an Initial with
//!   a token bound to its source address and keeps nothing; only a client
//!   that really receives at that address comes back with it. Forged
//!   sources never do, so past the threshold they cost the server one
//!   stateless reply each. A genuine client pays one round trip.
//! * **Half-open and session limits** cap what validated clients can hold:
//!   beyond them new attempts are refused statelessly (a QUIC
//!   `CONNECTION_REFUSED` close built from the Initial alone).
//! * **The handshake deadline** frees a session whose client completed the
//!   QUIC handshake (or never finished it) but never sent its `Hello` or
//!   `Join`: without it, such a client would hold its memory for the whole
//!   idle timeout, and keep it forever with keep-alives.
//! * **Bans** turn away, for a while, an address whose session this side
//!   closed for breaking the kwik protocol. kwik only detects such faults on
//!   streams, after the QUIC handshake, so the address has answered the
//!   server and cannot be a forged one: a ban cannot be aimed at a third
//!   party. Bans are per IP (a reconnect from another port is the same
//!   peer) and expire, because an IP is often shared (NAT) and reassigned.
//!
//! Everything here is ordered (B-tree maps and sets) and driven by the
//! endpoint's `now`: no clock is read, and the same inputs give the same
//! refusals.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use quinn_proto::TimeSource;

use crate::error::DisconnectKind;
use crate::ids::SessionHandle;

/// Counters of an endpoint's server side, from
/// [`KwikEndpoint::stats`](crate::KwikEndpoint::stats).
///
/// Gauges (`sessions`, `half_open`, `bans_active`) describe the endpoint
/// at the time of its latest input; every other field is a total since the
/// endpoint was created. All but `sessions_closed` concern the server side
/// only; `sessions_closed` counts client sessions too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Server sessions held now: handshaking, established, or closed and
    /// still draining. This is what
    /// [`ServerConfig::max_sessions`](crate::ServerConfig::max_sessions)
    /// bounds.
    pub sessions: u64,
    /// Handshakes under way now: connection attempts waiting for the
    /// application's decision plus accepted server sessions whose kwik
    /// handshake (QUIC handshake, then `Hello` or `Join`) has not completed.
    pub half_open: u64,
    /// Connection attempts (new client Initials) seen.
    pub incoming: u64,
    /// Connection attempts accepted (a session was created for them).
    pub handshakes_accepted: u64,
    /// Retry packets sent (attempts asked to prove their address).
    pub retries_sent: u64,
    /// Attempts refused because their IP was banned.
    pub refused_banned: u64,
    /// Attempts refused because the half-open or session limit was reached.
    pub refused_limit: u64,
    /// Server sessions closed because their kwik handshake did not complete
    /// within [`ServerConfig::handshake_timeout`](crate::ServerConfig::handshake_timeout).
    pub handshakes_timed_out: u64,
    /// IPs banned now.
    pub bans_active: u64,
    /// Bans imposed (a peer banned again while banned counts again).
    pub bans_total: u64,
    /// Sessions of this endpoint (either side) that closed, by the broad
    /// class of their [`CloseReason`](crate::CloseReason).
    pub sessions_closed: SessionsClosed,
}

/// Sessions closed, by [`DisconnectKind`]: part of [`EndpointStats`].
///
/// A session counts once, when the endpoint hands out its
/// [`Event::SessionClosed`](crate::Event::SessionClosed) (every session
/// ends with exactly one), so the counts are those the application was told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionsClosed([u64; DisconnectKind::ALL.len()]);

impl SessionsClosed {
    /// Sessions closed for reasons of this kind.
    pub fn get(&self, kind: DisconnectKind) -> u64 {
        self.0[Self::index(kind)]
    }

    /// Every kind with its count, in [`DisconnectKind::ALL`] order (zeros
    /// included).
    pub fn iter(&self) -> impl Iterator<Item = (DisconnectKind, u64)> + '_ {
        DisconnectKind::ALL.into_iter().zip(self.0)
    }

    /// Sessions closed, whatever the reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn count(&mut self, kind: DisconnectKind) {
        let slot = &mut self.0[Self::index(kind)];
        *slot = slot.saturating_add(1);
    }

    /// The kind's place in [`DisconnectKind::ALL`] (a match, so that a new
    /// kind cannot be left out).
    fn index(kind: DisconnectKind) -> usize {
        match kind {
            DisconnectKind::Normal => 0,
            DisconnectKind::Timeout => 1,
            DisconnectKind::ProtocolViolation => 2,
            DisconnectKind::ResourceLimit => 3,
            DisconnectKind::Banned => 4,
            DisconnectKind::Refused => 5,
            DisconnectKind::Transport => 6,
        }
    }
}

/// IPs banned until an expiry, bounded in number.
#[derive(Debug, Default)]
pub(crate) struct BanList {
    until: BTreeMap<IpAddr, Instant>,
    /// The same entries by expiry, soonest first.
    by_expiry: BTreeSet<(Instant, IpAddr)>,
}

impl BanList {
    /// Bans `ip` until `until`, replacing an earlier expiry; evicts the
    /// entries expiring soonest while more than `max` are held. Does nothing
    /// if `max` is 0.
    pub(crate) fn ban(&mut self, ip: IpAddr, until: Instant, max: usize) {
        if max == 0 {
            return;
        }
        if let Some(old) = self.until.insert(ip, until) {
            self.by_expiry.remove(&(old, ip));
        }
        self.by_expiry.insert((until, ip));
        while self.until.len() > max {
            let Some((_, evicted)) = self.by_expiry.pop_first() else {
                break;
            };
            self.until.remove(&evicted);
        }
    }

    /// Whether `ip` is banned at `now`.
    pub(crate) fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.until.get(&ip).is_some_and(|&until| until > now)
    }

    /// Forgets the bans that expired at or before `now`.
    pub(crate) fn purge(&mut self, now: Instant) {
        while let Some(&(until, ip)) = self.by_expiry.first() {
            if until > now {
                break;
            }
            self.by_expiry.pop_first();
            self.until.remove(&ip);
        }
    }

    /// Bans in force at `now`.
    pub(crate) fn active(&self, now: Instant) -> usize {
        self.by_expiry
            .iter()
            .rev()
            .take_while(|(until, _)| *until > now)
            .count()
    }
}

/// Server sessions whose kwik handshake is under way, with the deadline by
/// which it must complete (`None`: no deadline).
#[derive(Debug, Default)]
pub(crate) struct Handshakes {
    sessions: BTreeMap<SessionHandle, Option<Instant>>,
    /// Deadlines, soonest first.
    deadlines: BTreeSet<(Instant, SessionHandle)>,
}

impl Handshakes {
    pub(crate) fn insert(&mut self, session: SessionHandle, deadline: Option<Instant>) {
        self.sessions.insert(session, deadline);
        if let Some(at) = deadline {
            self.deadlines.insert((at, session));
        }
    }

    /// Forgets `session` (its handshake completed or it ended); true if it
    /// was handshaking.
    pub(crate) fn remove(&mut self, session: SessionHandle) -> bool {
        match self.sessions.remove(&session) {
            Some(deadline) => {
                if let Some(at) = deadline {
                    self.deadlines.remove(&(at, session));
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// The soonest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Takes out a session whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<SessionHandle> {
        let &(at, session) = self.deadlines.first()?;
        if at > now {
            return None;
        }
        self.remove(session);
        Some(session)
    }
}

/// quinn-proto's wall clock, which it reads only to stamp and check the
/// expiry of Retry tokens: the endpoint's own Unix time, set from its `now`
/// at every input, so that tokens expire in virtual time too and no clock
/// is ever read.
#[derive(Debug, Default)]
pub(crate) struct EndpointClock {
    unix_nanos: AtomicU64,
}

impl EndpointClock {
    pub(crate) fn new(unix_now: Duration) -> Arc<Self> {
        let clock = Arc::new(Self::default());
        clock.set(unix_now);
        clock
    }

    pub(crate) fn set(&self, unix_now: Duration) {
        let nanos = u64::try_from(unix_now.as_nanos()).unwrap_or(u64::MAX);
        self.unix_nanos.store(nanos, Ordering::Relaxed);
    }
}

impl TimeSource for EndpointClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.unix_nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn bans_expire_and_evict_the_soonest_expiry_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut bans = BanList::default();
        bans.ban(ip(1), t0 + s(30), 2);
        bans.ban(ip(2), t0 + s(10), 2);
        assert!(bans.is_banned(ip(1), t0) && bans.is_banned(ip(2), t0));
        // A third ban evicts ip(2), which expires soonest.
        bans.ban(ip(3), t0 + s(20), 2);
        assert!(!bans.is_banned(ip(2), t0));
        assert!(bans.is_banned(ip(1), t0) && bans.is_banned(ip(3), t0));
        assert_eq!(bans.active(t0), 2);
        // Re-banning moves the expiry, without a second entry.
        bans.ban(ip(3), t0 + s(40), 2);
        assert_eq!(bans.active(t0 + s(35)), 1);
        assert!(bans.is_banned(ip(3), t0 + s(35)));
        assert!(!bans.is_banned(ip(1), t0 + s(30)), "expiry is exclusive");
        bans.purge(t0 + s(30));
        assert_eq!(bans.until.len(), 1);
        assert_eq!(bans.by_expiry.len(), 1);
        // max 0 disables banning.
        bans.ban(ip(4), t0 + s(50), 0);
        assert!(!bans.is_banned(ip(4), t0));
    }

    #[test]
    fn handshakes_expire_in_deadline_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut hs = Handshakes::default();
        hs.insert(SessionHandle(1), Some(t0 + ms(20)));
        hs.insert(SessionHandle(2), Some(t0 + ms(10)));
        hs.insert(SessionHandle(3), None);
        assert_eq!(hs.len(), 3);
        assert_eq!(hs.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(hs.pop_expired(t0 + ms(5)), None);
        assert_eq!(hs.pop_expired(t0 + ms(25)), Some(SessionHandle(2)));
        assert!(hs.remove(SessionHandle(1)));
        assert!(!hs.remove(SessionHandle(1)));
        assert_eq!(hs.pop_expired(t0 + ms(25)), None);
        assert_eq!(hs.next_deadline(), None);
        assert_eq!(hs.len(), 1);
    }

    #[test]
    fn sessions_closed_counts_each_kind_apart() {
        let mut closed = SessionsClosed::default();
        closed.count(DisconnectKind::Timeout);
        closed.count(DisconnectKind::Timeout);
        closed.count(DisconnectKind::Banned);
        assert_eq!(closed.get(DisconnectKind::Timeout), 2);
        assert_eq!(closed.get(DisconnectKind::Banned), 1);
        assert_eq!(closed.get(DisconnectKind::Normal), 0);
        assert_eq!(closed.total(), 3);
        for (i, kind) in DisconnectKind::ALL.into_iter().enumerate() {
            assert_eq!(SessionsClosed::index(kind), i, "{kind}");
        }
        let listed: Vec<_> = closed.iter().collect();
        assert_eq!(listed.len(), DisconnectKind::ALL.len());
        assert!(listed.contains(&(DisconnectKind::Timeout, 2)));
        let names: Vec<_> = DisconnectKind::ALL.iter().map(|k| k.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "labels are distinct: {names:?}");
    }

    #[test]
    fn the_clock_reports_the_time_it_was_given() {
        let clock = EndpointClock::new(Duration::from_secs(5));
        assert_eq!(clock.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        clock.set(Duration::from_millis(7_500));
        assert_eq!(
            clock.now(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(7_500)
        );
    }
}
