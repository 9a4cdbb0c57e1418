//! Runtime-generic integration scenarios over real UDP on 127.0.0.1.
//!
//! Each scenario is an `async fn` generic over the [`Adapter`], so the
//! adapters' test suites are one line per scenario and both runtimes are
//! held to exactly the same checks. Scenarios panic on failure and bound
//! every wait, so a bug shows up as a failed assertion or a timeout, never a
//! hung test.

use std::future::{Future, poll_fn};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::future;

pub mod multi;

use crate::{
    Adapter, CloseReason, ConnectionError, DisconnectKind, Endpoint, ReadError, ReconnectError,
    ReconnectPolicy, Reconnector, Runtime, ServerConfig, Session, WriteError,
    client_config_trusting, dev, server_config,
};

/// How long any one scenario may take before it is declared hung.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

/// `127.0.0.1:0`: every scenario binds to loopback only.
pub fn localhost() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn runtime<A: Adapter>() -> Arc<dyn Runtime> {
    A::runtime().expect("an adapter runtime is available")
}

/// Deterministic pseudo-random bytes (xorshift), different for every seed.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = BytesMut::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out.freeze()
}

struct JoinSlot<T> {
    value: Option<T>,
    finished: bool,
    waker: Option<Waker>,
}

/// Completion of a task spawned with [`spawn`]; panics if the task did.
pub struct JoinHandle<T>(Arc<Mutex<JoinSlot<T>>>);

/// Sets `finished` even if the task panics, so its joiner learns of it.
struct Reporter<T>(Arc<Mutex<JoinSlot<T>>>);

impl<T> Drop for Reporter<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            slot.finished = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Runs `task` on the runtime and returns a handle to await its output.
pub fn spawn<T, F>(runtime: &Arc<dyn Runtime>, task: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let slot = Arc::new(Mutex::new(JoinSlot {
        value: None,
        finished: false,
        waker: None,
    }));
    let reporter = Reporter(slot.clone());
    runtime.spawn(Box::pin(async move {
        let value = task.await;
        reporter.0.lock().unwrap_or_else(|e| e.into_inner()).value = Some(value);
        drop(reporter);
    }));
    JoinHandle(slot)
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<T> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(value) = slot.value.take() {
            return Poll::Ready(value);
        }
        assert!(!slot.finished, "a spawned test task panicked");
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Sleeps on the runtime's timer.
pub async fn sleep(runtime: &Arc<dyn Runtime>, duration: Duration) {
    crate::runtime::sleep(runtime, duration).await;
}

/// Runs `task`, panicking with `what` if it takes longer than `limit`.
pub async fn within<T>(
    runtime: &Arc<dyn Runtime>,
    limit: Duration,
    what: &str,
    task: impl Future<Output = T>,
) -> T {
    let mut task = pin!(task);
    let mut timer = runtime.new_timer(runtime.now() + limit);
    poll_fn(|cx| {
        if let Poll::Ready(value) = task.as_mut().poll(cx) {
            return Poll::Ready(value);
        }
        if timer.poll_elapsed(cx).is_ready() {
            panic!("{what}: no result within {limit:?}");
        }
        Poll::Pending
    })
    .await
}

/// What a server session ended with, or why it never started.
pub type SessionOutcome = Result<CloseReason, ConnectionError>;

/// Accepts every attempt and serves each session with [`serve`] until the
/// endpoint is closed; returns each session's outcome.
pub async fn accept_loop<A: Adapter>(endpoint: Endpoint<A>) -> Vec<SessionOutcome> {
    let rt = runtime::<A>();
    let mut sessions = Vec::new();
    while let Some(incoming) = endpoint.accept().await {
        let rt2 = rt.clone();
        sessions.push(spawn(&rt, async move {
            let session = incoming.accept().await?;
            Ok(serve(session, rt2).await)
        }));
    }
    let mut outcomes = Vec::new();
    for session in sessions {
        outcomes.push(session.await);
    }
    outcomes
}

enum Accepted<A: Adapter> {
    Bi(A::SendStream, A::RecvStream),
    Uni(A::RecvStream),
}

/// The test server's application. Each stream starts with a command byte:
/// `E` echoes the rest and finishes, `S` stops the stream with code 7,
/// `C` closes the session with code 77 and reason `done`; a unidirectional
/// `U` stream is answered with its content on a new unidirectional stream.
/// A stream the peer resets is answered with `reset <code>`.
pub async fn serve<A: Adapter>(session: Session<A>, rt: Arc<dyn Runtime>) -> CloseReason {
    loop {
        let bi = async {
            session
                .accept_bi()
                .await
                .map(|(s, r)| Accepted::<A>::Bi(s, r))
        };
        let uni = async { session.accept_uni().await.map(Accepted::<A>::Uni) };
        match future::or(bi, uni).await {
            Ok(Accepted::Bi(send, recv)) => {
                let session = session.clone();
                drop(spawn(&rt, serve_bi(session, send, recv)));
            }
            Ok(Accepted::Uni(recv)) => {
                let session = session.clone();
                drop(spawn(&rt, serve_uni(session, recv)));
            }
            Err(ConnectionError(reason)) => return reason,
        }
    }
}

async fn serve_bi<A: Adapter>(
    session: Session<A>,
    mut send: A::SendStream,
    mut recv: A::RecvStream,
) {
    let mut command = [0u8; 1];
    match recv.read(&mut command).await {
        Ok(Some(1)) => {}
        Err(ReadError::Reset(code)) => return answer_reset(&mut send, code).await,
        _ => return,
    }
    match command[0] {
        b'E' => loop {
            match recv.read_chunk(64 << 10).await {
                Ok(Some(chunk)) => {
                    if send.write_chunk(chunk).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = send.finish();
                    return;
                }
                Err(ReadError::Reset(code)) => return answer_reset(&mut send, code).await,
                Err(_) => return,
            }
        },
        b'S' => {
            let _ = recv.stop(7);
        }
        b'C' => {
            let _ = session.close(77, b"done");
        }
        _ => {}
    }
}

async fn answer_reset(send: &mut crate::SendStream, code: u64) {
    let _ = send.write_all(format!("reset {code}").as_bytes()).await;
    let _ = send.finish();
}

async fn serve_uni<A: Adapter>(session: Session<A>, mut recv: A::RecvStream) {
    let Ok(data) = recv.read_to_end(16 << 20).await else {
        return;
    };
    if data.first() != Some(&b'U') {
        return;
    }
    if let Ok(mut send) = session.open_uni().await {
        let _ = send.write_all(&data[1..]).await;
        let _ = send.finish();
    }
}

/// Sends `data` on a new `E` stream while reading the echo concurrently;
/// checks the echo is byte-identical and ends with the stream.
pub async fn echo<A: Adapter>(session: &Session<A>, data: Bytes) {
    let (mut send, mut recv) = session.open_bi().await.expect("open_bi");
    let len = data.len();
    let write = async {
        send.write_all(b"E").await.expect("write command");
        send.write_chunk(data.clone()).await.expect("write payload");
        send.finish().expect("finish");
    };
    let read = async { recv.read_to_end(len + 1).await.expect("read echo") };
    let ((), echoed) = future::zip(write, read).await;
    assert_eq!(echoed.len(), len, "echo length");
    assert!(echoed == data, "echo differs from what was sent");
    // The peer finished reading: the stream ends without a stop.
    assert_eq!(send.stopped().await, Ok(None));
}

/// Stream semantics over one server: concurrent bidirectional echoes, a
/// unidirectional round trip, FIN, reset, stop, and session close codes seen
/// by the peer in both directions.
pub async fn streams<A: Adapter>() {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "streams scenario",
        streams_inner::<A>(&rt),
    )
    .await;
}

async fn streams_inner<A: Adapter>(rt: &Arc<dyn Runtime>) {
    let (server_config, client_config) = dev::self_signed(["localhost"]);
    let server = Endpoint::<A>::server(server_config, localhost()).expect("server endpoint");
    let addr = server.local_addr();
    let accepting = spawn(rt, accept_loop(server.clone()));
    let client = Endpoint::<A>::client(localhost()).expect("client endpoint");

    first_session::<A>(rt, &client, addr, &client_config).await;

    // A second session that the server closes with 77 "done".
    let session = client
        .connect(addr, "localhost", &client_config)
        .expect("connect")
        .await
        .expect("second session");
    let (mut send, mut recv) = session.open_bi().await.expect("open_bi");
    send.write_all(b"C").await.expect("write");
    let expected = CloseReason::ApplicationClosed {
        code: 77,
        reason: Bytes::from_static(b"done"),
    };
    assert_eq!(session.closed().await, expected);
    assert_eq!(
        recv.read(&mut [0u8; 4]).await,
        Err(ReadError::SessionClosed(expected.clone()))
    );
    drop((send, recv, session));

    client.wait_idle().await;
    assert_eq!(
        client.tracked(),
        (0, 0),
        "client kept session or stream records"
    );
    server.close(0, b"");
    server.wait_idle().await;
    let outcomes = accepting.await;
    assert_eq!(
        server.tracked(),
        (0, 0),
        "server kept session or stream records"
    );
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes.contains(&Ok(CloseReason::ApplicationClosed {
        code: 99,
        reason: Bytes::from_static(b"bye"),
    })));
    assert!(outcomes.contains(&Ok(CloseReason::LocallyClosed)));
}

/// The first session of [`streams`]: every stream operation, then a close
/// by the client. All its handles are gone when it returns.
async fn first_session<A: Adapter>(
    rt: &Arc<dyn Runtime>,
    client: &Endpoint<A>,
    addr: SocketAddr,
    client_config: &crate::ClientConfig,
) {
    let session = client
        .connect(addr, "localhost", client_config)
        .expect("connect")
        .await
        .expect("session established");
    assert_eq!(session.remote_address(), addr);

    // Several concurrent bidirectional echoes of different sizes.
    let echoes: Vec<_> = (0..8u64)
        .map(|i| {
            let session = session.clone();
            spawn(rt, async move {
                echo(&session, pattern(i, 1 + i as usize * 50_000)).await;
            })
        })
        .collect();
    for e in echoes {
        e.await;
    }

    // Unidirectional both ways, this way at a priority of its own (a
    // sender-side hint: the bytes are the same).
    let mut uni = session.open_uni().await.expect("open_uni");
    assert_eq!(uni.priority(), Ok(0));
    uni.set_priority(3).expect("set_priority");
    assert_eq!(uni.priority(), Ok(3));
    uni.set_priority(i32::MAX).expect("set_priority");
    assert_eq!(uni.priority(), Ok(crate::MAX_STREAM_PRIORITY));
    let data = pattern(100, 70_000);
    uni.write_all(b"U").await.expect("write");
    uni.write_all(&data).await.expect("write");
    uni.finish().expect("finish");
    let mut back = session.accept_uni().await.expect("accept_uni");
    assert!(back.read_to_end(1 << 20).await.expect("read uni") == data);

    // Small reads through a small buffer, ending with Ok(None).
    let (mut send, mut recv) = session.open_bi().await.expect("open_bi");
    send.write_all(b"Ehello, kwik").await.expect("write");
    send.finish().expect("finish");
    let mut got = Vec::new();
    let mut buf = [0u8; 3];
    while let Some(n) = recv.read(&mut buf).await.expect("read") {
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"hello, kwik");
    assert_eq!(recv.read(&mut buf).await, Err(ReadError::ClosedStream));

    // Reset: once the server is known to be echoing, reset with 42; the
    // server's reader sees the code and reports it.
    let (mut send, mut recv) = session.open_bi().await.expect("open_bi");
    send.write_all(b"E0123456789").await.expect("write");
    let mut first = [0u8; 10];
    let mut filled = 0;
    while filled < first.len() {
        filled += recv
            .read(&mut first[filled..])
            .await
            .expect("read")
            .expect("data");
    }
    send.reset(42).expect("reset");
    assert_eq!(
        send.stopped().await,
        Ok(None),
        "a reset stream has no stop to wait for"
    );
    assert_eq!(
        recv.read_to_end(1 << 10).await.expect("report"),
        b"reset 42"
    );

    // Stop: the server stops with 7; the writer sees Stopped(7).
    let (mut send, stopped_recv) = session.open_bi().await.expect("open_bi");
    send.write_all(b"S").await.expect("write");
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0usize;
    let stopped = loop {
        match send.write(&chunk).await {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written < 256 << 20, "never stopped");
    };
    assert_eq!(stopped, WriteError::Stopped(7));
    assert_eq!(send.stopped().await, Ok(Some(7)));
    assert_eq!(send.finish(), Err(crate::StreamError::Stopped(7)));

    // Dropping an unfinished SendStream finishes it: the echo still ends.
    let (mut send, mut recv) = session.open_bi().await.expect("open_bi");
    send.write_all(b"Edropped sender").await.expect("write");
    drop(send);
    assert_eq!(
        recv.read_to_end(1 << 10).await.expect("echo"),
        b"dropped sender"
    );

    // Dropping a RecvStream not read to its end stops the stream with 0:
    // the server's echo is stopped, it drops its reader, and our writer
    // sees Stopped(0) in turn.
    let (mut send, recv) = session.open_bi().await.expect("open_bi");
    send.write_all(b"E").await.expect("write");
    drop(recv);
    let stopped = loop {
        if let Err(e) = send.write(&chunk).await {
            break e;
        }
    };
    assert_eq!(stopped, WriteError::Stopped(0));
    drop(send);

    // Nothing is left behind once every handle is gone.
    drop(stopped_recv);
    let mut waited = Duration::ZERO;
    while session.stats().open_streams != 0 {
        assert!(
            waited < Duration::from_secs(5),
            "streams leaked: {:?}",
            session.stats()
        );
        sleep(rt, Duration::from_millis(5)).await;
        waited += Duration::from_millis(5);
    }

    // Reserved codes are refused; the client closes with its own code.
    assert!(
        session
            .close(crate::ErrorCode::Internal.wire(), b"")
            .is_err()
    );
    session.close(99, b"bye").expect("close");
    assert_eq!(session.closed().await, CloseReason::LocallyClosed);
    assert!(matches!(
        session.open_bi().await,
        Err(ConnectionError(CloseReason::LocallyClosed))
    ));
}

/// Hostile peers: a plain QUIC client offering the wrong ALPN is refused,
/// garbage datagrams are ignored, and the server keeps serving a good client
/// throughout.
pub async fn hostile_peers<A: Adapter>() {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "hostile peers scenario",
        hostile_inner::<A>(&rt),
    )
    .await;
}

async fn hostile_inner<A: Adapter>(rt: &Arc<dyn Runtime>) {
    let (cert, key) = dev::self_signed_cert(["localhost"]);
    let server_config = server_config(vec![cert.clone()], key).expect("server config");
    let client_config = client_config_trusting([cert.clone()]).expect("client config");
    let server = Endpoint::<A>::server(server_config, localhost()).expect("server endpoint");
    let addr = server.local_addr();
    let accepting = spawn(rt, accept_loop(server.clone()));

    send_garbage(addr, 0, 300).expect("send garbage");

    // A real QUIC client speaking "h3": the TLS handshake fails on ALPN.
    let raw = std::thread::spawn(move || {
        raw_quic_client(addr, "localhost", cert, b"h3", Duration::from_secs(10))
    });
    while !raw.is_finished() {
        sleep(rt, Duration::from_millis(5)).await;
    }
    let err = raw
        .join()
        .expect("raw client thread")
        .expect_err("h3 must be refused");
    let no_application_protocol = quinn_proto::TransportErrorCode::crypto(120);
    assert!(
        matches!(&err, quinn_proto::ConnectionError::ConnectionClosed(c) if c.error_code == no_application_protocol),
        "unexpected refusal: {err}"
    );

    // A good client works, with garbage arriving during its transfer.
    let client = Endpoint::<A>::client(localhost()).expect("client endpoint");
    let session = client
        .connect(addr, "localhost", &client_config)
        .expect("connect")
        .await
        .expect("session after hostile peers");
    let junk = std::thread::spawn(move || send_garbage(addr, 1, 2_000));
    echo(&session, pattern(7, 4 << 20)).await;
    junk.join().expect("junk thread").expect("send garbage");
    echo(&session, pattern(8, 1 << 10)).await;
    session.close(0, b"").expect("close");
    drop(session);
    client.wait_idle().await;

    server.close(0, b"");
    server.wait_idle().await;
    let outcomes = accepting.await;
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(
        matches!(
            &outcomes[0],
            Err(ConnectionError(CloseReason::Transport(_)))
        ),
        "the h3 attempt must fail its handshake: {:?}",
        outcomes[0]
    );
    assert!(outcomes[1].is_ok(), "{:?}", outcomes[1]);
}

/// Sends `count` datagrams of junk to `target`: random bytes under short
/// and long header forms, Initial-sized ones, and a kwik/QUIC-version-like
/// prefix, none of which decrypt.
pub fn send_garbage(target: SocketAddr, seed: u64, count: usize) -> io::Result<()> {
    let socket = UdpSocket::bind(localhost())?;
    let bytes = pattern(seed ^ 0x6a75_6e6b, count * 8);
    for i in 0..count {
        let word = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let len = match i % 4 {
            0 => 1200,
            1 => 1 + (word % 64) as usize,
            _ => 1 + (word % 1500) as usize,
        };
        let mut datagram = pattern(word, len).to_vec();
        match i % 3 {
            0 => datagram[0] |= 0xc0,                       // long header
            1 => datagram[0] = (datagram[0] & 0x3f) | 0x40, // short header
            _ => {}
        }
        if i % 5 == 0 && datagram.len() > 5 {
            datagram[1..5].copy_from_slice(&1u32.to_be_bytes()); // QUIC v1
        }
        socket.send_to(&datagram, target)?;
    }
    Ok(())
}

/// A bare quinn-proto client over a blocking socket that offers `alpn`;
/// returns `Ok` if the handshake completes, else why the connection died.
pub fn raw_quic_client(
    server: SocketAddr,
    server_name: &str,
    trust: rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
    limit: Duration,
) -> Result<(), quinn_proto::ConnectionError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust).expect("trust anchor");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let config = quinn_proto::ClientConfig::new(Arc::new(crypto));

    let socket = UdpSocket::bind(localhost()).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        true,
        None,
    );
    let start = Instant::now();
    let (handle, mut conn) = endpoint
        .connect(start, config, server, server_name)
        .expect("connect");
    let mut out = Vec::new();
    let mut datagram = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        assert!(now - start < limit, "raw QUIC client got no verdict");
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        loop {
            out.clear();
            let Some(t) = conn.poll_transmit(now, 1, &mut out) else {
                break;
            };
            socket.send_to(&out[..t.size], t.destination).expect("send");
        }
        while let Some(event) = conn.poll_endpoint_events() {
            if let Some(reply) = endpoint.handle_event(handle, event) {
                conn.handle_event(reply);
            }
        }
        while let Some(event) = conn.poll() {
            match event {
                quinn_proto::Event::Connected => return Ok(()),
                quinn_proto::Event::ConnectionLost { reason } => return Err(reason),
                _ => {}
            }
        }
        match socket.recv_from(&mut datagram) {
            Ok((n, from)) => {
                let data = BytesMut::from(&datagram[..n]);
                out.clear();
                if let Some(quinn_proto::DatagramEvent::ConnectionEvent(_, event)) =
                    endpoint.handle(Instant::now(), from, None, None, data, &mut out)
                {
                    conn.handle_event(event);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("raw client receive failed: {e}"),
        }
    }
}

/// `sessions` concurrent sessions, spread over `client_endpoints` client
/// endpoints, each echoing `bytes` of its own pattern through one server;
/// every byte is checked. Returns how long the transfers took.
pub async fn many_sessions<A: Adapter>(
    sessions: usize,
    client_endpoints: usize,
    bytes: usize,
) -> Duration {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "many sessions scenario",
        many_sessions_inner::<A>(&rt, sessions, client_endpoints, bytes),
    )
    .await
}

async fn many_sessions_inner<A: Adapter>(
    rt: &Arc<dyn Runtime>,
    sessions: usize,
    client_endpoints: usize,
    bytes: usize,
) -> Duration {
    let (server_config, client_config) = dev::self_signed(["localhost"]);
    let server = Endpoint::<A>::server(server_config, localhost()).expect("server endpoint");
    let addr = server.local_addr();
    let accepting = spawn(rt, accept_loop(server.clone()));
    let clients: Vec<Endpoint<A>> = (0..client_endpoints.max(1))
        .map(|_| Endpoint::<A>::client(localhost()).expect("client endpoint"))
        .collect();

    let start = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let config = client_config.clone();
            spawn(rt, async move {
                let session = client
                    .connect(addr, "localhost", &config)
                    .expect("connect")
                    .await
                    .expect("session established");
                echo(&session, pattern(1000 + i as u64, bytes)).await;
                session.close(0, b"").expect("close");
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let elapsed = start.elapsed();

    for client in &clients {
        client.wait_idle().await;
        assert_eq!(client.tracked(), (0, 0), "client kept records");
    }
    server.close(0, b"");
    server.wait_idle().await;
    let outcomes = accepting.await;
    assert_eq!(server.tracked(), (0, 0), "server kept records");
    assert_eq!(outcomes.len(), sessions);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    elapsed
}

/// Client reconnects against a server restarted on the same port: after a
/// crash (the server vanishes without a word; the client notices by its
/// idle timeout) and after a graceful close, the [`Reconnector`] backs off,
/// keeps trying while the server is down, and reaches the new server once
/// it is up; a session this side closed itself is not reconnected.
pub async fn reconnects<A: Adapter>() {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "reconnect scenario",
        reconnects_inner::<A>(&rt),
    )
    .await;
}

/// Binds a server on `addr` (retrying while the old socket is released)
/// and serves it with [`accept_loop`].
async fn restart_server<A: Adapter>(
    rt: &Arc<dyn Runtime>,
    config: ServerConfig,
    addr: SocketAddr,
) -> Endpoint<A> {
    for _ in 0..100 {
        if let Ok(server) = Endpoint::<A>::server(config.clone(), addr) {
            drop(spawn(rt, accept_loop(server.clone())));
            return server;
        }
        sleep(rt, Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr} again");
}

async fn reconnects_inner<A: Adapter>(rt: &Arc<dyn Runtime>) {
    let (server_config, mut client_config) = dev::self_signed(["localhost"]);
    // A crashed server is noticed after a second of silence.
    client_config.transport.idle_timeout = Duration::from_secs(1);
    client_config.transport.keep_alive_interval = Some(Duration::from_millis(200));
    let server = Endpoint::<A>::server(server_config.clone(), localhost()).expect("server");
    let addr = server.local_addr();
    drop(spawn(rt, accept_loop(server.clone())));
    let client = Endpoint::<A>::client(localhost()).expect("client endpoint");
    let policy = ReconnectPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
        // Long enough that no attempt is abandoned half-way: a server
        // session whose client gave up mid-handshake holds the server's
        // `wait_idle` for its idle timeout (noted in the tracker).
        connect_timeout: Duration::from_secs(5),
        ..ReconnectPolicy::default()
    };
    let mut link = Reconnector::new(client.clone(), addr, "localhost", client_config, policy);
    let session = link.connect().await.expect("first session");
    echo(&session, pattern(1, 100_000)).await;

    // 1. The server crashes and comes back 1.5 s later on the same port.
    server.abort();
    let reason = session.closed().await;
    assert_eq!(reason.kind(), DisconnectKind::Timeout, "{reason:?}");
    let down = rt.now();
    let restarting = {
        let (rt2, config) = (rt.clone(), server_config.clone());
        spawn(rt, async move {
            sleep(&rt2, Duration::from_millis(1500)).await;
            let server = restart_server::<A>(&rt2, config, addr).await;
            (server, rt2.now())
        })
    };
    let session = link
        .reconnect(&reason)
        .await
        .expect("reconnected after a crash");
    let (server, up) = restarting.await;
    assert!(up >= down + Duration::from_millis(1500));
    echo(&session, pattern(2, 100_000)).await;
    assert_eq!(link.sessions(), 2);

    // 2. The server shuts down gracefully and restarts at once.
    server.close(0, b"restarting");
    let reason = session.closed().await;
    assert!(
        matches!(reason, CloseReason::ApplicationClosed { code: 0, .. }),
        "{reason:?}"
    );
    server.wait_idle().await;
    drop(server);
    let server = restart_server::<A>(rt, server_config.clone(), addr).await;
    let session = link
        .reconnect(&reason)
        .await
        .expect("reconnected after a close");
    echo(&session, pattern(3, 100_000)).await;
    assert_eq!(link.sessions(), 3);

    // 3. This side's own close is final.
    session.close(0, b"bye").expect("close");
    let reason = session.closed().await;
    assert_eq!(
        link.reconnect(&reason).await.err(),
        Some(ReconnectError::Final(CloseReason::LocallyClosed))
    );
    assert_eq!(link.sessions(), 3);
    server.close(0, b"");
    client.close(0, b"");
}

/// The next attempt on `server`, accepted and served with [`serve`]
/// (until the session ends) by a task on `rt`; returns the session.
async fn accept_one<A: Adapter>(rt: &Arc<dyn Runtime>, server: &Endpoint<A>) -> Session<A> {
    let incoming = server.accept().await.expect("an attempt");
    let session = incoming.accept().await.expect("accepted");
    drop(spawn(rt, serve(session.clone(), rt.clone())));
    session
}

/// 0-RTT resumption over real UDP (PROTOCOL.md §12). A first session leaves
/// the client configuration a ticket. The second dials with
/// `Connecting::into_0rtt` and writes an echo request on an idempotent
/// stream before the server even accepts the attempt (so it certainly rides
/// in 0-RTT), then reads the echo; the server handed that session out
/// before the handshake confirmed the client, and both sides see the 0-RTT
/// data accepted. Then the server restarts (a new endpoint, a new ticket
/// store): 0-RTT is rejected, the early stream fails with `ZeroRttRejected`
/// on every call, and the same request on a new stream is echoed byte for
/// byte. A client configuration without a ticket gets its `Connecting`
/// back.
pub async fn zero_rtt<A: Adapter>() {
    let rt = runtime::<A>();
    within(
        &rt,
        SCENARIO_TIMEOUT,
        "0-RTT scenario",
        zero_rtt_inner::<A>(&rt),
    )
    .await;
}

async fn zero_rtt_inner<A: Adapter>(rt: &Arc<dyn Runtime>) {
    use crate::{SessionId, StoppedError, StreamError, ZeroRtt};

    let (cert, key) = dev::self_signed_cert(["localhost"]);
    let early_server = || {
        let mut config = server_config(vec![cert.clone()], key.clone_key()).expect("server");
        config.early_data = true;
        config
    };
    let client_config = client_config_trusting([cert.clone()]).expect("client config");
    let server = Endpoint::<A>::server(early_server(), localhost()).expect("server endpoint");
    let client = Endpoint::<A>::client(localhost()).expect("client endpoint");
    let unknown = SessionId([0; SessionId::LEN]);

    // Without a ticket there is no 0-RTT: the Connecting comes back.
    let connecting = client
        .connect(server.local_addr(), "localhost", &client_config)
        .expect("connect");
    let Err(connecting) = connecting.into_0rtt() else {
        panic!("0-RTT without a ticket");
    };
    let served = accept_one(rt, &server).await;
    let session = connecting.await.expect("established");
    assert_eq!(session.zero_rtt(), ZeroRtt::Off);
    assert_eq!(served.zero_rtt(), ZeroRtt::Off);
    assert!(!session.zero_rtt_accepted().await);
    echo(&session, pattern(1, 1000)).await;
    // The tickets come in the server's first 1-RTT packets; give them time.
    sleep(rt, Duration::from_millis(100)).await;
    session.close(0, b"").expect("close");
    drop((session, served));

    // Resumed: the request is written before the server has even accepted
    // the attempt, so it can only leave in 0-RTT.
    let connecting = client
        .connect(server.local_addr(), "localhost", &client_config)
        .expect("connect");
    let (session, accepted) = connecting
        .into_0rtt()
        .expect("the first session left a ticket");
    assert_eq!(session.id(), unknown, "no Welcome yet");
    let (mut send, mut recv) = session.open_bi_idempotent().await.expect("open in 0-RTT");
    assert!(send.is_0rtt() && recv.is_0rtt());
    let data = pattern(2, 20_000);
    send.write_all(b"E").await.expect("write in 0-RTT");
    send.write_chunk(data.clone())
        .await
        .expect("write in 0-RTT");
    send.finish().expect("finish in 0-RTT");
    let served = accept_one(rt, &server).await;
    assert_ne!(
        served.zero_rtt(),
        ZeroRtt::Off,
        "established by a 0-RTT Hello"
    );
    assert!(accepted.await, "the server took the 0-RTT data");
    assert!(
        served.zero_rtt_accepted().await,
        "the handshake confirmed it"
    );
    assert_eq!(session.zero_rtt(), ZeroRtt::Accepted);
    assert_eq!(served.zero_rtt(), ZeroRtt::Accepted);
    let echoed = recv.read_to_end(data.len()).await.expect("echo");
    assert!(echoed == data, "echo differs");
    let id = session.established().await.expect("established");
    assert_eq!((id, served.id()), (session.id(), session.id()));
    assert_ne!(id, unknown);
    echo(&session, pattern(3, 1000)).await;
    sleep(rt, Duration::from_millis(100)).await;
    session.close(0, b"").expect("close");
    drop((send, recv, session, served));

    // The server restarts: its new ticket store knows no ticket.
    server.close(0, b"");
    server.wait_idle().await;
    let server = Endpoint::<A>::server(early_server(), localhost()).expect("server endpoint");
    let connecting = client
        .connect(server.local_addr(), "localhost", &client_config)
        .expect("connect");
    let (session, accepted) = connecting.into_0rtt().expect("a ticket is left");
    let (mut send, mut recv) = session.open_bi_idempotent().await.expect("open in 0-RTT");
    assert!(send.is_0rtt());
    let data = pattern(4, 5000);
    send.write_all(b"E").await.expect("write in 0-RTT");
    send.write_all(&data).await.expect("write in 0-RTT");
    let served = accept_one(rt, &server).await;
    assert!(!accepted.await, "a restarted server rejects 0-RTT");
    assert_eq!(session.zero_rtt(), ZeroRtt::Rejected);
    assert_eq!(served.zero_rtt(), ZeroRtt::Off, "the server saw no 0-RTT");
    assert_eq!(send.write(b"more").await, Err(WriteError::ZeroRttRejected));
    assert_eq!(send.finish(), Err(StreamError::ZeroRttRejected));
    assert_eq!(send.stopped().await, Err(StoppedError::ZeroRttRejected));
    let mut buf = [0u8; 16];
    assert_eq!(recv.read(&mut buf).await, Err(ReadError::ZeroRttRejected));
    // The request again, on a stream of the established session (its id is
    // the rejected one's, used again: the old handles must not touch it).
    echo(&session, data).await;
    drop((send, recv));
    echo(&session, pattern(5, 1000)).await;
    session.close(0, b"").expect("close");
    drop((session, served));
    client.wait_idle().await;
    assert_eq!(client.tracked(), (0, 0), "client kept records");
    server.close(0, b"");
    server.wait_idle().await;
    assert_eq!(server.tracked(), (0, 0), "server kept records");
}
