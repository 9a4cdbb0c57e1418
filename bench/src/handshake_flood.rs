//! `handshake-flood`: what does a flood of forged client Initials cost a
//! kwik server, and do genuine clients still get in?
//!
//! A client Initial is 1.2 KB and its source address can be forged; a server
//! that accepts it keeps a QUIC connection and a kwik session for it until
//! the handshake fails. Here 10 000 genuine-looking Initials — real
//! quinn-proto client Initials offering kwik's ALPN, each from its own
//! unroutable source address (`198.18.0.0/15`), never answering — arrive at
//! one kwik server, evenly over 10 s of virtual time, while 100 genuine kwik
//! clients connect, evenly over the same 10 s, on 50 ms RTT links. The
//! server's heap is measured with the counting allocator
//! ([`kwik_sim::alloc`]): everything allocated inside the server node's
//! calls and not freed.
//!
//! Three runs, each in a fresh simulation with the same seed:
//!
//! 1. **calibration** — Retry never, no half-open limit, 128 forged
//!    Initials and nobody else: the server's heap growth divided by the
//!    handshakes it accepted is `bytes_per_half_open`, what one forged
//!    Initial pins without defences;
//! 2. **`Retry::Never`** — the default configuration except that Retry is
//!    off: the half-open limit alone bounds the heap, but the forged
//!    handshakes fill it and genuine clients are refused (printed for
//!    comparison; not checked);
//! 3. **defaults** — `ServerConfig`'s defaults: past the Retry threshold
//!    every unvalidated Initial gets a stateless Retry, which forged sources
//!    never answer and genuine clients answer one round trip later.
//!
//! Each run prints one JSON line; the last is the default configuration's:
//!
//! * `server_peak_bytes` — the server's peak heap growth during the run;
//! * `bytes_per_half_open` — from the calibration run;
//! * `legit_ok` — genuine clients whose session was established;
//! * `legit_p99_ms` — p99 (nearest rank) of their connect → established
//!   virtual time;
//! * `retries_sent`, `refused_limit`, `handshakes_accepted`,
//!   `handshakes_timed_out` — the server's [`EndpointStats`].
//!
//! The default run must admit every genuine client and stay within
//! [`PEAK_BOUND`]; otherwise the scenario fails (exit status 1). The
//! binary installs the counting allocator; without it there is nothing to
//! measure and the scenario fails too.

use std::time::{Duration, Instant};

use kwik_core::{EndpointStats, RetryPolicy, ServerConfig};
use kwik_sim::alloc::{Meter, installed};
use kwik_sim::handshakes::{Dialer, InitialFlood};
use kwik_sim::setup::{addr, configs, dev_cert, endpoint};
use kwik_sim::{App, BulkServer, KwikNode, LinkConfig, Node, NodeId, Payload, Sim};

use crate::harness::MIB;
use crate::report::Line;

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Forged Initials.
    pub initials: u64,
    /// Genuine clients.
    pub clients: u8,
    /// Virtual time over which both arrive.
    pub period: Duration,
    /// Seed of the simulations.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            initials: 10_000,
            clients: 100,
            period: Duration::from_secs(10),
            seed: 1,
        }
    }
}

/// Most heap the server may use under the flood with the defaults.
pub const PEAK_BOUND: u64 = 64 * MIB;
/// Forged Initials of the calibration run.
const CALIBRATION_INITIALS: u64 = 128;
/// One-way latency of every link.
const LATENCY: Duration = Duration::from_millis(25);
/// Virtual-time limit of a run.
const LIMIT: Duration = Duration::from_secs(600);

/// What one run measured.
struct Outcome {
    peak: u64,
    stats: EndpointStats,
    connect_times: Vec<Duration>,
}

/// A simulation with a kwik server at `addr(1)` configured by `tune`, its
/// heap charged to `meter`.
fn server_sim(seed: u64, meter: Meter, tune: impl FnOnce(&mut ServerConfig)) -> (Sim, NodeId) {
    let mut sim = Sim::new(seed);
    sim.set_default_link(LinkConfig::new().latency(LATENCY).rate_mbps(1000));
    let cert = dev_cert(seed);
    let (_, mut server_cfg) = configs(&cert);
    tune(&mut server_cfg);
    let now = sim.now();
    let server = sim.add_node(
        &[addr(1)],
        Box::new(KwikNode::new(
            addr(1),
            endpoint(seed, Some(server_cfg), now),
            BulkServer::new(Payload::new(seed), 0),
        )),
    );
    sim.meter(server, meter);
    (sim, server)
}

fn server_stats(sim: &Sim, server: NodeId) -> EndpointStats {
    sim.node::<KwikNode<BulkServer>>(server).endpoint.stats()
}

/// Runs `initials` forged Initials and `clients` genuine clients over
/// `period` against a server configured by `tune`.
fn run(
    seed: u64,
    meter: Meter,
    initials: u64,
    clients: u8,
    period: Duration,
    tune: impl FnOnce(&mut ServerConfig),
) -> Result<Outcome, String> {
    let (mut sim, server) = server_sim(seed, meter, tune);
    let cert = dev_cert(seed);
    let (client_cfg, _) = configs(&cert);
    sim.run_for(Duration::from_millis(10));
    let before = meter.current();
    meter.reset_peak();
    let interval = period / u32::try_from(initials.max(1)).unwrap_or(u32::MAX);
    let flood = InitialFlood::new(addr(1), &cert, seed, initials, interval, 0);
    let start = sim.elapsed();
    let flooder = sim.add_node(&[], Box::new(flood));
    let mut dialers = Vec::new();
    for i in 0..clients {
        // Spread evenly, half a slot in.
        let at = start + period * (2 * u32::from(i) + 1) / (2 * u32::from(clients));
        sim.run_until(at);
        let host = 2 + i;
        let ep = endpoint(seed + 1000 + u64::from(i), None, sim.now());
        let app = Dialer::new(addr(1), client_cfg.clone());
        dialers.push(sim.add_node(&[addr(host)], Box::new(KwikNode::new(addr(host), ep, app))));
    }
    sim.run_while(LIMIT, |sim| {
        !(sim.node::<InitialFlood>(flooder).done()
            && dialers
                .iter()
                .all(|&d| sim.node::<KwikNode<Dialer>>(d).app.done()))
    })
    .map_err(|e| format!("handshake-flood: {e}"))?;
    // The last Initials land and are answered.
    sim.run_for(Duration::from_secs(1));
    let connect_times = dialers
        .iter()
        .filter_map(|&d| sim.node::<KwikNode<Dialer>>(d).app.connect_time())
        .collect();
    let peak = u64::try_from(meter.peak() - before).unwrap_or(0);
    Ok(Outcome {
        peak,
        stats: server_stats(&sim, server),
        connect_times,
    })
}

/// Heap a forged Initial pins on a server without defences: the growth
/// while `CALIBRATION_INITIALS` are accepted, per accepted handshake.
fn calibrate(seed: u64) -> Result<u64, String> {
    let meter = Meter(0);
    let (mut sim, server) = server_sim(seed, meter, |s| {
        s.retry = RetryPolicy::Never;
        s.max_half_open = usize::MAX;
    });
    sim.run_for(Duration::from_millis(10));
    let before = meter.current();
    let cert = dev_cert(seed);
    let flood = InitialFlood::new(
        addr(1),
        &cert,
        seed,
        CALIBRATION_INITIALS,
        Duration::from_millis(1),
        0,
    );
    sim.add_node(&[], Box::new(flood));
    // Every Initial arrived and was answered, well before any deadline.
    sim.run_for(Duration::from_millis(CALIBRATION_INITIALS) + 10 * LATENCY);
    let stats = server_stats(&sim, server);
    if stats.handshakes_accepted != CALIBRATION_INITIALS
        || stats.half_open != stats.handshakes_accepted
    {
        return Err(format!(
            "calibration: not every forged Initial was accepted: {stats:?}"
        ));
    }
    let grown = u64::try_from(meter.current() - before).unwrap_or(0);
    Ok(grown / stats.handshakes_accepted)
}

/// p99 by nearest rank, in milliseconds (`NaN` for no sample).
fn p99_ms(times: &[Duration]) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    let mut v = times.to_vec();
    v.sort();
    let rank = (v.len() * 99).div_ceil(100).max(1);
    v[rank - 1].as_secs_f64() * 1e3
}

fn emit(opts: &Options, retry: &str, per_half_open: u64, o: &Outcome) {
    Line::new("handshake-flood")
        .int("initials", opts.initials)
        .int("server_peak_bytes", o.peak)
        .int("bytes_per_half_open", per_half_open)
        .int("legit_ok", o.connect_times.len() as u64)
        .num("legit_p99_ms", p99_ms(&o.connect_times), 1)
        .int("retries_sent", o.stats.retries_sent)
        .str("retry", retry)
        .int("clients", u64::from(opts.clients))
        .num("period_s", opts.period.as_secs_f64(), 1)
        .int("handshakes_accepted", o.stats.handshakes_accepted)
        .int("refused_limit", o.stats.refused_limit)
        .int("handshakes_timed_out", o.stats.handshakes_timed_out)
        .bool("peak_within_bound", o.peak <= PEAK_BOUND)
        .emit();
}

/// Runs the scenario; the last line printed is the default configuration's.
pub fn main(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let per_half_open = calibrate(opts.seed)?;
    if !installed() {
        return Err("handshake-flood: the counting allocator is not installed".into());
    }
    eprintln!(
        "handshake-flood: one accepted forged Initial pins {per_half_open} bytes without defences"
    );
    eprintln!(
        "handshake-flood: {} forged Initials + {} clients over {:?}, RTT {:?}: Retry never",
        opts.initials,
        opts.clients,
        opts.period,
        2 * LATENCY
    );
    let never = run(
        opts.seed,
        Meter(1),
        opts.initials,
        opts.clients,
        opts.period,
        |s| s.retry = RetryPolicy::Never,
    )?;
    emit(opts, "never", per_half_open, &never);
    eprintln!("handshake-flood: the same with the default configuration");
    let defaults = run(
        opts.seed,
        Meter(2),
        opts.initials,
        opts.clients,
        opts.period,
        |_| {},
    )?;
    emit(opts, "default", per_half_open, &defaults);
    eprintln!(
        "handshake-flood: {:.1} s wall",
        started.elapsed().as_secs_f64()
    );
    let ok = defaults.connect_times.len();
    if ok != usize::from(opts.clients) {
        return Err(format!(
            "handshake-flood: {ok} of {} genuine clients got in with the defaults",
            opts.clients
        ));
    }
    if defaults.peak > PEAK_BOUND {
        return Err(format!(
            "handshake-flood: the server's heap peaked at {} bytes with the defaults (bound {PEAK_BOUND})",
            defaults.peak
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let times: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(p99_ms(&times), 99.0);
        assert_eq!(p99_ms(&[ms(5)]), 5.0);
        assert_eq!(p99_ms(&[ms(3), ms(1)]), 3.0);
        assert!(p99_ms(&[]).is_nan());
    }

    #[test]
    fn spread_addresses_are_distinct() {
        let a: std::collections::BTreeSet<std::net::SocketAddr> = (0..10_000)
            .map(kwik_sim::handshakes::spoofed_source)
            .collect();
        assert_eq!(a.len(), 10_000);
    }
}
