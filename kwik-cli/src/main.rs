//! `kwik`: multi-server file distribution without writing code.
//!
//! ```text
//! kwik serve --role secondary --listen 127.0.0.1:4434 --dir files --key kwik.key
//! kwik serve --role primary   --listen 127.0.0.1:4433 --dir files --key kwik.key \
//!            --secondary 127.0.0.1:4434
//! kwik get kwik://127.0.0.1:4433/big.iso -o big.iso --allow 127.0.0.1:4434 --ca kwik-dev-ca.pem
//! ```
//!
//! A primary can also find its secondaries at start-up with `--discover`
//! (repeatable): `static:FILE` (one `ADDRESS SERVER_NAME [priority=N]
//! [weight=N] [region=R]` per line), `srv:NAME` (the SRV records of e.g.
//! `_kwik._udp.example.com`, from the system's resolver or `--dns-server`)
//! or `mdns:[SERVICE_TYPE]` (a browse of `_kwik._udp.local.` by default).
//! What it finds is added to every session exactly like `--secondary`
//! (see `serve.rs` for the merge and failure rules).
//!
//! `--metrics 127.0.0.1:9464` on `kwik serve` also serves the server's
//! metrics at `http://127.0.0.1:9464/metrics` (see `metrics.rs`).
//!
//! A primary and its secondaries serve copies of one directory and share a
//! path-token key (`--key`, created on first use). The client talks to the
//! primary only; the primary tells it to join the secondaries (which the
//! client does only for addresses it `--allow`s) and kwik spreads the file
//! over all of them. Everything protocol-level is kwik's; this crate adds
//! the small request framing below and the file handling around it.
//!
//! # Request framing
//!
//! One request per bidirectional stream the client opens on the session:
//!
//! * **Request** (client → primary): the file's path relative to the served
//!   directory, UTF-8, `/`-separated, at most 4096 bytes, then FIN. No
//!   percent-decoding; `..` components and absolute paths are refused, and
//!   so is any path whose resolved location (symbolic links followed) is
//!   outside the directory.
//! * **Response** (primary → client, same stream): one ASCII line, then FIN:
//!   - `OK <size> <sha256-hex> <stream-id>\n` — the file follows on the
//!     server-opened unidirectional stream `<stream-id>` (the kwik stream id
//!     as a decimal integer), exactly `<size>` bytes, then FIN;
//!   - `NOT_FOUND <message>\n` — no regular file at that path;
//!   - `FORBIDDEN <message>\n` — the path leads outside the directory;
//!   - `BAD_REQUEST <message>\n` — empty, too long or not UTF-8;
//!   - `ERROR <message>\n` — the server could not read the file.
//!
//! The file's stream is served with kwik's multi-source transfer, under the
//! delegation descriptor `kwik-cli/1 <size> <sha256-hex> <path>` (UTF-8).
//! A secondary serves the descriptors of the files it found at start; the
//! digest in the descriptor guarantees that every server sends the same
//! version of the file, and the client checks the digest of what it got.
//!
//! # Why the client checks the digest itself
//! kwik guarantees that the bytes are those the servers wrote at those
//! offsets, and that a secondary writes only the ranges delegated to it;
//! it cannot know whether a secondary's copy of the file is the primary's.
//! The SHA-256 announced by the primary (the party the client trusts for
//! content) closes that gap, and the download only gets its name once the
//! check passed.
#![forbid(unsafe_code)]

mod files;
mod get;
mod metrics;
mod protocol;
mod qlog;
mod serve;
mod tls;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A failure reported to the user as one line.
#[derive(Debug)]
pub struct Fail(pub String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Fail(s)
    }
}

/// Resolves `HOST:PORT` (or `IP:PORT`) to its first address.
pub fn resolve_one(addr: &str) -> Result<SocketAddr, Fail> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    addr.to_socket_addrs()
        .map_err(|e| Fail(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| Fail(format!("cannot resolve {addr}: no address")))
}

/// Multi-server file distribution over kwik.
#[derive(Debug, Parser)]
#[command(name = "kwik", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the regular files of a directory, as a primary or a secondary.
    Serve(ServeArgs),
    /// Download one file from a primary and the secondaries it adds.
    Get(GetArgs),
}

/// Options of `kwik serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Primary (answers clients) or secondary (serves what the primary delegates).
    #[arg(long, value_enum)]
    pub role: serve::Role,
    /// Address to listen on (UDP), e.g. 127.0.0.1:4433.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Directory whose regular files are served.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Path-token key shared by a primary and its secondaries (created with
    /// a random key, mode 0600, if missing).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Primary: a secondary to add to every session, with the name its
    /// certificate is checked for (default: ADDR's host).
    #[arg(long, value_name = "ADDR[=NAME]")]
    pub secondary: Vec<String>,
    /// Primary: find secondaries at start-up (repeatable): static:FILE,
    /// srv:NAME (e.g. srv:_kwik._udp.example.com) or mdns:[SERVICE_TYPE].
    /// Merged with --secondary, one per address (--secondary wins).
    #[arg(long, value_name = "SPEC")]
    pub discover: Vec<String>,
    /// Name server for `--discover srv:NAME`, as IP[:PORT] (port 53 by
    /// default); the system's resolver configuration otherwise.
    #[arg(long, value_name = "ADDR")]
    pub dns_server: Option<String>,
    /// Seconds one discovery may take (DNS lookups; an mDNS browse lasts
    /// this long).
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    pub discover_timeout: f64,
    /// Primary: instead of adding every secondary to every session, add
    /// them (from --secondary and --discover) to a session only while its
    /// demand exceeds what its paths deliver, and remove them once idle
    /// (kwik's automatic scaling, default policy).
    #[arg(long)]
    pub autoscale: bool,
    /// Certificate chain (PEM) to present instead of a development certificate.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Development CA certificate, created if missing, for clients' --ca
    /// [default: kwik-dev-ca.pem beside --key].
    #[arg(long, value_name = "FILE", conflicts_with = "tls_cert")]
    pub dev_ca: Option<PathBuf>,
    /// Extra name for the development certificate (besides localhost and
    /// the listen IP).
    #[arg(long, value_name = "NAME", conflicts_with = "tls_cert")]
    pub tls_name: Vec<String>,
    /// Serve this server's metrics (OpenMetrics text) at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Most sessions the metrics list one by one (the oldest); the others
    /// are only counted. 0 lists endpoint totals only.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub metrics_max_sessions: usize,
    /// Write a qlog trace of every QUIC connection into this directory.
    #[arg(long, value_name = "DIR")]
    pub qlog_dir: Option<PathBuf>,
}

/// Options of `kwik get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// kwik://HOST[:PORT]/PATH (port 4433 by default).
    #[arg(value_name = "URL")]
    pub url: String,
    /// Where to write the file (atomically, once verified).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// A secondary address the primary may make this client join.
    #[arg(long, value_name = "ADDR")]
    pub allow: Vec<String>,
    /// Trust the certificates in this PEM file (e.g. kwik-dev-ca.pem).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[arg(long)]
    pub insecure: bool,
    /// Print one JSON line instead of the summary table.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the primary to answer the handshake.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,
    /// Write a qlog trace of every QUIC connection (primary and each
    /// secondary path) into this directory.
    #[arg(long, value_name = "DIR")]
    pub qlog_dir: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kwik: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Get(args) => get::run(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("kwik: {e}");
        std::process::exit(1);
    }
}
