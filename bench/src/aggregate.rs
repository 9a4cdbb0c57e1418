//! `aggregate`: does one client session served by N servers at once get the
//! sum of their links?
//!
//! A primary and N − 1 secondaries serve one resource over one logical
//! stream (kwik's multi-source transfer: the primary schedules ranges on
//! every live path, secondaries serve theirs from their own copy). Server
//! `i` reaches the client over its own link, taken in order from this
//! cycle (rate in Mbit/s, RTT in ms; both directions, one-BDP drop-tail
//! buffer):
//!
//! | server | 0 (primary) | 1  | 2   | 3   | 4   | 5  | 6   | 7   |
//! |--------|-------------|----|-----|-----|-----|----|-----|-----|
//! | Mbit/s | 100         | 50 | 200 | 25  | 150 | 75 | 20  | 120 |
//! | RTT ms | 40          | 80 | 20  | 120 | 30  | 60 | 100 | 50  |
//!
//! so rates differ by up to 10× (20 vs 200) and RTTs by 6× (20 vs 120).
//! N = 2 uses the first two links, N = 4 the first four, N = 8 all.
//!
//! The resource is sized from the capacity so that the ideal transfer takes
//! `--secs` (default 40 s) of virtual time: Σ rate × secs ÷ 8, rounded to a
//! MiB; ramp-up is then a small share. Efficiency is resource bits ÷ (Σ
//! link rate × time from the start of the simulation — the client's connect
//! — to the client application reading the last byte): the primary's
//! handshake, the AddPath handshakes of every secondary, slow start and the
//! tail are all included, and so is every byte of overhead (QUIC and kwik
//! headers, acknowledgements, duplicated tail ranges).
//!
//! Every connection uses the same controller: Cubic by default (quinn's
//! Cubic without HyStart overshoots in slow start, but then holds each
//! one-BDP drop-tail link at ≈ 0.985 of its rate); `--cc bbr` runs quinn's
//! experimental BBR, which here drives the primary's link into persistent
//! drops (more than half of its datagrams) and ends lower and less
//! predictably. The per-logical-stream window is at least one
//! second of the total capacity, so flow control never limits. The
//! primary serves from the first byte on (secondaries join as their AddPath
//! handshakes complete); the scheduler runs with
//! [`transfer_config`](crate::multi_harness::transfer_config) and
//! [`BACKLOG`] (`--backlog-ms`).
//!
//! A failed check — bytes missing or corrupt, a secondary that did not join
//! or was declared dead — exits with status 1; the efficiency is reported,
//! not enforced.
//!
//! Progress and a per-path breakdown (share, average rate over its active
//! time, drops at its bottleneck) go to stderr; `--verbose` adds per-second
//! rates. One JSON line per N, the last being the largest N.

use std::time::Duration;

use kwik_sim::multi::{MultiOptions, MultiSetup, ServerLink};

use crate::harness::{Cc, MIB};
use crate::multi_harness::{
    BACKLOG, Samples, check_intact, client_paths, client_stats, primary_setup, quiet, run_sampled,
};
use crate::report::Line;

/// The link cycle: (Mbit/s, RTT ms) of server 0 (the primary), 1, 2, ….
pub const LINKS: [(u64, u64); 8] = [
    (100, 40),
    (50, 80),
    (200, 20),
    (25, 120),
    (150, 30),
    (75, 60),
    (20, 100),
    (120, 50),
];

/// Server counts run when none is given.
pub const DEFAULT_SERVERS: [usize; 3] = [2, 4, 8];

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server counts to run (primary included), each ≥ 2 and ≤ 8.
    pub servers: Vec<usize>,
    /// Ideal transfer time the resource is sized for, seconds.
    pub secs: u64,
    /// Congestion controller of every connection.
    pub cc: Cc,
    /// Seed of the simulations.
    pub seed: u64,
    /// Scheduler backlog (work a path may owe, in time at its rate).
    pub backlog: Duration,
    /// Print per-path rates every second of virtual time.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            servers: DEFAULT_SERVERS.to_vec(),
            secs: 40,
            cc: Cc::Cubic,
            seed: 1,
            backlog: BACKLOG,
            verbose: false,
        }
    }
}

/// Links of the first `n` servers.
pub fn links(n: usize) -> Vec<ServerLink> {
    LINKS[..n]
        .iter()
        .map(|&(mbit, rtt)| ServerLink::new(mbit, rtt))
        .collect()
}

/// Resource size in MiB for `n` servers and an ideal time of `secs`.
pub fn size_mib(n: usize, secs: u64) -> u64 {
    let capacity: u64 = LINKS[..n].iter().map(|l| l.0).sum();
    let bytes = capacity as f64 * 1e6 / 8.0 * secs as f64;
    ((bytes / MIB as f64).round() as u64).max(1)
}

fn one(opts: &Options, n: usize) -> Result<(), String> {
    let capacity: u64 = LINKS[..n].iter().map(|l| l.0).sum();
    let mib = size_mib(n, opts.secs);
    let size = mib * MIB;
    // One second of the total capacity, in whole MiB, at least the default.
    let window = (capacity * 1_000_000 / 8).div_ceil(MIB).max(64) * MIB;
    let mut options = MultiOptions::new(opts.seed, links(n), size);
    options.stream_window = window;
    options.congestion = opts.cc.kwik();
    let mut s = MultiSetup::new(options, primary_setup(opts.backlog));
    quiet(&mut s);
    eprintln!(
        "aggregate: {n} servers, {capacity} Mbit/s in all, {mib} MiB ({} s ideal), {}, \
         stream window {} MiB",
        opts.secs,
        opts.cc.name(),
        window / MIB
    );
    let limit = Duration::from_secs(opts.secs * 10 + 60);
    let mut samples = Samples::default();
    let wall = run_sampled(&mut s, limit, Duration::from_secs(1), &mut samples)?;
    let done = check_intact(&s, size)?;
    let p = s.primary();
    if p.added.len() != n - 1 {
        return Err(format!(
            "only {} of {} secondaries joined: {:?}",
            p.added.len(),
            n - 1,
            p.failed
        ));
    }
    if !p.dead.is_empty() {
        return Err(format!("paths declared dead: {:?}", p.dead));
    }
    let goodput = size as f64 * 8.0 / 1e6 / done.as_secs_f64();
    let efficiency = goodput / capacity as f64;
    let first_byte = s.client().first_byte.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(s.sim.start())
    });
    let paths = client_paths(&mut s);
    let mut all_active = Duration::ZERO;
    let client = s.client_addr;
    for info in &paths {
        let server = s
            .servers
            .iter()
            .position(|a| *a == info.address)
            .unwrap_or(0);
        let (mbit, rtt) = LINKS[server];
        let active = info
            .history
            .iter()
            .find(|(_, st)| st.is_live())
            .map_or(Duration::ZERO, |(t, _)| {
                t.saturating_duration_since(s.sim.start())
            });
        all_active = all_active.max(active);
        let span = done.saturating_sub(active).as_secs_f64().max(1e-9);
        let rate = info.bytes_received as f64 * 8.0 / 1e6 / span;
        let down = s.sim.link_stats(s.servers[server], client);
        eprintln!(
            "  {:<6} {mbit:>3} Mbit/s {rtt:>3} ms: active at {:6.3} s, {:7.1} MiB \
             ({:4.1} %), {rate:6.1} Mbit/s = {:.3} of link while active, \
             {} queue drops of {} datagrams",
            info.id.to_string(),
            active.as_secs_f64(),
            info.bytes_received as f64 / MIB as f64,
            info.bytes_received as f64 * 100.0 / size as f64,
            rate / mbit as f64,
            down.dropped_queue,
            down.sent
        );
        if opts.verbose {
            let rates: Vec<String> = samples
                .rates(info.id)
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect();
            eprintln!("         per second: {}", rates.join(" "));
        }
    }
    if opts.verbose {
        let read: Vec<String> = samples
            .read_rates()
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect();
        eprintln!("  app read Mbit/s per second: {}", read.join(" "));
    }
    let wire: u64 = s
        .servers
        .iter()
        .map(|a| s.sim.link_stats(*a, client).bytes_delivered)
        .sum();
    let wire_overhead = wire as f64 / size as f64 - 1.0;
    let received = client_stats(&mut s).map_or(0, |st| st.bytes_received);
    let dup_payload = received.saturating_sub(size);
    // Time the links would need for every byte they carried, at full rate.
    let busy = wire as f64 * 8.0 / 1e6 / capacity as f64;
    eprintln!(
        "  wire bytes {:.1} MiB ({:+.2} % over the resource), duplicate payload {:.2} MiB; \
         the links were busy {:.2} s of {:.2} s",
        wire as f64 / MIB as f64,
        wire_overhead * 100.0,
        dup_payload as f64 / MIB as f64,
        busy,
        done.as_secs_f64()
    );
    eprintln!(
        "  => {goodput:.1} of {capacity} Mbit/s, efficiency {efficiency:.4}; first byte at \
         {:.3} s, every path active at {:.3} s, last byte at {:.3} s; {:.1} s wall",
        first_byte.as_secs_f64(),
        all_active.as_secs_f64(),
        done.as_secs_f64(),
        wall.as_secs_f64()
    );
    Line::new("aggregate")
        .int("servers", n as u64)
        .int("capacity_mbit", capacity)
        .num("goodput_mbit", goodput, 2)
        .num("efficiency", efficiency, 4)
        .str("cc", opts.cc.name())
        .int("mib", mib)
        .int("secs", opts.secs)
        .num("virtual_s", done.as_secs_f64(), 3)
        .num("first_byte_s", first_byte.as_secs_f64(), 3)
        .num("paths_active_s", all_active.as_secs_f64(), 3)
        .num("wire_overhead", wire_overhead, 4)
        .int("dup_payload_bytes", dup_payload)
        .num("wall_s", wall.as_secs_f64(), 2)
        .emit();
    Ok(())
}

/// Runs the scenario for every requested server count; the last line
/// printed is the largest N's.
pub fn main(opts: &Options) -> Result<(), String> {
    for &n in &opts.servers {
        one(opts, n)?;
    }
    Ok(())
}
