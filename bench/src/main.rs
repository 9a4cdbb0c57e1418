//! kwik's benchmarks, run in the deterministic virtual-time simulator.
//!
//! ```text
//! cargo run --release --bin kwik-bench -- [sim-cpu|sim-link|mux|priority|aggregate|failover|primary-death|abuse|handshake-flood|chaos|sessions|resume|all] [flags]
//! ```
//!
//! * `sim-cpu` — CPU cost: wall-clock throughput of one kwik session versus
//!   one bare quinn-proto connection on an unshaped link ([`sim_cpu`]);
//! * `sim-link` — goodput on a 100 Mbit/s, 40 ms RTT link at 0 % and 1 %
//!   loss with Cubic and BBR, with bare quinn-proto as reference
//!   ([`sim_link`]);
//! * `mux` — 16 concurrent logical streams under 2 % loss with 1, 4 and 8
//!   logical streams per real QUIC stream ([`mux`]);
//! * `priority` — a 1 KiB message every 50 ms beside a bulk stream that
//!   fills a 100 Mbit/s, 40 ms RTT link: message latency and bulk
//!   efficiency without and with stream priorities ([`priority`]);
//! * `aggregate` — one session served by 2, 4 and 8 servers over
//!   heterogeneous links: goodput against the sum of the links
//!   ([`aggregate`]);
//! * `failover` — 4 servers, one secondary dies at 40 %: longest delivery
//!   stall, lost or duplicated bytes ([`failover`]);
//! * `primary-death` — the primary dies mid-transfer: how soon the client
//!   ends the session and the secondaries are freed ([`primary_death`]);
//! * `abuse` — hostile peers against one session each (tiny records, lanes
//!   before the handshake, floods of credits, acks, AddPaths and
//!   delegations): the attacked endpoint's peak heap growth and CPU time,
//!   measured with the counting allocator ([`abuse`]);
//! * `handshake-flood` — 10 000 forged client Initials and 100 genuine
//!   clients against one server: its peak heap, and whether the genuine
//!   clients get in, with Retry off and with the default configuration
//!   ([`handshake_flood`]);
//! * `chaos` — 1000 seeded random multi-server transfers under loss,
//!   reordering, duplication, outages and deaths, each judged (delivered,
//!   primary-dead error, primary-alive failure, hung, …); one line per
//!   failing seed with its replay command, then the summary ([`chaos`]);
//! * `sessions` — `--count` idle sessions on one server endpoint versus as
//!   many bare quinn-proto connections: heap per idle session, handshake
//!   rate, memory returned after close ([`sessions`]);
//! * `resume` — the first byte of an answer over a 50 ms round trip after a
//!   full handshake versus a resumed session that sends its Hello and
//!   request in 0-RTT, medians of `--reps` alternating runs ([`resume`]);
//! * `loopback` — real UDP on 127.0.0.1: one kwik-tokio session versus one
//!   quinn connection, same crypto and run, medians ([`loopback`]);
//! * `loopback-multi` — real UDP on 127.0.0.1: one session from `--servers`
//!   servers each capped at `--rate-mbit`, versus one such server
//!   ([`loopback_multi`]);
//! * `autoscale` — a primary with automatic scaling and three candidate
//!   secondaries, under a demand that rises and falls: how soon paths are
//!   added and removed, goodput against demand, flapping ([`autoscale`]);
//! * no scenario or `all` — `sim-cpu`, `sim-link` and `mux` in that order
//!   (the multi-server scenarios run only when named).
//!
//! Every scenario writes progress to stderr and JSON lines to stdout; the
//! last stdout line of each scenario is its summary. A failed check (bytes
//! missing or corrupt, a stalled simulation) exits with status 1.
//!
//! The binary's global allocator is kwik-sim's counting allocator, so that
//! `abuse`, `handshake-flood` and `chaos` meter one simulated endpoint's
//! heap; outside a metered call the allocator only adds a thread-local
//! lookup to each allocation.

mod abuse;
mod aggregate;
mod autoscale;
mod chaos;
mod failover;
mod handshake_flood;
mod harness;
mod loopback;
mod loopback_multi;
mod multi_harness;
mod mux;
mod primary_death;
mod priority;
mod report;
mod resume;
mod sessions;
mod sim_cpu;
mod sim_link;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use harness::Cc;
use kwik_sim::abuse::Pattern;

#[global_allocator]
static ALLOC: kwik_sim::alloc::CountingAlloc = kwik_sim::alloc::CountingAlloc;

const USAGE: &str = "\
usage: kwik-bench [SCENARIO] [FLAGS]

scenarios:
  sim-cpu    CPU throughput of one kwik session vs bare quinn-proto (unshaped link)
  sim-link   goodput over 100 Mbit/s, 40 ms RTT at 0 % and 1 % loss, Cubic and BBR
  mux        16 x 4 MiB streams at 2 % loss with 1, 4 and 8 streams per lane
  all        the three above, in order (default)
  priority   1 KiB messages beside a bulk stream: latency without and with priorities
  aggregate  one session from N servers on heterogeneous links (N = 2, 4, 8)
  failover   4 servers, one secondary dies at 40 %: stall, losses, duplicates
  primary-death  the primary dies mid-transfer: client verdict, secondaries freed
  autoscale  demand rises and falls: automatic path addition and removal
  abuse      hostile peers vs one session each: peak heap growth and CPU of the attacked endpoint
  handshake-flood  10 000 forged Initials + 100 clients vs one server: heap, admissions
  chaos      seeded random multi-server transfers with loss and faults, judged
  sessions   --count idle sessions on one server vs bare quinn-proto: heap per session
  resume     first byte of an answer, 50 ms RTT: full handshake vs 0-RTT resumption
  loopback   1 GiB over one kwik-tokio session vs one quinn connection, real UDP on 127.0.0.1
  loopback-multi  one session from --servers rate-capped servers vs one (real UDP)

flags:
  --mib N    payload size in MiB (sim-cpu: 256, sim-link: 128, failover: 512)
  --reps N   repetitions per contender in sim-cpu and resume, odd (default 5)
  --cc NAME  congestion controller: bbr or cubic (mux: bbr, aggregate,
             failover and priority: cubic by default)
  --servers N  aggregate: only N servers (2..=8; default runs 2, 4 and 8)
  --secs N   aggregate: resource sized for N s at full capacity (default 40)
  --verbose  aggregate: per-path rates every second of virtual time
  --backlog-ms N     aggregate, failover: scheduler backlog (default 150)
  --dead-after-ms N  failover: client's dead timeout (default: from the RTT)
  --kill-at PCT      failover: kill when PCT % was read (default 40)
  --rate-mbit N  loopback-multi: cap of every server's sending (default 200)
  --initials N   handshake-flood: forged Initials (default 10000)
  --count N      sessions: concurrent sessions (default 10000)
  --exact    sim-cpu: kwik's receiver also compares every byte (extra work)
  --max-frame-kib N  override kwik's max_frame_payload (default: kwik's own)
  --only S   sim-cpu: run only kwik or quinn-proto (for profiling; no summary);
             chaos: replay seed S verbosely
  --seeds N        chaos: number of seeds (default 1000)
  --seed-base S    chaos: first seed (default 1)
  --max-loss L     chaos: highest random loss of a link (default 0.2)
  --mix K=V,...    chaos: fault / controller / size mix (see bench/src/chaos.rs)
  --jobs N         chaos: worker threads (default 1)
  --all            chaos: a line for every seed, not only failing ones
  --datagrams      chaos --only: trace every datagram sent, dropped or delivered
  --pattern NAME  abuse: run only this pattern (tiny-records, gapped-tiny-records,
             descending-tiny-records, duplicate-tiny-records, pre-handshake-lanes,
             fresh-id-credits, arbitrary-acks, served-acks, refused-addpaths, delegate-flood)
  --seed N   base seed of the simulations (default 1)
  -h, --help this text";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    SimCpu,
    SimLink,
    Mux,
    Priority,
    Aggregate,
    Failover,
    PrimaryDeath,
    Autoscale,
    Abuse,
    HandshakeFlood,
    Chaos,
    Sessions,
    Resume,
    Loopback,
    LoopbackMulti,
    All,
}

#[derive(Debug)]
struct Args {
    scenario: Scenario,
    mib: Option<u64>,
    reps: usize,
    cc: Option<Cc>,
    seed: u64,
    only: Option<String>,
    exact: bool,
    max_frame_kib: Option<u64>,
    servers: Option<usize>,
    secs: u64,
    verbose: bool,
    rate_mbit: Option<u64>,
    backlog_ms: Option<u64>,
    dead_after_ms: Option<u64>,
    kill_at: u64,
    pattern: Option<Pattern>,
    initials: u64,
    count: usize,
    seeds: u64,
    seed_base: u64,
    max_loss: f64,
    mix: Option<String>,
    jobs: usize,
    all_seeds: bool,
    datagrams: bool,
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|_| format!("{flag}: not a number: {value:?}"))
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        scenario: Scenario::All,
        mib: None,
        reps: sim_cpu::Options::default().reps,
        cc: None,
        seed: 1,
        only: None,
        exact: false,
        max_frame_kib: None,
        servers: None,
        secs: aggregate::Options::default().secs,
        verbose: false,
        rate_mbit: None,
        backlog_ms: None,
        dead_after_ms: None,
        kill_at: failover::Options::default().kill_at,
        pattern: None,
        initials: handshake_flood::Options::default().initials,
        count: sessions::Options::default().count,
        seeds: chaos::Options::default().seeds,
        seed_base: chaos::Options::default().seed_base,
        max_loss: chaos::Options::default().max_loss,
        mix: None,
        jobs: chaos::Options::default().jobs,
        all_seeds: false,
        datagrams: false,
    };
    let mut scenario = None;
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--mib" => args.mib = Some(parse_number("--mib", argv.next())?),
            "--reps" => args.reps = parse_number("--reps", argv.next())?,
            "--seed" => args.seed = parse_number("--seed", argv.next())?,
            "--exact" => args.exact = true,
            "--verbose" => args.verbose = true,
            "--servers" => args.servers = Some(parse_number("--servers", argv.next())?),
            "--secs" => args.secs = parse_number("--secs", argv.next())?,
            "--backlog-ms" => args.backlog_ms = Some(parse_number("--backlog-ms", argv.next())?),
            "--dead-after-ms" => {
                args.dead_after_ms = Some(parse_number("--dead-after-ms", argv.next())?);
            }
            "--kill-at" => args.kill_at = parse_number("--kill-at", argv.next())?,
            "--pattern" => {
                let name = argv.next().ok_or("--pattern needs a value")?;
                args.pattern = Some(
                    Pattern::from_name(&name)
                        .ok_or_else(|| format!("--pattern: unknown pattern {name:?}"))?,
                );
            }
            "--initials" => args.initials = parse_number("--initials", argv.next())?,
            "--count" => args.count = parse_number("--count", argv.next())?,
            "--seeds" => args.seeds = parse_number("--seeds", argv.next())?,
            "--seed-base" => args.seed_base = parse_number("--seed-base", argv.next())?,
            "--max-loss" => args.max_loss = parse_number("--max-loss", argv.next())?,
            "--mix" => args.mix = Some(argv.next().ok_or("--mix needs a value")?),
            "--jobs" => args.jobs = parse_number("--jobs", argv.next())?,
            "--all" => args.all_seeds = true,
            "--datagrams" => args.datagrams = true,
            "--rate-mbit" => args.rate_mbit = Some(parse_number("--rate-mbit", argv.next())?),
            "--max-frame-kib" => {
                args.max_frame_kib = Some(parse_number("--max-frame-kib", argv.next())?);
            }
            "--only" => args.only = Some(argv.next().ok_or("--only needs a value")?),
            "--cc" => {
                let name = argv.next().ok_or("--cc needs a value")?;
                args.cc = Some(
                    Cc::parse(&name).ok_or_else(|| format!("--cc: unknown controller {name:?}"))?,
                );
            }
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag:?}")),
            name => {
                if scenario.is_some() {
                    return Err(format!("more than one scenario given ({name:?})"));
                }
                scenario = Some(match name {
                    "sim-cpu" => Scenario::SimCpu,
                    "sim-link" => Scenario::SimLink,
                    "mux" => Scenario::Mux,
                    "priority" => Scenario::Priority,
                    "aggregate" => Scenario::Aggregate,
                    "failover" => Scenario::Failover,
                    "primary-death" => Scenario::PrimaryDeath,
                    "autoscale" => Scenario::Autoscale,
                    "abuse" => Scenario::Abuse,
                    "handshake-flood" => Scenario::HandshakeFlood,
                    "chaos" => Scenario::Chaos,
                    "sessions" => Scenario::Sessions,
                    "resume" => Scenario::Resume,
                    "loopback" => Scenario::Loopback,
                    "loopback-multi" => Scenario::LoopbackMulti,
                    "all" => Scenario::All,
                    other => return Err(format!("unknown scenario {other:?}")),
                });
            }
        }
    }
    if let Some(s) = scenario {
        args.scenario = s;
    }
    if let Some(only) = &args.only {
        if args.scenario == Scenario::Chaos {
            if only.parse::<u64>().is_err() {
                return Err(format!("--only: expected a seed, got {only:?}"));
            }
        } else if only != "kwik" && only != "quinn-proto" && only != "quinn" {
            return Err(format!(
                "--only: expected kwik or quinn-proto, got {only:?}"
            ));
        }
    }
    if !(0.0..=1.0).contains(&args.max_loss) {
        return Err(format!("--max-loss must be 0 to 1, got {}", args.max_loss));
    }
    if args.seeds == 0 {
        return Err("--seeds must be at least 1".to_string());
    }
    if args.count == 0 {
        return Err("--count must be at least 1".to_string());
    }
    if args.jobs == 0 {
        return Err("--jobs must be at least 1".to_string());
    }
    if args.reps == 0 || args.reps % 2 == 0 {
        return Err(format!("--reps must be odd, got {}", args.reps));
    }
    if args.max_frame_kib == Some(0) {
        return Err("--max-frame-kib must be at least 1".to_string());
    }
    if args.mib == Some(0) {
        return Err("--mib must be at least 1".to_string());
    }
    if let Some(n) = args.servers
        && args.scenario == Scenario::Aggregate
        && !(2..=aggregate::LINKS.len()).contains(&n)
    {
        return Err(format!(
            "--servers must be 2 to {}, got {n}",
            aggregate::LINKS.len()
        ));
    }
    if args.secs == 0 {
        return Err("--secs must be at least 1".to_string());
    }
    if !(1..=99).contains(&args.kill_at) {
        return Err(format!("--kill-at must be 1 to 99, got {}", args.kill_at));
    }
    if args.initials == 0 {
        return Err("--initials must be at least 1".to_string());
    }
    if args.dead_after_ms == Some(0) {
        return Err("--dead-after-ms must be at least 1".to_string());
    }
    Ok(Some(args))
}

fn run(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let max_frame = args.max_frame_kib.map(|k| k << 10);
    if let Some(bytes) = max_frame {
        eprintln!("kwik: max_frame_payload overridden to {bytes} bytes");
    }
    let all = args.scenario == Scenario::All;
    if all || args.scenario == Scenario::SimCpu {
        let defaults = sim_cpu::Options::default();
        sim_cpu::main(&sim_cpu::Options {
            mib: args.mib.unwrap_or(defaults.mib),
            reps: args.reps,
            seed: args.seed,
            exact: args.exact,
            max_frame,
            only: args.only.clone(),
        })?;
    }
    if all || args.scenario == Scenario::SimLink {
        let defaults = sim_link::Options::default();
        sim_link::main(&sim_link::Options {
            mib: args.mib.unwrap_or(defaults.mib),
            seed: args.seed,
            max_frame,
        })?;
    }
    if all || args.scenario == Scenario::Mux {
        mux::main(&mux::Options {
            cc: args.cc.unwrap_or(mux::Options::default().cc),
            seed: args.seed,
            max_frame,
        })?;
    }
    if args.scenario == Scenario::Priority {
        priority::main(&priority::Options {
            cc: args.cc.unwrap_or(priority::Options::default().cc),
            seed: args.seed,
        })?;
    }
    if args.scenario == Scenario::Aggregate {
        let defaults = aggregate::Options::default();
        aggregate::main(&aggregate::Options {
            servers: args.servers.map_or(defaults.servers, |n| vec![n]),
            secs: args.secs,
            cc: args.cc.unwrap_or(defaults.cc),
            seed: args.seed,
            backlog: args
                .backlog_ms
                .map_or(defaults.backlog, Duration::from_millis),
            verbose: args.verbose,
        })?;
    }
    if args.scenario == Scenario::Failover {
        let defaults = failover::Options::default();
        failover::main(&failover::Options {
            mib: args.mib.unwrap_or(defaults.mib),
            cc: args.cc.unwrap_or(defaults.cc),
            seed: args.seed,
            kill_at: args.kill_at,
            dead_after: args.dead_after_ms.map(Duration::from_millis),
            backlog: args
                .backlog_ms
                .map_or(defaults.backlog, Duration::from_millis),
        })?;
    }
    if args.scenario == Scenario::Autoscale {
        autoscale::run(args.seed)?;
        return Ok(());
    }
    if args.scenario == Scenario::PrimaryDeath {
        primary_death::main()?;
    }
    if args.scenario == Scenario::Abuse {
        abuse::main(&abuse::Options {
            seed: args.seed,
            pattern: args.pattern,
        })?;
    }
    if args.scenario == Scenario::HandshakeFlood {
        handshake_flood::main(&handshake_flood::Options {
            initials: args.initials,
            seed: args.seed,
            ..handshake_flood::Options::default()
        })?;
    }
    if args.scenario == Scenario::Chaos {
        chaos::main(&chaos::Options {
            seeds: args.seeds,
            seed_base: args.seed_base,
            max_loss: args.max_loss,
            only: args.only.as_deref().map(|s| s.parse().expect("checked")),
            mix: args.mix.clone(),
            jobs: args.jobs,
            all: args.all_seeds,
            datagrams: args.datagrams,
        })?;
    }
    if args.scenario == Scenario::Sessions {
        sessions::run(&sessions::Options {
            count: args.count,
            seed: args.seed,
        })?;
    }
    if args.scenario == Scenario::Resume {
        resume::main(&resume::Options {
            reps: args.reps,
            seed: args.seed,
        })?;
    }
    if args.scenario == Scenario::Loopback {
        loopback::main(&loopback::Options {
            mib: args.mib.unwrap_or(loopback::Options::default().mib),
            reps: args.reps,
            only: args
                .only
                .as_deref()
                .map(|s| if s == "kwik" { "kwik" } else { "quinn" }.to_string()),
        })?;
    }
    if args.scenario == Scenario::LoopbackMulti {
        let defaults = loopback_multi::Options::default();
        loopback_multi::main(&loopback_multi::Options {
            servers: args.servers.unwrap_or(defaults.servers),
            rate_mbit: args.rate_mbit.unwrap_or(defaults.rate_mbit),
            mib: args.mib.unwrap_or(defaults.mib),
        })?;
    }
    if all {
        eprintln!(
            "all scenarios: {:.1} s wall",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kwik-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kwik-bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Args>, String> {
        parse_args(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn parses_scenarios_and_flags() {
        let a = parse("").unwrap().unwrap();
        assert_eq!(a.scenario, Scenario::All);
        assert_eq!((a.mib, a.reps, a.cc), (None, 5, None));
        let a = parse("sim-cpu --reps 3 --mib 16").unwrap().unwrap();
        assert_eq!((a.scenario, a.mib, a.reps), (Scenario::SimCpu, Some(16), 3));
        let a = parse("mux --cc cubic").unwrap().unwrap();
        assert_eq!((a.scenario, a.cc), (Scenario::Mux, Some(Cc::Cubic)));
        let a = parse("aggregate --servers 4 --secs 10").unwrap().unwrap();
        assert_eq!(
            (a.scenario, a.servers, a.secs),
            (Scenario::Aggregate, Some(4), 10)
        );
        let a = parse("failover --mib 64 --cc bbr --kill-at 50 --dead-after-ms 300")
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.scenario, a.mib, a.cc, a.kill_at, a.dead_after_ms),
            (Scenario::Failover, Some(64), Some(Cc::Bbr), 50, Some(300))
        );
        let a = parse("abuse --pattern delegate-flood --seed 3")
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.scenario, a.pattern, a.seed),
            (Scenario::Abuse, Some(Pattern::DelegateFlood), 3)
        );
        let a = parse("handshake-flood --initials 500 --seed 3")
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.scenario, a.initials, a.seed),
            (Scenario::HandshakeFlood, 500, 3)
        );
        let a = parse("chaos --seeds 20 --seed-base 5 --max-loss 0.02 --only 7 --jobs 2")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                a.scenario,
                a.seeds,
                a.seed_base,
                a.max_loss,
                a.only.as_deref(),
                a.jobs
            ),
            (Scenario::Chaos, 20, 5, 0.02, Some("7"), 2)
        );
        let a = parse("priority --cc bbr").unwrap().unwrap();
        assert_eq!((a.scenario, a.cc), (Scenario::Priority, Some(Cc::Bbr)));
        let a = parse("resume --reps 7").unwrap().unwrap();
        assert_eq!((a.scenario, a.reps), (Scenario::Resume, 7));
        assert!(parse("--help").unwrap().is_none());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse("sim-cpu --reps 4").is_err());
        assert!(parse("nope").is_err());
        assert!(parse("--mib").is_err());
        assert!(parse("--cc reno").is_err());
        assert!(parse("sim-cpu mux").is_err());
        assert!(parse("sim-cpu --only quic").is_err());
        assert!(parse("aggregate --servers 1").is_err());
        assert!(parse("aggregate --servers 9").is_err());
        assert!(parse("aggregate --secs 0").is_err());
        assert!(parse("failover --kill-at 100").is_err());
        assert!(parse("failover --dead-after-ms 0").is_err());
        assert!(parse("abuse --pattern nope").is_err());
        assert!(parse("abuse --pattern").is_err());
        assert!(parse("handshake-flood --initials 0").is_err());
        assert!(parse("chaos --only kwik").is_err());
        assert!(parse("chaos --max-loss 2").is_err());
        assert!(parse("chaos --seeds 0").is_err());
    }
}
