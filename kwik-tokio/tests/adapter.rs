//! The shared adapter scenarios (see `kwik_async::testing`) on tokio's
//! multi-threaded runtime, over real UDP on 127.0.0.1.

use std::time::Duration;

use kwik_async::testing;
use kwik_tokio::Tokio;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_fin_reset_stop_and_close_codes() {
    testing::streams::<Tokio>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_alpn_and_garbage_are_refused_and_server_keeps_serving() {
    testing::hostile_peers::<Tokio>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_to_a_restarted_server_with_backoff() {
    testing::reconnects::<Tokio>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_each_echo_one_mib() {
    let elapsed = testing::many_sessions::<Tokio>(200, 4, 1 << 20).await;
    eprintln!("tokio: 200 sessions x 1 MiB echoed in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60));
}

/// tokio's `AsyncRead`/`AsyncWrite` on the stream types, called through the
/// traits explicitly, including how kwik errors surface as `io::Error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_io_traits_round_trip_and_map_errors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (server_config, client_config) = kwik_tokio::dev::self_signed(["localhost"]);
    let server = kwik_tokio::Endpoint::server(server_config, testing::localhost()).unwrap();
    let accepting = tokio::spawn(testing::accept_loop(server.clone()));
    let client = kwik_tokio::Endpoint::client(testing::localhost()).unwrap();
    let connecting = client.connect(server.local_addr(), "localhost", &client_config);
    let session = connecting.unwrap().await.unwrap();

    let (mut send, mut recv) = session.open_bi().await.unwrap();
    let data = testing::pattern(5, 300_000);
    let writer = async {
        AsyncWriteExt::write_all(&mut send, b"E").await?;
        AsyncWriteExt::write_all(&mut send, &data).await?;
        AsyncWriteExt::shutdown(&mut send).await?;
        AsyncWriteExt::shutdown(&mut send).await // repeatable
    };
    let reader = async {
        let mut out = Vec::new();
        AsyncReadExt::read_to_end(&mut recv, &mut out)
            .await
            .map(|_| out)
    };
    let (written, read) = tokio::join!(writer, reader);
    written.unwrap();
    assert!(read.unwrap() == data);

    let (mut send, _recv) = session.open_bi().await.unwrap();
    AsyncWriteExt::write_all(&mut send, b"S").await.unwrap();
    let err = loop {
        if let Err(e) = AsyncWriteExt::write_all(&mut send, &[0; 65536]).await {
            break e;
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<kwik_tokio::WriteError>());
    assert_eq!(inner, Some(&kwik_tokio::WriteError::Stopped(7)));

    session.close(0, b"").unwrap();
    drop((send, _recv, session));
    client.wait_idle().await;
    server.close(0, b"");
    assert_eq!(accepting.await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_two_secondaries_serve_one_download_byte_identical() {
    testing::multi::three_server_download::<Tokio>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_completes_when_a_secondary_is_closed_mid_transfer() {
    testing::multi::secondary_dies::<Tokio>(testing::multi::Death::Close).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_completes_when_a_secondary_dies_silently_mid_transfer() {
    testing::multi::secondary_dies::<Tokio>(testing::multi::Death::Abort).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_primary_ends_every_pending_operation_with_primary_lost() {
    testing::multi::primary_dies::<Tokio>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_server_verbs_paths_raw_delegation_removal_and_bounded_queues() {
    testing::multi::verbs::<Tokio>().await;
}

/// `Incoming::retry` over real UDP: the first attempt is unvalidated and is
/// retried, the client comes back with the token (validated, same address),
/// a second retry is refused and hands the attempt back, and accepting it
/// establishes the session; the endpoint counts one Retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_retry_validates_the_address_then_the_session_connects() {
    let (mut server_config, client_config) = kwik_tokio::dev::self_signed(["localhost"]);
    // Only the application decides on retries here.
    server_config.retry = kwik_tokio::RetryPolicy::Never;
    let server = kwik_tokio::Endpoint::server(server_config, testing::localhost()).unwrap();
    let client = kwik_tokio::Endpoint::client(testing::localhost()).unwrap();
    let connecting = client
        .connect(server.local_addr(), "localhost", &client_config)
        .unwrap();
    let client_side = tokio::spawn(connecting);

    let first = server.accept().await.expect("an attempt");
    assert!(!first.remote_address_validated());
    let remote = first.remote_address();
    first
        .retry()
        .expect("an unvalidated attempt may be retried");

    let second = server.accept().await.expect("the client comes back");
    assert!(second.remote_address_validated());
    assert_eq!(second.remote_address(), remote);
    let second = match second.retry() {
        Err(e) => e.into_incoming(),
        Ok(()) => panic!("an attempt that came back from a Retry cannot be retried again"),
    };
    let server_session = second.accept().await.expect("accepted");
    let client_session = tokio::time::timeout(Duration::from_secs(10), client_side)
        .await
        .expect("the client connects")
        .unwrap()
        .expect("established");
    assert_eq!(server_session.id(), client_session.id());
    let stats = server.stats();
    assert_eq!(
        (
            stats.incoming,
            stats.retries_sent,
            stats.handshakes_accepted
        ),
        (2, 1, 1),
        "{stats:?}"
    );

    client_session.close(0, b"").unwrap();
    drop((client_session, server_session));
    client.wait_idle().await;
    server.close(0, b"");
    server.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_sessions_send_in_0rtt_and_survive_a_rejection() {
    testing::zero_rtt::<Tokio>().await;
}
