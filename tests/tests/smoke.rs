//! Smallest end-to-end check: one session, one stream.
use std::time::Duration;

use kwik_core::Dir;
use kwik_sim::setup::{SERVER_NAME, addr, configs, dev_cert, endpoint};
use kwik_sim::{BulkClient, BulkServer, KwikNode, LinkConfig, Payload, Sim};

#[test]
fn one_stream_arrives() {
    let mut sim = Sim::new(1);
    sim.set_default_link(LinkConfig::new().latency(Duration::from_millis(10)));
    let cert = dev_cert(1);
    let (client_cfg, server_cfg) = configs(&cert);
    let payload = Payload::new(9);
    let now = sim.now();
    let server = sim.add_node(
        &[addr(1)],
        Box::new(KwikNode::new(
            addr(1),
            endpoint(1, Some(server_cfg), now),
            BulkServer::new(payload.clone(), 1),
        )),
    );
    let client = sim.add_node(
        &[addr(2)],
        Box::new(KwikNode::new(
            addr(2),
            endpoint(2, None, now),
            BulkClient::new(
                addr(1),
                SERVER_NAME,
                client_cfg,
                payload,
                Dir::Uni,
                &[1 << 20],
            ),
        )),
    );
    let took = sim.run_until_done(Duration::from_secs(30));
    for line in sim.trace().lines().iter().take(40) {
        println!("{line}");
    }
    took.expect("finishes");
    let s = &sim.node::<KwikNode<BulkServer>>(server).app;
    assert_eq!(s.total_bytes(), 1 << 20);
    assert_eq!(s.corrupt, 0);
    let c = &sim.node::<KwikNode<BulkClient>>(client).app;
    assert!(c.all_complete());
}
