//! Multi-server scenarios over real UDP on 127.0.0.1: a primary and
//! secondary servers in one process, and one client session served by all
//! of them.
//!
//! [`Cluster`] wires the endpoints: one self-signed certificate for
//! `localhost` presented by every server, a fresh path-token key shared by
//! the primary (minting) and the secondaries (verifying), secondaries
//! serving the test resource under [`DESCRIPTOR`], and a client policy that
//! allows exactly the secondaries it is told to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::{JoinHandle, SCENARIO_TIMEOUT, localhost, pattern, runtime, sleep, spawn, within};
use crate::{
    Adapter, ClientConfig, CloseReason, Endpoint, PathError, PathEvent, PathFilter, PathId,
    PathPolicy, PathState, PathTarget, Role, Runtime, ServerConfig, Session, TokenKey,
    TransferConfig, client_config_trusting, dev, server_config,
};

/// Descriptor under which every secondary serves the test resource.
pub const DESCRIPTOR: &[u8] = b"kwik-test-resource";

/// A primary, secondaries and a client endpoint, all on 127.0.0.1.
pub struct Cluster<A> {
    /// The primary server.
    pub primary: Endpoint<A>,
    /// The secondary servers, in order.
    pub secondaries: Vec<Endpoint<A>>,
    /// The client endpoint.
    pub client: Endpoint<A>,
    /// Configuration trusting the servers' certificate, allowing the
    /// secondaries the cluster was built to allow.
    pub client_config: ClientConfig,
    /// The resource every server can serve.
    pub resource: Bytes,
}

/// Options of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of secondary servers.
    pub secondaries: usize,
    /// How many of them (the first ones) the client's policy allows.
    pub allowed: usize,
    /// Cap on every server's sending rate, in bits per second.
    pub send_rate: Option<u64>,
    /// Resource size in bytes.
    pub size: usize,
    /// Whether secondaries serve the resource by themselves
    /// (`serve_resource`) or leave delegations to their application.
    pub serve_resource: bool,
}

impl ClusterOptions {
    /// `secondaries` servers, all allowed, no rate cap, serving a resource
    /// of `size` bytes by themselves.
    pub fn new(secondaries: usize, size: usize) -> Self {
        Self {
            secondaries,
            allowed: secondaries,
            send_rate: None,
            size,
            serve_resource: true,
        }
    }
}

fn server_endpoint<A: Adapter>(config: ServerConfig, rate: Option<u64>) -> Endpoint<A> {
    let socket = std::net::UdpSocket::bind(localhost()).expect("bind");
    match rate {
        Some(rate) => Endpoint::with_send_rate(socket, Some(config), rate),
        None => Endpoint::new(socket, Some(config)),
    }
    .expect("server endpoint")
}

impl<A: Adapter> Cluster<A> {
    /// Runs every secondary's [`secondary_loop`] and the primary's
    /// [`primary_serve`] of the resource, returning their handles.
    pub fn serve(
        &self,
        rt: &Arc<dyn Runtime>,
    ) -> (
        Vec<JoinHandle<Vec<SecondaryReport>>>,
        JoinHandle<PrimaryReport>,
    ) {
        let secondaries = self
            .secondaries
            .iter()
            .map(|s| spawn(rt, secondary_loop(s.clone())))
            .collect();
        let primary = spawn(
            rt,
            primary_serve(
                self.primary.clone(),
                self.secondary_addrs(),
                self.resource.clone(),
            ),
        );
        (secondaries, primary)
    }

    /// Starts the endpoints (they accept nothing until their loops run).
    pub fn new(options: &ClusterOptions) -> Self {
        let (cert, key) = dev::self_signed_cert(["localhost"]);
        let base = server_config(vec![cert.clone()], key).expect("server config");
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("OS randomness");
        let token_key = TokenKey::new(secret);

        let mut primary_config = base.clone();
        primary_config.token_key = Some(token_key.clone());
        let primary = server_endpoint(primary_config, options.send_rate);

        let resource = pattern(0x5eed, options.size);
        let secondaries: Vec<Endpoint<A>> = (0..options.secondaries)
            .map(|_| {
                let mut config = base.clone();
                config.trusted_keys = vec![token_key.clone()];
                let endpoint = server_endpoint::<A>(config, options.send_rate);
                if options.serve_resource {
                    endpoint.serve_resource(DESCRIPTOR, Arc::new(resource.clone()));
                }
                endpoint
            })
            .collect();

        let mut client_config = client_config_trusting([cert]).expect("client config");
        client_config.path_policy = PathPolicy::allow(
            secondaries[..options.allowed.min(secondaries.len())]
                .iter()
                .map(|s| PathTarget::Address(s.local_addr())),
        );
        let client = Endpoint::client(localhost()).expect("client endpoint");
        Self {
            primary,
            secondaries,
            client,
            client_config,
            resource,
        }
    }

    /// The secondaries' addresses.
    pub fn secondary_addrs(&self) -> Vec<SocketAddr> {
        self.secondaries.iter().map(Endpoint::local_addr).collect()
    }

    /// Connects the client to the primary.
    pub async fn connect(&self) -> Session<A> {
        self.client
            .connect(self.primary.local_addr(), "localhost", &self.client_config)
            .expect("connect")
            .await
            .expect("session established")
    }
}

/// What a secondary's application saw of one joined session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryReport {
    /// The path id it was joined as.
    pub path: Option<PathId>,
    /// Its role (always secondary).
    pub role: Role,
    /// Why it ended.
    pub close: CloseReason,
    /// Payload bytes it wrote, read once the session had ended.
    pub bytes_sent: u64,
}

/// A secondary server's application: accepts every attempt and holds each
/// joined session until it ends.
pub async fn secondary_loop<A: Adapter>(endpoint: Endpoint<A>) -> Vec<SecondaryReport> {
    let rt = runtime::<A>();
    let mut sessions = Vec::new();
    while let Some(incoming) = endpoint.accept().await {
        sessions.push(spawn(&rt, async move {
            let session = incoming.accept().await.ok()?;
            let path = session.joined_path();
            let role = session.role();
            let close = session.closed().await;
            let bytes_sent = session.stats().bytes_sent;
            Some(SecondaryReport {
                path,
                role,
                close,
                bytes_sent,
            })
        }));
    }
    let mut reports = Vec::new();
    for s in sessions {
        reports.extend(s.await);
    }
    reports
}

/// What the primary's application saw of its one session.
#[derive(Debug)]
pub struct PrimaryReport {
    /// Paths added, in order.
    pub added: Vec<PathId>,
    /// Every path event, in order.
    pub events: Vec<PathEvent>,
    /// Why the session ended.
    pub close: CloseReason,
}

/// The primary's application: takes one session, adds every secondary,
/// serves the resource through the transfer helper, waits for the client's
/// acknowledgement of every byte, then for the session's end.
pub async fn primary_serve<A: Adapter>(
    endpoint: Endpoint<A>,
    secondaries: Vec<SocketAddr>,
    resource: Bytes,
) -> PrimaryReport {
    let incoming = endpoint.accept().await.expect("a client");
    let session = incoming.accept().await.expect("primary session");
    assert_eq!(session.role(), Role::Primary);
    let mut added = Vec::new();
    for addr in secondaries {
        added.push(
            session
                .add_path(addr, "localhost")
                .await
                .expect("path added"),
        );
    }
    let send = session.open_uni().await.expect("open_uni");
    let transfer = session
        .serve(
            send,
            Arc::new(resource),
            DESCRIPTOR,
            TransferConfig::default(),
        )
        .expect("serve");
    transfer
        .finished()
        .await
        .expect("the client acknowledged every byte");
    drop(transfer);
    let close = session.closed().await;
    let mut events = Vec::new();
    while let Ok(event) = session.path_event().await {
        events.push(event);
    }
    PrimaryReport {
        added,
        events,
        close,
    }
}

/// Reads the first stream the primary opens, checking every byte against
/// `expected` as it arrives; `progress` is called with the bytes read so far.
pub async fn download<A: Adapter>(
    session: &Session<A>,
    expected: &Bytes,
    mut progress: impl FnMut(u64),
) {
    let mut recv = session.accept_uni().await.expect("accept_uni");
    let mut at = 0usize;
    while let Some(chunk) = recv.read_chunk(usize::MAX).await.expect("read") {
        let end = at + chunk.len();
        assert!(end <= expected.len(), "more bytes than the resource holds");
        assert!(
            chunk[..] == expected[at..end],
            "bytes {at}..{end} differ from the resource"
        );
        at = end;
        progress(at as u64);
    }
    assert_eq!(at, expected.len(), "the download is short");
}

/// UDP bytes the client received on each path, by path id.
fn received_per_path<A>(session: &Session<A>) -> Vec<(PathId, PathState, u64)> {
    session
        .paths(PathFilter::All)
        .into_iter()
        .map(|p| (p.id, p.state, p.bytes_received))
        .collect()
}

/// A primary and two secondaries serve one 32 MiB download through the
/// transfer helper; it arrives byte-identical and every server sent part.
pub async fn three_server_download<A: Adapter>() {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "three-server download",
        three_server_download_inner::<A>(&rt),
    )
    .await;
}

async fn three_server_download_inner<A: Adapter>(rt: &Arc<dyn Runtime>) {
    let cluster = Cluster::<A>::new(&ClusterOptions::new(2, 32 << 20));
    let (secondaries, primary) = cluster.serve(rt);
    let session = cluster.connect().await;
    download(&session, &cluster.resource, |_| {}).await;

    let paths = received_per_path(&session);
    assert_eq!(paths.len(), 3, "{paths:?}");
    for (id, state, bytes) in &paths {
        assert_eq!(*state, PathState::Active, "{id}: {paths:?}");
        assert!(
            *bytes > 64 << 10,
            "{id} delivered almost nothing: {paths:?}"
        );
    }
    session.close(0, b"done").expect("close");
    drop(session);
    let report = primary.await;
    assert_eq!(report.added.len(), 2);
    assert!(
        report
            .events
            .iter()
            .all(|e| matches!(e, PathEvent::Added(_) | PathEvent::Health { .. })),
        "{:?}",
        report.events
    );
    let reports = shut_down(&cluster, secondaries, 2).await;
    for report in &reports {
        // What a server wrote stays readable after its session ended.
        assert!(report.bytes_sent > 64 << 10, "{report:?}");
    }
}

/// Closes every server and checks each secondary saw one joined session;
/// returns what the secondaries reported.
async fn shut_down<A: Adapter>(
    cluster: &Cluster<A>,
    secondaries: Vec<JoinHandle<Vec<SecondaryReport>>>,
    expect_joined: usize,
) -> Vec<SecondaryReport> {
    cluster.client.wait_idle().await;
    cluster.primary.close(0, b"");
    let mut reports = Vec::new();
    for (endpoint, task) in cluster.secondaries.iter().zip(secondaries) {
        endpoint.close(0, b"");
        reports.extend(task.await);
    }
    for report in &reports {
        assert_eq!(report.role, Role::Secondary);
    }
    let joined = reports.iter().filter(|r| r.path.is_some()).count();
    assert_eq!(joined, expect_joined, "joined secondary sessions");
    cluster.primary.wait_idle().await;
    reports
}

/// How a secondary goes away in [`secondary_dies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Its endpoint is closed (the client hears a close) and dropped.
    Close,
    /// It stops dead, as if its process were killed: nothing more is sent.
    Abort,
}

/// Three rate-capped servers serve a 32 MiB download; a quarter of the way
/// in, one secondary goes away. The download completes byte-identical, the
/// primary learns the path died, and the transfer still finishes.
pub async fn secondary_dies<A: Adapter>(death: Death) {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "secondary death",
        secondary_dies_inner::<A>(&rt, death),
    )
    .await;
}

async fn secondary_dies_inner<A: Adapter>(rt: &Arc<dyn Runtime>, death: Death) {
    let mut options = ClusterOptions::new(2, 32 << 20);
    options.send_rate = Some(200_000_000);
    let cluster = Cluster::<A>::new(&options);
    let (secondaries, primary) = cluster.serve(rt);
    let session = cluster.connect().await;
    let mut victim = Some(cluster.secondaries[1].clone());
    let quarter = cluster.resource.len() as u64 / 4;
    download(&session, &cluster.resource, |read| {
        if read >= quarter
            && let Some(endpoint) = victim.take()
        {
            match death {
                Death::Close => endpoint.close(0, b"going away"),
                Death::Abort => endpoint.abort(),
            }
        }
    })
    .await;
    assert!(victim.is_none(), "the download never reached a quarter");

    let paths = received_per_path(&session);
    // The primary keeps re-adding the dead secondary (path retries): any
    // path after the first three is such an attempt, which cannot join.
    assert!(paths.len() >= 3, "{paths:?}");
    assert_eq!(paths[0].1, PathState::Active, "{paths:?}");
    assert_eq!(paths[1].1, PathState::Active, "{paths:?}");
    assert_eq!(paths[2].1, PathState::Dead, "{paths:?}");
    assert!(
        paths[3..].iter().all(|(_, state, _)| matches!(
            state,
            PathState::Initializing | PathState::Handshaking | PathState::Failed
        )),
        "{paths:?}"
    );
    let info = session.info().expect("the session is live");
    assert_eq!(
        info.history.first().map(|h| h.1),
        Some(kwik_core::SessionState::Initializing)
    );
    assert_eq!(info.state, session.state());
    session.close(0, b"done").expect("close");
    assert!(session.state().is_closing(), "{:?}", session.state());
    drop(session);

    let report = primary.await;
    let dead = report.added[1];
    assert!(
        report
            .events
            .iter()
            .any(|e| matches!(e, PathEvent::Dead { path, .. } if *path == dead)),
        "the primary never heard of the death: {:?}",
        report.events
    );
    // The helper re-assigned the dead path's ranges itself.
    assert!(
        !report
            .events
            .iter()
            .any(|e| matches!(e, PathEvent::RangesLost { .. })),
        "{:?}",
        report.events
    );
    let mut tasks = secondaries.into_iter();
    let first = tasks.next().expect("two secondaries");
    cluster.client.wait_idle().await;
    cluster.primary.close(0, b"");
    cluster.secondaries[0].close(0, b"");
    let reports = first.await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].path, Some(report.added[0]));
    // The victim's loop ended with its endpoint.
    let victim_reports = tasks.next().expect("two secondaries").await;
    assert!(victim_reports.len() <= 1, "{victim_reports:?}");
    cluster.primary.wait_idle().await;
}

/// The primary dies silently (its endpoint aborts: no close is sent) a
/// quarter into a download, with a client that asked for a fast verdict
/// (`primary_lost_after`): every pending and later operation of the session
/// fails with `PrimaryLost` — the download's read, a write, an accept — long
/// before the idle timeout, and the secondaries' sessions are closed by the
/// client with `KWIK_PATH_DEAD`.
pub async fn primary_dies<A: Adapter>() {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "primary death",
        primary_dies_inner::<A>(&rt),
    )
    .await;
}

async fn primary_dies_inner<A: Adapter>(rt: &Arc<dyn Runtime>) {
    let mut options = ClusterOptions::new(2, 64 << 20);
    options.send_rate = Some(100_000_000);
    let mut cluster = Cluster::<A>::new(&options);
    cluster.client_config.path_policy.primary_lost_after = Some(Duration::ZERO);
    let secondaries: Vec<_> = cluster
        .secondaries
        .iter()
        .map(|s| spawn(rt, secondary_loop(s.clone())))
        .collect();
    let primary_endpoint = cluster.primary.clone();
    let addrs = cluster.secondary_addrs();
    let resource = cluster.resource.clone();
    let primary = spawn(rt, async move {
        let incoming = primary_endpoint.accept().await.expect("a client");
        let session = incoming.accept().await.expect("primary session");
        for addr in addrs {
            session
                .add_path(addr, "localhost")
                .await
                .expect("path added");
        }
        let send = session.open_uni().await.expect("open_uni");
        let _transfer = session
            .serve(
                send,
                Arc::new(resource),
                DESCRIPTOR,
                TransferConfig::default(),
            )
            .expect("serve");
        // Held until the endpoint is aborted under it.
        session.closed().await
    });
    let session = cluster.connect().await;
    // A stream of the client's own, to write on after the death.
    let mut upload = session.open_uni().await.expect("open_uni");
    let mut recv = session.accept_uni().await.expect("accept_uni");
    let quarter = cluster.resource.len() / 4;
    let mut at = 0usize;
    let killed = loop {
        let chunk = recv
            .read_chunk(usize::MAX)
            .await
            .expect("read before the death")
            .expect("the download is longer");
        assert_eq!(chunk[..], cluster.resource[at..at + chunk.len()]);
        at += chunk.len();
        if at >= quarter {
            cluster.primary.abort();
            break std::time::Instant::now();
        }
    };
    // The pending read ends with the typed reason, not at the idle timeout.
    let error = loop {
        match recv.read_chunk(usize::MAX).await {
            Ok(Some(chunk)) => {
                assert_eq!(chunk[..], cluster.resource[at..at + chunk.len()]);
                at += chunk.len();
            }
            Ok(None) => panic!("the download cannot end without its primary"),
            Err(e) => break e,
        }
    };
    let waited = killed.elapsed();
    assert_eq!(
        error,
        crate::ReadError::SessionClosed(CloseReason::PrimaryLost),
        "after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "noticed after {waited:?}, not at the 30 s idle timeout"
    );
    assert_eq!(session.closed().await, CloseReason::PrimaryLost);
    assert!(matches!(
        upload.write(b"after the death").await,
        Err(crate::WriteError::SessionClosed(CloseReason::PrimaryLost))
    ));
    assert!(matches!(
        session.accept_uni().await,
        Err(crate::ConnectionError(CloseReason::PrimaryLost))
    ));
    // The secondaries were told, with a code, by the client.
    for endpoint in &cluster.secondaries {
        endpoint.wait_idle().await;
        endpoint.close(0, b"");
    }
    for task in secondaries {
        let reports = task.await;
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(
            matches!(
                &reports[0].close,
                CloseReason::Protocol {
                    code: crate::ErrorCode::PathDead,
                    by_peer: true,
                    ..
                }
            ),
            "{reports:?}"
        );
    }
    drop(primary);
}

/// The verbs one at a time: a path the client's policy refuses fails with
/// the client's report; path events; raw messages relayed to a secondary;
/// a hand-made delegation written by the secondary's application with
/// `write_at` while the primary writes the rest; the ledger empties; the
/// path is removed gracefully; a secondary that takes no raw messages is
/// closed once its queue is full.
pub async fn verbs<A: Adapter>() {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "multi-server verbs",
        verbs_inner::<A>(&rt),
    )
    .await;
}

async fn verbs_inner<A: Adapter>(rt: &Arc<dyn Runtime>) {
    const SIZE: usize = 4 << 20;
    const SPLIT: u64 = 1 << 20;
    let mut options = ClusterOptions::new(2, SIZE);
    options.allowed = 1;
    options.serve_resource = false;
    let cluster = Cluster::<A>::new(&options);
    let addrs = cluster.secondary_addrs();
    let resource = cluster.resource.clone();

    // Secondary 0's application: one raw message, then one delegation it
    // writes from the resource, then waits for the session's end.
    let endpoint = cluster.secondaries[0].clone();
    let source = resource.clone();
    let secondary = spawn(rt, async move {
        let incoming = endpoint.accept().await.expect("a joining client");
        let session = incoming.accept().await.expect("joined");
        assert_eq!(session.role(), Role::Secondary);
        let raw = session.recv_raw().await.expect("raw message");
        let d = session.delegated().await.expect("a delegation");
        let (start, end) = (d.range.start as usize, d.range.end as usize);
        session
            .write_at(d.stream, d.range.start, source.slice(start..end), d.fin)
            .await
            .expect("write_at");
        let close = session.closed().await;
        (session.joined_path(), raw, d, close)
    });
    let refused_endpoint = cluster.secondaries[1].clone();
    let refused = spawn(rt, async move {
        // The client never dials it: nothing ever arrives.
        refused_endpoint.accept().await.is_none()
    });

    let primary_endpoint = cluster.primary.clone();
    let primary_resource = resource.clone();
    let client_done = Arc::new(AtomicBool::new(false));
    let done = client_done.clone();
    // The client closes only once the primary saw the removal complete: a
    // close right away could overtake the client's last PathStatus.
    let removal_seen = Arc::new(AtomicBool::new(false));
    let removal_seen_by_primary = removal_seen.clone();
    let primary = spawn(rt, async move {
        let incoming = primary_endpoint.accept().await.expect("a client");
        let session = incoming.accept().await.expect("primary session");
        let path = session
            .add_path(addrs[0], "localhost")
            .await
            .expect("allowed path");
        let refused = session.add_path(addrs[1], "localhost").await;
        let Err(PathError::Failed { path: failed, .. }) = refused else {
            panic!("a path outside the client's policy: {refused:?}");
        };
        assert_eq!(next_path_change(&session).await, Ok(PathEvent::Added(path)));
        assert!(matches!(
            next_path_change(&session).await,
            Ok(PathEvent::Failed { path, .. }) if path == failed
        ));
        assert!(matches!(
            session.send_raw(failed, &b"x"[..]).await,
            Err(PathError::Dead(_))
        ));
        session
            .send_raw(path, &b"hello, secondary"[..])
            .await
            .expect("send_raw");

        let send: crate::SendStream = session.open_uni().await.expect("open_uni").into();
        let stream = send.hand_off();
        let d = session
            .delegate(path, stream, SPLIT..SIZE as u64, true, &b"by-hand"[..])
            .expect("delegate");
        assert_eq!(session.outstanding(), vec![d.clone()]);
        session
            .write_at(stream, 0, primary_resource.slice(..SPLIT as usize), false)
            .await
            .expect("primary's own part");
        // Remove the path only once the client has read everything.
        let rt = runtime::<A>();
        let mut waited = Duration::ZERO;
        while !done.load(Ordering::Acquire) {
            assert!(
                waited < Duration::from_secs(20),
                "the client never finished"
            );
            sleep(&rt, Duration::from_millis(5)).await;
            waited += Duration::from_millis(5);
        }
        session.remove_path(path).await.expect("remove_path");
        assert_eq!(
            next_path_change(&session).await,
            Ok(PathEvent::Closed(path))
        );
        let states: Vec<_> = session
            .paths(PathFilter::All)
            .into_iter()
            .map(|p| (p.id, p.state))
            .collect();
        assert_eq!(
            states,
            vec![
                (PathId::PRIMARY, PathState::Active),
                (path, PathState::Closed),
                (failed, PathState::Failed),
            ]
        );
        removal_seen_by_primary.store(true, Ordering::Release);
        (path, d, session.closed().await)
    });

    let session = cluster.connect().await;
    assert_eq!(session.role(), Role::Client);
    download(&session, &resource, |_| {}).await;
    client_done.store(true, Ordering::Release);
    let (joined, raw, delegation, secondary_close) = secondary.await;
    assert_eq!(raw, Bytes::from_static(b"hello, secondary"));
    assert_eq!(delegation.descriptor, Bytes::from_static(b"by-hand"));
    assert!(matches!(
        secondary_close,
        CloseReason::ApplicationClosed { .. } | CloseReason::Protocol { .. }
    ));
    let timers = runtime::<A>();
    let mut waited = Duration::ZERO;
    while !removal_seen.load(Ordering::Acquire) {
        assert!(
            waited < Duration::from_secs(20),
            "the primary never saw the removal"
        );
        sleep(&timers, Duration::from_millis(5)).await;
        waited += Duration::from_millis(5);
    }
    session.close(0, b"done").expect("close");
    drop(session);
    let (path, sent, _) = primary.await;
    assert_eq!(joined, Some(path));
    assert_eq!(delegation.range, sent.range);
    cluster.client.wait_idle().await;
    cluster.primary.close(0, b"");
    for s in &cluster.secondaries {
        s.close(0, b"");
    }
    assert!(refused.await, "the refused secondary was dialled");
    cluster.primary.wait_idle().await;

    raw_queue_is_bounded::<A>(rt).await;
}

/// A secondary whose application never takes raw messages is closed once
/// its queue is full; the primary sees the path die.
async fn raw_queue_is_bounded<A: Adapter>(rt: &Arc<dyn Runtime>) {
    let mut options = ClusterOptions::new(1, 1);
    options.serve_resource = false;
    let cluster = Cluster::<A>::new(&options);
    let secondary = spawn(rt, secondary_loop(cluster.secondaries[0].clone()));
    let addr = cluster.secondary_addrs()[0];
    let primary_endpoint = cluster.primary.clone();
    let primary = spawn(rt, async move {
        let incoming = primary_endpoint.accept().await.expect("a client");
        let session = incoming.accept().await.expect("primary session");
        let path = session.add_path(addr, "localhost").await.expect("path");
        assert_eq!(next_path_change(&session).await, Ok(PathEvent::Added(path)));
        let message = Bytes::from(vec![7u8; 1000]);
        for _ in 0..crate::shared::MAX_RAW_MESSAGES + 1 {
            if session.send_raw(path, message.clone()).await.is_err() {
                break;
            }
        }
        let event = next_path_change(&session).await;
        assert!(
            matches!(event, Ok(PathEvent::Dead { path: p, .. }) if p == path),
            "{event:?}"
        );
        session.close(0, b"").expect("close");
    });
    let session = cluster.connect().await;
    primary.await;
    assert!(session.closed().await != CloseReason::LocallyClosed);
    drop(session);
    cluster.client.wait_idle().await;
    cluster.primary.close(0, b"");
    cluster.secondaries[0].close(0, b"");
    let reports = secondary.await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    // Closed by the adapter on this side, with KWIK_INTERNAL on the wire.
    assert_eq!(reports[0].close, CloseReason::LocallyClosed, "{reports:?}");
    cluster.primary.wait_idle().await;
}

/// The session's next path event other than a health grade (grades come
/// and go with the load on a loopback machine).
async fn next_path_change<A: Adapter>(
    session: &Session<A>,
) -> Result<PathEvent, crate::ConnectionError> {
    loop {
        match session.path_event().await {
            Ok(PathEvent::Health { .. }) => continue,
            other => return other,
        }
    }
}
