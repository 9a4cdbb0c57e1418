//! Review: the Reconnector against a server that accepts every session and
//! closes it at once (an overloaded server shedding load, a crash loop
//! right after the handshake). Each attempt "succeeds", so the failure
//! count goes back to 0 and the next delay is `initial` again: clients
//! come back at the initial rate forever, in step, never giving up — the
//! thundering herd the module docs promise to avoid.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kwik_tokio::{Endpoint, ReconnectError, ReconnectPolicy, Reconnector, dev};

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_every_session_at_once_is_backed_off() {
    let (server_config, client_config) = dev::self_signed(["localhost"]);
    let server = Endpoint::server(server_config, localhost()).expect("server");
    let addr = server.local_addr();
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            if let Ok(session) = incoming.accept().await {
                let _ = session.close(0, b"busy");
            }
        }
    });
    let client = Endpoint::client(localhost()).expect("client");
    let mut policy = ReconnectPolicy::default();
    policy.initial = Duration::from_millis(20);
    policy.jitter = 0.0;
    policy.max_attempts = 4;
    let mut link = Reconnector::new(client.clone(), addr, "localhost", client_config, policy);
    let mut session = link.connect().await.expect("first session");
    let start = Instant::now();
    let mut gave_up = None;
    const FLAPS: u32 = 8;
    for _ in 0..FLAPS {
        let reason = session.closed().await;
        match tokio::time::timeout(Duration::from_secs(30), link.reconnect(&reason)).await {
            Ok(Ok(next)) => session = next,
            Ok(Err(e)) => {
                gave_up = Some(e);
                break;
            }
            Err(_) => panic!("reconnect hung"),
        }
    }
    let elapsed = start.elapsed();
    // Either the policy treats a session that ended at once as a failed
    // attempt (and gives up after max_attempts), or at least the delays
    // grow: 20 ms doubling over 8 flaps is 20 × (2^8 − 1) ms ≈ 5.1 s.
    let backed_off = elapsed >= Duration::from_millis(20 * ((1 << FLAPS) - 1) / 2);
    assert!(
        matches!(gave_up, Some(ReconnectError::GaveUp { .. })) || backed_off,
        "{} sessions in {elapsed:?}, no backoff growth, never gave up ({gave_up:?})",
        link.sessions()
    );
    server.close(0, b"");
    client.close(0, b"");
}
