//! `abuse`: how much memory and CPU can one hostile peer make a kwik
//! endpoint spend on one session?
//!
//! Each pattern of [`kwik_sim::abuse::Pattern`] runs against one session of
//! an endpoint with kwik's DEFAULT configuration, in the simulator, on a
//! 1 Gbit/s, 10 ms RTT link:
//!
//! * `tiny-records` — one-byte data records in order up to the stream
//!   window `W`, the server not reading;
//! * `gapped-tiny-records` — one-byte records at offsets 1, 3, 5, … up to `W`;
//! * `descending-tiny-records` — one-byte records from `W - 1` down to 0;
//! * `duplicate-tiny-records` — 200 000 one-byte records in order with
//!   20 000 duplicates aimed at the highest held offsets, then a FIN, the
//!   server not reading;
//! * `pre-handshake-lanes` — the QUIC handshake completes, no `Hello`
//!   follows, the client opens lanes and pushes data for 2 s;
//! * `fresh-id-credits` — a client joined to a secondary (genuine token)
//!   sends 20 000 `StreamCredit` and 20 000 `StopSending` for fresh ids;
//! * `arbitrary-acks` — 100 000 `Ack`s with 64 valid ranges each, naming
//!   arbitrary streams, to a primary;
//! * `refused-addpaths` — a primary sends its client 100 000 `AddPath`s to
//!   addresses its policy does not allow;
//! * `delegate-flood` — a client joined to a secondary that serves a
//!   resource sends 100 000 `Delegate`s naming it.
//!
//! Every heap allocation made inside the attacked endpoint's calls is
//! charged to a meter (the counting allocator is this binary's global
//! allocator), and so is the wall time spent in them. Reported per pattern:
//!
//! * `peak_bytes` — the endpoint's highest heap growth over its baseline,
//!   taken once the attacked session was established;
//! * `cpu_ms` — wall time spent inside the endpoint's calls since then;
//! * `outcome` — `open`, or `closed KWIK_…` when the endpoint closed the
//!   session (the acceptable answer to the patterns that cannot be served
//!   within bounds);
//! * `stopped` — why the run ended: `closed`, `settled` (the attacker was
//!   done and 500 ms passed), `window` (the 2 s observation window of
//!   `pre-handshake-lanes`), or `growth` / `cpu` when it passed the safety
//!   limits below (the figures are then lower bounds).
//!
//! The summary line (the last) gives the worst peak and CPU over all
//! patterns next to `window_bytes`, kwik's default stream window `W`. The
//! bar, once the trust fixes are in: worst peak ≤ 4·W and worst CPU ≤ 500 ms
//! per pattern. This scenario reports, it does not enforce: it exits with
//! status 1 only if a pattern could not be run at all.
//!
//! Safety limits, so that an unbounded endpoint does not take the machine
//! down with it: a run stops once the growth passes [`ABORT_GROWTH`] or the
//! CPU passes [`ABORT_CPU`].

use std::time::{Duration, Instant};

use kwik_sim::abuse::{self, Options as AbuseOptions, Outcome, Pattern, StopWhen, Stopped};

use crate::report::Line;

/// Growth past which a run is stopped (64 windows).
pub const ABORT_GROWTH: u64 = 128 << 20;

/// CPU time past which a run is stopped.
pub const ABORT_CPU: Duration = Duration::from_secs(20);

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of the simulations.
    pub seed: u64,
    /// Run only this pattern.
    pub pattern: Option<Pattern>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 1,
            pattern: None,
        }
    }
}

fn stopped_name(s: Stopped) -> &'static str {
    match s {
        Stopped::Closed => "closed",
        Stopped::Settled => "settled",
        Stopped::Window => "window",
        Stopped::Growth => "growth",
        Stopped::Cpu => "cpu",
        Stopped::TimeLimit => "time-limit",
        Stopped::Idle => "idle",
    }
}

/// Runs the scenario; the last line printed is its summary.
pub fn main(opts: &Options) -> Result<(), String> {
    if !kwik_sim::alloc::installed() {
        return Err("the counting allocator is not installed".into());
    }
    let w = abuse::window();
    let patterns: Vec<Pattern> = match opts.pattern {
        Some(p) => vec![p],
        None => Pattern::ALL.to_vec(),
    };
    eprintln!(
        "abuse: {} patterns against one session each, kwik's default configuration \
         (stream window {} KiB); safety stop at {} MiB growth or {} s CPU",
        patterns.len(),
        w >> 10,
        ABORT_GROWTH >> 20,
        ABORT_CPU.as_secs()
    );
    let mut worst_peak = 0i64;
    let mut worst_cpu = Duration::ZERO;
    for pattern in &patterns {
        let started = Instant::now();
        let stop = StopWhen {
            growth_above: Some(ABORT_GROWTH),
            cpu_above: Some(ABORT_CPU),
            ..StopWhen::default()
        };
        let options = AbuseOptions {
            stop,
            ..AbuseOptions::new(opts.seed)
        };
        let (_, r) = abuse::run(*pattern, &options).map_err(|e| {
            let first = e.lines().next().unwrap_or_default().to_string();
            format!("{}: {first}", pattern.name())
        })?;
        let wall = started.elapsed();
        let outcome = match &r.outcome {
            Outcome::Open => "open".to_string(),
            other => other.to_string(),
        };
        eprintln!(
            "  {:<24} peak {:>10} bytes ({:5.2} W), cpu {:8.1} ms, {outcome}, stopped: {}; \
             {:.1} s wall",
            pattern.name(),
            r.peak_growth,
            r.peak_growth as f64 / w as f64,
            r.cpu.as_secs_f64() * 1e3,
            stopped_name(r.stopped),
            wall.as_secs_f64()
        );
        worst_peak = worst_peak.max(r.peak_growth);
        worst_cpu = worst_cpu.max(r.cpu);
        Line::new("abuse")
            .str("pattern", pattern.name())
            .int("peak_bytes", r.peak_growth.max(0) as u64)
            .num("cpu_ms", r.cpu.as_secs_f64() * 1e3, 1)
            .str("outcome", &outcome)
            .str("stopped", stopped_name(r.stopped))
            .bool("attack_done", r.attack_done)
            .int("end_bytes", r.end_growth.max(0) as u64)
            .num("virtual_ms", r.elapsed.as_secs_f64() * 1e3, 1)
            .num("wall_s", wall.as_secs_f64(), 2)
            .emit();
    }
    eprintln!(
        "  => worst peak {worst_peak} bytes ({:.2} W, bar 4 W), worst CPU {:.1} ms (bar 500 ms)",
        worst_peak as f64 / w as f64,
        worst_cpu.as_secs_f64() * 1e3
    );
    Line::new("abuse")
        .int("patterns", patterns.len() as u64)
        .int("worst_peak_bytes_per_session", worst_peak.max(0) as u64)
        .int("window_bytes", w)
        .num("worst_cpu_ms", worst_cpu.as_secs_f64() * 1e3, 1)
        .emit();
    Ok(())
}
