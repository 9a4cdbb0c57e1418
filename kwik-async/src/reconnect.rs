//! Client reconnects: when a session ends, decide from *why* it ended
//! whether to dial again, and when.
//!
//! Reconnecting blindly is how a fleet of clients turns one server restart
//! into a thundering herd, and how a buggy client hammers a server that
//! keeps banning it. So the decision is per disconnect reason
//! ([`DisconnectKind`]): silence, resets and refusals are transient and
//! retried with exponential backoff, each delay drawn at random within
//! ±[`ReconnectPolicy::jitter`] so that clients that lost the same server
//! do not come back in step (a session that ends within
//! [`ReconnectPolicy::min_uptime`] of being established counts as a failed
//! attempt, so a server that accepts and drops at once is backed off too);
//! a protocol violation (by either side), a
//! resource-limit close, a ban, a TLS failure or this application's own
//! close are not retried — the next attempt would end the same way, or
//! the server asked not to be bothered. A ban only ever follows a
//! violation, so a client that stops after violations never dials a
//! server that banned it.

use std::future::{Future as _, poll_fn};
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use kwik_core::{ClientConfig, CloseReason, DisconnectKind};

use crate::endpoint::Endpoint;
use crate::error::{ConnectError, ConnectionError};
use crate::runtime::{Adapter, later, sleep};

use crate::session::Session;

/// When a client dials again after its session ended or an attempt failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Delay before the first reconnect.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// Factor by which the delay grows after each failed attempt.
    pub multiplier: f64,
    /// Each delay is drawn uniformly within ± this fraction of itself
    /// (0.0 to 1.0).
    pub jitter: f64,
    /// Attempts in a row that may fail before giving up (0: no limit).
    pub max_attempts: u32,
    /// How long one attempt may take to establish before it counts as
    /// failed (the QUIC idle timeout would otherwise decide).
    pub connect_timeout: Duration,
    /// Reconnect when the server application closed the session (a
    /// graceful restart, say). Off: such a close is final.
    pub after_server_close: bool,
    /// A session that ended sooner than this after it was established
    /// counts as a failed attempt: a server that accepts and closes at once
    /// (shedding load, crash-looping) is backed off like one that refuses,
    /// instead of being redialled at the initial delay forever.
    pub min_uptime: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.25,
            max_attempts: 0,
            connect_timeout: Duration::from_secs(10),
            after_server_close: true,
            min_uptime: Duration::from_secs(5),
        }
    }
}

impl ReconnectPolicy {
    /// Whether a session that ended for `reason` is worth dialling again.
    pub fn retries(&self, reason: &CloseReason) -> bool {
        match reason.kind() {
            DisconnectKind::Timeout | DisconnectKind::Refused => true,
            DisconnectKind::Normal => {
                matches!(reason, CloseReason::ApplicationClosed { .. }) && self.after_server_close
            }
            // Violations (ours or the server's), limits, bans, handshake and
            // certificate failures: the next attempt would end the same way.
            _ => false,
        }
    }

    /// The delay before attempt number `attempt` (1 for the first
    /// reconnect), with `unit` in [0, 1) placing it within the jitter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        // NaN anywhere must neither zero the delay (a busy loop) nor reach
        // `Duration::from_secs_f64` (a panic): NaN multipliers and jitters
        // count as 1 and 0, 0 × ∞ as 0, and the result saturates.
        let multiplier = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let growth = multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        let base = if self.initial.is_zero() {
            0.0
        } else {
            self.initial.as_secs_f64() * growth
        };
        let base = base.min(self.max.as_secs_f64());
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let unit = if unit.is_nan() {
            0.5
        } else {
            unit.clamp(0.0, 1.0)
        };
        let factor = 1.0 - jitter + 2.0 * jitter * unit;
        Duration::try_from_secs_f64((base * factor).max(0.0)).unwrap_or(Duration::MAX)
    }
}

/// Why [`Reconnector`] stopped trying.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectError {
    /// The last session or attempt ended for a reason the policy does not
    /// retry.
    Final(CloseReason),
    /// [`ReconnectPolicy::max_attempts`] attempts in a row failed; the
    /// last one for this reason.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: CloseReason,
    },
    /// The attempt could not be started (closed endpoint, bad name).
    Connect(ConnectError),
}

impl std::fmt::Display for ReconnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReconnectError::Final(reason) => write!(f, "not reconnecting: {reason}"),
            ReconnectError::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} attempts: {last}")
            }
            ReconnectError::Connect(e) => write!(f, "cannot connect: {e:?}"),
        }
    }
}

impl std::error::Error for ReconnectError {}

/// Keeps a client session to one server, dialling again per a
/// [`ReconnectPolicy`] when it ends.
///
/// ```ignore
/// let mut link = Reconnector::new(endpoint, addr, "server.example", config, ReconnectPolicy::default());
/// let mut session = link.connect().await?;
/// loop {
///     let reason = run(&session).await; // until the session ends
///     session = link.reconnect(&reason).await?;
/// }
/// ```
#[derive(Debug)]
pub struct Reconnector<A> {
    endpoint: Endpoint<A>,
    addr: SocketAddr,
    server_name: String,
    config: ClientConfig,
    policy: ReconnectPolicy,
    /// Failed attempts in a row (sessions shorter than
    /// [`ReconnectPolicy::min_uptime`] included).
    failures: u32,
    /// When the latest session was established.
    connected_at: Option<std::time::Instant>,
    /// Sessions established so far.
    sessions: u64,
    rng: u64,
}

impl<A: Adapter> Reconnector<A> {
    /// A reconnector to `addr` (certificate valid for `server_name`).
    pub fn new(
        endpoint: Endpoint<A>,
        addr: SocketAddr,
        server_name: impl Into<String>,
        config: ClientConfig,
        policy: ReconnectPolicy,
    ) -> Self {
        let mut seed = [0u8; 8];
        // Without OS randomness the jitter is still spread by the address.
        if getrandom::fill(&mut seed).is_err() {
            seed = (addr.port() as u64 ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes();
        }
        Self {
            endpoint,
            addr,
            server_name: server_name.into(),
            config,
            policy,
            failures: 0,
            connected_at: None,
            sessions: 0,
            rng: u64::from_le_bytes(seed) | 1,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &ReconnectPolicy {
        &self.policy
    }

    /// Sessions established so far.
    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// Establishes a session, retrying failed attempts per the policy (a
    /// first attempt that fails for a reason the policy does not retry is
    /// final).
    ///
    /// # Errors
    /// [`ReconnectError`] once the policy gives up.
    pub async fn connect(&mut self) -> Result<Session<A>, ReconnectError> {
        loop {
            match self.attempt().await {
                Ok(session) => {
                    // The count of failures is cleared only once this
                    // session has lasted (see `reconnect`).
                    self.connected_at = Some(self.endpoint.runtime().now());
                    self.sessions += 1;
                    return Ok(session);
                }
                Err(ReconnectError::Final(reason)) if self.policy.retries(&reason) => {
                    self.failures += 1;
                    if let Some(gave_up) = self.give_up(&reason) {
                        return Err(gave_up);
                    }
                    tracing::debug!(target: kwik_core::log::DRIVER, remote = %self.addr, %reason, attempt = self.failures, "connection attempt failed; retrying");
                    self.back_off().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a session ended for `reason`: waits the backoff and connects
    /// again, or says why not.
    ///
    /// # Errors
    /// [`ReconnectError::Final`] if the reason is not retried; otherwise as
    /// [`connect`](Self::connect).
    pub async fn reconnect(&mut self, reason: &CloseReason) -> Result<Session<A>, ReconnectError> {
        if !self.policy.retries(reason) {
            tracing::debug!(target: kwik_core::log::DRIVER, remote = %self.addr, %reason, "session ended; not reconnecting");
            return Err(ReconnectError::Final(reason.clone()));
        }
        let now = self.endpoint.runtime().now();
        let lasted = self
            .connected_at
            .take()
            .is_some_and(|t| now.saturating_duration_since(t) >= self.policy.min_uptime);
        if lasted {
            self.failures = 0;
        }
        self.failures += 1;
        if let Some(gave_up) = self.give_up(reason) {
            return Err(gave_up);
        }
        tracing::debug!(target: kwik_core::log::DRIVER, remote = %self.addr, %reason, attempt = self.failures, "session ended; reconnecting");
        self.back_off().await;
        self.connect().await
    }

    /// `GaveUp` once [`ReconnectPolicy::max_attempts`] failures in a row
    /// are reached.
    fn give_up(&self, last: &CloseReason) -> Option<ReconnectError> {
        (self.policy.max_attempts != 0 && self.failures >= self.policy.max_attempts).then(|| {
            ReconnectError::GaveUp {
                attempts: self.failures,
                last: last.clone(),
            }
        })
    }

    /// One attempt, bounded by the connect timeout.
    async fn attempt(&mut self) -> Result<Session<A>, ReconnectError> {
        let mut connecting = self
            .endpoint
            .connect(self.addr, &self.server_name, &self.config)
            .map_err(ReconnectError::Connect)?;
        let runtime = self.endpoint.runtime();
        let mut timer = runtime.new_timer(later(runtime.now(), self.policy.connect_timeout));
        poll_fn(|cx| {
            if let Poll::Ready(result) = std::pin::Pin::new(&mut connecting).poll(cx) {
                return Poll::Ready(result.map_err(|ConnectionError(r)| ReconnectError::Final(r)));
            }
            match timer.poll_elapsed(cx) {
                Poll::Ready(()) => Poll::Ready(Err(ReconnectError::Final(CloseReason::TimedOut))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Sleeps the delay for the current failure count.
    async fn back_off(&mut self) {
        let unit = self.unit();
        let delay = self.policy.delay(self.failures, unit);
        sleep(&self.endpoint.runtime(), delay).await;
    }

    /// A uniform draw in [0, 1) (xorshift64*).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kwik_core::ErrorCode;

    #[test]
    fn backoff_doubles_to_the_cap_within_the_jitter() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.delay(1, 0.5), Duration::from_millis(200));
        assert_eq!(p.delay(2, 0.5), Duration::from_millis(400));
        assert_eq!(p.delay(3, 0.5), Duration::from_millis(800));
        assert_eq!(p.delay(40, 0.5), Duration::from_secs(30));
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(150));
        assert!(p.delay(1, 0.999_999) < Duration::from_millis(250));
        assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_secs(30));
    }

    #[test]
    fn decisions_follow_the_reason() {
        let p = ReconnectPolicy::default();
        let violation = |code, by_peer| CloseReason::Protocol {
            code,
            reason: String::new(),
            by_peer,
        };
        assert!(p.retries(&CloseReason::TimedOut));
        assert!(p.retries(&CloseReason::Reset));
        assert!(p.retries(&CloseReason::PrimaryLost));
        assert!(p.retries(&CloseReason::Refused));
        assert!(p.retries(&CloseReason::ApplicationClosed {
            code: 0,
            reason: Default::default()
        }));
        assert!(!p.retries(&CloseReason::LocallyClosed));
        assert!(!p.retries(&CloseReason::EndpointClosed));
        assert!(!p.retries(&violation(ErrorCode::InvalidFrame, true)));
        assert!(!p.retries(&violation(ErrorCode::InvalidFrame, false)));
        assert!(!p.retries(&violation(ErrorCode::Banned, true)));
        assert!(!p.retries(&violation(ErrorCode::ResourceLimit, true)));
        assert!(!p.retries(&violation(ErrorCode::Refused, true)));
        assert!(!p.retries(&CloseReason::Transport("bad certificate".into())));
        let strict = ReconnectPolicy {
            after_server_close: false,
            ..ReconnectPolicy::default()
        };
        assert!(!strict.retries(&CloseReason::ApplicationClosed {
            code: 0,
            reason: Default::default()
        }));
    }
}
