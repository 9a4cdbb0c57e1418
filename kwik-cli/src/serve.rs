//! `kwik serve`: a primary or a secondary serving one directory.
//!
//! A secondary hashes every file at start and registers it with its
//! endpoint under its descriptor, so the endpoint serves delegated ranges
//! by itself. A primary answers requests (see the crate docs), adds its
//! secondaries to every session that asks for a file, and serves the file
//! through kwik's multi-source transfer helper, which splits it over every
//! live path and re-assigns what a dying one leaves.
//!
//! # Discovered secondaries
//! A primary's `--discover` sources are asked once, at start-up, before
//! anything else is set up (so a failure is the only line printed). What
//! they find joins the `--secondary` list: explicit ones first, then each
//! source's candidates in its order (priority, weight, address), one
//! secondary per address — an address given twice keeps its first name.
//! A mistake in the configuration (a malformed SPEC, an unreadable or
//! malformed list file) always stops the server. A source that cannot
//! answer (DNS timeout or failure, mDNS unavailable) stops it too when it
//! is the only way to get secondaries; when `--secondary` names some, the
//! failure is a warning and the server starts with what it has, because a
//! DNS outage should not take down a primary that can still serve.
//! Priorities and weights only order the list: every secondary found is
//! added to every session, like the explicit ones.
//!
//! # Automatic scaling
//! With `--autoscale` the list is the endpoint's pool of candidates
//! instead: a session gets secondaries from it only while it reads faster
//! than its paths deliver, and gives them back once they idle (see
//! `kwik_core::scaling`). The pool is taken in SRV-style preference order:
//! discovered candidates keep their priorities and weights, explicit ones
//! count as priority 0, weight 0.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Once};
use std::time::Duration;

use kwik_discovery::{DiscoverySpec, SpecOptions, parse_spec};

use kwik_tokio::scaling::AutoscaleConfig;
use kwik_tokio::{
    Candidate, Endpoint, MetricsOptions, ServerConfig, Session, TokenKey, TransferConfig,
    TransportConfig, server_config,
};

use crate::files::{Lookup, ServedDir};
use crate::metrics::MetricsSetup;
use crate::protocol::{Descriptor, MAX_REQUEST, Response};
use crate::{Fail, ServeArgs, resolve_one};

/// The server's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Answers requests and hands ranges to secondaries.
    Primary,
    /// Serves ranges the primary delegates.
    Secondary,
}

/// Transport windows sized for fast links: every server can work well
/// ahead of the reader on its own range.
pub fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_window = 32 << 20;
    t.send_window = 32 << 20;
    t.max_frame_payload = 256 << 10;
    t
}

/// Runs `kwik serve` until the process is stopped.
pub async fn run(args: ServeArgs) -> Result<(), Fail> {
    let dir = Arc::new(ServedDir::open(&args.dir)?);
    let listen = resolve_one(&args.listen)?;
    let explicit = match args.role {
        Role::Primary => args
            .secondary
            .iter()
            .map(|s| parse_secondary(s))
            .collect::<Result<Vec<_>, _>>()?,
        Role::Secondary => {
            if !args.secondary.is_empty() {
                return Err(Fail("--secondary is for primaries".into()));
            }
            if !args.discover.is_empty() {
                return Err(Fail("--discover is for primaries".into()));
            }
            if args.autoscale {
                return Err(Fail("--autoscale is for primaries".into()));
            }
            Vec::new()
        }
    };
    let secondaries = discover(&args, explicit).await?;
    let token = TokenKey::new(crate::tls::token_key(&args.key)?);
    let dev_ca = args
        .dev_ca
        .clone()
        .unwrap_or_else(|| crate::tls::default_dev_ca(&args.key));
    let mut names = vec!["localhost".to_string()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(args.tls_name.iter().cloned());
    let (chain, key) = crate::tls::server_identity(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        &dev_ca,
        names,
    )?;
    let mut config = server_config(chain, key).map_err(|e| Fail(format!("TLS setup: {e}")))?;
    config.transport = transport();
    if let Some(dir) = &args.qlog_dir {
        config.transport.qlog = Some(crate::qlog::sink(dir)?);
    }
    let metrics = match &args.metrics {
        Some(addr) => {
            let mut options = MetricsOptions::default();
            options.max_sessions = args.metrics_max_sessions;
            Some(MetricsSetup {
                addr: resolve_one(addr)?,
                options,
            })
        }
        None => None,
    };
    match args.role {
        Role::Secondary => {
            config.trusted_keys = vec![token];
            let endpoint = bind(config, listen, metrics.as_ref()).await?;
            secondary(endpoint, dir).await
        }
        Role::Primary if args.autoscale => {
            config.token_key = Some(token);
            config.autoscale = Some(AutoscaleConfig::default());
            let endpoint = bind(config, listen, metrics.as_ref()).await?;
            eprintln!("kwik: autoscaling over [{}]", describe(&secondaries));
            endpoint.set_candidates(secondaries);
            primary(endpoint, dir, Vec::new()).await
        }
        Role::Primary => {
            config.token_key = Some(token);
            let endpoint = bind(config, listen, metrics.as_ref()).await?;
            primary(endpoint, dir, secondaries).await
        }
    }
}

/// `ADDR[=NAME]`; NAME (the name its certificate is checked for) defaults
/// to ADDR's host.
fn parse_secondary(spec: &str) -> Result<Candidate, Fail> {
    let (addr, name) = match spec.split_once('=') {
        Some((addr, name)) => (addr, Some(name.to_string())),
        None => (spec, None),
    };
    let resolved = resolve_one(addr)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Candidate::new(
        resolved,
        name.unwrap_or_else(|| host.to_string()),
    ))
}

/// `explicit` followed by what `--discover` finds, one per address (see
/// the module docs for the rules).
async fn discover(args: &ServeArgs, explicit: Vec<Candidate>) -> Result<Vec<Candidate>, Fail> {
    let specs = args
        .discover
        .iter()
        .map(|spec| {
            parse_spec(spec)
                .map(|parsed| (spec, parsed))
                .map_err(|e| Fail(format!("--discover: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = SpecOptions::default();
    if let Some(server) = &args.dns_server {
        if !specs
            .iter()
            .any(|(_, parsed)| matches!(parsed, DiscoverySpec::Srv(_)))
        {
            return Err(Fail("--dns-server is for --discover srv:NAME".into()));
        }
        options.dns_server = Some(parse_dns_server(server)?);
    }
    let timeout = args.discover_timeout;
    if !(timeout > 0.0 && timeout <= 600.0) {
        return Err(Fail(format!(
            "--discover-timeout must be between 0 and 600 seconds, not {timeout}"
        )));
    }
    options.dns_timeout = Duration::from_secs_f64(timeout);
    options.mdns_browse = Duration::from_secs_f64(timeout);
    let mut secondaries = explicit;
    let may_fail = !secondaries.is_empty();
    for (spec, parsed) in specs {
        let source = parsed
            .build(&options)
            .map_err(|e| Fail(format!("--discover {spec}: {e}")))?;
        let candidates = match source.discover().await {
            Ok(candidates) => candidates,
            Err(e) if may_fail => {
                eprintln!(
                    "kwik: warning: --discover {spec}: {e}; starting with the other secondaries"
                );
                continue;
            }
            Err(e) => return Err(Fail(format!("--discover {spec}: {e}"))),
        };
        let n = candidates.len();
        let noun = if n == 1 { "secondary" } else { "secondaries" };
        eprintln!("kwik: {} found {n} {noun}", source.describe());
        for candidate in candidates {
            if secondaries.iter().all(|s| s.address != candidate.address) {
                secondaries.push(candidate);
            }
        }
    }
    Ok(secondaries)
}

/// `IP[:PORT]`, port 53 by default.
fn parse_dns_server(text: &str) -> Result<SocketAddr, Fail> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse().map_err(|_| {
        Fail(format!(
            "--dns-server: expected IP or IP:PORT, found {text:?}"
        ))
    })
}

/// Binds the server's endpoint and, if asked, serves its metrics.
async fn bind(
    config: ServerConfig,
    listen: SocketAddr,
    metrics: Option<&MetricsSetup>,
) -> Result<Endpoint, Fail> {
    let endpoint = Endpoint::server(config, listen)
        .map_err(|e| Fail(format!("cannot listen on {listen}: {e}")))?;
    if let Some(setup) = metrics {
        let at = crate::metrics::serve(setup, &endpoint).await?;
        eprintln!("kwik: metrics on http://{at}/metrics");
    }
    Ok(endpoint)
}

async fn secondary(endpoint: Endpoint, dir: Arc<ServedDir>) -> Result<(), Fail> {
    let files = {
        let (dir, endpoint) = (dir.clone(), endpoint.clone());
        tokio::task::spawn_blocking(move || register_all(&dir, &endpoint))
            .await
            .map_err(|e| Fail(e.to_string()))??
    };
    eprintln!(
        "kwik: secondary on {} serving {files} files from {}",
        endpoint.local_addr(),
        dir.root().display()
    );
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let session = match incoming.accept().await {
                Ok(session) => session,
                Err(e) => return eprintln!("kwik: {remote}: {e}"),
            };
            // Delegations the endpoint does not serve itself name a file this
            // secondary does not have (or not in this version). There is no
            // way to hand one delegation back, so the path is closed: the
            // primary then re-assigns its ranges to the other servers.
            while let Ok(delegation) = session.delegated().await {
                let what = Descriptor::decode(&delegation.descriptor)
                    .map_or_else(|| "an unknown resource".to_string(), |d| d.to_string());
                eprintln!("kwik: {remote} asked for {what}, which this secondary does not serve");
                let _ = session.close(1, b"resource not served here");
            }
        });
    }
    Ok(())
}

/// Hashes every file of `dir` and registers it with `endpoint`.
fn register_all(dir: &ServedDir, endpoint: &Endpoint) -> Result<usize, Fail> {
    let list = dir.list().map_err(|e| {
        Fail(format!(
            "cannot read directory {}: {e}",
            dir.root().display()
        ))
    })?;
    let mut served = 0;
    for relative in list {
        let Ok((_, real)) = dir.resolve(&relative) else {
            continue;
        };
        match dir.open_file(&relative, &real) {
            Ok((descriptor, resource)) => {
                endpoint.serve_resource(descriptor.encode(), resource.shared());
                served += 1;
            }
            Err(e) => eprintln!("kwik: skipping {relative}: {e}"),
        }
    }
    Ok(served)
}

async fn primary(
    endpoint: Endpoint,
    dir: Arc<ServedDir>,
    secondaries: Vec<Candidate>,
) -> Result<(), Fail> {
    eprintln!(
        "kwik: primary on {} serving {} with secondaries [{}]",
        endpoint.local_addr(),
        dir.root().display(),
        describe(&secondaries)
    );
    let secondaries = Arc::new(secondaries);
    while let Some(incoming) = endpoint.accept().await {
        let (dir, secondaries) = (dir.clone(), secondaries.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.accept().await {
                Ok(session) => primary_session(session, dir, secondaries).await,
                Err(e) => eprintln!("kwik: {remote}: {e}"),
            }
        });
    }
    Ok(())
}

/// Answers every request of one session.
async fn primary_session(session: Session, dir: Arc<ServedDir>, secondaries: Arc<Vec<Candidate>>) {
    let paths_added = Arc::new(Once::new());
    while let Ok((send, recv)) = session.accept_bi().await {
        let (session, dir, secondaries, paths_added) = (
            session.clone(),
            dir.clone(),
            secondaries.clone(),
            paths_added.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = request(&session, send, recv, &dir, &secondaries, &paths_added).await {
                eprintln!("kwik: session {}: {e}", session.id());
            }
        });
    }
}

/// One request: read the path, answer, serve the file.
async fn request(
    session: &Session,
    mut send: kwik_tokio::SendStream,
    mut recv: kwik_tokio::RecvStream,
    dir: &Arc<ServedDir>,
    secondaries: &Arc<Vec<Candidate>>,
    paths_added: &Once,
) -> Result<(), String> {
    let response = match recv.read_to_end(MAX_REQUEST).await {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(path) => lookup(dir, path).await,
            Err(_) => Err(Response::BadRequest("path is not UTF-8".into())),
        },
        Err(kwik_tokio::ReadToEndError::TooLong) => {
            Err(Response::BadRequest("request too long".into()))
        }
        Err(e) => return Err(format!("reading the request: {e}")),
    };
    let (descriptor, resource) = match response {
        Ok(found) => found,
        Err(refusal) => {
            eprintln!(
                "kwik: session {}: {}",
                session.id(),
                refusal.encode().trim()
            );
            send.write_all(refusal.encode().as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            return Ok(());
        }
    };
    paths_added.call_once(|| add_paths(session, secondaries));
    let mut stream = session.open_uni().await.map_err(|e| e.to_string())?;
    let header = Response::Ok {
        size: descriptor.size,
        sha256: descriptor.sha256,
        stream: stream.id().0,
    };
    send.write_all(header.encode().as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    eprintln!("kwik: session {}: serving {descriptor}", session.id());
    if descriptor.size == 0 {
        stream.finish().map_err(|e| e.to_string())?;
        return Ok(());
    }
    let transfer = session
        .serve(
            stream,
            resource.shared(),
            descriptor.encode(),
            TransferConfig::default(),
        )
        .map_err(|e| e.to_string())?;
    transfer.finished().await.map_err(|e| e.to_string())?;
    eprintln!(
        "kwik: session {}: {} delivered",
        session.id(),
        descriptor.path
    );
    Ok(())
}

/// Resolves and opens (hashing if needed) the requested file.
async fn lookup(
    dir: &Arc<ServedDir>,
    path: String,
) -> Result<(Descriptor, crate::files::FileResource), Response> {
    let dir = dir.clone();
    let opened = tokio::task::spawn_blocking(move || match dir.resolve(&path) {
        Ok((relative, real)) => dir
            .open_file(&relative, &real)
            .map_err(|e| Response::Error(format!("{relative}: {e}"))),
        Err(Lookup::NotFound(m)) => Err(Response::NotFound(m)),
        Err(Lookup::Forbidden(m)) => Err(Response::Forbidden(m)),
        Err(Lookup::BadRequest(m)) => Err(Response::BadRequest(m)),
    })
    .await;
    opened.unwrap_or_else(|e| Err(Response::Error(e.to_string())))
}

/// Asks the client to join every secondary; outcomes are logged (the
/// transfer helper uses whichever paths become live, whenever they do).
/// `ADDR=NAME, …` for the log.
fn describe(secondaries: &[Candidate]) -> String {
    secondaries
        .iter()
        .map(|s| format!("{}={}", s.address, s.server_name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn add_paths(session: &Session, secondaries: &[Candidate]) {
    for secondary in secondaries {
        let (session, secondary) = (session.clone(), secondary.clone());
        tokio::spawn(async move {
            match session
                .add_path(secondary.address, &secondary.server_name)
                .await
            {
                Ok(path) => eprintln!(
                    "kwik: session {}: {} joined as {path}",
                    session.id(),
                    secondary.address
                ),
                Err(e) => eprintln!(
                    "kwik: session {}: {} not added: {e}",
                    session.id(),
                    secondary.address
                ),
            }
        });
    }
}
