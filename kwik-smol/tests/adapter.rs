//! The shared adapter scenarios (see `kwik_async::testing`) on smol, over
//! real UDP on 127.0.0.1.

use std::time::Duration;

use kwik_async::testing;
use kwik_smol::Smol;

#[test]
fn streams_fin_reset_stop_and_close_codes() {
    smol::block_on(testing::streams::<Smol>());
}

#[test]
fn wrong_alpn_and_garbage_are_refused_and_server_keeps_serving() {
    smol::block_on(testing::hostile_peers::<Smol>());
}

#[test]
fn reconnects_to_a_restarted_server_with_backoff() {
    smol::block_on(testing::reconnects::<Smol>());
}

#[test]
fn two_hundred_sessions_each_echo_one_mib() {
    let elapsed = smol::block_on(testing::many_sessions::<Smol>(200, 4, 1 << 20));
    eprintln!("smol: 200 sessions x 1 MiB echoed in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60));
}

/// futures-io's `AsyncRead`/`AsyncWrite` on the stream types, called
/// through the traits explicitly, including how kwik errors surface as
/// `io::Error`.
#[test]
fn futures_io_traits_round_trip_and_map_errors() {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    smol::block_on(async {
        let (server_config, client_config) = kwik_smol::dev::self_signed(["localhost"]);
        let server = kwik_smol::Endpoint::server(server_config, testing::localhost()).unwrap();
        let accepting = smol::spawn(testing::accept_loop(server.clone()));
        let client = kwik_smol::Endpoint::client(testing::localhost()).unwrap();
        let connecting = client.connect(server.local_addr(), "localhost", &client_config);
        let session = connecting.unwrap().await.unwrap();

        let (mut send, mut recv) = session.open_bi().await.unwrap();
        let data = testing::pattern(5, 300_000);
        let writer = async {
            AsyncWriteExt::write_all(&mut send, b"E").await?;
            AsyncWriteExt::write_all(&mut send, &data).await?;
            AsyncWriteExt::close(&mut send).await?;
            AsyncWriteExt::close(&mut send).await // repeatable
        };
        let reader = async {
            let mut out = Vec::new();
            AsyncReadExt::read_to_end(&mut recv, &mut out)
                .await
                .map(|_| out)
        };
        let (written, read) = futures_lite::future::zip(writer, reader).await;
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
            .and_then(|e| e.downcast_ref::<kwik_smol::WriteError>());
        assert_eq!(inner, Some(&kwik_smol::WriteError::Stopped(7)));

        session.close(0, b"").unwrap();
        drop((send, _recv, session));
        client.wait_idle().await;
        server.close(0, b"");
        assert_eq!(accepting.await.len(), 1);
    });
}

#[test]
fn primary_and_two_secondaries_serve_one_download_byte_identical() {
    smol::block_on(testing::multi::three_server_download::<Smol>());
}

#[test]
fn download_completes_when_a_secondary_is_closed_mid_transfer() {
    smol::block_on(testing::multi::secondary_dies::<Smol>(
        testing::multi::Death::Close,
    ));
}

#[test]
fn download_completes_when_a_secondary_dies_silently_mid_transfer() {
    smol::block_on(testing::multi::secondary_dies::<Smol>(
        testing::multi::Death::Abort,
    ));
}

#[test]
fn a_silent_primary_ends_every_pending_operation_with_primary_lost() {
    smol::block_on(testing::multi::primary_dies::<Smol>());
}

#[test]
fn multi_server_verbs_paths_raw_delegation_removal_and_bounded_queues() {
    smol::block_on(testing::multi::verbs::<Smol>());
}

#[test]
fn resumed_sessions_send_in_0rtt_and_survive_a_rejection() {
    smol::block_on(testing::zero_rtt::<Smol>());
}
