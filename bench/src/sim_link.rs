//! `sim-link`: does kwik fill a realistic long-haul link, with and without
//! random loss?
//!
//! A 128 MiB upload on one logical stream over 100 Mbit/s with 40 ms RTT
//! (20 ms one way in each direction) and a one-BDP (500 kB) drop-tail
//! buffer, at 0 % and 1 % random loss (on both directions), with Cubic and
//! with BBR. Goodput is payload bits divided by the virtual time from the
//! client's connect to the server having read the last byte, so the
//! handshakes and slow start are included; efficiency is goodput ÷
//! 100 Mbit/s.
//!
//! kwik's windows (16 MiB per stream, 32 MiB send window) are far above the
//! 500 kB BDP, so only the link and the controller limit the rate. Bare
//! quinn-proto runs the same cases on the same link as a reference: where
//! both are poor (Cubic under random loss collapses — it reads every loss as
//! congestion) the controller is to blame, not kwik. quinn-proto's BBR draws
//! from an unseeded RNG, so BBR lines vary a little between runs.
//!
//! Lines: kwik first, starting with 0 %-loss Cubic (acceptance takes the
//! first 0 %-loss line), then quinn-proto, then a summary line.

use std::time::{Duration, Instant};

use kwik_sim::{BulkServer, LinkConfig};

use crate::harness::{
    Cc, KwikPair, MIB, QuinnPair, bulk_transport, check_kwik, client_addr, mbit_per_s, quinn_chunk,
    run, server_addr,
};
use crate::report::Line;

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Payload size in MiB.
    pub mib: u64,
    /// Seed of the simulations.
    pub seed: u64,
    /// Override of kwik's largest data-record payload (bytes).
    pub max_frame: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mib: 128,
            seed: 1,
            max_frame: None,
        }
    }
}

/// Bottleneck rate.
pub const RATE_MBIT: u64 = 100;
/// One-way latency (each direction).
const ONE_WAY: Duration = Duration::from_millis(20);
/// Virtual-time limit: Cubic at 1 % loss needs minutes of virtual time.
const LIMIT: Duration = Duration::from_secs(3600);

/// The cases, in output order: 0 %-loss Cubic first.
const CASES: [(f64, Cc); 4] = [
    (0.0, Cc::Cubic),
    (0.0, Cc::Bbr),
    (0.01, Cc::Cubic),
    (0.01, Cc::Bbr),
];

fn link(loss: f64) -> LinkConfig {
    LinkConfig::new()
        .rate_mbps(RATE_MBIT)
        .latency(ONE_WAY)
        .loss(loss)
}

struct Outcome {
    done: Duration,
    wall: Duration,
    dropped_loss: u64,
    dropped_queue: u64,
}

fn kwik_case(opts: &Options, loss: f64, cc: Cc) -> Result<Outcome, String> {
    let total = opts.mib * MIB;
    let mut pair = KwikPair::new(
        opts.seed,
        &link(loss),
        &bulk_transport(cc, opts.max_frame),
        &[total],
        |p| BulkServer::new(p, 1),
    );
    let wall = run(&mut pair.sim, LIMIT)?;
    let done = check_kwik(&pair.sim, pair.server_app::<BulkServer>(), total, 1)?;
    let up = pair.sim.link_stats(client_addr(), server_addr());
    Ok(Outcome {
        done,
        wall,
        dropped_loss: up.dropped_loss,
        dropped_queue: up.dropped_queue,
    })
}

fn quinn_case(opts: &Options, loss: f64, cc: Cc) -> Result<Outcome, String> {
    let total = opts.mib * MIB;
    let mut pair = QuinnPair::new(opts.seed, &link(loss), cc, total, quinn_chunk(opts.seed));
    let wall = run(&mut pair.sim, LIMIT)?;
    let done = pair.check()?;
    let up = pair.sim.link_stats(client_addr(), server_addr());
    Ok(Outcome {
        done,
        wall,
        dropped_loss: up.dropped_loss,
        dropped_queue: up.dropped_queue,
    })
}

/// Runs the scenario; the last line printed is the summary.
pub fn main(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let total = opts.mib * MIB;
    eprintln!(
        "sim-link: {} MiB upload, {RATE_MBIT} Mbit/s, 40 ms RTT, one-BDP drop-tail buffer; \
         loss 0 % and 1 % on both directions; Cubic and BBR",
        opts.mib
    );
    let mut summary = Line::new("sim-link")
        .bool("summary", true)
        .int("mib", opts.mib);
    for stack in ["kwik", "quinn-proto"] {
        for (loss, cc) in CASES {
            let o = if stack == "kwik" {
                kwik_case(opts, loss, cc)?
            } else {
                quinn_case(opts, loss, cc)?
            };
            let goodput = mbit_per_s(total, o.done);
            let efficiency = goodput / RATE_MBIT as f64;
            eprintln!(
                "  {stack:<11} loss {:>4.1} % {:<5}: {goodput:6.2} Mbit/s (efficiency {efficiency:.3}), \
                 last byte at {:.2} s virtual, uplink drops {} random / {} queue, {:.1} s wall",
                loss * 100.0,
                cc.name(),
                o.done.as_secs_f64(),
                o.dropped_loss,
                o.dropped_queue,
                o.wall.as_secs_f64()
            );
            Line::new("sim-link")
                .exact("loss", loss)
                .str("cc", cc.name())
                .int("mib", opts.mib)
                .num("goodput_mbit", goodput, 3)
                .num("efficiency", efficiency, 4)
                .str("stack", stack)
                .num("virtual_s", o.done.as_secs_f64(), 3)
                .int("dropped_loss", o.dropped_loss)
                .int("dropped_queue", o.dropped_queue)
                .num("wall_s", o.wall.as_secs_f64(), 2)
                .emit();
            let key = format!(
                "{}_{}_loss{}_efficiency",
                if stack == "kwik" { "kwik" } else { "quinn" },
                cc.name(),
                if loss == 0.0 { "0" } else { "1pct" }
            );
            summary = summary.num(&key, efficiency, 4);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    eprintln!("sim-link: scenario wall {wall:.1} s");
    summary.num("scenario_wall_s", wall, 1).emit();
    Ok(())
}
