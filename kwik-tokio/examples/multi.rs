//! A primary, secondaries and a client as separate processes: start each
//! in its own terminal.
//!
//! ```text
//! cargo run --release -p kwik-tokio --example multi -- secondary --listen 127.0.0.1:4434
//! cargo run --release -p kwik-tokio --example multi -- primary --listen 127.0.0.1:4433 --secondary 127.0.0.1:4434
//! cargo run --release -p kwik-tokio --example multi -- client --primary 127.0.0.1:4433 --allow 127.0.0.1:4434
//! ```
//!
//! Every process serves or expects the same generated resource (`--size`,
//! default 256M, the same bytes on every machine). The servers share a
//! development certificate for `localhost` and a path-token key, kept in
//! `--dir` (default: `kwik-multi-demo` in the temp directory; created by
//! whichever process starts first): a secondary only accepts clients the
//! primary sent, and the client only trusts that certificate and only joins
//! the secondaries it is told to `--allow`. `--rate-mbit R` caps a server's
//! sending (0: none, the default). The client prints what each path
//! delivered and checks the SHA-256 of what it read.
//!
//! # Application contract
//!
//! What the processes agree on beyond the kwik wire (PROTOCOL.md), so that
//! an independent client or server can take part:
//!
//! * **The resource** is `--size` bytes of xorshift64* output seeded with
//!   `0xd3e0` (`common::generate`: state `seed · 0x9e3779b97f4a7c15 | 1`;
//!   per 8-byte word `x ^= x >> 12; x ^= x << 25; x ^= x >> 27`, then the
//!   little-endian bytes of `x · 0x2545f4914f6cdd1d`, the last word cut to
//!   length). Every server builds the same bytes from `--size` alone.
//! * **The stream.** Once the session is up and every `--secondary` was
//!   added (or failed), the primary opens its **first server-initiated
//!   unidirectional logical stream** (id 3) and sends the whole resource on
//!   it, from offset 0, with a FIN at `--size`. The client reads the first
//!   unidirectional stream the primary opens, to its end; it opens no
//!   stream itself and sends nothing on the control stream beyond what
//!   kwik sends.
//! * **Delegations** carry the descriptor `kwik-demo/generated`
//!   (`common::DESCRIPTOR`, 19 ASCII bytes): a secondary asked for
//!   `[offset, offset + length)` of the stream under it writes exactly
//!   those bytes of the resource (`offset` is both the logical offset and
//!   the offset in the resource). A Delegate with another descriptor is
//!   not served. No Raw messages are used.
//! * **The check.** The client computes the SHA-256 of what it read and
//!   compares it, and the length, with those of the resource it generates
//!   itself; it exits non-zero on a mismatch.
//! * **Credentials.** `--dir` holds `cert.der` (a self-signed DER
//!   certificate for `localhost`, which every server presents and the
//!   client trusts; servers are dialled with server name `localhost`),
//!   `key.der` (its PKCS#8 private key) and `token.key` (32 raw bytes: the
//!   path-token key of PROTOCOL.md §10.2, used by the primary to mint and
//!   by the secondaries to verify; the client never reads it). A real
//!   deployment hands the key to its servers by its own means.
//! * **Closing.** The client closes the session with application code 0
//!   once it read the end; the primary, having seen every byte
//!   acknowledged, just waits for that. No other application code is used.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use common::{BoxError, mib_s};
use kwik_tokio::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use kwik_tokio::{
    Endpoint, PathPolicy, PathTarget, TokenKey, client_config_trusting, dev, server_config,
};

const USAGE: &str = "\
usage: multi secondary --listen ADDR [--rate-mbit R] [--size BYTES] [--dir DIR]
       multi primary --listen ADDR [--secondary ADDR]... [--rate-mbit R] [--size BYTES] [--dir DIR]
       multi client --primary ADDR [--allow ADDR]... [--size BYTES] [--dir DIR]";

#[derive(Default)]
struct Args {
    role: String,
    listen: Option<SocketAddr>,
    primary: Option<SocketAddr>,
    secondaries: Vec<SocketAddr>,
    allow: Vec<SocketAddr>,
    rate_mbit: u64,
    size: u64,
    dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let mut args = Args {
        role: argv.next().ok_or("which role?")?,
        size: 256 << 20,
        dir: std::env::temp_dir().join("kwik-multi-demo"),
        ..Args::default()
    };
    let addr = |v: Option<String>, flag: &str| -> Result<SocketAddr, String> {
        let v = v.ok_or(format!("{flag} needs an address"))?;
        v.parse()
            .map_err(|_| format!("{flag}: not an address: {v:?}"))
    };
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--listen" => args.listen = Some(addr(argv.next(), "--listen")?),
            "--primary" => args.primary = Some(addr(argv.next(), "--primary")?),
            "--secondary" => args.secondaries.push(addr(argv.next(), "--secondary")?),
            "--allow" => args.allow.push(addr(argv.next(), "--allow")?),
            "--rate-mbit" => {
                args.rate_mbit = argv
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--rate-mbit needs a number")?;
            }
            "--size" => {
                args.size = common::parse_size(&argv.next().ok_or("--size needs a value")?)?;
            }
            "--dir" => args.dir = argv.next().ok_or("--dir needs a path")?.into(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// The shared development credentials: certificate, its key, token key.
struct Credentials {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    token: [u8; 32],
}

/// Loads the credentials from `dir`, creating them first if absent.
fn credentials(dir: &Path) -> Result<Credentials, BoxError> {
    if !dir.join("token.key").exists() {
        let (cert, key) = dev::self_signed_cert(["localhost"]);
        let mut token = [0u8; 32];
        getrandom::fill(&mut token)?;
        // Written to a private directory, then renamed into place in one
        // step: processes starting together agree on the first complete set
        // (renaming onto an existing, non-empty directory fails).
        let mut staging = dir.as_os_str().to_owned();
        staging.push(format!(".staging-{}", std::process::id()));
        let staging = PathBuf::from(staging);
        std::fs::create_dir_all(&staging)?;
        std::fs::write(staging.join("cert.der"), &cert)?;
        std::fs::write(staging.join("key.der"), key.secret_der())?;
        std::fs::write(staging.join("token.key"), token)?;
        if std::fs::rename(&staging, dir).is_ok() {
            eprintln!("created development credentials in {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    let token: [u8; 32] = std::fs::read(dir.join("token.key"))?
        .try_into()
        .map_err(|_| "token.key is not 32 bytes")?;
    Ok(Credentials {
        cert: CertificateDer::from(std::fs::read(dir.join("cert.der"))?),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(std::fs::read(
            dir.join("key.der"),
        )?)),
        token,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("multi: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let creds = credentials(&args.dir)?;
    match args.role.as_str() {
        "secondary" => secondary(&args, creds).await,
        "primary" => primary(&args, creds).await,
        "client" => client(&args, creds).await,
        other => {
            eprintln!("multi: unknown role {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

async fn secondary(args: &Args, creds: Credentials) -> Result<(), BoxError> {
    let listen = args.listen.ok_or("secondary needs --listen")?;
    let mut config = common::tune_server(server_config(vec![creds.cert], creds.key)?);
    config.trusted_keys = vec![TokenKey::new(creds.token)];
    let endpoint = common::server_endpoint(config, listen, args.rate_mbit)?;
    let resource = common::generate(0xd3e0, args.size as usize);
    endpoint.serve_resource(common::DESCRIPTOR, Arc::new(resource));
    eprintln!(
        "secondary on {}: serving {} bytes to clients the primary sends",
        endpoint.local_addr(),
        args.size
    );
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while reports.recv().await.is_some() {} });
    common::secondary_loop(endpoint, 1, report, true).await;
    Ok(())
}

async fn primary(args: &Args, creds: Credentials) -> Result<(), BoxError> {
    let listen = args.listen.ok_or("primary needs --listen")?;
    let mut config = common::tune_server(server_config(vec![creds.cert], creds.key)?);
    config.token_key = Some(TokenKey::new(creds.token));
    let endpoint = common::server_endpoint(config, listen, args.rate_mbit)?;
    let resource = common::generate(0xd3e0, args.size as usize);
    eprintln!(
        "primary on {}: serving {} bytes with secondaries {:?}",
        endpoint.local_addr(),
        args.size,
        args.secondaries
    );
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while reports.recv().await.is_some() {} });
    while let Some(incoming) = endpoint.accept().await {
        let (secondaries, resource, report) =
            (args.secondaries.clone(), resource.clone(), report.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.accept().await {
                Ok(session) => {
                    eprintln!("primary: session {} from {remote}", session.id());
                    if let Err(e) =
                        common::primary_session(session, secondaries, resource, report, true).await
                    {
                        eprintln!("primary: session from {remote}: {e}");
                    }
                }
                Err(e) => eprintln!("primary: {remote}: {e}"),
            }
        });
    }
    Ok(())
}

async fn client(args: &Args, creds: Credentials) -> Result<(), BoxError> {
    let primary = args.primary.ok_or("client needs --primary")?;
    let mut config = common::tune_client(client_config_trusting([creds.cert])?);
    config.path_policy = PathPolicy::allow(args.allow.iter().map(|a| PathTarget::Address(*a)));
    let endpoint = Endpoint::client("0.0.0.0:0".parse()?)?;
    let expected = common::sha256(&common::generate(0xd3e0, args.size as usize));
    let start = Instant::now();
    let session = endpoint.connect(primary, "localhost", &config)?.await?;
    eprintln!("client: session {} with {primary}", session.id());
    let mut next_report = 1u64 << 26;
    let (bytes, digest) = common::download(&session, |n| {
        if n >= next_report {
            eprintln!("client: {} MiB", n >> 20);
            next_report += 1 << 26;
        }
    })
    .await?;
    let elapsed = start.elapsed();
    for p in common::paths(&session) {
        println!(
            "{:<6} {:<34} {:>10.1} MiB received {:>8.1} MiB/s  {:?}",
            p.id.to_string(),
            common::path_label(&p),
            p.bytes_received as f64 / (1 << 20) as f64,
            mib_s(p.bytes_received, elapsed),
            p.state
        );
    }
    let ok = bytes == args.size && digest == expected;
    println!(
        "{bytes} bytes in {:.2} s ({:.1} MiB/s), sha256 {} {}",
        elapsed.as_secs_f64(),
        mib_s(bytes, elapsed),
        common::hex(&digest),
        if ok { "OK" } else { "MISMATCH" }
    );
    session.close(0, b"done")?;
    drop(session);
    endpoint.wait_idle().await;
    if ok {
        Ok(())
    } else {
        Err("checksum mismatch".into())
    }
}
