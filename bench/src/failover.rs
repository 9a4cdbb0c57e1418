//! `failover`: how long does the client's in-order delivery stall when a
//! secondary dies mid-transfer, and is anything lost or delivered twice?
//!
//! Four servers (the primary and three secondaries), each 100 Mbit/s with
//! 50 ms RTT (both directions, one-BDP drop-tail buffer), serve one 512 MiB
//! resource over one logical stream (≈ 10.7 s at the 400 Mbit/s total), with
//! Cubic. When the client application has read 40 % of it, secondary 2
//! (server 3 of 4) goes down for good: every datagram from or to it is
//! dropped from then on, without any close.
//!
//! The client notices the silence (its path policy's dead timeout, derived
//! from the path's RTT unless set), reports the path dead to the primary,
//! and the primary re-assigns what the path still owed. Reported:
//!
//! * `stall_ms` — the longest gap in in-order delivery to the client
//!   application after its first byte (the failover shows up here);
//! * `bytes_ok` — exactly the resource's length read, every byte verified,
//!   end of stream seen;
//! * `duplicates` — bytes the application read beyond the resource's length
//!   (it reads one ordered stream, so any byte delivered twice shows up
//!   here);
//! * `dead_detected_ms` — from the kill to the primary's `PathDead` event;
//! * `dup_payload_bytes` (informational) — stream payload the client's
//!   session received beyond the resource's length: copies of tail ranges
//!   stolen by faster paths and ranges re-sent after the death, all
//!   discarded by the client before the application sees them.
//!
//! The client's dead timeout is kwik's default (derived from the path's
//! smoothed RTT, which here includes up to one BDP of queueing) unless
//! `--dead-after-ms` sets it; the scheduler runs with
//! [`transfer_config`](crate::multi_harness::transfer_config) and
//! [`BACKLOG`] (`--backlog-ms`); `--kill-at` moves the kill point.
//!
//! A failed check (`bytes_ok` false, duplicates, no `PathDead`, another path
//! declared dead) exits with status 1; the stall is reported, not enforced.

use std::time::{Duration, Instant};

use kwik_sim::multi::{MultiClient, MultiOptions, MultiPrimary, MultiSetup, ServerLink};
use kwik_sim::{KwikNode, Sim};

use crate::harness::{Cc, MIB};
use crate::multi_harness::{
    BACKLOG, check_intact, client_paths, client_read, client_stats, primary_setup, quiet, stalled,
};
use crate::report::Line;

/// Command-line knobs of this scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Resource size in MiB.
    pub mib: u64,
    /// Congestion controller of every connection.
    pub cc: Cc,
    /// Seed of the simulation.
    pub seed: u64,
    /// Share of the resource read when the secondary dies, percent.
    pub kill_at: u64,
    /// The client's dead timeout (`None`: kwik's RTT-derived default).
    pub dead_after: Option<Duration>,
    /// Scheduler backlog (work a path may owe, in time at its rate).
    pub backlog: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mib: 512,
            cc: Cc::Cubic,
            seed: 1,
            kill_at: 40,
            dead_after: None,
            backlog: BACKLOG,
        }
    }
}

/// Servers, the primary included.
const SERVERS: usize = 4;
/// Rate of every link.
const RATE_MBIT: u64 = 100;
/// RTT of every link.
const RTT_MS: u64 = 50;
/// Index (in `MultiSetup::servers`) of the server that dies.
const VICTIM: usize = 2;
/// Virtual-time limit of each phase.
const LIMIT: Duration = Duration::from_secs(600);

/// Follows in-order delivery at every instant of the simulation: where the
/// longest gap lies (the client app records only its length).
#[derive(Debug, Default)]
struct Delivery {
    /// (virtual time, bytes read) at the latest progress.
    last: Option<(Duration, u64)>,
    /// (length, start, end) of the longest gap so far.
    longest: (Duration, Duration, Duration),
}

impl Delivery {
    fn observe(&mut self, sim: &Sim, client: kwik_sim::NodeId) {
        let read = client_read(&sim.node::<KwikNode<MultiClient>>(client).app);
        let now = sim.elapsed();
        match self.last {
            Some((_, r)) if r == read => {}
            Some((t, _)) => {
                if now - t > self.longest.0 {
                    self.longest = (now - t, t, now);
                }
                self.last = Some((now, read));
            }
            None if read > 0 => self.last = Some((now, read)),
            None => {}
        }
    }
}

/// Runs the scenario; the last line printed is its summary.
pub fn main(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let size = opts.mib * MIB;
    let links = vec![ServerLink::new(RATE_MBIT, RTT_MS); SERVERS];
    let mut options = MultiOptions::new(opts.seed, links, size);
    options.congestion = opts.cc.kwik();
    if let Some(dead_after) = opts.dead_after {
        options.tune_client = Box::new(move |c| c.path_policy.dead_after = Some(dead_after));
    }
    let mut s = MultiSetup::new(options, primary_setup(opts.backlog));
    quiet(&mut s);
    eprintln!(
        "failover: {SERVERS} servers x {RATE_MBIT} Mbit/s, {RTT_MS} ms RTT, {} MiB, {}, \
         dead timeout {}, backlog {} ms; server {VICTIM} goes down at {} % read",
        opts.mib,
        opts.cc.name(),
        opts.dead_after
            .map_or("derived from the RTT".to_string(), |d| {
                format!("{} ms", d.as_millis())
            }),
        opts.backlog.as_millis(),
        opts.kill_at
    );
    let client = s.client;
    let primary = s.primary;
    let threshold = size * opts.kill_at / 100;
    let mut delivery = Delivery::default();
    s.sim
        .run_while(LIMIT, |sim| {
            delivery.observe(sim, client);
            client_read(&sim.node::<KwikNode<MultiClient>>(client).app) < threshold
        })
        .map_err(|e| stalled(&s, &format!("before the kill: {e}")))?;
    let victim = s.servers[VICTIM];
    let killed = s.sim.elapsed();
    s.sim.set_down(victim, true);
    eprintln!(
        "  {victim} down at {:.3} s virtual ({} MiB read)",
        killed.as_secs_f64(),
        client_read(s.client()) / MIB
    );
    let mut dead_at = None;
    s.sim
        .run_while(LIMIT, |sim| {
            delivery.observe(sim, client);
            if dead_at.is_none()
                && !sim
                    .node::<KwikNode<MultiPrimary>>(primary)
                    .app
                    .dead
                    .is_empty()
            {
                dead_at = Some(sim.elapsed());
            }
            !sim.all_done()
        })
        .map_err(|e| stalled(&s, &format!("after the kill: {e}")))?;
    let wall = started.elapsed();

    let c = s.client();
    let read = client_read(c);
    let intact = check_intact(&s, size);
    let duplicates = read.saturating_sub(size);
    let stall = c.max_stall;
    let p = s.primary();
    let dead = p.dead.clone();
    let dead_path = p.path_ids[&victim];
    let reassigned: u64 = p.lost.iter().map(|d| d.range.end - d.range.start).sum();
    let received = client_stats(&mut s).map_or(0, |st| st.bytes_received);
    let dup_payload = received.saturating_sub(size);
    let dead_detected = dead_at.map(|t| t.saturating_sub(killed));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let since_kill = |t: Duration| (t.as_secs_f64() - killed.as_secs_f64()) * 1e3;
    eprintln!("  primary's PathDead events: {dead:?}");
    for info in client_paths(&mut s).iter().filter(|i| i.state.is_live()) {
        eprintln!(
            "  {:<6} {:7.1} MiB received, {} packets lost",
            info.id.to_string(),
            info.bytes_received as f64 / MIB as f64,
            info.lost_packets
        );
    }
    let (gap, from, to) = delivery.longest;
    eprintln!(
        "  longest delivery gap {:.1} ms, from kill{:+.1} ms to kill{:+.1} ms; PathDead at \
         kill{:+.1} ms; {reassigned} bytes re-assigned from the dead path",
        ms(gap),
        since_kill(from),
        since_kill(to),
        dead_detected.map_or(f64::NAN, ms)
    );
    let done = intact.as_ref().map_or(Duration::ZERO, |d| *d);
    eprintln!(
        "  => stall {:.1} ms, bytes ok {}, duplicates {duplicates}, duplicate payload \
         {dup_payload} bytes, last byte at {:.3} s; {:.1} s wall",
        ms(stall),
        intact.is_ok(),
        done.as_secs_f64(),
        wall.as_secs_f64()
    );
    Line::new("failover")
        .num("stall_ms", ms(stall), 1)
        .bool("bytes_ok", intact.is_ok())
        .int("duplicates", duplicates)
        .num("dead_detected_ms", dead_detected.map_or(f64::NAN, ms), 1)
        .int("dup_payload_bytes", dup_payload)
        .str("cc", opts.cc.name())
        .int("mib", opts.mib)
        .int("kill_at_percent", opts.kill_at)
        .num("killed_at_s", killed.as_secs_f64(), 3)
        .int("reassigned_bytes", reassigned)
        .num("virtual_s", done.as_secs_f64(), 3)
        .num("wall_s", wall.as_secs_f64(), 2)
        .emit();
    intact?;
    if duplicates != 0 {
        return Err(format!("{duplicates} bytes delivered twice"));
    }
    if dead_detected.is_none() {
        return Err("the primary never learned the path died".to_string());
    }
    if dead.iter().any(|(path, _)| *path != dead_path) {
        return Err(format!("live paths declared dead too: {dead:?}"));
    }
    Ok(())
}
