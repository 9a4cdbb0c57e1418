//! Chaos scenarios: random multi-server transfers under loss, reordering,
//! duplication, corruption, outages and deaths, each judged on what the
//! client application saw.
//!
//! A [`Scenario`] is a pure function of a seed and a [`ChaosConfig`]
//! ([`Scenario::generate`]): one primary and two or three secondaries, each
//! behind its own link (10–200 Mbit/s, 10–150 ms RTT, random loss from 0 to
//! `max_loss` — log-uniform, so small losses are common —, jitter,
//! duplication, optionally corruption), a resource, the client's stream
//! window, a congestion controller, and optional faults: outages of a
//! secondary or of the primary (short ones, well below the idle timeout, and
//! long ones, above it), a secondary killed, the primary killed. Faults fire
//! mid-transfer, when the client application has read a given share of the
//! resource; a fault whose share is never reached never fires.
//!
//! [`run`] plays the scenario in virtual time with a [`MultiSetup`] (the
//! primary serves the resource with the multi-source scheduler from the
//! first byte on, secondaries join as their AddPaths complete) and stops as
//! soon as the outcome is decided:
//!
//! * [`Outcome::Delivered`] — every byte read exactly once, in order,
//!   verified, and the end of the stream seen;
//! * [`Outcome::PrimaryDeadError`] — the client session ended with an error
//!   while the primary was unreachable: killed, or in an outage at least as
//!   long as the idle timeout;
//! * [`Outcome::PrimaryAliveFailure`] — the session ended with an error
//!   although the primary was reachable (no primary fault, or an outage
//!   shorter than the idle timeout);
//! * [`Outcome::Hung`] — the session is open but in-order delivery made no
//!   progress for [`ChaosConfig::hang_after`] (60 s) of virtual time, or
//!   nothing at all can happen any more;
//! * [`Outcome::Slow`] — still progressing when the overall virtual-time
//!   limit ran out;
//! * [`Outcome::Corrupt`] / [`Outcome::Duplicate`] — a wrong, missing or
//!   repeated byte reached the application (must never happen);
//! * [`Outcome::Panicked`] — something panicked (kwik or the simulator).
//!
//! Besides the outcome a [`RunResult`] counts what the judge watches on the
//! side: paths added, **false deaths** (a path declared dead by the primary
//! or the client while its server was neither killed nor in an outage, nor
//! within a grace of four RTTs plus jitter plus 200 ms after one — and, for
//! the primary's declarations, while the primary itself was not cut off;
//! a path is judged by its first declaration, whichever side made it, and
//! counts once; deaths reported as a session ends are not counted), paths
//! re-added after failing or
//! dying, goodput against capacity, the client's heap peak against a bound,
//! and whether a primary-dead error came within a bounded time.
//!
//! **State machines** (PROTOCOL.md §15): once the outcome is decided, every
//! node's recorded `SessionState` / `PathState` events and every live
//! session's and path's history are checked against the tables
//! ([`crate::states`]); then every server is brought back up, the client
//! closes its session, and the run goes on (at most the idle timeout plus
//! ten seconds) until every session of every node drained, which must
//! leave each of them `Closed` and each of their paths ended. Any
//! departure is a violation of the run.
//!
//! **Goodput against capacity** of a delivered run is
//! `resource bits / Σ_servers rate × (time the server was reachable during
//! [0, T])`, with `T` the moment the application read the last byte,
//! measured from the simulation start (the client's connect). So it is the
//! share of what the reachable links could have carried that became useful
//! payload; handshakes, path set-up, slow start, retransmissions, loss
//! itself and overhead all count against it. Secondaries that never joined
//! still count as capacity.
//!
//! **Heap bound**: the client's heap peak (its [`Meter`], from the connect
//! on) must stay below `(2 + connections) × window + 16 MiB`: kwik charges a
//! logical stream's reassembly up to twice its window before it closes the
//! session, every QUIC connection can hold at most one window of that
//! stream out of order (sources never send past the granted offset), and
//! 16 MiB covers TLS, tables, lanes and the meter's own drift.
//!
//! Same seed, same config → same scenario and (with Cubic or NewReno) the
//! same run and trace digest; quinn-proto's BBR draws from an unseeded RNG,
//! so runs with [`CongestionControl::Bbr`] are not bit-reproducible.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kwik_core::{CongestionControl, Event, KwikEndpoint, PathFilter, PathId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::alloc::{METERS, Meter};
use crate::kwik_node::KwikNode;
use crate::link::{LinkConfig, LinkStats};
use crate::multi::{
    MultiClient, MultiOptions, MultiPrimary, MultiSetup, SecondaryApp, ServerLink, Start,
    first_server_stream,
};
use crate::sim::StallReason;
use crate::states::{Observed, StateLog, check_endpoint};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Probabilities of the faults a scenario may carry.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultMix {
    /// A secondary goes silent for a while, then comes back.
    pub secondary_outage: f64,
    /// A secondary dies for good mid-transfer.
    pub secondary_kill: f64,
    /// The primary goes silent for a while, then comes back.
    pub primary_outage: f64,
    /// The primary dies for good mid-transfer (drawn before the primary
    /// outage; a scenario has at most one primary fault).
    pub primary_kill: f64,
    /// Share of outages that are long (above the idle timeout) rather than
    /// short (well below it).
    pub long_outage: f64,
}

impl FaultMix {
    /// No faults at all.
    pub fn none() -> Self {
        Self {
            secondary_outage: 0.0,
            secondary_kill: 0.0,
            primary_outage: 0.0,
            primary_kill: 0.0,
            long_outage: 0.0,
        }
    }
}

impl Default for FaultMix {
    fn default() -> Self {
        Self {
            secondary_outage: 0.25,
            secondary_kill: 0.25,
            primary_outage: 0.1,
            primary_kill: 0.1,
            long_outage: 0.4,
        }
    }
}

/// Relative weights of the congestion controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CcMix {
    /// Cubic.
    pub cubic: u32,
    /// NewReno.
    pub new_reno: u32,
    /// BBR (not bit-reproducible, see the module docs).
    pub bbr: u32,
}

/// How scenarios are drawn and judged.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosConfig {
    /// Highest random loss of a link (each direction); a link's loss is 0
    /// with probability 1/4, else log-uniform in `[min(1e-4, max), max]`.
    pub max_loss: f64,
    /// Smallest resource.
    pub min_size: u64,
    /// Largest resource (log-uniform in between).
    pub max_size: u64,
    /// Smallest client stream window.
    pub min_window: u64,
    /// Largest client stream window (log-uniform in between).
    pub max_window: u64,
    /// Fewest secondaries.
    pub min_secondaries: usize,
    /// Most secondaries.
    pub max_secondaries: usize,
    /// Link rates, Mbit/s, uniform in `[lo, hi]`.
    pub rate_mbit: (u64, u64),
    /// Link RTTs, ms, uniform in `[lo, hi]`.
    pub rtt_ms: (u64, u64),
    /// Probability that a link has jitter; it is then uniform up to
    /// `min(max_jitter, RTT / 2)`.
    pub jitter: f64,
    /// Cap of a link's jitter.
    pub max_jitter: Duration,
    /// Probability that a link duplicates datagrams; its rate is then
    /// uniform up to `max_duplicate`.
    pub duplicate: f64,
    /// Highest duplication rate.
    pub max_duplicate: f64,
    /// Probability that a link corrupts datagrams; its rate is then
    /// log-uniform up to `max_corrupt`.
    pub corrupt: f64,
    /// Highest corruption rate.
    pub max_corrupt: f64,
    /// Faults.
    pub faults: FaultMix,
    /// Congestion controllers.
    pub cc: CcMix,
    /// Idle timeout of every session (kwik's default, 30 s).
    pub idle_timeout: Duration,
    /// Longest time without in-order progress before a run is `Hung`.
    pub hang_after: Duration,
    /// Overall virtual-time limit of a run (then `Slow` if still
    /// progressing).
    pub time_limit: Duration,
    /// Command that replays one seed, `{seed}` standing for it.
    pub replay: String,
}

impl ChaosConfig {
    /// The benchmark's mix: 4–32 MiB, windows 1–64 MiB, every fault, no
    /// corruption, Cubic / NewReno / BBR at 2 : 2 : 1.
    pub fn bench(max_loss: f64) -> Self {
        Self {
            max_loss,
            min_size: 4 * MIB,
            max_size: 32 * MIB,
            min_window: MIB,
            max_window: 64 * MIB,
            min_secondaries: 2,
            max_secondaries: 3,
            rate_mbit: (10, 200),
            rtt_ms: (10, 150),
            jitter: 0.5,
            max_jitter: Duration::from_millis(20),
            duplicate: 0.3,
            max_duplicate: 0.02,
            corrupt: 0.0,
            max_corrupt: 0.01,
            faults: FaultMix::default(),
            cc: CcMix {
                cubic: 2,
                new_reno: 2,
                bbr: 1,
            },
            idle_timeout: Duration::from_secs(30),
            hang_after: Duration::from_secs(60),
            time_limit: Duration::from_secs(3600),
            replay: format!(
                "cargo run --release --bin kwik-bench -- chaos --only {{seed}} --max-loss {max_loss}"
            ),
        }
    }

    /// The test's mix: smaller resources (1–16 MiB) and windows
    /// (256 KiB – 16 MiB) so that debug builds stay fast and flow control
    /// bites, loss up to 20 %, jitter, duplication, corruption, every fault,
    /// Cubic and NewReno only (bit-reproducible).
    pub fn test() -> Self {
        Self {
            min_size: MIB,
            max_size: 16 * MIB,
            min_window: 256 * KIB,
            max_window: 16 * MIB,
            corrupt: 0.3,
            cc: CcMix {
                cubic: 1,
                new_reno: 1,
                bbr: 0,
            },
            replay: "KWIK_CHAOS_SEED={seed} cargo test -p kwik-sim --test chaos -- --nocapture"
                .to_string(),
            ..Self::bench(0.2)
        }
    }

    /// The replay command for `seed`.
    pub fn replay_command(&self, seed: u64) -> String {
        self.replay.replace("{seed}", &seed.to_string())
    }
}

/// One server's link to the client (both directions alike, each with its
/// own queue).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// Rate, Mbit/s.
    pub mbit: u64,
    /// Round-trip time without queueing, ms.
    pub rtt_ms: u64,
    /// Random loss per datagram and direction.
    pub loss: f64,
    /// Extra uniform delay in `[0, jitter)` (reorders).
    pub jitter: Duration,
    /// Duplication probability.
    pub duplicate: f64,
    /// Corruption probability.
    pub corrupt: f64,
}

impl LinkSpec {
    /// A clean link.
    pub fn clean(mbit: u64, rtt_ms: u64) -> Self {
        Self {
            mbit,
            rtt_ms,
            loss: 0.0,
            jitter: Duration::ZERO,
            duplicate: 0.0,
            corrupt: 0.0,
        }
    }

    /// The simulator's configuration of one direction.
    pub fn config(&self) -> LinkConfig {
        ServerLink::new(self.mbit, self.rtt_ms)
            .config()
            .loss(self.loss)
            .jitter(self.jitter)
            .duplicate(self.duplicate)
            .corrupt(self.corrupt)
    }

    /// Time after an outage within which a death is still blamed on it:
    /// four round trips, jitter included, plus 200 ms.
    pub fn grace(&self) -> Duration {
        (Duration::from_millis(self.rtt_ms) + self.jitter) * 4 + Duration::from_millis(200)
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}Mbit/{}ms loss={:.4}",
            self.mbit, self.rtt_ms, self.loss
        )?;
        if !self.jitter.is_zero() {
            write!(f, " jitter={:.1}ms", self.jitter.as_secs_f64() * 1e3)?;
        }
        if self.duplicate > 0.0 {
            write!(f, " dup={:.4}", self.duplicate)?;
        }
        if self.corrupt > 0.0 {
            write!(f, " corrupt={:.4}", self.corrupt)?;
        }
        Ok(())
    }
}

/// What happens to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Every datagram from or to it is dropped for this long, then it is
    /// reachable again (its state intact).
    Outage(Duration),
    /// Every datagram from or to it is dropped from then on.
    Kill,
}

/// A fault of one server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// Index of the server (0 = the primary).
    pub server: usize,
    /// What happens.
    pub kind: FaultKind,
    /// Fires when the client application has read this share of the
    /// resource (0 = at the start).
    pub at_share: f64,
}

impl Fault {
    /// True for an outage at least as long as `idle` (the session, or the
    /// path, cannot survive it by the idle timeout's rules).
    pub fn is_long(&self, idle: Duration) -> bool {
        matches!(self.kind, FaultKind::Outage(d) if d >= idle)
    }
}

/// A chaos scenario: everything [`run`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its seed (also the simulation's).
    pub seed: u64,
    /// Links of the primary (first) and each secondary.
    pub links: Vec<LinkSpec>,
    /// Resource size, bytes.
    pub size: u64,
    /// The client's per-logical-stream window, bytes.
    pub window: u64,
    /// Congestion controller of every connection.
    pub cc: CongestionControl,
    /// Faults, in the order they were drawn.
    pub faults: Vec<Fault>,
    /// Idle timeout of every session.
    pub idle_timeout: Duration,
    /// Longest time without in-order progress before the run is `Hung`.
    pub hang_after: Duration,
    /// Overall virtual-time limit.
    pub time_limit: Duration,
    /// The command that replays it.
    pub replay: String,
}

/// Log-uniform draw in `[lo, hi]` (`lo` > 0).
fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    let u: f64 = rng.random_range(0.0..1.0);
    if hi <= lo {
        return hi;
    }
    (lo.ln() + u * (hi.ln() - lo.ln())).exp()
}

impl Scenario {
    /// The scenario of `seed` under `config`. Every draw is made whatever
    /// the configuration, in a fixed order, so that changing one
    /// probability does not reshuffle the rest of a seed's scenario.
    pub fn generate(seed: u64, config: &ChaosConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6368_616f_735f_6b77);
        let secondaries = rng.random_range(
            config.min_secondaries..=config.max_secondaries.max(config.min_secondaries),
        );
        let mut links = Vec::new();
        for _ in 0..=secondaries {
            let mbit = rng.random_range(config.rate_mbit.0..=config.rate_mbit.1);
            let rtt_ms = rng.random_range(config.rtt_ms.0..=config.rtt_ms.1);
            let lossless = rng.random_bool(0.25);
            let loss = log_uniform(&mut rng, config.max_loss.min(1e-4), config.max_loss);
            let jittery = rng.random_bool(config.jitter.clamp(0.0, 1.0));
            let jitter_share: f64 = rng.random_range(0.0..1.0);
            let duplicating = rng.random_bool(config.duplicate.clamp(0.0, 1.0));
            let dup_share: f64 = rng.random_range(0.0..1.0);
            let corrupting = rng.random_bool(config.corrupt.clamp(0.0, 1.0));
            let corrupt = log_uniform(&mut rng, config.max_corrupt.min(1e-4), config.max_corrupt);
            let jitter_cap = config.max_jitter.min(Duration::from_millis(rtt_ms) / 2);
            let jitter =
                Duration::from_micros((jitter_cap.as_micros() as f64 * jitter_share) as u64);
            links.push(LinkSpec {
                mbit,
                rtt_ms,
                loss: if lossless || config.max_loss <= 0.0 {
                    0.0
                } else {
                    loss
                },
                jitter: if jittery { jitter } else { Duration::ZERO },
                duplicate: if duplicating {
                    config.max_duplicate * dup_share
                } else {
                    0.0
                },
                corrupt: if corrupting && config.max_corrupt > 0.0 {
                    corrupt
                } else {
                    0.0
                },
            });
        }
        let round = |v: f64, unit: u64| ((v / unit as f64).round() as u64).max(1) * unit;
        let size = round(
            log_uniform(&mut rng, config.min_size as f64, config.max_size as f64),
            KIB,
        );
        let window = round(
            log_uniform(&mut rng, config.min_window as f64, config.max_window as f64),
            KIB,
        );
        let total = u64::from(config.cc.cubic + config.cc.new_reno + config.cc.bbr).max(1);
        let pick = rng.random_range(0..total);
        let cc = if pick < u64::from(config.cc.cubic) {
            CongestionControl::Cubic
        } else if pick < u64::from(config.cc.cubic + config.cc.new_reno) {
            CongestionControl::NewReno
        } else {
            CongestionControl::Bbr
        };
        // Faults: (wanted, which secondary, share, long?, duration share).
        let mut draw = |p: f64| {
            let on = rng.random_bool(p.clamp(0.0, 1.0));
            let who = rng.random_range(1..=secondaries);
            let share: f64 = rng.random_range(0.05..0.9);
            let long = rng.random_bool(config.faults.long_outage.clamp(0.0, 1.0));
            let u: f64 = rng.random_range(0.0..1.0);
            (on, who, share, long, u)
        };
        let idle = config.idle_timeout;
        let outage = |long: bool, u: f64| {
            let secs = if long {
                // 2 s to 30 s above the idle timeout.
                idle.as_secs_f64() + 2.0 + 28.0 * u
            } else {
                // 0.2 s to two thirds of the idle timeout, log-uniform.
                let hi = idle.as_secs_f64() * 2.0 / 3.0;
                (0.2f64.ln() + u * (hi.ln() - 0.2f64.ln())).exp()
            };
            Duration::from_millis((secs * 1e3) as u64)
        };
        let sec_outage = draw(config.faults.secondary_outage);
        let sec_kill = draw(config.faults.secondary_kill);
        let pri_kill = draw(config.faults.primary_kill);
        let pri_outage = draw(config.faults.primary_outage);
        let mut faults = Vec::new();
        if sec_outage.0 {
            faults.push(Fault {
                server: sec_outage.1,
                kind: FaultKind::Outage(outage(sec_outage.3, sec_outage.4)),
                at_share: sec_outage.2,
            });
        }
        if sec_kill.0 {
            // Another secondary than the one in an outage, if any.
            let mut server = sec_kill.1;
            if sec_outage.0 && server == sec_outage.1 {
                server = server % secondaries + 1;
            }
            faults.push(Fault {
                server,
                kind: FaultKind::Kill,
                at_share: sec_kill.2,
            });
        }
        if pri_kill.0 {
            faults.push(Fault {
                server: 0,
                kind: FaultKind::Kill,
                at_share: pri_kill.2,
            });
        } else if pri_outage.0 {
            faults.push(Fault {
                server: 0,
                kind: FaultKind::Outage(outage(pri_outage.3, pri_outage.4)),
                at_share: pri_outage.2,
            });
        }
        Scenario {
            seed,
            links,
            size,
            window,
            cc,
            faults,
            idle_timeout: config.idle_timeout,
            hang_after: config.hang_after,
            time_limit: config.time_limit,
            replay: config.replay_command(seed),
        }
    }

    /// A fault-free scenario over clean links, judged like a generated one
    /// (for hand-made cases).
    pub fn clean(seed: u64, links: Vec<LinkSpec>, size: u64, window: u64) -> Self {
        let config = ChaosConfig::test();
        Scenario {
            seed,
            links,
            size,
            window,
            cc: CongestionControl::Cubic,
            faults: Vec::new(),
            idle_timeout: config.idle_timeout,
            hang_after: config.hang_after,
            time_limit: config.time_limit,
            replay: config.replay_command(seed),
        }
    }

    /// Number of QUIC connections the client may hold (one per server).
    pub fn connections(&self) -> usize {
        self.links.len()
    }

    /// The client heap bound: `(2 + connections) × window + 16 MiB`.
    pub fn heap_bound(&self) -> u64 {
        (2 + self.connections() as u64) * self.window + 16 * MIB
    }

    /// The congestion controller's name.
    pub fn cc_name(&self) -> &'static str {
        cc_name(self.cc)
    }

    /// True if the run is bit-for-bit reproducible (not BBR).
    pub fn reproducible(&self) -> bool {
        self.cc != CongestionControl::Bbr
    }

    /// Highest link loss.
    pub fn max_link_loss(&self) -> f64 {
        self.links.iter().map(|l| l.loss).fold(0.0, f64::max)
    }

    /// The links, one `s<i>: …` entry each (`p` for the primary).
    pub fn links_summary(&self) -> String {
        let mut out = String::new();
        for (i, l) in self.links.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let _ = write!(out, "{}: {l}", server_name(i));
        }
        out
    }

    /// The faults, one entry each (`none` without).
    pub fn faults_summary(&self) -> String {
        if self.faults.is_empty() {
            return "none".to_string();
        }
        let mut out = String::new();
        for (i, f) in self.faults.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let at = f.at_share * 100.0;
            match f.kind {
                FaultKind::Kill => {
                    let _ = write!(out, "kill {} at {at:.0}%", server_name(f.server));
                }
                FaultKind::Outage(d) => {
                    let _ = write!(
                        out,
                        "{} outage {} at {at:.0}% for {:.1}s",
                        if f.is_long(self.idle_timeout) {
                            "long"
                        } else {
                            "short"
                        },
                        server_name(f.server),
                        d.as_secs_f64()
                    );
                }
            }
        }
        out
    }

    /// One line describing the whole scenario.
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} secondaries, {} KiB, window {} KiB, {}; links [{}]; faults [{}]",
            self.seed,
            self.links.len() - 1,
            self.size / KIB,
            self.window / KIB,
            self.cc_name(),
            self.links_summary(),
            self.faults_summary()
        )
    }
}

/// `p` for the primary, `s1`, `s2`, … for secondaries.
pub fn server_name(i: usize) -> String {
    if i == 0 {
        "p".to_string()
    } else {
        format!("s{i}")
    }
}

/// Lower-case name of a congestion controller.
pub fn cc_name(cc: CongestionControl) -> &'static str {
    match cc {
        CongestionControl::Cubic => "cubic",
        CongestionControl::NewReno => "newreno",
        CongestionControl::Bbr => "bbr",
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Every byte read once, in order, verified; end of stream seen.
    Delivered,
    /// The session ended with an error while the primary was unreachable.
    PrimaryDeadError,
    /// The session ended with an error while the primary was reachable.
    PrimaryAliveFailure,
    /// The session is open and in-order delivery stopped.
    Hung,
    /// Still progressing at the overall time limit.
    Slow,
    /// A wrong or missing byte reached the application.
    Corrupt,
    /// A byte reached the application twice.
    Duplicate,
    /// Something panicked.
    Panicked,
}

impl Outcome {
    /// Every outcome, in summary order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Delivered,
        Outcome::PrimaryDeadError,
        Outcome::PrimaryAliveFailure,
        Outcome::Hung,
        Outcome::Slow,
        Outcome::Corrupt,
        Outcome::Duplicate,
        Outcome::Panicked,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::PrimaryDeadError => "primary_dead_error",
            Outcome::PrimaryAliveFailure => "primary_alive_failure",
            Outcome::Hung => "hung",
            Outcome::Slow => "slow",
            Outcome::Corrupt => "corrupt",
            Outcome::Duplicate => "duplicate",
            Outcome::Panicked => "panicked",
        }
    }

    /// True for the outcomes kwik must produce: delivered, or a session
    /// that ended because its primary was gone.
    pub fn acceptable(self) -> bool {
        matches!(self, Outcome::Delivered | Outcome::PrimaryDeadError)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct FiredFault {
    /// The fault.
    pub fault: Fault,
    /// When it started (virtual time since the start).
    pub from: Duration,
    /// When it ended (`None`: never, a kill, or still on at the end).
    pub until: Option<Duration>,
}

/// A path declared dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// When (virtual time since the start).
    pub at: Duration,
    /// The path.
    pub path: PathId,
    /// Its server (index into the scenario's links), if known.
    pub server: Option<usize>,
    /// `"client"` or `"primary"`.
    pub by: &'static str,
    /// Whether its server was killed or in (or just out of) an outage, or
    /// the declaring primary was cut off — judged at the path's first
    /// declaration.
    pub justified: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The scenario.
    pub scenario: Scenario,
    /// The verdict.
    pub outcome: Outcome,
    /// Why the client session ended, if it did.
    pub close_reason: Option<String>,
    /// Virtual time when the outcome was decided.
    pub virtual_time: Duration,
    /// When the application read the last byte (delivered runs).
    pub completion: Option<Duration>,
    /// Bytes the application read in order (the frontier).
    pub read: u64,
    /// When in-order delivery last progressed.
    pub last_progress: Duration,
    /// Secondary paths that joined (client's `PathAdded` events).
    pub paths_added: u64,
    /// Paths that failed to join.
    pub paths_failed: u64,
    /// Paths declared dead, by either side.
    pub deaths: Vec<Death>,
    /// Distinct paths declared dead without cause.
    pub false_deaths: u64,
    /// `PathAdded` for a secondary address after a `PathFailed` or
    /// `PathDead` of that address.
    pub paths_readded: u64,
    /// Average capacity of the reachable links until completion, Mbit/s.
    pub capacity_mbit: Option<f64>,
    /// Resource bits over completion time, Mbit/s.
    pub goodput_mbit: Option<f64>,
    /// `goodput / capacity` (see the module docs).
    pub goodput_vs_capacity: Option<f64>,
    /// The client's heap peak, bytes (`None` without the counting
    /// allocator or without a free meter).
    pub heap_peak: Option<u64>,
    /// The bound it is held to.
    pub heap_bound: u64,
    /// The faults that fired.
    pub fired: Vec<FiredFault>,
    /// Why a primary-dead error came too late, if it did.
    pub late_error: Option<String>,
    /// State at the end, for failed runs: frontier, paths, outstanding
    /// delegations, the path-event timeline.
    pub diagnosis: String,
    /// The panic message, if any.
    pub panic: Option<String>,
    /// Counters of every link direction, summed (corrupted, duplicated,
    /// dropped datagrams …).
    pub link_stats: LinkStats,
    /// Counters of each server's direction towards the client (primary
    /// first).
    pub downlinks: Vec<LinkStats>,
    /// Digest of the simulation trace (events are traced only with
    /// [`TraceMode::Digest`] or [`TraceMode::Verbose`]).
    pub digest: u64,
    /// Wall-clock time of the run.
    pub wall: Duration,
    /// What the state machines' events and histories showed that the
    /// tables of PROTOCOL.md §15 forbid, or sessions that did not end
    /// `Closed`.
    pub state_violations: Vec<String>,
    /// The distinct transitions every node reported.
    pub observed: Observed,
}

impl RunResult {
    /// Everything the test asserts that does not hold: an outcome other
    /// than delivered / primary-dead error, a late error, the heap bound.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.outcome.acceptable() {
            let mut s = format!("outcome {}", self.outcome);
            if let Some(r) = &self.close_reason {
                let _ = write!(s, " ({r})");
            }
            if let Some(p) = &self.panic {
                let _ = write!(s, ": {p}");
            }
            v.push(s);
        }
        if let Some(late) = &self.late_error {
            v.push(late.clone());
        }
        v.extend(
            self.state_violations
                .iter()
                .map(|s| format!("state machine: {s}")),
        );
        if let Some(peak) = self.heap_peak
            && peak > self.heap_bound
        {
            v.push(format!(
                "client heap peak {:.1} MiB above the bound {:.1} MiB",
                peak as f64 / MIB as f64,
                self.heap_bound as f64 / MIB as f64
            ));
        }
        v
    }

    /// True if [`violations`](Self::violations) is empty.
    pub fn passed(&self) -> bool {
        self.violations().is_empty()
    }

    /// A multi-line account for failure messages.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.scenario.summary());
        let _ = writeln!(
            out,
            "outcome {} at {:.3} s virtual: read {} of {} bytes, last progress at {:.3} s{}",
            self.outcome,
            self.virtual_time.as_secs_f64(),
            self.read,
            self.scenario.size,
            self.last_progress.as_secs_f64(),
            self.close_reason
                .as_ref()
                .map_or(String::new(), |r| format!(", session closed: {r}"))
        );
        for v in self.violations() {
            let _ = writeln!(out, "violation: {v}");
        }
        if !self.diagnosis.is_empty() {
            out.push_str(&self.diagnosis);
        }
        let _ = writeln!(out, "replay: {}", self.scenario.replay);
        out
    }
}

/// What the trace records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceMode {
    /// Nothing but the chaos lines (fastest).
    Off,
    /// Every endpoint event, into the digest only.
    Digest,
    /// Every endpoint event, kept; path and session events are printed to
    /// stderr at the end.
    Verbose,
    /// As `Verbose`, plus every datagram sent, dropped or delivered (for
    /// chasing a stall at the packet level).
    Datagrams,
}

/// Knobs of [`run`] that are not part of the scenario.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Tracing.
    pub trace: TraceMode,
    /// Stop the client application from reading once it has read this share
    /// (to check the judge).
    pub freeze_client_at: Option<f64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            trace: TraceMode::Off,
            freeze_client_at: None,
        }
    }
}

/// Meters handed out to concurrent runs (this module uses the upper half).
static METERS_IN_USE: AtomicU32 = AtomicU32::new(0);
const FIRST_METER: usize = METERS / 2;

/// A meter reserved for one run; released on drop.
struct MeterLease(Meter);

impl MeterLease {
    fn take() -> Option<Self> {
        for i in FIRST_METER..METERS {
            let bit = 1u32 << i;
            if METERS_IN_USE.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
                return Some(MeterLease(Meter(i)));
            }
        }
        None
    }
}

impl Drop for MeterLease {
    fn drop(&mut self) {
        METERS_IN_USE.fetch_and(!(1u32 << self.0.0), Ordering::AcqRel);
    }
}

/// Runs `scenario`, catching panics (reported as [`Outcome::Panicked`]).
pub fn run(scenario: &Scenario, options: &RunOptions) -> RunResult {
    let started = Instant::now();
    match catch_unwind(AssertUnwindSafe(|| run_inner(scenario, options))) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            RunResult {
                scenario: scenario.clone(),
                outcome: Outcome::Panicked,
                close_reason: None,
                virtual_time: Duration::ZERO,
                completion: None,
                read: 0,
                last_progress: Duration::ZERO,
                paths_added: 0,
                paths_failed: 0,
                deaths: Vec::new(),
                false_deaths: 0,
                paths_readded: 0,
                capacity_mbit: None,
                goodput_mbit: None,
                goodput_vs_capacity: None,
                heap_peak: None,
                heap_bound: scenario.heap_bound(),
                fired: Vec::new(),
                late_error: None,
                diagnosis: String::new(),
                panic: Some(msg),
                link_stats: LinkStats::default(),
                downlinks: Vec::new(),
                digest: 0,
                wall: started.elapsed(),
                state_violations: Vec::new(),
                observed: Observed::default(),
            }
        }
    }
}

fn client_app(s: &crate::sim::Sim, id: crate::NodeId) -> &MultiClient {
    &s.node::<KwikNode<MultiClient>>(id).app
}

/// Where a fault stands during a run.
struct Armed {
    fault: Fault,
    /// Bytes read that fire it.
    threshold: u64,
    fired: Option<Duration>,
    until: Option<Duration>,
}

fn run_inner(sc: &Scenario, options: &RunOptions) -> RunResult {
    let started = Instant::now();
    let links = sc
        .links
        .iter()
        .map(|l| ServerLink::new(l.mbit, l.rtt_ms))
        .collect();
    let mut mo = MultiOptions::new(sc.seed, links, sc.size);
    mo.stream_window = sc.window;
    mo.congestion = sc.cc;
    let idle = sc.idle_timeout;
    mo.tune_client = Box::new(move |c| c.transport.idle_timeout = idle);
    mo.tune_server = Box::new(move |_, c| c.transport.idle_timeout = idle);
    let mut s = MultiSetup::new(mo, |p| p.start = Start::Immediately);
    for (i, l) in sc.links.iter().enumerate() {
        let server = s.servers[i];
        s.sim.set_path(s.client_addr, server, l.config());
    }
    let events = options.trace != TraceMode::Off;
    s.sim.trace_mut().set_keep_lines(matches!(
        options.trace,
        TraceMode::Verbose | TraceMode::Datagrams
    ));
    s.sim
        .trace_mut()
        .set_datagrams(options.trace == TraceMode::Datagrams);
    s.client_node().trace_events = events;
    s.primary_node().trace_events = events;
    for id in s.secondaries.clone() {
        s.sim.node_mut::<KwikNode<SecondaryApp>>(id).trace_events = events;
    }
    let lease = if crate::alloc::installed() {
        MeterLease::take()
    } else {
        None
    };
    let baseline = lease.as_ref().map(|l| {
        s.sim.meter(s.client, l.0);
        l.0.reset_peak();
        l.0.current()
    });

    let size = sc.size;
    let mut armed: Vec<Armed> = sc
        .faults
        .iter()
        .map(|f| Armed {
            fault: *f,
            threshold: ((size as f64 * f.at_share) as u64).min(size),
            fired: None,
            until: None,
        })
        .collect();
    let freeze_at = options
        .freeze_client_at
        .map(|share| ((size as f64 * share) as u64).min(size));
    let client = s.client;
    let stream = first_server_stream();
    let mut last_read = 0u64;
    let mut last_progress = Duration::ZERO;
    let mut idle_sim = false;
    let outcome = loop {
        let now = s.sim.elapsed();
        // Decided?
        let c = s.client();
        let read = c.total();
        if read != last_read {
            last_read = read;
            last_progress = now;
        }
        if c.corrupt > 0 {
            break Outcome::Corrupt;
        }
        if read > size {
            break Outcome::Duplicate;
        }
        if c.finished.contains(&stream) {
            break if read == size {
                Outcome::Delivered
            } else {
                Outcome::Corrupt
            };
        }
        if c.closed.is_some() {
            break classify_error(sc, &armed, c.closed_at.map(|t| since(&s, t)));
        }
        if let Some(at) = freeze_at
            && read >= at
            && !c.paused
        {
            s.client_node().app.paused = true;
        }
        // Faults due by progress, outages due to end.
        for a in armed.iter_mut() {
            if a.fired.is_none() && read >= a.threshold {
                a.fired = Some(now);
                let addr = s.servers[a.fault.server];
                s.sim.set_down(addr, true);
                if let FaultKind::Outage(d) = a.fault.kind {
                    a.until = Some(now + d);
                }
                let text = match a.fault.kind {
                    FaultKind::Kill => format!("chaos: {addr} killed"),
                    FaultKind::Outage(d) => {
                        format!("chaos: {addr} down for {:.3} s", d.as_secs_f64())
                    }
                };
                s.sim.trace_mut().record_at(now, usize::MAX, text);
            }
            if let (Some(until), FaultKind::Outage(_)) = (a.until, a.fault.kind)
                && until <= now
                && a.fired.is_some()
                && s.sim.is_down(s.servers[a.fault.server])
            {
                let addr = s.servers[a.fault.server];
                s.sim.set_down(addr, false);
                s.sim
                    .trace_mut()
                    .record_at(now, usize::MAX, format!("chaos: {addr} back up"));
            }
        }
        if now >= last_progress + sc.hang_after || idle_sim {
            break Outcome::Hung;
        }
        if now >= sc.time_limit {
            break Outcome::Slow;
        }
        // Run to the next thing to check.
        let mut next = (last_progress + sc.hang_after).min(sc.time_limit);
        for a in &armed {
            if let Some(until) = a.until
                && until > now
                && s.sim.is_down(s.servers[a.fault.server])
            {
                next = next.min(until);
            }
        }
        let threshold = armed
            .iter()
            .filter(|a| a.fired.is_none())
            .map(|a| a.threshold)
            .min()
            .unwrap_or(u64::MAX);
        let freeze = freeze_at.unwrap_or(u64::MAX);
        let mut seen = last_read;
        let mut seen_at = last_progress;
        let result = s.sim.run_while(next.saturating_sub(now), |sim| {
            let c = client_app(sim, client);
            let read = c.total();
            if read != seen {
                seen = read;
                seen_at = sim.elapsed();
            }
            !(c.finished.contains(&stream)
                || c.closed.is_some()
                || c.corrupt > 0
                || read > size
                || read >= threshold
                || (read >= freeze && !c.paused))
        });
        last_read = seen;
        last_progress = seen_at;
        match result {
            Ok(_) => {}
            Err(e) if e.reason == StallReason::TimeLimit => {}
            Err(_) => {
                // Nothing in flight, no timer: only an outage's end can
                // change anything.
                let end = armed
                    .iter()
                    .filter_map(|a| a.until.filter(|u| *u > now))
                    .min();
                match end {
                    Some(end) => s.sim.run_until(end),
                    None => idle_sim = true,
                }
            }
        }
    };
    let end = s.sim.elapsed();
    let heap_peak = lease
        .as_ref()
        .zip(baseline)
        .map(|(l, base)| (l.0.peak() - base).max(0) as u64);
    drop(lease);
    let mut r = finish(
        &mut s,
        sc,
        options,
        outcome,
        end,
        last_progress,
        &armed,
        heap_peak,
        started,
    );
    let (violations, observed) = settle_states(&mut s, sc.idle_timeout + Duration::from_secs(10));
    r.state_violations = violations;
    r.observed = observed;
    r
}

/// Holds every node of `s` to the state machines (see the module docs):
/// what they reported and hold now, then — every server back up, the
/// client's session closed — that every session drains `Closed` within
/// `limit` of virtual time. Returns the violations and the transitions
/// seen.
pub fn settle_states(s: &mut MultiSetup, limit: Duration) -> (Vec<String>, Observed) {
    // Whatever was done to an endpoint from outside is drained first.
    let nodes = [s.client, s.primary]
        .into_iter()
        .chain(s.secondaries.iter().copied());
    for id in nodes.collect::<Vec<_>>() {
        s.sim.touch(id);
    }
    let _ = s.sim.run_while(Duration::ZERO, |_| false);
    fn each<T>(
        s: &mut MultiSetup,
        mut f: impl FnMut(&str, &mut KwikEndpoint, &StateLog) -> T,
    ) -> Vec<T> {
        let mut out = Vec::new();
        let node = s.sim.node_mut::<KwikNode<MultiClient>>(s.client);
        out.push(f("client", &mut node.endpoint, &node.states));
        let node = s.sim.node_mut::<KwikNode<MultiPrimary>>(s.primary);
        out.push(f("primary", &mut node.endpoint, &node.states));
        for (i, id) in s.secondaries.clone().into_iter().enumerate() {
            let node = s.sim.node_mut::<KwikNode<SecondaryApp>>(id);
            out.push(f(
                &format!("secondary {}", i + 1),
                &mut node.endpoint,
                &node.states,
            ));
        }
        out
    }
    let mut violations: Vec<String> = each(s, |name, ep, log| {
        let mut v = log.violations();
        v.extend(check_endpoint(ep, log));
        v.into_iter()
            .map(|x| format!("{name}: {x}"))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    for a in s.servers.clone() {
        s.sim.set_down(a, false);
    }
    let client = s.client;
    let node = s.sim.node_mut::<KwikNode<MultiClient>>(client);
    if let Some(h) = node.app.session
        && let Some(mut view) = node.endpoint.session(h)
    {
        let _ = view.close(0, b"chaos: done");
    }
    s.sim.touch(client);
    let (primary, secondaries) = (s.primary, s.secondaries.clone());
    let undrained = |sim: &crate::sim::Sim| {
        !sim.node::<KwikNode<MultiClient>>(client)
            .states
            .undrained()
            .is_empty()
            || !sim
                .node::<KwikNode<MultiPrimary>>(primary)
                .states
                .undrained()
                .is_empty()
            || secondaries.iter().any(|id| {
                !sim.node::<KwikNode<SecondaryApp>>(*id)
                    .states
                    .undrained()
                    .is_empty()
            })
    };
    let _ = s.sim.run_while(limit, |sim| undrained(sim));
    let mut observed = Observed::default();
    let end: Vec<Vec<String>> = each(s, |name, _, log| {
        observed.add(log);
        let mut v = log.violations();
        v.extend(
            log.undrained()
                .into_iter()
                .map(|h| format!("{h} did not end Closed")),
        );
        v.into_iter().map(|x| format!("{name}: {x}")).collect()
    });
    violations.extend(end.into_iter().flatten());
    violations.sort();
    violations.dedup();
    (violations, observed)
}

fn since(s: &MultiSetup, t: Instant) -> Duration {
    t.saturating_duration_since(s.sim.start())
}

/// Error outcome: was the primary unreachable when the session ended?
fn classify_error(sc: &Scenario, armed: &[Armed], closed_at: Option<Duration>) -> Outcome {
    let closed_at = closed_at.unwrap_or(Duration::MAX);
    let dead = armed.iter().any(|a| {
        a.fault.server == 0
            && a.fired.is_some_and(|f| f <= closed_at)
            && (a.fault.kind == FaultKind::Kill || a.fault.is_long(sc.idle_timeout))
    });
    if dead {
        Outcome::PrimaryDeadError
    } else {
        Outcome::PrimaryAliveFailure
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    s: &mut MultiSetup,
    sc: &Scenario,
    options: &RunOptions,
    outcome: Outcome,
    end: Duration,
    last_progress: Duration,
    armed: &[Armed],
    heap_peak: Option<u64>,
    started: Instant,
) -> RunResult {
    let fired: Vec<FiredFault> = armed
        .iter()
        .filter_map(|a| {
            a.fired.map(|from| FiredFault {
                fault: a.fault,
                from,
                until: a.until.filter(|u| *u <= end),
            })
        })
        .collect();
    // Path id → server index, from both sides' records.
    let mut by_addr: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for (i, a) in s.servers.iter().enumerate() {
        by_addr.insert(*a, i);
    }
    let c = s.client();
    let p = s.primary();
    let mut path_server: BTreeMap<PathId, usize> = BTreeMap::new();
    path_server.insert(PathId::PRIMARY, 0);
    for (id, a) in c.path_addrs.iter().chain(p.path_addrs.iter()) {
        if let Some(&i) = by_addr.get(a) {
            path_server.insert(*id, i);
        }
    }
    for (a, id) in &p.path_ids {
        if let Some(&i) = by_addr.get(a) {
            path_server.entry(*id).or_insert(i);
        }
    }
    let start = s.sim.start();
    let at = |t: &Instant| t.saturating_duration_since(start);
    // A server is "down" at t if killed before t, or within an outage
    // (plus grace) around t.
    let justified = |server: usize, t: Duration| {
        fired.iter().any(|f| {
            f.fault.server == server
                && f.from <= t
                && match f.fault.kind {
                    FaultKind::Kill => true,
                    FaultKind::Outage(d) => t <= f.from + d + sc.links[server].grace(),
                }
        })
    };
    let mut deaths = Vec::new();
    let client_closed = c.closed_at.map(|t| at(&t));
    let primary_closed = p
        .log
        .iter()
        .find(|(_, e)| matches!(e, Event::SessionClosed { .. }))
        .map(|(t, _)| at(t));
    for (by, log, closed) in [
        ("client", &c.log, client_closed),
        ("primary", &p.log, primary_closed),
    ] {
        for (t, e) in log {
            if let Event::PathDead { path, .. } = e {
                let t = at(t);
                if closed.is_some_and(|cl| t >= cl) {
                    continue; // the session's end takes its paths along
                }
                let server = path_server.get(path).copied();
                // The primary cut off from the client cannot hear about its
                // paths: what it declares then is the primary fault's doing.
                let cut_off = by == "primary" && justified(0, t);
                deaths.push(Death {
                    at: t,
                    path: *path,
                    server,
                    by,
                    justified: cut_off || server.is_some_and(|sv| justified(sv, t)),
                });
            }
        }
    }
    deaths.sort_by_key(|d| (d.at, d.path, d.by));
    // One death per path: the primary usually repeats what the client
    // reported (late if it was cut off meanwhile), so every declaration of
    // a path is judged like its first.
    let mut first: BTreeMap<PathId, bool> = BTreeMap::new();
    for d in &mut deaths {
        d.justified = *first.entry(d.path).or_insert(d.justified);
    }
    let false_deaths = deaths
        .iter()
        .filter(|d| !d.justified)
        .map(|d| d.path)
        .collect::<BTreeSet<_>>()
        .len() as u64;
    // Added / failed / re-added, from the client's log.
    let mut paths_added = 0;
    let mut paths_failed = 0;
    let mut paths_readded = 0;
    let mut gone: BTreeSet<SocketAddr> = BTreeSet::new();
    for (_, e) in &c.log {
        match e {
            Event::PathAdded { path, .. } => {
                paths_added += 1;
                if let Some(a) = c.path_addrs.get(path)
                    && gone.contains(a)
                {
                    paths_readded += 1;
                }
            }
            Event::PathFailed { path, .. } => {
                paths_failed += 1;
                gone.extend(c.path_addrs.get(path));
            }
            Event::PathDead { path, .. } => {
                gone.extend(c.path_addrs.get(path));
            }
            _ => {}
        }
    }
    let read = c.total();
    let completion = match outcome {
        Outcome::Delivered => c.last_byte.map(|t| at(&t)),
        _ => None,
    };
    // Capacity: Σ rate × reachable time in [0, T].
    let (capacity_mbit, goodput_mbit, ratio) = match completion {
        Some(t) if !t.is_zero() => {
            let mut bits = 0.0;
            for (i, l) in sc.links.iter().enumerate() {
                let mut down = Duration::ZERO;
                for f in fired.iter().filter(|f| f.fault.server == i) {
                    let stop = match f.fault.kind {
                        FaultKind::Kill => t,
                        FaultKind::Outage(d) => (f.from + d).min(t),
                    };
                    down += stop.saturating_sub(f.from.min(t));
                }
                bits += l.mbit as f64 * 1e6 * t.saturating_sub(down).as_secs_f64();
            }
            let secs = t.as_secs_f64();
            let capacity = bits / secs / 1e6;
            let goodput = size_bits(sc.size) / secs / 1e6;
            (Some(capacity), Some(goodput), Some(goodput / capacity))
        }
        _ => (None, None, None),
    };
    // A primary-dead error must come within the idle timeout (plus slack)
    // of the primary going away.
    let late_error = if outcome == Outcome::PrimaryDeadError {
        let gone_at = fired
            .iter()
            .filter(|f| {
                f.fault.server == 0
                    && (f.fault.kind == FaultKind::Kill || f.fault.is_long(sc.idle_timeout))
            })
            .map(|f| f.from)
            .min();
        let slack = Duration::from_secs(5) + Duration::from_millis(sc.links[0].rtt_ms) * 4;
        match (gone_at, client_closed) {
            (Some(g), Some(cl)) if cl > g + sc.idle_timeout + slack => Some(format!(
                "the session ended {:.1} s after the primary went away (bound: idle timeout \
                 {:.0} s + {:.1} s)",
                (cl - g).as_secs_f64(),
                sc.idle_timeout.as_secs_f64(),
                slack.as_secs_f64()
            )),
            _ => None,
        }
    } else {
        None
    };
    let close_reason = c.closed.as_ref().map(|r| r.to_string());
    let verbose = matches!(options.trace, TraceMode::Verbose | TraceMode::Datagrams);
    let diagnosis = if outcome == Outcome::Delivered && !verbose {
        String::new()
    } else {
        diagnose(s, sc, &deaths, &path_server, end, last_progress)
    };
    if verbose {
        print_trace(s);
    }
    RunResult {
        scenario: sc.clone(),
        outcome,
        close_reason,
        virtual_time: end,
        completion,
        read,
        last_progress,
        paths_added,
        paths_failed,
        deaths,
        false_deaths,
        paths_readded,
        capacity_mbit,
        goodput_mbit,
        goodput_vs_capacity: ratio,
        heap_peak,
        heap_bound: sc.heap_bound(),
        fired,
        late_error,
        diagnosis,
        panic: None,
        link_stats: s.sim.total_link_stats(),
        downlinks: s
            .servers
            .iter()
            .map(|a| s.sim.link_stats(*a, s.client_addr))
            .collect(),
        digest: s.sim.trace().digest(),
        wall: started.elapsed(),
        state_violations: Vec::new(),
        observed: Observed::default(),
    }
}

fn size_bits(size: u64) -> f64 {
    size as f64 * 8.0
}

/// Frontier, path states, outstanding delegations and the path-event
/// timeline of both sides.
fn diagnose(
    s: &mut MultiSetup,
    sc: &Scenario,
    deaths: &[Death],
    path_server: &BTreeMap<PathId, usize>,
    end: Duration,
    last_progress: Duration,
) -> String {
    let mut out = String::new();
    let start = s.sim.start();
    let at = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
    let name = |p: &PathId| {
        path_server
            .get(p)
            .map_or_else(|| "?".to_string(), |i| server_name(*i))
    };
    let c = s.client();
    let _ = writeln!(
        out,
        "  frontier {} of {} bytes ({:.1} %), last progress at {:.3} s, stopped at {:.3} s",
        c.total(),
        sc.size,
        c.total() as f64 * 100.0 / sc.size as f64,
        last_progress.as_secs_f64(),
        end.as_secs_f64()
    );
    let frontier = c.total();
    let _ = writeln!(out, "  {}", frontier_hint(s, frontier, &name));
    for d in deaths {
        let _ = writeln!(
            out,
            "  {} declared {} ({}) dead at {:.3} s{}",
            d.by,
            d.path,
            d.server.map_or("?".to_string(), server_name),
            d.at.as_secs_f64(),
            if d.justified { "" } else { " — FALSE death" }
        );
    }
    for (i, a) in s.servers.iter().enumerate() {
        let st = s.sim.link_stats(*a, s.client_addr);
        let _ = writeln!(
            out,
            "  link {} -> client: {} datagrams ({} bytes) delivered, {} lost, {} queue drops, \
             {} blackholed",
            server_name(i),
            st.delivered,
            st.bytes_delivered,
            st.dropped_loss,
            st.dropped_queue,
            st.dropped_blackhole
        );
    }
    // Client view.
    let client = s.client_node();
    if let Some(h) = client.app.session
        && let Some(mut v) = client.endpoint.session(h)
    {
        let st = v.stats();
        let _ = writeln!(
            out,
            "  client session: received {} payload bytes, {} buffered, cwnd {}, {} lost \
             packets on the primary",
            st.bytes_received, st.buffered, st.cwnd, st.lost_packets
        );
        for info in v.paths(PathFilter::All) {
            let _ = writeln!(
                out,
                "  client {} ({}) {:?}, last heard {:.3} s, {} bytes received, {} lost",
                info.id,
                name(&info.id),
                info.state,
                at(info.last_active),
                info.bytes_received,
                info.lost_packets
            );
        }
    }
    let primary = s.primary_node();
    if let Some(h) = primary.app.session
        && let Some(mut v) = primary.endpoint.session(h)
    {
        let outstanding = v.outstanding();
        let _ = writeln!(
            out,
            "  primary: {} delegations outstanding{}",
            outstanding.len(),
            if outstanding.is_empty() { "" } else { ":" }
        );
        for d in outstanding.iter().take(12) {
            let _ = writeln!(
                out,
                "    {} ({}) [{}, {}){}",
                d.path,
                name(&d.path),
                d.range.start,
                d.range.end,
                if d.fin { " fin" } else { "" }
            );
        }
        for info in v.paths(PathFilter::All) {
            let _ = writeln!(
                out,
                "  primary {} ({}) {:?}",
                info.id,
                name(&info.id),
                info.state
            );
        }
    } else {
        let _ = writeln!(out, "  primary: session gone");
    }
    // Timeline.
    let c = s.client();
    let p = s.primary();
    let mut timeline: Vec<(Instant, &'static str, String)> = Vec::new();
    for (t, e) in &c.log {
        timeline.push((*t, "client", event_text(e, &name)));
    }
    for (t, e) in &p.log {
        timeline.push((*t, "primary", event_text(e, &name)));
    }
    timeline.sort_by_key(|(t, by, _)| (*t, *by));
    for (t, by, text) in timeline.iter().take(40) {
        let _ = writeln!(out, "  {:9.3} s {by}: {text}", at(*t));
    }
    if timeline.len() > 40 {
        let _ = writeln!(out, "  … {} more events", timeline.len() - 40);
    }
    out
}

/// Who owes the byte at the frontier: an outstanding delegation, a range
/// lost with a path (and whether it was handed out again), or the primary.
fn frontier_hint(s: &mut MultiSetup, frontier: u64, name: &impl Fn(&PathId) -> String) -> String {
    let start = s.sim.start();
    let lost = s.primary().log.iter().find_map(|(t, e)| match e {
        Event::RangesLost { path, ranges, .. } => ranges
            .iter()
            .find(|d| d.range.contains(&frontier))
            .map(|d| (*t, *path, d.range.clone())),
        _ => None,
    });
    let node = s.primary_node();
    let owed = node
        .app
        .session
        .and_then(|h| node.endpoint.session(h))
        .map(|v| {
            v.outstanding()
                .into_iter()
                .find(|d| d.range.contains(&frontier))
        });
    let mut out = format!("frontier {frontier}: ");
    match owed {
        Some(Some(d)) => {
            let _ = write!(
                out,
                "owed by {} ({}) in [{}, {})",
                d.path,
                name(&d.path),
                d.range.start,
                d.range.end
            );
        }
        Some(None) => out
            .push_str("not in any outstanding delegation (the primary's own share or unassigned)"),
        None => out.push_str("primary session gone"),
    }
    if let Some((t, path, range)) = lost {
        let _ = write!(
            out,
            "; lies in [{}, {}) lost with {path} ({}) at {:.3} s",
            range.start,
            range.end,
            name(&path),
            t.saturating_duration_since(start).as_secs_f64()
        );
    }
    out
}

fn event_text(e: &Event, name: &impl Fn(&PathId) -> String) -> String {
    match e {
        Event::PathAdded { path, .. } => format!("PathAdded {path} ({})", name(path)),
        Event::PathFailed { path, failure, .. } => {
            format!("PathFailed {path} ({}): {failure}", name(path))
        }
        Event::PathDead { path, failure, .. } => {
            format!("PathDead {path} ({}): {failure}", name(path))
        }
        Event::PathClosed { path, .. } => format!("PathClosed {path} ({})", name(path)),
        Event::SessionClosed { reason, .. } => format!("SessionClosed: {reason}"),
        Event::TransferComplete { .. } => "TransferComplete".to_string(),
        Event::RangesLost { path, ranges, .. } => format!(
            "RangesLost {path} ({}): {}",
            name(path),
            ranges
                .iter()
                .map(|d| format!("[{}, {})", d.range.start, d.range.end))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => format!("{other:?}"),
    }
}

/// Prints the kept trace's path, session and chaos lines to stderr.
fn print_trace(s: &MultiSetup) {
    let keep = [
        "Path",
        "Session",
        "RangesLost",
        "Transfer",
        "chaos:",
        "Delegated",
        "tx ",
        "rx ",
        "drop:",
    ];
    for line in s.sim.trace().lines() {
        if keep.iter().any(|k| line.text.starts_with(k)) {
            let who = match line.node {
                usize::MAX => "chaos".to_string(),
                n if n == s.client.index() => "client".to_string(),
                n if n == s.primary.index() => "primary".to_string(),
                n => s
                    .secondaries
                    .iter()
                    .position(|id| id.index() == n)
                    .map_or(format!("n{n}"), |i| server_name(i + 1)),
            };
            let ns = line.at.as_nanos();
            eprintln!(
                "{:>6}.{:03} s {who:>7} {}",
                ns / 1_000_000_000,
                ns % 1_000_000_000 / 1_000_000,
                line.text
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_pure_functions_of_seed_and_config() {
        let cfg = ChaosConfig::bench(0.2);
        for seed in 0..50 {
            let a = Scenario::generate(seed, &cfg);
            assert_eq!(a, Scenario::generate(seed, &cfg));
            assert!((3..=4).contains(&a.links.len()));
            assert!((4 * MIB..=32 * MIB).contains(&a.size));
            assert!((MIB..=64 * MIB).contains(&a.window));
            for l in &a.links {
                assert!((10..=200).contains(&l.mbit));
                assert!((10..=150).contains(&l.rtt_ms));
                assert!((0.0..=0.2).contains(&l.loss));
                assert_eq!(l.corrupt, 0.0);
            }
            assert!(a.faults.iter().filter(|f| f.server == 0).count() <= 1);
            assert!(a.replay.contains(&format!("--only {seed} ")));
        }
        let t = ChaosConfig::test();
        let any_corrupt = (0..50).any(|seed| {
            Scenario::generate(seed, &t)
                .links
                .iter()
                .any(|l| l.corrupt > 0.0)
        });
        assert!(any_corrupt);
    }

    #[test]
    fn small_losses_are_common() {
        let cfg = ChaosConfig::bench(0.2);
        let losses: Vec<f64> = (0..400)
            .flat_map(|s| Scenario::generate(s, &cfg).links)
            .map(|l| l.loss)
            .collect();
        let small = losses.iter().filter(|&&l| l < 0.01).count();
        let big = losses.iter().filter(|&&l| l > 0.1).count();
        assert!(small > losses.len() / 2, "{small} of {}", losses.len());
        assert!(big > 0 && big < losses.len() / 5, "{big}");
    }

    #[test]
    fn outages_are_marked_short_or_long() {
        let cfg = ChaosConfig::bench(0.2);
        let idle = cfg.idle_timeout;
        let mut short = 0;
        let mut long = 0;
        for seed in 0..300 {
            for f in Scenario::generate(seed, &cfg).faults {
                if let FaultKind::Outage(d) = f.kind {
                    if f.is_long(idle) {
                        assert!(d >= idle + Duration::from_secs(2));
                        long += 1;
                    } else {
                        assert!(d <= idle * 2 / 3 + Duration::from_millis(1));
                        short += 1;
                    }
                }
            }
        }
        assert!(short > 10 && long > 10, "{short} short, {long} long");
    }
}
