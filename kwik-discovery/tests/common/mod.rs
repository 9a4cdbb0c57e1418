//! A real DNS server for the tests: hickory-server on 127.0.0.1 (UDP and
//! TCP on one random port) serving one in-memory zone the test writes.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::ServerFuture;
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;

/// `s` as a DNS name.
pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A zone being written: its SOA is there from the start.
pub struct Zone {
    origin: Name,
    zone: InMemoryAuthority,
}

impl Zone {
    /// An empty zone for `origin` (`example.test.`).
    pub fn new(origin: &str) -> Self {
        let origin = name(origin);
        let zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
        let mut z = Zone { origin, zone };
        let soa = SOA::new(
            name(&format!("ns.{}", z.origin)),
            name(&format!("admin.{}", z.origin)),
            1,
            3600,
            600,
            86400,
            60,
        );
        let origin = z.origin.to_string();
        z.add(&origin, RData::SOA(soa));
        z
    }

    /// Adds one record of `owner`, TTL 60 s.
    pub fn add(&mut self, owner: &str, data: RData) {
        let record = Record::from_rdata(name(owner), 60, data);
        assert!(self.zone.upsert_mut(record, 1));
    }

    /// Serves the zone until the returned server is dropped.
    pub async fn serve(self) -> TestDns {
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&self.origin), vec![Arc::new(self.zone)]);
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let mut server = ServerFuture::new(catalog);
        server.register_socket(udp);
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            server.register_listener(tcp, Duration::from_secs(5));
        }
        TestDns {
            addr,
            _server: server,
        }
    }
}

/// A running DNS server; it stops when dropped.
pub struct TestDns {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    _server: ServerFuture<Catalog>,
}
