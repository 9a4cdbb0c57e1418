//! One kwik session served by several servers at once, on loopback.
//!
//! ```text
//! cargo run --release --example demo
//! cargo run --release --example demo -- --size 1G --servers 4 --rate-mbit 300
//! cargo run --release --example demo -- --json --size 67108864
//! ```
//!
//! Starts, in this one process on 127.0.0.1, a primary and `--servers - 1`
//! secondary servers, each with its sending capped at `--rate-mbit` (so that
//! aggregation is visible on loopback), and a client that downloads a
//! generated resource of `--size` bytes through one session served by all
//! of them (the primary's multi-source transfer helper splits the work by
//! each path's measured rate). The client verifies the SHA-256 of what it
//! read and prints a table of what each server sent; `--json` prints the
//! summary as one JSON line instead (and no progress bars).
//!
//! # Application contract
//!
//! The same as `multi.rs`'s (see its module docs): the resource is
//! `common::generate(0xd3e0, --size)`; the primary sends it whole on its
//! first server-initiated unidirectional stream (id 3) from offset 0 with
//! a FIN, delegating ranges to the secondaries under the descriptor
//! `kwik-demo/generated`, which they serve from the same bytes; the client
//! reads that stream to its end and compares length and SHA-256 with the
//! resource's. Everything runs in this process: one self-signed
//! certificate for `localhost` is made at start and presented by every
//! server; the 32-byte path-token key is drawn at start from the OS and
//! held in memory by the primary (`ServerConfig::token_key`) and the
//! secondaries (`ServerConfig::trusted_keys`), never written anywhere.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BoxError, Served, mib_s};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kwik_tokio::{
    Endpoint, PathPolicy, PathTarget, TokenKey, client_config_trusting, dev, server_config,
};

const USAGE: &str = "\
usage: demo [--size BYTES] [--servers N] [--rate-mbit R] [--json]

  --size BYTES    resource size, K/M/G suffixes allowed (default 256M)
  --servers N     servers serving the session, primary included (default 3)
  --rate-mbit R   sending cap of every server in Mbit/s, 0 = none (default 200)
  --json          print the summary as one JSON line, no progress bars";

struct Args {
    size: u64,
    servers: usize,
    rate_mbit: u64,
    json: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        size: 256 << 20,
        servers: 3,
        rate_mbit: 200,
        json: false,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let mut value = |flag: &str| argv.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--size" => args.size = common::parse_size(&value("--size")?)?,
            "--servers" => {
                args.servers = value("--servers")?
                    .parse()
                    .map_err(|_| "--servers: not a number")?;
            }
            "--rate-mbit" => {
                args.rate_mbit = value("--rate-mbit")?
                    .parse()
                    .map_err(|_| "--rate-mbit: not a number")?;
            }
            "--json" => args.json = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.servers == 0 {
        return Err("--servers must be at least 1".into());
    }
    if args.size == 0 || usize::try_from(args.size).is_err() {
        return Err("--size must be at least 1 byte and fit in memory".into());
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Per-server results for the summary.
struct Row {
    name: String,
    address: SocketAddr,
    /// Payload the server wrote (tail copies and bytes still queued when
    /// the client had everything included).
    bytes: u64,
    /// Bytes the client received from it (UDP payload).
    wire: u64,
}

async fn run(args: &Args) -> Result<bool, BoxError> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    if !args.json {
        eprintln!(
            "generating {} MiB and its SHA-256 ...",
            args.size as f64 / (1 << 20) as f64
        );
    }
    let resource = common::generate(0xd3e0, args.size as usize);
    let expected = common::sha256(&resource);

    // One certificate for every server; one token key shared by the
    // primary (minting path tokens) and the secondaries (verifying them).
    let (cert, key) = dev::self_signed_cert(["localhost"]);
    let base = common::tune_server(server_config(vec![cert.clone()], key)?);
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let token_key = TokenKey::new(secret);

    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel::<Served>();
    let mut secondaries = Vec::new();
    for i in 1..args.servers {
        let mut config = base.clone();
        config.trusted_keys = vec![token_key.clone()];
        let endpoint = common::server_endpoint(config, loopback, args.rate_mbit)?;
        endpoint.serve_resource(common::DESCRIPTOR, Arc::new(resource.clone()));
        tokio::spawn(common::secondary_loop(
            endpoint.clone(),
            i,
            report.clone(),
            false,
        ));
        secondaries.push(endpoint);
    }
    let secondary_addrs: Vec<SocketAddr> = secondaries.iter().map(Endpoint::local_addr).collect();

    let mut config = base.clone();
    config.token_key = Some(token_key);
    let primary = common::server_endpoint(config, loopback, args.rate_mbit)?;
    {
        let primary = primary.clone();
        let resource = resource.clone();
        let secondary_addrs = secondary_addrs.clone();
        let report = report.clone();
        tokio::spawn(async move {
            if let Some(incoming) = primary.accept().await
                && let Ok(session) = incoming.accept().await
                && let Err(e) =
                    common::primary_session(session, secondary_addrs, resource, report, false).await
            {
                eprintln!("primary: {e}");
            }
        });
    }
    drop(report);

    // The client allows exactly the demo's secondaries.
    let mut client_config = common::tune_client(client_config_trusting([cert])?);
    client_config.path_policy =
        PathPolicy::allow(secondary_addrs.iter().map(|a| PathTarget::Address(*a)));
    let client = Endpoint::client(loopback)?;

    let start = Instant::now();
    let session = client
        .connect(primary.local_addr(), "localhost", &client_config)?
        .await?;

    // Progress: total bytes, and each path's throughput (bytes on the wire
    // the client received from it), refreshed by a ticker.
    let bars = MultiProgress::with_draw_target(if args.json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let total_bar = bars.add(ProgressBar::new(args.size));
    total_bar.set_style(ProgressStyle::with_template(
        "{prefix:>10} [{bar:40.cyan/blue}] {binary_bytes:>10}/{binary_total_bytes} {binary_bytes_per_sec:>12} eta {eta}",
    )?.progress_chars("=> "));
    total_bar.set_prefix("total");
    let read = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let session = session.clone();
        let bars = bars.clone();
        let read = read.clone();
        let stop = stop.clone();
        let total_bar = total_bar.clone();
        tokio::spawn(async move {
            let mut lines: Vec<(ProgressBar, u64, Instant)> = Vec::new();
            let style = ProgressStyle::with_template("{prefix:>10} {msg}").expect("template");
            loop {
                let stopping = stop.load(Ordering::Acquire);
                total_bar.set_position(read.load(Ordering::Relaxed));
                let now = Instant::now();
                for (i, p) in common::paths(&session).iter().enumerate() {
                    if lines.len() <= i {
                        let bar = bars.add(ProgressBar::new(0));
                        bar.set_style(style.clone());
                        bar.set_prefix(format!("path {}", p.id.0));
                        lines.push((bar, p.bytes_received, now));
                    }
                    let (bar, last, at) = &mut lines[i];
                    let dt = now.saturating_duration_since(*at);
                    if dt < Duration::from_millis(100) && !stopping {
                        continue;
                    }
                    let rate = mib_s(p.bytes_received.saturating_sub(*last), dt);
                    *last = p.bytes_received;
                    *at = now;
                    bar.set_message(format!(
                        "{:<32} {:>7.1} MiB/s  {:>8.1} MiB received  {:?}",
                        common::path_label(p),
                        rate,
                        p.bytes_received as f64 / (1 << 20) as f64,
                        p.state
                    ));
                }
                if stopping {
                    for (bar, _, _) in &lines {
                        bar.finish();
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let (bytes, digest) = common::download(&session, |n| read.store(n, Ordering::Relaxed)).await?;
    let elapsed = start.elapsed();
    read.store(bytes, Ordering::Relaxed);
    stop.store(true, Ordering::Release);
    let _ = ticker.await;
    total_bar.finish();
    let paths = common::paths(&session);
    session.close(0, b"done")?;
    drop(session);

    // Each server reports the payload it wrote once its session ended.
    let mut served = vec![None; args.servers];
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    while served.iter().any(Option::is_none) {
        tokio::select! {
            r = reports.recv() => match r {
                Some(s) => served[s.server] = Some(s.bytes),
                None => break,
            },
            () = &mut deadline => break,
        }
    }
    let wire = |address: SocketAddr| {
        paths
            .iter()
            .find(|p| p.address == address)
            .map_or(0, |p| p.bytes_received)
    };
    let mut rows = vec![Row {
        name: "primary".into(),
        address: primary.local_addr(),
        bytes: served[0].unwrap_or(0),
        wire: wire(primary.local_addr()),
    }];
    for (i, s) in secondaries.iter().enumerate() {
        rows.push(Row {
            name: format!("secondary {}", i + 1),
            address: s.local_addr(),
            bytes: served[i + 1].unwrap_or(0),
            wire: wire(s.local_addr()),
        });
    }

    let sha_ok = bytes == args.size && digest == expected;
    if args.json {
        println!(
            "{}",
            json_summary(args, bytes, sha_ok, &rows, &paths, elapsed)
        );
    } else {
        print_table(args, bytes, &digest, sha_ok, &rows, elapsed);
    }

    client.wait_idle().await;
    primary.close(0, b"");
    for s in &secondaries {
        s.close(0, b"");
    }
    primary.wait_idle().await;
    Ok(sha_ok)
}

fn print_table(
    args: &Args,
    bytes: u64,
    digest: &[u8; 32],
    sha_ok: bool,
    rows: &[Row],
    elapsed: Duration,
) {
    let total: u64 = rows.iter().map(|r| r.wire).sum::<u64>().max(1);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!();
    println!(
        "{:<12} {:<22} {:>12} {:>14} {:>7} {:>10}",
        "server", "address", "MiB written", "MiB received", "share", "MiB/s"
    );
    for r in rows {
        println!(
            "{:<12} {:<22} {:>12.1} {:>14.1} {:>6.1}% {:>10.1}",
            r.name,
            r.address,
            mib(r.bytes),
            mib(r.wire),
            100.0 * r.wire as f64 / total as f64,
            mib_s(r.wire, elapsed)
        );
    }
    println!(
        "{:<12} {:<22} {:>12} {:>14.1} {:>7} {:>10.1}",
        "total",
        format!("{} servers", rows.len()),
        "",
        mib(bytes),
        "",
        mib_s(bytes, elapsed)
    );
    println!(
        "(written: payload each server wrote; received: what the client got from it, on the wire)"
    );
    let cap = if args.rate_mbit == 0 {
        "uncapped".to_string()
    } else {
        format!("each server capped at {} Mbit/s", args.rate_mbit)
    };
    println!(
        "\n{} bytes in {:.2} s ({:.0} Mbit/s, {cap})",
        bytes,
        elapsed.as_secs_f64(),
        bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "sha256 {} {}",
        common::hex(digest),
        if sha_ok { "OK" } else { "MISMATCH" }
    );
}

fn json_summary(
    args: &Args,
    bytes: u64,
    sha_ok: bool,
    rows: &[Row],
    paths: &[kwik_tokio::PathInfo],
    elapsed: Duration,
) -> String {
    let mut per_path = String::new();
    for (i, r) in rows.iter().enumerate() {
        let path_id = paths
            .iter()
            .find(|p| p.address == r.address)
            .map_or(-1, |p| p.id.0 as i64);
        if i > 0 {
            per_path.push(',');
        }
        let _ = write!(
            per_path,
            "{{\"server\":\"{}\",\"address\":\"{}\",\"path\":{},\"bytes\":{},\"wire_bytes\":{},\"mib_s\":{:.2}}}",
            r.name,
            r.address,
            path_id,
            r.bytes,
            r.wire,
            mib_s(r.wire, elapsed)
        );
    }
    format!(
        "{{\"bytes\":{bytes},\"sha256_ok\":{sha_ok},\"servers\":{},\"rate_mbit\":{},\"seconds\":{:.3},\"per_path\":[{per_path}],\"mib_s\":{:.2}}}",
        rows.len(),
        args.rate_mbit,
        elapsed.as_secs_f64(),
        mib_s(bytes, elapsed)
    )
}
