//! `loopback` — one kwik-tokio session versus one plain quinn connection
//! over real UDP on 127.0.0.1, in the same process and run.
//!
//! Both contenders run on one tokio runtime (two worker threads), with the
//! same crypto (TLS 1.3, AES-128-GCM only, ring), the same congestion
//! controller (Cubic), the same windows (16 MiB send window, 8 MiB stream
//! receive window) and the same application: the client opens one
//! unidirectional stream and writes `--mib` MiB in 256 KiB chunks (the same
//! shared buffer, no copying by the application), the server reads it to
//! its end and checks every byte. Time runs from the first write to the
//! server's end of stream; handshakes are excluded. Contenders alternate,
//! `--reps` runs each, and the summary compares medians.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::report::{Line, median};

/// Options of the scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Payload per run, in MiB.
    pub mib: u64,
    /// Runs per contender (odd).
    pub reps: usize,
    /// Run only one contender (`kwik` or `quinn`), for profiling.
    pub only: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mib: 1024,
            reps: 5,
            only: None,
        }
    }
}

/// Bytes per write call, both stacks.
const CHUNK: usize = 256 << 10;
/// The pattern the writers repeat: a multiple of [`CHUNK`].
const PATTERN: usize = 16 << 20;
const STREAM_WINDOW: u64 = 8 << 20;
const SEND_WINDOW: u64 = 16 << 20;
const SERVER_NAME: &str = "localhost";

/// TLS 1.3 with exactly one suite, AES-128-GCM-SHA256, for both stacks.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(provider)
}

pub(crate) struct Tls {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
}

/// Server and client TLS configurations for one fresh self-signed
/// certificate for `localhost` (ALPN left to each stack).
pub(crate) fn tls() -> Result<Tls, String> {
    let (cert, key): (CertificateDer<'static>, PrivateKeyDer<'static>) =
        kwik_tokio::dev::self_signed_cert([SERVER_NAME]);
    let err = |e: rustls::Error| e.to_string();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .map_err(err)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).map_err(err)?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Tls { server, client })
}

fn pattern() -> Bytes {
    let mut out = vec![0u8; PATTERN];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    Bytes::from(out)
}

/// Checks `chunk`, read at stream offset `at`, against the repeated
/// pattern.
fn verify(pattern: &Bytes, at: u64, chunk: &[u8]) -> bool {
    let mut offset = (at % PATTERN as u64) as usize;
    let mut rest = chunk;
    while !rest.is_empty() {
        let n = rest.len().min(PATTERN - offset);
        if rest[..n] != pattern[offset..offset + n] {
            return false;
        }
        rest = &rest[n..];
        offset = 0;
    }
    true
}

fn loopback() -> SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, 0).into()
}

/// One kwik-tokio transfer of `bytes`; returns the elapsed time.
async fn kwik_run(tls: &Tls, data: &Bytes, bytes: u64) -> Result<Duration, String> {
    use kwik_tokio::{ClientConfig, CongestionControl, Endpoint, ServerConfig, TransportConfig};
    let mut transport = TransportConfig::default();
    transport.congestion = CongestionControl::Cubic;
    transport.stream_window = STREAM_WINDOW;
    transport.send_window = SEND_WINDOW;
    let mut server_config = ServerConfig::new(tls.server.clone()).map_err(|e| e.to_string())?;
    server_config.transport = transport.clone();
    let mut client_config = ClientConfig::new(tls.client.clone()).map_err(|e| e.to_string())?;
    client_config.transport = transport;

    let server = Endpoint::server(server_config, loopback()).map_err(|e| e.to_string())?;
    let client = Endpoint::client(loopback()).map_err(|e| e.to_string())?;
    let reader = {
        let server = server.clone();
        let data = data.clone();
        tokio::spawn(async move {
            let incoming = server.accept().await.ok_or("no connection")?;
            let session = incoming.accept().await.map_err(|e| e.to_string())?;
            let mut recv = session.accept_uni().await.map_err(|e| e.to_string())?;
            let mut at = 0u64;
            while let Some(chunk) = recv
                .read_chunk(usize::MAX)
                .await
                .map_err(|e| e.to_string())?
            {
                if !verify(&data, at, &chunk) {
                    return Err(format!("kwik: corrupt bytes at {at}"));
                }
                at += chunk.len() as u64;
            }
            // The client closes once it has the result.
            Ok::<_, String>((at, Instant::now(), session))
        })
    };
    let session = client
        .connect(server.local_addr(), SERVER_NAME, &client_config)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let mut send = session.open_uni().await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        let at = (sent % PATTERN as u64) as usize;
        send.write_chunk(data.slice(at..at + n))
            .await
            .map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    send.finish().map_err(|e| e.to_string())?;
    let (received, end, server_session) = reader.await.map_err(|e| e.to_string())??;
    drop(send);
    session.close(0, b"").map_err(|e| e.to_string())?;
    drop(session);
    drop(server_session);
    if received != bytes {
        return Err(format!("kwik: received {received} of {bytes} bytes"));
    }
    client.wait_idle().await;
    server.close(0, b"");
    server.wait_idle().await;
    Ok(end - start)
}

/// One quinn transfer of `bytes`; returns the elapsed time.
async fn quinn_run(tls: &Tls, data: &Bytes, bytes: u64) -> Result<Duration, String> {
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    let alpn = b"loopback-bench".to_vec();
    let mut server_tls = tls.server.clone();
    server_tls.alpn_protocols = vec![alpn.clone()];
    server_tls.max_early_data_size = 0;
    let mut client_tls = tls.client.clone();
    client_tls.alpn_protocols = vec![alpn];

    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u64(STREAM_WINDOW).expect("small"))
        .receive_window(quinn::VarInt::MAX)
        .send_window(SEND_WINDOW)
        .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
    let transport = Arc::new(transport);
    let crypto = QuicServerConfig::try_from(server_tls).map_err(|e| e.to_string())?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(transport.clone());
    let crypto = QuicClientConfig::try_from(client_tls).map_err(|e| e.to_string())?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(transport);

    let server = quinn::Endpoint::server(server_config, loopback()).map_err(|e| e.to_string())?;
    let server_addr = server.local_addr().map_err(|e| e.to_string())?;
    let mut client = quinn::Endpoint::client(loopback()).map_err(|e| e.to_string())?;
    client.set_default_client_config(client_config);
    let reader = {
        let server = server.clone();
        let data = data.clone();
        tokio::spawn(async move {
            let incoming = server.accept().await.ok_or("no connection")?;
            let conn = incoming.await.map_err(|e| e.to_string())?;
            let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
            let mut at = 0u64;
            while let Some(chunk) = recv
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| e.to_string())?
            {
                if !verify(&data, at, &chunk.bytes) {
                    return Err(format!("quinn: corrupt bytes at {at}"));
                }
                at += chunk.bytes.len() as u64;
            }
            Ok::<_, String>((at, Instant::now(), conn))
        })
    };
    let conn = client
        .connect(server_addr, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        let at = (sent % PATTERN as u64) as usize;
        send.write_chunk(data.slice(at..at + n))
            .await
            .map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    send.finish().map_err(|e| e.to_string())?;
    let (received, end, server_conn) = reader.await.map_err(|e| e.to_string())??;
    conn.close(0u32.into(), b"");
    drop(server_conn);
    if received != bytes {
        return Err(format!("quinn: received {received} of {bytes} bytes"));
    }
    client.wait_idle().await;
    server.close(0u32.into(), b"");
    server.wait_idle().await;
    Ok(end - start)
}

/// Runs the scenario; prints one line per run and the summary last.
pub fn main(opts: &Options) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let bytes = opts.mib << 20;
    let data = pattern();
    let tls = tls()?;
    let mut kwik = Vec::new();
    let mut quinn = Vec::new();
    eprintln!(
        "loopback: {} MiB per run, {} runs each, TLS13_AES_128_GCM_SHA256, Cubic, 2 tokio workers",
        opts.mib, opts.reps
    );
    for rep in 0..opts.reps {
        // Alternate which contender goes first.
        let order: [&str; 2] = if rep % 2 == 0 {
            ["kwik", "quinn"]
        } else {
            ["quinn", "kwik"]
        };
        for stack in order {
            if opts.only.as_deref().is_some_and(|o| o != stack) {
                continue;
            }
            let elapsed = runtime.block_on(async {
                let run = async {
                    if stack == "kwik" {
                        kwik_run(&tls, &data, bytes).await
                    } else {
                        quinn_run(&tls, &data, bytes).await
                    }
                };
                tokio::time::timeout(Duration::from_secs(300), run)
                    .await
                    .map_err(|_| format!("{stack}: run timed out"))?
            })?;
            let mib_s = bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64();
            eprintln!("  {stack:<5} run {}: {mib_s:.1} MiB/s", rep + 1);
            Line::new("loopback")
                .str("stack", stack)
                .int("rep", rep as u64 + 1)
                .int("bytes", bytes)
                .num("seconds", elapsed.as_secs_f64(), 3)
                .num("mib_s", mib_s, 1)
                .emit();
            if stack == "kwik" {
                kwik.push(mib_s);
            } else {
                quinn.push(mib_s);
            }
        }
    }
    if opts.only.is_some() {
        return Ok(());
    }
    let (k, q) = (median(&kwik), median(&quinn));
    Line::new("loopback")
        .num("kwik_mib_s", k, 1)
        .num("quinn_mib_s", q, 1)
        .num("ratio", k / q, 3)
        .int("mib", opts.mib)
        .int("reps", opts.reps as u64)
        .str("cipher", "TLS13_AES_128_GCM_SHA256")
        .str("cc", "cubic")
        .emit();
    Ok(())
}
