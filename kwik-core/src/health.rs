//! Path health: one grade per path, from what its connection measures.
//!
//! A path's [`PathState`](crate::PathState) says whether it is *heard*; its
//! health says whether it is *worth using*. The grade combines three
//! scores in [0, 1]:
//!
//! * **latency** — the path's unqueued round trip over its smoothed round
//!   trip: 1 when no queue builds, ½ when queueing doubled the RTT;
//! * **loss** — 1 − loss rate ÷ 30 %, the loss rate being an exponentially
//!   weighted average over evaluation intervals of the connection's lost ÷
//!   sent packets, where an interval weighs less the fewer packets it saw;
//! * **throughput** — the path's delivery rate (EWMA) over the best one in
//!   the session, floored at 0.1 and only updated while the path carries
//!   data.
//!
//! The score is their geometric mean, so one failing dimension pulls the
//! grade down where an average would hide it: 30 % loss is Critical
//! whatever the other two say. The throughput floor means a slow path
//! alone never becomes Critical — and because a Critical path receives no
//! new ranges, its throughput stops being measured instead of decaying to
//! zero, so the path can recover once its loss and latency do (kwik's
//! probes and keep-alives keep those measured on an idle path). A path
//! that has gone silent (Degraded) is Critical until it is heard again.
//!
//! Grades change with hysteresis (the score must pass a boundary by
//! [`HYSTERESIS`]) so that a path sitting on a boundary does not flap, and
//! a path is upgraded only after several evaluations in a row found it
//! better, but downgraded at once: a lossy path whose loss estimate
//! wavers around the Critical boundary stays Critical.

use std::fmt;
use std::time::{Duration, Instant};

/// How far past a grade boundary the score must move to change grade.
pub const HYSTERESIS: f64 = 0.05;

/// Shortest interval between two evaluations of a path.
const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Weight of a new interval in the loss and throughput averages.
const ALPHA: f64 = 0.25;

/// Evaluations in a row that must find a better grade before the path is
/// upgraded (downgrades are immediate): slow to trust, quick to distrust.
const UPGRADE_AFTER: u8 = 4;

/// Packets an interval needs to weigh fully in the loss average.
const FULL_WEIGHT_PACKETS: u64 = 64;

/// Fewest bytes carried in an interval for its rate to count.
const MIN_BYTES: u64 = 64 << 10;

/// Loss rate at which the loss score reaches 0.
const LOSS_FLOOR: f64 = 0.30;

/// Lowest throughput score (see the module docs).
const THROUGHPUT_FLOOR: f64 = 0.1;

/// A path's health grade, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum PathHealth {
    /// Score ≥ 0.8.
    #[default]
    Excellent,
    /// Score ≥ 0.6.
    Good,
    /// Score ≥ 0.4.
    Fair,
    /// Score ≥ 0.2.
    Poor,
    /// Score < 0.2, or the path has gone silent: it gets no new ranges.
    Critical,
}

impl PathHealth {
    /// All grades, best first.
    pub const ALL: [PathHealth; 5] = [
        PathHealth::Excellent,
        PathHealth::Good,
        PathHealth::Fair,
        PathHealth::Poor,
        PathHealth::Critical,
    ];

    /// The lowest score of this grade.
    fn floor(self) -> f64 {
        match self {
            PathHealth::Excellent => 0.8,
            PathHealth::Good => 0.6,
            PathHealth::Fair => 0.4,
            PathHealth::Poor => 0.2,
            PathHealth::Critical => 0.0,
        }
    }

    /// The grade of `score`, without hysteresis.
    pub fn of_score(score: f64) -> PathHealth {
        PathHealth::ALL
            .into_iter()
            .find(|g| score >= g.floor())
            .unwrap_or(PathHealth::Critical)
    }

    /// The grade of `score` for a path graded `self` until now: it moves
    /// only once the score is [`HYSTERESIS`] past the boundary.
    fn next(self, score: f64) -> PathHealth {
        let plain = PathHealth::of_score(score);
        let moved = match plain.cmp(&self) {
            // Better: the score must clear the better grade's floor by the margin.
            std::cmp::Ordering::Less => PathHealth::of_score(score - HYSTERESIS),
            // Worse: it must fall the margin below this grade's floor.
            std::cmp::Ordering::Greater => PathHealth::of_score(score + HYSTERESIS),
            std::cmp::Ordering::Equal => self,
        };
        if moved.cmp(&self) == plain.cmp(&self) {
            moved
        } else {
            self
        }
    }

    /// The name used in metrics and logs (`"excellent"` …).
    pub fn as_str(self) -> &'static str {
        match self {
            PathHealth::Excellent => "excellent",
            PathHealth::Good => "good",
            PathHealth::Fair => "fair",
            PathHealth::Poor => "poor",
            PathHealth::Critical => "critical",
        }
    }
}

impl fmt::Display for PathHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a connection measured, cumulatively, at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// Smoothed RTT.
    pub rtt: Duration,
    /// Smallest smoothed RTT seen (the unqueued round trip).
    pub base_rtt: Duration,
    /// Packets sent so far.
    pub sent_packets: u64,
    /// Packets declared lost so far.
    pub lost_packets: u64,
    /// UDP payload bytes carried so far, both directions.
    pub bytes: u64,
    /// The path is silent (Degraded).
    pub silent: bool,
}

/// One path's running health evaluation.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthMeter {
    last: Option<(Instant, Sample)>,
    /// Average loss rate.
    loss: f64,
    /// EWMA of the delivery rate in bytes per second, over intervals that
    /// carried data.
    throughput: f64,
    /// The last throughput score (1 until measured).
    throughput_score: Option<f64>,
    /// Current grade.
    pub grade: PathHealth,
    /// Consecutive evaluations that found a better grade.
    better: u8,
    /// The last score.
    pub score: f64,
}

impl HealthMeter {
    /// Throughput EWMA in bytes per second.
    pub fn throughput(&self) -> u64 {
        self.throughput as u64
    }

    /// Whether an interval has passed since the last sample (checked
    /// before gathering one, which costs a copy of the connection's stats).
    pub fn due(&self, now: Instant, rtt: Duration) -> bool {
        self.last
            .as_ref()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= MIN_INTERVAL.max(rtt))
    }

    /// Takes a new sample if an interval has passed since the last one
    /// (the longer of [`MIN_INTERVAL`] and the RTT); true if it did.
    pub fn sample(&mut self, now: Instant, s: Sample) -> bool {
        let Some((at, prev)) = self.last else {
            self.last = Some((now, s));
            return false;
        };
        if !self.due(now, s.rtt) {
            return false;
        }
        let elapsed = now.saturating_duration_since(at);
        let sent = s.sent_packets.saturating_sub(prev.sent_packets);
        let lost = s.lost_packets.saturating_sub(prev.lost_packets);
        // An interval weighs by how many packets it saw, up to
        // FULL_WEIGHT_PACKETS: a handful of packets says little, and a busy
        // past must not outweigh a quiet present.
        if sent > 0 {
            let rate = (lost as f64 / sent as f64).min(1.0);
            let weight = (sent as f64 / FULL_WEIGHT_PACKETS as f64).min(1.0);
            self.loss += ALPHA * weight * (rate - self.loss);
        }
        let bytes = s.bytes.saturating_sub(prev.bytes);
        if bytes >= MIN_BYTES {
            let rate = bytes as f64 / elapsed.as_secs_f64();
            self.throughput = if self.throughput == 0.0 {
                rate
            } else {
                self.throughput + ALPHA * (rate - self.throughput)
            };
        }
        self.last = Some((now, s));
        true
    }

    /// Grades the path given the best throughput among the session's
    /// paths; returns the new grade if it changed.
    pub fn grade(&mut self, s: &Sample, best_throughput: f64) -> Option<PathHealth> {
        let latency = if s.rtt.is_zero() {
            1.0
        } else {
            (s.base_rtt.as_secs_f64() / s.rtt.as_secs_f64()).clamp(0.0, 1.0)
        };
        let loss = (1.0 - self.loss / LOSS_FLOOR).clamp(0.0, 1.0);
        if self.throughput > 0.0 && best_throughput > 0.0 {
            self.throughput_score =
                Some((self.throughput / best_throughput).clamp(THROUGHPUT_FLOOR, 1.0));
        }
        let throughput = self.throughput_score.unwrap_or(1.0);
        self.score = if s.silent {
            0.0
        } else {
            (latency * loss * throughput).cbrt()
        };
        let next = if s.silent {
            PathHealth::Critical
        } else {
            self.grade.next(self.score)
        };
        if next < self.grade {
            self.better += 1;
            if self.better < UPGRADE_AFTER {
                return None;
            }
        }
        self.better = 0;
        (next != self.grade).then(|| {
            self.grade = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rtt_ms: u64, base_ms: u64, sent: u64, lost: u64, bytes: u64) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            base_rtt: Duration::from_millis(base_ms),
            sent_packets: sent,
            lost_packets: lost,
            bytes,
            silent: false,
        }
    }

    /// Feeds `intervals` intervals of `sent` packets with `lost` lost and
    /// `bytes` carried each, returning the grade.
    fn run(m: &mut HealthMeter, intervals: u64, rtt: u64, lost: u64, best: f64) -> PathHealth {
        let start = Instant::now();
        for i in 0..=intervals {
            let s = sample(rtt, 40, 100 * i, lost * i, (1 << 20) * i);
            if m.sample(start + Duration::from_millis(300 * i), s) {
                m.grade(&s, best);
            }
        }
        m.grade
    }

    #[test]
    fn grades_follow_the_score_boundaries() {
        assert_eq!(PathHealth::of_score(0.95), PathHealth::Excellent);
        assert_eq!(PathHealth::of_score(0.8), PathHealth::Excellent);
        assert_eq!(PathHealth::of_score(0.79), PathHealth::Good);
        assert_eq!(PathHealth::of_score(0.45), PathHealth::Fair);
        assert_eq!(PathHealth::of_score(0.2), PathHealth::Poor);
        assert_eq!(PathHealth::of_score(0.19), PathHealth::Critical);
    }

    #[test]
    fn hysteresis_keeps_a_grade_near_its_boundary() {
        let g = PathHealth::Good;
        assert_eq!(g.next(0.58), PathHealth::Good, "within the margin below");
        assert_eq!(g.next(0.54), PathHealth::Fair);
        assert_eq!(g.next(0.83), PathHealth::Good, "within the margin above");
        assert_eq!(g.next(0.86), PathHealth::Excellent);
        assert_eq!(PathHealth::Critical.next(0.9), PathHealth::Excellent);
        assert_eq!(PathHealth::Excellent.next(0.1), PathHealth::Critical);
    }

    #[test]
    fn a_clean_path_is_excellent() {
        let mut m = HealthMeter::default();
        assert_eq!(run(&mut m, 20, 40, 0, 3.5e6), PathHealth::Excellent);
        assert!(m.throughput() > 3_000_000, "{}", m.throughput());
    }

    #[test]
    fn heavy_loss_is_critical_and_recovers() {
        let mut m = HealthMeter::default();
        assert_eq!(run(&mut m, 20, 40, 35, 3.5e6), PathHealth::Critical);
        // Loss ends; the average decays and the grade climbs back.
        let start = Instant::now() + Duration::from_secs(100);
        let mut grades = Vec::new();
        for i in 0..=40 {
            let s = sample(40, 40, 10_000 + 100 * i, 700, 0);
            if m.sample(start + Duration::from_millis(300 * i), s)
                && let Some(g) = m.grade(&s, 3.5e6)
            {
                grades.push(g);
            }
        }
        assert_eq!(grades.last(), Some(&PathHealth::Excellent), "{grades:?}");
        // Monotonic recovery, no flapping back down.
        assert!(grades.windows(2).all(|w| w[1] < w[0]), "{grades:?}");
    }

    #[test]
    fn a_slow_path_alone_is_never_critical() {
        let mut m = HealthMeter::default();
        // A thousandth of the best path's rate, clean otherwise.
        let grade = run(&mut m, 20, 40, 0, 3.5e9);
        assert!(grade < PathHealth::Poor, "{grade:?}");
        assert!(grade > PathHealth::Excellent, "{grade:?}");
    }

    #[test]
    fn queueing_lowers_the_grade() {
        let mut m = HealthMeter::default();
        // RTT four times its floor.
        assert_eq!(run(&mut m, 20, 160, 0, 3.5e6), PathHealth::Good);
        let mut m = HealthMeter::default();
        // Ten times, with 20 % loss.
        assert_eq!(run(&mut m, 20, 400, 20, 3.5e6), PathHealth::Poor);
    }

    #[test]
    fn silence_is_critical_until_heard() {
        let mut m = HealthMeter::default();
        run(&mut m, 5, 40, 0, 3.5e6);
        let mut s = sample(40, 40, 600, 0, 6 << 20);
        s.silent = true;
        assert_eq!(m.grade(&s, 3.5e6), Some(PathHealth::Critical));
        s.silent = false;
        for _ in 1..UPGRADE_AFTER {
            assert_eq!(m.grade(&s, 3.5e6), None, "not trusted again at once");
        }
        assert_eq!(m.grade(&s, 3.5e6), Some(PathHealth::Excellent));
    }
}
