//! The primary's side of automatic scaling (see [`crate::scaling`]):
//! sampling a session's utilisation, asking its policy, and adding or
//! removing paths as it decides.
//!
//! The endpoint owns the candidate pool and the count of paths the scaler
//! holds across sessions ([`ScalingPool`]); a session owns its policy, its
//! samples and the set of paths it added.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::*;
use crate::candidate::{Candidate, normalize_candidates};
use crate::health::PathHealth;
use crate::scaling::{
    AutoscaleConfig, MIN_SAMPLE_INTERVAL, ScalingDecision, ScalingInput, ScalingPath, ScalingPolicy,
};

/// Most candidates an endpoint keeps (a discovery source is outside the
/// trust boundary of the core: a huge answer must not make every
/// evaluation slow).
pub(crate) const MAX_CANDIDATES: usize = 1024;

/// Endpoint-wide state of automatic scaling.
#[derive(Debug, Default)]
pub(crate) struct ScalingPool {
    /// Servers the scaler may add, in preference order.
    pub candidates: Vec<Candidate>,
    /// Paths the scalers of all sessions hold (joining or live).
    pub in_use: usize,
}

impl ScalingPool {
    /// Replaces the candidates, normalized ([`normalize_candidates`]) to
    /// at most [`MAX_CANDIDATES`].
    pub(crate) fn set_candidates(&mut self, mut candidates: Vec<Candidate>) {
        normalize_candidates(&mut candidates, MAX_CANDIDATES);
        self.candidates = candidates;
    }
}

/// Half-life of a path's capacity estimate, in evaluations of one second:
/// `0.99^69 ≈ 0.5`.
const CAPACITY_DECAY: f64 = 0.99;

/// One session's scaler.
pub(super) struct Scaler {
    config: AutoscaleConfig,
    policy: Box<dyn ScalingPolicy>,
    next_sample: Instant,
    next_evaluation: Instant,
    /// Samples taken, and how many found the paths busy, since the last
    /// evaluation.
    samples: u32,
    busy: u32,
    /// Paths this scaler added that are neither failed, dead nor closed.
    owned: BTreeSet<PathId>,
    capacity: BTreeMap<PathId, f64>,
    /// Candidates whose path failed, died or was closed by the client, and
    /// until when they rest (`None`: for the rest of the session — the
    /// client refused them). At most one entry per candidate.
    resting: BTreeMap<SocketAddr, Option<Instant>>,
    /// Owned paths this scaler asked to remove (any other owned path that
    /// closes was closed by the client).
    removing: BTreeSet<PathId>,
    /// The session was idle at the last look (no timers ran).
    idle: bool,
}

impl fmt::Debug for Scaler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scaler")
            .field("owned", &self.owned)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Scaler {
    pub(super) fn new(mut config: AutoscaleConfig, now: Instant) -> Self {
        config.sample_interval = config.sample_interval.max(MIN_SAMPLE_INTERVAL);
        config.evaluation_interval = config.evaluation_interval.max(config.sample_interval);
        let policy = (config.policy)();
        Self {
            next_sample: now + config.sample_interval,
            next_evaluation: now + config.evaluation_interval,
            config,
            policy,
            samples: 0,
            busy: 0,
            owned: BTreeSet::new(),
            capacity: BTreeMap::new(),
            resting: BTreeMap::new(),
            removing: BTreeSet::new(),
            idle: true,
        }
    }

    /// The next sample or evaluation, unless the session is idle.
    pub(super) fn deadline(&self) -> Option<Instant> {
        (!self.idle).then(|| self.next_sample.min(self.next_evaluation))
    }

    /// Paths this scaler holds (for the endpoint's count when the session
    /// goes away).
    pub(super) fn held(&self) -> usize {
        self.owned.len()
    }
}

impl Session {
    /// Primary: takes a utilisation sample and, once per evaluation
    /// interval, runs the policy and carries out its decision.
    pub(super) fn autoscale(&mut self, ctx: &mut Ctx<'_>) {
        if self.role != Role::Primary || self.phase != Phase::Active || !self.confirmed {
            return;
        }
        let Some(mut scaler) = self.scaler.take() else {
            return;
        };
        let now = ctx.now;
        // An idle session (nothing served, no scaled path) neither samples
        // nor evaluates: no timer per idle session on a busy server.
        let idle = self.transfers.is_empty() && scaler.owned.is_empty();
        if idle || scaler.idle {
            scaler.next_sample = now + scaler.config.sample_interval;
            scaler.next_evaluation = now + scaler.config.evaluation_interval;
            scaler.samples = 0;
            scaler.busy = 0;
            if scaler.idle && !idle {
                scaler.policy.resume();
            }
            scaler.idle = idle;
            self.scaler = Some(scaler);
            return;
        }
        if scaler.next_sample <= now {
            scaler.samples += 1;
            if self.paths_busy() {
                scaler.busy += 1;
            }
            scaler.next_sample = now + scaler.config.sample_interval;
        }
        if scaler.next_evaluation <= now {
            scaler.next_evaluation = now + scaler.config.evaluation_interval;
            self.evaluate_scaling(&mut scaler, ctx);
        }
        self.scaler = Some(scaler);
    }

    /// True if some served resource has bytes the client granted credit for
    /// that have not reached it: the paths, not the reader, set the pace.
    /// The slack (a sixteenth of the window) covers bytes in flight and the
    /// delay of the client's acknowledgements.
    fn paths_busy(&self) -> bool {
        let window = self.streams.peer_window();
        let slack = (window / 16).max(1);
        self.transfers.values().any(|t| {
            let Some(credit) = self.streams.send_credit(t.stream) else {
                return false;
            };
            let received = self.ledger.received(t.stream);
            let frontier = received
                .and_then(|r| r.iter().next())
                .filter(|r| r.start == 0)
                .map_or(0, |r| r.end);
            credit.min(t.len).saturating_sub(frontier) >= slack
        })
    }

    fn evaluate_scaling(&mut self, scaler: &mut Scaler, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        // Paths that ended leave the scaler's hands (and the endpoint's count).
        let ended: Vec<PathId> = scaler
            .owned
            .iter()
            .copied()
            .filter(|p| self.paths.get(p).is_none_or(|i| i.state.is_final()))
            .collect();
        let backoff = Some(now + scaler.config.candidate_backoff);
        for path in ended {
            scaler.owned.remove(&path);
            let removed = scaler.removing.remove(&path);
            ctx.scaling.in_use = ctx.scaling.in_use.saturating_sub(1);
            let Some(info) = self.paths.get(&path) else {
                continue;
            };
            // The client refused the server (its policy, or it is a path
            // already — this primary itself, say): not asked again. A path
            // that failed, died or that the client closed rests a while.
            let rest = match (info.state, &info.failure) {
                (PathState::Failed, Some(f)) if f.code == ErrorCode::Refused => None,
                (PathState::Failed | PathState::Dead, _) => backoff,
                (PathState::Closed, _) if !removed => backoff,
                _ => continue,
            };
            scaler.resting.insert(info.address, rest);
        }
        scaler
            .resting
            .retain(|_, until| until.is_none_or(|t| t > now));

        let utilisation = if scaler.samples == 0 {
            0.0
        } else {
            f64::from(scaler.busy) / f64::from(scaler.samples)
        };
        scaler.samples = 0;
        scaler.busy = 0;

        let mut paths = Vec::new();
        let mut rate = 0.0;
        let live: Vec<(PathId, PathHealth)> =
            std::iter::once((PathId::PRIMARY, self.primary_health()))
                .chain(
                    self.paths
                        .values()
                        .filter(|p| !p.primary && p.state.is_live())
                        .map(|p| (p.id, p.health)),
                )
                .collect();
        for (id, health) in live {
            let path_rate: f64 = self.transfers.values().map(|t| t.path_rate(id)).sum();
            let capacity = scaler.capacity.entry(id).or_insert(0.0);
            *capacity = (*capacity * CAPACITY_DECAY).max(path_rate);
            rate += path_rate;
            paths.push(ScalingPath {
                id,
                primary: id == PathId::PRIMARY,
                autoscaled: scaler.owned.contains(&id),
                rate: path_rate,
                capacity: *capacity,
                health,
            });
        }
        scaler
            .capacity
            .retain(|id, _| paths.iter().any(|p| p.id == *id));

        let joining = scaler.owned.iter().any(|p| {
            self.paths.get(p).is_some_and(|i| {
                matches!(i.state, PathState::Initializing | PathState::Handshaking)
            })
        });
        let secondaries = self
            .paths
            .values()
            .filter(|p| !p.primary && !p.state.is_final())
            .count();
        let own = ctx.server.map_or(&[][..], |s| &s.path_addresses[..]);
        let candidate = self.free_candidate(scaler, &ctx.scaling.candidates, own);
        let can_add = candidate.is_some()
            && secondaries < scaler.config.max_paths
            && ctx.scaling.in_use < scaler.config.max_endpoint_paths;
        let input = ScalingInput {
            now,
            utilisation,
            rate,
            paths: &paths,
            can_add,
            joining,
        };
        match scaler.policy.evaluate(&input) {
            ScalingDecision::Hold => {}
            ScalingDecision::Add => {
                let Some(c) = candidate.filter(|_| can_add) else {
                    return;
                };
                match self.add_path(now, ctx.unix_now, c.address, &c.server_name, ctx.events) {
                    Ok(path) => {
                        // A scaled path is not re-added by path_retry: the
                        // scaler picks again from the pool.
                        self.targets.retain(|t| t.current != path);
                        scaler.owned.insert(path);
                        ctx.scaling.in_use += 1;
                        tracing::debug!(target: crate::log::PATHS, session = %self.handle, %path, address = %c.address, utilisation, "autoscale: path added");
                        ctx.events.push_back(Event::PathScaled {
                            session: self.handle,
                            path,
                            added: true,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(target: crate::log::PATHS, session = %self.handle, address = %c.address, error = %e, "autoscale: add failed");
                    }
                }
            }
            ScalingDecision::Remove(remove) => {
                for path in remove {
                    if !scaler.owned.contains(&path)
                        || self.remove_path(path, now, ctx.events).is_err()
                    {
                        continue;
                    }
                    scaler.removing.insert(path);
                    tracing::debug!(target: crate::log::PATHS, session = %self.handle, %path, utilisation, "autoscale: path removed");
                    ctx.events.push_back(Event::PathScaled {
                        session: self.handle,
                        path,
                        added: false,
                    });
                }
            }
        }
    }

    /// The grade of the primary connection.
    fn primary_health(&self) -> PathHealth {
        self.paths
            .get(&PathId::PRIMARY)
            .map_or(PathHealth::Good, |p| p.health)
    }

    /// The most preferred candidate that is none of: a path of this session
    /// (joining or live), a server the application added (its path may be
    /// waiting for a retry: the application's paths are the application's),
    /// this server itself (`own`: the addresses it is known by), or
    /// resting.
    fn free_candidate(
        &self,
        scaler: &Scaler,
        candidates: &[Candidate],
        own: &[SocketAddr],
    ) -> Option<Candidate> {
        candidates
            .iter()
            .find(|c| {
                !scaler.resting.contains_key(&c.address)
                    && !own.contains(&c.address)
                    && !self.targets.iter().any(|t| t.address == c.address)
                    && !self
                        .paths
                        .values()
                        .any(|p| p.address == c.address && !p.state.is_final())
            })
            .cloned()
    }
}
