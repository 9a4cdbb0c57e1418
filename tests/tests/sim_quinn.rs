//! The bare quinn-proto bulk pair through the simulator: validates the
//! simulator against a transport we did not write, and the pair itself as
//! the benchmark baseline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kwik_sim::{Congestion, LinkConfig, NodeId, QuinnBulkNode, Sim, sim_transport_config};

const MIB: u64 = 1 << 20;

fn client_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 50_000))
}

fn server_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 1, 1], 4433))
}

/// A 64 KiB chunk with a non-repeating-looking pattern, so that misordered
/// or duplicated stream data changes the checksum.
fn chunk() -> Bytes {
    let mut x: u32 = 0x1234_5678;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

struct Outcome {
    sim: Sim,
    client: NodeId,
    server: NodeId,
    virtual_time: Duration,
    wall: Duration,
}

impl Outcome {
    fn server(&self) -> &QuinnBulkNode {
        self.sim.node::<QuinnBulkNode>(self.server)
    }

    fn client(&self) -> &QuinnBulkNode {
        self.sim.node::<QuinnBulkNode>(self.client)
    }

    /// Asserts the whole stream arrived intact; returns the FIN time.
    fn assert_complete(&self, total: u64) -> Duration {
        let server = self.server();
        assert_eq!(server.error(), None, "server error");
        assert_eq!(self.client().error(), None, "client error");
        assert_eq!(server.received(), total);
        assert_eq!(self.client().sent(), total);
        assert_eq!(Some(server.checksum()), self.client().expected_checksum());
        server.finished_at().expect("FIN received") - self.sim.start()
    }
}

fn bulk(seed: u64, link: LinkConfig, cc: Congestion, total: u64, datagrams: bool) -> Outcome {
    let mut sim = Sim::new(seed);
    sim.set_path(client_addr(), server_addr(), link);
    sim.trace_mut().set_datagrams(datagrams);
    sim.trace_mut().set_keep_lines(!datagrams);
    let server = sim.add_node(
        &[server_addr()],
        Box::new(QuinnBulkNode::server(
            server_addr(),
            seed,
            sim_transport_config(cc),
        )),
    );
    let client = sim.add_node(
        &[client_addr()],
        Box::new(QuinnBulkNode::client(
            client_addr(),
            server_addr(),
            seed.wrapping_add(1),
            sim_transport_config(cc),
            total,
            chunk(),
        )),
    );
    let wall = Instant::now();
    let virtual_time = sim
        .run_until_done(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}: {:?}", sim.total_link_stats()));
    Outcome {
        sim,
        client,
        server,
        virtual_time,
        wall: wall.elapsed(),
    }
}

fn clean_link() -> LinkConfig {
    LinkConfig::new()
        .rate_bps(100_000_000)
        .latency(Duration::from_millis(20))
}

fn lossy_link() -> LinkConfig {
    clean_link()
        .loss(0.05)
        .jitter(Duration::from_millis(1))
        .duplicate(0.01)
}

fn report(name: &str, o: &Outcome, total: u64, fin: Duration) {
    let up = o.sim.link_stats(client_addr(), server_addr());
    let ideal = total as f64 * 8.0 / 100e6;
    eprintln!(
        "{name}: {} MiB, FIN at {:.3} s virtual (efficiency vs 100 Mbit/s payload {:.2}), \
         wall {:.2} s; uplink {up:?}",
        total / MIB,
        fin.as_secs_f64(),
        ideal / fin.as_secs_f64(),
        o.wall.as_secs_f64(),
    );
}

#[test]
fn quinn_bulk_clean_100mbit() {
    let total = 16 * MIB;
    let o = bulk(1, clean_link(), Congestion::Cubic, total, false);
    let fin = o.assert_complete(total);
    report("clean/cubic", &o, total, fin);
    assert!(o.virtual_time >= fin);
    // 16 MiB at 100 Mbit/s is 1.34 s of serialization; handshake and
    // slow start on a 40 ms RTT add a few hundred ms. Anything far slower
    // means the link model or the driving is wrong.
    assert!(
        fin > Duration::from_millis(1340),
        "faster than the link: {fin:?}"
    );
    assert!(fin < Duration::from_millis(2500), "too slow: {fin:?}");
    let up = o.sim.link_stats(client_addr(), server_addr());
    assert_eq!(up.dropped_loss + up.dropped_blackhole + up.dropped_size, 0);
    let lines = o.sim.trace().lines();
    assert!(lines.iter().any(|l| l.text == "connected"));
    assert!(
        lines
            .iter()
            .any(|l| l.text == format!("fin after {total} bytes"))
    );
}

#[test]
fn quinn_bulk_loss_jitter_duplication() {
    let total = 16 * MIB;
    let o = bulk(2, lossy_link(), Congestion::Bbr, total, false);
    let fin = o.assert_complete(total);
    report("lossy/bbr", &o, total, fin);
    let up = o.sim.link_stats(client_addr(), server_addr());
    assert!(up.dropped_loss > 0 && up.duplicated > 0, "{up:?}");
    assert!(fin < Duration::from_secs(60), "too slow: {fin:?}");
}

#[test]
fn quinn_bulk_is_deterministic() {
    let total = 4 * MIB;
    let runs: Vec<(u64, u64, Duration)> = (0..2)
        .map(|_| {
            let o = bulk(7, lossy_link(), Congestion::Cubic, total, true);
            let fin = o.assert_complete(total);
            (o.sim.trace().digest(), o.sim.trace().len(), fin)
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].1 > 2 * (total / 1500), "datagram trace recorded");
    let other = bulk(8, lossy_link(), Congestion::Cubic, total, true);
    other.assert_complete(total);
    assert_ne!(other.sim.trace().digest(), runs[0].0);
}
