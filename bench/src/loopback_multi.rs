//! `loopback-multi` — aggregation over real UDP on 127.0.0.1: one
//! kwik-tokio session served by a primary and `servers - 1` secondaries,
//! each server's sending capped at `--rate-mbit` (a token bucket under its
//! socket, see `kwik_async::rate_limited`), against the same download from
//! the primary alone under the same cap, in the same run.
//!
//! The primary adds every secondary (`add_path`) and serves the resource
//! with the multi-source transfer helper (`Session::serve`); secondaries
//! serve it by themselves (`Endpoint::serve_resource`). Goodput counts the
//! resource bytes the client read, verified, from the moment its session
//! is established (paths joining included) to the last byte. Congestion
//! control: Cubic. Speedup = multi-server goodput ÷ single-server goodput.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kwik_tokio::{
    ClientConfig, CongestionControl, Endpoint, PathPolicy, PathTarget, ServerConfig, TokenKey,
    TransferConfig, TransportConfig, client_config_trusting, dev, server_config,
};

use crate::report::Line;

/// Options of the scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Servers in the multi-server run, primary included.
    pub servers: usize,
    /// Cap of every server's sending, in Mbit/s.
    pub rate_mbit: u64,
    /// Resource size in MiB.
    pub mib: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            servers: 3,
            rate_mbit: 200,
            // Long enough that joining and the tail cost little (≈ 11 s
            // from one server at 200 Mbit/s).
            mib: 256,
        }
    }
}

const DESCRIPTOR: &[u8] = b"loopback-multi";

fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.congestion = CongestionControl::Cubic;
    // Every server works ahead of the reader on its own range.
    t.stream_window = 32 << 20;
    t.send_window = 32 << 20;
    t.max_frame_payload = 256 << 10;
    t
}

fn resource(len: usize) -> Bytes {
    let mut out = vec![0u8; len];
    let mut x: u64 = 0x0bad_cafe_f00d_beef;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    Bytes::from(out)
}

fn endpoint(config: ServerConfig, rate_mbit: u64) -> Result<Endpoint, String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Endpoint::with_send_rate(socket, Some(config), rate_mbit * 1_000_000).map_err(|e| e.to_string())
}

/// One download of `data` from `servers` capped servers; returns the time
/// from session establishment to the last byte.
async fn run(servers: usize, rate_mbit: u64, data: &Bytes) -> Result<Duration, String> {
    let (cert, key) = dev::self_signed_cert(["localhost"]);
    let mut base = server_config(vec![cert.clone()], key).map_err(|e| e.to_string())?;
    base.transport = transport();
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let token_key = TokenKey::new(secret);

    let mut secondaries = Vec::new();
    for _ in 1..servers {
        let mut config = base.clone();
        config.trusted_keys = vec![token_key.clone()];
        let secondary = endpoint(config, rate_mbit)?;
        secondary.serve_resource(DESCRIPTOR, Arc::new(data.clone()));
        let accepting = secondary.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(async move {
                    if let Ok(session) = incoming.accept().await {
                        session.closed().await;
                    }
                });
            }
        });
        secondaries.push(secondary);
    }
    let addrs: Vec<SocketAddr> = secondaries.iter().map(Endpoint::local_addr).collect();

    let mut config = base.clone();
    config.token_key = Some(token_key);
    let primary = endpoint(config, rate_mbit)?;
    let serving = {
        let primary = primary.clone();
        let addrs = addrs.clone();
        let data = data.clone();
        tokio::spawn(async move {
            let incoming = primary.accept().await.ok_or("no client")?;
            let session = incoming.accept().await.map_err(|e| e.to_string())?;
            for addr in addrs {
                session
                    .add_path(addr, "localhost")
                    .await
                    .map_err(|e| format!("add_path {addr}: {e}"))?;
            }
            let stream = session.open_uni().await.map_err(|e| e.to_string())?;
            let transfer = session
                .serve(
                    stream,
                    Arc::new(data),
                    DESCRIPTOR,
                    TransferConfig::default(),
                )
                .map_err(|e| e.to_string())?;
            transfer.finished().await.map_err(|e| e.to_string())?;
            session.closed().await;
            Ok::<(), String>(())
        })
    };

    let mut client_config: ClientConfig =
        client_config_trusting([cert]).map_err(|e| e.to_string())?;
    client_config.transport = transport();
    client_config.path_policy = PathPolicy::allow(addrs.iter().map(|a| PathTarget::Address(*a)));
    let client =
        Endpoint::client("127.0.0.1:0".parse().expect("address")).map_err(|e| e.to_string())?;
    let session = client
        .connect(primary.local_addr(), "localhost", &client_config)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut recv = session.accept_uni().await.map_err(|e| e.to_string())?;
    let mut at = 0usize;
    while let Some(chunk) = recv
        .read_chunk(usize::MAX)
        .await
        .map_err(|e| e.to_string())?
    {
        let end = at + chunk.len();
        if end > data.len() || chunk[..] != data[at..end] {
            return Err(format!("corrupt or excess bytes at {at}"));
        }
        at = end;
    }
    let elapsed = start.elapsed();
    if at != data.len() {
        return Err(format!("received {at} of {} bytes", data.len()));
    }
    session.close(0, b"done").map_err(|e| e.to_string())?;
    drop(recv);
    drop(session);
    serving.await.map_err(|e| e.to_string())??;
    client.wait_idle().await;
    primary.close(0, b"");
    for s in &secondaries {
        s.close(0, b"");
    }
    primary.wait_idle().await;
    Ok(elapsed)
}

/// Runs the scenario: one line per run, the summary last.
pub fn main(opts: &Options) -> Result<(), String> {
    if opts.servers < 2 || opts.rate_mbit == 0 {
        return Err("loopback-multi needs --servers >= 2 and --rate-mbit >= 1".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let data = resource((opts.mib << 20) as usize);
    eprintln!(
        "loopback-multi: {} MiB, every server capped at {} Mbit/s, 1 then {} servers",
        opts.mib, opts.rate_mbit, opts.servers
    );
    let mut goodput = Vec::new();
    for servers in [1, opts.servers] {
        let elapsed = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(600),
                run(servers, opts.rate_mbit, &data),
            )
            .await
            .map_err(|_| format!("{servers} servers: timed out"))?
        })?;
        let mbit = data.len() as f64 * 8.0 / elapsed.as_secs_f64() / 1e6;
        eprintln!(
            "  {servers} server(s): {mbit:.1} Mbit/s ({:.2} s)",
            elapsed.as_secs_f64()
        );
        Line::new("loopback-multi")
            .int("servers", servers as u64)
            .int("rate_mbit", opts.rate_mbit)
            .int("bytes", data.len() as u64)
            .num("seconds", elapsed.as_secs_f64(), 3)
            .num("goodput_mbit", mbit, 1)
            .emit();
        goodput.push(mbit);
    }
    let (single, multi) = (goodput[0], goodput[1]);
    Line::new("loopback-multi")
        .int("servers", opts.servers as u64)
        .int("rate_mbit", opts.rate_mbit)
        .int("mib", opts.mib)
        .num("goodput_mbit", multi, 1)
        .num("single_mbit", single, 1)
        .num("speedup", multi / single, 3)
        .num(
            "efficiency",
            multi / (opts.servers as f64 * opts.rate_mbit as f64),
            3,
        )
        .str("cc", "cubic")
        .emit();
    Ok(())
}
