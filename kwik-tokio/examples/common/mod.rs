//! Pieces shared by the `demo` and `multi` examples: the generated
//! resource, configurations, and the primary's, secondaries' and client's
//! applications.
#![allow(dead_code)] // each example uses a subset

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kwik_tokio::{
    Bytes, ClientConfig, Endpoint, PathFilter, PathInfo, ServerConfig, Session, TransferConfig,
    TransportConfig,
};
use sha2::{Digest, Sha256};

/// The descriptor every server serves the generated resource under.
pub const DESCRIPTOR: &[u8] = b"kwik-demo/generated";

pub type BoxError = Box<dyn Error + Send + Sync>;

/// `len` pseudo-random bytes (xorshift64*), the same for the same seed on
/// every machine, so that servers in separate processes serve one resource.
pub fn generate(seed: u64, len: usize) -> Bytes {
    let mut out = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    Bytes::from(out)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a size with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// Transport settings for loopback: logical-stream windows large enough
/// that every server can work ahead of the reader on its own range.
pub fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_window = 32 << 20;
    t.send_window = 32 << 20;
    t.max_frame_payload = 256 << 10;
    t
}

pub fn tune_server(mut config: ServerConfig) -> ServerConfig {
    config.transport = transport();
    config
}

pub fn tune_client(mut config: ClientConfig) -> ClientConfig {
    config.transport = transport();
    config
}

/// A server endpoint on `addr`, its sending capped at `rate_mbit` Mbit/s
/// (0: uncapped).
pub fn server_endpoint(
    config: ServerConfig,
    addr: SocketAddr,
    rate_mbit: u64,
) -> std::io::Result<Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    if rate_mbit == 0 {
        Endpoint::new(socket, Some(config))
    } else {
        Endpoint::with_send_rate(socket, Some(config), rate_mbit * 1_000_000)
    }
}

/// What a server reports of one session once it ended: payload bytes it
/// wrote.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub server: usize,
    pub bytes: u64,
}

/// A secondary server's application: accepts every joining client, lets
/// the endpoint serve the resource by itself (`serve_resource`), and
/// reports each session's bytes when it ends.
pub async fn secondary_loop(
    endpoint: Endpoint,
    index: usize,
    report: tokio::sync::mpsc::UnboundedSender<Served>,
    verbose: bool,
) {
    while let Some(incoming) = endpoint.accept().await {
        let report = report.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let Ok(session) = incoming.accept().await else {
                return;
            };
            if verbose {
                eprintln!(
                    "secondary {index}: {remote} joined as {:?} of session {}",
                    session.joined_path(),
                    session.id()
                );
            }
            let reason = session.closed().await;
            let bytes = session.stats().bytes_sent;
            if verbose {
                eprintln!("secondary {index}: session ended ({reason}), wrote {bytes} bytes");
            }
            let _ = report.send(Served {
                server: index,
                bytes,
            });
        });
    }
}

/// The primary's application for one session: adds every secondary,
/// serves the resource through the transfer helper, waits for the client's
/// acknowledgement and then for the session's end; reports its own bytes.
pub async fn primary_session(
    session: Session,
    secondaries: Vec<SocketAddr>,
    resource: Bytes,
    report: tokio::sync::mpsc::UnboundedSender<Served>,
    verbose: bool,
) -> Result<(), BoxError> {
    let adds = secondaries.iter().map(|addr| {
        let session = session.clone();
        let addr = *addr;
        async move { (addr, session.add_path(addr, "localhost").await) }
    });
    for (addr, result) in join_all(adds).await {
        match result {
            Ok(path) if verbose => eprintln!("primary: {addr} joined as {path}"),
            Ok(_) => {}
            Err(e) => eprintln!("primary: could not add {addr}: {e}"),
        }
    }
    let stream = session.open_uni().await?;
    let transfer = session.serve(
        stream,
        Arc::new(resource),
        DESCRIPTOR,
        TransferConfig::default(),
    )?;
    transfer.finished().await?;
    if verbose {
        eprintln!("primary: the client acknowledged every byte");
    }
    session.closed().await;
    let _ = report.send(Served {
        server: 0,
        bytes: session.stats().bytes_sent,
    });
    Ok(())
}

/// Runs futures concurrently on the current task and collects their
/// outputs in order.
pub async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}

/// Reads the first stream the primary opens to its end, hashing it;
/// `progress` is called with the bytes read so far.
pub async fn download(
    session: &Session,
    mut progress: impl FnMut(u64),
) -> Result<(u64, [u8; 32]), BoxError> {
    let mut recv = session.accept_uni().await?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
        hasher.update(&chunk);
        total += chunk.len() as u64;
        progress(total);
    }
    Ok((total, hasher.finalize().into()))
}

/// Paths of a session, for display.
pub fn path_label(p: &PathInfo) -> String {
    if p.primary {
        format!("primary   {}", p.address)
    } else {
        format!("secondary {}", p.address)
    }
}

/// Every path of `session`.
pub fn paths(session: &Session) -> Vec<PathInfo> {
    session.paths(PathFilter::All)
}

/// Mebibytes per second.
pub fn mib_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-9)
}
