//! `chaos`: many seeded random multi-server transfers under loss,
//! reordering, duplication, outages and deaths, each judged on what the
//! client application saw ([`kwik_sim::chaos`] has the scenario generator,
//! the runner and the judge, and defines every figure).
//!
//! ```text
//! kwik-bench chaos [--seeds N] [--seed-base S] [--max-loss L] [--only SEED]
//!                  [--mix KEY=VALUE,...] [--jobs J] [--all]
//! ```
//!
//! Seeds `S .. S+N` (default 1 .. 1001) each draw a scenario with
//! [`ChaosConfig::bench`]: one primary and 2–3 secondaries, links of
//! 10–200 Mbit/s and 10–150 ms RTT with random loss up to `--max-loss`
//! (default 0.2; log-uniform, so small losses are common), jitter and
//! duplication; a 4–32 MiB resource; a client stream window of 1–64 MiB;
//! Cubic, NewReno or BBR (2 : 2 : 1); and faults — secondary outages and
//! kills, primary outages and kills, outages short (≤ 20 s) or long
//! (≥ idle timeout + 2 s). `--mix` changes the mix: `sec-outage`,
//! `sec-kill`, `pri-outage`, `pri-kill`, `long` (probabilities), `corrupt`
//! (probability that a link corrupts, off by default), `cubic`, `newreno`,
//! `bbr` (weights), `min-kib`, `max-kib` (resource), `min-window-kib`,
//! `max-window-kib`.
//!
//! stdout: one JSON line per failing seed (outcome other than `delivered`
//! or `primary_dead_error`, a primary-dead error that came late, or the
//! client heap above its bound; `--all`: every seed), with its exact replay
//! command and scenario, then the summary as the last line. `--only SEED`
//! replays one seed, printing its path and session events and a diagnosis
//! to stderr. BBR runs are not bit-reproducible (quinn-proto's BBR uses an
//! unseeded RNG): their lines say `"reproducible":false`.
//!
//! The exit status is 0 whatever the outcomes (the lines are the result);
//! 2 for bad arguments.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kwik_sim::chaos::{self, ChaosConfig, Outcome, RunOptions, RunResult, Scenario, TraceMode};

use crate::report::{Line, median};

const MIB: f64 = (1u64 << 20) as f64;

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of seeds.
    pub seeds: u64,
    /// First seed.
    pub seed_base: u64,
    /// Highest link loss.
    pub max_loss: f64,
    /// Replay only this seed, verbosely.
    pub only: Option<u64>,
    /// `--mix` text, applied on top of the bench mix.
    pub mix: Option<String>,
    /// Worker threads.
    pub jobs: usize,
    /// Print every seed's line, not only failing ones.
    pub all: bool,
    /// With `only`: trace every datagram too.
    pub datagrams: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seeds: 1000,
            seed_base: 1,
            max_loss: 0.2,
            only: None,
            mix: None,
            jobs: 1,
            all: false,
            datagrams: false,
        }
    }
}

/// The configuration for `opts`: the bench mix, `--max-loss`, `--mix`.
pub fn config(opts: &Options) -> Result<ChaosConfig, String> {
    let mut cfg = ChaosConfig::bench(opts.max_loss);
    let mut replay = format!(
        "cargo run --release --bin kwik-bench -- chaos --only {{seed}} --max-loss {}",
        opts.max_loss
    );
    if let Some(mix) = &opts.mix {
        for item in mix.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("--mix: expected KEY=VALUE, got {item:?}"))?;
            let p = || -> Result<f64, String> {
                let v: f64 = value
                    .parse()
                    .map_err(|_| format!("--mix {key}: not a number: {value:?}"))?;
                if (0.0..=1.0).contains(&v) {
                    Ok(v)
                } else {
                    Err(format!("--mix {key}: a probability is 0 to 1, got {v}"))
                }
            };
            let n = || -> Result<u64, String> {
                value
                    .parse()
                    .map_err(|_| format!("--mix {key}: not a whole number: {value:?}"))
            };
            match key {
                "sec-outage" => cfg.faults.secondary_outage = p()?,
                "sec-kill" => cfg.faults.secondary_kill = p()?,
                "pri-outage" => cfg.faults.primary_outage = p()?,
                "pri-kill" => cfg.faults.primary_kill = p()?,
                "long" => cfg.faults.long_outage = p()?,
                "corrupt" => cfg.corrupt = p()?,
                "dup" => cfg.duplicate = p()?,
                "jitter" => cfg.jitter = p()?,
                "cubic" => cfg.cc.cubic = n()? as u32,
                "newreno" => cfg.cc.new_reno = n()? as u32,
                "bbr" => cfg.cc.bbr = n()? as u32,
                "min-kib" => cfg.min_size = n()?.max(1) << 10,
                "max-kib" => cfg.max_size = n()?.max(1) << 10,
                "min-window-kib" => cfg.min_window = n()?.max(1) << 10,
                "max-window-kib" => cfg.max_window = n()?.max(1) << 10,
                other => return Err(format!("--mix: unknown key {other:?}")),
            }
        }
        if cfg.cc.cubic + cfg.cc.new_reno + cfg.cc.bbr == 0 {
            return Err("--mix: every congestion controller weight is 0".to_string());
        }
        if cfg.min_size > cfg.max_size || cfg.min_window > cfg.max_window {
            return Err("--mix: a minimum is above its maximum".to_string());
        }
        replay.push_str(&format!(" --mix {mix}"));
    }
    cfg.replay = replay;
    Ok(cfg)
}

fn opt_num(line: Line, key: &str, value: Option<f64>, decimals: usize) -> Line {
    line.num(key, value.unwrap_or(f64::NAN), decimals)
}

/// The JSON line of one seed.
fn seed_line(r: &RunResult) -> Line {
    let sc = &r.scenario;
    let justified = r.deaths.iter().filter(|d| d.justified).count() as u64;
    let line = Line::new("chaos-seed")
        .int("seed", sc.seed)
        .str("outcome", r.outcome.name())
        .bool("passed", r.passed())
        .str("replay", &sc.replay)
        .str("violations", &r.violations().join("; "))
        .str("cc", sc.cc_name())
        .bool("reproducible", sc.reproducible())
        .int("secondaries", sc.links.len() as u64 - 1)
        .int("size_kib", sc.size >> 10)
        .int("window_kib", sc.window >> 10)
        .exact("max_link_loss", sc.max_link_loss())
        .str("links", &sc.links_summary())
        .str("faults", &sc.faults_summary())
        .str("close_reason", r.close_reason.as_deref().unwrap_or(""))
        .num("virtual_s", r.virtual_time.as_secs_f64(), 3)
        .int("read", r.read)
        .num("last_progress_s", r.last_progress.as_secs_f64(), 3)
        .int("paths_added", r.paths_added)
        .int("paths_failed", r.paths_failed)
        .int("deaths_justified", justified)
        .int("false_deaths", r.false_deaths)
        .str("false_death_detail", &false_detail(r))
        .int("paths_readded", r.paths_readded);
    let line = opt_num(line, "goodput_vs_capacity", r.goodput_vs_capacity, 4);
    let line = opt_num(
        line,
        "heap_peak_mib",
        r.heap_peak.map(|b| b as f64 / MIB),
        2,
    );
    line.num("heap_bound_mib", r.heap_bound as f64 / MIB, 1)
        .num("wall_s", r.wall.as_secs_f64(), 2)
}

/// `by:server@time(loss)` for every unjustified death.
fn false_detail(r: &RunResult) -> String {
    r.deaths
        .iter()
        .filter(|d| !d.justified)
        .map(|d| {
            let loss = d.server.map_or(f64::NAN, |i| r.scenario.links[i].loss);
            format!(
                "{}:{}@{:.3}s(loss={loss:.4})",
                d.by,
                d.server.map_or("?".to_string(), chaos::server_name),
                d.at.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tallies over many seeds.
#[derive(Debug, Default)]
struct Tally {
    seeds: u64,
    by_outcome: std::collections::BTreeMap<Outcome, u64>,
    failing: u64,
    late_errors: u64,
    heap_violations: u64,
    paths_added: u64,
    false_deaths: u64,
    deaths: u64,
    paths_readded: u64,
    ratios: Vec<f64>,
    max_heap: u64,
    bbr: u64,
    virtual_s: f64,
}

impl Tally {
    fn add(&mut self, r: &RunResult) {
        self.seeds += 1;
        *self.by_outcome.entry(r.outcome).or_default() += 1;
        if !r.passed() {
            self.failing += 1;
        }
        if r.late_error.is_some() {
            self.late_errors += 1;
        }
        if r.heap_peak.is_some_and(|p| p > r.heap_bound) {
            self.heap_violations += 1;
        }
        self.paths_added += r.paths_added;
        self.false_deaths += r.false_deaths;
        self.deaths += r.deaths.len() as u64;
        self.paths_readded += r.paths_readded;
        self.ratios.extend(r.goodput_vs_capacity);
        self.max_heap = self.max_heap.max(r.heap_peak.unwrap_or(0));
        if !r.scenario.reproducible() {
            self.bbr += 1;
        }
        self.virtual_s += r.virtual_time.as_secs_f64();
    }

    fn count(&self, o: Outcome) -> u64 {
        self.by_outcome.get(&o).copied().unwrap_or(0)
    }

    fn brief(&self) -> String {
        Outcome::ALL
            .iter()
            .filter(|o| self.count(**o) > 0)
            .map(|o| format!("{} {}", self.count(*o), o.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn line(&self, opts: &Options, wall: Duration) -> Line {
        let per_100 = if self.paths_added == 0 {
            0.0
        } else {
            self.false_deaths as f64 * 100.0 / self.paths_added as f64
        };
        let med = if self.ratios.is_empty() {
            f64::NAN
        } else {
            median(&self.ratios)
        };
        Line::new("chaos")
            .int("seeds", self.seeds)
            .int("delivered", self.count(Outcome::Delivered))
            .int("primary_dead_errors", self.count(Outcome::PrimaryDeadError))
            .int("hung", self.count(Outcome::Hung))
            .int(
                "primary_alive_failures",
                self.count(Outcome::PrimaryAliveFailure),
            )
            .num("false_deaths_per_100_paths", per_100, 2)
            .int("paths_readded", self.paths_readded)
            .num("median_goodput_vs_capacity", med, 4)
            .int("slow", self.count(Outcome::Slow))
            .int("corrupt", self.count(Outcome::Corrupt))
            .int("duplicate", self.count(Outcome::Duplicate))
            .int("panicked", self.count(Outcome::Panicked))
            .int("late_errors", self.late_errors)
            .int("heap_violations", self.heap_violations)
            .int("failing", self.failing)
            .int("paths_added", self.paths_added)
            .int("false_deaths", self.false_deaths)
            .int("deaths", self.deaths)
            .num("max_heap_mib", self.max_heap as f64 / MIB, 1)
            .int("bbr_seeds", self.bbr)
            .exact("max_loss", opts.max_loss)
            .int("seed_base", opts.seed_base)
            .num("virtual_s", self.virtual_s, 1)
            .num("wall_s", wall.as_secs_f64(), 1)
    }
}

/// Runs the sweep (or one seed); the last line printed is the summary.
pub fn main(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let cfg = config(opts)?;
    if let Some(seed) = opts.only {
        let sc = Scenario::generate(seed, &cfg);
        eprintln!("chaos: replaying {}", sc.summary());
        // RUST_LOG=kwik_core=debug,quinn_proto=trace and so on.
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .without_time()
                .with_writer(std::io::stderr)
                .init();
        }
        let r = chaos::run(
            &sc,
            &RunOptions {
                trace: if opts.datagrams {
                    TraceMode::Datagrams
                } else {
                    TraceMode::Verbose
                },
                ..RunOptions::default()
            },
        );
        eprint!("{}", r.report());
        seed_line(&r).emit();
        let mut tally = Tally::default();
        tally.add(&r);
        tally
            .line(
                &Options {
                    seeds: 1,
                    ..opts.clone()
                },
                started.elapsed(),
            )
            .emit();
        return Ok(());
    }
    eprintln!(
        "chaos: seeds {}..{}, max loss {}, {} job(s){}",
        opts.seed_base,
        opts.seed_base + opts.seeds,
        opts.max_loss,
        opts.jobs,
        opts.mix
            .as_ref()
            .map_or(String::new(), |m| format!(", mix {m}"))
    );
    let next = AtomicU64::new(0);
    let (tx, rx) = mpsc::channel::<(u64, RunResult)>();
    let mut tally = Tally::default();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let next = &next;
            let cfg = &cfg;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= opts.seeds {
                        break;
                    }
                    let sc = Scenario::generate(opts.seed_base + i, cfg);
                    let r = chaos::run(&sc, &RunOptions::default());
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Print in seed order: hold results until their turn.
        let mut pending = std::collections::BTreeMap::new();
        let mut turn = 0u64;
        for (i, r) in rx {
            pending.insert(i, r);
            while let Some(r) = pending.remove(&turn) {
                tally.add(&r);
                if opts.all || !r.passed() {
                    seed_line(&r).emit();
                    if !r.passed() {
                        eprintln!(
                            "  seed {}: {} — {}",
                            r.scenario.seed,
                            r.outcome,
                            r.violations().join("; ")
                        );
                    }
                }
                turn += 1;
                if turn % 50 == 0 || turn == opts.seeds {
                    eprintln!(
                        "chaos: {turn}/{} seeds, {:.0} s wall: {}",
                        opts.seeds,
                        started.elapsed().as_secs_f64(),
                        tally.brief()
                    );
                }
            }
        }
    });
    tally.line(opts, started.elapsed()).emit();
    Ok(())
}
