//! kwik's benchmarks, run in the deterministic virtual-time simulator.
//!
//! ```text
//! cargo run --release --bin kwik-bench -- [sim-cpu|sim-link|mux|all] [flags]
//! ```
//!
//! * `sim-cpu` — CPU cost: wall-clock throughput of one kwik session versus
//!   one bare quinn-proto connection on an unshaped link ([`sim_cpu`]);
//! * `sim-link` — goodput on a 100 Mbit/s, 40 ms RTT link at 0 % and 1 %
//!   loss with Cubic and BBR, with bare quinn-proto as reference
//!   ([`sim_link`]);
//! * `mux` — 16 concurrent logical streams under 2 % loss with 1, 4 and 8
//!   logical streams per real QUIC stream ([`mux`]);
//! * no scenario or `all` — the three in that order.
//!
//! Every scenario writes progress to stderr and JSON lines to stdout; the
//! last stdout line of each scenario is its summary. A failed check (bytes
//! missing or corrupt, a stalled simulation) exits with status 1.

mod harness;
mod mux;
mod report;
mod sim_cpu;
mod sim_link;

use std::process::ExitCode;
use std::time::Instant;

use harness::Cc;

const USAGE: &str = "\
usage: kwik-bench [SCENARIO] [FLAGS]

scenarios:
  sim-cpu    CPU throughput of one kwik session vs bare quinn-proto (unshaped link)
  sim-link   goodput over 100 Mbit/s, 40 ms RTT at 0 % and 1 % loss, Cubic and BBR
  mux        16 x 4 MiB streams at 2 % loss with 1, 4 and 8 streams per lane
  all        the three above, in order (default)

flags:
  --mib N    payload size in MiB (sim-cpu: 256, sim-link: 128)
  --reps N   repetitions per contender in sim-cpu, odd (default 5)
  --cc NAME  congestion controller of mux: bbr (default) or cubic
  --exact    sim-cpu: kwik's receiver also compares every byte (extra work)
  --max-frame-kib N  override kwik's max_frame_payload (default: kwik's own)
  --only S   sim-cpu: run only kwik or quinn-proto (for profiling; no summary)
  --seed N   base seed of the simulations (default 1)
  -h, --help this text";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    SimCpu,
    SimLink,
    Mux,
    All,
}

#[derive(Debug)]
struct Args {
    scenario: Scenario,
    mib: Option<u64>,
    reps: usize,
    cc: Cc,
    seed: u64,
    only: Option<String>,
    exact: bool,
    max_frame_kib: Option<u64>,
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
        cc: mux::Options::default().cc,
        seed: 1,
        only: None,
        exact: false,
        max_frame_kib: None,
    };
    let mut scenario = None;
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--mib" => args.mib = Some(parse_number("--mib", argv.next())?),
            "--reps" => args.reps = parse_number("--reps", argv.next())?,
            "--seed" => args.seed = parse_number("--seed", argv.next())?,
            "--exact" => args.exact = true,
            "--max-frame-kib" => {
                args.max_frame_kib = Some(parse_number("--max-frame-kib", argv.next())?);
            }
            "--only" => {
                let stack = argv.next().ok_or("--only needs a value")?;
                if stack != "kwik" && stack != "quinn-proto" {
                    return Err(format!(
                        "--only: expected kwik or quinn-proto, got {stack:?}"
                    ));
                }
                args.only = Some(stack);
            }
            "--cc" => {
                let name = argv.next().ok_or("--cc needs a value")?;
                args.cc =
                    Cc::parse(&name).ok_or_else(|| format!("--cc: unknown controller {name:?}"))?;
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
                    "all" => Scenario::All,
                    other => return Err(format!("unknown scenario {other:?}")),
                });
            }
        }
    }
    if let Some(s) = scenario {
        args.scenario = s;
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
            cc: args.cc,
            seed: args.seed,
            max_frame,
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
        assert_eq!((a.mib, a.reps, a.cc), (None, 5, Cc::Bbr));
        let a = parse("sim-cpu --reps 3 --mib 16").unwrap().unwrap();
        assert_eq!((a.scenario, a.mib, a.reps), (Scenario::SimCpu, Some(16), 3));
        let a = parse("mux --cc cubic").unwrap().unwrap();
        assert_eq!((a.scenario, a.cc), (Scenario::Mux, Cc::Cubic));
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
    }
}
