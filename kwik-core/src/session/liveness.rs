//! Liveness: kwik's own probes, and the evidence that declares a connection
//! dead.
//!
//! QUIC notices a silent peer only at its idle timeout (30 s by default);
//! kwik must know much sooner which servers still deliver. It watches the
//! connections whose peer it expects to hear from — a client's secondary
//! paths, its primary while data has been flowing, a secondary's client —
//! and, once one has been silent for a probe interval, pings it at that
//! interval. Death needs evidence, not just silence: at least
//! [`PathPolicy::dead_probes`] probes sent and unanswered, over at least
//! three probe timeouts of the path's unqueued round trip. With 20 % random
//! loss in each direction a probe goes unanswered with probability 0.36, a
//! dozen in a row about once in 200 000 episodes: random loss does not kill
//! a path, a dead server does within a second. Fast failover does not come
//! from here but from hedging the overdue frontier
//! ([`crate::transfer`]).
//!
//! The primary is different: it cannot be replaced, and a dead primary and
//! an outage look the same from the client. By default the session rides
//! out its primary's silence until QUIC's idle timeout (and resumes when it
//! ends); [`PathPolicy::primary_lost_after`] trades that for a fast
//! `PrimaryLost` verdict.
//!
//! Only authenticated packets count as an answer (see
//! [`Conn::note_received`]), so replayed or forged datagrams keep nothing
//! alive. A connection heard from again after a silence is pinged at once
//! ([`Conn::note_received`]): the peer's acknowledgement resets QUIC's
//! probe backoff on this side, so traffic resumes within a round trip after
//! an outage instead of after a backed-off probe timeout.

use super::*;

/// How long after its last stream data the client keeps probing its
/// primary: a transfer that stops mid-way is a primary to watch; a session
/// idle for longer is left to QUIC's keep-alives and idle timeout.
const PRIMARY_WATCH: Duration = Duration::from_secs(2);

/// What the evidence says about one watched connection.
enum Verdict {
    Alive,
    Degraded,
    Dead(Duration),
}

impl Session {
    /// The connections whose silence this side must notice.
    fn watched(&self, now: Instant) -> Vec<PathId> {
        if self.phase != Phase::Active {
            return Vec::new();
        }
        match self.role {
            Role::Client => self
                .conns
                .iter()
                .filter(|(path, conn)| {
                    conn.joined
                        && !conn.closed
                        && if **path == PathId::PRIMARY {
                            // Watched while data flows, and once probing
                            // started, until the primary answers: the probes
                            // are what revives it after an outage.
                            now.saturating_duration_since(conn.last_data) < PRIMARY_WATCH
                                || conn.probes > 0
                        } else {
                            self.client_paths.contains_key(path)
                        }
                })
                .map(|(path, _)| *path)
                .collect(),
            // The client keeps its paths alive: silence means it is gone.
            Role::Secondary => vec![PathId::PRIMARY],
            Role::Primary | Role::Undecided => Vec::new(),
        }
    }

    /// Sends the probes that are due and acts on the verdicts.
    pub(super) fn check_liveness(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let watched = self.watched(now);
        if self.state() == SessionState::Degraded
            && !watched.contains(&PathId::PRIMARY)
            && self
                .conns
                .get(&PathId::PRIMARY)
                .is_some_and(|c| c.probes == 0)
        {
            // No longer watched because it answered the probes: heard again.
            self.revive(PathId::PRIMARY, ctx);
        }
        for path in watched {
            let policy = &self.policy;
            let Some(conn) = self.conns.get_mut(&path) else {
                continue;
            };
            let base = conn.base_rtt();
            let interval = policy.probe_interval(base, conn.probes);
            let silent = now.saturating_duration_since(conn.last_rx);
            if silent >= interval && conn.next_probe.is_none_or(|t| t <= now) {
                conn.probe();
                conn.probes += 1;
                conn.next_probe = Some(now + interval);
            }
            let dead_after = policy.dead_after(base);
            // The primary: by default outages are survived and QUIC's idle
            // timeout decides; otherwise not before the configured grace.
            let lost_after = match (self.role, path) {
                (Role::Client, PathId::PRIMARY) => {
                    policy.primary_lost_after.map(|grace| dead_after.max(grace))
                }
                _ => Some(dead_after),
            };
            let evidence = policy.dead_after.is_some() || conn.probes >= policy.dead_probes;
            let verdict = if lost_after.is_some_and(|t| silent >= t) && evidence {
                Verdict::Dead(silent)
            } else if silent >= policy.degraded_after(dead_after) {
                Verdict::Degraded
            } else {
                Verdict::Alive
            };
            self.on_verdict(path, verdict, ctx);
            if self.phase == Phase::Closed {
                return;
            }
        }
    }

    fn on_verdict(&mut self, path: PathId, verdict: Verdict, ctx: &mut Ctx<'_>) {
        let silence = |silent: Duration| format!("nothing heard for {} ms", silent.as_millis());
        match (self.role, path, verdict) {
            (Role::Client, PathId::PRIMARY, Verdict::Dead(silent)) => {
                // The primary is the offset authority: without it the
                // session cannot go on (PROTOCOL.md §10.11).
                self.end_session(CloseReason::PrimaryLost, &silence(silent), ctx);
            }
            (Role::Secondary, _, Verdict::Dead(silent)) => {
                self.end_session(CloseReason::TimedOut, &silence(silent), ctx);
            }
            (Role::Client, _, Verdict::Dead(silent)) => {
                let failure = PathFailure {
                    code: ErrorCode::PathDead,
                    reason: silence(silent),
                };
                self.set_path_state(path, PathState::Dead, Some(failure), ctx);
            }
            (Role::Client | Role::Secondary, path, Verdict::Degraded)
                if self
                    .paths
                    .get(&path)
                    .is_some_and(|p| p.state == PathState::Active) =>
            {
                self.set_path_state(path, PathState::Degraded, None, ctx);
                if path == PathId::PRIMARY {
                    // The connection this session cannot do without.
                    self.set_state(SessionState::Degraded, ctx.now, ctx.events);
                }
            }
            (Role::Client | Role::Secondary, path, Verdict::Alive) => self.revive(path, ctx),
            _ => {}
        }
    }

    /// A degraded path was heard again: Active, and so is the session if
    /// it was its primary connection.
    fn revive(&mut self, path: PathId, ctx: &mut Ctx<'_>) {
        if self
            .paths
            .get(&path)
            .is_some_and(|p| p.state == PathState::Degraded)
        {
            self.set_path_state(path, PathState::Active, None, ctx);
        }
        if path == PathId::PRIMARY && self.state() == SessionState::Degraded {
            self.set_state(SessionState::Active, ctx.now, ctx.events);
        }
    }

    /// Ends the session because its peer went silent: `reason` locally, and
    /// every connection closed with `KWIK_PATH_DEAD`, so that the servers
    /// of the other paths free the session at once.
    fn end_session(&mut self, reason: CloseReason, detail: &str, ctx: &mut Ctx<'_>) {
        if self.close_reason.is_some() {
            return;
        }
        tracing::debug!(target: crate::log::PATHS, session = %self.handle, %reason, detail, "peer lost: session ends");
        self.close_reason = Some(reason.clone());
        ctx.events.push_back(Event::SessionClosed {
            session: self.handle,
            reason,
        });
        self.shut_down(ErrorCode::PathDead.wire(), detail.as_bytes(), ctx);
    }

    /// The next instant a probe or a verdict may be due.
    pub(super) fn liveness_deadline(&self, now: Instant) -> Option<Instant> {
        self.watched(now)
            .into_iter()
            .filter_map(|path| {
                let conn = self.conns.get(&path)?;
                let base = conn.known_base_rtt();
                let interval = self.policy.probe_interval(base, conn.probes);
                let dead_after = self.policy.dead_after(base);
                let probe = conn.next_probe.unwrap_or(conn.last_rx + interval);
                let degraded = conn.last_rx + self.policy.degraded_after(dead_after);
                let dead = match (self.role, path, self.policy.primary_lost_after) {
                    (Role::Client, PathId::PRIMARY, None) => probe,
                    (Role::Client, PathId::PRIMARY, Some(grace)) => {
                        conn.last_rx + dead_after.max(grace)
                    }
                    _ => conn.last_rx + dead_after,
                };
                // Past instants are already acted on; a verdict that waits
                // only for probes waits for the next probe.
                [probe, degraded, dead]
                    .into_iter()
                    .filter(|t| *t > now)
                    .min()
                    .or(Some(probe))
            })
            .min()
    }
}
