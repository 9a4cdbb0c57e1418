//! HTTP/1.1 over kwik with hyper (the `http` example's code): concurrent
//! requests over one session, every body checked, and no error on either
//! side — in particular, the server's shutdown of a connection whose client
//! stopped reading after the whole response arrived is no error (PROTOCOL.md
//! §5.3).

#[path = "../examples/http_app/mod.rs"]
mod http_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_gets_and_a_post_of_one_mib_end_without_error_on_both_sides() {
    let report = http_app::demo(20, 1 << 20)
        .await
        .expect("every request succeeds and every body is intact");
    assert_eq!(report.responses, 21);
    assert_eq!(report.bytes, 21 << 20);
    assert_eq!(report.server.len(), 21, "every server connection ended");
    for (i, result) in report.server.iter().enumerate() {
        assert!(result.is_ok(), "server connection {i}: {result:?}");
    }
}
