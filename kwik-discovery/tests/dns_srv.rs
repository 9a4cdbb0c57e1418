//! SRV discovery against a real DNS server: hickory-server on loopback,
//! serving an in-memory zone `example.test.` on a random port.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
use hickory_server::proto::rr::{Name, RData};
use kwik_discovery::{Candidate, Discovery, DiscoveryError, DnsSrv};

mod common;
use common::{TestDns, Zone, name};

async fn start_dns() -> TestDns {
    let mut zone = Zone::new("example.test.");
    let mut add = |owner: &str, data: RData| zone.add(owner, data);
    // Three secondaries: s3 alone at the best priority; at priority 10, s2
    // (weight 60, two addresses) before s1 (weight 20).
    let srv = "_kwik._udp.example.test.";
    add(
        srv,
        RData::SRV(SRV::new(10, 20, 4433, name("s1.example.test."))),
    );
    add(
        srv,
        RData::SRV(SRV::new(10, 60, 4434, name("s2.example.test."))),
    );
    add(
        srv,
        RData::SRV(SRV::new(5, 0, 5000, name("s3.example.test."))),
    );
    add(
        "s1.example.test.",
        RData::A(A(Ipv4Addr::new(127, 0, 0, 11))),
    );
    add(
        "s2.example.test.",
        RData::A(A(Ipv4Addr::new(127, 0, 0, 12))),
    );
    add(
        "s2.example.test.",
        RData::A(A(Ipv4Addr::new(127, 0, 0, 13))),
    );
    add("s3.example.test.", RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
    // A hostile-sized answer: 250 targets of equal priority, too large for
    // one datagram even with EDNS (the resolver must retry over TCP).
    for i in 0..250u16 {
        let target = format!("m{i}.example.test.");
        add(
            "_many._udp.example.test.",
            RData::SRV(SRV::new(1, i, 6000 + i, name(&target))),
        );
        add(&target, RData::A(A(Ipv4Addr::new(127, 0, 1, i as u8))));
    }
    // Records that mean "no service" (RFC 2782): the root target, port 0.
    let none = "_none._udp.example.test.";
    add(none, RData::SRV(SRV::new(0, 0, 4433, Name::root())));
    add(
        none,
        RData::SRV(SRV::new(0, 0, 0, name("s1.example.test."))),
    );
    // A target without addresses contributes nothing.
    add(
        "_noaddr._udp.example.test.",
        RData::SRV(SRV::new(0, 0, 4433, name("ghost.example.test."))),
    );
    add(
        "_noaddr._udp.example.test.",
        RData::SRV(SRV::new(0, 0, 4433, name("s1.example.test."))),
    );

    zone.serve().await
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn srv(dns: &TestDns, name: &str) -> DnsSrv {
    DnsSrv::new(name)
        .unwrap()
        .name_server(dns.addr)
        .timeout(Duration::from_secs(3))
}

#[tokio::test]
async fn srv_records_become_ordered_candidates() {
    let dns = start_dns().await;
    let source: Box<dyn Discovery> = Box::new(srv(&dns, "_kwik._udp.example.test"));
    let candidates = source.discover().await.unwrap();
    assert_eq!(
        candidates,
        [
            Candidate::new(sa("[::1]:5000"), "s3.example.test").with_preference(5, 0),
            Candidate::new(sa("127.0.0.12:4434"), "s2.example.test").with_preference(10, 60),
            Candidate::new(sa("127.0.0.13:4434"), "s2.example.test").with_preference(10, 60),
            Candidate::new(sa("127.0.0.11:4433"), "s1.example.test").with_preference(10, 20),
        ]
    );
    // The final dot and the case of the name do not matter.
    let again = srv(&dns, "_KWIK._udp.Example.Test.")
        .discover()
        .await
        .unwrap();
    assert_eq!(again, candidates);
}

#[tokio::test]
async fn missing_names_and_records_give_no_candidates() {
    let dns = start_dns().await;
    // NXDOMAIN.
    let none = srv(&dns, "_kwik._udp.nowhere.example.test")
        .discover()
        .await;
    assert_eq!(none, Ok(vec![]));
    // The name exists, but has no SRV records.
    let none = srv(&dns, "s1.example.test").discover().await;
    assert_eq!(none, Ok(vec![]));
    // Only "no service here" records.
    let none = srv(&dns, "_none._udp.example.test").discover().await;
    assert_eq!(none, Ok(vec![]));
    // A target without addresses is skipped, the others kept.
    let some = srv(&dns, "_noaddr._udp.example.test").discover().await;
    assert_eq!(
        some,
        Ok(vec![Candidate::new(
            sa("127.0.0.11:4433"),
            "s1.example.test"
        )])
    );
}

#[tokio::test]
async fn a_large_answer_is_cut_to_the_best_candidates() {
    let dns = start_dns().await;
    let candidates = srv(&dns, "_many._udp.example.test")
        .max_candidates(5)
        .discover()
        .await
        .unwrap();
    // Same priority: the five heaviest weights (249 down to 245).
    let expected: Vec<Candidate> = (245..250u16)
        .rev()
        .map(|i| {
            Candidate::new(
                SocketAddr::new(Ipv4Addr::new(127, 0, 1, i as u8).into(), 6000 + i),
                format!("m{i}.example.test"),
            )
            .with_preference(1, i)
        })
        .collect();
    assert_eq!(candidates, expected);
}

#[tokio::test]
async fn a_silent_name_server_is_a_timeout() {
    // Bound but never read: queries go unanswered.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let result = DnsSrv::new("_kwik._udp.example.test")
        .unwrap()
        .name_server(silent.local_addr().unwrap())
        .timeout(timeout)
        .discover()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        result,
        Err(DiscoveryError::Timeout {
            name: "_kwik._udp.example.test".into(),
            after: timeout
        })
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(elapsed >= timeout / 2, "gave up after only {elapsed:?}");
}

#[tokio::test]
async fn an_unreachable_name_server_fails_quickly() {
    // Nothing listens there any more: the kernel refuses the datagrams.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let result = DnsSrv::new("_kwik._udp.example.test")
        .unwrap()
        .name_server(closed)
        .timeout(Duration::from_millis(800))
        .discover()
        .await;
    assert!(
        matches!(
            result,
            Err(DiscoveryError::Dns { .. } | DiscoveryError::Timeout { .. })
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
