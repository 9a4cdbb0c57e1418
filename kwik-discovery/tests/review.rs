//! Hostile review (v3) of discovery: what a hostile zone or an odd list
//! file can make a primary believe is a secondary.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_server::proto::rr::RData;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SRV};
use kwik_discovery::{Discovery, DiscoveryError, DnsSrv, StaticList};

mod common;
use common::{TestDns, Zone, name};

/// A name server for `hostile.test.` whose answers are what an attacker
/// controlling the zone (or the path to the name server) would write.
async fn start_hostile_dns() -> TestDns {
    let mut zone = Zone::new("hostile.test.");
    let mut add = |owner: &str, data: RData| zone.add(owner, data);
    // One honest target and targets whose addresses no client can dial, or
    // that would reach every machine of a network.
    let srv = "_kwik._udp.hostile.test.";
    add(
        srv,
        RData::SRV(SRV::new(10, 0, 4433, name("good.hostile.test."))),
    );
    add(
        "good.hostile.test.",
        RData::A(A(Ipv4Addr::new(192, 0, 2, 10))),
    );
    add(
        srv,
        RData::SRV(SRV::new(1, 0, 4433, name("bad.hostile.test."))),
    );
    add("bad.hostile.test.", RData::A(A(Ipv4Addr::UNSPECIFIED)));
    add("bad.hostile.test.", RData::A(A(Ipv4Addr::BROADCAST)));
    add(
        "bad.hostile.test.",
        RData::A(A(Ipv4Addr::new(224, 0, 0, 1))),
    );
    add(
        "bad.hostile.test.",
        RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED)),
    );
    add(
        "bad.hostile.test.",
        RData::AAAA(AAAA("ff02::1".parse().unwrap())),
    );
    // A CNAME loop behind an SRV target.
    let looped = "_loop._udp.hostile.test.";
    add(
        looped,
        RData::SRV(SRV::new(0, 0, 4433, name("a.hostile.test."))),
    );
    add(
        "a.hostile.test.",
        RData::CNAME(CNAME(name("b.hostile.test."))),
    );
    add(
        "b.hostile.test.",
        RData::CNAME(CNAME(name("a.hostile.test."))),
    );
    zone.serve().await
}

fn dialable(a: SocketAddr) -> bool {
    let ip = a.ip();
    a.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != std::net::IpAddr::V4(Ipv4Addr::BROADCAST)
}

/// FINDING (medium): `DnsSrv` turns every A/AAAA address of a target into
/// a candidate, whatever it is. A hostile zone (or an off-path spoofer of
/// the plain-DNS answer) makes the primary's candidates `0.0.0.0`, the
/// broadcast address, multicast groups and `::` — at the best priority, so
/// they crowd the honest servers out of a bounded list and autoscaling
/// sends AddPaths for them. kwik-core itself refuses exactly these as a
/// path's address for a proposal (PROTOCOL.md §13.3 step 3, `undialable`),
/// and the static list refuses port 0 only.
///
/// Expected: a discovery source drops (or reports) addresses that cannot
/// be a path's; here only the honest server remains.
#[tokio::test]
async fn a_hostile_zone_cannot_make_undialable_addresses_candidates() {
    let dns = start_hostile_dns().await;
    let candidates = DnsSrv::new("_kwik._udp.hostile.test")
        .unwrap()
        .name_server(dns.addr)
        .timeout(Duration::from_secs(3))
        .discover()
        .await
        .unwrap();
    let bad: Vec<SocketAddr> = candidates
        .iter()
        .map(|c| c.address)
        .filter(|a| !dialable(*a))
        .collect();
    assert!(
        bad.is_empty(),
        "undialable addresses became candidates: {bad:?} (all: {candidates:?})"
    );
    assert_eq!(candidates.len(), 1, "{candidates:?}");
}

/// Holds: a CNAME loop behind a target ends within the deadline (an error
/// or no candidate), never a hang.
#[tokio::test]
async fn a_cname_loop_behind_a_target_ends_within_the_deadline() {
    let dns = start_hostile_dns().await;
    let started = Instant::now();
    let result = DnsSrv::new("_loop._udp.hostile.test")
        .unwrap()
        .name_server(dns.addr)
        .timeout(Duration::from_secs(2))
        .discover()
        .await;
    assert!(started.elapsed() < Duration::from_secs(3), "{result:?}");
    if let Ok(candidates) = &result {
        assert!(candidates.is_empty(), "{candidates:?}");
    }
}

/// Holds: a name server that accepts the query over TCP and then trickles
/// nothing cannot hold a discovery past its deadline.
#[tokio::test]
async fn a_name_server_that_never_finishes_cannot_outlast_the_deadline() {
    // Answers every UDP query with a truncated header (TC set), so the
    // resolver retries over TCP, where the connection is accepted and then
    // left silent.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80 | 0x02; // QR, TC
            let _ = udp.send_to(&reply, from).await;
        }
    });
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = tcp.accept().await {
            held.push(conn);
        }
    });
    let timeout = Duration::from_millis(600);
    let started = Instant::now();
    let result = DnsSrv::new("_kwik._udp.hostile.test")
        .unwrap()
        .name_server(addr)
        .timeout(timeout)
        .discover()
        .await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(
        matches!(
            result,
            Err(DiscoveryError::Timeout { .. } | DiscoveryError::Dns { .. })
        ),
        "{result:?}"
    );
}

/// FINDING (low): the static list refuses port 0 but takes `0.0.0.0`, the
/// broadcast address and multicast groups as secondaries' addresses; the
/// operator's typo becomes AddPaths no client can follow, found only when
/// every session's path fails.
///
/// Expected: reported with its line, like port 0.
#[test]
fn a_static_list_refuses_addresses_no_client_can_dial() {
    for text in [
        "0.0.0.0:4433 s1",
        "255.255.255.255:4433 s1",
        "224.0.0.1:4433 s1",
        "[::]:4433 s1",
        "[ff02::1]:4433 s1",
    ] {
        let parsed = StaticList::parse(text);
        assert!(
            parsed.is_err(),
            "{text:?} was accepted: {:?}",
            parsed.map(|l| l.candidates().to_vec())
        );
    }
}

/// Holds: a UTF-8 byte-order mark (what some editors write first) and CRLF
/// line ends are not silently taken as part of an address or a name.
#[test]
fn a_static_list_with_a_bom_and_crlf_lines_is_not_misread() {
    let text = "\u{feff}192.0.2.10:4433 s1.example\r\n192.0.2.11:4433 s2.example\r\n";
    match StaticList::parse(text) {
        Ok(list) => {
            for c in list.candidates() {
                assert!(
                    !c.server_name.contains('\r') && !c.server_name.contains('\u{feff}'),
                    "{c:?}"
                );
            }
        }
        Err(e) => {
            // Refusing is acceptable too, as long as it names line 1.
            assert!(format!("{e}").contains('1'), "{e}");
        }
    }
}

/// Odd `srv:` names a typo produces: each must be refused at parse time
/// rather than become a name no record will ever answer.
#[test]
fn odd_srv_specs_are_refused() {
    for spec in [
        "srv:_kwik._udp.example.com:53",
        "srv:exa mple.com",
        "srv:example..com",
        "srv:_kwik._udp.example.com/",
        "srv:..",
        "srv: _kwik._udp.example.com",
    ] {
        let parsed = kwik_discovery::parse_spec(spec);
        assert!(parsed.is_err(), "{spec:?} was taken as {parsed:?}");
    }
}
