//! `kwik get`: one file through one multi-server session.
//!
//! The client asks the primary for the file, reads it from the stream the
//! primary names — whichever servers wrote which bytes, kwik hands them
//! over in order — and checks length and SHA-256 against what the primary
//! announced before the file takes its final name: a failed or interrupted
//! download never leaves a partial file behind.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kwik_tokio::{
    ClientConfig, CloseReason, Endpoint, ErrorCode, PathFilter, PathInfo, PathPolicy, PathState,
    PathTarget, Session, client_config_trusting,
};
use sha2::{Digest, Sha256};

use crate::protocol::{MAX_RESPONSE, Response, hex};
use crate::{Fail, GetArgs, resolve_one};

/// Port of a `kwik://` URL without one.
pub const DEFAULT_PORT: u16 = 4433;

/// A parsed `kwik://HOST[:PORT]/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path of the file, relative to the served directory.
    pub path: String,
}

impl Url {
    /// Parses `kwik://HOST[:PORT]/PATH`; IPv6 hosts go in brackets.
    pub fn parse(url: &str) -> Result<Self, Fail> {
        let bad = |why: &str| Fail(format!("bad URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("kwik://")
            .ok_or_else(|| bad("expected kwik://HOST:PORT/PATH"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        if path.is_empty() {
            return Err(bad("no path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None => DEFAULT_PORT,
        };
        Ok(Self {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// Runs `kwik get`.
pub async fn run(args: GetArgs) -> Result<(), Fail> {
    let url = Url::parse(&args.url)?;
    let mut config = client_tls(&args)?;
    config.transport = crate::serve::transport();
    if let Some(dir) = &args.qlog_dir {
        config.transport.qlog = Some(crate::qlog::sink(dir)?);
    }
    let allowed = args
        .allow
        .iter()
        .map(|a| resolve_one(a).map(PathTarget::Address))
        .collect::<Result<Vec<_>, _>>()?;
    config.path_policy = PathPolicy::allow(allowed);

    let primary = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| Fail(format!("cannot resolve host {}: {e}", url.host)))?
        .next()
        .ok_or_else(|| Fail(format!("cannot resolve host {}: no address", url.host)))?;

    // The temporary file lives beside the target so that the final rename
    // stays within one file system.
    let target_dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".kwik-download-")
        .tempfile_in(target_dir)
        .map_err(|e| Fail(format!("cannot write to {}: {e}", target_dir.display())))?;

    let bind: SocketAddr = if primary.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let endpoint = Endpoint::client(bind).map_err(|e| Fail(format!("cannot bind {bind}: {e}")))?;
    let start = Instant::now();
    let connecting = endpoint
        .connect(primary, &url.host, &config)
        .map_err(|e| Fail(format!("cannot connect to {primary}: {e}")))?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let session = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(Fail(format!(
                "no answer from {primary} within {:.0?} (is a kwik primary listening there?)",
                timeout
            )));
        }
        Ok(Err(e)) => return Err(connect_failure(primary, &e.0)),
        Ok(Ok(session)) => session,
    };

    let result = download(&session, &url, &args, tmp, start, timeout).await;
    let _ = session.close(0, b"done");
    drop(session);
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    result
}

fn client_tls(args: &GetArgs) -> Result<ClientConfig, Fail> {
    if args.insecure {
        return ClientConfig::new(crate::tls::insecure_client())
            .map_err(|e| Fail(format!("TLS setup: {e}")));
    }
    let Some(ca) = &args.ca else {
        return Err(Fail(
            "no trusted certificate: pass --ca FILE (e.g. the servers' kwik-dev-ca.pem) or --insecure"
                .into(),
        ));
    };
    client_config_trusting(crate::tls::load_certs(ca)?)
        .map_err(|e| Fail(format!("cannot trust {}: {e}", ca.display())))
}

/// One line for a failed handshake, naming TLS failures as such.
fn connect_failure(primary: SocketAddr, reason: &CloseReason) -> Fail {
    match reason {
        CloseReason::Transport(detail)
            if detail.contains("certificate")
                || detail.contains("TLS")
                || detail.contains("tls")
                || detail.contains("crypto") =>
        {
            Fail(format!("TLS failure with {primary}: {detail}"))
        }
        other => Fail(format!("cannot connect to {primary}: {other}")),
    }
}

async fn download(
    session: &Session,
    url: &Url,
    args: &GetArgs,
    tmp: tempfile::NamedTempFile,
    start: Instant,
    timeout: Duration,
) -> Result<(), Fail> {
    // A peer that completed the handshake but does not answer requests (a
    // secondary, or not kwik-cli) must not hang the client.
    let (size, sha256, mut data) = tokio::time::timeout(timeout, request(session, url))
        .await
        .map_err(|_| {
            Fail(format!(
                "no response to the request within {timeout:.0?} (is this a kwik primary?)"
            ))
        })??;
    let mut progress = Progress::new(size, args.json);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp);
    let write_failed = |e: std::io::Error| Fail(format!("cannot write the download: {e}"));
    let lost = |e: &dyn std::fmt::Display| Fail(format!("session with the primary failed: {e}"));
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = data.read_chunk(usize::MAX).await.map_err(|e| lost(&e))? {
        received += chunk.len() as u64;
        if received > size {
            return Err(Fail(format!(
                "the primary sent more than the {size} bytes it announced"
            )));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).map_err(write_failed)?;
        progress.update(session, received);
    }
    let elapsed = start.elapsed();
    progress.finish(session, received);
    let sha256_ok = received == size && <[u8; 32]>::from(hasher.finalize()) == sha256;
    let paths = session.paths(PathFilter::All);
    let mib_s = mib_s(received, elapsed);
    if args.json {
        let servers = paths.iter().filter(|p| ever_live(p)).count();
        println!(
            "{{\"bytes\":{received},\"sha256_ok\":{sha256_ok},\"servers\":{servers},\"mib_s\":{mib_s:.1}}}"
        );
    } else {
        print_summary(&paths, elapsed);
    }
    if received != size {
        return Err(Fail(format!(
            "short download: {received} of {size} bytes; {} not written",
            args.output.display()
        )));
    }
    if !sha256_ok {
        return Err(Fail(format!(
            "SHA-256 mismatch (expected {}); {} not written",
            hex(&sha256),
            args.output.display()
        )));
    }
    let tmp = out.into_inner().map_err(|e| write_failed(e.into_error()))?;
    // Temporary files are private; the download gets the usual mode.
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(write_failed)?;
    }
    tmp.as_file().sync_all().map_err(write_failed)?;
    tmp.persist(&args.output).map_err(|e| {
        Fail(format!(
            "cannot create {}: {}",
            args.output.display(),
            e.error
        ))
    })?;
    if !args.json {
        println!(
            "{received} bytes in {:.2} s ({mib_s:.1} MiB/s), sha256 {} OK -> {}",
            elapsed.as_secs_f64(),
            hex(&sha256),
            args.output.display()
        );
    }
    Ok(())
}

/// Sends the request; the announced size and digest, and the data stream.
async fn request(
    session: &Session,
    url: &Url,
) -> Result<(u64, [u8; 32], kwik_tokio::RecvStream), Fail> {
    let lost = |e: &dyn std::fmt::Display| Fail(format!("session with the primary failed: {e}"));
    let (mut send, mut recv) = session.open_bi().await.map_err(|e| lost(&e))?;
    send.write_all(url.path.as_bytes())
        .await
        .map_err(|e| lost(&e))?;
    send.finish().map_err(|e| lost(&e))?;
    let line = recv.read_to_end(MAX_RESPONSE).await.map_err(|e| lost(&e))?;
    let response = Response::decode(&line).map_err(|e| Fail(format!("bad response: {e}")))?;
    let (size, sha256, stream) = match response {
        Response::Ok {
            size,
            sha256,
            stream,
        } => (size, sha256, stream),
        Response::NotFound(m) => return Err(Fail(format!("NOT_FOUND: {m}"))),
        Response::Forbidden(m) => return Err(Fail(format!("FORBIDDEN: {m}"))),
        Response::BadRequest(m) => return Err(Fail(format!("BAD_REQUEST: {m}"))),
        Response::Error(m) => return Err(Fail(format!("server error: {m}"))),
    };
    let data = session.accept_uni().await.map_err(|e| lost(&e))?;
    if data.id().0 != stream {
        return Err(Fail(format!(
            "the primary announced stream {stream} but opened {}",
            data.id().0
        )));
    }

    Ok((size, sha256, data))
}

fn ever_live(p: &PathInfo) -> bool {
    p.history.iter().any(|(_, state)| state.is_live())
}

fn mib_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// What the summary says of a path's state.
fn describe(p: &PathInfo) -> String {
    match (&p.state, &p.failure) {
        (PathState::Failed, Some(f)) if f.code == ErrorCode::Refused => {
            format!("refused by this client's --allow ({})", f.reason)
        }
        (_, Some(f)) => format!("{:?}: {f}", p.state).to_lowercase(),
        (state, None) => format!("{state:?}").to_lowercase(),
    }
}

fn print_summary(paths: &[PathInfo], elapsed: Duration) {
    println!(
        "{:<7} {:<10} {:<24} {:>12} {:>13}  state",
        "path", "server", "address", "received", "rate"
    );
    for p in paths {
        println!(
            "{:<7} {:<10} {:<24} {:>8.1} MiB {:>7.1} MiB/s  {}",
            p.id.to_string(),
            if p.primary { "primary" } else { "secondary" },
            p.address.to_string(),
            p.bytes_received as f64 / (1 << 20) as f64,
            mib_s(p.bytes_received, elapsed),
            describe(p)
        );
    }
}

/// Progress bars: the file, and what each server sent so far (QUIC payload
/// received on its path).
struct Progress {
    bars: MultiProgress,
    total: ProgressBar,
    per_path: Vec<(kwik_tokio::PathId, ProgressBar)>,
    last: Instant,
}

impl Progress {
    fn new(size: u64, hidden: bool) -> Self {
        let target = if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bars = MultiProgress::with_draw_target(target);
        let total = bars.add(ProgressBar::new(size));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:<34} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        Self {
            bars,
            total,
            per_path: Vec::new(),
            last: Instant::now(),
        }
    }

    fn update(&mut self, session: &Session, received: u64) {
        self.total.set_position(received);
        if self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        self.refresh_paths(session);
    }

    fn refresh_paths(&mut self, session: &Session) {
        for p in session.paths(PathFilter::All) {
            let bar = match self.per_path.iter().find(|(id, _)| *id == p.id) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = self.bars.add(ProgressBar::no_length());
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:<34} {bytes:>12} {binary_bytes_per_sec:>14} {msg}",
                        )
                        .expect("template"),
                    );
                    let role = if p.primary { "primary" } else { "secondary" };
                    bar.set_prefix(format!("{role} {}", p.address));
                    self.per_path.push((p.id, bar.clone()));
                    bar
                }
            };
            bar.set_position(p.bytes_received);
            bar.set_message(format!("{:?}", p.state).to_lowercase());
        }
    }

    fn finish(&mut self, session: &Session, received: u64) {
        self.total.set_position(received);
        self.refresh_paths(session);
        self.total.finish();
        for (_, bar) in &self.per_path {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("kwik://127.0.0.1:4433/a/b.bin").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 4433, "a/b.bin")
        );
        let u = Url::parse("kwik://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(Url::parse("kwik://host/x").unwrap().port, DEFAULT_PORT);
        assert!(Url::parse("http://host/x").is_err());
        assert!(Url::parse("kwik://host").is_err());
        assert!(Url::parse("kwik://host:99999/x").is_err());
    }
}
