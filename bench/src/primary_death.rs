//! `primary-death`: how soon does a client notice that its primary died
//! mid-transfer, and how soon are the secondaries told?
//!
//! Three servers (the primary and two secondaries), each 100 Mbit/s with
//! 50 ms RTT, serve one resource over one logical stream. One second into
//! the transfer the primary goes down for good: every datagram from or to it
//! is dropped, without any close.
//!
//! The primary is the session's offset authority (PROTOCOL.md §10.11): the
//! session cannot outlive it. A dead primary and an outage look the same
//! from the client, so kwik's default rides the silence out until QUIC's
//! idle timeout (an outage shorter than that is survived). A client that
//! prefers a fast verdict sets `PathPolicy::primary_lost_after`; the main
//! figures are measured with it at zero (not before the path's own dead
//! timeout), and the default's verdict is reported beside them:
//!
//! * `detect_ms` — from the kill to the client's `SessionClosed` with
//!   `PrimaryLost` (fast verdict);
//! * `secondaries_freed_ms` — from the kill until every secondary closed
//!   its session (the client closes their connections with
//!   `KWIK_PATH_DEAD`);
//! * `default_detect_ms`, `default_secondaries_freed_ms` — the same with
//!   the default policy (the idle timeout, 30 s, decides).
//!
//! A run whose session ends with another reason, or whose secondaries are
//! never freed, exits with status 1.

use std::time::{Duration, Instant};

use kwik_core::CloseReason;
use kwik_sim::KwikNode;
use kwik_sim::multi::{MultiOptions, MultiSetup, SecondaryApp, ServerLink};

use crate::harness::MIB;
use crate::multi_harness::{BACKLOG, primary_setup, quiet};
use crate::report::Line;

/// Round trip of every link.
const RTT_MS: u64 = 50;
/// Rate of every link.
const RATE_MBIT: u64 = 100;
/// Servers, the primary included.
const SERVERS: usize = 3;
/// How far into the transfer the primary dies.
const KILL_AFTER: Duration = Duration::from_secs(1);
/// Virtual-time limit of each phase.
const LIMIT: Duration = Duration::from_secs(120);

/// What one run measured.
struct Outcome {
    reason: CloseReason,
    detect: Duration,
    freed: Duration,
}

/// One run: the primary dies `KILL_AFTER` into the transfer.
fn run(fast: bool) -> Result<Outcome, String> {
    let links = vec![ServerLink::new(RATE_MBIT, RTT_MS); SERVERS];
    // Far more than the run can carry: the transfer is in full flight.
    let mut options = MultiOptions::new(31, links, 1024 * MIB);
    if fast {
        options.tune_client = Box::new(|c| c.path_policy.primary_lost_after = Some(Duration::ZERO));
    }
    let mut s = MultiSetup::new(options, primary_setup(BACKLOG));
    quiet(&mut s);
    s.sim.run_for(KILL_AFTER);
    if s.client().total() == 0 {
        return Err("no data flowed before the kill".to_string());
    }
    let killed = s.sim.elapsed();
    s.sim.set_down(s.servers[0], true);
    let ended = s.run_until_client(LIMIT, |c| c.closed.is_some());
    let reason = s
        .client()
        .closed
        .clone()
        .ok_or("the client never noticed the primary's death")?;
    let secondaries = s.secondaries.clone();
    let freed = s
        .sim
        .run_while(LIMIT, |sim| {
            secondaries.iter().any(|id| {
                sim.node::<KwikNode<SecondaryApp>>(*id)
                    .app
                    .closed
                    .is_empty()
            })
        })
        .map_err(|e| format!("the secondaries were never freed: {e}"))?;
    Ok(Outcome {
        reason,
        detect: ended.saturating_sub(killed),
        freed: freed.saturating_sub(killed),
    })
}

/// Runs the scenario; the last line printed is its summary.
pub fn main() -> Result<(), String> {
    let started = Instant::now();
    eprintln!(
        "primary-death: {SERVERS} servers x {RATE_MBIT} Mbit/s, {RTT_MS} ms RTT; the primary \
         goes down {} s into the transfer",
        KILL_AFTER.as_secs()
    );
    let fast = run(true)?;
    let default = run(false)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (name, o) in [("primary_lost_after = 0", &fast), ("default", &default)] {
        eprintln!(
            "  {name}: session ended after {:.1} ms ({}), secondaries freed after {:.1} ms",
            ms(o.detect),
            o.reason,
            ms(o.freed)
        );
    }
    Line::new("primary-death")
        .num("detect_ms", ms(fast.detect), 1)
        .num("secondaries_freed_ms", ms(fast.freed), 1)
        .int("rtt_ms", RTT_MS)
        .str("policy", "primary_lost_after=0")
        .str("reason", &fast.reason.to_string())
        .num("default_detect_ms", ms(default.detect), 1)
        .num("default_secondaries_freed_ms", ms(default.freed), 1)
        .str("default_reason", &default.reason.to_string())
        .num("wall_s", started.elapsed().as_secs_f64(), 2)
        .emit();
    if fast.reason != CloseReason::PrimaryLost {
        return Err(format!("expected PrimaryLost, got {}", fast.reason));
    }
    Ok(())
}
