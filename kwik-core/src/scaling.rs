//! Automatic scaling: a primary adds secondary paths to a session whose
//! demand its live paths cannot meet, and removes them once they idle.
//!
//! The measure is **utilisation**: the share of time the session's paths
//! were busy — the client had granted credit for bytes of a served
//! resource ([`SessionView::serve`](crate::SessionView::serve)) that had
//! not reached it yet, so the paths, not the reading application, set the
//! pace. A reader faster than the paths keeps it near 1; a reader at a
//! fraction ρ of the paths' capacity keeps them busy for about ρ of the
//! time (they fill the credit in bursts, then wait). Nothing else is
//! needed: no capacity model, no knowledge of the links.
//!
//! kwik-core samples utilisation and each path's delivery rate on its own
//! timers (virtual time in the simulator), hands one [`ScalingInput`] per
//! evaluation to the session's [`ScalingPolicy`], and carries out the
//! decision: an added path goes to the best free [`Candidate`] of the
//! endpoint's pool ([`KwikEndpoint::set_candidates`](crate::KwikEndpoint::set_candidates)),
//! within [`AutoscaleConfig::max_paths`] per session and
//! [`AutoscaleConfig::max_endpoint_paths`] for the whole endpoint; only
//! paths the scaler added are ever removed (the application's own paths are
//! the application's). The policy is a trait so that an operator can put
//! cost or region rules in; [`UtilisationPolicy`] is the default.
//!
//! [`Candidate`]: crate::Candidate

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::health::PathHealth;
use crate::paths::PathId;

/// What a [`ScalingPolicy`] is told at each evaluation.
#[derive(Debug, Clone)]
pub struct ScalingInput<'a> {
    /// When.
    pub now: Instant,
    /// Share of the last evaluation interval the session's paths were busy
    /// (0 to 1; 0 while nothing is being served).
    pub utilisation: f64,
    /// Bytes per second the session's transfers delivered lately, all
    /// paths together.
    pub rate: f64,
    /// The live paths, the primary connection first.
    pub paths: &'a [ScalingPath],
    /// A path could be added now: a free candidate exists and neither the
    /// session's nor the endpoint's maximum is reached.
    pub can_add: bool,
    /// A path the scaler added is still joining (its effect is not known
    /// yet).
    pub joining: bool,
}

/// One live path as a [`ScalingPolicy`] sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalingPath {
    /// The path.
    pub id: PathId,
    /// The primary connection (never removed).
    pub primary: bool,
    /// Added by the scaler (only these may be removed).
    pub autoscaled: bool,
    /// Bytes per second it delivered lately.
    pub rate: f64,
    /// Highest rate it was seen to deliver, decaying slowly (a half-life of
    /// about 70 s): an estimate of what it can carry.
    pub capacity: f64,
    /// Its health grade.
    pub health: PathHealth,
}

/// What a [`ScalingPolicy`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalingDecision {
    /// Change nothing.
    Hold,
    /// Add one path, to the best free candidate.
    Add,
    /// Remove these paths gracefully (paths the scaler did not add, and the
    /// primary, are ignored).
    Remove(Vec<PathId>),
}

/// Decides, from one session's load, whether to add or remove paths.
///
/// One instance per session (see [`AutoscaleConfig::policy`]); it may keep
/// state between evaluations. It must be deterministic — a function of the
/// inputs it was given — so that kwik stays reproducible.
pub trait ScalingPolicy: Send + fmt::Debug {
    /// Called once per [`AutoscaleConfig::evaluation_interval`] while the
    /// session is established and busy with something: serving a resource,
    /// or holding paths the scaler added.
    fn evaluate(&mut self, input: &ScalingInput<'_>) -> ScalingDecision;

    /// The session was idle (nothing served, no scaled path) and is busy
    /// again: evaluations stopped meanwhile, so history kept from before is
    /// stale. The default does nothing.
    fn resume(&mut self) {}
}

/// The default policy: add a path when utilisation stayed at or above
/// `high` for `add_after`; remove the scaler's idle paths when it stayed
/// below `low` for `remove_after`, as many as keep the predicted
/// utilisation of the remaining paths at or under `headroom`.
///
/// Both conditions are judged on the evaluations since the last decision
/// (each decision starts the clock again), so an added path is given time
/// to show its effect, and `headroom` well below `high` keeps a removal from
/// calling for an immediate add: the two never flap.
#[derive(Debug, Clone)]
pub struct UtilisationPolicy {
    /// Utilisation at or above which the session wants another path.
    pub high: f64,
    /// How long utilisation must stay high: every evaluation in this span.
    pub add_after: Duration,
    /// Utilisation below which the session's paths are idle.
    pub low: f64,
    /// How long utilisation must stay low: the mean of every tenth of this
    /// span below `low` (bursts of a slow reader do not reset it).
    pub remove_after: Duration,
    /// Highest utilisation the remaining paths may be predicted to reach
    /// after a removal: the idle span's mean scaled by the capacity
    /// removed (capacities from [`ScalingPath::capacity`]).
    pub headroom: f64,
    samples: VecDeque<(Instant, f64)>,
}

impl Default for UtilisationPolicy {
    fn default() -> Self {
        Self {
            high: 0.8,
            add_after: Duration::from_secs(5),
            low: 0.3,
            remove_after: Duration::from_secs(60),
            headroom: 0.6,
            samples: VecDeque::new(),
        }
    }
}

impl UtilisationPolicy {
    /// Samples newer than `span` before `now`, if the history covers the
    /// whole span (the oldest kept sample is at least `span` old).
    /// A zero span is the latest sample alone.
    fn window(&self, now: Instant, span: Duration) -> Option<Vec<(Instant, f64)>> {
        if span.is_zero() {
            return self.samples.back().map(|s| vec![*s]);
        }
        let oldest = self.samples.front()?.0;
        if now.saturating_duration_since(oldest) < span {
            return None;
        }
        Some(
            self.samples
                .iter()
                .filter(|(t, _)| now.saturating_duration_since(*t) < span)
                .copied()
                .collect(),
        )
    }

    fn wants_add(&self, now: Instant) -> bool {
        self.window(now, self.add_after)
            .is_some_and(|w| !w.is_empty() && w.iter().all(|(_, u)| *u >= self.high))
    }

    /// The mean utilisation of the idle span, if the mean over every
    /// stretch of a tenth of it stayed below `low` (a sliding window: a
    /// slow reader's short bursts do not count as busy, a busy stretch of a
    /// tenth of the span does, wherever it falls).
    fn idle(&self, now: Instant) -> Option<f64> {
        let w = self.window(now, self.remove_after)?;
        let slice = self.remove_after / 10;
        if w.is_empty() {
            return None;
        }
        let mean = w.iter().map(|(_, u)| u).sum::<f64>() / w.len() as f64;
        if slice.is_zero() {
            return w.iter().all(|(_, u)| *u < self.low).then_some(mean);
        }
        let (mut from, mut sum) = (0, 0.0);
        for (to, (t, u)) in w.iter().enumerate() {
            sum += u;
            while t.saturating_duration_since(w[from].0) >= slice {
                sum -= w[from].1;
                from += 1;
            }
            // Judged once a stretch is at least half a tenth long (the
            // first samples alone would make one burst look like a trend).
            let long_enough = t.saturating_duration_since(w[0].0) * 2 >= slice;
            if long_enough && sum / (to + 1 - from) as f64 >= self.low {
                return None;
            }
        }
        Some(mean)
    }

    /// The scaler's paths to remove, least capable first, while the rest
    /// stays within `headroom` at `utilisation`.
    fn removable(&self, input: &ScalingInput<'_>, utilisation: f64) -> Vec<PathId> {
        let total: f64 = input.paths.iter().map(|p| p.capacity).sum();
        if total <= 0.0 {
            return Vec::new();
        }
        let mut candidates: Vec<&ScalingPath> =
            input.paths.iter().filter(|p| p.autoscaled).collect();
        candidates.sort_by(|a, b| {
            a.capacity
                .partial_cmp(&b.capacity)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.id.cmp(&b.id))
        });
        let mut left = total;
        let mut out = Vec::new();
        for p in candidates {
            let after = left - p.capacity;
            if after <= 0.0 || utilisation * total / after > self.headroom {
                break;
            }
            left = after;
            out.push(p.id);
        }
        out
    }
}

impl ScalingPolicy for UtilisationPolicy {
    fn resume(&mut self) {
        self.samples.clear();
    }

    fn evaluate(&mut self, input: &ScalingInput<'_>) -> ScalingDecision {
        let now = input.now;
        self.samples.push_back((now, input.utilisation));
        let keep = self.remove_after.max(self.add_after);
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= keep)
        {
            self.samples.pop_front();
        }
        let decision = if input.joining {
            ScalingDecision::Hold
        } else if input.can_add && self.wants_add(now) {
            ScalingDecision::Add
        } else if let Some(mean) = self.idle(now) {
            match self.removable(input, mean) {
                r if r.is_empty() => ScalingDecision::Hold,
                r => ScalingDecision::Remove(r),
            }
        } else {
            ScalingDecision::Hold
        };
        if decision != ScalingDecision::Hold {
            // The paths change: judge the new set on its own samples.
            self.samples.clear();
            self.samples.push_back((now, input.utilisation));
        }
        decision
    }
}

/// The shortest sampling interval kwik uses, whatever is configured (a
/// zero interval would make the timer fire forever at one instant).
pub const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// Makes the policy of each new primary session.
pub type PolicyFactory = Arc<dyn Fn() -> Box<dyn ScalingPolicy> + Send + Sync>;

/// Automatic scaling of a primary's sessions (see the [module docs](self)).
#[derive(Clone)]
pub struct AutoscaleConfig {
    /// Makes each session's policy; [`UtilisationPolicy::default`] by
    /// default.
    pub policy: PolicyFactory,
    /// Most secondary paths (joining or live, the application's included)
    /// a session may have before the scaler stops adding. Default 4.
    pub max_paths: usize,
    /// Most paths the scaler keeps across all sessions of the endpoint (a
    /// bound on what a crowd of demanding clients can make it dial).
    /// Default 256.
    pub max_endpoint_paths: usize,
    /// How often utilisation is sampled. Default 100 ms; at least
    /// [`MIN_SAMPLE_INTERVAL`] is used.
    pub sample_interval: Duration,
    /// How often the policy is asked. Default 1 s; at least the sample
    /// interval is used.
    pub evaluation_interval: Duration,
    /// A candidate whose path failed or died in a session is not tried again
    /// in that session for this long. Default 30 s.
    pub candidate_backoff: Duration,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        Self {
            policy: Arc::new(|| Box::new(UtilisationPolicy::default())),
            max_paths: 4,
            max_endpoint_paths: 256,
            sample_interval: Duration::from_millis(100),
            evaluation_interval: Duration::from_secs(1),
            candidate_backoff: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for AutoscaleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AutoscaleConfig")
            .field("max_paths", &self.max_paths)
            .field("max_endpoint_paths", &self.max_endpoint_paths)
            .field("sample_interval", &self.sample_interval)
            .field("evaluation_interval", &self.evaluation_interval)
            .field("candidate_backoff", &self.candidate_backoff)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(id: u64, autoscaled: bool, capacity: f64) -> ScalingPath {
        ScalingPath {
            id: PathId(id),
            primary: id == 0,
            autoscaled,
            rate: 0.0,
            capacity,
            health: PathHealth::Good,
        }
    }

    fn run(
        policy: &mut UtilisationPolicy,
        start: Instant,
        secs: u64,
        u: f64,
        paths: &[ScalingPath],
    ) -> Vec<(u64, ScalingDecision)> {
        (0..secs)
            .filter_map(|s| {
                let input = ScalingInput {
                    now: start + Duration::from_secs(s),
                    utilisation: u,
                    rate: 0.0,
                    paths,
                    can_add: true,
                    joining: false,
                };
                match policy.evaluate(&input) {
                    ScalingDecision::Hold => None,
                    d => Some((s, d)),
                }
            })
            .collect()
    }

    #[test]
    fn sustained_high_utilisation_adds_after_the_span_and_not_before() {
        let mut p = UtilisationPolicy::default();
        let t = Instant::now();
        let paths = [path(0, false, 1.0)];
        let d = run(&mut p, t, 12, 0.95, &paths);
        assert_eq!(
            d,
            vec![(5, ScalingDecision::Add), (10, ScalingDecision::Add)]
        );
    }

    #[test]
    fn one_dip_restarts_the_add_clock() {
        let mut p = UtilisationPolicy::default();
        let t = Instant::now();
        let paths = [path(0, false, 1.0)];
        assert!(run(&mut p, t, 4, 0.95, &paths).is_empty());
        assert!(run(&mut p, t + Duration::from_secs(4), 1, 0.5, &paths).is_empty());
        let d = run(&mut p, t + Duration::from_secs(5), 6, 0.95, &paths);
        assert_eq!(d, vec![(4, ScalingDecision::Add)]);
    }

    #[test]
    fn idle_paths_go_after_a_minute_as_far_as_headroom_allows() {
        let mut p = UtilisationPolicy::default();
        let t = Instant::now();
        let paths = [
            path(0, false, 10.0),
            path(1, true, 10.0),
            path(2, true, 5.0),
            path(3, false, 5.0),
        ];
        // 0.1 of 30: removing 5 then 10 leaves 15 at 0.2 — within 0.6.
        let d = run(&mut p, t, 61, 0.1, &paths);
        assert_eq!(
            d,
            vec![(60, ScalingDecision::Remove(vec![PathId(2), PathId(1)]))]
        );
    }

    #[test]
    fn a_removal_that_would_overload_the_rest_is_not_made() {
        let mut p = UtilisationPolicy::default();
        let t = Instant::now();
        let paths = [path(0, false, 10.0), path(1, true, 10.0)];
        // 0.29 of 20 → 0.58 of 10: allowed; 0.29 with a 5-capacity primary is not.
        assert_eq!(run(&mut p, t, 61, 0.29, &paths).len(), 1);
        let mut p = UtilisationPolicy::default();
        let paths = [path(0, false, 5.0), path(1, true, 10.0)];
        assert!(run(&mut p, t, 120, 0.29, &paths).is_empty());
    }

    #[test]
    fn bursts_of_a_slow_reader_count_as_idle_but_a_busy_stretch_does_not() {
        let mut p = UtilisationPolicy::default();
        let t = Instant::now();
        let paths = [path(0, false, 10.0), path(1, true, 10.0)];
        let mut decided = None;
        for s in 0..70u64 {
            // A 0.5-busy second every 5 s: mean 0.1.
            let u = if s % 5 == 0 { 0.5 } else { 0.0 };
            let input = ScalingInput {
                now: t + Duration::from_secs(s),
                utilisation: u,
                rate: 0.0,
                paths: &paths,
                can_add: true,
                joining: false,
            };
            if p.evaluate(&input) != ScalingDecision::Hold {
                decided.get_or_insert(s);
            }
        }
        assert_eq!(decided, Some(60));
        // Six half-busy seconds in a row in the minute keep the paths (and
        // add none).
        let mut p = UtilisationPolicy::default();
        for s in 0..70u64 {
            let u = if (30..36).contains(&s) { 0.5 } else { 0.0 };
            let input = ScalingInput {
                now: t + Duration::from_secs(s),
                utilisation: u,
                rate: 0.0,
                paths: &paths,
                can_add: true,
                joining: false,
            };
            assert_eq!(p.evaluate(&input), ScalingDecision::Hold, "second {s}");
        }
    }

    #[test]
    fn zero_spans_judge_the_latest_evaluation_alone() {
        let mut p = UtilisationPolicy {
            add_after: Duration::ZERO,
            remove_after: Duration::ZERO,
            ..UtilisationPolicy::default()
        };
        let t = Instant::now();
        let paths = [path(0, false, 10.0), path(1, true, 10.0)];
        assert_eq!(
            run(&mut p, t, 1, 0.9, &paths),
            vec![(0, ScalingDecision::Add)]
        );
        let later = t + Duration::from_secs(1);
        assert_eq!(
            run(&mut p, later, 1, 0.1, &paths),
            vec![(0, ScalingDecision::Remove(vec![PathId(1)]))]
        );
    }

    #[test]
    fn nothing_is_decided_while_a_path_joins() {
        let mut p = UtilisationPolicy::default();
        let t = Instant::now();
        let paths = [path(0, false, 1.0)];
        for s in 0..20u64 {
            let input = ScalingInput {
                now: t + Duration::from_secs(s),
                utilisation: 1.0,
                rate: 0.0,
                paths: &paths,
                can_add: true,
                joining: true,
            };
            assert_eq!(p.evaluate(&input), ScalingDecision::Hold);
        }
    }
}
